/* enrich_tmpl.c - the enrich processor's URL templates ({{ JQ }} parts
 * rendered on the message, percent-encoded) and its scalar jq results.
 *
 * Pure: no I/O, no shared state; any thread (one template per caller). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "enrich_tmpl.h"

int et_parse(struct tmpl *t, const char *s, struct pb_err *err)
{
    const char *p = s;
    memset(t, 0, sizeof(*t));
    for (;;) {
        const char *open = strstr(p, "{{");
        const char *end = open ? open : p + strlen(p);
        t->lit[t->n] = strndup(p, (size_t)(end - p));
        if (!t->lit[t->n])
            return pb_err_set(err, PB_ENOMEM, "out of memory");
        if (!open)
            return 0;
        const char *close = strstr(open + 2, "}}");
        if (!close)
            return pb_err_set(err, PB_ECONFIG, "url: \"{{\" without \"}}\"");
        if (t->n == TMPL_MAX_PARTS)
            return pb_err_set(err, PB_ECONFIG, "url: more than %d {{ }} parts", TMPL_MAX_PARTS);
        char *prog = strndup(open + 2, (size_t)(close - open - 2));
        if (!prog)
            return pb_err_set(err, PB_ENOMEM, "out of memory");
        t->q[t->n] = pb_jq_compile(prog, err);
        free(prog);
        if (!t->q[t->n])
            return err->code ? err->code : PB_EJQ;
        t->n++;
        p = close + 2;
    }
}

void et_free(struct tmpl *t)
{
    for (size_t i = 0; i <= t->n && i <= TMPL_MAX_PARTS; i++)
        free(t->lit[i]);
    for (size_t i = 0; i < t->n; i++)
        pb_jq_destroy(t->q[i]);
    memset(t, 0, sizeof(*t));
}

/* A scalar jq result as text (malloc'd): strings as they are, numbers as
 * JSON. NULL for null/no result (*null set) or anything else. */
static char *scalar_text(jv v, bool *null, struct pb_err *err)
{
    char *s = NULL;
    *null = false;
    switch (jv_get_kind(v)) {
    case JV_KIND_STRING:
        s = strdup(jv_string_value(v));
        jv_free(v);
        if (!s)
            pb_err_set(err, PB_ENOMEM, "out of memory");
        return s;
    case JV_KIND_NUMBER:
        if (pb_jq_dump(v, &s, NULL, err) != 0)
            return NULL;
        return s;
    case JV_KIND_NULL:
        *null = true;
        jv_free(v);
        return NULL;
    default:
        pb_err_set(err, PB_EJQ, "yields %s, not a string or number", jv_kind_name(jv_get_kind(v)));
        jv_free(v);
        return NULL;
    }
}

/* Run q on msg with meta (borrowed): one scalar as text. */
char *et_run_scalar(struct pb_jq *q, jv msg, jv meta, bool *null, struct pb_err *err)
{
    jv out[1];
    size_t n = 0;
    if (pb_jq_run_meta(q, jv_copy(msg), jv_copy(meta), out, 1, &n, err) != 0)
        return NULL;
    if (n == 0) {
        *null = true;
        return NULL;
    }
    return scalar_text(out[0], null, err);
}

static void pct_append(char *out, size_t *len, size_t cap, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s && *len + 4 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            out[(*len)++] = (char)c;
        } else {
            out[(*len)++] = '%';
            out[(*len)++] = hex[c >> 4];
            out[(*len)++] = hex[c & 15];
        }
    }
    out[*len] = 0;
}

/* The URL for msg; NULL with err, or with *null when a part is null. */
char *et_render_url(const struct tmpl *t, jv msg, jv meta, bool *null, struct pb_err *err)
{
    size_t cap = 8192, len = 0;
    char *out = malloc(cap);
    *null = false;
    if (!out) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    out[0] = 0;
    for (size_t i = 0; i <= t->n; i++) {
        size_t l = strlen(t->lit[i]);
        if (len + l + 1 >= cap)
            goto toolong;
        memcpy(out + len, t->lit[i], l + 1);
        len += l;
        if (i == t->n)
            break;
        char *part = et_run_scalar(t->q[i], msg, meta, null, err);
        if (!part) {
            free(out);
            return NULL;
        }
        pct_append(out, &len, cap, part);
        free(part);
        if (len + 8 >= cap)
            goto toolong;
    }
    return out;
toolong:
    free(out);
    pb_err_set(err, PB_ETOOBIG, "the URL is longer than %zu bytes", cap);
    return NULL;
}
