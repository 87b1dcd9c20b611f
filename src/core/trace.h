/* trace.h - W3C Trace Context (traceparent, tracestate) for messages and
 * their attempts (trace.c). Pure functions: unit-tested in test_trace.c. */
#ifndef PB_CORE_TRACE_H
#define PB_CORE_TRACE_H

#include <stdbool.h>
#include <stddef.h>

#define PB_TRACEPARENT_LEN 55 /* "00-" 32 hex "-" 16 hex "-" 2 hex */
#define PB_TRACESTATE_MAX 512

/* Is s a traceparent a trace can be continued from? Version 00 exactly,
 * or a later version read as 00 (its first 55 characters, then '-' or the
 * end); lower-case hex; trace and parent ids not all zero; version ff
 * refused. On success the version-00 form goes into out (flags other than
 * sampled cleared). */
bool pb_trace_parse(const char *s, char out[PB_TRACEPARENT_LEN + 1]);
/* The trace a new message belongs to: incoming when it parses, otherwise
 * a new trace (random trace and span ids, sampled). True when incoming was
 * taken. */
bool pb_trace_take(const char *incoming, char out[PB_TRACEPARENT_LEN + 1]);
/* A new span of the trace of parent (a parsed traceparent): same trace id
 * and flags, a new random span id. */
void pb_trace_child(const char *parent, char out[PB_TRACEPARENT_LEN + 1]);
/* A tracestate worth passing on: 1..PB_TRACESTATE_MAX bytes of printable
 * ASCII without '"' or '\' (so it needs no escaping in JSON). */
bool pb_trace_state_ok(const char *s);

/* The trace context an input put among the headers of an item's own $meta
 * (headers.traceparent, headers.tracestate; names in any case; a string
 * or the first of a list): found ones are copied into tp (parsed) and ts;
 * returns a mask, 1 for traceparent, 2 for tracestate. */
int pb_trace_from_item_meta(const char *meta, size_t len, char tp[PB_TRACEPARENT_LEN + 1],
                            char ts[PB_TRACESTATE_MAX + 1]);
/* The trace of a committed message: $meta.traceparent (and the tracestate
 * written right after it) as ingest wrote them, the first traceparent
 * found in $meta otherwise, and when there is none a trace derived from
 * msg_id, so every attempt of the message shares one. ts is "" when
 * there is no tracestate. */
void pb_trace_of_msg(const char *meta, size_t len, const char *msg_id,
                     char tp[PB_TRACEPARENT_LEN + 1], char ts[PB_TRACESTATE_MAX + 1]);

#endif
