/* postgres_int.h - what the PostgreSQL backend's parts share: postgres.c
 * (open, the writer's transactions), postgres_conn.c (connections, I/O with
 * deadlines, errors), postgres_schema.c (schema and migrations),
 * postgres_write.c (the writer's ops), postgres_read.c (reads) and
 * postgres_node.c (the node thread: heartbeats, expiry, holds, LISTEN and
 * NOTIFY). The design is described at the top of postgres.c. Not for use
 * outside src/store. */
#ifndef PB_STORE_POSTGRES_INT_H
#define PB_STORE_POSTGRES_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "store/backend.h"

#define PG_SCHEMA_VERSION 4
#define PG_READ_POOL_MAX 4
#define PG_NAME_MAX 128
#define PG_IO_DEADLINE_MS 15000 /* one writer transaction, one read, at most */

/* The database's clock in unix ms: leases and heartbeats are all measured
 * on it, never on a node's own. */
#define PG_NOW_MS "(extract(epoch from clock_timestamp()) * 1000)::bigint"

/* One connection, used by one thread at a time. */
struct pgc {
    PGconn *conn;
    uint64_t prepared; /* bit i: statement i of its set is prepared here */
    const char *role;  /* "writer", "node", "reader": for logs */
};

/* A statement sent in the writer's pipeline, waiting for its result. */
struct pgq;
typedef int (*pg_result_fn)(struct pgq *q, struct pb_op *op, int idx, PGresult *res);
struct pg_pend {
    pg_result_fn fn; /* NULL: nothing to read from it */
    struct pb_op *op;
    int idx;
};

/* Outputs and keys changed by committed transactions, on their way to
 * the other nodes (NOTIFY, sent by the node thread). */
struct pg_note {
    struct pg_note *next;
    char kind;   /* 'w': pending deliveries nobody holds; 'k': a key-value write */
    char text[]; /* "pipeline\toutput" or "scope\tkey" */
};

struct pg_leftover {
    int64_t id, lease;
};

/* What this node holds or wants to hold (names such as "input/<pipeline>"). */
struct pg_hold {
    char name[PG_NAME_MAX + 16];
    bool held;
};

/* Writer statements (prepared on the writer connection). */
enum {
    WS_INGEST,
    WS_HOLD_LOCK,
    WS_RESULT,
    WS_REPLAY,
    WS_REPLAY_ALL,
    WS_PURGE,
    WS_EXPIRE,
    WS_FANOUT,
    WS_ROUTE,
    WS_ORPHANS,
    WS_SUB_KILL,
    WS_KV_PUT,
    WS_KV_DEL,
    WS_CLAIM,
    WS_CLAIM_SUB,
    WS_RELEASE,
    WS_REPLAY_IDS,
    WS_PURGE_IDS,
    WS_INJECT,
    WS_KEY,
    WS_BEGIN,
    WS_COMMIT,
    WS_ROLLBACK,
    WS_COUNT,
};

struct pgq {
    char *url;     /* what libpq is given (our own parameters taken out) */
    char *display; /* the URL with any password hidden, for messages */
    char schema[64];
    char channel[80];   /* LISTEN/NOTIFY channel of this schema */
    int32_t lock_class; /* advisory lock class of this schema's nodes */
    char store_id[40];
    char node_name[PG_NAME_MAX];
    char appname[112]; /* application_name of this node's sessions (under 64 bytes) */
    char version[32];
    int64_t epoch;
    int64_t lease_ms, heartbeat_ms;
    bool migrate_only; /* `patchbay migrate`: no node, no threads */

    /* ---- writer (the writer thread once started) ---- */
    struct pgc w;
    int64_t w_retry_at; /* monotonic µs: no reconnect before */
    struct pg_pend *pend;
    size_t npend, pendcap;
    struct pg_note *tx_notes;     /* changes of the transaction under way */
    struct pg_leftover *leftover; /* rows claimed that the claimer did not take */
    size_t nleftover, leftovercap;

