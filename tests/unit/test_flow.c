/* test_flow.c - flow control with a clock of the test's own: the circuit
 * breaker opens at its ratio and not before min_requests, lets one probe
 * through after open_for and closes or reopens on it; a partner's 429 and
 * rate-limit headers hold and pace the whole output; adaptive concurrency
 * grows while the round trip holds and shrinks when it grows or the
 * partner pushes back; on a cluster, what one node publishes (a breaker
 * opened or closed, a partner's hold) is followed by the others, the
 * opener's probe first, and a rate limit is split between the nodes. */
#include <string.h>

#include "core/flow.h"
#include "pb_test.h"

#define T0 1700000000000LL

static const struct pb_flow_conf breaker = {
    .breaker = true,
    .window_ms = 30000,
    .min_requests = 10,
    .failure_ratio = 0.7,
    .open_for_ms = 30000,
    .max_hold_ms = 600000,
};

static unsigned end(struct pb_flow *f, enum pb_flow_kind k, bool probe, int64_t now)
{
    struct pb_flow_sample s = {
        .kind = k, .probe = probe, .latency_us = 1000, .retry_after_ms = -1, .inflight = 1};
    return pb_flow_outcome(f, &s, now);
}

PB_TEST(breaker_opens_at_its_ratio_after_min_requests)
{
    struct pb_flow f;
    struct pb_sched_q q = {.concurrency = 16};
    pb_flow_init(&f, &breaker, 16, T0);
    /* Nine failures: below min_requests, it stays closed. */
    for (int i = 0; i < 9; i++)
        PB_EQ_INT(end(&f, PB_FLOW_FAIL, false, T0 + i), 0);
    PB_EQ_INT(f.state, PB_BREAKER_CLOSED);
    /* 5 successes, then failures: 10 of 15 and 11 of 16 are below 0.7,
     * 12 of 17 is not. */
    for (int i = 0; i < 5; i++)
        end(&f, PB_FLOW_OK, false, T0 + 10);
    PB_EQ_INT(end(&f, PB_FLOW_FAIL, false, T0 + 11), 0);
    PB_EQ_INT(end(&f, PB_FLOW_FAIL, false, T0 + 11), 0);
    PB_EQ_INT(end(&f, PB_FLOW_FAIL, false, T0 + 12), PB_FLOW_OPENED);
    PB_EQ_INT(f.state, PB_BREAKER_OPEN);
    PB_EQ_INT(f.opened_total, 1);
    /* Open: nothing starts until open_for has passed. */
    pb_flow_apply(&f, &q, T0 + 100);
    PB_EQ_INT(q.not_before, T0 + 12 + 30000);
    /* 429s and late failures of attempts started before do not count. */
    PB_EQ_INT(end(&f, PB_FLOW_FAIL, false, T0 + 200), 0);
    PB_EQ_INT(f.state, PB_BREAKER_OPEN);
}

PB_TEST(breaker_counts_only_its_window)
{
    struct pb_flow f;
    pb_flow_init(&f, &breaker, 16, T0);
    for (int i = 0; i < 9; i++)
        end(&f, PB_FLOW_FAIL, false, T0);
    /* 31 s later the first nine are out of the window. */
    PB_EQ_INT(end(&f, PB_FLOW_FAIL, false, T0 + 31000), 0);
    uint32_t ended, failed;
    pb_flow_window(&f, T0 + 31000, &ended, &failed);
    PB_EQ_INT(ended, 1);
    PB_EQ_INT(failed, 1);
    PB_EQ_INT(f.state, PB_BREAKER_CLOSED);
}

