/* test_oauth2.c - outbound auth (pb_http_auth.h) against a token endpoint
 * of the test's own (libmicrohttpd on 127.0.0.1): one request for many
 * waiting users, one new token for many 401s, shared sources and settings
 * that must agree, a failing endpoint that backs off and says why, the JWTs
 * signed for jwt_bearer checked with OpenSSL, the form encoding, and the
 * fixed headers of bearer, basic and api_key. TLS blocks are checked with
 * keys the test makes. */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "core/http_auth.h"
#include "core/oauth2.h"
#include "patchbay/pb_crypto.h"
#include "pb_test.h"

/* ---- the token endpoint --------------------------------------------------------------- */

static struct MHD_Daemon *daemon_;
static uint16_t port;
static atomic_int token_requests;
static atomic_int fail_next; /* answer 500 while set */
static atomic_int lifetime_s = 3600;
static char last_form[8192];
static pthread_mutex_t form_lock = PTHREAD_MUTEX_INITIALIZER;

struct upload {
    char buf[8192];
    size_t len;
};

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    free(*con_cls);
    *con_cls = NULL;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *data,
                               size_t *size, void **con_cls)
{
    struct upload *u = *con_cls;
    if (!u) {
        *con_cls = calloc(1, sizeof(struct upload));
        return *con_cls ? MHD_YES : MHD_NO;
    }
    if (*size) {
        size_t n = *size < sizeof(u->buf) - 1 - u->len ? *size : sizeof(u->buf) - 1 - u->len;
        memcpy(u->buf + u->len, data, n);
        u->len += n;
        *size = 0;
        return MHD_YES;
    }
    int n = atomic_fetch_add(&token_requests, 1) + 1;
    pthread_mutex_lock(&form_lock);
    snprintf(last_form, sizeof(last_form), "%s", u->buf);
    pthread_mutex_unlock(&form_lock);
    usleep(50 * 1000); /* long enough for everyone to pile up behind it */
    char body[512];
    unsigned status = 200;
    if (atomic_load(&fail_next)) {
        status = 500;
        snprintf(body, sizeof(body), "{\"error\":\"temporarily_unavailable\"}");
    } else {
        snprintf(body, sizeof(body),
                 "{\"access_token\":\"tok-%d\",\"token_type\":\"bearer\",\"expires_in\":%d}", n,
                 atomic_load(&lifetime_s));
    }
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(r, "Content-Type", "application/json");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static void server_start(void)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = 0};
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
    daemon_ =
        MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL,
                         NULL, handler, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sin,
                         MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_END);
    const union MHD_DaemonInfo *info =
        daemon_ ? MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT) : NULL;
    port = info ? info->port : 0;
    if (!port) {
        fprintf(stderr, "cannot start the token endpoint\n");
        exit(1);
    }
}

static struct pb_allowlist *loopback(void)
{
    char *items[] = {"127.0.0.0/8"};
    struct pb_strlist l = {1, items};
    return pb_allowlist_create(&l, NULL);
}

static char token_url[128];

static struct pb_oauth2_conf cc_conf(const char *client, const char *secret)
{
    return (struct pb_oauth2_conf){
        .token_url = token_url,
        .client_id = (char *)client,
        .client_secret = (char *)secret,
        .grant = PB_OAUTH2_CLIENT_CREDENTIALS,
        .auth_method = PB_OAUTH2_CLIENT_SECRET_POST,
        .assertion_lifetime_ms = 300000,
        .refresh_before_ms = 60000,
        .timeout_ms = 5000,
        .default_lifetime_ms = 3600000,
    };
}

/* ---- pieces ------------------------------------------------------------------------------ */

