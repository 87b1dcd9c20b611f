/* test_retry.c - status classification, backoff with jitter, the give-up
 * rules and Retry-After parsing, all with a fake clock and fixed random draws. */
#include <stdint.h>

#include "core/retry.h"
#include "patchbay/pb_http.h"
#include "pb_test.h"

static const struct pb_retry_policy policy = {
    .max_attempts = 5,
    .initial_ms = 500,
    .max_ms = 10000,
    .max_age_ms = 60000,
};

PB_TEST(classify_table)
{
    static const struct {
        int status;
        enum pb_result want;
    } rows[] = {
        {200, PB_RESULT_OK},        {201, PB_RESULT_OK},        {204, PB_RESULT_OK},
        {299, PB_RESULT_OK},        {301, PB_RESULT_PERMANENT}, {304, PB_RESULT_PERMANENT},
        {400, PB_RESULT_PERMANENT}, {401, PB_RESULT_PERMANENT}, {404, PB_RESULT_PERMANENT},
        {408, PB_RESULT_RETRY},     {409, PB_RESULT_PERMANENT}, {410, PB_RESULT_PERMANENT},
        {422, PB_RESULT_PERMANENT}, {425, PB_RESULT_RETRY},     {429, PB_RESULT_RETRY},
        {500, PB_RESULT_RETRY},     {502, PB_RESULT_RETRY},     {503, PB_RESULT_RETRY},
        {504, PB_RESULT_RETRY},     {599, PB_RESULT_RETRY},     {0, PB_RESULT_RETRY},
        {100, PB_RESULT_PERMANENT}, {600, PB_RESULT_PERMANENT}, {-1, PB_RESULT_PERMANENT},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        enum pb_result got = pb_classify_http(rows[i].status);
        if (got != rows[i].want)
            fprintf(stderr, "  status %d: got %s, want %s\n", rows[i].status, pb_result_name(got),
                    pb_result_name(rows[i].want));
        PB_EQ_INT(got, rows[i].want);
    }
}

PB_TEST(result_names)
{
    PB_EQ_STR(pb_result_name(PB_RESULT_OK), "ok");
    PB_EQ_STR(pb_result_name(PB_RESULT_RETRY), "retry");
    PB_EQ_STR(pb_result_name(PB_RESULT_PERMANENT), "permanent");
}

PB_TEST(backoff_ceiling_grows_then_caps)
{
    PB_EQ_INT(pb_backoff_ceiling(&policy, 1), 500);
    PB_EQ_INT(pb_backoff_ceiling(&policy, 2), 1000);
    PB_EQ_INT(pb_backoff_ceiling(&policy, 3), 2000);
    PB_EQ_INT(pb_backoff_ceiling(&policy, 4), 4000);
    PB_EQ_INT(pb_backoff_ceiling(&policy, 5), 8000);
    PB_EQ_INT(pb_backoff_ceiling(&policy, 6), 10000);
    PB_EQ_INT(pb_backoff_ceiling(&policy, 100), 10000);
    PB_EQ_INT(pb_backoff_ceiling(&policy, 1000000), 10000);
    /* Attempt 0 or below behaves like the first. */
    PB_EQ_INT(pb_backoff_ceiling(&policy, 0), 500);
    PB_EQ_INT(pb_backoff_ceiling(&policy, -3), 500);

    int64_t prev = 0;
    for (int n = 1; n < 200; n++) {
        int64_t c = pb_backoff_ceiling(&policy, n);
        PB_CHECK(c >= prev);
        PB_CHECK(c <= policy.max_ms);
        prev = c;
    }
}

