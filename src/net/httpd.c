/* httpd.c - the shared HTTP listener (libmicrohttpd): routes, requests and
 * their answers.
 *
 * A request is read whole before anything looks at it: the head is checked
 * (framing, method, Content-Length against the route's max_body and the
 * bytes in flight), the body is collected, and only then is the route's
 * handler called, on the listener thread. A handler answers with
 * pb_http_respond(), at once or later from any thread: if it has not
 * answered when it returns, the connection is suspended (costing no
 * thread) and resumed when the answer comes.
 *
 * Answers from another thread race with the handler's return; the request's
 * phase settles it: the handler thread suspends, then moves HANDLER ->
 * WAITING; an answer moves the phase to ANSWERED and resumes the connection
 * only if it found WAITING. Either way the next call of access_cb for the
 * connection queues the answer.
 *
 * Bounds: body size per route, bytes being received or waiting for an
 * answer across all requests (503 past it), and server.connection_timeout
 * on silence and on the time a request may take to arrive
 * (httpd_deadline.c). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "net/httpd_int.h"
#include "net/listen.h"
#include "patchbay/pb_log.h"

#define ROUTES_MAX 4096
#define ALLOW_MAX 256

int64_t pb__httpd_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- answers ---------------------------------------------------------------------------- */

static struct MHD_Response *make_response(const char *content_type, const void *body, size_t len,
                                          const struct pb_http_header *headers, size_t nheaders)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)(body ? body : ""), MHD_RESPMEM_MUST_COPY);
    if (!resp)
        return NULL;
    if (MHD_add_response_header(resp, "Content-Type",
                                content_type ? content_type : "application/json") != MHD_YES)
        goto fail;
    for (size_t i = 0; i < nheaders; i++)
        if (MHD_add_response_header(resp, headers[i].name, headers[i].value) != MHD_YES)
            goto fail;
    return resp;
fail:
    MHD_destroy_response(resp);
    return NULL;
}

static enum MHD_Result queue(struct MHD_Connection *c, unsigned status, struct MHD_Response *resp)
{
    if (!resp)
        return MHD_NO;
    enum MHD_Result ret = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* An answer of the listener's own (errors before any handler). */
static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *reason,
                                  const char *hname, const char *hval)
{
    json_t *o = json_pack("{s:s}", "error", reason);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    const char *body = s ? s : "{\"error\":\"internal\"}";
    struct pb_http_header h = {hname, hval};
    enum MHD_Result ret =
        queue(c, status, make_response(NULL, body, strlen(body), &h, hname ? 1 : 0));
    free(s);
    json_decref(o);
    return ret;
}

static void answered(struct pb_http_request *r)
{
    int old = atomic_exchange(&r->phase, PH_ANSWERED);
    if (old == PH_WAITING)
        MHD_resume_connection(r->conn);
}

void pb_http_respond(struct pb_http_request *r, int status, const char *content_type,
                     const void *body, size_t len, const struct pb_http_header *headers,
                     size_t nheaders)
{
    r->resp = make_response(content_type, body, len, headers, nheaders);
    r->status = status > 0 && status < 1000 ? (unsigned)status : 500;
    answered(r);
}

void pb_http_respond_json(struct pb_http_request *r, int status, const char *json)
{
    pb_http_respond(r, status, "application/json", json, json ? strlen(json) : 0, NULL, 0);
}

void pb_http_drop(struct pb_http_request *r)
{
    r->resp = NULL;
    r->status = 0;
    answered(r);
}

/* ---- request accessors ---------------------------------------------------------------- */

const char *pb_http_request_method(const struct pb_http_request *r)
{
    return r->method;
}

const char *pb_http_request_path(const struct pb_http_request *r)
{
    return r->path;
}

const char *pb_http_request_header(const struct pb_http_request *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *pb_http_request_query(const struct pb_http_request *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

struct kv_walk {
    pb_http_kv_fn fn;
    void *arg;
};

static enum MHD_Result kv_cb(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    struct kv_walk *w = cls;
    (void)kind;
    return w->fn(w->arg, key, value) ? MHD_NO : MHD_YES;
}

void pb_http_request_headers(const struct pb_http_request *r, pb_http_kv_fn fn, void *arg)
{
    struct kv_walk w = {fn, arg};
    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, kv_cb, &w);
}

void pb_http_request_queries(const struct pb_http_request *r, pb_http_kv_fn fn, void *arg)
{
    struct kv_walk w = {fn, arg};
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, kv_cb, &w);
}

