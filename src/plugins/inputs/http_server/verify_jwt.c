/* verify_jwt.c - the jwt scheme: a JSON Web Token in a request header,
 * signed with HS256 (shared secrets), RS256 (RSA keys) or ES256 (P-256
 * keys), keys from PEM files or a JSON Web Key Set read at init.
 *
 * Every key is bound to one algorithm when it is loaded, and a token is
 * only checked with keys of the algorithm it names, if that algorithm is
 * allowed: "none" never is, and an HS256 token can never be checked with
 * the bytes of an RSA public key. Claims are checked after the signature:
 * exp and nbf (with leeway), aud and iss when configured. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "verify_int.h"

#define JWT_MAX_TOKEN 16384
#define JWT_MAX_HEADER 4096
#define JWT_MAX_SIG 1024 /* RSA up to 8192 bits */
#define JWT_MIN_RSA_BITS 2048

static const struct {
    const char *name;
    unsigned alg;
} algs[] = {{"HS256", VFY_HS256}, {"RS256", VFY_RS256}, {"ES256", VFY_ES256}};

static unsigned alg_of(const char *name)
{
    for (size_t i = 0; name && i < sizeof(algs) / sizeof(algs[0]); i++)
        if (strcmp(name, algs[i].name) == 0)
            return algs[i].alg;
    return 0;
}

/* ---- keys ---------------------------------------------------------------------------------- */

/* Bind k (taken over, freed on failure) to RS256 or ES256 and keep it. */
static int add_pub(struct pb_verifier *v, EVP_PKEY *k, const char *kid, const char *what,
                   struct pb_err *err)
{
    unsigned alg = 0;
    int rc = 0;
    char group[64] = "";
    EVP_PKEY_CTX *chk = NULL;

    switch (EVP_PKEY_get_base_id(k)) {
    case EVP_PKEY_RSA:
        if (EVP_PKEY_get_bits(k) < JWT_MIN_RSA_BITS) {
            rc = pb_err_set(err, PB_ECONFIG, "%s: an RSA key of %d bits is too weak (at least %d)",
                            what, EVP_PKEY_get_bits(k), JWT_MIN_RSA_BITS);
            goto out;
        }
        alg = VFY_RS256;
        break;
    case EVP_PKEY_EC:
        if (!EVP_PKEY_get_group_name(k, group, sizeof(group), NULL) ||
            (strcmp(group, "prime256v1") != 0 && strcmp(group, "P-256") != 0)) {
            rc = pb_err_set(err, PB_ECONFIG, "%s: an EC key on curve %s; ES256 needs P-256", what,
                            group[0] ? group : "(unknown)");
            goto out;
        }
        chk = EVP_PKEY_CTX_new_from_pkey(NULL, k, NULL);
        if (!chk || EVP_PKEY_public_check(chk) != 1) {
            rc = pb_err_set(err, PB_ECONFIG, "%s: the EC public key is not a valid P-256 point",
                            what);
            goto out;
        }
        alg = VFY_ES256;
        break;
    default:
        rc = pb_err_set(err, PB_ECONFIG,
                        "%s: a %s key is not supported (RS256 needs RSA, ES256 needs EC P-256)",
                        what, EVP_PKEY_get0_type_name(k) ? EVP_PKEY_get0_type_name(k) : "?");
        goto out;
    }
    struct vfy_pub *p = realloc(v->pubs, (v->npubs + 1) * sizeof(*p));
    if (!p) {
        rc = pb_err_set(err, PB_ENOMEM, "out of memory");
        goto out;
    }
    v->pubs = p;
    char *kid_copy = kid ? strdup(kid) : NULL;
    if (kid && !kid_copy) {
        rc = pb_err_set(err, PB_ENOMEM, "out of memory");
        goto out;
    }
    v->pubs[v->npubs++] = (struct vfy_pub){.pkey = k, .alg = alg, .kid = kid_copy};
    k = NULL;
out:
    EVP_PKEY_CTX_free(chk);
    EVP_PKEY_free(k);
    ERR_clear_error();
    return rc;
}

/* The whole file into a NUL-terminated buffer (at most VFY_MAX_FILE). */
static char *read_file(const char *path, const char *field, size_t *len, struct pb_err *err)
{
    char *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        pb_err_set(err, PB_ECONFIG, "%s: cannot open %s: %s", field, path, strerror(errno));
        return NULL;
    }
    buf = malloc(VFY_MAX_FILE + 1);
    if (!buf) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        goto out;
    }
    size_t n = fread(buf, 1, VFY_MAX_FILE + 1, f);
    if (ferror(f) || n > VFY_MAX_FILE) {
        pb_err_set(err, PB_ECONFIG, "%s: %s: %s", field, path,
                   ferror(f) ? "read error" : "larger than 1MiB");
        free(buf);
        buf = NULL;
        goto out;
    }
    buf[n] = 0;
    *len = n;
