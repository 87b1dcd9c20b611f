/* config.c - the whole patchbay.yaml: top-level options, pipelines, and the
 * plugins they name, decoded with field tables and initialised.
 *
 * Everything a user can get wrong is found here, before anything starts:
 * unknown keys, bad values, unknown plugins, jq programs that do not
 * compile, two pipelines on one path. Errors carry file:line:col. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/engine.h"
#include "core/input.h"
#include "net/listen.h"

#define OFF(field) offsetof(struct pb_config, field)

static const struct pb_field outbound_fields[] = {
    {.name = "allow",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct pb_outbound_conf, allow),
     .doc = "internal hosts and CIDRs outputs may reach (e.g. 127.0.0.0/8)"},
    {0},
};

static const struct pb_field limits_fields[] = {
    {.name = "ingest_queue",
     .type = PB_F_INT,
     .offset = offsetof(struct pb_limits_conf, ingest_queue),
     .def = "8192",
     .min = 1,
     .max = 1000000,
     .doc = "messages waiting for commit before ingest answers 503"},
    {.name = "in_memory",
     .type = PB_F_INT,
     .offset = offsetof(struct pb_limits_conf, in_memory),
     .def = "2000",
     .min = 16,
     .max = 10000000,
     .doc = "pending deliveries held in memory per output; the rest wait in the store"},
    {.name = "max_inflight_bytes",
     .type = PB_F_SIZE,
     .offset = offsetof(struct pb_limits_conf, max_inflight_bytes),
     .def = "256MiB",
     .doc = "request bodies being received or committed before ingest answers 503"},
    {0},
};

static const struct pb_field top_fields[] = {
    {.name = "server", .type = PB_F_OBJECT, .offset = OFF(server), .sub = pb__server_fields},
    {.name = "state",
     .type = PB_F_STR,
     .offset = OFF(state),
     .def = "sqlite:./patchbay-data/state.db",
     .doc = "sqlite:PATH, or postgres://USER@HOST[:PORT]/DB[?schema=NAME] to share it"},
    {.name = "outbound", .type = PB_F_OBJECT, .offset = OFF(outbound), .sub = outbound_fields},
    {.name = "limits", .type = PB_F_OBJECT, .offset = OFF(limits), .sub = limits_fields},
    {.name = "cluster", .type = PB_F_OBJECT, .offset = OFF(cluster), .sub = pb__cluster_fields},
    {.name = "retention",
     .type = PB_F_DURATION,
     .offset = OFF(retention_ms),
     .def = "7d",
     .doc = "how long finished messages are kept for inspection"},
    {.name = "shutdown_timeout",
     .type = PB_F_DURATION,
     .offset = OFF(shutdown_timeout_ms),
     .def = "10s",
     .doc = "how long SIGTERM waits for attempts in flight"},
    {.name = "pipelines",
     .type = PB_F_NODE,
     .offset = OFF(pipelines_node),
     .flags = PB_FIELD_REQUIRED},
    {0},
};

static const struct pb_field retry_fields[] = {
    {.name = "max_attempts",
     .type = PB_F_INT,
     .offset = offsetof(struct pb_retry_conf, max_attempts),
     .def = "12",
     .min = 1,
     .max = 1000},
    {.name = "initial",
     .type = PB_F_DURATION,
     .offset = offsetof(struct pb_retry_conf, initial),
     .def = "500ms"},
    {.name = "max",
     .type = PB_F_DURATION,
     .offset = offsetof(struct pb_retry_conf, max),
     .def = "10m"},
    {.name = "max_age",
     .type = PB_F_DURATION,
     .offset = offsetof(struct pb_retry_conf, max_age),
     .def = "3d"},
    {.name = "schedule",
     .type = PB_F_NODE,
     .offset = offsetof(struct pb_retry_conf, schedule),
     .doc = "svix, exponential (default) or a list of waits: [5s, 1m, 10m]"},
    {0},
};

/* Options every output takes, next to its plugin's own. */
static const struct pb_field output_common_fields[] = {
    {.name = "map",
     .type = PB_F_STR,
     .offset = offsetof(struct pb_output_common, map),
     .doc = "jq program applied to the message for this output"},
    {.name = "retry",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct pb_output_common, retry),
     .sub = retry_fields},
    {.name = "concurrency",
     .type = PB_F_NODE,
     .offset = offsetof(struct pb_output_common, concurrency_node),
     .doc = "attempts in flight at once, or adaptive (0 = the output's default)"},
    {.name = "max_concurrency",
     .type = PB_F_INT,
     .offset = offsetof(struct pb_output_common, max_concurrency),
     .def = "64",
     .min = 1,
     .max = 4096,
     .doc = "concurrency: adaptive goes no higher"},
    {.name = "rate_limit",
     .type = PB_F_NODE,
     .offset = offsetof(struct pb_output_common, rate_limit_node),
     .doc = "e.g. 100/s, or {rate: 10/s, key: JQ, max_keys: 10000}"},
    {.name = "circuit_breaker",
     .type = PB_F_NODE,
     .offset = offsetof(struct pb_output_common, breaker_node),
     .doc = "{window: 30s, min_requests: 10, failure_ratio: 0.7, open_for: 30s}"},
    {.name = "outbound",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct pb_output_common, outbound),
     .sub = outbound_fields},
    {0},
};

