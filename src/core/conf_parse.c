/* conf_parse.c - strict value parsers and the field-table decoder.
 *
 * pb_parse_duration/size/rate/int/bool accept exactly the documented forms
 * and nothing around them. pb_conf_decode() walks a map node against one or
 * two pb_field tables: every key must be known, every value must have the
 * right shape and parse, required keys must be there, and absent ones get
 * their defaults (which go through the same parsers, so a bad default in a
 * table is caught the first time it is used).
 *
 * Error messages say where (file:line:col and the dotted path of the map)
 * and what was expected. They never quote the value of a PB_F_SECRET field
 * or of a scalar that took text from the environment: "(value hidden)". */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "patchbay/pb_conf.h"

/* ---- strict value parsers ------------------------------------------------- */

enum verdict { V_OK = 0, V_BAD, V_RANGE };

/* One or more decimal digits at *p into *v; *p moves past them. Overflow
 * still consumes the digits, so the caller can tell "too big" from "junk". */
static enum verdict digits(const char **p, uint64_t *v)
{
    const char *s = *p;
    uint64_t n = 0;
    bool over = false;
    if (*s < '0' || *s > '9')
        return V_BAD;
    for (; *s >= '0' && *s <= '9'; s++) {
        unsigned d = (unsigned)(*s - '0');
        if (n > (UINT64_MAX - d) / 10)
            over = true;
        else
            n = n * 10 + d;
    }
    *p = s;
    *v = n;
    return over ? V_RANGE : V_OK;
}

/* Components must come in decreasing unit order, each unit once: "1h30m",
 * not "30m1h" or "1m1m" (which are more likely typos than intent). */
static enum verdict duration(const char *s, int64_t *out)
{
    static const struct {
        const char *name;
        int64_t ms;
    } units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
    int64_t total = 0;
    int last = 5; /* rank of the previous unit; units are ranked by index */
    bool over = false;

    if (!s || !*s)
        return V_BAD;
    if (strcmp(s, "0") == 0) {
        *out = 0;
        return V_OK;
    }
    while (*s) {
        uint64_t v;
        enum verdict d = digits(&s, &v);
        if (d == V_BAD)
            return V_BAD;
        over |= d == V_RANGE;
        int u;
        if (s[0] == 'm' && s[1] == 's')
            u = 0;
        else if (*s == 's')
            u = 1;
        else if (*s == 'm')
            u = 2;
        else if (*s == 'h')
            u = 3;
        else if (*s == 'd')
            u = 4;
        else
            return V_BAD;
        if (u >= last)
            return V_BAD;
        last = u;
        s += strlen(units[u].name);
        if (over || v > (uint64_t)(INT64_MAX / units[u].ms)) {
            over = true;
            continue;
        }
        int64_t part = (int64_t)v * units[u].ms;
        if (total > INT64_MAX - part)
            over = true;
        else
            total += part;
    }
    if (over)
        return V_RANGE;
    *out = total;
    return V_OK;
}

static enum verdict size(const char *s, uint64_t *out)
{
    static const struct {
        const char *name;
        uint64_t mult;
    } units[] = {
        {"", 1},
        {"B", 1},
        {"KB", 1000ull},
        {"MB", 1000ull * 1000},
        {"GB", 1000ull * 1000 * 1000},
        {"TB", 1000ull * 1000 * 1000 * 1000},
        {"KiB", 1ull << 10},
        {"MiB", 1ull << 20},
        {"GiB", 1ull << 30},
        {"TiB", 1ull << 40},
    };
    uint64_t v;
    if (!s)
        return V_BAD;
    enum verdict d = digits(&s, &v);
    if (d == V_BAD)
        return V_BAD;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(s, units[i].name) != 0)
            continue;
        if (d == V_RANGE || v > UINT64_MAX / units[i].mult)
            return V_RANGE;
        *out = v * units[i].mult;
        return V_OK;
    }
    return V_BAD;
}