const char *pb_http_request_body(const struct pb_http_request *r, size_t *len)
{
    if (len)
        *len = r->len;
    return r->buf ? r->buf : "";
}

int64_t pb_http_request_started_us(const struct pb_http_request *r)
{
    return r->start_us;
}

/* ---- routes ------------------------------------------------------------------------------ */

static const struct route *route_for(const struct pb_httpd *h, const char *path)
{
    size_t pl = strlen(path);
    for (size_t i = 0; i < h->nroutes; i++) {
        const struct route *rt = &h->routes[i];
        if (pl == rt->path_len && memcmp(path, rt->r.path, pl) == 0)
            return rt;
        if (rt->r.prefix && pl > rt->path_len && path[rt->path_len] == '/' &&
            memcmp(path, rt->r.path, rt->path_len) == 0)
            return rt;
    }
    return NULL;
}

bool pb_httpd_route_taken(const struct pb_httpd *h, const char *path)
{
    return route_for(h, path) != NULL;
}

int pb_httpd_route_add(struct pb_httpd *h, const struct pb_http_route *r, struct pb_err *err)
{
    if (!r->path || r->path[0] != '/' || !r->handler)
        return pb_err_set(err, PB_EINVAL, "a route needs a path starting with / and a handler");
    if (h->mhd)
        return pb_err_set(err, PB_EINVAL, "routes are added before the listener starts");
    if (route_for(h, r->path))
        return pb_err_set(err, PB_EEXISTS, "path %s is taken by another route", r->path);
    for (size_t i = 0; i < h->nroutes; i++)
        if (r->prefix && strncmp(h->routes[i].r.path, r->path, strlen(r->path)) == 0 &&
            h->routes[i].r.path[strlen(r->path)] == '/')
            return pb_err_set(err, PB_EEXISTS, "path %s is taken by another route",
                              h->routes[i].r.path);
    if (h->nroutes >= ROUTES_MAX)
        return pb_err_set(err, PB_ETOOBIG, "too many routes (at most %d)", ROUTES_MAX);
    struct route *rs = realloc(h->routes, (h->nroutes + 1) * sizeof(*rs));
    if (!rs)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    h->routes = rs;
    rs[h->nroutes].r = *r;
    rs[h->nroutes].path_len = strlen(r->path);
    h->nroutes++;
    return 0;
}

static bool method_allowed(const struct route *rt, const char *method, char *allow, size_t len)
{
    const char *const *m = rt->r.methods;
    if (!m)
        return true;
    bool ok = false;
    allow[0] = 0;
    for (size_t i = 0; m[i]; i++) {
        size_t used = strlen(allow);
        snprintf(allow + used, len - used, "%s%s", i ? ", " : "", m[i]);
        if (strcasecmp(m[i], method) == 0)
            ok = true;
    }
    return ok;
}

/* ---- message framing (RFC 9112 section 6) ---------------------------------------------------
 *
 * A request whose body length could be read two ways is one a proxy in
 * front of patchbay may read the other way: that is how requests are
 * smuggled. Such a request is answered 400 and its connection closed
 * (RFC 9112 6.3, 11.2): Content-Length given twice (even with the same
 * value) or as a list, or not a plain decimal number; Content-Length with
 * Transfer-Encoding; a Transfer-Encoding whose last coding is not chunked.
 * A request-target with an encoded NUL (%00) is refused too: unescaped, it
 * would be cut short and routed to another path. */

struct framing {
    int content_length; /* headers seen */
    bool cl_bad;
    int transfer_encoding;
    bool te_chunked_last;
};

static enum MHD_Result framing_cb(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value)
{
    struct framing *f = cls;
    (void)kind;
    if (strcasecmp(key, "Content-Length") == 0) {
        f->content_length++;
        if (!value || !*value || strspn(value, "0123456789") != strlen(value) || strlen(value) > 19)
            f->cl_bad = true;
    } else if (strcasecmp(key, "Transfer-Encoding") == 0) {
        f->transfer_encoding++;
        /* the last coding of the last header line */
        const char *last = value ? strrchr(value, ',') : NULL;
        last = last ? last + 1 : (value ? value : "");
        while (*last == ' ' || *last == '\t')
            last++;
        size_t n = strlen(last);
        while (n && (last[n - 1] == ' ' || last[n - 1] == '\t'))
            n--;
        f->te_chunked_last = n == 7 && strncasecmp(last, "chunked", 7) == 0;
    }
    return MHD_YES;
}

