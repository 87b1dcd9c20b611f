/* http_tls.c - the `tls:` block of HTTP plugins (pb_http_auth.h): its
 * option table, and its checks made when the configuration is loaded,
 * without connecting: the CA bundle holds certificates, the client
 * certificate and key parse and belong together, the server name is a
 * host name. http_client.c applies the result to each transfer.
 *
 * Threads: create and destroy on whatever thread loads and frees the
 * configuration; the live list is under a lock, read by the admin API. */
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "net/http_tls.h"

static const char *const tls_versions[] = {"1.2", "1.3", NULL};

const struct pb_field pb_http_tls_fields[] = {
    {.name = "ca_file",
     .type = PB_F_STR,
     .offset = offsetof(struct pb_http_tls_conf, ca_file),
     .doc = "PEM bundle the partner's certificate must chain to (default: the system's)"},
    {.name = "cert_file",
     .type = PB_F_STR,
     .offset = offsetof(struct pb_http_tls_conf, cert_file),
     .doc = "client certificate, PEM (mutual TLS)"},
    {.name = "key_file",
     .type = PB_F_STR,
     .offset = offsetof(struct pb_http_tls_conf, key_file),
     .doc = "the client certificate's private key, PEM"},
    {.name = "key_password",
     .type = PB_F_SECRET,
     .offset = offsetof(struct pb_http_tls_conf, key_password),
     .doc = "password of an encrypted key_file"},
    {.name = "server_name",
     .type = PB_F_STR,
     .offset = offsetof(struct pb_http_tls_conf, server_name),
     .doc = "name sent (SNI) and checked in the certificate instead of the URL's host"},
    {.name = "min_version",
     .type = PB_F_ENUM,
     .offset = offsetof(struct pb_http_tls_conf, min_version),
     .choices = tls_versions,
     .def = "1.2",
     .doc = "lowest TLS version accepted: 1.2 or 1.3"},
    {.name = "insecure_skip_verify",
     .type = PB_F_BOOL,
     .offset = offsetof(struct pb_http_tls_conf, insecure_skip_verify),
     .def = "false",
     .doc = "do not check the partner's certificate (warned at start, shown in the API)"},
    {0},
};

static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static struct pb_http_tls *live;

static int ssl_err(struct pb_err *err, const char *what, const char *file)
{
    char buf[256] = "";
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return pb_err_set(err, PB_ECONFIG, "tls.%s \"%s\": %s", what, file,
                      buf[0] ? buf : "cannot be read");
}

static int pass_cb(char *buf, int size, int rwflag, void *u)
{
    (void)rwflag;
    const char *p = u;
    if (!p)
        return 0;
    size_t n = strlen(p);
    if (n > (size_t)size)
        return -1;
    memcpy(buf, p, n);
    return (int)n;
}

/* At least one certificate in a PEM file. */
static int check_ca(const char *file, struct pb_err *err)
{
    BIO *b = BIO_new_file(file, "r");
    if (!b)
        return ssl_err(err, "ca_file", file);
    X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
    BIO_free(b);
    if (!x)
        return ssl_err(err, "ca_file", file);
    X509_free(x);
    ERR_clear_error();
    return 0;
}

static int check_pair(const struct pb_http_tls_conf *c, struct pb_err *err)
{
    int rc = 0;
    X509 *x = NULL;
    EVP_PKEY *k = NULL;
    BIO *b = BIO_new_file(c->cert_file, "r");
    if (!b || !(x = PEM_read_bio_X509(b, NULL, NULL, NULL))) {
        rc = ssl_err(err, "cert_file", c->cert_file);
        goto out;
    }
    BIO_free(b);
    /* Without key_file the key is looked for in cert_file, as libcurl does. */
    const char *kf = c->key_file ? c->key_file : c->cert_file;
    b = BIO_new_file(kf, "r");
    if (!b || !(k = PEM_read_bio_PrivateKey(b, NULL, pass_cb, c->key_password))) {
        rc = c->key_file ? ssl_err(err, "key_file", kf)
                         : pb_err_set(err, PB_ECONFIG,
                                      "tls.cert_file \"%s\" holds no private key: set key_file",
                                      c->cert_file);
        goto out;
    }
    if (X509_check_private_key(x, k) != 1)
        rc = pb_err_set(err, PB_ECONFIG, "tls.key_file \"%s\" is not the key of cert_file \"%s\"",
                        kf, c->cert_file);
out:
    ERR_clear_error();
    BIO_free(b);
    X509_free(x);
    EVP_PKEY_free(k);
    return rc;
}

