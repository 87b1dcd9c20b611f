/* views.h - the admin API's JSON views of the state store (views.c). */
#ifndef PB_ADMIN_VIEWS_H
#define PB_ADMIN_VIEWS_H

#include <jansson.h>

#include "store/pb_store.h"

/* New references, or NULL + err (PB_ENOTFOUND when absent). Times are unix
 * ms; "state" is pb_dstate_name(); absent values are null.
 * message:      {id, pipeline, received_at, content_type, body | body_base64,
 *                meta?, parent?, routed?, children?, deliveries:[{id, output, state,
 *                attempts, next_at, created_at, updated_at, last_status, last_error,
 *                replay_of, attempt_log:[{n, started_at, latency_ms, status, state,
 *                error}]}]}
 * dead letters: {items:[{id, message_id, pipeline, output, attempts, created_at,
 *                dead_at, last_status, last_error}], next_after}
 * dead letter:  one item plus content_type, body | body_base64 and attempt_log */
json_t *pb_admin_message_json(struct pb_store *s, const char *msg_id, struct pb_err *err);
json_t *pb_admin_dead_letters_json(struct pb_store *s, const char *pipeline, const char *output,
                                   int64_t after_id, int limit, struct pb_err *err);
json_t *pb_admin_dead_letter_json(struct pb_store *s, int64_t delivery_id, struct pb_err *err);
/* Dead letters by query: {items, next_after} oldest first, or {items,
 * next_before} newest first (null on the last page). */
json_t *pb_admin_dead_query_json(struct pb_store *s, const struct pb_dead_query *q,
                                 struct pb_err *err);

/* A body as embedded JSON when it is UTF-8 JSON that prints back unchanged
 * apart from whitespace, else NULL (1.10 would print as 1.1000000000000001,
 * duplicate keys would collapse). */
json_t *pb_admin_body_json(const void *data, size_t len);
/* Set "body" or "body_base64" on obj. 0 or PB_ENOMEM. */
int pb_admin_set_body(json_t *obj, const void *data, size_t len);
/* Text of n bytes as a JSON string, each byte that is not part of valid
 * UTF-8 replaced by U+FFFD. NULL on ENOMEM. */
json_t *pb_admin_text_json(const char *s, size_t n);

#endif
