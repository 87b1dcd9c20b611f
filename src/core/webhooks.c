/* webhooks.c - the `webhook` output: sends what a pipeline produces to the
 * endpoints subscribed to its event type, signed per Standard Webhooks.
 *
 * A delivery to a webhook output fans out: the event type (a jq expression
 * on the message as received) picks the subscribed endpoints, and one child
 * delivery per endpoint is committed (output "<output>/<endpoint id>"). Each
 * endpoint is a virtual output of its own: its own queue, retries, rate
 * limit, dead letters and attempt log. Endpoints come from YAML (static) or
 * from the admin API (managed, stored in the state store).
 *
 * Health: 410 Gone disables an endpoint at once; an endpoint failing without
 * a success for disable_after is disabled too. Both emit an
 * "endpoint.disabled" event into events_pipeline when one is configured.
 * Deliveries to a disabled endpoint are kept, pending, until it is enabled. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "core/dispatch_int.h"
#include "core/webhooks.h"
#include "patchbay/pb_log.h"

#define WH_MAX_SECRETS 8
#define WH_KEY_MAX 64

struct wh_static {
    char *id;
    char *url;
    char *secret;
    struct pb_strlist secrets;
    struct pb_strlist events;
    char *description;
    struct pb_rate rate_limit;
};

struct wh_conf {
    /* decoded options */
    char *event_type;
    const struct pb_node *endpoints;
    bool managed;
    int64_t disable_after_ms;
    int64_t rotation_overlap_ms;
    int64_t timeout_ms;
    int64_t connect_timeout_ms;
    uint64_t max_response;
    char *events_pipeline;
    char *signing_key;
    /* runtime */
    struct pb_jq *type_jq; /* dispatcher thread */
    EVP_PKEY *edkey;
    struct pb_http_client *http;
    struct wh_static *statics;
    size_t nstatics;
    char *pipeline, *output;
};

struct wh_secret {
    unsigned char key[WH_KEY_MAX];
    size_t len;
    int64_t expires_at; /* 0 = current */
};

struct pb_webhook_endpoint {
    char id[PB_ENDPOINT_ID_MAX];
    char *url;
    struct wh_secret secrets[WH_MAX_SECRETS];
    size_t nsecrets;
    char **events;
    size_t nevents;
    bool is_static, disabled, gone;
    int64_t failing_since;
    _Atomic int state_unsaved; /* state ops submitted, not done yet */
    struct wh_conf *conf;
    struct pb_output *vout;
    struct pb_dispatcher *disp;
    struct pb_engine *e;
};

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
     .flags = PB_FIELD_REQUIRED},
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

/* ---- secrets and patterns -------------------------------------------------------- */

static int b64_decode(const char *in, unsigned char *out, size_t cap, size_t *outlen)
{
    size_t n = strlen(in);
    if (n == 0 || n % 4 != 0 || (n / 4) * 3 > cap + 2)
        return -1;
    unsigned char tmp[WH_KEY_MAX + 4];
    if ((n / 4) * 3 > sizeof(tmp))
        return -1;
    int len = EVP_DecodeBlock(tmp, (const unsigned char *)in, (int)n);
    if (len < 0)
        return -1;
    if (in[n - 1] == '=')
        len--;
    if (in[n - 2] == '=')
        len--;
    if ((size_t)len > cap)
        return -1;
    memcpy(out, tmp, (size_t)len);
    *outlen = (size_t)len;
    return 0;
}

static int parse_secret(const char *s, struct wh_secret *out)
{
    if (strncmp(s, "whsec_", 6) != 0)
        return -1;
    if (b64_decode(s + 6, out->key, sizeof(out->key), &out->len) != 0 || out->len < 24)
        return -1;
    return 0;
}

bool pb_webhook_secret_ok(const char *s)
{
    struct wh_secret tmp;
    return s && parse_secret(s, &tmp) == 0;
}

int pb_webhook_new_secret(char *buf, size_t len)
{
    unsigned char raw[24];
    if (len < 64 || getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw))
        return PB_EINTERNAL;
    memcpy(buf, "whsec_", 6);
    EVP_EncodeBlock((unsigned char *)buf + 6, raw, sizeof(raw));
    return 0;
}

bool pb_webhook_pattern_ok(const char *p)
{
    size_t n = strlen(p);
    if (n == 0 || n > 128)
        return false;
    if (strcmp(p, "*") == 0)
        return true;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-' ||
                  (c == '*' && i == n - 1 && i > 0 && p[i - 1] == '.');
        if (!ok)
            return false;
    }
    return true;
}

