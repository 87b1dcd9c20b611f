/* test_verify.c - the http_server `verify` block: every scheme against
 * published vectors or signatures made here with OpenSSL, rotation,
 * tolerance, malformed headers, JWT claims and algorithm confusion, and the
 * config errors (which must never quote a secret). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include "patchbay/pb_conf.h"
#include "pb_test.h"
#include "plugins/inputs/http_server/verify.h"
#include "plugins/inputs/http_server/verify_int.h"

/* ---- a fake request ------------------------------------------------------------------------ */

#define MAXH 12
struct fake {
    const char *h[MAXH][2]; /* name, value */
    const char *q[4][2];
};

static const char *fake_header(void *conn, const char *name)
{
    struct fake *f = conn;
    for (int i = 0; i < MAXH && f->h[i][0]; i++)
        if (strcasecmp(f->h[i][0], name) == 0)
            return f->h[i][1];
    return NULL;
}

static const char *fake_query(void *conn, const char *name)
{
    struct fake *f = conn;
    for (int i = 0; i < 4 && f->q[i][0]; i++)
        if (strcmp(f->q[i][0], name) == 0)
            return f->q[i][1];
    return NULL;
}

static _Thread_local struct pb_verify_result last; /* of this thread's latest check */

/* Verify body with f's headers at now_ms: 0 or the reason + 1. */
static int check_at(const struct pb_verifier *v, struct fake *f, const char *body, int64_t now_ms)
{
    struct pb_verify_req req = {
        .method = "POST",
        .path = "/hooks/t",
        .body = body,
        .len = strlen(body),
        .now_ms = now_ms,
        .header = fake_header,
        .query = fake_query,
        .conn = f,
    };
    memset(&last, 0x5a, sizeof(last));
    int rc = pb_verifier_check(v, &req, &last);
    if (rc == 0)
        return 0;
    if (rc != PB_EDENIED)
        return -1;
    if (last.webhook_id[0] != 0)
        return -2; /* a refusal must not carry an id */
    return (int)last.reason + 1;
}

#define OK 0
#define MISSING (PB_VERIFY_MISSING + 1)
#define MALFORMED (PB_VERIFY_MALFORMED + 1)
#define SIGNATURE (PB_VERIFY_SIGNATURE + 1)
#define TIMESTAMP (PB_VERIFY_TIMESTAMP + 1)
#define CLAIMS (PB_VERIFY_CLAIMS + 1)
#define CREDENTIALS (PB_VERIFY_CREDENTIALS + 1)

/* ---- building verifiers from YAML, as the config does -------------------------------------- */

static struct pb_err last_err;

/* A verifier from the YAML text of a verify block, or NULL (last_err). The
 * decoded conf is freed at once: the verifier must not borrow from it. */
static struct pb_verifier *mk(const char *yaml)
{
    struct pb_verify_conf c;
    memset(&c, 0, sizeof(c));
    pb_err_clear(&last_err);
    struct pb_conf_doc *doc = pb_conf_load_string("<test>", yaml, strlen(yaml), &last_err);
    if (!doc)
        return NULL;
    struct pb_verifier *v = NULL;
    if (pb_conf_decode(pb_conf_root(doc), pb_verify_fields, &c, &last_err) == 0)
        v = pb_verifier_create(&c, &last_err);
    pb_conf_free(pb_verify_fields, &c);
    pb_conf_doc_destroy(doc);
    return v;
}

/* The config error for yaml (which must fail). */
static const char *mk_err(const char *yaml)
{
    struct pb_verifier *v = mk(yaml);
    if (v) {
        pb_verifier_destroy(v);
        return "(no error)";
    }
    return last_err.msg;
}

/* ---- encoders and signers ------------------------------------------------------------------ */

static void b64(const unsigned char *in, size_t n, bool url, char *out)
{
    const char *std = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *u = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const char *a = url ? u : std;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t x = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            x |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            x |= in[i + 2];
        out[o++] = a[(x >> 18) & 63];
        out[o++] = a[(x >> 12) & 63];
        if (i + 1 < n)
            out[o++] = a[(x >> 6) & 63];
        else if (!url)
            out[o++] = '=';
        if (i + 2 < n)
            out[o++] = a[x & 63];
        else if (!url)
            out[o++] = '=';
    }
    out[o] = 0;
}

static void hex(const unsigned char *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", in[i]);
}

static size_t hmac(const EVP_MD *md, const char *key, const char *msg, unsigned char *out)
{
    unsigned len = 0;
    HMAC(md, key, (int)strlen(key), (const unsigned char *)msg, strlen(msg), out, &len);
    return len;
}

/* "v1,<base64 HMAC-SHA256>" of id.ts.body with the raw key bytes. */
static void sw_sign(const unsigned char *key, size_t klen, const char *id, const char *ts,
                    const char *body, char *out)
{
    char msg[512];
    unsigned char mac[32];
    unsigned len = 0;
    snprintf(msg, sizeof(msg), "%s.%s.%s", id, ts, body);
    HMAC(EVP_sha256(), key, (int)klen, (unsigned char *)msg, strlen(msg), mac, &len);
    strcpy(out, "v1,");
    b64(mac, len, false, out + 3);
}

static size_t sign_with(EVP_PKEY *k, const EVP_MD *md, const char *msg, unsigned char *sig,
                        size_t cap)
{
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    size_t len = cap;
    if (EVP_DigestSignInit(m, NULL, md, NULL, k) != 1 ||
        EVP_DigestSign(m, sig, &len, (const unsigned char *)msg, strlen(msg)) != 1)
        len = 0;
    EVP_MD_CTX_free(m);
    return len;
}

/* A compact JWT: header and payload JSON given, signed per alg with key
 * (HS256: a string secret; RS256/ES256: an EVP_PKEY *; "none": nothing). */
static char *jwt(const char *header, const char *payload, const char *alg, const void *key)
{
    static char tok[8192];
    char h64[1024], p64[2048], s64[1024] = "";
    b64((const unsigned char *)header, strlen(header), true, h64);
    b64((const unsigned char *)payload, strlen(payload), true, p64);
    char input[4096];
    snprintf(input, sizeof(input), "%s.%s", h64, p64);
    unsigned char sig[1024];
    size_t n = 0;
    if (strcmp(alg, "HS256") == 0) {
        n = hmac(EVP_sha256(), key, input, sig);
    } else if (strcmp(alg, "RS256") == 0) {
        n = sign_with((EVP_PKEY *)key, EVP_sha256(), input, sig, sizeof(sig));
    } else if (strcmp(alg, "ES256") == 0) {
        unsigned char der[128];
        size_t dl = sign_with((EVP_PKEY *)key, EVP_sha256(), input, der, sizeof(der));
        const unsigned char *p = der;
        ECDSA_SIG *es = dl ? d2i_ECDSA_SIG(NULL, &p, (long)dl) : NULL;
        const BIGNUM *r = NULL, *s = NULL;
        memset(sig, 0x11, 64); /* not an EC key: a signature of the right shape */
        if (es) {
            ECDSA_SIG_get0(es, &r, &s);
            BN_bn2binpad(r, sig, 32);
            BN_bn2binpad(s, sig + 32, 32);
            ECDSA_SIG_free(es);
        }
        n = 64;
    }
    b64(sig, n, true, s64);
    snprintf(tok, sizeof(tok), "%s.%s", input, s64);
    return tok;
}

