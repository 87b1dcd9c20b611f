/* file_xml.c - the XML record reader of the file inputs: libxml2's streaming
 * xmlReader over the file, one record per element at the path xml.record
 * ("/orders/order"), each turned into JSON as it is read, so a file of any
 * size takes the memory of one record.
 *
 * Hostile input: no DTD at all (a DOCTYPE ends the file: entities, external
 * or not, never expand), no network, xml.max_depth levels of nesting and
 * max_record bytes per record; libxml2's own limits on names and text stay
 * on (no XML_PARSE_HUGE).
 *
 * The JSON of an element: its text (a string, "" when empty) when it has no
 * attributes and no child elements; otherwise an object with "@name" for
 * each attribute, each child element under its name (an array when the name
 * repeats, or is listed in xml.arrays) and "#text" for text that is not only
 * white space. Every value is a string: nothing is converted.
 *
 * One thread at a time (the reader's). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/xmlreader.h>

#include "file_read_int.h"

#define SEG_MAX 32

enum { XN_ELEM, XN_TEXT };

struct xn {
    int kind;
    int parent, first, last, next; /* -1: none */
    size_t s_off, s_len;           /* name or text */
    size_t a_first, a_n;           /* attributes: pairs in attrs[] */
    size_t idx;                    /* position among its siblings */
};

struct xattr {
    size_t n_off, n_len, v_off, v_len;
};

struct rd_xml {
    xmlTextReaderPtr rdr;
    char *segs[SEG_MAX];
    size_t nseg;
    bool match[SEG_MAX]; /* the open elements match the path so far */
    /* the record being built */
    struct xn *nodes;
    size_t nn, ncap;
    struct xattr *attrs;
    size_t na, acap;
    char *str;
    size_t sn, scap;
    bool big;
    /* the first error libxml2 reported */
    bool have_err;
    int64_t err_line, err_col;
    char err_msg[200];
    char *tmp; /* text concatenation while writing */
    size_t tn, tcap;
};

static void on_error(void *arg, xmlErrorPtr e)
{
    struct rd_xml *x = arg;
    if (x->have_err || !e || e->level < XML_ERR_ERROR)
        return;
    x->have_err = true;
    x->err_line = e->line;
    x->err_col = e->int2;
    snprintf(x->err_msg, sizeof(x->err_msg), "%s", e->message ? e->message : "malformed XML");
    size_t n = strlen(x->err_msg);
    while (n && (x->err_msg[n - 1] == '\n' || x->err_msg[n - 1] == ' '))
        x->err_msg[--n] = 0;
}

static int io_read(void *ctx, char *buf, int len)
{
    return rd_raw_read(ctx, buf, len > 0 ? (size_t)len : 0);
}

static int io_close(void *ctx)
{
    (void)ctx;
    return 0;
}

int rd_xml_init(struct rd *r, struct pb_err *err)
{
    struct rd_xml *x = calloc(1, sizeof(*x));
    if (!x)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    r->xml = x;
    const char *p = r->o.record;
    if (!p || p[0] != '/')
        return pb_err_set(err, PB_ECONFIG, "xml.record must be a path such as /orders/order");
    while (*p == '/') {
        p++;
        size_t n = strcspn(p, "/");
        if (n == 0 || x->nseg == SEG_MAX)
            return pb_err_set(err, PB_ECONFIG,
                              "xml.record \"%s\": empty step or more than %d steps", r->o.record,
                              SEG_MAX);
        x->segs[x->nseg] = strndup(p, n);
        if (!x->segs[x->nseg])
            return pb_err_set(err, PB_ENOMEM, "out of memory");
        x->nseg++;
        p += n;
    }
    if (r->fd < 0)
        return 0; /* checking options only */
    int opts = XML_PARSE_NONET | XML_PARSE_NOCDATA;
    x->rdr = xmlReaderForIO(io_read, io_close, r, "file.xml", NULL, opts);
    if (!x->rdr)
        return pb_err_set(err, PB_ENOMEM, "cannot make an XML reader");
    xmlTextReaderSetStructuredErrorHandler(x->rdr, on_error, x);
    return 0;
}

