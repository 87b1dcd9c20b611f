/* postgres_read.c - reads of the PostgreSQL state store: a small pool of
 * connections usable from any thread (one thread at a time each), counts
 * for metrics and the backlog, the key-value state, the rows the admin API
 * builds its JSON from, and the nodes of the cluster. A message and its
 * deliveries are read in one snapshot (REPEATABLE READ, read only).
 * Results come in binary: bodies are not escaped; integer columns are cast
 * to bigint so one getter reads them all. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "patchbay/pb_log.h"
#include "store/postgres_int.h"

/* ---- the pool ------------------------------------------------------------------------------ */

struct pgc *pb__pg_reader_get(struct pgq *q, struct pb_err *err)
{
    struct pgc *c = NULL;
    pthread_mutex_lock(&q->pool_lock);
    if (q->nidle > 0)
        c = q->idle[--q->nidle];
    pthread_mutex_unlock(&q->pool_lock);
    if (c && c->conn && PQstatus(c->conn) == CONNECTION_OK)
        return c;
    if (!c && !(c = calloc(1, sizeof(*c)))) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    if (pb__pg_connect(q, c, "reader", err) < 0) {
        free(c);
        atomic_store(&q->reachable, false);
        return NULL;
    }
    return c;
}

void pb__pg_reader_put(struct pgq *q, struct pgc *c, bool broken)
{
    if (!c)
        return;
    if (broken || !c->conn || PQstatus(c->conn) != CONNECTION_OK ||
        PQtransactionStatus(c->conn) != PQTRANS_IDLE)
        pb__pg_close(c);
    pthread_mutex_lock(&q->pool_lock);
    if (c->conn && q->nidle < PG_READ_POOL_MAX) {
        q->idle[q->nidle++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&q->pool_lock);
    if (c) {
        pb__pg_close(c);
        free(c);
    }
}

void pb__pg_readers_close(struct pgq *q)
{
    for (int i = 0; i < q->nidle; i++) {
        pb__pg_close(q->idle[i]);
        free(q->idle[i]);
    }
    q->nidle = 0;
}

/* One statement, binary results. */
static int rq_once(struct pgq *q, struct pgc *c, const char *sql, int n, const char *const *vals,
                   PGresult **out, bool *lost, struct pb_err *err)
{
    *out = NULL;
    *lost = false;
    if (!PQsendQueryParams(c->conn, sql, n, NULL, vals, NULL, NULL, 1)) {
        *lost = PQstatus(c->conn) != CONNECTION_OK;
        return pb_err_set(err, PB_ESTORE, "state store read failed: %s", PQerrorMessage(c->conn));
    }
    PGresult *res, *keep = NULL;
    int rc = 0, bad = 0;
    char msg[PB_ERR_MSG_MAX] = "";
    while ((res = pb__pg_next(c, pb__pg_deadline(PG_IO_DEADLINE_MS), &rc))) {
        if (PQresultStatus(res) == PGRES_FATAL_ERROR && !bad) {
            bad = pb__pg_code(res, c->conn);
            snprintf(msg, sizeof(msg), "%s", pb__pg_msg(res, c->conn));
        }
        PQclear(keep);
        keep = res;
    }
    if (rc || bad) {
        PQclear(keep);
        *lost = (rc && rc != PB_ETIMEOUT) || PQstatus(c->conn) != CONNECTION_OK;
        return pb_err_set(err, rc ? rc : bad, "state store read failed (%s): %s", q->display,
                          rc ? (rc == PB_ETIMEOUT ? "no answer in time" : "connection lost") : msg);
    }
    *out = keep;
    return 0;
}

/* One statement on a reader connection. A pooled connection the server
 * has ended since (restarted, a presumed-dead node's sessions terminated)
 * fails at once: outside a transaction the statement is run again on a new
 * connection, once. */
int pb__pg_rq(struct pgq *q, struct pgc *c, const char *sql, int n, const char *const *vals,
              PGresult **out, struct pb_err *err)
{
    bool idle = PQtransactionStatus(c->conn) == PQTRANS_IDLE;
    bool lost = false;
    int rc = rq_once(q, c, sql, n, vals, out, &lost, err);
    if (rc && lost && idle && pb__pg_connect(q, c, "reader", NULL) == 0) {
        rc = rq_once(q, c, sql, n, vals, out, &lost, err);
        if (rc == 0)
            pb_err_clear(err);
    }
    if (rc && lost)
        atomic_store(&q->reachable, false);
    return rc;
}

const char *pb__pg_txt(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
}

#define I64(r, row, col) pb__pg_i64(r, row, col)

/* ---- counts and state ------------------------------------------------------------------------ */

int pb__pg_count(void *ctx, int which, pb_count_cb cb, void *arg, struct pb_err *err)
{
    struct pgq *q = ctx;
    struct pgc *c = pb__pg_reader_get(q, err);
    PGresult *res = NULL;
    if (!c)
        return err && err->code ? err->code : PB_ESTORE;
    /* PENDING and DEAD through their partial indexes: they do not grow with
     * the finished deliveries kept for retention. */
    const char *sql = which == PB_DSTATE_PENDING
                          ? "SELECT pipeline, output, sub, 0::bigint, count(*) FROM deliveries"
                            " WHERE state = 0 GROUP BY pipeline, output, sub"
                      : which == PB_DSTATE_DEAD
                          ? "SELECT pipeline, output, sub, 2::bigint, count(*) FROM deliveries"
                            " WHERE state = 2 GROUP BY pipeline, output, sub"
                          : "SELECT pipeline, output, sub, state::bigint, count(*) FROM deliveries"
                            " GROUP BY pipeline, output, sub, state";
    int rc = pb__pg_rq(q, c, sql, 0, NULL, &res, err);
    if (rc == 0)
        for (int i = 0; i < PQntuples(res); i++)
            cb(arg, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), pb__pg_txt(res, i, 2),
               (enum pb_dstate)I64(res, i, 3), I64(res, i, 4));
    PQclear(res);
    pb__pg_reader_put(q, c, rc != 0);
    return rc;
}

