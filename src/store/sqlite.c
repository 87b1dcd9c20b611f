/* sqlite.c - the SQLite state store backend ("sqlite:PATH").
 *
 * This half opens the store and applies the writer's ops: one write
 * connection, used only by the writer thread (store.c), runs them with
 * cached prepared statements inside the writer's transactions. Reads go
 * through a pool of separate connections in sqlite_read.c.
 *
 * Opening never resets anything: a file that is not a SQLite database, is
 * corrupt or truncated, has a damaged write-ahead log (sqlite_wal.c),
 * belongs to another application or carries a newer schema is refused with
 * a message that says what to do. The schema lives in an ordered list of
 * migrations applied in one transaction. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "patchbay/pb_log.h"
#include "store/sqlite_int.h"
#include "store/sqlite_wal.h"

#define BUSY_TIMEOUT_MS 5000
#define APPLICATION_ID 0x70626179 /* "pbay" */

static const char *const migrations[] = {
    /* 1: the first schema */
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE messages("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " id TEXT NOT NULL UNIQUE,"
    " pipeline TEXT NOT NULL,"
    " received_at INTEGER NOT NULL,"
    " content_type TEXT,"
    " body BLOB NOT NULL);"
    "CREATE INDEX messages_received ON messages(received_at);"
    "CREATE TABLE deliveries("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " msg_seq INTEGER NOT NULL REFERENCES messages(seq) ON DELETE CASCADE,"
    " pipeline TEXT NOT NULL,"
    " output TEXT NOT NULL,"
    " state INTEGER NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " next_at INTEGER NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " updated_at INTEGER NOT NULL,"
    " last_status INTEGER,"
    " last_error TEXT,"
    " replay_of INTEGER);"
    "CREATE INDEX deliveries_pending ON deliveries(pipeline, output, id) WHERE state = 0;"
    "CREATE INDEX deliveries_dead ON deliveries(pipeline, output, id) WHERE state = 2;"
    "CREATE INDEX deliveries_msg ON deliveries(msg_seq);"
    "CREATE TABLE attempts("
    " delivery_id INTEGER NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,"
    " n INTEGER NOT NULL,"
    " started_at INTEGER NOT NULL,"
    " latency_ms INTEGER NOT NULL,"
    " status INTEGER NOT NULL,"
    " state INTEGER NOT NULL,"
    " error TEXT,"
    " PRIMARY KEY (delivery_id, n)) WITHOUT ROWID;"
    "CREATE TABLE idempotency("
    " pipeline TEXT NOT NULL,"
    " key TEXT NOT NULL,"
    " msg_id TEXT NOT NULL,"
    " expires_at INTEGER NOT NULL,"
    " PRIMARY KEY (pipeline, key)) WITHOUT ROWID;"
    "CREATE INDEX idempotency_expires ON idempotency(expires_at);",
    /* 2: managed webhook endpoints */
    "CREATE TABLE endpoints("
    " id TEXT PRIMARY KEY,"
    " pipeline TEXT NOT NULL,"
    " output TEXT NOT NULL,"
    " url TEXT NOT NULL,"
    " description TEXT,"
    " events TEXT NOT NULL DEFAULT '[]',"
    " secrets TEXT NOT NULL,"
    " rate_limit TEXT,"
    " disabled INTEGER NOT NULL DEFAULT 0,"
    " disabled_reason TEXT,"
    " failing_since INTEGER NOT NULL DEFAULT 0,"
    " created_at INTEGER NOT NULL,"
    " updated_at INTEGER NOT NULL);",
    /* 3: a CRC-32 of each body, taken at ingest and checked whenever the body
     * is read back: SQLite checks the structure of its pages, not the data
     * in them. NULL for messages stored before. */
    "ALTER TABLE messages ADD COLUMN body_crc INTEGER;",
    /* 4: endpoints of the configuration keep their disabled state and
     * failing time across restarts and reloads, with the url they had. */
    "CREATE TABLE static_endpoint_state("
    " pipeline TEXT NOT NULL,"
    " output TEXT NOT NULL,"
    " id TEXT NOT NULL,"
    " url TEXT NOT NULL,"
    " disabled INTEGER NOT NULL DEFAULT 0,"
    " disabled_reason TEXT,"
    " failing_since INTEGER NOT NULL DEFAULT 0,"
    " updated_at INTEGER NOT NULL,"
    " PRIMARY KEY (pipeline, output, id)) WITHOUT ROWID;",
    /* 5: what an input knew of each message ($meta, JSON), split children
     * linked to the message they came from, and the body the route stage
     * made when its steps changed it (kept apart: the body as received stays
     * as it was). */
    "ALTER TABLE messages ADD COLUMN meta TEXT;"
    "ALTER TABLE messages ADD COLUMN parent_seq INTEGER;"
    "ALTER TABLE messages ADD COLUMN okey TEXT;"
    "CREATE INDEX messages_parent ON messages(parent_seq) WHERE parent_seq IS NOT NULL;"
    "CREATE TABLE routed("
    " seq INTEGER PRIMARY KEY REFERENCES messages(seq) ON DELETE CASCADE,"
    " body BLOB NOT NULL,"
    " body_crc INTEGER NOT NULL,"
    " okey TEXT);",
    /* 6: key-value state: inputs' checkpoints (committed with the messages
     * they produced) and plugins' own state. */
    "CREATE TABLE kv("
    " scope TEXT NOT NULL,"
    " key TEXT NOT NULL,"
    " value BLOB NOT NULL,"
    " updated_at INTEGER NOT NULL,"
    " PRIMARY KEY (scope, key)) WITHOUT ROWID;",
    /* 7: deliveries to sub-outputs (webhook endpoints) name them in sub
     * instead of "<output>/<id>" in output; lease is the epoch of the
     * process holding a pending delivery in memory (NULL: none). */
    "ALTER TABLE deliveries ADD COLUMN sub TEXT;"
    "ALTER TABLE deliveries ADD COLUMN lease INTEGER;"
    "UPDATE deliveries SET sub = substr(output, instr(output, '/') + 1),"
    " output = substr(output, 1, instr(output, '/') - 1) WHERE instr(output, '/') > 0;"
    "DROP INDEX deliveries_pending;"
    "CREATE INDEX deliveries_pending ON deliveries(pipeline, output, sub, id) WHERE state = 0;",
    /* 8: webhook endpoints become the webhook outputs' own state (key-value,
     * scope output/<pipeline>/<output>): managed ones whole under
     * endpoint/<id>, the saved state of static ones under static/<id>. */
    "INSERT OR REPLACE INTO kv(scope, key, value, updated_at)"
    " SELECT 'output/' || pipeline || '/' || output, 'endpoint/' || id,"
    " json_object('id', id, 'url', url, 'description', description, 'events', json(events),"
    " 'secrets', json(secrets), 'rate_limit', rate_limit,"
    " 'disabled', json(CASE WHEN disabled THEN 'true' ELSE 'false' END),"
    " 'disabled_reason', disabled_reason, 'failing_since', failing_since,"
    " 'created_at', created_at, 'updated_at', updated_at), updated_at FROM endpoints;"
    "INSERT OR REPLACE INTO kv(scope, key, value, updated_at)"
    " SELECT 'output/' || pipeline || '/' || output, 'static/' || id,"
    " json_object('url', url, 'disabled', json(CASE WHEN disabled THEN 'true' ELSE 'false' END),"
    " 'disabled_reason', disabled_reason, 'failing_since', failing_since,"
    " 'updated_at', updated_at), updated_at FROM static_endpoint_state;"
    "DROP TABLE endpoints;"
    "DROP TABLE static_endpoint_state;",
    /* 9: what the dashboard searches and links: each message's idempotency
     * key as its input gave it (those still in the window are filled in),
     * and for a message made by editing a dead letter, the message it was
     * made from. */
    "ALTER TABLE messages ADD COLUMN idem_key TEXT;"
    "ALTER TABLE messages ADD COLUMN edit_of INTEGER;"
    "UPDATE messages SET idem_key = i.key FROM idempotency i WHERE i.msg_id = messages.id;"
    "CREATE INDEX messages_idem ON messages(idem_key) WHERE idem_key IS NOT NULL;"
    "CREATE INDEX messages_edit_of ON messages(edit_of) WHERE edit_of IS NOT NULL;"
    /* The dead letters by id, whatever their output: pages of the whole
     * queue in either order without a sort, however few they are among
     * the deliveries. */
    "CREATE INDEX deliveries_dead_id ON deliveries(id) WHERE state = 2;",
};

const char *pb__sqlite_migration_sql(int v)
{
    return v >= 1 && v <= (int)(sizeof(migrations) / sizeof(migrations[0])) ? migrations[v - 1]
                                                                            : NULL;
}
#define NMIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))
_Static_assert(NMIGRATIONS == PB_STORE_SCHEMA_VERSION, "one migration per schema version");

/* ?4 is since: 0 (or less) takes every dead delivery. An output filter is
 * exact: the output itself (?5 NULL) or one of its sub-outputs. */
#define RALL_DEAD "SELECT id FROM deliveries WHERE state = 2 AND (?4 <= 0 OR created_at >= ?4)"
#define RALL_OUT " AND output = ?2 AND sub IS ?5"
#define RALL_END " ORDER BY id LIMIT ?6"

static const char *const wsql[W_COUNT] = {
    [W_IDEM_GET] = "SELECT msg_id FROM idempotency"
                   " WHERE pipeline = ?1 AND key = ?2 AND expires_at > ?3",
    [W_IDEM_PUT] = "INSERT OR REPLACE INTO idempotency(pipeline, key, msg_id, expires_at)"
                   " VALUES (?1, ?2, ?3, ?4)",
    [W_MSG_INS] = "INSERT INTO messages(id, pipeline, received_at, content_type, body, body_crc,"
                  " meta, idem_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [W_DLV_INS] = "INSERT INTO deliveries(msg_seq, pipeline, output, state, attempts, next_at,"
                  " created_at, updated_at, lease) VALUES (?1, ?2, ?3, 0, 0, ?4, ?5, ?5, ?6)",
    /* A result counts only while its lease holds: a lease lost (claimed by
     * another process) must not overwrite a newer attempt. */
    [W_DLV_RESULT] = "UPDATE deliveries SET state = ?2, attempts = ?3, next_at = ?4,"
                     " updated_at = ?5, last_status = ?6, last_error = ?7,"
                     " lease = CASE WHEN ?2 = 0 THEN lease END"
                     " WHERE id = ?1 AND state = 0 AND lease IS ?8",
    [W_ATT_INS] = "INSERT OR REPLACE INTO attempts(delivery_id, n, started_at, latency_ms, status,"
                  " state, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [W_DEAD_GET] = "SELECT msg_seq, pipeline, output, sub FROM deliveries WHERE id = ?1"
                   " AND state = 2",
    [W_DLV_MARK_REPLAYED] = "UPDATE deliveries SET state = 4, updated_at = ?2 WHERE id = ?1",
    [W_DLV_REPLAY] =
        "INSERT INTO deliveries(msg_seq, pipeline, output, sub, state, attempts, next_at,"
        " created_at, updated_at, replay_of) VALUES (?1, ?2, ?3, ?6, 0, 0, ?4, ?4, ?4, ?5)",
    [W_DLV_DEL] = "DELETE FROM deliveries WHERE id = ?1",
    [W_MSG_DEL_UNUSED] = "DELETE FROM messages WHERE seq = ?1"
                         " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE msg_seq = ?1)",
    [W_IDEM_EXPIRE] = "DELETE FROM idempotency WHERE (pipeline, key) IN"
                      " (SELECT pipeline, key FROM idempotency WHERE expires_at <= ?1 LIMIT ?2)",
    /* Finished: no delivery still pending (0) or dead (2). Deliveries and
     * attempts go with the message (ON DELETE CASCADE). */
    [W_MSG_EXPIRE] = "DELETE FROM messages WHERE seq IN (SELECT m.seq FROM messages m"
                     " WHERE m.received_at < ?1 AND NOT EXISTS (SELECT 1 FROM deliveries d"
                     " WHERE d.msg_seq = m.seq AND d.state IN (0, 2))"
                     " ORDER BY m.received_at LIMIT ?2)",
    [W_FAN_PARENT] = "UPDATE deliveries SET state = 1, attempts = ?2, updated_at = ?3,"
                     " lease = NULL WHERE id = ?1 AND state = 0 AND lease IS ?4",
    [W_FAN_CHILD] = "INSERT INTO deliveries(msg_seq, pipeline, output, sub, state, attempts,"
                    " next_at, created_at, updated_at, lease) SELECT msg_seq, pipeline, output,"
                    " ?2, 0, 0, ?3, ?3, ?3, ?4 FROM deliveries WHERE id = ?1",
    [W_ROUTE_FINISH] = "UPDATE deliveries SET state = ?2, attempts = ?3, updated_at = ?4,"
                       " last_status = 0, last_error = ?5, lease = NULL"
                       " WHERE id = ?1 AND state = 0 AND lease IS ?6",
    [W_ROUTED_PUT] = "INSERT OR REPLACE INTO routed(seq, body, body_crc, okey)"
                     " VALUES (?1, ?2, ?3, ?4)",
    [W_CHILD_INS] = "INSERT INTO messages(id, pipeline, received_at, content_type, body, body_crc,"
                    " meta, parent_seq, okey) SELECT ?1, pipeline, received_at, NULL, ?2, ?3, meta,"
                    " seq, ?5 FROM messages WHERE seq = ?4",
    [W_DLV_FINAL] =
        "INSERT INTO deliveries(msg_seq, pipeline, output, state, attempts, next_at,"
        " created_at, updated_at, last_error) VALUES (?1, ?2, ?3, ?4, 0, 0, ?5, ?5, ?6)",
    [W_CLAIM] = "SELECT d.id, d.msg_seq, m.id, d.attempts, d.next_at, m.received_at,"
                " m.content_type, coalesce(r.body, m.body),"
                " CASE WHEN r.seq IS NULL THEN m.body_crc ELSE r.body_crc END, m.meta,"
                " CASE WHEN r.seq IS NULL THEN m.okey ELSE r.okey END,"
                " r.seq IS NOT NULL OR m.parent_seq IS NOT NULL"
                " FROM deliveries d JOIN messages m ON m.seq = d.msg_seq"
                " LEFT JOIN routed r ON r.seq = d.msg_seq AND d.output <> '" PB_ROUTE_OUTPUT "'"
                " WHERE d.state = 0 AND d.pipeline = ?1 AND d.output = ?2 AND d.sub IS ?3"
                " AND (d.lease IS NULL OR d.lease <> ?4) ORDER BY d.id LIMIT ?5",
    [W_SUB_KILL_ATT] = "INSERT OR REPLACE INTO attempts(delivery_id, n, started_at, latency_ms,"
                       " status, state, error) SELECT id, attempts + 1, ?4, 0, 0, 2, ?5"
                       " FROM deliveries WHERE state = 0 AND pipeline = ?1 AND output = ?2"
                       " AND sub = ?3",
    [W_SUB_KILL_DLV] = "UPDATE deliveries SET state = 2, attempts = attempts + 1, updated_at = ?4,"
                       " last_error = ?5, lease = NULL WHERE state = 0 AND pipeline = ?1"
                       " AND output = ?2 AND sub = ?3",
    [W_LEASE_SET] = "UPDATE deliveries SET lease = ?2 WHERE id = ?1",
    [W_LEASE_DROP] = "UPDATE deliveries SET lease = NULL WHERE id = ?1 AND lease = ?2",
    [W_KV_PUT] = "INSERT OR REPLACE INTO kv(scope, key, value, updated_at) VALUES (?1, ?2, ?3, ?4)",
    [W_KV_DEL] = "DELETE FROM kv WHERE scope = ?1 AND key = ?2",
    [W_DEAD_IN_DLV] = "INSERT INTO deliveries(msg_seq, pipeline, output, state, attempts, next_at,"
                      " created_at, updated_at, last_status, last_error)"
                      " VALUES (?1, ?2, '" PB_INPUT_OUTPUT "', 2, 1, 0, ?3, ?3, 0, ?4)",
    [W_DEAD_IN_ATT] = "INSERT INTO attempts(delivery_id, n, started_at, latency_ms, status, state,"
                      " error) VALUES (?1, 1, ?2, 0, 0, 2, ?3)",
    [W_ORPHAN_ATT] = "INSERT OR REPLACE INTO attempts(delivery_id, n, started_at, latency_ms,"
                     " status, state, error) SELECT id, attempts + 1, ?3, 0, 0, 2, 'output removed'"
                     " FROM deliveries WHERE state = 0 AND pipeline = ?1 AND output = ?2",
    [W_ORPHAN_DLV] = "UPDATE deliveries SET state = 2, attempts = attempts + 1, updated_at = ?3,"
                     " last_error = 'output removed' WHERE state = 0 AND pipeline = ?1"
                     " AND output = ?2",
    [W_INJ_OLD] = "SELECT m.pipeline, m.meta, r.seq IS NOT NULL OR m.parent_seq IS NOT NULL,"
                  " CASE WHEN r.seq IS NULL THEN m.okey ELSE r.okey END"
                  " FROM messages m LEFT JOIN routed r ON r.seq = m.seq WHERE m.seq = ?1",
    [W_INJ_MSG] = "INSERT INTO messages(id, pipeline, received_at, content_type, body, body_crc,"
                  " meta, edit_of) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [W_RALL + 0] = RALL_DEAD RALL_END,
    [W_RALL + 1] = RALL_DEAD " AND pipeline = ?1" RALL_END,
    [W_RALL + 2] = RALL_DEAD RALL_OUT RALL_END,
    [W_RALL + 3] = RALL_DEAD " AND pipeline = ?1" RALL_OUT RALL_END,
};

static void bind_lease(sqlite3_stmt *st, int i, int64_t lease, bool unleased);

/* ---- errors ----------------------------------------------------------------------- */

/* A SQLite result code as a PB_E* code. */
int pb__sqlite_map_rc(sqlite3 *db, int rc)
{
    int sys = db ? sqlite3_system_errno(db) : 0;

    switch (rc & 0xff) {
    case SQLITE_FULL:
        return PB_ENOSPACE;
    case SQLITE_IOERR:
        return (sys == ENOSPC || sys == EDQUOT) ? PB_ENOSPACE : PB_ESTORE;
    case SQLITE_NOMEM:
        return PB_ENOMEM;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return PB_ECORRUPT;
    case SQLITE_CONSTRAINT:
        return PB_EEXISTS;
    case SQLITE_TOOBIG:
        return PB_ETOOBIG;
    default:
        return PB_ESTORE;
    }
}

/* Log a failed write and return its PB_E* code. */
int pb__sqlite_write_fail(struct sq *q, int rc, const char *what)
{
    PB_WARN("state store write failed step=%s path=%s error=\"%s\"", what, q->display,
            sqlite3_errmsg(q->db));
    return pb__sqlite_map_rc(q->db, rc);
}

/* The refusal for a file SQLite cannot read: not a database, or corrupt. */
static int open_fail(struct sq *q, sqlite3 *db, int rc, struct pb_err *err)
{
    const char *msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);

    switch (rc & 0xff) {
    case SQLITE_NOTADB:
        return pb_err_set(err, PB_ECORRUPT,
                          "state store %s is not a SQLite database (%s); refusing to start"
                          " — restore from backup or move the file away",
                          q->display, msg);
    case SQLITE_CORRUPT:
        return pb_err_set(err, PB_ECORRUPT,
                          "state store %s is corrupt: %s; refusing to start"
                          " — restore from backup or move the file away",
                          q->display, msg);
    default:
        return pb_err_set(err, pb__sqlite_map_rc(db, rc), "cannot open state store %s: %s",
                          q->display, msg);
    }
}

/* ---- open ------------------------------------------------------------------------------ */

/* mkdir -p for the directory part of path. */
static int make_parent_dirs(const char *path, struct pb_err *err)
{
    char *dir = strdup(path);
    int rc = 0;

    if (!dir)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    /* Each prefix ending before a '/' is a directory to have. */
    for (char *p = strchr(dir + 1, '/'); p; p = strchr(p + 1, '/')) {
        *p = '\0';
        if (mkdir(dir, 0750) != 0 && errno != EEXIST) {
            rc = pb_err_set(err, PB_EIO, "cannot create directory %s for the state store: %s", dir,
                            strerror(errno));
            goto out;
        }
        *p = '/';
    }
out:
    free(dir);
    return rc;
}

/* An existing, non-empty file must start with the SQLite header. Checked
 * before SQLite touches the file, so a stray file is left as it is. A new
 * store is created here, empty and private (0600: it holds message bodies);
 * SQLite gives its -wal and -shm files the same mode. *page_size is the
 * header's page size, 0 when the file has none (new) or it is invalid. */
static int check_header(struct sq *q, uint32_t *page_size, struct pb_err *err)
{
    static const char magic[16] = "SQLite format 3";
    unsigned char head[18];
    struct stat st;
    ssize_t n;
    int fd, rc = 0;

    *page_size = 0;
    fd = open(q->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        fd = open(q->path, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd >= 0 || errno == EEXIST) {
            if (fd >= 0)
                close(fd);
            return fd >= 0 ? 0 : check_header(q, page_size, err); /* lost a race: look again */
        }
    }
    if (fd < 0) {
        return pb_err_set(err, PB_EIO, "cannot open state store %s: %s", q->display,
                          strerror(errno));
    }
    if (fstat(fd, &st) != 0) {
        rc = pb_err_set(err, PB_EIO, "cannot stat state store %s: %s", q->display, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = pb_err_set(err, PB_EINVAL, "state store %s is not a regular file", q->display);
        goto out;
    }
    if (st.st_size == 0) {
        /* Empty is new, unless a write-ahead log holds commits: SQLite would
         * throw that log away and start over an empty store. */
        struct stat wst;
        if (stat(q->wal_path, &wst) == 0 && wst.st_size > 0)
            rc = pb_err_set(err, PB_ECORRUPT,
                            "state store %s is empty but its write-ahead log %s holds %lld "
                            "bytes; refusing to start — restore the database file from backup",
                            q->display, q->wal_path, (long long)wst.st_size);
        goto out;
    }
    do
        n = pread(fd, head, sizeof(head), 0);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        rc = pb_err_set(err, PB_EIO, "cannot read state store %s: %s", q->display, strerror(errno));
        goto out;
    }
    if (n < (ssize_t)sizeof(magic) || memcmp(head, magic, sizeof(magic)) != 0) {
        rc = pb_err_set(err, PB_ECORRUPT,
                        "state store %s is not a SQLite database (no SQLite header);"
                        " refusing to start — restore from backup or move the file away",
                        q->display);
        goto out;
    }
    if (n == (ssize_t)sizeof(head)) {
        /* Big-endian at offset 16; 1 stands for 65536. */
        uint32_t psz = (uint32_t)head[16] << 8 | head[17];
        psz = psz == 1 ? 65536 : psz;
        if (psz >= 512 && (psz & (psz - 1)) == 0)
            *page_size = psz;
    }
out:
    close(fd);
    return rc;
}

int pb__sqlite_open_conn(struct sq *q, bool create, sqlite3 **out, struct pb_err *err)
{
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(q->path, &db, flags, NULL);

    if (rc != SQLITE_OK) {
        rc = open_fail(q, db, rc, err);
        sqlite3_close(db);
        return rc;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
    *out = db;
    return 0;
}

/* Run one statement and hand back the text of its first row's first column
 * (NULL when no row) in buf. */
static int query_text(sqlite3 *db, const char *sql, char *buf, size_t len, bool *got)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);

    *got = false;
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(buf, len, "%s", t ? (const char *)t : "");
        *got = true;
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

static int exec_sql(struct sq *q, const char *sql, struct pb_err *err)
{
    int rc = sqlite3_exec(q->db, sql, NULL, NULL, NULL);

    if (rc != SQLITE_OK)
        return open_fail(q, q->db, rc, err);
    return 0;
}

/* Read-only probes and PRAGMAs, in an order that never writes to a file we
 * have not yet recognised as a healthy database. */
static int setup_write_conn(struct sq *q, const struct pb_store_opts *o, struct pb_err *err)
{
    char buf[512], sql[96];
    bool got;
    int rc;

    /* Reads page 1 and the schema: NOTADB / CORRUPT surface here. */
    rc = query_text(q->db, "SELECT count(*) FROM sqlite_schema", buf, sizeof(buf), &got);
    if (rc != SQLITE_OK)
        return open_fail(q, q->db, rc, err);
    if (o->integrity_check) {
        rc = query_text(q->db, "PRAGMA quick_check", buf, sizeof(buf), &got);
        if (rc != SQLITE_OK)
            return open_fail(q, q->db, rc, err);
        if (!got || strcmp(buf, "ok") != 0)
            return pb_err_set(err, PB_ECORRUPT,
                              "state store %s is corrupt: %s; refusing to start"
                              " — restore from backup or move the file away",
                              q->display, got ? buf : "quick_check returned nothing");
    }
    rc = query_text(q->db, "PRAGMA journal_mode=WAL", buf, sizeof(buf), &got);
    if (rc != SQLITE_OK)
        return open_fail(q, q->db, rc, err);
    if (!got || strcmp(buf, "wal") != 0)
        return pb_err_set(err, PB_ESTORE,
                          "state store %s: cannot switch to WAL journal mode (got \"%s\");"
                          " is it on a network filesystem?",
                          q->display, got ? buf : "");
    /* Full durability is kept by sq_sync(): commit writes the WAL, a flush
     * of the WAL makes it durable before anything is acknowledged. NORMAL
     * keeps checkpoints safe (WAL synced before, database synced after). */
    q->explicit_sync = o->synchronous_full;
    snprintf(sql, sizeof(sql), "PRAGMA synchronous=NORMAL");
    if ((rc = exec_sql(q, sql, err)) < 0)
        return rc;
    if ((rc = exec_sql(q,
                       "PRAGMA foreign_keys=ON;"
                       "PRAGMA wal_autocheckpoint=1000;"
                       "PRAGMA journal_size_limit=67108864;"
                       "PRAGMA cache_size=-16384;"
                       "PRAGMA temp_store=MEMORY",
                       err)) < 0)
        return rc;
    rc = query_text(q->db, "PRAGMA foreign_keys", buf, sizeof(buf), &got);
    if (rc != SQLITE_OK || !got || strcmp(buf, "1") != 0)
        return pb_err_set(err, PB_ESTORE, "state store %s: SQLite lacks foreign key support",
                          q->display);
    return 0;
}

static int random_hex(char *out, size_t nbytes)
{
    unsigned char raw[32];
    size_t got = 0;

    if (nbytes > sizeof(raw))
        return PB_EINVAL;
    while (got < nbytes) {
        ssize_t n = getrandom(raw + got, nbytes - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return PB_EIO;
        }
        got += (size_t)n;
    }
    for (size_t i = 0; i < nbytes; i++)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
    return 0;
}

static int meta_put(struct sq *q, const char *key, const char *value, bool replace)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(q->db,
                                replace ? "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)"
                                        : "INSERT OR IGNORE INTO meta(key, value) VALUES (?1, ?2)",
                                -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Bring the schema to PB_STORE_SCHEMA_VERSION in one transaction. */
static int migrate(struct sq *q, struct pb_err *err)
{
    char buf[64], val[32];
    bool got;
    long version = 0;
    int rc, ret = 0;

    rc = sqlite3_exec(q->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return open_fail(q, q->db, rc, err);

    rc = query_text(q->db,
                    "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'meta'",
                    buf, sizeof(buf), &got);
    if (rc != SQLITE_OK)
        goto sqlfail;
    if (strcmp(buf, "0") != 0) {
        rc = query_text(q->db, "SELECT value FROM meta WHERE key = 'schema_version'", buf,
                        sizeof(buf), &got);
        if (rc != SQLITE_OK)
            goto sqlfail;
        char *end = NULL;
        version = got ? strtol(buf, &end, 10) : -1;
        if (!got || *end || version < 1) {
            ret = pb_err_set(err, PB_ECORRUPT,
                             "state store %s has no valid schema_version; refusing to start"
                             " — restore from backup or move the file away",
                             q->display);
            goto out;
        }
    } else {
        rc = query_text(q->db, "SELECT count(*) FROM sqlite_schema", buf, sizeof(buf), &got);
        if (rc != SQLITE_OK)
            goto sqlfail;
        if (strcmp(buf, "0") != 0) {
            ret = pb_err_set(err, PB_ESTORE,
                             "%s is a SQLite database but not a patchbay state store;"
                             " refusing to use it — point state: at a new file",
                             q->display);
            goto out;
        }
    }
    if (version > PB_STORE_SCHEMA_VERSION) {
        ret = pb_err_set(err, PB_ESTORE,
                         "state store %s has schema version %ld, newer than this patchbay"
                         " supports (%d); refusing to start — run a newer patchbay",
                         q->display, version, PB_STORE_SCHEMA_VERSION);
        goto out;
    }
    if (version == PB_STORE_SCHEMA_VERSION)
        goto out;

    for (long v = version; v < NMIGRATIONS; v++) {
        rc = sqlite3_exec(q->db, migrations[v], NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            goto sqlfail;
        PB_INFO("state store migrated path=%s schema_version=%ld", q->display, v + 1);
    }
    if (version == 0) {
        char id[17], created[32];
        struct timeval tv;

        if (random_hex(id, 8) < 0) {
            ret = pb_err_set(err, PB_EIO, "cannot read random bytes for the node id");
            goto out;
        }
        gettimeofday(&tv, NULL);
        snprintf(created, sizeof(created), "%" PRId64,
                 (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000);
        if ((rc = meta_put(q, "node_id", id, false)) != SQLITE_OK ||
            (rc = meta_put(q, "created_at", created, false)) != SQLITE_OK)
            goto sqlfail;
        snprintf(buf, sizeof(buf), "PRAGMA application_id=%d", APPLICATION_ID);
        if ((rc = sqlite3_exec(q->db, buf, NULL, NULL, NULL)) != SQLITE_OK)
            goto sqlfail;
    }
    snprintf(val, sizeof(val), "%d", PB_STORE_SCHEMA_VERSION);
    if ((rc = meta_put(q, "schema_version", val, true)) != SQLITE_OK)
        goto sqlfail;
    goto out;

sqlfail:
    ret = open_fail(q, q->db, rc, err);
out:
    if (ret == 0) {
        rc = sqlite3_exec(q->db, "COMMIT", NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            ret = open_fail(q, q->db, rc, err);
    }
    if (ret < 0 && !sqlite3_get_autocommit(q->db))
        sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
    return ret;
}

/* A new epoch for this open: deliveries leased by an earlier one are free
 * to claim (whatever held them is gone: the store is locked to one
 * process). */
static int next_epoch(struct sq *q, struct pb_err *err)
{
    char buf[32];
    bool got;
    int rc = sqlite3_exec(q->db,
                          "INSERT INTO meta(key, value) VALUES ('epoch', '1')"
                          " ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
                          NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc =
            query_text(q->db, "SELECT value FROM meta WHERE key = 'epoch'", buf, sizeof(buf), &got);
    if (rc != SQLITE_OK)
        return open_fail(q, q->db, rc, err);
    q->epoch = got ? strtoll(buf, NULL, 10) : 0;
    if (q->epoch < 1)
        return pb_err_set(err, PB_ECORRUPT, "state store %s has no valid epoch", q->display);
    return 0;
}

static void sq_close(void *ctx);
static int sq_sync(void *ctx);
static int take_lock(struct sq *q, struct pb_err *err);

static void *sq_open(const char *url, const struct pb_store_opts *o, struct pb_err *err)
{
    const char *path = url + strlen("sqlite:");
    struct sq *q = NULL;
    bool wal_existed = false;
    bool got;
    int rc;

    if (!*path) {
        pb_err_set(err, PB_EINVAL, "state store URL \"%s\" has no path (expected sqlite:PATH)",
                   url);
        return NULL;
    }
    q = calloc(1, sizeof(*q));
    if (!q)
        goto nomem;
    atomic_init(&q->max_pages_req, -1);
    q->wal_fd = -1;
    q->lock_fd = -1;
    if (pthread_mutex_init(&q->pool_lock, NULL) != 0) {
        free(q);
        goto nomem;
    }
    q->display = strdup(path);
    /* Not a URI: a path that happens to start with "file:" stays a path. */
    if (strncmp(path, "file:", 5) == 0) {
        q->path = malloc(strlen(path) + 3);
        if (q->path)
            sprintf(q->path, "./%s", path);
    } else {
        q->path = strdup(path);
    }
    if (!q->display || !q->path)
        goto nomem_q;
    q->wal_path = malloc(strlen(q->path) + 5);
    if (!q->wal_path)
        goto nomem_q;
    sprintf(q->wal_path, "%s-wal", q->path);

    struct stat wst;
    uint32_t page_size = 0;
    wal_existed = stat(q->wal_path, &wst) == 0;
    if (make_parent_dirs(q->path, err) < 0 || take_lock(q, err) < 0 ||
        check_header(q, &page_size, err) < 0)
        goto fail;
    /* SQLite would replay the log only as far as it holds together. */
    if (pb__sqlite_wal_check(q->wal_path, q->display, page_size, err) < 0)
        goto fail;
    if (pb__sqlite_open_conn(q, true, &q->db, err) < 0)
        goto fail;
    if (setup_write_conn(q, o, err) < 0 || migrate(q, err) < 0 || next_epoch(q, err) < 0)
        goto fail;
    if (sq_sync(q) < 0) {
        pb_err_set(err, PB_EIO, "state store %s: cannot sync its write-ahead log", q->display);
        goto fail;
    }

    rc = query_text(q->db, "SELECT value FROM meta WHERE key = 'node_id'", q->node_id,
                    sizeof(q->node_id), &got);
    if (rc != SQLITE_OK) {
        open_fail(q, q->db, rc, err);
        goto fail;
    }
    if (!got) {
        pb_err_set(err, PB_ECORRUPT, "state store %s has no node_id", q->display);
        goto fail;
    }
    for (int i = 0; i < W_COUNT; i++) {
        rc = sqlite3_prepare_v3(q->db, wsql[i], -1, SQLITE_PREPARE_PERSISTENT, &q->ws[i], NULL);
        if (rc != SQLITE_OK) {
            pb_err_set(err, pb__sqlite_map_rc(q->db, rc),
                       "state store %s: cannot prepare statement: %s", q->display,
                       sqlite3_errmsg(q->db));
            goto fail;
        }
    }
    return q;

nomem_q:
    sq_close(q);
nomem:
    pb_err_set(err, PB_ENOMEM, "out of memory opening the state store");
    return NULL;
fail:
    /* A refused store is left exactly as it was: closing must not fold its
     * write-ahead log into the (damaged) database file. */
    if (q->db && wal_existed)
        sqlite3_db_config(q->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
    sq_close(q);
    return NULL;
}

/* Two daemons on one store would both deliver everything: the second one is
 * refused. The lock is an flock on PATH.lock, released when the process
 * ends however it ends. */
static int take_lock(struct sq *q, struct pb_err *err)
{
    size_t n = strlen(q->path) + 6;
    char *lp = malloc(n);
    if (!lp)
        return pb_err_set(err, PB_ENOMEM, "out of memory opening the state store");
    snprintf(lp, n, "%s.lock", q->path);
    q->lock_fd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    int rc = 0;
    if (q->lock_fd < 0)
        rc = pb_err_set(err, PB_EIO, "state store %s: cannot open its lock file: %s", q->display,
                        strerror(errno));
    else if (flock(q->lock_fd, LOCK_EX | LOCK_NB) != 0)
        rc = pb_err_set(err, PB_EAGAIN,
                        "state store %s is in use by another patchbay process (lock %s)",
                        q->display, lp);
    free(lp);
    return rc;
}

static void sq_close(void *ctx)
{
    struct sq *q = ctx;

    if (!q)
        return;
    /* Readers first: the last connection to close checkpoints the WAL. */
    pb__sqlite_readers_close(q);
    for (int i = 0; i < W_COUNT; i++)
        sqlite3_finalize(q->ws[i]);
    if (q->wal_fd >= 0)
        close(q->wal_fd);
    if (q->db && sqlite3_close(q->db) != SQLITE_OK)
        PB_WARN("state store close failed path=%s error=\"%s\"", q->display, sqlite3_errmsg(q->db));
    pthread_mutex_destroy(&q->pool_lock);
    if (q->lock_fd >= 0)
        close(q->lock_fd);
    free(q->path);
    free(q->wal_path);
    free(q->display);
    free(q);
}

static const char *sq_node_id(const void *ctx)
{
    return ((const struct sq *)ctx)->node_id;
}

static int64_t sq_epoch(const void *ctx)
{
    return ((const struct sq *)ctx)->epoch;
}

static void sq_test_max_pages(void *ctx, int64_t pages)
{
    struct sq *q = ctx;
    atomic_store(&q->max_pages_req, pages > 0 ? pages : 1073741823);
}

/* ---- writer --------------------------------------------------------------------------- */

/* Step a write statement to completion and reset it. */
int pb__sqlite_step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

void pb__sqlite_bind_text_or_null(sqlite3_stmt *st, int i, const char *s)
{
    if (s)
        sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

static int sq_begin(void *ctx)
{
    struct sq *q = ctx;
    int64_t pages = atomic_exchange(&q->max_pages_req, -1);
    char sql[64];
    int rc;

    if (pages > 0) {
        snprintf(sql, sizeof(sql), "PRAGMA max_page_count=%" PRId64, pages);
        sqlite3_exec(q->db, sql, NULL, NULL, NULL);
    }
    rc = sqlite3_exec(q->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : pb__sqlite_write_fail(q, rc, "begin");
}

static int sq_commit(void *ctx)
{
    struct sq *q = ctx;
    int rc = sqlite3_exec(q->db, "COMMIT", NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : pb__sqlite_write_fail(q, rc, "commit");
}

static int sq_sync(void *ctx)
{
    struct sq *q = ctx;

    if (!q->explicit_sync)
        return 0;
    if (q->wal_fd < 0) {
        q->wal_fd = open(q->wal_path, O_RDONLY | O_CLOEXEC);
        if (q->wal_fd < 0) {
            PB_ERROR("state store: cannot open the WAL to sync it path=%s error=\"%s\"",
                     q->wal_path, strerror(errno));
            return PB_EIO;
        }
    }
    if (fdatasync(q->wal_fd) != 0) {
        int e = errno;
        PB_ERROR("state store: WAL sync failed path=%s error=\"%s\"", q->wal_path, strerror(e));
        return e == ENOSPC || e == EDQUOT ? PB_ENOSPACE : PB_EIO;
    }
    return 0;
}

static void sq_rollback(void *ctx)
{
    struct sq *q = ctx;

    /* SQLite may already have rolled back on a full disk or I/O error. */
    if (!sqlite3_get_autocommit(q->db))
        sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
}

static int apply_ingest(struct sq *q, struct pb_op *op)
{
    struct pb_op_ingest *in = &op->u.ingest;
    sqlite3_stmt *st;
    int rc;

    in->duplicate = false;
    in->dup_msg_id[0] = '\0';
    in->msg_seq = 0;
    if (!in->pipeline || !in->msg_id || (in->noutputs && !in->outputs) || (!in->body && in->len)) {
        op->status = PB_EINVAL;
        return 0;
    }

    if (in->idem_key) {
        st = q->ws[W_IDEM_GET];
        sqlite3_bind_text(st, 1, in->pipeline, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, in->idem_key, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, in->received_at);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            const unsigned char *t = sqlite3_column_text(st, 0);
            snprintf(in->dup_msg_id, sizeof(in->dup_msg_id), "%s", t ? (const char *)t : "");
            in->duplicate = true;
            sqlite3_reset(st);
            return 0;
        }
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            return pb__sqlite_write_fail(q, rc, "idempotency lookup");
    }

    /* The message first: a duplicate msg_id fails here, before any write. */
    st = q->ws[W_MSG_INS];
    sqlite3_bind_text(st, 1, in->msg_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, in->pipeline, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, in->received_at);
    pb__sqlite_bind_text_or_null(st, 4, in->content_type);
    sqlite3_bind_blob64(st, 5, in->body ? in->body : "", in->len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, pb__store_body_crc(in->body, in->len));
    if (in->meta)
        sqlite3_bind_text(st, 7, in->meta, (int)in->meta_len, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 7);
    pb__sqlite_bind_text_or_null(st, 8, in->idem_key);
    rc = pb__sqlite_step_done(st);
    if (rc != SQLITE_OK) {
        if ((rc & 0xff) == SQLITE_CONSTRAINT || (rc & 0xff) == SQLITE_TOOBIG) {
            op->status = pb__sqlite_map_rc(q->db, rc);
            return 0;
        }
        return pb__sqlite_write_fail(q, rc, "insert message");
    }
    in->msg_seq = sqlite3_last_insert_rowid(q->db);

    if (in->idem_key) {
        st = q->ws[W_IDEM_PUT];
        sqlite3_bind_text(st, 1, in->pipeline, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, in->idem_key, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, in->msg_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, in->idem_expires_at);
        if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
            return pb__sqlite_write_fail(q, rc, "insert idempotency key");
    }

    if (in->dead_reason) {
        size_t rl = pb__store_utf8_cut(in->dead_reason, PB_ERROR_EXCERPT_MAX);
        st = q->ws[W_DEAD_IN_DLV];
        sqlite3_bind_int64(st, 1, in->msg_seq);
        sqlite3_bind_text(st, 2, in->pipeline, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, in->received_at);
        sqlite3_bind_text(st, 4, in->dead_reason, (int)rl, SQLITE_STATIC);
        if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
            return pb__sqlite_write_fail(q, rc, "insert dead delivery");
        int64_t id = sqlite3_last_insert_rowid(q->db);
        st = q->ws[W_DEAD_IN_ATT];
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_int64(st, 2, in->received_at);
        sqlite3_bind_text(st, 3, in->dead_reason, (int)rl, SQLITE_STATIC);
        if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
            return pb__sqlite_write_fail(q, rc, "insert dead attempt");
        return 0;
    }

    st = q->ws[W_DLV_INS];
    sqlite3_bind_int64(st, 1, in->msg_seq);
    sqlite3_bind_text(st, 2, in->pipeline, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, in->first_due_at);
    sqlite3_bind_int64(st, 5, in->received_at);
    for (size_t i = 0; i < in->noutputs; i++) {
        sqlite3_bind_text(st, 3, in->outputs[i], -1, SQLITE_STATIC);
        bind_lease(st, 6, in->lease, i < 64 && (in->unleased >> i & 1));
        if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
            return pb__sqlite_write_fail(q, rc, "insert delivery");
        if (in->delivery_ids)
            in->delivery_ids[i] = sqlite3_last_insert_rowid(q->db);
    }
    return 0;
}

static int kv_write(struct sq *q, const struct pb_kv_put *kv, size_t n, int64_t now)
{
    for (size_t i = 0; i < n; i++) {
        sqlite3_stmt *st = q->ws[kv[i].value ? W_KV_PUT : W_KV_DEL];
        sqlite3_bind_text(st, 1, kv[i].scope, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, kv[i].key, -1, SQLITE_STATIC);
        if (kv[i].value) {
            sqlite3_bind_blob64(st, 3, kv[i].value, kv[i].len, SQLITE_STATIC);
            sqlite3_bind_int64(st, 4, now);
        }
        int rc = pb__sqlite_step_done(st);
        if (rc != SQLITE_OK)
            return pb__sqlite_write_fail(q, rc, "key-value write");
    }
    return 0;
}

static bool kv_ok(const struct pb_kv_put *kv, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!kv[i].scope || !kv[i].key || (kv[i].len && !kv[i].value))
            return false;
    return true;
}

/* Every item is checked before anything is written, so an invalid one
 * leaves nothing of the op behind. */
static int apply_submit(struct sq *q, struct pb_op *op)
{
    struct pb_op_submit *sb = &op->u.submit;
    if ((sb->n && !sb->items) || (sb->nkv && !kv_ok(sb->kv, sb->nkv))) {
        op->status = PB_EINVAL;
        return 0;
    }
    for (size_t i = 0; i < sb->n; i++) {
        const struct pb_op_ingest *in = &sb->items[i];
        if (!in->pipeline || !in->msg_id || (in->noutputs && !in->outputs) ||
            (!in->body && in->len)) {
            op->status = PB_EINVAL;
            return 0;
        }
    }
    for (size_t i = 0; i < sb->n; i++) {
        struct pb_op item = {.kind = PB_OP_INGEST};
        item.u.ingest = sb->items[i];
        int rc = apply_ingest(q, &item);
        if (rc)
            return rc;
        if (item.status)
            return pb__sqlite_write_fail(q, SQLITE_CONSTRAINT, "insert message of a batch");
        sb->items[i] = item.u.ingest;
    }
    return kv_write(q, sb->kv, sb->nkv, sb->now);
}

static int apply_claim(struct sq *q, struct pb_op *op)
{
    struct pb_op_claim *c = &op->u.claim;
    sqlite3_stmt *st = q->ws[W_CLAIM], *set = q->ws[W_LEASE_SET];
    int rc;

    c->n = 0;
    if (!c->pipeline || !c->output || !c->cb || !c->lease) {
        op->status = PB_EINVAL;
        return 0;
    }
    sqlite3_bind_text(st, 1, c->pipeline, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, c->output, -1, SQLITE_STATIC);
    if (c->sub)
        sqlite3_bind_text(st, 3, c->sub, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 3);
    sqlite3_bind_int64(st, 4, c->lease);
    sqlite3_bind_int64(st, 5, c->limit > INT64_MAX ? INT64_MAX : (int64_t)c->limit);
    /* Rows first (the statement reads while the leases are written after). */
    int64_t *ids = c->limit ? malloc(c->limit * sizeof(*ids)) : NULL;
    if (c->limit && !ids) {
        sqlite3_reset(st);
        op->status = PB_ENOMEM;
        return 0;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct pb_pending row = {
            .delivery_id = sqlite3_column_int64(st, 0),
            .msg_seq = sqlite3_column_int64(st, 1),
            .msg_id = (const char *)sqlite3_column_text(st, 2),
            .attempts = sqlite3_column_int(st, 3),
            .next_at = sqlite3_column_int64(st, 4),
            .received_at = sqlite3_column_int64(st, 5),
            .content_type = (const char *)sqlite3_column_text(st, 6),
        };
        row.body = sqlite3_column_blob(st, 7);
        row.len = (size_t)sqlite3_column_bytes(st, 7);
        if (!row.body)
            row.body = "";
        row.body_damaged = !pb__sqlite_body_intact(st, 8, row.body, row.len);
        row.meta = (const char *)sqlite3_column_text(st, 9);
        row.meta_len = row.meta ? (size_t)sqlite3_column_bytes(st, 9) : 0;
        row.key = (const char *)sqlite3_column_text(st, 10);
        row.key_known = sqlite3_column_int(st, 11) != 0;
        if (!row.msg_id || c->n >= c->limit)
            break;
        if (c->cb(c->arg, &row) != 0)
            break;
        ids[c->n++] = row.delivery_id;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        free(ids);
        return pb__sqlite_write_fail(q, rc, "claim");
    }
    for (size_t i = 0; i < c->n; i++) {
        sqlite3_bind_int64(set, 1, ids[i]);
        sqlite3_bind_int64(set, 2, c->lease);
        if ((rc = pb__sqlite_step_done(set)) != SQLITE_OK) {
            free(ids);
            return pb__sqlite_write_fail(q, rc, "lease");
        }
    }
    free(ids);
    return 0;
}

static int apply_sub_kill(struct sq *q, struct pb_op *op)
{
    struct pb_op_sub_kill *k = &op->u.sub_kill;
    k->dead = 0;
    if (!k->pipeline || !k->output || !k->sub || !k->reason) {
        op->status = PB_EINVAL;
        return 0;
    }
    size_t rl = pb__store_utf8_cut(k->reason, PB_ERROR_EXCERPT_MAX);
    for (int w = W_SUB_KILL_ATT; w <= W_SUB_KILL_DLV; w++) {
        sqlite3_stmt *st = q->ws[w];
        sqlite3_bind_text(st, 1, k->pipeline, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, k->output, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, k->sub, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, k->now);
        sqlite3_bind_text(st, 5, k->reason, (int)rl, SQLITE_STATIC);
        int rc = pb__sqlite_step_done(st);
        if (rc != SQLITE_OK)
            return pb__sqlite_write_fail(q, rc, "kill sub-output deliveries");
        if (w == W_SUB_KILL_DLV)
            k->dead = sqlite3_changes64(q->db);
    }
    return 0;
}

static int apply_release(struct sq *q, struct pb_op *op)
{
    struct pb_op_release *r = &op->u.release;
    sqlite3_stmt *st = q->ws[W_LEASE_DROP];
    if (r->n && !r->ids) {
        op->status = PB_EINVAL;
        return 0;
    }
    for (size_t i = 0; i < r->n; i++) {
        sqlite3_bind_int64(st, 1, r->ids[i]);
        sqlite3_bind_int64(st, 2, r->lease);
        int rc = pb__sqlite_step_done(st);
        if (rc != SQLITE_OK)
            return pb__sqlite_write_fail(q, rc, "release");
    }
    return 0;
}

static int apply_kv(struct sq *q, struct pb_op *op)
{
    if (!kv_ok(op->u.kv.kv, op->u.kv.n)) {
        op->status = PB_EINVAL;
        return 0;
    }
    return kv_write(q, op->u.kv.kv, op->u.kv.n, op->u.kv.now);
}

static void bind_lease(sqlite3_stmt *st, int i, int64_t lease, bool unleased)
{
    if (lease && !unleased)
        sqlite3_bind_int64(st, i, lease);
    else
        sqlite3_bind_null(st, i);
}

static int apply_result(struct sq *q, struct pb_op *op)
{
    struct pb_op_result *r = &op->u.result;
    sqlite3_stmt *st;
    size_t elen = r->error ? pb__store_utf8_cut(r->error, PB_ERROR_EXCERPT_MAX) : 0;
    int rc;

    if (r->attempt < 1 || (r->state != PB_DSTATE_PENDING && r->state != PB_DSTATE_DELIVERED &&
                           r->state != PB_DSTATE_DEAD && r->state != PB_DSTATE_FILTERED)) {
        op->status = PB_EINVAL;
        return 0;
    }

    /* Only a pending delivery takes a result: final states stay final. */
    st = q->ws[W_DLV_RESULT];
    sqlite3_bind_int64(st, 1, r->delivery_id);
    sqlite3_bind_int(st, 2, (int)r->state);
    sqlite3_bind_int(st, 3, r->attempt);
    sqlite3_bind_int64(st, 4, r->next_at);
    sqlite3_bind_int64(st, 5, r->started_at + r->latency_ms);
    sqlite3_bind_int(st, 6, r->status);
    if (r->error)
        sqlite3_bind_text(st, 7, r->error, (int)elen, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 7);
    bind_lease(st, 8, r->lease, false);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "update delivery");
    if (sqlite3_changes(q->db) == 0) {
        op->status = PB_ENOTFOUND;
        return 0;
    }

    st = q->ws[W_ATT_INS];
    sqlite3_bind_int64(st, 1, r->delivery_id);
    sqlite3_bind_int(st, 2, r->attempt);
    sqlite3_bind_int64(st, 3, r->started_at);
    sqlite3_bind_int64(st, 4, r->latency_ms);
    sqlite3_bind_int(st, 5, r->status);
    sqlite3_bind_int(st, 6, (int)r->state);
    if (r->error)
        sqlite3_bind_text(st, 7, r->error, (int)elen, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 7);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "insert attempt");
    return 0;
}

/* Look up a DEAD delivery: 1 found, 0 not, < 0 error. */
int pb__sqlite_find_dead(struct sq *q, int64_t id, int64_t *msg_seq, char *pipeline, size_t plen,
                         char *output, size_t olen, char *sub, size_t slen)
{
    sqlite3_stmt *st = q->ws[W_DEAD_GET];
    int rc;

    sqlite3_bind_int64(st, 1, id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *msg_seq = sqlite3_column_int64(st, 0);
        if (pipeline)
            snprintf(pipeline, plen, "%s", (const char *)sqlite3_column_text(st, 1));
        if (output)
            snprintf(output, olen, "%s", (const char *)sqlite3_column_text(st, 2));
        if (sub) {
            const char *t = (const char *)sqlite3_column_text(st, 3);
            snprintf(sub, slen, "%s", t ? t : "");
        }
        sqlite3_reset(st);
        return 1;
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : pb__sqlite_write_fail(q, rc, "find dead delivery");
}

/* Dead delivery id becomes REPLAYED and a new pending one (unleased) takes
 * its place. 0 (*new_id set), PB_ENOTFOUND (op-local), or a broken
 * transaction. */
static int replay_one(struct sq *q, int64_t id, int64_t now, char *pipeline, size_t plen,
                      char *output, size_t olen, int64_t *new_id)
{
    sqlite3_stmt *st;
    int64_t msg_seq = 0;
    char sub[PB_SUB_ID_MAX + 8];
    int rc = pb__sqlite_find_dead(q, id, &msg_seq, pipeline, plen, output, olen, sub, sizeof(sub));
    if (rc <= 0)
        return rc == 0 ? PB_ENOTFOUND : rc;
    st = q->ws[W_DLV_MARK_REPLAYED];
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, now);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "mark replayed");
    st = q->ws[W_DLV_REPLAY];
    sqlite3_bind_int64(st, 1, msg_seq);
    sqlite3_bind_text(st, 2, pipeline, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, output, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, now);
    sqlite3_bind_int64(st, 5, id);
    if (sub[0])
        sqlite3_bind_text(st, 6, sub, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 6);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "insert replay");
    *new_id = sqlite3_last_insert_rowid(q->db);
    if (sub[0]) {
        /* The caller sees the sub-output it goes to, as the admin API names it. */
        size_t ol = strlen(output);
        snprintf(output + ol, olen - ol, "/%s", sub);
    }
    return 0;
}

static int apply_replay(struct sq *q, struct pb_op *op)
{
    struct pb_op_replay *r = &op->u.replay;
    r->new_delivery_id = 0;
    int rc = replay_one(q, r->delivery_id, r->now, r->pipeline, sizeof(r->pipeline), r->output,
                        sizeof(r->output), &r->new_delivery_id);
    if (rc == PB_ENOTFOUND) {
        op->status = rc;
        return 0;
    }
    return rc;
}

/* At most limit at a time, in id order (so new ids keep the old order): a
 * large replay is many short transactions, never one long one that holds
 * up every other commit. */
static int apply_replay_all(struct sq *q, struct pb_op *op)
{
    struct pb_op_replay_all *r = &op->u.replay_all;
    if (r->ids) {
        r->count = 0;
        r->more = false;
        for (size_t i = 0; i < r->nids; i++) {
            char pipeline[PB_NAME_MAX_STORE], output[2 * PB_NAME_MAX_STORE];
            int64_t nid = 0;
            int rc = replay_one(q, r->ids[i], r->now, pipeline, sizeof(pipeline), output,
                                sizeof(output), &nid);
            if (rc && rc != PB_ENOTFOUND)
                return rc;
            r->count += rc == 0;
        }
        return 0;
    }
    int variant = (r->pipeline ? 1 : 0) | (r->output ? 2 : 0);
    sqlite3_stmt *st = q->ws[W_RALL + variant];
    size_t limit = r->limit ? r->limit : PB_REPLAY_ALL_BATCH;
    int64_t *ids = malloc(limit * sizeof(*ids));
    size_t n = 0;
    int rc;

    r->count = 0;
    if (!ids) {
        op->status = PB_ENOMEM;
        return 0;
    }
    if (r->pipeline)
        sqlite3_bind_text(st, 1, r->pipeline, -1, SQLITE_STATIC);
    if (r->output) {
        sqlite3_bind_text(st, 2, r->output, -1, SQLITE_STATIC);
        if (r->sub)
            sqlite3_bind_text(st, 5, r->sub, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 5);
    }
    sqlite3_bind_int64(st, 4, r->since);
    sqlite3_bind_int64(st, 6, (int64_t)limit);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && n < limit)
        ids[n++] = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        free(ids);
        return pb__sqlite_write_fail(q, rc, "replay all");
    }
    for (size_t i = 0; i < n; i++) {
        char pipeline[PB_NAME_MAX_STORE], output[2 * PB_NAME_MAX_STORE];
        int64_t nid = 0;
        rc =
            replay_one(q, ids[i], r->now, pipeline, sizeof(pipeline), output, sizeof(output), &nid);
        if (rc && rc != PB_ENOTFOUND) {
            free(ids);
            return rc;
        }
        if (rc == 0)
            r->count++;
    }
    r->more = n == limit;
    free(ids);
    return 0;
}

/* Delete dead delivery id (and its message when unused): 1 done, 0 not
 * dead, < 0 a broken transaction. */
static int purge_one(struct sq *q, int64_t id)
{
    int64_t msg_seq = 0;
    sqlite3_stmt *st;
    int rc = pb__sqlite_find_dead(q, id, &msg_seq, NULL, 0, NULL, 0, NULL, 0);

    if (rc <= 0)
        return rc;
    st = q->ws[W_DLV_DEL]; /* attempts go with it (ON DELETE CASCADE) */
    sqlite3_bind_int64(st, 1, id);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "delete delivery");
    st = q->ws[W_MSG_DEL_UNUSED];
    sqlite3_bind_int64(st, 1, msg_seq);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "delete message");
    return 1;
}

static int apply_purge(struct sq *q, struct pb_op *op)
{
    struct pb_op_purge *p = &op->u.purge;
    int rc;
    p->count = 0;
    if (!p->ids) {
        rc = purge_one(q, p->delivery_id);
        if (rc == 0)
            op->status = PB_ENOTFOUND;
        p->count = rc > 0;
        return rc < 0 ? rc : 0;
    }
    for (size_t i = 0; i < p->nids; i++) {
        if ((rc = purge_one(q, p->ids[i])) < 0)
            return rc;
        p->count += rc;
    }
    return 0;
}

static int apply_expire(struct sq *q, struct pb_op *op)
{
    struct pb_op_expire *e = &op->u.expire;
    sqlite3_stmt *st;
    int rc;

    e->deleted = 0;
    st = q->ws[W_IDEM_EXPIRE];
    sqlite3_bind_int64(st, 1, e->now);
    sqlite3_bind_int64(st, 2, PB_STORE_EXPIRE_BATCH);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "expire idempotency keys");
    if (e->retention_ms < 0)
        return 0;
    st = q->ws[W_MSG_EXPIRE];
    sqlite3_bind_int64(st, 1, e->now - e->retention_ms);
    sqlite3_bind_int64(st, 2, PB_STORE_EXPIRE_BATCH);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "expire messages");
    e->deleted = sqlite3_changes64(q->db);
    return 0;
}

