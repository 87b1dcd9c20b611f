/* cdc.c - the `postgres_cdc` input: PostgreSQL's changes, read from a
 * logical replication slot with the pgoutput plugin.
 *
 *   postgres_cdc:
 *     dsn: "postgres://erp:${ERP_PW}@db.internal/erp"
 *     slot: patchbay
 *     publication: erp
 *     tables: [public.customers, public.orders]
 *     snapshot: initial
 *     heartbeat: 1m
 *
 * Each change is a message {op, schema, table, key, before, after, lsn,
 * commit_lsn, commit_time, xid} with values typed as the `sql` input types
 * them. A transaction's changes are committed to the state store together
 * (one submit, with the stream position after the transaction as the
 * checkpoint; several small transactions may share a submit; one larger
 * than PB_SUBMIT_MAX changes is committed in parts, the checkpoint moving
 * only with its last). Only once that commit is durable is the position
 * confirmed to PostgreSQL as flushed, so the slot keeps every change not
 * yet committed. After a restart the stream resumes from the committed
 * position; a transaction seen again is skipped, and each change's
 * idempotency key "pg:<commit_lsn>:<n>" drops any repeat.
 *
 * Its default ordering key is the table and the primary key, so the
 * changes of one row reach every output in commit order without an
 * `ordering` setting.
 *
 * The state machine (one submit in flight at any time, so the stored
 * checkpoint never passes changes that are not stored):
 *   DOWN      -> connect, make the publication, look at slot and checkpoint
 *   CKPT_WAIT -> a checkpoint commits ("snapshot" before the slot is made,
 *                "stream" at the slot's consistent point), then goes on
 *   SNAPSHOT  -> the tables, read in the snapshot exported with the slot
 *   STREAM    -> START_REPLICATION; keepalives answered, status updates
 *                every status_interval, a heartbeat every `heartbeat`.
 * Any error closes both sessions and starts again from DOWN after a
 * backoff, once the submit in flight has called back.
 *
 * Thread model: PB_INPUT_OWN_THREAD: libpq blocks on the input's own loop
 * thread, where the timers, the socket watch, the submit callbacks, pause,
 * resume and stop all run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cdc_int.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_loop.h"
#include "patchbay/pb_time.h"

#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 30000
#define TICK_MS 1000
#define LAG_EVERY_MS 5000

static const char *const snapshot_choices[] = {"initial", "never", NULL};
static const char *const decimal_choices[] = {"string", "number", NULL};

static const struct pb_field outbound_fields[] = {
    {.name = "allow",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct cdc_outbound, allow),
     .doc = "hosts, addresses or CIDRs the outbound guard lets through"},
    {0},
};

static const struct pb_field cdc_fields[] = {
    {.name = "dsn",
     .type = PB_F_SECRET,
     .offset = offsetof(struct in_cdc, dsn),
     .flags = PB_FIELD_REQUIRED | PB_FIELD_URL,
     .doc = "postgres://user:pw@host:5432/db (a user with the REPLICATION attribute)"},
    {.name = "slot",
     .type = PB_F_STR,
     .offset = offsetof(struct in_cdc, slot),
     .def = "patchbay",
     .doc = "the logical replication slot (created if absent)"},
    {.name = "publication",
     .type = PB_F_STR,
     .offset = offsetof(struct in_cdc, publication),
     .def = "patchbay",
     .doc = "the publication (created for tables if absent)"},
    {.name = "tables",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct in_cdc, tables),
     .doc = "tables of a publication made here (none: FOR ALL TABLES)"},
    {.name = "snapshot",
     .type = PB_F_ENUM,
     .offset = offsetof(struct in_cdc, snapshot),
     .choices = snapshot_choices,
     .def = "initial",
     .doc = "initial: the tables' rows first, then the changes after them; never: changes only"},
    {.name = "heartbeat",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_cdc, heartbeat_ms),
     .def = "1m",
     .doc = "pg_logical_emit_message this often, so an idle slot's WAL is released (0: off)"},
    {.name = "status_interval",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_cdc, status_interval_ms),
     .def = "10s",
     .doc = "standby status updates at least this often"},
    {.name = "decimal",
     .type = PB_F_ENUM,
     .offset = offsetof(struct in_cdc, decimal),
     .choices = decimal_choices,
     .def = "string",
     .doc = "numeric (and integers beyond 2^53) as JSON strings or numbers"},
    {.name = "snapshot_batch",
     .type = PB_F_INT,
     .offset = offsetof(struct in_cdc, snapshot_batch),
     .def = "1000",
     .min = 1,
     .max = PB_SUBMIT_MAX,
     .doc = "rows per commit while reading the snapshot"},
    {.name = "connect_timeout",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_cdc, connect_timeout_ms),
     .def = "10s"},
    {.name = "idempotency_window",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_cdc, window_ms),
     .def = "7d",
     .doc = "how long a change's key is remembered"},
    {.name = "outbound",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct in_cdc, outbound),
     .sub = outbound_fields,
     .doc = "allow: added to the top-level outbound.allow for this input"},
    {0},
};

/* ---- init --------------------------------------------------------------------------------------
 */

