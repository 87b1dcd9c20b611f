/* sql.c - the `sql` output: rows inserted or upserted into a table, or any
 * statement run with arguments, in batches of one transaction each.
 *
 *   sql:
 *     dsn: "postgres://wms@db.internal/wms"
 *     table: orders
 *     columns: { order_id: .id, total: .total, placed_at: .created_at }
 *     upsert: { key: [order_id] }
 *     batch: { count: 500, period: 100ms }
 *
 * Each column's jq program runs on the delivery's payload (with $meta); its
 * value is bound as a parameter: a string as text (the database converts
 * "12.50" into a numeric column exactly), a number in its shortest exact
 * text, true/false, null, and an object or array as JSON text.
 *
 * A batch (batch.count deliveries, or what came within batch.period) is one
 * transaction. First as one multi-row statement per chunk; when that fails
 * on a row's data, the transaction is rolled back and the batch is run again
 * row by row, each inside a SAVEPOINT: a row that violates a constraint (or
 * whose value the column cannot take) is rolled back to its savepoint and
 * dead-lettered alone (PERMANENT) while the others commit. A lost
 * connection, a deadlock or a serialization failure retries the whole batch
 * (RETRY). A retried batch is harmless with `upsert`, or with `key_column`:
 * that column receives the delivery's idempotency key, and a unique
 * violation on a key already in the table counts as delivered.
 *
 * The statements themselves, per driver, are in sql_exec.c.
 *
 * Thread model: `workers = 1`. start, deliver_batch and stop run on the
 * output's one worker thread, which owns the connection and the compiled jq
 * programs; the database client blocks there, never on the dispatcher. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../inputs/sql/sql_common.h"
#include "patchbay/pb_jq.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_plugin.h"
#include "patchbay/pb_time.h"
#include "sql_output.h"

static const struct pb_field upsert_fields[] = {
    {.name = "key",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct upsert_conf, key),
     .flags = PB_FIELD_REQUIRED,
     .doc = "the columns of the unique key a row conflicts on"},
    {0},
};

static const struct pb_field batch_fields[] = {
    {.name = "count",
     .type = PB_F_INT,
     .offset = offsetof(struct batch_conf, count),
     .def = "500",
     .min = 1,
     .max = 10000,
     .doc = "deliveries per transaction at most"},
    {.name = "period",
     .type = PB_F_DURATION,
     .offset = offsetof(struct batch_conf, period_ms),
     .def = "100ms",
     .doc = "how long a batch waits to fill"},
    {0},
};

static const struct pb_field sql_fields[] = {
    {.name = "driver",
     .type = PB_F_STR,
     .offset = offsetof(struct out_sql, driver_name),
     .doc = "sqlite, postgres or mysql (default: from the dsn's scheme)"},
    {.name = "dsn",
     .type = PB_F_SECRET,
     .offset = offsetof(struct out_sql, dsn),
     .flags = PB_FIELD_REQUIRED | PB_FIELD_URL,
     .doc = "postgres://user:pw@host/db, mysql://user:pw@host/db or sqlite:/path"},
    {.name = "table",
     .type = PB_F_STR,
     .offset = offsetof(struct out_sql, table),
     .doc = "the table rows go into (with columns)"},
    {.name = "columns",
     .type = PB_F_STRMAP,
     .offset = offsetof(struct out_sql, columns),
     .doc = "column: jq program giving its value"},
    {.name = "statement",
     .type = PB_F_STR,
     .offset = offsetof(struct out_sql, statement),
     .doc = "a statement with placeholders ($1 postgres, ? mysql and sqlite), instead of table"},
    {.name = "args",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct out_sql, args),
     .doc = "jq programs giving the statement's arguments, in order"},
    {.name = "upsert",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct out_sql, upsert),
     .sub = upsert_fields,
     .doc = "update the row when its key exists (ON CONFLICT / ON DUPLICATE KEY)"},
    {.name = "key_column",
     .type = PB_F_STR,
     .offset = offsetof(struct out_sql, key_column),
     .doc = "a unique column that receives the delivery's idempotency key"},
    {.name = "batch",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct out_sql, batch),
     .sub = batch_fields},
    {.name = "connect_timeout",
     .type = PB_F_DURATION,
     .offset = offsetof(struct out_sql, connect_timeout_ms),
     .def = "10s"},
    {.name = "timeout",
     .type = PB_F_DURATION,
     .offset = offsetof(struct out_sql, timeout_ms),
     .def = "30s",
     .doc = "longest a statement may run"},
    {0},
};

/* ---- init --------------------------------------------------------------------------------------
 */

