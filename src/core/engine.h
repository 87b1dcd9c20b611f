/* engine.h - the core's internal types: configuration as decoded, pipelines,
 * outputs, messages, metrics, and the threads that move data between them.
 *
 * Data flow:
 *   HTTP ingest (libmicrohttpd threads) -> pb_store writer (group commit)
 *     -> dispatcher thread (per-output queues, retries, jq, plugins, curl multi)
 *     -> delivery results -> pb_store writer.
 * A message body is immutable once committed and shared, reference-counted,
 * by the deliveries that hold it. */
#ifndef PB_ENGINE_H
#define PB_ENGINE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "patchbay/pb_conf.h"
#include "patchbay/pb_http.h"
#include "patchbay/pb_jq.h"
#include "patchbay/pb_plugin.h"
#include "patchbay/pb_time.h"
#include "core/retry.h"
#include "core/flow.h"
#include "core/route.h"
#include "core/sched.h"
#include "store/pb_store.h"

#define PB_NAME_MAX 128

/* ---- configuration --------------------------------------------------------- */

struct pb_server_conf {
    char *listen;
    char *admin_token; /* secret */
    int64_t max_connections;
    int64_t threads;
    int64_t connection_timeout_ms;
    bool ui; /* serve the dashboard under /ui */
};

struct pb_limits_conf {
    int64_t ingest_queue;       /* ingest requests waiting for commit before 503 */
    int64_t in_memory;          /* deliveries held in memory per output */
    int64_t max_inflight_bytes; /* request bodies being received + waiting for commit */
};

struct pb_outbound_conf {
    struct pb_strlist allow;
};

/* cluster: this process as a node of a shared (PostgreSQL) state store. */
struct pb_cluster_conf {
    char *node; /* NULL: host name and pid */
    int64_t lease_ms, heartbeat_ms;
};
extern const struct pb_field pb__cluster_fields[];
struct pb_node;
struct pb_config;
/* config_cluster.c: 0, or PB_ECONFIG with e set at the section. */
int pb__config_check_cluster(const struct pb_config *c, const struct pb_node *root,
                             struct pb_err *e);

struct pb_config {
    struct pb_conf_doc *doc;
    char *path;
    bool once; /* loaded for `run --once` */
    struct pb_server_conf server;
    char *state;
    struct pb_outbound_conf outbound;
    struct pb_limits_conf limits;
    struct pb_cluster_conf cluster;
    int64_t retention_ms;
    int64_t shutdown_timeout_ms;
    const struct pb_node *pipelines_node;
    size_t npipelines;
    struct pb_pipeline *pipelines;
    struct pb_mock *mock; /* `patchbay test`: what processors ask instead of connecting */
};

/* Options every output block carries besides its plugin's own. */
struct pb_retry_conf {
    int64_t max_attempts, initial, max, max_age;
    const struct pb_node *schedule; /* "svix", "exponential" or a list of durations */
};
struct pb_output_common {
    char *map;
    struct pb_retry_conf retry;
    const struct pb_node *concurrency_node; /* a number or "adaptive" */
    int64_t max_concurrency;
    const struct pb_node *rate_limit_node; /* "100/s" or {rate, key, max_keys} */
    const struct pb_node *breaker_node;    /* circuit_breaker: {...} */
    struct pb_outbound_conf outbound;
    /* As config_flow.c reads them from the nodes: */
    int64_t concurrency; /* 0: the plugin's default */
    bool adaptive;
    struct pb_rate rate_limit;
    char *rate_key; /* jq: one bucket per key */
    int64_t rate_max_keys;
    struct pb_flow_conf flow;
    char *events_pipeline; /* the breaker's opened/closed events go there */
};

struct pb_dl;
struct pb_kv_entry {
    struct pb_kv_entry *next;
    char *key;
    char *value; /* len bytes + NUL */
    size_t len;
};
struct pb_template;
struct pb_workers;

/* Histogram with fixed bucket bounds in seconds. */
#define PB_HIST_BUCKETS 14
struct pb_hist {
    _Atomic uint64_t counts[PB_HIST_BUCKETS + 1]; /* last = +Inf */
    _Atomic uint64_t sum_us;
    _Atomic uint64_t total;
};
void pb_hist_observe(struct pb_hist *h, int64_t us);

struct pb_output {
    char *name;
    size_t index;
    struct pb_pipeline *pl;
    const struct pb_output_plugin *plugin;
    void *ctx;
    bool ctx_ready; /* init succeeded */
    struct pb_output_common common;
    struct pb_retry_policy policy;
    int64_t *schedule_owned; /* explicit retry.schedule list */
    struct pb_allowlist *allow;
    struct pb_jq *map_jq;       /* dispatcher thread only */
    struct pb_jq *rate_key_jq;  /* rate_limit.key (dispatcher thread only) */
    struct pb_output_env env;   /* as init left it (batch, timeout) */
    struct pb_template **tmpls; /* template fields (dispatcher thread) */
    size_t ntmpls;
    bool uses_meta; /* its map or a template field names $meta */