void rd_xml_free(struct rd *r)
{
    struct rd_xml *x = r->xml;
    if (!x)
        return;
    if (x->rdr)
        xmlFreeTextReader(x->rdr);
    for (size_t i = 0; i < x->nseg; i++)
        free(x->segs[i]);
    free(x->nodes);
    free(x->attrs);
    free(x->str);
    free(x->tmp);
    free(x);
    r->xml = NULL;
}

/* ---- building a record ---------------------------------------------------------------------- */

static int str_add(struct rd *r, const char *s, size_t len, size_t *off)
{
    struct rd_xml *x = r->xml;
    if (x->sn + len > r->o.max_record) {
        x->big = true;
        return 0;
    }
    *off = x->sn;
    return buf_append(&x->str, &x->sn, &x->scap, s, len);
}

/* Add a node under parent: *out its index, or -1 once the record is past
 * max_record (then nothing more is kept). 0 or PB_ENOMEM. */
static int node_add(struct rd *r, int kind, int parent, const char *s, size_t len, int *out)
{
    struct rd_xml *x = r->xml;
    *out = -1;
    if (x->big)
        return 0;
    if (x->nn == x->ncap) {
        size_t nc = x->ncap ? x->ncap * 2 : 64;
        struct xn *n = realloc(x->nodes, nc * sizeof(*n));
        if (!n)
            return PB_ENOMEM;
        x->nodes = n;
        x->ncap = nc;
    }
    size_t off = 0;
    int rc = str_add(r, s, len, &off);
    if (rc || x->big)
        return rc;
    int i = (int)x->nn++;
    x->nodes[i] = (struct xn){.kind = kind,
                              .parent = parent,
                              .first = -1,
                              .last = -1,
                              .next = -1,
                              .s_off = off,
                              .s_len = len,
                              .a_first = x->na};
    if (parent >= 0) {
        struct xn *p = &x->nodes[parent];
        x->nodes[i].idx = p->last >= 0 ? x->nodes[p->last].idx + 1 : 0;
        if (p->last >= 0)
            x->nodes[p->last].next = i;
        else
            p->first = i;
        p->last = i;
    }
    *out = i;
    return 0;
}

static int attrs_add(struct rd *r, int node)
{
    struct rd_xml *x = r->xml;
    if (xmlTextReaderHasAttributes(x->rdr) != 1)
        return 0;
    while (xmlTextReaderMoveToNextAttribute(x->rdr) == 1) {
        if (xmlTextReaderIsNamespaceDecl(x->rdr) == 1)
            continue;
        const char *n = (const char *)xmlTextReaderConstName(x->rdr);
        const char *v = (const char *)xmlTextReaderConstValue(x->rdr);
        if (!n)
            continue;
        if (!v)
            v = "";
        if (x->na == x->acap) {
            size_t nc = x->acap ? x->acap * 2 : 32;
            struct xattr *a = realloc(x->attrs, nc * sizeof(*a));
            if (!a)
                return PB_ENOMEM;
            x->attrs = a;
            x->acap = nc;
        }
        struct xattr a = {0};
        a.n_len = strlen(n);
        a.v_len = strlen(v);
        int rc = str_add(r, n, a.n_len, &a.n_off);
        if (rc == 0 && !x->big)
            rc = str_add(r, v, a.v_len, &a.v_off);
        if (rc)
            return rc;
        if (x->big)
            break;
        x->attrs[x->na++] = a;
        x->nodes[node].a_n++;
    }
    xmlTextReaderMoveToElement(x->rdr);
    return 0;
}

static bool in_list(const struct pb_strlist *l, const char *s, size_t len)
{
    for (size_t i = 0; l && i < l->n; i++)
        if (strlen(l->items[i]) == len && memcmp(l->items[i], s, len) == 0)
            return true;
    return false;
}

