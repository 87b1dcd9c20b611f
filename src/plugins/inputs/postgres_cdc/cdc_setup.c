/* cdc_setup.c - the `postgres_cdc` input's SQL side: connecting its two
 * sessions (a walsender for the slot and the stream, a plain one for the
 * catalog), the publication, the slot and what the checkpoint says about
 * it, the initial snapshot, key columns, heartbeats and the slot's lag
 * (cdc_int.h).
 *
 * Where to start (the checkpoint is {"slot", "phase", "lsn"}):
 *   phase "stream"   -> the slot must still exist: stream from lsn.
 *   phase "snapshot" -> a snapshot was under way when patchbay stopped; its
 *                       exported snapshot died with the session, so the slot
 *                       (ours) is dropped and everything starts again (the
 *                       rows read before come again, with new keys).
 *   none             -> a new slot; with snapshot: initial the "snapshot"
 *                       checkpoint is committed first, then the slot made
 *                       with EXPORT_SNAPSHOT, the tables read in that
 *                       snapshot, and the "stream" checkpoint committed at
 *                       the slot's consistent point: nothing changed before
 *                       it is missing from the rows, nothing after it is in
 *                       them. A slot that exists without a checkpoint is
 *                       used as it is with snapshot: never, refused with
 *                       initial (its changes since its creation are not in
 *                       any snapshot patchbay could take now).
 *
 * Thread model: the input's own loop thread; every statement blocks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cdc_int.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_loop.h"

/* ---- helpers
 * -------------------------------------------------------------------------------------- */

/* Run sql with text params on the plain session; the result (TUPLES_OK or
 * COMMAND_OK) or NULL with the error in c->sqlc. */
static PGresult *q(struct in_cdc *c, const char *sql, int n, const char *const *vals)
{
    PGresult *r = PQexecParams(c->sqlc->pg, sql, n, NULL, vals, NULL, NULL, 0);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        sql_pg_error(c->sqlc, r);
        PQclear(r);
        return NULL;
    }
    return r;
}

static int q_ok(struct in_cdc *c, const char *sql, const char *what)
{
    PGresult *r = q(c, sql, 0, NULL);
    if (!r) {
        cdc_fail(c, what, c->sqlc->msg);
        return -1;
    }
    PQclear(r);
    return 0;
}

void cdc_snap_free(struct in_cdc *c)
{
    for (size_t i = 0; i < c->nsnap; i++) {
        free(c->snap[i].schema);
        free(c->snap[i].table);
        for (size_t k = 0; k < c->snap[i].nkeys; k++)
            free(c->snap[i].keys[k]);
        free(c->snap[i].keys);
    }
    free(c->snap);
    c->snap = NULL;
    c->nsnap = c->snap_i = 0;
    c->snap_open = false;
}

/* The key columns of relid: its replica identity index, else its primary
 * key. 0 with *names (malloc'd, *n of them; none: no key), or -1. */
static int key_columns(struct in_cdc *c, uint32_t relid, char ***names, size_t *n)
{
    char id[16];
    snprintf(id, sizeof(id), "%u", relid);
    const char *vals[1] = {id};
    *names = NULL;
    *n = 0;
    PGresult *r = q(c,
                    "SELECT i.indexrelid, a.attname FROM pg_index i JOIN pg_attribute a "
                    "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                    "WHERE i.indrelid = $1::oid AND (i.indisreplident OR i.indisprimary) "
                    "ORDER BY i.indisreplident DESC, i.indexrelid",
                    1, vals);
    if (!r)
        return -1;
    int rows = PQntuples(r);
    *names = calloc((size_t)rows + 1, sizeof(**names));
    if (!*names) {
        PQclear(r);
        snprintf(c->sqlc->msg, sizeof(c->sqlc->msg), "out of memory");
        return -1;
    }
    for (int i = 0; i < rows; i++) {
        if (strcmp(PQgetvalue(r, i, 0), PQgetvalue(r, 0, 0)) != 0)
            break;
        (*names)[*n] = strdup(PQgetvalue(r, i, 1));
        if (!(*names)[*n])
            break;
        (*n)++;
    }
    PQclear(r);
    return 0;
}

