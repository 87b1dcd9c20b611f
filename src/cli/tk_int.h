/* tk_int.h - the insides of the case runner of `patchbay test`, shared by
 * tk_case.c (running a case: items, the pipeline, mocked answers) and
 * tk_expect.c (what a case expects, and the report). Single-threaded. */
#ifndef PB_CLI_TK_INT_H
#define PB_CLI_TK_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "cli/testkit.h"

enum kind { K_DELIVERED, K_DEAD, K_ROUTED_AWAY, K_FILTERED, K_REJECTED };

/* What one output (or the route stage) ended with for one message. */
struct outcome {
    enum kind kind;
    size_t item; /* 1-based input item */
    size_t part; /* split child (1-based), 0 when not split */
    char *payload;
    size_t len;
    char *meta; /* $meta text */
    char **fields;
    size_t nfields;
    int attempts;
    char *reason; /* dead letter's reason, filter's note */
};

struct outlist {
    struct outcome *v;
    size_t n, cap;
};

struct item {
    char *body;
    size_t len;
    const char *content_type;
    const struct pb_node *meta, *headers; /* may be NULL */
    const struct pb_node *at;
};

/* Conditions compiled once per test file (jq compiles slowly). */
struct qcache {
    struct qcache *next;
    char *text;
    struct pb_jq *q;
};

struct run {
    struct qcache **cache;
    struct pb_config *c;
    struct pb_mock *mock;
    struct pb_route_keys *keys; /* what process steps remember during the case */
    const struct tk_file *tf;
    const struct tk_opts *o;
    struct pb_pipeline *pl;
    const struct pb_node *kase;
    const struct pb_node *out_mocks; /* mock.outputs */
    struct outlist *outs;            /* per output */
    struct outlist route;            /* the route stage's dead letters */
    struct outlist rejected;
    struct item *items;
    size_t nitems, itemcap;
    char *rbuf; /* report */
    size_t rlen;
    FILE *rep;
    int problems;
};

/* ---- tk_expect.c ------------------------------------------------------------------------- */

const char *tk_kind_name(enum kind k);
/* A problem of the case, one report line (counted: the case fails). */
void tk_problem(struct run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tk_problem_err(struct run *r, const struct pb_err *err);
/* err at node n's position, PB_EINVAL. */
int tk_at_err(struct pb_err *err, const struct pb_node *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A one-line picture of an outcome. */
void tk_summary(const struct outcome *oc, char *buf, size_t len);
/* What output o got, against spec (a list, a word, {dead_letter}). */
void tk_check_output(struct run *r, const struct pb_output *o, const struct pb_node *spec);
/* The route stage's dead letters, or the rejected items, against spec
 * (text, true, or a list of them; NULL: none may be there). */
void tk_check_stage(struct run *r, const char *what, const struct outlist *l,
                    const struct pb_node *spec);
/* Every outcome, for --verbose. */
void tk_show_all(struct run *r);
/* Compiled conditions of a test file, freed at its end. */
void tk_qcache_free(struct qcache *c);

#endif
