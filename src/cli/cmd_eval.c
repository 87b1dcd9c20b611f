/* cmd_eval.c - `patchbay eval 'JQ' < SAMPLE`: run a mapping on a sample
 * exactly as the engine would. The sample and $meta are parsed under the
 * fidelity rule (a number a double cannot carry exactly, a key given twice:
 * refused, as the route stage would dead-letter the message), the program
 * is compiled and run by the same code as a map, filter, split or template
 * field, and the result is serialized as the output would send it (NaN,
 * infinities and values nested too deep refused).
 *
 * Single-threaded. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/template.h"
#include "core/trace.h"
#include "patchbay/pb_jq.h"
#include "patchbay/pb_time.h"

#define SAMPLE_MAX ((size_t)64 << 20)
#define SPLIT_MAX 10000
#define MAP_MAX_OUT 16

static const char usage_text[] =
    "usage: patchbay eval [--as map|filter|split|template] [--meta FILE] [--pretty] 'JQ' "
    "[< SAMPLE]\n";

enum as { AS_MAP, AS_FILTER, AS_SPLIT, AS_TEMPLATE };

static char *slurp(FILE *f, size_t *len)
{
    size_t cap = 65536, n = 0;
    char *b = malloc(cap);
    while (b) {
        size_t k = fread(b + n, 1, cap - n - 1, f);
        n += k;
        if (k == 0)
            break;
        if (n + 1 == cap) {
            if (cap > SAMPLE_MAX) {
                free(b);
                fprintf(stderr, "patchbay eval: the sample is larger than 64 MiB\n");
                return NULL;
            }
            char *nb = realloc(b, cap * 2);
            if (!nb)
                free(b);
            b = nb;
            cap *= 2;
        }
    }
    if (!b) {
        fprintf(stderr, "patchbay eval: out of memory\n");
        return NULL;
    }
    if (ferror(f)) {
        free(b);
        fprintf(stderr, "patchbay eval: cannot read the sample\n");
        return NULL;
    }
    b[n] = 0;
    *len = n;
    return b;
}

static int print(jv v, bool pretty)
{
    struct pb_err err = {0};
    char *text = NULL;
    size_t len;
    if (pretty) {
        /* Checked as the engine would send it, shown indented. */
        if (pb_jq_dump(jv_copy(v), &text, &len, &err) != 0) {
            jv_free(v);
            fprintf(stderr, "patchbay eval: %s\n", err.msg);
            return 1;
        }
        free(text);
        jv s = jv_dump_string(v, JV_PRINT_INDENT_FLAGS(2));
        printf("%s\n", jv_string_value(s));
        jv_free(s);
        return 0;
    }
    if (pb_jq_dump(v, &text, &len, &err) != 0) {
        fprintf(stderr, "patchbay eval: %s\n", err.msg);
        return 1;
    }
    fwrite(text, 1, len, stdout);
    putchar('\n');
    free(text);
    return 0;
}

/* The $meta a message of no particular input would have. */
static jv default_meta(void)
{
    char tp[PB_TRACEPARENT_LEN + 1];
    pb_trace_take(NULL, tp);
    jv m = jv_object();
    m = jv_object_set(m, jv_string("input"), jv_string("eval"));
    m = jv_object_set(m, jv_string("pipeline"), jv_string("eval"));
    m = jv_object_set(m, jv_string("received_at"), jv_number((double)pb_now_ms()));
    return jv_object_set(m, jv_string("traceparent"), jv_string(tp));
}

