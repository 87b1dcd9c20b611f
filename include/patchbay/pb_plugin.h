/* pb_plugin.h - what an input, processor or output plugin implements.
 *
 * A plugin is one C file (or folder) that defines one const struct of
 * function pointers and a pb_field table, listed once in
 * src/plugins/registry.c. The core allocates a zeroed context of ctx_size
 * bytes, decodes the plugin's YAML block into it with the field table
 * (offsets are into the context), then calls init. destroy must cope with a
 * context whose init failed half way; the core frees decoded fields after. */
#ifndef PB_PLUGIN_H
#define PB_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jv.h>

#include "pb_conf.h"
#include "pb_err.h"
#include "pb_http.h"
#include "pb_loop.h"
#include "pb_server.h"

/* ---- outputs ------------------------------------------------------------- */

/* Delivery results are not error codes: they say what happens next. */
enum pb_result {
    PB_RESULT_OK = 0,    /* delivered */
    PB_RESULT_RETRY,     /* try again later (per the retry policy) */
    PB_RESULT_PERMANENT, /* never going to work: dead-letter now */
};
const char *pb_result_name(enum pb_result r);
/* The one place HTTP statuses are classified (src/core/retry.c): 2xx OK;
 * 408, 425, 429, 5xx and 0 (no response) RETRY; everything else PERMANENT. */
enum pb_result pb_classify_http(int status);

/* Bytes of a partner's answer kept per attempt (pb_outcome.answer). */
#define PB_ANSWER_EXCERPT_MAX 256

/* One attempt of one delivery. Borrowed by the plugin from deliver() until it
 * calls pb_delivery_done(). */
struct pb_delivery {
    int64_t id;                  /* delivery id */
    const char *msg_id;          /* message id */
    const char *idempotency_key; /* stable across retries and restarts */
    int attempt;                 /* 1-based */
    const char *payload;         /* bytes to send (after the output's map) */
    size_t len;
    const char *content_type; /* "application/json" unless the input said otherwise */
    const char *meta;         /* $meta, JSON object text */
    size_t meta_len;
    const char *sub;     /* the sub-output it is for (a webhook endpoint), or NULL */
    int64_t deadline_ms; /* unix ms by which the attempt should end (attempt_timeout) */
    /* The output's template fields rendered on the message as it reached
     * the output, in the order init registered them (template_add). */
    const char *const *tmpl;
    size_t ntmpl;
    /* W3C trace context of this attempt: the message's trace with a span id
     * of the attempt's own (55 characters), and the message's tracestate or
     * NULL. Send them as the traceparent / tracestate headers where the
     * protocol has headers. */
    const char *traceparent;
    const char *tracestate;
    void *core; /* internal */
};

struct pb_outcome {
    enum pb_result result;
    int status;             /* protocol status (HTTP, SMTP...) or 0 */
    int64_t retry_after_ms; /* partner asked to wait this long; -1 when not */
    const char *error;      /* short text for the attempt log; copied; may be NULL */
    /* What the partner answered, whatever the result (an HTTP response
     * body, a server's reply line, a broker's acknowledgement): the core
     * keeps a printable excerpt of its first PB_ANSWER_EXCERPT_MAX bytes in
     * the attempt log. Copied; NULL or empty: nothing. Never a header or
     * anything else that may hold a secret. */
    const char *answer;
    size_t answer_len;
    /* Flow control; left zero, they say nothing. */
    /* The partner was not asked (no credentials yet: the token endpoint is
     * failing): no attempt is spent or recorded; the delivery, and the
     * output with it, waits retry_after_ms (>= 0) and goes again. */
    bool not_sent;
    /* The partner refused for rate (HTTP 429): the whole output slows
     * down and paces itself; the attempt is recorded but does not count
     * toward max_attempts. */
    bool throttled;
    /* What the answer said of the partner's rate limit (any result). */
    struct pb_rate_info rate;
};

/* The outcome of an HTTP attempt (src/core/retry.c): classified status, the
 * partner's Retry-After and rate-limit headers (throttled on 429), the
 * response body as the answer (borrowed from resp), and an error text ("HTTP 503: <printable
 * excerpt of the answer>", or the transport error) written into buf. A request refused by the
 * outbound guard is PERMANENT: retrying cannot make it allowed. */
void pb_outcome_from_http(const struct pb_http_resp *resp, struct pb_outcome *o, char *buf,
                          size_t len);

