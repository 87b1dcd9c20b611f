/* test_store.c - the state store: opening and refusing, migrations, every
 * writer op, group commit and back-pressure, reads and JSON views.
 *
 * Every backend runs the same ops: with PB_TEST_STORE_URL set to a
 * PostgreSQL database (postgres://USER@HOST:PORT/DB; the system test
 * test_store_postgres.py starts one and runs this binary so), each test
 * gets a schema of its own there instead of a SQLite file, and the tests
 * that are about SQLite's file (its header, log, lock, pages) are skipped. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <sqlite3.h>

#include "admin/views.h"
#include "pb_test.h"
#include "store/backend.h"
#include "store/sqlite_int.h"
#include "store/pb_store.h"

/* ---- helpers ----------------------------------------------------------------------- */

struct tdir {
    char dir[64];
    char path[320]; /* dir/state.db, or the PostgreSQL URL */
    char url[320];  /* sqlite:path, or postgres://...?schema=t_... */
    bool pg;
    char schema[32];
};

/* The PostgreSQL database every test makes a schema in, or NULL: SQLite. */
static const char *pg_base(void)
{
    const char *u = getenv("PB_TEST_STORE_URL");
    return u && *u ? u : NULL;
}

/* A test about SQLite itself: skipped against another backend. */
#define SQLITE_ONLY()                                                                              \
    do {                                                                                           \
        if (pg_base()) {                                                                           \
            printf("  (SQLite only)\n");                                                           \
            return;                                                                                \
        }                                                                                          \
    } while (0)

/* Run sql on the PostgreSQL database of url (its schema=, if any, first
 * in the search path); the first column of the first row as an integer,
 * -1 on error. */
static void pg_no_notice(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

static long long pg_sql(const char *url, const char *sql, bool quiet)
{
    char base[320], schema[40] = "";
    snprintf(base, sizeof(base), "%s", url);
    char *sp = strstr(base, "schema=");
    if (sp) {
        snprintf(schema, sizeof(schema), "%.*s", (int)strcspn(sp + 7, "&"), sp + 7);
        char *q = sp - 1; /* the ? or & before it */
        memmove(q, sp + 7 + strlen(schema), strlen(sp + 7 + strlen(schema)) + 1);
    }
    PGconn *c = PQconnectdb(base);
    long long v = -1;
    if (PQstatus(c) == CONNECTION_OK) {
        PQsetNoticeProcessor(c, pg_no_notice, NULL);
        char set[96];
        snprintf(set, sizeof(set), "SET search_path = \"%s\"", schema[0] ? schema : "patchbay");
        PQclear(PQexec(c, set));
        PGresult *r = PQexec(c, sql);
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_TUPLES_OK && PQntuples(r) > 0)
            v = PQgetisnull(r, 0, 0)
                    ? 0
                    : (PQgetvalue(r, 0, 0)[0] == 't' ? 1 : atoll(PQgetvalue(r, 0, 0)));
        else if (st == PGRES_COMMAND_OK)
            v = 0;
        else if (!quiet)
            fprintf(stderr, "  pg_sql: %s: %s", sql, PQerrorMessage(c));
        PQclear(r);
    }
    PQfinish(c);
    return v;
}

static void tdir_make(struct tdir *t)
{
    static int seq;
    memset(t, 0, sizeof(*t));
    snprintf(t->dir, sizeof(t->dir), "/tmp/pbstore-XXXXXX");
    if (!mkdtemp(t->dir)) {
        perror("mkdtemp");
        exit(2);
    }
    const char *base = pg_base();
    if (base) {
        t->pg = true;
        snprintf(t->schema, sizeof(t->schema), "t_%d_%d", (int)getpid(), ++seq);
        snprintf(t->url, sizeof(t->url), "%s%sschema=%s", base, strchr(base, '?') ? "&" : "?",
                 t->schema);
        snprintf(t->path, sizeof(t->path), "%s", t->url);
        return;
    }
    snprintf(t->path, sizeof(t->path), "%s/state.db", t->dir);
    snprintf(t->url, sizeof(t->url), "sqlite:%.300s", t->path);
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st;
    (void)flag;
    (void)f;
    return remove(p);
}