struct pipeline_raw {
    const struct pb_node *input;
    struct {
        char *key;
    } ordering;
    const struct pb_node *process;
    const struct pb_node *outputs;
};

static const struct pb_field ordering_fields[] = {
    {.name = "key",
     .type = PB_F_STR,
     .offset = 0,
     .flags = PB_FIELD_REQUIRED,
     .doc = "jq expression; deliveries sharing a key go out one at a time, in order"},
    {0},
};

static const struct pb_field pipeline_fields[] = {
    {.name = "input",
     .type = PB_F_NODE,
     .offset = offsetof(struct pipeline_raw, input),
     .flags = PB_FIELD_REQUIRED},
    {.name = "ordering",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct pipeline_raw, ordering),
     .sub = ordering_fields},
    {.name = "process", .type = PB_F_NODE, .offset = offsetof(struct pipeline_raw, process)},
    {.name = "outputs",
     .type = PB_F_NODE,
     .offset = offsetof(struct pipeline_raw, outputs),
     .flags = PB_FIELD_REQUIRED},
    {0},
};

__attribute__((format(printf, 3, 4))) static int bad(struct pb_err *err, const struct pb_node *n,
                                                     const char *fmt, ...)
{
    char msg[PB_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return pb_err_at(err, PB_ECONFIG, n->file, n->line, n->col, "%s", msg);
}

/* A map with exactly one key naming a plugin: `http: {...}`. */
static int plugin_block(const struct pb_node *n, const char *what, const char *owner,
                        const struct pb_node **name, const struct pb_node **body,
                        struct pb_err *err)
{
    if (n->type != PB_NODE_MAP || n->n != 1)
        return bad(err, n, "%s \"%s\" must be a map with exactly one key naming a plugin", what,
                   owner);
    *name = n->keys[0];
    *body = n->vals[0];
    return 0;
}

/* "a, b, c": the names of a NULL-terminated plugin table (any kind: each
 * starts with its name) into the array buf, cut to fit. */
#define PLUGIN_NAMES(buf, plugins)                                                                 \
    do {                                                                                           \
        (buf)[0] = 0;                                                                              \
        for (size_t i_ = 0; (plugins)[i_]; i_++) {                                                 \
            size_t used_ = strlen(buf);                                                            \
            snprintf((buf) + used_, sizeof(buf) - used_, "%s%s", i_ ? ", " : "",                   \
                     (plugins)[i_]->name);                                                         \
        }                                                                                          \
    } while (0)

static int load_processor(struct pb_pipeline *pl, struct pb_route_step *pr,
                          const struct pb_proc_env *env, const struct pb_node *n,
                          struct pb_err *err)
{
    const struct pb_node *name = NULL, *body = NULL;
    int rc = plugin_block(n, "process step of pipeline", pl->name, &name, &body, err);
    if (rc)
        return rc;
    pr->plugin = pb_registry_processor(name->str);
    if (!pr->plugin) {
        char avail[256];
        PLUGIN_NAMES(avail, pb_processor_plugins);
        return bad(err, name, "unknown processor \"%s\" (available: %s)", name->str, avail);
    }
    pr->ctx = calloc(1, pr->plugin->ctx_size ? pr->plugin->ctx_size : 1);
    if (!pr->ctx)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    if (pr->plugin->scalar_form && body->type == PB_NODE_SCALAR) {
        char *s = strdup(body->str);
        if (!s)
            return pb_err_set(err, PB_ENOMEM, "out of memory");
        memcpy((char *)pr->ctx + pr->plugin->scalar_offset, &s, sizeof(s));
    } else if (pr->plugin->seq_form) {
        if (body->type != PB_NODE_SEQ)
            return bad(err, body, "%s takes a list", pr->plugin->name);
        memcpy((char *)pr->ctx + pr->plugin->node_offset, &body, sizeof(body));
    } else {
        rc = pb_conf_decode(body, pr->plugin->fields, pr->ctx, err);
        if (rc)
            return rc;
    }
    rc = pr->plugin->init(pr->ctx, env, err);
    if (rc) {
        if (!err->file)
            err->file = body->file, err->line = body->line, err->col = body->col;
        return rc;
    }
    return 0;
}

/* Output names appear in URLs, metrics and the store; webhook endpoints and
 * the route stage take names no output can have ('/', '('). */
static bool output_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= PB_NAME_MAX)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_' || *s == '.'))
            return false;
    return true;
}

