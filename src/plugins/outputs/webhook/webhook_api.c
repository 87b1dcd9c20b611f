/* webhook_api.c - webhook endpoints through the admin API (the webhook
 * output's admin routes, on a worker thread).
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
 *   POST   /api/endpoints/{id}/test          {event_type?, data?} send it a test event
 *
 * A change is committed to the store first (the output's state), then
 * applied to the output's endpoint table and its sub-output. Secrets are
 * shown only on creation, rotation and GET .../secret. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>

#include "patchbay/pb_log.h"
#include "patchbay/pb_server.h"
#include "patchbay/pb_time.h"
#include "webhook_int.h"

static void reply(struct pb_http_request *r, int status, json_t *body)
{
    char *t = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (status == 204)
        pb_http_respond(r, 204, NULL, "", 0, NULL, 0);
    else
        pb_http_respond_json(r, t ? status : 500, t ? t : "{\"error\":\"out of memory\"}");
    if (t)
        OPENSSL_cleanse(t, strlen(t)); /* may hold a secret */
    free(t);
}

static void error(struct pb_http_request *r, int status, const char *msg)
{
    reply(r, status, json_pack("{s:s}", "error", msg));
}

static const char *qarg(struct pb_http_request *r, const char *name)
{
    const char *v = pb_http_request_query(r, name);
    return v && *v ? v : NULL;
}

/* The webhook output an endpoint of that id belongs to (locked: the caller
 * unlocks), or NULL; with several, *dups is set. */
static struct wh_conf *find_ep(struct pb_output *const *outs, size_t n, const char *id,
                               struct wh_ep **ep, bool *dups)
{
    struct wh_conf *found = NULL;
    *ep = NULL;
    *dups = false;
    for (size_t i = 0; i < n; i++) {
        struct wh_conf *c = pb_output_ctx(outs[i]);
        pthread_mutex_lock(&c->lock);
        struct wh_ep *e = pb__wh_find(c, id);
        if (e && !found) {
            found = c;
            *ep = e;
            continue; /* keep it locked */
        }
        if (e)
            *dups = true;
        pthread_mutex_unlock(&c->lock);
    }
    return found;
}

/* The webhook output named by pipeline (optional) and output. */
static struct wh_conf *find_output(struct pb_output *const *outs, size_t n, const char *pipeline,
                                   const char *output, const char **why)
{
    struct wh_conf *found = NULL;
    for (size_t i = 0; i < n; i++) {
        struct wh_conf *c = pb_output_ctx(outs[i]);
        if (!output || strcmp(c->output, output) != 0 ||
            (pipeline && strcmp(c->pipeline, pipeline) != 0))
            continue;
        if (found) {
            *why = "several pipelines have a webhook output of that name: give \"pipeline\"";
            return NULL;
        }
        found = c;
    }
    if (!found)
        *why = "no webhook output of that name (\"output\" names a webhook output)";
    else if (!found->managed) {
        *why = "that webhook output has managed: false";
        found = NULL;
    }
    return found;
}

static const char *check_events(json_t *ev)
{
    if (!json_is_array(ev) || json_array_size(ev) > WH_MAX_EVENTS)
        return "events must be an array of at most 100 event types";
    size_t i;
    json_t *it;
    json_array_foreach(ev, i, it)
    {
        if (!json_is_string(it) || !pb__wh_pattern_ok(json_string_value(it)))
            return "events take exact types (order.created), prefixes (order.*) or *";
    }
    return NULL;
}

static int set_events_json(struct wh_ep *ep, json_t *ev)
{
    size_t n = json_array_size(ev);
    const char **items = calloc(n ? n : 1, sizeof(*items));
    if (!items)
        return PB_ENOMEM;
    for (size_t i = 0; i < n; i++)
        items[i] = json_string_value(json_array_get(ev, i));
    int rc = pb__wh_set_events(ep, items, n);
    free(items);
    return rc;
}

static const char *check_url(const char *url)
{
    if (!url || (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0))
        return "url must start with http:// or https://";
    if (strlen(url) > 2048)
        return "url is too long";
    return NULL;
}