static enum verdict rate(const char *s, struct pb_rate *out)
{
    uint64_t v;
    int64_t period;
    if (!s)
        return V_BAD;
    enum verdict d = digits(&s, &v);
    if (d == V_BAD || s[0] != '/' || !s[1] || s[2])
        return V_BAD;
    switch (s[1]) {
    case 's':
        period = 1000;
        break;
    case 'm':
        period = 60000;
        break;
    case 'h':
        period = 3600000;
        break;
    default:
        return V_BAD;
    }
    if (d == V_RANGE)
        return V_RANGE;
    if (v == 0)
        return V_BAD;
    *out = (struct pb_rate){.count = v, .period_ms = period};
    return V_OK;
}

static enum verdict integer(const char *s, int64_t *out)
{
    uint64_t v;
    bool neg = false;
    if (!s)
        return V_BAD;
    if (*s == '-') {
        neg = true;
        s++;
    }
    enum verdict d = digits(&s, &v);
    if (d == V_BAD || *s)
        return V_BAD;
    if (d == V_RANGE || v > (uint64_t)INT64_MAX + neg)
        return V_RANGE;
    /* -(INT64_MAX + 1) is computed without overflowing int64_t */
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return V_OK;
}

int pb_parse_duration(const char *s, int64_t *ms)
{
    int64_t v;
    if (duration(s, &v) != V_OK)
        return PB_EINVAL;
    *ms = v;
    return 0;
}

int pb_parse_size(const char *s, uint64_t *bytes)
{
    uint64_t v;
    if (size(s, &v) != V_OK)
        return PB_EINVAL;
    *bytes = v;
    return 0;
}

int pb_parse_rate(const char *s, struct pb_rate *out)
{
    struct pb_rate v;
    if (rate(s, &v) != V_OK)
        return PB_EINVAL;
    *out = v;
    return 0;
}

int pb_parse_int(const char *s, int64_t *out)
{
    int64_t v;
    if (integer(s, &v) != V_OK)
        return PB_EINVAL;
    *out = v;
    return 0;
}

int pb_parse_bool(const char *s, bool *out)
{
    if (s && strcmp(s, "true") == 0)
        *out = true;
    else if (s && strcmp(s, "false") == 0)
        *out = false;
    else
        return PB_EINVAL;
    return 0;
}

/* ---- decoded shapes ------------------------------------------------------- */

void pb_strlist_free(struct pb_strlist *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->n; i++)
        free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

void pb_strmap_free(struct pb_strmap *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++) {
        free(m->keys[i]);
        free(m->vals[i]);
    }
    free(m->keys);
    free(m->vals);
    m->keys = m->vals = NULL;
    m->n = 0;
}

const char *pb_strmap_get(const struct pb_strmap *m, const char *key)
{
    if (!m || !key)
        return NULL;
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->keys[i], key) == 0)
            return m->vals[i];
    return NULL;
}

/* ---- error text ----------------------------------------------------------- */

#define SHOWN_MAX 48 /* characters of a value quoted in an error */

__attribute__((format(printf, 3, 4))) static int fail(struct pb_err *err, const struct pb_node *at,
                                                      const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pb_err_vset(err, PB_ECONFIG, fmt, ap);
    va_end(ap);
    if (err && at) {
        err->file = at->file;
        err->line = at->line;
        err->col = at->col;
    }
    return PB_ECONFIG;
}

static int nomem(struct pb_err *err)
{
    return pb_err_set(err, PB_ENOMEM, "out of memory decoding the configuration");
}

/* s (len bytes) quoted for a message: escapes, and trimmed at a character
 * boundary past SHOWN_MAX bytes. */
