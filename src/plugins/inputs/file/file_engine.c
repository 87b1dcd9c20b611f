/* file_engine.c - takes one file at a time into the state store, for the
 * `file` and `sftp` inputs.
 *
 * A file is read twice. The first pass hashes it (SHA-256: the file's
 * digest) and checks every record, so a file that cannot be taken is known
 * before anything of it is committed ("nothing half-taken"). The second
 * pass submits the records in batches of `batch`, each record a message
 * whose idempotency key is "<digest>:<record number>", each batch with the
 * checkpoint "cur" = the file's identity, digest and last record, committed
 * in the same transaction. Only one batch is in flight at a time, so the
 * checkpoint never runs ahead of what is committed: a restart reads it and
 * goes on after that record (and a repeat would be dropped by its key
 * anyway). The plugin is told the file is done only once its last record is
 * committed; then it archives, deletes or keeps it.
 *
 * Both passes stream through the reader's buffer and one batch: memory is
 * bounded whatever the file's size. Work is done in slices on the input's
 * loop (a timer), so pause, stop and submit callbacks are taken between
 * slices; under back-pressure (submit says PB_EFULL) the batch waits for
 * resume.
 *
 * Loop thread only. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file_int.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_loop.h"
#include "patchbay/pb_time.h"

#define SLICE_RECORDS 4000            /* records per slice of work */
#define SLICE_BYTES (8 * 1024 * 1024) /* bytes per slice of pass 1 */
#define BATCH_BYTES (8 * 1024 * 1024) /* a batch is submitted once this large */
#define RETRY_MS 1000

enum phase { PH_IDLE = 0, PH_PASS1, PH_PASS2 };

struct ent {
    size_t body, blen, meta, mlen, key, reason; /* offsets into the arena */
    bool dead;
};

struct batch {
    struct fe *e;
    char *arena;
    size_t an, acap;
    struct ent *ents;
    size_t n, cap;
    int64_t bytes;
    int64_t last; /* the last record number in it */
    int64_t dead;
    int64_t made_us; /* when its first record was read */
};

struct fe {
    const struct file_opts *o;
    struct rd_opts ro;
    char pipeline[128];
    struct pb_input *in;
    struct pb_loop_timer *timer;
    bool paused, stopping;
    /* the checkpoint "cur" as last committed */
    char *cur_id;
    char cur_digest[FILE_DIGEST_HEX];
    int64_t cur_rec;
    /* ids remembered in the checkpoint "kept" (values unused) */
    struct smap kept;
    bool keeping; /* a keep commit is in flight */
    /* the file under way */
    struct {
        enum phase ph;
        char *path, *id, *meta, *display;
        int64_t size;
        int fd;
        struct rd *rd;
        int64_t rec;  /* records read in this pass */
        int64_t skip; /* records up to this one are committed already */
        int64_t committed;
        int64_t bad; /* bad records seen in pass 1 */
        char digest[FILE_DIGEST_HEX];
        bool eof;
        struct batch *fill;   /* being made */
        struct batch *flight; /* submitted; its callback has not run */
        fe_done_cb done;
        void *arg;
        /* An end decided while a batch was in flight waits for its callback. */
        bool deferred;
        enum fe_end defer_end;
        struct fe_report defer_rep;
    } j;
    struct fe_counts counts;
};

static void step(struct fe *e);

static void timer_cb(struct pb_loop_timer *t, void *arg)
{
    (void)t;
    step(arg);
}

struct fe *fe_create(const struct file_opts *o, const char *pipeline, struct pb_err *err)
{
    struct fe *e = calloc(1, sizeof(*e));
    if (!e) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    e->o = o;
    snprintf(e->pipeline, sizeof(e->pipeline), "%s", pipeline);
    e->ro = (struct rd_opts){
        .format = o->format,
        .max_record = (size_t)o->max_record,
        .header = o->csv.header,
        .delimiter = o->csv.delimiter ? o->csv.delimiter[0] : ',',
        .quote = o->csv.quote ? o->csv.quote[0] : '"',
        .columns = &o->csv.columns,
        .record = o->xml.record,
        .max_depth = (int)o->xml.max_depth,
        .arrays = &o->xml.arrays,
        .split = o->json.split,
    };
    e->j.fd = -1;
    return e;
}

