/* webhooks.h - the `webhook` output: Standard Webhooks signing, endpoints
 * (static in YAML or managed through the admin API), fan-out by event type,
 * and endpoint health (410 Gone and continuous failure disable it). */
#ifndef PB_WEBHOOKS_H
#define PB_WEBHOOKS_H

#include "core/engine.h"

extern const struct pb_output_plugin pb_out_webhook;

struct pb_webhook_endpoint;

bool pb_webhook_is(const struct pb_output *o);
bool pb_webhook_managed(const struct pb_output *o);
/* How many static endpoints of the configuration have this id; the first
 * one's pipeline, output and url. Any thread (the configuration is fixed). */
int pb_webhook_static_find(struct pb_engine *e, const char *id, const char **pipeline,
                           const char **output, const char **url);

/* A static endpoint as the configuration gives it (borrowed). */
struct pb_webhook_static_view {
    const char *pipeline, *output, *id, *url, *description;
    const char *const *events;
    size_t nevents;
};
/* fn for every static endpoint of every webhook output, in configuration
 * order. Any thread. */
void pb_webhook_static_each(struct pb_engine *e,
                            void (*fn)(void *arg, const struct pb_webhook_static_view *v),
                            void *arg);
int64_t pb_webhook_rotation_overlap(const struct pb_output *o);

/* A new "whsec_" secret (24 random bytes) into buf (>= 64 bytes). */
int pb_webhook_new_secret(char *buf, size_t len);
/* Validate a secret ("whsec_" + base64 of 24..64 bytes). */
bool pb_webhook_secret_ok(const char *s);
/* An event-type pattern: "a.b", "a.*" or "*". */
bool pb_webhook_pattern_ok(const char *p);
bool pb_webhook_pattern_match(const char *pattern, const char *type);

/* Dispatcher side (dispatcher thread only). */

/* Create the virtual outputs of o's static endpoints. */
int pb_webhook_start(struct pb_dispatcher *d, struct pb_output *o, struct pb_err *err);
/* Bring o's managed endpoints in line with the store. */
void pb_webhook_sync(struct pb_dispatcher *d, struct pb_engine *e, struct pb_output *o);
/* Fan dl's message out: event type, matching endpoints, FANOUT op. Returns
 * 0 when handed to the store (the caller finishes dl), or a negative code
 * with err (the caller dead-letters dl). */
struct pb_dl;
int pb_webhook_fanout(struct pb_dispatcher *d, struct pb_engine *e, struct pb_output *o,
                      struct pb_msg *msg, int64_t delivery_id, int attempt, struct pb_err *err);
/* Free the virtual outputs' endpoint state (engine stop). */
void pb_webhook_free_endpoint(struct pb_output *vout);

#endif
