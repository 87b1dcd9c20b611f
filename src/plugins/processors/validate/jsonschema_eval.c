/* jsonschema_eval.c - validating an instance against a compiled schema.
 *
 * A node is evaluated on one instance value and stops at its first failing
 * keyword. unevaluatedProperties and unevaluatedItems need to know what the
 * node's other keywords and its successful subschemas evaluated: a node
 * that has them, or whose caller collects for one, keeps a record of the
 * properties (by position among the object's keys) and items evaluated, and
 * hands it to its caller only when it is valid (annotations of a failed
 * subschema are dropped). The dynamic scope for $dynamicRef is a list on
 * the C stack of the resources entered, innermost first.
 *
 * Errors: the first failure is reported, with the instance pointer and the
 * keyword's place in the schema; failures under anyOf, oneOf, not and if
 * are not what failed (they are expected), so only the combinator is.
 *
 * Threads: the caller's (one at a time per schema). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonschema_int.h"

#define MAX_EVAL_DEPTH 256

struct scope {
    const struct js_res *res;
    const struct scope *up;
};

/* What a node evaluated of its instance (object keys or array items). */
struct ev {
    size_t n;          /* keys or items */
    jv *keys;          /* sorted keys of an object (borrowed from the record's owner) */
    unsigned char *on; /* n flags */
};

struct vc {
    struct js_schema *S;
    struct js_error *e;
    bool have; /* e is filled */
    int quiet; /* > 0: failures are expected (under anyOf, oneOf, not, if) */
    int depth;
    int rc; /* an error that ends validation (depth, regex limit, memory) */
    char ipath[JS_PTR_MAX * 2];
    size_t ilen;
};

static int eval(struct vc *c, const struct js_node *n, jv inst, const struct scope *sc,
                struct ev *up);

__attribute__((format(printf, 4, 5))) static int failed(struct vc *c, const struct js_node *n,
                                                        const char *kw, const char *fmt, ...)
{
    if (c->quiet || c->have)
        return 0;
    c->have = true;
    snprintf(c->e->instance, sizeof(c->e->instance), "%.*s", (int)c->ilen, c->ipath);
    snprintf(c->e->schema, sizeof(c->e->schema), "%s/%s", n->loc, kw);
    snprintf(c->e->keyword, sizeof(c->e->keyword), "%s", kw);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->e->msg, sizeof(c->e->msg), fmt, ap);
    va_end(ap);
    return 0;
}

/* Descend into the instance: push a pointer segment, return the old length. */
static size_t ipush(struct vc *c, const char *seg, size_t len)
{
    size_t old = c->ilen;
    if (c->ilen + 1 < sizeof(c->ipath))
        c->ipath[c->ilen++] = '/';
    for (size_t i = 0; i < len && c->ilen + 2 < sizeof(c->ipath); i++) {
        if (seg[i] == '~' || seg[i] == '/') {
            c->ipath[c->ilen++] = '~';
            c->ipath[c->ilen++] = seg[i] == '~' ? '0' : '1';
        } else {
            c->ipath[c->ilen++] = seg[i];
        }
    }
    return old;
}

static size_t ipush_idx(struct vc *c, size_t i)
{
    char b[24];
    int l = snprintf(b, sizeof(b), "%zu", i);
    return ipush(c, b, (size_t)l);
}

static const char *kind_name(jv v)
{
    switch (jv_get_kind(v)) {
    case JV_KIND_NULL:
        return "null";
    case JV_KIND_TRUE:
    case JV_KIND_FALSE:
        return "boolean";
    case JV_KIND_OBJECT:
        return "object";
    case JV_KIND_ARRAY:
        return "array";
    case JV_KIND_NUMBER:
        return jv_number_value(v) == floor(jv_number_value(v)) ? "integer" : "number";
    case JV_KIND_STRING:
        return "string";
    default:
        return "invalid";
    }
}

static bool equal(jv a, jv b)
{
    return jv_equal(jv_copy(a), jv_copy(b));
}

