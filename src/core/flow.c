/* flow.c - flow control of one output (flow.h): holds, pacing, the
 * circuit breaker and adaptive concurrency, from the outcomes of attempts.
 * Pure; the dispatcher's thread owns each struct pb_flow. */
#include <math.h>
#include <string.h>

#include "core/flow.h"

#define PACE_HEADROOM 0.9    /* pace a tenth below what the partner allows */
#define PACE_CUT 0.75        /* a refusal without headers cuts the pace by a quarter */
#define PACE_GROW_PER_S 0.02 /* ... and it grows back by 2 % a second */
#define PACE_MIN_RPS 0.2
#define PACE_FORGET_MS 300000 /* no refusal for 5 min: the pace is dropped */
#define HOLD_DEFAULT_MS 1000  /* a 429 without Retry-After */
#define RATE_SLOT_MS 100
#define ARC_DECREASE 0.9
#define ARC_QUEUED 1.6     /* a round trip this far above the base: requests queue there */
#define ARC_CALM 1.25      /* at most this far above: room for one more */
#define ARC_SMOOTH 0.5     /* weight of the last interval in the round trip compared */
#define ARC_EPOCH_MS 10000 /* the base is the lowest of this epoch and the last */
#define ARC_MIN_INTERVAL_US 20000.0

const char *pb_breaker_state_name(int s)
{
    switch (s) {
    case PB_BREAKER_OPEN:
        return "open";
    case PB_BREAKER_HALF_OPEN:
        return "half_open";
    default:
        return "closed";
    }
}

void pb_flow_init(struct pb_flow *f, const struct pb_flow_conf *c, size_t concurrency, int64_t now)
{
    memset(f, 0, sizeof(*f));
    f->c = *c;
    if (f->c.adaptive) {
        f->limit = 1;
        if (f->c.max_concurrency == 0)
            f->c.max_concurrency = concurrency ? concurrency : 1;
    }
    f->iv_start = now;
    if (f->c.max_hold_ms <= 0)
        f->c.max_hold_ms = 600000;
}

size_t pb_flow_limit(const struct pb_flow *f)
{
    return f->c.adaptive ? (size_t)f->limit : 0;
}

/* ---- the breaker's window ----------------------------------------------------------------- */

static int64_t slot_ms(const struct pb_flow *f)
{
    int64_t w = f->c.window_ms / PB_FLOW_SLOTS;
    return w > 0 ? w : 1;
}

static void window_count(struct pb_flow *f, bool failed, int64_t now)
{
    int64_t w = slot_ms(f);
    int64_t start = now - now % w;
    size_t i = (size_t)((now / w) % PB_FLOW_SLOTS);
    if (f->slots[i].start != start) {
        f->slots[i].start = start;
        f->slots[i].ok = f->slots[i].fail = 0;
    }
    if (failed)
        f->slots[i].fail++;
    else
        f->slots[i].ok++;
}

void pb_flow_window(const struct pb_flow *f, int64_t now, uint32_t *ended, uint32_t *failed)
{
    int64_t w = slot_ms(f);
    int64_t oldest = now - now % w - (PB_FLOW_SLOTS - 1) * w;
    *ended = *failed = 0;
    for (size_t i = 0; i < PB_FLOW_SLOTS; i++)
        if (f->slots[i].start >= oldest && f->slots[i].start <= now) {
            *ended += f->slots[i].ok + f->slots[i].fail;
            *failed += f->slots[i].fail;
        }
}

static void window_reset(struct pb_flow *f)
{
    memset(f->slots, 0, sizeof(f->slots));
}

/* ---- holds and pace ----------------------------------------------------------------------------
 */

static void hold(struct pb_flow *f, int64_t ms, int64_t now)
{
    if (ms < 0)
        return;
    if (ms > f->c.max_hold_ms)
        ms = f->c.max_hold_ms;
    if (now + ms > f->hold_until)
        f->hold_until = now + ms;
}

void pb_flow_hold(struct pb_flow *f, int64_t retry_in_ms, int64_t now)
{
    hold(f, retry_in_ms, now);
}

static void rate_count(struct pb_flow *f, int64_t now)
{
    int64_t start = now - now % RATE_SLOT_MS;
    size_t i = (size_t)((now / RATE_SLOT_MS) % PB_FLOW_RATE_SLOTS);
    if (f->rate[i].start != start) {
        f->rate[i].start = start;
        f->rate[i].n = 0;
    }
    f->rate[i].n++;
}