static int load_output(struct pb_config *c, struct pb_pipeline *pl, struct pb_output *o,
                       const struct pb_node *key, const struct pb_node *n,
                       struct pb_http_client *http, struct pb_err *err)
{
    const struct pb_node *name = NULL, *body = NULL;
    o->name = strdup(key->str);
    if (!o->name)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    if (!output_name_ok(o->name))
        return bad(err, key,
                   "output name \"%s\": use letters, digits, '-', '_' and '.' (at most %d)",
                   o->name, PB_NAME_MAX - 1);
    int rc = plugin_block(n, "output", o->name, &name, &body, err);
    if (rc)
        return rc;
    o->plugin = pb_registry_output(name->str);
    if (!o->plugin) {
        char avail[256];
        PLUGIN_NAMES(avail, pb_output_plugins);
        return bad(err, name, "unknown output \"%s\" (available: %s)", name->str, avail);
    }
    o->ctx = calloc(1, o->plugin->ctx_size ? o->plugin->ctx_size : 1);
    if (!o->ctx)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    rc = pb_conf_decode2(body, output_common_fields, &o->common, o->plugin->fields, o->ctx, err);
    if (rc)
        return rc;
    rc = pb__output_flow_load(o, err);
    if (rc)
        return rc;
    o->policy = (struct pb_retry_policy){
        .max_attempts = o->common.retry.max_attempts,
        .initial_ms = o->common.retry.initial,
        .max_ms = o->common.retry.max,
        .max_age_ms = o->common.retry.max_age,
    };
    const struct pb_node *sch = o->common.retry.schedule;
    if (sch && sch->type == PB_NODE_SCALAR && strcmp(sch->str, "svix") == 0) {
        o->policy.schedule = pb_schedule_svix;
        o->policy.nschedule = sizeof(pb_schedule_svix) / sizeof(pb_schedule_svix[0]);
    } else if (sch && sch->type == PB_NODE_SEQ && sch->n > 0 && sch->n <= 100) {
        o->schedule_owned = calloc(sch->n, sizeof(int64_t));
        if (!o->schedule_owned)
            return pb_err_set(err, PB_ENOMEM, "out of memory");
        for (size_t i = 0; i < sch->n; i++) {
            const struct pb_node *it = sch->vals[i];
            if (it->type != PB_NODE_SCALAR ||
                pb_parse_duration(it->str, &o->schedule_owned[i]) != 0)
                return bad(err, it, "retry.schedule entries are durations (e.g. 5s, 10m)");
        }
        o->policy.schedule = o->schedule_owned;
        o->policy.nschedule = sch->n;
    } else if (sch && !(sch->type == PB_NODE_SCALAR && strcmp(sch->str, "exponential") == 0)) {
        return bad(err, sch,
                   "retry.schedule takes svix, exponential or a list of 1 to 100 durations");
    }
    if (o->policy.initial_ms <= 0)
        o->policy.initial_ms = 1;
    if (o->policy.max_ms < o->policy.initial_ms)
        o->policy.max_ms = o->policy.initial_ms;
    if (o->common.map) {
        if (pl->in && pl->in->raw)
            return bad(err, body, "output \"%s\" has a map, but pipeline \"%s\" takes format: raw",
                       o->name, pl->name);
        o->map_jq = pb_jq_compile(o->common.map, err);
        o->uses_meta = pb_jq_uses_meta(o->map_jq);
        if (!o->map_jq) {
            const struct pb_node *m = pb_node_get(body, "map");
            if (m)
                err->file = m->file, err->line = m->line, err->col = m->col;
            return err->code ? err->code : PB_ECONFIG;
        }
    }
    struct pb_allowlist *top = NULL, *own = NULL;
    top = pb_allowlist_create(&c->outbound.allow, err);
    if (!top)
        goto allow_fail;
    own = pb_allowlist_create(&o->common.outbound.allow, err);
    if (!own)
        goto allow_fail;
    o->allow = pb_allowlist_merge(top, own);
    pb_allowlist_destroy(top);
    pb_allowlist_destroy(own);
    if (!o->allow)
        return pb_err_set(err, PB_ENOMEM, "out of memory");

