/* stage.h - what the engine does to one message, without a dispatcher or a
 * store: the route decision (route_stage.c) and what an attempt of an
 * output sends (attempt.c). The dispatcher runs these on its thread; the
 * `patchbay test` runner calls the same functions, so a test sees exactly
 * what the daemon would do. Pure: no clock, no I/O, no store. */
#ifndef PB_CORE_STAGE_H
#define PB_CORE_STAGE_H

#include <stddef.h>

#include "core/engine.h"
#include "core/route.h"

/* What pl's process steps make of msg, decided once (DESIGN semantics 9). */
struct pb_route_decision {
    struct pb_route_result res; /* the messages passed on and their outputs */
    /* Per item of res: the routed (or split) body as JSON text, NULL when
     * the steps left the body as received; lens[i] its length. */
    char **bodies;
    size_t *lens;
    char *key; /* ordering key of the message as received; NULL: unordered */
};

/* Run pl's steps on msg (borrowed), as the route stage does: the body
 * parsed under the fidelity rule, the ordering key taken, the steps run
 * (the keys they remember in keys: synchronous ones, or NULL for none),
 * changed bodies serialized. 0 with dec filled (pb__route_decision_cleanup
 * it), or a negative code with the reason the message is dead-lettered for
 * (dec is empty). */
int pb__route_decide(struct pb_pipeline *pl, const struct pb_msg *msg, struct pb_route_keys *keys,
                     struct pb_route_decision *dec, struct pb_err *err);
void pb__route_decision_cleanup(struct pb_route_decision *dec);
/* The two ends of pb__route_decide, for a caller that runs the steps
 * itself: msg parsed under the fidelity rule into *body and *meta, and its
 * ordering key (0, or a negative code with the reason and nothing to
 * free); then, once dec->res is filled, the changed bodies serialized (a
 * negative code with the reason; dec is cleaned up by the caller). */
int pb__route_input(struct pb_pipeline *pl, const struct pb_msg *msg, jv *body, jv *meta,
                    char **key, struct pb_err *err);
int pb__route_output(struct pb_route_decision *dec, struct pb_err *err);

/* What an attempt of o sends for msg (the message as routed): the
 * output's map run on it and its template fields rendered on it. Returns 1
 * when the map gives no value (filtered for this output; the note in err),
 * 0 with *payload (malloc'd, NULL: the body as it is, *plen then untouched)
 * and *tmpl (malloc'd array of o->ntmpls strings, NULL when o has none),
 * or a negative code with the reason the delivery is dead-lettered for.
 * On every non-zero return *payload and *tmpl are NULL. */
int pb__attempt_build(struct pb_output *o, const struct pb_msg *msg, char **payload, size_t *plen,
                      char ***tmpl, struct pb_err *err);
/* Free what pb__attempt_build made: n template fields (accepts NULL). */
void pb__attempt_tmpl_free(char **tmpl, size_t n);
/* The reason recorded when the retry policy gives up on a delivery. */
void pb__attempt_dead_reason(char *buf, size_t len, const char *error, const char *why);

#endif
