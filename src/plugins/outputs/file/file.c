/* file.c - the `file` output: deliveries written to files on local disk.
 *
 *   file: { path: '/data/out/orders-{{ $meta.pipeline }}.jsonl', format: jsonl,
 *           rotate: { size: 100MiB, interval: 1h } }
 *
 * jsonl and csv append: each batch of deliveries (deliver_batch) is one
 * write with O_APPEND per file and one fsync, and only then are its
 * deliveries delivered. A write that fails is cut back (ftruncate) so no
 * partial line stays; a partial last line left by a crash is cut when the
 * file is opened again (its deliveries were not confirmed, so they come
 * again). A CSV file gets one header, when it is empty. rotate renames the
 * current file to <name>.<UTC time><ext> once it reaches size or has been
 * written for interval, and the next delivery starts a new one. json and raw
 * write one whole file per delivery: a temporary file, fsync, rename.
 *
 * path is a template: each delivery goes to the file its message names.
 * At-least-once: a crash between the fsync and the commit of the results
 * writes those deliveries again.
 *
 * Thread model: deliver_batch runs on one worker thread of the output's
 * own (blocking file I/O); a rotation thread renames files whose interval
 * is up even when nothing is written. Both take `mu` around the open files. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "file_enc.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_plugin.h"
#include "patchbay/pb_time.h"

enum { OF_JSONL = 0, OF_CSV, OF_JSON, OF_RAW };
static const char *const formats[] = {"jsonl", "csv", "json", "raw", NULL};

struct rotate_conf {
    uint64_t size;
    int64_t interval_ms;
};
struct batch_conf {
    int64_t count;
    int64_t period_ms;
};

/* One file being appended to (under mu). */
struct ofile {
    struct ofile *next;
    char *path;
    int fd;
    int64_t size;
    int64_t opened_ms;
    int64_t used_ms;
    struct pb_strlist cols; /* csv: the file's columns once known */
};

struct out_file {
    /* options */
    char *path;
    int format;
    struct enc_csv_conf csv;
    struct rotate_conf rotate;
    struct batch_conf batch;
    char *mode;
    int64_t max_open;
    /* run time */
    int tpath;
    mode_t fmode;
    char name[200];
    pthread_mutex_t mu;
    bool mu_ready;
    struct ofile *files; /* most recently used first */
    size_t nfiles;
    pthread_t rot;
    bool rot_running, stopping;
    pthread_cond_t cv;
};

static const struct pb_field rotate_fields[] = {
    {.name = "size",
     .type = PB_F_SIZE,
     .offset = offsetof(struct rotate_conf, size),
     .def = "0",
     .doc = "start a new file once the current one is this large (0: never)"},
    {.name = "interval",
     .type = PB_F_DURATION,
     .offset = offsetof(struct rotate_conf, interval_ms),
     .def = "0",
     .doc = "start a new file once the current one has been written this long (0: never)"},
    {0},
};
static const struct pb_field batch_fields[] = {
    {.name = "count",
     .type = PB_F_INT,
     .offset = offsetof(struct batch_conf, count),
     .def = "500",
     .min = 1,
     .max = 10000,
     .doc = "deliveries per write and fsync"},
    {.name = "period",
     .type = PB_F_DURATION,
     .offset = offsetof(struct batch_conf, period_ms),
     .def = "50ms",
     .doc = "wait this long for a batch to fill"},
    {0},
};

static const struct pb_field file_fields[] = {
    {.name = "path",
     .type = PB_F_STR,
     .offset = offsetof(struct out_file, path),
     .flags = PB_FIELD_REQUIRED,
     .doc = "the file (a template: '/out/{{ $meta.pipeline }}.jsonl')"},
    {.name = "format",
     .type = PB_F_ENUM,
     .offset = offsetof(struct out_file, format),
     .choices = formats,
     .def = "jsonl",
     .doc = "jsonl, csv (appended), json or raw (a whole file per delivery)"},
    {.name = "csv",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct out_file, csv),
     .sub = enc_csv_fields},
    {.name = "rotate",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct out_file, rotate),
     .sub = rotate_fields},
    {.name = "batch",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct out_file, batch),
     .sub = batch_fields},
    {.name = "mode",
     .type = PB_F_STR,
     .offset = offsetof(struct out_file, mode),
     .def = "0640",
     .doc = "permissions of new files (octal)"},
    {.name = "max_open",
     .type = PB_F_INT,
     .offset = offsetof(struct out_file, max_open),
     .def = "64",
     .min = 1,
     .max = 4096,
     .doc = "files kept open at once (the least recently written are closed)"},
    {0},
};