static void tdir_remove(struct tdir *t)
{
    nftw(t->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    if (t->pg) {
        char sql[96];
        snprintf(sql, sizeof(sql), "DROP SCHEMA IF EXISTS \"%s\" CASCADE", t->schema);
        pg_sql(pg_base(), sql, false);
    }
}

static struct pb_store *open_ok(const char *url, const struct pb_store_opts *o)
{
    struct pb_err err;
    pb_err_clear(&err);
    struct pb_store *s = pb_store_open(url, o, &err);
    if (!s)
        PB__FAIL("pb_store_open(%s): %s %s", url, pb_err_name(err.code), err.msg);
    return s;
}

static struct pb_store *open_started(const char *url)
{
    struct pb_store *s = open_ok(url, NULL);
    if (s && pb_store_start(s) != 0)
        PB__FAIL("pb_store_start failed");
    return s;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Poll until *counter reaches want or 20 s pass. */
static bool wait_count(atomic_int *counter, int want)
{
    int64_t deadline = mono_ms() + 20000;
    while (atomic_load(counter) < want) {
        if (mono_ms() > deadline)
            return false;
        sleep_ms(1);
    }
    return true;
}

static const char *const OUTS2[] = {"a", "b"};
static const char *const OUTS1[] = {"a"};

static void ingest_init(struct pb_op *op, const char *pipeline, const char *id, const void *body,
                        size_t len, const char *const *outs, size_t nouts, int64_t *ids)
{
    memset(op, 0, sizeof(*op));
    op->kind = PB_OP_INGEST;
    op->u.ingest.pipeline = pipeline;
    op->u.ingest.msg_id = id;
    op->u.ingest.body = body;
    op->u.ingest.len = len;
    op->u.ingest.received_at = 1000;
    op->u.ingest.first_due_at = 1000;
    op->u.ingest.outputs = outs;
    op->u.ingest.noutputs = nouts;
    op->u.ingest.delivery_ids = ids;
}

/* Ingest one message with a JSON body; returns op status. */
static int ingest(struct pb_store *s, const char *pipeline, const char *id, const char *const *outs,
                  size_t nouts, int64_t *ids)
{
    struct pb_op op;
    ingest_init(&op, pipeline, id, "{\"n\":1}", 7, outs, nouts, ids);
    return pb_store_exec(s, &op);
}

static int result(struct pb_store *s, int64_t id, int attempt, enum pb_dstate st, int status,
                  const char *error)
{
    struct pb_op op = {.kind = PB_OP_RESULT};
    op.u.result.delivery_id = id;
    op.u.result.attempt = attempt;
    op.u.result.started_at = 2000 + attempt;
    op.u.result.latency_ms = 15;
    op.u.result.status = status;
    op.u.result.state = st;
    op.u.result.next_at = 5000;
    op.u.result.error = error;
    return pb_store_exec(s, &op);
}

static int replay(struct pb_store *s, int64_t id, int64_t *new_id)
{
    struct pb_op op = {.kind = PB_OP_REPLAY};
    op.u.replay.delivery_id = id;
    op.u.replay.now = 9000;
    int rc = pb_store_exec(s, &op);
    if (new_id)
        *new_id = op.u.replay.new_delivery_id;
    return rc;
}

static int purge(struct pb_store *s, int64_t id)
{
    struct pb_op op = {.kind = PB_OP_PURGE};
    op.u.purge.delivery_id = id;
    return pb_store_exec(s, &op);
}

struct loaded {
    int n;
    int64_t ids[64];
    int attempts[64];
    char msg_ids[64][PB_MSG_ID_MAX];
    char bodies[64][64];
    size_t lens[64];
    bool ctype_null[64];
    bool damaged[64];
    int stop_after;
};

static int collect_cb(void *arg, const struct pb_pending *row)
{
    struct loaded *l = arg;
    if (l->n < 64) {
        l->ids[l->n] = row->delivery_id;
        l->attempts[l->n] = row->attempts;
        snprintf(l->msg_ids[l->n], PB_MSG_ID_MAX, "%s", row->msg_id);
        l->lens[l->n] = row->len;
        memcpy(l->bodies[l->n], row->body, row->len < 64 ? row->len : 64);
        l->ctype_null[l->n] = row->content_type == NULL;
        l->damaged[l->n] = row->body_damaged;
    }
    l->n++;
    return l->stop_after && l->n >= l->stop_after;
}

struct load_filter {
    struct loaded *l;
    int64_t after;
    size_t limit;
    int64_t ids[4096];
    size_t nids;
};

static int filter_cb(void *arg, const struct pb_pending *row)
{
    struct load_filter *f = arg;
    if (f->nids < 4096)
        f->ids[f->nids++] = row->delivery_id;
    if (row->delivery_id <= f->after)
        return 0;
    if ((size_t)f->l->n >= f->limit)
        return 1;
    return collect_cb(f->l, row);
}

/* The pending deliveries of pipeline/output ("output/sub" for a
 * sub-output) with id > after, at most limit: claimed with a lease no
 * delivery holds, then released again, so they stay as they were. */
static int load(struct pb_store *s, const char *pipeline, const char *output, int64_t after,
                size_t limit, struct loaded *l)
{
    static int64_t lease = 1000000000;
    static struct load_filter f;
    char out[128];
    const char *slash = strchr(output, '/');
    memset(l, 0, sizeof(*l));
    memset(&f, 0, sizeof(f));
    if (pb_store_start(s) != 0) /* a claim goes through the writer */
        return PB_ESHUTDOWN;
    f.l = l;
    f.after = after;
    f.limit = limit;
    snprintf(out, sizeof(out), "%.*s", slash ? (int)(slash - output) : (int)strlen(output), output);
    struct pb_op op = {.kind = PB_OP_CLAIM};
    op.u.claim = (struct pb_op_claim){.pipeline = pipeline,
                                      .output = out,
                                      .sub = slash ? slash + 1 : NULL,
                                      .limit = 4096,
                                      .lease = ++lease,
                                      .cb = filter_cb,
                                      .arg = &f};
    int rc = pb_store_exec(s, &op);
    if (rc == 0 && f.nids) {
        struct pb_op rel = {.kind = PB_OP_RELEASE};
        rel.u.release = (struct pb_op_release){.n = f.nids, .ids = f.ids, .lease = lease};
        rc = pb_store_exec(s, &rel); /* unleased again, as they were */
    }
    return rc;
}

/* Run one SQL query directly on the store (a SQLite file, or the
 * PostgreSQL schema of a URL) and return the first column of the first row
 * as an integer (-1 on error). */
static long long sql_int(const char *path, const char *sql)
{
    if (strncmp(path, "postgres", 8) == 0)
        return pg_sql(path, sql, false);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long long v = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static int sql_exec(const char *path, const char *sql)
{
    if (strncmp(path, "postgres", 8) == 0)
        return pg_sql(path, sql, false) < 0 ? SQLITE_ERROR : SQLITE_OK;
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    sqlite3_close(db);
    return rc;
}

/* Whole file into a malloc'd buffer. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long n;
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* n messages ("m0".."m<n-1>", the same body, outputs "a" and "b") into the
 * store at url, queued before the writer starts so they commit in batches. */
static void bulk_ingest(const char *url, int n, const void *body, size_t len)
{
    struct pb_op *ops = calloc((size_t)n, sizeof(*ops));
    char(*ids)[16] = calloc((size_t)n, sizeof(*ids));
    struct pb_store *s = open_ok(url, NULL);

    if (!ops || !ids || !s) {
        PB__FAIL("bulk_ingest setup failed");
        goto out;
    }
    for (int i = 0; i < n; i++) {
        snprintf(ids[i], sizeof(ids[i]), "m%d", i);
        ingest_init(&ops[i], "p", ids[i], body, len, OUTS2, 2, NULL);
        if (pb_store_submit(s, &ops[i]) != 0) {
            PB__FAIL("submit %d failed", i);
            break;
        }
    }
    pb_store_stop(s);
    for (int i = 0; i < n; i++)
        if (ops[i].status != 0) {
            PB__FAIL("ingest %d: %s", i, pb_err_name(ops[i].status));
            break;
        }
out:
    pb_store_destroy(s);
    free(ops);
    free(ids);
}

/* ---- open, migrations, refusals -------------------------------------------------------- */

PB_TEST(open_create_reopen_keeps_data_and_node_id)
{
    SQLITE_ONLY();
    struct tdir t;
    char node[32], url[200], cwd[512];
    int64_t ids[2];
    struct loaded l;

    tdir_make(&t);
    /* Relative to cwd, parent directories created. */
    PB_CHECK(getcwd(cwd, sizeof(cwd)) != NULL);
    PB_EQ_INT(chdir(t.dir), 0);
    snprintf(url, sizeof(url), "sqlite:./deep/er/state.db");
    struct pb_store *s = open_started(url);
    PB_EQ_INT(chdir(cwd), 0);
    if (!s)
        goto out;
    snprintf(node, sizeof(node), "%s", pb_store_node_id(s));
    PB_EQ_INT(strlen(node), 16);
    PB_EQ_INT(strspn(node, "0123456789abcdef"), 16);
    PB_EQ_INT(ingest(s, "p", "m1", OUTS2, 2, ids), 0);
    pb_store_destroy(s);

    /* Private: it holds message bodies. */
    struct stat st;
    snprintf(url, sizeof(url), "%s/deep/er/state.db", t.dir);
    PB_EQ_INT(stat(url, &st), 0);
    PB_EQ_INT(st.st_mode & 0777, 0600);

    snprintf(url, sizeof(url), "sqlite:%s/deep/er/state.db", t.dir);
    s = open_started(url);
    if (!s)
        goto out;
    PB_EQ_STR(pb_store_node_id(s), node);
    PB_EQ_INT(load(s, "p", "b", 0, 10, &l), 0);
    PB_EQ_INT(l.n, 1);
    PB_EQ_INT(l.ids[0], ids[1]);
    PB_EQ_STR(l.msg_ids[0], "m1");
    pb_store_destroy(s);

    /* A second, different store has a different node id. */
    s = open_ok(t.url, NULL);
    if (s)
        PB_CHECK(strcmp(pb_store_node_id(s), node) != 0);
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

PB_TEST(second_daemon_on_the_same_store_refused)
{
    SQLITE_ONLY();
    struct tdir t;
    tdir_make(&t);
    struct pb_store *s = open_ok(t.url, NULL);
    if (s) {
        struct pb_err err;
        pb_err_clear(&err);
        struct pb_store *twin = pb_store_open(t.url, NULL, &err);
        PB_CHECK(twin == NULL);
        PB_EQ_INT(err.code, PB_EAGAIN);
        PB_CONTAINS(err.msg, "in use by another patchbay");
        pb_store_destroy(twin);
        pb_store_destroy(s);
        /* Released with the store: the next one may open it. */
        s = open_ok(t.url, NULL);
        pb_store_destroy(s);
    }
    tdir_remove(&t);
}

PB_TEST(migrations_idempotent)
{
    SQLITE_ONLY();
    struct tdir t;
    tdir_make(&t);
    for (int i = 0; i < 3; i++)
        pb_store_destroy(open_ok(t.url, NULL));
    PB_EQ_INT(sql_int(t.path, "SELECT value FROM meta WHERE key = 'schema_version'"),
              PB_STORE_SCHEMA_VERSION);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM meta"), 4);
    /* Each open is a new epoch: leases of the last one are free to claim. */
    PB_EQ_INT(sql_int(t.path, "SELECT value FROM meta WHERE key = 'epoch'"), 3);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM sqlite_schema WHERE type = 'table'"
                              " AND name IN ('meta','messages','deliveries','attempts',"
                              "'idempotency','kv')"),
              6);
    sqlite3 *db;
    sqlite3_stmt *st;
    PB_EQ_INT(sqlite3_open(t.path, &db), SQLITE_OK);
    PB_EQ_INT(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    PB_EQ_INT(sqlite3_step(st), SQLITE_ROW);
    PB_EQ_STR((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    sqlite3_close(db);
    tdir_remove(&t);
}

/* A schema version 1 store as patchbay 0.1 wrote it: the DDL of migration 1,
 * frozen here on purpose (it must not follow the current code), plus a
 * message with a pending and a dead delivery, an attempt and an
 * idempotency key. */
static const char V1_FIXTURE[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA application_id=1885495673;"
    "BEGIN;"
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE messages(seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
    " pipeline TEXT NOT NULL, received_at INTEGER NOT NULL, content_type TEXT,"
    " body BLOB NOT NULL);"
    "CREATE INDEX messages_received ON messages(received_at);"
    "CREATE TABLE deliveries(id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " msg_seq INTEGER NOT NULL REFERENCES messages(seq) ON DELETE CASCADE,"
    " pipeline TEXT NOT NULL, output TEXT NOT NULL, state INTEGER NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0, next_at INTEGER NOT NULL,"
    " created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, last_status INTEGER,"
    " last_error TEXT, replay_of INTEGER);"
    "CREATE INDEX deliveries_pending ON deliveries(pipeline, output, id) WHERE state = 0;"
    "CREATE INDEX deliveries_dead ON deliveries(pipeline, output, id) WHERE state = 2;"
    "CREATE INDEX deliveries_msg ON deliveries(msg_seq);"
    "CREATE TABLE attempts(delivery_id INTEGER NOT NULL REFERENCES deliveries(id)"
    " ON DELETE CASCADE, n INTEGER NOT NULL, started_at INTEGER NOT NULL,"
    " latency_ms INTEGER NOT NULL, status INTEGER NOT NULL, state INTEGER NOT NULL,"
    " error TEXT, PRIMARY KEY (delivery_id, n)) WITHOUT ROWID;"
    "CREATE TABLE idempotency(pipeline TEXT NOT NULL, key TEXT NOT NULL, msg_id TEXT NOT NULL,"
    " expires_at INTEGER NOT NULL, PRIMARY KEY (pipeline, key)) WITHOUT ROWID;"
    "CREATE INDEX idempotency_expires ON idempotency(expires_at);"
    "INSERT INTO meta VALUES ('node_id', '0123456789abcdef'), ('created_at', '500'),"
    " ('schema_version', '1');"
    "INSERT INTO messages(id, pipeline, received_at, content_type, body)"
    " VALUES ('old-1', 'p', 1000, 'application/json', CAST('{\"v\":1}' AS BLOB));"
    "INSERT INTO deliveries(msg_seq, pipeline, output, state, attempts, next_at, created_at,"
    " updated_at) VALUES (1, 'p', 'a', 0, 0, 1000, 1000, 1000);"
    "INSERT INTO deliveries(msg_seq, pipeline, output, state, attempts, next_at, created_at,"
    " updated_at, last_status, last_error) VALUES (1, 'p', 'b', 2, 1, 1000, 1000, 1500, 410,"
    " 'gone');"
    "INSERT INTO attempts VALUES (2, 1, 1490, 10, 410, 2, 'gone');"
    "INSERT INTO idempotency VALUES ('p', 'k-1', 'old-1', 9000000000000);"
    "COMMIT;";

PB_TEST(migrate_v1_to_v2_keeps_data)
{
    SQLITE_ONLY();
    struct tdir t;
    struct pb_err err;
    struct loaded l;
    struct pb_op op;
    int64_t ids[1];

    tdir_make(&t);
    PB_EQ_INT(sql_exec(t.path, V1_FIXTURE), SQLITE_OK);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM sqlite_schema WHERE name = 'endpoints'"), 0);

    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    PB_EQ_STR(pb_store_node_id(s), "0123456789abcdef");
    PB_EQ_INT(load(s, "p", "a", 0, 10, &l), 0);
    PB_EQ_INT(l.n, 1);
    PB_EQ_INT(l.ids[0], 1);
    PB_EQ_STR(l.msg_ids[0], "old-1");
    PB_EQ_INT(l.lens[0], 7);
    PB_CHECK(!l.damaged[0]); /* stored without a checksum: taken as it is */
    json_t *dl = pb_admin_dead_letter_json(s, 2, &err);
    PB_CHECK(dl != NULL);
    PB_EQ_STR(json_string_value(json_object_get(dl, "last_error")), "gone");
    PB_EQ_INT(json_integer_value(json_object_get(json_object_get(dl, "body"), "v")), 1);
    PB_EQ_INT(json_array_size(json_object_get(dl, "attempt_log")), 1);
    json_decref(dl);

    /* The idempotency key still holds; new ids carry on past the old ones. */
    ingest_init(&op, "p", "new-1", "{}", 2, OUTS1, 1, ids);
    op.u.ingest.idem_key = "k-1";
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_CHECK(op.u.ingest.duplicate);
    PB_EQ_STR(op.u.ingest.dup_msg_id, "old-1");
    PB_EQ_INT(ingest(s, "p", "new-2", OUTS1, 1, ids), 0);
    PB_EQ_INT(ids[0], 3);

    pb_store_destroy(s);

    PB_EQ_INT(sql_int(t.path, "SELECT value FROM meta WHERE key = 'schema_version'"),
              PB_STORE_SCHEMA_VERSION);
    PB_EQ_INT(sql_int(t.path, "SELECT value FROM meta WHERE key = 'created_at'"), 500);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM sqlite_schema WHERE name = 'endpoints'"), 0);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM messages"), 2);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries"), 3);

    /* Opening again migrates nothing and keeps it all. */
    s = open_ok(t.url, NULL);
    pb_store_destroy(s);
    PB_EQ_INT(sql_int(t.path, "SELECT value FROM meta WHERE key = 'schema_version'"),
              PB_STORE_SCHEMA_VERSION);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM kv"), 0);
out:
    tdir_remove(&t);
}

/* A body changed on disk behind SQLite's back (its pages hold no checksum
 * of the data) is reported when read back, never handed on as it is. */
PB_TEST(body_changed_on_disk_is_reported)
{
    struct tdir t;
    struct loaded l;
    struct pb_err err;
    int64_t ids[1];

    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    PB_EQ_INT(ingest(s, "p", "m-ok", OUTS1, 1, ids), 0);
    PB_EQ_INT(ingest(s, "p", "m-bad", OUTS1, 1, ids), 0);
    pb_store_destroy(s);
    /* Same length, one byte different, checksum column untouched. */
    PB_EQ_INT(sql_exec(t.path, t.pg ? "UPDATE messages SET body = convert_to(replace("
                                      "convert_from(body, 'UTF8'), '1', '7'), 'UTF8')"
                                      " WHERE id = 'm-bad'"
                                    : "UPDATE messages SET body = CAST(replace(CAST(body AS TEXT),"
                                      " '1', '7') AS BLOB) WHERE id = 'm-bad'"),
              SQLITE_OK);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM messages WHERE body_crc IS NOT NULL"), 2);

    s = open_started(t.url);
    if (!s)
        goto out;
    PB_EQ_INT(load(s, "p", "a", 0, 10, &l), 0);
    PB_EQ_INT(l.n, 2);
    PB_EQ_STR(l.msg_ids[0], "m-ok");
    PB_CHECK(!l.damaged[0]);
    PB_EQ_STR(l.msg_ids[1], "m-bad");
    PB_CHECK(l.damaged[1]);
    json_t *m = pb_admin_message_json(s, "m-bad", &err);
    PB_CHECK(m && json_is_true(json_object_get(m, "body_damaged")));
    json_decref(m);
    m = pb_admin_message_json(s, "m-ok", &err);
    PB_CHECK(m && !json_object_get(m, "body_damaged"));
    json_decref(m);
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

PB_TEST(newer_schema_refused_and_left_alone)
{
    struct tdir t;
    struct pb_err err;
    size_t n1, n2;

    tdir_make(&t);
    pb_store_destroy(open_ok(t.url, NULL));
    PB_EQ_INT(sql_exec(t.path, "UPDATE meta SET value = '99' WHERE key = 'schema_version'"),
              SQLITE_OK);
    char *before = t.pg ? NULL : slurp(t.path, &n1);
    PB_CHECK(pb_store_open(t.url, NULL, &err) == NULL);
    PB_EQ_INT(err.code, PB_ESTORE);
    PB_CONTAINS(err.msg, "schema version 99");
    PB_CONTAINS(err.msg, "newer");
    char *after = t.pg ? NULL : slurp(t.path, &n2);
    if (!t.pg) {
        PB_EQ_INT(n1, n2);
        PB_CHECK(before && after && memcmp(before, after, n1) == 0);
    }
    PB_EQ_INT(sql_int(t.path, "SELECT value FROM meta WHERE key = 'schema_version'"), 99);
    free(before);
    free(after);
    tdir_remove(&t);
}

/* PostgreSQL: a schema older than this binary's is refused with what to
 * do; `patchbay migrate` (opts.migrate) brings it up, data kept. */
PB_TEST(older_schema_refused_until_migrated)
{
    struct tdir t;
    struct pb_err err;
    struct pb_store_opts o;
    int64_t ids[2];

    tdir_make(&t);
    if (!t.pg) {
        printf("  (PostgreSQL only)\n");
        goto out;
    }
    pb_store_opts_default(&o);
    o.migrate_to = 1;
    o.migrate_only = true;
    struct pb_store *s = open_ok(t.url, &o);
    if (!s)
        goto out;
    pb_store_destroy(s);
    PB_EQ_INT(sql_int(t.path, "SELECT value FROM meta WHERE key = 'schema_version'"), 1);
    pb_err_clear(&err);
    PB_CHECK(pb_store_open(t.url, NULL, &err) == NULL);
    PB_EQ_INT(err.code, PB_ESTORE);
    PB_CONTAINS(err.msg, "schema version 1");
    PB_CONTAINS(err.msg, "patchbay migrate CONFIG");
    PB_EQ_INT(sql_int(t.path, "SELECT value FROM meta WHERE key = 'schema_version'"), 1);
    pb_store_opts_default(&o);
    o.migrate_only = true;
    s = open_ok(t.url, &o);
    if (!s)
        goto out;
    pb_store_destroy(s);
    PB_CHECK(sql_int(t.path, "SELECT value FROM meta WHERE key = 'schema_version'") > 1);
    s = open_started(t.url);
    if (!s)
        goto out;
    PB_EQ_INT(ingest(s, "p", "after-migrate", OUTS2, 2, ids), 0);
    pb_store_destroy(s);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries"), 2);
out:
    tdir_remove(&t);
}

PB_TEST(garbage_file_refused_unchanged)
{
    SQLITE_ONLY();
    struct tdir t;
    struct pb_err err;
    char garbage[10000];
    char wal[400];
    size_t n;

    tdir_make(&t);
    for (size_t i = 0; i < sizeof(garbage); i++)
        garbage[i] = (char)(i * 7919 % 251);
    FILE *f = fopen(t.path, "wb");
    fwrite(garbage, 1, sizeof(garbage), f);
    fclose(f);

    pb_err_clear(&err);
    PB_CHECK(pb_store_open(t.url, NULL, &err) == NULL);
    PB_EQ_INT(err.code, PB_ECORRUPT);
    PB_CONTAINS(err.msg, t.path);
    PB_CONTAINS(err.msg, "not a SQLite database");
    PB_CONTAINS(err.msg, "refusing to start");
    char *after = slurp(t.path, &n);
    PB_EQ_INT(n, sizeof(garbage));
    PB_CHECK(after && memcmp(after, garbage, sizeof(garbage)) == 0);
    free(after);
    snprintf(wal, sizeof(wal), "%s-wal", t.path);
    PB_CHECK(!file_exists(wal));
    tdir_remove(&t);
}

PB_TEST(sqlite_header_then_garbage_refused_unchanged)
{
    SQLITE_ONLY();
    struct tdir t;
    struct pb_err err;
    char buf[8192];
    size_t n;

    tdir_make(&t);
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (char)(i * 31 % 253);
    memcpy(buf, "SQLite format 3", 16);
    FILE *f = fopen(t.path, "wb");
    fwrite(buf, 1, sizeof(buf), f);
    fclose(f);
    PB_CHECK(pb_store_open(t.url, NULL, &err) == NULL);
    PB_EQ_INT(err.code, PB_ECORRUPT);
    PB_CONTAINS(err.msg, "refusing to start");
    char *after = slurp(t.path, &n);
    PB_EQ_INT(n, sizeof(buf));
    PB_CHECK(after && memcmp(after, buf, sizeof(buf)) == 0);
    free(after);
    tdir_remove(&t);
}

static void truncated_case(bool integrity_check)
{
    struct tdir t;
    struct pb_err err;
    struct pb_store_opts o;
    char body[600];
    size_t n1, n2;

    tdir_make(&t);
    memset(body, 'x', sizeof(body));
    bulk_ingest(t.url, 2000, body, sizeof(body));
    struct stat st;
    PB_EQ_INT(stat(t.path, &st), 0);
    PB_CHECK(st.st_size > 1000000);
    PB_EQ_INT(truncate(t.path, st.st_size / 2), 0);

    char *before = slurp(t.path, &n1);
    pb_store_opts_default(&o);
    o.integrity_check = integrity_check;
    pb_err_clear(&err);
    PB_CHECK(pb_store_open(t.url, &o, &err) == NULL);
    PB_EQ_INT(err.code, PB_ECORRUPT);
    PB_CONTAINS(err.msg, "is corrupt");
    PB_CONTAINS(err.msg, "restore from backup or move the file away");
    char *after = slurp(t.path, &n2);
    PB_EQ_INT(n1, n2);
    PB_CHECK(before && after && memcmp(before, after, n1) == 0);
    free(before);
    free(after);
    tdir_remove(&t);
}

PB_TEST(truncated_db_refused)
{
    SQLITE_ONLY();
    truncated_case(true);
}

PB_TEST(truncated_db_refused_without_quick_check)
{
    SQLITE_ONLY();
    truncated_case(false);
}

PB_TEST(quick_check_failure_refused)
{
    SQLITE_ONLY();
    struct tdir t;
    struct pb_err err;
    struct pb_store_opts o;
    char garbage[64];

    tdir_make(&t);
    bulk_ingest(t.url, 500, "{\"filler\":\"0123456789012345678901234567890123456789\"}", 52);

    /* Scribble over the page header of a b-tree page well past page 1:
     * page 1 reads fine, the b-tree walk of quick_check does not. */
    memset(garbage, 0xab, sizeof(garbage));
    int fd = open(t.path, O_WRONLY);
    PB_CHECK(fd >= 0);
    PB_EQ_INT(pwrite(fd, garbage, sizeof(garbage), 4096 * 9), sizeof(garbage));
    close(fd);

    pb_err_clear(&err);
    PB_CHECK(pb_store_open(t.url, NULL, &err) == NULL);
    PB_EQ_INT(err.code, PB_ECORRUPT);
    PB_CONTAINS(err.msg, "is corrupt: ");
    PB_CONTAINS(err.msg, "refusing to start — restore from backup or move the file away");

    /* Without the check the store opens (and would fail on reading that page). */
    pb_store_opts_default(&o);
    o.integrity_check = false;
    struct pb_store *s = open_ok(t.url, &o);
    pb_store_destroy(s);
    tdir_remove(&t);
}

PB_TEST(foreign_sqlite_db_refused)
{
    SQLITE_ONLY();
    struct tdir t;
    struct pb_err err;
    tdir_make(&t);
    PB_EQ_INT(sql_exec(t.path, "CREATE TABLE customers(id); INSERT INTO customers VALUES (7)"),
              SQLITE_OK);
    PB_CHECK(pb_store_open(t.url, NULL, &err) == NULL);
    PB_EQ_INT(err.code, PB_ESTORE);
    PB_CONTAINS(err.msg, "not a patchbay state store");
    PB_EQ_INT(sql_int(t.path, "SELECT id FROM customers"), 7);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM sqlite_schema"), 1);
    tdir_remove(&t);
}

/* What logs show of a state URL: no password, in either place. */
PB_TEST(url_shown_hides_passwords)
{
    char b[128];
    pb_store_url_shown("postgres://bob:hunter2@db:5432/pb?schema=x", b, sizeof(b));
    PB_EQ_STR(b, "postgres://***@db:5432/pb?schema=x");
    pb_store_url_shown("postgresql://db/pb?sslmode=require&password=hunter2&schema=x", b,
                       sizeof(b));
    PB_CHECK(strstr(b, "hunter2") == NULL);
    PB_CONTAINS(b, "sslmode=require&password=***");
    pb_store_url_shown("sqlite:/var/lib/pb/state.db", b, sizeof(b));
    PB_EQ_STR(b, "sqlite:/var/lib/pb/state.db");
    pb_store_url_shown("postgres://db/pb?password=hunter2", b, 24);
    PB_CHECK(strstr(b, "hunter2") == NULL && strstr(b, "hunt") == NULL);
}

PB_TEST(unsupported_url_refused_without_secret)
{
    struct pb_err err;
    PB_CHECK(pb_store_open("mysql://bob:hunter2@db.example/pb", NULL, &err) == NULL);
    PB_EQ_INT(err.code, PB_EINVAL);
    PB_CONTAINS(err.msg, "unsupported state store URL");
    PB_CONTAINS(err.msg, "(expected sqlite:PATH or postgres://");
    PB_CHECK(strstr(err.msg, "hunter2") == NULL);
    /* A database that cannot be reached is named without its password. */
    PB_CHECK(pb_store_open("postgres://bob:hunter2@127.0.0.1:1/pb", NULL, &err) == NULL);
    PB_EQ_INT(err.code, PB_ESTORE);
    PB_CONTAINS(err.msg, "postgres://bob:***@127.0.0.1:1/pb");
    PB_CHECK(strstr(err.msg, "hunter2") == NULL);
    PB_CHECK(pb_store_open("postgresql://127.0.0.1:1/pb?password=hunter2&schema=BAD", NULL, &err) ==
             NULL);
    PB_EQ_INT(err.code, PB_EINVAL);
    PB_CONTAINS(err.msg, "schema=");
    PB_CHECK(strstr(err.msg, "hunter2") == NULL);
    PB_CHECK(pb_store_open("sqlite:", NULL, &err) == NULL);
    PB_EQ_INT(err.code, PB_EINVAL);
    PB_CHECK(pb_store_open("./state.db", NULL, &err) == NULL);
    PB_EQ_INT(err.code, PB_EINVAL);
}

/* ---- write-ahead log damage ------------------------------------------------------------- */

/* What the tests need of a log: its page size, whole frames, the current
 * run (frames from the first on that carry the header's salts) and the
 * last commit frame in that run. */
struct walinfo {
    char path[400];
    uint32_t psz;
    long nframes, ncur, last_commit;
};

static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void wr32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static long wal_frame_off(const struct walinfo *w, long i)
{
    return 32 + (i - 1) * (24 + (long)w->psz);
}

static void wal_info(const struct tdir *t, struct walinfo *w)
{
    size_t n = 0;
    unsigned char *d;

    memset(w, 0, sizeof(*w));
    snprintf(w->path, sizeof(w->path), "%s-wal", t->path);
    d = (unsigned char *)slurp(w->path, &n);
    if (!d || n < 32) {
        PB__FAIL("no write-ahead log at %s", w->path);
        free(d);
        return;
    }
    w->psz = rd32(d + 8);
    w->nframes = (long)((n - 32) / (24 + w->psz));
    while (w->ncur < w->nframes && memcmp(d + wal_frame_off(w, w->ncur + 1) + 8, d + 16, 8) == 0) {
        w->ncur++;
        if (rd32(d + wal_frame_off(w, w->ncur) + 4) != 0)
            w->last_commit = w->ncur;
    }
    free(d);
}

enum {
    WAL_SPILL = 1,   /* after the first commit, a rolled-back transaction spills into the log */
    WAL_RESTART = 2, /* a checkpoint first, so that the log starts over */
};

/* Commit n messages ("w<first>"..), each in its own transaction, through a
 * plain connection that ends without a checkpoint: the log keeps them, as
 * a kill -9 leaves it. */
static void wal_commits(const struct tdir *t, int first, int n, int flags)
{
    sqlite3 *db = NULL;
    char sql[200];

    PB_EQ_INT(sqlite3_open_v2(t->path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    PB_EQ_INT(sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL), SQLITE_OK);
    PB_EQ_INT(sqlite3_exec(db, "PRAGMA wal_autocheckpoint=0", NULL, NULL, NULL), SQLITE_OK);
    if (flags & WAL_RESTART)
        PB_EQ_INT(sqlite3_exec(db, "PRAGMA wal_checkpoint(RESTART)", NULL, NULL, NULL), SQLITE_OK);
    for (int i = first; i < first + n; i++) {
        snprintf(sql, sizeof(sql),
                 "INSERT INTO messages(id, pipeline, received_at, body)"
                 " VALUES ('w%d', 'p', 1, randomblob(1500))",
                 i);
        PB_EQ_INT(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
        if (i > first || !(flags & WAL_SPILL))
            continue;
        /* 600 KB through a cache of 10 pages, then undone. */
        PB_EQ_INT(sqlite3_exec(db, "PRAGMA cache_size=10; BEGIN", NULL, NULL, NULL), SQLITE_OK);
        for (int j = 0; j < 200; j++) {
            snprintf(sql, sizeof(sql),
                     "INSERT INTO messages(id, pipeline, received_at, body)"
                     " VALUES ('gone%d', 'p', 1, randomblob(3000))",
                     j);
            PB_EQ_INT(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
        }
        PB_EQ_INT(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    }
    sqlite3_close(db);
}

/* A new store whose log holds n commits. */
static void wal_store(struct tdir *t, int n, struct walinfo *w)
{
    tdir_make(t);
    pb_store_destroy(open_ok(t->url, NULL));
    wal_commits(t, 0, n, 0);
    wal_info(t, w);
    PB_CHECK(w->ncur > 2 * n);
    PB_EQ_INT(w->last_commit, w->ncur);
}

static void flip_byte(const char *path, long off)
{
    int fd = open(path, O_RDWR);
    unsigned char b = 0;

    PB_CHECK(fd >= 0);
    PB_EQ_INT(pread(fd, &b, 1, off), 1);
    b ^= 0x5a;
    PB_EQ_INT(pwrite(fd, &b, 1, off), 1);
    close(fd);
}

/* The store opens and holds want messages. */
static void wal_opens(const struct tdir *t, long long want)
{
    struct pb_store *s = open_ok(t->url, NULL);

    pb_store_destroy(s);
    if (s)
        PB_EQ_INT(sql_int(t->path, "SELECT count(*) FROM messages"), want);
}

/* The store is refused as damaged, its files as they were; err.msg has
 * every string of needles. */
static void wal_refused(const struct tdir *t, const char *const *needles)
{
    struct pb_err err;
    char wal[400];
    size_t n1, n2, w1, w2;

    snprintf(wal, sizeof(wal), "%s-wal", t->path);
    char *db_before = slurp(t->path, &n1), *wal_before = slurp(wal, &w1);
    pb_err_clear(&err);
    struct pb_store *s = pb_store_open(t->url, NULL, &err);
    PB_CHECK(s == NULL);
    pb_store_destroy(s);
    PB_EQ_STR(pb_err_name(err.code), "PB_ECORRUPT");
    PB_CONTAINS(err.msg, t->path);
    PB_CONTAINS(err.msg, wal);
    PB_CONTAINS(err.msg, "refusing to start, nothing was changed");
    for (; *needles; needles++)
        PB_CONTAINS(err.msg, *needles);
    char *db_after = slurp(t->path, &n2), *wal_after = slurp(wal, &w2);
    PB_EQ_INT(n2, n1);
    PB_EQ_INT(w2, w1);
    PB_CHECK(db_before && db_after && memcmp(db_before, db_after, n1) == 0);
    PB_CHECK(wal_before && wal_after && memcmp(wal_before, wal_after, w1) == 0);
    free(db_before);
    free(db_after);
    free(wal_before);
    free(wal_after);
}

PB_TEST(wal_intact_log_opens_with_every_commit)
{
    SQLITE_ONLY();
    struct tdir t;
    struct walinfo w;

    wal_store(&t, 40, &w);
    wal_opens(&t, 40);
    tdir_remove(&t);
}

PB_TEST(wal_damaged_middle_frame_refused_unchanged)
{
    SQLITE_ONLY();
    struct tdir t;
    struct walinfo w;
    char frame[64];

    wal_store(&t, 40, &w);
    /* In the page, then (another store) in the frame header's page number. */
    flip_byte(w.path, wal_frame_off(&w, w.ncur / 2) + 24 + 1000);
    snprintf(frame, sizeof(frame), "frame %ld of %ld fails its checksum", w.ncur / 2, w.nframes);
    wal_refused(&t, (const char *const[]){frame, "later commits would be lost", NULL});
    tdir_remove(&t);

    wal_store(&t, 40, &w);
    flip_byte(w.path, wal_frame_off(&w, 3) + 3);
    wal_refused(&t, (const char *const[]){"frame 3 of", NULL});
    tdir_remove(&t);
}

PB_TEST(wal_damaged_header_refused_unchanged)
{
    SQLITE_ONLY();
    static const struct {
        long off;
        const char *why;
    } cases[] = {
        {0, "no log header"},      {5, "format version"},
        {10, "page size"},         {12, "log header checksum mismatch"},
        {20, "checksum mismatch"}, {28, "checksum mismatch"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct tdir t;
        struct walinfo w;

        wal_store(&t, 10, &w);
        flip_byte(w.path, cases[i].off);
        wal_refused(&t,
                    (const char *const[]){cases[i].why, "every commit in it would be lost", NULL});
        tdir_remove(&t);
    }
}

/* What a crash can leave after the last commit is not damage: SQLite
 * drops it, and the store opens with the commits before it. */
PB_TEST(wal_torn_tail_opens)
{
    SQLITE_ONLY();
    struct tdir t;
    struct walinfo w;

    wal_store(&t, 20, &w);
    flip_byte(w.path, wal_frame_off(&w, w.ncur) + 24 + 100); /* the last commit, torn */
    wal_opens(&t, 19);
    tdir_remove(&t);

    wal_store(&t, 20, &w);
    PB_EQ_INT(truncate(w.path, wal_frame_off(&w, w.ncur) + 24 + w.psz / 2), 0);
    wal_opens(&t, 19);
    tdir_remove(&t);

    wal_store(&t, 20, &w); /* a header and part of a frame: nothing to lose */
    PB_EQ_INT(truncate(w.path, 32 + 100), 0);
    flip_byte(w.path, 20);
    wal_opens(&t, 0);
    tdir_remove(&t);
}

/* Frames a rolled-back transaction spilled carry the log's salts; the
 * commits after it overwrite only their start. The rest is no commit. */
PB_TEST(wal_rolled_back_leftovers_open)
{
    SQLITE_ONLY();
    struct tdir t;
    struct walinfo w;

    tdir_make(&t);
    pb_store_destroy(open_ok(t.url, NULL));
    wal_commits(&t, 0, 5, WAL_SPILL);
    wal_info(&t, &w);
    PB_CHECK(w.ncur > w.last_commit + 10);
    wal_opens(&t, 5);
    tdir_remove(&t);
}

/* After a checkpoint the log starts over with new salts; the frames of the
 * earlier run behind the new ones are stale, not damage. */
PB_TEST(wal_stale_frames_of_an_earlier_run_open)
{
    SQLITE_ONLY();
    struct tdir t;
    struct walinfo w;

    wal_store(&t, 30, &w);
    long before = w.nframes;
    wal_commits(&t, 30, 2, WAL_RESTART);
    wal_info(&t, &w);
    PB_EQ_INT(w.nframes, before);
    PB_CHECK(w.ncur < w.nframes);
    wal_opens(&t, 32);
    tdir_remove(&t);
}

static void cksum_be(uint32_t *s, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i += 8) {
        s[0] += rd32(p + i) + s[1];
        s[1] += rd32(p + i + 4) + s[0];
    }
}

/* Checksums of big-endian words (magic 0x377f0683, what a big-endian host
 * writes): the log rewritten so, SQLite and the check agree on it. */
PB_TEST(wal_big_endian_checksums)
{
    SQLITE_ONLY();
    struct tdir t;
    struct walinfo w;
    size_t n;

    for (int damaged = 0; damaged <= 1; damaged++) {
        wal_store(&t, 20, &w);
        unsigned char *d = (unsigned char *)slurp(w.path, &n);
        uint32_t s[2] = {0, 0};
        if (!d) {
            PB__FAIL("cannot read %s", w.path);
            tdir_remove(&t);
            return;
        }
        wr32(d, 0x377f0683);
        cksum_be(s, d, 24);
        wr32(d + 24, s[0]);
        wr32(d + 28, s[1]);
        for (long i = 1; i <= w.ncur; i++) {
            unsigned char *f = d + wal_frame_off(&w, i);
            cksum_be(s, f, 8);
            cksum_be(s, f + 24, w.psz);
            wr32(f + 16, s[0]);
            wr32(f + 20, s[1]);
        }
        if (damaged)
            d[wal_frame_off(&w, w.ncur / 2) + 24 + 7] ^= 1;
        FILE *f = fopen(w.path, "wb");
        PB_CHECK(f && fwrite(d, 1, n, f) == n);
        if (f)
            fclose(f);
        free(d);
        if (damaged)
            wal_refused(&t, (const char *const[]){"fails its checksum", NULL});
        else
            wal_opens(&t, 20);
        tdir_remove(&t);
    }
}

/* ---- writer ops ---------------------------------------------------------------------------- */

static int count_rows_cb(void *arg, const struct pb_pending *row)
{
    (void)row;
    (*(int *)arg)++;
    return 0;
}

static int claim(struct pb_store *s, const char *output, int64_t lease, size_t limit, int *n)
{
    struct pb_op op = {.kind = PB_OP_CLAIM};
    *n = 0;
    op.u.claim = (struct pb_op_claim){.pipeline = "p",
                                      .output = output,
                                      .limit = limit,
                                      .lease = lease,
                                      .cb = count_rows_cb,
                                      .arg = n};
    return pb_store_exec(s, &op);
}

/* A delivery in memory is leased; CLAIM takes what no live lease holds;
 * RELEASE gives it back; a result under a lease that no longer holds
 * changes nothing. */
PB_TEST(leases_claim_release_fence)
{
    struct tdir t;
    int64_t ids[2];
    int n = 0;
    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    int64_t me = pb_store_epoch(s);
    PB_CHECK(me >= 1);
    /* Made leased to output a, unleased to b (b is spilled). */
    struct pb_op op;
    ingest_init(&op, "p", "m1", "{}", 2, OUTS2, 2, ids);
    op.u.ingest.lease = me;
    op.u.ingest.unleased = 1u << 1;
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries WHERE lease IS NOT NULL"), 1);
    /* This process already holds a's delivery: nothing to claim there. */
    PB_EQ_INT(claim(s, "a", me, 10, &n), 0);
    PB_EQ_INT(n, 0);
    PB_EQ_INT(claim(s, "b", me, 10, &n), 0);
    PB_EQ_INT(n, 1);
    PB_EQ_INT(claim(s, "b", me, 10, &n), 0);
    PB_EQ_INT(n, 0); /* claimed once */
    if (t.pg) {
        /* A live node's leases are not another's to take... */
        PB_EQ_INT(claim(s, "b", me + 1, 10, &n), 0);
        PB_EQ_INT(n, 0);
        /* ...until it is presumed dead: its leases are set free as the
         * others' node threads do (postgres_node.c). */
        char sql[160];
        snprintf(sql, sizeof(sql), "UPDATE deliveries SET lease = NULL WHERE lease = %lld",
                 (long long)me);
        PB_EQ_INT(sql_exec(t.path, sql), SQLITE_OK);
    }
    /* Another lease takes it over (the holder is presumed gone)... */
    PB_EQ_INT(claim(s, "b", me + 1, 10, &n), 0);
    PB_EQ_INT(n, 1);
    /* ...and the old holder's result is refused: it no longer holds it. */
    struct pb_op r = {.kind = PB_OP_RESULT};
    r.u.result = (struct pb_op_result){.delivery_id = ids[1],
                                       .attempt = 1,
                                       .started_at = 2000,
                                       .state = PB_DSTATE_DELIVERED,
                                       .status = 200,
                                       .lease = me};
    PB_EQ_INT(pb_store_exec(s, &r), PB_ENOTFOUND);
    PB_EQ_INT(sql_int(t.path, "SELECT state FROM deliveries WHERE output = 'b'"), 0);
    r.u.result.lease = me + 1;
    PB_EQ_INT(pb_store_exec(s, &r), 0);
    PB_EQ_INT(sql_int(t.path, "SELECT state FROM deliveries WHERE output = 'b'"), 1);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries WHERE output = 'b'"
                              " AND lease IS NOT NULL"),
              0); /* finished: no lease */
    if (t.pg) {
        /* a's delivery was made leased after that: as this node's again */
        char sql[160];
        snprintf(sql, sizeof(sql), "UPDATE deliveries SET lease = %lld WHERE output = 'a'",
                 (long long)me);
        PB_EQ_INT(sql_exec(t.path, sql), SQLITE_OK);
    }
    /* A retry keeps its lease; a release drops it, only for its holder. */
    r.u.result = (struct pb_op_result){.delivery_id = ids[0],
                                       .attempt = 1,
                                       .started_at = 2000,
                                       .state = PB_DSTATE_PENDING,
                                       .next_at = 9000,
                                       .status = 503,
                                       .lease = me};
    PB_EQ_INT(pb_store_exec(s, &r), 0);
    PB_EQ_INT(sql_int(t.path, "SELECT lease FROM deliveries WHERE output = 'a'"), me);
    struct pb_op rel = {.kind = PB_OP_RELEASE};
    rel.u.release = (struct pb_op_release){.n = 1, .ids = &ids[0], .lease = me + 5};
    PB_EQ_INT(pb_store_exec(s, &rel), 0);
    PB_EQ_INT(sql_int(t.path, "SELECT lease FROM deliveries WHERE output = 'a'"), me);
    rel.u.release.lease = me;
    PB_EQ_INT(pb_store_exec(s, &rel), 0);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries WHERE output = 'a'"
                              " AND lease IS NULL"),
              1);
    PB_EQ_INT(claim(s, "a", me, 10, &n), 0);
    PB_EQ_INT(n, 1);
    /* After a restart every lease of the last process is free to claim. */
    pb_store_destroy(s);
    s = open_started(t.url);
    if (!s)
        goto out;
    PB_EQ_INT(pb_store_epoch(s), me + 1);
    PB_EQ_INT(claim(s, "a", pb_store_epoch(s), 10, &n), 0);
    PB_EQ_INT(n, 1);
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

/* PostgreSQL: a node presumed dead claims nothing under its old epoch (a
 * node frozen past its lease and resumed claims before its heartbeat tells
 * it); a live one takes what is free. */
PB_TEST(dead_epoch_claims_nothing)
{
    struct tdir t;
    int64_t ids[2];
    int n = 0;
    tdir_make(&t);
    if (!t.pg) {
        printf("  (PostgreSQL only)\n");
        goto out;
    }
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    int64_t me = pb_store_epoch(s);
    struct pb_op op;
    ingest_init(&op, "p", "m1", "{}", 2, OUTS2, 2, ids);
    op.u.ingest.lease = me;
    op.u.ingest.unleased = 3u; /* both free, as an ordered pipeline's are */
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    char sql[160];
    snprintf(sql, sizeof(sql), "UPDATE nodes SET state = 2 WHERE epoch = %lld", (long long)me);
    PB_EQ_INT(sql_exec(t.path, sql), SQLITE_OK);
    PB_EQ_INT(claim(s, "a", me, 10, &n), 0);
    PB_EQ_INT(n, 0);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries WHERE lease IS NOT NULL"), 0);
    /* Left (shut down) is gone too. */
    snprintf(sql, sizeof(sql), "UPDATE nodes SET state = 1 WHERE epoch = %lld", (long long)me);
    PB_EQ_INT(sql_exec(t.path, sql), SQLITE_OK);
    PB_EQ_INT(claim(s, "b", me, 10, &n), 0);
    PB_EQ_INT(n, 0);
    /* Another epoch, live, takes them. */
    PB_EQ_INT(claim(s, "a", me + 1, 10, &n), 0);
    PB_EQ_INT(n, 1);
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

PB_TEST(ingest_load_pending_round_trip)
{
    struct tdir t;
    struct loaded l;
    struct pb_op op;
    int64_t ids[3][2];
    static const char bin[] = {'a', 0, 'b', 0, 0, (char)0xff, 'z'};

    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    ingest_init(&op, "p", "m-bin", bin, sizeof(bin), OUTS2, 2, ids[0]);
    op.u.ingest.content_type = "application/octet-stream";
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_CHECK(op.u.ingest.msg_seq > 0);
    PB_CHECK(!op.u.ingest.duplicate);
    ingest_init(&op, "p", "m-empty", NULL, 0, OUTS2, 2, ids[1]);
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_EQ_INT(ingest(s, "p", "m-json", OUTS2, 2, ids[2]), 0);
    PB_EQ_INT(ingest(s, "other", "m-other", OUTS2, 2, NULL), 0);
    for (int i = 0; i < 3; i++)
        PB_CHECK(ids[i][0] < ids[i][1] && (i == 0 || ids[i - 1][1] < ids[i][0]));

    PB_EQ_INT(load(s, "p", "a", 0, 100, &l), 0);
    PB_EQ_INT(l.n, 3);
    PB_EQ_INT(l.ids[0], ids[0][0]);
    PB_EQ_INT(l.ids[1], ids[1][0]);
    PB_EQ_INT(l.ids[2], ids[2][0]);
    PB_EQ_STR(l.msg_ids[0], "m-bin");
    PB_EQ_INT(l.lens[0], sizeof(bin));
    PB_CHECK(memcmp(l.bodies[0], bin, sizeof(bin)) == 0);
    PB_CHECK(!l.ctype_null[0]);
    PB_EQ_INT(l.lens[1], 0);
    PB_CHECK(l.ctype_null[1]);
    PB_EQ_INT(l.lens[2], 7);
    PB_CHECK(memcmp(l.bodies[2], "{\"n\":1}", 7) == 0);
    PB_EQ_INT(l.attempts[0], 0);

    /* Paging by after_id and limit, and the callback stopping early. */
    PB_EQ_INT(load(s, "p", "a", ids[0][0], 1, &l), 0);
    PB_EQ_INT(l.n, 1);
    PB_EQ_INT(l.ids[0], ids[1][0]);
    PB_EQ_INT(load(s, "p", "a", ids[2][0], 100, &l), 0);
    PB_EQ_INT(l.n, 0);
    PB_EQ_INT(load(s, "p", "b", 0, 2, &l), 0);
    PB_EQ_INT(l.n, 2);
    PB_EQ_INT(load(s, "nope", "a", 0, 100, &l), 0);
    PB_EQ_INT(l.n, 0);
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

PB_TEST(duplicate_msg_id_fails_only_that_op)
{
    struct tdir t;
    struct pb_op ops[3];
    int64_t ids[3][1];
    uint64_t commits, nops;

    tdir_make(&t);
    struct pb_store *s = open_ok(t.url, NULL);
    if (!s)
        goto out;
    ingest_init(&ops[0], "p", "same", "1", 1, OUTS1, 1, ids[0]);
    ingest_init(&ops[1], "p", "same", "2", 1, OUTS1, 1, ids[1]);
    ingest_init(&ops[2], "p", "other", "3", 1, OUTS1, 1, ids[2]);
    for (int i = 0; i < 3; i++)
        PB_EQ_INT(pb_store_submit(s, &ops[i]), 0);
    PB_EQ_INT(pb_store_start(s), 0);
    pb_store_stop(s);
    PB_EQ_INT(ops[0].status, 0);
    PB_EQ_INT(ops[1].status, PB_EEXISTS);
    PB_EQ_INT(ops[2].status, 0);
    pb_store_stats(s, &commits, &nops);
    PB_EQ_INT(commits, 1);
    PB_EQ_INT(nops, 3);
    pb_store_destroy(s);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries"), 2);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM messages"), 2);
out:
    tdir_remove(&t);
}

PB_TEST(idempotency_duplicate_and_expiry)
{
    struct tdir t;
    struct pb_op op;
    int64_t ids[2];

    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    ingest_init(&op, "p", "first", "{}", 2, OUTS2, 2, ids);
    op.u.ingest.idem_key = "key-1";
    op.u.ingest.idem_expires_at = 5000;
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_CHECK(!op.u.ingest.duplicate);

    ingest_init(&op, "p", "second", "{}", 2, OUTS2, 2, ids);
    op.u.ingest.idem_key = "key-1";
    op.u.ingest.idem_expires_at = 9000;
    op.u.ingest.received_at = 4999;
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_CHECK(op.u.ingest.duplicate);
    PB_EQ_STR(op.u.ingest.dup_msg_id, "first");
    PB_EQ_INT(op.u.ingest.msg_seq, 0);

    /* Same key in another pipeline is independent. */
    ingest_init(&op, "q", "third", "{}", 2, OUTS2, 2, ids);
    op.u.ingest.idem_key = "key-1";
    op.u.ingest.idem_expires_at = 5000;
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_CHECK(!op.u.ingest.duplicate);

    /* Past the window: a new message, and the key now points at it. */
    ingest_init(&op, "p", "fourth", "{}", 2, OUTS2, 2, ids);
    op.u.ingest.idem_key = "key-1";
    op.u.ingest.idem_expires_at = 20000;
    op.u.ingest.received_at = 5000;
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_CHECK(!op.u.ingest.duplicate);
    ingest_init(&op, "p", "fifth", "{}", 2, OUTS2, 2, ids);
    op.u.ingest.idem_key = "key-1";
    op.u.ingest.received_at = 6000;
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_CHECK(op.u.ingest.duplicate);
    PB_EQ_STR(op.u.ingest.dup_msg_id, "fourth");

    /* EXPIRE removes keys whose time has come. */
    struct pb_op ex = {.kind = PB_OP_EXPIRE};
    ex.u.expire.now = 10000;
    ex.u.expire.retention_ms = 1000000;
    PB_EQ_INT(pb_store_exec(s, &ex), 0);
    pb_store_destroy(s);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM messages"), 3);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM idempotency"), 1);
    PB_EQ_INT(sql_int(t.path, "SELECT expires_at FROM idempotency"), 20000);
out:
    tdir_remove(&t);
}

/* Two nodes on one PostgreSQL store receive the same keys at once: each
 * key makes one message, the other node answers it as a duplicate. */
struct idem_race {
    struct pb_store *s;
    const char *tag;
    int created, dups, errors;
};

static void *idem_race_run(void *arg)
{
    struct idem_race *r = arg;
    for (int k = 0; k < 60; k++) {
        char key[32], id[48];
        int64_t ids[2];
        struct pb_op op;
        snprintf(key, sizeof(key), "key-%d", k);
        snprintf(id, sizeof(id), "%s-%d", r->tag, k);
        ingest_init(&op, "p", id, "{}", 2, OUTS2, 2, ids);
        op.u.ingest.idem_key = key;
        op.u.ingest.idem_expires_at = 1000000;
        if (pb_store_exec(r->s, &op) != 0)
            r->errors++;
        else if (op.u.ingest.duplicate)
            r->dups++;
        else
            r->created++;
    }
    return NULL;
}

PB_TEST(two_nodes_same_key_make_one_message)
{
    struct tdir t;
    tdir_make(&t);
    if (!t.pg) {
        printf("  (PostgreSQL only)\n");
        goto out;
    }
    struct pb_store_opts oa, ob;
    pb_store_opts_default(&oa);
    pb_store_opts_default(&ob);
    oa.node = "node-a";
    ob.node = "node-b";
    struct pb_store *a = open_ok(t.url, &oa);
    struct pb_store *b = a ? open_ok(t.url, &ob) : NULL;
    if (!a || !b || pb_store_start(a) != 0 || pb_store_start(b) != 0) {
        pb_store_destroy(b);
        pb_store_destroy(a);
        goto out;
    }
    PB_CHECK(pb_store_epoch(a) != pb_store_epoch(b));
    struct idem_race ra = {.s = a, .tag = "a"}, rb = {.s = b, .tag = "b"};
    pthread_t ta, tb;
    PB_EQ_INT(pthread_create(&ta, NULL, idem_race_run, &ra), 0);
    PB_EQ_INT(pthread_create(&tb, NULL, idem_race_run, &rb), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    pb_store_destroy(a);
    pb_store_destroy(b);
    PB_EQ_INT(ra.errors + rb.errors, 0);
    PB_EQ_INT(ra.created + rb.created, 60);
    PB_EQ_INT(ra.dups + rb.dups, 60);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM messages"), 60);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries"), 120);
out:
    tdir_remove(&t);
}

static bool key_claim(struct pb_store *s, const char *scope, const char *key, const char *owner,
                      int64_t now, char *holder)
{
    struct pb_op op = {.kind = PB_OP_KEY};
    op.u.key = (struct pb_op_key){
        .scope = scope, .key = key, .owner = owner, .expires_at = now + 500, .now = now};
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    snprintf(holder, PB_KEY_OWNER_MAX, "%s", op.u.key.holder);
    return op.u.key.first;
}

PB_TEST(process_step_keys_held_for_their_window)
{
    struct tdir t;
    char h[PB_KEY_OWNER_MAX];
    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    PB_CHECK(key_claim(s, "p/process[1]", "k", "m1/0", 1000, h));
    PB_CHECK(!key_claim(s, "p/process[1]", "k", "m2/0", 1200, h));
    PB_EQ_STR(h, "m1/0");
    /* Its own key again (a run repeated after a restart). */
    PB_CHECK(key_claim(s, "p/process[1]", "k", "m1/0", 1300, h));
    /* Another step's, or another key: free. */
    PB_CHECK(key_claim(s, "p/process[2]", "k", "m2/0", 1300, h));
    PB_CHECK(key_claim(s, "p/process[1]", "k2", "m2/0", 1300, h));
    /* Expired (500 ms after the first claim): the next message takes it. */
    PB_CHECK(key_claim(s, "p/process[1]", "k", "m3/0", 1600, h));
    PB_CHECK(!key_claim(s, "p/process[1]", "k", "m1/0", 1700, h));
    PB_EQ_STR(h, "m3/0");
    /* Retention drops expired keys; an ingest's key of the same text in
     * the pipeline is another key. */
    struct pb_op ex = {.kind = PB_OP_EXPIRE};
    ex.u.expire.now = 10000;
    ex.u.expire.retention_ms = 1000000;
    PB_EQ_INT(pb_store_exec(s, &ex), 0);
    pb_store_destroy(s);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM idempotency"), 0);
out:
    tdir_remove(&t);
}

PB_TEST(results_update_state_and_attempt_log)
{
    struct tdir t;
    struct loaded l;
    struct pb_err err;
    int64_t ids[2];
    char longerr[700];

    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    PB_EQ_INT(ingest(s, "p", "m1", OUTS2, 2, ids), 0);
    PB_EQ_INT(result(s, ids[0], 1, PB_DSTATE_PENDING, 503, "busy"), 0);
    PB_EQ_INT(load(s, "p", "a", 0, 10, &l), 0);
    PB_EQ_INT(l.n, 1);
    PB_EQ_INT(l.attempts[0], 1);

    /* 1 ASCII byte then 2-byte characters: byte 512 falls inside one. */
    longerr[0] = 'x';
    for (int i = 1; i + 1 < (int)sizeof(longerr) - 1; i += 2) {
        longerr[i] = (char)0xc3;
        longerr[i + 1] = (char)0xa9;
    }
    longerr[sizeof(longerr) - 2] = '\0';
    PB_EQ_INT(result(s, ids[0], 2, PB_DSTATE_DEAD, 400, longerr), 0);
    PB_EQ_INT(load(s, "p", "a", 0, 10, &l), 0);
    PB_EQ_INT(l.n, 0);
    PB_EQ_INT(result(s, ids[1], 1, PB_DSTATE_DELIVERED, 200, NULL), 0);

    /* Final states stay final; unknown ids are not found. */
    PB_EQ_INT(result(s, ids[1], 2, PB_DSTATE_DEAD, 500, "late"), PB_ENOTFOUND);
    PB_EQ_INT(result(s, 999999, 1, PB_DSTATE_DELIVERED, 200, NULL), PB_ENOTFOUND);
    PB_EQ_INT(result(s, ids[0], 0, PB_DSTATE_DELIVERED, 200, NULL), PB_EINVAL);

    json_t *m = pb_admin_message_json(s, "m1", &err);
    PB_CHECK(m != NULL);
    if (m) {
        json_t *d0 = json_array_get(json_object_get(m, "deliveries"), 0);
        json_t *d1 = json_array_get(json_object_get(m, "deliveries"), 1);
        PB_EQ_STR(json_string_value(json_object_get(d0, "state")), "dead");
        PB_EQ_INT(json_integer_value(json_object_get(d0, "attempts")), 2);
        PB_EQ_INT(json_integer_value(json_object_get(d0, "last_status")), 400);
        const char *le = json_string_value(json_object_get(d0, "last_error"));
        PB_EQ_INT(le ? strlen(le) : 0, 511);
        json_t *log = json_object_get(d0, "attempt_log");
        PB_EQ_INT(json_array_size(log), 2);
        json_t *a0 = json_array_get(log, 0);
        PB_EQ_INT(json_integer_value(json_object_get(a0, "n")), 1);
        PB_EQ_INT(json_integer_value(json_object_get(a0, "status")), 503);
        PB_EQ_INT(json_integer_value(json_object_get(a0, "latency_ms")), 15);
        PB_EQ_INT(json_integer_value(json_object_get(a0, "started_at")), 2001);
        PB_EQ_STR(json_string_value(json_object_get(a0, "state")), "pending");
        PB_EQ_STR(json_string_value(json_object_get(a0, "error")), "busy");
        PB_EQ_STR(json_string_value(json_object_get(json_array_get(log, 1), "state")), "dead");
        PB_EQ_STR(json_string_value(json_object_get(d1, "state")), "delivered");
        PB_CHECK(json_is_null(json_object_get(d1, "last_error")));
        /* Delivered at the first try: no row of attempts, the delivery's own
         * row holds the attempt and the log shows it the same. */
        json_t *b0 = json_array_get(json_object_get(d1, "attempt_log"), 0);
        PB_EQ_INT(json_array_size(json_object_get(d1, "attempt_log")), 1);
        PB_EQ_INT(json_integer_value(json_object_get(b0, "n")), 1);
        PB_EQ_INT(json_integer_value(json_object_get(b0, "status")), 200);
        PB_EQ_INT(json_integer_value(json_object_get(b0, "latency_ms")), 15);
        PB_EQ_INT(json_integer_value(json_object_get(b0, "started_at")), 2001);
        PB_EQ_STR(json_string_value(json_object_get(b0, "state")), "delivered");
    }
    json_decref(m);
    pb_store_destroy(s);
    char q[96];
    snprintf(q, sizeof(q), "SELECT count(*) FROM attempts WHERE delivery_id = %lld",
             (long long)ids[1]);
    PB_EQ_INT(sql_int(t.path, q), 0);
    snprintf(q, sizeof(q), "SELECT count(*) FROM attempts WHERE delivery_id = %lld",
             (long long)ids[0]);
    PB_EQ_INT(sql_int(t.path, q), 2);
out:
    tdir_remove(&t);
}

PB_TEST(replay_creates_new_pending_delivery)
{
    struct tdir t;
    struct loaded l;
    int64_t ids[2], nid = 0;

    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    PB_EQ_INT(ingest(s, "p", "m1", OUTS2, 2, ids), 0);
    PB_EQ_INT(result(s, ids[0], 1, PB_DSTATE_DEAD, 400, "bad"), 0);
    PB_EQ_INT(ingest(s, "p", "m2", OUTS2, 2, NULL), 0); /* ids grow past m1's */

    /* Not dead (pending, unknown): not found. */
    PB_EQ_INT(replay(s, ids[1], NULL), PB_ENOTFOUND);
    PB_EQ_INT(replay(s, 424242, NULL), PB_ENOTFOUND);

    struct pb_op op = {.kind = PB_OP_REPLAY};
    op.u.replay.delivery_id = ids[0];
    op.u.replay.now = 9000;
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    nid = op.u.replay.new_delivery_id;
    PB_CHECK(nid > ids[1] + 2);
    PB_EQ_STR(op.u.replay.pipeline, "p");
    PB_EQ_STR(op.u.replay.output, "a");

    PB_EQ_INT(load(s, "p", "a", 0, 10, &l), 0);
    PB_EQ_INT(l.n, 2); /* m2's and the replay */
    PB_EQ_INT(l.ids[1], nid);
    PB_EQ_INT(l.attempts[1], 0);
    PB_EQ_STR(l.msg_ids[1], "m1");

    /* The old one is REPLAYED now: a second replay finds nothing. */
    PB_EQ_INT(replay(s, ids[0], NULL), PB_ENOTFOUND);
    pb_store_destroy(s);
    PB_EQ_INT(sql_int(t.path, "SELECT state FROM deliveries WHERE id = (SELECT min(id) FROM"
                              " deliveries)"),
              PB_DSTATE_REPLAYED);
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT replay_of FROM deliveries WHERE id = %lld", (long long)nid);
    PB_EQ_INT(sql_int(t.path, sql), ids[0]);
out:
    tdir_remove(&t);
}

PB_TEST(purge_deletes_dead_and_unused_message)
{
    struct tdir t;
    struct pb_err err;
    int64_t a[2], b[1];

    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    PB_EQ_INT(ingest(s, "p", "two", OUTS2, 2, a), 0);
    PB_EQ_INT(ingest(s, "p", "one", OUTS1, 1, b), 0);
    PB_EQ_INT(result(s, a[0], 1, PB_DSTATE_DEAD, 400, "x"), 0);
    PB_EQ_INT(result(s, b[0], 1, PB_DSTATE_DEAD, 400, "y"), 0);

    PB_EQ_INT(purge(s, a[1]), PB_ENOTFOUND); /* pending */
    PB_EQ_INT(purge(s, 77777), PB_ENOTFOUND);
    PB_EQ_INT(purge(s, a[0]), 0);
    PB_EQ_INT(purge(s, a[0]), PB_ENOTFOUND);
    PB_EQ_INT(purge(s, b[0]), 0);

    json_t *m = pb_admin_message_json(s, "two", &err);
    PB_CHECK(m != NULL);
    PB_EQ_INT(json_array_size(json_object_get(m, "deliveries")), 1);
    json_decref(m);
    PB_CHECK(pb_admin_message_json(s, "one", &err) == NULL);
    PB_EQ_INT(err.code, PB_ENOTFOUND);
    pb_store_destroy(s);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM attempts"), 0);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM messages"), 1);
out:
    tdir_remove(&t);
}

PB_TEST(replay_all_counts)
{
    struct tdir t;
    int64_t ids[2];
    char id[16];

    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    /* p: 3 messages dead on a and b; q: 2 dead on a. */
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof(id), "m%d", i);
        PB_EQ_INT(ingest(s, i < 3 ? "p" : "q", id, OUTS2, 2, ids), 0);
        PB_EQ_INT(result(s, ids[0], 1, PB_DSTATE_DEAD, 500, "x"), 0);
        if (i < 3)
            PB_EQ_INT(result(s, ids[1], 1, PB_DSTATE_DEAD, 500, "x"), 0);
        else
            PB_EQ_INT(result(s, ids[1], 1, PB_DSTATE_DELIVERED, 200, NULL), 0);
    }
    struct pb_op op = {.kind = PB_OP_REPLAY_ALL};
    op.u.replay_all.pipeline = "p";
    op.u.replay_all.output = "a";
    op.u.replay_all.now = 7;
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_EQ_INT(op.u.replay_all.count, 3);
    op.u.replay_all.pipeline = NULL;
    op.u.replay_all.output = "a";
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_EQ_INT(op.u.replay_all.count, 2);
    op.u.replay_all.pipeline = "p";
    op.u.replay_all.output = NULL;
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_EQ_INT(op.u.replay_all.count, 3);
    op.u.replay_all.pipeline = NULL;
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_EQ_INT(op.u.replay_all.count, 0);
    pb_store_destroy(s);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries WHERE state = 4"), 8);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries WHERE state = 0"
                              " AND replay_of IS NOT NULL AND attempts = 0 AND next_at = 7"),
              8);
    /* New ids keep the dead letters' order. */
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries a JOIN deliveries b"
                              " ON a.replay_of IS NOT NULL AND b.replay_of IS NOT NULL"
                              " AND a.id < b.id AND a.replay_of > b.replay_of"
                              " AND a.output = b.output"),
              0);
