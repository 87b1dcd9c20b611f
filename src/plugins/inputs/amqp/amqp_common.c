/* amqp_common.c - what the `amqp` input and output share: the connection
 * options and their checks, connecting through the outbound guard (TCP or
 * TLS, login, one channel), error texts, and AMQP field tables to and from
 * JSON.
 *
 * Thread model: no state of its own; each call works on what it is given.
 * pb_amqp_open and pb_amqp_close block (network). A connection is used by
 * one thread at a time: librabbitmq is not thread-safe per connection. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <arpa/inet.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "amqp_common.h"
#include "patchbay/pb_json.h"
#include "patchbay/pb_time.h"

#define TABLE_DEPTH_MAX 16
#define FRAME_MAX 131072
#define EXACT_INT_MAX 9007199254740992LL /* 2^53 */

const struct pb_field pb_amqp_tls_fields[] = {
    {.name = "ca_file",
     .type = PB_F_STR,
     .offset = offsetof(struct pb_amqp_tls, ca_file),
     .doc = "PEM file of the authorities the broker's certificate is checked against"},
    {.name = "cert_file",
     .type = PB_F_STR,
     .offset = offsetof(struct pb_amqp_tls, cert_file),
     .doc = "client certificate (PEM), with key_file"},
    {.name = "key_file",
     .type = PB_F_STR,
     .offset = offsetof(struct pb_amqp_tls, key_file),
     .doc = "client private key (PEM), with cert_file"},
    {.name = "verify",
     .type = PB_F_BOOL,
     .offset = offsetof(struct pb_amqp_tls, verify),
     .def = "true",
     .doc = "check the broker's certificate and host name"},
    {0},
};

/* ---- options ------------------------------------------------------------------------------ */

/* The URL as written, with the password of its user part as ***. */
static void redact(const char *url, char *out, size_t len)
{
    const char *s = strstr(url, "://");
    const char *start = s ? s + 3 : url;
    size_t auth_end = strcspn(start, "/?#");
    const char *at = NULL;
    for (size_t i = 0; i < auth_end; i++)
        if (start[i] == '@')
            at = start + i; /* the last @ of the authority */
    if (!at) {
        snprintf(out, len, "%s", url);
        return;
    }
    const char *colon = memchr(start, ':', (size_t)(at - start));
    if (!colon) {
        snprintf(out, len, "%s", url);
        return;
    }
    snprintf(out, len, "%.*s:***%s", (int)(colon - url), url, at);
}

int pb_amqp_conf_prepare(struct pb_amqp_conf *c, struct pb_err *err)
{
    struct amqp_connection_info ci;
    int rc = 0;
    char *copy = NULL;

    redact(c->url, c->shown, sizeof(c->shown));
    if (strncasecmp(c->url, "amqp://", 7) != 0 && strncasecmp(c->url, "amqps://", 8) != 0)
        return pb_err_set(err, PB_ECONFIG, "url \"%s\" must start with amqp:// or amqps://",
                          c->shown);
    copy = strdup(c->url);
    if (!copy)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    amqp_default_connection_info(&ci);
    if (amqp_parse_url(copy, &ci) != AMQP_STATUS_OK || !ci.host || !*ci.host) {
        rc = pb_err_set(err, PB_ECONFIG,
                        "url \"%s\" is not amqp://user:password@host:port/vhost (a vhost "
                        "with / is written %%2f; no query options)",
                        c->shown);
        goto out;
    }
    if (ci.port <= 0 || ci.port > 65535) {
        rc = pb_err_set(err, PB_ECONFIG, "url \"%s\" has a bad port", c->shown);
        goto out;
    }
    c->ssl = ci.ssl;
    c->port = ci.port;
    c->host = strdup(ci.host);
    /* "amqp://host/" names the empty vhost, which no broker has: take "/". */
    c->vhost = strdup(ci.vhost && *ci.vhost ? ci.vhost : "/");
    c->login = strdup(c->user ? c->user : ci.user);
    c->secret = strdup(c->password ? c->password : ci.password);
    if (!c->host || !c->vhost || !c->login || !c->secret) {
        rc = pb_err_set(err, PB_ENOMEM, "out of memory");
        goto out;
    }
    bool tls_set = c->tls.ca_file || c->tls.cert_file || c->tls.key_file;
    if (tls_set && !c->ssl) {
        rc = pb_err_set(err, PB_ECONFIG, "tls options need an amqps:// url");
        goto out;
    }
    if ((c->tls.cert_file != NULL) != (c->tls.key_file != NULL)) {
        rc = pb_err_set(err, PB_ECONFIG, "tls: cert_file and key_file go together");
        goto out;
    }
    if (c->heartbeat_ms < 0 || c->heartbeat_ms > 3600 * 1000) {
        rc = pb_err_set(err, PB_ECONFIG, "heartbeat must be between 0 and 1h");
        goto out;
    }
    if (c->connect_timeout_ms < 100) {
        rc = pb_err_set(err, PB_ECONFIG, "connect_timeout must be at least 100ms");
        goto out;
    }
out:
    /* The copy holds the password: wipe it. */
    explicit_bzero(copy, strlen(c->url));
    free(copy);
    return rc;
}