/* Validation comes first in each of these: an op-local outcome must leave
 * nothing written, since the transaction goes on with the other ops. */

static int apply_fanout(struct sq *q, struct pb_op *op)
{
    struct pb_op_fanout *f = &op->u.fanout;
    size_t nlen = f->note ? pb__store_utf8_cut(f->note, PB_ERROR_EXCERPT_MAX) : 0;
    sqlite3_stmt *st;
    int rc;

    if (f->attempt < 1 || (f->n && !f->subs)) {
        op->status = PB_EINVAL;
        return 0;
    }
    for (size_t i = 0; i < f->n; i++) {
        if (!f->subs[i]) {
            op->status = PB_EINVAL;
            return 0;
        }
    }

    st = q->ws[W_FAN_PARENT];
    sqlite3_bind_int64(st, 1, f->delivery_id);
    sqlite3_bind_int(st, 2, f->attempt);
    sqlite3_bind_int64(st, 3, f->now);
    bind_lease(st, 4, f->lease, false);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "finish fanned-out delivery");
    if (sqlite3_changes(q->db) == 0) {
        op->status = PB_ENOTFOUND;
        return 0;
    }

    st = q->ws[W_ATT_INS];
    sqlite3_bind_int64(st, 1, f->delivery_id);
    sqlite3_bind_int(st, 2, f->attempt);
    sqlite3_bind_int64(st, 3, f->now);
    sqlite3_bind_int64(st, 4, 0);
    sqlite3_bind_int(st, 5, 0);
    sqlite3_bind_int(st, 6, PB_DSTATE_DELIVERED);
    if (f->note)
        sqlite3_bind_text(st, 7, f->note, (int)nlen, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 7);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "insert attempt");

    /* One insert per child, in order: AUTOINCREMENT ids grow with i. */
    st = q->ws[W_FAN_CHILD];
    sqlite3_bind_int64(st, 1, f->delivery_id);
    sqlite3_bind_int64(st, 3, f->now);
    for (size_t i = 0; i < f->n; i++) {
        sqlite3_bind_text(st, 2, f->subs[i], -1, SQLITE_STATIC);
        bind_lease(st, 4, f->lease, f->unleased && f->unleased[i]);
        if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
            return pb__sqlite_write_fail(q, rc, "insert fan-out delivery");
        if (f->child_ids)
            f->child_ids[i] = sqlite3_last_insert_rowid(q->db);
    }
    return 0;
}

