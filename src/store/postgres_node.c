/* postgres_node.c - this process as a node of the cluster (design: the top
 * of postgres.c): joining (an epoch, the node's row, its advisory locks),
 * the node thread (heartbeats, presuming others dead and setting their
 * leases free, taking holds, LISTEN/NOTIFY) and leaving.
 *
 * Thread: "pb-node", with a connection of its own (q->n); it takes the
 * writer's notes through q->outbox (under q->lock, woken by q->wake_fd)
 * and calls the engine's events (q->ev) with no lock held. Join runs on
 * the opener's thread before the node thread starts; leave after it ends. */
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "patchbay/pb_log.h"
#include "patchbay/pb_time.h"
#include "store/postgres_int.h"

#define NOTIFY_GAP_MS 20 /* at most one wake-up per output this often (the last always goes) */
#define NOTIFY_SLOTS 256
#define PAYLOAD_MAX 7900
/* Rows of nodes gone are kept a day; leases of nodes gone in the last ten
 * minutes are swept (SQL text: they go into statements). */
#define NODES_KEPT_MS "86400000"
#define SWEEP_MS "600000"

/* Advisory lock classes (two int4 keys): one for names, one for epochs. */
static int32_t cls(const struct pgq *q, int which)
{
    return (int32_t)(((uint32_t)q->lock_class ^ (which == 0 ? 0x6e616d65u : 0x65706f63u)) &
                     0x7fffffff);
}

static int32_t name_key(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return (int32_t)(h & 0x7fffffff);
}

static int64_t dl(const struct pgq *q)
{
    int64_t ms = q->heartbeat_ms < 5000 ? 5000 : q->heartbeat_ms;
    return pb__pg_deadline(ms);
}

/* One statement with text parameters; the first column of the first row
 * as an integer through *v (0 when none). */
static int q_int(struct pgq *q, const char *sql, int n, const char *const *vals, int64_t *v,
                 struct pb_err *err)
{
    PGresult *res = NULL;
    int rc = pb__pg_execp(&q->n, sql, n, vals, dl(q), &res, err);
    if (v)
        *v = rc == 0 && PQntuples(res) > 0 && !PQgetisnull(res, 0, 0)
                 ? strtoll(PQgetvalue(res, 0, 0), NULL, 10)
                 : 0;
    if (rc == 0 && v && PQntuples(res) > 0 && PQgetvalue(res, 0, 0)[0] == 't')
        *v = 1;
    PQclear(res);
    return rc;
}

static void set_valid(struct pgq *q, int64_t sent_us)
{
    int64_t margin = q->heartbeat_ms < q->lease_ms / 2 ? q->heartbeat_ms : q->lease_ms / 2;
    atomic_store(&q->valid_until, sent_us + (q->lease_ms - margin) * 1000);
    atomic_store(&q->reachable, true);
}

/* Take this node's advisory locks on q->n: its name (no other live process
 * uses it) and its epoch (held while its session lives). */
static int take_locks(struct pgq *q, struct pb_err *err)
{
    char a[16], b[16], c[16], e[16];
    int64_t got = 0;
    snprintf(a, sizeof(a), "%d", cls(q, 0));
    snprintf(b, sizeof(b), "%d", name_key(q->node_name));
    snprintf(c, sizeof(c), "%d", cls(q, 1));
    snprintf(e, sizeof(e), "%d", (int)(q->epoch & 0x7fffffff));
    const char *v1[] = {a, b};
    int rc = q_int(q, "SELECT pg_try_advisory_lock($1::int, $2::int)", 2, v1, &got, err);
    if (rc)
        return rc;
    if (!got)
        return pb_err_set(err, PB_EEXISTS,
                          "node name \"%s\" is in use by another running patchbay of this"
                          " cluster; give each node its own cluster.node",
                          q->node_name);
    const char *v2[] = {c, e};
    rc = q_int(q, "SELECT pg_try_advisory_lock($1::int, $2::int)", 2, v2, &got, err);
    if (rc == 0 && !got)
        rc = pb_err_set(err, PB_EAGAIN, "node epoch %" PRId64 " is being presumed dead", q->epoch);
    return rc;
}

