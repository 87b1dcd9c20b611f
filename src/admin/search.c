/* search.c - GET /api/messages: the message explorer's search.
 *
 * Filters the store can answer (pipeline, id, idempotency key, time range,
 * a delivery's state and output) go to pb_store_search_messages; a jq
 * predicate over the body and $meta (`where`) is run here on each message
 * the store returns. The scan is bounded: at most `scan` messages and
 * SCAN_BUDGET_MS are looked at per request, and the answer says where to
 * go on (next_before), so a search over millions of messages is many short
 * requests, never one that holds a worker. Runs on an admin worker thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "admin/api.h"
#include "admin/search.h"
#include "admin/views.h"
#include "patchbay/pb_jq.h"
#include "patchbay/pb_time.h"

#define LIMIT_DEFAULT 50
#define LIMIT_MAX 200
#define SCAN_DEFAULT 5000
#define SCAN_MAX 100000
#define SCAN_CHUNK 500
#define SCAN_BUDGET_MS 2000

/* ---- the predicate -------------------------------------------------------------------------- */

struct pb_admin_pred {
    struct pb_jq *q;
    uint64_t errors; /* messages on which the program failed (counted as no match) */
    char first_error[256];
};

struct pb_admin_pred *pb_admin_pred_compile(const char *program, struct pb_err *err)
{
    if (!program || !*program) {
        pb_err_set(err, PB_EINVAL, "the predicate is empty");
        return NULL;
    }
    if (strlen(program) > PB_ADMIN_PRED_MAX) {
        pb_err_set(err, PB_EINVAL, "the predicate is longer than %d bytes", PB_ADMIN_PRED_MAX);
        return NULL;
    }
    struct pb_admin_pred *p = calloc(1, sizeof(*p));
    if (!p) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    p->q = pb_jq_compile_predicate(program, err);
    if (!p->q) {
        free(p);
        return NULL;
    }
    return p;
}

void pb_admin_pred_destroy(struct pb_admin_pred *p)
{
    if (!p)
        return;
    pb_jq_destroy(p->q);
    free(p);
}

/* Is the content type JSON (absent means JSON)? */
static bool is_json_type(const char *ct)
{
    if (!ct)
        return true;
    size_t n = strcspn(ct, ";");
    while (n && ct[n - 1] == ' ')
        n--;
    return (n == 16 && strncasecmp(ct, "application/json", 16) == 0) ||
           (n > 5 && strncasecmp(ct + n - 5, "+json", 5) == 0);
}

int pb_admin_pred_match(struct pb_admin_pred *p, const void *body, size_t len,
                        const char *content_type, const char *meta, size_t meta_len)
{
    struct pb_err err = {0};
    jv in = jv_null(), m = jv_null();
    /* A body jq cannot carry exactly (or not JSON) is null: a predicate on
     * $meta still applies to it. */
    if (is_json_type(content_type) && pb_jq_parse(body, len, &in, &err) != 0)
        in = jv_null();
    if (meta && pb_jq_parse(meta, meta_len, &m, &err) != 0)
        m = jv_null();
    bool truth = false;
    pb_err_clear(&err);
    int rc = pb_jq_test(p->q, in, m, &truth, &err);
    jv_free(in);
    jv_free(m);
    if (rc) {
        if (p->errors++ == 0)
            snprintf(p->first_error, sizeof(p->first_error), "%.200s",
                     err.msg[0] ? err.msg : pb_strerror(rc));
        return 0;
    }
    return truth ? 1 : 0;
}

uint64_t pb_admin_pred_errors(const struct pb_admin_pred *p, const char **first)
{
    if (first)
        *first = p->errors ? p->first_error : NULL;
    return p->errors;
}

/* ---- the search ----------------------------------------------------------------------------- */

struct scan {
    struct pb_admin_pred *pred;
    json_t *items;
    json_t *cur; /* the message whose deliveries come next, or NULL */
    int limit, found;
    int64_t rows;                /* messages the store returned */
    int64_t last_at, last_seq;   /* the last one looked at */
    int64_t match_at, match_seq; /* the last one matched */
    bool bad;
};

