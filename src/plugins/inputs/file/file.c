/* file.c - the `file` input: takes the files matching `paths` (globs), one at
 * a time, each record a message (file_engine.c), and archives, deletes or
 * keeps a file only once its last record is committed. A file that cannot
 * be taken goes to error_dir with a .error.json report beside it.
 *
 *   file: { paths: ["/data/in/<glob>.csv"], format: csv, archive_dir: /data/done,
 *           error_dir: /data/failed }
 *
 * New files are found through inotify on the patterns' folders (watch:
 * true) and by a scan every poll_interval besides (network file systems,
 * missed events, a full inotify table). A file changed less than min_age
 * ago is left alone: it may still be being written. Files are taken oldest
 * first. Under `patchbay run --once` the files there at start are taken
 * (waiting for those still being written), then the input finishes.
 *
 * Thread model: a loop and thread of its own (PB_INPUT_OWN_THREAD: reading
 * and hashing block); everything here runs on it. Singleton: one node of a
 * cluster takes a folder. */
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <glob.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libxml/parser.h>
#include <openssl/evp.h>

#include "file_int.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_loop.h"
#include "patchbay/pb_time.h"

#define RETRY_MS 5000   /* a file that could not be read is tried again after this */
#define DEBOUNCE_MS 50  /* a burst of inotify events makes one scan */
#define SCAN_MAX 100000 /* files considered per scan */
#define ID_MAX 96

struct cand {
    char *path;
    char id[ID_MAX];
    int64_t size;
    int64_t mtime_ms;
    dev_t dev;
    ino_t ino;
};

/* What the input remembers of a file between scans (in memory, by id). */
struct seen {
    int64_t first_ms; /* first seen unchanged */
    int64_t retry_at; /* FE_RETRY: not before this */
    bool failed;      /* failed, and could not be moved or remembered */
    bool moved_fail;  /* taken, but its after-action failed: only that is tried again */
    bool mark;        /* present in the last scan */
};

struct once {
    bool done;
};

struct in_file {
    struct file_opts o; /* first: the shared field rows decode into it */
    /* run time: the input's loop thread */
    struct pb_input *in;
    struct pb_loop *loop;
    struct fe *fe;
    char pipeline[128];
    bool once, stopped;
    int ino;
    bool ino_open;
    struct pb_loop_watch *ino_w;
    struct pb_loop_timer *scan_t;
    char *archive_real, *error_real;
    struct smap seen; /* id -> struct seen */
    struct cand cur;  /* the file being taken */
    bool taking, keeping;
    /* --once: the files there at the first scan (path -> struct once) */
    bool listed;
    struct smap run; /* path -> struct once */
    struct pb_input_progress prog;
};

static const struct pb_field file_fields[] = {
    FILE_OPTS_FIELDS("10s"),
    {0},
};

static int file_init(void *ctx, struct pb_input_env *env, struct pb_err *err)
{
    struct in_file *f = ctx;
    int rc = file_opts_check(&f->o, false, err);
    if (rc)
        return rc;
    xmlInitParser();
    snprintf(f->pipeline, sizeof(f->pipeline), "%s", env->pipeline);
    f->once = env->once;
    env->raw = f->o.format == FMT_RAW;
    env->idempotency_window_ms = f->o.idempotency_window_ms;
    f->fe = fe_create(&f->o, env->pipeline, err);
    return f->fe ? 0 : (err->code ? err->code : PB_ENOMEM);
}

/* ---- helpers -------------------------------------------------------------------------------- */

static void cand_free(struct cand *c)
{
    free(c->path);
    c->path = NULL;
}

static void make_id(const char *path, int64_t size, const struct stat *st, char *id)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    static const char hx[] = "0123456789abcdef";
    char h[17] = "0000000000000000";
    if (EVP_Digest(path, strlen(path), md, &n, EVP_sha256(), NULL) == 1) {
        for (int i = 0; i < 8; i++) {
            h[2 * i] = hx[md[i] >> 4];
            h[2 * i + 1] = hx[md[i] & 15];
        }
    }
    snprintf(id, ID_MAX, "%s:%lld:%lld.%09ld", h, (long long)size, (long long)st->st_mtim.tv_sec,
             st->st_mtim.tv_nsec);
}

static bool has_glob(const char *s)
{
    return strpbrk(s, "*?[{") != NULL;
}

