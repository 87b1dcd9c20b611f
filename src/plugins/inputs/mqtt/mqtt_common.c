/* mqtt_common.c - connection options, connecting through the outbound
 * guard, non-blocking I/O over TCP or TLS, packet-id tables and backoff,
 * shared by the `mqtt` input and output (see mqtt_common.h).
 *
 * TLS is OpenSSL on a socket of our own: the connection goes to the literal
 * address the outbound guard allowed, while SNI and the certificate check
 * use the host name of the URL.
 *
 * Thread model: none of its own; a connection is used by one thread at a
 * time, and pb_mqtt_conn_open blocks. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "mqtt_common.h"
#include "patchbay/pb_json.h"
#include "patchbay/pb_loop.h"
#include "patchbay/pb_time.h"

#define READ_CHUNK (64 * 1024)

const char *const pb_mqtt_protocols[] = {"3.1.1", "5", NULL};

const struct pb_field pb_mqtt_tls_fields[] = {
    {.name = "ca_file",
     .type = PB_F_STR,
     .offset = offsetof(struct pb_mqtt_tls, ca_file),
     .doc = "PEM file of the CAs that sign the broker's certificate (default: the system's)"},
    {.name = "cert_file",
     .type = PB_F_STR,
     .offset = offsetof(struct pb_mqtt_tls, cert_file),
     .doc = "client certificate (PEM), with key_file"},
    {.name = "key_file",
     .type = PB_F_STR,
     .offset = offsetof(struct pb_mqtt_tls, key_file),
     .doc = "client private key (PEM)"},
    {0},
};

/* ---- options ------------------------------------------------------------------------ */

int pb_mqtt_conf_prepare(struct pb_mqtt_conf *c, struct pb_err *err)
{
    const char *p = c->url;
    if (strncasecmp(p, "mqtt://", 7) == 0) {
        p += 7;
    } else if (strncasecmp(p, "mqtts://", 8) == 0) {
        c->use_tls = true;
        p += 8;
    } else {
        return pb_err_set(err, PB_ECONFIG, "url \"%s\" must start with mqtt:// or mqtts://",
                          c->url);
    }
    const char *end = p + strcspn(p, "/?#");
    if (memchr(p, '@', (size_t)(end - p)))
        return pb_err_set(err, PB_ECONFIG,
                          "url: put credentials in user and password, not in the URL");
    const char *hs = p, *he;
    if (*p == '[') {
        he = memchr(p, ']', (size_t)(end - p));
        if (!he)
            return pb_err_set(err, PB_ECONFIG, "url \"%s\": unclosed [ in the host", c->url);
        hs = p + 1;
        p = he + 1;
    } else {
        he = p + strcspn(p, ":/?#");
        p = he;
    }
    size_t hl = (size_t)(he - hs);
    if (hl == 0 || hl >= sizeof(c->host))
        return pb_err_set(err, PB_ECONFIG, "url \"%s\" needs a host", c->url);
    memcpy(c->host, hs, hl);
    c->host[hl] = 0;
    c->port = c->use_tls ? 8883 : 1883;
    if (*p == ':') {
        char *num_end;
        long port = strtol(p + 1, &num_end, 10);
        if (num_end == p + 1 || port < 1 || port > 65535 || num_end != end)
            return pb_err_set(err, PB_ECONFIG, "url \"%s\": the port must be 1-65535", c->url);
        c->port = (int)port;
        p = num_end;
    }
    if (p != end || (*end && strcmp(end, "/") != 0))
        return pb_err_set(err, PB_ECONFIG,
                          "url \"%s\": only mqtt[s]://host[:port] (no path or query)", c->url);
    if (c->port == 0 || c->port > 65535)
        return pb_err_set(err, PB_ECONFIG, "url \"%s\": bad port", c->url);
    c->version = c->protocol == 1 ? PB_MQTT_V5 : PB_MQTT_V311;
    if (c->keepalive_ms < 0 || (c->keepalive_ms + 999) / 1000 > 65535)
        return pb_err_set(err, PB_ECONFIG, "keepalive must be between 0 and 65535s");
    if (c->connect_timeout_ms <= 0)
        return pb_err_set(err, PB_ECONFIG, "connect_timeout must be above 0");
    if (c->password && !c->user && c->version == PB_MQTT_V311)
        return pb_err_set(err, PB_ECONFIG, "password needs user (MQTT 3.1.1)");
    if (c->user && strlen(c->user) > 65535)
        return pb_err_set(err, PB_ECONFIG, "user is too long");
    if (c->password && strlen(c->password) > 65535)
        return pb_err_set(err, PB_ECONFIG, "password is too long");
    bool any_tls = c->tls.ca_file || c->tls.cert_file || c->tls.key_file;
    if (any_tls && !c->use_tls)
        return pb_err_set(err, PB_ECONFIG, "tls options need an mqtts:// url");
    if (!c->tls.cert_file != !c->tls.key_file)
        return pb_err_set(err, PB_ECONFIG, "tls: cert_file and key_file go together");
    bool v6 = strchr(c->host, ':') != NULL;
    snprintf(c->shown, sizeof(c->shown), "%s://%s%s%s:%d", c->use_tls ? "mqtts" : "mqtt",
             v6 ? "[" : "", c->host, v6 ? "]" : "", c->port);
    return 0;
}

