/* test_http_client.c - the async HTTP client against a real local server
 * (libmicrohttpd on 127.0.0.1, port 0): concurrency, keep-alive, Retry-After,
 * timeouts, the response cap, echo of headers and bodies, the outbound guard
 * at connect time, refused connections, re-entrant sends and aborts.
 * PB_TEST_VERBOSE=1 prints every response. */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "patchbay/pb_http.h"
#include "pb_test.h"

#define BIG_LEN (1024 * 1024)

/* ---- the server ------------------------------------------------------------ */

static struct MHD_Daemon *daemon_;
static uint16_t port;
static atomic_int connections;
static atomic_int stopping;
static char big_body[BIG_LEN];

struct upload {
    char *buf;
    size_t len, cap;
};

static void notify_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                              enum MHD_ConnectionNotificationCode code)
{
    if (code == MHD_CONNECTION_NOTIFY_STARTED)
        atomic_fetch_add(&connections, 1);
}

static void request_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                              enum MHD_RequestTerminationCode toe)
{
    struct upload *u = *con_cls;
    if (u) {
        free(u->buf);
        free(u);
        *con_cls = NULL;
    }
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned int status, const char *body,
                             size_t len, enum MHD_ResponseMemoryMode mode, const char *retry_after)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, mode);
    if (!r)
        return MHD_NO;
    if (retry_after)
        MHD_add_response_header(r, "Retry-After", retry_after);
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_data_size, void **con_cls)
{
    struct upload *u = *con_cls;
    if (!u) {
        u = calloc(1, sizeof(*u));
        if (!u)
            return MHD_NO;
        *con_cls = u;
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t need = u->len + *upload_data_size + 1;
        if (need > u->cap) {
            size_t cap = u->cap ? u->cap : 4096;
            while (cap < need)
                cap *= 2;
            char *nb = realloc(u->buf, cap);
            if (!nb)
                return MHD_NO;
            u->buf = nb;
            u->cap = cap;
        }
        memcpy(u->buf + u->len, upload_data, *upload_data_size);
        u->len += *upload_data_size;
        u->buf[u->len] = 0;
        *upload_data_size = 0;
        return MHD_YES;
    }

    if (strcmp(url, "/ok") == 0)
        return reply(conn, 200, "hello", 5, MHD_RESPMEM_PERSISTENT, NULL);
    if (strcmp(url, "/busy") == 0)
        return reply(conn, 503, "busy", 4, MHD_RESPMEM_PERSISTENT, "7");
    if (strcmp(url, "/busy-date") == 0)
        return reply(conn, 429, "", 0, MHD_RESPMEM_PERSISTENT, "Thu, 01 Jan 1970 00:00:00 GMT");
    if (strcmp(url, "/links") == 0) {
        struct MHD_Response *r =
            MHD_create_response_from_buffer(2, (void *)"[]", MHD_RESPMEM_PERSISTENT);
        if (!r)
            return MHD_NO;
        MHD_add_response_header(r, "Link", "</items?page=2>; rel=\"next\"");
        MHD_add_response_header(r, "Link", "</items?page=9>; rel=\"last\"");
        enum MHD_Result ret = MHD_queue_response(conn, 200, r);
        MHD_destroy_response(r);
        return ret;
    }
    if (strcmp(url, "/big") == 0)
        return reply(conn, 200, big_body, BIG_LEN, MHD_RESPMEM_PERSISTENT, NULL);
    if (strcmp(url, "/slow") == 0) {
        /* Longer than the client's timeout; cut short when the test ends. */
        for (int i = 0; i < 60 && !atomic_load(&stopping); i++)
            usleep(10 * 1000);
        return reply(conn, 200, "late", 4, MHD_RESPMEM_PERSISTENT, NULL);
    }
    if (strcmp(url, "/echo") == 0) {
        const char *test = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Test");
        const char *auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
        const char *expect = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Expect");
        size_t n = 256 + u->len;
        char *out = malloc(n);
        if (!out)
            return MHD_NO;
        int len = snprintf(out, n, "method=%s x-test=%s auth=%s expect=%s len=%zu body=%s", method,
                           test ? test : "-", auth ? auth : "-", expect ? expect : "-", u->len,
                           u->len <= 64 && u->buf ? u->buf : "...");
        return reply(conn, 200, out, (size_t)len, MHD_RESPMEM_MUST_FREE, NULL);
    }
    return reply(conn, 404, "no", 2, MHD_RESPMEM_PERSISTENT, NULL);
}

