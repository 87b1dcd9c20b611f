/* http.c - the `http` output: one HTTP request per delivery, asynchronous on
 * the shared client (keep-alive, HTTP/2 where offered, outbound guard).
 *
 * Every request carries a stable Idempotency-Key (the same on every retry and
 * after restarts), the message id and the attempt number, so partners can
 * deduplicate, and the W3C traceparent of the attempt (a span of the
 * message's trace). Statuses are classified by the core (pb_classify_http),
 * which also reads the partner's rate-limit headers to pace the whole output.
 *
 * auth and tls are the blocks every HTTP plugin shares (pb_http_auth.h). With
 * oauth2 a delivery may first wait for a token; if the token endpoint fails
 * the partner was not asked and the delivery ends "not sent" (no attempt
 * spent). A 401 drops the token once for everyone who used it, and the
 * request goes again with a new one within the same attempt.
 *
 * With graphql the body is {query, variables}, and an `errors` array in a
 * 2xx answer is a failure (graphql.c).
 *
 * Threads: deliver, the HTTP and token callbacks run on the dispatcher's
 * loop; every field of struct out_http and struct req is that thread's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "graphql.h"
#include "patchbay/pb_http_auth.h"
#include "patchbay/pb_plugin.h"

#define MAX_STATIC_HEADERS 64
#define AUTH_RETRY_MS 1000

struct req;

struct out_http {
    /* decoded options */
    char *url;
    int method;
    struct pb_strmap headers;
    struct pb_http_auth_conf auth;
    struct pb_http_tls_conf tls;
    struct graphql_conf graphql;
    int64_t timeout_ms;
    int64_t connect_timeout_ms;
    uint64_t max_response;
    char *content_type;
    /* runtime */
    struct pb_http_client *http;
    const struct pb_allowlist *allow;
    struct pb_http_auth *a;
    struct pb_http_tls *t;
    struct pb_output *out;
    struct pb_loop *loop;
    struct req *waiting; /* deliveries waiting for a token */
    bool auth_failing;   /* the output's state says so */
    bool stopping;       /* stop ran: no request starts (the client goes away) */
    size_t nstatic;
    struct pb_http_header statics[MAX_STATIC_HEADERS];
};

/* One delivery's requests (a second one after a 401). */
struct req {
    struct out_http *h;
    struct pb_delivery *d;
    struct pb_http_auth_waiter w;
    struct req *prev, *next; /* h->waiting */
    uint64_t gen;            /* token sent */
    bool refreshed;          /* a 401 got its new token already */
    char *body;              /* graphql: the request built from the payload */
    size_t blen;
};

static const char *const methods[] = {"POST", "PUT", "PATCH", "DELETE", "GET", NULL};

static const struct pb_field http_fields[] = {
    {.name = "url",
     .type = PB_F_STR,
     .offset = offsetof(struct out_http, url),
     .flags = PB_FIELD_REQUIRED | PB_FIELD_URL,
     .doc = "http:// or https:// URL"},
    {.name = "method",
     .type = PB_F_ENUM,
     .offset = offsetof(struct out_http, method),
     .choices = methods,
     .def = "POST"},
    {.name = "headers",
     .type = PB_F_STRMAP,
     .offset = offsetof(struct out_http, headers),
     .doc = "static request headers"},
    {.name = "auth",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct out_http, auth),
     .sub = pb_http_auth_fields,
     .doc = "bearer, basic, api_key or oauth2"},
    {.name = "tls",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct out_http, tls),
     .sub = pb_http_tls_fields,
     .doc = "ca_file, cert_file, key_file, server_name, min_version"},
    {.name = "graphql",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct out_http, graphql),
     .sub = graphql_fields,
     .doc = "send a GraphQL mutation: query, variables, retry_on"},
    {.name = "timeout",
     .type = PB_F_DURATION,
     .offset = offsetof(struct out_http, timeout_ms),
     .def = "30s",
     .doc = "whole request"},
    {.name = "connect_timeout",
     .type = PB_F_DURATION,
     .offset = offsetof(struct out_http, connect_timeout_ms),
     .def = "10s"},
    {.name = "max_response",
     .type = PB_F_SIZE,
     .offset = offsetof(struct out_http, max_response),
     .def = "64KiB",
     .doc = "response bytes read; the rest is discarded"},
    {.name = "content_type",
     .type = PB_F_STR,
     .offset = offsetof(struct out_http, content_type),
     .doc = "overrides the message's content type"},
    {0},
};