static const char *check_rate(json_t *v, struct pb_rate *rate)
{
    *rate = (struct pb_rate){0};
    if (!v || json_is_null(v))
        return NULL;
    if (!json_is_string(v) || pb_parse_rate(json_string_value(v), rate) != 0)
        return "rate_limit is like 100/s, 10/m or 500/h";
    return NULL;
}

/* A copy of a managed endpoint, to change and save before it replaces the
 * table's. NULL on ENOMEM. */
static struct wh_ep *ep_copy(const struct wh_ep *src)
{
    json_t *rec = pb__wh_record(src);
    struct wh_ep *ep = rec ? pb__wh_from_json(rec) : NULL;
    json_decref(rec);
    return ep;
}

/* Save ep (waiting for the commit), then put it in the table and make the
 * sub-output follow. Takes ep. 0 or an error already answered. */
static int commit(struct wh_conf *c, struct wh_ep *ep, struct pb_http_request *r)
{
    ep->updated_at = pb_now_ms();
    int rc = pb__wh_save(c, ep, true);
    if (rc) {
        pb__wh_ep_free(ep);
        error(r, 503, pb_strerror(rc));
        return rc;
    }
    pthread_mutex_lock(&c->lock);
    pb__wh_sync_sub(c, ep);
    if (pb__wh_put(c, ep) != 0) {
        pthread_mutex_unlock(&c->lock);
        pb__wh_ep_free(ep);
        error(r, 500, "out of memory");
        return PB_ENOMEM;
    }
    pthread_mutex_unlock(&c->lock);
    return 0;
}

static void create(struct pb_output *const *outs, size_t n, struct pb_http_request *r)
{
    size_t len;
    const char *body = pb_http_request_body(r, &len);
    json_t *in = json_loadb(body, len, 0, NULL);
    const char *why = NULL;
    int status = 400;
    char secret[96] = "";
    struct wh_ep *ep = NULL;
    if (!json_is_object(in)) {
        why = "body must be a JSON object";
        goto out;
    }
    const char *url = json_string_value(json_object_get(in, "url"));
    const char *given_id = json_string_value(json_object_get(in, "id"));
    const char *given_secret = json_string_value(json_object_get(in, "secret"));
    json_t *events = json_object_get(in, "events");
    struct pb_rate rate;
    struct wh_conf *c = find_output(outs, n, json_string_value(json_object_get(in, "pipeline")),
                                    json_string_value(json_object_get(in, "output")), &why);
    if (!c || (why = check_url(url)) || (events && (why = check_events(events))) ||
        (why = check_rate(json_object_get(in, "rate_limit"), &rate)))
        goto out;
    char id[PB_SUB_ID_MAX];
    if (given_id) {
        if (!pb__wh_id_ok(given_id)) {
            why = "id may hold only letters, digits, - and _ (at most 63)";
            goto out;
        }
        snprintf(id, sizeof(id), "%s", given_id);
    } else {
        char ulid[32];
        pb_ulid(ulid, pb_now_ms());
        snprintf(id, sizeof(id), "ep_%s", ulid);
    }
    if (given_secret) {
        if (!pb__wh_secret_ok(given_secret)) {
            why = "secret must be whsec_ and the base64 of 24 to 64 bytes";
            goto out;
        }
        snprintf(secret, sizeof(secret), "%s", given_secret);
    } else if (pb__wh_new_secret(secret, sizeof(secret)) != 0) {
        why = "cannot generate a secret";
        status = 500;
        goto out;
    }
    struct wh_ep *existing = NULL;
    bool dups;
    struct wh_conf *owner = find_ep(outs, n, id, &existing, &dups);
    if (owner) {
        pthread_mutex_unlock(&owner->lock);
        why = "an endpoint with that id exists";
        status = 409;
        goto out;
    }
    int64_t now = pb_now_ms();
    /* events is borrowed from the request: the record takes a reference. */
    json_t *rec =
        json_pack("{s:s, s:s, s:s?, s:o, s:[{s:s, s:n}], s:s?, s:b, s:I, s:I}", "id", id, "url",
                  url, "description", json_string_value(json_object_get(in, "description")),
                  "events", events ? json_incref(events) : json_array(), "secrets", "key", secret,
                  "expires_at", "rate_limit", json_string_value(json_object_get(in, "rate_limit")),
                  "disabled", 0, "created_at", (json_int_t)now, "updated_at", (json_int_t)now);
    ep = rec ? pb__wh_from_json(rec) : NULL;
    json_decref(rec);
    if (!ep) {
        why = "out of memory";
        status = 500;
        goto out;
    }
    json_t *view = pb__wh_view(c, ep);
    if (commit(c, ep, r) != 0) {
        json_decref(view);
        goto out;
    }
    if (view)
        json_object_set_new(view, "secret", json_string(secret));
    PB_INFO("webhook endpoint created endpoint=%s pipeline=%s output=%s", id, c->pipeline,
            c->output);
    reply(r, 201, view);
out:
    if (why)
        error(r, status, why);
    OPENSSL_cleanse(secret, sizeof(secret));
    json_decref(in);
}

