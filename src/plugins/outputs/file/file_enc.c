/* file_enc.c - JSON lines and CSV rows from JSON payloads, exactly: see
 * file_enc.h. Any thread. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "file_enc.h"
#include "patchbay/pb_err.h"
#include "patchbay/pb_json.h"

const struct pb_field enc_csv_fields[] = {
    {.name = "header",
     .type = PB_F_BOOL,
     .offset = offsetof(struct enc_csv_conf, header),
     .def = "true",
     .doc = "a header row at the top of each file"},
    {.name = "delimiter",
     .type = PB_F_STR,
     .offset = offsetof(struct enc_csv_conf, delimiter),
     .def = ","},
    {.name = "quote",
     .type = PB_F_STR,
     .offset = offsetof(struct enc_csv_conf, quote),
     .def = "\""},
    {.name = "columns",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct enc_csv_conf, columns),
     .doc = "the columns, in order (default: the members of a file's first record)"},
    {0},
};

int enc_csv_conf_check(const struct enc_csv_conf *c, struct pb_err *err)
{
    if (!c->delimiter || strlen(c->delimiter) != 1 || !c->quote || strlen(c->quote) != 1 ||
        c->delimiter[0] == c->quote[0] || c->delimiter[0] == '\n' || c->quote[0] == '\n')
        return pb_err_set(err, PB_ECONFIG,
                          "csv.delimiter and csv.quote are one character each, and differ");
    if (!c->header && c->columns.n == 0)
        return pb_err_set(err, PB_ECONFIG,
                          "csv.header: false needs csv.columns (the order of the fields)");
    return 0;
}

int enc_put(struct enc_buf *b, const void *p, size_t len)
{
    if (b->n + len + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 1024;
        while (nc < b->n + len + 1)
            nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np)
            return PB_ENOMEM;
        b->p = np;
        b->cap = nc;
    }
    if (len)
        memcpy(b->p + b->n, p, len);
    b->n += len;
    b->p[b->n] = 0;
    return 0;
}

void enc_buf_free(struct enc_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

static int not_json(const struct pb_json_check *chk, char *why, size_t whylen)
{
    snprintf(why, whylen, "the payload is not JSON: %s at byte %zu",
             chk->err_reason ? chk->err_reason : "malformed", chk->err_offset);
    return PB_EPARSE;
}

int enc_jsonl(struct enc_buf *b, const char *payload, size_t len, char *why, size_t whylen)
{
    struct pb_json_check chk = {0};
    if (pb_json_validate(payload, len, &chk) != 0)
        return not_json(&chk, why, whylen);
    size_t start = b->n;
    int rc = enc_put(b, payload, len);
    if (rc)
        return rc;
    /* Raw line ends in valid JSON are white space (inside strings they
     * are escaped): a space keeps the text the same value. */
    for (size_t i = start; i < b->n; i++)
        if (b->p[i] == '\n' || b->p[i] == '\r')
            b->p[i] = ' ';
    return enc_put(b, "\n", 1);
}

/* ---- walking an object ------------------------------------------------------------------ */

