/* routes.c - what the admin side serves on the shared listener:
 * /health, /ready and /metrics (answered on the listener thread: they read
 * counters, never the store), /api (the admin API: the bearer token is
 * checked on the listener thread, in constant time; the request then runs on
 * one of the engine's worker threads, where it may read the store, and is
 * answered from there, or by the live tail's thread), and /ui (the
 * dashboard's files, compiled in; ui.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "admin/api.h"
#include "core/http_auth.h"
#include "core/input.h"
#include "core/workers.h"
#include "net/httpd.h"
#include "patchbay/pb_log.h"

/* Requests carry small JSON, or a dead letter's corrected body. */
#define ADMIN_MAX_BODY (1024 * 1024)

static const char *const get_methods[] = {"GET", "HEAD", NULL};

static void respond_error(struct pb_http_request *r, int status, const char *reason,
                          const char *hname, const char *hval)
{
    json_t *o = json_pack("{s:s}", "error", reason);
    char *t = o ? json_dumps(o, JSON_COMPACT) : NULL;
    const char *body = t ? t : "{\"error\":\"internal\"}";
    struct pb_http_header h = {hname, hval};
    pb_http_respond(r, status, NULL, body, strlen(body), &h, hname ? 1 : 0);
    free(t);
    json_decref(o);
}

/* ---- operations ----------------------------------------------------------------------- */

static void health(void *arg, struct pb_http_request *r)
{
    (void)arg;
    pb_http_respond_json(r, 200, "{\"status\":\"ok\"}");
}

/* Why the daemon is not ready, or NULL. */
static const char *not_ready(struct pb_engine *e, char *buf, size_t len)
{
    if (!atomic_load(&e->ready))
        return atomic_load(&e->stopping) ? "shutting down" : "starting";
    if (!pb_store_reachable(e->store))
        return "state store database is unreachable";
    if (!pb_store_writable(e->store))
        return "state store is not writable";
    if (!pb_dispatcher_running(e->disp))
        return "dispatcher stopped";
    for (size_t i = 0; i < e->cfg->npipelines; i++) {
        const struct pb_input *in = e->cfg->pipelines[i].in;
        int st = in ? atomic_load(&in->state) : PB_INPUT_CONNECTED;
        /* Starting: a broker input is not subscribed yet, so what is
         * published now would not reach it. */
        if (st == PB_INPUT_RECONNECTING || st == PB_INPUT_STARTING) {
            snprintf(buf, len, "input of pipeline %s is %s", e->cfg->pipelines[i].name,
                     st == PB_INPUT_STARTING ? "starting" : "reconnecting");
            return buf;
        }
    }
    return NULL;
}

static void failing_cb(void *arg, const char *pipeline, const char *name,
                       const struct pb_auth_status *st)
{
    char reason[400];
    snprintf(reason, sizeof(reason), "oauth2 token endpoint %s failing: %s", st->token_url,
             st->error);
    /* An input ("input") or a process step ("process[N]") is a part, not an output. */
    bool part = strcmp(name, "input") == 0 || strchr(name, '[') != NULL;
    json_array_append_new(arg, json_pack("{s:s, s:s, s:s}", "pipeline", pipeline,
                                         part ? "part" : "output", name, "reason", reason));
}

/* What works but not fully: failing token endpoints, open circuit
 * breakers. Ingest goes on (what comes is kept), so the daemon stays ready. */
static json_t *degraded(struct pb_engine *e)
{
    json_t *list = json_array();
    if (!list)
        return NULL;
    pb__http_auth_each_failing(failing_cb, list);
    for (size_t i = 0; i < e->cfg->npipelines; i++)
        for (size_t j = 0; j < e->cfg->pipelines[i].nouts; j++) {
            struct pb_output *o = &e->cfg->pipelines[i].outs[j];
            int st = atomic_load(&o->breaker_state);
            if (o->common.flow.breaker && st != PB_BREAKER_CLOSED)
                json_array_append_new(
                    list, json_pack("{s:s, s:s, s:s}", "pipeline", e->cfg->pipelines[i].name,
                                    "output", o->name, "reason",
                                    st == PB_BREAKER_OPEN ? "circuit breaker open"
                                                          : "circuit breaker half-open"));
        }
    return list;
}

static void ready(void *arg, struct pb_http_request *r)
{
    char buf[PB_NAME_MAX + 64];
    const char *why = not_ready(arg, buf, sizeof(buf));
    if (!why) {
        json_t *d = degraded(arg);
        if (!d || json_array_size(d) == 0) {
            json_decref(d);
            pb_http_respond_json(r, 200, "{\"ready\":true}");
            return;
        }
        json_t *o = json_pack("{s:b, s:o}", "ready", 1, "degraded", d);
        char *t = o ? json_dumps(o, JSON_COMPACT) : NULL;
        pb_http_respond_json(r, 200, t ? t : "{\"ready\":true}");
        free(t);
        json_decref(o);
        return;
    }
    json_t *o = json_pack("{s:b, s:s}", "ready", 0, "reason", why);
    /* What is failing besides (a token endpoint an input waits for...). */
    json_t *d = atomic_load(&((struct pb_engine *)arg)->ready) ? degraded(arg) : NULL;
    if (o && d && json_array_size(d))
        json_object_set_new(o, "degraded", d);
    else
        json_decref(d);
    char *t = o ? json_dumps(o, JSON_COMPACT) : NULL;
    pb_http_respond_json(r, 503, t ? t : "{\"ready\":false}");
    free(t);
    json_decref(o);
}