static int file_init(void *ctx, struct pb_output_env *env, struct pb_err *err)
{
    struct out_file *f = ctx;
    char *end = NULL;
    long m = strtol(f->mode, &end, 8);
    if (!*f->mode || *end || m < 0 || m > 0777)
        return pb_err_set(err, PB_ECONFIG, "mode \"%s\" must be octal permissions such as 0640",
                          f->mode);
    f->fmode = (mode_t)m;
    if (strstr(f->path, "/../") || strncmp(f->path, "../", 3) == 0)
        return pb_err_set(err, PB_ECONFIG, "path must not climb with ..");
    if (f->format == OF_CSV) {
        int rc = enc_csv_conf_check(&f->csv, err);
        if (rc)
            return rc;
    }
    if ((f->format == OF_JSON || f->format == OF_RAW) && (f->rotate.size || f->rotate.interval_ms))
        return pb_err_set(
            err, PB_ECONFIG,
            "rotate applies to jsonl and csv: json and raw write a file per delivery");
    int idx = env->template_add(env, f->path, err);
    if (idx < 0)
        return idx;
    f->tpath = idx;
    snprintf(f->name, sizeof(f->name), "%s/%s", env->pipeline, env->output);
    env->batch_max = (size_t)f->batch.count;
    env->batch_period_ms = f->batch.period_ms;
    if (pthread_mutex_init(&f->mu, NULL) != 0 || pthread_cond_init(&f->cv, NULL) != 0)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    f->mu_ready = true;
    return 0;
}

/* ---- files ---------------------------------------------------------------------------------- */

