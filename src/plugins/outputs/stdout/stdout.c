/* stdout.c - the `stdout` output: writes each delivery as one line to
 * standard output. For debugging pipelines. */
#include <stdio.h>

#include "patchbay/pb_plugin.h"

static const struct pb_field stdout_fields[] = {{0}};

static int stdout_init(void *ctx, struct pb_output_env *env, struct pb_err *err)
{
    (void)ctx;
    (void)env;
    (void)err;
    return 0;
}

static void stdout_deliver(void *ctx, struct pb_delivery *d)
{
    (void)ctx;
    struct pb_outcome o = {.result = PB_RESULT_OK, .retry_after_ms = -1};
    if (fwrite(d->payload, 1, d->len, stdout) != d->len || fputc('\n', stdout) == EOF ||
        fflush(stdout) != 0) {
        o.result = PB_RESULT_RETRY;
        o.error = "write to stdout failed";
    }
    pb_delivery_done(d, &o);
}

const struct pb_output_plugin pb_out_stdout = {
    .name = "stdout",
    .fields = stdout_fields,
    .ctx_size = 1,
    .default_concurrency = 1,
    .init = stdout_init,
    .deliver = stdout_deliver,
};