static const char *quote(const char *s, size_t len, char *buf, size_t cap)
{
    size_t o = 0;
    bool cut = false;
    buf[o++] = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i >= SHOWN_MAX && (c & 0xC0) != 0x80) {
            cut = true;
            break;
        }
        if (o + 8 >= cap) {
            cut = true;
            break;
        }
        if (c == '"' || c == '\\')
            o += (size_t)snprintf(buf + o, cap - o, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
        else
            buf[o++] = (char)c;
    }
    if (cut && o + 4 < cap) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

/* A value as an error may show it: quoted, or hidden when it is a secret or
 * came from the environment. */
static const char *shown(const struct pb_node *v, bool secret, char *buf, size_t cap)
{
    if (secret || v->interpolated || !v->str)
        return "(value hidden)";
    return quote(v->str, v->len, buf, cap);
}

static const char *a_type(enum pb_node_type t)
{
    switch (t) {
    case PB_NODE_NULL:
        return "an empty value";
    case PB_NODE_SCALAR:
        return "a scalar";
    case PB_NODE_MAP:
        return "a map";
    case PB_NODE_SEQ:
        return "a sequence";
    }
    return "something else";
}

/* Append to a path buffer; control characters in keys print as '?'. */
static void path_put(char *buf, size_t cap, size_t *o, const char *s, size_t len)
{
    for (size_t i = 0; i < len && *o + 1 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[(*o)++] = c < 0x20 || c == 0x7f ? '?' : (char)c;
    }
    buf[*o] = '\0';
}

/* Dotted path from the root to n ("pipelines.shop.process[0].map"); empty
 * for the root. A long path keeps its end, the part that says most. */
static const char *path_of(const struct pb_node *n, char *out, size_t cap)
{
    const struct pb_node *chain[2 * 64 + 8];
    size_t depth = 0;
    char buf[1024];
    size_t o = 0;

    buf[0] = '\0';
    for (const struct pb_node *c = n; c && c->parent && depth < sizeof(chain) / sizeof(chain[0]);
         c = c->parent)
        chain[depth++] = c;
    while (depth--) {
        const struct pb_node *c = chain[depth], *p = c->parent;
        const struct pb_node *key = NULL;
        char idx[32];
        if (p->type == PB_NODE_SEQ) {
            for (size_t i = 0; i < p->n; i++)
                if (p->vals[i] == c) {
                    snprintf(idx, sizeof(idx), "[%zu]", i);
                    path_put(buf, sizeof(buf), &o, idx, strlen(idx));
                    break;
                }
            continue;
        }
        for (size_t i = 0; i < p->n && !key; i++)
            if (p->vals[i] == c || p->keys[i] == c)
                key = p->keys[i];
        if (!key || !key->str)
            continue;
        if (o)
            path_put(buf, sizeof(buf), &o, ".", 1);
        path_put(buf, sizeof(buf), &o, key->str, key->len > 40 ? 40 : key->len);
    }
    if (o < cap) {
        memcpy(out, buf, o + 1);
    } else {
        memcpy(out, "...", 3);
        memcpy(out + 3, buf + o - (cap - 4), cap - 3);
    }
    return out;
}

/* "in \"a.b\"" or "at the top level", for messages about a map. */
static const char *where(const struct pb_node *map, char *buf, size_t cap)
{
    char path[160];
    path_of(map, path, sizeof(path));
    if (!map || !path[0])
        snprintf(buf, cap, "at the top level");
    else
        snprintf(buf, cap, "in \"%s\"", path);
    return buf;
}

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    size_t row[65];
    if (la > 64 || lb > 64)
        return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* The closest of names to s within 2 edits (and fewer than s has
 * characters, so "x" does not suggest "y"); NULL if none. */
static const char *closest(const char *s, const char *const *names, size_t n)
{
    const char *best = NULL;
    size_t best_d = 3, len = strlen(s);
    for (size_t i = 0; i < n; i++) {
        size_t d = edit_distance(s, names[i]);
        if (d < best_d && d < len) {
            best = names[i];
            best_d = d;
        }
    }
    return best;
}