bool pb_webhook_pattern_match(const char *pattern, const char *type)
{
    size_t n = strlen(pattern);
    if (strcmp(pattern, "*") == 0)
        return true;
    if (n >= 2 && pattern[n - 1] == '*' && pattern[n - 2] == '.')
        return strncmp(pattern, type, n - 1) == 0 && type[n - 1] != 0;
    return strcmp(pattern, type) == 0;
}

static bool ep_subscribed(const struct pb_webhook_endpoint *ep, const char *type)
{
    if (ep->nevents == 0)
        return true;
    for (size_t i = 0; i < ep->nevents; i++)
        if (pb_webhook_pattern_match(ep->events[i], type))
            return true;
    return false;
}

static bool id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n >= PB_ENDPOINT_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return false;
    }
    return true;
}

/* ---- plugin: options, init ------------------------------------------------------------ */

static int load_signing_key(struct wh_conf *c, struct pb_err *err)
{
    unsigned char raw[WH_KEY_MAX];
    size_t len = 0;
    if (strncmp(c->signing_key, "whsk_", 5) != 0 ||
        b64_decode(c->signing_key + 5, raw, sizeof(raw), &len) != 0 || (len != 32 && len != 64))
        return pb_err_set(err, PB_ECONFIG,
                          "signing_key: expected whsk_ and the base64 of an ed25519 key");
    c->edkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, raw, 32);
    OPENSSL_cleanse(raw, sizeof(raw));
    if (!c->edkey)
        return pb_err_set(err, PB_ECONFIG, "signing_key: not a usable ed25519 key");
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
    if (strchr(env->output, '/'))
        return pb_err_set(err, PB_ECONFIG, "a webhook output name may not contain '/'");
    c->type_jq = pb_jq_compile(c->event_type, err);
    if (!c->type_jq)
        return err->code ? err->code : PB_ECONFIG;
    if (c->signing_key && load_signing_key(c, err))
        return PB_ECONFIG;
    if (c->endpoints) {
        const struct pb_node *n = c->endpoints;
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
            if (!id_ok(st->id))
                why = "id may hold only letters, digits, - and _ (at most 63)";
            else if (strncasecmp(st->url, "http://", 7) && strncasecmp(st->url, "https://", 8))
                why = "url must start with http:// or https://";
            else if (!st->secret && st->secrets.n == 0)
                why = "needs a secret (whsec_...)";
            else if (st->secret && !pb_webhook_secret_ok(st->secret))
                why = "secret is not whsec_ and the base64 of at least 24 bytes";
            for (size_t k = 0; !why && k < st->secrets.n; k++)
                if (!pb_webhook_secret_ok(st->secrets.items[k]))
                    why = "a secret is not whsec_ and the base64 of at least 24 bytes";
            for (size_t k = 0; !why && k < st->events.n; k++)
                if (!pb_webhook_pattern_ok(st->events.items[k]))
                    why = "events take exact types, prefix.* or *";
            for (size_t k = 0; !why && k < i; k++)
                if (strcmp(c->statics[k].id, st->id) == 0)
                    why = "two endpoints have this id";
            if (why)
                return pb_err_at(err, PB_ECONFIG, item->file, item->line, item->col,
                                 "endpoint \"%s\": %s", st->id ? st->id : "?", why);
        }
    }
    return 0;
}

static void webhook_deliver(void *ctx, struct pb_delivery *d)
{
    (void)ctx;
    /* The dispatcher fans webhook deliveries out; this is never reached. */
    struct pb_outcome o = {
        .result = PB_RESULT_RETRY, .retry_after_ms = -1, .error = "webhook fan-out missed"};
    pb_delivery_done(d, &o);
}

static void webhook_destroy(void *ctx)
{
    struct wh_conf *c = ctx;
    for (size_t i = 0; i < c->nstatics; i++)
        pb_conf_free(static_fields, &c->statics[i]);
    free(c->statics);
    c->statics = NULL;
    c->nstatics = 0;
    pb_jq_destroy(c->type_jq);
    c->type_jq = NULL;
    EVP_PKEY_free(c->edkey);
    c->edkey = NULL;
    free(c->pipeline);
    free(c->output);
    c->pipeline = c->output = NULL;
}

const struct pb_output_plugin pb_out_webhook = {
    .name = "webhook",
    .fields = webhook_fields,
    .ctx_size = sizeof(struct wh_conf),
    .default_concurrency = 16,
    .init = webhook_init,
    .deliver = webhook_deliver,
    .destroy = webhook_destroy,
};

