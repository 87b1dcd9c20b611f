/* api.c - the admin REST API: pipelines, messages and the dead-letter queue.
 *
 *   GET    /api/pipelines
 *   GET    /api/inputs
 *   GET    /api/nodes                                   (nodes.c)
 *   GET    /api/messages?pipeline=&key=&since=&where=... (search.c)
 *   GET    /api/messages/{id}
 *   GET    /api/metrics/history?since=                  (history_api.c)
 *   GET    /api/tail?pipeline=&after=                   (tail_api.c)
 *   GET    /api/dead-letters?pipeline=&output=&error=&order=&limit=&after=&before= (dead_api.c)
 *   GET    /api/dead-letters/{id}
 *   POST   /api/dead-letters/{id}/replay
 *   POST   /api/dead-letters/{id}/edit-and-replay       (dead_api.c)
 *   POST   /api/dead-letters/replay?pipeline=&output=&... (a set, by filter)
 *   POST   /api/dead-letters/purge?pipeline=&output=&... (dead_api.c)
 *   DELETE /api/dead-letters/{id}
 *
 * Reads go to the store's read connections; changes go through the writer
 * like everything else, and the dispatcher is told to page replays in. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "admin/api.h"
#include "admin/views.h"
#include "core/http_auth.h"
#include "core/input.h"
#include "patchbay/pb_log.h"

static int reply(struct pb_api_resp *r, int status, json_t *body)
{
    r->status = status;
    r->body = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (body && !r->body) {
        r->status = 500;
        r->body = strdup("{\"error\":\"out of memory\"}");
    }
    return 0;
}

static int reply_error(struct pb_api_resp *r, int status, const char *msg)
{
    reply(r, status, json_pack("{s:s}", "error", msg));
    return 0;
}

int pb_admin_store_error(struct pb_api_resp *r, const struct pb_err *err)
{
    if (err->code == PB_ENOTFOUND)
        reply_error(r, 404, err->msg[0] ? err->msg : "not found");
    else
        reply_error(r, 500, err->msg[0] ? err->msg : pb_strerror(err->code));
    return 0;
}

const char *pb_admin_arg(struct pb_http_request *c, const char *name)
{
    const char *v = pb_http_request_query(c, name);
    return v && *v ? v : NULL;
}

int pb_admin_parse_int(const char *s, int64_t min, int64_t max, int64_t *out)
{
    if (!s || !*s)
        return -1;
    bool neg = *s == '-';
    const char *p = neg ? s + 1 : s;
    int64_t v = 0;
    if (!*p || strlen(p) > 18)
        return -1;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (*p - '0');
    }
    v = neg ? -v : v;
    if (v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

int pb_admin_parse_time(const char *s, int64_t *ms)
{
    if (!s)
        return -1;
    if (pb_admin_parse_int(s, 0, INT64_MAX / 2, ms) == 0)
        return 0;
    struct tm tm = {0};
    const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!p)
        return -1;
    int64_t frac = 0;
    if (*p == '.') {
        int digits = 0;
        for (p++; *p >= '0' && *p <= '9'; p++, digits++)
            if (digits < 3)
                frac = frac * 10 + (*p - '0');
        if (digits == 0)
            return -1;
        for (; digits < 3; digits++)
            frac *= 10;
    }
    int64_t offset = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if ((*p == '+' || *p == '-') && p[1] >= '0' && p[1] <= '9' && p[2] >= '0' &&
               p[2] <= '9' && p[3] == ':' && p[4] >= '0' && p[4] <= '9' && p[5] >= '0' &&
               p[5] <= '9') {
        offset = ((p[1] - '0') * 10 + (p[2] - '0')) * 60 + (p[4] - '0') * 10 + (p[5] - '0');
        if (*p == '-')
            offset = -offset;
        p += 6;
    } else {
        return -1;
    }
    if (*p)
        return -1;
    *ms = ((int64_t)timegm(&tm) - offset * 60) * 1000 + frac;
    return *ms >= 0 ? 0 : -1;
}

/* Parse a positive decimal id; 0 when not one. */
static int64_t parse_id(const char *s, size_t len)
{
    if (len == 0 || len > 18)
        return 0;
    int64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* GET /api/inputs: every pipeline's input, as it is now. */
static int get_inputs(struct pb_engine *e, struct pb_api_resp *r)
{
    json_t *list = json_array();
    if (!list)
        return reply_error(r, 500, "out of memory");
    for (size_t i = 0; i < e->cfg->npipelines; i++) {
        struct pb_pipeline *pl = &e->cfg->pipelines[i];
        struct pb_input *in = pl->in;
        pthread_mutex_lock(&in->lock);
        json_t *o =
            json_pack("{s:s, s:s, s:s, s:s?, s:s?, s:I, s:I, s:I, s:I, s:I, s:I}", "pipeline",
                      pl->name, "input", in->plugin->name, "state",
                      pb__input_state_name(atomic_load(&in->state)), "detail", in->detail,
                      "position", in->position, "received", (json_int_t)atomic_load(&pl->received),
                      "accepted", (json_int_t)atomic_load(&pl->accepted), "duplicates",
                      (json_int_t)atomic_load(&pl->duplicates), "dead_on_arrival",
                      (json_int_t)atomic_load(&pl->dead_on_arrival), "nacked",
                      (json_int_t)atomic_load(&in->nacked), "in_flight",
                      (json_int_t)atomic_load(&in->outstanding));
        pthread_mutex_unlock(&in->lock);
        int64_t lag = atomic_load(&in->lag);
        int64_t lag_bytes = atomic_load(&in->lag_bytes);
        if (o)
            json_object_set_new(o, "lag", lag >= 0 ? json_integer(lag) : json_null());
        if (o && lag_bytes >= 0)
            json_object_set_new(o, "lag_bytes", json_integer(lag_bytes));
        if (!o || json_array_append_new(list, o) != 0) {
            json_decref(list);
            return reply_error(r, 500, "out of memory");
        }
    }
    return reply(r, 200, json_pack("{s:o}", "inputs", list));
}

struct count_ctx {
    struct pb_engine *e;
    json_t *pipelines; /* name -> {outputs: name -> obj} while building */
    bool resync;
};

static json_t *output_obj(json_t *pipelines, const char *pl, const char *out)
{
    json_t *p = json_object_get(pipelines, pl);
    json_t *outs = p ? json_object_get(p, "outputs_by_name") : NULL;
    return outs ? json_object_get(outs, out) : NULL;
}

/* "output" or "output/sub", as the admin API and the metrics name them. */
static const char *out_name(const char *output, const char *sub, char *buf, size_t len)
{
    if (!sub)
        return output;
    snprintf(buf, len, "%s/%s", output, sub);
    return buf;
}

static void count_cb(void *arg, const char *pipeline, const char *output, const char *sub,
                     enum pb_dstate state, int64_t count)
{
    struct count_ctx *cc = arg;
    char name[PB_NAME_MAX * 2];
    json_t *o = output_obj(cc->pipelines, pipeline, out_name(output, sub, name, sizeof(name)));
    if (o)
        json_object_set_new(o, pb_dstate_name(state), json_integer(count));
}

static void auth_status_cb(void *arg, const struct pb_auth_status *st)
{
    json_t *list = arg;
    json_t *a = json_pack("{s:s, s:s}", "type", st->kind, "state", st->state);
    if (!a)
        return;
    if (st->token_url) {
        json_object_set_new(a, "token_url", json_string(st->token_url));
        json_object_set_new(a, "client_id", json_string(st->client_id));
        json_object_set_new(a, "grant", json_string(st->grant));
        json_object_set_new(a, "token_requests", json_integer((json_int_t)st->requests));
        json_object_set_new(a, "token_failures", json_integer((json_int_t)st->failures));
        if (st->expires_in_ms >= 0)
            json_object_set_new(a, "expires_in_ms", json_integer(st->expires_in_ms));
        if (st->failing_since) {
            json_object_set_new(a, "failing_since", json_integer(st->failing_since));
            json_object_set_new(a, "next_try_in_ms", json_integer(st->next_try_in_ms));
            json_object_set_new(a, "error", json_string(st->error));
        }
    }
    json_array_append_new(list, a);
}

/* Flow control, auth and TLS of an output, into its object. */
static void output_flow_json(struct pb_pipeline *pl, struct pb_output *o, json_t *oo)
{
    int64_t now = pb_now_ms();
    int64_t hold = atomic_load(&o->hold_until);
    json_t *f = json_pack("{s:I, s:I, s:f, s:I, s:I}", "concurrency",
                          (json_int_t)atomic_load(&o->concurrency_gauge), "held_for_ms",
                          (json_int_t)(hold > now ? hold - now : 0), "pace_per_second",
                          (double)atomic_load(&o->pace_mrps) / 1000.0, "throttled_total",
                          (json_int_t)atomic_load(&o->throttled_total), "not_sent_total",
                          (json_int_t)atomic_load(&o->not_sent_total));
    if (f && o->common.adaptive)
        json_object_set_new(f, "adaptive", json_true());
    if (f && o->common.flow.breaker)
        json_object_set_new(
            f, "circuit_breaker",
            json_pack("{s:s, s:I}", "state", pb_breaker_state_name(atomic_load(&o->breaker_state)),
                      "opened_total", (json_int_t)atomic_load(&o->breaker_opened_total)));
    if (f)
        json_object_set_new(oo, "flow", f);
    json_t *auth = json_array();
    if (auth) {
        pb__http_auth_each_status(pl->name, o->name, auth_status_cb, auth);
        if (json_array_size(auth))
            json_object_set_new(oo, "auth", json_incref(json_array_get(auth, 0)));
        json_decref(auth);
    }
    if (pb__http_tls_insecure_for(pl->name, o->name))
        json_object_set_new(oo, "tls", json_pack("{s:b}", "insecure_skip_verify", 1));
}

/* ?counts=open: pending and dead only, from their indexes (cheap however
 * many finished deliveries retention keeps); otherwise every state. */
static int get_pipelines(struct pb_engine *e, struct pb_http_request *c, struct pb_api_resp *r)
{
    const char *counts = pb_admin_arg(c, "counts");
    bool open_only = counts && strcmp(counts, "open") == 0;
    if (counts && !open_only)
        return reply_error(r, 400, "counts: open, or leave it out for every state");
    json_t *by_name = json_object();
    json_t *list = json_array();
    if (!by_name || !list)
        goto oom;
    for (size_t i = 0; i < e->cfg->npipelines; i++) {
        struct pb_pipeline *pl = &e->cfg->pipelines[i];
        json_t *outs = json_object();
        json_t *p = json_pack("{s:s, s:s?, s:I, s:I, s:I, s:o}", "name", pl->name, "path",
                              pl->in->nroutes ? pl->in->routes[0].path : NULL, "received",
                              (json_int_t)atomic_load(&pl->received), "accepted",
                              (json_int_t)atomic_load(&pl->accepted), "duplicates",
                              (json_int_t)atomic_load(&pl->duplicates), "outputs_by_name", outs);
        if (!p)
            goto oom;
        for (size_t j = 0; j < pl->nouts; j++) {
            struct pb_output *o = &pl->outs[j];
            json_object_set_new(
                outs, o->name,
                json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
                          "name", o->name, "type", o->plugin->name, "pending", (json_int_t)0,
                          "delivered", (json_int_t)0, "dead", (json_int_t)0, "filtered",
                          (json_int_t)0, "replayed", (json_int_t)0, "inflight",
                          (json_int_t)atomic_load(&o->inflight_gauge), "delivered_total",
                          (json_int_t)atomic_load(&o->delivered), "retried_total",
                          (json_int_t)atomic_load(&o->retried), "dead_total",
                          (json_int_t)atomic_load(&o->dead), "filtered_total",
                          (json_int_t)atomic_load(&o->filtered), "concurrency",
                          (json_int_t)o->sq.concurrency));
            json_t *oo = json_object_get(outs, o->name);
            json_object_set_new(oo, "routed_away_total",
                                json_integer((json_int_t)atomic_load(&o->routed_away)));
            char detail[256];
            pb__output_detail(o, detail, sizeof(detail));
            json_object_set_new(oo, "state",
                                json_string(pb__output_state_name(atomic_load(&o->state))));
            if (detail[0])
                json_object_set_new(oo, "detail", json_string(detail));
            output_flow_json(pl, o, oo);
        }
        if (pb_admin_pipeline_shape(e, pl, p) != 0)
            goto oom;
        json_object_set_new(by_name, pl->name, p);
    }
    struct count_ctx cc = {.e = e, .pipelines = by_name};
    struct pb_err err = {0};
    int crc = open_only ? pb_store_count_pending(e->store, count_cb, &cc, &err)
                        : pb_store_count(e->store, count_cb, &cc, &err);
    if (crc == 0 && open_only)
        crc = pb_store_count_dead(e->store, count_cb, &cc, &err);
    if (crc != 0) {
        json_decref(by_name);
        json_decref(list);
        pb_admin_store_error(r, &err);
        return 0;
    }
    /* Emit in configuration order, outputs as arrays. */
    for (size_t i = 0; i < e->cfg->npipelines; i++) {
        struct pb_pipeline *pl = &e->cfg->pipelines[i];
        json_t *p = json_object_get(by_name, pl->name);
        json_t *outs = json_object_get(p, "outputs_by_name");
        json_t *arr = json_array();
        for (size_t j = 0; j < pl->nouts; j++) {
            json_t *oo = json_object_get(outs, pl->outs[j].name);
            if (open_only) {
                /* Not counted: absent rather than a wrong 0. */
                json_object_del(oo, "delivered");
                json_object_del(oo, "filtered");
                json_object_del(oo, "replayed");
            }
            json_array_append(arr, oo);
        }
        json_t *copy = json_copy(p);
        json_object_del(copy, "outputs_by_name");
        json_object_set_new(copy, "outputs", arr);
        json_array_append_new(list, copy);
    }
    json_decref(by_name);
    reply(r, 200, json_pack("{s:o}", "pipelines", list));
    return 0;
oom:
    json_decref(by_name);
    json_decref(list);
    reply_error(r, 500, "out of memory");
    return 0;
}

