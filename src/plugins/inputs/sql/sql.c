/* sql.c - the `sql` input: a table polled with a cursor of columns.
 *
 *   sql:
 *     driver: postgres
 *     dsn: "postgres://erp:${ERP_PW}@db.internal/erp"
 *     query: |
 *       SELECT * FROM orders WHERE (updated_at, id) > (:updated_at, :id)
 *       ORDER BY updated_at, id LIMIT 500
 *     cursor: { columns: [updated_at, id], initial: ["1970-01-01", 0] }
 *     interval: 5s
 *
 * Each poll runs the query with the cursor's values bound to its named
 * parameters; every row becomes a message (a JSON object of its columns,
 * with exact types: sql_common.h). The cursor after a row is that row's
 * values of the cursor columns, so a cursor of a timestamp and a unique key
 * never loses rows that share a timestamp at a page boundary. The rows of a
 * page and the cursor after them commit together (chunks of up to
 * PB_SUBMIT_MAX rows, each with the cursor after its last row), so a crash
 * neither skips nor repeats; each row's idempotency key is its cursor
 * values, so a repeat would be dropped anyway. A page with rows is followed
 * by the next poll at once; an empty one waits `interval`.
 *
 * The query per driver and the page of rows it gives are in sql_page.c.
 *
 * Thread model: PB_INPUT_OWN_THREAD. The database client blocks, on the
 * input's own loop thread, where the poll timer, the submit callbacks,
 * pause, resume and stop all run: nothing needs a lock. One chunk is
 * committed at a time, so the checkpoint in the store only ever moves
 * forward over rows that are stored. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "patchbay/pb_crypto.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_loop.h"
#include "patchbay/pb_plugin.h"
#include "patchbay/pb_time.h"
#include "sql_common.h"
#include "sql_input.h"

#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 30000

static const char *const decimal_choices[] = {"string", "number", NULL};

static const struct pb_field outbound_fields[] = {
    {.name = "allow",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct outbound_conf, allow),
     .doc = "hosts, addresses or CIDRs the outbound guard lets through"},
    {0},
};

static const struct pb_field cursor_fields[] = {
    {.name = "columns",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct cursor_conf, columns),
     .flags = PB_FIELD_REQUIRED,
     .doc = "result columns whose values after a row are the cursor (e.g. [updated_at, id])"},
    {.name = "initial",
     .type = PB_F_NODE,
     .offset = offsetof(struct cursor_conf, initial),
     .flags = PB_FIELD_REQUIRED,
     .doc = "the cursor's values before the first row, one per column"},
    {0},
};

static const struct pb_field sql_fields[] = {
    {.name = "driver",
     .type = PB_F_STR,
     .offset = offsetof(struct in_sql, driver_name),
     .doc = "sqlite, postgres or mysql (default: from the dsn's scheme)"},
    {.name = "dsn",
     .type = PB_F_SECRET,
     .offset = offsetof(struct in_sql, dsn),
     .flags = PB_FIELD_REQUIRED | PB_FIELD_URL,
     .doc = "postgres://user:pw@host/db, mysql://user:pw@host/db or sqlite:/path"},
    {.name = "query",
     .type = PB_F_STR,
     .offset = offsetof(struct in_sql, query),
     .flags = PB_FIELD_REQUIRED,
     .doc = "SELECT with :name parameters for the cursor columns, ordered by them"},
    {.name = "cursor",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct in_sql, cursor),
     .flags = PB_FIELD_REQUIRED,
     .sub = cursor_fields},
    {.name = "interval",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_sql, interval_ms),
     .def = "5s",
     .doc = "wait after a poll that found no rows"},
    {.name = "decimal",
     .type = PB_F_ENUM,
     .offset = offsetof(struct in_sql, decimal),
     .choices = decimal_choices,
     .def = "string",
     .doc = "numeric/decimal (and integers beyond 2^53) as JSON strings or numbers"},
    {.name = "max_rows",
     .type = PB_F_INT,
     .offset = offsetof(struct in_sql, max_rows),
     .def = "10000",
     .min = 1,
     .max = 1000000,
     .doc = "rows taken from one poll at most (the rest come with the next)"},
    {.name = "max_row",
     .type = PB_F_SIZE,
     .offset = offsetof(struct in_sql, max_row),
     .def = "1MiB",
     .doc = "a row larger as JSON is dead-lettered"},
    {.name = "connect_timeout",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_sql, connect_timeout_ms),
     .def = "10s"},
    {.name = "timeout",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_sql, timeout_ms),
     .def = "60s",
     .doc = "longest a poll's query may run"},
    {.name = "idempotency_window",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_sql, window_ms),
     .def = "7d",
     .doc = "how long a row's key (its cursor values) is remembered"},
    {.name = "outbound",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct in_sql, outbound),
     .sub = outbound_fields,
     .doc = "allow: added to the top-level outbound.allow for this input"},
    {0},
};

/* ---- init ---------------------------------------------------------------------------------- */