/* Insert one delivery per name: pending (state 0) or final with note. */
static int insert_deliveries(struct sq *q, int64_t msg_seq, const char *pipeline, int64_t now,
                             size_t n, const char *const *outputs, enum pb_dstate state,
                             const char *note, int64_t lease, uint64_t unleased, int64_t *ids)
{
    sqlite3_stmt *st = q->ws[state == PB_DSTATE_PENDING ? W_DLV_INS : W_DLV_FINAL];
    int rc;

    sqlite3_bind_int64(st, 1, msg_seq);
    sqlite3_bind_text(st, 2, pipeline, -1, SQLITE_STATIC);
    if (state == PB_DSTATE_PENDING) {
        sqlite3_bind_int64(st, 4, now);
        sqlite3_bind_int64(st, 5, now);
    } else {
        sqlite3_bind_int(st, 4, (int)state);
        sqlite3_bind_int64(st, 5, now);
        pb__sqlite_bind_text_or_null(st, 6, note);
    }
    for (size_t i = 0; i < n; i++) {
        sqlite3_bind_text(st, 3, outputs[i], -1, SQLITE_STATIC);
        if (state == PB_DSTATE_PENDING)
            bind_lease(st, 6, lease, i < 64 && (unleased >> i & 1));
        if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
            return pb__sqlite_write_fail(q, rc, "insert delivery");
        if (ids)
            ids[i] = sqlite3_last_insert_rowid(q->db);
    }
    return 0;
}

