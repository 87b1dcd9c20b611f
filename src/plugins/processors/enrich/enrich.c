/* enrich.c - the enrich processor: an HTTP (or GraphQL) lookup per message,
 * its answer merged into the message by a jq program.
 *
 *   enrich:
 *     url: 'https://crm.example/api/customers/{{ .customer_id }}'
 *     key: '.customer_id'                  # cache key (default: the request)
 *     answer: '.data'                      # what of the response is the answer
 *     into: '.customer = $answer'          # merge it into the message
 *     cache: { ttl: 5m, max_entries: 10000 }
 *     on_missing: dead_letter              # drop | keep | dead_letter
 *
 * Lookups never block the dispatcher: the message is parked (pb_proc_park)
 * while its request runs on the dispatcher's async HTTP client (through the
 * outbound guard), and resumed when the answer comes. Concurrent messages
 * with the same key wait on one request; answers are cached (bounded LRU
 * with a TTL, enrich_cache.c). 404 and 410, and an answer that is null, are
 * "not found" and follow on_missing; a failed lookup (no answer, 408, 425,
 * 429, 5xx, 401, 403, a body that is not JSON) routes the message again
 * later with backoff; any other status, or GraphQL errors, dead-letters it.
 *
 * auth and tls are the blocks every HTTP plugin shares (pb_http_auth.h).
 * With oauth2 a lookup first waits for a token (on the dispatcher's loop,
 * never blocking it); a 401 drops the token once for everyone who used it
 * and the lookup goes again with a new one; a failing token endpoint fails
 * the lookup (the message is routed again later) and shows in /ready.
 *
 * Under `patchbay test` (env->mock set) nothing is sent and nothing parks:
 * the same request is answered by the test case's mocked answer
 * (pb_mock_http), classified as a real answer is, and the message handled
 * at once; the cache is not used, so every case stands on its own.
 *
 * Threads: everything on the dispatcher's thread (process and the HTTP
 * client's callbacks), so no locks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "enrich_cache.h"
#include "enrich_tmpl.h"
#include "patchbay/pb_http_auth.h"
#include "patchbay/pb_jq.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_plugin.h"
#include "patchbay/pb_time.h"

#define MAX_HEADERS 40
#define KEY_MAX 2048

struct cache_conf {
    int64_t ttl_ms;
    int64_t missing_ttl_ms;
    int64_t max_entries;
    uint64_t max_bytes;
};
struct graphql_conf {
    char *query;
    char *variables;
};
struct outbound_conf {
    struct pb_strlist allow;
};

/* A string with {{ JQ }} parts. */
struct waiter {
    struct pb_proc_wait *w;
    jv msg, meta;
    pb_outset outs;
    struct waiter *next;
};

struct lookup {
    struct enrich *E;
    struct ec_entry *e;
    char *url, *body;
    size_t blen;
    struct waiter *waiters;
    struct lookup *qnext;
    struct pb_http_auth_waiter aw; /* waiting for an OAuth2 token */
    struct lookup *aprev, *anext;  /* E->token_waits */
    uint64_t gen;                  /* the token sent */
    bool refreshed;                /* a 401 got its new token already */
};

enum { MISSING_DROP = 0, MISSING_KEEP, MISSING_DEAD };

struct enrich {
    /* options */
    char *url;
    int method;
    char *body;
    struct pb_strmap headers;
    struct pb_http_auth_conf auth; /* the shared blocks (pb_http_auth.h) */
    struct pb_http_tls_conf tls;
    char *key;
    char *answer;
    char *into;
    struct cache_conf cache;
    int on_missing;
    int64_t timeout_ms;
    int64_t concurrency;
    uint64_t max_response;
    struct graphql_conf graphql;
    struct outbound_conf outbound;
    /* prepared by init */
    char pipeline[128];
    struct tmpl url_t;
    struct pb_jq *key_q, *answer_q, *into_q, *body_q, *vars_q;
    struct pb_http_client *http;
    struct pb_mock *mock; /* under `patchbay test`: answers instead of requests */
    struct pb_allowlist *allow;
    struct pb_http_auth *a;
    struct pb_http_tls *t;
    struct pb_loop *loop; /* the HTTP client's (the dispatcher's) */
    struct lookup *token_waits;
    size_t nstatic;
    struct pb_http_header statics[MAX_HEADERS];
    /* run time (dispatcher thread) */
    struct ec_cache ec;
    struct lookup *qhead, *qtail; /* waiting for a slot */
    int64_t inflight;
    uint64_t requests;
};

