/* conf.c - loading patchbay.yaml into a tree of pb_node.
 *
 * libyaml's event parser drives a small stack machine that builds the tree.
 * Every node, string and array lives in an arena owned by the document, so
 * destroying a document frees a list of chunks and a failed load frees
 * whatever it had built the same way. Scalars (not keys) are interpolated
 * from the environment as they arrive: ${VAR}, ${VAR:-default}, $$ for $.
 *
 * What YAML offers beyond plain data is refused rather than half-supported:
 * anchors, aliases, explicit tags and a second document are errors. The
 * limits below bound the memory a hostile or broken file can cost.
 *
 * Errors raised while loading point at the caller's file name, not at the
 * document's copy, because a failed load destroys the document. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <yaml.h>

#include "patchbay/pb_conf.h"

#define MAX_FILE_BYTES ((size_t)4 << 20)
#define MAX_DEPTH 64
#define MAX_NODES 100000
#define CHUNK_BYTES ((size_t)64 << 10)

/* ---- arena ---------------------------------------------------------------- */

struct chunk {
    struct chunk *next;
    size_t used, cap;
    max_align_t data[];
};

struct pb_conf_doc {
    struct chunk *chunks; /* head is the one being filled */
    const char *file;     /* in the arena; every node points here */
    struct pb_node *root;
};

/* Zeroed memory from the document's arena, or NULL. */
static void *arena_alloc(struct pb_conf_doc *doc, size_t size)
{
    const size_t align = sizeof(max_align_t);
    if (size > SIZE_MAX / 2)
        return NULL;
    size = (size + align - 1) / align * align;
    if (size == 0)
        size = align;

    struct chunk *c = doc->chunks;
    if (c && c->cap - c->used >= size) {
        void *p = (char *)c->data + c->used;
        c->used += size;
        return p;
    }
    size_t cap = size > CHUNK_BYTES / 4 ? size : CHUNK_BYTES;
    c = calloc(1, sizeof(*c) + cap);
    if (!c)
        return NULL;
    c->cap = cap;
    c->used = size;
    if (cap == size && doc->chunks) {
        /* A big allocation gets its own chunk, kept behind the head so the
         * head's free space is not wasted. */
        c->next = doc->chunks->next;
        doc->chunks->next = c;
    } else {
        c->next = doc->chunks;
        doc->chunks = c;
    }
    return c->data;
}