PB_TEST(backoff_ceiling_no_overflow)
{
    const struct pb_retry_policy huge = {
        .max_attempts = 1000, .initial_ms = 1, .max_ms = INT64_MAX, .max_age_ms = INT64_MAX};
    PB_EQ_INT(pb_backoff_ceiling(&huge, 63), INT64_C(1) << 62);
    PB_EQ_INT(pb_backoff_ceiling(&huge, 64), INT64_MAX);
    PB_EQ_INT(pb_backoff_ceiling(&huge, 1000), INT64_MAX);
    PB_EQ_INT(pb_backoff_ceiling(&huge, 2147483647), INT64_MAX);

    const struct pb_retry_policy odd = {
        .max_attempts = 10, .initial_ms = 3000, .max_ms = 1000, .max_age_ms = 1};
    PB_EQ_INT(pb_backoff_ceiling(&odd, 1), 1000); /* initial above max: capped */
    const struct pb_retry_policy zero = {.max_attempts = 10, .initial_ms = 0, .max_ms = 1000};
    PB_EQ_INT(pb_backoff_ceiling(&zero, 5), 0);
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

PB_TEST(delay_within_bounds)
{
    const struct pb_retry_policy huge = {
        .max_attempts = 1000, .initial_ms = 7, .max_ms = INT64_MAX, .max_age_ms = INT64_MAX};
    const struct pb_retry_policy *ps[] = {&policy, &huge};
    static const uint64_t edges[] = {
        0, 1, 2, UINT64_MAX / 2, UINT64_MAX / 2 + 1, UINT64_MAX - 1, UINT64_MAX};
    uint64_t seed = 42;
    int bad = 0;
    for (size_t p = 0; p < 2; p++) {
        for (int n = 1; n <= 70; n++) {
            int64_t ceiling = pb_backoff_ceiling(ps[p], n);
            for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]) + 500; i++) {
                uint64_t rnd = i < sizeof(edges) / sizeof(edges[0]) ? edges[i] : splitmix(&seed);
                int64_t d = pb_backoff_delay(ps[p], n, rnd);
                if (d < 0 || d > ceiling) {
                    if (bad++ < 5)
                        fprintf(stderr,
                                "  attempt %d rnd %" PRIu64 ": delay %" PRId64
                                " outside [0, %" PRId64 "]\n",
                                n, rnd, d, ceiling);
                }
            }
        }
    }
    PB_EQ_INT(bad, 0);
    /* The extremes of rnd reach the extremes of the range. */
    PB_EQ_INT(pb_backoff_delay(&policy, 3, 0), 0);
    PB_EQ_INT(pb_backoff_delay(&policy, 3, UINT64_MAX), 2000);
    PB_EQ_INT(pb_backoff_delay(&huge, 200, UINT64_MAX), INT64_MAX);
    PB_EQ_INT(pb_backoff_delay(&policy, 1, UINT64_MAX / 2 + 1), 250);
}

PB_TEST(delay_is_spread)
{
    /* Full jitter: draws land in every quarter of [0, ceiling]. */
    uint64_t seed = 7;
    int quarters[4] = {0};
    for (int i = 0; i < 4000; i++) {
        int64_t d = pb_backoff_delay(&policy, 6, splitmix(&seed));
        int q = (int)(d * 4 / 10001);
        quarters[q]++;
    }
    for (int q = 0; q < 4; q++)
        PB_CHECK(quarters[q] > 800);
}

PB_TEST(decide_ok_and_permanent)
{
    int64_t t0 = 1700000000000;
    struct pb_retry_decision d = pb_retry_decide(&policy, PB_RESULT_OK, 1, t0, t0, -1, 0);
    PB_CHECK(!d.give_up);

    d = pb_retry_decide(&policy, PB_RESULT_PERMANENT, 1, t0, t0, -1, 0);
    PB_CHECK(d.give_up);
    PB_EQ_STR(d.reason, "permanent");
}

