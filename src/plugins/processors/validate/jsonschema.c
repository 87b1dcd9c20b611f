/* jsonschema.c - compiling a JSON Schema 2020-12 document (see
 * jsonschema.h): every subschema becomes a node, registered under the URIs
 * that name it (its resource's URI with a JSON-pointer fragment, $anchor and
 * $dynamicAnchor names); then every $ref and $dynamicRef is resolved to a
 * node, compiling subschemas that only a pointer reaches and documents the
 * loader brings in. URIs are resolved per RFC 3986.
 *
 * Threads: whoever owns the struct js_schema; nothing is shared. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonschema_int.h"

#define DEFAULT_BASE "urn:patchbay:schema"
#define MAX_SCHEMA_DEPTH 128
#define MATCH_LIMIT 1000000
#define DEPTH_LIMIT 10000

/* ---- registry ----------------------------------------------------------------- */

static char *join(const char *a, const char *sep, const char *b)
{
    size_t n = strlen(a) + strlen(sep) + strlen(b) + 1;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%s%s%s", a, sep, b);
    return s;
}

/* ptr + "/" + escaped segment (len bytes). */
static char *ptr_push(const char *ptr, const char *seg, size_t len)
{
    size_t n = strlen(ptr) + 2 * len + 2;
    char *s = malloc(n), *o;
    if (!s)
        return NULL;
    o = s + snprintf(s, n, "%s/", ptr);
    for (size_t i = 0; i < len; i++) {
        if (seg[i] == '~')
            *o++ = '~', *o++ = '0';
        else if (seg[i] == '/')
            *o++ = '~', *o++ = '1';
        else
            *o++ = seg[i] ? seg[i] : '?';
    }
    *o = 0;
    return s;
}

static struct js_node *reg_get(const struct js_schema *S, const char *key)
{
    for (size_t i = 0; i < S->nreg; i++)
        if (strcmp(S->reg[i].key, key) == 0)
            return S->reg[i].n;
    return NULL;
}

/* Register n under key (taken). The first registration of a key wins. */
static int reg_put(struct js_schema *S, char *key, struct js_node *n)
{
    if (!key)
        return PB_ENOMEM;
    if (reg_get(S, key)) {
        free(key);
        return 0;
    }
    if (S->nreg == S->capreg) {
        size_t cap = S->capreg ? S->capreg * 2 : 32;
        struct js_reg *r = realloc(S->reg, cap * sizeof(*r));
        if (!r) {
            free(key);
            return PB_ENOMEM;
        }
        S->reg = r;
        S->capreg = cap;
    }
    S->reg[S->nreg++] = (struct js_reg){.key = key, .n = n};
    return 0;
}

static struct js_doc *doc_get(struct js_schema *S, const char *uri)
{
    for (size_t i = 0; i < S->ndocs; i++)
        if (strcmp(S->docs[i].uri, uri) == 0)
            return &S->docs[i];
    return NULL;
}

int js_add_document(struct js_schema *S, const char *uri, jv doc)
{
    char *u = strdup(uri);
    if (!u) {
        jv_free(doc);
        return PB_ENOMEM;
    }
    size_t l = strlen(u);
    if (l && u[l - 1] == '#')
        u[l - 1] = 0;
    if (S->ndocs == S->capdocs) {
        size_t cap = S->capdocs ? S->capdocs * 2 : 8;
        struct js_doc *d = realloc(S->docs, cap * sizeof(*d));
        if (!d) {
            free(u);
            jv_free(doc);
            return PB_ENOMEM;
        }
        S->docs = d;
        S->capdocs = cap;
    }
    S->docs[S->ndocs++] = (struct js_doc){.uri = u, .v = doc};
    return 0;
}

/* ---- compiling ------------------------------------------------------------------ */

struct cc {
    struct js_schema *S;
    struct pb_err *err;
};

static int fail(struct cc *c, const char *loc, const char *fmt, const char *what)
{
    return pb_err_set(c->err, PB_ECONFIG, "schema %s: %s%s", *loc ? loc : "(root)", fmt,
                      what ? what : "");
}

