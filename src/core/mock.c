/* mock.c - mocked answers for processors under `patchbay test`.
 *
 * The test runner loads a configuration with a pb_mock handed to every
 * processor's init (pb_proc_env.mock). A processor that would reach out
 * asks pb_mock_http for the answer instead of sending its request; the
 * runner fills the handle with each case's answers (pb_mock_add) and reads
 * back what was asked (pb_mock_call) to show it when a case fails.
 *
 * Threads: the runner and the processors it runs share one thread; a
 * handle is never used by two at once. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/mock.h"

#define CALLS_MAX 1000
#define ANSWERS_MAX 1000

struct answer {
    char *plugin;
    jv match; /* jv_null(): any */
    struct pb_jq *when;
    int status;
    char *body; /* NUL-terminated */
    size_t len;
    char *error;
    int64_t retry_after_ms;
};

struct pb_mock {
    struct answer *answers;
    size_t n;
    char **calls;
    size_t ncalls;
};

struct pb_mock *pb_mock_create(void)
{
    struct pb_mock *m = calloc(1, sizeof(*m));
    if (m)
        m->answers = calloc(ANSWERS_MAX, sizeof(*m->answers));
    if (m && !m->answers) {
        free(m);
        return NULL;
    }
    if (m && !(m->calls = calloc(CALLS_MAX, sizeof(*m->calls)))) {
        free(m->answers);
        free(m);
        return NULL;
    }
    return m;
}

void pb_mock_reset(struct pb_mock *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++) {
        struct answer *a = &m->answers[i];
        free(a->plugin);
        jv_free(a->match);
        pb_jq_destroy(a->when);
        free(a->body);
        free(a->error);
    }
    m->n = 0;
    for (size_t i = 0; i < m->ncalls; i++)
        free(m->calls[i]);
    m->ncalls = 0;
}

void pb_mock_destroy(struct pb_mock *m)
{
    if (!m)
        return;
    pb_mock_reset(m);
    free(m->answers);
    free(m->calls);
    free(m);
}

size_t pb_mock_ncalls(const struct pb_mock *m)
{
    return m ? m->ncalls : 0;
}

const char *pb_mock_call(const struct pb_mock *m, size_t i)
{
    return m && i < m->ncalls ? m->calls[i] : NULL;
}

bool pb_jv_subset(jv want, jv got)
{
    jv_kind k = jv_get_kind(want);
    if (k != jv_get_kind(got))
        return false;
    if (k == JV_KIND_OBJECT) {
        bool ok = true;
        for (int it = jv_object_iter(want); ok && jv_object_iter_valid(want, it);
             it = jv_object_iter_next(want, it)) {
            jv key = jv_object_iter_key(want, it);
            jv wv = jv_object_iter_value(want, it);
            jv gv = jv_object_get(jv_copy(got), key);
            ok = jv_is_valid(gv) && pb_jv_subset(wv, gv);
            jv_free(wv);
            jv_free(gv);
        }
        return ok;
    }
    if (k == JV_KIND_ARRAY) {
        int n = jv_array_length(jv_copy(want));
        if (n != jv_array_length(jv_copy(got)))
            return false;
        bool ok = true;
        for (int i = 0; ok && i < n; i++) {
            jv wv = jv_array_get(jv_copy(want), i);
            jv gv = jv_array_get(jv_copy(got), i);
            ok = pb_jv_subset(wv, gv);
            jv_free(wv);
            jv_free(gv);
        }
        return ok;
    }
    return jv_equal(jv_copy(want), jv_copy(got));
}

static char *dup_text(jv v, size_t *len)
{
    char *s = NULL;
    if (jv_get_kind(v) == JV_KIND_STRING) {
        size_t n = (size_t)jv_string_length_bytes(jv_copy(v));
        s = malloc(n + 1);
        if (s) {
            memcpy(s, jv_string_value(v), n);
            s[n] = 0;
            if (len)
                *len = n;
        }
    }
    return s;
}

