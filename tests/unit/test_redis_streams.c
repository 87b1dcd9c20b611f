/* test_redis_streams.c - the redis_streams connection options: URL parsing
 * (user, password with %-escapes, IPv6, port, database), what is refused
 * (TLS, queries, a user without a password), that no error text ever holds
 * the password, and entry ids. Table-driven; no Redis needed. */
#include <stdio.h>
#include <string.h>

#include "pb_test.h"
#include "plugins/inputs/redis_streams/redis_streams_common.h"

struct url_case {
    const char *url;
    int rc;
    const char *host;
    int port;
    long db;
    const char *user;
    const char *password;
    const char *err; /* part of the error text */
};

static const struct url_case url_cases[] = {
    {"redis://127.0.0.1:6379", 0, "127.0.0.1", 6379, 0, NULL, NULL, NULL},
    {"redis://localhost", 0, "localhost", 6379, 0, NULL, NULL, NULL},
    {"redis://cache.internal:7000/3", 0, "cache.internal", 7000, 3, NULL, NULL, NULL},
    {"redis://:s3cret@h:1/", 0, "h", 1, 0, NULL, "s3cret", NULL},
    {"redis://app:p%40ss%3Aw0rd@h", 0, "h", 6379, 0, "app", "p@ss:w0rd", NULL},
    {"redis://app:p@ss@h:6380", 0, "h", 6380, 0, "app", "p@ss", NULL},
    {"redis://[::1]:6390/2", 0, "::1", 6390, 2, NULL, NULL, NULL},
    {"REDIS://H:65535", 0, "H", 65535, 0, NULL, NULL, NULL},
    {"rediss://:pw-secret@h", PB_ECONFIG, NULL, 0, 0, NULL, NULL, "no TLS support"},
    {"http://h", PB_ECONFIG, NULL, 0, 0, NULL, NULL, "must start with redis://"},
    {"redis://user@h", PB_ECONFIG, NULL, 0, 0, NULL, NULL, "a user without a password"},
    {"redis://:p%zzpw-secret@h", PB_ECONFIG, NULL, 0, 0, NULL, NULL, "bad %-escape"},
    {"redis://:p%00@h", PB_ECONFIG, NULL, 0, 0, NULL, NULL, "bad %-escape"},
    {"redis://h:0", PB_ECONFIG, NULL, 0, 0, NULL, NULL, "port"},
    {"redis://h:65536", PB_ECONFIG, NULL, 0, 0, NULL, NULL, "port"},
    {"redis://h:12x", PB_ECONFIG, NULL, 0, 0, NULL, NULL, "port"},
    {"redis://h/db1", PB_ECONFIG, NULL, 0, 0, NULL, NULL, "database number"},
    {"redis://h?db=1", PB_ECONFIG, NULL, 0, 0, NULL, NULL, "query"},
    {"redis://:pw-secret@", PB_ECONFIG, NULL, 0, 0, NULL, NULL, "no host"},
    {"redis://[::1", PB_ECONFIG, NULL, 0, 0, NULL, NULL, "unterminated"},
    {"redis://h h", PB_ECONFIG, NULL, 0, 0, NULL, NULL, "bad character"},
};

PB_TEST(url_parsing)
{
    for (size_t i = 0; i < sizeof(url_cases) / sizeof(url_cases[0]); i++) {
        const struct url_case *c = &url_cases[i];
        struct rs_conn_conf conf = {
            .url = (char *)c->url, .connect_timeout_ms = 1000, .timeout_ms = 1000};
        struct rs_target t;
        struct pb_err err = {0};
        int rc = rs_target_init(&t, &conf, &err);
        if (rc != c->rc)
            fprintf(stderr, "  case %s: %s\n", c->url, err.msg);
        PB_EQ_INT(rc, c->rc);
        if (rc == 0 && c->rc == 0) {
            PB_EQ_STR(t.host, c->host);
            PB_EQ_INT(t.port, c->port);
            PB_EQ_INT(t.db, c->db);
            PB_CHECK((t.user == NULL) == (c->user == NULL));
            if (t.user && c->user)
                PB_EQ_STR(t.user, c->user);
            PB_CHECK((t.password == NULL) == (c->password == NULL));
            if (t.password && c->password)
                PB_EQ_STR(t.password, c->password);
        }
        if (c->err) {
            if (!strstr(err.msg, c->err))
                fprintf(stderr, "  case %s: error \"%s\" lacks \"%s\"\n", c->url, err.msg, c->err);
            PB_CHECK(strstr(err.msg, c->err) != NULL);
            PB_CHECK(strstr(err.msg, "secret") == NULL); /* never the password */
        }
        rs_target_cleanup(&t);
    }
}

PB_TEST(options_override_the_url_and_tls_is_refused)
{
    struct rs_conn_conf conf = {.url = "redis://old:old-pw@h",
                                .user = "new",
                                .password = "new-pw",
                                .connect_timeout_ms = 1000,
                                .timeout_ms = 1000};
    struct rs_target t;
    struct pb_err err = {0};
    PB_EQ_INT(rs_target_init(&t, &conf, &err), 0);
    PB_EQ_STR(t.user, "new");
    PB_EQ_STR(t.password, "new-pw");
    rs_target_cleanup(&t);

    struct rs_conn_conf nopw = {
        .url = "redis://h", .user = "u", .connect_timeout_ms = 1000, .timeout_ms = 1000};
    PB_EQ_INT(rs_target_init(&t, &nopw, &err), PB_ECONFIG);
    PB_CHECK(strstr(err.msg, "needs a password") != NULL);
    rs_target_cleanup(&t);

    struct rs_conn_conf tls = {.url = "redis://h",
                               .connect_timeout_ms = 1000,
                               .timeout_ms = 1000,
                               .tls = {.ca_file = "/etc/ssl/ca.pem"}};
    PB_EQ_INT(rs_target_init(&t, &tls, &err), PB_ECONFIG);
    PB_CHECK(strstr(err.msg, "tls is not available") != NULL);
    rs_target_cleanup(&t);
}

PB_TEST(entry_ids)
{
    PB_CHECK(rs_id_valid("0"));
    PB_CHECK(rs_id_valid("1712345678901-0"));
    PB_CHECK(rs_id_valid("18446744073709551615-18446744073709551615"));
    PB_CHECK(!rs_id_valid(""));
    PB_CHECK(!rs_id_valid("$"));
    PB_CHECK(!rs_id_valid("12-"));
    PB_CHECK(!rs_id_valid("-1"));
    PB_CHECK(!rs_id_valid("1-2-3"));
    PB_CHECK(!rs_id_valid("123456789012345678901"));
}

int main(void)
{
    return pb_test_main();
}