bool pb_webhook_is(const struct pb_output *o)
{
    return o->plugin == &pb_out_webhook;
}

void pb_webhook_static_each(struct pb_engine *e,
                            void (*fn)(void *arg, const struct pb_webhook_static_view *v),
                            void *arg)
{
    for (size_t i = 0; i < e->cfg->npipelines; i++)
        for (size_t j = 0; j < e->cfg->pipelines[i].nouts; j++) {
            struct pb_output *o = &e->cfg->pipelines[i].outs[j];
            if (!pb_webhook_is(o))
                continue;
            struct wh_conf *c = o->ctx;
            for (size_t k = 0; k < c->nstatics; k++) {
                const struct wh_static *st = &c->statics[k];
                struct pb_webhook_static_view v = {
                    .pipeline = c->pipeline,
                    .output = c->output,
                    .id = st->id,
                    .url = st->url,
                    .description = st->description,
                    .events = (const char *const *)st->events.items,
                    .nevents = st->events.n,
                };
                fn(arg, &v);
            }
        }
}

struct static_find {
    const char *id, *pipeline, *output, *url;
    int n;
};

static void static_find_cb(void *arg, const struct pb_webhook_static_view *v)
{
    struct static_find *f = arg;
    if (strcmp(v->id, f->id) == 0 && f->n++ == 0) {
        f->pipeline = v->pipeline;
        f->output = v->output;
        f->url = v->url;
    }
}

int pb_webhook_static_find(struct pb_engine *e, const char *id, const char **pipeline,
                           const char **output, const char **url)
{
    struct static_find f = {.id = id};
    pb_webhook_static_each(e, static_find_cb, &f);
    if (f.n) {
        *pipeline = f.pipeline;
        *output = f.output;
        *url = f.url;
    }
    return f.n;
}

bool pb_webhook_managed(const struct pb_output *o)
{
    return pb_webhook_is(o) && ((const struct wh_conf *)o->ctx)->managed;
}

int64_t pb_webhook_rotation_overlap(const struct pb_output *o)
{
    return ((const struct wh_conf *)o->ctx)->rotation_overlap_ms;
}

/* ---- signing and sending ------------------------------------------------------------- */

/* "v1,<b64> v1,<b64> v1a,<b64>" for every secret still valid at now. */
static int sign(const struct pb_webhook_endpoint *ep, const char *msg_id, const char *ts,
                const char *body, size_t len, int64_t now, char *out, size_t cap)
{
    size_t pos = 0;
    out[0] = 0;
    size_t idl = strlen(msg_id), tsl = strlen(ts);
    for (size_t i = 0; i < ep->nsecrets; i++) {
        const struct wh_secret *s = &ep->secrets[i];
        if (s->expires_at && s->expires_at <= now)
            continue;
        unsigned char mac[EVP_MAX_MD_SIZE];
        size_t maclen = 0;
        EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);
        EVP_MAC_CTX *mc = m ? EVP_MAC_CTX_new(m) : NULL;
        OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
                               OSSL_PARAM_construct_end()};
        int ok = mc && EVP_MAC_init(mc, s->key, s->len, params) &&
                 EVP_MAC_update(mc, (const unsigned char *)msg_id, idl) &&
                 EVP_MAC_update(mc, (const unsigned char *)".", 1) &&
                 EVP_MAC_update(mc, (const unsigned char *)ts, tsl) &&
                 EVP_MAC_update(mc, (const unsigned char *)".", 1) &&
                 EVP_MAC_update(mc, (const unsigned char *)body, len) &&
                 EVP_MAC_final(mc, mac, &maclen, sizeof(mac));
        EVP_MAC_CTX_free(mc);
        EVP_MAC_free(m);
        if (!ok || pos + 4 + 64 >= cap)
            return PB_EINTERNAL;
        pos += (size_t)snprintf(out + pos, cap - pos, "%sv1,", pos ? " " : "");
        pos += (size_t)EVP_EncodeBlock((unsigned char *)out + pos, mac, (int)maclen);
    }
    if (ep->conf->edkey) {
        size_t dl = idl + tsl + len + 2;
        unsigned char *data = malloc(dl);
        unsigned char sig[64];
        size_t siglen = sizeof(sig);
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        int ok = data && md;
        if (ok) {
            memcpy(data, msg_id, idl);
            data[idl] = '.';
            memcpy(data + idl + 1, ts, tsl);
            data[idl + 1 + tsl] = '.';
            memcpy(data + idl + tsl + 2, body, len);
            ok = EVP_DigestSignInit(md, NULL, NULL, NULL, ep->conf->edkey) == 1 &&
                 EVP_DigestSign(md, sig, &siglen, data, dl) == 1;
        }
        EVP_MD_CTX_free(md);
        free(data);
        if (!ok || pos + 5 + 90 >= cap)
            return PB_EINTERNAL;
        pos += (size_t)snprintf(out + pos, cap - pos, "%sv1a,", pos ? " " : "");
        pos += (size_t)EVP_EncodeBlock((unsigned char *)out + pos, sig, (int)siglen);
    }
    return pos ? 0 : PB_EINVAL;
}