/* Why a replay of a dead letter to pipeline/output ("output/sub" for a
 * sub-output) would wait unseen for ever, or NULL when it has somewhere to
 * go. */
const char *pb_admin_replay_refusal(struct pb_engine *e, const char *pipeline, const char *output)
{
    if (strcmp(output, PB_INPUT_OUTPUT) == 0)
        return "it was never taken in (its body cannot be carried); post a corrected copy";
    if (!pb_config_output_known(e->cfg, pipeline, output))
        return "its output is no longer in the configuration";
    const char *slash = strchr(output, '/');
    if (slash) {
        char name[PB_NAME_MAX];
        snprintf(name, sizeof(name), "%.*s", (int)(slash - output), output);
        struct pb_pipeline *pl = pb_engine_pipeline(e, pipeline);
        struct pb_output *o = pl ? pb_pipeline_output(pl, name) : NULL;
        if (!o || !pb_output_sub_exists(o, slash + 1))
            return "its sub-output (a webhook endpoint) was deleted";
    }
    return NULL;
}

static int replay_one(struct pb_engine *e, int64_t id, struct pb_api_resp *r)
{
    struct pb_err err = {0};
    json_t *dead = pb_admin_dead_letter_json(e->store, id, &err);
    if (!dead)
        return pb_admin_store_error(r, &err);
    const char *why =
        pb_admin_replay_refusal(e, json_string_value(json_object_get(dead, "pipeline")),
                                json_string_value(json_object_get(dead, "output")));
    if (why) {
        char msg[256];
        snprintf(msg, sizeof(msg), "cannot replay dead letter %lld: %s", (long long)id, why);
        json_decref(dead);
        return reply_error(r, 409, msg);
    }
    json_decref(dead);
    struct pb_op op = {.kind = PB_OP_REPLAY};
    op.u.replay.delivery_id = id;
    op.u.replay.now = pb_now_ms();
    int rc = pb_store_exec(e->store, &op);
    if (rc == PB_ENOTFOUND) {
        reply_error(r, 404, "no such dead letter");
        return 0;
    }
    if (rc) {
        reply_error(r, 503, pb_strerror(rc));
        return 0;
    }
    /* The output, a sub-output ("out/sub") or the route stage pages it in. */
    if (!pb_engine_store_gained(e, op.u.replay.pipeline, op.u.replay.output, 1)) {
        PB_WARN("replayed a dead letter of an output no longer configured pipeline=%s output=%s "
                "delivery_id=%lld",
                op.u.replay.pipeline, op.u.replay.output, (long long)id);
    }
    PB_INFO("dead letter replayed delivery_id=%lld new_delivery_id=%lld", (long long)id,
            (long long)op.u.replay.new_delivery_id);
    reply(r, 200,
          json_pack("{s:i, s:I}", "replayed", 1, "delivery_id",
                    (json_int_t)op.u.replay.new_delivery_id));
    return 0;
}

