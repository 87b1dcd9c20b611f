/* verify.c - the `verify` block of the http_server input: its field table,
 * the checks that tie options to schemes, the verifier's life cycle and
 * the two schemes without signatures (api_key, basic).
 *
 * Signature schemes live in verify_hmac.c (standard-webhooks, github,
 * stripe, shopify, hmac) and verify_jwt.c (jwt). Everything a request needs
 * is decoded at init; on the request path a verifier only reads. Secrets
 * are compared in constant time against every active one, with no early
 * exit, and never appear in errors or results. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "verify_int.h"

const char *const pb_verify_scheme_names[] = {
    "none", "standard-webhooks", "github", "stripe", "shopify",
    "hmac", "api_key",           "basic",  "jwt",    NULL,
};
static const char *const digests[] = {"sha256", "sha1", "sha512", NULL};
static const char *const encodings[] = {"hex", "base64", NULL};

#define F(field) offsetof(struct pb_verify_conf, field)
const struct pb_field pb_verify_fields[] = {
    {.name = "scheme",
     .type = PB_F_ENUM,
     .offset = F(scheme),
     .flags = PB_FIELD_REQUIRED,
     .choices = pb_verify_scheme_names,
     .def = "none",
     .doc = "standard-webhooks, github, stripe, shopify, hmac, api_key, basic or jwt"},
    {.name = "secret",
     .type = PB_F_SECRET,
     .offset = F(secret),
     .doc = "the shared secret (standard-webhooks: whsec_/whpk_ key)"},
    {.name = "secrets",
     .type = PB_F_STRLIST,
     .offset = F(secrets),
     .doc = "several secrets active at once, during a rotation"},
    {.name = "tolerance",
     .type = PB_F_DURATION,
     .offset = F(tolerance_ms),
     .def = "5m",
     .doc = "how far a signed timestamp may be from now"},
    {.name = "header",
     .type = PB_F_STR,
     .offset = F(header),
     .doc = "hmac: signature header; api_key: key header (X-Api-Key); jwt: token header"},
    {.name = "algorithm",
     .type = PB_F_ENUM,
     .offset = F(algorithm),
     .choices = digests,
     .def = "sha256",
     .doc = "hmac: digest"},
    {.name = "encoding",
     .type = PB_F_ENUM,
     .offset = F(encoding),
     .choices = encodings,
     .def = "hex",
     .doc = "hmac: how the signature is written"},
    {.name = "prefix",
     .type = PB_F_STR,
     .offset = F(prefix),
     .doc = "hmac, api_key: text before the value (e.g. sha256=)"},
    {.name = "template",
     .type = PB_F_STR,
     .offset = F(template),
     .doc = "hmac: signed content, from {body}, {timestamp} and {id} (default {body})"},
    {.name = "timestamp_header",
     .type = PB_F_STR,
     .offset = F(timestamp_header),
     .doc = "hmac: header with the unix time of signing"},
    {.name = "id_header",
     .type = PB_F_STR,
     .offset = F(id_header),
     .doc = "header with the sender's delivery id (replay protection)"},
    {.name = "query",
     .type = PB_F_STR,
     .offset = F(query),
     .doc = "api_key: query parameter carrying the key"},
    {.name = "user", .type = PB_F_STR, .offset = F(user), .doc = "basic: user name"},
    {.name = "password", .type = PB_F_SECRET, .offset = F(password), .doc = "basic: password"},
    {.name = "credentials",
     .type = PB_F_STRLIST,
     .offset = F(credentials),
     .doc = "basic: accepted \"user:password\" pairs"},
    {.name = "algorithms",
     .type = PB_F_STRLIST,
     .offset = F(algorithms),
     .doc = "jwt: accepted algorithms (HS256, RS256, ES256); default: those of the keys"},
    {.name = "public_key_file",
     .type = PB_F_STRLIST,
     .offset = F(public_key_file),
     .doc = "jwt: PEM files with public keys or certificates"},
    {.name = "jwks_file",
     .type = PB_F_STR,
     .offset = F(jwks_file),
     .doc = "jwt: JSON Web Key Set file"},
    {.name = "audience",
     .type = PB_F_STRLIST,
     .offset = F(audience),
     .doc = "jwt: accepted aud values"},
    {.name = "issuer", .type = PB_F_STR, .offset = F(issuer), .doc = "jwt: required iss"},
    {.name = "leeway",
     .type = PB_F_DURATION,
     .offset = F(leeway_ms),
     .def = "60s",
     .doc = "jwt: clock skew allowed for exp and nbf"},
    {0},
};
#undef F

/* ---- which option belongs to which scheme ---------------------------------------------- */

