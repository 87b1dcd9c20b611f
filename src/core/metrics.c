/* metrics.c - counters, histograms and their Prometheus text rendering.
 *
 * Counters live in the pipeline and output structs as atomics, updated where
 * things happen; rendering reads them without locks. On a node of a
 * cluster (state on PostgreSQL) every sample carries node="<cluster.node>":
 * the nodes serve the same series, each of its own process. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/engine.h"
#include "core/http_auth.h"
#include "core/input.h"
#include "net/httpd.h"

/* Bucket upper bounds in microseconds (and as text, in seconds). */
static const int64_t bucket_us[PB_HIST_BUCKETS] = {500,     1000,    2500,    5000,    10000,
                                                   25000,   50000,   100000,  250000,  500000,
                                                   1000000, 2500000, 5000000, 10000000};
static const char *const bucket_le[PB_HIST_BUCKETS] = {"0.0005", "0.001", "0.0025", "0.005", "0.01",
                                                       "0.025",  "0.05",  "0.1",    "0.25",  "0.5",
                                                       "1",      "2.5",   "5",      "10"};

void pb_hist_observe(struct pb_hist *h, int64_t us)
{
    if (us < 0)
        us = 0;
    size_t i = 0;
    while (i < PB_HIST_BUCKETS && us > bucket_us[i])
        i++;
    atomic_fetch_add_explicit(&h->counts[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, (uint64_t)us, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->total, 1, memory_order_relaxed);
}

struct buf {
    char *p;
    size_t len, cap;
    bool oom;
};

__attribute__((format(printf, 2, 3))) static void put(struct buf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
}

/* Label values are names from the config; escape what Prometheus requires. */
static const char *lv(const char *s, char *tmp, size_t len)
{
    size_t j = 0;
    for (size_t i = 0; s[i] && j + 3 < len; i++) {
        if (s[i] == '"' || s[i] == '\\') {
            tmp[j++] = '\\';
            tmp[j++] = s[i];
        } else if (s[i] == '\n') {
            tmp[j++] = '\\';
            tmp[j++] = 'n';
        } else {
            tmp[j++] = s[i];
        }
    }
    tmp[j] = 0;
    return tmp;
}

static void hist(struct buf *b, const char *name, const char *labels, struct pb_hist *h)
{
    uint64_t cum = 0;
    for (size_t i = 0; i < PB_HIST_BUCKETS; i++) {
        cum += atomic_load_explicit(&h->counts[i], memory_order_relaxed);
        put(b, "%s_bucket{%s,le=\"%s\"} %llu\n", name, labels, bucket_le[i],
            (unsigned long long)cum);
    }
    cum += atomic_load_explicit(&h->counts[PB_HIST_BUCKETS], memory_order_relaxed);
    put(b, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, labels, (unsigned long long)cum);
    put(b, "%s_sum{%s} %.6f\n", name, labels,
        (double)atomic_load_explicit(&h->sum_us, memory_order_relaxed) / 1e6);
    put(b, "%s_count{%s} %llu\n", name, labels, (unsigned long long)cum);
}

#define U(x) ((unsigned long long)atomic_load_explicit(&(x), memory_order_relaxed))

/* Every output, endpoints' virtual ones included (they are never freed while
 * the engine runs, so the pointers outlive the locks). */
struct out_list {
    struct pb_output **v;
    size_t n, cap;
    bool oom;
};

static void collect_cb(struct pb_output *o, void *arg)
{
    struct out_list *l = arg;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        struct pb_output **nv = realloc(l->v, cap * sizeof(*nv));
        if (!nv) {
            l->oom = true;
            return;
        }
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = o;
}

/* Flow control of each output (flow.c). */
static void flow_metrics(struct buf *b, const struct out_list *outs)
{
    char t1[PB_NAME_MAX * 2], t2[PB_NAME_MAX * 2];
    int64_t now = pb_now_ms();
    static const struct {
        const char *name, *help, *type;
        size_t off;
        bool breaker_only;
    } m[] = {
        {"patchbay_output_breaker_opened_total", "Times the circuit breaker opened.", "counter",
         offsetof(struct pb_output, breaker_opened_total), true},
        {"patchbay_output_throttled_total",
         "Attempts the partner refused for rate (HTTP 429): the output slowed down.", "counter",
         offsetof(struct pb_output, throttled_total), false},
        {"patchbay_output_not_sent_total",
         "Attempts that never reached the partner (no credentials yet): not counted.", "counter",
         offsetof(struct pb_output, not_sent_total), false},
    };
    for (size_t k = 0; k < sizeof(m) / sizeof(m[0]); k++) {
        put(b, "# HELP %s %s\n# TYPE %s %s\n", m[k].name, m[k].help, m[k].name, m[k].type);
        for (size_t i = 0; i < outs->n; i++) {
            struct pb_output *o = outs->v[i];
            if (o->is_route || (m[k].breaker_only && !o->common.flow.breaker))
                continue;
            _Atomic uint64_t *v = (_Atomic uint64_t *)((char *)o + m[k].off);
            put(b, "%s{pipeline=\"%s\",output=\"%s\"} %llu\n", m[k].name,
                lv(o->pl->name, t1, sizeof(t1)), lv(o->name, t2, sizeof(t2)),
                (unsigned long long)atomic_load(v));
        }
    }
    put(b, "# HELP patchbay_output_breaker_state The circuit breaker: 0 closed, 1 open, 2 "
           "half-open (one probe).\n# TYPE patchbay_output_breaker_state gauge\n");
    for (size_t i = 0; i < outs->n; i++)
        if (!outs->v[i]->is_route && outs->v[i]->common.flow.breaker)
            put(b, "patchbay_output_breaker_state{pipeline=\"%s\",output=\"%s\"} %d\n",
                lv(outs->v[i]->pl->name, t1, sizeof(t1)), lv(outs->v[i]->name, t2, sizeof(t2)),
                atomic_load(&outs->v[i]->breaker_state));
    put(b, "# HELP patchbay_output_concurrency Attempts the output may have in flight now "
           "(moves with concurrency: adaptive).\n# TYPE patchbay_output_concurrency gauge\n");
    for (size_t i = 0; i < outs->n; i++)
        if (!outs->v[i]->is_route)
            put(b, "patchbay_output_concurrency{pipeline=\"%s\",output=\"%s\"} %lld\n",
                lv(outs->v[i]->pl->name, t1, sizeof(t1)), lv(outs->v[i]->name, t2, sizeof(t2)),
                (long long)atomic_load(&outs->v[i]->concurrency_gauge));
    put(b, "# HELP patchbay_output_pace_per_second The pace learnt from the partner's refusals "
           "and rate-limit headers (0: not paced).\n# TYPE patchbay_output_pace_per_second "
           "gauge\n");
    for (size_t i = 0; i < outs->n; i++)
        if (!outs->v[i]->is_route)
            put(b, "patchbay_output_pace_per_second{pipeline=\"%s\",output=\"%s\"} %.3f\n",
                lv(outs->v[i]->pl->name, t1, sizeof(t1)), lv(outs->v[i]->name, t2, sizeof(t2)),
                (double)atomic_load(&outs->v[i]->pace_mrps) / 1000.0);
    put(b, "# HELP patchbay_output_held_seconds How long the output still waits because its "
           "partner asked (Retry-After, a rate-limit reset).\n# TYPE patchbay_output_held_seconds "
           "gauge\n");
    for (size_t i = 0; i < outs->n; i++) {
        if (outs->v[i]->is_route)
            continue;
        int64_t until = atomic_load(&outs->v[i]->hold_until);
        put(b, "patchbay_output_held_seconds{pipeline=\"%s\",output=\"%s\"} %.3f\n",
            lv(outs->v[i]->pl->name, t1, sizeof(t1)), lv(outs->v[i]->name, t2, sizeof(t2)),
            until > now ? (double)(until - now) / 1000.0 : 0.0);
    }
}

struct oauth2_pass {
    struct buf *b;
    int which; /* 0 requests, 1 failures, 2 valid */
};

static void oauth2_metric(void *arg, const char *token_url, const char *client_id,
                          uint64_t requests, uint64_t failures, bool valid)
{
    struct oauth2_pass *p = arg;
    static const char *const names[] = {"patchbay_oauth2_token_requests_total",
                                        "patchbay_oauth2_token_failures_total",
                                        "patchbay_oauth2_token_valid"};
    char t1[512], t2[512];
    unsigned long long v = p->which == 0 ? requests : p->which == 1 ? failures : valid;
    put(p->b, "%s{token_url=\"%s\",client_id=\"%s\"} %llu\n", names[p->which],
        lv(token_url, t1, sizeof(t1)), lv(client_id, t2, sizeof(t2)), v);
}

/* OAuth2 token sources (oauth2.c), one family at a time. */
static void oauth2_metrics(struct buf *b)
{
    static const char *const heads[] = {
        "# HELP patchbay_oauth2_token_requests_total Requests to an OAuth2 token endpoint.\n"
        "# TYPE patchbay_oauth2_token_requests_total counter\n",
        "# HELP patchbay_oauth2_token_failures_total Token requests that failed (they back "
        "off).\n# TYPE patchbay_oauth2_token_failures_total counter\n",
        "# HELP patchbay_oauth2_token_valid 1 while a token is held and unexpired.\n"
        "# TYPE patchbay_oauth2_token_valid gauge\n",
    };
    for (int k = 0; k < 3; k++) {
        put(b, "%s", heads[k]);
        struct oauth2_pass p = {b, k};
        pb__http_auth_metrics(oauth2_metric, &p);
    }
}

/* Every sample of the rendered text b with node="<name>" as its first
 * label (a cluster's nodes serve the same series). A new buffer; NULL when
 * out of memory. */
static char *add_node_label(const struct buf *b, const char *node, size_t *len)
{
    char nv[256], lab[300];
    snprintf(lab, sizeof(lab), "node=\"%s\"", lv(node, nv, sizeof(nv)));
    struct buf o = {.cap = b->len + b->len / 4 + 1024};
    o.p = malloc(o.cap);
    if (!o.p)
        return NULL;
    for (const char *p = b->p, *end = b->p + b->len; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
        size_t name = strcspn(p, "{ \n");
        if (p[0] == '#' || name >= n || (p[name] != '{' && p[name] != ' '))
            put(&o, "%.*s", (int)n, p);
        else if (p[name] == '{' && p[name + 1] == '}')
            put(&o, "%.*s{%s%.*s", (int)name, p, lab, (int)(n - name - 1), p + name + 1);
        else if (p[name] == '{')
            put(&o, "%.*s{%s,%.*s", (int)name, p, lab, (int)(n - name - 1), p + name + 1);
        else
            put(&o, "%.*s{%s}%.*s", (int)name, p, lab, (int)(n - name), p + name);
        p += n;
    }
    if (o.oom) {
        free(o.p);
        return NULL;
    }
    *len = o.len;
    return o.p;
}

char *pb_metrics_render(struct pb_engine *e, size_t *len)
{
    struct buf b = {.cap = 16384};
    b.p = malloc(b.cap);
    if (!b.p)
        return NULL;
    struct pb_config *c = e->cfg;
    char t1[256], t2[256], labels[600];
    struct out_list outs = {0};
    for (size_t i = 0; i < c->npipelines; i++)
        pb_pipeline_each_output(&c->pipelines[i], collect_cb, &outs);
    if (outs.oom) {
        free(outs.v);
        free(b.p);
        return NULL;
    }

    put(&b, "# HELP patchbay_up 1 while the daemon runs.\n# TYPE patchbay_up gauge\n"
            "patchbay_up 1\n");
    put(&b,
        "# HELP patchbay_ready 1 when ingest and delivery are running.\n"
        "# TYPE patchbay_ready gauge\npatchbay_ready %d\n",
        atomic_load(&e->ready) && pb_store_writable(e->store) ? 1 : 0);
    uint64_t commits = 0, ops = 0;
    pb_store_stats(e->store, &commits, &ops);
    put(&b,
        "# HELP patchbay_store_commits_total Transactions committed by the state store writer.\n"
        "# TYPE patchbay_store_commits_total counter\npatchbay_store_commits_total %llu\n",
        (unsigned long long)commits);
    put(&b,
        "# HELP patchbay_store_ops_total Operations committed (group commit: ops per "
        "transaction = ops / commits).\n# TYPE patchbay_store_ops_total counter\n"
        "patchbay_store_ops_total %llu\n",
        (unsigned long long)ops);
    put(&b,
        "# HELP patchbay_store_queue_depth Operations waiting for the writer.\n"
        "# TYPE patchbay_store_queue_depth gauge\npatchbay_store_queue_depth %zu\n",
        pb_store_queue_depth(e->store));
    uint64_t cut_head, cut_body;
    pb_httpd_request_timeouts(e->httpd, &cut_head, &cut_body);
    put(&b,
        "# HELP patchbay_http_request_timeouts_total Connections closed because their request did "
        "not arrive within server.connection_timeout, by the part still arriving.\n"
        "# TYPE patchbay_http_request_timeouts_total counter\n"
        "patchbay_http_request_timeouts_total{part=\"head\"} %llu\n"
        "patchbay_http_request_timeouts_total{part=\"body\"} %llu\n",
        (unsigned long long)cut_head, (unsigned long long)cut_body);

    static const struct {
        const char *name, *help;
        size_t off;
    } pl_counters[] = {
        {"patchbay_messages_received_total", "Requests that reached an ingest route.",
         offsetof(struct pb_pipeline, received)},
        {"patchbay_messages_accepted_total", "Messages committed and acknowledged.",
         offsetof(struct pb_pipeline, accepted)},
        {"patchbay_messages_duplicate_total",
         "Requests answered from the idempotency window; nothing new stored.",
         offsetof(struct pb_pipeline, duplicates)},
    };
    for (size_t k = 0; k < sizeof(pl_counters) / sizeof(pl_counters[0]); k++) {
        put(&b, "# HELP %s %s\n# TYPE %s counter\n", pl_counters[k].name, pl_counters[k].help,
            pl_counters[k].name);
        for (size_t i = 0; i < c->npipelines; i++) {
            struct pb_pipeline *pl = &c->pipelines[i];
            _Atomic uint64_t *v = (_Atomic uint64_t *)((char *)pl + pl_counters[k].off);
            put(&b, "%s{pipeline=\"%s\"} %llu\n", pl_counters[k].name, lv(pl->name, t1, sizeof(t1)),
                U(*v));
        }
    }
    put(&b, "# HELP patchbay_messages_rejected_total Requests refused, by reason.\n"
            "# TYPE patchbay_messages_rejected_total counter\n");
    for (size_t i = 0; i < c->npipelines; i++)
        for (int r = 0; r < PB_REJECT_COUNT; r++)
            put(&b, "patchbay_messages_rejected_total{pipeline=\"%s\",reason=\"%s\"} %llu\n",
                lv(c->pipelines[i].name, t1, sizeof(t1)), pb_reject_names[r],
                U(c->pipelines[i].rejected[r]));

    put(&b, "# HELP patchbay_webhook_verify_failures_total Requests refused by the input's "
            "verify block, by reason.\n# TYPE patchbay_webhook_verify_failures_total counter\n");
    for (size_t i = 0; i < c->npipelines; i++) {
        if (!c->pipelines[i].in->env.verifies)
            continue;
        for (int r = 0; r < PB_VERIFY_REASON_COUNT; r++)
            put(&b, "patchbay_webhook_verify_failures_total{pipeline=\"%s\",reason=\"%s\"} %llu\n",
                lv(c->pipelines[i].name, t1, sizeof(t1)), pb_verify_reason_names[r],
                U(c->pipelines[i].verify_failed[r]));
    }

    static const struct {
        const char *name, *help, *type;
        size_t off;
    } out_metrics[] = {
        {"patchbay_deliveries_delivered_total", "Deliveries a partner acknowledged.", "counter",
         offsetof(struct pb_output, delivered)},
        {"patchbay_deliveries_retried_total", "Attempts that failed and were scheduled again.",
         "counter", offsetof(struct pb_output, retried)},
        {"patchbay_deliveries_dead_total", "Deliveries moved to the dead-letter queue.", "counter",
         offsetof(struct pb_output, dead)},
        {"patchbay_deliveries_filtered_total", "Deliveries dropped on purpose by a filter.",
         "counter", offsetof(struct pb_output, filtered)},
        {"patchbay_deliveries_routed_away_total",
         "Messages the route stage sent to other outputs of the pipeline.", "counter",
         offsetof(struct pb_output, routed_away)},
        {"patchbay_delivery_attempts_total", "Attempts started.", "counter",
         offsetof(struct pb_output, attempts)},
    };
    for (size_t k = 0; k < sizeof(out_metrics) / sizeof(out_metrics[0]); k++) {
        put(&b, "# HELP %s %s\n# TYPE %s %s\n", out_metrics[k].name, out_metrics[k].help,
            out_metrics[k].name, out_metrics[k].type);
        for (size_t i = 0; i < outs.n; i++) {
            struct pb_output *o = outs.v[i];
            _Atomic uint64_t *v = (_Atomic uint64_t *)((char *)o + out_metrics[k].off);
            put(&b, "%s{pipeline=\"%s\",output=\"%s\"} %llu\n", out_metrics[k].name,
                lv(o->pl->name, t1, sizeof(t1)), lv(o->name, t2, sizeof(t2)), U(*v));
        }
    }
    put(&b, "# HELP patchbay_deliveries_inflight Attempts in flight.\n"
            "# TYPE patchbay_deliveries_inflight gauge\n");
    for (size_t i = 0; i < outs.n; i++)
        put(&b, "patchbay_deliveries_inflight{pipeline=\"%s\",output=\"%s\"} %lld\n",
            lv(outs.v[i]->pl->name, t1, sizeof(t1)), lv(outs.v[i]->name, t2, sizeof(t2)),
            (long long)atomic_load(&outs.v[i]->inflight_gauge));
    put(&b, "# HELP patchbay_backlog Committed deliveries not yet finished.\n"
            "# TYPE patchbay_backlog gauge\n");
    for (size_t i = 0; i < outs.n; i++)
        put(&b, "patchbay_backlog{pipeline=\"%s\",output=\"%s\"} %lld\n",
            lv(outs.v[i]->pl->name, t1, sizeof(t1)), lv(outs.v[i]->name, t2, sizeof(t2)),
            (long long)atomic_load(&outs.v[i]->backlog));

    flow_metrics(&b, &outs);
    oauth2_metrics(&b);

    put(&b, "# HELP patchbay_input_connected 1 while the pipeline's input is connected to its "
            "source (or ready to take data).\n# TYPE patchbay_input_connected gauge\n");
    for (size_t i = 0; i < c->npipelines; i++) {
        const struct pb_input *in = c->pipelines[i].in;
        int st = atomic_load(&in->state);
        put(&b, "patchbay_input_connected{pipeline=\"%s\",input=\"%s\"} %d\n",
            lv(c->pipelines[i].name, t1, sizeof(t1)), in->plugin->name,
            st == PB_INPUT_CONNECTED || st == PB_INPUT_FINISHED);
    }
    put(&b, "# HELP patchbay_input_lag Items waiting at the input's source, where it tells "
            "(JetStream pending, consumer lag, stream entries not yet read).\n"
            "# TYPE patchbay_input_lag gauge\n");
    for (size_t i = 0; i < c->npipelines; i++) {
        const struct pb_input *in = c->pipelines[i].in;
        int64_t lag = atomic_load(&in->lag);
        if (lag >= 0)
            put(&b, "patchbay_input_lag{pipeline=\"%s\",input=\"%s\"} %lld\n",
                lv(c->pipelines[i].name, t1, sizeof(t1)), in->plugin->name, (long long)lag);
    }
    put(&b, "# HELP patchbay_input_lag_bytes Bytes the input is behind at its source, where it "
            "counts in bytes (a replication slot's WAL not yet confirmed).\n"
            "# TYPE patchbay_input_lag_bytes gauge\n");
    for (size_t i = 0; i < c->npipelines; i++) {
        const struct pb_input *in = c->pipelines[i].in;
        int64_t lag = atomic_load(&in->lag_bytes);
        if (lag >= 0)
            put(&b, "patchbay_input_lag_bytes{pipeline=\"%s\",input=\"%s\"} %lld\n",
                lv(c->pipelines[i].name, t1, sizeof(t1)), in->plugin->name, (long long)lag);
    }
    put(&b, "# HELP patchbay_messages_nacked_total Items handed back to their source "
            "unacknowledged (a failed commit, back-pressure) for it to redeliver.\n"
            "# TYPE patchbay_messages_nacked_total counter\n");
    for (size_t i = 0; i < c->npipelines; i++)
        put(&b, "patchbay_messages_nacked_total{pipeline=\"%s\"} %llu\n",
            lv(c->pipelines[i].name, t1, sizeof(t1)), U(c->pipelines[i].in->nacked));
    put(&b, "# HELP patchbay_messages_dead_on_arrival_total Items an input could not carry "
            "(invalid JSON...), stored straight into the dead-letter queue.\n"
            "# TYPE patchbay_messages_dead_on_arrival_total counter\n");
    for (size_t i = 0; i < c->npipelines; i++)
        put(&b, "patchbay_messages_dead_on_arrival_total{pipeline=\"%s\"} %llu\n",
            lv(c->pipelines[i].name, t1, sizeof(t1)), U(c->pipelines[i].dead_on_arrival));
    put(&b, "# HELP patchbay_output_connected 1 while the output is connected to its partner "
            "(always 1 for outputs without a connection of their own).\n"
            "# TYPE patchbay_output_connected gauge\n");
    for (size_t i = 0; i < c->npipelines; i++)
        for (size_t j = 0; j < c->pipelines[i].nouts; j++) {
            const struct pb_output *o = &c->pipelines[i].outs[j];
            put(&b, "patchbay_output_connected{pipeline=\"%s\",output=\"%s\"} %d\n",
                lv(c->pipelines[i].name, t1, sizeof(t1)), lv(o->name, t2, sizeof(t2)),
                atomic_load(&o->state) == PB_OUTPUT_CONNECTED);
        }

    put(&b, "# HELP patchbay_ingest_latency_seconds From request start to acknowledgement.\n"
            "# TYPE patchbay_ingest_latency_seconds histogram\n");
    for (size_t i = 0; i < c->npipelines; i++) {
        snprintf(labels, sizeof(labels), "pipeline=\"%s\"",
                 lv(c->pipelines[i].name, t1, sizeof(t1)));
        hist(&b, "patchbay_ingest_latency_seconds", labels, &c->pipelines[i].ingest_latency);
    }
    put(&b, "# HELP patchbay_delivery_latency_seconds Duration of delivery attempts.\n"
            "# TYPE patchbay_delivery_latency_seconds histogram\n");
    for (size_t i = 0; i < outs.n; i++) {
        snprintf(labels, sizeof(labels), "pipeline=\"%s\",output=\"%s\"",
                 lv(outs.v[i]->pl->name, t1, sizeof(t1)), lv(outs.v[i]->name, t2, sizeof(t2)));
        hist(&b, "patchbay_delivery_latency_seconds", labels, &outs.v[i]->latency);
    }
    free(outs.v);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    if (pb_store_clustered(e->store)) {
        /* Several nodes serve the same series: each says which it is. */
        char *labelled = add_node_label(&b, pb_store_node_name(e->store), len);
        free(b.p);
        return labelled;
    }
    *len = b.len;
    return b.p;
}
