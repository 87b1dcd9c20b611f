/* file_opts.c - the options the `file` and `sftp` inputs share, their
 * checks (init: no I/O), and small helpers both use: the .error.json
 * report, RFC 3339 times, names that do not overwrite. Any thread. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "file_int.h"

const char *const file_format_names[] = {"json", "jsonl", "csv", "xml", "raw", NULL};
const char *const file_after_names[] = {"archive", "delete", "keep", NULL};
const char *const file_bad_names[] = {"fail", "dead_letter", NULL};

const struct pb_field file_csv_fields[] = {
    {.name = "header",
     .type = PB_F_BOOL,
     .offset = offsetof(struct file_csv_conf, header),
     .def = "true",
     .doc = "the first row names the columns"},
    {.name = "delimiter",
     .type = PB_F_STR,
     .offset = offsetof(struct file_csv_conf, delimiter),
     .def = ",",
     .doc = "one character between fields"},
    {.name = "quote",
     .type = PB_F_STR,
     .offset = offsetof(struct file_csv_conf, quote),
     .def = "\"",
     .doc = "one character around fields"},
    {.name = "columns",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct file_csv_conf, columns),
     .doc = "column names (instead of the header's, or for files without one)"},
    {0},
};

const struct pb_field file_xml_fields[] = {
    {.name = "record",
     .type = PB_F_STR,
     .offset = offsetof(struct file_xml_conf, record),
     .doc = "path of the record elements, such as /orders/order"},
    {.name = "max_depth",
     .type = PB_F_INT,
     .offset = offsetof(struct file_xml_conf, max_depth),
     .def = "64",
     .min = 1,
     .max = 256,
     .doc = "deepest nesting of elements"},
    {.name = "arrays",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct file_xml_conf, arrays),
     .doc = "element names that are always arrays, even when they appear once"},
    {0},
};

const struct pb_field file_json_fields[] = {
    {.name = "split",
     .type = PB_F_BOOL,
     .offset = offsetof(struct file_json_conf, split),
     .def = "true",
     .doc = "a top-level array gives one record per element"},
    {0},
};

int file_opts_check(struct file_opts *o, bool remote, struct pb_err *err)
{
    if (!remote && o->paths.n == 0)
        return pb_err_set(err, PB_ECONFIG,
                          "paths is required: glob patterns such as /data/in/*.csv");
    for (size_t i = 0; i < o->paths.n; i++) {
        const char *p = o->paths.items[i];
        if (!*p)
            return pb_err_set(err, PB_ECONFIG, "paths: an empty pattern");
        if (remote && strchr(p, '/'))
            return pb_err_set(err, PB_ECONFIG,
                              "paths: \"%s\" - over sftp, patterns match names in the url's "
                              "folder (no '/')",
                              p);
    }
    if (o->format == FMT_CSV) {
        if (!o->csv.delimiter || strlen(o->csv.delimiter) != 1 || !o->csv.quote ||
            strlen(o->csv.quote) != 1)
            return pb_err_set(err, PB_ECONFIG,
                              "csv.delimiter and csv.quote are one character each");
        char d = o->csv.delimiter[0], q = o->csv.quote[0];
        if (d == q || d == '\n' || d == '\r' || q == '\n' || q == '\r')
            return pb_err_set(err, PB_ECONFIG,
                              "csv.delimiter and csv.quote must differ and not be line ends");
        for (size_t i = 0; i < o->csv.columns.n; i++)
            for (size_t k = 0; k < i; k++)
                if (strcmp(o->csv.columns.items[i], o->csv.columns.items[k]) == 0)
                    return pb_err_set(err, PB_ECONFIG, "csv.columns names \"%s\" twice",
                                      o->csv.columns.items[i]);
    }
    if (o->format == FMT_XML) {
        const char *r = o->xml.record;
        if (!r)
            return pb_err_set(err, PB_ECONFIG,
                              "format xml needs xml.record, the path of the record elements "
                              "(such as /orders/order)");
        if (r[0] != '/' || strstr(r, "//") || r[strlen(r) - 1] == '/')
            return pb_err_set(err, PB_ECONFIG,
                              "xml.record \"%s\" must be an absolute path of element names, such "
                              "as /orders/order",
                              r);
    }
    if (o->after == AFTER_ARCHIVE && !o->archive_dir)
        return pb_err_set(err, PB_ECONFIG,
                          "after: archive needs archive_dir (or after: delete / keep)");
    if (o->after != AFTER_ARCHIVE && o->archive_dir)
        return pb_err_set(err, PB_ECONFIG, "archive_dir is only for after: archive");
    if (o->max_record < 1024 || o->max_record > 64ull * 1024 * 1024)
        return pb_err_set(err, PB_ECONFIG, "max_record must be between 1KiB and 64MiB");
    if (o->poll_interval_ms < 100)
        return pb_err_set(err, PB_ECONFIG, "poll_interval must be at least 100ms");
    if (o->min_age_ms < 0)
        return pb_err_set(err, PB_ECONFIG, "min_age must not be negative");
    if (o->idempotency_window_ms <= 0)
        return pb_err_set(err, PB_ECONFIG,
                          "idempotency_window must be positive: record keys make repeats harmless");
    return 0;
}

bool file_ready(int64_t now, int64_t mtime_ms, int64_t since_ms, int64_t min_age, int64_t skew,
                int64_t *wait_ms)
{
    int64_t age = mtime_ms > 0 ? now - mtime_ms - skew : -1;
    int64_t stable = now - since_ms;
    if ((mtime_ms > 0 && age >= min_age) || stable >= min_age) {
        *wait_ms = 0;
        return true;
    }
    int64_t a = mtime_ms > 0 && min_age - age > 0 ? min_age - age : INT64_MAX;
    int64_t b = min_age - stable;
    *wait_ms = a < b ? a : b;
    return false;
}

void file_rfc3339(int64_t ms, char *buf, size_t len)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    char base[32];
    strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, len, "%s.%03dZ", base, (int)(ms % 1000));
}

int file_unique_name(const char *dir, const char *base, char *out, size_t len)
{
    struct stat st;
    const char *dot = strrchr(base, '.');
    if (dot == base)
        dot = NULL;
    size_t stem = dot ? (size_t)(dot - base) : strlen(base);
    for (int i = 0; i < 100000; i++) {
        int n;
        if (i == 0)
            n = snprintf(out, len, "%s/%s", dir, base);
        else
            n = snprintf(out, len, "%s/%.*s.%d%s", dir, (int)stem, base, i, dot ? dot : "");
        if (n < 0 || (size_t)n >= len)
            return PB_ETOOBIG;
        if (lstat(out, &st) != 0)
            return 0;
    }
    return PB_EEXISTS;
}

char *fe_report_json(const struct fe_report *rep, const char *display, int64_t size)
{
    char *b = NULL, at[40], num[160];
    size_t n = 0, cap = 0;
    file_rfc3339((int64_t)time(NULL) * 1000, at, sizeof(at));
    int rc = buf_append(&b, &n, &cap, "{\"file\":", 8);
    if (rc == 0)
        rc = json_text_append(&b, &n, &cap, display);
    snprintf(num, sizeof(num),
             ",\"line\":%lld,\"column\":%lld,\"record\":%lld,\"reason\":", (long long)rep->line,
             (long long)rep->col, (long long)rep->record);
    if (rc == 0)
        rc = buf_append(&b, &n, &cap, num, strlen(num));
    if (rc == 0)
        rc = json_text_append(&b, &n, &cap, rep->reason);
    snprintf(num, sizeof(num), ",\"digest\":\"%s\",\"size\":%lld,\"failed_at\":\"%s\"}\n",
             rep->digest, (long long)size, at);
    if (rc == 0)
        rc = buf_append(&b, &n, &cap, num, strlen(num));
    if (rc) {
        free(b);
        return NULL;
    }
    return b;
}

/* ---- a small string-keyed hash map -------------------------------------------------- */

