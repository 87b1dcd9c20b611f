/* fuzz_verify.c - the webhook signature checks of the http_server input
 * (pb_verifier_check) on fuzzed requests, through the public path: each
 * verifier is built from a YAML `verify` block (pb_verify_fields +
 * pb_verifier_create), the request is a fake with header and query
 * callbacks, as the listener passes it.
 *
 * Input:  byte 0   which verifier (standard-webhooks, github, stripe,
 *                  shopify, two hmac variants, two api_key, basic, jwt)
 *         byte 1   flags: 1 = sign the request correctly (so the fuzzer
 *                  gets past the MAC to timestamps, ids and JWT claims),
 *                  2 = use the current time as the timestamp, 4 = sign with
 *                  the asymmetric key (ed25519 v1a, ES256) instead
 *         then     header lines "Name: value", and "?name=value" query
 *                  lines, up to an empty line; the rest is the body. For
 *                  jwt, "jwt-header:" and "jwt-claims:" lines give the JSON
 *                  that is encoded and signed.
 * Properties: no crash, leak or overread; a refusal carries a known reason;
 * an acceptance carries a delivery id of 0-255 visible ASCII characters; and
 * a request signed correctly over any body is accepted by the schemes that
 * sign only the body (github, shopify, hmac without timestamp), by api_key
 * and by basic with the right credential, and by standard-webhooks when its
 * id and timestamp are valid and current. */
#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include "fuzz.h"
#include "patchbay/pb_conf.h"
#include "verify.h"

#define NOW_MS 1700000000000LL
#define NOW_S "1700000000"
#define MAXH 32

enum {
    V_SW,
    V_GITHUB,
    V_STRIPE,
    V_SHOPIFY,
    V_HMAC_TS,
    V_HMAC_B64,
    V_KEY_HDR,
    V_KEY_QUERY,
    V_BASIC,
    V_JWT,
    NV
};

static const char SW_SECRET_RAW[] = "0123456789abcdef0123456789abcdef";
static const char SW_SECRET[] = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
static const char JWT_SECRET[] = "a-jwt-secret-of-at-least-32-bytes!!";

static struct pb_verifier *verifiers[NV];
static EVP_PKEY *ed_key, *ec_key;

/* ---- encoding helpers --------------------------------------------------------- */

static size_t b64(const unsigned char *in, size_t n, char *out, bool url)
{
    static const char *std = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    static const char *urls = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const char *t = url ? urls : std;
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = t[v >> 18], out[o++] = t[(v >> 12) & 63], out[o++] = t[(v >> 6) & 63],
        out[o++] = t[v & 63];
    }
    if (n - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        out[o++] = t[v >> 18], out[o++] = t[(v >> 12) & 63];
        if (!url)
            out[o++] = '=', out[o++] = '=';
    } else if (n - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        out[o++] = t[v >> 18], out[o++] = t[(v >> 12) & 63], out[o++] = t[(v >> 6) & 63];
        if (!url)
            out[o++] = '=';
    }
    out[o] = 0;
    return o;
}

static void hex(const unsigned char *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", in[i]);
    out[2 * n] = 0;
}

static unsigned hmac(const char *md, const void *key, size_t klen, const void *a, size_t alen,
                     unsigned char out[64])
{
    unsigned len = 0;
    HMAC(EVP_get_digestbyname(md), key, (int)klen, a, alen, out, &len);
    return len;
}

/* ---- the fake request ------------------------------------------------------------ */

/* MAXH fuzzed headers, plus room for the ones sign() puts in front. */
struct fake {
    const char *hname[MAXH + 8], *hval[MAXH + 8];
    size_t nh;
    const char *qname[MAXH], *qval[MAXH];
    size_t nq;
};

static const char *hdr_cb(void *conn, const char *name)
{
    struct fake *f = conn;
    for (size_t i = 0; i < f->nh; i++)
        if (strcasecmp(f->hname[i], name) == 0)
            return f->hval[i];
    return NULL;
}

