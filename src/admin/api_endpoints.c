/* api_endpoints.c - managed webhook endpoints through the admin API.
 *
 *   GET    /api/endpoints?pipeline=&output=
 *   POST   /api/endpoints                    {output, url, events?, description?, secret?,
 *                                             rate_limit?, pipeline?, id?}
 *   GET    /api/endpoints/{id}
 *   PATCH  /api/endpoints/{id}               {url?, events?, description?, rate_limit?}
 *   DELETE /api/endpoints/{id}
 *   GET    /api/endpoints/{id}/secret
 *   POST   /api/endpoints/{id}/rotate        {secret?}
 *   POST   /api/endpoints/{id}/disable | /enable
 *   POST   /api/endpoints/{id}/recover?since= re-send its failed deliveries since then
 *
 * Changes are committed through the store writer; the dispatcher then
 * reloads the endpoints. Secrets are shown only on creation, rotation and
 * GET .../secret. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <strings.h>

#include "admin/api.h"
#include "core/webhooks.h"
#include "patchbay/pb_log.h"

/* An endpoint record copied out of a store callback. */
struct rec_copy {
    bool found;
    char *id, *pipeline, *output, *url, *description, *events, *secrets, *rate_limit, *reason;
    bool disabled;
    int64_t failing_since, created_at, updated_at;
};

static char *dup0(const char *s)
{
    return s ? strdup(s) : NULL;
}

static int copy_cb(void *arg, const struct pb_endpoint_rec *r)
{
    struct rec_copy *c = arg;
    c->found = true;
    c->id = dup0(r->id);
    c->pipeline = dup0(r->pipeline);
    c->output = dup0(r->output);
    c->url = dup0(r->url);
    c->description = dup0(r->description);
    c->events = dup0(r->events);
    c->secrets = dup0(r->secrets);
    c->rate_limit = dup0(r->rate_limit);
    c->reason = dup0(r->disabled_reason);
    c->disabled = r->disabled;
    c->failing_since = r->failing_since;
    c->created_at = r->created_at;
    c->updated_at = r->updated_at;
    return 0;
}

static void rec_free(struct rec_copy *c)
{
    free(c->id);
    free(c->pipeline);
    free(c->output);
    free(c->url);
    free(c->description);
    free(c->events);
    free(c->secrets);
    free(c->rate_limit);
    free(c->reason);
    memset(c, 0, sizeof(*c));
}

static json_t *rec_json(const struct pb_endpoint_rec *r)
{
    json_t *events = json_loads(r->events ? r->events : "[]", 0, NULL);
    return json_pack("{s:s, s:s, s:s, s:s, s:s?, s:o, s:s?, s:b, s:b, s:s?, s:o?, s:I, s:I}", "id",
                     r->id, "pipeline", r->pipeline, "output", r->output, "url", r->url,
                     "description", r->description, "events", events ? events : json_array(),
                     "rate_limit", r->rate_limit, "static", 0, "disabled", r->disabled,
                     "disabled_reason", r->disabled_reason, "failing_since",
                     r->failing_since ? json_integer(r->failing_since) : NULL, "created_at",
                     (json_int_t)r->created_at, "updated_at", (json_int_t)r->updated_at);
}

static struct pb_endpoint_rec rec_view(const struct rec_copy *c)
{
    return (struct pb_endpoint_rec){
        .id = c->id,
        .pipeline = c->pipeline,
        .output = c->output,
        .url = c->url,
        .description = c->description,
        .events = c->events,
        .secrets = c->secrets,
        .rate_limit = c->rate_limit,
        .disabled = c->disabled,
        .disabled_reason = c->reason,
        .failing_since = c->failing_since,
        .created_at = c->created_at,
        .updated_at = c->updated_at,
    };
}

struct list_ctx {
    json_t *items;
    const char *pipeline, *output;
};

static int list_cb(void *arg, const struct pb_endpoint_rec *r)
{
    struct list_ctx *l = arg;
    if ((l->pipeline && strcmp(l->pipeline, r->pipeline) != 0) ||
        (l->output && strcmp(l->output, r->output) != 0))
        return 0;
    json_array_append_new(l->items, rec_json(r));
    return 0;
}

/* ---- static endpoints: the configuration's, with the state saved for them ---- */

struct static_ctx {
    json_t *saved; /* "pipeline/output/id" -> the saved state */
    json_t *items; /* list: every match; show: the one found */
    const char *pipeline, *output, *id;
    bool bad;
};