static char *write_tmp(const char *suffix, const char *text)
{
    static char paths[8][64];
    static int next;
    char *path = paths[next++ % 8];
    snprintf(path, 64, "/tmp/pb-test-verify-XXXXXX%s", suffix);
    int fd = mkstemps(path, (int)strlen(suffix));
    if (fd < 0)
        return NULL;
    if (write(fd, text, strlen(text)) != (ssize_t)strlen(text))
        path[0] = 0;
    close(fd);
    return path;
}

static char *pem_of(EVP_PKEY *k)
{
    static char text[4096];
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(b, k);
    int n = BIO_read(b, text, sizeof(text) - 1);
    text[n > 0 ? n : 0] = 0;
    BIO_free(b);
    return text;
}

static void bn_b64url(EVP_PKEY *k, const char *param, int pad, char *out)
{
    BIGNUM *bn = NULL;
    unsigned char buf[1024];
    EVP_PKEY_get_bn_param(k, param, &bn);
    int n = pad ? BN_bn2binpad(bn, buf, pad) : BN_bn2bin(bn, buf);
    b64(buf, (size_t)n, true, out);
    BN_free(bn);
}

/* ---- the decoders -------------------------------------------------------------------------- */

PB_TEST(base64_is_strict)
{
    unsigned char out[16];
    size_t n = 0;
    PB_EQ_INT(pb_base64_decode("aGk=", 4, false, out, sizeof(out), &n), 0);
    PB_EQ_INT(n, 2);
    PB_EQ_INT(pb_base64_decode("aGk", 3, false, out, sizeof(out), &n), 0);
    PB_EQ_INT(n, 2);
    PB_EQ_INT(pb_base64_decode("aGl=", 4, false, out, sizeof(out), &n), -1); /* trailing bits */
    PB_EQ_INT(pb_base64_decode("aG k", 4, false, out, sizeof(out), &n), -1);
    PB_EQ_INT(pb_base64_decode("a===", 4, false, out, sizeof(out), &n), -1);
    PB_EQ_INT(pb_base64_decode("aGk=", 4, true, out, sizeof(out), &n), -1); /* url: no pad */
    PB_EQ_INT(pb_base64_decode("-_8", 3, true, out, sizeof(out), &n), 0);
    PB_EQ_INT(pb_base64_decode("+/8", 3, true, out, sizeof(out), &n), -1);
    PB_EQ_INT(pb_base64_decode("AAAAAAAA", 8, false, out, 5, &n), -1); /* over cap */
    PB_EQ_INT(pb_hex_decode("0aFf", 4, out, sizeof(out), &n), 0);
    PB_EQ_INT(out[1], 0xff);
    PB_EQ_INT(pb_hex_decode("0g", 2, out, sizeof(out), &n), -1);
    PB_EQ_INT(pb_hex_decode("abc", 3, out, sizeof(out), &n), -1);
}

/* ---- github -------------------------------------------------------------------------------- */

#define GH_SECRET "It's a Secret to Everybody"
#define GH_SIG "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

PB_TEST(github_published_vector)
{
    struct pb_verifier *v = mk("{scheme: github, secret: \"" GH_SECRET "\"}");
    PB_CHECK(v != NULL);
    if (!v)
        return;
    struct fake f = {.h = {{"X-Hub-Signature-256", GH_SIG},
                           {"X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"}}};
    PB_EQ_INT(check_at(v, &f, "Hello, World!", 0), OK);
    PB_EQ_STR(last.webhook_id, "72d3162e-cc78-11e3-81ab-4c9367dc0958");

    /* One bit off in the signature, then in the body. */
    char sig[80];
    strcpy(sig, GH_SIG);
    sig[strlen(sig) - 1] ^= 0x01; /* '7' -> '6' */
    f.h[0][1] = sig;
    PB_EQ_INT(check_at(v, &f, "Hello, World!", 0), SIGNATURE);
    f.h[0][1] = GH_SIG;
    PB_EQ_INT(check_at(v, &f, "Hello, World ", 0), SIGNATURE); /* '!' (0x21) -> ' ' (0x20) */

    f.h[0][1] = "sha1=757107ea0eb2509fc211221cce984b8a37570b6d";
    PB_EQ_INT(check_at(v, &f, "Hello, World!", 0), MALFORMED);
    f.h[0][1] = "sha256=zz7107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    PB_EQ_INT(check_at(v, &f, "Hello, World!", 0), MALFORMED);
    struct fake none = {0};
    PB_EQ_INT(check_at(v, &none, "Hello, World!", 0), MISSING);

    /* The delivery id is optional, but garbage in it is refused. */
    struct fake bad_id = {.h = {{"X-Hub-Signature-256", GH_SIG}, {"X-GitHub-Delivery", "a b"}}};
    PB_EQ_INT(check_at(v, &bad_id, "Hello, World!", 0), MALFORMED);
    struct fake no_id = {.h = {{"X-Hub-Signature-256", GH_SIG}}};
    PB_EQ_INT(check_at(v, &no_id, "Hello, World!", 0), OK);
    PB_EQ_STR(last.webhook_id, "");
    pb_verifier_destroy(v);
}

PB_TEST(github_rotation_and_uppercase_hex)
{
    struct pb_verifier *v = mk("{scheme: github, secrets: [old-secret, \"" GH_SECRET "\"]}");
    PB_CHECK(v != NULL);
    if (!v)
        return;
    struct fake f = {
        .h = {{"X-Hub-Signature-256",
               "sha256=757107EA0EB2509FC211221CCE984B8A37570B6D7586C22C46F4379C8B043E17"}}};
    PB_EQ_INT(check_at(v, &f, "Hello, World!", 0), OK);
    unsigned char mac[64];
    char sig[160] = "sha256=";
    hex(mac, hmac(EVP_sha256(), "old-secret", "Hello, World!", mac), sig + 7);
    f.h[0][1] = sig;
    PB_EQ_INT(check_at(v, &f, "Hello, World!", 0), OK);
    hex(mac, hmac(EVP_sha256(), "other", "Hello, World!", mac), sig + 7);
    PB_EQ_INT(check_at(v, &f, "Hello, World!", 0), SIGNATURE);
    pb_verifier_destroy(v);
}

/* ---- standard-webhooks --------------------------------------------------------------------- */

#define SW_SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define SW_ID "msg_p5jXN8AQM9LWM0D4loKWxJek"
#define SW_TS "1614265330"
#define SW_BODY "{\"test\": 2432232314}"
#define SW_SIG "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
#define SW_NOW (1614265330LL * 1000 + 10 * 1000)