static void list(struct pb_output *const *outs, size_t n, struct pb_http_request *r)
{
    const char *pipeline = qarg(r, "pipeline"), *output = qarg(r, "output");
    json_t *items = json_array();
    for (size_t i = 0; items && i < n; i++) {
        struct wh_conf *c = pb_output_ctx(outs[i]);
        if ((pipeline && strcmp(pipeline, c->pipeline) != 0) ||
            (output && strcmp(output, c->output) != 0))
            continue;
        pthread_mutex_lock(&c->lock);
        /* Managed first (by id), then static, as they were listed before. */
        for (int pass = 0; pass < 2; pass++)
            for (size_t k = 0; k < c->neps; k++)
                if (c->eps[k]->is_static == (pass == 1))
                    json_array_append_new(items, pb__wh_view(c, c->eps[k]));
        pthread_mutex_unlock(&c->lock);
    }
    reply(r, 200, json_pack("{s:o}", "items", items ? items : json_array()));
}

static void patch(struct wh_conf *c, struct wh_ep *cur, struct pb_http_request *r)
{
    size_t len;
    const char *body = pb_http_request_body(r, &len);
    json_t *in = json_loadb(body, len, 0, NULL);
    struct wh_ep *ep = NULL;
    const char *why = NULL;
    json_t *v;
    if (!json_is_object(in)) {
        why = "body must be a JSON object";
        goto out;
    }
    ep = ep_copy(cur);
    pthread_mutex_unlock(&c->lock);
    cur = NULL;
    if (!ep) {
        why = "out of memory";
        goto out;
    }
    if ((v = json_object_get(in, "url"))) {
        if ((why = check_url(json_string_value(v))))
            goto out;
        free(ep->url);
        ep->url = strdup(json_string_value(v));
    }
    if ((v = json_object_get(in, "events"))) {
        if ((why = check_events(v)))
            goto out;
        if (set_events_json(ep, v) != 0) {
            why = "out of memory";
            goto out;
        }
    }
    if ((v = json_object_get(in, "description"))) {
        free(ep->description);
        ep->description = json_string_value(v) ? strdup(json_string_value(v)) : NULL;
    }
    if ((v = json_object_get(in, "rate_limit"))) {
        if ((why = check_rate(v, &ep->rate)))
            goto out;
        free(ep->rate_text);
        ep->rate_text = json_string_value(v) ? strdup(json_string_value(v)) : NULL;
    }
    if (!ep->url) {
        why = "out of memory";
        goto out;
    }
    json_t *view = pb__wh_view(c, ep);
    if (commit(c, ep, r) == 0)
        reply(r, 200, view);
    else
        json_decref(view);
    ep = NULL;
out:
    if (cur)
        pthread_mutex_unlock(&c->lock);
    if (why)
        error(r, 400, why);
    pb__wh_ep_free(ep);
    json_decref(in);
}

/* New secret first; the previous current one signs until now + overlap;
 * already expired ones are dropped. */
