/* pgoutput.h - the replication stream of a PostgreSQL logical slot with the
 * pgoutput plugin (protocol version 1), decoded: the CopyData messages of
 * START_REPLICATION (XLogData, primary keepalive), the logical messages in
 * them (Begin, Commit, Relation, Insert, Update, Delete, Truncate, Message,
 * Origin, Type), the standby status update we send back, and a change as
 * the JSON patchbay hands on.
 *
 * Thread model: pure functions over caller-owned state; a relation cache
 * belongs to one thread. What a decoded message points at (tuple values)
 * is borrowed from the buffer it was decoded from. */
#ifndef PB_PGOUTPUT_H
#define PB_PGOUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../sql/sql_common.h"

/* ---- the replication protocol ------------------------------------------------------------- */

/* Microseconds between the Unix epoch and PostgreSQL's (2000-01-01). */
#define PGO_EPOCH_DIFF_US 946684800000000LL

enum pgo_copy_kind { PGO_COPY_XLOG = 'w', PGO_COPY_KEEPALIVE = 'k' };

struct pgo_copy {
    char kind;           /* 'w' or 'k' */
    uint64_t wal_start;  /* w: where the data starts */
    uint64_t wal_end;    /* w, k: the server's WAL end */
    int64_t send_time;   /* PostgreSQL epoch, microseconds */
    bool reply;          /* k: the server asks for a status update now */
    const uint8_t *data; /* w: the logical message */
    size_t len;
};

/* Decode one CopyData message. 0, or -1 with err. */
int pgo_copy_parse(const uint8_t *p, size_t n, struct pgo_copy *c, char *err, size_t errlen);

/* The standby status update ('r'): 34 bytes into out. */
void pgo_status_update(uint8_t out[34], uint64_t write, uint64_t flush, uint64_t apply,
                       int64_t now_pg_us, bool reply);

/* "16/B374D848" <-> LSN. */
void pgo_lsn_text(uint64_t lsn, char *buf, size_t len);
int pgo_lsn_parse(const char *s, uint64_t *lsn);
/* RFC 3339 UTC with microseconds of a PostgreSQL-epoch time. */
void pgo_time_text(int64_t pg_us, char *buf, size_t len);

/* ---- relations ------------------------------------------------------------------------------ */

struct pgo_col {
    char *name;
    uint32_t type;
    bool key; /* part of the key given to changes */
};

struct pgo_rel {
    uint32_t id;
    char *schema, *table;
    char ident; /* replica identity: d(efault) n(othing) f(ull) i(ndex) */
    size_t ncols;
    struct pgo_col *cols;
};

struct pgo_rels {
    struct pgo_rel *v;
    size_t n, cap;
};

const struct pgo_rel *pgo_rel_find(const struct pgo_rels *rs, uint32_t id);
/* Mark the columns named in names[0..n) as the key, the others not (a
 * table with REPLICA IDENTITY FULL flags every column). */
void pgo_rel_set_key(struct pgo_rels *rs, uint32_t id, const char *const *names, size_t n);
void pgo_rels_free(struct pgo_rels *rs);

/* ---- logical messages ----------------------------------------------------------------------- */

struct pgo_val {
    char kind; /* 'n' null, 'u' unchanged TOASTed value (not sent), 't' text */
    const char *p;
    size_t n;
};

#define PGO_MAX_COLS 1664 /* PostgreSQL's own limit on a table's columns */

struct pgo_tuple {
    size_t n;
    struct pgo_val *v; /* points into the decoder's array */
};

struct pgo_msg {
    char kind; /* B C R Y O M I U D T, or 0 for what is skipped */
    /* B */
    uint64_t final_lsn;
    int64_t commit_time;
    uint32_t xid;
    /* C */
    uint64_t commit_lsn, end_lsn;
    /* I U D, and R (the relation as cached now) */
    const struct pgo_rel *rel;
    char old_kind; /* U D: 'K' key, 'O' old row, 0 none */
    struct pgo_tuple old, new;
    /* T */
    size_t nrels;
    uint32_t *relids; /* points into the decoder's array */
    uint8_t truncate_flags;
    /* M */
    bool transactional;
    uint64_t msg_lsn;
    const char *prefix;
    const uint8_t *content;
    size_t content_len;
};

/* The decoder's memory for tuples (reused message after message). */
struct pgo_decoder {
    struct pgo_rels rels;
    struct pgo_val *vals; /* old then new */
    size_t cap;
    uint32_t *relids;
    size_t rcap;
};

/* Decode one logical message. A Relation message updates the cache. 0, or
 * -1 with err (malformed, a change for a relation never described, out of
 * memory). */
int pgo_decode(struct pgo_decoder *d, const uint8_t *p, size_t n, struct pgo_msg *m, char *err,
               size_t errlen);
void pgo_decoder_free(struct pgo_decoder *d);

/* ---- a change as JSON -------------------------------------------------------------------------
 */

struct pgo_change_ctx {
    uint64_t lsn, commit_lsn;
    int64_t commit_time; /* PostgreSQL epoch; INT64_MIN: none (a snapshot row) */
    int64_t xid;         /* -1: none */
    const struct sql_fmt *fmt;
};

/* {op, schema, table, key, before, after, lsn, commit_lsn, commit_time, xid}
 * of an I, U or D message (op from its kind), or of relation rel with op
 * "truncate" (m NULL), into body. An unchanged TOASTed value is left out of
 * after (it was not sent). -1 with *why (a column whose text is not UTF-8
 * is written base64 so the dead letter keeps it). */
int pgo_change_json(struct sql_buf *body, const struct pgo_msg *m, const struct pgo_rel *rel,
                    const struct pgo_change_ctx *cx, const char **why);

/* A snapshot row: op "read", after = the row, key from rel's key columns. */
int pgo_row_json(struct sql_buf *body, const struct pgo_rel *rel, const struct pgo_val *vals,
                 const struct pgo_change_ctx *cx, const char **why);

#endif