PB_TEST(standard_webhooks_spec_vector)
{
    struct pb_verifier *v = mk("{scheme: standard-webhooks, secret: " SW_SECRET "}");
    PB_CHECK(v != NULL);
    if (!v)
        return;
    struct fake f = {
        .h = {{"webhook-id", SW_ID}, {"webhook-timestamp", SW_TS}, {"webhook-signature", SW_SIG}}};
    PB_EQ_INT(check_at(v, &f, SW_BODY, SW_NOW), OK);
    PB_EQ_STR(last.webhook_id, SW_ID);
    PB_EQ_INT(check_at(v, &f, "{\"test\": 2432232315}", SW_NOW), SIGNATURE);

    /* The id and the timestamp are signed too. */
    f.h[0][1] = "msg_p5jXN8AQM9LWM0D4loKWxJeK";
    PB_EQ_INT(check_at(v, &f, SW_BODY, SW_NOW), SIGNATURE);
    f.h[0][1] = SW_ID;
    f.h[1][1] = "1614265331";
    PB_EQ_INT(check_at(v, &f, SW_BODY, SW_NOW), SIGNATURE);
    f.h[1][1] = SW_TS;

    /* Several signatures: unknown versions are skipped, any v1 may match. */
    f.h[2][1] = "v1,Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE= v2,whatever " SW_SIG;
    PB_EQ_INT(check_at(v, &f, SW_BODY, SW_NOW), OK);
    f.h[2][1] = "v1,Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE= v2,whatever";
    PB_EQ_INT(check_at(v, &f, SW_BODY, SW_NOW), SIGNATURE);
    f.h[2][1] = "v1,not!base64 " SW_SIG;
    PB_EQ_INT(check_at(v, &f, SW_BODY, SW_NOW), MALFORMED);
    f.h[2][1] = "garbage";
    PB_EQ_INT(check_at(v, &f, SW_BODY, SW_NOW), MALFORMED);

    /* At most 16 signatures in one header. */
    char many[2048] = "";
    for (int i = 0; i < 16; i++)
        strcat(many, "v2,x ");
    strcat(many, SW_SIG);
    f.h[2][1] = many;
    PB_EQ_INT(check_at(v, &f, SW_BODY, SW_NOW), MALFORMED);
    f.h[2][1] = SW_SIG;

    /* Missing and malformed headers. */
    struct fake miss = {.h = {{"webhook-id", SW_ID}, {"webhook-signature", SW_SIG}}};
    PB_EQ_INT(check_at(v, &miss, SW_BODY, SW_NOW), MISSING);
    f.h[1][1] = "16142653.30";
    PB_EQ_INT(check_at(v, &f, SW_BODY, SW_NOW), MALFORMED);
    f.h[1][1] = SW_TS;
    f.h[0][1] = "";
    PB_EQ_INT(check_at(v, &f, SW_BODY, SW_NOW), MALFORMED);
    pb_verifier_destroy(v);
}

PB_TEST(standard_webhooks_takes_svix_header_names)
{
    /* What Svix sends by default: the same scheme under svix-* names. */
    struct pb_verifier *v = mk("{scheme: standard-webhooks, secret: " SW_SECRET "}");
    PB_CHECK(v != NULL);
    if (!v)
        return;
    struct fake f = {
        .h = {{"svix-id", SW_ID}, {"svix-timestamp", SW_TS}, {"svix-signature", SW_SIG}}};
    PB_EQ_INT(check_at(v, &f, SW_BODY, SW_NOW), OK);
    PB_EQ_STR(last.webhook_id, SW_ID);
    PB_EQ_INT(check_at(v, &f, "{\"test\": 2432232315}", SW_NOW), SIGNATURE);
    /* One set whole: a webhook-* header present means the webhook-* set. */
    struct fake mixed = {
        .h = {{"webhook-id", SW_ID}, {"svix-timestamp", SW_TS}, {"svix-signature", SW_SIG}}};
    PB_EQ_INT(check_at(v, &mixed, SW_BODY, SW_NOW), MISSING);
    /* webhook-* wins when both sets are there. */
    struct fake both = {
        .h = {{"webhook-id", SW_ID},
              {"webhook-timestamp", SW_TS},
              {"webhook-signature", SW_SIG},
              {"svix-id", SW_ID},
              {"svix-timestamp", SW_TS},
              {"svix-signature", "v1,Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE="}}};
    PB_EQ_INT(check_at(v, &both, SW_BODY, SW_NOW), OK);
    pb_verifier_destroy(v);
}

PB_TEST(standard_webhooks_tolerance)
{
    struct pb_verifier *v = mk("{scheme: standard-webhooks, secret: " SW_SECRET "}");
    struct pb_verifier *v10 =
        mk("{scheme: standard-webhooks, secret: " SW_SECRET ", tolerance: 10m}");
    PB_CHECK(v && v10);
    if (!v || !v10)
        return;
    struct fake f = {
        .h = {{"webhook-id", SW_ID}, {"webhook-timestamp", SW_TS}, {"webhook-signature", SW_SIG}}};
    int64_t ts = 1614265330LL * 1000;
    PB_EQ_INT(check_at(v, &f, SW_BODY, ts + 300 * 1000), OK);
    PB_EQ_INT(check_at(v, &f, SW_BODY, ts + 301 * 1000), TIMESTAMP);
    PB_EQ_STR(last.webhook_id, "");
    PB_EQ_INT(check_at(v, &f, SW_BODY, ts - 300 * 1000), OK);
    PB_EQ_INT(check_at(v, &f, SW_BODY, ts - 301 * 1000), TIMESTAMP); /* from the future */
    PB_EQ_INT(check_at(v10, &f, SW_BODY, ts + 599 * 1000), OK);
    PB_EQ_INT(check_at(v10, &f, SW_BODY, ts + 601 * 1000), TIMESTAMP);
    /* A forged request is "signature" whatever its timestamp. */
    PB_EQ_INT(check_at(v, &f, "{}", ts + 3600 * 1000), SIGNATURE);
    pb_verifier_destroy(v);
    pb_verifier_destroy(v10);
}

PB_TEST(standard_webhooks_rotation)
{
    unsigned char k1[32], k2[32], k3[32];
    memset(k1, 1, sizeof(k1));
    memset(k2, 2, sizeof(k2));
    memset(k3, 3, sizeof(k3));
    char s1[80] = "whsec_", s2[80] = "whsec_", yaml[300];
    b64(k1, 32, false, s1 + 6);
    b64(k2, 32, false, s2 + 6);
    snprintf(yaml, sizeof(yaml), "{scheme: standard-webhooks, secrets: [%s, %s]}", s1, s2);
    struct pb_verifier *v = mk(yaml);
    PB_CHECK(v != NULL);
    if (!v)
        return;
    char sig[128];
    struct fake f = {.h = {{"webhook-id", "msg_1"},
                           {"webhook-timestamp", "1700000000"},
                           {"webhook-signature", sig}}};
    int64_t now = 1700000000LL * 1000;
    sw_sign(k1, 32, "msg_1", "1700000000", "{}", sig);
    PB_EQ_INT(check_at(v, &f, "{}", now), OK);
    sw_sign(k2, 32, "msg_1", "1700000000", "{}", sig);
    PB_EQ_INT(check_at(v, &f, "{}", now), OK);
    sw_sign(k3, 32, "msg_1", "1700000000", "{}", sig);
    PB_EQ_INT(check_at(v, &f, "{}", now), SIGNATURE);
    pb_verifier_destroy(v);
}