int pb__pg_kv_load(void *ctx, const char *scope, pb_kv_cb cb, void *arg, struct pb_err *err)
{
    struct pgq *q = ctx;
    struct pgc *c = pb__pg_reader_get(q, err);
    PGresult *res = NULL;
    if (!c)
        return err && err->code ? err->code : PB_ESTORE;
    const char *vals[] = {scope};
    int rc = pb__pg_rq(q, c, "SELECT key, value FROM kv WHERE scope = $1 ORDER BY key", 1, vals,
                       &res, err);
    if (rc == 0)
        for (int i = 0; i < PQntuples(res); i++)
            if (cb(arg, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
                   (size_t)PQgetlength(res, i, 1)))
                break;
    PQclear(res);
    pb__pg_reader_put(q, c, rc != 0);
    return rc;
}

int pb__pg_read_nodes(void *ctx, pb_node_cb cb, void *arg, struct pb_err *err)
{
    struct pgq *q = ctx;
    struct pgc *c = pb__pg_reader_get(q, err);
    PGresult *res = NULL;
    if (!c)
        return err && err->code ? err->code : PB_ESTORE;
    int rc = pb__pg_rq(
        q, c,
        "SELECT n.epoch, n.name, n.version, n.state::bigint, n.started_at, n.heartbeat_at,"
        " coalesce(n.ended_at, 0), (SELECT count(*) FROM deliveries d WHERE d.state = 0"
        " AND d.lease = n.epoch), coalesce((SELECT string_agg(h.name, ',' ORDER BY h.name)"
        " FROM holds h WHERE h.epoch = n.epoch), '') FROM nodes n"
        " WHERE n.state = 0 OR n.ended_at > " PG_NOW_MS " - 3600000"
        " ORDER BY n.state, n.name, n.epoch",
        0, NULL, &res, err);
    static const char *const states[] = {"live", "left", "dead"};
    if (rc == 0)
        for (int i = 0; i < PQntuples(res); i++) {
            int64_t st = I64(res, i, 3);
            struct pb_node_row n = {
                .epoch = I64(res, i, 0),
                .name = PQgetvalue(res, i, 1),
                .version = PQgetvalue(res, i, 2),
                .state = st >= 0 && st <= 2 ? states[st] : "unknown",
                .started_at = I64(res, i, 4),
                .heartbeat_at = I64(res, i, 5),
                .ended_at = I64(res, i, 6),
                .leases = I64(res, i, 7),
                .holds = PQgetvalue(res, i, 8),
            };
            n.self = n.epoch == q->epoch;
            if (cb(arg, &n))
                break;
        }
    PQclear(res);
    pb__pg_reader_put(q, c, rc != 0);
    return rc;
}

