/* sftp.c - the `sftp` input: the `file` input's options and semantics for a
 * folder on an SFTP server.
 *
 *   sftp: { url: "sftp://partner@files.example:22/outbox", private_key: /etc/pb/key,
 *           known_hosts: /etc/pb/known_hosts, paths: ["*.csv"], format: csv,
 *           archive_dir: done, error_dir: failed }
 *
 * Every poll_interval the folder is listed; a file whose size and
 * modification time have not changed for min_age is stable and is
 * downloaded into a local spool folder, then taken like a local file
 * (file_engine.c: each record a message keyed by the file's digest and its
 * number, checkpointed, nothing of a bad file taken). Only once its last
 * record is committed is it moved on the server to archive_dir (or deleted,
 * or kept and remembered); a file that cannot be taken goes to error_dir
 * with its .error.json report uploaded beside it. A lost connection is
 * retried with a growing backoff; whatever was committed stays, and a file
 * taken again after a failure repeats nothing (its record keys).
 *
 * Thread model: a loop and thread of its own (the engine reads the local
 * copy there); the network calls (libcurl, blocking) run one at a time on a
 * second thread, `remote`, which posts each result back to the loop. */
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libxml/parser.h>
#include <openssl/evp.h>

#include "../file/file_int.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_loop.h"
#include "patchbay/pb_time.h"
#include "sftp_curl.h"

#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 60000
#define RETRY_MS 10000
#define ID_MAX 96
#define CAND_MAX 100000
#define SKEW_MS 60000 /* clocks of the server and here may differ this much */

/* What the remote thread does. */
enum job_kind { J_START, J_LIST, J_GET, J_ARCHIVE, J_DELETE, J_FAILED };

struct rfile {
    char *name;
    int64_t size, mtime;
};

struct job {
    enum job_kind kind;
    struct in_sftp *s;
    int rc;
    char why[400];
    /* J_LIST */
    struct rfile *files;
    size_t nfiles, cap;
    /* J_GET and the after-actions */
    char *name;
    int64_t size;
    char *local;
    char *report; /* J_FAILED: the .error.json text */
    char moved_to[PATH_MAX];
};

/* What the input remembers of a remote file (loop thread), by name. */
struct rseen {
    int64_t size, mtime;
    int64_t stable_since; /* first seen with this size and mtime */
    int64_t retry_at;
    bool failed;     /* failed and could not be moved or remembered */
    bool after_todo; /* taken; its after-action is still to do */
    bool mark;
};

struct in_sftp {
    struct file_opts o; /* first: the shared field rows decode into it */
    struct sftp_conf c;
    char *spool_dir;
    uint64_t download_rate;
    /* run time (loop thread unless said) */
    struct pb_input *in;
    struct pb_loop *loop;
    const struct pb_allowlist *allow;
    struct fe *fe;
    struct sftp *conn; /* the remote thread's while a job runs */
    char pipeline[128];
    char *spool; /* the spool folder in use */
    bool spool_made;
    bool once, stopped, started_remote, connected;
    _Atomic bool abort;
    pthread_t th;
    bool th_running;
    pthread_mutex_t mu; /* guards next_job, quit */
    pthread_cond_t cv;
    bool mu_ready;
    struct job *next_job;
    bool quit;
    bool busy; /* a job is on the remote thread */
    struct pb_loop_timer *poll_t;
    int64_t backoff_ms;
    struct smap seen; /* name -> struct rseen */
    /* the file being taken */
    bool taking;
    char *cur_name, *cur_local, cur_id[ID_MAX];
    int64_t cur_size, cur_mtime;
    /* --once */
    bool listed;
    struct smap run; /* name -> struct once */
    struct pb_input_progress prog;
};

struct once {
    bool done;
};

static const struct pb_field sftp_fields[] = {
    FILE_OPTS_FIELDS("30s"),
    SFTP_CONN_FIELDS(struct in_sftp, c),
    {.name = "spool_dir",
     .type = PB_F_STR,
     .offset = offsetof(struct in_sftp, spool_dir),
     .doc = "local folder downloads are kept in while they are taken (default: a new one "
            "under $TMPDIR)"},
    {.name = "download_rate",
     .type = PB_F_SIZE,
     .offset = offsetof(struct in_sftp, download_rate),
     .def = "0",
     .doc = "bytes per second a download may take (0: no limit)"},
    {0},
};

