/* test_amqp_common.c - what the amqp input and output share, without a
 * broker: URLs split and their passwords never shown, the credentials that
 * override them, the checks on TLS options, and AMQP field tables turned
 * into JSON exactly (big integers and decimals as text, bytes that are not
 * UTF-8 as base64). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pb_test.h"
#include "plugins/inputs/amqp/amqp_common.h"

static int prepare(struct pb_amqp_conf *c, const char *url, struct pb_err *err)
{
    memset(c, 0, sizeof(*c));
    c->url = strdup(url);
    c->heartbeat_ms = 30000;
    c->connect_timeout_ms = 10000;
    c->tls.verify = true;
    return pb_amqp_conf_prepare(c, err);
}

static void release(struct pb_amqp_conf *c)
{
    pb_amqp_conf_cleanup(c);
    free(c->url);
    free(c->user);
    free(c->password);
    free(c->tls.ca_file);
}

PB_TEST(url_is_split_and_its_password_never_shown)
{
    struct pb_amqp_conf c;
    struct pb_err err = {0};
    PB_EQ_INT(prepare(&c, "amqp://shop:p%40ss@mq.internal:5673/orders", &err), 0);
    PB_EQ_STR(c.host, "mq.internal");
    PB_EQ_INT(c.port, 5673);
    PB_EQ_STR(c.vhost, "orders");
    PB_EQ_STR(c.login, "shop");
    PB_EQ_STR(c.secret, "p@ss");
    PB_CHECK(!c.ssl);
    PB_EQ_STR(c.shown, "amqp://shop:***@mq.internal:5673/orders");
    release(&c);

    /* %2f is "/"; "amqp://host/" and "amqp://host" both mean "/". */
    PB_EQ_INT(prepare(&c, "amqps://u:x@h/%2f", &err), 0);
    PB_EQ_STR(c.vhost, "/");
    PB_EQ_INT(c.port, 5671);
    PB_CHECK(c.ssl);
    release(&c);
    PB_EQ_INT(prepare(&c, "amqp://h/", &err), 0);
    PB_EQ_STR(c.vhost, "/");
    PB_EQ_STR(c.login, "guest");
    PB_EQ_STR(c.shown, "amqp://h/");
    release(&c);
}

PB_TEST(bad_urls_are_refused_without_the_password)
{
    static const char *const bad[] = {
        "http://u:hunter2@h/",
        "amqp://u:hunter2@h/a/b",
        "amqp://u:hunter2@h:99999/",
        "amqp://u:hunter2@h/?heartbeat=5",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct pb_amqp_conf c;
        struct pb_err err = {0};
        PB_EQ_INT(prepare(&c, bad[i], &err), PB_ECONFIG);
        PB_CHECK(strstr(err.msg, "hunter2") == NULL);
        PB_CHECK(strstr(err.msg, "u:***@h") != NULL);
        release(&c);
    }
}

PB_TEST(credentials_and_tls_options)
{
    struct pb_amqp_conf c;
    struct pb_err err = {0};
    memset(&c, 0, sizeof(c));
    c.url = strdup("amqp://h");
    c.user = strdup("app");
    c.password = strdup("from-env");
    c.connect_timeout_ms = 10000;
    PB_EQ_INT(pb_amqp_conf_prepare(&c, &err), 0);
    PB_EQ_STR(c.login, "app");
    PB_EQ_STR(c.secret, "from-env");
    release(&c);

    /* tls options need amqps:// */
    memset(&c, 0, sizeof(c));
    c.url = strdup("amqp://h");
    c.tls.ca_file = strdup("/etc/ssl/ca.pem");
    c.connect_timeout_ms = 10000;
    PB_EQ_INT(pb_amqp_conf_prepare(&c, &err), PB_ECONFIG);
    PB_CHECK(strstr(err.msg, "amqps://") != NULL);
    release(&c);
}

static char *dump(json_t *j)
{
    char *t = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(j);
    return t;
}