enum {
    O_SECRET = 1u << 0,
    O_TOLERANCE = 1u << 1,
    O_HEADER = 1u << 2,
    O_ALGORITHM = 1u << 3,
    O_ENCODING = 1u << 4,
    O_PREFIX = 1u << 5,
    O_TEMPLATE = 1u << 6,
    O_TS_HEADER = 1u << 7,
    O_ID_HEADER = 1u << 8,
    O_QUERY = 1u << 9,
    O_USER = 1u << 10,
    O_PASSWORD = 1u << 11,
    O_CREDENTIALS = 1u << 12,
    O_ALGORITHMS = 1u << 13,
    O_PUBKEY = 1u << 14,
    O_JWKS = 1u << 15,
    O_AUDIENCE = 1u << 16,
    O_ISSUER = 1u << 17,
    O_LEEWAY = 1u << 18,
};

static const char *const opt_names[] = {
    "secret",    "tolerance", "header",           "algorithm",  "encoding",
    "prefix",    "template",  "timestamp_header", "id_header",  "query",
    "user",      "password",  "credentials",      "algorithms", "public_key_file",
    "jwks_file", "audience",  "issuer",           "leeway",
};

static const unsigned scheme_opts[] = {
    [PB_SCHEME_NONE] = 0,
    [PB_SCHEME_STANDARD_WEBHOOKS] = O_SECRET | O_TOLERANCE,
    [PB_SCHEME_GITHUB] = O_SECRET,
    [PB_SCHEME_STRIPE] = O_SECRET | O_TOLERANCE,
    [PB_SCHEME_SHOPIFY] = O_SECRET,
    [PB_SCHEME_HMAC] = O_SECRET | O_TOLERANCE | O_HEADER | O_ALGORITHM | O_ENCODING | O_PREFIX |
                       O_TEMPLATE | O_TS_HEADER | O_ID_HEADER,
    [PB_SCHEME_API_KEY] = O_SECRET | O_HEADER | O_PREFIX | O_QUERY | O_ID_HEADER,
    [PB_SCHEME_BASIC] = O_USER | O_PASSWORD | O_CREDENTIALS | O_ID_HEADER,
    [PB_SCHEME_JWT] = O_SECRET | O_HEADER | O_ALGORITHMS | O_PUBKEY | O_JWKS | O_AUDIENCE |
                      O_ISSUER | O_LEEWAY | O_ID_HEADER,
};

/* Options given in c. Defaulted values count as given when they differ
 * from the default, which is as close as the decoded struct lets us see. */
static unsigned given_opts(const struct pb_verify_conf *c)
{
    unsigned o = 0;
    if (c->secret || c->secrets.n)
        o |= O_SECRET;
    if (c->tolerance_ms != VFY_DEFAULT_TOLERANCE_MS)
        o |= O_TOLERANCE;
    if (c->header)
        o |= O_HEADER;
    if (c->algorithm != PB_DIGEST_SHA256)
        o |= O_ALGORITHM;
    if (c->encoding != PB_ENCODING_HEX)
        o |= O_ENCODING;
    if (c->prefix)
        o |= O_PREFIX;
    if (c->template)
        o |= O_TEMPLATE;
    if (c->timestamp_header)
        o |= O_TS_HEADER;
    if (c->id_header)
        o |= O_ID_HEADER;
    if (c->query)
        o |= O_QUERY;
    if (c->user)
        o |= O_USER;
    if (c->password)
        o |= O_PASSWORD;
    if (c->credentials.n)
        o |= O_CREDENTIALS;
    if (c->algorithms.n)
        o |= O_ALGORITHMS;
    if (c->public_key_file.n)
        o |= O_PUBKEY;
    if (c->jwks_file)
        o |= O_JWKS;
    if (c->audience.n)
        o |= O_AUDIENCE;
    if (c->issuer)
        o |= O_ISSUER;
    if (c->leeway_ms != VFY_DEFAULT_LEEWAY_MS)
        o |= O_LEEWAY;
    return o;
}

