/* sql_input.h - the `sql` input's state, shared by sql.c (options, the
 * cursor as a checkpoint, the poll loop, submits) and sql_page.c (a query
 * run per driver and its result turned into a page of rows).
 *
 * Thread model: everything here belongs to the input's own loop thread. */
#ifndef PB_SQL_INPUT_H
#define PB_SQL_INPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "patchbay/pb_plugin.h"
#include "sql_common.h"

#define MAX_CURSOR_COLS 8

#define CKPT_NAME "cursor"

struct outbound_conf {
    struct pb_strlist allow;
};

struct cursor_conf {
    struct pb_strlist columns;
    const struct pb_node *initial;
};

struct row {
    char *body;
    size_t len;
    char *meta;
    char key[PB_ITEM_KEY_MAX + 1];
    char *dead; /* dead_reason, or NULL */
    struct sql_cval cv[MAX_CURSOR_COLS];
};

struct in_sql {
    /* options (read-only after init) */
    char *driver_name;
    char *dsn;
    char *query;
    struct cursor_conf cursor;
    int64_t interval_ms;
    int decimal; /* 0 string, 1 number */
    int64_t max_rows;
    uint64_t max_row;
    int64_t connect_timeout_ms;
    int64_t timeout_ms;
    int64_t window_ms;
    struct outbound_conf outbound;
    /* prepared by init */
    struct sql_target target;
    struct sql_params params;
    struct pb_allowlist *allow;
    size_t ncols;
    struct sql_cval initial[MAX_CURSOR_COLS];
    struct sql_fmt fmt;
    bool once;
    char pipeline[128];
    /* run time: the input's own loop thread */
    struct pb_input *in;
    struct pb_loop_timer *timer;
    struct sql_conn *conn;
    struct sql_cval cur[MAX_CURSOR_COLS]; /* as committed */
    struct row *rows;                     /* the page being committed */
    size_t nrows, cap, pos;               /* pos: the first row not yet committed */
    size_t chunk_end;                     /* rows[pos..chunk_end) are being committed */
    bool submitting;
    bool paused;
    bool stopped;
    int64_t backoff_ms;
    /* column lookup of the current result */
    int colidx[MAX_CURSOR_COLS];
};

void sqlin_cvals_free(struct sql_cval *cv, size_t n);
/* Frees the rows of the page and empties it. */
void sqlin_page_free(struct in_sql *s);
/* Run q (the cursor's values in it) and take its rows as s's page
 * (s->rows, s->nrows). 0, or -1 with the reason in err (s->conn->kind
 * tells whether the connection is lost). */
int sqlin_poll_pg(struct in_sql *s, const char *q, char *err, size_t errlen);
int sqlin_poll_my(struct in_sql *s, const char *q, char *err, size_t errlen);
int sqlin_poll_lite(struct in_sql *s, const char *q, char *err, size_t errlen);

#endif