static void server_start(void)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = 0};
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
    memset(big_body, 'x', sizeof(big_body));
    daemon_ = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0,
        NULL, NULL, handler, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sin,
        MHD_OPTION_NOTIFY_CONNECTION, notify_connection, NULL, MHD_OPTION_NOTIFY_COMPLETED,
        request_completed, NULL, MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_END);
    if (!daemon_) {
        fprintf(stderr, "cannot start the test server\n");
        exit(1);
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
    port = info ? info->port : 0;
    if (!port) {
        fprintf(stderr, "no port\n");
        exit(1);
    }
}

/* ---- the client side ---------------------------------------------------------- */

struct result {
    int done;
    int status;
    bool blocked, timed_out;
    int64_t retry_after_ms;
    int64_t latency_ms;
    char error[512];
    char body[512];
    size_t body_len;
    bool body_terminated;
    bool truncated;
    char link0[128], link1[128], missing[8];
};

static void done_cb(void *arg, const struct pb_http_resp *resp)
{
    struct result *r = arg;
    r->done++;
    if (getenv("PB_TEST_VERBOSE"))
        fprintf(stderr, "  [resp status=%d blocked=%d to=%d ra=%lld lat=%lld err=%s]\n",
                resp->status, resp->blocked, resp->timed_out, (long long)resp->retry_after_ms,
                (long long)resp->latency_ms, resp->error ? resp->error : "-");
    r->status = resp->status;
    r->truncated = resp->truncated;
    const char *h = pb_http_resp_header(resp, "link", 0);
    snprintf(r->link0, sizeof(r->link0), "%s", h ? h : "");
    h = pb_http_resp_header(resp, "LINK", 1);
    snprintf(r->link1, sizeof(r->link1), "%s", h ? h : "");
    h = pb_http_resp_header(resp, "X-None", 0);
    snprintf(r->missing, sizeof(r->missing), "%s", h ? h : "-");
    r->blocked = resp->blocked;
    r->timed_out = resp->timed_out;
    r->retry_after_ms = resp->retry_after_ms;
    r->latency_ms = resp->latency_ms;
    snprintf(r->error, sizeof(r->error), "%s", resp->error ? resp->error : "");
    r->body_len = resp->body_len;
    r->body_terminated = resp->body && resp->body[resp->body_len] == 0;
    snprintf(r->body, sizeof(r->body), "%.*s", (int)(resp->body_len < 511 ? resp->body_len : 511),
             resp->body ? resp->body : "");
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct pb_loop *test_loop;

/* Poll until *count reaches want, with a deadline (never a fixed sleep). */
static bool run_until(struct pb_http_client *c, const int *count, int want)
{
    int64_t deadline = mono_ms() + 10000;
    while (*count < want) {
        if (mono_ms() > deadline)
            return false;
        pb_loop_run_once(test_loop, 100);
    }
    return true;
}

static struct pb_allowlist *loopback_allow;

static char *url(const char *path)
{
    static char buf[8][128];
    static int next;
    char *b = buf[next++ % 8];
    snprintf(b, sizeof(buf[0]), "http://127.0.0.1:%u%s", port, path);
    return b;
}

static struct pb_http_req get_req(const char *u)
{
    return (struct pb_http_req){.method = "GET",
                                .url = u,
                                .timeout_ms = 5000,
                                .connect_timeout_ms = 2000,
                                .max_response = 4096,
                                .allow = loopback_allow};
}

static struct pb_http_client *client(size_t per_host)
{
    struct pb_err err = {0};
    struct pb_http_client_opts o = {.max_host_connections = per_host};
    struct pb_http_client *c = pb_http_client_create(test_loop, &o, &err);
    if (!c) {
        fprintf(stderr, "client: %s\n", err.msg);
        exit(1);
    }
    return c;
}

PB_TEST(simple_get)
{
    struct pb_http_client *c = client(0);
    struct result r = {0};
    struct pb_http_req req = get_req(url("/ok"));
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r), 0);
    PB_EQ_INT(pb_http_client_inflight(c), 1);
    PB_CHECK(run_until(c, &r.done, 1));
    PB_EQ_INT(r.done, 1);
    PB_EQ_INT(r.status, 200);
    PB_EQ_STR(r.body, "hello");
    PB_CHECK(r.body_terminated);
    PB_EQ_STR(r.error, "");
    PB_EQ_INT(r.retry_after_ms, -1);
    PB_CHECK(!r.blocked && !r.timed_out);
    PB_CHECK(r.latency_ms >= 0 && r.latency_ms < 5000);
    PB_EQ_INT(pb_http_client_inflight(c), 0);
    pb_http_client_destroy(c);
}

