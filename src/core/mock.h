/* mock.h - mocked answers for processors under `patchbay test` (mock.c):
 * the runner's side of pb_mock_http (pb_plugin.h). */
#ifndef PB_CORE_MOCK_H
#define PB_CORE_MOCK_H

#include <stdbool.h>
#include <stddef.h>

#include <jv.h>

#include "patchbay/pb_jq.h"
#include "patchbay/pb_plugin.h"

struct pb_mock *pb_mock_create(void);
void pb_mock_destroy(struct pb_mock *m);
/* A new case: no answers, no calls. */
void pb_mock_reset(struct pb_mock *m);
/* An answer for plugin's requests whose description contains match (a
 * subset, see pb_jv_subset; jv_null(): every request) and for which when
 * (may be NULL) is true. The description is {"method", "url", "key",
 * "headers": {lower-case name: value}, "body": JSON value or text}.
 * answer is an object: status (default 200), body (JSON, sent as its
 * text), raw (text, sent as is), headers, error (a transport error:
 * status 0), retry_after_ms. Answers are tried in the order added; the
 * first that matches answers. Takes match, when and answer. */
int pb_mock_add(struct pb_mock *m, const char *plugin, jv match, struct pb_jq *when, jv answer,
                struct pb_err *err);
/* The requests asked so far, as "plugin METHOD url (key K)" lines. */
size_t pb_mock_ncalls(const struct pb_mock *m);
const char *pb_mock_call(const struct pb_mock *m, size_t i);

/* Is want contained in got (both borrowed)? Objects: every member of want
 * is in got and contained in its value; arrays: the same length, each
 * element contained in got's; anything else: equal (numbers by value). */
bool pb_jv_subset(jv want, jv got);

#endif
