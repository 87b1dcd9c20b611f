/* store.c - the state store front: backend choice by URL, the op queue and
 * the one writer thread that group-commits it, plus helpers the backends
 * share (body rendering for the admin views).
 *
 * Submitters append ops to a mutex-guarded list and return. The writer takes
 * up to batch_max ops, applies them in one backend transaction, commits
 * (one fsync for the lot), then runs each op's done_cb in submission order.
 * If the transaction breaks (disk full, I/O error) every op in it gets the
 * error, the store reports itself not writable, and the writer goes on with
 * the next batch: the first commit that succeeds makes it writable again.
 *
 * When the backend syncs separately (be->sync), commits do not wait for the
 * disk: the writer hands each committed batch to the syncer thread and goes
 * on with the next one, while the syncer flushes once for every batch
 * committed so far and only then runs their done_cbs, in commit order. A
 * done_cb still never runs before its op is durable.
 *
 * While the syncer flushes, and for COMMIT_GATHER_US after a commit, the
 * writer lets ops gather instead of committing each few as they come: they
 * could not be durable before the next flush anyway, and one commit of many
 * ops writes each page it touches once where many small commits would write
 * it again and again (a commit's cost on disk is its pages, not its rows). */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "patchbay/pb_log.h"
#include "patchbay/pb_time.h"
#include "store/backend.h"
#include "store/pb_store.h"

#define DEFAULT_INGEST_QUEUE_MAX 8192
#define DEFAULT_BATCH_MAX 512
/* Under load, commits come at most this often (see writer_main). */
#define COMMIT_GATHER_US 1000

struct pb_store {
    const struct pb_store_backend *be;
    void *ctx;
    struct pb_store_opts opts;

    pthread_mutex_t lock; /* guards the queue and the flags below */
    pthread_cond_t wake;  /* writer: work arrived or stopping */
    struct pb_op *head, *tail;
    size_t ningest; /* INGEST ops queued, not yet taken */
    bool started, stopping, stop_claimed;
    pthread_t thread;

    /* syncer: committed ops waiting for durability, in commit order */
    pthread_cond_t sync_wake;
    struct pb_op *sync_head, *sync_tail;
    bool syncing;           /* the syncer thread runs */
    bool sync_busy;         /* it is flushing now */
    int64_t last_commit_us; /* monotonic µs the writer last took a batch */
    bool writer_done;       /* no more batches will be handed over */
    pthread_t sync_thread;

    pthread_mutex_t exec_lock; /* pb_store_exec waiters */

    _Atomic size_t depth; /* ops queued, not yet taken */
    atomic_bool writable;
    _Atomic uint64_t commits, ops;
};

static const struct pb_store_backend *const backends[] = {
    &pb__store_sqlite,
    &pb__store_postgres,
};

const char *pb_dstate_name(enum pb_dstate s)
{
    switch (s) {
    case PB_DSTATE_PENDING:
        return "pending";
    case PB_DSTATE_DELIVERED:
        return "delivered";
    case PB_DSTATE_DEAD:
        return "dead";
    case PB_DSTATE_FILTERED:
        return "filtered";
    case PB_DSTATE_REPLAYED:
        return "replayed";
    case PB_DSTATE_ROUTED_AWAY:
        return "routed_away";
    }
    return "unknown";
}

void pb_store_opts_default(struct pb_store_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->synchronous_full = true;
    o->integrity_check = true;
    o->ingest_queue_max = DEFAULT_INGEST_QUEUE_MAX;
    o->batch_max = DEFAULT_BATCH_MAX;
}

/* The URL for an error message, with any user:password@ part hidden. */
static void redact_url(const char *url, char *buf, size_t len)
{
    const char *sep = strstr(url, "://");
    const char *at = sep ? strchr(sep + 3, '@') : NULL;
    const char *slash = sep ? strchr(sep + 3, '/') : NULL;
    if (at && (!slash || at < slash))
        snprintf(buf, len, "%.*s***%s", (int)(sep + 3 - url), url, at);
    else
        snprintf(buf, len, "%s", url);
    /* A password= parameter too: cut from there. */
    char *pw = strstr(buf, "password=");
    if (pw && (size_t)(pw - buf) + 13 <= len)
        memcpy(pw, "password=***", 13);
}

