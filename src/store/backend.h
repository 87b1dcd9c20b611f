/* backend.h - what a state store backend implements (store-internal).
 *
 * store.c owns the parts every backend shares: the op queue, the writer
 * thread and its group commit, pb_store_exec, statistics and the writable
 * flag. A backend supplies the storage: open/close, a transaction of applied
 * ops, and the reads. The writer thread is the only caller of begin, apply,
 * commit and rollback; reads may come from any thread at any time. */
#ifndef PB_STORE_BACKEND_H
#define PB_STORE_BACKEND_H

#include "store/pb_store.h"

struct pb_store_backend {
    const char *name;    /* "sqlite" */
    const char *prefix;  /* URL prefix it accepts: "sqlite:" */
    const char *prefix2; /* another one, or NULL: "postgresql://" */

    /* url is the whole URL. NULL + err on failure; nothing is reset. */
    void *(*open)(const char *url, const struct pb_store_opts *opts, struct pb_err *err);
    /* Close everything; accepts NULL. */
    void (*close)(void *ctx);
    const char *(*node_id)(const void *ctx);
    int64_t (*epoch)(const void *ctx);

    /* Writer thread only. begin/commit return 0 or a PB_E* code. apply
     * leaves an op-local outcome (PB_ENOTFOUND, PB_EEXISTS, PB_EINVAL) in
     * op->status and returns 0; it returns a negative code only when the
     * transaction is broken (disk full, I/O error) and must be rolled back. */
    int (*begin)(void *ctx);
    int (*apply)(void *ctx, struct pb_op *op);
    int (*commit)(void *ctx);
    void (*rollback)(void *ctx);
    /* Make every committed transaction durable (one flush for all commits
     * so far). NULL when commit is durable by itself. Called from the
     * syncer thread, concurrently with the writer's next transaction. */
    int (*sync)(void *ctx);

    /* Reads, any thread; same contracts as the pb_store_* functions. */
    /* which: -1 every state, else only that one (PENDING, DEAD). */
    int (*count)(void *ctx, int which, pb_count_cb cb, void *arg, struct pb_err *err);
    int (*read_message)(void *ctx, const char *msg_id, const struct pb_read_cbs *cb,
                        struct pb_err *err);
    int (*read_dead_letters)(void *ctx, const struct pb_dead_query *q, const struct pb_read_cbs *cb,
                             struct pb_err *err);
    int (*search_messages)(void *ctx, const struct pb_msg_query *q, const struct pb_read_cbs *cb,
                           struct pb_err *err);
    int (*read_dead_letter)(void *ctx, int64_t delivery_id, const struct pb_read_cbs *cb,
                            struct pb_err *err);
    int (*kv_load)(void *ctx, const char *scope, pb_kv_cb cb, void *arg, struct pb_err *err);

    /* Tests only, may be NULL: cap the store's size in pages from the next
     * transaction on (0 lifts the cap), to exercise the disk-full path. */
    void (*test_max_pages)(void *ctx, int64_t pages);

    /* The cluster (pb_store.h), for backends several processes share; NULL
     * for one that only one process uses (it is a cluster of one). */
    const char *(*node_name)(const void *ctx);
    void (*set_events)(void *ctx, const struct pb_store_events *ev);
    int (*hold_want)(void *ctx, const char *name);
    bool (*holds)(void *ctx, const char *name);
    int (*live_nodes)(const void *ctx);
    bool (*lease_valid)(const void *ctx);
    bool (*reachable)(const void *ctx);
    int (*read_nodes)(void *ctx, pb_node_cb cb, void *arg, struct pb_err *err);
};

extern const struct pb_store_backend pb__store_sqlite;
extern const struct pb_store_backend pb__store_postgres;

/* Tests only: see test_max_pages. Returns PB_EINVAL if the backend has no
 * such knob. Thread-safe. */
int pb__store_test_max_pages(struct pb_store *s, int64_t pages);

/* Helpers the backends share (store.c). */

/* The checksum stored with each body (CRC-32, as zlib computes it). */
int64_t pb__store_body_crc(const void *data, size_t len);
/* Length of s cut to at most max bytes without splitting a UTF-8 sequence. */
size_t pb__store_utf8_cut(const char *s, size_t max);

#endif