static int sftp_init(void *ctx, struct pb_input_env *env, struct pb_err *err)
{
    struct in_sftp *s = ctx;
    int rc = file_opts_check(&s->o, true, err);
    if (rc)
        return rc;
    if ((rc = sftp_conf_check(&s->c, err)) != 0)
        return rc;
    if (s->o.paths.n == 0) {
        s->o.paths.items = malloc(sizeof(char *));
        if (!s->o.paths.items || !(s->o.paths.items[0] = strdup("*")))
            return pb_err_set(err, PB_ENOMEM, "out of memory");
        s->o.paths.n = 1;
    }
    xmlInitParser();
    snprintf(s->pipeline, sizeof(s->pipeline), "%s", env->pipeline);
    s->once = env->once;
    s->allow = env->allow;
    env->raw = s->o.format == FMT_RAW;
    env->idempotency_window_ms = s->o.idempotency_window_ms;
    if (pthread_mutex_init(&s->mu, NULL) != 0 || pthread_cond_init(&s->cv, NULL) != 0)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    s->mu_ready = true;
    s->fe = fe_create(&s->o, env->pipeline, err);
    return s->fe ? 0 : (err->code ? err->code : PB_ENOMEM);
}

/* ---- the remote thread ----------------------------------------------------------------- */

static void job_free(struct job *j)
{
    if (!j)
        return;
    for (size_t i = 0; i < j->nfiles; i++)
        free(j->files[i].name);
    free(j->files);
    free(j->name);
    free(j->local);
    free(j->report);
    free(j);
}

static bool wanted(const struct in_sftp *s, const char *name)
{
    for (size_t i = 0; i < s->o.exclude.n; i++)
        if (fnmatch(s->o.exclude.items[i], name, 0) == 0)
            return false;
    for (size_t i = 0; i < s->o.paths.n; i++)
        if (fnmatch(s->o.paths.items[i], name, 0) == 0)
            return true;
    return false;
}

static int list_cb(void *arg, const char *name)
{
    struct job *j = arg;
    if (!wanted(j->s, name) || j->nfiles >= CAND_MAX)
        return 0;
    if (j->nfiles == j->cap) {
        size_t nc = j->cap ? j->cap * 2 : 32;
        struct rfile *f = realloc(j->files, nc * sizeof(*f));
        if (!f)
            return PB_ENOMEM;
        j->files = f;
        j->cap = nc;
    }
    struct rfile *f = &j->files[j->nfiles];
    f->name = strdup(name);
    if (!f->name)
        return PB_ENOMEM;
    f->size = f->mtime = -1;
    j->nfiles++;
    return 0;
}

static void run_list(struct in_sftp *s, struct job *j)
{
    j->rc = sftp_list(s->conn, sftp_dir(s->conn), list_cb, j, j->why, sizeof(j->why));
    for (size_t i = 0; j->rc == 0 && i < j->nfiles; i++) {
        char p[PATH_MAX];
        if (sftp_path(s->conn, j->files[i].name, p, sizeof(p)) != 0)
            continue;
        int rc =
            sftp_stat(s->conn, p, &j->files[i].size, &j->files[i].mtime, j->why, sizeof(j->why));
        if (rc == PB_ENOTFOUND)
            continue; /* gone meanwhile */
        if (rc)
            j->rc = rc;
    }
}

static void run_get(struct in_sftp *s, struct job *j)
{
    char p[PATH_MAX];
    if (sftp_path(s->conn, j->name, p, sizeof(p)) != 0) {
        j->rc = PB_ETOOBIG;
        snprintf(j->why, sizeof(j->why), "path too long");
        return;
    }
    int fd = open(j->local, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        j->rc = PB_EIO;
        snprintf(j->why, sizeof(j->why), "cannot write %s: %s", j->local, strerror(errno));
        return;
    }
    j->rc = sftp_get(s->conn, p, fd, s->download_rate, j->why, sizeof(j->why));
    struct stat st;
    if (j->rc == 0 && (fstat(fd, &st) != 0 || (int64_t)st.st_size != j->size)) {
        j->rc = PB_EAGAIN;
        snprintf(j->why, sizeof(j->why), "the file changed while it was downloaded");
    }
    close(fd);
    if (j->rc)
        unlink(j->local);
}