PB_TEST(form_encoding_margin_and_backoff)
{
    char *b = NULL;
    size_t len = 0;
    PB_EQ_INT(pb__form_add(&b, &len, "grant_type", "client_credentials"), 0);
    PB_EQ_INT(pb__form_add(&b, &len, "scope", "read write:all ü&="), 0);
    PB_EQ_STR(b, "grant_type=client_credentials&scope=read+write%3Aall+%C3%BC%26%3D");
    free(b);
    /* A tenth of the lifetime, at most refresh_before. */
    PB_EQ_INT(pb__oauth2_margin(2000, 60000), 200);
    PB_EQ_INT(pb__oauth2_margin(3600000, 60000), 60000);
    for (int n = 1; n < 30; n++) {
        int64_t d0 = pb__oauth2_backoff(n, 0), d1 = pb__oauth2_backoff(n, UINT64_MAX);
        PB_CHECK(d0 >= 500 && d1 <= 300000 && d0 <= d1);
    }
    PB_EQ_INT(pb__oauth2_backoff(1, 0), 500);
    PB_EQ_INT(pb__oauth2_backoff(30, 0), 150000);
}

static void write_key(const char *path, const char *alg)
{
    EVP_PKEY *k = strcmp(alg, "RSA") == 0 ? EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048)
                                          : EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    FILE *f = fopen(path, "w");
    PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    EVP_PKEY_free(k);
}

