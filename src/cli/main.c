/* main.c - the patchbay command: global options and subcommand dispatch. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

extern char **pb_cli_argv;
#include "patchbay/pb_log.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: patchbay COMMAND [--log-format human|json] [--log-level LEVEL] ...\n"
            "\n"
            "commands:\n"
            "  run [--once] [--force] CONFIG\n"
            "                             run the daemon (SIGTERM drains and exits)\n"
            "  lint CONFIG                validate a configuration; errors as file:line:col\n"
            "  migrate CONFIG             apply the state store's schema migrations\n"
            "  test [--watch] [--run TEXT] [--verbose] CONFIG...\n"
            "                             run the test cases next to each configuration\n"
            "  eval [--as map|filter|split|template] [--meta FILE] [--pretty] 'JQ' < SAMPLE\n"
            "                             run a mapping on a sample exactly as the engine would\n"
            "  init [PATTERN] [--output FILE|-] [--force] [--no-tests] [--list]\n"
            "                             write a starter configuration and its tests\n"
            "  dlq list [--pipeline P] [--output O] [--limit N] [--after ID] [--json]\n"
            "  dlq show ID                one dead letter with its attempts\n"
            "  dlq replay ID | --all [--pipeline P] [--output O]\n"
            "  dlq purge ID\n"
            "  endpoints list|create|show|secret|rotate|disable|enable|delete|recover ...\n"
            "                             managed webhook endpoints (see docs/webhooks.md)\n"
            "  version                    print the version\n"
            "\n"
            "dlq and endpoints commands reach a running daemon: --url (or PATCHBAY_URL, default\n"
            "http://127.0.0.1:8080) and --token (or PATCHBAY_ADMIN_TOKEN). Options may stand\n"
            "anywhere; `patchbay COMMAND --help` shows a command's usage.\n");
}

/* What `patchbay COMMAND --help` prints. */
static const struct {
    const char *cmd, *text;
} helps[] = {
    {"run", "usage: patchbay run [--once] [--force] CONFIG\n"
            "\n"
            "Run the daemon with the configuration CONFIG. SIGTERM (or SIGINT) drains and\n"
            "exits; SIGHUP reloads a valid new configuration in place. A configuration\n"
            "without an output that still has pending deliveries is refused; --force\n"
            "moves those deliveries to the dead-letter queue (\"output removed\").\n"
            "--once: exit once every finite input has finished and every delivery is done.\n"
            "Under systemd (Type=notify) it reports READY=1 once the listener takes\n"
            "requests, STOPPING=1 on SIGTERM and WATCHDOG=1 every WatchdogSec/2.\n"},
    {"test", "usage: patchbay test [--watch] [--run TEXT] [--verbose] [--color|--no-color] "
             "CONFIG...\n"
             "\n"
             "Run the test cases of each configuration: <name>.test.yaml and\n"
             "patchbay.test.yaml next to it, and tests/*.yaml. A case gives input items\n"
             "(body, raw, file; meta, headers), mocked answers for outputs and processors,\n"
             "and what each output should get (deliveries as exact JSON, a subset or a jq\n"
             "condition, routed_away, filtered, a dead letter with its reason). The\n"
             "pipeline's process steps and each output's map run as the daemon runs them;\n"
             "nothing is sent and no state is written. One line per case, a diff under a\n"
             "failing one; exit 1 if any failed. --watch runs again on every change in the\n"
             "configuration's folder; --run runs the cases whose name contains TEXT.\n"},
    {"eval", "usage: patchbay eval [--as map|filter|split|template] [--meta FILE] [--pretty] "
             "'JQ' < SAMPLE\n"
             "\n"
             "Run JQ on the JSON read from standard input as a map (default), filter, split\n"
             "or template field would: numbers a double cannot carry exactly, a key given\n"
             "twice, NaN and infinities are refused with the reason the message would be\n"
             "dead-lettered for. $meta is FILE's JSON object (default: a message of no\n"
             "input). Prints what would be sent, one value per line.\n"},
    {"init", "usage: patchbay init [PATTERN] [--output FILE|-] [--force] [--no-tests] "
             "[--list]\n"
             "\n"
             "Write a starter configuration for PATTERN (webhook-relay, api-sync,\n"
             "queue-bridge, cdc-to-api; default webhook-relay) to FILE (default\n"
             "patchbay.yaml; - for standard output) and its test cases next to it.\n"
             "An existing file is kept unless --force.\n"},
    {"lint", "usage: patchbay lint CONFIG\n"
             "\n"
             "Validate CONFIG without connecting anywhere; errors as file:line:col, exit 1.\n"},
    {"migrate", "usage: patchbay migrate CONFIG\n"
                "\n"
                "Bring the state store of CONFIG to this patchbay's schema and exit. A\n"
                "PostgreSQL store of an older schema is refused by `patchbay run` until this\n"
                "has run; SQLite stores are migrated by `run` itself.\n"},
    {"dlq", "usage: patchbay dlq list [--pipeline P] [--output O] [--limit N] [--after ID] "
            "[--json]\n"
            "       patchbay dlq show ID\n"
            "       patchbay dlq replay ID | --all [--pipeline P] [--output O]\n"
            "       patchbay dlq purge ID\n"
            "\n"
            "The dead-letter queue of a running daemon, through its admin API: --url (or\n"
            "PATCHBAY_URL, default http://127.0.0.1:8080) and --token (or "
            "PATCHBAY_ADMIN_TOKEN).\n"},
    {"endpoints",
     "usage: patchbay endpoints list [--pipeline P] [--output O]\n"
     "       patchbay endpoints create --output O --endpoint-url URL [--event TYPE]...\n"
     "                                 [--pipeline P] [--rate-limit R] [--description D]\n"
     "       patchbay endpoints show|secret|rotate|disable|enable|delete ID\n"
     "       patchbay endpoints recover ID --since (UNIX_MS | YYYY-MM-DDTHH:MM:SSZ)\n"
     "\n"
     "Managed webhook endpoints of a running daemon (docs/webhooks.md): --url (or\n"
     "PATCHBAY_URL) and --token (or PATCHBAY_ADMIN_TOKEN).\n"},
    {"version", "usage: patchbay version\n\nPrint the version.\n"},
    {"help", "usage: patchbay help\n\nPrint the commands.\n"},
};