static int s_message(void *arg, const struct pb_message_row *m)
{
    struct scan *s = arg;
    s->cur = NULL;
    s->rows++;
    s->last_at = m->received_at;
    s->last_seq = m->seq;
    if (s->found == s->limit)
        return PB_READ_SKIP; /* the page is full: the cursor stays at the last match */
    if (s->pred &&
        !pb_admin_pred_match(s->pred, m->body, m->len, m->content_type, m->meta, m->meta_len))
        return PB_READ_SKIP;
    json_t *o = json_pack("{s:s, s:s, s:I, s:s?, s:I, s:o}", "id", m->id, "pipeline", m->pipeline,
                          "received_at", (json_int_t)m->received_at, "content_type",
                          m->content_type, "size", (json_int_t)m->len, "deliveries", json_array());
    if (o && m->idem_key)
        json_object_set_new(o, "idempotency_key",
                            pb_admin_text_json(m->idem_key, strlen(m->idem_key)));
    if (o && m->parent_id)
        json_object_set_new(o, "parent", json_string(m->parent_id));
    if (o && m->edit_of)
        json_object_set_new(o, "edit_of", json_string(m->edit_of));
    if (!o || json_array_append_new(s->items, o) != 0) {
        s->bad = true;
        return 1;
    }
    s->cur = json_object_get(o, "deliveries");
    s->found++;
    s->match_at = m->received_at;
    s->match_seq = m->seq;
    return 0;
}

static int s_delivery(void *arg, const struct pb_delivery_row *d)
{
    struct scan *s = arg;
    if (!s->cur)
        return 0;
    char name[512];
    if (d->sub)
        snprintf(name, sizeof(name), "%s/%s", d->output, d->sub);
    else
        snprintf(name, sizeof(name), "%s", d->output);
    json_t *o = json_pack("{s:I, s:s, s:s, s:i, s:I}", "id", (json_int_t)d->id, "output", name,
                          "state", pb_dstate_name(d->state), "attempts", d->attempts, "updated_at",
                          (json_int_t)d->updated_at);
    if (o)
        json_object_set_new(o, "last_status",
                            d->has_status ? json_integer(d->last_status) : json_null());
    if (!o || json_array_append_new(s->cur, o) != 0) {
        s->bad = true;
        return 1;
    }
    return 0;
}

/* "RECEIVED_AT.SEQ" */
static int parse_cursor(const char *s, int64_t *at, int64_t *seq)
{
    const char *dot = strchr(s, '.');
    char a[24];
    if (!dot || (size_t)(dot - s) >= sizeof(a))
        return -1;
    memcpy(a, s, (size_t)(dot - s));
    a[dot - s] = 0;
    return pb_admin_parse_int(a, 0, INT64_MAX / 2, at) == 0 &&
                   pb_admin_parse_int(dot + 1, 1, INT64_MAX / 2, seq) == 0
               ? 0
               : -1;
}

static int state_of(const char *name)
{
    for (int st = PB_DSTATE_PENDING; st <= PB_DSTATE_ROUTED_AWAY; st++)
        if (strcmp(pb_dstate_name((enum pb_dstate)st), name) == 0)
            return st;
    return -1;
}