int cdc_rel_keys(struct in_cdc *c, uint32_t relid)
{
    char **names;
    size_t n;
    if (!c->sqlc || key_columns(c, relid, &names, &n) != 0)
        return -1;
    if (n)
        pgo_rel_set_key(&c->dec.rels, relid, (const char *const *)names, n);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return 0;
}

/* ---- setup
 * ------------------------------------------------------------------------------------------ */

static int ensure_publication(struct in_cdc *c)
{
    const char *vals[1] = {c->publication};
    PGresult *r = q(c, "SELECT 1 FROM pg_publication WHERE pubname = $1", 1, vals);
    if (!r) {
        cdc_fail(c, "publication", c->sqlc->msg);
        return -1;
    }
    int exists = PQntuples(r);
    PQclear(r);
    if (exists)
        return 0;
    struct sql_buf b = {0};
    sqlb_adds(&b, "CREATE PUBLICATION ");
    sql_quote_ident(&b, SQL_POSTGRES, c->publication);
    if (c->tables.n == 0) {
        sqlb_adds(&b, " FOR ALL TABLES");
    } else {
        sqlb_adds(&b, " FOR TABLE ");
        for (size_t i = 0; i < c->tables.n; i++) {
            if (i)
                sqlb_adds(&b, ", ");
            sql_quote_ident(&b, SQL_POSTGRES, c->tables.items[i]);
        }
    }
    const char *sql = sqlb_text(&b);
    int rc = sql ? q_ok(c, sql, "create publication")
                 : (cdc_fail(c, "publication", "out of memory"), -1);
    sqlb_free(&b);
    if (rc == 0)
        PB_INFO("postgres_cdc: publication created pipeline=%s publication=%s tables=%zu",
                c->pipeline, c->publication, c->tables.n);
    return rc;
}

struct ckpt {
    int phase; /* 0 none, 1 snapshot, 2 stream */
    uint64_t lsn;
};

static void read_checkpoint(struct in_cdc *c, struct ckpt *ck)
{
    const void *v;
    size_t len;
    memset(ck, 0, sizeof(*ck));
    if (pb_input_checkpoint(c->in, CDC_CKPT, &v, &len) != 0)
        return;
    json_error_t je;
    json_t *root = json_loadb(v, len, 0, &je);
    const char *slot = json_string_value(json_object_get(root, "slot"));
    const char *phase = json_string_value(json_object_get(root, "phase"));
    const char *lsn = json_string_value(json_object_get(root, "lsn"));
    if (!slot || strcmp(slot, c->slot) != 0) {
        PB_WARN("postgres_cdc: the stored position is for another slot; starting anew with slot "
                "%s pipeline=%s",
                c->slot, c->pipeline);
    } else if (phase && strcmp(phase, "stream") == 0 && lsn && pgo_lsn_parse(lsn, &ck->lsn) == 0) {
        ck->phase = 2;
    } else if (phase && strcmp(phase, "snapshot") == 0) {
        ck->phase = 1;
    }
    json_decref(root);
}

/* CREATE_REPLICATION_SLOT on the walsender: its consistent point, and the
 * exported snapshot's name into snap (export) */
static int create_slot(struct in_cdc *c, bool export, char *snap, size_t snaplen)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "CREATE_REPLICATION_SLOT \"%s\" LOGICAL pgoutput %s", c->slot,
             export ? "EXPORT_SNAPSHOT" : "NOEXPORT_SNAPSHOT");
    PGresult *r = PQexec(c->repl->pg, cmd);
    if (!r || PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 || PQnfields(r) < 3) {
        sql_pg_error(c->repl, r);
        PQclear(r);
        cdc_fail(c, "create slot", c->repl->msg);
        return -1;
    }
    uint64_t lsn;
    if (pgo_lsn_parse(PQgetvalue(r, 0, 1), &lsn) != 0) {
        PQclear(r);
        cdc_fail(c, "create slot", "unreadable consistent point");
        return -1;
    }
    c->snap_lsn = lsn;
    if (snap)
        snprintf(snap, snaplen, "%s", PQgetvalue(r, 0, 2));
    PQclear(r);
    char l[32];
    pgo_lsn_text(lsn, l, sizeof(l));
    PB_INFO("postgres_cdc: slot created pipeline=%s slot=%s consistent_point=%s", c->pipeline,
            c->slot, l);
    return 0;
}

