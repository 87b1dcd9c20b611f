/* sql_params.c - the `sql` input's named parameters: ":updated_at" in a
 * query is found outside string literals, quoted identifiers, comments,
 * dollar quotes and "::" casts, and rendered for the driver: "$1" for
 * PostgreSQL, "?1" for SQLite (bound as typed values), and for MySQL the
 * value itself as a literal (numbers bare, text quoted and escaped with
 * the connection's rules, bytes as X'..'), since the text protocol gives
 * every column's type and the value's exact text.
 *
 * Thread model: pure; sql_params_render with a MYSQL handle runs on the
 * thread that owns it. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sql_common.h"

static bool ident_start(int c)
{
    return isalpha(c) || c == '_';
}

static bool ident_char(int c)
{
    return isalnum(c) || c == '_';
}

int sql_params_find(struct sql_params *ps, enum sql_driver d, const char *q,
                    const char *const *names, size_t nnames, struct pb_err *err)
{
    size_t n = strlen(q), cap = 0;
    memset(ps, 0, sizeof(*ps));
    for (size_t i = 0; i < n;) {
        char c = q[i];
        if (c == '\'' || c == '"' || c == '`') {
            /* a literal or quoted identifier; a doubled quote stays inside, as
             * does a backslash-escaped one (MySQL, E'' strings) */
            bool backslash =
                (d == SQL_MYSQL && c != '`') ||
                (d == SQL_POSTGRES && c == '\'' && i > 0 && (q[i - 1] == 'E' || q[i - 1] == 'e'));
            size_t j = i + 1;
            for (; j < n; j++) {
                if (backslash && q[j] == '\\' && j + 1 < n) {
                    j++;
                    continue;
                }
                if (q[j] == c) {
                    if (j + 1 < n && q[j + 1] == c) {
                        j++;
                        continue;
                    }
                    break;
                }
            }
            i = j + 1;
            continue;
        }
        if ((c == '-' && i + 1 < n && q[i + 1] == '-') || (c == '#' && d == SQL_MYSQL)) {
            while (i < n && q[i] != '\n')
                i++;
            continue;
        }
        if (c == '/' && i + 1 < n && q[i + 1] == '*') {
            const char *end = strstr(q + i + 2, "*/");
            i = end ? (size_t)(end - q) + 2 : n;
            continue;
        }
        if (c == '$' && i + 1 < n && !isdigit((unsigned char)q[i + 1])) {
            /* $tag$ ... $tag$ (PostgreSQL) */
            size_t j = i + 1;
            while (j < n && ident_char((unsigned char)q[j]))
                j++;
            if (j < n && q[j] == '$') {
                size_t tl = j - i + 1;
                const char *end = q + j + 1;
                const char *close = NULL;
                while ((end = strchr(end, '$'))) {
                    if ((size_t)(q + n - end) >= tl && strncmp(end, q + i, tl) == 0) {
                        close = end;
                        break;
                    }
                    end++;
                }
                i = close ? (size_t)(close - q) + tl : n;
                continue;
            }
            i++;
            continue;
        }
        if (c == ':' && i + 1 < n && (q[i + 1] == ':' || q[i + 1] == '=')) {
            i += 2;
            continue;
        }
        if (c == ':' && i + 1 < n && ident_start((unsigned char)q[i + 1]) &&
            !(i > 0 && ident_char((unsigned char)q[i - 1]))) {
            size_t j = i + 1;
            while (j < n && ident_char((unsigned char)q[j]))
                j++;
            size_t len = j - i - 1;
            int index = -1;
            for (size_t k = 0; k < nnames; k++)
                if (strlen(names[k]) == len && strncmp(names[k], q + i + 1, len) == 0)
                    index = (int)k;
            if (index < 0) {
                sql_params_free(ps);
                return pb_err_set(err, PB_ECONFIG,
                                  "query: parameter :%.*s is not a cursor column (cursor.columns "
                                  "names the parameters)",
                                  (int)(len > 64 ? 64 : len), q + i + 1);
            }
            if (ps->n == cap) {
                size_t nc = cap ? cap * 2 : 8;
                void *u = realloc(ps->use, nc * sizeof(*ps->use));
                if (!u) {
                    sql_params_free(ps);
                    return pb_err_set(err, PB_ENOMEM, "out of memory");
                }
                ps->use = u;
                cap = nc;
            }
            bool seen = false;
            for (size_t k = 0; k < ps->nbind; k++)
                seen |= ps->bind[k] == index;
            if (!seen) {
                int *bd = realloc(ps->bind, (ps->nbind + 1) * sizeof(*bd));
                if (!bd) {
                    sql_params_free(ps);
                    return pb_err_set(err, PB_ENOMEM, "out of memory");
                }
                ps->bind = bd;
                ps->bind[ps->nbind++] = index;
            }
            ps->use[ps->n].at = i;
            ps->use[ps->n].len = j - i;
            ps->use[ps->n].index = index;
            ps->n++;
            i = j;
            continue;
        }
        i++;
    }
    return 0;
}