/* Check a compact JWS with the public half of the key in path. */
static bool jws_ok(const char *jws, const char *path, const char *alg, json_t **claims)
{
    const char *d1 = strchr(jws, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    if (!d2)
        return false;
    unsigned char hdr[512], pay[2048], sig[1024];
    size_t hl, pl, sl;
    if (pb_base64_decode(jws, (size_t)(d1 - jws), true, hdr, sizeof(hdr), &hl) ||
        pb_base64_decode(d1 + 1, (size_t)(d2 - d1 - 1), true, pay, sizeof(pay), &pl) ||
        pb_base64_decode(d2 + 1, strlen(d2 + 1), true, sig, sizeof(sig), &sl))
        return false;
    json_t *h = json_loadb((char *)hdr, hl, 0, NULL);
    bool alg_ok = h && strcmp(json_string_value(json_object_get(h, "alg")), alg) == 0;
    json_decref(h);
    *claims = json_loadb((char *)pay, pl, 0, NULL);
    FILE *f = fopen(path, "r");
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    unsigned char der[256];
    const unsigned char *s = sig;
    size_t slen = sl;
    if (strcmp(alg, "ES256") == 0) {
        /* raw r||s back to DER */
        ECDSA_SIG *es = ECDSA_SIG_new();
        ECDSA_SIG_set0(es, BN_bin2bn(sig, 32, NULL), BN_bin2bn(sig + 32, 32, NULL));
        unsigned char *p = der;
        slen = (size_t)i2d_ECDSA_SIG(es, &p);
        ECDSA_SIG_free(es);
        s = der;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool ok = EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, k) == 1 &&
              EVP_DigestVerify(md, s, slen, (const unsigned char *)jws, (size_t)(d2 - jws)) == 1;
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(k);
    return ok && alg_ok;
}

PB_TEST(jwt_assertions_verify_with_the_public_key)
{
    const char *algs[][2] = {{"RSA", "RS256"}, {"EC", "ES256"}};
    for (size_t i = 0; i < 2; i++) {
        char path[] = "/tmp/pb_oauth2_keyXXXXXX";
        int fd = mkstemp(path);
        close(fd);
        write_key(path, algs[i][0]);
        struct pb_jwt_key key;
        struct pb_err err = {0};
        PB_EQ_INT(pb__jwt_key_load(path, NULL, &key, &err), 0);
        PB_EQ_STR(pb__jwt_alg_name(key.alg), algs[i][1]);
        char *km[] = {"sub", "exp"}, *vm[] = {"user@example.com", "1"};
        struct pb_strmap extra = {2, km, vm};
        json_t *c = pb__jwt_claims("client-1", "client-1", "https://login.example/", &extra,
                                   1700000000000LL, 300000);
        char *jws = pb__jwt_sign(&key, "k1", c, &err);
        PB_CHECK(jws != NULL);
        json_t *got = NULL;
        PB_CHECK(jws && jws_ok(jws, path, algs[i][1], &got));
        PB_EQ_STR(json_string_value(json_object_get(got, "iss")), "client-1");
        PB_EQ_STR(json_string_value(json_object_get(got, "sub")), "user@example.com");
        PB_EQ_STR(json_string_value(json_object_get(got, "aud")), "https://login.example/");
        PB_EQ_INT(json_integer_value(json_object_get(got, "iat")), 1700000000);
        PB_EQ_INT(json_integer_value(json_object_get(got, "exp")), 1700000300); /* not "1" */
        PB_CHECK(strlen(json_string_value(json_object_get(got, "jti"))) == 32);
        /* An algorithm that does not fit the key is refused. */
        struct pb_jwt_key k2;
        PB_CHECK(pb__jwt_key_load(path, i == 0 ? "ES256" : "RS256", &k2, &err) != 0);
        PB_CONTAINS(err.msg, "does not fit");
        json_decref(got);
        json_decref(c);
        free(jws);
        pb__jwt_key_free(&key);
        unlink(path);
    }
    struct pb_jwt_key k;
    struct pb_err err = {0};
    PB_CHECK(pb__jwt_key_load("/nonexistent/key.pem", NULL, &k, &err) != 0);
    PB_CONTAINS(err.msg, "/nonexistent/key.pem");
}

PB_TEST(fixed_headers_of_bearer_basic_and_api_key)
{
    struct pb_http_owner who = {"p", "o", NULL};
    struct pb_err err = {0};
    static struct pb_http_auth_ticket t;
    struct pb_http_auth_conf c = {.basic = {"Aladdin", "open sesame"}};
    struct pb_http_auth *a = pb_http_auth_create(&c, &who, &err);
    PB_EQ_INT(pb_http_auth_header(a, &t), 0);
    PB_EQ_STR(t.name, "Authorization");
    PB_EQ_STR(t.value, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
    PB_CHECK(!pb_http_auth_refreshable(a));
    pb_http_auth_destroy(a);
    c = (struct pb_http_auth_conf){.api_key = {"X-Key", "k-123"}};
    a = pb_http_auth_create(&c, &who, &err);
    PB_EQ_INT(pb_http_auth_header(a, &t), 0);
    PB_EQ_STR(t.name, "X-Key");
    PB_EQ_STR(t.value, "k-123");
    pb_http_auth_destroy(a);
    a = pb_http_auth_create(NULL, &who, &err);
    PB_EQ_INT(pb_http_auth_header(a, &t), 0);
    PB_CHECK(t.name == NULL);
    pb_http_auth_destroy(a);
    c = (struct pb_http_auth_conf){.bearer = "abc", .api_key = {"X-Key", "k"}};
    PB_CHECK(pb_http_auth_create(&c, &who, &err) == NULL);
    PB_CONTAINS(err.msg, "one of");
    c = (struct pb_http_auth_conf){.bearer = "a\nb"};
    PB_CHECK(pb_http_auth_create(&c, &who, &err) == NULL);
}

static void count_src(void *arg, struct pb_oauth2_src *s)
{
    (void)s;
    (*(int *)arg)++;
}

PB_TEST(oauth2_settings_are_checked_and_must_agree_when_shared)
{
    struct pb_http_owner a1 = {"p1", "o1", NULL}, a2 = {"p2", "o2", NULL};
    struct pb_err err = {0};
    struct pb_http_auth_conf c = {.oauth2 = cc_conf("client", NULL)};
    PB_CHECK(pb_http_auth_create(&c, &a1, &err) == NULL);
    PB_CONTAINS(err.msg, "needs client_secret");
    c.oauth2 = cc_conf("client", "s1");
    c.oauth2.grant = PB_OAUTH2_REFRESH_TOKEN;
    PB_CHECK(pb_http_auth_create(&c, &a1, &err) == NULL);
    PB_CONTAINS(err.msg, "needs refresh_token");
    c.oauth2 = cc_conf("client", "s1");
    c.oauth2.grant = PB_OAUTH2_JWT_BEARER;
    PB_CHECK(pb_http_auth_create(&c, &a1, &err) == NULL);
    PB_CONTAINS(err.msg, "needs private_key");
    /* Shared: same endpoint, client, scopes (in any order). */
    char *s1[] = {"b", "a"}, *s2[] = {"a", "b"};
    c.oauth2 = cc_conf("client", "s1");
    c.oauth2.scopes = (struct pb_strlist){2, s1};
    struct pb_http_auth *x = pb_http_auth_create(&c, &a1, &err);
    c.oauth2.scopes = (struct pb_strlist){2, s2};
    struct pb_http_auth *y = pb_http_auth_create(&c, &a2, &err);
    PB_CHECK(x && y);
    int n = 0;
    pb__oauth2_each(count_src, &n);
    PB_EQ_INT(n, 1);
    /* The same client with another secret is an error that names the other user. */
    c.oauth2.client_secret = "s2";
    PB_CHECK(pb_http_auth_create(&c, &a2, &err) == NULL);
    PB_CONTAINS(err.msg, "p1/o1");
    PB_CHECK(!strstr(err.msg, "s1") && !strstr(err.msg, "s2"));
    pb_http_auth_destroy(x);
    pb_http_auth_destroy(y);
}

/* ---- against the endpoint ---------------------------------------------------------------- */

struct user {
    struct pb_http_auth *a;
    struct pb_http_auth_ticket t;
    int rc;
};

static void *user_main(void *arg)
{
    struct user *u = arg;
    struct pb_err err = {0};
    u->rc = pb_http_auth_header_wait(u->a, &u->t, 10000, &err);
    return NULL;
}

/* Many threads want a token at once: they all get the one a single request
 * brought. */
static void many(struct pb_http_auth *a, struct user *us, int n)
{
    pthread_t th[64];
    for (int i = 0; i < n; i++) {
        us[i].a = a;
        pthread_create(&th[i], NULL, user_main, &us[i]);
    }
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
}

static void failing_cb(void *arg, const char *pl, const char *name, const struct pb_auth_status *s)
{
    int *seen = arg;
    if (strcmp(pl, "p") == 0 && strcmp(name, "o") == 0 && strcmp(s->state, "failing") == 0)
        (*seen)++;
}

PB_TEST(one_request_for_many_users_and_one_refresh_for_many_401s)
{
    struct pb_allowlist *allow = loopback();
    struct pb_http_owner who = {"p", "o", allow};
    struct pb_err err = {0};
    struct pb_http_auth_conf c = {.oauth2 = cc_conf("many", "secret-1")};
    struct pb_http_auth *a = pb_http_auth_create(&c, &who, &err);
    PB_CHECK(a != NULL);
    static struct pb_http_auth_ticket t;
    /* Before the engine starts (lint): nothing is asked. */
    PB_EQ_INT(pb_http_auth_header(a, &t), PB_ESHUTDOWN);
    PB_EQ_INT(pb__http_auth_start(NULL, &err), 0);
    atomic_store(&token_requests, 0);
    static struct user us[32];
    many(a, us, 32);
    PB_EQ_INT(atomic_load(&token_requests), 1);
    for (int i = 0; i < 32; i++) {
        PB_EQ_INT(us[i].rc, 0);
        PB_EQ_STR(us[i].t.value, "Bearer tok-1");
        PB_EQ_INT(us[i].t.gen, us[0].t.gen);
    }
    pthread_mutex_lock(&form_lock);
    PB_CONTAINS(last_form, "grant_type=client_credentials");
    PB_CONTAINS(last_form, "client_id=many");
    PB_CONTAINS(last_form, "client_secret=secret-1");
    pthread_mutex_unlock(&form_lock);
    /* Every user saw a 401 with that token: one new one for all. */
    for (int i = 0; i < 32; i++)
        pb_http_auth_rejected(a, us[i].t.gen);
    many(a, us, 32);
    PB_EQ_INT(atomic_load(&token_requests), 2);
    PB_EQ_STR(us[5].t.value, "Bearer tok-2");
    /* A stale 401 (the old token) does not drop the new one. */
    pb_http_auth_rejected(a, us[5].t.gen - 1);
    PB_EQ_INT(pb_http_auth_header(a, &t), 0);
    PB_EQ_INT(atomic_load(&token_requests), 2);

    /* Fresh tokens refused twice in a row: the next request waits, and the
     * source shows as failing with the reason. */
    int before = atomic_load(&token_requests);
    pb_http_auth_rejected(a, t.gen);
    PB_EQ_INT(pb_http_auth_header(a, &t), PB_EAGAIN);
    PB_EQ_INT(atomic_load(&token_requests), before);
    int seen = 0;
    pb__http_auth_each_failing(failing_cb, &seen);
    PB_EQ_INT(seen, 1);
    char why[256];
    pb_http_auth_error(a, why, sizeof(why));
    PB_CONTAINS(why, "refused 2 fresh tokens");
    pb__http_auth_stop();
    PB_EQ_INT(pb_http_auth_header(a, &t), PB_ESHUTDOWN);
    pb_http_auth_destroy(a);
    pb_allowlist_destroy(allow);
}

PB_TEST(a_failing_endpoint_backs_off_and_says_why)
{
    struct pb_allowlist *allow = loopback();
    struct pb_http_owner who = {"p", "o", allow};
    struct pb_err err = {0};
    struct pb_http_auth_conf c = {.oauth2 = cc_conf("failing", "secret-3")};
    struct pb_http_auth *a = pb_http_auth_create(&c, &who, &err);
    PB_EQ_INT(pb__http_auth_start(NULL, &err), 0);
    static struct pb_http_auth_ticket t;
    atomic_store(&fail_next, 1);
    PB_EQ_INT(pb_http_auth_header_wait(a, &t, 10000, &err), PB_EAGAIN);
    PB_CONTAINS(err.msg, "HTTP 500: temporarily_unavailable");
    int before = atomic_load(&token_requests);
    PB_EQ_INT(pb_http_auth_header(a, &t), PB_EAGAIN);
    PB_EQ_INT(pb_http_auth_header_wait(a, &t, 100, &err), PB_EAGAIN); /* told at once */
    PB_EQ_INT(atomic_load(&token_requests), before);
    int seen = 0;
    pb__http_auth_each_failing(failing_cb, &seen);
    PB_EQ_INT(seen, 1);
    /* Once it answers again (after its backoff, at most a second here) the
     * token comes and the source is no longer failing. */
    atomic_store(&fail_next, 0);
    int rc = PB_EAGAIN;
    for (int i = 0; i < 40 && rc != 0; i++) {
        usleep(50 * 1000);
        rc = pb_http_auth_header_wait(a, &t, 2000, &err);
    }
    PB_EQ_INT(rc, 0);
    seen = 0;
    pb__http_auth_each_failing(failing_cb, &seen);
    PB_EQ_INT(seen, 0);
    pb__http_auth_stop();
    pb_http_auth_destroy(a);
    pb_allowlist_destroy(allow);
}

PB_TEST(a_token_is_renewed_before_it_expires)
{
    struct pb_allowlist *allow = loopback();
    struct pb_http_owner who = {"p", "renew", allow};
    struct pb_err err = {0};
    struct pb_http_auth_conf c = {.oauth2 = cc_conf("renew", "secret-2")};
    c.oauth2.auth_method = PB_OAUTH2_CLIENT_SECRET_BASIC;
    struct pb_http_auth *a = pb_http_auth_create(&c, &who, &err);
    PB_EQ_INT(pb__http_auth_start(NULL, &err), 0);
    atomic_store(&lifetime_s, 1);
    static struct pb_http_auth_ticket t;
    int before = atomic_load(&token_requests);
    PB_EQ_INT(pb_http_auth_header_wait(a, &t, 10000, &err), 0);
    uint64_t gen = t.gen;
    pthread_mutex_lock(&form_lock);
    PB_CHECK(!strstr(last_form, "secret-2")); /* basic: in the header, not the form */
    pthread_mutex_unlock(&form_lock);
    /* Within the last tenth of its second the old token is still handed
     * out while a new one is fetched in the background. */
    for (int i = 0; i < 200 && t.gen == gen; i++) {
        usleep(10 * 1000);
        PB_EQ_INT(pb_http_auth_header(a, &t) == 0 || pb_http_auth_header(a, &t) == PB_EAGAIN, 1);
    }
    PB_CHECK(t.gen == gen + 1);
    PB_EQ_INT(atomic_load(&token_requests), before + 2);
    atomic_store(&lifetime_s, 3600);
    pb__http_auth_stop();
    pb_http_auth_destroy(a);
    pb_allowlist_destroy(allow);
}

/* ---- TLS blocks ------------------------------------------------------------------------------ */

static void write_cert(const char *cert_path, const char *key_path)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *x = X509_new();
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, k);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"client", -1, -1, 0);
    X509_set_issuer_name(x, n);
    X509_sign(x, k, EVP_sha256());
    FILE *f = fopen(cert_path, "w");
    PEM_write_X509(f, x);
    fclose(f);
    f = fopen(key_path, "w");
    PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    X509_free(x);
    EVP_PKEY_free(k);
}

