/* testkit.h - `patchbay test` and `patchbay eval`: test files, the case
 * runner and its reports (cmd_test.c, tk_case.c, tk_json.c).
 *
 * Single-threaded: the runner loads a configuration like lint does (no
 * HTTP client, no store, no listener) and drives the engine's own route
 * decision and attempt building (core/stage.h) on each case's messages. */
#ifndef PB_CLI_TESTKIT_H
#define PB_CLI_TESTKIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <jv.h>

#include "core/engine.h"
#include "patchbay/pb_conf.h"

/* ---- tk_json.c: values ---------------------------------------------------------------------- */

/* The JSON text of a YAML node: maps, lists, quoted scalars as strings,
 * unquoted null/true/false, numbers exactly as written (so a value jq cannot
 * carry exactly reaches the engine as it would from a partner), anything
 * else as a string. malloc'd; PB_ENOMEM or PB_ETOOBIG. */
int tk_node_json(const struct pb_node *n, char **out, size_t *len, struct pb_err *err);
/* The same as a jv, refusing numbers jq cannot carry exactly; errors at
 * the node's file:line:col. */
int tk_node_jv(const struct pb_node *n, jv *out, struct pb_err *err);
/* v (borrowed) pretty-printed, keys sorted, 2 spaces; malloc'd. */
char *tk_pretty(jv v);
/* v (borrowed) on one line, cut to max bytes with "..."; malloc'd. */
char *tk_compact(jv v, size_t max);
/* A unified line diff of want and got under indent, "-" expected, "+"
 * got; colored when color. */
void tk_diff(FILE *f, const char *want, const char *got, const char *indent, bool color);

/* ---- tk_case.c: running cases --------------------------------------------------------------- */

struct tk_opts {
    bool color;   /* ANSI colors in reports */
    bool verbose; /* show what each passing case delivered too */
};

struct tk_file {
    char *path;              /* the test file */
    char *dir;               /* its directory: fixtures are relative to it */
    struct pb_conf_doc *doc; /* the test file's tree */
    const struct pb_node *cases;
};

/* Run every case of tf against c (loaded with pb_config_load_test and
 * mock). Prints one line per case to out, a report under a failing one.
 * Adds to *passed and *failed. */
void tk_run_file(struct pb_config *c, struct pb_mock *mock, const struct tk_file *tf,
                 const char *filter, const struct tk_opts *o, FILE *out, int *passed, int *failed);

#endif
