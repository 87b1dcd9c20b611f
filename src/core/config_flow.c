/* config_flow.c - the flow-control options every output takes, read from
 * their nodes once the output's block is decoded:
 *
 *   concurrency: 16 | adaptive      (with max_concurrency)
 *   rate_limit: 100/s | {rate: 10/s, key: JQ, max_keys: 10000}
 *   circuit_breaker: {window: 30s, min_requests: 10, failure_ratio: 0.7,
 *                     open_for: 30s, events_pipeline: NAME}
 *
 * Errors carry file:line:col like every other configuration error. Runs
 * where the configuration is loaded. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/engine.h"

#define CONCURRENCY_MAX 4096
#define RATE_KEYS_MAX 1000000

__attribute__((format(printf, 3, 4))) static int bad(struct pb_err *err, const struct pb_node *n,
                                                     const char *fmt, ...)
{
    char msg[PB_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return pb_err_at(err, PB_ECONFIG, n->file, n->line, n->col, "%s", msg);
}

static int load_concurrency(struct pb_output *o, struct pb_err *err)
{
    const struct pb_node *n = o->common.concurrency_node;
    o->common.flow.max_concurrency = (size_t)o->common.max_concurrency;
    if (!n || n->type == PB_NODE_NULL)
        return 0;
    int64_t v;
    if (n->type == PB_NODE_SCALAR && strcmp(n->str, "adaptive") == 0) {
        o->common.adaptive = true;
        o->common.flow.adaptive = true;
        return 0;
    }
    if (n->type != PB_NODE_SCALAR || pb_parse_int(n->str, &v) != 0 || v < 0 || v > CONCURRENCY_MAX)
        return bad(err, n, "concurrency takes a number from 0 to %d, or adaptive", CONCURRENCY_MAX);
    o->common.concurrency = v;
    return 0;
}

struct rate_raw {
    struct pb_rate rate;
    char *key;
    int64_t max_keys;
};

static const struct pb_field rate_fields[] = {
    {.name = "rate",
     .type = PB_F_RATE,
     .offset = offsetof(struct rate_raw, rate),
     .flags = PB_FIELD_REQUIRED,
     .doc = "e.g. 10/s"},
    {.name = "key",
     .type = PB_F_STR,
     .offset = offsetof(struct rate_raw, key),
     .doc = "jq over the message: one bucket per key"},
    {.name = "max_keys",
     .type = PB_F_INT,
     .offset = offsetof(struct rate_raw, max_keys),
     .def = "10000",
     .min = 1,
     .max = RATE_KEYS_MAX,
     .doc = "buckets kept; the least recently used goes first"},
    {0},
};

static int load_rate(struct pb_output *o, struct pb_err *err)
{
    const struct pb_node *n = o->common.rate_limit_node;
    if (!n || n->type == PB_NODE_NULL)
        return 0;
    if (n->type == PB_NODE_SCALAR) {
        if (pb_parse_rate(n->str, &o->common.rate_limit) != 0)
            return bad(err, n, "rate_limit \"%s\" is not a rate (e.g. 100/s, 6000/m)", n->str);
        return 0;
    }
    if (n->type != PB_NODE_MAP)
        return bad(err, n, "rate_limit takes a rate (100/s) or {rate, key, max_keys}");
    struct rate_raw raw = {0};
    int rc = pb_conf_decode(n, rate_fields, &raw, err);
    if (rc)
        goto out;
    o->common.rate_limit = raw.rate;
    o->common.rate_max_keys = raw.max_keys;
    if (raw.key) {
        o->rate_key_jq = pb_jq_compile(raw.key, err);
        if (!o->rate_key_jq) {
            const struct pb_node *k = pb_node_get(n, "key");
            char msg[PB_ERR_MSG_MAX];
            snprintf(msg, sizeof(msg), "%s", err->msg);
            rc = bad(err, k ? k : n, "rate_limit.key: %s", msg);
            goto out;
        }
        o->common.rate_key = raw.key;
        raw.key = NULL;
    }
out:
    pb_conf_free(rate_fields, &raw);
    return rc;
}

struct breaker_raw {
    int64_t window_ms;
    int64_t min_requests;
    char *failure_ratio;
    int64_t open_for_ms;
    char *events_pipeline;
};

static const struct pb_field breaker_fields[] = {
    {.name = "window",
     .type = PB_F_DURATION,
     .offset = offsetof(struct breaker_raw, window_ms),
     .def = "30s",
     .doc = "attempts are counted over this window"},
    {.name = "min_requests",
     .type = PB_F_INT,
     .offset = offsetof(struct breaker_raw, min_requests),
     .def = "10",
     .min = 1,
     .max = 1000000,
     .doc = "ended attempts in the window before it may open"},
    {.name = "failure_ratio",
     .type = PB_F_STR,
     .offset = offsetof(struct breaker_raw, failure_ratio),
     .def = "0.7",
     .doc = "failed / ended at or above this opens it (0 < ratio <= 1)"},
    {.name = "open_for",
     .type = PB_F_DURATION,
     .offset = offsetof(struct breaker_raw, open_for_ms),
     .def = "30s",
     .doc = "open this long, then one probe goes through"},
    {.name = "events_pipeline",
     .type = PB_F_STR,
     .offset = offsetof(struct breaker_raw, events_pipeline),
     .doc = "pipeline that receives circuit_breaker.opened and .closed events"},
    {0},
};

static int load_breaker(struct pb_output *o, struct pb_err *err)
{
    const struct pb_node *n = o->common.breaker_node;
    if (!n || n->type == PB_NODE_NULL)
        return 0;
    if (n->type == PB_NODE_SCALAR && strcmp(n->str, "false") == 0)
        return 0;
    if (n->type != PB_NODE_MAP)
        return bad(err, n, "circuit_breaker takes a map ({} for the defaults)");
    struct breaker_raw raw = {0};
    int rc = pb_conf_decode(n, breaker_fields, &raw, err);
    if (rc)
        goto out;
    char *end = NULL;
    double ratio = strtod(raw.failure_ratio, &end);
    if (!end || *end || !(ratio > 0 && ratio <= 1)) {
        const struct pb_node *r = pb_node_get(n, "failure_ratio");
        rc = bad(err, r ? r : n, "circuit_breaker.failure_ratio takes a number above 0, at most 1");
        goto out;
    }
    if (raw.window_ms < 100 || raw.open_for_ms < 100) {
        rc = bad(err, n, "circuit_breaker: window and open_for are at least 100ms");
        goto out;
    }
    o->common.flow.breaker = true;
    o->common.flow.window_ms = raw.window_ms;
    o->common.flow.min_requests = raw.min_requests;
    o->common.flow.failure_ratio = ratio;
    o->common.flow.open_for_ms = raw.open_for_ms;
    o->common.events_pipeline = raw.events_pipeline;
    raw.events_pipeline = NULL;
out:
    pb_conf_free(breaker_fields, &raw);
    return rc;
}

int pb__output_flow_load(struct pb_output *o, struct pb_err *err)
{
    int rc = load_concurrency(o, err);
    if (!rc)
        rc = load_rate(o, err);
    if (!rc)
        rc = load_breaker(o, err);
    return rc;
}

int pb__config_check_events(struct pb_config *c, struct pb_err *err)
{
    for (size_t i = 0; i < c->npipelines; i++)
        for (size_t j = 0; j < c->pipelines[i].nouts; j++) {
            struct pb_output *o = &c->pipelines[i].outs[j];
            const char *ev = o->common.events_pipeline;
            if (!ev)
                continue;
            bool found = false;
            for (size_t k = 0; k < c->npipelines; k++)
                found |= strcmp(c->pipelines[k].name, ev) == 0;
            if (!found) {
                const struct pb_node *n = o->common.breaker_node;
                const struct pb_node *at = n ? pb_node_get(n, "events_pipeline") : NULL;
                return pb_err_at(err, PB_ECONFIG, at ? at->file : c->path, at ? at->line : 1,
                                 at ? at->col : 1,
                                 "circuit_breaker.events_pipeline of output %s: no pipeline "
                                 "\"%s\"",
                                 o->name, ev);
            }
        }
    return 0;
}
