/* postgres_schema.c - the PostgreSQL backend's schema: an ordered list of
 * migrations, the version reached kept in the schema's meta table, as the
 * SQLite backend does (its own list: version N here is not SQLite's N).
 *
 * Every table lives in one schema of the database ("patchbay", or the
 * URL's schema= parameter), so the store can share a database with other
 * applications, and several clusters one server. Migrations run in one
 * transaction under an advisory lock of the schema's own, so nodes starting
 * together do not race.
 *
 * Who migrates (see docs/configuration.md): an empty schema gets the
 * current version from any node; an older one is upgraded only by
 * `patchbay migrate CONFIG`, so a node of a newer binary never changes the
 * schema under the nodes still running the old one by surprise. Migrations are additive:
 * a node already running keeps working on the newer schema until it is
 * replaced; a node of an older binary refuses to start on it. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "patchbay/pb_log.h"
#include "store/postgres_int.h"

static const char *const migrations[] = {
    /* 1: messages, deliveries and their attempts, idempotency keys, the
     * route stage's bodies and the key-value state, as in SQLite (schema 9
     * there). Deliveries carry the lease of the node holding them. */
    "CREATE TABLE meta(key text PRIMARY KEY, value text NOT NULL);"
    "CREATE TABLE messages("
    " seq bigserial PRIMARY KEY,"
    " id text NOT NULL UNIQUE,"
    " pipeline text NOT NULL,"
    " received_at bigint NOT NULL,"
    " content_type text,"
    " body bytea NOT NULL,"
    " body_crc bigint,"
    " meta text,"
    " parent_seq bigint,"
    " okey text);"
    "CREATE INDEX messages_received ON messages(received_at);"
    "CREATE INDEX messages_parent ON messages(parent_seq) WHERE parent_seq IS NOT NULL;"
    "CREATE TABLE routed("
    " seq bigint PRIMARY KEY REFERENCES messages(seq) ON DELETE CASCADE,"
    " body bytea NOT NULL,"
    " body_crc bigint NOT NULL,"
    " okey text);"
    "CREATE TABLE deliveries("
    " id bigserial PRIMARY KEY,"
    " msg_seq bigint NOT NULL REFERENCES messages(seq) ON DELETE CASCADE,"
    " pipeline text NOT NULL,"
    " output text NOT NULL,"
    " sub text,"
    " state smallint NOT NULL,"
    " attempts integer NOT NULL DEFAULT 0,"
    " next_at bigint NOT NULL,"
    " created_at bigint NOT NULL,"
    " updated_at bigint NOT NULL,"
    " last_status integer,"
    " last_error text,"
    " replay_of bigint,"
    " lease bigint,"
    " last_latency_ms bigint);"
    /* Counting and claiming go through the pending ones only; a claim
     * through those nobody holds. */
    "CREATE INDEX deliveries_pending ON deliveries(pipeline, output, sub, id) WHERE state = 0;"
    "CREATE INDEX deliveries_free ON deliveries(pipeline, output, sub, id)"
    " WHERE state = 0 AND lease IS NULL;"
    "CREATE INDEX deliveries_dead ON deliveries(pipeline, output, id) WHERE state = 2;"
    "CREATE INDEX deliveries_msg ON deliveries(msg_seq);"
    "CREATE TABLE attempts("
    " delivery_id bigint NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,"
    " n integer NOT NULL,"
    " started_at bigint NOT NULL,"
    " latency_ms bigint NOT NULL,"
    " status integer NOT NULL,"
    " state smallint NOT NULL,"
    " error text,"
    " PRIMARY KEY (delivery_id, n));"
    /* Keys are bytes: what a client sent, compared exactly. */
    "CREATE TABLE idempotency("
    " pipeline text NOT NULL,"
    " key bytea NOT NULL,"
    " msg_id text NOT NULL,"
    " expires_at bigint NOT NULL,"
    " PRIMARY KEY (pipeline, key));"
    "CREATE INDEX idempotency_expires ON idempotency(expires_at);"
    "CREATE TABLE kv("
    " scope text NOT NULL,"
    " key text NOT NULL,"
    " value bytea NOT NULL,"
    " updated_at bigint NOT NULL,"
    " PRIMARY KEY (scope, key));",
    /* 2: the cluster: nodes with their epoch (the lease their deliveries
     * carry) and heartbeats; holds, the rows one node has at a time
     * (singleton inputs, ordered pipelines, retention); and the index the
     * expiry of a dead node's leases goes through. */
    "CREATE SEQUENCE node_epoch;"
    "CREATE TABLE nodes("
    " epoch bigint PRIMARY KEY,"
    " name text NOT NULL,"
    " version text NOT NULL,"
    " state smallint NOT NULL DEFAULT 0," /* 0 live, 1 left, 2 presumed dead */
    " started_at bigint NOT NULL,"
    " heartbeat_at bigint NOT NULL,"
    " expires_at bigint NOT NULL,"
    " heartbeat_ms bigint NOT NULL,"
    " ended_at bigint);"
    "CREATE INDEX nodes_live ON nodes(epoch) WHERE state = 0;"
    "CREATE TABLE holds("
    " name text PRIMARY KEY,"
    " epoch bigint NOT NULL,"
    " node text NOT NULL,"
    " since bigint NOT NULL);"
    "CREATE INDEX deliveries_lease ON deliveries(lease) WHERE state = 0 AND lease IS NOT NULL;",
    /* 3: what the dashboard searches and links (SQLite's 10): each
     * message's idempotency key as its input gave it (those still in the
     * window filled in where the key is plain text), the message an edited
     * one was made from; the dead letters by id whatever their output; and
     * messages newest first by (received_at, seq), the explorer's order. */
    "ALTER TABLE messages ADD COLUMN idem_key text;"
    "ALTER TABLE messages ADD COLUMN edit_of bigint;"
    "UPDATE messages m SET idem_key = encode(i.key, 'escape') FROM idempotency i"
    " WHERE i.msg_id = m.id AND i.pipeline = m.pipeline"
    " AND strpos(encode(i.key, 'escape'), E'\\\\') = 0;"
    "CREATE INDEX messages_idem ON messages(idem_key) WHERE idem_key IS NOT NULL;"
    "CREATE INDEX messages_edit_of ON messages(edit_of) WHERE edit_of IS NOT NULL;"
    "CREATE INDEX deliveries_dead_id ON deliveries(id) WHERE state = 2;"
    "CREATE INDEX messages_received_seq ON messages(received_at, seq);"
    "DROP INDEX messages_received;",
    /* 4: what the partner answered (SQLite's 11): an excerpt of at most
     * 256 bytes of text, NULL when it said nothing, per attempt row, and
     * in the delivery's row for the attempt that ended it at its first
     * try. */
    ("ALTER TABLE attempts ADD COLUMN answer text;"
     "ALTER TABLE deliveries ADD COLUMN last_answer text;"),
};
#define NMIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))
_Static_assert(NMIGRATIONS == PG_SCHEMA_VERSION, "one migration per schema version");

