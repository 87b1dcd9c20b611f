/* oauth2_share.c - OAuth2 tokens shared by the nodes of a cluster (state on
 * PostgreSQL). A node that obtains an access token writes it to the state
 * store (scope "oauth2", key: the source's id, in the same record as a
 * refresh-token chain: access_token, token_type, obtained_at, expires_at);
 * the others are told (a NOTIFY, cluster_kv.c) and take it when it is
 * newer than theirs, so N nodes ask the token endpoint about once per
 * token lifetime, not N times. A node starting takes the stored token when
 * it is still valid.
 *
 * Renewal: the node that fetched a token renews it at its margin
 * (refresh_before); the nodes that took it from another renew at three
 * quarters of that margin, by which time the fetcher's new token has
 * normally reached them. A token refused by a partner (401) is renewed at
 * once by the node that saw it, and its successor shared.
 *
 * Threads: pb__oauth2_publish on the token thread (the write is not waited
 * for); pb__oauth2_kv_changed on the cluster's pb-kv thread (a blocking
 * read of the store, then the sources under their locks); pb__oauth2_take
 * under the registry's lock (start). */
#include <stdlib.h>
#include <string.h>

#include "core/oauth2_int.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_time.h"

#define RECORD_MAX (16 * 1024)

bool pb__oauth2_shared(void)
{
    return pb__oauth2_thr.store && pb_store_clustered(pb__oauth2_thr.store);
}

int pb__oauth2_record_add_access(json_t *rec, const char *header, int64_t obtained_at,
                                 int64_t expires_at)
{
    const char *sp = header ? strchr(header, ' ') : NULL;
    if (!sp)
        return PB_EINVAL;
    char type[32];
    size_t tl = (size_t)(sp - header);
    if (tl == 0 || tl >= sizeof(type))
        return PB_EINVAL;
    memcpy(type, header, tl);
    type[tl] = 0;
    if (json_object_set_new(rec, "access_token", json_string(sp + 1)) ||
        json_object_set_new(rec, "token_type", json_string(type)) ||
        json_object_set_new(rec, "obtained_at", json_integer(obtained_at)) ||
        json_object_set_new(rec, "expires_at", json_integer(expires_at)))
        return PB_ENOMEM;
    return 0;
}

struct publish {
    struct pb_op op;
    struct pb_kv_put kv;
    char *value;
};

static void publish_done(struct pb_op *op, void *arg)
{
    struct publish *p = arg;
    if (op->status)
        PB_WARN("oauth2 token not shared with the other nodes key=%s error=%s", p->kv.key,
                pb_strerror(op->status));
    pb__oauth2_free_secret(p->value);
    free((char *)p->kv.key);
    free(p);
}

void pb__oauth2_publish(struct pb_oauth2_src *s)
{
    if (!pb__oauth2_shared())
        return;
    json_t *rec = json_object();
    pthread_mutex_lock(&s->lock);
    /* A refresh-token chain's record is replaced whole: only with the
     * chain as stored, never one not yet committed (persist() writes
     * those, with their access token). */
    bool chain = s->grant == PB_OAUTH2_REFRESH_TOKEN;
    if (!s->token || (chain && (!s->refresh || s->unsaved))) {
        pthread_mutex_unlock(&s->lock);
        json_decref(rec);
        return;
    }
    int rc = rec && s->token
                 ? pb__oauth2_record_add_access(rec, s->token, s->obtained_at, s->expires_at)
                 : PB_ENOMEM;
    if (!rc && chain)
        rc = json_object_set_new(rec, "refresh_token", json_string(s->refresh)) ||
                     json_object_set_new(rec, "seed", json_string(s->seed))
                 ? PB_ENOMEM
                 : 0;
    pthread_mutex_unlock(&s->lock);
    if (!rc)
        json_object_set_new(rec, "updated_at", json_integer(pb_now_ms()));
    char *text = rc ? NULL : json_dumps(rec, JSON_COMPACT);
    json_decref(rec);
    struct publish *p = text ? calloc(1, sizeof(*p)) : NULL;
    char *key = p ? strdup(s->id) : NULL;
    if (!key) {
        free(p);
        pb__oauth2_free_secret(text);
        PB_WARN("oauth2 token not shared with the other nodes: out of memory");
        return;
    }
    p->value = text;
    p->kv = (struct pb_kv_put){.scope = KV_SCOPE, .key = key, .value = text, .len = strlen(text)};
    p->op = (struct pb_op){.kind = PB_OP_KV, .done_cb = publish_done, .arg = p};
    p->op.u.kv = (struct pb_op_kv){.n = 1, .kv = &p->kv, .now = pb_now_ms()};
    if (pb_store_submit(pb__oauth2_thr.store, &p->op) != 0)
        publish_done(&p->op, p);
}