/* A name in dir (remote) nothing has yet: base, base.1, base.2... */
static int unique_remote(struct in_sftp *s, const char *dir, const char *base, char *out,
                         size_t len, char *why, size_t whylen)
{
    const char *dot = strrchr(base, '.');
    if (dot == base)
        dot = NULL;
    int stem = dot ? (int)(dot - base) : (int)strlen(base);
    for (int i = 0; i < 1000; i++) {
        char rel[PATH_MAX];
        if (i == 0)
            snprintf(rel, sizeof(rel), "%s/%s", dir, base);
        else
            snprintf(rel, sizeof(rel), "%s/%.*s.%d%s", dir, stem, base, i, dot ? dot : "");
        if (sftp_path(s->conn, rel, out, len) != 0)
            return PB_ETOOBIG;
        int64_t sz, mt;
        int rc = sftp_stat(s->conn, out, &sz, &mt, why, whylen);
        if (rc == PB_ENOTFOUND)
            return 0;
        if (rc)
            return rc;
    }
    snprintf(why, whylen, "no free name for %s in %s", base, dir);
    return PB_EEXISTS;
}

static void run_after(struct in_sftp *s, struct job *j)
{
    char from[PATH_MAX], to[PATH_MAX];
    if (sftp_path(s->conn, j->name, from, sizeof(from)) != 0) {
        j->rc = PB_ETOOBIG;
        return;
    }
    if (j->kind == J_DELETE) {
        j->rc = sftp_remove(s->conn, from, j->why, sizeof(j->why));
        if (j->rc == PB_EIO) {
            /* Removed meanwhile (a retry after a lost answer) is removed. */
            int64_t sz, mt;
            if (sftp_stat(s->conn, from, &sz, &mt, j->why, sizeof(j->why)) == PB_ENOTFOUND)
                j->rc = 0;
        }
        return;
    }
    const char *dir = j->kind == J_ARCHIVE ? s->o.archive_dir : s->o.error_dir;
    j->rc = unique_remote(s, dir, j->name, to, sizeof(to), j->why, sizeof(j->why));
    if (j->rc)
        return;
    if (j->kind == J_FAILED && j->report) {
        char rpt[PATH_MAX + 16], tmp[PATH_MAX + 32];
        snprintf(rpt, sizeof(rpt), "%s.error.json", to);
        snprintf(tmp, sizeof(tmp), "%s.tmp", rpt);
        j->rc = sftp_put(s->conn, tmp, rpt, j->report, strlen(j->report), j->why, sizeof(j->why));
        if (j->rc)
            return;
    }
    j->rc = sftp_rename(s->conn, from, to, j->why, sizeof(j->why));
    if (j->rc == PB_EIO) {
        int64_t sz, mt;
        if (sftp_stat(s->conn, from, &sz, &mt, j->why, sizeof(j->why)) == PB_ENOTFOUND &&
            sftp_stat(s->conn, to, &sz, &mt, j->why, sizeof(j->why)) == 0)
            j->rc = 0; /* done by an earlier try whose answer was lost */
    }
    snprintf(j->moved_to, sizeof(j->moved_to), "%s", to);
}

static void run_start(struct in_sftp *s, struct job *j)
{
    j->rc = sftp_list(s->conn, sftp_dir(s->conn), NULL, NULL, j->why, sizeof(j->why));
    char d[PATH_MAX];
    if (j->rc == 0 && s->o.archive_dir && sftp_path(s->conn, s->o.archive_dir, d, sizeof(d)) == 0)
        j->rc = sftp_mkdir(s->conn, d, j->why, sizeof(j->why));
    if (j->rc == 0 && s->o.error_dir && sftp_path(s->conn, s->o.error_dir, d, sizeof(d)) == 0)
        j->rc = sftp_mkdir(s->conn, d, j->why, sizeof(j->why));
}

