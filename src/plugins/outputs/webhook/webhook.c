/* webhook.c - the `webhook` output: sends what a pipeline produces to the
 * endpoints subscribed to its event type, signed per Standard Webhooks.
 *
 * Every endpoint is a sub-output of the output (pb_output_sub_set): its own
 * queue, retries, rate limit, pause and dead letters. A delivery of the
 * output itself is fanned out: the event type (a template field, rendered on
 * the message as it reached the output) picks the subscribed endpoints, and
 * one delivery per endpoint is committed with the parent's end. Endpoints
 * come from the configuration (static: their disabled state and failing
 * time are kept in the output's state in the store) or from the admin API
 * (managed: kept whole in the store; webhook_api.c).
 *
 * Health: 410 Gone disables an endpoint at once; one failing without a
 * success for disable_after is disabled too. Both emit an "endpoint.disabled"
 * event into events_pipeline when one is configured. A disabled endpoint's
 * deliveries wait, pending, until it is enabled.
 *
 * Threads: deliver and the HTTP callbacks run on the dispatcher's loop; the
 * admin API on worker threads. The endpoint table is under c->lock. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include <openssl/crypto.h>

#include "patchbay/pb_log.h"
#include "patchbay/pb_time.h"
#include "webhook_int.h"

/* ---- options ------------------------------------------------------------------ */

static const struct pb_field static_fields[] = {
    {.name = "id",
     .type = PB_F_STR,
     .offset = offsetof(struct wh_static, id),
     .flags = PB_FIELD_REQUIRED,
     .doc = "endpoint id: letters, digits, - and _"},
    {.name = "url",
     .type = PB_F_STR,
     .offset = offsetof(struct wh_static, url),
     .flags = PB_FIELD_REQUIRED | PB_FIELD_URL},
    {.name = "secret",
     .type = PB_F_SECRET,
     .offset = offsetof(struct wh_static, secret),
     .doc = "whsec_ signing secret"},
    {.name = "secrets",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct wh_static, secrets),
     .doc = "several whsec_ secrets during a rotation; every one signs"},
    {.name = "events",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct wh_static, events),
     .doc = "event types: exact, prefix.* or *; empty = all"},
    {.name = "description", .type = PB_F_STR, .offset = offsetof(struct wh_static, description)},
    {.name = "rate_limit", .type = PB_F_RATE, .offset = offsetof(struct wh_static, rate_limit)},
    {0},
};

static const struct pb_field webhook_fields[] = {
    {.name = "event_type",
     .type = PB_F_STR,
     .offset = offsetof(struct wh_conf, event_type),
     .flags = PB_FIELD_REQUIRED,
     .doc = "jq expression giving the event type string"},
    {.name = "endpoints",
     .type = PB_F_NODE,
     .offset = offsetof(struct wh_conf, endpoints),
     .doc = "static endpoints"},
    {.name = "managed",
     .type = PB_F_BOOL,
     .offset = offsetof(struct wh_conf, managed),
     .def = "true",
     .doc = "also send to endpoints created through the admin API"},
    {.name = "disable_after",
     .type = PB_F_DURATION,
     .offset = offsetof(struct wh_conf, disable_after_ms),
     .def = "5d",
     .doc = "disable an endpoint failing without a success for this long"},
    {.name = "rotation_overlap",
     .type = PB_F_DURATION,
     .offset = offsetof(struct wh_conf, rotation_overlap_ms),
     .def = "24h",
     .doc = "how long the previous secret keeps signing after a rotation"},
    {.name = "timeout",
     .type = PB_F_DURATION,
     .offset = offsetof(struct wh_conf, timeout_ms),
     .def = "15s"},
    {.name = "connect_timeout",
     .type = PB_F_DURATION,
     .offset = offsetof(struct wh_conf, connect_timeout_ms),
     .def = "10s"},
    {.name = "max_response",
     .type = PB_F_SIZE,
     .offset = offsetof(struct wh_conf, max_response),
     .def = "16KiB"},
    {.name = "events_pipeline",
     .type = PB_F_STR,
     .offset = offsetof(struct wh_conf, events_pipeline),
     .doc = "pipeline that receives endpoint.disabled events"},
    {.name = "signing_key",
     .type = PB_F_SECRET,
     .offset = offsetof(struct wh_conf, signing_key),
     .doc = "whsk_ ed25519 private key: adds v1a signatures"},
    {0},
};

