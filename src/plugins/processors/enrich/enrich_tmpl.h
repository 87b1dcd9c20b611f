/* enrich_tmpl.h - the enrich processor's URL templates and scalar jq
 * results (enrich_tmpl.c). */
#ifndef PB_ENRICH_TMPL_H
#define PB_ENRICH_TMPL_H

#include <stdbool.h>
#include <stddef.h>

#include "patchbay/pb_err.h"
#include "patchbay/pb_jq.h"

#define TMPL_MAX_PARTS 16

/* A string with {{ JQ }} parts. */
struct tmpl {
    size_t n;                      /* jq parts */
    char *lit[TMPL_MAX_PARTS + 1]; /* literal text around them */
    struct pb_jq *q[TMPL_MAX_PARTS];
};

/* Parse s into t (zeroed first); on an error t holds what was made so far
 * (et_free it). */
int et_parse(struct tmpl *t, const char *s, struct pb_err *err);
void et_free(struct tmpl *t);
/* Run q on msg with meta (borrowed): one scalar as text (malloc'd): strings
 * as they are, numbers as JSON. NULL with *null for null or no result, or
 * with err for anything else. */
char *et_run_scalar(struct pb_jq *q, jv msg, jv meta, bool *null, struct pb_err *err);
/* The URL for msg: t rendered, parts percent-encoded; NULL with err, or
 * with *null when a part is null. */
char *et_render_url(const struct tmpl *t, jv msg, jv meta, bool *null, struct pb_err *err);

#endif
