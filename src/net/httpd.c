/* httpd.c - the shared HTTP listener (libmicrohttpd): ingest routes,
 * /health, /ready, /metrics and the admin API under /api.
 *
 * An ingest request is answered only after its message is committed: the
 * handler validates the body, suspends the connection and queues an INGEST
 * op; the store's writer thread resumes the connection once the op's
 * transaction has landed, and the handler then answers 202 with the id.
 * Bounds: body size per route, bytes being received across all requests,
 * and the writer's ingest queue; past them the answer is 413 or 503.
 * server.connection_timeout bounds both a connection's silence (libmicrohttpd's
 * inactivity timeout) and the time a request may take to arrive (the request
 * deadline below), so clients trickling bytes cannot hold the listener. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "admin/api.h"
#include "core/engine.h"
#include "net/listen.h"
#include "patchbay/pb_json.h"
#include "patchbay/pb_log.h"

#define IDEM_KEY_MAX (PB_WEBHOOK_ID_MAX + 8)
#define INLINE_OUTPUTS 8

const char *const pb_reject_names[PB_REJECT_COUNT] = {
    "bad_json", "too_large", "overload", "store", "method", "shutdown", "unauthorized",
};

const char *const pb_verify_reason_names[PB_VERIFY_REASON_COUNT] = {
    "missing", "malformed", "signature", "timestamp", "claims", "credentials",
};

static const char *header_lookup(void *conn, const char *name)
{
    return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
}

static const char *query_lookup(void *conn, const char *name)
{
    return MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, name);
}

struct pb_httpd {
    struct pb_engine *e;
    struct MHD_Daemon *mhd;
    unsigned port;
    _Atomic int64_t inflight_bytes;
    _Atomic int waiting; /* ingest requests waiting for their commit */
    /* Set once the store is about to stop: a request arriving on a kept-alive
     * connection is then closed unanswered, so the client retries it on a new
     * connection (RFC 9112 9.3.1) instead of reading a 503. */
    _Atomic bool closed;
    /* The request deadline (see "request deadline" below). */
    int64_t deadline_us; /* server.connection_timeout; 0: none */
    pthread_mutex_t conns_lock;
    pthread_cond_t sweep_wake;
    struct conn *conns; /* under conns_lock */
    bool sweep_stop;    /* under conns_lock */
    bool sweeper_running;
    pthread_t sweeper;
    _Atomic uint64_t cut[2]; /* connections cut past the deadline, by enum conn_part */
    uint64_t cuts_logged;    /* sweeper thread only */
    int64_t cuts_logged_at;
};

/* What a connection is doing, for the request deadline. */
enum conn_state {
    CONN_RECEIVING = 0, /* a request is arriving; since_us is when it began */
    CONN_IDLE,          /* kept alive between requests; since_us is when the last one ended */
    CONN_ANSWERING,     /* the request arrived: being handled, committed or answered */
    CONN_CUT,           /* shut down past the deadline */
};
enum conn_part { PART_HEAD = 0, PART_BODY };

/* One per TCP connection, from MHD_CONNECTION_NOTIFY_STARTED to _CLOSED
 * (libmicrohttpd closes the socket only after _CLOSED, so under conns_lock
 * fd is the connection's). Fields are under pb_httpd.conns_lock. */
struct conn {
    struct conn *prev, *next;
    int fd;
    enum conn_state state;
    enum conn_part part; /* PART_BODY once the head has arrived */
    int64_t since_us;
};

enum req_kind { REQ_INGEST = 1, REQ_ADMIN, REQ_OPS, REQ_NOTFOUND };
enum req_phase { PH_RECEIVING = 0, PH_COMMITTING, PH_ANSWER };

struct req {
    bool fresh;      /* made by uri_log_cb, the access handler has not run yet */
    bool bad_target; /* the raw request-target holds an encoded NUL */
    enum req_kind kind;
    struct pb_httpd *h;
    struct pb_pipeline *pl;
    struct MHD_Connection *conn;
    char *buf;
    size_t len, cap, limit;
    bool too_big;
    bool counted; /* in pb_httpd.waiting */
    int64_t start_us;
    int64_t deadline_us; /* the whole request must have arrived by then */
    struct conn *cs;     /* borrowed: NULL when the connection is not tracked */
    const char *method;  /* borrowed from MHD for the request's life */
    _Atomic int phase;
    struct pb_msg *msg;
    struct pb_op op;
    int64_t ids_inline[INLINE_OUTPUTS];
    int64_t *ids;
    char idem_key[IDEM_KEY_MAX + 1];
    /* the answer */
    int status;
    bool replayed;
    char body[256];
};

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, const char *body,
                                 const char *hname, const char *hval)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", "application/json");
    if (hname)
        MHD_add_response_header(r, hname, hval);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *reason,
                                  const char *hname, const char *hval)
{
    json_t *o = json_pack("{s:s}", "error", reason);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    enum MHD_Result ret = send_json(c, status, s ? s : "{\"error\":\"internal\"}", hname, hval);
    free(s);
    json_decref(o);
    return ret;
}

