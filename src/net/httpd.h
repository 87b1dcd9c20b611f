/* httpd.h - the shared HTTP listener (libmicrohttpd): routes added before
 * start, each with a handler that answers through pb_http_respond()
 * (include/patchbay/pb_server.h). It knows nothing of pipelines or the
 * admin API: the engine adds their routes. */
#ifndef PB_NET_HTTPD_H
#define PB_NET_HTTPD_H

#include <stdbool.h>
#include <stdint.h>

#include "patchbay/pb_err.h"
#include "patchbay/pb_server.h"

struct pb_httpd_opts {
    const char *listen; /* host:port, [v6]:port or :port */
    int64_t max_connections;
    int64_t threads;
    int64_t connection_timeout_ms;
    int64_t max_inflight_bytes; /* request bodies being received or waiting for an answer */
};

struct pb_httpd;

/* Nothing listens until pb_httpd_start. opts is copied. */
struct pb_httpd *pb_httpd_create(const struct pb_httpd_opts *opts, struct pb_err *err);
/* Before start only. r is copied (its strings are borrowed for the
 * server's life). PB_EEXISTS when the path is taken. */
int pb_httpd_route_add(struct pb_httpd *h, const struct pb_http_route *r, struct pb_err *err);
/* Does the path belong to a route (exact, or under a prefix route)? */
bool pb_httpd_route_taken(const struct pb_httpd *h, const char *path);
/* Bind (or take the socket a reload handed over) and serve. A port in use
 * is an error naming it. */
int pb_httpd_start(struct pb_httpd *h, struct pb_err *err);
/* Stop accepting new connections. With keep_socket, the listening socket is
 * returned open (for a reload to hand over), else closed and -1 returned. */
int pb_httpd_quiesce(struct pb_httpd *h, bool keep_socket);
/* Wait up to timeout for requests whose handlers have not answered yet,
 * then close the gate: later requests on open connections are closed
 * unanswered, for the client to retry elsewhere. */
void pb_httpd_drain(struct pb_httpd *h, int64_t timeout_ms);
void pb_httpd_destroy(struct pb_httpd *h);
unsigned pb_httpd_port(const struct pb_httpd *h);
/* Connections closed past the request deadline, by the part still arriving
 * (0 for NULL). Any thread. */
void pb_httpd_request_timeouts(const struct pb_httpd *h, uint64_t *head, uint64_t *body);

#endif
