/* verify_hmac.c - the signature schemes built on HMAC: standard-webhooks
 * (plus its ed25519 "v1a" signatures), github, stripe, shopify and the
 * generic hmac scheme.
 *
 * Every scheme computes the MAC of the signed content once per active
 * secret, then compares every signature the request carries with every MAC
 * (CRYPTO_memcmp, no early exit), so neither timing nor the answer tells
 * which secret or which signature matched. The signature is checked before
 * the timestamp: a stale request that is genuinely signed counts as
 * "timestamp", a forged one as "signature". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include "verify_int.h"

#define WHSEC "whsec_"
#define WHPK "whpk_"
#define WHSK "whsk_"
#define WH_MIN_KEY 24 /* bytes; the Standard Webhooks spec asks for 24 to 64 */
#define WH_MAX_KEY 1024

/* ---- init ---------------------------------------------------------------------------------- */

static int add_ed25519(struct pb_verifier *v, const unsigned char *raw, const char *name,
                       struct pb_err *err)
{
    struct vfy_pub *p = realloc(v->pubs, (v->npubs + 1) * sizeof(*p));
    if (!p)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    v->pubs = p;
    EVP_PKEY *k = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, raw, 32);
    if (!k)
        return pb_err_set(err, PB_ECONFIG, "%s: not a valid ed25519 public key", name);
    v->pubs[v->npubs++] = (struct vfy_pub){.pkey = k, .alg = VFY_ED25519};
    return 0;
}

/* whsec_<base64> is an HMAC key, whpk_<base64> an ed25519 public key. */
static int add_standard_key(struct pb_verifier *v, const char *s, const char *name,
                            struct pb_err *err)
{
    unsigned char buf[WH_MAX_KEY];
    size_t n = 0;
    int rc;
    if (strncmp(s, WHSEC, strlen(WHSEC)) == 0) {
        const char *b = s + strlen(WHSEC);
        if (pb_base64_decode(b, strlen(b), false, buf, sizeof(buf), &n))
            return pb_err_set(err, PB_ECONFIG, "%s: not a whsec_ base64 key", name);
        if (n < WH_MIN_KEY)
            rc = pb_err_set(err, PB_ECONFIG,
                            "%s: a whsec_ key must hold at least %d bytes, this one has %zu", name,
                            WH_MIN_KEY, n);
        else
            rc = pb__vfy_add_key(v, buf, n, err);
        OPENSSL_cleanse(buf, sizeof(buf));
        return rc;
    }
    if (strncmp(s, WHPK, strlen(WHPK)) == 0) {
        const char *b = s + strlen(WHPK);
        if (pb_base64_decode(b, strlen(b), false, buf, sizeof(buf), &n) || n != 32)
            return pb_err_set(err, PB_ECONFIG,
                              "%s: not a whpk_ key (base64 of a 32-byte ed25519 public key)", name);
        return add_ed25519(v, buf, name, err);
    }
    if (strncmp(s, WHSK, strlen(WHSK)) == 0)
        return pb_err_set(err, PB_ECONFIG,
                          "%s: a whsk_ key is the sender's private key; give its whpk_ public "
                          "key",
                          name);
    return pb_err_set(err, PB_ECONFIG, "%s: not a whsec_ or whpk_ base64 key", name);
}

static int parse_template(struct pb_verifier *v, const char *t, bool has_ts, bool has_id,
                          struct pb_err *err)
{
    static const struct {
        const char *text;
        enum vfy_tpl_kind kind;
    } marks[] = {{"{body}", TPL_BODY}, {"{timestamp}", TPL_TIMESTAMP}, {"{id}", TPL_ID}};
    int nbody = 0, nts = 0;
    const char *p = t;
    while (*p) {
        if (v->ntpl >= VFY_MAX_TEMPLATE)
            return pb_err_set(err, PB_ECONFIG, "verify.template: at most %d pieces",
                              VFY_MAX_TEMPLATE);
        struct vfy_tpl *piece = &v->tpl[v->ntpl];
        if (*p != '{') {
            size_t n = strcspn(p, "{");
            piece->lit = strndup(p, n);
            if (!piece->lit)
                return pb_err_set(err, PB_ENOMEM, "out of memory");
            piece->kind = TPL_LIT;
            piece->len = n;
            v->ntpl++;
            p += n;
            continue;
        }
        size_t k = 0;
        for (; k < sizeof(marks) / sizeof(marks[0]); k++)
            if (strncmp(p, marks[k].text, strlen(marks[k].text)) == 0)
                break;
        if (k == sizeof(marks) / sizeof(marks[0]))
            return pb_err_set(err, PB_ECONFIG,
                              "verify.template: unknown placeholder at \"%.20s\" (use {body}, "
                              "{timestamp} and {id})",
                              p);
        piece->kind = marks[k].kind;
        v->ntpl++;
        p += strlen(marks[k].text);
        nbody += marks[k].kind == TPL_BODY;
        nts += marks[k].kind == TPL_TIMESTAMP;
        if (marks[k].kind == TPL_TIMESTAMP && !has_ts)
            return pb_err_set(err, PB_ECONFIG,
                              "verify.template uses {timestamp}: set timestamp_header");
        if (marks[k].kind == TPL_ID && !has_id)
            return pb_err_set(err, PB_ECONFIG, "verify.template uses {id}: set id_header");
    }
    if (nbody != 1)
        return pb_err_set(err, PB_ECONFIG, "verify.template must contain {body} exactly once");
    if (has_ts && nts == 0)
        return pb_err_set(err, PB_ECONFIG,
                          "verify.template must contain {timestamp} when timestamp_header is set "
                          "(an unsigned timestamp proves nothing)");
    return 0;
}