static void job_done_cb(void *arg, int status);

static void *remote_main(void *arg)
{
    struct in_sftp *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->next_job && !s->quit)
            pthread_cond_wait(&s->cv, &s->mu);
        struct job *j = s->next_job;
        s->next_job = NULL;
        bool quit = s->quit;
        pthread_mutex_unlock(&s->mu);
        if (!j && quit)
            break;
        switch (j->kind) {
        case J_START:
            run_start(s, j);
            break;
        case J_LIST:
            run_list(s, j);
            break;
        case J_GET:
            run_get(s, j);
            break;
        default:
            run_after(s, j);
        }
        if (pb_loop_post(s->loop, job_done_cb, j) != 0)
            job_free(j);
    }
    return NULL;
}

static int post_job(struct in_sftp *s, struct job *j)
{
    if (s->busy || s->stopped) {
        job_free(j);
        return PB_EAGAIN;
    }
    pthread_mutex_lock(&s->mu);
    s->next_job = j;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    s->busy = true;
    return 0;
}

static struct job *job_new(struct in_sftp *s, enum job_kind k)
{
    struct job *j = calloc(1, sizeof(*j));
    if (j) {
        j->kind = k;
        j->s = s;
    }
    return j;
}

/* ---- the loop side --------------------------------------------------------------------- */

static void arm_poll(struct in_sftp *s, int64_t ms)
{
    if (!s->poll_t || s->stopped)
        return;
    pb_loop_timer_stop(s->poll_t);
    pb_loop_timer_start(s->poll_t, ms < 0 ? 0 : ms);
}

static void report_progress(struct in_sftp *s)
{
    struct fe_counts c;
    fe_counts(s->fe, &c);
    s->prog.records = c.records;
    s->prog.dead = c.dead;
    pb_input_set_progress(s->in, &s->prog);
}

static void once_mark(struct in_sftp *s, const char *name, bool failed)
{
    struct once *o = s->once ? smap_get(&s->run, name) : NULL;
    if (!o || o->done)
        return;
    o->done = true;
    s->prog.files_done++;
    if (failed)
        s->prog.files_failed++;
}

static void make_id(const char *name, int64_t size, int64_t mtime, char *id)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    static const char hx[] = "0123456789abcdef";
    char h[17] = "0000000000000000";
    if (EVP_Digest(name, strlen(name), md, &n, EVP_sha256(), NULL) == 1)
        for (int i = 0; i < 8; i++) {
            h[2 * i] = hx[md[i] >> 4];
            h[2 * i + 1] = hx[md[i] & 15];
        }
    snprintf(id, ID_MAX, "%s:%lld:%lld", h, (long long)size, (long long)mtime);
}

/* A connection problem: reconnecting, try again after a growing wait. */
static void trouble(struct in_sftp *s, const char *why)
{
    s->connected = false;
    pb_input_set_state(s->in, PB_INPUT_RECONNECTING, why);
    s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (s->backoff_ms > BACKOFF_MAX_MS)
        s->backoff_ms = BACKOFF_MAX_MS;
    arm_poll(s, s->backoff_ms);
}

static void fine(struct in_sftp *s)
{
    s->backoff_ms = 0;
    if (!s->connected) {
        s->connected = true;
        pb_input_set_state(s->in, PB_INPUT_CONNECTED, NULL);
    }
}

static bool present_cb(void *arg, const char *id)
{
    /* ids name a file by a hash of its name: keep every id of a file still
     * listed (the list is small: kept files of this folder). */
    struct in_sftp *s = arg;
    SMAP_EACH(&s->seen, i)
    {
        struct rseen *r = s->seen.vals[i];
        char mine[ID_MAX];
        make_id(s->seen.keys[i], r->size, r->mtime, mine);
        if (r->mark && strcmp(mine, id) == 0)
            return true;
    }
    return false;
}

