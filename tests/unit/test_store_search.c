/* test_store_search.c - what the state store gives the dashboard: message
 * search (filters, keyset pages, skipping deliveries), dead letters by
 * filter in both orders, dead-letter sets replayed and purged by id, a
 * message injected (edit-and-replay, a test event to a sub-output), and
 * the schema migration that keeps idempotency keys with messages, and the
 * partner's answer excerpt kept once per attempt (and its migration). */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <sqlite3.h>

#include "admin/views.h"
#include "pb_test.h"
#include "store/pb_store.h"
#include "store/sqlite_int.h"

struct tdir {
    char dir[64];
    char path[320]; /* dir/state.db, or the PostgreSQL URL */
    char url[320];  /* sqlite:path, or postgres://...?schema=s_... */
    bool pg;
    char schema[32];
};

/* With PB_TEST_STORE_URL (a PostgreSQL database) every test runs there,
 * each in a schema of its own; else on SQLite. */
static const char *pg_base(void)
{
    const char *u = getenv("PB_TEST_STORE_URL");
    return u && *u ? u : NULL;
}

static void tdir_make(struct tdir *t)
{
    static int seq;
    memset(t, 0, sizeof(*t));
    snprintf(t->dir, sizeof(t->dir), "/tmp/pbsearch-XXXXXX");
    if (!mkdtemp(t->dir)) {
        perror("mkdtemp");
        exit(2);
    }
    const char *base = pg_base();
    if (base) {
        t->pg = true;
        snprintf(t->schema, sizeof(t->schema), "s_%d_%d", (int)getpid(), ++seq);
        snprintf(t->url, sizeof(t->url), "%.200s%sschema=%s", base, strchr(base, '?') ? "&" : "?",
                 t->schema);
        snprintf(t->path, sizeof(t->path), "%s", t->url);
        return;
    }
    snprintf(t->path, sizeof(t->path), "%s/state.db", t->dir);
    snprintf(t->url, sizeof(t->url), "sqlite:%.300s", t->path);
}

/* sql on the PostgreSQL database of url in its schema: the first column of
 * the first row as an integer (0 for a command), -1 on error. */
static void pg_no_notice(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

static long long pg_sql(const char *url, const char *sql)
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
            v = PQgetisnull(r, 0, 0) ? 0 : atoll(PQgetvalue(r, 0, 0));
        else if (st == PGRES_COMMAND_OK)
            v = 0;
        else
            fprintf(stderr, "  pg_sql: %s: %s", sql, PQerrorMessage(c));
        PQclear(r);
    }
    PQfinish(c);
    return v;
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
        pg_sql(pg_base(), sql);
    }
}

static struct pb_store *open_started(const char *url)
{
    struct pb_err err = {0};
    struct pb_store *s = pb_store_open(url, NULL, &err);
    if (!s) {
        PB__FAIL("pb_store_open(%s): %s", url, err.msg);
        return NULL;
    }
    if (pb_store_start(s) != 0)
        PB__FAIL("pb_store_start failed");
    return s;
}