static int generic_init(struct pb_verifier *v, const struct pb_verify_conf *c, struct pb_err *err)
{
    if (!c->header)
        return pb_err_set(err, PB_ECONFIG, "verify.header: scheme hmac needs the signature header");
    switch (c->algorithm) {
    case PB_DIGEST_SHA1:
        v->digest = "SHA1";
        v->mac_len = 20;
        break;
    case PB_DIGEST_SHA512:
        v->digest = "SHA512";
        v->mac_len = 64;
        break;
    default:
        v->digest = "SHA256";
        v->mac_len = 32;
        break;
    }
    v->encoding = c->encoding;
    if (c->timestamp_header && !(v->ts_header = strdup(c->timestamp_header)))
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    if (!c->timestamp_header && c->tolerance_ms != VFY_DEFAULT_TOLERANCE_MS)
        return pb_err_set(err, PB_ECONFIG, "verify.tolerance needs timestamp_header");
    return parse_template(v, c->template ? c->template : "{body}", c->timestamp_header != NULL,
                          c->id_header != NULL, err);
}

int pb__vfy_hmac_init(struct pb_verifier *v, const struct pb_verify_conf *c, struct pb_err *err)
{
    const char *secrets[VFY_MAX_KEYS];
    char names[VFY_MAX_KEYS][40];
    size_t n = 0;
    int rc = pb__vfy_collect_secrets(c, secrets, names, &n, err);
    if (rc)
        return rc;
    v->digest = "SHA256";
    v->mac_len = 32;
    if (c->scheme == PB_SCHEME_HMAC && (rc = generic_init(v, c, err)))
        return rc;
    for (size_t i = 0; i < n; i++) {
        if (c->scheme == PB_SCHEME_STANDARD_WEBHOOKS)
            rc = add_standard_key(v, secrets[i], names[i], err);
        else /* github, stripe, shopify and hmac use the secret's bytes as they are */
            rc = pb__vfy_add_key(v, secrets[i], strlen(secrets[i]), err);
        if (rc)
            return rc;
    }
    return 0;
}

/* ---- standard-webhooks --------------------------------------------------------------------- */

struct sigs {
    unsigned char v1[VFY_MAX_SIGS][VFY_MAX_MAC];
    size_t n1;
    unsigned char v1a[VFY_MAX_SIGS][64];
    size_t n1a;
};

/* "v1,<b64> v1a,<b64> ...": unknown versions are skipped, as the spec
 * asks; more than VFY_MAX_SIGS entries or a bad known one is malformed. */
static int parse_standard_sigs(const char *h, struct sigs *s)
{
    size_t entries = 0;
    const char *p = h;
    while (*p) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        size_t len = strcspn(p, " ");
        const char *comma = memchr(p, ',', len);
        if (!comma || ++entries > VFY_MAX_SIGS)
            return -1;
        size_t vlen = (size_t)(comma - p), blen = len - vlen - 1;
        const char *b = comma + 1;
        size_t got = 0;
        if (vlen == 2 && memcmp(p, "v1", 2) == 0) {
            if (pb_base64_decode(b, blen, false, s->v1[s->n1], VFY_MAX_MAC, &got) || got != 32)
                return -1;
            s->n1++;
        } else if (vlen == 3 && memcmp(p, "v1a", 3) == 0) {
            if (pb_base64_decode(b, blen, false, s->v1a[s->n1a], 64, &got) || got != 64)
                return -1;
            s->n1a++;
        }
        p += len;
    }
    return 0;
}

