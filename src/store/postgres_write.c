/* postgres_write.c - the PostgreSQL backend's writer ops: each pb_op is one
 * statement (data-modifying CTEs) sent in the writer's pipeline inside the
 * transaction store.c's writer opened; its result is read, and the op's
 * outputs filled, when the batch commits (postgres.c). An outcome the op
 * expects (a duplicate, a lease no longer held, a delivery no longer
 * pending) is decided inside the statement and read from its result, never
 * an error: an error would abort the whole batch. The statements are in
 * postgres_sql.c. Writer thread only. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "patchbay/pb_log.h"
#include "store/postgres_int.h"

/* ---- parameters ------------------------------------------------------------------------- */

#define P_MAX 20
#define P_TMP 8

struct params {
    int n;
    const char *v[P_MAX];
    int len[P_MAX];
    int fmt[P_MAX];
    char num[P_MAX][24];
    char *tmp[P_TMP];
    int ntmp;
    bool oom;
};

static void p_null(struct params *p)
{
    p->v[p->n] = NULL;
    p->len[p->n] = 0;
    p->fmt[p->n++] = 0;
}

/* The first n bytes of s as text PostgreSQL takes (valid UTF-8, no NUL),
 * NUL-terminated, malloc'd. */
static char *text_dup(const char *s, size_t n)
{
    char *tmp = NULL;
    size_t outlen = n;
    const char *t = pb__pg_text(s, n, &outlen, &tmp);
    if (!t)
        return NULL;
    return tmp ? tmp : strndup(s, n);
}

/* Text (NULL stays NULL). */
static void p_textn(struct params *p, const char *s, size_t n)
{
    if (!s) {
        p_null(p);
        return;
    }
    char *tmp = NULL;
    const char *t = pb__pg_text(s, n, NULL, &tmp);
    if (t && !tmp && strnlen(s, n + 1) != n)
        t = tmp = strndup(s, n); /* length-delimited: terminate a copy */
    if (!t || (tmp && p->ntmp >= P_TMP)) {
        free(tmp);
        p->oom = true;
        t = "";
    } else if (tmp) {
        p->tmp[p->ntmp++] = tmp;
    }
    p->v[p->n] = t;
    p->len[p->n] = 0;
    p->fmt[p->n++] = 0;
}

static void p_text(struct params *p, const char *s)
{
    p_textn(p, s, s ? strlen(s) : 0);
}

static void p_i64(struct params *p, int64_t x)
{
    snprintf(p->num[p->n], sizeof(p->num[0]), "%" PRId64, x);
    p->v[p->n] = p->num[p->n];
    p->len[p->n] = 0;
    p->fmt[p->n++] = 0;
}

static void p_bool(struct params *p, bool b)
{
    p->v[p->n] = b ? "t" : "f";
    p->len[p->n] = 0;
    p->fmt[p->n++] = 0;
}

/* bytea, in binary: no escaping of the body. */
static void p_bin(struct params *p, const void *d, size_t len)
{
    p->v[p->n] = len ? d : "";
    p->len[p->n] = (int)len;
    p->fmt[p->n++] = 1;
}

/* A lease value: the epoch, or NULL for none (unleased). */
static void p_lease(struct params *p, int64_t lease)
{
    if (lease)
        p_i64(p, lease);
    else
        p_null(p);
}

static void p_free(struct params *p)
{
    for (int i = 0; i < p->ntmp; i++)
        free(p->tmp[i]);
    p->ntmp = 0;
}

int pb__pg_send(struct pgq *q, int stmt, int n, const char *const *vals, const int *lens,
                const int *fmts, bool binary, pg_result_fn fn, struct pb_op *op, int idx)
{
    if (q->npend == q->pendcap) {
        size_t cap = q->pendcap ? q->pendcap * 2 : 64;
        struct pg_pend *np = realloc(q->pend, cap * sizeof(*np));
        if (!np)
            return PB_ENOMEM;
        q->pend = np;
        q->pendcap = cap;
    }
    char name[16];
    snprintf(name, sizeof(name), "w%d", stmt);
    if (!q->w.conn || !PQsendQueryPrepared(q->w.conn, name, n, vals, lens, fmts, binary ? 1 : 0)) {
        PB_WARN("state store write failed step=send store=%s error=\"%s\"", q->display,
                q->w.conn ? PQerrorMessage(q->w.conn) : "no connection");
        return PB_ESTORE;
    }
    q->pend[q->npend++] = (struct pg_pend){.fn = fn, .op = op, .idx = idx};
    return 0;
}

