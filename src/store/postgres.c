/* postgres.c - the PostgreSQL state store backend ("postgres://..."), and
 * the design of a cluster of patchbay nodes sharing it.
 *
 * ---- The store ----------------------------------------------------------
 *
 * The same tables and the same ops as the SQLite backend (sqlite.c), in a
 * schema of their own (postgres_schema.c), with the same semantics
 * (tests/unit/test_store.c runs against both). The writer thread (store.c)
 * group-commits: many ops per transaction. Each op is ONE statement (data-
 * modifying CTEs), sent in libpq's pipeline mode: a whole batch goes out
 * without waiting, and its results come back after the COMMIT, in one round
 * trip. synchronous_commit is on, so a COMMIT that returned is durable and
 * done_cbs (acknowledgements) follow it directly: be->sync is NULL. No
 * statement of an op fails for an outcome the op expects (a duplicate, a
 * lost lease, a delivery no longer pending): those are decided inside the
 * statement (ON CONFLICT, WHERE), because an error aborts the whole
 * transaction in PostgreSQL. The idempotency check is one statement:
 * INSERT INTO idempotency ... ON CONFLICT DO UPDATE ... WHERE the old key
 * expired ... RETURNING, so two nodes receiving the same key create one
 * message (the second waits for the first's commit and then sees the key).
 *
 * ---- Nodes, epochs, leases --------------------------------------------------
 *
 * Every process that opens the store is a node: a row of `nodes` with a
 * name (cluster.node; the host name and pid by default), a new EPOCH from
 * a sequence (one per process start), and a heartbeat. The epoch is the
 * lease: every delivery a node holds in memory carries it in
 * deliveries.lease (made leased at ingest, or CLAIMed with FOR UPDATE SKIP
 * LOCKED from those nobody holds), and a RESULT, ROUTE or FANOUT is applied
 * only WHERE lease = the node's epoch. A node presumed dead has its epoch
 * marked dead and its leases set free in one step; should it come back, its
 * epoch matches nothing: it cannot overwrite a newer attempt.
 *
 * The node thread (postgres_node.c, "pb-node", a connection of its own)
 * heartbeats every cluster.heartbeat: expires_at = now + cluster.lease, on
 * the database's clock. Each tick it also presumes dead the nodes whose
 * heartbeat expired, or whose session is gone (a session advisory lock per
 * epoch, held by the node's connection: a killed process's lock goes with
 * its connection, so a kill -9 is noticed after about a heartbeat, not a
 * lease), and then: marks them dead, ends their sessions
 * (pg_terminate_backend: a frozen node can hold locks no longer), sets
 * their leases and holds free and NOTIFYs the others to claim. A node
 * shut down cleanly hands everything back at once (left). A node that
 * learns it was presumed dead (its heartbeat finds its row dead) tells the
 * engine, which restarts the process in place: it joins again under a new
 * epoch with nothing in memory.
 *
 * Until the others could presume it dead a node's leases hold; it checks
 * before each attempt that its last heartbeat got through less than
 * lease - heartbeat ago (pb_store_lease_valid, on the monotonic clock), so
 * a node frozen (SIGSTOP) or cut off starts nothing once its leases may
 * have moved, and what it finishes afterwards is refused by the fence.
 *
 * A frozen node stalls the others for a bounded time only. Claims skip
 * locked rows; the other waits end by the database's own timeouts, set on
 * every session: idle_in_transaction_session_timeout = lease / 3 (1..10 s)
 * ends the transaction of a process frozen between statements (its locks
 * go with it); a process frozen while the server sends it a result is
 * ended when it is presumed dead (pg_terminate_backend, at most lease +
 * heartbeat); lock_timeout = lease + heartbeat bounds any wait behind it;
 * statement_timeout bounds a statement (15 s). Every wait of ours has a
 * deadline (postgres_conn.c): a connection cut without a reset does not
 * hold a thread.
 *
 * ---- What stays single ---------------------------------------------------------
 *
 * A HOLD is a row of `holds` that one node has at a time, named for what
 * it guards: "input/<pipeline>" (a singleton input: pollers, CDC, MQTT's
 * persistent session), "ordered/<pipeline>" (the keys of a pipeline with
 * ordering.key), "retention" (the clean-up). Each node takes free ones (no
 * holder, or a holder no longer live) up to its share (the number wanted
 * over the live nodes, rounded up), so they spread over the cluster; a
 * dead node's are free when it is presumed dead. A singleton input starts
 * on the node that holds it, and its commits (messages with the cursor)
 * are fenced by the hold: a node that lost it cannot move the cursor.
 * An ordered pipeline's deliveries are all made unleased, and only the
 * holder claims them, in id order: a key is owned by one node at a time.
 *
 * ---- Wake-ups ----------------------------------------------------------------------
 *
 * A commit that leaves pending deliveries nobody holds (an output spilled,
 * an ordered pipeline, a replay, a release) or changes shared state (the
 * key-value table: webhook endpoints, tokens) notes it; the node thread
 * NOTIFYs the schema's channel after the commit, at most once per output
 * per NOTIFY_GAP_MS (the last one always goes out). Nodes LISTEN and wake
 * their dispatcher or reload the key; a claim poll every few seconds
 * (engine side) is the fallback for a notification lost with a connection.
 *
 * Threads: open and close on the caller's; begin/apply/commit on the
 * writer; reads on any (a pool of connections, postgres_read.c); the node
 * thread. Each connection is used by one thread at a time. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "patchbay/pb_log.h"
#include "patchbay/pb_time.h"
#include "store/postgres_int.h"

#define DEFAULT_LEASE_MS 30000
#define DEFAULT_HEARTBEAT_MS 5000
#define RECONNECT_GAP_US 1000000

/* ---- the URL ------------------------------------------------------------------------ */