/* ---- rows for the admin API ---------------------------------------------------------------- */

int pb__pg_stopped(struct pb_err *err)
{
    return pb_err_set(err, PB_ENOMEM, "out of memory reading the state store");
}

/* d's attempts, in order; the one that ended d at its first try has no row
 * of its own and is made from d's (postgres_write.c). */
static int attempts(struct pgq *q, struct pgc *c, const struct pb_delivery_row *d, int64_t latency,
                    bool has_latency, const struct pb_read_cbs *cb, struct pb_err *err)
{
    char id[24];
    snprintf(id, sizeof(id), "%" PRId64, d->id);
    const char *vals[] = {id};
    PGresult *res = NULL;
    int rc =
        pb__pg_rq(q, c,
                  "SELECT n::bigint, started_at, latency_ms, status::bigint, state::bigint, error,"
                  " answer FROM attempts WHERE delivery_id = $1 ORDER BY n",
                  1, vals, &res, err);
    if (rc)
        return rc;
    int last = 0;
    for (int i = 0; i < PQntuples(res); i++) {
        last = (int)I64(res, i, 0);
        struct pb_attempt_row a = {
            .n = last,
            .started_at = I64(res, i, 1),
            .latency_ms = I64(res, i, 2),
            .status = (int)I64(res, i, 3),
            .state = (enum pb_dstate)I64(res, i, 4),
            .error = pb__pg_txt(res, i, 5),
            .error_len = pb__pg_txt(res, i, 5) ? (size_t)PQgetlength(res, i, 5) : 0,
            .answer = pb__pg_txt(res, i, 6),
            .answer_len = pb__pg_txt(res, i, 6) ? (size_t)PQgetlength(res, i, 6) : 0,
        };
        if (cb->attempt && cb->attempt(cb->arg, &a)) {
            PQclear(res);
            return pb__pg_stopped(err);
        }
    }
    PQclear(res);
    if (last == 0 && d->attempts == 1 && has_latency && d->state != PB_DSTATE_PENDING) {
        struct pb_attempt_row a = {
            .n = 1,
            .started_at = d->updated_at - latency,
            .latency_ms = latency,
            .status = d->last_status,
            .state = d->state == PB_DSTATE_REPLAYED ? PB_DSTATE_DEAD : d->state,
            .error = d->last_error,
            .error_len = d->last_error_len,
            .answer = d->last_answer,
            .answer_len = d->last_answer_len,
        };
        if (cb->attempt && cb->attempt(cb->arg, &a))
            return pb__pg_stopped(err);
    }
    return 0;
}

bool pb__pg_intact(const PGresult *r, int row, int crc_col, const void *body, size_t len)
{
    int64_t crc = I64(r, row, crc_col);
    return crc < 0 || crc == pb__store_body_crc(body, len);
}