int pb_admin_search(struct pb_engine *e, struct pb_http_request *c, struct pb_api_resp *r)
{
    struct pb_msg_query q = {.state = -1, .limit = LIMIT_DEFAULT};
    int64_t v, scan_max = SCAN_DEFAULT;
    const char *a;
    q.pipeline = pb_admin_arg(c, "pipeline");
    q.msg_id = pb_admin_arg(c, "id");
    q.idem_key = pb_admin_arg(c, "key");
    q.output = pb_admin_arg(c, "output");
    if ((a = pb_admin_arg(c, "since")) && pb_admin_parse_time(a, &q.since) != 0)
        return pb_admin_error(r, 400, "since: unix milliseconds or an RFC 3339 time");
    if ((a = pb_admin_arg(c, "until")) && pb_admin_parse_time(a, &q.until) != 0)
        return pb_admin_error(r, 400, "until: unix milliseconds or an RFC 3339 time");
    if ((a = pb_admin_arg(c, "status")) && (q.state = state_of(a)) < 0)
        return pb_admin_error(
            r, 400, "status: pending, delivered, dead, filtered, replayed or routed_away");
    if ((a = pb_admin_arg(c, "limit"))) {
        if (pb_admin_parse_int(a, 1, LIMIT_MAX, &v) != 0)
            return pb_admin_error(r, 400, "limit must be 1..200");
        q.limit = (int)v;
    }
    if ((a = pb_admin_arg(c, "scan")) && pb_admin_parse_int(a, 1, SCAN_MAX, &scan_max) != 0)
        return pb_admin_error(r, 400, "scan must be 1..100000");
    if ((a = pb_admin_arg(c, "before")) && parse_cursor(a, &q.before_at, &q.before_seq) != 0)
        return pb_admin_error(r, 400, "before must be a next_before of an earlier page");

    struct pb_err err = {0};
    struct scan s = {.limit = q.limit, .items = json_array()};
    if (!s.items)
        return pb_admin_error(r, 500, "out of memory");
    const char *where = pb_admin_arg(c, "where");
    if (where && !(s.pred = pb_admin_pred_compile(where, &err))) {
        json_decref(s.items);
        char msg[400];
        snprintf(msg, sizeof(msg), "where: %.380s", err.msg);
        return pb_admin_error(r, 400, msg);
    }
    struct pb_read_cbs cb = {.arg = &s, .message = s_message, .delivery = s_delivery};
    int64_t deadline = pb_mono_us() + SCAN_BUDGET_MS * 1000;
    bool exhausted = false;
    int rc = 0;
    /* Without a predicate one read is the page; with one, chunks until the
     * page is full, the scan bound or the time budget is reached. */
    for (;;) {
        int64_t before = s.rows;
        if (s.pred) {
            int64_t left = scan_max - s.rows;
            q.limit = (int)(left < SCAN_CHUNK ? left : SCAN_CHUNK);
        }
        rc = pb_store_search_messages(e->store, &q, &cb, &err);
        if (rc || s.bad)
            break;
        if (s.rows - before < q.limit) {
            exhausted = true;
            break;
        }
        if (!s.pred || s.found == s.limit || s.rows >= scan_max || pb_mono_us() > deadline)
            break;
        q.before_at = s.last_at;
        q.before_seq = s.last_seq;
    }
    if (rc || s.bad) {
        json_decref(s.items);
        pb_admin_pred_destroy(s.pred);
        if (!rc)
            return pb_admin_error(r, 500, "out of memory");
        return pb_admin_store_error(r, &err);
    }
    /* Where to go on: after the last match when the page filled up, else
     * after the last message looked at. */
    json_t *next = json_null();
    if (!exhausted || s.found == s.limit) {
        char cur[48];
        bool full = s.found == s.limit;
        snprintf(cur, sizeof(cur), "%lld.%lld", (long long)(full ? s.match_at : s.last_at),
                 (long long)(full ? s.match_seq : s.last_seq));
        next = json_string(cur);
    }
    json_t *out = json_pack("{s:o, s:o, s:I}", "items", s.items, "next_before", next, "scanned",
                            (json_int_t)s.rows);
    if (out && s.pred) {
        const char *first;
        uint64_t n = pb_admin_pred_errors(s.pred, &first);
        json_object_set_new(out, "predicate_errors", json_integer((json_int_t)n));
        if (first)
            json_object_set_new(out, "predicate_error", json_string(first));
    }
    pb_admin_pred_destroy(s.pred);
    if (!out)
        return pb_admin_error(r, 500, "out of memory");
    return pb_admin_reply(r, 200, out);
}
