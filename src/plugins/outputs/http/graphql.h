/* graphql.h - the `graphql:` block of the http output (graphql.c): the
 * request body built from a query and variables, and the answer's
 * `errors` array classified by their extension codes. */
#ifndef PB_OUT_HTTP_GRAPHQL_H
#define PB_OUT_HTTP_GRAPHQL_H

#include <stdbool.h>
#include <stddef.h>

#include "patchbay/pb_jq.h"
#include "patchbay/pb_plugin.h"

struct graphql_conf {
    char *query;
    char *variables; /* jq over the message (after the output's map); default "." */
    char *operation_name;
    struct pb_strlist retry_on; /* extension codes that make an error worth retrying */
    /* run time */
    struct pb_jq *vars_jq; /* the dispatcher thread's */
    bool on;
};
extern const struct pb_field graphql_fields[];

int graphql_init(struct graphql_conf *g, struct pb_err *err);
void graphql_cleanup(struct graphql_conf *g);
/* {"query": ..., "variables": <variables on the payload>, "operationName": ...}
 * malloc'd into *body. A negative code with err: the delivery cannot be
 * sent (dead-letter it). */
int graphql_body(struct graphql_conf *g, const char *payload, size_t len, const char *meta,
                 size_t meta_len, char **body, size_t *blen, struct pb_err *err);
/* A 2xx answer: OK unless it has errors, then RETRY when one of their
 * extension codes is in retry_on, else PERMANENT; the reason into buf. */
enum pb_result graphql_classify(const struct graphql_conf *g, const char *body, size_t len,
                                bool truncated, char *buf, size_t buflen);

#endif