    /* Life cycle (dispatcher thread, except state, detail under slock). */
    struct pb_dispatcher *disp; /* set when the dispatcher is created */
    struct pb_workers *workers; /* plugin->workers threads, from start to stop */
    bool started;               /* start succeeded: attempts may begin */
    bool starting;              /* a start is under way (on a worker) */
    int64_t start_retry_ms;
    int64_t start_again_at; /* unix ms; 0: not waiting */
    _Atomic int state;      /* enum pb_output_state */
    pthread_mutex_t slock;
    char *detail;
    int64_t batch_since; /* unix ms the oldest ready delivery waits for a batch */

    /* Webhook fan-out: a webhook output owns one virtual output per endpoint,
     * named "<output>/<endpoint id>", created by the dispatcher. A virtual
     * output shares its parent's pipeline, map, policy and allowlist, and is
     * never freed before the engine stops (a deleted endpoint is "gone"). */
    bool is_virtual;
    const char *sub;        /* a virtual output's id (within name), else NULL */
    bool gone;              /* a removed sub-output, freed once nothing of it is in flight */
    struct pb_kv_entry *kv; /* its state as loaded for start (suboutput.c) */
    bool is_route;          /* the pipeline's route stage (PB_ROUTE_OUTPUT) */
    struct pb_output *parent;
    pthread_mutex_t vlock; /* guards vouts/nvouts for readers off the dispatcher */
    struct pb_output **vouts;
    size_t nvouts, vcap;

    /* dispatcher state (dispatcher thread only) */
    struct pb_sched_q sq; /* ready queue, keys, concurrency, rate, pause */
    struct pb_flow flow;  /* holds, pace, breaker, adaptive concurrency */
    size_t inmem;         /* deliveries of this output held in memory */
    /* The store holds pending deliveries of this output not in memory (read
     * by any thread: what is made while it is set is made unleased). */
    atomic_bool spilled;
    /* Bumped by any thread that leaves pending deliveries of this output in
     * the store unleased or released: a claim begun before the bump may not
     * have seen them, so it does not end the spill (pagein.c). */
    _Atomic uint64_t store_gen;
    bool claiming;         /* a CLAIM of this output is on its way */
    uint64_t claim_gen;    /* store_gen when that claim was submitted */
    uint64_t gen_seen;     /* store_gen the last page-in decision saw */
    int64_t load_after;    /* unix ms before which no store page-in is tried */
    int64_t faillog_since; /* failed-attempt log lines: window start, count, left out */
    unsigned faillog_n;
    uint64_t faillog_dropped;

    /* metrics */
    _Atomic uint64_t delivered, retried, dead, filtered, routed_away, attempts;
    _Atomic int64_t backlog; /* committed pending deliveries */
    _Atomic int64_t inflight_gauge;
    struct pb_hist latency;
    /* flow control as the dispatcher last left it, for readers */
    _Atomic int breaker_state;
    _Atomic uint64_t breaker_opened_total, throttled_total, not_sent_total;
    _Atomic int64_t concurrency_gauge, pace_mrps, hold_until;
};

struct pb_pipeline {
    char *name;
    size_t index;
    const struct pb_node *node;
    struct pb_input *in;
    char *ordering_key;
    struct pb_jq *key_jq; /* dispatcher thread only */
    /* In a cluster, an ordered pipeline's deliveries are claimed only by the
     * node holding "ordered/<pipeline>", so a key has one owner at a time
     * (pagein.c); empty otherwise. Set before the store starts. */
    char order_hold[PB_NAME_MAX + 16];
    size_t nprocs;
    struct pb_route_step *procs;
    size_t nouts;
    struct pb_output *outs;
    const char **out_names; /* in configuration order */
    /* Where an ingest commit creates deliveries: the route stage when the
     * pipeline has process steps, else every output. */
    bool routes;
    struct pb_output router; /* the route stage, when routes */
    size_t ningest;
    struct pb_output **ingest_outs;
    const char **ingest_names;

    _Atomic uint64_t received, accepted, duplicates, dead_on_arrival;
    _Atomic uint64_t rejected[PB_REJECT_COUNT];
    _Atomic uint64_t verify_failed[PB_VERIFY_REASON_COUNT];
    struct pb_hist ingest_latency;
};