/* The key of a static endpoint's saved state in static_ctx.saved. */
#define STATE_KEY_MAX (2 * PB_NAME_MAX + PB_ENDPOINT_ID_MAX + 3)
static void state_key(char *key, const char *pipeline, const char *output, const char *id)
{
    snprintf(key, STATE_KEY_MAX, "%s/%s/%s", pipeline, output, id);
}

static int saved_cb(void *arg, const struct pb_endpoint_rec *r)
{
    struct static_ctx *sc = arg;
    char key[STATE_KEY_MAX];
    state_key(key, r->pipeline, r->output, r->id);
    json_t *st = json_pack("{s:s, s:b, s:s?, s:I, s:I}", "url", r->url, "disabled", r->disabled,
                           "disabled_reason", r->disabled_reason, "failing_since",
                           (json_int_t)r->failing_since, "updated_at", (json_int_t)r->updated_at);
    if (!st || json_object_set_new(sc->saved, key, st) != 0)
        sc->bad = true;
    return 0;
}

static void static_cb(void *arg, const struct pb_webhook_static_view *v)
{
    struct static_ctx *sc = arg;
    if ((sc->pipeline && strcmp(sc->pipeline, v->pipeline) != 0) ||
        (sc->output && strcmp(sc->output, v->output) != 0) ||
        (sc->id && strcmp(sc->id, v->id) != 0))
        return;
    char key[STATE_KEY_MAX];
    state_key(key, v->pipeline, v->output, v->id);
    json_t *st = json_object_get(sc->saved, key);
    /* A state saved under another url is not this endpoint's any more. */
    if (st && strcmp(json_string_value(json_object_get(st, "url")), v->url) != 0)
        st = NULL;
    json_t *events = json_array();
    for (size_t i = 0; events && i < v->nevents; i++)
        json_array_append_new(events, json_string(v->events[i]));
    int64_t failing = st ? json_integer_value(json_object_get(st, "failing_since")) : 0;
    json_t *item =
        json_pack("{s:s, s:s, s:s, s:s, s:s?, s:o, s:b, s:b, s:O?, s:o?, s:O?}", "id", v->id,
                  "pipeline", v->pipeline, "output", v->output, "url", v->url, "description",
                  v->description, "events", events ? events : json_array(), "static", 1, "disabled",
                  st && json_is_true(json_object_get(st, "disabled")), "disabled_reason",
                  st ? json_object_get(st, "disabled_reason") : NULL, "failing_since",
                  failing ? json_integer(failing) : NULL, "updated_at",
                  st ? json_object_get(st, "updated_at") : NULL);
    if (!item || json_array_append_new(sc->items, item) != 0)
        sc->bad = true;
}

/* Static endpoints matching pipeline/output/id (each may be NULL) into
 * items. 0, or an error already answered. */
static int static_items(struct pb_engine *e, struct static_ctx *sc, struct pb_api_resp *r)
{
    struct pb_err err = {0};
    sc->saved = json_object();
    if (!sc->saved)
        return pb_admin_error(r, 500, "out of memory");
    if (pb_store_static_states_load(e->store, saved_cb, sc, &err) != 0) {
        json_decref(sc->saved);
        return pb_admin_error(r, 500, err.msg);
    }
    pb_webhook_static_each(e, static_cb, sc);
    json_decref(sc->saved);
    if (sc->bad)
        return pb_admin_error(r, 500, "out of memory");
    return 0;
}

static const char *qarg(struct pb_http_request *c, const char *name)
{
    const char *v = pb_http_request_query(c, name);
    return v && *v ? v : NULL;
}

/* The webhook output an endpoint is for: by output name, and pipeline when
 * several pipelines have a webhook output of that name. */
static struct pb_output *find_webhook(struct pb_engine *e, const char *pipeline, const char *output,
                                      const char **why)
{
    struct pb_output *found = NULL;
    for (size_t i = 0; i < e->cfg->npipelines; i++) {
        struct pb_pipeline *pl = &e->cfg->pipelines[i];
        if (pipeline && strcmp(pl->name, pipeline) != 0)
            continue;
        struct pb_output *o = output ? pb_pipeline_output(pl, output) : NULL;
        if (!o || !pb_webhook_is(o))
            continue;
        if (found) {
            *why = "several pipelines have a webhook output of that name: give \"pipeline\"";
            return NULL;
        }
        found = o;
    }
    if (!found)
        *why = "no webhook output of that name (\"output\" names a webhook output)";
    else if (!pb_webhook_managed(found)) {
        *why = "that webhook output has managed: false";
        found = NULL;
    }
    return found;
}

