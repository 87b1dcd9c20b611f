/* http_poll_conf.c - the http_poll input's options (field tables) and init:
 * validation and compiling its jq programs, without I/O (lint and reload
 * call it). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_poll_int.h"

const char *const poll_methods[] = {"GET", "POST", NULL};
static const char *const page_types[] = {"none", "page",     "offset", "cursor",
                                         "link", "next_url", NULL};

static const struct pb_field pagination_fields[] = {
    {.name = "type",
     .type = PB_F_ENUM,
     .offset = offsetof(struct pagination_conf, type),
     .choices = page_types,
     .def = "none",
     .doc = "page | offset | cursor | link | next_url"},
    {.name = "param",
     .type = PB_F_STR,
     .offset = offsetof(struct pagination_conf, param),
     .doc = "query parameter of the page number, offset or token"},
    {.name = "start",
     .type = PB_F_INT,
     .offset = offsetof(struct pagination_conf, start),
     .def = "-1",
     .min = -1,
     .max = INT64_MAX,
     .doc = "first page number (1) or offset (0)"},
    {.name = "size_param",
     .type = PB_F_STR,
     .offset = offsetof(struct pagination_conf, size_param),
     .doc = "query parameter of the page size"},
    {.name = "size",
     .type = PB_F_INT,
     .offset = offsetof(struct pagination_conf, size),
     .def = "0",
     .min = 0,
     .max = 100000,
     .doc = "records per page asked for"},
    {.name = "cursor",
     .type = PB_F_STR,
     .offset = offsetof(struct pagination_conf, cursor),
     .doc = "jq on a response: the next page's token (type cursor)"},
    {.name = "next_url",
     .type = PB_F_STR,
     .offset = offsetof(struct pagination_conf, next_url),
     .doc = "jq on a response: the next page's URL (type next_url)"},
    {0},
};
static const struct pb_field graphql_fields[] = {
    {.name = "query",
     .type = PB_F_STR,
     .offset = offsetof(struct graphql_conf, query),
     .flags = PB_FIELD_REQUIRED},
    {.name = "variables",
     .type = PB_F_STR,
     .offset = offsetof(struct graphql_conf, variables),
     .def = "{}",
     .doc = "jq program making the variables object"},
    {.name = "cursor",
     .type = PB_F_STR,
     .offset = offsetof(struct graphql_conf, cursor),
     .doc = "jq on a response: the connection's end cursor"},
    {.name = "has_next",
     .type = PB_F_STR,
     .offset = offsetof(struct graphql_conf, has_next),
     .doc = "jq on a response: is there a next page"},
    {.name = "variable",
     .type = PB_F_STR,
     .offset = offsetof(struct graphql_conf, variable),
     .def = "after",
     .doc = "the variable the end cursor is passed in"},
    {0},
};
static const struct pb_field cursor_fields[] = {
    {.name = "value",
     .type = PB_F_STR,
     .offset = offsetof(struct cursor_conf, value),
     .flags = PB_FIELD_REQUIRED,
     .doc = "jq over an item: its cursor value (updated_at, a sequence number)"},
    {.name = "param",
     .type = PB_F_STR,
     .offset = offsetof(struct cursor_conf, param),
     .flags = PB_FIELD_REQUIRED,
     .doc = "query parameter (GraphQL: variable) the cursor is sent in"},
    {.name = "initial",
     .type = PB_F_STR,
     .offset = offsetof(struct cursor_conf, initial),
     .doc = "the cursor of the first run (none: the parameter is left out)"},
    {.name = "lookback",
     .type = PB_F_DURATION,
     .offset = offsetof(struct cursor_conf, lookback_ms),
     .def = "0",
     .doc = "ask from this long before the cursor (timestamps, unix times)"},
    {0},
};

const struct pb_field poll_fields[] = {
    {.name = "url",
     .type = PB_F_STR,
     .offset = offsetof(struct in_poll, url),
     .flags = PB_FIELD_REQUIRED | PB_FIELD_URL},
    {.name = "method",
     .type = PB_F_ENUM,
     .offset = offsetof(struct in_poll, method),
     .choices = poll_methods,
     .def = "GET"},
    {.name = "headers", .type = PB_F_STRMAP, .offset = offsetof(struct in_poll, headers)},
    {.name = "body",
     .type = PB_F_STR,
     .offset = offsetof(struct in_poll, body),
     .doc = "request body (POST)"},
    {.name = "auth",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct in_poll, auth),
     .sub = pb_http_auth_fields,
     .doc = "bearer, basic, api_key or oauth2"},
    {.name = "tls",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct in_poll, tls),
     .sub = pb_http_tls_fields,
     .doc = "ca_file, cert_file, key_file, server_name, min_version"},
    {.name = "interval",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_poll, interval_ms),
     .def = "1m",
     .doc = "time from the start of one run to the next"},
    {.name = "cron",
     .type = PB_F_STR,
     .offset = offsetof(struct in_poll, cron),
     .doc = "five-field cron schedule (UTC) instead of interval"},
    {.name = "items",
     .type = PB_F_STR,
     .offset = offsetof(struct in_poll, items),
     .def = ".[]",
     .doc = "jq on a response: each output is a record"},
    {.name = "pagination",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct in_poll, pagination),
     .sub = pagination_fields},
    {.name = "graphql",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct in_poll, graphql),
     .sub = graphql_fields},
    {.name = "cursor",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct in_poll, cursor),
     .sub = cursor_fields,
     .doc = "incremental sync"},
    {.name = "dedupe_key",
     .type = PB_F_STR,
     .offset = offsetof(struct in_poll, dedupe_key),
     .doc = "jq over an item: its idempotency key (default: a digest of the record)"},
    {.name = "max_pages",
     .type = PB_F_INT,
     .offset = offsetof(struct in_poll, max_pages),
     .def = "1000",
     .min = 1,
     .max = 1000000,
     .doc = "pages one run reads at most"},
    {.name = "timeout",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_poll, timeout_ms),
     .def = "30s"},
    {.name = "max_response",
     .type = PB_F_SIZE,
     .offset = offsetof(struct in_poll, max_response),
     .def = "16MiB",
     .doc = "a larger page fails the run"},
    {.name = "idempotency_window",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_poll, window_ms),
     .def = "30d",
     .doc = "how long record keys are remembered"},
    {0},
};

/* ---- init -------------------------------------------------------------------------- */