    /* ---- the node thread (postgres_node.c) ---- */
    pthread_t node_thread;
    bool node_running;
    struct pgc n;
    int wake_fd;          /* eventfd: notes to send, or stop */
    atomic_bool tick_now; /* a hold is wanted: take it now, not a heartbeat from now */
    pthread_mutex_t lock; /* guards outbox, holds, ev, view */
    struct pg_note *outbox;
    struct pb_store_events ev;
    struct pg_hold *holds;
    size_t nholds;
    atomic_bool stop;
    _Atomic int64_t valid_until; /* monotonic µs this node's leases are sure to hold until */
    atomic_bool reachable;       /* the last heartbeat got through */
    atomic_bool lost;            /* presumed dead by the others */
    _Atomic int live_nodes;
    _Atomic int64_t poll_ms;

    /* ---- readers (postgres_read.c) ---- */
    pthread_mutex_t pool_lock;
    struct pgc *idle[PG_READ_POOL_MAX];
    int nidle;
};

/* ---- postgres_conn.c ------------------------------------------------------------------- */

/* Connect c for role, with this backend's session settings; 0 or PB_E* + err. */
int pb__pg_connect(struct pgq *q, struct pgc *c, const char *role, struct pb_err *err);
void pb__pg_close(struct pgc *c);
/* Monotonic µs deadline ms from now. */
int64_t pb__pg_deadline(int64_t ms);
/* Send what libpq has queued and wait for the next result of c, up to
 * deadline (monotonic µs). NULL at the end of a query's results (or on
 * failure: *rc then set, and the connection should be dropped). */
PGresult *pb__pg_next(struct pgc *c, int64_t deadline, int *rc);
/* Run sql (one or more statements, simple protocol) and return the last
 * result through *out (may be NULL). 0 or PB_E* (err may be NULL). */
int pb__pg_exec(struct pgc *c, const char *sql, int64_t deadline, PGresult **out,
                struct pb_err *err);
/* Run one statement with text parameters; the result through *out. */
int pb__pg_execp(struct pgc *c, const char *sql, int n, const char *const *vals, int64_t deadline,
                 PGresult **out, struct pb_err *err);
/* A failed result or connection as a PB_E* code (by SQLSTATE). */
int pb__pg_code(const PGresult *res, PGconn *conn);
/* The error text of a failed result (or the connection's). */
const char *pb__pg_msg(const PGresult *res, PGconn *conn);
/* Log a failed write and return its PB_E* code. */
int pb__pg_fail(struct pgq *q, const PGresult *res, PGconn *conn, const char *what);

/* Text building for parameters. */
struct pg_buf {
    char *p;
    size_t len, cap;
    bool oom;
};
void pb__pg_buf_reset(struct pg_buf *b);
void pb__pg_buf_free(struct pg_buf *b);
void pb__pg_buf_add(struct pg_buf *b, const char *s, size_t n);
void pb__pg_buf_addc(struct pg_buf *b, char c);
void pb__pg_buf_addf(struct pg_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* An element of an array literal: "..." with " and \ escaped (s valid
 * UTF-8, see pb__pg_text), or NULL. */
void pb__pg_buf_elem(struct pg_buf *b, const char *s);
/* A bytea element of an array literal: "\\x<hex>". */
void pb__pg_buf_bytea_elem(struct pg_buf *b, const void *data, size_t len);
/* s (len bytes) as text PostgreSQL takes: invalid UTF-8 and NUL become
 * U+FFFD. Returns s itself when it is fine, else a copy in *tmp (free it);
 * NULL on ENOMEM. */
const char *pb__pg_text(const char *s, size_t len, size_t *outlen, char **tmp);
/* Binary result fields (network order) of columns cast to bigint. */
int64_t pb__pg_i64(const PGresult *res, int row, int col);

/* ---- postgres_schema.c ------------------------------------------------------------------- */

/* Bring the schema of q to PG_SCHEMA_VERSION on c: created in an empty
 * schema always, upgraded only when migrate. Refuses a newer schema. */
int pb__pg_migrate(struct pgq *q, struct pgc *c, bool migrate, int target, struct pb_err *err);
/* Tests only: the SQL of version v (1..PG_SCHEMA_VERSION). */
const char *pb__pg_migration_sql(int v);

/* ---- postgres_write.c ---------------------------------------------------------------------- */

extern const char *const pb__pg_wsql[WS_COUNT];
int pb__pg_apply(void *ctx, struct pb_op *op);
/* Queue a prepared writer statement in the pipeline with a result handler. */
int pb__pg_send(struct pgq *q, int stmt, int n, const char *const *vals, const int *lens,
                const int *fmts, bool binary, pg_result_fn fn, struct pb_op *op, int idx);