/* End an attempt: exactly once per delivery handed over, from any thread,
 * possibly from inside deliver(). d must not be used afterwards. */
void pb_delivery_done(struct pb_delivery *d, const struct pb_outcome *o);

/* The core's side of one running output. */
struct pb_output;

struct pb_output_env {
    const char *pipeline;
    const char *output;
    struct pb_http_client *http;      /* the shared async client (dispatcher loop); NULL in lint */
    const struct pb_allowlist *allow; /* outbound guard for this output */
    /* Register a template field: a string whose {{ JQ }} parts are evaluated
     * on each message as it reaches the output ("review.{{ .order_id }}").
     * Returns its index in pb_delivery.tmpl, or a negative code with err (a
     * part that does not compile). A part that yields anything but a string
     * or a number fails that delivery into the dead-letter queue. */
    int (*template_add)(struct pb_output_env *env, const char *text, struct pb_err *err);
    void *core;
    /* Set by init when they apply: */
    size_t batch_max;           /* deliver_batch: deliveries per call (default 100) */
    int64_t batch_period_ms;    /* wait up to this long for a batch to fill (default 0) */
    int64_t attempt_timeout_ms; /* pb_delivery.deadline_ms = start + this (default 30 s) */
};

enum pb_output_state {
    PB_OUTPUT_STARTING = 0,
    PB_OUTPUT_CONNECTED,
    PB_OUTPUT_RECONNECTING, /* lost its partner; deliveries fail and retry meanwhile */
    PB_OUTPUT_STOPPED,
};

struct pb_output_plugin {
    const char *name;
    const struct pb_field *fields;
    size_t ctx_size;
    int default_concurrency; /* deliveries in flight per output unless configured */
    /* > 0: start, deliver, deliver_batch and stop run on this many threads
     * of the output's own (client libraries that block), not on the
     * dispatcher's loop. */
    unsigned workers;
    /* Validate and prepare; no I/O (lint and reload call it). */
    int (*init)(void *ctx, struct pb_output_env *env, struct pb_err *err);
    /* Connect. Deliveries wait until it succeeds; a failure is logged and
     * start is tried again with backoff. NULL: nothing to do. */
    int (*start)(void *ctx, struct pb_output *out, struct pb_err *err);
    /* One delivery, or (when set) a batch: each ends with pb_delivery_done,
     * with its own outcome. The array is borrowed for the call only. */
    void (*deliver)(void *ctx, struct pb_delivery *d);
    void (*deliver_batch)(void *ctx, struct pb_delivery **d, size_t n);
    /* No more deliveries come; finish or fail what is in flight. */
    void (*stop)(void *ctx);
    /* Must cope with a context whose init or start failed half way. */
    void (*destroy)(void *ctx);
    /* Admin routes of the plugin: requests to /api/<admin_path> and below,
     * after the admin token was checked, on a worker thread (it may block,
     * and read or write the store). outs: every output of this plugin, in
     * configuration order. Answer with pb_http_respond(). */
    const char *admin_path;
    void (*admin)(struct pb_output *const *outs, size_t n, struct pb_http_request *r);
    /* Another node of the cluster (state on PostgreSQL) wrote key of this
     * output's state (pb_output_kv_put): value (len bytes, borrowed for the
     * call) is what the store holds now, NULL when the key was deleted.
     * key NULL: any key may have changed (value NULL too); read them again
     * with pb_output_kv_get_all. Called on a thread of its own, one call at
     * a time, from init's success on (a change that comes before start has
     * read the state is the plugin's to ignore: start reads it anyway); it
     * may block. NULL: the output keeps what it read at start. */
    void (*kv_changed)(void *ctx, struct pb_output *out, const char *key, const void *value,
                       size_t len);
};

/* For a started output. Any thread unless said otherwise. */
struct pb_loop *pb_output_loop(struct pb_output *o); /* the dispatcher's */
const char *pb_output_name(const struct pb_output *o);
const char *pb_output_pipeline(const struct pb_output *o);
void *pb_output_ctx(struct pb_output *o); /* the plugin's context */
/* The outbound guard of this output (for clients other than env->http). */
const struct pb_allowlist *pb_output_allow(const struct pb_output *o);
/* What /ready, /api/pipelines and patchbay_output_connected show. detail
 * (copied, may be NULL): the last connection error. */