static struct js_node *node_new(struct js_schema *S)
{
    if (S->nnodes == S->capnodes) {
        size_t cap = S->capnodes ? S->capnodes * 2 : 32;
        struct js_node **n = realloc(S->nodes, cap * sizeof(*n));
        if (!n)
            return NULL;
        S->nodes = n;
        S->capnodes = cap;
    }
    struct js_node *n = calloc(1, sizeof(*n));
    if (!n)
        return NULL;
    n->boolean = -1;
    n->cnst = jv_invalid();
    n->enm = jv_invalid();
    n->minlen = n->maxlen = n->minitems = n->maxitems = -1;
    n->minprops = n->maxprops = n->mincontains = n->maxcontains = -1;
    S->nodes[S->nnodes++] = n;
    return n;
}

pcre2_code *js_re_compile(const char *src, size_t len)
{
    int ec;
    PCRE2_SIZE eo;
    /* ECMAScript flavour: \uXXXX and \u{...}, $ only at the very end, no
     * Unicode classes for \d \w (ECMA's are ASCII). */
    pcre2_compile_context *cc = pcre2_compile_context_create(NULL);
    if (!cc)
        return NULL;
    pcre2_set_compile_extra_options(cc, PCRE2_EXTRA_ALT_BSUX);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)src, len,
                                   PCRE2_UTF | PCRE2_ALT_BSUX | PCRE2_DOLLAR_ENDONLY, &ec, &eo, cc);
    pcre2_compile_context_free(cc);
    return re;
}

int js_re_match(struct js_schema *S, pcre2_code *re, const char *s, size_t len)
{
    int rc = pcre2_match(re, (PCRE2_SPTR)s, len, 0, 0, S->md, S->mctx);
    if (rc >= 0)
        return 1;
    if (rc == PCRE2_ERROR_NOMATCH)
        return 0;
    return PB_ETOOBIG;
}

static bool is_int(double d)
{
    return isfinite(d) && d == floor(d);
}

static struct js_node *compile(struct cc *c, jv v, struct js_res *res, const char *ptr,
                               const char *loc, int depth);

/* A subschema at key (and index, when idx >= 0) of v. */
static struct js_node *sub(struct cc *c, jv v, struct js_res *res, const char *ptr, const char *loc,
                           const char *key, const char *key2, size_t keylen2, int depth)
{
    char *p1 = ptr_push(ptr, key, strlen(key)), *l1 = ptr_push(loc, key, strlen(key));
    char *p2 = NULL, *l2 = NULL;
    struct js_node *n = NULL;
    if (!p1 || !l1)
        goto oom;
    if (key2) {
        p2 = ptr_push(p1, key2, keylen2);
        l2 = ptr_push(l1, key2, keylen2);
        if (!p2 || !l2)
            goto oom;
    }
    n = compile(c, v, res, p2 ? p2 : p1, l2 ? l2 : l1, depth + 1);
    goto out;
oom:
    pb_err_set(c->err, PB_ENOMEM, "out of memory");
out:
    free(p1);
    free(l1);
    free(p2);
    free(l2);
    return n;
}

static int get_nonneg(struct cc *c, jv obj, const char *key, const char *loc, int64_t *out)
{
    jv v = jv_object_get(jv_copy(obj), jv_string(key));
    if (!jv_is_valid(v)) {
        jv_free(v);
        return 0;
    }
    double d = jv_get_kind(v) == JV_KIND_NUMBER ? jv_number_value(v) : -1;
    jv_free(v);
    if (!is_int(d) || d < 0)
        return fail(c, loc, key, " must be a non-negative integer");
    *out = d > 9e18 ? INT64_MAX : (int64_t)d;
    return 0;
}

static int get_num(struct cc *c, jv obj, const char *key, const char *loc, bool *has, double *out)
{
    jv v = jv_object_get(jv_copy(obj), jv_string(key));
    if (!jv_is_valid(v)) {
        jv_free(v);
        return 0;
    }
    if (jv_get_kind(v) != JV_KIND_NUMBER) {
        jv_free(v);
        return fail(c, loc, key, " must be a number");
    }
    *out = jv_number_value(v);
    *has = true;
    jv_free(v);
    return 0;
}

static int type_bits(const char *t, unsigned *bits)
{
    static const struct {
        const char *name;
        unsigned bit;
    } names[] = {{"null", JS_T_NULL},      {"boolean", JS_T_BOOL},  {"object", JS_T_OBJECT},
                 {"array", JS_T_ARRAY},    {"number", JS_T_NUMBER}, {"string", JS_T_STRING},
                 {"integer", JS_T_INTEGER}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(t, names[i].name) == 0) {
            *bits |= names[i].bit;
            return 0;
        }
    return PB_ECONFIG;
}