PB_TEST(standard_webhooks_ed25519)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    EVP_PKEY *other = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    PB_CHECK(k && other);
    unsigned char raw[32];
    size_t rl = sizeof(raw);
    EVP_PKEY_get_raw_public_key(k, raw, &rl);
    char pk[80] = "whpk_", yaml[300];
    b64(raw, 32, false, pk + 5);
    snprintf(yaml, sizeof(yaml), "{scheme: standard-webhooks, secrets: [%s, %s]}", SW_SECRET, pk);
    struct pb_verifier *v = mk(yaml);
    PB_CHECK(v != NULL);
    if (!v)
        return;

    const char *content = SW_ID "." SW_TS "." SW_BODY;
    unsigned char sig[64];
    char hdr[300] = "v1,Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE= v1a,";
    PB_EQ_INT(sign_with(k, NULL, content, sig, sizeof(sig)), 64);
    b64(sig, 64, false, hdr + strlen(hdr));
    struct fake f = {
        .h = {{"webhook-id", SW_ID}, {"webhook-timestamp", SW_TS}, {"webhook-signature", hdr}}};
    PB_EQ_INT(check_at(v, &f, SW_BODY, SW_NOW), OK);
    PB_EQ_STR(last.webhook_id, SW_ID);
    PB_EQ_INT(check_at(v, &f, "{\"test\": 1}", SW_NOW), SIGNATURE);

    char hdr2[200] = "v1a,";
    PB_EQ_INT(sign_with(other, NULL, content, sig, sizeof(sig)), 64);
    b64(sig, 64, false, hdr2 + 4);
    f.h[2][1] = hdr2;
    PB_EQ_INT(check_at(v, &f, SW_BODY, SW_NOW), SIGNATURE);
    f.h[2][1] = "v1a,AAAA";
    PB_EQ_INT(check_at(v, &f, SW_BODY, SW_NOW), MALFORMED);
    pb_verifier_destroy(v);
    EVP_PKEY_free(k);
    EVP_PKEY_free(other);
}

PB_TEST(standard_webhooks_config_errors)
{
    PB_EQ_STR(mk_err("{scheme: standard-webhooks, secret: whsec_!!notbase64}"),
              "verify.secret: not a whsec_ base64 key");
    PB_EQ_STR(mk_err("{scheme: standard-webhooks, secrets: [" SW_SECRET ", hunter2hunter2]}"),
              "verify.secrets[1]: not a whsec_ or whpk_ base64 key");
    PB_CONTAINS(mk_err("{scheme: standard-webhooks, secret: whsec_c2hvcnQ=}"), "at least 24 bytes");
    PB_CONTAINS(mk_err("{scheme: standard-webhooks, secret: whpk_c2hvcnQ=}"), "whpk_");
    PB_CONTAINS(mk_err("{scheme: standard-webhooks, secret: whsk_c2hvcnQ=}"), "private key");
    PB_CONTAINS(mk_err("{scheme: standard-webhooks}"), "needs secret or secrets");
    PB_CONTAINS(mk_err("{scheme: standard-webhooks, secret: " SW_SECRET ", tolerance: 0}"),
                "tolerance");
    /* Never the secret itself, in any message. */
    const char *e = mk_err("{scheme: standard-webhooks, secret: whsec_hunter2!}");
    PB_CHECK(strstr(e, "hunter2") == NULL);
    e = mk_err("{scheme: standard-webhooks, secret: hunter2}");
    PB_CHECK(strstr(e, "hunter2") == NULL);
}

/* ---- stripe, shopify ----------------------------------------------------------------------- */

PB_TEST(stripe_several_v1)
{
    const char *secret = "whsec_stripe_test_secret";
    struct pb_verifier *v = mk("{scheme: stripe, secret: whsec_stripe_test_secret}");
    PB_CHECK(v != NULL);
    if (!v)
        return;
    const char *body = "{\"id\":\"evt_1\",\"object\":\"event\"}";
    char signed_content[256], good[65], bad[65], hdr[400];
    unsigned char mac[32];
    snprintf(signed_content, sizeof(signed_content), "1700000000.%s", body);
    hex(mac, hmac(EVP_sha256(), secret, signed_content, mac), good);
    hex(mac, hmac(EVP_sha256(), "whsec_other", signed_content, mac), bad);
    snprintf(hdr, sizeof(hdr), "t=1700000000,v1=%s,v1=%s,v0=%s", bad, good, bad);
    struct fake f = {.h = {{"Stripe-Signature", hdr}}};
    int64_t now = 1700000000LL * 1000 + 5000;
    PB_EQ_INT(check_at(v, &f, body, now), OK);
    PB_EQ_STR(last.webhook_id, ""); /* the event id is in the body, not read here */
    PB_EQ_INT(check_at(v, &f, body, now + 300 * 1000), TIMESTAMP);
    PB_EQ_INT(check_at(v, &f, "{\"id\":\"evt_2\"}", now), SIGNATURE);

    snprintf(hdr, sizeof(hdr), "t=1700000000,v1=%s", bad);
    PB_EQ_INT(check_at(v, &f, body, now), SIGNATURE);
    snprintf(hdr, sizeof(hdr), "t=1700000000,v0=%s", good);
    PB_EQ_INT(check_at(v, &f, body, now), SIGNATURE);
    snprintf(hdr, sizeof(hdr), "v1=%s", good);
    PB_EQ_INT(check_at(v, &f, body, now), MALFORMED);
    snprintf(hdr, sizeof(hdr), "t=1700000000,t=1700000000,v1=%s", good);
    PB_EQ_INT(check_at(v, &f, body, now), MALFORMED);
    snprintf(hdr, sizeof(hdr), "t=1700000000,v1=%.60s", good);
    PB_EQ_INT(check_at(v, &f, body, now), MALFORMED);
    pb_verifier_destroy(v);
}

PB_TEST(shopify_base64)
{
    struct pb_verifier *v = mk("{scheme: shopify, secret: shpss_test}");
    PB_CHECK(v != NULL);
    if (!v)
        return;
    const char *body = "{\"id\":820982911946154508}";
    unsigned char mac[32];
    char sig[64];
    b64(mac, hmac(EVP_sha256(), "shpss_test", body, mac), false, sig);
    struct fake f = {.h = {{"X-Shopify-Hmac-Sha256", sig},
                           {"X-Shopify-Webhook-Id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"}}};
    PB_EQ_INT(check_at(v, &f, body, 0), OK);
    PB_EQ_STR(last.webhook_id, "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043");
    PB_EQ_INT(check_at(v, &f, "{\"id\":820982911946154509}", 0), SIGNATURE);
    f.h[0][1] = "not base64!";
    PB_EQ_INT(check_at(v, &f, body, 0), MALFORMED);
    pb_verifier_destroy(v);
}

