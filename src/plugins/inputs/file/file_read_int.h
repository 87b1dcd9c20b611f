/* file_read_int.h - the inside of a record reader, shared by the byte-stream
 * formats (file_read.c) and XML (file_xml.c). One thread at a time. */
#ifndef PB_FILE_READ_INT_H
#define PB_FILE_READ_INT_H

#include <openssl/evp.h>

#include "file_int.h"

#define RD_BUF (256 * 1024)

struct rd_xml;

struct rd {
    struct rd_opts o;
    int fd;
    EVP_MD_CTX *md; /* NULL: no digest */
    /* input: buf[pos..end) not yet consumed; buf[0] is at file offset off */
    char *buf;
    size_t pos, end;
    bool eof;
    int64_t off;
    int64_t line;       /* line of buf[pos], 1-based */
    int64_t line_start; /* file offset where that line starts */
    /* output: the record's body */
    char *out;
    size_t outn, outcap;
    /* csv: the fields of the record being read, raw, and where each starts */
    char *fld;
    size_t fldn, fldcap;
    size_t *fo;
    size_t nf, fcap;
    char **cols; /* column names as JSON strings (with quotes), ncols of them */
    size_t ncols;
    bool header_done;
    bool started; /* a BOM has been looked for */
    /* json: top-level array mode */
    int jmode; /* 0 not yet known, 1 array, 2 whole value, 3 array ended */
    int (*next)(struct rd *r, struct rd_rec *rec, struct rd_fatal *f);
    struct rd_xml *xml;
    char reason[256];
};

/* Refill buf when everything in it was consumed: 1 data, 0 end, PB_EIO. */
int rd_fill(struct rd *r);
/* The file offset of buf[pos]. */
static inline int64_t rd_pos(const struct rd *r)
{
    return r->off + (int64_t)r->pos;
}
/* Raw read for the XML reader: up to len bytes (hashed), 0 at the end, -1. */
int rd_raw_read(struct rd *r, char *dst, size_t len);

int rd_xml_init(struct rd *r, struct pb_err *err);
int rd_xml_next(struct rd *r, struct rd_rec *rec, struct rd_fatal *f);
void rd_xml_free(struct rd *r);

#endif