/* A list of subschemas (allOf, anyOf, oneOf, prefixItems). */
static int sub_list(struct cc *c, jv v, struct js_res *res, const char *ptr, const char *loc,
                    const char *key, struct js_node ***out, size_t *n, int depth)
{
    jv a = jv_object_get(jv_copy(v), jv_string(key));
    int rc = 0;
    if (!jv_is_valid(a))
        goto out;
    if (jv_get_kind(a) != JV_KIND_ARRAY || jv_array_length(jv_copy(a)) == 0) {
        rc = fail(c, loc, key, " must be a non-empty array of schemas");
        goto out;
    }
    size_t len = (size_t)jv_array_length(jv_copy(a));
    *out = calloc(len, sizeof(**out));
    if (!*out) {
        rc = pb_err_set(c->err, PB_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < len; i++) {
        char idx[24];
        int il = snprintf(idx, sizeof(idx), "%zu", i);
        jv e = jv_array_get(jv_copy(a), (int)i);
        (*out)[i] = sub(c, e, res, ptr, loc, key, idx, (size_t)il, depth);
        jv_free(e);
        if (!(*out)[i]) {
            rc = c->err->code ? c->err->code : PB_ECONFIG;
            goto out;
        }
        *n = i + 1;
    }
out:
    jv_free(a);
    return rc;
}

/* A map of names to subschemas (properties, patternProperties, $defs,
 * dependentSchemas). With out NULL the subschemas are compiled (so they are
 * registered) but not kept. */
static int sub_map(struct cc *c, jv v, struct js_res *res, const char *ptr, const char *loc,
                   const char *key, struct js_named **out, size_t *n, int depth)
{
    jv m = jv_object_get(jv_copy(v), jv_string(key));
    int rc = 0;
    if (!jv_is_valid(m))
        goto out;
    if (jv_get_kind(m) != JV_KIND_OBJECT) {
        rc = fail(c, loc, key, " must be an object of schemas");
        goto out;
    }
    size_t len = (size_t)jv_object_length(jv_copy(m));
    if (out) {
        *out = calloc(len ? len : 1, sizeof(**out));
        if (!*out) {
            rc = pb_err_set(c->err, PB_ENOMEM, "out of memory");
            goto out;
        }
    }
    jv_object_foreach(m, k, e)
    {
        struct js_node *s = NULL;
        if (rc == 0) {
            const char *name = jv_string_value(k);
            size_t nl = (size_t)jv_string_length_bytes(jv_copy(k));
            s = sub(c, e, res, ptr, loc, key, name, nl, depth);
            if (!s)
                rc = c->err->code ? c->err->code : PB_ECONFIG;
            else if (out) {
                struct js_named *nm = &(*out)[*n];
                nm->name = malloc(nl + 1);
                if (!nm->name) {
                    rc = pb_err_set(c->err, PB_ENOMEM, "out of memory");
                } else {
                    memcpy(nm->name, name, nl + 1);
                    nm->len = nl;
                    nm->s = s;
                    (*n)++;
                }
            }
        }
        jv_free(k);
        jv_free(e);
    }
out:
    jv_free(m);
    return rc;
}

static struct js_node *sub_one(struct cc *c, jv v, struct js_res *res, const char *ptr,
                               const char *loc, const char *key, int depth, int *rc)
{
    jv s = jv_object_get(jv_copy(v), jv_string(key));
    struct js_node *n = NULL;
    if (jv_is_valid(s)) {
        n = sub(c, s, res, ptr, loc, key, NULL, 0, depth);
        if (!n)
            *rc = c->err->code ? c->err->code : PB_ECONFIG;
    }
    jv_free(s);
    return n;
}

static int str_list(struct cc *c, jv a, const char *loc, const char *key, char ***out,
                    size_t **lens, size_t *n)
{
    if (jv_get_kind(a) != JV_KIND_ARRAY)
        return fail(c, loc, key, " must be an array of strings");
    size_t len = (size_t)jv_array_length(jv_copy(a));
    *out = calloc(len ? len : 1, sizeof(**out));
    *lens = calloc(len ? len : 1, sizeof(**lens));
    if (!*out || !*lens)
        return pb_err_set(c->err, PB_ENOMEM, "out of memory");
    for (size_t i = 0; i < len; i++) {
        jv e = jv_array_get(jv_copy(a), (int)i);
        if (jv_get_kind(e) != JV_KIND_STRING) {
            jv_free(e);
            return fail(c, loc, key, " must be an array of strings");
        }
        size_t l = (size_t)jv_string_length_bytes(jv_copy(e));
        (*out)[i] = malloc(l + 1);
        if (!(*out)[i]) {
            jv_free(e);
            return pb_err_set(c->err, PB_ENOMEM, "out of memory");
        }
        memcpy((*out)[i], jv_string_value(e), l + 1);
        (*lens)[i] = l;
        *n = i + 1;
        jv_free(e);
    }
    return 0;
}

static char *get_str(jv v, const char *key)
{
    jv s = jv_object_get(jv_copy(v), jv_string(key));
    char *r = NULL;
    if (jv_get_kind(s) == JV_KIND_STRING)
        r = strdup(jv_string_value(s));
    jv_free(s);
    return r;
}

static int has_key(jv v, const char *key)
{
    return jv_object_has(jv_copy(v), jv_string(key));
}

static struct js_res *res_new(struct js_schema *S, const char *uri)
{
    struct js_res *r = calloc(1, sizeof(*r));
    if (!r || !(r->uri = strdup(uri))) {
        free(r);
        return NULL;
    }
    r->next = S->res;
    S->res = r;
    return r;
}

static int add_dyn(struct js_res *r, const char *name, struct js_node *n)
{
    char **names = realloc(r->dyn_names, (r->ndyn + 1) * sizeof(*names));
    if (!names)
        return PB_ENOMEM;
    r->dyn_names = names;
    struct js_node **nodes = realloc(r->dyn_nodes, (r->ndyn + 1) * sizeof(*nodes));
    if (!nodes)
        return PB_ENOMEM;
    r->dyn_nodes = nodes;
    if (!(names[r->ndyn] = strdup(name)))
        return PB_ENOMEM;
    nodes[r->ndyn++] = n;
    return 0;
}

static int compile_keywords(struct cc *c, struct js_node *n, jv v, struct js_res *res,
                            const char *ptr, const char *loc, int depth)
{
    int rc = 0;
    jv t;

    /* type */
    t = jv_object_get(jv_copy(v), jv_string("type"));
    if (jv_get_kind(t) == JV_KIND_STRING) {
        if (type_bits(jv_string_value(t), &n->types) != 0)
            rc = fail(c, loc, "unknown type ", jv_string_value(t));
    } else if (jv_get_kind(t) == JV_KIND_ARRAY) {
        jv_array_foreach(t, i, e)
        {
            if (rc == 0 &&
                (jv_get_kind(e) != JV_KIND_STRING || type_bits(jv_string_value(e), &n->types) != 0))
                rc = fail(c, loc, "type", " must name JSON types");
            jv_free(e);
        }
    } else if (jv_is_valid(t)) {
        rc = fail(c, loc, "type", " must be a string or an array of strings");
    }
    jv_free(t);
    if (rc)
        return rc;
    if (has_key(v, "const")) {
        n->has_const = true;
        n->cnst = jv_object_get(jv_copy(v), jv_string("const"));
    }
    if (has_key(v, "enum")) {
        n->enm = jv_object_get(jv_copy(v), jv_string("enum"));
        n->has_enum = true;
        if (jv_get_kind(n->enm) != JV_KIND_ARRAY)
            return fail(c, loc, "enum", " must be an array");
    }
    if ((rc = get_num(c, v, "minimum", loc, &n->has_min, &n->min)) ||
        (rc = get_num(c, v, "maximum", loc, &n->has_max, &n->max)) ||
        (rc = get_num(c, v, "exclusiveMinimum", loc, &n->has_xmin, &n->xmin)) ||
        (rc = get_num(c, v, "exclusiveMaximum", loc, &n->has_xmax, &n->xmax)) ||
        (rc = get_num(c, v, "multipleOf", loc, &n->has_mult, &n->mult)))
        return rc;
    if (n->has_mult && !(n->mult > 0))
        return fail(c, loc, "multipleOf", " must be greater than 0");
    if ((rc = get_nonneg(c, v, "minLength", loc, &n->minlen)) ||
        (rc = get_nonneg(c, v, "maxLength", loc, &n->maxlen)) ||
        (rc = get_nonneg(c, v, "minItems", loc, &n->minitems)) ||
        (rc = get_nonneg(c, v, "maxItems", loc, &n->maxitems)) ||
        (rc = get_nonneg(c, v, "minProperties", loc, &n->minprops)) ||
        (rc = get_nonneg(c, v, "maxProperties", loc, &n->maxprops)) ||
        (rc = get_nonneg(c, v, "minContains", loc, &n->mincontains)) ||
        (rc = get_nonneg(c, v, "maxContains", loc, &n->maxcontains)))
        return rc;
    t = jv_object_get(jv_copy(v), jv_string("uniqueItems"));
    n->unique = jv_get_kind(t) == JV_KIND_TRUE;
    jv_free(t);
    t = jv_object_get(jv_copy(v), jv_string("pattern"));
    if (jv_get_kind(t) == JV_KIND_STRING) {
        n->pattern = js_re_compile(jv_string_value(t), (size_t)jv_string_length_bytes(jv_copy(t)));
        if (!n->pattern)
            rc = fail(c, loc, "pattern is not a regular expression: ", jv_string_value(t));
    } else if (jv_is_valid(t)) {
        rc = fail(c, loc, "pattern", " must be a string");
    }
    jv_free(t);
    if (rc)
        return rc;
    n->format = get_str(v, "format");

    /* applicators */
    if ((rc = sub_list(c, v, res, ptr, loc, "allOf", &n->allof, &n->nallof, depth)) ||
        (rc = sub_list(c, v, res, ptr, loc, "anyOf", &n->anyof, &n->nanyof, depth)) ||
        (rc = sub_list(c, v, res, ptr, loc, "oneOf", &n->oneof, &n->noneof, depth)) ||
        (rc = sub_list(c, v, res, ptr, loc, "prefixItems", &n->prefix, &n->nprefix, depth)))
        return rc;
    n->not_ = sub_one(c, v, res, ptr, loc, "not", depth, &rc);
    n->if_ = rc ? NULL : sub_one(c, v, res, ptr, loc, "if", depth, &rc);
    n->then_ = rc ? NULL : sub_one(c, v, res, ptr, loc, "then", depth, &rc);
    n->else_ = rc ? NULL : sub_one(c, v, res, ptr, loc, "else", depth, &rc);
    n->addprops = rc ? NULL : sub_one(c, v, res, ptr, loc, "additionalProperties", depth, &rc);
    n->propnames = rc ? NULL : sub_one(c, v, res, ptr, loc, "propertyNames", depth, &rc);
    n->uneval_props = rc ? NULL : sub_one(c, v, res, ptr, loc, "unevaluatedProperties", depth, &rc);
    n->items = rc ? NULL : sub_one(c, v, res, ptr, loc, "items", depth, &rc);
    n->contains = rc ? NULL : sub_one(c, v, res, ptr, loc, "contains", depth, &rc);
    n->uneval_items = rc ? NULL : sub_one(c, v, res, ptr, loc, "unevaluatedItems", depth, &rc);
    if (rc)
        return rc;
    if ((rc = sub_map(c, v, res, ptr, loc, "properties", &n->props, &n->nprops, depth)) ||
        (rc = sub_map(c, v, res, ptr, loc, "dependentSchemas", &n->depsch, &n->ndepsch, depth)) ||
        (rc = sub_map(c, v, res, ptr, loc, "$defs", NULL, NULL, depth)))
        return rc;
    /* patternProperties: names are regular expressions */
    struct js_named *pp = NULL;
    size_t npp = 0;
    rc = sub_map(c, v, res, ptr, loc, "patternProperties", &pp, &npp, depth);
    if (rc == 0 && npp) {
        n->pprops = calloc(npp, sizeof(*n->pprops));
        if (!n->pprops)
            rc = pb_err_set(c->err, PB_ENOMEM, "out of memory");
        for (size_t i = 0; rc == 0 && i < npp; i++) {
            n->pprops[i].s = pp[i].s;
            n->pprops[i].re = js_re_compile(pp[i].name, pp[i].len);
            if (!n->pprops[i].re)
                rc = fail(c, loc, "patternProperties has a bad regular expression: ", pp[i].name);
            n->npprops = i + 1;
        }
    }
    for (size_t i = 0; i < npp; i++)
        free(pp[i].name);
    free(pp);
    if (rc)
        return rc;
    t = jv_object_get(jv_copy(v), jv_string("required"));
    if (jv_is_valid(t))
        rc = str_list(c, t, loc, "required", &n->req, &n->reqlen, &n->nreq);
    jv_free(t);
    if (rc)
        return rc;
    t = jv_object_get(jv_copy(v), jv_string("dependentRequired"));
    if (jv_get_kind(t) == JV_KIND_OBJECT) {
        size_t len = (size_t)jv_object_length(jv_copy(t));
        n->depreq = calloc(len ? len : 1, sizeof(*n->depreq));
        if (!n->depreq)
            rc = pb_err_set(c->err, PB_ENOMEM, "out of memory");
        jv_object_foreach(t, k, e)
        {
            if (rc == 0) {
                struct js_depreq *d = &n->depreq[n->ndepreq++];
                d->len = (size_t)jv_string_length_bytes(jv_copy(k));
                d->name = malloc(d->len + 1);
                if (!d->name)
                    rc = pb_err_set(c->err, PB_ENOMEM, "out of memory");
                else
                    memcpy(d->name, jv_string_value(k), d->len + 1);
                if (rc == 0)
                    rc = str_list(c, e, loc, "dependentRequired", &d->req, &d->reqlen, &d->n);
            }
            jv_free(k);
            jv_free(e);
        }
    } else if (jv_is_valid(t)) {
        rc = fail(c, loc, "dependentRequired", " must be an object");
    }
    jv_free(t);
    if (rc)
        return rc;
    n->ref = get_str(v, "$ref");
    n->dref = get_str(v, "$dynamicRef");
    return 0;
}

static struct js_node *compile(struct cc *c, jv v, struct js_res *res, const char *ptr,
                               const char *loc, int depth)
{
    struct js_schema *S = c->S;
    struct js_node *n;
    char *own_ptr = NULL;
    int rc = 0;

    if (depth > MAX_SCHEMA_DEPTH) {
        fail(c, loc, "nested too deep", NULL);
        return NULL;
    }
    if (jv_get_kind(v) != JV_KIND_OBJECT && jv_get_kind(v) != JV_KIND_TRUE &&
        jv_get_kind(v) != JV_KIND_FALSE) {
        fail(c, loc, "a schema must be an object or a boolean", NULL);
        return NULL;
    }
    n = node_new(S);
    if (!n || !(n->loc = strdup(loc)))
        goto oom;
    n->res = res;
    if (jv_get_kind(v) != JV_KIND_OBJECT) {
        n->boolean = jv_get_kind(v) == JV_KIND_TRUE;
        if (reg_put(S, join(res->uri, "#", ptr), n))
            goto oom;
        return n;
    }
    char *id = get_str(v, "$id");
    if (id) {
        char *abs = js_uri_resolve(res->uri, id);
        free(id);
        if (!abs)
            goto oom;
        char *h = strchr(abs, '#');
        if (h)
            *h = 0;
        /* The subschema at its old place is still reachable by pointer. */
        if (reg_put(S, join(res->uri, "#", ptr), n)) {
            free(abs);
            goto oom;
        }
        struct js_res *r = res_new(S, abs);
        if (!r || (!doc_get(S, abs) && js_add_document(S, abs, jv_copy(v)) != 0)) {
            free(abs);
            goto oom;
        }
        free(abs);
        res = r;
        n->res = r;
        ptr = own_ptr = strdup("");
        if (!own_ptr)
            goto oom;
    }
    if (reg_put(S, join(res->uri, "#", ptr), n))
        goto oom;
    char *anchor = get_str(v, "$anchor");
    if (anchor) {
        rc = reg_put(S, join(res->uri, "#", anchor), n);
        free(anchor);
        if (rc)
            goto oom;
    }
    anchor = get_str(v, "$dynamicAnchor");
    if (anchor) {
        rc = reg_put(S, join(res->uri, "#", anchor), n);
        if (rc == 0)
            rc = add_dyn(res, anchor, n);
        free(anchor);
        if (rc)
            goto oom;
    }
    rc = compile_keywords(c, n, v, res, ptr, loc, depth);
    free(own_ptr);
    return rc ? NULL : n;
oom:
    free(own_ptr);
    pb_err_set(c->err, PB_ENOMEM, "out of memory");
    return NULL;
}

/* The value at JSON pointer ptr (decoded) in doc, or invalid. */
static jv pointer_get(jv doc, const char *ptr)
{
    jv cur = jv_copy(doc);
    const char *p = ptr;
    while (*p == '/') {
        p++;
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char *seg = malloc(len + 1), *o = seg;
        if (!seg) {
            jv_free(cur);
            return jv_invalid();
        }
        for (size_t i = 0; i < len; i++) {
            if (p[i] == '~' && i + 1 < len && (p[i + 1] == '0' || p[i + 1] == '1')) {
                *o++ = p[i + 1] == '0' ? '~' : '/';
                i++;
            } else {
                *o++ = p[i];
            }
        }
        *o = 0;
        if (jv_get_kind(cur) == JV_KIND_OBJECT) {
            cur = jv_object_get(cur, jv_string(seg));
        } else if (jv_get_kind(cur) == JV_KIND_ARRAY) {
            char *e;
            long idx = strtol(seg, &e, 10);
            if (*e || e == seg || idx < 0 || idx >= jv_array_length(jv_copy(cur))) {
                jv_free(cur);
                cur = jv_invalid();
            } else {
                cur = jv_array_get(cur, (int)idx);
            }
        } else {
            jv_free(cur);
            cur = jv_invalid();
        }
        free(seg);
        if (!jv_is_valid(cur))
            return cur;
        p += len;
    }
    return cur;
}

/* Compile a document as a resource of its own (a remote). */
static int compile_doc(struct cc *c, const char *uri, jv v)
{
    struct js_res *r = res_new(c->S, uri);
    if (!r)
        return pb_err_set(c->err, PB_ENOMEM, "out of memory");
    return compile(c, v, r, "", "", 0) ? 0 : (c->err->code ? c->err->code : PB_ECONFIG);
}

static struct js_node *resolve(struct cc *c, const struct js_node *from, const char *ref)
{
    struct js_schema *S = c->S;
    struct js_node *n = NULL;
    char *abs = js_uri_resolve(from->res->uri, ref);
    char *key = NULL;
    if (!abs) {
        pb_err_set(c->err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    char none[1] = "";
    char *h = strchr(abs, '#');
    char *frag = h ? h + 1 : none;
    if (h)
        *h = 0;
    js_pct_decode(frag);
    key = join(abs, "#", frag);
    if (!key)
        goto oom;
    n = reg_get(S, key);
    if (n)
        goto out;
    /* A document not compiled yet: added, or fetched by the loader. */
    bool known = false;
    for (struct js_res *r = S->res; r; r = r->next)
        if (strcmp(r->uri, abs) == 0)
            known = true;
    if (!known) {
        struct js_doc *d = doc_get(S, abs);
        jv doc = jv_invalid();
        if (d) {
            doc = jv_copy(d->v);
        } else if (S->opts.loader &&
                   S->loaded < (S->opts.max_documents ? S->opts.max_documents : 64)) {
            S->loaded++;
            if (S->opts.loader(S->opts.loader_arg, abs, &doc) == 0 &&
                js_add_document(S, abs, jv_copy(doc)) != 0) {
                jv_free(doc);
                goto oom;
            }
        }
        if (jv_is_valid(doc)) {
            int rc = compile_doc(c, abs, doc);
            jv_free(doc);
            if (rc)
                goto out;
            n = reg_get(S, key);
            if (n)
                goto out;
        } else {
            jv_free(doc);
        }
    }
    if (*frag == 0 || *frag == '/') {
        /* A pointer to a place no keyword made a schema of. */
        struct js_doc *d = doc_get(S, abs);
        jv v = d ? pointer_get(d->v, frag) : jv_invalid();
        if (jv_is_valid(v)) {
            struct js_res *r = NULL;
            for (struct js_res *x = S->res; x; x = x->next)
                if (strcmp(x->uri, abs) == 0)
                    r = x;
            if (r)
                n = compile(c, v, r, frag, frag, 0);
        }
        jv_free(v);
        if (n || c->err->code)
            goto out;
    }
    pb_err_set(c->err, PB_ECONFIG, "schema %s: cannot resolve reference \"%s\"",
               *from->loc ? from->loc : "(root)", ref);
    goto out;
oom:
    pb_err_set(c->err, PB_ENOMEM, "out of memory");
out:
    free(abs);
    free(key);
    return n;
}

static bool is_anchor_name(const char *ref)
{
    const char *h = strchr(ref, '#');
    return h && h[1] && h[1] != '/';
}

static int resolve_all(struct cc *c)
{
    for (size_t i = 0; i < c->S->nnodes; i++) {
        struct js_node *n = c->S->nodes[i];
        if (n->resolved)
            continue;
        n->resolved = true;
        if (n->ref && !(n->ref_node = resolve(c, n, n->ref)))
            return c->err->code ? c->err->code : PB_ECONFIG;
        if (n->dref) {
            if (!(n->dref_node = resolve(c, n, n->dref)))
                return c->err->code ? c->err->code : PB_ECONFIG;
            /* Dynamic only when the initial target is a $dynamicAnchor of
             * that name. */
            if (is_anchor_name(n->dref)) {
                const char *name = strchr(n->dref, '#') + 1;
                const struct js_res *r = n->dref_node->res;
                for (size_t k = 0; k < r->ndyn; k++)
                    if (strcmp(r->dyn_names[k], name) == 0 && r->dyn_nodes[k] == n->dref_node)
                        n->dref_anchor = r->dyn_names[k];
            }
        }
    }
    return 0;
}

struct js_schema *js_create(const struct js_opts *o)
{
    struct js_schema *S = calloc(1, sizeof(*S));
    if (!S)
        return NULL;
    if (o)
        S->opts = *o;
    S->md = pcre2_match_data_create(1, NULL);
    S->mctx = pcre2_match_context_create(NULL);
    if (!S->md || !S->mctx) {
        js_destroy(S);
        return NULL;
    }
    pcre2_set_match_limit(S->mctx, MATCH_LIMIT);
    pcre2_set_depth_limit(S->mctx, DEPTH_LIMIT);
    return S;
}

int js_compile(struct js_schema *S, jv root, struct pb_err *err)
{
    struct pb_err local = {0};
    struct cc c = {.S = S, .err = err ? err : &local};
    int rc;
    const char *base = S->opts.base_uri ? S->opts.base_uri : DEFAULT_BASE;
    char *b = strdup(base);
    if (!b) {
        jv_free(root);
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    }
    char *h = strchr(b, '#');
    if (h)
        *h = 0;
    struct js_res *r = res_new(S, b);
    rc = r ? js_add_document(S, b, jv_copy(root)) : PB_ENOMEM;
    free(b);
    if (rc) {
        jv_free(root);
        return pb_err_set(err, rc, "out of memory");
    }
    S->root = compile(&c, root, r, "", "", 0);
    jv_free(root);
    if (!S->root)
        return c.err->code ? c.err->code : PB_ECONFIG;
    return resolve_all(&c);
}

static void free_named(struct js_named *m, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(m[i].name);
    free(m);
}

static void node_free(struct js_node *n)
{
    free(n->loc);
    jv_free(n->cnst);
    jv_free(n->enm);
    if (n->pattern)
        pcre2_code_free(n->pattern);
    free(n->format);
    free(n->allof);
    free(n->anyof);
    free(n->oneof);
    free_named(n->props, n->nprops);
    for (size_t i = 0; i < n->npprops; i++)
        pcre2_code_free(n->pprops[i].re);
    free(n->pprops);
    free(n->prefix);
    for (size_t i = 0; i < n->nreq; i++)
        free(n->req[i]);
    free(n->req);
    free(n->reqlen);
    for (size_t i = 0; i < n->ndepreq; i++) {
        for (size_t k = 0; k < n->depreq[i].n; k++)
            free(n->depreq[i].req[k]);
        free(n->depreq[i].req);
        free(n->depreq[i].reqlen);
        free(n->depreq[i].name);
    }
    free(n->depreq);
    free_named(n->depsch, n->ndepsch);
    free(n->ref);
    free(n->dref);
    free(n);
}

void js_destroy(struct js_schema *S)
{
    if (!S)
        return;
    for (size_t i = 0; i < S->nnodes; i++)
        node_free(S->nodes[i]);
    free(S->nodes);
    while (S->res) {
        struct js_res *r = S->res;
        S->res = r->next;
        for (size_t i = 0; i < r->ndyn; i++)
            free(r->dyn_names[i]);
        free(r->dyn_names);
        free(r->dyn_nodes);
        free(r->uri);
        free(r);
    }
    for (size_t i = 0; i < S->nreg; i++)
        free(S->reg[i].key);
    free(S->reg);
    for (size_t i = 0; i < S->ndocs; i++) {
        free(S->docs[i].uri);
        jv_free(S->docs[i].v);
    }
    free(S->docs);
    if (S->md)
        pcre2_match_data_free(S->md);
    if (S->mctx)
        pcre2_match_context_free(S->mctx);
    free(S);
}