    o->sq.concurrency = (size_t)(o->common.concurrency > 0 ? o->common.concurrency
                                                           : o->plugin->default_concurrency);
    if (o->sq.concurrency == 0)
        o->sq.concurrency = 1;
    o->sq.rate = o->common.rate_limit;
    if (o->common.rate_key)
        o->sq.max_rkeys = (size_t)o->common.rate_max_keys;
    o->common.flow.max_hold_ms = o->policy.max_ms;
    pb_flow_init(&o->flow, &o->common.flow, o->sq.concurrency, pb_now_ms());
    pb_flow_apply(&o->flow, &o->sq, pb_now_ms());

    rc = pb__output_init(o, http, err);
    if (rc) {
        if (!err->file)
            err->file = body->file, err->line = body->line, err->col = body->col;
        return rc;
    }
    o->ctx_ready = true;
    return 0;

allow_fail:
    pb_allowlist_destroy(top);
    pb_allowlist_destroy(own);
    {
        const struct pb_node *at = pb_node_get(body, "outbound");
        if (!at)
            at = body;
        if (!err->file)
            err->file = at->file, err->line = at->line, err->col = at->col;
    }
    return err->code ? err->code : PB_ECONFIG;
}

extern const struct pb_output_plugin pb__route_plugin;

/* Where ingest commits create deliveries: the route stage when there are
 * process steps (it runs them once per message, then creates the outputs'
 * deliveries), else every output directly. */
static int setup_routing(struct pb_pipeline *pl, struct pb_err *err)
{
    pl->routes = pl->nprocs > 0;
    pl->ningest = pl->routes ? 1 : pl->nouts;
    pl->ingest_outs = calloc(pl->ningest, sizeof(*pl->ingest_outs));
    pl->ingest_names = calloc(pl->ningest, sizeof(*pl->ingest_names));
    if (!pl->ingest_outs || !pl->ingest_names)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    if (!pl->routes) {
        for (size_t i = 0; i < pl->nouts; i++) {
            pl->ingest_outs[i] = &pl->outs[i];
            pl->ingest_names[i] = pl->outs[i].name;
        }
        return 0;
    }
    struct pb_output *r = &pl->router;
    r->name = strdup(PB_ROUTE_OUTPUT);
    if (!r->name)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    r->index = pl->nouts;
    r->pl = pl;
    r->plugin = &pb__route_plugin;
    r->is_route = true;
    r->ctx_ready = true;
    pthread_mutex_init(&r->vlock, NULL);
    pthread_mutex_init(&r->slock, NULL);
    /* A step that fails fails the same way again: one attempt, then the
     * dead-letter queue, where a replay routes it anew. */
    r->policy = (struct pb_retry_policy){
        .max_attempts = 1, .initial_ms = 500, .max_ms = 600000, .max_age_ms = 3 * 86400000LL};
    r->sq.concurrency = (size_t)r->plugin->default_concurrency;
    pl->ingest_outs[0] = r;
    pl->ingest_names[0] = r->name;
    return 0;
}