static int send_p(struct pgq *q, int stmt, struct params *p, bool binary, pg_result_fn fn,
                  struct pb_op *op, int idx)
{
    int rc =
        p->oom ? PB_ENOMEM : pb__pg_send(q, stmt, p->n, p->v, p->len, p->fmt, binary, fn, op, idx);
    p_free(p);
    return rc;
}

void pb__pg_note(struct pgq *q, char kind, const char *a, const char *b)
{
    size_t la = strlen(a), lb = b ? strlen(b) : 0;
    for (struct pg_note *n = q->tx_notes; n; n = n->next)
        if (n->kind == kind && strncmp(n->text, a, la) == 0 && n->text[la] == '\t' &&
            strcmp(n->text + la + 1, b ? b : "") == 0)
            return;
    struct pg_note *n = malloc(sizeof(*n) + la + lb + 2);
    if (!n)
        return; /* the others' claim poll finds it */
    n->kind = kind;
    memcpy(n->text, a, la);
    n->text[la] = '\t';
    memcpy(n->text + la + 1, b ? b : "", lb);
    n->text[la + 1 + lb] = 0;
    n->next = q->tx_notes;
    q->tx_notes = n;
}

/* Notes from "pipeline\toutput\n..." (a statement's aggregate). */
static void note_list(struct pgq *q, const char *text)
{
    if (!text)
        return;
    while (*text) {
        const char *nl = strchr(text, '\n');
        size_t len = nl ? (size_t)(nl - text) : strlen(text);
        char line[2 * PB_NAME_MAX_STORE + 8];
        snprintf(line, sizeof(line), "%.*s", (int)len, text);
        char *tab = strchr(line, '\t');
        if (tab) {
            *tab = 0;
            pb__pg_note(q, 'w', line, tab + 1);
        }
        text += len + (nl ? 1 : 0);
    }
}

static const char *val(PGresult *res, int col)
{
    return PQntuples(res) > 0 && !PQgetisnull(res, 0, col) ? PQgetvalue(res, 0, col) : NULL;
}

static int64_t ival(PGresult *res, int col)
{
    const char *v = val(res, col);
    return v ? strtoll(v, NULL, 10) : 0;
}

/* "{1,2,3}" or "1,2,3" into ids (at most n); how many. */
static size_t parse_ids(const char *s, int64_t *ids, size_t n)
{
    size_t k = 0;
    if (!s)
        return 0;
    while (*s) {
        while (*s && (*s < '0' || *s > '9'))
            s++;
        if (!*s)
            break;
        char *end;
        int64_t v = strtoll(s, &end, 10);
        if (k < n && ids)
            ids[k] = v;
        k++;
        s = end;
    }
    return k;
}

/* ---- ingest and submit ---------------------------------------------------------------------- */

static bool ingest_ok(const struct pb_op_ingest *in)
{
    return in->pipeline && in->msg_id && !(in->noutputs && !in->outputs) && !(!in->body && in->len);
}

/* The ingest's deliveries land in the submit's item (or the ingest op). */
static struct pb_op_ingest *ingest_of(struct pb_op *op, int idx)
{
    return op->kind == PB_OP_SUBMIT ? &op->u.submit.items[idx] : &op->u.ingest;
}

static int ingest_res(struct pgq *q, struct pb_op *op, int idx, PGresult *res)
{
    struct pb_op_ingest *in = ingest_of(op, idx);
    bool submit = op->kind == PB_OP_SUBMIT;
    if (PQntuples(res) != 1)
        return PB_ESTORE;
    if (!ival(res, 0)) {
        /* The input's hold is another node's: nothing of the op was written. */
        op->status = PB_EDENIED;
        return 0;
    }
    if (!ival(res, 1)) {
        const char *orig = val(res, 4);
        in->duplicate = true;
        snprintf(in->dup_msg_id, sizeof(in->dup_msg_id), "%s", orig ? orig : "");
        return 0;
    }
    if (!val(res, 2)) {
        /* A message of this id exists: a caller's bug. Within a submit the
         * whole batch fails, as an invalid item would. */
        if (submit)
            return pb__pg_fail(q, NULL, NULL, "insert message of a batch");
        op->status = PB_EEXISTS;
        return 0;
    }
    in->msg_seq = ival(res, 2);
    if (in->dead_reason)
        return 0;
    size_t got = parse_ids(val(res, 3), in->delivery_ids, in->noutputs);
    if (got != in->noutputs)
        return pb__pg_fail(q, NULL, NULL, "insert deliveries");
    for (size_t i = 0; i < in->noutputs; i++)
        if (!in->lease || (i < 64 && (in->unleased >> i & 1)))
            pb__pg_note(q, 'w', in->pipeline, in->outputs[i]);
    return 0;
}

