/* tk_case.c - running the cases of a test file (`patchbay test`).
 *
 * A case names a pipeline, gives input items, optional mocked answers (for
 * the outputs and for processors that reach out) and what it expects. Each
 * item becomes a message as an input would commit it ($meta with input,
 * pipeline and received_at); the pipeline's process steps run on it through
 * the route stage's own decision (pb__route_decide), and every output it
 * goes to gets attempts built by the engine's own code (pb__attempt_build:
 * the output's map and template fields). Outputs are recorders: nothing is
 * sent. A mocked answer other than success is classified and retried the
 * way the dispatcher would (pb_classify_http, pb_retry_decide) on a clock
 * of the case's own, so "503 twice, then 200" or "422" play out with the
 * output's real retry policy, without waiting.
 *
 * What each output ended with, per message, in order — delivered (the
 * bytes, $meta, the rendered template fields, the attempt), dead-lettered
 * (the reason), routed away or filtered — is compared with the case's
 * expectations (tk_expect.c); a failing case gets a report with a diff.
 *
 * Single-threaded. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/testkit.h"
#include "cli/tk_int.h"
#include "core/input.h"
#include "core/mock.h"
#include "core/retry.h"
#include "core/stage.h"
#include "core/template.h"
#include "core/trace.h"
#include "patchbay/pb_json.h"
#include "patchbay/pb_time.h"

#define FILE_MAX ((size_t)64 << 20)
#define ITEMS_MAX 10000
#define ATTEMPTS_MAX 100000
/* The retry policy's jitter on the case's clock: half of each ceiling. */
#define JITTER_RND (UINT64_MAX / 2)

/* ---- outcomes ------------------------------------------------------------------------------ */

static void outcome_free(struct outcome *oc)
{
    free(oc->payload);
    free(oc->meta);
    for (size_t i = 0; i < oc->nfields; i++)
        free(oc->fields[i]);
    free(oc->fields);
    free(oc->reason);
}

static void outlist_free(struct outlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        outcome_free(&l->v[i]);
    free(l->v);
    memset(l, 0, sizeof(*l));
}

/* Append oc (its strings taken). */
static int push(struct outlist *l, struct outcome *oc)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        struct outcome *v = realloc(l->v, cap * sizeof(*v));
        if (!v) {
            outcome_free(oc);
            return PB_ENOMEM;
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = *oc;
    return 0;
}

