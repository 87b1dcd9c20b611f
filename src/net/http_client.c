/* http_client.c - the asynchronous outbound HTTP client on libcurl multi.
 *
 * One CURLM per client, driven by one thread: many transfers in flight,
 * connections kept alive in the multi's pool, HTTP/2 over TLS where the
 * server offers it (HTTP/1.1 on cleartext), per-host and total connection
 * limits. Redirects are never followed, proxies from the environment are
 * ignored, and response bodies are kept up to a cap.
 *
 * The outbound guard runs twice per transfer: in the open-socket callback
 * (after DNS, before any packet is sent to the address, so rebinding cannot
 * slip through) and in the pre-request callback (so a kept-alive connection
 * opened for a request whose allow list permitted it is not reused by one
 * whose list does not).
 *
 * A transfer's state lives in a struct xfer that owns its easy handle; ended
 * transfers go back to a small free list so the next request skips
 * allocation and setup.
 *
 * The client lives on a pb_loop (curl_multi_socket_action): libcurl's
 * sockets are loop watches and its timeout a loop timer, so the thread that
 * runs the loop drives every transfer without a poll of its own. done
 * callbacks run on that thread, after libcurl has returned, so they may call
 * pb_http_client_send() (a retry); they must not destroy the client. */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <curl/curl.h>

#include "net/http_tls.h"
#include "patchbay/pb_http.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_loop.h"

#define FREE_MAX 32               /* ended transfers kept for reuse */
#define BODY_KEEP_MAX (64 * 1024) /* larger response buffers are not kept on reuse */
#define BODY_INITIAL 4096
#define MSG_MAX (CURL_ERROR_SIZE + 160)

struct xfer {
    CURL *easy;
    struct xfer *prev, *next; /* active list (both) or free list (next) */
    struct curl_slist *hdrs;
    char *host; /* URL host (curl_free), for host-name allow entries */
    const struct pb_allowlist *allow;
    pb_http_done_cb done_cb;
    void *arg;
    char *body; /* response body, NUL-terminated when body_cap > 0 */
    size_t body_len, body_cap, max_response;
    int64_t retry_after_ms;
    struct pb_rate_info rate;
    struct curl_slist *connect_to; /* tls.server_name: the URL names it, this reaches the host */
    char *url;                     /* the URL rewritten for server_name */
    bool blocked;
    bool oom;
    bool truncated;
    char errbuf[CURL_ERROR_SIZE];
    char msg[MSG_MAX]; /* blocked reason, then the error handed to done_cb */
};

