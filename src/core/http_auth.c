/* http_auth.c - the `auth:` block of HTTP plugins (pb_http_auth.h): its
 * option table, the run-time object each user holds (a fixed header for
 * bearer, basic and api_key; a shared token source for oauth2, oauth2*.c),
 * and what the admin API, /ready and the metrics read of them.
 *
 * Threads: create and destroy where the configuration is loaded and freed;
 * every other call from any thread. The list of live objects is under a
 * lock, for the readers. */
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "core/http_auth.h"
#include "core/oauth2.h"
#include "net/http_tls.h"
#include "patchbay/pb_crypto.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_time.h"

/* ---- options ---------------------------------------------------------------------------- */

static const char *const grants[] = {"client_credentials", "refresh_token", "jwt_bearer", NULL};
static const char *const methods[] = {"client_secret_basic", "client_secret_post",
                                      "private_key_jwt", NULL};

#define OF(f) offsetof(struct pb_oauth2_conf, f)
static const struct pb_field oauth2_fields[] = {
    {.name = "token_url",
     .type = PB_F_STR,
     .offset = OF(token_url),
     .flags = PB_FIELD_REQUIRED | PB_FIELD_URL,
     .doc = "the token endpoint"},
    {.name = "client_id", .type = PB_F_STR, .offset = OF(client_id), .flags = PB_FIELD_REQUIRED},
    {.name = "client_secret", .type = PB_F_SECRET, .offset = OF(client_secret)},
    {.name = "scopes",
     .type = PB_F_STRLIST,
     .offset = OF(scopes),
     .doc = "scopes asked for (sent space-separated)"},
    {.name = "audience",
     .type = PB_F_STR,
     .offset = OF(audience),
     .doc = "sent as the audience parameter"},
    {.name = "grant",
     .type = PB_F_ENUM,
     .offset = OF(grant),
     .choices = grants,
     .def = "client_credentials"},
    {.name = "auth_method",
     .type = PB_F_ENUM,
     .offset = OF(auth_method),
     .choices = methods,
     .def = "client_secret_basic",
     .doc = "how the client authenticates to the token endpoint"},
    {.name = "refresh_token",
     .type = PB_F_SECRET,
     .offset = OF(refresh_token),
     .doc = "grant refresh_token: the first of the chain (rotated ones are kept in the state "
            "store)"},
    {.name = "private_key",
     .type = PB_F_STR,
     .offset = OF(private_key),
     .doc = "PEM private key file: jwt_bearer assertions, private_key_jwt"},
    {.name = "key_id", .type = PB_F_STR, .offset = OF(key_id), .doc = "kid of the signed JWTs"},
    {.name = "algorithm",
     .type = PB_F_STR,
     .offset = OF(algorithm),
     .doc = "RS256, PS256, ES256, ES384 or EdDSA (default: by the key's type)"},
    {.name = "claims",
     .type = PB_F_STRMAP,
     .offset = OF(claims),
     .doc = "jwt_bearer: claims of the assertion (sub, iss, aud, ...)"},
    {.name = "params",
     .type = PB_F_STRMAP,
     .offset = OF(params),
     .doc = "more form parameters of every token request (resource, ...)"},
    {.name = "assertion_lifetime",
     .type = PB_F_DURATION,
     .offset = OF(assertion_lifetime_ms),
     .def = "5m"},
    {.name = "refresh_before",
     .type = PB_F_DURATION,
     .offset = OF(refresh_before_ms),
     .def = "60s",
     .doc = "renew a token this long before it expires (at most a tenth of its lifetime)"},
    {.name = "timeout", .type = PB_F_DURATION, .offset = OF(timeout_ms), .def = "10s"},
    {.name = "default_lifetime",
     .type = PB_F_DURATION,
     .offset = OF(default_lifetime_ms),
     .def = "1h",
     .doc = "lifetime of a token whose answer has no expires_in"},
    {0},
};
#undef OF

static const struct pb_field basic_fields[] = {
    {.name = "user",
     .type = PB_F_STR,
     .offset = offsetof(struct pb_http_basic_conf, user),
     .flags = PB_FIELD_REQUIRED},
    {.name = "password",
     .type = PB_F_SECRET,
     .offset = offsetof(struct pb_http_basic_conf, password),
     .flags = PB_FIELD_REQUIRED},
    {0},
};

static const struct pb_field api_key_fields[] = {
    {.name = "header",
     .type = PB_F_STR,
     .offset = offsetof(struct pb_http_api_key_conf, header),
     .def = "X-Api-Key"},
    {.name = "value",
     .type = PB_F_SECRET,
     .offset = offsetof(struct pb_http_api_key_conf, value),
     .flags = PB_FIELD_REQUIRED},
    {0},
};