/* Deliveries per second accepted over the last two seconds. */
static double accepted_rps(const struct pb_flow *f, int64_t now)
{
    int64_t oldest = now - now % RATE_SLOT_MS - (PB_FLOW_RATE_SLOTS - 1) * RATE_SLOT_MS;
    uint32_t n = 0;
    for (size_t i = 0; i < PB_FLOW_RATE_SLOTS; i++)
        if (f->rate[i].start >= oldest && f->rate[i].start <= now)
            n += f->rate[i].n;
    return (double)n * 1000.0 / (RATE_SLOT_MS * PB_FLOW_RATE_SLOTS);
}

/* The pace the partner's headers allow, or 0 when they do not say. */
static double header_rps(const struct pb_flow *f)
{
    int64_t w = f->rl_window_ms > 0 ? f->rl_window_ms : f->rl_window_seen_ms;
    if (f->rl_limit <= 0 || w <= 0)
        return 0;
    return PACE_HEADROOM * (double)f->rl_limit * 1000.0 / (double)w;
}

static void set_pace(struct pb_flow *f, double rps, int64_t now)
{
    if (rps > 0 && rps < PACE_MIN_RPS)
        rps = PACE_MIN_RPS;
    f->pace_rps = rps;
    f->pace_at = now;
}

/* What the partner said of its limit, on any answer. */
static void learn_rate(struct pb_flow *f, const struct pb_rate_info *r, int64_t now)
{
    if (!r->known)
        return;
    if (r->limit > 0)
        f->rl_limit = r->limit;
    if (r->window_ms > 0)
        f->rl_window_ms = r->window_ms;
    if (r->reset_ms > 0) {
        /* Without a policy, the window is at least the longest reset seen
         * (whole seconds, as partners count them). */
        int64_t w = (r->reset_ms + 999) / 1000 * 1000;
        if (w > f->rl_window_seen_ms)
            f->rl_window_seen_ms = w;
    }
    if (r->remaining == 0 && r->reset_ms >= 0)
        hold(f, r->reset_ms, now);
    /* Near the limit: pace from the headers before the refusals come. */
    if (r->remaining >= 0 && f->rl_limit > 0 && r->remaining * 10 <= f->rl_limit) {
        double h = header_rps(f);
        if (h > 0 && (f->pace_rps == 0 || h < f->pace_rps)) {
            set_pace(f, h, now);
            f->throttled_at = now;
        }
    }
}

static void throttled(struct pb_flow *f, const struct pb_flow_sample *s, int64_t now)
{
    f->throttled_total++;
    f->throttled_at = now;
    hold(f, s->retry_after_ms >= 0 ? s->retry_after_ms : HOLD_DEFAULT_MS, now);
    double h = header_rps(f);
    if (h > 0) {
        set_pace(f, f->pace_rps > 0 && f->pace_rps < h ? f->pace_rps * PACE_CUT : h, now);
        f->cut_at = now;
        return;
    }
    /* No headers: cut, at most once per second (the refusals of one burst
     * are one signal), from what the partner accepted lately. */
    if (f->cut_at && now - f->cut_at < 1000)
        return;
    double base = f->pace_rps > 0 ? f->pace_rps : accepted_rps(f, now);
    set_pace(f, base > 0 ? base * PACE_CUT : PACE_MIN_RPS, now);
    f->cut_at = now;
}

/* Without refusals the pace grows back; it is dropped after a long calm.
 * A pace the headers gave stays under them. */
static void pace_grow(struct pb_flow *f, int64_t now)
{
    if (f->pace_rps <= 0)
        return;
    if (now - f->throttled_at > PACE_FORGET_MS) {
        set_pace(f, 0, now);
        return;
    }
    double dt = (double)(now - f->pace_at) / 1000.0;
    if (dt < 0.1)
        return;
    double grown = f->pace_rps * (1.0 + PACE_GROW_PER_S * dt);
    double h = header_rps(f);
    if (h > 0 && grown > h)
        grown = h;
    set_pace(f, grown, now);
}

/* ---- adaptive concurrency
 * ------------------------------------------------------------------------ */

