/* cli.h - the subcommands of the patchbay command line. */
#ifndef PB_CLI_H
#define PB_CLI_H

int pb_cmd_run(int argc, char **argv);
int pb_cmd_lint(int argc, char **argv);
int pb_cmd_migrate(int argc, char **argv);
int pb_cmd_dlq(int argc, char **argv);
int pb_cmd_endpoints(int argc, char **argv);
int pb_cmd_test(int argc, char **argv);
int pb_cmd_eval(int argc, char **argv);
int pb_cmd_init(int argc, char **argv);

#include <jansson.h>

/* One admin API request: returns the HTTP status (0 on a transport error,
 * reported on stderr) and the parsed JSON answer in *out (may be NULL). */
long pb_cli_request(const char *base, const char *token, const char *method, const char *path,
                    const char *body, json_t **out);
/* Print the API's error for a failed request; returns 1. */
int pb_cli_fail_status(long status, json_t *body);
/* Append ?name=value / &name=value (escaped) to q when value is set. */
void pb_cli_append_arg(char *q, size_t len, const char *name, const char *value);

#endif
