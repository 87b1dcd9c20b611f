/* pb_store.h - the state store: messages, deliveries, attempts, dead letters,
 * idempotency keys.
 *
 * One writer thread owns the write connection and group-commits queued
 * operations (many per transaction). Callers submit a struct pb_op and learn
 * the result in its done_cb, which runs on the writer thread after the
 * transaction that holds the op has committed (or failed). Reads (loading
 * pending deliveries, admin queries) use separate read connections and may
 * run on any thread.
 *
 * Leases: a pending delivery held in a process's memory carries that
 * process's lease (pb_store_epoch, new at every open). Deliveries are made
 * leased when their maker will hand them to its dispatcher, unleased when
 * the output is spilled; CLAIM takes unleased ones (and those of leases no
 * longer live: on SQLite, any other epoch), RELEASE gives them back, and a
 * RESULT, ROUTE or FANOUT is applied only while its lease still holds, so a
 * process that lost a delivery cannot overwrite a newer attempt. Delivery
 * ids are not assumed to grow in commit order.
 *
 * Deliveries are addressed by (pipeline, output, sub): sub names a
 * sub-output (a webhook endpoint) and is NULL for the output itself.
 *
 * Backends: "sqlite:PATH" now; the interface is kept free of SQLite types so
 * a PostgreSQL backend can follow. */
#ifndef PB_STORE_H
#define PB_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "patchbay/pb_err.h"

/* 2: endpoints, 3: body checksums, 4: static endpoints' state, 5: metadata,
 * split children and routed bodies, 6: key-value state (checkpoints,
 * plugins' state), 7: sub-outputs and leases, 8: webhook endpoints in the
 * webhook outputs' key-value state, 9: an attempt that ends its delivery at
 * the first try kept in the delivery's row, 10: each message's idempotency
 * key and the message an edited one was made from, 11: the partner's answer
 * excerpt of each attempt */
#define PB_STORE_SCHEMA_VERSION 11
#define PB_MSG_ID_MAX 40
#define PB_NAME_MAX_STORE 128    /* pipeline and output names */
#define PB_SUB_ID_MAX 64         /* sub-output ids (as pb_plugin.h) */
#define PB_ERROR_EXCERPT_MAX 512 /* bytes of an attempt's error text kept */
#define PB_STORE_ANSWER_MAX 256  /* bytes of a partner's answer kept (PB_ANSWER_EXCERPT_MAX) */
/* EXPIRE deletes at most this many messages (and idempotency keys) per op,
 * so the writer never stalls: resubmit soon when deleted reaches it. */
#define PB_STORE_EXPIRE_BATCH 10000

/* Delivery states, as stored. */
enum pb_dstate {
    PB_DSTATE_PENDING = 0,     /* waiting for its first or next attempt */
    PB_DSTATE_DELIVERED = 1,   /* partner acknowledged */
    PB_DSTATE_DEAD = 2,        /* in the dead-letter queue */
    PB_DSTATE_FILTERED = 3,    /* dropped on purpose by a filter; recorded */
    PB_DSTATE_REPLAYED = 4,    /* was dead; a replay created a new delivery */
    PB_DSTATE_ROUTED_AWAY = 5, /* the route stage chose other outputs; recorded */
};
/* The output name of a pipeline's route stage: its deliveries run the
 * pipeline's process steps once per message. */
#define PB_ROUTE_OUTPUT "(route)"
/* The output name of the dead delivery an item that could not be taken in
 * (invalid JSON on a format: json input...) is stored with. */
#define PB_INPUT_OUTPUT "(input)"
const char *pb_dstate_name(enum pb_dstate s);