static long long sql_int(const char *path, const char *sql)
{
    if (strncmp(path, "postgres", 8) == 0)
        return pg_sql(path, sql);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long long v = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        int rc = sqlite3_step(st);
        v = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : rc == SQLITE_DONE ? 0 : -1;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static const char *const OUTS2[] = {"a", "b"};

/* Message id at received_at, JSON body, key (may be NULL), deliveries to a and b. */
static int ingest(struct pb_store *s, const char *pipeline, const char *id, int64_t at,
                  const char *body, const char *key, int64_t *ids)
{
    struct pb_op op = {.kind = PB_OP_INGEST};
    op.u.ingest = (struct pb_op_ingest){.pipeline = pipeline,
                                        .msg_id = id,
                                        .body = body,
                                        .len = strlen(body),
                                        .meta = "{\"input\":\"http_server\"}",
                                        .meta_len = 23,
                                        .received_at = at,
                                        .idem_key = key,
                                        .idem_expires_at = at + 1000000,
                                        .noutputs = 2,
                                        .outputs = OUTS2,
                                        .first_due_at = at,
                                        .delivery_ids = ids};
    return pb_store_exec(s, &op);
}

static int result(struct pb_store *s, int64_t id, enum pb_dstate st, int status, int64_t at,
                  const char *error)
{
    struct pb_op op = {.kind = PB_OP_RESULT};
    op.u.result = (struct pb_op_result){.delivery_id = id,
                                        .attempt = 1,
                                        .started_at = at,
                                        .latency_ms = 5,
                                        .status = status,
                                        .state = st,
                                        .next_at = at + 1000,
                                        .error = error};
    return pb_store_exec(s, &op);
}

/* ---- search -------------------------------------------------------------------------------- */

struct found {
    char ids[64][PB_MSG_ID_MAX];
    char keys[64][64];
    int64_t at[64], seq[64];
    int n;
    int ndeliveries;
    const char *skip_unless; /* message ids not containing it are skipped */
    int stop_after;          /* stop at that many messages (0: never) */
};

static int f_message(void *arg, const struct pb_message_row *m)
{
    struct found *f = arg;
    if (f->stop_after && f->n == f->stop_after)
        return 1;
    if (f->skip_unless && !strstr(m->id, f->skip_unless))
        return PB_READ_SKIP;
    if (f->n < 64) {
        snprintf(f->ids[f->n], sizeof(f->ids[0]), "%s", m->id);
        snprintf(f->keys[f->n], sizeof(f->keys[0]), "%s", m->idem_key ? m->idem_key : "-");
        f->at[f->n] = m->received_at;
        f->seq[f->n] = m->seq;
    }
    f->n++;
    return 0;
}

static int f_delivery(void *arg, const struct pb_delivery_row *d)
{
    struct found *f = arg;
    f->ndeliveries++;
    return 0;
}

static int search(struct pb_store *s, const struct pb_msg_query *q, struct found *f)
{
    struct pb_read_cbs cb = {.arg = f, .message = f_message, .delivery = f_delivery};
    struct pb_err err = {0};
    int rc = pb_store_search_messages(s, q, &cb, &err);
    if (rc && rc != PB_ENOMEM)
        PB__FAIL("search: %s", err.msg);
    return rc;
}

PB_TEST(search_filters_and_pages_newest_first)
{
    struct tdir t;
    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    int64_t ids[10][2];
    char id[16], key[16];
    /* m0..m9 received 1000, 2000, ...; m4 and m5 at the same time. */
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof(id), "m%d", i);
        snprintf(key, sizeof(key), "k-%d", i);
        int64_t at = 1000 * (i == 5 ? 5 : i + 1);
        PB_EQ_INT(
            ingest(s, i % 2 ? "odd" : "even", id, at, "{\"n\":1}", i == 9 ? NULL : key, ids[i]), 0);
    }
    PB_EQ_INT(result(s, ids[3][0], PB_DSTATE_DEAD, 500, 9000, "down"), 0);
    PB_EQ_INT(result(s, ids[6][1], PB_DSTATE_DELIVERED, 200, 9000, NULL), 0);

    struct found f = {0};
    struct pb_msg_query q = {.state = -1, .limit = 4};
    search(s, &q, &f);
    PB_EQ_INT(f.n, 4);
    PB_EQ_STR(f.ids[0], "m9");
    PB_EQ_STR(f.ids[3], "m6");
    PB_EQ_INT(f.ndeliveries, 8);
    PB_EQ_STR(f.keys[0], "-");
    PB_EQ_STR(f.keys[1], "k-8");
    /* The next pages go on from the last row, ties on received_at by seq. */
    const char *want[] = {"m5", "m4", "m3", "m2", "m1", "m0"};
    for (int page = 0; page < 3; page++) {
        q.before_at = f.at[f.n - 1];
        q.before_seq = f.seq[f.n - 1];
        q.limit = 2;
        memset(&f, 0, sizeof(f));
        search(s, &q, &f);
        PB_EQ_INT(f.n, 2);
        PB_EQ_STR(f.ids[0], want[page * 2]);
        PB_EQ_STR(f.ids[1], want[page * 2 + 1]);
    }
    q.before_at = f.at[1];
    q.before_seq = f.seq[1];
    memset(&f, 0, sizeof(f));
    search(s, &q, &f);
    PB_EQ_INT(f.n, 0);

    /* Each filter. */
    struct {
        struct pb_msg_query q;
        const char *first;
        int n;
    } cases[] = {
        {{.idem_key = "k-7", .state = -1, .limit = 10}, "m7", 1},
        {{.idem_key = "k-7", .pipeline = "even", .state = -1, .limit = 10}, NULL, 0},
        {{.msg_id = "m2", .state = -1, .limit = 10}, "m2", 1},
        {{.pipeline = "odd", .state = -1, .limit = 10}, "m9", 5},
        {{.since = 3000, .until = 5000, .state = -1, .limit = 10}, "m3", 2},
        {{.state = PB_DSTATE_DEAD, .limit = 10}, "m3", 1},
        {{.state = PB_DSTATE_DEAD, .output = "b", .limit = 10}, NULL, 0},
        {{.state = PB_DSTATE_DELIVERED, .output = "b", .limit = 10}, "m6", 1},
        {{.state = PB_DSTATE_PENDING, .output = "a", .limit = 10}, "m9", 9},
        {{.output = "c", .state = -1, .limit = 10}, NULL, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        memset(&f, 0, sizeof(f));
        search(s, &cases[i].q, &f);
        if (f.n != cases[i].n || (cases[i].first && strcmp(f.ids[0], cases[i].first) != 0))
            PB__FAIL("case %zu: %d messages, first %s; want %d, %s", i, f.n, f.n ? f.ids[0] : "-",
                     cases[i].n, cases[i].first ? cases[i].first : "-");
        pb__checks++;
    }

    /* A message the caller skips costs no delivery read; a stop stops. */
    memset(&f, 0, sizeof(f));
    f.skip_unless = "m1";
    q = (struct pb_msg_query){.state = -1, .limit = 10};
    search(s, &q, &f);
    PB_EQ_INT(f.n, 1);
    PB_EQ_INT(f.ndeliveries, 2);
    memset(&f, 0, sizeof(f));
    f.stop_after = 2;
    PB_CHECK(search(s, &q, &f) != 0);

    /* The message view shows the key. */
    struct pb_err err = {0};
    json_t *m = pb_admin_message_json(s, "m7", &err);
    PB_EQ_STR(json_string_value(json_object_get(m, "idempotency_key")), "k-7");
    json_decref(m);
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

/* ---- dead letters -------------------------------------------------------------------------- */

struct counts {
    int64_t dead_a, dead_b, other;
};

static void count_cb(void *arg, const char *pipeline, const char *output, const char *sub,
                     enum pb_dstate state, int64_t count)
{
    struct counts *c = arg;
    if (state != PB_DSTATE_DEAD)
        c->other += count;
    else if (strcmp(output, "a") == 0)
        c->dead_a += count;
    else
        c->dead_b += count;
}

struct dl {
    int64_t ids[64];
    int n;
};

static int dl_cb(void *arg, const struct pb_delivery_row *d)
{
    struct dl *l = arg;
    if (l->n < 64)
        l->ids[l->n] = d->id;
    l->n++;
    return 0;
}

static struct dl dead(struct pb_store *s, struct pb_dead_query q)
{
    struct dl l = {0};
    struct pb_read_cbs cb = {.arg = &l, .delivery = dl_cb};
    struct pb_err err = {0};
    if (pb_store_read_dead_letters(s, &q, &cb, &err) != 0)
        PB__FAIL("read_dead_letters: %s", err.msg);
    return l;
}

PB_TEST(dead_letters_by_filter_both_ways)
{
    struct tdir t;
    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    int64_t ids[6][2];
    char id[16];
    static const char *const errors[] = {"HTTP 500: Internal",
                                         "HTTP 404: Not Found",
                                         "connection refused",
                                         "HTTP 500: internal error",
                                         "timeout",
                                         "HTTP 503"};
    static const int statuses[] = {500, 404, 0, 500, 0, 503};
    for (int i = 0; i < 6; i++) {
        snprintf(id, sizeof(id), "m%d", i);
        PB_EQ_INT(ingest(s, i < 3 ? "p" : "q", id, 1000, "{}", NULL, ids[i]), 0);
        PB_EQ_INT(result(s, ids[i][0], PB_DSTATE_DEAD, statuses[i], 10000 + i * 1000, errors[i]),
                  0);
    }
    /* The queue's size per output, from the dead deliveries only. */
    struct counts c = {0};
    struct pb_err cerr = {0};
    PB_EQ_INT(pb_store_count_dead(s, count_cb, &c, &cerr), 0);
    PB_EQ_INT(c.dead_a, 6);
    PB_EQ_INT(c.dead_b, 0);
    PB_EQ_INT(c.other, 0);
    /* Dead at the time the result was recorded: updated_at is the op's own. */
    struct dl l = dead(s, (struct pb_dead_query){.limit = 10});
    PB_EQ_INT(l.n, 6);
    PB_EQ_INT(l.ids[0], ids[0][0]);
    l = dead(s, (struct pb_dead_query){.limit = 2, .newest_first = true});
    PB_EQ_INT(l.n, 2);
    PB_EQ_INT(l.ids[0], ids[5][0]);
    PB_EQ_INT(l.ids[1], ids[4][0]);
    l = dead(s, (struct pb_dead_query){.limit = 10, .newest_first = true, .before_id = ids[4][0]});
    PB_EQ_INT(l.n, 4);
    PB_EQ_INT(l.ids[0], ids[3][0]);
    l = dead(s, (struct pb_dead_query){.limit = 10, .after_id = ids[4][0]});
    PB_EQ_INT(l.n, 1);
    l = dead(s, (struct pb_dead_query){.limit = 10, .error = "internal"});
    PB_EQ_INT(l.n, 2); /* case-blind */
    l = dead(s, (struct pb_dead_query){.limit = 10, .error = "internal", .pipeline = "q"});
    PB_EQ_INT(l.n, 1);
    PB_EQ_INT(l.ids[0], ids[3][0]);
    l = dead(s, (struct pb_dead_query){.limit = 10, .status = 500});
    PB_EQ_INT(l.n, 2);
    l = dead(s, (struct pb_dead_query){.limit = 10, .output = "b"});
    PB_EQ_INT(l.n, 0);
    int64_t t1 = sql_int(t.path, "SELECT min(updated_at) FROM deliveries WHERE state = 2");
    l = dead(s, (struct pb_dead_query){.limit = 10, .since = t1, .until = t1 + 1});
    PB_CHECK(l.n >= 1);
    l = dead(s, (struct pb_dead_query){.limit = 10, .until = t1});
    PB_EQ_INT(l.n, 0);

    /* A filtered set, replayed and purged by id. */
    struct pb_op op = {.kind = PB_OP_REPLAY_ALL};
    int64_t set[] = {ids[0][0], ids[1][0], ids[1][1] /* pending: not dead */};
    op.u.replay_all = (struct pb_op_replay_all){.ids = set, .nids = 3, .now = 20000};
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_EQ_INT(op.u.replay_all.count, 2);
    PB_CHECK(!op.u.replay_all.more);
    PB_EQ_INT(op.u.replay_all.count, 2);
    op.u.replay_all = (struct pb_op_replay_all){.ids = set, .nids = 3, .now = 20000};
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_EQ_INT(op.u.replay_all.count, 0); /* replayed already */
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries WHERE state = 4"), 2);

    int64_t purge[] = {ids[2][0], ids[3][0], ids[0][0] /* replayed: not dead */};
    op = (struct pb_op){.kind = PB_OP_PURGE};
    op.u.purge = (struct pb_op_purge){.ids = purge, .nids = 3};
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_EQ_INT(op.u.purge.count, 2);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries WHERE state = 2"), 2);
    /* Their messages stay: their other deliveries still refer to them. */
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM messages"), 6);
    /* One purge keeps its contract. */
    op.u.purge = (struct pb_op_purge){.delivery_id = ids[2][0]};
    PB_EQ_INT(pb_store_exec(s, &op), PB_ENOTFOUND);
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

/* ---- inject -------------------------------------------------------------------------------- */

PB_TEST(edit_and_replay_makes_a_linked_message)
{
    struct tdir t;
    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    int64_t ids[2];
    PB_EQ_INT(ingest(s, "p", "orig", 1000, "{\"n\": 1.10}", "key-1", ids), 0);
    /* The route stage's routed body and ordering key. */
    char sql[256];
    snprintf(sql, sizeof(sql),
             "INSERT INTO routed(seq, body, body_crc, okey) SELECT seq, '{\"n\":1}', 0, 'cust-7'"
             " FROM messages WHERE id = 'orig'");
    PB_EQ_INT(sql_int(t.path, sql), 0);

    /* Not dead yet: nothing is written. */
    int64_t nid[1] = {0};
    struct pb_op op = {.kind = PB_OP_INJECT};
    const char *fixed = "{\"n\": 2}";
    op.u.inject = (struct pb_op_inject){.msg_id = "edited",
                                        .body = fixed,
                                        .len = strlen(fixed),
                                        .replaces = ids[1],
                                        .now = 5000,
                                        .delivery_ids = nid};
    PB_EQ_INT(pb_store_exec(s, &op), PB_ENOTFOUND);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM messages"), 1);

    PB_EQ_INT(result(s, ids[1], PB_DSTATE_DEAD, 422, 3000, "bad amount"), 0);
    op.u.inject = (struct pb_op_inject){.msg_id = "edited",
                                        .body = fixed,
                                        .len = strlen(fixed),
                                        .replaces = ids[1],
                                        .now = 5000,
                                        .delivery_ids = nid};
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_CHECK(nid[0] > ids[1]);
    PB_EQ_STR(op.u.inject.pipeline_out, "p");
    PB_EQ_STR(op.u.inject.output_out, "b");
    snprintf(sql, sizeof(sql), "SELECT state FROM deliveries WHERE id = %lld", (long long)ids[1]);
    PB_EQ_INT(sql_int(t.path, sql), PB_DSTATE_REPLAYED);
    /* The new message: its own body, the old metadata, the old key, a
     * pending unleased delivery to the same output recording the replay. */
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM messages m JOIN messages o ON o.seq ="
                              " m.edit_of WHERE m.id = 'edited' AND o.id = 'orig' AND m.meta ="
                              " o.meta AND m.received_at = 5000 AND m.idem_key IS NULL"),
              1);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM routed r JOIN messages m ON m.seq = r.seq"
                              " WHERE m.id = 'edited' AND r.okey = 'cust-7'"
                              " AND r.body = m.body"),
              1);
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM deliveries WHERE id = %lld AND state = 0 AND output = 'b'"
             " AND lease IS NULL AND replay_of = %lld AND next_at = 5000",
             (long long)nid[0], (long long)ids[1]);
    PB_EQ_INT(sql_int(t.path, sql), 1);

    /* Both views link them. */
    struct pb_err err = {0};
    json_t *m = pb_admin_message_json(s, "edited", &err);
    PB_EQ_STR(json_string_value(json_object_get(m, "edit_of")), "orig");
    PB_CHECK(json_is_object(json_object_get(m, "body")));
    json_decref(m);
    m = pb_admin_message_json(s, "orig", &err);
    PB_EQ_STR(json_string_value(json_array_get(json_object_get(m, "edits"), 0)), "edited");
    PB_EQ_STR(json_string_value(json_object_get(m, "idempotency_key")), "key-1");
    json_decref(m);

    /* A second edit of the same dead letter finds it replayed. */
    op.u.inject = (struct pb_op_inject){.msg_id = "edited2",
                                        .body = fixed,
                                        .len = strlen(fixed),
                                        .replaces = ids[1],
                                        .now = 6000,
                                        .delivery_ids = nid};
    PB_EQ_INT(pb_store_exec(s, &op), PB_ENOTFOUND);
    /* An id taken is refused alone. */
    PB_EQ_INT(result(s, ids[0], PB_DSTATE_DEAD, 500, 3000, "x"), 0);
    op.u.inject = (struct pb_op_inject){.msg_id = "edited",
                                        .body = fixed,
                                        .len = strlen(fixed),
                                        .replaces = ids[0],
                                        .now = 6000,
                                        .delivery_ids = nid};
    PB_CHECK(pb_store_exec(s, &op) != 0);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries WHERE state = 2"), 1);
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