out:
    fclose(f);
    return buf;
}

/* Every PUBLIC KEY or CERTIFICATE block of a PEM file. */
static int load_pem(struct pb_verifier *v, const char *path, size_t idx, struct pb_err *err)
{
    char what[64];
    snprintf(what, sizeof(what), "verify.public_key_file[%zu]", idx);
    size_t len = 0, found = 0;
    char *text = read_file(path, what, &len, err);
    if (!text)
        return err ? err->code : PB_ECONFIG;
    int rc = 0;
    BIO *b = BIO_new_mem_buf(text, (int)len);
    if (!b) {
        rc = pb_err_set(err, PB_ENOMEM, "out of memory");
        goto out;
    }
    for (;;) {
        char *name = NULL, *header = NULL;
        unsigned char *data = NULL;
        long dlen = 0;
        if (!PEM_read_bio(b, &name, &header, &data, &dlen)) {
            unsigned long e = ERR_peek_last_error();
            if (found && ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE)
                break;
            rc = pb_err_set(err, PB_ECONFIG, "%s: %s holds no PEM public key", what, path);
            goto out;
        }
        const unsigned char *p = data;
        EVP_PKEY *k = NULL;
        if (strcmp(name, "PUBLIC KEY") == 0) {
            k = d2i_PUBKEY(NULL, &p, dlen);
        } else if (strcmp(name, "CERTIFICATE") == 0) {
            X509 *x = d2i_X509(NULL, &p, dlen);
            k = x ? X509_get_pubkey(x) : NULL;
            X509_free(x);
        } else if (strstr(name, "PRIVATE KEY")) {
            rc = pb_err_set(err, PB_ECONFIG, "%s: %s holds a private key; give the public key",
                            what, path);
        } else {
            rc = pb_err_set(err, PB_ECONFIG,
                            "%s: %s: a \"%s\" block; expected PUBLIC KEY or CERTIFICATE", what,
                            path, name);
        }
        if (!rc && !k)
            rc = pb_err_set(err, PB_ECONFIG, "%s: %s: a %s block that does not decode", what, path,
                            name);
        OPENSSL_free(name);
        OPENSSL_free(header);
        OPENSSL_free(data);
        if (rc)
            goto out;
        if ((rc = add_pub(v, k, NULL, what, err)))
            goto out;
        found++;
    }
out:
    BIO_free(b);
    free(text);
    ERR_clear_error();
    return rc;
}

/* A base64url member of a JWK, decoded (at most cap bytes). */
static int jwk_bytes(json_t *jwk, const char *member, unsigned char *out, size_t cap, size_t *len)
{
    const char *s = json_string_value(json_object_get(jwk, member));
    return s ? pb_base64_decode(s, strlen(s), true, out, cap, len) : -1;
}

static EVP_PKEY *jwk_rsa(json_t *jwk)
{
    unsigned char n[1024], e[16];
    size_t nl = 0, el = 0;
    EVP_PKEY *k = NULL;
    BIGNUM *bn = NULL, *be = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    if (jwk_bytes(jwk, "n", n, sizeof(n), &nl) || jwk_bytes(jwk, "e", e, sizeof(e), &el) ||
        nl == 0 || el == 0)
        goto out;
    bn = BN_bin2bn(n, (int)nl, NULL);
    be = BN_bin2bn(e, (int)el, NULL);
    bld = OSSL_PARAM_BLD_new();
    if (!bn || !be || !bld || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) ||
        !(params = OSSL_PARAM_BLD_to_param(bld)))
        goto out;
    ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    if (!ctx || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &k, EVP_PKEY_PUBLIC_KEY, params) != 1)
        k = NULL;
out:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    return k;
}

static EVP_PKEY *jwk_ec(json_t *jwk)
{
    unsigned char pt[65] = {0x04};
    size_t xl = 0, yl = 0;
    EVP_PKEY *k = NULL;
    if (jwk_bytes(jwk, "x", pt + 1, 32, &xl) || jwk_bytes(jwk, "y", pt + 33, 32, &yl) || xl != 32 ||
        yl != 32)
        return NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)"P-256", 0),
        OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof(pt)),
        OSSL_PARAM_construct_end(),
    };
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (!ctx || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &k, EVP_PKEY_PUBLIC_KEY, params) != 1)
        k = NULL;
    EVP_PKEY_CTX_free(ctx);
    return k;
}