struct pb_store_opts {
    bool synchronous_full;   /* PRAGMA synchronous=FULL (default true) */
    bool integrity_check;    /* PRAGMA quick_check at open (default true) */
    size_t ingest_queue_max; /* ingest ops queued before submit says PB_EFULL */
    size_t batch_max;        /* ops per transaction at most */
    /* PostgreSQL: this process as a node of the cluster sharing the store. */
    const char *node;     /* its name; NULL: host name and pid */
    int64_t lease_ms;     /* its leases last this long after its last heartbeat (0: 30 s) */
    int64_t heartbeat_ms; /* it heartbeats this often (0: 5 s) */
    const char *version;  /* of this binary, shown to the other nodes */
    /* Apply the schema's migrations. Without it an empty database gets the
     * schema, and an older schema is refused (patchbay migrate applies it). */
    bool migrate;
    bool migrate_only; /* open only to migrate: no node joins, no thread starts */
    int migrate_to;    /* tests: stop at this schema version (0: the current one) */
};
void pb_store_opts_default(struct pb_store_opts *o);
/* url as logs and the API may show it: credentials (user:password@ and a
 * password= parameter) hidden. */
void pb_store_url_shown(const char *url, char *buf, size_t len);

struct pb_store;

/* Open (creating if absent) and migrate. A file that is not a database, is
 * corrupt, truncated or from a newer schema is refused with a clear error;
 * nothing is ever reset. For sqlite, the parent directory is created. */
struct pb_store *pb_store_open(const char *url, const struct pb_store_opts *opts,
                               struct pb_err *err);
/* Stops the writer if running (draining the queue first). Accepts NULL. */
void pb_store_destroy(struct pb_store *s);

/* Random id made when the store was created; stable for its life. */
const char *pb_store_node_id(const struct pb_store *s);
/* The lease of this open store: what its deliveries in memory are held by. */
int64_t pb_store_epoch(const struct pb_store *s);

/* ---- writer ---------------------------------------------------------- */

enum pb_op_kind {
    PB_OP_INGEST = 1, /* new message + one pending delivery per output */
    PB_OP_RESULT,     /* one attempt's outcome for a delivery */
    PB_OP_REPLAY,     /* dead delivery -> new pending delivery */
    PB_OP_REPLAY_ALL, /* every dead delivery of pipeline/output */
    PB_OP_PURGE,      /* delete one dead delivery (and the message when unused) */
    PB_OP_EXPIRE,     /* delete expired idempotency keys and finished messages */
    PB_OP_FANOUT,     /* an output's delivery -> one child delivery per sub-output */
    PB_OP_ROUTE,      /* a route delivery -> routed messages and their deliveries */
    PB_OP_ORPHANS,    /* pending deliveries of a removed output -> dead */
    PB_OP_SUBMIT,     /* an input's batch: INGEST items and key-value writes, together */
    PB_OP_KV,         /* key-value writes */
    PB_OP_CLAIM,      /* take unleased pending deliveries of an output into memory */
    PB_OP_RELEASE,    /* give leased deliveries back (memory full) */
    PB_OP_SUB_KILL,   /* pending deliveries of a removed sub-output -> dead */
    PB_OP_INJECT,     /* a message made by the admin side (edited dead letter, test event) */
    PB_OP_KEY,        /* a key a process step remembers (dedupe), claimed for one message */
};

struct pb_op_ingest {
    /* in (borrowed until done_cb) */
    const char *pipeline;
    const char *msg_id; /* caller-made, unique */
    const void *body;
    size_t len;
    const char *content_type; /* may be NULL */
    const char *meta;         /* JSON object text ($meta); NULL = none */
    size_t meta_len;
    int64_t received_at;     /* unix ms */
    const char *idem_key;    /* NULL: no idempotency check; kept with the message */
    int64_t idem_expires_at; /* unix ms */
    size_t noutputs;
    const char *const *outputs;
    int64_t first_due_at; /* next_at for the new deliveries (usually received_at) */
    int64_t lease;        /* the deliveries' lease (pb_store_epoch), 0: none */
    uint64_t unleased;    /* bit i: outputs[i] spilled, its delivery is made unleased */
    /* Set: the message is stored with one DEAD delivery to PB_INPUT_OUTPUT
     * whose last error is this reason, instead of the outputs' deliveries. */
    const char *dead_reason;
    /* out */
    bool duplicate;                 /* idem_key was seen: nothing stored */
    char dup_msg_id[PB_MSG_ID_MAX]; /* the original message id */
    int64_t msg_seq;
    int64_t *delivery_ids; /* caller array of noutputs, filled in output order */
};