static char *dupn(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

/* ---- mocked answers of outputs ------------------------------------------------------------- */

/* The answer to attempt n (1-based) of output o: the n-th of its mocked
 * answers, the last one repeating; success when it has none. */
static int output_answer(struct run *r, const struct pb_output *o, int n, struct pb_outcome *oc,
                         char *ebuf, size_t elen, struct pb_err *err)
{
    const struct pb_node *list = r->out_mocks ? pb_node_get(r->out_mocks, o->name) : NULL;
    const struct pb_node *a = list;
    *oc = (struct pb_outcome){.result = PB_RESULT_OK, .status = 0, .retry_after_ms = -1};
    if (!list)
        return 0;
    if (list->type == PB_NODE_SEQ) {
        if (list->n == 0)
            return 0;
        a = list->vals[(size_t)n <= list->n ? (size_t)n - 1 : list->n - 1];
    }
    struct pb_http_resp resp = {.retry_after_ms = -1};
    int64_t status;
    if (a->type == PB_NODE_SCALAR && pb_parse_int(a->str, &status) == 0 && status >= 100 &&
        status <= 599) {
        resp.status = (int)status;
        resp.body = "";
        pb_outcome_from_http(&resp, oc, ebuf, elen);
        return 0;
    }
    if (a->type == PB_NODE_SCALAR && strcmp(a->str, "ok") == 0)
        return 0;
    if (a->type != PB_NODE_MAP)
        return tk_at_err(
            err, a, "a mocked answer of an output is %s",
            "an HTTP status, ok, or a map with status, body, raw, retry_after, error or "
            "result");
    const struct pb_node *st = NULL, *body = NULL, *raw = NULL, *ra = NULL, *er = NULL, *res = NULL;
    for (size_t i = 0; i < a->n; i++) {
        const char *k = a->keys[i]->str;
        const struct pb_node *v = a->vals[i];
        if (!strcmp(k, "status"))
            st = v;
        else if (!strcmp(k, "body"))
            body = v;
        else if (!strcmp(k, "raw"))
            raw = v;
        else if (!strcmp(k, "retry_after"))
            ra = v;
        else if (!strcmp(k, "error"))
            er = v;
        else if (!strcmp(k, "result"))
            res = v;
        else
            return tk_at_err(
                err, a->keys[i],
                "unknown key \"%s\" in a mocked answer (status, body, raw, retry_after, "
                "error, result)",
                k);
    }
    char *text = NULL;
    if (body && tk_node_json(body, &text, NULL, err))
        return err->code;
    resp.body = text ? text : raw && raw->type == PB_NODE_SCALAR ? raw->str : "";
    resp.body_len = strlen(resp.body);
    if (ra && (ra->type != PB_NODE_SCALAR || pb_parse_duration(ra->str, &resp.retry_after_ms))) {
        free(text);
        return tk_at_err(err, ra, "retry_after is %s", "a duration (2s, 1m)");
    }
    int rc = 0;
    if (st) {
        if (st->type != PB_NODE_SCALAR || pb_parse_int(st->str, &status) || status < 100 ||
            status > 599) {
            rc = tk_at_err(err, st, "status is %s", "an HTTP status (100-599)");
            goto out;
        }
        resp.status = (int)status;
        pb_outcome_from_http(&resp, oc, ebuf, elen);
    } else if (res) {
        const char *v = res->type == PB_NODE_SCALAR ? res->str : "";
        if (!strcmp(v, "ok"))
            oc->result = PB_RESULT_OK;
        else if (!strcmp(v, "retry"))
            oc->result = PB_RESULT_RETRY;
        else if (!strcmp(v, "permanent"))
            oc->result = PB_RESULT_PERMANENT;
        else {
            rc = tk_at_err(err, res, "result is %s", "ok, retry or permanent");
            goto out;
        }
        oc->retry_after_ms = resp.retry_after_ms;
        if (er && er->type == PB_NODE_SCALAR) {
            snprintf(ebuf, elen, "%s", er->str);
            oc->error = ebuf;
        }
    } else if (er && er->type == PB_NODE_SCALAR) {
        resp.error = er->str;
        pb_outcome_from_http(&resp, oc, ebuf, elen);
        snprintf(ebuf, elen, "%s", er->str);
        oc->error = ebuf;
    }
out:
    free(text);
    return rc;
}

/* ---- template field names ------------------------------------------------------------------ */

/* The option a template field came from: the path of the first scalar of
 * the output's block that holds its text ("routing_key", "headers.x-id")
 * and is not in used (names given to fields before: two fields of the same
 * text render the same). */
static bool find_text(const struct pb_node *n, const char *text, char *path, size_t len,
                      char **taken, size_t ntaken)
{
    if (n->type == PB_NODE_SCALAR) {
        if (strcmp(n->str, text) != 0)
            return false;
        for (size_t i = 0; i < ntaken; i++)
            if (taken[i] && strcmp(taken[i], path) == 0)
                return false;
        return true;
    }
    if (n->type != PB_NODE_MAP && n->type != PB_NODE_SEQ)
        return false;
    size_t used = strlen(path);
    for (size_t i = 0; i < n->n; i++) {
        if (n->type == PB_NODE_MAP)
            snprintf(path + used, len - used, "%s%s", used ? "." : "", n->keys[i]->str);
        else
            snprintf(path + used, len - used, "[%zu]", i);
        if (find_text(n->vals[i], text, path, len, taken, ntaken))
            return true;
        path[used] = 0;
    }
    return false;
}

static void field_name(const struct pb_output *o, size_t i, char **used, char *buf, size_t len)
{
    buf[0] = 0;
    const struct pb_node *outs = pb_node_get(o->pl->node, "outputs");
    const struct pb_node *blk = outs ? pb_node_get(outs, o->name) : NULL;
    if (blk && blk->type == PB_NODE_MAP && blk->n == 1 &&
        find_text(blk->vals[0], pb_template_text(o->tmpls[i]), buf, len, used, i))
        return;
    snprintf(buf, len, "#%zu", i + 1);
}

/* ---- one message through one output -------------------------------------------------------- */

static int deliver(struct run *r, struct pb_output *o, const struct pb_msg *msg, size_t item,
                   size_t part, struct pb_err *err)
{
    struct outcome oc = {.item = item, .part = part};
    int64_t first = msg->received_at, now = first;
    for (int n = 1;; n++) {
        char *payload = NULL, **tmpl = NULL;
        size_t plen = msg->len;
        struct pb_err berr = {0};
        int rc = pb__attempt_build(o, msg, &payload, &plen, &tmpl, &berr);
        if (rc == 1) {
            oc.kind = K_FILTERED;
            oc.reason = strdup(berr.msg);
            return push(&r->outs[o->index], &oc);
        }
        if (rc < 0) {
            oc.kind = K_DEAD;
            oc.attempts = n - 1;
            oc.reason = strdup(berr.msg[0] ? berr.msg : pb_strerror(rc));
            return push(&r->outs[o->index], &oc);
        }
        struct pb_outcome ans;
        char ebuf[PB_ERROR_EXCERPT_MAX];
        rc = output_answer(r, o, n, &ans, ebuf, sizeof(ebuf), err);
        if (rc) {
            free(payload);
            pb__attempt_tmpl_free(tmpl, o->ntmpls);
            return rc;
        }
        if (ans.result == PB_RESULT_OK) {
            oc.kind = K_DELIVERED;
            oc.attempts = n;
            oc.payload = payload ? payload : dupn(msg->body, msg->len);
            oc.len = payload ? plen : msg->len;
            oc.meta = msg->meta ? strdup(msg->meta) : strdup("{}");
            oc.fields = tmpl;
            oc.nfields = tmpl ? o->ntmpls : 0;
            return push(&r->outs[o->index], &oc);
        }
        free(payload);
        pb__attempt_tmpl_free(tmpl, o->ntmpls);
        struct pb_retry_decision dec =
            pb_retry_decide(&o->policy, ans.result, n, first, now, ans.retry_after_ms, JITTER_RND);
        if (dec.give_up || n >= ATTEMPTS_MAX) {
            char reason[PB_ERROR_EXCERPT_MAX + 64];
            pb__attempt_dead_reason(reason, sizeof(reason), ans.error,
                                    dec.give_up ? dec.reason : "too many attempts in a test");
            oc.kind = K_DEAD;
            oc.attempts = n;
            oc.reason = strdup(reason);
            return push(&r->outs[o->index], &oc);
        }
        now = dec.next_at;
    }
}

/* ---- items --------------------------------------------------------------------------------- */

static int add_item(struct run *r, char *body, size_t len, const struct pb_node *spec,
                    struct pb_err *err)
{
    if (r->nitems == ITEMS_MAX) {
        free(body);
        return tk_at_err(err, spec, "more than %s input items in one case", "10000");
    }
    if (r->nitems == r->itemcap) {
        size_t cap = r->itemcap ? r->itemcap * 2 : 8;
        struct item *v = realloc(r->items, cap * sizeof(*v));
        if (!v) {
            free(body);
            return pb_err_set(err, PB_ENOMEM, "out of memory");
        }
        r->items = v;
        r->itemcap = cap;
    }
    const struct pb_node *ct = spec->type == PB_NODE_MAP ? pb_node_get(spec, "content_type") : NULL;
    r->items[r->nitems++] = (struct item){
        .body = body,
        .len = len,
        .content_type = ct && ct->type == PB_NODE_SCALAR ? ct->str : NULL,
        .meta = spec->type == PB_NODE_MAP ? pb_node_get(spec, "meta") : NULL,
        .headers = spec->type == PB_NODE_MAP ? pb_node_get(spec, "headers") : NULL,
        .at = spec,
    };
    return 0;
}

static int read_file(const char *dir, const char *name, char **out, size_t *len,
                     const struct pb_node *at, struct pb_err *err)
{
    char path[4096];
    if (name[0] == '/')
        snprintf(path, sizeof(path), "%s", name);
    else
        snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        return pb_err_at(err, PB_EIO, at->file, at->line, at->col, "cannot read %s: %s", path,
                         strerror(errno));
    char *b = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    for (;;) {
        if (n + 65536 + 1 > cap) {
            cap = cap ? cap * 2 : 65536 * 2;
            if (cap > FILE_MAX + 65536 * 2) {
                rc = pb_err_at(err, PB_ETOOBIG, at->file, at->line, at->col,
                               "%s is larger than 64 MiB", path);
                break;
            }
            char *nb = realloc(b, cap);
            if (!nb) {
                rc = pb_err_set(err, PB_ENOMEM, "out of memory");
                break;
            }
            b = nb;
        }
        size_t k = fread(b + n, 1, 65536, f);
        n += k;
        if (k < 65536)
            break;
    }
    if (!rc && ferror(f))
        rc = pb_err_at(err, PB_EIO, at->file, at->line, at->col, "cannot read %s", path);
    fclose(f);
    if (rc) {
        free(b);
        return rc;
    }
    b[n] = 0;
    *out = b;
    *len = n;
    return 0;
}

/* The top-level elements of a JSON array text (validated first). */
static int each_element(struct run *r, const char *text, size_t len, const struct pb_node *spec,
                        struct pb_err *err)
{
    struct pb_json_check chk = {0};
    if (pb_json_validate(text, len, &chk) != 0)
        return pb_err_at(err, PB_EPARSE, spec->file, spec->line, spec->col,
                         "each: the file is not JSON: %s at byte %zu", chk.err_reason,
                         chk.err_offset);
    size_t i = 0;
    while (i < len && strchr(" \t\r\n", text[i]))
        i++;
    if (i == len || text[i] != '[')
        return tk_at_err(err, spec, "each: %s", "the file must hold a JSON array");
    i++;
    int depth = 0;
    size_t start = i;
    bool in_str = false;
    for (; i < len; i++) {
        char ch = text[i];
        if (in_str) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_str = false;
            continue;
        }
        if (ch == '"') {
            in_str = true;
        } else if (ch == '[' || ch == '{') {
            depth++;
        } else if ((ch == ']' || ch == '}') && depth > 0) {
            depth--;
        } else if ((ch == ',' || ch == ']') && depth == 0) {
            size_t a = start, b = i;
            while (a < b && strchr(" \t\r\n", text[a]))
                a++;
            while (b > a && strchr(" \t\r\n", text[b - 1]))
                b--;
            if (b > a) {
                char *el = dupn(text + a, b - a);
                if (!el)
                    return pb_err_set(err, PB_ENOMEM, "out of memory");
                int rc = add_item(r, el, b - a, spec, err);
                if (rc)
                    return rc;
            }
            start = i + 1;
            if (ch == ']')
                break;
        }
    }
    return 0;
}

