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
    void *core;               /* internal */
};

struct pb_outcome {
    enum pb_result result;
    int status;             /* protocol status (HTTP) or 0 */
    int64_t retry_after_ms; /* partner asked to wait this long; -1 when not */
    const char *error;      /* short text for the attempt log; copied; may be NULL */
};

/* The outcome of an HTTP attempt (src/core/retry.c): classified status, the
 * partner's Retry-After, and an error text ("HTTP 503: <printable excerpt of
 * the answer>", or the transport error) written into buf. A request refused
 * by the outbound guard is PERMANENT: retrying cannot make it allowed. */
void pb_outcome_from_http(const struct pb_http_resp *resp, struct pb_outcome *o, char *buf,
                          size_t len);

/* End an attempt. Exactly once per deliver() call, on the dispatcher thread,
 * possibly from inside deliver(). d must not be used afterwards. */
void pb_delivery_done(struct pb_delivery *d, const struct pb_outcome *o);

struct pb_output_env {
    const char *pipeline;
    const char *output;
    struct pb_http_client *http;      /* shared async client, dispatcher thread */
    const struct pb_allowlist *allow; /* outbound guard for this output */
};

struct pb_output_plugin {
    const char *name;
    const struct pb_field *fields;
    size_t ctx_size;
    int default_concurrency; /* attempts in flight per output unless configured */
    int (*init)(void *ctx, const struct pb_output_env *env, struct pb_err *err);
    /* Asynchronous: ends with pb_delivery_done(d, ...). */
    void (*deliver)(void *ctx, struct pb_delivery *d);
    void (*destroy)(void *ctx);
};

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

struct pb_proc_env {
    const char *pipeline;
    size_t noutputs;              /* <= PB_MAX_OUTPUTS */
    const char *const *outputs;   /* names, in configuration order */
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

/* Options of an HTTP ingest route (http_server input). Strings are borrowed
 * from the plugin context, which lives as long as the configuration. */
struct pb_ingest_route {
    const char *path;                 /* exact path, e.g. "/hooks/shop" */
    const struct pb_strlist *methods; /* allowed methods; empty = POST */
    uint64_t max_body;                /* bytes */
    bool json;                        /* format: json (validated) or raw */
    int64_t idempotency_window_ms;    /* 0 = no idempotency */
    const char *idempotency_header;   /* header carrying the key */
    pb_verify_fn verify;              /* NULL: no verification */
    const void *verify_ctx;
    /* Request headers kept in $meta.headers (names compared case-blind,
     * stored lower-cased; "*" keeps all). Empty: none. */
    const struct pb_strlist *meta_headers;
};

struct pb_input_env {
    const char *pipeline;
    /* Ask the core to serve this pipeline's ingest route on the shared
     * listener. Fails (with err) when the path is taken. */
    int (*add_route)(void *arg, const struct pb_ingest_route *r, struct pb_err *err);
    void *arg;
};

struct pb_input_plugin {
    const char *name;
    const struct pb_field *fields;
    size_t ctx_size;
    int (*init)(void *ctx, const struct pb_input_env *env, struct pb_err *err);
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