void pb_output_set_state(struct pb_output *o, enum pb_output_state state, const char *detail);

/* ---- sub-outputs, state, events -------------------------------------------
 *
 * A sub-output is a named part of an output (a webhook endpoint) with a
 * queue, retries, rate limit, pause and dead letters of its own. Its
 * deliveries come to the output's deliver() with d->sub set. A delivery of
 * the output itself can be fanned out to sub-outputs. */

#define PB_SUB_ID_MAX 64 /* bytes, NUL included: letters, digits, '-' and '_' */
struct pb_sub_opts {
    struct pb_rate rate_limit; /* {0, 0}: none */
    bool paused;               /* deliveries wait (kept, pending) until unpaused */
};
/* Add a sub-output, or change one. Any thread: applied on the dispatcher's
 * loop. PB_EINVAL for a bad id. */
int pb_output_sub_set(struct pb_output *o, const char *id, const struct pb_sub_opts *opts);
/* Remove a sub-output: nothing more goes to it, its pending deliveries go to
 * the dead-letter queue with reason (*dead of them), and it is freed once
 * its attempts in flight have ended. Blocks until that is committed: not on
 * the dispatcher's loop. */
int pb_output_sub_remove(struct pb_output *o, const char *id, const char *reason, int64_t *dead);
bool pb_output_sub_exists(struct pb_output *o, const char *id);
/* Replay the dead letters of sub-output id created at or after since (unix
 * ms): *count of them. Blocks: not on the dispatcher's loop. */
int pb_output_sub_recover(struct pb_output *o, const char *id, int64_t since, int64_t *count);
/* End d, a delivery of the output itself, by handing it to subs: one new
 * delivery per sub-output, committed with d's end, each with its own
 * attempts (none: d ends with nothing to do). note (copied) is what d's
 * attempt log says. Any thread. */
void pb_delivery_fanout(struct pb_delivery *d, const char *const *subs, size_t n, const char *note);

/* The output's own state, kept in the state store (per output: keys are the
 * plugin's). The keys as they were when the output started, for start to
 * read: fn returns non-zero to stop. */
typedef int (*pb_kv_fn)(void *arg, const char *key, const void *value, size_t len);
int pb_output_kv_each(struct pb_output *o, pb_kv_fn fn, void *arg);
/* Every key as the store holds it now (not the copy read at start). Blocks:
 * not on the dispatcher's loop. 0 or the store's error. */
int pb_output_kv_get_all(struct pb_output *o, pb_kv_fn fn, void *arg);
/* Write key (value NULL deletes it) and wait for the commit: not on the
 * dispatcher's loop. 0 or the store's error. */
int pb_output_kv_put_wait(struct pb_output *o, const char *key, const void *value, size_t len);
/* The same without waiting: done (may be NULL) runs on the dispatcher's
 * loop once committed or failed. If the call fails, done never runs. */
int pb_output_kv_put(struct pb_output *o, const char *key, const void *value, size_t len,
                     void (*done)(void *arg, int status), void *arg);
/* A new message of o's pipeline whose only delivery goes to sub-output sub
 * (a webhook endpoint's test event): json is its body, its $meta says it is
 * a test. Committed, then attempted like any other delivery (through the
 * output's map, with retries, recorded); its id into msg_id. Blocks until
 * committed: not on the dispatcher's loop. PB_ENOTFOUND without such a
 * sub-output. */
int pb_output_sub_send(struct pb_output *o, const char *sub, const char *json, size_t len,
                       char *msg_id, size_t id_len);
/* An event: a JSON message into another pipeline, committed like any input's
 * (its input's idempotency rules do not apply). Any thread. */
int pb_output_emit(struct pb_output *o, const char *pipeline, const char *json, size_t len);

/* ---- processors ------------------------------------------------------------ */

/* Processors run in the route stage, once per message (DESIGN semantics 9):
 * the pipeline's steps in order, each taking one message and passing on 0..N
 * messages, each with the set of outputs it still goes to. What the last step
 * passes on, and the outputs chosen, is committed before any delivery starts. */

/* A pipeline has at most this many outputs, so a set of them is a bit mask
 * (bit i: the i-th output in configuration order). */
#define PB_MAX_OUTPUTS 64
typedef uint64_t pb_outset;

/* One message going through a step (core-owned; valid during process()). */
struct pb_proc_io;

