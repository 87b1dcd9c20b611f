/* dead_api.c - the dead-letter queue as the dashboard works it: the list by
 * filter in either order, a filtered set replayed or purged, and a dead
 * letter's corrected body sent as a new message linked to the old
 * (edit-and-replay).
 *
 * A set is worked a page at a time (PAGE ids, oldest first): each page is
 * one short transaction, so a set of 100,000 never holds up other commits.
 * Admin worker threads; they block on the store. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin/api.h"
#include "admin/views.h"
#include "patchbay/pb_json.h"
#include "patchbay/pb_log.h"

#define PAGE 1000
#define LIST_DEFAULT 100
#define LIST_MAX 1000

/* The filters shared by the list and the sets. 0 or a 400 already in r. */
static int filters(struct pb_http_request *c, struct pb_dead_query *q, struct pb_api_resp *r)
{
    const char *a;
    int64_t v;
    q->pipeline = pb_admin_arg(c, "pipeline");
    q->output = pb_admin_arg(c, "output");
    q->error = pb_admin_arg(c, "error");
    if ((a = pb_admin_arg(c, "since")) && pb_admin_parse_time(a, &q->since) != 0)
        return pb_admin_error(r, 400, "since: unix milliseconds or an RFC 3339 time"), -1;
    if ((a = pb_admin_arg(c, "until")) && pb_admin_parse_time(a, &q->until) != 0)
        return pb_admin_error(r, 400, "until: unix milliseconds or an RFC 3339 time"), -1;
    if ((a = pb_admin_arg(c, "status"))) {
        if (pb_admin_parse_int(a, 1, 999, &v) != 0)
            return pb_admin_error(r, 400, "status must be a protocol status, 1..999"), -1;
        q->status = (int)v;
    }
    if (q->error && strlen(q->error) > 200)
        return pb_admin_error(r, 400, "error: at most 200 bytes"), -1;
    return 0;
}

int pb_admin_dead_list(struct pb_engine *e, struct pb_http_request *c, struct pb_api_resp *r)
{
    struct pb_dead_query q = {.limit = LIST_DEFAULT};
    const char *a;
    int64_t v;
    if (filters(c, &q, r) != 0)
        return 0;
    if ((a = pb_admin_arg(c, "order"))) {
        if (strcmp(a, "newest") != 0 && strcmp(a, "oldest") != 0)
            return pb_admin_error(r, 400, "order: oldest (the default) or newest");
        q.newest_first = strcmp(a, "newest") == 0;
    }
    if ((a = pb_admin_arg(c, "limit"))) {
        if (pb_admin_parse_int(a, 1, LIST_MAX, &v) != 0)
            return pb_admin_error(r, 400, "limit must be 1..1000");
        q.limit = (int)v;
    }
    if ((a = pb_admin_arg(c, "after"))) {
        if (pb_admin_parse_int(a, 1, INT64_MAX / 2, &q.after_id) != 0)
            return pb_admin_error(r, 400, "after must be a delivery id");
    }
    if ((a = pb_admin_arg(c, "before"))) {
        if (pb_admin_parse_int(a, 1, INT64_MAX / 2, &q.before_id) != 0)
            return pb_admin_error(r, 400, "before must be a delivery id");
        q.newest_first = true;
    }
    struct pb_err err = {0};
    json_t *l = pb_admin_dead_query_json(e->store, &q, &err);
    if (!l)
        return pb_admin_store_error(r, &err);
    return pb_admin_reply(r, 200, l);
}

/* ---- sets ------------------------------------------------------------------------------------ */

/* One page of the set: ids and, per id, "pipeline\0output". */
struct page {
    int64_t ids[PAGE];
    char where[PAGE][PB_NAME_MAX_STORE * 3];
    size_t n;
    bool oom;
};

static int page_cb(void *arg, const struct pb_delivery_row *d)
{
    struct page *p = arg;
    if (p->n == PAGE)
        return 0;
    p->ids[p->n] = d->id;
    int w =
        d->sub ? snprintf(p->where[p->n], sizeof(p->where[0]), "%s%c%s/%s", d->pipeline, 0,
                          d->output, d->sub)
               : snprintf(p->where[p->n], sizeof(p->where[0]), "%s%c%s", d->pipeline, 0, d->output);
    if (w < 0 || (size_t)w >= sizeof(p->where[0]))
        return 0; /* names too long to have come from a configuration: left alone */
    p->n++;
    return 0;
}

