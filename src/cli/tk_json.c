/* tk_json.c - values for `patchbay test`: YAML nodes of a test file as JSON
 * (numbers kept exactly as written), jq values printed for reports, and a
 * line diff of what was expected against what was delivered.
 *
 * Single-threaded (the test runner's). */
#include <stdlib.h>
#include <string.h>

#include "cli/testkit.h"
#include "patchbay/pb_jq.h"

#define JSON_MAX ((size_t)16 << 20)
#define DIFF_LINES_MAX 2000
#define DIFF_CONTEXT 3

struct buf {
    char *p;
    size_t len, cap;
    int rc;
};

static void put(struct buf *b, const char *s, size_t n)
{
    if (b->rc)
        return;
    if (b->len + n + 1 > JSON_MAX) {
        b->rc = PB_ETOOBIG;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->rc = PB_ENOMEM;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void puts_(struct buf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* JSON's number grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool json_number(const char *s)
{
    if (*s == '-')
        s++;
    if (*s == '0')
        s++;
    else if (*s >= '1' && *s <= '9')
        while (*s >= '0' && *s <= '9')
            s++;
    else
        return false;
    if (*s == '.') {
        s++;
        if (!(*s >= '0' && *s <= '9'))
            return false;
        while (*s >= '0' && *s <= '9')
            s++;
    }
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '+' || *s == '-')
            s++;
        if (!(*s >= '0' && *s <= '9'))
            return false;
        while (*s >= '0' && *s <= '9')
            s++;
    }
    return *s == 0;
}

static void put_string(struct buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[7];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            put(b, esc, 2);
        } else if (c == '\n') {
            put(b, "\\n", 2);
        } else if (c == '\t') {
            put(b, "\\t", 2);
        } else if (c == '\r') {
            put(b, "\\r", 2);
        } else if (c < 0x20) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            put(b, esc, 6);
        } else {
            put(b, (const char *)&s[i], 1);
        }
    }
    put(b, "\"", 1);
}

static void node_json(struct buf *b, const struct pb_node *n)
{
    switch (n->type) {
    case PB_NODE_NULL:
        puts_(b, "null");
        return;
    case PB_NODE_SCALAR:
        if (!n->quoted && (!strcmp(n->str, "true") || !strcmp(n->str, "false") ||
                           !strcmp(n->str, "null") || json_number(n->str)))
            put(b, n->str, n->len);
        else
            put_string(b, n->str, n->len);
        return;
    case PB_NODE_MAP:
        put(b, "{", 1);
        for (size_t i = 0; i < n->n; i++) {
            if (i)
                put(b, ",", 1);
            put_string(b, n->keys[i]->str, n->keys[i]->len);
            put(b, ":", 1);
            node_json(b, n->vals[i]);
        }
        put(b, "}", 1);
        return;
    case PB_NODE_SEQ:
        put(b, "[", 1);
        for (size_t i = 0; i < n->n; i++) {
            if (i)
                put(b, ",", 1);
            node_json(b, n->vals[i]);
        }
        put(b, "]", 1);
        return;
    }
}

int tk_node_json(const struct pb_node *n, char **out, size_t *len, struct pb_err *err)
{
    struct buf b = {0};
    node_json(&b, n);
    if (!b.rc && !b.p)
        put(&b, "", 0);
    if (b.rc) {
        free(b.p);
        return pb_err_at(err, b.rc, n->file, n->line, n->col, "%s",
                         b.rc == PB_ETOOBIG ? "value too large" : "out of memory");
    }
    *out = b.p;
    if (len)
        *len = b.len;
    return 0;
}

int tk_node_jv(const struct pb_node *n, jv *out, struct pb_err *err)
{
    char *text;
    size_t len;
    struct pb_err perr = {0};
    int rc = tk_node_json(n, &text, &len, err);
    if (rc)
        return rc;
    rc = pb_jq_parse(text, len, out, &perr);
    free(text);
    if (rc) {
        /* The byte offset is into the text made from the YAML: not useful. */
        char *at = strstr(perr.msg, " at byte ");
        if (at)
            *at = 0;
        return pb_err_at(err, rc, n->file, n->line, n->col, "not a value jq can carry exactly: %s",
                         perr.msg);
    }
    return 0;
}

static char *dump(jv v, int flags)
{
    jv s = jv_dump_string(jv_copy(v), flags);
    char *r = strdup(jv_string_value(s));
    jv_free(s);
    return r;
}

char *tk_pretty(jv v)
{
    return dump(v, JV_PRINT_INDENT_FLAGS(2) | JV_PRINT_SORTED);
}