int pb_verify_conf_check(const struct pb_verify_conf *c, struct pb_err *err)
{
    if (c->scheme < PB_SCHEME_NONE || c->scheme > PB_SCHEME_JWT)
        return pb_err_set(err, PB_ECONFIG, "verify.scheme: unknown scheme %d", c->scheme);
    const char *scheme = pb_verify_scheme_names[c->scheme];
    unsigned extra = given_opts(c) & ~scheme_opts[c->scheme];
    if (!extra)
        return 0;
    size_t i = 0;
    while (!(extra & (1u << i)))
        i++;
    char takes[256] = "";
    for (size_t k = 0; k < sizeof(opt_names) / sizeof(opt_names[0]); k++) {
        if (!(scheme_opts[c->scheme] & (1u << k)))
            continue;
        size_t used = strlen(takes);
        snprintf(takes + used, sizeof(takes) - used, "%s%s", used ? ", " : "", opt_names[k]);
    }
    if (!takes[0])
        return pb_err_set(err, PB_ECONFIG, "verify.%s: scheme %s takes no options", opt_names[i],
                          scheme);
    return pb_err_set(err, PB_ECONFIG, "verify.%s does not apply to scheme %s (it takes: %s)",
                      opt_names[i], scheme, takes);
}

/* ---- helpers shared by the schemes ------------------------------------------------------ */

int pb__vfy_parse_seconds(const char *s, int64_t *sec)
{
    int64_t n = 0;
    size_t i = 0;
    for (; s[i]; i++) {
        if (s[i] < '0' || s[i] > '9' || i >= 12)
            return -1;
        n = n * 10 + (s[i] - '0');
    }
    if (i == 0)
        return -1;
    *sec = n;
    return 0;
}

bool pb__vfy_fresh(int64_t sec, int64_t now_ms, int64_t tolerance_ms)
{
    int64_t d = sec * 1000 - now_ms; /* sec < 10^12: no overflow */
    return d <= tolerance_ms && -d <= tolerance_ms;
}

int pb__vfy_hmac_all(const struct pb_verifier *v, const struct pb_piece *pieces, size_t npieces,
                     unsigned char macs[][VFY_MAX_MAC])
{
    for (size_t k = 0; k < v->nkeys; k++) {
        unsigned char mac[PB_MAC_MAX];
        size_t got = 0;
        int rc = pb_hmac(v->digest, v->keys[k].bytes, v->keys[k].len, pieces, npieces, mac, &got);
        if (rc || got != v->mac_len || got > VFY_MAX_MAC)
            return -1;
        memcpy(macs[k], mac, got);
        OPENSSL_cleanse(mac, sizeof(mac));
    }
    return 0;
}

bool pb__vfy_match_any(unsigned char macs[][VFY_MAX_MAC], size_t n, size_t mac_len,
                       const unsigned char *sig, size_t sig_len)
{
    if (sig_len != mac_len) /* the length is public: every MAC has it */
        return false;
    int hit = 0;
    for (size_t k = 0; k < n; k++)
        hit |= CRYPTO_memcmp(macs[k], sig, mac_len) == 0;
    return hit != 0;
}

int pb__vfy_set_id(struct pb_verify_result *res, const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > PB_WEBHOOK_ID_MAX)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (id[i] <= 0x20 || id[i] >= 0x7f)
            return -1;
    memcpy(res->webhook_id, id, n + 1);
    return 0;
}

int pb__vfy_deny(struct pb_verify_result *res, enum pb_verify_reason why)
{
    res->reason = why;
    res->webhook_id[0] = 0;
    return PB_EDENIED;
}

