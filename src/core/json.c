/* json.c - the JSON validator every ingested body goes through.
 *
 * One pass over the bytes, no allocation, no recursion: open containers are
 * kept as one bit each (object or array) in a fixed stack, so the depth the
 * validator can follow is bounded by JSON_DEPTH_LIMIT whatever the caller
 * asks for. Strings take a fast path over runs of plain ASCII (eight bytes at
 * a time) and decode UTF-8 strictly only where a byte is not plain.
 *
 * With exact_numbers set, a number is refused (PB_EFIDELITY) when jq, which
 * holds every number as a double and prints the shortest text that reads back
 * as the same double, would hand on a different value:
 *   - an integer literal beyond +-2^53 (even when that double exists: the
 *     neighbours it stands for do not, and consumers cannot tell),
 *   - more than 17 significant digits,
 *   - a value that overflows to infinity or underflows to zero,
 *   - any other number that is not the shortest text of its double
 *     (0.30000000000000001, 9007199254740993.0, subnormal precision loss).
 * Common numbers (<= 15 significant digits, exponent within +-300) are
 * decided from the digits alone; only the rest go through strtod/snprintf. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "patchbay/pb_err.h"
#include "patchbay/pb_json.h"

/* The deepest nesting the validator follows; a larger max_depth is clamped. */
#define JSON_DEPTH_LIMIT 4096
/* Exponents are accumulated up to this magnitude; beyond it every non-zero
 * number is infinite or zero as a double anyway. */
#define JSON_EXP_CAP 100000

#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

struct scan {
    const unsigned char *base;
    bool exact;
    int code;
    const unsigned char *err_at;
    const char *reason;
};

/* Plain string bytes: printable ASCII other than '"' and '\\'. */
static const unsigned char plain[256] = {
    /* 0x00 */ 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    /* 0x10 */ 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    /* 0x20 */ 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x30 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x40 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x50 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    /* 0x60 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x70 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x80 and up: 0 (UTF-8, decoded separately) */
};

static const unsigned char *fail(struct scan *s, int code, const unsigned char *at,
                                 const char *reason)
{
    s->code = code;
    s->err_at = at;
    s->reason = reason;
    return NULL;
}