/* Decode and validate a whole configuration: plugins resolved, their blocks
 * decoded and initialised, jq programs compiled. http is the client outputs
 * will use (borrowed; NULL for lint). NULL + err (file:line:col) on the
 * first error. */
struct pb_config *pb_config_load(const char *path, struct pb_http_client *http, struct pb_err *err);

/* What lint shows: every error (each pipeline is checked) and the warnings,
 * formatted "file:line:col: message" / "file:line:col: warning: message". */
#define PB_DIAG_MAX 100
struct pb_diag {
    size_t nerr, nwarn, dropped;
    char *err[PB_DIAG_MAX];
    char *warn[PB_DIAG_MAX];
};
void pb_diag_free(struct pb_diag *d);
/* pb_config_load collecting into diag (may be NULL); err gets the first. */
struct pb_config *pb_config_load_diag(const char *path, struct pb_http_client *http, bool once,
                                      struct pb_diag *diag, struct pb_err *err);
/* For `patchbay test`: no HTTP client, and every processor gets mock
 * (borrowed: it outlives the configuration) in its env. */
struct pb_config *pb_config_load_test(const char *path, struct pb_mock *mock, struct pb_diag *diag,
                                      struct pb_err *err);
void pb_config_destroy(struct pb_config *c);

/* ---- messages ------------------------------------------------------------------ */

struct pb_msg {
    _Atomic int refs;
    int64_t seq;
    int64_t received_at; /* unix ms */
    char id[PB_MSG_ID_MAX];
    char *content_type; /* NULL = application/json */
    char *meta;         /* $meta as JSON object text; NULL = none */
    size_t meta_len;
    /* The ordering key, when the route stage took it from the message as
     * received (okey_known; NULL okey: unordered). Otherwise the body's. */
    char *okey;
    bool okey_known;
    bool damaged; /* read back from the store not matching its checksum */
    size_t len;
    char body[]; /* len bytes + NUL */
};

/* Copies body; refs = 1. NULL on ENOMEM. */
struct pb_msg *pb_msg_create(const void *body, size_t len, const char *content_type);
/* Copy meta (JSON object text) into m, before m is shared. 0 or PB_ENOMEM. */
int pb_msg_set_meta(struct pb_msg *m, const char *meta, size_t len);
struct pb_msg *pb_msg_ref(struct pb_msg *m);
void pb_msg_unref(struct pb_msg *m);
/* "msg_" + 26-character ULID into buf (>= 31 bytes). Thread-safe. */
void pb_msg_new_id(char *buf, int64_t now_ms);

/* ---- engine ---------------------------------------------------------------------------- */

struct pb_dispatcher;
struct pb_httpd;
struct pb_loop;
struct pb_workers;
struct pb_engine_history;
struct pb_tail;

struct pb_engine {
    struct pb_config *cfg;
    struct pb_store *store;
    struct pb_dispatcher *disp;
    struct pb_httpd *httpd;
    struct pb_workers *workers; /* blocking work off the event threads: admin requests */
    struct pb_loop *input_loop; /* inputs without a thread of their own (thread pb-inputs) */
    pthread_t input_thread;
    bool input_thread_running;
    bool once; /* run --once */
    atomic_bool stopping;
    atomic_bool ready;
    int64_t started_at;
    struct pb_engine_history *history; /* the last hour of counters (history.c) */
    struct pb_tail *tail;              /* the live tail (tail.c) */
    void *admin;                       /* the admin side's own state (src/admin) */
};

struct pb_pipeline *pb_engine_pipeline(struct pb_engine *e, const char *name);
/* cluster.c: take the store's news of the other nodes (after the
 * dispatcher is created), and stop taking it (before it is destroyed). */
void pb__engine_cluster_start(struct pb_engine *e);
void pb__engine_cluster_stop(struct pb_engine *e);
/* Shared key-value state followed across the cluster (cluster_kv.c). */
int pb__cluster_kv_start(struct pb_engine *e);
void pb__cluster_kv_stop(void);
void pb__cluster_kv_event(void *arg, const char *scope, const char *key);
/* Another node published the flow state of key (cluster_flow.c): read it
 * and have the dispatcher follow it. Blocks on the store. */
void pb__cluster_flow_changed(struct pb_engine *e, const char *key);
struct pb_output *pb_pipeline_output(struct pb_pipeline *pl, const char *name);

/* Dispatcher (src/core/dispatch.c). */
struct pb_dispatcher *pb_dispatcher_create(struct pb_engine *e, struct pb_err *err);
int pb_dispatcher_start(struct pb_dispatcher *d);
/* Stop starting attempts; wait up to timeout for attempts in flight; join. */
void pb_dispatcher_stop(struct pb_dispatcher *d, int64_t timeout_ms);
void pb_dispatcher_destroy(struct pb_dispatcher *d);
/* After an ingest commit (writer thread): hand the new deliveries over.
 * Takes a reference to msg per delivery. */
