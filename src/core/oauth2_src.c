/* oauth2_src.c - OAuth2 token sources, the users' side (oauth2.h): the
 * registry that shares one source among every user of the same token
 * endpoint, client, scopes, audience and grant; and the calls users make
 * from any thread (header, wait, cancel, rejected) under the source's
 * lock. Requests themselves run on the token thread (oauth2.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "core/oauth2_int.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_time.h"

#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS (5 * 60 * 1000)
#define REJECT_YOUNG_MS 5000   /* a token refused this young, twice in a row, backs off */
#define REJECT_FORGET_MS 30000 /* ... within this long */

pthread_mutex_t pb__oauth2_reg_lock = PTHREAD_MUTEX_INITIALIZER;
struct pb_oauth2_src *pb__oauth2_sources;

/* ---- small pieces ------------------------------------------------------------------------- */

int64_t pb__oauth2_margin(int64_t lifetime_ms, int64_t refresh_before_ms)
{
    int64_t tenth = lifetime_ms / 10;
    return refresh_before_ms < tenth ? refresh_before_ms : tenth;
}

int64_t pb__oauth2_backoff(int n, uint64_t rnd)
{
    int64_t ceil = BACKOFF_MIN_MS;
    for (int i = 1; i < n && ceil < BACKOFF_MAX_MS; i++)
        ceil *= 2;
    if (ceil > BACKOFF_MAX_MS)
        ceil = BACKOFF_MAX_MS;
    /* Half fixed, half jitter: never hammer, never all at once. */
    return ceil / 2 + (int64_t)(rnd % (uint64_t)(ceil / 2 + 1));
}

static bool unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

/* Form-encode s (space as '+'), appended to *buf. */
int pb__form_esc(char **buf, size_t *len, const char *s)
{
    size_t need = *len + 3 * strlen(s) + 1;
    char *b = realloc(*buf, need);
    if (!b)
        return PB_ENOMEM;
    *buf = b;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (unreserved(*p))
            b[(*len)++] = (char)*p;
        else if (*p == ' ')
            b[(*len)++] = '+';
        else
            *len += (size_t)snprintf(b + *len, 4, "%%%02X", *p);
    }
    b[*len] = 0;
    return 0;
}

int pb__form_add(char **buf, size_t *len, const char *name, const char *value)
{
    if (*len) {
        char *b = realloc(*buf, *len + 2);
        if (!b)
            return PB_ENOMEM;
        *buf = b;
        b[(*len)++] = '&';
        b[*len] = 0;
    }
    if (pb__form_esc(buf, len, name))
        return PB_ENOMEM;
    char *b = realloc(*buf, *len + 2);
    if (!b)
        return PB_ENOMEM;
    *buf = b;
    b[(*len)++] = '=';
    b[*len] = 0;
    return pb__form_esc(buf, len, value);
}

