/* generate.c - the `generate` input: messages made by a jq program on a
 * timer, for demos, tests and load.
 *
 *   generate: { interval: 1s, count: 100, template: '{id: $meta.seq, at: now}' }
 *
 * Every interval it runs the template once per message of the batch, with
 * null as input and the message's 1-based sequence number in $meta.seq;
 * each value the program outputs is a message. The sequence number reached
 * is committed with the messages as the input's checkpoint, so a restart
 * goes on from there; with `count` the input finishes after that many
 * (`patchbay run --once` then exits once they are delivered). Each message
 * carries the idempotency key "generate:<seq>.<n>". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "patchbay/pb_jq.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_loop.h"
#include "patchbay/pb_plugin.h"

#define OUT_MAX 100 /* values one run of the template may output */

struct in_generate {
    /* options */
    int64_t interval_ms;
    int64_t count; /* 0: no end */
    int64_t batch;
    char *template;
    /* run time: the input's loop thread */
    struct pb_jq *q;
    struct pb_input *in;
    struct pb_loop_timer *timer;
    int64_t seq;  /* last sequence number committed */
    bool waiting; /* a batch is being committed */
    bool paused;
    bool stopped;
    char pipeline[128];
};

static const struct pb_field generate_fields[] = {
    {.name = "interval",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_generate, interval_ms),
     .def = "1s",
     .doc = "time between batches (0: as fast as they commit)"},
    {.name = "count",
     .type = PB_F_INT,
     .offset = offsetof(struct in_generate, count),
     .def = "0",
     .min = 0,
     .max = INT64_MAX,
     .doc = "sequence numbers to generate in all (0: no end)"},
    {.name = "batch",
     .type = PB_F_INT,
     .offset = offsetof(struct in_generate, batch),
     .def = "1",
     .min = 1,
     .max = PB_SUBMIT_MAX,
     .doc = "sequence numbers per interval"},
    {.name = "template",
     .type = PB_F_STR,
     .offset = offsetof(struct in_generate, template),
     .def = "{seq: $meta.seq}",
     .doc = "jq program run on null with $meta.seq; each output is a message"},
    {0},
};

static int generate_init(void *ctx, struct pb_input_env *env, struct pb_err *err)
{
    struct in_generate *g = ctx;
    if (env->once && g->count == 0)
        return pb_err_set(err, PB_ECONFIG,
                          "generate without count never finishes: set count for `run --once`");
    g->q = pb_jq_compile(g->template, err);
    if (!g->q)
        return err->code ? err->code : PB_EJQ;
    snprintf(g->pipeline, sizeof(g->pipeline), "%s", env->pipeline);
    env->idempotency_window_ms = 7LL * 24 * 3600 * 1000;
    return 0;
}

struct batch {
    struct in_generate *g;
    int64_t last; /* sequence number the batch ends at */
};

static void tick(struct in_generate *g);

static void submit_cb(void *arg, int status, const struct pb_item_result *res, size_t n)
{
    struct batch *b = arg;
    struct in_generate *g = b->g;
    (void)res;
    (void)n;
    g->waiting = false;
    if (status == 0) {
        g->seq = b->last;
    } else {
        PB_WARN("generate: batch not committed pipeline=%s error=\"%s\" (made again)", g->pipeline,
                pb_strerror(status));
    }
    free(b);
    if (g->count && g->seq >= g->count) {
        pb_input_finished(g->in);
        return;
    }
    if (!g->stopped && !g->paused)
        pb_loop_timer_start(g->timer, status == 0 ? g->interval_ms : 1000);
}