/* ---- secrets, patterns, ids -------------------------------------------------------- */

int pb__wh_parse_secret(const char *s, struct wh_secret *out)
{
    if (strncmp(s, "whsec_", 6) != 0)
        return -1;
    if (pb_base64_decode(s + 6, strlen(s + 6), false, out->key, sizeof(out->key), &out->len) != 0 ||
        out->len < 24)
        return -1;
    out->expires_at = 0;
    return 0;
}

bool pb__wh_secret_ok(const char *s)
{
    struct wh_secret tmp;
    bool ok = s && pb__wh_parse_secret(s, &tmp) == 0;
    OPENSSL_cleanse(&tmp, sizeof(tmp));
    return ok;
}

int pb__wh_new_secret(char *buf, size_t len)
{
    unsigned char raw[24];
    if (len < 64 || getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw))
        return PB_EINTERNAL;
    memcpy(buf, "whsec_", 6);
    size_t n = pb_base64_encode(raw, sizeof(raw), false, buf + 6, len - 6);
    OPENSSL_cleanse(raw, sizeof(raw));
    return n ? 0 : PB_EINTERNAL;
}

bool pb__wh_pattern_ok(const char *p)
{
    size_t n = strlen(p);
    if (n == 0 || n > 128)
        return false;
    if (strcmp(p, "*") == 0)
        return true;
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-' ||
                  (ch == '*' && i == n - 1 && i > 0 && p[i - 1] == '.');
        if (!ok)
            return false;
    }
    return true;
}

static bool pattern_match(const char *pattern, const char *type)
{
    size_t n = strlen(pattern);
    if (strcmp(pattern, "*") == 0)
        return true;
    if (n >= 2 && pattern[n - 1] == '*' && pattern[n - 2] == '.')
        return strncmp(pattern, type, n - 1) == 0 && type[n - 1] != 0;
    return strcmp(pattern, type) == 0;
}

static bool subscribed(const struct wh_ep *ep, const char *type)
{
    if (ep->nevents == 0)
        return true;
    for (size_t i = 0; i < ep->nevents; i++)
        if (pattern_match(ep->events[i], type))
            return true;
    return false;
}

bool pb__wh_id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n >= PB_SUB_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = id[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_'))
            return false;
    }
    return true;
}

/* ---- the endpoint table ---------------------------------------------------------------- */

void pb__wh_ep_free(struct wh_ep *ep)
{
    if (!ep)
        return;
    free(ep->url);
    free(ep->description);
    for (size_t i = 0; i < ep->nevents; i++)
        free(ep->events[i]);
    free(ep->events);
    json_decref(ep->secrets_json);
    free(ep->rate_text);
    free(ep->disabled_reason);
    OPENSSL_cleanse(ep->secrets, sizeof(ep->secrets));
    free(ep);
}

struct wh_ep *pb__wh_find(struct wh_conf *c, const char *id)
{
    for (size_t i = 0; i < c->neps; i++)
        if (strcmp(c->eps[i]->id, id) == 0)
            return c->eps[i];
    return NULL;
}

int pb__wh_put(struct wh_conf *c, struct wh_ep *ep)
{
    for (size_t i = 0; i < c->neps; i++)
        if (strcmp(c->eps[i]->id, ep->id) == 0) {
            pb__wh_ep_free(c->eps[i]);
            c->eps[i] = ep;
            return 0;
        }
    if (c->neps == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 16;
        struct wh_ep **eps = realloc(c->eps, cap * sizeof(*eps));
        if (!eps)
            return PB_ENOMEM;
        c->eps = eps;
        c->cap = cap;
    }
    c->eps[c->neps++] = ep;
    return 0;
}

void pb__wh_remove(struct wh_conf *c, const char *id)
{
    for (size_t i = 0; i < c->neps; i++)
        if (strcmp(c->eps[i]->id, id) == 0) {
            pb__wh_ep_free(c->eps[i]);
            c->eps[i] = c->eps[--c->neps];
            return;
        }
}

