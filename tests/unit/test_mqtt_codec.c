/* test_mqtt_codec.c - the MQTT codec and helpers of the mqtt plugins: packets
 * encoded byte for byte as the specifications show them, decoded back,
 * framing of partial, oversized and malformed input, topic names and
 * filters, connection options (URLs), the packet-id table against a plain
 * array, and the reconnect backoff. */
#include <stdlib.h>
#include <string.h>

#include "pb_test.h"
#include "plugins/inputs/mqtt/mqtt_codec.h"
#include "plugins/inputs/mqtt/mqtt_common.h"
#include "patchbay/pb_err.h"

static struct pb_mqtt_packet frame_one(const struct pb_mqtt_buf *b)
{
    struct pb_mqtt_packet pk = {0};
    long n = pb_mqtt_frame(b->p, b->len, 1 << 20, &pk);
    PB_EQ_INT(n, (long)b->len);
    return pk;
}

PB_TEST(connect_311_bytes)
{
    struct pb_mqtt_buf b = {0};
    struct pb_mqtt_connect c = {.version = PB_MQTT_V311,
                                .client_id = "pb",
                                .clean = false,
                                .keepalive = 30,
                                .user = "u",
                                .password = "p"};
    PB_EQ_INT(pb_mqtt_put_connect(&b, &c), 0);
    static const uint8_t want[] = {0x10, 20, 0, 4,   'M', 'Q', 'T', 'T', 4, 0xC0, 0,
                                   30,   0,  2, 'p', 'b', 0,   1,   'u', 0, 1,    'p'};
    PB_EQ_INT(b.len, sizeof(want));
    PB_CHECK(memcmp(b.p, want, sizeof(want)) == 0);
    pb_mqtt_buf_free(&b);
}

PB_TEST(connect_5_carries_session_expiry_and_receive_maximum)
{
    struct pb_mqtt_buf b = {0};
    struct pb_mqtt_connect c = {.version = PB_MQTT_V5,
                                .client_id = "x",
                                .clean = true,
                                .session_expiry = 0xFFFFFFFF,
                                .receive_max = 100};
    PB_EQ_INT(pb_mqtt_put_connect(&b, &c), 0);
    struct pb_mqtt_packet pk = frame_one(&b);
    PB_EQ_INT(pk.type, PB_MQTT_CONNECT);
    PB_EQ_INT(pk.p[6], 5);    /* protocol level */
    PB_EQ_INT(pk.p[7], 0x02); /* clean start */
    PB_EQ_INT(pk.p[10], 8);   /* properties: 5 + 3 bytes */
    static const uint8_t props[] = {0x11, 0xFF, 0xFF, 0xFF, 0xFF, 0x21, 0, 100};
    PB_CHECK(memcmp(pk.p + 11, props, sizeof(props)) == 0);
    pb_mqtt_buf_free(&b);
}

PB_TEST(publish_round_trip_both_versions)
{
    for (int v = PB_MQTT_V311; v <= PB_MQTT_V5; v++) {
        struct pb_mqtt_buf b = {0};
        struct pb_mqtt_user_prop up[2] = {{"Idempotency-Key", "k1"}, {"a", "b"}};
        struct pb_mqtt_publish_out o = {.topic = "a/b",
                                        .payload = "{\"x\":1}",
                                        .len = 7,
                                        .qos = 1,
                                        .retain = true,
                                        .packet_id = 513,
                                        .content_type = "application/json",
                                        .props = up,
                                        .nprops = 2};
        PB_EQ_INT(pb_mqtt_put_publish(&b, v, &o), 0);
        PB_EQ_INT(b.len, pb_mqtt_publish_size(v, &o));
        struct pb_mqtt_packet pk = frame_one(&b);
        struct pb_mqtt_publish p;
        PB_EQ_INT(pb_mqtt_parse_publish(&pk, v, &p), 0);
        PB_EQ_INT(p.topic_len, 3);
        PB_CHECK(memcmp(p.topic, "a/b", 3) == 0);
        PB_EQ_INT(p.qos, 1);
        PB_CHECK(p.retain && !p.dup);
        PB_EQ_INT(p.packet_id, 513);
        PB_EQ_INT(p.payload_len, 7);
        PB_CHECK(memcmp(p.payload, "{\"x\":1}", 7) == 0);
        if (v == PB_MQTT_V5) {
            struct pb_mqtt_prop prop;
            size_t pos = 0;
            int n = 0;
            while (pb_mqtt_prop_next(p.props, p.props_len, &pos, &prop) == 1) {
                if (n == 0) {
                    PB_EQ_INT(prop.id, PB_MQTT_PROP_CONTENT_TYPE);
                    PB_EQ_INT(prop.slen, 16);
                } else {
                    PB_EQ_INT(prop.id, PB_MQTT_PROP_USER);
                }
                n++;
            }
            PB_EQ_INT(n, 3);
        } else {
            PB_EQ_INT(p.props_len, 0);
        }
        pb_mqtt_buf_free(&b);
    }
}

