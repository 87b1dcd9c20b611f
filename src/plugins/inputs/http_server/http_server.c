/* http_server.c - the `http_server` input: webhooks and other requests in,
 * on a route of the shared listener.
 *
 * The listener hands over a request that has arrived whole. This input
 * checks who sent it (verify.c: on the raw bytes, in constant time), that a
 * format: json body is JSON jq can carry exactly, and the idempotency key;
 * builds $meta (method, path, query, the headers the config keeps) and
 * submits one item. The request waits, its connection suspended, until the
 * commit: then it gets 202 with the message id (or the original's, for a
 * repeated key), or 503 when the store could not take it. Nothing is
 * acknowledged before it is durable. */
#include <ctype.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "patchbay/pb_json.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_plugin.h"
#include "patchbay/pb_time.h"
#include "verify.h"

#define IDEM_KEY_MAX (PB_WEBHOOK_ID_MAX + 8)
#define META_HEADERS_MAX 100       /* distinct header names kept */
#define META_VALUE_MAX (16 * 1024) /* bytes of one header's joined values */

struct idem_conf {
    char *header;
    int64_t window_ms;
};

struct in_http {
    char *path;
    struct pb_strlist methods;
    uint64_t max_body;
    int format; /* 0 json, 1 raw */
    struct idem_conf idempotency;
    struct pb_verify_conf verify;
    struct pb_strlist headers;
    struct pb_verifier *verifier; /* owned; NULL without verification */
    const char *method_list[8];   /* NULL-terminated, for the route */
    bool all_headers;             /* headers: [*] */
    struct pb_input *in;          /* set by start */
};

static const char *const formats[] = {"json", "raw", NULL};

static const struct pb_field idem_fields[] = {
    {.name = "header",
     .type = PB_F_STR,
     .offset = offsetof(struct idem_conf, header),
     .def = "Idempotency-Key",
     .doc = "request header carrying the key"},
    {.name = "window",
     .type = PB_F_DURATION,
     .offset = offsetof(struct idem_conf, window_ms),
     .def = "24h",
     .doc = "how long a key is remembered (0 disables)"},
    {0},
};

static const struct pb_field http_server_fields[] = {
    {.name = "path",
     .type = PB_F_STR,
     .offset = offsetof(struct in_http, path),
     .flags = PB_FIELD_REQUIRED,
     .doc = "exact request path, e.g. /hooks/shop"},
    {.name = "methods",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct in_http, methods),
     .doc = "accepted methods (default POST)"},
    {.name = "max_body",
     .type = PB_F_SIZE,
     .offset = offsetof(struct in_http, max_body),
     .def = "1MiB",
     .doc = "larger bodies are refused with 413"},
    {.name = "format",
     .type = PB_F_ENUM,
     .offset = offsetof(struct in_http, format),
     .choices = formats,
     .def = "json",
     .doc = "json (validated) or raw (any bytes)"},
    {.name = "idempotency",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct in_http, idempotency),
     .sub = idem_fields},
    {.name = "headers",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct in_http, headers),
     .doc = "request headers kept in $meta.headers ([*] for all)"},
    {.name = "verify",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct in_http, verify),
     .sub = pb_verify_fields},
    {0},
};

/* ---- one request ----------------------------------------------------------------------- */

struct pending {
    struct pb_http_request *r;
    struct in_http *h;
};

static void answer_error(struct pb_http_request *r, int status, const char *reason,
                         const char *hname, const char *hval)
{
    json_t *o = json_pack("{s:s}", "error", reason);
    char *t = o ? json_dumps(o, JSON_COMPACT) : NULL;
    struct pb_http_header hd = {hname, hval};
    const char *body = t ? t : "{\"error\":\"internal\"}";
    pb_http_respond(r, status, NULL, body, strlen(body), &hd, hname ? 1 : 0);
    free(t);
    json_decref(o);
}