/* The message's metadata as jq sees it ($meta); borrowed, do not free. */
jv pb_proc_meta(const struct pb_proc_io *io);
/* The outputs the message goes to when it reached this step. */
pb_outset pb_proc_outputs(const struct pb_proc_io *io);
/* Pass body (ownership taken) on to the next step, going to outputs. Emitting
 * nothing drops the message on purpose (a filter). PB_ETOOBIG past the
 * pipeline's bound on messages made from one (the body is freed). */
int pb_proc_emit(struct pb_proc_io *io, jv body, pb_outset outputs);
/* Mark the messages emitted by this step as new messages of their own (each
 * with its own id, linked to the one it came from), as `split` does. Without
 * it an emitted message is the same message, changed. */
void pb_proc_new_messages(struct pb_proc_io *io);

/* A step that waits for I/O (an HTTP lookup) must not block: the route
 * stage runs on the dispatcher's thread, and a blocking call there stalls
 * every output. It parks the message instead: process() calls
 * pb_proc_park(io), starts its I/O (on env->http, whose callbacks run on
 * that same thread) and returns 0 having emitted nothing; the message stays
 * in flight (its ordering key busy) meanwhile. When the I/O is done it
 * emits into pb_proc_wait_io(w) as process() would, then calls
 * pb_proc_resume(w, rc, err) exactly once: rc 0 goes on with the next step,
 * PB_EAGAIN routes the message again later (backoff, until the route
 * stage's max_age), any other negative code dead-letters it with err.
 * Both on the thread process() ran on; resuming from inside process() is
 * allowed (a request that could not start). */
struct pb_proc_wait;
/* NULL when this run cannot wait (a caller without a route stage): then
 * finish in process() or fail. */
struct pb_proc_wait *pb_proc_park(struct pb_proc_io *io);
struct pb_proc_io *pb_proc_wait_io(struct pb_proc_wait *w);
void pb_proc_resume(struct pb_proc_wait *w, int rc, const struct pb_err *err);
/* Keys a step remembers across messages (dedupe). The message claims key
 * for window_ms: it holds the key if no other message does (unexpired);
 * a run repeated for the same message (a restart before its decision was
 * committed) finds the key its own. Durable and shared by a cluster's
 * nodes (kept in the state store); in memory under `patchbay test`. The
 * message is parked meanwhile; done runs on process()'s thread, perhaps
 * before pb_proc_key_claim returns, with rc 0 and first (the message holds
 * the key; else holder names the message that does), or rc < 0 (the store
 * failed: resume with PB_EAGAIN to route it again later). done emits into
 * pb_proc_wait_io(w) as process() would and calls pb_proc_resume(w, ...)
 * once. Returns 0, or a negative code with err (nothing parked: fail). */
#define PB_PROC_KEY_MAX 512
typedef void (*pb_proc_key_done)(struct pb_proc_wait *w, int rc, bool first, const char *holder,
                                 void *arg);
int pb_proc_key_claim(struct pb_proc_io *io, const char *key, int64_t window_ms,
                      pb_proc_key_done done, void *arg, struct pb_err *err);
/* Mocked answers (`patchbay test`). Under `patchbay test` nothing connects
 * anywhere: a processor that would reach out (enrich's HTTP lookup) finds
 * env->mock set at init, keeps it, and in process() asks it for the answer
 * the test case gives instead of sending its request. Outside tests
 * env->mock is NULL and the processor does its I/O. */
struct pb_mock;
/* The answer to req (which is not sent) from the answers a test case gives
 * for plugin (the processor's name): the case matches on req's method, url,
 * headers and body and on key (the lookup key as text; may be NULL). 0 with
 * *resp filled (its strings valid until process() returns), or
 * PB_ENOTFOUND when no answer matches, with err saying what was asked: fail
 * the message with it (the test shows the reason). Thread of process(). */
int pb_mock_http(struct pb_mock *m, const char *plugin, const char *key,
                 const struct pb_http_req *req, struct pb_http_resp *resp, struct pb_err *err);

struct pb_proc_env {
    const char *pipeline;
    size_t noutputs;            /* <= PB_MAX_OUTPUTS */
    const char *const *outputs; /* names, in configuration order */
    /* The dispatcher's async HTTP client (its callbacks run on the thread
     * process() runs on); NULL in lint. */
    struct pb_http_client *http;
    const struct pb_allowlist *allow; /* the top-level outbound.allow */
    struct pb_mock *mock; /* set under `patchbay test` only (above); outlives the context */
};

