/* redis_streams.c - the `redis_streams` output: each delivery appended to a
 * stream with XADD.
 *
 *   redis_streams: { url: "redis://127.0.0.1:6379", stream: 'orders.{{ .region }}' }
 *
 * An entry holds the payload in `field` ("body") and the delivery's
 * idempotency key in `key_field` ("idempotency_key"), plus any `fields` the
 * configuration adds (templates). A delivery is done when XADD answered
 * with the new entry's id. Redis has no server-side deduplication for XADD:
 * a delivery retried after a lost answer can be appended twice, with the
 * same key, so consumers drop repeats by the key (the redis_streams input
 * does with `key_field: idempotency_key`). `maxlen` trims the stream with
 * MAXLEN ~ (approximate, cheap).
 *
 * Thread model: `.workers = 4`: start, deliver_batch and stop run on
 * threads of the output's own, where hiredis's synchronous API may block.
 * Each batch takes a connection of its own from a pool of WORKERS slots
 * (under `lock`), so batches run side by side and Redis appends several
 * of them per write of its append-only file. A batch is pipelined: every
 * XADD is written, then each answer read in order, each delivery ending
 * with its own outcome. A broken connection fails what is left of its
 * batch with RETRY and is made again by a later batch, after a backoff
 * shared by the pool.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../inputs/redis_streams/redis_streams_common.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_plugin.h"
#include "patchbay/pb_time.h"

#define MAX_FIELDS 32 /* extra fields */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 10000
#define WORKERS 4

struct out_rs {
    /* options (read-only after init) */
    struct rs_conn_conf conn;
    char *stream;
    int64_t maxlen;
    char *field;
    char *key_field;
    struct pb_strmap fields;
    int64_t batch;
    /* prepared by init */
    struct rs_target target;
    const struct pb_allowlist *allow;
    int stream_idx;
    int field_idx[MAX_FIELDS];
    char maxlen_text[24];
    char pipeline[128];
    char output[128];
    /* run time: the output's worker threads */
    struct pb_output *o;
    pthread_mutex_t lock; /* guards what follows */
    bool lock_ready;
    redisContext *pool[WORKERS]; /* idle connections (NULL: none in that slot) */
    int64_t backoff_ms;
    int64_t next_connect_ms; /* unix ms */
    char last_error[PB_ERR_MSG_MAX];
};

static const struct pb_field rs_fields[] = {
    RS_CONN_FIELDS(struct out_rs, conn),
    {.name = "stream",
     .type = PB_F_STR,
     .offset = offsetof(struct out_rs, stream),
     .flags = PB_FIELD_REQUIRED,
     .doc = "stream key (template)"},
    {.name = "maxlen",
     .type = PB_F_INT,
     .offset = offsetof(struct out_rs, maxlen),
     .def = "0",
     .min = 0,
     .max = INT64_MAX,
     .doc = "trim the stream to about this many entries (MAXLEN ~); 0: never"},
    {.name = "field",
     .type = PB_F_STR,
     .offset = offsetof(struct out_rs, field),
     .def = "body",
     .doc = "the entry field holding the payload"},
    {.name = "key_field",
     .type = PB_F_STR,
     .offset = offsetof(struct out_rs, key_field),
     .def = "idempotency_key",
     .doc = "the entry field holding the delivery's idempotency key"},
    {.name = "fields",
     .type = PB_F_STRMAP,
     .offset = offsetof(struct out_rs, fields),
     .doc = "more entry fields: name -> template"},
    {.name = "batch",
     .type = PB_F_INT,
     .offset = offsetof(struct out_rs, batch),
     .def = "100",
     .min = 1,
     .max = 1000,
     .doc = "deliveries pipelined in one round trip"},
    {0},
};

static int rs_init(void *ctx, struct pb_output_env *env, struct pb_err *err)
{
    struct out_rs *r = ctx;
    int rc = rs_target_init(&r->target, &r->conn, err);
    if (rc)
        return rc;
    if (!r->field[0] || !r->key_field[0])
        return pb_err_set(err, PB_ECONFIG, "field and key_field must name entry fields");
    if (strcmp(r->field, r->key_field) == 0)
        return pb_err_set(err, PB_ECONFIG, "field and key_field must differ");
    if (r->fields.n > MAX_FIELDS)
        return pb_err_set(err, PB_ECONFIG, "fields: at most %d", MAX_FIELDS);
    char why[PB_ERR_MSG_MAX];
    r->stream_idx = env->template_add(env, r->stream, err);
    if (r->stream_idx < 0) {
        snprintf(why, sizeof(why), "%s", err->msg);
        return pb_err_set(err, err->code ? err->code : PB_ECONFIG, "stream: %s", why);
    }
    for (size_t i = 0; i < r->fields.n; i++) {
        const char *name = r->fields.keys[i];
        if (!name[0] || strcmp(name, r->field) == 0 || strcmp(name, r->key_field) == 0)
            return pb_err_set(err, PB_ECONFIG,
                              "fields: \"%s\" is empty or the same as field or key_field", name);
        r->field_idx[i] = env->template_add(env, r->fields.vals[i], err);
        if (r->field_idx[i] < 0) {
            snprintf(why, sizeof(why), "%s", err->msg);
            return pb_err_set(err, err->code ? err->code : PB_ECONFIG, "fields.%s: %.200s", name,
                              why);
        }
    }
    snprintf(r->maxlen_text, sizeof(r->maxlen_text), "%lld", (long long)r->maxlen);
    snprintf(r->pipeline, sizeof(r->pipeline), "%s", env->pipeline);
    snprintf(r->output, sizeof(r->output), "%s", env->output);
    r->allow = env->allow;
    env->batch_max = (size_t)r->batch;
    env->batch_period_ms = 0;
    return 0;
}

