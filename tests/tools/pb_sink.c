/* pb_sink.c - a real HTTP partner for system tests, the demo and the bench.
 *
 * Answers every request with a configurable status, can fail every Nth one,
 * delay answers without blocking other connections (MHD suspend/resume plus a
 * timer thread), record each request as one JSON line, and report counters.
 * Behaviour can be changed at run time through /_sink/mode.
 *
 *   pb_sink --listen 127.0.0.1:PORT [--port-file F] [--record F.jsonl] [--status N]
 *           [--fail-every N --fail-status N] [--delay-ms N] [--delay-jitter-ms N]
 *           [--retry-after S] [--threads N] [--quiet]
 *
 * A record line: {"ts":unix ms,"n":arrival order,"method":..,"path":..,"status":answered,
 *                 "headers":{lowercased name: value},"body":"raw body"}
 * ("body":null plus "body_hex" when the body is not UTF-8). "ts" and "n" are taken
 * when the whole body has arrived, before any delay; the line is written on answer.
 *
 * Answers below 400 carry {"ok":true}, others {"ok":false}; with --retry-after S
 * every error answer also carries "Retry-After: S".
 *
 * Control endpoints (never counted or recorded):
 *   GET  /_sink/stats  -> {"requests":N,"by_status":{"200":N,...}}
 *   POST /_sink/mode   <- {"status":..,"fail_every":..,"fail_status":..,"delay_ms":..,
 *                          "delay_jitter_ms":..,"retry_after":..} (any subset)
 *   POST /_sink/reset  zeroes the counters
 *
 * Uses only libmicrohttpd, jansson and libc. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BODY_MAX (64u * 1024u * 1024u) /* bodies beyond this are counted, not kept */
#define STATUS_MIN 100
#define STATUS_MAX 599

static const char OK_BODY[] = "{\"ok\":true}";
static const char FAIL_BODY[] = "{\"ok\":false}";

/* Run-time behaviour; every field may change through /_sink/mode. */
static _Atomic int mode_status = 200;
static _Atomic int64_t mode_fail_every = 0;
static _Atomic int mode_fail_status = 503;
static _Atomic int64_t mode_delay_ms = 0;
static _Atomic int64_t mode_jitter_ms = 0;
static _Atomic int64_t mode_retry_after = -1; /* seconds; < 0 = no header */

/* Counters. */
static _Atomic uint64_t n_requests;
static _Atomic uint64_t n_seq; /* drives --fail-every */
static _Atomic uint64_t n_by_status[STATUS_MAX + 1];
static _Atomic uint64_t n_arrival; /* never reset: orders records by arrival */

static bool quiet;
static FILE *record_fp;
static pthread_mutex_t record_mu = PTHREAD_MUTEX_INITIALIZER;
static struct MHD_Response *ok_resp; /* shared answer for the common case */

/* One request in progress. Owned by MHD's per-request pointer; freed in
 * request_done. While suspended it is also linked into the timer list. */
struct req {
    struct MHD_Connection *conn;
    bool control;
    bool decided;   /* status chosen (after the whole body was read) */
    bool answered;  /* the timer resumed us; queue the response now */
    bool suspended; /* counted in n_suspended */
    int status;
    int64_t ts_ms;
    uint64_t arrival; /* 1-based arrival order of the complete request */
    int64_t due_us;
    char *body;
    size_t len, cap;
    bool truncated;
    struct req *next; /* timer list */
};

/* ---- clocks and small helpers ---------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint64_t rand64(void)
{
    static _Thread_local uint64_t s;
    if (s == 0)
        s = (uint64_t)mono_us() ^ ((uint64_t)(uintptr_t)&s << 16) ^ 0x9e3779b97f4a7c15ull;
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
}

static int parse_i64(const char *s, int64_t min, int64_t max, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* ---- the timer thread: resumes delayed connections when due ------------------ */

static pthread_mutex_t timer_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t timer_cv;
static struct req *timer_head; /* sorted by due_us */
static bool timer_stop;
static bool timer_flush;        /* resume everything now */
static _Atomic int n_suspended; /* suspended and not yet seen again by MHD */

static void timer_add(struct req *r)
{
    pthread_mutex_lock(&timer_mu);
    struct req **pp = &timer_head;
    while (*pp && (*pp)->due_us <= r->due_us)
        pp = &(*pp)->next;
    r->next = *pp;
    *pp = r;
    pthread_cond_signal(&timer_cv);
    pthread_mutex_unlock(&timer_mu);
}

