/* fuzz_mqtt.c - the MQTT decoders of the mqtt plugins, on bytes a broker
 * could send: the framer splits the input into packets, and each packet is
 * decoded as what its type says, in both protocol versions.
 *
 * Properties:
 *  - the framer never reads past the input, returns a size within it, and
 *    refuses a remaining length beyond max instead of waiting for it;
 *  - a decoded PUBLISH's topic, properties and payload lie inside the
 *    packet, in that order, and a property walk over them ends;
 *  - a PUBLISH that decodes is encoded again into the same bytes
 *    (MQTT 3.1.1, where nothing is optional, when its remaining length was
 *    sent in as few bytes as it needs);
 *  - the other decoders accept or refuse without reading outside. */
#include <string.h>

#include "fuzz.h"
#include "patchbay/pb_err.h"
#include "plugins/inputs/mqtt/mqtt_codec.h"

static void publish(const struct pb_mqtt_packet *pk, const uint8_t *first, int version)
{
    struct pb_mqtt_publish p;
    if (pb_mqtt_parse_publish(pk, version, &p) != 0)
        return;
    const uint8_t *end = pk->p + pk->len;
    FUZZ_ASSERT(p.topic >= pk->p && p.topic + p.topic_len <= end, "topic outside");
    FUZZ_ASSERT(p.payload >= p.topic + p.topic_len && p.payload + p.payload_len == end,
                "payload outside");
    if (version == PB_MQTT_V5) {
        FUZZ_ASSERT(p.props >= p.topic + p.topic_len && p.props + p.props_len <= p.payload,
                    "properties outside");
        struct pb_mqtt_prop prop;
        size_t pos = 0, steps = 0;
        while (pb_mqtt_prop_next(p.props, p.props_len, &pos, &prop) == 1) {
            FUZZ_ASSERT(pos <= p.props_len && ++steps <= p.props_len, "walk does not end");
            if (prop.s)
                FUZZ_ASSERT(prop.s >= p.props && prop.s + prop.slen <= p.props + p.props_len,
                            "property string outside");
        }
        return;
    }
    /* Re-encode: the same bytes (the topic as a C string: skip NULs). */
    if (memchr(p.topic, 0, p.topic_len) || p.qos > 1)
        return;
    char topic[65536];
    memcpy(topic, p.topic, p.topic_len);
    topic[p.topic_len] = 0;
    struct pb_mqtt_buf b = {0};
    struct pb_mqtt_publish_out o = {.topic = topic,
                                    .payload = p.payload,
                                    .len = p.payload_len,
                                    .qos = p.qos,
                                    .retain = p.retain,
                                    .dup = p.dup,
                                    .packet_id = p.packet_id};
    size_t hdr = (size_t)(pk->p - first);
    size_t minimal = 1 + (pk->len < 128 ? 1 : pk->len < 16384 ? 2 : pk->len < 2097152 ? 3 : 4);
    /* A remaining length sent in more bytes than needed is re-encoded shorter. */
    if (hdr == minimal && pb_mqtt_put_publish(&b, PB_MQTT_V311, &o) == 0) {
        FUZZ_ASSERT(b.len == hdr + pk->len, "re-encoded to %zu bytes, not %zu", b.len,
                    hdr + pk->len);
        FUZZ_ASSERT(memcmp(b.p, first, b.len) == 0, "re-encoded differently");
    }
    pb_mqtt_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data;
    size_t left = size;
    while (left) {
        struct pb_mqtt_packet pk;
        long n = pb_mqtt_frame(p, left, 4096, &pk);
        if (n <= 0) {
            FUZZ_ASSERT(n == 0 || n == PB_EPARSE || n == PB_ETOOBIG, "frame returned %ld", n);
            break;
        }
        FUZZ_ASSERT((size_t)n <= left && pk.p + pk.len == p + n, "frame outside the input");
        for (int v = PB_MQTT_V311; v <= PB_MQTT_V5; v++) {
            struct pb_mqtt_connack ca;
            uint16_t pid;
            uint8_t reason, codes[8];
            size_t nc;
            switch (pk.type) {
            case PB_MQTT_PUBLISH:
                publish(&pk, p, v);
                break;
            case PB_MQTT_CONNACK:
                if (pb_mqtt_parse_connack(&pk, v, &ca) == 0 && ca.reason)
                    FUZZ_ASSERT(ca.reason >= pk.p && ca.reason + ca.reason_len <= pk.p + pk.len,
                                "reason outside");
                break;
            case PB_MQTT_PUBACK:
            case PB_MQTT_PUBREC:
            case PB_MQTT_PUBREL:
            case PB_MQTT_PUBCOMP:
                pb_mqtt_parse_ack(&pk, v, &pid, &reason);
                break;
            case PB_MQTT_SUBACK:
            case PB_MQTT_UNSUBACK:
                if (pb_mqtt_parse_suback(&pk, v, &pid, codes, 8, &nc) == 0)
                    FUZZ_ASSERT(nc <= pk.len, "more codes than bytes");
                break;
            case PB_MQTT_DISCONNECT:
                pb_mqtt_parse_disconnect(&pk, v, &reason);
                break;
            default:
                break;
            }
        }
        p += n;
        left -= (size_t)n;
    }
    return 0;
}