static void metrics(void *arg, struct pb_http_request *r)
{
    size_t len = 0;
    char *text = pb_metrics_render(arg, &len);
    if (!text) {
        respond_error(r, 500, "out of memory", NULL, NULL);
        return;
    }
    pb_http_respond(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, NULL, 0);
    free(text);
}

/* ---- the admin API ------------------------------------------------------------------------ */

static bool token_ok(const char *want, const char *got)
{
    if (!want || !*want || !got || strncasecmp(got, "Bearer ", 7) != 0)
        return false;
    got += 7;
    size_t wl = strlen(want), gl = strlen(got);
    /* Constant time in the secret's content; length mismatch still compares. */
    unsigned char diff = (unsigned char)(wl != gl);
    for (size_t i = 0; i < wl; i++)
        diff |= (unsigned char)(want[i] ^ (i < gl ? got[i] : 0));
    return diff == 0 && CRYPTO_memcmp(want, got, wl < gl ? wl : gl) == 0;
}

struct admin_job {
    struct pb_job job;
    struct pb_engine *e;
    struct pb_http_request *r;
};

static void admin_job_cb(struct pb_job *job, int cancelled)
{
    struct admin_job *aj = (struct admin_job *)job;
    struct pb_http_request *r = aj->r;
    if (cancelled) {
        respond_error(r, 503, "shutting down", "Retry-After", "1");
        free(aj);
        return;
    }
    size_t len = 0;
    const char *body = pb_http_request_body(r, &len);
    struct pb_api_resp resp = {0};
    if (pb_admin_handle(aj->e, r, pb_http_request_method(r), pb_http_request_path(r), body, len,
                        &resp)) {
        free(aj); /* a plugin's route answered */
        return;
    }
    if (resp.status == 204)
        pb_http_respond(r, 204, NULL, "", 0, NULL, 0);
    else
        pb_http_respond_json(r, resp.status, resp.body ? resp.body : "{}");
    free(resp.body);
    free(aj);
}

static void admin(void *arg, struct pb_http_request *r)
{
    struct pb_engine *e = arg;
    const char *want = e->cfg->server.admin_token;
    if (!want || !*want) {
        respond_error(r, 403, "admin API disabled: set server.admin_token", NULL, NULL);
        return;
    }
    if (!token_ok(want, pb_http_request_header(r, "Authorization"))) {
        respond_error(r, 401, "missing or wrong bearer token", "WWW-Authenticate", "Bearer");
        return;
    }
    struct admin_job *aj = calloc(1, sizeof(*aj));
    if (!aj) {
        respond_error(r, 503, "out of memory", "Retry-After", "1");
        return;
    }
    aj->job.fn = admin_job_cb;
    aj->e = e;
    aj->r = r;
    if (pb_workers_post(e->workers, &aj->job) != 0) {
        free(aj);
        respond_error(r, 503, "shutting down", "Retry-After", "1");
    }
}

int pb_admin_attach(struct pb_engine *e, struct pb_err *err)
{
    struct pb_admin *adm = calloc(1, sizeof(*adm));
    if (!adm)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    adm->e = e;
    e->admin = adm;
    adm->tail = pb_admin_tail_create(e, err);
    if (!adm->tail)
        return err->code ? err->code : PB_ENOMEM;
    const struct pb_http_route routes[] = {
        {.path = "/health", .methods = get_methods, .handler = health, .arg = e},
        {.path = "/ready", .methods = get_methods, .handler = ready, .arg = e},
        {.path = "/metrics", .methods = get_methods, .handler = metrics, .arg = e},
        {.path = "/api", .prefix = true, .max_body = ADMIN_MAX_BODY, .handler = admin, .arg = e},
        {.path = "/ui", .prefix = true, .methods = get_methods, .handler = pb_admin_ui, .arg = e},
    };
    size_t n = sizeof(routes) / sizeof(routes[0]);
    if (!e->cfg->server.ui)
        n--; /* server.ui: false: no dashboard */
    for (size_t i = 0; i < n; i++) {
        int rc = pb_httpd_route_add(e->httpd, &routes[i], err);
        if (rc)
            return rc;
    }
    return 0;
}

void pb_admin_quiesce(struct pb_engine *e)
{
    struct pb_admin *adm = e->admin;
    if (adm)
        pb_admin_tail_stop(adm->tail);
}

void pb_admin_detach(struct pb_engine *e)
{
    struct pb_admin *adm = e->admin;
    if (!adm)
        return;
    pb_admin_tail_destroy(adm->tail);
    free(adm);
    e->admin = NULL;
}