/* ---- generic hmac -------------------------------------------------------------------------- */

PB_TEST(generic_hmac_template_and_prefix)
{
    struct pb_verifier *v = mk("{scheme: hmac, secret: s3cret, header: X-Signature, prefix: "
                               "'sha256=', template: '{timestamp}.{body}', timestamp_header: "
                               "X-Timestamp, id_header: X-Delivery}");
    PB_CHECK(v != NULL);
    if (!v)
        return;
    unsigned char mac[32];
    char sig[100] = "sha256=";
    hex(mac, hmac(EVP_sha256(), "s3cret", "1700000000.{\"a\":1}", mac), sig + 7);
    struct fake f = {
        .h = {{"X-Signature", sig}, {"X-Timestamp", "1700000000"}, {"X-Delivery", "dlv-1"}}};
    int64_t now = 1700000000LL * 1000;
    PB_EQ_INT(check_at(v, &f, "{\"a\":1}", now), OK);
    PB_EQ_STR(last.webhook_id, "dlv-1");
    PB_EQ_INT(check_at(v, &f, "{\"a\":2}", now), SIGNATURE);
    PB_EQ_INT(check_at(v, &f, "{\"a\":1}", now + 301 * 1000), TIMESTAMP);
    f.h[1][1] = "1700000001";
    PB_EQ_INT(check_at(v, &f, "{\"a\":1}", now), SIGNATURE);
    f.h[1][0] = "X-Other";
    PB_EQ_INT(check_at(v, &f, "{\"a\":1}", now), MISSING);
    f.h[1][0] = "X-Timestamp";
    f.h[1][1] = "1700000000";
    f.h[0][1] = sig + 7; /* without its prefix */
    PB_EQ_INT(check_at(v, &f, "{\"a\":1}", now), MALFORMED);
    pb_verifier_destroy(v);

    /* Slack's scheme, as an hmac template. */
    v = mk("{scheme: hmac, secret: slack, header: X-Slack-Signature, prefix: 'v0=', template: "
           "'v0:{timestamp}:{body}', timestamp_header: X-Slack-Request-Timestamp}");
    PB_CHECK(v != NULL);
    if (!v)
        return;
    hex(mac, hmac(EVP_sha256(), "slack", "v0:1700000000:token=x", mac), sig + 3);
    memcpy(sig, "v0=", 3);
    struct fake s = {
        .h = {{"X-Slack-Signature", sig}, {"X-Slack-Request-Timestamp", "1700000000"}}};
    PB_EQ_INT(check_at(v, &s, "token=x", now), OK);
    pb_verifier_destroy(v);
}

PB_TEST(generic_hmac_digests_and_encodings)
{
    unsigned char mac[64];
    char sig[200];
    struct fake f = {.h = {{"X-Sig", sig}, {"X-Id", "abc"}}};

    struct pb_verifier *v = mk("{scheme: hmac, secret: k, header: X-Sig, algorithm: sha1, "
                               "encoding: base64}");
    PB_CHECK(v != NULL);
    b64(mac, hmac(EVP_sha1(), "k", "body", mac), false, sig);
    PB_EQ_INT(v ? check_at(v, &f, "body", 0) : -9, OK);
    PB_EQ_STR(last.webhook_id, "");
    hex(mac, hmac(EVP_sha1(), "k", "body", mac), sig);
    PB_EQ_INT(v ? check_at(v, &f, "body", 0) : -9, MALFORMED);
    pb_verifier_destroy(v);

    v = mk("{scheme: hmac, secrets: [a, k], header: X-Sig, algorithm: sha512, template: "
           "'{id}:{body}', id_header: X-Id}");
    PB_CHECK(v != NULL);
    hex(mac, hmac(EVP_sha512(), "k", "abc:body", mac), sig);
    PB_EQ_INT(v ? check_at(v, &f, "body", 0) : -9, OK);
    PB_EQ_STR(last.webhook_id, "abc");
    f.h[1][1] = "abd";
    PB_EQ_INT(v ? check_at(v, &f, "body", 0) : -9, SIGNATURE);
    f.h[1][0] = "X-None";
    PB_EQ_INT(v ? check_at(v, &f, "body", 0) : -9, MISSING);
    pb_verifier_destroy(v);
}

PB_TEST(generic_hmac_config_errors)
{
    PB_CONTAINS(mk_err("{scheme: hmac, secret: k}"), "verify.header");
    PB_CONTAINS(mk_err("{scheme: hmac, secret: k, header: X-S, template: '{body}{nope}'}"),
                "unknown placeholder");
    PB_CONTAINS(mk_err("{scheme: hmac, secret: k, header: X-S, template: '{timestamp}'}"),
                "timestamp_header");
    PB_CONTAINS(mk_err("{scheme: hmac, secret: k, header: X-S, template: '{ts}.{body}'}"),
                "unknown placeholder");
    PB_CONTAINS(mk_err("{scheme: hmac, secret: k, header: X-S, template: 'x'}"), "{body}");
    PB_CONTAINS(mk_err("{scheme: hmac, secret: k, header: X-S, timestamp_header: X-T}"),
                "{timestamp}");
    PB_CONTAINS(mk_err("{scheme: hmac, secret: k, header: X-S, template: '{id}.{body}'}"),
                "id_header");
    PB_CONTAINS(mk_err("{scheme: hmac, secret: k, header: X-S, tolerance: 1m}"),
                "timestamp_header");
    PB_CONTAINS(mk_err("{scheme: hmac, secret: k, header: 'X S'}"), "not a header name");
}

/* ---- options that do not fit the scheme ---------------------------------------------------- */

PB_TEST(options_must_fit_the_scheme)
{
    PB_EQ_STR(mk_err("{scheme: github, secret: k, prefix: 'sha256='}"),
              "verify.prefix does not apply to scheme github (it takes: secret)");
    PB_CONTAINS(mk_err("{scheme: shopify, secret: k, tolerance: 1m}"), "verify.tolerance");
    PB_CONTAINS(mk_err("{scheme: stripe, secret: k, algorithm: sha1}"), "verify.algorithm");
    PB_CONTAINS(mk_err("{scheme: basic, user: a, password: b, secret: k}"), "verify.secret");
    PB_CONTAINS(mk_err("{scheme: api_key, secret: k, leeway: 1s}"), "verify.leeway");
    PB_CONTAINS(mk_err("{scheme: none, secret: k}"), "scheme none takes no options");
    PB_CONTAINS(mk_err("{secret: k}"), "scheme");
    PB_CONTAINS(mk_err("{scheme: githb, secret: k}"), "did you mean \"github\"");
    struct pb_verify_conf c;
    memset(&c, 0, sizeof(c));
    c.tolerance_ms = VFY_DEFAULT_TOLERANCE_MS;
    c.leeway_ms = VFY_DEFAULT_LEEWAY_MS;
    PB_EQ_INT(pb_verify_conf_check(&c, NULL), 0); /* no block at all */
}

/* ---- api_key, basic ------------------------------------------------------------------------ */