/* The URL for messages, with any password hidden. */
static char *redact(const char *url)
{
    const char *sep = strstr(url, "://");
    const char *at = sep ? strchr(sep + 3, '@') : NULL;
    const char *slash = sep ? strchr(sep + 3, '/') : NULL;
    const char *colon = sep ? strchr(sep + 3, ':') : NULL;
    size_t n = strlen(url) + 8;
    char *out = malloc(n);
    if (!out)
        return NULL;
    if (at && (!slash || at < slash) && colon && colon < at)
        snprintf(out, n, "%.*s:***%s", (int)(colon - url), url, at);
    else
        snprintf(out, n, "%s", url);
    /* A password= parameter too. */
    char *pw = strstr(out, "password=");
    if (pw) {
        char *end = strchr(pw, '&');
        size_t tail = end ? strlen(end) : 0;
        memmove(pw + 12, end ? end : pw + strlen(pw), tail + 1);
        memcpy(pw, "password=***", 12);
    }
    return out;
}

static bool name_ok(const char *s, size_t n)
{
    if (n == 0 || n > 30 || !((s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return false;
    return true;
}

/* Take our own parameter (schema=NAME) out of the URL's query: libpq
 * refuses parameters it does not know. */
static int take_params(struct pgq *q, const char *url, struct pb_err *err)
{
    snprintf(q->schema, sizeof(q->schema), "patchbay");
    q->url = strdup(url);
    if (!q->url)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    char *qm = strchr(q->url, '?');
    if (!qm)
        return 0;
    char *out = qm + 1, *p = qm + 1;
    while (*p) {
        char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        if (len > 7 && strncmp(p, "schema=", 7) == 0) {
            if (!name_ok(p + 7, len - 7))
                return pb_err_set(err, PB_EINVAL,
                                  "state store URL: schema= takes a lowercase name of letters,"
                                  " digits and _ (at most 30)");
            snprintf(q->schema, sizeof(q->schema), "%.*s", (int)(len - 7), p + 7);
        } else {
            if (out != qm + 1)
                *out++ = '&';
            memmove(out, p, len);
            out += len;
        }
        p = amp ? amp + 1 : p + len;
    }
    *out = 0;
    if (out == qm + 1)
        *qm = 0;
    return 0;
}

static int32_t hash32(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return (int32_t)(h & 0x7fffffff);
}

/* ---- open and close ------------------------------------------------------------------- */

static void pg_close(void *ctx);

static void *pg_open(const char *url, const struct pb_store_opts *o, struct pb_err *err)
{
    struct pgq *q = calloc(1, sizeof(*q));
    if (!q) {
        pb_err_set(err, PB_ENOMEM, "out of memory opening the state store");
        return NULL;
    }
    q->wake_fd = -1;
    pthread_mutex_init(&q->lock, NULL);
    pthread_mutex_init(&q->pool_lock, NULL);
    atomic_init(&q->valid_until, 0);
    atomic_init(&q->reachable, true);
    atomic_init(&q->live_nodes, 1);
    q->display = redact(url);
    if (!q->display || take_params(q, url, err) < 0)
        goto fail;
    q->lease_ms = o && o->lease_ms > 0 ? o->lease_ms : DEFAULT_LEASE_MS;
    q->heartbeat_ms = o && o->heartbeat_ms > 0 ? o->heartbeat_ms : DEFAULT_HEARTBEAT_MS;
    q->migrate_only = o && o->migrate_only;
    snprintf(q->version, sizeof(q->version), "%s", o && o->version ? o->version : "");
    if (o && o->node && *o->node) {
        snprintf(q->node_name, sizeof(q->node_name), "%s", o->node);
    } else {
        char host[64] = "";
        gethostname(host, sizeof(host) - 1);
        snprintf(q->node_name, sizeof(q->node_name), "%s-%ld", host[0] ? host : "node",
                 (long)getpid());
    }
    snprintf(q->channel, sizeof(q->channel), "%s_events", q->schema);
    q->lock_class = hash32(q->schema);
    snprintf(q->appname, sizeof(q->appname), "patchbay@%s", q->schema);

    if (pb__pg_connect(q, &q->w, "writer", err) < 0)
        goto fail;
    if (PQserverVersion(q->w.conn) < 120000) {
        pb_err_set(err, PB_ESTORE, "state store %s: PostgreSQL %d is too old (12 or newer needed)",
                   q->display, PQserverVersion(q->w.conn) / 10000);
        goto fail;
    }
    if (pb__pg_migrate(q, &q->w, o && (o->migrate || o->migrate_only), o ? o->migrate_to : 0, err) <
        0)
        goto fail;
    if (q->migrate_only)
        return q;
    if (pb__pg_node_join(q, err) < 0)
        goto fail;
    /* The writer's sessions carry the epoch: the others end them by it. */
    char sql[192];
    snprintf(sql, sizeof(sql), "SET application_name = '%s'", q->appname);
    if (pb__pg_exec(&q->w, sql, pb__pg_deadline(PG_IO_DEADLINE_MS), NULL, err) < 0)
        goto fail;
    if (pb__pg_node_start(q, err) < 0)
        goto fail;
    return q;
fail:
    pg_close(q);
    return NULL;
}

static void pg_close(void *ctx)
{
    struct pgq *q = ctx;
    if (!q)
        return;
    if (q->epoch && !q->migrate_only)
        pb__pg_node_leave(q);
    pb__pg_readers_close(q);
    pb__pg_close(&q->w);
    pb__pg_close(&q->n);
    for (struct pg_note *n = q->tx_notes, *nx; n; n = nx) {
        nx = n->next;
        free(n);
    }
    for (struct pg_note *n = q->outbox, *nx; n; n = nx) {
        nx = n->next;
        free(n);
    }
    if (q->wake_fd >= 0)
        close(q->wake_fd);
    free(q->pend);
    free(q->leftover);
    free(q->holds);
    pthread_mutex_destroy(&q->lock);
    pthread_mutex_destroy(&q->pool_lock);
    free(q->url);
    free(q->display);
    free(q);
}

static const char *pg_node_id(const void *ctx)
{
    return ((const struct pgq *)ctx)->store_id;
}

static int64_t pg_epoch(const void *ctx)
{
    return ((const struct pgq *)ctx)->epoch;
}

static const char *pg_node_name(const void *ctx)
{
    return ((const struct pgq *)ctx)->node_name;
}

static void pg_set_events(void *ctx, const struct pb_store_events *ev)
{
    struct pgq *q = ctx;
    pthread_mutex_lock(&q->lock);
    if (ev)
        q->ev = *ev;
    else
        memset(&q->ev, 0, sizeof(q->ev));
    pthread_mutex_unlock(&q->lock);
}

static int pg_hold_want(void *ctx, const char *name)
{
    struct pgq *q = ctx;
    int rc = 0;
    if (!name || strlen(name) >= sizeof(q->holds[0].name))
        return PB_EINVAL;
    pthread_mutex_lock(&q->lock);
    for (size_t i = 0; i < q->nholds; i++)
        if (strcmp(q->holds[i].name, name) == 0)
            goto out;
    struct pg_hold *h = realloc(q->holds, (q->nholds + 1) * sizeof(*h));
    if (!h) {
        rc = PB_ENOMEM;
        goto out;
    }
    q->holds = h;
    memset(&h[q->nholds], 0, sizeof(h[0]));
    snprintf(h[q->nholds].name, sizeof(h[0].name), "%s", name);
    q->nholds++;
    /* Wanted after start (an input starts after the store): the node
     * thread takes it at once rather than a heartbeat from now. */
    atomic_store(&q->tick_now, true);
    pb__pg_node_wake(q);
out:
    pthread_mutex_unlock(&q->lock);
    return rc;
}

static bool pg_holds(void *ctx, const char *name)
{
    struct pgq *q = ctx;
    bool held = false;
    pthread_mutex_lock(&q->lock);
    for (size_t i = 0; i < q->nholds; i++)
        if (strcmp(q->holds[i].name, name) == 0)
            held = q->holds[i].held;
    pthread_mutex_unlock(&q->lock);
    return held;
}

static int pg_live_nodes(const void *ctx)
{
    return atomic_load(&((struct pgq *)ctx)->live_nodes);
}

static bool pg_lease_valid(const void *ctx)
{
    struct pgq *q = (struct pgq *)ctx;
    return !atomic_load(&q->lost) && pb_mono_us() < atomic_load(&q->valid_until);
}

static bool pg_reachable(const void *ctx)
{
    return atomic_load(&((struct pgq *)ctx)->reachable);
}

/* ---- transactions (writer thread) ------------------------------------------------------- */

static void drop_tx_notes(struct pgq *q)
{
    for (struct pg_note *n = q->tx_notes, *nx; n; n = nx) {
        nx = n->next;
        free(n);
    }
    q->tx_notes = NULL;
}

/* Statements are prepared on each new writer connection, once. */
static int prepare_all(struct pgq *q, struct pb_err *err)
{
    for (int i = 0; i < WS_COUNT; i++) {
        char name[16];
        snprintf(name, sizeof(name), "w%d", i);
        if (!PQsendPrepare(q->w.conn, name, pb__pg_wsql[i], 0, NULL))
            return pb_err_set(err, PB_ESTORE, "state store: %s", PQerrorMessage(q->w.conn));
        PGresult *res, *bad = NULL;
        int rc = 0;
        while ((res = pb__pg_next(&q->w, pb__pg_deadline(PG_IO_DEADLINE_MS), &rc))) {
            if (PQresultStatus(res) != PGRES_COMMAND_OK && !bad)
                bad = res;
            else
                PQclear(res);
        }
        if (bad) {
            rc = pb_err_set(err, pb__pg_code(bad, q->w.conn),
                            "state store %s: cannot prepare statement %d: %s", q->display, i,
                            pb__pg_msg(bad, q->w.conn));
            PQclear(bad);
            return rc;
        }
        if (rc)
            return pb_err_set(err, rc, "state store %s: cannot prepare statements", q->display);
    }
    return 0;
}

static int writer_conn(struct pgq *q)
{
    struct pb_err err = {0};
    if (q->w.conn && PQstatus(q->w.conn) == CONNECTION_OK) {
        if (q->w.prepared)
            return 0;
    } else {
        int64_t now = pb_mono_us();
        if (now < q->w_retry_at)
            return PB_ESTORE;
        q->w_retry_at = now + RECONNECT_GAP_US;
        if (pb__pg_connect(q, &q->w, "writer", &err) < 0) {
            PB_WARN("state store unreachable store=%s error=\"%s\"", q->display, err.msg);
            return err.code ? err.code : PB_ESTORE;
        }
        PB_INFO("state store connection made again store=%s", q->display);
    }
    if (prepare_all(q, &err) < 0 || PQenterPipelineMode(q->w.conn) != 1) {
        PB_WARN("state store connection unusable store=%s error=\"%s\"", q->display,
                err.msg[0] ? err.msg : "pipeline mode refused");
        pb__pg_close(&q->w);
        return err.code ? err.code : PB_ESTORE;
    }
    q->w.prepared = 1;
    return 0;
}

static int pg_begin(void *ctx)
{
    struct pgq *q = ctx;
    q->npend = 0;
    drop_tx_notes(q);
    int rc = writer_conn(q);
    if (rc)
        return rc;
    rc = pb__pg_send(q, WS_BEGIN, 0, NULL, NULL, NULL, false, NULL, NULL, 0);
    /* Rows a claim took but could not hand over go back first. */
    return rc ? rc : pb__pg_release_leftovers(q);
}

/* Read the results of everything sent, in order, up to and with the
 * pipeline's sync. The first failure aborts the rest (PostgreSQL skips
 * them): its code is returned. */
static int read_results(struct pgq *q, int64_t deadline)
{
    int first = 0, rc = 0;
    for (size_t i = 0; i <= q->npend; i++) {
        /* The last "pending" is the sync. */
        PGresult *res = pb__pg_next(&q->w, deadline, &rc);
        if (!res)
            return first ? first : rc ? rc : PB_ESTORE;
        ExecStatusType st = PQresultStatus(res);
        if (i == q->npend) {
            bool sync = st == PGRES_PIPELINE_SYNC;
            PQclear(res);
            if (!sync && !first)
                first = PB_ESTORE;
            return first;
        }
        struct pg_pend *p = &q->pend[i];
        if (st == PGRES_FATAL_ERROR) {
            if (!first)
                first = pb__pg_fail(q, res, q->w.conn, "statement");
        } else if (st == PGRES_PIPELINE_ABORTED) {
            if (!first)
                first = PB_ESTORE;
        } else if (!first && p->fn) {
            int r = p->fn(q, p->op, p->idx, res);
            if (r < 0)
                first = r;
        }
        PQclear(res);
        /* The NULL that ends this statement's results. */
        res = pb__pg_next(&q->w, deadline, &rc);
        if (res) {
            PQclear(res);
            if (!first)
                first = PB_ESTORE;
        } else if (rc) {
            return first ? first : rc;
        }
    }
    return first;
}

static void end_failed(struct pgq *q);

static int pg_commit(void *ctx)
{
    struct pgq *q = ctx;
    int rc = pb__pg_send(q, WS_COMMIT, 0, NULL, NULL, NULL, false, NULL, NULL, 0);
    if (rc)
        goto broken;
    if (PQpipelineSync(q->w.conn) != 1) {
        rc = PB_ESTORE;
        goto broken;
    }
    rc = read_results(q, pb__pg_deadline(PG_IO_DEADLINE_MS));
    if (rc == 0) {
        pb__pg_node_post(q, q->tx_notes);
        q->tx_notes = NULL;
        q->npend = 0;
        return 0;
    }
broken:
    /* A broken connection is made again at the next begin. */
    if (rc == PB_ETIMEOUT)
        pb__pg_close(&q->w);
    end_failed(q);
    drop_tx_notes(q);
    return rc ? rc : PB_ESTORE;
}

static void pg_rollback(void *ctx)
{
    struct pgq *q = ctx;
    /* apply failed half way (its connection broke): a pipeline half sent
     * cannot be trusted, so the connection is made again. */
    if (q->npend)
        pb__pg_close(&q->w);
    q->npend = 0;
    drop_tx_notes(q);
}

/* After a refused transaction the session is in a failed transaction
 * block (a sync does not end an explicit one): roll it back, or drop the
 * connection. */
static void end_failed(struct pgq *q)
{
    q->npend = 0;
    if (!q->w.conn || PQstatus(q->w.conn) != CONNECTION_OK ||
        PQpipelineStatus(q->w.conn) != PQ_PIPELINE_ON ||
        pb__pg_send(q, WS_ROLLBACK, 0, NULL, NULL, NULL, false, NULL, NULL, 0) != 0 ||
        PQpipelineSync(q->w.conn) != 1 || read_results(q, pb__pg_deadline(5000)) != 0)
        pb__pg_close(&q->w);
    q->npend = 0;
}

const struct pb_store_backend pb__store_postgres = {
    .name = "postgres",
    .prefix = "postgres://",
    .prefix2 = "postgresql://",
    .open = pg_open,
    .close = pg_close,
    .node_id = pg_node_id,
    .epoch = pg_epoch,
    .begin = pg_begin,
    .apply = pb__pg_apply,
    .commit = pg_commit,
    .rollback = pg_rollback,
    .sync = NULL, /* synchronous_commit: a COMMIT that returned is durable */
    .count = pb__pg_count,
    .read_message = pb__pg_read_message,
    .read_dead_letters = pb__pg_read_dead_letters,
    .read_dead_letter = pb__pg_read_dead_letter,
    .search_messages = pb__pg_search_messages,
    .kv_load = pb__pg_kv_load,
    .node_name = pg_node_name,
    .set_events = pg_set_events,
    .hold_want = pg_hold_want,
    .holds = pg_holds,
    .live_nodes = pg_live_nodes,
    .lease_valid = pg_lease_valid,
    .reachable = pg_reachable,
    .read_nodes = pb__pg_read_nodes,
};