PB_TEST(configured_header_checks)
{
    PB_CHECK(pb_http_header_name_ok("X-Api-Key"));
    PB_CHECK(pb_http_header_name_ok("x_trace-9"));
    PB_CHECK(!pb_http_header_name_ok(""));
    PB_CHECK(!pb_http_header_name_ok("X Api"));
    PB_CHECK(!pb_http_header_name_ok("X-Api:"));
    PB_CHECK(pb_http_header_value_ok(""));
    PB_CHECK(pb_http_header_value_ok("Bearer a.b\tc"));
    PB_CHECK(!pb_http_header_value_ok("a\r\nX-Injected: 1"));
    PB_CHECK(!pb_http_header_value_ok("a\nb"));
}

PB_TEST(client_loop)
{
    struct pb_http_client *c = client(0);
    PB_CHECK(pb_http_client_loop(c) == test_loop);
    PB_CHECK(pb_http_client_loop(NULL) == NULL);
    pb_http_client_destroy(c);
}

PB_TEST(concurrent_and_keepalive)
{
    enum { N = 100 };
    static struct result rs[N];
    int before = atomic_load(&connections);
    struct pb_http_client *c = client(4);
    memset(rs, 0, sizeof(rs));
    for (int i = 0; i < N; i++) {
        struct pb_http_req req = get_req(url("/ok"));
        PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &rs[i]), 0);
    }
    PB_EQ_INT(pb_http_client_inflight(c), N);
    int64_t deadline = mono_ms() + 10000;
    while (pb_http_client_inflight(c) > 0 && mono_ms() < deadline)
        pb_loop_run_once(test_loop, 100);
    int ok = 0;
    for (int i = 0; i < N; i++)
        ok += rs[i].done == 1 && rs[i].status == 200 && strcmp(rs[i].body, "hello") == 0;
    PB_EQ_INT(ok, N);
    int used = atomic_load(&connections) - before;
    PB_CHECK(used >= 1 && used <= 4);
    if (used > 4)
        fprintf(stderr, "  %d connections for %d requests\n", used, N);

    /* Sequential requests ride the same kept-alive connection. */
    before = atomic_load(&connections);
    for (int i = 0; i < 20; i++) {
        struct result r = {0};
        struct pb_http_req req = get_req(url("/ok"));
        PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r), 0);
        PB_CHECK(run_until(c, &r.done, 1));
        PB_EQ_INT(r.status, 200);
    }
    PB_EQ_INT(atomic_load(&connections) - before, 0);
    pb_http_client_destroy(c);
}

PB_TEST(retry_after)
{
    struct pb_http_client *c = client(0);
    struct result r = {0}, r2 = {0};
    struct pb_http_req req = get_req(url("/busy"));
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r), 0);
    req = get_req(url("/busy-date"));
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r2), 0);
    PB_CHECK(run_until(c, &r.done, 1) && run_until(c, &r2.done, 1));
    PB_EQ_INT(r.status, 503);
    PB_EQ_INT(r.retry_after_ms, 7000);
    PB_EQ_STR(r.body, "busy");
    PB_EQ_STR(r.error, ""); /* a response is not a transport error */
    PB_EQ_INT(r2.status, 429);
    PB_EQ_INT(r2.retry_after_ms, 0); /* a past date means now */
    pb_http_client_destroy(c);
}