/* A new connection, or NULL (err set) with the backoff grown. */
static redisContext *connect_now(struct out_rs *r, struct pb_err *err)
{
    redisContext *rc = rs_connect(&r->target, &r->conn, r->allow, err);
    pthread_mutex_lock(&r->lock);
    if (!rc) {
        snprintf(r->last_error, sizeof(r->last_error), "%s", err->msg);
        r->backoff_ms = r->backoff_ms ? r->backoff_ms * 2 : BACKOFF_MIN_MS;
        if (r->backoff_ms > BACKOFF_MAX_MS)
            r->backoff_ms = BACKOFF_MAX_MS;
        r->next_connect_ms = pb_now_ms() + r->backoff_ms;
    } else {
        r->backoff_ms = 0;
        r->next_connect_ms = 0;
    }
    pthread_mutex_unlock(&r->lock);
    if (!rc) {
        if (r->o)
            pb_output_set_state(r->o, PB_OUTPUT_RECONNECTING, err->msg);
        return NULL;
    }
    if (r->o)
        pb_output_set_state(r->o, PB_OUTPUT_CONNECTED, NULL);
    PB_DEBUG("redis_streams output connected pipeline=%s output=%s host=%s port=%d", r->pipeline,
             r->output, r->target.host, r->target.port);
    return rc;
}

/* An idle connection of the pool, or NULL: make one (when no backoff runs). */
static redisContext *take(struct out_rs *r)
{
    redisContext *rc = NULL;
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < WORKERS && !rc; i++) {
        rc = r->pool[i];
        r->pool[i] = NULL;
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

static void give_back(struct out_rs *r, redisContext *rc)
{
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < WORKERS && rc; i++)
        if (!r->pool[i]) {
            r->pool[i] = rc;
            rc = NULL;
        }
    pthread_mutex_unlock(&r->lock);
    if (rc)
        redisFree(rc);
}

static int rs_start(void *ctx, struct pb_output *o, struct pb_err *err)
{
    struct out_rs *r = ctx;
    r->o = o;
    if (!r->lock_ready) {
        pthread_mutex_init(&r->lock, NULL);
        r->lock_ready = true;
    }
    redisContext *rc = connect_now(r, err);
    if (!rc)
        return err->code ? err->code : PB_ENET;
    PB_INFO("redis_streams output connected pipeline=%s output=%s host=%s port=%d", r->pipeline,
            r->output, r->target.host, r->target.port);
    give_back(r, rc);
    return 0;
}

static void lost(struct out_rs *r, redisContext *rc, char *why, size_t len)
{
    char txt[256];
    snprintf(why, len, "connection lost: %s", rs_error_text(rc, NULL, txt, sizeof(txt)));
    redisFree(rc);
    pthread_mutex_lock(&r->lock);
    snprintf(r->last_error, sizeof(r->last_error), "%s", why);
    pthread_mutex_unlock(&r->lock);
    pb_output_set_state(r->o, PB_OUTPUT_RECONNECTING, why);
}

/* answer: the server's reply (the entry id XADD gave, or its error), or NULL. */
static void done_answer(struct pb_delivery *d, enum pb_result res, const char *error,
                        const redisReply *answer)
{
    struct pb_outcome oc = {.result = res, .retry_after_ms = -1, .error = error};
    if (answer && answer->str &&
        (answer->type == REDIS_REPLY_STRING || answer->type == REDIS_REPLY_STATUS ||
         answer->type == REDIS_REPLY_ERROR)) {
        oc.answer = answer->str;
        oc.answer_len = answer->len;
    }
    pb_delivery_done(d, &oc);
}

static void done(struct pb_delivery *d, enum pb_result res, const char *error)
{
    done_answer(d, res, error, NULL);
}

/* Error answers that can never work as sent; everything else (OOM, LOADING,
 * READONLY, MASTERDOWN, BUSY, TRYAGAIN...) may work later. */
static enum pb_result classify(const redisReply *rep)
{
    static const char *const permanent[] = {"WRONGTYPE", "NOPERM", "ERR", NULL};
    for (size_t i = 0; permanent[i]; i++)
        if (rs_reply_is(rep, permanent[i]))
            return strstr(rep->str, "max number of clients") ? PB_RESULT_RETRY
                                                             : PB_RESULT_PERMANENT;
    return PB_RESULT_RETRY;
}