static int load_items(struct run *r, const struct pb_node *input, struct pb_err *err)
{
    if (!input)
        return tk_at_err(err, r->kase, "a case needs %s", "input: an item or a list of items");
    size_t n = input->type == PB_NODE_SEQ ? input->n : 1;
    for (size_t k = 0; k < n; k++) {
        const struct pb_node *spec = input->type == PB_NODE_SEQ ? input->vals[k] : input;
        if (spec->type != PB_NODE_MAP)
            return tk_at_err(err, spec, "an input item is %s",
                             "a map with body, raw or file (and meta, headers, content_type)");
        const struct pb_node *body = NULL, *raw = NULL, *file = NULL, *each = NULL;
        for (size_t i = 0; i < spec->n; i++) {
            const char *key = spec->keys[i]->str;
            if (!strcmp(key, "body"))
                body = spec->vals[i];
            else if (!strcmp(key, "raw"))
                raw = spec->vals[i];
            else if (!strcmp(key, "file"))
                file = spec->vals[i];
            else if (!strcmp(key, "each"))
                each = spec->vals[i];
            else if (strcmp(key, "meta") && strcmp(key, "headers") && strcmp(key, "content_type"))
                return tk_at_err(
                    err, spec->keys[i],
                    "unknown key \"%s\" in an input item (body, raw, file, each, meta, "
                    "headers, content_type)",
                    key);
        }
        if (!!body + !!raw + !!file != 1)
            return tk_at_err(err, spec, "an input item has %s",
                             "exactly one of body, raw and file");
        const struct pb_node *meta = pb_node_get(spec, "meta"),
                             *hdrs = pb_node_get(spec, "headers");
        if (meta && meta->type != PB_NODE_MAP)
            return tk_at_err(err, meta, "meta is %s", "a map (merged into $meta)");
        if (hdrs && hdrs->type != PB_NODE_MAP)
            return tk_at_err(err, hdrs, "headers is %s", "a map of header names to values");
        char *text = NULL;
        size_t len = 0;
        int rc;
        if (body) {
            rc = tk_node_json(body, &text, &len, err);
            if (rc)
                return rc;
            rc = add_item(r, text, len, spec, err);
        } else if (raw) {
            if (raw->type != PB_NODE_SCALAR)
                return tk_at_err(err, raw, "raw is %s", "text (the bytes as they are)");
            if (!(text = dupn(raw->str, raw->len)))
                return pb_err_set(err, PB_ENOMEM, "out of memory");
            rc = add_item(r, text, raw->len, spec, err);
        } else {
            if (file->type != PB_NODE_SCALAR)
                return tk_at_err(err, file, "file is %s", "a path (relative to the test file)");
            rc = read_file(r->tf->dir, file->str, &text, &len, file, err);
            if (rc)
                return rc;
            size_t fl = strlen(file->str);
            bool lines = fl > 6 && strcmp(file->str + fl - 6, ".jsonl") == 0;
            bool elements = each && each->type == PB_NODE_SCALAR && !strcmp(each->str, "true");
            if (elements) {
                rc = each_element(r, text, len, spec, err);
                free(text);
            } else if (lines) {
                rc = 0;
                for (char *p = text; rc == 0 && p < text + len;) {
                    char *nl = memchr(p, '\n', (size_t)(text + len - p));
                    size_t ll = nl ? (size_t)(nl - p) : (size_t)(text + len - p);
                    size_t tl = ll;
                    while (tl && (p[tl - 1] == '\r' || p[tl - 1] == ' '))
                        tl--;
                    if (tl) {
                        char *l = dupn(p, tl);
                        rc = l ? add_item(r, l, tl, spec, err)
                               : pb_err_set(err, PB_ENOMEM, "out of memory");
                    }
                    p += ll + 1;
                }
                free(text);
            } else {
                rc = add_item(r, text, len, spec, err);
            }
        }
        if (rc)
            return rc;
    }
    return 0;
}