struct pb_http_client {
    CURLM *multi;
    struct pb_loop *loop;
    struct pb_loop_timer *timer; /* libcurl's timeout */
    struct csock *socks;         /* sockets libcurl asked to watch */
    struct xfer *active;
    size_t inflight;
    struct xfer *free;
    size_t nfree;
    bool closing;
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_FAILED_INIT;

static void global_init(void)
{
    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- curl callbacks ----------------------------------------------------------- */

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct xfer *x = userdata;
    size_t len = size * nmemb;
    size_t room = x->max_response - x->body_len;
    size_t take = len < room ? len : room;

    if (take < len)
        x->truncated = true;
    if (take == 0)
        return len; /* past the cap: read and discard, keeping the connection usable */
    if (x->body_len + take + 1 > x->body_cap) {
        size_t cap = x->body_cap ? x->body_cap : BODY_INITIAL;
        while (cap < x->body_len + take + 1)
            cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
        if (x->max_response < SIZE_MAX && cap > x->max_response + 1)
            cap = x->max_response + 1;
        char *nb = realloc(x->body, cap);
        if (!nb) {
            x->oom = true;
            return 0; /* ends the transfer with CURLE_WRITE_ERROR */
        }
        x->body = nb;
        x->body_cap = cap;
    }
    memcpy(x->body + x->body_len, ptr, take);
    x->body_len += take;
    x->body[x->body_len] = 0;
    return len;
}

static size_t header_cb(char *ptr, size_t size, size_t nitems, void *userdata)
{
    struct xfer *x = userdata;
    size_t len = size * nitems;
    static const char name[] = "retry-after:";
    const size_t nlen = sizeof(name) - 1;

    if (len >= 5 && memcmp(ptr, "HTTP/", 5) == 0) {
        x->retry_after_ms = -1; /* a new response (after 1xx): forget the last one's */
        pb_rate_info_reset(&x->rate);
    } else if (len > 10 && (strncasecmp(ptr, "ratelimit", 9) == 0 ||
                            strncasecmp(ptr, "x-ratelimit", 11) == 0)) {
        pb_rate_header(ptr, len, wall_ms(), &x->rate);
    } else if (len > nlen && strncasecmp(ptr, name, nlen) == 0) {
        char value[128];
        size_t vlen = len - nlen;
        if (vlen < sizeof(value)) {
            int64_t ms;
            memcpy(value, ptr + nlen, vlen);
            value[vlen] = 0;
            if (pb_parse_retry_after(value, wall_ms(), &ms) == 0)
                x->retry_after_ms = ms;
        }
    }
    return len;
}

/* Run the guard for address sa; on refusal record why in x. */
static bool guard(struct xfer *x, const void *sa, size_t salen)
{
    if (pb_outbound_check(x->allow, x->host, sa, salen) == 0)
        return true;
    if (!x->blocked) {
        char addr[INET6_ADDRSTRLEN] = "?";
        const char *range = pb_addr_internal_range(sa, salen);
        const struct sockaddr *s = sa;
        if (s->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, addr, sizeof(addr));
        else if (s->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, addr, sizeof(addr));
        snprintf(x->msg, sizeof(x->msg), "blocked: %s is %s (add it to outbound.allow to permit)",
                 addr, range ? range : "not allowed");
        PB_DEBUG("outbound blocked host=%s addr=%s range=\"%s\"", x->host ? x->host : "", addr,
                 range ? range : "");
    }
    x->blocked = true;
    return false;
}

static curl_socket_t opensocket_cb(void *clientp, curlsocktype purpose,
                                   struct curl_sockaddr *address)
{
    struct xfer *x = clientp;
    if (purpose != CURLSOCKTYPE_IPCXN ||
        (address->family != AF_INET && address->family != AF_INET6)) {
        x->blocked = true;
        if (!x->msg[0])
            snprintf(x->msg, sizeof(x->msg), "blocked: not an IP connection");
        return CURL_SOCKET_BAD;
    }
    if (!guard(x, &address->addr, address->addrlen))
        return CURL_SOCKET_BAD;
    return socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
}

/* Runs for new and reused connections alike, before the request is sent. */
static int prereq_cb(void *clientp, char *conn_primary_ip, char *conn_local_ip,
                     int conn_primary_port, int conn_local_port)
{
    struct xfer *x = clientp;
    struct sockaddr_in in4 = {.sin_family = AF_INET};
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
    char ip[INET6_ADDRSTRLEN];

    /* Drop an IPv6 zone ("fe80::1%eth0"); the address decides. */
    snprintf(ip, sizeof(ip), "%s", conn_primary_ip ? conn_primary_ip : "");
    ip[strcspn(ip, "%")] = 0;
    if (inet_pton(AF_INET, ip, &in4.sin_addr) == 1)
        return guard(x, &in4, sizeof(in4)) ? CURL_PREREQFUNC_OK : CURL_PREREQFUNC_ABORT;
    if (inet_pton(AF_INET6, ip, &in6.sin6_addr) == 1)
        return guard(x, &in6, sizeof(in6)) ? CURL_PREREQFUNC_OK : CURL_PREREQFUNC_ABORT;
    x->blocked = true;
    if (!x->msg[0])
        snprintf(x->msg, sizeof(x->msg), "blocked: unknown peer address");
    return CURL_PREREQFUNC_ABORT;
}

/* ---- transfers ---------------------------------------------------------------- */

static void xfer_free(struct xfer *x)
{
    if (!x)
        return;
    curl_slist_free_all(x->hdrs);
    curl_free(x->host);
    if (x->easy)
        curl_easy_cleanup(x->easy);
    free(x->body);
    free(x);
}

static struct xfer *xfer_get(struct pb_http_client *c)
{
    struct xfer *x = c->free;
    if (x) {
        c->free = x->next;
        c->nfree--;
        x->next = NULL;
        return x;
    }
    x = calloc(1, sizeof(*x));
    if (!x)
        return NULL;
    x->easy = curl_easy_init();
    if (!x->easy) {
        free(x);
        return NULL;
    }
    return x;
}

/* Back to the free list (reset, ready for reuse) or freed. x must not be in
 * the multi handle. */
static void xfer_put(struct pb_http_client *c, struct xfer *x)
{
    curl_slist_free_all(x->hdrs);
    x->hdrs = NULL;
    curl_slist_free_all(x->connect_to);
    x->connect_to = NULL;
    free(x->url);
    x->url = NULL;
    curl_free(x->host);
    x->host = NULL;
    if (c->closing || c->nfree >= FREE_MAX) {
        xfer_free(x);
        return;
    }
    curl_easy_reset(x->easy);
    if (x->body_cap > BODY_KEEP_MAX) {
        free(x->body);
        x->body = NULL;
        x->body_cap = 0;
    }
    x->body_len = 0;
    x->allow = NULL;
    x->done_cb = NULL;
    x->arg = NULL;
    x->prev = NULL;
    x->next = c->free;
    c->free = x;
    c->nfree++;
}

static void active_link(struct pb_http_client *c, struct xfer *x)
{
    x->prev = NULL;
    x->next = c->active;
    if (c->active)
        c->active->prev = x;
    c->active = x;
    c->inflight++;
}

static void active_unlink(struct pb_http_client *c, struct xfer *x)
{
    if (x->prev)
        x->prev->next = x->next;
    else
        c->active = x->next;
    if (x->next)
        x->next->prev = x->prev;
    x->prev = x->next = NULL;
    c->inflight--;
}

static bool token_ok(const char *s)
{
    if (!s || !*s)
        return false;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch <= 0x20 || ch >= 0x7f || strchr("\"(),/:;<=>?@[\\]{}", ch))
            return false;
    }
    return true;
}