static struct pb_pipeline *route_for(struct pb_engine *e, const char *url)
{
    for (size_t i = 0; i < e->cfg->npipelines; i++) {
        struct pb_pipeline *pl = &e->cfg->pipelines[i];
        if (pl->has_route && strcmp(pl->route.path, url) == 0)
            return pl;
    }
    return NULL;
}

static bool method_allowed(const struct pb_pipeline *pl, const char *method, char *allow,
                           size_t allowlen)
{
    const struct pb_strlist *m = pl->route.methods;
    if (!m || m->n == 0) {
        snprintf(allow, allowlen, "POST");
        return strcmp(method, "POST") == 0;
    }
    bool ok = false;
    allow[0] = 0;
    for (size_t i = 0; i < m->n; i++) {
        size_t used = strlen(allow);
        snprintf(allow + used, allowlen - used, "%s%s", i ? ", " : "", m->items[i]);
        if (strcasecmp(m->items[i], method) == 0)
            ok = true;
    }
    return ok;
}

static void reject(struct pb_pipeline *pl, enum pb_reject why)
{
    atomic_fetch_add(&pl->rejected[why], 1);
}

/* ---- ingest commit ---------------------------------------------------------------------- */

static void ingest_done_cb(struct pb_op *op, void *arg)
{
    struct req *r = arg;
    struct pb_pipeline *pl = r->pl;
    struct pb_op_ingest *in = &op->u.ingest;
    if (op->status == 0 && in->duplicate) {
        r->status = 202;
        r->replayed = true;
        snprintf(r->body, sizeof(r->body), "{\"id\":\"%s\"}", in->dup_msg_id);
        atomic_fetch_add(&pl->duplicates, 1);
    } else if (op->status == 0) {
        r->msg->seq = in->msg_seq;
        r->status = 202;
        snprintf(r->body, sizeof(r->body), "{\"id\":\"%s\"}", r->msg->id);
        atomic_fetch_add(&pl->accepted, 1);
        pb_dispatcher_post_new(r->h->e->disp, pl, r->msg, r->ids);
    } else {
        r->status = 503;
        snprintf(r->body, sizeof(r->body), "{\"error\":\"%s\"}",
                 op->status == PB_ENOSPACE ? "state store is out of space"
                                           : "state store unavailable");
        reject(pl, PB_REJECT_STORE);
    }
    atomic_store(&r->phase, PH_ANSWER);
    MHD_resume_connection(r->conn);
}

/* ---- $meta -------------------------------------------------------------------------------- */

#define META_HEADERS_MAX 100       /* distinct header names kept */
#define META_VALUE_MAX (16 * 1024) /* bytes of one header's joined values */

struct meta_walk {
    const struct pb_strlist *want;
    bool all;
    json_t *obj;
    size_t n;
    bool failed;
};

static bool wanted(const struct meta_walk *w, const char *name)
{
    if (w->all)
        return true;
    for (size_t i = 0; i < w->want->n; i++)
        if (strcasecmp(w->want->items[i], name) == 0)
            return true;
    return false;
}

/* One header (repeats come one by one): lower-cased name, values joined
 * with ", " into one string. */
static enum MHD_Result meta_header_cb(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value)
{
    struct meta_walk *w = cls;
    char name[128];
    size_t n = strlen(key);

    (void)kind;
    if (!value || n == 0 || n >= sizeof(name) || !wanted(w, key))
        return MHD_YES;
    for (size_t i = 0; i <= n; i++)
        name[i] = (char)tolower((unsigned char)key[i]);
    if (!pb_utf8_valid(value, strlen(value)))
        return MHD_YES; /* jansson takes UTF-8 only; such a header is not kept */
    json_t *old = json_object_get(w->obj, name);
    if (old) {
        const char *ov = json_string_value(old);
        size_t ol = strlen(ov), vl = strlen(value);
        if (ol + 2 + vl > META_VALUE_MAX)
            return MHD_YES;
        char *joined = malloc(ol + 2 + vl + 1);
        if (!joined) {
            w->failed = true;
            return MHD_NO;
        }
        memcpy(joined, ov, ol);
        memcpy(joined + ol, ", ", 2);
        memcpy(joined + ol + 2, value, vl + 1);
        if (json_object_set_new(w->obj, name, json_string(joined)) != 0)
            w->failed = true;
        free(joined);
        return w->failed ? MHD_NO : MHD_YES;
    }
    if (w->n >= META_HEADERS_MAX || strlen(value) > META_VALUE_MAX)
        return MHD_YES;
    w->n++;
    if (json_object_set_new(w->obj, name, json_string(value)) != 0) {
        w->failed = true;
        return MHD_NO;
    }
    return MHD_YES;
}