static char *arena_strndup(struct pb_conf_doc *doc, const char *s, size_t len)
{
    if (len == SIZE_MAX)
        return NULL;
    char *p = arena_alloc(doc, len + 1);
    if (!p)
        return NULL;
    if (len)
        memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

void pb_conf_doc_destroy(struct pb_conf_doc *doc)
{
    if (!doc)
        return;
    struct chunk *c = doc->chunks;
    while (c) {
        struct chunk *next = c->next;
        free(c);
        c = next;
    }
    free(doc);
}

const struct pb_node *pb_conf_root(const struct pb_conf_doc *doc)
{
    return doc ? doc->root : NULL;
}

/* ---- node helpers --------------------------------------------------------- */

const struct pb_node *pb_node_get(const struct pb_node *map, const char *key)
{
    if (!map || !key || map->type != PB_NODE_MAP)
        return NULL;
    size_t klen = strlen(key);
    for (size_t i = 0; i < map->n; i++) {
        const struct pb_node *k = map->keys[i];
        if (k && k->str && k->len == klen && memcmp(k->str, key, klen) == 0)
            return map->vals[i];
    }
    return NULL;
}

const char *pb_node_type_name(enum pb_node_type t)
{
    switch (t) {
    case PB_NODE_NULL:
        return "null";
    case PB_NODE_SCALAR:
        return "scalar";
    case PB_NODE_MAP:
        return "map";
    case PB_NODE_SEQ:
        return "sequence";
    }
    return "unknown";
}

/* ---- the loader ----------------------------------------------------------- */

/* An open map or sequence; a map's items alternate key, value. */
struct frame {
    struct pb_node *node;
    struct pb_node **items;
    size_t n, cap;
};

struct loader {
    struct pb_conf_doc *doc;
    const char *name; /* the caller's, for error positions */
    const char *text;
    size_t len;
    struct frame stack[MAX_DEPTH];
    int depth;
    size_t nodes;
    int documents;
    char *buf; /* interpolation scratch */
    size_t buf_len, buf_cap;
    struct pb_err *err;
};

__attribute__((format(printf, 4, 5))) static int fail_at(struct loader *ld, int line, int col,
                                                         const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pb_err_vset(ld->err, PB_ECONFIG, fmt, ap);
    va_end(ap);
    if (ld->err) {
        ld->err->file = ld->name;
        ld->err->line = line;
        ld->err->col = col;
    }
    return PB_ECONFIG;
}

static int line_of(const yaml_mark_t *m)
{
    return m->line >= INT32_MAX ? INT32_MAX : (int)m->line + 1;
}

static int col_of(const yaml_mark_t *m)
{
    return m->column >= INT32_MAX ? INT32_MAX : (int)m->column + 1;
}

static int nomem(struct loader *ld)
{
    return pb_err_set(ld->err, PB_ENOMEM, "out of memory loading the configuration");
}

static struct pb_node *new_node(struct loader *ld, enum pb_node_type type, const yaml_mark_t *m,
                                int *rc)
{
    if (++ld->nodes > MAX_NODES) {
        *rc = fail_at(ld, line_of(m), col_of(m),
                      "the configuration has more than %d values; refusing to load it", MAX_NODES);
        return NULL;
    }
    struct pb_node *n = arena_alloc(ld->doc, sizeof(*n));
    if (!n) {
        *rc = nomem(ld);
        return NULL;
    }
    n->type = type;
    n->file = ld->doc->file;
    n->line = line_of(m);
    n->col = col_of(m);
    return n;
}

/* True when the next node in the innermost open collection is a map key. */
static bool expecting_key(const struct loader *ld)
{
    if (ld->depth == 0)
        return false;
    const struct frame *f = &ld->stack[ld->depth - 1];
    return f->node->type == PB_NODE_MAP && f->n % 2 == 0;
}

static int attach(struct loader *ld, struct pb_node *n)
{
    if (ld->depth == 0) {
        ld->doc->root = n;
        return 0;
    }
    struct frame *f = &ld->stack[ld->depth - 1];
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 8;
        struct pb_node **items = realloc(f->items, cap * sizeof(*items));
        if (!items)
            return nomem(ld);
        f->items = items;
        f->cap = cap;
    }
    f->items[f->n++] = n;
    n->parent = f->node;
    return 0;
}

struct keyref {
    const struct pb_node *key;
    size_t index;
};

