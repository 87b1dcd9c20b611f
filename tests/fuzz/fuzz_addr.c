/* fuzz_addr.c - the outbound guard: address classification
 * (pb_addr_internal_range), allow lists (pb_allowlist_create/_merge) and the
 * connect-time check (pb_outbound_check).
 *
 * Input: byte 0 picks the family (bit 0: IPv6) and a short sockaddr length
 * (bit 1); bytes 1..16 are the address; the rest is allow-list entries, one
 * per line. Properties:
 *  - an IPv4 address and the same address mapped into IPv6 (::ffff:a.b.c.d)
 *    are both internal or both public; the NAT64 prefix 64:ff9b::/96 is
 *    always internal;
 *  - a truncated sockaddr is "unknown", never read past its length;
 *  - without an allow list, exactly the internal addresses are refused;
 *  - an allow list never refuses a public address; an entry accepted alone
 *    allows what it names: a CIDR its network address, a host name that
 *    name (any case, trailing dot) to any address; a CIDR entry does not
 *    allow an internal address just outside its prefix;
 *  - merging lists allows exactly the union. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>

#include "fuzz.h"
#include "patchbay/pb_http.h"

static size_t mk(int v6, const uint8_t *b, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        memcpy(&a->sin6_addr, b, 16);
        return sizeof(*a);
    }
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    memcpy(&a->sin_addr, b, 4);
    return sizeof(*a);
}

static const char *classify(int v6, const uint8_t *b)
{
    struct sockaddr_storage ss;
    size_t len = mk(v6, b, &ss);
    /* An exact-size heap copy: ASan catches reads past salen. */
    void *copy = malloc(len);
    memcpy(copy, &ss, len);
    const char *r = pb_addr_internal_range(copy, len);
    free(copy);
    return r;
}

static int check_addr(const struct pb_allowlist *al, const char *host, int v6, const uint8_t *b)
{
    struct sockaddr_storage ss;
    size_t len = mk(v6, b, &ss);
    return pb_outbound_check(al, host, &ss, len);
}

/* Our own reading of a CIDR entry: "a.b.c.d[/p]" or "v6[/p]", optional []. */
static bool ref_cidr(const char *e, int *v6, uint8_t net[16], int *prefix)
{
    char buf[64];
    const char *slash = strchr(e, '/');
    size_t alen = slash ? (size_t)(slash - e) : strlen(e);
    if (alen >= 2 && e[0] == '[' && e[alen - 1] == ']')
        e++, alen -= 2;
    if (alen == 0 || alen >= sizeof(buf))
        return false;
    memcpy(buf, e, alen);
    buf[alen] = 0;
    memset(net, 0, 16);
    int max;
    if (inet_pton(AF_INET, buf, net) == 1)
        *v6 = 0, max = 32;
    else if (inet_pton(AF_INET6, buf, net) == 1)
        *v6 = 1, max = 128;
    else
        return false;
    *prefix = max;
    if (slash) {
        const char *p = slash + 1;
        if (!*p || strlen(p) > 3 || strspn(p, "0123456789") != strlen(p) || atoi(p) > max)
            return false;
        *prefix = atoi(p);
    }
    for (int bit = *prefix; bit < max; bit++)
        net[bit / 8] &= (uint8_t) ~(0x80u >> (bit % 8));
    return true;
}