static const char *const methods[] = {"GET", "POST", NULL};
static const char *const missing_modes[] = {"drop", "keep", "dead_letter", NULL};

static const struct pb_field cache_fields[] = {
    {.name = "ttl",
     .type = PB_F_DURATION,
     .offset = offsetof(struct cache_conf, ttl_ms),
     .def = "5m",
     .doc = "how long an answer is kept (0: not cached)"},
    {.name = "missing_ttl",
     .type = PB_F_DURATION,
     .offset = offsetof(struct cache_conf, missing_ttl_ms),
     .def = "0",
     .doc = "how long a not-found is kept (0: asked again every time)"},
    {.name = "max_entries",
     .type = PB_F_INT,
     .offset = offsetof(struct cache_conf, max_entries),
     .def = "10000",
     .min = 0,
     .max = 10000000,
     .doc = "answers kept; the least recently used go first"},
    {.name = "max_bytes",
     .type = PB_F_SIZE,
     .offset = offsetof(struct cache_conf, max_bytes),
     .def = "64MiB",
     .doc = "bound on the answers' size in all"},
    {0},
};
static const struct pb_field graphql_fields[] = {
    {.name = "query",
     .type = PB_F_STR,
     .offset = offsetof(struct graphql_conf, query),
     .flags = PB_FIELD_REQUIRED,
     .doc = "GraphQL query document"},
    {.name = "variables",
     .type = PB_F_STR,
     .offset = offsetof(struct graphql_conf, variables),
     .def = "{}",
     .doc = "jq program on the message making the variables object"},
    {0},
};
static const struct pb_field outbound_fields[] = {
    {.name = "allow",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct outbound_conf, allow),
     .doc = "internal addresses or host names this lookup may reach"},
    {0},
};

static const struct pb_field enrich_fields[] = {
    {.name = "url",
     .type = PB_F_STR,
     .offset = offsetof(struct enrich, url),
     .flags = PB_FIELD_REQUIRED | PB_FIELD_URL,
     .doc = "URL template: {{ JQ }} parts are rendered on the message, percent-encoded"},
    {.name = "method",
     .type = PB_F_ENUM,
     .offset = offsetof(struct enrich, method),
     .choices = methods,
     .def = "GET"},
    {.name = "body",
     .type = PB_F_STR,
     .offset = offsetof(struct enrich, body),
     .doc = "jq program on the message making the request body (POST)"},
    {.name = "headers", .type = PB_F_STRMAP, .offset = offsetof(struct enrich, headers)},
    {.name = "auth",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct enrich, auth),
     .sub = pb_http_auth_fields,
     .doc = "bearer, basic, api_key or oauth2"},
    {.name = "tls",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct enrich, tls),
     .sub = pb_http_tls_fields,
     .doc = "ca_file, cert_file, key_file, server_name, min_version"},
    {.name = "key",
     .type = PB_F_STR,
     .offset = offsetof(struct enrich, key),
     .doc = "jq: the cache key (default: the request); null means nothing to look up"},
    {.name = "answer",
     .type = PB_F_STR,
     .offset = offsetof(struct enrich, answer),
     .doc = "jq on the response: the answer (default . or .data for GraphQL); null: not found"},
    {.name = "into",
     .type = PB_F_STR,
     .offset = offsetof(struct enrich, into),
     .flags = PB_FIELD_REQUIRED,
     .doc = "jq on the message with $answer: the enriched message"},
    {.name = "cache",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct enrich, cache),
     .sub = cache_fields},
    {.name = "on_missing",
     .type = PB_F_ENUM,
     .offset = offsetof(struct enrich, on_missing),
     .choices = missing_modes,
     .def = "dead_letter",
     .doc = "what happens to a message whose lookup finds nothing"},
    {.name = "timeout",
     .type = PB_F_DURATION,
     .offset = offsetof(struct enrich, timeout_ms),
     .def = "10s"},
    {.name = "concurrency",
     .type = PB_F_INT,
     .offset = offsetof(struct enrich, concurrency),
     .def = "16",
     .min = 1,
     .max = 1024,
     .doc = "lookups in flight at once"},
    {.name = "max_response",
     .type = PB_F_SIZE,
     .offset = offsetof(struct enrich, max_response),
     .def = "1MiB"},
    {.name = "graphql",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct enrich, graphql),
     .sub = graphql_fields,
     .doc = "POST {query, variables} and take .data"},
    {.name = "outbound",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct enrich, outbound),
     .sub = outbound_fields},
    {0},
};

