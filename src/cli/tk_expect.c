/* tk_expect.c - what a case of `patchbay test` expects, checked against
 * what each output got, and the report of a failing case: a diff of the
 * bodies, the paths where a subset differs, the condition that was false,
 * the outcomes an output ended with instead.
 *
 * Single-threaded (the runner's). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/tk_int.h"
#include "core/mock.h"
#include "patchbay/pb_jq.h"

#define SUMMARY_MAX 160

const char *tk_kind_name(enum kind k)
{
    switch (k) {
    case K_DELIVERED:
        return "delivered";
    case K_DEAD:
        return "dead letter";
    case K_ROUTED_AWAY:
        return "routed away";
    case K_FILTERED:
        return "filtered";
    case K_REJECTED:
        return "rejected";
    }
    return "?";
}

/* ---- reports ------------------------------------------------------------------------------- */

__attribute__((format(printf, 2, 3))) void tk_problem(struct run *r, const char *fmt, ...)
{
    va_list ap;
    r->problems++;
    fputs("    ", r->rep);
    va_start(ap, fmt);
    vfprintf(r->rep, fmt, ap);
    va_end(ap);
    fputc('\n', r->rep);
}

void tk_problem_err(struct run *r, const struct pb_err *err)
{
    char buf[PB_ERR_MSG_MAX + 256];
    tk_problem(r, "%s", pb_err_format(err, buf, sizeof(buf)));
}