PB_TEST(half_open_lets_one_probe_through)
{
    struct pb_flow f;
    struct pb_sched_q q = {.concurrency = 16};
    pb_flow_init(&f, &breaker, 16, T0);
    for (int i = 0; i < 10; i++)
        end(&f, PB_FLOW_FAIL, false, T0);
    PB_EQ_INT(f.state, PB_BREAKER_OPEN);
    pb_flow_apply(&f, &q, T0 + 29999);
    PB_CHECK(q.not_before > T0 + 29999);
    PB_CHECK(!pb_flow_started(&f));
    /* After open_for: half-open, one start, then nothing until it ends. */
    pb_flow_apply(&f, &q, T0 + 30000);
    PB_EQ_INT(f.state, PB_BREAKER_HALF_OPEN);
    PB_EQ_INT(q.not_before, 0);
    PB_CHECK(pb_flow_started(&f));
    PB_CHECK(!pb_flow_started(&f));
    pb_flow_apply(&f, &q, T0 + 30000);
    PB_EQ_INT(q.not_before, INT64_MAX);
    /* An attempt from before ending now decides nothing. */
    PB_EQ_INT(end(&f, PB_FLOW_FAIL, false, T0 + 30001), 0);
    PB_EQ_INT(f.state, PB_BREAKER_HALF_OPEN);
    /* The probe fails: open again for open_for, not counted as a new opening. */
    PB_EQ_INT(end(&f, PB_FLOW_FAIL, true, T0 + 30002), PB_FLOW_REOPENED);
    PB_EQ_INT(f.state, PB_BREAKER_OPEN);
    PB_EQ_INT(f.opened_total, 1);
    pb_flow_apply(&f, &q, T0 + 30002);
    PB_EQ_INT(q.not_before, T0 + 60002);
    /* The next probe gets through: closed, with a fresh window. */
    pb_flow_apply(&f, &q, T0 + 60002);
    PB_CHECK(pb_flow_started(&f));
    PB_EQ_INT(end(&f, PB_FLOW_OK, true, T0 + 60010), PB_FLOW_CLOSED);
    PB_EQ_INT(f.state, PB_BREAKER_CLOSED);
    pb_flow_apply(&f, &q, T0 + 60010);
    PB_EQ_INT(q.not_before, 0);
    uint32_t ended, failed;
    pb_flow_window(&f, T0 + 60010, &ended, &failed);
    PB_EQ_INT(ended, 0);
}

PB_TEST(no_breaker_unless_configured)
{
    struct pb_flow f;
    struct pb_flow_conf none = {.max_hold_ms = 600000};
    pb_flow_init(&f, &none, 16, T0);
    for (int i = 0; i < 100; i++)
        PB_EQ_INT(end(&f, PB_FLOW_FAIL, false, T0 + i), 0);
    PB_EQ_INT(f.state, PB_BREAKER_CLOSED);
}

static unsigned rated(struct pb_flow *f, enum pb_flow_kind k, int64_t retry_after, int64_t limit,
                      int64_t remaining, int64_t reset_ms, int64_t now)
{
    struct pb_flow_sample s = {
        .kind = k, .latency_us = 1000, .retry_after_ms = retry_after, .inflight = 1};
    s.rate = (struct pb_rate_info){.known = limit >= 0 || remaining >= 0,
                                   .limit = limit,
                                   .remaining = remaining,
                                   .reset_ms = reset_ms,
                                   .window_ms = -1};
    return pb_flow_outcome(f, &s, now);
}

PB_TEST(a_429_holds_everyone_and_headers_set_the_pace)
{
    struct pb_flow f;
    struct pb_sched_q q = {.concurrency = 16};
    struct pb_flow_conf c = {.max_hold_ms = 600000};
    pb_flow_init(&f, &c, 16, T0);
    /* Answers far from the limit: no pace. */
    rated(&f, PB_FLOW_OK, -1, 20, 15, 800, T0);
    pb_flow_apply(&f, &q, T0);
    PB_CHECK(q.pace_ms == 0);
    PB_EQ_INT(q.not_before, 0);
    /* Refused with Retry-After: 1: every delivery waits a second, and the
     * pace is 90 % of 20 per 1 s window (the window learnt from reset). */
    rated(&f, PB_FLOW_THROTTLED, 1000, 20, 0, 1000, T0 + 100);
    pb_flow_apply(&f, &q, T0 + 100);
    PB_EQ_INT(q.not_before, T0 + 1100);
    PB_CHECK(q.pace_ms > 55.5 && q.pace_ms < 55.6); /* 1000 / 18 */
    PB_EQ_INT(f.throttled_total, 1);
    /* Successes do not push it past what the headers allow. */
    for (int i = 1; i <= 100; i++)
        rated(&f, PB_FLOW_OK, -1, 20, 10, 500, T0 + 1100 + i * 60);
    pb_flow_apply(&f, &q, T0 + 7200);
    PB_CHECK(q.pace_ms > 55.5 && q.pace_ms < 55.6);
    /* Nothing remaining in the window: everyone waits for its reset. */
    rated(&f, PB_FLOW_OK, -1, 20, 0, 400, T0 + 8000);
    pb_flow_apply(&f, &q, T0 + 8000);
    PB_EQ_INT(q.not_before, T0 + 8400);
}

