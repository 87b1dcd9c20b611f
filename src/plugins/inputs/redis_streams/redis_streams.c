/* redis_streams.c - the `redis_streams` input: one consumer of a Redis
 * Streams consumer group.
 *
 *   redis_streams: { url: "redis://127.0.0.1:6379", stream: orders, group: patchbay }
 *
 * It reads with XREADGROUP and acknowledges with XACK only in the submit
 * callback, once the entries are committed (stored, duplicate or dead
 * alike); a failed commit leaves them in the consumer's pending entries
 * list (PEL), from where they are read again. At start, after a reconnect
 * and after a failed commit or a full ingest queue, it first reads its own
 * pending entries (id 0, then on from the last one read), and only then new
 * ones (>). Every `claim_idle` / 2 (100 ms - 10 s) XAUTOCLAIM takes over
 * entries another consumer has left pending longer than `claim_idle`: a
 * consumer that died does not keep its entries for ever. Each entry carries
 * the idempotency key "<stream>:<id>" (or the value of `key_field`), so what
 * is read twice (a crash between commit and XACK, a takeover) creates
 * nothing new.
 *
 * Why one file: reading, taking over (XAUTOCLAIM), acknowledging and
 * reconnecting all move one consumer's cursors (its own pending entries, the
 * last id read, the takeover cursor) on the input's thread; they are one
 * state machine, and the connection's calls are a few lines each.
 *
 * An entry's body is the value of `field` ("body"); with `field: "*"` it is
 * the whole entry as a JSON object of strings. An entry without the field,
 * a body that is not JSON on a `format: json` input, or an entry deleted
 * before it was taken (XDEL, MAXLEN) goes to the dead-letter queue with the
 * reason, and is acknowledged.
 *
 * Thread model: PB_INPUT_OWN_THREAD. hiredis's synchronous API runs on the
 * input's own loop thread: start, stop, pause, resume, the tick timer and
 * the submit callbacks (which XACK) all run there, so nothing needs a lock,
 * and an XACK is finished when its callback returns - which is what stop
 * relies on (callbacks acked, then destroy), with no flush of an
 * asynchronous queue at the end. The asynchronous API would also need a
 * second connection, since a blocked XREADGROUP holds its connection and
 * an XACK sent behind it would wait. A blocking read (XREADGROUP BLOCK) is
 * issued only when no submit awaits its callback, so no acknowledgement
 * ever waits behind one, and `block` is at most 5 s, so stop and pause are
 * taken within that. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "patchbay/pb_json.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_loop.h"
#include "patchbay/pb_plugin.h"
#include "patchbay/pb_time.h"
#include "redis_streams_common.h"

#define MAX_INFLIGHT 4 /* submits awaiting their callback */
#define LAG_INTERVAL_MS 2000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 30000
#define FAILED_COMMIT_PAUSE_MS 1000
#define NAME_MAX_LEN 200
#define LAG_SCAN_MAX 1000 /* entries counted when Redis does not tell the lag */

struct in_rs {
    /* options (read-only after init) */
    struct rs_conn_conf conn;
    char *stream;
    char *group;
    char *consumer;
    bool create_group;
    char *start;
    int64_t batch;
    int64_t block_ms;
    int64_t claim_idle_ms;
    char *field;
    char *key_field;
    int format; /* 0 json, 1 raw */
    int64_t window_ms;
    uint64_t max_body;
    /* prepared by init */
    struct rs_target target;
    const struct pb_allowlist *allow;
    char consumer_name[NAME_MAX_LEN + 64];
    char pipeline[128];
    bool whole_entry; /* field: "*" */
    int64_t claim_every_ms;
    /* run time: the input's own loop thread */
    struct pb_input *in;
    struct pb_loop *loop;
    redisContext *rc;
    struct pb_loop_timer *timer;
    int inflight;
    bool paused;
    bool stopped;
    bool healthy;                 /* the last command worked: state is connected */
    int64_t backoff_ms;           /* next wait after a failure */
    int64_t not_before;           /* loop ms: no command before (backoff) */
    bool rescan;                  /* read own pending from 0 once nothing is in flight */
    bool history;                 /* reading own pending entries */
    char cursor[RS_ID_MAX];       /* history: last id read */
    int64_t claim_due;            /* loop ms */
    char claim_cursor[RS_ID_MAX]; /* XAUTOCLAIM: "0-0" at the start of a round */
    int64_t lag_due;              /* loop ms */
    bool claim_off;               /* the server has no XAUTOCLAIM */
};

static const char *const formats[] = {"json", "raw", NULL};