static void keep_done_cb(void *arg, int status)
{
    struct in_sftp *s = arg;
    if (status != 0)
        PB_WARN("sftp: could not remember a kept file pipeline=%s error=\"%s\"", s->pipeline,
                pb_strerror(status));
    arm_poll(s, 0);
}

static void remember(struct in_sftp *s, const char *name, const char *id)
{
    if (fe_keep(s->fe, id, present_cb, s, keep_done_cb, s) == 0)
        return;
    struct rseen *r = smap_get(&s->seen, name);
    if (r)
        r->failed = true;
    arm_poll(s, 0);
}

static void cur_clear(struct in_sftp *s)
{
    if (s->cur_local)
        unlink(s->cur_local);
    free(s->cur_local);
    free(s->cur_name);
    s->cur_local = s->cur_name = NULL;
    s->taking = false;
}

static void post_after(struct in_sftp *s, enum job_kind k, const char *name, char *report)
{
    struct job *j = job_new(s, k);
    if (!j || !(j->name = strdup(name))) {
        job_free(j);
        free(report);
        arm_poll(s, RETRY_MS);
        return;
    }
    j->report = report;
    if (post_job(s, j) != 0)
        arm_poll(s, RETRY_MS);
}

static void take_done_cb(void *arg, enum fe_end end, const struct fe_report *rep)
{
    struct in_sftp *s = arg;
    char *name = s->cur_name;
    s->cur_name = NULL;
    char id[ID_MAX];
    snprintf(id, sizeof(id), "%s", s->cur_id);
    int64_t size = s->cur_size;
    cur_clear(s);
    if (!name)
        return;
    struct rseen *r = smap_get(&s->seen, name);
    if (s->stopped || end == FE_STOPPED) {
        free(name);
        return;
    }
    switch (end) {
    case FE_DONE:
        if (s->o.after == AFTER_KEEP) {
            remember(s, name, id);
            once_mark(s, name, false);
        } else {
            if (r)
                r->after_todo = true;
            post_after(s, s->o.after == AFTER_ARCHIVE ? J_ARCHIVE : J_DELETE, name, NULL);
        }
        break;
    case FE_FAILED:
        if (s->o.error_dir) {
            char disp[PATH_MAX + 64];
            snprintf(disp, sizeof(disp), "%s%s", sftp_display(s->conn), name);
            post_after(s, J_FAILED, name, fe_report_json(rep, disp, size));
        } else {
            remember(s, name, id);
            once_mark(s, name, true);
        }
        break;
    case FE_RETRY:
        PB_WARN("sftp: file not taken now pipeline=%s file=\"%s\" reason=\"%s\" (tried again)",
                s->pipeline, name, rep->reason);
        if (r)
            r->retry_at = pb_now_ms() + RETRY_MS;
        arm_poll(s, 0);
        break;
    case FE_STOPPED:
        break;
    }
    free(name);
    report_progress(s);
}

static void on_got(struct in_sftp *s, struct job *j)
{
    if (j->rc) {
        unlink(j->local);
        cur_clear(s);
        if (j->rc == PB_ENET || j->rc == PB_EDENIED) {
            trouble(s, j->why);
            return;
        }
        if (j->rc == PB_ESHUTDOWN)
            return;
        PB_WARN("sftp: download failed pipeline=%s file=\"%s\" error=\"%s\" (tried again)",
                s->pipeline, j->name, j->why);
        struct rseen *r = smap_get(&s->seen, j->name);
        if (r && j->rc != PB_ENOTFOUND)
            r->retry_at = pb_now_ms() + RETRY_MS;
        arm_poll(s, 0);
        return;
    }
    fine(s);
    /* $meta: where the file came from. */
    char *meta = NULL, mt[40], num[96], path[PATH_MAX];
    size_t n = 0, cap = 0;
    sftp_path(s->conn, j->name, path, sizeof(path));
    file_rfc3339(s->cur_mtime * 1000, mt, sizeof(mt));
    int rc = buf_append(&meta, &n, &cap, "\"file\":", 7);
    if (rc == 0)
        rc = json_text_append(&meta, &n, &cap, path);
    if (rc == 0)
        rc = buf_append(&meta, &n, &cap, ",\"name\":", 8);
    if (rc == 0)
        rc = json_text_append(&meta, &n, &cap, j->name);
    snprintf(num, sizeof(num), ",\"size\":%lld,\"modified_at\":", (long long)s->cur_size);
    if (rc == 0)
        rc = buf_append(&meta, &n, &cap, num, strlen(num));
    if (rc == 0)
        rc = json_text_append(&meta, &n, &cap, mt);
    if (rc == 0)
        rc = buf_append(&meta, &n, &cap, ",\"url\":", 7);
    char disp[PATH_MAX + 256];
    snprintf(disp, sizeof(disp), "%s%s", sftp_display(s->conn), j->name);
    if (rc == 0)
        rc = json_text_append(&meta, &n, &cap, disp);
    struct fe_file ff = {
        .path = s->cur_local, .id = s->cur_id, .meta = meta, .display = disp, .size = s->cur_size};
    if (rc == 0)
        rc = fe_take(s->fe, &ff, take_done_cb, s);
    free(meta);
    if (rc != 0) {
        cur_clear(s);
        arm_poll(s, RETRY_MS);
        return;
    }
    pb_input_set_position(s->in, disp);
}