static const char *ssl_error_text(char *buf, size_t len)
{
    unsigned long e = ERR_get_error();
    if (!e)
        return "unknown TLS error";
    ERR_error_string_n(e, buf, len);
    ERR_clear_error();
    return buf;
}

SSL_CTX *pb_mqtt_tls_ctx(const struct pb_mqtt_conf *c, struct pb_err *err)
{
    char ebuf[256];
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        pb_err_set(err, PB_ENOMEM, "TLS: %s", ssl_error_text(ebuf, sizeof(ebuf)));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    int ok = c->tls.ca_file ? SSL_CTX_load_verify_locations(ctx, c->tls.ca_file, NULL)
                            : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        pb_err_set(err, PB_ECONFIG, "tls: cannot load the CAs%s%s: %s",
                   c->tls.ca_file ? " of " : "", c->tls.ca_file ? c->tls.ca_file : "",
                   ssl_error_text(ebuf, sizeof(ebuf)));
        goto fail;
    }
    if (c->tls.cert_file) {
        if (SSL_CTX_use_certificate_chain_file(ctx, c->tls.cert_file) != 1) {
            pb_err_set(err, PB_ECONFIG, "tls: cannot load cert_file %s: %s", c->tls.cert_file,
                       ssl_error_text(ebuf, sizeof(ebuf)));
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, c->tls.key_file, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(ctx) != 1) {
            pb_err_set(err, PB_ECONFIG, "tls: cannot use key_file %s: %s", c->tls.key_file,
                       ssl_error_text(ebuf, sizeof(ebuf)));
            goto fail;
        }
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

/* ---- a connection ------------------------------------------------------------------- */

void pb_mqtt_conn_init(struct pb_mqtt_conn *c)
{
    *c = (struct pb_mqtt_conn){.fd = -1};
}

void pb_mqtt_conn_close(struct pb_mqtt_conn *c)
{
    if (c->ssl)
        SSL_free(c->ssl);
    if (c->fd >= 0)
        close(c->fd);
    free(c->in);
    pb_mqtt_buf_free(&c->out);
    pb_mqtt_conn_init(c);
}

static int64_t mono_ms(void)
{
    return pb_mono_us() / 1000;
}

/* Wait until fd has events (POLLIN/POLLOUT) or the deadline passes. */
static int wait_fd(int fd, short events, int64_t deadline_ms)
{
    for (;;) {
        int64_t left = deadline_ms - mono_ms();
        if (left <= 0)
            return PB_ETIMEOUT;
        struct pollfd pfd = {.fd = fd, .events = events};
        int n = poll(&pfd, 1, left > 1000000 ? 1000000 : (int)left);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return PB_EIO;
    }
}

static int conn_fail(struct pb_mqtt_conn *c, struct pb_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int conn_fail(struct pb_mqtt_conn *c, struct pb_err *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pb_err_vset(err, code, fmt, ap);
    va_end(ap);
    pb_mqtt_conn_close(c);
    return code;
}

static bool is_ip_literal(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

static int tcp_connect(struct pb_mqtt_conn *c, const char *ip, int port, int64_t deadline,
                       struct pb_err *err)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        sl = sizeof(*a4);
    } else if (inet_pton(AF_INET6, ip, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        sl = sizeof(*a6);
    } else {
        return conn_fail(c, err, PB_ENET, "bad address %s", ip);
    }
    c->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return conn_fail(c, err, PB_ENET, "socket: %s", strerror(errno));
    if (connect(c->fd, (struct sockaddr *)&ss, sl) != 0) {
        if (errno != EINPROGRESS)
            return conn_fail(c, err, PB_ENET, "connect to %s port %d: %s", ip, port,
                             strerror(errno));
        if (wait_fd(c->fd, POLLOUT, deadline) != 0)
            return conn_fail(c, err, PB_ETIMEOUT, "connect to %s port %d: timed out", ip, port);
        int soerr = 0;
        socklen_t el = sizeof(soerr);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &el) != 0)
            soerr = errno;
        if (soerr)
            return conn_fail(c, err, PB_ENET, "connect to %s port %d: %s", ip, port,
                             strerror(soerr));
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(c->fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    return 0;
}

static int tls_handshake(struct pb_mqtt_conn *c, SSL_CTX *ctx, const char *host, int64_t deadline,
                         struct pb_err *err)
{
    char ebuf[256];
    c->ssl = SSL_new(ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1)
        return conn_fail(c, err, PB_ENOMEM, "TLS: %s", ssl_error_text(ebuf, sizeof(ebuf)));
    if (is_ip_literal(host)) {
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), host) != 1)
            return conn_fail(c, err, PB_ENET, "TLS: cannot check %s", host);
    } else if (SSL_set_tlsext_host_name(c->ssl, host) != 1 || SSL_set1_host(c->ssl, host) != 1) {
        return conn_fail(c, err, PB_ENET, "TLS: cannot check %s", host);
    }
    for (;;) {
        ERR_clear_error();
        int r = SSL_connect(c->ssl);
        if (r == 1)
            return 0;
        int e = SSL_get_error(c->ssl, r);
        short ev = e == SSL_ERROR_WANT_READ ? POLLIN : e == SSL_ERROR_WANT_WRITE ? POLLOUT : 0;
        if (ev) {
            if (wait_fd(c->fd, ev, deadline) != 0)
                return conn_fail(c, err, PB_ETIMEOUT, "TLS handshake with %s timed out", host);
            continue;
        }
        long vr = SSL_get_verify_result(c->ssl);
        if (vr != X509_V_OK)
            return conn_fail(c, err, PB_ENET, "TLS handshake with %s: certificate refused: %s",
                             host, X509_verify_cert_error_string(vr));
        if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
            return conn_fail(c, err, PB_ENET, "TLS handshake with %s: %s", host,
                             errno ? strerror(errno) : "connection closed");
        return conn_fail(c, err, PB_ENET, "TLS handshake with %s: %s", host,
                         ssl_error_text(ebuf, sizeof(ebuf)));
    }
}