PB_TEST(tls_blocks_are_checked_without_connecting)
{
    char c1[] = "/tmp/pb_tls_c1XXXXXX", k1[] = "/tmp/pb_tls_k1XXXXXX";
    char c2[] = "/tmp/pb_tls_c2XXXXXX", k2[] = "/tmp/pb_tls_k2XXXXXX";
    close(mkstemp(c1));
    close(mkstemp(k1));
    close(mkstemp(c2));
    close(mkstemp(k2));
    write_cert(c1, k1);
    write_cert(c2, k2);
    struct pb_http_owner who = {"p", "o", NULL};
    struct pb_err err = {0};
    struct pb_http_tls_conf c = {.ca_file = c1, .cert_file = c1, .key_file = k1};
    struct pb_http_tls *t = pb_http_tls_create(&c, &who, &err);
    PB_CHECK(t != NULL);
    pb_http_tls_destroy(t);
    c.key_file = k2;
    PB_CHECK(pb_http_tls_create(&c, &who, &err) == NULL);
    PB_CONTAINS(err.msg, "is not the key of");
    c = (struct pb_http_tls_conf){.ca_file = k1};
    PB_CHECK(pb_http_tls_create(&c, &who, &err) == NULL);
    PB_CONTAINS(err.msg, "tls.ca_file");
    c = (struct pb_http_tls_conf){.key_file = k1};
    PB_CHECK(pb_http_tls_create(&c, &who, &err) == NULL);
    c = (struct pb_http_tls_conf){.server_name = "bad name"};
    PB_CHECK(pb_http_tls_create(&c, &who, &err) == NULL);
    c = (struct pb_http_tls_conf){.insecure_skip_verify = true};
    t = pb_http_tls_create(&c, &who, &err);
    PB_CHECK(pb__http_tls_insecure_for("p", "o"));
    PB_CHECK(!pb__http_tls_insecure_for("p", "other"));
    pb_http_tls_destroy(t);
    PB_CHECK(!pb__http_tls_insecure_for("p", "o"));
    unlink(c1);
    unlink(k1);
    unlink(c2);
    unlink(k2);
}

int main(void)
{
    server_start();
    snprintf(token_url, sizeof(token_url), "http://127.0.0.1:%u/token", port);
    int rc = pb_test_main();
    MHD_stop_daemon(daemon_);
    return rc;
}
