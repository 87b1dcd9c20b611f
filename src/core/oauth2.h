/* oauth2.h - OAuth2 token sources (oauth2.c) and the JWTs they sign
 * (oauth2_jwt.c), behind pb_http_auth (http_auth.c). Core-internal.
 *
 * A source is one token shared by every user with the same token_url,
 * client_id, scopes, audience and grant; it is reference-counted in a
 * process-wide registry. Its token, refresh token, backoff and waiters are
 * under its own lock; requests to the token endpoint run on the token
 * thread (pb-oauth2), one at a time per source. */
#ifndef PB_CORE_OAUTH2_H
#define PB_CORE_OAUTH2_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "core/http_auth.h"
#include "patchbay/pb_http_auth.h"

/* ---- JWTs (oauth2_jwt.c) ---------------------------------------------------------------- */

enum { PB_JWT_RS256 = 0, PB_JWT_PS256, PB_JWT_ES256, PB_JWT_ES384, PB_JWT_EDDSA };
struct pb_jwt_key {
    EVP_PKEY *k;
    int alg;
};
/* Read a PEM private key and bind it to alg (NULL: the key's own default). */
int pb__jwt_key_load(const char *file, const char *alg, struct pb_jwt_key *out, struct pb_err *err);
void pb__jwt_key_free(struct pb_jwt_key *k);
const char *pb__jwt_alg_name(int alg);
/* iss, sub, aud, iat, exp (now + lifetime), a random jti, then extra (which
 * cannot set the times or the id). NULL on failure. */
json_t *pb__jwt_claims(const char *iss, const char *sub, const char *aud,
                       const struct pb_strmap *extra, int64_t now_ms, int64_t lifetime_ms);
/* The compact JWS of claims, malloc'd; NULL + err. */
char *pb__jwt_sign(const struct pb_jwt_key *key, const char *kid, json_t *claims,
                   struct pb_err *err);

/* ---- sources (oauth2.c) ------------------------------------------------------------------- */

struct pb_oauth2_src;
/* The source for conf, made or shared (a reference taken). A second user
 * whose other settings (secret, key, method, claims...) differ from the
 * first's is a configuration error. */
struct pb_oauth2_src *pb__oauth2_get(const struct pb_oauth2_conf *c,
                                     const struct pb_http_owner *owner, struct pb_err *err);
void pb__oauth2_put(struct pb_oauth2_src *s);
int pb__oauth2_header(struct pb_oauth2_src *s, struct pb_http_auth_ticket *t);
int pb__oauth2_wait(struct pb_oauth2_src *s, struct pb_http_auth_waiter *w, struct pb_loop *loop,
                    pb_http_auth_cb cb, void *arg);
bool pb__oauth2_cancel(struct pb_oauth2_src *s, struct pb_http_auth_waiter *w);
void pb__oauth2_rejected(struct pb_oauth2_src *s, uint64_t gen);
void pb__oauth2_error(struct pb_oauth2_src *s, char *buf, size_t len);
/* Call w back with status (posted to its loop; called directly when it has
 * none: a blocking waiter). */
int pb__oauth2_notify(struct pb_http_auth_waiter *w, int status, int64_t retry_in);
/* Fill the oauth2 part of st (strings borrowed from s, alive while s is). */
void pb__oauth2_status(struct pb_oauth2_src *s, struct pb_auth_status *st);
/* Every source (under the registry's lock: fn must not get or put one). */
void pb__oauth2_each(void (*fn)(void *arg, struct pb_oauth2_src *s), void *arg);

/* Another node of the cluster wrote the shared state of source key (NULL:
 * of any): read it back from store and take its token (and refresh
 * token) when it is newer than this node's. Blocks on the store: not on an
 * event loop. */
void pb__oauth2_kv_changed(struct pb_store *store, const char *key);

/* ---- form encoding, for tests ---------------------------------------------------------------- */

/* Append name=value (application/x-www-form-urlencoded, '&' first unless
 * empty) to the malloc'd *buf of *len bytes. 0 or PB_ENOMEM. */
int pb__form_add(char **buf, size_t *len, const char *name, const char *value);
/* s form-encoded (space as '+') appended to *buf. */
int pb__form_esc(char **buf, size_t *len, const char *s);

/* How long before expiry a token of lifetime_ms is renewed: refresh_before,
 * but at most a tenth of the lifetime. */
int64_t pb__oauth2_margin(int64_t lifetime_ms, int64_t refresh_before_ms);
/* Backoff after n consecutive failures (n >= 1), full jitter from rnd:
 * 1 s doubling to 5 min. */
int64_t pb__oauth2_backoff(int n, uint64_t rnd);

#endif
