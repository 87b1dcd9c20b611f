/* views.c - the admin API's JSON views of what the state store holds,
 * built from the rows the store reads (so every backend shows the same
 * JSON). A body that is UTF-8 JSON printing back unchanged is embedded as
 * "body"; anything else comes as "body_base64", so a view never shows a
 * body altered; partners' error texts are shown with invalid UTF-8 replaced. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin/views.h"

static json_t *base64_json(const void *data, size_t len)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = data;
    size_t outlen = (len + 2) / 3 * 4, o = 0, i = 0;
    json_t *j = NULL;
    char *buf = malloc(outlen + 1);

    if (!buf)
        return NULL;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        buf[o++] = tab[v >> 18 & 63];
        buf[o++] = tab[v >> 12 & 63];
        buf[o++] = tab[v >> 6 & 63];
        buf[o++] = tab[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)p[i + 1] << 8;
        buf[o++] = tab[v >> 18 & 63];
        buf[o++] = tab[v >> 12 & 63];
        buf[o++] = i + 1 < len ? tab[v >> 6 & 63] : '=';
        buf[o++] = '=';
    }
    buf[o] = '\0';
    j = json_stringn_nocheck(buf, o);
    free(buf);
    return j;
}

/* Does dump equal orig once whitespace outside strings is dropped? */
static bool same_json_text(const char *orig, size_t n, const char *dump)
{
    bool in_str = false, esc = false;
    size_t j = 0;

    for (size_t i = 0; i < n; i++) {
        char c = orig[i];
        if (!in_str && (c == ' ' || c == '\t' || c == '\n' || c == '\r'))
            continue;
        if (dump[j] != c)
            return false;
        j++;
        if (in_str) {
            if (esc)
                esc = false;
            else if (c == '\\')
                esc = true;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        }
    }
    return dump[j] == '\0';
}

json_t *pb_admin_body_json(const void *data, size_t len)
{
    json_t *j;
    char *dump;
    bool same;

    if (len == 0)
        return NULL;
    j = json_loadb(data, len, JSON_DECODE_ANY, NULL);
    if (!j)
        return NULL;
    dump = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    same = dump && same_json_text(data, len, dump);
    free(dump);
    if (!same) {
        json_decref(j);
        return NULL;
    }
    return j;
}

int pb_admin_set_body(json_t *obj, const void *data, size_t len)
{
    json_t *j = pb_admin_body_json(data, len);

    if (j)
        return json_object_set_new(obj, "body", j) == 0 ? 0 : PB_ENOMEM;
    j = base64_json(data, len);
    if (!j)
        return PB_ENOMEM;
    return json_object_set_new(obj, "body_base64", j) == 0 ? 0 : PB_ENOMEM;
}

/* Length of the valid UTF-8 sequence at p (n bytes left), 0 if invalid. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;

    if (p[0] < 0x80)
        return 1;
    if (p[0] >= 0xC2 && p[0] <= 0xDF)
        len = 2;
    else if (p[0] >= 0xE0 && p[0] <= 0xEF)
        len = 3;
    else if (p[0] >= 0xF0 && p[0] <= 0xF4)
        len = 4;
    else
        return 0;
    if (len > n)
        return 0;
    /* No overlong forms, no surrogates, nothing past U+10FFFF. */
    if (p[0] == 0xE0)
        lo = 0xA0;
    else if (p[0] == 0xED)
        hi = 0x9F;
    else if (p[0] == 0xF0)
        lo = 0x90;
    else if (p[0] == 0xF4)
        hi = 0x8F;
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((p[i] & 0xC0) != 0x80)
            return 0;
    return len;
}

json_t *pb_admin_text_json(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, o = 0, len;
    char *buf;
    json_t *j;

    while (i < n && (len = utf8_seq(p + i, n - i)) > 0)
        i += len;
    if (i == n)
        return json_stringn_nocheck(s, n);

    if (n > (SIZE_MAX - 1) / 3)
        return NULL;
    buf = malloc(3 * n + 1);
    if (!buf)
        return NULL;
    memcpy(buf, s, i);
    o = i;
    while (i < n) {
        len = utf8_seq(p + i, n - i);
        if (len == 0) {
            memcpy(buf + o, "\xEF\xBF\xBD", 3); /* U+FFFD */
            o += 3;
            i++;
        } else {
            memcpy(buf + o, s + i, len);
            o += len;
            i += len;
        }
    }
    j = json_stringn_nocheck(buf, o);
    free(buf);
    return j;
}

/* ---- views ---------------------------------------------------------------------------- */

static json_t *int_or_null(bool set, int64_t v)
{
    return set ? json_integer(v) : json_null();
}