/* The whole command line, for `run` to re-execute itself on SIGHUP. */
char **pb_cli_argv;

/* Options that mean the same to every command, taken wherever they stand
 * (before or after the command) and removed from what the command sees.
 * --url and --token reach the client commands as PATCHBAY_URL and
 * PATCHBAY_ADMIN_TOKEN. Returns 0, 1 (help asked: printed) or 2 (error). */
static int global_options(int *argc, char **argv, enum pb_log_format *fmt, enum pb_log_level *lvl,
                          bool *help)
{
    int out = 1;
    for (int i = 1; i < *argc; i++) {
        const char *a = argv[i];
        bool takes = !strcmp(a, "--log-format") || !strcmp(a, "--log-level") ||
                     !strcmp(a, "--url") || !strcmp(a, "--token");
        if (!strcmp(a, "--")) {
            while (i < *argc)
                argv[out++] = argv[i++];
            break;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            *help = true;
            continue;
        }
        if (!takes) {
            argv[out++] = argv[i];
            continue;
        }
        if (i + 1 >= *argc) {
            fprintf(stderr, "patchbay: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--log-format")) {
            if (!strcmp(v, "json"))
                *fmt = PB_LOG_JSON;
            else if (!strcmp(v, "human"))
                *fmt = PB_LOG_HUMAN;
            else {
                fprintf(stderr, "patchbay: --log-format takes human or json\n");
                return 2;
            }
        } else if (!strcmp(a, "--log-level")) {
            if (pb_log_parse_level(v, lvl) != 0) {
                fprintf(stderr, "patchbay: --log-level takes debug, info, warn or error\n");
                return 2;
            }
        } else {
            setenv(!strcmp(a, "--url") ? "PATCHBAY_URL" : "PATCHBAY_ADMIN_TOKEN", v, 1);
        }
    }
    argv[out] = NULL;
    *argc = out;
    return 0;
}

/* Run the command args[1] (args holds n entries, global options removed). */
static int dispatch(int n, char **args, bool help)
{
    const char *cmd = args[1];
    if (help) {
        for (size_t i = 0; i < sizeof(helps) / sizeof(helps[0]); i++)
            if (!strcmp(helps[i].cmd, cmd)) {
                fputs(helps[i].text, stdout);
                return 0;
            }
    }
    int sub_argc = n - 1;
    char **sub_argv = args + 1;
    if (strcmp(cmd, "run") == 0)
        return pb_cmd_run(sub_argc, sub_argv);
    if (strcmp(cmd, "lint") == 0)
        return pb_cmd_lint(sub_argc, sub_argv);
    if (strcmp(cmd, "migrate") == 0)
        return pb_cmd_migrate(sub_argc, sub_argv);
    if (strcmp(cmd, "test") == 0)
        return pb_cmd_test(sub_argc, sub_argv);
    if (strcmp(cmd, "eval") == 0)
        return pb_cmd_eval(sub_argc, sub_argv);
    if (strcmp(cmd, "init") == 0)
        return pb_cmd_init(sub_argc, sub_argv);
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

int main(int argc, char **argv)
{
    enum pb_log_format fmt = PB_LOG_HUMAN;
    enum pb_log_level lvl = PB_LOG_INFO;
    bool help = false;
    char **args = calloc((size_t)argc + 1, sizeof(*args));
    int n = argc;

    pb_cli_argv = argv;
    if (!args)
        return 1;
    memcpy(args, argv, (size_t)argc * sizeof(*args));
    int rc = global_options(&n, args, &fmt, &lvl, &help);
    if (rc) {
        free(args);
        return rc;
    }
    pb_log_setup(lvl, fmt);
    if (n >= 2 && !strcmp(args[1], "--version")) {
        printf("patchbay %s\n", PB_VERSION);
        free(args);
        return 0;
    }
    if (n < 2 || args[1][0] == '-') {
        rc = 2;
        if (help && n < 2) {
            usage(stdout);
            rc = 0;
        } else {
            if (n >= 2)
                fprintf(stderr, "patchbay: unknown option %s\n", args[1]);
            usage(stderr);
        }
        free(args);
        return rc;
    }
    rc = dispatch(n, args, help);
    free(args);
    return rc;
}