static int mkdirs(const char *dir)
{
    char p[PATH_MAX];
    if (snprintf(p, sizeof(p), "%s", dir) >= (int)sizeof(p))
        return PB_ETOOBIG;
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = 0;
        if (mkdir(p, 0750) != 0 && errno != EEXIST)
            return PB_EIO;
        *s = '/';
    }
    if (mkdir(p, 0750) != 0 && errno != EEXIST)
        return PB_EIO;
    return 0;
}

static void fsync_dir(const char *path)
{
    char d[PATH_MAX];
    snprintf(d, sizeof(d), "%s", path);
    int fd = open(dirname(d), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

static void fsync_path_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* Copy src to dst (another file system), durably, then remove src. */
static int copy_then_unlink(const char *src, const char *dst)
{
    char buf[65536];
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return -1;
    int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (out < 0) {
        close(in);
        return -1;
    }
    int rc = 0;
    for (;;) {
        ssize_t n = read(in, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = n < 0 ? -1 : 0;
            break;
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                rc = -1;
                break;
            }
            off += w;
        }
        if (rc)
            break;
    }
    if (rc == 0 && fsync(out) != 0)
        rc = -1;
    close(in);
    if (close(out) != 0)
        rc = -1;
    if (rc != 0) {
        unlink(dst);
        return -1;
    }
    return unlink(src);
}

/* Move path into dir under a name that overwrites nothing; *dst set. */
static int move_into(const char *path, const char *dir, char *dst, size_t len)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s", path);
    int rc = file_unique_name(dir, basename(tmp), dst, len);
    if (rc)
        return -1;
    if (rename(path, dst) != 0) {
        if (errno != EXDEV || copy_then_unlink(path, dst) != 0)
            return -1;
    }
    fsync_dir(path);
    fsync_path_dir(dir);
    return 0;
}

/* Write the .error.json report next to where the file goes (temp file,
 * fsync, rename), then move the file there. */
static int to_error_dir(struct in_file *f, const char *path, const struct fe_report *rep,
                        int64_t size)
{
    char dst[PATH_MAX], rpt[PATH_MAX + 16], tmp[PATH_MAX + 32], b[PATH_MAX];
    snprintf(b, sizeof(b), "%s", path);
    if (file_unique_name(f->o.error_dir, basename(b), dst, sizeof(dst)) != 0)
        return -1;
    char *json = fe_report_json(rep, path, size);
    if (!json)
        return -1;
    snprintf(rpt, sizeof(rpt), "%s.error.json", dst);
    snprintf(tmp, sizeof(tmp), "%s.tmp", rpt);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    int rc = -1;
    if (fd >= 0) {
        size_t len = strlen(json);
        rc = write(fd, json, len) == (ssize_t)len && fsync(fd) == 0 ? 0 : -1;
        if (close(fd) != 0)
            rc = -1;
        if (rc == 0)
            rc = rename(tmp, rpt);
        if (rc != 0)
            unlink(tmp);
    }
    free(json);
    if (rc != 0)
        return -1;
    if (rename(path, dst) != 0 && (errno != EXDEV || copy_then_unlink(path, dst) != 0))
        return -1;
    fsync_dir(path);
    fsync_path_dir(f->o.error_dir);
    return 0;
}

static struct seen *seen_get(struct in_file *f, const char *id, bool add)
{
    struct seen *s = smap_get(&f->seen, id);
    if (s || !add)
        return s;
    s = calloc(1, sizeof(*s));
    if (!s || smap_put(&f->seen, id, s) != 0) {
        free(s);
        return NULL;
    }
    return s;
}

/* ---- scanning ------------------------------------------------------------------------------ */

static bool in_dir(const char *real_dir, const char *path)
{
    if (!real_dir)
        return false;
    char d[PATH_MAX], rp[PATH_MAX];
    snprintf(d, sizeof(d), "%s", path);
    if (!realpath(dirname(d), rp))
        return false;
    return strcmp(rp, real_dir) == 0;
}

static bool excluded(const struct in_file *f, const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    for (size_t i = 0; i < f->o.exclude.n; i++)
        if (fnmatch(f->o.exclude.items[i], base, 0) == 0)
            return true;
    return false;
}