static json_t *text_or_null(const char *s, size_t n)
{
    return s ? pb_admin_text_json(s, n) : json_null();
}

/* "output" or "output/sub", as the admin API names deliveries. */
static json_t *output_name(const struct pb_delivery_row *d)
{
    if (!d->sub)
        return json_string(d->output);
    char buf[512];
    snprintf(buf, sizeof(buf), "%s/%s", d->output, d->sub);
    return json_string(buf);
}

static int put(json_t *o, const char *key, json_t *v, bool *bad)
{
    if (!v || json_object_set_new(o, key, v) != 0)
        *bad = true;
    return 0;
}

static json_t *attempt_json(const struct pb_attempt_row *a)
{
    bool bad = false;
    json_t *j = json_object();
    if (!j)
        return NULL;
    put(j, "n", json_integer(a->n), &bad);
    put(j, "started_at", json_integer(a->started_at), &bad);
    put(j, "latency_ms", json_integer(a->latency_ms), &bad);
    put(j, "status", json_integer(a->status), &bad);
    put(j, "state", json_string(pb_dstate_name(a->state)), &bad);
    put(j, "error", text_or_null(a->error, a->error_len), &bad);
    put(j, "answer", text_or_null(a->answer, a->answer_len), &bad);
    if (bad) {
        json_decref(j);
        return NULL;
    }
    return j;
}

struct view {
    json_t *root;     /* the message, the list or the dead letter */
    json_t *items;    /* deliveries or dead letters */
    json_t *last;     /* the delivery attempts go to */
    json_t *children; /* split children */
    int64_t last_id;
    int n;
    bool bad;
};

static int v_message(void *arg, const struct pb_message_row *m)
{
    struct view *v = arg;
    json_t *o = json_object();
    if (!o) {
        v->bad = true;
        return 1;
    }
    v->root = o;
    put(o, "id", json_string(m->id), &v->bad);
    put(o, "pipeline", json_string(m->pipeline), &v->bad);
    put(o, "received_at", json_integer(m->received_at), &v->bad);
    put(o, "content_type",
        m->content_type ? pb_admin_text_json(m->content_type, strlen(m->content_type))
                        : json_null(),
        &v->bad);
    if (m->body_damaged)
        put(o, "body_damaged", json_true(), &v->bad);
    if (pb_admin_set_body(o, m->body, m->len) != 0)
        v->bad = true;
    if (m->meta) {
        json_t *meta = json_loadb(m->meta, m->meta_len, 0, NULL);
        if (meta)
            put(o, "meta", meta, &v->bad);
    }
    if (m->parent_id)
        put(o, "parent", json_string(m->parent_id), &v->bad);
    put(o, "idempotency_key", text_or_null(m->idem_key, m->idem_key ? strlen(m->idem_key) : 0),
        &v->bad);
    if (m->edit_of)
        put(o, "edit_of", json_string(m->edit_of), &v->bad);
    if (m->routed) {
        /* The body the route stage made; shown like the body as received. */
        json_t *routed = json_object();
        put(o, "routed", routed, &v->bad);
        if (routed && pb_admin_set_body(routed, m->routed_body, m->routed_len) != 0)
            v->bad = true;
        if (routed && m->routed_damaged)
            put(routed, "body_damaged", json_true(), &v->bad);
    }
    v->items = json_array();
    put(o, "deliveries", v->items, &v->bad);
    return v->bad;
}

static int v_edit(void *arg, const char *id)
{
    struct view *v = arg;
    json_t *edits = json_object_get(v->root, "edits");
    if (!edits) {
        edits = json_array();
        put(v->root, "edits", edits, &v->bad);
    }
    if (!edits || json_array_append_new(edits, json_string(id)) != 0)
        v->bad = true;
    return v->bad;
}

static int v_child(void *arg, const char *id)
{
    struct view *v = arg;
    if (!v->children) {
        v->children = json_array();
        put(v->root, "children", v->children, &v->bad);
    }
    if (!v->children || json_array_append_new(v->children, json_string(id)) != 0)
        v->bad = true;
    return v->bad;
}

/* A delivery of a message's view. */
static int v_delivery(void *arg, const struct pb_delivery_row *d)
{
    struct view *v = arg;
    json_t *o = json_object();
    if (!o || json_array_append_new(v->items, o) != 0) {
        v->bad = true;
        return 1;
    }
    put(o, "id", json_integer(d->id), &v->bad);
    put(o, "output", output_name(d), &v->bad);
    put(o, "state", json_string(pb_dstate_name(d->state)), &v->bad);
    put(o, "attempts", json_integer(d->attempts), &v->bad);
    put(o, "next_at", json_integer(d->next_at), &v->bad);
    put(o, "created_at", json_integer(d->created_at), &v->bad);
    put(o, "updated_at", json_integer(d->updated_at), &v->bad);
    put(o, "last_status", int_or_null(d->has_status, d->last_status), &v->bad);
    put(o, "last_error", text_or_null(d->last_error, d->last_error_len), &v->bad);
    put(o, "replay_of", int_or_null(d->replay_of != 0, d->replay_of), &v->bad);
    v->last = json_array();
    put(o, "attempt_log", v->last, &v->bad);
    return v->bad;
}

