/* postgres_sql.c - the PostgreSQL backend's writer statements, each an
 * op's one statement (data-modifying CTEs; see postgres_write.c for how
 * they are sent and read). Prepared once per writer connection; constant
 * data, no state, so any thread may read them. */
#include "store/postgres_int.h"

#define INSERT_ATTEMPT                                                                             \
    "INSERT INTO attempts(delivery_id, n, started_at, latency_ms, status, state, error) "
#define ATTEMPT_CONFLICT                                                                           \
    " ON CONFLICT (delivery_id, n) DO UPDATE SET started_at = EXCLUDED.started_at,"                \
    " latency_ms = EXCLUDED.latency_ms, status = EXCLUDED.status, state = EXCLUDED.state,"         \
    " error = EXCLUDED.error, answer = EXCLUDED.answer"
#define HOLD_OK(h, e)                                                                              \
    "(" h "::text IS NULL OR EXISTS (SELECT 1 FROM holds WHERE name = " h "::text"                 \
    " AND epoch = " e "::bigint))"
/* A node presumed dead (or gone) claims nothing under its old epoch: one
 * frozen past its lease and resumed would otherwise take deliveries before
 * its heartbeat tells it, and hold them (out of order, for an ordered
 * pipeline's keys) until it restarts or the others sweep them. */
#define CLAIM_SQL(subcond)                                                                         \
    "WITH c AS (SELECT id FROM deliveries WHERE state = 0 AND lease IS NULL"                       \
    " AND pipeline = $1::text AND output = $2::text AND " subcond                                  \
    " AND NOT EXISTS (SELECT 1 FROM nodes WHERE epoch = $4::bigint AND state <> 0)"                \
    " ORDER BY id LIMIT $5::bigint FOR UPDATE SKIP LOCKED),"                                       \
    " u AS (UPDATE deliveries d SET lease = $4::bigint FROM c WHERE d.id = c.id"                   \
    " RETURNING d.id, d.msg_seq, d.attempts, d.next_at, d.output)"                                 \
    " SELECT u.id, u.msg_seq, m.id, u.attempts::bigint, u.next_at, m.received_at,"                 \
    " m.content_type, coalesce(r.body, m.body),"                                                   \
    " coalesce(CASE WHEN r.seq IS NULL THEN m.body_crc ELSE r.body_crc END, -1), m.meta,"          \
    " CASE WHEN r.seq IS NULL THEN m.okey ELSE r.okey END,"                                        \
    " (r.seq IS NOT NULL OR m.parent_seq IS NOT NULL)::int::bigint"                                \
    " FROM u JOIN messages m ON m.seq = u.msg_seq LEFT JOIN routed r ON r.seq = u.msg_seq"         \
    " AND u.output <> '" PB_ROUTE_OUTPUT "' ORDER BY u.id"