const struct pb_field pb_http_auth_fields[] = {
    {.name = "bearer",
     .type = PB_F_SECRET,
     .offset = offsetof(struct pb_http_auth_conf, bearer),
     .doc = "token sent as Authorization: Bearer"},
    {.name = "basic",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct pb_http_auth_conf, basic),
     .sub = basic_fields},
    {.name = "api_key",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct pb_http_auth_conf, api_key),
     .sub = api_key_fields},
    {.name = "oauth2",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct pb_http_auth_conf, oauth2),
     .sub = oauth2_fields},
    {0},
};

/* ---- the objects ------------------------------------------------------------------------- */

enum kind { K_NONE = 0, K_BEARER, K_BASIC, K_API_KEY, K_OAUTH2 };

struct pb_http_auth {
    enum kind kind;
    char *header; /* bearer, basic, api_key: the header name ... */
    char *value;  /* ... and value */
    struct pb_oauth2_src *src;
    char *pipeline, *name;
    struct pb_http_auth *prev, *next; /* live list */
};

static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static struct pb_http_auth *live;

static bool header_value_ok(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
            return false;
    return true;
}

static void secret_free(char *s)
{
    if (!s)
        return;
    OPENSSL_cleanse(s, strlen(s));
    free(s);
}

void pb_http_auth_destroy(struct pb_http_auth *a)
{
    if (!a)
        return;
    pthread_mutex_lock(&live_lock);
    if (a->prev)
        a->prev->next = a->next;
    else if (live == a)
        live = a->next;
    if (a->next)
        a->next->prev = a->prev;
    pthread_mutex_unlock(&live_lock);
    pb__oauth2_put(a->src);
    free(a->header);
    secret_free(a->value);
    free(a->pipeline);
    free(a->name);
    free(a);
}

/* "Basic base64(user:password)" */
static char *basic_value(const struct pb_http_basic_conf *b)
{
    size_t ul = strlen(b->user), pl = strlen(b->password);
    char *pair = malloc(ul + pl + 2);
    size_t cap = 6 + 4 * ((ul + pl + 1) / 3 + 1) + 1;
    char *out = malloc(cap);
    if (!pair || !out) {
        free(pair);
        free(out);
        return NULL;
    }
    memcpy(pair, b->user, ul);
    pair[ul] = ':';
    memcpy(pair + ul + 1, b->password, pl);
    memcpy(out, "Basic ", 6);
    size_t n = pb_base64_encode(pair, ul + pl + 1, false, out + 6, cap - 6);
    OPENSSL_cleanse(pair, ul + pl + 1);
    free(pair);
    if (!n) {
        free(out);
        return NULL;
    }
    return out;
}

struct pb_http_auth *pb_http_auth_create(const struct pb_http_auth_conf *c,
                                         const struct pb_http_owner *owner, struct pb_err *err)
{
    static const struct pb_http_auth_conf none = {0};
    if (!c)
        c = &none;
    int n = (c->bearer != NULL) + (c->basic.user != NULL) + (c->api_key.value != NULL) +
            (c->oauth2.token_url != NULL);
    if (n > 1) {
        pb_err_set(err, PB_ECONFIG, "auth takes one of bearer, basic, api_key or oauth2");
        return NULL;
    }
    struct pb_http_auth *a = calloc(1, sizeof(*a));
    if (!a)
        goto nomem;
    a->pipeline = strdup(owner && owner->pipeline ? owner->pipeline : "");
    a->name = strdup(owner && owner->name ? owner->name : "");
    if (!a->pipeline || !a->name)
        goto nomem;
    if (c->bearer) {
        if (!*c->bearer || !header_value_ok(c->bearer)) {
            pb_err_set(err, PB_ECONFIG, "auth.bearer is empty or holds control characters");
            goto fail;
        }
        size_t len = strlen(c->bearer) + 8;
        a->kind = K_BEARER;
        a->header = strdup("Authorization");
        a->value = malloc(len);
        if (!a->header || !a->value)
            goto nomem;
        snprintf(a->value, len, "Bearer %s", c->bearer);
    } else if (c->basic.user) {
        if (strchr(c->basic.user, ':') || !header_value_ok(c->basic.user)) {
            pb_err_set(err, PB_ECONFIG, "auth.basic.user cannot hold ':' or control characters");
            goto fail;
        }
        a->kind = K_BASIC;
        a->header = strdup("Authorization");
        a->value = basic_value(&c->basic);
        if (!a->header || !a->value)
            goto nomem;
    } else if (c->api_key.value) {
        if (!pb_http_header_name_ok(c->api_key.header)) {
            pb_err_set(err, PB_ECONFIG, "auth.api_key.header \"%s\" is not a header name",
                       c->api_key.header);
            goto fail;
        }
        if (!header_value_ok(c->api_key.value)) {
            pb_err_set(err, PB_ECONFIG, "auth.api_key.value holds control characters");
            goto fail;
        }
        a->kind = K_API_KEY;
        a->header = strdup(c->api_key.header);
        a->value = strdup(c->api_key.value);
        if (!a->header || !a->value)
            goto nomem;
    } else if (c->oauth2.token_url) {
        a->kind = K_OAUTH2;
        a->src = pb__oauth2_get(&c->oauth2, owner, err);
        if (!a->src)
            goto fail;
    }
    pthread_mutex_lock(&live_lock);
    a->next = live;
    if (live)
        live->prev = a;
    live = a;
    pthread_mutex_unlock(&live_lock);
    return a;
nomem:
    pb_err_set(err, PB_ENOMEM, "out of memory");
fail:
    pb_http_auth_destroy(a);
    return NULL;
}