static bool ed25519_any(const struct pb_verifier *v, const struct sigs *s,
                        const struct pb_piece *pieces, size_t npieces)
{
    if (v->npubs == 0 || s->n1a == 0)
        return false;
    size_t total = 0;
    for (size_t i = 0; i < npieces; i++)
        total += pieces[i].len;
    unsigned char *msg = malloc(total ? total : 1);
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    bool ok = false;
    if (!msg || !m)
        goto out;
    size_t off = 0;
    for (size_t i = 0; i < npieces; i++) {
        memcpy(msg + off, pieces[i].p, pieces[i].len);
        off += pieces[i].len;
    }
    for (size_t k = 0; k < v->npubs && !ok; k++) {
        for (size_t i = 0; i < s->n1a && !ok; i++) {
            EVP_MD_CTX_reset(m);
            if (EVP_DigestVerifyInit(m, NULL, NULL, NULL, v->pubs[k].pkey) == 1 &&
                EVP_DigestVerify(m, s->v1a[i], 64, msg, total) == 1)
                ok = true;
        }
    }
out:
    EVP_MD_CTX_free(m);
    free(msg);
    ERR_clear_error(); /* a refused signature may leave errors on this thread's queue */
    return ok;
}

static int standard_check(const struct pb_verifier *v, const struct pb_verify_req *req,
                          struct pb_verify_result *res)
{
    /* Svix sends svix-* by default; webhook-* is the white-labelled set. A
     * request takes one set whole, webhook-* first. */
    const char *id = req->header(req->conn, "webhook-id");
    const char *ts = req->header(req->conn, "webhook-timestamp");
    const char *sig = req->header(req->conn, "webhook-signature");
    if (!id && !ts && !sig) {
        id = req->header(req->conn, "svix-id");
        ts = req->header(req->conn, "svix-timestamp");
        sig = req->header(req->conn, "svix-signature");
    }
    if (!id || !ts || !sig)
        return pb__vfy_deny(res, PB_VERIFY_MISSING);
    int64_t sec = 0;
    if (pb__vfy_set_id(res, id) || pb__vfy_parse_seconds(ts, &sec) || strlen(sig) > VFY_MAX_HEADER)
        return pb__vfy_deny(res, PB_VERIFY_MALFORMED);
    struct sigs *s = calloc(1, sizeof(*s));
    if (!s)
        return pb__vfy_deny(res, PB_VERIFY_SIGNATURE);
    int rc = 0;
    if (parse_standard_sigs(sig, s)) {
        rc = pb__vfy_deny(res, PB_VERIFY_MALFORMED);
        goto out;
    }
    /* Signed content: {id}.{timestamp}.{body} */
    const struct pb_piece pieces[] = {
        {id, strlen(id)}, {".", 1}, {ts, strlen(ts)}, {".", 1}, {req->body, req->len},
    };
    bool ok = false;
    if (s->n1 && v->nkeys) {
        unsigned char macs[VFY_MAX_KEYS][VFY_MAX_MAC];
        if (pb__vfy_hmac_all(v, pieces, 5, macs) == 0) {
            int hit = 0; /* every signature against every secret, whatever matched */
            for (size_t i = 0; i < s->n1; i++)
                hit |= pb__vfy_match_any(macs, v->nkeys, v->mac_len, s->v1[i], 32);
            ok = hit != 0;
        }
        OPENSSL_cleanse(macs, sizeof(macs));
    }
    if (!ok)
        ok = ed25519_any(v, s, pieces, 5);
    if (!ok)
        rc = pb__vfy_deny(res, PB_VERIFY_SIGNATURE);
    else if (!pb__vfy_fresh(sec, req->now_ms, v->tolerance_ms))
        rc = pb__vfy_deny(res, PB_VERIFY_TIMESTAMP);
out:
    free(s);
    return rc;
}

/* ---- github, shopify: one signature of the body -------------------------------------------- */

static int body_check(const struct pb_verifier *v, const struct pb_verify_req *req,
                      struct pb_verify_result *res, const unsigned char *sig, size_t len)
{
    const struct pb_piece piece = {req->body, req->len};
    unsigned char macs[VFY_MAX_KEYS][VFY_MAX_MAC];
    bool ok = pb__vfy_hmac_all(v, &piece, 1, macs) == 0 &&
              pb__vfy_match_any(macs, v->nkeys, v->mac_len, sig, len);
    OPENSSL_cleanse(macs, sizeof(macs));
    return ok ? 0 : pb__vfy_deny(res, PB_VERIFY_SIGNATURE);
}