static int mkdirs_for(const char *path, mode_t mode)
{
    char p[PATH_MAX];
    if (snprintf(p, sizeof(p), "%s", path) >= (int)sizeof(p))
        return -1;
    char *slash = strrchr(p, '/');
    if (!slash || slash == p)
        return 0;
    *slash = 0;
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = 0;
        if (mkdir(p, mode | 0700) != 0 && errno != EEXIST)
            return -1;
        *s = '/';
    }
    if (mkdir(p, mode | 0700) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

static void fsync_parent(const char *path)
{
    char d[PATH_MAX];
    snprintf(d, sizeof(d), "%s", path);
    int fd = open(dirname(d), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

static bool path_ok(const char *p, char *why, size_t whylen)
{
    if (!*p) {
        snprintf(why, whylen, "the path is empty");
        return false;
    }
    /* No component may be "..": a message must not pick a file outside. */
    for (const char *s = p; *s;) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 2 && s[0] == '.' && s[1] == '.') {
            snprintf(why, whylen, "the path \"%.200s\" climbs with ..", p);
            return false;
        }
        s += n;
        while (*s == '/')
            s++;
    }
    return true;
}

static void ofile_close(struct ofile *o)
{
    if (o->fd >= 0)
        close(o->fd);
    free(o->path);
    pb_strlist_free(&o->cols);
    free(o);
}

/* The name a rotated file gets: <stem>.<UTC time><ext>, unique. */
static int rotated_name(const char *path, int64_t ms, char *out, size_t len)
{
    char t[32];
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    strftime(t, sizeof(t), "%Y%m%dT%H%M%SZ", &tm);
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    const char *dot = strrchr(base, '.');
    if (dot == base)
        dot = NULL;
    size_t stem = dot ? (size_t)(dot - path) : strlen(path);
    struct stat st;
    for (int i = 0; i < 10000; i++) {
        int n = i ? snprintf(out, len, "%.*s.%s-%d%s", (int)stem, path, t, i, dot ? dot : "")
                  : snprintf(out, len, "%.*s.%s%s", (int)stem, path, t, dot ? dot : "");
        if (n < 0 || (size_t)n >= len)
            return -1;
        if (lstat(out, &st) != 0)
            return 0;
    }
    return -1;
}

/* Rename the current file away and forget it (under mu). */
static void rotate(struct out_file *f, struct ofile *o)
{
    char to[PATH_MAX + 64];
    if (rotated_name(o->path, o->opened_ms, to, sizeof(to)) == 0 && rename(o->path, to) == 0) {
        fsync_parent(o->path);
        PB_INFO("file rotated output=%s file=\"%s\" to=\"%s\" bytes=%lld", f->name, o->path, to,
                (long long)o->size);
    } else {
        PB_WARN("file not rotated output=%s file=\"%s\" error=\"%s\"", f->name, o->path,
                strerror(errno));
        return;
    }
    for (struct ofile **p = &f->files; *p; p = &(*p)->next) {
        if (*p == o) {
            *p = o->next;
            f->nfiles--;
            break;
        }
    }
    ofile_close(o);
}

static bool due(const struct out_file *f, const struct ofile *o, int64_t now)
{
    if (o->size == 0)
        return false;
    return (f->rotate.size && (uint64_t)o->size >= f->rotate.size) ||
           (f->rotate.interval_ms && now - o->opened_ms >= f->rotate.interval_ms);
}

/* A CSV file that has content: its header gives the columns. */
static void read_header(struct out_file *f, struct ofile *o)
{
    char buf[65536];
    ssize_t n = pread(o->fd, buf, sizeof(buf) - 1, 0);
    if (n <= 0)
        return;
    char *nl = memchr(buf, '\n', (size_t)n);
    if (!nl)
        return;
    struct enc_csv c = {.delimiter = f->csv.delimiter[0], .quote = f->csv.quote[0]};
    enc_csv_parse_header(&c, buf, (size_t)(nl - buf), &o->cols);
}

/* Cut a partial last line (a write that never completed: its deliveries
 * were not confirmed and come again). */
static void cut_partial(struct out_file *f, struct ofile *o)
{
    if (o->size == 0)
        return;
    char buf[65536];
    int64_t end = o->size;
    while (end > 0) {
        size_t k = end > (int64_t)sizeof(buf) ? sizeof(buf) : (size_t)end;
        ssize_t n = pread(o->fd, buf, k, end - (int64_t)k);
        if (n != (ssize_t)k)
            return;
        if (end == o->size && buf[k - 1] == '\n')
            return; /* complete */
        for (size_t i = k; i > 0; i--) {
            if (buf[i - 1] == '\n') {
                int64_t keep = end - (int64_t)k + (int64_t)i;
                if (ftruncate(o->fd, keep) == 0) {
                    PB_WARN("file: a partial last line cut output=%s file=\"%s\" bytes=%lld",
                            f->name, o->path, (long long)(o->size - keep));
                    o->size = keep;
                    fsync(o->fd);
                }
                return;
            }
        }
        end -= (int64_t)k;
    }
    if (ftruncate(o->fd, 0) == 0)
        o->size = 0;
}

/* The open file for path, rotated first when due (under mu). */
static struct ofile *get_file(struct out_file *f, const char *path, int64_t now, char *why,
                              size_t whylen)
{
    struct ofile *o = NULL, **prev = &f->files;
    for (struct ofile **p = &f->files; *p; p = &(*p)->next) {
        if (strcmp((*p)->path, path) == 0) {
            o = *p;
            prev = p;
            break;
        }
    }
    if (o && due(f, o, now)) {
        rotate(f, o);
        o = NULL;
    }
    if (o) {
        /* most recently used first */
        *prev = o->next;
        o->next = f->files;
        f->files = o;
        return o;
    }
    if (mkdirs_for(path, 0750) != 0) {
        snprintf(why, whylen, "cannot make the folder of %.200s: %s", path, strerror(errno));
        return NULL;
    }
    o = calloc(1, sizeof(*o));
    if (!o) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    o->fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, f->fmode);
    o->path = strdup(path);
    struct stat st;
    if (o->fd < 0 || !o->path || fstat(o->fd, &st) != 0) {
        snprintf(why, whylen, "cannot open %.200s: %s", path, strerror(errno));
        ofile_close(o);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(why, whylen, "%.200s is not a regular file", path);
        ofile_close(o);
        return NULL;
    }
    o->size = (int64_t)st.st_size;
    o->opened_ms = now;
    if (o->size > 0) {
        cut_partial(f, o);
        if (f->format == OF_CSV && f->csv.columns.n == 0 && f->csv.header)
            read_header(f, o);
    }
    o->next = f->files;
    f->files = o;
    f->nfiles++;
    fsync_parent(path);
    /* Close the least recently used past max_open. */
    if (f->nfiles > (size_t)f->max_open) {
        struct ofile **p = &f->files;
        while ((*p)->next)
            p = &(*p)->next;
        struct ofile *last = *p;
        *p = NULL;
        f->nfiles--;
        ofile_close(last);
    }
    return o;
}