static size_t skip_ws(const char *s, size_t i, size_t len)
{
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* The end of the value starting at s[i] (valid JSON). */
static size_t value_end(const char *s, size_t i, size_t len)
{
    if (s[i] == '"') {
        for (i++; i < len; i++) {
            if (s[i] == '\\')
                i++;
            else if (s[i] == '"')
                return i + 1;
        }
        return len;
    }
    if (s[i] == '{' || s[i] == '[') {
        int depth = 0;
        for (; i < len; i++) {
            if (s[i] == '"') {
                i = value_end(s, i, len) - 1;
            } else if (s[i] == '{' || s[i] == '[') {
                depth++;
            } else if (s[i] == '}' || s[i] == ']') {
                if (--depth == 0)
                    return i + 1;
            }
        }
        return len;
    }
    while (i < len && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' && s[i] != '\t' &&
           s[i] != '\n' && s[i] != '\r')
        i++;
    return i;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static unsigned u4(const char *p)
{
    return (unsigned)(hexval(p[0]) << 12 | hexval(p[1]) << 8 | hexval(p[2]) << 4 | hexval(p[3]));
}

/* Unescape the JSON string s[0..len) (quotes included, valid) into out. */
static int unescape(const char *s, size_t len, struct enc_buf *out)
{
    out->n = 0;
    int rc = enc_put(out, "", 0);
    for (size_t i = 1; rc == 0 && i + 1 < len; i++) {
        if (s[i] != '\\') {
            size_t j = i;
            while (j + 1 < len && s[j] != '\\')
                j++;
            rc = enc_put(out, s + i, j - i);
            i = j - 1;
            continue;
        }
        char c = s[++i];
        char ch;
        switch (c) {
        case 'n':
            ch = '\n';
            break;
        case 't':
            ch = '\t';
            break;
        case 'r':
            ch = '\r';
            break;
        case 'b':
            ch = '\b';
            break;
        case 'f':
            ch = '\f';
            break;
        case 'u': {
            unsigned cp = u4(s + i + 1);
            i += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && i + 6 < len && s[i + 1] == '\\' && s[i + 2] == 'u') {
                unsigned lo = u4(s + i + 3);
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                i += 6;
            }
            char u[4];
            size_t k;
            if (cp < 0x80) {
                u[0] = (char)cp;
                k = 1;
            } else if (cp < 0x800) {
                u[0] = (char)(0xC0 | cp >> 6);
                u[1] = (char)(0x80 | (cp & 0x3F));
                k = 2;
            } else if (cp < 0x10000) {
                u[0] = (char)(0xE0 | cp >> 12);
                u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
                u[2] = (char)(0x80 | (cp & 0x3F));
                k = 3;
            } else {
                u[0] = (char)(0xF0 | cp >> 18);
                u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
                u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
                u[3] = (char)(0x80 | (cp & 0x3F));
                k = 4;
            }
            rc = enc_put(out, u, k);
            continue;
        }
        default:
            ch = c; /* \" \\ \/ */
        }
        rc = enc_put(out, &ch, 1);
    }
    return rc;
}

int enc_members(const char *json, size_t len, int (*fn)(void *arg, const struct enc_member *m),
                void *arg, char *why, size_t whylen)
{
    struct pb_json_check chk = {0};
    if (pb_json_validate(json, len, &chk) != 0)
        return not_json(&chk, why, whylen);
    size_t i = skip_ws(json, 0, len);
    if (i >= len || json[i] != '{') {
        snprintf(why, whylen, "the payload is not a JSON object");
        return PB_EPARSE;
    }
    i = skip_ws(json, i + 1, len);
    struct enc_buf name = {0};
    int rc = 0;
    while (i < len && json[i] != '}') {
        size_t ke = value_end(json, i, len);
        if ((rc = unescape(json + i, ke - i, &name)) != 0)
            break;
        i = skip_ws(json, ke, len) + 1; /* : */
        i = skip_ws(json, i, len);
        size_t ve = value_end(json, i, len);
        struct enc_member m = {.value = json + i, .len = ve - i};
        if (name.n >= sizeof(m.name)) {
            snprintf(why, whylen, "a member name is longer than %zu bytes", sizeof(m.name) - 1);
            rc = PB_EPARSE;
            break;
        }
        memcpy(m.name, name.p, name.n + 1);
        switch (json[i]) {
        case '"':
            m.kind = 's';
            break;
        case '{':
            m.kind = 'o';
            break;
        case '[':
            m.kind = 'a';
            break;
        case 't':
            m.kind = 't';
            break;
        case 'f':
            m.kind = 'f';
            break;
        case 'n':
            m.kind = 'z';
            break;
        default:
            m.kind = 'n';
        }
        if ((rc = fn(arg, &m)) != 0)
            break;
        i = skip_ws(json, ve, len);
        if (i < len && json[i] == ',')
            i = skip_ws(json, i + 1, len);
    }
    enc_buf_free(&name);
    return rc;
}

/* ---- CSV ----------------------------------------------------------------------------------- */

static int csv_field(const struct enc_csv *c, struct enc_buf *b, const char *v, size_t len)
{
    bool quote = false;
    for (size_t i = 0; i < len && !quote; i++)
        quote = v[i] == c->delimiter || v[i] == c->quote || v[i] == '\n' || v[i] == '\r';
    if (!quote)
        return enc_put(b, v, len);
    int rc = enc_put(b, &c->quote, 1);
    for (size_t i = 0; rc == 0 && i < len; i++) {
        if (v[i] == c->quote)
            rc = enc_put(b, &c->quote, 1);
        if (rc == 0)
            rc = enc_put(b, &v[i], 1);
    }
    return rc ? rc : enc_put(b, &c->quote, 1);
}

int enc_csv_header(const struct enc_csv *c, struct enc_buf *b)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < c->columns->n; i++) {
        if (i)
            rc = enc_put(b, &c->delimiter, 1);
        if (rc == 0)
            rc = csv_field(c, b, c->columns->items[i], strlen(c->columns->items[i]));
    }
    return rc ? rc : enc_put(b, "\r\n", 2);
}

