/* filter.c - the filter processor: keep the message when a jq condition
 * holds, drop it on purpose otherwise.
 *
 *   filter: '.cents > 0'
 *   filter: { program: '$meta.headers["x-github-event"] == "push"' }
 *
 * Only the condition's first output counts (jq truthiness: false and null
 * are false); no output is false. A dropped message goes to no output. */
#include <stddef.h>

#include "patchbay/pb_jq.h"
#include "patchbay/pb_plugin.h"

struct filter_ctx {
    char *program; /* decoded by the core (scalar or `program:`), freed by it */
    struct pb_jq *q;
};

static const struct pb_field filter_fields[] = {
    {
        .name = "program",
        .type = PB_F_STR,
        .offset = offsetof(struct filter_ctx, program),
        .flags = PB_FIELD_REQUIRED,
        .doc = "jq condition; the message goes on when its first output is true",
    },
    {0},
};

static bool blank(const char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
        s++;
    return *s == 0;
}

static int filter_init(void *ctx, const struct pb_proc_env *env, struct pb_err *err)
{
    struct filter_ctx *f = ctx;

    (void)env;
    if (!f->program || blank(f->program))
        return pb_err_set(err, PB_ECONFIG, "filter: a jq program is required");
    f->q = pb_jq_compile_predicate(f->program, err);
    return f->q ? 0 : (err ? err->code : PB_EJQ);
}

static int filter_process(void *ctx, struct pb_proc_io *io, jv in, struct pb_err *err)
{
    struct filter_ctx *f = ctx;
    bool pass;
    int rc = pb_jq_test(f->q, in, pb_proc_meta(io), &pass, err);

    if (rc || !pass) {
        jv_free(in);
        return rc;
    }
    return pb_proc_emit(io, in, pb_proc_outputs(io));
}

static void filter_destroy(void *ctx)
{
    struct filter_ctx *f = ctx;

    if (!f)
        return;
    pb_jq_destroy(f->q);
    f->q = NULL;
}

const struct pb_processor_plugin pb_proc_filter = {
    .name = "filter",
    .fields = filter_fields,
    .scalar_form = true,
    .scalar_offset = offsetof(struct filter_ctx, program),
    .ctx_size = sizeof(struct filter_ctx),
    .init = filter_init,
    .process = filter_process,
    .destroy = filter_destroy,
};