void pb_amqp_conf_cleanup(struct pb_amqp_conf *c)
{
    free(c->host);
    free(c->vhost);
    free(c->login);
    if (c->secret)
        explicit_bzero(c->secret, strlen(c->secret));
    free(c->secret);
    c->host = c->vhost = c->login = c->secret = NULL;
}

/* ---- errors ------------------------------------------------------------------------------- */

const char *pb_amqp_close_text(const amqp_method_t *m, char *buf, size_t len)
{
    if (m->id == AMQP_CONNECTION_CLOSE_METHOD) {
        const amqp_connection_close_t *c = m->decoded;
        snprintf(buf, len, "connection closed by the broker: %u %.*s", c->reply_code,
                 (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        return buf;
    }
    if (m->id == AMQP_CHANNEL_CLOSE_METHOD) {
        const amqp_channel_close_t *c = m->decoded;
        snprintf(buf, len, "channel closed by the broker: %u %.*s", c->reply_code,
                 (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        return buf;
    }
    return NULL;
}

const char *pb_amqp_reply_text(amqp_rpc_reply_t r, char *buf, size_t len)
{
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        snprintf(buf, len, "ok");
        break;
    case AMQP_RESPONSE_NONE:
        snprintf(buf, len, "no reply from the broker");
        break;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        snprintf(buf, len, "%s", amqp_error_string2(r.library_error));
        break;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (!pb_amqp_close_text(&r.reply, buf, len))
            snprintf(buf, len, "unexpected method 0x%08x from the broker", r.reply.id);
        break;
    }
    return buf;
}

void pb_amqp_close_ok(amqp_connection_state_t conn, const amqp_frame_t *f)
{
    if (f->frame_type != AMQP_FRAME_METHOD)
        return;
    if (f->payload.method.id == AMQP_CHANNEL_CLOSE_METHOD) {
        amqp_channel_close_ok_t ok = {0};
        amqp_send_method(conn, f->channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
    } else if (f->payload.method.id == AMQP_CONNECTION_CLOSE_METHOD) {
        amqp_connection_close_ok_t ok = {0};
        amqp_send_method(conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
    }
}

/* ---- connecting ------------------------------------------------------------------------------ */

static struct timeval tv_of(int64_t ms)
{
    return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
}

/* TLS: verify the broker's certificate against the host name of the URL,
 * although the socket connects to the address the guard allowed. */
static int tls_setup(const struct pb_amqp_conf *c, amqp_socket_t *sock, struct pb_err *err)
{
    if (c->tls.ca_file && amqp_ssl_socket_set_cacert(sock, c->tls.ca_file) != AMQP_STATUS_OK)
        return pb_err_set(err, PB_ECONFIG, "tls: cannot read ca_file %s", c->tls.ca_file);
    if (c->tls.cert_file &&
        amqp_ssl_socket_set_key(sock, c->tls.cert_file, c->tls.key_file) != AMQP_STATUS_OK)
        return pb_err_set(err, PB_ECONFIG, "tls: cannot load cert_file %s with key_file %s",
                          c->tls.cert_file, c->tls.key_file);
    if (!c->tls.ca_file) {
        SSL_CTX *ctx = amqp_ssl_socket_get_context(sock);
        if (!ctx || SSL_CTX_set_default_verify_paths(ctx) != 1)
            return pb_err_set(err, PB_ECONFIG, "tls: cannot load the system's authorities");
    }
    amqp_ssl_socket_set_verify_peer(sock, c->tls.verify);
    /* librabbitmq would check the name against the address connected to. */
    amqp_ssl_socket_set_verify_hostname(sock, 0);
    if (c->tls.verify) {
        SSL_CTX *ctx = amqp_ssl_socket_get_context(sock);
        X509_VERIFY_PARAM *p = ctx ? SSL_CTX_get0_param(ctx) : NULL;
        unsigned char bin[16];
        int ok;
        if (!p)
            return pb_err_set(err, PB_EINTERNAL, "tls: no context to verify the broker with");
        if (inet_pton(AF_INET, c->host, bin) == 1 || inet_pton(AF_INET6, c->host, bin) == 1)
            ok = X509_VERIFY_PARAM_set1_ip_asc(p, c->host);
        else
            ok = X509_VERIFY_PARAM_set1_host(p, c->host, 0);
        if (ok != 1)
            return pb_err_set(err, PB_ENOMEM, "tls: cannot set the name to verify");
    }
    return 0;
}

int pb_amqp_open(const struct pb_amqp_conf *c, const struct pb_allowlist *al, const char *name,
                 amqp_connection_state_t *out, struct pb_err *err)
{
    char ip[64], why[256];
    int rc;
    amqp_connection_state_t conn = NULL;
    amqp_rpc_reply_t r;

    *out = NULL;
    rc = pb_outbound_resolve(al, c->host, c->port, ip, sizeof(ip), err);
    if (rc)
        return rc;
    conn = amqp_new_connection();
    if (!conn)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    amqp_socket_t *sock = c->ssl ? amqp_ssl_socket_new(conn) : amqp_tcp_socket_new(conn);
    if (!sock) {
        rc = pb_err_set(err, PB_ENOMEM, "cannot create a %s socket", c->ssl ? "TLS" : "TCP");
        goto fail;
    }
    if (c->ssl && (rc = tls_setup(c, sock, err)) != 0)
        goto fail;
    struct timeval tv = tv_of(c->connect_timeout_ms);
    int st = amqp_socket_open_noblock(sock, ip, c->port, &tv);
    if (st != AMQP_STATUS_OK) {
        rc = pb_err_set(err, PB_ENET, "cannot connect to %s:%d (%s): %s", c->host, c->port, ip,
                        amqp_error_string2(st));
        goto fail;
    }
    amqp_set_handshake_timeout(conn, &tv);
    amqp_set_rpc_timeout(conn, &tv);

    amqp_table_entry_t props[2];
    props[0].key = amqp_cstring_bytes("connection_name");
    props[0].value.kind = AMQP_FIELD_KIND_UTF8;
    props[0].value.value.bytes = amqp_cstring_bytes(name);
    props[1].key = amqp_cstring_bytes("product");
    props[1].value.kind = AMQP_FIELD_KIND_UTF8;
    props[1].value.value.bytes = amqp_cstring_bytes("patchbay");
    amqp_table_t ptab = {.num_entries = 2, .entries = props};
    int hb = (int)((c->heartbeat_ms + 999) / 1000);
    r = amqp_login_with_properties(conn, c->vhost, 0, FRAME_MAX, hb, &ptab, AMQP_SASL_METHOD_PLAIN,
                                   c->login, c->secret);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        rc = pb_err_set(err, PB_ENET, "login to %s:%d vhost %s as %s failed: %s", c->host, c->port,
                        c->vhost, c->login, pb_amqp_reply_text(r, why, sizeof(why)));
        goto fail;
    }
    amqp_channel_open(conn, PB_AMQP_CHANNEL);
    r = amqp_get_rpc_reply(conn);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        rc = pb_err_set(err, PB_ENET, "cannot open a channel: %s",
                        pb_amqp_reply_text(r, why, sizeof(why)));
        goto fail;
    }
    *out = conn;
    return 0;
fail:
    amqp_destroy_connection(conn); /* closes the socket */
    return rc;
}

void pb_amqp_close(amqp_connection_state_t conn, bool graceful)
{
    if (!conn)
        return;
    if (graceful) {
        /* A broker that does not answer does not hold the shutdown up. */
        struct timeval tv = {.tv_sec = 2, .tv_usec = 0};
        amqp_set_rpc_timeout(conn, &tv);
        amqp_channel_close(conn, PB_AMQP_CHANNEL, AMQP_REPLY_SUCCESS);
        amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    }
    amqp_destroy_connection(conn);
}

/* ---- tables and JSON ------------------------------------------------------------------------ */

static char *base64(const unsigned char *in, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc(4 * ((n + 2) / 3) + 1), *p = out;
    if (!out)
        return NULL;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        *p++ = tab[v >> 18];
        *p++ = tab[(v >> 12) & 63];
        *p++ = tab[(v >> 6) & 63];
        *p++ = tab[v & 63];
    }
    if (i < n) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0);
        *p++ = tab[v >> 18];
        *p++ = tab[(v >> 12) & 63];
        *p++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        *p++ = '=';
    }
    *p = 0;
    return out;
}