static bool name_ok(const char *s)
{
    if (!*s || strlen(s) > 128)
        return false;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20)
            return false;
    return true;
}

static bool in_list(const struct pb_strlist *l, const char *s)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->items[i], s) == 0)
            return true;
    return false;
}

/* INSERT INTO t (c1, c2) VALUES and what follows the rows. */
static int build_insert(struct out_sql *o, struct pb_err *err)
{
    enum sql_driver d = o->target.driver;
    struct sql_buf h = {0}, t = {0}, k = {0};
    sqlb_adds(&h, "INSERT INTO ");
    sql_quote_ident(&h, d, o->table);
    sqlb_adds(&h, " (");
    for (size_t i = 0; i < o->ncols; i++) {
        if (i)
            sqlb_adds(&h, ", ");
        sql_quote_ident(&h, d, i < o->nprog ? o->columns.keys[i] : o->key_column);
    }
    sqlb_adds(&h, ") VALUES ");
    if (o->upsert.key.n) {
        bool any = false;
        if (d == SQL_MYSQL) {
            sqlb_adds(&t, " ON DUPLICATE KEY UPDATE ");
            for (size_t i = 0; i < o->nprog; i++) {
                if (in_list(&o->upsert.key, o->columns.keys[i]))
                    continue;
                if (any)
                    sqlb_adds(&t, ", ");
                any = true;
                sql_quote_ident(&t, d, o->columns.keys[i]);
                sqlb_adds(&t, " = VALUES(");
                sql_quote_ident(&t, d, o->columns.keys[i]);
                sqlb_adds(&t, ")");
            }
            if (!any) { /* only key columns: nothing to change */
                sql_quote_ident(&t, d, o->upsert.key.items[0]);
                sqlb_adds(&t, " = ");
                sql_quote_ident(&t, d, o->upsert.key.items[0]);
            }
        } else {
            sqlb_adds(&t, " ON CONFLICT (");
            for (size_t i = 0; i < o->upsert.key.n; i++) {
                if (i)
                    sqlb_adds(&t, ", ");
                sql_quote_ident(&t, d, o->upsert.key.items[i]);
            }
            sqlb_adds(&t, ") DO ");
            for (size_t i = 0; i < o->nprog; i++) {
                if (in_list(&o->upsert.key, o->columns.keys[i]))
                    continue;
                sqlb_adds(&t, any ? ", " : "UPDATE SET ");
                any = true;
                sql_quote_ident(&t, d, o->columns.keys[i]);
                sqlb_adds(&t, d == SQL_POSTGRES ? " = EXCLUDED." : " = excluded.");
                sql_quote_ident(&t, d, o->columns.keys[i]);
            }
            if (!any)
                sqlb_adds(&t, "NOTHING");
        }
    }
    if (o->key_column) {
        sqlb_adds(&k, "SELECT 1 FROM ");
        sql_quote_ident(&k, d, o->table);
        sqlb_adds(&k, " WHERE ");
        sql_quote_ident(&k, d, o->key_column);
        sqlb_adds(&k, d == SQL_POSTGRES ? " = $1" : " = ?");
    }
    sqlb_text(&t);
    sqlb_text(&k);
    if (h.oom || t.oom || k.oom || !sqlb_text(&h)) {
        sqlb_free(&h);
        sqlb_free(&t);
        sqlb_free(&k);
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    }
    o->insert_head = h.p;
    o->insert_tail = t.p;
    o->key_lookup = k.p;
    return 0;
}

