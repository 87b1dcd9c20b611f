/* graphql.c - GraphQL over the http output (graphql.h).
 *
 * A GraphQL server answers 200 even when an operation failed, with the
 * failures in an `errors` array; such an answer is a failed delivery. It
 * is retried only when an error carries an extension code listed in
 * retry_on (a server's THROTTLED, SERVICE_UNAVAILABLE...); otherwise it is
 * permanent and goes to the dead-letter queue with the first message.
 *
 * Threads: graphql_body runs on the dispatcher's thread (its jq program is
 * that thread's); graphql_classify anywhere. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "graphql.h"

const struct pb_field graphql_fields[] = {
    {.name = "query",
     .type = PB_F_STR,
     .offset = offsetof(struct graphql_conf, query),
     .flags = PB_FIELD_REQUIRED,
     .doc = "the GraphQL document (a mutation)"},
    {.name = "variables",
     .type = PB_F_STR,
     .offset = offsetof(struct graphql_conf, variables),
     .def = ".",
     .doc = "jq over the message giving the variables object"},
    {.name = "operation_name",
     .type = PB_F_STR,
     .offset = offsetof(struct graphql_conf, operation_name)},
    {.name = "retry_on",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct graphql_conf, retry_on),
     .doc = "errors[].extensions.code values worth a retry (default: none)"},
    {0},
};

int graphql_init(struct graphql_conf *g, struct pb_err *err)
{
    g->on = g->query != NULL;
    if (!g->on)
        return 0;
    if (!*g->query)
        return pb_err_set(err, PB_ECONFIG, "graphql.query is empty");
    g->vars_jq = pb_jq_compile(g->variables ? g->variables : ".", err);
    if (!g->vars_jq) {
        char msg[PB_ERR_MSG_MAX];
        snprintf(msg, sizeof(msg), "%s", err->msg);
        return pb_err_set(err, PB_ECONFIG, "graphql.variables: %s", msg);
    }
    return 0;
}

void graphql_cleanup(struct graphql_conf *g)
{
    pb_jq_destroy(g->vars_jq);
    g->vars_jq = NULL;
}

int graphql_body(struct graphql_conf *g, const char *payload, size_t len, const char *meta,
                 size_t meta_len, char **body, size_t *blen, struct pb_err *err)
{
    jv in, m = jv_null(), out[1];
    size_t n = 0;
    int rc = pb_jq_parse(payload, len, &in, err);
    if (rc)
        return rc;
    if (meta && pb_jq_parse(meta, meta_len, &m, NULL) != 0)
        m = jv_null();
    rc = pb_jq_run_meta(g->vars_jq, in, m, out, 1, &n, err);
    if (rc)
        return rc;
    if (n == 0)
        return pb_err_set(err, PB_EJQ, "graphql.variables gave no value");
    if (jv_get_kind(out[0]) != JV_KIND_OBJECT && jv_get_kind(out[0]) != JV_KIND_NULL) {
        jv_free(out[0]);
        return pb_err_set(err, PB_EJQ, "graphql.variables must give an object");
    }
    jv req = jv_object();
    req = jv_object_set(req, jv_string("query"), jv_string(g->query));
    req = jv_object_set(req, jv_string("variables"), out[0]);
    if (g->operation_name)
        req = jv_object_set(req, jv_string("operationName"), jv_string(g->operation_name));
    return pb_jq_dump(req, body, blen, err);
}

/* Printable text of s (no quotes or controls) appended to buf. */
static void put_text(char *buf, size_t cap, const char *s)
{
    size_t n = strlen(buf);
    for (; s && *s && n + 1 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        buf[n++] = (c >= 0x20 && c < 0x7f) ? (char)c : ' ';
    }
    buf[n] = 0;
}

static bool listed(const struct pb_strlist *l, const char *code)
{
    for (size_t i = 0; code && i < l->n; i++)
        if (strcmp(l->items[i], code) == 0)
            return true;
    return false;
}

enum pb_result graphql_classify(const struct graphql_conf *g, const char *body, size_t len,
                                bool truncated, char *buf, size_t buflen)
{
    json_error_t je;
    json_t *j = json_loadb(body, len, 0, &je);
    enum pb_result r = PB_RESULT_OK;
    buf[0] = 0;
    if (!json_is_object(j)) {
        snprintf(buf, buflen, "%s",
                 truncated ? "GraphQL answer larger than max_response: its errors cannot be read"
                           : "not a GraphQL answer (no JSON object)");
        r = PB_RESULT_PERMANENT;
        goto out;
    }
    json_t *errors = json_object_get(j, "errors");
    if (!json_is_array(errors) || json_array_size(errors) == 0)
        goto out;
    bool retry = false;
    const char *first_code = NULL, *first_msg = NULL;
    size_t i;
    json_t *e;
    json_array_foreach(errors, i, e)
    {
        const char *code =
            json_string_value(json_object_get(json_object_get(e, "extensions"), "code"));
        if (!first_msg)
            first_msg = json_string_value(json_object_get(e, "message"));
        if (!first_code)
            first_code = code;
        if (listed(&g->retry_on, code))
            retry = true;
    }
    r = retry ? PB_RESULT_RETRY : PB_RESULT_PERMANENT;
    snprintf(buf, buflen, "GraphQL errors (%zu): ", json_array_size(errors));
    put_text(buf, buflen, first_msg ? first_msg : "(no message)");
    if (first_code) {
        put_text(buf, buflen, " [");
        put_text(buf, buflen, first_code);
        put_text(buf, buflen, "]");
    }
out:
    json_decref(j);
    return r;
}