struct pb_processor_plugin {
    const char *name;
    const struct pb_field *fields;
    /* When set, a scalar block ("map: '.a'") is stored as a char * at
     * scalar_offset instead of being decoded with fields. */
    bool scalar_form;
    size_t scalar_offset;
    /* When set, a sequence block ("switch: [...]") is stored as the
     * const struct pb_node * at node_offset, borrowed from the document. */
    bool seq_form;
    size_t node_offset;
    size_t ctx_size;
    /* Validate and prepare; no I/O. env is borrowed for the call. */
    int (*init)(void *ctx, const struct pb_proc_env *env, struct pb_err *err);
    /* Takes ownership of in. Returns 0 (having emitted 0..N messages) or a
     * negative PB_E* with a reason in err, which dead-letters the message.
     * Called from one thread per context. */
    int (*process)(void *ctx, struct pb_proc_io *io, jv in, struct pb_err *err);
    void (*destroy)(void *ctx);
};

/* ---- inputs ------------------------------------------------------------------- */

/* Why a request failed verification: a fixed set, so metrics stay bounded. */
enum pb_verify_reason {
    PB_VERIFY_MISSING = 0, /* signature/credential header absent */
    PB_VERIFY_MALFORMED,   /* present but unparsable */
    PB_VERIFY_SIGNATURE,   /* no signature matched any active secret */
    PB_VERIFY_TIMESTAMP,   /* outside the tolerance */
    PB_VERIFY_CLAIMS,      /* JWT exp/nbf/aud/iss refused */
    PB_VERIFY_CREDENTIALS, /* api key / basic credentials wrong */
    PB_VERIFY_REASON_COUNT
};
extern const char *const pb_verify_reason_names[PB_VERIFY_REASON_COUNT];

/* What a verifier sees of a request. The body is the raw bytes as received,
 * before any parsing. Lookups are case-insensitive and return NULL when absent. */
struct pb_verify_req {
    const char *method;
    const char *path;
    const char *body;
    size_t len;
    int64_t now_ms; /* unix ms; passed in so verifiers are testable */
    const char *(*header)(void *conn, const char *name);
    const char *(*query)(void *conn, const char *name);
    void *conn;
};

#define PB_WEBHOOK_ID_MAX 255
struct pb_verify_result {
    enum pb_verify_reason reason; /* on failure */
    /* On success, the provider's delivery/webhook id if the scheme has one
     * (NUL-terminated, visible ASCII); used as the idempotency key when the
     * request carries no Idempotency-Key, so a resent webhook is not
     * processed twice. Empty when none. */
    char webhook_id[PB_WEBHOOK_ID_MAX + 1];
};

/* 0 when the request is authentic, PB_EDENIED (reason set) otherwise. Runs on
 * listener threads, concurrently: ctx must be read-only. Compare secrets in
 * constant time and never log them. */
typedef int (*pb_verify_fn)(const void *ctx, const struct pb_verify_req *req,
                            struct pb_verify_result *res);

/* Why an input refused something: a fixed set, so metrics stay bounded. */
enum pb_reject {
    PB_REJECT_BAD_JSON = 0, /* not valid JSON (or another malformed request) */
    PB_REJECT_TOO_LARGE,
    PB_REJECT_OVERLOAD, /* a bound was hit: the sender should retry later */
    PB_REJECT_STORE,    /* the state store failed the commit */
    PB_REJECT_METHOD,
    PB_REJECT_SHUTDOWN,
    PB_REJECT_UNAUTHORIZED,
    PB_REJECT_COUNT
};
extern const char *const pb_reject_names[PB_REJECT_COUNT];