static int initial_values(struct in_sql *s, struct pb_err *err)
{
    const struct pb_node *n = s->cursor.initial;
    if (n->type != PB_NODE_SEQ || n->n != s->ncols)
        return pb_err_at(err, PB_ECONFIG, n->file, n->line, n->col,
                         "cursor.initial must be a list of %zu value(s), one per column", s->ncols);
    for (size_t i = 0; i < n->n; i++) {
        const struct pb_node *v = n->vals[i];
        struct sql_cval *cv = &s->initial[i];
        if (v->type == PB_NODE_NULL ||
            (v->type == PB_NODE_SCALAR && !v->quoted && strcmp(v->str, "null") == 0)) {
            cv->kind = SQLC_NULL;
            continue;
        }
        if (v->type != PB_NODE_SCALAR)
            return pb_err_at(err, PB_ECONFIG, v->file, v->line, v->col,
                             "cursor.initial: a value (number or text)");
        cv->kind = !v->quoted && sql_is_number(v->str, v->len) ? SQLC_NUM : SQLC_TEXT;
        cv->text = strdup(v->str);
        cv->len = v->len;
        if (!cv->text)
            return pb_err_set(err, PB_ENOMEM, "out of memory");
    }
    return 0;
}

static int sql_init(void *ctx, struct pb_input_env *env, struct pb_err *err)
{
    struct in_sql *s = ctx;
    int d = sql_driver_index(s->driver_name);
    if (d == -2)
        return pb_err_set(err, PB_ECONFIG, "driver must be sqlite, postgres or mysql");
    int rc = sql_target_init(&s->target, d, s->dsn, err);
    if (rc)
        return rc;
    s->ncols = s->cursor.columns.n;
    if (s->ncols == 0 || s->ncols > MAX_CURSOR_COLS)
        return pb_err_set(err, PB_ECONFIG, "cursor.columns: 1-%d column names", MAX_CURSOR_COLS);
    for (size_t i = 0; i < s->ncols; i++)
        for (size_t j = 0; j < i; j++)
            if (strcmp(s->cursor.columns.items[i], s->cursor.columns.items[j]) == 0)
                return pb_err_set(err, PB_ECONFIG, "cursor.columns: %s twice",
                                  s->cursor.columns.items[i]);
    rc = initial_values(s, err);
    if (rc)
        return rc;
    rc = sql_params_find(&s->params, s->target.driver, s->query,
                         (const char *const *)s->cursor.columns.items, s->ncols, err);
    if (rc)
        return rc;
    if (s->params.n == 0)
        return pb_err_set(err, PB_ECONFIG,
                          "query: use the cursor, e.g. WHERE (updated_at, id) > (:updated_at, "
                          ":id) ORDER BY updated_at, id: without it every poll reads the same "
                          "rows");
    if (s->max_row < 64 || s->max_row > 64 * 1024 * 1024)
        return pb_err_set(err, PB_ECONFIG, "max_row: 64B-64MiB");
    struct pb_allowlist *own = pb_allowlist_create(&s->outbound.allow, err);
    if (!own)
        return err->code ? err->code : PB_ECONFIG;
    s->allow = pb_allowlist_merge(env->allow, own);
    pb_allowlist_destroy(own);
    if (!s->allow)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    s->fmt.decimal_number = s->decimal == 1;
    s->once = env->once;
    snprintf(s->pipeline, sizeof(s->pipeline), "%s", env->pipeline);
    env->idempotency_window_ms = s->window_ms;
    return 0;
}

/* ---- the cursor as a checkpoint -------------------------------------------------------------- */