/* events: array of valid patterns, serialized into *out. */
static const char *events_text(json_t *ev, char **out)
{
    if (!ev) {
        *out = strdup("[]");
        return *out ? NULL : "out of memory";
    }
    if (!json_is_array(ev) || json_array_size(ev) > 100)
        return "events must be an array of at most 100 event types";
    size_t i;
    json_t *it;
    json_array_foreach(ev, i, it)
    {
        if (!json_is_string(it) || !pb_webhook_pattern_ok(json_string_value(it)))
            return "events take exact types (order.created), prefixes (order.*) or *";
    }
    *out = json_dumps(ev, JSON_COMPACT);
    return *out ? NULL : "out of memory";
}

static const char *check_url(const char *url)
{
    if (!url || (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0))
        return "url must start with http:// or https://";
    if (strlen(url) > 2048)
        return "url is too long";
    return NULL;
}

static const char *check_rate(json_t *v, char **out)
{
    *out = NULL;
    if (!v || json_is_null(v))
        return NULL;
    struct pb_rate r;
    if (!json_is_string(v) || pb_parse_rate(json_string_value(v), &r) != 0)
        return "rate_limit is like 100/s, 10/m or 500/h";
    *out = strdup(json_string_value(v));
    return *out ? NULL : "out of memory";
}

static int exec_op(struct pb_engine *e, struct pb_op *op)
{
    int rc = pb_store_exec(e->store, op);
    if (rc == 0)
        pb_dispatcher_reload_endpoints(e->disp);
    return rc;
}

static int create(struct pb_engine *e, const char *body, size_t len, struct pb_api_resp *r)
{
    json_error_t jerr;
    json_t *in = json_loadb(body, len, 0, &jerr);
    if (!json_is_object(in)) {
        json_decref(in);
        return pb_admin_error(r, 400, "body must be a JSON object");
    }
    const char *why = NULL;
    char *events = NULL, *rate = NULL, *secrets = NULL;
    char id[PB_ENDPOINT_ID_MAX], secret[96];
    int status = 400;
    const char *url = json_string_value(json_object_get(in, "url"));
    const char *given_id = json_string_value(json_object_get(in, "id"));
    const char *given_secret = json_string_value(json_object_get(in, "secret"));
    struct pb_output *o = find_webhook(e, json_string_value(json_object_get(in, "pipeline")),
                                       json_string_value(json_object_get(in, "output")), &why);
    if (!o)
        goto out;
    if ((why = check_url(url)) || (why = events_text(json_object_get(in, "events"), &events)) ||
        (why = check_rate(json_object_get(in, "rate_limit"), &rate)))
        goto out;
    if (given_id) {
        size_t n = strlen(given_id);
        bool ok = n > 0 && n < sizeof(id);
        for (size_t i = 0; ok && i < n; i++)
            ok = strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
                        given_id[i]) != NULL;
        if (!ok) {
            why = "id may hold only letters, digits, - and _ (at most 63)";
            goto out;
        }
        snprintf(id, sizeof(id), "%s", given_id);
    } else {
        char tmp[40];
        pb_msg_new_id(tmp, pb_now_ms());
        snprintf(id, sizeof(id), "ep_%s", tmp + 4);
    }
    if (given_secret) {
        if (!pb_webhook_secret_ok(given_secret)) {
            why = "secret must be whsec_ and the base64 of 24 to 64 bytes";
            goto out;
        }
        snprintf(secret, sizeof(secret), "%s", given_secret);
    } else if (pb_webhook_new_secret(secret, sizeof(secret)) != 0) {
        why = "cannot generate a secret";
        status = 500;
        goto out;
    }
    json_t *sec = json_pack("[{s:s, s:n}]", "key", secret, "expires_at");
    secrets = sec ? json_dumps(sec, JSON_COMPACT) : NULL;
    json_decref(sec);
    if (!secrets) {
        why = "out of memory";
        status = 500;
        goto out;
    }
    int64_t now = pb_now_ms();
    struct pb_op op = {.kind = PB_OP_ENDPOINT_PUT};
    op.u.endpoint_put.create_only = true;
    op.u.endpoint_put.rec = (struct pb_endpoint_rec){
        .id = id,
        .pipeline = o->pl->name,
        .output = o->name,
        .url = url,
        .description = json_string_value(json_object_get(in, "description")),
        .events = events,
        .secrets = secrets,
        .rate_limit = rate,
        .created_at = now,
        .updated_at = now,
    };
    int rc = exec_op(e, &op);
    if (rc == PB_EEXISTS) {
        why = "an endpoint with that id exists";
        status = 409;
        goto out;
    }
    if (rc) {
        why = pb_strerror(rc);
        status = 503;
        goto out;
    }
    json_t *outj = rec_json(&op.u.endpoint_put.rec);
    json_object_set_new(outj, "secret", json_string(secret));
    PB_INFO("webhook endpoint created endpoint=%s pipeline=%s output=%s", id, o->pl->name, o->name);
    pb_admin_reply(r, 201, outj);
    why = NULL;