static void *timer_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&timer_mu);
    for (;;) {
        int64_t now = mono_us();
        while (timer_head && (timer_flush || timer_head->due_us <= now)) {
            struct req *r = timer_head;
            timer_head = r->next;
            r->next = NULL;
            r->answered = true;
            MHD_resume_connection(r->conn);
        }
        if (timer_stop && !timer_head)
            break;
        if (timer_head) {
            int64_t due = timer_head->due_us;
            struct timespec ts = {.tv_sec = due / 1000000, .tv_nsec = (due % 1000000) * 1000};
            pthread_cond_timedwait(&timer_cv, &timer_mu, &ts);
        } else {
            pthread_cond_wait(&timer_cv, &timer_mu);
        }
    }
    pthread_mutex_unlock(&timer_mu);
    return NULL;
}

/* ---- recording ------------------------------------------------------------------- */

static bool utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 1;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + k >= n)
            return false;
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= n || (s[i + j] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += k + 1;
    }
    return true;
}

static bool header_wanted(const char *lname)
{
    return !strcmp(lname, "content-type") || !strcmp(lname, "idempotency-key") ||
           !strcmp(lname, "authorization") || !strcmp(lname, "user-agent") ||
           !strcmp(lname, "traceparent") || !strcmp(lname, "tracestate") ||
           !strncmp(lname, "x-", 2) || !strncmp(lname, "webhook-", 8);
}

static enum MHD_Result header_cb(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value)
{
    (void)kind;
    json_t *headers = cls;
    char lname[256];
    size_t n = strlen(key);
    if (n >= sizeof lname)
        return MHD_YES;
    for (size_t i = 0; i <= n; i++)
        lname[i] = (char)tolower((unsigned char)key[i]);
    if (!header_wanted(lname))
        return MHD_YES;
    json_t *v = json_string(value ? value : "");
    if (!v) /* not UTF-8: keep a visible marker rather than dropping it */
        v = json_string("<invalid utf-8>");
    json_object_set_new(headers, lname, v);
    return MHD_YES;
}

static void record(struct MHD_Connection *conn, const char *method, const char *url, struct req *r)
{
    json_t *headers = json_object();
    json_t *line = json_object();
    if (!headers || !line)
        goto out;
    MHD_get_connection_values(conn, MHD_HEADER_KIND, header_cb, headers);
    json_object_set_new(line, "ts", json_integer(r->ts_ms));
    json_object_set_new(line, "n", json_integer((json_int_t)r->arrival));
    json_object_set_new(line, "method", json_string(method));
    json_object_set_new(line, "path", json_string(url));
    json_object_set_new(line, "status", json_integer(r->status));
    json_object_set(line, "headers", headers);
    const char *b = r->body ? r->body : "";
    if (utf8_valid((const unsigned char *)b, r->len)) {
        json_object_set_new(line, "body", json_stringn(b, r->len));
    } else {
        /* Raw bytes that JSON cannot carry: record them as hex instead. */
        char *hex = malloc(r->len * 2 + 1);
        if (hex) {
            for (size_t i = 0; i < r->len; i++)
                snprintf(hex + 2 * i, 3, "%02x", (unsigned char)b[i]);
            hex[2 * r->len] = 0;
            json_object_set_new(line, "body", json_null());
            json_object_set_new(line, "body_hex", json_string(hex));
            free(hex);
        }
    }
    if (r->truncated)
        json_object_set_new(line, "truncated", json_true());
    char *text = json_dumps(line, JSON_COMPACT);
    if (text) {
        pthread_mutex_lock(&record_mu);
        fputs(text, record_fp);
        fputc('\n', record_fp);
        fflush(record_fp);
        pthread_mutex_unlock(&record_mu);
        free(text);
    }
out:
    json_decref(headers);
    json_decref(line);
}

/* ---- control endpoints ------------------------------------------------------------ */

static enum MHD_Result send_json(struct MHD_Connection *conn, int status, json_t *j)
{
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text)
        return MHD_NO;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json");
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static json_t *stats_json(void)
{
    json_t *by = json_object();
    for (int s = STATUS_MIN; s <= STATUS_MAX; s++) {
        uint64_t n = atomic_load_explicit(&n_by_status[s], memory_order_relaxed);
        if (n) {
            char k[16];
            snprintf(k, sizeof k, "%d", s);
            json_object_set_new(by, k, json_integer((json_int_t)n));
        }
    }
    return json_pack("{s:I,s:o}", "requests", (json_int_t)atomic_load(&n_requests), "by_status",
                     by);
}