static int listen_now(struct pgq *q, struct pb_err *err)
{
    char sql[192];
    snprintf(sql, sizeof(sql), "LISTEN \"%s\"", q->channel);
    return pb__pg_exec(&q->n, sql, dl(q), NULL, err);
}

int pb__pg_node_join(struct pgq *q, struct pb_err *err)
{
    int rc = pb__pg_connect(q, &q->n, "node", err);
    if (rc)
        return rc;
    int64_t epoch = 0;
    if ((rc = q_int(q, "SELECT nextval('node_epoch')", 0, NULL, &epoch, err)) != 0)
        return rc;
    q->epoch = epoch;
    snprintf(q->appname, sizeof(q->appname), "patchbay/%" PRId64 "@%s", q->epoch, q->schema);
    char sql[192];
    snprintf(sql, sizeof(sql), "SET application_name = '%s'", q->appname);
    if ((rc = pb__pg_exec(&q->n, sql, dl(q), NULL, err)) != 0)
        return rc;
    if ((rc = take_locks(q, err)) != 0)
        return rc;
    char ep[24], lease[24], hb[24];
    snprintf(ep, sizeof(ep), "%" PRId64, q->epoch);
    snprintf(lease, sizeof(lease), "%" PRId64, q->lease_ms);
    snprintf(hb, sizeof(hb), "%" PRId64, q->heartbeat_ms);
    const char *vals[] = {ep, q->node_name, q->version, lease, hb};
    int64_t sent = pb_mono_us();
    rc =
        q_int(q,
              "INSERT INTO nodes(epoch, name, version, state, started_at, heartbeat_at, expires_at,"
              " heartbeat_ms) VALUES ($1::bigint, $2::text, $3::text, 0, " PG_NOW_MS ", " PG_NOW_MS
              ", " PG_NOW_MS " + $4::bigint, $5::bigint)",
              5, vals, NULL, err);
    if (rc)
        return rc;
    set_valid(q, sent);
    /* An earlier process of this name is gone (we hold the name): what it
     * held is free now, not a lease from now. */
    const char *v2[] = {q->node_name, ep};
    int64_t n = 0;
    rc = q_int(q,
               "WITH old AS (UPDATE nodes SET state = 2, ended_at = " PG_NOW_MS
               " WHERE name = $1::text AND state = 0 AND epoch <> $2::bigint RETURNING epoch),"
               " f AS (UPDATE deliveries SET lease = NULL WHERE state = 0"
               " AND lease IN (SELECT epoch FROM old) RETURNING 1),"
               " h AS (DELETE FROM holds WHERE epoch IN (SELECT epoch FROM old))"
               " SELECT count(*) FROM f",
               2, v2, &n, err);
    if (rc)
        return rc;
    if (n)
        PB_INFO("node took back what its earlier process held node=%s leases=%" PRId64,
                q->node_name, n);
    if ((rc = listen_now(q, err)) != 0)
        return rc;
    PB_INFO("node joined the cluster node=%s epoch=%" PRId64 " schema=%s lease_ms=%" PRId64
            " heartbeat_ms=%" PRId64,
            q->node_name, q->epoch, q->schema, q->lease_ms, q->heartbeat_ms);
    return 0;
}

/* ---- notifications out ------------------------------------------------------------------ */

struct slot {
    char text[2 * PG_NAME_MAX + 8];
    int64_t sent_us;
    bool due; /* deferred: goes at sent_us + gap */
};

struct node_state {
    struct slot slots[NOTIFY_SLOTS];
    size_t nslots;
    struct pg_buf batch;
    int nbatch;
    int last_live;
    uint64_t held_mask;
    bool lost_told;
    int64_t next_tick_us;
    int64_t ticks;
};

static struct slot *slot_of(struct node_state *ns, const char *text)
{
    for (size_t i = 0; i < ns->nslots; i++)
        if (strcmp(ns->slots[i].text, text) == 0)
            return &ns->slots[i];
    size_t i = ns->nslots < NOTIFY_SLOTS ? ns->nslots++ : 0;
    if (ns->nslots == NOTIFY_SLOTS) {
        /* Full: reuse the oldest that is not waiting. */
        for (size_t k = 0; k < NOTIFY_SLOTS; k++)
            if (!ns->slots[k].due && ns->slots[k].sent_us < ns->slots[i].sent_us)
                i = k;
    }
    snprintf(ns->slots[i].text, sizeof(ns->slots[i].text), "%s", text);
    ns->slots[i].sent_us = 0;
    ns->slots[i].due = false;
    return &ns->slots[i];
}

