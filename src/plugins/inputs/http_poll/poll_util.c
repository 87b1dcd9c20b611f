/* poll_util.c - cron, Link headers, URLs and cursor lookback for the
 * http_poll input (see poll_util.h). Pure functions; any thread. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "patchbay/pb_jq.h"
#include "poll_util.h"

/* ---- cron ------------------------------------------------------------------------ */

/* One field into a bit set of [lo, hi]. */
static int cron_field(const char *s, size_t n, int lo, int hi, uint64_t *bits, bool *any)
{
    char buf[128];
    if (n == 0 || n >= sizeof(buf))
        return -1;
    memcpy(buf, s, n);
    buf[n] = 0;
    *bits = 0;
    *any = strcmp(buf, "*") == 0;
    char *save = NULL;
    for (char *part = strtok_r(buf, ",", &save); part; part = strtok_r(NULL, ",", &save)) {
        int a = lo, b = hi, step = 1;
        char *slash = strchr(part, '/');
        if (slash) {
            *slash = 0;
            char *e;
            long st = strtol(slash + 1, &e, 10);
            if (*e || e == slash + 1 || st < 1 || st > hi)
                return -1;
            step = (int)st;
        }
        if (strcmp(part, "*") != 0) {
            char *e;
            long x = strtol(part, &e, 10);
            if (e == part)
                return -1;
            a = b = (int)x;
            if (*e == '-') {
                char *e2;
                long y = strtol(e + 1, &e2, 10);
                if (*e2 || e2 == e + 1)
                    return -1;
                b = (int)y;
            } else if (*e) {
                return -1;
            } else if (slash) {
                b = hi; /* "5/15": from 5 on */
            }
        }
        if (a < lo || b > hi || a > b)
            return -1;
        for (int v = a; v <= b; v += step)
            *bits |= 1ULL << v;
    }
    return 0;
}

int poll_cron_parse(const char *s, struct poll_cron *c, char *why, size_t whylen)
{
    const char *f[5];
    size_t len[5];
    int n = 0;
    static const char *const names[] = {"minute", "hour", "day of month", "month", "day of week"};
    memset(c, 0, sizeof(*c));
    while (*s && n < 6) {
        while (*s == ' ' || *s == '\t')
            s++;
        if (!*s)
            break;
        if (n == 5) {
            n++;
            break;
        }
        f[n] = s;
        while (*s && *s != ' ' && *s != '\t')
            s++;
        len[n] = (size_t)(s - f[n]);
        n++;
    }
    if (n != 5) {
        snprintf(why, whylen, "a cron expression has five fields (minute hour day month weekday)");
        return -1;
    }
    uint64_t b;
    bool any;
    static const int lo[] = {0, 0, 1, 1, 0}, hi[] = {59, 23, 31, 12, 7};
    for (int i = 0; i < 5; i++) {
        if (cron_field(f[i], len[i], lo[i], hi[i], &b, &any) != 0) {
            snprintf(why, whylen, "bad %s field \"%.*s\" (%d-%d)", names[i], (int)len[i], f[i],
                     lo[i], hi[i]);
            return -1;
        }
        switch (i) {
        case 0:
            c->minute = b;
            break;
        case 1:
            c->hour = (uint32_t)b;
            break;
        case 2:
            c->dom = (uint32_t)b;
            c->dom_any = any;
            break;
        case 3:
            c->month = (uint32_t)b;
            break;
        case 4:
            c->dow = (uint8_t)((b | (b >> 7)) & 0x7f); /* 7 is Sunday too */
            c->dow_any = any;
            break;
        }
    }
    return 0;
}

static bool day_ok(const struct poll_cron *c, const struct tm *t)
{
    if (!(c->month >> (t->tm_mon + 1) & 1))
        return false;
    bool dom = c->dom >> t->tm_mday & 1, dow = c->dow >> t->tm_wday & 1;
    if (c->dom_any || c->dow_any)
        return (c->dom_any || dom) && (c->dow_any || dow);
    return dom || dow; /* both restricted: either one */
}

int64_t poll_cron_next(const struct poll_cron *c, int64_t now_ms)
{
    time_t t = (time_t)(now_ms / 1000);
    t = t - t % 60 + 60; /* the next whole minute */
    time_t end = t + 5LL * 366 * 86400;
    while (t < end) {
        struct tm tm;
        gmtime_r(&t, &tm);
        if (!day_ok(c, &tm)) {
            t += 86400 - (tm.tm_hour * 3600 + tm.tm_min * 60); /* next midnight */
            continue;
        }
        if (!(c->hour >> tm.tm_hour & 1)) {
            t += 3600 - tm.tm_min * 60;
            continue;
        }
        if (!(c->minute >> tm.tm_min & 1)) {
            t += 60;
            continue;
        }
        return (int64_t)t * 1000;
    }
    return -1;
}

/* ---- Link ------------------------------------------------------------------------- */

static bool rel_has_next(const char *v, size_t n)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && v[i] == ' ')
            i++;
        size_t j = i;
        while (j < n && v[j] != ' ')
            j++;
        if (j - i == 4 && strncasecmp(v + i, "next", 4) == 0)
            return true;
        i = j;
    }
    return false;
}