int pb__wh_set_events(struct wh_ep *ep, const char *const *items, size_t n)
{
    char **ev = calloc(n ? n : 1, sizeof(*ev));
    if (!ev)
        return PB_ENOMEM;
    for (size_t i = 0; i < n; i++)
        if (!(ev[i] = strdup(items[i]))) {
            while (i--)
                free(ev[i]);
            free(ev);
            return PB_ENOMEM;
        }
    for (size_t i = 0; i < ep->nevents; i++)
        free(ep->events[i]);
    free(ep->events);
    ep->events = ev;
    ep->nevents = n;
    return 0;
}

void pb__wh_load_secrets(struct wh_ep *ep)
{
    size_t n = 0, i;
    json_t *it;
    json_array_foreach(ep->secrets_json, i, it)
    {
        const char *k = json_string_value(json_object_get(it, "key"));
        if (n < WH_MAX_SECRETS && k && pb__wh_parse_secret(k, &ep->secrets[n]) == 0) {
            ep->secrets[n].expires_at = json_integer_value(json_object_get(it, "expires_at"));
            n++;
        }
    }
    ep->nsecrets = n;
}

static char *dup0(const char *s)
{
    return s ? strdup(s) : NULL;
}

struct wh_ep *pb__wh_from_json(json_t *rec)
{
    const char *id = json_string_value(json_object_get(rec, "id"));
    const char *url = json_string_value(json_object_get(rec, "url"));
    json_t *secrets = json_object_get(rec, "secrets");
    if (!id || !pb__wh_id_ok(id) || !url || !json_is_array(secrets))
        return NULL;
    struct wh_ep *ep = calloc(1, sizeof(*ep));
    if (!ep)
        return NULL;
    snprintf(ep->id, sizeof(ep->id), "%s", id);
    ep->url = strdup(url);
    ep->description = dup0(json_string_value(json_object_get(rec, "description")));
    ep->secrets_json = json_incref(secrets);
    ep->rate_text = dup0(json_string_value(json_object_get(rec, "rate_limit")));
    if (ep->rate_text && pb_parse_rate(ep->rate_text, &ep->rate) != 0)
        ep->rate = (struct pb_rate){0};
    ep->disabled = json_is_true(json_object_get(rec, "disabled"));
    ep->disabled_reason = dup0(json_string_value(json_object_get(rec, "disabled_reason")));
    ep->failing_since = json_integer_value(json_object_get(rec, "failing_since"));
    ep->created_at = json_integer_value(json_object_get(rec, "created_at"));
    ep->updated_at = json_integer_value(json_object_get(rec, "updated_at"));
    json_t *events = json_object_get(rec, "events");
    size_t ne = json_array_size(events);
    const char **items = calloc(ne ? ne : 1, sizeof(*items));
    if (!ep->url || !items) {
        free(items);
        pb__wh_ep_free(ep);
        return NULL;
    }
    for (size_t i = 0; i < ne; i++) {
        const char *s = json_string_value(json_array_get(events, i));
        items[i] = s ? s : "";
    }
    int rc = pb__wh_set_events(ep, items, ne);
    free(items);
    if (rc) {
        pb__wh_ep_free(ep);
        return NULL;
    }
    pb__wh_load_secrets(ep);
    return ep;
}

static json_t *events_json(const struct wh_ep *ep)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < ep->nevents; i++)
        json_array_append_new(a, json_string(ep->events[i]));
    return a;
}

json_t *pb__wh_record(const struct wh_ep *ep)
{
    if (ep->is_static)
        return json_pack("{s:s, s:b, s:s?, s:I, s:I}", "url", ep->url, "disabled", ep->disabled,
                         "disabled_reason", ep->disabled_reason, "failing_since",
                         (json_int_t)ep->failing_since, "updated_at", (json_int_t)ep->updated_at);
    return json_pack("{s:s, s:s, s:s?, s:o, s:O, s:s?, s:b, s:s?, s:I, s:I, s:I}", "id", ep->id,
                     "url", ep->url, "description", ep->description, "events", events_json(ep),
                     "secrets", ep->secrets_json ? ep->secrets_json : json_array(), "rate_limit",
                     ep->rate_text, "disabled", ep->disabled, "disabled_reason",
                     ep->disabled_reason, "failing_since", (json_int_t)ep->failing_since,
                     "created_at", (json_int_t)ep->created_at, "updated_at",
                     (json_int_t)ep->updated_at);
}

