/* input.c - inputs submit, the core commits, the callback acks.
 *
 * An input hands the core a batch of items and, optionally, checkpoints
 * with pb_input_submit (any thread). The batch becomes one SUBMIT op: its
 * messages, their deliveries (to the route stage, or to every output) and
 * the checkpoints go into one transaction of the store's group commit. Once
 * that transaction is durable (or has failed) the store's syncer runs
 * submit_done_cb, which hands the new deliveries to the dispatcher and
 * posts the input's callback to the input's loop: the input learns the
 * outcome exactly once, on its own thread, and only then acks its source.
 * If submit itself fails, nothing was queued and the callback never runs.
 *
 * Every input runs on a loop: the engine's shared input loop (thread
 * pb-inputs), or one of its own on a thread of its own when the plugin asks
 * (PB_INPUT_OWN_THREAD: client libraries that block). start, stop, pause,
 * resume and the callbacks all run there, so a plugin needs no locks.
 *
 * Back-pressure: submit refuses (PB_EFULL) when the store's ingest queue or
 * the bytes submitted and not yet committed are at their bound; the input
 * is told to pause, and a timer on its loop resumes it once there is room
 * again. Checkpoints are read from the store once, before start, and kept
 * in memory as they are committed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/engine.h"
#include "core/dispatch_int.h"
#include "core/input.h"
#include "core/trace.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_loop.h"

#define CKPT_MAX 8
#define CKPT_NAME_MAX 128
#define RESUME_CHECK_MS 50
#define START_RETRY_MIN_MS 1000
#define GATE_CHECK_MS 250 /* a singleton's check of its hold */
#define START_RETRY_MAX_MS 30000

const char *const pb_reject_names[PB_REJECT_COUNT] = {
    "bad_json", "too_large", "overload", "store", "method", "shutdown", "unauthorized",
};

const char *const pb_verify_reason_names[PB_VERIFY_REASON_COUNT] = {
    "missing", "malformed", "signature", "timestamp", "claims", "credentials",
};

const char *pb__input_state_name(enum pb_input_state s)
{
    switch (s) {
    case PB_INPUT_STARTING:
        return "starting";
    case PB_INPUT_CONNECTED:
        return "connected";
    case PB_INPUT_RECONNECTING:
        return "reconnecting";
    case PB_INPUT_FINISHED:
        return "finished";
    case PB_INPUT_STOPPED:
        return "stopped";
    case PB_INPUT_STANDBY:
        return "standby";
    }
    return "unknown";
}

/* ---- load --------------------------------------------------------------------------------- */

static int add_route_cb(const struct pb_input_env *env, const struct pb_http_route *r,
                        struct pb_err *err)
{
    struct pb_input *in = env->core;
    struct pb_http_route *rs = realloc(in->routes, (in->nroutes + 1) * sizeof(*rs));
    if (!rs)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    in->routes = rs;
    rs[in->nroutes++] = *r;
    return 0;
}

struct pb_input *pb__input_create(struct pb_pipeline *pl);

/* JSON string text of s (quotes included) appended at *p; the caller sized
 * the buffer at 6 bytes per input byte + 3. */
static char *json_str(char *p, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    *p++ = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            *p++ = '\\';
            *p++ = (char)c;
        } else if (c < 0x20) {
            *p++ = '\\';
            *p++ = 'u';
            *p++ = '0';
            *p++ = '0';
            *p++ = hex[c >> 4];
            *p++ = hex[c & 15];
        } else {
            *p++ = (char)c;
        }
    }
    *p++ = '"';
    return p;
}

/* The fixed start of every $meta of this input. */
static int make_meta_prefix(struct pb_input *in)
{
    size_t need = 64 + 6 * (strlen(in->plugin->name) + strlen(in->pl->name));
    char *b = malloc(need), *p = b;
    if (!b)
        return PB_ENOMEM;
    p += sprintf(p, "{\"input\":");
    p = json_str(p, in->plugin->name);
    p += sprintf(p, ",\"pipeline\":");
    p = json_str(p, in->pl->name);
    p += sprintf(p, ",\"received_at\":");
    *p = 0;
    in->meta_prefix = b;
    in->meta_prefix_len = (size_t)(p - b);
    return 0;
}