const char *pb__pg_migration_sql(int v)
{
    return v >= 1 && v <= NMIGRATIONS ? migrations[v - 1] : NULL;
}

static int fail(struct pgq *q, struct pgc *c, int rc, struct pb_err *err)
{
    pb__pg_exec(c, "ROLLBACK", pb__pg_deadline(5000), NULL, NULL);
    (void)q;
    return rc;
}

/* 0 with *version (0: nothing of ours there), or PB_E*. */
static int read_version(struct pgq *q, struct pgc *c, long *version, struct pb_err *err)
{
    PGresult *res = NULL;
    const char *vals[] = {q->schema};
    int64_t dl = pb__pg_deadline(PG_IO_DEADLINE_MS);
    *version = 0;
    int rc = pb__pg_execp(c,
                          "SELECT (SELECT count(*) FROM pg_tables WHERE schemaname = $1),"
                          " (SELECT count(*) FROM pg_tables WHERE schemaname = $1"
                          "  AND tablename = 'meta')",
                          1, vals, dl, &res, err);
    if (rc)
        return rc;
    long ntables = atol(PQgetvalue(res, 0, 0)), has_meta = atol(PQgetvalue(res, 0, 1));
    PQclear(res);
    if (ntables == 0)
        return 0;
    if (!has_meta)
        return pb_err_set(err, PB_ESTORE,
                          "schema \"%s\" of %s holds tables but is not a patchbay state store;"
                          " refusing to use it — point state: at another database or schema=",
                          q->schema, q->display);
    rc = pb__pg_exec(c, "SELECT value FROM meta WHERE key = 'schema_version'", dl, &res, err);
    if (rc)
        return rc;
    char *end = NULL;
    long v = PQntuples(res) == 1 ? strtol(PQgetvalue(res, 0, 0), &end, 10) : -1;
    bool ok = PQntuples(res) == 1 && end && !*end && v >= 1;
    PQclear(res);
    if (!ok)
        return pb_err_set(err, PB_ECORRUPT,
                          "state store %s (schema \"%s\") has no valid schema_version;"
                          " refusing to start",
                          q->display, q->schema);
    *version = v;
    return 0;
}

