/* sftp.c - the `sftp` output: deliveries written as files on an SFTP server.
 *
 *   sftp: { url: "sftp://patchbay@files.partner.example/inbox", private_key: ..., known_hosts:
 *           ..., path: 'orders-{{ $meta.received_at }}.csv', format: csv }
 *
 * Every file arrives whole: it is uploaded under a temporary name in its
 * folder (".<name>.<random>.part") and renamed once complete, so the
 * partner never reads half a file. json and raw: one file per delivery.
 * jsonl and csv: one file per batch (batch.count deliveries, waiting up to
 * batch.period) and per path the batch's messages name - a CSV file with
 * its header. A delivery is delivered once the rename is done. A name
 * already taken on the server is never overwritten: a file there with
 * exactly the same bytes is this upload's own, from an attempt whose answer
 * was lost (done); otherwise the file gets the next free name (name.1.csv).
 * A temporary file an upload left behind (the connection lost before the
 * rename) is removed on the next batch; up to MAX_ORPHANS are remembered,
 * in memory (a crash of patchbay itself can leave one on the server).
 *
 * path is a template, relative to the URL's folder. Host keys are checked
 * (sftp_curl.h); the connection goes through the outbound guard.
 *
 * Thread model: start, deliver_batch and stop run on one worker thread of
 * the output's own (libcurl blocks); the connection is that thread's. */
#include <errno.h>
#include <limits.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../inputs/sftp/sftp_curl.h"
#include "../file/file_enc.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_plugin.h"
#include "patchbay/pb_time.h"

enum { OS_JSONL = 0, OS_CSV, OS_JSON, OS_RAW };
#define MAX_ORPHANS 64
static const char *const formats[] = {"jsonl", "csv", "json", "raw", NULL};

struct batch_conf {
    int64_t count;
    int64_t period_ms;
};

struct out_sftp {
    struct sftp_conf c;
    char *path;
    int format;
    struct enc_csv_conf csv;
    struct batch_conf batch;
    /* run time: the worker thread */
    int tpath;
    const struct pb_allowlist *allow;
    struct pb_output *out;
    struct sftp *conn;
    char name[200];
    char *orphans[MAX_ORPHANS]; /* temporary files left by failed uploads */
    size_t norphans;
};

static const struct pb_field batch_fields[] = {
    {.name = "count",
     .type = PB_F_INT,
     .offset = offsetof(struct batch_conf, count),
     .def = "500",
     .min = 1,
     .max = 10000,
     .doc = "deliveries per file (jsonl, csv)"},
    {.name = "period",
     .type = PB_F_DURATION,
     .offset = offsetof(struct batch_conf, period_ms),
     .def = "1s",
     .doc = "wait this long for a batch to fill"},
    {0},
};

static const struct pb_field sftp_fields[] = {
    SFTP_CONN_FIELDS(struct out_sftp, c),
    {.name = "path",
     .type = PB_F_STR,
     .offset = offsetof(struct out_sftp, path),
     .flags = PB_FIELD_REQUIRED,
     .doc = "the file, relative to the url's folder (a template)"},
    {.name = "format",
     .type = PB_F_ENUM,
     .offset = offsetof(struct out_sftp, format),
     .choices = formats,
     .def = "jsonl",
     .doc = "jsonl, csv (a file per batch), json or raw (a file per delivery)"},
    {.name = "csv",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct out_sftp, csv),
     .sub = enc_csv_fields},
    {.name = "batch",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct out_sftp, batch),
     .sub = batch_fields},
    {0},
};

static int sftp_out_init(void *ctx, struct pb_output_env *env, struct pb_err *err)
{
    struct out_sftp *s = ctx;
    int rc = sftp_conf_check(&s->c, err);
    if (rc)
        return rc;
    if (s->format == OS_CSV && (rc = enc_csv_conf_check(&s->csv, err)) != 0)
        return rc;
    if (strstr(s->path, "..") && (strstr(s->path, "/../") || strncmp(s->path, "../", 3) == 0))
        return pb_err_set(err, PB_ECONFIG, "path must not climb with ..");
    int idx = env->template_add(env, s->path, err);
    if (idx < 0)
        return idx;
    s->tpath = idx;
    s->allow = env->allow;
    snprintf(s->name, sizeof(s->name), "%s/%s", env->pipeline, env->output);
    if (s->format == OS_JSONL || s->format == OS_CSV) {
        env->batch_max = (size_t)s->batch.count;
        env->batch_period_ms = s->batch.period_ms;
    } else {
        env->batch_max = 50;
    }
    return 0;
}

