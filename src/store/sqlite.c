/* sqlite.c - the SQLite state store backend ("sqlite:PATH").
 *
 * This part opens the store (schema, migrations, the lease epoch) and runs
 * the writer's transactions: one write connection, used only by the writer
 * thread (store.c), applies the ops (sqlite_write.c) with cached prepared
 * statements. Reads go through a pool of separate connections
 * (sqlite_read.c).
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
    /* 9: an attempt that ends its delivery at the first try is kept in the
     * delivery's own row (last_status, last_error, updated_at and this
     * latency) instead of a row of attempts: most deliveries are one such. */
    "ALTER TABLE deliveries ADD COLUMN last_latency_ms INTEGER;",
    /* 10: what the dashboard searches and links: each message's idempotency
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
    /* 11: what the partner answered (an excerpt of at most 256 bytes of
     * text, NULL when it said nothing), per attempt row, and in the
     * delivery's row for the attempt that ended it at its first try. */
    ("ALTER TABLE attempts ADD COLUMN answer TEXT;"
     "ALTER TABLE deliveries ADD COLUMN last_answer TEXT;"),
};

const char *pb__sqlite_migration_sql(int v)
{
    return v >= 1 && v <= (int)(sizeof(migrations) / sizeof(migrations[0])) ? migrations[v - 1]
                                                                            : NULL;
}
#define NMIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))
_Static_assert(NMIGRATIONS == PB_STORE_SCHEMA_VERSION, "one migration per schema version");

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
        rc = sqlite3_prepare_v3(q->db, pb__sqlite_wsql[i], -1, SQLITE_PREPARE_PERSISTENT, &q->ws[i],
                                NULL);
        if (rc != SQLITE_OK) {
            pb_err_set(err, pb__sqlite_map_rc(q->db, rc),
                       "state store %s: cannot prepare statement: %s", q->display,
                       sqlite3_errmsg(q->db));
            goto fail;
        }
    }
    if (pb__sqlite_ckpt_start(q, err) < 0)
        goto fail;
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
    /* Readers and the checkpointer first: the last connection to close
     * checkpoints the WAL. */
    pb__sqlite_readers_close(q);
    pb__sqlite_ckpt_stop(q);
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

/* ---- transactions -------------------------------------------------------------------- */

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

const struct pb_store_backend pb__store_sqlite = {
    .name = "sqlite",
    .prefix = "sqlite:",
    .open = sq_open,
    .close = sq_close,
    .node_id = sq_node_id,
    .epoch = sq_epoch,
    .begin = sq_begin,
    .sync = sq_sync,
    .apply = pb__sqlite_apply,
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
