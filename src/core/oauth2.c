/* oauth2.c - OAuth2 token sources, the token thread's side: one access
 * token per token endpoint, client, scopes, audience and grant, shared by
 * every output, input and processor that names them (oauth2.h; the
 * registry and the users' calls are in oauth2_src.c).
 *
 * A token is asked for when a user needs one: none yet, it expired, it is
 * within its renewal margin (the users keep the old one meanwhile), or a
 * partner refused it with 401. One request per source is in flight at a
 * time; everyone else waits for its answer (pb_http_auth_wait) instead of
 * asking again. A failing endpoint is tried again after a growing, jittered
 * delay (or its Retry-After); users waiting meanwhile are told when.
 *
 * Refresh-token chains: a refresh token the server rotates is written to
 * the state store (scope "oauth2", key: the source's id) and the commit
 * waited for before the new access token is used or the new refresh token
 * is ever sent; at start the stored one is taken, unless the configured
 * refresh_token changed since it began that chain. If the store cannot take
 * it, the access token is used but no further refresh is made until it is
 * stored.
 *
 * Threads: header, wait, cancel and rejected run on any thread under the
 * source's lock. Requests, JWT signing and answers run on the token thread
 * (pb-oauth2), a loop of its own with its own HTTP client; the store's
 * writer posts persisted chains back to it. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "core/oauth2_int.h"
#include "core/retry.h"
#include "patchbay/pb_crypto.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_time.h"

#define BACKOFF_MAX_MS (5 * 60 * 1000)
#define TOKEN_RESPONSE_MAX (64 * 1024)
#define FORM_MAX (48 * 1024)

struct oauth2_thread pb__oauth2_thr = {.lock = PTHREAD_MUTEX_INITIALIZER};

bool pb__oauth2_running(void)
{
    pthread_mutex_lock(&pb__oauth2_thr.lock);
    bool r = pb__oauth2_thr.running;
    pthread_mutex_unlock(&pb__oauth2_thr.lock);
    return r;
}

/* Post to the token thread's loop while it exists. */
static int post_node(struct pb_loop_node *n, pb_loop_post_cb cb, void *arg)
{
    pthread_mutex_lock(&pb__oauth2_thr.lock);
    int rc =
        pb__oauth2_thr.loop ? pb_loop_post_node(pb__oauth2_thr.loop, n, cb, arg) : PB_ESHUTDOWN;
    pthread_mutex_unlock(&pb__oauth2_thr.lock);
    return rc;
}

/* ---- the request ----------------------------------------------------------------------------- */

struct fetch {
    struct pb_oauth2_src *s;
    int64_t started_at;
    char *body;
    size_t len;
    char authz[1024];
    struct pb_http_header hdrs[4];
    size_t nhdrs;
    char *old_refresh; /* what was sent: a different one back is a rotation */
};

static void fetch_free(struct fetch *f)
{
    if (!f)
        return;
    if (f->body) {
        OPENSSL_cleanse(f->body, f->len);
        free(f->body);
    }
    OPENSSL_cleanse(f->authz, sizeof(f->authz));
    pb__oauth2_free_secret(f->old_refresh);
    free(f);
}

static void fail(struct pb_oauth2_src *s, const char *why, int64_t retry_after_ms);
static void install(struct pb_oauth2_src *s, int64_t started_at, const char *access,
                    const char *type, int64_t expires_in_ms, const char *new_refresh, bool saved);