static int write_all(int fd, const char *p, size_t len)
{
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* ---- delivering ----------------------------------------------------------------------------- */

static void done(struct pb_delivery *d, enum pb_result r, const char *error)
{
    struct pb_outcome o = {.result = r, .retry_after_ms = -1, .error = error};
    pb_delivery_done(d, &o);
}

/* json, raw: one whole file per delivery. */
static void write_whole(struct out_file *f, struct pb_delivery *d, const char *path)
{
    char why[400], tmp[PATH_MAX + 64];
    if (f->format == OF_JSON) {
        struct enc_buf b = {0};
        int rc = enc_jsonl(&b, d->payload, d->len, why, sizeof(why));
        enc_buf_free(&b);
        if (rc) {
            done(d, rc == PB_EPARSE ? PB_RESULT_PERMANENT : PB_RESULT_RETRY, why);
            return;
        }
    }
    if (mkdirs_for(path, 0750) != 0) {
        snprintf(why, sizeof(why), "cannot make the folder of %.200s: %s", path, strerror(errno));
        done(d, PB_RESULT_RETRY, why);
        return;
    }
    char dir[PATH_MAX], base[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    snprintf(base, sizeof(base), "%s", path);
    snprintf(tmp, sizeof(tmp), "%s/.%s.%016llx.tmp", dirname(dir), basename(base),
             (unsigned long long)pb_rand64());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, f->fmode);
    if (fd < 0 || write_all(fd, d->payload, d->len) != 0 || fsync(fd) != 0) {
        snprintf(why, sizeof(why), "cannot write %.200s: %s", tmp, strerror(errno));
        if (fd >= 0) {
            close(fd);
            unlink(tmp);
        }
        done(d, PB_RESULT_RETRY, why);
        return;
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        snprintf(why, sizeof(why), "cannot write %.200s: %s", path, strerror(errno));
        unlink(tmp);
        done(d, PB_RESULT_RETRY, why);
        return;
    }
    fsync_parent(path);
    done(d, PB_RESULT_OK, NULL);
}

/* jsonl, csv: the deliveries ds[0..n) going to one file, one write. */
static void append(struct out_file *f, struct pb_delivery **ds, size_t n, const char *path,
                   int64_t now)
{
    char why[400];
    struct ofile *o = get_file(f, path, now, why, sizeof(why));
    if (!o) {
        for (size_t i = 0; i < n; i++)
            done(ds[i], PB_RESULT_RETRY, why);
        return;
    }
    struct enc_buf b = {0};
    bool *in = calloc(n, sizeof(*in));
    int rc = in ? 0 : PB_ENOMEM;
    struct enc_csv c = {0};
    if (f->format == OF_CSV) {
        c.delimiter = f->csv.delimiter[0];
        c.quote = f->csv.quote[0];
        c.columns = f->csv.columns.n ? &f->csv.columns : &o->cols;
    }
    bool header = f->format == OF_CSV && f->csv.header && o->size == 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        struct pb_delivery *d = ds[i];
        size_t mark = b.n;
        if (f->format == OF_JSONL) {
            rc = enc_jsonl(&b, d->payload, d->len, why, sizeof(why));
        } else {
            if (c.columns->n == 0) {
                /* The file's first record names its columns. */
                rc = enc_csv_keys(d->payload, d->len, &o->cols, why, sizeof(why));
            }
            if (rc == 0 && header) {
                rc = enc_csv_header(&c, &b);
                header = false;
                mark = b.n;
            }
            if (rc == 0)
                rc = enc_csv_row(&c, &b, d->payload, d->len, why, sizeof(why));
        }
        if (rc == PB_EPARSE) {
            b.n = mark;
            done(d, PB_RESULT_PERMANENT, why);
            rc = 0;
            continue;
        }
        if (rc == 0)
            in[i] = true;
    }
    if (rc == 0 && b.n) {
        if (write_all(o->fd, b.p, b.n) != 0 || fsync(o->fd) != 0) {
            snprintf(why, sizeof(why), "cannot write %.200s: %s", path, strerror(errno));
            /* No partial line stays behind. */
            if (ftruncate(o->fd, o->size) != 0)
                PB_WARN("file: cannot cut back a failed write output=%s file=\"%s\"", f->name,
                        path);
            rc = PB_EIO;
        } else {
            o->size += (int64_t)b.n;
            o->used_ms = now;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (!in || !in[i])
            continue;
        done(ds[i], rc == 0 ? PB_RESULT_OK : PB_RESULT_RETRY,
             rc == 0 ? NULL : (rc == PB_ENOMEM ? "out of memory" : why));
    }
    if (!in)
        for (size_t i = 0; i < n; i++)
            done(ds[i], PB_RESULT_RETRY, "out of memory");
    free(in);
    enc_buf_free(&b);
}

static void file_deliver_batch(void *ctx, struct pb_delivery **ds, size_t n)
{
    struct out_file *f = ctx;
    struct pb_delivery **group = malloc(n * sizeof(*group));
    bool *taken = calloc(n, sizeof(*taken));
    int64_t now = pb_now_ms();
    if (!group || !taken) {
        for (size_t i = 0; i < n; i++)
            done(ds[i], PB_RESULT_RETRY, "out of memory");
        free(group);
        free(taken);
        return;
    }
    pthread_mutex_lock(&f->mu);
    for (size_t i = 0; i < n; i++) {
        if (taken[i])
            continue;
        const char *path = ds[i]->tmpl[f->tpath];
        char why[300];
        if (!path_ok(path, why, sizeof(why))) {
            taken[i] = true;
            done(ds[i], PB_RESULT_PERMANENT, why);
            continue;
        }
        /* Every delivery of this batch to the same file, in order. */
        size_t m = 0;
        for (size_t k = i; k < n; k++) {
            if (!taken[k] && strcmp(ds[k]->tmpl[f->tpath], path) == 0) {
                group[m++] = ds[k];
                taken[k] = true;
            }
        }
        if (f->format == OF_JSON || f->format == OF_RAW) {
            for (size_t k = 0; k < m; k++)
                write_whole(f, group[k], group[k]->tmpl[f->tpath]);
        } else {
            /* group[0]'s path string stays valid until it is done: copy it. */
            char p[PATH_MAX];
            snprintf(p, sizeof(p), "%s", path);
            append(f, group, m, p, now);
        }
    }
    pthread_mutex_unlock(&f->mu);
    free(group);
    free(taken);
}

/* ---- rotation on time --------------------------------------------------------------------- */

static void *rot_main(void *arg)
{
    struct out_file *f = arg;
    pthread_mutex_lock(&f->mu);
    while (!f->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&f->cv, &f->mu, &ts);
        if (f->stopping)
            break;
        int64_t now = pb_now_ms();
        for (struct ofile *o = f->files, *next; o; o = next) {
            next = o->next;
            if (f->rotate.interval_ms && due(f, o, now))
                rotate(f, o);
        }
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

static int file_start(void *ctx, struct pb_output *out, struct pb_err *err)
{
    struct out_file *f = ctx;
    (void)out;
    if (f->rotate.interval_ms && !f->rot_running) {
        f->stopping = false;
        if (pthread_create(&f->rot, NULL, rot_main, f) != 0)
            return pb_err_set(err, PB_ENOMEM, "cannot start the rotation thread");
        f->rot_running = true;
    }
    return 0;
}

static void file_stop(void *ctx)
{
    struct out_file *f = ctx;
    if (!f->mu_ready)
        return;
    pthread_mutex_lock(&f->mu);
    f->stopping = true;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    if (f->rot_running)
        pthread_join(f->rot, NULL);
    f->rot_running = false;
}

static void file_destroy(void *ctx)
{
    struct out_file *f = ctx;
    file_stop(ctx);
    while (f->files) {
        struct ofile *o = f->files;
        f->files = o->next;
        ofile_close(o);
    }
    if (f->mu_ready) {
        pthread_mutex_destroy(&f->mu);
        pthread_cond_destroy(&f->cv);
        f->mu_ready = false;
    }
}

const struct pb_output_plugin pb_out_file = {
    .name = "file",
    .fields = file_fields,
    .ctx_size = sizeof(struct out_file),
    .default_concurrency = 1000,
    .workers = 1,
    .init = file_init,
    .start = file_start,
    .deliver_batch = file_deliver_batch,
    .stop = file_stop,
    .destroy = file_destroy,
};