#define ARGV_MAX (10 + 2 * MAX_FIELDS)

/* Append the XADD of d; false when it cannot be sent at all (ended). */
static bool append_xadd(struct out_rs *r, redisContext *rc, struct pb_delivery *d)
{
    const char *argv[ARGV_MAX];
    size_t lens[ARGV_MAX];
    int argc = 0;
    const char *stream = d->ntmpl > (size_t)r->stream_idx ? d->tmpl[r->stream_idx] : NULL;
#define ARG(s, n) (argv[argc] = (s), lens[argc] = (n), argc++)
#define ARGS(s) ARG((s), strlen(s))
    if (!stream || !stream[0]) {
        done(d, PB_RESULT_PERMANENT, "stream template gave an empty name");
        return false;
    }
    ARGS("XADD");
    ARGS(stream);
    if (r->maxlen > 0) {
        ARGS("MAXLEN");
        ARGS("~");
        ARGS(r->maxlen_text);
    }
    ARGS("*");
    ARGS(r->field);
    ARG(d->payload ? d->payload : "", d->len);
    ARGS(r->key_field);
    ARGS(d->idempotency_key);
    for (size_t i = 0; i < r->fields.n; i++) {
        const char *v = d->ntmpl > (size_t)r->field_idx[i] ? d->tmpl[r->field_idx[i]] : "";
        ARGS(r->fields.keys[i]);
        ARGS(v ? v : "");
    }
#undef ARG
#undef ARGS
    if (redisAppendCommandArgv(rc, argc, argv, lens) != REDIS_OK) {
        done(d, PB_RESULT_RETRY, "out of memory");
        return false;
    }
    return true;
}

static void rs_deliver_batch(void *ctx, struct pb_delivery **ds, size_t n)
{
    struct out_rs *r = ctx;
    struct pb_err err = {0};
    char why[PB_ERR_MSG_MAX];
    bool *sent = calloc(n, sizeof(*sent));
    redisContext *rc = sent ? take(r) : NULL;
    if (!sent) {
        for (size_t i = 0; i < n; i++)
            done(ds[i], PB_RESULT_RETRY, "out of memory");
        return;
    }
    if (!rc) {
        pthread_mutex_lock(&r->lock);
        bool wait = pb_now_ms() < r->next_connect_ms;
        snprintf(why, sizeof(why), "%s", r->last_error);
        pthread_mutex_unlock(&r->lock);
        if (wait || !(rc = connect_now(r, &err))) {
            for (size_t i = 0; i < n; i++)
                done(ds[i], PB_RESULT_RETRY, wait ? why : err.msg);
            goto out;
        }
    }
    /* Answers are awaited until the earliest deadline of the batch. */
    int64_t wait = r->conn.timeout_ms, now = pb_now_ms();
    for (size_t i = 0; i < n; i++)
        if (ds[i]->deadline_ms > 0 && ds[i]->deadline_ms - now < wait)
            wait = ds[i]->deadline_ms - now;
    rs_set_timeout(rc, wait < 100 ? 100 : wait);
    for (size_t i = 0; i < n; i++)
        sent[i] = append_xadd(r, rc, ds[i]);
    for (size_t i = 0; i < n; i++) {
        if (!sent[i])
            continue;
        redisReply *rep = NULL;
        if (rc && redisGetReply(rc, (void **)&rep) != REDIS_OK) {
            lost(r, rc, why, sizeof(why));
            rc = NULL;
            rep = NULL;
        }
        if (!rc) {
            done(ds[i], PB_RESULT_RETRY, why);
        } else if (rep->type == REDIS_REPLY_STRING || rep->type == REDIS_REPLY_STATUS) {
            done_answer(ds[i], PB_RESULT_OK, NULL, rep); /* the entry's id */
        } else {
            char txt[256];
            done_answer(ds[i], rep->type == REDIS_REPLY_ERROR ? classify(rep) : PB_RESULT_RETRY,
                        rs_error_text(rc, rep, txt, sizeof(txt)), rep);
        }
        if (rep)
            freeReplyObject(rep);
    }
    if (rc)
        give_back(r, rc);
out:
    free(sent);
}

/* Close the idle connections (destroy closes those batches still running
 * give back). */
static void rs_stop(void *ctx)
{
    struct out_rs *r = ctx;
    redisContext *rc;
    if (!r->lock_ready)
        return;
    while ((rc = take(r)))
        redisFree(rc);
}

static void rs_destroy(void *ctx)
{
    struct out_rs *r = ctx;
    rs_stop(r);
    if (r->lock_ready)
        pthread_mutex_destroy(&r->lock);
    r->lock_ready = false;
    rs_target_cleanup(&r->target);
}

const struct pb_output_plugin pb_out_redis_streams = {
    .name = "redis_streams",
    .fields = rs_fields,
    .ctx_size = sizeof(struct out_rs),
    .default_concurrency = 200,
    .workers = WORKERS,
    .init = rs_init,
    .start = rs_start,
    .deliver_batch = rs_deliver_batch,
    .stop = rs_stop,
    .destroy = rs_destroy,
};
