/* sql_page.c - the `sql` input's query, per driver (libpq, libmariadb,
 * libsqlite3), and its result turned into a page of rows: each row a JSON
 * object of its columns with exact types (sql_common.h), its cursor values,
 * its idempotency key and $meta (sql_input.h).
 *
 * Thread model: the input's own loop thread; every statement blocks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "patchbay/pb_crypto.h"
#include "patchbay/pb_log.h"
#include "sql_input.h"

void sqlin_cvals_free(struct sql_cval *cv, size_t n)
{
    for (size_t i = 0; i < n; i++)
        sql_cval_free(&cv[i]);
}

/* ---- a page of rows -------------------------------------------------------------------------- */

static void sqlin_row_free(struct in_sql *s, struct row *r)
{
    free(r->body);
    free(r->meta);
    free(r->dead);
    sqlin_cvals_free(r->cv, s->ncols);
}

void sqlin_page_free(struct in_sql *s)
{
    for (size_t i = 0; i < s->nrows; i++)
        sqlin_row_free(s, &s->rows[i]);
    s->nrows = s->pos = s->chunk_end = 0;
}

/* The idempotency key: the cursor values (a digest when long). */
static void row_key(struct row *r, size_t ncols, const char *cursor_text)
{
    size_t len = strlen(cursor_text);
    (void)ncols;
    if (len + 4 <= PB_ITEM_KEY_MAX) {
        snprintf(r->key, sizeof(r->key), "sql:%s", cursor_text);
        return;
    }
    unsigned char mac[PB_MAC_MAX];
    size_t ml = 0;
    struct pb_piece pc = {cursor_text, len};
    pb_hmac("SHA256", "patchbay-sql-cursor", 19, &pc, 1, mac, &ml);
    char *p = r->key + snprintf(r->key, sizeof(r->key), "sql:sha256:");
    for (size_t i = 0; i < ml; i++)
        p += sprintf(p, "%02x", mac[i]);
}

/* Add one row of n columns (names[i], cells[i]) to the page. -1 with
 * *why when the cursor columns are not in the result. */