static bool value_ok(const char *s)
{
    for (; *s; s++)
        if (*s == '\r' || *s == '\n')
            return false;
    return true;
}

/* Build the request's header list into x->hdrs. */
static int build_headers(struct xfer *x, const struct pb_http_req *req)
{
    bool have_expect = false;
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct pb_http_header *h = &req->headers[i];
        const char *value = h->value ? h->value : "";
        if (!token_ok(h->name) || !value_ok(value))
            return PB_EINVAL;
        if (strcasecmp(h->name, "Expect") == 0)
            have_expect = true;
        /* "Name;" is curl's way to send a header with an empty value. */
        size_t n = strlen(h->name) + strlen(value) + 3;
        char *line = malloc(n);
        if (!line)
            return PB_ENOMEM;
        if (*value)
            snprintf(line, n, "%s: %s", h->name, value);
        else
            snprintf(line, n, "%s;", h->name);
        struct curl_slist *l = curl_slist_append(x->hdrs, line);
        free(line);
        if (!l)
            return PB_ENOMEM;
        x->hdrs = l;
    }
    if (!have_expect) {
        /* No 100-continue round trip for large bodies. */
        struct curl_slist *l = curl_slist_append(x->hdrs, "Expect:");
        if (!l)
            return PB_ENOMEM;
        x->hdrs = l;
    }
    return 0;
}

/* The scheme must be http or https; the host is kept for the guard. */
static int parse_url(struct xfer *x, const char *url)
{
    int rc = PB_EINVAL;
    char *scheme = NULL;
    CURLU *u = curl_url();
    if (!u)
        return PB_ENOMEM;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
        goto out;
    if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK)
        goto out;
    if (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)
        goto out;
    if (curl_url_get(u, CURLUPART_HOST, &x->host, 0) != CURLUE_OK)
        goto out;
    rc = 0;