/* Block until what c->out holds is written or the deadline passes. */
static int flush_until(struct pb_mqtt_conn *c, int64_t deadline)
{
    for (;;) {
        int rc = pb_mqtt_conn_flush(c);
        if (rc <= 0)
            return rc;
        unsigned ev = pb_mqtt_conn_events(c, false);
        if (wait_fd(c->fd, (short)((ev & PB_LOOP_READ ? POLLIN : 0) | POLLOUT), deadline) != 0) {
            snprintf(c->err, sizeof(c->err), "timed out writing to the broker");
            return PB_ETIMEOUT;
        }
    }
}

int pb_mqtt_conn_open(struct pb_mqtt_conn *c, const struct pb_mqtt_conf *conf, SSL_CTX *ctx,
                      const struct pb_allowlist *al, const struct pb_mqtt_connect *cp,
                      struct pb_mqtt_connack *ack, struct pb_err *err)
{
    int64_t deadline = mono_ms() + conf->connect_timeout_ms;
    char ip[64];
    pb_mqtt_conn_close(c);
    int rc = pb_outbound_resolve(al, conf->host, conf->port, ip, sizeof(ip), err);
    if (rc)
        return rc;
    rc = tcp_connect(c, ip, conf->port, deadline, err);
    if (rc)
        return rc;
    if (ctx) {
        rc = tls_handshake(c, ctx, conf->host, deadline, err);
        if (rc)
            return rc;
    }
    rc = pb_mqtt_put_connect(&c->out, cp);
    if (rc)
        return conn_fail(c, err, rc, "cannot encode CONNECT: %s", pb_strerror(rc));
    rc = flush_until(c, deadline);
    if (rc)
        return conn_fail(c, err, rc == PB_ETIMEOUT ? rc : PB_ENET, "sending CONNECT: %s", c->err);
    struct pb_mqtt_packet pk;
    long used;
    while ((used = pb_mqtt_frame(c->in, c->in_len, 4096, &pk)) == 0) {
        long n = pb_mqtt_conn_read(c, 4096);
        if (n < 0)
            return conn_fail(c, err, PB_ENET, "waiting for CONNACK: %s", c->err);
        if (n > 0)
            continue;
        unsigned ev = pb_mqtt_conn_events(c, true);
        if (wait_fd(c->fd, (short)((ev & PB_LOOP_WRITE ? POLLOUT : 0) | POLLIN), deadline) != 0)
            return conn_fail(c, err, PB_ETIMEOUT, "no CONNACK from %s within %lld ms", conf->shown,
                             (long long)conf->connect_timeout_ms);
    }
    if (used < 0 || pk.type != PB_MQTT_CONNACK || pb_mqtt_parse_connack(&pk, cp->version, ack))
        return conn_fail(c, err, PB_ENET, "%s answered CONNECT with something else than CONNACK",
                         conf->shown);
    if (ack->v311_form)
        return conn_fail(c, err, PB_ENET,
                         "%s does not speak MQTT 5 (it answered: %s): set protocol: \"3.1.1\"",
                         conf->shown, pb_mqtt_reason_text(PB_MQTT_V311, ack->code));
    if (ack->code != 0) {
        char reason[128] = "";
        if (ack->reason && ack->reason_len &&
            pb_utf8_valid((const char *)ack->reason, ack->reason_len))
            snprintf(reason, sizeof(reason), " (%.*s)",
                     (int)(ack->reason_len > 100 ? 100 : ack->reason_len),
                     (const char *)ack->reason);
        bool auth = cp->version == PB_MQTT_V5 ? ack->code == 0x86 || ack->code == 0x87
                                              : ack->code == 4 || ack->code == 5;
        return conn_fail(c, err, auth ? PB_EDENIED : PB_ENET, "%s refused the connection: %s%s",
                         conf->shown, pb_mqtt_reason_text(cp->version, ack->code), reason);
    }
    ack->reason = NULL;
    ack->reason_len = 0;
    pb_mqtt_conn_consume(c, (size_t)used);
    return 0;
}