static uint64_t smap_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

static size_t smap_slot(const struct smap *m, const char *k)
{
    size_t i = (size_t)smap_hash(k) & (m->cap - 1);
    while (m->keys[i] && strcmp(m->keys[i], k) != 0)
        i = (i + 1) & (m->cap - 1);
    return i;
}

void *smap_get(const struct smap *m, const char *k)
{
    if (!m->cap)
        return NULL;
    size_t i = smap_slot(m, k);
    return m->keys[i] ? m->vals[i] : NULL;
}

int smap_put(struct smap *m, const char *k, void *v)
{
    if ((m->n + 1) * 2 > m->cap) {
        struct smap g = {0};
        g.cap = m->cap ? m->cap * 2 : 64;
        g.keys = calloc(g.cap, sizeof(*g.keys));
        g.vals = calloc(g.cap, sizeof(*g.vals));
        if (!g.keys || !g.vals) {
            free(g.keys);
            free(g.vals);
            return PB_ENOMEM;
        }
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->keys[i])
                continue;
            size_t j = smap_slot(&g, m->keys[i]);
            g.keys[j] = m->keys[i];
            g.vals[j] = m->vals[i];
            g.n++;
        }
        free(m->keys);
        free(m->vals);
        *m = g;
    }
    size_t i = smap_slot(m, k);
    if (m->keys[i]) {
        m->vals[i] = v;
        return 0;
    }
    m->keys[i] = strdup(k);
    if (!m->keys[i])
        return PB_ENOMEM;
    m->vals[i] = v;
    m->n++;
    return 0;
}

void smap_free(struct smap *m, void (*free_val)(void *))
{
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->keys[i])
            continue;
        free(m->keys[i]);
        if (free_val)
            free_val(m->vals[i]);
    }
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof(*m));
}
