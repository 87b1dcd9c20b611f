/* jq.c - jq programs (libjq 1.6) for map and filter, under the fidelity rule.
 *
 * Values enter through pb_jq_parse, which runs the ingest validator with the
 * exact-number check first, so jq never rounds a number it was handed; they
 * leave through pb_jq_dump, which refuses NaN and infinities (jq 1.6 would
 * print null and 1.797e308) and values nested deeper than jq prints (it
 * writes "<stripped: exceeds max depth>" instead of the value).
 *
 * What libjq 1.6 does not offer, and how we live with it:
 *   - No step or time bound on a run. pb_jq_run caps the number of outputs
 *     (max_out), which stops generators such as repeat(.), but a program that
 *     loops or grows memory without producing output (last(range(1e18)),
 *     [repeat(.)]) holds the calling thread, and libjq aborts the process when
 *     memory runs out. Programs come from the configuration, not from data.
 *   - error(null) is indistinguishable from the end of the outputs (jq 1.6
 *     returns the same invalid value); it reads as "no output".
 *   - halt and halt_error look like the end of the outputs too; we check
 *     jq_halted() and report them as errors instead of a silent drop.
 *   - import/include assert in libjq when no library path is set: we set an
 *     empty JQ_LIBRARY_PATH, so they fail to compile ("module not found").
 *   - Without an error callback jq_compile prints to stderr; ours collects
 *     the messages into the pb_err, and discards anything said afterwards.
 *
 * jv reference counting: every jv passed to a jv_ or jq_ function is consumed
 * unless the function only inspects it (jv_get_kind, jv_number_value,
 * jv_string_value, jv_object_iter*). jv_copy() before passing what we keep. */
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <jq.h>
#include <jv.h>

#include "patchbay/pb_jq.h"
#include "patchbay/pb_json.h"

/* jv_dump_term in 1.6 replaces any value nested deeper than this. */
#define JQ_PRINT_MAX_DEPTH 256

struct pb_jq {
    jq_state *jq;
    bool uses_meta; /* the program's text names $meta */
};

bool pb_jq_uses_meta(const struct pb_jq *q)
{
    return q && q->uses_meta;
}

/* Every program runs inside this wrapper, fed [$meta, body]: jq 1.6 binds
 * named arguments only at compile time, and $meta changes per message. The
 * program starts on line 1, as written, so compiler errors keep its line
 * numbers; the closing parenthesis goes on a line of its own, so a trailing
 * comment cannot swallow it. */
#define WRAP_HEAD ". as [$meta, $__pb_in] | $__pb_in | ("
#define WRAP_TAIL "\n)"

/* Compiler messages gathered while jq_compile runs. */
struct compile_msgs {
    char text[PB_ERR_MSG_MAX];
    size_t len;
    char summary[64]; /* "1 compile error", used when nothing else was said */
};

static void msgs_append(struct compile_msgs *m, const char *s, size_t n)
{
    if (m->len && m->len + 2 < sizeof(m->text)) {
        memcpy(m->text + m->len, "; ", 2);
        m->len += 2;
    }
    if (n > sizeof(m->text) - 1 - m->len)
        n = sizeof(m->text) - 1 - m->len;
    memcpy(m->text + m->len, s, n);
    m->len += n;
    m->text[m->len] = 0;
}

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* "2 compile errors": the count jq reports after the messages themselves. */
static bool is_summary(const char *s)
{
    size_t n = strlen(s);
    if (!(*s >= '1' && *s <= '9'))
        return false;
    return (n > 14 && strcmp(s + n - 14, " compile error") == 0) ||
           (n > 15 && strcmp(s + n - 15, " compile errors") == 0);
}

/* jq's error callback: owns msg. data is the compile_msgs while compiling,
 * NULL afterwards (messages are then dropped rather than printed). */