static void submit_cb(void *arg, int status, const struct pb_item_result *res, size_t n)
{
    struct pending *p = arg;
    struct in_http *h = p->h;
    char body[128];
    pb_input_observe_latency(h->in, pb_mono_us() - pb_http_request_started_us(p->r));
    if (status == 0 && n == 1) {
        struct pb_http_header replayed = {"Idempotent-Replayed", "true"};
        snprintf(body, sizeof(body), "{\"id\":\"%s\"}", res[0].msg_id);
        pb_http_respond(p->r, 202, NULL, body, strlen(body), &replayed,
                        res[0].status == PB_ITEM_DUPLICATE ? 1 : 0);
    } else {
        answer_error(p->r, 503,
                     status == PB_ENOSPACE ? "state store is out of space"
                                           : "state store unavailable",
                     "Retry-After", "1");
    }
    free(p);
}

static const char *req_header(void *conn, const char *name)
{
    return pb_http_request_header(conn, name);
}

static const char *req_query(void *conn, const char *name)
{
    return pb_http_request_query(conn, name);
}

struct meta_walk {
    const struct in_http *h;
    json_t *obj;
    size_t n;
    bool failed;
};

static bool wanted(const struct in_http *h, const char *name)
{
    if (h->all_headers)
        return true;
    for (size_t i = 0; i < h->headers.n; i++)
        if (strcasecmp(h->headers.items[i], name) == 0)
            return true;
    return false;
}

/* One header (repeats come one by one): lower-cased name, values joined
 * with ", " into one string. */
static int meta_header_cb(void *arg, const char *key, const char *value)
{
    struct meta_walk *w = arg;
    char name[128];
    size_t n = strlen(key);

    if (!value || n == 0 || n >= sizeof(name) || !wanted(w->h, key))
        return 0;
    for (size_t i = 0; i <= n; i++)
        name[i] = (char)tolower((unsigned char)key[i]);
    if (!pb_utf8_valid(value, strlen(value)))
        return 0; /* jansson takes UTF-8 only; such a header is not kept */
    json_t *old = json_object_get(w->obj, name);
    if (old) {
        const char *ov = json_string_value(old);
        size_t ol = strlen(ov), vl = strlen(value);
        if (ol + 2 + vl > META_VALUE_MAX)
            return 0;
        char *joined = malloc(ol + 2 + vl + 1);
        if (!joined) {
            w->failed = true;
            return 1;
        }
        memcpy(joined, ov, ol);
        memcpy(joined + ol, ", ", 2);
        memcpy(joined + ol + 2, value, vl + 1);
        if (json_object_set_new(w->obj, name, json_string(joined)) != 0)
            w->failed = true;
        free(joined);
        return w->failed;
    }
    if (w->n >= META_HEADERS_MAX || strlen(value) > META_VALUE_MAX)
        return 0;
    w->n++;
    if (json_object_set_new(w->obj, name, json_string(value)) != 0) {
        w->failed = true;
        return 1;
    }
    return 0;
}

static int meta_query_cb(void *arg, const char *key, const char *value)
{
    struct meta_walk *w = arg;
    if (w->n >= META_HEADERS_MAX || !pb_utf8_valid(key, strlen(key)) ||
        (value && !pb_utf8_valid(value, strlen(value))) || json_object_get(w->obj, key))
        return 0;
    w->n++;
    if (json_object_set_new(w->obj, key, value ? json_string(value) : json_null()) != 0) {
        w->failed = true;
        return 1;
    }
    return 0;
}

/* What this input adds to $meta: method, path, query arguments and the
 * headers the route keeps. malloc'd JSON text. */
static char *request_meta(const struct in_http *h, struct pb_http_request *r, size_t *len)
{
    json_t *m = json_pack("{s:s, s:s}", "method", pb_http_request_method(r), "path", h->path);
    struct meta_walk hw = {.h = h}, qw = {.h = h};
    char *text = NULL;

    if (!m)
        return NULL;
    qw.obj = json_object();
    if (!qw.obj || json_object_set_new(m, "query", qw.obj) != 0)
        goto out;
    pb_http_request_queries(r, meta_query_cb, &qw);
    if (h->headers.n) {
        hw.obj = json_object();
        if (!hw.obj || json_object_set_new(m, "headers", hw.obj) != 0)
            goto out;
        pb_http_request_headers(r, meta_header_cb, &hw);
    }
    if (!hw.failed && !qw.failed)
        text = json_dumps(m, JSON_COMPACT);
out:
    json_decref(m);
    if (text)
        *len = strlen(text);
    return text;
}

