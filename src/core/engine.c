/* engine.c - the daemon's life cycle: load, start in order, run until a
 * signal, stop in the reverse order without losing what was acknowledged.
 *
 * Start: HTTP client -> configuration (plugins initialised with the client)
 *        -> state store (writer) -> dispatcher -> listener -> ready.
 * Stop:  not ready -> listener stops accepting -> requests waiting for a
 *        commit are answered -> attempts in flight finish (shutdown_timeout)
 *        -> writer commits what is queued -> everything is freed. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/engine.h"
#include "core/history.h"
#include "core/http_auth.h"
#include "core/input.h"
#include "core/notify.h"
#include "core/progress.h"
#include "core/tail.h"
#include "core/workers.h"
#include "net/httpd.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_loop.h"

#define WORKERS 2 /* admin requests reading the store */

void pb_dispatcher_set_http(struct pb_dispatcher *d, struct pb_loop *loop,
                            struct pb_http_client *http);

static size_t count_outputs(const struct pb_config *c)
{
    size_t n = 0;
    for (size_t i = 0; i < c->npipelines; i++)
        n += c->pipelines[i].nouts;
    return n;
}

/* Does c still deliver to pipeline/output (an output, its route stage, or
 * "output/sub", a sub-output of one of its outputs)? */
bool pb_config_output_known(const struct pb_config *c, const char *pipeline, const char *output)
{
    for (size_t i = 0; i < c->npipelines; i++) {
        const struct pb_pipeline *pl = &c->pipelines[i];
        if (strcmp(pl->name, pipeline) != 0)
            continue;
        if (pl->routes && strcmp(output, PB_ROUTE_OUTPUT) == 0)
            return true;
        for (size_t j = 0; j < pl->nouts; j++) {
            const struct pb_output *o = &pl->outs[j];
            size_t n = strlen(o->name);
            if (strcmp(o->name, output) == 0 ||
                (strncmp(output, o->name, n) == 0 && output[n] == '/'))
                return true;
        }
    }
    return false;
}

#define ORPHANS_MAX 64

struct orphans {
    const struct pb_config *cfg;
    size_t n;
    int64_t total;
    char pipeline[ORPHANS_MAX][PB_NAME_MAX], output[ORPHANS_MAX][PB_NAME_MAX * 2];
};

static void orphan_cb(void *arg, const char *pipeline, const char *output, const char *sub,
                      enum pb_dstate state, int64_t count)
{
    (void)sub; /* a removed sub-output's deliveries are dead-lettered when it goes */
    struct orphans *o = arg;
    if (state != PB_DSTATE_PENDING || count == 0 ||
        pb_config_output_known(o->cfg, pipeline, output))
        return;
    o->total += count;
    if (o->n < ORPHANS_MAX) {
        snprintf(o->pipeline[o->n], sizeof(o->pipeline[0]), "%s", pipeline);
        snprintf(o->output[o->n], sizeof(o->output[0]), "%s", output);
        o->n++;
    }
}

/* Pending deliveries of outputs cfg no longer has would wait, unseen, for
 * ever. Refuse (PB_EEXISTS, with the count) unless force, which moves
 * them to the dead-letter queue ("output removed"), where they show. */
static int check_orphans(const struct pb_config *cfg, struct pb_store *store, bool force,
                         struct pb_err *err)
{
    struct orphans *o = calloc(1, sizeof(*o));
    int rc;
    if (!o)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    o->cfg = cfg;
    rc = pb_store_count_pending(store, orphan_cb, o, err);
    if (rc || o->total == 0)
        goto out;
    if (!force) {
        rc = pb_err_set(err, PB_EEXISTS,
                        "%lld pending deliveries belong to outputs this configuration no longer "
                        "has (first: pipeline %s, output %s); restore the output, or start with "
                        "`patchbay run --force` to move them to the dead-letter queue",
                        (long long)o->total, o->pipeline[0], o->output[0]);
        goto out;
    }
    for (size_t i = 0; i < o->n && rc == 0; i++) {
        struct pb_op op = {.kind = PB_OP_ORPHANS};
        op.u.orphans.pipeline = o->pipeline[i];
        op.u.orphans.output = o->output[i];
        op.u.orphans.now = pb_now_ms();
        rc = pb_store_exec(store, &op);
        if (rc == 0)
            PB_WARN("output removed: pending deliveries dead-lettered pipeline=%s output=%s "
                    "count=%lld",
                    o->pipeline[i], o->output[i], (long long)op.u.orphans.dead);
        else
            pb_err_set(err, rc, "cannot dead-letter the deliveries of removed outputs: %s",
                       pb_strerror(rc));
    }
    if (rc == 0 && o->n == ORPHANS_MAX)
        PB_WARN("more removed outputs have pending deliveries: they are dead-lettered at the "
                "next start with --force");
out:
    free(o);
    return rc;
}