static void sha256_hex(const char *const *parts, size_t n, char out[65])
{
    unsigned char md[32];
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    bool ok = c && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1;
    for (size_t i = 0; ok && i < n; i++) {
        const char *p = parts[i] ? parts[i] : "";
        /* Length-prefixed: no two lists of parts hash alike. */
        char lenbuf[24];
        int l = snprintf(lenbuf, sizeof(lenbuf), "%zu:", strlen(p));
        ok = EVP_DigestUpdate(c, lenbuf, (size_t)l) == 1 &&
             EVP_DigestUpdate(c, p, strlen(p)) == 1 && EVP_DigestUpdate(c, parts[i] ? "+" : "-", 1);
    }
    unsigned int mdlen = 0;
    ok = ok && EVP_DigestFinal_ex(c, md, &mdlen) == 1;
    EVP_MD_CTX_free(c);
    if (!ok)
        memset(md, 0, sizeof(md));
    for (size_t i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

void pb__oauth2_free_secret(char *s)
{
    if (!s)
        return;
    OPENSSL_cleanse(s, strlen(s));
    free(s);
}

const char *pb__oauth2_grant_name(int g)
{
    switch (g) {
    case PB_OAUTH2_REFRESH_TOKEN:
        return "refresh_token";
    case PB_OAUTH2_JWT_BEARER:
        return "jwt_bearer";
    default:
        return "client_credentials";
    }
}

/* ---- waiters --------------------------------------------------------------------------------- */

static void waiter_run(void *arg, int status)
{
    struct pb_http_auth_waiter *w = arg;
    w->cb(w->arg, status == PB_LOOP_CANCELLED ? PB_ESHUTDOWN : w->status, w->retry_in_ms);
}

/* Tell w (taken off the list, or never on it). */
int pb__oauth2_notify(struct pb_http_auth_waiter *w, int status, int64_t retry_in)
{
    w->queued = false;
    w->status = status;
    w->retry_in_ms = retry_in;
    if (!w->loop) {
        /* A blocking waiter (http_auth.c): its cb wakes it. */
        w->cb(w->arg, status, retry_in);
        return 0;
    }
    return pb_loop_post_node(w->loop, &w->node, waiter_run, w);
}

/* Take the whole list (lock held); notify after unlocking. */
struct pb_http_auth_waiter *pb__oauth2_take_waiters(struct pb_oauth2_src *s)
{
    struct pb_http_auth_waiter *w = s->wait_head;
    s->wait_head = s->wait_tail = NULL;
    for (struct pb_http_auth_waiter *x = w; x; x = x->next)
        x->queued = false;
    return w;
}

void pb__oauth2_notify_all(struct pb_http_auth_waiter *w, int status, int64_t retry_in)
{
    while (w) {
        struct pb_http_auth_waiter *next = w->next;
        pb__oauth2_notify(w, status, retry_in);
        w = next;
    }
}

/* ---- the interface ----------------------------------------------------------------------------
 */

int pb__oauth2_header(struct pb_oauth2_src *s, struct pb_http_auth_ticket *t)
{
    int64_t now = pb_now_ms();
    int rc;
    pthread_mutex_lock(&s->lock);
    if (s->token && !s->invalid && now < s->expires_at) {
        snprintf(t->value, sizeof(t->value), "%s", s->token);
        t->name = "Authorization";
        t->gen = s->gen;
        if (now >= s->expires_at - s->margin_ms)
            pb__oauth2_maybe_fetch(s, now);
        rc = 0;
    } else {
        pb__oauth2_maybe_fetch(s, now);
        rc = pb__oauth2_running() ? PB_EAGAIN : PB_ESHUTDOWN;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int pb__oauth2_wait(struct pb_oauth2_src *s, struct pb_http_auth_waiter *w, struct pb_loop *loop,
                    pb_http_auth_cb cb, void *arg)
{
    int64_t now = pb_now_ms();
    w->loop = loop;
    w->cb = cb;
    w->arg = arg;
    w->prev = w->next = NULL;
    w->queued = false;
    pthread_mutex_lock(&s->lock);
    bool running = pb__oauth2_running();
    int rc = 0;
    if (!running) {
        rc = PB_ESHUTDOWN;
    } else if (s->token && !s->invalid && now < s->expires_at) {
        rc = pb__oauth2_notify(w, 0, 0);
    } else {
        pb__oauth2_maybe_fetch(s, now);
        if (!s->fetching) {
            /* Backing off (or a chain waiting for the store): say until when. */
            int64_t in = s->next_try_at > now ? s->next_try_at - now : UNSAVED_RETRY_MS;
            rc = pb__oauth2_notify(w, PB_EAGAIN, in);
        } else {
            w->queued = true;
            w->prev = s->wait_tail;
            if (s->wait_tail)
                s->wait_tail->next = w;
            else
                s->wait_head = w;
            s->wait_tail = w;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

bool pb__oauth2_cancel(struct pb_oauth2_src *s, struct pb_http_auth_waiter *w)
{
    pthread_mutex_lock(&s->lock);
    bool was = w->queued;
    if (was) {
        if (w->prev)
            w->prev->next = w->next;
        else
            s->wait_head = w->next;
        if (w->next)
            w->next->prev = w->prev;
        else
            s->wait_tail = w->prev;
        w->prev = w->next = NULL;
        w->queued = false;
    }
    pthread_mutex_unlock(&s->lock);
    return was;
}

void pb__oauth2_rejected(struct pb_oauth2_src *s, uint64_t gen)
{
    int64_t now = pb_now_ms();
    pthread_mutex_lock(&s->lock);
    if (gen == s->gen && s->token && !s->invalid) {
        s->invalid = true;
        bool young = now - s->obtained_at < REJECT_YOUNG_MS;
        if (now - s->rejected_at > REJECT_FORGET_MS)
            s->rejects = 0;
        s->rejects = young ? s->rejects + 1 : 1;
        s->rejected_at = now;
        if (s->rejects >= 2) {
            /* Fresh tokens refused again and again: the partner will not take
             * what this endpoint gives. Ask less often, and say so. */
            int64_t delay = pb__oauth2_backoff(s->rejects - 1, pb_rand64());
            if (s->next_try_at < now + delay)
                s->next_try_at = now + delay;
            s->fails++;
            if (!s->failing_since)
                s->failing_since = now;
            snprintf(s->error, sizeof(s->error),
                     "the partner refused %d fresh tokens in a row (HTTP 401): check the "
                     "client's scopes, audience and grants",
                     s->rejects);
        }
        PB_INFO("oauth2 token refused by the partner (HTTP 401): asking for a new one "
                "token_url=%s client_id=%s",
                s->token_url, s->client_id);
        pb__oauth2_maybe_fetch(s, now);
    }
    pthread_mutex_unlock(&s->lock);
}

void pb__oauth2_error(struct pb_oauth2_src *s, char *buf, size_t len)
{
    pthread_mutex_lock(&s->lock);
    snprintf(buf, len, "%s", s->fails ? s->error : "");
    pthread_mutex_unlock(&s->lock);
}

void pb__oauth2_status(struct pb_oauth2_src *s, struct pb_auth_status *st)
{
    int64_t now = pb_now_ms();
    st->kind = "oauth2";
    st->token_url = s->token_url;
    st->client_id = s->client_id;
    st->grant = pb__oauth2_grant_name(s->grant);
    pthread_mutex_lock(&s->lock);
    bool valid = s->token && !s->invalid && now < s->expires_at;
    st->state = s->fails ? "failing" : s->fetching ? "fetching" : valid ? "ok" : "idle";
    st->expires_in_ms = valid ? s->expires_at - now : -1;
    st->failing_since = s->failing_since;
    st->next_try_in_ms = s->next_try_at > now ? s->next_try_at - now : 0;
    st->requests = s->requests;
    st->failures = s->failures;
    snprintf(st->error, sizeof(st->error), "%s", s->fails ? s->error : "");
    pthread_mutex_unlock(&s->lock);
}

void pb__oauth2_each(void (*fn)(void *arg, struct pb_oauth2_src *s), void *arg)
{
    pthread_mutex_lock(&pb__oauth2_reg_lock);
    for (struct pb_oauth2_src *s = pb__oauth2_sources; s; s = s->next)
        fn(arg, s);
    pthread_mutex_unlock(&pb__oauth2_reg_lock);
}

/* ---- the registry -------------------------------------------------------------------------- */

static void src_free(struct pb_oauth2_src *s)
{
    free(s->token_url);
    free(s->client_id);
    pb__oauth2_free_secret(s->client_secret);
    free(s->scope);
    free(s->audience);
    pb__oauth2_free_secret(s->conf_refresh);
    free(s->key_id);
    pb__jwt_key_free(&s->key);
    pb_strmap_free(&s->claims);
    pb_strmap_free(&s->params);
    pb_allowlist_destroy(s->allow);
    free(s->user_pipeline);
    free(s->user_name);
    pb__oauth2_free_secret(s->token);
    pb__oauth2_free_secret(s->refresh);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

void pb__oauth2_put(struct pb_oauth2_src *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&pb__oauth2_reg_lock);
    bool last = atomic_fetch_sub(&s->refs, 1) == 1;
    if (last) {
        struct pb_oauth2_src **pp = &pb__oauth2_sources;
        while (*pp && *pp != s)
            pp = &(*pp)->next;
        if (*pp)
            *pp = s->next;
    }
    pthread_mutex_unlock(&pb__oauth2_reg_lock);
    if (last)
        src_free(s);
}

static int strmap_copy(struct pb_strmap *dst, const struct pb_strmap *src)
{
    memset(dst, 0, sizeof(*dst));
    if (!src->n)
        return 0;
    dst->keys = calloc(src->n, sizeof(char *));
    dst->vals = calloc(src->n, sizeof(char *));
    if (!dst->keys || !dst->vals)
        return PB_ENOMEM;
    for (size_t i = 0; i < src->n; i++) {
        dst->keys[i] = strdup(src->keys[i]);
        dst->vals[i] = strdup(src->vals[i]);
        dst->n = i + 1;
        if (!dst->keys[i] || !dst->vals[i])
            return PB_ENOMEM;
    }
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Scopes sorted and space-joined (NULL when none). */
static char *join_scopes(const struct pb_strlist *l, bool *oom)
{
    if (!l->n)
        return NULL;
    char **v = malloc(l->n * sizeof(*v));
    size_t len = 1;
    if (!v) {
        *oom = true;
        return NULL;
    }
    for (size_t i = 0; i < l->n; i++) {
        v[i] = l->items[i];
        len += strlen(v[i]) + 1;
    }
    qsort(v, l->n, sizeof(*v), cmp_str);
    char *out = malloc(len);
    if (out) {
        out[0] = 0;
        for (size_t i = 0; i < l->n; i++) {
            if (i && strcmp(v[i], v[i - 1]) == 0)
                continue;
            if (out[0])
                strcat(out, " ");
            strcat(out, v[i]);
        }
    } else {
        *oom = true;
    }
    free(v);
    return out;
}

static int check_conf(const struct pb_oauth2_conf *c, struct pb_err *err)
{
    if (!c->token_url || (strncasecmp(c->token_url, "https://", 8) != 0 &&
                          strncasecmp(c->token_url, "http://", 7) != 0))
        return pb_err_set(err, PB_ECONFIG, "oauth2.token_url must be an http:// or https:// URL");
    if (!c->client_id || !*c->client_id)
        return pb_err_set(err, PB_ECONFIG, "oauth2.client_id is required");
    for (size_t i = 0; i < c->scopes.n; i++)
        for (const char *p = c->scopes.items[i]; *p; p++)
            if ((unsigned char)*p <= 0x20 || *p == '"' || *p == '\\' || (unsigned char)*p >= 0x7f)
                return pb_err_set(err, PB_ECONFIG, "oauth2.scopes: \"%s\" is not a scope token",
                                  c->scopes.items[i]);
    bool pkjwt = c->auth_method == PB_OAUTH2_PRIVATE_KEY_JWT;
    if (pkjwt && c->client_secret)
        return pb_err_set(err, PB_ECONFIG,
                          "oauth2: auth_method private_key_jwt signs with private_key; remove "
                          "client_secret");
    if ((pkjwt || c->grant == PB_OAUTH2_JWT_BEARER) && !c->private_key)
        return pb_err_set(err, PB_ECONFIG, "oauth2: %s needs private_key (a PEM file)",
                          pkjwt ? "auth_method private_key_jwt" : "grant jwt_bearer");
    if (c->private_key && !pkjwt && c->grant != PB_OAUTH2_JWT_BEARER)
        return pb_err_set(err, PB_ECONFIG,
                          "oauth2.private_key is used by grant jwt_bearer or auth_method "
                          "private_key_jwt only");
    if (c->grant == PB_OAUTH2_CLIENT_CREDENTIALS && !pkjwt && !c->client_secret)
        return pb_err_set(err, PB_ECONFIG,
                          "oauth2: grant client_credentials needs client_secret (or auth_method "
                          "private_key_jwt)");
    if (c->grant == PB_OAUTH2_REFRESH_TOKEN && (!c->refresh_token || !*c->refresh_token))
        return pb_err_set(err, PB_ECONFIG, "oauth2: grant refresh_token needs refresh_token");
    if (c->grant != PB_OAUTH2_REFRESH_TOKEN && c->refresh_token)
        return pb_err_set(err, PB_ECONFIG, "oauth2.refresh_token is for grant refresh_token");
    if (c->claims.n && c->grant != PB_OAUTH2_JWT_BEARER)
        return pb_err_set(err, PB_ECONFIG, "oauth2.claims are for grant jwt_bearer");
    for (size_t i = 0; i < c->params.n; i++) {
        static const char *const own[] = {"grant_type",       "client_id",
                                          "client_secret",    "assertion",
                                          "client_assertion", "client_assertion_type",
                                          "refresh_token",    "scope",
                                          "audience",         NULL};
        for (size_t k = 0; own[k]; k++)
            if (strcmp(c->params.keys[i], own[k]) == 0)
                return pb_err_set(err, PB_ECONFIG,
                                  "oauth2.params cannot set %s: it has an option of its own",
                                  own[k]);
    }
    if (c->assertion_lifetime_ms < 1000 || c->refresh_before_ms < 0 || c->timeout_ms < 1)
        return pb_err_set(err, PB_ECONFIG,
                          "oauth2: assertion_lifetime is at least 1s, timeout more than 0");
    return 0;
}

/* A text form of a strmap for digests. */
static char *strmap_text(const struct pb_strmap *m)
{
    size_t len = 1;
    for (size_t i = 0; i < m->n; i++)
        len += strlen(m->keys[i]) + strlen(m->vals[i]) + 24;
    char *t = malloc(len);
    if (!t)
        return NULL;
    size_t n = 0;
    t[0] = 0;
    for (size_t i = 0; i < m->n; i++)
        n += (size_t)snprintf(t + n, len - n, "%zu:%s%zu:%s", strlen(m->keys[i]), m->keys[i],
                              strlen(m->vals[i]), m->vals[i]);
    return t;
}

struct pb_oauth2_src *pb__oauth2_get(const struct pb_oauth2_conf *c,
                                     const struct pb_http_owner *owner, struct pb_err *err)
{
    if (check_conf(c, err))
        return NULL;
    bool oom = false;
    char *scope = join_scopes(&c->scopes, &oom);
    char *claims = strmap_text(&c->claims), *params = strmap_text(&c->params);
    if (oom || !claims || !params) {
        free(scope);
        free(claims);
        free(params);
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    char id[65], digest[65], times[96];
    const char *key[] = {c->token_url, c->client_id, scope, c->audience,
                         pb__oauth2_grant_name(c->grant)};
    sha256_hex(key, 5, id);
    snprintf(times, sizeof(times), "%lld/%lld/%lld/%lld", (long long)c->assertion_lifetime_ms,
             (long long)c->refresh_before_ms, (long long)c->timeout_ms,
             (long long)c->default_lifetime_ms);
    char method[4];
    snprintf(method, sizeof(method), "%d", c->auth_method);
    const char *rest[] = {c->client_secret, method, c->refresh_token, c->private_key, c->key_id,
                          c->algorithm,     claims, params,           times};
    sha256_hex(rest, sizeof(rest) / sizeof(rest[0]), digest);
    free(claims);
    free(params);

    pthread_mutex_lock(&pb__oauth2_reg_lock);
    for (struct pb_oauth2_src *s = pb__oauth2_sources; s; s = s->next) {
        if (strcmp(s->id, id) != 0)
            continue;
        if (strcmp(s->digest, digest) != 0) {
            pthread_mutex_unlock(&pb__oauth2_reg_lock);
            free(scope);
            pb_err_set(err, PB_ECONFIG,
                       "oauth2: token_url %s and client_id %s are used by %s/%s too, with other "
                       "settings (secret, key, auth_method, claims, params or times): one token "
                       "is shared by every user of them, so their settings must be the same",
                       c->token_url, c->client_id, s->user_pipeline, s->user_name);
            return NULL;
        }
        bool running = pb__oauth2_running(); /* a request may hold s->allow */
        struct pb_allowlist *merged =
            owner && !running ? pb_allowlist_merge(s->allow, owner->allow) : NULL;
        if (merged) {
            pb_allowlist_destroy(s->allow);
            s->allow = merged;
        }
        src_ref(s);
        pthread_mutex_unlock(&pb__oauth2_reg_lock);
        free(scope);
        return s;
    }
    pthread_mutex_unlock(&pb__oauth2_reg_lock);

    struct pb_oauth2_src *s = calloc(1, sizeof(*s));
    if (!s) {
        free(scope);
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    atomic_init(&s->refs, 1);
    memcpy(s->id, id, sizeof(id));
    memcpy(s->digest, digest, sizeof(digest));
    const char *seed[] = {c->refresh_token};
    sha256_hex(seed, 1, s->seed);
    s->scope = scope;
    s->grant = c->grant;
    s->method = c->auth_method;
    s->assertion_ms = c->assertion_lifetime_ms;
    s->refresh_before_ms = c->refresh_before_ms;
    s->timeout_ms = c->timeout_ms;
    s->default_lifetime_ms = c->default_lifetime_ms > 0 ? c->default_lifetime_ms : 3600000;
    s->token_url = strdup(c->token_url);
    s->client_id = strdup(c->client_id);
    s->client_secret = c->client_secret ? strdup(c->client_secret) : NULL;
    s->audience = c->audience ? strdup(c->audience) : NULL;
    s->conf_refresh = c->refresh_token ? strdup(c->refresh_token) : NULL;
    s->refresh = c->refresh_token ? strdup(c->refresh_token) : NULL;
    s->key_id = c->key_id ? strdup(c->key_id) : NULL;
    s->user_pipeline = strdup(owner && owner->pipeline ? owner->pipeline : "");
    s->user_name = strdup(owner && owner->name ? owner->name : "");
    s->allow = owner && owner->allow ? pb_allowlist_merge(owner->allow, NULL) : NULL;
    if (!s->token_url || !s->client_id || (c->client_secret && !s->client_secret) ||
        (c->audience && !s->audience) || (c->refresh_token && (!s->conf_refresh || !s->refresh)) ||
        (c->key_id && !s->key_id) || !s->user_pipeline || !s->user_name ||
        (owner && owner->allow && !s->allow) || strmap_copy(&s->claims, &c->claims) ||
        strmap_copy(&s->params, &c->params)) {
        src_free(s);
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    if (c->private_key && pb__jwt_key_load(c->private_key, c->algorithm, &s->key, err) != 0) {
        src_free(s);
        return NULL;
    }
    if (c->algorithm && !c->private_key) {
        src_free(s);
        pb_err_set(err, PB_ECONFIG, "oauth2.algorithm needs private_key");
        return NULL;
    }
    pthread_mutex_lock(&pb__oauth2_reg_lock);
    /* Another thread may have made it meanwhile: share that one. */
    for (struct pb_oauth2_src *o = pb__oauth2_sources; o; o = o->next)
        if (strcmp(o->id, id) == 0 && strcmp(o->digest, digest) == 0) {
            src_ref(o);
            pthread_mutex_unlock(&pb__oauth2_reg_lock);
            src_free(s);
            return o;
        }
    s->next = pb__oauth2_sources;
    pb__oauth2_sources = s;
    pthread_mutex_unlock(&pb__oauth2_reg_lock);
    return s;
}