/* Release what claims left over (in the transaction begun). */
int pb__pg_release_leftovers(struct pgq *q);
/* Note a change of the transaction under way (sent once it commits). */
void pb__pg_note(struct pgq *q, char kind, const char *a, const char *b);

/* ---- postgres_inject.c ----------------------------------------------------------------------- */

/* PB_OP_INJECT, and replay and purge of a set of ids (PB_OP_REPLAY_ALL and
 * PB_OP_PURGE with ids). */
int pb__pg_apply_inject(struct pgq *q, struct pb_op *op);
int pb__pg_apply_replay_ids(struct pgq *q, struct pb_op *op);
int pb__pg_apply_purge_ids(struct pgq *q, struct pb_op *op);
/* PB_OP_KEY: a process step's key claimed for one message. */
int pb__pg_apply_key(struct pgq *q, struct pb_op *op);

/* ---- postgres_read.c ------------------------------------------------------------------------ */

int pb__pg_count(void *ctx, int which, pb_count_cb cb, void *arg, struct pb_err *err);
int pb__pg_read_message(void *ctx, const char *msg_id, const struct pb_read_cbs *cb,
                        struct pb_err *err);
int pb__pg_read_dead_letter(void *ctx, int64_t delivery_id, const struct pb_read_cbs *cb,
                            struct pb_err *err);
int pb__pg_kv_load(void *ctx, const char *scope, pb_kv_cb cb, void *arg, struct pb_err *err);
int pb__pg_read_nodes(void *ctx, pb_node_cb cb, void *arg, struct pb_err *err);
/* A connection of the pool (made when none is idle), and back. */
struct pgc *pb__pg_reader_get(struct pgq *q, struct pb_err *err);
void pb__pg_reader_put(struct pgq *q, struct pgc *c, bool broken);
void pb__pg_readers_close(struct pgq *q);
/* What postgres_search.c shares with the reads: one statement on a reader
 * connection (binary results), a column as text or NULL, a read-only
 * snapshot, the body check, a callback's stop, the dead-letter row. */
int pb__pg_rq(struct pgq *q, struct pgc *c, const char *sql, int n, const char *const *vals,
              PGresult **out, struct pb_err *err);
const char *pb__pg_txt(const PGresult *r, int row, int col);
int pb__pg_snapshot_begin(struct pgq *q, struct pgc *c, struct pb_err *err);
void pb__pg_snapshot_end(struct pgq *q, struct pgc *c);
bool pb__pg_intact(const PGresult *r, int row, int crc_col, const void *body, size_t len);
int pb__pg_stopped(struct pb_err *err);
/* %s: the body column, or NULL::bytea for none. */
#define PG_DEAD_COLS                                                                               \
    "SELECT d.id, m.id, d.pipeline, d.output, d.attempts::bigint, d.created_at, d.updated_at,"     \
    " d.last_status::bigint, d.last_error, m.content_type, %s, d.sub, d.last_latency_ms,"          \
    " d.last_answer FROM deliveries d JOIN messages m ON m.seq = d.msg_seq"
struct pb_delivery_row pb__pg_dead_row(const PGresult *r, int i, bool with_body);

/* ---- postgres_search.c: the admin API's searches (backend.h) ----------------------------------
 */

int pb__pg_read_dead_letters(void *ctx, const struct pb_dead_query *q, const struct pb_read_cbs *cb,
                             struct pb_err *err);
int pb__pg_search_messages(void *ctx, const struct pb_msg_query *q, const struct pb_read_cbs *cb,
                           struct pb_err *err);

/* ---- postgres_node.c ----------------------------------------------------------------------- */

/* Join the cluster on q->n: an epoch, the node's row, its locks. */
int pb__pg_node_join(struct pgq *q, struct pb_err *err);
int pb__pg_node_start(struct pgq *q, struct pb_err *err);
/* Stop the thread; leave: leases and holds handed back, the row marked left. */
void pb__pg_node_leave(struct pgq *q);
/* Move the notes of a committed transaction to the node thread's outbox. */
void pb__pg_node_post(struct pgq *q, struct pg_note *notes);
/* Wake the node thread (to send notes, take a hold, or stop); any thread. */
void pb__pg_node_wake(struct pgq *q);

#endif
