/* http_tls.h - the TLS settings of outbound HTTP requests as prepared from
 * a `tls:` block (http_tls.c), applied to each transfer by http_client.c.
 * Not for use outside src/net and src/core. */
#ifndef PB_NET_HTTP_TLS_H
#define PB_NET_HTTP_TLS_H

#include <stdbool.h>

#include "patchbay/pb_http_auth.h"

/* Immutable once created; read by any thread. */
struct pb_http_tls {
    char *ca_file, *cert_file, *key_file, *key_password, *server_name;
    int min_version; /* enum pb_tls_version */
    bool insecure;   /* insecure_skip_verify */
    char *pipeline, *owner;
    struct pb_http_tls *prev, *next; /* every live one (reporting) */
};

/* Call fn for every live TLS setting that skips verification: the engine's
 * warning at start and the admin API. Under a lock: fn must not create or
 * destroy one. */
void pb__http_tls_each_insecure(void (*fn)(void *arg, const struct pb_http_tls *t), void *arg);

#endif