static enum MHD_Result meta_query_cb(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    struct meta_walk *w = cls;
    (void)kind;
    if (w->n >= META_HEADERS_MAX || !pb_utf8_valid(key, strlen(key)) ||
        (value && !pb_utf8_valid(value, strlen(value))) || json_object_get(w->obj, key))
        return MHD_YES;
    w->n++;
    if (json_object_set_new(w->obj, key, value ? json_string(value) : json_null()) != 0) {
        w->failed = true;
        return MHD_NO;
    }
    return MHD_YES;
}

/* $meta of an ingest request: input, pipeline, receipt time, method, path,
 * query arguments and the headers the route keeps. malloc'd JSON text. */
static char *request_meta(struct req *r, struct MHD_Connection *c, int64_t now, size_t *len)
{
    const struct pb_ingest_route *rt = &r->pl->route;
    json_t *m =
        json_pack("{s:s, s:s, s:I, s:s, s:s}", "input", "http_server", "pipeline", r->pl->name,
                  "received_at", (json_int_t)now, "method", r->method, "path", rt->path);
    struct meta_walk hw = {.want = rt->meta_headers}, qw = {0};
    char *text = NULL;

    if (!m)
        return NULL;
    hw.all = rt->meta_headers && rt->meta_headers->n == 1 &&
             strcmp(rt->meta_headers->items[0], "*") == 0;
    qw.obj = json_object();
    if (!qw.obj || json_object_set_new(m, "query", qw.obj) != 0)
        goto out;
    MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, meta_query_cb, &qw);
    if (rt->meta_headers && rt->meta_headers->n) {
        hw.obj = json_object();
        if (!hw.obj || json_object_set_new(m, "headers", hw.obj) != 0)
            goto out;
        MHD_get_connection_values(c, MHD_HEADER_KIND, meta_header_cb, &hw);
    }
    if (!hw.failed && !qw.failed)
        text = json_dumps(m, JSON_COMPACT);
out:
    json_decref(m);
    if (text)
        *len = strlen(text);
    return text;
}

static enum MHD_Result ingest_final(struct req *r, struct MHD_Connection *c)
{
    struct pb_pipeline *pl = r->pl;
    struct pb_engine *e = r->h->e;
    if (r->too_big) {
        reject(pl, PB_REJECT_TOO_LARGE);
        return send_error(c, 413, "body exceeds max_body", NULL, NULL);
    }
    struct pb_verify_result vres = {0};
    if (pl->route.verify) {
        struct pb_verify_req vreq = {
            .method = r->method,
            .path = pl->route.path,
            .body = r->buf ? r->buf : "",
            .len = r->len,
            .now_ms = pb_now_ms(),
            .header = header_lookup,
            .query = query_lookup,
            .conn = c,
        };
        if (pl->route.verify(pl->route.verify_ctx, &vreq, &vres) != 0) {
            enum pb_verify_reason why = vres.reason < PB_VERIFY_REASON_COUNT ? vres.reason : 0;
            atomic_fetch_add(&pl->verify_failed[why], 1);
            reject(pl, PB_REJECT_UNAUTHORIZED);
            PB_WARN("webhook verification failed pipeline=%s reason=%s", pl->name,
                    pb_verify_reason_names[why]);
            return send_error(c, MHD_HTTP_UNAUTHORIZED, "unauthorized", NULL, NULL);
        }
    }
    if (pl->route.json) {
        struct pb_json_check chk = {0};
        if (pb_json_validate(r->buf ? r->buf : "", r->len, &chk) != 0) {
            char reason[160];
            snprintf(reason, sizeof(reason), "invalid JSON: %s at byte %zu",
                     chk.err_reason ? chk.err_reason : "malformed", chk.err_offset);
            reject(pl, PB_REJECT_BAD_JSON);
            return send_error(c, MHD_HTTP_BAD_REQUEST, reason, NULL, NULL);
        }
    }
    const char *key = NULL;
    if (pl->route.idempotency_window_ms > 0 && pl->route.idempotency_header) {
        key = MHD_lookup_connection_value(c, MHD_HEADER_KIND, pl->route.idempotency_header);
        if (key) {
            size_t kl = strlen(key);
            bool ok = kl > 0 && kl <= 255;
            for (size_t i = 0; ok && i < kl; i++)
                ok = key[i] > 0x20 && key[i] < 0x7f;
            if (!ok) {
                reject(pl, PB_REJECT_BAD_JSON);
                return send_error(c, MHD_HTTP_BAD_REQUEST,
                                  "idempotency key must be 1-255 visible ASCII characters", NULL,
                                  NULL);
            }
            memcpy(r->idem_key, key, kl + 1);
            key = r->idem_key;
        }
    }
    if (!key && vres.webhook_id[0]) {
        /* A resent webhook carries the same id: acknowledge, store nothing new. */
        snprintf(r->idem_key, sizeof(r->idem_key), "webhook:%s", vres.webhook_id);
        key = r->idem_key;
    }
    /* While stopping, the writer still commits what arrives on open
     * connections (the answer then closes the connection); once it has
     * stopped, submit says PB_ESHUTDOWN and the answer is 503. */
    const char *ctype = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    if (pl->route.json || !ctype)
        ctype = pl->route.json ? "application/json" : "application/octet-stream";
    r->msg = pb_msg_create(r->buf, r->len, ctype);
    if (pl->ningest > INLINE_OUTPUTS)
        r->ids = calloc(pl->ningest, sizeof(*r->ids));
    else
        r->ids = r->ids_inline;
    if (!r->msg || !r->ids) {
        reject(pl, PB_REJECT_OVERLOAD);
        return send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory", "Retry-After", "1");
    }
    int64_t now = pb_now_ms();
    r->msg->received_at = now;
    pb_msg_new_id(r->msg->id, now);
    size_t mlen = 0;
    char *meta = request_meta(r, c, now, &mlen);
    int mrc = meta ? pb_msg_set_meta(r->msg, meta, mlen) : PB_ENOMEM;
    free(meta);
    if (mrc) {
        reject(pl, PB_REJECT_OVERLOAD);
        return send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory", "Retry-After", "1");
    }
    r->op = (struct pb_op){.kind = PB_OP_INGEST, .done_cb = ingest_done_cb, .arg = r};
    struct pb_op_ingest *in = &r->op.u.ingest;
    in->pipeline = pl->name;
    in->msg_id = r->msg->id;
    in->body = r->msg->body;
    in->len = r->msg->len;
    in->content_type = r->msg->content_type;
    in->meta = r->msg->meta;
    in->meta_len = r->msg->meta_len;
    in->received_at = now;
    in->idem_key = key;
    in->idem_expires_at = now + pl->route.idempotency_window_ms;
    in->noutputs = pl->ningest;
    in->outputs = pl->ingest_names;
    in->first_due_at = now;
    in->delivery_ids = r->ids;

