/* cdc_int.h - the parts of the `postgres_cdc` input: the plugin and its
 * state machine (cdc.c), reading the replication stream into messages
 * (cdc_stream.c), and the SQL side - publication, slot, snapshot, keys,
 * heartbeats, lag (cdc_setup.c).
 *
 * Thread model: everything here runs on the input's own loop thread
 * (PB_INPUT_OWN_THREAD); libpq blocks there. Nothing needs a lock. */
#ifndef PB_CDC_INT_H
#define PB_CDC_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "../sql/sql_common.h"
#include "patchbay/pb_plugin.h"
#include "pgoutput.h"

#define CDC_CKPT "lsn"
#define CDC_KEY_MAX 96

struct cdc_outbound {
    struct pb_strlist allow;
};

/* A message waiting to be committed. */
struct cdc_item {
    char *body;
    size_t len;
    char *meta;
    char *dead;
    char key[CDC_KEY_MAX];
};

/* The end of a transaction among the waiting items: items[0..upto) hold
 * it and everything before it; lsn is where the stream resumes after it. */
struct cdc_mark {
    size_t upto;
    uint64_t lsn;
};

enum cdc_phase {
    CDC_DOWN = 0,  /* not connected: the timer connects */
    CDC_CKPT_WAIT, /* a checkpoint is being committed; then `after` */
    CDC_SNAPSHOT,  /* reading the tables in the slot's exported snapshot */
    CDC_STREAM,    /* START_REPLICATION: the watch reads the stream */
};

struct snap_table {
    uint32_t oid;
    char *schema, *table;
    char **keys; /* key column names */
    size_t nkeys;
};

struct in_cdc {
    /* options (read-only after init) */
    char *dsn;
    char *slot;
    char *publication;
    struct pb_strlist tables;
    int snapshot; /* 0 initial, 1 never */
    int64_t heartbeat_ms;
    int64_t status_interval_ms;
    int decimal;
    int64_t snapshot_batch;
    int64_t connect_timeout_ms;
    int64_t window_ms;
    struct cdc_outbound outbound;
    /* prepared by init */
    struct sql_target target;
    struct pb_allowlist *allow;
    struct sql_fmt fmt;
    char pipeline[128];

    /* run time: the input's own loop thread */
    struct pb_input *in;
    struct pb_loop *loop;
    struct pb_loop_timer *timer; /* the state machine */
    struct pb_loop_timer *tick;  /* status updates, heartbeats, lag */
    struct pb_loop_watch *watch; /* the replication socket, while streaming */
    struct sql_conn *repl;       /* replication=database */
    struct sql_conn *sqlc;       /* a plain session: catalog, snapshot, heartbeats */
    enum cdc_phase phase;
    enum cdc_phase after; /* CDC_CKPT_WAIT: what follows the commit */
    struct pgo_decoder dec;
    uint64_t committed; /* stream position committed to the store (and confirmed) */
    uint64_t received;  /* the highest WAL position the server reported */
    uint64_t start_lsn; /* where START_REPLICATION begins */
    bool have_ckpt;     /* a stream checkpoint is in the store */
    /* the transaction being read */
    bool in_txn, skip_txn;
    uint64_t txn_final;
    int64_t txn_time;
    uint32_t txn_xid;
    uint32_t txn_seq;
    /* messages waiting to be committed, and the transaction ends among them */
    struct cdc_item *items;
    size_t nitems, icap, bytes;
    struct cdc_mark *marks;
    size_t nmarks, mcap;
    /* the one submit in flight */
    bool submitting;
    size_t sub_n;
    uint64_t sub_lsn; /* 0: it carries no checkpoint */
    unsigned gen, sub_gen;
    /* the snapshot */
    uint64_t snap_lsn;
    struct snap_table *snap;
    size_t nsnap, snap_i;
    bool snap_open; /* the cursor over snap[snap_i] is declared */
    uint64_t snap_rows;
    /* control */
    bool paused, stopped, blocked; /* blocked: not reading, the buffer is full */
    int64_t backoff_ms;
    int64_t last_status, next_heartbeat, next_lag, last_idle_ckpt; /* loop ms */
    int64_t heartbeat_warned;
};

/* cdc.c */
void cdc_fail(struct in_cdc *c, const char *what, const char *detail);
void cdc_arm(struct in_cdc *c, int64_t ms);
/* Commit items[0..n) (n may be 0) and, when lsn is set, the stream
 * checkpoint at lsn; one at a time. 0, or a PB_E* code (PB_EFULL: paused). */
int cdc_submit(struct in_cdc *c, size_t n, uint64_t lsn, const char *phase);
int cdc_item_add(struct in_cdc *c, char *body, size_t len, const char *dead, const char *key,
                 const char *meta);
void cdc_send_status(struct in_cdc *c, bool reply);

/* cdc_stream.c */
/* Read what the socket has, decode, and submit what is complete. */
void cdc_stream_read(struct in_cdc *c);
/* Commit waiting items if there is something to commit (drained: the
 * socket has nothing more right now). */
void cdc_stream_flush(struct in_cdc *c, bool drained);

/* cdc_setup.c */
/* Connect both sessions, make the publication, look at the slot and the
 * checkpoint, and go on: a checkpoint to commit first, the snapshot, or
 * the stream. 0, or -1 after cdc_fail. */
int cdc_setup(struct in_cdc *c);
/* The next step once a setup checkpoint is committed. */
void cdc_setup_continue(struct in_cdc *c);
/* One page of the snapshot (or its end). */
void cdc_snapshot_step(struct in_cdc *c);
int cdc_start_streaming(struct in_cdc *c);
/* The key columns of relation relid (replica identity index, else primary
 * key) into the decoder's cache. 0, or -1 with the error in c->sqlc. */
int cdc_rel_keys(struct in_cdc *c, uint32_t relid);
void cdc_heartbeat(struct in_cdc *c);
void cdc_lag(struct in_cdc *c);
void cdc_snap_free(struct in_cdc *c);

#endif