PB_TEST(without_headers_the_pace_is_learnt)
{
    struct pb_flow f;
    struct pb_sched_q q = {.concurrency = 16};
    struct pb_flow_conf c = {.max_hold_ms = 600000};
    pb_flow_init(&f, &c, 16, T0);
    /* 50 accepted per second for two seconds, then a refusal. */
    for (int i = 0; i < 100; i++)
        rated(&f, PB_FLOW_OK, -1, -1, -1, -1, T0 + i * 20);
    rated(&f, PB_FLOW_THROTTLED, -1, -1, -1, -1, T0 + 2000);
    pb_flow_apply(&f, &q, T0 + 2000);
    PB_EQ_INT(q.not_before, T0 + 3000);           /* no Retry-After: a second */
    PB_CHECK(f.pace_rps > 35 && f.pace_rps < 40); /* 3/4 of 50 */
    /* More refusals of the same burst cut once. */
    rated(&f, PB_FLOW_THROTTLED, -1, -1, -1, -1, T0 + 2010);
    PB_CHECK(f.pace_rps > 35 && f.pace_rps < 40);
    /* A later one cuts again. */
    rated(&f, PB_FLOW_THROTTLED, -1, -1, -1, -1, T0 + 3500);
    PB_CHECK(f.pace_rps > 26 && f.pace_rps < 30);
    double before = f.pace_rps;
    /* Calm: it grows back slowly, 2 % a second. */
    for (int i = 1; i <= 10; i++)
        rated(&f, PB_FLOW_OK, -1, -1, -1, -1, T0 + 3500 + i * 1000);
    PB_CHECK(f.pace_rps > before * 1.2 && f.pace_rps < before * 1.25);
    /* After five quiet minutes the pace is dropped. */
    rated(&f, PB_FLOW_OK, -1, -1, -1, -1, T0 + 3500 + 301000);
    PB_CHECK(f.pace_rps == 0);
}

PB_TEST(holds_are_capped_by_max_hold)
{
    struct pb_flow f;
    struct pb_sched_q q = {.concurrency = 16};
    struct pb_flow_conf c = {.max_hold_ms = 60000};
    pb_flow_init(&f, &c, 16, T0);
    rated(&f, PB_FLOW_FAIL, 3600 * 1000, -1, -1, -1, T0); /* 503 with Retry-After: 1h */
    pb_flow_apply(&f, &q, T0);
    PB_EQ_INT(q.not_before, T0 + 60000);
    pb_flow_hold(&f, 5000, T0 + 70000); /* not sent: no token for 5 s */
    pb_flow_apply(&f, &q, T0 + 70000);
    PB_EQ_INT(q.not_before, T0 + 75000);
}

/* One interval: n attempts each with latency us, the last one round trip
 * after the interval began, with the limit in use or not. */
static void interval(struct pb_flow *f, int n, int64_t us, bool at_limit, enum pb_flow_kind k,
                     int64_t *now)
{
    for (int i = 0; i < n; i++) {
        struct pb_flow_sample s = {.kind = k,
                                   .latency_us = us,
                                   .retry_after_ms = -1,
                                   .inflight = at_limit ? pb_flow_limit(f) : 0};
        if (i == n - 1)
            *now += us / 1000;
        pb_flow_outcome(f, &s, *now);
    }
}

