/* http_server.c - the `http_server` input: an ingest route on the shared
 * listener. The listener itself (src/net/httpd.c) receives, validates and
 * commits; this plugin declares the route, its limits and, with a `verify`
 * block, who may post to it (verify.c). */
#include <stddef.h>
#include <string.h>

#include "patchbay/pb_plugin.h"
#include "verify.h"

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

static int http_server_init(void *ctx, const struct pb_input_env *env, struct pb_err *err)
{
    struct in_http *h = ctx;
    if (h->path[0] != '/')
        return pb_err_set(err, PB_ECONFIG, "http_server path \"%s\" must start with /", h->path);
    if (strncmp(h->path, "/api", 4) == 0 || strcmp(h->path, "/health") == 0 ||
        strcmp(h->path, "/ready") == 0 || strcmp(h->path, "/metrics") == 0)
        return pb_err_set(err, PB_ECONFIG, "http_server path \"%s\" is reserved", h->path);
    if (h->max_body == 0 || h->max_body > (uint64_t)64 << 20)
        return pb_err_set(err, PB_ECONFIG, "max_body must be between 1B and 64MiB");
    for (size_t i = 0; i < h->methods.n; i++) {
        const char *m = h->methods.items[i];
        if (strcmp(m, "POST") && strcmp(m, "PUT") && strcmp(m, "PATCH"))
            return pb_err_set(err, PB_ECONFIG,
                              "http_server methods may be POST, PUT or PATCH, not \"%s\"", m);
    }
    if (h->headers.n > 64)
        return pb_err_set(err, PB_ECONFIG, "http_server headers: at most 64 names");
    if (h->verify.scheme != PB_SCHEME_NONE) {
        h->verifier = pb_verifier_create(&h->verify, err);
        if (!h->verifier)
            return err ? err->code : PB_ECONFIG;
    } else {
        int rc = pb_verify_conf_check(&h->verify, err); /* no options without a scheme */
        if (rc)
            return rc;
    }
    struct pb_ingest_route r = {
        .path = h->path,
        .methods = &h->methods,
        .max_body = h->max_body,
        .json = h->format == 0,
        .idempotency_window_ms = h->idempotency.window_ms,
        .idempotency_header = h->idempotency.header,
        .verify = h->verifier ? pb_verifier_check : NULL,
        .verify_ctx = h->verifier,
        .meta_headers = &h->headers,
    };
    return env->add_route(env->arg, &r, err);
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
    .destroy = http_server_destroy,
};