static const char *query_cb(void *conn, const char *name)
{
    struct fake *f = conn;
    for (size_t i = 0; i < f->nq; i++)
        if (strcmp(f->qname[i], name) == 0)
            return f->qval[i];
    return NULL;
}

/* Put name: value in front, so it wins over a fuzzed header of that name. */
static void set_hdr(struct fake *f, const char *name, const char *value)
{
    FUZZ_ASSERT(f->nh < MAXH + 8, "harness: no room for header %s", name);
    memmove(&f->hname[1], &f->hname[0], f->nh * sizeof(f->hname[0]));
    memmove(&f->hval[1], &f->hval[0], f->nh * sizeof(f->hval[0]));
    f->hname[0] = name;
    f->hval[0] = value;
    f->nh++;
}

/* ---- set-up ------------------------------------------------------------------------ */

static struct pb_verifier *make(const char *yaml)
{
    struct pb_err err = {0};
    struct pb_conf_doc *doc = pb_conf_load_string("verify.yaml", yaml, strlen(yaml), &err);
    FUZZ_ASSERT(doc, "verify block does not load: %s\n%s", err.msg, yaml);
    struct pb_verify_conf c;
    memset(&c, 0, sizeof(c));
    FUZZ_ASSERT(pb_conf_decode(pb_conf_root(doc), pb_verify_fields, &c, &err) == 0,
                "verify block does not decode: %s\n%s", err.msg, yaml);
    struct pb_verifier *v = pb_verifier_create(&c, &err);
    FUZZ_ASSERT(v, "verifier not created: %s\n%s", err.msg, yaml);
    pb_conf_free(pb_verify_fields, &c);
    pb_conf_doc_destroy(doc);
    return v;
}

static EVP_PKEY *keygen(int type, const char *curve)
{
    EVP_PKEY *k = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(type, NULL);
    FUZZ_ASSERT(ctx && EVP_PKEY_keygen_init(ctx) == 1, "keygen init");
    if (curve)
        FUZZ_ASSERT(EVP_PKEY_CTX_set_ec_paramgen_curve_nid(ctx, OBJ_txt2nid(curve)) == 1, "curve");
    FUZZ_ASSERT(EVP_PKEY_keygen(ctx, &k) == 1, "keygen");
    EVP_PKEY_CTX_free(ctx);
    return k;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char yaml[4096], pk[64], pkb64[128];
    size_t pklen = sizeof(pk);

    ed_key = keygen(EVP_PKEY_ED25519, NULL);
    FUZZ_ASSERT(EVP_PKEY_get_raw_public_key(ed_key, (unsigned char *)pk, &pklen) == 1, "ed raw");
    b64((unsigned char *)pk, pklen, pkb64, false);
    ec_key = keygen(EVP_PKEY_EC, "prime256v1");
    char pem_path[] = "/tmp/pb-fuzz-es256-XXXXXX";
    int fd = mkstemp(pem_path);
    FUZZ_ASSERT(fd >= 0, "mkstemp");
    FILE *f = fdopen(fd, "w");
    FUZZ_ASSERT(f && PEM_write_PUBKEY(f, ec_key) == 1, "write PEM");
    fclose(f);

    snprintf(yaml, sizeof(yaml),
             "scheme: standard-webhooks\nsecrets: [\"%s\", \"whpk_%s\"]\ntolerance: 5m\n",
             SW_SECRET, pkb64);
    verifiers[V_SW] = make(yaml);
    verifiers[V_GITHUB] = make("scheme: github\nsecret: \"It's a Secret to Everybody\"\n");
    verifiers[V_STRIPE] = make("scheme: stripe\nsecret: whsec_stripe_test\n");
    verifiers[V_SHOPIFY] = make("scheme: shopify\nsecrets: [hush, hush2]\n");
    verifiers[V_HMAC_TS] = make("scheme: hmac\nsecret: partner\nheader: X-Signature\n"
                                "prefix: \"sha256=\"\ntemplate: \"{timestamp}.{id}.{body}\"\n"
                                "timestamp_header: X-Timestamp\nid_header: X-Id\n");
    verifiers[V_HMAC_B64] = make("scheme: hmac\nsecret: key\nheader: X-Signature\n"
                                 "algorithm: sha1\nencoding: base64\n");
    verifiers[V_KEY_HDR] = make("scheme: api_key\nsecrets: [k1, k2]\nheader: Authorization\n"
                                "prefix: \"Bearer \"\nid_header: X-Id\n");
    verifiers[V_KEY_QUERY] = make("scheme: api_key\nsecret: k1\nquery: token\n");
    verifiers[V_BASIC] = make("scheme: basic\ncredentials: [\"shop:pw1\", \"shop:pw:2\"]\n");
    snprintf(yaml, sizeof(yaml),
             "scheme: jwt\nsecret: \"%s\"\npublic_key_file: %s\nissuer: https://partner.example\n"
             "audience: [patchbay, other]\nid_header: X-Id\n",
             JWT_SECRET, pem_path);
    verifiers[V_JWT] = make(yaml);
    unlink(pem_path);
    return 0;
}