/* Replay the dead letters of one output or sub-output, a batch per
 * transaction, growing its backlog gauge by exactly what was replayed into
 * it (re-reading gauges from a store snapshot would race with results). */
static int replay_into(struct pb_engine *e, struct pb_output *o, int64_t *total)
{
    struct pb_op op = {.kind = PB_OP_REPLAY_ALL};
    do {
        op.u.replay_all = (struct pb_op_replay_all){
            .pipeline = o->pl->name,
            .output = o->is_virtual ? o->parent->name : o->name,
            .sub = o->sub,
            .now = pb_now_ms(),
        };
        int rc = pb_store_exec(e->store, &op);
        if (rc)
            return rc;
        if (op.u.replay_all.count) {
            atomic_fetch_add(&o->backlog, op.u.replay_all.count);
            pb_dispatcher_notify_store(e->disp, o);
            *total += op.u.replay_all.count;
        }
    } while (op.u.replay_all.more);
    return 0;
}

struct collect {
    struct pb_output **v;
    size_t n, cap;
    const char *output;
    bool oom;
};

static void collect_cb(struct pb_output *o, void *arg)
{
    struct collect *c = arg;
    if (c->output && strcmp(o->name, c->output) != 0 &&
        !(o->is_virtual && strcmp(o->parent->name, c->output) == 0))
        return;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 16;
        struct pb_output **v = realloc(c->v, cap * sizeof(*v));
        if (!v) {
            c->oom = true;
            return;
        }
        c->v = v;
        c->cap = cap;
    }
    c->v[c->n++] = o;
}