out:
    curl_free(scheme);
    curl_url_cleanup(u);
    return rc;
}

/* tls.server_name on an https URL: the URL is rewritten to name it (so
 * SNI and the certificate check use it), CONNECT_TO still reaches the
 * URL's own host and port, and the Host header keeps naming that host.
 * The guard goes on checking the URL's host (x->host, parsed before). */
static int server_name(struct xfer *x, const char *url, const char *name)
{
    int rc = PB_EINVAL;
    char *scheme = NULL, *port = NULL, *rewritten = NULL;
    CURLU *u = curl_url();
    if (!u)
        return PB_ENOMEM;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK)
        goto out;
    if (strcasecmp(scheme, "https") != 0) {
        rc = 0; /* nothing to name on cleartext */
        goto out;
    }
    if (curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK)
        goto out;
    bool v6 = strchr(x->host, ':') != NULL;
    char line[600], host[600];
    bool default_port = strcmp(port, "443") == 0;
    snprintf(line, sizeof(line), "%s:%s:%s%s%s:%s", name, port, v6 ? "[" : "", x->host,
             v6 ? "]" : "", port);
    snprintf(host, sizeof(host), "Host: %s%s%s%s%s", v6 ? "[" : "", x->host, v6 ? "]" : "",
             default_port ? "" : ":", default_port ? "" : port);
    if (curl_url_set(u, CURLUPART_HOST, name, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_URL, &rewritten, 0) != CURLUE_OK)
        goto out;
    rc = PB_ENOMEM;
    struct curl_slist *l = curl_slist_append(NULL, line);
    if (!l)
        goto out;
    x->connect_to = l;
    l = curl_slist_append(x->hdrs, host);
    if (!l)
        goto out;
    x->hdrs = l;
    if (!(x->url = strdup(rewritten)))
        goto out;
    rc = 0;
out:
    curl_free(scheme);
    curl_free(port);
    curl_free(rewritten);
    curl_url_cleanup(u);
    return rc;
}

static long clamp_long(int64_t v)
{
    return v > LONG_MAX ? LONG_MAX : (long)v;
}