int pb_mock_add(struct pb_mock *m, const char *plugin, jv match, struct pb_jq *when, jv answer,
                struct pb_err *err)
{
    int rc = 0;
    if (m->n == ANSWERS_MAX) {
        rc = pb_err_set(err, PB_ETOOBIG, "more than %d mocked answers in one case", ANSWERS_MAX);
        goto fail;
    }
    if (jv_get_kind(answer) != JV_KIND_OBJECT) {
        rc = pb_err_set(err, PB_EINVAL, "a mocked answer is a map");
        goto fail;
    }
    struct answer a = {.match = match, .when = when, .status = 200, .retry_after_ms = -1};
    match = jv_invalid();
    when = NULL;
    a.plugin = strdup(plugin);
    jv st = jv_object_get(jv_copy(answer), jv_string("status"));
    if (jv_get_kind(st) == JV_KIND_NUMBER)
        a.status = (int)jv_number_value(st);
    jv_free(st);
    jv ra = jv_object_get(jv_copy(answer), jv_string("retry_after_ms"));
    if (jv_get_kind(ra) == JV_KIND_NUMBER)
        a.retry_after_ms = (int64_t)jv_number_value(ra);
    jv_free(ra);
    jv er = jv_object_get(jv_copy(answer), jv_string("error"));
    a.error = jv_get_kind(er) == JV_KIND_STRING ? dup_text(er, NULL) : NULL;
    bool er_bad = jv_get_kind(er) == JV_KIND_STRING && !a.error;
    jv_free(er);
    if (a.error)
        a.status = 0;
    jv raw = jv_object_get(jv_copy(answer), jv_string("raw"));
    jv body = jv_object_get(jv_copy(answer), jv_string("body"));
    if (jv_get_kind(raw) == JV_KIND_STRING) {
        a.body = dup_text(raw, &a.len);
    } else if (jv_is_valid(body) && jv_get_kind(body) != JV_KIND_NULL) {
        rc = pb_jq_dump(jv_copy(body), &a.body, &a.len, err);
    } else {
        a.body = strdup("");
    }
    jv_free(raw);
    jv_free(body);
    if (rc == 0 && (!a.plugin || !a.body || er_bad))
        rc = pb_err_set(err, PB_ENOMEM, "out of memory");
    if (rc) {
        free(a.plugin);
        jv_free(a.match);
        pb_jq_destroy(a.when);
        free(a.body);
        free(a.error);
        goto fail;
    }
    m->answers[m->n++] = a;
    jv_free(answer);
    return 0;
fail:
    jv_free(match);
    pb_jq_destroy(when);
    jv_free(answer);
    return rc;
}

/* What a test matches on: {"method", "url", "key", "headers", "body"}. */
static jv describe(const char *key, const struct pb_http_req *req)
{
    jv d = jv_object();
    d = jv_object_set(d, jv_string("method"), jv_string(req->method ? req->method : "GET"));
    d = jv_object_set(d, jv_string("url"), jv_string(req->url ? req->url : ""));
    if (key)
        d = jv_object_set(d, jv_string("key"), jv_string(key));
    jv h = jv_object();
    for (size_t i = 0; i < req->nheaders; i++) {
        char name[128];
        const char *n = req->headers[i].name;
        size_t k = 0;
        if (!n || !req->headers[i].value)
            continue;
        for (; n[k] && k < sizeof(name) - 1; k++)
            name[k] = (char)(n[k] >= 'A' && n[k] <= 'Z' ? n[k] + 32 : n[k]);
        name[k] = 0;
        h = jv_object_set(h, jv_string(name), jv_string(req->headers[i].value));
    }
    d = jv_object_set(d, jv_string("headers"), h);
    if (req->body && req->len) {
        jv b;
        if (pb_jq_parse(req->body, req->len, &b, NULL) != 0)
            b = jv_string_sized(req->body, (int)req->len);
        d = jv_object_set(d, jv_string("body"), b);
    }
    return d;
}

int pb_mock_http(struct pb_mock *m, const char *plugin, const char *key,
                 const struct pb_http_req *req, struct pb_http_resp *resp, struct pb_err *err)
{
    char line[512];
    snprintf(line, sizeof(line), "%s %s %s%s%s%s", plugin, req->method ? req->method : "GET",
             req->url ? req->url : "", key ? " (key " : "", key ? key : "", key ? ")" : "");
    if (m->ncalls < CALLS_MAX)
        m->calls[m->ncalls] = strdup(line), m->ncalls += m->calls[m->ncalls] != NULL;
    memset(resp, 0, sizeof(*resp));
    jv d = describe(key, req);
    if (!jv_is_valid(d))
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    for (size_t i = 0; i < m->n; i++) {
        struct answer *a = &m->answers[i];
        if (strcmp(a->plugin, plugin) != 0)
            continue;
        if (jv_get_kind(a->match) != JV_KIND_NULL && !pb_jv_subset(a->match, d))
            continue;
        if (a->when) {
            bool truth = false;
            struct pb_err jerr = {0};
            if (pb_jq_test(a->when, d, jv_null(), &truth, &jerr) != 0) {
                jv_free(d);
                return pb_err_set(err, PB_EJQ, "mocked answer %zu for %s: %s", i + 1, plugin,
                                  jerr.msg);
            }
            if (!truth)
                continue;
        }
        jv_free(d);
        resp->status = a->status;
        resp->retry_after_ms = a->retry_after_ms;
        resp->error = a->error;
        resp->body = a->body;
        resp->body_len = a->len;
        return 0;
    }
    jv_free(d);
    return pb_err_set(err, PB_ENOTFOUND, "no mocked answer for %s", line);
}
