/* retry.c - classifying delivery outcomes and scheduling retries.
 *
 * The one place HTTP statuses become OK / RETRY / PERMANENT, the exponential
 * backoff with full jitter, the give-up rules (max_attempts, max_age) and the
 * Retry-After parser. Nothing here reads a clock or a random source: both are
 * passed in, so every rule is testable without sleeping. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/retry.h"
#include "patchbay/pb_err.h"

/* A partner may ask us to wait, but not for longer than this: past it the
 * message's max_age decides, not the partner. */
#define RETRY_AFTER_CAP_MS (24LL * 60 * 60 * 1000)

const char *pb_result_name(enum pb_result r)
{
    switch (r) {
    case PB_RESULT_OK:
        return "ok";
    case PB_RESULT_RETRY:
        return "retry";
    case PB_RESULT_PERMANENT:
        return "permanent";
    }
    return "unknown";
}

enum pb_result pb_classify_http(int status)
{
    if (status >= 200 && status <= 299)
        return PB_RESULT_OK;
    if (status == 0 || status == 408 || status == 425 || status == 429)
        return PB_RESULT_RETRY;
    if (status >= 500 && status <= 599)
        return PB_RESULT_RETRY;
    return PB_RESULT_PERMANENT;
}

int64_t pb_backoff_ceiling(const struct pb_retry_policy *p, int attempt)
{
    int64_t cap = p->max_ms > 0 ? p->max_ms : 0;
    int64_t c = p->initial_ms > 0 ? p->initial_ms : 0;

    if (c >= cap)
        return cap;
    /* Double attempt-1 times, stopping at the cap before it can overflow. */
    for (int i = 1; i < attempt; i++) {
        if (c > cap / 2)
            return cap;
        c *= 2;
    }
    return c < cap ? c : cap;
}

/* High 64 bits of a * b, without relying on a 128-bit type. */
static uint64_t mulhi64(uint64_t a, uint64_t b)
{
    uint64_t alo = a & 0xffffffffu, ahi = a >> 32;
    uint64_t blo = b & 0xffffffffu, bhi = b >> 32;
    uint64_t lolo = alo * blo;
    uint64_t hilo = ahi * blo;
    uint64_t lohi = alo * bhi;
    uint64_t hihi = ahi * bhi;
    uint64_t mid = (lolo >> 32) + (hilo & 0xffffffffu) + (lohi & 0xffffffffu);
    return hihi + (hilo >> 32) + (lohi >> 32) + (mid >> 32);
}

int64_t pb_backoff_delay(const struct pb_retry_policy *p, int attempt, uint64_t rnd)
{
    int64_t ceiling = pb_backoff_ceiling(p, attempt);
    /* Scale rnd onto the ceiling+1 values 0..ceiling: 0 maps to 0 and
     * UINT64_MAX to the ceiling itself. ceiling+1 fits: ceiling <= INT64_MAX. */
    return (int64_t)mulhi64(rnd, (uint64_t)ceiling + 1);
}

static int64_t add_sat(int64_t a, int64_t b)
{
    if (b > 0 && a > INT64_MAX - b)
        return INT64_MAX;
    if (b < 0 && a < INT64_MIN - b)
        return INT64_MIN;
    return a + b;
}

const int64_t pb_schedule_svix[7] = {
    5 * 1000,        5 * 60 * 1000,    30 * 60 * 1000,   2 * 3600 * 1000,
    5 * 3600 * 1000, 10 * 3600 * 1000, 10 * 3600 * 1000,
};

struct pb_retry_decision pb_retry_decide(const struct pb_retry_policy *p, enum pb_result result,
                                         int attempt, int64_t first_at, int64_t now,
                                         int64_t retry_after_ms, uint64_t rnd)
{
    struct pb_retry_decision d = {.give_up = false, .next_at = 0, .reason = NULL};

    switch (result) {
    case PB_RESULT_OK:
        return d;
    case PB_RESULT_RETRY:
        break;
    case PB_RESULT_PERMANENT:
    default:
        d.give_up = true;
        d.reason = "permanent";
        return d;
    }

    int64_t max_attempts = p->max_attempts > 0 ? p->max_attempts : 1;
    if (p->schedule)
        max_attempts = (int64_t)p->nschedule + 1;
    if (attempt >= max_attempts) {
        d.give_up = true;
        d.reason = p->schedule ? "retry schedule exhausted" : "max_attempts reached";
        return d;
    }
    int64_t delay = p->schedule ? p->schedule[attempt - 1] : pb_backoff_delay(p, attempt, rnd);
    if (retry_after_ms > delay)
        delay = retry_after_ms;
    d.next_at = add_sat(now, delay);
    int64_t max_age = p->max_age_ms > 0 ? p->max_age_ms : 0;
    if (d.next_at > add_sat(first_at, max_age)) {
        d.give_up = true;
        d.next_at = 0;
        d.reason = "max_age exceeded";
    }
    return d;
}