PB_TEST(timeout)
{
    struct pb_http_client *c = client(0);
    struct result r = {0};
    struct pb_http_req req = get_req(url("/slow"));
    req.timeout_ms = 200;
    int64_t t0 = mono_ms();
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r), 0);
    PB_CHECK(run_until(c, &r.done, 1));
    PB_CHECK(r.timed_out);
    PB_EQ_INT(r.status, 0);
    PB_CHECK(r.error[0] != 0);
    PB_CHECK(!r.blocked);
    PB_CHECK(mono_ms() - t0 < 550);
    pb_http_client_destroy(c);
}

PB_TEST(response_headers)
{
    struct pb_http_client *c = client(0);
    struct result r = {0};
    struct pb_http_req req = get_req(url("/links"));
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r), 0);
    PB_CHECK(run_until(c, &r.done, 1));
    PB_EQ_INT(r.status, 200);
    PB_EQ_STR(r.link0, "</items?page=2>; rel=\"next\"");
    PB_EQ_STR(r.link1, "</items?page=9>; rel=\"last\"");
    PB_EQ_STR(r.missing, "-");
    PB_CHECK(!r.truncated);
    pb_http_client_destroy(c);
}

PB_TEST(response_cap)
{
    struct pb_http_client *c = client(0);
    struct result r1 = {0}, r2 = {0}, r3 = {0};
    struct pb_http_req req = get_req(url("/big"));
    req.max_response = 1000;
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r1), 0);
    PB_CHECK(run_until(c, &r1.done, 1));
    PB_EQ_INT(r1.status, 200);
    PB_EQ_INT(r1.body_len, 1000);
    PB_CHECK(r1.body_terminated);
    PB_CHECK(r1.truncated);

    req.max_response = 0;
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r2), 0);
    PB_CHECK(run_until(c, &r2.done, 1));
    PB_EQ_STR(r2.error, "");
    PB_EQ_INT(r2.status, 200);
    PB_EQ_INT(r2.body_len, 0);
    PB_CHECK(r2.body_terminated);

    req.max_response = 4 * BIG_LEN;
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r3), 0);
    PB_CHECK(run_until(c, &r3.done, 1));
    PB_EQ_INT(r3.status, 200);
    PB_EQ_INT(r3.body_len, BIG_LEN);
    PB_CHECK(r3.body_terminated);
    pb_http_client_destroy(c);
}

PB_TEST(echo_headers_body_auth)
{
    struct pb_http_client *c = client(0);
    struct result r = {0}, r2 = {0}, r3 = {0};
    static const struct pb_http_header hdrs[] = {{"X-Test", "abc 123"},
                                                 {"Content-Type", "application/json"}};
    struct pb_http_req req = get_req(url("/echo"));
    req.method = "POST";
    req.headers = hdrs;
    req.nheaders = 2;
    req.body = "{\"a\":1}";
    req.len = 7;
    req.basic_user = "u";
    req.basic_pass = "p";
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r), 0);
    PB_CHECK(run_until(c, &r.done, 1));
    PB_EQ_INT(r.status, 200);
    PB_CONTAINS(r.body, "method=POST");
    PB_CONTAINS(r.body, "x-test=abc 123");
    PB_CONTAINS(r.body, "auth=Basic dTpw");
    PB_CONTAINS(r.body, "len=7 body={\"a\":1}");

    /* PUT with a body larger than curl's Expect: 100-continue threshold. */
    size_t n = 2 * 1024 * 1024;
    char *big = malloc(n);
    PB_CHECK(big != NULL);
    if (!big)
        return;
    memset(big, 'y', n);
    req = get_req(url("/echo"));
    req.method = "PUT";
    req.body = big;
    req.len = n;
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r2), 0);
    PB_CHECK(run_until(c, &r2.done, 1));
    PB_EQ_STR(r2.error, "");
    PB_EQ_INT(r2.status, 200);
    PB_CONTAINS(r2.body, "method=PUT");
    PB_CONTAINS(r2.body, "expect=-");
    PB_CONTAINS(r2.body, "len=2097152");
    free(big);

    /* DELETE without a body. */
    req = get_req(url("/echo"));
    req.method = "DELETE";
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r3), 0);
    PB_CHECK(run_until(c, &r3.done, 1));
    PB_EQ_INT(r3.status, 200);
    PB_CONTAINS(r3.body, "method=DELETE");
    PB_CONTAINS(r3.body, "len=0");
    pb_http_client_destroy(c);
}