static int apply_route(struct sq *q, struct pb_op *op)
{
    struct pb_op_route *r = &op->u.route;
    size_t nlen = r->note ? pb__store_utf8_cut(r->note, PB_ERROR_EXCERPT_MAX) : 0;
    sqlite3_stmt *st;
    int rc;

    if (r->attempt < 1 || !r->pipeline || (r->nmsgs && !r->msgs) ||
        (r->state != PB_DSTATE_DELIVERED && r->state != PB_DSTATE_FILTERED)) {
        op->status = PB_EINVAL;
        return 0;
    }
    for (size_t i = 0; i < r->nmsgs; i++) {
        const struct pb_route_msg *m = &r->msgs[i];
        if ((m->noutputs && !m->outputs) || (m->nfinal && !m->final_outputs) ||
            (m->msg_id && !m->body)) {
            op->status = PB_EINVAL;
            return 0;
        }
    }

    st = q->ws[W_ROUTE_FINISH];
    sqlite3_bind_int64(st, 1, r->delivery_id);
    sqlite3_bind_int(st, 2, (int)r->state);
    sqlite3_bind_int(st, 3, r->attempt);
    sqlite3_bind_int64(st, 4, r->now);
    if (r->note)
        sqlite3_bind_text(st, 5, r->note, (int)nlen, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 5);
    bind_lease(st, 6, r->lease, false);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "finish route delivery");
    if (sqlite3_changes(q->db) == 0) {
        op->status = PB_ENOTFOUND;
        return 0;
    }
    st = q->ws[W_ATT_INS];
    sqlite3_bind_int64(st, 1, r->delivery_id);
    sqlite3_bind_int(st, 2, r->attempt);
    sqlite3_bind_int64(st, 3, r->now);
    sqlite3_bind_int64(st, 4, 0);
    sqlite3_bind_int(st, 5, 0);
    sqlite3_bind_int(st, 6, (int)r->state);
    if (r->note)
        sqlite3_bind_text(st, 7, r->note, (int)nlen, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 7);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "insert attempt");

    for (size_t i = 0; i < r->nmsgs; i++) {
        struct pb_route_msg *m = &r->msgs[i];
        m->msg_seq = r->msg_seq;
        if (m->msg_id) {
            st = q->ws[W_CHILD_INS];
            sqlite3_bind_text(st, 1, m->msg_id, -1, SQLITE_STATIC);
            sqlite3_bind_blob64(st, 2, m->body, m->len, SQLITE_STATIC);
            sqlite3_bind_int64(st, 3, pb__store_body_crc(m->body, m->len));
            sqlite3_bind_int64(st, 4, r->msg_seq);
            pb__sqlite_bind_text_or_null(st, 5, m->key);
            if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
                return pb__sqlite_write_fail(q, rc, "insert split message");
            m->msg_seq = sqlite3_last_insert_rowid(q->db);
        } else if (m->body) {
            st = q->ws[W_ROUTED_PUT];
            sqlite3_bind_int64(st, 1, r->msg_seq);
            sqlite3_bind_blob64(st, 2, m->body, m->len, SQLITE_STATIC);
            sqlite3_bind_int64(st, 3, pb__store_body_crc(m->body, m->len));
            pb__sqlite_bind_text_or_null(st, 4, m->key);
            if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
                return pb__sqlite_write_fail(q, rc, "insert routed body");
        }
        rc = insert_deliveries(q, m->msg_seq, r->pipeline, r->now, m->noutputs, m->outputs,
                               PB_DSTATE_PENDING, NULL, r->lease, m->unleased, m->delivery_ids);
        if (rc == 0)
            rc = insert_deliveries(q, m->msg_seq, r->pipeline, r->now, m->nfinal, m->final_outputs,
                                   m->final_state, m->final_note, 0, 0, NULL);
        if (rc)
            return rc;
    }
    return 0;
}