static void err_cb(void *data, jv msg)
{
    static const char noise[] = " (Unix shell quoting issues?)";
    static const char top[] = " at <top-level>, "; /* keep " at " */
    struct compile_msgs *m = data;
    char line[PB_ERR_MSG_MAX];
    const char *s, *nl;
    char *cut;
    size_t n;

    if (!m)
        goto out;
    if (jv_get_kind(msg) != JV_KIND_STRING)
        msg = jq_format_error(msg);
    if (jv_get_kind(msg) != JV_KIND_STRING)
        goto out;
    s = jv_string_value(msg);
    if (starts_with(s, "jq: error: "))
        s += strlen("jq: error: ");
    else if (starts_with(s, "jq: "))
        s += strlen("jq: ");
    if (is_summary(s)) {
        snprintf(m->summary, sizeof(m->summary), "%s", s);
        goto out;
    }
    /* One line per message: what follows is the program text again. */
    nl = strchr(s, '\n');
    n = nl ? (size_t)(nl - s) : strlen(s);
    if (n > sizeof(line) - 1)
        n = sizeof(line) - 1;
    memcpy(line, s, n);
    line[n] = 0;
    /* "..., unexpected $end (Unix shell quoting issues?) at <top-level>, line 1:"
     * becomes "..., unexpected $end at line 1". */
    cut = strstr(line, noise);
    if (cut)
        memmove(cut, cut + strlen(noise), strlen(cut + strlen(noise)) + 1);
    cut = strstr(line, top);
    if (cut)
        memmove(cut + 4, cut + strlen(top), strlen(cut + strlen(top)) + 1);
    n = strlen(line);
    while (n && (line[n - 1] == ':' || line[n - 1] == ' '))
        line[--n] = 0;
    msgs_append(m, line, n);
out:
    jv_free(msg);
}

struct pb_jq *pb_jq_compile(const char *program, struct pb_err *err)
{
    struct compile_msgs msgs = {.len = 0};
    struct pb_jq *q = NULL;
    char *wrapped = NULL;

    if (!program) {
        pb_err_set(err, PB_EINVAL, "jq: no program");
        goto fail;
    }
    q = calloc(1, sizeof(*q));
    if (!q) {
        pb_err_set(err, PB_ENOMEM, "jq: out of memory");
        goto fail;
    }
    q->jq = jq_init();
    if (!q->jq) {
        pb_err_set(err, PB_ENOMEM, "jq: out of memory");
        goto fail;
    }
    jq_set_error_cb(q->jq, err_cb, &msgs);
    jq_set_attr(q->jq, jv_string("JQ_LIBRARY_PATH"), jv_array());
    /* The program as written first, with $meta bound: its errors (and line
     * numbers) are the ones to show, and a text that only parses once
     * wrapped (".) | (.") is refused. */
    if (!jq_compile_args(q->jq, program,
                         jv_object_set(jv_object(), jv_string("meta"), jv_null()))) {
        pb_err_set(err, PB_EJQ, "jq: %s",
                   msgs.len          ? msgs.text
                   : msgs.summary[0] ? msgs.summary
                                     : "compile error");
        goto fail;
    }
    jq_teardown(&q->jq);
    q->jq = jq_init();
    if (!q->jq) {
        pb_err_set(err, PB_ENOMEM, "jq: out of memory");
        goto fail;
    }
    jq_set_error_cb(q->jq, err_cb, &msgs);
    jq_set_attr(q->jq, jv_string("JQ_LIBRARY_PATH"), jv_array());
    size_t plen = strlen(program);
    wrapped = malloc(sizeof(WRAP_HEAD) + plen + sizeof(WRAP_TAIL));
    if (!wrapped) {
        pb_err_set(err, PB_ENOMEM, "jq: out of memory");
        goto fail;
    }
    memcpy(wrapped, WRAP_HEAD, sizeof(WRAP_HEAD) - 1);
    memcpy(wrapped + sizeof(WRAP_HEAD) - 1, program, plen);
    memcpy(wrapped + sizeof(WRAP_HEAD) - 1 + plen, WRAP_TAIL, sizeof(WRAP_TAIL));
    if (!jq_compile(q->jq, wrapped)) {
        pb_err_set(err, PB_EJQ, "jq: %s",
                   msgs.len          ? msgs.text
                   : msgs.summary[0] ? msgs.summary
                                     : "compile error");
        goto fail;
    }
    jq_set_error_cb(q->jq, err_cb, NULL);
    free(wrapped);
    /* A mention in a string or comment counts too: that only costs a parse. */
    q->uses_meta = strstr(program, "$meta") != NULL;
    return q;

fail:
    free(wrapped);
    pb_jq_destroy(q);
    return NULL;
}