static int replay_all(struct pb_engine *e, struct pb_http_request *c, struct pb_api_resp *r)
{
    const char *pipeline = pb_admin_arg(c, "pipeline");
    struct collect col = {.output = pb_admin_arg(c, "output")};
    int64_t total = 0;
    int rc = 0;
    /* The outputs first (under their locks), the replays after (outside them). */
    for (size_t i = 0; i < e->cfg->npipelines; i++)
        if (!pipeline || strcmp(e->cfg->pipelines[i].name, pipeline) == 0)
            pb_pipeline_each_output(&e->cfg->pipelines[i], collect_cb, &col);
    if (col.oom)
        rc = PB_ENOMEM;
    for (size_t i = 0; rc == 0 && i < col.n; i++)
        rc = replay_into(e, col.v[i], &total);
    free(col.v);
    if (rc)
        return reply_error(r, 503, pb_strerror(rc));
    PB_INFO("dead letters replayed count=%lld pipeline=%s output=%s", (long long)total,
            pipeline ? pipeline : "*", col.output ? col.output : "*");
    return reply(r, 200, json_pack("{s:I}", "replayed", (json_int_t)total));
}

static int purge_one(struct pb_engine *e, int64_t id, struct pb_api_resp *r)
{
    struct pb_op op = {.kind = PB_OP_PURGE};
    op.u.purge.delivery_id = id;
    int rc = pb_store_exec(e->store, &op);
    if (rc == PB_ENOTFOUND) {
        reply_error(r, 404, "no such dead letter");
        return 0;
    }
    if (rc) {
        reply_error(r, 503, pb_strerror(rc));
        return 0;
    }
    PB_INFO("dead letter purged delivery_id=%lld", (long long)id);
    r->status = 204;
    r->body = NULL;
    return 0;
}