static void watch_dirs(struct in_file *f)
{
    if (!f->ino_open)
        return;
    const uint32_t mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_ATTRIB | IN_MODIFY;
    for (size_t i = 0; i < f->o.paths.n; i++) {
        char d[PATH_MAX];
        snprintf(d, sizeof(d), "%s", f->o.paths.items[i]);
        const char *dir = dirname(d);
        if (!has_glob(dir)) {
            inotify_add_watch(f->ino, dir, mask);
            continue;
        }
        glob_t g;
        if (glob(dir, GLOB_ONLYDIR | GLOB_NOSORT | GLOB_BRACE, NULL, &g) == 0) {
            for (size_t k = 0; k < g.gl_pathc; k++)
                inotify_add_watch(f->ino, g.gl_pathv[k], mask);
        }
        globfree(&g);
    }
}

static int cand_by_inode(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->dev != y->dev)
        return x->dev < y->dev ? -1 : 1;
    if (x->ino != y->ino)
        return x->ino < y->ino ? -1 : 1;
    return strcmp(x->path, y->path);
}

static int cand_cmp(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->mtime_ms != y->mtime_ms)
        return x->mtime_ms < y->mtime_ms ? -1 : 1;
    return strcmp(x->path, y->path);
}

/* The files matching paths now, oldest first. */
static int list_files(struct in_file *f, struct cand **out, size_t *nout)
{
    struct cand *c = NULL;
    size_t n = 0, cap = 0;
    for (size_t i = 0; i < f->o.paths.n; i++) {
        glob_t g;
        int gr = glob(f->o.paths.items[i], GLOB_NOSORT | GLOB_BRACE, NULL, &g);
        if (gr != 0) {
            globfree(&g);
            continue;
        }
        for (size_t k = 0; k < g.gl_pathc && n < SCAN_MAX; k++) {
            const char *p = g.gl_pathv[k];
            struct stat st;
            if (stat(p, &st) != 0 || !S_ISREG(st.st_mode) || excluded(f, p) ||
                in_dir(f->archive_real, p) || in_dir(f->error_real, p))
                continue;
            if (n == cap) {
                size_t nc = cap ? cap * 2 : 64;
                struct cand *nn = realloc(c, nc * sizeof(*nn));
                if (!nn)
                    break;
                c = nn;
                cap = nc;
            }
            struct cand *x = &c[n];
            x->path = strdup(p);
            if (!x->path)
                break;
            x->size = (int64_t)st.st_size;
            x->mtime_ms = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
            x->dev = st.st_dev;
            x->ino = st.st_ino;
            make_id(p, x->size, &st, x->id);
            n++;
        }
        globfree(&g);
    }
    /* One file reached by two patterns (or a hard link) is taken once. */
    if (n > 1) {
        qsort(c, n, sizeof(*c), cand_by_inode);
        size_t m = 1;
        for (size_t i = 1; i < n; i++) {
            if (c[i].dev == c[m - 1].dev && c[i].ino == c[m - 1].ino)
                cand_free(&c[i]);
            else
                c[m++] = c[i];
        }
        n = m;
        qsort(c, n, sizeof(*c), cand_cmp);
    }
    *out = c;
    *nout = n;
    return 0;
}

static bool present_cb(void *arg, const char *id)
{
    struct in_file *f = arg;
    struct seen *s = smap_get(&f->seen, id);
    return s && s->mark;
}

static void scan(struct in_file *f);

static void arm_scan(struct in_file *f, int64_t ms)
{
    if (!f->scan_t || f->stopped)
        return;
    if (pb_loop_timer_armed(f->scan_t))
        pb_loop_timer_stop(f->scan_t);
    pb_loop_timer_start(f->scan_t, ms < 0 ? 0 : ms);
}

static void report_progress(struct in_file *f)
{
    struct fe_counts c;
    fe_counts(f->fe, &c);
    f->prog.records = c.records;
    f->prog.dead = c.dead;
    pb_input_set_progress(f->in, &f->prog);
}

static void once_mark(struct in_file *f, const char *path, bool failed)
{
    struct once *o = f->once ? smap_get(&f->run, path) : NULL;
    if (!o || o->done)
        return;
    o->done = true;
    f->prog.files_done++;
    if (failed)
        f->prog.files_failed++;
}

static bool once_all_done(const struct in_file *f)
{
    return f->prog.files_done >= f->prog.files_total;
}

static void take_done_cb(void *arg, enum fe_end end, const struct fe_report *rep);

static void keep_done_cb(void *arg, int status)
{
    struct in_file *f = arg;
    f->keeping = false;
    if (status != 0)
        PB_WARN("file: could not remember a kept file pipeline=%s error=\"%s\" (tried again)",
                f->pipeline, pb_strerror(status));
    if (!f->stopped)
        arm_scan(f, status == 0 ? 0 : RETRY_MS);
}