    /* Suspend before queueing: the writer may resume us at any moment. */
    atomic_store(&r->phase, PH_COMMITTING);
    atomic_fetch_add(&r->h->waiting, 1);
    if (atomic_load(&r->h->closed)) {
        /* Counted before the check, so pb_httpd_drain sees us or we see it. */
        atomic_fetch_sub(&r->h->waiting, 1);
        reject(pl, PB_REJECT_SHUTDOWN);
        return MHD_NO;
    }
    r->counted = true;
    MHD_suspend_connection(c);
    int rc = pb_store_submit(e->store, &r->op);
    if (rc != 0) {
        enum pb_reject why = rc == PB_EFULL ? PB_REJECT_OVERLOAD : PB_REJECT_SHUTDOWN;
        reject(pl, why);
        r->status = 503;
        snprintf(r->body, sizeof(r->body), "{\"error\":\"%s\"}",
                 rc == PB_EFULL ? "overloaded: too many messages waiting for commit"
                                : "shutting down");
        atomic_store(&r->phase, PH_ANSWER);
        MHD_resume_connection(c);
    }
    return MHD_YES;
}

static enum MHD_Result ingest_answer(struct req *r, struct MHD_Connection *c)
{
    pb_hist_observe(&r->pl->ingest_latency, pb_mono_us() - r->start_us);
    if (r->status == 503)
        return send_json(c, 503, r->body, "Retry-After", "1");
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(r->body), r->body, MHD_RESPMEM_MUST_COPY);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", "application/json");
    if (r->replayed)
        MHD_add_response_header(resp, "Idempotent-Replayed", "true");
    if (atomic_load(&r->h->e->stopping))
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* ---- request deadline --------------------------------------------------------------------
 *
 * libmicrohttpd's connection timeout measures silence only: a client sending
 * a byte every half second would hold its connection for ever, and
 * max_connections of them would shut ingest out. So a request must also
 * arrive whole, head and body, within server.connection_timeout: counted from
 * connect for a connection's first request, and from its first byte for a
 * later one on a kept-alive connection (between requests only the inactivity
 * timeout applies). Once a request has arrived it is not cut any more: its
 * commit (the connection suspended) and its answer are outside the deadline.
 *
 * libmicrohttpd calls nothing before a head is complete, so a sweeper thread
 * looks at every connection a few times per timeout and shuts down the
 * socket of one still receiving past its deadline; libmicrohttpd then reads
 * the end of stream and closes the connection as if the client had. A body
 * is also checked as it arrives (access_cb), which cuts it without waiting
 * for a sweep. */