PB_TEST(inject_to_targets_and_sub_outputs)
{
    struct tdir t;
    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    static const char *const outs[] = {"hooks", "a"};
    static const char *const subs[] = {"ep_1", NULL};
    int64_t nid[2] = {0};
    struct pb_op op = {.kind = PB_OP_INJECT};
    op.u.inject = (struct pb_op_inject){.msg_id = "test-1",
                                        .body = "{}",
                                        .len = 2,
                                        .pipeline = "p",
                                        .meta = "{\"input\":\"test\"}",
                                        .meta_len = 16,
                                        .ntargets = 2,
                                        .outputs = outs,
                                        .subs = subs,
                                        .now = 7000,
                                        .delivery_ids = nid};
    PB_EQ_INT(pb_store_exec(s, &op), 0);
    PB_CHECK(nid[0] > 0 && nid[1] > nid[0]);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries WHERE output = 'hooks'"
                              " AND sub = 'ep_1' AND state = 0 AND replay_of IS NULL"),
              1);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries WHERE output = 'a'"
                              " AND sub IS NULL"),
              1);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM routed"), 0);
    /* Without a pipeline or targets it is refused. */
    op.u.inject =
        (struct pb_op_inject){.msg_id = "x", .body = "{}", .len = 2, .now = 1, .delivery_ids = nid};
    PB_EQ_INT(pb_store_exec(s, &op), PB_EINVAL);
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

