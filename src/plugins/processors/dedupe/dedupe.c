/* dedupe.c - the dedupe processor: a message whose key was seen within a
 * window goes no further.
 *
 *   dedupe: '.order.id'
 *   dedupe: { key: '"\(.id)@\(.updated_at)"', window: 7d, on_missing: dead_letter }
 *
 * The key is the jq program's first output: a string as it is, anything
 * else as its JSON text; longer than PB_PROC_KEY_MAX bytes, its SHA-256
 * HMAC stands for it. The first message with a key holds it for `window`
 * from then; any other message with that key meanwhile is dropped on
 * purpose (filtered, with the holder named in the log at debug level).
 * The keys live in the state store (pb_proc_key_claim): they survive a
 * restart, a cluster's nodes share them, and a message routed again after
 * a crash finds the key its own and goes on. Retention drops expired keys.
 *
 * Idempotency keys at ingest (Idempotency-Key, an input's dedupe_key) drop
 * a repeat before it is stored; this step drops repeats by what the
 * message says after the steps before it (a mapped id, a field of a
 * split item), and counts them as filtered.
 *
 * Thread: the route stage's (the dispatcher's); the key's answer comes
 * back on it. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "patchbay/pb_crypto.h"
#include "patchbay/pb_jq.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_plugin.h"

enum on_missing { MISSING_PASS, MISSING_DROP, MISSING_DEAD };
static const char *const missing_names[] = {"pass", "drop", "dead_letter", NULL};

struct dedupe_ctx {
    char *key; /* jq; the scalar form too */
    int64_t window_ms;
    int on_missing;
    struct pb_jq *q;
    const char *pipeline;
};

static const struct pb_field dedupe_fields[] = {
    {.name = "key",
     .type = PB_F_STR,
     .offset = offsetof(struct dedupe_ctx, key),
     .flags = PB_FIELD_REQUIRED,
     .doc = "jq program giving the message's key (a string as is, other values as JSON)"},
    {.name = "window",
     .type = PB_F_DURATION,
     .offset = offsetof(struct dedupe_ctx, window_ms),
     .def = "24h",
     .doc = "how long the first message with a key holds it (1s to 365d)"},
    {.name = "on_missing",
     .type = PB_F_ENUM,
     .offset = offsetof(struct dedupe_ctx, on_missing),
     .def = "pass",
     .choices = missing_names,
     .doc = "a message whose key is null or absent: pass, drop or dead_letter"},
    {0},
};

#define WINDOW_DEFAULT_MS (24LL * 3600 * 1000)
#define WINDOW_MIN_MS 1000LL
#define WINDOW_MAX_MS (365LL * 24 * 3600 * 1000)

static int dedupe_init(void *ctx, const struct pb_proc_env *env, struct pb_err *err)
{
    struct dedupe_ctx *D = ctx;
    if (!D->key || !*D->key)
        return pb_err_set(err, PB_ECONFIG, "dedupe: key (a jq program) is required");
    if (D->window_ms == 0)
        D->window_ms = WINDOW_DEFAULT_MS; /* the scalar form: key only */
    if (D->window_ms < WINDOW_MIN_MS || D->window_ms > WINDOW_MAX_MS)
        return pb_err_set(err, PB_ECONFIG, "dedupe: window must be between 1s and 365d");
    D->pipeline = env->pipeline;
    D->q = pb_jq_compile(D->key, err);
    return D->q ? 0 : (err->code ? err->code : PB_EJQ);
}

/* The key of in as text (malloc'd), NULL with *missing when there is
 * none, NULL with err on failure. */
static char *key_of(struct dedupe_ctx *D, jv in, jv meta, bool *missing, struct pb_err *err)
{
    char *text = NULL;
    size_t len = 0;
    *missing = false;
    if (pb_jq_key(D->q, jv_copy(in), jv_copy(meta), &text, &len, err) != 0)
        return NULL;
    if (!text) {
        *missing = true;
        return NULL;
    }
    if (len <= PB_PROC_KEY_MAX && strlen(text) == len)
        return text;
    /* Long (or holding NUL): a digest stands for it. */
    unsigned char mac[PB_MAC_MAX];
    size_t mlen = 0;
    struct pb_piece piece = {text, len};
    int rc = pb_hmac("SHA256", "patchbay dedupe", 15, &piece, 1, mac, &mlen);
    free(text);
    if (rc != 0) {
        pb_err_set(err, PB_ENOMEM, "cannot hash a long key");
        return NULL;
    }
    char *h = malloc(72);
    if (!h) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    memcpy(h, "sha256:", 7);
    pb_base64_encode(mac, mlen, true, h + 7, 72 - 7);
    return h;
}

struct pending {
    jv msg;
    pb_outset outputs;
    struct dedupe_ctx *D;
};

static void claimed(struct pb_proc_wait *w, int rc, bool first, const char *holder, void *arg)
{
    struct pending *p = arg;
    struct pb_err err = {0};
    if (rc < 0) {
        jv_free(p->msg);
        pb_err_set(&err, PB_EAGAIN, "dedupe: the key could not be looked up: %s", pb_strerror(rc));
        free(p);
        pb_proc_resume(w, PB_EAGAIN, &err);
        return;
    }
    if (first) {
        rc = pb_proc_emit(pb_proc_wait_io(w), p->msg, p->outputs);
    } else {
        PB_DEBUG("dedupe: dropped a repeat pipeline=%s holder=%s", p->D->pipeline,
                 holder ? holder : "?");
        jv_free(p->msg);
        rc = 0;
    }
    free(p);
    if (rc)
        pb_err_set(&err, rc, "dedupe: %s", pb_strerror(rc));
    pb_proc_resume(w, rc, &err);
}

static int dedupe_process(void *ctx, struct pb_proc_io *io, jv in, struct pb_err *err)
{
    struct dedupe_ctx *D = ctx;
    bool missing = false;
    char *key = key_of(D, in, pb_proc_meta(io), &missing, err);
    if (!key && !missing) {
        jv_free(in);
        return err->code ? err->code : PB_EJQ;
    }
    if (missing) {
        switch (D->on_missing) {
        case MISSING_DROP:
            jv_free(in);
            return 0;
        case MISSING_DEAD:
            jv_free(in);
            return pb_err_set(err, PB_EINVAL, "dedupe: the message has no key (%s)", D->key);
        default:
            return pb_proc_emit(io, in, pb_proc_outputs(io));
        }
    }
    struct pending *p = calloc(1, sizeof(*p));
    if (!p) {
        free(key);
        jv_free(in);
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    }
    *p = (struct pending){.msg = in, .outputs = pb_proc_outputs(io), .D = D};
    int rc = pb_proc_key_claim(io, key, D->window_ms, claimed, p, err);
    free(key);
    if (rc) {
        jv_free(p->msg);
        free(p);
    }
    return rc;
}

static void dedupe_destroy(void *ctx)
{
    struct dedupe_ctx *D = ctx;
    if (!D)
        return;
    pb_jq_destroy(D->q);
    D->q = NULL;
}

const struct pb_processor_plugin pb_proc_dedupe = {
    .name = "dedupe",
    .fields = dedupe_fields,
    .scalar_form = true,
    .scalar_offset = offsetof(struct dedupe_ctx, key),
    .ctx_size = sizeof(struct dedupe_ctx),
    .init = dedupe_init,
    .process = dedupe_process,
    .destroy = dedupe_destroy,
};