/* ---- signing ----------------------------------------------------------------------- */

static bool visible_id(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 255)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] <= 0x20 || s[i] >= 0x7f)
            return false;
    return true;
}

/* Returns whether a correctly signed request must be accepted. */
static bool sign(int which, unsigned flags, struct fake *f, const char *body, size_t blen,
                 char *store, size_t cap)
{
    unsigned char mac[64];
    unsigned n;
    char *cat = malloc(blen + 1024);
    bool must = false;
    if (!cat)
        return false;
    if (flags & 2) {
        const char *tsname = which == V_SW ? "webhook-timestamp" : "X-Timestamp";
        set_hdr(f, tsname, NOW_S);
    }
    switch (which) {
    case V_SW: {
        const char *id = hdr_cb(f, "webhook-id");
        const char *ts = hdr_cb(f, "webhook-timestamp");
        if (!id)
            set_hdr(f, "webhook-id", id = "msg_fuzz");
        if (!ts)
            set_hdr(f, "webhook-timestamp", ts = NOW_S);
        size_t clen = (size_t)snprintf(cat, 1024, "%s.%s.", id, ts);
        if (strlen(id) + strlen(ts) + 2 >= 1024)
            break;
        memcpy(cat + clen, body, blen);
        clen += blen;
        if (flags & 4) {
            unsigned char sig[64];
            size_t slen = sizeof(sig);
            EVP_MD_CTX *m = EVP_MD_CTX_new();
            EVP_DigestSignInit(m, NULL, NULL, NULL, ed_key);
            EVP_DigestSign(m, sig, &slen, (unsigned char *)cat, clen);
            EVP_MD_CTX_free(m);
            strcpy(store, "v1a,");
            b64(sig, slen, store + 4, false);
        } else {
            n = hmac("SHA256", SW_SECRET_RAW, strlen(SW_SECRET_RAW), cat, clen, mac);
            strcpy(store, "v1,");
            b64(mac, n, store + 3, false);
        }
        set_hdr(f, "webhook-signature", store);
        must = visible_id(id) && strcmp(ts, NOW_S) == 0;
        break;
    }
    case V_GITHUB:
        n = hmac("SHA256", "It's a Secret to Everybody", 26, body, blen, mac);
        strcpy(store, "sha256=");
        hex(mac, n, store + 7);
        set_hdr(f, "X-Hub-Signature-256", store);
        must = !hdr_cb(f, "X-GitHub-Delivery") || visible_id(hdr_cb(f, "X-GitHub-Delivery"));
        break;
    case V_STRIPE: {
        const char *ts = (flags & 2) ? NOW_S : "1700000001";
        size_t clen = (size_t)snprintf(cat, 1024, "%s.", ts);
        memcpy(cat + clen, body, blen);
        n = hmac("SHA256", "whsec_stripe_test", 17, cat, clen + blen, mac);
        int o = snprintf(store, cap, "t=%s,v1=", ts);
        hex(mac, n, store + o);
        set_hdr(f, "Stripe-Signature", store);
        must = true;
        break;
    }
    case V_SHOPIFY:
        n = hmac("SHA256", "hush2", 5, body, blen, mac);
        b64(mac, n, store, false);
        set_hdr(f, "X-Shopify-Hmac-Sha256", store);
        must = !hdr_cb(f, "X-Shopify-Webhook-Id") || visible_id(hdr_cb(f, "X-Shopify-Webhook-Id"));
        break;
    case V_HMAC_TS: {
        const char *id = hdr_cb(f, "X-Id");
        const char *ts = hdr_cb(f, "X-Timestamp");
        if (!id)
            set_hdr(f, "X-Id", id = "d-1");
        if (!ts)
            set_hdr(f, "X-Timestamp", ts = NOW_S);
        if (strlen(id) + strlen(ts) + 2 >= 1024)
            break;
        size_t clen = (size_t)snprintf(cat, 1024, "%s.%s.", ts, id);
        memcpy(cat + clen, body, blen);
        n = hmac("SHA256", "partner", 7, cat, clen + blen, mac);
        strcpy(store, "sha256=");
        hex(mac, n, store + 7);
        set_hdr(f, "X-Signature", store);
        must = visible_id(id) && strcmp(ts, NOW_S) == 0;
        break;
    }
    case V_HMAC_B64:
        n = hmac("SHA1", "key", 3, body, blen, mac);
        b64(mac, n, store, false);
        set_hdr(f, "X-Signature", store);
        must = true;
        break;
    case V_KEY_HDR:
        set_hdr(f, "Authorization", (flags & 4) ? "Bearer k2" : "Bearer k1");
        must = !hdr_cb(f, "X-Id") || visible_id(hdr_cb(f, "X-Id"));
        break;
    case V_KEY_QUERY:
        if (f->nq < MAXH) {
            memmove(&f->qname[1], &f->qname[0], f->nq * sizeof(f->qname[0]));
            memmove(&f->qval[1], &f->qval[0], f->nq * sizeof(f->qval[0]));
            f->qname[0] = "token", f->qval[0] = "k1", f->nq++;
            must = true;
        }
        break;
    case V_BASIC: {
        const char *cred = (flags & 4) ? "shop:pw:2" : "shop:pw1";
        strcpy(store, "Basic ");
        b64((const unsigned char *)cred, strlen(cred), store + 6, false);
        set_hdr(f, "Authorization", store);
        must = true;
        break;
    }
    case V_JWT: {
        const char *h = hdr_cb(f, "jwt-header");
        const char *c = hdr_cb(f, "jwt-claims");
        bool es = flags & 4;
        if (!h)
            h = es ? "{\"alg\":\"ES256\",\"typ\":\"JWT\"}" : "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
        if (!c)
            c = "{\"iss\":\"https://partner.example\",\"aud\":\"patchbay\",\"exp\":1700000600}";
        if (strlen(h) + strlen(c) > 4000)
            break;
        char *o = store;
        strcpy(o, "Bearer ");
        o += 7;
        o += b64((const unsigned char *)h, strlen(h), o, true);
        *o++ = '.';
        o += b64((const unsigned char *)c, strlen(c), o, true);
        size_t signed_len = (size_t)(o - (store + 7));
        unsigned char sig[80];
        size_t slen = 0;
        if (es) {
            unsigned char der[80];
            size_t dlen = sizeof(der);
            EVP_MD_CTX *m = EVP_MD_CTX_new();
            EVP_DigestSignInit(m, NULL, EVP_sha256(), NULL, ec_key);
            EVP_DigestSign(m, der, &dlen, (unsigned char *)store + 7, signed_len);
            EVP_MD_CTX_free(m);
            const unsigned char *p = der;
            ECDSA_SIG *es_sig = d2i_ECDSA_SIG(NULL, &p, (long)dlen);
            BN_bn2binpad(ECDSA_SIG_get0_r(es_sig), sig, 32);
            BN_bn2binpad(ECDSA_SIG_get0_s(es_sig), sig + 32, 32);
            ECDSA_SIG_free(es_sig);
            slen = 64;
        } else {
            slen = hmac("SHA256", JWT_SECRET, strlen(JWT_SECRET), store + 7, signed_len, sig);
        }
        *o++ = '.';
        b64(sig, slen, o, true);
        set_hdr(f, "Authorization", store);
        break;
    }
    default:
        break;
    }
    free(cat);
    return must;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    int which = data[0] % NV;
    unsigned flags = data[1];
    char *text = fuzz_strdup(data + 2, size - 2);
    char *store = malloc(16384);
    struct fake f = {0};
    if (!text || !store)
        goto out;

    /* Header and query lines, then the body (which may hold NUL bytes). */
    size_t tlen = size - 2, pos = 0;
    while (pos < tlen) {
        char *nl = memchr(text + pos, '\n', tlen - pos);
        if (!nl)
            break;
        *nl = 0;
        char *line = text + pos;
        pos = (size_t)(nl - text) + 1;
        if (!*line)
            break;
        if (line[0] == '?') {
            char *eq = strchr(line + 1, '=');
            if (eq && f.nq < MAXH) {
                *eq = 0;
                f.qname[f.nq] = line + 1, f.qval[f.nq++] = eq + 1;
            }
            continue;
        }
        char *colon = strchr(line, ':');
        if (colon && f.nh < MAXH) {
            *colon = 0;
            char *v = colon + 1;
            while (*v == ' ')
                v++;
            f.hname[f.nh] = line, f.hval[f.nh++] = v;
        }
    }
    const char *body = text + pos;
    size_t blen = tlen - pos;

    bool must = false;
    if (flags & 1)
        must = sign(which, flags, &f, body, blen, store, 16384);

    /* The body as the listener hands it over: exactly blen bytes. */
    char *exact = malloc(blen ? blen : 1);
    memcpy(exact, body, blen);
    struct pb_verify_req req = {
        .method = "POST",
        .path = "/hooks/x",
        .body = exact,
        .len = blen,
        .now_ms = NOW_MS,
        .header = hdr_cb,
        .query = query_cb,
        .conn = &f,
    };
    struct pb_verify_result res;
    memset(&res, 0, sizeof(res)); /* as the listener does */
    int rc = pb_verifier_check(verifiers[which], &req, &res);
    if (rc == 0) {
        size_t idl = strnlen(res.webhook_id, sizeof(res.webhook_id));
        FUZZ_ASSERT(idl < sizeof(res.webhook_id), "webhook id not terminated");
        for (size_t i = 0; i < idl; i++)
            FUZZ_ASSERT(res.webhook_id[i] > 0x20 && res.webhook_id[i] < 0x7f,
                        "webhook id byte 0x%02x", (unsigned char)res.webhook_id[i]);
    } else {
        FUZZ_ASSERT(rc == PB_EDENIED, "verifier %d returned %d", which, rc);
        FUZZ_ASSERT((int)res.reason >= 0 && res.reason < PB_VERIFY_REASON_COUNT,
                    "reason %d out of range", (int)res.reason);
        FUZZ_ASSERT(!must, "verifier %d refused a correctly signed request (reason %d)", which,
                    (int)res.reason);
    }
    free(exact);
out:
    free(store);
    free(text);
    return 0;
}