PB_TEST(decide_max_attempts)
{
    int64_t t0 = 1700000000000, now = t0;
    uint64_t rnd = UINT64_MAX; /* always the ceiling */
    for (int attempt = 1; attempt < 5; attempt++) {
        struct pb_retry_decision d =
            pb_retry_decide(&policy, PB_RESULT_RETRY, attempt, t0, now, -1, rnd);
        PB_CHECK(!d.give_up);
        PB_EQ_INT(d.next_at - now, pb_backoff_ceiling(&policy, attempt));
        now = d.next_at;
    }
    struct pb_retry_decision d = pb_retry_decide(&policy, PB_RESULT_RETRY, 5, t0, now, -1, rnd);
    PB_CHECK(d.give_up);
    PB_EQ_STR(d.reason, "max_attempts reached");
    d = pb_retry_decide(&policy, PB_RESULT_RETRY, 9, t0, now, -1, rnd);
    PB_CHECK(d.give_up);
    PB_EQ_STR(d.reason, "max_attempts reached");

    /* A single attempt means never retry. */
    const struct pb_retry_policy once = {
        .max_attempts = 1, .initial_ms = 1, .max_ms = 1, .max_age_ms = 1000};
    d = pb_retry_decide(&once, PB_RESULT_RETRY, 1, t0, t0, -1, 0);
    PB_CHECK(d.give_up);
    PB_EQ_STR(d.reason, "max_attempts reached");
}

PB_TEST(decide_max_age)
{
    int64_t t0 = 1700000000000;
    /* 59.5 s after acceptance, the 500 ms ceiling still fits (exactly at the edge). */
    struct pb_retry_decision d =
        pb_retry_decide(&policy, PB_RESULT_RETRY, 1, t0, t0 + 59500, -1, UINT64_MAX);
    PB_CHECK(!d.give_up);
    PB_EQ_INT(d.next_at, t0 + 60000);
    /* One millisecond later it does not. */
    d = pb_retry_decide(&policy, PB_RESULT_RETRY, 1, t0, t0 + 59501, -1, UINT64_MAX);
    PB_CHECK(d.give_up);
    PB_EQ_STR(d.reason, "max_age exceeded");
    /* With a zero draw the retry is immediate and still fits. */
    d = pb_retry_decide(&policy, PB_RESULT_RETRY, 1, t0, t0 + 59501, -1, 0);
    PB_CHECK(!d.give_up);
    PB_EQ_INT(d.next_at, t0 + 59501);
    /* A message already older than max_age gives up. */
    d = pb_retry_decide(&policy, PB_RESULT_RETRY, 1, t0, t0 + 60001, -1, 0);
    PB_CHECK(d.give_up);
    PB_EQ_STR(d.reason, "max_age exceeded");
}

PB_TEST(decide_retry_after)
{
    int64_t t0 = 1700000000000;
    /* Retry-After longer than the jittered backoff wins. */
    struct pb_retry_decision d =
        pb_retry_decide(&policy, PB_RESULT_RETRY, 1, t0, t0, 7000, UINT64_MAX);
    PB_CHECK(!d.give_up);
    PB_EQ_INT(d.next_at, t0 + 7000);
    /* Shorter than the backoff: the backoff wins. */
    d = pb_retry_decide(&policy, PB_RESULT_RETRY, 5 - 1, t0, t0, 100, UINT64_MAX);
    PB_CHECK(!d.give_up);
    PB_EQ_INT(d.next_at, t0 + 4000);
    /* Zero is honoured as "no extra wait". */
    d = pb_retry_decide(&policy, PB_RESULT_RETRY, 1, t0, t0, 0, 0);
    PB_CHECK(!d.give_up);
    PB_EQ_INT(d.next_at, t0);
    /* Retry-After landing past max_age gives up now. */
    d = pb_retry_decide(&policy, PB_RESULT_RETRY, 1, t0, t0 + 1000, 59001, 0);
    PB_CHECK(d.give_up);
    PB_EQ_STR(d.reason, "max_age exceeded");
    d = pb_retry_decide(&policy, PB_RESULT_RETRY, 1, t0, t0 + 1000, 59000, 0);
    PB_CHECK(!d.give_up);
    PB_EQ_INT(d.next_at, t0 + 60000);
    /* Huge values saturate rather than wrap. */
    d = pb_retry_decide(&policy, PB_RESULT_RETRY, 1, t0, t0, INT64_MAX, 0);
    PB_CHECK(d.give_up);
    PB_EQ_STR(d.reason, "max_age exceeded");
}