void pb_dispatcher_post_new(struct pb_dispatcher *d, struct pb_pipeline *pl, struct pb_msg *msg,
                            const int64_t *delivery_ids, uint64_t unleased);
/* The store gained pending deliveries for out that were never posted
 * (replays): page them in from the store. Any thread. */
void pb_dispatcher_notify_store(struct pb_dispatcher *d, struct pb_output *out);
bool pb_dispatcher_running(const struct pb_dispatcher *d);

/* Internal ingest: commit body as a new message of pipeline and deliver it
 * like any other (used for endpoint.disabled events). Any thread. */
int pb_dispatcher_emit(struct pb_dispatcher *d, const char *pipeline, const char *body);
/* Hand over deliveries committed by a fan-out (syncer thread). */
void pb_dispatcher_post_children(struct pb_dispatcher *d, struct pb_msg *msg,
                                 struct pb_output *const *outs, const int64_t *ids,
                                 const unsigned char *unleased, size_t n);

/* inject.c: the store gained n pending deliveries of (pipeline, output)
 * that were never posted (replays, injected messages), output being an
 * output, "output/sub" or the route stage: its backlog grows and the
 * dispatcher pages them in. False when there is no such output now. Any
 * thread. */
bool pb_engine_store_gained(struct pb_engine *e, const char *pipeline, const char *output,
                            int64_t n);
/* Commit op (filled as a PB_OP_INJECT) and hand its deliveries over the same
 * way. Blocks until committed: admin workers only. Returns op->status. */
int pb_engine_inject(struct pb_engine *e, struct pb_op *op);

/* Every output of a pipeline, virtual ones included, for readers such as
 * metrics and the admin API: calls fn for each under the parent's lock. */
void pb_pipeline_each_output(struct pb_pipeline *pl, void (*fn)(struct pb_output *o, void *arg),
                             void *arg);

/* config_server.c: the fields of the server block. */
extern const struct pb_field pb__server_fields[];
/* config_flow.c: concurrency, rate_limit and circuit_breaker of o, from
 * their nodes; the breakers' events_pipeline name pipelines of c. */
int pb__output_flow_load(struct pb_output *o, struct pb_err *err);
int pb__config_check_events(struct pb_config *c, struct pb_err *err);

/* output.c */
int pb__output_init(struct pb_output *o, struct pb_http_client *http, struct pb_err *err);
void pb__output_cleanup(struct pb_output *o);
const char *pb__output_state_name(enum pb_output_state s);
void pb__output_detail(struct pb_output *o, char *buf, size_t len);

/* suboutput.c */
int pb__output_kv_load(struct pb_output *o, struct pb_store *store, struct pb_err *err);
void pb__output_kv_drop(struct pb_output *o);
void pb__sub_free(struct pb_output *v);

/* Metrics (src/core/metrics.c): Prometheus text into a malloc'd buffer. */
char *pb_metrics_render(struct pb_engine *e, size_t *len);

/* Run the daemon until SIGTERM/SIGINT. Returns the process exit code.
 * On SIGHUP a valid new configuration is applied by draining like SIGTERM
 * and re-executing argv in place, handing the listening socket over; an
 * invalid one is reported and the daemon goes on as it was. */
/* Does c deliver to pipeline/output: one of its outputs, its route stage,
 * or an endpoint ("<webhook output>/<id>") of one of its webhook outputs? */
bool pb_config_output_known(const struct pb_config *c, const char *pipeline, const char *output);

struct pb_run_opts {
    const char *config_path;
    char **argv; /* re-executed on reload */
    /* Pending deliveries of outputs the configuration no longer has are
     * dead-lettered ("output removed") instead of refusing to start or reload. */
    bool force;
    bool once; /* finite inputs, then exit once everything is delivered */
    /* Adds the routes of the admin side (/health, /api...) to e->httpd. */
    int (*attach)(struct pb_engine *e, struct pb_err *err);
    /* Optional. quiesce: stopping has begun, before the listener drains
     * (answer the requests the admin side holds); detach: the listener and
     * the workers are gone (free what attach made). */
    void (*quiesce)(struct pb_engine *e);
    void (*detach)(struct pb_engine *e);
};
int pb_engine_run(const struct pb_run_opts *o);
/* `patchbay migrate CONFIG`: apply the state store's schema migrations
 * (migrate.c). 0, or 1 with the reason on stderr. */
int pb_engine_migrate(const char *config_path);

#endif