static void batch_add(struct pgq *q, struct node_state *ns, char kind, const char *text)
{
    char payload[PAYLOAD_MAX + 64];
    int n = snprintf(payload, sizeof(payload), "%c\t%" PRId64 "\t%s", kind, q->epoch, text);
    if (n < 0 || n >= PAYLOAD_MAX) {
        /* Too long for a notification: say "all of the scope". */
        const char *tab = strchr(text, '\t');
        snprintf(payload, sizeof(payload), "%c\t%" PRId64 "\t%.*s\t*", kind, q->epoch,
                 tab ? (int)(tab - text) : 0, text);
    }
    pb__pg_buf_addc(&ns->batch, ns->nbatch ? ',' : '{');
    pb__pg_buf_elem(&ns->batch, payload);
    ns->nbatch++;
}

static int flush_batch(struct pgq *q, struct node_state *ns)
{
    if (!ns->nbatch)
        return 0;
    pb__pg_buf_addc(&ns->batch, '}');
    int rc = PB_ENOMEM;
    if (!ns->batch.oom) {
        const char *vals[] = {q->channel, ns->batch.p};
        rc = q_int(q, "SELECT count(pg_notify($1::text, x)) FROM unnest($2::text[]) x", 2, vals,
                   NULL, NULL);
    }
    pb__pg_buf_reset(&ns->batch);
    ns->nbatch = 0;
    return rc;
}

/* Send what the writer noted: key-value changes at once, wake-ups at most
 * once per output per NOTIFY_GAP_MS (a deferred one goes when its gap
 * ends). Returns µs until the next deferred one is due (or INT64_MAX). */
static int64_t send_notes(struct pgq *q, struct node_state *ns)
{
    pthread_mutex_lock(&q->lock);
    struct pg_note *list = q->outbox;
    q->outbox = NULL;
    pthread_mutex_unlock(&q->lock);
    int64_t now = pb_mono_us(), next = INT64_MAX;
    for (struct pg_note *n = list, *nx; n; n = nx) {
        nx = n->next;
        if (n->kind == 'k') {
            batch_add(q, ns, 'k', n->text);
        } else {
            struct slot *s = slot_of(ns, n->text);
            if (now - s->sent_us >= NOTIFY_GAP_MS * 1000) {
                batch_add(q, ns, 'w', n->text);
                s->sent_us = now;
                s->due = false;
            } else {
                s->due = true;
            }
        }
        free(n);
    }
    for (size_t i = 0; i < ns->nslots; i++) {
        struct slot *s = &ns->slots[i];
        if (!s->due)
            continue;
        int64_t at = s->sent_us + NOTIFY_GAP_MS * 1000;
        if (at <= now) {
            batch_add(q, ns, 'w', s->text);
            s->sent_us = now;
            s->due = false;
        } else if (at - now < next) {
            next = at - now;
        }
    }
    if (flush_batch(q, ns) != 0)
        pb__pg_close(&q->n); /* made again at the next tick; the others' poll covers it */
    return next;
}

void pb__pg_node_post(struct pgq *q, struct pg_note *notes)
{
    if (!notes)
        return;
    struct pg_note *last = notes;
    while (last->next)
        last = last->next;
    pthread_mutex_lock(&q->lock);
    last->next = q->outbox;
    q->outbox = notes;
    pthread_mutex_unlock(&q->lock);
    pb__pg_node_wake(q);
}

void pb__pg_node_wake(struct pgq *q)
{
    uint64_t one = 1;
    if (q->wake_fd >= 0 && write(q->wake_fd, &one, sizeof(one)) < 0) {
        /* the counter is saturated: the thread is awake anyway */
    }
}

/* ---- notifications in ------------------------------------------------------------------- */