int pb_admin_reply(struct pb_api_resp *r, int status, json_t *body)
{
    return reply(r, status, body);
}

int pb_admin_error(struct pb_api_resp *r, int status, const char *msg)
{
    return reply_error(r, status, msg);
}

/* A route an output plugin serves (/api/<admin_path>...): hand the request
 * to it with every output of that plugin. True when one took it. */
static bool plugin_route(struct pb_engine *e, struct pb_http_request *c, const char *path)
{
    for (size_t k = 0; pb_output_plugins[k]; k++) {
        const struct pb_output_plugin *p = pb_output_plugins[k];
        if (!p->admin || !p->admin_path)
            continue;
        size_t n = strlen(p->admin_path);
        if (strncmp(path + 5, p->admin_path, n) != 0 || (path[5 + n] && path[5 + n] != '/'))
            continue;
        size_t count = 0;
        for (size_t i = 0; i < e->cfg->npipelines; i++)
            for (size_t j = 0; j < e->cfg->pipelines[i].nouts; j++)
                count += e->cfg->pipelines[i].outs[j].plugin == p;
        struct pb_output **outs = calloc(count ? count : 1, sizeof(*outs));
        if (!outs) {
            pb_http_respond_json(c, 500, "{\"error\":\"out of memory\"}");
            return true;
        }
        count = 0;
        for (size_t i = 0; i < e->cfg->npipelines; i++)
            for (size_t j = 0; j < e->cfg->pipelines[i].nouts; j++)
                if (e->cfg->pipelines[i].outs[j].plugin == p)
                    outs[count++] = &e->cfg->pipelines[i].outs[j];
        p->admin(outs, count, c);
        free(outs);
        return true;
    }
    return false;
}