out:
    if (why)
        pb_admin_error(r, status, why);
    OPENSSL_cleanse(secret, sizeof(secret));
    free(events);
    free(rate);
    free(secrets);
    json_decref(in);
    return 0;
}

static int get_rec(struct pb_engine *e, const char *id, struct rec_copy *c, struct pb_api_resp *r)
{
    struct pb_err err = {0};
    int rc = pb_store_endpoint_get(e->store, id, copy_cb, c, &err);
    if (rc == PB_ENOTFOUND || (rc == 0 && !c->found)) {
        pb_admin_error(r, 404, "no such managed endpoint");
        return -1;
    }
    if (rc) {
        pb_admin_error(r, 500, err.msg[0] ? err.msg : pb_strerror(rc));
        return -1;
    }
    return 0;
}

static int put_rec(struct pb_engine *e, struct rec_copy *c, struct pb_api_resp *r, int ok_status,
                   json_t *extra)
{
    c->updated_at = pb_now_ms();
    struct pb_op op = {.kind = PB_OP_ENDPOINT_PUT};
    op.u.endpoint_put.rec = rec_view(c);
    int rc = exec_op(e, &op);
    if (rc) {
        json_decref(extra);
        return pb_admin_error(r, 503, pb_strerror(rc));
    }
    json_t *j = rec_json(&op.u.endpoint_put.rec);
    if (extra)
        json_object_update(j, extra);
    json_decref(extra);
    return pb_admin_reply(r, ok_status, j);
}

static int patch(struct pb_engine *e, const char *id, const char *body, size_t len,
                 struct pb_api_resp *r)
{
    struct rec_copy c = {0};
    json_t *in = json_loadb(body, len, 0, NULL);
    const char *why = NULL;
    if (!json_is_object(in)) {
        json_decref(in);
        return pb_admin_error(r, 400, "body must be a JSON object");
    }
    if (get_rec(e, id, &c, r) != 0)
        goto done;
    json_t *v;
    if ((v = json_object_get(in, "url"))) {
        if ((why = check_url(json_string_value(v))))
            goto done;
        free(c.url);
        c.url = strdup(json_string_value(v));
    }
    if ((v = json_object_get(in, "events"))) {
        char *ev = NULL;
        if ((why = events_text(v, &ev)))
            goto done;
        free(c.events);
        c.events = ev;
    }
    if ((v = json_object_get(in, "description"))) {
        free(c.description);
        c.description = dup0(json_string_value(v));
    }
    if ((v = json_object_get(in, "rate_limit"))) {
        char *rate = NULL;
        if ((why = check_rate(v, &rate)))
            goto done;
        free(c.rate_limit);
        c.rate_limit = rate;
    }
    if (!c.url || !c.events) {
        why = "out of memory";
        goto done;
    }
    put_rec(e, &c, r, 200, NULL);
done:
    if (why)
        pb_admin_error(r, 400, why);
    rec_free(&c);
    json_decref(in);
    return 0;
}

/* New secret first; the previous current one signs until now + overlap;
 * already expired ones are dropped. */