void pb_mqtt_conn_consume(struct pb_mqtt_conn *c, size_t n)
{
    if (n >= c->in_len) {
        c->in_len = 0;
        return;
    }
    memmove(c->in, c->in + n, c->in_len - n);
    c->in_len -= n;
}

static bool grow_in(struct pb_mqtt_conn *c, size_t want)
{
    if (c->in_cap - c->in_len >= want)
        return true;
    size_t cap = c->in_cap ? c->in_cap : READ_CHUNK;
    while (cap - c->in_len < want)
        cap *= 2;
    uint8_t *p = realloc(c->in, cap);
    if (!p)
        return false;
    c->in = p;
    c->in_cap = cap;
    return true;
}

long pb_mqtt_conn_read(struct pb_mqtt_conn *c, size_t max)
{
    long total = 0;
    c->read_wants_write = false;
    if (c->fd < 0) {
        snprintf(c->err, sizeof(c->err), "not connected");
        return PB_ENET;
    }
    while (c->in_len < max) {
        size_t room = max - c->in_len < READ_CHUNK ? max - c->in_len : READ_CHUNK;
        if (!grow_in(c, room)) {
            snprintf(c->err, sizeof(c->err), "out of memory");
            return total ? total : PB_ENET;
        }
        long n;
        if (c->ssl) {
            ERR_clear_error();
            int r = SSL_read(c->ssl, c->in + c->in_len, (int)room);
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_READ)
                    break;
                if (e == SSL_ERROR_WANT_WRITE) {
                    c->read_wants_write = true;
                    break;
                }
                char ebuf[200];
                if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && !errno))
                    snprintf(c->err, sizeof(c->err), "connection closed by the broker");
                else if (e == SSL_ERROR_SYSCALL)
                    snprintf(c->err, sizeof(c->err), "%s", strerror(errno));
                else
                    snprintf(c->err, sizeof(c->err), "TLS: %s", ssl_error_text(ebuf, sizeof(ebuf)));
                return total ? total : PB_ENET;
            }
            n = r;
        } else {
            n = recv(c->fd, c->in + c->in_len, room, 0);
            if (n == 0) {
                snprintf(c->err, sizeof(c->err), "connection closed by the broker");
                return total ? total : PB_ENET;
            }
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    break;
                snprintf(c->err, sizeof(c->err), "%s", strerror(errno));
                return total ? total : PB_ENET;
            }
        }
        c->in_len += (size_t)n;
        total += n;
    }
    return total;
}

