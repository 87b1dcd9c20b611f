/* verify.h - the `verify` block of the http_server input: who may post to
 * an ingest route.
 *
 * The block is decoded with pb_verify_fields into a struct pb_verify_conf;
 * pb_verifier_create() checks it, decodes every key (whsec_/whpk_ keys,
 * PEM files, JWK sets) and returns a verifier that is read-only from then
 * on, so the listener may call pb_verifier_check() from several threads at
 * once. Nothing secret is ever written to an error, a log line or a result. */
#ifndef PB_HTTP_SERVER_VERIFY_H
#define PB_HTTP_SERVER_VERIFY_H

#include <stdint.h>

#include "patchbay/pb_plugin.h"

enum pb_verify_scheme {
    PB_SCHEME_NONE = 0, /* no verification (the same as no verify block) */
    PB_SCHEME_STANDARD_WEBHOOKS,
    PB_SCHEME_GITHUB,
    PB_SCHEME_STRIPE,
    PB_SCHEME_SHOPIFY,
    PB_SCHEME_HMAC,
    PB_SCHEME_API_KEY,
    PB_SCHEME_BASIC,
    PB_SCHEME_JWT,
};

enum pb_verify_digest { PB_DIGEST_SHA256 = 0, PB_DIGEST_SHA1, PB_DIGEST_SHA512 };
enum pb_verify_encoding { PB_ENCODING_HEX = 0, PB_ENCODING_BASE64 };

/* The decoded block (pb_verify_fields). Options a scheme does not use are
 * refused by pb_verifier_create(). */
struct pb_verify_conf {
    int scheme; /* enum pb_verify_scheme */
    char *secret;
    struct pb_strlist secrets;
    int64_t tolerance_ms;
    char *header;
    int algorithm; /* enum pb_verify_digest */
    int encoding;  /* enum pb_verify_encoding */
    char *prefix;
    char *template;
    char *timestamp_header;
    char *id_header;
    char *query;
    char *user;
    char *password;
    struct pb_strlist credentials;
    struct pb_strlist algorithms;
    struct pb_strlist public_key_file;
    char *jwks_file;
    struct pb_strlist audience;
    char *issuer;
    int64_t leeway_ms;
};

extern const struct pb_field pb_verify_fields[];
extern const char *const pb_verify_scheme_names[];

struct pb_verifier;

/* 0 when every option given in c applies to c->scheme (scheme none takes
 * none), PB_ECONFIG naming the first that does not. */
int pb_verify_conf_check(const struct pb_verify_conf *c, struct pb_err *err);

/* Build a verifier from c (borrowed for the call only: what is needed is
 * copied). Returns NULL with a PB_ECONFIG error naming the field
 * ("verify.secret: ...") or PB_ENOMEM. c->scheme must not be NONE. */
struct pb_verifier *pb_verifier_create(const struct pb_verify_conf *c, struct pb_err *err);
void pb_verifier_destroy(struct pb_verifier *v);

/* A pb_verify_fn: ctx is a const struct pb_verifier *. */
int pb_verifier_check(const void *ctx, const struct pb_verify_req *req,
                      struct pb_verify_result *res);

#endif