void pb_store_url_shown(const char *url, char *buf, size_t len)
{
    if (!len)
        return;
    if (!url) {
        buf[0] = 0;
        return;
    }
    redact_url(url, buf, len);
}

struct pb_store *pb_store_open(const char *url, const struct pb_store_opts *opts,
                               struct pb_err *err)
{
    const struct pb_store_backend *be = NULL;
    struct pb_store *s = NULL;
    char shown[256];

    if (!url) {
        pb_err_set(err, PB_EINVAL,
                   "no state store URL (expected sqlite:PATH or postgres://USER@HOST/DB)");
        return NULL;
    }
    for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++) {
        const char *p2 = backends[i]->prefix2;
        if (strncmp(url, backends[i]->prefix, strlen(backends[i]->prefix)) == 0 ||
            (p2 && strncmp(url, p2, strlen(p2)) == 0))
            be = backends[i];
    }
    if (!be) {
        redact_url(url, shown, sizeof(shown));
        pb_err_set(err, PB_EINVAL,
                   "unsupported state store URL \"%s\" (expected sqlite:PATH or "
                   "postgres://USER@HOST/DB)",
                   shown);
        return NULL;
    }

    s = calloc(1, sizeof(*s));
    if (!s) {
        pb_err_set(err, PB_ENOMEM, "out of memory opening the state store");
        return NULL;
    }
    if (opts)
        s->opts = *opts;
    else
        pb_store_opts_default(&s->opts);
    if (s->opts.ingest_queue_max == 0)
        s->opts.ingest_queue_max = DEFAULT_INGEST_QUEUE_MAX;
    if (s->opts.batch_max == 0)
        s->opts.batch_max = DEFAULT_BATCH_MAX;
    s->be = be;
    atomic_init(&s->depth, 0);
    atomic_init(&s->writable, true);
    atomic_init(&s->commits, 0);
    atomic_init(&s->ops, 0);
    if (pthread_mutex_init(&s->lock, NULL) != 0) {
        free(s);
        pb_err_set(err, PB_ENOMEM, "cannot create the state store lock");
        return NULL;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* the writer's gather waits */
    int crc = pthread_cond_init(&s->wake, &ca);
    pthread_condattr_destroy(&ca);
    if (crc != 0) {
        pthread_mutex_destroy(&s->lock);
        free(s);
        pb_err_set(err, PB_ENOMEM, "cannot create the state store condition");
        return NULL;
    }
    if (pthread_cond_init(&s->sync_wake, NULL) != 0) {
        pthread_cond_destroy(&s->wake);
        pthread_mutex_destroy(&s->lock);
        free(s);
        pb_err_set(err, PB_ENOMEM, "cannot create the state store condition");
        return NULL;
    }
    if (pthread_mutex_init(&s->exec_lock, NULL) != 0) {
        pthread_cond_destroy(&s->sync_wake);
        pthread_cond_destroy(&s->wake);
        pthread_mutex_destroy(&s->lock);
        free(s);
        pb_err_set(err, PB_ENOMEM, "cannot create the state store lock");
        return NULL;
    }

    s->ctx = be->open(url, &s->opts, err);
    if (!s->ctx) {
        pthread_mutex_destroy(&s->exec_lock);
        pthread_cond_destroy(&s->sync_wake);
        pthread_cond_destroy(&s->wake);
        pthread_mutex_destroy(&s->lock);
        free(s);
        return NULL;
    }
    return s;
}