static int load_pipeline(struct pb_config *c, struct pb_pipeline *pl, const struct pb_node *key,
                         const struct pb_node *n, struct pb_http_client *http, struct pb_err *err)
{
    struct pipeline_raw raw = {0};
    int rc;
    pl->name = strdup(key->str);
    if (!pl->name)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    pl->node = n;
    if (n->type != PB_NODE_MAP)
        return bad(err, n, "pipeline \"%s\" must be a map with input, process and outputs%s",
                   pl->name, "");
    rc = pb_conf_decode(n, pipeline_fields, &raw, err);
    if (rc)
        goto out;
    rc = pb__input_load(pl, raw.input, c->once, &c->outbound.allow, err);
    if (rc)
        goto out;
    if (!raw.ordering.key && pl->in->env.ordering_key) {
        /* the input's own order (a change stream's rows) unless the pipeline says */
        raw.ordering.key = strdup(pl->in->env.ordering_key);
        if (!raw.ordering.key) {
            rc = pb_err_set(err, PB_ENOMEM, "out of memory");
            goto out;
        }
    }
    if (raw.ordering.key) {
        pl->ordering_key = raw.ordering.key;
        raw.ordering.key = NULL;
        pl->key_jq = pb_jq_compile(pl->ordering_key, err);
        if (!pl->key_jq) {
            const struct pb_node *o = pb_node_get(n, "ordering");
            if (o)
                err->file = o->file, err->line = o->line, err->col = o->col;
            rc = err->code ? err->code : PB_ECONFIG;
            goto out;
        }
    }
    if (raw.outputs->type != PB_NODE_MAP || raw.outputs->n == 0) {
        rc = bad(err, raw.outputs,
                 "\"outputs\" of pipeline \"%s\" must be a map of named outputs%s", pl->name, "");
        goto out;
    }
    if (raw.outputs->n > PB_MAX_OUTPUTS) {
        rc = bad(err, raw.outputs, "pipeline \"%s\" has %zu outputs; at most %d", pl->name,
                 raw.outputs->n, PB_MAX_OUTPUTS);
        goto out;
    }
    pl->outs = calloc(raw.outputs->n, sizeof(*pl->outs));
    pl->out_names = calloc(raw.outputs->n, sizeof(*pl->out_names));
    if (!pl->outs || !pl->out_names) {
        rc = pb_err_set(err, PB_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < raw.outputs->n; i++) {
        pl->nouts = i + 1;
        pl->outs[i].index = i;
        pl->outs[i].pl = pl;
        pthread_mutex_init(&pl->outs[i].vlock, NULL);
        pthread_mutex_init(&pl->outs[i].slock, NULL);
        rc =
            load_output(c, pl, &pl->outs[i], raw.outputs->keys[i], raw.outputs->vals[i], http, err);
        if (rc)
            goto out;
        pl->out_names[i] = pl->outs[i].name;
    }
    if (raw.process) {
        struct pb_proc_env penv = {.pipeline = pl->name,
                                   .noutputs = pl->nouts,
                                   .outputs = pl->out_names,
                                   .http = http,
                                   .allow = pl->in->allow,
                                   .mock = c->mock};
        if (raw.process->type != PB_NODE_SEQ) {
            rc = bad(err, raw.process, "\"process\" of pipeline \"%s\" must be a list of steps%s",
                     pl->name, "");
            goto out;
        }
        if (raw.process->n && pl->in->raw) {
            rc = bad(err, raw.process,
                     "pipeline \"%s\" has process steps, which need format: json%s", pl->name, "");
            goto out;
        }
        pl->procs = calloc(raw.process->n ? raw.process->n : 1, sizeof(*pl->procs));
        if (!pl->procs) {
            rc = pb_err_set(err, PB_ENOMEM, "out of memory");
            goto out;
        }
        for (size_t i = 0; i < raw.process->n; i++) {
            pl->nprocs = i + 1;
            rc = load_processor(pl, &pl->procs[i], &penv, raw.process->vals[i], err);
            if (rc)
                goto out;
        }
    }
    rc = setup_routing(pl, err);
out:
    pb_conf_free(pipeline_fields, &raw);
    return rc;
}

void pb_diag_free(struct pb_diag *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->nerr; i++)
        free(d->err[i]);
    for (size_t i = 0; i < d->nwarn; i++)
        free(d->warn[i]);
    memset(d, 0, sizeof(*d));
}

static void diag_add(struct pb_diag *d, bool warning, const struct pb_err *e)
{
    char buf[PB_ERR_MSG_MAX + 4200];
    size_t *n = warning ? &d->nwarn : &d->nerr;
    char **list = warning ? d->warn : d->err;
    if (*n >= PB_DIAG_MAX) {
        d->dropped++;
        return;
    }
    pb_err_format(e, buf, sizeof(buf));
    if (warning) {
        /* "file:line:col: warning: ..." */
        const char *msg = e->msg;
        if (e->file)
            snprintf(buf, sizeof(buf), "%s:%d:%d: warning: %s", e->file, e->line, e->col, msg);
        else
            snprintf(buf, sizeof(buf), "warning: %s", msg);
    }
    if ((list[*n] = strdup(buf)))
        (*n)++;
}

__attribute__((format(printf, 4, 5))) static void
warn_at(struct pb_diag *d, const struct pb_node *n, const char *what, const char *fmt, ...)
{
    struct pb_err e = {0};
    char msg[PB_ERR_MSG_MAX];
    va_list ap;
    (void)what;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    pb_err_at(&e, 0, n->file, n->line, n->col, "%s", msg);
    diag_add(d, true, &e);
}

/* $NAME left literal anywhere in the document. */
static void warn_bare_vars(struct pb_diag *d, const struct pb_node *n)
{
    if (!n)
        return;
    if (n->type == PB_NODE_SCALAR && n->bare_var)
        warn_at(d, n, "var", "$NAME is not interpolated; write ${NAME} (or $$ for a literal $)");
    for (size_t i = 0; (n->type == PB_NODE_MAP || n->type == PB_NODE_SEQ) && i < n->n; i++)
        warn_bare_vars(d, n->vals[i]);
}

/* Who a URL belongs to, for lint's warning: an output (o) or an input (in
 * of pipeline pl). */
struct url_owner {
    const struct pb_allowlist *allow;
    const struct pb_output *o;
    const char *pipeline;
};

/* A URL field whose host is a literal internal address (or localhost) that
 * the owner's outbound allow list does not let through. What follows
 * depends on who: an HTTP output dead-letters every delivery (the URL is
 * the delivery's), a broker output never connects and its deliveries wait,
 * an input stays reconnecting. No DNS: names other than localhost are
 * checked when connecting. */