out:
    tdir_remove(&t);
}

PB_TEST(expire_deletes_finished_old_messages_only)
{
    struct tdir t;
    struct pb_op op;
    int64_t ids[2];

    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    /* old-done: all finished; old-dead: one dead; old-pending; new-done. */
    const char *names[] = {"old-done", "old-dead", "old-pending", "new-done", "old-replayed"};
    for (int i = 0; i < 5; i++) {
        ingest_init(&op, "p", names[i], "{}", 2, OUTS2, 2, ids);
        op.u.ingest.received_at = i == 3 ? 100000 : 1000;
        PB_EQ_INT(pb_store_exec(s, &op), 0);
        if (i == 2)
            continue;
        PB_EQ_INT(result(s, ids[0], 1, PB_DSTATE_DELIVERED, 200, NULL), 0);
        PB_EQ_INT(
            result(s, ids[1], 1, i == 1 || i == 4 ? PB_DSTATE_DEAD : PB_DSTATE_FILTERED, 0, NULL),
            0);
        if (i == 4) {
            int64_t nid;
            PB_EQ_INT(replay(s, ids[1], &nid), 0);
            PB_EQ_INT(result(s, nid, 1, PB_DSTATE_DELIVERED, 200, NULL), 0);
        }
    }
    struct pb_op ex = {.kind = PB_OP_EXPIRE};
    ex.u.expire.now = 100500;
    ex.u.expire.retention_ms = 1000;
    PB_EQ_INT(pb_store_exec(s, &ex), 0);
    PB_EQ_INT(ex.u.expire.deleted, 2);
    PB_EQ_INT(pb_store_exec(s, &ex), 0);
    PB_EQ_INT(ex.u.expire.deleted, 0);
    pb_store_destroy(s);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM messages WHERE id IN ('old-done',"
                              " 'old-replayed')"),
              0);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM messages"), 3);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries"), 6);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM attempts WHERE delivery_id NOT IN"
                              " (SELECT id FROM deliveries)"),
              0);