static void rotate(struct wh_conf *c, struct wh_ep *cur, struct pb_http_request *r)
{
    size_t len;
    const char *body = pb_http_request_body(r, &len);
    json_t *in = len ? json_loadb(body, len, 0, NULL) : json_object();
    const char *given = json_string_value(json_object_get(in, "secret"));
    char secret[96];
    struct wh_ep *ep = NULL;
    if (given && !pb__wh_secret_ok(given)) {
        pthread_mutex_unlock(&c->lock);
        json_decref(in);
        error(r, 400, "secret must be whsec_ and the base64 of 24 to 64 bytes");
        return;
    }
    if (given)
        snprintf(secret, sizeof(secret), "%s", given);
    else if (pb__wh_new_secret(secret, sizeof(secret)) != 0) {
        pthread_mutex_unlock(&c->lock);
        json_decref(in);
        error(r, 500, "cannot generate a secret");
        return;
    }
    json_decref(in);
    ep = ep_copy(cur);
    pthread_mutex_unlock(&c->lock);
    int64_t now = pb_now_ms(), overlap = c->rotation_overlap_ms;
    json_t *next = json_pack("[{s:s, s:n}]", "key", secret, "expires_at");
    if (!ep || !next) {
        json_decref(next);
        pb__wh_ep_free(ep);
        OPENSSL_cleanse(secret, sizeof(secret));
        error(r, 500, "out of memory");
        return;
    }
    size_t i;
    json_t *it;
    json_array_foreach(ep->secrets_json, i, it)
    {
        json_t *exp = json_object_get(it, "expires_at");
        int64_t at = json_is_integer(exp) ? json_integer_value(exp) : 0;
        if (at == 0)
            at = now + overlap; /* the current one: keeps signing during the overlap */
        if (at > now && json_array_size(next) < WH_MAX_SECRETS)
            json_array_append_new(next, json_pack("{s:O, s:I}", "key", json_object_get(it, "key"),
                                                  "expires_at", (json_int_t)at));
    }
    json_decref(ep->secrets_json);
    ep->secrets_json = next;
    pb__wh_load_secrets(ep);
    json_t *view = pb__wh_view(c, ep);
    char id[PB_SUB_ID_MAX];
    snprintf(id, sizeof(id), "%s", ep->id);
    if (commit(c, ep, r) == 0) {
        PB_INFO("webhook endpoint secret rotated endpoint=%s overlap_ms=%lld", id,
                (long long)overlap);
        if (view) {
            json_object_set_new(view, "secret", json_string(secret));
            json_object_set_new(view, "previous_expires_at", json_integer(now + overlap));
        }
        reply(r, 200, view);
    } else {
        json_decref(view);
    }
    OPENSSL_cleanse(secret, sizeof(secret));
}