static int keyref_cmp(const void *a, const void *b)
{
    const struct keyref *x = a, *y = b;
    size_t len = x->key->len < y->key->len ? x->key->len : y->key->len;
    int c = memcmp(x->key->str, y->key->str, len);
    if (c)
        return c;
    if (x->key->len != y->key->len)
        return x->key->len < y->key->len ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

static bool same_key(const struct pb_node *a, const struct pb_node *b)
{
    return a->len == b->len && memcmp(a->str, b->str, a->len) == 0;
}

/* The first key, in file order, that repeats an earlier one; NULL if none.
 * Small maps compare pairs; big ones sort, so 100k keys stay cheap. */
static int find_duplicate(struct loader *ld, const struct pb_node *map, const struct pb_node **dup)
{
    *dup = NULL;
    if (map->n <= 32) {
        for (size_t j = 1; j < map->n && !*dup; j++)
            for (size_t i = 0; i < j; i++)
                if (same_key(map->keys[i], map->keys[j])) {
                    *dup = map->keys[j];
                    break;
                }
        return 0;
    }
    struct keyref *refs = malloc(map->n * sizeof(*refs));
    if (!refs)
        return nomem(ld);
    for (size_t i = 0; i < map->n; i++)
        refs[i] = (struct keyref){map->keys[i], i};
    qsort(refs, map->n, sizeof(*refs), keyref_cmp);
    /* Sorted by (key, index), the second of each run of equal keys is that
     * key's second occurrence; report the earliest such in the file. */
    size_t best = SIZE_MAX;
    for (size_t i = 1; i < map->n; i++) {
        bool second = same_key(refs[i - 1].key, refs[i].key) &&
                      (i < 2 || !same_key(refs[i - 2].key, refs[i].key));
        if (second && refs[i].index < best)
            best = refs[i].index;
    }
    if (best != SIZE_MAX)
        *dup = map->keys[best];
    free(refs);
    return 0;
}

static int close_frame(struct loader *ld)
{
    struct frame *f = &ld->stack[ld->depth - 1];
    struct pb_node *n = f->node;
    int rc = 0;

    if (n->type == PB_NODE_MAP) {
        if (f->n % 2) { /* libyaml always pairs them; be safe anyway */
            rc = fail_at(ld, n->line, n->col, "map has a key without a value");
            goto out;
        }
        n->n = f->n / 2;
    } else {
        n->n = f->n;
    }
    if (n->n) {
        n->vals = arena_alloc(ld->doc, n->n * sizeof(*n->vals));
        if (n->type == PB_NODE_MAP)
            n->keys = arena_alloc(ld->doc, n->n * sizeof(*n->keys));
        if (!n->vals || (n->type == PB_NODE_MAP && !n->keys)) {
            rc = nomem(ld);
            goto out;
        }
    }
    for (size_t i = 0; i < n->n; i++) {
        if (n->type == PB_NODE_MAP) {
            n->keys[i] = f->items[2 * i];
            n->vals[i] = f->items[2 * i + 1];
        } else {
            n->vals[i] = f->items[i];
        }
    }
    if (n->type == PB_NODE_MAP) {
        const struct pb_node *dup;
        rc = find_duplicate(ld, n, &dup);
        if (rc)
            goto out;
        if (dup) {
            char shown[80];
            snprintf(shown, sizeof(shown), "%s", dup->str);
            rc = fail_at(ld, dup->line, dup->col, "duplicate key \"%s\"%s", shown,
                         dup->len >= sizeof(shown) ? "..." : "");
            goto out;
        }
    }
out:
    free(f->items);
    f->items = NULL;
    f->n = f->cap = 0;
    ld->depth--;
    return rc;
}

static int buf_put(struct loader *ld, const char *s, size_t len)
{
    if (len > MAX_FILE_BYTES || ld->buf_len + len > MAX_FILE_BYTES)
        return PB_ETOOBIG;
    if (ld->buf_len + len + 1 > ld->buf_cap) {
        size_t cap = ld->buf_cap ? ld->buf_cap : 256;
        while (cap < ld->buf_len + len + 1)
            cap *= 2;
        char *b = realloc(ld->buf, cap);
        if (!b)
            return PB_ENOMEM;
        ld->buf = b;
        ld->buf_cap = cap;
    }
    memcpy(ld->buf + ld->buf_len, s, len);
    ld->buf_len += len;
    return 0;
}

static bool name_start(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static bool name_char(char c)
{
    return name_start(c) || (c >= '0' && c <= '9');
}

/* Interpolate s into n->str. ${VAR:-default} takes the default when VAR is
 * unset or empty (as the shell does); defaults do not nest. interpolated is
 * set when some text came from the environment. The scalar's text is never
 * quoted in an error: it may be a secret. */
static int interpolate(struct loader *ld, struct pb_node *n, const char *s, size_t len)
{
    int rc = 0;
    char *name = NULL;
    ld->buf_len = 0;

    for (size_t i = 0; i < len;) {
        const char *dollar = memchr(s + i, '$', len - i);
        size_t plain = dollar ? (size_t)(dollar - (s + i)) : len - i;
        rc = buf_put(ld, s + i, plain);
        if (rc)
            goto out;
        i += plain;
        if (i >= len)
            break;
        /* s[i] == '$' */
        if (i + 1 < len && s[i + 1] == '$') {
            rc = buf_put(ld, "$", 1);
            i += 2;
        } else if (i + 1 < len && s[i + 1] == '{') {
            const char *open = s + i + 2;
            const char *close = memchr(open, '}', len - i - 2);
            if (!close) {
                rc = fail_at(ld, n->line, n->col,
                             "unterminated \"${\" in a value (write ${NAME}, or $$ for a "
                             "literal $)");
                goto out;
            }
            size_t inner = (size_t)(close - open), nlen = 0;
            if (inner && name_start(open[0]))
                while (nlen < inner && name_char(open[nlen]))
                    nlen++;
            bool has_def =
                nlen > 0 && nlen + 2 <= inner && open[nlen] == ':' && open[nlen + 1] == '-';
            if (nlen == 0 || (nlen != inner && !has_def)) {
                rc = fail_at(ld, n->line, n->col,
                             "bad variable reference: expected ${NAME} or ${NAME:-default}, "
                             "NAME made of letters, digits and _ (not starting with a digit)");
                goto out;
            }
            const char *def = open + nlen + 2;
            size_t dlen = has_def ? inner - nlen - 2 : 0;
            if (has_def && dlen >= 2 && memmem(def, dlen, "${", 2)) {
                rc = fail_at(ld, n->line, n->col,
                             "nested ${...} in the default of ${%.*s:-...} is not supported",
                             (int)nlen, open);
                goto out;
            }
            name = strndup(open, nlen);
            if (!name) {
                rc = PB_ENOMEM;
                goto out;
            }
            const char *v = getenv(name);
            if (has_def && (!v || !*v)) {
                rc = buf_put(ld, def, dlen);
            } else if (!v) {
                rc = fail_at(ld, n->line, n->col,
                             "environment variable \"%s\" is not set (use ${%s:-default} to "
                             "give a default)",
                             name, name);
                goto out;
            } else {
                rc = buf_put(ld, v, strlen(v));
                n->interpolated = true;
            }
            free(name);
            name = NULL;
            i = (size_t)(close - s) + 1;
        } else {
            /* A lone $ is itself. $NAME in capitals is most likely a
             * variable meant as ${NAME}: lint warns (jq's $vars are lower case). */
            if (i + 1 < len && s[i + 1] >= 'A' && s[i + 1] <= 'Z') {
                size_t k = i + 1;
                while (k < len && ((s[k] >= 'A' && s[k] <= 'Z') || (s[k] >= '0' && s[k] <= '9') ||
                                   s[k] == '_'))
                    k++;
                if (k == len || !name_char(s[k]))
                    n->bare_var = true;
            }
            rc = buf_put(ld, "$", 1);
            i++;
        }
        if (rc)
            goto out;
    }
    n->str = arena_strndup(ld->doc, ld->buf ? ld->buf : "", ld->buf_len);
    n->len = ld->buf_len;
    if (!n->str)
        rc = PB_ENOMEM;
out:
    free(name);
    if (rc == PB_ENOMEM)
        rc = nomem(ld);
    else if (rc == PB_ETOOBIG)
        rc = fail_at(ld, n->line, n->col, "value is longer than 4 MiB after interpolation");
    return rc;
}

static bool is_null_text(const char *s, size_t len)
{
    static const char *const nulls[] = {"~", "null", "Null", "NULL"};
    if (len == 0)
        return true;
    for (size_t i = 0; i < sizeof(nulls) / sizeof(nulls[0]); i++)
        if (strlen(nulls[i]) == len && memcmp(nulls[i], s, len) == 0)
            return true;
    return false;
}

/* Anchors and tags are refused on every node kind. */
static int check_props(struct loader *ld, const yaml_mark_t *m, const yaml_char_t *anchor,
                       const yaml_char_t *tag)
{
    if (anchor)
        return fail_at(ld, line_of(m), col_of(m),
                       "anchors (&%.64s) are not supported; repeat the value instead",
                       (const char *)anchor);
    if (tag)
        return fail_at(ld, line_of(m), col_of(m),
                       "YAML tags (%.64s) are not supported; quote the value if it is a string",
                       (const char *)tag);
    return 0;
}

static int on_scalar(struct loader *ld, const yaml_event_t *ev)
{
    const char *s = (const char *)ev->data.scalar.value;
    size_t len = ev->data.scalar.length;
    yaml_scalar_style_t style = ev->data.scalar.style;
    bool key = expecting_key(ld);
    int rc = check_props(ld, &ev->start_mark, ev->data.scalar.anchor, ev->data.scalar.tag);
    if (rc)
        return rc;

    bool null = !key && style == YAML_PLAIN_SCALAR_STYLE && is_null_text(s, len);
    struct pb_node *n = new_node(ld, null ? PB_NODE_NULL : PB_NODE_SCALAR, &ev->start_mark, &rc);
    if (!n)
        return rc;
    n->quoted =
        style == YAML_SINGLE_QUOTED_SCALAR_STYLE || style == YAML_DOUBLE_QUOTED_SCALAR_STYLE;
    if (null) {
        n->str = arena_strndup(ld->doc, "", 0);
        if (!n->str)
            return nomem(ld);
    } else if (key) {
        n->str = arena_strndup(ld->doc, s, len);
        n->len = len;
        if (!n->str)
            return nomem(ld);
    } else {
        rc = interpolate(ld, n, s, len);
        if (rc)
            return rc;
    }
    return attach(ld, n);
}

static int on_collection_start(struct loader *ld, const yaml_event_t *ev, enum pb_node_type type)
{
    const yaml_mark_t *m = &ev->start_mark;
    int rc = type == PB_NODE_MAP
                 ? check_props(ld, m, ev->data.mapping_start.anchor, ev->data.mapping_start.tag)
                 : check_props(ld, m, ev->data.sequence_start.anchor, ev->data.sequence_start.tag);
    if (rc)
        return rc;
    if (expecting_key(ld))
        return fail_at(ld, line_of(m), col_of(m), "map keys must be plain strings, not a %s",
                       pb_node_type_name(type));
    if (ld->depth >= MAX_DEPTH)
        return fail_at(ld, line_of(m), col_of(m), "the configuration nests deeper than %d levels",
                       MAX_DEPTH);
    struct pb_node *n = new_node(ld, type, m, &rc);
    if (!n)
        return rc;
    rc = attach(ld, n);
    if (rc)
        return rc;
    ld->stack[ld->depth++] = (struct frame){.node = n};
    return 0;
}

/* Line and column of a byte offset, counting UTF-8 characters as columns. */
static void position_of(const char *text, size_t len, size_t offset, int *line, int *col)
{
    int l = 1, c = 1;
    for (size_t i = 0; i < offset && i < len; i++) {
        unsigned char b = (unsigned char)text[i];
        if (b == '\n') {
            l++;
            c = 1;
        } else if ((b & 0xC0) != 0x80) {
            c++;
        }
    }
    *line = l;
    *col = c;
}

static int yaml_failure(struct loader *ld, const yaml_parser_t *p)
{
    int line, col;
    switch (p->error) {
    case YAML_MEMORY_ERROR:
        return nomem(ld);
    case YAML_READER_ERROR:
        position_of(ld->text, ld->len, p->problem_offset, &line, &col);
        return fail_at(ld, line, col, "the file is not valid UTF-8 text: %s",
                       p->problem ? p->problem : "unreadable");
    default:
        break;
    }
    const char *problem = p->problem ? p->problem : "unknown problem";
    if (p->context)
        return fail_at(ld, line_of(&p->problem_mark), col_of(&p->problem_mark),
                       "YAML syntax error: %s (%s that starts at line %d, column %d)", problem,
                       p->context, line_of(&p->context_mark), col_of(&p->context_mark));
    return fail_at(ld, line_of(&p->problem_mark), col_of(&p->problem_mark), "YAML syntax error: %s",
                   problem);
}

static int on_event(struct loader *ld, const yaml_event_t *ev, bool *done)
{
    const yaml_mark_t *m = &ev->start_mark;
    switch (ev->type) {
    case YAML_STREAM_START_EVENT:
    case YAML_DOCUMENT_END_EVENT:
    case YAML_NO_EVENT:
        return 0;
    case YAML_STREAM_END_EVENT:
        *done = true;
        return 0;
    case YAML_DOCUMENT_START_EVENT:
        if (++ld->documents > 1)
            return fail_at(ld, line_of(m), col_of(m),
                           "a second YAML document starts here; the configuration must be one "
                           "document");
        if (ev->data.document_start.tag_directives.start !=
            ev->data.document_start.tag_directives.end)
            return fail_at(ld, line_of(m), col_of(m), "%%TAG directives are not supported");
        return 0;
    case YAML_ALIAS_EVENT:
        return fail_at(ld, line_of(m), col_of(m),
                       "aliases (*%.64s) are not supported; repeat the value instead",
                       (const char *)ev->data.alias.anchor);
    case YAML_SCALAR_EVENT:
        return on_scalar(ld, ev);
    case YAML_MAPPING_START_EVENT:
        return on_collection_start(ld, ev, PB_NODE_MAP);
    case YAML_SEQUENCE_START_EVENT:
        return on_collection_start(ld, ev, PB_NODE_SEQ);
    case YAML_MAPPING_END_EVENT:
    case YAML_SEQUENCE_END_EVENT:
        if (ld->depth == 0)
            return fail_at(ld, line_of(m), col_of(m), "unbalanced YAML structure");
        return close_frame(ld);
    }
    return 0;
}

struct pb_conf_doc *pb_conf_load_string(const char *name, const char *text, size_t len,
                                        struct pb_err *err)
{
    struct loader ld = {.name = name ? name : "<config>", .text = text, .len = len, .err = err};
    yaml_parser_t parser;
    bool parser_ready = false, done = false;
    int rc = 0;

    if (!text && len) {
        pb_err_set(err, PB_EINVAL, "no configuration text");
        return NULL;
    }
    if (len > MAX_FILE_BYTES) {
        fail_at(&ld, 1, 1, "the configuration is larger than 4 MiB; refusing to load it");
        return NULL;
    }
    ld.doc = calloc(1, sizeof(*ld.doc));
    if (!ld.doc) {
        nomem(&ld);
        return NULL;
    }
    ld.doc->file = arena_strndup(ld.doc, ld.name, strlen(ld.name));
    if (!ld.doc->file) {
        rc = nomem(&ld);
        goto out;
    }
    if (!yaml_parser_initialize(&parser)) {
        rc = nomem(&ld);
        goto out;
    }
    parser_ready = true;
    yaml_parser_set_input_string(&parser, (const unsigned char *)(text ? text : ""), len);

    while (!done) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            rc = yaml_failure(&ld, &parser);
            goto out;
        }
        rc = on_event(&ld, &ev, &done);
        yaml_event_delete(&ev);
        if (rc)
            goto out;
    }
    if (!ld.doc->root) { /* an empty file is an empty (null) document */
        yaml_mark_t start = {0};
        ld.doc->root = new_node(&ld, PB_NODE_NULL, &start, &rc);
        if (!ld.doc->root)
            goto out;
        ld.doc->root->str = arena_strndup(ld.doc, "", 0);
        if (!ld.doc->root->str) {
            rc = nomem(&ld);
            goto out;
        }
    }
out:
    while (ld.depth > 0) { /* only after an error */
        free(ld.stack[ld.depth - 1].items);
        ld.depth--;
    }
    free(ld.buf);
    if (parser_ready)
        yaml_parser_delete(&parser);
    if (rc) {
        pb_conf_doc_destroy(ld.doc);
        return NULL;
    }
    return ld.doc;
}