static int sql_init(void *ctx, struct pb_output_env *env, struct pb_err *err)
{
    struct out_sql *o = ctx;
    int d = sql_driver_index(o->driver_name);
    if (d == -2)
        return pb_err_set(err, PB_ECONFIG, "driver must be sqlite, postgres or mysql");
    int rc = sql_target_init(&o->target, d, o->dsn, err);
    if (rc)
        return rc;
    bool table_mode = o->table != NULL;
    if (table_mode == (o->statement != NULL))
        return pb_err_set(err, PB_ECONFIG,
                          "give either table (with columns) or statement (with args)");
    if (table_mode) {
        if (o->columns.n == 0)
            return pb_err_set(err, PB_ECONFIG, "table needs columns: {column: jq, ...}");
        if (o->args.n)
            return pb_err_set(err, PB_ECONFIG, "args go with statement; table takes columns");
        if (!name_ok(o->table))
            return pb_err_set(err, PB_ECONFIG, "table: a name of 1-128 printable characters");
        for (size_t i = 0; i < o->columns.n; i++)
            if (!name_ok(o->columns.keys[i]))
                return pb_err_set(err, PB_ECONFIG, "columns: names of 1-128 printable characters");
        for (size_t i = 0; i < o->upsert.key.n; i++)
            if (!pb_strmap_get(&o->columns, o->upsert.key.items[i]))
                return pb_err_set(err, PB_ECONFIG, "upsert.key: %s is not one of the columns",
                                  o->upsert.key.items[i]);
        if (o->key_column) {
            if (!name_ok(o->key_column))
                return pb_err_set(err, PB_ECONFIG, "key_column: a column name");
            if (pb_strmap_get(&o->columns, o->key_column))
                return pb_err_set(err, PB_ECONFIG,
                                  "key_column %s is also in columns: it takes the idempotency "
                                  "key",
                                  o->key_column);
        }
        o->nprog = o->columns.n;
    } else {
        if (o->columns.n || o->upsert.key.n || o->key_column)
            return pb_err_set(err, PB_ECONFIG,
                              "statement takes args; columns, upsert and key_column go with "
                              "table");
        o->nprog = o->args.n;
    }
    if (o->nprog > MAX_COLS)
        return pb_err_set(err, PB_ECONFIG, "at most %d columns or args", MAX_COLS);
    o->ncols = o->nprog + (o->key_column ? 1 : 0);
    o->progs = calloc(o->nprog ? o->nprog : 1, sizeof(*o->progs));
    if (!o->progs)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    for (size_t i = 0; i < o->nprog; i++) {
        const char *prog = table_mode ? o->columns.vals[i] : o->args.items[i];
        o->progs[i] = pb_jq_compile(prog, err);
        if (!o->progs[i]) {
            char m[PB_ERR_MSG_MAX];
            snprintf(m, sizeof(m), "%s", err->msg);
            return pb_err_set(err, PB_ECONFIG, "%s %.60s: %.400s", table_mode ? "column" : "arg",
                              table_mode ? o->columns.keys[i] : "", m);
        }
    }
    if (table_mode && (rc = build_insert(o, err)) != 0)
        return rc;
    snprintf(o->pipeline, sizeof(o->pipeline), "%s", env->pipeline);
    snprintf(o->output, sizeof(o->output), "%s", env->output);
    env->batch_max = (size_t)o->batch.count;
    env->batch_period_ms = o->batch.period_ms;
    env->attempt_timeout_ms = o->timeout_ms * 2 + o->connect_timeout_ms;
    return 0;
}

/* ---- the connection ----------------------------------------------------------------------------
 */

static void disconnect(struct out_sql *o)
{
    if (o->my_stmt)
        mysql_stmt_close(o->my_stmt);
    o->my_stmt = NULL;
    if (o->lite_stmt)
        sqlite3_finalize(o->lite_stmt);
    o->lite_stmt = NULL;
    o->prepared = false;
    sql_close(o->conn);
    o->conn = NULL;
}

static int connect_db(struct out_sql *o, struct pb_err *err)
{
    if (o->conn)
        return 0;
    struct sql_connect_opts co = {.connect_timeout_ms = o->connect_timeout_ms,
                                  .statement_timeout_ms = o->timeout_ms};
    o->conn = sql_connect(&o->target, pb_output_allow(o->out), &co, err);
    if (!o->conn) {
        pb_output_set_state(o->out, PB_OUTPUT_RECONNECTING, err->msg);
        return err->code ? err->code : PB_ENET;
    }
    pb_output_set_state(o->out, PB_OUTPUT_CONNECTED, NULL);
    PB_INFO("sql: connected pipeline=%s output=%s dsn=%s", o->pipeline, o->output, o->target.shown);
    return 0;
}