int pb__input_load(struct pb_pipeline *pl, const struct pb_node *n, bool once,
                   const struct pb_strlist *allow, struct pb_err *err)
{
    const struct pb_node *name, *body;
    if (n->type != PB_NODE_MAP || n->n != 1)
        return pb_err_at(err, PB_ECONFIG, n->file, n->line, n->col,
                         "input of pipeline \"%s\" must be a map with exactly one key naming a "
                         "plugin",
                         pl->name);
    name = n->keys[0];
    body = n->vals[0];
    const struct pb_input_plugin *plugin = pb_registry_input(name->str);
    if (!plugin) {
        char avail[256] = "";
        for (size_t i = 0; pb_input_plugins[i]; i++) {
            size_t used = strlen(avail);
            snprintf(avail + used, sizeof(avail) - used, "%s%s", i ? ", " : "",
                     pb_input_plugins[i]->name);
        }
        return pb_err_at(err, PB_ECONFIG, name->file, name->line, name->col,
                         "unknown input \"%s\" (available: %s)", name->str, avail);
    }
    struct pb_input *in = calloc(1, sizeof(*in));
    if (!in)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    pl->in = in;
    in->pl = pl;
    in->plugin = plugin;
    pthread_mutex_init(&in->lock, NULL);
    atomic_init(&in->lag, -1);
    atomic_init(&in->lag_bytes, -1);
    in->ctx = calloc(1, plugin->ctx_size ? plugin->ctx_size : 1);
    if (!in->ctx)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    int rc = pb_conf_decode(body, plugin->fields, in->ctx, err);
    if (rc)
        return rc;
    in->allow = pb_allowlist_create(allow, err);
    if (!in->allow) {
        if (!err->file)
            err->file = name->file, err->line = name->line, err->col = name->col;
        return err->code ? err->code : PB_ENOMEM;
    }
    in->env = (struct pb_input_env){
        .pipeline = pl->name,
        .plugin = plugin->name,
        .once = once,
        .add_route = add_route_cb,
        .core = in,
        .allow = in->allow,
    };
    rc = plugin->init(in->ctx, &in->env, err);
    if (rc) {
        if (!err->file)
            err->file = name->file, err->line = name->line, err->col = name->col;
        return rc;
    }
    in->ctx_ready = true;
    in->raw = in->env.raw;
    in->idem_window_ms = in->env.idempotency_window_ms;
    if (once && !(plugin->flags & PB_INPUT_CAN_FINISH))
        return pb_err_at(err, PB_ECONFIG, name->file, name->line, name->col,
                         "pipeline \"%s\": input %s never finishes, so `run --once` would never "
                         "exit",
                         pl->name, plugin->name);
    return make_meta_prefix(in) ? pb_err_set(err, PB_ENOMEM, "out of memory") : 0;
}

/* Forget the checkpoints as last read (the array is kept). */
static void ckpts_clear(struct pb_input *in)
{
    for (size_t i = 0; i < in->nckpts; i++) {
        free(in->ckpts[i].name);
        free(in->ckpts[i].value);
    }
    in->nckpts = 0;
}

void pb__input_free(struct pb_input *in)
{
    if (!in)
        return;
    if (in->ctx) {
        if (in->plugin->destroy)
            in->plugin->destroy(in->ctx);
        pb_conf_free(in->plugin->fields, in->ctx);
        free(in->ctx);
    }
    ckpts_clear(in);
    free(in->ckpts);
    pb_allowlist_destroy(in->allow);
    free(in->routes);
    free(in->meta_prefix);
    free(in->detail);
    free(in->position);
    pthread_mutex_destroy(&in->lock);
    free(in);
}

/* ---- submit ------------------------------------------------------------------------------- */

struct submit_op {
    struct pb_op op;
    struct pb_loop_node node; /* the callback's way to the input's loop */
    struct pb_input *in;
    pb_submit_cb cb;
    void *arg;
    size_t n;
    int64_t bytes;
    struct pb_op_ingest *items;
    struct pb_msg **msgs;
    int64_t *ids; /* n * pipeline's ningest */
    struct pb_kv_put *kv;
    size_t nkv;
    struct pb_item_result *res;
    char scope[PB_NAME_MAX + 8];
    /* Copies of idempotency keys and checkpoints follow the struct. */
};

static void submit_op_free(struct submit_op *so)
{
    for (size_t i = 0; i < so->n; i++)
        pb_msg_unref(so->msgs ? so->msgs[i] : NULL);
    free(so->items);
    free(so->msgs);
    free(so->ids);
    free(so->res);
    free(so->kv);
    free(so);
}