struct ep_attempt {
    struct pb_delivery *d;
    struct pb_webhook_endpoint *ep;
};

struct state_op {
    struct pb_op op;
    struct pb_webhook_endpoint *ep;
    char id[PB_ENDPOINT_ID_MAX];
    char reason[256];
};

static void state_done_cb(struct pb_op *op, void *arg)
{
    struct state_op *so = arg;
    if (op->status)
        PB_WARN("endpoint state not recorded endpoint=%s error=%s", so->id,
                pb_strerror(op->status));
    atomic_fetch_sub(&so->ep->state_unsaved, 1);
    free(so);
}

/* Record disabled (1, 0, -1 = keep) and failing_since of an endpoint: a
 * managed one in its record, a static one by (pipeline, output, id) with its
 * url, so a restart or a reload keeps both. */
static void save_state(struct pb_webhook_endpoint *ep, int disabled, const char *reason)
{
    struct state_op *so = calloc(1, sizeof(*so));
    if (!so) {
        PB_WARN("endpoint state not recorded endpoint=%s error=out of memory", ep->id);
        return;
    }
    snprintf(so->id, sizeof(so->id), "%s", ep->id);
    snprintf(so->reason, sizeof(so->reason), "%s", reason ? reason : "");
    so->op.kind = PB_OP_ENDPOINT_STATE;
    so->op.u.endpoint_state.id = so->id;
    so->op.u.endpoint_state.disabled = disabled;
    so->op.u.endpoint_state.disabled_reason = reason ? so->reason : NULL;
    so->op.u.endpoint_state.failing_since = ep->failing_since;
    so->op.u.endpoint_state.now = pb_now_ms();
    if (ep->is_static) {
        so->op.u.endpoint_state.pipeline = ep->conf->pipeline;
        so->op.u.endpoint_state.output = ep->conf->output;
        so->op.u.endpoint_state.url = ep->url;
    }
    so->op.done_cb = state_done_cb;
    so->op.arg = so;
    so->ep = ep;
    atomic_fetch_add(&ep->state_unsaved, 1);
    if (pb_store_submit(ep->e->store, &so->op) != 0) {
        atomic_fetch_sub(&ep->state_unsaved, 1);
        free(so);
    }
}

static void disable(struct pb_webhook_endpoint *ep, const char *reason)
{
    if (ep->disabled)
        return;
    ep->disabled = true;
    ep->vout->paused = true;
    PB_WARN("webhook endpoint disabled pipeline=%s output=%s endpoint=%s reason=\"%s\"",
            ep->conf->pipeline, ep->conf->output, ep->id, reason);
    save_state(ep, 1, reason);
    if (ep->conf->events_pipeline) {
        json_t *ev =
            json_pack("{s:s, s:{s:s, s:s, s:s, s:s}, s:s, s:I}", "type", "endpoint.disabled",
                      "endpoint", "id", ep->id, "url", ep->url, "pipeline", ep->conf->pipeline,
                      "output", ep->conf->output, "reason", reason, "at", (json_int_t)pb_now_ms());
        char *body = ev ? json_dumps(ev, JSON_COMPACT) : NULL;
        if (!body || pb_dispatcher_emit(ep->disp, ep->conf->events_pipeline, body) != 0)
            PB_ERROR("endpoint.disabled event not emitted endpoint=%s pipeline=%s", ep->id,
                     ep->conf->events_pipeline);
        free(body);
        json_decref(ev);
    }
}

static void ep_done_cb(void *arg, const struct pb_http_resp *resp)
{
    struct ep_attempt *a = arg;
    struct pb_webhook_endpoint *ep = a->ep;
    struct pb_delivery *d = a->d;
    free(a);
    struct pb_outcome o;
    char error[320];
    pb_outcome_from_http(resp, &o, error, sizeof(error));
    int64_t now = pb_now_ms();
    if (resp->status == 410) {
        disable(ep, "the endpoint answered 410 Gone");
    } else if (o.result == PB_RESULT_OK) {
        if (ep->failing_since) {
            ep->failing_since = 0;
            save_state(ep, -1, NULL);
        }
    } else if (!ep->failing_since) {
        ep->failing_since = now;
        save_state(ep, -1, NULL);
    } else if (now - ep->failing_since >= ep->conf->disable_after_ms) {
        char why[160];
        snprintf(why, sizeof(why), "failing without a success for %lld s (disable_after)",
                 (long long)((now - ep->failing_since) / 1000));
        disable(ep, why);
    }
    pb_delivery_done(d, &o);
}

