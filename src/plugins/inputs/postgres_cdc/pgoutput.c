/* pgoutput.c - decoding PostgreSQL's logical replication stream (pgoutput,
 * protocol version 1) and writing changes as JSON (pgoutput.h).
 *
 * Every read is bounds-checked: the stream comes from a server, and a
 * malformed message is an error, never a read past the buffer.
 *
 * Thread model: pure; the decoder and its relation cache belong to the
 * caller's thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pgoutput.h"

/* ---- reading ----------------------------------------------------------------------------------
 */

struct rd {
    const uint8_t *p;
    size_t n, i;
    bool bad;
};

static uint8_t u8(struct rd *r)
{
    if (r->i + 1 > r->n) {
        r->bad = true;
        return 0;
    }
    return r->p[r->i++];
}

static uint16_t u16(struct rd *r)
{
    if (r->i + 2 > r->n) {
        r->bad = true;
        return 0;
    }
    uint16_t v = (uint16_t)((r->p[r->i] << 8) | r->p[r->i + 1]);
    r->i += 2;
    return v;
}

static uint32_t u32(struct rd *r)
{
    if (r->i + 4 > r->n) {
        r->bad = true;
        return 0;
    }
    uint32_t v = ((uint32_t)r->p[r->i] << 24) | ((uint32_t)r->p[r->i + 1] << 16) |
                 ((uint32_t)r->p[r->i + 2] << 8) | r->p[r->i + 3];
    r->i += 4;
    return v;
}

static uint64_t u64(struct rd *r)
{
    uint64_t hi = u32(r);
    return (hi << 32) | u32(r);
}

/* A NUL-terminated string in the message. */
static const char *str(struct rd *r)
{
    if (r->i >= r->n) {
        r->bad = true;
        return "";
    }
    const uint8_t *z = memchr(r->p + r->i, 0, r->n - r->i);
    if (!z) {
        r->bad = true;
        return "";
    }
    const char *s = (const char *)r->p + r->i;
    r->i = (size_t)(z - r->p) + 1;
    return s;
}

static const uint8_t *bytes(struct rd *r, size_t n)
{
    if (r->i > r->n || n > r->n - r->i) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *b = r->p + r->i;
    r->i += n;
    return b;
}

static void put64(uint8_t *o, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        o[i] = (uint8_t)(v & 0xff);
        v >>= 8;
    }
}

/* ---- replication protocol -------------------------------------------------------------------- */

int pgo_copy_parse(const uint8_t *p, size_t n, struct pgo_copy *c, char *err, size_t errlen)
{
    struct rd r = {p, n, 0, false};
    memset(c, 0, sizeof(*c));
    c->kind = (char)u8(&r);
    if (c->kind == 'w') {
        c->wal_start = u64(&r);
        c->wal_end = u64(&r);
        c->send_time = (int64_t)u64(&r);
        c->data = p + r.i;
        c->len = r.i <= n ? n - r.i : 0;
    } else if (c->kind == 'k') {
        c->wal_end = u64(&r);
        c->send_time = (int64_t)u64(&r);
        c->reply = u8(&r) != 0;
    } else {
        snprintf(err, errlen, "unknown replication message '%c' (0x%02x)",
                 c->kind >= 0x20 && c->kind < 0x7f ? c->kind : '?', (unsigned char)c->kind);
        return -1;
    }
    if (r.bad) {
        snprintf(err, errlen, "truncated replication message '%c'", c->kind);
        return -1;
    }
    return 0;
}

void pgo_status_update(uint8_t out[34], uint64_t write, uint64_t flush, uint64_t apply,
                       int64_t now_pg_us, bool reply)
{
    out[0] = 'r';
    put64(out + 1, write);
    put64(out + 9, flush);
    put64(out + 17, apply);
    put64(out + 25, (uint64_t)now_pg_us);
    out[33] = reply ? 1 : 0;
}

void pgo_lsn_text(uint64_t lsn, char *buf, size_t len)
{
    snprintf(buf, len, "%X/%X", (unsigned)(lsn >> 32), (unsigned)(lsn & 0xffffffffu));
}

int pgo_lsn_parse(const char *s, uint64_t *lsn)
{
    unsigned hi = 0, lo = 0;
    int used = 0;
    if (!s || sscanf(s, "%X/%X%n", &hi, &lo, &used) != 2 || s[used] != 0)
        return -1;
    *lsn = ((uint64_t)hi << 32) | lo;
    return 0;
}

void pgo_time_text(int64_t pg_us, char *buf, size_t len)
{
    int64_t unix_us = pg_us + PGO_EPOCH_DIFF_US;
    int64_t secs = unix_us / 1000000, us = unix_us % 1000000;
    if (us < 0) {
        us += 1000000;
        secs--;
    }
    time_t t = (time_t)secs;
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)us);
}