#define SWEEP_MIN_US (50 * 1000)
#define SWEEP_MAX_US (1000 * 1000)
#define CUT_LOG_EVERY_US (10 * 1000 * 1000)
/* The kernel keeps the time of the last data received in jiffies. */
#define RECV_SLACK_US (20 * 1000)

static void conn_notify_cb(void *cls, struct MHD_Connection *c, void **socket_context,
                           enum MHD_ConnectionNotificationCode toe)
{
    struct pb_httpd *h = cls;
    struct conn *cs = *socket_context;
    if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        if (!cs)
            return;
        pthread_mutex_lock(&h->conns_lock);
        if (cs->prev)
            cs->prev->next = cs->next;
        else
            h->conns = cs->next;
        if (cs->next)
            cs->next->prev = cs->prev;
        pthread_mutex_unlock(&h->conns_lock);
        free(cs);
        *socket_context = NULL;
        return;
    }
    if (!h->deadline_us)
        return;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci || ci->connect_fd == MHD_INVALID_SOCKET)
        return;
    cs = calloc(1, sizeof(*cs));
    if (!cs)
        return; /* untracked: only its body is held to the deadline */
    cs->fd = ci->connect_fd;
    cs->state = CONN_RECEIVING;
    cs->part = PART_HEAD;
    cs->since_us = pb_mono_us();
    pthread_mutex_lock(&h->conns_lock);
    cs->next = h->conns;
    if (h->conns)
        h->conns->prev = cs;
    h->conns = cs;
    pthread_mutex_unlock(&h->conns_lock);
    *socket_context = cs;
}

/* r's head has arrived (MHD thread): set its deadline. False when the
 * sweeper has cut the connection meanwhile. */
static bool conn_head_arrived(struct pb_httpd *h, struct req *r, struct MHD_Connection *c)
{
    r->deadline_us = INT64_MAX;
    if (!h->deadline_us)
        return true;
    r->deadline_us = r->start_us + h->deadline_us;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    r->cs = ci ? ci->socket_context : NULL;
    if (!r->cs)
        return true;
    pthread_mutex_lock(&h->conns_lock);
    struct conn *cs = r->cs;
    bool ok = cs->state != CONN_CUT;
    if (ok) {
        if (cs->state != CONN_RECEIVING) {
            /* The first byte came after the sweeper's last look: within a sweep. */
            cs->state = CONN_RECEIVING;
            cs->since_us = r->start_us;
        }
        cs->part = PART_BODY;
        r->deadline_us = cs->since_us + h->deadline_us;
    }
    pthread_mutex_unlock(&h->conns_lock);
    return ok;
}

/* r has arrived whole (MHD thread): the deadline no longer applies. False
 * when the sweeper has cut the connection first. */
static bool conn_request_arrived(struct pb_httpd *h, struct req *r)
{
    if (!r->cs)
        return true;
    pthread_mutex_lock(&h->conns_lock);
    bool ok = r->cs->state != CONN_CUT;
    if (ok)
        r->cs->state = CONN_ANSWERING;
    pthread_mutex_unlock(&h->conns_lock);
    return ok;
}

/* r's body is still arriving past its deadline (MHD thread; the caller
 * drops the connection): count it, unless the sweeper already has. */
static void conn_cut_body(struct pb_httpd *h, struct req *r)
{
    bool counted = false;
    if (r->cs) {
        pthread_mutex_lock(&h->conns_lock);
        counted = r->cs->state == CONN_CUT;
        r->cs->state = CONN_CUT;
        pthread_mutex_unlock(&h->conns_lock);
    }
    if (!counted)
        atomic_fetch_add(&h->cut[PART_BODY], 1);
}

/* r is over (MHD thread). On a kept-alive connection the next request's
 * time starts with its first byte, which the sweeper watches for. */
static void conn_request_done(struct pb_httpd *h, struct req *r,
                              enum MHD_RequestTerminationCode toe)
{
    if (!r->cs)
        return;
    pthread_mutex_lock(&h->conns_lock);
    if (r->cs->state != CONN_CUT) {
        r->cs->state = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? CONN_IDLE : CONN_ANSWERING;
        r->cs->part = PART_HEAD;
        r->cs->since_us = pb_mono_us();
    }
    pthread_mutex_unlock(&h->conns_lock);
}

/* Microseconds since data last arrived on fd, or -1 when unknown. */
static int64_t last_data_age_us(int fd)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 ||
        len < offsetof(struct tcp_info, tcpi_last_data_recv) + sizeof(ti.tcpi_last_data_recv))
        return -1;
    return (int64_t)ti.tcpi_last_data_recv * 1000;
}