/* ---- migration ---------------------------------------------------------------------------- */

PB_TEST(migrate_v9_keeps_keys_still_in_the_window)
{
    struct tdir t;
    tdir_make(&t);
    if (t.pg) {
        printf("  (SQLite only)\n");
        goto out;
    }
    sqlite3 *db = NULL;
    PB_EQ_INT(sqlite3_open(t.path, &db), SQLITE_OK);
    for (int v = 1; v <= 9; v++)
        PB_EQ_INT(sqlite3_exec(db, pb__sqlite_migration_sql(v), NULL, NULL, NULL), SQLITE_OK);
    PB_EQ_INT(sqlite3_exec(db,
                           "PRAGMA application_id=1885495673;"
                           "INSERT INTO meta VALUES ('schema_version', '9'), ('node_id', "
                           "'0123456789abcdef'), ('created_at', '1'), ('epoch', '4');"
                           "INSERT INTO messages(id, pipeline, received_at, body) VALUES"
                           " ('m1', 'p', 1, '{}'), ('m2', 'p', 2, '{}');"
                           "INSERT INTO idempotency VALUES ('p', 'order-1', 'm1', 99);",
                           NULL, NULL, NULL),
              SQLITE_OK);
    sqlite3_close(db);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    struct found f = {0};
    struct pb_msg_query q = {.idem_key = "order-1", .state = -1, .limit = 5};
    search(s, &q, &f);
    PB_EQ_INT(f.n, 1);
    PB_EQ_STR(f.ids[0], "m1");
    pb_store_destroy(s);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM messages WHERE idem_key IS NULL"), 1);
    PB_EQ_INT(sql_int(t.path, "SELECT value FROM meta WHERE key = 'schema_version'"),
              PB_STORE_SCHEMA_VERSION);
out:
    tdir_remove(&t);
}