/* An optional delivery-id header: absent is fine, garbage is not. */
static int optional_id(const struct pb_verify_req *req, const char *name,
                       struct pb_verify_result *res)
{
    const char *id = req->header(req->conn, name);
    if (id && pb__vfy_set_id(res, id))
        return pb__vfy_deny(res, PB_VERIFY_MALFORMED);
    return 0;
}

static int github_check(const struct pb_verifier *v, const struct pb_verify_req *req,
                        struct pb_verify_result *res)
{
    const char *h = req->header(req->conn, "X-Hub-Signature-256");
    if (!h)
        return pb__vfy_deny(res, PB_VERIFY_MISSING);
    unsigned char sig[VFY_MAX_MAC];
    size_t n = 0;
    if (strncmp(h, "sha256=", 7) != 0 || strlen(h) != 7 + 64 ||
        pb_hex_decode(h + 7, 64, sig, sizeof(sig), &n))
        return pb__vfy_deny(res, PB_VERIFY_MALFORMED);
    int rc = body_check(v, req, res, sig, n);
    return rc ? rc : optional_id(req, "X-GitHub-Delivery", res);
}

static int shopify_check(const struct pb_verifier *v, const struct pb_verify_req *req,
                         struct pb_verify_result *res)
{
    const char *h = req->header(req->conn, "X-Shopify-Hmac-Sha256");
    if (!h)
        return pb__vfy_deny(res, PB_VERIFY_MISSING);
    unsigned char sig[VFY_MAX_MAC];
    size_t n = 0;
    size_t len = strlen(h);
    if (len > 128 || pb_base64_decode(h, len, false, sig, sizeof(sig), &n) || n != 32)
        return pb__vfy_deny(res, PB_VERIFY_MALFORMED);
    int rc = body_check(v, req, res, sig, n);
    return rc ? rc : optional_id(req, "X-Shopify-Webhook-Id", res);
}

/* ---- stripe -------------------------------------------------------------------------------- */

/* "t=<ts>,v1=<hex>,v1=<hex>,v0=...": one t, up to VFY_MAX_SIGS v1 values;
 * other schemes (v0 is Stripe's test-mode one) are skipped. */
static int stripe_check(const struct pb_verifier *v, const struct pb_verify_req *req,
                        struct pb_verify_result *res)
{
    const char *h = req->header(req->conn, "Stripe-Signature");
    if (!h)
        return pb__vfy_deny(res, PB_VERIFY_MISSING);
    if (strlen(h) > VFY_MAX_HEADER)
        return pb__vfy_deny(res, PB_VERIFY_MALFORMED);
    char ts[16] = "";
    unsigned char sigs[VFY_MAX_SIGS][32];
    size_t nsigs = 0, items = 0;
    bool have_t = false;
    for (const char *p = h; *p;) {
        size_t len = strcspn(p, ",");
        const char *eq = memchr(p, '=', len);
        if (!eq || ++items > 2 * VFY_MAX_SIGS)
            return pb__vfy_deny(res, PB_VERIFY_MALFORMED);
        size_t klen = (size_t)(eq - p), vlen = len - klen - 1;
        if (klen == 1 && *p == 't') {
            if (have_t || vlen == 0 || vlen >= sizeof(ts))
                return pb__vfy_deny(res, PB_VERIFY_MALFORMED);
            memcpy(ts, eq + 1, vlen);
            ts[vlen] = 0;
            have_t = true;
        } else if (klen == 2 && memcmp(p, "v1", 2) == 0) {
            size_t got = 0;
            if (nsigs >= VFY_MAX_SIGS || vlen != 64 ||
                pb_hex_decode(eq + 1, vlen, sigs[nsigs], 32, &got))
                return pb__vfy_deny(res, PB_VERIFY_MALFORMED);
            nsigs++;
        }
        p += len;
        if (*p == ',')
            p++;
    }
    int64_t sec = 0;
    if (!have_t || pb__vfy_parse_seconds(ts, &sec))
        return pb__vfy_deny(res, PB_VERIFY_MALFORMED);
    if (nsigs == 0)
        return pb__vfy_deny(res, PB_VERIFY_SIGNATURE);
    /* Signed content: {t}.{body} */
    const struct pb_piece pieces[] = {{ts, strlen(ts)}, {".", 1}, {req->body, req->len}};
    unsigned char macs[VFY_MAX_KEYS][VFY_MAX_MAC];
    int hit = 0;
    if (pb__vfy_hmac_all(v, pieces, 3, macs) == 0)
        for (size_t i = 0; i < nsigs; i++)
            hit |= pb__vfy_match_any(macs, v->nkeys, v->mac_len, sigs[i], 32);
    OPENSSL_cleanse(macs, sizeof(macs));
    if (!hit)
        return pb__vfy_deny(res, PB_VERIFY_SIGNATURE);
    if (!pb__vfy_fresh(sec, req->now_ms, v->tolerance_ms))
        return pb__vfy_deny(res, PB_VERIFY_TIMESTAMP);
    return 0; /* the event id is inside the body: no webhook id here */
}