/* ---- answers ------------------------------------------------------------------------ */

/* Handle msg (taken; meta borrowed) with a lookup's outcome: the answer
 * merged in (state EC_FOUND), on_missing (EC_MISSING), or the failure rc
 * with why. Takes answer. 0 or a negative code with err. */
static int apply(struct enrich *E, struct pb_proc_io *io, jv msg, jv meta, pb_outset outs,
                 enum ec_state state, jv answer, int rc, const char *why, struct pb_err *err)
{
    if (rc == 0 && state == EC_MISSING) {
        if (E->on_missing == MISSING_KEEP) {
            rc = pb_proc_emit(io, msg, outs);
            msg = jv_invalid();
        } else if (E->on_missing == MISSING_DEAD) {
            rc = pb_err_set(err, PB_ENOTFOUND, "%s", why ? why : "nothing found");
        } /* drop: emit nothing */
    } else if (rc == 0) {
        jv out[2];
        size_t n = 0;
        jv in = jv_array_append(jv_array_append(jv_array(), msg), jv_copy(answer));
        msg = jv_invalid();
        rc = pb_jq_run_meta(E->into_q, in, jv_copy(meta), out, 2, &n, err);
        if (rc == 0 && n != 1) {
            for (size_t i = 0; i < n; i++)
                jv_free(out[i]);
            rc = n ? pb_err_set(err, PB_EJQ, "into produced %zu values; expected one", n)
                   : 0; /* none: dropped on purpose */
        } else if (rc == 0) {
            rc = pb_proc_emit(io, out[0], outs);
        } else {
            char m[PB_ERR_MSG_MAX];
            snprintf(m, sizeof(m), "%s", err->msg);
            pb_err_set(err, rc, "into: %s", m);
        }
    } else {
        pb_err_set(err, rc, "%s", why ? why : pb_strerror(rc));
    }
    jv_free(answer);
    jv_free(msg);
    return rc;
}

/* Finish one waiting message with the lookup's outcome. */
static void finish(struct enrich *E, struct waiter *w, enum ec_state state, jv answer, int rc,
                   const char *why)
{
    struct pb_err err = {0};
    rc = apply(E, pb_proc_wait_io(w->w), w->msg, w->meta, w->outs, state, answer, rc, why, &err);
    jv_free(w->meta);
    struct pb_proc_wait *pw = w->w;
    free(w);
    pb_proc_resume(pw, rc, rc ? &err : NULL);
}

static void lookup_free(struct lookup *L)
{
    free(L->url);
    free(L->body);
    free(L);
}

/* End L: its entry settled (or dropped), each waiter finished. */
static void lookup_end(struct lookup *L, enum ec_state state, jv answer, size_t bytes, int rc,
                       const char *why)
{
    struct enrich *E = L->E;
    struct waiter *ws = L->waiters;
    L->waiters = NULL;
    L->e->user = NULL;
    if (rc == 0) {
        int64_t ttl = state == EC_FOUND ? E->cache.ttl_ms : E->cache.missing_ttl_ms;
        ec_settle(&E->ec, L->e, state, jv_copy(answer), bytes, ttl, pb_now_ms());
    } else {
        ec_remove(&E->ec, L->e);
    }
    lookup_free(L);
    while (ws) {
        struct waiter *n = ws->next;
        finish(E, ws, state, jv_copy(answer), rc, why);
        ws = n;
    }
    jv_free(answer);
}

static void pump(struct enrich *E);

/* A GraphQL answer with a non-empty errors array: its first message. */
static bool graphql_error(jv body, char *why, size_t len)
{
    char safe[200];
    jv errs = jv_object_get(jv_copy(body), jv_string("errors"));
    bool bad = jv_get_kind(errs) == JV_KIND_ARRAY && jv_array_length(jv_copy(errs)) > 0;
    if (bad) {
        jv m = jv_getpath(errs, JV_ARRAY(jv_number(0), jv_string("message")));
        snprintf(why, len, "GraphQL error: %s",
                 pb_log_value(jv_get_kind(m) == JV_KIND_STRING ? jv_string_value(m) : "?", safe,
                              sizeof(safe)));
        jv_free(m);
    } else {
        jv_free(errs);
    }
    return bad;
}