PB_TEST(adaptive_concurrency_grows_and_shrinks)
{
    struct pb_flow f;
    struct pb_sched_q q = {.concurrency = 16};
    struct pb_flow_conf c = {.adaptive = true, .max_concurrency = 8, .max_hold_ms = 600000};
    pb_flow_init(&f, &c, 16, T0);
    pb_flow_apply(&f, &q, T0);
    PB_EQ_INT(q.concurrency, 1);
    int64_t now = T0;
    /* Used fully with a steady 50 ms: +1 per interval, up to max_concurrency. */
    for (int i = 0; i < 20; i++)
        interval(&f, 4, 50000, true, PB_FLOW_OK, &now);
    PB_EQ_INT(pb_flow_limit(&f), 8);
    /* Not used fully: no growth past what is needed (here it stays). */
    interval(&f, 4, 50000, false, PB_FLOW_OK, &now);
    PB_EQ_INT(pb_flow_limit(&f), 8);
    /* The round trip triples (requests queue at the partner): cut by a
     * tenth per interval. */
    interval(&f, 4, 150000, true, PB_FLOW_OK, &now);
    PB_EQ_INT(pb_flow_limit(&f), 7);
    interval(&f, 4, 150000, true, PB_FLOW_OK, &now);
    PB_EQ_INT(pb_flow_limit(&f), 6);
    /* A little above the base (between 1.25 and 1.6 times): once the
     * smoothed round trip is there, held, neither cut nor grown. */
    for (int i = 0; i < 8; i++)
        interval(&f, 4, 70000, true, PB_FLOW_OK, &now);
    size_t held = pb_flow_limit(&f);
    PB_CHECK(held >= 1 && held <= 6);
    for (int i = 0; i < 5; i++)
        interval(&f, 4, 70000, true, PB_FLOW_OK, &now);
    PB_EQ_INT(pb_flow_limit(&f), held);
    /* A partner slower for good is learnt: the base creeps up to it and
     * the limit grows again. */
    for (int i = 0; i < 400; i++)
        interval(&f, 4, 150000, true, PB_FLOW_OK, &now);
    PB_EQ_INT(pb_flow_limit(&f), 8);
    /* Push-back (429, failures) cuts too, and never below 1. */
    for (int i = 0; i < 40; i++)
        interval(&f, 4, 50000, true, PB_FLOW_THROTTLED, &now);
    PB_EQ_INT(pb_flow_limit(&f), 1);
    pb_flow_apply(&f, &q, now);
    PB_EQ_INT(q.concurrency, 1);
    /* Without adaptive the output's concurrency is left alone. */
    struct pb_flow g;
    struct pb_flow_conf fixed = {.max_hold_ms = 600000};
    pb_flow_init(&g, &fixed, 16, T0);
    pb_flow_apply(&g, &q, T0);
    PB_EQ_INT(q.concurrency, 1);
    PB_EQ_INT(pb_flow_limit(&g), 0);
}