const char *const pb__pg_wsql[WS_COUNT] = {
    /* A key seen within its window keeps its message: the conflict leaves
     * the row as it is and returns the message it names; an expired one is
     * taken over. The message and its deliveries follow only for a new
     * key, and only while the input's hold (a singleton's) is this node's. */
    [WS_INGEST] = "WITH h AS (SELECT " HOLD_OK(
        "$14",
        "$15") " AS ok),"
               " ik AS (INSERT INTO idempotency(pipeline, key, msg_id, expires_at)"
               " SELECT $1::text, $8::bytea, $2::text, $9::bigint FROM h WHERE h.ok"
               " AND $8::bytea IS NOT NULL"
               " ON CONFLICT (pipeline, key) DO UPDATE SET"
               " msg_id = CASE WHEN idempotency.expires_at <= $3::bigint THEN EXCLUDED.msg_id"
               " ELSE idempotency.msg_id END,"
               " expires_at = CASE WHEN idempotency.expires_at <= $3::bigint THEN "
               "EXCLUDED.expires_at"
               " ELSE idempotency.expires_at END RETURNING msg_id),"
               " go AS (SELECT h.ok AND ($8::bytea IS NULL OR (SELECT msg_id FROM ik) = $2::text) "
               "AS ok"
               " FROM h),"
               " m AS (INSERT INTO messages(id, pipeline, received_at, content_type, body, "
               "body_crc, meta, idem_key)"
               " SELECT $2::text, $1::text, $3::bigint, $4::text, $5::bytea, $6::bigint, $7::text,"
               " $16::text"
               " FROM go WHERE go.ok ON CONFLICT (id) DO NOTHING RETURNING seq),"
               " d AS (INSERT INTO deliveries(msg_seq, pipeline, output, state, attempts, next_at,"
               " created_at, updated_at, lease) SELECT m.seq, $1::text, o.output, 0, 0, "
               "$12::bigint,"
               " $3::bigint, $3::bigint, o.lease FROM m, unnest($10::text[], $11::bigint[])"
               " WITH ORDINALITY AS o(output, lease, i) WHERE $13::text IS NULL ORDER BY o.i"
               " RETURNING id),"
               " dd AS (INSERT INTO deliveries(msg_seq, pipeline, output, state, attempts, next_at,"
               " created_at, updated_at, last_status, last_error) SELECT m.seq, $1::text,"
               " '" PB_INPUT_OUTPUT "', 2, 1, 0, $3::bigint, $3::bigint, 0, $13::text FROM m"
               " WHERE $13::text IS NOT NULL RETURNING id),"
               " da AS (" INSERT_ATTEMPT "SELECT dd.id, 1, $3::bigint, 0, 0, 2, $13::text FROM dd)"
               " SELECT (SELECT ok FROM h)::int, (SELECT ok FROM go)::int, (SELECT seq FROM m),"
               " (SELECT array_agg(id ORDER BY id) FROM d)::text, (SELECT msg_id FROM ik)",
    /* A singleton's commit: its hold cannot change hands until this
     * transaction ends. */
    [WS_HOLD_LOCK] = "SELECT 1 FROM holds WHERE name = $1::text AND epoch = $2::bigint FOR SHARE",
    /* A result counts only while its lease holds: a lease lost (claimed by
     * another node) must not overwrite a newer attempt. */
    [WS_RESULT] = "WITH u AS (UPDATE deliveries SET state = $2::smallint, attempts = $3::int,"
                  " next_at = $4::bigint, updated_at = $5::bigint, last_status = $6::int,"
                  " last_error = $7::text, lease = CASE WHEN $2::smallint = 0 THEN lease END,"
                  " last_latency_ms = $9::bigint,"
                  " last_answer = CASE WHEN $11::bool THEN NULL ELSE $12::text END"
                  " WHERE id = $1::bigint AND state = 0"
                  " AND lease IS NOT DISTINCT FROM $8::bigint RETURNING id),"
                  " a AS (INSERT INTO attempts(delivery_id, n, started_at, latency_ms, status,"
                  " state, error, answer) SELECT id, $3::int, $10::bigint, $9::bigint, $6::int,"
                  " $2::smallint, $7::text, $12::text FROM u WHERE $11::bool" ATTEMPT_CONFLICT ")"
                  " SELECT count(*) FROM u",
    [WS_REPLAY] =
        "WITH old AS (UPDATE deliveries SET state = 4, updated_at = $2::bigint"
        " WHERE id = $1::bigint AND state = 2 RETURNING msg_seq, pipeline, output, sub),"
        " n AS (INSERT INTO deliveries(msg_seq, pipeline, output, sub, state, attempts, next_at,"
        " created_at, updated_at, replay_of) SELECT msg_seq, pipeline, output, sub, 0, 0,"
        " $2::bigint, $2::bigint, $2::bigint, $1::bigint FROM old"
        " RETURNING id, pipeline, output, sub)"
        " SELECT id, pipeline, output, sub FROM n",
    /* At most a batch at a time, in id order (new ids keep the old order). */
    [WS_REPLAY_ALL] =
        "WITH sel AS (SELECT id FROM deliveries WHERE state = 2"
        " AND ($4::bigint <= 0 OR created_at >= $4::bigint)"
        " AND ($1::text IS NULL OR pipeline = $1::text)"
        " AND ($2::text IS NULL OR (output = $2::text AND sub IS NOT DISTINCT FROM $5::text))"
        " ORDER BY id LIMIT $6::bigint FOR UPDATE SKIP LOCKED),"
        " old AS (UPDATE deliveries d SET state = 4, updated_at = $3::bigint FROM sel"
        " WHERE d.id = sel.id RETURNING d.id, d.msg_seq, d.pipeline, d.output, d.sub),"
        " n AS (INSERT INTO deliveries(msg_seq, pipeline, output, sub, state, attempts, next_at,"
        " created_at, updated_at, replay_of) SELECT msg_seq, pipeline, output, sub, 0, 0,"
        " $3::bigint, $3::bigint, $3::bigint, id FROM old ORDER BY id"
        " RETURNING pipeline, output)"
        " SELECT (SELECT count(*) FROM sel), (SELECT count(*) FROM n),"
        " (SELECT string_agg(DISTINCT pipeline || E'\\t' || output, E'\\n') FROM n)",
    /* The snapshot still shows the delivery deleted here: hence id <> $1. */
    [WS_PURGE] = "WITH d AS (DELETE FROM deliveries WHERE id = $1::bigint AND state = 2"
                 " RETURNING msg_seq),"
                 " m AS (DELETE FROM messages WHERE seq IN (SELECT msg_seq FROM d)"
                 " AND NOT EXISTS (SELECT 1 FROM deliveries x WHERE x.msg_seq IN"
                 " (SELECT msg_seq FROM d) AND x.id <> $1::bigint))"
                 " SELECT count(*) FROM d",
    /* Finished: no delivery still pending (0) or dead (2). Deliveries and
     * attempts go with the message (ON DELETE CASCADE). */
    [WS_EXPIRE] = "WITH ik AS (DELETE FROM idempotency WHERE (pipeline, key) IN (SELECT pipeline,"
                  " key FROM idempotency WHERE expires_at <= $1::bigint LIMIT $2::bigint)),"
                  " m AS (DELETE FROM messages WHERE seq IN (SELECT s.seq FROM messages s"
                  " WHERE $4::bool AND s.received_at < $3::bigint AND NOT EXISTS (SELECT 1"
                  " FROM deliveries d WHERE d.msg_seq = s.seq AND d.state IN (0, 2))"
                  " ORDER BY s.received_at LIMIT $2::bigint) RETURNING 1)"
                  " SELECT count(*) FROM m",
    [WS_FANOUT] =
        "WITH p AS (UPDATE deliveries SET state = 1, attempts = $2::int, updated_at = $3::bigint,"
        " last_status = 0, last_error = $5::text, last_latency_ms = 0, lease = NULL"
        " WHERE id = $1::bigint AND state = 0 AND lease IS NOT DISTINCT FROM $4::bigint"
        " RETURNING msg_seq, pipeline, output),"
        " a AS (" INSERT_ATTEMPT "SELECT $1::bigint, $2::int, $3::bigint, 0, 0, 1, $5::text"
        " FROM p WHERE $6::bool" ATTEMPT_CONFLICT "),"
        " c AS (INSERT INTO deliveries(msg_seq, pipeline, output, sub, state, attempts, next_at,"
        " created_at, updated_at, lease) SELECT p.msg_seq, p.pipeline, p.output, s.sub, 0, 0,"
        " $3::bigint, $3::bigint, $3::bigint, s.lease FROM p, unnest($7::text[], $8::bigint[])"
        " WITH ORDINALITY AS s(sub, lease, i) ORDER BY s.i RETURNING id)"
        " SELECT (SELECT count(*) FROM p), (SELECT string_agg(id::text, ',' ORDER BY id) FROM c),"
        " (SELECT pipeline FROM p), (SELECT output FROM p)",
    /* The route delivery finished, then each message it decided on: a split
     * child inserted (linked to the routed one, its metadata copied) or the
     * routed body kept, and a delivery per output, pending or final. */
    [WS_ROUTE] =
        "WITH fin AS (UPDATE deliveries SET state = $2::smallint, attempts = $3::int,"
        " updated_at = $4::bigint, last_status = 0, last_error = $5::text, last_latency_ms = 0,"
        " lease = NULL WHERE id = $1::bigint AND state = 0"
        " AND lease IS NOT DISTINCT FROM $6::bigint RETURNING id),"
        " att AS (" INSERT_ATTEMPT "SELECT id, $3::int, $4::bigint, 0, 0, $2::smallint, $5::text"
        " FROM fin WHERE $9::bool" ATTEMPT_CONFLICT "),"
        " mm AS (SELECT * FROM unnest($10::int[], $11::text[], $12::bytea[], $13::bigint[],"
        " $14::text[]) AS t(ord, child, body, crc, okey) WHERE EXISTS (SELECT 1 FROM fin)),"
        " ch AS (INSERT INTO messages(id, pipeline, received_at, content_type, body, body_crc,"
        " meta, parent_seq, okey) SELECT mm.child, p.pipeline, p.received_at, NULL, mm.body,"
        " mm.crc, p.meta, p.seq, mm.okey FROM mm JOIN messages p ON p.seq = $7::bigint"
        " WHERE mm.child IS NOT NULL ORDER BY mm.ord RETURNING seq, id),"
        " rt AS (INSERT INTO routed(seq, body, body_crc, okey) SELECT $7::bigint, mm.body, mm.crc,"
        " mm.okey FROM mm WHERE mm.child IS NULL AND mm.body IS NOT NULL ON CONFLICT (seq)"
        " DO UPDATE SET body = EXCLUDED.body, body_crc = EXCLUDED.body_crc, okey = EXCLUDED.okey),"
        " sq AS (SELECT mm.ord, coalesce(ch.seq, $7::bigint) AS seq FROM mm"
        " LEFT JOIN ch ON ch.id = mm.child),"
        " dl AS (INSERT INTO deliveries(msg_seq, pipeline, output, state, attempts, next_at,"
        " created_at, updated_at, lease, last_error) SELECT sq.seq, $8::text, x.output, x.state,"
        " 0, CASE WHEN x.state = 0 THEN $4::bigint ELSE 0 END, $4::bigint, $4::bigint, x.lease,"
        " x.note FROM unnest($15::int[], $16::text[], $17::smallint[], $18::bigint[],"
        " $19::text[]) WITH ORDINALITY AS x(ord, output, state, lease, note, i)"
        " JOIN sq ON sq.ord = x.ord ORDER BY x.i RETURNING id, state)"
        " SELECT (SELECT count(*) FROM fin), (SELECT string_agg(ord || ':' || seq, ',') FROM sq),"
        " (SELECT string_agg(id::text, ',' ORDER BY id) FROM dl WHERE state = 0)",
    [WS_ORPHANS] =
        "WITH u AS (UPDATE deliveries SET state = 2, attempts = attempts + 1,"
        " updated_at = $3::bigint, last_error = 'output removed', lease = NULL"
        " WHERE state = 0 AND pipeline = $1::text AND output = $2::text RETURNING id, attempts),"
        " a AS (" INSERT_ATTEMPT "SELECT id, attempts, $3::bigint, 0, 0, 2, 'output removed'"
        " FROM u" ATTEMPT_CONFLICT ")"
        " SELECT count(*) FROM u",
    [WS_SUB_KILL] =
        "WITH u AS (UPDATE deliveries SET state = 2, attempts = attempts + 1,"
        " updated_at = $4::bigint, last_error = $5::text, lease = NULL WHERE state = 0"
        " AND pipeline = $1::text AND output = $2::text AND sub = $3::text RETURNING id, attempts),"
        " a AS (" INSERT_ATTEMPT "SELECT id, attempts, $4::bigint, 0, 0, 2, $5::text"
        " FROM u" ATTEMPT_CONFLICT ")"
        " SELECT count(*) FROM u",
    [WS_KV_PUT] =
        "INSERT INTO kv(scope, key, value, updated_at) SELECT $1::text, $2::text,"
        " $3::bytea, $4::bigint WHERE " HOLD_OK(
            "$5", "$6") " ON CONFLICT (scope, key)"
                        " DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at",
    [WS_KV_DEL] = "DELETE FROM kv WHERE scope = $1::text AND key = $2::text"
                  " AND " HOLD_OK("$3", "$4"),
    [WS_CLAIM] = CLAIM_SQL("sub IS NULL AND $3::text IS NULL"),
    [WS_CLAIM_SUB] = CLAIM_SQL("sub = $3::text"),
    [WS_RELEASE] = "WITH u AS (UPDATE deliveries SET lease = NULL WHERE id = ANY($1::bigint[])"
                   " AND lease = $2::bigint RETURNING pipeline, output)"
                   " SELECT string_agg(DISTINCT pipeline || E'\\t' || output, E'\\n') FROM u",
    /* A set the admin side selected: those of ids still dead, in id order. */
    [WS_REPLAY_IDS] =
        "WITH old AS (UPDATE deliveries SET state = 4, updated_at = $2::bigint"
        " WHERE id = ANY($1::bigint[]) AND state = 2 RETURNING id, msg_seq, pipeline, output, sub),"
        " n AS (INSERT INTO deliveries(msg_seq, pipeline, output, sub, state, attempts, next_at,"
        " created_at, updated_at, replay_of) SELECT msg_seq, pipeline, output, sub, 0, 0,"
        " $2::bigint, $2::bigint, $2::bigint, id FROM old ORDER BY id"
        " RETURNING pipeline, output)"
        " SELECT (SELECT count(*) FROM n),"
        " (SELECT string_agg(DISTINCT pipeline || E'\\t' || output, E'\\n') FROM n)",
    /* The snapshot still shows the deliveries deleted here: hence NOT IN d. */
    [WS_PURGE_IDS] = "WITH d AS (DELETE FROM deliveries WHERE id = ANY($1::bigint[]) AND state = 2"
                     " RETURNING id, msg_seq),"
                     " m AS (DELETE FROM messages WHERE seq IN (SELECT msg_seq FROM d)"
                     " AND NOT EXISTS (SELECT 1 FROM deliveries x WHERE x.msg_seq = messages.seq"
                     " AND x.id NOT IN (SELECT id FROM d)))"
                     " SELECT count(*) FROM d",
    /* A message the admin side made, with a pending, unleased delivery per
     * target; with $8 (a dead delivery) it takes that one's pipeline and
     * metadata, is linked to its message (edit_of), and the dead one
     * becomes replayed; no targets: the dead one's output and sub-output.
     * The key the route stage recorded for the old message goes with the
     * corrected body (the routed one) unless the target is the route stage.
     * Nothing is written when $8 is no longer dead or the id is taken. */
    /* A process step's key: claimed unless another holds it unexpired;
     * the holder comes back either way. */
    [WS_KEY] = "INSERT INTO idempotency(pipeline, key, msg_id, expires_at) VALUES ($1::text,"
               " $2::bytea, $3::text, $4::bigint) ON CONFLICT (pipeline, key) DO UPDATE SET"
               " msg_id = CASE WHEN idempotency.expires_at <= $5::bigint THEN EXCLUDED.msg_id"
               " ELSE idempotency.msg_id END, expires_at = CASE WHEN idempotency.expires_at <="
               " $5::bigint THEN EXCLUDED.expires_at ELSE idempotency.expires_at END"
               " RETURNING msg_id",
    [WS_INJECT] =
        "WITH old AS (SELECT id, msg_seq, pipeline, output, sub FROM deliveries"
        " WHERE $8::bigint <> 0 AND id = $8::bigint AND state = 2 FOR UPDATE),"
        " om AS (SELECT m.seq, m.meta, (r.seq IS NOT NULL OR m.parent_seq IS NOT NULL) AS known,"
        " CASE WHEN r.seq IS NULL THEN m.okey ELSE r.okey END AS okey FROM old"
        " JOIN messages m ON m.seq = old.msg_seq LEFT JOIN routed r ON r.seq = m.seq),"
        " go AS (SELECT ($8::bigint = 0 OR EXISTS (SELECT 1 FROM old)) AS ok),"
        " m AS (INSERT INTO messages(id, pipeline, received_at, content_type, body, body_crc,"
        " meta, edit_of) SELECT $1::text, coalesce((SELECT pipeline FROM old), $2::text),"
        " $3::bigint, $4::text, $5::bytea, $6::bigint,"
        " CASE WHEN $8::bigint <> 0 THEN (SELECT meta FROM om) ELSE $7::text END,"
        " (SELECT seq FROM om) FROM go WHERE go.ok ON CONFLICT (id) DO NOTHING"
        " RETURNING seq, pipeline),"
        " t AS (SELECT o.output, o.sub, o.i FROM unnest($9::text[], $10::text[])"
        " WITH ORDINALITY AS o(output, sub, i) UNION ALL SELECT old.output, old.sub, 1 FROM old"
        " WHERE cardinality($9::text[]) = 0),"
        " rt AS (INSERT INTO routed(seq, body, body_crc, okey) SELECT m.seq, $5::bytea,"
        " $6::bigint, om.okey FROM m, om WHERE om.known AND (SELECT t.output FROM t"
        " WHERE t.i = 1) <> '" PB_ROUTE_OUTPUT "'),"
        " d AS (INSERT INTO deliveries(msg_seq, pipeline, output, sub, state, attempts, next_at,"
        " created_at, updated_at, replay_of) SELECT m.seq, m.pipeline, t.output,"
        " nullif(t.sub, ''), 0, 0, $3::bigint, $3::bigint, $3::bigint, nullif($8::bigint, 0)"
        " FROM m, t ORDER BY t.i RETURNING id, pipeline, output),"
        " mk AS (UPDATE deliveries SET state = 4, updated_at = $3::bigint"
        " WHERE id = (SELECT id FROM old) AND EXISTS (SELECT 1 FROM m))"
        " SELECT (SELECT ok FROM go)::int, (SELECT seq FROM m),"
        " (SELECT string_agg(id::text, ',' ORDER BY id) FROM d),"
        " (SELECT pipeline FROM old), (SELECT output FROM old), (SELECT sub FROM old),"
        " (SELECT string_agg(DISTINCT pipeline || E'\\t' || output, E'\\n') FROM d)",
    [WS_BEGIN] = "BEGIN",
    [WS_COMMIT] = "COMMIT",
    [WS_ROLLBACK] = "ROLLBACK",
};