/* NULL when the request's framing is sound, else the reason. */
static const char *framing_problem(struct MHD_Connection *c, const struct pb_http_request *r)
{
    struct framing f = {0};
    if (r->bad_target)
        return "request target holds an encoded NUL (%00)";
    MHD_get_connection_values(c, MHD_HEADER_KIND, framing_cb, &f);
    if (f.content_length > 1)
        return "Content-Length given more than once";
    if (f.cl_bad)
        return "Content-Length is not one decimal number";
    if (f.content_length && f.transfer_encoding)
        return "Content-Length together with Transfer-Encoding";
    if (f.transfer_encoding && !f.te_chunked_last)
        return "Transfer-Encoding whose last coding is not chunked";
    return NULL;
}

/* The raw request-target, before libmicrohttpd unescapes it; what this
 * returns is the request's context from here on. */
static void *uri_log_cb(void *cls, const char *uri, struct MHD_Connection *c)
{
    (void)cls;
    (void)c;
    struct pb_http_request *r = calloc(1, sizeof(*r));
    if (r) {
        r->fresh = true;
        for (const char *p = uri; p && (p = strchr(p, '%')); p++)
            if (p[1] == '0' && p[2] == '0')
                r->bad_target = true;
    }
    return r;
}

static void refused(const struct route *rt, enum pb_http_refusal why)
{
    if (rt->r.refused)
        rt->r.refused(rt->r.arg, why);
}

/* The head has arrived: check it, find the route, make room for the body. */
static enum MHD_Result head(struct pb_httpd *h, struct pb_http_request *r, struct MHD_Connection *c,
                            const char *url)
{
    const char *framing = framing_problem(c, r);
    if (framing) {
        r->discard = true;
        return send_error(c, MHD_HTTP_BAD_REQUEST, framing, "Connection", "close");
    }
    const struct route *rt = route_for(h, url);
    if (!rt) {
        r->discard = true;
        return MHD_YES; /* 404 once the request has arrived */
    }
    if (rt->r.arrived)
        rt->r.arrived(rt->r.arg);
    char allow[ALLOW_MAX];
    if (!method_allowed(rt, r->method, allow, sizeof(allow))) {
        r->discard = true;
        refused(rt, PB_HTTP_REFUSED_METHOD);
        return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed", "Allow", allow);
    }
    r->limit = rt->r.max_body;
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
    if (cl) {
        char *end;
        unsigned long long n = strtoull(cl, &end, 10);
        if (*end || n > r->limit) {
            r->discard = true;
            refused(rt, PB_HTTP_REFUSED_TOO_LARGE);
            return send_error(c, 413, "body exceeds max_body", "Connection", "close");
        }
        if (n > 0) {
            int64_t room = h->opts.max_inflight_bytes;
            if (atomic_fetch_add(&h->inflight_bytes, (int64_t)n) + (int64_t)n > room) {
                atomic_fetch_sub(&h->inflight_bytes, (int64_t)n);
                r->discard = true;
                refused(rt, PB_HTTP_REFUSED_OVERLOAD);
                return send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                                  "overloaded: too many bytes in flight", "Retry-After", "1");
            }
            r->cap = n;
            r->buf = malloc(n + 1);
            if (!r->buf) {
                atomic_fetch_sub(&h->inflight_bytes, (int64_t)n);
                r->cap = 0;
                r->discard = true;
                refused(rt, PB_HTTP_REFUSED_OVERLOAD);
                return send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory", "Retry-After",
                                  "1");
            }
        }
    }
    r->route = rt;
    return MHD_YES;
}