static void batch_free(struct batch *b)
{
    if (!b)
        return;
    free(b->arena);
    free(b->ents);
    free(b);
}

static void job_clear(struct fe *e)
{
    rd_destroy(e->j.rd);
    if (e->j.fd >= 0)
        close(e->j.fd);
    free(e->j.path);
    free(e->j.id);
    free(e->j.meta);
    free(e->j.display);
    batch_free(e->j.fill);
    /* a batch in flight is freed by its callback */
    memset(&e->j, 0, sizeof(e->j));
    e->j.fd = -1;
}

void fe_destroy(struct fe *e)
{
    if (!e)
        return;
    pb_loop_timer_destroy(e->timer);
    if (e->j.flight)
        e->j.flight->e = NULL; /* its callback frees it */
    job_clear(e);
    free(e->cur_id);
    smap_free(&e->kept, NULL);
    free(e);
}

/* ---- checkpoints ----------------------------------------------------------------------------- */

static void cur_parse(struct fe *e, const char *v, size_t len)
{
    /* "1\t<digest>\t<record>\t<id>" */
    char *s = strndup(v, len);
    if (!s)
        return;
    char *save = NULL;
    char *ver = strtok_r(s, "\t", &save);
    char *dg = strtok_r(NULL, "\t", &save);
    char *rec = strtok_r(NULL, "\t", &save);
    char *id = strtok_r(NULL, "", &save);
    if (ver && strcmp(ver, "1") == 0 && dg && strlen(dg) == 64 && rec && id) {
        snprintf(e->cur_digest, sizeof(e->cur_digest), "%s", dg);
        e->cur_rec = strtoll(rec, NULL, 10);
        free(e->cur_id);
        e->cur_id = strdup(id);
    }
    free(s);
}

static int kept_parse(struct fe *e, const char *v, size_t len)
{
    const char *p = v, *end = v + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (n) {
            char *id = strndup(p, n);
            int rc = id ? smap_put(&e->kept, id, e) : PB_ENOMEM;
            free(id);
            if (rc)
                return rc;
        }
        p += n + 1;
    }
    return 0;
}

int fe_start(struct fe *e, struct pb_input *in)
{
    const void *v;
    size_t len;
    e->in = in;
    if (pb_input_checkpoint(in, "cur", &v, &len) == 0)
        cur_parse(e, v, len);
    if (pb_input_checkpoint(in, "kept", &v, &len) == 0 && kept_parse(e, v, len) != 0)
        return PB_ENOMEM;
    e->timer = pb_loop_timer_create(pb_input_loop(in), timer_cb, e);
    return e->timer ? 0 : PB_ENOMEM;
}

bool fe_kept(const struct fe *e, const char *id)
{
    return smap_get(&e->kept, id) != NULL;
}

struct keep_op {
    struct fe *e;
    char **ids; /* the list as committed by this op */
    size_t n;
    void (*done)(void *arg, int status);
    void *arg;
};

static void keep_cb(void *arg, int status, const struct pb_item_result *res, size_t n)
{
    struct keep_op *k = arg;
    (void)res;
    (void)n;
    struct fe *e = k->e;
    e->keeping = false;
    if (status == 0) {
        struct smap m = {0};
        bool ok = true;
        for (size_t i = 0; i < k->n && ok; i++)
            ok = smap_put(&m, k->ids[i], e) == 0;
        if (ok) {
            smap_free(&e->kept, NULL);
            e->kept = m;
        } else {
            smap_free(&m, NULL); /* the old list stays: at worst a file is read again */
        }
    }
    for (size_t i = 0; i < k->n; i++)
        free(k->ids[i]);
    free(k->ids);
    if (k->done)
        k->done(k->arg, status);
    free(k);
}