PB_TEST(api_key_header_and_query)
{
    struct pb_verifier *v = mk("{scheme: api_key, secrets: [key-old, key-new]}");
    PB_CHECK(v != NULL);
    if (!v)
        return;
    struct fake f = {.h = {{"X-Api-Key", "key-new"}}};
    PB_EQ_INT(check_at(v, &f, "{}", 0), OK);
    f.h[0][1] = "key-old";
    PB_EQ_INT(check_at(v, &f, "{}", 0), OK);
    f.h[0][1] = "key-ol";
    PB_EQ_INT(check_at(v, &f, "{}", 0), CREDENTIALS);
    f.h[0][1] = "key-new ";
    PB_EQ_INT(check_at(v, &f, "{}", 0), CREDENTIALS);
    struct fake none = {.q = {{"api_key", "key-new"}}};
    PB_EQ_INT(check_at(v, &none, "{}", 0), MISSING); /* the query is not read unless asked */
    pb_verifier_destroy(v);

    v = mk("{scheme: api_key, secret: qk, query: token}");
    PB_CHECK(v != NULL);
    if (!v)
        return;
    struct fake q = {.q = {{"token", "qk"}}};
    PB_EQ_INT(check_at(v, &q, "{}", 0), OK);
    q.q[0][1] = "qq";
    PB_EQ_INT(check_at(v, &q, "{}", 0), CREDENTIALS);
    struct fake h = {.h = {{"X-Api-Key", "qk"}}};
    PB_EQ_INT(check_at(v, &h, "{}", 0), MISSING);
    pb_verifier_destroy(v);

    v = mk("{scheme: api_key, secret: bk, header: Authorization, prefix: 'Bearer ', id_header: "
           "X-Request-Id}");
    PB_CHECK(v != NULL);
    if (!v)
        return;
    struct fake b = {.h = {{"Authorization", "Bearer bk"}, {"X-Request-Id", "r-1"}}};
    PB_EQ_INT(check_at(v, &b, "{}", 0), OK);
    PB_EQ_STR(last.webhook_id, "r-1");
    b.h[0][1] = "bk";
    PB_EQ_INT(check_at(v, &b, "{}", 0), MALFORMED);
    pb_verifier_destroy(v);
}

PB_TEST(basic_credentials)
{
    struct pb_verifier *v =
        mk("{scheme: basic, user: shop, password: 'p:ss w0rd', credentials: ['old:pw']}");
    PB_CHECK(v != NULL);
    if (!v)
        return;
    char hdr[100] = "Basic ";
    b64((const unsigned char *)"shop:p:ss w0rd", 14, false, hdr + 6);
    struct fake f = {.h = {{"Authorization", hdr}}};
    PB_EQ_INT(check_at(v, &f, "{}", 0), OK);
    b64((const unsigned char *)"old:pw", 6, false, hdr + 6);
    PB_EQ_INT(check_at(v, &f, "{}", 0), OK);
    b64((const unsigned char *)"old:pX", 6, false, hdr + 6);
    PB_EQ_INT(check_at(v, &f, "{}", 0), CREDENTIALS);
    b64((const unsigned char *)"oldpw", 5, false, hdr + 6);
    PB_EQ_INT(check_at(v, &f, "{}", 0), MALFORMED);
    f.h[0][1] = "Basic %%%";
    PB_EQ_INT(check_at(v, &f, "{}", 0), MALFORMED);
    f.h[0][1] = "Bearer abc";
    PB_EQ_INT(check_at(v, &f, "{}", 0), MALFORMED);
    struct fake none = {0};
    PB_EQ_INT(check_at(v, &none, "{}", 0), MISSING);
    pb_verifier_destroy(v);

    PB_CONTAINS(mk_err("{scheme: basic, user: a}"), "together");
    PB_CONTAINS(mk_err("{scheme: basic, credentials: [nocolon]}"), "verify.credentials[0]");
    PB_CHECK(strstr(mk_err("{scheme: basic, credentials: [hunter2]}"), "hunter2") == NULL);
    PB_CONTAINS(mk_err("{scheme: basic}"), "needs user and password");
}

/* ---- jwt ----------------------------------------------------------------------------------- */

#define HS_KEY "an-hs256-secret-of-at-least-32-bytes!"
#define NOW_S 1700000000LL
#define NOW (NOW_S * 1000)

static int jwt_check(const struct pb_verifier *v, const char *token)
{
    char hdr[8300];
    snprintf(hdr, sizeof(hdr), "Bearer %s", token);
    struct fake f = {.h = {{"Authorization", hdr}}};
    return check_at(v, &f, "{}", NOW);
}

PB_TEST(jwt_hs256_claims)
{
    struct pb_verifier *v = mk("{scheme: jwt, secret: '" HS_KEY "', audience: [patchbay, other], "
                               "issuer: 'https://issuer.example'}");
    PB_CHECK(v != NULL);
    if (!v)
        return;
    const char *H = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    char p[512];
#define CLAIMSET(extra)                                                                            \
    snprintf(p, sizeof(p), "{\"iss\":\"https://issuer.example\",\"aud\":\"patchbay\"%s}", extra)
    CLAIMSET(",\"exp\":1700000600");
    PB_EQ_INT(jwt_check(v, jwt(H, p, "HS256", HS_KEY)), OK);
    PB_EQ_STR(last.webhook_id, "");
    PB_EQ_INT(jwt_check(v, jwt(H, p, "HS256", "another-secret-of-at-least-32-bytes")), SIGNATURE);

    CLAIMSET(",\"exp\":1699999950"); /* expired 50s ago: within the 60s leeway */
    PB_EQ_INT(jwt_check(v, jwt(H, p, "HS256", HS_KEY)), OK);
    CLAIMSET(",\"exp\":1699999900");
    PB_EQ_INT(jwt_check(v, jwt(H, p, "HS256", HS_KEY)), CLAIMS);
    CLAIMSET(",\"exp\":\"soon\"");
    PB_EQ_INT(jwt_check(v, jwt(H, p, "HS256", HS_KEY)), CLAIMS);
    CLAIMSET(",\"nbf\":1700000030");
    PB_EQ_INT(jwt_check(v, jwt(H, p, "HS256", HS_KEY)), OK);
    CLAIMSET(",\"nbf\":1700000100");
    PB_EQ_INT(jwt_check(v, jwt(H, p, "HS256", HS_KEY)), CLAIMS);

    snprintf(p, sizeof(p), "{\"iss\":\"https://issuer.example\",\"aud\":[\"x\",\"other\"]}");
    PB_EQ_INT(jwt_check(v, jwt(H, p, "HS256", HS_KEY)), OK);
    snprintf(p, sizeof(p), "{\"iss\":\"https://issuer.example\",\"aud\":[\"x\"]}");
    PB_EQ_INT(jwt_check(v, jwt(H, p, "HS256", HS_KEY)), CLAIMS);
    snprintf(p, sizeof(p), "{\"iss\":\"https://issuer.example\"}");
    PB_EQ_INT(jwt_check(v, jwt(H, p, "HS256", HS_KEY)), CLAIMS);
    snprintf(p, sizeof(p), "{\"iss\":\"https://evil.example\",\"aud\":\"patchbay\"}");
    PB_EQ_INT(jwt_check(v, jwt(H, p, "HS256", HS_KEY)), CLAIMS);
    snprintf(p, sizeof(p), "{\"aud\":\"patchbay\"}");
    PB_EQ_INT(jwt_check(v, jwt(H, p, "HS256", HS_KEY)), CLAIMS);

    /* alg none, with or without a signature part. */
    CLAIMSET("");
    char *tok = jwt("{\"alg\":\"none\"}", p, "none", NULL);
    PB_EQ_INT(jwt_check(v, tok), SIGNATURE);
    tok = jwt("{\"alg\":\"HS384\"}", p, "HS256", HS_KEY);
    PB_EQ_INT(jwt_check(v, tok), SIGNATURE);

    /* Malformed tokens and headers. */
    PB_EQ_INT(jwt_check(v, "abc"), MALFORMED);
    PB_EQ_INT(jwt_check(v, "a.b.c.d"), MALFORMED);
    PB_EQ_INT(jwt_check(v, jwt("[1]", p, "HS256", HS_KEY)), MALFORMED);
    PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"HS256\",\"alg\":\"none\"}", p, "HS256", HS_KEY)),
              MALFORMED);
    PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"HS256\",\"crit\":[\"x\"]}", p, "HS256", HS_KEY)),
              MALFORMED);
    PB_EQ_INT(jwt_check(v, jwt(H, "not json", "HS256", HS_KEY)), MALFORMED);
    struct fake basic = {.h = {{"Authorization", "Basic YTpi"}}};
    PB_EQ_INT(check_at(v, &basic, "{}", NOW), MALFORMED);
    struct fake none = {0};
    PB_EQ_INT(check_at(v, &none, "{}", NOW), MISSING);

    /* A tampered payload under a valid signature. */
    CLAIMSET("");
    tok = jwt(H, p, "HS256", HS_KEY);
    char tampered[4096];
    snprintf(tampered, sizeof(tampered), "%s", tok);
    char *dot = strchr(tampered, '.');
    dot[3] = dot[3] == 'A' ? 'B' : 'A';
    PB_EQ_INT(jwt_check(v, tampered), SIGNATURE);