static int add_row(struct in_sql *s, size_t n, const char *const *names,
                   const struct sql_cell *cells, const char **why)
{
    if (s->nrows == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 64;
        struct row *rs = realloc(s->rows, nc * sizeof(*rs));
        if (!rs) {
            *why = "out of memory";
            return -1;
        }
        s->rows = rs;
        s->cap = nc;
    }
    struct row *r = &s->rows[s->nrows];
    memset(r, 0, sizeof(*r));
    struct sql_buf b = {.max = s->max_row}, cur = {0};
    const char *bad = NULL, *badcol = NULL;
    sqlb_addc(&b, '{');
    for (size_t i = 0; i < n; i++) {
        if (i)
            sqlb_addc(&b, ',');
        if (!sqlb_json_str(&b, names[i], strlen(names[i]))) {
            bad = "column name is not valid UTF-8";
            badcol = "?";
            sqlb_adds(&b, "\"?\"");
        }
        sqlb_addc(&b, ':');
        const char *w = NULL;
        size_t mark = b.len;
        if (sql_cell_json(&b, &cells[i], &s->fmt, &w) != 0) {
            b.len = mark;
            struct sql_cell raw = {.k = SQLV_BYTES, .p = cells[i].p, .n = cells[i].n};
            sql_cell_json(&b, &raw, &s->fmt, &w);
            if (!bad) {
                bad = w;
                badcol = names[i];
            }
        }
    }
    sqlb_addc(&b, '}');
    /* the cursor: its values for the checkpoint, as JSON for the key and $meta */
    sqlb_addc(&cur, '{');
    for (size_t k = 0; k < s->ncols; k++) {
        int ci = s->colidx[k];
        const char *w = NULL;
        if (ci < 0 || (size_t)ci >= n) {
            *why = "a cursor column is not in the query's result";
            sqlb_free(&b);
            sqlb_free(&cur);
            return -1;
        }
        if (sql_cval_from_cell(&r->cv[k], &cells[ci]) != 0) {
            sqlin_cvals_free(r->cv, k);
            *why = "a cursor value cannot be read";
            sqlb_free(&b);
            sqlb_free(&cur);
            return -1;
        }
        if (k)
            sqlb_addc(&cur, ',');
        sqlb_json_str(&cur, s->cursor.columns.items[k], strlen(s->cursor.columns.items[k]));
        sqlb_addc(&cur, ':');
        size_t mark = cur.len;
        if (sql_cell_json(&cur, &cells[ci], &s->fmt, &w) != 0) {
            cur.len = mark;
            struct sql_cell raw = {.k = SQLV_BYTES, .p = cells[ci].p, .n = cells[ci].n};
            sql_cell_json(&cur, &raw, &s->fmt, &w);
        }
    }
    sqlb_addc(&cur, '}');
    const char *ctext = sqlb_text(&cur);
    if (!ctext) {
        sqlin_cvals_free(r->cv, s->ncols);
        sqlb_free(&b);
        *why = "out of memory";
        return -1;
    }
    row_key(r, s->ncols, ctext);
    size_t ml = strlen(ctext) + 16;
    r->meta = malloc(ml);
    if (r->meta)
        snprintf(r->meta, ml, "{\"cursor\":%s}", ctext);
    char reason[PB_ERR_MSG_MAX] = "";
    if (b.full) {
        /* too large: the dead letter keeps the cursor, which finds the row */
        snprintf(reason, sizeof(reason), "row larger than max_row (%llu bytes) as JSON",
                 (unsigned long long)s->max_row);
        sqlb_free(&b);
        sqlb_printf(&b, "{\"cursor\":%s}", ctext);
    } else if (bad) {
        snprintf(reason, sizeof(reason), "column %.100s: %s (written base64 here)", badcol, bad);
    }
    sqlb_free(&cur);
    if (reason[0])
        r->dead = strdup(reason);
    if (b.oom || !r->meta || (reason[0] && !r->dead)) {
        sqlb_free(&b);
        free(r->meta);
        free(r->dead);
        sqlin_cvals_free(r->cv, s->ncols);
        *why = "out of memory";
        return -1;
    }
    r->body = b.p;
    r->len = b.len;
    s->nrows++;
    return 0;
}

static void find_cursor_columns(struct in_sql *s, size_t n, const char *const *names)
{
    for (size_t k = 0; k < s->ncols; k++) {
        s->colidx[k] = -1;
        for (size_t i = 0; i < n; i++)
            if (strcmp(names[i], s->cursor.columns.items[k]) == 0)
                s->colidx[k] = (int)i;
    }
}

static bool duplicate_names(size_t n, const char *const *names, const char **which)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < i; j++)
            if (strcmp(names[i], names[j]) == 0) {
                *which = names[i];
                return true;
            }
    return false;
}

/* ---- the query, per driver ----------------------------------------------------------------- */