int fe_keep(struct fe *e, const char *id, bool (*present)(void *arg, const char *id), void *parg,
            void (*done)(void *arg, int status), void *arg)
{
    if (e->keeping)
        return PB_EAGAIN;
    struct keep_op *k = calloc(1, sizeof(*k));
    char *val = NULL;
    size_t vn = 0, vcap = 0;
    int rc = PB_ENOMEM;
    if (!k)
        return PB_ENOMEM;
    k->e = e;
    k->done = done;
    k->arg = arg;
    k->ids = calloc(e->kept.n + 1, sizeof(*k->ids));
    if (!k->ids)
        goto out;
    SMAP_EACH(&e->kept, i)
    {
        const char *old = e->kept.keys[i];
        if (strcmp(old, id) == 0 || (present && !present(parg, old)))
            continue;
        if (!(k->ids[k->n] = strdup(old)))
            goto out;
        k->n++;
    }
    if (!(k->ids[k->n] = strdup(id)))
        goto out;
    k->n++;
    for (size_t i = 0; i < k->n; i++)
        if (buf_append(&val, &vn, &vcap, k->ids[i], strlen(k->ids[i])) != 0 ||
            buf_append(&val, &vn, &vcap, "\n", 1) != 0)
            goto out;
    struct pb_checkpoint cp = {.name = "kept", .value = val, .len = vn};
    rc = pb_input_submit(e->in, NULL, 0, &cp, 1, keep_cb, k);
    if (rc == 0) {
        e->keeping = true;
        k = NULL;
    }
out:
    free(val);
    if (k) {
        for (size_t i = 0; i < k->n; i++)
            free(k->ids[i]);
        free(k->ids);
        free(k);
    }
    return rc;
}

/* ---- a file --------------------------------------------------------------------------------- */

bool fe_busy(const struct fe *e)
{
    return e->j.ph != PH_IDLE;
}

void fe_counts(const struct fe *e, struct fe_counts *c)
{
    *c = e->counts;
}

static void arm(struct fe *e, int64_t ms)
{
    if (e->timer)
        pb_loop_timer_start(e->timer, ms);
}

static int open_reader(struct fe *e, struct pb_err *err)
{
    rd_destroy(e->j.rd);
    e->j.rd = NULL;
    if (lseek(e->j.fd, 0, SEEK_SET) != 0)
        return pb_err_set(err, PB_EIO, "cannot read %s: %s", e->j.display, strerror(errno));
    e->j.rd = rd_create(&e->ro, e->j.fd, true, err);
    e->j.rec = 0;
    e->j.eof = false;
    return e->j.rd ? 0 : (err->code ? err->code : PB_ENOMEM);
}

int fe_take(struct fe *e, const struct fe_file *f, fe_done_cb done, void *arg)
{
    struct pb_err err = {0};
    if (e->j.ph != PH_IDLE || e->j.flight)
        return PB_EAGAIN;
    job_clear(e);
    e->j.path = strdup(f->path);
    e->j.id = strdup(f->id);
    e->j.meta = strdup(f->meta ? f->meta : "");
    e->j.display = strdup(f->display ? f->display : f->path);
    if (!e->j.path || !e->j.id || !e->j.meta || !e->j.display) {
        job_clear(e);
        return PB_ENOMEM;
    }
    e->j.size = f->size;
    e->j.done = done;
    e->j.arg = arg;
    e->j.fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (e->j.fd < 0) {
        int rc = errno == ENOENT ? PB_ENOTFOUND : PB_EIO;
        job_clear(e);
        return rc;
    }
    if (open_reader(e, &err) != 0) {
        job_clear(e);
        return err.code ? err.code : PB_ENOMEM;
    }
    e->j.ph = PH_PASS1;
    arm(e, 0);
    return 0;
}

/* End the file under way: the plugin's callback, then idle. With a batch
 * in flight the end waits for its callback. */
static void finish(struct fe *e, enum fe_end end, const struct fe_report *rep)
{
    if (e->j.flight) {
        if (!e->j.deferred) {
            e->j.deferred = true;
            e->j.defer_end = end;
            if (rep)
                e->j.defer_rep = *rep;
        }
        return;
    }
    fe_done_cb done = e->j.done;
    void *arg = e->j.arg;
    struct fe_report r;
    if (rep)
        r = *rep;
    else
        memset(&r, 0, sizeof(r));
    if (!r.digest[0])
        snprintf(r.digest, sizeof(r.digest), "%s", e->j.digest);
    job_clear(e);
    if (done)
        done(arg, end, &r);
}