bool pb_mqtt_conn_read_pending(const struct pb_mqtt_conn *c)
{
    return c->ssl && SSL_pending(c->ssl) > 0;
}

int pb_mqtt_conn_flush(struct pb_mqtt_conn *c)
{
    c->write_wants_read = false;
    if (c->fd < 0) {
        snprintf(c->err, sizeof(c->err), "not connected");
        return PB_ENET;
    }
    if (c->out.failed) {
        snprintf(c->err, sizeof(c->err), "out of memory");
        return PB_ENET;
    }
    while (c->out_off < c->out.len) {
        size_t left = c->out.len - c->out_off;
        long n;
        if (c->ssl) {
            ERR_clear_error();
            int r =
                SSL_write(c->ssl, c->out.p + c->out_off, left > INT32_MAX ? INT32_MAX : (int)left);
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_WRITE)
                    return 1;
                if (e == SSL_ERROR_WANT_READ) {
                    c->write_wants_read = true;
                    return 1;
                }
                char ebuf[200];
                if (e == SSL_ERROR_SYSCALL)
                    snprintf(c->err, sizeof(c->err), "%s",
                             errno ? strerror(errno) : "connection closed");
                else
                    snprintf(c->err, sizeof(c->err), "TLS: %s", ssl_error_text(ebuf, sizeof(ebuf)));
                return PB_ENET;
            }
            n = r;
        } else {
            n = send(c->fd, c->out.p + c->out_off, left, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return 1;
                snprintf(c->err, sizeof(c->err), "%s", strerror(errno));
                return PB_ENET;
            }
        }
        c->out_off += (size_t)n;
    }
    c->out.len = 0;
    c->out_off = 0;
    return 0;
}

int pb_mqtt_conn_flush_wait(struct pb_mqtt_conn *c, int64_t timeout_ms)
{
    return flush_until(c, mono_ms() + timeout_ms);
}