out:
    tdir_remove(&t);
}

/* ---- queue, group commit, shutdown ---------------------------------------------------------- */

static void count_done_cb(struct pb_op *op, void *arg)
{
    (void)op;
    atomic_fetch_add((atomic_int *)arg, 1);
}

PB_TEST(queue_full_refuses_ingest_not_results)
{
    struct tdir t;
    struct pb_store_opts o;
    struct pb_op ops[6], res = {.kind = PB_OP_RESULT}, late;
    char ids[6][16];
    atomic_int done = 0;

    tdir_make(&t);
    pb_store_opts_default(&o);
    o.ingest_queue_max = 4;
    struct pb_store *s = open_ok(t.url, &o);
    if (!s)
        goto out;
    for (int i = 0; i < 5; i++) {
        snprintf(ids[i], sizeof(ids[i]), "m%d", i);
        ingest_init(&ops[i], "p", ids[i], "{}", 2, OUTS1, 1, NULL);
        ops[i].done_cb = count_done_cb;
        ops[i].arg = &done;
        PB_EQ_INT(pb_store_submit(s, &ops[i]), i < 4 ? 0 : PB_EFULL);
    }
    res.u.result.delivery_id = 1;
    res.u.result.attempt = 1;
    res.u.result.state = PB_DSTATE_DELIVERED;
    res.done_cb = count_done_cb;
    res.arg = &done;
    PB_EQ_INT(pb_store_submit(s, &res), 0);
    PB_EQ_INT(pb_store_queue_depth(s), 5);

    PB_EQ_INT(pb_store_start(s), 0);
    PB_CHECK(wait_count(&done, 5));
    PB_EQ_INT(res.status, 0); /* delivery 1 is m0's, committed in the same batch */
    PB_EQ_INT(pb_store_queue_depth(s), 0);
    /* Room again. */
    PB_EQ_INT(pb_store_exec(s, &ops[4]), 0);
    pb_store_stop(s);
    ingest_init(&late, "p", "late", "{}", 2, OUTS1, 1, NULL);
    PB_EQ_INT(pb_store_submit(s, &late), PB_ESHUTDOWN);
    PB_EQ_INT(pb_store_exec(s, &late), PB_ESHUTDOWN);
    res.kind = PB_OP_RESULT;
    PB_EQ_INT(pb_store_submit(s, &res), PB_ESHUTDOWN);
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

#define GC_THREADS 4
#define GC_PER_THREAD 1250

struct gc_thread {
    struct pb_store *s;
    int t;
    struct pb_op ops[GC_PER_THREAD];
    char ids[GC_PER_THREAD][24];
    int64_t dids[GC_PER_THREAD][2];
    atomic_int *done;
    int refused;
};

static void *gc_submit(void *arg)
{
    struct gc_thread *g = arg;
    for (int i = 0; i < GC_PER_THREAD; i++) {
        snprintf(g->ids[i], sizeof(g->ids[i]), "t%d-%d", g->t, i);
        ingest_init(&g->ops[i], "p", g->ids[i], g->ids[i], strlen(g->ids[i]), OUTS2, 2, g->dids[i]);
        g->ops[i].done_cb = count_done_cb;
        g->ops[i].arg = g->done;
        while (pb_store_submit(g->s, &g->ops[i]) == PB_EFULL) {
            g->refused++;
            sleep_ms(1);
        }
    }
    return NULL;
}

struct reader {
    struct pb_store *s;
    atomic_bool stop;
    int loads, errors;
};

static void noop_count(void *arg, const char *p, const char *o, const char *sub, enum pb_dstate st,
                       int64_t n)
{
    (void)arg;
    (void)p;
    (void)o;
    (void)sub;
    (void)st;
    (void)n;
}

static void *read_loop(void *arg)
{
    struct reader *r = arg;
    while (!atomic_load(&r->stop)) {
        size_t n;
        struct pb_err err = {0};
        json_t *j = pb_admin_dead_letters_json(r->s, "p", "a", 0, 100, &err);
        (void)n;
        if (!j || pb_store_count(r->s, noop_count, NULL, NULL) != 0)
            r->errors++;
        json_decref(j);
        if (0)
            r->errors++;
        r->loads++;
    }
    return NULL;
}

struct counts {
    int64_t n[8];
};

static void sum_count(void *arg, const char *p, const char *o, const char *sub, enum pb_dstate st,
                      int64_t n)
{
    (void)p;
    (void)o;
    (void)sub;
    ((struct counts *)arg)->n[st] += n;
}

PB_TEST(group_commit_batches_concurrent_submits)
{
    struct tdir t;
    static struct gc_thread g[GC_THREADS];
    pthread_t th[GC_THREADS], rt;
    struct reader rd = {0};
    atomic_int done = 0;
    uint64_t commits = 0, nops = 0;

    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    rd.s = s;
    pthread_create(&rt, NULL, read_loop, &rd);
    for (int i = 0; i < GC_THREADS; i++) {
        g[i].s = s;
        g[i].t = i;
        g[i].done = &done;
        g[i].refused = 0;
        pthread_create(&th[i], NULL, gc_submit, &g[i]);
    }
    for (int i = 0; i < GC_THREADS; i++)
        pthread_join(th[i], NULL);
    PB_CHECK(wait_count(&done, GC_THREADS * GC_PER_THREAD));
    atomic_store(&rd.stop, true);
    pthread_join(rt, NULL);
    PB_EQ_INT(rd.errors, 0);
    PB_CHECK(rd.loads > 0);

    pb_store_stats(s, &commits, &nops);
    PB_EQ_INT(nops, GC_THREADS * GC_PER_THREAD);
    PB_CHECK(commits < nops);
    PB_CHECK(commits >= (nops + 511) / 512);
    printf("  group commit: %llu ops in %llu commits\n", (unsigned long long)nops,
           (unsigned long long)commits);
    int bad = 0;
    for (int i = 0; i < GC_THREADS; i++)
        for (int j = 0; j < GC_PER_THREAD; j++)
            bad += g[i].ops[j].status != 0 || g[i].dids[j][1] != g[i].dids[j][0] + 1;
    PB_EQ_INT(bad, 0);
    /* Per submitting thread, ids grow in submission order. */
    for (int i = 0; i < GC_THREADS; i++)
        for (int j = 1; j < GC_PER_THREAD; j++)
            bad += g[i].dids[j][0] <= g[i].dids[j - 1][0];
    PB_EQ_INT(bad, 0);

    struct counts c = {{0}};
    PB_EQ_INT(pb_store_count(s, sum_count, &c, NULL), 0);
    PB_EQ_INT(c.n[PB_DSTATE_PENDING], 2 * GC_THREADS * GC_PER_THREAD);
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

PB_TEST(stop_drains_everything)
{
    struct tdir t;
    static struct pb_op ops[3000];
    static char ids[3000][16];
    atomic_int done = 0;
    struct loaded l;

    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    for (int i = 0; i < 3000; i++) {
        snprintf(ids[i], sizeof(ids[i]), "m%d", i);
        ingest_init(&ops[i], "p", ids[i], "{}", 2, OUTS1, 1, NULL);
        ops[i].done_cb = count_done_cb;
        ops[i].arg = &done;
        PB_EQ_INT(pb_store_submit(s, &ops[i]), 0);
    }
    pb_store_stop(s);
    PB_EQ_INT(atomic_load(&done), 3000);
    PB_EQ_INT(pb_store_queue_depth(s), 0);
    pb_store_stop(s); /* idempotent */
    pb_store_destroy(s);

    /* Never started: stop still commits what was queued. */
    s = open_ok(t.url, NULL);
    if (!s)
        goto out;
    ingest_init(&ops[0], "p", "unstarted", "{}", 2, OUTS1, 1, NULL);
    ops[0].done_cb = count_done_cb;
    ops[0].arg = &done;
    PB_EQ_INT(pb_store_submit(s, &ops[0]), 0);
    pb_store_destroy(s);
    PB_EQ_INT(atomic_load(&done), 3001);
    PB_EQ_INT(ops[0].status, 0);

    s = open_ok(t.url, NULL);
    if (!s)
        goto out;
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries WHERE state = 0"), 3001);
    PB_EQ_INT(load(s, "p", "a", 0, 1, &l), 0);
    PB_EQ_STR(l.msg_ids[0], "m0");
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

struct nested {
    struct pb_store *s;
    int rc;
};

static void exec_inside_cb(struct pb_op *op, void *arg)
{
    struct nested *n = arg;
    struct pb_op inner = {.kind = PB_OP_EXPIRE};
    (void)op;
    n->rc = pb_store_exec(n->s, &inner);
}

PB_TEST(exec_on_writer_thread_refused)
{
    struct tdir t;
    struct nested n = {0};
    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    n.s = s;
    n.rc = 1;
    struct pb_op op = {.kind = PB_OP_EXPIRE, .done_cb = exec_inside_cb, .arg = &n};
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_EQ_INT(n.rc, PB_EINVAL);
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

PB_TEST(disk_full_fails_batch_then_recovers)
{
    SQLITE_ONLY();
    struct tdir t;
    struct pb_op op;
    struct loaded l;
    static char big[200000];
    int64_t ids[1];

    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    PB_EQ_INT(ingest(s, "p", "before", OUTS1, 1, ids), 0);
    PB_CHECK(pb_store_writable(s));

    PB_EQ_INT(pb__store_test_max_pages(s, 1), 0); /* no room to grow */
    memset(big, 'b', sizeof(big));
    ingest_init(&op, "p", "big", big, sizeof(big), OUTS1, 1, ids);
    PB_EQ_INT(pb_store_exec(s, &op), PB_ENOSPACE);
    PB_CHECK(!pb_store_writable(s));
    PB_EQ_INT(pb_store_exec(s, &op), PB_ENOSPACE);

    PB_EQ_INT(pb__store_test_max_pages(s, 0), 0);
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_CHECK(pb_store_writable(s));
    PB_EQ_INT(load(s, "p", "a", 0, 10, &l), 0);
    PB_EQ_INT(l.n, 2);
    PB_EQ_STR(l.msg_ids[0], "before");
    PB_EQ_STR(l.msg_ids[1], "big");
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

/* ---- webhook fan-out and endpoints ---------------------------------------------------------- */

static void fanout_init(struct pb_op *op, int64_t id, int attempt, const char *const *outs,
                        size_t n, int64_t *child_ids)
{
    memset(op, 0, sizeof(*op));
    op->kind = PB_OP_FANOUT;
    op->u.fanout.delivery_id = id;
    op->u.fanout.attempt = attempt;
    op->u.fanout.now = 3000;
    op->u.fanout.n = n;
    /* The tests name children "output/sub"; the op takes the subs. */
    static const char *subs[64];
    for (size_t i = 0; outs && i < n && i < 64; i++) {
        const char *slash = outs[i] ? strchr(outs[i], '/') : NULL;
        subs[i] = slash ? slash + 1 : outs[i];
    }
    op->u.fanout.subs = outs ? subs : NULL;
    op->u.fanout.note = "fanned out";
    op->u.fanout.child_ids = child_ids;
}

static int fanout(struct pb_store *s, int64_t id, const char *const *outs, size_t n,
                  int64_t *child_ids)
{
    struct pb_op op;
    fanout_init(&op, id, 1, outs, n, child_ids);
    return pb_store_exec(s, &op);
}

static const char *const HOOKS1[] = {"hooks"};

PB_TEST(fanout_creates_children_and_finishes_parent)
{
    static const char *const outs[] = {"hooks/ep_a", "hooks/ep_b", "hooks/ep_c"};
    struct tdir t;
    struct pb_err err;
    struct loaded l;
    struct pb_op op;
    int64_t parent[1], other[1], child[3] = {0};

    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    PB_EQ_INT(ingest(s, "p", "m1", HOOKS1, 1, parent), 0);
    PB_EQ_INT(ingest(s, "p", "m2", HOOKS1, 1, other), 0);

    fanout_init(&op, parent[0], 1, outs, 3, child);
    op.u.fanout.note = "fanned out to 3 endpoints";
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_CHECK(child[0] > other[0]);
    PB_CHECK(child[0] < child[1] && child[1] < child[2]);

    json_t *m = pb_admin_message_json(s, "m1", &err);
    PB_CHECK(m != NULL);
    json_t *dl = json_object_get(m, "deliveries");
    PB_EQ_INT(json_array_size(dl), 4);
    json_t *d0 = json_array_get(dl, 0);
    PB_EQ_INT(json_integer_value(json_object_get(d0, "id")), parent[0]);
    PB_EQ_STR(json_string_value(json_object_get(d0, "state")), "delivered");
    PB_EQ_INT(json_integer_value(json_object_get(d0, "attempts")), 1);
    PB_EQ_INT(json_integer_value(json_object_get(d0, "updated_at")), 3000);
    json_t *log = json_object_get(d0, "attempt_log");
    PB_EQ_INT(json_array_size(log), 1);
    json_t *a0 = json_array_get(log, 0);
    PB_EQ_INT(json_integer_value(json_object_get(a0, "n")), 1);
    PB_EQ_INT(json_integer_value(json_object_get(a0, "started_at")), 3000);
    PB_EQ_INT(json_integer_value(json_object_get(a0, "latency_ms")), 0);
    PB_EQ_INT(json_integer_value(json_object_get(a0, "status")), 0);
    PB_EQ_STR(json_string_value(json_object_get(a0, "state")), "delivered");
    PB_EQ_STR(json_string_value(json_object_get(a0, "error")), "fanned out to 3 endpoints");
    for (int i = 0; i < 3; i++) {
        json_t *d = json_array_get(dl, (size_t)i + 1);
        PB_EQ_INT(json_integer_value(json_object_get(d, "id")), child[i]);
        PB_EQ_STR(json_string_value(json_object_get(d, "output")), outs[i]);
        PB_EQ_STR(json_string_value(json_object_get(d, "state")), "pending");
        PB_EQ_INT(json_integer_value(json_object_get(d, "attempts")), 0);
        PB_EQ_INT(json_integer_value(json_object_get(d, "next_at")), 3000);
        PB_EQ_INT(json_integer_value(json_object_get(d, "created_at")), 3000);
        PB_EQ_INT(json_array_size(json_object_get(d, "attempt_log")), 0);
    }
    json_decref(m);

    /* Children are ordinary pending deliveries of their own output. */
    PB_EQ_INT(load(s, "p", "hooks/ep_b", 0, 10, &l), 0);
    PB_EQ_INT(l.n, 1);
    PB_EQ_INT(l.ids[0], child[1]);
    PB_EQ_STR(l.msg_ids[0], "m1");
    PB_EQ_INT(l.lens[0], 7);
    PB_CHECK(memcmp(l.bodies[0], "{\"n\":1}", 7) == 0);
    PB_EQ_INT(load(s, "p", "hooks", 0, 10, &l), 0);
    PB_EQ_INT(l.n, 1); /* m2's; m1's is finished */
    PB_EQ_INT(l.ids[0], other[0]);
    PB_EQ_INT(load(s, "other", "hooks/ep_b", 0, 10, &l), 0);
    PB_EQ_INT(l.n, 0);
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

PB_TEST(fanout_refusals_and_empty)
{
    static const char *const outs[] = {"hooks/ep_a"};
    static const char *const bad_outs[] = {"hooks/ep_a", NULL};
    struct tdir t;
    struct pb_err err;
    struct pb_op op;
    int64_t p1[1], p2[1], p3[1], child[2] = {0};

    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    PB_EQ_INT(ingest(s, "p", "m1", HOOKS1, 1, p1), 0);
    PB_EQ_INT(ingest(s, "p", "m2", HOOKS1, 1, p2), 0);
    PB_EQ_INT(ingest(s, "p", "m3", HOOKS1, 1, p3), 0);

    /* Not pending (delivered, dead, fanned out already) or unknown. */
    PB_EQ_INT(fanout(s, p1[0], outs, 1, child), 0);
    PB_EQ_INT(fanout(s, p1[0], outs, 1, child), PB_ENOTFOUND);
    PB_EQ_INT(result(s, p2[0], 1, PB_DSTATE_DEAD, 500, "x"), 0);
    PB_EQ_INT(fanout(s, p2[0], outs, 1, child), PB_ENOTFOUND);
    PB_EQ_INT(fanout(s, 987654, outs, 1, child), PB_ENOTFOUND);

    /* Invalid: nothing written, the delivery stays pending. */
    fanout_init(&op, p3[0], 0, outs, 1, child);
    PB_EQ_INT(pb_store_exec(s, &op), PB_EINVAL);
    PB_EQ_INT(fanout(s, p3[0], bad_outs, 2, child), PB_EINVAL);
    PB_EQ_INT(fanout(s, p3[0], NULL, 1, child), PB_EINVAL);
    json_t *m = pb_admin_message_json(s, "m3", &err);
    PB_EQ_INT(json_array_size(json_object_get(m, "deliveries")), 1);
    PB_EQ_STR(json_string_value(
                  json_object_get(json_array_get(json_object_get(m, "deliveries"), 0), "state")),
              "pending");
    json_decref(m);

    /* No endpoints: the delivery is finished, no child, the note is kept. */
    fanout_init(&op, p3[0], 2, NULL, 0, NULL);
    op.u.fanout.note = "no endpoint subscribed";
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    m = pb_admin_message_json(s, "m3", &err);
    json_t *d = json_array_get(json_object_get(m, "deliveries"), 0);
    PB_EQ_INT(json_array_size(json_object_get(m, "deliveries")), 1);
    PB_EQ_STR(json_string_value(json_object_get(d, "state")), "delivered");
    PB_EQ_INT(json_integer_value(json_object_get(d, "attempts")), 2);
    PB_EQ_STR(json_string_value(
                  json_object_get(json_array_get(json_object_get(d, "attempt_log"), 0), "error")),
              "no endpoint subscribed");
    json_decref(m);
    pb_store_destroy(s);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries"), 4);
out:
    tdir_remove(&t);
}

PB_TEST(fanout_child_ids_never_reused_and_grow_within_a_batch)
{
    static const char *const outs[] = {"hooks/ep_a", "hooks/ep_b"};
    struct tdir t;
    struct pb_op ops[3];
    int64_t p1[1], p2[1], last[1], c1[2] = {0}, c2[2] = {0};

    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    PB_EQ_INT(ingest(s, "p", "m1", HOOKS1, 1, p1), 0);
    PB_EQ_INT(ingest(s, "p", "m2", HOOKS1, 1, p2), 0);
    PB_EQ_INT(ingest(s, "q", "m3", OUTS1, 1, last), 0);
    /* The highest id goes away: AUTOINCREMENT must not hand it out again. */
    PB_EQ_INT(result(s, last[0], 1, PB_DSTATE_DEAD, 500, "x"), 0);
    PB_EQ_INT(purge(s, last[0]), 0);
    pb_store_stop(s);
    pb_store_destroy(s);

    /* Two fan-outs and an ingest queued before start: one transaction. */
    s = open_ok(t.url, NULL);
    if (!s)
        goto out;
    fanout_init(&ops[0], p1[0], 1, outs, 2, c1);
    ingest_init(&ops[1], "p", "m4", "{}", 2, HOOKS1, 1, last);
    fanout_init(&ops[2], p2[0], 1, outs, 2, c2);
    for (int i = 0; i < 3; i++)
        PB_EQ_INT(pb_store_submit(s, &ops[i]), 0);
    PB_EQ_INT(pb_store_start(s), 0);
    pb_store_stop(s);
    for (int i = 0; i < 3; i++)
        PB_EQ_INT(ops[i].status, 0);
    uint64_t commits = 0;
    pb_store_stats(s, &commits, NULL);
    PB_EQ_INT(commits, 1);
    PB_CHECK(c1[0] > p2[0] + 1); /* past the purged one */
    PB_CHECK(c1[0] < c1[1] && c1[1] < last[0] && last[0] < c2[0] && c2[0] < c2[1]);
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

PB_TEST(replay_all_since)
{
    struct tdir t;
    struct pb_op op;
    int64_t ids[1];
    char id[16];

    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    /* p/a: dead deliveries created at 1000, 2000, 3000; q/a: one at 3000. */
    for (int i = 0; i < 4; i++) {
        snprintf(id, sizeof(id), "m%d", i);
        ingest_init(&op, i < 3 ? "p" : "q", id, "{}", 2, OUTS1, 1, ids);
        op.u.ingest.received_at = i < 3 ? 1000 * (i + 1) : 3000;
        PB_EQ_INT(pb_store_exec(s, &op), 0);
        PB_EQ_INT(result(s, ids[0], 1, PB_DSTATE_DEAD, 500, "x"), 0);
    }
    struct pb_op ra = {.kind = PB_OP_REPLAY_ALL};
    ra.u.replay_all.pipeline = "p";
    ra.u.replay_all.since = 2000; /* inclusive */
    ra.u.replay_all.now = 9000;
    PB_EQ_INT(pb_store_exec(s, &ra), 0);
    PB_EQ_INT(ra.u.replay_all.count, 2);
    /* Any pipeline, since 3000: only q's is still dead. */
    ra.u.replay_all.pipeline = NULL;
    ra.u.replay_all.output = "a";
    ra.u.replay_all.since = 3000;
    PB_EQ_INT(pb_store_exec(s, &ra), 0);
    PB_EQ_INT(ra.u.replay_all.count, 1);
    ra.u.replay_all.since = 3001;
    PB_EQ_INT(pb_store_exec(s, &ra), 0);
    PB_EQ_INT(ra.u.replay_all.count, 0);
    /* 0: any age. */
    ra.u.replay_all.output = NULL;
    ra.u.replay_all.since = 0;
    PB_EQ_INT(pb_store_exec(s, &ra), 0);
    PB_EQ_INT(ra.u.replay_all.count, 1);
    pb_store_destroy(s);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries WHERE state = 4"), 4);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries WHERE state = 2"), 0);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries d JOIN deliveries o"
                              " ON d.replay_of = o.id WHERE o.created_at >= 2000"
                              " AND d.created_at = 9000 AND d.state = 0"),
              3);
out:
    tdir_remove(&t);
}

/* ---- reads -------------------------------------------------------------------------------- */

struct group {
    char p[16], o[16];
    int state;
    int64_t n;
};
struct groups {
    int n;
    struct group g[16];
};

static void groups_cb(void *arg, const char *p, const char *o, const char *sub, enum pb_dstate st,
                      int64_t n)
{
    struct groups *gs = arg;
    if (gs->n < 16) {
        struct group *g = &gs->g[gs->n++];
        snprintf(g->p, sizeof(g->p), "%s", p);
        snprintf(g->o, sizeof(g->o), "%s%s%s", o, sub ? "/" : "", sub ? sub : "");
        g->state = (int)st;
        g->n = n;
    }
}

static int64_t group_n(const struct groups *gs, const char *p, const char *o, int st)
{
    for (int i = 0; i < gs->n; i++)
        if (!strcmp(gs->g[i].p, p) && !strcmp(gs->g[i].o, o) && gs->g[i].state == st)
            return gs->g[i].n;
    return 0;
}

PB_TEST(count_groups_by_pipeline_output_state)
{
    struct tdir t;
    struct groups gs = {0};
    int64_t ids[2];

    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    PB_EQ_INT(ingest(s, "p", "m1", OUTS2, 2, ids), 0);
    PB_EQ_INT(result(s, ids[0], 1, PB_DSTATE_DELIVERED, 200, NULL), 0);
    PB_EQ_INT(ingest(s, "p", "m2", OUTS2, 2, ids), 0);
    PB_EQ_INT(result(s, ids[1], 1, PB_DSTATE_DEAD, 404, "gone"), 0);
    PB_EQ_INT(ingest(s, "q", "m3", OUTS1, 1, ids), 0);
    PB_EQ_INT(pb_store_count(s, groups_cb, &gs, NULL), 0);
    PB_EQ_INT(gs.n, 5);
    PB_EQ_INT(group_n(&gs, "p", "a", PB_DSTATE_DELIVERED), 1);
    PB_EQ_INT(group_n(&gs, "p", "a", PB_DSTATE_PENDING), 1);
    PB_EQ_INT(group_n(&gs, "p", "b", PB_DSTATE_PENDING), 1);
    PB_EQ_INT(group_n(&gs, "p", "b", PB_DSTATE_DEAD), 1);
    PB_EQ_INT(group_n(&gs, "q", "a", PB_DSTATE_PENDING), 1);
    struct groups pending = {0};
    PB_EQ_INT(pb_store_count_pending(s, groups_cb, &pending, NULL), 0);
    PB_EQ_INT(pending.n, 3);
    PB_EQ_INT(group_n(&pending, "p", "a", PB_DSTATE_PENDING), 1);
    PB_EQ_INT(group_n(&pending, "p", "b", PB_DSTATE_PENDING), 1);
    PB_EQ_INT(group_n(&pending, "q", "a", PB_DSTATE_PENDING), 1);
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

PB_TEST(json_views)
{
    struct tdir t;
    struct pb_err err;
    struct pb_op op;
    int64_t ids[5][2];
    char id[16];
    static const char *const bodies[] = {"{\"a\": [1, \"x\"], \"b\": null}", "not json \x01",
                                         "{\"price\": 1.10}", "\"just a string\"",
                                         "{\"k\":1,\"k\":2}"};

    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof(id), "m%d", i);
        ingest_init(&op, i == 4 ? "q" : "p", id, bodies[i], strlen(bodies[i]), OUTS2, 2, ids[i]);
        op.u.ingest.content_type = i == 1 ? "text/plain" : NULL;
        PB_EQ_INT(pb_store_exec(s, &op), 0);
        PB_EQ_INT(result(s, ids[i][0], 1, PB_DSTATE_DEAD, 500, "boom"), 0);
    }

    /* One message. */
    json_t *m = pb_admin_message_json(s, "m0", &err);
    PB_CHECK(m != NULL);
    if (m) {
        PB_EQ_STR(json_string_value(json_object_get(m, "id")), "m0");
        PB_EQ_STR(json_string_value(json_object_get(m, "pipeline")), "p");
        PB_EQ_INT(json_integer_value(json_object_get(m, "received_at")), 1000);
        PB_CHECK(json_is_null(json_object_get(m, "content_type")));
        json_t *body = json_object_get(m, "body");
        PB_CHECK(json_is_object(body));
        PB_EQ_STR(json_string_value(json_array_get(json_object_get(body, "a"), 1)), "x");
        PB_CHECK(json_object_get(m, "body_base64") == NULL);
        json_t *d = json_array_get(json_object_get(m, "deliveries"), 1);
        PB_EQ_INT(json_integer_value(json_object_get(d, "id")), ids[0][1]);
        PB_EQ_STR(json_string_value(json_object_get(d, "output")), "b");
        PB_EQ_STR(json_string_value(json_object_get(d, "state")), "pending");
        PB_EQ_INT(json_integer_value(json_object_get(d, "attempts")), 0);
        PB_EQ_INT(json_integer_value(json_object_get(d, "next_at")), 1000);
        PB_CHECK(json_is_null(json_object_get(d, "last_status")));
        PB_CHECK(json_is_null(json_object_get(d, "last_error")));
        PB_CHECK(json_is_null(json_object_get(d, "replay_of")));
        PB_EQ_INT(json_array_size(json_object_get(d, "attempt_log")), 0);
    }
    json_decref(m);

    /* Bodies that are not JSON, or would not print back the same, go as base64. */
    static const char *const b64[] = {NULL, "bm90IGpzb24gAQ==", "eyJwcmljZSI6IDEuMTB9", NULL,
                                      "eyJrIjoxLCJrIjoyfQ=="};
    for (int i = 1; i < 5; i++) {
        snprintf(id, sizeof(id), "m%d", i);
        m = pb_admin_message_json(s, id, &err);
        PB_CHECK(m != NULL);
        if (b64[i]) {
            PB_EQ_STR(json_string_value(json_object_get(m, "body_base64")), b64[i]);
            PB_CHECK(json_object_get(m, "body") == NULL);
        } else {
            PB_EQ_STR(json_string_value(json_object_get(m, "body")), "just a string");
        }
        json_decref(m);
    }
    PB_CHECK(pb_admin_message_json(s, "nope", &err) == NULL);
    PB_EQ_INT(err.code, PB_ENOTFOUND);

    /* Dead letters, paged. */
    json_t *page = pb_admin_dead_letters_json(s, "p", NULL, 0, 2, &err);
    PB_CHECK(page != NULL);
    json_t *items = json_object_get(page, "items");
    PB_EQ_INT(json_array_size(items), 2);
    json_t *it = json_array_get(items, 0);
    PB_EQ_INT(json_integer_value(json_object_get(it, "id")), ids[0][0]);
    PB_EQ_STR(json_string_value(json_object_get(it, "message_id")), "m0");
    PB_EQ_STR(json_string_value(json_object_get(it, "pipeline")), "p");
    PB_EQ_STR(json_string_value(json_object_get(it, "output")), "a");
    PB_EQ_INT(json_integer_value(json_object_get(it, "attempts")), 1);
    PB_EQ_INT(json_integer_value(json_object_get(it, "created_at")), 1000);
    PB_EQ_INT(json_integer_value(json_object_get(it, "dead_at")), 2016);
    PB_EQ_INT(json_integer_value(json_object_get(it, "last_status")), 500);
    PB_EQ_STR(json_string_value(json_object_get(it, "last_error")), "boom");
    int64_t next = json_integer_value(json_object_get(page, "next_after"));
    PB_EQ_INT(next, ids[1][0]);
    json_decref(page);
    page = pb_admin_dead_letters_json(s, "p", NULL, next, 2, &err);
    PB_EQ_INT(json_array_size(json_object_get(page, "items")), 2);
    next = json_integer_value(json_object_get(page, "next_after"));
    PB_EQ_INT(next, ids[3][0]);
    json_decref(page);
    page = pb_admin_dead_letters_json(s, "p", NULL, next, 2, &err);
    PB_EQ_INT(json_array_size(json_object_get(page, "items")), 0);
    PB_CHECK(json_is_null(json_object_get(page, "next_after")));
    json_decref(page);
    page = pb_admin_dead_letters_json(s, NULL, NULL, 0, 0, &err); /* default limit */
    PB_EQ_INT(json_array_size(json_object_get(page, "items")), 5);
    PB_CHECK(json_is_null(json_object_get(page, "next_after")));
    json_decref(page);
    page = pb_admin_dead_letters_json(s, NULL, "b", 0, 10, &err);
    PB_EQ_INT(json_array_size(json_object_get(page, "items")), 0);
    json_decref(page);
    page = pb_admin_dead_letters_json(s, "q", "a", 0, 10, &err);
    PB_EQ_INT(json_array_size(json_object_get(page, "items")), 1);
    json_decref(page);

    /* One dead letter. */
    json_t *dl = pb_admin_dead_letter_json(s, ids[1][0], &err);
    PB_CHECK(dl != NULL);
    PB_EQ_STR(json_string_value(json_object_get(dl, "message_id")), "m1");
    PB_EQ_STR(json_string_value(json_object_get(dl, "content_type")), "text/plain");
    PB_EQ_STR(json_string_value(json_object_get(dl, "body_base64")), b64[1]);
    json_t *log = json_object_get(dl, "attempt_log");
    PB_EQ_INT(json_array_size(log), 1);
    PB_EQ_STR(json_string_value(json_object_get(json_array_get(log, 0), "error")), "boom");
    json_decref(dl);
    PB_CHECK(pb_admin_dead_letter_json(s, ids[1][1], &err) == NULL); /* pending */
    PB_EQ_INT(err.code, PB_ENOTFOUND);
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

PB_TEST(utf8_cut)
{
    PB_EQ_INT(pb__store_utf8_cut("abc", 5), 3);
    PB_EQ_INT(pb__store_utf8_cut("abc", 2), 2);
    PB_EQ_INT(pb__store_utf8_cut("a\xc3\xa9z", 2), 1);
    PB_EQ_INT(pb__store_utf8_cut("a\xc3\xa9z", 3), 3);
    PB_EQ_INT(pb__store_utf8_cut("\xe2\x82\xac\xe2\x82\xac", 5), 3);
    PB_EQ_INT(pb__store_utf8_cut("", 0), 0);
}

PB_TEST(invalid_utf8_error_text_shown_replaced)
{
    struct tdir t;
    struct pb_err err;
    int64_t ids[1];

    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    PB_EQ_INT(ingest(s, "p", "m1", OUTS1, 1, ids), 0);
    PB_EQ_INT(result(s, ids[0], 1, PB_DSTATE_DEAD, 502, "bad \xff\xc3 gate \xed\xa0\x80 \xc3\xa9"),
              0);
    json_t *dl = pb_admin_dead_letter_json(s, ids[0], &err);
    PB_CHECK(dl != NULL);
    PB_EQ_STR(json_string_value(json_object_get(dl, "last_error")),
              "bad \xef\xbf\xbd\xef\xbf\xbd gate \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd \xc3\xa9");
    char *text = json_dumps(dl, JSON_COMPACT);
    PB_CHECK(text != NULL);
    free(text);
    json_decref(dl);
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

PB_TEST(text_json)
{
    json_t *j = pb_admin_text_json("plain \xe2\x82\xac", 9);
    PB_EQ_STR(json_string_value(j), "plain \xe2\x82\xac");
    json_decref(j);
    j = pb_admin_text_json("\xe2\x82", 2); /* cut short */
    PB_EQ_STR(json_string_value(j), "\xef\xbf\xbd\xef\xbf\xbd");
    json_decref(j);
    j = pb_admin_text_json("\xc0\xaf\xf5", 3); /* overlong, out of range */
    PB_EQ_INT(json_string_length(j), 9);
    json_decref(j);
}

PB_TEST(dstate_names)
{
    PB_EQ_STR(pb_dstate_name(PB_DSTATE_PENDING), "pending");
    PB_EQ_STR(pb_dstate_name(PB_DSTATE_DELIVERED), "delivered");
    PB_EQ_STR(pb_dstate_name(PB_DSTATE_DEAD), "dead");
    PB_EQ_STR(pb_dstate_name(PB_DSTATE_FILTERED), "filtered");
    PB_EQ_STR(pb_dstate_name(PB_DSTATE_REPLAYED), "replayed");
    PB_EQ_STR(pb_dstate_name((enum pb_dstate)42), "unknown");
}

/* A removed sub-output's pending deliveries go to the dead-letter queue
 * with the reason; other sub-outputs and finished deliveries stay. */
PB_TEST(sub_kill_dead_letters_only_that_sub_output)
{
    static const char *const outs[] = {"hooks/ep_a", "hooks/ep_b"};
    struct tdir t;
    int64_t parent[1], child[2];
    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    PB_EQ_INT(ingest(s, "p", "m1", HOOKS1, 1, parent), 0);
    PB_EQ_INT(fanout(s, parent[0], outs, 2, child), 0);
    struct pb_op op = {.kind = PB_OP_SUB_KILL};
    op.u.sub_kill = (struct pb_op_sub_kill){.pipeline = "p",
                                            .output = "hooks",
                                            .sub = "ep_a",
                                            .reason = "endpoint deleted",
                                            .now = 9000};
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_EQ_INT(op.u.sub_kill.dead, 1);
    PB_EQ_INT(sql_int(t.path, "SELECT state FROM deliveries WHERE sub = 'ep_a'"), 2);
    PB_EQ_INT(sql_int(t.path, "SELECT state FROM deliveries WHERE sub = 'ep_b'"), 0);
    struct pb_err err = {0};
    json_t *dl = pb_admin_dead_letters_json(s, "p", "hooks/ep_a", 0, 10, &err);
    PB_EQ_INT(json_array_size(json_object_get(dl, "items")), 1);
    PB_EQ_STR(json_string_value(
                  json_object_get(json_array_get(json_object_get(dl, "items"), 0), "last_error")),
              "endpoint deleted");
    json_decref(dl);
    /* Again: nothing left to kill. */
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_EQ_INT(op.u.sub_kill.dead, 0);
    op.u.sub_kill.sub = NULL;
    PB_EQ_INT(pb_store_exec(s, &op), PB_EINVAL);
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

struct kvs {
    int n;
    char keys[8][32];
    char values[8][64];
};

static int kvs_cb(void *arg, const char *key, const void *value, size_t len)
{
    struct kvs *k = arg;
    if (k->n < 8) {
        snprintf(k->keys[k->n], sizeof(k->keys[0]), "%s", key);
        snprintf(k->values[k->n], sizeof(k->values[0]), "%.*s", (int)len, (const char *)value);
    }
    k->n++;
    return 0;
}

/* Key-value state: written alone or with an input's batch, read back by
 * scope in key order, deleted with a NULL value. */
PB_TEST(kv_put_delete_and_batch)
{
    struct tdir t;
    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    struct pb_kv_put puts[] = {
        {.scope = "output/p/hooks", .key = "endpoint/b", .value = "{\"id\":\"b\"}", .len = 10},
        {.scope = "output/p/hooks", .key = "endpoint/a", .value = "{\"id\":\"a\"}", .len = 10},
        {.scope = "output/p/other", .key = "x", .value = "1", .len = 1},
    };
    struct pb_op op = {.kind = PB_OP_KV};
    op.u.kv = (struct pb_op_kv){.n = 3, .kv = puts, .now = 100};
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    struct kvs k = {0};
    struct pb_err err = {0};
    PB_EQ_INT(pb_store_kv_load(s, "output/p/hooks", kvs_cb, &k, &err), 0);
    PB_EQ_INT(k.n, 2);
    PB_EQ_STR(k.keys[0], "endpoint/a");
    PB_EQ_STR(k.values[1], "{\"id\":\"b\"}");
    struct pb_kv_put del = {.scope = "output/p/hooks", .key = "endpoint/a"};
    op.u.kv = (struct pb_op_kv){.n = 1, .kv = &del, .now = 200};
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    memset(&k, 0, sizeof(k));
    PB_EQ_INT(pb_store_kv_load(s, "output/p/hooks", kvs_cb, &k, &err), 0);
    PB_EQ_INT(k.n, 1);
    /* A batch and its checkpoint: one op, committed together. */
    int64_t ids[1];
    struct pb_op_ingest item;
    struct pb_op in;
    ingest_init(&in, "p", "batch-1", "{}", 2, OUTS1, 1, ids);
    item = in.u.ingest;
    struct pb_kv_put ck = {.scope = "input/p", .key = "offset", .value = "42", .len = 2};
    struct pb_op sub = {.kind = PB_OP_SUBMIT};
    sub.u.submit = (struct pb_op_submit){.n = 1, .items = &item, .nkv = 1, .kv = &ck, .now = 300};
    PB_EQ_INT(pb_store_exec(s, &sub), 0);
    PB_CHECK(item.msg_seq > 0);
    memset(&k, 0, sizeof(k));
    PB_EQ_INT(pb_store_kv_load(s, "input/p", kvs_cb, &k, &err), 0);
    PB_EQ_INT(k.n, 1);
    PB_EQ_STR(k.values[0], "42");
    /* An invalid item fails the whole op before anything is written. */
    struct pb_op_ingest bad = item;
    bad.msg_id = NULL;
    struct pb_kv_put ck2 = {.scope = "input/p", .key = "offset", .value = "43", .len = 2};
    sub.u.submit = (struct pb_op_submit){.n = 1, .items = &bad, .nkv = 1, .kv = &ck2, .now = 400};
    PB_EQ_INT(pb_store_exec(s, &sub), PB_EINVAL);
    memset(&k, 0, sizeof(k));
    PB_EQ_INT(pb_store_kv_load(s, "input/p", kvs_cb, &k, &err), 0);
    PB_EQ_STR(k.values[0], "42");
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

/* A store of schema 7 with managed and static webhook endpoints: opening it
 * moves them into the webhook output's state, and drops the old tables. */
PB_TEST(migrate_v7_endpoints_into_output_state)
{
    SQLITE_ONLY();
    struct tdir t;
    tdir_make(&t);
    sqlite3 *db = NULL;
    PB_EQ_INT(sqlite3_open(t.path, &db), SQLITE_OK);
    for (int v = 1; v <= 7; v++)
        PB_EQ_INT(sqlite3_exec(db, pb__sqlite_migration_sql(v), NULL, NULL, NULL), SQLITE_OK);
    PB_EQ_INT(sqlite3_exec(db,
                           "PRAGMA application_id=1885495673;"
                           "INSERT INTO meta VALUES ('schema_version', '7'), ('node_id', "
                           "'0123456789abcdef'), ('created_at', '1'), ('epoch', '4');"
                           "INSERT INTO endpoints VALUES ('ep_1', 'p', 'hooks', "
                           "'https://crm.test/h', 'crm', '[\"order.*\"]', "
                           "'[{\"key\":\"whsec_x\",\"expires_at\":null}]', '10/s', 1, 'gone', 0, "
                           "10, 20);"
                           "INSERT INTO static_endpoint_state VALUES ('p', 'hooks', 'st_1', "
                           "'https://static.test/', 1, '410', 5, 30);",
                           NULL, NULL, NULL),
              SQLITE_OK);
    sqlite3_close(db);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    struct kvs k = {0};
    struct pb_err err = {0};
    PB_EQ_INT(pb_store_kv_load(s, "output/p/hooks", kvs_cb, &k, &err), 0);
    PB_EQ_INT(k.n, 2);
    PB_EQ_STR(k.keys[0], "endpoint/ep_1");
    PB_EQ_STR(k.keys[1], "static/st_1");
    pb_store_destroy(s);
    s = NULL;
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM sqlite_schema WHERE name IN ('endpoints',"
                              " 'static_endpoint_state')"),
              0);
    PB_EQ_INT(sql_int(t.path, "SELECT json_extract(value, '$.disabled') FROM kv WHERE key ="
                              " 'endpoint/ep_1'"),
              1);
    PB_EQ_INT(sql_int(t.path, "SELECT json_array_length(value, '$.secrets') FROM kv WHERE key ="
                              " 'endpoint/ep_1'"),
              1);
    PB_EQ_INT(sql_int(t.path, "SELECT json_extract(value, '$.failing_since') FROM kv WHERE key ="
                              " 'static/st_1'"),
              5);
    PB_EQ_INT(sql_int(t.path, "SELECT value FROM meta WHERE key = 'schema_version'"),
              PB_STORE_SCHEMA_VERSION);
out:
    tdir_remove(&t);
}

/* Replay-all goes in batches (short transactions), exactly per output or
 * sub-output, and says when there may be more. */
PB_TEST(replay_all_in_batches_exact_per_sub_output)
{
    static const char *const outs[] = {"hooks/ep_a", "hooks/ep_b"};
    struct tdir t;
    int64_t ids[1], child[2];
    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof(id), "m%d", i);
        PB_EQ_INT(ingest(s, "p", id, OUTS1, 1, ids), 0);
        PB_EQ_INT(result(s, ids[0], 1, PB_DSTATE_DEAD, 404, "no"), 0);
    }
    PB_EQ_INT(ingest(s, "p", "f", HOOKS1, 1, ids), 0);
    PB_EQ_INT(fanout(s, ids[0], outs, 2, child), 0);
    PB_EQ_INT(result(s, child[0], 1, PB_DSTATE_DEAD, 500, "down"), 0);
    PB_EQ_INT(result(s, child[1], 1, PB_DSTATE_DEAD, 500, "down"), 0);
    struct pb_op op = {.kind = PB_OP_REPLAY_ALL};
    int64_t counts[4] = {0};
    bool more[4] = {0};
    for (int k = 0; k < 4; k++) {
        op.u.replay_all =
            (struct pb_op_replay_all){.pipeline = "p", .output = "a", .now = 5000, .limit = 2};
        PB_EQ_INT(pb_store_exec(s, &op), 0);
        counts[k] = op.u.replay_all.count;
        more[k] = op.u.replay_all.more;
    }
    PB_EQ_INT(counts[0], 2);
    PB_CHECK(more[0]);
    PB_EQ_INT(counts[1], 2);
    PB_EQ_INT(counts[2], 1);
    PB_CHECK(!more[2]);
    PB_EQ_INT(counts[3], 0);
    /* One sub-output only; the other keeps its dead letter. */
    op.u.replay_all =
        (struct pb_op_replay_all){.pipeline = "p", .output = "hooks", .sub = "ep_b", .now = 6000};
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_EQ_INT(op.u.replay_all.count, 1);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries WHERE sub = 'ep_a' AND state = 2"),
              1);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries WHERE sub = 'ep_b' AND state = 0"),
              1);
    /* The output itself (sub NULL) is not its sub-outputs. */
    op.u.replay_all = (struct pb_op_replay_all){.pipeline = "p", .output = "hooks", .now = 7000};
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_EQ_INT(op.u.replay_all.count, 0);
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

/* Checkpoints run off the writer and keep the write-ahead log bounded under
 * steady load: 60,000 messages of 1 KB (over 100 MB of log pages) committed
 * back to back leave a log a fraction of that (it starts over each time a
 * checkpoint has caught up), and every message is in the database. */
PB_TEST(checkpoints_keep_the_log_bounded_under_load)
{
    SQLITE_ONLY();
    struct tdir t;
    tdir_make(&t);
    static char body[1024];
    static struct pb_op ops[60000];
    static char ids[60000][16];
    memset(body, 'x', sizeof(body));
    body[0] = '"';
    body[sizeof(body) - 1] = '"';
    struct pb_store *s = open_started(t.url);
    PB_CHECK(s != NULL);
    for (int i = 0; i < 60000; i++) {
        snprintf(ids[i], sizeof(ids[i]), "m%d", i);
        ingest_init(&ops[i], "p", ids[i], body, sizeof(body), OUTS2, 2, NULL);
        int rc;
        while ((rc = pb_store_submit(s, &ops[i])) == PB_EFULL)
            sleep_ms(1); /* the ingest queue is full: let the writer catch up */
        PB_EQ_INT(rc, 0);
    }
    pb_store_stop(s); /* every op committed; the connections are still open */
    char wal[400];
    struct stat st;
    snprintf(wal, sizeof(wal), "%s-wal", t.path);
    PB_EQ_INT(stat(wal, &st), 0);
    if (st.st_size > 40L * 1024 * 1024)
        PB__FAIL("write-ahead log grew to %lld bytes", (long long)st.st_size);
    pb_store_destroy(s);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM messages"), 60000);
    tdir_remove(&t);
}

int main(void)
{
    return pb_test_main();
}