static void fail(struct fe *e, int64_t line, int64_t col, int64_t record, const char *reason)
{
    struct fe_report rep = {.line = line, .col = col, .record = record};
    /* The report names the file's digest too: hash what is left of it. */
    if (e->j.ph == PH_PASS1 && e->j.rd && rd_digest(e->j.rd, rep.digest) != 0)
        rep.digest[0] = 0;
    snprintf(rep.reason, sizeof(rep.reason), "%s", reason);
    PB_WARN("file cannot be taken pipeline=%s file=\"%s\" line=%lld column=%lld reason=\"%s\"",
            e->pipeline, e->j.display, (long long)line, (long long)col, reason);
    finish(e, FE_FAILED, &rep);
}

static void retry_later(struct fe *e, const char *why)
{
    struct fe_report rep = {0};
    snprintf(rep.reason, sizeof(rep.reason), "%.300s", why);
    finish(e, FE_RETRY, &rep);
}

static void pass1(struct fe *e)
{
    struct rd_rec rec;
    struct rd_fatal f;
    int64_t start = rd_bytes(e->j.rd);
    for (int k = 0; k < SLICE_RECORDS && rd_bytes(e->j.rd) - start < SLICE_BYTES; k++) {
        int rc = rd_next(e->j.rd, &rec, &f);
        if (rc == 1) {
            e->j.rec++;
            if (rec.bad) {
                e->j.bad++;
                if (e->o->on_bad_record == BAD_FAIL) {
                    fail(e, rec.bad_line, rec.bad_col, e->j.rec, rec.bad);
                    return;
                }
            }
            continue;
        }
        if (rc == PB_EPARSE) {
            fail(e, f.line, f.col, 0, f.reason);
            return;
        }
        if (rc < 0) {
            char why[300];
            snprintf(why, sizeof(why), "read error: %s", pb_strerror(rc));
            retry_later(e, why);
            return;
        }
        /* The end: the digest decides where the second pass starts. */
        if (rd_digest(e->j.rd, e->j.digest) != 0) {
            retry_later(e, "read error");
            return;
        }
        e->j.skip = 0;
        if (e->cur_id && strcmp(e->cur_id, e->j.id) == 0 &&
            strcmp(e->cur_digest, e->j.digest) == 0) {
            e->j.skip = e->cur_rec;
            if (e->j.skip > 0)
                PB_INFO("file resumed pipeline=%s file=\"%s\" after_record=%lld", e->pipeline,
                        e->j.display, (long long)e->j.skip);
        }
        e->j.committed = e->j.skip;
        struct pb_err err = {0};
        if (open_reader(e, &err) != 0) {
            retry_later(e, err.msg);
            return;
        }
        e->j.ph = PH_PASS2;
        break;
    }
    arm(e, 0);
}

/* ---- batches ----------------------------------------------------------------------------------
 */

/* Append len bytes and a NUL to the arena; *off where they start. */
static int arena_put(struct batch *b, const void *p, size_t len, size_t *off)
{
    *off = b->an;
    int rc = buf_append(&b->arena, &b->an, &b->acap, p, len);
    if (rc == 0)
        b->an++; /* keep the NUL */
    return rc;
}