json_t *pb__wh_view(const struct wh_conf *c, const struct wh_ep *ep)
{
    json_t *v =
        json_pack("{s:s, s:s, s:s, s:s, s:s?, s:o, s:b, s:b, s:s?, s:o?}", "id", ep->id, "pipeline",
                  c->pipeline, "output", c->output, "url", ep->url, "description", ep->description,
                  "events", events_json(ep), "static", ep->is_static, "disabled", ep->disabled,
                  "disabled_reason", ep->disabled_reason, "failing_since",
                  ep->failing_since ? json_integer(ep->failing_since) : NULL);
    if (!v)
        return NULL;
    if (!ep->is_static) {
        json_object_set_new(v, "rate_limit",
                            ep->rate_text ? json_string(ep->rate_text) : json_null());
        json_object_set_new(v, "created_at", json_integer(ep->created_at));
    }
    json_object_set_new(v, "updated_at",
                        ep->updated_at ? json_integer(ep->updated_at) : json_null());
    return v;
}

char *pb__wh_save_key(const struct wh_ep *ep, char *key, size_t len)
{
    snprintf(key, len, "%s/%s", ep->is_static ? "static" : "endpoint", ep->id);
    return key;
}

int pb__wh_write(struct wh_conf *c, const char *key, json_t *rec, bool wait)
{
    char *text = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
    json_decref(rec);
    if (!text)
        return PB_ENOMEM;
    int rc = wait ? pb_output_kv_put_wait(c->out, key, text, strlen(text))
                  : pb_output_kv_put(c->out, key, text, strlen(text), NULL, NULL);
    OPENSSL_cleanse(text, strlen(text));
    free(text);
    if (rc)
        PB_WARN("webhook endpoint state not recorded key=%s error=%s", key, pb_strerror(rc));
    return rc;
}

int pb__wh_save(struct wh_conf *c, const struct wh_ep *ep, bool wait)
{
    char key[PB_SUB_ID_MAX + 16];
    return pb__wh_write(c, pb__wh_save_key(ep, key, sizeof(key)), pb__wh_record(ep), wait);
}

void pb__wh_sync_sub(struct wh_conf *c, const struct wh_ep *ep)
{
    struct pb_sub_opts opts = {.rate_limit = ep->rate, .paused = ep->disabled};
    if (pb_output_sub_set(c->out, ep->id, &opts) != 0)
        PB_ERROR("cannot set up webhook endpoint endpoint=%s", ep->id);
}

/* ---- init ------------------------------------------------------------------------------ */

static int load_signing_key(struct wh_conf *c, struct pb_err *err)
{
    unsigned char raw[WH_KEY_MAX];
    size_t len = 0;
    const char *b = c->signing_key + 5;
    if (strncmp(c->signing_key, "whsk_", 5) != 0 ||
        pb_base64_decode(b, strlen(b), false, raw, sizeof(raw), &len) != 0 ||
        (len != 32 && len != 64))
        return pb_err_set(err, PB_ECONFIG,
                          "signing_key: expected whsk_ and the base64 of an ed25519 key");
    c->edkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, raw, 32);
    OPENSSL_cleanse(raw, sizeof(raw));
    if (!c->edkey)
        return pb_err_set(err, PB_ECONFIG, "signing_key: not a usable ed25519 key");
    return 0;
}

