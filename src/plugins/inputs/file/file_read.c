/* file_read.c - record readers for the file inputs: CSV (RFC 4180), JSON
 * lines, JSON (one value, or the elements of a top-level array) and raw
 * files; XML is in file_xml.c. A reader streams its file through a fixed
 * buffer and keeps at most one record (max_record bytes) besides, so a file
 * of any size is read in bounded memory; it hashes what it reads (SHA-256)
 * when asked, which gives the file's digest in the same pass.
 *
 * Records are JSON texts: a CSV row is an object of strings keyed by the
 * header (or an array of strings without one), exactly as written - values
 * are never converted. A record that cannot be carried (a CSV row with the
 * wrong number of fields, invalid UTF-8, a JSON line that is not JSON, a
 * record past max_record) is a bad record with its line and column; a
 * problem after which records can no longer be told apart (an unterminated
 * quoted field, a broken array) is fatal for the file.
 *
 * A reader belongs to one thread at a time. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "file_read_int.h"
#include "patchbay/pb_json.h"

/* ---- growing buffers and JSON strings --------------------------------------------------- */

int buf_append(char **b, size_t *n, size_t *cap, const void *p, size_t len)
{
    if (*n + len + 1 > *cap) {
        size_t nc = *cap ? *cap : 256;
        while (nc < *n + len + 1)
            nc *= 2;
        char *nb = realloc(*b, nc);
        if (!nb)
            return PB_ENOMEM;
        *b = nb;
        *cap = nc;
    }
    if (len)
        memcpy(*b + *n, p, len);
    *n += len;
    (*b)[*n] = 0;
    return 0;
}

static const char hexd[] = "0123456789abcdef";

/* Escape s[0..len) (assumed UTF-8) into JSON string text. */
static int json_escape(char **b, size_t *n, size_t *cap, const char *s, size_t len)
{
    /* worst case 6 bytes per input byte + quotes */
    if (*n + len * 6 + 3 > *cap) {
        size_t nc = *cap ? *cap : 256;
        while (nc < *n + len * 6 + 3)
            nc *= 2;
        char *nb = realloc(*b, nc);
        if (!nb)
            return PB_ENOMEM;
        *b = nb;
        *cap = nc;
    }
    char *p = *b + *n;
    *p++ = '"';
    size_t i = 0;
    while (i < len) {
        /* copy runs that need no escape in one go */
        size_t j = i;
        while (j < len) {
            unsigned char c = (unsigned char)s[j];
            if (c < 0x20 || c == '"' || c == '\\')
                break;
            j++;
        }
        memcpy(p, s + i, j - i);
        p += j - i;
        i = j;
        if (i >= len)
            break;
        unsigned char c = (unsigned char)s[i++];
        *p++ = '\\';
        switch (c) {
        case '"':
            *p++ = '"';
            break;
        case '\\':
            *p++ = '\\';
            break;
        case '\n':
            *p++ = 'n';
            break;
        case '\r':
            *p++ = 'r';
            break;
        case '\t':
            *p++ = 't';
            break;
        default:
            *p++ = 'u';
            *p++ = '0';
            *p++ = '0';
            *p++ = hexd[c >> 4];
            *p++ = hexd[c & 15];
        }
    }
    *p++ = '"';
    *p = 0;
    *n = (size_t)(p - *b);
    return 0;
}

int json_str_append(char **b, size_t *n, size_t *cap, const char *s, size_t len)
{
    if (!pb_utf8_valid(s, len))
        return PB_EPARSE;
    return json_escape(b, n, cap, s, len);
}

int json_text_append(char **b, size_t *n, size_t *cap, const char *s)
{
    size_t len = strlen(s);
    if (pb_utf8_valid(s, len))
        return json_escape(b, n, cap, s, len);
    /* Not UTF-8 (a file name in another encoding): bytes past ASCII
     * become U+FFFD, so $meta stays JSON. */
    char *t = malloc(len * 3 + 1);
    if (!t)
        return PB_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            t[k++] = (char)c;
        } else {
            t[k++] = (char)0xEF;
            t[k++] = (char)0xBF;
            t[k++] = (char)0xBD;
        }
    }
    int rc = json_escape(b, n, cap, t, k);
    free(t);
    return rc;
}