PB_TEST(bad_requests_fail_without_callback)
{
    struct pb_http_client *c = client(0);
    struct result r = {0};
    static const struct pb_http_header inject[] = {{"X-Test", "a\r\nX-Evil: 1"}};
    static const struct pb_http_header badname[] = {{"X Test", "a"}};
    struct pb_http_req req = get_req(url("/ok"));
    req.headers = inject;
    req.nheaders = 1;
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r), PB_EINVAL);
    req.headers = badname;
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r), PB_EINVAL);
    req = get_req("ftp://127.0.0.1/x");
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r), PB_EINVAL);
    req = get_req("not a url");
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r), PB_EINVAL);
    req = get_req(url("/ok"));
    req.method = "GE T";
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r), PB_EINVAL);
    PB_EQ_INT(pb_http_client_inflight(c), 0);
    pb_loop_run_once(test_loop, 0);
    PB_EQ_INT(r.done, 0);
    pb_http_client_destroy(c);
}

PB_TEST(outbound_guard)
{
    struct pb_http_client *c = client(0);
    struct result r1 = {0}, r2 = {0}, r3 = {0}, r4 = {0}, r5 = {0};

    /* No allow list: loopback is refused at connect time. */
    struct pb_http_req req = get_req(url("/ok"));
    req.allow = NULL;
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r1), 0);
    PB_CHECK(run_until(c, &r1.done, 1));
    PB_EQ_INT(r1.status, 0);
    PB_CHECK(r1.blocked);
    PB_CONTAINS(r1.error, "blocked: 127.0.0.1 is loopback");
    PB_CONTAINS(r1.error, "outbound.allow");

    /* 127.0.0.0/8 allowed. */
    req.allow = loopback_allow;
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r2), 0);
    PB_CHECK(run_until(c, &r2.done, 1));
    PB_EQ_STR(r2.error, "");
    PB_EQ_INT(r2.status, 200);
    PB_CHECK(!r2.blocked);

    /* The connection now kept alive is not reused by a request whose list
     * does not allow it. */
    req.allow = NULL;
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r3), 0);
    PB_CHECK(run_until(c, &r3.done, 1));
    PB_EQ_INT(r3.status, 0);
    PB_CHECK(r3.blocked);
    PB_CONTAINS(r3.error, "127.0.0.1 is loopback");

    /* A host-name entry allows that URL host. */
    static const char *const names[] = {"localhost"};
    struct pb_strlist l = {.n = 1, .items = (char **)names};
    struct pb_allowlist *by_name = pb_allowlist_create(&l, NULL);
    PB_CHECK(by_name != NULL);
    char lurl[128];
    snprintf(lurl, sizeof(lurl), "http://localhost:%u/ok", port);
    req = get_req(lurl);
    req.allow = by_name;
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r4), 0);
    PB_CHECK(run_until(c, &r4.done, 1));
    PB_EQ_INT(r4.status, 200);
    PB_EQ_STR(r4.error, "");
    /* ... and only that host. */
    req = get_req(url("/ok"));
    req.allow = by_name;
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r5), 0);
    PB_CHECK(run_until(c, &r5.done, 1));
    PB_EQ_INT(r5.status, 0);
    PB_CHECK(r5.blocked);
    pb_http_client_destroy(c);
    pb_allowlist_destroy(by_name);
}

PB_TEST(connection_refused)
{
    /* A bound socket that does not listen refuses connections. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    socklen_t slen = sizeof(sin);
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
    PB_CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 &&
             getsockname(fd, (struct sockaddr *)&sin, &slen) == 0);
    char u[64];
    snprintf(u, sizeof(u), "http://127.0.0.1:%u/", ntohs(sin.sin_port));

    struct pb_http_client *c = client(0);
    struct result r = {0};
    struct pb_http_req req = get_req(u);
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r), 0);
    PB_CHECK(run_until(c, &r.done, 1));
    PB_EQ_INT(r.status, 0);
    PB_CHECK(r.error[0] != 0);
    PB_CONTAINS(r.error, "refused");
    PB_CHECK(!r.blocked && !r.timed_out);

    /* The next transfer reuses the handle: its timeout must not carry the
     * refusal's errno along. */
    struct result r2 = {0};
    struct pb_http_req slow = get_req(url("/slow"));
    slow.timeout_ms = 200;
    PB_EQ_INT(pb_http_client_send(c, &slow, done_cb, &r2), 0);
    PB_CHECK(run_until(c, &r2.done, 1));
    PB_CHECK(r2.timed_out);
    PB_CHECK(strstr(r2.error, "refused") == NULL);
    pb_http_client_destroy(c);
    close(fd);
}