static bool host_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '.'))
            return false;
    return true;
}

static char *dup_or_null(const char *s, bool *oom)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *oom = true;
    return d;
}

struct pb_http_tls *pb_http_tls_create(const struct pb_http_tls_conf *c,
                                       const struct pb_http_owner *owner, struct pb_err *err)
{
    static const struct pb_http_tls_conf none = {0};
    if (!c)
        c = &none;
    if (c->ca_file && check_ca(c->ca_file, err))
        return NULL;
    if (c->key_file && !c->cert_file) {
        pb_err_set(err, PB_ECONFIG, "tls.key_file needs cert_file");
        return NULL;
    }
    if (c->key_password && !c->cert_file) {
        pb_err_set(err, PB_ECONFIG, "tls.key_password needs cert_file and key_file");
        return NULL;
    }
    if (c->cert_file && check_pair(c, err))
        return NULL;
    if (c->server_name && !host_name_ok(c->server_name)) {
        pb_err_set(err, PB_ECONFIG, "tls.server_name \"%s\" is not a host name", c->server_name);
        return NULL;
    }
    if (c->min_version < PB_TLS_1_2 || c->min_version > PB_TLS_1_3) {
        pb_err_set(err, PB_ECONFIG, "tls.min_version takes 1.2 or 1.3");
        return NULL;
    }
    struct pb_http_tls *t = calloc(1, sizeof(*t));
    if (!t) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    bool oom = false;
    t->ca_file = dup_or_null(c->ca_file, &oom);
    t->cert_file = dup_or_null(c->cert_file, &oom);
    t->key_file = dup_or_null(c->key_file, &oom);
    t->key_password = dup_or_null(c->key_password, &oom);
    t->server_name = dup_or_null(c->server_name, &oom);
    t->pipeline = dup_or_null(owner && owner->pipeline ? owner->pipeline : "", &oom);
    t->owner = dup_or_null(owner && owner->name ? owner->name : "", &oom);
    t->min_version = c->min_version;
    t->insecure = c->insecure_skip_verify;
    if (oom) {
        pb_http_tls_destroy(t);
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_lock(&live_lock);
    t->next = live;
    if (live)
        live->prev = t;
    live = t;
    pthread_mutex_unlock(&live_lock);
    return t;
}

void pb_http_tls_destroy(struct pb_http_tls *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&live_lock);
    if (t->prev)
        t->prev->next = t->next;
    else if (live == t)
        live = t->next;
    if (t->next)
        t->next->prev = t->prev;
    pthread_mutex_unlock(&live_lock);
    free(t->ca_file);
    free(t->cert_file);
    free(t->key_file);
    if (t->key_password) {
        OPENSSL_cleanse(t->key_password, strlen(t->key_password));
        free(t->key_password);
    }
    free(t->server_name);
    free(t->pipeline);
    free(t->owner);
    free(t);
}

void pb__http_tls_each_insecure(void (*fn)(void *arg, const struct pb_http_tls *t), void *arg)
{
    pthread_mutex_lock(&live_lock);
    for (struct pb_http_tls *t = live; t; t = t->next)
        if (t->insecure)
            fn(arg, t);
    pthread_mutex_unlock(&live_lock);
}