PB_TEST(publish_qos0_has_no_packet_id)
{
    struct pb_mqtt_buf b = {0};
    struct pb_mqtt_publish_out o = {.topic = "t", .payload = "x", .len = 1, .qos = 0};
    PB_EQ_INT(pb_mqtt_put_publish(&b, PB_MQTT_V311, &o), 0);
    static const uint8_t want[] = {0x30, 4, 0, 1, 't', 'x'};
    PB_EQ_INT(b.len, sizeof(want));
    PB_CHECK(memcmp(b.p, want, sizeof(want)) == 0);
    /* QoS 1 without an id is refused. */
    o.qos = 1;
    PB_EQ_INT(pb_mqtt_put_publish(&b, PB_MQTT_V311, &o), PB_EINVAL);
    pb_mqtt_buf_free(&b);
}

PB_TEST(small_packets_bytes)
{
    struct pb_mqtt_buf b = {0};
    const char *filters[] = {"a/#", "b/+"};
    PB_EQ_INT(pb_mqtt_put_puback(&b, PB_MQTT_V311, 0x1234), 0);
    PB_EQ_INT(pb_mqtt_put_pingreq(&b), 0);
    PB_EQ_INT(pb_mqtt_put_disconnect(&b, PB_MQTT_V311), 0);
    PB_EQ_INT(pb_mqtt_put_subscribe(&b, PB_MQTT_V311, 7, filters, 2, 1, 1), 0);
    PB_EQ_INT(pb_mqtt_put_unsubscribe(&b, PB_MQTT_V311, 8, filters, 1), 0);
    static const uint8_t want[] = {0x40, 2, 0x12, 0x34, 0xC0, 0,   0xE0, 0, 0x82, 14,  0,
                                   7,    0, 3,    'a',  '/',  '#', 1,    0, 3,    'b', '/',
                                   '+',  1, 0xA2, 7,    0,    8,   0,    3, 'a',  '/', '#'};
    PB_EQ_INT(b.len, sizeof(want));
    PB_CHECK(memcmp(b.p, want, sizeof(want)) == 0);
    /* MQTT 5: a property length after the id, and the retain handling bits. */
    b.len = 0;
    PB_EQ_INT(pb_mqtt_put_subscribe(&b, PB_MQTT_V5, 7, filters, 1, 1, 1), 0);
    static const uint8_t want5[] = {0x82, 9, 0, 7, 0, 0, 3, 'a', '/', '#', 0x11};
    PB_EQ_INT(b.len, sizeof(want5));
    PB_CHECK(memcmp(b.p, want5, sizeof(want5)) == 0);
    pb_mqtt_buf_free(&b);
}

PB_TEST(framing_partial_big_and_malformed)
{
    struct pb_mqtt_packet pk;
    static const uint8_t two[] = {0xD0, 0x00, 0x40, 0x02, 0x00, 0x05};
    PB_EQ_INT(pb_mqtt_frame(two, 1, 100, &pk), 0);
    PB_EQ_INT(pb_mqtt_frame(two, 2, 100, &pk), 2);
    PB_EQ_INT(pk.type, PB_MQTT_PINGRESP);
    PB_EQ_INT(pb_mqtt_frame(two + 2, 3, 100, &pk), 0); /* PUBACK cut short */
    PB_EQ_INT(pb_mqtt_frame(two + 2, 4, 100, &pk), 4);
    /* A remaining length of 200 is two bytes: 0xC8 0x01. */
    static const uint8_t big[] = {0x30, 0xC8, 0x01};
    PB_EQ_INT(pb_mqtt_frame(big, 2, 1000, &pk), 0);
    PB_EQ_INT(pb_mqtt_frame(big, 3, 1000, &pk), 0);
    PB_EQ_INT(pb_mqtt_frame(big, 3, 100, &pk), PB_ETOOBIG);
    static const uint8_t bad[] = {0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01};
    PB_EQ_INT(pb_mqtt_frame(bad, sizeof(bad), 1u << 30, &pk), PB_EPARSE);
}