json_t *pb_amqp_bytes_json(amqp_bytes_t b)
{
    const char *s = b.len ? b.bytes : "";
    if (pb_utf8_valid(s, b.len) && !memchr(s, 0, b.len))
        return json_stringn(s, b.len);
    char *enc = base64((const unsigned char *)s, b.len);
    if (!enc)
        return NULL;
    json_t *o = json_pack("{s:s}", "base64", enc);
    free(enc);
    return o;
}

static json_t *int_json(long long v)
{
    if (v > EXACT_INT_MAX || v < -EXACT_INT_MAX) {
        char t[24];
        snprintf(t, sizeof(t), "%lld", v);
        return json_string(t);
    }
    return json_integer(v);
}

static json_t *uint_json(unsigned long long v)
{
    if (v > (unsigned long long)EXACT_INT_MAX) {
        char t[24];
        snprintf(t, sizeof(t), "%llu", v);
        return json_string(t);
    }
    return json_integer((json_int_t)v);
}

/* A decimal (value / 10^decimals) as its exact text. */
static json_t *decimal_json(amqp_decimal_t d)
{
    char digits[16], t[48], *p = t;
    long long v = (int32_t)d.value;
    unsigned places = d.decimals;
    if (places > 20)
        return json_null();
    snprintf(digits, sizeof(digits), "%llu", (unsigned long long)(v < 0 ? -v : v));
    size_t n = strlen(digits);
    if (v < 0)
        *p++ = '-';
    if (places == 0) {
        memcpy(p, digits, n + 1);
    } else if (n > places) {
        memcpy(p, digits, n - places);
        p += n - places;
        *p++ = '.';
        memcpy(p, digits + n - places, places + 1);
    } else {
        *p++ = '0';
        *p++ = '.';
        for (size_t i = n; i < places; i++)
            *p++ = '0';
        memcpy(p, digits, n + 1);
    }
    return json_string(t);
}