static json_t *mode_json(void)
{
    return json_pack("{s:i,s:I,s:i,s:I,s:I,s:I}", "status", atomic_load(&mode_status), "fail_every",
                     (json_int_t)atomic_load(&mode_fail_every), "fail_status",
                     atomic_load(&mode_fail_status), "delay_ms",
                     (json_int_t)atomic_load(&mode_delay_ms), "delay_jitter_ms",
                     (json_int_t)atomic_load(&mode_jitter_ms), "retry_after",
                     (json_int_t)atomic_load(&mode_retry_after));
}

/* Returns an error text or NULL; applies nothing unless everything is valid. */
static const char *apply_mode(const char *body, size_t len)
{
    json_error_t jerr;
    json_t *j = json_loadb(body ? body : "", len, 0, &jerr);
    const char *err = NULL;
    if (!json_is_object(j)) {
        err = "body must be a JSON object";
        goto out;
    }
    static const struct {
        const char *name;
        int64_t min, max;
    } keys[] = {
        {"status", STATUS_MIN, STATUS_MAX},      {"fail_every", 0, INT64_MAX},
        {"fail_status", STATUS_MIN, STATUS_MAX}, {"delay_ms", 0, 3600000},
        {"delay_jitter_ms", 0, 3600000},         {"retry_after", -1, 86400},
    };
    int64_t vals[6];
    bool have[6] = {false};
    const char *k;
    json_t *v;
    json_object_foreach(j, k, v)
    {
        size_t i;
        for (i = 0; i < sizeof keys / sizeof keys[0]; i++)
            if (!strcmp(k, keys[i].name))
                break;
        if (i == sizeof keys / sizeof keys[0]) {
            err = "unknown key";
            goto out;
        }
        if (!json_is_integer(v) || json_integer_value(v) < keys[i].min ||
            json_integer_value(v) > keys[i].max) {
            err = "value out of range";
            goto out;
        }
        vals[i] = json_integer_value(v);
        have[i] = true;
    }
    if (have[0])
        atomic_store(&mode_status, (int)vals[0]);
    if (have[1])
        atomic_store(&mode_fail_every, vals[1]);
    if (have[2])
        atomic_store(&mode_fail_status, (int)vals[2]);
    if (have[3])
        atomic_store(&mode_delay_ms, vals[3]);
    if (have[4])
        atomic_store(&mode_jitter_ms, vals[4]);
    if (have[5])
        atomic_store(&mode_retry_after, vals[5]);
out:
    json_decref(j);
    return err;
}

static enum MHD_Result control(struct MHD_Connection *conn, const char *method, const char *url,
                               struct req *r)
{
    bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    if (!strcmp(url, "/_sink/stats") && get)
        return send_json(conn, 200, stats_json());
    if (!strcmp(url, "/_sink/mode") && get)
        return send_json(conn, 200, mode_json());
    if (!strcmp(url, "/_sink/mode") && post) {
        const char *err = apply_mode(r->body, r->len);
        if (err)
            return send_json(conn, 400, json_pack("{s:s}", "error", err));
        return send_json(conn, 200, mode_json());
    }
    if (!strcmp(url, "/_sink/reset") && post) {
        atomic_store(&n_requests, 0);
        atomic_store(&n_seq, 0);
        for (int s = 0; s <= STATUS_MAX; s++)
            atomic_store_explicit(&n_by_status[s], 0, memory_order_relaxed);
        return send_json(conn, 200, stats_json());
    }
    return send_json(conn, 404, json_pack("{s:s}", "error", "unknown control endpoint"));
}

/* ---- the request handler ------------------------------------------------------------ */

static int choose_status(void)
{
    uint64_t n = atomic_fetch_add_explicit(&n_seq, 1, memory_order_relaxed) + 1;
    int64_t every = atomic_load_explicit(&mode_fail_every, memory_order_relaxed);
    if (every > 0 && n % (uint64_t)every == 0)
        return atomic_load_explicit(&mode_fail_status, memory_order_relaxed);
    return atomic_load_explicit(&mode_status, memory_order_relaxed);
}