/* Source lock held: take the access token of rec (a record another node,
 * or an earlier process, stored) when it is usable and newer than this
 * node's. The waiters to tell go to *w. True when taken. */
static bool take_access(struct pb_oauth2_src *s, json_t *rec, int64_t now,
                        struct pb_http_auth_waiter **w)
{
    const char *access = json_string_value(json_object_get(rec, "access_token"));
    const char *type = json_string_value(json_object_get(rec, "token_type"));
    int64_t obtained = json_integer_value(json_object_get(rec, "obtained_at"));
    int64_t expires = json_integer_value(json_object_get(rec, "expires_at"));
    if (!access || !type || !*access || strlen(access) > PB_HTTP_AUTH_VALUE_MAX ||
        strlen(type) > 16 || expires <= now || obtained > expires)
        return false;
    size_t n = strlen(type) + 1 + strlen(access) + 1;
    char *tok = malloc(n);
    if (!tok)
        return false;
    snprintf(tok, n, "%s %s", type, access);
    bool same = s->token && strcmp(s->token, tok) == 0;
    bool usable = s->token && !s->invalid && now < s->expires_at;
    if (same || (usable && expires <= s->expires_at)) {
        pb__oauth2_free_secret(tok);
        return false;
    }
    pb__oauth2_free_secret(s->token);
    s->token = tok;
    s->gen++;
    s->invalid = false;
    s->obtained_at = obtained;
    s->expires_at = expires;
    s->margin_ms = pb__oauth2_margin(expires - obtained, s->refresh_before_ms) * 3 / 4;
    s->fails = 0;
    s->failing_since = 0;
    s->next_try_at = 0;
    s->error[0] = 0;
    *w = pb__oauth2_take_waiters(s);
    return true;
}

/* Source lock held: the stored chain's refresh token, when it continues
 * the configured one and differs from this node's. */
static void take_refresh(struct pb_oauth2_src *s, json_t *rec)
{
    const char *rt = json_string_value(json_object_get(rec, "refresh_token"));
    const char *seed = json_string_value(json_object_get(rec, "seed"));
    if (s->grant != PB_OAUTH2_REFRESH_TOKEN || !rt || !seed || strcmp(seed, s->seed) != 0 ||
        (s->refresh && strcmp(s->refresh, rt) == 0) || s->unsaved)
        return;
    char *copy = strdup(rt);
    if (!copy)
        return;
    pb__oauth2_free_secret(s->refresh);
    s->refresh = copy;
}

void pb__oauth2_take(struct pb_oauth2_src *s, json_t *rec, bool chain)
{
    struct pb_http_auth_waiter *w = NULL;
    /* A chain begun from another configured refresh token (re-authorised
     * since): neither its access token nor its refresh token is ours. */
    const char *seed = json_string_value(json_object_get(rec, "seed"));
    if (s->grant == PB_OAUTH2_REFRESH_TOKEN && (!seed || strcmp(seed, s->seed) != 0))
        return;
    pthread_mutex_lock(&s->lock);
    if (chain)
        take_refresh(s, rec);
    bool took = take_access(s, rec, pb_now_ms(), &w);
    int64_t left = s->expires_at - pb_now_ms();
    pthread_mutex_unlock(&s->lock);
    if (took)
        PB_DEBUG("oauth2 token taken from the state store token_url=%s client_id=%s "
                 "expires_in_ms=%lld",
                 s->token_url, s->client_id, (long long)left);
    pb__oauth2_notify_all(w, 0, 0);
}

struct records {
    const char *key;
    json_t *by_id;
};

static int record_cb(void *arg, const char *key, const void *value, size_t len)
{
    struct records *r = arg;
    if ((r->key && strcmp(key, r->key) != 0) || len > RECORD_MAX)
        return 0;
    json_t *v = json_loadb(value, len, 0, NULL);
    if (json_is_object(v))
        json_object_set_new(r->by_id, key, v);
    else
        json_decref(v);
    return 0;
}

void pb__oauth2_kv_changed(struct pb_store *store, const char *key)
{
    struct records r = {.key = key, .by_id = json_object()};
    struct pb_err err = {0};
    if (!r.by_id)
        return;
    if (pb_store_kv_load(store, KV_SCOPE, record_cb, &r, &err) != 0) {
        PB_WARN("oauth2 token shared by another node not read error=\"%s\"", err.msg);
        goto out;
    }
    pthread_mutex_lock(&pb__oauth2_reg_lock);
    for (struct pb_oauth2_src *s = pb__oauth2_sources; s; s = s->next) {
        json_t *rec = json_object_get(r.by_id, s->id);
        if (rec)
            pb__oauth2_take(s, rec, true);
    }
    pthread_mutex_unlock(&pb__oauth2_reg_lock);
out:
    json_decref(r.by_id);
}
