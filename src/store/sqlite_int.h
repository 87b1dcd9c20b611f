/* sqlite_int.h - what the SQLite backend's parts share: sqlite.c (open,
 * schema, transactions), sqlite_write.c (the writer's ops) and
 * sqlite_read.c (the read connection pool and reads). Not for use outside
 * src/store. */
#ifndef PB_STORE_SQLITE_INT_H
#define PB_STORE_SQLITE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <sqlite3.h>

#include "store/backend.h"

#define READ_POOL_MAX 4

/* Writer statements, prepared once at open. */
enum {
    W_IDEM_GET,
    W_IDEM_PUT,
    W_MSG_INS,
    W_DLV_INS,
    W_DLV_RESULT,
    W_ATT_INS,
    W_DEAD_GET,
    W_DLV_MARK_REPLAYED,
    W_DLV_REPLAY,
    W_DLV_DEL,
    W_MSG_DEL_UNUSED,
    W_IDEM_EXPIRE,
    W_MSG_EXPIRE,
    W_FAN_PARENT,
    W_FAN_CHILD,
    W_ROUTE_FINISH,
    W_ROUTED_PUT,
    W_CHILD_INS,
    W_DLV_FINAL,
    W_ORPHAN_ATT,
    W_ORPHAN_DLV,
    W_CLAIM,
    W_SUB_KILL_ATT,
    W_SUB_KILL_DLV,
    W_LEASE_SET,
    W_LEASE_DROP,
    W_KV_PUT,
    W_KV_DEL,
    W_DEAD_IN_DLV,
    W_DEAD_IN_ATT,
    W_INJ_OLD,
    W_INJ_MSG,
    /* replay-all's selection, one variant per filter (bit 0 pipeline, bit 1 output) */
    W_RALL,
    W_COUNT = W_RALL + 4,
};

struct rconn;

/* The checkpointer (sqlite_ckpt.c). */
struct sq_ckpt {
    pthread_t thread;
    pthread_mutex_t lock; /* guards due, stop */
    pthread_cond_t cond;
    bool due, stop, running, inited;
    sqlite3 *db;        /* its own connection */
    _Atomic int copied; /* log pages its last pass copied (0: none since the writer's) */
};

/* The backend context. */
struct sq {
    char *path;    /* as handed to SQLite */
    char *display; /* as the user wrote it, for messages */
    char node_id[17];
    int64_t epoch; /* this open's lease, one more than the last open's */
    sqlite3 *db;   /* write connection: writer thread only after open */
    sqlite3_stmt *ws[W_COUNT];
    _Atomic int64_t max_pages_req; /* test knob; -1 = unchanged */
    /* Durable commits without blocking the writer: the connection runs with
     * synchronous=NORMAL and sq_sync() fdatasyncs the WAL before any op of
     * a committed batch is reported done. */
    bool explicit_sync;
    char *wal_path;
    int wal_fd;  /* -1 until the WAL exists */
    int lock_fd; /* PATH.lock, flock()ed for the store's life: one daemon per store */

    struct sq_ckpt ckpt;

    pthread_mutex_t pool_lock; /* guards idle/nidle (sqlite_read.c) */
    struct rconn *idle[READ_POOL_MAX];
    int nidle;
};

/* The writer statements' SQL, prepared at open (sqlite_write.c). */
extern const char *const pb__sqlite_wsql[W_COUNT];
/* Apply one op inside the writer's transaction (sqlite_write.c). */
int pb__sqlite_apply(void *ctx, struct pb_op *op);
/* A write that failed: the PB_E* code for rc, logged with what it was. */
int pb__sqlite_write_fail(struct sq *q, int rc, const char *what);
/* Start and stop the checkpointer (sqlite_ckpt.c): after the schema is in
 * place; stopped before the write connection closes. */
int pb__sqlite_ckpt_start(struct sq *q, struct pb_err *err);
void pb__sqlite_ckpt_stop(struct sq *q);
/* A SQLite result code as a PB_E* code. */
int pb__sqlite_map_rc(sqlite3 *db, int rc);
/* Open a connection to q->path (creating the file when create), with
 * extended result codes and the busy timeout. 0 or PB_E* + err. */
int pb__sqlite_open_conn(struct sq *q, bool create, sqlite3 **out, struct pb_err *err);

/* sqlite_read.c: the backend's read entry points (see backend.h). */
/* Does body (read from st) still match the CRC in column col of st? NULL
 * there (a body stored before checksums) counts as a match. */
bool pb__sqlite_body_intact(sqlite3_stmt *st, int col, const void *body, size_t len);
int pb__sqlite_count(void *ctx, int which, pb_count_cb cb, void *arg, struct pb_err *err);
int pb__sqlite_read_message(void *ctx, const char *msg_id, const struct pb_read_cbs *cb,
                            struct pb_err *err);
int pb__sqlite_read_dead_letters(void *ctx, const struct pb_dead_query *q,
                                 const struct pb_read_cbs *cb, struct pb_err *err);
int pb__sqlite_read_dead_letter(void *ctx, int64_t delivery_id, const struct pb_read_cbs *cb,
                                struct pb_err *err);
int pb__sqlite_kv_load(void *ctx, const char *scope, pb_kv_cb cb, void *arg, struct pb_err *err);
/* sqlite_write.c: what the writer's ops in other files share. */
int pb__sqlite_step_done(sqlite3_stmt *st);
void pb__sqlite_bind_text_or_null(sqlite3_stmt *st, int i, const char *s);
int pb__sqlite_find_dead(struct sq *q, int64_t id, int64_t *msg_seq, char *pipeline, size_t plen,
                         char *output, size_t olen, char *sub, size_t slen);
/* sqlite_inject.c: PB_OP_INJECT. */
int pb__sqlite_apply_inject(struct sq *q, struct pb_op *op);

/* sqlite_search.c: the searches of the admin API (see backend.h). */
int pb__sqlite_search_messages(void *ctx, const struct pb_msg_query *q,
                               const struct pb_read_cbs *cb, struct pb_err *err);

/* What sqlite_search.c borrows from sqlite_read.c: a connection of the read
 * pool (always put back), its handle, errors, and the dead-letter row. */
struct rconn *pb__sqlite_rconn_get(struct sq *q, struct pb_err *err);
void pb__sqlite_rconn_put(struct sq *q, struct rconn *r);
sqlite3 *pb__sqlite_rconn_db(struct rconn *r);
int pb__sqlite_read_fail(sqlite3 *db, int rc, struct pb_err *err, const char *what);
const char *pb__sqlite_text_col(sqlite3_stmt *st, int i);
#define PB__SQLITE_DEAD_COLS                                                                       \
    "SELECT d.id, m.id, d.pipeline, d.output, d.attempts, d.created_at, d.updated_at,"             \
    " d.last_status, d.last_error, m.content_type, m.body, d.sub, d.last_latency_ms,"              \
    " d.last_answer FROM deliveries d JOIN messages m ON m.seq = d.msg_seq"
struct pb_delivery_row pb__sqlite_dead_row(sqlite3_stmt *st, bool with_body);

/* Tests only: the SQL of schema version v (1..PB_STORE_SCHEMA_VERSION). */
const char *pb__sqlite_migration_sql(int v);
/* Close the idle read connections (store teardown, no reader active). */
void pb__sqlite_readers_close(struct sq *q);

#endif
