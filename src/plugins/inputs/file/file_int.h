/* file_int.h - what the `file` and `sftp` inputs share: their options, the
 * record readers (CSV, JSON lines, JSON, XML, raw) and the engine that takes
 * one file at a time into the store.
 *
 * Thread model: a reader belongs to one thread at a time; the engine and its
 * callbacks run on the input's loop thread only (the inputs have loops of
 * their own, so reading and hashing never hold up other inputs). */
#ifndef PB_FILE_INT_H
#define PB_FILE_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "patchbay/pb_conf.h"
#include "patchbay/pb_err.h"
#include "patchbay/pb_plugin.h"

/* ---- options ---------------------------------------------------------------------- */

enum file_format { FMT_JSON = 0, FMT_JSONL, FMT_CSV, FMT_XML, FMT_RAW };
enum file_after { AFTER_ARCHIVE = 0, AFTER_DELETE, AFTER_KEEP };
enum file_bad { BAD_FAIL = 0, BAD_DEAD_LETTER };

struct file_csv_conf {
    bool header;
    char *delimiter;
    char *quote;
    struct pb_strlist columns;
};
struct file_xml_conf {
    char *record;
    int64_t max_depth;
    struct pb_strlist arrays;
};
struct file_json_conf {
    bool split;
};

/* The options both inputs take; the first member of their contexts, so one
 * field table (FILE_OPTS_FIELDS) decodes them for either. */
struct file_opts {
    struct pb_strlist paths;
    struct pb_strlist exclude;
    int format;
    struct file_csv_conf csv;
    struct file_xml_conf xml;
    struct file_json_conf json;
    char *content_type;
    bool watch;
    int64_t poll_interval_ms;
    int64_t min_age_ms;
    int after;
    char *archive_dir;
    char *error_dir;
    int on_bad_record;
    uint64_t max_record;
    int64_t batch;
    int64_t idempotency_window_ms;
};

extern const char *const file_format_names[];
extern const char *const file_after_names[];
extern const char *const file_bad_names[];
extern const struct pb_field file_csv_fields[];
extern const struct pb_field file_xml_fields[];
extern const struct pb_field file_json_fields[];

/* The rows of the shared options, for a table whose context starts with a
 * struct file_opts. poll_def: the default poll interval as text. */
#define FILE_OPTS_FIELDS(poll_def)                                                                 \
    {.name = "paths",                                                                              \
     .type = PB_F_STRLIST,                                                                         \
     .offset = offsetof(struct file_opts, paths),                                                  \
     .doc = "glob patterns of the files to take"},                                                 \
        {.name = "exclude",                                                                        \
         .type = PB_F_STRLIST,                                                                     \
         .offset = offsetof(struct file_opts, exclude),                                            \
         .def = "[\".*\", \"*.tmp\", \"*.part\"]",                                                 \
         .doc = "file names never taken (globs on the name)"},                                     \
        {.name = "format",                                                                         \
         .type = PB_F_ENUM,                                                                        \
         .offset = offsetof(struct file_opts, format),                                             \
         .flags = PB_FIELD_REQUIRED,                                                               \
         .choices = file_format_names,                                                             \
         .doc = "json, jsonl, csv, xml or raw"},                                                   \
        {.name = "csv",                                                                            \
         .type = PB_F_OBJECT,                                                                      \
         .offset = offsetof(struct file_opts, csv),                                                \
         .sub = file_csv_fields},                                                                  \
        {.name = "xml",                                                                            \
         .type = PB_F_OBJECT,                                                                      \
         .offset = offsetof(struct file_opts, xml),                                                \
         .sub = file_xml_fields},                                                                  \
        {.name = "json",                                                                           \
         .type = PB_F_OBJECT,                                                                      \
         .offset = offsetof(struct file_opts, json),                                               \
         .sub = file_json_fields},                                                                 \
        {.name = "content_type",                                                                   \
         .type = PB_F_STR,                                                                         \
         .offset = offsetof(struct file_opts, content_type),                                       \
         .def = "application/octet-stream",                                                        \
         .doc = "format raw: the messages' content type"},                                         \
        {.name = "watch",                                                                          \
         .type = PB_F_BOOL,                                                                        \
         .offset = offsetof(struct file_opts, watch),                                              \
         .def = "true",                                                                            \
         .doc = "take new files as they arrive"},                                                  \
        {.name = "poll_interval",                                                                  \
         .type = PB_F_DURATION,                                                                    \
         .offset = offsetof(struct file_opts, poll_interval_ms),                                   \
         .def = poll_def,                                                                          \
         .doc = "look for files this often"},                                                      \
        {.name = "min_age",                                                                        \
         .type = PB_F_DURATION,                                                                    \
         .offset = offsetof(struct file_opts, min_age_ms),                                         \
         .def = "1s",                                                                              \
         .doc = "a file changed more recently than this is left alone"},                           \
        {.name = "after",                                                                          \
         .type = PB_F_ENUM,                                                                        \
         .offset = offsetof(struct file_opts, after),                                              \
         .choices = file_after_names,                                                              \
         .def = "archive",                                                                         \
         .doc = "archive, delete or keep a file once every record is committed"},                  \
        {.name = "archive_dir",                                                                    \
         .type = PB_F_STR,                                                                         \
         .offset = offsetof(struct file_opts, archive_dir),                                        \
         .doc = "where taken files go (after: archive)"},                                          \
        {.name = "error_dir",                                                                      \
         .type = PB_F_STR,                                                                         \
         .offset = offsetof(struct file_opts, error_dir),                                          \
         .doc = "where files that cannot be taken go, with a .error.json report"},                 \
        {.name = "on_bad_record",                                                                  \
         .type = PB_F_ENUM,                                                                        \
         .offset = offsetof(struct file_opts, on_bad_record),                                      \
         .choices = file_bad_names,                                                                \
         .def = "fail",                                                                            \
         .doc = "fail: the whole file goes to error_dir; dead_letter: the bad records only"},      \
        {.name = "max_record",                                                                     \
         .type = PB_F_SIZE,                                                                        \
         .offset = offsetof(struct file_opts, max_record),                                         \
         .def = "1MiB",                                                                            \
         .doc = "the largest record (a whole file for json and raw)"},                             \
        {.name = "batch",                                                                          \
         .type = PB_F_INT,                                                                         \
         .offset = offsetof(struct file_opts, batch),                                              \
         .def = "500",                                                                             \
         .min = 1,                                                                                 \
         .max = PB_SUBMIT_MAX,                                                                     \
         .doc = "records committed per transaction"},                                              \
    {                                                                                              \
        .name = "idempotency_window", .type = PB_F_DURATION,                                       \
        .offset = offsetof(struct file_opts, idempotency_window_ms), .def = "7d",                  \
        .doc = "how long record keys (file digest and number) are remembered"                      \
    }