static int rotate(struct pb_engine *e, const char *id, const char *body, size_t len,
                  struct pb_api_resp *r)
{
    struct rec_copy c = {0};
    char secret[96];
    json_t *in = len ? json_loadb(body, len, 0, NULL) : json_object();
    const char *given = json_string_value(json_object_get(in, "secret"));
    if (given && !pb_webhook_secret_ok(given)) {
        json_decref(in);
        return pb_admin_error(r, 400, "secret must be whsec_ and the base64 of 24 to 64 bytes");
    }
    if (given)
        snprintf(secret, sizeof(secret), "%s", given);
    else if (pb_webhook_new_secret(secret, sizeof(secret)) != 0) {
        json_decref(in);
        return pb_admin_error(r, 500, "cannot generate a secret");
    }
    json_decref(in);
    if (get_rec(e, id, &c, r) != 0)
        return 0;
    struct pb_pipeline *pl = pb_engine_pipeline(e, c.pipeline);
    struct pb_output *o = pl ? pb_pipeline_output(pl, c.output) : NULL;
    int64_t overlap = o && pb_webhook_is(o) ? pb_webhook_rotation_overlap(o) : 24 * 3600 * 1000;
    int64_t now = pb_now_ms();
    json_t *old = json_loads(c.secrets, 0, NULL);
    json_t *next = json_pack("[{s:s, s:n}]", "key", secret, "expires_at");
    size_t i;
    json_t *it;
    json_array_foreach(old, i, it)
    {
        json_t *exp = json_object_get(it, "expires_at");
        int64_t at = json_is_integer(exp) ? json_integer_value(exp) : 0;
        if (at == 0)
            at = now + overlap; /* the current one: keeps signing during the overlap */
        if (at > now && json_array_size(next) < 8)
            json_array_append_new(next, json_pack("{s:O, s:I}", "key", json_object_get(it, "key"),
                                                  "expires_at", (json_int_t)at));
    }
    json_decref(old);
    free(c.secrets);
    c.secrets = json_dumps(next, JSON_COMPACT);
    json_decref(next);
    if (!c.secrets) {
        rec_free(&c);
        return pb_admin_error(r, 500, "out of memory");
    }
    PB_INFO("webhook endpoint secret rotated endpoint=%s overlap_ms=%lld", id, (long long)overlap);
    put_rec(e, &c, r, 200,
            json_pack("{s:s, s:I}", "secret", secret, "previous_expires_at",
                      (json_int_t)(now + overlap)));
    OPENSSL_cleanse(secret, sizeof(secret));
    rec_free(&c);
    return 0;
}

/* Disable or enable a static endpoint (one of the configuration): its state
 * is kept in the store by (pipeline, output, id). */
static int set_static_disabled(struct pb_engine *e, const char *id, bool disabled,
                               struct pb_api_resp *r)
{
    const char *pipeline = NULL, *output = NULL, *url = NULL;
    int n = pb_webhook_static_find(e, id, &pipeline, &output, &url);
    if (n == 0)
        return pb_admin_error(r, 404, "no such endpoint");
    if (n > 1)
        return pb_admin_error(r, 409,
                              "several static endpoints have this id: give them "
                              "distinct ids in the configuration");
    struct pb_op op = {.kind = PB_OP_ENDPOINT_STATE};
    op.u.endpoint_state = (struct pb_op_endpoint_state){
        .id = id,
        .disabled = disabled ? 1 : 0,
        .disabled_reason = disabled ? "disabled through the admin API" : NULL,
        .failing_since = disabled ? -1 : 0,
        .now = pb_now_ms(),
        .pipeline = pipeline,
        .output = output,
        .url = url,
    };
    int rc = exec_op(e, &op);
    if (rc)
        return pb_admin_error(r, 503, pb_strerror(rc));
    PB_INFO("webhook endpoint %s endpoint=%s (static)", disabled ? "disabled" : "enabled", id);
    pb_admin_reply(r, 200,
                   json_pack("{s:s, s:s, s:s, s:s, s:b, s:b}", "id", id, "pipeline", pipeline,
                             "output", output, "url", url, "static", 1, "disabled", disabled));
    return 0;
}

static int set_disabled(struct pb_engine *e, const char *id, bool disabled, struct pb_api_resp *r)
{
    struct pb_op op = {.kind = PB_OP_ENDPOINT_STATE};
    op.u.endpoint_state.id = id;
    op.u.endpoint_state.disabled = disabled ? 1 : 0;
    op.u.endpoint_state.disabled_reason = disabled ? "disabled through the admin API" : NULL;
    op.u.endpoint_state.failing_since = disabled ? -1 : 0;
    op.u.endpoint_state.now = pb_now_ms();
    int rc = exec_op(e, &op);
    if (rc == PB_ENOTFOUND)
        return set_static_disabled(e, id, disabled, r);
    if (rc)
        return pb_admin_error(r, 503, pb_strerror(rc));
    PB_INFO("webhook endpoint %s endpoint=%s", disabled ? "disabled" : "enabled", id);
    struct rec_copy c = {0};
    if (get_rec(e, id, &c, r) != 0)
        return 0;
    struct pb_endpoint_rec v = rec_view(&c);
    pb_admin_reply(r, 200, rec_json(&v));
    rec_free(&c);
    return 0;
}