static int send_lookup(struct enrich *E, struct lookup *L);

/* What an answer to the lookup of url means: 0 with *state EC_FOUND and
 * *answer (with *bytes), or EC_MISSING (not found: on_missing) and
 * jv_null(); or a failure, with jv_invalid(): PB_EAGAIN (routed again
 * later) or another code (dead-lettered). why says what happened. */
static int classify(struct enrich *E, const char *url, const struct pb_http_resp *resp,
                    enum ec_state *state, jv *answer, size_t *bytes, char *why, size_t len)
{
    char safe[200];
    int st = resp->status;
    *state = EC_MISSING;
    *answer = jv_invalid();
    *bytes = 0;
    why[0] = 0;
    if (st == 404 || st == 410) {
        snprintf(why, len, "nothing found (HTTP %d from %s)", st, url);
        *answer = jv_null();
        return 0;
    }
    if (st >= 200 && st < 300) {
        struct pb_err err = {0};
        jv body, out[1];
        size_t n = 0;
        if (pb_jq_parse(resp->body ? resp->body : "", resp->body_len, &body, &err) != 0) {
            snprintf(why, len, "lookup answer is not JSON: %s", err.msg);
            return PB_EAGAIN;
        }
        if (E->graphql.query && graphql_error(body, why, len)) {
            jv_free(body);
            return PB_EINVAL;
        }
        if (pb_jq_run(E->answer_q, body, out, 1, &n, &err) != 0) {
            snprintf(why, len, "answer: %s", err.msg);
            return PB_EJQ;
        }
        if (n == 0 || jv_get_kind(out[0]) == JV_KIND_NULL) {
            if (n)
                jv_free(out[0]);
            snprintf(why, len, "nothing found (the answer from %s is null)", url);
            *answer = jv_null();
            return 0;
        }
        *state = EC_FOUND;
        *answer = out[0];
        *bytes = resp->body_len;
        return 0;
    }
    bool retry = st == 0 || st == 401 || st == 403 || pb_classify_http(st) == PB_RESULT_RETRY;
    if (st)
        snprintf(why, len, "lookup failed: HTTP %d from %s: %s", st, url,
                 pb_log_value(resp->body ? resp->body : "", safe, sizeof(safe)));
    else
        snprintf(why, len, "lookup failed: %s (%s)", resp->error ? resp->error : "no answer", url);
    if (resp->blocked)
        retry = false;
    return retry ? PB_EAGAIN : PB_EINVAL;
}

static void done_cb(void *arg, const struct pb_http_resp *resp)
{
    struct lookup *L = arg;
    struct enrich *E = L->E;
    char why[PB_ERR_MSG_MAX + 200];
    enum ec_state state;
    jv answer;
    size_t bytes;
    if (resp->status == 401 && !L->refreshed && pb_http_auth_refreshable(E->a)) {
        /* Refused token: a new one (once for everyone), then once more. */
        L->refreshed = true;
        pb_http_auth_rejected(E->a, L->gen);
        if (send_lookup(E, L) == 0)
            return;
    }
    E->inflight--;
    int rc = classify(E, L->url, resp, &state, &answer, &bytes, why, sizeof(why));
    lookup_end(L, state, answer, bytes, rc, state == EC_FOUND ? NULL : why);
    pump(E);
}

/* The request for a lookup of url (with body, may be NULL) and the auth
 * header of tk (may be NULL: none); hdrs has room for MAX_HEADERS + 4 and
 * must live as long as *req. */