struct pb_op_result {
    int64_t delivery_id;
    int attempt;        /* 1-based attempt number */
    int64_t started_at; /* unix ms */
    int64_t latency_ms;
    int status;           /* protocol status (HTTP) or 0 */
    enum pb_dstate state; /* after this attempt: PENDING (retry later), DELIVERED, DEAD, FILTERED */
    int64_t next_at;      /* PENDING: when the next attempt is due */
    const char *error;    /* may be NULL; truncated to PB_ERROR_EXCERPT_MAX */
    /* The partner's answer excerpt: valid UTF-8 text of at most
     * PB_ANSWER_EXCERPT_MAX bytes; NULL when it said nothing. */
    const char *answer;
    size_t answer_len;
    int64_t lease; /* applied only while the delivery holds this lease */
};

struct pb_op_replay {
    int64_t delivery_id; /* in: a DEAD delivery */
    int64_t now;
    /* out */
    int64_t new_delivery_id;
    char pipeline[PB_NAME_MAX_STORE], output[2 * PB_NAME_MAX_STORE];
};

/* Dead deliveries of pipeline (NULL: any), output (NULL: any; else exactly
 * that output, or its sub-output sub) created since, replayed in id order,
 * at most limit (0: PB_REPLAY_ALL_BATCH) per op: submit again while more.
 * With ids set instead, exactly those of ids[0..nids) still dead are
 * replayed (filters, limit and more unused): a set the caller selected
 * with pb_store_read_dead_letters. */
#define PB_REPLAY_ALL_BATCH 1000
struct pb_op_replay_all {
    const char *pipeline;
    const char *output;
    const char *sub;
    int64_t since; /* unix ms; 0 = any */
    int64_t now;
    size_t limit;
    const int64_t *ids; /* borrowed until done_cb */
    size_t nids;
    int64_t count; /* out: replayed by this op */
    bool more;     /* out: there may be more */
};

/* One dead delivery (PB_ENOTFOUND when it is not dead), or with ids set,
 * each of ids[0..nids) still dead (none found is no error): deleted with
 * its attempts, and its message when nothing else refers to it. */
struct pb_op_purge {
    int64_t delivery_id; /* in: a DEAD delivery */
    const int64_t *ids;  /* borrowed until done_cb */
    size_t nids;
    int64_t count; /* out: purged */
};

/* A new message made by the admin side, received now, with one PENDING
 * delivery per target, unleased (the dispatcher is told to page them in).
 * With replaces set, that DEAD delivery becomes REPLAYED in the same
 * transaction: the message takes the pipeline and metadata of the dead
 * one's message and is linked to it (edit_of), its deliveries record
 * replay_of, and no targets means the dead delivery's own output and
 * sub-output. PB_ENOTFOUND (nothing written) when it is not dead. The
 * ordering key the route stage recorded for the old message is kept. */
struct pb_op_inject {
    const char *msg_id; /* caller-made, unique */
    const void *body;
    size_t len;
    const char *content_type; /* NULL = application/json */
    int64_t replaces;         /* a DEAD delivery id, or 0 */
    const char *pipeline;     /* without replaces */
    const char *meta;         /* without replaces: JSON object text or NULL */
    size_t meta_len;
    size_t ntargets;
    const char *const *outputs; /* output names (PB_ROUTE_OUTPUT: the route stage) */
    const char *const *subs;    /* NULL, or per target a sub-output or NULL */
    int64_t now;
    /* out */
    int64_t msg_seq;
    int64_t *delivery_ids; /* caller array: ntargets entries, or 1 without targets */
    /* with replaces: where the dead one was ("output/sub" for a sub-output) */
    char pipeline_out[PB_NAME_MAX_STORE], output_out[2 * PB_NAME_MAX_STORE];
};

struct pb_op_expire {
    int64_t now;
    int64_t retention_ms; /* finished messages older than this are deleted */
    int64_t deleted;      /* out: messages deleted */
};

/* The delivery delivery_id (PENDING, of an output) is finished as
 * DELIVERED with an attempt row saying it fanned out, and one PENDING child
 * delivery per entry of subs is inserted (same message, pipeline and output,
 * that sub-output, next_at = now). n may be 0. */