/* {"columns":[...],"values":[["n","5"],["s","..."],["b","<base64>"],["z",null]]} */
static char *cursor_json(const struct in_sql *s, const struct sql_cval *cv)
{
    json_t *cols = json_array(), *vals = json_array();
    json_t *root = json_object();
    char *out = NULL;
    if (!cols || !vals || !root)
        goto out;
    for (size_t i = 0; i < s->ncols; i++) {
        json_array_append_new(cols, json_string(s->cursor.columns.items[i]));
        char k[2] = {cv[i].kind, 0};
        json_t *v;
        if (cv[i].kind == SQLC_NULL) {
            v = json_null();
        } else if (cv[i].kind == SQLC_BYTES) {
            size_t cap = 4 * ((cv[i].len + 2) / 3) + 1;
            char *b64 = malloc(cap);
            if (!b64)
                goto out;
            pb_base64_encode(cv[i].text, cv[i].len, false, b64, cap);
            v = json_string(b64);
            free(b64);
        } else {
            v = json_stringn(cv[i].text, cv[i].len);
        }
        json_array_append_new(vals, json_pack("[s,o]", k, v ? v : json_null()));
    }
    json_object_set(root, "columns", cols);
    json_object_set(root, "values", vals);
    out = json_dumps(root, JSON_COMPACT);
out:
    json_decref(cols);
    json_decref(vals);
    json_decref(root);
    return out;
}

static int cvals_copy(struct sql_cval *dst, const struct sql_cval *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        dst[i].kind = src[i].kind;
        dst[i].len = src[i].len;
        dst[i].text = NULL;
        if (src[i].text) {
            dst[i].text = malloc(src[i].len + 1);
            if (!dst[i].text) {
                sqlin_cvals_free(dst, i);
                return PB_ENOMEM;
            }
            memcpy(dst[i].text, src[i].text, src[i].len);
            dst[i].text[src[i].len] = 0;
        }
    }
    return 0;
}