/* Commit a checkpoint, then go on with `after` (cdc_setup_continue). */
static int checkpoint_then(struct in_cdc *c, const char *phase, uint64_t lsn, enum cdc_phase after)
{
    c->phase = CDC_CKPT_WAIT;
    c->after = after;
    int rc = cdc_submit(c, 0, lsn, phase);
    if (rc) {
        cdc_fail(c, "checkpoint", pb_strerror(rc));
        return -1;
    }
    return 0;
}

int cdc_setup(struct in_cdc *c)
{
    struct pb_err e = {0};
    struct sql_connect_opts o = {.connect_timeout_ms = c->connect_timeout_ms,
                                 .application_name = "patchbay"};
    c->sqlc = sql_connect(&c->target, c->allow, &o, &e);
    if (!c->sqlc) {
        cdc_fail(c, "connect", e.msg);
        return -1;
    }
    o.replication = true;
    o.application_name = "patchbay_cdc";
    c->repl = sql_connect(&c->target, c->allow, &o, &e);
    if (!c->repl) {
        cdc_fail(c, "connect (replication)", e.msg);
        return -1;
    }
    if (ensure_publication(c))
        return -1;
    struct ckpt ck;
    read_checkpoint(c, &ck);
    const char *vals[1] = {c->slot};
    PGresult *r = q(c,
                    "SELECT plugin, database = current_database(), confirmed_flush_lsn::text, "
                    "active FROM pg_replication_slots WHERE slot_name = $1",
                    1, vals);
    if (!r) {
        cdc_fail(c, "slot", c->sqlc->msg);
        return -1;
    }
    bool exists = PQntuples(r) == 1;
    uint64_t confirmed = 0;
    if (exists) {
        const char *plugin = PQgetvalue(r, 0, 0);
        bool here = strcmp(PQgetvalue(r, 0, 1), "t") == 0;
        pgo_lsn_parse(PQgetvalue(r, 0, 2), &confirmed);
        char why[300] = "";
        if (strcmp(plugin, "pgoutput") != 0)
            snprintf(why, sizeof(why), "slot %s uses plugin %.64s, not pgoutput", c->slot, plugin);
        else if (!here)
            snprintf(why, sizeof(why), "slot %s belongs to another database", c->slot);
        if (why[0]) {
            PQclear(r);
            cdc_fail(c, "slot", why);
            return -1;
        }
    }
    PQclear(r);

    if (ck.phase == 2) {
        if (!exists) {
            char why[300], l[32];
            pgo_lsn_text(ck.lsn, l, sizeof(l));
            snprintf(why, sizeof(why),
                     "slot %s no longer exists: the changes after %s are gone; to start anew "
                     "(snapshot again), name another slot",
                     c->slot, l);
            cdc_fail(c, "slot", why);
            return -1;
        }
        if (ck.lsn > c->committed)
            c->committed = ck.lsn;
        c->have_ckpt = true;
        return cdc_start_streaming(c);
    }
    if (ck.phase == 1 && exists) {
        PB_WARN("postgres_cdc: the initial snapshot was interrupted; dropping slot %s and "
                "starting it again pipeline=%s",
                c->slot, c->pipeline);
        r = q(c, "SELECT pg_drop_replication_slot($1)", 1, vals);
        if (!r) {
            cdc_fail(c, "drop slot", c->sqlc->msg);
            return -1;
        }
        PQclear(r);
        exists = false;
    }
    if (exists) {
        if (c->snapshot == 0 && ck.phase == 0) {
            char why[400];
            snprintf(why, sizeof(why),
                     "slot %s exists but holds no snapshot taken by this input: drop it "
                     "(SELECT pg_drop_replication_slot('%s')) or set snapshot: never",
                     c->slot, c->slot);
            cdc_fail(c, "slot", why);
            return -1;
        }
        /* snapshot: never with a slot of its own making or the user's */
        c->committed = confirmed;
        return checkpoint_then(c, "stream", confirmed, CDC_STREAM);
    }
    if (c->snapshot == 0)
        return checkpoint_then(c, "snapshot", 0, CDC_SNAPSHOT);
    if (create_slot(c, false, NULL, 0))
        return -1;
    return checkpoint_then(c, "stream", c->snap_lsn, CDC_STREAM);
}

