/* pb_jq.h - jq programs (libjq) with patchbay's fidelity rules.
 *
 * A compiled program belongs to one thread. Inputs are parsed from bytes
 * after a fidelity check: an integer literal beyond 2^53 or a number with
 * more significant digits than a double carries is refused (PB_EFIDELITY)
 * rather than rounded. Outputs holding NaN or infinities are refused too. */
#ifndef PB_JQ_H
#define PB_JQ_H

#include <stdbool.h>
#include <stddef.h>

#include <jv.h>

#include "pb_err.h"

struct pb_jq;

/* Compile program; NULL with the jq compiler's message in err. */
struct pb_jq *pb_jq_compile(const char *program, struct pb_err *err);
void pb_jq_destroy(struct pb_jq *q);
/* A condition: only the first output counts, so `.a, .b` is not an error;
 * no output is false. */
struct pb_jq *pb_jq_compile_predicate(const char *program, struct pb_err *err);
/* Run a predicate on in and meta (both borrowed): *truth is jq truthiness
 * of its first output. 0 or PB_EJQ... with err. */
int pb_jq_test(struct pb_jq *q, jv in, jv meta, bool *truth, struct pb_err *err);

/* Does the program name $meta? When it does not, callers may pass jv_null()
 * instead of parsing the message's metadata. */
bool pb_jq_uses_meta(const struct pb_jq *q);

/* Run q on in (ownership taken). Collects up to max_out results into out[]
 * (each owned by the caller) and their count into *nout; more results than
 * max_out is an error. A jq runtime error returns PB_EJQ with its text.
 * libjq 1.6 offers no step limit: only the number of outputs is bounded, so a
 * program that loops without producing output is the configuration's bug. */
int pb_jq_run(struct pb_jq *q, jv in, jv *out, size_t max_out, size_t *nout, struct pb_err *err);
/* The same with $meta bound to meta (ownership taken; jv_null() when the
 * message has none). Every program can name $meta. */
int pb_jq_run_meta(struct pb_jq *q, jv in, jv meta, jv *out, size_t max_out, size_t *nout,
                   struct pb_err *err);

/* The first output of q on in (with $meta bound to meta; both taken) as a
 * key: a string as its text, any other value as its JSON. *key is
 * malloc'd and NUL-terminated (*len, when len is not NULL, counts a string's
 * bytes, NULs inside included), or NULL when the program gave nothing or
 * null. Ordering keys, rate_limit keys and dedupe keys all read this way. */
int pb_jq_key(struct pb_jq *q, jv in, jv meta, char **key, size_t *len, struct pb_err *err);

/* Parse JSON bytes into a jv, refusing values jq cannot carry exactly. */
int pb_jq_parse(const char *buf, size_t len, jv *out, struct pb_err *err);
/* Serialize compactly into a malloc'd NUL-terminated buffer (takes v).
 * PB_EFIDELITY when v holds NaN or an infinity. */
int pb_jq_dump(jv v, char **buf, size_t *len, struct pb_err *err);
/* jq truthiness: false and null are false. Borrows v. */
bool pb_jq_truthy(jv v);

#endif