/* Make and submit the next batch. */
static void tick(struct in_generate *g)
{
    struct pb_item items[OUT_MAX];
    char *bodies[OUT_MAX];
    char keys[OUT_MAX][48];
    size_t nitems = 0;
    struct pb_err err = {0};
    int64_t last = g->seq;

    if (g->waiting || g->stopped || g->paused)
        return;
    for (int64_t k = 0; k < g->batch && (!g->count || last < g->count); k++) {
        int64_t seq = last + 1;
        jv out[OUT_MAX];
        size_t nout = 0;
        size_t room = OUT_MAX - nitems;
        if (room == 0)
            break;
        jv meta = jv_object_set(jv_object(), jv_string("seq"), jv_number((double)seq));
        if (pb_jq_run_meta(g->q, jv_null(), meta, out, room, &nout, &err) != 0) {
            PB_WARN("generate: template failed pipeline=%s seq=%lld error=\"%s\"", g->pipeline,
                    (long long)seq, err.msg);
            nout = 0;
        }
        for (size_t i = 0; i < nout; i++) {
            size_t len = 0;
            if (pb_jq_dump(out[i], &bodies[nitems], &len, &err) != 0) {
                for (size_t j = i + 1; j < nout; j++)
                    jv_free(out[j]);
                break;
            }
            snprintf(keys[nitems], sizeof(keys[0]), "generate:%lld.%zu", (long long)seq, i);
            items[nitems] =
                (struct pb_item){.body = bodies[nitems], .len = len, .key = keys[nitems]};
            nitems++;
        }
        last = seq;
    }
    if (last == g->seq)
        return;
    char ck[24];
    int cl = snprintf(ck, sizeof(ck), "%lld", (long long)last);
    struct pb_checkpoint cp = {.name = "seq", .value = ck, .len = (size_t)cl};
    struct batch *bt = malloc(sizeof(*bt));
    int rc = PB_ENOMEM;
    if (bt) {
        bt->g = g;
        bt->last = last;
        /* A template that outputs nothing still moves the sequence on. */
        rc = pb_input_submit(g->in, items, nitems, &cp, 1, submit_cb, bt);
    }
    for (size_t i = 0; i < nitems; i++)
        free(bodies[i]);
    if (rc == 0) {
        g->waiting = true;
        return;
    }
    free(bt);
    if (rc != PB_EFULL && rc != PB_ESHUTDOWN)
        pb_loop_timer_start(g->timer, 1000); /* PB_EFULL: paused; resume starts it again */
}

static void timer_cb(struct pb_loop_timer *t, void *arg)
{
    (void)t;
    tick(arg);
}

static int generate_start(void *ctx, struct pb_input *in, struct pb_err *err)
{
    struct in_generate *g = ctx;
    const void *v;
    size_t len;
    g->in = in;
    if (pb_input_checkpoint(in, "seq", &v, &len) == 0 && len < 24) {
        char buf[24];
        memcpy(buf, v, len);
        buf[len] = 0;
        g->seq = strtoll(buf, NULL, 10);
    }
    if (g->count && g->seq >= g->count) {
        pb_input_finished(in);
        return 0;
    }
    g->timer = pb_loop_timer_create(pb_input_loop(in), timer_cb, g);
    if (!g->timer)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    pb_loop_timer_start(g->timer, 0);
    return 0;
}

static void generate_pause(void *ctx)
{
    struct in_generate *g = ctx;
    g->paused = true;
    pb_loop_timer_stop(g->timer);
}

static void generate_resume(void *ctx)
{
    struct in_generate *g = ctx;
    g->paused = false;
    if (!g->waiting && g->timer)
        pb_loop_timer_start(g->timer, 0);
}

static void generate_stop(void *ctx)
{
    struct in_generate *g = ctx;
    g->stopped = true;
    pb_loop_timer_destroy(g->timer);
    g->timer = NULL;
}

static void generate_destroy(void *ctx)
{
    struct in_generate *g = ctx;
    pb_jq_destroy(g->q);
    g->q = NULL;
}

const struct pb_input_plugin pb_in_generate = {
    .name = "generate",
    .fields = generate_fields,
    .ctx_size = sizeof(struct in_generate),
    .flags = PB_INPUT_CAN_FINISH,
    .init = generate_init,
    .start = generate_start,
    .stop = generate_stop,
    .pause = generate_pause,
    .resume = generate_resume,
    .destroy = generate_destroy,
};