struct pb_conf_doc *pb_conf_load_file(const char *path, struct pb_err *err)
{
    struct pb_conf_doc *doc = NULL;
    char *text = NULL;
    size_t len = 0, cap = 0;
    int fd = -1;

    if (!path) {
        pb_err_set(err, PB_EINVAL, "no configuration file given");
        return NULL;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        pb_err_set(err, PB_EIO, "cannot open %s: %s", path, strerror(errno));
        goto out;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        pb_err_set(err, PB_EIO, "cannot read %s: it is a directory", path);
        goto out;
    }
    /* Read up to one byte past the limit, so pipes and /proc files work too. */
    for (;;) {
        if (len == cap) {
            if (cap > MAX_FILE_BYTES) {
                pb_err_at(err, PB_ECONFIG, path, 1, 1,
                          "the configuration is larger than 4 MiB; refusing to load it");
                goto out;
            }
            cap = cap ? cap * 2 : 16384;
            if (cap > MAX_FILE_BYTES + 1)
                cap = MAX_FILE_BYTES + 1;
            char *t = realloc(text, cap);
            if (!t) {
                pb_err_set(err, PB_ENOMEM, "out of memory reading %s", path);
                goto out;
            }
            text = t;
        }
        ssize_t r = read(fd, text + len, cap - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            pb_err_set(err, PB_EIO, "cannot read %s: %s", path, strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    if (len > MAX_FILE_BYTES) {
        pb_err_at(err, PB_ECONFIG, path, 1, 1,
                  "the configuration is larger than 4 MiB; refusing to load it");
        goto out;
    }
    doc = pb_conf_load_string(path, text, len, err);
out:
    if (fd >= 0)
        close(fd);
    free(text);
    return doc;
}