struct raw_body {
    char *data, *content_type;
    size_t len;
    bool routed, found, oom;
};

static int raw_cb(void *arg, const struct pb_message_row *m)
{
    struct raw_body *b = arg;
    const void *src = b->routed && m->routed ? m->routed_body : m->body;
    size_t len = b->routed && m->routed ? m->routed_len : m->len;
    b->found = true;
    b->data = malloc(len ? len : 1);
    b->content_type = m->content_type ? strdup(m->content_type) : NULL;
    if (!b->data || (m->content_type && !b->content_type)) {
        b->oom = true;
        return 1;
    }
    memcpy(b->data, src, len);
    b->len = len;
    return 1; /* nothing more is needed */
}

/* GET /api/messages/{id}/body[?routed=true]: the body as received (or as
 * the route stage made it), with the message's content type. */
static bool message_body(struct pb_engine *e, struct pb_http_request *c, const char *path,
                         struct pb_api_resp *r)
{
    char id[PB_MSG_ID_MAX];
    size_t n = strlen(path) - 14 - 5;
    if (strcmp(pb_http_request_method(c), "GET") != 0) {
        reply_error(r, 405, "method not allowed");
        return false;
    }
    if (n == 0 || n >= sizeof(id) || memchr(path + 14, '/', n)) {
        reply_error(r, 404, "no such message");
        return false;
    }
    memcpy(id, path + 14, n);
    id[n] = 0;
    const char *routed = pb_admin_arg(c, "routed");
    struct raw_body b = {.routed = routed && strcmp(routed, "true") == 0};
    struct pb_read_cbs cb = {.arg = &b, .message = raw_cb};
    struct pb_err err = {0};
    int rc = pb_store_read_message(e->store, id, &cb, &err);
    if (!b.found || b.oom) {
        free(b.data);
        free(b.content_type);
        if (b.oom)
            reply_error(r, 500, "out of memory");
        else
            pb_admin_store_error(r, rc ? &err : &(struct pb_err){.code = PB_ENOTFOUND});
        return false;
    }
    struct pb_http_header h[] = {{"Cache-Control", "no-store"},
                                 {"X-Content-Type-Options", "nosniff"}};
    pb_http_respond(c, 200, b.content_type ? b.content_type : "application/json", b.data, b.len, h,
                    2);
    free(b.data);
    free(b.content_type);
    return true;
}

