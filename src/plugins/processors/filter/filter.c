/* filter.c - the filter processor: keep a message when a jq program says so.
 *
 *   filter: '.paid and .total_cents > 0'
 *   filter: { program: '.paid' }
 *
 * The program's first output decides: anything but false or null passes the
 * message on unchanged; false, null or no output drops it (PB_PROC_DROP). A
 * runtime error dead-letters the message rather than guessing. Only the first
 * output is computed: the program runs as first((PROGRAM)). */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

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
        .doc = "jq program; the message passes when its first output is not false or null",
    },
    {0},
};

static bool blank(const char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
        s++;
    return *s == 0;
}

static int filter_init(void *ctx, struct pb_err *err)
{
    static const char head[] = "first((", tail[] = "\n))"; /* \n ends a trailing # comment */
    struct filter_ctx *f = ctx;
    struct pb_jq *plain;
    char *wrapped = NULL;
    size_t len;
    int rc = 0;

    if (!f->program || blank(f->program))
        return pb_err_set(err, PB_ECONFIG, "filter: a jq program is required");
    /* Compile the program as written first: its errors are the ones to
     * show, and a text that only parses once wrapped (".) | (.") is refused. */
    plain = pb_jq_compile(f->program, err);
    if (!plain)
        return err ? err->code : PB_EJQ;
    pb_jq_destroy(plain);

    len = strlen(f->program);
    wrapped = malloc(sizeof(head) - 1 + len + sizeof(tail));
    if (!wrapped) {
        rc = pb_err_set(err, PB_ENOMEM, "filter: out of memory");
        goto out;
    }
    memcpy(wrapped, head, sizeof(head) - 1);
    memcpy(wrapped + sizeof(head) - 1, f->program, len);
    memcpy(wrapped + sizeof(head) - 1 + len, tail, sizeof(tail));
    f->q = pb_jq_compile(wrapped, err);
    if (!f->q)
        rc = err ? err->code : PB_EJQ;
out:
    free(wrapped);
    return rc;
}

static int filter_process(void *ctx, jv in, jv *out, struct pb_err *err)
{
    struct filter_ctx *f = ctx;
    jv res;
    size_t n = 0;
    bool pass;
    int rc;

    rc = pb_jq_run(f->q, jv_copy(in), &res, 1, &n, err);
    if (rc) {
        jv_free(in);
        return rc;
    }
    pass = n == 1 && pb_jq_truthy(res);
    if (n)
        jv_free(res);
    if (!pass) {
        jv_free(in);
        return PB_PROC_DROP;
    }
    *out = in;
    return PB_PROC_PASS;
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