/* ---- relations ---------------------------------------------------------------------------------
 */

static void rel_clear(struct pgo_rel *r)
{
    free(r->schema);
    free(r->table);
    for (size_t i = 0; i < r->ncols; i++)
        free(r->cols[i].name);
    free(r->cols);
    memset(r, 0, sizeof(*r));
}

const struct pgo_rel *pgo_rel_find(const struct pgo_rels *rs, uint32_t id)
{
    for (size_t i = 0; i < rs->n; i++)
        if (rs->v[i].id == id)
            return &rs->v[i];
    return NULL;
}

void pgo_rel_set_key(struct pgo_rels *rs, uint32_t id, const char *const *names, size_t n)
{
    struct pgo_rel *r = (struct pgo_rel *)pgo_rel_find(rs, id);
    if (!r)
        return;
    for (size_t i = 0; i < r->ncols; i++) {
        r->cols[i].key = false;
        for (size_t k = 0; k < n; k++)
            if (strcmp(r->cols[i].name, names[k]) == 0)
                r->cols[i].key = true;
    }
}

void pgo_rels_free(struct pgo_rels *rs)
{
    for (size_t i = 0; i < rs->n; i++)
        rel_clear(&rs->v[i]);
    free(rs->v);
    memset(rs, 0, sizeof(*rs));
}

static int relation(struct pgo_decoder *d, struct rd *r, uint32_t *id, char *err, size_t errlen)
{
    struct pgo_rel nr = {0};
    nr.id = *id = u32(r);
    const char *schema = str(r), *table = str(r);
    nr.ident = (char)u8(r);
    uint16_t ncols = u16(r);
    if (r->bad || ncols > PGO_MAX_COLS) {
        snprintf(err, errlen, "malformed Relation message");
        return -1;
    }
    nr.schema = strdup(schema);
    nr.table = strdup(table);
    nr.cols = calloc(ncols ? ncols : 1, sizeof(*nr.cols));
    if (!nr.schema || !nr.table || !nr.cols)
        goto nomem;
    for (uint16_t i = 0; i < ncols; i++) {
        uint8_t flags = u8(r);
        const char *name = str(r);
        uint32_t type = u32(r);
        (void)u32(r); /* typmod */
        if (r->bad) {
            rel_clear(&nr);
            snprintf(err, errlen, "malformed Relation message");
            return -1;
        }
        nr.cols[i].name = strdup(name);
        if (!nr.cols[i].name)
            goto nomem;
        nr.ncols = i + 1u;
        nr.cols[i].type = type;
        nr.cols[i].key = (flags & 1) != 0;
    }
    struct pgo_rel *old = (struct pgo_rel *)pgo_rel_find(&d->rels, nr.id);
    if (old) {
        rel_clear(old);
        *old = nr;
        return 0;
    }
    if (d->rels.n == d->rels.cap) {
        size_t nc = d->rels.cap ? d->rels.cap * 2 : 16;
        struct pgo_rel *v = realloc(d->rels.v, nc * sizeof(*v));
        if (!v)
            goto nomem;
        d->rels.v = v;
        d->rels.cap = nc;
    }
    d->rels.v[d->rels.n++] = nr;
    return 0;
nomem:
    rel_clear(&nr);
    snprintf(err, errlen, "out of memory");
    return -1;
}

/* TupleData into vals[0..ncols). */
static int tuple(struct rd *r, struct pgo_val *vals, size_t ncols, struct pgo_tuple *t, char *err,
                 size_t errlen)
{
    uint16_t n = u16(r);
    if (r->bad || n != ncols) {
        snprintf(err, errlen, "tuple of %u columns for a relation of %zu", (unsigned)n, ncols);
        return -1;
    }
    for (uint16_t i = 0; i < n; i++) {
        struct pgo_val *v = &vals[i];
        v->kind = (char)u8(r);
        v->p = NULL;
        v->n = 0;
        if (v->kind == 't' || v->kind == 'b') {
            uint32_t len = u32(r);
            const uint8_t *b = bytes(r, len);
            v->p = (const char *)b;
            v->n = len;
            if (v->kind == 'b') {
                snprintf(err, errlen, "binary tuple values are not asked for");
                return -1;
            }
        } else if (v->kind != 'n' && v->kind != 'u') {
            r->bad = true;
        }
        if (r->bad) {
            snprintf(err, errlen, "malformed tuple");
            return -1;
        }
    }
    t->n = n;
    t->v = vals;
    return 0;
}

