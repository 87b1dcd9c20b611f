/* pb_server.h - requests on the shared HTTP listener, for the inputs that
 * take HTTP (http_server) and for the admin routes plugins add.
 *
 * The listener reads a request whole (head and body, within the route's
 * max_body and the process-wide bound on bytes in flight), refuses what
 * HTTP forbids, then calls the route's handler on a listener thread. The
 * handler must not block: it answers at once, or keeps the request and
 * answers later, from any thread, with pb_http_respond() — exactly once.
 * Until then the connection waits (suspended), costing no thread. */
#ifndef PB_SERVER_H
#define PB_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pb_http.h"

struct pb_http_request;

/* Request accessors: valid until the request is answered. Lookups are
 * case-blind and give NULL when absent. */
const char *pb_http_request_method(const struct pb_http_request *r);
const char *pb_http_request_path(const struct pb_http_request *r);
const char *pb_http_request_header(const struct pb_http_request *r, const char *name);
const char *pb_http_request_query(const struct pb_http_request *r, const char *name);
/* fn for every header (repeats one by one, in order) or query argument
 * (value NULL for "?flag"); fn returns non-zero to stop. */
typedef int (*pb_http_kv_fn)(void *arg, const char *name, const char *value);
void pb_http_request_headers(const struct pb_http_request *r, pb_http_kv_fn fn, void *arg);
void pb_http_request_queries(const struct pb_http_request *r, pb_http_kv_fn fn, void *arg);
/* The body as received, NUL-terminated (len excludes the NUL). */
const char *pb_http_request_body(const struct pb_http_request *r, size_t *len);
/* Monotonic microseconds when the request began to arrive. */
int64_t pb_http_request_started_us(const struct pb_http_request *r);

/* Answer r, exactly once, from any thread; r is gone afterwards. body is
 * copied; content_type NULL means application/json. */
void pb_http_respond(struct pb_http_request *r, int status, const char *content_type,
                     const void *body, size_t len, const struct pb_http_header *headers,
                     size_t nheaders);
/* The same with a JSON text body. */
void pb_http_respond_json(struct pb_http_request *r, int status, const char *json);
/* End the request without an answer: the connection is closed, and a
 * client retries on a new one (how a draining server refuses work). */
void pb_http_drop(struct pb_http_request *r);

/* What the listener refused on its own before a handler ran, for the
 * route's counters. */
enum pb_http_refusal {
    PB_HTTP_REFUSED_METHOD = 0, /* 405 */
    PB_HTTP_REFUSED_TOO_LARGE,  /* 413 */
    PB_HTTP_REFUSED_OVERLOAD,   /* 503: bytes in flight at their bound */
};

typedef void (*pb_http_handler_fn)(void *arg, struct pb_http_request *r);

struct pb_http_route {
    const char *path;           /* "/hooks/shop" */
    bool prefix;                /* match path and everything under "path/" */
    const char *const *methods; /* NULL-terminated; NULL: any */
    uint64_t max_body;          /* bytes; larger bodies get 413 */
    pb_http_handler_fn handler;
    void *arg;
    /* Optional: a request arrived for the route (before it was read whole),
     * and one the listener refused itself. Listener threads. */
    void (*arrived)(void *arg);
    void (*refused)(void *arg, enum pb_http_refusal why);
};

#endif