static int v_attempt(void *arg, const struct pb_attempt_row *a)
{
    struct view *v = arg;
    json_t *j = attempt_json(a);
    if (!j || !v->last || json_array_append_new(v->last, j) != 0)
        v->bad = true;
    return v->bad;
}

static json_t *finish(struct view *v, int rc, struct pb_err *err)
{
    if (rc == 0 && v->bad)
        rc = pb_err_set(err, PB_ENOMEM, "out of memory building a state store view");
    if (rc) {
        json_decref(v->root);
        return NULL;
    }
    return v->root;
}

json_t *pb_admin_message_json(struct pb_store *s, const char *msg_id, struct pb_err *err)
{
    struct view v = {0};
    struct pb_read_cbs cb = {.arg = &v,
                             .message = v_message,
                             .child = v_child,
                             .edit = v_edit,
                             .delivery = v_delivery,
                             .attempt = v_attempt};
    int rc = pb_store_read_message(s, msg_id, &cb, err);
    return finish(&v, rc, err);
}

/* The fields of a dead letter, in the list and alone. */
static json_t *dead_json(const struct pb_delivery_row *d, bool *bad)
{
    json_t *o = json_object();
    if (!o) {
        *bad = true;
        return NULL;
    }
    put(o, "id", json_integer(d->id), bad);
    put(o, "message_id", json_string(d->msg_id), bad);
    put(o, "pipeline", json_string(d->pipeline), bad);
    put(o, "output", output_name(d), bad);
    put(o, "attempts", json_integer(d->attempts), bad);
    put(o, "created_at", json_integer(d->created_at), bad);
    put(o, "dead_at", json_integer(d->updated_at), bad);
    put(o, "last_status", int_or_null(d->has_status, d->last_status), bad);
    put(o, "last_error", text_or_null(d->last_error, d->last_error_len), bad);
    return o;
}

static int v_dead(void *arg, const struct pb_delivery_row *d)
{
    struct view *v = arg;
    json_t *o = dead_json(d, &v->bad);
    if (!o || json_array_append_new(v->items, o) != 0)
        v->bad = true;
    v->last_id = d->id;
    v->n++;
    return v->bad;
}

json_t *pb_admin_dead_query_json(struct pb_store *s, const struct pb_dead_query *q,
                                 struct pb_err *err)
{
    struct view v = {0};
    v.root = json_object();
    v.items = json_array();
    if (!v.root || !v.items || json_object_set_new(v.root, "items", v.items) != 0) {
        json_decref(v.root);
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    struct pb_read_cbs cb = {.arg = &v, .delivery = v_dead};
    int rc = pb_store_read_dead_letters(s, q, &cb, err);
    if (rc == 0)
        put(v.root, q->newest_first ? "next_before" : "next_after",
            v.n == q->limit ? json_integer(v.last_id) : json_null(), &v.bad);
    return finish(&v, rc, err);
}

json_t *pb_admin_dead_letters_json(struct pb_store *s, const char *pipeline, const char *output,
                                   int64_t after_id, int limit, struct pb_err *err)
{
    struct pb_dead_query q = {
        .pipeline = pipeline, .output = output, .after_id = after_id, .limit = limit};
    if (q.limit <= 0)
        q.limit = 100;
    return pb_admin_dead_query_json(s, &q, err);
}

static int v_dead_one(void *arg, const struct pb_delivery_row *d)
{
    struct view *v = arg;
    v->root = dead_json(d, &v->bad);
    if (!v->root)
        return 1;
    put(v->root, "content_type",
        d->content_type ? pb_admin_text_json(d->content_type, strlen(d->content_type))
                        : json_null(),
        &v->bad);
    if (pb_admin_set_body(v->root, d->body, d->len) != 0)
        v->bad = true;
    v->last = json_array();
    put(v->root, "attempt_log", v->last, &v->bad);
    return v->bad;
}

json_t *pb_admin_dead_letter_json(struct pb_store *s, int64_t delivery_id, struct pb_err *err)
{
    struct view v = {0};
    struct pb_read_cbs cb = {.arg = &v, .delivery = v_dead_one, .attempt = v_attempt};
    int rc = pb_store_read_dead_letter(s, delivery_id, &cb, err);
    return finish(&v, rc, err);
}