/* $meta as the input would commit it: input, pipeline, received_at, the
 * trace context, then the item's headers and meta (which win). */
static int item_meta(struct run *r, const struct item *it, int64_t now, char **out,
                     struct pb_err *err)
{
    jv m = jv_object();
    m = jv_object_set(m, jv_string("input"), jv_string(r->pl->in->plugin->name));
    m = jv_object_set(m, jv_string("pipeline"), jv_string(r->pl->name));
    m = jv_object_set(m, jv_string("received_at"), jv_number((double)now));
    const char *tp = NULL, *ts = NULL;
    if (it->headers) {
        jv h = jv_object();
        for (size_t i = 0; i < it->headers->n; i++) {
            const struct pb_node *v = it->headers->vals[i];
            char name[128];
            size_t k = 0;
            for (const char *p = it->headers->keys[i]->str; *p && k < sizeof(name) - 1; p++)
                name[k++] = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
            name[k] = 0;
            if (v->type != PB_NODE_SCALAR) {
                jv_free(h);
                jv_free(m);
                return tk_at_err(err, v, "a header value is %s", "text");
            }
            if (!strcmp(name, "traceparent"))
                tp = v->str;
            if (!strcmp(name, "tracestate"))
                ts = v->str;
            h = jv_object_set(h, jv_string(name), jv_string(v->str));
        }
        m = jv_object_set(m, jv_string("headers"), h);
    }
    char tbuf[PB_TRACEPARENT_LEN + 1];
    pb_trace_take(tp, tbuf);
    m = jv_object_set(m, jv_string("traceparent"), jv_string(tbuf));
    if (ts && pb_trace_state_ok(ts))
        m = jv_object_set(m, jv_string("tracestate"), jv_string(ts));
    if (it->meta) {
        jv extra;
        int rc = tk_node_jv(it->meta, &extra, err);
        if (rc) {
            jv_free(m);
            return rc;
        }
        for (int i = jv_object_iter(extra); jv_object_iter_valid(extra, i);
             i = jv_object_iter_next(extra, i))
            m = jv_object_set(m, jv_object_iter_key(extra, i), jv_object_iter_value(extra, i));
        jv_free(extra);
    }
    size_t len;
    return pb_jq_dump(m, out, &len, err);
}