static int send_ingest(struct pgq *q, struct pb_op *op, int idx, const char *hold,
                       int64_t hold_epoch)
{
    struct pb_op_ingest *in = ingest_of(op, idx);
    struct params p = {0};
    struct pg_buf outs = {0}, leases = {0};
    in->duplicate = false;
    in->dup_msg_id[0] = 0;
    in->msg_seq = 0;
    pb__pg_buf_addc(&outs, '{');
    pb__pg_buf_addc(&leases, '{');
    for (size_t i = 0; i < in->noutputs; i++) {
        if (i) {
            pb__pg_buf_addc(&outs, ',');
            pb__pg_buf_addc(&leases, ',');
        }
        pb__pg_buf_elem(&outs, in->outputs[i]);
        if (in->lease && !(i < 64 && (in->unleased >> i & 1)))
            pb__pg_buf_addf(&leases, "%" PRId64, in->lease);
        else
            pb__pg_buf_add(&leases, "NULL", 4);
    }
    pb__pg_buf_addc(&outs, '}');
    pb__pg_buf_addc(&leases, '}');
    p_text(&p, in->pipeline);
    p_text(&p, in->msg_id);
    p_i64(&p, in->received_at);
    p_text(&p, in->content_type);
    p_bin(&p, in->body, in->len);
    p_i64(&p, pb__store_body_crc(in->body, in->len));
    if (in->meta)
        p_textn(&p, in->meta, in->meta_len);
    else
        p_null(&p);
    if (in->idem_key)
        p_bin(&p, in->idem_key, strlen(in->idem_key));
    else
        p_null(&p);
    p_i64(&p, in->idem_expires_at);
    p_text(&p, outs.p);
    p_text(&p, leases.p);
    p_i64(&p, in->first_due_at);
    if (in->dead_reason)
        p_textn(&p, in->dead_reason, pb__store_utf8_cut(in->dead_reason, PB_ERROR_EXCERPT_MAX));
    else
        p_null(&p);
    p_text(&p, hold);
    p_i64(&p, hold_epoch);
    p_text(&p, in->idem_key); /* kept with the message, for the search */
    if (outs.oom || leases.oom)
        p.oom = true;
    int rc = send_p(q, WS_INGEST, &p, false, ingest_res, op, idx);
    pb__pg_buf_free(&outs);
    pb__pg_buf_free(&leases);
    return rc;
}

static int apply_ingest(struct pgq *q, struct pb_op *op)
{
    if (!ingest_ok(&op->u.ingest)) {
        op->status = PB_EINVAL;
        return 0;
    }
    return send_ingest(q, op, 0, NULL, 0);
}

static bool kv_ok(const struct pb_kv_put *kv, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!kv[i].scope || !kv[i].key || (kv[i].len && !kv[i].value))
            return false;
    return true;
}

static int kv_write(struct pgq *q, const struct pb_kv_put *kv, size_t n, int64_t now,
                    const char *hold, int64_t hold_epoch)
{
    for (size_t i = 0; i < n; i++) {
        struct params p = {0};
        p_text(&p, kv[i].scope);
        p_text(&p, kv[i].key);
        if (kv[i].value) {
            p_bin(&p, kv[i].value, kv[i].len);
            p_i64(&p, now);
        }
        p_text(&p, hold);
        p_i64(&p, hold_epoch);
        int rc = send_p(q, kv[i].value ? WS_KV_PUT : WS_KV_DEL, &p, false, NULL, NULL, 0);
        if (rc)
            return rc;
        /* Inputs' checkpoints are their own; the rest is shared state. */
        if (strncmp(kv[i].scope, "input/", 6) != 0)
            pb__pg_note(q, 'k', kv[i].scope, kv[i].key);
    }
    return 0;
}

static int hold_res(struct pgq *q, struct pb_op *op, int idx, PGresult *res)
{
    (void)q;
    (void)idx;
    if (PQntuples(res) == 0)
        op->status = PB_EDENIED;
    return 0;
}

/* Every item is checked before anything is sent, so an invalid one leaves
 * nothing of the op behind. */
