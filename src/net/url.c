/* url.c - the authority of a connector's URL (pb_url.h): pure text, no
 * I/O, any thread. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "patchbay/pb_url.h"

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

char *pb_pct_decode(const char *s, size_t n, bool *nomem)
{
    char *out = malloc(n + 1);
    size_t o = 0;
    *nomem = out == NULL;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            out[o++] = s[i];
            continue;
        }
        int hi = i + 2 < n ? hexval((unsigned char)s[i + 1]) : -1;
        int lo = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
            free(out);
            return NULL;
        }
        out[o++] = (char)(hi * 16 + lo);
        i += 2;
    }
    out[o] = 0;
    return out;
}

void pb_url_authority_free(struct pb_url_authority *a)
{
    if (!a)
        return;
    if (a->password)
        memset(a->password, 0, strlen(a->password));
    free(a->password);
    free(a->user);
    a->user = a->password = NULL;
}

static bool host_char_ok(char c)
{
    return isalnum((unsigned char)c) || strchr(".-_:%", c);
}

static int fail(struct pb_url_authority *a, struct pb_err *err, int code, const char *what,
                const char *msg)
{
    pb_url_authority_free(a);
    return pb_err_set(err, code, "%s: %s", what, msg);
}

int pb_url_authority(const char *s, const char *what, const char *example, int default_port,
                     size_t host_max, struct pb_url_authority *a, struct pb_err *err)
{
    bool nomem = false;
    memset(a, 0, sizeof(*a));
    if (host_max > PB_URL_HOST_MAX)
        host_max = PB_URL_HOST_MAX;
    /* The authority ends at the path, a query or a fragment. */
    size_t alen = strcspn(s, "/?#");
    const char *end = s + alen, *at = NULL;
    a->rest = end;
    for (const char *p = s; p < end; p++)
        if (*p == '@')
            at = p; /* the last one: a password may hold one, escaped or not */
    const char *hp = s;
    if (at) {
        const char *colon = memchr(s, ':', (size_t)(at - s));
        size_t ul = colon ? (size_t)(colon - s) : (size_t)(at - s);
        if (!(a->user = pb_pct_decode(s, ul, &nomem)))
            return fail(a, err, nomem ? PB_ENOMEM : PB_ECONFIG, what,
                        nomem ? "out of memory" : "bad %-escape in the user");
        if (colon && !(a->password = pb_pct_decode(colon + 1, (size_t)(at - colon - 1), &nomem)))
            return fail(a, err, nomem ? PB_ENOMEM : PB_ECONFIG, what,
                        nomem ? "out of memory" : "bad %-escape in the password");
        hp = at + 1;
    }
    size_t hplen = (size_t)(end - hp), hlen;
    const char *port = NULL;
    if (hplen && hp[0] == '[') {
        const char *close = memchr(hp, ']', hplen);
        if (!close)
            return fail(a, err, PB_ECONFIG, what, "unterminated [ in the host");
        hlen = (size_t)(close - hp - 1);
        if (close + 1 < end) {
            if (close[1] != ':')
                return fail(a, err, PB_ECONFIG, what, "junk after ] in the host");
            port = close + 2;
        }
        hp++;
    } else {
        const char *colon = memchr(hp, ':', hplen);
        hlen = colon ? (size_t)(colon - hp) : hplen;
        if (colon)
            port = colon + 1;
    }
    if (hlen == 0 || hlen > host_max) {
        pb_url_authority_free(a);
        return pb_err_set(err, PB_ECONFIG, "%s: no host (%s)", what, example);
    }
    memcpy(a->host, hp, hlen);
    a->host[hlen] = 0;
    for (size_t i = 0; i < hlen; i++)
        if (!host_char_ok(a->host[i]))
            return fail(a, err, PB_ECONFIG, what, "bad character in the host");
    a->port = default_port;
    if (port) {
        size_t plen = (size_t)(end - port);
        long p = 0;
        if (plen == 0 || plen > 5)
            return fail(a, err, PB_ECONFIG, what, "the port must be 1-65535");
        for (size_t i = 0; i < plen; i++) {
            if (!isdigit((unsigned char)port[i]))
                return fail(a, err, PB_ECONFIG, what, "the port must be 1-65535");
            p = p * 10 + (port[i] - '0');
        }
        if (p < 1 || p > 65535)
            return fail(a, err, PB_ECONFIG, what, "the port must be 1-65535");
        a->port = (int)p;
    }
    return 0;
}
