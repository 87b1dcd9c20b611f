/* postgres_conn.c - connections of the PostgreSQL backend: libpq with this
 * backend's session settings, every wait bounded by a deadline, errors as
 * PB_E* codes, and the text helpers parameters need.
 *
 * libpq's own calls block as long as the peer lets them: a database behind
 * a cut network would hold a thread for the kernel's TCP timeouts (many
 * minutes). Here every connection is non-blocking and every wait is a
 * poll() with a deadline; past it the connection is dropped, and the
 * caller connects again. Session settings bound, on the server's side, how
 * long a session of a frozen process can hold locks others wait for
 * (idle_in_transaction_session_timeout, statement_timeout, lock_timeout;
 * see postgres.c).
 *
 * A connection is used by one thread at a time (libpq's rule); these
 * functions keep no state of their own. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "patchbay/pb_log.h"
#include "patchbay/pb_time.h"
#include "store/postgres_int.h"

#define CONNECT_TIMEOUT_S "5"

int64_t pb__pg_deadline(int64_t ms)
{
    return pb_mono_us() + ms * 1000;
}

void pb__pg_close(struct pgc *c)
{
    if (c->conn)
        PQfinish(c->conn);
    c->conn = NULL;
    c->prepared = 0;
}

/* Session settings: the server ends a session idle in a transaction (its
 * process frozen or cut off) after a third of the lease, and never lets a
 * statement or a lock wait run past the bounds the design states. */
static int session_setup(struct pgq *q, struct pgc *c, struct pb_err *err)
{
    char sql[768];
    int64_t idle = q->lease_ms / 3;
    if (idle < 1000)
        idle = 1000;
    if (idle > 10000)
        idle = 10000;
    int64_t lock = q->lease_ms + q->heartbeat_ms;
    snprintf(sql, sizeof(sql),
             "SET synchronous_commit = on;"
             "SET idle_in_transaction_session_timeout = %" PRId64 ";"
             "SET statement_timeout = %d;"
             "SET lock_timeout = %" PRId64 ";"
             "SET client_min_messages = warning;"
             "SET search_path = \"%s\";"
             "SET application_name = '%s'",
             idle, PG_IO_DEADLINE_MS, lock, q->schema, q->appname);
    return pb__pg_exec(c, sql, pb__pg_deadline(PG_IO_DEADLINE_MS), NULL, err);
}

/* What the server says besides results (notices, the FATAL of a
 * connection it ends) goes to the log, never to stderr. */
static void notice(void *arg, const char *msg)
{
    size_t n = strcspn(msg, "\n");
    PB_DEBUG("state store notice role=%s message=\"%.*s\"", (const char *)arg, (int)n, msg);
}

int pb__pg_connect(struct pgq *q, struct pgc *c, const char *role, struct pb_err *err)
{
    /* Our defaults first: the URL's own settings override them. */
    const char *keys[] = {"connect_timeout",
                          "keepalives",
                          "keepalives_idle",
                          "keepalives_interval",
                          "keepalives_count",
                          "tcp_user_timeout",
                          "dbname",
                          "application_name",
                          NULL};
    const char *vals[] = {CONNECT_TIMEOUT_S, "1", "5", "2", "3", "10000", q->url, q->appname, NULL};
    pb__pg_close(c);
    c->role = role;
    c->conn = PQconnectdbParams(keys, vals, 1);
    if (!c->conn)
        return pb_err_set(err, PB_ENOMEM, "out of memory connecting to %s", q->display);
    if (PQstatus(c->conn) != CONNECTION_OK) {
        /* libpq's message names host and port, never the password. */
        char msg[PB_ERR_MSG_MAX];
        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c->conn));
        for (char *p = msg; *p; p++)
            if (*p == '\n')
                *p = ' ';
        pb__pg_close(c);
        return pb_err_set(err, PB_ESTORE, "cannot connect to the state store %s: %s", q->display,
                          msg);
    }
    PQsetNoticeProcessor(c->conn, notice, (void *)c->role);
    if (PQsetnonblocking(c->conn, 1) != 0) {
        pb__pg_close(c);
        return pb_err_set(err, PB_ESTORE, "state store %s: cannot make the connection non-blocking",
                          q->display);
    }
    int rc = session_setup(q, c, err);
    if (rc)
        pb__pg_close(c);
    return rc;
}