char *tk_compact(jv v, size_t max)
{
    char *s = dump(v, 0);
    if (s && strlen(s) > max && max > 3)
        memcpy(s + max - 3, "...", 4);
    return s;
}

/* ---- diff --------------------------------------------------------------------------------------
 */

struct lines {
    const char **s;
    size_t *len;
    size_t n;
};

static int split_lines(const char *text, struct lines *l)
{
    size_t n = 1;
    for (const char *p = text; *p; p++)
        n += *p == '\n';
    l->s = calloc(n, sizeof(*l->s));
    l->len = calloc(n, sizeof(*l->len));
    if (!l->s || !l->len)
        return PB_ENOMEM;
    l->n = 0;
    const char *p = text;
    for (;;) {
        const char *nl = strchr(p, '\n');
        size_t k = nl ? (size_t)(nl - p) : strlen(p);
        if (!nl && k == 0 && l->n)
            break;
        l->s[l->n] = p;
        l->len[l->n++] = k;
        if (!nl)
            break;
        p = nl + 1;
    }
    return 0;
}

static bool same(const struct lines *a, size_t i, const struct lines *b, size_t j)
{
    return a->len[i] == b->len[j] && memcmp(a->s[i], b->s[j], a->len[i]) == 0;
}

static void line(FILE *f, const char *indent, char mark, const char *s, size_t n, bool color)
{
    const char *on = !color ? "" : mark == '-' ? "\033[31m" : mark == '+' ? "\033[32m" : "";
    fprintf(f, "%s%s%c %.*s%s\n", indent, on, mark, (int)n, s,
            color && mark != ' ' ? "\033[0m" : "");
}

void tk_diff(FILE *f, const char *want, const char *got, const char *indent, bool color)
{
    struct lines a = {0}, b = {0};
    unsigned short *lcs = NULL;
    char *ops = NULL;
    if (split_lines(want, &a) || split_lines(got, &b))
        goto plain;
    if (a.n > DIFF_LINES_MAX || b.n > DIFF_LINES_MAX)
        goto plain;
    /* lcs[i][j]: longest common subsequence of a[i..] and b[j..]. */
    size_t w = b.n + 1;
    lcs = calloc((a.n + 1) * w, sizeof(*lcs));
    ops = malloc(a.n + b.n + 1);
    if (!lcs || !ops)
        goto plain;
    for (size_t i = a.n; i-- > 0;)
        for (size_t j = b.n; j-- > 0;)
            lcs[i * w + j] = same(&a, i, &b, j) ? (unsigned short)(lcs[(i + 1) * w + j + 1] + 1)
                                                : (lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]
                                                       ? lcs[(i + 1) * w + j]
                                                       : lcs[i * w + j + 1]);
    /* The edit script: ' ' both, '-' want only, '+' got only. */
    size_t nops = 0, i = 0, j = 0;
    while (i < a.n || j < b.n) {
        if (i < a.n && j < b.n && same(&a, i, &b, j))
            ops[nops++] = ' ', i++, j++;
        else if (i < a.n && (j == b.n || lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]))
            ops[nops++] = '-', i++;
        else
            ops[nops++] = '+', j++;
    }
    /* Print the changes with DIFF_CONTEXT lines around them. */
    i = j = 0;
    size_t last_shown = (size_t)-1;
    for (size_t k = 0; k < nops; k++) {
        bool near = false;
        for (size_t d = k >= DIFF_CONTEXT ? k - DIFF_CONTEXT : 0;
             d < nops && d <= k + DIFF_CONTEXT && !near; d++)
            near = ops[d] != ' ';
        if (near) {
            if (last_shown != (size_t)-1 && last_shown + 1 != k)
                fprintf(f, "%s  ...\n", indent);
            if (ops[k] == '+')
                line(f, indent, '+', b.s[j], b.len[j], color);
            else
                line(f, indent, ops[k], a.s[i], a.len[i], color);
            last_shown = k;
        }
        if (ops[k] != '+')
            i++;
        if (ops[k] != '-')
            j++;
    }
    goto out;
plain:
    fprintf(f, "%sexpected:\n", indent);
    for (size_t k = 0; k < a.n; k++)
        line(f, indent, '-', a.s[k], a.len[k], color);
    fprintf(f, "%sgot:\n", indent);
    for (size_t k = 0; k < b.n; k++)
        line(f, indent, '+', b.s[k], b.len[k], color);
out:
    free(lcs);
    free(ops);
    free(a.s);
    free(a.len);
    free(b.s);
    free(b.len);
}