/* A piece of the body. MHD_NO drops the connection. */
static enum MHD_Result body_piece(struct pb_httpd *h, struct pb_http_request *r, const char *data,
                                  size_t n)
{
    if (pb__httpd_mono_us() > r->deadline_us) {
        pb__httpd_cut_body(h, r);
        return MHD_NO; /* the request is too slow to arrive */
    }
    if (r->discard || !r->route || r->too_big)
        return MHD_YES;
    if (r->len + n > r->limit) {
        r->too_big = true;
        return MHD_YES;
    }
    if (r->len + n > r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 4096;
        while (cap < r->len + n)
            cap *= 2;
        if (cap > r->limit)
            cap = r->limit;
        int64_t grow = (int64_t)(cap - r->cap);
        if (atomic_fetch_add(&h->inflight_bytes, grow) + grow > h->opts.max_inflight_bytes) {
            atomic_fetch_sub(&h->inflight_bytes, grow);
            return MHD_NO; /* we cannot take more right now */
        }
        char *nb = realloc(r->buf, cap + 1);
        if (!nb) {
            atomic_fetch_sub(&h->inflight_bytes, grow);
            return MHD_NO;
        }
        r->buf = nb;
        r->cap = cap;
    }
    memcpy(r->buf + r->len, data, n);
    r->len += n;
    return MHD_YES;
}

/* The answer is ready: queue it (or drop the connection). */
static enum MHD_Result send_answer(struct pb_http_request *r, struct MHD_Connection *c)
{
    struct MHD_Response *resp = r->resp;
    r->resp = NULL;
    if (!resp)
        return MHD_NO;
    if (atomic_load(&r->h->closed))
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    return queue(c, r->status, resp);
}

/* The request has arrived whole: hand it to its handler. */
static enum MHD_Result handle(struct pb_httpd *h, struct pb_http_request *r,
                              struct MHD_Connection *c)
{
    if (r->too_big) {
        refused(r->route, PB_HTTP_REFUSED_TOO_LARGE);
        return send_error(c, 413, "body exceeds max_body", NULL, NULL);
    }
    if (r->buf)
        r->buf[r->len] = 0;
    /* Counted before the check, so pb_httpd_drain sees us or we see it. */
    atomic_fetch_add(&h->waiting, 1);
    r->counted = true;
    if (atomic_load(&h->closed))
        return MHD_NO; /* draining is over: the client retries elsewhere */
    atomic_store(&r->phase, PH_HANDLER);
    r->route->r.handler(r->route->r.arg, r);
    if (atomic_load(&r->phase) == PH_ANSWERED)
        return send_answer(r, c);
    /* Suspend first: an answer that comes before the phase moves resumes
     * nothing, and we resume at once below. */
    MHD_suspend_connection(c);
    int expect = PH_HANDLER;
    if (!atomic_compare_exchange_strong(&r->phase, &expect, PH_WAITING))
        MHD_resume_connection(c);
    return MHD_YES;
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *c, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **con_cls)
{
    (void)version;
    struct pb_httpd *h = cls;
    struct pb_http_request *r = *con_cls;
    if (!r || r->fresh) {
        if (!r)
            r = calloc(1, sizeof(*r));
        if (!r)
            return MHD_NO;
        r->fresh = false;
        r->h = h;
        r->conn = c;
        r->start_us = pb__httpd_mono_us();
        r->method = method;
        r->path = url;
        *con_cls = r;
        if (!pb__httpd_head_arrived(h, r, c))
            return MHD_NO; /* cut by the sweeper meanwhile */
        return head(h, r, c, url);
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        return body_piece(h, r, upload, n);
    }
    switch (atomic_load(&r->phase)) {
    case PH_ANSWERED:
        return send_answer(r, c);
    case PH_WAITING:
    case PH_HANDLER:
        return MHD_YES; /* a spurious call while suspended */
    default:
        break;
    }
    if (!pb__httpd_request_arrived(h, r))
        return MHD_NO; /* cut by the sweeper meanwhile */
    if (r->discard)
        return r->route ? MHD_YES
                        : send_error(c, MHD_HTTP_NOT_FOUND, "no such endpoint", NULL, NULL);
    if (!r->route)
        return send_error(c, MHD_HTTP_NOT_FOUND, "no such endpoint", NULL, NULL);
    return handle(h, r, c);
}

