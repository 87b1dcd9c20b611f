/* pb_json.h - a fast single-pass JSON validator for ingest.
 *
 * Checks RFC 8259 syntax, UTF-8 (no overlongs, no surrogates, no code points
 * past U+10FFFF), unescaped control characters, \u escapes (paired
 * surrogates), nesting depth, and optionally that every number can be carried
 * exactly by a double (integers within +-2^53, at most 17 significant digits). */
#ifndef PB_JSON_H
#define PB_JSON_H

#include <stdbool.h>
#include <stddef.h>

#define PB_JSON_MAX_DEPTH_DEFAULT 64

struct pb_json_check {
    size_t max_depth;   /* 0 = PB_JSON_MAX_DEPTH_DEFAULT */
    bool exact_numbers; /* fail numbers a double cannot carry exactly */
    /* out */
    size_t members;         /* object members seen, duplicates included */
    size_t err_offset;      /* byte offset of the first problem */
    const char *err_reason; /* static text: "invalid UTF-8", "unexpected character", ... */
};

/* 0 when buf[0..len) is one valid JSON text (surrounding whitespace allowed),
 * PB_EPARSE (or PB_EFIDELITY for numbers) with err_offset/err_reason set. */
int pb_json_validate(const char *buf, size_t len, struct pb_json_check *c);
/* UTF-8 validity only. */
bool pb_utf8_valid(const char *buf, size_t len);

#endif