int pb__pg_migrate(struct pgq *q, struct pgc *c, bool migrate, int target, struct pb_err *err)
{
    char sql[256];
    long version = 0;
    int64_t dl = pb__pg_deadline(60000);
    int rc;
    if (target <= 0 || target > NMIGRATIONS)
        target = NMIGRATIONS;

    /* A quick look first: the usual case (current) takes no lock. */
    if ((rc = read_version(q, c, &version, err)) != 0)
        return rc;
    if (version == NMIGRATIONS && target == NMIGRATIONS)
        goto id;
    snprintf(sql, sizeof(sql),
             "BEGIN; CREATE SCHEMA IF NOT EXISTS \"%s\"; SELECT pg_advisory_xact_lock(%d, 0)",
             q->schema, (int)q->lock_class);
    if ((rc = pb__pg_exec(c, sql, dl, NULL, err)) != 0)
        return fail(q, c, rc, err);
    if ((rc = read_version(q, c, &version, err)) != 0)
        return fail(q, c, rc, err);
    if (version > NMIGRATIONS) {
        rc = pb_err_set(err, PB_ESTORE,
                        "state store %s (schema \"%s\") has schema version %ld, newer than this"
                        " patchbay supports (%d); refusing to start — run a newer patchbay",
                        q->display, q->schema, version, NMIGRATIONS);
        return fail(q, c, rc, err);
    }
    if (version > 0 && version < target && !migrate) {
        rc = pb_err_set(err, PB_ESTORE,
                        "state store %s (schema \"%s\") has schema version %ld and this patchbay"
                        " needs %d; refusing to start — run `patchbay migrate CONFIG` first",
                        q->display, q->schema, version, NMIGRATIONS);
        return fail(q, c, rc, err);
    }
    for (long v = version; v < target; v++) {
        if ((rc = pb__pg_exec(c, migrations[v], dl, NULL, err)) != 0)
            return fail(q, c, rc, err);
        PB_INFO("state store migrated store=%s schema=%s schema_version=%ld", q->display, q->schema,
                v + 1);
    }
    if (version == 0) {
        const char *ins = "INSERT INTO meta(key, value) VALUES ('store_id', md5(random()::text ||"
                          " clock_timestamp()::text)),"
                          " ('created_at', " PG_NOW_MS "::text) ON CONFLICT DO NOTHING";
        if ((rc = pb__pg_exec(c, ins, dl, NULL, err)) != 0)
            return fail(q, c, rc, err);
    }
    if (target > version) {
        snprintf(sql, sizeof(sql),
                 "INSERT INTO meta(key, value) VALUES ('schema_version', '%d')"
                 " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                 target);
        if ((rc = pb__pg_exec(c, sql, dl, NULL, err)) != 0)
            return fail(q, c, rc, err);
    }
    if ((rc = pb__pg_exec(c, "COMMIT", dl, NULL, err)) != 0)
        return fail(q, c, rc, err);
    if (target < NMIGRATIONS)
        return 0;
id:;
    PGresult *res = NULL;
    rc = pb__pg_exec(c, "SELECT value FROM meta WHERE key = 'store_id'", dl, &res, err);
    if (rc)
        return rc;
    if (PQntuples(res) == 1)
        snprintf(q->store_id, sizeof(q->store_id), "%.16s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return 0;
}