static int check_statics(struct wh_conf *c, struct pb_err *err)
{
    const struct pb_node *n = c->endpoints;
    if (!n)
        return 0;
    if (n->type != PB_NODE_SEQ)
        return pb_err_at(err, PB_ECONFIG, n->file, n->line, n->col,
                         "endpoints must be a list of {id, url, secret, events}");
    c->statics = calloc(n->n ? n->n : 1, sizeof(*c->statics));
    if (!c->statics)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    for (size_t i = 0; i < n->n; i++) {
        struct wh_static *st = &c->statics[i];
        const struct pb_node *item = n->vals[i];
        c->nstatics = i + 1;
        int rc = pb_conf_decode(item, static_fields, st, err);
        if (rc)
            return rc;
        const char *why = NULL;
        if (!pb__wh_id_ok(st->id))
            why = "id may hold only letters, digits, - and _ (at most 63)";
        else if (strncasecmp(st->url, "http://", 7) && strncasecmp(st->url, "https://", 8))
            why = "url must start with http:// or https://";
        else if (!st->secret && st->secrets.n == 0)
            why = "needs a secret (whsec_...)";
        else if (st->secret && !pb__wh_secret_ok(st->secret))
            why = "secret is not whsec_ and the base64 of at least 24 bytes";
        for (size_t k = 0; !why && k < st->secrets.n; k++)
            if (!pb__wh_secret_ok(st->secrets.items[k]))
                why = "a secret is not whsec_ and the base64 of at least 24 bytes";
        for (size_t k = 0; !why && k < st->events.n; k++)
            if (!pb__wh_pattern_ok(st->events.items[k]))
                why = "events take exact types, prefix.* or *";
        for (size_t k = 0; !why && k < i; k++)
            if (strcmp(c->statics[k].id, st->id) == 0)
                why = "two endpoints have this id";
        if (why)
            return pb_err_at(err, PB_ECONFIG, item->file, item->line, item->col,
                             "endpoint \"%s\": %s", st->id ? st->id : "?", why);
    }
    return 0;
}

static int webhook_init(void *ctx, struct pb_output_env *env, struct pb_err *err)
{
    struct wh_conf *c = ctx;
    c->http = env->http;
    c->pipeline = strdup(env->pipeline);
    c->output = strdup(env->output);
    if (!c->pipeline || !c->output)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    if (pthread_mutex_init(&c->lock, NULL) != 0)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    c->lock_ready = true;
    /* The event type is a template field: "{{ <event_type> }}". */
    size_t tl = strlen(c->event_type) + 8;
    char *t = malloc(tl);
    if (!t)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    snprintf(t, tl, "{{ %s }}", c->event_type);
    c->type_tmpl = env->template_add(env, t, err);
    free(t);
    if (c->type_tmpl < 0)
        return err->code ? err->code : PB_ECONFIG;
    if (c->signing_key && load_signing_key(c, err))
        return PB_ECONFIG;
    env->attempt_timeout_ms = c->timeout_ms;
    return check_statics(c, err);
}

/* ---- start: the endpoints as the configuration and the store have them ------------------- */

struct start_ctx {
    struct wh_conf *c;
    json_t *saved;   /* id -> saved state of static endpoints */
    json_t *managed; /* records of managed endpoints */
};

static int kv_cb(void *arg, const char *key, const void *value, size_t len)
{
    struct start_ctx *sc = arg;
    json_t *rec = json_loadb(value, len, 0, NULL);
    if (!rec)
        return 0;
    if (strncmp(key, "static/", 7) == 0)
        json_object_set_new(sc->saved, key + 7, rec);
    else if (strncmp(key, "endpoint/", 9) == 0 && sc->c->managed)
        json_array_append_new(sc->managed, rec);
    else
        json_decref(rec);
    return 0;
}

static struct wh_ep *static_ep(const struct wh_static *st, json_t *saved)
{
    struct wh_ep *ep = calloc(1, sizeof(*ep));
    if (!ep)
        return NULL;
    ep->is_static = true;
    snprintf(ep->id, sizeof(ep->id), "%s", st->id);
    ep->url = strdup(st->url);
    ep->description = dup0(st->description);
    ep->rate = st->rate_limit;
    if (st->secret && pb__wh_parse_secret(st->secret, &ep->secrets[ep->nsecrets]) == 0)
        ep->nsecrets++;
    for (size_t k = 0; k < st->secrets.n && ep->nsecrets < WH_MAX_SECRETS; k++)
        if (pb__wh_parse_secret(st->secrets.items[k], &ep->secrets[ep->nsecrets]) == 0)
            ep->nsecrets++;
    if (!ep->url ||
        pb__wh_set_events(ep, (const char *const *)st->events.items, st->events.n) != 0) {
        pb__wh_ep_free(ep);
        return NULL;
    }
    /* A state saved under another url is not this endpoint's any more. */
    const char *url = json_string_value(json_object_get(saved, "url"));
    if (saved && url && strcmp(url, st->url) == 0) {
        ep->disabled = json_is_true(json_object_get(saved, "disabled"));
        ep->disabled_reason = dup0(json_string_value(json_object_get(saved, "disabled_reason")));
        ep->failing_since = json_integer_value(json_object_get(saved, "failing_since"));
        ep->updated_at = json_integer_value(json_object_get(saved, "updated_at"));
        if (ep->disabled)
            PB_WARN("webhook endpoint disabled endpoint=%s reason=\"%s\" (saved; enable it "
                    "through the admin API)",
                    ep->id, ep->disabled_reason ? ep->disabled_reason : "");
    }
    return ep;
}