/* Wait until c's socket is readable (and writable, when want_write) or the
 * deadline passes. 0, PB_ETIMEOUT or PB_ESTORE. */
static int wait_sock(struct pgc *c, bool want_write, int64_t deadline)
{
    int fd = PQsocket(c->conn);
    if (fd < 0)
        return PB_ESTORE;
    for (;;) {
        int64_t left = deadline - pb_mono_us();
        if (left <= 0)
            return PB_ETIMEOUT;
        struct pollfd p = {.fd = fd, .events = (short)(POLLIN | (want_write ? POLLOUT : 0))};
        int n = poll(&p, 1, (int)((left + 999) / 1000));
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return PB_ESTORE;
    }
}

PGresult *pb__pg_next(struct pgc *c, int64_t deadline, int *rc)
{
    *rc = 0;
    if (!c->conn) {
        *rc = PB_ESTORE;
        return NULL;
    }
    for (;;) {
        int f = PQflush(c->conn);
        if (f < 0) {
            *rc = PB_ESTORE;
            return NULL;
        }
        if (f == 0 && !PQisBusy(c->conn))
            return PQgetResult(c->conn);
        int w = wait_sock(c, f == 1, deadline);
        if (w) {
            *rc = w;
            return NULL;
        }
        if (!PQconsumeInput(c->conn)) {
            *rc = PB_ESTORE;
            return NULL;
        }
    }
}

/* Read every result of the query just sent; keep the last in *out. */
static int drain(struct pgc *c, int64_t deadline, PGresult **out, struct pb_err *err)
{
    PGresult *last = NULL, *res;
    int rc = 0, first_err = 0;
    char msg[PB_ERR_MSG_MAX] = "";
    while ((res = pb__pg_next(c, deadline, &rc))) {
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_FATAL_ERROR && !first_err) {
            first_err = pb__pg_code(res, c->conn);
            snprintf(msg, sizeof(msg), "%s", pb__pg_msg(res, c->conn));
        }
        PQclear(last);
        last = res;
    }
    if (rc) {
        PQclear(last);
        if (rc == PB_ETIMEOUT)
            pb_err_set(err, rc, "the state store did not answer in time (%s connection)", c->role);
        else
            pb_err_set(err, rc, "the state store connection failed: %s",
                       c->conn ? PQerrorMessage(c->conn) : "closed");
        return rc;
    }
    if (first_err) {
        PQclear(last);
        return pb_err_set(err, first_err, "state store: %s", msg);
    }
    if (out)
        *out = last;
    else
        PQclear(last);
    return 0;
}

int pb__pg_exec(struct pgc *c, const char *sql, int64_t deadline, PGresult **out,
                struct pb_err *err)
{
    if (out)
        *out = NULL;
    if (!c->conn)
        return pb_err_set(err, PB_ESTORE, "no connection to the state store");
    if (!PQsendQuery(c->conn, sql))
        return pb_err_set(err, PB_ESTORE, "state store: %s", PQerrorMessage(c->conn));
    return drain(c, deadline, out, err);
}

int pb__pg_execp(struct pgc *c, const char *sql, int n, const char *const *vals, int64_t deadline,
                 PGresult **out, struct pb_err *err)
{
    if (out)
        *out = NULL;
    if (!c->conn)
        return pb_err_set(err, PB_ESTORE, "no connection to the state store");
    if (!PQsendQueryParams(c->conn, sql, n, NULL, vals, NULL, NULL, 0))
        return pb_err_set(err, PB_ESTORE, "state store: %s", PQerrorMessage(c->conn));
    return drain(c, deadline, out, err);
}

int pb__pg_code(const PGresult *res, PGconn *conn)
{
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (!st)
        return conn && PQstatus(conn) != CONNECTION_OK ? PB_ESTORE : PB_ESTORE;
    if (strcmp(st, "53100") == 0) /* disk_full */
        return PB_ENOSPACE;
    if (strcmp(st, "53200") == 0) /* out_of_memory */
        return PB_ENOMEM;
    if (strcmp(st, "23505") == 0) /* unique_violation */
        return PB_EEXISTS;
    if (strcmp(st, "54000") == 0 || strcmp(st, "54001") == 0) /* program_limit_exceeded */
        return PB_ETOOBIG;
    if (strcmp(st, "57014") == 0 || strcmp(st, "55P03") == 0) /* canceled, lock_not_available */
        return PB_ETIMEOUT;
    return PB_ESTORE;
}

