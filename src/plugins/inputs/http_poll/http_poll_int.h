/* http_poll_int.h - the http_poll input's options and run-time state,
 * shared by http_poll_conf.c (the option tables, init) and http_poll.c (runs,
 * pages, commits). */
#ifndef PB_HTTP_POLL_INT_H
#define PB_HTTP_POLL_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <openssl/sha.h>

#include "patchbay/pb_http_auth.h"
#include "patchbay/pb_jq.h"
#include "patchbay/pb_plugin.h"
#include "poll_util.h"

#define MAX_HEADERS 40
#define PAGE_ITEMS_MAX 10000
#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 300000
#define META_MAX 4096

enum { PAGE_NONE = 0, PAGE_PAGE, PAGE_OFFSET, PAGE_CURSOR, PAGE_LINK, PAGE_NEXT_URL };

struct pagination_conf {
    int type;
    char *param;
    int64_t start;
    char *size_param;
    int64_t size;
    char *cursor;
    char *next_url;
};
struct graphql_conf {
    char *query;
    char *variables;
    char *cursor;
    char *has_next;
    char *variable;
};
struct cursor_conf {
    char *value;
    char *param;
    char *initial;
    int64_t lookback_ms;
};

struct page_req;

struct in_poll {
    /* options */
    char *url;
    int method;
    struct pb_strmap headers;
    char *body;
    struct pb_http_auth_conf auth; /* the shared blocks (pb_http_auth.h) */
    struct pb_http_tls_conf tls;
    int64_t interval_ms;
    char *cron;
    char *items;
    struct pagination_conf pagination;
    struct graphql_conf graphql;
    struct cursor_conf cursor;
    char *dedupe_key;
    int64_t max_pages;
    int64_t timeout_ms;
    uint64_t max_response;
    int64_t window_ms;
    /* prepared by init */
    char pipeline[128];
    bool once;
    struct poll_cron cr;
    struct pb_jq *items_q, *token_q, *next_q, *has_next_q, *vars_q, *value_q, *key_q;
    const struct pb_allowlist *allow;
    struct pb_http_auth *a;
    struct pb_http_tls *t;
    size_t nstatic;
    struct pb_http_header statics[MAX_HEADERS];
    /* run time: the input's loop thread */
    struct pb_input *in;
    struct pb_loop *loop;
    struct pb_http_client *http;
    struct pb_loop_timer *timer;
    struct page_req *waiting;              /* the page waiting for an OAuth2 token */
    bool stopped, paused, busy, want_page; /* want_page: fetch when resumed */
    jv committed;                          /* the incremental cursor (null: none yet) */
    /* the run under way */
    bool in_run;
    int64_t page_no; /* pages fetched and committed in this run */
    int64_t page, offset;
    char *token;    /* next page token (cursor, GraphQL) */
    char *next_url; /* next URL (link, next_url) */
    jv sent;        /* the cursor this run asks from */
    jv run_max;     /* largest cursor value seen in this run */
    unsigned char last_hash[SHA256_DIGEST_LENGTH];
    bool have_hash;
    char **seen; /* tokens and URLs this run followed */
    size_t nseen;
    int64_t run_started_at, backoff_ms;
    uint64_t runs, records;
};

extern const char *const poll_methods[];
extern const struct pb_field poll_fields[];
int poll_init(void *ctx, struct pb_input_env *env, struct pb_err *err);
/* The checkpoint (poll_state.c): cursor (taken) and, unless run_ends, the
 * run's position, as malloc'd JSON text (NULL: out of memory); and read
 * back into p at start. */
char *poll_state_text(struct in_poll *p, jv cursor, bool run_ends);
void poll_state_load(struct in_poll *p, const char *text, size_t len);

#endif
