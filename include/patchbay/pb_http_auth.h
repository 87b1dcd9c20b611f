/* pb_http_auth.h - outbound authentication and TLS for every plugin that
 * calls an HTTP API: the http output, the http_poll input, the enrich
 * processor, and whatever comes next.
 *
 * A plugin embeds two option blocks in its own field table, so every
 * plugin takes the same `auth:` and `tls:` options:
 *
 *     struct my { ...; struct pb_http_auth_conf auth; struct pb_http_tls_conf tls;
 *                 struct pb_http_auth *a; struct pb_http_tls *t; };
 *     {.name = "auth", .type = PB_F_OBJECT, .offset = offsetof(struct my, auth),
 *      .sub = pb_http_auth_fields, .doc = "bearer, basic, api_key or oauth2"},
 *     {.name = "tls", .type = PB_F_OBJECT, .offset = offsetof(struct my, tls),
 *      .sub = pb_http_tls_fields},
 *
 * and turns them into run-time objects in init (files are read and checked,
 * nothing connects, so lint reports a bad key file):
 *
 *     struct pb_http_owner who = {env->pipeline, env->output, env->allow};
 *     my->a = pb_http_auth_create(&my->auth, &who, err);   NULL + err on a bad block
 *     my->t = pb_http_tls_create(&my->tls, &who, err);
 *
 * Per request (any thread):
 *
 *     struct pb_http_auth_ticket tk;            on the stack: it is large
 *     rc = pb_http_auth_header(my->a, &tk);
 *     0         -> add {tk.name, tk.value} to the headers when tk.name is set
 *                  (nothing to add without auth), keep tk.gen, send with
 *                  req.tls = my->t
 *     PB_EAGAIN -> no OAuth2 token yet: pb_http_auth_wait() calls back on
 *                  your loop once there is one, or once the token endpoint
 *                  failed (then the partner was not asked: for an output,
 *                  end the delivery with .not_sent, which costs no attempt)
 *     answer 401 and pb_http_auth_refreshable(a) ->
 *                  pb_http_auth_rejected(a, tk.gen), then header/wait again
 *                  and send once more: one refresh, without spending an
 *                  attempt; a second 401 is the answer.
 *     destroy:     pb_http_auth_destroy(a), pb_http_tls_destroy(t)
 *                  (cancel your waiters first)
 *
 * OAuth2 tokens are shared: every user whose token_url, client_id, scopes,
 * audience and grant match gets the same token, obtained by one request at
 * a time (no stampede), renewed shortly before expires_in runs out. A
 * refresh token the server rotates is written to the state store, and the
 * commit waited for, before it is ever sent back: a crash never loses the
 * chain. A failing token endpoint is retried with backoff (honouring
 * Retry-After) and shows in /ready and /api/pipelines. Secrets are never
 * logged; errors quote the endpoint's `error` code, not its body. */
#ifndef PB_HTTP_AUTH_H
#define PB_HTTP_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pb_conf.h"
#include "pb_err.h"
#include "pb_http.h"
#include "pb_loop.h"

/* ---- options -------------------------------------------------------------------------- */

enum pb_oauth2_grant {
    PB_OAUTH2_CLIENT_CREDENTIALS = 0,
    PB_OAUTH2_REFRESH_TOKEN,
    PB_OAUTH2_JWT_BEARER, /* RFC 7523 2.1: a JWT signed with private_key is the grant */
};
enum pb_oauth2_auth_method {
    PB_OAUTH2_CLIENT_SECRET_BASIC = 0, /* Authorization: Basic client_id:client_secret */
    PB_OAUTH2_CLIENT_SECRET_POST,      /* client_id and client_secret in the form */
    PB_OAUTH2_PRIVATE_KEY_JWT, /* RFC 7523 2.2: a client assertion signed with private_key */
};

struct pb_oauth2_conf {
    char *token_url;
    char *client_id;
    char *client_secret; /* secret */
    struct pb_strlist scopes;
    char *audience;      /* sent as the `audience` form parameter */
    int grant;           /* enum pb_oauth2_grant */
    int auth_method;     /* enum pb_oauth2_auth_method */
    char *refresh_token; /* secret: grant refresh_token, the start of the chain */
    char *private_key;   /* PEM file: jwt_bearer and private_key_jwt sign with it */
    char *key_id;        /* `kid` of the JWTs signed */
    char *algorithm; /* RS256 (RSA), ES256 (P-256), ES384 (P-384), PS256, EdDSA; default by key */
    struct pb_strmap claims;       /* jwt_bearer: claims of the assertion (sub, iss, aud...) */
    struct pb_strmap params;       /* more form parameters of every token request */
    int64_t assertion_lifetime_ms; /* exp - iat of the JWTs signed */
    int64_t refresh_before_ms;     /* renew this long before expiry (at most 10 % of it) */
    int64_t timeout_ms;            /* one token request */
    int64_t default_lifetime_ms;   /* a token whose answer has no expires_in */
};

struct pb_http_basic_conf {
    char *user;
    char *password; /* secret */
};
struct pb_http_api_key_conf {
    char *header; /* default X-Api-Key */
    char *value;  /* secret */
};

/* `auth:` takes exactly one of these. */
struct pb_http_auth_conf {
    char *bearer; /* secret: Authorization: Bearer <bearer> */
    struct pb_http_basic_conf basic;
    struct pb_http_api_key_conf api_key;
    struct pb_oauth2_conf oauth2;
};
/* The sub-table of an `auth` PB_F_OBJECT field over struct pb_http_auth_conf. */
extern const struct pb_field pb_http_auth_fields[];