/* Validate the shared options (init: no I/O). remote: for sftp (paths are
 * names in the remote folder). */
int file_opts_check(struct file_opts *o, bool remote, struct pb_err *err);

/* ---- readers -------------------------------------------------------------------------- */

#define FILE_DIGEST_HEX 65 /* SHA-256 in hex, NUL included */

struct rd_opts {
    int format; /* enum file_format */
    size_t max_record;
    /* csv */
    bool header;
    char delimiter, quote;
    const struct pb_strlist *columns; /* names, or NULL */
    /* xml */
    const char *record; /* "/orders/order" */
    int max_depth;
    const struct pb_strlist *arrays;
    /* json */
    bool split;
};

/* One record as a reader yields it; valid until the next rd_next. */
struct rd_rec {
    const char *body; /* JSON text (raw: the bytes) */
    size_t len;
    int64_t line, col; /* where it starts, 1-based */
    int64_t start;     /* byte offset where it starts */
    int64_t end;       /* byte offset just past it */
    /* A bad record: reason (static or the reader's), where the problem
     * is; body is then NULL. */
    const char *bad;
    int64_t bad_line, bad_col;
};

/* A problem that ends the file: nothing after it can be told apart. */
struct rd_fatal {
    int64_t line, col;
    char reason[256];
};

struct rd;
/* A reader over fd (borrowed, read from its current offset). hash: keep a
 * SHA-256 of every byte read. NULL with err on bad options or ENOMEM. */
struct rd *rd_create(const struct rd_opts *o, int fd, bool hash, struct pb_err *err);
/* 1: *rec holds the next record (or a bad one); 0: the end; PB_EPARSE: a
 * fatal problem (*f); PB_EIO / PB_ENOMEM otherwise. */
int rd_next(struct rd *r, struct rd_rec *rec, struct rd_fatal *f);
/* Bytes read from the file so far. */
int64_t rd_bytes(const struct rd *r);
/* The hex digest of everything read; only once rd_next returned 0, and with
 * hash. Reads whatever is left of the file first (an XML reader stops at
 * the root's end). 0 or PB_EIO. */
int rd_digest(struct rd *r, char hex[FILE_DIGEST_HEX]);
void rd_destroy(struct rd *r);

/* JSON string text of s[0..len) (quotes included) appended to *b (grown,
 * malloc'd, *cap its size, *n its length). PB_EPARSE when s is not UTF-8,
 * PB_ENOMEM. */
int json_str_append(char **b, size_t *n, size_t *cap, const char *s, size_t len);
/* The same for a NUL-terminated text that is known to be UTF-8 (names,
 * paths made by the plugin): invalid bytes become U+FFFD. */
