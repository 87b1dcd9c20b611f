/* test_nats_common.c - what the nats input and output check before any
 * connection (nats_common.c): the url list, credentials kept out of urls,
 * TLS turned on by a tls:// url or a tls block, and the subjects and
 * headers a message can carry. */
#include <stdlib.h>
#include <string.h>

#include "pb_test.h"
#include "plugins/inputs/nats/nats_common.h"

static int check_url(const char *url, struct nats_conn_conf *c, struct pb_err *err)
{
    memset(c, 0, sizeof(*c));
    c->url = (char *)url;
    c->connect_timeout_ms = 5000;
    c->ping_interval_ms = 10000;
    c->reconnect_attempts = 10;
    memset(err, 0, sizeof(*err));
    return nats_conf_check(c, err);
}

PB_TEST(urls_are_parsed)
{
    struct nats_conn_conf c;
    struct pb_err err;
    PB_EQ_INT(check_url("nats://127.0.0.1:4333", &c, &err), 0);
    PB_EQ_INT(c.nurls, 1);
    PB_EQ_STR(c.urls[0].host, "127.0.0.1");
    PB_EQ_INT(c.urls[0].port, 4333);
    PB_CHECK(!c.secure);

    PB_EQ_INT(check_url("nats://a.example, tls://[::1]:4222/,nats://b", &c, &err), 0);
    PB_EQ_INT(c.nurls, 3);
    PB_EQ_STR(c.urls[0].host, "a.example");
    PB_EQ_INT(c.urls[0].port, 4222); /* the default */
    PB_EQ_STR(c.urls[1].host, "::1");
    PB_CHECK(c.urls[1].tls);
    PB_EQ_STR(c.urls[2].host, "b");
    PB_CHECK(c.secure); /* one tls:// url makes the connection TLS */
}

PB_TEST(bad_urls_are_refused)
{
    struct nats_conn_conf c;
    struct pb_err err;
    const char *bad[] = {
        "",
        "127.0.0.1:4222",
        "http://x:4222",
        "nats://",
        "nats://:4222",
        "nats://x:0",
        "nats://x:65536",
        "nats://x:42a",
        "nats://x:4222/path",
        "nats://[::1:4222",
        "nats://a b:4222",
        "nats://x,",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = check_url(bad[i], &c, &err);
        if (rc != PB_ECONFIG)
            fprintf(stderr, "  accepted: \"%s\"\n", bad[i]);
        PB_EQ_INT(rc, PB_ECONFIG);
    }
}

PB_TEST(credentials_stay_out_of_urls_and_errors)
{
    struct nats_conn_conf c;
    struct pb_err err;
    PB_EQ_INT(check_url("nats://alice:s3cret@127.0.0.1:4222", &c, &err), PB_ECONFIG);
    PB_CONTAINS(err.msg, "user and password");
    PB_CHECK(strstr(err.msg, "s3cret") == NULL);

    PB_EQ_INT(check_url("nats://127.0.0.1", &c, &err), 0);
    c.user = "alice";
    c.token = "t";
    PB_EQ_INT(nats_conf_check(&c, &err), PB_ECONFIG); /* one way to authenticate */
    c.token = NULL;
    c.password = "p";
    PB_EQ_INT(nats_conf_check(&c, &err), 0);
    c.user = NULL;
    PB_EQ_INT(nats_conf_check(&c, &err), PB_ECONFIG); /* password without user */
}

PB_TEST(a_tls_block_turns_tls_on)
{
    struct nats_conn_conf c;
    struct pb_err err;
    PB_EQ_INT(check_url("nats://127.0.0.1", &c, &err), 0);
    c.tls.ca_file = "ca.pem";
    PB_EQ_INT(nats_conf_check(&c, &err), 0);
    PB_CHECK(c.secure);
    c.tls.cert_file = "client.pem";
    PB_EQ_INT(nats_conf_check(&c, &err), PB_ECONFIG); /* a certificate needs its key */
    c.tls.key_file = "client.key";
    PB_EQ_INT(nats_conf_check(&c, &err), 0);
}

PB_TEST(subjects)
{
    PB_CHECK(nats_subject_ok("orders", false));
    PB_CHECK(nats_subject_ok("orders.eu.created", false));
    PB_CHECK(nats_subject_ok("orders.*.created", true));
    PB_CHECK(nats_subject_ok("orders.>", true));
    PB_CHECK(!nats_subject_ok("orders.*", false)); /* no wildcard to publish to */
    PB_CHECK(!nats_subject_ok("orders.>", false));
    PB_CHECK(!nats_subject_ok("orders.>.x", true)); /* > only last */
    PB_CHECK(!nats_subject_ok("", true));
    PB_CHECK(!nats_subject_ok(NULL, true));
    PB_CHECK(!nats_subject_ok("orders..x", false));
    PB_CHECK(!nats_subject_ok(".orders", false));
    PB_CHECK(!nats_subject_ok("orders.", false));
    PB_CHECK(!nats_subject_ok("order s", false));
    PB_CHECK(!nats_subject_ok("orders\t", false));
    PB_CHECK(nats_subject_ok("a*b.c>d", false)); /* not whole tokens: plain characters */
}

PB_TEST(headers)
{
    PB_CHECK(nats_header_name_ok("Order-Id"));
    PB_CHECK(!nats_header_name_ok(""));
    PB_CHECK(!nats_header_name_ok("Order Id"));
    PB_CHECK(!nats_header_name_ok("Order:Id"));
    PB_CHECK(nats_header_value_ok("any value, even: this"));
    PB_CHECK(nats_header_value_ok(""));
    PB_CHECK(!nats_header_value_ok("two\r\nlines"));
    PB_CHECK(!nats_header_value_ok(NULL));
}

int main(void)
{
    return pb_test_main();
}
