/* test_outbound.c - the outbound guard: address ranges and allow lists. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "patchbay/pb_http.h"
#include "pb_test.h"

/* A sockaddr for a textual address, v4 or v6. */
static socklen_t make_sa(const char *text, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, text, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons(443);
        return sizeof(*in4);
    }
    if (inet_pton(AF_INET6, text, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(443);
        return sizeof(*in6);
    }
    fprintf(stderr, "  bad test address %s\n", text);
    abort();
}

static const char *range(const char *text)
{
    struct sockaddr_storage ss;
    socklen_t len = make_sa(text, &ss);
    return pb_addr_internal_range(&ss, len);
}

PB_TEST(range_table)
{
    static const struct {
        const char *addr;
        const char *want; /* NULL = public */
    } rows[] = {
        /* IPv4 */
        {"0.0.0.0", "unspecified/this-network"},
        {"0.1.2.3", "unspecified/this-network"},
        {"10.0.0.1", "private"},
        {"10.255.255.255", "private"},
        {"11.0.0.1", NULL},
        {"172.15.255.255", NULL},
        {"172.16.0.1", "private"},
        {"172.31.255.255", "private"},
        {"172.32.0.0", NULL},
        {"192.168.1.1", "private"},
        {"192.169.0.1", NULL},
        {"127.0.0.1", "loopback"},
        {"127.255.255.254", "loopback"},
        {"169.254.169.254", "link-local"},
        {"169.255.0.1", NULL},
        {"100.64.0.1", "cgnat"},
        {"100.127.255.255", "cgnat"},
        {"100.128.0.0", NULL},
        {"100.63.255.255", NULL},
        {"192.0.0.8", "reserved"},
        {"192.0.1.1", NULL},
        {"192.0.2.1", "documentation"},
        {"198.51.100.7", "documentation"},
        {"203.0.113.200", "documentation"},
        {"198.18.0.1", "benchmarking"},
        {"198.19.255.255", "benchmarking"},
        {"198.20.0.0", NULL},
        {"224.0.0.1", "multicast"},
        {"239.255.255.250", "multicast"},
        {"240.0.0.1", "reserved"},
        {"255.255.255.254", "reserved"},
        {"255.255.255.255", "broadcast"},
        {"8.8.8.8", NULL},
        {"1.1.1.1", NULL},
        {"93.184.216.34", NULL},
        {"223.255.255.255", NULL},
        /* IPv6 */
        {"::", "unspecified"},
        {"::1", "loopback"},
        {"::2", "reserved"},
        {"::ffff:127.0.0.1", "ipv4-mapped loopback"},
        {"::ffff:10.1.2.3", "ipv4-mapped private"},
        {"::ffff:169.254.169.254", "ipv4-mapped link-local"},
        {"::ffff:0.0.0.0", "ipv4-mapped unspecified/this-network"},
        {"::ffff:8.8.8.8", NULL},
        {"::127.0.0.1", "reserved"},
        {"64:ff9b::1.2.3.4", "nat64"},
        {"64:ff9b:1::1", "nat64"},
        {"64:ff9b:2::1", "reserved"},
        {"2002:7f00:1::", "6to4"},
        {"fc00::1", "unique-local"},
        {"fd12:3456::1", "unique-local"},
        {"fe80::1", "link-local"},
        {"febf:ffff::1", "link-local"},
        {"fec0::1", "site-local"},
        {"ff02::1", "multicast"},
        {"2001:db8::1", "documentation"},
        {"2001:db8:ffff::1", "documentation"},
        {"100::1", "discard"},
        {"100::1:0:0:0:1", "reserved"},
        {"2001::1", "reserved (IETF)"},
        {"2001:1ff::1", "reserved (IETF)"},
        {"2001:200::1", NULL},
        {"2001:4860:4860::8888", NULL},
        {"2606:4700:4700::1111", NULL},
        {"2a00:1450:4001::1", NULL},
        {"4000::1", "reserved"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        const char *got = range(rows[i].addr);
        pb__checks++;
        if ((got == NULL) != (rows[i].want == NULL) || (got && strcmp(got, rows[i].want) != 0))
            PB__FAIL("%s: got %s, want %s", rows[i].addr, got ? got : "(public)",
                     rows[i].want ? rows[i].want : "(public)");
    }
}

PB_TEST(range_bad_sockaddr)
{
    struct sockaddr_in in4 = {.sin_family = AF_INET};
    PB_CHECK(pb_addr_internal_range(NULL, 0) != NULL);
    PB_CHECK(pb_addr_internal_range(&in4, 2) != NULL); /* truncated */
    struct sockaddr un = {.sa_family = AF_UNIX};
    PB_CHECK(pb_addr_internal_range(&un, sizeof(un)) != NULL);
    PB_EQ_INT(pb_outbound_check(NULL, "x", &un, sizeof(un)), PB_EDENIED);
}

static struct pb_allowlist *list_of(const char *const *items, size_t n, struct pb_err *err)
{
    struct pb_strlist l = {.n = n, .items = (char **)items};
    return pb_allowlist_create(&l, err);
}

static int check(const struct pb_allowlist *al, const char *host, const char *addr)
{
    struct sockaddr_storage ss;
    socklen_t len = make_sa(addr, &ss);
    return pb_outbound_check(al, host, &ss, len);
}

PB_TEST(public_always_allowed)
{
    PB_EQ_INT(check(NULL, "example.com", "93.184.216.34"), 0);
    PB_EQ_INT(check(NULL, "example.com", "2606:2800:220:1::1"), 0);
    PB_EQ_INT(check(NULL, NULL, "8.8.8.8"), 0);
    PB_EQ_INT(check(NULL, "localhost", "127.0.0.1"), PB_EDENIED);
    PB_EQ_INT(check(NULL, "metadata", "169.254.169.254"), PB_EDENIED);
    PB_EQ_INT(check(NULL, "x", "::ffff:127.0.0.1"), PB_EDENIED);
}

PB_TEST(allow_cidrs)
{
    static const char *const items[] = {"127.0.0.0/8", "10.1.0.0/16", "192.168.1.7",
                                        "fd00::/8",    "::1",         "[fe80::]/64"};
    struct pb_err err = {0};
    struct pb_allowlist *al = list_of(items, 6, &err);
    PB_CHECK(al != NULL);
    if (!al)
        return;
    PB_EQ_INT(check(al, "h", "127.0.0.1"), 0);
    PB_EQ_INT(check(al, "h", "127.9.9.9"), 0);
    PB_EQ_INT(check(al, "h", "10.1.200.3"), 0);
    PB_EQ_INT(check(al, "h", "10.2.0.1"), PB_EDENIED);
    PB_EQ_INT(check(al, "h", "192.168.1.7"), 0);
    PB_EQ_INT(check(al, "h", "192.168.1.8"), PB_EDENIED);
    PB_EQ_INT(check(al, "h", "fd12::1"), 0);
    PB_EQ_INT(check(al, "h", "fc00::1"), PB_EDENIED);
    PB_EQ_INT(check(al, "h", "::1"), 0);
    PB_EQ_INT(check(al, "h", "fe80::1"), 0);
    PB_EQ_INT(check(al, "h", "fe80:0:0:1::1"), PB_EDENIED);
    PB_EQ_INT(check(al, "h", "169.254.169.254"), PB_EDENIED);
    /* A mapped address is matched against IPv4 entries too. */
    PB_EQ_INT(check(al, "h", "::ffff:127.0.0.1"), 0);
    PB_EQ_INT(check(al, "h", "::ffff:10.1.0.9"), 0);
    PB_EQ_INT(check(al, "h", "::ffff:10.9.0.9"), PB_EDENIED);
    /* Public stays allowed. */
    PB_EQ_INT(check(al, "h", "8.8.8.8"), 0);
    pb_allowlist_destroy(al);
}

PB_TEST(allow_mapped_v6_entry_matches_v4)
{
    static const char *const items[] = {"::ffff:10.0.0.0/104"};
    struct pb_allowlist *al = list_of(items, 1, NULL);
    PB_CHECK(al != NULL);
    PB_EQ_INT(check(al, "h", "10.3.4.5"), 0);
    PB_EQ_INT(check(al, "h", "::ffff:10.3.4.5"), 0);
    PB_EQ_INT(check(al, "h", "11.3.4.5"), 0); /* public anyway */
    PB_EQ_INT(check(al, "h", "172.16.0.1"), PB_EDENIED);
    pb_allowlist_destroy(al);
}

PB_TEST(allow_host_names)
{
    static const char *const items[] = {"Partner.Internal", "localhost.", "my_svc"};
    struct pb_allowlist *al = list_of(items, 3, NULL);
    PB_CHECK(al != NULL);
    PB_EQ_INT(check(al, "partner.internal", "10.0.0.5"), 0);
    PB_EQ_INT(check(al, "PARTNER.INTERNAL.", "fd00::5"), 0);
    PB_EQ_INT(check(al, "localhost", "127.0.0.1"), 0);
    PB_EQ_INT(check(al, "LocalHost", "::1"), 0);
    PB_EQ_INT(check(al, "my_svc", "172.17.0.2"), 0);
    /* Other names, suffixes and prefixes are not the same host. */
    PB_EQ_INT(check(al, "evil.partner.internal", "10.0.0.5"), PB_EDENIED);
    PB_EQ_INT(check(al, "partner.internal.evil", "10.0.0.5"), PB_EDENIED);
    PB_EQ_INT(check(al, "partner", "10.0.0.5"), PB_EDENIED);
    PB_EQ_INT(check(al, NULL, "10.0.0.5"), PB_EDENIED);
    PB_EQ_INT(check(al, "[::1]", "::1"), PB_EDENIED);
    pb_allowlist_destroy(al);
}

PB_TEST(allow_bad_entries)
{
    static const char *const bad[] = {
        "10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/x", "10.0.0",      "not a host", "",
        "-lead",       "a..b",   "fe80::/-1", "host/8",     "1.2.3.4/08x",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct pb_err err = {0};
        struct pb_allowlist *al = list_of(&bad[i], 1, &err);
        if (al)
            fprintf(stderr, "  accepted \"%s\"\n", bad[i]);
        PB_CHECK(al == NULL);
        PB_EQ_INT(err.code, PB_ECONFIG);
        PB_CONTAINS(err.msg, "outbound.allow");
        pb_allowlist_destroy(al);
    }
}

PB_TEST(allow_empty_and_merge)
{
    struct pb_err err = {0};
    struct pb_allowlist *none = pb_allowlist_create(NULL, &err);
    PB_CHECK(none != NULL);
    struct pb_strlist empty = {0};
    struct pb_allowlist *empty_al = pb_allowlist_create(&empty, &err);
    PB_CHECK(empty_al != NULL);
    PB_EQ_INT(check(empty_al, "localhost", "127.0.0.1"), PB_EDENIED);

    static const char *const a_items[] = {"127.0.0.0/8"};
    static const char *const b_items[] = {"partner.internal", "fd00::/8"};
    struct pb_allowlist *a = list_of(a_items, 1, &err);
    struct pb_allowlist *b = list_of(b_items, 2, &err);
    struct pb_allowlist *m = pb_allowlist_merge(a, b);
    struct pb_allowlist *m2 = pb_allowlist_merge(NULL, b);
    struct pb_allowlist *m3 = pb_allowlist_merge(NULL, NULL);
    pb_allowlist_destroy(a);
    pb_allowlist_destroy(b);
    PB_CHECK(m && m2 && m3);
    PB_EQ_INT(check(m, "x", "127.0.0.1"), 0);
    PB_EQ_INT(check(m, "partner.internal", "10.0.0.1"), 0);
    PB_EQ_INT(check(m, "x", "fd00::1"), 0);
    PB_EQ_INT(check(m, "x", "10.0.0.1"), PB_EDENIED);
    PB_EQ_INT(check(m2, "x", "127.0.0.1"), PB_EDENIED);
    PB_EQ_INT(check(m2, "partner.internal", "10.0.0.1"), 0);
    PB_EQ_INT(check(m3, "x", "127.0.0.1"), PB_EDENIED);
    pb_allowlist_destroy(m);
    pb_allowlist_destroy(m2);
    pb_allowlist_destroy(m3);
    pb_allowlist_destroy(none);
    pb_allowlist_destroy(empty_al);
    pb_allowlist_destroy(NULL);
}

PB_TEST(resolve_gives_an_allowed_literal)
{
    static const char *const loop[] = {"127.0.0.0/8"};
    struct pb_strlist l = {.n = 1, .items = (char **)loop};
    struct pb_allowlist *al = pb_allowlist_create(&l, NULL);
    char ip[64] = "";
    struct pb_err err = {0};
    PB_EQ_INT(pb_outbound_resolve(NULL, "127.0.0.1", 4222, ip, sizeof(ip), &err), PB_EDENIED);
    PB_CONTAINS(err.msg, "loopback");
    PB_EQ_INT(pb_outbound_resolve(al, "127.0.0.1", 4222, ip, sizeof(ip), &err), 0);
    PB_EQ_STR(ip, "127.0.0.1");
    PB_EQ_INT(pb_outbound_resolve(al, "localhost", 4222, ip, sizeof(ip), &err) == 0 ||
                  err.code == PB_EDENIED,
              1); /* ::1 is not in 127.0.0.0/8 */
    PB_EQ_INT(pb_outbound_resolve(al, "no-such-host.invalid", 1, ip, sizeof(ip), &err), PB_ENET);
    pb_allowlist_destroy(al);
}

int main(void)
{
    return pb_test_main();
}