/* "1700000000000" (unix ms) or "2026-11-27T08:00:00Z". */
static int parse_since(const char *s, int64_t *out)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (*s && !*end && v >= 0) {
        *out = v;
        return 0;
    }
    struct tm tm = {0};
    const char *rest = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!rest || (strcmp(rest, "Z") != 0 && strcmp(rest, "+00:00") != 0))
        return -1;
    *out = (int64_t)timegm(&tm) * 1000;
    return 0;
}

/* Replay the dead deliveries of an endpoint (static or managed). */
static int recover(struct pb_engine *e, struct pb_http_request *c, const char *id,
                   struct pb_api_resp *r)
{
    const char *since_s = qarg(c, "since");
    int64_t since = 0;
    if (!since_s || parse_since(since_s, &since) != 0)
        return pb_admin_error(r, 400,
                              "since is required: unix milliseconds or "
                              "YYYY-MM-DDTHH:MM:SSZ");
    /* Find the endpoint's output among every webhook output's endpoints. */
    char pipeline[PB_NAME_MAX] = "", output[2 * PB_NAME_MAX] = "";
    size_t idl = strlen(id);
    for (size_t i = 0; i < e->cfg->npipelines && !output[0]; i++) {
        struct pb_pipeline *pl = &e->cfg->pipelines[i];
        for (size_t j = 0; j < pl->nouts && !output[0]; j++) {
            struct pb_output *o = &pl->outs[j];
            pthread_mutex_lock(&o->vlock);
            for (size_t k = 0; k < o->nvouts; k++) {
                const char *n = o->vouts[k]->name;
                size_t nl = strlen(n);
                if (nl > idl && n[nl - idl - 1] == '/' && strcmp(n + nl - idl, id) == 0) {
                    snprintf(pipeline, sizeof(pipeline), "%s", pl->name);
                    snprintf(output, sizeof(output), "%s", n);
                    break;
                }
            }
            pthread_mutex_unlock(&o->vlock);
        }
    }
    if (!output[0])
        return pb_admin_error(r, 404, "no such endpoint");
    struct pb_op op = {.kind = PB_OP_REPLAY_ALL};
    op.u.replay_all.pipeline = pipeline;
    op.u.replay_all.output = output;
    op.u.replay_all.since = since;
    op.u.replay_all.now = pb_now_ms();
    int rc = pb_store_exec(e->store, &op);
    if (rc)
        return pb_admin_error(r, 503, pb_strerror(rc));
    struct pb_pipeline *pl = pb_engine_pipeline(e, pipeline);
    for (size_t j = 0; pl && j < pl->nouts; j++) {
        struct pb_output *o = &pl->outs[j];
        pthread_mutex_lock(&o->vlock);
        for (size_t k = 0; k < o->nvouts; k++)
            if (strcmp(o->vouts[k]->name, output) == 0) {
                atomic_fetch_add(&o->vouts[k]->backlog, op.u.replay_all.count);
                pb_dispatcher_notify_store(e->disp, o->vouts[k]);
            }
        pthread_mutex_unlock(&o->vlock);
    }
    PB_INFO("webhook endpoint recovered endpoint=%s since=%lld replayed=%lld", id, (long long)since,
            (long long)op.u.replay_all.count);
    return pb_admin_reply(r, 200,
                          json_pack("{s:I}", "replayed", (json_int_t)op.u.replay_all.count));
}