static void on_after(struct in_sftp *s, struct job *j)
{
    struct rseen *r = smap_get(&s->seen, j->name);
    if (j->rc) {
        if (j->rc == PB_ESHUTDOWN)
            return;
        PB_WARN("sftp: file taken but not %s pipeline=%s file=\"%s\" error=\"%s\" (tried again; "
                "its records are committed)",
                j->kind == J_DELETE ? "deleted" : "moved", s->pipeline, j->name, j->why);
        if (j->kind == J_FAILED) {
            /* Taken again later: fails again, nothing of it is committed. */
            if (r)
                r->retry_at = pb_now_ms() + RETRY_MS;
        }
        if (j->rc == PB_ENET || j->rc == PB_EDENIED)
            trouble(s, j->why);
        else
            arm_poll(s, RETRY_MS);
        return;
    }
    fine(s);
    if (r)
        r->after_todo = false;
    if (j->kind == J_FAILED)
        PB_WARN("sftp: file moved to error_dir pipeline=%s file=\"%s\" to=\"%s\"", s->pipeline,
                j->name, j->moved_to);
    else if (j->kind == J_ARCHIVE)
        PB_INFO("sftp: file archived pipeline=%s file=\"%s\" to=\"%s\"", s->pipeline, j->name,
                j->moved_to);
    once_mark(s, j->name, j->kind == J_FAILED);
    report_progress(s);
    arm_poll(s, 0);
}