/* Replay the ids of p that go to the same place as p->ids[k], once each. */
static int replay_group(struct pb_engine *e, struct page *p, size_t k, bool *done,
                        int64_t *replayed, int64_t *refused)
{
    const char *pipeline = p->where[k];
    const char *output = pipeline + strlen(pipeline) + 1;
    int64_t ids[PAGE];
    size_t n = 0;
    for (size_t i = k; i < p->n; i++) {
        const char *pl = p->where[i];
        if (done[i] || strcmp(pl, pipeline) != 0 || strcmp(pl + strlen(pl) + 1, output) != 0)
            continue;
        done[i] = true;
        ids[n++] = p->ids[i];
    }
    if (pb_admin_replay_refusal(e, pipeline, output)) {
        *refused += (int64_t)n;
        return 0;
    }
    struct pb_op op = {.kind = PB_OP_REPLAY_ALL};
    op.u.replay_all = (struct pb_op_replay_all){.ids = ids, .nids = n, .now = pb_now_ms()};
    int rc = pb_store_exec(e->store, &op);
    if (rc)
        return rc;
    if (op.u.replay_all.count) {
        *replayed += op.u.replay_all.count;
        if (!pb_engine_store_gained(e, pipeline, output, op.u.replay_all.count))
            PB_WARN("replayed dead letters of an output no longer configured pipeline=%s "
                    "output=%s count=%lld",
                    pipeline, output, (long long)op.u.replay_all.count);
    }
    return 0;
}

int pb_admin_dead_bulk(struct pb_engine *e, struct pb_http_request *c, bool purge,
                       struct pb_api_resp *r)
{
    struct pb_dead_query q = {.limit = PAGE};
    if (filters(c, &q, r) != 0)
        return 0;
    bool any = q.pipeline || q.output || q.error || q.since || q.until || q.status;
    const char *all = pb_admin_arg(c, "all");
    if (purge && !any && !(all && strcmp(all, "true") == 0))
        return pb_admin_error(r, 400, "purging every dead letter takes all=true; or give a filter");
    struct page *p = malloc(sizeof(*p));
    bool *done = malloc(PAGE * sizeof(*done));
    if (!p || !done) {
        free(p);
        free(done);
        return pb_admin_error(r, 500, "out of memory");
    }
    int64_t count = 0, refused = 0;
    int rc = 0;
    struct pb_err err = {0};
    struct pb_read_cbs cb = {.arg = p, .delivery = page_cb};
    for (;;) {
        p->n = 0;
        if ((rc = pb_store_read_dead_letters(e->store, &q, &cb, &err)) != 0)
            break;
        if (p->n == 0)
            break;
        q.after_id = p->ids[p->n - 1];
        if (purge) {
            struct pb_op op = {.kind = PB_OP_PURGE};
            op.u.purge = (struct pb_op_purge){.ids = p->ids, .nids = p->n};
            if ((rc = pb_store_exec(e->store, &op)) != 0)
                break;
            count += op.u.purge.count;
        } else {
            memset(done, 0, PAGE * sizeof(*done));
            for (size_t k = 0; k < p->n && rc == 0; k++)
                if (!done[k])
                    rc = replay_group(e, p, k, done, &count, &refused);
            if (rc)
                break;
        }
        if (p->n < PAGE)
            break;
    }
    free(p);
    free(done);
    if (rc) {
        if (err.msg[0])
            return pb_admin_store_error(r, &err);
        return pb_admin_error(r, 503, pb_strerror(rc));
    }
    PB_INFO("dead letters %s count=%lld pipeline=%s output=%s", purge ? "purged" : "replayed",
            (long long)count, q.pipeline ? q.pipeline : "*", q.output ? q.output : "*");
    if (purge)
        return pb_admin_reply(r, 200, json_pack("{s:I}", "purged", (json_int_t)count));
    return pb_admin_reply(
        r, 200,
        json_pack("{s:I, s:I}", "replayed", (json_int_t)count, "refused", (json_int_t)refused));
}