static bool type_ok(unsigned types, jv v)
{
    switch (jv_get_kind(v)) {
    case JV_KIND_NULL:
        return types & JS_T_NULL;
    case JV_KIND_TRUE:
    case JV_KIND_FALSE:
        return types & JS_T_BOOL;
    case JV_KIND_OBJECT:
        return types & JS_T_OBJECT;
    case JV_KIND_ARRAY:
        return types & JS_T_ARRAY;
    case JV_KIND_STRING:
        return types & JS_T_STRING;
    case JV_KIND_NUMBER: {
        if (types & JS_T_NUMBER)
            return true;
        double d = jv_number_value(v);
        return (types & JS_T_INTEGER) && isfinite(d) && d == floor(d);
    }
    default:
        return false;
    }
}

static void types_text(unsigned t, char *buf, size_t len)
{
    static const char *const names[] = {"null",   "boolean", "object", "array",
                                        "number", "string",  "integer"};
    size_t n = 0;
    buf[0] = 0;
    for (int i = 0; i < 7; i++)
        if (t & (1u << i))
            n +=
                (size_t)snprintf(buf + n, n < len ? len - n : 0, "%s%s", n ? " or " : "", names[i]);
}

/* ---- records of what was evaluated ------------------------------------------------------- */

static int key_cmp(const void *a, const void *b)
{
    jv x = *(const jv *)a, y = *(const jv *)b;
    int lx = jv_string_length_bytes(jv_copy(x)), ly = jv_string_length_bytes(jv_copy(y));
    int m = memcmp(jv_string_value(x), jv_string_value(y), (size_t)(lx < ly ? lx : ly));
    return m ? m : (lx > ly) - (lx < ly);
}