/* PostgreSQL's schema 3: the keys still in the window kept with their
 * messages (plain-text ones), searchable after `patchbay migrate`. */
PB_TEST(pg_migrate_v2_keeps_keys_still_in_the_window)
{
    struct tdir t;
    tdir_make(&t);
    if (!t.pg) {
        printf("  (PostgreSQL only)\n");
        goto out;
    }
    struct pb_store_opts o;
    struct pb_err err = {0};
    pb_store_opts_default(&o);
    o.migrate_to = 2;
    o.migrate_only = true;
    struct pb_store *s = pb_store_open(t.url, &o, &err);
    if (!s) {
        PB__FAIL("open at schema 2: %s", err.msg);
        goto out;
    }
    pb_store_destroy(s);
    PB_EQ_INT(sql_int(t.path, "INSERT INTO messages(id, pipeline, received_at, body) VALUES"
                              " ('m1', 'p', 1, '{}'), ('m2', 'p', 2, '{}'), ('m3', 'p', 3, '{}');"
                              "INSERT INTO idempotency VALUES ('p', 'order-1', 'm1', 99),"
                              " ('p', '\\x5c01', 'm3', 99)"),
              0);
    pb_store_opts_default(&o);
    o.migrate_only = true;
    if (!(s = pb_store_open(t.url, &o, &err))) {
        PB__FAIL("migrate: %s", err.msg);
        goto out;
    }
    pb_store_destroy(s);
    PB_EQ_INT(sql_int(t.path, "SELECT value FROM meta WHERE key = 'schema_version'"), 4);
    if (!(s = open_started(t.url)))
        goto out;
    struct found f = {0};
    struct pb_msg_query q = {.idem_key = "order-1", .state = -1, .limit = 5};
    search(s, &q, &f);
    PB_EQ_INT(f.n, 1);
    PB_EQ_STR(f.ids[0], "m1");
    pb_store_destroy(s);
    /* m2 had no key; m3's is not plain text (a backslash, a control byte). */
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM messages WHERE idem_key IS NULL"), 2);
out:
    tdir_remove(&t);
}