/* "a, b, c" into buf, ending in ", ..." when it does not fit. */
static const char *join(const char *const *names, size_t n, char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        size_t need = strlen(names[i]) + (i ? 2 : 0);
        if (o + need + 6 >= cap) {
            snprintf(buf + o, cap - o, "%s...", i ? ", " : "");
            break;
        }
        o += (size_t)snprintf(buf + o, cap - o, "%s%s", i ? ", " : "", names[i]);
    }
    return buf;
}

/* ---- the decoder ---------------------------------------------------------- */

struct table {
    const struct pb_field *fields;
    void *out;
};

static void *slot(void *out, const struct pb_field *f)
{
    return (char *)out + f->offset;
}

static size_t field_size(enum pb_field_type t)
{
    switch (t) {
    case PB_F_STR:
    case PB_F_SECRET:
        return sizeof(char *);
    case PB_F_BOOL:
        return sizeof(bool);
    case PB_F_INT:
    case PB_F_DURATION:
        return sizeof(int64_t);
    case PB_F_SIZE:
        return sizeof(uint64_t);
    case PB_F_RATE:
        return sizeof(struct pb_rate);
    case PB_F_ENUM:
        return sizeof(int);
    case PB_F_STRLIST:
        return sizeof(struct pb_strlist);
    case PB_F_STRMAP:
        return sizeof(struct pb_strmap);
    case PB_F_NODE:
        return sizeof(const struct pb_node *);
    case PB_F_OBJECT:
    case PB_F_END:
        break;
    }
    return 0;
}

/* Zero every field the table describes (and no other byte of out), so
 * pb_conf_free() is safe whatever happens next. */
static void zero_fields(const struct pb_field *fields, void *out)
{
    for (const struct pb_field *f = fields; f && f->type != PB_F_END; f++) {
        if (f->type == PB_F_OBJECT)
            zero_fields(f->sub, slot(out, f));
        else
            memset(slot(out, f), 0, field_size(f->type));
    }
}

void pb_conf_free(const struct pb_field *fields, void *out)
{
    if (!out)
        return;
    for (const struct pb_field *f = fields; f && f->type != PB_F_END; f++) {
        void *p = slot(out, f);
        switch (f->type) {
        case PB_F_STR:
        case PB_F_SECRET:
            free(*(char **)p);
            *(char **)p = NULL;
            break;
        case PB_F_STRLIST:
            pb_strlist_free(p);
            break;
        case PB_F_STRMAP:
            pb_strmap_free(p);
            break;
        case PB_F_OBJECT:
            pb_conf_free(f->sub, p);
            break;
        case PB_F_NODE:
            *(const struct pb_node **)p = NULL;
            break;
        default:
            break;
        }
    }
}

static const struct pb_field *find_field(const struct table *tabs, size_t ntabs,
                                         const struct pb_node *key, size_t *which)
{
    for (size_t t = 0; t < ntabs; t++)
        for (const struct pb_field *f = tabs[t].fields; f && f->type != PB_F_END; f++)
            if (f->name && strlen(f->name) == key->len &&
                memcmp(f->name, key->str, key->len) == 0) {
                *which = t;
                return f;
            }
    return NULL;
}

static int unknown_key(const struct pb_node *map, const struct pb_node *key,
                       const struct table *tabs, size_t ntabs, struct pb_err *err)
{
    const char *names[64];
    size_t n = 0;
    char kbuf[SHOWN_MAX * 4 + 8], wbuf[200], list[280], hint[96] = "";

    for (size_t t = 0; t < ntabs; t++)
        for (const struct pb_field *f = tabs[t].fields; f && f->type != PB_F_END; f++)
            if (f->name && n < sizeof(names) / sizeof(names[0]))
                names[n++] = f->name;
    quote(key->str, key->len, kbuf, sizeof(kbuf));
    where(map, wbuf, sizeof(wbuf));
    if (n == 0)
        return fail(err, key, "unknown key %s %s (it takes no options)", kbuf, wbuf);
    const char *near = key->len == strlen(key->str) ? closest(key->str, names, n) : NULL;
    if (near)
        snprintf(hint, sizeof(hint), ": did you mean \"%s\"?", near);
    return fail(err, key, "unknown key %s %s%s (expected one of: %s)", kbuf, wbuf, hint,
                join(names, n, list, sizeof(list)));
}