/* ---- running the pipeline ------------------------------------------------------------------ */

static int run_item(struct run *r, size_t k, struct pb_err *err)
{
    const struct item *it = &r->items[k];
    struct pb_pipeline *pl = r->pl;
    int64_t now = pb_now_ms();
    int rc;

    if (!pl->in->raw) {
        struct pb_json_check chk = {0};
        if (pb_json_validate(it->body, it->len, &chk) != 0) {
            char reason[200];
            snprintf(reason, sizeof(reason), "invalid JSON: %s at byte %zu",
                     chk.err_reason ? chk.err_reason : "malformed", chk.err_offset);
            struct outcome oc = {.kind = K_REJECTED, .item = k + 1, .reason = strdup(reason)};
            return push(&r->rejected, &oc);
        }
    }
    char *meta = NULL;
    rc = item_meta(r, it, now, &meta, err);
    if (rc)
        return rc;
    const char *ct = it->content_type;
    if (!ct)
        ct = pl->in->raw ? "application/octet-stream" : NULL;
    else if (!pl->in->raw)
        ct = NULL; /* a JSON input's messages are application/json */
    struct pb_msg *msg = pb_msg_create(it->body, it->len, ct);
    if (!msg || pb_msg_set_meta(msg, meta, strlen(meta)) != 0) {
        free(meta);
        pb_msg_unref(msg);
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    }
    free(meta);
    msg->received_at = now;
    pb_msg_new_id(msg->id, now);

    if (!pl->routes) {
        for (size_t j = 0; j < pl->nouts && rc == 0; j++)
            rc = deliver(r, &pl->outs[j], msg, k + 1, 0, err);
        pb_msg_unref(msg);
        return rc;
    }
    struct pb_route_decision dec;
    struct pb_err rerr = {0};
    rc = pb__route_decide(pl, msg, r->keys, &dec, &rerr);
    if (rc) {
        struct outcome oc = {.kind = K_DEAD,
                             .item = k + 1,
                             .reason = strdup(rerr.msg[0] ? rerr.msg : pb_strerror(rc))};
        pb_msg_unref(msg);
        return push(&r->route, &oc);
    }
    if (dec.res.n == 0) {
        char note[160];
        snprintf(note, sizeof(note), "filtered by process step %zu (%s)", dec.res.dropped_at,
                 dec.res.dropped_by ? dec.res.dropped_by : "?");
        for (size_t j = 0; j < pl->nouts && rc == 0; j++) {
            struct outcome oc = {.kind = K_FILTERED, .item = k + 1, .reason = strdup(note)};
            rc = push(&r->outs[j], &oc);
        }
    }
    for (size_t i = 0; i < dec.res.n && rc == 0; i++) {
        struct pb_msg *m = msg;
        size_t part = dec.res.split ? i + 1 : 0;
        if (dec.bodies) {
            m = pb_msg_create(dec.bodies[i], dec.lens[i], NULL);
            if (!m || pb_msg_set_meta(m, msg->meta, msg->meta_len) != 0) {
                pb_msg_unref(m);
                rc = pb_err_set(err, PB_ENOMEM, "out of memory");
                break;
            }
            m->received_at = msg->received_at;
            snprintf(m->id, sizeof(m->id), "%s", msg->id);
        }
        for (size_t j = 0; j < pl->nouts && rc == 0; j++) {
            if (dec.res.items[i].outputs >> j & 1) {
                rc = deliver(r, &pl->outs[j], m, k + 1, part, err);
            } else {
                struct outcome oc = {
                    .kind = K_ROUTED_AWAY, .item = k + 1, .part = part, .reason = NULL};
                rc = push(&r->outs[j], &oc);
            }
        }
        if (m != msg)
            pb_msg_unref(m);
    }
    pb__route_decision_cleanup(&dec);
    pb_msg_unref(msg);
    return rc;
}