/* Set every option of the transfer. Returns 0 or a PB_E* code. */
static int setup(struct xfer *x, const struct pb_http_req *req)
{
    CURL *e = x->easy;
    CURLcode rc = CURLE_OK;

#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (rc == CURLE_OK)                                                                        \
            rc = curl_easy_setopt(e, opt, val);                                                    \
    } while (0)

    SET(CURLOPT_PRIVATE, (void *)x);
    SET(CURLOPT_URL, x->url ? x->url : req->url);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_PROXY, ""); /* the guard must see the partner, not a proxy */
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_TCP_KEEPIDLE, 60L);
    SET(CURLOPT_TCP_KEEPINTVL, 30L);
    SET(CURLOPT_ERRORBUFFER, x->errbuf);
    SET(CURLOPT_WRITEFUNCTION, write_cb);
    SET(CURLOPT_WRITEDATA, (void *)x);
    SET(CURLOPT_HEADERFUNCTION, header_cb);
    SET(CURLOPT_HEADERDATA, (void *)x);
    SET(CURLOPT_OPENSOCKETFUNCTION, opensocket_cb);
    SET(CURLOPT_OPENSOCKETDATA, (void *)x);
    SET(CURLOPT_PREREQFUNCTION, prereq_cb);
    SET(CURLOPT_PREREQDATA, (void *)x);
    SET(CURLOPT_HTTPHEADER, x->hdrs);
    if (req->timeout_ms > 0)
        SET(CURLOPT_TIMEOUT_MS, clamp_long(req->timeout_ms));
    if (req->connect_timeout_ms > 0)
        SET(CURLOPT_CONNECTTIMEOUT_MS, clamp_long(req->connect_timeout_ms));
    if (req->basic_user && req->basic_pass) {
        SET(CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        SET(CURLOPT_USERNAME, req->basic_user);
        SET(CURLOPT_PASSWORD, req->basic_pass);
    }
    const struct pb_http_tls *t = req->tls;
    SET(CURLOPT_SSLVERSION, (long)(t && t->min_version == PB_TLS_1_3 ? CURL_SSLVERSION_TLSv1_3
                                                                     : CURL_SSLVERSION_TLSv1_2));
    if (t && t->ca_file)
        SET(CURLOPT_CAINFO, t->ca_file);
    if (t && t->cert_file) {
        SET(CURLOPT_SSLCERT, t->cert_file);
        SET(CURLOPT_SSLCERTTYPE, "PEM");
        SET(CURLOPT_SSLKEY, t->key_file ? t->key_file : t->cert_file);
        SET(CURLOPT_SSLKEYTYPE, "PEM");
        if (t->key_password)
            SET(CURLOPT_KEYPASSWD, t->key_password);
    }
    if (t && t->insecure) {
        SET(CURLOPT_SSL_VERIFYPEER, 0L);
        SET(CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (x->connect_to)
        SET(CURLOPT_CONNECT_TO, x->connect_to);

    const char *m = req->method;
    const char *body = req->body ? (const char *)req->body : "";
    bool with_body =
        req->len > 0 || strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0 || strcmp(m, "PATCH") == 0;
    if (strcmp(m, "GET") == 0 && !with_body) {
        SET(CURLOPT_HTTPGET, 1L);
    } else if (strcmp(m, "HEAD") == 0 && !with_body) {
        SET(CURLOPT_NOBODY, 1L);
    } else {
        if (with_body) {
            SET(CURLOPT_POST, 1L);
            SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->len);
            SET(CURLOPT_POSTFIELDS, body);
        }
        if (strcmp(m, "POST") != 0)
            SET(CURLOPT_CUSTOMREQUEST, m);
    }
#undef SET
    if (rc != CURLE_OK)
        return rc == CURLE_OUT_OF_MEMORY ? PB_ENOMEM : PB_EINVAL;

    /* Best effort: not fatal on a libcurl built without HTTP/2. Waiting to
     * multiplex only makes sense where HTTP/2 can be negotiated (TLS): on
     * http:// libcurl 7.88 would park new transfers to a host whose
     * connections all failed (a partner coming back from an outage) until
     * the first one settles, stalling them up to their timeout. */
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, strncasecmp(req->url, "https://", 8) == 0 ? 1L : 0L);
    return 0;
}

int pb_http_client_send(struct pb_http_client *c, const struct pb_http_req *req,
                        pb_http_done_cb done_cb, void *arg)
{
    int rc;
    struct xfer *x = NULL;

    if (!c || !req || !req->url || !done_cb || !token_ok(req->method) ||
        (req->len > 0 && !req->body) || (req->nheaders > 0 && !req->headers))
        return PB_EINVAL;
    if (c->closing)
        return PB_ESHUTDOWN;
    x = xfer_get(c);
    if (!x)
        return PB_ENOMEM;
    x->allow = req->allow;
    x->done_cb = done_cb;
    x->arg = arg;
    x->max_response = req->max_response;
    x->body_len = 0;
    if (x->body_cap)
        x->body[0] = 0;
    x->retry_after_ms = -1;
    pb_rate_info_reset(&x->rate);
    x->blocked = false;
    x->oom = false;
    x->truncated = false;
    x->errbuf[0] = 0;
    x->msg[0] = 0;

    rc = parse_url(x, req->url);
    if (rc)
        goto out;
    if (req->tls && req->tls->server_name) {
        rc = server_name(x, req->url, req->tls->server_name);
        if (rc)
            goto out;
    }
    rc = build_headers(x, req);
    if (rc)
        goto out;
    rc = setup(x, req);
    if (rc)
        goto out;
    CURLMcode mc = curl_multi_add_handle(c->multi, x->easy);
    if (mc != CURLM_OK) {
        rc = mc == CURLM_OUT_OF_MEMORY ? PB_ENOMEM : PB_EINTERNAL;
        goto out;
    }
    active_link(c, x);
    return 0;
out:
    xfer_put(c, x);
    return rc;
}