static void completed_cb(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)c;
    struct pb_httpd *h = cls;
    struct pb_http_request *r = *con_cls;
    if (!r)
        return;
    pb__httpd_request_done(h, r, toe);
    if (r->cap)
        atomic_fetch_sub(&h->inflight_bytes, (int64_t)r->cap);
    if (r->counted)
        atomic_fetch_sub(&h->waiting, 1);
    if (r->resp)
        MHD_destroy_response(r->resp);
    free(r->buf);
    free(r);
    *con_cls = NULL;
}

/* libmicrohttpd reports each client that misbehaves or hangs up early; under
 * a flood of such clients that would be a line each. At most MHD_LOG_BURST
 * lines per MHD_LOG_WINDOW_US, then one line saying how many were left out. */
#define MHD_LOG_BURST 20
#define MHD_LOG_WINDOW_US (10 * 1000 * 1000)

static struct {
    pthread_mutex_t lock;
    int64_t window_start;
    unsigned n;
    unsigned long long dropped;
} mhd_log = {.lock = PTHREAD_MUTEX_INITIALIZER};

__attribute__((format(printf, 2, 0))) static void mhd_log_cb(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    int64_t now = pb__httpd_mono_us();
    unsigned long long dropped = 0;
    pthread_mutex_lock(&mhd_log.lock);
    if (now - mhd_log.window_start >= MHD_LOG_WINDOW_US) {
        dropped = mhd_log.dropped;
        mhd_log.window_start = now;
        mhd_log.n = 0;
        mhd_log.dropped = 0;
    }
    bool show = mhd_log.n < MHD_LOG_BURST;
    if (show)
        mhd_log.n++;
    else
        mhd_log.dropped++;
    pthread_mutex_unlock(&mhd_log.lock);
    if (dropped)
        PB_WARN("http server: %llu more messages were left out (at most %d per %d s are "
                "logged)",
                dropped, MHD_LOG_BURST, MHD_LOG_WINDOW_US / 1000000);
    if (!show)
        return;
    char buf[512];
    vsnprintf(buf, sizeof(buf), fmt, ap);
    size_t n = strlen(buf);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = 0;
    PB_WARN("http server: %s", buf);
}

static int inherited_socket(const struct sockaddr_storage *want);

struct pb_httpd *pb_httpd_create(const struct pb_httpd_opts *opts, struct pb_err *err)
{
    struct pb_httpd *h = calloc(1, sizeof(*h));
    pthread_condattr_t ca;
    bool have_ca = false, have_cond = false, ok = false;
    if (!h)
        goto out;
    h->opts = *opts;
    h->listen = strdup(opts->listen ? opts->listen : "");
    h->opts.listen = h->listen;
    if (!h->listen)
        goto out;
    have_ca = pthread_condattr_init(&ca) == 0;
    if (!have_ca || pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(&h->sweep_wake, &ca) != 0)
        goto out;
    have_cond = true;
    ok = pthread_mutex_init(&h->conns_lock, NULL) == 0;
out:
    if (have_ca)
        pthread_condattr_destroy(&ca);
    if (!ok) {
        if (have_cond)
            pthread_cond_destroy(&h->sweep_wake);
        if (h)
            free(h->listen);
        free(h);
        h = NULL;
        pb_err_set(err, PB_ENOMEM, "out of memory");
    }
    return h;
}

