/* postgres_inject.c - the PostgreSQL backend's ops on what the admin side
 * selects or makes: a set of dead letters replayed or purged by id, and
 * PB_OP_INJECT (a dead letter's corrected body, a test event), and
 * PB_OP_KEY (a process step's key, claimed for a message), each one
 * statement in the writer's pipeline (postgres_sql.c), its result read when
 * the batch commits, as postgres_write.c does. The same outcomes as
 * sqlite_inject.c and sqlite_write.c. Writer thread only. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/postgres_int.h"

static const char *val(PGresult *res, int col)
{
    return PQntuples(res) > 0 && !PQgetisnull(res, 0, col) ? PQgetvalue(res, 0, col) : NULL;
}

static int64_t ival(PGresult *res, int col)
{
    const char *v = val(res, col);
    return v ? strtoll(v, NULL, 10) : 0;
}

/* Notes from "pipeline\toutput\n..." (a statement's aggregate). */
static void note_list(struct pgq *q, const char *text)
{
    while (text && *text) {
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

/* ids as an array literal "{1,2,3}". */
static void id_array(struct pg_buf *b, const int64_t *ids, size_t n)
{
    pb__pg_buf_addc(b, '{');
    for (size_t i = 0; i < n; i++)
        pb__pg_buf_addf(b, "%s%" PRId64, i ? "," : "", ids[i]);
    pb__pg_buf_addc(b, '}');
}

/* ---- sets by id ---------------------------------------------------------------------------- */

static int replay_ids_res(struct pgq *q, struct pb_op *op, int idx, PGresult *res)
{
    (void)idx;
    op->u.replay_all.count = ival(res, 0);
    op->u.replay_all.more = false;
    note_list(q, val(res, 1));
    return 0;
}

int pb__pg_apply_replay_ids(struct pgq *q, struct pb_op *op)
{
    struct pb_op_replay_all *r = &op->u.replay_all;
    struct pg_buf ids = {0};
    char now[24];
    r->count = 0;
    r->more = false;
    if (r->nids == 0)
        return 0;
    id_array(&ids, r->ids, r->nids);
    snprintf(now, sizeof(now), "%" PRId64, r->now);
    const char *vals[] = {ids.p, now};
    int rc = ids.oom
                 ? PB_ENOMEM
                 : pb__pg_send(q, WS_REPLAY_IDS, 2, vals, NULL, NULL, false, replay_ids_res, op, 0);
    pb__pg_buf_free(&ids);
    return rc;
}

static int purge_ids_res(struct pgq *q, struct pb_op *op, int idx, PGresult *res)
{
    (void)q;
    (void)idx;
    op->u.purge.count = ival(res, 0);
    return 0;
}

int pb__pg_apply_purge_ids(struct pgq *q, struct pb_op *op)
{
    struct pb_op_purge *p = &op->u.purge;
    struct pg_buf ids = {0};
    p->count = 0;
    if (p->nids == 0)
        return 0;
    id_array(&ids, p->ids, p->nids);
    const char *vals[] = {ids.p};
    int rc = ids.oom
                 ? PB_ENOMEM
                 : pb__pg_send(q, WS_PURGE_IDS, 1, vals, NULL, NULL, false, purge_ids_res, op, 0);
    pb__pg_buf_free(&ids);
    return rc;
}

/* ---- inject -------------------------------------------------------------------------------- */

static int inject_res(struct pgq *q, struct pb_op *op, int idx, PGresult *res)
{
    (void)idx;
    struct pb_op_inject *in = &op->u.inject;
    if (PQntuples(res) != 1)
        return PB_ESTORE;
    if (!ival(res, 0)) {
        op->status = PB_ENOTFOUND; /* the dead letter is no longer dead */
        return 0;
    }
    if (!val(res, 1)) {
        op->status = PB_EEXISTS; /* a message of this id exists */
        return 0;
    }
    in->msg_seq = ival(res, 1);
    size_t n = in->ntargets ? in->ntargets : 1, k = 0;
    for (const char *s = val(res, 2); s && *s && k < n;) {
        char *end;
        int64_t v = strtoll(s, &end, 10);
        if (end == s)
            break;
        in->delivery_ids[k++] = v;
        s = *end == ',' ? end + 1 : end;
    }
    if (k != n)
        return pb__pg_fail(q, NULL, NULL, "insert injected deliveries");
    if (in->replaces) {
        const char *pl = val(res, 3), *out = val(res, 4), *sub = val(res, 5);
        snprintf(in->pipeline_out, sizeof(in->pipeline_out), "%s", pl ? pl : "");
        if (sub)
            snprintf(in->output_out, sizeof(in->output_out), "%.*s/%s", PB_NAME_MAX_STORE - 1,
                     out ? out : "", sub);
        else
            snprintf(in->output_out, sizeof(in->output_out), "%s", out ? out : "");
    }
    note_list(q, val(res, 6));
    return 0;
}

int pb__pg_apply_inject(struct pgq *q, struct pb_op *op)
{
    struct pb_op_inject *in = &op->u.inject;
    struct pg_buf outs = {0}, subs = {0};
    char *t_id = NULL, *t_pl = NULL, *t_ct = NULL, *t_meta = NULL;
    char now[24], crc[24], repl[24];
    int rc = 0;

    in->msg_seq = 0;
    in->pipeline_out[0] = in->output_out[0] = '\0';
    if (!in->msg_id || !in->delivery_ids || (!in->body && in->len) ||
        (in->ntargets && !in->outputs) || (!in->replaces && (!in->pipeline || in->ntargets == 0))) {
        op->status = PB_EINVAL;
        return 0;
    }
    pb__pg_buf_addc(&outs, '{');
    pb__pg_buf_addc(&subs, '{');
    for (size_t i = 0; i < in->ntargets; i++) {
        if (i) {
            pb__pg_buf_addc(&outs, ',');
            pb__pg_buf_addc(&subs, ',');
        }
        pb__pg_buf_elem(&outs, in->outputs[i]);
        pb__pg_buf_elem(&subs, in->subs && in->subs[i] && *in->subs[i] ? in->subs[i] : NULL);
    }
    pb__pg_buf_addc(&outs, '}');
    pb__pg_buf_addc(&subs, '}');
    snprintf(now, sizeof(now), "%" PRId64, in->now);
    snprintf(crc, sizeof(crc), "%" PRId64, pb__store_body_crc(in->body, in->len));
    snprintf(repl, sizeof(repl), "%" PRId64, in->replaces);
    const char *id = pb__pg_text(in->msg_id, strlen(in->msg_id), NULL, &t_id);
    const char *pl =
        in->pipeline ? pb__pg_text(in->pipeline, strlen(in->pipeline), NULL, &t_pl) : NULL;
    const char *ct = in->content_type
                         ? pb__pg_text(in->content_type, strlen(in->content_type), NULL, &t_ct)
                         : NULL;
    const char *meta = NULL;
    if (in->meta) {
        meta = pb__pg_text(in->meta, in->meta_len, NULL, &t_meta);
        if (meta && !t_meta && strnlen(in->meta, in->meta_len + 1) != in->meta_len)
            meta = t_meta = strndup(in->meta, in->meta_len);
    }
    if (!id || (in->pipeline && !pl) || (in->content_type && !ct) || (in->meta && !meta) ||
        outs.oom || subs.oom) {
        rc = PB_ENOMEM;
        goto out;
    }
    const char *vals[] = {id,  pl,   now,  ct,     in->len ? in->body : "",
                          crc, meta, repl, outs.p, subs.p};
    int lens[] = {0, 0, 0, 0, (int)in->len, 0, 0, 0, 0, 0};
    int fmts[] = {0, 0, 0, 0, 1, 0, 0, 0, 0, 0};
    rc = pb__pg_send(q, WS_INJECT, 10, vals, lens, fmts, false, inject_res, op, 0);
out:
    free(t_id);
    free(t_pl);
    free(t_ct);
    free(t_meta);
    pb__pg_buf_free(&outs);
    pb__pg_buf_free(&subs);
    return rc;
}

/* ---- a process step's key ---------------------------------------------------------------------
 */

static int key_res(struct pgq *q, struct pb_op *op, int idx, PGresult *res)
{
    (void)q;
    (void)idx;
    struct pb_op_key *k = &op->u.key;
    const char *holder = val(res, 0);
    if (!holder)
        return PB_ESTORE;
    snprintf(k->holder, sizeof(k->holder), "%s", holder);
    k->first = strcmp(holder, k->owner) == 0;
    return 0;
}

int pb__pg_apply_key(struct pgq *q, struct pb_op *op)
{
    struct pb_op_key *k = &op->u.key;
    char *t_scope = NULL, *t_owner = NULL;
    char exp[24], now[24];
    k->first = false;
    k->holder[0] = '\0';
    if (!k->scope || !k->key || !k->owner || strlen(k->owner) >= sizeof(k->holder)) {
        op->status = PB_EINVAL;
        return 0;
    }
    const char *scope = pb__pg_text(k->scope, strlen(k->scope), NULL, &t_scope);
    const char *owner = pb__pg_text(k->owner, strlen(k->owner), NULL, &t_owner);
    int rc = PB_ENOMEM;
    if (scope && owner) {
        snprintf(exp, sizeof(exp), "%" PRId64, k->expires_at);
        snprintf(now, sizeof(now), "%" PRId64, k->now);
        const char *vals[] = {scope, k->key, owner, exp, now};
        int lens[] = {0, (int)strlen(k->key), 0, 0, 0};
        int fmts[] = {0, 1, 0, 0, 0};
        rc = pb__pg_send(q, WS_KEY, 5, vals, lens, fmts, false, key_res, op, 0);
    }
    free(t_scope);
    free(t_owner);
    return rc;
}