int pb__vfy_collect_secrets(const struct pb_verify_conf *c, const char **out, char names[][40],
                            size_t *n, struct pb_err *err)
{
    size_t k = 0;
    if (c->secrets.n + (c->secret ? 1 : 0) > VFY_MAX_KEYS)
        return pb_err_set(err, PB_ECONFIG, "verify.secrets: at most %d secrets may be active",
                          VFY_MAX_KEYS);
    if (c->secret) {
        snprintf(names[k], 40, "verify.secret");
        out[k++] = c->secret;
    }
    for (size_t i = 0; i < c->secrets.n; i++) {
        snprintf(names[k], 40, "verify.secrets[%zu]", i);
        out[k++] = c->secrets.items[i];
    }
    if (k == 0)
        return pb_err_set(err, PB_ECONFIG, "verify: scheme %s needs secret or secrets",
                          pb_verify_scheme_names[c->scheme]);
    for (size_t i = 0; i < k; i++)
        if (!out[i][0])
            return pb_err_set(err, PB_ECONFIG, "%s is empty", names[i]);
    *n = k;
    return 0;
}

int pb__vfy_add_key(struct pb_verifier *v, const void *bytes, size_t len, struct pb_err *err)
{
    if (v->nkeys >= VFY_MAX_KEYS)
        return pb_err_set(err, PB_ECONFIG, "verify: at most %d secrets may be active",
                          VFY_MAX_KEYS);
    unsigned char *b = malloc(len ? len : 1);
    if (!b)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    memcpy(b, bytes, len);
    v->keys[v->nkeys++] = (struct vfy_key){b, len};
    return 0;
}

static int add_digest(struct pb_verifier *v, const char *s, struct pb_err *err)
{
    unsigned char d[SHA256_DIGEST_LENGTH];
    if (!SHA256((const unsigned char *)s, strlen(s), d))
        return pb_err_set(err, PB_EINTERNAL, "verify: SHA-256 failed");
    int rc = pb__vfy_add_key(v, d, sizeof(d), err);
    OPENSSL_cleanse(d, sizeof(d));
    return rc;
}

static char *dup_opt(const char *s, bool *nomem)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *nomem = true;
    return d;
}

/* True when a header name is a valid HTTP token. */
static bool header_name_ok(const char *h)
{
    if (!h[0] || strlen(h) > 128)
        return false;
    for (const char *p = h; *p; p++)
        if (*p <= 0x20 || *p >= 0x7f || strchr("\"(),/:;<=>?@[\\]{}", *p))
            return false;
    return true;
}

/* ---- api_key ----------------------------------------------------------------------------- */

static int api_key_init(struct pb_verifier *v, const struct pb_verify_conf *c, struct pb_err *err)
{
    const char *secrets[VFY_MAX_KEYS];
    char names[VFY_MAX_KEYS][40];
    size_t n = 0;
    int rc = pb__vfy_collect_secrets(c, secrets, names, &n, err);
    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++)
        if ((rc = add_digest(v, secrets[i], err)))
            return rc;
    if (c->query && (!c->query[0] || strlen(c->query) > 128))
        return pb_err_set(err, PB_ECONFIG, "verify.query: expected a parameter name");
    v->use_header = c->header || !c->query;
    if (c->prefix && !v->use_header)
        return pb_err_set(err, PB_ECONFIG,
                          "verify.prefix applies to the header, and only query is set");
    return 0;
}

/* The value after v->prefix, or NULL when the prefix is not there. */
static const char *after_prefix(const struct pb_verifier *v, const char *s)
{
    if (!v->prefix)
        return s;
    size_t n = strlen(v->prefix);
    return strncmp(s, v->prefix, n) == 0 ? s + n : NULL;
}

/* Whether the SHA-256 digest d is one of v's, without telling which. */
static bool digest_match(const struct pb_verifier *v, const unsigned char *d)
{
    int hit = 0;
    for (size_t k = 0; k < v->nkeys; k++)
        hit |= CRYPTO_memcmp(v->keys[k].bytes, d, SHA256_DIGEST_LENGTH) == 0;
    return hit != 0;
}