/* ---- edit-and-replay --------------------------------------------------------------------------
 */

int pb_admin_edit_replay(struct pb_engine *e, int64_t id, struct pb_http_request *c,
                         struct pb_api_resp *r)
{
    size_t len = 0;
    const char *body = pb_http_request_body(c, &len);
    char msg[320];
    if (!body || len == 0)
        return pb_admin_error(r, 400, "the request body is the corrected message body");
    struct pb_err err = {0};
    json_t *dead = pb_admin_dead_letter_json(e->store, id, &err);
    if (!dead)
        return pb_admin_store_error(r, &err);
    const char *pipeline = json_string_value(json_object_get(dead, "pipeline"));
    const char *output = json_string_value(json_object_get(dead, "output"));
    const char *ct = json_string_value(json_object_get(dead, "content_type"));
    char pl_name[PB_NAME_MAX_STORE], ct_buf[256];
    snprintf(pl_name, sizeof(pl_name), "%s", pipeline ? pipeline : "");
    snprintf(ct_buf, sizeof(ct_buf), "%s", ct ? ct : "");
    bool never_taken = output && strcmp(output, PB_INPUT_OUTPUT) == 0;
    const char *why = never_taken || !output ? NULL : pb_admin_replay_refusal(e, pl_name, output);
    json_decref(dead);
    if (why) {
        snprintf(msg, sizeof(msg), "cannot replay dead letter %lld: %s", (long long)id, why);
        return pb_admin_error(r, 409, msg);
    }
    /* A JSON message stays JSON: the corrected body is checked as ingest
     * checks one, numbers a double cannot carry included. */
    if (!ct_buf[0]) {
        struct pb_json_check chk = {.exact_numbers = true};
        if (pb_json_validate(body, len, &chk) != 0) {
            snprintf(msg, sizeof(msg),
                     "the body is not JSON patchbay can carry exactly: %s at byte %zu",
                     chk.err_reason ? chk.err_reason : "invalid", chk.err_offset);
            return pb_admin_error(r, 400, msg);
        }
    }
    /* Never taken in: it goes where a new message of its pipeline goes. */
    struct pb_pipeline *pl = never_taken ? pb_engine_pipeline(e, pl_name) : NULL;
    if (never_taken && !pl)
        return pb_admin_error(r, 409, "its pipeline is no longer in the configuration");
    size_t ntargets = pl ? pl->ningest : 0;
    int64_t *ids = calloc(ntargets ? ntargets : 1, sizeof(*ids));
    if (!ids)
        return pb_admin_error(r, 500, "out of memory");
    char new_id[PB_MSG_ID_MAX];
    pb_msg_new_id(new_id, pb_now_ms());
    struct pb_op op = {.kind = PB_OP_INJECT};
    op.u.inject = (struct pb_op_inject){
        .msg_id = new_id,
        .body = body,
        .len = len,
        .content_type = ct_buf[0] ? ct_buf : NULL,
        .replaces = id,
        .ntargets = ntargets,
        .outputs = pl ? pl->ingest_names : NULL,
        .now = pb_now_ms(),
        .delivery_ids = ids,
    };
    int rc = pb_engine_inject(e, &op);
    if (rc) {
        free(ids);
        if (rc == PB_ENOTFOUND)
            return pb_admin_error(r, 404, "no such dead letter (replayed or purged meanwhile)");
        return pb_admin_error(r, rc == PB_EINVAL ? 400 : 503, pb_strerror(rc));
    }
    json_t *dids = json_array();
    for (size_t i = 0; dids && i < (ntargets ? ntargets : 1); i++)
        json_array_append_new(dids, json_integer(ids[i]));
    free(ids);
    PB_INFO("dead letter replayed with a corrected body delivery_id=%lld msg_id=%s", (long long)id,
            new_id);
    return pb_admin_reply(r, 200,
                          json_pack("{s:s, s:I, s:o*}", "message_id", new_id, "replay_of",
                                    (json_int_t)id, "delivery_ids", dids));
}