struct pb_op_fanout {
    int64_t delivery_id;
    int attempt;
    int64_t now;
    int64_t lease; /* of the parent; the children are made with it */
    size_t n;
    const char *const *subs;       /* the children's sub-outputs of the parent's output */
    const unsigned char *unleased; /* NULL, or per child: made unleased (spilled) */
    const char *note;              /* attempt log text, e.g. "fanned out to 3 endpoints" */
    int64_t *child_ids;            /* out: caller array of n, in order */
};

/* One message the route stage decided on: the routed message itself (msg_id
 * NULL: same id, body NULL when the steps left it unchanged) or, after a
 * split, a new message of its own (msg_id set, linked to the routed one,
 * same metadata). It gets a pending delivery per entry of outputs and a
 * final one (final_state, e.g. ROUTED_AWAY or FILTERED, with final_note as
 * its last error) per entry of final_outputs. */
struct pb_route_msg {
    const char *msg_id;
    const void *body;
    size_t len;
    size_t noutputs;
    const char *const *outputs;
    size_t nfinal;
    const char *const *final_outputs;
    enum pb_dstate final_state;
    const char *final_note;
    const char *key;   /* ordering key taken from the message as received, or NULL */
    uint64_t unleased; /* bit i: outputs[i] spilled, its delivery is made unleased */
    /* out */
    int64_t msg_seq;
    int64_t *delivery_ids; /* caller array of noutputs, in order */
};

/* The route delivery delivery_id (PENDING, output PB_ROUTE_OUTPUT, of message
 * msg_seq) is finished in state (DELIVERED, or FILTERED when nothing went
 * on) with an attempt row holding note, and what it decided is inserted.
 * PB_ENOTFOUND (nothing written) when it is no longer pending. */
struct pb_op_route {
    int64_t delivery_id;
    int64_t msg_seq;
    const char *pipeline;
    int attempt;
    int64_t now;
    int64_t lease; /* of the route delivery; the new deliveries are made with it */
    enum pb_dstate state;
    const char *note;
    size_t nmsgs;
    struct pb_route_msg *msgs;
};

/* Every pending delivery of sub-output (pipeline, output, sub) becomes DEAD
 * with reason as its last error and an attempt row saying so. */
struct pb_op_sub_kill {
    const char *pipeline, *output, *sub, *reason;
    int64_t now;
    int64_t dead; /* out */
};

/* Every pending delivery of pipeline/output becomes DEAD with last_error
 * "output removed" and an attempt row saying so. */
struct pb_op_orphans {
    const char *pipeline, *output;
    int64_t now;
    int64_t dead; /* out */
};

struct pb_pending {
    int64_t delivery_id;
    int64_t msg_seq;
    const char *msg_id;
    int attempts;             /* attempts made so far */
    int64_t next_at;          /* unix ms */
    int64_t received_at;      /* unix ms, of the message */
    const char *content_type; /* may be NULL */
    const void *body;         /* the routed body when the route stage changed it */
    size_t len;
    const char *meta; /* JSON object text, or NULL */
    size_t meta_len;
    /* key_known: the route stage recorded the ordering key (key, NULL when
     * unordered) with the routed body or split child. */
    const char *key;
    bool key_known;
    bool body_damaged; /* the body no longer matches the checksum taken at ingest */
};
/* Return 0 to continue, non-zero to stop. Pointers are borrowed for the call. */
typedef int (*pb_pending_cb)(void *arg, const struct pb_pending *row);

/* Up to limit pending deliveries of (pipeline, output, sub) that no live
 * lease holds, in id order, are leased to lease and passed to cb on the
 * writer thread while the op is applied (cb copies what it needs; returning
 * non-zero stops). n: how many. If the transaction then fails (status), the
 * leases were not taken: what cb got must be dropped. */
struct pb_op_claim {
    const char *pipeline, *output, *sub;
    size_t limit;
    int64_t lease;
    pb_pending_cb cb;
    void *arg;
    size_t n; /* out */
};

/* Deliveries ids[0..n) still held by lease are made unleased. */
struct pb_op_release {
    size_t n;
    const int64_t *ids;
    int64_t lease;
};

/* A key-value write: value NULL deletes the key. Borrowed until done_cb. */
struct pb_kv_put {
    const char *scope; /* "input/<pipeline>", "output/<pipeline>/<output>"... */
    const char *key;
    const void *value;
    size_t len;
};

