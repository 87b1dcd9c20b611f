/* pb_conf.h - the configuration tree and the field tables that decode it.
 *
 * The YAML file is loaded into a tree of pb_node, each carrying the file,
 * line and column it came from. ${VAR} and ${VAR:-default} are interpolated
 * in scalars at load time ($$ is a literal $). Plugins describe their options
 * with a pb_field table; pb_conf_decode() fills a struct from a map node with
 * strict parsing, rejects unknown keys, and reports errors as file:line:col.
 * The same tables drive `patchbay lint` and secret redaction. */
#ifndef PB_CONF_H
#define PB_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pb_err.h"

enum pb_node_type { PB_NODE_NULL = 0, PB_NODE_SCALAR, PB_NODE_MAP, PB_NODE_SEQ };

struct pb_node {
    enum pb_node_type type;
    const char *file; /* owned by the document */
    int line, col;    /* 1-based */
    /* SCALAR: interpolated text, NUL-terminated (len excludes the NUL). */
    char *str;
    size_t len;
    bool quoted;       /* the scalar was quoted in YAML */
    bool interpolated; /* the text came (partly) from the environment */
    bool bare_var;     /* holds $NAME (upper case) that is not ${NAME}: left literal */
    /* MAP: n pairs keys[i] -> vals[i], in file order, keys unique.
     * SEQ: n items in vals[i]; keys is NULL. */
    size_t n;
    struct pb_node **keys;
    struct pb_node **vals;
    /* The map or sequence holding this node (keys included); NULL for the
     * root. Lets errors name where they are ("pipelines.shop.outputs.crm"). */
    const struct pb_node *parent;
};

struct pb_conf_doc;

/* Load and interpolate a YAML file. Limits: 4 MiB file, depth 64, 100k nodes.
 * Anchors/aliases, tags and multiple documents are refused. Duplicate map keys
 * are errors. ${VAR:-default} takes the default when VAR is unset or empty.
 * Returns NULL and fills err (with position) on failure; err->file then
 * points at the caller's path, while node->file always belongs to the doc
 * (so an error raised on a node must be reported before the doc is destroyed). */
struct pb_conf_doc *pb_conf_load_file(const char *path, struct pb_err *err);
/* Same from memory; name is used in error positions. */
struct pb_conf_doc *pb_conf_load_string(const char *name, const char *text, size_t len,
                                        struct pb_err *err);
void pb_conf_doc_destroy(struct pb_conf_doc *doc);
/* The root node (a map for a valid patchbay.yaml); borrowed from doc. */
const struct pb_node *pb_conf_root(const struct pb_conf_doc *doc);

/* Value of key in a map node, or NULL. */
const struct pb_node *pb_node_get(const struct pb_node *map, const char *key);
const char *pb_node_type_name(enum pb_node_type t);

/* Strict value parsers. Return 0 or PB_EINVAL; no leading/trailing junk.
 * duration: integer + unit, units ms s m h d, concatenable ("1h30m"; largest
 *           unit first, each unit once); a bare "0" is allowed; result in
 *           milliseconds, must fit int64.
 * size:     integer with optional unit B KB MB GB TB (1000s) KiB MiB GiB TiB
 *           (1024s); must fit uint64.
 * rate:     integer "/" unit, units s m h ("100/s"); count > 0. */
int pb_parse_duration(const char *s, int64_t *ms);
int pb_parse_size(const char *s, uint64_t *bytes);
struct pb_rate {
    uint64_t count;    /* events ... */
    int64_t period_ms; /* ... per this many milliseconds */
};
int pb_parse_rate(const char *s, struct pb_rate *out);
/* Strict integer and boolean (true/false only). */
int pb_parse_int(const char *s, int64_t *out);
int pb_parse_bool(const char *s, bool *out);

/* Decoded value shapes for the list/map field types. */
struct pb_strlist {
    size_t n;
    char **items;
};
struct pb_strmap {
    size_t n;
    char **keys;
    char **vals;
};

enum pb_field_type {
    PB_F_END = 0,  /* terminates a table */
    PB_F_STR,      /* char *  (malloc'd, NULL when absent and no default) */
    PB_F_SECRET,   /* char *  like STR, but never printed in errors, logs, lint */
    PB_F_BOOL,     /* bool */
    PB_F_INT,      /* int64_t, checked against min/max when max > min */
    PB_F_DURATION, /* int64_t milliseconds */
    PB_F_SIZE,     /* uint64_t bytes */
    PB_F_RATE,     /* struct pb_rate ({0,0} when absent) */
    PB_F_ENUM,     /* int: index into choices */
    PB_F_STRLIST,  /* struct pb_strlist; a scalar is accepted as a 1-item list */
    PB_F_STRMAP,   /* struct pb_strmap (values are scalars) */
    PB_F_OBJECT,   /* nested struct at offset, decoded with sub; absent = zeroed + defaults */
    PB_F_NODE,     /* const struct pb_node * borrowed from the document, any shape */
};

#define PB_FIELD_REQUIRED 0x1u
/* A URL the plugin connects to: lint warns when the outbound guard would
 * refuse its host (a loopback or private literal without outbound.allow). */
#define PB_FIELD_URL 0x2u

struct pb_field {
    const char *name;
    enum pb_field_type type;
    size_t offset;
    unsigned flags;
    const char *def;            /* default as text, parsed like a YAML value */
    const struct pb_field *sub; /* PB_F_OBJECT */
    const char *const *choices; /* PB_F_ENUM, NULL-terminated */
    int64_t min, max;           /* PB_F_INT bounds (ignored when max <= min) */
    const char *doc;            /* one line for lint --explain and docs */
};

/* Fill out from a map node using fields. node may be NULL (all defaults).
 * A key with no value ("retry:") counts as absent, except for PB_F_NODE.
 * Defaults of PB_F_STRLIST/STRMAP are YAML text ("[a, b]"); other defaults
 * are taken literally. The fields of the tables are zeroed first; no other
 * byte of out is touched. Unknown keys, wrong shapes, bad values and
 * missing required keys are errors naming file:line:col and what was
 * expected. On error, whatever was
 * allocated stays in out: call pb_conf_free() on it either way. */
int pb_conf_decode(const struct pb_node *node, const struct pb_field *fields, void *out,
                   struct pb_err *err);
/* Like pb_conf_decode with two tables over one map (core options + plugin
 * options): each key must belong to exactly one table. */
int pb_conf_decode2(const struct pb_node *node, const struct pb_field *fields_a, void *out_a,
                    const struct pb_field *fields_b, void *out_b, struct pb_err *err);
/* Free what pb_conf_decode allocated in out (strings, lists, maps, nested). */
void pb_conf_free(const struct pb_field *fields, void *out);

void pb_strlist_free(struct pb_strlist *l);
void pb_strmap_free(struct pb_strmap *m);
const char *pb_strmap_get(const struct pb_strmap *m, const char *key);

#endif