#undef CLAIMSET
    pb_verifier_destroy(v);
}

PB_TEST(jwt_rs256_pem_and_alg_confusion)
{
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    EVP_PKEY *rsa2 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    PB_CHECK(rsa && rsa2);
    char *pem_text = strdup(pem_of(rsa));
    char *path = write_tmp(".pem", pem_text);
    char yaml[512];
    snprintf(yaml, sizeof(yaml), "{scheme: jwt, public_key_file: %s}", path);
    struct pb_verifier *v = mk(yaml);
    PB_CHECK(v != NULL);
    if (v) {
        const char *p = "{\"sub\":\"x\",\"exp\":1700000600}";
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"RS256\"}", p, "RS256", rsa)), OK);
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"RS256\"}", p, "RS256", rsa2)), SIGNATURE);
        /* The classic confusion: HS256 keyed with the public key's PEM text. */
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"HS256\"}", p, "HS256", pem_text)), SIGNATURE);
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"none\"}", p, "none", NULL)), SIGNATURE);
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"ES256\"}", p, "ES256", rsa)), SIGNATURE);
        pb_verifier_destroy(v);
    }

    /* HS256 next to RS256: each token only meets keys of its own algorithm. */
    snprintf(yaml, sizeof(yaml), "{scheme: jwt, public_key_file: %s, secret: '" HS_KEY "'}", path);
    v = mk(yaml);
    PB_CHECK(v != NULL);
    if (v) {
        const char *p = "{}";
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"HS256\"}", p, "HS256", HS_KEY)), OK);
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"HS256\"}", p, "HS256", pem_text)), SIGNATURE);
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"RS256\"}", p, "RS256", rsa)), OK);
        pb_verifier_destroy(v);
    }
    snprintf(yaml, sizeof(yaml),
             "{scheme: jwt, public_key_file: %s, secret: '" HS_KEY "', algorithms: [RS256]}", path);
    v = mk(yaml);
    PB_CHECK(v != NULL);
    if (v) {
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"HS256\"}", "{}", "HS256", HS_KEY)), SIGNATURE);
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"RS256\"}", "{}", "RS256", rsa)), OK);
        pb_verifier_destroy(v);
    }

    snprintf(yaml, sizeof(yaml), "{scheme: jwt, public_key_file: %s, algorithms: [none]}", path);
    PB_CONTAINS(mk_err(yaml), "never accepted");
    snprintf(yaml, sizeof(yaml), "{scheme: jwt, public_key_file: %s, algorithms: [HS256]}", path);
    PB_CONTAINS(mk_err(yaml), "no secret is configured");
    snprintf(yaml, sizeof(yaml), "{scheme: jwt, public_key_file: %s, algorithms: [PS256]}", path);
    PB_CONTAINS(mk_err(yaml), "not supported");
    PB_CONTAINS(mk_err("{scheme: jwt, public_key_file: /nonexistent/key.pem}"), "cannot open");
    PB_CONTAINS(mk_err("{scheme: jwt}"), "needs secret");
    unlink(path);

    /* Private keys and weak keys are refused at init. */
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(b, rsa, NULL, NULL, 0, NULL, NULL);
    char priv[8192];
    int n = BIO_read(b, priv, sizeof(priv) - 1);
    priv[n > 0 ? n : 0] = 0;
    BIO_free(b);
    path = write_tmp(".pem", priv);
    snprintf(yaml, sizeof(yaml), "{scheme: jwt, public_key_file: %s}", path);
    PB_CONTAINS(mk_err(yaml), "private key");
    unlink(path);
    EVP_PKEY *weak = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    path = write_tmp(".pem", pem_of(weak));
    snprintf(yaml, sizeof(yaml), "{scheme: jwt, public_key_file: %s}", path);
    PB_CONTAINS(mk_err(yaml), "too weak");
    unlink(path);
    EVP_PKEY_free(weak);
    free(pem_text);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(rsa2);
}