PB_TEST(connack_both_versions)
{
    struct pb_mqtt_connack a;
    static const uint8_t v3[] = {0x20, 2, 1, 0};
    struct pb_mqtt_packet pk;
    PB_EQ_INT(pb_mqtt_frame(v3, sizeof(v3), 100, &pk), 4);
    PB_EQ_INT(pb_mqtt_parse_connack(&pk, PB_MQTT_V311, &a), 0);
    PB_CHECK(a.session_present && a.code == 0 && !a.v311_form);
    /* A 3.1.1 broker answering a version 5 CONNECT. */
    static const uint8_t refused[] = {0x20, 2, 0, 1};
    pb_mqtt_frame(refused, sizeof(refused), 100, &pk);
    PB_EQ_INT(pb_mqtt_parse_connack(&pk, PB_MQTT_V5, &a), 0);
    PB_CHECK(a.v311_form && a.code == 1);
    /* Version 5 properties: receive maximum 10, retain unavailable, reason. */
    static const uint8_t v5[] = {0x20, 12, 0, 0, 9, 0x21, 0, 10, 0x25, 0, 0x1F, 0, 1, 'r'};
    PB_EQ_INT(pb_mqtt_frame(v5, sizeof(v5), 100, &pk), (long)sizeof(v5));
    PB_EQ_INT(pb_mqtt_parse_connack(&pk, PB_MQTT_V5, &a), 0);
    PB_EQ_INT(a.receive_max, 10);
    PB_CHECK(!a.retain_available && a.max_qos == 2 && a.reason_len == 1);
    /* A property block longer than the packet. */
    static const uint8_t lie[] = {0x20, 3, 0, 0, 9};
    pb_mqtt_frame(lie, sizeof(lie), 100, &pk);
    PB_EQ_INT(pb_mqtt_parse_connack(&pk, PB_MQTT_V5, &a), PB_EPARSE);
}

PB_TEST(acks_and_subacks)
{
    struct pb_mqtt_packet pk;
    uint16_t pid;
    uint8_t reason, codes[4];
    size_t n;
    static const uint8_t puback5[] = {0x40, 3, 0, 9, 0x87};
    pb_mqtt_frame(puback5, sizeof(puback5), 100, &pk);
    PB_EQ_INT(pb_mqtt_parse_ack(&pk, PB_MQTT_V5, &pid, &reason), 0);
    PB_CHECK(pid == 9 && reason == 0x87);
    PB_EQ_INT(pb_mqtt_parse_ack(&pk, PB_MQTT_V311, &pid, &reason), PB_EPARSE);
    static const uint8_t suback[] = {0x90, 4, 0, 3, 1, 0x80};
    pb_mqtt_frame(suback, sizeof(suback), 100, &pk);
    PB_EQ_INT(pb_mqtt_parse_suback(&pk, PB_MQTT_V311, &pid, codes, 4, &n), 0);
    PB_CHECK(pid == 3 && n == 2 && codes[0] == 1 && codes[1] == 0x80);
    static const uint8_t unsuback[] = {0xB0, 2, 0, 4};
    pb_mqtt_frame(unsuback, sizeof(unsuback), 100, &pk);
    PB_EQ_INT(pb_mqtt_parse_suback(&pk, PB_MQTT_V311, &pid, codes, 4, &n), 0);
    PB_CHECK(pid == 4 && n == 0);
    static const uint8_t zero_pid[] = {0x40, 2, 0, 0};
    pb_mqtt_frame(zero_pid, sizeof(zero_pid), 100, &pk);
    PB_EQ_INT(pb_mqtt_parse_ack(&pk, PB_MQTT_V311, &pid, &reason), PB_EPARSE);
}