/* One item an input hands the core. Everything is copied by submit. */
#define PB_ITEM_KEY_MAX 255
struct pb_item {
    const void *body;
    size_t len;
    const char *content_type; /* NULL: application/json */
    /* What the input knows of the item, as the text of a JSON object; the
     * core adds input, pipeline and received_at, and every jq program sees
     * the whole as $meta. NULL: nothing more. */
    const char *meta;
    size_t meta_len;
    /* Idempotency key (1..PB_ITEM_KEY_MAX bytes): an item whose key the
     * pipeline has seen within key_window_ms is a duplicate and nothing new
     * is stored. NULL: none. */
    const char *key;
    int64_t key_window_ms; /* 0: the input's idempotency window */
    /* Set when the item cannot be carried (invalid JSON on a format: json
     * input...): it is committed straight into the dead-letter queue with
     * this reason, and counts as taken: ack it at the source. */
    const char *dead_reason;
    /* The W3C trace context the source carried (the traceparent and
     * tracestate headers of a request or a broker message), or NULL. The
     * core keeps it in $meta.traceparent / $meta.tracestate (a malformed
     * one, or none, starts a new trace); when NULL it also looks for them
     * among the headers in meta ($meta.headers.traceparent). */
    const char *traceparent;
    const char *tracestate;
};

/* A checkpoint committed in the same transaction as the items. */
struct pb_checkpoint {
    const char *name; /* "" for an input's only one */
    const void *value;
    size_t len;
};

enum pb_item_status {
    PB_ITEM_STORED = 0, /* a new message */
    PB_ITEM_DUPLICATE,  /* its key was seen: msg_id is the original */
    PB_ITEM_DEAD,       /* stored in the dead-letter queue (dead_reason) */
};
struct pb_item_result {
    enum pb_item_status status;
    char msg_id[40];
};

/* The core's side of one running input. */
struct pb_input;

/* Runs exactly once per accepted submit, on the input's loop thread, after
 * the items and checkpoints are durable (status 0, res[i] for items[i]) or
 * after the commit failed (status < 0, res NULL: nothing was stored; do
 * not ack). Only then may the input acknowledge its source. */
typedef void (*pb_submit_cb)(void *arg, int status, const struct pb_item_result *res, size_t n);

#define PB_SUBMIT_MAX 1000 /* items per submit */
/* Hand items (0..PB_SUBMIT_MAX) and checkpoints (0..8, at least one of
 * either) to the core, which commits them in one transaction. Any thread. If the call fails, cb
 * never runs: PB_EFULL when a bound is hit (the input is paused and resumed once there is room;
 * answer 503, nack, or keep the items for later), PB_ESHUTDOWN once the input's stop has run
 * (until then what it fetched is still committed and called back), PB_EINVAL for a
 * malformed item, PB_ENOMEM. */
int pb_input_submit(struct pb_input *in, const struct pb_item *items, size_t n,
                    const struct pb_checkpoint *ckpt, size_t nckpt, pb_submit_cb cb, void *arg);
/* The checkpoint as last committed: 0 with *value borrowed until the next
 * submit's callback, or PB_ENOTFOUND. The input's loop thread. */
int pb_input_checkpoint(struct pb_input *in, const char *name, const void **value, size_t *len);
/* The loop every callback of this input runs on. */
struct pb_loop *pb_input_loop(struct pb_input *in);
const char *pb_input_pipeline(const struct pb_input *in);

/* What /ready, /api/inputs and patchbay_input_connected show. Any thread. */
enum pb_input_state {
    PB_INPUT_STARTING = 0,
    PB_INPUT_CONNECTED,    /* taking data (or ready to: a listener, a timer) */
    PB_INPUT_RECONNECTING, /* lost its source; retrying with backoff */
    PB_INPUT_FINISHED,     /* a finite input submitted everything it will */
    PB_INPUT_STOPPED,
    PB_INPUT_STANDBY, /* a singleton another node of the cluster runs (set by the core) */
};
/* detail (copied, may be NULL): the last error while reconnecting. */
void pb_input_set_state(struct pb_input *in, enum pb_input_state state, const char *detail);
/* May the input fetch from its source now? A singleton input
 * (PB_INPUT_SINGLETON) asks before each fetch: false while its node does not
 * hold it or is unsure it still does (its lease ran short: frozen, cut off
 * from the cluster's database); the core pauses it meanwhile and resumes it
 * once sure again. Always true for other inputs and on a store of one node.
 * Its thread. */
bool pb_input_may_fetch(struct pb_input *in);
/* Where the input stands at its source (offset, cursor, LSN), as text. */
void pb_input_set_position(struct pb_input *in, const char *position);
/* Items waiting at the source (JetStream pending, consumer lag...); -1 unknown. */
void pb_input_set_lag(struct pb_input *in, int64_t lag);
/* Bytes the input is behind where its source counts in bytes (a replication
 * slot's WAL not yet confirmed); -1 unknown. */
