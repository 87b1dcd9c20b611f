/* http.c - the `http` output: one HTTP request per delivery, asynchronous on
 * the shared client (keep-alive, HTTP/2 where offered, outbound guard).
 *
 * Every request carries a stable Idempotency-Key (the same on every retry and
 * after restarts), the message id and the attempt number, so partners can
 * deduplicate, and the W3C traceparent of the attempt (a span of the
 * message's trace). Statuses are classified by the core (pb_classify_http). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "patchbay/pb_plugin.h"

#define MAX_STATIC_HEADERS 64

struct basic_conf {
    char *user;
    char *password;
};
struct api_key_conf {
    char *header;
    char *value;
};
struct auth_conf {
    char *bearer;
    struct basic_conf basic;
    struct api_key_conf api_key;
};

struct out_http {
    /* decoded options */
    char *url;
    int method;
    struct pb_strmap headers;
    struct auth_conf auth;
    int64_t timeout_ms;
    int64_t connect_timeout_ms;
    uint64_t max_response;
    char *content_type;
    /* runtime */
    struct pb_http_client *http;
    const struct pb_allowlist *allow;
    char *auth_value; /* "Bearer ..." */
    size_t nstatic;
    struct pb_http_header statics[MAX_STATIC_HEADERS];
};

static const char *const methods[] = {"POST", "PUT", "PATCH", "DELETE", "GET", NULL};

static const struct pb_field basic_fields[] = {
    {.name = "user",
     .type = PB_F_STR,
     .offset = offsetof(struct basic_conf, user),
     .flags = PB_FIELD_REQUIRED},
    {.name = "password",
     .type = PB_F_SECRET,
     .offset = offsetof(struct basic_conf, password),
     .flags = PB_FIELD_REQUIRED},
    {0},
};
static const struct pb_field api_key_fields[] = {
    {.name = "header",
     .type = PB_F_STR,
     .offset = offsetof(struct api_key_conf, header),
     .def = "X-Api-Key"},
    {.name = "value",
     .type = PB_F_SECRET,
     .offset = offsetof(struct api_key_conf, value),
     .flags = PB_FIELD_REQUIRED},
    {0},
};
static const struct pb_field auth_fields[] = {
    {.name = "bearer",
     .type = PB_F_SECRET,
     .offset = offsetof(struct auth_conf, bearer),
     .doc = "token sent as Authorization: Bearer"},
    {.name = "basic",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct auth_conf, basic),
     .sub = basic_fields},
    {.name = "api_key",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct auth_conf, api_key),
     .sub = api_key_fields},
    {0},
};

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
     .sub = auth_fields,
     .doc = "bearer, basic or api_key"},
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

static bool header_name_ok(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!(*s == '-' || *s == '_' || (*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'z') ||
              (*s >= 'A' && *s <= 'Z')))
            return false;
    return true;
}

static bool header_value_ok(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 && *s != '\t')
            return false;
    return true;
}

static int http_init(void *ctx, struct pb_output_env *env, struct pb_err *err)
{
    struct out_http *h = ctx;
    if (strncasecmp(h->url, "http://", 7) != 0 && strncasecmp(h->url, "https://", 8) != 0)
        return pb_err_set(err, PB_ECONFIG, "url \"%s\" must start with http:// or https://",
                          h->url);
    int nauth =
        (h->auth.bearer != NULL) + (h->auth.basic.user != NULL) + (h->auth.api_key.value != NULL);
    if (nauth > 1)
        return pb_err_set(err, PB_ECONFIG, "auth takes one of bearer, basic or api_key");
    if (h->headers.n + 1 > MAX_STATIC_HEADERS)
        return pb_err_set(err, PB_ECONFIG, "too many headers (at most %d)", MAX_STATIC_HEADERS - 1);
    for (size_t i = 0; i < h->headers.n; i++) {
        if (!header_name_ok(h->headers.keys[i]) || !header_value_ok(h->headers.vals[i]))
            return pb_err_set(err, PB_ECONFIG, "header \"%s\" has a bad name or value",
                              h->headers.keys[i]);
        h->statics[h->nstatic++] = (struct pb_http_header){h->headers.keys[i], h->headers.vals[i]};
    }
    if (h->auth.bearer) {
        size_t n = strlen(h->auth.bearer) + 8;
        h->auth_value = malloc(n);
        if (!h->auth_value)
            return pb_err_set(err, PB_ENOMEM, "out of memory");
        snprintf(h->auth_value, n, "Bearer %s", h->auth.bearer);
        h->statics[h->nstatic++] = (struct pb_http_header){"Authorization", h->auth_value};
    } else if (h->auth.api_key.value) {
        if (!header_name_ok(h->auth.api_key.header))
            return pb_err_set(err, PB_ECONFIG, "api_key header \"%s\" is not a header name",
                              h->auth.api_key.header);
        h->statics[h->nstatic++] =
            (struct pb_http_header){h->auth.api_key.header, h->auth.api_key.value};
    }
    h->http = env->http;
    h->allow = env->allow;
    return 0;
}

static void http_done_cb(void *arg, const struct pb_http_resp *resp)
{
    struct pb_outcome o;
    char error[320];
    pb_outcome_from_http(resp, &o, error, sizeof(error));
    pb_delivery_done(arg, &o);
}

static void http_deliver(void *ctx, struct pb_delivery *d)
{
    struct out_http *h = ctx;
    struct pb_http_header hdrs[MAX_STATIC_HEADERS + 8];
    size_t n = 0;
    char attempt[16];
    snprintf(attempt, sizeof(attempt), "%d", d->attempt);
    hdrs[n++] = (struct pb_http_header){"Content-Type",
                                        h->content_type ? h->content_type : d->content_type};
    hdrs[n++] = (struct pb_http_header){"User-Agent", "patchbay/" PB_VERSION};
    hdrs[n++] = (struct pb_http_header){"Idempotency-Key", d->idempotency_key};
    hdrs[n++] = (struct pb_http_header){"X-Patchbay-Message-Id", d->msg_id};
    hdrs[n++] = (struct pb_http_header){"X-Patchbay-Attempt", attempt};
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
        .body = d->payload,
        .len = d->len,
        .timeout_ms = h->timeout_ms,
        .connect_timeout_ms = h->connect_timeout_ms,
        .max_response = (size_t)h->max_response,
        .allow = h->allow,
        .basic_user = h->auth.basic.user,
        .basic_pass = h->auth.basic.password,
    };
    int rc = h->http ? pb_http_client_send(h->http, &req, http_done_cb, d) : PB_EINVAL;
    if (rc != 0) {
        struct pb_outcome o = {.result = PB_RESULT_RETRY,
                               .retry_after_ms = -1,
                               .error = "could not start the request"};
        pb_delivery_done(d, &o);
    }
}

static void http_destroy(void *ctx)
{
    struct out_http *h = ctx;
    free(h->auth_value);
    h->auth_value = NULL;
}

const struct pb_output_plugin pb_out_http = {
    .name = "http",
    .fields = http_fields,
    .ctx_size = sizeof(struct out_http),
    .default_concurrency = 16,
    .init = http_init,
    .deliver = http_deliver,
    .destroy = http_destroy,
};
