/* postgres_search.c - the PostgreSQL backend's searches for the admin API:
 * dead letters by filter, and messages for the message explorer (the
 * contracts of pb_store.h; the same results as sqlite_search.c).
 *
 * Each search is built from the filters it is given, only the conditions
 * that apply (so the planner can use the partial indexes: the dead letters
 * by id, messages by (received_at, seq), by idempotency key), with keyset
 * paging: a page never re-reads what came before it, and every scan is
 * bounded by the query's limit. Runs on the caller's thread (admin
 * workers) with a connection of the read pool. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/postgres_int.h"

#define I64(r, row, col) pb__pg_i64(r, row, col)
#define NPARAM 12

/* A statement with its text parameters, numbered as they are added. */
struct search {
    struct pg_buf sql;
    int n;
    const char *v[NPARAM];
    char num[NPARAM][24];
    char *tmp[NPARAM];
    bool oom;
};

static void add_cond(struct search *s, const char *cond);

/* Add a condition with its one parameter (cond names it "$#"). */
static void cond_text(struct search *s, const char *cond, const char *val)
{
    if (s->n >= NPARAM) {
        s->oom = true;
        return;
    }
    char *tmp = NULL;
    const char *t = pb__pg_text(val, strlen(val), NULL, &tmp);
    if (!t) {
        s->oom = true;
        return;
    }
    s->tmp[s->n] = tmp;
    s->v[s->n++] = t;
    add_cond(s, cond);
}

static void cond_i64(struct search *s, const char *cond, int64_t x)
{
    if (s->n >= NPARAM) {
        s->oom = true;
        return;
    }
    snprintf(s->num[s->n], sizeof(s->num[0]), "%" PRId64, x);
    s->v[s->n] = s->num[s->n];
    s->n++;
    add_cond(s, cond);
}

/* cond with its parameter's number where it says "$#". */
static void add_cond(struct search *s, const char *cond)
{
    const char *hash = strchr(cond, '#');
    size_t pre = hash ? (size_t)(hash - cond) : strlen(cond);
    pb__pg_buf_add(&s->sql, cond, pre);
    if (hash) {
        pb__pg_buf_addf(&s->sql, "%d", s->n);
        pb__pg_buf_add(&s->sql, hash + 1, strlen(hash + 1));
    }
}

static void search_free(struct search *s)
{
    for (int i = 0; i < s->n; i++)
        free(s->tmp[i]);
    pb__pg_buf_free(&s->sql);
}

/* ---- dead letters ---------------------------------------------------------------------------- */

int pb__pg_read_dead_letters(void *ctx, const struct pb_dead_query *f, const struct pb_read_cbs *cb,
                             struct pb_err *err)
{
    struct pgq *q = ctx;
    struct search s = {0};
    PGresult *res = NULL;
    int rc = 0;

    /* An output takes its sub-outputs too (stored with its name), or names
     * one of them ("out/sub"): plain equalities. */
    char out[PB_NAME_MAX_STORE];
    const char *sub = NULL;
    if (f->output) {
        const char *slash = strchr(f->output, '/');
        snprintf(out, sizeof(out), "%.*s",
                 slash ? (int)(slash - f->output) : (int)strlen(f->output), f->output);
        sub = slash ? slash + 1 : NULL;
    }
    pb__pg_buf_addf(&s.sql, PG_DEAD_COLS " WHERE d.state = 2", "NULL::bytea");
    if (f->pipeline)
        cond_text(&s, " AND d.pipeline = $#::text", f->pipeline);
    if (f->output)
        cond_text(&s, " AND d.output = $#::text", out);
    if (sub)
        cond_text(&s, " AND d.sub = $#::text", sub);
    if (f->newest_first && f->before_id > 0)
        cond_i64(&s, " AND d.id < $#::bigint", f->before_id);
    else if (!f->newest_first && f->after_id > 0)
        cond_i64(&s, " AND d.id > $#::bigint", f->after_id);
    if (f->since)
        cond_i64(&s, " AND d.updated_at >= $#::bigint", f->since);
    if (f->until)
        cond_i64(&s, " AND d.updated_at < $#::bigint", f->until);
    if (f->error)
        cond_text(&s, " AND strpos(lower(d.last_error), lower($#::text)) > 0", f->error);
    if (f->status)
        cond_i64(&s, " AND d.last_status = $#::int", f->status);
    cond_i64(&s,
             f->newest_first ? " ORDER BY d.id DESC LIMIT $#::bigint"
                             : " ORDER BY d.id LIMIT $#::bigint",
             f->limit);
    if (s.oom || s.sql.oom) {
        search_free(&s);
        return pb_err_set(err, PB_ENOMEM, "out of memory building a search");
    }
    struct pgc *c = pb__pg_reader_get(q, err);
    if (!c) {
        search_free(&s);
        return err && err->code ? err->code : PB_ESTORE;
    }
    rc = pb__pg_rq(q, c, s.sql.p, s.n, s.v, &res, err);
    if (rc == 0)
        for (int i = 0; i < PQntuples(res); i++) {
            struct pb_delivery_row d = pb__pg_dead_row(res, i, false);
            if (cb->delivery && cb->delivery(cb->arg, &d)) {
                rc = pb__pg_stopped(err);
                break;
            }
        }
    PQclear(res);
    pb__pg_reader_put(q, c, false);
    search_free(&s);
    return rc;
}

/* ---- messages ------------------------------------------------------------------------------ */

#define MSG_COLS                                                                                   \
    "SELECT m.seq, m.id, m.pipeline, m.received_at, m.content_type, m.body,"                       \
    " coalesce(m.body_crc, -1), m.meta, (SELECT p.id FROM messages p WHERE p.seq = m.parent_seq)," \
    " m.idem_key, (SELECT e.id FROM messages e WHERE e.seq = m.edit_of) FROM messages m WHERE "    \
    "true"