int tk_at_err(struct pb_err *err, const struct pb_node *n, const char *fmt, ...)
{
    char msg[PB_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return pb_err_at(err, PB_EINVAL, n->file, n->line, n->col, "%s", msg);
}

/* A one-line picture of an outcome. */
void tk_summary(const struct outcome *oc, char *buf, size_t len)
{
    char where[48] = "";
    if (oc->part)
        snprintf(where, sizeof(where), " (item %zu, part %zu)", oc->item, oc->part);
    else
        snprintf(where, sizeof(where), " (item %zu)", oc->item);
    if (oc->kind == K_DELIVERED) {
        char body[SUMMARY_MAX + 1];
        size_t n = oc->len < SUMMARY_MAX ? oc->len : SUMMARY_MAX;
        for (size_t i = 0; i < n; i++)
            body[i] = oc->payload[i] == '\n' ? ' ' : oc->payload[i];
        body[n] = 0;
        if (oc->len > SUMMARY_MAX)
            memcpy(body + SUMMARY_MAX - 3, "...", 4);
        snprintf(buf, len, "delivered on attempt %d%s: %s", oc->attempts, where, body);
    } else {
        snprintf(buf, len, "%s%s%s%s", tk_kind_name(oc->kind), where, oc->reason ? ": " : "",
                 oc->reason ? oc->reason : "");
    }
}

static void list_got(struct run *r, const struct outlist *l)
{
    char buf[SUMMARY_MAX + PB_ERR_MSG_MAX];
    if (l->n == 0)
        fprintf(r->rep, "      got nothing\n");
    for (size_t i = 0; i < l->n; i++) {
        tk_summary(&l->v[i], buf, sizeof(buf));
        fprintf(r->rep, "      got %zu: %s\n", i + 1, buf);
    }
}

/* ---- expectations -------------------------------------------------------------------------- */

static bool is_word(const struct pb_node *n, const char *w)
{
    return n->type == PB_NODE_SCALAR && !n->quoted && strcmp(n->str, w) == 0;
}

static const char *const matcher_keys[] = {"equals", "subset", "jq",       "raw",
                                           "meta",   "fields", "attempts", NULL};

static bool is_matcher(const struct pb_node *n)
{
    if (n->type != PB_NODE_MAP || n->n == 0)
        return false;
    for (size_t i = 0; i < n->n; i++) {
        bool known = false;
        for (size_t k = 0; matcher_keys[k] && !known; k++)
            known = strcmp(n->keys[i]->str, matcher_keys[k]) == 0;
        if (!known)
            return false;
    }
    return true;
}

static bool is_dead_spec(const struct pb_node *n)
{
    return n->type == PB_NODE_MAP && n->n == 1 && strcmp(n->keys[0]->str, "dead_letter") == 0;
}

/* Where want and got (borrowed) differ, for a subset: at most max lines. */
static void subset_diff(struct run *r, jv want, jv got, char *path, size_t plen, int *left)
{
    if (*left <= 0)
        return;
    jv_kind k = jv_get_kind(want);
    if (k == JV_KIND_OBJECT && jv_get_kind(got) == JV_KIND_OBJECT) {
        size_t used = strlen(path);
        for (int it = jv_object_iter(want); jv_object_iter_valid(want, it) && *left > 0;
             it = jv_object_iter_next(want, it)) {
            jv key = jv_object_iter_key(want, it);
            jv wv = jv_object_iter_value(want, it);
            jv gv = jv_object_get(jv_copy(got), jv_copy(key));
            snprintf(path + used, plen - used, ".%s", jv_string_value(key));
            if (!jv_is_valid(gv)) {
                char *w = tk_compact(wv, 120);
                fprintf(r->rep, "      at %s: missing (expected %s)\n", path, w ? w : "?");
                free(w);
                (*left)--;
            } else if (!pb_jv_subset(wv, gv)) {
                subset_diff(r, wv, gv, path, plen, left);
            }
            path[used] = 0;
            jv_free(key);
            jv_free(wv);
            jv_free(gv);
        }
        return;
    }
    if (k == JV_KIND_ARRAY && jv_get_kind(got) == JV_KIND_ARRAY &&
        jv_array_length(jv_copy(want)) == jv_array_length(jv_copy(got))) {
        size_t used = strlen(path);
        int n = jv_array_length(jv_copy(want));
        for (int i = 0; i<n && * left> 0; i++) {
            jv wv = jv_array_get(jv_copy(want), i), gv = jv_array_get(jv_copy(got), i);
            snprintf(path + used, plen - used, "[%d]", i);
            if (!pb_jv_subset(wv, gv))
                subset_diff(r, wv, gv, path, plen, left);
            path[used] = 0;
            jv_free(wv);
            jv_free(gv);
        }
        return;
    }
    char *w = tk_compact(want, 120), *g = tk_compact(got, 120);
    fprintf(r->rep, "      at %s: expected %s, got %s\n", path[0] ? path : ".", w ? w : "?",
            g ? g : "?");
    free(w);
    free(g);
    (*left)--;
}

static struct pb_jq *condition(struct run *r, const char *text, struct pb_err *err)
{
    for (struct qcache *c = *r->cache; c; c = c->next)
        if (strcmp(c->text, text) == 0)
            return c->q;
    struct qcache *c = calloc(1, sizeof(*c));
    if (!c || !(c->text = strdup(text))) {
        free(c);
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    c->q = pb_jq_compile_predicate(text, err);
    if (!c->q) {
        free(c->text);
        free(c);
        return NULL;
    }
    c->next = *r->cache;
    *r->cache = c;
    return c->q;
}

/* Compare one delivered outcome with a matcher (or an exact value). */
static void match_delivery(struct run *r, const char *label, const struct outcome *oc,
                           const struct pb_node *spec)
{
    jv body = jv_invalid(), meta = jv_null();
    struct pb_err perr = {0};
    bool json = pb_jq_parse(oc->payload, oc->len, &body, &perr) == 0;
    if (oc->meta && pb_jq_parse(oc->meta, strlen(oc->meta), &meta, NULL) != 0)
        meta = jv_null();
    const struct pb_node *equals = spec, *subset = NULL, *cond = NULL, *raw = NULL,
                         *meta_spec = NULL, *fields = NULL, *attempts = NULL;
    if (is_matcher(spec)) {
        equals = pb_node_get(spec, "equals");
        subset = pb_node_get(spec, "subset");
        cond = pb_node_get(spec, "jq");
        raw = pb_node_get(spec, "raw");
        meta_spec = pb_node_get(spec, "meta");
        fields = pb_node_get(spec, "fields");
        attempts = pb_node_get(spec, "attempts");
    }
    struct pb_err err = {0};
    if ((equals || subset || cond) && !json) {
        tk_problem(r, "%s: the delivered body is not JSON jq can carry (%s): %.*s", label, perr.msg,
                   (int)(oc->len > 200 ? 200 : oc->len), oc->payload);
        goto out;
    }
    if (equals) {
        jv want;
        if (tk_node_jv(equals, &want, &err)) {
            tk_problem_err(r, &err);
            goto out;
        }
        if (!jv_equal(jv_copy(want), jv_copy(body))) {
            tk_problem(r, "%s: body differs (- expected, + delivered)", label);
            char *a = tk_pretty(want), *b = tk_pretty(body);
            tk_diff(r->rep, a ? a : "", b ? b : "", "      ", r->o->color);
            free(a);
            free(b);
        }
        jv_free(want);
    }
    if (subset) {
        jv want;
        if (tk_node_jv(subset, &want, &err)) {
            tk_problem_err(r, &err);
            goto out;
        }
        if (!pb_jv_subset(want, body)) {
            char path[512] = "";
            int left = 10;
            tk_problem(r, "%s: body does not contain the expected subset", label);
            subset_diff(r, want, body, path, sizeof(path), &left);
        }
        jv_free(want);
    }
    if (cond) {
        struct pb_jq *q = cond->type == PB_NODE_SCALAR ? condition(r, cond->str, &err) : NULL;
        bool truth = false;
        if (!q) {
            pb_err_at(&err, PB_EJQ, cond->file, cond->line, cond->col, "jq: %s",
                      err.msg[0] ? err.msg : "a jq condition");
            tk_problem_err(r, &err);
        } else if (pb_jq_test(q, body, meta, &truth, &err) != 0) {
            tk_problem(r, "%s: condition `%s` failed: %s", label, cond->str, err.msg);
        } else if (!truth) {
            char *b = tk_compact(body, 400);
            tk_problem(r, "%s: condition `%s` is false for %s", label, cond->str, b ? b : "?");
            free(b);
        }
    }
    if (raw) {
        if (raw->type != PB_NODE_SCALAR) {
            tk_problem(r, "%s:%d:%d: raw is text", raw->file, raw->line, raw->col);
        } else if (raw->len != oc->len || memcmp(raw->str, oc->payload, oc->len) != 0) {
            char *got = strndup(oc->payload, oc->len);
            tk_problem(r, "%s: bytes differ (- expected, + delivered)", label);
            tk_diff(r->rep, raw->str, got ? got : "", "      ", r->o->color);
            free(got);
        }
    }
    if (meta_spec) {
        jv want;
        if (tk_node_jv(meta_spec, &want, &err)) {
            tk_problem_err(r, &err);
            goto out;
        }
        if (!pb_jv_subset(want, meta)) {
            char path[512] = "$meta";
            int left = 10;
            tk_problem(r, "%s: $meta does not contain the expected members", label);
            subset_diff(r, want, meta, path, sizeof(path), &left);
        }
        jv_free(want);
    }
    if (fields) {
        if (fields->type != PB_NODE_MAP) {
            tk_problem(r, "%s:%d:%d: fields is a map of option to rendered text", fields->file,
                       fields->line, fields->col);
        }
        for (size_t i = 0; fields->type == PB_NODE_MAP && i < fields->n; i++) {
            const char *name = fields->keys[i]->str;
            const struct pb_node *v = fields->vals[i];
            bool found = false;
            for (size_t k = 0; k < oc->nfields && !found; k++) {
                /* oc->fields[k] is "name\0value" (name_fields). */
                if (strcmp(oc->fields[k], name) != 0)
                    continue;
                found = true;
                const char *val = oc->fields[k] + strlen(oc->fields[k]) + 1;
                if (v->type != PB_NODE_SCALAR || strcmp(v->str, val) != 0)
                    tk_problem(r, "%s: field %s is \"%s\", expected \"%s\"", label, name, val,
                               v->type == PB_NODE_SCALAR ? v->str : "(not text)");
            }
            if (!found) {
                char names[512] = "";
                for (size_t k = 0; k < oc->nfields; k++)
                    snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
                             k ? ", " : "", oc->fields[k]);
                tk_problem(r, "%s: the output has no template field %s (it has: %s)", label, name,
                           oc->nfields ? names : "none");
            }
        }
    }
    if (attempts) {
        int64_t n;
        if (attempts->type != PB_NODE_SCALAR || pb_parse_int(attempts->str, &n))
            tk_problem(r, "%s:%d:%d: attempts is a number", attempts->file, attempts->line,
                       attempts->col);
        else if (n != oc->attempts)
            tk_problem(r, "%s: delivered on attempt %d, expected attempt %lld", label, oc->attempts,
                       (long long)n);
    }
out:
    jv_free(body);
    jv_free(meta);
}

/* Does the reason of a dead letter match spec (text it contains, or true)? */
static bool reason_matches(const struct pb_node *spec, const char *reason)
{
    if (is_word(spec, "true"))
        return true;
    return spec->type == PB_NODE_SCALAR && reason && strstr(reason, spec->str);
}

static void match_one(struct run *r, const char *label, const struct outcome *oc,
                      const struct pb_node *spec)
{
    char got[SUMMARY_MAX + PB_ERR_MSG_MAX];
    tk_summary(oc, got, sizeof(got));
    if (is_word(spec, "routed_away") || is_word(spec, "filtered")) {
        enum kind want = is_word(spec, "filtered") ? K_FILTERED : K_ROUTED_AWAY;
        if (oc->kind != want)
            tk_problem(r, "%s: expected %s, got %s", label, tk_kind_name(want), got);
        return;
    }
    if (is_dead_spec(spec)) {
        const struct pb_node *why = spec->vals[0];
        if (oc->kind != K_DEAD)
            tk_problem(r, "%s: expected a dead letter, got %s", label, got);
        else if (!reason_matches(why, oc->reason))
            tk_problem(r, "%s: dead letter \"%s\" does not contain \"%s\"", label, oc->reason,
                       why->type == PB_NODE_SCALAR ? why->str : "?");
        return;
    }
    if (oc->kind != K_DELIVERED) {
        tk_problem(r, "%s: expected a delivery, got %s", label, got);
        return;
    }
    match_delivery(r, label, oc, spec);
}

void tk_check_output(struct run *r, const struct pb_output *o, const struct pb_node *spec)
{
    const struct outlist *l = &r->outs[o->index];
    char label[PB_NAME_MAX + 32];
    if (is_word(spec, "routed_away") || is_word(spec, "filtered") || is_word(spec, "nothing")) {
        bool ok = true;
        for (size_t i = 0; i < l->n; i++) {
            enum kind k = l->v[i].kind;
            if (is_word(spec, "nothing"))
                ok &= k != K_DELIVERED && k != K_DEAD;
            else
                ok &= k == (is_word(spec, "filtered") ? K_FILTERED : K_ROUTED_AWAY);
        }
        if (!is_word(spec, "nothing") && l->n == 0)
            ok = false;
        if (!ok) {
            tk_problem(r, "%s: expected %s", o->name, spec->str);
            list_got(r, l);
        }
        return;
    }
    const struct pb_node *one = is_dead_spec(spec) ? spec : NULL;
    if (!one && spec->type != PB_NODE_SEQ) {
        tk_problem(r,
                   "%s:%d:%d: output %s: expected a list of deliveries, routed_away, filtered, "
                   "nothing or {dead_letter: REASON}",
                   spec->file, spec->line, spec->col, o->name);
        return;
    }
    size_t want = one ? 1 : spec->n;
    if (want != l->n) {
        tk_problem(r, "%s: expected %zu outcome%s, got %zu", o->name, want, want == 1 ? "" : "s",
                   l->n);
        list_got(r, l);
        if (want < l->n || l->n == 0)
            return;
    }
    for (size_t i = 0; i < want && i < l->n; i++) {
        snprintf(label, sizeof(label), "%s[%zu]", o->name, i + 1);
        match_one(r, label, &l->v[i], one ? one : spec->vals[i]);
    }
}

/* The route stage's dead letters, or the rejected items, against spec
 * (text, true, or a list of them). */
void tk_check_stage(struct run *r, const char *what, const struct outlist *l,
                    const struct pb_node *spec)
{
    char got[SUMMARY_MAX + PB_ERR_MSG_MAX];
    if (!spec) {
        for (size_t i = 0; i < l->n; i++) {
            tk_summary(&l->v[i], got, sizeof(got));
            tk_problem(r, "unexpected %s", got);
        }
        return;
    }
    size_t want = spec->type == PB_NODE_SEQ ? spec->n : 1;
    if (want != l->n) {
        tk_problem(r, "expected %zu %s%s, got %zu", want, what, want == 1 ? "" : "s", l->n);
        list_got(r, l);
        return;
    }
    for (size_t i = 0; i < want; i++) {
        const struct pb_node *s = spec->type == PB_NODE_SEQ ? spec->vals[i] : spec;
        if (!reason_matches(s, l->v[i].reason))
            tk_problem(r, "%s %zu: \"%s\" does not contain \"%s\"", what, i + 1, l->v[i].reason,
                       s->type == PB_NODE_SCALAR ? s->str : "?");
    }
}

void tk_show_all(struct run *r)
{
    char got[SUMMARY_MAX + PB_ERR_MSG_MAX];
    for (size_t j = 0; j < r->pl->nouts; j++)
        for (size_t i = 0; i < r->outs[j].n; i++) {
            tk_summary(&r->outs[j].v[i], got, sizeof(got));
            fprintf(r->rep, "    %s[%zu]: %s\n", r->pl->outs[j].name, i + 1, got);
        }
    for (size_t i = 0; i < r->route.n; i++) {
        tk_summary(&r->route.v[i], got, sizeof(got));
        fprintf(r->rep, "    route stage: %s\n", got);
    }
}

void tk_qcache_free(struct qcache *c)
{
    while (c) {
        struct qcache *next = c->next;
        free(c->text);
        pb_jq_destroy(c->q);
        free(c);
        c = next;
    }
}