/* Under conns_lock. */
static void sweep(struct pb_httpd *h, int64_t now)
{
    for (struct conn *cs = h->conns; cs; cs = cs->next) {
        if (cs->state == CONN_IDLE) {
            /* Data since the last request ended: the next one has begun. */
            int64_t age = last_data_age_us(cs->fd);
            if (age < 0 || age + RECV_SLACK_US >= now - cs->since_us)
                continue;
            cs->state = CONN_RECEIVING;
            cs->since_us = now - age;
        }
        if (cs->state != CONN_RECEIVING || now - cs->since_us < h->deadline_us)
            continue;
        shutdown(cs->fd, SHUT_RDWR);
        cs->state = CONN_CUT;
        atomic_fetch_add(&h->cut[cs->part], 1);
    }
}

/* One warning for the first cut, then at most one per CUT_LOG_EVERY_US
 * with what came since; and what is left when the sweeper stops. */
static void report_cuts(struct pb_httpd *h, bool last)
{
    uint64_t head = atomic_load(&h->cut[PART_HEAD]), body = atomic_load(&h->cut[PART_BODY]);
    int64_t now = pb_mono_us();
    if (head + body == h->cuts_logged ||
        (!last && h->cuts_logged && now - h->cuts_logged_at < CUT_LOG_EVERY_US))
        return;
    PB_WARN("http server: closed connections whose request did not arrive within "
            "server.connection_timeout connections=%llu timeout_ms=%lld total_head=%llu "
            "total_body=%llu",
            (unsigned long long)(head + body - h->cuts_logged), (long long)(h->deadline_us / 1000),
            (unsigned long long)head, (unsigned long long)body);
    h->cuts_logged = head + body;
    h->cuts_logged_at = now;
}

static void *sweeper_main(void *arg)
{
    struct pb_httpd *h = arg;
    int64_t period = h->deadline_us / 8;
    if (period < SWEEP_MIN_US)
        period = SWEEP_MIN_US;
    if (period > SWEEP_MAX_US)
        period = SWEEP_MAX_US;
    for (;;) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += (time_t)(period / 1000000);
        ts.tv_nsec += (long)(period % 1000000) * 1000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_mutex_lock(&h->conns_lock);
        while (!h->sweep_stop &&
               pthread_cond_timedwait(&h->sweep_wake, &h->conns_lock, &ts) != ETIMEDOUT)
            ;
        bool stop = h->sweep_stop;
        if (!stop)
            sweep(h, pb_mono_us());
        pthread_mutex_unlock(&h->conns_lock);
        report_cuts(h, stop);
        if (stop)
            return NULL;
    }
}

void pb_httpd_request_timeouts(const struct pb_httpd *h, uint64_t *head, uint64_t *body)
{
    *head = h ? atomic_load(&h->cut[PART_HEAD]) : 0;
    *body = h ? atomic_load(&h->cut[PART_BODY]) : 0;
}

/* ---- operations endpoints --------------------------------------------------------------- */

static enum MHD_Result ops_answer(struct pb_engine *e, struct MHD_Connection *c, const char *url,
                                  const char *method)
{
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed", "Allow", "GET");
    if (strcmp(url, "/health") == 0)
        return send_json(c, 200, "{\"status\":\"ok\"}", NULL, NULL);
    if (strcmp(url, "/ready") == 0) {
        const char *why = NULL;
        if (!atomic_load(&e->ready))
            why = atomic_load(&e->stopping) ? "shutting down" : "starting";
        else if (!pb_store_writable(e->store))
            why = "state store is not writable";
        else if (!pb_dispatcher_running(e->disp))
            why = "dispatcher stopped";
        if (why) {
            char body[128];
            snprintf(body, sizeof(body), "{\"ready\":false,\"reason\":\"%s\"}", why);
            return send_json(c, 503, body, NULL, NULL);
        }
        return send_json(c, 200, "{\"ready\":true}", NULL, NULL);
    }
    size_t len = 0;
    char *text = pb_metrics_render(e, &len);
    if (!text)
        return send_error(c, 500, "out of memory", NULL, NULL);
    struct MHD_Response *r = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    enum MHD_Result ret = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return ret;
}

static bool token_ok(struct pb_engine *e, struct MHD_Connection *c)
{
    const char *want = e->cfg->server.admin_token;
    const char *got = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!want || !*want || !got || strncasecmp(got, "Bearer ", 7) != 0)
        return false;
    got += 7;
    size_t wl = strlen(want), gl = strlen(got);
    /* Constant time in the secret's content; length mismatch still compares. */
    unsigned char diff = (unsigned char)(wl != gl);
    for (size_t i = 0; i < wl; i++)
        diff |= (unsigned char)(want[i] ^ (i < gl ? got[i] : 0));
    return diff == 0 && CRYPTO_memcmp(want, got, wl < gl ? wl : gl) == 0;
}