/* ---- the partner's answer per attempt ----------------------------------------------------- */

static int answer_result(struct pb_store *s, int64_t id, int attempt, enum pb_dstate st, int status,
                         const char *error, const char *answer)
{
    struct pb_op op = {.kind = PB_OP_RESULT};
    op.u.result = (struct pb_op_result){.delivery_id = id,
                                        .attempt = attempt,
                                        .started_at = 3000 + attempt,
                                        .latency_ms = 7,
                                        .status = status,
                                        .state = st,
                                        .next_at = 9000,
                                        .error = error,
                                        .answer = answer,
                                        .answer_len = answer ? strlen(answer) : 0};
    return pb_store_exec(s, &op);
}

/* The attempt_log's answers of delivery i of message id, "|"-joined,
 * "null" for none. */
static void answers_of(struct pb_store *s, const char *id, size_t i, char *out, size_t len)
{
    struct pb_err err = {0};
    out[0] = 0;
    json_t *m = pb_admin_message_json(s, id, &err);
    if (!m) {
        PB__FAIL("message %s: %s", id, err.msg);
        return;
    }
    json_t *log =
        json_object_get(json_array_get(json_object_get(m, "deliveries"), i), "attempt_log");
    size_t k;
    json_t *a;
    json_array_foreach(log, k, a)
    {
        json_t *ans = json_object_get(a, "answer");
        size_t n = strlen(out);
        snprintf(out + n, len - n, "%s%s", k ? "|" : "",
                 json_is_string(ans) ? json_string_value(ans)
                 : json_is_null(ans) ? "null"
                                     : "?");
    }
    json_decref(m);
}