/* Remember id as taken or failed, so it is not taken again while it is
 * unchanged. */
static void remember(struct in_file *f, const char *id)
{
    int rc = fe_keep(f->fe, id, present_cb, f, keep_done_cb, f);
    if (rc == 0) {
        f->keeping = true;
        return;
    }
    struct seen *s = seen_get(f, id, true);
    if (s)
        s->failed = true; /* in memory at least */
}

/* The after-action for a file whose every record is committed. */
static void after_done(struct in_file *f, const struct cand *c)
{
    char dst[PATH_MAX];
    struct seen *s;
    switch (f->o.after) {
    case AFTER_ARCHIVE:
        if (move_into(c->path, f->o.archive_dir, dst, sizeof(dst)) == 0) {
            PB_INFO("file archived pipeline=%s file=\"%s\" to=\"%s\"", f->pipeline, c->path, dst);
            return;
        }
        break;
    case AFTER_DELETE:
        if (unlink(c->path) == 0 || errno == ENOENT) {
            fsync_dir(c->path);
            return;
        }
        break;
    case AFTER_KEEP:
        remember(f, c->id);
        return;
    }
    PB_ERROR("file taken but not %s pipeline=%s file=\"%s\" error=\"%s\" (tried again; its "
             "records are committed)",
             f->o.after == AFTER_ARCHIVE ? "archived" : "deleted", f->pipeline, c->path,
             strerror(errno));
    s = seen_get(f, c->id, true);
    if (s) {
        s->moved_fail = true;
        s->retry_at = pb_now_ms() + RETRY_MS;
    }
}

static void take_done_cb(void *arg, enum fe_end end, const struct fe_report *rep)
{
    struct in_file *f = arg;
    struct cand c = f->cur;
    memset(&f->cur, 0, sizeof(f->cur));
    f->taking = false;
    struct seen *s;
    switch (end) {
    case FE_DONE:
        if (!f->stopped)
            after_done(f, &c);
        once_mark(f, c.path, false);
        break;
    case FE_FAILED:
        if (f->o.error_dir && to_error_dir(f, c.path, rep, c.size) == 0) {
            PB_WARN("file moved to error_dir pipeline=%s file=\"%s\" line=%lld column=%lld "
                    "reason=\"%s\"",
                    f->pipeline, c.path, (long long)rep->line, (long long)rep->col, rep->reason);
        } else {
            if (f->o.error_dir)
                PB_ERROR("file: cannot move to error_dir pipeline=%s file=\"%s\" error=\"%s\"",
                         f->pipeline, c.path, strerror(errno));
            remember(f, c.id);
        }
        once_mark(f, c.path, true);
        break;
    case FE_RETRY:
        PB_WARN("file not taken now pipeline=%s file=\"%s\" reason=\"%s\" (tried again)",
                f->pipeline, c.path, rep->reason);
        s = seen_get(f, c.id, true);
        if (s)
            s->retry_at = pb_now_ms() + RETRY_MS;
        break;
    case FE_STOPPED:
        break;
    }
    cand_free(&c);
    report_progress(f);
    pb_input_set_position(f->in, NULL);
    if (!f->stopped)
        arm_scan(f, 0);
}

static void take(struct in_file *f, struct cand *c)
{
    char *meta = NULL, mt[40], num[64], b[PATH_MAX];
    size_t n = 0, cap = 0;
    file_rfc3339(c->mtime_ms, mt, sizeof(mt));
    snprintf(b, sizeof(b), "%s", c->path);
    int rc = buf_append(&meta, &n, &cap, "\"file\":", 7);
    if (rc == 0)
        rc = json_text_append(&meta, &n, &cap, c->path);
    if (rc == 0)
        rc = buf_append(&meta, &n, &cap, ",\"name\":", 8);
    if (rc == 0)
        rc = json_text_append(&meta, &n, &cap, basename(b));
    snprintf(num, sizeof(num), ",\"size\":%lld,\"modified_at\":", (long long)c->size);
    if (rc == 0)
        rc = buf_append(&meta, &n, &cap, num, strlen(num));
    if (rc == 0)
        rc = json_text_append(&meta, &n, &cap, mt);
    struct fe_file ff = {
        .path = c->path, .id = c->id, .meta = meta, .display = c->path, .size = c->size};
    if (rc == 0)
        rc = fe_take(f->fe, &ff, take_done_cb, f);
    free(meta);
    if (rc == 0) {
        f->cur = *c;
        c->path = NULL;
        f->taking = true;
        char pos[PATH_MAX + 16];
        snprintf(pos, sizeof(pos), "%s", f->cur.path);
        pb_input_set_position(f->in, pos);
        return;
    }
    if (rc == PB_ENOTFOUND) {
        once_mark(f, c->path, false); /* gone meanwhile */
        arm_scan(f, 0);
        return;
    }
    PB_WARN("file cannot be opened pipeline=%s file=\"%s\" error=\"%s\" (tried again)", f->pipeline,
            c->path, pb_strerror(rc));
    struct seen *s = seen_get(f, c->id, true);
    if (s)
        s->retry_at = pb_now_ms() + RETRY_MS;
    arm_scan(f, RETRY_MS);
}

