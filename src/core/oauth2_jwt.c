/* oauth2_jwt.c - the JSON Web Tokens patchbay signs for OAuth2 (RFC 7523):
 * the assertion of the jwt_bearer grant and the client assertion of
 * private_key_jwt. A private key is read from its PEM file once, when the
 * configuration is loaded, and bound to one algorithm: RS256, PS256 (RSA
 * of 2048 bits or more), ES256 (P-256), ES384 (P-384) or EdDSA (Ed25519).
 *
 * Pure functions of the key, the claims and the clock (passed in): signing
 * runs on the token thread, tests call it directly. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "core/oauth2.h"
#include "patchbay/pb_crypto.h"

#define KEY_FILE_MAX (64 * 1024)
#define MIN_RSA_BITS 2048

static const char *const alg_names[] = {
    [PB_JWT_RS256] = "RS256", [PB_JWT_PS256] = "PS256", [PB_JWT_ES256] = "ES256",
    [PB_JWT_ES384] = "ES384", [PB_JWT_EDDSA] = "EdDSA",
};

const char *pb__jwt_alg_name(int alg)
{
    return alg >= 0 && alg <= PB_JWT_EDDSA ? alg_names[alg] : "?";
}

static int pass_cb(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1; /* encrypted keys are refused: there is no password option */
}

int pb__jwt_key_load(const char *file, const char *alg, struct pb_jwt_key *out, struct pb_err *err)
{
    int rc = 0;
    char group[64] = "";
    memset(out, 0, sizeof(*out));
    BIO *b = BIO_new_file(file, "r");
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, pass_cb, NULL) : NULL;
    BIO_free(b);
    if (!k) {
        rc = pb_err_set(err, PB_ECONFIG,
                        "oauth2.private_key \"%s\": not a readable, unencrypted PEM private key",
                        file);
        goto out;
    }
    int def = -1;
    switch (EVP_PKEY_get_base_id(k)) {
    case EVP_PKEY_RSA:
        if (EVP_PKEY_get_bits(k) < MIN_RSA_BITS) {
            rc = pb_err_set(err, PB_ECONFIG,
                            "oauth2.private_key \"%s\": an RSA key of %d bits is too weak (at "
                            "least %d)",
                            file, EVP_PKEY_get_bits(k), MIN_RSA_BITS);
            goto out;
        }
        def = PB_JWT_RS256;
        break;
    case EVP_PKEY_EC:
        EVP_PKEY_get_group_name(k, group, sizeof(group), NULL);
        if (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0)
            def = PB_JWT_ES256;
        else if (strcmp(group, "secp384r1") == 0 || strcmp(group, "P-384") == 0)
            def = PB_JWT_ES384;
        break;
    case EVP_PKEY_ED25519:
        def = PB_JWT_EDDSA;
        break;
    default:
        break;
    }
    if (def < 0) {
        rc = pb_err_set(err, PB_ECONFIG,
                        "oauth2.private_key \"%s\": a key of type %s%s%s; use RSA, EC P-256, EC "
                        "P-384 or Ed25519",
                        file, EVP_PKEY_get0_type_name(k) ? EVP_PKEY_get0_type_name(k) : "?",
                        group[0] ? " " : "", group);
        goto out;
    }
    int chosen = def;
    if (alg) {
        chosen = -1;
        for (int i = 0; i <= PB_JWT_EDDSA; i++)
            if (strcmp(alg, alg_names[i]) == 0)
                chosen = i;
        bool fits = chosen == def || (def == PB_JWT_RS256 && chosen == PB_JWT_PS256);
        if (chosen < 0 || !fits) {
            rc = pb_err_set(err, PB_ECONFIG,
                            "oauth2.algorithm \"%s\" does not fit the key in \"%s\" (%s%s)", alg,
                            file, def == PB_JWT_RS256 ? "RS256 or PS256" : alg_names[def], "");
            goto out;
        }
    }
    out->k = k;
    out->alg = chosen;
    k = NULL;
out:
    EVP_PKEY_free(k);
    ERR_clear_error();
    return rc;
}

void pb__jwt_key_free(struct pb_jwt_key *k)
{
    if (!k)
        return;
    EVP_PKEY_free(k->k);
    k->k = NULL;
}

/* base64url of a JSON object's compact text, appended at out + *n. */
static int b64_json(json_t *o, char *out, size_t cap, size_t *n)
{
    char *txt = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    if (!txt)
        return PB_ENOMEM;
    size_t w = pb_base64_encode(txt, strlen(txt), true, out + *n, cap - *n);
    free(txt);
    if (!w)
        return PB_ETOOBIG;
    *n += w;
    return 0;
}