static int deliveries(struct pgq *q, struct pgc *c, const struct pb_message_row *m,
                      const struct pb_read_cbs *cb, struct pb_err *err)
{
    char seq[24];
    snprintf(seq, sizeof(seq), "%" PRId64, m->seq);
    const char *sv[] = {seq};
    PGresult *ds = NULL;
    int rc = pb__pg_rq(q, c,
                       "SELECT id, output, state::bigint, attempts::bigint, next_at, created_at,"
                       " updated_at, last_status::bigint, last_error, coalesce(replay_of, 0), sub"
                       " FROM deliveries WHERE msg_seq = $1 ORDER BY id",
                       1, sv, &ds, err);
    if (rc)
        return rc;
    for (int i = 0; i < PQntuples(ds); i++) {
        struct pb_delivery_row d = {
            .id = I64(ds, i, 0),
            .msg_id = m->id,
            .pipeline = m->pipeline,
            .output = PQgetvalue(ds, i, 1),
            .sub = pb__pg_txt(ds, i, 10),
            .state = (enum pb_dstate)I64(ds, i, 2),
            .attempts = (int)I64(ds, i, 3),
            .next_at = I64(ds, i, 4),
            .created_at = I64(ds, i, 5),
            .updated_at = I64(ds, i, 6),
            .has_status = !PQgetisnull(ds, i, 7),
            .last_status = (int)I64(ds, i, 7),
            .last_error = pb__pg_txt(ds, i, 8),
            .last_error_len = pb__pg_txt(ds, i, 8) ? (size_t)PQgetlength(ds, i, 8) : 0,
            .replay_of = I64(ds, i, 9),
        };
        if (cb->delivery && cb->delivery(cb->arg, &d)) {
            rc = pb__pg_stopped(err);
            break;
        }
    }
    PQclear(ds);
    return rc;
}

int pb__pg_search_messages(void *ctx, const struct pb_msg_query *f, const struct pb_read_cbs *cb,
                           struct pb_err *err)
{
    struct pgq *q = ctx;
    struct search s = {0};
    PGresult *res = NULL;
    int rc = 0;

    pb__pg_buf_add(&s.sql, MSG_COLS, strlen(MSG_COLS));
    if (f->pipeline)
        cond_text(&s, " AND m.pipeline = $#::text", f->pipeline);
    if (f->msg_id)
        cond_text(&s, " AND m.id = $#::text", f->msg_id);
    if (f->idem_key)
        cond_text(&s, " AND m.idem_key = $#::text", f->idem_key);
    if (f->since)
        cond_i64(&s, " AND m.received_at >= $#::bigint", f->since);
    if (f->until)
        cond_i64(&s, " AND m.received_at < $#::bigint", f->until);
    if (f->before_at || f->before_seq) {
        cond_i64(&s, " AND (m.received_at, m.seq) < ($#::bigint", f->before_at);
        cond_i64(&s, ", $#::bigint)", f->before_seq);
    }
    if (f->state >= 0 || f->output) {
        pb__pg_buf_addf(&s.sql, " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.msg_seq = m.seq");
        if (f->state >= 0)
            cond_i64(&s, " AND d.state = $#::smallint", f->state);
        if (f->output) {
            cond_text(&s, " AND (d.output = $#::text", f->output);
            pb__pg_buf_addf(&s.sql, " OR d.output || '/' || d.sub = $%d::text)", s.n);
        }
        pb__pg_buf_addc(&s.sql, ')');
    }
    /* messages_received_seq holds (received_at, seq): this order is its own. */
    cond_i64(&s, " ORDER BY m.received_at DESC, m.seq DESC LIMIT $#::bigint", f->limit);
    if (s.oom || s.sql.oom) {
        search_free(&s);
        return pb_err_set(err, PB_ENOMEM, "out of memory building a search");
    }
    struct pgc *c = pb__pg_reader_get(q, err);
    if (!c) {
        search_free(&s);
        return err && err->code ? err->code : PB_ESTORE;
    }
    /* One snapshot for the messages and their deliveries. */
    if ((rc = pb__pg_snapshot_begin(q, c, err)) != 0)
        goto out;
    if ((rc = pb__pg_rq(q, c, s.sql.p, s.n, s.v, &res, err)) != 0)
        goto out;
    for (int i = 0; i < PQntuples(res); i++) {
        struct pb_message_row m = {
            .seq = I64(res, i, 0),
            .id = PQgetvalue(res, i, 1),
            .pipeline = PQgetvalue(res, i, 2),
            .received_at = I64(res, i, 3),
            .content_type = pb__pg_txt(res, i, 4),
            .body = PQgetvalue(res, i, 5),
            .len = (size_t)PQgetlength(res, i, 5),
            .meta = pb__pg_txt(res, i, 7),
            .meta_len = pb__pg_txt(res, i, 7) ? (size_t)PQgetlength(res, i, 7) : 0,
            .parent_id = pb__pg_txt(res, i, 8),
            .idem_key = pb__pg_txt(res, i, 9),
            .edit_of = pb__pg_txt(res, i, 10),
        };
        m.body_damaged = !pb__pg_intact(res, i, 6, m.body, m.len);
        int want = cb->message ? cb->message(cb->arg, &m) : 0;
        if (want == PB_READ_SKIP)
            continue;
        if (want) {
            rc = pb__pg_stopped(err);
            goto out;
        }
        if ((rc = deliveries(q, c, &m, cb, err)) != 0)
            goto out;
    }
out:
    PQclear(res);
    pb__pg_snapshot_end(q, c);
    pb__pg_reader_put(q, c, false);
    search_free(&s);
    return rc;
}
