/* sql_output.h - the `sql` output's state, shared by sql.c (options,
 * the connection, values, batches and outcomes) and sql_exec.c (statements
 * run per driver).
 *
 * Thread model: the run-time fields belong to the output's one worker
 * thread. */
#ifndef PB_SQL_OUTPUT_H
#define PB_SQL_OUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../inputs/sql/sql_common.h"
#include "patchbay/pb_jq.h"
#include "patchbay/pb_plugin.h"

#define MAX_COLS 256
#define STMT_NAME "pb_stmt"

struct upsert_conf {
    struct pb_strlist key;
};

struct batch_conf {
    int64_t count;
    int64_t period_ms;
};

enum { V_NULL = 0, V_TEXT, V_NUM, V_BOOL };

struct row {
    struct pb_delivery *d;
    char **v;            /* ncols values; NULL is SQL NULL */
    unsigned char *kind; /* V_* of each */
    int state;           /* 0 pending, -1 written (OK once committed), else enum pb_result + 1 */
    char *err;
};

struct out_sql {
    /* options (read-only after init) */
    char *driver_name;
    char *dsn;
    char *table;
    struct pb_strmap columns;
    char *statement;
    struct pb_strlist args;
    struct upsert_conf upsert;
    char *key_column;
    struct batch_conf batch;
    int64_t connect_timeout_ms;
    int64_t timeout_ms;
    /* prepared by init */
    struct sql_target target;
    size_t nprog;         /* columns or args */
    struct pb_jq **progs; /* the worker thread's once started */
    size_t ncols;         /* bound per row: nprog (+1 with key_column) */
    char *insert_head;    /* INSERT INTO t (c, ...) VALUES */
    char *insert_tail;    /* ON CONFLICT ... / ON DUPLICATE KEY ... */
    char *key_lookup;     /* SELECT 1 FROM t WHERE key_column = ? */
    char pipeline[128], output[128];
    /* run time: the worker thread */
    struct pb_output *out;
    struct sql_conn *conn;
    bool prepared; /* statement mode: STMT_NAME prepared on conn */
    MYSQL_STMT *my_stmt;
    sqlite3_stmt *lite_stmt;
};

/* A multi-row INSERT of rows[0..n) (with the upsert clause, if any): 0,
 * or -1 with the error in o->conn. */
int sqlout_insert_rows(struct out_sql *o, struct row **rows, size_t n);
/* The configured statement with r's arguments: 0 or -1 (o->conn). */
int sqlout_statement_row(struct out_sql *o, struct row *r);
/* r alone, by whichever of the two applies: 0 or -1 (o->conn). */
int sqlout_run_row(struct out_sql *o, struct row *r);
/* The last error of c is a unique violation. */
bool sqlout_unique_violation(const struct sql_conn *c);
/* Is r's idempotency key in key_column already? 1 yes, 0 no, -1 error. */
int sqlout_key_exists(struct out_sql *o, struct row *r);

#endif