PB_TEST(tables_become_json_exactly)
{
    amqp_table_entry_t inner = {.key = amqp_cstring_bytes("a"),
                                .value = {.kind = AMQP_FIELD_KIND_U8, .value.u8 = 7}};
    amqp_field_value_t arr[2] = {{.kind = AMQP_FIELD_KIND_BOOLEAN, .value.boolean = 0},
                                 {.kind = AMQP_FIELD_KIND_VOID}};
    static const unsigned char raw[] = {0xc3, 0x28, 'x'};
    amqp_table_entry_t es[] = {
        {.key = amqp_cstring_bytes("big"),
         .value = {.kind = AMQP_FIELD_KIND_I64, .value.i64 = -9007199254740993LL}},
        {.key = amqp_cstring_bytes("exact"),
         .value = {.kind = AMQP_FIELD_KIND_I64, .value.i64 = 9007199254740992LL}},
        {.key = amqp_cstring_bytes("u64"),
         .value = {.kind = AMQP_FIELD_KIND_U64, .value.u64 = 18446744073709551615ULL}},
        {.key = amqp_cstring_bytes("dec"),
         .value = {.kind = AMQP_FIELD_KIND_DECIMAL, .value.decimal = {.decimals = 3, .value = 5}}},
        {.key = amqp_cstring_bytes("neg"),
         .value = {.kind = AMQP_FIELD_KIND_DECIMAL,
                   .value.decimal = {.decimals = 1, .value = (uint32_t)-125}}},
        {.key = amqp_cstring_bytes("raw"),
         .value = {.kind = AMQP_FIELD_KIND_BYTES, .value.bytes = {3, (void *)raw}}},
        {.key = amqp_cstring_bytes("t"),
         .value = {.kind = AMQP_FIELD_KIND_TABLE, .value.table = {1, &inner}}},
        {.key = amqp_cstring_bytes("l"),
         .value = {.kind = AMQP_FIELD_KIND_ARRAY, .value.array = {2, arr}}},
        {.key = amqp_cstring_bytes("f"), .value = {.kind = AMQP_FIELD_KIND_F32, .value.f32 = 0.5f}},
    };
    amqp_table_t t = {.num_entries = (int)(sizeof(es) / sizeof(es[0])), .entries = es};
    char *text = dump(pb_amqp_table_json(&t));
    PB_EQ_STR(text, "{\"big\":\"-9007199254740993\",\"dec\":\"0.005\",\"exact\":9007199254740992,"
                    "\"f\":0.5,\"l\":[false,null],\"neg\":\"-12.5\",\"raw\":{\"base64\":\"wyh4\"},"
                    "\"t\":{\"a\":7},\"u64\":\"18446744073709551615\"}");
    free(text);
}

PB_TEST(string_maps_become_typed_tables)
{
    char *keys[] = {"x-max-length", "x-queue-type", "x-single-active-consumer", "x-name"};
    char *vals[] = {"100000", "quorum", "true", "12ab"};
    struct pb_strmap m = {.n = 4, .keys = keys, .vals = vals};
    amqp_pool_t pool;
    amqp_table_t t;
    init_amqp_pool(&pool, 256);
    PB_EQ_INT(pb_amqp_table_from_map(&m, &pool, &t), 0);
    PB_EQ_INT(t.num_entries, 4);
    PB_EQ_INT(t.entries[0].value.kind, AMQP_FIELD_KIND_I64);
    PB_EQ_INT(t.entries[0].value.value.i64, 100000);
    PB_EQ_INT(t.entries[1].value.kind, AMQP_FIELD_KIND_UTF8);
    PB_EQ_INT(t.entries[2].value.kind, AMQP_FIELD_KIND_BOOLEAN);
    PB_EQ_INT(t.entries[2].value.value.boolean, 1);
    PB_EQ_INT(t.entries[3].value.kind, AMQP_FIELD_KIND_UTF8);
    empty_amqp_pool(&pool);
}

int main(void)
{
    return pb_test_main();
}