/* The scalar text of v for field f, or an error naming the expected shape. */
static int need_scalar(const struct pb_field *f, const struct pb_node *v, const char *expected,
                       struct pb_err *err)
{
    if (v->type != PB_NODE_SCALAR || !v->str)
        return fail(err, v, "expected %s for \"%s\", got %s", expected, f->name, a_type(v->type));
    if (strlen(v->str) != v->len)
        return fail(err, v, "the value of \"%s\" contains a NUL character", f->name);
    return 0;
}

static int decode_strlist(const struct pb_field *f, struct pb_strlist *l, const struct pb_node *v,
                          struct pb_err *err)
{
    const struct pb_node *one[1] = {v};
    const struct pb_node *const *items = one;
    size_t n = 1;

    pb_strlist_free(l);
    if (v->type == PB_NODE_SEQ) {
        items = (const struct pb_node *const *)v->vals;
        n = v->n;
    } else if (v->type != PB_NODE_SCALAR) {
        return fail(err, v, "expected a list of strings for \"%s\", got %s", f->name,
                    a_type(v->type));
    }
    if (n == 0)
        return 0;
    l->items = calloc(n, sizeof(*l->items));
    if (!l->items)
        return nomem(err);
    for (size_t i = 0; i < n; i++) {
        const struct pb_node *it = items[i];
        if (it->type != PB_NODE_SCALAR)
            return fail(err, it, "expected a string in the list \"%s\", got %s", f->name,
                        a_type(it->type));
        if (strlen(it->str) != it->len)
            return fail(err, it, "an item of \"%s\" contains a NUL character", f->name);
        l->items[i] = strdup(it->str);
        if (!l->items[i])
            return nomem(err);
        l->n = i + 1;
    }
    return 0;
}

static int decode_strmap(const struct pb_field *f, struct pb_strmap *m, const struct pb_node *v,
                         struct pb_err *err)
{
    char kbuf[SHOWN_MAX * 4 + 8];
    pb_strmap_free(m);
    if (v->type != PB_NODE_MAP)
        return fail(err, v, "expected a map of strings for \"%s\", got %s", f->name,
                    a_type(v->type));
    if (v->n == 0)
        return 0;
    m->keys = calloc(v->n, sizeof(*m->keys));
    m->vals = calloc(v->n, sizeof(*m->vals));
    if (!m->keys || !m->vals)
        return nomem(err);
    for (size_t i = 0; i < v->n; i++) {
        const struct pb_node *k = v->keys[i], *val = v->vals[i];
        if (val->type != PB_NODE_SCALAR)
            return fail(err, val, "expected a string for %s in \"%s\", got %s",
                        quote(k->str, k->len, kbuf, sizeof(kbuf)), f->name, a_type(val->type));
        if (strlen(k->str) != k->len || strlen(val->str) != val->len)
            return fail(err, val, "an entry of \"%s\" contains a NUL character", f->name);
        m->keys[i] = strdup(k->str);
        m->vals[i] = strdup(val->str);
        m->n = i + 1; /* counted first: a half-made pair is still freed */
        if (!m->keys[i] || !m->vals[i])
            return nomem(err);
    }
    return 0;
}

static int decode_maps(const struct pb_node *node, const struct pb_node *at,
                       const struct table *tabs, size_t ntabs, bool required, const char *what,
                       struct pb_err *err);