int sqlin_poll_pg(struct in_sql *s, const char *q, char *err, size_t errlen)
{
    struct sql_conn *c = s->conn;
    const char *vals[MAX_CURSOR_COLS];
    char *tmp[MAX_CURSOR_COLS] = {0};
    int rc = -1;
    for (size_t j = 0; j < s->params.nbind; j++) {
        const struct sql_cval *v = &s->cur[s->params.bind[j]];
        vals[j] = NULL;
        if (v->kind == SQLC_NULL)
            continue;
        if (v->kind == SQLC_BYTES) {
            tmp[j] = malloc(2 * v->len + 3);
            if (!tmp[j]) {
                snprintf(err, errlen, "out of memory");
                goto out;
            }
            char *p = tmp[j] + sprintf(tmp[j], "\\x");
            for (size_t i = 0; i < v->len; i++)
                p += sprintf(p, "%02x", (unsigned char)v->text[i]);
            vals[j] = tmp[j];
        } else {
            vals[j] = v->text;
        }
    }
    if (!PQsendQueryParams(c->pg, q, (int)s->params.nbind, NULL, vals, NULL, NULL, 0)) {
        sql_pg_error(c, NULL);
        snprintf(err, errlen, "%s", c->msg);
        goto out;
    }
    PQsetSingleRowMode(c->pg);
    PGresult *r;
    bool failed = false, cancelled = false, first = true;
    const char *names[1600];
    struct sql_cell *cells = NULL;
    while ((r = PQgetResult(c->pg))) {
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_SINGLE_TUPLE && !failed && !cancelled) {
            int nf = PQnfields(r);
            if (nf > 1600) {
                snprintf(err, errlen, "more than 1600 columns");
                failed = true;
            } else {
                if (first) {
                    for (int i = 0; i < nf; i++)
                        names[i] = PQfname(r, i);
                    const char *dup;
                    if (duplicate_names((size_t)nf, names, &dup)) {
                        snprintf(err, errlen,
                                 "column \"%.64s\" appears twice in the result: name each "
                                 "column once (AS ...)",
                                 dup);
                        failed = true;
                    }
                    find_cursor_columns(s, (size_t)nf, names);
                    cells = calloc((size_t)nf + 1, sizeof(*cells));
                    if (!cells && !failed) {
                        snprintf(err, errlen, "out of memory");
                        failed = true;
                    }
                    first = false;
                }
                if (!failed) {
                    for (int i = 0; i < nf; i++) {
                        names[i] = PQfname(r, i);
                        cells[i] = sql_pg_cell(PQftype(r, i),
                                               PQgetisnull(r, 0, i) ? NULL : PQgetvalue(r, 0, i),
                                               (size_t)PQgetlength(r, 0, i));
                    }
                    const char *why = NULL;
                    if (add_row(s, (size_t)nf, names, cells, &why) != 0) {
                        snprintf(err, errlen, "%s", why);
                        failed = true;
                    }
                }
                if ((failed || s->nrows >= (size_t)s->max_rows) && !cancelled) {
                    /* enough: the rest is read again from the cursor next time */
                    PGcancel *cn = PQgetCancel(c->pg);
                    char eb[256];
                    if (cn) {
                        PQcancel(cn, eb, sizeof(eb));
                        PQfreeCancel(cn);
                    }
                    cancelled = true;
                }
            }
        } else if (st != PGRES_SINGLE_TUPLE && st != PGRES_TUPLES_OK && !failed) {
            const char *ss = PQresultErrorField(r, PG_DIAG_SQLSTATE);
            if (!(cancelled && ss && strcmp(ss, "57014") == 0)) {
                sql_pg_error(c, r);
                snprintf(err, errlen, "%s", c->msg);
                failed = true;
            }
        }
        PQclear(r);
    }
    free(cells);
    if (PQstatus(c->pg) == CONNECTION_BAD && !failed) {
        sql_pg_error(c, NULL);
        snprintf(err, errlen, "%s", c->msg);
        failed = true;
    }
    rc = failed ? -1 : 0;
out:
    for (size_t j = 0; j < MAX_CURSOR_COLS; j++)
        free(tmp[j]);
    return rc;
}

int sqlin_poll_my(struct in_sql *s, const char *q, char *err, size_t errlen)
{
    struct sql_conn *c = s->conn;
    if (mysql_real_query(c->my, q, strlen(q)) != 0) {
        sql_my_error(c, c->my, NULL);
        snprintf(err, errlen, "%s", c->msg);
        return -1;
    }
    MYSQL_RES *res = mysql_use_result(c->my);
    if (!res) {
        if (mysql_field_count(c->my) == 0) {
            snprintf(err, errlen, "the query returns no result set");
            c->kind = SQL_ERR_OTHER;
        } else {
            sql_my_error(c, c->my, NULL);
            snprintf(err, errlen, "%s", c->msg);
        }
        return -1;
    }
    unsigned nf = mysql_num_fields(res);
    MYSQL_FIELD *fs = mysql_fetch_fields(res);
    const char **names = calloc(nf + 1, sizeof(*names));
    struct sql_cell *cells = calloc(nf + 1, sizeof(*cells));
    int rc = -1;
    if (!names || !cells) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (unsigned i = 0; i < nf; i++)
        names[i] = fs[i].name;
    const char *dup;
    if (duplicate_names(nf, names, &dup)) {
        snprintf(err, errlen,
                 "column \"%.64s\" appears twice in the result: name each column once (AS ...)",
                 dup);
        c->kind = SQL_ERR_OTHER;
        goto out;
    }
    find_cursor_columns(s, nf, names);
    MYSQL_ROW row;
    while (s->nrows < (size_t)s->max_rows && (row = mysql_fetch_row(res))) {
        unsigned long *lens = mysql_fetch_lengths(res);
        for (unsigned i = 0; i < nf; i++)
            cells[i] = sql_my_cell(&fs[i], row[i], lens[i]);
        const char *why = NULL;
        if (add_row(s, nf, names, cells, &why) != 0) {
            snprintf(err, errlen, "%s", why);
            c->kind = SQL_ERR_OTHER;
            goto out;
        }
    }
    if (s->nrows < (size_t)s->max_rows && mysql_errno(c->my)) {
        sql_my_error(c, c->my, NULL);
        snprintf(err, errlen, "%s", c->msg);
        goto out;
    }
    rc = 0;
out:
    mysql_free_result(res); /* reads what is left of the result */
    if (rc == 0 && mysql_errno(c->my)) {
        sql_my_error(c, c->my, NULL);
        snprintf(err, errlen, "%s", c->msg);
        rc = -1;
    }
    free(names);
    free(cells);
    return rc;
}

