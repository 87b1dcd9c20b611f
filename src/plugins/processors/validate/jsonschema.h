/* jsonschema.h - a JSON Schema 2020-12 validator over jq values (jv).
 *
 * A schema document is compiled once into a graph of nodes ($ref and
 * $dynamicRef resolved to the nodes they name, patterns compiled with
 * PCRE2), then any number of instances are validated against it. Validation
 * stops at the first failure and reports where: the instance's JSON pointer,
 * the failing keyword's location in the schema and the keyword itself.
 *
 * Vocabularies: core ($id, $anchor, $dynamicAnchor, $ref, $dynamicRef,
 * $defs), applicator, unevaluated, validation, and format as an annotation
 * or, with assert_formats, as an assertion; content and meta-data keywords
 * are annotations only. References to other documents are resolved through
 * documents added with js_add_document() or the loader.
 *
 * Threads: a compiled schema is used by one thread at a time (jv reference
 * counts are not atomic). */
#ifndef PB_JSONSCHEMA_H
#define PB_JSONSCHEMA_H

#include <stdbool.h>
#include <stddef.h>

#include <jv.h>

#include "patchbay/pb_err.h"

struct js_schema;

/* Fetch the document at an absolute URI (no fragment) the schema refers to
 * and that is not known yet: 0 with *doc (owned by the caller, then taken),
 * or a negative code. */
typedef int (*js_loader_fn)(void *arg, const char *uri, jv *doc);

struct js_opts {
    bool assert_formats;  /* `format` fails values it knows to be malformed */
    const char *base_uri; /* of the root document; NULL: "urn:patchbay:schema" */
    js_loader_fn loader;  /* may be NULL */
    void *loader_arg;
    size_t max_documents; /* documents the loader may bring in (0: 64) */
};

/* A compiler for one schema: add the documents it may refer to, then
 * compile the root. */
struct js_schema *js_create(const struct js_opts *o);
/* Register doc (taken) as the document at absolute uri. 0 or PB_ENOMEM. */
int js_add_document(struct js_schema *s, const char *uri, jv doc);
/* Compile root (taken). 0, or PB_ECONFIG with where and why in err. */
int js_compile(struct js_schema *s, jv root, struct pb_err *err);
void js_destroy(struct js_schema *s);

#define JS_PTR_MAX 256
struct js_error {
    char instance[JS_PTR_MAX]; /* JSON pointer into the instance ("" is the whole) */
    char schema[JS_PTR_MAX];   /* JSON pointer of the keyword in its schema document */
    char keyword[32];
    char msg[256];
};

/* 0: inst (borrowed) is valid; 1: it is not, and e says where; a negative
 * code when validation could not finish (PB_ETOOBIG: nesting past the
 * bound; PB_ELIMIT-like regex limits as PB_ETOOBIG; PB_ENOMEM), with e. */
int js_validate(struct js_schema *s, jv inst, struct js_error *e);

/* "format" checkers (jsonschema_format.c): true when s (len bytes) is a
 * well-formed value of format, or the format is not one this validator knows. */
bool js_format_ok(const char *format, const char *s, size_t len);

#endif