static const struct pb_field rs_fields[] = {
    RS_CONN_FIELDS(struct in_rs, conn),
    {.name = "stream",
     .type = PB_F_STR,
     .offset = offsetof(struct in_rs, stream),
     .flags = PB_FIELD_REQUIRED,
     .doc = "stream key"},
    {.name = "group",
     .type = PB_F_STR,
     .offset = offsetof(struct in_rs, group),
     .def = "patchbay",
     .doc = "consumer group"},
    {.name = "consumer",
     .type = PB_F_STR,
     .offset = offsetof(struct in_rs, consumer),
     .doc = "consumer name in the group (default: <host name>:<pipeline>)"},
    {.name = "create_group",
     .type = PB_F_BOOL,
     .offset = offsetof(struct in_rs, create_group),
     .def = "true",
     .doc = "XGROUP CREATE ... MKSTREAM when the group does not exist"},
    {.name = "start",
     .type = PB_F_STR,
     .offset = offsetof(struct in_rs, start),
     .def = "0",
     .doc = "where a new group starts: \"0\" (every entry), \"$\" (new ones) or an id"},
    {.name = "batch",
     .type = PB_F_INT,
     .offset = offsetof(struct in_rs, batch),
     .def = "100",
     .min = 1,
     .max = PB_SUBMIT_MAX,
     .doc = "entries per read (COUNT), committed together"},
    {.name = "block",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_rs, block_ms),
     .def = "1s",
     .doc = "longest wait of a read for new entries (10ms-5s)"},
    {.name = "claim_idle",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_rs, claim_idle_ms),
     .def = "1m",
     .doc = "take over entries pending this long at another consumer (0: never)"},
    {.name = "field",
     .type = PB_F_STR,
     .offset = offsetof(struct in_rs, field),
     .def = "body",
     .doc = "the entry field holding the body; \"*\": the whole entry as a JSON object"},
    {.name = "key_field",
     .type = PB_F_STR,
     .offset = offsetof(struct in_rs, key_field),
     .doc = "an entry field holding the idempotency key (default: <stream>:<id>)"},
    {.name = "format",
     .type = PB_F_ENUM,
     .offset = offsetof(struct in_rs, format),
     .choices = formats,
     .def = "json",
     .doc = "json (validated) or raw (any bytes)"},
    {.name = "max_body",
     .type = PB_F_SIZE,
     .offset = offsetof(struct in_rs, max_body),
     .def = "1MiB",
     .doc = "a larger body is dead-lettered (at most 64MiB)"},
    {.name = "idempotency_window",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_rs, window_ms),
     .def = "7d",
     .doc = "how long an entry's key is remembered"},
    {0},
};

/* ---- init ---------------------------------------------------------------------------------- */

static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > NAME_MAX_LEN || !pb_utf8_valid(s, n))
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    return true;
}

static int rs_init(void *ctx, struct pb_input_env *env, struct pb_err *err)
{
    struct in_rs *r = ctx;
    int rc = rs_target_init(&r->target, &r->conn, err);
    if (rc)
        return rc;
    if (!name_ok(r->stream))
        return pb_err_set(err, PB_ECONFIG, "stream must be 1-%d printable UTF-8 bytes",
                          NAME_MAX_LEN);
    if (!name_ok(r->group))
        return pb_err_set(err, PB_ECONFIG, "group must be 1-%d printable UTF-8 bytes",
                          NAME_MAX_LEN);
    if (r->consumer && !name_ok(r->consumer))
        return pb_err_set(err, PB_ECONFIG, "consumer must be 1-%d printable UTF-8 bytes",
                          NAME_MAX_LEN);
    if (strcmp(r->start, "$") != 0 && !rs_id_valid(r->start))
        return pb_err_set(err, PB_ECONFIG,
                          "start must be \"0\" (every entry), \"$\" (only new ones) or an "
                          "entry id such as 1712345678901-0");
    if (r->block_ms < 10 || r->block_ms > 5000)
        return pb_err_set(err, PB_ECONFIG, "block must be between 10ms and 5s");
    if (r->claim_idle_ms < 0)
        return pb_err_set(err, PB_ECONFIG, "claim_idle must not be negative");
    if (!r->field[0])
        return pb_err_set(err, PB_ECONFIG, "field must name an entry field, or be \"*\"");
    r->whole_entry = strcmp(r->field, "*") == 0;
    if (r->whole_entry && r->format == 1)
        return pb_err_set(err, PB_ECONFIG,
                          "field \"*\" makes JSON bodies of whole entries: it takes format: json");
    if (r->key_field && !r->key_field[0])
        return pb_err_set(err, PB_ECONFIG, "key_field must name an entry field");
    if (r->max_body == 0 || r->max_body > (uint64_t)64 << 20)
        return pb_err_set(err, PB_ECONFIG, "max_body must be between 1B and 64MiB");
    if (r->window_ms <= 0)
        return pb_err_set(err, PB_ECONFIG,
                          "idempotency_window must be above 0: entries read again after a "
                          "crash or a takeover are dropped by their key");
    if (r->consumer) {
        snprintf(r->consumer_name, sizeof(r->consumer_name), "%s", r->consumer);
    } else {
        char host[128] = "";
        if (gethostname(host, sizeof(host) - 1) != 0 || !host[0])
            snprintf(host, sizeof(host), "patchbay");
        snprintf(r->consumer_name, sizeof(r->consumer_name), "%s:%s", host, env->pipeline);
    }
    /* Check every round of claims at half the idle time, 100 ms - 10 s. */
    r->claim_every_ms = r->claim_idle_ms / 2;
    if (r->claim_every_ms < 100)
        r->claim_every_ms = 100;
    if (r->claim_every_ms > 10000)
        r->claim_every_ms = 10000;
    snprintf(r->pipeline, sizeof(r->pipeline), "%s", env->pipeline);
    r->allow = env->allow;
    env->raw = r->format == 1;
    env->idempotency_window_ms = r->window_ms;
    return 0;
}

