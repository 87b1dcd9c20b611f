/* output.c - the core's side of outputs: what init may register (template
 * fields), what a running output may report (its connection state), and
 * its life cycle: start (on the dispatcher's loop, or on one of the
 * output's worker threads when its client library blocks), retried with
 * backoff until it succeeds; stop once the dispatcher has let what was in
 * flight finish. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dispatch_int.h"
#include "core/template.h"
#include "core/workers.h"
#include "patchbay/pb_log.h"

#define START_RETRY_MIN_MS 1000
#define START_RETRY_MAX_MS 30000
#define DEFAULT_BATCH_MAX 100
#define DEFAULT_ATTEMPT_TIMEOUT_MS 30000
#define TEMPLATES_MAX 16

const char *pb__output_state_name(enum pb_output_state s)
{
    switch (s) {
    case PB_OUTPUT_STARTING:
        return "starting";
    case PB_OUTPUT_CONNECTED:
        return "connected";
    case PB_OUTPUT_RECONNECTING:
        return "reconnecting";
    case PB_OUTPUT_STOPPED:
        return "stopped";
    }
    return "unknown";
}

/* ---- init ------------------------------------------------------------------------------- */

static int template_add_cb(struct pb_output_env *env, const char *text, struct pb_err *err)
{
    struct pb_output *o = env->core;
    if (!text)
        return pb_err_set(err, PB_EINVAL, "a template needs its text");
    if (o->ntmpls == TEMPLATES_MAX)
        return pb_err_set(err, PB_ECONFIG, "output %s: more than %d template fields", o->name,
                          TEMPLATES_MAX);
    struct pb_template *t = pb_template_compile(text, err);
    if (!t)
        return err && err->code ? err->code : PB_ECONFIG;
    struct pb_template **ts = realloc(o->tmpls, (o->ntmpls + 1) * sizeof(*ts));
    if (!ts) {
        pb_template_destroy(t);
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    }
    o->tmpls = ts;
    ts[o->ntmpls] = t;
    o->uses_meta |= pb_template_uses_meta(t);
    return (int)o->ntmpls++;
}

int pb__output_init(struct pb_output *o, struct pb_http_client *http, struct pb_err *err)
{
    o->env = (struct pb_output_env){
        .pipeline = o->pl->name,
        .output = o->name,
        .http = http,
        .allow = o->allow,
        .template_add = template_add_cb,
        .core = o,
    };
    int rc = o->plugin->init ? o->plugin->init(o->ctx, &o->env, err) : 0;
    if (rc)
        return rc;
    if (o->env.batch_max == 0)
        o->env.batch_max = DEFAULT_BATCH_MAX;
    if (o->env.attempt_timeout_ms <= 0)
        o->env.attempt_timeout_ms = DEFAULT_ATTEMPT_TIMEOUT_MS;
    return 0;
}

void pb__output_cleanup(struct pb_output *o)
{
    for (size_t i = 0; i < o->ntmpls; i++)
        pb_template_destroy(o->tmpls[i]);
    free(o->tmpls);
    o->tmpls = NULL;
    o->ntmpls = 0;
    free(o->detail);
    o->detail = NULL;
    pthread_mutex_destroy(&o->slock);
}

/* ---- what a running output reports ----------------------------------------------------- */

struct pb_loop *pb_output_loop(struct pb_output *o)
{
    return o->disp->loop;
}

struct pb_dispatcher *pb__dispatcher_of(struct pb_output *o)
{
    return o->disp;
}

const char *pb_output_name(const struct pb_output *o)
{
    return o->name;
}

const char *pb_output_pipeline(const struct pb_output *o)
{
    return o->pl->name;
}

void pb_output_set_state(struct pb_output *o, enum pb_output_state state, const char *detail)
{
    char *copy = detail ? strdup(detail) : NULL;
    int old = atomic_exchange(&o->state, (int)state);
    pthread_mutex_lock(&o->slock);
    free(o->detail);
    o->detail = copy;
    pthread_mutex_unlock(&o->slock);
    if (old == (int)state)
        return;
    char safe[256];
    if (state == PB_OUTPUT_RECONNECTING)
        PB_WARN("output reconnecting pipeline=%s output=%s error=\"%s\"", o->pl->name, o->name,
                pb_log_value(detail ? detail : "", safe, sizeof(safe)));
    else if (state == PB_OUTPUT_CONNECTED && old == PB_OUTPUT_RECONNECTING)
        PB_INFO("output connected again pipeline=%s output=%s", o->pl->name, o->name);
}

/* Copy of the detail text into buf (the admin API). */
void pb__output_detail(struct pb_output *o, char *buf, size_t len)
{
    pthread_mutex_lock(&o->slock);
    snprintf(buf, len, "%s", o->detail ? o->detail : "");
    pthread_mutex_unlock(&o->slock);
}

/* ---- start and stop ---------------------------------------------------------------------- */

struct start_job {
    struct pb_job job;
    struct pb__disp_post post; /* back to the dispatcher with the outcome */
    struct pb_output *o;
    int rc;
    struct pb_err err;
};