static int webhook_start(void *ctx, struct pb_output *out, struct pb_err *err)
{
    struct wh_conf *c = ctx;
    struct start_ctx sc = {.c = c, .saved = json_object(), .managed = json_array()};
    int rc = 0;
    c->out = out;
    if (!sc.saved || !sc.managed) {
        rc = pb_err_set(err, PB_ENOMEM, "out of memory");
        goto out;
    }
    pb_output_kv_each(out, kv_cb, &sc);
    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; i < c->nstatics; i++) {
        struct wh_ep *ep = static_ep(&c->statics[i], json_object_get(sc.saved, c->statics[i].id));
        if (!ep || pb__wh_put(c, ep) != 0) {
            pb__wh_ep_free(ep);
            rc = pb_err_set(err, PB_ENOMEM, "out of memory");
            goto unlock;
        }
    }
    size_t i;
    json_t *rec;
    json_array_foreach(sc.managed, i, rec)
    {
        struct wh_ep *ep = pb__wh_from_json(rec);
        if (!ep) {
            PB_WARN("webhook endpoint record unusable pipeline=%s output=%s", c->pipeline,
                    c->output);
        } else if (pb__wh_find(c, ep->id)) {
            PB_WARN("managed endpoint shadowed by a static one of the same id endpoint=%s", ep->id);
            pb__wh_ep_free(ep);
        } else if (pb__wh_put(c, ep) != 0) {
            pb__wh_ep_free(ep);
            rc = pb_err_set(err, PB_ENOMEM, "out of memory");
            goto unlock;
        }
    }
    for (size_t k = 0; k < c->neps; k++)
        pb__wh_sync_sub(c, c->eps[k]);
    c->started = true;
unlock:
    pthread_mutex_unlock(&c->lock);
out:
    json_decref(sc.saved);
    json_decref(sc.managed);
    return rc;
}

/* ---- health --------------------------------------------------------------------------- */

/* Under c->lock. */
static void disable(struct wh_conf *c, struct wh_ep *ep, const char *reason, int64_t now)
{
    if (ep->disabled)
        return;
    ep->disabled = true;
    free(ep->disabled_reason);
    ep->disabled_reason = strdup(reason);
    ep->updated_at = now;
    PB_WARN("webhook endpoint disabled pipeline=%s output=%s endpoint=%s reason=\"%s\"",
            c->pipeline, c->output, ep->id, reason);
    pb__wh_save(c, ep, false);
    pb__wh_sync_sub(c, ep);
    if (!c->events_pipeline)
        return;
    json_t *ev = json_pack("{s:s, s:{s:s, s:s, s:s, s:s}, s:s, s:I}", "type", "endpoint.disabled",
                           "endpoint", "id", ep->id, "url", ep->url, "pipeline", c->pipeline,
                           "output", c->output, "reason", reason, "at", (json_int_t)now);
    char *body = ev ? json_dumps(ev, JSON_COMPACT) : NULL;
    if (!body || pb_output_emit(c->out, c->events_pipeline, body, strlen(body)) != 0)
        PB_ERROR("endpoint.disabled event not emitted endpoint=%s pipeline=%s", ep->id,
                 c->events_pipeline);
    free(body);
    json_decref(ev);
}

/* An attempt of endpoint id ended with status (the outcome's result). */
static void health(struct wh_conf *c, const char *id, int status, enum pb_result result)
{
    int64_t now = pb_now_ms();
    pthread_mutex_lock(&c->lock);
    struct wh_ep *ep = pb__wh_find(c, id);
    if (!ep) {
        pthread_mutex_unlock(&c->lock);
        return;
    }
    if (status == 410) {
        disable(c, ep, "the endpoint answered 410 Gone", now);
    } else if (result == PB_RESULT_OK) {
        if (ep->failing_since) {
            ep->failing_since = 0;
            ep->updated_at = now;
            pb__wh_save(c, ep, false);
        }
    } else if (!ep->failing_since) {
        ep->failing_since = now;
        ep->updated_at = now;
        pb__wh_save(c, ep, false);
    } else if (now - ep->failing_since >= c->disable_after_ms) {
        char why[160];
        snprintf(why, sizeof(why), "failing without a success for %lld s (disable_after)",
                 (long long)((now - ep->failing_since) / 1000));
        disable(c, ep, why, now);
    }
    pthread_mutex_unlock(&c->lock);
}

