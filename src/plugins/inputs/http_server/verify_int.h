/* verify_int.h - what verify.c, verify_hmac.c and verify_jwt.c share: the
 * verifier's layout and the small strict decoders they all use. Not for
 * anything outside this folder. */
#ifndef PB_HTTP_SERVER_VERIFY_INT_H
#define PB_HTTP_SERVER_VERIFY_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "patchbay/pb_crypto.h"
#include "verify.h"

#define VFY_MAX_KEYS 16        /* secrets (or credentials) active at once */
#define VFY_MAX_SIGS 16        /* signatures read from one header */
#define VFY_MAX_MAC 64         /* SHA-512 */
#define VFY_MAX_HEADER 8192    /* longest signature/credential header read */
#define VFY_MAX_TEMPLATE 16    /* pieces in an hmac template */
#define VFY_MAX_FILE (1 << 20) /* PEM and JWKS files */
#define VFY_DEFAULT_TOLERANCE_MS (5 * 60 * 1000)
#define VFY_DEFAULT_LEEWAY_MS (60 * 1000)

/* Key algorithms, also used as a bit set of what a jwt verifier accepts. */
enum vfy_alg {
    VFY_HS256 = 1u << 0,
    VFY_RS256 = 1u << 1,
    VFY_ES256 = 1u << 2,
    VFY_ED25519 = 1u << 3,
};

/* Secret bytes: an HMAC key, or the SHA-256 of an API key or of
 * "user:password". Owned by the verifier, wiped when it is destroyed. */
struct vfy_key {
    unsigned char *bytes;
    size_t len;
};

/* A public key: ed25519 (standard-webhooks v1a), RSA or P-256 (jwt). */
struct vfy_pub {
    EVP_PKEY *pkey;
    unsigned alg;
    char *kid; /* NULL: matches any token */
};

enum vfy_tpl_kind { TPL_LIT = 0, TPL_BODY, TPL_TIMESTAMP, TPL_ID };
struct vfy_tpl {
    enum vfy_tpl_kind kind;
    char *lit; /* TPL_LIT */
    size_t len;
};

/* Read-only once pb_verifier_create() returns. */
struct pb_verifier {
    int scheme;
    struct vfy_key keys[VFY_MAX_KEYS];
    size_t nkeys;
    struct vfy_pub *pubs;
    size_t npubs;
    /* HMAC schemes */
    const char *digest; /* OpenSSL digest name */
    size_t mac_len;
    int encoding;
    char *header;
    char *prefix;
    char *ts_header;
    char *id_header;
    struct vfy_tpl tpl[VFY_MAX_TEMPLATE];
    size_t ntpl;
    int64_t tolerance_ms;
    /* api_key */
    char *query;
    bool use_header;
    /* jwt */
    unsigned algs;
    char **audience;
    size_t naudience;
    char *issuer;
    int64_t leeway_ms;
};

/* Unix seconds: 1 to 12 digits, nothing else. */
int pb__vfy_parse_seconds(const char *s, int64_t *sec);
bool pb__vfy_fresh(int64_t sec, int64_t now_ms, int64_t tolerance_ms);

/* HMAC of the pieces with every key of v (v->digest), into macs (nkeys
 * rows of VFY_MAX_MAC bytes). 0 or -1 (allocation failure). */
int pb__vfy_hmac_all(const struct pb_verifier *v, const struct pb_piece *pieces, size_t npieces,
                     unsigned char macs[][VFY_MAX_MAC]);
/* Whether sig equals any of the n MACs, in time independent of which one
 * (or whether any) matches. */
bool pb__vfy_match_any(unsigned char macs[][VFY_MAX_MAC], size_t n, size_t mac_len,
                       const unsigned char *sig, size_t sig_len);

/* Copy a provider's delivery id into res: 0, or -1 when it is empty, too
 * long or not visible ASCII. */
int pb__vfy_set_id(struct pb_verify_result *res, const char *id);
/* Fill res->reason and return PB_EDENIED. */
int pb__vfy_deny(struct pb_verify_result *res, enum pb_verify_reason why);

/* The secrets of c (secret, then secrets), with the field each came from
 * ("verify.secret", "verify.secrets[1]") for messages. Fails when there is
 * none or too many. names must hold VFY_MAX_KEYS rows. */
int pb__vfy_collect_secrets(const struct pb_verify_conf *c, const char **out, char names[][40],
                            size_t *n, struct pb_err *err);
/* Keep a copy of len bytes as key i of v. */
int pb__vfy_add_key(struct pb_verifier *v, const void *bytes, size_t len, struct pb_err *err);

int pb__vfy_hmac_init(struct pb_verifier *v, const struct pb_verify_conf *c, struct pb_err *err);
int pb__vfy_hmac_check(const struct pb_verifier *v, const struct pb_verify_req *req,
                       struct pb_verify_result *res);
int pb__vfy_jwt_init(struct pb_verifier *v, const struct pb_verify_conf *c, struct pb_err *err);
int pb__vfy_jwt_check(const struct pb_verifier *v, const struct pb_verify_req *req,
                      struct pb_verify_result *res);

#endif