struct pb_jq *pb_jq_compile_predicate(const char *program, struct pb_err *err)
{
    static const char head[] = "first((", tail[] = "\n))"; /* \n ends a trailing # comment */
    struct pb_jq *q;
    char *wrapped;
    size_t len;

    /* Compile the program as written first: its errors are the ones to
     * show, and a text that only parses once wrapped (".) | (.") is refused. */
    q = pb_jq_compile(program, err);
    if (!q)
        return NULL;
    pb_jq_destroy(q);
    len = strlen(program);
    wrapped = malloc(sizeof(head) - 1 + len + sizeof(tail));
    if (!wrapped) {
        pb_err_set(err, PB_ENOMEM, "jq: out of memory");
        return NULL;
    }
    memcpy(wrapped, head, sizeof(head) - 1);
    memcpy(wrapped + sizeof(head) - 1, program, len);
    memcpy(wrapped + sizeof(head) - 1 + len, tail, sizeof(tail));
    q = pb_jq_compile(wrapped, err);
    free(wrapped);
    return q;
}

int pb_jq_test(struct pb_jq *q, jv in, jv meta, bool *truth, struct pb_err *err)
{
    jv res;
    size_t n = 0;
    int rc = pb_jq_run_meta(q, jv_copy(in), jv_copy(meta), &res, 1, &n, err);

    *truth = false;
    if (rc)
        return rc;
    if (n) {
        *truth = pb_jq_truthy(res);
        jv_free(res);
    }
    return 0;
}

void pb_jq_destroy(struct pb_jq *q)
{
    if (!q)
        return;
    if (q->jq)
        jq_teardown(&q->jq);
    free(q);
}

/* A jv as short text for an error message (consumes v). */
static void describe(jv v, char *buf, size_t size)
{
    if (jv_get_kind(v) == JV_KIND_STRING) {
        snprintf(buf, size, "%s", jv_string_value(v));
    } else if (jv_is_valid(v)) {
        jv_dump_string_trunc(jv_copy(v), buf, size);
    } else {
        snprintf(buf, size, "(no message)");
    }
    jv_free(v);
}

static int halted_error(jq_state *jq, struct pb_err *err)
{
    char text[PB_ERR_MSG_MAX - 32];
    jv code = jq_get_exit_code(jq);
    jv msg = jq_get_error_message(jq);
    int rc;

    if (!jv_is_valid(code) && !jv_is_valid(msg)) {
        rc = pb_err_set(err, PB_EJQ, "jq: program called halt");
    } else {
        size_t n;
        describe(jv_copy(msg), text, sizeof(text));
        n = strlen(text);
        while (n && text[n - 1] == '\n')
            text[--n] = 0;
        rc = pb_err_set(err, PB_EJQ, "jq: halt_error: %s", text);
    }
    jv_free(code);
    jv_free(msg);
    return rc;
}

int pb_jq_run(struct pb_jq *q, jv in, jv *out, size_t max_out, size_t *nout, struct pb_err *err)
{
    return pb_jq_run_meta(q, in, jv_null(), out, max_out, nout, err);
}

int pb_jq_run_meta(struct pb_jq *q, jv in, jv meta, jv *out, size_t max_out, size_t *nout,
                   struct pb_err *err)
{
    size_t n = 0;
    int rc = 0;