int pb_mqtt_conn_wait(const struct pb_mqtt_conn *c, bool reading, int64_t deadline_ms)
{
    unsigned ev = pb_mqtt_conn_events(c, reading);
    short pev = (short)((ev & PB_LOOP_READ ? POLLIN : 0) | (ev & PB_LOOP_WRITE ? POLLOUT : 0));
    return wait_fd(c->fd, pev ? pev : POLLIN, deadline_ms);
}

unsigned pb_mqtt_conn_events(const struct pb_mqtt_conn *c, bool reading)
{
    unsigned ev = 0;
    if (reading || c->write_wants_read)
        ev |= PB_LOOP_READ;
    if (c->out_off < c->out.len || c->read_wants_write)
        ev |= PB_LOOP_WRITE;
    return ev;
}

/* ---- packet ids in use -------------------------------------------------------------- */

static size_t home(const struct pb_mqtt_idmap *m, uint16_t id)
{
    return (size_t)id & (m->cap - 1);
}

struct pb_mqtt_slot *pb_mqtt_idmap_get(struct pb_mqtt_idmap *m, uint16_t id)
{
    if (!m->cap)
        return NULL;
    for (size_t i = home(m, id);; i = (i + 1) & (m->cap - 1)) {
        if (!m->s[i].used)
            return NULL;
        if (m->s[i].id == id)
            return &m->s[i];
    }
}

static bool idmap_grow(struct pb_mqtt_idmap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 64;
    struct pb_mqtt_slot *s = calloc(cap, sizeof(*s));
    if (!s)
        return false;
    struct pb_mqtt_idmap nm = {.s = s, .cap = cap};
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->s[i].used)
            continue;
        size_t j = home(&nm, m->s[i].id);
        while (s[j].used)
            j = (j + 1) & (cap - 1);
        s[j] = m->s[i];
        nm.n++;
    }
    free(m->s);
    *m = nm;
    return true;
}

struct pb_mqtt_slot *pb_mqtt_idmap_put(struct pb_mqtt_idmap *m, uint16_t id)
{
    struct pb_mqtt_slot *s = pb_mqtt_idmap_get(m, id);
    if (s)
        return s;
    if ((m->n + 1) * 2 > m->cap && !idmap_grow(m))
        return NULL;
    size_t i = home(m, id);
    while (m->s[i].used)
        i = (i + 1) & (m->cap - 1);
    m->s[i] = (struct pb_mqtt_slot){.id = id, .used = true};
    m->n++;
    return &m->s[i];
}

void pb_mqtt_idmap_del(struct pb_mqtt_idmap *m, struct pb_mqtt_slot *s)
{
    size_t mask = m->cap - 1;
    size_t i = (size_t)(s - m->s), j = i;
    /* Backward-shift deletion: pull later entries of the probe run into the hole. */
    for (;;) {
        j = (j + 1) & mask;
        if (!m->s[j].used)
            break;
        size_t k = home(m, m->s[j].id);
        bool movable = i <= j ? (k <= i || k > j) : (k <= i && k > j);
        if (movable) {
            m->s[i] = m->s[j];
            i = j;
        }
    }
    m->s[i] = (struct pb_mqtt_slot){0};
    m->n--;
}

void pb_mqtt_idmap_free(struct pb_mqtt_idmap *m)
{
    free(m->s);
    *m = (struct pb_mqtt_idmap){0};
}

/* ---- reconnecting --------------------------------------------------------------------- */

int64_t pb_mqtt_backoff_next(int64_t prev)
{
    int64_t next = prev <= 0 ? 250 : prev * 2;
    return next > 30000 ? 30000 : next;
}

int64_t pb_mqtt_backoff_jitter(int64_t ceiling)
{
    int64_t half = ceiling / 2;
    return half + (int64_t)(pb_rand64() % (uint64_t)(ceiling - half + 1));
}