static void warn_url(struct pb_diag *d, const struct url_owner *w, const struct pb_node *v)
{
    char host[256];
    const char *p = strstr(v->str, "://");
    if (!p)
        return;
    p += 3;
    const char *at = strpbrk(p, "@/?#");
    if (at && *at == '@')
        p = at + 1;
    size_t n;
    if (*p == '[') {
        const char *close = strchr(p, ']');
        if (!close)
            return;
        p++;
        n = (size_t)(close - p);
    } else {
        n = strcspn(p, ":/?#");
    }
    if (n == 0 || n >= sizeof(host))
        return;
    memcpy(host, p, n);
    host[n] = 0;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    size_t sl;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (strcasecmp(host, "localhost") == 0) {
        a4->sin_family = AF_INET;
        a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sl = sizeof(*a4);
    } else if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        sl = sizeof(*a4);
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        sl = sizeof(*a6);
    } else {
        return;
    }
    const char *range = pb_addr_internal_range(&ss, sl);
    if (!range || pb_outbound_check(w->allow, host, &ss, sl) == 0)
        return;
    if (!w->o)
        warn_at(d, v, "url",
                "the input of pipeline \"%s\" connects to %s (%s), which the outbound guard "
                "refuses unless outbound.allow lists it: it would stay reconnecting",
                w->pipeline, host, range);
    else if (strncasecmp(v->str, "http", 4) == 0)
        warn_at(d, v, "url",
                "output \"%s\" sends to %s (%s), which the outbound guard refuses unless "
                "outbound.allow lists it: every delivery would be dead-lettered",
                w->o->name, host, range);
    else
        warn_at(d, v, "url",
                "output \"%s\" connects to %s (%s), which the outbound guard refuses unless "
                "outbound.allow lists it: it would never connect, and its deliveries would wait",
                w->o->name, host, range);
}

static void warn_urls(struct pb_diag *d, const struct url_owner *w, const struct pb_node *body,
                      const struct pb_field *fields)
{
    for (size_t i = 0; fields && fields[i].name; i++) {
        const struct pb_node *v = body ? pb_node_get(body, fields[i].name) : NULL;
        if (!v)
            continue;
        if ((fields[i].flags & PB_FIELD_URL) && v->type == PB_NODE_SCALAR)
            warn_url(d, w, v);
        else if (fields[i].type == PB_F_OBJECT && v->type == PB_NODE_MAP)
            warn_urls(d, w, v, fields[i].sub);
    }
}

/* tls.insecure_skip_verify anywhere in a plugin's block; who: "output \"x\""... */
static void warn_insecure(struct pb_diag *d, const char *who, const struct pb_node *body)
{
    const struct pb_node *tls = body && body->type == PB_NODE_MAP ? pb_node_get(body, "tls") : NULL;
    const struct pb_node *v =
        tls && tls->type == PB_NODE_MAP ? pb_node_get(tls, "insecure_skip_verify") : NULL;
    if (v && v->type == PB_NODE_SCALAR && strcmp(v->str, "true") == 0)
        warn_at(d, v, "tls",
                "%s: tls.insecure_skip_verify: the partner's certificate is not "
                "checked, so anyone on the path can read and change what is sent",
                who);
}

static void check_listen(struct pb_config *c, const struct pb_node *root, struct pb_diag *d,
                         struct pb_err *first)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    if (pb_listen_parse(c->server.listen, &ss, &sl) == 0)
        return;
    const struct pb_node *srv = pb_node_get(root, "server");
    const struct pb_node *n = srv ? pb_node_get(srv, "listen") : NULL;
    struct pb_err e = {0};
    pb_err_at(&e, PB_ECONFIG, n ? n->file : c->path, n ? n->line : 1, n ? n->col : 1,
              "server.listen \"%s\" is not host:port, [v6]:port or :port with a port of "
              "0-65535 and a host that is an IP address, localhost or 0.0.0.0",
              c->server.listen);
    if (!first->code)
        *first = e;
    if (d)
        diag_add(d, false, &e);
}

/* Does pipeline i declare a route another one before it has? */
static bool route_clash(const struct pb_config *c, size_t i, const char **other, const char **path)
{
    const struct pb_input *b = c->pipelines[i].in;
    for (size_t j = 0; b && j < i; j++) {
        const struct pb_input *a = c->pipelines[j].in;
        for (size_t x = 0; a && x < a->nroutes; x++)
            for (size_t y = 0; y < b->nroutes; y++)
                if (strcmp(a->routes[x].path, b->routes[y].path) == 0) {
                    *other = c->pipelines[j].name;
                    *path = b->routes[y].path;
                    return true;
                }
    }
    return false;
}

