/* sql_value.c - database values as JSON with exact types, and the text
 * buffer they are written into (sql_common.h says what becomes what).
 *
 * Thread model: pure functions; a buffer belongs to its caller. */
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "patchbay/pb_crypto.h"
#include "patchbay/pb_json.h"
#include "sql_common.h"

/* ---- buffer ---------------------------------------------------------------------------------- */

static bool grow(struct sql_buf *b, size_t more)
{
    if (b->oom)
        return false;
    if (b->max && b->len + more > b->max) {
        b->oom = b->full = true;
        return false;
    }
    if (b->len + more + 1 <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void sqlb_add(struct sql_buf *b, const void *s, size_t n)
{
    if (!grow(b, n))
        return;
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

void sqlb_adds(struct sql_buf *b, const char *s)
{
    sqlb_add(b, s, strlen(s));
}

void sqlb_addc(struct sql_buf *b, char c)
{
    sqlb_add(b, &c, 1);
}

void sqlb_printf(struct sql_buf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof(tmp)) {
        sqlb_add(b, tmp, (size_t)n);
        return;
    }
    if (!grow(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

bool sqlb_json_str(struct sql_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (!pb_utf8_valid(s, n))
        return false;
    sqlb_addc(b, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        sqlb_add(b, s + run, i - run);
        run = i + 1;
        char esc[7] = {'\\', 0};
        switch (c) {
        case '"':
            esc[1] = '"';
            break;
        case '\\':
            esc[1] = '\\';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            break;
        }
        sqlb_adds(b, esc);
    }
    sqlb_add(b, s + run, n - run);
    sqlb_addc(b, '"');
    return true;
}

const char *sqlb_text(struct sql_buf *b)
{
    if (!b->p && grow(b, 0))
        b->p[0] = 0;
    return b->oom ? NULL : b->p;
}

void sqlb_reset(struct sql_buf *b)
{
    b->len = 0;
    b->oom = b->full = false;
    if (b->p)
        b->p[0] = 0;
}

void sqlb_free(struct sql_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* ---- numbers --------------------------------------------------------------------------------- */

bool sql_int_fits_double(const char *s, size_t n)
{
    size_t i = 0;
    if (n == 0)
        return false;
    if (i < n && (s[i] == '-' || s[i] == '+'))
        i++;
    while (i < n - 1 && s[i] == '0')
        i++;
    size_t digits = n - i;
    if (digits == 0)
        return false;
    for (size_t k = i; k < n; k++)
        if (!isdigit((unsigned char)s[k]))
            return false;
    if (digits < 16)
        return true;
    if (digits > 16)
        return false;
    return memcmp(s + i, "9007199254740992", 16) <= 0;
}

bool sql_is_number(const char *s, size_t n)
{
    size_t i = 0;
    if (i < n && s[i] == '-')
        i++;
    if (i >= n)
        return false;
    if (s[i] == '0') {
        i++;
    } else if (s[i] >= '1' && s[i] <= '9') {
        while (i < n && isdigit((unsigned char)s[i]))
            i++;
    } else {
        return false;
    }
    if (i < n && s[i] == '.') {
        i++;
        size_t d = i;
        while (i < n && isdigit((unsigned char)s[i]))
            i++;
        if (i == d)
            return false;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        size_t d = i;
        while (i < n && isdigit((unsigned char)s[i]))
            i++;
        if (i == d)
            return false;
    }
    return i == n;
}

void sql_double_text(double v, char *buf, size_t len)
{
    if (isnan(v)) {
        snprintf(buf, len, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(buf, len, v > 0 ? "Infinity" : "-Infinity");
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, len, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
}

/* A number as a JSON number when it is one, else as a string. */
static void number_or_string(struct sql_buf *b, const char *p, size_t n)
{
    /* Databases write "1.5", "-0", "1e+100", "1E-5", ".5" (MySQL no), "5." (no). */
    if (sql_is_number(p, n)) {
        sqlb_add(b, p, n);
        return;
    }
    /* A leading '+' or a bare ".5" is still a number, written the JSON way. */
    char tmp[64];
    if (n < sizeof(tmp) - 2) {
        size_t o = 0, i = 0;
        if (p[0] == '+')
            i = 1;
        if (i < n && p[i] == '-')
            tmp[o++] = p[i++];
        if (i < n && p[i] == '.')
            tmp[o++] = '0';
        memcpy(tmp + o, p + i, n - i);
        o += n - i;
        if (sql_is_number(tmp, o)) {
            sqlb_add(b, tmp, o);
            return;
        }
    }
    sqlb_json_str(b, p, n);
}

/* ---- bytes ------------------------------------------------------------------------------------
 */

static int hexv(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* PostgreSQL bytea hex text ("\x0a0b") into malloc'd bytes. */
static unsigned char *bytea_decode(const char *p, size_t n, size_t *out)
{
    if (n < 2 || p[0] != '\\' || p[1] != 'x' || (n - 2) % 2)
        return NULL;
    size_t m = (n - 2) / 2;
    unsigned char *r = malloc(m ? m : 1);
    if (!r)
        return NULL;
    for (size_t i = 0; i < m; i++) {
        int hi = hexv((unsigned char)p[2 + 2 * i]), lo = hexv((unsigned char)p[3 + 2 * i]);
        if (hi < 0 || lo < 0) {
            free(r);
            return NULL;
        }
        r[i] = (unsigned char)(hi * 16 + lo);
    }
    *out = m;
    return r;
}

static int base64_json(struct sql_buf *b, const void *p, size_t n)
{
    size_t cap = 4 * ((n + 2) / 3) + 1;
    if (!grow(b, cap + 2))
        return 0; /* marked full: the caller sees oom */
    b->p[b->len++] = '"';
    size_t w = pb_base64_encode(p, n, false, b->p + b->len, cap);
    b->len += w;
    b->p[b->len++] = '"';
    b->p[b->len] = 0;
    return 0;
}

/* ---- timestamps ------------------------------------------------------------------------------ */

/* "2024-05-01 12:00:00.5+00" -> "2024-05-01T12:00:00.5Z"; "+05:30" kept;
 * "+05" -> "+05:00"; without an offset (tz false) none is added. Text that
 * is not of that shape ("infinity", "... BC", MySQL's zero date) is kept. */
static void timestamp_json(struct sql_buf *b, const char *p, size_t n, bool tz)
{
    char out[80];
    if (n < 19 || n >= 64 || !isdigit((unsigned char)p[0]) || p[4] != '-' || p[7] != '-' ||
        (p[10] != ' ' && p[10] != 'T') || p[13] != ':' || p[16] != ':' || memchr(p, 'B', n) ||
        memcmp(p, "0000-00-00", 10) == 0) {
        sqlb_json_str(b, p, n);
        return;
    }
    memcpy(out, p, n);
    out[10] = 'T';
    size_t len = n;
    /* the offset, after the seconds and their fraction */
    size_t i = 19;
    if (i < len && out[i] == '.')
        for (i++; i < len && isdigit((unsigned char)out[i]); i++)
            ;
    if (i == len) {
        if (tz) /* MySQL TIMESTAMP in a UTC session */
            out[len++] = 'Z';
    } else if ((out[i] == '+' || out[i] == '-') && len - i == 3) {
        if (memcmp(out + i + 1, "00", 2) == 0) {
            out[i] = 'Z';
            len = i + 1;
        } else {
            memcpy(out + len, ":00", 3);
            len += 3;
        }
    } else if ((out[i] == '+' || out[i] == '-') && len - i == 6 &&
               memcmp(out + i + 1, "00:00", 5) == 0) {
        out[i] = 'Z';
        len = i + 1;
    }
    sqlb_json_str(b, out, len);
}

/* ---- PostgreSQL arrays ----------------------------------------------------------------------- */

/* Element type of the array type oid, 0 when not one of the built-in ones. */
static unsigned pg_array_elem(unsigned oid)
{
    static const unsigned map[][2] = {
        {1000, 16},   {1001, 17},   {1002, 18},   {1003, 19},   {1016, 20},   {1005, 21},
        {1007, 23},   {1009, 25},   {1028, 26},   {199, 114},   {1021, 700},  {1022, 701},
        {1014, 1042}, {1015, 1043}, {1182, 1082}, {1183, 1083}, {1115, 1114}, {1185, 1184},
        {1187, 1186}, {1231, 1700}, {2951, 2950}, {3807, 3802}, {1270, 1266}, {143, 142},
        {1040, 829},  {1041, 869},  {651, 650},   {791, 790},
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (map[i][0] == oid)
            return map[i][1];
    return 0;
}

struct sql_cell sql_pg_cell(unsigned oid, const char *p, size_t n)
{
    struct sql_cell c = {.k = SQLV_TEXT, .p = p, .n = n};
    if (!p) {
        c.k = SQLV_NULL;
        return c;
    }
    switch (oid) {
    case 16: /* bool */
        c.k = SQLV_BOOL;
        break;
    case 20: /* int8 */
    case 21: /* int2 */
    case 23: /* int4 */
    case 26: /* oid */
    case 28: /* xid */
        c.k = SQLV_INT;
        break;
    case 1700: /* numeric */
        c.k = SQLV_DECIMAL;
        break;
    case 700: /* float4 */
    case 701: /* float8 */
        c.k = SQLV_FLOAT;
        break;
    case 17: /* bytea */
        c.k = SQLV_PG_BYTEA;
        break;
    case 114:  /* json */
    case 3802: /* jsonb */
        c.k = SQLV_JSON;
        break;
    case 1184: /* timestamptz */
        c.k = SQLV_TS_TZ;
        break;
    case 1114: /* timestamp */
        c.k = SQLV_TS;
        break;
    default: {
        unsigned e = pg_array_elem(oid);
        if (e) {
            c.k = SQLV_PG_ARRAY;
            c.elem = e;
        }
        break;
    }
    }
    return c;
}

static int cell_json_depth(struct sql_buf *b, const struct sql_cell *c, const struct sql_fmt *f,
                           const char **why, int depth);

/* '{1,2,NULL}', '{"a b","c\"d"}', '{{1,2},{3,4}}', '[0:1]={1,2}' -> JSON arrays.
 * *pos advances past the array. */
static int pg_array_json(struct sql_buf *b, const char *p, size_t n, size_t *pos, unsigned elem,
                         const struct sql_fmt *f, const char **why, int depth)
{
    size_t i = *pos;
    if (depth > 8) {
        *why = "array nested too deep";
        return -1;
    }
    if (i >= n || p[i] != '{') {
        *why = "malformed array";
        return -1;
    }
    i++;
    sqlb_addc(b, '[');
    bool first = true;
    if (i < n && p[i] == '}') {
        sqlb_addc(b, ']');
        *pos = i + 1;
        return 0;
    }
    char *tmp = NULL;
    size_t tcap = 0;
    int rc = -1;
    for (;;) {
        if (!first)
            sqlb_addc(b, ',');
        first = false;
        if (i < n && p[i] == '{') {
            if (pg_array_json(b, p, n, &i, elem, f, why, depth + 1))
                goto out;
        } else if (i < n && p[i] == '"') {
            size_t tl = 0;
            for (i++; i < n && p[i] != '"'; i++) {
                if (p[i] == '\\' && i + 1 < n)
                    i++;
                if (tl + 1 >= tcap) {
                    size_t nc = tcap ? tcap * 2 : 64;
                    char *t2 = realloc(tmp, nc);
                    if (!t2) {
                        *why = "out of memory";
                        goto out;
                    }
                    tmp = t2;
                    tcap = nc;
                }
                tmp[tl++] = p[i];
            }
            if (i >= n) {
                *why = "malformed array";
                goto out;
            }
            i++;
            struct sql_cell e = sql_pg_cell(elem, tmp ? tmp : "", tl);
            if (cell_json_depth(b, &e, f, why, depth + 1))
                goto out;
        } else {
            size_t s = i;
            while (i < n && p[i] != ',' && p[i] != '}')
                i++;
            if (i == s || i >= n) {
                *why = "malformed array";
                goto out;
            }
            if (i - s == 4 && memcmp(p + s, "NULL", 4) == 0) {
                sqlb_adds(b, "null");
            } else {
                struct sql_cell e = sql_pg_cell(elem, p + s, i - s);
                if (cell_json_depth(b, &e, f, why, depth + 1))
                    goto out;
            }
        }
        if (i < n && p[i] == ',') {
            i++;
            continue;
        }
        if (i < n && p[i] == '}') {
            i++;
            break;
        }
        *why = "malformed array";
        goto out;
    }
    sqlb_addc(b, ']');
    *pos = i;
    rc = 0;
out:
    free(tmp);
    return rc;
}

/* ---- MySQL ----------------------------------------------------------------------------------- */

struct sql_cell sql_my_cell(const MYSQL_FIELD *f, const char *p, size_t n)
{
    struct sql_cell c = {.k = SQLV_TEXT, .p = p, .n = n};
    if (!p) {
        c.k = SQLV_NULL;
        return c;
    }
    switch (f->type) {
    case MYSQL_TYPE_TINY:
    case MYSQL_TYPE_SHORT:
    case MYSQL_TYPE_LONG:
    case MYSQL_TYPE_INT24:
    case MYSQL_TYPE_LONGLONG:
    case MYSQL_TYPE_YEAR:
        c.k = SQLV_INT;
        break;
    case MYSQL_TYPE_DECIMAL:
    case MYSQL_TYPE_NEWDECIMAL:
        c.k = SQLV_DECIMAL;
        break;
    case MYSQL_TYPE_FLOAT:
    case MYSQL_TYPE_DOUBLE:
        c.k = SQLV_FLOAT;
        break;
    case MYSQL_TYPE_BIT:
        c.k = SQLV_BITS;
        break;
    case MYSQL_TYPE_TIMESTAMP:
    case MYSQL_TYPE_TIMESTAMP2:
        c.k = SQLV_TS_TZ; /* the session's time zone is UTC */
        break;
    case MYSQL_TYPE_DATETIME:
    case MYSQL_TYPE_DATETIME2:
        c.k = SQLV_TS;
        break;
    case MYSQL_TYPE_JSON:
        c.k = SQLV_JSON;
        break;
    case MYSQL_TYPE_GEOMETRY:
        c.k = SQLV_BYTES;
        break;
    case MYSQL_TYPE_TINY_BLOB:
    case MYSQL_TYPE_MEDIUM_BLOB:
    case MYSQL_TYPE_LONG_BLOB:
    case MYSQL_TYPE_BLOB:
    case MYSQL_TYPE_VAR_STRING:
    case MYSQL_TYPE_STRING:
    case MYSQL_TYPE_VARCHAR:
        if (f->charsetnr == 63) /* binary */
            c.k = SQLV_BYTES;
        break;
    default:
        break;
    }
    return c;
}

/* ---- SQLite ---------------------------------------------------------------------------------- */

static bool decl_is_decimal(const char *decl)
{
    if (!decl)
        return false;
    char up[64];
    size_t i = 0;
    for (; decl[i] && i < sizeof(up) - 1; i++)
        up[i] = (char)toupper((unsigned char)decl[i]);
    up[i] = 0;
    return strstr(up, "DEC") || strstr(up, "NUMERIC") || strstr(up, "MONEY");
}

struct sql_cell sql_lite_cell(sqlite3_stmt *st, int i, char *tmp, size_t tmplen)
{
    struct sql_cell c = {.k = SQLV_NULL};
    switch (sqlite3_column_type(st, i)) {
    case SQLITE_INTEGER:
        snprintf(tmp, tmplen, "%lld", (long long)sqlite3_column_int64(st, i));
        c.k = decl_is_decimal(sqlite3_column_decltype(st, i)) ? SQLV_DECIMAL : SQLV_INT;
        c.p = tmp;
        c.n = strlen(tmp);
        break;
    case SQLITE_FLOAT:
        sql_double_text(sqlite3_column_double(st, i), tmp, tmplen);
        c.k = decl_is_decimal(sqlite3_column_decltype(st, i)) ? SQLV_DECIMAL : SQLV_FLOAT;
        c.p = tmp;
        c.n = strlen(tmp);
        break;
    case SQLITE_TEXT:
        c.k = SQLV_TEXT;
        c.p = (const char *)sqlite3_column_text(st, i);
        c.n = (size_t)sqlite3_column_bytes(st, i);
        if (!c.p)
            c.p = "";
        break;
    case SQLITE_BLOB:
        c.k = SQLV_BYTES;
        c.p = sqlite3_column_blob(st, i);
        c.n = (size_t)sqlite3_column_bytes(st, i);
        if (!c.p)
            c.p = "";
        break;
    default:
        break;
    }
    return c;
}

/* ---- to JSON --------------------------------------------------------------------------------- */

static int cell_json_depth(struct sql_buf *b, const struct sql_cell *c, const struct sql_fmt *f,
                           const char **why, int depth)
{
    switch (c->k) {
    case SQLV_NULL:
        sqlb_adds(b, "null");
        return 0;
    case SQLV_BOOL: {
        bool t = c->n && (c->p[0] == 't' || c->p[0] == 'T' || c->p[0] == '1' || c->p[0] == 'y');
        sqlb_adds(b, t ? "true" : "false");
        return 0;
    }
    case SQLV_INT:
        if (sql_int_fits_double(c->p, c->n) && sql_is_number(c->p, c->n))
            sqlb_add(b, c->p, c->n);
        else if (f->decimal_number && sql_is_number(c->p, c->n))
            sqlb_add(b, c->p, c->n);
        else
            sqlb_json_str(b, c->p, c->n);
        return 0;
    case SQLV_DECIMAL:
        if (f->decimal_number)
            number_or_string(b, c->p, c->n);
        else
            sqlb_json_str(b, c->p, c->n);
        return 0;
    case SQLV_FLOAT:
        number_or_string(b, c->p, c->n);
        return 0;
    case SQLV_BYTES:
        return base64_json(b, c->p, c->n);
    case SQLV_PG_BYTEA: {
        size_t m = 0;
        unsigned char *raw = bytea_decode(c->p, c->n, &m);
        if (!raw) {
            *why = "malformed bytea";
            return -1;
        }
        base64_json(b, raw, m);
        free(raw);
        return 0;
    }
    case SQLV_BITS: {
        uint64_t v = 0;
        if (c->n > 8) {
            return base64_json(b, c->p, c->n);
        }
        for (size_t i = 0; i < c->n; i++)
            v = (v << 8) | (unsigned char)c->p[i];
        char t[24];
        int tl = snprintf(t, sizeof(t), "%llu", (unsigned long long)v);
        if (v <= (1ULL << 53) || f->decimal_number)
            sqlb_add(b, t, (size_t)tl);
        else
            sqlb_json_str(b, t, (size_t)tl);
        return 0;
    }
    case SQLV_JSON: {
        struct pb_json_check chk = {.max_depth = 64};
        if (pb_json_validate(c->p, c->n, &chk) == 0) {
            sqlb_add(b, c->p, c->n);
            return 0;
        }
        if (!sqlb_json_str(b, c->p, c->n)) {
            *why = "text is not valid UTF-8";
            return -1;
        }
        return 0;
    }
    case SQLV_TS_TZ:
    case SQLV_TS:
        timestamp_json(b, c->p, c->n, c->k == SQLV_TS_TZ);
        return 0;
    case SQLV_PG_ARRAY: {
        size_t pos = 0;
        /* "[1:2]={...}": bounds other than 1 are dropped, the elements kept */
        if (c->n && c->p[0] == '[') {
            const char *eq = memchr(c->p, '=', c->n);
            if (!eq) {
                *why = "malformed array";
                return -1;
            }
            pos = (size_t)(eq - c->p) + 1;
        }
        size_t mark = b->len;
        if (pg_array_json(b, c->p, c->n, &pos, c->elem, f, why, depth) == 0 && pos == c->n)
            return 0;
        /* Not an array we can read: its text, as the database wrote it. */
        b->len = mark;
        if (b->p)
            b->p[mark] = 0;
        if (!sqlb_json_str(b, c->p, c->n)) {
            *why = "text is not valid UTF-8";
            return -1;
        }
        return 0;
    }
    case SQLV_TEXT:
        if (!sqlb_json_str(b, c->p, c->n)) {
            *why = "text is not valid UTF-8";
            return -1;
        }
        return 0;
    }
    *why = "unknown value";
    return -1;
}

int sql_cell_json(struct sql_buf *b, const struct sql_cell *c, const struct sql_fmt *f,
                  const char **why)
{
    return cell_json_depth(b, c, f, why, 0);
}

/* ---- cursor values --------------------------------------------------------------------------- */

int sql_cval_from_cell(struct sql_cval *v, const struct sql_cell *c)
{
    memset(v, 0, sizeof(*v));
    const char *p = c->p;
    size_t n = c->n;
    unsigned char *raw = NULL;
    switch (c->k) {
    case SQLV_NULL:
        v->kind = SQLC_NULL;
        return 0;
    case SQLV_BOOL:
        v->kind = SQLC_BOOL;
        p = (n && (c->p[0] == 't' || c->p[0] == '1' || c->p[0] == 'T')) ? "t" : "f";
        n = 1;
        break;
    case SQLV_INT:
    case SQLV_DECIMAL:
    case SQLV_FLOAT:
        v->kind = sql_is_number(p, n) ? SQLC_NUM : SQLC_TEXT;
        break;
    case SQLV_PG_BYTEA:
        raw = bytea_decode(c->p, c->n, &n);
        if (!raw)
            return PB_EPARSE;
        v->kind = SQLC_BYTES;
        v->text = (char *)raw;
        v->len = n;
        return 0;
    case SQLV_BYTES:
    case SQLV_BITS:
        v->kind = SQLC_BYTES;
        break;
    default:
        v->kind = SQLC_TEXT;
        break;
    }
    v->text = malloc(n + 1);
    if (!v->text)
        return PB_ENOMEM;
    memcpy(v->text, p, n);
    v->text[n] = 0;
    v->len = n;
    return 0;
}

void sql_cval_free(struct sql_cval *v)
{
    free(v->text);
    v->text = NULL;
    v->len = 0;
}