static int apply_submit(struct pgq *q, struct pb_op *op)
{
    struct pb_op_submit *sb = &op->u.submit;
    if ((sb->n && !sb->items) || (sb->nkv && !kv_ok(sb->kv, sb->nkv))) {
        op->status = PB_EINVAL;
        return 0;
    }
    for (size_t i = 0; i < sb->n; i++)
        if (!ingest_ok(&sb->items[i])) {
            op->status = PB_EINVAL;
            return 0;
        }
    int rc;
    if (sb->hold) {
        struct params p = {0};
        p_text(&p, sb->hold);
        p_i64(&p, sb->hold_epoch);
        if ((rc = send_p(q, WS_HOLD_LOCK, &p, false, hold_res, op, 0)) != 0)
            return rc;
    }
    for (size_t i = 0; i < sb->n; i++)
        if ((rc = send_ingest(q, op, (int)i, sb->hold, sb->hold_epoch)) != 0)
            return rc;
    return kv_write(q, sb->kv, sb->nkv, sb->now, sb->hold, sb->hold_epoch);
}

static int apply_kv(struct pgq *q, struct pb_op *op)
{
    if (!kv_ok(op->u.kv.kv, op->u.kv.n)) {
        op->status = PB_EINVAL;
        return 0;
    }
    return kv_write(q, op->u.kv.kv, op->u.kv.n, op->u.kv.now, NULL, 0);
}

/* ---- results, replays, purge, expiry ----------------------------------------------------------
 */

/* An attempt that ends its delivery at the first try is kept in the
 * delivery's own row, as on SQLite. */
static bool final_at_first(int attempt, enum pb_dstate state)
{
    return attempt == 1 && state != PB_DSTATE_PENDING;
}

static int count_res(struct pgq *q, struct pb_op *op, int idx, PGresult *res)
{
    (void)q;
    (void)idx;
    if (ival(res, 0) == 0)
        op->status = PB_ENOTFOUND;
    else if (op->kind == PB_OP_PURGE)
        op->u.purge.count = ival(res, 0);
    return 0;
}

static int apply_result(struct pgq *q, struct pb_op *op)
{
    struct pb_op_result *r = &op->u.result;
    if (r->attempt < 1 || (r->state != PB_DSTATE_PENDING && r->state != PB_DSTATE_DELIVERED &&
                           r->state != PB_DSTATE_DEAD && r->state != PB_DSTATE_FILTERED)) {
        op->status = PB_EINVAL;
        return 0;
    }
    struct params p = {0};
    p_i64(&p, r->delivery_id);
    p_i64(&p, (int)r->state);
    p_i64(&p, r->attempt);
    p_i64(&p, r->next_at);
    p_i64(&p, r->started_at + r->latency_ms);
    p_i64(&p, r->status);
    if (r->error)
        p_textn(&p, r->error, pb__store_utf8_cut(r->error, PB_ERROR_EXCERPT_MAX));
    else
        p_null(&p);
    p_lease(&p, r->lease);
    p_i64(&p, r->latency_ms);
    p_i64(&p, r->started_at);
    p_bool(&p, !final_at_first(r->attempt, r->state));
    /* The answer is kept once: in the attempt's row, or the delivery's
     * when no attempt row is written. */
    size_t alen = r->answer ? pb__store_utf8_cut(r->answer, PB_STORE_ANSWER_MAX) : 0;
    if (alen)
        p_textn(&p, r->answer, alen);
    else
        p_null(&p);
    return send_p(q, WS_RESULT, &p, false, count_res, op, 0);
}

static int replay_res(struct pgq *q, struct pb_op *op, int idx, PGresult *res)
{
    (void)idx;
    struct pb_op_replay *r = &op->u.replay;
    if (PQntuples(res) == 0) {
        op->status = PB_ENOTFOUND;
        return 0;
    }
    r->new_delivery_id = ival(res, 0);
    snprintf(r->pipeline, sizeof(r->pipeline), "%s", val(res, 1));
    const char *sub = val(res, 3);
    /* The caller sees the sub-output it goes to, as the admin API names it. */
    if (sub)
        snprintf(r->output, sizeof(r->output), "%.*s/%s", PB_NAME_MAX_STORE - 1, val(res, 2), sub);
    else
        snprintf(r->output, sizeof(r->output), "%s", val(res, 2));
    pb__pg_note(q, 'w', val(res, 1), val(res, 2));
    return 0;
}

static int apply_replay(struct pgq *q, struct pb_op *op)
{
    struct params p = {0};
    op->u.replay.new_delivery_id = 0;
    p_i64(&p, op->u.replay.delivery_id);
    p_i64(&p, op->u.replay.now);
    return send_p(q, WS_REPLAY, &p, false, replay_res, op, 0);
}

static int replay_all_res(struct pgq *q, struct pb_op *op, int idx, PGresult *res)
{
    (void)idx;
    struct pb_op_replay_all *r = &op->u.replay_all;
    size_t limit = r->limit ? r->limit : PB_REPLAY_ALL_BATCH;
    r->count = ival(res, 1);
    r->more = (size_t)ival(res, 0) == limit;
    note_list(q, val(res, 2));
    return 0;
}