static bool ident_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return false;
    return true;
}

static int cdc_init(void *ctx, struct pb_input_env *env, struct pb_err *err)
{
    struct in_cdc *c = ctx;
    int rc = sql_target_init(&c->target, SQL_POSTGRES, c->dsn, err);
    if (rc)
        return rc;
    if (!ident_ok(c->slot))
        return pb_err_set(err, PB_ECONFIG,
                          "slot: 1-63 of a-z, 0-9 and _ (PostgreSQL's rule for slot names)");
    if (strlen(c->publication) == 0 || strlen(c->publication) > 63 || strchr(c->publication, '"'))
        return pb_err_set(err, PB_ECONFIG, "publication: a name of 1-63 characters");
    for (size_t i = 0; i < c->tables.n; i++)
        if (!*c->tables.items[i] || strlen(c->tables.items[i]) > 127 ||
            strchr(c->tables.items[i], '"'))
            return pb_err_set(err, PB_ECONFIG, "tables: names like schema.table");
    if (c->heartbeat_ms != 0 && c->heartbeat_ms < 100)
        return pb_err_set(err, PB_ECONFIG, "heartbeat: at least 100ms (or 0: off)");
    if (c->status_interval_ms < 100 || c->status_interval_ms > 3600000)
        return pb_err_set(err, PB_ECONFIG, "status_interval: 100ms-1h");
    struct pb_allowlist *own = pb_allowlist_create(&c->outbound.allow, err);
    if (!own)
        return err->code ? err->code : PB_ECONFIG;
    c->allow = pb_allowlist_merge(env->allow, own);
    pb_allowlist_destroy(own);
    if (!c->allow)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    c->fmt.decimal_number = c->decimal == 1;
    snprintf(c->pipeline, sizeof(c->pipeline), "%s", env->pipeline);
    env->idempotency_window_ms = c->window_ms;
    /* the changes of one row in commit order, whatever the outputs do */
    env->ordering_key = "[.schema, .table, .key] | tojson";
    return 0;
}

/* ---- state --------------------------------------------------------------------------------------
 */

void cdc_arm(struct in_cdc *c, int64_t ms)
{
    if (c->timer && !c->stopped)
        pb_loop_timer_start(c->timer, ms);
}

static void items_drop(struct in_cdc *c)
{
    for (size_t i = 0; i < c->nitems; i++) {
        free(c->items[i].body);
        free(c->items[i].meta);
        free(c->items[i].dead);
    }
    c->nitems = c->bytes = 0;
    c->nmarks = 0;
}

static void close_all(struct in_cdc *c)
{
    pb_loop_watch_remove(c->watch);
    c->watch = NULL;
    sql_close(c->repl);
    c->repl = NULL;
    sql_close(c->sqlc);
    c->sqlc = NULL;
    pgo_decoder_free(&c->dec);
    cdc_snap_free(c);
    items_drop(c);
    c->in_txn = c->skip_txn = false;
    c->blocked = false;
}

void cdc_fail(struct in_cdc *c, const char *what, const char *detail)
{
    char d[700];
    snprintf(d, sizeof(d), "%s: %.600s", what, detail ? detail : "");
    pb_input_set_state(c->in, PB_INPUT_RECONNECTING, d);
    close_all(c);
    c->gen++; /* what is in flight belongs to the old session */
    c->phase = CDC_DOWN;
    c->backoff_ms = c->backoff_ms ? c->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (c->backoff_ms > BACKOFF_MAX_MS)
        c->backoff_ms = BACKOFF_MAX_MS;
    cdc_arm(c, c->backoff_ms / 2 + (int64_t)(pb_rand64() % (uint64_t)(c->backoff_ms / 2 + 1)));
}

void cdc_send_status(struct in_cdc *c, bool reply)
{
    if (!c->repl || c->phase != CDC_STREAM)
        return;
    uint8_t msg[34];
    int64_t now_pg = pb_now_ms() * 1000 - PGO_EPOCH_DIFF_US;
    uint64_t write = c->received > c->committed ? c->received : c->committed;
    pgo_status_update(msg, write, c->committed, c->committed, now_pg, reply);
    if (PQputCopyData(c->repl->pg, (const char *)msg, sizeof(msg)) != 1 ||
        PQflush(c->repl->pg) != 0) {
        cdc_fail(c, "status update", PQerrorMessage(c->repl->pg));
        return;
    }
    c->last_status = pb_loop_now(c->loop);
}

