/* template.c - template fields: "review.{{ .order_id }}" is the literal
 * "review." followed by what the jq program .order_id gives for the message.
 * Routing keys, subjects, topics, file paths and mail subjects are
 * templates; their parts are compiled once, at load, so lint finds a
 * broken one, and evaluated per attempt on the message as it reached the
 * output. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/template.h"
#include "patchbay/pb_jq.h"

#define PARTS_MAX 32
#define RENDER_MAX (64 * 1024)

struct part {
    char *lit; /* literal text, or NULL for a jq part */
    size_t lit_len;
    struct pb_jq *q;
};

struct pb_template {
    char *text; /* as written */
    size_t n;
    struct part parts[];
};

bool pb_template_uses_meta(const struct pb_template *t)
{
    for (size_t i = 0; t && i < t->n; i++)
        if (pb_jq_uses_meta(t->parts[i].q))
            return true;
    return false;
}

void pb_template_destroy(struct pb_template *t)
{
    if (!t)
        return;
    free(t->text);
    for (size_t i = 0; i < t->n; i++) {
        free(t->parts[i].lit);
        pb_jq_destroy(t->parts[i].q);
    }
    free(t);
}

/* Where the part opened just before p ends: the "}}" at brace depth 0,
 * outside strings. NULL when it never closes. */
static const char *part_end(const char *p)
{
    int depth = 0;
    for (; *p; p++) {
        if (*p == '"') {
            for (p++; *p && *p != '"'; p++)
                if (*p == '\\' && p[1])
                    p++;
            if (!*p)
                return NULL;
        } else if (*p == '{') {
            depth++;
        } else if (*p == '}') {
            if (depth == 0 && p[1] == '}')
                return p;
            if (depth > 0)
                depth--;
        }
    }
    return NULL;
}

struct pb_template *pb_template_compile(const char *text, struct pb_err *err)
{
    struct pb_template *t = calloc(1, sizeof(*t) + PARTS_MAX * sizeof(struct part));
    const char *p = text;
    if (!t || !(t->text = strdup(text))) {
        free(t);
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    while (*p) {
        if (t->n == PARTS_MAX) {
            pb_err_set(err, PB_ECONFIG, "template \"%s\" has more than %d parts", text, PARTS_MAX);
            goto fail;
        }
        struct part *pt = &t->parts[t->n];
        const char *open = strstr(p, "{{");
        if (open != p) {
            size_t n = open ? (size_t)(open - p) : strlen(p);
            pt->lit = malloc(n + 1);
            if (!pt->lit) {
                pb_err_set(err, PB_ENOMEM, "out of memory");
                goto fail;
            }
            memcpy(pt->lit, p, n);
            pt->lit[n] = 0;
            pt->lit_len = n;
            t->n++;
            p += n;
            continue;
        }
        const char *close = part_end(p + 2);
        if (!close) {
            pb_err_set(err, PB_ECONFIG, "template \"%s\": a {{ is not closed by }}", text);
            goto fail;
        }
        size_t n = (size_t)(close - (p + 2));
        char *prog = malloc(n + 1);
        if (!prog) {
            pb_err_set(err, PB_ENOMEM, "out of memory");
            goto fail;
        }
        memcpy(prog, p + 2, n);
        prog[n] = 0;
        bool blank = strspn(prog, " \t\r\n") == n;
        if (!blank)
            pt->q = pb_jq_compile(prog, err);
        free(prog);
        if (blank) {
            pb_err_set(err, PB_ECONFIG, "template \"%s\": an empty {{ }} part", text);
            goto fail;
        }
        if (!pt->q)
            goto fail;
        t->n++;
        p = close + 2;
    }
    return t;
fail:
    pb_template_destroy(t);
    return NULL;
}

const char *pb_template_text(const struct pb_template *t)
{
    return t->text;
}

bool pb_template_is_literal(const struct pb_template *t)
{
    for (size_t i = 0; i < t->n; i++)
        if (t->parts[i].q)
            return false;
    return true;
}

static int append(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > RENDER_MAX)
        return PB_ETOOBIG;
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        while (c < *len + n + 1)
            c *= 2;
        char *b = realloc(*buf, c);
        if (!b)
            return PB_ENOMEM;
        *buf = b;
        *cap = c;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = 0;
    return 0;
}

static const char *kind_name(jv_kind k)
{
    switch (k) {
    case JV_KIND_NULL:
        return "null";
    case JV_KIND_TRUE:
    case JV_KIND_FALSE:
        return "a boolean";
    case JV_KIND_ARRAY:
        return "an array";
    case JV_KIND_OBJECT:
        return "an object";
    default:
        return "a value";
    }
}

int pb_template_render(struct pb_template *t, jv body, jv meta, char **out, size_t *olen,
                       struct pb_err *err)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = append(&buf, &len, &cap, "", 0);
    for (size_t i = 0; rc == 0 && i < t->n; i++) {
        struct part *pt = &t->parts[i];
        if (pt->lit) {
            rc = append(&buf, &len, &cap, pt->lit, pt->lit_len);
            continue;
        }
        jv v[1];
        size_t n = 0;
        rc = pb_jq_run_meta(pt->q, jv_copy(body), jv_copy(meta), v, 1, &n, err);
        if (rc)
            break;
        if (n == 0) {
            rc = pb_err_set(err, PB_EJQ, "template part %zu gave no value", i + 1);
            break;
        }
        jv_kind k = jv_get_kind(v[0]);
        if (k == JV_KIND_STRING) {
            rc = append(&buf, &len, &cap, jv_string_value(v[0]),
                        (size_t)jv_string_length_bytes(jv_copy(v[0])));
            jv_free(v[0]);
        } else if (k == JV_KIND_NUMBER) {
            char *num = NULL;
            size_t nl = 0;
            rc = pb_jq_dump(v[0], &num, &nl, err);
            if (rc == 0)
                rc = append(&buf, &len, &cap, num, nl);
            free(num);
        } else {
            jv_free(v[0]);
            rc = pb_err_set(err, PB_EJQ, "template part %zu gave %s; expected a string or a number",
                            i + 1, kind_name(k));
        }
    }
    if (rc == PB_ETOOBIG)
        pb_err_set(err, rc, "template renders longer than %d bytes", RENDER_MAX);
    else if (rc == PB_ENOMEM)
        pb_err_set(err, rc, "out of memory");
    if (rc) {
        free(buf);
        return rc;
    }
    *out = buf;
    if (olen)
        *olen = len;
    return 0;
}