/* One present value (never of type NULL unless f is PB_F_NODE). */
static int decode_value(const struct pb_field *f, void *dst, const struct pb_node *v,
                        struct pb_err *err)
{
    char vbuf[SHOWN_MAX * 4 + 8];
    bool secret = f->type == PB_F_SECRET;
    int rc;

    switch (f->type) {
    case PB_F_STR:
    case PB_F_SECRET: {
        if ((rc = need_scalar(f, v, "a string", err)))
            return rc;
        char *s = strdup(v->str);
        if (!s)
            return nomem(err);
        free(*(char **)dst);
        *(char **)dst = s;
        return 0;
    }
    case PB_F_BOOL:
        if ((rc = need_scalar(f, v, "true or false", err)))
            return rc;
        if (pb_parse_bool(v->str, dst))
            return fail(err, v, "bad boolean %s for \"%s\": expected true or false",
                        shown(v, secret, vbuf, sizeof(vbuf)), f->name);
        return 0;
    case PB_F_INT: {
        int64_t n;
        if ((rc = need_scalar(f, v, "a whole number", err)))
            return rc;
        switch (integer(v->str, &n)) {
        case V_OK:
            break;
        case V_RANGE:
            return fail(err, v, "integer %s for \"%s\" is too large",
                        shown(v, secret, vbuf, sizeof(vbuf)), f->name);
        default:
            return fail(err, v, "bad integer %s for \"%s\": expected a whole number (e.g. 12, -3)",
                        shown(v, secret, vbuf, sizeof(vbuf)), f->name);
        }
        if (f->max > f->min && (n < f->min || n > f->max))
            return fail(err, v, "\"%s\" must be between %lld and %lld, got %s", f->name,
                        (long long)f->min, (long long)f->max, shown(v, secret, vbuf, sizeof(vbuf)));
        *(int64_t *)dst = n;
        return 0;
    }
    case PB_F_DURATION:
        if ((rc = need_scalar(f, v, "a duration", err)))
            return rc;
        switch (duration(v->str, dst)) {
        case V_OK:
            return 0;
        case V_RANGE:
            return fail(err, v, "duration %s for \"%s\" is too large",
                        shown(v, secret, vbuf, sizeof(vbuf)), f->name);
        default:
            return fail(err, v,
                        "bad duration %s for \"%s\": expected a number with a unit ms, s, m, h "
                        "or d (e.g. 500ms, 10m, 3d, 1h30m)",
                        shown(v, secret, vbuf, sizeof(vbuf)), f->name);
        }
    case PB_F_SIZE:
        if ((rc = need_scalar(f, v, "a size", err)))
            return rc;
        switch (size(v->str, dst)) {
        case V_OK:
            return 0;
        case V_RANGE:
            return fail(err, v, "size %s for \"%s\" is too large",
                        shown(v, secret, vbuf, sizeof(vbuf)), f->name);
        default:
            return fail(err, v,
                        "bad size %s for \"%s\": expected a whole number of bytes with an "
                        "optional unit B, KB, MB, GB, TB, KiB, MiB, GiB or TiB (e.g. 512KiB, "
                        "1MiB)",
                        shown(v, secret, vbuf, sizeof(vbuf)), f->name);
        }
    case PB_F_RATE:
        if ((rc = need_scalar(f, v, "a rate", err)))
            return rc;
        switch (rate(v->str, dst)) {
        case V_OK:
            return 0;
        case V_RANGE:
            return fail(err, v, "rate %s for \"%s\" is too large",
                        shown(v, secret, vbuf, sizeof(vbuf)), f->name);
        default:
            return fail(err, v,
                        "bad rate %s for \"%s\": expected a count above 0 per s, m or h (e.g. "
                        "100/s, 5/m)",
                        shown(v, secret, vbuf, sizeof(vbuf)), f->name);
        }
    case PB_F_ENUM: {
        size_t n = 0;
        char list[280], hint[96] = "";
        if ((rc = need_scalar(f, v, "a single value", err)))
            return rc;
        for (; f->choices && f->choices[n]; n++)
            if (strcmp(v->str, f->choices[n]) == 0) {
                *(int *)dst = (int)n;
                return 0;
            }
        bool hidden = secret || v->interpolated;
        const char *near = hidden || !f->choices ? NULL : closest(v->str, f->choices, n);
        if (near)
            snprintf(hint, sizeof(hint), " (did you mean \"%s\"?)", near);
        return fail(err, v, "bad value %s for \"%s\": expected one of: %s%s",
                    shown(v, secret, vbuf, sizeof(vbuf)), f->name,
                    f->choices ? join(f->choices, n, list, sizeof(list)) : "(none)", hint);
    }
    case PB_F_STRLIST:
        return decode_strlist(f, dst, v, err);
    case PB_F_STRMAP:
        return decode_strmap(f, dst, v, err);
    case PB_F_OBJECT: {
        struct table sub = {f->sub, dst};
        return decode_maps(v, v, &sub, 1, true, f->name, err);
    }
    case PB_F_NODE:
        *(const struct pb_node **)dst = v;
        return 0;
    case PB_F_END:
        break;
    }
    return pb_err_set(err, PB_EINVAL, "field \"%s\" has an unknown type %d", f->name, (int)f->type);
}