static void handle(void *arg, struct pb_http_request *r)
{
    struct in_http *h = arg;
    size_t len;
    const char *body = pb_http_request_body(r, &len);
    char idem[IDEM_KEY_MAX + 1];
    const char *key = NULL;

    if (!h->in) {
        answer_error(r, 503, "starting", "Retry-After", "1");
        return;
    }
    struct pb_verify_result vres = {0};
    if (h->verifier) {
        struct pb_verify_req vreq = {
            .method = pb_http_request_method(r),
            .path = h->path,
            .body = body,
            .len = len,
            .now_ms = pb_now_ms(),
            .header = req_header,
            .query = req_query,
            .conn = r,
        };
        if (pb_verifier_check(h->verifier, &vreq, &vres) != 0) {
            enum pb_verify_reason why = vres.reason < PB_VERIFY_REASON_COUNT ? vres.reason : 0;
            pb_input_count_verify_failed(h->in, why);
            pb_input_count_reject(h->in, PB_REJECT_UNAUTHORIZED);
            PB_WARN("webhook verification failed pipeline=%s reason=%s", pb_input_pipeline(h->in),
                    pb_verify_reason_names[why]);
            answer_error(r, 401, "unauthorized", NULL, NULL);
            return;
        }
    }
    if (h->format == 0) {
        struct pb_json_check chk = {0};
        if (pb_json_validate(body, len, &chk) != 0) {
            char reason[160];
            snprintf(reason, sizeof(reason), "invalid JSON: %s at byte %zu",
                     chk.err_reason ? chk.err_reason : "malformed", chk.err_offset);
            pb_input_count_reject(h->in, PB_REJECT_BAD_JSON);
            answer_error(r, 400, reason, NULL, NULL);
            return;
        }
    }
    if (h->idempotency.window_ms > 0 && h->idempotency.header) {
        key = pb_http_request_header(r, h->idempotency.header);
        if (key) {
            size_t kl = strlen(key);
            bool ok = kl > 0 && kl <= 255;
            for (size_t i = 0; ok && i < kl; i++)
                ok = key[i] > 0x20 && key[i] < 0x7f;
            if (!ok) {
                pb_input_count_reject(h->in, PB_REJECT_BAD_JSON);
                answer_error(r, 400, "idempotency key must be 1-255 visible ASCII characters", NULL,
                             NULL);
                return;
            }
            memcpy(idem, key, kl + 1);
            key = idem;
        }
    }
    if (!key && vres.webhook_id[0]) {
        /* A resent webhook carries the same id: acknowledge, store nothing new. */
        snprintf(idem, sizeof(idem), "webhook:%s", vres.webhook_id);
        key = idem;
    }
    const char *ctype = pb_http_request_header(r, "Content-Type");
    if (h->format == 0 || !ctype)
        ctype = h->format == 0 ? "application/json" : "application/octet-stream";
    size_t mlen = 0;
    char *meta = request_meta(h, r, &mlen);
    struct pending *p = malloc(sizeof(*p));
    if (!meta || !p) {
        free(meta);
        free(p);
        pb_input_count_reject(h->in, PB_REJECT_OVERLOAD);
        answer_error(r, 503, "out of memory", "Retry-After", "1");
        return;
    }
    p->r = r;
    p->h = h;
    struct pb_item item = {
        .body = body,
        .len = len,
        .content_type = ctype,
        .meta = meta,
        .meta_len = mlen,
        .key = key,
        .traceparent = pb_http_request_header(r, "traceparent"),
        .tracestate = pb_http_request_header(r, "tracestate"),
    };
    int rc = pb_input_submit(h->in, &item, 1, NULL, 0, submit_cb, p);
    free(meta);
    if (rc != 0) {
        free(p);
        pb_input_count_reject(h->in, rc == PB_EFULL ? PB_REJECT_OVERLOAD : PB_REJECT_SHUTDOWN);
        answer_error(r, 503,
                     rc == PB_EFULL ? "overloaded: too many messages waiting for commit"
                                    : "shutting down",
                     "Retry-After", "1");
    }
}