struct row_ctx {
    const struct enc_csv *c;
    struct enc_member *vals; /* by column */
    bool *have;
    char *why;
    size_t whylen;
};

static int row_member(void *arg, const struct enc_member *m)
{
    struct row_ctx *r = arg;
    for (size_t i = 0; i < r->c->columns->n; i++) {
        if (strcmp(r->c->columns->items[i], m->name) == 0) {
            r->vals[i] = *m;
            r->have[i] = true;
            return 0;
        }
    }
    snprintf(r->why, r->whylen, "member \"%.200s\" is not a column of the CSV file", m->name);
    return PB_EPARSE;
}

int enc_csv_row(const struct enc_csv *c, struct enc_buf *b, const char *payload, size_t len,
                char *why, size_t whylen)
{
    size_t n = c->columns->n;
    struct row_ctx r = {.c = c, .why = why, .whylen = whylen};
    r.vals = calloc(n ? n : 1, sizeof(*r.vals));
    r.have = calloc(n ? n : 1, sizeof(*r.have));
    struct enc_buf tmp = {0};
    int rc = PB_ENOMEM;
    if (!r.vals || !r.have)
        goto out;
    rc = enc_members(payload, len, row_member, &r, why, whylen);
    if (rc)
        goto out;
    size_t start = b->n;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (i)
            rc = enc_put(b, &c->delimiter, 1);
        if (rc || !r.have[i] || r.vals[i].kind == 'z')
            continue;
        if (r.vals[i].kind == 's') {
            rc = unescape(r.vals[i].value, r.vals[i].len, &tmp);
            if (rc == 0)
                rc = csv_field(c, b, tmp.p, tmp.n);
        } else {
            rc = csv_field(c, b, r.vals[i].value, r.vals[i].len);
        }
    }
    if (rc == 0)
        rc = enc_put(b, "\r\n", 2);
    if (rc)
        b->n = start;
out:
    free(r.vals);
    free(r.have);
    enc_buf_free(&tmp);
    return rc;
}

struct keys_ctx {
    struct pb_strlist *l;
};

static int key_member(void *arg, const struct enc_member *m)
{
    struct keys_ctx *k = arg;
    char **items = realloc(k->l->items, (k->l->n + 1) * sizeof(*items));
    if (!items)
        return PB_ENOMEM;
    k->l->items = items;
    if (!(items[k->l->n] = strdup(m->name)))
        return PB_ENOMEM;
    k->l->n++;
    return 0;
}

int enc_csv_keys(const char *payload, size_t len, struct pb_strlist *out, char *why, size_t whylen)
{
    memset(out, 0, sizeof(*out));
    struct keys_ctx k = {out};
    int rc = enc_members(payload, len, key_member, &k, why, whylen);
    if (rc == 0 && out->n == 0) {
        snprintf(why, whylen, "the first record of the CSV file has no members to name columns");
        rc = PB_EPARSE;
    }
    if (rc)
        pb_strlist_free(out);
    return rc;
}

int enc_csv_parse_header(const struct enc_csv *c, const char *line, size_t len,
                         struct pb_strlist *out)
{
    struct enc_buf f = {0};
    memset(out, 0, sizeof(*out));
    size_t i = 0;
    int rc = 0;
    while (rc == 0 && i <= len) {
        f.n = 0;
        rc = enc_put(&f, "", 0);
        bool q = i < len && line[i] == c->quote;
        if (q)
            i++;
        while (rc == 0 && i < len) {
            if (q && line[i] == c->quote) {
                if (i + 1 < len && line[i + 1] == c->quote) {
                    rc = enc_put(&f, &c->quote, 1);
                    i += 2;
                    continue;
                }
                q = false;
                i++;
                continue;
            }
            if (!q && (line[i] == c->delimiter || line[i] == '\r' || line[i] == '\n'))
                break;
            rc = enc_put(&f, &line[i], 1);
            i++;
        }
        char **items = rc ? NULL : realloc(out->items, (out->n + 1) * sizeof(*items));
        if (!items) {
            rc = PB_ENOMEM;
            break;
        }
        out->items = items;
        if (!(items[out->n] = strdup(f.p))) {
            rc = PB_ENOMEM;
            break;
        }
        out->n++;
        if (i >= len || line[i] != c->delimiter)
            break;
        i++;
    }
    enc_buf_free(&f);
    if (rc)
        pb_strlist_free(out);
    return rc;
}