/* ---- the snapshot
 * ------------------------------------------------------------------------------------ */

static int snapshot_begin(struct in_cdc *c)
{
    char name[128];
    if (create_slot(c, true, name, sizeof(name)))
        return -1;
    if (q_ok(c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "snapshot"))
        return -1;
    /* a name like 00000003-000001A2-1: checked, since SET takes a literal */
    for (const char *p = name; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'A' && *p <= 'F') || (*p >= 'a' && *p <= 'f') ||
              *p == '-')) {
            cdc_fail(c, "snapshot", "unexpected snapshot name");
            return -1;
        }
    char sql[200];
    snprintf(sql, sizeof(sql), "SET TRANSACTION SNAPSHOT '%s'", name);
    if (q_ok(c, sql, "import snapshot"))
        return -1;
    PGresult *r;
    const char *pv[1] = {c->publication};
    r = q(c,
          "SELECT c.oid, n.nspname, c.relname FROM pg_publication_tables pt "
          "JOIN pg_namespace n ON n.nspname = pt.schemaname "
          "JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename "
          "WHERE pt.pubname = $1 ORDER BY 2, 3",
          1, pv);
    if (!r) {
        cdc_fail(c, "snapshot", c->sqlc->msg);
        return -1;
    }
    int n = PQntuples(r);
    c->snap = calloc((size_t)n + 1, sizeof(*c->snap));
    if (!c->snap) {
        PQclear(r);
        cdc_fail(c, "snapshot", "out of memory");
        return -1;
    }
    for (int i = 0; i < n; i++) {
        struct snap_table *t = &c->snap[i];
        c->nsnap = (size_t)i + 1;
        t->oid = (uint32_t)strtoul(PQgetvalue(r, i, 0), NULL, 10);
        t->schema = strdup(PQgetvalue(r, i, 1));
        t->table = strdup(PQgetvalue(r, i, 2));
        if (!t->schema || !t->table) {
            PQclear(r);
            cdc_fail(c, "snapshot", "out of memory");
            return -1;
        }
    }
    PQclear(r);
    for (size_t i = 0; i < c->nsnap; i++)
        if (key_columns(c, c->snap[i].oid, &c->snap[i].keys, &c->snap[i].nkeys) != 0) {
            cdc_fail(c, "snapshot", c->sqlc->msg);
            return -1;
        }
    c->snap_rows = 0;
    c->phase = CDC_SNAPSHOT;
    pb_input_set_state(c->in, PB_INPUT_CONNECTED, "reading the initial snapshot");
    PB_INFO("postgres_cdc: initial snapshot pipeline=%s tables=%zu", c->pipeline, c->nsnap);
    cdc_arm(c, 0);
    return 0;
}

void cdc_setup_continue(struct in_cdc *c)
{
    if (c->after == CDC_SNAPSHOT)
        snapshot_begin(c);
    else
        cdc_start_streaming(c);
}

static void snapshot_done(struct in_cdc *c)
{
    if (q_ok(c, "COMMIT", "snapshot"))
        return;
    PB_INFO("postgres_cdc: initial snapshot read pipeline=%s rows=%llu", c->pipeline,
            (unsigned long long)c->snap_rows);
    cdc_snap_free(c);
    checkpoint_then(c, "stream", c->snap_lsn, CDC_STREAM);
}

/* Commit the rows read (PB_EFULL: paused; resume submits them again). */
static void submit_rows(struct in_cdc *c)
{
    int rc = cdc_submit(c, c->nitems, 0, NULL);
    if (rc && rc != PB_EFULL && rc != PB_EAGAIN)
        cdc_fail(c, "snapshot", pb_strerror(rc));
}

