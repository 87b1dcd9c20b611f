/* migrate.c - `patchbay migrate CONFIG`: bring the state store of a
 * configuration to this binary's schema and exit. SQLite stores migrate
 * when the daemon opens them; a shared PostgreSQL store is only migrated
 * here, so the nodes of a cluster on an older binary keep running until
 * they are replaced. Runs on the caller's thread; opens no node, starts no
 * thread of the store. */
#include <stdio.h>

#include "core/engine.h"

int pb_engine_migrate(const char *config_path)
{
    struct pb_err err = {0};
    struct pb_diag diag = {0};
    char ebuf[512];
    int rc = 1;

    struct pb_config *c = pb_config_load_diag(config_path, NULL, false, &diag, &err);
    for (size_t i = 0; i < diag.nerr; i++)
        fprintf(stderr, "%s\n", diag.err[i]);
    pb_diag_free(&diag);
    if (!c) {
        fprintf(stderr, "%s: the configuration is not valid (patchbay lint %s)\n", config_path,
                config_path);
        return 1;
    }
    struct pb_store_opts so;
    pb_store_opts_default(&so);
    so.migrate = true;
    so.migrate_only = true;
    so.version = PB_VERSION;
    struct pb_store *s = pb_store_open(c->state, &so, &err);
    if (!s) {
        fprintf(stderr, "patchbay migrate: %s\n", pb_err_format(&err, ebuf, sizeof(ebuf)));
        goto out;
    }
    pb_store_destroy(s);
    printf("%s: the state store is at this patchbay's schema\n", config_path);
    rc = 0;
out:
    pb_config_destroy(c);
    return rc;
}