static void backlog_cb(void *arg, const char *pipeline, const char *output, const char *sub,
                       enum pb_dstate state, int64_t count)
{
    struct pb_engine *e = arg;
    if (state != PB_DSTATE_PENDING)
        return;
    struct pb_pipeline *pl = pb_engine_pipeline(e, pipeline);
    struct pb_output *o = NULL;
    if (pl && strcmp(output, PB_ROUTE_OUTPUT) == 0)
        o = pl->routes ? &pl->router : NULL;
    else if (pl)
        o = pb_pipeline_output(pl, output);
    if (o && sub) {
        struct pb_output *v = NULL;
        pthread_mutex_lock(&o->vlock);
        for (size_t k = 0; k < o->nvouts; k++)
            if (strcmp(o->vouts[k]->sub, sub) == 0)
                v = o->vouts[k];
        pthread_mutex_unlock(&o->vlock);
        o = v;
    }
    if (o)
        atomic_store(&o->backlog, count);
}

/* The backlog gauges from the store: at start, before anything is paged in. */
static void resync_backlog(struct pb_engine *e)
{
    struct pb_err err = {0};
    if (pb_store_count_pending(e->store, backlog_cb, e, &err) != 0)
        PB_WARN("counting pending deliveries failed error=\"%s\"", err.msg);
}

/* SIGHUP: is the file on disk good enough to restart with? */
static bool reload_ok(const char *path, struct pb_store *store, bool force)
{
    struct pb_err err = {0};
    char buf[1024];
    struct pb_config *next = pb_config_load(path, NULL, &err);
    if (!next || (!force && check_orphans(next, store, false, &err) != 0)) {
        PB_ERROR("reload refused, still running the previous configuration: %s",
                 pb_err_format(&err, buf, sizeof(buf)));
        pb_config_destroy(next);
        return false;
    }
    pb_config_destroy(next);
    return true;
}

/* The watchdog is fed only while the dispatcher's loop answers: a post
 * from the main thread, acknowledged on the loop. */
struct heartbeat {
    struct pb_loop_node node;
    atomic_bool pending;
    _Atomic int64_t seen_us; /* pb_mono_us of the last acknowledgement */
};

static void heartbeat_cb(void *arg, int status)
{
    struct heartbeat *hb = arg;
    if (status == 0)
        atomic_store(&hb->seen_us, pb_mono_us());
    atomic_store(&hb->pending, false);
}

/* Main thread: send WATCHDOG=1 when it is due and the dispatcher answered
 * a heartbeat within the last two intervals (WatchdogSec: systemd's own
 * limit); lower *wait_ms to when it is due next. */
static void watchdog_tick(struct heartbeat *hb, struct pb_loop *loop, int64_t interval_ms,
                          int64_t *next_us, int64_t *wait_ms)
{
    int64_t now = pb_mono_us();
    if (!atomic_load(&hb->pending)) {
        atomic_store(&hb->pending, true);
        if (pb_loop_post_node(loop, &hb->node, heartbeat_cb, hb) != 0)
            atomic_store(&hb->pending, false);
    }
    if (now >= *next_us) {
        if (now - atomic_load(&hb->seen_us) <= 2 * interval_ms * 1000)
            pb_notify("WATCHDOG=1");
        else
            PB_WARN("the dispatcher has not answered for %lld ms: the watchdog is not fed",
                    (long long)((now - atomic_load(&hb->seen_us)) / 1000));
        *next_us = now + interval_ms * 1000;
    }
    int64_t left = (*next_us - now) / 1000;
    if (left < *wait_ms)
        *wait_ms = left > 0 ? left : 1;
}

static void *input_loop_main(void *arg)
{
    pb_loop_run(arg);
    return NULL;
}