static void build_req(struct enrich *E, const char *url, const char *body, size_t blen,
                      const struct pb_http_auth_ticket *tk, struct pb_http_header *hdrs,
                      struct pb_http_req *req)
{
    size_t n = 0;
    hdrs[n++] = (struct pb_http_header){"User-Agent", "patchbay/" PB_VERSION};
    hdrs[n++] = (struct pb_http_header){"Accept", "application/json"};
    if (body)
        hdrs[n++] = (struct pb_http_header){"Content-Type", "application/json"};
    if (tk && tk->name)
        hdrs[n++] = (struct pb_http_header){tk->name, tk->value};
    for (size_t i = 0; i < E->nstatic; i++)
        hdrs[n++] = E->statics[i];
    *req = (struct pb_http_req){
        .method = body ? "POST" : methods[E->method],
        .url = url,
        .headers = hdrs,
        .nheaders = n,
        .body = body,
        .len = blen,
        .timeout_ms = E->timeout_ms,
        .connect_timeout_ms = E->timeout_ms,
        .max_response = (size_t)E->max_response,
        .allow = E->allow,
        .tls = E->t,
    };
}

static void token_unlink(struct lookup *L)
{
    struct enrich *E = L->E;
    if (L->aprev)
        L->aprev->anext = L->anext;
    else if (E->token_waits == L)
        E->token_waits = L->anext;
    if (L->anext)
        L->anext->aprev = L->aprev;
    L->aprev = L->anext = NULL;
}

static void token_cb(void *arg, int status, int64_t retry_in_ms)
{
    struct lookup *L = arg;
    struct enrich *E = L->E;
    (void)retry_in_ms;
    token_unlink(L);
    if (status == 0 && send_lookup(E, L) == 0)
        return;
    char why[256], reason[400];
    pb_http_auth_error(E->a, why, sizeof(why));
    snprintf(reason, sizeof(reason), "lookup failed: no OAuth2 token: %s (%s)",
             status == PB_ESHUTDOWN ? "shutting down"
             : status == 0          ? "the request could not start"
             : why[0]               ? why
                                    : "the token endpoint is failing",
             L->url);
    E->inflight--;
    lookup_end(L, EC_MISSING, jv_invalid(), 0, PB_EAGAIN, reason);
    pump(E);
}

/* 0: the request is on its way, or waits for an OAuth2 token (token_cb). */
static int send_lookup(struct enrich *E, struct lookup *L)
{
    struct pb_http_auth_ticket tk; /* large: on the stack, for this call */
    int rc = pb_http_auth_header(E->a, &tk);
    if (rc == PB_EAGAIN) {
        if (!E->loop)
            return PB_EINVAL;
        L->anext = E->token_waits;
        if (E->token_waits)
            E->token_waits->aprev = L;
        E->token_waits = L;
        rc = pb_http_auth_wait(E->a, &L->aw, E->loop, token_cb, L);
        if (rc != 0)
            token_unlink(L);
        return rc;
    }
    if (rc != 0)
        return rc;
    L->gen = tk.gen;
    struct pb_http_header hdrs[MAX_HEADERS + 4];
    struct pb_http_req req;
    build_req(E, L->url, L->body, L->blen, &tk, hdrs, &req);
    E->requests++;
    return E->http ? pb_http_client_send(E->http, &req, done_cb, L) : PB_EINVAL;
}

/* Start queued lookups while there is room. */
static void pump(struct enrich *E)
{
    while (E->qhead && E->inflight < E->concurrency) {
        struct lookup *L = E->qhead;
        E->qhead = L->qnext;
        if (!E->qhead)
            E->qtail = NULL;
        L->qnext = NULL;
        E->inflight++;
        int rc = send_lookup(E, L);
        if (rc != 0) {
            char why[300];
            E->inflight--;
            snprintf(why, sizeof(why), "lookup could not start: %s (%s)", pb_strerror(rc), L->url);
            lookup_end(L, EC_MISSING, jv_invalid(), 0, PB_EAGAIN, why);
        }
    }
}

/* ---- the step --------------------------------------------------------------------------- */

/* The request body for msg (POST or GraphQL), malloc'd; NULL with *blen 0
 * when there is none. */
static int make_body(struct enrich *E, jv msg, jv meta, char **body, size_t *blen,
                     struct pb_err *err)
{
    jv out[1];
    size_t n = 0;
    *body = NULL;
    *blen = 0;
    if (E->graphql.query) {
        if (pb_jq_run_meta(E->vars_q, jv_copy(msg), jv_copy(meta), out, 1, &n, err) != 0)
            return err->code;
        jv req = jv_object_set(jv_object(), jv_string("query"), jv_string(E->graphql.query));
        req = jv_object_set(req, jv_string("variables"), n ? out[0] : jv_object());
        return pb_jq_dump(req, body, blen, err);
    }
    if (!E->body_q)
        return 0;
    if (pb_jq_run_meta(E->body_q, jv_copy(msg), jv_copy(meta), out, 1, &n, err) != 0)
        return err->code;
    if (n == 0)
        return pb_err_set(err, PB_EJQ, "body produced nothing");
    return pb_jq_dump(out[0], body, blen, err);
}

