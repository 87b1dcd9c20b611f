/* main.c - the patchbay command: global options and subcommand dispatch. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

extern char **pb_cli_argv;
#include "patchbay/pb_log.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: patchbay [--log-format human|json] [--log-level LEVEL] COMMAND ...\n"
            "\n"
            "commands:\n"
            "  run CONFIG                 run the daemon (SIGTERM drains and exits)\n"
            "  lint CONFIG                validate a configuration; errors as file:line:col\n"
            "  dlq list [--pipeline P] [--output O] [--limit N] [--after ID] [--json]\n"
            "  dlq show ID                one dead letter with its attempts\n"
            "  dlq replay ID | --all [--pipeline P] [--output O]\n"
            "  dlq purge ID\n"
            "  endpoints list|create|show|secret|rotate|disable|enable|delete|recover ...\n"
            "                             managed webhook endpoints (see docs/webhooks.md)\n"
            "  version                    print the version\n"
            "\n"
            "dlq and endpoints commands reach a running daemon: --url (or PATCHBAY_URL, default\n"
            "http://127.0.0.1:8080) and --token (or PATCHBAY_ADMIN_TOKEN).\n");
}

/* The whole command line, for `run` to re-execute itself on SIGHUP. */
char **pb_cli_argv;

int main(int argc, char **argv)
{
    pb_cli_argv = argv;
    enum pb_log_format fmt = PB_LOG_HUMAN;
    enum pb_log_level lvl = PB_LOG_INFO;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--log-format") == 0 && i + 1 < argc) {
            const char *v = argv[++i];
            if (strcmp(v, "json") == 0)
                fmt = PB_LOG_JSON;
            else if (strcmp(v, "human") == 0)
                fmt = PB_LOG_HUMAN;
            else {
                fprintf(stderr, "patchbay: --log-format takes human or json\n");
                return 2;
            }
        } else if (strcmp(argv[i], "--log-level") == 0 && i + 1 < argc) {
            if (pb_log_parse_level(argv[++i], &lvl) != 0) {
                fprintf(stderr, "patchbay: --log-level takes debug, info, warn or error\n");
                return 2;
            }
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("patchbay %s\n", PB_VERSION);
            return 0;
        } else {
            fprintf(stderr, "patchbay: unknown option %s\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    pb_log_setup(lvl, fmt);
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[i];
    int sub_argc = argc - i;
    char **sub_argv = argv + i;
    if (strcmp(cmd, "run") == 0)
        return pb_cmd_run(sub_argc, sub_argv);
    if (strcmp(cmd, "lint") == 0)
        return pb_cmd_lint(sub_argc, sub_argv);
    if (strcmp(cmd, "dlq") == 0)
        return pb_cmd_dlq(sub_argc, sub_argv);
    if (strcmp(cmd, "endpoints") == 0)
        return pb_cmd_endpoints(sub_argc, sub_argv);
    if (strcmp(cmd, "version") == 0) {
        printf("patchbay %s\n", PB_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "patchbay: unknown command \"%s\"\n", cmd);
    usage(stderr);
    return 2;
}