PB_TEST(parse_retry_after_seconds)
{
    int64_t now = 1445412480000; /* Wed, 21 Oct 2015 07:28:00 GMT */
    int64_t ms = -5;
    PB_EQ_INT(pb_parse_retry_after("7", now, &ms), 0);
    PB_EQ_INT(ms, 7000);
    PB_EQ_INT(pb_parse_retry_after("0", now, &ms), 0);
    PB_EQ_INT(ms, 0);
    PB_EQ_INT(pb_parse_retry_after("  120 \r\n", now, &ms), 0);
    PB_EQ_INT(ms, 120000);
    /* Absurd values are capped at a day, not wrapped. */
    PB_EQ_INT(pb_parse_retry_after("99999999999999999999999999", now, &ms), 0);
    PB_EQ_INT(ms, 86400000);
    PB_EQ_INT(pb_parse_retry_after("86401", now, &ms), 0);
    PB_EQ_INT(ms, 86400000);
}

PB_TEST(parse_retry_after_date)
{
    int64_t now = 1445412480000; /* Wed, 21 Oct 2015 07:28:00 GMT */
    int64_t ms = -5;
    PB_EQ_INT(pb_parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now, &ms), 0);
    PB_EQ_INT(ms, 0);
    PB_EQ_INT(pb_parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now, &ms), 0);
    PB_EQ_INT(ms, 30000);
    PB_EQ_INT(pb_parse_retry_after("Wed, 21 Oct 2015 08:28:00 GMT", now + 500, &ms), 0);
    PB_EQ_INT(ms, 3600000 - 500);
    /* Leap day and year boundaries go through the calendar. */
    PB_EQ_INT(pb_parse_retry_after("Thu, 29 Feb 2024 00:00:00 GMT", 1709164800000 - 1000, &ms), 0);
    PB_EQ_INT(ms, 1000);
    PB_EQ_INT(pb_parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", 0, &ms), 0);
    PB_EQ_INT(ms, 10000);
    /* Past dates mean now. */
    PB_EQ_INT(pb_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now, &ms), 0);
    PB_EQ_INT(ms, 0);
    /* Far future is capped. */
    PB_EQ_INT(pb_parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now, &ms), 0);
    PB_EQ_INT(ms, 86400000);
}

PB_TEST(parse_retry_after_garbage)
{
    static const char *const bad[] = {
        "",
        "   ",
        "-1",
        "-30",
        "+5",
        "1.5",
        "5s",
        "soon",
        "0x10",
        "7 8",
        "Wed, 21 Oct 2015 07:28:00",
        "Wed, 21 Oct 2015 07:28:00 UTC",
        "Wed, 32 Oct 2015 07:28:00 GMT",
        "Wed, 29 Feb 2015 07:28:00 GMT",
        "Wed, 21 Foo 2015 07:28:00 GMT",
        "Xyz, 21 Oct 2015 07:28:00 GMT",
        "Wed, 21 Oct 2015 24:00:00 GMT",
        "Wed, 21 Oct 2015 07:60:00 GMT",
        "Wed,21 Oct 2015 07:28:00 GMT ",
        "Wednesday, 21-Oct-15 07:28:00 GMT",
    };
    int64_t ms = 12345;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = pb_parse_retry_after(bad[i], 0, &ms);
        if (rc != PB_EINVAL)
            fprintf(stderr, "  accepted \"%s\"\n", bad[i]);
        PB_EQ_INT(rc, PB_EINVAL);
    }
    PB_EQ_INT(ms, 12345);
    PB_EQ_INT(pb_parse_retry_after(NULL, 0, &ms), PB_EINVAL);
}