/* Under `patchbay test`: msg (taken) looked up with the case's mocked
 * answer to the request that would be sent, and handled at once. key is the
 * `key` option's value (NULL without one). */
static int mock_lookup(struct enrich *E, struct pb_proc_io *io, jv msg, jv meta, const char *url,
                       const char *body, size_t blen, const char *key, struct pb_err *err)
{
    struct pb_http_header hdrs[MAX_HEADERS + 4];
    struct pb_http_req req;
    struct pb_http_resp resp;
    char why[PB_ERR_MSG_MAX + 200];
    enum ec_state state;
    jv answer;
    size_t bytes;
    /* bearer, basic and api_key as sent; OAuth2 fetches no token under test. */
    struct pb_http_auth_ticket tk; /* large: on the stack, for this call */
    bool auth = !pb_http_auth_refreshable(E->a) && pb_http_auth_header(E->a, &tk) == 0;
    build_req(E, url, body, blen, auth ? &tk : NULL, hdrs, &req);
    int rc = pb_mock_http(E->mock, "enrich", key, &req, &resp, err);
    if (rc != 0) {
        jv_free(msg);
        return rc;
    }
    rc = classify(E, url, &resp, &state, &answer, &bytes, why, sizeof(why));
    return apply(E, io, msg, meta, pb_proc_outputs(io), state, answer, rc, why, err);
}

static int enrich_process(void *ctx, struct pb_proc_io *io, jv in, struct pb_err *err)
{
    struct enrich *E = ctx;
    jv meta = pb_proc_meta(io);
    char *url = NULL, *body = NULL, *key = NULL;
    size_t blen = 0;
    bool null = false;
    int rc = 0;

    url = et_render_url(&E->url_t, in, meta, &null, err);
    if (!url && !null) {
        char m[PB_ERR_MSG_MAX];
        snprintf(m, sizeof(m), "%s", err->msg);
        rc = pb_err_set(err, err->code ? err->code : PB_EJQ, "url: %s", m);
        goto out;
    }
    if (url && (rc = make_body(E, in, meta, &body, &blen, err)) != 0)
        goto out;
    if (url && E->key_q) {
        key = et_run_scalar(E->key_q, in, meta, &null, err);
        if (!key && !null) {
            char m[PB_ERR_MSG_MAX];
            snprintf(m, sizeof(m), "%s", err->msg);
            rc = pb_err_set(err, err->code ? err->code : PB_EJQ, "key: %s", m);
            goto out;
        }
    } else if (url) {
        size_t n = strlen(url) + blen + 2;
        key = malloc(n);
        if (key)
            snprintf(key, n, "%s\n%.*s", url, (int)blen, body ? body : "");
    }
    if (null) {
        /* Nothing to look up with. */
        if (E->on_missing == MISSING_KEEP) {
            rc = pb_proc_emit(io, in, pb_proc_outputs(io));
            in = jv_invalid();
        } else if (E->on_missing == MISSING_DEAD) {
            rc = pb_err_set(err, PB_ENOTFOUND, "the key or a URL part is null");
        }
        goto out;
    }
    if (!key || strlen(key) > KEY_MAX) {
        rc = key ? pb_err_set(err, PB_ETOOBIG, "the cache key is longer than %d bytes", KEY_MAX)
                 : pb_err_set(err, PB_ENOMEM, "out of memory");
        goto out;
    }
    if (E->mock) {
        rc = mock_lookup(E, io, in, meta, url, body, blen, E->key_q ? key : NULL, err);
        in = jv_invalid();
        goto out;
    }
    int64_t now = pb_now_ms();
    struct ec_entry *e = ec_get(&E->ec, key, strlen(key), now);
    if (e && e->state == EC_FOUND) {
        jv res[2];
        size_t n = 0;
        jv arg = jv_array_append(jv_array_append(jv_array(), in), jv_copy(e->answer));
        in = jv_invalid();
        rc = pb_jq_run_meta(E->into_q, arg, jv_copy(meta), res, 2, &n, err);
        if (rc == 0 && n == 1)
            rc = pb_proc_emit(io, res[0], pb_proc_outputs(io));
        else if (rc == 0 && n > 1) {
            for (size_t i = 0; i < n; i++)
                jv_free(res[i]);
            rc = pb_err_set(err, PB_EJQ, "into produced %zu values; expected one", n);
        } else if (rc) {
            char m[PB_ERR_MSG_MAX];
            snprintf(m, sizeof(m), "%s", err->msg);
            pb_err_set(err, rc, "into: %s", m);
        }
        goto out;
    }
    if (e && e->state == EC_MISSING) {
        if (E->on_missing == MISSING_KEEP) {
            rc = pb_proc_emit(io, in, pb_proc_outputs(io));
            in = jv_invalid();
        } else if (E->on_missing == MISSING_DEAD) {
            rc = pb_err_set(err, PB_ENOTFOUND, "nothing found for %s (cached)", url);
        }
        goto out;
    }
    struct pb_proc_wait *pw = pb_proc_park(io);
    if (!pw) {
        rc = pb_err_set(err, PB_EINVAL, "this route stage cannot wait for a lookup");
        goto out;
    }
    struct waiter *w = calloc(1, sizeof(*w));
    struct lookup *L = e ? e->user : calloc(1, sizeof(*L));
    if (w && L && !e) {
        L->E = E;
        L->url = url;
        L->body = body;
        L->blen = blen;
        url = body = NULL;
        L->e = ec_add_pending(&E->ec, key, strlen(key));
    }
    if (!w || !L || !L->e) {
        free(w);
        if (!e && L)
            lookup_free(L);
        pb_err_set(err, PB_ENOMEM, "out of memory");
        pb_proc_resume(pw, PB_EAGAIN, err);
        goto out;
    }
    w->w = pw;
    w->msg = in;
    in = jv_invalid();
    w->meta = jv_copy(meta);
    w->outs = pb_proc_outputs(io);
    if (!e) {
        L->e->user = L;
        if (E->qtail)
            E->qtail->qnext = L;
        else
            E->qhead = L;
        E->qtail = L;
    }
    w->next = L->waiters;
    L->waiters = w;
    pump(E);
    rc = 0;
out:
    jv_free(in);
    free(url);
    free(body);
    free(key);
    return rc;
}