struct pb_config *pb_config_load(const char *path, struct pb_http_client *http, struct pb_err *err)
{
    return pb_config_load_diag(path, http, false, NULL, err);
}

static struct pb_config *load(const char *path, struct pb_http_client *http, bool once,
                              struct pb_mock *mock, struct pb_diag *diag, struct pb_err *err);

struct pb_config *pb_config_load_diag(const char *path, struct pb_http_client *http, bool once,
                                      struct pb_diag *diag, struct pb_err *err)
{
    return load(path, http, once, NULL, diag, err);
}

struct pb_config *pb_config_load_test(const char *path, struct pb_mock *mock, struct pb_diag *diag,
                                      struct pb_err *err)
{
    return load(path, NULL, false, mock, diag, err);
}

static struct pb_config *load(const char *path, struct pb_http_client *http, bool once,
                              struct pb_mock *mock, struct pb_diag *diag, struct pb_err *err)
{
    struct pb_err first = {0}, local = {0};
    struct pb_config *c = calloc(1, sizeof(*c));
    if (!err)
        err = &local;
    if (!c) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    c->once = once;
    c->mock = mock;
    c->path = strdup(path);
    c->doc = pb_conf_load_file(path, err);
    if (!c->path || !c->doc)
        goto fail;
    const struct pb_node *root = pb_conf_root(c->doc);
    if (!root || root->type != PB_NODE_MAP) {
        pb_err_at(err, PB_ECONFIG, path, root ? root->line : 1, root ? root->col : 1,
                  "the configuration must be a map with server, state and pipelines");
        goto fail;
    }
    if (pb_conf_decode(root, top_fields, c, err))
        goto fail;
    check_listen(c, root, diag, &first);
    struct pb_err ce = {0};
    if (pb__config_check_cluster(c, root, &ce) != 0) {
        if (!first.code)
            first = ce;
        if (diag)
            diag_add(diag, false, &ce);
    }
    const struct pb_node *pls = c->pipelines_node;
    if (pls->type != PB_NODE_MAP || pls->n == 0) {
        pb_err_at(err, PB_ECONFIG, pls->file, pls->line, pls->col,
                  "\"pipelines\" must be a map of named pipelines");
        goto fail;
    }
    c->pipelines = calloc(pls->n, sizeof(*c->pipelines));
    if (!c->pipelines) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        goto fail;
    }
    /* Every pipeline is checked, so one run reports every error. */
    for (size_t i = 0; i < pls->n; i++) {
        c->npipelines = i + 1;
        c->pipelines[i].index = i;
        struct pb_err e = {0};
        if (load_pipeline(c, &c->pipelines[i], pls->keys[i], pls->vals[i], http, &e)) {
            if (!e.code)
                e.code = PB_ECONFIG;
            if (!first.code)
                first = e;
            if (diag)
                diag_add(diag, false, &e);
            if (!diag || e.code == PB_ENOMEM)
                break;
            continue;
        }
        const char *a_name = NULL, *rpath = NULL;
        if (route_clash(c, i, &a_name, &rpath)) {
            const struct pb_node *at = pls->vals[i];
            pb_err_at(&e, PB_ECONFIG, at->file, at->line, at->col,
                      "pipelines \"%s\" and \"%s\" both listen on path %s", a_name,
                      c->pipelines[i].name, rpath);
            if (!first.code)
                first = e;
            if (diag)
                diag_add(diag, false, &e);
        }
        if (diag) {
            struct pb_pipeline *pl = &c->pipelines[i];
            const struct pb_node *outs = pb_node_get(pls->vals[i], "outputs");
            for (size_t j = 0; outs && j < pl->nouts; j++) {
                const struct pb_node *blk = outs->vals[j];
                struct url_owner w = {.allow = pl->outs[j].allow, .o = &pl->outs[j]};
                if (blk->type == PB_NODE_MAP && blk->n == 1) {
                    warn_urls(diag, &w, blk->vals[0], pl->outs[j].plugin->fields);
                    char who[PB_NAME_MAX + 16];
                    snprintf(who, sizeof(who), "output \"%s\"", pl->outs[j].name);
                    warn_insecure(diag, who, blk->vals[0]);
                }
            }
            const struct pb_node *inb = pb_node_get(pls->vals[i], "input");
            if (pl->in && inb && inb->type == PB_NODE_MAP && inb->n == 1) {
                struct url_owner w = {.allow = pl->in->allow, .pipeline = pl->name};
                warn_urls(diag, &w, inb->vals[0], pl->in->plugin->fields);
                char who[PB_NAME_MAX + 32];
                snprintf(who, sizeof(who), "input of pipeline \"%s\"", pl->name);
                warn_insecure(diag, who, inb->vals[0]);
            }
            const struct pb_node *steps = pb_node_get(pls->vals[i], "process");
            for (size_t j = 0; steps && steps->type == PB_NODE_SEQ && j < steps->n; j++) {
                const struct pb_node *blk = steps->vals[j];
                if (blk->type != PB_NODE_MAP || blk->n != 1)
                    continue;
                char who[PB_NAME_MAX + 48];
                snprintf(who, sizeof(who), "process step %zu of pipeline \"%s\"", j + 1, pl->name);
                warn_insecure(diag, who, blk->vals[0]);
            }
        }
    }
    if (!first.code) {
        struct pb_err e = {0};
        if (pb__config_check_events(c, &e) != 0) {
            first = e;
            if (diag)
                diag_add(diag, false, &e);
        }
    }
    if (diag)
        warn_bare_vars(diag, root);
    if (first.code) {
        *err = first;
        goto fail;
    }
    return c;