/* ---- the input buffer ---------------------------------------------------------------- */

static int read_some(struct rd *r, char *dst, size_t len)
{
    for (;;) {
        ssize_t got = read(r->fd, dst, len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return -1;
        if (got > 0 && r->md && EVP_DigestUpdate(r->md, dst, (size_t)got) != 1)
            return -1;
        return (int)got;
    }
}

int rd_fill(struct rd *r)
{
    if (r->pos < r->end)
        return 1;
    if (r->eof)
        return 0;
    r->off += (int64_t)r->end;
    r->pos = r->end = 0;
    int got = read_some(r, r->buf, RD_BUF);
    if (got < 0)
        return PB_EIO;
    if (got == 0) {
        r->eof = true;
        return 0;
    }
    r->end = (size_t)got;
    return 1;
}

int rd_raw_read(struct rd *r, char *dst, size_t len)
{
    /* What is still buffered first (nothing, for XML). */
    if (r->pos < r->end) {
        size_t k = r->end - r->pos < len ? r->end - r->pos : len;
        memcpy(dst, r->buf + r->pos, k);
        r->pos += k;
        return (int)k;
    }
    if (r->eof)
        return 0;
    int got = read_some(r, dst, len > RD_BUF ? RD_BUF : len);
    if (got < 0)
        return -1;
    if (got == 0)
        r->eof = true;
    r->off += got;
    return got;
}

int64_t rd_bytes(const struct rd *r)
{
    return rd_pos(r);
}

/* Consume one byte known to be there, keeping line numbers. */
static inline char take(struct rd *r)
{
    char c = r->buf[r->pos++];
    if (c == '\n') {
        r->line++;
        r->line_start = rd_pos(r);
    }
    return c;
}

/* The next byte without consuming it: 1 with *c, 0 at the end, <0 error. */
static int peek(struct rd *r, char *c)
{
    int rc = rd_fill(r);
    if (rc <= 0)
        return rc;
    *c = r->buf[r->pos];
    return 1;
}

static int64_t col_of(const struct rd *r, int64_t pos)
{
    return pos - r->line_start + 1;
}

/* A UTF-8 byte order mark at the very start is not data. */
static int skip_bom(struct rd *r)
{
    if (r->started)
        return 0;
    r->started = true;
    int rc = rd_fill(r);
    if (rc <= 0)
        return rc;
    /* The first read is RD_BUF bytes or the whole file: 3 bytes are there
     * unless the file is shorter. */
    if (r->end - r->pos >= 3 && memcmp(r->buf + r->pos, "\xEF\xBB\xBF", 3) == 0) {
        r->pos += 3;
        r->line_start = rd_pos(r);
    }
    return 0;
}

static void set_bad(struct rd_rec *rec, const char *why, int64_t line, int64_t col)
{
    if (rec->bad)
        return; /* the first problem is the one reported */
    rec->bad = why;
    rec->bad_line = line;
    rec->bad_col = col;
}

/* ---- CSV ------------------------------------------------------------------------------- */

enum { CSV_START, CSV_UNQ, CSV_QUO, CSV_QUO2 };

static int fld_add(struct rd *r, const char *p, size_t len, bool *big)
{
    if (*big)
        return 0;
    if (r->fldn + len > r->o.max_record) {
        *big = true;
        return 0;
    }
    return buf_append(&r->fld, &r->fldn, &r->fldcap, p, len);
}

static int fld_new(struct rd *r)
{
    if (r->nf == r->fcap) {
        size_t nc = r->fcap ? r->fcap * 2 : 32;
        if (nc > 1000000)
            return PB_ETOOBIG;
        size_t *n = realloc(r->fo, nc * sizeof(*n));
        if (!n)
            return PB_ENOMEM;
        r->fo = n;
        r->fcap = nc;
    }
    r->fo[r->nf++] = r->fldn;
    return 0;
}

/* Field i of the record read: pointer and length. */
static const char *fld_get(const struct rd *r, size_t i, size_t *len)
{
    size_t end = i + 1 < r->nf ? r->fo[i + 1] : r->fldn;
    *len = end - r->fo[i];
    return (r->fld ? r->fld : "") + r->fo[i];
}

static int csv_set_columns(struct rd *r, struct rd_fatal *f, int64_t line)
{
    const struct pb_strlist *names = r->o.columns && r->o.columns->n ? r->o.columns : NULL;
    size_t n = names ? names->n : r->nf;
    if (names && r->o.header && r->nf != names->n) {
        f->line = line;
        f->col = 1;
        snprintf(f->reason, sizeof(f->reason), "the header has %zu columns, csv.columns names %zu",
                 r->nf, names->n);
        return PB_EPARSE;
    }
    r->cols = calloc(n ? n : 1, sizeof(*r->cols));
    if (!r->cols)
        return PB_ENOMEM;
    r->ncols = n;
    for (size_t i = 0; i < n; i++) {
        size_t len, cn = 0, cc = 0;
        const char *s = names ? names->items[i] : fld_get(r, i, &len);
        if (names)
            len = strlen(s);
        char *c = NULL;
        int rc = json_str_append(&c, &cn, &cc, s, len);
        if (rc == PB_EPARSE) {
            f->line = line;
            f->col = 1;
            snprintf(f->reason, sizeof(f->reason), "column %zu of the header is not UTF-8", i + 1);
            free(c);
            return PB_EPARSE;
        }
        if (rc)
            return rc;
        for (size_t k = 0; k < i; k++) {
            if (strcmp(r->cols[k], c) == 0) {
                f->line = line;
                f->col = 1;
                snprintf(f->reason, sizeof(f->reason), "column %.200s appears twice in the header",
                         c);
                free(c);
                return PB_EPARSE;
            }
        }
        r->cols[i] = c;
    }
    return 0;
}

/* The JSON of the record read, or a bad record. */
static int csv_emit(struct rd *r, struct rd_rec *rec)
{
    r->outn = 0;
    if (rec->bad)
        return 0;
    if (r->nf != r->ncols) {
        snprintf(r->reason, sizeof(r->reason), "the row has %zu fields, the header %zu", r->nf,
                 r->ncols);
        if (!r->o.header && !(r->o.columns && r->o.columns->n))
            snprintf(r->reason, sizeof(r->reason), "the row has %zu fields, the first row %zu",
                     r->nf, r->ncols);
        set_bad(rec, r->reason, rec->line, 1);
        return 0;
    }
    bool obj = r->o.header || (r->o.columns && r->o.columns->n);
    int rc = buf_append(&r->out, &r->outn, &r->outcap, obj ? "{" : "[", 1);
    for (size_t i = 0; rc == 0 && i < r->nf; i++) {
        size_t len;
        const char *v = fld_get(r, i, &len);
        if (i)
            rc = buf_append(&r->out, &r->outn, &r->outcap, ",", 1);
        if (rc == 0 && obj) {
            rc = buf_append(&r->out, &r->outn, &r->outcap, r->cols[i], strlen(r->cols[i]));
            if (rc == 0)
                rc = buf_append(&r->out, &r->outn, &r->outcap, ":", 1);
        }
        if (rc == 0) {
            rc = json_str_append(&r->out, &r->outn, &r->outcap, v, len);
            if (rc == PB_EPARSE) {
                snprintf(r->reason, sizeof(r->reason), "field %zu is not valid UTF-8", i + 1);
                set_bad(rec, r->reason, rec->line, 1);
                r->outn = 0;
                return 0;
            }
        }
    }
    if (rc == 0)
        rc = buf_append(&r->out, &r->outn, &r->outcap, obj ? "}" : "]", 1);
    rec->body = r->out;
    rec->len = r->outn;
    return rc;
}

static int csv_next(struct rd *r, struct rd_rec *rec, struct rd_fatal *f)
{
    const char d = r->o.delimiter, q = r->o.quote;
    int rc = skip_bom(r);
    if (rc < 0)
        return rc;
    for (;;) {
        memset(rec, 0, sizeof(*rec));
        r->fldn = 0;
        r->nf = 0;
        if ((rc = fld_new(r)) != 0)
            return rc;
        int st = CSV_START;
        bool big = false, any = false;
        int64_t qline = 0, qcol = 0;
        rec->start = rd_pos(r);
        rec->line = r->line;
        rec->col = col_of(r, rec->start);
        bool eol = false;
        while (!eol) {
            rc = rd_fill(r);
            if (rc < 0)
                return rc;
            if (rc == 0) {
                if (st == CSV_QUO) {
                    f->line = qline;
                    f->col = qcol;
                    snprintf(f->reason, sizeof(f->reason),
                             "quoted field not terminated (opened here)");
                    return PB_EPARSE;
                }
                if (!any)
                    return 0;
                break;
            }
            const char *b = r->buf;
            if (st == CSV_UNQ) {
                size_t s = r->pos;
                while (s < r->end && b[s] != d && b[s] != q && b[s] != '\n' && b[s] != '\r')
                    s++;
                if (s > r->pos) {
                    if ((rc = fld_add(r, b + r->pos, s - r->pos, &big)) != 0)
                        return rc;
                    r->pos = s;
                    continue;
                }
            } else if (st == CSV_QUO) {
                size_t s = r->pos;
                while (s < r->end && b[s] != q && b[s] != '\n')
                    s++;
                if (s > r->pos) {
                    if ((rc = fld_add(r, b + r->pos, s - r->pos, &big)) != 0)
                        return rc;
                    r->pos = s;
                    continue;
                }
            }
            int64_t here = rd_pos(r);
            int64_t hline = r->line, hcol = col_of(r, here);
            char c = take(r);
            any = true;
            switch (st) {
            case CSV_START:
            case CSV_UNQ:
            case CSV_QUO2:
                if (c == d) {
                    if ((rc = fld_new(r)) != 0)
                        return rc;
                    st = CSV_START;
                } else if (c == '\n') {
                    eol = true;
                } else if (c == '\r') {
                    char nx;
                    int pr = peek(r, &nx);
                    if (pr < 0)
                        return pr;
                    if (pr == 0 || nx == '\n') {
                        if (pr > 0)
                            take(r);
                        eol = true;
                    } else if (st == CSV_QUO2) {
                        set_bad(rec, "text after a closing quote", hline, hcol);
                        st = CSV_UNQ;
                    } else {
                        if ((rc = fld_add(r, &c, 1, &big)) != 0)
                            return rc;
                        st = CSV_UNQ;
                    }
                } else if (c == q && st == CSV_START) {
                    st = CSV_QUO;
                    qline = hline;
                    qcol = hcol;
                } else if (c == q && st == CSV_UNQ) {
                    set_bad(rec, "quote character in an unquoted field", hline, hcol);
                    if ((rc = fld_add(r, &c, 1, &big)) != 0)
                        return rc;
                } else if (st == CSV_QUO2) {
                    set_bad(rec, "text after a closing quote", hline, hcol);
                    if ((rc = fld_add(r, &c, 1, &big)) != 0)
                        return rc;
                    st = CSV_UNQ;
                } else {
                    if ((rc = fld_add(r, &c, 1, &big)) != 0)
                        return rc;
                    st = CSV_UNQ;
                }
                break;
            case CSV_QUO:
                if (c == q) {
                    char nx;
                    int pr = peek(r, &nx);
                    if (pr < 0)
                        return pr;
                    if (pr > 0 && nx == q) {
                        take(r);
                        if ((rc = fld_add(r, &q, 1, &big)) != 0)
                            return rc;
                    } else {
                        st = CSV_QUO2;
                    }
                } else if ((rc = fld_add(r, &c, 1, &big)) != 0) {
                    return rc;
                }
                break;
            }
        }
        rec->end = rd_pos(r);
        /* A line with nothing on it is no record. */
        if (r->nf == 1 && r->fldn == 0 && st == CSV_START)
            continue;
        if (big) {
            snprintf(r->reason, sizeof(r->reason), "record larger than max_record (%zu bytes)",
                     r->o.max_record);
            set_bad(rec, r->reason, rec->line, rec->col);
        }
        if (!r->header_done) {
            r->header_done = true;
            if (r->o.header || (r->o.columns && r->o.columns->n)) {
                if (rec->bad && r->o.header) {
                    f->line = rec->bad_line;
                    f->col = rec->bad_col;
                    snprintf(f->reason, sizeof(f->reason), "header: %.200s", rec->bad);
                    return PB_EPARSE;
                }
                if ((rc = csv_set_columns(r, f, rec->line)) != 0)
                    return rc;
                if (r->o.header)
                    continue;
            } else {
                r->ncols = r->nf; /* arrays: the first row sets the count */
            }
        }
        if ((rc = csv_emit(r, rec)) != 0)
            return rc;
        return 1;
    }
}

/* ---- JSON lines ---------------------------------------------------------------------------- */

static bool all_space(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return false;
    return true;
}

static void json_bad(struct rd *r, struct rd_rec *rec, const struct pb_json_check *chk,
                     int64_t line, int64_t col0)
{
    /* The line and column of the offset within the record. */
    int64_t l = line, c = col0;
    for (size_t i = 0; i < chk->err_offset && i < r->outn; i++) {
        if (r->out[i] == '\n') {
            l++;
            c = 1;
        } else {
            c++;
        }
    }
    snprintf(r->reason, sizeof(r->reason), "invalid JSON: %s",
             chk->err_reason ? chk->err_reason : "malformed");
    set_bad(rec, r->reason, l, c);
}

static int jsonl_next(struct rd *r, struct rd_rec *rec, struct rd_fatal *f)
{
    (void)f;
    int rc = skip_bom(r);
    if (rc < 0)
        return rc;
    for (;;) {
        memset(rec, 0, sizeof(*rec));
        r->outn = 0;
        bool big = false, any = false, nl = false;
        rec->start = rd_pos(r);
        rec->line = r->line;
        rec->col = 1;
        while (!nl) {
            rc = rd_fill(r);
            if (rc < 0)
                return rc;
            if (rc == 0)
                break;
            any = true;
            const char *s = r->buf + r->pos;
            size_t avail = r->end - r->pos;
            const char *e = memchr(s, '\n', avail);
            size_t k = e ? (size_t)(e - s) : avail;
            if (!big && r->outn + k > r->o.max_record)
                big = true;
            if (!big && (rc = buf_append(&r->out, &r->outn, &r->outcap, s, k)) != 0)
                return rc;
            r->pos += k;
            if (e) {
                take(r);
                nl = true;
            }
        }
        if (!any)
            return 0;
        rec->end = rd_pos(r);
        if (!big && r->outn && r->out[r->outn - 1] == '\r')
            r->out[--r->outn] = 0;
        if (!big && all_space(r->out, r->outn))
            continue;
        if (big) {
            snprintf(r->reason, sizeof(r->reason), "record larger than max_record (%zu bytes)",
                     r->o.max_record);
            set_bad(rec, r->reason, rec->line, 1);
            return 1;
        }
        struct pb_json_check chk = {0};
        if (pb_json_validate(r->out, r->outn, &chk) != 0) {
            json_bad(r, rec, &chk, rec->line, 1);
            return 1;
        }
        rec->body = r->out;
        rec->len = r->outn;
        return 1;
    }
}

/* ---- JSON: one value, or each element of a top-level array -------------------------- */

static int skip_space(struct rd *r)
{
    for (;;) {
        int rc = rd_fill(r);
        if (rc <= 0)
            return rc;
        char c = r->buf[r->pos];
        if (c != ' ' && c != '\t' && c != '\r' && c != '\n')
            return 1;
        take(r);
    }
}

static int json_whole(struct rd *r, struct rd_rec *rec, struct rd_fatal *f)
{
    memset(rec, 0, sizeof(*rec));
    r->outn = 0;
    rec->start = 0;
    rec->line = 1;
    rec->col = 1;
    for (;;) {
        int rc = rd_fill(r);
        if (rc < 0)
            return rc;
        if (rc == 0)
            break;
        size_t k = r->end - r->pos;
        if (r->outn + k > r->o.max_record) {
            f->line = r->line;
            f->col = 1;
            snprintf(f->reason, sizeof(f->reason), "the file is larger than max_record (%zu bytes)",
                     r->o.max_record);
            return PB_EPARSE;
        }
        if ((rc = buf_append(&r->out, &r->outn, &r->outcap, r->buf + r->pos, k)) != 0)
            return rc;
        r->pos = r->end;
    }
    rec->end = rd_pos(r);
    r->jmode = 3;
    size_t skip = r->outn >= 3 && memcmp(r->out, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0;
    struct pb_json_check chk = {0};
    if (pb_json_validate(r->out + skip, r->outn - skip, &chk) != 0) {
        /* The whole file is the value: its problem is the file's. */
        struct rd_rec tmp = {0};
        chk.err_offset += skip;
        json_bad(r, &tmp, &chk, 1, 1);
        f->line = tmp.bad_line;
        f->col = tmp.bad_col;
        snprintf(f->reason, sizeof(f->reason), "%s", tmp.bad);
        return PB_EPARSE;
    }
    rec->body = r->out + skip;
    rec->len = r->outn - skip;
    return 1;
}

static int json_next(struct rd *r, struct rd_rec *rec, struct rd_fatal *f)
{
    int rc;
    if (r->jmode == 0) {
        if ((rc = skip_bom(r)) < 0)
            return rc;
        if ((rc = skip_space(r)) < 0)
            return rc;
        if (rc == 0 || !r->o.split || r->buf[r->pos] != '[') {
            /* Back to the start: the value is the whole file. */
            if (lseek(r->fd, 0, SEEK_SET) != 0)
                return PB_EIO;
            if (r->md && (EVP_DigestInit_ex(r->md, EVP_sha256(), NULL) != 1))
                return PB_EIO;
            r->pos = r->end = 0;
            r->off = 0;
            r->eof = false;
            r->line = 1;
            r->line_start = 0;
            return json_whole(r, rec, f);
        }
        take(r); /* [ */
        r->jmode = 1;
    }
    if (r->jmode == 3) {
        /* After the array: only white space. */
        if ((rc = skip_space(r)) < 0)
            return rc;
        if (rc > 0) {
            f->line = r->line;
            f->col = col_of(r, rd_pos(r));
            snprintf(f->reason, sizeof(f->reason), "text after the top-level array");
            return PB_EPARSE;
        }
        return 0;
    }
    memset(rec, 0, sizeof(*rec));
    r->outn = 0;
    if ((rc = skip_space(r)) < 0)
        return rc;
    if (rc == 0)
        goto unterminated;
    if (r->buf[r->pos] == ']' && r->jmode == 1 && r->nf == 0) {
        take(r); /* [] */
        r->jmode = 3;
        return json_next(r, rec, f);
    }
    rec->start = rd_pos(r);
    rec->line = r->line;
    rec->col = col_of(r, rec->start);
    int depth = 0;
    bool in_str = false, esc = false, big = false;
    for (;;) {
        rc = rd_fill(r);
        if (rc < 0)
            return rc;
        if (rc == 0)
            goto unterminated;
        int64_t here = rd_pos(r);
        char c = r->buf[r->pos];
        if (in_str) {
            if (esc)
                esc = false;
            else if (c == '\\')
                esc = true;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '{' || c == '[') {
            if (++depth > 10000) {
                f->line = r->line;
                f->col = col_of(r, here);
                snprintf(f->reason, sizeof(f->reason), "nested too deeply");
                return PB_EPARSE;
            }
        } else if (c == '}' || c == ']') {
            if (depth == 0 && c == ']') {
                take(r);
                r->jmode = 3;
                break;
            }
            if (depth == 0) {
                f->line = r->line;
                f->col = col_of(r, here);
                snprintf(f->reason, sizeof(f->reason), "unbalanced '}' in the top-level array");
                return PB_EPARSE;
            }
            depth--;
        } else if (c == ',' && depth == 0) {
            take(r);
            break;
        }
        take(r);
        if (!big && r->outn + 1 > r->o.max_record)
            big = true;
        if (!big && (rc = buf_append(&r->out, &r->outn, &r->outcap, &c, 1)) != 0)
            return rc;
    }
    r->nf++; /* elements seen */
    rec->end = rd_pos(r);
    while (r->outn && all_space(r->out + r->outn - 1, 1))
        r->outn--;
    if (big) {
        snprintf(r->reason, sizeof(r->reason), "record larger than max_record (%zu bytes)",
                 r->o.max_record);
        set_bad(rec, r->reason, rec->line, rec->col);
        return 1;
    }
    if (r->outn == 0) {
        set_bad(rec, "empty array element", rec->line, rec->col);
        return 1;
    }
    struct pb_json_check chk = {0};
    if (pb_json_validate(r->out, r->outn, &chk) != 0) {
        json_bad(r, rec, &chk, rec->line, rec->col);
        return 1;
    }
    rec->body = r->out;
    rec->len = r->outn;
    return 1;
unterminated:
    f->line = r->line;
    f->col = col_of(r, rd_pos(r));
    snprintf(f->reason, sizeof(f->reason), "the top-level array is not terminated");
    return PB_EPARSE;
}

/* ---- raw: the whole file ---------------------------------------------------------------- */

static int raw_next(struct rd *r, struct rd_rec *rec, struct rd_fatal *f)
{
    if (r->jmode == 3)
        return 0;
    memset(rec, 0, sizeof(*rec));
    r->outn = 0;
    rec->line = 1;
    rec->col = 1;
    for (;;) {
        int rc = rd_fill(r);
        if (rc < 0)
            return rc;
        if (rc == 0)
            break;
        size_t k = r->end - r->pos;
        if (r->outn + k > r->o.max_record) {
            f->line = 1;
            f->col = 1;
            snprintf(f->reason, sizeof(f->reason), "the file is larger than max_record (%zu bytes)",
                     r->o.max_record);
            return PB_EPARSE;
        }
        if ((rc = buf_append(&r->out, &r->outn, &r->outcap, r->buf + r->pos, k)) != 0)
            return rc;
        r->pos = r->end;
    }
    if (!r->out && buf_append(&r->out, &r->outn, &r->outcap, "", 0) != 0)
        return PB_ENOMEM;
    r->jmode = 3;
    rec->end = rd_pos(r);
    rec->body = r->out;
    rec->len = r->outn;
    return 1;
}

/* ---- life cycle --------------------------------------------------------------------------- */

struct rd *rd_create(const struct rd_opts *o, int fd, bool hash, struct pb_err *err)
{
    struct rd *r = calloc(1, sizeof(*r));
    if (!r) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    r->o = *o;
    r->fd = fd;
    r->line = 1;
    r->buf = malloc(RD_BUF);
    if (!r->buf)
        goto nomem;
    if (hash) {
        r->md = EVP_MD_CTX_new();
        if (!r->md || EVP_DigestInit_ex(r->md, EVP_sha256(), NULL) != 1)
            goto nomem;
    }
    switch (o->format) {
    case FMT_CSV:
        r->next = csv_next;
        break;
    case FMT_JSONL:
        r->next = jsonl_next;
        break;
    case FMT_JSON:
        r->next = json_next;
        break;
    case FMT_RAW:
        r->next = raw_next;
        break;
    case FMT_XML:
        r->next = rd_xml_next;
        if (rd_xml_init(r, err) != 0) {
            rd_destroy(r);
            return NULL;
        }
        break;
    default:
        pb_err_set(err, PB_EINVAL, "unknown format");
        rd_destroy(r);
        return NULL;
    }
    return r;
nomem:
    rd_destroy(r);
    pb_err_set(err, PB_ENOMEM, "out of memory");
    return NULL;
}

int rd_next(struct rd *r, struct rd_rec *rec, struct rd_fatal *f)
{
    memset(f, 0, sizeof(*f));
    return r->next(r, rec, f);
}

int rd_digest(struct rd *r, char hex[FILE_DIGEST_HEX])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    char sink[16384];
    if (!r->md)
        return PB_EINVAL;
    /* Whatever a reader left unread counts too. */
    for (;;) {
        int got = rd_raw_read(r, sink, sizeof(sink));
        if (got < 0)
            return PB_EIO;
        if (got == 0)
            break;
    }
    if (EVP_DigestFinal_ex(r->md, md, &mdlen) != 1)
        return PB_EIO;
    for (unsigned int i = 0; i < mdlen && i < 32; i++) {
        hex[2 * i] = hexd[md[i] >> 4];
        hex[2 * i + 1] = hexd[md[i] & 15];
    }
    hex[64] = 0;
    EVP_MD_CTX_free(r->md);
    r->md = NULL;
    return 0;
}

void rd_destroy(struct rd *r)
{
    if (!r)
        return;
    rd_xml_free(r);
    if (r->md)
        EVP_MD_CTX_free(r->md);
    for (size_t i = 0; r->cols && i < r->ncols; i++)
        free(r->cols[i]);
    free(r->cols);
    free(r->buf);
    free(r->out);
    free(r->fld);
    free(r->fo);
    free(r);
}