void pb_input_set_lag_bytes(struct pb_input *in, int64_t bytes);
/* Counters the core cannot see by itself. Any thread. */
void pb_input_count_received(struct pb_input *in, uint64_t n);
void pb_input_count_reject(struct pb_input *in, enum pb_reject why);
void pb_input_count_verify_failed(struct pb_input *in, enum pb_verify_reason why);
void pb_input_count_nacked(struct pb_input *in, uint64_t n);
/* Time from an item's arrival to its acknowledgement, microseconds. */
void pb_input_observe_latency(struct pb_input *in, int64_t us);
/* A finite input has submitted everything it ever will (generate with a
 * count, a folder under --once): `patchbay run --once` exits when every
 * input has finished and every delivery is done. */
void pb_input_finished(struct pb_input *in);
/* What an input that reads files has taken so far, for the progress line
 * `patchbay run --once` shows on a terminal and the summary it prints at
 * the end. Copied. Any thread. */
struct pb_input_progress {
    int64_t files_total;  /* files the run takes (0 while unknown) */
    int64_t files_done;   /* of them: taken, failed or gone */
    int64_t files_failed; /* of them: could not be taken */
    int64_t records;      /* records committed (stored, duplicates, dead-lettered) */
    int64_t dead;         /* of them: dead-lettered on arrival (bad records) */
};
void pb_input_set_progress(struct pb_input *in, const struct pb_input_progress *p);

struct pb_input_env {
    const char *pipeline;
    const char *plugin;
    bool once; /* `patchbay run --once` */
    /* Declare a route on the shared listener; paths are checked against
     * every other route at load. Its handler is only called once the input
     * has started. */
    int (*add_route)(const struct pb_input_env *env, const struct pb_http_route *route,
                     struct pb_err *err);
    void *core;
    /* Outbound guard for inputs that connect out (brokers, databases): the
     * top-level outbound.allow. Resolve with pb_outbound_resolve(allow, ...). */
    const struct pb_allowlist *allow;
    /* Set by init when they apply: */
    bool raw;                      /* bodies are not JSON: no map, no process steps */
    bool verifies;                 /* checks senders (patchbay_webhook_verify_failures_total) */
    int64_t idempotency_window_ms; /* how long item keys are remembered (0: not at all) */
    /* A jq program giving the pipeline's ordering key when the pipeline sets
     * no ordering.key of its own (postgres_cdc: table + primary key, so the
     * changes of one row go out in commit order). Static text; NULL: none. */
    const char *ordering_key;
};

/* flags */
#define PB_INPUT_OWN_THREAD 0x1u /* a loop and thread of its own (blocking client libraries) */
#define PB_INPUT_SINGLETON 0x2u  /* one node of a cluster at a time (pollers, CDC) */
#define PB_INPUT_CAN_FINISH 0x4u /* may call pb_input_finished (for --once) */

struct pb_input_plugin {
    const char *name;
    const struct pb_field *fields;
    size_t ctx_size;
    unsigned flags;
    /* Validate and prepare; no I/O (lint and reload call it). */
    int (*init)(void *ctx, struct pb_input_env *env, struct pb_err *err);
    /* Connect and begin taking data, on the input's loop. A failure is
     * logged and start is tried again with backoff. NULL: nothing to do. */
    int (*start)(void *ctx, struct pb_input *in, struct pb_err *err);
    /* Stop taking new data; submit nothing after it returns. Callbacks of
     * what was submitted still run (ack those), then destroy follows. */
    void (*stop)(void *ctx);
    /* Back-pressure: stop fetching / start again. May be NULL. */
    void (*pause)(void *ctx);
    void (*resume)(void *ctx);
    /* Must cope with a context whose init or start failed half way. */
    void (*destroy)(void *ctx);
};

/* ---- registry (src/plugins/registry.c) ------------------------------------ */

const struct pb_input_plugin *pb_registry_input(const char *name);
const struct pb_processor_plugin *pb_registry_processor(const char *name);
const struct pb_output_plugin *pb_registry_output(const char *name);
/* NULL-terminated lists, for lint and docs. */
extern const struct pb_input_plugin *const pb_input_plugins[];
extern const struct pb_processor_plugin *const pb_processor_plugins[];
extern const struct pb_output_plugin *const pb_output_plugins[];

#endif