static int apply_replay_all(struct pgq *q, struct pb_op *op)
{
    struct pb_op_replay_all *r = &op->u.replay_all;
    struct params p = {0};
    r->count = 0;
    r->more = false;
    if (r->ids)
        return pb__pg_apply_replay_ids(q, op);
    p_text(&p, r->pipeline);
    p_text(&p, r->output);
    p_i64(&p, r->now);
    p_i64(&p, r->since);
    p_text(&p, r->output ? r->sub : NULL);
    p_i64(&p, (int64_t)(r->limit ? r->limit : PB_REPLAY_ALL_BATCH));
    return send_p(q, WS_REPLAY_ALL, &p, false, replay_all_res, op, 0);
}

static int apply_purge(struct pgq *q, struct pb_op *op)
{
    struct params p = {0};
    op->u.purge.count = 0;
    if (op->u.purge.ids)
        return pb__pg_apply_purge_ids(q, op);
    p_i64(&p, op->u.purge.delivery_id);
    return send_p(q, WS_PURGE, &p, false, count_res, op, 0);
}

static int expire_res(struct pgq *q, struct pb_op *op, int idx, PGresult *res)
{
    (void)q;
    (void)idx;
    op->u.expire.deleted = ival(res, 0);
    return 0;
}

static int apply_expire(struct pgq *q, struct pb_op *op)
{
    struct pb_op_expire *e = &op->u.expire;
    struct params p = {0};
    e->deleted = 0;
    p_i64(&p, e->now);
    p_i64(&p, PB_STORE_EXPIRE_BATCH);
    p_i64(&p, e->now - (e->retention_ms < 0 ? 0 : e->retention_ms));
    p_bool(&p, e->retention_ms >= 0);
    return send_p(q, WS_EXPIRE, &p, false, expire_res, op, 0);
}

/* ---- fan-out and route -------------------------------------------------------------------- */

static int fanout_res(struct pgq *q, struct pb_op *op, int idx, PGresult *res)
{
    (void)idx;
    struct pb_op_fanout *f = &op->u.fanout;
    if (ival(res, 0) == 0) {
        op->status = PB_ENOTFOUND;
        return 0;
    }
    if (parse_ids(val(res, 1), f->child_ids, f->n) != f->n)
        return pb__pg_fail(q, NULL, NULL, "insert fan-out deliveries");
    for (size_t i = 0; i < f->n; i++)
        if (!f->lease || (f->unleased && f->unleased[i])) {
            pb__pg_note(q, 'w', val(res, 2), val(res, 3));
            break;
        }
    return 0;
}

static int apply_fanout(struct pgq *q, struct pb_op *op)
{
    struct pb_op_fanout *f = &op->u.fanout;
    if (f->attempt < 1 || (f->n && !f->subs)) {
        op->status = PB_EINVAL;
        return 0;
    }
    for (size_t i = 0; i < f->n; i++)
        if (!f->subs[i]) {
            op->status = PB_EINVAL;
            return 0;
        }
    struct pg_buf subs = {0}, leases = {0};
    struct params p = {0};
    pb__pg_buf_addc(&subs, '{');
    pb__pg_buf_addc(&leases, '{');
    for (size_t i = 0; i < f->n; i++) {
        if (i) {
            pb__pg_buf_addc(&subs, ',');
            pb__pg_buf_addc(&leases, ',');
        }
        pb__pg_buf_elem(&subs, f->subs[i]);
        if (f->lease && !(f->unleased && f->unleased[i])) {
            pb__pg_buf_addf(&leases, "%" PRId64, f->lease);
        } else {
            pb__pg_buf_add(&leases, "NULL", 4);
        }
    }
    pb__pg_buf_addc(&subs, '}');
    pb__pg_buf_addc(&leases, '}');
    p_i64(&p, f->delivery_id);
    p_i64(&p, f->attempt);
    p_i64(&p, f->now);
    p_lease(&p, f->lease);
    if (f->note)
        p_textn(&p, f->note, pb__store_utf8_cut(f->note, PB_ERROR_EXCERPT_MAX));
    else
        p_null(&p);
    p_bool(&p, !final_at_first(f->attempt, PB_DSTATE_DELIVERED));
    p_text(&p, subs.p);
    p_text(&p, leases.p);
    if (subs.oom || leases.oom)
        p.oom = true;
    int rc = send_p(q, WS_FANOUT, &p, false, fanout_res, op, 0);
    pb__pg_buf_free(&subs);
    pb__pg_buf_free(&leases);
    return rc;
}