static int http_init(void *ctx, struct pb_output_env *env, struct pb_err *err)
{
    struct out_http *h = ctx;
    if (strncasecmp(h->url, "http://", 7) != 0 && strncasecmp(h->url, "https://", 8) != 0)
        return pb_err_set(err, PB_ECONFIG, "url \"%s\" must start with http:// or https://",
                          h->url);
    if (h->headers.n + 1 > MAX_STATIC_HEADERS)
        return pb_err_set(err, PB_ECONFIG, "too many headers (at most %d)", MAX_STATIC_HEADERS - 1);
    for (size_t i = 0; i < h->headers.n; i++) {
        if (!pb_http_header_name_ok(h->headers.keys[i]) ||
            !pb_http_header_value_ok(h->headers.vals[i]))
            return pb_err_set(err, PB_ECONFIG, "header \"%s\" has a bad name or value",
                              h->headers.keys[i]);
        h->statics[h->nstatic++] = (struct pb_http_header){h->headers.keys[i], h->headers.vals[i]};
    }
    struct pb_http_owner who = {env->pipeline, env->output, env->allow};
    h->a = pb_http_auth_create(&h->auth, &who, err);
    if (!h->a)
        return err->code ? err->code : PB_ECONFIG;
    h->t = pb_http_tls_create(&h->tls, &who, err);
    if (!h->t)
        return err->code ? err->code : PB_ECONFIG;
    int rc = graphql_init(&h->graphql, err);
    if (rc)
        return rc;
    if (h->graphql.on && h->method != 0)
        return pb_err_set(err, PB_ECONFIG, "graphql sends a POST: remove method");
    h->http = env->http;
    h->allow = env->allow;
    return 0;
}

static int http_start(void *ctx, struct pb_output *out, struct pb_err *err)
{
    (void)err;
    struct out_http *h = ctx;
    h->out = out;
    h->loop = pb_output_loop(out);
    return 0;
}

static void req_end(struct req *r, const struct pb_outcome *o)
{
    struct pb_delivery *d = r->d;
    free(r->body);
    free(r);
    pb_delivery_done(d, o);
}

/* The token endpoint failed: the partner was not asked. */
static void end_not_sent(struct req *r, int64_t retry_in, const char *why)
{
    struct out_http *h = r->h;
    char error[320];
    snprintf(error, sizeof(error), "not sent: no OAuth2 token: %s", why);
    if (!h->auth_failing && h->out) {
        h->auth_failing = true;
        pb_output_set_state(h->out, PB_OUTPUT_RECONNECTING, error + strlen("not sent: "));
    }
    struct pb_outcome o = {.result = PB_RESULT_RETRY,
                           .not_sent = true,
                           .retry_after_ms = retry_in > 0 ? retry_in : AUTH_RETRY_MS,
                           .error = error};
    req_end(r, &o);
}

static void send_req(struct req *r);