const char *pb__pg_msg(const PGresult *res, PGconn *conn)
{
    const char *m = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (m)
        return m;
    m = conn ? PQerrorMessage(conn) : NULL;
    return m && *m ? m : "connection lost";
}

int pb__pg_fail(struct pgq *q, const PGresult *res, PGconn *conn, const char *what)
{
    char safe[PB_ERR_MSG_MAX];
    PB_WARN("state store write failed step=%s store=%s error=\"%s\"", what, q->display,
            pb_log_value(pb__pg_msg(res, conn), safe, sizeof(safe)));
    return pb__pg_code(res, conn);
}

/* ---- text --------------------------------------------------------------------------------- */

void pb__pg_buf_reset(struct pg_buf *b)
{
    b->len = 0;
    b->oom = false;
    if (b->p)
        b->p[0] = 0;
}

void pb__pg_buf_free(struct pg_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

static bool grow(struct pg_buf *b, size_t n)
{
    if (b->oom)
        return false;
    if (b->len + n + 1 <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void pb__pg_buf_add(struct pg_buf *b, const char *s, size_t n)
{
    if (!grow(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

void pb__pg_buf_addc(struct pg_buf *b, char c)
{
    pb__pg_buf_add(b, &c, 1);
}

void pb__pg_buf_addf(struct pg_buf *b, const char *fmt, ...)
{
    char tmp[1024]; /* a formatted piece of SQL (PG_DEAD_COLS and its like) */
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        b->oom = true;
        return;
    }
    pb__pg_buf_add(b, tmp, (size_t)n);
}

void pb__pg_buf_elem(struct pg_buf *b, const char *s)
{
    if (!s) {
        pb__pg_buf_add(b, "NULL", 4);
        return;
    }
    pb__pg_buf_addc(b, '"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            pb__pg_buf_addc(b, '\\');
        pb__pg_buf_addc(b, *s);
    }
    pb__pg_buf_addc(b, '"');
}

void pb__pg_buf_bytea_elem(struct pg_buf *b, const void *data, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *d = data;
    if (!grow(b, 2 * len + 8))
        return;
    pb__pg_buf_add(b, "\"\\\\x", 4);
    for (size_t i = 0; i < len; i++) {
        b->p[b->len++] = hex[d[i] >> 4];
        b->p[b->len++] = hex[d[i] & 15];
    }
    b->p[b->len] = 0;
    pb__pg_buf_addc(b, '"');
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if none. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t need;
    if (c == 0)
        return 0;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        need = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        need = 3;
    else if (c >= 0xF0 && c <= 0xF4)
        need = 4;
    else
        return 0;
    if (n < need)
        return 0;
    for (size_t i = 1; i < need; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    if (c == 0xE0 && s[1] < 0xA0)
        return 0; /* overlong */
    if (c == 0xED && s[1] >= 0xA0)
        return 0; /* surrogates */
    if (c == 0xF0 && s[1] < 0x90)
        return 0; /* overlong */
    if (c == 0xF4 && s[1] >= 0x90)
        return 0; /* past U+10FFFF */
    return need;
}

const char *pb__pg_text(const char *s, size_t len, size_t *outlen, char **tmp)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, k;
    *tmp = NULL;
    while (i < len && (k = utf8_seq(u + i, len - i)) > 0)
        i += k;
    if (i == len) {
        if (outlen)
            *outlen = len;
        return s;
    }
    char *out = malloc(3 * len + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (i = 0; i < len;) {
        k = utf8_seq(u + i, len - i);
        if (k) {
            memcpy(out + o, s + i, k);
            o += k;
            i += k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    out[o] = 0;
    if (outlen)
        *outlen = o;
    *tmp = out;
    return out;
}

int64_t pb__pg_i64(const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col) || PQgetlength(res, row, col) != 8)
        return 0;
    const unsigned char *p = (const unsigned char *)PQgetvalue(res, row, col);
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return (int64_t)v;
}