/* ---- connection state ---------------------------------------------------------------------- */

static void arm(struct in_rs *r, int64_t ms)
{
    if (r->timer && !r->stopped)
        pb_loop_timer_start(r->timer, ms < 0 ? 0 : ms);
}

static void set_healthy(struct in_rs *r)
{
    if (r->healthy)
        return;
    r->healthy = true;
    r->backoff_ms = 0;
    pb_input_set_state(r->in, PB_INPUT_CONNECTED, NULL);
}

/* Something failed: report it, and try again after a growing, jittered
 * wait. With the connection broken, drop it (and read our own pending
 * entries again once back: acknowledgements may have been lost). */
static void failed_msg(struct in_rs *r, const char *detail, bool broken)
{
    if (broken && r->rc) {
        redisFree(r->rc);
        r->rc = NULL;
        r->rescan = true;
    }
    r->backoff_ms = r->backoff_ms ? r->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (r->backoff_ms > BACKOFF_MAX_MS)
        r->backoff_ms = BACKOFF_MAX_MS;
    int64_t wait = r->backoff_ms / 2 + (int64_t)(pb_rand64() % (uint64_t)(r->backoff_ms / 2 + 1));
    r->not_before = pb_loop_now(r->loop) + wait;
    r->healthy = false;
    pb_input_set_state(r->in, PB_INPUT_RECONNECTING, detail);
    arm(r, wait);
}

/* A command failed: reply is its error, or NULL when the connection broke. */
static void failed(struct in_rs *r, const char *what, const redisReply *reply)
{
    char txt[256], detail[400];
    snprintf(detail, sizeof(detail), "%s: %s", what, rs_error_text(r->rc, reply, txt, sizeof(txt)));
    failed_msg(r, detail, reply == NULL);
}

/* XGROUP CREATE ... MKSTREAM; an existing group is fine. */
static int create_group(struct in_rs *r, struct pb_err *err)
{
    const char *argv[] = {"XGROUP", "CREATE", r->stream, r->group, r->start, "MKSTREAM"};
    char txt[256];
    redisReply *rep = redisCommandArgv(r->rc, 6, argv, NULL);
    int rc = 0;
    if (!rep)
        rc = pb_err_set(err, PB_ENET, "XGROUP CREATE: %s", rs_error_text(r->rc, NULL, txt, 256));
    else if (rep->type == REDIS_REPLY_ERROR && !rs_reply_is(rep, "BUSYGROUP"))
        rc = pb_err_set(err, PB_ECONFIG, "XGROUP CREATE: %s", rs_error_text(r->rc, rep, txt, 256));
    if (rep)
        freeReplyObject(rep);
    return rc;
}

static int connect_now(struct in_rs *r, struct pb_err *err)
{
    r->rc = rs_connect(&r->target, &r->conn, r->allow, err);
    if (!r->rc)
        return err->code ? err->code : PB_ENET;
    /* A blocking read may wait `block` before Redis answers. */
    int rc = rs_set_timeout(r->rc, r->conn.timeout_ms + r->block_ms);
    if (rc == 0 && r->create_group)
        rc = create_group(r, err);
    if (rc) {
        redisFree(r->rc);
        r->rc = NULL;
        return rc;
    }
    int64_t now = pb_loop_now(r->loop);
    r->rescan = true; /* first our own pending entries */
    r->claim_due = now;
    snprintf(r->claim_cursor, sizeof(r->claim_cursor), "0-0");
    r->lag_due = now;
    PB_INFO("redis_streams connected pipeline=%s host=%s port=%d stream=%s group=%s consumer=%s",
            r->pipeline, r->target.host, r->target.port, r->stream, r->group, r->consumer_name);
    return 0;
}

/* ---- entries to items ----------------------------------------------------------------------- */

struct entry {
    const char *id;
    const redisReply *fields; /* array of name, value...; NULL: deleted from the stream */
    long long delivery_count; /* 0: unknown */
};

struct prep {
    char key[PB_ITEM_KEY_MAX + 1];
    char *meta;
    char *body; /* owned, when made here */
    char reason[256];
};

/* One batch being committed: the ids to XACK in its callback. */
struct batch {
    struct in_rs *r;
    int64_t read_us;
    size_t n;
    char ids[][RS_ID_MAX];
};

static bool str_is(const redisReply *x, const char *s)
{
    size_t n = strlen(s);
    return x && (x->type == REDIS_REPLY_STRING || x->type == REDIS_REPLY_STATUS) && x->len == n &&
           memcmp(x->str, s, n) == 0;
}

static bool is_str(const redisReply *x)
{
    return x && (x->type == REDIS_REPLY_STRING || x->type == REDIS_REPLY_STATUS);
}

/* The entry as a JSON object of strings; NULL with why set when a name or a
 * value cannot be carried (not UTF-8, a NUL in a name, a name twice). */