static int api_key_check(const struct pb_verifier *v, const struct pb_verify_req *req,
                         struct pb_verify_result *res)
{
    const char *key = NULL;
    if (v->use_header && (key = req->header(req->conn, v->header)) != NULL) {
        /* The prefix belongs to the header; a query parameter is the bare key. */
        if (strlen(key) > VFY_MAX_HEADER)
            return pb__vfy_deny(res, PB_VERIFY_MALFORMED);
        if (!(key = after_prefix(v, key)))
            return pb__vfy_deny(res, PB_VERIFY_MALFORMED);
    } else if (v->query && req->query) {
        key = req->query(req->conn, v->query);
    }
    if (!key || !key[0])
        return pb__vfy_deny(res, PB_VERIFY_MISSING);
    if (strlen(key) > VFY_MAX_HEADER)
        return pb__vfy_deny(res, PB_VERIFY_MALFORMED);
    unsigned char d[SHA256_DIGEST_LENGTH];
    bool ok = SHA256((const unsigned char *)key, strlen(key), d) && digest_match(v, d);
    OPENSSL_cleanse(d, sizeof(d));
    return ok ? 0 : pb__vfy_deny(res, PB_VERIFY_CREDENTIALS);
}

/* ---- basic ------------------------------------------------------------------------------- */

static int basic_init(struct pb_verifier *v, const struct pb_verify_conf *c, struct pb_err *err)
{
    int rc;
    if (!c->user != !c->password)
        return pb_err_set(err, PB_ECONFIG, "verify: scheme basic needs user and password together");
    if (c->user) {
        if (!c->user[0] || strchr(c->user, ':'))
            return pb_err_set(err, PB_ECONFIG,
                              "verify.user: expected a non-empty name without ':'");
        size_t n = strlen(c->user) + 1 + strlen(c->password) + 1;
        char *pair = malloc(n);
        if (!pair)
            return pb_err_set(err, PB_ENOMEM, "out of memory");
        snprintf(pair, n, "%s:%s", c->user, c->password);
        rc = add_digest(v, pair, err);
        OPENSSL_cleanse(pair, n);
        free(pair);
        if (rc)
            return rc;
    }
    for (size_t i = 0; i < c->credentials.n; i++) {
        const char *p = c->credentials.items[i];
        const char *colon = strchr(p, ':');
        if (!colon || colon == p)
            return pb_err_set(err, PB_ECONFIG,
                              "verify.credentials[%zu]: expected \"user:password\"", i);
        if ((rc = add_digest(v, p, err)))
            return rc;
    }
    if (v->nkeys == 0)
        return pb_err_set(err, PB_ECONFIG,
                          "verify: scheme basic needs user and password, or credentials");
    return 0;
}

static int basic_check(const struct pb_verifier *v, const struct pb_verify_req *req,
                       struct pb_verify_result *res)
{
    const char *h = req->header(req->conn, "Authorization");
    if (!h)
        return pb__vfy_deny(res, PB_VERIFY_MISSING);
    if (strncasecmp(h, "Basic ", 6) != 0)
        return pb__vfy_deny(res, PB_VERIFY_MALFORMED);
    h += 6;
    while (*h == ' ')
        h++;
    size_t len = strlen(h);
    while (len && h[len - 1] == ' ')
        len--;
    unsigned char plain[1024];
    size_t n = 0;
    if (len > 4 * sizeof(plain) / 3 || pb_base64_decode(h, len, false, plain, sizeof(plain), &n) ||
        !memchr(plain, ':', n)) {
        OPENSSL_cleanse(plain, sizeof(plain));
        return pb__vfy_deny(res, PB_VERIFY_MALFORMED);
    }
    unsigned char d[SHA256_DIGEST_LENGTH];
    bool ok = SHA256(plain, n, d) && digest_match(v, d);
    OPENSSL_cleanse(plain, sizeof(plain));
    OPENSSL_cleanse(d, sizeof(d));
    return ok ? 0 : pb__vfy_deny(res, PB_VERIFY_CREDENTIALS);
}

/* ---- life cycle -------------------------------------------------------------------------- */

struct pb_verifier *pb_verifier_create(const struct pb_verify_conf *c, struct pb_err *err)
{
    struct pb_verifier *v = NULL;
    bool nomem = false;
    int rc;