/* ---- mocked answers of processors ---------------------------------------------------------- */

static int load_proc_mocks(struct run *r, const struct pb_node *mock, struct pb_err *err)
{
    for (size_t i = 0; mock && i < mock->n; i++) {
        const char *plugin = mock->keys[i]->str;
        const struct pb_node *rules = mock->vals[i];
        if (!strcmp(plugin, "outputs"))
            continue;
        if (!pb_registry_processor(plugin))
            return tk_at_err(err, mock->keys[i],
                             "mock: \"%s\" is neither outputs nor a processor's name", plugin);
        size_t n = rules->type == PB_NODE_SEQ ? rules->n : 1;
        for (size_t k = 0; k < n; k++) {
            const struct pb_node *rule = rules->type == PB_NODE_SEQ ? rules->vals[k] : rules;
            if (rule->type != PB_NODE_MAP)
                return tk_at_err(
                    err, rule, "a mocked answer is %s",
                    "a map: match, when, status, body, raw, headers, error, retry_after");
            jv match = jv_null(), answer = jv_object();
            struct pb_jq *when = NULL;
            int rc = 0;
            for (size_t j = 0; j < rule->n && rc == 0; j++) {
                const char *key = rule->keys[j]->str;
                const struct pb_node *v = rule->vals[j];
                jv val;
                if (!strcmp(key, "when")) {
                    struct pb_err jerr = {0};
                    if (v->type != PB_NODE_SCALAR ||
                        !(when = pb_jq_compile_predicate(v->str, &jerr)))
                        rc = pb_err_at(err, PB_EJQ, v->file, v->line, v->col, "when: %s",
                                       jerr.msg[0] ? jerr.msg : "a jq condition");
                } else if (!strcmp(key, "retry_after")) {
                    int64_t ms;
                    if (v->type != PB_NODE_SCALAR || pb_parse_duration(v->str, &ms))
                        rc = tk_at_err(err, v, "retry_after is %s", "a duration (2s, 1m)");
                    else
                        answer = jv_object_set(answer, jv_string("retry_after_ms"),
                                               jv_number((double)ms));
                } else if (!strcmp(key, "match") || !strcmp(key, "status") ||
                           !strcmp(key, "body") || !strcmp(key, "raw") || !strcmp(key, "headers") ||
                           !strcmp(key, "error")) {
                    rc = tk_node_jv(v, &val, err);
                    if (rc == 0 && !strcmp(key, "match")) {
                        jv_free(match);
                        match = val;
                    } else if (rc == 0) {
                        answer = jv_object_set(answer, jv_string(key), val);
                    }
                } else {
                    rc = tk_at_err(
                        err, rule->keys[j],
                        "unknown key \"%s\" in a mocked answer (match, when, status, body, "
                        "raw, headers, error, retry_after)",
                        key);
                }
            }
            if (rc == 0) {
                rc = pb_mock_add(r->mock, plugin, match, when, answer, err);
                if (rc && !err->file)
                    err->file = rule->file, err->line = rule->line, err->col = rule->col;
            } else {
                jv_free(match);
                jv_free(answer);
                pb_jq_destroy(when);
            }
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* ---- a case -------------------------------------------------------------------------------- */

static const char *const case_keys[] = {"name",   "pipeline",    "input",    "mock",
                                        "expect", "dead_letter", "rejected", NULL};

static int check_case_keys(const struct pb_node *kase, struct pb_err *err)
{
    if (kase->type != PB_NODE_MAP)
        return tk_at_err(err, kase, "a case is %s", "a map: name, pipeline, input, mock, expect");
    for (size_t i = 0; i < kase->n; i++) {
        bool known = false;
        for (size_t k = 0; case_keys[k] && !known; k++)
            known = strcmp(kase->keys[i]->str, case_keys[k]) == 0;
        if (!known)
            return tk_at_err(err, kase->keys[i],
                             "unknown key \"%s\" in a case (name, pipeline, input, mock, expect, "
                             "dead_letter, rejected)",
                             kase->keys[i]->str);
    }
    return 0;
}

/* Rendered template fields as "name\0value" strings, for reports. */
static void name_fields(struct run *r)
{
    for (size_t j = 0; j < r->pl->nouts; j++) {
        struct pb_output *o = &r->pl->outs[j];
        for (size_t i = 0; i < r->outs[j].n; i++) {
            struct outcome *oc = &r->outs[j].v[i];
            for (size_t k = 0; k < oc->nfields; k++) {
                char name[256];
                field_name(o, k, oc->fields, name, sizeof(name));
                size_t nl = strlen(name), vl = strlen(oc->fields[k]);
                char *both = malloc(nl + 1 + vl + 1);
                if (!both)
                    continue;
                memcpy(both, name, nl + 1);
                memcpy(both + nl + 1, oc->fields[k], vl + 1);
                free(oc->fields[k]);
                oc->fields[k] = both;
            }
        }
    }
}

static bool run_case(struct run *r, struct pb_err *err)
{
    const struct pb_node *kase = r->kase;
    int rc = check_case_keys(kase, err);
    if (rc)
        return false;
    const struct pb_node *pn = pb_node_get(kase, "pipeline");
    if (pn && pn->type == PB_NODE_SCALAR) {
        r->pl = NULL;
        for (size_t i = 0; i < r->c->npipelines; i++)
            if (!strcmp(r->c->pipelines[i].name, pn->str))
                r->pl = &r->c->pipelines[i];
        if (!r->pl) {
            tk_at_err(err, pn, "no pipeline \"%s\" in the configuration", pn->str);
            return false;
        }
    } else if (r->c->npipelines == 1) {
        r->pl = &r->c->pipelines[0];
    } else {
        tk_at_err(err, kase, "%s", "the configuration has several pipelines: name one (pipeline:)");
        return false;
    }
    r->outs = calloc(r->pl->nouts, sizeof(*r->outs));
    if (!r->outs) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return false;
    }
    pb_mock_reset(r->mock);
    const struct pb_node *mock = pb_node_get(kase, "mock");
    if (mock && mock->type != PB_NODE_MAP) {
        tk_at_err(err, mock, "mock is %s", "a map: outputs, and processors by name");
        return false;
    }
    r->out_mocks = mock ? pb_node_get(mock, "outputs") : NULL;
    if (r->out_mocks && r->out_mocks->type != PB_NODE_MAP) {
        tk_at_err(err, r->out_mocks, "mock.outputs is %s", "a map of output names to answers");
        return false;
    }
    for (size_t i = 0; r->out_mocks && i < r->out_mocks->n; i++)
        if (!pb_pipeline_output(r->pl, r->out_mocks->keys[i]->str)) {
            tk_at_err(err, r->out_mocks->keys[i], "mock.outputs: pipeline has no output \"%s\"",
                      r->out_mocks->keys[i]->str);
            return false;
        }
    if (load_proc_mocks(r, mock, err))
        return false;
    const struct pb_node *expect = pb_node_get(kase, "expect");
    if (expect && expect->type != PB_NODE_MAP) {
        tk_at_err(err, expect, "expect is %s", "a map of output names to what they get");
        return false;
    }
    for (size_t i = 0; expect && i < expect->n; i++)
        if (!pb_pipeline_output(r->pl, expect->keys[i]->str)) {
            tk_at_err(err, expect->keys[i], "expect: pipeline has no output \"%s\"",
                      expect->keys[i]->str);
            return false;
        }
    if (load_items(r, pb_node_get(kase, "input"), err))
        return false;
    for (size_t k = 0; k < r->nitems; k++)
        if (run_item(r, k, err))
            return false;
    name_fields(r);

    for (size_t j = 0; j < r->pl->nouts; j++) {
        const struct pb_node *spec = expect ? pb_node_get(expect, r->pl->outs[j].name) : NULL;
        if (spec) {
            tk_check_output(r, &r->pl->outs[j], spec);
            continue;
        }
        /* Not checked, but a dead letter is never expected silently. */
        for (size_t i = 0; i < r->outs[j].n; i++)
            if (r->outs[j].v[i].kind == K_DEAD)
                tk_problem(r, "%s[%zu]: unexpected dead letter: %s", r->pl->outs[j].name, i + 1,
                           r->outs[j].v[i].reason);
    }
    tk_check_stage(r, "dead letter", &r->route, pb_node_get(kase, "dead_letter"));
    tk_check_stage(r, "rejected item", &r->rejected, pb_node_get(kase, "rejected"));
    if (r->problems && pb_mock_ncalls(r->mock)) {
        fprintf(r->rep, "    mocked requests:\n");
        for (size_t i = 0; i < pb_mock_ncalls(r->mock); i++)
            fprintf(r->rep, "      %s\n", pb_mock_call(r->mock, i));
    }
    if (r->o->verbose && !r->problems)
        tk_show_all(r);
    return r->problems == 0;
}

/* The clock of the keys process steps remember (dedupe) during a case. */
static int64_t case_now(void *arg)
{
    (void)arg;
    return pb_now_ms();
}

void tk_run_file(struct pb_config *c, struct pb_mock *mock, const struct tk_file *tf,
                 const char *filter, const struct tk_opts *o, FILE *out, int *passed, int *failed)
{
    const char *green = o->color ? "\033[32m" : "", *red = o->color ? "\033[31m" : "",
               *off = o->color ? "\033[0m" : "";
    struct qcache *cache = NULL;
    for (size_t i = 0; i < tf->cases->n; i++) {
        const struct pb_node *kase = tf->cases->vals[i];
        const struct pb_node *nm = kase->type == PB_NODE_MAP ? pb_node_get(kase, "name") : NULL;
        char name[256];
        if (nm && nm->type == PB_NODE_SCALAR)
            snprintf(name, sizeof(name), "%s", nm->str);
        else
            snprintf(name, sizeof(name), "case %zu", i + 1);
        if (filter && !strstr(name, filter))
            continue;
        struct run r = {.cache = &cache, .c = c, .mock = mock, .tf = tf, .o = o, .kase = kase};
        struct pb_err err = {0};
        r.keys = pb_route_keys_memory(case_now, NULL);
        r.rep = r.keys ? open_memstream(&r.rbuf, &r.rlen) : NULL;
        if (!r.rep) {
            pb_route_keys_memory_free(r.keys);
            fprintf(out, "%sFAIL%s %s: out of memory\n", red, off, name);
            (*failed)++;
            continue;
        }
        int64_t t0 = pb_mono_us();
        bool ok = run_case(&r, &err);
        if (!ok && err.code)
            tk_problem_err(&r, &err);
        fclose(r.rep);
        double ms = (double)(pb_mono_us() - t0) / 1000.0;
        fprintf(out, "%s%s%s %s (%s:%d, %.1f ms)\n", ok ? green : red, ok ? "ok  " : "FAIL", off,
                name, tf->path, kase->line, ms);
        if (r.rlen)
            fputs(r.rbuf, out);
        fflush(out);
        *(ok ? passed : failed) += 1;
        free(r.rbuf);
        pb_route_keys_memory_free(r.keys);
        for (size_t j = 0; r.outs && j < r.pl->nouts; j++)
            outlist_free(&r.outs[j]);
        free(r.outs);
        outlist_free(&r.route);
        outlist_free(&r.rejected);
        for (size_t k = 0; k < r.nitems; k++)
            free(r.items[k].body);
        free(r.items);
    }
    pb_mock_reset(mock);
    tk_qcache_free(cache);
}