PB_TEST(a_breaker_opened_on_another_node_opens_here_its_probe_first)
{
    struct pb_flow a, b;
    struct pb_sched_q qb = {.concurrency = 16};
    struct pb_flow_share sh;
    pb_flow_init(&a, &breaker, 16, T0);
    pb_flow_init(&b, &breaker, 16, T0);
    /* Nothing to publish while closed and unheld. */
    PB_CHECK(!pb_flow_share_due(&a, end(&a, PB_FLOW_OK, false, T0), 1000, T0, &sh));
    unsigned ev = 0;
    for (int i = 0; i < 10; i++)
        ev |= end(&a, PB_FLOW_FAIL, false, T0 + 1);
    PB_EQ_INT(ev, PB_FLOW_OPENED);
    PB_CHECK(pb_flow_share_due(&a, ev, 1000, T0 + 1, &sh));
    PB_EQ_INT(sh.state, PB_BREAKER_OPEN);
    PB_EQ_INT(sh.open_until, T0 + 1 + 30000);
    /* b follows: open until a's probe time plus half of open_for. */
    PB_EQ_INT(pb_flow_shared(&b, &sh, T0 + 5), PB_FLOW_OPENED);
    PB_EQ_INT(b.state, PB_BREAKER_OPEN);
    PB_EQ_INT(b.opened_total, 1);
    pb_flow_apply(&b, &qb, T0 + 10);
    PB_EQ_INT(qb.not_before, T0 + 1 + 30000 + 15000);
    /* The same news again changes nothing. */
    PB_EQ_INT(pb_flow_shared(&b, &sh, T0 + 6), 0);
    /* a half-opens first and probes; b does not yet. */
    PB_CHECK(pb_flow_tick(&a, T0 + 30001) == 0 && a.state == PB_BREAKER_HALF_OPEN);
    PB_CHECK(pb_flow_started(&a));
    pb_flow_tick(&b, T0 + 30001);
    PB_EQ_INT(b.state, PB_BREAKER_OPEN);
    PB_CHECK(!pb_flow_started(&b));
    /* The probe fails: a reopens and says so; b's wait moves along. */
    ev = end(&a, PB_FLOW_FAIL, true, T0 + 30100);
    PB_EQ_INT(ev, PB_FLOW_REOPENED);
    PB_CHECK(pb_flow_share_due(&a, ev, 1000, T0 + 30100, &sh));
    PB_EQ_INT(sh.state, PB_BREAKER_OPEN);
    PB_EQ_INT(pb_flow_shared(&b, &sh, T0 + 30105), 0);
    PB_EQ_INT(b.open_until, T0 + 30100 + 30000 + 15000);
    /* The next probe goes through: a closes, b follows. */
    pb_flow_tick(&a, T0 + 60100);
    PB_CHECK(pb_flow_started(&a));
    ev = end(&a, PB_FLOW_OK, true, T0 + 60200);
    PB_EQ_INT(ev, PB_FLOW_CLOSED);
    PB_CHECK(pb_flow_share_due(&a, ev, 1000, T0 + 60200, &sh));
    PB_EQ_INT(sh.state, PB_BREAKER_CLOSED);
    PB_EQ_INT(pb_flow_shared(&b, &sh, T0 + 60205), PB_FLOW_CLOSED);
    PB_EQ_INT(b.state, PB_BREAKER_CLOSED);
    pb_flow_apply(&b, &qb, T0 + 60210);
    PB_EQ_INT(qb.not_before, 0);
    /* A closed breaker's news does not count as an opening either. */
    PB_EQ_INT(pb_flow_shared(&b, &sh, T0 + 60300), 0);
}

PB_TEST(if_the_opener_goes_quiet_another_node_probes_after_the_grace)
{
    struct pb_flow b;
    pb_flow_init(&b, &breaker, 16, T0);
    struct pb_flow_share sh = {.state = PB_BREAKER_OPEN, .open_until = T0 + 30000};
    PB_EQ_INT(pb_flow_shared(&b, &sh, T0), PB_FLOW_OPENED);
    pb_flow_tick(&b, T0 + 44999);
    PB_CHECK(!pb_flow_started(&b));
    pb_flow_tick(&b, T0 + 45000);
    PB_CHECK(pb_flow_started(&b));
    PB_CHECK(!pb_flow_started(&b)); /* one probe */
    /* Its own probe failing reopens it here, and this node now tells. */
    struct pb_flow_share out;
    unsigned ev = end(&b, PB_FLOW_FAIL, true, T0 + 45100);
    PB_EQ_INT(ev, PB_FLOW_REOPENED);
    PB_CHECK(pb_flow_share_due(&b, ev, 1000, T0 + 45100, &out));
    PB_EQ_INT(out.state, PB_BREAKER_OPEN);
    PB_EQ_INT(out.open_until, T0 + 45100 + 30000);
    /* News of a breaker already past its time is ignored. */
    struct pb_flow c;
    pb_flow_init(&c, &breaker, 16, T0);
    PB_EQ_INT(pb_flow_shared(&c, &sh, T0 + 30001), 0);
    PB_EQ_INT(c.state, PB_BREAKER_CLOSED);
    /* Without a breaker configured, only holds are followed. */
    struct pb_flow d;
    struct pb_flow_conf none = {.max_hold_ms = 600000};
    pb_flow_init(&d, &none, 16, T0);
    PB_EQ_INT(pb_flow_shared(&d, &sh, T0), 0);
    PB_EQ_INT(d.state, PB_BREAKER_CLOSED);
}