struct kid {
    const char *name;
    size_t len;
    size_t first; /* the smallest sibling position of its name */
    int node;
};

static int kid_by_name(const void *a, const void *b)
{
    const struct kid *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->name, y->name, n);
    if (c)
        return c;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return x->node < y->node ? -1 : (x->node > y->node);
}

static int kid_by_group(const void *a, const void *b)
{
    const struct kid *x = a, *y = b;
    if (x->first != y->first)
        return x->first < y->first ? -1 : 1;
    return x->node < y->node ? -1 : (x->node > y->node);
}

static int write_node(struct rd *r, int i, int depth);

static int put(struct rd *r, const char *s, size_t len)
{
    return buf_append(&r->out, &r->outn, &r->outcap, s, len);
}

static int put_str(struct rd *r, const char *s, size_t len)
{
    return json_str_append(&r->out, &r->outn, &r->outcap, s, len);
}

static int write_node(struct rd *r, int i, int depth)
{
    struct rd_xml *x = r->xml;
    const struct xn *n = &x->nodes[i];
    size_t nkids = 0;
    bool text_only_ws = true;
    int rc;
    if (depth > 300)
        return PB_ETOOBIG;
    /* Text of the element: its text children, concatenated. */
    x->tn = 0;
    for (int k = n->first; k >= 0; k = x->nodes[k].next) {
        const struct xn *c = &x->nodes[k];
        if (c->kind == XN_ELEM) {
            nkids++;
            continue;
        }
        const char *s = x->str + c->s_off;
        for (size_t j = 0; j < c->s_len; j++)
            if (s[j] != ' ' && s[j] != '\t' && s[j] != '\r' && s[j] != '\n')
                text_only_ws = false;
        if ((rc = buf_append(&x->tmp, &x->tn, &x->tcap, s, c->s_len)) != 0)
            return rc;
    }
    if (n->a_n == 0 && nkids == 0)
        return put_str(r, x->tmp ? x->tmp : "", x->tn);
    /* "#text" is written last: keep the text aside. */
    char *text = NULL;
    size_t text_len = 0;
    if (!text_only_ws) {
        text = malloc(x->tn + 1);
        if (!text)
            return PB_ENOMEM;
        memcpy(text, x->tmp, x->tn);
        text_len = x->tn;
    }
    rc = put(r, "{", 1);
    bool first = true;
    for (size_t a = 0; rc == 0 && a < n->a_n; a++) {
        const struct xattr *at = &x->attrs[n->a_first + a];
        char name[512];
        int nl = snprintf(name, sizeof(name), "@%.*s", (int)at->n_len, x->str + at->n_off);
        if (!first)
            rc = put(r, ",", 1);
        first = false;
        if (rc == 0)
            rc = put_str(r, name, (size_t)nl < sizeof(name) ? (size_t)nl : sizeof(name) - 1);
        if (rc == 0)
            rc = put(r, ":", 1);
        if (rc == 0)
            rc = put_str(r, x->str + at->v_off, at->v_len);
    }
    struct kid *kids = nkids ? malloc(nkids * sizeof(*kids)) : NULL;
    if (nkids && !kids)
        rc = PB_ENOMEM;
    size_t m = 0;
    for (int k = n->first; rc == 0 && k >= 0; k = x->nodes[k].next) {
        if (x->nodes[k].kind != XN_ELEM)
            continue;
        kids[m++] = (struct kid){x->str + x->nodes[k].s_off, x->nodes[k].s_len, 0, k};
    }
    if (rc == 0 && m) {
        /* Group by name, groups in the order their names first appear. */
        qsort(kids, m, sizeof(*kids), kid_by_name);
        for (size_t a = 0; a < m;) {
            size_t b = a;
            while (b < m && kids[b].len == kids[a].len &&
                   memcmp(kids[b].name, kids[a].name, kids[a].len) == 0)
                b++;
            for (size_t c = a; c < b; c++)
                kids[c].first = (size_t)kids[a].node;
            a = b;
        }
        qsort(kids, m, sizeof(*kids), kid_by_group);
        for (size_t a = 0; rc == 0 && a < m;) {
            size_t b = a;
            while (b < m && kids[b].first == kids[a].first)
                b++;
            bool arr = b - a > 1 || in_list(r->o.arrays, kids[a].name, kids[a].len);
            if (!first)
                rc = put(r, ",", 1);
            first = false;
            if (rc == 0)
                rc = put_str(r, kids[a].name, kids[a].len);
            if (rc == 0)
                rc = put(r, arr ? ":[" : ":", arr ? 2 : 1);
            for (size_t c = a; rc == 0 && c < b; c++) {
                if (c > a)
                    rc = put(r, ",", 1);
                if (rc == 0)
                    rc = write_node(r, kids[c].node, depth + 1);
            }
            if (rc == 0 && arr)
                rc = put(r, "]", 1);
            a = b;
        }
    }
    free(kids);
    if (rc == 0 && text) {
        if (!first)
            rc = put(r, ",", 1);
        if (rc == 0)
            rc = put(r, "\"#text\":", 8);
        if (rc == 0)
            rc = put_str(r, text, text_len);
    }
    free(text);
    if (rc == 0)
        rc = put(r, "}", 1);
    return rc;
}