/* ECDSA's DER signature as JWS wants it: r and s, each of width bytes. */
static int ecdsa_raw(const unsigned char *der, size_t dlen, size_t width, unsigned char *out)
{
    const unsigned char *p = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)dlen);
    if (!sig)
        return -1;
    const BIGNUM *r = NULL, *s = NULL;
    ECDSA_SIG_get0(sig, &r, &s);
    int ok = BN_bn2binpad(r, out, (int)width) == (int)width &&
             BN_bn2binpad(s, out + width, (int)width) == (int)width;
    ECDSA_SIG_free(sig);
    return ok ? 0 : -1;
}

char *pb__jwt_sign(const struct pb_jwt_key *key, const char *kid, json_t *claims,
                   struct pb_err *err)
{
    char *out = NULL;
    unsigned char *sig = NULL;
    EVP_MD_CTX *md = NULL;
    json_t *hdr = json_pack("{s:s, s:s}", "alg", alg_names[key->alg], "typ", "JWT");
    size_t cap = 32 * 1024, n = 0;
    char *buf = malloc(cap);
    if (!hdr || !buf || (kid && json_object_set_new(hdr, "kid", json_string(kid)) != 0)) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        goto out;
    }
    if (b64_json(hdr, buf, cap, &n) != 0 || n + 1 >= cap) {
        pb_err_set(err, PB_ETOOBIG, "JWT header too large");
        goto out;
    }
    buf[n++] = '.';
    if (b64_json(claims, buf, cap, &n) != 0) {
        pb_err_set(err, PB_ETOOBIG, "JWT claims too large");
        goto out;
    }
    const EVP_MD *dg = NULL;
    switch (key->alg) {
    case PB_JWT_RS256:
    case PB_JWT_PS256:
    case PB_JWT_ES256:
        dg = EVP_sha256();
        break;
    case PB_JWT_ES384:
        dg = EVP_sha384();
        break;
    default:
        dg = NULL; /* EdDSA signs the message itself */
    }
    EVP_PKEY_CTX *pctx = NULL;
    md = EVP_MD_CTX_new();
    if (!md || EVP_DigestSignInit(md, &pctx, dg, NULL, key->k) != 1)
        goto ssl;
    if (key->alg == PB_JWT_PS256 &&
        (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
         EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1))
        goto ssl;
    size_t slen = 0;
    if (EVP_DigestSign(md, NULL, &slen, (const unsigned char *)buf, n) != 1)
        goto ssl;
    sig = malloc(slen);
    if (!sig || EVP_DigestSign(md, sig, &slen, (const unsigned char *)buf, n) != 1)
        goto ssl;
    unsigned char raw[2 * 48];
    const unsigned char *s = sig;
    if (key->alg == PB_JWT_ES256 || key->alg == PB_JWT_ES384) {
        size_t width = key->alg == PB_JWT_ES256 ? 32 : 48;
        if (ecdsa_raw(sig, slen, width, raw) != 0)
            goto ssl;
        s = raw;
        slen = 2 * width;
    }
    buf[n++] = '.';
    size_t w = pb_base64_encode(s, slen, true, buf + n, cap - n);
    if (!w) {
        pb_err_set(err, PB_ETOOBIG, "JWT too large");
        goto out;
    }
    out = buf;
    buf = NULL;
    goto out;
ssl:
    pb_err_set(err, PB_EINTERNAL, "signing the JWT failed");
out:
    ERR_clear_error();
    EVP_MD_CTX_free(md);
    free(sig);
    free(buf);
    json_decref(hdr);
    return out;
}

json_t *pb__jwt_claims(const char *iss, const char *sub, const char *aud,
                       const struct pb_strmap *extra, int64_t now_ms, int64_t lifetime_ms)
{
    unsigned char rnd[16];
    char jti[40];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
        return NULL;
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(jti + 2 * i, 3, "%02x", rnd[i]);
    json_int_t iat = (json_int_t)(now_ms / 1000);
    json_int_t exp = (json_int_t)((now_ms + lifetime_ms) / 1000);
    json_t *c = json_pack("{s:s, s:s, s:s, s:I, s:I, s:s}", "iss", iss, "sub", sub, "aud", aud,
                          "iat", iat, "exp", exp, "jti", jti);
    if (!c)
        return NULL;
    for (size_t i = 0; extra && i < extra->n; i++) {
        /* The times and the id are the signer's to set. */
        const char *k = extra->keys[i];
        if (strcmp(k, "iat") == 0 || strcmp(k, "exp") == 0 || strcmp(k, "jti") == 0 ||
            strcmp(k, "nbf") == 0)
            continue;
        if (json_object_set_new(c, k, json_string(extra->vals[i])) != 0) {
            json_decref(c);
            return NULL;
        }
    }
    return c;
}