/* Inputs get their loops and start; their routes join the listener. */
static int start_inputs(struct pb_engine *e, struct pb_err *err)
{
    e->input_loop = pb_loop_create(err);
    if (!e->input_loop)
        return err->code ? err->code : PB_ENOMEM;
    if (pthread_create(&e->input_thread, NULL, input_loop_main, e->input_loop) != 0)
        return pb_err_set(err, PB_ENOMEM, "cannot start the inputs' thread");
    pthread_setname_np(e->input_thread, "pb-inputs");
    e->input_thread_running = true;
    for (size_t i = 0; i < e->cfg->npipelines; i++) {
        struct pb_input *in = e->cfg->pipelines[i].in;
        for (size_t k = 0; k < in->nroutes; k++) {
            int rc = pb_httpd_route_add(e->httpd, &in->routes[k], err);
            if (rc)
                return rc;
        }
        int rc = pb__input_start(in, e, e->input_loop, err);
        if (rc)
            return rc;
    }
    /* An input's routes take requests once the listener starts: its start
     * has run by then (a request before it would get 503 "starting"). */
    for (size_t i = 0; i < e->cfg->npipelines; i++) {
        struct pb_input *in = e->cfg->pipelines[i].in;
        if (in->nroutes && in->loop != e->input_loop)
            pb_loop_sync(in->loop);
    }
    pb_loop_sync(e->input_loop);
    return 0;
}

static void stop_inputs(struct pb_engine *e, int64_t timeout_ms)
{
    for (size_t i = 0; e->cfg && i < e->cfg->npipelines; i++)
        pb__input_stop(e->cfg->pipelines[i].in, timeout_ms);
    if (e->input_thread_running) {
        pb_loop_close(e->input_loop);
        pb_loop_stop(e->input_loop);
        pthread_join(e->input_thread, NULL);
        e->input_thread_running = false;
    }
    pb_loop_destroy(e->input_loop);
    e->input_loop = NULL;
}

/* --once: every input has finished and nothing is left to deliver. */
static bool once_done(const struct pb_engine *e)
{
    for (size_t i = 0; i < e->cfg->npipelines; i++) {
        const struct pb_pipeline *pl = &e->cfg->pipelines[i];
        if (!atomic_load(&pl->in->finished) || atomic_load(&pl->in->outstanding) > 0)
            return false;
        if (pl->routes && atomic_load(&pl->router.backlog) > 0)
            return false;
        for (size_t j = 0; j < pl->nouts; j++) {
            if (atomic_load(&pl->outs[j].backlog) > 0)
                return false;
            for (size_t k = 0; k < pl->outs[j].nvouts; k++)
                if (atomic_load(&pl->outs[j].vouts[k]->backlog) > 0)
                    return false;
        }
    }
    return true;
}