/* ---- reading -----------------------------------------------------------------------------------
 */

static int fatal_from(struct rd *r, struct rd_fatal *f, const char *what)
{
    struct rd_xml *x = r->xml;
    if (x->have_err) {
        f->line = x->err_line;
        f->col = x->err_col;
        snprintf(f->reason, sizeof(f->reason), "%s", x->err_msg);
    } else {
        f->line = xmlTextReaderGetParserLineNumber(x->rdr);
        f->col = xmlTextReaderGetParserColumnNumber(x->rdr);
        snprintf(f->reason, sizeof(f->reason), "%s", what);
    }
    return PB_EPARSE;
}

static int refuse_node(struct rd *r, struct rd_fatal *f, int type)
{
    struct rd_xml *x = r->xml;
    f->line = xmlTextReaderGetParserLineNumber(x->rdr);
    f->col = xmlTextReaderGetParserColumnNumber(x->rdr);
    if (type == XML_READER_TYPE_DOCUMENT_TYPE)
        snprintf(f->reason, sizeof(f->reason), "a DOCTYPE is not allowed (no DTDs, no entities)");
    else
        snprintf(f->reason, sizeof(f->reason), "entity references are not allowed");
    return PB_EPARSE;
}

static int too_deep(struct rd *r, struct rd_fatal *f)
{
    struct rd_xml *x = r->xml;
    f->line = xmlTextReaderGetParserLineNumber(x->rdr);
    f->col = xmlTextReaderGetParserColumnNumber(x->rdr);
    snprintf(f->reason, sizeof(f->reason), "nested deeper than xml.max_depth (%d)", r->o.max_depth);
    return PB_EPARSE;
}