static void ep_deliver(void *ctx, struct pb_delivery *d)
{
    struct pb_webhook_endpoint *ep = ctx;
    struct pb_outcome fail = {.result = PB_RESULT_RETRY, .retry_after_ms = -1};
    if (ep->gone) {
        fail.result = PB_RESULT_PERMANENT;
        fail.error = "endpoint deleted";
        pb_delivery_done(d, &fail);
        return;
    }
    int64_t now = pb_now_ms();
    char ts[24], attempt[16], sigs[1024];
    snprintf(ts, sizeof(ts), "%lld", (long long)(now / 1000));
    snprintf(attempt, sizeof(attempt), "%d", d->attempt);
    if (sign(ep, d->msg_id, ts, d->payload, d->len, now, sigs, sizeof(sigs)) != 0) {
        fail.result = PB_RESULT_PERMANENT;
        fail.error = "cannot sign: the endpoint has no valid secret";
        pb_delivery_done(d, &fail);
        return;
    }
    struct ep_attempt *a = malloc(sizeof(*a));
    if (!a) {
        fail.error = "out of memory";
        pb_delivery_done(d, &fail);
        return;
    }
    a->d = d;
    a->ep = ep;
    struct pb_http_header hdrs[] = {
        {"Content-Type", "application/json"},
        {"User-Agent", "patchbay/" PB_VERSION},
        {"webhook-id", d->msg_id},
        {"webhook-timestamp", ts},
        {"webhook-signature", sigs},
        {"X-Patchbay-Attempt", attempt},
    };
    struct pb_http_req req = {
        .method = "POST",
        .url = ep->url,
        .headers = hdrs,
        .nheaders = sizeof(hdrs) / sizeof(hdrs[0]),
        .body = d->payload,
        .len = d->len,
        .timeout_ms = ep->conf->timeout_ms,
        .connect_timeout_ms = ep->conf->connect_timeout_ms,
        .max_response = (size_t)ep->conf->max_response,
        .allow = ep->vout->allow,
    };
    if (!ep->conf->http || pb_http_client_send(ep->conf->http, &req, ep_done_cb, a) != 0) {
        free(a);
        fail.error = "could not start the request";
        pb_delivery_done(d, &fail);
    }
}

static const struct pb_output_plugin ep_plugin = {
    .name = "webhook-endpoint",
    .default_concurrency = 16,
    .deliver = ep_deliver,
};

/* ---- endpoints as virtual outputs ---------------------------------------------------- */

void pb__dispatcher_outputs_changed(struct pb_dispatcher *d);

static void ep_clear(struct pb_webhook_endpoint *ep)
{
    free(ep->url);
    ep->url = NULL;
    for (size_t i = 0; i < ep->nevents; i++)
        free(ep->events[i]);
    free(ep->events);
    ep->events = NULL;
    ep->nevents = 0;
    OPENSSL_cleanse(ep->secrets, sizeof(ep->secrets));
    ep->nsecrets = 0;
}

void pb_webhook_free_endpoint(struct pb_output *vout)
{
    struct pb_webhook_endpoint *ep = vout->ctx;
    if (!ep)
        return;
    ep_clear(ep);
    free(ep);
    vout->ctx = NULL;
}

static int set_events(struct pb_webhook_endpoint *ep, const char *const *items, size_t n)
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