static json_t *entry_object(const redisReply *f, char *why, size_t wlen)
{
    json_t *o = json_object();
    if (!o) {
        snprintf(why, wlen, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];
        if (!is_str(k) || !is_str(v)) {
            snprintf(why, wlen, "entry has a field that is not a string");
            goto fail;
        }
        if (!pb_utf8_valid(k->str, k->len) || memchr(k->str, 0, k->len)) {
            snprintf(why, wlen, "entry has a field name that is not UTF-8 text");
            goto fail;
        }
        if (!pb_utf8_valid(v->str, v->len)) {
            snprintf(why, wlen, "field \"%.*s\" is not UTF-8 text",
                     (int)(k->len < 64 ? k->len : 64), k->str);
            goto fail;
        }
        if (json_object_getn(o, k->str, k->len)) {
            snprintf(why, wlen, "field \"%.*s\" appears twice", (int)(k->len < 64 ? k->len : 64),
                     k->str);
            goto fail;
        }
        if (json_object_setn_new(o, k->str, k->len, json_stringn(v->str, v->len)) != 0) {
            snprintf(why, wlen, "out of memory");
            goto fail;
        }
    }
    return o;
fail:
    json_decref(o);
    return NULL;
}

/* $meta of one entry: stream, id, group, consumer, added_at, delivery
 * counts and the fields other than the body (UTF-8 ones, first of a name). */
static char *entry_meta(const struct in_rs *r, const struct entry *e, size_t *len)
{
    char *text = NULL;
    long long added = strtoll(e->id, NULL, 10);
    json_t *m = json_pack("{s:s, s:s, s:s, s:s, s:I}", "stream", r->stream, "id", e->id, "group",
                          r->group, "consumer", r->consumer_name, "added_at", (json_int_t)added);
    if (!m)
        return NULL;
    if (e->delivery_count > 0) {
        if (json_object_set_new(m, "delivery_count", json_integer(e->delivery_count)) ||
            json_object_set_new(m, "redelivery_count", json_integer(e->delivery_count - 1)))
            goto out;
    }
    if (!r->whole_entry && e->fields) {
        json_t *fo = json_object();
        if (!fo || json_object_set_new(m, "fields", fo) != 0)
            goto out;
        for (size_t i = 0; i + 1 < e->fields->elements; i += 2) {
            const redisReply *k = e->fields->element[i], *v = e->fields->element[i + 1];
            if (!is_str(k) || !is_str(v) || str_is(k, r->field))
                continue;
            if (!pb_utf8_valid(k->str, k->len) || memchr(k->str, 0, k->len) ||
                !pb_utf8_valid(v->str, v->len) || json_object_getn(fo, k->str, k->len))
                continue;
            if (json_object_setn_new(fo, k->str, k->len, json_stringn(v->str, v->len)) != 0)
                goto out;
        }
    }
    text = json_dumps(m, JSON_COMPACT);
out:
    json_decref(m);
    if (text)
        *len = strlen(text);
    return text;
}

static const redisReply *field_value(const redisReply *f, const char *name)
{
    for (size_t i = 0; f && i + 1 < f->elements; i += 2)
        if (str_is(f->element[i], name) && is_str(f->element[i + 1]))
            return f->element[i + 1];
    return NULL;
}

static bool key_ok(const char *s, size_t n)
{
    if (n == 0 || n > PB_ITEM_KEY_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] <= 0x20 || s[i] >= 0x7f)
            return false;
    return true;
}

/* Fill item and p from e. Returns 0, or PB_ENOMEM. */
static int prepare_item(struct in_rs *r, const struct entry *e, struct pb_item *it, struct prep *p)
{
    size_t mlen = 0;
    memset(it, 0, sizeof(*it));
    p->meta = NULL;
    p->body = NULL;
    p->reason[0] = 0;
    snprintf(p->key, sizeof(p->key), "%s:%s", r->stream, e->id);
    if (r->key_field) {
        const redisReply *k = field_value(e->fields, r->key_field);
        if (k && key_ok(k->str, k->len)) {
            memcpy(p->key, k->str, k->len);
            p->key[k->len] = 0;
        }
    }
    it->key = p->key;
    p->meta = entry_meta(r, e, &mlen);
    if (!p->meta)
        return PB_ENOMEM;
    it->meta = p->meta;
    it->meta_len = mlen;
    it->content_type = r->format == 1 ? "application/octet-stream" : "application/json";
    if (!e->fields) {
        snprintf(p->reason, sizeof(p->reason),
                 "entry %s was deleted from stream \"%s\" (XDEL or MAXLEN) before it was taken",
                 e->id, r->stream);
        it->body = "";
        it->len = 0;
        it->dead_reason = p->reason;
        return 0;
    }
    const redisReply *b = r->whole_entry ? NULL : field_value(e->fields, r->field);
    if (!b) {
        char why[160] = "";
        json_t *o = entry_object(e->fields, why, sizeof(why));
        if (o) {
            p->body = json_dumps(o, JSON_COMPACT);
            json_decref(o);
            if (!p->body)
                return PB_ENOMEM;
        }
        if (!r->whole_entry)
            snprintf(p->reason, sizeof(p->reason), "entry has no field \"%s\"%s", r->field,
                     o ? " (the body kept here is the whole entry)" : "");
        else if (!o)
            snprintf(p->reason, sizeof(p->reason), "%s", why);
        it->body = p->body ? p->body : "";
        it->len = p->body ? strlen(p->body) : 0;
        if (p->reason[0])
            it->dead_reason = p->reason;
        return 0;
    }
    if (b->len > r->max_body) {
        snprintf(p->reason, sizeof(p->reason),
                 "body of %zu bytes is larger than max_body (%llu bytes); the entry stays in the "
                 "stream as %s",
                 b->len, (unsigned long long)r->max_body, e->id);
        it->body = "";
        it->len = 0;
        it->dead_reason = p->reason;
        return 0;
    }
    it->body = b->str;
    it->len = b->len;
    if (r->format == 0) {
        struct pb_json_check chk = {0};
        if (pb_json_validate(b->str, b->len, &chk) != 0) {
            snprintf(p->reason, sizeof(p->reason), "invalid JSON: %s at byte %zu",
                     chk.err_reason ? chk.err_reason : "malformed", chk.err_offset);
            it->dead_reason = p->reason;
        }
    }
    return 0;
}