int pb_admin_endpoints(struct pb_engine *e, struct pb_http_request *c, const char *method,
                       const char *path, const char *body, size_t len, struct pb_api_resp *r)
{
    bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST"),
         del = !strcmp(method, "DELETE"), patchm = !strcmp(method, "PATCH");
    if (strcmp(path, "/api/endpoints") == 0) {
        if (post)
            return create(e, body, len, r);
        if (!get)
            return pb_admin_error(r, 405, "method not allowed");
        struct list_ctx l = {
            .items = json_array(), .pipeline = qarg(c, "pipeline"), .output = qarg(c, "output")};
        struct pb_err err = {0};
        if (pb_store_endpoints_load(e->store, list_cb, &l, &err) != 0) {
            json_decref(l.items);
            return pb_admin_error(r, 500, err.msg);
        }
        struct static_ctx sc = {.items = l.items, .pipeline = l.pipeline, .output = l.output};
        if (static_items(e, &sc, r) != 0) {
            json_decref(l.items);
            return 0;
        }
        return pb_admin_reply(r, 200, json_pack("{s:o}", "items", l.items));
    }
    char id[PB_ENDPOINT_ID_MAX];
    const char *rest = path + strlen("/api/endpoints/");
    const char *slash = strchr(rest, '/');
    size_t idl = slash ? (size_t)(slash - rest) : strlen(rest);
    if (idl == 0 || idl >= sizeof(id))
        return pb_admin_error(r, 404, "no such endpoint");
    memcpy(id, rest, idl);
    id[idl] = 0;
    const char *action = slash ? slash + 1 : "";
    if (!*action) {
        if (patchm)
            return patch(e, id, body, len, r);
        if (del) {
            struct pb_op op = {.kind = PB_OP_ENDPOINT_DELETE};
            op.u.endpoint_delete.id = id;
            op.u.endpoint_delete.now = pb_now_ms();
            int rc = exec_op(e, &op);
            if (rc == PB_ENOTFOUND)
                return pb_admin_error(r, 404, "no such managed endpoint");
            if (rc)
                return pb_admin_error(r, 503, pb_strerror(rc));
            PB_INFO("webhook endpoint deleted endpoint=%s pending_dead_lettered=%lld", id,
                    (long long)op.u.endpoint_delete.dead);
            r->status = 204;
            return 0;
        }
        if (!get)
            return pb_admin_error(r, 405, "method not allowed");
        struct rec_copy rc = {0};
        if (get_rec(e, id, &rc, r) != 0) {
            if (r->status != 404)
                return 0;
            /* Not managed: a static endpoint of that id? */
            free(r->body);
            r->body = NULL;
            struct static_ctx sc = {.items = json_array(), .id = id};
            if (!sc.items)
                return pb_admin_error(r, 500, "out of memory");
            if (static_items(e, &sc, r) == 0) {
                size_t n = json_array_size(sc.items);
                if (n == 1)
                    pb_admin_reply(r, 200, json_incref(json_array_get(sc.items, 0)));
                else if (n > 1)
                    pb_admin_error(r, 409,
                                   "several static endpoints have this id: give them "
                                   "distinct ids in the configuration");
                else
                    pb_admin_error(r, 404, "no such endpoint");
            }
            json_decref(sc.items);
            return 0;
        }
        struct pb_endpoint_rec v = rec_view(&rc);
        pb_admin_reply(r, 200, rec_json(&v));
        rec_free(&rc);
        return 0;
    }
    if (!strcmp(action, "secret") && get) {
        struct rec_copy rc = {0};
        if (get_rec(e, id, &rc, r) != 0)
            return 0;
        /* The current secret and those still signing during their overlap. */
        json_t *all = json_loads(rc.secrets, 0, NULL), *sec = json_array();
        int64_t now = pb_now_ms();
        size_t i;
        json_t *it;
        json_array_foreach(all, i, it)
        {
            json_t *exp = json_object_get(it, "expires_at");
            if (!json_is_integer(exp) || json_integer_value(exp) > now)
                json_array_append(sec, it);
        }
        json_decref(all);
        pb_admin_reply(r, 200,
                       json_pack("{s:s?, s:o}", "secret",
                                 json_string_value(json_object_get(json_array_get(sec, 0), "key")),
                                 "secrets", sec));
        rec_free(&rc);
        return 0;
    }
    if (!post)
        return pb_admin_error(r, 405, "method not allowed");
    if (!strcmp(action, "rotate"))
        return rotate(e, id, body, len, r);
    if (!strcmp(action, "disable"))
        return set_disabled(e, id, true, r);
    if (!strcmp(action, "enable"))
        return set_disabled(e, id, false, r);
    if (!strcmp(action, "recover"))
        return recover(e, c, id, r);
    return pb_admin_error(r, 404, "no such endpoint action");
}