int pb_engine_run(const struct pb_run_opts *ro)
{
    bool reload = false;
    int listen_fd = -1;
    int code = 1;
    struct pb_err err = {0};
    char ebuf[1024];
    struct pb_engine e = {0};
    struct pb_http_client *http = NULL;
    struct pb_loop *loop = NULL;
    sigset_t sigs;
    const char *config_path = ro->config_path;

    /* Signals are taken synchronously by this thread only. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    e.once = ro->once;
    loop = pb_loop_create(&err);
    http = loop ? pb_http_client_create(loop, NULL, &err) : NULL;
    if (!http) {
        PB_ERROR("cannot start the HTTP client: %s", pb_err_format(&err, ebuf, sizeof(ebuf)));
        pb_loop_destroy(loop);
        return 1;
    }
    struct pb_diag diag = {0};
    e.cfg = pb_config_load_diag(config_path, http, ro->once, &diag, &err);
    for (size_t i = 0; i < diag.nwarn; i++)
        PB_WARN("configuration: %s", diag.warn[i]);
    if (!e.cfg) {
        for (size_t i = 0; i < diag.nerr; i++)
            fprintf(stderr, "%s\n", diag.err[i]);
        if (diag.dropped)
            fprintf(stderr, "... and %zu more\n", diag.dropped);
        pb_diag_free(&diag);
        pb_http_client_destroy(http);
        pb_loop_destroy(loop);
        return 1;
    }
    pb_diag_free(&diag);
    struct pb_store_opts so;
    pb_store_opts_default(&so);
    so.ingest_queue_max = (size_t)e.cfg->limits.ingest_queue;
    so.version = PB_VERSION;
    so.node = e.cfg->cluster.node;
    so.lease_ms = e.cfg->cluster.lease_ms;
    so.heartbeat_ms = e.cfg->cluster.heartbeat_ms;
    /* A reload re-opens the store this process has just closed cleanly: the
     * full read of quick_check (seconds on a large store, while clients wait
     * in the listen queue) finds nothing new. The log is still checked. */
    if (getenv("PATCHBAY_RELOADED")) {
        unsetenv("PATCHBAY_RELOADED");
        so.integrity_check = false;
    }
    e.store = pb_store_open(e.cfg->state, &so, &err);
    if (!e.store) {
        PB_ERROR("cannot open the state store: %s", pb_err_format(&err, ebuf, sizeof(ebuf)));
        goto out;
    }
    e.history = pb_engine_history_create(&e);
    e.tail = pb_tail_create(e.cfg->npipelines, 0, 0);
    if (!e.history || !e.tail) {
        pb_err_set(&err, PB_ENOMEM, "out of memory for the metric history and the live tail");
        goto fail;
    }
    e.disp = pb_dispatcher_create(&e, &err);
    if (!e.disp)
        goto fail;
    pb_dispatcher_set_http(e.disp, loop, http);
    http = NULL; /* the dispatcher owns it now */
    if (pb_store_start(e.store) != 0) {
        pb_err_set(&err, PB_EINTERNAL, "cannot start the store writer");
        goto fail;
    }
    /* After the writer starts (--force commits), before anything is paged in. */
    if (check_orphans(e.cfg, e.store, ro->force, &err) != 0)
        goto fail;
    resync_backlog(&e);
    /* What outputs keep in the store, for their start to read. */
    for (size_t i = 0; i < e.cfg->npipelines; i++)
        for (size_t j = 0; j < e.cfg->pipelines[i].nouts; j++)
            if (pb__output_kv_load(&e.cfg->pipelines[i].outs[j], e.store, &err) != 0)
                goto fail;
    /* Rotated OAuth2 refresh tokens read back; the token thread, before
     * any output or input can ask for a token. */
    if (pb__http_auth_start(e.store, &err) != 0)
        goto fail;
    pb__http_tls_warn_insecure();
    if (pb_dispatcher_start(e.disp) != 0) {
        pb_err_set(&err, PB_EINTERNAL, "cannot start the dispatcher");
        goto fail;
    }
    pb__engine_cluster_start(&e);
    e.workers = pb_workers_create("pb-work", WORKERS, &err);
    if (!e.workers)
        goto fail;
    struct pb_httpd_opts ho = {
        .listen = e.cfg->server.listen,
        .max_connections = e.cfg->server.max_connections,
        .threads = e.cfg->server.threads,
        .connection_timeout_ms = e.cfg->server.connection_timeout_ms,
        .max_inflight_bytes = e.cfg->limits.max_inflight_bytes,
    };
    e.httpd = pb_httpd_create(&ho, &err);
    if (!e.httpd || (ro->attach && ro->attach(&e, &err) != 0))
        goto fail;
    if (start_inputs(&e, &err) != 0 || pb_httpd_start(e.httpd, &err) != 0)
        goto fail;
    e.started_at = pb_now_ms();
    atomic_store(&e.ready, true);
    char state_shown[512];
    pb_store_url_shown(e.cfg->state, state_shown, sizeof(state_shown));
    PB_INFO("patchbay %s started listen=%s port=%u state=%s pipelines=%zu outputs=%zu node=%s",
            PB_VERSION, e.cfg->server.listen, pb_httpd_port(e.httpd), state_shown,
            e.cfg->npipelines, count_outputs(e.cfg), pb_store_node_name(e.store));
    struct pb_progress prog;
    pb__progress_init(&prog);
    /* systemd (Type=notify): started once the listener takes requests. */
    char status[256];
    snprintf(status, sizeof(status),
             "READY=1\nSTATUS=running: %zu pipeline%s, %zu output%s, listening on port %u",
             e.cfg->npipelines, e.cfg->npipelines == 1 ? "" : "s", count_outputs(e.cfg),
             count_outputs(e.cfg) == 1 ? "" : "s", pb_httpd_port(e.httpd));
    if (pb_notify(status) < 0)
        PB_WARN("cannot notify systemd through NOTIFY_SOCKET");
    struct heartbeat hb = {.seen_us = pb_mono_us()};
    int64_t wd_ms =
        pb_notify_watchdog_interval(getenv("WATCHDOG_USEC"), getenv("WATCHDOG_PID"), getpid());
    int64_t wd_next_us = pb_mono_us();
    if (wd_ms)
        PB_INFO("systemd watchdog on interval_ms=%lld", (long long)wd_ms);

    for (;;) {
        pb_engine_history_tick(e.history, pb_now_ms());
        int64_t wait_ms = ro->once ? 100 : 1000;
        if (wd_ms)
            watchdog_tick(&hb, loop, wd_ms, &wd_next_us, &wait_ms);
        struct timespec ts = {wait_ms / 1000, (wait_ms % 1000) * 1000 * 1000};
        int sig = sigtimedwait(&sigs, NULL, &ts);
        if (sig == SIGTERM || sig == SIGINT) {
            pb_notify("STOPPING=1\nSTATUS=draining: finishing the attempts in flight");
            PB_INFO("shutting down signal=%s timeout_ms=%lld", sig == SIGTERM ? "TERM" : "INT",
                    (long long)e.cfg->shutdown_timeout_ms);
            break;
        }
        if (sig == SIGHUP && ro->argv && reload_ok(config_path, e.store, ro->force)) {
            char reloading[96];
            struct timespec mono;
            clock_gettime(CLOCK_MONOTONIC, &mono);
            snprintf(reloading, sizeof(reloading),
                     "RELOADING=1\nMONOTONIC_USEC=%lld\nSTATUS=reloading the configuration",
                     (long long)mono.tv_sec * 1000000 + mono.tv_nsec / 1000);
            pb_notify(reloading);
            PB_INFO("reloading config=%s (draining, then restarting in place)", config_path);
            reload = true;
            break;
        }
        if (sig < 0 && errno != EAGAIN && errno != EINTR)
            break;
        if (ro->once && once_done(&e)) {
            PB_INFO("every input has finished and every delivery is done: exiting (--once)");
            break;
        }
        if (ro->once)
            pb__progress_tick(&prog, &e, false);
    }
    if (ro->once)
        pb__progress_tick(&prog, &e, true);
    code = 0;
    goto out;

fail:
    PB_ERROR("startup failed: %s", pb_err_format(&err, ebuf, sizeof(ebuf)));
    code = 1;
out:
    atomic_store(&e.stopping, true);
    atomic_store(&e.ready, false);
    if (ro->quiesce && e.admin)
        ro->quiesce(&e);
    int64_t t0 = pb_mono_us();
    listen_fd = pb_httpd_quiesce(e.httpd, reload);
    pb_httpd_drain(e.httpd, 5000);
    stop_inputs(&e, e.cfg->shutdown_timeout_ms);
    pb__engine_cluster_stop(&e);
    pb_dispatcher_stop(e.disp, e.cfg->shutdown_timeout_ms);
    pb__http_auth_stop(); /* its last chains are committed by the store's stop */
    if (e.store)
        pb_store_stop(e.store);
    pb_httpd_destroy(e.httpd);
    pb_workers_destroy(e.workers);
    if (ro->detach && e.admin)
        ro->detach(&e);
    pb_dispatcher_destroy(e.disp);
    pb_http_client_destroy(http);
    pb_store_destroy(e.store);
    pb_loop_destroy(loop);
    pb_engine_history_destroy(e.history);
    pb_tail_destroy(e.tail);
    if (code == 0)
        PB_INFO("stopped in_ms=%lld", (long long)((pb_mono_us() - t0) / 1000));
    pb_config_destroy(e.cfg);
    if (reload) {
        /* Same binary, same arguments, new configuration; the listening
         * socket stays open so clients queue instead of being refused. */
        char fdbuf[16];
        if (listen_fd >= 0) {
            int fl = fcntl(listen_fd, F_GETFD);
            if (fl >= 0)
                fcntl(listen_fd, F_SETFD, fl & ~FD_CLOEXEC);
            snprintf(fdbuf, sizeof(fdbuf), "%d", listen_fd);
            setenv("PATCHBAY_LISTEN_FD", fdbuf, 1);
        }
        setenv("PATCHBAY_RELOADED", "1", 1);
        execv("/proc/self/exe", ro->argv);
        PB_ERROR("reload failed: cannot re-execute patchbay: %s", strerror(errno));
        return 1;
    }
    return code;
}