static int ensure_vals(struct pgo_decoder *d, size_t need)
{
    if (need <= d->cap)
        return 0;
    struct pgo_val *v = realloc(d->vals, need * sizeof(*v));
    if (!v)
        return -1;
    d->vals = v;
    d->cap = need;
    return 0;
}

int pgo_decode(struct pgo_decoder *d, const uint8_t *p, size_t n, struct pgo_msg *m, char *err,
               size_t errlen)
{
    struct rd r = {p, n, 0, false};
    memset(m, 0, sizeof(*m));
    if (n == 0) {
        snprintf(err, errlen, "empty logical message");
        return -1;
    }
    m->kind = (char)u8(&r);
    switch (m->kind) {
    case 'B':
        m->final_lsn = u64(&r);
        m->commit_time = (int64_t)u64(&r);
        m->xid = u32(&r);
        break;
    case 'C':
        (void)u8(&r); /* flags */
        m->commit_lsn = u64(&r);
        m->end_lsn = u64(&r);
        m->commit_time = (int64_t)u64(&r);
        break;
    case 'R': {
        uint32_t id = 0;
        if (relation(d, &r, &id, err, errlen))
            return -1;
        m->rel = pgo_rel_find(&d->rels, id);
        return 0;
    }
    case 'Y': /* a type: its OID is what we use */
    case 'O': /* origin */
        return 0;
    case 'M':
        m->transactional = (u8(&r) & 1) != 0;
        m->msg_lsn = u64(&r);
        m->prefix = str(&r);
        m->content_len = u32(&r);
        m->content = bytes(&r, m->content_len);
        break;
    case 'I':
    case 'U':
    case 'D': {
        uint32_t id = u32(&r);
        if (r.bad)
            break;
        m->rel = pgo_rel_find(&d->rels, id);
        if (!m->rel) {
            snprintf(err, errlen, "change for relation %u before its Relation message", id);
            return -1;
        }
        size_t nc = m->rel->ncols;
        if (ensure_vals(d, 2 * nc + 2)) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        char t = (char)u8(&r);
        if (m->kind != 'I' && (t == 'K' || t == 'O')) {
            m->old_kind = t;
            if (tuple(&r, d->vals, nc, &m->old, err, errlen))
                return -1;
            if (m->kind == 'U')
                t = (char)u8(&r);
        }
        if (m->kind != 'D') {
            if (t != 'N') {
                snprintf(err, errlen, "malformed %s message", m->kind == 'I' ? "Insert" : "Update");
                return -1;
            }
            if (tuple(&r, d->vals + nc, nc, &m->new, err, errlen))
                return -1;
        } else if (!m->old_kind) {
            snprintf(err, errlen, "malformed Delete message");
            return -1;
        }
        break;
    }
    case 'T': {
        uint32_t nr = u32(&r);
        m->truncate_flags = u8(&r);
        if (r.bad || nr > 100000)
            break;
        if (nr > d->rcap) {
            uint32_t *v = realloc(d->relids, nr * sizeof(*v));
            if (!v) {
                snprintf(err, errlen, "out of memory");
                return -1;
            }
            d->relids = v;
            d->rcap = nr;
        }
        for (uint32_t i = 0; i < nr; i++)
            d->relids[i] = u32(&r);
        m->nrels = nr;
        m->relids = d->relids;
        break;
    }
    default:
        /* a message of a later protocol version: not asked for */
        m->kind = 0;
        return 0;
    }
    if (r.bad) {
        snprintf(err, errlen, "malformed logical message '%c'", m->kind);
        return -1;
    }
    return 0;
}

void pgo_decoder_free(struct pgo_decoder *d)
{
    pgo_rels_free(&d->rels);
    free(d->vals);
    free(d->relids);
    memset(d, 0, sizeof(*d));
}

/* ---- changes as JSON ----------------------------------------------------------------------------
 */

/* {"col": value, ...} of the columns of t (only the key ones with keys_only);
 * unchanged TOASTed values left out. */
static int tuple_json(struct sql_buf *b, const struct pgo_rel *rel, const struct pgo_val *vals,
                      bool keys_only, const struct sql_fmt *fmt, const char **why)
{
    int rc = 0;
    bool first = true;
    sqlb_addc(b, '{');
    for (size_t i = 0; i < rel->ncols; i++) {
        const struct pgo_val *v = &vals[i];
        if ((keys_only && !rel->cols[i].key) || v->kind == 'u')
            continue;
        if (!first)
            sqlb_addc(b, ',');
        first = false;
        sqlb_json_str(b, rel->cols[i].name, strlen(rel->cols[i].name));
        sqlb_addc(b, ':');
        struct sql_cell c = sql_pg_cell(rel->cols[i].type, v->kind == 'n' ? NULL : v->p, v->n);
        if (v->kind == 't' && !v->p)
            c = sql_pg_cell(rel->cols[i].type, "", 0);
        size_t mark = b->len;
        const char *w = NULL;
        if (sql_cell_json(b, &c, fmt, &w) != 0) {
            b->len = mark;
            struct sql_cell raw = {.k = SQLV_BYTES, .p = c.p, .n = c.n};
            sql_cell_json(b, &raw, fmt, &w);
            if (!rc) {
                *why = w ? w : "a value cannot be carried";
                rc = -1;
            }
        }
    }
    sqlb_addc(b, '}');
    return rc;
}

