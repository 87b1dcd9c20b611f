/* http_ratelimit.c - what a partner says of its rate limit in the headers
 * of an answer (pb_http.h, struct pb_rate_info): the IETF draft's
 * RateLimit-Limit, -Remaining, -Reset and -Policy, its structured RateLimit
 * field (old "limit=, remaining=, reset=" and new "r=, t=" forms), and the
 * common X-RateLimit-* (a reset past 10^9 is a unix time, as GitHub sends
 * it). Pure: the clock is passed in (tests/unit/test_retry.c). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "patchbay/pb_http.h"

/* A partner may ask us to wait, but not for longer than this. */
#define RETRY_AFTER_CAP_MS (24LL * 60 * 60 * 1000)

static bool is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

static bool is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

#define RATE_VALUE_MAX 256
#define RATE_EPOCH_MIN 1000000000.0 /* a reset this large is a unix time, not a delay */

void pb_rate_info_reset(struct pb_rate_info *r)
{
    *r = (struct pb_rate_info){
        .known = false, .limit = -1, .remaining = -1, .reset_ms = -1, .window_ms = -1};
}

/* A non-negative decimal number at *p (digits, an optional fraction). */
static bool rate_number(const char **p, double *out)
{
    const char *s = *p;
    double v = 0;
    bool any = false;
    while (is_digit(*s)) {
        if (v < 1e15)
            v = v * 10 + (*s - '0');
        s++;
        any = true;
    }
    if (*s == '.') {
        double scale = 0.1;
        s++;
        while (is_digit(*s)) {
            v += (*s - '0') * scale;
            scale /= 10;
            s++;
            any = true;
        }
    }
    if (!any)
        return false;
    *p = s;
    *out = v;
    return true;
}

static int64_t rate_reset_ms(double v, int64_t now_ms)
{
    if (v >= RATE_EPOCH_MIN) {
        double ms = v * 1000.0 - (double)now_ms;
        return ms > 0 ? (ms > (double)RETRY_AFTER_CAP_MS ? RETRY_AFTER_CAP_MS : (int64_t)ms) : 0;
    }
    double ms = v * 1000.0;
    return ms > (double)RETRY_AFTER_CAP_MS ? RETRY_AFTER_CAP_MS : (int64_t)ms;
}

/* Parameters of the first item of a structured value: `100;w=60`,
 * `"default";q=100;w=60`, `limit=100, remaining=5, reset=3` or
 * `"default";r=5;t=3`. */
static void rate_params(const char *s, bool combined, int64_t now_ms, struct pb_rate_info *r)
{
    double v;
    while (is_ows(*s))
        s++;
    if (*s == '"') {
        const char *q = strchr(s + 1, '"');
        if (!q)
            return;
        s = q + 1;
    } else if (!combined && rate_number(&s, &v)) {
        r->limit = (int64_t)v; /* "100;w=60": the item is the limit */
    }
    while (*s) {
        while (*s == ';' || (combined && *s == ',') || is_ows(*s))
            s++;
        if (!combined && *s == ',')
            break; /* the first policy only */
        const char *name = s;
        while (*s && *s != '=' && *s != ';' && *s != ',')
            s++;
        size_t nlen = (size_t)(s - name);
        if (*s != '=') {
            continue;
        }
        s++;
        if (!rate_number(&s, &v)) {
            while (*s && *s != ';' && *s != ',')
                s++;
            continue;
        }
#define IS(lit) (nlen == sizeof(lit) - 1 && strncasecmp(name, lit, nlen) == 0)
        if (IS("w"))
            r->window_ms = (int64_t)(v * 1000.0);
        else if (IS("q") || IS("limit"))
            r->limit = (int64_t)v;
        else if (IS("r") || IS("remaining"))
            r->remaining = (int64_t)v;
        else if (IS("t") || IS("reset"))
            r->reset_ms = rate_reset_ms(v, now_ms);
#undef IS
    }
}

void pb_rate_header(const char *line, size_t len, int64_t now_ms, struct pb_rate_info *r)
{
    const char *colon = memchr(line, ':', len);
    if (!colon)
        return;
    size_t nlen = (size_t)(colon - line);
    size_t vlen = len - nlen - 1;
    if (vlen >= RATE_VALUE_MAX)
        return;
    char value[RATE_VALUE_MAX];
    memcpy(value, colon + 1, vlen);
    value[vlen] = 0;
    while (vlen > 0 &&
           (value[vlen - 1] == '\r' || value[vlen - 1] == '\n' || is_ows(value[vlen - 1])))
        value[--vlen] = 0;
    const char *name = line;
    if (nlen > 2 && strncasecmp(name, "x-", 2) == 0) {
        name += 2;
        nlen -= 2;
    }
    const char *v = value;
    while (is_ows(*v))
        v++;
    double num;
    const char *p = v;
#define NAME(lit) (nlen == sizeof(lit) - 1 && strncasecmp(name, lit, nlen) == 0)
    if (NAME("ratelimit")) {
        rate_params(v, true, now_ms, r);
    } else if (NAME("ratelimit-policy")) {
        rate_params(v, false, now_ms, r);
    } else if (NAME("ratelimit-limit")) {
        if (!rate_number(&p, &num))
            return;
        r->limit = (int64_t)num;
        rate_params(p, false, now_ms, r); /* draft 3: "100, 100;w=60" */
    } else if (NAME("ratelimit-remaining")) {
        if (!rate_number(&p, &num))
            return;
        r->remaining = (int64_t)num;
    } else if (NAME("ratelimit-reset") || NAME("ratelimit-reset-after")) {
        if (!rate_number(&p, &num))
            return;
        r->reset_ms = NAME("ratelimit-reset")
                          ? rate_reset_ms(num, now_ms)
                          : rate_reset_ms(num < RATE_EPOCH_MIN ? num : 0, now_ms);
    } else {
        return;
    }
#undef NAME
    r->known = r->limit >= 0 || r->remaining >= 0 || r->reset_ms >= 0 || r->window_ms >= 0;
}
