/* outbound.c - the outbound guard: which addresses a delivery may connect to.
 *
 * Partners are reached over the public Internet. A URL that resolves to
 * loopback, a private network, link-local (cloud metadata at 169.254.169.254)
 * or any other special-purpose range is refused unless the configuration
 * allows it with `outbound: { allow: [...] }`: CIDRs, single addresses or
 * host names. The HTTP client applies the check to each address it is about
 * to connect to, after DNS, so a name that re-resolves to an internal
 * address is caught too. */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "patchbay/pb_http.h"

#define HOST_MAX 253

struct cidr {
    int family;             /* AF_INET or AF_INET6 */
    unsigned char addr[16]; /* network address, host bits zero; v4 uses 4 bytes */
    int prefix;
};

struct pb_allowlist {
    struct cidr *cidrs;
    size_t ncidrs;
    char **hosts; /* lower case, no trailing dot */
    size_t nhosts;
};

/* ---- ranges ------------------------------------------------------------- */

struct v4_range {
    uint32_t net;
    int prefix;
    const char *name;
    const char *mapped; /* the same range seen through ::ffff:0:0/96 */
};

#define V4(a, b, c, d) (((uint32_t)(a) << 24) | ((uint32_t)(b) << 16) | ((uint32_t)(c) << 8) | (d))
#define V4_ROW(a, b, c, d, p, name)                                                                \
    {                                                                                              \
        V4(a, b, c, d), p, name, "ipv4-mapped " name                                               \
    }

/* Most specific first where ranges nest (broadcast inside 240/4). */
static const struct v4_range v4_ranges[] = {
    V4_ROW(0, 0, 0, 0, 8, "unspecified/this-network"),
    V4_ROW(10, 0, 0, 0, 8, "private"),
    V4_ROW(100, 64, 0, 0, 10, "cgnat"),
    V4_ROW(127, 0, 0, 0, 8, "loopback"),
    V4_ROW(169, 254, 0, 0, 16, "link-local"),
    V4_ROW(172, 16, 0, 0, 12, "private"),
    V4_ROW(192, 0, 0, 0, 24, "reserved"),
    V4_ROW(192, 0, 2, 0, 24, "documentation"),
    V4_ROW(192, 168, 0, 0, 16, "private"),
    V4_ROW(198, 18, 0, 0, 15, "benchmarking"),
    V4_ROW(198, 51, 100, 0, 24, "documentation"),
    V4_ROW(203, 0, 113, 0, 24, "documentation"),
    V4_ROW(224, 0, 0, 0, 4, "multicast"),
    V4_ROW(255, 255, 255, 255, 32, "broadcast"),
    V4_ROW(240, 0, 0, 0, 4, "reserved"),
};

struct v6_range {
    unsigned char net[16];
    int prefix;
    const char *name;
};

