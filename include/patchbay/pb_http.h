/* pb_http.h - the asynchronous outbound HTTP client (libcurl multi).
 *
 * A client lives on one pb_loop and is used on that loop's thread only: many transfers in
 * flight, keep-alive connection reuse, HTTP/2 where the server offers it.
 * Every request is checked against the outbound guard at connect time (after
 * DNS, so rebinding cannot slip through); redirects are never followed and
 * response bodies are read up to a cap. */
#ifndef PB_HTTP_H
#define PB_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pb_conf.h"
#include "pb_err.h"
#include "pb_loop.h"

/* ---- outbound guard (SSRF) -------------------------------------------- */

/* Entries are CIDRs ("127.0.0.0/8", "::1/128"), single addresses, or host
 * names ("partner.internal"): a host-name entry allows that URL host to
 * resolve to an internal address. */
struct pb_allowlist;
struct pb_allowlist *pb_allowlist_create(const struct pb_strlist *entries, struct pb_err *err);
/* A list holding the entries of a and b (either may be NULL). */
struct pb_allowlist *pb_allowlist_merge(const struct pb_allowlist *a, const struct pb_allowlist *b);
void pb_allowlist_destroy(struct pb_allowlist *al);

/* Classify an address: NULL when public, otherwise the name of the internal
 * range it falls in ("loopback", "private", "link-local", "cgnat",
 * "multicast", "reserved", "documentation", "nat64", "6to4",
 * "ipv4-mapped", "unspecified", ...). sa is a struct sockaddr_in/in6. */
const char *pb_addr_internal_range(const void *sa, size_t salen);
/* 0 when a connection to sa for URL host `host` is allowed, PB_EDENIED otherwise. */
int pb_outbound_check(const struct pb_allowlist *al, const char *host, const void *sa,
                      size_t salen);
/* For clients that are not libcurl (brokers, databases, SMTP): resolve host
 * and write the first address the guard allows as text into ip (>= 46
 * bytes); connect to that literal, not to the name, so a second lookup
 * cannot be answered differently (DNS rebinding). PB_EDENIED with the
 * reason when every address is refused, PB_ENET when none resolves.
 * Blocks on DNS: call it from a thread that may block. */
int pb_outbound_resolve(const struct pb_allowlist *al, const char *host, int port, char *ip,
                        size_t iplen, struct pb_err *err);

/* ---- requests ----------------------------------------------------------- */

struct pb_http_header {
    const char *name;
    const char *value;
};

struct pb_http_tls; /* pb_http_auth.h */

struct pb_http_req {
    const char *method; /* "POST" ... */
    const char *url;
    const struct pb_http_header *headers; /* nheaders, borrowed until the call returns */
    size_t nheaders;
    const void *body; /* borrowed until done_cb runs */
    size_t len;
    int64_t timeout_ms; /* whole transfer */
    int64_t connect_timeout_ms;
    size_t max_response;              /* response body bytes kept (rest discarded) */
    const struct pb_allowlist *allow; /* borrowed; NULL = only public addresses */
    const char *basic_user;           /* with basic_pass: HTTP basic auth (secret: never logged) */
    const char *basic_pass;
    const struct pb_http_tls *tls; /* borrowed until done_cb; NULL: system CAs, verified */
};

/* What an answer said of the partner's rate limit: the IETF draft's
 * RateLimit-Limit/-Remaining/-Reset (or one RateLimit: limit=, remaining=,
 * reset= header) and RateLimit-Policy (w=), or the common
 * X-RateLimit-Limit/-Remaining/-Reset (a reset past 10^9 is a unix time). */
struct pb_rate_info {
    bool known;        /* at least one of them was there */
    int64_t limit;     /* requests per window, -1 unknown */
    int64_t remaining; /* left in this window, -1 unknown */
    int64_t reset_ms;  /* until the window starts again, -1 unknown */
    int64_t window_ms; /* the window's length, -1 unknown */
};

struct pb_http_resp {
    int status; /* HTTP status, 0 when no response was received */
    int64_t latency_ms;
    int64_t retry_after_ms; /* from Retry-After (seconds or HTTP-date), -1 when absent */
    const char *error;      /* transport error text ("connection refused", "timeout",
                               "blocked: 127.0.0.1 is loopback"), NULL when a response came */
    bool blocked;           /* refused by the outbound guard */
    bool timed_out;
    const char *body; /* response body (up to max_response), NUL-terminated */
    size_t body_len;
    bool truncated;   /* the body was longer than max_response: the rest was discarded */
    const void *core; /* internal: what pb_http_resp_header reads */
    struct pb_rate_info rate; /* rate-limit headers of the answer */
};

/* A header of the response (name matched case-blind): its index-th
 * occurrence (0 is the first), or NULL. Valid during the done callback. */
const char *pb_http_resp_header(const struct pb_http_resp *r, const char *name, size_t index);

/* Borrowed: resp is valid only during the call. */
typedef void (*pb_http_done_cb)(void *arg, const struct pb_http_resp *resp);

struct pb_http_client;
struct pb_http_client_opts {
    size_t max_host_connections; /* per destination host, 0 = libcurl default */
    size_t max_total_connections;
};
/* The client's sockets and timeout are watched on loop (borrowed: it must
 * outlive the client); every call, and every done_cb, is on its thread. */
struct pb_http_client *pb_http_client_create(struct pb_loop *loop,
                                             const struct pb_http_client_opts *o,
                                             struct pb_err *err);
/* Aborts transfers still running (their callbacks run with an error). Accepts NULL. */
void pb_http_client_destroy(struct pb_http_client *c);

/* Start a request. If the call fails, done_cb never runs. */
int pb_http_client_send(struct pb_http_client *c, const struct pb_http_req *req,
                        pb_http_done_cb done_cb, void *arg);
size_t pb_http_client_inflight(const struct pb_http_client *c);
/* The loop the client lives on (its callbacks' thread): for a plugin handed
 * a client that waits for something else on the same thread. NULL for NULL. */
struct pb_loop *pb_http_client_loop(const struct pb_http_client *c);

/* Parse a Retry-After value: delta-seconds or an IMF-fixdate HTTP-date.
 * Returns 0 and the delay in ms (>= 0), or PB_EINVAL. Pure. */
int pb_parse_retry_after(const char *value, int64_t now_ms, int64_t *delay_ms);
/* Rate-limit headers: reset r to "nothing known", and fold one header line
 * ("Name: value\r\n", len bytes, not NUL-terminated) into r when it is one
 * of RateLimit, RateLimit-Limit, -Remaining, -Reset, -Policy or their
 * X-RateLimit- forms (now_ms turns a reset given as a unix time into a
 * delay). Other lines are ignored. */
void pb_rate_info_reset(struct pb_rate_info *r);
void pb_rate_header(const char *line, size_t len, int64_t now_ms, struct pb_rate_info *r);

/* A header a configuration gives: a name of letters, digits, '-' and '_'
 * (not empty); a value without control characters other than tab (no CR
 * or LF to split a request with). Pure. */
bool pb_http_header_name_ok(const char *name);
bool pb_http_header_value_ok(const char *value);

#endif