int pb_http_auth_header(struct pb_http_auth *a, struct pb_http_auth_ticket *t)
{
    t->name = NULL;
    t->gen = 0;
    t->value[0] = 0;
    if (!a || a->kind == K_NONE)
        return 0;
    if (a->kind != K_OAUTH2) {
        t->name = a->header;
        snprintf(t->value, sizeof(t->value), "%s", a->value);
        return 0;
    }
    return pb__oauth2_header(a->src, t);
}

int pb_http_auth_wait(struct pb_http_auth *a, struct pb_http_auth_waiter *w, struct pb_loop *loop,
                      pb_http_auth_cb cb, void *arg)
{
    if (!a || !w || !loop || !cb)
        return PB_EINVAL;
    if (a->kind != K_OAUTH2) {
        /* Nothing to wait for: called back at once (posted). */
        w->cb = cb;
        w->arg = arg;
        w->loop = loop;
        w->queued = false;
        w->status = 0;
        w->retry_in_ms = 0;
        return pb__oauth2_notify(w, 0, 0);
    }
    return pb__oauth2_wait(a->src, w, loop, cb, arg);
}

bool pb_http_auth_cancel(struct pb_http_auth *a, struct pb_http_auth_waiter *w)
{
    if (!a || !w || a->kind != K_OAUTH2)
        return false;
    return pb__oauth2_cancel(a->src, w);
}

/* A blocking wait: the waiter's callback runs on the token thread (no loop)
 * and wakes the caller. */
struct sync_wait {
    pthread_mutex_t m;
    pthread_cond_t c;
    bool done;
    int status;
    int64_t retry_in;
};

static void sync_cb(void *arg, int status, int64_t retry_in)
{
    struct sync_wait *sw = arg;
    pthread_mutex_lock(&sw->m);
    sw->done = true;
    sw->status = status;
    sw->retry_in = retry_in;
    pthread_cond_signal(&sw->c);
    pthread_mutex_unlock(&sw->m);
}

int pb_http_auth_header_wait(struct pb_http_auth *a, struct pb_http_auth_ticket *t,
                             int64_t timeout_ms, struct pb_err *err)
{
    int64_t deadline = pb_mono_us() + timeout_ms * 1000;
    for (int round = 0; round < 4; round++) {
        int rc = pb_http_auth_header(a, t);
        if (rc != PB_EAGAIN)
            return rc;
        struct sync_wait sw = {.done = false};
        pthread_mutex_init(&sw.m, NULL);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&sw.c, &ca);
        pthread_condattr_destroy(&ca);
        struct pb_http_auth_waiter w;
        memset(&w, 0, sizeof(w));
        /* loop NULL: notify calls sync_cb directly (oauth2_src.c). */
        w.cb = sync_cb;
        w.arg = &sw;
        rc = pb__oauth2_wait(a->src, &w, NULL, sync_cb, &sw);
        if (rc == 0) {
            pthread_mutex_lock(&sw.m);
            while (!sw.done) {
                int64_t left = deadline - pb_mono_us();
                if (left <= 0)
                    break;
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                int64_t ns = (int64_t)ts.tv_nsec + (left % 1000000) * 1000;
                ts.tv_sec += (time_t)(left / 1000000 + ns / 1000000000);
                ts.tv_nsec = (long)(ns % 1000000000);
                pthread_cond_timedwait(&sw.c, &sw.m, &ts);
            }
            pthread_mutex_unlock(&sw.m);
            if (!sw.done && pb__oauth2_cancel(a->src, &w))
                rc = PB_ETIMEOUT;
            else {
                /* Called back (or about to be: wait for it, it is quick). */
                pthread_mutex_lock(&sw.m);
                while (!sw.done)
                    pthread_cond_wait(&sw.c, &sw.m);
                pthread_mutex_unlock(&sw.m);
                rc = sw.status;
            }
        }
        pthread_cond_destroy(&sw.c);
        pthread_mutex_destroy(&sw.m);
        if (rc == PB_ETIMEOUT)
            return pb_err_set(err, PB_ETIMEOUT, "no OAuth2 token within %lld ms",
                              (long long)timeout_ms);
        if (rc == PB_EAGAIN) {
            char why[256];
            pb__oauth2_error(a->src, why, sizeof(why));
            return pb_err_set(err, PB_EAGAIN, "%s", why[0] ? why : "token endpoint failing");
        }
        if (rc)
            return pb_err_set(err, rc, "%s", pb_strerror(rc));
    }
    return pb_err_set(err, PB_EAGAIN, "the token expired as soon as it came");
}