static void unlink_waiting(struct req *r)
{
    struct out_http *h = r->h;
    if (r->prev)
        r->prev->next = r->next;
    else if (h->waiting == r)
        h->waiting = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

static void auth_cb(void *arg, int status, int64_t retry_in_ms)
{
    struct req *r = arg;
    unlink_waiting(r);
    if (status == 0 && r->h->stopping)
        status = PB_ESHUTDOWN;
    if (status == 0) {
        send_req(r);
        return;
    }
    char why[256];
    pb_http_auth_error(r->h->a, why, sizeof(why));
    end_not_sent(r, retry_in_ms,
                 status == PB_ESHUTDOWN ? "shutting down"
                 : why[0]               ? why
                                        : "token endpoint failing");
}

static void http_done_cb(void *arg, const struct pb_http_resp *resp)
{
    struct req *r = arg;
    struct out_http *h = r->h;
    if (h->auth_failing && h->out && resp->status != 0) {
        h->auth_failing = false;
        pb_output_set_state(h->out, PB_OUTPUT_CONNECTED, NULL);
    }
    if (resp->status == 401 && !r->refreshed && pb_http_auth_refreshable(h->a)) {
        /* Refused token: a new one (once for everyone), then once more. */
        r->refreshed = true;
        pb_http_auth_rejected(h->a, r->gen);
        send_req(r);
        return;
    }
    struct pb_outcome o;
    char error[320];
    pb_outcome_from_http(resp, &o, error, sizeof(error));
    if (h->graphql.on && o.result == PB_RESULT_OK) {
        bool truncated = resp->body_len >= h->max_response;
        enum pb_result gr = graphql_classify(&h->graphql, resp->body, resp->body_len, truncated,
                                             error, sizeof(error));
        if (gr != PB_RESULT_OK) {
            o.result = gr;
            o.error = error;
        }
    }
    req_end(r, &o);
}

static void send_req(struct req *r)
{
    struct out_http *h = r->h;
    struct pb_delivery *d = r->d;
    if (h->stopping) {
        end_not_sent(r, AUTH_RETRY_MS, "shutting down");
        return;
    }
    struct pb_http_auth_ticket tk; /* large: on the stack, for this call */
    int rc = pb_http_auth_header(h->a, &tk);
    if (rc == PB_EAGAIN) {
        r->next = h->waiting;
        if (h->waiting)
            h->waiting->prev = r;
        h->waiting = r;
        if (pb_http_auth_wait(h->a, &r->w, h->loop, auth_cb, r) != 0) {
            unlink_waiting(r);
            end_not_sent(r, AUTH_RETRY_MS, "shutting down");
        }
        return;
    }
    if (rc != 0) {
        end_not_sent(r, AUTH_RETRY_MS, "shutting down");
        return;
    }
    r->gen = tk.gen;
    struct pb_http_header hdrs[MAX_STATIC_HEADERS + 12];
    size_t n = 0;
    char attempt[16];
    snprintf(attempt, sizeof(attempt), "%d", d->attempt);
    const char *ctype = h->content_type ? h->content_type : d->content_type;
    if (h->graphql.on && !h->content_type)
        ctype = "application/json";
    hdrs[n++] = (struct pb_http_header){"Content-Type", ctype};
    hdrs[n++] = (struct pb_http_header){"User-Agent", "patchbay/" PB_VERSION};
    hdrs[n++] = (struct pb_http_header){"Idempotency-Key", d->idempotency_key};
    hdrs[n++] = (struct pb_http_header){"X-Patchbay-Message-Id", d->msg_id};
    hdrs[n++] = (struct pb_http_header){"X-Patchbay-Attempt", attempt};
    if (h->graphql.on)
        hdrs[n++] = (struct pb_http_header){"Accept", "application/json"};
    if (tk.name)
        hdrs[n++] = (struct pb_http_header){tk.name, tk.value};
    bool own_tp = false, own_ts = false; /* configured headers win */
    for (size_t i = 0; i < h->nstatic; i++) {
        hdrs[n++] = h->statics[i];
        own_tp |= strcasecmp(h->statics[i].name, "traceparent") == 0;
        own_ts |= strcasecmp(h->statics[i].name, "tracestate") == 0;
    }
    if (d->traceparent && !own_tp)
        hdrs[n++] = (struct pb_http_header){"traceparent", d->traceparent};
    if (d->tracestate && !own_ts)
        hdrs[n++] = (struct pb_http_header){"tracestate", d->tracestate};
    struct pb_http_req req = {
        .method = methods[h->method],
        .url = h->url,
        .headers = hdrs,
        .nheaders = n,
        .body = r->body ? r->body : d->payload,
        .len = r->body ? r->blen : d->len,
        .timeout_ms = h->timeout_ms,
        .connect_timeout_ms = h->connect_timeout_ms,
        .max_response = (size_t)h->max_response,
        .allow = h->allow,
        .tls = h->t,
    };
    rc = h->http ? pb_http_client_send(h->http, &req, http_done_cb, r) : PB_EINVAL;
    if (rc != 0) {
        struct pb_outcome o = {.result = PB_RESULT_RETRY,
                               .retry_after_ms = -1,
                               .error = "could not start the request"};
        req_end(r, &o);
    }
}

static void http_deliver(void *ctx, struct pb_delivery *d)
{
    struct out_http *h = ctx;
    struct req *r = calloc(1, sizeof(*r));
    if (!r) {
        struct pb_outcome o = {
            .result = PB_RESULT_RETRY, .retry_after_ms = -1, .error = "out of memory"};
        pb_delivery_done(d, &o);
        return;
    }
    r->h = h;
    r->d = d;
    if (h->graphql.on) {
        struct pb_err err = {0};
        if (graphql_body(&h->graphql, d->payload, d->len, d->meta, d->meta_len, &r->body, &r->blen,
                         &err) != 0) {
            char error[PB_ERR_MSG_MAX + 16];
            snprintf(error, sizeof(error), "graphql: %s", err.msg);
            struct pb_outcome o = {
                .result = PB_RESULT_PERMANENT, .retry_after_ms = -1, .error = error};
            req_end(r, &o);
            return;
        }
    }
    send_req(r);
}

/* No more deliveries: those waiting for a token end now, not sent. */
static void http_stop(void *ctx)
{
    struct out_http *h = ctx;
    h->stopping = true;
    struct req *r = h->waiting;
    while (r) {
        struct req *next = r->next;
        if (pb_http_auth_cancel(h->a, &r->w)) {
            unlink_waiting(r);
            end_not_sent(r, AUTH_RETRY_MS, "shutting down");
        }
        r = next;
    }
}

static void http_destroy(void *ctx)
{
    struct out_http *h = ctx;
    graphql_cleanup(&h->graphql);
    pb_http_auth_destroy(h->a);
    h->a = NULL;
    pb_http_tls_destroy(h->t);
    h->t = NULL;
}

const struct pb_output_plugin pb_out_http = {
    .name = "http",
    .fields = http_fields,
    .ctx_size = sizeof(struct out_http),
    .default_concurrency = 16,
    .init = http_init,
    .start = http_start,
    .deliver = http_deliver,
    .stop = http_stop,
    .destroy = http_destroy,
};
