/* jsonschema_int.h - the compiled form of a JSON Schema, shared by the
 * compiler (jsonschema.c) and the evaluator (jsonschema_eval.c). */
#ifndef PB_JSONSCHEMA_INT_H
#define PB_JSONSCHEMA_INT_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdint.h>

#include "jsonschema.h"

enum {
    JS_T_NULL = 1u << 0,
    JS_T_BOOL = 1u << 1,
    JS_T_OBJECT = 1u << 2,
    JS_T_ARRAY = 1u << 3,
    JS_T_NUMBER = 1u << 4,
    JS_T_STRING = 1u << 5,
    JS_T_INTEGER = 1u << 6,
};

struct js_node;

/* A schema resource: the root, or a subschema with $id. */
struct js_res {
    char *uri; /* absolute, without fragment */
    size_t ndyn;
    char **dyn_names; /* its $dynamicAnchor names ... */
    struct js_node **dyn_nodes;
    struct js_res *next;
};

struct js_named {
    char *name; /* property name (may hold NUL: len) */
    size_t len;
    struct js_node *s;
};

struct js_pattern {
    pcre2_code *re;
    struct js_node *s;
};

struct js_depreq {
    char *name;
    size_t len;
    size_t n;
    char **req;
    size_t *reqlen;
};

struct js_node {
    int boolean; /* 0 or 1 for a boolean schema, -1 for an object */
    char *loc;   /* JSON pointer of this schema in its document */
    struct js_res *res;
    unsigned types; /* 0: no "type" */
    bool has_const, has_enum;
    jv cnst, enm;
    bool has_min, has_max, has_xmin, has_xmax, has_mult;
    double min, max, xmin, xmax, mult;
    int64_t minlen, maxlen, minitems, maxitems, minprops, maxprops; /* -1: none */
    int64_t mincontains, maxcontains;                               /* -1: none */
    bool unique;
    pcre2_code *pattern;
    char *format;
    size_t nallof, nanyof, noneof;
    struct js_node **allof, **anyof, **oneof;
    struct js_node *not_, *if_, *then_, *else_;
    size_t nprops, npprops, nprefix, nreq, ndepreq, ndepsch;
    struct js_named *props;
    struct js_pattern *pprops;
    struct js_node *addprops, *propnames, *uneval_props;
    struct js_node **prefix;
    struct js_node *items, *contains, *uneval_items;
    char **req;
    size_t *reqlen;
    struct js_depreq *depreq;
    struct js_named *depsch;
    char *ref, *dref;
    struct js_node *ref_node, *dref_node;
    char *dref_anchor; /* set when the $dynamicRef is dynamic */
    bool resolved;
};

struct js_reg {
    char *key; /* absolute URI "#" fragment (a JSON pointer or an anchor) */
    struct js_node *n;
};

struct js_doc {
    char *uri;
    jv v;
};

struct js_schema {
    struct js_opts opts;
    struct js_node *root;
    struct js_node **nodes;
    size_t nnodes, capnodes;
    struct js_res *res;
    struct js_reg *reg;
    size_t nreg, capreg;
    struct js_doc *docs;
    size_t ndocs, capdocs, loaded;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
};

/* jsonschema_uri.c: the absolute URI of reference ref against base
 * (malloc'd, fragment kept; NULL on ENOMEM), and a fragment
 * percent-decoded in place. */
char *js_uri_resolve(const char *base, const char *ref);
void js_pct_decode(char *s);

/* jsonschema.c: a pattern compiled the ECMAScript way (NULL: not one). */
pcre2_code *js_re_compile(const char *src, size_t len);
/* jsonschema.c: does re match s (len bytes)? 1 yes, 0 no, < 0 limit hit. */
int js_re_match(struct js_schema *S, pcre2_code *re, const char *s, size_t len);

#endif
