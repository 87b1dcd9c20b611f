/* sqlite_ckpt.c - the SQLite backend's checkpoints, off the writer's path.
 *
 * In WAL mode every commit appends the pages it changed to the log, and a
 * checkpoint copies them back into the database file. SQLite's automatic
 * checkpoint runs inside the commit that crosses its threshold, on the
 * writer thread, stalling every acknowledgement behind it; and a small
 * threshold copies the same hot pages (indexes, the last pages of each
 * table) back again and again. Here the writer's commit hook only notes
 * the log's size; a thread of the backend's own, with a connection of its
 * own, checkpoints (PASSIVE: it never waits for the writer or readers) once
 * the log holds CKPT_PAGES pages. The log starts over only when a
 * checkpoint has copied all of it, and under steady load new commits keep
 * landing while the checkpointer copies: so once it has copied all but the
 * last CKPT_TAIL pages, the writer copies that tail itself, briefly, and its
 * next commit starts the log over. Should the checkpointer not catch up (a
 * writer committing without pause, big batches), the writer copies what is
 * left at CKPT_PAGES_HARD: the log stays within that, plus one batch.
 *
 * Threads: the hook runs on the writer thread; the checkpointer on its own
 * (pb-ckpt); they share only the flags under ck->lock. */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>

#include "patchbay/pb_log.h"
#include "store/sqlite_int.h"

#define CKPT_PAGES 1024
#define CKPT_PAGES_HARD (2 * CKPT_PAGES) /* the writer copies what is left itself */
#define CKPT_TAIL 1024

static int wal_hook(void *arg, sqlite3 *db, const char *name, int frames)
{
    struct sq *q = arg;
    struct sq_ckpt *ck = &q->ckpt;
    int copied = atomic_load(&ck->copied);
    if (frames >= CKPT_PAGES_HARD || (copied > 0 && frames - copied <= CKPT_TAIL)) {
        atomic_store(&ck->copied, 0);
        int rc = sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        if (rc != SQLITE_OK && rc != SQLITE_BUSY)
            PB_WARN("state store checkpoint failed path=%s error=\"%s\"", q->display,
                    sqlite3_errstr(rc));
        return SQLITE_OK;
    }
    if (frames >= CKPT_PAGES) {
        pthread_mutex_lock(&ck->lock);
        if (!ck->due) {
            ck->due = true;
            pthread_cond_signal(&ck->cond);
        }
        pthread_mutex_unlock(&ck->lock);
    }
    return SQLITE_OK;
}

static void *ckpt_main(void *arg)
{
    struct sq *q = arg;
    struct sq_ckpt *ck = &q->ckpt;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_mutex_lock(&ck->lock);
    for (;;) {
        while (!ck->due && !ck->stop)
            pthread_cond_wait(&ck->cond, &ck->lock);
        if (ck->stop)
            break;
        ck->due = false;
        pthread_mutex_unlock(&ck->lock);
        int log = 0, done = 0;
        int rc = sqlite3_wal_checkpoint_v2(ck->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
        if (rc != SQLITE_OK && rc != SQLITE_BUSY)
            PB_WARN("state store checkpoint failed path=%s error=\"%s\"", q->display,
                    sqlite3_errmsg(ck->db));
        else
            PB_DEBUG("state store checkpoint path=%s log_pages=%d copied=%d", q->display, log,
                     done);
        if (rc == SQLITE_OK)
            atomic_store(&ck->copied, done);
        pthread_mutex_lock(&ck->lock);
    }
    pthread_mutex_unlock(&ck->lock);
    return NULL;
}

int pb__sqlite_ckpt_start(struct sq *q, struct pb_err *err)
{
    struct sq_ckpt *ck = &q->ckpt;
    int rc = pb__sqlite_open_conn(q, false, &ck->db, err);
    if (rc < 0)
        return rc;
    pthread_mutex_init(&ck->lock, NULL);
    pthread_cond_init(&ck->cond, NULL);
    ck->inited = true;
    if (pthread_create(&ck->thread, NULL, ckpt_main, q) != 0)
        return pb_err_set(err, PB_ENOMEM, "state store %s: cannot start the checkpoint thread",
                          q->display);
    pthread_setname_np(ck->thread, "pb-ckpt");
    ck->running = true;
    sqlite3_wal_hook(q->db, wal_hook, q);
    return 0;
}

void pb__sqlite_ckpt_stop(struct sq *q)
{
    struct sq_ckpt *ck = &q->ckpt;
    if (q->db)
        sqlite3_wal_hook(q->db, NULL, NULL);
    if (ck->running) {
        pthread_mutex_lock(&ck->lock);
        ck->stop = true;
        pthread_cond_signal(&ck->cond);
        pthread_mutex_unlock(&ck->lock);
        pthread_join(ck->thread, NULL);
        ck->running = false;
    }
    if (ck->db) {
        sqlite3_close(ck->db);
        ck->db = NULL;
    }
    if (ck->inited) {
        pthread_cond_destroy(&ck->cond);
        pthread_mutex_destroy(&ck->lock);
        ck->inited = false;
    }
}