PB_TEST(jwt_jwks_rs256_es256_kid)
{
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *ec2 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    PB_CHECK(rsa && ec && ec2);
    char n[600], e[16], x[64], y[64], x2[64], y2[64], jwks[4096];
    bn_b64url(rsa, OSSL_PKEY_PARAM_RSA_N, 0, n);
    bn_b64url(rsa, OSSL_PKEY_PARAM_RSA_E, 0, e);
    bn_b64url(ec, OSSL_PKEY_PARAM_EC_PUB_X, 32, x);
    bn_b64url(ec, OSSL_PKEY_PARAM_EC_PUB_Y, 32, y);
    bn_b64url(ec2, OSSL_PKEY_PARAM_EC_PUB_X, 32, x2);
    bn_b64url(ec2, OSSL_PKEY_PARAM_EC_PUB_Y, 32, y2);
    snprintf(jwks, sizeof(jwks),
             "{\"keys\":["
             "{\"kty\":\"RSA\",\"kid\":\"r1\",\"use\":\"sig\",\"alg\":\"RS256\",\"n\":\"%s\","
             "\"e\":\"%s\"},"
             "{\"kty\":\"EC\",\"kid\":\"e1\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"},"
             "{\"kty\":\"EC\",\"kid\":\"e2\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"},"
             "{\"kty\":\"RSA\",\"kid\":\"enc\",\"use\":\"enc\",\"n\":\"AQAB\",\"e\":\"AQAB\"},"
             "{\"kty\":\"oct\",\"kid\":\"h\",\"k\":\"c2VjcmV0\"}"
             "]}",
             n, e, x, y, x2, y2);
    char *path = write_tmp(".json", jwks);
    char yaml[512];
    snprintf(yaml, sizeof(yaml), "{scheme: jwt, jwks_file: %s, audience: patchbay}", path);
    struct pb_verifier *v = mk(yaml);
    PB_CHECK(v != NULL);
    if (v) {
        const char *p = "{\"aud\":\"patchbay\",\"exp\":1700000600}";
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"RS256\",\"kid\":\"r1\"}", p, "RS256", rsa)), OK);
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"ES256\",\"kid\":\"e1\"}", p, "ES256", ec)), OK);
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"ES256\",\"kid\":\"e2\"}", p, "ES256", ec2)), OK);
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"ES256\"}", p, "ES256", ec2)), OK); /* no kid */
        /* A kid names the key: another key's signature does not pass. */
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"ES256\",\"kid\":\"e1\"}", p, "ES256", ec2)),
                  SIGNATURE);
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"ES256\",\"kid\":\"zz\"}", p, "ES256", ec)),
                  SIGNATURE);
        /* The token's alg cannot move a key to another algorithm. */
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"RS256\",\"kid\":\"e1\"}", p, "RS256", rsa)),
                  SIGNATURE);
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"ES256\",\"kid\":\"r1\"}", p, "ES256", ec)),
                  SIGNATURE);
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"HS256\",\"kid\":\"h\"}", p, "HS256", "secret")),
                  SIGNATURE);
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"ES256\",\"kid\":\"e1\"}",
                                   "{\"aud\":\"else\",\"exp\":1700000600}", "ES256", ec)),
                  CLAIMS);
        pb_verifier_destroy(v);
    }
    unlink(path);

    /* ES256 only: an RS256 token is refused whatever it carries. */
    snprintf(jwks, sizeof(jwks),
             "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"}]}", x, y);
    path = write_tmp(".json", jwks);
    snprintf(yaml, sizeof(yaml), "{scheme: jwt, jwks_file: %s}", path);
    v = mk(yaml);
    PB_CHECK(v != NULL);
    if (v) {
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"ES256\"}", "{}", "ES256", ec)), OK);
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"RS256\"}", "{}", "RS256", rsa)), SIGNATURE);
        pb_verifier_destroy(v);
    }
    unlink(path);

    /* A point off the curve, and a set with nothing usable. */
    snprintf(jwks, sizeof(jwks),
             "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"}]}", x, x);
    path = write_tmp(".json", jwks);
    snprintf(yaml, sizeof(yaml), "{scheme: jwt, jwks_file: %s}", path);
    PB_CONTAINS(mk_err(yaml), "verify.jwks_file: key 0");
    unlink(path);
    path = write_tmp(".json", "{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}]}");
    snprintf(yaml, sizeof(yaml), "{scheme: jwt, jwks_file: %s}", path);
    PB_CONTAINS(mk_err(yaml), "no RS256 or ES256 signing key");
    unlink(path);
    path = write_tmp(".json", "{\"keys\": [");
    snprintf(yaml, sizeof(yaml), "{scheme: jwt, jwks_file: %s}", path);
    PB_CONTAINS(mk_err(yaml), "verify.jwks_file");
    unlink(path);

    /* ES256 from a PEM file. */
    path = write_tmp(".pem", pem_of(ec));
    snprintf(yaml, sizeof(yaml), "{scheme: jwt, public_key_file: [%s]}", path);
    v = mk(yaml);
    PB_CHECK(v != NULL);
    if (v) {
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"ES256\"}", "{}", "ES256", ec)), OK);
        PB_EQ_INT(jwt_check(v, jwt("{\"alg\":\"ES256\"}", "{}", "ES256", ec2)), SIGNATURE);
        pb_verifier_destroy(v);
    }
    unlink(path);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ec);
    EVP_PKEY_free(ec2);
}

PB_TEST(jwt_custom_header)
{
    struct pb_verifier *v = mk("{scheme: jwt, secret: '" HS_KEY "', header: X-Token}");
    PB_CHECK(v != NULL);
    if (!v)
        return;
    struct fake f = {.h = {{"X-Token", jwt("{\"alg\":\"HS256\"}", "{}", "HS256", HS_KEY)}}};
    PB_EQ_INT(check_at(v, &f, "{}", NOW), OK);
    pb_verifier_destroy(v);
}

/* ---- several listener threads share one verifier ------------------------------------------ */

struct shared {
    const struct pb_verifier *sw, *jwt;
    const char *token;
    int failures;
};

static void *hammer(void *arg)
{
    struct shared *sh = arg;
    struct fake f = {
        .h = {{"webhook-id", SW_ID}, {"webhook-timestamp", SW_TS}, {"webhook-signature", SW_SIG}}};
    for (int i = 0; i < 200; i++) {
        if (check_at(sh->sw, &f, SW_BODY, SW_NOW) != OK ||
            check_at(sh->sw, &f, "{}", SW_NOW) != SIGNATURE || jwt_check(sh->jwt, sh->token) != OK)
            __atomic_add_fetch(&sh->failures, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

PB_TEST(concurrent_checks)
{
    EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    char *path = write_tmp(".pem", pem_of(ec));
    char yaml[256];
    snprintf(yaml, sizeof(yaml), "{scheme: jwt, public_key_file: %s}", path);
    struct shared sh = {
        .sw = mk("{scheme: standard-webhooks, secrets: [" SW_SECRET ", " SW_SECRET "]}"),
        .jwt = mk(yaml),
    };
    char token[2048];
    snprintf(token, sizeof(token), "%s", jwt("{\"alg\":\"ES256\"}", "{}", "ES256", ec));
    sh.token = token;
    PB_CHECK(sh.sw && sh.jwt);
    if (sh.sw && sh.jwt) {
        pthread_t t[4];
        for (int i = 0; i < 4; i++)
            pthread_create(&t[i], NULL, hammer, &sh);
        for (int i = 0; i < 4; i++)
            pthread_join(t[i], NULL);
        PB_EQ_INT(sh.failures, 0);
    }
    pb_verifier_destroy((struct pb_verifier *)sh.sw);
    pb_verifier_destroy((struct pb_verifier *)sh.jwt);
    unlink(path);
    EVP_PKEY_free(ec);
}

int main(void)
{
    return pb_test_main();
}
