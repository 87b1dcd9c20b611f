/* file_enc.h - how the `file` and `sftp` outputs turn deliveries into lines
 * of a file: JSON lines (the payload on one line) and CSV rows (the
 * payload's members, in the columns' order, RFC 4180 quoting). Values are
 * written as they are in the payload - a number keeps its digits, a string
 * its characters - and a payload that does not fit (not JSON, not an
 * object, a member that is no column) is refused with a reason rather than
 * written in part. Pure functions: any thread. */
#ifndef PB_FILE_ENC_H
#define PB_FILE_ENC_H

#include <stdbool.h>
#include <stddef.h>

#include "patchbay/pb_conf.h"
#include "patchbay/pb_err.h"

/* The csv block both outputs take. */
struct enc_csv_conf {
    bool header;
    char *delimiter;
    char *quote;
    struct pb_strlist columns;
};
extern const struct pb_field enc_csv_fields[];
/* Check it (init). 0 or PB_ECONFIG with err. */
int enc_csv_conf_check(const struct enc_csv_conf *c, struct pb_err *err);

/* A growing buffer. */
struct enc_buf {
    char *p;
    size_t n, cap;
};
int enc_put(struct enc_buf *b, const void *p, size_t len);
void enc_buf_free(struct enc_buf *b);

/* The payload (JSON) as one line with its '\n': line ends that are JSON
 * white space become spaces. PB_EPARSE (why set) when it is not JSON. */
int enc_jsonl(struct enc_buf *b, const char *payload, size_t len, char *why, size_t whylen);

/* One member of a JSON object: its name (unescaped, NUL-terminated in
 * name) and its value as written in the text. */
struct enc_member {
    char name[256];
    const char *value;
    size_t len;
    char kind; /* 's' string, 'n' number, 't' true, 'f' false, 'z' null, 'o' object, 'a' array */
};
/* Call fn for each member of the object in json[0..len) (validated first);
 * PB_EPARSE (why set) when it is not one. fn returns non-zero to stop. */
int enc_members(const char *json, size_t len, int (*fn)(void *arg, const struct enc_member *m),
                void *arg, char *why, size_t whylen);

struct enc_csv {
    char delimiter;
    char quote;
    const struct pb_strlist *columns; /* in order */
};
/* The header row. */
int enc_csv_header(const struct enc_csv *c, struct enc_buf *b);
/* The row of an object payload. PB_EPARSE (why set) for a payload that is
 * not an object or has a member that is not a column; a missing member is
 * an empty field, null is empty, true/false and numbers as written,
 * objects and arrays as their JSON text. */
int enc_csv_row(const struct enc_csv *c, struct enc_buf *b, const char *payload, size_t len,
                char *why, size_t whylen);
/* The names of the members of an object payload, in order (columns taken
 * from the first record of a file). *out malloc'd; free with
 * pb_strlist_free. */
int enc_csv_keys(const char *payload, size_t len, struct pb_strlist *out, char *why, size_t whylen);
/* Parse a CSV header line (as enc_csv_header writes it) into names. */
int enc_csv_parse_header(const struct enc_csv *c, const char *line, size_t len,
                         struct pb_strlist *out);

#endif