/* ---- Retry-After ----------------------------------------------------------- */

static bool is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

static bool is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

/* Exactly n digits at s into *out. */
static bool digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
 * days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m)
{
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : mdays[m - 1];
}

/* IMF-fixdate, "Sun, 06 Nov 1994 08:49:37 GMT" (RFC 9110 5.6.7), exactly
 * 29 characters. Returns false on anything else. */
static bool parse_imf_fixdate(const char *s, size_t len, int64_t *unix_ms)
{
    static const char *const wdays[] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    int day, year, hh, mm, ss, mon = 0;
    bool wday_ok = false;

    if (len != 29)
        return false;
    for (int i = 0; i < 7; i++)
        if (memcmp(s, wdays[i], 3) == 0)
            wday_ok = true;
    if (!wday_ok || s[3] != ',' || s[4] != ' ' || s[7] != ' ' || s[11] != ' ' || s[16] != ' ' ||
        s[19] != ':' || s[22] != ':' || memcmp(s + 25, " GMT", 4) != 0)
        return false;
    for (int i = 0; i < 12; i++)
        if (memcmp(s + 8, months[i], 3) == 0)
            mon = i + 1;
    if (!mon || !digits(s + 5, 2, &day) || !digits(s + 12, 4, &year) || !digits(s + 17, 2, &hh) ||
        !digits(s + 20, 2, &mm) || !digits(s + 23, 2, &ss))
        return false;
    if (day < 1 || day > days_in_month(year, mon) || hh > 23 || mm > 59 || ss > 60)
        return false;
    int64_t secs = days_from_civil(year, mon, day) * 86400 + hh * 3600 + mm * 60 + ss;
    *unix_ms = secs * 1000;
    return true;
}

int pb_parse_retry_after(const char *value, int64_t now_ms, int64_t *delay_ms)
{
    if (!value || !delay_ms)
        return PB_EINVAL;
    const char *s = value;
    while (is_ows(*s))
        s++;
    size_t len = strlen(s);
    while (len > 0 && (is_ows(s[len - 1]) || s[len - 1] == '\r' || s[len - 1] == '\n'))
        len--;
    if (len == 0)
        return PB_EINVAL;

    if (is_digit(s[0])) {
        /* delta-seconds = 1*DIGIT; saturate instead of overflowing. */
        int64_t secs = 0;
        for (size_t i = 0; i < len; i++) {
            if (!is_digit(s[i]))
                return PB_EINVAL;
            if (secs <= RETRY_AFTER_CAP_MS / 1000)
                secs = secs * 10 + (s[i] - '0');
        }
        int64_t ms = secs > RETRY_AFTER_CAP_MS / 1000 ? RETRY_AFTER_CAP_MS : secs * 1000;
        *delay_ms = ms;
        return 0;
    }

    int64_t at;
    if (!parse_imf_fixdate(s, len, &at))
        return PB_EINVAL;
    /* Past dates mean "now"; compare before subtracting so no overflow. */
    if (at <= now_ms)
        *delay_ms = 0;
    else if (now_ms < at - RETRY_AFTER_CAP_MS)
        *delay_ms = RETRY_AFTER_CAP_MS;
    else
        *delay_ms = at - now_ms;
    return 0;
}

/* ---- rate-limit headers ------------------------------------------------------------ */

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

/* ---- HTTP attempts ----------------------------------------------------------- */

void pb_outcome_from_http(const struct pb_http_resp *resp, struct pb_outcome *o, char *buf,
                          size_t len)
{
    *o = (struct pb_outcome){
        .status = resp->status, .retry_after_ms = resp->retry_after_ms, .rate = resp->rate};
    o->throttled = resp->status == 429;
    if (resp->status == 0) {
        o->result = resp->blocked ? PB_RESULT_PERMANENT : PB_RESULT_RETRY;
        o->error = resp->error ? resp->error : "no response";
        return;
    }
    o->result = pb_classify_http(resp->status);
    if (o->result == PB_RESULT_OK || len == 0)
        return;
    /* A printable excerpt of what the partner said. */
    char excerpt[200];
    size_t n = 0;
    for (size_t i = 0; i < resp->body_len && n + 1 < sizeof(excerpt); i++) {
        unsigned char ch = (unsigned char)resp->body[i];
        excerpt[n++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : ' ';
    }
    excerpt[n] = 0;
    snprintf(buf, len, "HTTP %d%s%s", resp->status, n ? ": " : "", excerpt);
    o->error = buf;
}