static void take_notifications(struct pgq *q)
{
    PGnotify *nt;
    if (!q->n.conn || !PQconsumeInput(q->n.conn))
        return;
    struct pb_store_events ev;
    pthread_mutex_lock(&q->lock);
    ev = q->ev;
    pthread_mutex_unlock(&q->lock);
    while ((nt = PQnotifies(q->n.conn))) {
        /* "w\t<epoch>\t<pipeline>\t<output>" or "k\t<epoch>\t<scope>\t<key>" */
        char *p = nt->extra, *f[4] = {0};
        int nf = 0;
        while (p && nf < 4) {
            f[nf++] = p;
            char *tab = nf < 4 ? strchr(p, '\t') : NULL;
            if (tab)
                *tab = 0;
            p = tab ? tab + 1 : NULL;
        }
        if (nf == 4 && strtoll(f[1], NULL, 10) != q->epoch) {
            bool all = strcmp(f[3], "*") == 0;
            if (f[0][0] == 'w' && ev.work)
                ev.work(ev.arg, strcmp(f[2], "*") == 0 ? NULL : f[2], all ? NULL : f[3]);
            else if (f[0][0] == 'k' && ev.kv)
                ev.kv(ev.arg, f[2], all ? NULL : f[3]);
        }
        PQfreemem(nt);
    }
}

/* ---- the tick: heartbeat, the others' deaths, holds ---------------------------------------- */

/* Presume node epoch dead: its row first (its heartbeat now fails), then
 * its sessions ended (the locks a frozen process holds go with them), then
 * its leases and holds set free. Returns the leases set free (or < 0). */