static void set_disabled(struct wh_conf *c, struct wh_ep *cur, bool disabled,
                         struct pb_http_request *r)
{
    struct wh_ep *ep = cur->is_static ? NULL : ep_copy(cur);
    if (cur->is_static) {
        /* A static endpoint: only its state changes (and is saved). */
        cur->disabled = disabled;
        free(cur->disabled_reason);
        cur->disabled_reason = disabled ? strdup("disabled through the admin API") : NULL;
        if (!disabled)
            cur->failing_since = 0;
        cur->updated_at = pb_now_ms();
        char key[PB_SUB_ID_MAX + 16], id[PB_SUB_ID_MAX];
        pb__wh_save_key(cur, key, sizeof(key));
        snprintf(id, sizeof(id), "%s", cur->id);
        json_t *rec = pb__wh_record(cur), *view = pb__wh_view(c, cur);
        pb__wh_sync_sub(c, cur);
        pthread_mutex_unlock(&c->lock);
        int rc = pb__wh_write(c, key, rec, true);
        if (rc) {
            json_decref(view);
            error(r, 503, pb_strerror(rc));
            return;
        }
        PB_INFO("webhook endpoint %s endpoint=%s (static)", disabled ? "disabled" : "enabled", id);
        reply(r, 200, view);
        return;
    }
    pthread_mutex_unlock(&c->lock);
    if (!ep) {
        error(r, 500, "out of memory");
        return;
    }
    ep->disabled = disabled;
    free(ep->disabled_reason);
    ep->disabled_reason = disabled ? strdup("disabled through the admin API") : NULL;
    if (!disabled)
        ep->failing_since = 0;
    json_t *view = pb__wh_view(c, ep);
    char id[PB_SUB_ID_MAX];
    snprintf(id, sizeof(id), "%s", ep->id);
    if (commit(c, ep, r) == 0) {
        PB_INFO("webhook endpoint %s endpoint=%s", disabled ? "disabled" : "enabled", id);
        reply(r, 200, view);
    } else {
        json_decref(view);
    }
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

static void delete_ep(struct wh_conf *c, struct wh_ep *cur, struct pb_http_request *r)
{
    if (cur->is_static) {
        pthread_mutex_unlock(&c->lock);
        error(r, 409, "a static endpoint is deleted by removing it from the configuration");
        return;
    }
    char id[PB_SUB_ID_MAX], key[PB_SUB_ID_MAX + 16];
    snprintf(id, sizeof(id), "%s", cur->id);
    pthread_mutex_unlock(&c->lock);
    snprintf(key, sizeof(key), "endpoint/%s", id);
    int rc = pb_output_kv_put_wait(c->out, key, NULL, 0);
    if (rc) {
        error(r, 503, pb_strerror(rc));
        return;
    }
    pthread_mutex_lock(&c->lock);
    pb__wh_remove(c, id);
    pthread_mutex_unlock(&c->lock);
    int64_t dead = 0;
    rc = pb_output_sub_remove(c->out, id, "endpoint deleted", &dead);
    if (rc) {
        error(r, 503, pb_strerror(rc));
        return;
    }
    PB_INFO("webhook endpoint deleted endpoint=%s pending_dead_lettered=%lld", id, (long long)dead);
    reply(r, 204, NULL);
}

static void secret_of(struct wh_conf *c, struct wh_ep *cur, struct pb_http_request *r)
{
    if (cur->is_static) {
        pthread_mutex_unlock(&c->lock);
        error(r, 404, "no such managed endpoint");
        return;
    }
    /* The current secret and those still signing during their overlap. */
    json_t *sec = json_array();
    int64_t now = pb_now_ms();
    size_t i;
    json_t *it;
    json_array_foreach(cur->secrets_json, i, it)
    {
        json_t *exp = json_object_get(it, "expires_at");
        if (!json_is_integer(exp) || json_integer_value(exp) > now)
            json_array_append(sec, it);
    }
    pthread_mutex_unlock(&c->lock);
    reply(r, 200,
          json_pack("{s:s?, s:o}", "secret",
                    json_string_value(json_object_get(json_array_get(sec, 0), "key")), "secrets",
                    sec));
}

static void recover(struct wh_conf *c, struct wh_ep *cur, struct pb_http_request *r)
{
    char id[PB_SUB_ID_MAX];
    snprintf(id, sizeof(id), "%s", cur->id);
    pthread_mutex_unlock(&c->lock);
    const char *since_s = qarg(r, "since");
    int64_t since = 0, count = 0;
    if (!since_s || parse_since(since_s, &since) != 0) {
        error(r, 400, "since is required: unix milliseconds or YYYY-MM-DDTHH:MM:SSZ");
        return;
    }
    int rc = pb_output_sub_recover(c->out, id, since, &count);
    if (rc) {
        error(r, 503, pb_strerror(rc));
        return;
    }
    PB_INFO("webhook endpoint recovered endpoint=%s since=%lld replayed=%lld", id, (long long)since,
            (long long)count);
    reply(r, 200, json_pack("{s:I}", "replayed", (json_int_t)count));
}

/* A test event to this endpoint only: a message of its own, signed and
 * recorded like any delivery, {"type", "timestamp", "data"}. */
static void send_test(struct wh_conf *c, struct wh_ep *cur, struct pb_http_request *r)
{
    char id[PB_SUB_ID_MAX], msg_id[64], ts[32];
    bool disabled = cur->disabled;
    snprintf(id, sizeof(id), "%s", cur->id);
    pthread_mutex_unlock(&c->lock);
    if (disabled) {
        error(r, 409, "the endpoint is disabled: enable it to send it a test event");
        return;
    }
    size_t len = 0;
    const char *body = pb_http_request_body(r, &len);
    json_t *in = NULL;
    if (len) {
        json_error_t je;
        in = json_loadb(body, len, 0, &je);
        if (!in) {
            error(r, 400, "the body must be a JSON object: {event_type?, data?}");
            return;
        }
    }
    json_t *type = json_object_get(in, "event_type"), *data = json_object_get(in, "data");
    if ((type && (!json_is_string(type) || json_string_length(type) == 0 ||
                  json_string_length(type) > 200))) {
        json_decref(in);
        error(r, 400, "event_type must be a non-empty string of at most 200 bytes");
        return;
    }
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *ev =
        json_pack("{s:s, s:s, s:O?}", "type", type ? json_string_value(type) : "webhook.test",
                  "timestamp", ts, "data", data);
    if (ev && !data)
        json_object_set_new(
            ev, "data",
            json_pack("{s:s, s:s}", "message", "a test event from patchbay", "endpoint", id));
    json_decref(in);
    char *text = ev ? json_dumps(ev, JSON_COMPACT) : NULL;
    json_decref(ev);
    if (!text) {
        error(r, 500, "out of memory");
        return;
    }
    int rc = pb_output_sub_send(c->out, id, text, strlen(text), msg_id, sizeof(msg_id));
    free(text);
    if (rc) {
        error(r, rc == PB_ENOTFOUND ? 404 : 503,
              rc == PB_ENOTFOUND ? "no such endpoint" : pb_strerror(rc));
        return;
    }
    PB_INFO("webhook test event sent endpoint=%s msg_id=%s", id, msg_id);
    char name[PB_SUB_ID_MAX + 160];
    snprintf(name, sizeof(name), "%s/%s", c->output, id);
    reply(r, 202,
          json_pack("{s:s, s:s, s:s}", "message_id", msg_id, "endpoint", id, "output", name));
}

void pb__wh_admin(struct pb_output *const *outs, size_t n, struct pb_http_request *r)
{
    const char *method = pb_http_request_method(r), *path = pb_http_request_path(r);
    bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST"),
         del = !strcmp(method, "DELETE"), patchm = !strcmp(method, "PATCH");
    if (strcmp(path, "/api/endpoints") == 0) {
        if (post)
            create(outs, n, r);
        else if (get)
            list(outs, n, r);
        else
            error(r, 405, "method not allowed");
        return;
    }
    char id[PB_SUB_ID_MAX];
    const char *rest = path + strlen("/api/endpoints/");
    const char *slash = strchr(rest, '/');
    size_t idl = slash ? (size_t)(slash - rest) : strlen(rest);
    if (idl == 0 || idl >= sizeof(id)) {
        error(r, 404, "no such endpoint");
        return;
    }
    memcpy(id, rest, idl);
    id[idl] = 0;
    const char *action = slash ? slash + 1 : "";
    struct wh_ep *ep;
    bool dups;
    struct wh_conf *c = find_ep(outs, n, id, &ep, &dups);
    if (!c) {
        error(r, 404, "no such endpoint");
        return;
    }
    if (dups && ep->is_static) {
        pthread_mutex_unlock(&c->lock);
        error(r, 409,
              "several static endpoints have this id: give them distinct ids in the "
              "configuration");
        return;
    }
    /* Each handler below unlocks c->lock. */
    if (!*action) {
        if (patchm && ep->is_static) {
            pthread_mutex_unlock(&c->lock);
            error(r, 404, "no such managed endpoint");
        } else if (patchm) {
            patch(c, ep, r);
        } else if (del) {
            delete_ep(c, ep, r);
        } else if (get) {
            json_t *view = pb__wh_view(c, ep);
            pthread_mutex_unlock(&c->lock);
            reply(r, 200, view);
        } else {
            pthread_mutex_unlock(&c->lock);
            error(r, 405, "method not allowed");
        }
        return;
    }
    if (!strcmp(action, "secret") && get) {
        secret_of(c, ep, r);
        return;
    }
    if (!post) {
        pthread_mutex_unlock(&c->lock);
        error(r, 405, "method not allowed");
        return;
    }
    if (!strcmp(action, "rotate") && !ep->is_static) {
        rotate(c, ep, r);
    } else if (!strcmp(action, "disable") || !strcmp(action, "enable")) {
        set_disabled(c, ep, !strcmp(action, "disable"), r);
    } else if (!strcmp(action, "recover")) {
        recover(c, ep, r);
    } else if (!strcmp(action, "test")) {
        send_test(c, ep, r);
    } else {
        pthread_mutex_unlock(&c->lock);
        error(r, 404,
              !strcmp(action, "rotate") ? "no such managed endpoint" : "no such endpoint action");
    }
}