static int sql_start(void *ctx, struct pb_output *out, struct pb_err *err)
{
    struct out_sql *o = ctx;
    o->out = out;
    return connect_db(o, err);
}

/* ---- values
 * ---------------------------------------------------------------------------------------- */

/* The parameter text of v (taken). 0, or -1 with why. */
static int value_of(jv v, char **text, unsigned char *kind, char *why, size_t whylen)
{
    *text = NULL;
    switch (jv_get_kind(v)) {
    case JV_KIND_NULL:
        *kind = V_NULL;
        jv_free(v);
        return 0;
    case JV_KIND_TRUE:
    case JV_KIND_FALSE:
        *kind = V_BOOL;
        *text = strdup(jv_get_kind(v) == JV_KIND_TRUE ? "t" : "f");
        jv_free(v);
        break;
    case JV_KIND_NUMBER: {
        double x = jv_number_value(v);
        char buf[40];
        jv_free(v);
        if (!isfinite(x)) {
            snprintf(why, whylen, "a number that is not finite");
            return -1;
        }
        if (x == floor(x) && fabs(x) < 1e17)
            snprintf(buf, sizeof(buf), "%.0f", x);
        else
            sql_double_text(x, buf, sizeof(buf));
        *kind = V_NUM;
        *text = strdup(buf);
        break;
    }
    case JV_KIND_STRING:
        *kind = V_TEXT;
        *text = strdup(jv_string_value(v));
        jv_free(v);
        break;
    default: {
        struct pb_err e = {0};
        size_t len;
        if (pb_jq_dump(v, text, &len, &e) != 0) {
            snprintf(why, whylen, "%.200s", e.msg);
            return -1;
        }
        *kind = V_TEXT;
        return 0;
    }
    }
    if (!*text) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    return 0;
}

static void row_end(struct row *r, enum pb_result res, const char *why)
{
    r->state = (int)res + 1;
    free(r->err);
    r->err = why ? strdup(why) : NULL;
}

/* Evaluate the programs on one delivery. A failure ends the row PERMANENT. */
static void row_values(struct out_sql *o, struct row *r)
{
    struct pb_err e = {0};
    jv in, meta = jv_null();
    if (pb_jq_parse(r->d->payload, r->d->len, &in, &e) != 0) {
        row_end(r, PB_RESULT_PERMANENT, e.msg);
        return;
    }
    if (r->d->meta && r->d->meta_len && pb_jq_parse(r->d->meta, r->d->meta_len, &meta, &e) != 0)
        meta = jv_null();
    for (size_t i = 0; i < o->nprog; i++) {
        jv out[1];
        size_t n = 0;
        if (pb_jq_run_meta(o->progs[i], jv_copy(in), jv_copy(meta), out, 1, &n, &e) != 0) {
            char why[PB_ERR_MSG_MAX];
            snprintf(why, sizeof(why), "%s %.60s: %.400s", o->table ? "column" : "arg",
                     o->table ? o->columns.keys[i] : "", e.msg);
            row_end(r, PB_RESULT_PERMANENT, why);
            goto out;
        }
        char why[256];
        if (value_of(n ? out[0] : jv_null(), &r->v[i], &r->kind[i], why, sizeof(why)) != 0) {
            char m[PB_ERR_MSG_MAX];
            snprintf(m, sizeof(m), "%s %.60s: %.400s", o->table ? "column" : "arg",
                     o->table ? o->columns.keys[i] : "", why);
            row_end(r, PB_RESULT_PERMANENT, m);
            goto out;
        }
    }
    if (o->key_column) {
        r->v[o->nprog] = strdup(r->d->idempotency_key);
        r->kind[o->nprog] = V_TEXT;
        if (!r->v[o->nprog])
            row_end(r, PB_RESULT_RETRY, "out of memory");
    }
out:
    jv_free(in);
    jv_free(meta);
}

static void row_free(struct out_sql *o, struct row *r)
{
    for (size_t i = 0; i < o->ncols; i++)
        free(r->v[i]);
    free(r->err);
    r->err = NULL;
}

static const char *begin_sql(enum sql_driver d)
{
    return d == SQL_SQLITE ? "BEGIN IMMEDIATE" : d == SQL_MYSQL ? "START TRANSACTION" : "BEGIN";
}