static int sftp_out_start(void *ctx, struct pb_output *out, struct pb_err *err)
{
    struct out_sftp *s = ctx;
    s->out = out;
    if (!s->conn) {
        s->conn = sftp_create(&s->c, pb_output_allow(out), err);
        if (!s->conn)
            return err->code ? err->code : PB_ENOMEM;
    }
    char why[400];
    int rc = sftp_list(s->conn, sftp_dir(s->conn), NULL, NULL, why, sizeof(why));
    if (rc == PB_ENOTFOUND)
        rc = sftp_mkdir(s->conn, sftp_dir(s->conn), why, sizeof(why));
    if (rc) {
        pb_output_set_state(out, PB_OUTPUT_RECONNECTING, why);
        return pb_err_set(err, rc, "%s", why);
    }
    pb_output_set_state(out, PB_OUTPUT_CONNECTED, NULL);
    return 0;
}

static void done(struct pb_delivery *d, enum pb_result r, const char *error)
{
    struct pb_outcome o = {.result = r, .retry_after_ms = -1, .error = error};
    pb_delivery_done(d, &o);
}

static bool path_ok(const char *p, char *why, size_t whylen)
{
    if (!*p || p[strlen(p) - 1] == '/') {
        snprintf(why, whylen, "the path \"%.200s\" names no file", p);
        return false;
    }
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

/* 1 when the remote file path holds exactly data, 0 when not, or a PB_E
 * code. */
static int same_content(struct out_sftp *s, const char *path, const void *data, size_t len,
                        char *why, size_t whylen)
{
    int fd = memfd_create("pb-sftp-compare", MFD_CLOEXEC);
    if (fd < 0) {
        snprintf(why, whylen, "cannot compare with %.200s: %s", path, strerror(errno));
        return PB_EIO;
    }
    int rc = sftp_get(s->conn, path, fd, 0, why, whylen);
    if (rc == 0) {
        char *got = malloc(len ? len : 1);
        rc = got ? 0 : PB_ENOMEM;
        if (got) {
            ssize_t n = pread(fd, got, len, 0);
            struct stat st;
            rc = n == (ssize_t)len && fstat(fd, &st) == 0 && (size_t)st.st_size == len &&
                         memcmp(got, data, len) == 0
                     ? 1
                     : 0;
            free(got);
        }
    } else if (rc == PB_ENOTFOUND) {
        rc = 0;
    }
    close(fd);
    return rc;
}

/* Upload data as rel (under the URL's folder), whole: 0, or a PB_E code
 * with why. */
static int put_whole(struct out_sftp *s, const char *rel, const void *data, size_t len, char *why,
                     size_t whylen)
{
    char full[PATH_MAX], tmp[PATH_MAX + 64], dst[PATH_MAX + 16];
    if (sftp_path(s->conn, rel, full, sizeof(full)) != 0) {
        snprintf(why, whylen, "path too long");
        return PB_ETOOBIG;
    }
    const char *slash = strrchr(full, '/');
    int dl = slash ? (int)(slash - full + 1) : 0;
    const char *base = full + dl;
    const char *dot = strrchr(base, '.');
    if (dot == base)
        dot = NULL;
    int stem = dot ? (int)(dot - base) : (int)strlen(base);
    snprintf(dst, sizeof(dst), "%s", full);
    for (int i = 1; i < 1000; i++) {
        int64_t size, mtime;
        int rc = sftp_stat(s->conn, dst, &size, &mtime, why, whylen);
        if (rc == PB_ENOTFOUND)
            break;
        if (rc)
            return rc;
        if (size == (int64_t)len) {
            rc = same_content(s, dst, data, len, why, whylen);
            if (rc < 0)
                return rc;
            if (rc == 1)
                return 0; /* written already, by an attempt whose answer was lost */
        }
        snprintf(dst, sizeof(dst), "%.*s%.*s.%d%s", dl, full, stem, base, i, dot ? dot : "");
    }
    snprintf(tmp, sizeof(tmp), "%.*s.%s.%016llx.part", dl, full, base,
             (unsigned long long)pb_rand64());
    int rc = sftp_put(s->conn, tmp, dst, data, len, why, whylen);
    if (rc && s->norphans < MAX_ORPHANS) {
        /* The upload may have written tmp before failing. */
        char *t = strdup(tmp);
        if (t)
            s->orphans[s->norphans++] = t;
    }
    return rc;
}

/* Remove what failed uploads left; one that cannot be reached now is
 * tried again with the next batch. */
static void remove_orphans(struct out_sftp *s)
{
    size_t keep = 0;
    for (size_t i = 0; i < s->norphans; i++) {
        char why[400];
        int rc = sftp_remove(s->conn, s->orphans[i], why, sizeof(why));
        if (rc == 0 || rc == PB_ENOTFOUND || rc == PB_EIO) {
            /* PB_EIO: the server refused the rm, which is what it says of a
             * file the failed upload never made. */
            free(s->orphans[i]);
        } else if (rc == PB_ENET) {
            s->orphans[keep++] = s->orphans[i];
        } else {
            PB_WARN("cannot remove a temporary file output=%s file=\"%s\" error=\"%s\"", s->name,
                    s->orphans[i], why);
            free(s->orphans[i]);
        }
    }
    s->norphans = keep;
}

static void result_of(struct out_sftp *s, int rc, const char *why)
{
    if (rc == 0)
        pb_output_set_state(s->out, PB_OUTPUT_CONNECTED, NULL);
    else if (rc == PB_ENET || rc == PB_EDENIED)
        pb_output_set_state(s->out, PB_OUTPUT_RECONNECTING, why);
}

static void sftp_out_deliver_batch(void *ctx, struct pb_delivery **ds, size_t n)
{
    struct out_sftp *s = ctx;
    struct pb_delivery **group = malloc(n * sizeof(*group));
    bool *taken = calloc(n, sizeof(*taken));
    if (!group || !taken || !s->conn) {
        for (size_t i = 0; i < n; i++)
            done(ds[i], PB_RESULT_RETRY, "out of memory");
        free(group);
        free(taken);
        return;
    }
    if (s->norphans)
        remove_orphans(s);
    for (size_t i = 0; i < n; i++) {
        if (taken[i])
            continue;
        char why[400], path[PATH_MAX];
        snprintf(path, sizeof(path), "%s", ds[i]->tmpl[s->tpath]);
        if (!path_ok(path, why, sizeof(why))) {
            taken[i] = true;
            done(ds[i], PB_RESULT_PERMANENT, why);
            continue;
        }
        if (s->format == OS_JSON || s->format == OS_RAW) {
            taken[i] = true;
            if (s->format == OS_JSON) {
                struct enc_buf b = {0};
                int rc = enc_jsonl(&b, ds[i]->payload, ds[i]->len, why, sizeof(why));
                enc_buf_free(&b);
                if (rc) {
                    done(ds[i], PB_RESULT_PERMANENT, why);
                    continue;
                }
            }
            int rc = put_whole(s, path, ds[i]->payload, ds[i]->len, why, sizeof(why));
            result_of(s, rc, why);
            done(ds[i], rc == 0 ? PB_RESULT_OK : PB_RESULT_RETRY, rc ? why : NULL);
            continue;
        }
        size_t m = 0;
        for (size_t k = i; k < n; k++) {
            if (!taken[k] && strcmp(ds[k]->tmpl[s->tpath], path) == 0) {
                group[m++] = ds[k];
                taken[k] = true;
            }
        }
        /* One file for the group: header and rows, or lines. */
        struct enc_buf b = {0};
        struct pb_strlist cols = {0};
        struct enc_csv c = {0};
        bool *in = calloc(m, sizeof(*in));
        int rc = in ? 0 : PB_ENOMEM;
        if (s->format == OS_CSV) {
            c.delimiter = s->csv.delimiter[0];
            c.quote = s->csv.quote[0];
            c.columns = s->csv.columns.n ? &s->csv.columns : &cols;
        }
        bool header = s->format == OS_CSV && s->csv.header;
        for (size_t k = 0; rc == 0 && k < m; k++) {
            size_t mark = b.n;
            if (s->format == OS_JSONL) {
                rc = enc_jsonl(&b, group[k]->payload, group[k]->len, why, sizeof(why));
            } else {
                if (c.columns->n == 0)
                    rc = enc_csv_keys(group[k]->payload, group[k]->len, &cols, why, sizeof(why));
                if (rc == 0 && header) {
                    rc = enc_csv_header(&c, &b);
                    header = false;
                    mark = b.n;
                }
                if (rc == 0)
                    rc = enc_csv_row(&c, &b, group[k]->payload, group[k]->len, why, sizeof(why));
            }
            if (rc == PB_EPARSE) {
                b.n = mark;
                done(group[k], PB_RESULT_PERMANENT, why);
                rc = 0;
                continue;
            }
            if (rc == 0)
                in[k] = true;
        }
        bool any = false;
        for (size_t k = 0; in && k < m; k++)
            any = any || in[k];
        if (rc == 0 && any) {
            rc = put_whole(s, path, b.p, b.n, why, sizeof(why));
            result_of(s, rc, why);
        }
        for (size_t k = 0; k < m; k++) {
            if (in && !in[k])
                continue;
            done(group[k], rc == 0 ? PB_RESULT_OK : PB_RESULT_RETRY,
                 rc == 0 ? NULL : (rc == PB_ENOMEM ? "out of memory" : why));
        }
        free(in);
        enc_buf_free(&b);
        pb_strlist_free(&cols);
    }
    free(group);
    free(taken);
}

static void sftp_out_destroy(void *ctx)
{
    struct out_sftp *s = ctx;
    sftp_destroy(s->conn);
    s->conn = NULL;
    for (size_t i = 0; i < s->norphans; i++)
        free(s->orphans[i]);
    s->norphans = 0;
}

const struct pb_output_plugin pb_out_sftp = {
    .name = "sftp",
    .fields = sftp_fields,
    .ctx_size = sizeof(struct out_sftp),
    .default_concurrency = 1000,
    .workers = 1,
    .init = sftp_out_init,
    .start = sftp_out_start,
    .deliver_batch = sftp_out_deliver_batch,
    .destroy = sftp_out_destroy,
};