static void pick(struct in_sftp *s, struct job *j)
{
    int64_t now = pb_now_ms(), wake = -1;
    size_t waiting = 0;
    if (s->once && !s->listed) {
        for (size_t i = 0; i < j->nfiles; i++) {
            char id[ID_MAX];
            make_id(j->files[i].name, j->files[i].size, j->files[i].mtime, id);
            if (j->files[i].size < 0 || fe_kept(s->fe, id))
                continue;
            struct once *o = calloc(1, sizeof(*o));
            if (!o || smap_put(&s->run, j->files[i].name, o) != 0) {
                free(o);
                arm_poll(s, RETRY_MS);
                return;
            }
        }
        s->listed = true;
        s->prog.files_total = (int64_t)s->run.n;
        PB_INFO("sftp: taking the files there (--once) pipeline=%s files=%zu", s->pipeline,
                s->run.n);
    }
    SMAP_EACH(&s->seen, i)
    ((struct rseen *)s->seen.vals[i])->mark = false;
    struct rfile *best = NULL;
    bool after = false;
    for (size_t i = 0; i < j->nfiles; i++) {
        struct rfile *f = &j->files[i];
        if (f->size < 0)
            continue;
        struct rseen *r = smap_get(&s->seen, f->name);
        if (!r) {
            r = calloc(1, sizeof(*r));
            if (!r || smap_put(&s->seen, f->name, r) != 0) {
                free(r);
                continue;
            }
            r->stable_since = now;
        }
        if (r->size != f->size || r->mtime != f->mtime) {
            r->size = f->size;
            r->mtime = f->mtime;
            r->stable_since = now;
            r->failed = false;
        }
        r->mark = true;
        if (s->once) {
            struct once *o = smap_get(&s->run, f->name);
            if (!o || o->done)
                continue;
        }
        char id[ID_MAX];
        make_id(f->name, f->size, f->mtime, id);
        if (fe_kept(s->fe, id) || r->failed) {
            once_mark(s, f->name, r->failed);
            continue;
        }
        if (r->retry_at > now) {
            wake = wake < 0 || r->retry_at - now < wake ? r->retry_at - now : wake;
            waiting++;
            continue;
        }
        /* Stable: unchanged for min_age while watched, or last changed
         * longer ago than that by the server's clock (with a minute for
         * clocks that differ). */
        int64_t left;
        if (!file_ready(now, f->mtime > 0 ? f->mtime * 1000 : 0, r->stable_since, s->o.min_age_ms,
                        SKEW_MS, &left)) {
            wake = wake < 0 || left < wake ? left : wake;
            waiting++;
            continue;
        }
        if (r->after_todo) {
            /* Its records are committed: only the after-action is left. */
            if (!best || !after) {
                best = f;
                after = true;
            }
            continue;
        }
        if (!best)
            best = f;
        else
            waiting++;
    }
    if (s->once) {
        SMAP_EACH(&s->run, i)
        {
            struct once *o = s->run.vals[i];
            struct rseen *r = smap_get(&s->seen, s->run.keys[i]);
            if (!o->done && (!r || !r->mark)) {
                o->done = true; /* gone from the server */
                s->prog.files_done++;
            }
        }
    }
    pb_input_set_lag(s->in, (int64_t)waiting);
    report_progress(s);
    if (best && after) {
        post_after(s, s->o.after == AFTER_ARCHIVE ? J_ARCHIVE : J_DELETE, best->name, NULL);
        return;
    }
    if (best) {
        struct job *g = job_new(s, J_GET);
        char local[PATH_MAX];
        make_id(best->name, best->size, best->mtime, s->cur_id);
        snprintf(local, sizeof(local), "%s/%.16s.download", s->spool, s->cur_id);
        if (!g || !(g->name = strdup(best->name)) || !(g->local = strdup(local)) ||
            !(s->cur_name = strdup(best->name)) || !(s->cur_local = strdup(local))) {
            job_free(g);
            cur_clear(s);
            arm_poll(s, RETRY_MS);
            return;
        }
        g->size = best->size;
        s->cur_size = best->size;
        s->cur_mtime = best->mtime;
        s->taking = true;
        if (post_job(s, g) != 0) {
            cur_clear(s);
            arm_poll(s, RETRY_MS);
        }
        return;
    }
    if (s->once && s->listed && s->prog.files_done >= s->prog.files_total) {
        pb_input_finished(s->in);
        return;
    }
    int64_t next = s->o.poll_interval_ms;
    if (wake >= 0 && wake < next)
        next = wake + 5;
    arm_poll(s, next);
}

static void job_done_cb(void *arg, int status)
{
    struct job *j = arg;
    struct in_sftp *s = j->s;
    s->busy = false;
    if (status != PB_LOOP_RUN || s->stopped) {
        job_free(j);
        return;
    }
    switch (j->kind) {
    case J_START:
        if (j->rc) {
            trouble(s, j->why);
        } else {
            fine(s);
            arm_poll(s, 0);
        }
        break;
    case J_LIST:
        if (j->rc) {
            if (j->rc != PB_ESHUTDOWN)
                trouble(s, j->why);
        } else {
            fine(s);
            pick(s, j);
        }
        break;
    case J_GET:
        on_got(s, j);
        break;
    default:
        on_after(s, j);
    }
    job_free(j);
}

static void poll_cb(struct pb_loop_timer *t, void *arg)
{
    struct in_sftp *s = arg;
    (void)t;
    if (s->busy || s->taking || s->stopped)
        return;
    struct job *j = job_new(s, s->connected ? J_LIST : J_START);
    if (!j || post_job(s, j) != 0)
        arm_poll(s, RETRY_MS);
}