/* Loop thread: remember what was committed. */
static void ckpt_set(struct pb_input *in, const char *name, const void *value, size_t len)
{
    struct pb_input_ckpt *c = NULL;
    for (size_t i = 0; i < in->nckpts; i++)
        if (strcmp(in->ckpts[i].name, name) == 0)
            c = &in->ckpts[i];
    void *v = malloc(len ? len : 1);
    if (!v)
        return; /* keeps the older value: a restart reads the committed one */
    memcpy(v, value, len);
    if (!c) {
        struct pb_input_ckpt *cs = realloc(in->ckpts, (in->nckpts + 1) * sizeof(*cs));
        char *nm = strdup(name);
        if (!cs || !nm) {
            if (cs)
                in->ckpts = cs;
            free(nm);
            free(v);
            return;
        }
        in->ckpts = cs;
        c = &cs[in->nckpts++];
        c->name = nm;
        c->value = NULL;
    }
    free(c->value);
    c->value = v;
    c->len = len;
}

static void callback_cb(void *arg, int status)
{
    struct submit_op *so = arg;
    struct pb_input *in = so->in;
    (void)status; /* cancelled: the loop is going away; the callback runs all the same */
    if (so->op.status == 0)
        for (size_t i = 0; i < so->nkv; i++)
            ckpt_set(in, so->kv[i].key, so->kv[i].value, so->kv[i].len);
    so->cb(so->arg, so->op.status, so->op.status == 0 ? so->res : NULL,
           so->op.status == 0 ? so->n : 0);
    atomic_fetch_sub(&in->outstanding_bytes, so->bytes);
    atomic_fetch_sub(&in->outstanding, 1);
    submit_op_free(so);
}

/* Tests only: PATCHBAY_TEST_CRASH_BEFORE_ACK=N ends the process right after
 * the N-th submit is durable, before its callback: the window in which a
 * source has been committed but not acknowledged. */
static _Atomic long crash_countdown = -1;

void pb__input_test_hooks(void)
{
    const char *v = getenv("PATCHBAY_TEST_CRASH_BEFORE_ACK");
    atomic_store(&crash_countdown, v ? strtol(v, NULL, 10) : -1);
}

/* Syncer (or writer) thread: the batch is durable, or failed. */
static void submit_done_cb(struct pb_op *op, void *arg)
{
    struct submit_op *so = arg;
    struct pb_input *in = so->in;
    struct pb_pipeline *pl = in->pl;
    if (op->status == 0 && atomic_load(&crash_countdown) > 0 &&
        atomic_fetch_sub(&crash_countdown, 1) == 1) {
        PB_WARN("PATCHBAY_TEST_CRASH_BEFORE_ACK: exiting between commit and acknowledgement");
        _exit(137);
    }
    if (op->status == 0) {
        for (size_t i = 0; i < so->n; i++) {
            struct pb_op_ingest *it = &so->items[i];
            struct pb_item_result *r = &so->res[i];
            if (it->duplicate) {
                r->status = PB_ITEM_DUPLICATE;
                snprintf(r->msg_id, sizeof(r->msg_id), "%s", it->dup_msg_id);
                atomic_fetch_add(&pl->duplicates, 1);
                continue;
            }
            snprintf(r->msg_id, sizeof(r->msg_id), "%s", it->msg_id);
            so->msgs[i]->seq = it->msg_seq;
            if (it->dead_reason) {
                r->status = PB_ITEM_DEAD;
                atomic_fetch_add(&pl->dead_on_arrival, 1);
                continue;
            }
            r->status = PB_ITEM_STORED;
            atomic_fetch_add(&pl->accepted, 1);
            pb_dispatcher_post_new(in->e->disp, pl, so->msgs[i], it->delivery_ids, it->unleased);
        }
    } else {
        for (size_t i = 0; i < so->n; i++)
            atomic_fetch_add(&pl->rejected[PB_REJECT_STORE], 1);
    }
    if (pb_loop_post_node(in->loop, &so->node, callback_cb, so) != 0) {
        /* The input's loop is gone (shutdown past its timeout): what was
         * committed stays, unacknowledged; the source sends it again and
         * its idempotency key drops the repeat. */
        atomic_fetch_sub(&in->outstanding_bytes, so->bytes);
        atomic_fetch_sub(&in->outstanding, 1);
        submit_op_free(so);
    }
}

static bool room(const struct pb_input *in)
{
    const struct pb_config *c = in->e->cfg;
    return pb_store_queue_depth(in->e->store) < (size_t)c->limits.ingest_queue &&
           atomic_load(&in->outstanding_bytes) < c->limits.max_inflight_bytes;
}

static void resume_check_cb(struct pb_loop_timer *t, void *arg);

/* Any thread: the input hit a bound; tell it to pause, on its loop. */
static void pause_post_cb(void *arg, int status)
{
    struct pb_input *in = arg;
    if (status != PB_LOOP_RUN || in->paused || atomic_load(&in->stopping))
        return;
    in->paused = true;
    if (in->plugin->pause)
        in->plugin->pause(in->ctx);
    pb_loop_timer_start(in->timer, RESUME_CHECK_MS);
}

