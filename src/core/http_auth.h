/* http_auth.h - the core's side of outbound HTTP auth (pb_http_auth.h):
 * starting and stopping the OAuth2 token thread with the engine, and what
 * the admin API, /ready and the metrics show of tokens and TLS settings. */
#ifndef PB_CORE_HTTP_AUTH_H
#define PB_CORE_HTTP_AUTH_H

#include <stdbool.h>
#include <stdint.h>

#include "patchbay/pb_http_auth.h"
#include "store/pb_store.h"

/* Engine start, once the store runs and before any output or input starts:
 * rotated refresh tokens are read back from the store (scope "oauth2"),
 * and the token thread starts when some pipeline uses OAuth2. Until then
 * pb_http_auth_header answers PB_ESHUTDOWN for OAuth2. */
int pb__http_auth_start(struct pb_store *store, struct pb_err *err);
/* Engine stop, after inputs and outputs have stopped: waiters are called
 * back with PB_ESHUTDOWN, the thread ends. Idempotent. */
void pb__http_auth_stop(void);
/* Log a warning for every TLS setting that skips verification. */
void pb__http_tls_warn_insecure(void);

/* What one user's auth looks like now, for /api/pipelines. */
struct pb_auth_status {
    const char *kind;      /* "bearer", "basic", "api_key", "oauth2" */
    const char *token_url; /* oauth2 */
    const char *client_id;
    const char *grant;
    const char *state;     /* "ok", "fetching", "failing", "idle" (no token asked yet) */
    int64_t expires_in_ms; /* of the token held; -1 none */
    int64_t failing_since; /* unix ms; 0 when not failing */
    int64_t next_try_in_ms;
    uint64_t requests, failures;
    char error[256];
};
/* fn for each auth object owned by (pipeline, name). */
void pb__http_auth_each_status(const char *pipeline, const char *name,
                               void (*fn)(void *arg, const struct pb_auth_status *st), void *arg);
/* Does (pipeline, name) use TLS settings that skip verification? */
bool pb__http_tls_insecure_for(const char *pipeline, const char *name);
/* fn for every token endpoint failing now, with one of its users (for
 * /ready). */
void pb__http_auth_each_failing(void (*fn)(void *arg, const char *pipeline, const char *name,
                                           const struct pb_auth_status *st),
                                void *arg);
/* Prometheus lines for every token source (patchbay_oauth2_*), appended
 * with fn (printf-like into the metrics buffer). */
void pb__http_auth_metrics(void (*fn)(void *arg, const char *token_url, const char *client_id,
                                      uint64_t requests, uint64_t failures, bool valid),
                           void *arg);

#endif