/* ---- life cycle ------------------------------------------------------------------------- */

/* A jq program wrapped so that it runs on [message, answer] as the message
 * with $answer bound. */
static struct pb_jq *compile_into(const char *prog, struct pb_err *err)
{
    size_t n = strlen(prog) + 64;
    char *w = malloc(n);
    if (!w) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    snprintf(w, n, ". as [$__pb_msg, $answer] | $__pb_msg | (%s\n)", prog);
    struct pb_jq *q = pb_jq_compile(w, err);
    free(w);
    return q;
}

static int compile_opt(const char *prog, const char *def, struct pb_jq **q, const char *what,
                       struct pb_err *err)
{
    if (!prog)
        prog = def;
    if (!prog)
        return 0;
    *q = pb_jq_compile(prog, err);
    if (*q)
        return 0;
    char m[PB_ERR_MSG_MAX];
    snprintf(m, sizeof(m), "%s", err->msg);
    return pb_err_set(err, PB_ECONFIG, "enrich: %s: %s", what, m);
}

static int enrich_init(void *ctx, const struct pb_proc_env *env, struct pb_err *err)
{
    struct enrich *E = ctx;
    int rc;
    snprintf(E->pipeline, sizeof(E->pipeline), "%s", env->pipeline);
    if (strncasecmp(E->url, "http://", 7) != 0 && strncasecmp(E->url, "https://", 8) != 0)
        return pb_err_set(err, PB_ECONFIG, "enrich: url \"%s\" must start with http:// or https://",
                          E->url);
    if ((rc = et_parse(&E->url_t, E->url, err)) != 0)
        return rc;
    if ((rc = compile_opt(E->key, NULL, &E->key_q, "key", err)) ||
        (rc = compile_opt(E->answer, E->graphql.query ? ".data" : ".", &E->answer_q, "answer",
                          err)) ||
        (rc = compile_opt(E->body, NULL, &E->body_q, "body", err)) ||
        (rc = compile_opt(E->graphql.query ? E->graphql.variables : NULL, NULL, &E->vars_q,
                          "graphql.variables", err)))
        return rc;
    if (E->body && E->graphql.query)
        return pb_err_set(err, PB_ECONFIG, "enrich: body and graphql exclude each other");
    if (E->body && E->method != 1)
        return pb_err_set(err, PB_ECONFIG, "enrich: a body needs method: POST");
    E->into_q = compile_into(E->into, err);
    if (!E->into_q) {
        char m[PB_ERR_MSG_MAX];
        snprintf(m, sizeof(m), "%s", err->msg);
        return pb_err_set(err, PB_ECONFIG, "enrich: into: %s", m);
    }
    if (E->headers.n + 1 > MAX_HEADERS)
        return pb_err_set(err, PB_ECONFIG, "enrich: too many headers (at most %d)",
                          MAX_HEADERS - 1);
    for (size_t i = 0; i < E->headers.n; i++) {
        if (!pb_http_header_name_ok(E->headers.keys[i]) ||
            !pb_http_header_value_ok(E->headers.vals[i]))
            return pb_err_set(err, PB_ECONFIG, "enrich: header \"%s\" has a bad name or value",
                              E->headers.keys[i]);
        E->statics[E->nstatic++] = (struct pb_http_header){E->headers.keys[i], E->headers.vals[i]};
    }
    struct pb_http_owner who = {env->pipeline, "process[enrich]", env->allow};
    if (!(E->a = pb_http_auth_create(&E->auth, &who, err)) ||
        !(E->t = pb_http_tls_create(&E->tls, &who, err))) {
        char m[PB_ERR_MSG_MAX];
        snprintf(m, sizeof(m), "%s", err->msg);
        return pb_err_set(err, err->code ? err->code : PB_ECONFIG, "enrich: %s", m);
    }
    struct pb_allowlist *own = pb_allowlist_create(&E->outbound.allow, err);
    if (!own)
        return err->code ? err->code : PB_ECONFIG;
    E->allow = pb_allowlist_merge(env->allow, own);
    pb_allowlist_destroy(own);
    if (!E->allow)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    if (ec_init(&E->ec, (size_t)E->cache.max_entries, E->cache.max_bytes) != 0)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    E->http = env->http;
    E->loop = pb_http_client_loop(env->http);
    E->mock = env->mock;
    return 0;
}