static enum MHD_Result admin_answer(struct req *r, struct MHD_Connection *c, const char *url,
                                    const char *method)
{
    struct pb_engine *e = r->h->e;
    if (!e->cfg->server.admin_token || !*e->cfg->server.admin_token)
        return send_error(c, MHD_HTTP_FORBIDDEN, "admin API disabled: set server.admin_token", NULL,
                          NULL);
    if (!token_ok(e, c))
        return send_error(c, MHD_HTTP_UNAUTHORIZED, "missing or wrong bearer token",
                          "WWW-Authenticate", "Bearer");
    struct pb_api_resp resp = {0};
    pb_admin_handle(e, c, method, url, r->buf ? r->buf : "", r->len, &resp);
    enum MHD_Result ret;
    if (resp.status == 204) {
        struct MHD_Response *m = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
        ret = m ? MHD_queue_response(c, 204, m) : MHD_NO;
        if (m)
            MHD_destroy_response(m);
    } else {
        ret = send_json(c, (unsigned)resp.status, resp.body ? resp.body : "{}", NULL, NULL);
    }
    free(resp.body);
    return ret;
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
static const char *framing_problem(struct MHD_Connection *c, const struct req *r)
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
    struct req *r = calloc(1, sizeof(*r));
    if (r) {
        r->fresh = true;
        for (const char *p = uri; p && (p = strchr(p, '%')); p++)
            if (p[1] == '0' && p[2] == '0')
                r->bad_target = true;
    }
    return r;
}

/* ---- MHD callbacks ------------------------------------------------------------------------- */

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *c, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **con_cls)
{
    (void)version;
    struct pb_httpd *h = cls;
    struct req *r = *con_cls;
    if (!r || r->fresh) {
        if (!r)
            r = calloc(1, sizeof(*r));
        if (!r)
            return MHD_NO;
        r->fresh = false;
        r->h = h;
        r->conn = c;
        r->start_us = pb_mono_us();
        r->method = method;
        *con_cls = r;
        if (!conn_head_arrived(h, r, c))
            return MHD_NO; /* cut by the sweeper meanwhile */
        const char *framing = framing_problem(c, r);
        if (framing) {
            r->kind = REQ_NOTFOUND;
            r->too_big = true; /* whatever follows is discarded */
            return send_error(c, MHD_HTTP_BAD_REQUEST, framing, "Connection", "close");
        }
        if (strncmp(url, "/api/", 5) == 0 || strcmp(url, "/api") == 0) {
            r->kind = REQ_ADMIN;
            r->limit = 64 * 1024;
        } else if (!strcmp(url, "/health") || !strcmp(url, "/ready") || !strcmp(url, "/metrics")) {
            r->kind = REQ_OPS;
        } else if ((r->pl = route_for(h->e, url))) {
            r->kind = REQ_INGEST;
            r->limit = r->pl->route.max_body;
            atomic_fetch_add(&r->pl->received, 1);
            char allow[128];
            if (!method_allowed(r->pl, method, allow, sizeof(allow))) {
                reject(r->pl, PB_REJECT_METHOD);
                return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed", "Allow",
                                  allow);
            }
            const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
            if (cl) {
                char *end;
                unsigned long long n = strtoull(cl, &end, 10);
                if (*end || n > r->limit) {
                    r->too_big = true;
                    reject(r->pl, PB_REJECT_TOO_LARGE);
                    return send_error(c, 413, "body exceeds max_body", "Connection", "close");
                }
                if (n > 0) {
                    int64_t room = h->e->cfg->limits.max_inflight_bytes;
                    if (atomic_fetch_add(&h->inflight_bytes, (int64_t)n) + (int64_t)n > room) {
                        atomic_fetch_sub(&h->inflight_bytes, (int64_t)n);
                        reject(r->pl, PB_REJECT_OVERLOAD);
                        return send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                                          "overloaded: too many bytes in flight", "Retry-After",
                                          "1");
                    }
                    r->cap = n;
                    r->buf = malloc(n + 1);
                    if (!r->buf) {
                        atomic_fetch_sub(&h->inflight_bytes, (int64_t)n);
                        r->cap = 0;
                        reject(r->pl, PB_REJECT_OVERLOAD);
                        return send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory",
                                          "Retry-After", "1");
                    }
                }
            }
        } else {
            r->kind = REQ_NOTFOUND;
        }
        return MHD_YES;
    }

    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (pb_mono_us() > r->deadline_us) {
            conn_cut_body(h, r);
            return MHD_NO; /* drop the connection: the request is too slow to arrive */
        }
        if (r->kind == REQ_OPS || r->kind == REQ_NOTFOUND || r->too_big)
            return MHD_YES; /* discard */
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
            if (atomic_fetch_add(&h->inflight_bytes, grow) + grow >
                h->e->cfg->limits.max_inflight_bytes) {
                atomic_fetch_sub(&h->inflight_bytes, grow);
                return MHD_NO; /* drop the connection: we cannot take more right now */
            }
            char *nb = realloc(r->buf, cap + 1);
            if (!nb) {
                atomic_fetch_sub(&h->inflight_bytes, grow);
                return MHD_NO;
            }
            r->buf = nb;
            r->cap = cap;
        }
        memcpy(r->buf + r->len, upload, n);
        r->len += n;
        return MHD_YES;
    }

    if (!conn_request_arrived(h, r))
        return MHD_NO; /* cut by the sweeper meanwhile: nothing is committed */
    switch (r->kind) {
    case REQ_INGEST:
        if (atomic_load(&r->phase) == PH_ANSWER)
            return ingest_answer(r, c);
        if (atomic_load(&r->phase) == PH_COMMITTING)
            return MHD_YES; /* spurious call while suspended */
        return ingest_final(r, c);
    case REQ_ADMIN:
        if (r->too_big)
            return send_error(c, 413, "body too large", NULL, NULL);
        return admin_answer(r, c, url, method);
    case REQ_OPS:
        return ops_answer(h->e, c, url, method);
    default:
        return send_error(c, MHD_HTTP_NOT_FOUND, "no such endpoint", NULL, NULL);
    }
}

