/* sql_exec.c - the `sql` output's statements run with a batch's rows
 * bound, per driver: multi-row inserts (libpq parameters, a MySQL prepared
 * statement, a SQLite prepared statement), the configured statement row by
 * row, and the look-up of an idempotency key after a unique violation
 * (sql_output.h).
 *
 * Thread model: the output's one worker thread, which owns the connection;
 * every statement blocks there. */
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

/* ---- running statements
 * ------------------------------------------------------------------------------ */

/* Bind rows[0..n) (their ncols values each) into a MySQL statement. */
static int my_bind_exec(struct out_sql *o, MYSQL_STMT *st, struct row **rows, size_t n)
{
    size_t np = n * o->ncols;
    MYSQL_BIND *b = calloc(np ? np : 1, sizeof(*b));
    signed char *bools = calloc(np ? np : 1, 1);
    unsigned long *lens = calloc(np ? np : 1, sizeof(*lens));
    int rc = -1;
    if (!b || !bools || !lens) {
        o->conn->kind = SQL_ERR_TRANSIENT;
        snprintf(o->conn->msg, sizeof(o->conn->msg), "out of memory");
        goto out;
    }
    for (size_t r = 0; r < n; r++)
        for (size_t c = 0; c < o->ncols; c++) {
            size_t k = r * o->ncols + c;
            const char *v = rows[r]->v[c];
            switch (rows[r]->kind[c]) {
            case V_NULL:
                b[k].buffer_type = MYSQL_TYPE_NULL;
                break;
            case V_BOOL:
                bools[k] = v[0] == 't';
                b[k].buffer_type = MYSQL_TYPE_TINY;
                b[k].buffer = &bools[k];
                break;
            default:
                lens[k] = (unsigned long)strlen(v);
                b[k].buffer_type = MYSQL_TYPE_STRING;
                b[k].buffer = (void *)v;
                b[k].buffer_length = lens[k];
                b[k].length = &lens[k];
                break;
            }
        }
    if ((np && mysql_stmt_bind_param(st, b)) || mysql_stmt_execute(st)) {
        sql_my_error(o->conn, o->conn->my, st);
        goto out;
    }
    mysql_stmt_free_result(st);
    rc = 0;
out:
    free(b);
    free(bools);
    free(lens);
    return rc;
}

static int lite_bind_exec(struct out_sql *o, sqlite3_stmt *st, struct row **rows, size_t n)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    for (size_t r = 0; r < n; r++)
        for (size_t c = 0; c < o->ncols; c++) {
            int k = (int)(r * o->ncols + c) + 1;
            const char *v = rows[r]->v[c];
            switch (rows[r]->kind[c]) {
            case V_NULL:
                sqlite3_bind_null(st, k);
                break;
            case V_BOOL:
                sqlite3_bind_int(st, k, v[0] == 't');
                break;
            case V_NUM: {
                char *end;
                long long iv = strtoll(v, &end, 10);
                if (*end == 0)
                    sqlite3_bind_int64(st, k, iv);
                else
                    sqlite3_bind_double(st, k, strtod(v, NULL));
                break;
            }
            default:
                sqlite3_bind_text(st, k, v, -1, SQLITE_STATIC);
                break;
            }
        }
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        sql_lite_error(o->conn, sqlite3_extended_errcode(o->conn->lite));
        sqlite3_reset(st);
        return -1;
    }
    sqlite3_reset(st);
    return 0;
}

static int pg_exec_params(struct out_sql *o, const char *sql, const char *prepared,
                          struct row **rows, size_t n)
{
    size_t np = n * o->ncols;
    const char **vals = calloc(np ? np : 1, sizeof(*vals));
    if (!vals) {
        o->conn->kind = SQL_ERR_TRANSIENT;
        snprintf(o->conn->msg, sizeof(o->conn->msg), "out of memory");
        return -1;
    }
    for (size_t r = 0; r < n; r++)
        for (size_t c = 0; c < o->ncols; c++)
            vals[r * o->ncols + c] = rows[r]->v[c];
    PGresult *res = prepared ? PQexecPrepared(o->conn->pg, prepared, (int)np, vals, NULL, NULL, 0)
                             : PQexecParams(o->conn->pg, sql, (int)np, NULL, vals, NULL, NULL, 0);
    free(vals);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        sql_pg_error(o->conn, res);
        PQclear(res);
        return -1;
    }
    PQclear(res);
    return 0;
}

/* A multi-row INSERT of rows[0..n). */
int sqlout_insert_rows(struct out_sql *o, struct row **rows, size_t n)
{
    enum sql_driver d = o->target.driver;
    struct sql_buf q = {0};
    sqlb_adds(&q, o->insert_head);
    size_t k = 1;
    for (size_t r = 0; r < n; r++) {
        sqlb_adds(&q, r ? ", (" : "(");
        for (size_t c = 0; c < o->ncols; c++, k++) {
            if (c)
                sqlb_adds(&q, ", ");
            if (d == SQL_POSTGRES)
                sqlb_printf(&q, "$%zu", k);
            else if (d == SQL_SQLITE)
                sqlb_printf(&q, "?%zu", k);
            else
                sqlb_addc(&q, '?');
        }
        sqlb_addc(&q, ')');
    }
    if (o->insert_tail)
        sqlb_adds(&q, o->insert_tail);
    const char *sql = sqlb_text(&q);
    int rc = -1;
    if (!sql) {
        o->conn->kind = SQL_ERR_TRANSIENT;
        snprintf(o->conn->msg, sizeof(o->conn->msg), "out of memory");
        goto out;
    }
    if (d == SQL_POSTGRES) {
        rc = pg_exec_params(o, sql, NULL, rows, n);
    } else if (d == SQL_MYSQL) {
        MYSQL_STMT *st = mysql_stmt_init(o->conn->my);
        if (!st || mysql_stmt_prepare(st, sql, (unsigned long)q.len)) {
            sql_my_error(o->conn, o->conn->my, st);
        } else {
            rc = my_bind_exec(o, st, rows, n);
        }
        if (st)
            mysql_stmt_close(st);
    } else {
        sqlite3_stmt *st = NULL;
        int prc = sqlite3_prepare_v2(o->conn->lite, sql, (int)q.len, &st, NULL);
        if (prc != SQLITE_OK)
            sql_lite_error(o->conn, prc);
        else
            rc = lite_bind_exec(o, st, rows, n);
        sqlite3_finalize(st);
    }
out:
    sqlb_free(&q);
    return rc;
}

