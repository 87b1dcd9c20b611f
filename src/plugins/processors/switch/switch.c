/* switch.c - the switch processor: choose the outputs a message goes to.
 *
 *   - switch:
 *       - { when: '.cents >= 100000', to: [payments, fraud-review] }
 *       - { when: '$meta.headers["x-github-event"] == "push"', to: [ci] }
 *       - { otherwise: [payments] }
 *
 * Cases are tried in order; the first whose `when` holds (jq truthiness of
 * its first output) decides, and `otherwise` (last, at most once) decides
 * when none does. The message goes on to the chosen outputs (among those it
 * still had); the others get nothing and are recorded as routed away. When
 * no case holds and there is no otherwise, it goes to no output at all. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "patchbay/pb_jq.h"
#include "patchbay/pb_plugin.h"

#define SWITCH_MAX_CASES 256

struct case_raw {
    char *when;
    struct pb_strlist to;
    struct pb_strlist otherwise;
    bool has_otherwise;
};

struct sw_case {
    struct pb_jq *when; /* NULL: otherwise */
    pb_outset to;
};

struct switch_ctx {
    const struct pb_node *cases_node; /* borrowed from the document */
    struct sw_case *cases;
    size_t ncases;
};

static const struct pb_field case_fields[] = {
    {.name = "when",
     .type = PB_F_STR,
     .offset = offsetof(struct case_raw, when),
     .doc = "jq condition; the first case that holds decides"},
    {.name = "to",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct case_raw, to),
     .doc = "outputs the message goes to when this case decides"},
    {.name = "otherwise",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct case_raw, otherwise),
     .doc = "outputs when no case holds (last case only)"},
    {0},
};

/* The mask of the outputs named in l, or an error at node n. */
static int resolve(const struct pb_strlist *l, const struct pb_proc_env *env,
                   const struct pb_node *n, pb_outset *mask, struct pb_err *err)
{
    *mask = 0;
    for (size_t i = 0; i < l->n; i++) {
        size_t j;
        for (j = 0; j < env->noutputs; j++)
            if (strcmp(env->outputs[j], l->items[i]) == 0)
                break;
        if (j == env->noutputs) {
            char avail[256] = "";
            for (size_t k = 0; k < env->noutputs; k++) {
                size_t used = strlen(avail);
                snprintf(avail + used, sizeof(avail) - used, "%s%s", k ? ", " : "",
                         env->outputs[k]);
            }
            return pb_err_at(err, PB_ECONFIG, n->file, n->line, n->col,
                             "switch: no output \"%s\" in pipeline \"%s\" (outputs: %s)",
                             l->items[i], env->pipeline, avail);
        }
        *mask |= (pb_outset)1 << j;
    }
    return 0;
}

static int switch_init(void *ctx, const struct pb_proc_env *env, struct pb_err *err)
{
    struct switch_ctx *s = ctx;
    const struct pb_node *list = s->cases_node;

    if (!list || list->type != PB_NODE_SEQ || list->n == 0)
        return pb_err_set(err, PB_ECONFIG,
                          "switch takes a list of cases: {when: JQ, to: [outputs]} and one "
                          "{otherwise: [outputs]}");
    if (list->n > SWITCH_MAX_CASES)
        return pb_err_at(err, PB_ECONFIG, list->file, list->line, list->col,
                         "switch: at most %d cases", SWITCH_MAX_CASES);
    s->cases = calloc(list->n, sizeof(*s->cases));
    if (!s->cases)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    for (size_t i = 0; i < list->n; i++) {
        const struct pb_node *n = list->vals[i];
        struct case_raw raw = {0};
        struct sw_case *c = &s->cases[i];
        int rc = pb_conf_decode(n, case_fields, &raw, err);
        raw.has_otherwise = pb_node_get(n, "otherwise") != NULL;
        s->ncases = i + 1;
        if (rc == 0 && raw.has_otherwise && (raw.when || raw.to.n))
            rc = pb_err_at(err, PB_ECONFIG, n->file, n->line, n->col,
                           "switch: a case has either when and to, or otherwise alone");
        else if (rc == 0 && raw.has_otherwise && i + 1 != list->n)
            rc = pb_err_at(err, PB_ECONFIG, n->file, n->line, n->col,
                           "switch: otherwise must be the last case");
        else if (rc == 0 && !raw.has_otherwise && (!raw.when || !pb_node_get(n, "to")))
            rc = pb_err_at(err, PB_ECONFIG, n->file, n->line, n->col,
                           "switch: a case needs when and to (or otherwise)");
        if (rc == 0)
            rc = resolve(raw.has_otherwise ? &raw.otherwise : &raw.to, env, n, &c->to, err);
        if (rc == 0 && raw.when) {
            c->when = pb_jq_compile_predicate(raw.when, err);
            if (!c->when) {
                const struct pb_node *w = pb_node_get(n, "when");
                if (w && err)
                    err->file = w->file, err->line = w->line, err->col = w->col;
                rc = err && err->code ? err->code : PB_ECONFIG;
            }
        }
        pb_conf_free(case_fields, &raw);
        if (rc)
            return rc;
    }
    return 0;
}

static int switch_process(void *ctx, struct pb_proc_io *io, jv in, struct pb_err *err)
{
    struct switch_ctx *s = ctx;

    for (size_t i = 0; i < s->ncases; i++) {
        struct sw_case *c = &s->cases[i];
        bool hit = true;
        if (c->when) {
            int rc = pb_jq_test(c->when, in, pb_proc_meta(io), &hit, err);
            if (rc) {
                jv_free(in);
                return pb_err_set(err, rc, "switch case %zu: %s", i + 1, err->msg);
            }
        }
        if (hit)
            return pb_proc_emit(io, in, pb_proc_outputs(io) & c->to);
    }
    return pb_proc_emit(io, in, 0); /* no case held: every output is routed away */
}

static void switch_destroy(void *ctx)
{
    struct switch_ctx *s = ctx;

    if (!s)
        return;
    for (size_t i = 0; i < s->ncases; i++)
        pb_jq_destroy(s->cases[i].when);
    free(s->cases);
    s->cases = NULL;
    s->ncases = 0;
}

const struct pb_processor_plugin pb_proc_switch = {
    .name = "switch",
    .seq_form = true,
    .node_offset = offsetof(struct switch_ctx, cases_node),
    .ctx_size = sizeof(struct switch_ctx),
    .init = switch_init,
    .process = switch_process,
    .destroy = switch_destroy,
};