static void show_position(struct in_cdc *c)
{
    char lsn[32], pos[160];
    pgo_lsn_text(c->committed, lsn, sizeof(lsn));
    snprintf(pos, sizeof(pos), "slot=%s lsn=%s", c->slot, lsn);
    pb_input_set_position(c->in, pos);
}

/* ---- submits ------------------------------------------------------------------------------------
 */

int cdc_item_add(struct in_cdc *c, char *body, size_t len, const char *dead, const char *key,
                 const char *meta)
{
    if (c->nitems == c->icap) {
        size_t nc = c->icap ? c->icap * 2 : 256;
        struct cdc_item *v = realloc(c->items, nc * sizeof(*v));
        if (!v)
            return PB_ENOMEM;
        c->items = v;
        c->icap = nc;
    }
    struct cdc_item *it = &c->items[c->nitems];
    memset(it, 0, sizeof(*it));
    it->meta = strdup(meta);
    it->dead = dead ? strdup(dead) : NULL;
    if (!it->meta || (dead && !it->dead)) {
        free(it->meta);
        free(it->dead);
        return PB_ENOMEM;
    }
    it->body = body;
    it->len = len;
    snprintf(it->key, sizeof(it->key), "%s", key);
    c->nitems++;
    c->bytes += len;
    return 0;
}

static void after_commit(struct in_cdc *c)
{
    switch (c->phase) {
    case CDC_CKPT_WAIT:
        cdc_setup_continue(c);
        break;
    case CDC_SNAPSHOT:
        cdc_arm(c, 0);
        break;
    case CDC_STREAM:
        if (c->blocked || c->nitems) {
            /* read on from where the full buffer stopped */
            cdc_arm(c, 0);
        }
        break;
    default:
        break;
    }
}

static void submit_cb(void *arg, int status, const struct pb_item_result *res, size_t n)
{
    struct in_cdc *c = arg;
    (void)res;
    (void)n;
    c->submitting = false;
    bool current = c->sub_gen == c->gen;
    if (status == 0 && c->sub_lsn > c->committed) {
        c->committed = c->sub_lsn;
        c->have_ckpt = true;
        show_position(c);
    }
    if (c->stopped)
        return;
    if (!current) {
        /* the session it came from is gone: reconnecting waits for this */
        return;
    }
    if (status != 0) {
        char d[128];
        snprintf(d, sizeof(d), "%s (read again from the last committed position)",
                 pb_strerror(status));
        cdc_fail(c, "commit", d);
        return;
    }
    /* the committed items leave the buffer; the marks move down */
    for (size_t i = 0; i < c->sub_n; i++) {
        free(c->items[i].body);
        free(c->items[i].meta);
        free(c->items[i].dead);
        c->bytes -= c->items[i].len;
    }
    /* a submit of a checkpoint alone took no items (and items may be NULL) */
    if (c->nitems > c->sub_n)
        memmove(c->items, c->items + c->sub_n, (c->nitems - c->sub_n) * sizeof(*c->items));
    c->nitems -= c->sub_n;
    /* a submit with a checkpoint took every transaction end up to it; one
     * without (a part of a large transaction) took none */
    size_t k = 0;
    for (size_t i = 0; i < c->nmarks; i++) {
        if (c->sub_lsn && c->marks[i].upto <= c->sub_n)
            continue;
        c->marks[k] = c->marks[i];
        c->marks[k].upto = c->marks[i].upto > c->sub_n ? c->marks[i].upto - c->sub_n : 0;
        k++;
    }
    c->nmarks = k;
    c->backoff_ms = 0;
    if (c->phase == CDC_STREAM && c->sub_lsn)
        cdc_send_status(c, false);
    if (!c->stopped)
        after_commit(c);
}

int cdc_submit(struct in_cdc *c, size_t n, uint64_t lsn, const char *phase)
{
    if (c->submitting)
        return PB_EAGAIN;
    struct pb_item *items = calloc(n ? n : 1, sizeof(*items));
    if (!items)
        return PB_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        struct cdc_item *it = &c->items[i];
        items[i] = (struct pb_item){.body = it->body,
                                    .len = it->len,
                                    .meta = it->meta,
                                    .meta_len = strlen(it->meta),
                                    .key = it->key,
                                    .dead_reason = it->dead};
    }
    char ck[256], l[32];
    struct pb_checkpoint cp = {.name = CDC_CKPT, .value = ck};
    if (phase) {
        pgo_lsn_text(lsn, l, sizeof(l));
        cp.len = (size_t)snprintf(
            ck, sizeof(ck), "{\"slot\":\"%s\",\"phase\":\"%s\",\"lsn\":\"%s\"}", c->slot, phase, l);
    }
    int rc = pb_input_submit(c->in, items, n, &cp, phase ? 1 : 0, submit_cb, c);
    free(items);
    if (rc == 0) {
        if (n)
            pb_input_count_received(c->in, n);
        c->submitting = true;
        c->sub_n = n;
        c->sub_lsn = phase && strcmp(phase, "stream") == 0 ? lsn : 0;
        c->sub_gen = c->gen;
    }
    return rc;
}