int pb_httpd_start(struct pb_httpd *h, struct pb_err *err)
{
    const struct pb_httpd_opts *o = &h->opts;
    struct sockaddr_storage ss;
    socklen_t sl;
    if (pb_listen_parse(o->listen, &ss, &sl) != 0)
        return pb_err_set(err, PB_ECONFIG,
                          "server.listen \"%s\" is not host:port (e.g. 127.0.0.1:8080)", o->listen);
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
                     MHD_USE_TURBO;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    unsigned timeout_s = (unsigned)((o->connection_timeout_ms + 999) / 1000);
    h->deadline_us = o->connection_timeout_ms > 0 ? o->connection_timeout_ms * 1000 : 0;
    if (h->deadline_us) {
        if (pthread_create(&h->sweeper, NULL, pb__httpd_sweeper_main, h) != 0)
            return pb_err_set(err, PB_ENOMEM, "cannot start the http server's sweeper thread");
        h->sweeper_running = true;
    }
    int inherited = inherited_socket(&ss);
    struct MHD_OptionItem opts[] = {
        {MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)mhd_log_cb, NULL},
        {inherited >= 0 ? MHD_OPTION_LISTEN_SOCKET : MHD_OPTION_SOCK_ADDR,
         inherited >= 0 ? inherited : 0, inherited >= 0 ? NULL : &ss},
        {MHD_OPTION_CONNECTION_LIMIT, (intptr_t)o->max_connections, NULL},
        {MHD_OPTION_CONNECTION_TIMEOUT, (intptr_t)timeout_s, NULL},
        {MHD_OPTION_CONNECTION_MEMORY_LIMIT, (intptr_t)(32 * 1024), NULL},
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)completed_cb, h},
        {MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)pb__httpd_conn_notify_cb, h},
        {MHD_OPTION_URI_LOG_CALLBACK, (intptr_t)uri_log_cb, NULL},
        {o->threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, (intptr_t)o->threads, NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    h->mhd = MHD_start_daemon(flags, 0, NULL, NULL, access_cb, h, MHD_OPTION_ARRAY, opts,
                              MHD_OPTION_END);
    if (!h->mhd)
        return pb_err_set(err, PB_EIO,
                          "cannot listen on %s: the port is in use by another process, or not "
                          "permitted",
                          o->listen);
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : 0;
    return 0;
}

unsigned pb_httpd_port(const struct pb_httpd *h)
{
    return h ? h->port : 0;
}

int pb_httpd_quiesce(struct pb_httpd *h, bool keep_socket)
{
    if (!h || !h->mhd)
        return -1;
    MHD_socket s = MHD_quiesce_daemon(h->mhd);
    if (s == MHD_INVALID_SOCKET)
        return -1;
    if (!keep_socket) {
        close(s);
        return -1;
    }
    return s;
}

/* A listening socket handed over by the previous process image on reload
 * (PATCHBAY_LISTEN_FD), when it is bound to the address configured now.
 * Connections that arrive during the reload wait in its backlog. */
static int inherited_socket(const struct sockaddr_storage *want)
{
    const char *v = getenv("PATCHBAY_LISTEN_FD");
    if (!v)
        return -1;
    char *end;
    long fd = strtol(v, &end, 10);
    unsetenv("PATCHBAY_LISTEN_FD");
    if (*end || fd < 3 || fd > 65535)
        return -1;
    struct sockaddr_storage got;
    socklen_t gl = sizeof(got);
    bool same =
        getsockname((int)fd, (struct sockaddr *)&got, &gl) == 0 && got.ss_family == want->ss_family;
    if (same && got.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const void *)&got, *b = (const void *)want;
        same = a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
    } else if (same) {
        const struct sockaddr_in6 *a = (const void *)&got, *b = (const void *)want;
        same = a->sin6_port == b->sin6_port &&
               memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(a->sin6_addr)) == 0;
    }
    if (!same) {
        close((int)fd);
        return -1;
    }
    int fl = fcntl((int)fd, F_GETFD);
    if (fl >= 0)
        fcntl((int)fd, F_SETFD, fl | FD_CLOEXEC);
    return (int)fd;
}

void pb_httpd_drain(struct pb_httpd *h, int64_t timeout_ms)
{
    if (!h)
        return;
    int64_t deadline = pb__httpd_mono_us() + timeout_ms * 1000;
    for (int pass = 0; pass < 2; pass++) {
        while (atomic_load(&h->waiting) > 0 && pb__httpd_mono_us() < deadline) {
            struct timespec ts = {0, 5 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        /* From here on no handler is called; wait for what slipped in
         * between the first wait and closing the gate. */
        atomic_store(&h->closed, true);
    }
}

void pb_httpd_destroy(struct pb_httpd *h)
{
    if (!h)
        return;
    if (h->sweeper_running) {
        pthread_mutex_lock(&h->conns_lock);
        h->sweep_stop = true;
        pthread_cond_signal(&h->sweep_wake);
        pthread_mutex_unlock(&h->conns_lock);
        pthread_join(h->sweeper, NULL);
    }
    if (h->mhd)
        MHD_stop_daemon(h->mhd); /* every connection reported closed: h->conns is empty */
    pthread_mutex_destroy(&h->conns_lock);
    pthread_cond_destroy(&h->sweep_wake);
    free(h->routes);
    free(h->listen);
    free(h);
}