fail:
    if (diag && diag->nerr == 0 && err->code)
        diag_add(diag, false, err);
    if (err && !err->code)
        err->code = PB_ECONFIG;
    if (err && err->file) {
        /* The position points into the document, which goes away now. */
        static _Thread_local char file[4096];
        snprintf(file, sizeof(file), "%s", err->file);
        err->file = file;
    }
    pb_config_destroy(c);
    return NULL;
}

static void destroy_output(struct pb_output *o)
{
    /* Sub-outputs share everything but their name and state. */
    for (size_t i = 0; i < o->nvouts; i++)
        pb__sub_free(o->vouts[i]);
    pb__output_kv_drop(o);
    free(o->vouts);
    o->vouts = NULL;
    o->nvouts = 0;
    free(o->schedule_owned);
    if (o->pl) {
        pthread_mutex_destroy(&o->vlock);
        pb__output_cleanup(o);
    }
    if (o->plugin && o->ctx) {
        if (o->plugin->destroy)
            o->plugin->destroy(o->ctx);
        pb_conf_free(o->plugin->fields, o->ctx);
    }
    free(o->ctx);
    pb_conf_free(output_common_fields, &o->common);
    pb_jq_destroy(o->map_jq);
    pb_jq_destroy(o->rate_key_jq);
    free(o->common.rate_key);
    free(o->common.events_pipeline);
    pb_allowlist_destroy(o->allow);
    pb_sched_q_cleanup(&o->sq);
    free(o->name);
}

static void destroy_pipeline(struct pb_pipeline *pl)
{
    pb__input_free(pl->in);
    for (size_t i = 0; i < pl->nprocs; i++) {
        struct pb_route_step *pr = &pl->procs[i];
        if (pr->plugin && pr->ctx) {
            if (pr->plugin->destroy)
                pr->plugin->destroy(pr->ctx);
            if (pr->plugin->scalar_form) {
                char *s;
                memcpy(&s, (char *)pr->ctx + pr->plugin->scalar_offset, sizeof(s));
                /* The long form decodes into the same slot; free it once. */
                free(s);
                s = NULL;
                memcpy((char *)pr->ctx + pr->plugin->scalar_offset, &s, sizeof(s));
            }
            pb_conf_free(pr->plugin->fields, pr->ctx);
        }
        free(pr->ctx);
    }
    free(pl->procs);
    for (size_t i = 0; i < pl->nouts; i++)
        destroy_output(&pl->outs[i]);
    free(pl->outs);
    free(pl->out_names);
    if (pl->router.name) {
        pthread_mutex_destroy(&pl->router.vlock);
        pthread_mutex_destroy(&pl->router.slock);
        pb_sched_q_cleanup(&pl->router.sq);
        free(pl->router.name);
    }
    free(pl->ingest_outs);
    free(pl->ingest_names);
    pb_jq_destroy(pl->key_jq);
    free(pl->ordering_key);
    free(pl->name);
}

void pb_config_destroy(struct pb_config *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->npipelines; i++)
        destroy_pipeline(&c->pipelines[i]);
    free(c->pipelines);
    pb_conf_free(top_fields, c);
    pb_conf_doc_destroy(c->doc);
    free(c->path);
    free(c);
}

struct pb_pipeline *pb_engine_pipeline(struct pb_engine *e, const char *name)
{
    for (size_t i = 0; i < e->cfg->npipelines; i++)
        if (strcmp(e->cfg->pipelines[i].name, name) == 0)
            return &e->cfg->pipelines[i];
    return NULL;
}

struct pb_output *pb_pipeline_output(struct pb_pipeline *pl, const char *name)
{
    for (size_t i = 0; i < pl->nouts; i++)
        if (strcmp(pl->outs[i].name, name) == 0)
            return &pl->outs[i];
    return NULL;
}