static void completed_cb(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)c;
    struct pb_httpd *h = cls;
    struct req *r = *con_cls;
    if (!r)
        return;
    conn_request_done(h, r, toe);
    if (r->cap)
        atomic_fetch_sub(&h->inflight_bytes, (int64_t)r->cap);
    if (r->counted)
        atomic_fetch_sub(&h->waiting, 1);
    free(r->buf);
    pb_msg_unref(r->msg);
    if (r->ids != r->ids_inline)
        free(r->ids);
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
    int64_t now = pb_mono_us();
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

struct pb_httpd *pb_httpd_create(struct pb_engine *e, struct pb_err *err)
{
    struct pb_httpd *h = calloc(1, sizeof(*h));
    pthread_condattr_t ca;
    bool have_ca = false, have_cond = false, ok = false;
    if (!h)
        goto out;
    h->e = e;
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
        free(h);
        h = NULL;
        pb_err_set(err, PB_ENOMEM, "out of memory");
    }
    return h;
}

int pb_httpd_start(struct pb_httpd *h, struct pb_err *err)
{
    struct pb_server_conf *sc = &h->e->cfg->server;
    struct sockaddr_storage ss;
    socklen_t sl;
    if (pb_listen_parse(sc->listen, &ss, &sl) != 0)
        return pb_err_set(err, PB_ECONFIG,
                          "server.listen \"%s\" is not host:port (e.g. 127.0.0.1:8080)",
                          sc->listen);
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
                     MHD_USE_TURBO;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    unsigned timeout_s = (unsigned)((sc->connection_timeout_ms + 999) / 1000);
    h->deadline_us = sc->connection_timeout_ms > 0 ? sc->connection_timeout_ms * 1000 : 0;
    if (h->deadline_us) {
        if (pthread_create(&h->sweeper, NULL, sweeper_main, h) != 0)
            return pb_err_set(err, PB_ENOMEM, "cannot start the http server's sweeper thread");
        h->sweeper_running = true;
    }
    int inherited = inherited_socket(&ss);
    struct MHD_OptionItem opts[] = {
        {MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)mhd_log_cb, NULL},
        {inherited >= 0 ? MHD_OPTION_LISTEN_SOCKET : MHD_OPTION_SOCK_ADDR,
         inherited >= 0 ? inherited : 0, inherited >= 0 ? NULL : &ss},
        {MHD_OPTION_CONNECTION_LIMIT, (intptr_t)sc->max_connections, NULL},
        {MHD_OPTION_CONNECTION_TIMEOUT, (intptr_t)timeout_s, NULL},
        {MHD_OPTION_CONNECTION_MEMORY_LIMIT, (intptr_t)(32 * 1024), NULL},
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)completed_cb, h},
        {MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)conn_notify_cb, h},
        {MHD_OPTION_URI_LOG_CALLBACK, (intptr_t)uri_log_cb, NULL},
        {sc->threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, (intptr_t)sc->threads,
         NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    h->mhd = MHD_start_daemon(flags, 0, NULL, NULL, access_cb, h, MHD_OPTION_ARRAY, opts,
                              MHD_OPTION_END);
    if (!h->mhd)
        return pb_err_set(err, PB_EIO,
                          "cannot listen on %s: the port is in use by another process, or not "
                          "permitted",
                          sc->listen);
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
    int64_t deadline = pb_mono_us() + timeout_ms * 1000;
    for (int pass = 0; pass < 2; pass++) {
        while (atomic_load(&h->waiting) > 0 && pb_mono_us() < deadline) {
            struct timespec ts = {0, 5 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        /* From here on nothing new reaches the store; wait for what slipped
         * in between the first wait and closing the gate. */
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
    free(h);
}