static int route_res(struct pgq *q, struct pb_op *op, int idx, PGresult *res)
{
    (void)idx;
    struct pb_op_route *r = &op->u.route;
    if (ival(res, 0) == 0) {
        op->status = PB_ENOTFOUND;
        return 0;
    }
    /* "ord:seq,..." */
    const char *s = val(res, 1);
    while (s && *s) {
        char *end;
        long ord = strtol(s, &end, 10);
        if (*end != ':')
            break;
        int64_t seq = strtoll(end + 1, &end, 10);
        if (ord >= 0 && (size_t)ord < r->nmsgs)
            r->msgs[ord].msg_seq = seq;
        s = *end == ',' ? end + 1 : end;
    }
    size_t total = 0;
    for (size_t i = 0; i < r->nmsgs; i++)
        total += r->msgs[i].noutputs;
    int64_t *ids = total ? calloc(total, sizeof(*ids)) : NULL;
    if (total && !ids)
        return PB_ENOMEM;
    if (parse_ids(val(res, 2), ids, total) != total) {
        free(ids);
        return pb__pg_fail(q, NULL, NULL, "insert routed deliveries");
    }
    size_t k = 0;
    for (size_t i = 0; i < r->nmsgs; i++) {
        struct pb_route_msg *m = &r->msgs[i];
        for (size_t j = 0; j < m->noutputs; j++, k++) {
            if (m->delivery_ids)
                m->delivery_ids[j] = ids[k];
            if (!r->lease || (j < 64 && (m->unleased >> j & 1)))
                pb__pg_note(q, 'w', r->pipeline, m->outputs[j]);
        }
    }
    free(ids);
    return 0;
}

static int apply_route(struct pgq *q, struct pb_op *op)
{
    struct pb_op_route *r = &op->u.route;
    if (r->attempt < 1 || !r->pipeline || (r->nmsgs && !r->msgs) ||
        (r->state != PB_DSTATE_DELIVERED && r->state != PB_DSTATE_FILTERED)) {
        op->status = PB_EINVAL;
        return 0;
    }
    for (size_t i = 0; i < r->nmsgs; i++) {
        const struct pb_route_msg *m = &r->msgs[i];
        if ((m->noutputs && !m->outputs) || (m->nfinal && !m->final_outputs) ||
            (m->msg_id && !m->body)) {
            op->status = PB_EINVAL;
            return 0;
        }
    }
    struct pg_buf a[10] = {{0}};
    for (int i = 0; i < 10; i++)
        pb__pg_buf_addc(&a[i], '{');
    size_t nd = 0;
    for (size_t i = 0; i < r->nmsgs; i++) {
        struct pb_route_msg *m = &r->msgs[i];
        m->msg_seq = r->msg_seq;
        if (i)
            for (int k = 0; k < 5; k++)
                pb__pg_buf_addc(&a[k], ',');
        pb__pg_buf_addf(&a[0], "%zu", i);
        pb__pg_buf_elem(&a[1], m->msg_id);
        if (m->body)
            pb__pg_buf_bytea_elem(&a[2], m->body, m->len);
        else
            pb__pg_buf_add(&a[2], "NULL", 4);
        if (m->body)
            pb__pg_buf_addf(&a[3], "%" PRId64, pb__store_body_crc(m->body, m->len));
        else
            pb__pg_buf_add(&a[3], "NULL", 4);
        char *key = m->key ? text_dup(m->key, strlen(m->key)) : NULL;
        if (m->key && !key)
            a[4].oom = true;
        pb__pg_buf_elem(&a[4], key);
        free(key);
        /* Deliveries: pending ones in output order first, then final ones. */
        for (size_t j = 0; j < m->noutputs + m->nfinal; j++, nd++) {
            bool pending = j < m->noutputs;
            if (nd)
                for (int k = 5; k < 10; k++)
                    pb__pg_buf_addc(&a[k], ',');
            pb__pg_buf_addf(&a[5], "%zu", i);
            pb__pg_buf_elem(&a[6], pending ? m->outputs[j] : m->final_outputs[j - m->noutputs]);
            pb__pg_buf_addf(&a[7], "%d", pending ? 0 : (int)m->final_state);
            if (pending && r->lease && !(j < 64 && (m->unleased >> j & 1)))
                pb__pg_buf_addf(&a[8], "%" PRId64, r->lease);
            else
                pb__pg_buf_add(&a[8], "NULL", 4);
            const char *fn = pending ? NULL : m->final_note;
            char *note = fn ? text_dup(fn, pb__store_utf8_cut(fn, PB_ERROR_EXCERPT_MAX)) : NULL;
            if (fn && !note)
                a[9].oom = true;
            pb__pg_buf_elem(&a[9], note);
            free(note);
        }
    }
    struct params p = {0};
    for (int i = 0; i < 10; i++) {
        pb__pg_buf_addc(&a[i], '}');
        if (a[i].oom)
            p.oom = true;
    }
    p_i64(&p, r->delivery_id);
    p_i64(&p, (int)r->state);
    p_i64(&p, r->attempt);
    p_i64(&p, r->now);
    if (r->note)
        p_textn(&p, r->note, pb__store_utf8_cut(r->note, PB_ERROR_EXCERPT_MAX));
    else
        p_null(&p);
    p_lease(&p, r->lease);
    p_i64(&p, r->msg_seq);
    p_text(&p, r->pipeline);
    p_bool(&p, !final_at_first(r->attempt, r->state));
    for (int i = 0; i < 10; i++)
        p_text(&p, a[i].p);
    int rc = send_p(q, WS_ROUTE, &p, false, route_res, op, 0);
    for (int i = 0; i < 10; i++)
        pb__pg_buf_free(&a[i]);
    return rc;
}