/* Every attempt keeps what the partner answered, failed or delivered: in
 * its attempt row, or in the delivery's row for one that ended it at the
 * first try (never both). Longer answers are cut to PB_STORE_ANSWER_MAX. */
PB_TEST(attempt_answers_kept_once_each)
{
    struct tdir t;
    int64_t ids[2], ids2[2];
    char got[1024];
    char big[600];
    tdir_make(&t);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    PB_EQ_INT(ingest(s, "p", "m1", 1000, "{}", NULL, ids), 0);
    PB_EQ_INT(answer_result(s, ids[0], 1, PB_DSTATE_PENDING, 503, "HTTP 503: busy", "busy"), 0);
    PB_EQ_INT(answer_result(s, ids[0], 2, PB_DSTATE_PENDING, 0, "connection refused", NULL), 0);
    PB_EQ_INT(answer_result(s, ids[0], 3, PB_DSTATE_DELIVERED, 200, NULL, "{\"ok\":true}"), 0);
    PB_EQ_INT(answer_result(s, ids[1], 1, PB_DSTATE_DELIVERED, 202, NULL, "accepted <b>&"), 0);
    answers_of(s, "m1", 0, got, sizeof(got));
    PB_EQ_STR(got, "busy|null|{\"ok\":true}");
    answers_of(s, "m1", 1, got, sizeof(got));
    PB_EQ_STR(got, "accepted <b>&");

    /* Dead at the first try, then replayed: the dead letter shows it. */
    PB_EQ_INT(ingest(s, "p", "m2", 1001, "{}", NULL, ids2), 0);
    memset(big, 'y', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    PB_EQ_INT(answer_result(s, ids2[0], 1, PB_DSTATE_DEAD, 400, "HTTP 400", big), 0);
    PB_EQ_INT(answer_result(s, ids2[1], 1, PB_DSTATE_DELIVERED, 204, NULL, NULL), 0);
    struct pb_err err = {0};
    json_t *dl = pb_admin_dead_letter_json(s, ids2[0], &err);
    PB_CHECK(dl != NULL);
    const char *a0 = json_string_value(
        json_object_get(json_array_get(json_object_get(dl, "attempt_log"), 0), "answer"));
    PB_EQ_INT(a0 ? strlen(a0) : 0, PB_STORE_ANSWER_MAX);
    json_decref(dl);
    answers_of(s, "m2", 1, got, sizeof(got));
    PB_EQ_STR(got, "null");
    pb_store_destroy(s);

    /* Kept once: attempt rows for the retried delivery, the row of the
     * delivery for the one delivered at once. */
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM attempts WHERE answer IS NOT NULL"), 2);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM deliveries WHERE last_answer IS NOT NULL"), 2);
out:
    tdir_remove(&t);
}

/* A store of schema 10 (before answers) opens migrated: what it held
 * reads back with no answer, new attempts keep theirs. */