static json_t *table_json(const amqp_table_t *t, int depth);

static json_t *field_json(const amqp_field_value_t *v, int depth)
{
    switch (v->kind) {
    case AMQP_FIELD_KIND_BOOLEAN:
        return json_boolean(v->value.boolean);
    case AMQP_FIELD_KIND_I8:
        return json_integer(v->value.i8);
    case AMQP_FIELD_KIND_U8:
        return json_integer(v->value.u8);
    case AMQP_FIELD_KIND_I16:
        return json_integer(v->value.i16);
    case AMQP_FIELD_KIND_U16:
        return json_integer(v->value.u16);
    case AMQP_FIELD_KIND_I32:
        return json_integer(v->value.i32);
    case AMQP_FIELD_KIND_U32:
        return json_integer(v->value.u32);
    case AMQP_FIELD_KIND_I64:
        return int_json(v->value.i64);
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP:
        return uint_json(v->value.u64);
    case AMQP_FIELD_KIND_F32:
        return isfinite(v->value.f32) ? json_real(v->value.f32) : json_null();
    case AMQP_FIELD_KIND_F64:
        return isfinite(v->value.f64) ? json_real(v->value.f64) : json_null();
    case AMQP_FIELD_KIND_DECIMAL:
        return decimal_json(v->value.decimal);
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
        return pb_amqp_bytes_json(v->value.bytes);
    case AMQP_FIELD_KIND_ARRAY: {
        if (depth >= TABLE_DEPTH_MAX)
            return json_null();
        json_t *a = json_array();
        for (int i = 0; a && i < v->value.array.num_entries; i++) {
            json_t *e = field_json(&v->value.array.entries[i], depth + 1);
            if (!e || json_array_append_new(a, e) != 0) {
                json_decref(a);
                return NULL;
            }
        }
        return a;
    }
    case AMQP_FIELD_KIND_TABLE:
        if (depth >= TABLE_DEPTH_MAX)
            return json_null();
        return table_json(&v->value.table, depth + 1);
    case AMQP_FIELD_KIND_VOID:
    default:
        return json_null();
    }
}