static void resume_check_cb(struct pb_loop_timer *t, void *arg)
{
    struct pb_input *in = arg;
    if (!in->started) {
        /* start failed before: try again (see start_on_loop) */
        return;
    }
    if (!in->paused || atomic_load(&in->stopping))
        return;
    /* Resume once below half of each bound, so it does not flap. */
    const struct pb_config *c = in->e->cfg;
    if (pb_store_queue_depth(in->e->store) * 2 < (size_t)c->limits.ingest_queue &&
        atomic_load(&in->outstanding_bytes) * 2 < c->limits.max_inflight_bytes) {
        in->paused = false;
        if (!in->gated && in->plugin->resume)
            in->plugin->resume(in->ctx);
        return;
    }
    pb_loop_timer_start(t, RESUME_CHECK_MS);
}

static bool meta_ok(const char *m, size_t len)
{
    while (len && (m[0] == ' ' || m[0] == '\n' || m[0] == '\t' || m[0] == '\r'))
        m++, len--;
    while (len &&
           (m[len - 1] == ' ' || m[len - 1] == '\n' || m[len - 1] == '\t' || m[len - 1] == '\r'))
        len--;
    return len >= 2 && m[0] == '{' && m[len - 1] == '}';
}

/* $meta: the input's fixed prefix, the receipt time, the trace context
 * (the one the item came with, or a new trace: trace.c), then the item's
 * own members. */