void cdc_snapshot_step(struct in_cdc *c)
{
    if (c->nitems) {
        submit_rows(c);
        return;
    }
    if (c->snap_i >= c->nsnap) {
        snapshot_done(c);
        return;
    }
    struct snap_table *t = &c->snap[c->snap_i];
    if (!c->snap_open) {
        struct sql_buf b = {0};
        sqlb_adds(&b, "DECLARE pb_snap NO SCROLL CURSOR FOR SELECT * FROM ");
        sql_quote_ident(&b, SQL_POSTGRES, t->schema);
        sqlb_addc(&b, '.');
        sql_quote_ident(&b, SQL_POSTGRES, t->table);
        const char *sql = sqlb_text(&b);
        int rc = sql ? q_ok(c, sql, "snapshot") : (cdc_fail(c, "snapshot", "out of memory"), -1);
        sqlb_free(&b);
        if (rc)
            return;
        c->snap_open = true;
    }
    char fetch[64];
    snprintf(fetch, sizeof(fetch), "FETCH FORWARD %lld FROM pb_snap", (long long)c->snapshot_batch);
    PGresult *r = q(c, fetch, 0, NULL);
    if (!r) {
        cdc_fail(c, "snapshot", c->sqlc->msg);
        return;
    }
    int rows = PQntuples(r), nf = PQnfields(r);
    if (rows == 0) {
        PQclear(r);
        if (q_ok(c, "CLOSE pb_snap", "snapshot") == 0) {
            c->snap_open = false;
            c->snap_i++;
            cdc_arm(c, 0);
        }
        return;
    }
    /* the table as a relation: its columns as the result names them */
    struct pgo_col *cols = calloc((size_t)nf + 1, sizeof(*cols));
    struct pgo_val *vals = calloc((size_t)nf + 1, sizeof(*vals));
    if (!cols || !vals) {
        free(cols);
        free(vals);
        PQclear(r);
        cdc_fail(c, "snapshot", "out of memory");
        return;
    }
    for (int i = 0; i < nf; i++) {
        cols[i].name = PQfname(r, i);
        cols[i].type = PQftype(r, i);
        for (size_t k = 0; k < t->nkeys; k++)
            if (strcmp(t->keys[k], cols[i].name) == 0)
                cols[i].key = true;
    }
    struct pgo_rel rel = {
        .id = t->oid, .schema = t->schema, .table = t->table, .ncols = (size_t)nf, .cols = cols};
    struct pgo_change_ctx cx = {.lsn = c->snap_lsn,
                                .commit_lsn = c->snap_lsn,
                                .commit_time = INT64_MIN,
                                .xid = -1,
                                .fmt = &c->fmt};
    char l[32], meta[1024];
    pgo_lsn_text(c->snap_lsn, l, sizeof(l));
    struct sql_buf mb = {0};
    sqlb_printf(&mb, "{\"slot\":\"%s\",\"op\":\"read\",\"schema\":", c->slot);
    sqlb_json_str(&mb, t->schema, strlen(t->schema));
    sqlb_adds(&mb, ",\"table\":");
    sqlb_json_str(&mb, t->table, strlen(t->table));
    sqlb_printf(&mb, ",\"lsn\":\"%s\",\"commit_lsn\":\"%s\",\"xid\":null}", l, l);
    snprintf(meta, sizeof(meta), "%s", sqlb_text(&mb) ? mb.p : "{}");
    sqlb_free(&mb);
    int rc = 0;
    for (int i = 0; i < rows && rc == 0; i++) {
        for (int k = 0; k < nf; k++) {
            bool null = PQgetisnull(r, i, k);
            vals[k] = (struct pgo_val){.kind = null ? 'n' : 't',
                                       .p = null ? NULL : PQgetvalue(r, i, k),
                                       .n = (size_t)PQgetlength(r, i, k)};
        }
        struct sql_buf b = {0};
        const char *why = NULL;
        int bad = pgo_row_json(&b, &rel, vals, &cx, &why);
        if (b.oom || !sqlb_text(&b)) {
            sqlb_free(&b);
            rc = PB_ENOMEM;
            break;
        }
        char key[CDC_KEY_MAX], dead[256];
        snprintf(key, sizeof(key), "pg:snap:%s:%u:%llu", l, t->oid,
                 (unsigned long long)++c->snap_rows);
        if (bad)
            snprintf(dead, sizeof(dead), "%s.%s: %s (written base64 here)", t->schema, t->table,
                     why ? why : "a value cannot be carried");
        rc = cdc_item_add(c, b.p, b.len, bad ? dead : NULL, key, meta);
        if (rc)
            sqlb_free(&b);
    }
    PQclear(r);
    free(cols);
    free(vals);
    if (rc) {
        cdc_fail(c, "snapshot", pb_strerror(rc));
        return;
    }
    submit_rows(c);
}