    *nout = 0;
    if (!q || !jv_is_valid(in) || !jv_is_valid(meta)) {
        jv_free(in);
        jv_free(meta);
        return pb_err_set(err, PB_EINVAL, "jq: no program or no input");
    }
    jq_start(q->jq, jv_array_append(jv_array_append(jv_array(), meta), in), 0);
    for (;;) {
        jv r = jq_next(q->jq);
        if (jv_is_valid(r)) {
            if (n == max_out) {
                jv_free(r);
                rc = pb_err_set(err, PB_EJQ, "jq: program produced more than %zu value%s", max_out,
                                max_out == 1 ? "" : "s");
                goto out;
            }
            out[n++] = r;
            continue;
        }
        if (jv_invalid_has_msg(jv_copy(r))) {
            char text[PB_ERR_MSG_MAX - 32];
            jv msg = jv_invalid_get_msg(r);
            bool plain = jv_get_kind(msg) == JV_KIND_STRING;
            describe(msg, text, sizeof(text));
            rc = pb_err_set(err, PB_EJQ, "jq: %s%s", text, plain ? "" : " (not a string)");
            goto out;
        }
        jv_free(r);
        if (jq_halted(q->jq))
            rc = halted_error(q->jq, err);
        goto out;
    }

out:
    if (rc) {
        while (n)
            jv_free(out[--n]);
    }
    *nout = n;
    return rc;
}

/* Object members of v (borrowed) and everything in it. The validator bounds
 * the depth (PB_JSON_MAX_DEPTH_DEFAULT), so recursion is safe here. */
static size_t count_members(jv v)
{
    size_t n = 0;
    jv_kind kind = jv_get_kind(v);
    if (kind == JV_KIND_ARRAY) {
        int len = jv_array_length(jv_copy(v));
        for (int i = 0; i < len; i++) {
            jv child = jv_array_get(jv_copy(v), i);
            n += count_members(child);
            jv_free(child);
        }
    } else if (kind == JV_KIND_OBJECT) {
        for (int it = jv_object_iter(v); jv_object_iter_valid(v, it);
             it = jv_object_iter_next(v, it)) {
            jv child = jv_object_iter_value(v, it);
            n += 1 + count_members(child);
            jv_free(child);
        }
    }
    return n;
}

int pb_jq_parse(const char *buf, size_t len, jv *out, struct pb_err *err)
{
    struct pb_json_check c = {.exact_numbers = true};
    int rc;
    jv v;

    *out = jv_invalid();
    rc = pb_json_validate(buf, len, &c);
    if (rc)
        return pb_err_set(err, rc, "%s at byte %zu", c.err_reason, c.err_offset);
    if (len > INT_MAX)
        return pb_err_set(err, PB_ETOOBIG, "JSON text of %zu bytes is too large for jq", len);
    v = jv_parse_sized(buf, (int)len);
    if (!jv_is_valid(v)) {
        char text[PB_ERR_MSG_MAX - 32];
        describe(jv_invalid_get_msg(v), text, sizeof(text));
        return pb_err_set(err, PB_EPARSE, "jq could not parse the JSON: %s", text);
    }
    /* jq keeps the last of duplicate keys and drops the others. */
    if (count_members(v) != c.members) {
        jv_free(v);
        return pb_err_set(err, PB_EFIDELITY,
                          "an object has the same key twice: jq would keep only the last value");
    }
    *out = v;
    return 0;
}

/* Walk v (borrowed) without recursion, refusing what jv_dump_string would
 * print as something else. Children are looked at through the references
 * their container holds: we take a copy to read one and drop it at once. */