static struct pb_output *vout_create(struct pb_dispatcher *d, struct pb_engine *e,
                                     struct pb_output *parent, const char *id)
{
    struct pb_output *v = calloc(1, sizeof(*v));
    struct pb_webhook_endpoint *ep = calloc(1, sizeof(*ep));
    size_t nl = strlen(parent->name) + strlen(id) + 2;
    char *name = malloc(nl);
    if (!v || !ep || !name)
        goto fail;
    snprintf(name, nl, "%s/%s", parent->name, id);
    struct pb_output **grown = parent->vouts;
    if (parent->nvouts == parent->vcap) {
        size_t cap = parent->vcap ? parent->vcap * 2 : 8;
        grown = malloc(cap * sizeof(*grown));
        if (!grown)
            goto fail;
        if (parent->nvouts)
            memcpy(grown, parent->vouts, parent->nvouts * sizeof(*grown));
        pthread_mutex_lock(&parent->vlock);
        struct pb_output **old = parent->vouts;
        parent->vouts = grown;
        parent->vcap = cap;
        pthread_mutex_unlock(&parent->vlock);
        free(old);
    }
    snprintf(ep->id, sizeof(ep->id), "%s", id);
    ep->conf = parent->ctx;
    ep->vout = v;
    ep->disp = d;
    ep->e = e;
    v->name = name;
    v->pl = parent->pl;
    v->plugin = &ep_plugin;
    v->ctx = ep;
    v->ctx_ready = true;
    v->common = parent->common; /* shallow: shared, never freed through v */
    v->common.rate_limit = (struct pb_rate){0};
    v->policy = parent->policy;
    v->allow = parent->allow;
    v->map_jq = parent->map_jq;
    v->concurrency = parent->concurrency;
    v->is_virtual = true;
    v->parent = parent;
    atomic_store(&v->spilled, true); /* page in whatever the store holds for it */
    v->sub = v->name + strlen(parent->name) + 1;
    v->disp = d;
    pthread_mutex_init(&v->vlock, NULL);
    pthread_mutex_init(&v->slock, NULL);
    pthread_mutex_lock(&parent->vlock);
    parent->vouts[parent->nvouts++] = v;
    pthread_mutex_unlock(&parent->vlock);
    pb__dispatcher_outputs_changed(d);
    return v;
fail:
    free(v);
    free(ep);
    free(name);
    return NULL;
}

static struct pb_output *vout_find(struct pb_output *parent, const char *id)
{
    for (size_t i = 0; i < parent->nvouts; i++) {
        struct pb_webhook_endpoint *ep = parent->vouts[i]->ctx;
        if (strcmp(ep->id, id) == 0)
            return parent->vouts[i];
    }
    return NULL;
}

int pb_webhook_start(struct pb_dispatcher *d, struct pb_output *o, struct pb_err *err)
{
    struct wh_conf *c = o->ctx;
    struct pb_engine *e = NULL;
    extern struct pb_engine *pb__dispatcher_engine(struct pb_dispatcher * d);
    e = pb__dispatcher_engine(d);
    for (size_t i = 0; i < c->nstatics; i++) {
        struct wh_static *st = &c->statics[i];
        struct pb_output *v = vout_create(d, e, o, st->id);
        if (!v)
            return pb_err_set(err, PB_ENOMEM, "out of memory");
        struct pb_webhook_endpoint *ep = v->ctx;
        ep->is_static = true;
        ep->url = strdup(st->url);
        if (!ep->url)
            return pb_err_set(err, PB_ENOMEM, "out of memory");
        if (st->secret && parse_secret(st->secret, &ep->secrets[ep->nsecrets]) == 0)
            ep->nsecrets++;
        for (size_t k = 0; k < st->secrets.n && ep->nsecrets < WH_MAX_SECRETS; k++)
            if (parse_secret(st->secrets.items[k], &ep->secrets[ep->nsecrets]) == 0)
                ep->nsecrets++;
        if (set_events(ep, (const char *const *)st->events.items, st->events.n))
            return pb_err_set(err, PB_ENOMEM, "out of memory");
        v->common.rate_limit = st->rate_limit;
    }
    return 0;
}

struct sync_ctx {
    struct pb_dispatcher *d;
    struct pb_engine *e;
    struct pb_output *o;
    bool *seen;
    size_t nseen;
};