/* ---- timers
 * -------------------------------------------------------------------------------------- */

static void timer_cb(struct pb_loop_timer *t, void *arg)
{
    struct in_cdc *c = arg;
    (void)t;
    if (c->stopped)
        return;
    switch (c->phase) {
    case CDC_DOWN:
        if (c->submitting) {
            cdc_arm(c, 100); /* the old session's commit calls back first */
            return;
        }
        if (cdc_setup(c) == 0)
            c->backoff_ms = 0;
        return;
    case CDC_SNAPSHOT:
        if (!c->paused && !c->submitting)
            cdc_snapshot_step(c);
        return;
    case CDC_STREAM:
        if (!c->paused)
            cdc_stream_read(c);
        return;
    default:
        return;
    }
}

static void tick_cb(struct pb_loop_timer *t, void *arg)
{
    struct in_cdc *c = arg;
    int64_t now = pb_loop_now(c->loop);
    if (c->stopped)
        return;
    if (c->phase == CDC_STREAM) {
        if (now - c->last_status >= c->status_interval_ms)
            cdc_send_status(c, false);
        if (c->heartbeat_ms && now >= c->next_heartbeat && c->phase == CDC_STREAM) {
            c->next_heartbeat = now + c->heartbeat_ms;
            cdc_heartbeat(c);
        }
        if (now >= c->next_lag && c->phase == CDC_STREAM) {
            c->next_lag = now + LAG_EVERY_MS;
            cdc_lag(c);
        }
    }
    pb_loop_timer_start(t, TICK_MS);
}

/* ---- life cycle
 * ------------------------------------------------------------------------------------ */

static int cdc_start(void *ctx, struct pb_input *in, struct pb_err *err)
{
    struct in_cdc *c = ctx;
    c->in = in;
    c->loop = pb_input_loop(in);
    c->timer = pb_loop_timer_create(c->loop, timer_cb, c);
    c->tick = pb_loop_timer_create(c->loop, tick_cb, c);
    if (!c->timer || !c->tick)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    pb_input_set_lag(in, -1);
    pb_loop_timer_start(c->timer, 0);
    pb_loop_timer_start(c->tick, TICK_MS);
    return 0;
}

static void cdc_pause(void *ctx)
{
    struct in_cdc *c = ctx;
    c->paused = true;
    pb_loop_watch_remove(c->watch);
    c->watch = NULL;
}

static void cdc_resume(void *ctx)
{
    struct in_cdc *c = ctx;
    c->paused = false;
    if (c->phase == CDC_STREAM || c->phase == CDC_SNAPSHOT)
        cdc_arm(c, 0);
}

static void cdc_stop(void *ctx)
{
    struct in_cdc *c = ctx;
    /* a last status update: what was committed is confirmed */
    if (c->phase == CDC_STREAM && c->repl)
        cdc_send_status(c, false);
    c->stopped = true;
    pb_loop_timer_destroy(c->timer);
    c->timer = NULL;
    pb_loop_timer_destroy(c->tick);
    c->tick = NULL;
    pb_loop_watch_remove(c->watch);
    c->watch = NULL;
}

static void cdc_destroy(void *ctx)
{
    struct in_cdc *c = ctx;
    pb_loop_timer_destroy(c->timer);
    c->timer = NULL;
    pb_loop_timer_destroy(c->tick);
    c->tick = NULL;
    close_all(c);
    free(c->items);
    c->items = NULL;
    free(c->marks);
    c->marks = NULL;
    sql_target_cleanup(&c->target);
    pb_allowlist_destroy(c->allow);
    c->allow = NULL;
}

const struct pb_input_plugin pb_in_postgres_cdc = {
    .name = "postgres_cdc",
    .fields = cdc_fields,
    .ctx_size = sizeof(struct in_cdc),
    .flags = PB_INPUT_OWN_THREAD | PB_INPUT_SINGLETON,
    .init = cdc_init,
    .start = cdc_start,
    .stop = cdc_stop,
    .pause = cdc_pause,
    .resume = cdc_resume,
    .destroy = cdc_destroy,
};
