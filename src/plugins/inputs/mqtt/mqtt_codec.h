/* mqtt_codec.h - MQTT 3.1.1 and 5 packets, encoded and decoded, for the
 * `mqtt` input and output (which speak MQTT over a socket of their own; see
 * mqtt.c for why).
 *
 * Only what the two plugins use: CONNECT/CONNACK, PUBLISH with QoS 0 and 1,
 * PUBACK, SUBSCRIBE/SUBACK, UNSUBSCRIBE/UNSUBACK, PINGREQ/PINGRESP and
 * DISCONNECT. Decoders read a packet the framer split off a buffer and
 * never trust a length they were given: every read is checked against the
 * end of the packet, and a packet that does not parse whole is malformed.
 *
 * Thread model: none; pure functions over caller-owned buffers. */
#ifndef PB_MQTT_CODEC_H
#define PB_MQTT_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PB_MQTT_V311 4 /* protocol level of MQTT 3.1.1 */
#define PB_MQTT_V5 5

enum {
    PB_MQTT_CONNECT = 1,
    PB_MQTT_CONNACK = 2,
    PB_MQTT_PUBLISH = 3,
    PB_MQTT_PUBACK = 4,
    PB_MQTT_PUBREC = 5,
    PB_MQTT_PUBREL = 6,
    PB_MQTT_PUBCOMP = 7,
    PB_MQTT_SUBSCRIBE = 8,
    PB_MQTT_SUBACK = 9,
    PB_MQTT_UNSUBSCRIBE = 10,
    PB_MQTT_UNSUBACK = 11,
    PB_MQTT_PINGREQ = 12,
    PB_MQTT_PINGRESP = 13,
    PB_MQTT_DISCONNECT = 14,
    PB_MQTT_AUTH = 15,
};

#define PB_MQTT_MAX_REMAINING 268435455u /* the largest remaining length there is */

/* ---- a growable output buffer ------------------------------------------------------ */

struct pb_mqtt_buf {
    uint8_t *p;
    size_t len, cap;
    bool failed; /* an append ran out of memory: the buffer's content is incomplete */
};
void pb_mqtt_buf_free(struct pb_mqtt_buf *b);

/* ---- encoding (each appends one whole packet to b; 0 or PB_ENOMEM/PB_EINVAL) -------- */

struct pb_mqtt_user_prop {
    const char *name;
    const char *value;
};

struct pb_mqtt_connect {
    int version; /* PB_MQTT_V311 or PB_MQTT_V5 */
    const char *client_id;
    bool clean;         /* clean session (3.1.1) / clean start (5) */
    uint16_t keepalive; /* seconds */
    const char *user;   /* NULL: none */
    const char *password;
    /* MQTT 5 only */
    uint32_t session_expiry;  /* seconds the broker keeps the session after a disconnect */
    uint16_t receive_max;     /* QoS 1 messages the broker may have unacknowledged (0: 65535) */
    uint32_t max_packet_size; /* 0: no limit announced */
};
int pb_mqtt_put_connect(struct pb_mqtt_buf *b, const struct pb_mqtt_connect *c);

struct pb_mqtt_publish_out {
    const char *topic;
    const void *payload;
    size_t len;
    int qos; /* 0 or 1 */
    bool retain;
    bool dup;
    uint16_t packet_id; /* qos 1 */
    /* MQTT 5 only */
    const char *content_type; /* NULL: none */
    const struct pb_mqtt_user_prop *props;
    size_t nprops;
};
/* The size pb_mqtt_put_publish would append (to check a broker's maximum
 * packet size before sending). */
size_t pb_mqtt_publish_size(int version, const struct pb_mqtt_publish_out *p);
int pb_mqtt_put_publish(struct pb_mqtt_buf *b, int version, const struct pb_mqtt_publish_out *p);
int pb_mqtt_put_puback(struct pb_mqtt_buf *b, int version, uint16_t packet_id);
/* retain_handling (MQTT 5): 0 send retained messages on subscribe, 1 only
 * for a subscription that did not exist yet, 2 never. */
int pb_mqtt_put_subscribe(struct pb_mqtt_buf *b, int version, uint16_t packet_id,
                          const char *const *filters, size_t n, int qos, int retain_handling);
int pb_mqtt_put_unsubscribe(struct pb_mqtt_buf *b, int version, uint16_t packet_id,
                            const char *const *filters, size_t n);
int pb_mqtt_put_pingreq(struct pb_mqtt_buf *b);
int pb_mqtt_put_disconnect(struct pb_mqtt_buf *b, int version);

/* ---- framing ------------------------------------------------------------------------- */

struct pb_mqtt_packet {
    int type;         /* PB_MQTT_* */
    unsigned flags;   /* low nibble of the first byte */
    const uint8_t *p; /* variable header and payload */
    size_t len;
};