    if ((rc = pb_verify_conf_check(c, err)))
        return NULL;
    if (c->scheme == PB_SCHEME_NONE) {
        pb_err_set(err, PB_ECONFIG, "verify.scheme: no scheme to verify with");
        return NULL;
    }
    if (c->header && !header_name_ok(c->header)) {
        pb_err_set(err, PB_ECONFIG, "verify.header: \"%s\" is not a header name", c->header);
        return NULL;
    }
    if (c->id_header && !header_name_ok(c->id_header)) {
        pb_err_set(err, PB_ECONFIG, "verify.id_header: \"%s\" is not a header name", c->id_header);
        return NULL;
    }
    if (c->timestamp_header && !header_name_ok(c->timestamp_header)) {
        pb_err_set(err, PB_ECONFIG, "verify.timestamp_header: \"%s\" is not a header name",
                   c->timestamp_header);
        return NULL;
    }
    if (c->tolerance_ms <= 0) {
        pb_err_set(err, PB_ECONFIG, "verify.tolerance must be above 0");
        return NULL;
    }
    v = calloc(1, sizeof(*v));
    if (!v) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    v->scheme = c->scheme;
    v->tolerance_ms = c->tolerance_ms;
    v->leeway_ms = c->leeway_ms;
    v->id_header = dup_opt(c->id_header, &nomem);
    v->prefix = dup_opt(c->prefix, &nomem);
    v->query = dup_opt(c->query, &nomem);
    if (c->header)
        v->header = dup_opt(c->header, &nomem);
    else if (c->scheme == PB_SCHEME_API_KEY)
        v->header = dup_opt("X-Api-Key", &nomem);
    else if (c->scheme == PB_SCHEME_JWT)
        v->header = dup_opt("Authorization", &nomem);
    if (nomem) {
        rc = pb_err_set(err, PB_ENOMEM, "out of memory");
        goto out;
    }
    switch (c->scheme) {
    case PB_SCHEME_API_KEY:
        rc = api_key_init(v, c, err);
        break;
    case PB_SCHEME_BASIC:
        rc = basic_init(v, c, err);
        break;
    case PB_SCHEME_JWT:
        rc = pb__vfy_jwt_init(v, c, err);
        break;
    default:
        rc = pb__vfy_hmac_init(v, c, err);
        break;
    }
out:
    if (rc) {
        pb_verifier_destroy(v);
        return NULL;
    }
    return v;
}

void pb_verifier_destroy(struct pb_verifier *v)
{
    if (!v)
        return;
    for (size_t i = 0; i < v->nkeys; i++) {
        OPENSSL_cleanse(v->keys[i].bytes, v->keys[i].len);
        free(v->keys[i].bytes);
    }
    for (size_t i = 0; i < v->npubs; i++) {
        EVP_PKEY_free(v->pubs[i].pkey);
        free(v->pubs[i].kid);
    }
    free(v->pubs);
    for (size_t i = 0; i < v->ntpl; i++)
        free(v->tpl[i].lit);
    for (size_t i = 0; i < v->naudience; i++)
        free(v->audience[i]);
    free(v->audience);
    free(v->issuer);
    free(v->header);
    free(v->prefix);
    free(v->ts_header);
    free(v->id_header);
    free(v->query);
    free(v);
}

int pb_verifier_check(const void *ctx, const struct pb_verify_req *req,
                      struct pb_verify_result *res)
{
    const struct pb_verifier *v = ctx;
    int rc;
    res->reason = PB_VERIFY_MISSING;
    res->webhook_id[0] = 0;
    switch (v->scheme) {
    case PB_SCHEME_API_KEY:
        rc = api_key_check(v, req, res);
        break;
    case PB_SCHEME_BASIC:
        rc = basic_check(v, req, res);
        break;
    case PB_SCHEME_JWT:
        rc = pb__vfy_jwt_check(v, req, res);
        break;
    default:
        rc = pb__vfy_hmac_check(v, req, res);
        break;
    }
    if (rc)
        return rc;
    /* Schemes with an id of their own have set it; the others may name a
     * header carrying the sender's delivery id. */
    if (!res->webhook_id[0] && v->id_header) {
        const char *id = req->header(req->conn, v->id_header);
        if (id && pb__vfy_set_id(res, id))
            return pb__vfy_deny(res, PB_VERIFY_MALFORMED);
    }
    return 0;
}