/* Position of key among sorted keys, or -1. */
static long key_index(const struct ev *r, jv key)
{
    size_t lo = 0, hi = r->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = key_cmp(&r->keys[mid], &key);
        if (c == 0)
            return (long)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

/* Start a record for inst; keys borrowed from up when it is for the same
 * instance, else made here (*own_keys set). */
static int ev_init(struct ev *r, jv inst, const struct ev *up, bool *own_keys)
{
    memset(r, 0, sizeof(*r));
    *own_keys = false;
    if (jv_get_kind(inst) == JV_KIND_ARRAY) {
        r->n = (size_t)jv_array_length(jv_copy(inst));
    } else if (jv_get_kind(inst) == JV_KIND_OBJECT) {
        if (up && up->keys) {
            r->keys = up->keys;
            r->n = up->n;
        } else {
            r->n = (size_t)jv_object_length(jv_copy(inst));
            r->keys = calloc(r->n ? r->n : 1, sizeof(jv));
            if (!r->keys)
                return PB_ENOMEM;
            size_t i = 0;
            jv_object_foreach(inst, k, v)
            {
                jv_free(v);
                r->keys[i++] = k;
            }
            qsort(r->keys, r->n, sizeof(jv), key_cmp);
            *own_keys = true;
        }
    } else {
        return 0;
    }
    r->on = calloc(r->n ? r->n : 1, 1);
    return r->on ? 0 : PB_ENOMEM;
}

static void ev_free(struct ev *r, bool own_keys)
{
    if (own_keys) {
        for (size_t i = 0; i < r->n; i++)
            jv_free(r->keys[i]);
        free(r->keys);
    }
    free(r->on);
}

static void ev_merge(struct ev *into, const struct ev *from)
{
    if (!into || !into->on || !from->on || into->n != from->n)
        return;
    for (size_t i = 0; i < into->n; i++)
        into->on[i] |= from->on[i];
}

static void mark_key(struct ev *r, jv key)
{
    if (r && r->keys) {
        long i = key_index(r, key);
        if (i >= 0)
            r->on[i] = 1;
    }
}

static void mark_item(struct ev *r, size_t i)
{
    if (r && r->on && !r->keys && i < r->n)
        r->on[i] = 1;
}

/* ---- keywords ----------------------------------------------------------------------------- */

/* A subschema on the same instance, its failure expected or not. */
static bool apply(struct vc *c, const struct js_node *s, jv inst, const struct scope *sc,
                  struct ev *r, bool quiet)
{
    c->quiet += quiet;
    bool ok = eval(c, s, inst, sc, r) > 0;
    c->quiet -= quiet;
    return ok;
}

static bool numbers(struct vc *c, const struct js_node *n, double d)
{
    if (n->has_min && d < n->min)
        return failed(c, n, "minimum", "%.17g is less than the minimum %.17g", d, n->min);
    if (n->has_max && d > n->max)
        return failed(c, n, "maximum", "%.17g is greater than the maximum %.17g", d, n->max);
    if (n->has_xmin && d <= n->xmin)
        return failed(c, n, "exclusiveMinimum", "%.17g is not greater than %.17g", d, n->xmin);
    if (n->has_xmax && d >= n->xmax)
        return failed(c, n, "exclusiveMaximum", "%.17g is not less than %.17g", d, n->xmax);
    if (n->has_mult) {
        double q = d / n->mult;
        bool ok;
        if (isfinite(q))
            ok = fabs(q - nearbyint(q)) <= 1e-9 * fmax(1.0, fabs(q));
        else /* past a double: an integer is a multiple of 1/k */
            ok = d == floor(d) && 1 / n->mult == floor(1 / n->mult);
        if (!ok)
            return failed(c, n, "multipleOf", "%.17g is not a multiple of %.17g", d, n->mult);
    }
    return true;
}

static bool strings(struct vc *c, const struct js_node *n, jv inst)
{
    const char *s = jv_string_value(inst);
    size_t bytes = (size_t)jv_string_length_bytes(jv_copy(inst));
    if (n->minlen >= 0 || n->maxlen >= 0) {
        int64_t len = jv_string_length_codepoints(jv_copy(inst));
        if (n->minlen >= 0 && len < n->minlen)
            return failed(c, n, "minLength", "%lld characters, fewer than %lld", (long long)len,
                          (long long)n->minlen);
        if (n->maxlen >= 0 && len > n->maxlen)
            return failed(c, n, "maxLength", "%lld characters, more than %lld", (long long)len,
                          (long long)n->maxlen);
    }
    if (n->pattern) {
        int m = js_re_match(c->S, n->pattern, s, bytes);
        if (m < 0) {
            c->rc = m;
            failed(c, n, "pattern", "the pattern took too long to match");
            return false;
        }
        if (!m)
            return failed(c, n, "pattern", "does not match the pattern");
    }
    if (n->format && c->S->opts.assert_formats && !js_format_ok(n->format, s, bytes))
        return failed(c, n, "format", "not a valid %s", n->format);
    return true;
}

static bool objects(struct vc *c, const struct js_node *n, jv inst, const struct scope *sc,
                    struct ev *r)
{
    int64_t count = jv_object_length(jv_copy(inst));
    if (n->minprops >= 0 && count < n->minprops)
        return failed(c, n, "minProperties", "%lld properties, fewer than %lld", (long long)count,
                      (long long)n->minprops);
    if (n->maxprops >= 0 && count > n->maxprops)
        return failed(c, n, "maxProperties", "%lld properties, more than %lld", (long long)count,
                      (long long)n->maxprops);
    for (size_t i = 0; i < n->nreq; i++) {
        jv k = jv_string_sized(n->req[i], (int)n->reqlen[i]);
        bool has = jv_object_has(jv_copy(inst), k);
        if (!has)
            return failed(c, n, "required", "required property \"%s\" is missing", n->req[i]);
    }
    for (size_t i = 0; i < n->ndepreq; i++) {
        const struct js_depreq *d = &n->depreq[i];
        if (!jv_object_has(jv_copy(inst), jv_string_sized(d->name, (int)d->len)))
            continue;
        for (size_t k = 0; k < d->n; k++)
            if (!jv_object_has(jv_copy(inst), jv_string_sized(d->req[k], (int)d->reqlen[k])))
                return failed(c, n, "dependentRequired", "property \"%s\" requires property \"%s\"",
                              d->name, d->req[k]);
    }
    for (size_t i = 0; i < n->ndepsch; i++) {
        const struct js_named *d = &n->depsch[i];
        if (!jv_object_has(jv_copy(inst), jv_string_sized(d->name, (int)d->len)))
            continue;
        if (!apply(c, d->s, inst, sc, r, false))
            return false;
    }
    bool ok = true;
    jv_object_foreach(inst, k, v)
    {
        if (!ok) {
            jv_free(k);
            jv_free(v);
            continue;
        }
        const char *name = jv_string_value(k);
        size_t nl = (size_t)jv_string_length_bytes(jv_copy(k));
        bool matched = false;
        size_t old = ipush(c, name, nl);
        if (n->propnames) {
            size_t keep = c->ilen;
            c->ilen = old; /* a name is checked at the object's place */
            if (eval(c, n->propnames, k, sc, NULL) <= 0) {
                ok = false;
                if (!c->have && !c->quiet)
                    failed(c, n, "propertyNames", "property name \"%s\" is not allowed", name);
            }
            c->ilen = keep;
        }
        for (size_t i = 0; ok && i < n->nprops; i++) {
            if (n->props[i].len == nl && memcmp(n->props[i].name, name, nl) == 0) {
                matched = true;
                ok = eval(c, n->props[i].s, v, sc, NULL) > 0;
            }
        }
        for (size_t i = 0; ok && i < n->npprops; i++) {
            int m = js_re_match(c->S, n->pprops[i].re, name, nl);
            if (m < 0) {
                c->rc = m;
                ok = false;
                failed(c, n, "patternProperties", "a pattern took too long to match");
            } else if (m) {
                matched = true;
                ok = eval(c, n->pprops[i].s, v, sc, NULL) > 0;
            }
        }
        if (ok && !matched && n->addprops) {
            if (n->addprops->boolean == 0) {
                ok = false;
                failed(c, n, "additionalProperties", "property \"%s\" is not allowed", name);
            } else {
                ok = eval(c, n->addprops, v, sc, NULL) > 0;
            }
            matched = true;
        }
        c->ilen = old;
        if (ok && matched)
            mark_key(r, k);
        jv_free(k);
        jv_free(v);
    }
    return ok;
}

static bool unevaluated_props(struct vc *c, const struct js_node *n, jv inst,
                              const struct scope *sc, struct ev *r)
{
    bool ok = true;
    for (size_t i = 0; ok && i < r->n; i++) {
        if (r->on[i])
            continue;
        jv v = jv_object_get(jv_copy(inst), jv_copy(r->keys[i]));
        const char *name = jv_string_value(r->keys[i]);
        size_t old = ipush(c, name, (size_t)jv_string_length_bytes(jv_copy(r->keys[i])));
        c->quiet += n->uneval_props->boolean == 0;
        ok = eval(c, n->uneval_props, v, sc, NULL) > 0;
        c->quiet -= n->uneval_props->boolean == 0;
        if (!ok && n->uneval_props->boolean == 0)
            failed(c, n, "unevaluatedProperties", "property \"%s\" is not allowed", name);
        c->ilen = old;
        jv_free(v);
        r->on[i] = 1;
    }
    return ok;
}

static bool arrays(struct vc *c, const struct js_node *n, jv inst, const struct scope *sc,
                   struct ev *r)
{
    size_t len = (size_t)jv_array_length(jv_copy(inst));
    if (n->minitems >= 0 && (int64_t)len < n->minitems)
        return failed(c, n, "minItems", "%zu items, fewer than %lld", len, (long long)n->minitems);
    if (n->maxitems >= 0 && (int64_t)len > n->maxitems)
        return failed(c, n, "maxItems", "%zu items, more than %lld", len, (long long)n->maxitems);
    if (n->unique) {
        for (size_t i = 0; i < len; i++)
            for (size_t k = i + 1; k < len; k++) {
                jv a = jv_array_get(jv_copy(inst), (int)i), b = jv_array_get(jv_copy(inst), (int)k);
                bool same = jv_equal(a, b);
                if (same)
                    return failed(c, n, "uniqueItems", "items %zu and %zu are equal", i, k);
            }
    }
    for (size_t i = 0; i < len; i++) {
        const struct js_node *s = i < n->nprefix ? n->prefix[i] : n->items;
        if (!s)
            break;
        jv v = jv_array_get(jv_copy(inst), (int)i);
        size_t old = ipush_idx(c, i);
        bool ok = eval(c, s, v, sc, NULL) > 0;
        c->ilen = old;
        jv_free(v);
        if (!ok)
            return false;
        mark_item(r, i);
    }
    if (n->contains) {
        int64_t matches = 0;
        c->quiet++;
        for (size_t i = 0; i < len; i++) {
            jv v = jv_array_get(jv_copy(inst), (int)i);
            if (eval(c, n->contains, v, sc, NULL) > 0) {
                matches++;
                mark_item(r, i);
            }
            jv_free(v);
        }
        c->quiet--;
        int64_t min = n->mincontains >= 0 ? n->mincontains : 1;
        if (matches < min)
            return failed(c, n, n->mincontains >= 0 ? "minContains" : "contains",
                          "%lld items match \"contains\", fewer than %lld", (long long)matches,
                          (long long)min);
        if (n->maxcontains >= 0 && matches > n->maxcontains)
            return failed(c, n, "maxContains", "%lld items match \"contains\", more than %lld",
                          (long long)matches, (long long)n->maxcontains);
    }
    return true;
}

static bool unevaluated_items(struct vc *c, const struct js_node *n, jv inst,
                              const struct scope *sc, struct ev *r)
{
    for (size_t i = 0; i < r->n; i++) {
        if (r->on[i])
            continue;
        jv v = jv_array_get(jv_copy(inst), (int)i);
        size_t old = ipush_idx(c, i);
        c->quiet += n->uneval_items->boolean == 0;
        bool ok = eval(c, n->uneval_items, v, sc, NULL) > 0;
        c->quiet -= n->uneval_items->boolean == 0;
        jv_free(v);
        if (!ok) {
            if (n->uneval_items->boolean == 0)
                failed(c, n, "unevaluatedItems", "item %zu is not allowed", i);
            c->ilen = old;
            return false;
        }
        c->ilen = old;
        r->on[i] = 1;
    }
    return true;
}

/* The target of a $dynamicRef: the outermost resource in scope with a
 * $dynamicAnchor of that name, else the initial target. */
static const struct js_node *dynamic_target(const struct js_node *n, const struct scope *sc)
{
    const struct js_node *found = NULL;
    for (const struct scope *s = sc; s; s = s->up)
        for (size_t k = 0; k < s->res->ndyn; k++)
            if (strcmp(s->res->dyn_names[k], n->dref_anchor) == 0)
                found = s->res->dyn_nodes[k];
    return found ? found : n->dref_node;
}

/* 1 valid, 0 invalid; c->rc set when validation cannot go on. */
static int eval_node(struct vc *c, const struct js_node *n, jv inst, const struct scope *sc,
                     struct ev *r)
{
    bool ok = true;
    if (n->ref_node && !apply(c, n->ref_node, inst, sc, r, false))
        return 0;
    if (n->dref_node) {
        const struct js_node *t = n->dref_anchor ? dynamic_target(n, sc) : n->dref_node;
        if (!apply(c, t, inst, sc, r, false))
            return 0;
    }
    if (n->types && !type_ok(n->types, inst)) {
        char want[80];
        types_text(n->types, want, sizeof(want));
        return failed(c, n, "type", "expected %s, got %s", want, kind_name(inst));
    }
    if (n->has_const && !equal(n->cnst, inst))
        return failed(c, n, "const", "not the constant value");
    if (n->has_enum) {
        bool any = false;
        jv_array_foreach(n->enm, i, e)
        {
            if (!any && equal(e, inst))
                any = true;
            jv_free(e);
        }
        if (!any)
            return failed(c, n, "enum", "not one of the allowed values");
    }
    switch (jv_get_kind(inst)) {
    case JV_KIND_NUMBER:
        ok = numbers(c, n, jv_number_value(inst));
        break;
    case JV_KIND_STRING:
        ok = strings(c, n, inst);
        break;
    case JV_KIND_OBJECT:
        ok = objects(c, n, inst, sc, r);
        break;
    case JV_KIND_ARRAY:
        ok = arrays(c, n, inst, sc, r);
        break;
    default:
        break;
    }
    if (!ok || c->rc)
        return 0;
    for (size_t i = 0; i < n->nallof; i++)
        if (!apply(c, n->allof[i], inst, sc, r, false))
            return 0;
    if (n->nanyof) {
        bool any = false;
        for (size_t i = 0; i < n->nanyof && !c->rc; i++) {
            if (apply(c, n->anyof[i], inst, sc, r, true)) {
                any = true;
                if (!r)
                    break; /* no annotations to collect from the others */
            }
        }
        if (c->rc)
            return 0;
        if (!any)
            return failed(c, n, "anyOf", "matches none of the %zu schemas", n->nanyof);
    }
    if (n->noneof) {
        size_t hits = 0, first = 0;
        for (size_t i = 0; i < n->noneof && !c->rc; i++) {
            if (apply(c, n->oneof[i], inst, sc, hits ? NULL : r, true)) {
                if (hits++ == 0)
                    first = i;
            }
        }
        if (c->rc)
            return 0;
        if (hits != 1)
            return hits ? failed(c, n, "oneOf",
                                 "matches schemas %zu and more of oneOf, not exactly one", first)
                        : failed(c, n, "oneOf", "matches none of the %zu schemas", n->noneof);
    }
    if (n->not_) {
        if (apply(c, n->not_, inst, sc, NULL, true))
            return failed(c, n, "not", "matches the schema it must not");
        if (c->rc)
            return 0;
    }
    if (n->if_) {
        if (apply(c, n->if_, inst, sc, r, true)) {
            if (n->then_ && !apply(c, n->then_, inst, sc, r, false))
                return 0;
        } else {
            if (c->rc)
                return 0;
            if (n->else_ && !apply(c, n->else_, inst, sc, r, false))
                return 0;
        }
    }
    if (n->uneval_props && jv_get_kind(inst) == JV_KIND_OBJECT &&
        !unevaluated_props(c, n, inst, sc, r))
        return 0;
    if (n->uneval_items && jv_get_kind(inst) == JV_KIND_ARRAY &&
        !unevaluated_items(c, n, inst, sc, r))
        return 0;
    return 1;
}

/* Evaluate n on inst (borrowed); merge what it evaluated into up when valid. */
static int eval(struct vc *c, const struct js_node *n, jv inst, const struct scope *sc,
                struct ev *up)
{
    if (n->boolean >= 0) {
        if (n->boolean == 0)
            failed(c, n, "false", "no value is allowed here");
        return n->boolean;
    }
    if (c->rc)
        return 0;
    if (++c->depth > MAX_EVAL_DEPTH) {
        c->depth--;
        c->rc = PB_ETOOBIG;
        failed(c, n, "$ref", "schema references nest deeper than %d", MAX_EVAL_DEPTH);
        return 0;
    }
    struct scope here = {.res = n->res, .up = sc};
    if (!sc || sc->res != n->res)
        sc = &here;
    bool collect = up || n->uneval_props || n->uneval_items;
    jv_kind kind = jv_get_kind(inst);
    collect = collect && (kind == JV_KIND_OBJECT || kind == JV_KIND_ARRAY);
    struct ev rec;
    bool own = false;
    int ok;
    if (collect) {
        if (ev_init(&rec, inst, up, &own) != 0) {
            c->rc = PB_ENOMEM;
            c->depth--;
            return 0;
        }
        ok = eval_node(c, n, inst, sc, &rec);
        if (ok > 0)
            ev_merge(up, &rec);
        ev_free(&rec, own);
    } else {
        ok = eval_node(c, n, inst, sc, NULL);
    }
    c->depth--;
    return ok;
}

int js_validate(struct js_schema *S, jv inst, struct js_error *e)
{
    struct vc c = {.S = S, .e = e};
    memset(e, 0, sizeof(*e));
    if (!S->root)
        return PB_EINVAL;
    int ok = eval(&c, S->root, inst, NULL, NULL);
    if (c.rc)
        return c.rc;
    if (ok > 0)
        return 0;
    if (!c.have)
        snprintf(e->msg, sizeof(e->msg), "invalid");
    return 1;
}
