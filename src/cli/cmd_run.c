/* cmd_run.c - `patchbay run CONFIG`, `patchbay lint CONFIG` and
 * `patchbay migrate CONFIG`. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "admin/api.h"
#include "core/engine.h"

/* A CONFIG argument alone; a stray option is named. */
static bool one_config(int argc, char **argv, const char *cmd)
{
    for (int i = 1; i < argc; i++)
        if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "patchbay %s: unknown option %s\n", cmd, argv[i]);
            return false;
        }
    return argc == 2;
}

int pb_cmd_run(int argc, char **argv)
{
    bool force = false, once = false;
    int n = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--force") == 0)
            force = true;
        else if (strcmp(argv[i], "--once") == 0)
            once = true;
        else
            argv[n++] = argv[i];
    }
    if (!one_config(n, argv, "run")) {
        fprintf(stderr, "usage: patchbay run [--once] [--force] CONFIG\n");
        return 2;
    }
    extern char **pb_cli_argv;
    struct pb_run_opts o = {.config_path = argv[1],
                            .argv = pb_cli_argv,
                            .force = force,
                            .once = once,
                            .attach = pb_admin_attach,
                            .quiesce = pb_admin_quiesce,
                            .detach = pb_admin_detach};
    return pb_engine_run(&o);
}

int pb_cmd_lint(int argc, char **argv)
{
    if (!one_config(argc, argv, "lint")) {
        fprintf(stderr, "usage: patchbay lint CONFIG\n");
        return 2;
    }
    struct pb_err err = {0};
    struct pb_diag diag = {0};
    struct pb_config *c = pb_config_load_diag(argv[1], NULL, false, &diag, &err);
    for (size_t i = 0; i < diag.nwarn; i++)
        fprintf(stderr, "%s\n", diag.warn[i]);
    for (size_t i = 0; i < diag.nerr; i++)
        fprintf(stderr, "%s\n", diag.err[i]);
    if (diag.dropped)
        fprintf(stderr, "... and %zu more\n", diag.dropped);
    if (!c) {
        fprintf(stderr, "%s: %zu error%s\n", argv[1], diag.nerr, diag.nerr == 1 ? "" : "s");
        pb_diag_free(&diag);
        return 1;
    }
    pb_diag_free(&diag);
    size_t nout = 0;
    for (size_t i = 0; i < c->npipelines; i++)
        nout += c->pipelines[i].nouts;
    printf("%s: ok (%zu pipeline%s, %zu output%s)\n", argv[1], c->npipelines,
           c->npipelines == 1 ? "" : "s", nout, nout == 1 ? "" : "s");
    pb_config_destroy(c);
    return 0;
}

int pb_cmd_migrate(int argc, char **argv)
{
    if (!one_config(argc, argv, "migrate")) {
        fprintf(stderr, "usage: patchbay migrate CONFIG\n");
        return 2;
    }
    return pb_engine_migrate(argv[1]);
}
