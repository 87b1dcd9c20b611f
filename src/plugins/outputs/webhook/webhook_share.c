/* webhook_share.c - webhook endpoints shared by the nodes of a cluster
 * (state on PostgreSQL). Every change of an endpoint (created, edited,
 * secret rotated, disabled or enabled through the admin API or by its
 * health, deleted) is written to the output's state in the store, which
 * tells the other nodes; here a node takes the record another wrote: its
 * endpoint table and the endpoint's sub-output (paused, rate limit) follow
 * within the time of a notification and one read, and its next signatures
 * use the secrets the record holds.
 *
 * Threads: kv_changed runs on the core's shared-state thread (it may block:
 * a deleted endpoint's sub-output is removed here, as the admin API does);
 * the endpoint table under c->lock. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "patchbay/pb_log.h"
#include "webhook_int.h"

#define RECORD_MAX (256 * 1024)

/* Under c->lock: a static endpoint's saved state, unless this node's is
 * newer or the record is of another url. */
static void take_static(struct wh_conf *c, const char *id, json_t *rec)
{
    struct wh_ep *ep = pb__wh_find(c, id);
    const char *url = json_string_value(json_object_get(rec, "url"));
    int64_t at = json_integer_value(json_object_get(rec, "updated_at"));
    if (!ep || !ep->is_static || !url || strcmp(url, ep->url) != 0 || at < ep->updated_at)
        return;
    bool was = ep->disabled;
    ep->disabled = json_is_true(json_object_get(rec, "disabled"));
    const char *why = json_string_value(json_object_get(rec, "disabled_reason"));
    free(ep->disabled_reason);
    ep->disabled_reason = why ? strdup(why) : NULL;
    ep->failing_since = json_integer_value(json_object_get(rec, "failing_since"));
    ep->updated_at = at;
    pb__wh_sync_sub(c, ep);
    if (was != ep->disabled)
        PB_INFO("webhook endpoint %s on another node pipeline=%s output=%s endpoint=%s (static)",
                ep->disabled ? "disabled" : "enabled", c->pipeline, c->output, id);
}

/* Under c->lock: a managed endpoint as another node wrote it. */
static void take_managed(struct wh_conf *c, const char *id, json_t *rec)
{
    struct wh_ep *cur = pb__wh_find(c, id);
    if (cur && cur->is_static)
        return; /* shadowed by a static one of the same id */
    struct wh_ep *ep = pb__wh_from_json(rec);
    if (!ep || strcmp(ep->id, id) != 0) {
        PB_WARN("webhook endpoint record unusable pipeline=%s output=%s endpoint=%s", c->pipeline,
                c->output, id);
        pb__wh_ep_free(ep);
        return;
    }
    const char *change =
        !cur                            ? "created"
        : cur->disabled != ep->disabled ? (ep->disabled ? "disabled" : "enabled")
        : cur->nsecrets != ep->nsecrets ||
                (ep->nsecrets && cur->nsecrets &&
                 memcmp(cur->secrets[0].key, ep->secrets[0].key, sizeof(ep->secrets[0].key)) != 0)
            ? "secret rotated"
            : "updated";
    pb__wh_sync_sub(c, ep);
    if (pb__wh_put(c, ep) != 0) {
        pb__wh_ep_free(ep);
        PB_ERROR("webhook endpoint not taken from another node: out of memory endpoint=%s", id);
        return;
    }
    PB_INFO("webhook endpoint %s on another node pipeline=%s output=%s endpoint=%s", change,
            c->pipeline, c->output, id);
}

static void take(struct wh_conf *c, const char *key, const void *value, size_t len)
{
    bool is_static = strncmp(key, "static/", 7) == 0;
    bool managed = strncmp(key, "endpoint/", 9) == 0;
    const char *id = key + (is_static ? 7 : 9);
    if ((!is_static && !managed) || !pb__wh_id_ok(id) || len > RECORD_MAX)
        return;
    if (!value) {
        if (!managed)
            return;
        /* Deleted: its pending deliveries went to the dead-letter queue on
         * the node that deleted it; what this node holds goes too. */
        pthread_mutex_lock(&c->lock);
        struct wh_ep *cur = pb__wh_find(c, id);
        bool drop = cur && !cur->is_static;
        if (drop)
            pb__wh_remove(c, id);
        pthread_mutex_unlock(&c->lock);
        int64_t dead = 0;
        if (drop && pb_output_sub_remove(c->out, id, "endpoint deleted", &dead) == 0)
            PB_INFO("webhook endpoint deleted on another node pipeline=%s output=%s endpoint=%s "
                    "dead=%lld",
                    c->pipeline, c->output, id, (long long)dead);
        return;
    }
    json_t *rec = json_loadb(value, len, 0, NULL);
    if (!json_is_object(rec)) {
        json_decref(rec);
        return;
    }
    pthread_mutex_lock(&c->lock);
    if (is_static)
        take_static(c, id, rec);
    else if (c->managed)
        take_managed(c, id, rec);
    pthread_mutex_unlock(&c->lock);
    json_decref(rec);
}

static int take_cb(void *arg, const char *key, const void *value, size_t len)
{
    take(arg, key, value, len);
    return 0;
}

void pb__wh_kv_changed(void *ctx, struct pb_output *out, const char *key, const void *value,
                       size_t len)
{
    struct wh_conf *c = ctx;
    (void)out;
    pthread_mutex_lock(&c->lock);
    bool started = c->started;
    pthread_mutex_unlock(&c->lock);
    if (!started)
        return;
    if (key)
        take(c, key, value, len);
    else if (pb_output_kv_get_all(c->out, take_cb, c) != 0)
        PB_WARN("webhook endpoints not read again pipeline=%s output=%s", c->pipeline, c->output);
}
