/* template.h - template fields: strings with {{ JQ }} parts (template.c). */
#ifndef PB_CORE_TEMPLATE_H
#define PB_CORE_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

#include <jv.h>

#include "patchbay/pb_err.h"

struct pb_template;

/* Parse and compile text. A part runs from "{{" to the "}}" that closes it
 * (braces inside the program and strings are skipped over). NULL + err for
 * an unclosed or empty part, or one that does not compile. */
struct pb_template *pb_template_compile(const char *text, struct pb_err *err);
void pb_template_destroy(struct pb_template *t);
/* The text as compiled (borrowed from t). */
const char *pb_template_text(const struct pb_template *t);
/* True when the text has no {{ }} part: it renders to itself. */
bool pb_template_is_literal(const struct pb_template *t);
/* Does any part name $meta? */
bool pb_template_uses_meta(const struct pb_template *t);
/* Render on body with $meta (both borrowed) into a malloc'd string. A part
 * must give a string (inserted as is) or a number (as JSON prints it);
 * anything else, no value, or a jq error is PB_EJQ with the reason. One
 * thread per template (jq states are not shared). */
int pb_template_render(struct pb_template *t, jv body, jv meta, char **out, size_t *len,
                       struct pb_err *err);

#endif