/* Split the first packet off buf[0..len): its whole size (> 0) with *pk
 * pointing into buf, 0 when more bytes are needed, PB_EPARSE for a
 * malformed remaining length, PB_ETOOBIG when the packet would exceed max
 * bytes. */
long pb_mqtt_frame(const uint8_t *buf, size_t len, size_t max, struct pb_mqtt_packet *pk);

/* ---- decoding (0 or PB_EPARSE) ------------------------------------------------------- */

struct pb_mqtt_connack {
    bool session_present;
    uint8_t code;   /* 0: accepted; the return code (3.1.1) or reason code (5) */
    bool v311_form; /* a 3.1.1 CONNACK (2 bytes) although version 5 was asked */
    /* MQTT 5 properties (defaults when absent) */
    uint16_t receive_max;      /* 65535 */
    uint8_t max_qos;           /* 2 */
    bool retain_available;     /* true */
    uint32_t max_packet_size;  /* 0: no limit */
    uint16_t server_keepalive; /* 0: none given */
    const uint8_t *reason;     /* reason string, reason_len bytes; NULL when none */
    size_t reason_len;
};
int pb_mqtt_parse_connack(const struct pb_mqtt_packet *pk, int version,
                          struct pb_mqtt_connack *out);

/* A PUBLISH as received: pointers into the packet. The topic is the bytes
 * the broker sent (check it with pb_mqtt_topic_name_ok). */
struct pb_mqtt_publish {
    const uint8_t *topic;
    size_t topic_len;
    int qos;
    bool retain, dup;
    uint16_t packet_id; /* 0 for QoS 0 */
    const uint8_t *payload;
    size_t payload_len;
    /* MQTT 5 */
    const uint8_t *props; /* the raw property block (walk it with pb_mqtt_prop_next) */
    size_t props_len;
    uint16_t topic_alias; /* 0: none */
};
int pb_mqtt_parse_publish(const struct pb_mqtt_packet *pk, int version,
                          struct pb_mqtt_publish *out);

/* One MQTT 5 property. Strings and binary data point into the packet;
 * whether a string is the UTF-8 it should be is for the reader to check. */
struct pb_mqtt_prop {
    uint8_t id;
    uint32_t num;          /* byte, two-byte, four-byte and variable integers */
    const uint8_t *s, *s2; /* string/binary; the second string of a pair */
    size_t slen, s2len;
};
enum {
    PB_MQTT_PROP_PAYLOAD_FORMAT = 0x01,
    PB_MQTT_PROP_MESSAGE_EXPIRY = 0x02,
    PB_MQTT_PROP_CONTENT_TYPE = 0x03,
    PB_MQTT_PROP_RESPONSE_TOPIC = 0x08,
    PB_MQTT_PROP_CORRELATION_DATA = 0x09,
    PB_MQTT_PROP_SUBSCRIPTION_ID = 0x0B,
    PB_MQTT_PROP_REASON_STRING = 0x1F,
    PB_MQTT_PROP_TOPIC_ALIAS = 0x23,
    PB_MQTT_PROP_USER = 0x26,
};
/* Walk a property block: 1 with *prop filled (and *pos moved on), 0 at its
 * end, PB_EPARSE when it is malformed. Start with *pos = 0. */
int pb_mqtt_prop_next(const uint8_t *props, size_t len, size_t *pos, struct pb_mqtt_prop *prop);

/* PUBACK, PUBREC, PUBREL, PUBCOMP: the packet id and (MQTT 5) the reason
 * code, 0 when the packet carries none. */
int pb_mqtt_parse_ack(const struct pb_mqtt_packet *pk, int version, uint16_t *packet_id,
                      uint8_t *reason);
/* SUBACK and UNSUBACK (3.1.1 UNSUBACK carries no codes: *n = 0). */
int pb_mqtt_parse_suback(const struct pb_mqtt_packet *pk, int version, uint16_t *packet_id,
                         uint8_t *codes, size_t max, size_t *n);
/* A DISCONNECT from the broker (MQTT 5): its reason code (0 when none). */
int pb_mqtt_parse_disconnect(const struct pb_mqtt_packet *pk, int version, uint8_t *reason);

/* ---- names and texts ----------------------------------------------------------------- */

/* A topic name a message may be published to: 1..65535 bytes of UTF-8, no
 * U+0000, no wildcard. */
bool pb_mqtt_topic_name_ok(const char *t, size_t len);
/* A topic filter: like a name, where `+` fills a whole level and `#` only
 * the whole last one. */
bool pb_mqtt_topic_filter_ok(const char *f);
/* A CONNACK return code (3.1.1) or any reason code (5) in words. */
const char *pb_mqtt_reason_text(int version, uint8_t code);

#endif