/* Read the committed cursor; 1 when it was for other columns (ignored). */
static int cursor_load(struct in_sql *s, const void *v, size_t len, struct sql_cval *out)
{
    json_error_t je;
    json_t *root = json_loadb(v, len, 0, &je);
    json_t *cols = json_object_get(root, "columns"), *vals = json_object_get(root, "values");
    int rc = 1;
    if (!json_is_array(cols) || !json_is_array(vals) || json_array_size(cols) != s->ncols ||
        json_array_size(vals) != s->ncols)
        goto out;
    for (size_t i = 0; i < s->ncols; i++)
        if (!json_is_string(json_array_get(cols, i)) ||
            strcmp(json_string_value(json_array_get(cols, i)), s->cursor.columns.items[i]) != 0)
            goto out;
    for (size_t i = 0; i < s->ncols; i++) {
        json_t *e = json_array_get(vals, i);
        const char *k = json_string_value(json_array_get(e, 0));
        json_t *x = json_array_get(e, 1);
        if (!k || strlen(k) != 1 || !strchr("znsbt", k[0]) || (k[0] != 'z' && !json_is_string(x))) {
            sqlin_cvals_free(out, i);
            goto out;
        }
        out[i].kind = k[0];
        out[i].text = NULL;
        out[i].len = 0;
        if (k[0] == 'z')
            continue;
        const char *t = json_string_value(x);
        size_t tl = json_string_length(x);
        out[i].text = malloc(tl + 1);
        if (!out[i].text) {
            sqlin_cvals_free(out, i);
            rc = PB_ENOMEM;
            goto out;
        }
        if (k[0] == 'b') {
            size_t got = 0;
            if (pb_base64_decode(t, tl, false, (unsigned char *)out[i].text, tl + 1, &got) != 0) {
                sqlin_cvals_free(out, i + 1);
                goto out;
            }
            out[i].len = got;
        } else {
            memcpy(out[i].text, t, tl);
            out[i].len = tl;
        }
        out[i].text[out[i].len] = 0;
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

static void show_position(struct in_sql *s)
{
    char pos[512];
    size_t o = 0;
    for (size_t i = 0; i < s->ncols && o < sizeof(pos) - 1; i++) {
        const struct sql_cval *v = &s->cur[i];
        const char *t = v->kind == SQLC_NULL    ? "null"
                        : v->kind == SQLC_BYTES ? "(bytes)"
                                                : (v->text ? v->text : "");
        int w = snprintf(pos + o, sizeof(pos) - o, "%s%s=%.100s", i ? " " : "",
                         s->cursor.columns.items[i], t);
        if (w < 0)
            break;
        o += (size_t)w;
    }
    pb_input_set_position(s->in, pos);
}

/* ---- the poll loop --------------------------------------------------------------------------- */

static void submit_chunk(struct in_sql *s);

static void arm(struct in_sql *s, int64_t ms)
{
    if (s->timer && !s->stopped)
        pb_loop_timer_start(s->timer, ms);
}

static void failed(struct in_sql *s, const char *what, const char *detail, bool drop_conn)
{
    char d[640];
    snprintf(d, sizeof(d), "%s: %s", what, detail);
    pb_input_set_state(s->in, PB_INPUT_RECONNECTING, d);
    if (drop_conn) {
        sql_close(s->conn);
        s->conn = NULL;
    }
    s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (s->backoff_ms > BACKOFF_MAX_MS)
        s->backoff_ms = BACKOFF_MAX_MS;
    arm(s, s->backoff_ms / 2 + (int64_t)(pb_rand64() % (uint64_t)(s->backoff_ms / 2 + 1)));
}

static void poll_once(struct in_sql *s)
{
    char err[600] = "";
    if (s->stopped || s->paused || s->submitting || s->nrows)
        return;
    if (!s->conn) {
        struct pb_err e = {0};
        struct sql_connect_opts o = {.connect_timeout_ms = s->connect_timeout_ms,
                                     .statement_timeout_ms = s->timeout_ms,
                                     .read_only = true};
        s->conn = sql_connect(&s->target, s->allow, &o, &e);
        if (!s->conn) {
            failed(s, "connect", e.msg, false);
            return;
        }
        PB_INFO("sql: connected pipeline=%s dsn=%s", s->pipeline, s->target.shown);
    }
    char *q = sql_params_render(&s->params, s->query, s->target.driver, s->conn->my, s->cur);
    if (!q) {
        failed(s, "query", "out of memory", false);
        return;
    }
    int rc;
    switch (s->target.driver) {
    case SQL_POSTGRES:
        rc = sqlin_poll_pg(s, q, err, sizeof(err));
        break;
    case SQL_MYSQL:
        rc = sqlin_poll_my(s, q, err, sizeof(err));
        break;
    default:
        rc = sqlin_poll_lite(s, q, err, sizeof(err));
        break;
    }
    free(q);
    if (rc != 0) {
        sqlin_page_free(s);
        failed(s, "query", err, s->conn->kind == SQL_ERR_CONN);
        return;
    }
    s->backoff_ms = 0;
    pb_input_set_state(s->in, PB_INPUT_CONNECTED, NULL);
    if (s->nrows == 0) {
        if (s->once) {
            pb_input_finished(s->in);
            return;
        }
        arm(s, s->interval_ms);
        return;
    }
    pb_input_count_received(s->in, s->nrows);
    submit_chunk(s);
}

static void submit_cb(void *arg, int status, const struct pb_item_result *res, size_t n)
{
    struct in_sql *s = arg;
    (void)res;
    (void)n;
    s->submitting = false;
    if (s->stopped) {
        sqlin_page_free(s);
        return;
    }
    if (status != 0) {
        char d[128];
        snprintf(d, sizeof(d), "%s (the rows are read again)", pb_strerror(status));
        sqlin_page_free(s);
        failed(s, "commit", d, false);
        return;
    }
    /* the cursor after the chunk's last row is what the store holds now */
    struct sql_cval next[MAX_CURSOR_COLS];
    if (cvals_copy(next, s->rows[s->chunk_end - 1].cv, s->ncols) == 0) {
        sqlin_cvals_free(s->cur, s->ncols);
        memcpy(s->cur, next, sizeof(next[0]) * s->ncols);
    } else {
        /* Keep the old cursor: the next poll reads these rows again and
         * their keys drop them as duplicates. */
        sqlin_page_free(s);
        failed(s, "commit", "out of memory", false);
        return;
    }
    show_position(s);
    s->pos = s->chunk_end;
    if (s->pos < s->nrows) {
        submit_chunk(s);
        return;
    }
    sqlin_page_free(s);
    arm(s, 0); /* rows came: there may be more */
}

static void submit_chunk(struct in_sql *s)
{
    if (s->stopped || s->paused || s->submitting || s->pos >= s->nrows)
        return;
    size_t end = s->pos + PB_SUBMIT_MAX < s->nrows ? s->pos + PB_SUBMIT_MAX : s->nrows;
    struct pb_item *items = calloc(end - s->pos, sizeof(*items));
    char *ck = cursor_json(s, s->rows[end - 1].cv);
    int rc = PB_ENOMEM;
    if (items && ck) {
        for (size_t i = s->pos; i < end; i++) {
            struct row *r = &s->rows[i];
            items[i - s->pos] = (struct pb_item){.body = r->body,
                                                 .len = r->len,
                                                 .meta = r->meta,
                                                 .meta_len = strlen(r->meta),
                                                 .key = r->key,
                                                 .dead_reason = r->dead};
        }
        struct pb_checkpoint cp = {.name = CKPT_NAME, .value = ck, .len = strlen(ck)};
        rc = pb_input_submit(s->in, items, end - s->pos, &cp, 1, submit_cb, s);
    }
    free(items);
    free(ck);
    if (rc == 0) {
        s->submitting = true;
        s->chunk_end = end;
        return;
    }
    if (rc == PB_EFULL)
        return; /* paused by the core; resume submits the chunk */
    if (rc == PB_ESHUTDOWN) {
        sqlin_page_free(s);
        return;
    }
    sqlin_page_free(s);
    failed(s, "submit", pb_strerror(rc), false);
}

static void timer_cb(struct pb_loop_timer *t, void *arg)
{
    struct in_sql *s = arg;
    (void)t;
    if (s->nrows)
        submit_chunk(s);
    else
        poll_once(s);
}

static int sql_start(void *ctx, struct pb_input *in, struct pb_err *err)
{
    struct in_sql *s = ctx;
    const void *v;
    size_t len;
    s->in = in;
    if (pb_input_checkpoint(in, CKPT_NAME, &v, &len) == 0) {
        int rc = cursor_load(s, v, len, s->cur);
        if (rc == PB_ENOMEM)
            return pb_err_set(err, PB_ENOMEM, "out of memory");
        if (rc == 1) {
            PB_WARN("sql: the stored cursor is for other columns: starting from cursor.initial "
                    "(rows read before are dropped as duplicates within idempotency_window) "
                    "pipeline=%s",
                    s->pipeline);
            if (cvals_copy(s->cur, s->initial, s->ncols) != 0)
                return pb_err_set(err, PB_ENOMEM, "out of memory");
        }
    } else if (cvals_copy(s->cur, s->initial, s->ncols) != 0) {
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    }
    show_position(s);
    s->timer = pb_loop_timer_create(pb_input_loop(in), timer_cb, s);
    if (!s->timer)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    pb_loop_timer_start(s->timer, 0);
    return 0;
}

static void sql_pause(void *ctx)
{
    struct in_sql *s = ctx;
    s->paused = true;
    pb_loop_timer_stop(s->timer);
}

static void sql_resume(void *ctx)
{
    struct in_sql *s = ctx;
    s->paused = false;
    if (!s->submitting)
        arm(s, 0);
}

static void sql_stop(void *ctx)
{
    struct in_sql *s = ctx;
    s->stopped = true;
    pb_loop_timer_destroy(s->timer);
    s->timer = NULL;
}

static void sql_destroy(void *ctx)
{
    struct in_sql *s = ctx;
    pb_loop_timer_destroy(s->timer);
    s->timer = NULL;
    sqlin_page_free(s);
    free(s->rows);
    s->rows = NULL;
    sql_close(s->conn);
    s->conn = NULL;
    sqlin_cvals_free(s->cur, MAX_CURSOR_COLS);
    sqlin_cvals_free(s->initial, MAX_CURSOR_COLS);
    sql_params_free(&s->params);
    sql_target_cleanup(&s->target);
    pb_allowlist_destroy(s->allow);
    s->allow = NULL;
}

const struct pb_input_plugin pb_in_sql = {
    .name = "sql",
    .fields = sql_fields,
    .ctx_size = sizeof(struct in_sql),
    .flags = PB_INPUT_OWN_THREAD | PB_INPUT_SINGLETON | PB_INPUT_CAN_FINISH,
    .init = sql_init,
    .start = sql_start,
    .stop = sql_stop,
    .pause = sql_pause,
    .resume = sql_resume,
    .destroy = sql_destroy,
};