enum pb_tls_version { PB_TLS_1_2 = 0, PB_TLS_1_3 };
struct pb_http_tls_conf {
    char *ca_file; /* PEM bundle the partner's certificate must chain to (default: the system's) */
    char *cert_file;    /* client certificate (mTLS), PEM; with key_file */
    char *key_file;     /* its private key, PEM */
    char *key_password; /* secret: for an encrypted key_file */
    char *server_name;  /* the name sent (SNI) and checked in the certificate, instead of the URL's
                           host */
    int min_version;    /* enum pb_tls_version */
    bool insecure_skip_verify; /* the partner's certificate is not checked: warned at start, in the
                                  API */
};
/* The sub-table of a `tls` PB_F_OBJECT field over struct pb_http_tls_conf. */
extern const struct pb_field pb_http_tls_fields[];

/* ---- run time ---------------------------------------------------------------------------- */

/* Who uses the settings, for logs, /ready and /api/pipelines: the pipeline
 * and the output's name (an input: "input", a processor: "process[N]"),
 * and the outbound guard the token endpoint is checked against. Copied. */
struct pb_http_owner {
    const char *pipeline;
    const char *name;
    const struct pb_allowlist *allow;
};

struct pb_http_auth;
/* Validate conf (exactly one kind of auth, a readable key...) and prepare it;
 * no network. An absent block gives an object that adds nothing. Reads
 * conf during the call only. NULL + err on a bad block. */
struct pb_http_auth *pb_http_auth_create(const struct pb_http_auth_conf *conf,
                                         const struct pb_http_owner *owner, struct pb_err *err);
/* Accepts NULL. Waiters must have been called back or cancelled. */
void pb_http_auth_destroy(struct pb_http_auth *a);

#define PB_HTTP_AUTH_VALUE_MAX 16384 /* an access token longer than this is refused */
struct pb_http_auth_ticket {
    const char *name; /* header to add ("Authorization", the API key's), NULL: none */
    uint64_t gen;     /* which token it is, for pb_http_auth_rejected */
    char value[PB_HTTP_AUTH_VALUE_MAX + 64];
};

/* The header a request carries now. 0 (t filled), PB_EAGAIN (OAuth2 with no
 * usable token: a request for one is under way or due; wait for it),
 * PB_ESHUTDOWN (the daemon is stopping; also before it started, as in
 * lint). Any thread; never blocks. */
int pb_http_auth_header(struct pb_http_auth *a, struct pb_http_auth_ticket *t);

/* Called back once: status 0 when a token is ready (call pb_http_auth_header
 * again), PB_EAGAIN when the token endpoint failed (retry_in_ms: when it is
 * tried again; pb_http_auth_error says why), PB_ESHUTDOWN when stopping. */
typedef void (*pb_http_auth_cb)(void *arg, int status, int64_t retry_in_ms);
/* Caller-owned, untouched until the callback ran or cancel returned true. */
struct pb_http_auth_waiter {
    struct pb_loop_node node; /* internal, all of it */
    struct pb_http_auth_waiter *prev, *next;
    struct pb_loop *loop;
    pb_http_auth_cb cb;
    void *arg;
    int status;
    int64_t retry_in_ms;
    bool queued;
};
/* Wait for a token: cb runs on loop (posted, never inside this call). Any
 * thread. If the call fails, cb never runs. */
int pb_http_auth_wait(struct pb_http_auth *a, struct pb_http_auth_waiter *w, struct pb_loop *loop,
                      pb_http_auth_cb cb, void *arg);
/* Take back a waiter: true when it was still waiting (cb will not run);
 * false when cb has run or is on its way to loop. Any thread. */
bool pb_http_auth_cancel(struct pb_http_auth *a, struct pb_http_auth_waiter *w);
/* Blocking form for threads that may block (a worker): waits up to
 * timeout_ms for a token. 0, PB_ETIMEOUT, PB_EAGAIN (endpoint failing,
 * err says why), PB_ESHUTDOWN. Never on an event loop's thread. */
int pb_http_auth_header_wait(struct pb_http_auth *a, struct pb_http_auth_ticket *t,
                             int64_t timeout_ms, struct pb_err *err);

/* Does a 401 call for a new token (OAuth2)? */
bool pb_http_auth_refreshable(const struct pb_http_auth *a);
/* The partner answered 401 to token gen: unless a newer one is already
 * there or on its way, it is dropped and a new one requested (once for all
 * who saw it refused). Any thread. */
void pb_http_auth_rejected(struct pb_http_auth *a, uint64_t gen);
/* Why the token endpoint failed last (no secret in it), into buf; "" if not. */
void pb_http_auth_error(struct pb_http_auth *a, char *buf, size_t len);

struct pb_http_tls;
/* Check conf (files readable, the key matches the certificate, a known
 * min_version) without connecting. Always an object (defaults: the system's
 * CAs, TLS 1.2 at least) or NULL + err. Reads conf during the call only. */
struct pb_http_tls *pb_http_tls_create(const struct pb_http_tls_conf *conf,
                                       const struct pb_http_owner *owner, struct pb_err *err);
/* Accepts NULL; no request using it may be in flight. */
void pb_http_tls_destroy(struct pb_http_tls *t);

#endif