/* Remove x from the multi handle, run its callback, recycle it. forced is an
 * error text that overrides the transfer's own outcome ("aborted"). */
static void finish(struct pb_http_client *c, struct xfer *x, CURLcode res, const char *forced)
{
    struct pb_http_resp r = {.retry_after_ms = -1};
    curl_off_t total_us = 0;

    curl_multi_remove_handle(c->multi, x->easy);
    active_unlink(c, x);
    if (curl_easy_getinfo(x->easy, CURLINFO_TOTAL_TIME_T, &total_us) == CURLE_OK)
        r.latency_ms = (int64_t)(total_us / 1000);

    if (!forced && res == CURLE_OK) {
        long status = 0;
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
        r.status = (int)status;
        r.retry_after_ms = x->retry_after_ms;
        r.rate = x->rate;
        r.body = x->body_len ? x->body : "";
        r.body_len = x->body_len;
        r.truncated = x->truncated;
        r.core = x->easy;
    } else {
        r.body = "";
        r.timed_out = !forced && res == CURLE_OPERATION_TIMEDOUT;
        r.blocked = !forced && x->blocked &&
                    (res == CURLE_COULDNT_CONNECT || res == CURLE_ABORTED_BY_CALLBACK);
        if (forced) {
            snprintf(x->msg, sizeof(x->msg), "%s", forced);
        } else if (r.blocked) {
            /* x->msg already says why */
        } else if (x->oom) {
            snprintf(x->msg, sizeof(x->msg), "out of memory reading the response");
        } else {
            const char *text = x->errbuf[0] ? x->errbuf : curl_easy_strerror(res);
            long os_errno = 0;
            char ebuf[128];
            const char *os = NULL;
            /* Only a failed connect sets it in this transfer; on a recycled
             * handle it may still hold an earlier transfer's errno. */
            if (res == CURLE_COULDNT_CONNECT)
                curl_easy_getinfo(x->easy, CURLINFO_OS_ERRNO, &os_errno);
            if (os_errno > 0 && os_errno <= INT_MAX)
                os = strerror_r((int)os_errno, ebuf, sizeof(ebuf));
            if (os && !strstr(text, os))
                snprintf(x->msg, sizeof(x->msg), "%s (%s)", text, os);
            else
                snprintf(x->msg, sizeof(x->msg), "%s", text);
        }
        r.error = x->msg;
    }

    /* The callback may send new requests (a retry); x is still ours. */
    x->done_cb(x->arg, &r);
    xfer_put(c, x);
}

const char *pb_http_resp_header(const struct pb_http_resp *r, const char *name, size_t index)
{
    struct curl_header *h = NULL;
    if (!r || !r->core || !name)
        return NULL;
    if (curl_easy_header((CURL *)r->core, name, index, CURLH_HEADER, -1, &h) != CURLHE_OK || !h)
        return NULL;
    return h->value;
}

static void drain(struct pb_http_client *c)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(c->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *e = m->easy_handle;
        CURLcode res = m->data.result; /* m dies with remove_handle: copy first */
        char *priv = NULL;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, &priv);
        if (priv)
            finish(c, (struct xfer *)(void *)priv, res, NULL);
    }
}

/* ---- on the loop -------------------------------------------------------------- */

static void socket_action(struct pb_http_client *c, curl_socket_t fd, int ev)
{
    int running = 0;
    CURLMcode mc = curl_multi_socket_action(c->multi, fd, ev, &running);
    if (mc != CURLM_OK)
        PB_ERROR("http client error=\"%s\"", curl_multi_strerror(mc));
    drain(c);
}

static void watch_cb(struct pb_loop_watch *w, int fd, unsigned events, void *arg)
{
    (void)w;
    int ev = (events & PB_LOOP_READ ? CURL_CSELECT_IN : 0) |
             (events & PB_LOOP_WRITE ? CURL_CSELECT_OUT : 0) |
             (events & PB_LOOP_ERROR ? CURL_CSELECT_ERR : 0);
    socket_action(arg, fd, ev);
}

