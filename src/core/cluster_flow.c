/* cluster_flow.c - circuit breakers and partners' holds shared by the nodes
 * of a cluster (state on PostgreSQL). A node whose breaker of an output
 * opens, reopens or closes, or that is told by the partner to wait
 * (429 or 503 with Retry-After, a rate-limit reset) for a second or more,
 * writes it to the store (key-value scope "flow", key "<pipeline>/<output>",
 * endpoints "<pipeline>/<output>/<id>"); the others are notified
 * (cluster_kv.c) and follow it with pb_flow_shared (flow.c): what the
 * tolerance is, and why, is said there and in docs/configuration.md.
 *
 * Threads: pb__cluster_flow_publish on the dispatcher's (the write is not
 * waited for); pb__cluster_flow_changed on the pb-kv thread (a read of the
 * store), which posts what it read to the dispatcher's. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/dispatch_int.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_time.h"

#define FLOW_SCOPE "flow"
#define KEY_MAX (3 * PB_NAME_MAX + 8)

struct publish {
    struct pb_op op;
    struct pb_kv_put kv;
    char key[KEY_MAX];
    char value[256];
};

static void publish_done(struct pb_op *op, void *arg)
{
    struct publish *p = arg;
    if (op->status)
        PB_DEBUG("flow state not shared key=%s error=%s", p->key, pb_strerror(op->status));
    free(p);
}

static const char *state_name(int state)
{
    return state == PB_BREAKER_OPEN ? "open" : state == PB_BREAKER_CLOSED ? "closed" : NULL;
}

void pb__cluster_flow_publish(struct pb_dispatcher *d, struct pb_output *o,
                              const struct pb_flow_share *sh)
{
    struct publish *p = calloc(1, sizeof(*p));
    if (!p)
        return;
    int kn = snprintf(p->key, sizeof(p->key), "%s/%s", o->pl->name, o->name);
    const char *st = state_name(sh->state);
    int vn = snprintf(p->value, sizeof(p->value),
                      "{\"state\":%s%s%s,\"open_until\":%" PRId64 ",\"hold_until\":%" PRId64
                      ",\"at\":%" PRId64 "}",
                      st ? "\"" : "", st ? st : "null", st ? "\"" : "", sh->open_until,
                      sh->hold_until, pb_now_ms());
    if (kn < 0 || (size_t)kn >= sizeof(p->key) || vn < 0 || (size_t)vn >= sizeof(p->value)) {
        free(p);
        return;
    }
    p->kv = (struct pb_kv_put){
        .scope = FLOW_SCOPE, .key = p->key, .value = p->value, .len = (size_t)vn};
    p->op = (struct pb_op){.kind = PB_OP_KV, .done_cb = publish_done, .arg = p};
    p->op.u.kv = (struct pb_op_kv){.n = 1, .kv = &p->kv, .now = pb_now_ms()};
    PB_DEBUG("flow state shared pipeline=%s output=%s state=%s hold_until=%" PRId64, o->pl->name,
             o->name, st ? st : "-", sh->hold_until);
    if (pb_store_submit(d->e->store, &p->op) != 0)
        free(p);
}

/* ---- another node's news --------------------------------------------------------------- */

struct flow_post {
    struct pb__disp_post post;
    struct pb_flow_share sh;
    char key[KEY_MAX];
};

/* Dispatcher thread: "<pipeline>/<output>[/<endpoint>]". */
static struct pb_output *find(struct pb_dispatcher *d, const char *key)
{
    char pl_name[KEY_MAX];
    snprintf(pl_name, sizeof(pl_name), "%s", key);
    char *slash = strchr(pl_name, '/');
    if (!slash)
        return NULL;
    *slash = 0;
    char *out_name = slash + 1, *sub = strchr(out_name, '/');
    if (sub)
        *sub++ = 0;
    struct pb_pipeline *pl = pb_engine_pipeline(d->e, pl_name);
    struct pb_output *o = pl ? pb_pipeline_output(pl, out_name) : NULL;
    if (!o || !sub)
        return o;
    for (size_t i = 0; i < o->nvouts; i++)
        if (!o->vouts[i]->gone && strcmp(o->vouts[i]->sub, sub) == 0)
            return o->vouts[i];
    return NULL;
}

static void flow_post_cb(struct pb_dispatcher *d, struct pb__disp_post *post, int64_t now)
{
    struct flow_post *fp = (struct flow_post *)post;
    struct pb_output *o = now >= 0 ? find(d, fp->key) : NULL;
    if (o && !o->is_route) {
        now = pb_now_ms();
        unsigned ev = pb_flow_shared(&o->flow, &fp->sh, now);
        pb__disp_flow_publish(o, now);
        if (ev & PB_FLOW_OPENED)
            PB_WARN("circuit breaker opened on another node pipeline=%s output=%s "
                    "probe_after_ms=%" PRId64 " (deliveries wait here too)",
                    o->pl->name, o->name, o->flow.open_until - now);
        if (ev & PB_FLOW_CLOSED)
            PB_INFO("circuit breaker closed on another node pipeline=%s output=%s", o->pl->name,
                    o->name);
        if (fp->sh.hold_until > now && o->flow.hold_until == fp->sh.hold_until)
            PB_INFO("partner's hold taken from another node pipeline=%s output=%s hold_ms=%" PRId64,
                    o->pl->name, o->name, fp->sh.hold_until - now);
    }
    free(fp);
}

struct read_one {
    const char *key;
    json_t *v;
};

static int read_cb(void *arg, const char *key, const void *value, size_t len)
{
    struct read_one *r = arg;
    if (strcmp(key, r->key) != 0 || len > 1024)
        return 0;
    r->v = json_loadb(value, len, 0, NULL);
    return 1;
}

void pb__cluster_flow_changed(struct pb_engine *e, const char *key)
{
    if (!key || strlen(key) >= KEY_MAX || !e->disp)
        return;
    struct read_one r = {.key = key};
    struct pb_err err = {0};
    if (pb_store_kv_load(e->store, FLOW_SCOPE, read_cb, &r, &err) != 0) {
        PB_WARN("flow state shared by another node not read key=%s error=\"%s\"", key, err.msg);
        return;
    }
    if (!json_is_object(r.v)) {
        json_decref(r.v);
        return;
    }
    const char *st = json_string_value(json_object_get(r.v, "state"));
    struct flow_post *fp = calloc(1, sizeof(*fp));
    if (fp) {
        fp->sh.state = !st                         ? -1
                       : strcmp(st, "open") == 0   ? PB_BREAKER_OPEN
                       : strcmp(st, "closed") == 0 ? PB_BREAKER_CLOSED
                                                   : -1;
        fp->sh.open_until = json_integer_value(json_object_get(r.v, "open_until"));
        fp->sh.hold_until = json_integer_value(json_object_get(r.v, "hold_until"));
        snprintf(fp->key, sizeof(fp->key), "%s", key);
        fp->post.fn = flow_post_cb;
        pb__disp_post(e->disp, &fp->post);
    }
    json_decref(r.v);
}