static json_t *table_json(const amqp_table_t *t, int depth)
{
    json_t *o = json_object();
    for (int i = 0; o && i < t->num_entries; i++) {
        const amqp_table_entry_t *e = &t->entries[i];
        /* A key jansson cannot hold (not UTF-8, a NUL) is left out. */
        if (!pb_utf8_valid(e->key.len ? e->key.bytes : "", e->key.len) ||
            memchr(e->key.bytes, 0, e->key.len))
            continue;
        json_t *v = field_json(&e->value, depth);
        if (!v || json_object_setn_new(o, e->key.bytes, e->key.len, v) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

json_t *pb_amqp_table_json(const amqp_table_t *t)
{
    return table_json(t, 0);
}

int pb_amqp_table_from_map(const struct pb_strmap *m, amqp_pool_t *pool, amqp_table_t *out)
{
    out->num_entries = 0;
    out->entries = NULL;
    if (m->n == 0)
        return 0;
    amqp_table_entry_t *es = amqp_pool_alloc(pool, m->n * sizeof(*es));
    if (!es)
        return PB_ENOMEM;
    for (size_t i = 0; i < m->n; i++) {
        const char *v = m->vals[i];
        long long n;
        char *end;
        es[i].key = amqp_cstring_bytes(m->keys[i]);
        errno = 0;
        n = strtoll(v, &end, 10);
        if (*v && *end == 0 && errno == 0 && (v[0] == '-' || (v[0] >= '0' && v[0] <= '9'))) {
            es[i].value.kind = AMQP_FIELD_KIND_I64;
            es[i].value.value.i64 = n;
        } else if (strcmp(v, "true") == 0 || strcmp(v, "false") == 0) {
            es[i].value.kind = AMQP_FIELD_KIND_BOOLEAN;
            es[i].value.value.boolean = v[0] == 't';
        } else {
            es[i].value.kind = AMQP_FIELD_KIND_UTF8;
            es[i].value.value.bytes = amqp_cstring_bytes(v);
        }
    }
    out->num_entries = (int)m->n;
    out->entries = es;
    return 0;
}

char *pb_amqp_copy(char *dst, size_t len, const char *src)
{
    size_t n = strlen(src);
    if (len == 0)
        return dst;
    if (n >= len)
        n = len - 1;
    memcpy(dst, src, n);
    dst[n] = 0;
    return dst;
}

/* ---- backoff ----------------------------------------------------------------------------------
 */

int64_t pb_amqp_backoff_next(int64_t prev)
{
    if (prev <= 0)
        return 500;
    return prev >= 15000 ? 30000 : prev * 2;
}

int64_t pb_amqp_backoff_jitter(int64_t ceiling)
{
    /* Half fixed, half random: a flapping broker is not hammered, and
     * several consumers do not come back in step. */
    int64_t half = ceiling / 2;
    return half + (int64_t)(pb_rand64() % (uint64_t)(half + 1));
}