static int arena_printf(struct batch *b, size_t *off, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int arena_printf(struct batch *b, size_t *off, size_t *len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return PB_EINVAL;
    char *t = malloc((size_t)n + 1);
    if (!t)
        return PB_ENOMEM;
    va_start(ap, fmt);
    vsnprintf(t, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = arena_put(b, t, (size_t)n, off);
    free(t);
    if (len)
        *len = (size_t)n;
    return rc;
}

/* Add record number no (rec) to the batch being made. */
static int batch_add(struct fe *e, const struct rd_rec *rec, int64_t no)
{
    struct batch *b = e->j.fill;
    int rc;
    if (!b) {
        b = calloc(1, sizeof(*b));
        if (!b)
            return PB_ENOMEM;
        b->e = e;
        b->made_us = pb_mono_us();
        e->j.fill = b;
    }
    if (b->n == b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 64;
        struct ent *n = realloc(b->ents, nc * sizeof(*n));
        if (!n)
            return PB_ENOMEM;
        b->ents = n;
        b->cap = nc;
    }
    struct ent *t = &b->ents[b->n];
    memset(t, 0, sizeof(*t));
    if (rec->bad) {
        /* The record as it is in the file, for the dead-letter queue. */
        int64_t len = rec->end > rec->start ? rec->end - rec->start : 0;
        if (len > (int64_t)e->o->max_record)
            len = (int64_t)e->o->max_record;
        char *raw = malloc((size_t)len + 1);
        if (!raw)
            return PB_ENOMEM;
        ssize_t got = len > 0 ? pread(e->j.fd, raw, (size_t)len, rec->start) : 0;
        if (got < 0)
            got = 0;
        rc = arena_put(b, raw, (size_t)got, &t->body);
        free(raw);
        if (rc)
            return rc;
        t->blen = (size_t)got;
        t->dead = true;
        if ((rc = arena_printf(b, &t->reason, NULL, "line %lld, column %lld: %s",
                               (long long)rec->bad_line, (long long)rec->bad_col, rec->bad)) != 0)
            return rc;
        b->dead++;
    } else {
        if ((rc = arena_put(b, rec->body, rec->len, &t->body)) != 0)
            return rc;
        t->blen = rec->len;
    }
    /* $meta: the plugin's members, then the digest, record and line. */
    if ((rc = arena_printf(b, &t->meta, &t->mlen,
                           "{%s%s\"digest\":\"%s\",\"record\":%lld,\"line\":%lld}", e->j.meta,
                           e->j.meta[0] ? "," : "", e->j.digest, (long long)no,
                           (long long)rec->line)) != 0)
        return rc;
    if ((rc = arena_printf(b, &t->key, NULL, "%s:%lld", e->j.digest, (long long)no)) != 0)
        return rc;
    b->n++;
    b->bytes += (int64_t)(t->blen + t->mlen);
    b->last = no;
    return 0;
}

static bool batch_full(const struct fe *e)
{
    const struct batch *b = e->j.fill;
    return b && (b->n >= (size_t)e->o->batch || b->bytes >= BATCH_BYTES);
}

static void submit_cb(void *arg, int status, const struct pb_item_result *res, size_t n)
{
    struct batch *b = arg;
    struct fe *e = b->e;
    (void)res;
    if (!e) {
        batch_free(b);
        return;
    }
    e->j.flight = NULL;
    if (e->j.deferred) {
        if (status == 0) {
            e->counts.records += (int64_t)n;
            e->counts.dead += b->dead;
        }
        batch_free(b);
        struct fe_report rep = e->j.defer_rep;
        finish(e, e->j.defer_end, &rep);
        return;
    }
    if (status == 0) {
        pb_input_observe_latency(e->in, pb_mono_us() - b->made_us);
        e->j.committed = b->last;
        e->counts.records += (int64_t)n;
        e->counts.dead += b->dead;
        free(e->cur_id);
        e->cur_id = strdup(e->j.id ? e->j.id : "");
        snprintf(e->cur_digest, sizeof(e->cur_digest), "%s", e->j.digest);
        e->cur_rec = b->last;
        batch_free(b);
        arm(e, 0);
        return;
    }
    /* Nothing of it was stored: read again from the last committed record. */
    PB_WARN("file batch not committed pipeline=%s file=\"%s\" error=\"%s\" (read again from "
            "record %lld)",
            e->pipeline, e->j.display ? e->j.display : "", pb_strerror(status),
            (long long)e->j.committed);
    batch_free(b);
    batch_free(e->j.fill);
    e->j.fill = NULL;
    if (e->j.ph == PH_PASS2) {
        struct pb_err err = {0};
        e->j.skip = e->j.committed;
        if (open_reader(e, &err) != 0) {
            retry_later(e, err.msg);
            return;
        }
    }
    arm(e, RETRY_MS);
}

/* Submit the batch being made: 0 (in flight), PB_EFULL (wait for resume),
 * or another error. */
static int submit(struct fe *e)
{
    struct batch *b = e->j.fill;
    char ck[FILE_DIGEST_HEX + 32 + 512];
    int cl = snprintf(ck, sizeof(ck), "1\t%s\t%lld\t%s", e->j.digest, (long long)b->last, e->j.id);
    if (cl < 0 || (size_t)cl >= sizeof(ck))
        return PB_EINVAL;
    const char *ctype = e->o->format == FMT_RAW ? e->o->content_type : NULL;
    struct pb_item *items = calloc(b->n, sizeof(*items));
    if (!items)
        return PB_ENOMEM;
    for (size_t i = 0; i < b->n; i++) {
        const struct ent *t = &b->ents[i];
        items[i] = (struct pb_item){
            .body = b->arena + t->body,
            .len = t->blen,
            .content_type = ctype,
            .meta = b->arena + t->meta,
            .meta_len = t->mlen,
            .key = b->arena + t->key,
            .key_window_ms = e->o->idempotency_window_ms,
            .dead_reason = t->dead ? b->arena + t->reason : NULL,
        };
    }
    struct pb_checkpoint cp = {.name = "cur", .value = ck, .len = (size_t)cl};
    int rc = pb_input_submit(e->in, items, b->n, &cp, 1, submit_cb, b);
    free(items);
    if (rc == 0) {
        pb_input_count_received(e->in, b->n);
        e->j.flight = b;
        e->j.fill = NULL;
    }
    return rc;
}

static void pass2(struct fe *e)
{
    struct rd_rec rec;
    struct rd_fatal f;
    int rc;
    for (int k = 0; k < SLICE_RECORDS && !e->j.eof && !batch_full(e); k++) {
        rc = rd_next(e->j.rd, &rec, &f);
        if (rc == 1) {
            int64_t no = ++e->j.rec;
            if (no <= e->j.skip)
                continue;
            if (rec.bad && e->o->on_bad_record == BAD_FAIL) {
                /* Pass 1 found none: the file changed under us. */
                retry_later(e, "the file changed while it was read");
                return;
            }
            if ((rc = batch_add(e, &rec, no)) != 0) {
                retry_later(e, "out of memory");
                return;
            }
            continue;
        }
        if (rc == 0) {
            char dg[FILE_DIGEST_HEX];
            if (rd_digest(e->j.rd, dg) != 0 || strcmp(dg, e->j.digest) != 0) {
                retry_later(e, "the file changed while it was read");
                return;
            }
            e->j.eof = true;
            break;
        }
        /* Pass 1 read it all: a fatal problem now means it changed. */
        retry_later(e, rc == PB_EPARSE ? "the file changed while it was read" : "read error");
        return;
    }
    if (e->j.flight)
        return; /* its callback steps again */
    if (e->j.fill && (batch_full(e) || e->j.eof)) {
        if (e->paused)
            return;
        rc = submit(e);
        if (rc == PB_EFULL) {
            e->paused = true; /* the core pauses, then resumes, the input */
            return;
        }
        if (rc == PB_ESHUTDOWN) {
            finish(e, FE_STOPPED, NULL);
            return;
        }
        if (rc != 0) {
            arm(e, RETRY_MS);
            return;
        }
        if (!e->j.eof)
            arm(e, 0); /* make the next batch while this one commits */
        return;
    }
    if (e->j.eof && !e->j.fill) {
        PB_INFO("file taken pipeline=%s file=\"%s\" records=%lld digest=%.16s", e->pipeline,
                e->j.display, (long long)e->j.rec, e->j.digest);
        finish(e, FE_DONE, NULL);
        return;
    }
    arm(e, 0);
}

static void step(struct fe *e)
{
    if (e->j.ph == PH_IDLE || e->j.deferred)
        return;
    if (e->stopping) {
        if (!e->j.flight)
            finish(e, FE_STOPPED, NULL);
        return;
    }
    if (e->j.ph == PH_PASS1)
        pass1(e);
    else if (!e->paused)
        pass2(e);
}

void fe_pause(struct fe *e)
{
    e->paused = true;
}

void fe_resume(struct fe *e)
{
    e->paused = false;
    if (e->j.ph != PH_IDLE)
        arm(e, 0);
}

void fe_stop(struct fe *e)
{
    e->stopping = true;
    if (e->j.ph != PH_IDLE)
        arm(e, 0);
}