/* ---- signing and sending -------------------------------------------------------------- */

/* "v1,<b64> v1,<b64> v1a,<b64>": every secret still valid at now, then the
 * ed25519 signature when a signing key is set. Under c->lock. */
static int sign(const struct wh_conf *c, const struct wh_ep *ep, const char *msg_id, const char *ts,
                const char *body, size_t len, int64_t now, char *out, size_t cap)
{
    const struct pb_piece content[] = {
        {msg_id, strlen(msg_id)}, {".", 1}, {ts, strlen(ts)}, {".", 1}, {body, len},
    };
    size_t pos = 0;
    out[0] = 0;
    for (size_t i = 0; i < ep->nsecrets; i++) {
        const struct wh_secret *s = &ep->secrets[i];
        if (s->expires_at && s->expires_at <= now)
            continue;
        unsigned char mac[PB_MAC_MAX];
        size_t maclen = 0;
        if (pb_hmac("SHA256", s->key, s->len, content, 5, mac, &maclen) != 0 || pos + 4 + 64 >= cap)
            return PB_EINTERNAL;
        pos += (size_t)snprintf(out + pos, cap - pos, "%sv1,", pos ? " " : "");
        pos += pb_base64_encode(mac, maclen, false, out + pos, cap - pos);
    }
    if (c->edkey) {
        size_t dl = 0;
        for (size_t i = 0; i < 5; i++)
            dl += content[i].len;
        unsigned char *data = malloc(dl ? dl : 1), sig[64];
        size_t siglen = sizeof(sig), at = 0;
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        int ok = data && md;
        for (size_t i = 0; ok && i < 5; i++) {
            memcpy(data + at, content[i].p, content[i].len);
            at += content[i].len;
        }
        ok = ok && EVP_DigestSignInit(md, NULL, NULL, NULL, c->edkey) == 1 &&
             EVP_DigestSign(md, sig, &siglen, data, dl) == 1;
        EVP_MD_CTX_free(md);
        free(data);
        if (!ok || pos + 5 + 90 >= cap)
            return PB_EINTERNAL;
        pos += (size_t)snprintf(out + pos, cap - pos, "%sv1a,", pos ? " " : "");
        pos += pb_base64_encode(sig, siglen, false, out + pos, cap - pos);
    }
    return pos ? 0 : PB_EINVAL;
}

struct ep_attempt {
    struct pb_delivery *d;
    struct wh_conf *c;
};

static void ep_done_cb(void *arg, const struct pb_http_resp *resp)
{
    struct ep_attempt *a = arg;
    struct pb_delivery *d = a->d;
    struct wh_conf *c = a->c;
    free(a);
    struct pb_outcome o;
    char error[320];
    pb_outcome_from_http(resp, &o, error, sizeof(error));
    health(c, d->sub, resp->status, o.result);
    pb_delivery_done(d, &o);
}

static void fail(struct pb_delivery *d, enum pb_result result, const char *why)
{
    struct pb_outcome o = {.result = result, .retry_after_ms = -1, .error = why};
    pb_delivery_done(d, &o);
}

/* A delivery of the output itself: one per subscribed endpoint. */
static void fan_out(struct wh_conf *c, struct pb_delivery *d)
{
    const char *type = d->ntmpl > (size_t)c->type_tmpl ? d->tmpl[c->type_tmpl] : NULL;
    if (!type) {
        fail(d, PB_RESULT_PERMANENT, "event_type gave no value");
        return;
    }
    pthread_mutex_lock(&c->lock);
    const char **subs = calloc(c->neps ? c->neps : 1, sizeof(*subs));
    size_t n = 0;
    /* Disabled endpoints keep their deliveries, pending, until enabled. */
    for (size_t i = 0; subs && i < c->neps; i++)
        if (subscribed(c->eps[i], type))
            subs[n++] = c->eps[i]->id;
    char note[160];
    snprintf(note, sizeof(note), "event %.60s fanned out to %zu endpoint%s", type, n,
             n == 1 ? "" : "s");
    if (subs)
        pb_delivery_fanout(d, subs, n, note); /* copies the ids */
    pthread_mutex_unlock(&c->lock);
    if (!subs)
        fail(d, PB_RESULT_RETRY, "out of memory");
    free(subs);
}