static inline bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static inline const unsigned char *skip_ws(const unsigned char *p, const unsigned char *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

/* True when none of the eight bytes at p needs a closer look: no byte is
 * >= 0x80, < 0x20, '"' or '\\'. Each test is exact as to whether any byte
 * matches, which is all that is needed here. */
static inline bool plain8(const unsigned char *p)
{
    uint64_t v, q, b, ctl;
    memcpy(&v, p, sizeof(v));
    ctl = (v - ONES * 0x20) & ~v;
    q = v ^ (ONES * '"');
    q = (q - ONES) & ~q;
    b = v ^ (ONES * '\\');
    b = (b - ONES) & ~b;
    return ((v | ctl | q | b) & HIGHS) == 0;
}

/* Length of the well-formed UTF-8 sequence at p (p[0] >= 0x80), 0 if it is
 * not one: overlongs, surrogates, code points past U+10FFFF and truncated
 * sequences all give 0 (Unicode 15, table 3-7). */
static inline size_t utf8_seq(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t avail = (size_t)(end - p);
    unsigned lo = 0x80, hi = 0xbf;

    if (c >= 0xc2 && c <= 0xdf)
        return avail >= 2 && (p[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
        if (avail < 3 || p[1] < lo || p[1] > hi || (p[2] & 0xc0) != 0x80)
            return 0;
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
        if (avail < 4 || p[1] < lo || p[1] > hi || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80)
            return 0;
        return 4;
    }
    return 0;
}

bool pb_utf8_valid(const char *buf, size_t len)
{
    const unsigned char *p = (const unsigned char *)buf, *end = p + len;

    while (p < end) {
        uint64_t v;
        size_t n;
        while (end - p >= 8) {
            memcpy(&v, p, sizeof(v));
            if (v & HIGHS)
                break;
            p += 8;
        }
        while (p < end && *p < 0x80)
            p++;
        if (p == end)
            break;
        n = utf8_seq(p, end);
        if (!n)
            return false;
        p += n;
    }
    return true;
}

static inline int hex4(const unsigned char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= c - '0';
        else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
            v |= (c | 0x20) - 'a' + 10;
        else
            return -1;
    }
    return v;
}

/* p is just past an opening quote; returns just past the closing one. */
static const unsigned char *scan_string(const unsigned char *p, const unsigned char *end,
                                        struct scan *s)
{
    for (;;) {
        while (end - p >= 8 && plain8(p))
            p += 8;
        while (p < end && plain[*p])
            p++;
        if (p == end)
            return fail(s, PB_EPARSE, p, "unterminated string");

        unsigned char c = *p;
        if (c == '"')
            return p + 1;
        if (c == '\\') {
            const unsigned char *esc = p;
            if (end - p < 2)
                return fail(s, PB_EPARSE, end, "unterminated string");
            switch (p[1]) {
            case '"':
            case '\\':
            case '/':
            case 'b':
            case 'f':
            case 'n':
            case 'r':
            case 't':
                p += 2;
                continue;
            case 'u':
                break;
            default:
                return fail(s, PB_EPARSE, esc, "invalid escape");
            }
            int u = end - p >= 6 ? hex4(p + 2) : -1;
            if (u < 0)
                return fail(s, PB_EPARSE, esc, "invalid \\u escape");
            p += 6;
            if (u >= 0xdc00 && u <= 0xdfff)
                return fail(s, PB_EPARSE, esc, "lone surrogate escape");
            if (u >= 0xd800 && u <= 0xdbff) {
                int lo = end - p >= 6 && p[0] == '\\' && p[1] == 'u' ? hex4(p + 2) : -1;
                if (lo < 0xdc00 || lo > 0xdfff)
                    return fail(s, PB_EPARSE, esc, "lone surrogate escape");
                p += 6;
            }
            continue;
        }
        if (c < 0x20)
            return fail(s, PB_EPARSE, p, "control character in string");
        size_t n = utf8_seq(p, end);
        if (!n)
            return fail(s, PB_EPARSE, p, "invalid UTF-8");
        p += n;
    }
}

/* The slow part of the exact-number check: the digits d[0..nsig) (first and
 * last non-zero) times 10^(e10 - nsig) must be the shortest text of the
 * double it reads as. Returns NULL when it is, else the reason. */
static const char *exact_slow(const char *d, int nsig, long long e10)
{
    char num[64], out[64];
    double v;
    int oexp = 0, k = 0;

    if (e10 > JSON_EXP_CAP)
        e10 = JSON_EXP_CAP;
    if (e10 < -JSON_EXP_CAP)
        e10 = -JSON_EXP_CAP;
    /* No decimal point in what strtod reads, so the locale cannot matter. */
    snprintf(num, sizeof(num), "%.*se%lld", nsig, d, e10 - nsig);
    v = strtod(num, NULL);
    if (isinf(v))
        return "number too large for a double";
    if (v == 0)
        return "number too small for a double";

    /* The correctly rounded nsig-digit text of v must be the input... */
    snprintf(out, sizeof(out), "%.*e", nsig - 1, v);
    for (const char *q = out; *q && *q != 'e'; q++) {
        if (!is_digit((unsigned char)*q))
            continue;
        if (k >= nsig || *q != d[k])
            return "more significant digits than a double carries";
        k++;
    }
    const char *e = strchr(out, 'e');
    if (k != nsig || !e)
        return "more significant digits than a double carries";
    oexp = atoi(e + 1);
    if ((long long)oexp + 1 != e10)
        return "more significant digits than a double carries";
    /* ...and no shorter text may read back as v (jq would print that). */
    if (nsig > 1) {
        snprintf(out, sizeof(out), "%.*e", nsig - 2, v);
        if (strtod(out, NULL) == v)
            return "more significant digits than a double carries";
    }
    return NULL;
}

/* Decide whether the number just scanned survives a trip through a double. */
static const char *exact_number(const unsigned char *ip, const unsigned char *ie,
                                const unsigned char *fp, const unsigned char *fe, long long exp,
                                bool integer)
{
    size_t ilen = (size_t)(ie - ip);
    const unsigned char *first = NULL, *last = NULL;
    bool first_in_int = false, last_in_int = false;
    long long e10;
    size_t nsig;
    char digits[24];

    if (integer) {
        /* No leading zeros in JSON, so the length orders the magnitude. */
        if (ilen > 16 || (ilen == 16 && memcmp(ip, "9007199254740992", 16) > 0))
            return "integer beyond 2^53";
        return NULL;
    }
    for (const unsigned char *q = ip; q < ie && !first; q++)
        if (*q != '0')
            first = q, first_in_int = true;
    for (const unsigned char *q = fp; q < fe && !first; q++)
        if (*q != '0')
            first = q;
    if (!first)
        return NULL; /* zero, whatever the exponent */
    for (const unsigned char *q = fe; q > fp && !last; q--)
        if (q[-1] != '0')
            last = q - 1;
    for (const unsigned char *q = ie; q > ip && !last; q--)
        if (q[-1] != '0')
            last = q - 1, last_in_int = true;

    if (first_in_int && last_in_int)
        nsig = (size_t)(last - first) + 1;
    else if (first_in_int)
        nsig = (size_t)(ie - first) + (size_t)(last - fp) + 1;
    else
        nsig = (size_t)(last - first) + 1;
    if (nsig > 17)
        return "more significant digits than a double carries";

    /* value = 0.D x 10^e10 with D the significant digits */
    if (first_in_int)
        e10 = (long long)(ie - first) + exp;
    else
        e10 = -(long long)(first - fp) + exp;
    if (nsig <= 15 && e10 >= -300 && e10 <= 300)
        return NULL;

    size_t k = 0;
    for (const unsigned char *q = first; q <= last; q++) {
        if (q == ie) /* skip from the integer digits to the fraction */
            q = fp;
        digits[k++] = (char)*q;
    }
    digits[k] = 0;
    return exact_slow(digits, (int)nsig, e10);
}

/* p is at '-' or a digit; returns just past the number. */
static const unsigned char *scan_number(const unsigned char *p, const unsigned char *end,
                                        struct scan *s)
{
    const unsigned char *start = p, *ip, *ie, *fp = NULL, *fe = NULL;
    long long exp = 0;
    bool integer = true;

    if (*p == '-')
        p++;
    if (p == end || !is_digit(*p))
        return fail(s, PB_EPARSE, p, "invalid number");
    ip = p;
    if (*p == '0') {
        p++;
        if (p < end && is_digit(*p))
            return fail(s, PB_EPARSE, p - 1, "leading zero in number");
    } else {
        while (p < end && is_digit(*p))
            p++;
    }
    ie = p;
    if (p < end && *p == '.') {
        p++;
        if (p == end || !is_digit(*p))
            return fail(s, PB_EPARSE, p, "invalid number: digit expected after '.'");
        fp = p;
        while (p < end && is_digit(*p))
            p++;
        fe = p;
        integer = false;
    }
    if (p < end && (*p | 0x20) == 'e') {
        bool neg = false;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            neg = *p++ == '-';
        if (p == end || !is_digit(*p))
            return fail(s, PB_EPARSE, p, "invalid number: digit expected in exponent");
        while (p < end && is_digit(*p)) {
            if (exp < JSON_EXP_CAP)
                exp = exp * 10 + (*p - '0');
            p++;
        }
        if (neg)
            exp = -exp;
        integer = false;
    }
    if (s->exact) {
        const char *why;
        if (!fp)
            fp = fe = ie;
        why = exact_number(ip, ie, fp, fe, exp, integer);
        if (why)
            return fail(s, PB_EFIDELITY, start, why);
    }
    return p;
}

static inline bool top_is_object(const uint64_t *stack, size_t depth)
{
    return stack[(depth - 1) >> 6] & (1ull << ((depth - 1) & 63));
}

static inline bool literal(const unsigned char *p, const unsigned char *end, const char *word,
                           size_t n)
{
    return (size_t)(end - p) >= n && memcmp(p, word, n) == 0;
}

int pb_json_validate(const char *buf, size_t len, struct pb_json_check *c)
{
    const unsigned char *p = (const unsigned char *)buf, *end = p + len;
    struct scan s = {.base = p, .exact = c && c->exact_numbers};
    uint64_t stack[JSON_DEPTH_LIMIT / 64];
    size_t depth = 0, max_depth = c && c->max_depth ? c->max_depth : PB_JSON_MAX_DEPTH_DEFAULT;
    size_t members = 0;

    if (max_depth > JSON_DEPTH_LIMIT)
        max_depth = JSON_DEPTH_LIMIT;
    if (len >= 3 && p[0] == 0xef && p[1] == 0xbb && p[2] == 0xbf) {
        fail(&s, PB_EPARSE, p, "byte order mark is not allowed");
        goto out;
    }
    p = skip_ws(p, end);
    if (p == end) {
        fail(&s, PB_EPARSE, p, len ? "no value, only whitespace" : "empty input");
        goto out;
    }

value:
    if (p == end) {
        fail(&s, PB_EPARSE, p, "unexpected end of input");
        goto out;
    }
    switch (*p) {
    case '{':
    case '[': {
        bool obj = *p == '{';
        if (depth >= max_depth) {
            fail(&s, PB_EPARSE, p, "nesting too deep");
            goto out;
        }
        if (obj)
            stack[depth >> 6] |= 1ull << (depth & 63);
        else
            stack[depth >> 6] &= ~(1ull << (depth & 63));
        depth++;
        p = skip_ws(p + 1, end);
        if (p < end && *p == (obj ? '}' : ']')) {
            p++;
            depth--;
            goto after;
        }
        if (obj)
            goto key;
        goto value;
    }
    case '"':
        p = scan_string(p + 1, end, &s);
        break;
    case '-':
    case '0':
    case '1':
    case '2':
    case '3':
    case '4':
    case '5':
    case '6':
    case '7':
    case '8':
    case '9':
        p = scan_number(p, end, &s);
        break;
    case 't':
        p = literal(p, end, "true", 4) ? p + 4 : fail(&s, PB_EPARSE, p, "invalid literal");
        break;
    case 'f':
        p = literal(p, end, "false", 5) ? p + 5 : fail(&s, PB_EPARSE, p, "invalid literal");
        break;
    case 'n':
        p = literal(p, end, "null", 4) ? p + 4 : fail(&s, PB_EPARSE, p, "invalid literal");
        break;
    default:
        p = fail(&s, PB_EPARSE, p, "unexpected character");
        break;
    }
    if (!p)
        goto out;

after:
    p = skip_ws(p, end);
    if (depth == 0) {
        if (p != end)
            fail(&s, PB_EPARSE, p, "trailing characters after the value");
        goto out;
    }
    if (p == end) {
        fail(&s, PB_EPARSE, p, "unexpected end of input");
        goto out;
    }
    if (top_is_object(stack, depth)) {
        if (*p == '}') {
            p++;
            depth--;
            goto after;
        }
        if (*p != ',') {
            fail(&s, PB_EPARSE, p, "expected ',' or '}'");
            goto out;
        }
        p = skip_ws(p + 1, end);
        if (p < end && *p == '}') {
            fail(&s, PB_EPARSE, p, "trailing comma");
            goto out;
        }
        goto key;
    }
    if (*p == ']') {
        p++;
        depth--;
        goto after;
    }
    if (*p != ',') {
        fail(&s, PB_EPARSE, p, "expected ',' or ']'");
        goto out;
    }
    p = skip_ws(p + 1, end);
    if (p < end && *p == ']') {
        fail(&s, PB_EPARSE, p, "trailing comma");
        goto out;
    }
    goto value;

key:
    if (p == end) {
        fail(&s, PB_EPARSE, p, "unexpected end of input");
        goto out;
    }
    if (*p != '"') {
        fail(&s, PB_EPARSE, p, "expected a string key");
        goto out;
    }
    p = scan_string(p + 1, end, &s);
    if (!p)
        goto out;
    members++;
    p = skip_ws(p, end);
    if (p == end || *p != ':') {
        fail(&s, PB_EPARSE, p, p == end ? "unexpected end of input" : "expected ':'");
        goto out;
    }
    p = skip_ws(p + 1, end);
    goto value;

out:
    if (c) {
        c->members = members;
        c->err_offset = s.code ? (size_t)(s.err_at - s.base) : 0;
        c->err_reason = s.code ? s.reason : NULL;
    }
    return s.code;
}
