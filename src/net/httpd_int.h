/* httpd_int.h - what the listener's files share: httpd.c (routes, requests,
 * answers) and httpd_deadline.c (the request deadline). Not for use outside
 * src/net. */
#ifndef PB_NET_HTTPD_INT_H
#define PB_NET_HTTPD_INT_H

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "net/httpd.h"

/* What a connection is doing, for the request deadline. */
enum conn_state {
    CONN_RECEIVING = 0, /* a request is arriving; since_us is when it began */
    CONN_IDLE,          /* kept alive between requests; since_us is when the last one ended */
    CONN_ANSWERING,     /* the request arrived: being handled or answered */
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

struct route {
    struct pb_http_route r;
    size_t path_len;
};

struct pb_httpd {
    struct pb_httpd_opts opts;
    char *listen;
    struct MHD_Daemon *mhd;
    unsigned port;
    struct route *routes;
    size_t nroutes;
    _Atomic int64_t inflight_bytes;
    _Atomic int waiting; /* requests handed to a handler and not answered yet */
    /* Set once draining is over: a request arriving on a kept-alive
     * connection is then closed unanswered, so the client retries it on a
     * new connection (RFC 9112 9.3.1) instead of reading a 503. */
    _Atomic bool closed;
    /* The request deadline (httpd_deadline.c). */
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

/* Where a request is; changed with atomics where a handler may answer from
 * another thread. */
enum req_phase {
    PH_RECEIVING = 0, /* head and body arriving */
    PH_HANDLER,       /* the handler runs (listener thread) */
    PH_WAITING,       /* the handler returned without answering: connection suspended */
    PH_ANSWERED,      /* the answer is ready to queue */
};

struct pb_http_request {
    bool fresh;      /* made by uri_log_cb, the access handler has not run yet */
    bool bad_target; /* the raw request-target holds an encoded NUL */
    bool discard;    /* answered before the body: what follows is read and dropped */
    struct pb_httpd *h;
    const struct route *route; /* NULL: no handler (not found, refused) */
    struct MHD_Connection *conn;
    const char *method, *path; /* borrowed from libmicrohttpd for the request's life */
    char *buf;
    size_t len, cap, limit;
    bool too_big;
    bool counted; /* in pb_httpd.waiting */
    int64_t start_us;
    int64_t deadline_us; /* the whole request must have arrived by then */
    struct conn *cs;     /* borrowed: NULL when the connection is not tracked */
    _Atomic int phase;
    /* the answer */
    unsigned status;
    struct MHD_Response *resp; /* NULL with status 0: drop the connection */
};

int64_t pb__httpd_mono_us(void);

/* httpd_deadline.c */
void pb__httpd_conn_notify_cb(void *cls, struct MHD_Connection *c, void **socket_context,
                              enum MHD_ConnectionNotificationCode toe);
bool pb__httpd_head_arrived(struct pb_httpd *h, struct pb_http_request *r,
                            struct MHD_Connection *c);
bool pb__httpd_request_arrived(struct pb_httpd *h, struct pb_http_request *r);
void pb__httpd_cut_body(struct pb_httpd *h, struct pb_http_request *r);
void pb__httpd_request_done(struct pb_httpd *h, struct pb_http_request *r,
                            enum MHD_RequestTerminationCode toe);
void *pb__httpd_sweeper_main(void *arg);

#endif
