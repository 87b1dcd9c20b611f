/* map.c - the map processor: a jq program turns the message into a new one.
 *
 *   map: '{order_id: .id, cents: .total_cents}'
 *   map: { program: '{order_id: .id}' }
 *
 * Exactly one output replaces the message; no output drops it on purpose
 * (e.g. `select(.paid)`); several outputs are an error that dead-letters the
 * message, since a map cannot fan out (split does). $meta is the message's
 * metadata. */
#include <stddef.h>

#include "patchbay/pb_jq.h"
#include "patchbay/pb_plugin.h"

/* Outputs collected before giving up on counting them. */
#define MAP_MAX_OUT 16

struct map_ctx {
    char *program; /* decoded by the core (scalar or `program:`), freed by it */
    struct pb_jq *q;
};

static const struct pb_field map_fields[] = {
    {
        .name = "program",
        .type = PB_F_STR,
        .offset = offsetof(struct map_ctx, program),
        .flags = PB_FIELD_REQUIRED,
        .doc = "jq program whose one output replaces the message",
    },
    {0},
};

static bool blank(const char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
        s++;
    return *s == 0;
}

static int map_init(void *ctx, const struct pb_proc_env *env, struct pb_err *err)
{
    struct map_ctx *m = ctx;

    (void)env;
    if (!m->program || blank(m->program))
        return pb_err_set(err, PB_ECONFIG, "map: a jq program is required");
    m->q = pb_jq_compile(m->program, err);
    if (!m->q)
        return err ? err->code : PB_EJQ;
    return 0;
}

static int map_process(void *ctx, struct pb_proc_io *io, jv in, struct pb_err *err)
{
    struct map_ctx *m = ctx;
    jv res[MAP_MAX_OUT];
    size_t n = 0;
    int rc;

    rc = pb_jq_run_meta(m->q, in, jv_copy(pb_proc_meta(io)), res, MAP_MAX_OUT, &n, err);
    if (rc)
        return rc;
    if (n == 0)
        return 0; /* dropped on purpose */
    if (n > 1) {
        size_t i;
        for (i = 0; i < n; i++)
            jv_free(res[i]);
        return pb_err_set(
            err, PB_EJQ, "map produced %zu values; expected one (split makes several messages)", n);
    }
    return pb_proc_emit(io, res[0], pb_proc_outputs(io));
}

static void map_destroy(void *ctx)
{
    struct map_ctx *m = ctx;

    if (!m)
        return;
    pb_jq_destroy(m->q);
    m->q = NULL;
}

const struct pb_processor_plugin pb_proc_map = {
    .name = "map",
    .fields = map_fields,
    .scalar_form = true,
    .scalar_offset = offsetof(struct map_ctx, program),
    .ctx_size = sizeof(struct map_ctx),
    .init = map_init,
    .process = map_process,
    .destroy = map_destroy,
};