static void finish_once(struct in_file *f)
{
    report_progress(f);
    pb_input_finished(f->in);
}

static void scan(struct in_file *f)
{
    struct cand *c = NULL;
    size_t n = 0;
    int64_t now = pb_now_ms(), wake = -1;
    if (f->stopped || f->taking || f->keeping)
        return;
    watch_dirs(f);
    list_files(f, &c, &n);
    if (f->once && !f->listed) {
        /* The files there now are the run's. */
        for (size_t i = 0; i < n; i++) {
            if (fe_kept(f->fe, c[i].id))
                continue;
            struct once *o = calloc(1, sizeof(*o));
            if (!o || smap_put(&f->run, c[i].path, o) != 0) {
                free(o);
                smap_free(&f->run, free);
                arm_scan(f, RETRY_MS);
                goto out;
            }
        }
        f->listed = true;
        f->prog.files_total = (int64_t)f->run.n;
        PB_INFO("file: taking the files there (--once) pipeline=%s files=%zu", f->pipeline,
                f->run.n);
    }
    SMAP_EACH(&f->seen, i)
    ((struct seen *)f->seen.vals[i])->mark = false;
    struct cand *pick = NULL;
    size_t waiting = 0;
    for (size_t i = 0; i < n; i++) {
        struct seen *s = seen_get(f, c[i].id, true);
        if (!s)
            continue;
        s->mark = true;
        if (!s->first_ms)
            s->first_ms = now;
        if (f->once) {
            struct once *o = smap_get(&f->run, c[i].path);
            if (!o || o->done)
                continue;
        }
        if (fe_kept(f->fe, c[i].id) || s->failed) {
            once_mark(f, c[i].path, s->failed);
            continue;
        }
        if (s->retry_at > now) {
            wake = wake < 0 || s->retry_at - now < wake ? s->retry_at - now : wake;
            waiting++;
            continue;
        }
        if (s->moved_fail) {
            /* Its records are committed: only the move is tried again. */
            s->moved_fail = false;
            after_done(f, &c[i]);
            if (!s->moved_fail)
                once_mark(f, c[i].path, false);
            continue;
        }
        int64_t left;
        if (!file_ready(now, c[i].mtime_ms, s->first_ms, f->o.min_age_ms, 0, &left)) {
            wake = wake < 0 || left < wake ? left : wake;
            waiting++;
            continue;
        }
        if (!pick)
            pick = &c[i];
        else
            waiting++;
    }
    /* Forget what is no longer there. */
    struct smap keep = {0};
    bool ok = true;
    SMAP_EACH(&f->seen, i)
    {
        struct seen *s = f->seen.vals[i];
        if (ok && (s->mark || s->failed) && smap_put(&keep, f->seen.keys[i], s) == 0)
            f->seen.vals[i] = NULL;
        else if (ok && (s->mark || s->failed))
            ok = false;
    }
    if (ok) {
        smap_free(&f->seen, free);
        f->seen = keep;
    } else {
        /* out of memory: put back what moved, keep everything */
        SMAP_EACH(&keep, i)
        smap_put(&f->seen, keep.keys[i], keep.vals[i]);
        smap_free(&keep, NULL);
    }
    if (f->once) {
        /* Files of the run that are gone count as done. */
        struct smap here = {0};
        for (size_t i = 0; i < n; i++)
            smap_put(&here, c[i].path, f);
        SMAP_EACH(&f->run, i)
        {
            struct once *o = f->run.vals[i];
            if (!o->done && !smap_get(&here, f->run.keys[i])) {
                o->done = true;
                f->prog.files_done++;
            }
        }
        smap_free(&here, NULL);
    }
    pb_input_set_lag(f->in, (int64_t)waiting);
    if (pick) {
        take(f, pick);
    } else if (f->once && once_all_done(f)) {
        finish_once(f);
        goto out;
    }
    if (!f->taking) {
        int64_t next = f->once ? wake : f->o.poll_interval_ms;
        if (wake >= 0 && wake < next)
            next = wake;
        if (next >= 0)
            arm_scan(f, next + 5);
    }
    report_progress(f);
out:
    for (size_t i = 0; i < n; i++)
        cand_free(&c[i]);
    free(c);
}

