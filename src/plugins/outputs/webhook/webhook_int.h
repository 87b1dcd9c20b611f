/* webhook_int.h - what the webhook output's two files share: webhook.c
 * (options, endpoints, fan-out, signing, health) and webhook_api.c (the
 * /api/endpoints routes). */
#ifndef PB_WEBHOOK_INT_H
#define PB_WEBHOOK_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "patchbay/pb_crypto.h"
#include "patchbay/pb_plugin.h"

#define WH_MAX_SECRETS 8
#define WH_KEY_MAX 64
#define WH_MAX_EVENTS 100

struct wh_static {
    char *id;
    char *url;
    char *secret;
    struct pb_strlist secrets;
    struct pb_strlist events;
    char *description;
    struct pb_rate rate_limit;
};

struct wh_secret {
    unsigned char key[WH_KEY_MAX];
    size_t len;
    int64_t expires_at; /* 0 = current */
};

/* One endpoint: a sub-output of the webhook output, static (from the
 * configuration, its state kept in the store) or managed (created through
 * the admin API, kept whole in the store). Fields under wh_conf.lock. */
struct wh_ep {
    char id[PB_SUB_ID_MAX];
    bool is_static;
    char *url;
    char *description;
    char **events; /* patterns; none: every event */
    size_t nevents;
    struct wh_secret secrets[WH_MAX_SECRETS];
    size_t nsecrets;
    json_t *secrets_json; /* managed: [{key, expires_at}], newest first */
    char *rate_text;      /* managed: "100/s" or NULL */
    struct pb_rate rate;
    bool disabled;
    char *disabled_reason;
    int64_t failing_since; /* first failure since the last success; 0 = healthy */
    int64_t created_at, updated_at;
};

struct wh_conf {
    /* options */
    char *event_type;
    const struct pb_node *endpoints;
    bool managed;
    int64_t disable_after_ms;
    int64_t rotation_overlap_ms;
    int64_t timeout_ms;
    int64_t connect_timeout_ms;
    uint64_t max_response;
    char *events_pipeline;
    char *signing_key;
    /* prepared at init */
    int type_tmpl; /* template field giving the event type */
    EVP_PKEY *edkey;
    struct wh_static *statics;
    size_t nstatics;
    char *pipeline, *output;
    struct pb_http_client *http;
    /* run time */
    struct pb_output *out;
    pthread_mutex_t lock; /* endpoints: the dispatcher and admin workers */
    bool lock_ready;
    struct wh_ep **eps;
    size_t neps, cap;
    bool started; /* start read the endpoints: another node's changes apply */
};

/* webhook.c, for webhook_api.c. Under c->lock unless said otherwise. */
struct wh_ep *pb__wh_find(struct wh_conf *c, const char *id);
/* Insert or replace (by id) an endpoint; takes ep. */
int pb__wh_put(struct wh_conf *c, struct wh_ep *ep);
void pb__wh_remove(struct wh_conf *c, const char *id);
void pb__wh_ep_free(struct wh_ep *ep);
/* A managed endpoint from its stored record (NULL when unusable). */
struct wh_ep *pb__wh_from_json(json_t *rec);
/* Its record as stored, and as the API shows it (no secrets). */
json_t *pb__wh_record(const struct wh_ep *ep);
json_t *pb__wh_view(const struct wh_conf *c, const struct wh_ep *ep);
/* Save ep's state (static: by id; managed: the whole record): waits for
 * the commit when wait (then c->lock must not be held), else records it in
 * the background. */
int pb__wh_save(struct wh_conf *c, const struct wh_ep *ep, bool wait);
/* The same in two steps: the record under c->lock, the write after. */
char *pb__wh_save_key(const struct wh_ep *ep, char *key, size_t len);
int pb__wh_write(struct wh_conf *c, const char *key, json_t *rec, bool wait);
/* Make the sub-output follow ep (paused, rate limit). */
void pb__wh_sync_sub(struct wh_conf *c, const struct wh_ep *ep);

bool pb__wh_secret_ok(const char *s);
int pb__wh_parse_secret(const char *s, struct wh_secret *out);
int pb__wh_new_secret(char *buf, size_t len);
bool pb__wh_pattern_ok(const char *p);
bool pb__wh_id_ok(const char *id);
int pb__wh_set_events(struct wh_ep *ep, const char *const *items, size_t n);
/* Decode secrets_json into ep->secrets. */
void pb__wh_load_secrets(struct wh_ep *ep);

/* webhook_share.c: another node of the cluster changed key of the state. */
void pb__wh_kv_changed(void *ctx, struct pb_output *out, const char *key, const void *value,
                       size_t len);

/* webhook_api.c */
void pb__wh_admin(struct pb_output *const *outs, size_t n, struct pb_http_request *r);

#endif