static enum MHD_Result answer(struct MHD_Connection *conn, const char *method, const char *url,
                              struct req *r)
{
    /* Record before counting: whoever saw a count in /_sink/stats finds the line. */
    if (record_fp)
        record(conn, method, url, r);
    atomic_fetch_add_explicit(&n_requests, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&n_by_status[r->status], 1, memory_order_relaxed);

    if (r->status == 200 && ok_resp)
        return MHD_queue_response(conn, 200, ok_resp);

    bool ok = r->status < 400;
    const char *body = ok ? OK_BODY : FAIL_BODY;
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        strlen(body), (void *)(uintptr_t)body, MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", "application/json");
    int64_t ra = atomic_load_explicit(&mode_retry_after, memory_order_relaxed);
    if (!ok && ra >= 0) {
        char v[24];
        snprintf(v, sizeof v, "%" PRId64, ra);
        MHD_add_response_header(resp, "Retry-After", v);
    }
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_data_size, void **con_cls)
{
    (void)cls;
    (void)version;
    struct req *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r)
            return MHD_NO;
        r->conn = conn;
        r->control = !strncmp(url, "/_sink/", 7);
        *con_cls = r;
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (!r->control && !record_fp)
            return MHD_YES; /* read and discarded */
        if (r->len + n > BODY_MAX) {
            r->truncated = true;
            return MHD_YES;
        }
        if (r->len + n + 1 > r->cap) {
            size_t cap = r->cap ? r->cap : 1024;
            while (cap < r->len + n + 1)
                cap *= 2;
            char *p = realloc(r->body, cap);
            if (!p)
                return MHD_NO;
            r->body = p;
            r->cap = cap;
        }
        memcpy(r->body + r->len, upload_data, n);
        r->len += n;
        r->body[r->len] = 0;
        return MHD_YES;
    }
    /* The whole body has been read. */
    if (r->control)
        return control(conn, method, url, r);
    if (!r->decided) {
        r->decided = true;
        r->ts_ms = now_ms();
        r->arrival = atomic_fetch_add_explicit(&n_arrival, 1, memory_order_relaxed) + 1;
        r->status = choose_status();
        int64_t delay = atomic_load_explicit(&mode_delay_ms, memory_order_relaxed);
        int64_t jitter = atomic_load_explicit(&mode_jitter_ms, memory_order_relaxed);
        if (jitter > 0)
            delay += (int64_t)(rand64() % (uint64_t)(jitter + 1));
        if (delay > 0) {
            r->due_us = mono_us() + delay * 1000;
            r->suspended = true;
            atomic_fetch_add(&n_suspended, 1);
            MHD_suspend_connection(conn);
            timer_add(r);
            return MHD_YES;
        }
    } else if (!r->answered) {
        return MHD_YES; /* spurious call while waiting; keep waiting */
    }
    if (r->suspended) {
        r->suspended = false;
        atomic_fetch_sub(&n_suspended, 1);
    }
    return answer(conn, method, url, r);
}

static void request_done(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    struct req *r = *con_cls;
    if (r) {
        if (r->suspended)
            atomic_fetch_sub(&n_suspended, 1);
        free(r->body);
        free(r);
        *con_cls = NULL;
    }
}

