/* retry.c - classifying delivery outcomes and scheduling retries.
 *
 * The one place HTTP statuses become OK / RETRY / PERMANENT, the exponential
 * backoff with full jitter and the give-up rules (max_attempts, max_age); the
 * Retry-After parser is the HTTP layer's (src/net/http_date.c). Nothing here
 * reads a clock or a random source: both are passed in, so every rule is
 * testable without sleeping. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/retry.h"
#include "patchbay/pb_err.h"

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
    o->answer = resp->body;
    o->answer_len = resp->body ? resp->body_len : 0;
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