PB_TEST(migrate_v10_adds_attempt_answers)
{
    struct tdir t;
    char got[256];
    tdir_make(&t);
    if (t.pg) {
        printf("  (SQLite only)\n");
        goto out;
    }
    sqlite3 *db = NULL;
    PB_EQ_INT(sqlite3_open(t.path, &db), SQLITE_OK);
    for (int v = 1; v <= 10; v++)
        PB_EQ_INT(sqlite3_exec(db, pb__sqlite_migration_sql(v), NULL, NULL, NULL), SQLITE_OK);
    PB_EQ_INT(sqlite3_exec(db,
                           "PRAGMA application_id=1885495673;"
                           "INSERT INTO meta VALUES ('schema_version', '10'), ('node_id', "
                           "'0123456789abcdef'), ('created_at', '1'), ('epoch', '4');"
                           "INSERT INTO messages(seq, id, pipeline, received_at, body) VALUES"
                           " (1, 'm1', 'p', 1, '{}');"
                           "INSERT INTO deliveries(id, msg_seq, pipeline, output, state, attempts,"
                           " next_at, created_at, updated_at, last_status, last_latency_ms) VALUES"
                           " (1, 1, 'p', 'a', 1, 1, 0, 1, 20, 200, 4),"
                           " (2, 1, 'p', 'b', 0, 1, 99, 1, 20, 503, NULL);"
                           "INSERT INTO attempts VALUES (2, 1, 10, 5, 503, 0, 'HTTP 503');",
                           NULL, NULL, NULL),
              SQLITE_OK);
    sqlite3_close(db);
    struct pb_store *s = open_started(t.url);
    if (!s)
        goto out;
    answers_of(s, "m1", 0, got, sizeof(got));
    PB_EQ_STR(got, "null");
    answers_of(s, "m1", 1, got, sizeof(got));
    PB_EQ_STR(got, "null");
    PB_EQ_INT(answer_result(s, 2, 2, PB_DSTATE_DELIVERED, 200, NULL, "{\"ok\":true}"), 0);
    answers_of(s, "m1", 1, got, sizeof(got));
    PB_EQ_STR(got, "null|{\"ok\":true}");
    pb_store_destroy(s);
    PB_EQ_INT(sql_int(t.path, "SELECT value FROM meta WHERE key = 'schema_version'"),
              PB_STORE_SCHEMA_VERSION);
out:
    tdir_remove(&t);
}

/* PostgreSQL's schema 4 (the answers), from a store of schema 3 by
 * `patchbay migrate`: rows kept, answers kept from then on. */
PB_TEST(pg_migrate_v3_adds_attempt_answers)
{
    struct tdir t;
    char got[256];
    int64_t ids[2];
    tdir_make(&t);
    if (!t.pg) {
        printf("  (PostgreSQL only)\n");
        goto out;
    }
    struct pb_store_opts o;
    struct pb_err err = {0};
    pb_store_opts_default(&o);
    o.migrate_to = 3;
    o.migrate_only = true;
    struct pb_store *s = pb_store_open(t.url, &o, &err);
    if (!s) {
        PB__FAIL("open at schema 3: %s", err.msg);
        goto out;
    }
    pb_store_destroy(s);
    PB_EQ_INT(sql_int(t.path, "SELECT count(*) FROM information_schema.columns WHERE"
                              " table_schema = current_schema() AND column_name = 'answer'"),
              0);
    PB_EQ_INT(sql_int(t.path, "INSERT INTO messages(seq, id, pipeline, received_at, body) VALUES"
                              " (1, 'm0', 'p', 1, '{}');"
                              "INSERT INTO deliveries(id, msg_seq, pipeline, output, state,"
                              " attempts, next_at, created_at, updated_at, last_status,"
                              " last_latency_ms) VALUES (1, 1, 'p', 'a', 1, 1, 0, 1, 20, 200, 4);"
                              "SELECT setval(pg_get_serial_sequence('messages', 'seq'), 1);"
                              "SELECT setval(pg_get_serial_sequence('deliveries', 'id'), 1)"),
              1);
    pb_store_opts_default(&o);
    o.migrate_only = true;
    if (!(s = pb_store_open(t.url, &o, &err))) {
        PB__FAIL("migrate: %s", err.msg);
        goto out;
    }
    pb_store_destroy(s);
    PB_EQ_INT(sql_int(t.path, "SELECT value FROM meta WHERE key = 'schema_version'"), 4);
    if (!(s = open_started(t.url)))
        goto out;
    answers_of(s, "m0", 0, got, sizeof(got));
    PB_EQ_STR(got, "null");
    PB_EQ_INT(ingest(s, "p", "m1", 1000, "{}", NULL, ids), 0);
    PB_EQ_INT(answer_result(s, ids[0], 1, PB_DSTATE_DELIVERED, 200, NULL, "ok"), 0);
    answers_of(s, "m1", 0, got, sizeof(got));
    PB_EQ_STR(got, "ok");
    pb_store_destroy(s);
out:
    tdir_remove(&t);
}

int main(void)
{
    return pb_test_main();
}