static int check_dump(jv v, struct pb_err *err)
{
    struct frame {
        jv c;
        int i, n; /* array: next index and length; object: next iterator */
    } stack[JQ_PRINT_MAX_DEPTH + 1];
    int depth = 0;

    for (;;) {
        jv_kind kind = jv_get_kind(v);
        if (kind == JV_KIND_INVALID)
            return pb_err_set(err, PB_EINVAL, "jq: not a value");
        if (kind == JV_KIND_NUMBER && !isfinite(jv_number_value(v)))
            return pb_err_set(err, PB_EFIDELITY, "NaN or infinity cannot be represented in JSON");
        if (kind == JV_KIND_ARRAY || kind == JV_KIND_OBJECT) {
            struct frame *f = &stack[depth++];
            f->c = v;
            if (kind == JV_KIND_ARRAY) {
                f->i = 0;
                f->n = jv_array_length(jv_copy(v));
            } else {
                f->i = jv_object_iter(v);
            }
        }
        /* Move to the next value: the next child of the innermost container
         * that has one left. */
        for (;;) {
            struct frame *f;
            jv child;
            if (depth == 0)
                return 0;
            f = &stack[depth - 1];
            if (jv_get_kind(f->c) == JV_KIND_ARRAY) {
                if (f->i >= f->n) {
                    depth--;
                    continue;
                }
                child = jv_array_get(jv_copy(f->c), f->i++);
            } else {
                if (!jv_object_iter_valid(f->c, f->i)) {
                    depth--;
                    continue;
                }
                child = jv_object_iter_value(f->c, f->i);
                f->i = jv_object_iter_next(f->c, f->i);
            }
            jv_free(child); /* still held by f->c */
            if (depth > JQ_PRINT_MAX_DEPTH)
                return pb_err_set(err, PB_EFIDELITY,
                                  "value nested deeper than %d levels cannot be serialized",
                                  JQ_PRINT_MAX_DEPTH);
            v = child;
            break;
        }
    }
}

int pb_jq_dump(jv v, char **buf, size_t *len, struct pb_err *err)
{
    char *copy = NULL;
    jv s = jv_invalid();
    int n, rc;

    *buf = NULL;
    if (len)
        *len = 0;
    rc = check_dump(v, err);
    if (rc)
        goto out;
    s = jv_dump_string(v, 0);
    v = jv_invalid();
    n = jv_string_length_bytes(jv_copy(s));
    copy = malloc((size_t)n + 1);
    if (!copy) {
        rc = pb_err_set(err, PB_ENOMEM, "jq: out of memory");
        goto out;
    }
    memcpy(copy, jv_string_value(s), (size_t)n);
    copy[n] = 0;
    *buf = copy;
    if (len)
        *len = (size_t)n;

out:
    jv_free(v);
    jv_free(s);
    return rc;
}

bool pb_jq_truthy(jv v)
{
    jv_kind k = jv_get_kind(v);
    return k != JV_KIND_FALSE && k != JV_KIND_NULL && k != JV_KIND_INVALID;
}

int pb_jq_key(struct pb_jq *q, jv in, jv meta, char **key, size_t *len, struct pb_err *err)
{
    jv out[1];
    size_t n = 0, l = 0;
    *key = NULL;
    if (len)
        *len = 0;
    int rc = pb_jq_run_meta(q, in, meta, out, 1, &n, err);
    if (rc || n == 0)
        return rc;
    if (jv_get_kind(out[0]) == JV_KIND_NULL) {
        jv_free(out[0]);
        return 0;
    }
    if (jv_get_kind(out[0]) == JV_KIND_STRING) {
        l = (size_t)jv_string_length_bytes(jv_copy(out[0]));
        *key = malloc(l + 1);
        if (*key) {
            memcpy(*key, jv_string_value(out[0]), l);
            (*key)[l] = 0;
        }
        jv_free(out[0]);
        if (!*key)
            return pb_err_set(err, PB_ENOMEM, "out of memory");
    } else if ((rc = pb_jq_dump(out[0], key, &l, err)) != 0) {
        return rc;
    }
    if (len)
        *len = l;
    return 0;
}