/* ---- removed outputs ---------------------------------------------------------------------- */

static int orphans_res(struct pgq *q, struct pb_op *op, int idx, PGresult *res)
{
    (void)q;
    (void)idx;
    if (op->kind == PB_OP_ORPHANS)
        op->u.orphans.dead = ival(res, 0);
    else
        op->u.sub_kill.dead = ival(res, 0);
    return 0;
}

static int apply_orphans(struct pgq *q, struct pb_op *op)
{
    struct pb_op_orphans *o = &op->u.orphans;
    o->dead = 0;
    if (!o->pipeline || !o->output) {
        op->status = PB_EINVAL;
        return 0;
    }
    struct params p = {0};
    p_text(&p, o->pipeline);
    p_text(&p, o->output);
    p_i64(&p, o->now);
    return send_p(q, WS_ORPHANS, &p, false, orphans_res, op, 0);
}

static int apply_sub_kill(struct pgq *q, struct pb_op *op)
{
    struct pb_op_sub_kill *k = &op->u.sub_kill;
    k->dead = 0;
    if (!k->pipeline || !k->output || !k->sub || !k->reason) {
        op->status = PB_EINVAL;
        return 0;
    }
    struct params p = {0};
    p_text(&p, k->pipeline);
    p_text(&p, k->output);
    p_text(&p, k->sub);
    p_i64(&p, k->now);
    p_textn(&p, k->reason, pb__store_utf8_cut(k->reason, PB_ERROR_EXCERPT_MAX));
    return send_p(q, WS_SUB_KILL, &p, false, orphans_res, op, 0);
}

/* ---- claims and releases ----------------------------------------------------------------- */

static void leftover(struct pgq *q, int64_t id, int64_t lease)
{
    if (q->nleftover == q->leftovercap) {
        size_t cap = q->leftovercap ? q->leftovercap * 2 : 64;
        struct pg_leftover *l = realloc(q->leftover, cap * sizeof(*l));
        if (!l) {
            PB_ERROR("out of memory: delivery_id=%" PRId64 " stays held until this node leaves",
                     id);
            return;
        }
        q->leftover = l;
        q->leftovercap = cap;
    }
    q->leftover[q->nleftover++] = (struct pg_leftover){id, lease};
}

static int claim_res(struct pgq *q, struct pb_op *op, int idx, PGresult *res)
{
    (void)idx;
    struct pb_op_claim *c = &op->u.claim;
    int rows = PQntuples(res);
    bool stopped = false;
    for (int i = 0; i < rows; i++) {
        int64_t id = pb__pg_i64(res, i, 0);
        if (stopped || c->n >= c->limit || PQgetisnull(res, i, 2)) {
            leftover(q, id, c->lease);
            continue;
        }
        const void *body = PQgetvalue(res, i, 7);
        size_t len = (size_t)PQgetlength(res, i, 7);
        int64_t crc = pb__pg_i64(res, i, 8);
        struct pb_pending row = {
            .delivery_id = id,
            .msg_seq = pb__pg_i64(res, i, 1),
            .msg_id = PQgetvalue(res, i, 2),
            .attempts = (int)pb__pg_i64(res, i, 3),
            .next_at = pb__pg_i64(res, i, 4),
            .received_at = pb__pg_i64(res, i, 5),
            .content_type = PQgetisnull(res, i, 6) ? NULL : PQgetvalue(res, i, 6),
            .body = body,
            .len = len,
            .meta = PQgetisnull(res, i, 9) ? NULL : PQgetvalue(res, i, 9),
            .meta_len = PQgetisnull(res, i, 9) ? 0 : (size_t)PQgetlength(res, i, 9),
            .key = PQgetisnull(res, i, 10) ? NULL : PQgetvalue(res, i, 10),
            .key_known = pb__pg_i64(res, i, 11) != 0,
            .body_damaged = crc >= 0 && crc != pb__store_body_crc(body, len),
        };
        if (c->cb(c->arg, &row) != 0) {
            stopped = true;
            leftover(q, id, c->lease);
            continue;
        }
        c->n++;
    }
    return 0;
}