static bool has_key(const struct pgo_rel *rel)
{
    for (size_t i = 0; i < rel->ncols; i++)
        if (rel->cols[i].key)
            return true;
    return false;
}

static void tail(struct sql_buf *b, const struct pgo_change_ctx *cx)
{
    char t[64];
    pgo_lsn_text(cx->lsn, t, sizeof(t));
    sqlb_printf(b, ",\"lsn\":\"%s\"", t);
    pgo_lsn_text(cx->commit_lsn, t, sizeof(t));
    sqlb_printf(b, ",\"commit_lsn\":\"%s\"", t);
    if (cx->commit_time == INT64_MIN) {
        sqlb_adds(b, ",\"commit_time\":null");
    } else {
        pgo_time_text(cx->commit_time, t, sizeof(t));
        sqlb_printf(b, ",\"commit_time\":\"%s\"", t);
    }
    if (cx->xid < 0)
        sqlb_adds(b, ",\"xid\":null}");
    else
        sqlb_printf(b, ",\"xid\":%lld}", (long long)cx->xid);
}

static void head(struct sql_buf *b, const char *op, const struct pgo_rel *rel)
{
    sqlb_printf(b, "{\"op\":\"%s\",\"schema\":", op);
    sqlb_json_str(b, rel->schema, strlen(rel->schema));
    sqlb_adds(b, ",\"table\":");
    sqlb_json_str(b, rel->table, strlen(rel->table));
}

int pgo_change_json(struct sql_buf *b, const struct pgo_msg *m, const struct pgo_rel *rel,
                    const struct pgo_change_ctx *cx, const char **why)
{
    int rc = 0;
    if (!m) {
        head(b, "truncate", rel);
        sqlb_adds(b, ",\"key\":null,\"before\":null,\"after\":null");
        tail(b, cx);
        return 0;
    }
    const char *op = m->kind == 'I' ? "insert" : m->kind == 'U' ? "update" : "delete";
    head(b, op, rel);
    /* the key: of the new row, or of the old one for a delete */
    const struct pgo_val *kv = m->kind == 'D' ? m->old.v : m->new.v;
    sqlb_adds(b, ",\"key\":");
    bool key_ok = has_key(rel);
    if (key_ok && m->kind != 'D') {
        /* an unchanged TOASTed key column (rare): take it from the old tuple */
        for (size_t i = 0; i < rel->ncols; i++)
            if (rel->cols[i].key && kv[i].kind == 'u')
                key_ok = false;
    }
    if (!key_ok && m->kind == 'U' && m->old_kind && has_key(rel)) {
        kv = m->old.v;
        key_ok = true;
    }
    if (key_ok) {
        if (tuple_json(b, rel, kv, true, cx->fmt, why))
            rc = -1;
    } else {
        sqlb_adds(b, "null");
    }
    sqlb_adds(b, ",\"before\":");
    if (m->old_kind) {
        /* 'K': only the key columns were sent; 'O': the whole old row */
        if (tuple_json(b, rel, m->old.v, m->old_kind == 'K', cx->fmt, why))
            rc = -1;
    } else {
        sqlb_adds(b, "null");
    }
    sqlb_adds(b, ",\"after\":");
    if (m->kind != 'D') {
        if (tuple_json(b, rel, m->new.v, false, cx->fmt, why))
            rc = -1;
    } else {
        sqlb_adds(b, "null");
    }
    tail(b, cx);
    return rc;
}

int pgo_row_json(struct sql_buf *b, const struct pgo_rel *rel, const struct pgo_val *vals,
                 const struct pgo_change_ctx *cx, const char **why)
{
    int rc = 0;
    head(b, "read", rel);
    sqlb_adds(b, ",\"key\":");
    if (has_key(rel)) {
        if (tuple_json(b, rel, vals, true, cx->fmt, why))
            rc = -1;
    } else {
        sqlb_adds(b, "null");
    }
    sqlb_adds(b, ",\"before\":null,\"after\":");
    if (tuple_json(b, rel, vals, false, cx->fmt, why))
        rc = -1;
    tail(b, cx);
    return rc;
}