/* Items and key-value writes committed together (an input's batch and its
 * checkpoint): all or nothing. Each item is applied as an INGEST op; an
 * invalid item (PB_EINVAL in its status) fails the whole op, before any
 * write. */
struct pb_op_submit {
    size_t n;
    struct pb_op_ingest *items;
    size_t nkv;
    const struct pb_kv_put *kv;
    int64_t now;
    /* A singleton input's batch: committed only while this node (epoch
     * hold_epoch) holds the hold named (pb_store_hold_want), else nothing
     * is written and status is PB_EDENIED. NULL: no condition. */
    const char *hold;
    int64_t hold_epoch;
};

/* A key a process step remembers for a while (dedupe): claimed for owner
 * unless another owner holds it unexpired. Kept with the idempotency keys
 * (scope in place of the pipeline), so retention drops it once expired. */
#define PB_KEY_OWNER_MAX 64
struct pb_op_key {
    const char *scope; /* "<pipeline>/process[<step>]" */
    const char *key;   /* NUL-terminated text */
    const char *owner; /* the claiming message ("msg_.../<i>") */
    int64_t expires_at, now;
    /* out: owner holds it (it was free, expired, or owner's already), else
     * holder names the one that does */
    bool first;
    char holder[PB_KEY_OWNER_MAX];
};

struct pb_op_kv {
    size_t n;
    const struct pb_kv_put *kv;
    int64_t now;
};

struct pb_op {
    enum pb_op_kind kind;
    int status; /* out: 0, PB_ENOTFOUND (replay/purge), PB_ENOSPACE, PB_ESTORE... */
    union {
        struct pb_op_ingest ingest;
        struct pb_op_result result;
        struct pb_op_replay replay;
        struct pb_op_replay_all replay_all;
        struct pb_op_purge purge;
        struct pb_op_expire expire;
        struct pb_op_fanout fanout;
        struct pb_op_route route;
        struct pb_op_orphans orphans;
        struct pb_op_submit submit;
        struct pb_op_kv kv;
        struct pb_op_claim claim;
        struct pb_op_release release;
        struct pb_op_sub_kill sub_kill;
        struct pb_op_inject inject;
        struct pb_op_key key;
    } u;
    /* Runs on the writer thread once the op is committed or has failed.
     * Must be quick and must not wait for the writer. May be NULL. */
    void (*done_cb)(struct pb_op *op, void *arg);
    void *arg;
    struct pb_op *next; /* internal */
};

int pb_store_start(struct pb_store *s);
/* Queue op; it stays borrowed until its done_cb has run. INGEST and SUBMIT
 * ops are refused with PB_EFULL past ingest_queue_max (done_cb not called);
 * other kinds are always taken. PB_ESHUTDOWN once stopping. */
int pb_store_submit(struct pb_store *s, struct pb_op *op);
/* Submit and block until done (not from the writer thread). Returns op->status. */
int pb_store_exec(struct pb_store *s, struct pb_op *op);
/* Commit everything queued, then stop the writer thread. Idempotent. */
void pb_store_stop(struct pb_store *s);
/* False after a failed commit until a later one succeeds. */
bool pb_store_writable(const struct pb_store *s);
size_t pb_store_queue_depth(const struct pb_store *s);
/* Transactions committed and ops in them since start (for metrics/bench). */
void pb_store_stats(const struct pb_store *s, uint64_t *commits, uint64_t *ops);

/* ---- the cluster --------------------------------------------------------
 *
 * With PostgreSQL several processes share one store, each a node of a
 * cluster: it heartbeats, its leases (pb_store_epoch) hold while it does,
 * and the others take over what it held once it stops. SQLite: one node,
 * this process, whose leases always hold. */

/* What the node learns from the others; called on the store's node thread
 * (quick, never waiting for the store). Any member may be NULL. */