static void enrich_destroy(void *ctx)
{
    struct enrich *E = ctx;
    if (!E)
        return;
    if (E->ec.buckets && (E->ec.hits || E->ec.misses || E->requests))
        PB_INFO("enrich cache pipeline=%s hits=%llu misses=%llu evictions=%llu requests=%llu",
                E->pipeline, (unsigned long long)E->ec.hits, (unsigned long long)E->ec.misses,
                (unsigned long long)E->ec.evictions, (unsigned long long)E->requests);
    ec_cleanup(&E->ec);
    et_free(&E->url_t);
    pb_jq_destroy(E->key_q);
    pb_jq_destroy(E->answer_q);
    pb_jq_destroy(E->into_q);
    pb_jq_destroy(E->body_q);
    pb_jq_destroy(E->vars_q);
    pb_allowlist_destroy(E->allow);
    /* Lookups still waiting for a token: taken back (their messages are
     * routed again after a restart); one whose callback is on its way
     * cannot be, and the config outlives it. */
    for (struct lookup *L = E->token_waits; L;) {
        struct lookup *next = L->anext;
        if (pb_http_auth_cancel(E->a, &L->aw)) {
            token_unlink(L);
            for (struct waiter *w = L->waiters; w;) {
                struct waiter *wn = w->next;
                jv_free(w->msg);
                jv_free(w->meta);
                free(w);
                w = wn;
            }
            lookup_free(L);
        }
        L = next;
    }
    pb_http_auth_destroy(E->a);
    pb_http_tls_destroy(E->t);
    E->key_q = E->answer_q = E->into_q = E->body_q = E->vars_q = NULL;
    E->allow = NULL;
    E->a = NULL;
    E->t = NULL;
}

const struct pb_processor_plugin pb_proc_enrich = {
    .name = "enrich",
    .fields = enrich_fields,
    .ctx_size = sizeof(struct enrich),
    .init = enrich_init,
    .process = enrich_process,
    .destroy = enrich_destroy,
};