/* The signing keys of a JWK Set: RSA and EC P-256 keys with use "sig" (or
 * no use) and alg RS256/ES256 (or no alg). Other keys (encryption keys,
 * other algorithms and curves) are skipped; a usable-looking key that does
 * not decode is an error. */
static int load_jwks(struct pb_verifier *v, const char *path, struct pb_err *err)
{
    size_t len = 0, added = 0;
    char *text = read_file(path, "verify.jwks_file", &len, err);
    if (!text)
        return err ? err->code : PB_ECONFIG;
    int rc = 0;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    json_t *keys = json_object_get(root, "keys");
    if (!root) {
        rc = pb_err_set(err, PB_ECONFIG, "verify.jwks_file: %s: %s (line %d)", path, jerr.text,
                        jerr.line);
        goto out;
    }
    if (!json_is_array(keys)) {
        rc = pb_err_set(err, PB_ECONFIG, "verify.jwks_file: %s: expected {\"keys\": [...]}", path);
        goto out;
    }
    for (size_t i = 0; i < json_array_size(keys); i++) {
        json_t *jwk = json_array_get(keys, i);
        char what[300];
        if (!json_is_object(jwk)) {
            rc = pb_err_set(err, PB_ECONFIG, "verify.jwks_file: %s: key %zu is not an object", path,
                            i);
            goto out;
        }
        const char *kty = json_string_value(json_object_get(jwk, "kty"));
        const char *use = json_string_value(json_object_get(jwk, "use"));
        const char *alg = json_string_value(json_object_get(jwk, "alg"));
        const char *crv = json_string_value(json_object_get(jwk, "crv"));
        json_t *kidv = json_object_get(jwk, "kid");
        const char *kid = json_string_value(kidv);
        if ((kidv && !kid) || (kid && strlen(kid) > PB_WEBHOOK_ID_MAX)) {
            rc = pb_err_set(err, PB_ECONFIG, "verify.jwks_file: %s: key %zu: bad \"kid\"", path, i);
            goto out;
        }
        if (!kty || (use && strcmp(use, "sig") != 0) || (alg && !alg_of(alg)))
            continue;
        bool rsa = strcmp(kty, "RSA") == 0;
        bool ec = strcmp(kty, "EC") == 0 && crv && strcmp(crv, "P-256") == 0;
        if (!rsa && !ec)
            continue;
        snprintf(what, sizeof(what), "verify.jwks_file: key %zu%s%.64s%s", i, kid ? " (kid \"" : "",
                 kid ? kid : "", kid ? "\")" : "");
        if (alg && alg_of(alg) != (rsa ? VFY_RS256 : VFY_ES256)) {
            rc = pb_err_set(err, PB_ECONFIG, "%s: alg %s does not fit kty %s", what, alg, kty);
            goto out;
        }
        EVP_PKEY *k = rsa ? jwk_rsa(jwk) : jwk_ec(jwk);
        if (!k) {
            rc = pb_err_set(err, PB_ECONFIG, "%s: bad %s (base64url, no padding)", what,
                            rsa ? "\"n\" or \"e\"" : "\"x\" or \"y\" (32 bytes each)");
            goto out;
        }
        if ((rc = add_pub(v, k, kid, what, err)))
            goto out;
        added++;
    }
    if (added == 0)
        rc = pb_err_set(err, PB_ECONFIG, "verify.jwks_file: %s holds no RS256 or ES256 signing key",
                        path);
out:
    json_decref(root);
    free(text);
    ERR_clear_error();
    return rc;
}