struct chain {
    struct pb_http_client *c;
    struct result first, second;
    int send_rc;
};

static void first_cb(void *arg, const struct pb_http_resp *resp)
{
    struct chain *ch = arg;
    done_cb(&ch->first, resp);
    /* A retry scheduled from inside a callback. */
    struct pb_http_req req = get_req(url("/busy"));
    ch->send_rc = pb_http_client_send(ch->c, &req, done_cb, &ch->second);
}

PB_TEST(send_from_callback)
{
    struct chain ch = {.c = client(0), .send_rc = 1};
    struct pb_http_req req = get_req(url("/ok"));
    PB_EQ_INT(pb_http_client_send(ch.c, &req, first_cb, &ch), 0);
    PB_CHECK(run_until(ch.c, &ch.second.done, 1));
    PB_EQ_INT(ch.first.status, 200);
    PB_EQ_INT(ch.send_rc, 0);
    PB_EQ_INT(ch.second.status, 503);
    PB_EQ_INT(ch.second.retry_after_ms, 7000);
    PB_EQ_INT(pb_http_client_inflight(ch.c), 0);
    pb_http_client_destroy(ch.c);
}

PB_TEST(destroy_aborts)
{
    struct chain ch = {.c = client(0), .send_rc = 1};
    struct result r = {0};
    struct pb_http_req req = get_req(url("/slow"));
    PB_EQ_INT(pb_http_client_send(ch.c, &req, done_cb, &r), 0);
    PB_EQ_INT(pb_http_client_send(ch.c, &req, first_cb, &ch), 0);
    pb_loop_run_once(test_loop, 50);
    pb_http_client_destroy(ch.c);
    PB_EQ_INT(r.done, 1);
    PB_EQ_INT(r.status, 0);
    PB_EQ_STR(r.error, "aborted");
    PB_EQ_INT(ch.first.done, 1);
    PB_EQ_STR(ch.first.error, "aborted");
    PB_EQ_INT(ch.send_rc, PB_ESHUTDOWN); /* no new work while closing */
    PB_EQ_INT(ch.second.done, 0);
}

/* A client destroyed with transfers and kept-alive connections leaves no
 * watch or timer behind on its loop. */
PB_TEST(destroy_leaves_loop_clean)
{
    struct pb_err err = {0};
    struct pb_loop *l = pb_loop_create(&err);
    struct pb_http_client *c = pb_http_client_create(l, NULL, &err);
    struct result r = {0}, s = {0};
    struct pb_http_req req = get_req(url("/ok"));
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &r), 0);
    int64_t deadline = mono_ms() + 10000;
    while (!r.done && mono_ms() < deadline)
        pb_loop_run_once(l, 100);
    PB_EQ_INT(r.status, 200);
    req = get_req(url("/slow"));
    PB_EQ_INT(pb_http_client_send(c, &req, done_cb, &s), 0);
    pb_loop_run_once(l, 20);
    pb_http_client_destroy(c);
    PB_EQ_STR(s.error, "aborted");
    pb_loop_destroy(l); /* ASan reports a watch or timer left behind */
    pb_http_client_destroy(NULL);
}

int main(void)
{
    static const char *const loop[] = {"127.0.0.0/8"};
    struct pb_strlist l = {.n = 1, .items = (char **)loop};
    server_start();
    test_loop = pb_loop_create(NULL);
    loopback_allow = pb_allowlist_create(&l, NULL);
    if (!loopback_allow)
        return 1;
    int rc = pb_test_main();
    atomic_store(&stopping, 1);
    MHD_stop_daemon(daemon_);
    pb_allowlist_destroy(loopback_allow);
    pb_loop_destroy(test_loop);
    return rc;
}