int json_text_append(char **b, size_t *n, size_t *cap, const char *s);
int buf_append(char **b, size_t *n, size_t *cap, const void *p, size_t len);

/* ---- the engine --------------------------------------------------------------------------- */

/* A file to take: a local file (for sftp, the downloaded copy). */
struct fe_file {
    const char *path;    /* the local file to read */
    const char *id;      /* identity: a changed file has another ("<path> <size> <mtime>") */
    const char *meta;    /* JSON members (no braces) for $meta: "file":...,"name":... */
    const char *display; /* the name in logs and reports (path or remote path) */
    int64_t size;        /* bytes, for progress */
};

/* How a file ended. */
enum fe_end {
    FE_DONE = 0, /* every record committed (stored, duplicate or dead-lettered) */
    FE_FAILED,   /* cannot be taken: nothing of it was committed (report set) */
    FE_STOPPED,  /* the input is stopping; take it again after a restart */
    FE_RETRY,    /* could not be read now (I/O error, it changed while read): try again */
};

struct fe_report {
    int64_t line, col, record; /* record: 0 when the problem is not in one */
    char reason[320];
    char digest[FILE_DIGEST_HEX];
};

struct fe;
typedef void (*fe_done_cb)(void *arg, enum fe_end end, const struct fe_report *rep);

/* The engine of one input: options borrowed (they outlive it). Loop
 * thread. */
struct fe *fe_create(const struct file_opts *o, const char *pipeline, struct pb_err *err);
void fe_destroy(struct fe *e);
/* At start: the input, and its checkpoints as last committed. */
int fe_start(struct fe *e, struct pb_input *in);
/* Take one file (copied): done runs once, on the loop, when it ended. Only
 * one file at a time. PB_EAGAIN when one is under way. */
int fe_take(struct fe *e, const struct fe_file *f, fe_done_cb done, void *arg);
bool fe_busy(const struct fe *e);
/* Back-pressure and stop (loop thread). After stop a file under way ends
 * with FE_STOPPED once its submit (if any) has called back. */
void fe_pause(struct fe *e);
void fe_resume(struct fe *e);
void fe_stop(struct fe *e);

/* Files kept in place (after: keep) or failed with nowhere to go are
 * remembered by id in the checkpoint "kept", so they are not taken again
 * until they change. */
bool fe_kept(const struct fe *e, const char *id);
/* Remember id (and forget the kept ids for which present() is false, that
 * is files gone from the folder); committed in a checkpoint of its own:
 * done(arg, status) runs on the loop after the commit (status < 0: not
 * committed; try again later). */
int fe_keep(struct fe *e, const char *id, bool (*present)(void *arg, const char *id), void *parg,
            void (*done)(void *arg, int status), void *arg);

/* Counters for progress and the position shown by /api/inputs. */
struct fe_counts {
    int64_t records; /* records committed (stored, duplicates, dead) */
    int64_t dead;    /* bad records dead-lettered */
};
void fe_counts(const struct fe *e, struct fe_counts *c);

/* The .error.json report of a failed file, as JSON text (malloc'd). */
char *fe_report_json(const struct fe_report *rep, const char *display, int64_t size);

/* ---- helpers for the plugins ------------------------------------------------------------ */

/* A string-keyed hash map (keys copied, values borrowed unless free_val
 * frees them). One thread. */
struct smap {
    char **keys;
    void **vals;
    size_t cap, n;
};
void *smap_get(const struct smap *m, const char *k);
/* Set k to v (v must not be NULL). 0 or PB_ENOMEM. */
int smap_put(struct smap *m, const char *k, void *v);
/* Call fn for each entry. */
#define SMAP_EACH(m, i)                                                                            \
    for (size_t i = 0; i < (m)->cap; i++)                                                          \
        if ((m)->keys[i])
void smap_free(struct smap *m, void (*free_val)(void *));

/* Whether a file may be taken at now (unix ms): it last changed (mtime_ms,
 * by its own clock; <= 0 unknown) at least min_age + skew ago, or it has
 * been seen unchanged since since_ms for min_age (so a time in the future,
 * or a clock that differs, cannot hold it for ever). When not, *wait_ms is
 * how long until it may be. Pure. */
bool file_ready(int64_t now, int64_t mtime_ms, int64_t since_ms, int64_t min_age, int64_t skew,
                int64_t *wait_ms);

/* RFC 3339 UTC with milliseconds of unix ms into buf (>= 32 bytes). */
void file_rfc3339(int64_t ms, char *buf, size_t len);
/* A name for dst (a directory) + base that does not exist yet: base, or
 * base with ".1", ".2"... before its extension. Returns 0 or PB_EEXISTS. */
int file_unique_name(const char *dir, const char *base, char *out, size_t len);

#endif
