/* drop.c - the `drop` output: acknowledges every delivery and sends it
 * nowhere. For benchmarks and for pipelines still being built. */
#include "patchbay/pb_plugin.h"

static const struct pb_field drop_fields[] = {{0}};

static int drop_init(void *ctx, struct pb_output_env *env, struct pb_err *err)
{
    (void)ctx;
    (void)env;
    (void)err;
    return 0;
}

static void drop_deliver(void *ctx, struct pb_delivery *d)
{
    (void)ctx;
    struct pb_outcome o = {.result = PB_RESULT_OK, .retry_after_ms = -1};
    pb_delivery_done(d, &o);
}

const struct pb_output_plugin pb_out_drop = {
    .name = "drop",
    .fields = drop_fields,
    .ctx_size = 1,
    .default_concurrency = 64,
    .init = drop_init,
    .deliver = drop_deliver,
};