void sql_params_free(struct sql_params *ps)
{
    free(ps->use);
    free(ps->bind);
    memset(ps, 0, sizeof(*ps));
}

/* 'text' with \ ' " NUL \n \r ^Z escaped, as mysql_real_escape_string does
 * without a connection (used by tests; a connection knows its sql_mode). */
static void my_quote(struct sql_buf *b, MYSQL *my, const char *s, size_t n)
{
    sqlb_addc(b, '\'');
    if (my) {
        char *tmp = malloc(2 * n + 1);
        if (!tmp) {
            b->oom = true;
            return;
        }
        unsigned long m = mysql_real_escape_string(my, tmp, s, (unsigned long)n);
        if (m == (unsigned long)-1) {
            free(tmp);
            b->oom = true;
            return;
        }
        sqlb_add(b, tmp, m);
        free(tmp);
    } else {
        for (size_t i = 0; i < n; i++) {
            char c = s[i];
            const char *e = NULL;
            switch (c) {
            case 0:
                e = "\\0";
                break;
            case '\n':
                e = "\\n";
                break;
            case '\r':
                e = "\\r";
                break;
            case '\\':
                e = "\\\\";
                break;
            case '\'':
                e = "\\'";
                break;
            case '"':
                e = "\\\"";
                break;
            case 26:
                e = "\\Z";
                break;
            default:
                break;
            }
            if (e)
                sqlb_adds(b, e);
            else
                sqlb_addc(b, c);
        }
    }
    sqlb_addc(b, '\'');
}

static void my_literal(struct sql_buf *b, MYSQL *my, const struct sql_cval *v)
{
    static const char hex[] = "0123456789ABCDEF";
    switch (v->kind) {
    case SQLC_NULL:
        sqlb_adds(b, "NULL");
        break;
    case SQLC_NUM:
        if (sql_is_number(v->text, v->len))
            sqlb_add(b, v->text, v->len);
        else
            my_quote(b, my, v->text, v->len);
        break;
    case SQLC_BOOL:
        sqlb_adds(b, v->len && v->text[0] == 't' ? "TRUE" : "FALSE");
        break;
    case SQLC_BYTES:
        sqlb_adds(b, "X'");
        for (size_t i = 0; i < v->len; i++) {
            unsigned char c = (unsigned char)v->text[i];
            sqlb_addc(b, hex[c >> 4]);
            sqlb_addc(b, hex[c & 15]);
        }
        sqlb_addc(b, '\'');
        break;
    default:
        my_quote(b, my, v->text ? v->text : "", v->len);
        break;
    }
}

char *sql_params_render(const struct sql_params *ps, const char *q, enum sql_driver d, MYSQL *my,
                        const struct sql_cval *vals)
{
    struct sql_buf b = {0};
    size_t at = 0;
    for (size_t i = 0; i < ps->n; i++) {
        sqlb_add(&b, q + at, ps->use[i].at - at);
        int k = ps->use[i].index;
        size_t j = 0;
        while (j < ps->nbind && ps->bind[j] != k)
            j++;
        if (d == SQL_POSTGRES)
            sqlb_printf(&b, "$%zu", j + 1);
        else if (d == SQL_SQLITE)
            sqlb_printf(&b, "?%zu", j + 1);
        else
            my_literal(&b, my, &vals[k]);
        at = ps->use[i].at + ps->use[i].len;
    }
    sqlb_adds(&b, q + at);
    if (b.oom) {
        sqlb_free(&b);
        return NULL;
    }
    return b.p;
}