int pb__vfy_jwt_init(struct pb_verifier *v, const struct pb_verify_conf *c, struct pb_err *err)
{
    int rc;
    unsigned have = 0;
    if (c->secret || c->secrets.n) {
        const char *secrets[VFY_MAX_KEYS];
        char names[VFY_MAX_KEYS][40];
        size_t n = 0;
        if ((rc = pb__vfy_collect_secrets(c, secrets, names, &n, err)))
            return rc;
        for (size_t i = 0; i < n; i++)
            if ((rc = pb__vfy_add_key(v, secrets[i], strlen(secrets[i]), err)))
                return rc;
        v->digest = "SHA256";
        v->mac_len = 32;
        have |= VFY_HS256;
    }
    for (size_t i = 0; i < c->public_key_file.n; i++)
        if ((rc = load_pem(v, c->public_key_file.items[i], i, err)))
            return rc;
    if (c->jwks_file && (rc = load_jwks(v, c->jwks_file, err)))
        return rc;
    for (size_t i = 0; i < v->npubs; i++)
        have |= v->pubs[i].alg;
    if (!have)
        return pb_err_set(err, PB_ECONFIG,
                          "verify: scheme jwt needs secret (HS256), public_key_file or jwks_file");
    v->algs = have;
    if (c->algorithms.n) {
        v->algs = 0;
        for (size_t i = 0; i < c->algorithms.n; i++) {
            const char *a = c->algorithms.items[i];
            unsigned bit = alg_of(a);
            if (strcasecmp(a, "none") == 0)
                return pb_err_set(
                    err, PB_ECONFIG,
                    "verify.algorithms: \"none\" (unsigned tokens) is never accepted");
            if (!bit)
                return pb_err_set(err, PB_ECONFIG,
                                  "verify.algorithms: \"%s\" is not supported (HS256, RS256, "
                                  "ES256)",
                                  a);
            if (!(have & bit))
                return pb_err_set(err, PB_ECONFIG,
                                  "verify.algorithms: %s is listed but no %s is configured", a,
                                  bit == VFY_HS256   ? "secret"
                                  : bit == VFY_RS256 ? "RSA key"
                                                     : "EC P-256 key");
            v->algs |= bit;
        }
    }
    if (c->audience.n) {
        v->audience = calloc(c->audience.n, sizeof(*v->audience));
        if (!v->audience)
            return pb_err_set(err, PB_ENOMEM, "out of memory");
        for (size_t i = 0; i < c->audience.n; i++) {
            if (!(v->audience[i] = strdup(c->audience.items[i])))
                return pb_err_set(err, PB_ENOMEM, "out of memory");
            v->naudience = i + 1;
        }
    }
    if (c->issuer && !(v->issuer = strdup(c->issuer)))
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    if (c->leeway_ms < 0)
        return pb_err_set(err, PB_ECONFIG, "verify.leeway must not be negative");
    return 0;
}

/* ---- requests ------------------------------------------------------------------------------ */

