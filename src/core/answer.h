/* answer.h - the printable excerpt of a partner's answer kept per attempt
 * (answer.c). Pure: unit-tested in test_answer.c. */
#ifndef PB_CORE_ANSWER_H
#define PB_CORE_ANSWER_H

#include <stddef.h>

#include "patchbay/pb_plugin.h"

/* The first bytes of src[0..len) as valid UTF-8 text of at most
 * PB_ANSWER_EXCERPT_MAX bytes into dst (NUL-terminated): a sequence that
 * is not valid UTF-8, and a control character other than tab, newline and
 * carriage return, becomes U+FFFD; the cut never splits a character;
 * trailing white space is dropped. Returns the length; 0 when src is NULL
 * or there is nothing printable. */
size_t pb_answer_excerpt(char dst[PB_ANSWER_EXCERPT_MAX + 1], const void *src, size_t len);

#endif