/* ---- generic hmac -------------------------------------------------------------------------- */

static int generic_check(const struct pb_verifier *v, const struct pb_verify_req *req,
                         struct pb_verify_result *res)
{
    const char *h = req->header(req->conn, v->header);
    if (!h)
        return pb__vfy_deny(res, PB_VERIFY_MISSING);
    size_t plen = v->prefix ? strlen(v->prefix) : 0;
    if (strlen(h) > VFY_MAX_HEADER || (plen && strncmp(h, v->prefix, plen) != 0))
        return pb__vfy_deny(res, PB_VERIFY_MALFORMED);
    h += plen;
    unsigned char sig[VFY_MAX_MAC];
    size_t n = 0;
    int bad = v->encoding == PB_ENCODING_BASE64
                  ? pb_base64_decode(h, strlen(h), false, sig, sizeof(sig), &n)
                  : pb_hex_decode(h, strlen(h), sig, sizeof(sig), &n);
    if (bad || n != v->mac_len)
        return pb__vfy_deny(res, PB_VERIFY_MALFORMED);

    const char *ts = NULL, *id = NULL;
    int64_t sec = 0;
    if (v->ts_header) {
        if (!(ts = req->header(req->conn, v->ts_header)))
            return pb__vfy_deny(res, PB_VERIFY_MISSING);
        if (pb__vfy_parse_seconds(ts, &sec))
            return pb__vfy_deny(res, PB_VERIFY_MALFORMED);
    }
    struct pb_piece pieces[VFY_MAX_TEMPLATE];
    for (size_t i = 0; i < v->ntpl; i++) {
        switch (v->tpl[i].kind) {
        case TPL_LIT:
            pieces[i] = (struct pb_piece){v->tpl[i].lit, v->tpl[i].len};
            break;
        case TPL_BODY:
            pieces[i] = (struct pb_piece){req->body, req->len};
            break;
        case TPL_TIMESTAMP:
            pieces[i] = (struct pb_piece){ts, strlen(ts)};
            break;
        case TPL_ID:
            if (!id && !(id = req->header(req->conn, v->id_header)))
                return pb__vfy_deny(res, PB_VERIFY_MISSING);
            if (pb__vfy_set_id(res, id))
                return pb__vfy_deny(res, PB_VERIFY_MALFORMED);
            pieces[i] = (struct pb_piece){id, strlen(id)};
            break;
        }
    }
    unsigned char macs[VFY_MAX_KEYS][VFY_MAX_MAC];
    bool ok = pb__vfy_hmac_all(v, pieces, v->ntpl, macs) == 0 &&
              pb__vfy_match_any(macs, v->nkeys, v->mac_len, sig, n);
    OPENSSL_cleanse(macs, sizeof(macs));
    if (!ok)
        return pb__vfy_deny(res, PB_VERIFY_SIGNATURE);
    if (v->ts_header && !pb__vfy_fresh(sec, req->now_ms, v->tolerance_ms))
        return pb__vfy_deny(res, PB_VERIFY_TIMESTAMP);
    return 0; /* the id, if any, is set (here or by pb_verifier_check) */
}

int pb__vfy_hmac_check(const struct pb_verifier *v, const struct pb_verify_req *req,
                       struct pb_verify_result *res)
{
    switch (v->scheme) {
    case PB_SCHEME_STANDARD_WEBHOOKS:
        return standard_check(v, req, res);
    case PB_SCHEME_GITHUB:
        return github_check(v, req, res);
    case PB_SCHEME_STRIPE:
        return stripe_check(v, req, res);
    case PB_SCHEME_SHOPIFY:
        return shopify_check(v, req, res);
    default:
        return generic_check(v, req, res);
    }
}