struct pb_store_events {
    void *arg;
    /* Pending deliveries of pipeline/output (output NULL: of any) that no
     * node holds were made or given back: claim them. */
    void (*work)(void *arg, const char *pipeline, const char *output);
    /* Another node changed key (NULL: any key) of scope in the key-value state. */
    void (*kv)(void *arg, const char *scope, const char *key);
    /* The live nodes, or what this node holds, changed. */
    void (*cluster)(void *arg);
    /* The others presumed this node dead (it stopped heartbeating in time)
     * and took over what it held: its leases are gone for good. */
    void (*lost)(void *arg);
};
void pb_store_set_events(struct pb_store *s, const struct pb_store_events *ev);
bool pb_store_clustered(const struct pb_store *s);
/* This node's name (the host name and pid unless configured). */
const char *pb_store_node_name(const struct pb_store *s);
/* Holds are named rows one node of the cluster has at a time (a singleton
 * input, the keys of an ordered pipeline, retention). Say which this node
 * may take (before pb_store_start); it takes its share of those free, as
 * the others leave or die. SQLite: every one is held. */
int pb_store_hold_want(struct pb_store *s, const char *name);
bool pb_store_holds(struct pb_store *s, const char *name);
/* Nodes alive now (1 on SQLite). */
int pb_store_live_nodes(const struct pb_store *s);
/* May this node start attempts on what it holds? False from a little
 * before its leases could have run out (heartbeats not getting through)
 * until a heartbeat gets through again. Cheap; any thread. */
bool pb_store_lease_valid(const struct pb_store *s);
/* Did the last contact with the database succeed? */
bool pb_store_reachable(const struct pb_store *s);

/* The nodes known to the store, for /api/nodes. */
struct pb_node_row {
    const char *name, *version;
    int64_t epoch;
    const char *state;                          /* "live", "left" (shut down), "dead" (presumed) */
    int64_t started_at, heartbeat_at, ended_at; /* unix ms; ended_at 0 while live */
    int64_t leases;                             /* pending deliveries it holds */
    const char *holds;                          /* what it holds, comma-separated */
    bool self;
};
typedef int (*pb_node_cb)(void *arg, const struct pb_node_row *n);
int pb_store_read_nodes(struct pb_store *s, pb_node_cb cb, void *arg, struct pb_err *err);

/* ---- reads ------------------------------------------------------------ */

/* Every key of scope with its value (borrowed for the call); cb returns
 * non-zero to stop. */
typedef int (*pb_kv_cb)(void *arg, const char *key, const void *value, size_t len);
int pb_store_kv_load(struct pb_store *s, const char *scope, pb_kv_cb cb, void *arg,
                     struct pb_err *err);

/* Count deliveries per (pipeline, output, sub, state); cb per non-zero
 * group (sub NULL for the output itself). */
typedef void (*pb_count_cb)(void *arg, const char *pipeline, const char *output, const char *sub,
                            enum pb_dstate state, int64_t count);
int pb_store_count(struct pb_store *s, pb_count_cb cb, void *arg, struct pb_err *err);
/* The same for PENDING deliveries only, through their index: it does not
 * grow with the finished ones kept for `retention`. */
int pb_store_count_pending(struct pb_store *s, pb_count_cb cb, void *arg, struct pb_err *err);
/* The same for DEAD deliveries only (the dead-letter queue's size), through
 * their index. */
int pb_store_count_dead(struct pb_store *s, pb_count_cb cb, void *arg, struct pb_err *err);

/* Rows for the admin API (which builds its JSON from them, src/admin).
 * Strings and bodies are borrowed for the callback; a callback returning
 * non-zero stops the read. Times are unix ms. */
struct pb_message_row {
    int64_t seq;
    const char *id, *pipeline;
    int64_t received_at;
    const char *content_type; /* NULL: application/json */
    const void *body;
    size_t len;
    bool body_damaged; /* no longer matches the checksum taken at ingest */
    const char *meta;  /* $meta JSON text or NULL */
    size_t meta_len;
    const char *parent_id; /* a split child: the message it came from */
    const char *idem_key;  /* the idempotency key its input gave, or NULL */
    const char *edit_of;   /* made by editing a dead letter of this message, or NULL */
    bool routed;           /* the route stage changed the body: */
    const void *routed_body;
    size_t routed_len;
    bool routed_damaged;
};