static void tick(struct in_rs *r);

static void ack(struct in_rs *r, const struct batch *b)
{
    if (!r->rc) {
        r->rescan = true; /* read again once connected; their keys drop the repeats */
        return;
    }
    const char **argv = malloc((b->n + 3) * sizeof(*argv));
    if (!argv) {
        r->rescan = true;
        return;
    }
    argv[0] = "XACK";
    argv[1] = r->stream;
    argv[2] = r->group;
    for (size_t i = 0; i < b->n; i++)
        argv[3 + i] = b->ids[i];
    redisReply *rep = redisCommandArgv(r->rc, (int)(b->n + 3), argv, NULL);
    free(argv);
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        r->rescan = true;
        failed(r, "XACK", rep);
    } else {
        set_healthy(r);
    }
    if (rep)
        freeReplyObject(rep);
}

static void submit_cb(void *arg, int status, const struct pb_item_result *res, size_t n)
{
    struct batch *b = arg;
    struct in_rs *r = b->r;
    (void)res;
    (void)n;
    r->inflight--;
    if (status == 0) {
        ack(r, b);
        int64_t us = pb_mono_us() - b->read_us;
        for (size_t i = 0; i < b->n; i++)
            pb_input_observe_latency(r->in, us);
    } else {
        /* Not committed: the entries stay pending here and are read again. */
        pb_input_count_nacked(r->in, b->n);
        PB_WARN("redis_streams: entries not committed pipeline=%s count=%zu error=\"%s\" (read "
                "again from the pending list)",
                r->pipeline, b->n, pb_strerror(status));
        r->rescan = true;
        int64_t later = pb_loop_now(r->loop) + FAILED_COMMIT_PAUSE_MS;
        if (later > r->not_before)
            r->not_before = later;
    }
    free(b);
    arm(r, 0);
}

/* Submit entries; they stay pending at Redis until their callback acks
 * them. Returns the number submitted (0 when refused: read again later). */
static size_t submit_entries(struct in_rs *r, const struct entry *es, size_t n)
{
    struct pb_item *items = calloc(n, sizeof(*items));
    struct prep *preps = calloc(n, sizeof(*preps));
    struct batch *b = malloc(sizeof(*b) + n * sizeof(b->ids[0]));
    size_t done = 0;
    int rc = PB_ENOMEM;

    if (!items || !preps || !b)
        goto out;
    for (; done < n; done++) {
        if (prepare_item(r, &es[done], &items[done], &preps[done]) != 0)
            goto out;
        snprintf(b->ids[done], sizeof(b->ids[0]), "%s", es[done].id);
    }
    b->r = r;
    b->n = n;
    b->read_us = pb_mono_us();
    rc = pb_input_submit(r->in, items, n, NULL, 0, submit_cb, b);
out:
    if (preps)
        for (size_t i = 0; i < n; i++) {
            free(preps[i].meta);
            free(preps[i].body);
        }
    free(items);
    free(preps);
    if (rc == 0) {
        r->inflight++;
        return n;
    }
    free(b);
    /* They are pending here: read them again from the pending list later
     * (PB_EFULL: after resume; anything else: after a pause). */
    r->rescan = true;
    if (rc != PB_EFULL && rc != PB_ESHUTDOWN) {
        PB_WARN("redis_streams: submit failed pipeline=%s count=%zu error=\"%s\"", r->pipeline, n,
                pb_strerror(rc));
        r->not_before = pb_loop_now(r->loop) + FAILED_COMMIT_PAUSE_MS;
        arm(r, FAILED_COMMIT_PAUSE_MS);
    }
    return 0;
}

/* ---- reading -------------------------------------------------------------------------------- */