/* ---- streaming
 * ----------------------------------------------------------------------------------------- */

int cdc_start_streaming(struct in_cdc *c)
{
    char cmd[512], l[32], pub[160];
    size_t o = 0;
    for (const char *p = c->publication; *p && o < sizeof(pub) - 3; p++) {
        if (*p == '\'')
            pub[o++] = '\'';
        pub[o++] = *p;
    }
    pub[o] = 0;
    c->start_lsn = c->committed;
    pgo_lsn_text(c->start_lsn, l, sizeof(l));
    snprintf(cmd, sizeof(cmd),
             "START_REPLICATION SLOT \"%s\" LOGICAL %s (proto_version '1', publication_names "
             "'\"%s\"', messages 'true')",
             c->slot, l, pub);
    PGresult *r = PQexec(c->repl->pg, cmd);
    if (!r || PQresultStatus(r) != PGRES_COPY_BOTH) {
        sql_pg_error(c->repl, r);
        PQclear(r);
        cdc_fail(c, "start replication", c->repl->msg);
        return -1;
    }
    PQclear(r);
    int64_t now = pb_loop_now(c->loop);
    c->phase = CDC_STREAM;
    c->received = c->committed;
    c->last_status = now;
    c->next_heartbeat = now + (c->heartbeat_ms ? c->heartbeat_ms : 0);
    c->next_lag = now;
    pb_input_set_state(c->in, PB_INPUT_CONNECTED, NULL);
    PB_INFO("postgres_cdc: streaming pipeline=%s slot=%s from=%s", c->pipeline, c->slot, l);
    cdc_arm(c, 0);
    return 0;
}

/* ---- heartbeats and lag
 * --------------------------------------------------------------------------------- */

/* The plain session, connected again when it was lost. */
static bool session(struct in_cdc *c)
{
    if (c->sqlc && PQstatus(c->sqlc->pg) == CONNECTION_OK)
        return true;
    sql_close(c->sqlc);
    struct pb_err e = {0};
    struct sql_connect_opts o = {.connect_timeout_ms = c->connect_timeout_ms,
                                 .application_name = "patchbay"};
    c->sqlc = sql_connect(&c->target, c->allow, &o, &e);
    return c->sqlc != NULL;
}

void cdc_heartbeat(struct in_cdc *c)
{
    if (!session(c))
        return;
    PGresult *r = q(c, "SELECT pg_logical_emit_message(true, 'patchbay.heartbeat', '')", 0, NULL);
    if (r) {
        PQclear(r);
        return;
    }
    int64_t now = pb_loop_now(c->loop);
    if (now - c->heartbeat_warned >= 600000) {
        char safe[300];
        c->heartbeat_warned = now;
        PB_WARN("postgres_cdc: heartbeat failed pipeline=%s error=\"%s\" (an idle slot keeps "
                "its WAL until a change comes)",
                c->pipeline, pb_log_value(c->sqlc->msg, safe, sizeof(safe)));
    }
}

void cdc_lag(struct in_cdc *c)
{
    if (!session(c))
        return;
    const char *vals[1] = {c->slot};
    PGresult *r = q(c,
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
                    "FROM pg_replication_slots WHERE slot_name = $1",
                    1, vals);
    if (!r)
        return;
    if (PQntuples(r) == 1 && !PQgetisnull(r, 0, 0)) {
        long long lag = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        pb_input_set_lag_bytes(c->in, lag < 0 ? 0 : lag);
    }
    PQclear(r);
}