static void arc(struct pb_flow *f, const struct pb_flow_sample *s, int64_t now)
{
    if (!f->c.adaptive)
        return;
    f->iv_sum_us += (double)s->latency_us;
    f->iv_n++;
    if (s->inflight >= (size_t)f->limit)
        f->iv_at_limit = true;
    bool near = s->rate.known && s->rate.remaining >= 0 && f->rl_limit > 0 &&
                s->rate.remaining * 10 <= f->rl_limit;
    if (s->kind != PB_FLOW_OK || near)
        f->iv_pushback = true;
    double interval = f->base_rtt_us > ARC_MIN_INTERVAL_US ? f->base_rtt_us : ARC_MIN_INTERVAL_US;
    if ((double)(now - f->iv_start) * 1000.0 < interval)
        return;
    double mean = f->iv_sum_us / f->iv_n;
    /* The partner's round trip without queueing: the lowest interval of
     * this epoch and the last (so a partner slower for good is learnt
     * within two epochs). */
    if (now - f->epoch_start >= ARC_EPOCH_MS) {
        f->epoch_prev_min = f->epoch_min;
        f->epoch_min = 0;
        f->epoch_start = now;
    }
    if (f->epoch_min <= 0 || mean < f->epoch_min)
        f->epoch_min = mean;
    f->base_rtt_us = f->epoch_prev_min > 0 && f->epoch_prev_min < f->epoch_min ? f->epoch_prev_min
                                                                               : f->epoch_min;
    /* One noisy interval (a pause on either side) decides nothing alone. */
    f->rtt_us = f->rtt_us > 0 ? (1 - ARC_SMOOTH) * f->rtt_us + ARC_SMOOTH * mean : mean;
    if (f->iv_pushback || f->rtt_us > f->base_rtt_us * ARC_QUEUED) {
        f->limit = floor(f->limit * ARC_DECREASE);
        if (f->limit < 1)
            f->limit = 1;
    } else if (f->iv_at_limit && f->rtt_us <= f->base_rtt_us * ARC_CALM) {
        f->limit += 1;
        if (f->limit > (double)f->c.max_concurrency)
            f->limit = (double)f->c.max_concurrency;
    }
    f->iv_start = now;
    f->iv_sum_us = 0;
    f->iv_n = 0;
    f->iv_at_limit = f->iv_pushback = false;
}

/* ---- the interface
 * -------------------------------------------------------------------------------- */

static unsigned open_breaker(struct pb_flow *f, int64_t now, bool again)
{
    f->state = PB_BREAKER_OPEN;
    f->open_until = now + f->c.open_for_ms;
    f->probe_out = false;
    f->opened_here = true;
    if (!again)
        f->opened_total++;
    return again ? PB_FLOW_REOPENED : PB_FLOW_OPENED;
}

unsigned pb_flow_outcome(struct pb_flow *f, const struct pb_flow_sample *s, int64_t now)
{
    unsigned ev = 0;
    learn_rate(f, &s->rate, now);
    if (s->kind == PB_FLOW_THROTTLED)
        throttled(f, s, now);
    else
        pace_grow(f, now);
    if (s->kind == PB_FLOW_OK)
        rate_count(f, now);
    if (s->kind == PB_FLOW_FAIL && s->retry_after_ms >= 0)
        hold(f, s->retry_after_ms, now); /* 503 with Retry-After: everyone waits */
    arc(f, s, now);
    if (!f->c.breaker || s->kind == PB_FLOW_THROTTLED)
        return ev;
    bool failed = s->kind == PB_FLOW_FAIL;
    if (f->state == PB_BREAKER_HALF_OPEN) {
        if (!s->probe)
            return ev; /* started before it opened: the probe decides */
        f->probe_out = false;
        if (failed)
            return ev | open_breaker(f, now, true);
        f->state = PB_BREAKER_CLOSED;
        f->opened_here = false;
        window_reset(f);
        return ev | PB_FLOW_CLOSED;
    }
    if (f->state == PB_BREAKER_OPEN)
        return ev; /* late ends of what started before it opened */
    window_count(f, failed, now);
    if (!failed)
        return ev;
    uint32_t ended, nfail;
    pb_flow_window(f, now, &ended, &nfail);
    if ((int64_t)ended >= f->c.min_requests && (double)nfail >= f->c.failure_ratio * (double)ended)
        ev |= open_breaker(f, now, false);
    return ev;
}

unsigned pb_flow_tick(struct pb_flow *f, int64_t now)
{
    if (f->c.breaker && f->state == PB_BREAKER_OPEN && now >= f->open_until) {
        f->state = PB_BREAKER_HALF_OPEN;
        f->probe_out = false;
    }
    return 0;
}