/* Entries of a reply list ([[id, [f, v, ...]], ...]) into es (up to max). */
static size_t parse_entries(const redisReply *list, struct entry *es, size_t max)
{
    size_t n = 0;
    if (!list || list->type != REDIS_REPLY_ARRAY)
        return 0;
    for (size_t i = 0; i < list->elements && n < max; i++) {
        const redisReply *e = list->element[i];
        if (!e || e->type != REDIS_REPLY_ARRAY || e->elements < 2 || !is_str(e->element[0]) ||
            e->element[0]->len >= RS_ID_MAX)
            continue;
        const redisReply *f = e->element[1];
        es[n].id = e->element[0]->str;
        es[n].fields = f && f->type == REDIS_REPLY_ARRAY ? f : NULL;
        es[n].delivery_count = 0;
        n++;
    }
    return n;
}

/* Order of two entry ids ("<ms>-<seq>"). */
static int id_cmp(const char *a, const char *b)
{
    char *ea, *eb;
    unsigned long long ma = strtoull(a, &ea, 10), mb = strtoull(b, &eb, 10);
    if (ma != mb)
        return ma < mb ? -1 : 1;
    unsigned long long sa = *ea == '-' ? strtoull(ea + 1, NULL, 10) : 0;
    unsigned long long sb = *eb == '-' ? strtoull(eb + 1, NULL, 10) : 0;
    return sa < sb ? -1 : sa > sb;
}

/* Delivery counts of entries now in our pending list (after a history read
 * or a claim; es in id order), from XPENDING; left unknown when it fails. */
static int delivery_counts(struct in_rs *r, struct entry *es, size_t n)
{
    char count[24];
    if (n == 0)
        return 0;
    /* Our other pending entries in the range (those in flight) come too. */
    snprintf(count, sizeof(count), "%lld", (long long)n + MAX_INFLIGHT * r->batch + 1);
    const char *argv[] = {"XPENDING",   r->stream, r->group,        es[0].id,
                          es[n - 1].id, count,     r->consumer_name};
    redisReply *rep = redisCommandArgv(r->rc, 7, argv, NULL);
    if (!rep) {
        failed(r, "XPENDING", NULL);
        return PB_ENET;
    }
    size_t j = 0;
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i < rep->elements && j < n; i++) {
        const redisReply *p = rep->element[i];
        char id[RS_ID_MAX];
        if (!p || p->type != REDIS_REPLY_ARRAY || p->elements < 4 || !is_str(p->element[0]) ||
            p->element[0]->len >= RS_ID_MAX || p->element[3]->type != REDIS_REPLY_INTEGER)
            continue;
        memcpy(id, p->element[0]->str, p->element[0]->len);
        id[p->element[0]->len] = 0;
        while (j < n && id_cmp(es[j].id, id) < 0)
            j++;
        if (j < n && id_cmp(es[j].id, id) == 0)
            es[j++].delivery_count = p->element[3]->integer;
    }
    freeReplyObject(rep);
    return 0;
}

/* XREADGROUP: our own pending entries after the cursor (history), or new
 * ones (>). Returns 1 when entries went to the core, 0 when there were
 * none, -1 on failure (handled). */
static int read_group(struct in_rs *r, bool history, bool block)
{
    char count[24], blockms[24];
    const char *argv[12];
    int argc = 0;
    snprintf(count, sizeof(count), "%lld", (long long)r->batch);
    snprintf(blockms, sizeof(blockms), "%lld", (long long)r->block_ms);
    argv[argc++] = "XREADGROUP";
    argv[argc++] = "GROUP";
    argv[argc++] = r->group;
    argv[argc++] = r->consumer_name;
    argv[argc++] = "COUNT";
    argv[argc++] = count;
    if (block) {
        argv[argc++] = "BLOCK";
        argv[argc++] = blockms;
    }
    argv[argc++] = "STREAMS";
    argv[argc++] = r->stream;
    argv[argc++] = history ? r->cursor : ">";
    redisReply *rep = redisCommandArgv(r->rc, argc, argv, NULL);
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        if (rep && rs_reply_is(rep, "NOGROUP") && r->create_group) {
            /* The stream or the group was deleted: make it again. */
            struct pb_err err = {0};
            freeReplyObject(rep);
            if (create_group(r, &err) != 0) {
                failed_msg(r, err.msg, err.code == PB_ENET);
                return -1;
            }
            return 0;
        }
        failed(r, "XREADGROUP", rep);
        if (rep)
            freeReplyObject(rep);
        return -1;
    }
    set_healthy(r);
    struct entry *es = NULL;
    size_t n = 0;
    const redisReply *list = NULL;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements >= 1) {
        const redisReply *s = rep->element[0];
        if (s && s->type == REDIS_REPLY_ARRAY && s->elements >= 2)
            list = s->element[1];
    }
    int out = 0;
    if (list && list->type == REDIS_REPLY_ARRAY && list->elements) {
        es = calloc(list->elements, sizeof(*es));
        if (!es) {
            r->rescan = true;
            out = -1;
            goto done;
        }
        n = parse_entries(list, es, list->elements);
    }
    if (n == 0)
        goto done;
    pb_input_count_received(r->in, n);
    if (history) {
        snprintf(r->cursor, sizeof(r->cursor), "%s", es[n - 1].id);
        if (delivery_counts(r, es, n) != 0) {
            out = -1;
            goto done;
        }
    } else {
        for (size_t i = 0; i < n; i++)
            es[i].delivery_count = 1;
    }
    out = submit_entries(r, es, n) ? 1 : -1;