static void start_finished(struct pb_dispatcher *d, struct pb_output *o, int rc,
                           const struct pb_err *err, int64_t now)
{
    o->starting = false;
    if (rc == 0) {
        /* Connected, unless the plugin said otherwise; a failed start
         * before this one left the core's own "reconnecting". */
        bool retried = o->start_retry_ms != 0;
        o->started = true;
        pb__output_kv_drop(o); /* start has read it */
        o->start_retry_ms = 0;
        o->start_again_at = 0;
        if (atomic_load(&o->state) == PB_OUTPUT_STARTING || retried)
            pb_output_set_state(o, PB_OUTPUT_CONNECTED, NULL);
        return;
    }
    o->start_retry_ms = o->start_retry_ms ? o->start_retry_ms * 2 : START_RETRY_MIN_MS;
    if (o->start_retry_ms > START_RETRY_MAX_MS)
        o->start_retry_ms = START_RETRY_MAX_MS;
    o->start_again_at = now + o->start_retry_ms;
    char msg[PB_ERR_MSG_MAX + 64];
    snprintf(msg, sizeof(msg), "%s (starting again in %lld ms)",
             err->msg[0] ? err->msg : pb_strerror(rc), (long long)o->start_retry_ms);
    pb_output_set_state(o, PB_OUTPUT_RECONNECTING, msg);
    (void)d;
}

static void start_done_post(struct pb_dispatcher *d, struct pb__disp_post *p, int64_t now)
{
    struct start_job *sj = (struct start_job *)((char *)p - offsetof(struct start_job, post));
    if (now >= 0)
        start_finished(d, sj->o, sj->rc, &sj->err, now);
    free(sj);
}

static void start_job_cb(struct pb_job *job, int cancelled)
{
    struct start_job *sj = (struct start_job *)job;
    struct pb_output *o = sj->o;
    sj->rc = cancelled ? PB_ESHUTDOWN : o->plugin->start(o->ctx, o, &sj->err);
    sj->post.fn = start_done_post;
    pb__disp_post(pb__dispatcher_of(o), &sj->post);
}

/* Dispatcher thread: start o if it is due (first turn, or a retry). */
void pb__output_maybe_start(struct pb_dispatcher *d, struct pb_output *o, int64_t now,
                            int64_t *wait)
{
    if (o->is_virtual) {
        /* A sub-output goes with its output. */
        o->started = o->parent->started;
        o->workers = o->parent->workers;
        return;
    }
    if (o->started || o->starting)
        return;
    if (o->start_again_at && now < o->start_again_at) {
        if (o->start_again_at - now < *wait)
            *wait = o->start_again_at - now;
        return;
    }
    if (!o->plugin->start && !o->plugin->workers) {
        start_finished(d, o, 0, NULL, now);
        return;
    }
    if (o->plugin->workers && !o->workers) {
        struct pb_err err = {0};
        char name[16];
        snprintf(name, sizeof(name), "pb-%.8s", o->name);
        o->workers = pb_workers_create(name, o->plugin->workers, &err);
        if (!o->workers) {
            start_finished(d, o, err.code ? err.code : PB_ENOMEM, &err, now);
            return;
        }
    }
    if (!o->plugin->start) {
        start_finished(d, o, 0, NULL, now);
        return;
    }
    if (o->workers) {
        struct start_job *sj = calloc(1, sizeof(*sj));
        if (!sj) {
            struct pb_err err = {.msg = "out of memory"};
            start_finished(d, o, PB_ENOMEM, &err, now);
            return;
        }
        sj->job.fn = start_job_cb;
        sj->o = o;
        o->starting = true;
        if (pb_workers_post(o->workers, &sj->job) != 0) {
            o->starting = false;
            free(sj);
        }
        return;
    }
    struct pb_err err = {0};
    int rc = o->plugin->start(o->ctx, o, &err);
    start_finished(d, o, rc, &err, now);
}

struct stop_job {
    struct pb_job job;
    struct pb_output *o;
};

static void stop_job_cb(struct pb_job *job, int cancelled)
{
    struct stop_job *sj = (struct stop_job *)job;
    if (!cancelled && sj->o->plugin->stop)
        sj->o->plugin->stop(sj->o->ctx);
    free(sj);
}

/* After the dispatcher's thread is gone: stop o (its worker threads run
 * the plugin's stop, then end) and mark it stopped. */
void pb__output_stop(struct pb_output *o)
{
    if (o->is_virtual) {
        o->workers = NULL; /* its output's */
        o->started = false;
        return;
    }
    if (o->started && o->plugin->stop) {
        struct stop_job *sj = o->workers ? calloc(1, sizeof(*sj)) : NULL;
        if (sj) {
            sj->job.fn = stop_job_cb;
            sj->o = o;
            if (pb_workers_post(o->workers, &sj->job) != 0)
                free(sj);
        } else {
            o->plugin->stop(o->ctx);
        }
    }
    pb_workers_destroy(o->workers); /* runs the stop job, then joins */
    o->workers = NULL;
    o->started = false;
    if (!o->is_virtual && !o->is_route)
        pb_output_set_state(o, PB_OUTPUT_STOPPED, NULL);
}
