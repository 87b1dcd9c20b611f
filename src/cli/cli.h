/* cli.h - the subcommands of the patchbay command line. */
#ifndef PB_CLI_H
#define PB_CLI_H

int pb_cmd_run(int argc, char **argv);
int pb_cmd_lint(int argc, char **argv);
int pb_cmd_dlq(int argc, char **argv);

#endif