/* Everything still pending ends with res and the connection's error. */
static void end_pending(struct row *rows, size_t n, enum pb_result res, const char *why)
{
    for (size_t i = 0; i < n; i++)
        if (!rows[i].state)
            row_end(&rows[i], res, why);
}

static void fail_batch(struct out_sql *o, struct row *rows, size_t n, const char *what)
{
    char why[PB_ERR_MSG_MAX];
    snprintf(why, sizeof(why), "sql: %s: %.440s", what, o->conn ? o->conn->msg : "not connected");
    bool lost = !o->conn || o->conn->kind == SQL_ERR_CONN;
    for (size_t i = 0; i < n; i++)
        if (rows[i].state == -1) /* written, but not committed */
            rows[i].state = 0;
    end_pending(rows, n, PB_RESULT_RETRY, why);
    if (o->conn && !lost)
        sql_exec(o->conn, "ROLLBACK");
    if (lost) {
        pb_output_set_state(o->out, PB_OUTPUT_RECONNECTING, why);
        disconnect(o);
    }
}

/* The fast way: every pending row in multi-row statements, one transaction.
 * 0 committed; 1 a row's data failed it (rolled back: go row by row); -1 the
 * batch failed (rows ended RETRY). */
static int batch_fast(struct out_sql *o, struct row *rows, size_t n)
{
    enum sql_driver d = o->target.driver;
    struct row **live = calloc(n, sizeof(*live));
    size_t nl = 0;
    if (!live) {
        end_pending(rows, n, PB_RESULT_RETRY, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if (!rows[i].state)
            live[nl++] = &rows[i];
    int rc = -1;
    if (nl == 0) {
        rc = 0;
        goto out;
    }
    if (sql_exec(o->conn, begin_sql(d)) != 0) {
        fail_batch(o, rows, n, "begin");
        goto out;
    }
    size_t per = o->statement ? 1 : 30000 / (o->ncols ? o->ncols : 1);
    if (per > 1000)
        per = 1000;
    if (per == 0)
        per = 1;
    for (size_t i = 0; i < nl; i += per) {
        size_t m = nl - i < per ? nl - i : per;
        int er =
            o->statement ? sqlout_statement_row(o, live[i]) : sqlout_insert_rows(o, live + i, m);
        if (er == 0)
            continue;
        enum sql_errkind k = o->conn->kind;
        if (k == SQL_ERR_CONN || k == SQL_ERR_TRANSIENT) {
            fail_batch(o, rows, n, "insert");
            goto out;
        }
        /* a row's data (or one statement for rows that conflict with each
         * other): roll back and go row by row */
        if (sql_exec(o->conn, "ROLLBACK") != 0) {
            fail_batch(o, rows, n, "rollback");
            goto out;
        }
        rc = 1;
        goto out;
    }
    if (sql_exec(o->conn, "COMMIT") != 0) {
        fail_batch(o, rows, n, "commit");
        goto out;
    }
    end_pending(rows, n, PB_RESULT_OK, NULL);
    rc = 0;
out:
    free(live);
    return rc;
}

/* The careful way: one transaction, each row inside a savepoint. */
static void batch_rows(struct out_sql *o, struct row *rows, size_t n)
{
    enum sql_driver d = o->target.driver;
    if (sql_exec(o->conn, begin_sql(d)) != 0) {
        fail_batch(o, rows, n, "begin");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        struct row *r = &rows[i];
        if (r->state)
            continue;
        if (sql_exec(o->conn, "SAVEPOINT pb_row") != 0) {
            fail_batch(o, rows, n, "savepoint");
            return;
        }
        if (sqlout_run_row(o, r) == 0) {
            if (sql_exec(o->conn, "RELEASE SAVEPOINT pb_row") != 0) {
                fail_batch(o, rows, n, "release savepoint");
                return;
            }
            r->state = -1; /* written; OK once committed */
            continue;
        }
        enum sql_errkind k = o->conn->kind;
        if (k == SQL_ERR_CONN || k == SQL_ERR_TRANSIENT) {
            fail_batch(o, rows, n, "insert");
            return;
        }
        char why[PB_ERR_MSG_MAX];
        snprintf(why, sizeof(why), "sql: %.500s", o->conn->msg);
        bool uniq = sqlout_unique_violation(o->conn);
        if (sql_exec(o->conn, "ROLLBACK TO SAVEPOINT pb_row") != 0 ||
            sql_exec(o->conn, "RELEASE SAVEPOINT pb_row") != 0) {
            fail_batch(o, rows, n, "rollback to savepoint");
            return;
        }
        if (uniq && o->key_column) {
            int ex = sqlout_key_exists(o, r);
            if (ex < 0) {
                fail_batch(o, rows, n, "key lookup");
                return;
            }
            if (ex) {
                r->state = -1; /* an earlier attempt wrote it */
                continue;
            }
        }
        /* A row's data never goes in; anything else (a missing table, a
         * privilege) may once it is fixed: retried. */
        row_end(r, k == SQL_ERR_ROW ? PB_RESULT_PERMANENT : PB_RESULT_RETRY, why);
    }
    if (sql_exec(o->conn, "COMMIT") != 0) {
        fail_batch(o, rows, n, "commit");
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (rows[i].state == -1)
            row_end(&rows[i], PB_RESULT_OK, NULL);
}

static void sql_deliver_batch(void *ctx, struct pb_delivery **ds, size_t n)
{
    struct out_sql *o = ctx;
    struct row *rows = calloc(n, sizeof(*rows));
    size_t nv = n * (o->ncols ? o->ncols : 1);
    char **vall = calloc(nv, sizeof(*vall));
    unsigned char *kall = calloc(nv, 1);
    if (!rows || !vall || !kall) {
        free(rows);
        free(vall);
        free(kall);
        struct pb_outcome oc = {
            .result = PB_RESULT_RETRY, .retry_after_ms = -1, .error = "out of memory"};
        for (size_t i = 0; i < n; i++)
            pb_delivery_done(ds[i], &oc);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        rows[i].d = ds[i];
        rows[i].v = vall + i * o->ncols;
        rows[i].kind = kall + i * o->ncols;
        row_values(o, &rows[i]);
    }
    struct pb_err err = {0};
    int64_t t0 = pb_mono_us();
    if (connect_db(o, &err) != 0) {
        char why[PB_ERR_MSG_MAX];
        snprintf(why, sizeof(why), "sql: %.500s", err.msg);
        end_pending(rows, n,
                    err.code == PB_EDENIED && strstr(err.msg, "blocked") ? PB_RESULT_PERMANENT
                                                                         : PB_RESULT_RETRY,
                    why);
    } else if (batch_fast(o, rows, n) == 1) {
        batch_rows(o, rows, n);
    }
    PB_DEBUG("sql: batch pipeline=%s output=%s rows=%zu us=%lld", o->pipeline, o->output, n,
             (long long)(pb_mono_us() - t0));
    for (size_t i = 0; i < n; i++) {
        struct pb_outcome oc = {.result = rows[i].state > 0 ? (enum pb_result)(rows[i].state - 1)
                                                            : PB_RESULT_RETRY,
                                .retry_after_ms = -1,
                                .error = rows[i].err};
        pb_delivery_done(ds[i], &oc);
        row_free(o, &rows[i]);
    }
    free(rows);
    free(vall);
    free(kall);
}

static void sql_stop(void *ctx)
{
    struct out_sql *o = ctx;
    disconnect(o);
}

static void sql_destroy(void *ctx)
{
    struct out_sql *o = ctx;
    disconnect(o);
    for (size_t i = 0; o->progs && i < o->nprog; i++)
        pb_jq_destroy(o->progs[i]);
    free(o->progs);
    o->progs = NULL;
    free(o->insert_head);
    free(o->insert_tail);
    free(o->key_lookup);
    o->insert_head = o->insert_tail = o->key_lookup = NULL;
    sql_target_cleanup(&o->target);
}

const struct pb_output_plugin pb_out_sql = {
    .name = "sql",
    .fields = sql_fields,
    .ctx_size = sizeof(struct out_sql),
    .default_concurrency = 1000,
    .workers = 1,
    .init = sql_init,
    .start = sql_start,
    .deliver_batch = sql_deliver_batch,
    .stop = sql_stop,
    .destroy = sql_destroy,
};