/* A base64url JSON object of at most cap decoded bytes, or NULL. */
static json_t *b64_json(const char *s, size_t len, size_t cap)
{
    if (len > cap / 3 * 4 + 3)
        return NULL;
    unsigned char *buf = malloc(cap);
    size_t n = 0;
    json_t *j = NULL;
    if (buf && pb_base64_decode(s, len, true, buf, cap, &n) == 0)
        j = json_loadb((const char *)buf, n, JSON_REJECT_DUPLICATES, NULL);
    free(buf);
    if (j && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

/* JWS ES256 signatures are r||s; OpenSSL wants DER. */
static unsigned char *es256_der(const unsigned char *rs, size_t len, int *der_len)
{
    unsigned char *der = NULL;
    if (len != 64)
        return NULL;
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(rs, 32, NULL), *s = BN_bin2bn(rs + 32, 32, NULL);
    if (!sig || !r || !s || !ECDSA_SIG_set0(sig, r, s)) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(sig);
        return NULL;
    }
    *der_len = i2d_ECDSA_SIG(sig, &der);
    ECDSA_SIG_free(sig);
    if (*der_len <= 0) {
        OPENSSL_free(der);
        return NULL;
    }
    return der;
}

static bool pub_verify(const struct pb_verifier *v, unsigned alg, const char *kid,
                       const char *input, size_t input_len, const unsigned char *sig,
                       size_t sig_len)
{
    unsigned char *der = NULL;
    int der_len = 0;
    if (alg == VFY_ES256) {
        if (!(der = es256_der(sig, sig_len, &der_len)))
            return false;
        sig = der;
        sig_len = (size_t)der_len;
    }
    bool ok = false;
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    for (size_t k = 0; m && k < v->npubs && !ok; k++) {
        const struct vfy_pub *p = &v->pubs[k];
        if (p->alg != alg || (kid && p->kid && strcmp(kid, p->kid) != 0))
            continue;
        EVP_MD_CTX_reset(m);
        ok = EVP_DigestVerifyInit(m, NULL, EVP_sha256(), NULL, p->pkey) == 1 &&
             EVP_DigestVerify(m, sig, sig_len, (const unsigned char *)input, input_len) == 1;
    }
    EVP_MD_CTX_free(m);
    OPENSSL_free(der);
    return ok;
}

static bool aud_one(const struct pb_verifier *v, json_t *aud)
{
    const char *s = json_string_value(aud);
    for (size_t i = 0; s && i < v->naudience; i++)
        if (strcmp(s, v->audience[i]) == 0)
            return true;
    return false;
}

/* aud is a string or an array of strings; one configured value must be in it. */
static bool aud_ok(const struct pb_verifier *v, json_t *aud)
{
    if (!json_is_array(aud))
        return aud_one(v, aud);
    for (size_t j = 0; j < json_array_size(aud); j++)
        if (aud_one(v, json_array_get(aud, j)))
            return true;
    return false;
}

static enum pb_verify_reason claims(const struct pb_verifier *v, json_t *p, int64_t now_ms)
{
    double now = (double)now_ms / 1000.0, leeway = (double)v->leeway_ms / 1000.0;
    json_t *exp = json_object_get(p, "exp"), *nbf = json_object_get(p, "nbf");
    if (exp && (!json_is_number(exp) || now >= json_number_value(exp) + leeway))
        return PB_VERIFY_CLAIMS;
    if (nbf && (!json_is_number(nbf) || now + leeway < json_number_value(nbf)))
        return PB_VERIFY_CLAIMS;
    if (v->issuer) {
        const char *iss = json_string_value(json_object_get(p, "iss"));
        if (!iss || strcmp(iss, v->issuer) != 0)
            return PB_VERIFY_CLAIMS;
    }
    if (v->naudience && !aud_ok(v, json_object_get(p, "aud")))
        return PB_VERIFY_CLAIMS;
    return PB_VERIFY_REASON_COUNT; /* none */
}

int pb__vfy_jwt_check(const struct pb_verifier *v, const struct pb_verify_req *req,
                      struct pb_verify_result *res)
{
    const char *tok = req->header(req->conn, v->header);
    if (!tok)
        return pb__vfy_deny(res, PB_VERIFY_MISSING);
    if (strncasecmp(tok, "Bearer ", 7) == 0) {
        tok += 7;
        while (*tok == ' ')
            tok++;
    } else if (strcasecmp(v->header, "Authorization") == 0) {
        return pb__vfy_deny(res, PB_VERIFY_MALFORMED);
    }
    size_t len = strlen(tok);
    const char *d1 = memchr(tok, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - tok)) : NULL;
    if (len == 0 || len > JWT_MAX_TOKEN || !d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - tok)))
        return pb__vfy_deny(res, PB_VERIFY_MALFORMED);

    int rc = 0;
    json_t *hdr = b64_json(tok, (size_t)(d1 - tok), JWT_MAX_HEADER), *payload = NULL;
    const char *alg_s = json_string_value(json_object_get(hdr, "alg"));
    json_t *kidv = json_object_get(hdr, "kid");
    const char *kid = json_string_value(kidv);
    if (!hdr || !alg_s || (kidv && !kid) || json_object_get(hdr, "crit")) {
        rc = pb__vfy_deny(res, PB_VERIFY_MALFORMED);
        goto out;
    }
    /* The token names its algorithm; only an allowed one, checked with keys
     * bound to it, can pass. "none" and everything else are no signature. */
    unsigned alg = alg_of(alg_s);
    if (!(alg & v->algs)) {
        rc = pb__vfy_deny(res, PB_VERIFY_SIGNATURE);
        goto out;
    }
    unsigned char sig[JWT_MAX_SIG];
    size_t sig_len = 0;
    const char *s64 = d2 + 1;
    if (pb_base64_decode(s64, len - (size_t)(s64 - tok), true, sig, sizeof(sig), &sig_len)) {
        rc = pb__vfy_deny(res, PB_VERIFY_MALFORMED);
        goto out;
    }
    const struct pb_piece input = {tok, (size_t)(d2 - tok)};
    bool ok = false;
    if (alg == VFY_HS256) {
        unsigned char macs[VFY_MAX_KEYS][VFY_MAX_MAC];
        ok = pb__vfy_hmac_all(v, &input, 1, macs) == 0 &&
             pb__vfy_match_any(macs, v->nkeys, v->mac_len, sig, sig_len);
        OPENSSL_cleanse(macs, sizeof(macs));
    } else {
        ok = pub_verify(v, alg, kid, input.p, input.len, sig, sig_len);
    }
    if (!ok) {
        rc = pb__vfy_deny(res, PB_VERIFY_SIGNATURE);
        goto out;
    }
    payload = b64_json(d1 + 1, (size_t)(d2 - d1 - 1), JWT_MAX_TOKEN);
    if (!payload) {
        rc = pb__vfy_deny(res, PB_VERIFY_MALFORMED);
        goto out;
    }
    enum pb_verify_reason why = claims(v, payload, req->now_ms);
    if (why != PB_VERIFY_REASON_COUNT)
        rc = pb__vfy_deny(res, why);
out:
    json_decref(hdr);
    json_decref(payload);
    ERR_clear_error();
    return rc;
}