int sqlin_poll_lite(struct in_sql *s, const char *q, char *err, size_t errlen)
{
    struct sql_conn *c = s->conn;
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(c->lite, q, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        sql_lite_error(c, rc);
        snprintf(err, errlen, "%s", c->msg);
        return -1;
    }
    for (size_t j = 0; j < s->params.nbind; j++) {
        const struct sql_cval *v = &s->cur[s->params.bind[j]];
        int k = (int)j + 1;
        switch (v->kind) {
        case SQLC_NULL:
            sqlite3_bind_null(st, k);
            break;
        case SQLC_NUM: {
            char *end;
            long long iv = strtoll(v->text, &end, 10);
            if (*end == 0 && sql_int_fits_double(v->text, v->len))
                sqlite3_bind_int64(st, k, iv);
            else if (*end == 0)
                sqlite3_bind_text(st, k, v->text, (int)v->len, SQLITE_TRANSIENT);
            else
                sqlite3_bind_double(st, k, strtod(v->text, NULL));
            break;
        }
        case SQLC_BOOL:
            sqlite3_bind_int(st, k, v->text[0] == 't');
            break;
        case SQLC_BYTES:
            sqlite3_bind_blob(st, k, v->text, (int)v->len, SQLITE_TRANSIENT);
            break;
        default:
            sqlite3_bind_text(st, k, v->text, (int)v->len, SQLITE_TRANSIENT);
            break;
        }
    }
    int nf = sqlite3_column_count(st);
    const char **names = calloc((size_t)nf + 1, sizeof(*names));
    struct sql_cell *cells = calloc((size_t)nf + 1, sizeof(*cells));
    char(*tmp)[40] = calloc((size_t)nf + 1, sizeof(*tmp));
    int ret = -1;
    if (!names || !cells || !tmp) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (int i = 0; i < nf; i++)
        names[i] = sqlite3_column_name(st, i);
    const char *dup;
    if (duplicate_names((size_t)nf, names, &dup)) {
        snprintf(err, errlen,
                 "column \"%.64s\" appears twice in the result: name each column once (AS ...)",
                 dup);
        c->kind = SQL_ERR_OTHER;
        goto out;
    }
    find_cursor_columns(s, (size_t)nf, names);
    while (s->nrows < (size_t)s->max_rows && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        for (int i = 0; i < nf; i++)
            cells[i] = sql_lite_cell(st, i, tmp[i], sizeof(tmp[i]));
        const char *why = NULL;
        if (add_row(s, (size_t)nf, names, cells, &why) != 0) {
            snprintf(err, errlen, "%s", why);
            c->kind = SQL_ERR_OTHER;
            goto out;
        }
    }
    if (s->nrows < (size_t)s->max_rows && rc != SQLITE_DONE) {
        sql_lite_error(c, rc);
        snprintf(err, errlen, "%s", c->msg);
        goto out;
    }
    ret = 0;
out:
    sqlite3_finalize(st);
    free(names);
    free(cells);
    free(tmp);
    return ret;
}