static int apply_record(struct sync_ctx *sc, const struct pb_endpoint_rec *r)
{
    struct pb_output *v = vout_find(sc->o, r->id);
    if (!v) {
        v = vout_create(sc->d, sc->e, sc->o, r->id);
        if (!v)
            return PB_ENOMEM;
    }
    struct pb_webhook_endpoint *ep = v->ctx;
    if (ep->is_static) {
        PB_WARN("managed endpoint shadowed by a static one of the same id endpoint=%s", r->id);
        return 0;
    }
    char *url = strdup(r->url);
    if (!url)
        return PB_ENOMEM;
    free(ep->url);
    ep->url = url;
    /* secrets: [{"key": "whsec_...", "expires_at": ms|null}] newest first */
    json_t *sec = json_loads(r->secrets, 0, NULL);
    size_t n = 0, i;
    json_t *it;
    json_array_foreach(sec, i, it)
    {
        const char *k = json_string_value(json_object_get(it, "key"));
        if (n < WH_MAX_SECRETS && k && parse_secret(k, &ep->secrets[n]) == 0) {
            ep->secrets[n].expires_at = json_integer_value(json_object_get(it, "expires_at"));
            n++;
        }
    }
    json_decref(sec);
    ep->nsecrets = n;
    json_t *ev = json_loads(r->events ? r->events : "[]", 0, NULL);
    size_t ne = json_array_size(ev);
    const char **items = calloc(ne ? ne : 1, sizeof(*items));
    if (items) {
        for (i = 0; i < ne; i++) {
            const char *s = json_string_value(json_array_get(ev, i));
            items[i] = s ? s : "";
        }
        set_events(ep, items, ne);
        free(items);
    }
    json_decref(ev);
    struct pb_rate rate = {0};
    if (r->rate_limit && pb_parse_rate(r->rate_limit, &rate) == 0)
        v->common.rate_limit = rate;
    else
        v->common.rate_limit = (struct pb_rate){0};
    ep->gone = false;
    ep->failing_since = r->failing_since;
    ep->disabled = r->disabled;
    v->paused = r->disabled;
    for (size_t k = 0; k < sc->o->nvouts; k++)
        if (sc->o->vouts[k] == v && k < sc->nseen)
            sc->seen[k] = true;
    return 0;
}

static int sync_cb(void *arg, const struct pb_endpoint_rec *r)
{
    struct sync_ctx *sc = arg;
    if (strcmp(r->pipeline, sc->o->pl->name) != 0 || strcmp(r->output, sc->o->name) != 0)
        return 0;
    if (apply_record(sc, r) != 0)
        PB_ERROR("cannot load managed endpoint endpoint=%s (out of memory)", r->id);
    return 0;
}

/* The saved state of one static endpoint of o (arg). */
static int static_state_cb(void *arg, const struct pb_endpoint_rec *r)
{
    struct pb_output *o = arg;
    struct wh_conf *c = o->ctx;
    if (strcmp(r->pipeline, c->pipeline) != 0 || strcmp(r->output, c->output) != 0)
        return 0;
    struct pb_output *v = vout_find(o, r->id);
    struct pb_webhook_endpoint *ep = v ? v->ctx : NULL;
    /* Not while a change of ours is on its way to the store: it is newer. */
    if (!ep || !ep->is_static || atomic_load(&ep->state_unsaved) > 0)
        return 0;
    if (strcmp(r->url, ep->url) != 0) {
        /* The configuration points it elsewhere now: a fresh start. */
        if (r->disabled && !ep->disabled)
            PB_INFO("webhook endpoint enabled: its url changed since it was disabled "
                    "pipeline=%s output=%s endpoint=%s",
                    c->pipeline, c->output, ep->id);
        return 0;
    }
    ep->failing_since = r->failing_since;
    if (r->disabled != ep->disabled) {
        ep->disabled = r->disabled;
        v->paused = r->disabled;
        if (r->disabled)
            PB_WARN("webhook endpoint disabled pipeline=%s output=%s endpoint=%s reason=\"%s\" "
                    "(saved; enable it through the admin API)",
                    c->pipeline, c->output, ep->id, r->disabled_reason ? r->disabled_reason : "");
        else
            PB_INFO("webhook endpoint enabled pipeline=%s output=%s endpoint=%s", c->pipeline,
                    c->output, ep->id);
    }
    return 0;
}

void pb_webhook_sync(struct pb_dispatcher *d, struct pb_engine *e, struct pb_output *o)
{
    if (!pb_webhook_is(o))
        return;
    if (((struct wh_conf *)o->ctx)->nstatics) {
        struct pb_err err = {0};
        if (pb_store_static_states_load(e->store, static_state_cb, o, &err) != 0)
            PB_ERROR("cannot load the saved state of static endpoints error=\"%s\"", err.msg);
    }
    if (!pb_webhook_managed(o))
        return;
    /* Room for endpoints created during this sync as well. */
    size_t cap = o->nvouts + 1024;
    bool *seen = calloc(cap, sizeof(*seen));
    if (!seen)
        return;
    struct sync_ctx sc = {.d = d, .e = e, .o = o, .seen = seen, .nseen = cap};
    struct pb_err err = {0};
    if (pb_store_endpoints_load(e->store, sync_cb, &sc, &err) != 0) {
        PB_ERROR("cannot load managed endpoints error=\"%s\"", err.msg);
        free(seen);
        return;
    }
    for (size_t k = 0; k < o->nvouts && k < cap; k++) {
        struct pb_webhook_endpoint *ep = o->vouts[k]->ctx;
        if (!ep->is_static && !seen[k] && !ep->gone) {
            ep->gone = true;
            o->vouts[k]->paused = true;
            PB_INFO("webhook endpoint removed pipeline=%s output=%s endpoint=%s", o->pl->name,
                    o->name, ep->id);
        }
    }
    free(seen);
}

