/* kafka_meta.h - what the kafka input makes of one consumed message: its
 * $meta, its idempotency key, and whether a format: json body is JSON.
 * Pure functions of the message; any thread. */
#ifndef PB_KAFKA_META_H
#define PB_KAFKA_META_H

#include <stdbool.h>
#include <stddef.h>

#include <librdkafka/rdkafka.h>

#define KAFKA_REASON_MAX 160

/* $meta as JSON object text (malloc'd, *len set): topic, partition, offset,
 * key (or key_base64 when it is not UTF-8; null when absent), timestamp and
 * timestamp_type, headers (name -> UTF-8 value, or null; the last of a
 * repeated name) and headers_base64 for values that are not UTF-8. NULL on
 * ENOMEM. */
char *kafka_message_meta(const rd_kafka_message_t *m, size_t *len);
/* The idempotency key into buf (PB_ITEM_KEY_MAX + 1 bytes): the value of
 * the message's header named header (when header is not NULL and the
 * message has it, 1-255 visible ASCII characters), else
 * "<topic>:<partition>:<offset>"; a topic name too long for the key is
 * shortened and carries a digest of the whole name. */
void kafka_message_key(const rd_kafka_message_t *m, const char *header, char *buf, size_t len);
/* True when the body is not one JSON text, with the reason in buf. */
bool kafka_json_invalid(const rd_kafka_message_t *m, char *buf, size_t len);
/* RFC 4648 base64 of data (malloc'd, NUL-terminated), or NULL. */
char *kafka_base64(const void *data, size_t len);

#endif
