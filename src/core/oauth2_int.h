/* oauth2_int.h - what the two halves of OAuth2 token sources share:
 * oauth2_src.c (the registry, the users' calls, waiters) and oauth2.c (the
 * token thread: requests, answers, refresh-token chains). Core-internal.
 *
 * Lock order: a source's lock, then pb__oauth2_thr.lock, then pb__oauth2_reg_lock.
 * pb__oauth2_reg_lock may be taken first only by code that takes a source's lock after it for a
 * moment and nothing else (tick_cb, pb__oauth2_each). */
#ifndef PB_CORE_OAUTH2_INT_H
#define PB_CORE_OAUTH2_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "core/oauth2.h"

#define KV_SCOPE "oauth2"
#define UNSAVED_RETRY_MS 1000

struct pb_oauth2_src {
    /* Registry (pb__oauth2_reg_lock). */
    struct pb_oauth2_src *next;
    /* Users and work in flight. Incremented without pb__oauth2_reg_lock only by who
     * holds a reference already; the last put unlinks under pb__oauth2_reg_lock. */
    atomic_int refs;
    /* Settings: immutable after pb__oauth2_get. */
    char id[65];     /* hex SHA-256 of the sharing key: also the store key */
    char digest[65]; /* of every other setting, to refuse a differing second user */
    char seed[65];   /* of the configured refresh token: a new one starts a new chain */
    char *token_url, *client_id, *client_secret, *scope, *audience, *conf_refresh, *key_id;
    int grant, method;
    struct pb_jwt_key key;
    struct pb_strmap claims, params;
    int64_t assertion_ms, refresh_before_ms, timeout_ms, default_lifetime_ms;
    struct pb_allowlist *allow;      /* union of every user's */
    char *user_pipeline, *user_name; /* the first user, for /ready */

    /* Run-time state (lock). */
    pthread_mutex_t lock;
    char *token; /* "Bearer <access token>" */
    uint64_t gen;
    int64_t expires_at, obtained_at, margin_ms;
    bool invalid;        /* refused by a partner (401) */
    char *refresh;       /* the chain's current refresh token */
    bool unsaved;        /* refresh not in the store yet: no refresh request until it is */
    bool fetching;       /* a request is on its way */
    int64_t next_try_at; /* after a failure */
    int fails;           /* in a row */
    int64_t failing_since;
    int rejects; /* young tokens refused in a row */
    int64_t rejected_at;
    char error[256];
    struct pb_http_auth_waiter *wait_head, *wait_tail;
    uint64_t requests, failures;
};

/* The token thread and what it needs. */
struct oauth2_thread {
    pthread_mutex_t lock; /* guards running, loop (the pointer) and posts to it */
    bool running;
    struct pb_store *store;
    struct pb_loop *loop;
    struct pb_http_client *http;
    struct pb_loop_timer *tick; /* unsaved chains are stored again */
    pthread_t thread;
    bool thread_started;
};
extern struct oauth2_thread pb__oauth2_thr;

/* The registry: every source, under pb__oauth2_reg_lock (oauth2_src.c). */
extern pthread_mutex_t pb__oauth2_reg_lock;
extern struct pb_oauth2_src *pb__oauth2_sources;

/* Another reference, by one who holds one. */
static inline void src_ref(struct pb_oauth2_src *s)
{
    atomic_fetch_add(&s->refs, 1);
}

/* Drop a reference known not to be the last. */
static inline void src_unref(struct pb_oauth2_src *s)
{
    atomic_fetch_sub(&s->refs, 1);
}

/* oauth2_src.c */
void pb__oauth2_free_secret(char *s);
const char *pb__oauth2_grant_name(int g);
/* Waiters: take the whole list (source lock held), tell them after. */
struct pb_http_auth_waiter *pb__oauth2_take_waiters(struct pb_oauth2_src *s);
void pb__oauth2_notify_all(struct pb_http_auth_waiter *w, int status, int64_t retry_in);

/* oauth2.c */
/* Source lock held: start a request unless one is on its way, the endpoint
 * is backing off, or a rotated refresh token is not stored yet. */
void pb__oauth2_maybe_fetch(struct pb_oauth2_src *s, int64_t now);
bool pb__oauth2_running(void);

/* oauth2_share.c: tokens shared by the nodes of a cluster. */
bool pb__oauth2_shared(void);
/* Add access_token, token_type, obtained_at and expires_at to rec from a
 * "<type> <token>" header value. */
int pb__oauth2_record_add_access(json_t *rec, const char *header, int64_t obtained_at,
                                 int64_t expires_at);
/* Token thread: write s's token (and its stored chain) for the others. */
void pb__oauth2_publish(struct pb_oauth2_src *s);
/* Take the token of a stored record when newer (and, when chain, its
 * refresh token); tells the waiters. Not under s->lock. */
void pb__oauth2_take(struct pb_oauth2_src *s, json_t *rec, bool chain);

#endif
