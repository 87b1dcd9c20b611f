/* mqtt_codec.c - MQTT 3.1.1 and 5 packets (see mqtt_codec.h).
 *
 * Encoders append whole packets to a growable buffer; a failed allocation
 * marks the buffer failed and every later append is refused, so a caller
 * checks once. Decoders walk a framed packet with a bounds-checked reader
 * and insist that what a packet declares fits inside it.
 *
 * Thread model: none; pure functions over caller-owned buffers. */
#include <stdlib.h>
#include <string.h>

#include "mqtt_codec.h"
#include "patchbay/pb_err.h"
#include "patchbay/pb_json.h"

/* ---- the output buffer ------------------------------------------------------------- */

void pb_mqtt_buf_free(struct pb_mqtt_buf *b)
{
    free(b->p);
    *b = (struct pb_mqtt_buf){0};
}

static bool reserve(struct pb_mqtt_buf *b, size_t n)
{
    if (b->failed)
        return false;
    if (n <= b->cap - b->len)
        return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < n) {
        if (cap > SIZE_MAX / 2) {
            b->failed = true;
            return false;
        }
        cap *= 2;
    }
    uint8_t *p = realloc(b->p, cap);
    if (!p) {
        b->failed = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

/* The callers reserved the room. */
static void raw(struct pb_mqtt_buf *b, const void *p, size_t n)
{
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void u8(struct pb_mqtt_buf *b, uint8_t v)
{
    b->p[b->len++] = v;
}

static void u16(struct pb_mqtt_buf *b, uint16_t v)
{
    b->p[b->len++] = (uint8_t)(v >> 8);
    b->p[b->len++] = (uint8_t)v;
}

static void u32(struct pb_mqtt_buf *b, uint32_t v)
{
    u16(b, (uint16_t)(v >> 16));
    u16(b, (uint16_t)v);
}

static size_t varint_len(size_t v)
{
    return v < 128 ? 1 : v < 16384 ? 2 : v < 2097152 ? 3 : 4;
}

static void varint(struct pb_mqtt_buf *b, size_t v)
{
    do {
        uint8_t byte = v % 128;
        v /= 128;
        if (v)
            byte |= 128;
        u8(b, byte);
    } while (v);
}

static void str(struct pb_mqtt_buf *b, const char *s, size_t n)
{
    u16(b, (uint16_t)n);
    raw(b, s, n);
}

/* Room for a packet whose remaining length is rem: the fixed header, then
 * the caller writes exactly rem bytes. */
static int begin(struct pb_mqtt_buf *b, uint8_t first, size_t rem)
{
    if (rem > PB_MQTT_MAX_REMAINING)
        return PB_EINVAL;
    if (!reserve(b, 1 + varint_len(rem) + rem))
        return PB_ENOMEM;
    u8(b, first);
    varint(b, rem);
    return 0;
}

int pb_mqtt_put_connect(struct pb_mqtt_buf *b, const struct pb_mqtt_connect *c)
{
    bool v5 = c->version == PB_MQTT_V5;
    size_t idl = strlen(c->client_id);
    size_t ul = c->user ? strlen(c->user) : 0;
    size_t pl = c->password ? strlen(c->password) : 0;
    if (idl > 65535 || ul > 65535 || pl > 65535 || (c->version != PB_MQTT_V311 && !v5))
        return PB_EINVAL;
    size_t props = 0;
    if (v5) {
        props += c->session_expiry ? 5 : 0;
        props += c->receive_max && c->receive_max != 65535 ? 3 : 0;
        props += c->max_packet_size ? 5 : 0;
    }
    size_t rem = 6 + 1 + 1 + 2 + (v5 ? varint_len(props) + props : 0) + 2 + idl +
                 (c->user ? 2 + ul : 0) + (c->password ? 2 + pl : 0);
    int rc = begin(b, PB_MQTT_CONNECT << 4, rem);
    if (rc)
        return rc;
    str(b, "MQTT", 4);
    u8(b, (uint8_t)c->version);
    u8(b, (uint8_t)((c->user ? 0x80 : 0) | (c->password ? 0x40 : 0) | (c->clean ? 0x02 : 0)));
    u16(b, c->keepalive);
    if (v5) {
        varint(b, props);
        if (c->session_expiry) {
            u8(b, 0x11);
            u32(b, c->session_expiry);
        }
        if (c->receive_max && c->receive_max != 65535) {
            u8(b, 0x21);
            u16(b, c->receive_max);
        }
        if (c->max_packet_size) {
            u8(b, 0x27);
            u32(b, c->max_packet_size);
        }
    }
    str(b, c->client_id, idl);
    if (c->user)
        str(b, c->user, ul);
    if (c->password)
        str(b, c->password, pl);
    return 0;
}

static size_t publish_props_len(const struct pb_mqtt_publish_out *p)
{
    size_t n = p->content_type ? 3 + strlen(p->content_type) : 0;
    for (size_t i = 0; i < p->nprops; i++)
        n += 5 + strlen(p->props[i].name) + strlen(p->props[i].value);
    return n;
}

static size_t publish_rem(int version, const struct pb_mqtt_publish_out *p)
{
    size_t rem = 2 + strlen(p->topic) + (p->qos > 0 ? 2 : 0) + p->len;
    if (version == PB_MQTT_V5) {
        size_t props = publish_props_len(p);
        rem += varint_len(props) + props;
    }
    return rem;
}

size_t pb_mqtt_publish_size(int version, const struct pb_mqtt_publish_out *p)
{
    size_t rem = publish_rem(version, p);
    return 1 + varint_len(rem) + rem;
}

int pb_mqtt_put_publish(struct pb_mqtt_buf *b, int version, const struct pb_mqtt_publish_out *p)
{
    size_t tl = strlen(p->topic);
    if (tl > 65535 || p->qos < 0 || p->qos > 1 || (p->qos && !p->packet_id))
        return PB_EINVAL;
    if (version == PB_MQTT_V5) {
        if (p->content_type && strlen(p->content_type) > 65535)
            return PB_EINVAL;
        for (size_t i = 0; i < p->nprops; i++)
            if (strlen(p->props[i].name) > 65535 || strlen(p->props[i].value) > 65535)
                return PB_EINVAL;
    }
    uint8_t first =
        (uint8_t)(PB_MQTT_PUBLISH << 4 | (p->dup ? 0x08 : 0) | (p->qos << 1) | (p->retain ? 1 : 0));
    int rc = begin(b, first, publish_rem(version, p));
    if (rc)
        return rc;
    str(b, p->topic, tl);
    if (p->qos)
        u16(b, p->packet_id);
    if (version == PB_MQTT_V5) {
        varint(b, publish_props_len(p));
        if (p->content_type) {
            u8(b, PB_MQTT_PROP_CONTENT_TYPE);
            str(b, p->content_type, strlen(p->content_type));
        }
        for (size_t i = 0; i < p->nprops; i++) {
            u8(b, PB_MQTT_PROP_USER);
            str(b, p->props[i].name, strlen(p->props[i].name));
            str(b, p->props[i].value, strlen(p->props[i].value));
        }
    }
    raw(b, p->payload, p->len);
    return 0;
}

int pb_mqtt_put_puback(struct pb_mqtt_buf *b, int version, uint16_t packet_id)
{
    (void)version; /* reason 0 and no properties: the short form, in both versions */
    int rc = begin(b, PB_MQTT_PUBACK << 4, 2);
    if (rc)
        return rc;
    u16(b, packet_id);
    return 0;
}

static int put_filters(struct pb_mqtt_buf *b, int type, int version, uint16_t packet_id,
                       const char *const *filters, size_t n, int options)
{
    size_t rem = 2 + (version == PB_MQTT_V5 ? 1 : 0);
    if (n == 0)
        return PB_EINVAL;
    for (size_t i = 0; i < n; i++) {
        size_t fl = strlen(filters[i]);
        if (fl == 0 || fl > 65535)
            return PB_EINVAL;
        rem += 2 + fl + (options >= 0 ? 1 : 0);
    }
    int rc = begin(b, (uint8_t)(type << 4 | 0x02), rem);
    if (rc)
        return rc;
    u16(b, packet_id);
    if (version == PB_MQTT_V5)
        varint(b, 0);
    for (size_t i = 0; i < n; i++) {
        str(b, filters[i], strlen(filters[i]));
        if (options >= 0)
            u8(b, (uint8_t)options);
    }
    return 0;
}

int pb_mqtt_put_subscribe(struct pb_mqtt_buf *b, int version, uint16_t packet_id,
                          const char *const *filters, size_t n, int qos, int retain_handling)
{
    if (qos < 0 || qos > 2 || retain_handling < 0 || retain_handling > 2)
        return PB_EINVAL;
    int options = qos | (version == PB_MQTT_V5 ? retain_handling << 4 : 0);
    return put_filters(b, PB_MQTT_SUBSCRIBE, version, packet_id, filters, n, options);
}

int pb_mqtt_put_unsubscribe(struct pb_mqtt_buf *b, int version, uint16_t packet_id,
                            const char *const *filters, size_t n)
{
    return put_filters(b, PB_MQTT_UNSUBSCRIBE, version, packet_id, filters, n, -1);
}

int pb_mqtt_put_pingreq(struct pb_mqtt_buf *b)
{
    return begin(b, PB_MQTT_PINGREQ << 4, 0);
}

int pb_mqtt_put_disconnect(struct pb_mqtt_buf *b, int version)
{
    (void)version; /* reason 0 (normal disconnection) is the empty form in 5 too */
    return begin(b, PB_MQTT_DISCONNECT << 4, 0);
}

/* ---- framing ------------------------------------------------------------------------ */

long pb_mqtt_frame(const uint8_t *buf, size_t len, size_t max, struct pb_mqtt_packet *pk)
{
    size_t rem = 0, mult = 1, i = 1;
    for (;;) {
        if (i >= len)
            return 0;
        uint8_t byte = buf[i++];
        rem += (size_t)(byte & 127) * mult;
        if (!(byte & 128))
            break;
        if (i == 5)
            return PB_EPARSE;
        mult *= 128;
    }
    if (rem > max || i + rem > max)
        return PB_ETOOBIG;
    if (len - i < rem)
        return 0;
    pk->type = buf[0] >> 4;
    pk->flags = buf[0] & 0x0F;
    pk->p = buf + i;
    pk->len = rem;
    return (long)(i + rem);
}

/* ---- decoding ----------------------------------------------------------------------- */

struct rd {
    const uint8_t *p;
    size_t len, pos;
};

static bool rd_u8(struct rd *r, uint8_t *v)
{
    if (r->len - r->pos < 1)
        return false;
    *v = r->p[r->pos++];
    return true;
}

static bool rd_u16(struct rd *r, uint16_t *v)
{
    if (r->len - r->pos < 2)
        return false;
    *v = (uint16_t)(r->p[r->pos] << 8 | r->p[r->pos + 1]);
    r->pos += 2;
    return true;
}

static bool rd_u32(struct rd *r, uint32_t *v)
{
    uint16_t hi, lo;
    if (!rd_u16(r, &hi) || !rd_u16(r, &lo))
        return false;
    *v = (uint32_t)hi << 16 | lo;
    return true;
}

static bool rd_varint(struct rd *r, uint32_t *v)
{
    uint32_t val = 0, mult = 1;
    for (int i = 0; i < 4; i++) {
        uint8_t byte;
        if (!rd_u8(r, &byte))
            return false;
        val += (uint32_t)(byte & 127) * mult;
        if (!(byte & 128)) {
            *v = val;
            return true;
        }
        mult *= 128;
    }
    return false;
}

static bool rd_bytes(struct rd *r, const uint8_t **s, size_t *n)
{
    uint16_t l;
    if (!rd_u16(r, &l) || r->len - r->pos < l)
        return false;
    *s = r->p + r->pos;
    *n = l;
    r->pos += l;
    return true;
}

/* A property block (its length, then that many bytes) into props and plen. */
static bool rd_props(struct rd *r, const uint8_t **props, size_t *plen)
{
    uint32_t n;
    if (!rd_varint(r, &n) || r->len - r->pos < n)
        return false;
    *props = r->p + r->pos;
    *plen = n;
    r->pos += n;
    /* Walk it once: a malformed block is refused here. */
    size_t pos = 0;
    struct pb_mqtt_prop prop;
    int rc;
    while ((rc = pb_mqtt_prop_next(*props, n, &pos, &prop)) == 1)
        ;
    return rc == 0;
}

enum prop_kind { K_BAD = 0, K_BYTE, K_U16, K_U32, K_VAR, K_STR, K_BIN, K_PAIR };

static enum prop_kind prop_kind(uint8_t id)
{
    switch (id) {
    case 0x01:
    case 0x17:
    case 0x19:
    case 0x24:
    case 0x25:
    case 0x28:
    case 0x29:
    case 0x2A:
        return K_BYTE;
    case 0x13:
    case 0x21:
    case 0x22:
    case 0x23:
        return K_U16;
    case 0x02:
    case 0x11:
    case 0x18:
    case 0x27:
        return K_U32;
    case 0x0B:
        return K_VAR;
    case 0x03:
    case 0x08:
    case 0x12:
    case 0x15:
    case 0x1A:
    case 0x1C:
    case 0x1F:
        return K_STR;
    case 0x09:
    case 0x16:
        return K_BIN;
    case 0x26:
        return K_PAIR;
    default:
        return K_BAD;
    }
}

int pb_mqtt_prop_next(const uint8_t *props, size_t len, size_t *pos, struct pb_mqtt_prop *prop)
{
    struct rd r = {props, len, *pos};
    uint32_t id;
    uint8_t b8 = 0;
    uint16_t b16 = 0;
    bool ok;
    if (r.pos >= len)
        return 0;
    *prop = (struct pb_mqtt_prop){0};
    if (!rd_varint(&r, &id) || id > 0x7F)
        return PB_EPARSE;
    prop->id = (uint8_t)id;
    switch (prop_kind(prop->id)) {
    case K_BYTE:
        ok = rd_u8(&r, &b8);
        prop->num = b8;
        break;
    case K_U16:
        ok = rd_u16(&r, &b16);
        prop->num = b16;
        break;
    case K_U32:
        ok = rd_u32(&r, &prop->num);
        break;
    case K_VAR:
        ok = rd_varint(&r, &prop->num);
        break;
    case K_STR: /* UTF-8 is the reader's to check: see pb_mqtt_prop */
        ok = rd_bytes(&r, &prop->s, &prop->slen);
        break;
    case K_BIN:
        ok = rd_bytes(&r, &prop->s, &prop->slen);
        break;
    case K_PAIR:
        ok = rd_bytes(&r, &prop->s, &prop->slen) && rd_bytes(&r, &prop->s2, &prop->s2len);
        break;
    default:
        ok = false;
    }
    if (!ok)
        return PB_EPARSE;
    *pos = r.pos;
    return 1;
}

int pb_mqtt_parse_connack(const struct pb_mqtt_packet *pk, int version, struct pb_mqtt_connack *out)
{
    struct rd r = {pk->p, pk->len, 0};
    uint8_t flags;
    *out = (struct pb_mqtt_connack){.receive_max = 65535, .max_qos = 2, .retain_available = true};
    if (pk->type != PB_MQTT_CONNACK || pk->flags != 0 || !rd_u8(&r, &flags) || (flags & 0xFE) ||
        !rd_u8(&r, &out->code))
        return PB_EPARSE;
    out->session_present = flags & 1;
    if (version != PB_MQTT_V5 || pk->len == 2) {
        out->v311_form = version == PB_MQTT_V5;
        return r.pos == r.len ? 0 : PB_EPARSE;
    }
    const uint8_t *props;
    size_t plen, pos = 0;
    struct pb_mqtt_prop p;
    if (!rd_props(&r, &props, &plen) || r.pos != r.len)
        return PB_EPARSE;
    while (pb_mqtt_prop_next(props, plen, &pos, &p) == 1) {
        switch (p.id) {
        case 0x21:
            if (p.num == 0)
                return PB_EPARSE;
            out->receive_max = (uint16_t)p.num;
            break;
        case 0x24:
            out->max_qos = (uint8_t)p.num;
            break;
        case 0x25:
            out->retain_available = p.num != 0;
            break;
        case 0x27:
            out->max_packet_size = p.num;
            break;
        case 0x13:
            out->server_keepalive = (uint16_t)p.num;
            break;
        case PB_MQTT_PROP_REASON_STRING:
            out->reason = p.s;
            out->reason_len = p.slen;
            break;
        default:
            break;
        }
    }
    return 0;
}

int pb_mqtt_parse_publish(const struct pb_mqtt_packet *pk, int version, struct pb_mqtt_publish *out)
{
    struct rd r = {pk->p, pk->len, 0};
    *out = (struct pb_mqtt_publish){0};
    if (pk->type != PB_MQTT_PUBLISH)
        return PB_EPARSE;
    out->qos = (pk->flags >> 1) & 3;
    out->dup = pk->flags & 0x08;
    out->retain = pk->flags & 1;
    if (out->qos == 3)
        return PB_EPARSE;
    /* The topic's bytes as they came: whether they make a topic name is the
     * caller's to judge, so a bad one can be dead-lettered and acknowledged
     * rather than refused for ever. */
    if (!rd_bytes(&r, &out->topic, &out->topic_len))
        return PB_EPARSE;
    if (out->qos && (!rd_u16(&r, &out->packet_id) || out->packet_id == 0))
        return PB_EPARSE;
    if (version == PB_MQTT_V5) {
        if (!rd_props(&r, &out->props, &out->props_len))
            return PB_EPARSE;
        size_t pos = 0;
        struct pb_mqtt_prop p;
        while (pb_mqtt_prop_next(out->props, out->props_len, &pos, &p) == 1)
            if (p.id == PB_MQTT_PROP_TOPIC_ALIAS)
                out->topic_alias = (uint16_t)p.num;
    }
    /* 3.1.1 needs a topic; 5 may send an empty one with a topic alias, which
     * the caller refuses (it never allows aliases). */
    if (out->topic_len == 0 && version != PB_MQTT_V5)
        return PB_EPARSE;
    out->payload = r.p + r.pos;
    out->payload_len = r.len - r.pos;
    return 0;
}

int pb_mqtt_parse_ack(const struct pb_mqtt_packet *pk, int version, uint16_t *packet_id,
                      uint8_t *reason)
{
    struct rd r = {pk->p, pk->len, 0};
    unsigned want_flags = pk->type == PB_MQTT_PUBREL ? 2 : 0;
    *reason = 0;
    if (pk->flags != want_flags || !rd_u16(&r, packet_id) || *packet_id == 0)
        return PB_EPARSE;
    if (version != PB_MQTT_V5)
        return r.pos == r.len ? 0 : PB_EPARSE;
    if (r.pos == r.len)
        return 0;
    if (!rd_u8(&r, reason))
        return PB_EPARSE;
    if (r.pos == r.len)
        return 0;
    const uint8_t *props;
    size_t plen;
    return rd_props(&r, &props, &plen) && r.pos == r.len ? 0 : PB_EPARSE;
}

int pb_mqtt_parse_suback(const struct pb_mqtt_packet *pk, int version, uint16_t *packet_id,
                         uint8_t *codes, size_t max, size_t *n)
{
    struct rd r = {pk->p, pk->len, 0};
    *n = 0;
    if (pk->flags != 0 || !rd_u16(&r, packet_id) || *packet_id == 0)
        return PB_EPARSE;
    if (version == PB_MQTT_V5) {
        const uint8_t *props;
        size_t plen;
        if (!rd_props(&r, &props, &plen))
            return PB_EPARSE;
    }
    if (pk->type == PB_MQTT_UNSUBACK && version != PB_MQTT_V5)
        return r.pos == r.len ? 0 : PB_EPARSE;
    if (r.pos == r.len)
        return PB_EPARSE; /* at least one code */
    while (r.pos < r.len) {
        uint8_t c;
        rd_u8(&r, &c);
        if (*n < max)
            codes[*n] = c;
        (*n)++;
    }
    return 0;
}

int pb_mqtt_parse_disconnect(const struct pb_mqtt_packet *pk, int version, uint8_t *reason)
{
    struct rd r = {pk->p, pk->len, 0};
    *reason = 0;
    if (pk->flags != 0)
        return PB_EPARSE;
    if (version != PB_MQTT_V5 || r.len == 0)
        return r.len == 0 ? 0 : PB_EPARSE;
    rd_u8(&r, reason);
    if (r.pos == r.len)
        return 0;
    const uint8_t *props;
    size_t plen;
    return rd_props(&r, &props, &plen) && r.pos == r.len ? 0 : PB_EPARSE;
}

/* ---- names and texts ---------------------------------------------------------------- */

static bool topic_ok(const char *t, size_t len)
{
    return len >= 1 && len <= 65535 && !memchr(t, 0, len) && pb_utf8_valid(t, len);
}

bool pb_mqtt_topic_name_ok(const char *t, size_t len)
{
    return topic_ok(t, len) && !memchr(t, '+', len) && !memchr(t, '#', len);
}

bool pb_mqtt_topic_filter_ok(const char *f)
{
    size_t len = strlen(f);
    if (!topic_ok(f, len))
        return false;
    for (size_t i = 0; i < len; i++) {
        bool level_start = i == 0 || f[i - 1] == '/';
        bool level_end = i + 1 == len || f[i + 1] == '/';
        if (f[i] == '+' && !(level_start && level_end))
            return false;
        if (f[i] == '#' && !(level_start && i + 1 == len))
            return false;
    }
    return true;
}

const char *pb_mqtt_reason_text(int version, uint8_t code)
{
    if (version != PB_MQTT_V5) {
        switch (code) {
        case 0:
            return "accepted";
        case 1:
            return "unacceptable protocol version";
        case 2:
            return "client identifier rejected";
        case 3:
            return "server unavailable";
        case 4:
            return "bad user name or password";
        case 5:
            return "not authorized";
        default:
            return "refused";
        }
    }
    switch (code) {
    case 0x00:
        return "success";
    case 0x10:
        return "no matching subscribers";
    case 0x80:
        return "unspecified error";
    case 0x81:
        return "malformed packet";
    case 0x82:
        return "protocol error";
    case 0x83:
        return "implementation specific error";
    case 0x84:
        return "unsupported protocol version";
    case 0x85:
        return "client identifier not valid";
    case 0x86:
        return "bad user name or password";
    case 0x87:
        return "not authorized";
    case 0x88:
        return "server unavailable";
    case 0x89:
        return "server busy";
    case 0x8A:
        return "banned";
    case 0x8B:
        return "server shutting down";
    case 0x8C:
        return "bad authentication method";
    case 0x8D:
        return "keep alive timeout";
    case 0x8E:
        return "session taken over";
    case 0x8F:
        return "topic filter invalid";
    case 0x90:
        return "topic name invalid";
    case 0x91:
        return "packet identifier in use";
    case 0x93:
        return "receive maximum exceeded";
    case 0x94:
        return "topic alias invalid";
    case 0x95:
        return "packet too large";
    case 0x96:
        return "message rate too high";
    case 0x97:
        return "quota exceeded";
    case 0x98:
        return "administrative action";
    case 0x99:
        return "payload format invalid";
    case 0x9A:
        return "retain not supported";
    case 0x9B:
        return "QoS not supported";
    case 0x9C:
        return "use another server";
    case 0x9D:
        return "server moved";
    case 0x9E:
        return "shared subscriptions not supported";
    case 0x9F:
        return "connection rate exceeded";
    case 0xA0:
        return "maximum connect time";
    case 0xA1:
        return "subscription identifiers not supported";
    case 0xA2:
        return "wildcard subscriptions not supported";
    default:
        return code < 0x80 ? "success" : "refused";
    }
}