PB_TEST(topic_names_and_filters)
{
    PB_CHECK(pb_mqtt_topic_name_ok("a/b", 3));
    PB_CHECK(pb_mqtt_topic_name_ok("/", 1));
    PB_CHECK(!pb_mqtt_topic_name_ok("", 0));
    PB_CHECK(!pb_mqtt_topic_name_ok("a/+", 3));
    PB_CHECK(!pb_mqtt_topic_name_ok("a/#", 3));
    PB_CHECK(!pb_mqtt_topic_name_ok("a\0b", 3));
    PB_CHECK(!pb_mqtt_topic_name_ok("\xff", 1));
    static const struct {
        const char *f;
        int ok;
    } filters[] = {
        {"#", 1},      {"a/#", 1},   {"+", 1},   {"+/+/c", 1}, {"a//b", 1}, {"$SYS/#", 1},
        {"a#", 0},     {"a/#/b", 0}, {"a+", 0},  {"a/b+", 0},  {"", 0},     {"#/", 0},
        {"a/+b/c", 0}, {"++", 0},    {"/+/", 1}, {"/#", 1},
    };
    for (size_t i = 0; i < sizeof(filters) / sizeof(filters[0]); i++)
        if (pb_mqtt_topic_filter_ok(filters[i].f) != filters[i].ok)
            PB__FAIL("filter \"%s\": want %d", filters[i].f, filters[i].ok);
}

PB_TEST(urls)
{
    static const struct {
        const char *url;
        const char *host;
        int port;
        int tls;
    } good[] = {
        {"mqtt://broker", "broker", 1883, 0},
        {"mqtts://broker", "broker", 8883, 1},
        {"mqtt://127.0.0.1:1884", "127.0.0.1", 1884, 0},
        {"MQTTS://[::1]:9000/", "::1", 9000, 1},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        struct pb_mqtt_conf c = {.url = (char *)good[i].url, .connect_timeout_ms = 1000};
        struct pb_err err = {0};
        PB_EQ_INT(pb_mqtt_conf_prepare(&c, &err), 0);
        PB_EQ_STR(c.host, good[i].host);
        PB_EQ_INT(c.port, good[i].port);
        PB_EQ_INT(c.use_tls, good[i].tls);
    }
    static const char *bad[] = {"http://x",     "mqtt://",        "mqtt://u:p@host",
                                "mqtt://h:0",   "mqtt://h:70000", "mqtt://h/path",
                                "mqtt://h:12x", "mqtt://[::1",    "mqtt://h?x=1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct pb_mqtt_conf c = {.url = (char *)bad[i], .connect_timeout_ms = 1000};
        struct pb_err err = {0};
        if (pb_mqtt_conf_prepare(&c, &err) == 0)
            PB__FAIL("url \"%s\" accepted", bad[i]);
    }
    /* TLS options need mqtts://; 3.1.1 has no password without a user. */
    struct pb_mqtt_conf c = {.url = "mqtt://h", .connect_timeout_ms = 1, .tls.ca_file = "ca"};
    struct pb_err err = {0};
    PB_EQ_INT(pb_mqtt_conf_prepare(&c, &err), PB_ECONFIG);
    struct pb_mqtt_conf d = {.url = "mqtt://h", .connect_timeout_ms = 1, .password = "x"};
    PB_EQ_INT(pb_mqtt_conf_prepare(&d, &err), PB_ECONFIG);
    d.protocol = 1; /* MQTT 5 allows it */
    PB_EQ_INT(pb_mqtt_conf_prepare(&d, &err), 0);
}

PB_TEST(idmap_matches_a_plain_array)
{
    struct pb_mqtt_idmap m = {0};
    static uint8_t in[65536];
    memset(in, 0, sizeof(in));
    srand(7);
    size_t n = 0;
    for (int step = 0; step < 200000; step++) {
        /* Ids clustered so probe runs collide and wrap. */
        uint16_t id = (uint16_t)(1 + (rand() % 300) * 64 + (rand() % 3));
        struct pb_mqtt_slot *s = pb_mqtt_idmap_get(&m, id);
        PB_EQ_INT(s != NULL, in[id]);
        if (rand() % 3 && !in[id]) {
            s = pb_mqtt_idmap_put(&m, id);
            PB_CHECK(s != NULL);
            s->tag = id * 3u;
            in[id] = 1;
            n++;
        } else if (in[id]) {
            PB_EQ_INT(s->tag, id * 3u);
            pb_mqtt_idmap_del(&m, s);
            in[id] = 0;
            n--;
        }
        PB_EQ_INT(m.n, n);
        if (pb__failed_here)
            break;
    }
    pb_mqtt_idmap_free(&m);
}

PB_TEST(backoff_doubles_to_thirty_seconds_with_jitter)
{
    int64_t b = 0;
    static const int64_t want[] = {250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        b = pb_mqtt_backoff_next(b);
        PB_EQ_INT(b, want[i]);
        int64_t j = pb_mqtt_backoff_jitter(b);
        PB_CHECK(j >= b / 2 && j <= b);
    }
}

int main(void)
{
    return pb_test_main();
}