int pb__pg_snapshot_begin(struct pgq *q, struct pgc *c, struct pb_err *err)
{
    PGresult *res = NULL;
    int rc = pb__pg_rq(q, c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", 0, NULL, &res, err);
    PQclear(res);
    return rc;
}

void pb__pg_snapshot_end(struct pgq *q, struct pgc *c)
{
    PGresult *res = NULL;
    pb__pg_rq(q, c, "COMMIT", 0, NULL, &res, NULL);
    PQclear(res);
}

int pb__pg_read_message(void *ctx, const char *msg_id, const struct pb_read_cbs *cb,
                        struct pb_err *err)
{
    struct pgq *q = ctx;
    struct pgc *c = pb__pg_reader_get(q, err);
    PGresult *m = NULL, *ch = NULL, *ds = NULL;
    char *tmp = NULL;
    if (!c)
        return err && err->code ? err->code : PB_ESTORE;
    int rc = pb__pg_snapshot_begin(q, c, err);
    if (rc)
        goto out;
    const char *id = pb__pg_text(msg_id, strlen(msg_id), NULL, &tmp);
    const char *vals[] = {id ? id : ""};
    rc = pb__pg_rq(
        q, c,
        "SELECT m.seq, m.id, m.pipeline, m.received_at, m.content_type, m.body,"
        " coalesce(m.body_crc, -1), m.meta, (SELECT p.id FROM messages p WHERE p.seq ="
        " m.parent_seq), r.body, coalesce(r.body_crc, -1), (r.seq IS NOT NULL)::int::bigint,"
        " m.idem_key, (SELECT e.id FROM messages e WHERE e.seq = m.edit_of)"
        " FROM messages m LEFT JOIN routed r ON r.seq = m.seq WHERE m.id = $1",
        1, vals, &m, err);
    if (rc)
        goto out;
    if (PQntuples(m) == 0) {
        rc = pb_err_set(err, PB_ENOTFOUND, "no message %s", msg_id);
        goto out;
    }
    struct pb_message_row row = {
        .seq = I64(m, 0, 0),
        .id = PQgetvalue(m, 0, 1),
        .pipeline = PQgetvalue(m, 0, 2),
        .received_at = I64(m, 0, 3),
        .content_type = pb__pg_txt(m, 0, 4),
        .body = PQgetvalue(m, 0, 5),
        .len = (size_t)PQgetlength(m, 0, 5),
        .meta = pb__pg_txt(m, 0, 7),
        .meta_len = pb__pg_txt(m, 0, 7) ? (size_t)PQgetlength(m, 0, 7) : 0,
        .parent_id = pb__pg_txt(m, 0, 8),
        .routed = I64(m, 0, 11) != 0,
        .idem_key = pb__pg_txt(m, 0, 12),
        .edit_of = pb__pg_txt(m, 0, 13),
    };
    row.body_damaged = !pb__pg_intact(m, 0, 6, row.body, row.len);
    if (row.routed) {
        row.routed_body = PQgetvalue(m, 0, 9);
        row.routed_len = (size_t)PQgetlength(m, 0, 9);
        row.routed_damaged = !pb__pg_intact(m, 0, 10, row.routed_body, row.routed_len);
    }
    if (cb->message && cb->message(cb->arg, &row)) {
        rc = pb__pg_stopped(err);
        goto out;
    }
    char seq[24];
    snprintf(seq, sizeof(seq), "%" PRId64, row.seq);
    const char *sv[] = {seq};
    rc = pb__pg_rq(q, c, "SELECT id FROM messages WHERE parent_seq = $1 ORDER BY seq LIMIT 1000", 1,
                   sv, &ch, err);
    if (rc)
        goto out;
    for (int i = 0; i < PQntuples(ch); i++)
        if (cb->child && cb->child(cb->arg, PQgetvalue(ch, i, 0))) {
            rc = pb__pg_stopped(err);
            goto out;
        }
    PQclear(ch);
    ch = NULL;
    rc = pb__pg_rq(q, c, "SELECT id FROM messages WHERE edit_of = $1 ORDER BY seq LIMIT 1000", 1,
                   sv, &ch, err);
    if (rc)
        goto out;
    for (int i = 0; i < PQntuples(ch); i++)
        if (cb->edit && cb->edit(cb->arg, PQgetvalue(ch, i, 0))) {
            rc = pb__pg_stopped(err);
            goto out;
        }
    rc = pb__pg_rq(
        q, c,
        "SELECT id, output, state::bigint, attempts::bigint, next_at, created_at, updated_at,"
        " last_status::bigint, last_error, coalesce(replay_of, 0), sub, last_latency_ms,"
        " last_answer"
        " FROM deliveries WHERE msg_seq = $1 ORDER BY id",
        1, sv, &ds, err);
    if (rc)
        goto out;
    for (int i = 0; i < PQntuples(ds); i++) {
        struct pb_delivery_row d = {
            .id = I64(ds, i, 0),
            .msg_id = row.id,
            .pipeline = row.pipeline,
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
            .last_answer = pb__pg_txt(ds, i, 12),
            .last_answer_len = pb__pg_txt(ds, i, 12) ? (size_t)PQgetlength(ds, i, 12) : 0,
            .replay_of = I64(ds, i, 9),
        };
        if (cb->delivery && cb->delivery(cb->arg, &d)) {
            rc = pb__pg_stopped(err);
            goto out;
        }
        if ((rc = attempts(q, c, &d, I64(ds, i, 11), !PQgetisnull(ds, i, 11), cb, err)) != 0)
            goto out;
    }
out:
    free(tmp);
    PQclear(m);
    PQclear(ch);
    PQclear(ds);
    pb__pg_snapshot_end(q, c);
    pb__pg_reader_put(q, c, false);
    return rc;
}

struct pb_delivery_row pb__pg_dead_row(const PGresult *r, int i, bool with_body)
{
    struct pb_delivery_row d = {
        .id = I64(r, i, 0),
        .msg_id = PQgetvalue(r, i, 1),
        .pipeline = PQgetvalue(r, i, 2),
        .output = PQgetvalue(r, i, 3),
        .sub = pb__pg_txt(r, i, 11),
        .state = PB_DSTATE_DEAD,
        .attempts = (int)I64(r, i, 4),
        .created_at = I64(r, i, 5),
        .updated_at = I64(r, i, 6),
        .has_status = !PQgetisnull(r, i, 7),
        .last_status = (int)I64(r, i, 7),
        .last_error = pb__pg_txt(r, i, 8),
        .last_error_len = pb__pg_txt(r, i, 8) ? (size_t)PQgetlength(r, i, 8) : 0,
        .last_answer = pb__pg_txt(r, i, 13),
        .last_answer_len = pb__pg_txt(r, i, 13) ? (size_t)PQgetlength(r, i, 13) : 0,
    };
    if (with_body) {
        d.content_type = pb__pg_txt(r, i, 9);
        d.body = PQgetvalue(r, i, 10);
        d.len = (size_t)PQgetlength(r, i, 10);
    }
    return d;
}

int pb__pg_read_dead_letter(void *ctx, int64_t delivery_id, const struct pb_read_cbs *cb,
                            struct pb_err *err)
{
    struct pgq *q = ctx;
    struct pgc *c = pb__pg_reader_get(q, err);
    PGresult *res = NULL;
    char sql[768], id[24];
    if (!c)
        return err && err->code ? err->code : PB_ESTORE;
    int rc = pb__pg_snapshot_begin(q, c, err);
    if (rc)
        goto out;
    snprintf(sql, sizeof(sql), PG_DEAD_COLS " WHERE d.id = $1::bigint AND d.state = 2", "m.body");
    snprintf(id, sizeof(id), "%" PRId64, delivery_id);
    const char *vals[] = {id};
    if ((rc = pb__pg_rq(q, c, sql, 1, vals, &res, err)) != 0)
        goto out;
    if (PQntuples(res) == 0) {
        rc = pb_err_set(err, PB_ENOTFOUND, "no dead letter %" PRId64, delivery_id);
        goto out;
    }
    struct pb_delivery_row d = pb__pg_dead_row(res, 0, true);
    if (cb->delivery && cb->delivery(cb->arg, &d)) {
        rc = pb__pg_stopped(err);
        goto out;
    }
    rc = attempts(q, c, &d, I64(res, 0, 12), !PQgetisnull(res, 0, 12), cb, err);
out:
    PQclear(res);
    pb__pg_snapshot_end(q, c);
    pb__pg_reader_put(q, c, false);
    return rc;
}