bool pb_flow_started(struct pb_flow *f)
{
    if (f->state != PB_BREAKER_HALF_OPEN || f->probe_out)
        return false;
    f->probe_out = true;
    return true;
}

void pb_flow_apply(struct pb_flow *f, struct pb_sched_q *q, int64_t now)
{
    pb_flow_tick(f, now);
    int64_t nb = f->hold_until;
    if (f->state == PB_BREAKER_OPEN && f->open_until > nb)
        nb = f->open_until;
    else if (f->state == PB_BREAKER_HALF_OPEN && f->probe_out)
        nb = INT64_MAX; /* the probe is out: its outcome decides */
    q->not_before = nb > now ? nb : 0;
    double pace = f->pace_rps > 0 ? 1000.0 / f->pace_rps : 0;
    if (pace != q->pace_ms) {
        q->pace_ms = pace;
        if (pace > 0 && q->pace_tat > (double)now + pace)
            q->pace_tat = (double)now + pace; /* a faster pace starts now */
    }
    if (f->c.adaptive)
        q->concurrency = (size_t)f->limit;
}

/* ---- shared by the nodes of a cluster ----------------------------------------------------- */

unsigned pb_flow_shared(struct pb_flow *f, const struct pb_flow_share *s, int64_t now)
{
    if (s->hold_until > f->hold_until && s->hold_until > now) {
        int64_t until = s->hold_until;
        if (until - now > f->c.max_hold_ms)
            until = now + f->c.max_hold_ms;
        if (until > f->hold_until)
            f->hold_until = until;
    }
    if (s->hold_until > f->hold_shared)
        f->hold_shared = s->hold_until;
    if (!f->c.breaker)
        return 0;
    if (s->state == PB_BREAKER_CLOSED) {
        if (f->state == PB_BREAKER_CLOSED)
            return 0;
        f->state = PB_BREAKER_CLOSED;
        f->probe_out = false;
        f->opened_here = false;
        window_reset(f);
        return PB_FLOW_CLOSED;
    }
    if (s->state != PB_BREAKER_OPEN || s->open_until <= now)
        return 0;
    int64_t grace = f->c.open_for_ms / 2;
    int64_t until = s->open_until + grace;
    if (f->state == PB_BREAKER_OPEN && f->open_until >= until)
        return 0;
    bool was_closed = f->state == PB_BREAKER_CLOSED;
    f->state = PB_BREAKER_OPEN;
    f->open_until = until;
    f->probe_out = false;
    f->opened_here = false;
    if (!was_closed)
        return 0;
    f->opened_total++;
    return PB_FLOW_OPENED;
}

bool pb_flow_share_due(struct pb_flow *f, unsigned ev, int64_t hold_min_ms, int64_t now,
                       struct pb_flow_share *out)
{
    bool breaker = (ev & (PB_FLOW_OPENED | PB_FLOW_REOPENED | PB_FLOW_CLOSED)) != 0;
    bool hold = f->hold_until - now >= hold_min_ms && f->hold_until > f->hold_shared;
    if (!breaker && !hold)
        return false;
    if (hold)
        f->hold_shared = f->hold_until;
    /* The breaker's state goes only when it changed here: a hold alone
     * must not close (or open) the others'. */
    out->state = !breaker                        ? -1
                 : f->state == PB_BREAKER_CLOSED ? PB_BREAKER_CLOSED
                                                 : PB_BREAKER_OPEN;
    out->open_until = out->state == PB_BREAKER_OPEN ? f->open_until : 0;
    out->hold_until = f->hold_until > now ? f->hold_until : 0;
    return true;
}

struct pb_rate pb_flow_rate_share(struct pb_rate r, int nodes)
{
    if (nodes <= 1 || r.count == 0 || r.period_ms <= 0)
        return r;
    /* count/nodes per period*nodes/... : the same rate, and a bucket (a
     * burst) of a node's part of the count, so bursts add up to count too. */
    uint64_t n = (uint64_t)nodes;
    uint64_t count = r.count / n ? r.count / n : 1;
    if ((uint64_t)r.period_ms > UINT64_MAX / n / count)
        return r;
    uint64_t period = ((uint64_t)r.period_ms * n * count + r.count - 1) / r.count;
    if (period > (uint64_t)INT64_MAX)
        return r;
    return (struct pb_rate){.count = count, .period_ms = (int64_t)period};
}