done:
    free(es);
    freeReplyObject(rep);
    return out;
}

/* XAUTOCLAIM one page of entries idle longer than claim_idle at any
 * consumer of the group. Returns 1 when entries went to the core, 0 when
 * none did, -1 on failure (handled). A round ends when the cursor is back
 * at 0-0; the next one starts claim_every_ms later. */
static int claim(struct in_rs *r)
{
    char idle[24], count[24];
    snprintf(idle, sizeof(idle), "%lld", (long long)r->claim_idle_ms);
    snprintf(count, sizeof(count), "%lld", (long long)r->batch);
    const char *argv[] = {"XAUTOCLAIM", r->stream,       r->group, r->consumer_name,
                          idle,         r->claim_cursor, "COUNT",  count};
    redisReply *rep = redisCommandArgv(r->rc, 8, argv, NULL);
    int64_t now = pb_loop_now(r->loop);
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        if (rep && (rs_reply_is(rep, "NOGROUP") || rs_reply_is(rep, "ERR"))) {
            /* No group yet: try later. A Redis before 6.2 has no XAUTOCLAIM:
             * say so once, and claim nothing. */
            char txt[256];
            rs_error_text(r->rc, rep, txt, sizeof(txt));
            if (strstr(txt, "unknown command")) {
                r->claim_off = true;
                PB_WARN("redis_streams: this Redis has no XAUTOCLAIM (6.2+): entries pending at "
                        "a dead consumer are not taken over pipeline=%s",
                        r->pipeline);
            } else if (!rs_reply_is(rep, "NOGROUP")) {
                PB_WARN("redis_streams: XAUTOCLAIM failed pipeline=%s error=\"%s\"", r->pipeline,
                        txt);
            }
            freeReplyObject(rep);
            r->claim_due = now + r->claim_every_ms;
            return 0;
        }
        failed(r, "XAUTOCLAIM", rep);
        if (rep)
            freeReplyObject(rep);
        return -1;
    }
    set_healthy(r);
    int out = 0;
    struct entry *es = NULL;
    size_t n = 0;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 2 || !is_str(rep->element[0]) ||
        rep->element[0]->len >= RS_ID_MAX) {
        r->claim_due = now + r->claim_every_ms;
        goto done;
    }
    const redisReply *list = rep->element[1];
    const redisReply *gone = rep->elements >= 3 ? rep->element[2] : NULL;
    size_t cap = (list && list->type == REDIS_REPLY_ARRAY ? list->elements : 0) +
                 (gone && gone->type == REDIS_REPLY_ARRAY ? gone->elements : 0);
    memcpy(r->claim_cursor, rep->element[0]->str, rep->element[0]->len);
    r->claim_cursor[rep->element[0]->len] = 0;
    if (strcmp(r->claim_cursor, "0-0") == 0)
        r->claim_due = now + r->claim_every_ms;
    if (cap == 0)
        goto done;
    es = calloc(cap, sizeof(*es));
    if (!es) {
        out = -1;
        goto done;
    }
    n = parse_entries(list, es, cap);
    size_t nclaimed = n;
    if (n && delivery_counts(r, es, n) != 0) {
        out = -1;
        goto done;
    }
    /* Redis 7 lists the claimed ids whose entries are gone (and drops them
     * from the pending list): they become dead letters, visibly. */
    for (size_t i = 0; gone && gone->type == REDIS_REPLY_ARRAY && i < gone->elements; i++) {
        const redisReply *g = gone->element[i];
        if (!is_str(g) || g->len >= RS_ID_MAX)
            continue;
        es[n++] = (struct entry){.id = g->str};
    }
    if (n == 0)
        goto done;
    PB_INFO("redis_streams: claimed idle entries pipeline=%s stream=%s count=%zu deleted=%zu",
            r->pipeline, r->stream, nclaimed, n - nclaimed);
    pb_input_count_received(r->in, n);
    out = submit_entries(r, es, n) ? 1 : -1;
done:
    free(es);
    freeReplyObject(rep);
    return out;
}

/* ---- lag ------------------------------------------------------------------------------------ */

static const redisReply *map_get(const redisReply *m, const char *key)
{
    for (size_t i = 0; m && m->type == REDIS_REPLY_ARRAY && i + 1 < m->elements; i += 2)
        if (str_is(m->element[i], key))
            return m->element[i + 1];
    return NULL;
}

/* Entries after id, counted up to LAG_SCAN_MAX (when Redis does not say). */
static long long count_after(struct in_rs *r, const char *id)
{
    char start[RS_ID_MAX + 2], count[24];
    snprintf(start, sizeof(start), "(%s", id);
    snprintf(count, sizeof(count), "%d", LAG_SCAN_MAX);
    const char *argv[] = {"XRANGE", r->stream, start, "+", "COUNT", count};
    redisReply *rep = redisCommandArgv(r->rc, 6, argv, NULL);
    long long n = -1;
    if (!rep)
        failed(r, "XRANGE", NULL);
    else if (rep->type == REDIS_REPLY_ARRAY)
        n = (long long)rep->elements;
    if (rep)
        freeReplyObject(rep);
    return n;
}