bool pb_http_auth_refreshable(const struct pb_http_auth *a)
{
    return a && a->kind == K_OAUTH2;
}

void pb_http_auth_rejected(struct pb_http_auth *a, uint64_t gen)
{
    if (a && a->kind == K_OAUTH2)
        pb__oauth2_rejected(a->src, gen);
}

void pb_http_auth_error(struct pb_http_auth *a, char *buf, size_t len)
{
    if (!len)
        return;
    buf[0] = 0;
    if (a && a->kind == K_OAUTH2)
        pb__oauth2_error(a->src, buf, len);
}

/* ---- what is shown -----------------------------------------------------------------------------
 */

static const char *kind_name(enum kind k)
{
    switch (k) {
    case K_BEARER:
        return "bearer";
    case K_BASIC:
        return "basic";
    case K_API_KEY:
        return "api_key";
    case K_OAUTH2:
        return "oauth2";
    default:
        return "none";
    }
}

void pb__http_auth_each_status(const char *pipeline, const char *name,
                               void (*fn)(void *arg, const struct pb_auth_status *st), void *arg)
{
    pthread_mutex_lock(&live_lock);
    for (struct pb_http_auth *a = live; a; a = a->next) {
        if (a->kind == K_NONE || strcmp(a->pipeline, pipeline) != 0 || strcmp(a->name, name) != 0)
            continue;
        struct pb_auth_status st = {.kind = kind_name(a->kind), .expires_in_ms = -1};
        if (a->src)
            pb__oauth2_status(a->src, &st);
        else
            st.state = "ok";
        fn(arg, &st);
    }
    pthread_mutex_unlock(&live_lock);
}

void pb__http_auth_each_failing(void (*fn)(void *arg, const char *pipeline, const char *name,
                                           const struct pb_auth_status *st),
                                void *arg)
{
    pthread_mutex_lock(&live_lock);
    for (struct pb_http_auth *a = live; a; a = a->next) {
        if (a->kind != K_OAUTH2)
            continue;
        struct pb_auth_status st = {.expires_in_ms = -1};
        pb__oauth2_status(a->src, &st);
        if (strcmp(st.state, "failing") == 0)
            fn(arg, a->pipeline, a->name, &st);
    }
    pthread_mutex_unlock(&live_lock);
}

struct metrics_ctx {
    void (*fn)(void *arg, const char *token_url, const char *client_id, uint64_t requests,
               uint64_t failures, bool valid);
    void *arg;
};

static void metrics_one(void *arg, struct pb_oauth2_src *s)
{
    struct metrics_ctx *mc = arg;
    struct pb_auth_status st = {.expires_in_ms = -1};
    pb__oauth2_status(s, &st);
    mc->fn(mc->arg, st.token_url, st.client_id, st.requests, st.failures, st.expires_in_ms > 0);
}

void pb__http_auth_metrics(void (*fn)(void *arg, const char *token_url, const char *client_id,
                                      uint64_t requests, uint64_t failures, bool valid),
                           void *arg)
{
    struct metrics_ctx mc = {fn, arg};
    pb__oauth2_each(metrics_one, &mc);
}

struct insecure_q {
    const char *pipeline, *name;
    bool found;
};

static void insecure_one(void *arg, const struct pb_http_tls *t)
{
    struct insecure_q *q = arg;
    if (strcmp(t->pipeline, q->pipeline) == 0 && strcmp(t->owner, q->name) == 0)
        q->found = true;
}

bool pb__http_tls_insecure_for(const char *pipeline, const char *name)
{
    struct insecure_q q = {pipeline, name, false};
    pb__http_tls_each_insecure(insecure_one, &q);
    return q.found;
}

static void warn_one(void *arg, const struct pb_http_tls *t)
{
    (void)arg;
    PB_WARN("tls.insecure_skip_verify is set pipeline=%s %s=%s: the partner's certificate is not "
            "checked, so anyone on the path can read and change what is sent",
            t->pipeline,
            strchr(t->owner, '[') || strcmp(t->owner, "input") == 0 ? "part" : "output", t->owner);
}

void pb__http_tls_warn_insecure(void)
{
    pb__http_tls_each_insecure(warn_one, NULL);
}