static int64_t presume_dead(struct pgq *q, int64_t epoch, const char *why)
{
    char ep[24], app[112];
    int64_t n = 0;
    snprintf(ep, sizeof(ep), "%" PRId64, epoch);
    snprintf(app, sizeof(app), "patchbay/%" PRId64 "@%s", epoch, q->schema);
    const char *v1[] = {ep};
    PGresult *res = NULL;
    if (pb__pg_execp(&q->n,
                     "UPDATE nodes SET state = 2, ended_at = " PG_NOW_MS
                     " WHERE epoch = $1::bigint AND state = 0 RETURNING name",
                     1, v1, dl(q), &res, NULL) != 0)
        return -1;
    bool mine = PQntuples(res) == 1;
    char name[PG_NAME_MAX] = "";
    if (mine)
        snprintf(name, sizeof(name), "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    if (!mine)
        return 0; /* another node did it */
    const char *v2[] = {app};
    int64_t ended = 0;
    q_int(q,
          "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
          " WHERE application_name = $1::text AND pid <> pg_backend_pid()",
          1, v2, &ended, NULL);
    if (q_int(q,
              "WITH f AS (UPDATE deliveries SET lease = NULL WHERE state = 0"
              " AND lease = $1::bigint RETURNING 1),"
              " h AS (DELETE FROM holds WHERE epoch = $1::bigint) SELECT count(*) FROM f",
              1, v1, &n, NULL) != 0)
        n = 0; /* the sweep sets them free at a later tick */
    PB_WARN("node presumed dead node=%s epoch=%" PRId64 " reason=\"%s\" leases_freed=%" PRId64
            " sessions_ended=%" PRId64,
            name, epoch, why, n, ended);
    return n;
}

/* The others: dead by an expired heartbeat, or by a session gone (its
 * epoch lock free) with no heartbeat for two intervals. */
static int reap(struct pgq *q, bool *freed)
{
    PGresult *res = NULL;
    char ep[24];
    snprintf(ep, sizeof(ep), "%" PRId64, q->epoch);
    const char *v[] = {ep};
    int rc = pb__pg_execp(&q->n,
                          "SELECT epoch, (expires_at < " PG_NOW_MS ")::int FROM nodes"
                          " WHERE state = 0 AND epoch <> $1::bigint AND (expires_at < " PG_NOW_MS
                          " OR heartbeat_at < " PG_NOW_MS " - 2 * heartbeat_ms)",
                          1, v, dl(q), &res, NULL);
    if (rc)
        return rc;
    for (int i = 0; i < PQntuples(res); i++) {
        int64_t e = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        bool expired = PQgetvalue(res, i, 1)[0] == '1';
        if (expired) {
            if (presume_dead(q, e, "heartbeat expired") > 0)
                *freed = true;
            continue;
        }
        char a[16], b[16];
        snprintf(a, sizeof(a), "%d", cls(q, 1));
        snprintf(b, sizeof(b), "%d", (int)(e & 0x7fffffff));
        const char *lv[] = {a, b};
        int64_t got = 0;
        if (q_int(q, "SELECT pg_try_advisory_lock($1::int, $2::int)", 2, lv, &got, NULL) != 0 ||
            !got)
            continue; /* its session lives: it is only slow */
        if (presume_dead(q, e, "its session ended") > 0)
            *freed = true;
        q_int(q, "SELECT pg_advisory_unlock($1::int, $2::int)", 2, lv, NULL, NULL);
    }
    PQclear(res);
    /* Leases a node gone wrote after it was presumed dead. */
    int64_t swept = 0;
    rc = q_int(q,
               "WITH f AS (UPDATE deliveries SET lease = NULL WHERE state = 0 AND lease IN"
               " (SELECT epoch FROM nodes WHERE state <> 0 AND ended_at > " PG_NOW_MS " - " SWEEP_MS
               ") RETURNING 1) SELECT count(*) FROM f",
               0, NULL, &swept, NULL);
    if (swept)
        *freed = true;
    return rc;
}

/* Take free holds up to this node's share; the ones held, as a mask. */
static int take_holds(struct pgq *q, int live, uint64_t *mask)
{
    pthread_mutex_lock(&q->lock);
    size_t n = q->nholds;
    char(*names)[PG_NAME_MAX + 16] = n ? malloc(n * sizeof(*names)) : NULL;
    if (n && !names) {
        pthread_mutex_unlock(&q->lock);
        return PB_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        memcpy(names[i], q->holds[i].name, sizeof(names[0]));
    pthread_mutex_unlock(&q->lock);

    char ep[24];
    snprintf(ep, sizeof(ep), "%" PRId64, q->epoch);
    PGresult *res = NULL;
    const char *v[] = {ep};
    int rc = pb__pg_execp(&q->n, "SELECT name FROM holds WHERE epoch = $1::bigint", 1, v, dl(q),
                          &res, NULL);
    uint64_t m = 0;
    size_t held = 0;
    for (int r = 0; rc == 0 && r < PQntuples(res); r++)
        for (size_t i = 0; i < n && i < 64; i++)
            if (strcmp(names[i], PQgetvalue(res, r, 0)) == 0) {
                m |= 1ull << i;
                held++;
            }
    PQclear(res);
    size_t share = live > 0 ? (n + (size_t)live - 1) / (size_t)live : n;
    for (size_t i = 0; rc == 0 && i < n && i < 64 && held < share; i++) {
        if (m >> i & 1)
            continue;
        const char *hv[] = {names[i], ep, q->node_name};
        int64_t got = 0;
        rc = q_int(q,
                   "INSERT INTO holds(name, epoch, node, since) VALUES ($1::text, $2::bigint,"
                   " $3::text, " PG_NOW_MS ") ON CONFLICT (name) DO UPDATE SET epoch ="
                   " EXCLUDED.epoch, node = EXCLUDED.node, since = EXCLUDED.since WHERE NOT EXISTS"
                   " (SELECT 1 FROM nodes n WHERE n.epoch = holds.epoch AND n.state = 0)"
                   " RETURNING 1",
                   3, hv, &got, NULL);
        if (rc == 0 && got) {
            m |= 1ull << i;
            held++;
            PB_INFO("node took hold=%s node=%s", names[i], q->node_name);
        }
    }
    free(names);
    if (rc == 0)
        *mask = m;
    return rc;
}

static int reconnect(struct pgq *q)
{
    struct pb_err err = {0};
    if (pb__pg_connect(q, &q->n, "node", &err) != 0 || take_locks(q, &err) != 0 ||
        listen_now(q, &err) != 0) {
        PB_WARN("cluster connection failed node=%s error=\"%s\"", q->node_name, err.msg);
        pb__pg_close(&q->n);
        return err.code ? err.code : PB_ESTORE;
    }
    PB_INFO("cluster connection made again node=%s", q->node_name);
    return 0;
}

static void tick(struct pgq *q, struct node_state *ns)
{
    struct pb_store_events ev;
    pthread_mutex_lock(&q->lock);
    ev = q->ev;
    pthread_mutex_unlock(&q->lock);
    if (atomic_load(&q->lost))
        return;
    if (!q->n.conn || PQstatus(q->n.conn) != CONNECTION_OK) {
        if (reconnect(q) != 0) {
            atomic_store(&q->valid_until, 0);
            atomic_store(&q->reachable, false);
            return;
        }
        /* What was notified while no connection listened is lost: the
         * shared state may have changed anywhere. */
        if (ev.kv)
            ev.kv(ev.arg, NULL, NULL);
    }
    char ep[24], lease[24];
    snprintf(ep, sizeof(ep), "%" PRId64, q->epoch);
    snprintf(lease, sizeof(lease), "%" PRId64, q->lease_ms);
    const char *v[] = {ep, lease};
    int64_t alive = 0, sent = pb_mono_us();
    int rc = q_int(q,
                   "UPDATE nodes SET heartbeat_at = " PG_NOW_MS ", expires_at = " PG_NOW_MS
                   " + $2::bigint WHERE epoch = $1::bigint AND state = 0 RETURNING 1",
                   2, v, &alive, NULL);
    if (rc) {
        /* Others may presume this node dead a heartbeat from now: start
         * nothing until a heartbeat gets through again. */
        atomic_store(&q->valid_until, 0);
        atomic_store(&q->reachable, false);
        pb__pg_close(&q->n);
        PB_WARN("heartbeat failed node=%s error=%s", q->node_name, pb_err_name(rc));
        return;
    }
    if (!alive) {
        atomic_store(&q->lost, true);
        atomic_store(&q->valid_until, 0);
        PB_ERROR("this node was presumed dead by the cluster node=%s epoch=%" PRId64
                 " (its heartbeats stopped for longer than the lease): what it held is others' now",
                 q->node_name, q->epoch);
        if (!ns->lost_told && ev.lost) {
            ns->lost_told = true;
            ev.lost(ev.arg);
        }
        return;
    }
    set_valid(q, sent);
    bool freed = false;
    if (reap(q, &freed) != 0)
        return;
    int64_t live = 0;
    if (q_int(q, "SELECT count(*) FROM nodes WHERE state = 0", 0, NULL, &live, NULL) != 0)
        return;
    uint64_t mask = ns->held_mask;
    if (take_holds(q, (int)live, &mask) != 0)
        return;
    if (++ns->ticks % 1000 == 1)
        q_int(q, "DELETE FROM nodes WHERE state <> 0 AND ended_at < " PG_NOW_MS " - " NODES_KEPT_MS,
              0, NULL, NULL, NULL);
    if (freed) {
        /* Everyone claims what was set free, this node too. */
        ns->nbatch = 0;
        pb__pg_buf_reset(&ns->batch);
        batch_add(q, ns, 'w', "*\t*");
        flush_batch(q, ns);
    }
    atomic_store(&q->live_nodes, (int)live);
    bool changed = (int)live != ns->last_live || mask != ns->held_mask;
    pthread_mutex_lock(&q->lock);
    for (size_t i = 0; i < q->nholds && i < 64; i++)
        q->holds[i].held = mask >> i & 1;
    pthread_mutex_unlock(&q->lock);
    ns->last_live = (int)live;
    ns->held_mask = mask;
    if (changed && ev.cluster)
        ev.cluster(ev.arg);
    /* The fallback of lost notifications: a claim pass every heartbeat. */
    if (ev.work)
        ev.work(ev.arg, NULL, NULL);
}

static void *node_main(void *arg)
{
    struct pgq *q = arg;
    struct node_state *ns = calloc(1, sizeof(*ns));
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    if (!ns) {
        PB_ERROR("out of memory: the node thread cannot run node=%s", q->node_name);
        return NULL;
    }
    ns->last_live = -1;
    ns->next_tick_us = pb_mono_us() + q->heartbeat_ms * 1000;
    tick(q, ns); /* holds and the live count at once */
    while (!atomic_load(&q->stop)) {
        int64_t now = pb_mono_us();
        if (atomic_exchange(&q->tick_now, false) || now >= ns->next_tick_us) {
            ns->next_tick_us = now + q->heartbeat_ms * 1000;
            tick(q, ns);
        }
        int64_t wait = ns->next_tick_us - pb_mono_us();
        if (q->n.conn && PQstatus(q->n.conn) == CONNECTION_OK) {
            int64_t due = send_notes(q, ns);
            if (due < wait)
                wait = due;
            /* A notification that came in while the tick's or the notes'
             * statements ran was read into libpq's queue with their results:
             * the socket will not say so again. */
            take_notifications(q);
        }
        struct pollfd p[2] = {{.fd = q->wake_fd, .events = POLLIN},
                              {.fd = q->n.conn ? PQsocket(q->n.conn) : -1, .events = POLLIN}};
        if (wait < 0)
            wait = 0;
        int r = poll(p, p[1].fd >= 0 ? 2 : 1, (int)((wait + 999) / 1000));
        if (r > 0 && (p[0].revents & POLLIN)) {
            uint64_t v;
            if (read(q->wake_fd, &v, sizeof(v)) < 0) {
                /* nothing to read: woken anyway */
            }
        }
        if (r > 0 && p[1].fd >= 0 && (p[1].revents & (POLLIN | POLLHUP | POLLERR)))
            take_notifications(q);
    }
    pb__pg_buf_free(&ns->batch);
    free(ns);
    return NULL;
}

int pb__pg_node_start(struct pgq *q, struct pb_err *err)
{
    q->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (q->wake_fd < 0)
        return pb_err_set(err, PB_EIO, "cannot make the node thread's wake-up");
    if (pthread_create(&q->node_thread, NULL, node_main, q) != 0)
        return pb_err_set(err, PB_ENOMEM, "cannot start the node thread");
    pthread_setname_np(q->node_thread, "pb-node");
    q->node_running = true;
    return 0;
}

void pb__pg_node_leave(struct pgq *q)
{
    if (q->node_running) {
        atomic_store(&q->stop, true);
        pb__pg_node_wake(q);
        pthread_join(q->node_thread, NULL);
        q->node_running = false;
    }
    /* Hand back at once what this node held: the others claim it now,
     * not a lease from now. On the writer's connection (idle now), or the
     * node's, or a new one. */
    struct pgc *c = q->w.conn && PQstatus(q->w.conn) == CONNECTION_OK ? &q->w : &q->n;
    if (c == &q->w && PQpipelineStatus(q->w.conn) != PQ_PIPELINE_OFF &&
        PQexitPipelineMode(q->w.conn) != 1)
        c = &q->n;
    struct pb_err err = {0};
    if ((!c->conn || PQstatus(c->conn) != CONNECTION_OK) &&
        pb__pg_connect(q, c, "node", &err) != 0) {
        PB_WARN("node left without handing back its leases node=%s error=\"%s\" (the others take"
                " them when its lease ends)",
                q->node_name, err.msg);
        return;
    }
    char ep[24], payload[64], sql[512];
    snprintf(ep, sizeof(ep), "%" PRId64, q->epoch);
    snprintf(payload, sizeof(payload), "w\t%" PRId64 "\t*\t*", q->epoch);
    snprintf(sql, sizeof(sql),
             "WITH f AS (UPDATE deliveries SET lease = NULL WHERE state = 0 AND lease = $1::bigint"
             " RETURNING 1), h AS (DELETE FROM holds WHERE epoch = $1::bigint),"
             " n AS (UPDATE nodes SET state = 1, ended_at = " PG_NOW_MS
             " WHERE epoch = $1::bigint AND state = 0)"
             " SELECT count(*), pg_notify($2::text, $3::text) FROM f");
    const char *v[] = {ep, q->channel, payload};
    PGresult *res = NULL;
    int rc = pb__pg_execp(c, sql, 3, v, pb__pg_deadline(5000), &res, &err);
    if (rc == 0)
        PB_INFO("node left the cluster node=%s epoch=%" PRId64 " leases_handed_back=%s",
                q->node_name, q->epoch, PQntuples(res) ? PQgetvalue(res, 0, 0) : "0");
    else
        PB_WARN("node left without handing back its leases node=%s error=\"%s\"", q->node_name,
                err.msg);
    PQclear(res);
}