PB_TEST(svix_schedule_waits_exactly_then_gives_up)
{
    struct pb_retry_policy p = {.max_attempts = 99,
                                .initial_ms = 1,
                                .max_ms = 1,
                                .max_age_ms = 30LL * 24 * 3600 * 1000,
                                .schedule = pb_schedule_svix,
                                .nschedule = 7};
    const int64_t want[7] = {5000, 300000, 1800000, 7200000, 18000000, 36000000, 36000000};
    int64_t now = 1000000;
    for (int attempt = 1; attempt <= 7; attempt++) {
        struct pb_retry_decision d =
            pb_retry_decide(&p, PB_RESULT_RETRY, attempt, 1000000, now, -1, UINT64_MAX);
        PB_CHECK(!d.give_up);
        PB_EQ_INT(d.next_at - now, want[attempt - 1]);
        now = d.next_at;
    }
    /* Attempt 8 was the last one the schedule allows. */
    struct pb_retry_decision d = pb_retry_decide(&p, PB_RESULT_RETRY, 8, 1000000, now, -1, 0);
    PB_CHECK(d.give_up);
    PB_EQ_STR(d.reason, "retry schedule exhausted");
}

PB_TEST(schedule_honours_retry_after_and_max_age)
{
    static const int64_t sched[2] = {1000, 2000};
    struct pb_retry_policy p = {
        .max_attempts = 1, .max_age_ms = 10000, .schedule = sched, .nschedule = 2};
    struct pb_retry_decision d = pb_retry_decide(&p, PB_RESULT_RETRY, 1, 0, 0, 4000, 0);
    PB_CHECK(!d.give_up);
    PB_EQ_INT(d.next_at, 4000); /* the partner asked for longer than the schedule */
    d = pb_retry_decide(&p, PB_RESULT_RETRY, 2, 0, 9000, -1, 0);
    PB_CHECK(d.give_up); /* 9000 + 2000 is past max_age */
    PB_EQ_STR(d.reason, "max_age exceeded");
}

PB_TEST(outcome_from_http_response)
{
    char buf[320];
    struct pb_outcome o;
    struct pb_http_resp ok = {.status = 201, .retry_after_ms = -1};
    pb_outcome_from_http(&ok, &o, buf, sizeof(buf));
    PB_EQ_INT(o.result, PB_RESULT_OK);
    PB_CHECK(o.error == NULL);

    struct pb_http_resp busy = {
        .status = 503, .retry_after_ms = 7000, .body = "{\"e\":\"x\"}\n\x01", .body_len = 11};
    pb_outcome_from_http(&busy, &o, buf, sizeof(buf));
    PB_EQ_INT(o.result, PB_RESULT_RETRY);
    PB_EQ_INT(o.retry_after_ms, 7000);
    PB_EQ_STR(o.error, "HTTP 503: {\"e\":\"x\"}  "); /* control bytes shown as spaces */

    struct pb_http_resp bad = {.status = 422, .retry_after_ms = -1};
    pb_outcome_from_http(&bad, &o, buf, sizeof(buf));
    PB_EQ_INT(o.result, PB_RESULT_PERMANENT);
    PB_EQ_STR(o.error, "HTTP 422");

    struct pb_http_resp blocked = {.status = 0,
                                   .retry_after_ms = -1,
                                   .blocked = true,
                                   .error = "blocked: 10.0.0.1 is private"};
    pb_outcome_from_http(&blocked, &o, buf, sizeof(buf));
    PB_EQ_INT(o.result, PB_RESULT_PERMANENT);
    PB_EQ_STR(o.error, "blocked: 10.0.0.1 is private");

    struct pb_http_resp refused = {.status = 0, .retry_after_ms = -1};
    pb_outcome_from_http(&refused, &o, buf, sizeof(buf));
    PB_EQ_INT(o.result, PB_RESULT_RETRY);
    PB_EQ_STR(o.error, "no response");
}

/* Fold header lines into r as the HTTP client does. */
static struct pb_rate_info rate_of(const char *const *lines, int64_t now)
{
    struct pb_rate_info r;
    pb_rate_info_reset(&r);
    for (size_t i = 0; lines[i]; i++)
        pb_rate_header(lines[i], strlen(lines[i]), now, &r);
    return r;
}