/* ---- life cycle ------------------------------------------------------------------------ */

static int sftp_start(void *ctx, struct pb_input *in, struct pb_err *err)
{
    struct in_sftp *s = ctx;
    s->in = in;
    s->loop = pb_input_loop(in);
    if (!s->spool) {
        if (s->spool_dir) {
            if (mkdir(s->spool_dir, 0700) != 0 && errno != EEXIST)
                return pb_err_set(err, PB_EIO, "cannot make spool_dir %s: %s", s->spool_dir,
                                  strerror(errno));
            s->spool = strdup(s->spool_dir);
        } else {
            const char *t = getenv("TMPDIR");
            char tmpl[PATH_MAX];
            snprintf(tmpl, sizeof(tmpl), "%s/patchbay-sftp-XXXXXX", t && *t ? t : "/tmp");
            if (!mkdtemp(tmpl))
                return pb_err_set(err, PB_EIO, "cannot make a spool folder: %s", strerror(errno));
            s->spool = strdup(tmpl);
            s->spool_made = true;
        }
        if (!s->spool)
            return pb_err_set(err, PB_ENOMEM, "out of memory");
    }
    if (!s->conn) {
        s->conn = sftp_create(&s->c, s->allow, err);
        if (!s->conn)
            return err->code ? err->code : PB_ENOMEM;
        sftp_set_abort(s->conn, &s->abort);
    }
    if (fe_start(s->fe, in) != 0)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    s->poll_t = pb_loop_timer_create(s->loop, poll_cb, s);
    if (!s->poll_t)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    if (pthread_create(&s->th, NULL, remote_main, s) != 0)
        return pb_err_set(err, PB_ENOMEM, "cannot start the sftp thread");
    s->th_running = true;
    pb_input_set_progress(in, &s->prog);
    /* Connected once the first call succeeds. */
    pb_input_set_state(in, PB_INPUT_STARTING, NULL);
    pb_loop_timer_start(s->poll_t, 0);
    return 0;
}

static void sftp_pause(void *ctx)
{
    struct in_sftp *s = ctx;
    fe_pause(s->fe);
}

static void sftp_resume(void *ctx)
{
    struct in_sftp *s = ctx;
    fe_resume(s->fe);
}

static void sftp_stop(void *ctx)
{
    struct in_sftp *s = ctx;
    s->stopped = true;
    fe_stop(s->fe);
    pb_loop_timer_destroy(s->poll_t);
    s->poll_t = NULL;
    atomic_store(&s->abort, true);
    if (s->th_running) {
        pthread_mutex_lock(&s->mu);
        s->quit = true;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->th, NULL);
        s->th_running = false;
    }
}

static void sftp_destroy_ctx(void *ctx)
{
    struct in_sftp *s = ctx;
    if (s->th_running) {
        atomic_store(&s->abort, true);
        pthread_mutex_lock(&s->mu);
        s->quit = true;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->th, NULL);
        s->th_running = false;
    }
    job_free(s->next_job);
    s->next_job = NULL;
    fe_destroy(s->fe);
    s->fe = NULL;
    cur_clear(s);
    sftp_destroy(s->conn);
    s->conn = NULL;
    if (s->spool_made && s->spool)
        rmdir(s->spool);
    free(s->spool);
    s->spool = NULL;
    smap_free(&s->seen, free);
    smap_free(&s->run, free);
    if (s->mu_ready) {
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv);
        s->mu_ready = false;
    }
}

const struct pb_input_plugin pb_in_sftp = {
    .name = "sftp",
    .fields = sftp_fields,
    .ctx_size = sizeof(struct in_sftp),
    .flags = PB_INPUT_OWN_THREAD | PB_INPUT_SINGLETON | PB_INPUT_CAN_FINISH,
    .init = sftp_init,
    .start = sftp_start,
    .stop = sftp_stop,
    .pause = sftp_pause,
    .resume = sftp_resume,
    .destroy = sftp_destroy_ctx,
};