void pb_store_destroy(struct pb_store *s)
{
    if (!s)
        return;
    pb_store_stop(s);
    s->be->close(s->ctx);
    pthread_mutex_destroy(&s->exec_lock);
    pthread_cond_destroy(&s->sync_wake);
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

const char *pb_store_node_id(const struct pb_store *s)
{
    return s->be->node_id(s->ctx);
}

int64_t pb_store_epoch(const struct pb_store *s)
{
    return s->be->epoch(s->ctx);
}

/* ---- writer ------------------------------------------------------------------ */

static const char *op_kind_name(enum pb_op_kind k)
{
    switch (k) {
    case PB_OP_INGEST:
        return "ingest";
    case PB_OP_RESULT:
        return "result";
    case PB_OP_REPLAY:
        return "replay";
    case PB_OP_REPLAY_ALL:
        return "replay_all";
    case PB_OP_PURGE:
        return "purge";
    case PB_OP_EXPIRE:
        return "expire";
    case PB_OP_FANOUT:
        return "fanout";
    case PB_OP_ROUTE:
        return "route";
    case PB_OP_ORPHANS:
        return "orphans";
    case PB_OP_SUBMIT:
        return "submit";
    case PB_OP_KV:
        return "kv";
    case PB_OP_CLAIM:
        return "claim";
    case PB_OP_RELEASE:
        return "release";
    case PB_OP_SUB_KILL:
        return "sub_kill";
    case PB_OP_INJECT:
        return "inject";
    case PB_OP_KEY:
        return "key";
    }
    return "?";
}

/* Apply, commit and complete one batch of n ops (a list linked by next). */
static void run_batch(struct pb_store *s, struct pb_op *batch, size_t n)
{
    struct pb_op *op, *next;
    int rc = s->be->begin(s->ctx);

    if (rc == 0) {
        for (op = batch; op; op = op->next) {
            op->status = 0;
            rc = s->be->apply(s->ctx, op);
            if (rc < 0) {
                PB_DEBUG("state store transaction abandoned op=%s error=%s", op_kind_name(op->kind),
                         pb_err_name(rc));
                break;
            }
        }
        if (rc == 0)
            rc = s->be->commit(s->ctx);
        if (rc < 0)
            s->be->rollback(s->ctx);
    }

    if (rc < 0) {
        for (op = batch; op; op = op->next)
            op->status = rc;
        if (atomic_exchange(&s->writable, false))
            PB_ERROR("state store not writable error=%s ops_failed=%zu", pb_err_name(rc), n);
    } else {
        atomic_fetch_add(&s->commits, 1);
        atomic_fetch_add(&s->ops, n);
        if (!atomic_exchange(&s->writable, true))
            PB_INFO("state store writable again");
        if (s->syncing) {
            struct pb_op *last = batch;
            while (last->next)
                last = last->next;
            pthread_mutex_lock(&s->lock);
            if (s->sync_tail)
                s->sync_tail->next = batch;
            else
                s->sync_head = batch;
            s->sync_tail = last;
            pthread_cond_signal(&s->sync_wake);
            pthread_mutex_unlock(&s->lock);
            return;
        }
        if (s->be->sync && (rc = s->be->sync(s->ctx)) < 0) {
            for (op = batch; op; op = op->next)
                op->status = rc;
            atomic_store(&s->writable, false);
        }
    }

    /* A done_cb may free or resubmit its op: read next first. */
    for (op = batch; op; op = next) {
        next = op->next;
        op->next = NULL;
        if (op->done_cb)
            op->done_cb(op, op->arg);
    }
}

/* Flush once for everything committed so far, then report it done. */
static void *syncer_main(void *arg)
{
    struct pb_store *s = arg;
    sigset_t all;

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    for (;;) {
        pthread_mutex_lock(&s->lock);
        while (!s->sync_head && !s->writer_done)
            pthread_cond_wait(&s->sync_wake, &s->lock);
        struct pb_op *list = s->sync_head;
        s->sync_head = s->sync_tail = NULL;
        bool done = s->writer_done;
        s->sync_busy = list != NULL;
        pthread_mutex_unlock(&s->lock);
        if (!list) {
            if (done)
                break;
            continue;
        }
        int rc = s->be->sync(s->ctx);
        pthread_mutex_lock(&s->lock);
        s->sync_busy = false;
        pthread_cond_signal(&s->wake); /* the writer commits what gathered meanwhile */
        pthread_mutex_unlock(&s->lock);
        if (rc < 0 && atomic_exchange(&s->writable, false))
            PB_ERROR("state store not writable: sync failed error=%s", pb_err_name(rc));
        for (struct pb_op *op = list, *next; op; op = next) {
            next = op->next;
            op->next = NULL;
            if (rc < 0)
                op->status = rc; /* committed but maybe not durable: never acknowledge */
            if (op->done_cb)
                op->done_cb(op, op->arg);
        }
    }
    return NULL;
}

/* Take batches until the queue is empty and stopping is set. */
static void *writer_main(void *arg)
{
    struct pb_store *s = arg;
    sigset_t all;

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals belong to the main thread */

    for (;;) {
        struct pb_op *batch, *last;
        size_t n = 0;

        pthread_mutex_lock(&s->lock);
        while (!s->head && !s->stopping)
            pthread_cond_wait(&s->wake, &s->lock);
        if (!s->head) {
            pthread_mutex_unlock(&s->lock);
            break;
        }
        while (s->sync_busy && !s->stopping && atomic_load(&s->depth) < s->opts.batch_max)
            pthread_cond_wait(&s->wake, &s->lock);
        /* Under load, at most one commit per COMMIT_GATHER_US: what comes
         * meanwhile joins the next one (a lone op after a quiet spell is
         * committed at once). */
        while (!s->stopping && atomic_load(&s->depth) < s->opts.batch_max) {
            int64_t left = s->last_commit_us + COMMIT_GATHER_US - pb_mono_us();
            if (left <= 0 || !s->last_commit_us)
                break;
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_nsec += (long)left * 1000;
            ts.tv_sec += ts.tv_nsec / 1000000000;
            ts.tv_nsec %= 1000000000;
            if (pthread_cond_timedwait(&s->wake, &s->lock, &ts) != 0)
                break;
        }
        s->last_commit_us = pb_mono_us();
        batch = last = s->head;
        for (;;) {
            n++;
            if (last->kind == PB_OP_INGEST || last->kind == PB_OP_SUBMIT)
                s->ningest--;
            if (n == s->opts.batch_max || !last->next)
                break;
            last = last->next;
        }
        s->head = last->next;
        if (!s->head)
            s->tail = NULL;
        last->next = NULL;
        atomic_fetch_sub(&s->depth, n);
        pthread_mutex_unlock(&s->lock);

        run_batch(s, batch, n);
    }
    pthread_mutex_lock(&s->lock);
    s->writer_done = true;
    pthread_cond_signal(&s->sync_wake);
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

int pb_store_start(struct pb_store *s)
{
    int rc;

    pthread_mutex_lock(&s->lock);
    if (s->started || s->stopping) {
        pthread_mutex_unlock(&s->lock);
        return s->stopping ? PB_ESHUTDOWN : 0;
    }
    if (s->be->sync && !s->syncing) {
        rc = pthread_create(&s->sync_thread, NULL, syncer_main, s);
        if (rc != 0) {
            pthread_mutex_unlock(&s->lock);
            PB_ERROR("cannot start the state store syncer thread error=%s", strerror(rc));
            return PB_ENOMEM;
        }
        s->syncing = true;
        pthread_setname_np(s->sync_thread, "pb-sync");
    }
    rc = pthread_create(&s->thread, NULL, writer_main, s);
    if (rc == 0) {
        s->started = true;
        pthread_setname_np(s->thread, "pb-store");
    }
    pthread_mutex_unlock(&s->lock);
    if (rc != 0) {
        PB_ERROR("cannot start the state store writer thread error=%s", strerror(rc));
        return PB_ENOMEM;
    }
    return 0;
}

int pb_store_submit(struct pb_store *s, struct pb_op *op)
{
    if (!s || !op || op->kind < PB_OP_INGEST || op->kind > PB_OP_KEY)
        return PB_EINVAL;

    pthread_mutex_lock(&s->lock);
    if (s->stopping) {
        pthread_mutex_unlock(&s->lock);
        return PB_ESHUTDOWN;
    }
    if (op->kind == PB_OP_INGEST || op->kind == PB_OP_SUBMIT) {
        if (s->ningest >= s->opts.ingest_queue_max) {
            pthread_mutex_unlock(&s->lock);
            return PB_EFULL;
        }
        s->ningest++;
    }
    op->status = 0;
    op->next = NULL;
    bool was_empty = !s->head;
    if (s->tail)
        s->tail->next = op;
    else
        s->head = op;
    s->tail = op;
    /* The writer waits for work, or for a full batch while the syncer
     * flushes: wake it only then. */
    if (atomic_fetch_add(&s->depth, 1) + 1 == s->opts.batch_max || was_empty)
        pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

struct exec_wait {
    struct pb_store *s;
    pthread_cond_t cond;
    bool done;
    void (*done_cb)(struct pb_op *op, void *arg);
    void *arg;
};

static void exec_done_cb(struct pb_op *op, void *arg)
{
    struct exec_wait *w = arg;

    op->done_cb = w->done_cb;
    op->arg = w->arg;
    if (w->done_cb)
        w->done_cb(op, w->arg);
    pthread_mutex_lock(&w->s->exec_lock);
    w->done = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->s->exec_lock);
}

int pb_store_exec(struct pb_store *s, struct pb_op *op)
{
    struct exec_wait w = {.s = s};
    bool on_writer;
    int rc;

    if (!s || !op)
        return PB_EINVAL;
    pthread_mutex_lock(&s->lock);
    /* done_cbs run on the writer or the syncer: waiting there would deadlock. */
    on_writer = (s->started && pthread_equal(pthread_self(), s->thread)) ||
                (s->syncing && pthread_equal(pthread_self(), s->sync_thread));
    pthread_mutex_unlock(&s->lock);
    if (on_writer) {
        PB_ERROR("pb_store_exec called from a state store done_cb");
        return PB_EINVAL;
    }
    if (pthread_cond_init(&w.cond, NULL) != 0)
        return PB_ENOMEM;
    w.done_cb = op->done_cb;
    w.arg = op->arg;
    op->done_cb = exec_done_cb;
    op->arg = &w;

    rc = pb_store_submit(s, op);
    if (rc < 0) {
        op->done_cb = w.done_cb;
        op->arg = w.arg;
        op->status = rc;
        goto out;
    }
    pthread_mutex_lock(&s->exec_lock);
    while (!w.done)
        pthread_cond_wait(&w.cond, &s->exec_lock);
    pthread_mutex_unlock(&s->exec_lock);
    rc = op->status;
out:
    pthread_cond_destroy(&w.cond);
    return rc;
}

void pb_store_stop(struct pb_store *s)
{
    bool join, drain_here;

    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    join = s->started && !s->stop_claimed;
    drain_here = !s->started && !s->stop_claimed;
    s->stop_claimed = true;
    pthread_cond_broadcast(&s->wake);
    pthread_mutex_unlock(&s->lock);

    if (join)
        pthread_join(s->thread, NULL);
    else if (drain_here)
        writer_main(s); /* never started: commit what was queued, here */
    if (join && s->syncing) {
        pthread_join(s->sync_thread, NULL);
        s->syncing = false;
    }
}

bool pb_store_writable(const struct pb_store *s)
{
    return atomic_load(&s->writable);
}

size_t pb_store_queue_depth(const struct pb_store *s)
{
    return atomic_load(&((struct pb_store *)s)->depth);
}

void pb_store_stats(const struct pb_store *s, uint64_t *commits, uint64_t *ops)
{
    if (commits)
        *commits = atomic_load(&((struct pb_store *)s)->commits);
    if (ops)
        *ops = atomic_load(&((struct pb_store *)s)->ops);
}

int pb__store_test_max_pages(struct pb_store *s, int64_t pages)
{
    if (!s->be->test_max_pages)
        return PB_EINVAL;
    s->be->test_max_pages(s->ctx, pages);
    return 0;
}

/* ---- the cluster ----------------------------------------------------------------- */

void pb_store_set_events(struct pb_store *s, const struct pb_store_events *ev)
{
    if (s->be->set_events)
        s->be->set_events(s->ctx, ev);
}

bool pb_store_clustered(const struct pb_store *s)
{
    return s->be->node_name != NULL;
}

const char *pb_store_node_name(const struct pb_store *s)
{
    return s->be->node_name ? s->be->node_name(s->ctx) : pb_store_node_id(s);
}

int pb_store_hold_want(struct pb_store *s, const char *name)
{
    return s->be->hold_want ? s->be->hold_want(s->ctx, name) : 0;
}

bool pb_store_holds(struct pb_store *s, const char *name)
{
    return s->be->holds ? s->be->holds(s->ctx, name) : true;
}

int pb_store_live_nodes(const struct pb_store *s)
{
    return s->be->live_nodes ? s->be->live_nodes(s->ctx) : 1;
}

bool pb_store_lease_valid(const struct pb_store *s)
{
    return s->be->lease_valid ? s->be->lease_valid(s->ctx) : true;
}

bool pb_store_reachable(const struct pb_store *s)
{
    return s->be->reachable ? s->be->reachable(s->ctx) : true;
}

int pb_store_read_nodes(struct pb_store *s, pb_node_cb cb, void *arg, struct pb_err *err)
{
    if (!cb)
        return pb_err_set(err, PB_EINVAL, "read_nodes needs a callback");
    if (s->be->read_nodes)
        return s->be->read_nodes(s->ctx, cb, arg, err);
    struct pb_node_row n = {.name = pb_store_node_id(s),
                            .epoch = pb_store_epoch(s),
                            .state = "live",
                            .holds = "",
                            .self = true};
    cb(arg, &n);
    return 0;
}

/* ---- reads --------------------------------------------------------------------- */

int pb_store_count(struct pb_store *s, pb_count_cb cb, void *arg, struct pb_err *err)
{
    if (!cb)
        return pb_err_set(err, PB_EINVAL, "count needs a callback");
    return s->be->count(s->ctx, -1, cb, arg, err);
}

int pb_store_count_pending(struct pb_store *s, pb_count_cb cb, void *arg, struct pb_err *err)
{
    if (!cb)
        return pb_err_set(err, PB_EINVAL, "count needs a callback");
    return s->be->count(s->ctx, PB_DSTATE_PENDING, cb, arg, err);
}

int pb_store_count_dead(struct pb_store *s, pb_count_cb cb, void *arg, struct pb_err *err)
{
    if (!cb)
        return pb_err_set(err, PB_EINVAL, "count needs a callback");
    return s->be->count(s->ctx, PB_DSTATE_DEAD, cb, arg, err);
}

int pb_store_kv_load(struct pb_store *s, const char *scope, pb_kv_cb cb, void *arg,
                     struct pb_err *err)
{
    if (!scope || !cb)
        return pb_err_set(err, PB_EINVAL, "kv_load needs a scope and a callback");
    return s->be->kv_load(s->ctx, scope, cb, arg, err);
}

int pb_store_read_message(struct pb_store *s, const char *msg_id, const struct pb_read_cbs *cb,
                          struct pb_err *err)
{
    if (!msg_id || !cb)
        return pb_err_set(err, PB_EINVAL, "read_message needs an id and callbacks");
    return s->be->read_message(s->ctx, msg_id, cb, err);
}

int pb_store_read_dead_letters(struct pb_store *s, const struct pb_dead_query *q,
                               const struct pb_read_cbs *cb, struct pb_err *err)
{
    if (!q || !cb || q->limit < 1)
        return pb_err_set(err, PB_EINVAL, "read_dead_letters needs a query, callbacks and a limit");
    return s->be->read_dead_letters(s->ctx, q, cb, err);
}

int pb_store_search_messages(struct pb_store *s, const struct pb_msg_query *q,
                             const struct pb_read_cbs *cb, struct pb_err *err)
{
    if (!q || !cb || q->limit < 1)
        return pb_err_set(err, PB_EINVAL, "search_messages needs a query, callbacks and a limit");
    return s->be->search_messages(s->ctx, q, cb, err);
}

int pb_store_read_dead_letter(struct pb_store *s, int64_t delivery_id, const struct pb_read_cbs *cb,
                              struct pb_err *err)
{
    if (!cb)
        return pb_err_set(err, PB_EINVAL, "read_dead_letter needs callbacks");
    return s->be->read_dead_letter(s->ctx, delivery_id, cb, err);
}

int64_t pb__store_body_crc(const void *data, size_t len)
{
    return (int64_t)crc32_z(crc32_z(0, NULL, 0), data ? data : (const void *)"", len);
}

size_t pb__store_utf8_cut(const char *s, size_t max)
{
    size_t n = strnlen(s, max + 1);

    if (n <= max)
        return n;
    n = max;
    /* Back off continuation bytes (10xxxxxx) so the cut lands on a lead byte. */
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}