struct pb_delivery_row {
    int64_t id;
    const char *msg_id, *pipeline, *output;
    const char *sub; /* NULL for the output itself */
    enum pb_dstate state;
    int attempts;
    int64_t next_at, created_at, updated_at;
    bool has_status; /* last_status is set once an attempt ended */
    int last_status;
    const char *last_error; /* NULL when none */
    size_t last_error_len;
    /* The answer of an attempt that ended the delivery at its first try
     * (kept in the delivery's row; NULL otherwise or when none) */
    const char *last_answer;
    size_t last_answer_len;
    int64_t replay_of; /* 0: not a replay */
    /* dead letters read one at a time: the message's body */
    const char *content_type;
    const void *body;
    size_t len;
};

struct pb_attempt_row {
    int n;
    int64_t started_at, latency_ms;
    int status;
    enum pb_dstate state;
    const char *error; /* NULL when none */
    size_t error_len;
    const char *answer; /* the partner's answer excerpt; NULL when none */
    size_t answer_len;
};

struct pb_read_cbs {
    void *arg;
    int (*message)(void *arg, const struct pb_message_row *m);
    int (*child)(void *arg, const char *child_id); /* split children, in order */
    int (*edit)(void *arg, const char *msg_id);    /* messages made by editing it, in order */
    int (*delivery)(void *arg, const struct pb_delivery_row *d);
    int (*attempt)(void *arg, const struct pb_attempt_row *a); /* of the delivery before */
};

/* A message, its split children, and each delivery with its attempts, from
 * one snapshot. PB_ENOTFOUND when absent. */
int pb_store_read_message(struct pb_store *s, const char *msg_id, const struct pb_read_cbs *cb,
                          struct pb_err *err);
/* Which dead letters: every field is a filter, unset (NULL or 0) takes
 * all. output may name a sub-output as "output/sub"; an output takes its
 * sub-outputs' too. Times are when the delivery died. */
struct pb_dead_query {
    const char *pipeline, *output;
    int64_t since, until; /* dead in [since, until) */
    const char *error;    /* last error contains this text (ASCII case-blind) */
    int status;           /* last status, 0: any */
    int64_t after_id;     /* oldest first: ids > after_id */
    int64_t before_id;    /* with newest_first: ids < before_id (0: from the newest) */
    bool newest_first;
    int limit; /* 1.. */
};
/* Dead letters matching q, by id, at most q->limit (delivery rows, without
 * bodies). */
int pb_store_read_dead_letters(struct pb_store *s, const struct pb_dead_query *q,
                               const struct pb_read_cbs *cb, struct pb_err *err);
/* One dead letter (delivery row with the body) and its attempts.
 * PB_ENOTFOUND when there is no such dead delivery. */
int pb_store_read_dead_letter(struct pb_store *s, int64_t delivery_id, const struct pb_read_cbs *cb,
                              struct pb_err *err);

/* Which messages (the message explorer): every field is a filter, unset
 * (NULL, 0, -1 for state) takes all. */
struct pb_msg_query {
    const char *pipeline;
    const char *msg_id;   /* exact */
    const char *idem_key; /* exact, as its input gave it */
    int64_t since, until; /* received in [since, until), unix ms */
    int state;            /* enum pb_dstate: some delivery is in it; -1: any */
    const char *output;   /* some delivery goes to it ("output/sub", or an output with its
                           * sub-outputs); with state, that same delivery is in state */
    /* Cursor: only messages before (received_at, seq) in the order below;
     * 0, 0: from the newest. */
    int64_t before_at, before_seq;
    int limit; /* messages at most, 1.. */
};
/* cb->message may return this to go on without reading the message's
 * deliveries (it is not wanted: a predicate said no). */
#define PB_READ_SKIP 2
/* Messages matching q, newest first (received_at, then seq, descending),
 * at most q->limit, from one snapshot: each message row (with its body and
 * metadata, without the routed body) is followed by its deliveries
 * (cb->delivery, without attempts) unless cb->message returned
 * PB_READ_SKIP; any other non-zero return stops. The rows' seq and
 * received_at make the cursor of the next page. */
int pb_store_search_messages(struct pb_store *s, const struct pb_msg_query *q,
                             const struct pb_read_cbs *cb, struct pb_err *err);

#endif