static struct pb_allowlist *list_of(char **items, size_t n)
{
    struct pb_strlist l = {.n = n, .items = items};
    struct pb_err err = {0};
    struct pb_allowlist *al = pb_allowlist_create(&l, &err);
    if (!al)
        FUZZ_ASSERT(err.msg[0], "allow list refused without a message");
    return al;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 17)
        return 0;
    int v6 = data[0] & 1;
    const uint8_t *addr = data + 1;
    const char *range = classify(v6, addr);

    /* Mapped and plain IPv4 agree. */
    uint8_t mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    memcpy(mapped + 12, addr, 4);
    FUZZ_ASSERT((classify(0, addr) == NULL) == (classify(1, mapped) == NULL),
                "%u.%u.%u.%u is %s but ::ffff:%u.%u.%u.%u is %s", addr[0], addr[1], addr[2],
                addr[3], classify(0, addr) ? classify(0, addr) : "public", addr[0], addr[1],
                addr[2], addr[3], classify(1, mapped) ? classify(1, mapped) : "public");
    uint8_t nat64[16] = {0x00, 0x64, 0xff, 0x9b};
    memcpy(nat64 + 12, addr, 4);
    FUZZ_ASSERT(classify(1, nat64) != NULL, "a NAT64 address is public");

    /* A truncated sockaddr. */
    if (data[0] & 2) {
        struct sockaddr_storage ss;
        size_t len = mk(v6, addr, &ss);
        size_t shortlen = (size_t)(data[0] >> 2) % len;
        void *copy = malloc(shortlen ? shortlen : 1);
        memcpy(copy, &ss, shortlen);
        const char *r = pb_addr_internal_range(copy, shortlen);
        FUZZ_ASSERT(r != NULL, "a %zu-byte sockaddr is public", shortlen);
        FUZZ_ASSERT(pb_outbound_check(NULL, NULL, copy, shortlen) != 0, "a short sockaddr passes");
        free(copy);
    }

    FUZZ_ASSERT((check_addr(NULL, NULL, v6, addr) == 0) == (range == NULL),
                "no allow list: check disagrees with the classification (%s)",
                range ? range : "public");

    /* Entries, one per line. */
    char *text = fuzz_strdup(data + 17, size - 17);
    char *items[64];
    size_t n = 0;
    for (char *save = NULL, *tok = strtok_r(text, "\n", &save); tok && n < 64;
         tok = strtok_r(NULL, "\n", &save))
        items[n++] = tok;
    struct pb_allowlist *all = list_of(items, n);
    if (all) {
        if (!range)
            FUZZ_ASSERT(check_addr(all, "x.example", v6, addr) == 0, "a public address refused");
        /* Each entry alone: it allows what it names. */
        for (size_t i = 0; i < n; i++) {
            struct pb_allowlist *one = list_of(&items[i], 1);
            FUZZ_ASSERT(one, "entry \"%s\" refused alone but accepted in a list", items[i]);
            int ev6, prefix;
            uint8_t net[16];
            if (ref_cidr(items[i], &ev6, net, &prefix)) {
                FUZZ_ASSERT(check_addr(one, NULL, ev6, net) == 0, "\"%s\" refuses its own network",
                            items[i]);
                FUZZ_ASSERT(check_addr(all, NULL, ev6, net) == 0, "the list refuses \"%s\"",
                            items[i]);
                if (prefix > 0) {
                    uint8_t out[16];
                    memcpy(out, net, 16);
                    out[(prefix - 1) / 8] ^= (uint8_t)(0x80u >> ((prefix - 1) % 8));
                    if (classify(ev6, out))
                        FUZZ_ASSERT(check_addr(one, NULL, ev6, out) != 0,
                                    "\"%s\" allows an internal address outside its prefix",
                                    items[i]);
                }
            } else {
                /* A host name entry: the name, in any case, with a trailing dot. */
                char up[300];
                size_t l = strlen(items[i]);
                if (l + 2 < sizeof(up)) {
                    for (size_t k = 0; k <= l; k++)
                        up[k] = (items[i][k] >= 'a' && items[i][k] <= 'z')
                                    ? (char)(items[i][k] - 32)
                                    : items[i][k];
                    uint8_t lo[4] = {127, 0, 0, 1};
                    FUZZ_ASSERT(check_addr(one, items[i], 0, lo) == 0,
                                "host entry \"%s\" does not allow itself", items[i]);
                    FUZZ_ASSERT(check_addr(one, up, 0, lo) == 0,
                                "host entry \"%s\" does not allow \"%s\"", items[i], up);
                    if (up[l - 1] != '.') {
                        up[l] = '.', up[l + 1] = 0;
                        FUZZ_ASSERT(check_addr(one, up, 0, lo) == 0,
                                    "host entry \"%s\" does not allow \"%s\"", items[i], up);
                    }
                }
            }
            /* Union: the first half merged with the second allows like the whole. */
            pb_allowlist_destroy(one);
        }
        size_t h = n / 2;
        struct pb_allowlist *a = h ? list_of(items, h) : NULL;
        struct pb_allowlist *b = n - h ? list_of(items + h, n - h) : NULL;
        struct pb_allowlist *m = pb_allowlist_merge(a, b);
        if (m) {
            const char *host = n ? items[0] : NULL;
            FUZZ_ASSERT((check_addr(m, host, v6, addr) == 0) ==
                            (check_addr(all, host, v6, addr) == 0),
                        "merged list disagrees with the whole list");
            pb_allowlist_destroy(m);
        }
        pb_allowlist_destroy(a);
        pb_allowlist_destroy(b);
        pb_allowlist_destroy(all);
    }
    free(text);
    return 0;
}