static void scan_cb(struct pb_loop_timer *t, void *arg)
{
    (void)t;
    struct in_file *f = arg;
    scan(f);
    /* The poll goes on while a file is taken; its end scans again. */
    if (!f->stopped && !f->once && !pb_loop_timer_armed(f->scan_t))
        pb_loop_timer_start(f->scan_t, f->o.poll_interval_ms);
}

static void ino_cb(struct pb_loop_watch *w, int fd, unsigned events, void *arg)
{
    struct in_file *f = arg;
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    (void)w;
    (void)events;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0)
            break;
    }
    if (!f->taking)
        arm_scan(f, DEBOUNCE_MS);
}

/* ---- life cycle ---------------------------------------------------------------------------- */

static int file_start(void *ctx, struct pb_input *in, struct pb_err *err)
{
    struct in_file *f = ctx;
    char rp[PATH_MAX];
    f->in = in;
    f->loop = pb_input_loop(in);
    if (f->o.archive_dir) {
        if (mkdirs(f->o.archive_dir) != 0)
            return pb_err_set(err, PB_EIO, "cannot make archive_dir %s: %s", f->o.archive_dir,
                              strerror(errno));
        if (realpath(f->o.archive_dir, rp) && !f->archive_real)
            f->archive_real = strdup(rp);
    }
    if (f->o.error_dir) {
        if (mkdirs(f->o.error_dir) != 0)
            return pb_err_set(err, PB_EIO, "cannot make error_dir %s: %s", f->o.error_dir,
                              strerror(errno));
        if (realpath(f->o.error_dir, rp) && !f->error_real)
            f->error_real = strdup(rp);
    }
    if (fe_start(f->fe, in) != 0)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    f->scan_t = pb_loop_timer_create(f->loop, scan_cb, f);
    if (!f->scan_t)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    if (f->o.watch && !f->once) {
        f->ino = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        f->ino_open = f->ino >= 0;
        if (f->ino < 0) {
            PB_WARN("file: no inotify, polling only pipeline=%s error=\"%s\" poll_interval_ms=%lld",
                    f->pipeline, strerror(errno), (long long)f->o.poll_interval_ms);
        } else {
            f->ino_w = pb_loop_watch_add(f->loop, f->ino, PB_LOOP_READ, ino_cb, f);
            if (!f->ino_w) {
                close(f->ino);
                f->ino_open = false;
            }
        }
    }
    pb_input_set_progress(in, &f->prog);
    pb_loop_timer_start(f->scan_t, 0);
    return 0;
}

static void file_pause(void *ctx)
{
    struct in_file *f = ctx;
    fe_pause(f->fe);
}

static void file_resume(void *ctx)
{
    struct in_file *f = ctx;
    fe_resume(f->fe);
}

static void file_stop(void *ctx)
{
    struct in_file *f = ctx;
    f->stopped = true;
    fe_stop(f->fe);
    pb_loop_timer_destroy(f->scan_t);
    f->scan_t = NULL;
    pb_loop_watch_remove(f->ino_w);
    f->ino_w = NULL;
    if (f->ino_open)
        close(f->ino);
    f->ino_open = false;
}

static void file_destroy(void *ctx)
{
    struct in_file *f = ctx;
    fe_destroy(f->fe);
    f->fe = NULL;
    cand_free(&f->cur);
    if (f->ino_open)
        close(f->ino);
    f->ino_open = false;
    free(f->archive_real);
    free(f->error_real);
    smap_free(&f->seen, free);
    smap_free(&f->run, free);
}

const struct pb_input_plugin pb_in_file = {
    .name = "file",
    .fields = file_fields,
    .ctx_size = sizeof(struct in_file),
    .flags = PB_INPUT_OWN_THREAD | PB_INPUT_SINGLETON | PB_INPUT_CAN_FINISH,
    .init = file_init,
    .start = file_start,
    .stop = file_stop,
    .pause = file_pause,
    .resume = file_resume,
    .destroy = file_destroy,
};