int pb_cmd_eval(int argc, char **argv)
{
    enum as as = AS_MAP;
    const char *program = NULL, *meta_path = NULL;
    bool pretty = false;
    int rc = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--as") && i + 1 < argc) {
            const char *v = argv[++i];
            if (!strcmp(v, "map"))
                as = AS_MAP;
            else if (!strcmp(v, "filter"))
                as = AS_FILTER;
            else if (!strcmp(v, "split"))
                as = AS_SPLIT;
            else if (!strcmp(v, "template"))
                as = AS_TEMPLATE;
            else {
                fprintf(stderr, "patchbay eval: --as takes map, filter, split or template\n");
                return 2;
            }
        } else if (!strcmp(a, "--meta") && i + 1 < argc) {
            meta_path = argv[++i];
        } else if (!strcmp(a, "--pretty")) {
            pretty = true;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "patchbay eval: unknown option %s\n%s", a, usage_text);
            return 2;
        } else if (!program) {
            program = a;
        } else {
            fprintf(stderr, "%s", usage_text);
            return 2;
        }
    }
    if (!program) {
        fprintf(stderr, "%s", usage_text);
        return 2;
    }

    struct pb_err err = {0};
    struct pb_jq *q = NULL;
    struct pb_template *t = NULL;
    jv body = jv_invalid(), meta = jv_invalid();
    char *sample = NULL, *mtext = NULL;
    size_t len = 0, mlen = 0;

    if (as == AS_TEMPLATE)
        t = pb_template_compile(program, &err);
    else if (as == AS_FILTER)
        q = pb_jq_compile_predicate(program, &err);
    else
        q = pb_jq_compile(program, &err);
    if (!q && !t) {
        fprintf(stderr, "patchbay eval: %s\n", err.msg);
        return 1;
    }
    if (meta_path) {
        FILE *f = fopen(meta_path, "rb");
        if (!f) {
            fprintf(stderr, "patchbay eval: cannot read %s\n", meta_path);
            goto out;
        }
        mtext = slurp(f, &mlen);
        fclose(f);
        if (!mtext)
            goto out;
        if (pb_jq_parse(mtext, mlen, &meta, &err) != 0) {
            fprintf(stderr, "patchbay eval: %s: not JSON jq can carry exactly: %s\n", meta_path,
                    err.msg);
            goto out;
        }
        if (jv_get_kind(meta) != JV_KIND_OBJECT) {
            fprintf(stderr, "patchbay eval: %s: $meta is an object\n", meta_path);
            goto out;
        }
    } else {
        meta = default_meta();
    }
    sample = slurp(stdin, &len);
    if (!sample)
        goto out;
    if (pb_jq_parse(sample, len, &body, &err) != 0) {
        fprintf(stderr, "patchbay eval: the message is not JSON jq can carry exactly: %s\n",
                err.msg);
        goto out;
    }

    if (as == AS_TEMPLATE) {
        char *s = NULL;
        if (pb_template_render(t, body, meta, &s, NULL, &err) != 0) {
            fprintf(stderr, "patchbay eval: %s\n", err.msg);
            goto out;
        }
        printf("%s\n", s);
        free(s);
        rc = 0;
    } else if (as == AS_FILTER) {
        bool truth = false;
        if (pb_jq_test(q, body, meta, &truth, &err) != 0) {
            fprintf(stderr, "patchbay eval: %s\n", err.msg);
            goto out;
        }
        printf("%s\n", truth ? "true" : "false");
        fprintf(stderr, "%s\n", truth ? "kept: the message goes on" : "dropped (filtered)");
        rc = 0;
    } else {
        size_t max = as == AS_SPLIT ? SPLIT_MAX : MAP_MAX_OUT;
        jv *outs = calloc(max, sizeof(*outs));
        size_t n = 0;
        if (!outs) {
            fprintf(stderr, "patchbay eval: out of memory\n");
            goto out;
        }
        if (pb_jq_run_meta(q, jv_copy(body), jv_copy(meta), outs, max, &n, &err) != 0) {
            fprintf(stderr, "patchbay eval: %s\n", err.msg);
            free(outs);
            goto out;
        }
        if (as == AS_MAP && n > 1) {
            fprintf(stderr,
                    "patchbay eval: map produced %zu values; expected one (split makes several "
                    "messages)\n",
                    n);
            for (size_t i = 0; i < n; i++)
                jv_free(outs[i]);
            free(outs);
            goto out;
        }
        if (n == 0)
            fprintf(stderr, "no value: %s\n",
                    as == AS_MAP ? "the message is dropped (filtered)" : "the split makes nothing");
        rc = 0;
        for (size_t i = 0; i < n; i++) {
            if (rc == 0)
                rc = print(outs[i], pretty);
            else
                jv_free(outs[i]);
        }
        free(outs);
    }
out:
    jv_free(body);
    jv_free(meta);
    free(sample);
    free(mtext);
    pb_jq_destroy(q);
    pb_template_destroy(t);
    return rc;
}