static void arrived(void *arg)
{
    struct in_http *h = arg;
    if (h->in)
        pb_input_count_received(h->in, 1);
}

static void refused(void *arg, enum pb_http_refusal why)
{
    struct in_http *h = arg;
    if (!h->in)
        return;
    pb_input_count_reject(h->in, why == PB_HTTP_REFUSED_METHOD      ? PB_REJECT_METHOD
                                 : why == PB_HTTP_REFUSED_TOO_LARGE ? PB_REJECT_TOO_LARGE
                                                                    : PB_REJECT_OVERLOAD);
}

/* ---- the plugin ----------------------------------------------------------------------- */

static int http_server_init(void *ctx, struct pb_input_env *env, struct pb_err *err)
{
    struct in_http *h = ctx;
    if (h->path[0] != '/')
        return pb_err_set(err, PB_ECONFIG, "http_server path \"%s\" must start with /", h->path);
    if (strncmp(h->path, "/api", 4) == 0 || strcmp(h->path, "/health") == 0 ||
        strcmp(h->path, "/ready") == 0 || strcmp(h->path, "/metrics") == 0 ||
        strncmp(h->path, "/ui", 3) == 0)
        return pb_err_set(err, PB_ECONFIG, "http_server path \"%s\" is reserved", h->path);
    if (h->max_body == 0 || h->max_body > (uint64_t)64 << 20)
        return pb_err_set(err, PB_ECONFIG, "max_body must be between 1B and 64MiB");
    if (h->methods.n > 3)
        return pb_err_set(err, PB_ECONFIG, "http_server methods: at most POST, PUT and PATCH");
    for (size_t i = 0; i < h->methods.n; i++) {
        const char *m = h->methods.items[i];
        if (strcmp(m, "POST") && strcmp(m, "PUT") && strcmp(m, "PATCH"))
            return pb_err_set(err, PB_ECONFIG,
                              "http_server methods may be POST, PUT or PATCH, not \"%s\"", m);
        h->method_list[i] = m;
    }
    if (h->methods.n == 0)
        h->method_list[0] = "POST";
    if (h->headers.n > 64)
        return pb_err_set(err, PB_ECONFIG, "http_server headers: at most 64 names");
    h->all_headers = h->headers.n == 1 && strcmp(h->headers.items[0], "*") == 0;
    if (h->verify.scheme != PB_SCHEME_NONE) {
        h->verifier = pb_verifier_create(&h->verify, err);
        if (!h->verifier)
            return err ? err->code : PB_ECONFIG;
    } else {
        int rc = pb_verify_conf_check(&h->verify, err); /* no options without a scheme */
        if (rc)
            return rc;
    }
    env->raw = h->format != 0;
    env->verifies = h->verifier != NULL;
    env->idempotency_window_ms = h->idempotency.window_ms;
    struct pb_http_route r = {
        .path = h->path,
        .methods = h->method_list,
        .max_body = h->max_body,
        .handler = handle,
        .arg = h,
        .arrived = arrived,
        .refused = refused,
    };
    return env->add_route(env, &r, err);
}

static int http_server_start(void *ctx, struct pb_input *in, struct pb_err *err)
{
    struct in_http *h = ctx;
    (void)err;
    h->in = in;
    return 0;
}

static void http_server_destroy(void *ctx)
{
    struct in_http *h = ctx;
    pb_verifier_destroy(h->verifier);
    h->verifier = NULL;
}

const struct pb_input_plugin pb_in_http_server = {
    .name = "http_server",
    .fields = http_server_fields,
    .ctx_size = sizeof(struct in_http),
    .init = http_server_init,
    .start = http_server_start,
    .destroy = http_server_destroy,
};