PB_TEST(rate_limit_headers_of_every_common_form)
{
    const int64_t now = 1700000000000LL;
    const char *none[] = {"Content-Type: text/plain\r\n", "Retry-After: 3\r\n", NULL};
    struct pb_rate_info r = rate_of(none, now);
    PB_CHECK(!r.known);
    PB_EQ_INT(r.limit, -1);
    PB_EQ_INT(r.remaining, -1);

    /* The IETF draft's separate fields, and its policy with the window. */
    const char *draft[] = {"RateLimit-Limit: 100\r\n", "ratelimit-remaining: 7\r\n",
                           "RateLimit-Reset: 2.5\r\n", "RateLimit-Policy: 100;w=60\r\n", NULL};
    r = rate_of(draft, now);
    PB_CHECK(r.known);
    PB_EQ_INT(r.limit, 100);
    PB_EQ_INT(r.remaining, 7);
    PB_EQ_INT(r.reset_ms, 2500);
    PB_EQ_INT(r.window_ms, 60000);

    /* One structured field, old and new spellings. */
    const char *combined[] = {"RateLimit: limit=10, remaining=0, reset=4\r\n", NULL};
    r = rate_of(combined, now);
    PB_EQ_INT(r.limit, 10);
    PB_EQ_INT(r.remaining, 0);
    PB_EQ_INT(r.reset_ms, 4000);
    const char *sf[] = {"RateLimit: \"default\";r=3;t=9\r\n",
                        "RateLimit-Policy: \"default\";q=50;w=30\r\n", NULL};
    r = rate_of(sf, now);
    PB_EQ_INT(r.remaining, 3);
    PB_EQ_INT(r.reset_ms, 9000);
    PB_EQ_INT(r.limit, 50);
    PB_EQ_INT(r.window_ms, 30000);

    /* X- forms: a reset past 10^9 is a unix time (GitHub). */
    const char *x[] = {"X-RateLimit-Limit: 5000\r\n", "X-RateLimit-Remaining: 4999\r\n",
                       "X-RateLimit-Reset: 1700000042\r\n", NULL};
    r = rate_of(x, now);
    PB_EQ_INT(r.limit, 5000);
    PB_EQ_INT(r.remaining, 4999);
    PB_EQ_INT(r.reset_ms, 42000);
    const char *past[] = {"X-RateLimit-Reset: 1600000000\r\n", NULL};
    r = rate_of(past, now);
    PB_EQ_INT(r.reset_ms, 0);

    /* Junk is ignored, never half-read. */
    const char *junk[] = {"RateLimit-Remaining: lots\r\n", "RateLimit-Limit: -3\r\n",
                          "RateLimit: limit=abc;remaining\r\n", "X-RateLimited: 1\r\n", NULL};
    r = rate_of(junk, now);
    PB_CHECK(!r.known);
    PB_EQ_INT(r.limit, -1);
}

PB_TEST(outcome_from_http_throttled_with_its_rate)
{
    char buf[320];
    struct pb_outcome o;
    struct pb_http_resp resp = {.status = 429, .retry_after_ms = 1000};
    pb_rate_info_reset(&resp.rate);
    resp.rate.known = true;
    resp.rate.limit = 20;
    resp.rate.remaining = 0;
    pb_outcome_from_http(&resp, &o, buf, sizeof(buf));
    PB_EQ_INT(o.result, PB_RESULT_RETRY);
    PB_CHECK(o.throttled);
    PB_CHECK(!o.not_sent);
    PB_CHECK(o.rate.known);
    PB_EQ_INT(o.rate.limit, 20);
    resp.status = 503;
    pb_outcome_from_http(&resp, &o, buf, sizeof(buf));
    PB_CHECK(!o.throttled);
}

int main(void)
{
    return pb_test_main();
}