/* ---- fan-out ------------------------------------------------------------------------- */

struct fanout_op {
    struct pb_op op;
    struct pb_output *parent;
    struct pb_dispatcher *d;
    struct pb_msg *msg;
    size_t n;
    struct pb_output **outs;
    const char **names;
    unsigned char *unleased;
    int64_t *ids;
    char note[96];
};

static void fanout_done_cb(struct pb_op *op, void *arg)
{
    struct fanout_op *f = arg;
    if (op->status == 0) {
        atomic_fetch_add(&f->parent->delivered, 1);
        atomic_fetch_sub(&f->parent->backlog, 1);
    }
    if (op->status == 0 && f->n)
        pb_dispatcher_post_children(f->d, f->msg, f->outs, f->ids, f->unleased, f->n);
    else if (op->status)
        PB_ERROR("fan-out not recorded msg_id=%s error=%s (it is fanned out again after "
                 "restart)",
                 f->msg->id, pb_strerror(op->status));
    pb_msg_unref(f->msg);
    free(f->outs);
    free(f->names);
    free(f->unleased);
    free(f->ids);
    free(f);
}

int pb_webhook_fanout(struct pb_dispatcher *d, struct pb_engine *e, struct pb_output *o,
                      struct pb_msg *msg, int64_t delivery_id, int attempt, struct pb_err *err)
{
    struct wh_conf *c = o->ctx;
    jv in, outv[1];
    size_t n = 0;
    int rc = pb_jq_parse(msg->body, msg->len, &in, err);
    if (rc)
        return rc;
    rc = pb_jq_run(c->type_jq, in, outv, 1, &n, err);
    if (rc)
        return rc;
    if (n == 0 || jv_get_kind(outv[0]) != JV_KIND_STRING) {
        if (n)
            jv_free(outv[0]);
        return pb_err_set(err, PB_EJQ, "event_type did not produce a string");
    }
    char type[256];
    snprintf(type, sizeof(type), "%s", jv_string_value(outv[0]));
    jv_free(outv[0]);

    struct fanout_op *f = calloc(1, sizeof(*f));
    size_t cap = o->nvouts ? o->nvouts : 1;
    if (!f || !(f->outs = calloc(cap, sizeof(*f->outs))) ||
        !(f->names = calloc(cap, sizeof(*f->names))) || !(f->ids = calloc(cap, sizeof(*f->ids))) ||
        !(f->unleased = calloc(cap, 1))) {
        if (f) {
            free(f->outs);
            free(f->names);
            free(f->ids);
        }
        free(f);
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < o->nvouts; i++) {
        struct pb_output *v = o->vouts[i];
        struct pb_webhook_endpoint *ep = v->ctx;
        /* Disabled endpoints keep their deliveries, pending, until enabled. */
        if (ep->gone || !ep_subscribed(ep, type))
            continue;
        f->outs[f->n] = v;
        f->names[f->n] = v->sub;
        f->unleased[f->n] = pb__disp_spilled(v);
        f->n++;
    }
    snprintf(f->note, sizeof(f->note), "event %.40s fanned out to %zu endpoint%s", type, f->n,
             f->n == 1 ? "" : "s");
    f->d = d;
    f->parent = o;
    f->msg = pb_msg_ref(msg);
    f->op.kind = PB_OP_FANOUT;
    f->op.done_cb = fanout_done_cb;
    f->op.arg = f;
    f->op.u.fanout.delivery_id = delivery_id;
    f->op.u.fanout.attempt = attempt;
    f->op.u.fanout.now = pb_now_ms();
    f->op.u.fanout.n = f->n;
    f->op.u.fanout.subs = f->names;
    f->op.u.fanout.unleased = f->unleased;
    f->op.u.fanout.lease = pb_store_epoch(e->store);
    f->op.u.fanout.note = f->note;
    f->op.u.fanout.child_ids = f->ids;
    rc = pb_store_submit(e->store, &f->op);
    if (rc) {
        pb_msg_unref(f->msg);
        free(f->outs);
        free(f->names);
        free(f->unleased);
        free(f->ids);
        free(f);
        return pb_err_set(err, rc, "cannot record the fan-out: %s", pb_strerror(rc));
    }
    return 0;
}