/* A default is table text, so a failure is the table's fault: the message
 * says so and points nowhere in the user's file. */
static int bad_default(const struct pb_field *f, struct pb_err *err)
{
    char was[PB_ERR_MSG_MAX] = "";
    if (err)
        memcpy(was, err->msg, sizeof(was)); /* err->msg is about to be rewritten */
    return pb_err_set(err, PB_EINVAL, "the default of field \"%s\" is wrong: %s", f->name, was);
}

static int apply_default(const struct pb_field *f, void *dst, const struct pb_node *at,
                         struct pb_err *err)
{
    int rc;
    if (f->type == PB_F_OBJECT) {
        struct table sub = {f->sub, dst};
        if (f->def)
            return pb_err_set(err, PB_EINVAL,
                              "field \"%s\": an object takes its defaults from its sub-fields",
                              f->name);
        return decode_maps(NULL, at, &sub, 1, false, f->name, err);
    }
    if (!f->def)
        return 0;
    if (f->type == PB_F_NODE)
        return pb_err_set(err, PB_EINVAL, "field \"%s\": node fields cannot have a default",
                          f->name);
    if (f->type == PB_F_STRLIST || f->type == PB_F_STRMAP) {
        /* Written as YAML: "[a, b]" or "{k: v}". */
        struct pb_conf_doc *doc = pb_conf_load_string("<default>", f->def, strlen(f->def), err);
        if (!doc)
            return err && err->code == PB_ENOMEM ? PB_ENOMEM : bad_default(f, err);
        rc = decode_value(f, dst, pb_conf_root(doc), err);
        pb_conf_doc_destroy(doc);
        if (rc && rc != PB_ENOMEM)
            rc = bad_default(f, err);
        return rc;
    }
    /* Scalars are taken literally: no YAML quoting, no interpolation. */
    struct pb_node v = {
        .type = PB_NODE_SCALAR,
        .str = (char *)f->def,
        .len = strlen(f->def),
        .interpolated = f->type == PB_F_SECRET,
    };
    rc = decode_value(f, dst, &v, err);
    if (rc && rc != PB_ENOMEM)
        rc = bad_default(f, err);
    return rc;
}

/* The tables of decode2 must not share a name: the key would be ambiguous. */
static int check_tables(const struct table *tabs, size_t ntabs, struct pb_err *err)
{
    if (ntabs < 2)
        return 0;
    for (const struct pb_field *a = tabs[0].fields; a && a->type != PB_F_END; a++)
        for (const struct pb_field *b = tabs[1].fields; b && b->type != PB_F_END; b++)
            if (a->name && b->name && strcmp(a->name, b->name) == 0)
                return pb_err_set(err, PB_EINVAL, "field \"%s\" is defined by both tables",
                                  a->name);
    return 0;
}