PB_TEST(a_partners_hold_is_published_once_and_followed_within_max_hold)
{
    struct pb_flow a, b;
    struct pb_sched_q qb = {.concurrency = 16};
    struct pb_flow_conf conf = breaker;
    conf.max_hold_ms = 60000;
    pb_flow_init(&a, &conf, 16, T0);
    pb_flow_init(&b, &conf, 16, T0);
    /* A 429 with Retry-After: 120 s (held 60 s: max_hold). */
    struct pb_flow_sample s = {
        .kind = PB_FLOW_THROTTLED, .latency_us = 1000, .retry_after_ms = 120000, .inflight = 1};
    unsigned ev = pb_flow_outcome(&a, &s, T0);
    struct pb_flow_share sh;
    PB_CHECK(pb_flow_share_due(&a, ev, 1000, T0, &sh));
    PB_EQ_INT(sh.state, -1); /* a hold only: b's breaker is left alone */
    PB_EQ_INT(sh.hold_until, T0 + 60000);
    /* Told once: the next 429 within the same hold says nothing new. */
    PB_CHECK(!pb_flow_share_due(&a, pb_flow_outcome(&a, &s, T0), 1000, T0, &sh));
    /* Short holds (below hold_min) stay local. */
    struct pb_flow c;
    pb_flow_init(&c, &conf, 16, T0);
    s.retry_after_ms = 200;
    PB_CHECK(!pb_flow_share_due(&c, pb_flow_outcome(&c, &s, T0), 1000, T0, &sh));
    /* b takes the hold it was told of, capped by its own max_hold. */
    struct pb_flow_share far = {.state = -1, .hold_until = T0 + 3600000};
    PB_EQ_INT(pb_flow_shared(&b, &far, T0), 0);
    PB_EQ_INT(b.hold_until, T0 + 60000);
    PB_EQ_INT(b.state, PB_BREAKER_CLOSED);
    pb_flow_apply(&b, &qb, T0 + 1);
    PB_EQ_INT(qb.not_before, T0 + 60000);
    /* And does not publish it back. */
    struct pb_flow_sample ok = {
        .kind = PB_FLOW_OK, .latency_us = 1000, .retry_after_ms = -1, .inflight = 1};
    PB_CHECK(!pb_flow_share_due(&b, pb_flow_outcome(&b, &ok, T0 + 2), 1000, T0 + 2, &sh));
    /* A hold already over is not taken. */
    struct pb_flow d;
    pb_flow_init(&d, &conf, 16, T0);
    struct pb_flow_share old = {.state = -1, .hold_until = T0 - 1};
    pb_flow_shared(&d, &old, T0);
    PB_EQ_INT(d.hold_until, 0);
}

PB_TEST(a_rate_limit_is_split_between_the_live_nodes)
{
    struct pb_rate r = {.count = 100, .period_ms = 1000};
    struct pb_rate one = pb_flow_rate_share(r, 1);
    PB_EQ_INT(one.count, 100);
    PB_EQ_INT(one.period_ms, 1000);
    /* 33 per 990 ms each: 33.3/s, 100/s together, bursts of 33. */
    struct pb_rate three = pb_flow_rate_share(r, 3);
    PB_EQ_INT(three.count, 33);
    PB_EQ_INT(three.period_ms, 990);
    struct pb_rate four = pb_flow_rate_share((struct pb_rate){10, 1000}, 4);
    PB_EQ_INT(four.count, 2);
    PB_EQ_INT(four.period_ms, 800); /* 2.5/s each */
    /* Fewer than one per node: one each, over a longer period. */
    struct pb_rate slow = pb_flow_rate_share((struct pb_rate){1, 60000}, 4);
    PB_EQ_INT(slow.count, 1);
    PB_EQ_INT(slow.period_ms, 240000);
    /* Rounded so that the sum never goes above the limit. */
    struct pb_rate odd = pb_flow_rate_share((struct pb_rate){7, 1000}, 3);
    PB_EQ_INT(odd.count, 2);
    PB_EQ_INT(odd.period_ms, 858); /* 2.33/s each, 6.99/s together */
    struct pb_rate none = pb_flow_rate_share((struct pb_rate){0, 0}, 3);
    PB_EQ_INT(none.count, 0);
    PB_EQ_INT(none.period_ms, 0);
    PB_EQ_INT(pb_flow_rate_share(r, 0).period_ms, 1000);
}

int main(void)
{
    return pb_test_main();
}
