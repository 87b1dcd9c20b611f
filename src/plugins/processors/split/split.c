/* split.c - the split processor: one message becomes one per value.
 *
 *   split: '.items[]'
 *   split: { program: '.lines[] | {sku, qty}', max: 1000 }
 *
 * Each value the jq program outputs becomes a message of its own, with its
 * own id (the parent's id and its position, "msg_...-1", "msg_...-2"),
 * linked to the message it came from, and the same $meta. No value drops
 * the message on purpose; more than `max` dead-letters it with the reason
 * (a bound on what one message may turn into). */
#include <stdlib.h>

#include "patchbay/pb_jq.h"
#include "patchbay/pb_plugin.h"

struct split_ctx {
    char *program; /* decoded by the core (scalar or `program:`), freed by it */
    int64_t max;
    struct pb_jq *q;
    jv *out; /* max slots, reused (one thread per context) */
};

static const struct pb_field split_fields[] = {
    {.name = "program",
     .type = PB_F_STR,
     .offset = offsetof(struct split_ctx, program),
     .flags = PB_FIELD_REQUIRED,
     .doc = "jq program; each value it outputs becomes a message"},
    {.name = "max",
     .type = PB_F_INT,
     .offset = offsetof(struct split_ctx, max),
     .def = "10000",
     .min = 1,
     .max = 100000,
     .doc = "values one message may split into; more dead-letters it"},
    {0},
};

static int split_init(void *ctx, const struct pb_proc_env *env, struct pb_err *err)
{
    struct split_ctx *s = ctx;

    (void)env;
    if (s->max == 0)
        s->max = 10000; /* scalar form: the field table's default is not applied */
    if (!s->program)
        return pb_err_set(err, PB_ECONFIG, "split: a jq program is required");
    s->q = pb_jq_compile(s->program, err);
    if (!s->q)
        return err ? err->code : PB_EJQ;
    s->out = calloc((size_t)s->max, sizeof(*s->out));
    return s->out ? 0 : pb_err_set(err, PB_ENOMEM, "out of memory");
}

static int split_process(void *ctx, struct pb_proc_io *io, jv in, struct pb_err *err)
{
    struct split_ctx *s = ctx;
    size_t n = 0;
    int rc = pb_jq_run_meta(s->q, in, jv_copy(pb_proc_meta(io)), s->out, (size_t)s->max, &n, err);

    if (rc)
        return rc;
    pb_proc_new_messages(io);
    for (size_t i = 0; i < n; i++) {
        if (rc == 0)
            rc = pb_proc_emit(io, s->out[i], pb_proc_outputs(io));
        else
            jv_free(s->out[i]);
    }
    return rc ? pb_err_set(err, rc, "split: too many messages from one") : 0;
}

static void split_destroy(void *ctx)
{
    struct split_ctx *s = ctx;

    if (!s)
        return;
    pb_jq_destroy(s->q);
    s->q = NULL;
    free(s->out);
    s->out = NULL;
}

const struct pb_processor_plugin pb_proc_split = {
    .name = "split",
    .fields = split_fields,
    .scalar_form = true,
    .scalar_offset = offsetof(struct split_ctx, program),
    .ctx_size = sizeof(struct split_ctx),
    .init = split_init,
    .process = split_process,
    .destroy = split_destroy,
};