static void timer_cb(struct pb_loop_timer *t, void *arg)
{
    (void)t;
    socket_action(arg, CURL_SOCKET_TIMEOUT, 0);
}

/* A socket libcurl asked us to watch (kept in a list, so that destroy can
 * remove what libcurl did not). */
struct csock {
    struct pb_loop_watch *w;
    struct csock *prev, *next;
};

static void csock_drop(struct pb_http_client *c, struct csock *k)
{
    pb_loop_watch_remove(k->w);
    if (k->prev)
        k->prev->next = k->next;
    else
        c->socks = k->next;
    if (k->next)
        k->next->prev = k->prev;
    free(k);
}

/* libcurl says which sockets to watch for what. */
static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct pb_http_client *c = userp;
    struct csock *k = socketp;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (k)
            csock_drop(c, k);
        curl_multi_assign(c->multi, fd, NULL);
        return 0;
    }
    unsigned events =
        (what & CURL_POLL_IN ? PB_LOOP_READ : 0) | (what & CURL_POLL_OUT ? PB_LOOP_WRITE : 0);
    if (k)
        return pb_loop_watch_modify(k->w, events) == 0 ? 0 : -1;
    k = calloc(1, sizeof(*k));
    if (!k)
        return -1;
    k->w = pb_loop_watch_add(c->loop, fd, events, watch_cb, c);
    if (!k->w) {
        free(k);
        return -1;
    }
    k->next = c->socks;
    if (c->socks)
        c->socks->prev = k;
    c->socks = k;
    curl_multi_assign(c->multi, fd, k);
    return 0;
}

static int curl_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct pb_http_client *c = userp;
    (void)multi;
    if (timeout_ms < 0)
        pb_loop_timer_stop(c->timer);
    else
        pb_loop_timer_start(c->timer, timeout_ms);
    return 0;
}

size_t pb_http_client_inflight(const struct pb_http_client *c)
{
    return c ? c->inflight : 0;
}

struct pb_loop *pb_http_client_loop(const struct pb_http_client *c)
{
    return c ? c->loop : NULL;
}

struct pb_http_client *
pb_http_client_create(struct pb_loop *loop, const struct pb_http_client_opts *o, struct pb_err *err)
{
    struct pb_http_client *c = NULL;

    pthread_once(&global_once, global_init);
    if (global_rc != CURLE_OK) {
        pb_err_set(err, PB_EINTERNAL, "libcurl init failed: %s", curl_easy_strerror(global_rc));
        return NULL;
    }
    c = calloc(1, sizeof(*c));
    if (!c)
        goto nomem;
    c->loop = loop;
    c->timer = pb_loop_timer_create(loop, timer_cb, c);
    c->multi = curl_multi_init();
    if (!c->multi || !c->timer)
        goto nomem;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    if (o && o->max_host_connections > 0)
        curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                          o->max_host_connections > LONG_MAX ? LONG_MAX
                                                             : (long)o->max_host_connections);
    if (o && o->max_total_connections > 0)
        curl_multi_setopt(c->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS,
                          o->max_total_connections > LONG_MAX ? LONG_MAX
                                                              : (long)o->max_total_connections);
    return c;
nomem:
    if (c && c->multi)
        curl_multi_cleanup(c->multi);
    if (c)
        pb_loop_timer_destroy(c->timer);
    free(c);
    pb_err_set(err, PB_ENOMEM, "out of memory");
    return NULL;
}

void pb_http_client_destroy(struct pb_http_client *c)
{
    if (!c)
        return;
    /* Sends from the callbacks below fail with PB_ESHUTDOWN. */
    c->closing = true;
    while (c->active)
        finish(c, c->active, CURLE_ABORTED_BY_CALLBACK, "aborted");
    while (c->free) {
        struct xfer *x = c->free;
        c->free = x->next;
        xfer_free(x);
    }
    curl_multi_cleanup(c->multi);
    while (c->socks)
        csock_drop(c, c->socks);
    pb_loop_timer_destroy(c->timer);
    free(c);
}