/* Checked in order; ::ffff:0:0/96 is handled before this table. */
static const struct v6_range v6_ranges[] = {
    {{0}, 128, "unspecified"},
    {{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 128, "loopback"},
    {{0x00, 0x64, 0xff, 0x9b}, 96, "nat64"},
    {{0x00, 0x64, 0xff, 0x9b, 0x00, 0x01}, 48, "nat64"},
    {{0x01, 0x00}, 64, "discard"},
    {{0x20, 0x01, 0x0d, 0xb8}, 32, "documentation"},
    {{0x20, 0x01, 0x00, 0x00}, 23, "reserved (IETF)"},
    {{0x20, 0x02}, 16, "6to4"},
    {{0xfc}, 7, "unique-local"},
    {{0xfe, 0x80}, 10, "link-local"},
    {{0xfe, 0xc0}, 10, "site-local"},
    {{0xff}, 8, "multicast"},
};

static bool prefix_match(const unsigned char *a, const unsigned char *net, int prefix)
{
    int full = prefix / 8, rest = prefix % 8;
    if (memcmp(a, net, (size_t)full) != 0)
        return false;
    if (rest == 0)
        return true;
    unsigned char mask = (unsigned char)(0xffu << (8 - rest));
    return (a[full] & mask) == (net[full] & mask);
}

static const struct v4_range *v4_lookup(const unsigned char *b)
{
    uint32_t a = V4(b[0], b[1], b[2], b[3]);
    for (size_t i = 0; i < sizeof(v4_ranges) / sizeof(v4_ranges[0]); i++) {
        const struct v4_range *r = &v4_ranges[i];
        uint32_t mask = r->prefix == 0 ? 0 : 0xffffffffu << (32 - r->prefix);
        if ((a & mask) == r->net)
            return r;
    }
    return NULL;
}

static bool is_v4_mapped(const unsigned char *b)
{
    static const unsigned char pfx[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(b, pfx, sizeof(pfx)) == 0;
}

/* The address bytes of sa (4 or 16) and its family, or 0 when sa is not a
 * usable IPv4/IPv6 socket address. */
static int sa_bytes(const void *sa, size_t salen, const unsigned char **bytes)
{
    if (!sa || salen < sizeof(sa_family_t))
        return 0;
    sa_family_t fam;
    memcpy(&fam, (const char *)sa + offsetof(struct sockaddr, sa_family), sizeof(fam));
    if (fam == AF_INET && salen >= sizeof(struct sockaddr_in)) {
        *bytes = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
        return AF_INET;
    }
    if (fam == AF_INET6 && salen >= sizeof(struct sockaddr_in6)) {
        *bytes = (const unsigned char *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
        return AF_INET6;
    }
    return 0;
}

static const char *range_of(int family, const unsigned char *b)
{
    if (family == AF_INET) {
        const struct v4_range *r = v4_lookup(b);
        return r ? r->name : NULL;
    }
    if (is_v4_mapped(b)) {
        /* A mapped public IPv4 address is public. */
        const struct v4_range *r = v4_lookup(b + 12);
        return r ? r->mapped : NULL;
    }
    for (size_t i = 0; i < sizeof(v6_ranges) / sizeof(v6_ranges[0]); i++)
        if (prefix_match(b, v6_ranges[i].net, v6_ranges[i].prefix))
            return v6_ranges[i].name;
    /* Only 2000::/3 is allocated as global unicast; the rest of the space
     * not named above is reserved by the IETF (e.g. ::/8, IPv4-compatible). */
    if ((b[0] & 0xe0) != 0x20)
        return "reserved";
    return NULL;
}

const char *pb_addr_internal_range(const void *sa, size_t salen)
{
    const unsigned char *b = NULL;
    int family = sa_bytes(sa, salen, &b);
    if (!family)
        return "unknown address family";
    return range_of(family, b);
}

/* ---- allow list ------------------------------------------------------------ */

static bool host_char_ok(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '.' || ch == '_';
}

/* Lower-case host name of s (len bytes) into out, without a trailing dot.
 * Returns false when it is not a plausible host name. */
static bool normalize_host(const char *s, size_t len, char out[HOST_MAX + 1])
{
    if (len > 0 && s[len - 1] == '.')
        len--;
    if (len == 0 || len > HOST_MAX || s[0] == '.' || s[0] == '-')
        return false;
    for (size_t i = 0; i < len; i++) {
        if (!host_char_ok(s[i]))
            return false;
        if (s[i] == '.' && i + 1 < len && s[i + 1] == '.')
            return false;
        out[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] - 'A' + 'a') : s[i];
    }
    out[len] = 0;
    /* An all-numeric last label is a mistyped address ("10.0.0"), not a name. */
    const char *last = strrchr(out, '.');
    last = last ? last + 1 : out;
    if (strspn(last, "0123456789") == strlen(last))
        return false;
    return true;
}

/* Parse "addr", "addr/prefix", "[v6]" or "[v6]/prefix". */
static bool parse_cidr(const char *entry, struct cidr *out)
{
    char buf[INET6_ADDRSTRLEN + 8];
    const char *slash = strchr(entry, '/');
    size_t alen = slash ? (size_t)(slash - entry) : strlen(entry);
    const char *a = entry;

    if (alen >= 2 && a[0] == '[' && a[alen - 1] == ']') {
        a++;
        alen -= 2;
    }
    if (alen == 0 || alen >= sizeof(buf))
        return false;
    memcpy(buf, a, alen);
    buf[alen] = 0;

    int max;
    memset(out, 0, sizeof(*out));
    if (inet_pton(AF_INET, buf, out->addr) == 1) {
        out->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
        out->family = AF_INET6;
        max = 128;
    } else {
        return false;
    }

    out->prefix = max;
    if (slash) {
        const char *p = slash + 1;
        int v = 0;
        if (!*p || strlen(p) > 3)
            return false;
        for (; *p; p++) {
            if (*p < '0' || *p > '9')
                return false;
            v = v * 10 + (*p - '0');
        }
        if (v > max)
            return false;
        out->prefix = v;
    }
    /* Clear host bits so "10.1.2.3/8" means 10.0.0.0/8. */
    for (int bit = out->prefix; bit < max; bit++)
        out->addr[bit / 8] &= (unsigned char)~(0x80u >> (bit % 8));
    return true;
}

static struct pb_allowlist *alloc_list(size_t ncidrs, size_t nhosts)
{
    struct pb_allowlist *al = calloc(1, sizeof(*al));
    if (!al)
        return NULL;
    if (ncidrs && !(al->cidrs = calloc(ncidrs, sizeof(*al->cidrs))))
        goto fail;
    if (nhosts && !(al->hosts = calloc(nhosts, sizeof(*al->hosts))))
        goto fail;
    return al;
fail:
    pb_allowlist_destroy(al);
    return NULL;
}

struct pb_allowlist *pb_allowlist_create(const struct pb_strlist *entries, struct pb_err *err)
{
    size_t n = entries ? entries->n : 0;
    struct pb_allowlist *al = alloc_list(n, n);
    if (!al) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        const char *e = entries->items[i] ? entries->items[i] : "";
        char host[HOST_MAX + 1];
        if (parse_cidr(e, &al->cidrs[al->ncidrs])) {
            al->ncidrs++;
            continue;
        }
        if (strchr(e, '/') || strchr(e, ':') || !normalize_host(e, strlen(e), host)) {
            pb_err_set(err, PB_ECONFIG,
                       "outbound.allow: \"%s\" is not an address, CIDR (10.0.0.0/8, "
                       "fd00::/8) or host name",
                       e);
            goto fail;
        }
        al->hosts[al->nhosts] = strdup(host);
        if (!al->hosts[al->nhosts]) {
            pb_err_set(err, PB_ENOMEM, "out of memory");
            goto fail;
        }
        al->nhosts++;
    }
    return al;
fail:
    pb_allowlist_destroy(al);
    return NULL;
}

static bool append(struct pb_allowlist *dst, const struct pb_allowlist *src)
{
    if (!src)
        return true;
    if (src->ncidrs)
        memcpy(dst->cidrs + dst->ncidrs, src->cidrs, src->ncidrs * sizeof(*src->cidrs));
    dst->ncidrs += src->ncidrs;
    for (size_t i = 0; i < src->nhosts; i++) {
        dst->hosts[dst->nhosts] = strdup(src->hosts[i]);
        if (!dst->hosts[dst->nhosts])
            return false;
        dst->nhosts++;
    }
    return true;
}

struct pb_allowlist *pb_allowlist_merge(const struct pb_allowlist *a, const struct pb_allowlist *b)
{
    size_t nc = (a ? a->ncidrs : 0) + (b ? b->ncidrs : 0);
    size_t nh = (a ? a->nhosts : 0) + (b ? b->nhosts : 0);
    struct pb_allowlist *al = alloc_list(nc, nh);
    if (!al)
        return NULL;
    if (!append(al, a) || !append(al, b)) {
        pb_allowlist_destroy(al);
        return NULL;
    }
    return al;
}

void pb_allowlist_destroy(struct pb_allowlist *al)
{
    if (!al)
        return;
    for (size_t i = 0; i < al->nhosts; i++)
        free(al->hosts[i]);
    free(al->hosts);
    free(al->cidrs);
    free(al);
}

/* ---- the check ------------------------------------------------------------- */

static bool host_allowed(const struct pb_allowlist *al, const char *host)
{
    char norm[HOST_MAX + 1];
    if (!host || al->nhosts == 0)
        return false;
    if (!normalize_host(host, strlen(host), norm))
        return false; /* IP literals ("[::1]") are matched as addresses */
    for (size_t i = 0; i < al->nhosts; i++)
        if (strcmp(al->hosts[i], norm) == 0)
            return true;
    return false;
}

static bool cidr_allowed(const struct pb_allowlist *al, int family, const unsigned char *b)
{
    unsigned char mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    const unsigned char *v4 = NULL, *v6 = NULL;

    /* An IPv4 address is also ::ffff:a.b.c.d, and a mapped IPv6 address is
     * also its IPv4 address: test both forms against entries of each family. */
    if (family == AF_INET) {
        v4 = b;
        memcpy(mapped + 12, b, 4);
        v6 = mapped;
    } else {
        v6 = b;
        if (is_v4_mapped(b))
            v4 = b + 12;
    }
    for (size_t i = 0; i < al->ncidrs; i++) {
        const struct cidr *c = &al->cidrs[i];
        if (c->family == AF_INET && v4 && prefix_match(v4, c->addr, c->prefix))
            return true;
        if (c->family == AF_INET6 && v6 && prefix_match(v6, c->addr, c->prefix))
            return true;
    }
    return false;
}

int pb_outbound_check(const struct pb_allowlist *al, const char *host, const void *sa, size_t salen)
{
    const unsigned char *b = NULL;
    int family = sa_bytes(sa, salen, &b);
    if (!family)
        return PB_EDENIED;
    if (!range_of(family, b))
        return 0;
    if (!al)
        return PB_EDENIED;
    if (host_allowed(al, host) || cidr_allowed(al, family, b))
        return 0;
    return PB_EDENIED;
}

int pb_outbound_resolve(const struct pb_allowlist *al, const char *host, int port, char *ip,
                        size_t iplen, struct pb_err *err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    char portbuf[8];
    snprintf(portbuf, sizeof(portbuf), "%d", port > 0 && port < 65536 ? port : 0);
    int rc = getaddrinfo(host, portbuf, &hints, &res);
    if (rc != 0)
        return pb_err_set(err, PB_ENET, "cannot resolve %s: %s", host, gai_strerror(rc));
    const char *refused = NULL;
    char addr[INET6_ADDRSTRLEN] = "";
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        if (a->ai_family != AF_INET && a->ai_family != AF_INET6)
            continue;
        const void *in = a->ai_family == AF_INET
                             ? (const void *)&((struct sockaddr_in *)a->ai_addr)->sin_addr
                             : (const void *)&((struct sockaddr_in6 *)a->ai_addr)->sin6_addr;
        inet_ntop(a->ai_family, in, addr, sizeof(addr));
        if (pb_outbound_check(al, host, a->ai_addr, a->ai_addrlen) == 0) {
            snprintf(ip, iplen, "%s", addr);
            freeaddrinfo(res);
            return 0;
        }
        if (!refused)
            refused = pb_addr_internal_range(a->ai_addr, a->ai_addrlen);
    }
    freeaddrinfo(res);
    if (refused)
        return pb_err_set(err, PB_EDENIED, "blocked: %s is %s (add it to outbound.allow to permit)",
                          addr, refused);
    return pb_err_set(err, PB_ENET, "cannot resolve %s to an IP address", host);
}