bool poll_link_next(const char *h, char *out, size_t len)
{
    const char *p = h;
    while (*p) {
        while (*p == ' ' || *p == ',' || *p == '\t')
            p++;
        if (*p != '<')
            return false;
        const char *u = ++p;
        const char *close = strchr(u, '>');
        if (!close)
            return false;
        p = close + 1;
        bool next = false;
        /* parameters until the next link */
        while (*p && *p != ',') {
            while (*p == ' ' || *p == ';' || *p == '\t')
                p++;
            const char *name = p;
            while (*p && *p != '=' && *p != ';' && *p != ',')
                p++;
            size_t nl = (size_t)(p - name);
            while (nl && name[nl - 1] == ' ')
                nl--;
            const char *val = NULL;
            size_t vl = 0;
            if (*p == '=') {
                p++;
                while (*p == ' ')
                    p++;
                if (*p == '"') {
                    val = ++p;
                    while (*p && *p != '"') {
                        if (*p == '\\' && p[1])
                            p++;
                        p++;
                    }
                    vl = (size_t)(p - val);
                    if (*p == '"')
                        p++;
                } else {
                    val = p;
                    while (*p && *p != ';' && *p != ',')
                        p++;
                    vl = (size_t)(p - val);
                    while (vl && val[vl - 1] == ' ')
                        vl--;
                }
            }
            if (nl == 3 && strncasecmp(name, "rel", 3) == 0 && val && rel_has_next(val, vl))
                next = true;
        }
        if (next) {
            size_t ul = (size_t)(close - u);
            if (ul + 1 > len)
                return false;
            memcpy(out, u, ul);
            out[ul] = 0;
            return true;
        }
    }
    return false;
}

/* ---- URLs ------------------------------------------------------------------------- */

char *poll_url_resolve(const char *base, const char *ref)
{
    char *out = NULL, *s = NULL;
    CURLU *u = curl_url();
    if (!u)
        return NULL;
    if (curl_url_set(u, CURLUPART_URL, base, 0) == CURLUE_OK &&
        curl_url_set(u, CURLUPART_URL, ref, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_URL, &s, 0) == CURLUE_OK)
        out = strdup(s);
    curl_free(s);
    curl_url_cleanup(u);
    return out;
}

char *poll_url_add(const char *url, const char *name, const char *value)
{
    char *out = NULL, *s = NULL;
    size_t n = strlen(name) + strlen(value) + 2;
    char *q = malloc(n);
    CURLU *u = curl_url();
    if (!u || !q)
        goto out;
    snprintf(q, n, "%s=%s", name, value);
    if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_set(u, CURLUPART_QUERY, q, CURLU_APPENDQUERY | CURLU_URLENCODE) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_URL, &s, 0) == CURLUE_OK)
        out = strdup(s);
out:
    curl_free(s);
    curl_url_cleanup(u);
    free(q);
    return out;
}

/* ---- cursors ------------------------------------------------------------------------ */

static int digits(const char *s, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* RFC 3339 into unix ms; *frac set when it had a fraction. */
static bool parse_rfc3339(const char *s, int64_t *ms, bool *frac)
{
    size_t len = strlen(s);
    if (len < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
        s[13] != ':' || s[16] != ':')
        return false;
    struct tm tm = {0};
    int y = digits(s, 4), mo = digits(s + 5, 2), d = digits(s + 8, 2);
    int h = digits(s + 11, 2), mi = digits(s + 14, 2), se = digits(s + 17, 2);
    if (y < 0 || mo < 1 || mo > 12 || d < 1 || d > 31 || h < 0 || h > 23 || mi < 0 || mi > 59 ||
        se < 0 || se > 60)
        return false;
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = se;
    int64_t v = (int64_t)timegm(&tm) * 1000;
    size_t i = 19;
    *frac = false;
    if (s[i] == '.') {
        int64_t f = 0, scale = 100;
        i++;
        if (!isdigit((unsigned char)s[i]))
            return false;
        while (isdigit((unsigned char)s[i])) {
            f += (s[i] - '0') * scale;
            scale /= 10;
            i++;
        }
        v += f;
        *frac = true;
    }
    if (s[i] == 'Z' || s[i] == 'z') {
        i++;
    } else if (s[i] == '+' || s[i] == '-') {
        int oh = digits(s + i + 1, 2), om = digits(s + i + 4, 2);
        if (oh < 0 || om < 0 || s[i + 3] != ':')
            return false;
        int64_t off = ((int64_t)oh * 60 + om) * 60000;
        v += s[i] == '+' ? -off : off;
        i += 6;
    } else {
        return false;
    }
    if (s[i])
        return false;
    *ms = v;
    return true;
}

jv poll_cursor_back(jv v, int64_t lookback_ms)
{
    if (lookback_ms <= 0)
        return v;
    if (jv_get_kind(v) == JV_KIND_NUMBER) {
        double d = jv_number_value(v);
        jv_free(v);
        return jv_number(d > 1e11 ? d - (double)lookback_ms : d - (double)lookback_ms / 1000.0);
    }
    if (jv_get_kind(v) != JV_KIND_STRING)
        return v;
    int64_t ms;
    bool frac;
    if (!parse_rfc3339(jv_string_value(v), &ms, &frac))
        return v;
    ms -= lookback_ms;
    time_t t = (time_t)(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
    int rem = (int)(ms - (int64_t)t * 1000);
    struct tm tm;
    char buf[40];
    gmtime_r(&t, &tm);
    size_t n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
    if (frac)
        snprintf(buf + n, sizeof(buf) - n, ".%03dZ", rem);
    else
        snprintf(buf + n, sizeof(buf) - n, "Z");
    jv_free(v);
    return jv_string(buf);
}

char *poll_scalar_text(jv v)
{
    if (jv_get_kind(v) == JV_KIND_STRING)
        return strdup(jv_string_value(v));
    if (jv_get_kind(v) == JV_KIND_NUMBER) {
        char *s = NULL;
        if (pb_jq_dump(jv_copy(v), &s, NULL, NULL) != 0)
            return NULL;
        return s;
    }
    return NULL;
}