/* Decode node (a map, NULL, or a null node = absent) into every table.
 * at positions errors when node is absent; required is false for an absent
 * nested object, which only takes defaults; what names the map in shape
 * errors (NULL: its path). */
static int decode_maps(const struct pb_node *node, const struct pb_node *at,
                       const struct table *tabs, size_t ntabs, bool required, const char *what,
                       struct pb_err *err)
{
    char wbuf[200];
    int rc;

    for (size_t t = 0; t < ntabs; t++)
        zero_fields(tabs[t].fields, tabs[t].out);
    rc = check_tables(tabs, ntabs, err);
    if (rc)
        return rc;
    if (node && node->type == PB_NODE_NULL) {
        at = node;
        node = NULL;
    }
    if (node && node->type != PB_NODE_MAP) {
        if (what)
            return fail(err, node, "expected a map for \"%s\", got %s", what, a_type(node->type));
        path_of(node, wbuf, sizeof(wbuf));
        if (!wbuf[0])
            return fail(err, node, "expected a map at the top level, got %s", a_type(node->type));
        return fail(err, node, "expected a map for \"%s\", got %s", wbuf, a_type(node->type));
    }
    /* Present keys in file order, so the first error is the first in the file. */
    for (size_t i = 0; node && i < node->n; i++) {
        const struct pb_node *key = node->keys[i], *v = node->vals[i];
        size_t t = 0;
        const struct pb_field *f = find_field(tabs, ntabs, key, &t);
        if (!f)
            return unknown_key(node, key, tabs, ntabs, err);
        if (v->type == PB_NODE_NULL && f->type != PB_F_NODE)
            continue; /* "key:" with nothing is absent; defaults below */
        rc = decode_value(f, slot(tabs[t].out, f), v, err);
        if (rc)
            return rc;
    }
    /* Absent keys: required, or defaulted. */
    for (size_t t = 0; t < ntabs; t++) {
        for (const struct pb_field *f = tabs[t].fields; f && f->type != PB_F_END; f++) {
            const struct pb_node *v = pb_node_get(node, f->name);
            if (v && (v->type != PB_NODE_NULL || f->type == PB_F_NODE))
                continue;
            if (required && (f->flags & PB_FIELD_REQUIRED)) {
                const struct pb_node *map = node ? node : at;
                if (v)
                    return fail(err, v, "required key \"%s\" has no value", f->name);
                if (!map)
                    return fail(err, NULL, "missing required key \"%s\"", f->name);
                return fail(err, map, "missing required key \"%s\" %s", f->name,
                            where(map, wbuf, sizeof(wbuf)));
            }
            rc = apply_default(f, slot(tabs[t].out, f), v ? v : node ? node : at, err);
            if (rc)
                return rc;
        }
    }
    return 0;
}

int pb_conf_decode(const struct pb_node *node, const struct pb_field *fields, void *out,
                   struct pb_err *err)
{
    struct table tab = {fields, out};
    if (!out && fields && fields->type != PB_F_END)
        return pb_err_set(err, PB_EINVAL, "pb_conf_decode: no struct to fill");
    return decode_maps(node, node, &tab, 1, true, NULL, err);
}

int pb_conf_decode2(const struct pb_node *node, const struct pb_field *fields_a, void *out_a,
                    const struct pb_field *fields_b, void *out_b, struct pb_err *err)
{
    struct table tabs[2] = {{fields_a, out_a}, {fields_b, out_b}};
    if ((!out_a && fields_a && fields_a->type != PB_F_END) ||
        (!out_b && fields_b && fields_b->type != PB_F_END))
        return pb_err_set(err, PB_EINVAL, "pb_conf_decode2: no struct to fill");
    return decode_maps(node, node, tabs, 2, true, NULL, err);
}