/* The client's credentials, as its auth_method wants them. */
static int client_auth(struct fetch *f, int64_t now, struct pb_err *err)
{
    struct pb_oauth2_src *s = f->s;
    switch (s->method) {
    case PB_OAUTH2_PRIVATE_KEY_JWT: {
        json_t *c =
            pb__jwt_claims(s->client_id, s->client_id, s->token_url, NULL, now, s->assertion_ms);
        char *jwt = c ? pb__jwt_sign(&s->key, s->key_id, c, err) : NULL;
        json_decref(c);
        if (!jwt)
            return err->code ? err->code : PB_ENOMEM;
        int rc = pb__form_add(&f->body, &f->len, "client_id", s->client_id);
        rc = rc ? rc
                : pb__form_add(&f->body, &f->len, "client_assertion_type",
                               "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
        rc = rc ? rc : pb__form_add(&f->body, &f->len, "client_assertion", jwt);
        free(jwt);
        return rc;
    }
    case PB_OAUTH2_CLIENT_SECRET_POST:
        if (!s->client_secret)
            return pb__form_add(&f->body, &f->len, "client_id", s->client_id);
        if (pb__form_add(&f->body, &f->len, "client_id", s->client_id))
            return PB_ENOMEM;
        return pb__form_add(&f->body, &f->len, "client_secret", s->client_secret);
    default: {
        if (!s->client_secret) /* a public client names itself */
            return pb__form_add(&f->body, &f->len, "client_id", s->client_id);
        /* RFC 6749 2.3.1: each form-encoded, then base64. */
        char *pair = NULL;
        size_t plen = 0;
        int rc = pb__form_esc(&pair, &plen, s->client_id);
        if (!rc) {
            char *p = realloc(pair, plen + 2);
            rc = p ? 0 : PB_ENOMEM;
            if (p) {
                pair = p;
                pair[plen++] = ':';
                pair[plen] = 0;
            }
        }
        rc = rc ? rc : pb__form_esc(&pair, &plen, s->client_secret);
        if (!rc) {
            memcpy(f->authz, "Basic ", 6);
            if (!pb_base64_encode(pair, plen, false, f->authz + 6, sizeof(f->authz) - 6))
                rc = pb_err_set(err, PB_ETOOBIG, "client_id and client_secret are too long");
            else
                f->hdrs[f->nhdrs++] = (struct pb_http_header){"Authorization", f->authz};
        }
        if (pair) {
            OPENSSL_cleanse(pair, plen);
            free(pair);
        }
        return rc;
    }
    }
}

static int build_form(struct fetch *f, int64_t now, struct pb_err *err)
{
    struct pb_oauth2_src *s = f->s;
    int rc = 0;
    switch (s->grant) {
    case PB_OAUTH2_REFRESH_TOKEN:
        rc = pb__form_add(&f->body, &f->len, "grant_type", "refresh_token");
        rc = rc ? rc : pb__form_add(&f->body, &f->len, "refresh_token", f->old_refresh);
        break;
    case PB_OAUTH2_JWT_BEARER: {
        const char *aud = pb_strmap_get(&s->claims, "aud");
        const char *sub = pb_strmap_get(&s->claims, "sub");
        const char *iss = pb_strmap_get(&s->claims, "iss");
        json_t *c = pb__jwt_claims(iss ? iss : s->client_id, sub ? sub : s->client_id,
                                   aud ? aud : s->token_url, &s->claims, now, s->assertion_ms);
        char *jwt = c ? pb__jwt_sign(&s->key, s->key_id, c, err) : NULL;
        json_decref(c);
        if (!jwt)
            return err->code ? err->code : PB_ENOMEM;
        rc = pb__form_add(&f->body, &f->len, "grant_type",
                          "urn:ietf:params:oauth:grant-type:jwt-bearer");
        rc = rc ? rc : pb__form_add(&f->body, &f->len, "assertion", jwt);
        free(jwt);
        break;
    }
    default:
        rc = pb__form_add(&f->body, &f->len, "grant_type", "client_credentials");
    }
    if (!rc && s->scope)
        rc = pb__form_add(&f->body, &f->len, "scope", s->scope);
    if (!rc && s->audience)
        rc = pb__form_add(&f->body, &f->len, "audience", s->audience);
    for (size_t i = 0; !rc && i < s->params.n; i++)
        rc = pb__form_add(&f->body, &f->len, s->params.keys[i], s->params.vals[i]);
    /* jwt_bearer needs no client credentials unless some are configured. */
    if (!rc && (s->grant != PB_OAUTH2_JWT_BEARER || s->client_secret ||
                s->method == PB_OAUTH2_PRIVATE_KEY_JWT))
        rc = client_auth(f, now, err);
    if (!rc && f->len > FORM_MAX)
        rc = pb_err_set(err, PB_ETOOBIG, "token request larger than %d bytes", FORM_MAX);
    if (rc && !err->msg[0])
        pb_err_set(err, rc, "%s", pb_strerror(rc));
    return rc;
}

/* Printable excerpt of what the endpoint said, without quotes or controls. */
static void excerpt(const char *in, char *out, size_t cap)
{
    size_t n = 0;
    for (; in && *in && n + 1 < cap; in++) {
        unsigned char c = (unsigned char)*in;
        out[n++] = (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? (char)c : ' ';
    }
    out[n] = 0;
}

static bool token_chars_ok(const char *t)
{
    for (; *t; t++)
        if ((unsigned char)*t <= 0x20 || (unsigned char)*t >= 0x7f)
            return false;
    return true;
}

static int64_t json_ms(json_t *v)
{
    if (json_is_integer(v))
        return json_integer_value(v) > 0 ? json_integer_value(v) * 1000 : -1;
    if (json_is_real(v))
        return json_real_value(v) > 0 ? (int64_t)(json_real_value(v) * 1000) : -1;
    if (json_is_string(v)) {
        int64_t n;
        if (pb_parse_int(json_string_value(v), &n) == 0 && n > 0)
            return n * 1000;
    }
    return -1;
}

struct persist {
    struct pb_op op;
    struct pb_kv_put kv;
    struct pb_loop_node node;
    struct pb_oauth2_src *s;
    int64_t started_at;
    char *access, *type, *refresh;
    int64_t expires_in_ms;
    char *value;
};

static void persist_free(struct persist *p)
{
    pb__oauth2_free_secret(p->access);
    free(p->type);
    pb__oauth2_free_secret(p->refresh);
    pb__oauth2_free_secret(p->value);
    free(p);
}

/* Token thread: the chain is stored (or not): use it. */
static void persist_post(void *arg, int status)
{
    struct persist *p = arg;
    struct pb_oauth2_src *s = p->s;
    bool saved = p->op.status == 0 && status == PB_LOOP_RUN;
    if (!saved && status == PB_LOOP_RUN) {
        char safe[160];
        PB_ERROR("oauth2 refresh token not stored token_url=%s client_id=%s error=\"%s\": the new "
                 "access token is used, no further refresh until the store takes it",
                 s->token_url, s->client_id,
                 pb_log_value(pb_strerror(p->op.status), safe, sizeof(safe)));
        if (pb__oauth2_thr.tick && !pb_loop_timer_armed(pb__oauth2_thr.tick))
            pb_loop_timer_start(pb__oauth2_thr.tick, UNSAVED_RETRY_MS);
    }
    if (status == PB_LOOP_RUN)
        install(s, p->started_at, p->access, p->type, p->expires_in_ms, p->refresh, saved);
    persist_free(p);
    pb__oauth2_put(s);
}

/* Writer or syncer thread. */
static void persist_done_cb(struct pb_op *op, void *arg)
{
    (void)op;
    struct persist *p = arg;
    if (post_node(&p->node, persist_post, p) != 0) {
        /* Stopping: what was stored stays stored. */
        struct pb_oauth2_src *s = p->s;
        persist_free(p);
        pb__oauth2_put(s);
    }
}

/* The chain's record; in a cluster with the access token that came with
 * it (oauth2_share.c). */
static char *chain_value(const struct pb_oauth2_src *s, const char *refresh, const char *type,
                         const char *access, int64_t started_at, int64_t expires_in_ms)
{
    json_t *v = json_pack("{s:s, s:s, s:I}", "refresh_token", refresh, "seed", s->seed,
                          "updated_at", (json_int_t)pb_now_ms());
    if (v && pb__oauth2_shared()) {
        int64_t life = expires_in_ms > 0 ? expires_in_ms : s->default_lifetime_ms;
        char hdr[PB_HTTP_AUTH_VALUE_MAX + 48];
        snprintf(hdr, sizeof(hdr), "%s %s", type, access);
        if (pb__oauth2_record_add_access(v, hdr, started_at, started_at + life) != 0) {
            json_decref(v);
            v = NULL;
        }
        OPENSSL_cleanse(hdr, sizeof(hdr));
    }
    char *txt = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    return txt;
}

/* Store a rotated refresh token, then install what came with it. */
static int persist(struct pb_oauth2_src *s, int64_t started_at, const char *access,
                   const char *type, int64_t expires_in_ms, const char *refresh)
{
    struct persist *p = calloc(1, sizeof(*p));
    if (!p)
        return PB_ENOMEM;
    p->s = s;
    p->started_at = started_at;
    p->expires_in_ms = expires_in_ms;
    p->access = strdup(access);
    p->type = strdup(type);
    p->refresh = strdup(refresh);
    p->value = chain_value(s, refresh, type, access, started_at, expires_in_ms);
    if (!p->access || !p->type || !p->refresh || !p->value) {
        persist_free(p);
        return PB_ENOMEM;
    }
    p->kv = (struct pb_kv_put){
        .scope = KV_SCOPE, .key = s->id, .value = p->value, .len = strlen(p->value)};
    p->op = (struct pb_op){.kind = PB_OP_KV, .done_cb = persist_done_cb, .arg = p};
    p->op.u.kv = (struct pb_op_kv){.n = 1, .kv = &p->kv, .now = pb_now_ms()};
    src_ref(s);
    int rc = pb_store_submit(pb__oauth2_thr.store, &p->op);
    if (rc) {
        persist_free(p);
        src_unref(s); /* the caller holds one */
    }
    return rc;
}

/* Token thread: the endpoint answered (or not). */
static void fetch_done_cb(void *arg, const struct pb_http_resp *resp)
{
    struct fetch *f = arg;
    struct pb_oauth2_src *s = f->s;
    char why[256], ex[120];
    json_t *j = NULL;
    if (resp->status == 0) {
        excerpt(resp->error, ex, sizeof(ex));
        snprintf(why, sizeof(why), "token endpoint unreachable: %s", ex);
        fail(s, why, -1);
        goto out;
    }
    json_error_t je;
    j = resp->body_len ? json_loadb(resp->body, resp->body_len, JSON_REJECT_DUPLICATES, &je) : NULL;
    if (resp->status < 200 || resp->status > 299) {
        const char *code = json_string_value(json_object_get(j, "error"));
        const char *desc = json_string_value(json_object_get(j, "error_description"));
        char c[64] = "", d[100] = "";
        excerpt(code, c, sizeof(c));
        excerpt(desc, d, sizeof(d));
        snprintf(why, sizeof(why), "token endpoint answered HTTP %d%s%s%s%s%s", resp->status,
                 c[0] ? ": " : "", c, d[0] ? " (" : "", d, d[0] ? ")" : "");
        if (s->grant == PB_OAUTH2_REFRESH_TOKEN && code && strcmp(code, "invalid_grant") == 0)
            snprintf(why + strlen(why), sizeof(why) - strlen(why),
                     "; the refresh token was refused: authorise again and set "
                     "oauth2.refresh_token");
        fail(s, why, resp->status == 429 || resp->status >= 500 ? resp->retry_after_ms : -1);
        goto out;
    }
    const char *access = json_string_value(json_object_get(j, "access_token"));
    const char *type = json_string_value(json_object_get(j, "token_type"));
    const char *refresh = json_string_value(json_object_get(j, "refresh_token"));
    int64_t expires_in = json_ms(json_object_get(j, "expires_in"));
    if (!j || !access || !*access) {
        snprintf(why, sizeof(why), "token endpoint answered HTTP %d without an access_token",
                 resp->status);
        fail(s, why, -1);
        goto out;
    }
    if (strlen(access) > PB_HTTP_AUTH_VALUE_MAX || !token_chars_ok(access)) {
        snprintf(why, sizeof(why), "the access token is longer than %d bytes or not printable",
                 PB_HTTP_AUTH_VALUE_MAX);
        fail(s, why, -1);
        goto out;
    }
    if (!type || strcasecmp(type, "bearer") == 0) {
        type = "Bearer";
    } else {
        char t[40];
        excerpt(type, t, sizeof(t));
        snprintf(why, sizeof(why), "token_type \"%s\" is not supported (only Bearer)", t);
        fail(s, why, -1);
        goto out;
    }
    if (refresh && (!*refresh || !token_chars_ok(refresh) || strlen(refresh) > 8192))
        refresh = NULL;
    if (s->grant == PB_OAUTH2_REFRESH_TOKEN && refresh &&
        (!f->old_refresh || strcmp(refresh, f->old_refresh) != 0)) {
        /* Rotated: stored before anything uses it. */
        if (persist(s, f->started_at, access, type, expires_in, refresh) != 0) {
            PB_ERROR("oauth2 refresh token not stored token_url=%s client_id=%s: the new access "
                     "token is used, no further refresh until the store takes it",
                     s->token_url, s->client_id);
            install(s, f->started_at, access, type, expires_in, refresh, false);
            if (pb__oauth2_thr.tick && !pb_loop_timer_armed(pb__oauth2_thr.tick))
                pb_loop_timer_start(pb__oauth2_thr.tick, UNSAVED_RETRY_MS);
        }
        goto out;
    }
    install(s, f->started_at, access, type, expires_in, NULL, true);
    pb__oauth2_publish(s); /* the other nodes of a cluster take it */
out:
    json_decref(j);
    fetch_free(f);
    pb__oauth2_put(s);
}

/* Token thread: ask for a token now. */
static void fetch_start(void *arg, int status)
{
    struct pb_oauth2_src *s = arg;
    struct pb_err err = {0};
    if (status != PB_LOOP_RUN) {
        pthread_mutex_lock(&s->lock);
        s->fetching = false;
        struct pb_http_auth_waiter *w = pb__oauth2_take_waiters(s);
        pthread_mutex_unlock(&s->lock);
        pb__oauth2_notify_all(w, PB_ESHUTDOWN, 0);
        pb__oauth2_put(s);
        return;
    }
    struct fetch *f = calloc(1, sizeof(*f));
    if (!f) {
        fail(s, "out of memory", -1);
        pb__oauth2_put(s);
        return;
    }
    f->s = s;
    f->started_at = pb_now_ms();
    if (s->grant == PB_OAUTH2_REFRESH_TOKEN) {
        pthread_mutex_lock(&s->lock);
        f->old_refresh = s->refresh ? strdup(s->refresh) : NULL;
        pthread_mutex_unlock(&s->lock);
        if (!f->old_refresh) {
            fetch_free(f);
            fail(s, "out of memory", -1);
            pb__oauth2_put(s);
            return;
        }
    }
    f->hdrs[f->nhdrs++] =
        (struct pb_http_header){"Content-Type", "application/x-www-form-urlencoded"};
    f->hdrs[f->nhdrs++] = (struct pb_http_header){"Accept", "application/json"};
    f->hdrs[f->nhdrs++] = (struct pb_http_header){"User-Agent", "patchbay/" PB_VERSION};
    if (build_form(f, f->started_at, &err) != 0) {
        char why[PB_ERR_MSG_MAX + 32];
        snprintf(why, sizeof(why), "token request not built: %s", err.msg);
        fetch_free(f);
        fail(s, why, -1);
        pb__oauth2_put(s);
        return;
    }
    pthread_mutex_lock(&s->lock);
    s->requests++;
    pthread_mutex_unlock(&s->lock);
    struct pb_http_req req = {
        .method = "POST",
        .url = s->token_url,
        .headers = f->hdrs,
        .nheaders = f->nhdrs,
        .body = f->body,
        .len = f->len,
        .timeout_ms = s->timeout_ms,
        .connect_timeout_ms = s->timeout_ms,
        .max_response = TOKEN_RESPONSE_MAX,
        .allow = s->allow,
    };
    if (pb_http_client_send(pb__oauth2_thr.http, &req, fetch_done_cb, f) != 0) {
        fetch_free(f);
        fail(s, "token request could not be started", -1);
        pb__oauth2_put(s);
    }
}

/* Lock held: start a request unless one is on its way, the endpoint is
 * backing off, or a rotated refresh token is not stored yet. */
void pb__oauth2_maybe_fetch(struct pb_oauth2_src *s, int64_t now)
{
    if (s->fetching || now < s->next_try_at || s->unsaved)
        return;
    pthread_mutex_lock(&pb__oauth2_thr.lock);
    int rc = pb__oauth2_thr.running ? 0 : PB_ESHUTDOWN;
    if (!rc) {
        src_ref(s); /* the caller holds one */
        rc = pb_loop_post(pb__oauth2_thr.loop, fetch_start, s);
        if (rc)
            src_unref(s);
    }
    pthread_mutex_unlock(&pb__oauth2_thr.lock);
    if (!rc)
        s->fetching = true;
}

/* Token thread: a new token. */
static void install(struct pb_oauth2_src *s, int64_t started_at, const char *access,
                    const char *type, int64_t expires_in_ms, const char *new_refresh, bool saved)
{
    size_t n = strlen(type) + 1 + strlen(access) + 1;
    char *tok = malloc(n);
    char *ref = new_refresh ? strdup(new_refresh) : NULL;
    if (!tok || (new_refresh && !ref)) {
        pb__oauth2_free_secret(tok);
        pb__oauth2_free_secret(ref);
        fail(s, "out of memory", -1);
        return;
    }
    snprintf(tok, n, "%s %s", type, access);
    int64_t life = expires_in_ms > 0 ? expires_in_ms : s->default_lifetime_ms;
    pthread_mutex_lock(&s->lock);
    bool was_failing = s->fails > 0;
    pb__oauth2_free_secret(s->token);
    s->token = tok;
    s->gen++;
    s->invalid = false;
    s->obtained_at = started_at;
    s->expires_at = started_at + life;
    s->margin_ms = pb__oauth2_margin(life, s->refresh_before_ms);
    if (ref) {
        pb__oauth2_free_secret(s->refresh);
        s->refresh = ref;
        s->unsaved = !saved;
    }
    s->fetching = false;
    s->fails = 0;
    s->failing_since = 0;
    s->next_try_at = 0;
    s->error[0] = 0;
    struct pb_http_auth_waiter *w = pb__oauth2_take_waiters(s);
    pthread_mutex_unlock(&s->lock);
    if (was_failing)
        PB_INFO("oauth2 token endpoint answering again token_url=%s client_id=%s", s->token_url,
                s->client_id);
    PB_DEBUG("oauth2 token obtained token_url=%s client_id=%s expires_in_ms=%lld", s->token_url,
             s->client_id, (long long)life);
    pb__oauth2_notify_all(w, 0, 0);
}

/* Token thread: the request failed; back off and tell the waiters. */
static void fail(struct pb_oauth2_src *s, const char *why, int64_t retry_after_ms)
{
    int64_t now = pb_now_ms();
    pthread_mutex_lock(&s->lock);
    s->fetching = false;
    s->failures++;
    s->fails++;
    if (!s->failing_since)
        s->failing_since = now;
    int64_t delay = pb__oauth2_backoff(s->fails, pb_rand64());
    if (retry_after_ms > delay)
        delay = retry_after_ms < BACKOFF_MAX_MS ? retry_after_ms : BACKOFF_MAX_MS;
    s->next_try_at = now + delay;
    bool changed = strcmp(s->error, why) != 0;
    snprintf(s->error, sizeof(s->error), "%s", why);
    struct pb_http_auth_waiter *w = pb__oauth2_take_waiters(s);
    pthread_mutex_unlock(&s->lock);
    pthread_mutex_lock(&pb__oauth2_thr.lock);
    bool running = pb__oauth2_thr.running;
    pthread_mutex_unlock(&pb__oauth2_thr.lock);
    if (changed && running) {
        char safe[300];
        PB_WARN("oauth2 token request failed token_url=%s client_id=%s retry_in_ms=%lld "
                "error=\"%s\"",
                s->token_url, s->client_id, (long long)delay,
                pb_log_value(why, safe, sizeof(safe)));
    }
    pb__oauth2_notify_all(w, PB_EAGAIN, delay);
}

/* Token thread: store unsaved chains again. */
static void tick_cb(struct pb_loop_timer *t, void *arg)
{
    (void)arg;
    bool again = false;
    pthread_mutex_lock(&pb__oauth2_reg_lock);
    for (struct pb_oauth2_src *s = pb__oauth2_sources; s; s = s->next) {
        pthread_mutex_lock(&s->lock);
        bool todo = s->unsaved && s->refresh && s->token;
        char *access = todo ? strdup(s->token + strlen("Bearer ")) : NULL;
        char *refresh = todo ? strdup(s->refresh) : NULL;
        int64_t started = s->obtained_at, life = s->expires_at - s->obtained_at;
        if (todo)
            s->unsaved = false; /* set again if this store fails too */
        pthread_mutex_unlock(&s->lock);
        if (!todo)
            continue;
        /* s stays linked (and alive) while pb__oauth2_reg_lock is held. */
        int rc =
            access && refresh ? persist(s, started, access, "Bearer", life, refresh) : PB_ENOMEM;
        if (rc) {
            pthread_mutex_lock(&s->lock);
            s->unsaved = true;
            pthread_mutex_unlock(&s->lock);
            again = true;
        }
        pb__oauth2_free_secret(access);
        pb__oauth2_free_secret(refresh);
    }
    pthread_mutex_unlock(&pb__oauth2_reg_lock);
    if (again)
        pb_loop_timer_start(t, UNSAVED_RETRY_MS);
}

/* ---- the token thread -------------------------------------------------------------------------
 */

static int load_cb(void *arg, const char *key, const void *value, size_t len)
{
    (void)arg;
    json_error_t je;
    json_t *v = json_loadb(value, len, 0, &je);
    const char *rt = json_string_value(json_object_get(v, "refresh_token"));
    const char *seed = json_string_value(json_object_get(v, "seed"));
    for (struct pb_oauth2_src *s = pb__oauth2_sources; json_is_object(v) && s; s = s->next) {
        if (strcmp(s->id, key) != 0)
            continue;
        /* A token another node of the cluster (or this one before a
         * restart) obtained and shared, still valid. */
        pb__oauth2_take(s, v, false);
        if (!rt || !seed || s->grant != PB_OAUTH2_REFRESH_TOKEN)
            continue;
        if (strcmp(seed, s->seed) != 0) {
            PB_INFO("oauth2 refresh_token changed in the configuration: a new chain starts "
                    "token_url=%s client_id=%s",
                    s->token_url, s->client_id);
            continue;
        }
        char *copy = strdup(rt);
        if (!copy)
            continue;
        pthread_mutex_lock(&s->lock);
        pb__oauth2_free_secret(s->refresh);
        s->refresh = copy;
        pthread_mutex_unlock(&s->lock);
        PB_DEBUG("oauth2 refresh token read back from the store token_url=%s client_id=%s",
                 s->token_url, s->client_id);
    }
    json_decref(v);
    return 0;
}

static void *thread_main(void *arg)
{
    (void)arg;
    pb_loop_run(pb__oauth2_thr.loop);
    return NULL;
}

int pb__http_auth_start(struct pb_store *store, struct pb_err *err)
{
    pthread_mutex_lock(&pb__oauth2_reg_lock);
    bool any = pb__oauth2_sources != NULL;
    int rc = any && store ? pb_store_kv_load(store, KV_SCOPE, load_cb, NULL, err) : 0;
    pthread_mutex_unlock(&pb__oauth2_reg_lock);
    if (rc || !any)
        return rc;
    pb__oauth2_thr.store = store;
    pb__oauth2_thr.loop = pb_loop_create(err);
    if (!pb__oauth2_thr.loop)
        return err->code ? err->code : PB_ENOMEM;
    pb__oauth2_thr.http = pb_http_client_create(pb__oauth2_thr.loop, NULL, err);
    pb__oauth2_thr.tick = pb_loop_timer_create(pb__oauth2_thr.loop, tick_cb, NULL);
    if (!pb__oauth2_thr.http || !pb__oauth2_thr.tick)
        goto fail;
    if (pthread_create(&pb__oauth2_thr.thread, NULL, thread_main, NULL) != 0) {
        pb_err_set(err, PB_EINTERNAL, "cannot start the oauth2 token thread");
        goto fail;
    }
    pthread_setname_np(pb__oauth2_thr.thread, "pb-oauth2");
    pb__oauth2_thr.thread_started = true;
    pthread_mutex_lock(&pb__oauth2_thr.lock);
    pb__oauth2_thr.running = true;
    pthread_mutex_unlock(&pb__oauth2_thr.lock);
    return 0;
fail:
    pb_loop_timer_destroy(pb__oauth2_thr.tick);
    pb_http_client_destroy(pb__oauth2_thr.http);
    pb_loop_destroy(pb__oauth2_thr.loop);
    pb__oauth2_thr.tick = NULL;
    pb__oauth2_thr.http = NULL;
    pb__oauth2_thr.loop = NULL;
    return err->code ? err->code : PB_ENOMEM;
}

static void fail_waiters(void *arg, struct pb_oauth2_src *s)
{
    (void)arg;
    pthread_mutex_lock(&s->lock);
    struct pb_http_auth_waiter *w = pb__oauth2_take_waiters(s);
    pthread_mutex_unlock(&s->lock);
    pb__oauth2_notify_all(w, PB_ESHUTDOWN, 0);
}

static void stop_on_thread(void *arg, int status)
{
    (void)arg;
    (void)status;
    /* Requests in flight end (their callbacks fail them), then the loop. */
    pb_http_client_destroy(pb__oauth2_thr.http);
    pb__oauth2_thr.http = NULL;
    pb_loop_timer_destroy(pb__oauth2_thr.tick);
    pb__oauth2_thr.tick = NULL;
    pb_loop_stop(pb__oauth2_thr.loop);
}

void pb__http_auth_stop(void)
{
    pthread_mutex_lock(&pb__oauth2_thr.lock);
    bool was = pb__oauth2_thr.running;
    pb__oauth2_thr.running = false;
    pthread_mutex_unlock(&pb__oauth2_thr.lock);
    if (!was)
        return;
    if (pb_loop_post(pb__oauth2_thr.loop, stop_on_thread, NULL) != 0)
        pb_loop_stop(pb__oauth2_thr.loop);
    if (pb__oauth2_thr.thread_started)
        pthread_join(pb__oauth2_thr.thread, NULL);
    pb__oauth2_thr.thread_started = false;
    pthread_mutex_lock(&pb__oauth2_thr.lock);
    struct pb_loop *loop = pb__oauth2_thr.loop;
    pb__oauth2_thr.loop = NULL; /* the store's late callbacks find no loop */
    pthread_mutex_unlock(&pb__oauth2_thr.lock);
    pb_loop_close(loop);
    pb_loop_destroy(loop); /* runs what was still posted, cancelled */
    pb__oauth2_each(fail_waiters, NULL);
    pb__oauth2_thr.store = NULL;
}