static int compile(const char *prog, struct pb_jq **q, const char *what, bool predicate,
                   struct pb_err *err)
{
    if (!prog)
        return 0;
    *q = predicate ? pb_jq_compile_predicate(prog, err) : pb_jq_compile(prog, err);
    if (*q)
        return 0;
    char m[PB_ERR_MSG_MAX];
    snprintf(m, sizeof(m), "%s", err->msg);
    return pb_err_set(err, PB_ECONFIG, "http_poll: %s: %s", what, m);
}

int poll_init(void *ctx, struct pb_input_env *env, struct pb_err *err)
{
    struct in_poll *p = ctx;
    int rc;
    char why[200];
    snprintf(p->pipeline, sizeof(p->pipeline), "%s", env->pipeline);
    p->once = env->once;
    p->committed = jv_null();
    p->sent = jv_null();
    p->run_max = jv_null();
    if (strncasecmp(p->url, "http://", 7) != 0 && strncasecmp(p->url, "https://", 8) != 0)
        return pb_err_set(err, PB_ECONFIG, "http_poll: url \"%s\" must start with http(s)://",
                          p->url);
    if (p->cron && poll_cron_parse(p->cron, &p->cr, why, sizeof(why)) != 0)
        return pb_err_set(err, PB_ECONFIG, "http_poll: cron: %s", why);
    if (!p->cron && p->interval_ms < 1000)
        return pb_err_set(err, PB_ECONFIG, "http_poll: interval must be at least 1s");
    struct pagination_conf *pg = &p->pagination;
    if (p->graphql.query && pg->type != PAGE_NONE)
        return pb_err_set(err, PB_ECONFIG,
                          "http_poll: graphql pages with its own cursor; leave pagination out");
    if (p->graphql.query && (!p->graphql.cursor || !p->graphql.has_next))
        return pb_err_set(err, PB_ECONFIG, "http_poll: graphql needs cursor and has_next");
    if ((pg->type == PAGE_PAGE || pg->type == PAGE_OFFSET || pg->type == PAGE_CURSOR) && !pg->param)
        pg->param = strdup(pg->type == PAGE_PAGE     ? "page"
                           : pg->type == PAGE_OFFSET ? "offset"
                                                     : "cursor");
    if (pg->start < 0)
        pg->start = pg->type == PAGE_PAGE ? 1 : 0;
    if (pg->type == PAGE_OFFSET && !pg->size_param)
        pg->size_param = strdup("limit");
    if (pg->type == PAGE_CURSOR && !pg->cursor)
        return pb_err_set(err, PB_ECONFIG, "http_poll: pagination type cursor needs cursor: JQ");
    if (pg->type == PAGE_NEXT_URL && !pg->next_url)
        return pb_err_set(err, PB_ECONFIG,
                          "http_poll: pagination type next_url needs next_url: JQ");
    if (p->body && p->method != 1)
        return pb_err_set(err, PB_ECONFIG, "http_poll: a body needs method: POST");
    if ((rc = compile(p->items, &p->items_q, "items", false, err)) ||
        (rc = compile(p->graphql.query ? p->graphql.cursor : pg->cursor, &p->token_q,
                      "pagination cursor", false, err)) ||
        (rc = compile(pg->next_url, &p->next_q, "pagination next_url", false, err)) ||
        (rc = compile(p->graphql.has_next, &p->has_next_q, "graphql.has_next", true, err)) ||
        (rc = compile(p->graphql.query ? p->graphql.variables : NULL, &p->vars_q,
                      "graphql.variables", false, err)) ||
        (rc = compile(p->cursor.value, &p->value_q, "cursor.value", false, err)) ||
        (rc = compile(p->dedupe_key, &p->key_q, "dedupe_key", false, err)))
        return rc;
    if (p->headers.n + 1 > MAX_HEADERS)
        return pb_err_set(err, PB_ECONFIG, "http_poll: too many headers");
    for (size_t i = 0; i < p->headers.n; i++) {
        if (!pb_http_header_name_ok(p->headers.keys[i]) ||
            !pb_http_header_value_ok(p->headers.vals[i]))
            return pb_err_set(err, PB_ECONFIG, "http_poll: header \"%s\" has a bad name or value",
                              p->headers.keys[i]);
        p->statics[p->nstatic++] = (struct pb_http_header){p->headers.keys[i], p->headers.vals[i]};
    }
    struct pb_http_owner who = {env->pipeline, "input", env->allow};
    if (!(p->a = pb_http_auth_create(&p->auth, &who, err)) ||
        !(p->t = pb_http_tls_create(&p->tls, &who, err))) {
        char m[PB_ERR_MSG_MAX];
        snprintf(m, sizeof(m), "%s", err->msg);
        return pb_err_set(err, err->code ? err->code : PB_ECONFIG, "http_poll: %s", m);
    }
    p->allow = env->allow;
    env->idempotency_window_ms = p->window_ms;
    return 0;
}