static int apply_orphans(struct sq *q, struct pb_op *op)
{
    struct pb_op_orphans *o = &op->u.orphans;
    int rc;

    o->dead = 0;
    if (!o->pipeline || !o->output) {
        op->status = PB_EINVAL;
        return 0;
    }
    for (int w = W_ORPHAN_ATT; w <= W_ORPHAN_DLV; w++) {
        sqlite3_stmt *st = q->ws[w];
        sqlite3_bind_text(st, 1, o->pipeline, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, o->output, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, o->now);
        if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
            return pb__sqlite_write_fail(q, rc, "dead-letter a removed output's deliveries");
    }
    o->dead = sqlite3_changes64(q->db);
    return 0;
}

static int sq_apply(void *ctx, struct pb_op *op)
{
    struct sq *q = ctx;

    switch (op->kind) {
    case PB_OP_INGEST:
        return apply_ingest(q, op);
    case PB_OP_RESULT:
        return apply_result(q, op);
    case PB_OP_REPLAY:
        return apply_replay(q, op);
    case PB_OP_REPLAY_ALL:
        return apply_replay_all(q, op);
    case PB_OP_PURGE:
        return apply_purge(q, op);
    case PB_OP_EXPIRE:
        return apply_expire(q, op);
    case PB_OP_FANOUT:
        return apply_fanout(q, op);
    case PB_OP_ROUTE:
        return apply_route(q, op);
    case PB_OP_ORPHANS:
        return apply_orphans(q, op);
    case PB_OP_SUBMIT:
        return apply_submit(q, op);
    case PB_OP_KV:
        return apply_kv(q, op);
    case PB_OP_CLAIM:
        return apply_claim(q, op);
    case PB_OP_RELEASE:
        return apply_release(q, op);
    case PB_OP_SUB_KILL:
        return apply_sub_kill(q, op);
    case PB_OP_INJECT:
        return pb__sqlite_apply_inject(q, op);
    }
    op->status = PB_EINVAL;
    return 0;
}

const struct pb_store_backend pb__store_sqlite = {
    .name = "sqlite",
    .prefix = "sqlite:",
    .open = sq_open,
    .close = sq_close,
    .node_id = sq_node_id,
    .epoch = sq_epoch,
    .begin = sq_begin,
    .sync = sq_sync,
    .apply = sq_apply,
    .commit = sq_commit,
    .rollback = sq_rollback,
    .count = pb__sqlite_count,
    .read_message = pb__sqlite_read_message,
    .read_dead_letters = pb__sqlite_read_dead_letters,
    .read_dead_letter = pb__sqlite_read_dead_letter,
    .search_messages = pb__sqlite_search_messages,
    .kv_load = pb__sqlite_kv_load,
    .test_max_pages = sq_test_max_pages,
};