/* The user's statement for one row, prepared once per connection. */
int sqlout_statement_row(struct out_sql *o, struct row *r)
{
    enum sql_driver d = o->target.driver;
    struct row *one[1] = {r};
    if (d == SQL_POSTGRES) {
        if (!o->prepared) {
            PGresult *res = PQprepare(o->conn->pg, STMT_NAME, o->statement, 0, NULL);
            if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
                sql_pg_error(o->conn, res);
                PQclear(res);
                return -1;
            }
            PQclear(res);
            o->prepared = true;
        }
        return pg_exec_params(o, NULL, STMT_NAME, one, 1);
    }
    if (d == SQL_MYSQL) {
        if (!o->my_stmt) {
            o->my_stmt = mysql_stmt_init(o->conn->my);
            if (!o->my_stmt ||
                mysql_stmt_prepare(o->my_stmt, o->statement, (unsigned long)strlen(o->statement))) {
                sql_my_error(o->conn, o->conn->my, o->my_stmt);
                if (o->my_stmt)
                    mysql_stmt_close(o->my_stmt);
                o->my_stmt = NULL;
                return -1;
            }
            if (mysql_stmt_param_count(o->my_stmt) != o->ncols) {
                snprintf(o->conn->msg, sizeof(o->conn->msg),
                         "statement has %lu placeholders, args gives %zu",
                         mysql_stmt_param_count(o->my_stmt), o->ncols);
                o->conn->kind = SQL_ERR_OTHER;
                mysql_stmt_close(o->my_stmt);
                o->my_stmt = NULL;
                return -1;
            }
        }
        return my_bind_exec(o, o->my_stmt, one, 1);
    }
    if (!o->lite_stmt) {
        int prc = sqlite3_prepare_v2(o->conn->lite, o->statement, -1, &o->lite_stmt, NULL);
        if (prc != SQLITE_OK) {
            sql_lite_error(o->conn, prc);
            o->lite_stmt = NULL;
            return -1;
        }
    }
    return lite_bind_exec(o, o->lite_stmt, one, 1);
}

int sqlout_run_row(struct out_sql *o, struct row *r)
{
    if (o->statement)
        return sqlout_statement_row(o, r);
    struct row *one[1] = {r};
    return sqlout_insert_rows(o, one, 1);
}

bool sqlout_unique_violation(const struct sql_conn *c)
{
    switch (c->driver) {
    case SQL_POSTGRES:
        return strcmp(c->sqlstate, "23505") == 0;
    case SQL_MYSQL:
        return c->my_errno == 1062 || c->my_errno == 1586;
    default:
        return c->lite_code == SQLITE_CONSTRAINT_UNIQUE ||
               c->lite_code == SQLITE_CONSTRAINT_PRIMARYKEY;
    }
}

/* After a unique violation: is the row's idempotency key in the table
 * (written by an earlier attempt)? 1 yes, 0 no, -1 error. */
int sqlout_key_exists(struct out_sql *o, struct row *r)
{
    const char *key = r->v[o->nprog];
    enum sql_driver d = o->target.driver;
    if (d == SQL_POSTGRES) {
        const char *vals[1] = {key};
        PGresult *res = PQexecParams(o->conn->pg, o->key_lookup, 1, NULL, vals, NULL, NULL, 0);
        if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
            sql_pg_error(o->conn, res);
            PQclear(res);
            return -1;
        }
        int n = PQntuples(res);
        PQclear(res);
        return n > 0;
    }
    if (d == SQL_MYSQL) {
        MYSQL_STMT *st = mysql_stmt_init(o->conn->my);
        MYSQL_BIND b = {0};
        unsigned long len = (unsigned long)strlen(key);
        int found = -1;
        b.buffer_type = MYSQL_TYPE_STRING;
        b.buffer = (void *)key;
        b.buffer_length = len;
        b.length = &len;
        if (!st || mysql_stmt_prepare(st, o->key_lookup, (unsigned long)strlen(o->key_lookup)) ||
            mysql_stmt_bind_param(st, &b) || mysql_stmt_execute(st) ||
            mysql_stmt_store_result(st)) {
            sql_my_error(o->conn, o->conn->my, st);
        } else {
            found = mysql_stmt_num_rows(st) > 0;
        }
        if (st)
            mysql_stmt_close(st);
        return found;
    }
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(o->conn->lite, o->key_lookup, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        sql_lite_error(o->conn, rc);
        return -1;
    }
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        sql_lite_error(o->conn, rc);
        return -1;
    }
    return rc == SQLITE_ROW;
}