static void webhook_deliver(void *ctx, struct pb_delivery *d)
{
    struct wh_conf *c = ctx;
    if (!d->sub) {
        fan_out(c, d);
        return;
    }
    int64_t now = pb_now_ms();
    char ts[24], attempt[16], sigs[1024], *url = NULL;
    snprintf(ts, sizeof(ts), "%lld", (long long)(now / 1000));
    snprintf(attempt, sizeof(attempt), "%d", d->attempt);
    pthread_mutex_lock(&c->lock);
    struct wh_ep *ep = pb__wh_find(c, d->sub);
    int rc = ep ? sign(c, ep, d->msg_id, ts, d->payload, d->len, now, sigs, sizeof(sigs)) : 0;
    if (ep && rc == 0)
        url = strdup(ep->url);
    pthread_mutex_unlock(&c->lock);
    if (!ep) {
        fail(d, PB_RESULT_PERMANENT, "endpoint deleted");
        return;
    }
    if (rc) {
        fail(d, PB_RESULT_PERMANENT, "cannot sign: the endpoint has no valid secret");
        return;
    }
    struct ep_attempt *a = malloc(sizeof(*a));
    if (!a || !url) {
        free(a);
        free(url);
        fail(d, PB_RESULT_RETRY, "out of memory");
        return;
    }
    a->d = d;
    a->c = c;
    struct pb_http_header hdrs[8] = {
        {"Content-Type", "application/json"},
        {"User-Agent", "patchbay/" PB_VERSION},
        {"webhook-id", d->msg_id},
        {"webhook-timestamp", ts},
        {"webhook-signature", sigs},
        {"X-Patchbay-Attempt", attempt},
    };
    size_t nh = 6;
    if (d->traceparent)
        hdrs[nh++] = (struct pb_http_header){"traceparent", d->traceparent};
    if (d->tracestate)
        hdrs[nh++] = (struct pb_http_header){"tracestate", d->tracestate};
    struct pb_http_req req = {
        .method = "POST",
        .url = url,
        .headers = hdrs,
        .nheaders = nh,
        .body = d->payload,
        .len = d->len,
        .timeout_ms = c->timeout_ms,
        .connect_timeout_ms = c->connect_timeout_ms,
        .max_response = (size_t)c->max_response,
        .allow = pb_output_allow(c->out),
    };
    rc = c->http ? pb_http_client_send(c->http, &req, ep_done_cb, a) : PB_EINVAL;
    free(url);
    OPENSSL_cleanse(sigs, sizeof(sigs));
    if (rc != 0) {
        free(a);
        fail(d, PB_RESULT_RETRY, "could not start the request");
    }
}

static void webhook_destroy(void *ctx)
{
    struct wh_conf *c = ctx;
    for (size_t i = 0; i < c->nstatics; i++)
        pb_conf_free(static_fields, &c->statics[i]);
    free(c->statics);
    c->statics = NULL;
    c->nstatics = 0;
    for (size_t i = 0; i < c->neps; i++)
        pb__wh_ep_free(c->eps[i]);
    free(c->eps);
    c->eps = NULL;
    c->neps = c->cap = 0;
    EVP_PKEY_free(c->edkey);
    c->edkey = NULL;
    free(c->pipeline);
    free(c->output);
    c->pipeline = c->output = NULL;
    if (c->lock_ready)
        pthread_mutex_destroy(&c->lock);
    c->lock_ready = false;
}

const struct pb_output_plugin pb_out_webhook = {
    .name = "webhook",
    .fields = webhook_fields,
    .ctx_size = sizeof(struct wh_conf),
    .default_concurrency = 16,
    .init = webhook_init,
    .start = webhook_start,
    .deliver = webhook_deliver,
    .destroy = webhook_destroy,
    .admin_path = "endpoints",
    .admin = pb__wh_admin,
    .kv_changed = pb__wh_kv_changed,
};