static int set_meta(struct pb_input *in, struct pb_msg *m, const struct pb_item *it)
{
    char num[24];
    int nl = snprintf(num, sizeof(num), "%lld", (long long)m->received_at);
    const char *own = it->meta;
    size_t ol = own ? it->meta_len : 0;
    char tp[PB_TRACEPARENT_LEN + 1], mtp[PB_TRACEPARENT_LEN + 1];
    char mts[PB_TRACESTATE_MAX + 1] = "";
    const char *ts = pb_trace_state_ok(it->tracestate) ? it->tracestate : NULL;
    int found = 0;
    if (!pb_trace_parse(it->traceparent, tp) || !ts)
        found = pb_trace_from_item_meta(own, ol, mtp, mts);
    if (!pb_trace_parse(it->traceparent, tp)) {
        if (found & 1)
            memcpy(tp, mtp, sizeof(tp));
        else
            pb_trace_take(NULL, tp);
    }
    if (!ts && (found & 2))
        ts = mts;
    char trace[PB_TRACEPARENT_LEN + PB_TRACESTATE_MAX + 48];
    int tl = snprintf(trace, sizeof(trace), ",\"traceparent\":\"%s\"%s%s%s", tp,
                      ts ? ",\"tracestate\":\"" : "", ts ? ts : "", ts ? "\"" : "");
    while (ol && own[0] != '{')
        own++, ol--;
    while (ol && own[ol - 1] != '}')
        ol--;
    /* "{...}" -> ",..." after the prefix; "{}" -> "}" */
    bool empty = ol <= 2;
    if (!empty) {
        const char *p = own + 1;
        while (p < own + ol - 1 && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r'))
            p++;
        empty = p == own + ol - 1;
    }
    size_t len = in->meta_prefix_len + (size_t)nl + (size_t)tl + (empty ? 1 : ol);
    char *b = malloc(len + 1);
    if (!b)
        return PB_ENOMEM;
    char *p = b;
    memcpy(p, in->meta_prefix, in->meta_prefix_len);
    p += in->meta_prefix_len;
    memcpy(p, num, (size_t)nl);
    p += nl;
    memcpy(p, trace, (size_t)tl);
    p += tl;
    if (empty) {
        *p++ = '}';
    } else {
        *p++ = ',';
        memcpy(p, own + 1, ol - 1);
        p += ol - 1;
    }
    *p = 0;
    free(m->meta);
    m->meta = b;
    m->meta_len = len;
    return 0;
}

int pb_input_submit(struct pb_input *in, const struct pb_item *items, size_t n,
                    const struct pb_checkpoint *ckpt, size_t nckpt, pb_submit_cb cb, void *arg)
{
    struct pb_pipeline *pl = in->pl;
    int64_t bytes = 0;
    size_t ckbytes = 0;

    if (!cb || (n == 0 && nckpt == 0) || n > PB_SUBMIT_MAX || nckpt > CKPT_MAX ||
        (nckpt && !ckpt) || (n && !items))
        return PB_EINVAL;
    for (size_t i = 0; i < n; i++) {
        const struct pb_item *it = &items[i];
        if ((it->len && !it->body) || (it->meta && !meta_ok(it->meta, it->meta_len)))
            return PB_EINVAL;
        if (it->key && (!*it->key || strlen(it->key) > PB_ITEM_KEY_MAX))
            return PB_EINVAL;
        if (it->key)
            ckbytes += strlen(it->key) + 1;
        if (it->dead_reason)
            ckbytes += strlen(it->dead_reason) + 1;
        bytes += (int64_t)it->len;
    }
    for (size_t i = 0; i < nckpt; i++) {
        if (!ckpt[i].name || strlen(ckpt[i].name) >= CKPT_NAME_MAX ||
            (ckpt[i].len && !ckpt[i].value))
            return PB_EINVAL;
        ckbytes += strlen(ckpt[i].name) + 1 + ckpt[i].len;
    }
    /* Until the plugin's stop has run, what it fetched may still be
     * committed: it cannot give it back to its source. */
    if (atomic_load(&in->stopped) || !in->e)
        return PB_ESHUTDOWN;
    if (!pb_input_may_fetch(in))
        return PB_EDENIED;
    if (!room(in)) {
        pb_loop_post(in->loop, pause_post_cb, in);
        return PB_EFULL;
    }

    struct submit_op *so = calloc(1, sizeof(*so) + ckbytes);
    if (!so)
        return PB_ENOMEM;
    so->in = in;
    so->cb = cb;
    so->arg = arg;
    so->n = n;
    so->bytes = bytes;
    so->items = calloc(n ? n : 1, sizeof(*so->items));
    so->msgs = calloc(n ? n : 1, sizeof(*so->msgs));
    so->res = calloc(n ? n : 1, sizeof(*so->res));
    so->ids = calloc((n ? n : 1) * (pl->ningest ? pl->ningest : 1), sizeof(*so->ids));
    so->kv = nckpt ? calloc(nckpt, sizeof(*so->kv)) : NULL;
    if (!so->items || !so->msgs || !so->res || !so->ids || (nckpt && !so->kv))
        goto nomem;
    int64_t now = pb_now_ms();
    /* An output that cannot take more into memory gets its deliveries unleased. */
    uint64_t unleased = 0;
    for (size_t i = 0; i < pl->ningest && i < 64; i++)
        if (pb__disp_spilled(pl->ingest_outs[i]))
            unleased |= (uint64_t)1 << i;
    int64_t lease = pb_store_epoch(in->e->store);
    for (size_t i = 0; i < n; i++) {
        const struct pb_item *it = &items[i];
        struct pb_msg *m = pb_msg_create(it->body, it->len, it->content_type);
        if (!m)
            goto nomem;
        so->msgs[i] = m;
        m->received_at = now;
        pb_msg_new_id(m->id, now);
        if (set_meta(in, m, it))
            goto nomem;
        int64_t window = it->key_window_ms > 0 ? it->key_window_ms : in->idem_window_ms;
        so->items[i] = (struct pb_op_ingest){
            .pipeline = pl->name,
            .msg_id = m->id,
            .body = m->body,
            .len = m->len,
            .content_type = m->content_type,
            .meta = m->meta,
            .meta_len = m->meta_len,
            .received_at = now,
            .idem_key = it->key && window > 0 ? it->key : NULL,
            .idem_expires_at = now + window,
            .noutputs = pl->ningest,
            .outputs = pl->ingest_names,
            .first_due_at = now,
            .dead_reason = it->dead_reason,
            .lease = lease,
            .unleased = unleased,
            .delivery_ids = so->ids + i * pl->ningest,
        };
    }
    /* Idempotency keys, dead reasons, checkpoint names and values are
     * copied behind the struct: the caller's are borrowed only until submit
     * returns. */
    char *p = (char *)(so + 1);
    for (size_t i = 0; i < n; i++) {
        if (so->items[i].dead_reason) {
            size_t rl = strlen(so->items[i].dead_reason) + 1;
            memcpy(p, so->items[i].dead_reason, rl);
            so->items[i].dead_reason = p;
            p += rl;
        }
        if (!so->items[i].idem_key)
            continue;
        size_t kl = strlen(so->items[i].idem_key) + 1;
        memcpy(p, so->items[i].idem_key, kl);
        so->items[i].idem_key = p;
        p += kl;
    }
    snprintf(so->scope, sizeof(so->scope), "input/%s", pl->name);
    for (size_t i = 0; i < nckpt; i++) {
        size_t nl = strlen(ckpt[i].name) + 1;
        memcpy(p, ckpt[i].name, nl);
        so->kv[i].key = p;
        p += nl;
        if (ckpt[i].len)
            memcpy(p, ckpt[i].value, ckpt[i].len);
        so->kv[i].value = p;
        so->kv[i].len = ckpt[i].len;
        so->kv[i].scope = so->scope;
        p += ckpt[i].len;
    }
    so->nkv = nckpt;
    so->op.kind = PB_OP_SUBMIT;
    so->op.done_cb = submit_done_cb;
    so->op.arg = so;
    /* A singleton's batch and cursor commit only while this node holds it. */
    so->op.u.submit = (struct pb_op_submit){.n = n,
                                            .items = so->items,
                                            .nkv = so->nkv,
                                            .kv = so->kv,
                                            .now = now,
                                            .hold = in->hold[0] ? in->hold : NULL,
                                            .hold_epoch = lease};
    atomic_fetch_add(&in->outstanding, 1);
    atomic_fetch_add(&in->outstanding_bytes, bytes);
    int rc = pb_store_submit(in->e->store, &so->op);
    if (rc) {
        atomic_fetch_sub(&in->outstanding, 1);
        atomic_fetch_sub(&in->outstanding_bytes, bytes);
        submit_op_free(so);
        if (rc == PB_EFULL)
            pb_loop_post(in->loop, pause_post_cb, in);
        return rc;
    }
    return 0;
nomem:
    submit_op_free(so);
    return PB_ENOMEM;
}

int pb_input_checkpoint(struct pb_input *in, const char *name, const void **value, size_t *len)
{
    for (size_t i = 0; i < in->nckpts; i++) {
        if (strcmp(in->ckpts[i].name, name) == 0) {
            *value = in->ckpts[i].value;
            *len = in->ckpts[i].len;
            return 0;
        }
    }
    return PB_ENOTFOUND;
}

struct pb_loop *pb_input_loop(struct pb_input *in)
{
    return in->loop;
}

const char *pb_input_pipeline(const struct pb_input *in)
{
    return in->pl->name;
}

/* ---- state and counters --------------------------------------------------------------- */

static void set_text(struct pb_input *in, char **slot, const char *text)
{
    char *copy = text ? strdup(text) : NULL;
    pthread_mutex_lock(&in->lock);
    free(*slot);
    *slot = copy;
    pthread_mutex_unlock(&in->lock);
}

void pb_input_set_state(struct pb_input *in, enum pb_input_state state, const char *detail)
{
    int old = atomic_exchange(&in->state, (int)state);
    set_text(in, &in->detail, detail);
    if (old != (int)state) {
        char safe[256];
        if (state == PB_INPUT_RECONNECTING)
            PB_WARN("input reconnecting pipeline=%s input=%s error=\"%s\"", in->pl->name,
                    in->plugin->name, pb_log_value(detail ? detail : "", safe, sizeof(safe)));
        else if (state == PB_INPUT_CONNECTED && old == PB_INPUT_RECONNECTING)
            PB_INFO("input connected again pipeline=%s input=%s", in->pl->name, in->plugin->name);
    }
}

void pb_input_set_position(struct pb_input *in, const char *position)
{
    set_text(in, &in->position, position);
}

void pb_input_set_lag(struct pb_input *in, int64_t lag)
{
    atomic_store(&in->lag, lag);
}

void pb_input_set_lag_bytes(struct pb_input *in, int64_t bytes)
{
    atomic_store(&in->lag_bytes, bytes);
}

void pb_input_count_received(struct pb_input *in, uint64_t n)
{
    atomic_fetch_add(&in->pl->received, n);
}

void pb_input_count_reject(struct pb_input *in, enum pb_reject why)
{
    if (why < PB_REJECT_COUNT)
        atomic_fetch_add(&in->pl->rejected[why], 1);
}

void pb_input_count_verify_failed(struct pb_input *in, enum pb_verify_reason why)
{
    if (why < PB_VERIFY_REASON_COUNT)
        atomic_fetch_add(&in->pl->verify_failed[why], 1);
}

void pb_input_count_nacked(struct pb_input *in, uint64_t n)
{
    atomic_fetch_add(&in->nacked, n);
}

void pb_input_observe_latency(struct pb_input *in, int64_t us)
{
    pb_hist_observe(&in->pl->ingest_latency, us);
}

void pb_input_set_progress(struct pb_input *in, const struct pb_input_progress *p)
{
    pthread_mutex_lock(&in->lock);
    in->progress = *p;
    in->has_progress = true;
    pthread_mutex_unlock(&in->lock);
}

void pb_input_finished(struct pb_input *in)
{
    atomic_store(&in->finished, true);
    pb_input_set_state(in, PB_INPUT_FINISHED, NULL);
}

/* ---- life cycle --------------------------------------------------------------------------- */

static int ckpt_load_cb(void *arg, const char *key, const void *value, size_t len)
{
    ckpt_set(arg, key, value, len);
    return 0;
}

bool pb_input_may_fetch(struct pb_input *in)
{
    if (!in->hold[0])
        return true;
    struct pb_store *st = in->e ? in->e->store : NULL;
    return st && pb_store_holds(st, in->hold) && pb_store_lease_valid(st);
}

static void start_on_loop(struct pb_input *in)
{
    struct pb_err err = {0};
    if (atomic_load(&in->stopping))
        return;
    if (in->gated) {
        pb_loop_timer_start(in->timer, GATE_CHECK_MS); /* the gate resumes it */
        return;
    }
    int rc = in->plugin->start ? in->plugin->start(in->ctx, in, &err) : 0;
    if (rc == 0) {
        /* Connected, unless the plugin said otherwise; a failed start
         * before this one left the core's own "reconnecting". */
        bool retried = in->retry_ms != 0;
        in->started = true;
        in->retry_ms = 0;
        if (atomic_load(&in->state) == PB_INPUT_STARTING || retried)
            pb_input_set_state(in, PB_INPUT_CONNECTED, NULL);
        return;
    }
    in->retry_ms = in->retry_ms ? in->retry_ms * 2 : START_RETRY_MIN_MS;
    if (in->retry_ms > START_RETRY_MAX_MS)
        in->retry_ms = START_RETRY_MAX_MS;
    char msg[PB_ERR_MSG_MAX + 64];
    snprintf(msg, sizeof(msg), "%s (starting again in %lld ms)",
             err.msg[0] ? err.msg : pb_strerror(rc), (long long)in->retry_ms);
    pb_input_set_state(in, PB_INPUT_RECONNECTING, msg);
    pb_loop_timer_start(in->timer, in->retry_ms);
}

static void timer_cb(struct pb_loop_timer *t, void *arg)
{
    struct pb_input *in = arg;
    if (!in->started)
        start_on_loop(in);
    else
        resume_check_cb(t, arg);
}

/* A singleton of a cluster: started once this node holds it, with the
 * checkpoints as the last holder committed them; paused whenever the node
 * is unsure it still holds it (its lease ran short), resumed once sure.
 * The hold moves only when a node leaves or is presumed dead, and a node
 * presumed dead restarts in place (cluster.c), so a started input never has
 * to give its hold back while running. */
static void gate_cb(struct pb_loop_timer *t, void *arg)
{
    struct pb_input *in = arg;
    if (atomic_load(&in->stopping))
        return;
    bool ok = pb_input_may_fetch(in);
    if (!in->taken) {
        if (ok) {
            struct pb_err err = {0};
            char scope[PB_NAME_MAX + 8];
            snprintf(scope, sizeof(scope), "input/%s", in->pl->name);
            ckpts_clear(in);
            if (pb_store_kv_load(in->e->store, scope, ckpt_load_cb, in, &err) != 0) {
                pb_input_set_state(in, PB_INPUT_RECONNECTING, err.msg);
            } else {
                in->taken = true;
                PB_INFO("singleton input runs on this node pipeline=%s node=%s", in->pl->name,
                        pb_store_node_name(in->e->store));
                pb_input_set_state(in, PB_INPUT_STARTING, NULL);
                start_on_loop(in);
            }
        }
    } else if (!ok && !in->gated) {
        in->gated = true;
        if (in->started && !in->paused && in->plugin->pause)
            in->plugin->pause(in->ctx);
        PB_WARN("singleton input paused: this node is not sure it still holds it pipeline=%s",
                in->pl->name);
        pb_input_set_state(in, PB_INPUT_STANDBY,
                           "paused: this node's lease in the cluster ran short");
    } else if (ok && in->gated) {
        in->gated = false;
        PB_INFO("singleton input resumed pipeline=%s", in->pl->name);
        if (in->started) {
            if (!in->paused && in->plugin->resume)
                in->plugin->resume(in->ctx);
            pb_input_set_state(in, PB_INPUT_CONNECTED, NULL);
        }
    }
    pb_loop_timer_start(t, GATE_CHECK_MS);
}

static void start_post_cb(void *arg, int status)
{
    struct pb_input *in = arg;
    if (status != PB_LOOP_RUN)
        return;
    in->timer = pb_loop_timer_create(in->loop, timer_cb, in);
    if (in->hold[0] && in->timer)
        in->gate_timer = pb_loop_timer_create(in->loop, gate_cb, in);
    if (!in->timer || (in->hold[0] && !in->gate_timer)) {
        pb_input_set_state(in, PB_INPUT_RECONNECTING, "out of memory");
        return;
    }
    if (in->hold[0])
        gate_cb(in->gate_timer, in);
    else
        start_on_loop(in);
}

static void *input_thread(void *arg)
{
    struct pb_input *in = arg;
    pb_loop_run(in->loop);
    return NULL;
}

int pb__input_start(struct pb_input *in, struct pb_engine *e, struct pb_loop *loop,
                    struct pb_err *err)
{
    in->e = e;
    pb__input_test_hooks();
    char scope[PB_NAME_MAX + 8];
    snprintf(scope, sizeof(scope), "input/%s", in->pl->name);
    if ((in->plugin->flags & PB_INPUT_SINGLETON) && pb_store_clustered(e->store)) {
        /* Its checkpoints are read when the hold is had (gate_cb). */
        snprintf(in->hold, sizeof(in->hold), "%s", scope);
        int rc = pb_store_hold_want(e->store, in->hold);
        if (rc)
            return pb_err_set(err, rc, "pipeline %s: cannot ask the cluster for its input",
                              in->pl->name);
        pb_input_set_state(in, PB_INPUT_STANDBY, "another node of the cluster runs it");
    } else {
        int rc = pb_store_kv_load(e->store, scope, ckpt_load_cb, in, err);
        if (rc)
            return rc;
    }
    if (in->plugin->flags & PB_INPUT_OWN_THREAD) {
        in->loop = pb_loop_create(err);
        if (!in->loop)
            return err->code ? err->code : PB_ENOMEM;
        in->own_loop = true;
        if (pthread_create(&in->thread, NULL, input_thread, in) != 0)
            return pb_err_set(err, PB_ENOMEM, "cannot start a thread for the input of %s",
                              in->pl->name);
        char name[16];
        snprintf(name, sizeof(name), "pb-in-%.9s", in->pl->name);
        pthread_setname_np(in->thread, name);
        in->thread_running = true;
    } else {
        in->loop = loop;
    }
    if (pb_loop_post(in->loop, start_post_cb, in) != 0)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    return 0;
}

struct stop_wait {
    struct pb_input *in;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
};

static void stop_post_cb(void *arg, int status)
{
    struct stop_wait *w = arg;
    struct pb_input *in = w->in;
    if (status == PB_LOOP_RUN) {
        if (in->started && in->plugin->stop)
            in->plugin->stop(in->ctx);
        pb_loop_timer_destroy(in->timer);
        in->timer = NULL;
        pb_loop_timer_destroy(in->gate_timer);
        in->gate_timer = NULL;
    }
    atomic_store(&in->stopped, true);
    pthread_mutex_lock(&w->lock);
    w->done = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

void pb__input_stop(struct pb_input *in, int64_t timeout_ms)
{
    if (!in || !in->loop)
        return;
    atomic_store(&in->stopping, true);
    struct stop_wait w = {.in = in};
    pthread_mutex_init(&w.lock, NULL);
    pthread_cond_init(&w.cond, NULL);
    if (pb_loop_post(in->loop, stop_post_cb, &w) != 0) {
        atomic_store(&in->stopped, true);
    } else {
        pthread_mutex_lock(&w.lock);
        while (!w.done)
            pthread_cond_wait(&w.cond, &w.lock);
        pthread_mutex_unlock(&w.lock);
    }
    pthread_cond_destroy(&w.cond);
    pthread_mutex_destroy(&w.lock);
    /* What was submitted gets its callback (and its ack) before we go on. */
    int64_t deadline = pb_mono_us() + timeout_ms * 1000;
    while (atomic_load(&in->outstanding) > 0 && pb_mono_us() < deadline) {
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (atomic_load(&in->outstanding) > 0)
        PB_WARN("input stopped with batches not yet acknowledged pipeline=%s count=%lld (their "
                "sources send them again; their idempotency keys drop the repeats)",
                in->pl->name, (long long)atomic_load(&in->outstanding));
    pb_input_set_state(in, PB_INPUT_STOPPED, NULL);
    if (in->own_loop) {
        pb_loop_close(in->loop);
        pb_loop_stop(in->loop);
        if (in->thread_running)
            pthread_join(in->thread, NULL);
        in->thread_running = false;
        pb_loop_destroy(in->loop);
        in->loop = NULL;
    }
}