static int handle(struct pb_engine *e, struct pb_http_request *c, const char *method,
                  const char *path, const char *body, size_t len, struct pb_api_resp *r)
{
    struct pb_err err = {0};
    bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0,
         del = strcmp(method, "DELETE") == 0;
    const char *rest;

    if (strcmp(path, "/api/inputs") == 0) {
        if (!get)
            return reply_error(r, 405, "method not allowed");
        return get_inputs(e, r);
    }
    if (strcmp(path, "/api/nodes") == 0) {
        if (!get)
            return reply_error(r, 405, "method not allowed");
        return pb__admin_get_nodes(e, r);
    }
    if (strcmp(path, "/api/pipelines") == 0) {
        if (!get)
            return reply_error(r, 405, "method not allowed");
        return get_pipelines(e, c, r);
    }
    if (strcmp(path, "/api/messages") == 0) {
        if (!get)
            return reply_error(r, 405, "method not allowed");
        return pb_admin_search(e, c, r);
    }
    if (strcmp(path, "/api/metrics/history") == 0) {
        if (!get)
            return reply_error(r, 405, "method not allowed");
        return pb_admin_history(e, c, r);
    }
    if (strncmp(path, "/api/messages/", 14) == 0) {
        if (!get)
            return reply_error(r, 405, "method not allowed");
        const char *id = path + 14;
        if (!*id || strlen(id) >= PB_MSG_ID_MAX || strchr(id, '/'))
            return reply_error(r, 404, "no such message");
        json_t *m = pb_admin_message_json(e->store, id, &err);
        if (!m)
            return pb_admin_store_error(r, &err);
        return reply(r, 200, m);
    }
    if (strcmp(path, "/api/dead-letters") == 0) {
        if (!get)
            return reply_error(r, 405, "method not allowed");
        return pb_admin_dead_list(e, c, r);
    }
    if (strcmp(path, "/api/dead-letters/purge") == 0) {
        if (!post)
            return reply_error(r, 405, "method not allowed");
        return pb_admin_dead_bulk(e, c, true, r);
    }
    if (strcmp(path, "/api/dead-letters/replay") == 0) {
        if (!post)
            return reply_error(r, 405, "method not allowed");
        /* By output alone: the store picks them, a batch per transaction.
         * With other filters: the set the list shows, by id. */
        if (pb_admin_arg(c, "since") || pb_admin_arg(c, "until") || pb_admin_arg(c, "error") ||
            pb_admin_arg(c, "status"))
            return pb_admin_dead_bulk(e, c, false, r);
        return replay_all(e, c, r);
    }
    if (strncmp(path, "/api/dead-letters/", 18) == 0) {
        rest = path + 18;
        const char *slash = strchr(rest, '/');
        size_t idlen = slash ? (size_t)(slash - rest) : strlen(rest);
        int64_t id = parse_id(rest, idlen);
        if (id < 1)
            return reply_error(r, 404, "no such dead letter");
        if (slash) {
            bool edit = strcmp(slash, "/edit-and-replay") == 0;
            if (strcmp(slash, "/replay") != 0 && !edit)
                return reply_error(r, 404, "no such endpoint");
            if (!post)
                return reply_error(r, 405, "method not allowed");
            return edit ? pb_admin_edit_replay(e, id, c, r) : replay_one(e, id, r);
        }
        if (del)
            return purge_one(e, id, r);
        if (!get)
            return reply_error(r, 405, "method not allowed");
        json_t *d = pb_admin_dead_letter_json(e->store, id, &err);
        if (!d)
            return pb_admin_store_error(r, &err);
        return reply(r, 200, d);
    }
    return reply_error(r, 404, "no such endpoint");
}

bool pb_admin_handle(struct pb_engine *e, struct pb_http_request *c, const char *method,
                     const char *path, const char *body, size_t len, struct pb_api_resp *r)
{
    /* The live tail answers when events come, from its own thread. */
    if (strcmp(path, "/api/tail") == 0)
        return pb_admin_tail(e, c, r);
    /* A body as stored, byte for byte (the editor starts from it). */
    size_t pl = strlen(path);
    if (strncmp(path, "/api/messages/", 14) == 0 && pl > 19 && strcmp(path + pl - 5, "/body") == 0)
        return message_body(e, c, path, r);
    if (strncmp(path, "/api/", 5) == 0 && plugin_route(e, c, path))
        return true;
    (void)handle(e, c, method, path, body, len, r);
    return false;
}