/* ---- main ---------------------------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr,
            "usage: pb_sink --listen HOST:PORT [--port-file F] [--record F.jsonl] [--status N]\n"
            "               [--fail-every N --fail-status N] [--delay-ms N] [--delay-jitter-ms N]\n"
            "               [--retry-after S] [--threads N] [--quiet]\n");
}

static int write_port_file(const char *path, unsigned port)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return -1;
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    fprintf(f, "%u\n", port);
    if (fclose(f) != 0)
        return -1;
    return rename(tmp, path);
}

int main(int argc, char **argv)
{
    const char *listen = NULL, *port_file = NULL, *record_path = NULL;
    int64_t threads = 1, v;
    int rc = 1;
    MHD_socket listen_fd = MHD_INVALID_SOCKET;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--quiet")) {
            quiet = true;
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        }
        if (!val) {
            fprintf(stderr, "pb_sink: %s needs a value\n", a);
            usage();
            return 2;
        }
        i++;
        if (!strcmp(a, "--listen")) {
            listen = val;
        } else if (!strcmp(a, "--port-file")) {
            port_file = val;
        } else if (!strcmp(a, "--record")) {
            record_path = val;
        } else if (!strcmp(a, "--status") && !parse_i64(val, STATUS_MIN, STATUS_MAX, &v)) {
            mode_status = (int)v;
        } else if (!strcmp(a, "--fail-every") && !parse_i64(val, 0, INT64_MAX, &v)) {
            mode_fail_every = v;
        } else if (!strcmp(a, "--fail-status") && !parse_i64(val, STATUS_MIN, STATUS_MAX, &v)) {
            mode_fail_status = (int)v;
        } else if (!strcmp(a, "--delay-ms") && !parse_i64(val, 0, 3600000, &v)) {
            mode_delay_ms = v;
        } else if (!strcmp(a, "--delay-jitter-ms") && !parse_i64(val, 0, 3600000, &v)) {
            mode_jitter_ms = v;
        } else if (!strcmp(a, "--retry-after") && !parse_i64(val, 0, 86400, &v)) {
            mode_retry_after = v;
        } else if (!strcmp(a, "--threads") && !parse_i64(val, 1, 256, &v)) {
            threads = v;
        } else {
            fprintf(stderr, "pb_sink: bad option or value: %s %s\n", a, val);
            usage();
            return 2;
        }
    }
    if (!listen) {
        usage();
        return 2;
    }

    struct sockaddr_in sa = {.sin_family = AF_INET};
    char host[64];
    const char *colon = strrchr(listen, ':');
    if (!colon || (size_t)(colon - listen) >= sizeof host ||
        parse_i64(colon + 1, 0, 65535, &v) != 0) {
        fprintf(stderr, "pb_sink: --listen wants IPv4HOST:PORT, got %s\n", listen);
        return 2;
    }
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = 0;
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "pb_sink: bad IPv4 address %s\n", host);
        return 2;
    }
    sa.sin_port = htons((uint16_t)v);

    if (record_path) {
        record_fp = fopen(record_path, "a");
        if (!record_fp) {
            fprintf(stderr, "pb_sink: %s: %s\n", record_path, strerror(errno));
            return 1;
        }
    }

    /* Block the stop signals in every thread; main waits for them. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&timer_cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_t timer;
    if (pthread_create(&timer, NULL, timer_main, NULL) != 0) {
        fprintf(stderr, "pb_sink: cannot start timer thread\n");
        return 1;
    }

    ok_resp = MHD_create_response_from_buffer(strlen(OK_BODY), (void *)(uintptr_t)OK_BODY,
                                              MHD_RESPMEM_PERSISTENT);
    if (ok_resp)
        MHD_add_response_header(ok_resp, "Content-Type", "application/json");

    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME;
    if (!quiet)
        flags |= MHD_USE_ERROR_LOG;
    /* The thread pool option is given only when asked for (MHD warns otherwise). */
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, 0, NULL, NULL, handler, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)16384, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024, MHD_OPTION_NOTIFY_COMPLETED, request_done,
        NULL, threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, (unsigned)threads,
        MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "pb_sink: cannot listen on %s\n", listen);
        goto stop_timer;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    unsigned port = info ? info->port : 0;
    if (port_file && write_port_file(port_file, port) != 0) {
        fprintf(stderr, "pb_sink: cannot write %s: %s\n", port_file, strerror(errno));
        goto stop_daemon;
    }
    if (!quiet)
        fprintf(stderr, "pb_sink: listening on %s:%u\n", host, port);

    int sig = 0;
    sigwait(&stop, &sig);
    rc = 0;

stop_daemon:
    /* MHD refuses to stop with suspended connections: take no new ones, answer
     * whatever is waiting, and wait until MHD has seen every one of them again. */
    listen_fd = MHD_quiesce_daemon(d);
    pthread_mutex_lock(&timer_mu);
    timer_flush = true;
    pthread_cond_signal(&timer_cv);
    pthread_mutex_unlock(&timer_mu);
    for (int64_t deadline = mono_us() + 10000000; atomic_load(&n_suspended) > 0;) {
        if (mono_us() > deadline) {
            fprintf(stderr, "pb_sink: connections still suspended, exiting hard\n");
            _exit(rc);
        }
        usleep(1000);
    }
    MHD_stop_daemon(d);
    if (listen_fd != MHD_INVALID_SOCKET)
        close(listen_fd);
stop_timer:
    pthread_mutex_lock(&timer_mu);
    timer_stop = true;
    timer_flush = true;
    pthread_cond_signal(&timer_cv);
    pthread_mutex_unlock(&timer_mu);
    pthread_join(timer, NULL);
    MHD_destroy_response(ok_resp);
    if (record_fp)
        fclose(record_fp);
    return rc;
}
