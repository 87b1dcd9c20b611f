/* httpd_deadline.c - the request deadline of the shared listener.
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
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "net/httpd_int.h"
#include "patchbay/pb_log.h"

#define SWEEP_MIN_US (50 * 1000)
#define SWEEP_MAX_US (1000 * 1000)
#define CUT_LOG_EVERY_US (10 * 1000 * 1000)
/* The kernel keeps the time of the last data received in jiffies. */
#define RECV_SLACK_US (20 * 1000)

void pb__httpd_conn_notify_cb(void *cls, struct MHD_Connection *c, void **socket_context,
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
    cs->since_us = pb__httpd_mono_us();
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
bool pb__httpd_head_arrived(struct pb_httpd *h, struct pb_http_request *r, struct MHD_Connection *c)
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
bool pb__httpd_request_arrived(struct pb_httpd *h, struct pb_http_request *r)
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
void pb__httpd_cut_body(struct pb_httpd *h, struct pb_http_request *r)
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
void pb__httpd_request_done(struct pb_httpd *h, struct pb_http_request *r,
                            enum MHD_RequestTerminationCode toe)
{
    if (!r->cs)
        return;
    pthread_mutex_lock(&h->conns_lock);
    if (r->cs->state != CONN_CUT) {
        r->cs->state = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? CONN_IDLE : CONN_ANSWERING;
        r->cs->part = PART_HEAD;
        r->cs->since_us = pb__httpd_mono_us();
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
    int64_t now = pb__httpd_mono_us();
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

void *pb__httpd_sweeper_main(void *arg)
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
            sweep(h, pb__httpd_mono_us());
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