static int apply_claim(struct pgq *q, struct pb_op *op)
{
    struct pb_op_claim *c = &op->u.claim;
    c->n = 0;
    if (!c->pipeline || !c->output || !c->cb || !c->lease) {
        op->status = PB_EINVAL;
        return 0;
    }
    struct params p = {0};
    p_text(&p, c->pipeline);
    p_text(&p, c->output);
    p_text(&p, c->sub);
    p_i64(&p, c->lease);
    p_i64(&p, c->limit > INT64_MAX ? INT64_MAX : (int64_t)c->limit);
    return send_p(q, c->sub ? WS_CLAIM_SUB : WS_CLAIM, &p, true, claim_res, op, 0);
}

static int release_res(struct pgq *q, struct pb_op *op, int idx, PGresult *res)
{
    (void)op;
    (void)idx;
    note_list(q, val(res, 0));
    return 0;
}

static int send_release(struct pgq *q, const int64_t *ids, size_t n, int64_t lease,
                        struct pb_op *op)
{
    struct pg_buf a = {0};
    struct params p = {0};
    pb__pg_buf_addc(&a, '{');
    for (size_t i = 0; i < n; i++)
        pb__pg_buf_addf(&a, "%s%" PRId64, i ? "," : "", ids[i]);
    pb__pg_buf_addc(&a, '}');
    p_text(&p, a.p);
    p_i64(&p, lease);
    if (a.oom)
        p.oom = true;
    int rc = send_p(q, WS_RELEASE, &p, false, release_res, op, 0);
    pb__pg_buf_free(&a);
    return rc;
}

static int apply_release(struct pgq *q, struct pb_op *op)
{
    struct pb_op_release *r = &op->u.release;
    if (r->n && !r->ids) {
        op->status = PB_EINVAL;
        return 0;
    }
    if (r->n == 0)
        return 0;
    return send_release(q, r->ids, r->n, r->lease, op);
}

int pb__pg_release_leftovers(struct pgq *q)
{
    size_t n = q->nleftover;
    if (n == 0)
        return 0;
    int64_t *ids = malloc(n * sizeof(*ids));
    if (!ids)
        return 0; /* tried again at the next transaction */
    /* One statement per lease (tests claim with several). */
    size_t done = 0;
    int rc = 0;
    while (done < n && rc == 0) {
        int64_t lease = q->leftover[done].lease;
        size_t k = 0;
        for (size_t i = done; i < n && q->leftover[i].lease == lease; i++)
            ids[k++] = q->leftover[i].id;
        rc = send_release(q, ids, k, lease, NULL);
        done += k;
    }
    free(ids);
    if (rc == 0)
        q->nleftover = 0;
    return rc;
}

int pb__pg_apply(void *ctx, struct pb_op *op)
{
    struct pgq *q = ctx;
    switch (op->kind) {
    case PB_OP_INGEST:
        return apply_ingest(q, op);
    case PB_OP_RESULT:
        return apply_result(q, op);
    case PB_OP_REPLAY:
        return apply_replay(q, op);
    case PB_OP_REPLAY_ALL:
        return apply_replay_all(q, op);
    case PB_OP_PURGE:
        return apply_purge(q, op);
    case PB_OP_EXPIRE:
        return apply_expire(q, op);
    case PB_OP_FANOUT:
        return apply_fanout(q, op);
    case PB_OP_ROUTE:
        return apply_route(q, op);
    case PB_OP_ORPHANS:
        return apply_orphans(q, op);
    case PB_OP_SUBMIT:
        return apply_submit(q, op);
    case PB_OP_KV:
        return apply_kv(q, op);
    case PB_OP_CLAIM:
        return apply_claim(q, op);
    case PB_OP_RELEASE:
        return apply_release(q, op);
    case PB_OP_SUB_KILL:
        return apply_sub_kill(q, op);
    case PB_OP_INJECT:
        return pb__pg_apply_inject(q, op);
    case PB_OP_KEY:
        return pb__pg_apply_key(q, op);
    }
    op->status = PB_EINVAL;
    return 0;
}