/* XINFO GROUPS: the lag is what the group has not finished with - entries
 * not yet delivered to it plus its pending entries (the PEL). */
static void update_lag(struct in_rs *r)
{
    const char *argv[] = {"XINFO", "GROUPS", r->stream};
    r->lag_due = pb_loop_now(r->loop) + LAG_INTERVAL_MS;
    redisReply *rep = redisCommandArgv(r->rc, 3, argv, NULL);
    if (!rep) {
        failed(r, "XINFO GROUPS", NULL);
        return;
    }
    const redisReply *g = NULL;
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++)
        if (str_is(map_get(rep->element[i], "name"), r->group))
            g = rep->element[i];
    const redisReply *pending = map_get(g, "pending");
    const redisReply *last = map_get(g, "last-delivered-id");
    const redisReply *lag = map_get(g, "lag");
    if (!g || !pending || pending->type != REDIS_REPLY_INTEGER || !is_str(last) ||
        last->len >= RS_ID_MAX) {
        pb_input_set_lag(r->in, -1);
        goto out;
    }
    char last_id[RS_ID_MAX];
    memcpy(last_id, last->str, last->len);
    last_id[last->len] = 0;
    long long undelivered = -1;
    if (lag && lag->type == REDIS_REPLY_INTEGER)
        undelivered = lag->integer;
    else
        undelivered = count_after(r, last_id); /* Redis < 7, or a lag it cannot tell */
    pb_input_set_lag(r->in, undelivered >= 0 ? undelivered + pending->integer : -1);
    char pos[160];
    snprintf(pos, sizeof(pos), "%s (pending %lld, undelivered %lld)", last_id,
             (long long)pending->integer, undelivered);
    pb_input_set_position(r->in, pos);
out:
    freeReplyObject(rep);
}

/* ---- the loop ------------------------------------------------------------------------------- */

static void tick(struct in_rs *r)
{
    if (r->stopped || r->paused)
        return;
    int64_t now = pb_loop_now(r->loop);
    if (now < r->not_before) {
        arm(r, r->not_before - now);
        return;
    }
    if (!r->rc) {
        struct pb_err err = {0};
        if (connect_now(r, &err) != 0) {
            failed_msg(r, err.msg, true);
            return;
        }
        set_healthy(r);
    }
    if (r->inflight >= MAX_INFLIGHT)
        return; /* a callback ticks again */
    if (now >= r->lag_due) {
        update_lag(r);
        if (!r->rc)
            return;
    }
    if (r->rescan) {
        if (r->inflight > 0)
            return; /* what is in flight is acked first */
        r->rescan = false;
        r->history = true;
        snprintf(r->cursor, sizeof(r->cursor), "0");
    }
    int got;
    if (r->history) {
        got = read_group(r, true, false);
        if (got == 0)
            r->history = false; /* our pending entries are all read: new ones next */
        if (got >= 0)
            arm(r, 0);
        return;
    }
    if (r->claim_idle_ms > 0 && !r->claim_off && now >= r->claim_due) {
        got = claim(r);
        if (got >= 0)
            arm(r, 0);
        return;
    }
    /* Block only when no callback is due: an XACK never waits behind it. */
    bool block = r->inflight == 0;
    got = read_group(r, false, block);
    if (got > 0 || (got == 0 && block))
        arm(r, 0);
}

static void timer_cb(struct pb_loop_timer *t, void *arg)
{
    (void)t;
    tick(arg);
}

/* ---- the plugin ----------------------------------------------------------------------------- */

static int rs_start(void *ctx, struct pb_input *in, struct pb_err *err)
{
    struct in_rs *r = ctx;
    r->in = in;
    r->loop = pb_input_loop(in);
    int rc = connect_now(r, err);
    if (rc)
        return rc;
    r->timer = pb_loop_timer_create(r->loop, timer_cb, r);
    if (!r->timer) {
        redisFree(r->rc);
        r->rc = NULL;
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    }
    r->healthy = true;
    arm(r, 0);
    return 0;
}

static void rs_pause(void *ctx)
{
    struct in_rs *r = ctx;
    r->paused = true;
    if (r->timer)
        pb_loop_timer_stop(r->timer);
}

static void rs_resume(void *ctx)
{
    struct in_rs *r = ctx;
    r->paused = false;
    arm(r, 0);
}

/* Stop reading; the connection stays for the callbacks' XACKs. */
static void rs_stop(void *ctx)
{
    struct in_rs *r = ctx;
    r->stopped = true;
    pb_loop_timer_destroy(r->timer);
    r->timer = NULL;
}

static void rs_destroy(void *ctx)
{
    struct in_rs *r = ctx;
    if (r->rc)
        redisFree(r->rc);
    r->rc = NULL;
    rs_target_cleanup(&r->target);
}

const struct pb_input_plugin pb_in_redis_streams = {
    .name = "redis_streams",
    .fields = rs_fields,
    .ctx_size = sizeof(struct in_rs),
    .flags = PB_INPUT_OWN_THREAD,
    .init = rs_init,
    .start = rs_start,
    .stop = rs_stop,
    .pause = rs_pause,
    .resume = rs_resume,
    .destroy = rs_destroy,
};
