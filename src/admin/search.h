/* search.h - the message explorer's jq predicate (search.c): a condition
 * over a message's body and $meta, as the search runs it on each message
 * the store returns. One thread at a time (a compiled jq program is). */
#ifndef PB_ADMIN_SEARCH_H
#define PB_ADMIN_SEARCH_H

#include <stddef.h>
#include <stdint.h>

#include "patchbay/pb_err.h"

#define PB_ADMIN_PRED_MAX 2000 /* bytes of a predicate */

struct pb_admin_pred;

/* NULL + err (the jq compiler's message) when it does not compile. */
struct pb_admin_pred *pb_admin_pred_compile(const char *program, struct pb_err *err);
void pb_admin_pred_destroy(struct pb_admin_pred *p);
/* 1 when the predicate holds for the message, else 0. The body is the
 * program's input when it is JSON jq carries exactly (content type absent,
 * application/json or +json), else null; $meta is meta or null. A program
 * that fails on a message counts as no match, and is counted. */
int pb_admin_pred_match(struct pb_admin_pred *p, const void *body, size_t len,
                        const char *content_type, const char *meta, size_t meta_len);
/* Messages the program failed on so far, and the first failure's text. */
uint64_t pb_admin_pred_errors(const struct pb_admin_pred *p, const char **first);

#endif