/* The reader is on the record's start element: read up to its end. */
static int read_record(struct rd *r, struct rd_rec *rec, struct rd_fatal *f)
{
    struct rd_xml *x = r->xml;
    xmlTextReaderPtr rd = x->rdr;
    x->nn = x->na = x->sn = 0;
    x->big = false;
    const char *name = (const char *)xmlTextReaderConstName(rd);
    int root = -1;
    int rc = node_add(r, XN_ELEM, -1, name ? name : "", name ? strlen(name) : 0, &root);
    if (rc)
        return rc;
    if (root >= 0 && (rc = attrs_add(r, root)) != 0)
        return rc;
    int cur = root;
    int lvl = 0; /* open elements below the record's */
    if (xmlTextReaderIsEmptyElement(rd) != 1) {
        for (;;) {
            int ret = xmlTextReaderRead(rd);
            if (ret != 1)
                return fatal_from(r, f,
                                  ret == 0 ? "the file ends inside a record" : "malformed XML");
            int type = xmlTextReaderNodeType(rd);
            if (type == XML_READER_TYPE_DOCUMENT_TYPE || type == XML_READER_TYPE_ENTITY_REFERENCE)
                return refuse_node(r, f, type);
            if (type == XML_READER_TYPE_ELEMENT) {
                if (xmlTextReaderDepth(rd) + 1 > r->o.max_depth)
                    return too_deep(r, f);
                const char *n = (const char *)xmlTextReaderConstName(rd);
                int e = -1;
                if (!x->big) {
                    if ((rc = node_add(r, XN_ELEM, cur, n ? n : "", n ? strlen(n) : 0, &e)) != 0)
                        return rc;
                    if (e >= 0 && (rc = attrs_add(r, e)) != 0)
                        return rc;
                }
                if (xmlTextReaderIsEmptyElement(rd) != 1) {
                    lvl++;
                    if (e >= 0)
                        cur = e;
                }
            } else if (type == XML_READER_TYPE_END_ELEMENT) {
                if (lvl == 0)
                    break;
                lvl--;
                if (!x->big && cur >= 0)
                    cur = x->nodes[cur].parent;
            } else if (type == XML_READER_TYPE_TEXT || type == XML_READER_TYPE_CDATA ||
                       type == XML_READER_TYPE_SIGNIFICANT_WHITESPACE ||
                       type == XML_READER_TYPE_WHITESPACE) {
                if (x->big)
                    continue;
                const char *v = (const char *)xmlTextReaderConstValue(rd);
                int t;
                if (v && cur >= 0 && (rc = node_add(r, XN_TEXT, cur, v, strlen(v), &t)) != 0)
                    return rc;
            }
        }
    }
    if (x->big) {
        snprintf(r->reason, sizeof(r->reason), "record larger than max_record (%zu bytes)",
                 r->o.max_record);
        rec->bad = r->reason;
        rec->bad_line = rec->line;
        rec->bad_col = rec->col;
        return 1;
    }
    r->outn = 0;
    rc = write_node(r, root, 0);
    if (rc)
        return rc;
    rec->body = r->out;
    rec->len = r->outn;
    return 1;
}

int rd_xml_next(struct rd *r, struct rd_rec *rec, struct rd_fatal *f)
{
    struct rd_xml *x = r->xml;
    xmlTextReaderPtr rd = x->rdr;
    for (;;) {
        int ret = xmlTextReaderRead(rd);
        if (ret == 0) {
            if (x->have_err)
                return fatal_from(r, f, "malformed XML");
            return 0;
        }
        if (ret < 0)
            return fatal_from(r, f, "malformed XML");
        int type = xmlTextReaderNodeType(rd);
        if (type == XML_READER_TYPE_DOCUMENT_TYPE || type == XML_READER_TYPE_ENTITY_REFERENCE)
            return refuse_node(r, f, type);
        if (type != XML_READER_TYPE_ELEMENT)
            continue;
        int d = xmlTextReaderDepth(rd);
        if (d < 0)
            continue;
        if (d + 1 > r->o.max_depth)
            return too_deep(r, f);
        if ((size_t)d >= x->nseg)
            continue;
        const char *name = (const char *)xmlTextReaderConstName(rd);
        bool m = name && (strcmp(x->segs[d], "*") == 0 || strcmp(x->segs[d], name) == 0) &&
                 (d == 0 || x->match[d - 1]);
        x->match[d] = m && xmlTextReaderIsEmptyElement(rd) != 1;
        if (!m || (size_t)d + 1 != x->nseg)
            continue;
        memset(rec, 0, sizeof(*rec));
        /* The element's own line (the parser reads ahead); no column is kept. */
        xmlNodePtr node = xmlTextReaderCurrentNode(rd);
        rec->line = node ? xmlGetLineNo(node) : xmlTextReaderGetParserLineNumber(rd);
        rec->col = 1;
        rec->start = xmlTextReaderByteConsumed(rd);
        int rc = read_record(r, rec, f);
        rec->end = xmlTextReaderByteConsumed(rd);
        return rc;
    }
}
