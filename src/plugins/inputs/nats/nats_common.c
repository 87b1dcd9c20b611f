/* nats_common.c - the connection the `nats` input and output share
 * (nats_common.h): options checked at init, host names resolved through the
 * outbound guard, the library connected to the literal addresses.
 *
 * Threads: open and close block and run on a plugin thread that may; the
 * library's callback thread reports disconnects, reconnects and the close
 * through a small watch object that outlives the connection until the
 * library's last callback (closed) has run, so a callback can never reach a
 * plugin context that is gone. */
#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "nats_common.h"
#include "patchbay/pb_log.h"

const struct pb_field nats_tls_fields[] = {
    {.name = "ca_file",
     .type = PB_F_STR,
     .offset = offsetof(struct nats_tls_conf, ca_file),
     .doc = "PEM file of the certificate authorities to trust"},
    {.name = "cert_file",
     .type = PB_F_STR,
     .offset = offsetof(struct nats_tls_conf, cert_file),
     .doc = "PEM client certificate (with key_file)"},
    {.name = "key_file",
     .type = PB_F_STR,
     .offset = offsetof(struct nats_tls_conf, key_file),
     .doc = "PEM private key of cert_file"},
    {.name = "server_name",
     .type = PB_F_STR,
     .offset = offsetof(struct nats_tls_conf, server_name),
     .doc = "name the server's certificate must carry (default: the url's host)"},
    {0},
};

/* ---- options ------------------------------------------------------------------------ */

static int parse_one(struct nats_url *u, const char *s, size_t len, struct pb_err *err)
{
    char buf[NATS_HOST_MAX + 64];
    if (len == 0 || len >= sizeof(buf))
        return pb_err_set(err, PB_ECONFIG, "url: an empty or overlong entry");
    memcpy(buf, s, len);
    buf[len] = 0;
    const char *p;
    if (strncasecmp(buf, "nats://", 7) == 0) {
        p = buf + 7;
        u->tls = false;
    } else if (strncasecmp(buf, "tls://", 6) == 0) {
        p = buf + 6;
        u->tls = true;
    } else {
        return pb_err_set(err, PB_ECONFIG, "url must start with nats:// or tls://");
    }
    if (strchr(p, '@'))
        return pb_err_set(err, PB_ECONFIG,
                          "url must not carry credentials: use user and password, token or "
                          "credentials_file, which are kept secret");
    const char *host = p, *hend;
    if (*p == '[') {
        host = p + 1;
        hend = strchr(host, ']');
        if (!hend)
            return pb_err_set(err, PB_ECONFIG, "url: unterminated [IPv6 address]");
        p = hend + 1;
    } else {
        hend = p + strcspn(p, ":/");
        p = hend;
    }
    size_t hl = (size_t)(hend - host);
    if (hl == 0 || hl >= NATS_HOST_MAX)
        return pb_err_set(err, PB_ECONFIG, "url needs a host");
    memcpy(u->host, host, hl);
    u->host[hl] = 0;
    for (size_t i = 0; i < hl; i++)
        if ((unsigned char)u->host[i] <= 0x20 || u->host[i] == 0x7f)
            return pb_err_set(err, PB_ECONFIG, "url: the host has a bad character");
    u->port = 4222;
    if (*p == ':') {
        char *end;
        long port = strtol(p + 1, &end, 10);
        if (end == p + 1 || port < 1 || port > 65535)
            return pb_err_set(err, PB_ECONFIG, "url: the port must be 1-65535");
        u->port = (int)port;
        p = end;
    }
    if (*p == '/')
        p++;
    if (*p)
        return pb_err_set(err, PB_ECONFIG, "url takes nats://host:port, nothing after the port");
    return 0;
}

int nats_conf_check(struct nats_conn_conf *c, struct pb_err *err)
{
    const char *s = c->url;
    c->nurls = 0;
    for (bool more = *s != 0; more;) {
        while (*s == ' ')
            s++;
        size_t len = strcspn(s, ",");
        size_t l = len;
        while (l && s[l - 1] == ' ')
            l--;
        if (c->nurls == NATS_MAX_URLS)
            return pb_err_set(err, PB_ECONFIG, "url: at most %d servers", NATS_MAX_URLS);
        int rc = parse_one(&c->urls[c->nurls], s, l, err);
        if (rc)
            return rc;
        c->nurls++;
        s += len;
        more = *s == ',';
        if (more)
            s++;
    }
    if (c->nurls == 0)
        return pb_err_set(err, PB_ECONFIG, "url needs at least one nats://host:port");
    c->secure = c->tls.ca_file || c->tls.cert_file || c->tls.key_file || c->tls.server_name;
    for (size_t i = 0; i < c->nurls; i++)
        c->secure |= c->urls[i].tls;
    if ((c->tls.cert_file != NULL) != (c->tls.key_file != NULL))
        return pb_err_set(err, PB_ECONFIG, "tls: cert_file and key_file go together");
    int nauth = (c->user != NULL) + (c->token != NULL) + (c->credentials_file != NULL);
    if (nauth > 1)
        return pb_err_set(err, PB_ECONFIG, "take one of user/password, token or credentials_file");
    if (c->password && !c->user)
        return pb_err_set(err, PB_ECONFIG, "password needs user");
    if (c->connect_timeout_ms <= 0)
        return pb_err_set(err, PB_ECONFIG, "connect_timeout must be more than 0");
    if (c->ping_interval_ms < 1000)
        return pb_err_set(err, PB_ECONFIG, "ping_interval must be at least 1s");
    return 0;
}

/* ---- the connection ------------------------------------------------------------------ */

/* Shared by the plugin and the library's callbacks: freed by whichever lets
 * go last (the plugin at close, the library after its closed callback). */
struct watch {
    pthread_mutex_t mu;
    nats_event_cb cb; /* NULL once the plugin has let go */
    void *arg;
    _Atomic int refs;
};

struct nats_conn {
    natsConnection *nc;
    struct watch *w;
};

static void watch_release(struct watch *w)
{
    if (atomic_fetch_sub(&w->refs, 1) == 1) {
        pthread_mutex_destroy(&w->mu);
        free(w);
    }
}

static void watch_report(struct watch *w, enum nats_event ev, const char *detail)
{
    pthread_mutex_lock(&w->mu);
    if (w->cb)
        w->cb(w->arg, ev, detail);
    pthread_mutex_unlock(&w->mu);
}

static void disconnected_cb(natsConnection *nc, void *closure)
{
    const char *last = NULL;
    natsConnection_GetLastError(nc, &last);
    watch_report(closure, NATS_EV_DISCONNECTED, last && *last ? last : "disconnected");
}

static void reconnected_cb(natsConnection *nc, void *closure)
{
    (void)nc;
    watch_report(closure, NATS_EV_RECONNECTED, NULL);
}

static void closed_cb(natsConnection *nc, void *closure)
{
    const char *last = NULL;
    natsConnection_GetLastError(nc, &last);
    watch_report(closure, NATS_EV_CLOSED, last && *last ? last : "connection closed");
    watch_release(closure); /* the library's last word on this connection */
}

static void error_cb(natsConnection *nc, natsSubscription *sub, natsStatus s, void *closure)
{
    (void)nc;
    (void)sub;
    (void)closure;
    PB_WARN("nats: asynchronous error error=\"%s\"", natsStatus_GetText(s));
}

const char *nats_status_text(natsStatus s, char *buf, size_t len)
{
    natsStatus last = NATS_OK;
    const char *t = nats_GetLastError(&last);
    snprintf(buf, len, "%s", t && *t && last == s ? t : natsStatus_GetText(s));
    return buf;
}

natsConnection *nats_conn_nc(struct nats_conn *c)
{
    return c ? c->nc : NULL;
}

struct nats_conn *nats_conn_open(const struct nats_conn_conf *c, const struct pb_allowlist *allow,
                                 const char *name, nats_event_cb cb, void *arg, struct pb_err *err)
{
    char urls[NATS_MAX_URLS][96];
    const char *list[NATS_MAX_URLS];
    int n = 0;
    struct pb_err first = {0};
    natsOptions *o = NULL;
    natsStatus s = NATS_OK;
    struct nats_conn *conn = NULL;
    struct watch *w = NULL;
    const char *tls_host = NULL;

    for (size_t i = 0; i < c->nurls; i++) {
        char ip[64];
        struct pb_err e = {0};
        int rc = pb_outbound_resolve(allow, c->urls[i].host, c->urls[i].port, ip, sizeof(ip), &e);
        if (rc) {
            if (!first.code)
                first = e;
            continue;
        }
        bool v6 = strchr(ip, ':') != NULL;
        snprintf(urls[n], sizeof(urls[n]), "%s://%s%s%s:%d", c->urls[i].tls ? "tls" : "nats",
                 v6 ? "[" : "", ip, v6 ? "]" : "", c->urls[i].port);
        list[n] = urls[n];
        n++;
        struct in6_addr a;
        if (!tls_host && inet_pton(AF_INET, c->urls[i].host, &a) != 1 &&
            inet_pton(AF_INET6, c->urls[i].host, &a) != 1)
            tls_host = c->urls[i].host;
    }
    if (n == 0) {
        if (err)
            *err = first;
        return NULL;
    }
    w = calloc(1, sizeof(*w));
    conn = calloc(1, sizeof(*conn));
    if (!w || !conn) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        goto fail;
    }
    pthread_mutex_init(&w->mu, NULL);
    w->cb = cb;
    w->arg = arg;
    atomic_init(&w->refs, 2); /* the plugin's and the library's closed callback's */
    s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = natsOptions_SetServers(o, list, n);
    if (s == NATS_OK)
        s = natsOptions_SetNoRandomize(o, true);
    if (s == NATS_OK)
        s = natsOptions_SetIgnoreDiscoveredServers(o, true);
    if (s == NATS_OK)
        s = natsOptions_SetName(o, name);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(o, c->connect_timeout_ms);
    if (s == NATS_OK)
        s = natsOptions_SetPingInterval(o, c->ping_interval_ms);
    if (s == NATS_OK)
        s = natsOptions_SetMaxPingsOut(o, 2);
    if (s == NATS_OK)
        s = natsOptions_SetAllowReconnect(o, c->reconnect_attempts > 0);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(o, (int)c->reconnect_attempts);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(o, 1000);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectJitter(o, 200, 1000);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(o, disconnected_cb, w);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(o, reconnected_cb, w);
    if (s == NATS_OK)
        s = natsOptions_SetClosedCB(o, closed_cb, w);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(o, error_cb, NULL);
    if (s == NATS_OK && c->user)
        s = natsOptions_SetUserInfo(o, c->user, c->password ? c->password : "");
    if (s == NATS_OK && c->token)
        s = natsOptions_SetToken(o, c->token);
    if (s == NATS_OK && c->credentials_file)
        s = natsOptions_SetUserCredentialsFromFiles(o, c->credentials_file, NULL);
    if (s == NATS_OK && c->secure) {
        s = natsOptions_SetSecure(o, true);
        if (s == NATS_OK && c->tls.ca_file)
            s = natsOptions_LoadCATrustedCertificates(o, c->tls.ca_file);
        if (s == NATS_OK && c->tls.cert_file)
            s = natsOptions_LoadCertificatesChain(o, c->tls.cert_file, c->tls.key_file);
        const char *expect = c->tls.server_name ? c->tls.server_name : tls_host;
        if (s == NATS_OK && expect)
            s = natsOptions_SetExpectedHostname(o, expect);
    }
    if (s != NATS_OK) {
        char t[256];
        pb_err_set(err, PB_ECONFIG, "nats options: %s", nats_status_text(s, t, sizeof(t)));
        goto fail;
    }
    s = natsConnection_Connect(&conn->nc, o);
    if (s != NATS_OK) {
        char t[256];
        pb_err_set(err, PB_ENET, "connecting to %s:%d: %s", c->urls[0].host, c->urls[0].port,
                   nats_status_text(s, t, sizeof(t)));
        goto fail;
    }
    natsOptions_Destroy(o);
    conn->w = w;
    return conn;
fail:
    natsOptions_Destroy(o);
    if (conn && conn->nc)
        natsConnection_Destroy(conn->nc);
    free(conn);
    if (w) {
        pthread_mutex_destroy(&w->mu);
        free(w); /* never connected: the library holds no callback of it */
    }
    return NULL;
}

void nats_conn_close(struct nats_conn *c, int64_t flush_ms)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->w->mu);
    c->w->cb = NULL;
    pthread_mutex_unlock(&c->w->mu);
    if (flush_ms > 0 && natsConnection_Status(c->nc) == NATS_CONN_STATUS_CONNECTED)
        natsConnection_FlushTimeout(c->nc, flush_ms);
    natsConnection_Close(c->nc);
    natsConnection_Destroy(c->nc);
    watch_release(c->w);
    free(c);
}

/* ---- subjects and headers -------------------------------------------------------------- */

bool nats_subject_ok(const char *s, bool wildcards)
{
    if (!s || !*s)
        return false;
    const char *tok = s;
    for (const char *p = s;; p++) {
        if (*p == '.' || *p == 0) {
            size_t tl = (size_t)(p - tok);
            if (tl == 0)
                return false;
            bool wild = (tl == 1 && (*tok == '*' || *tok == '>'));
            if (wild && (!wildcards || (*tok == '>' && *p != 0)))
                return false;
            if (*p == 0)
                return true;
            tok = p + 1;
            continue;
        }
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return false;
    }
}

bool nats_header_name_ok(const char *s)
{
    if (!s || !*s)
        return false;
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f || *s == ':')
            return false;
    return true;
}

bool nats_header_value_ok(const char *s)
{
    for (; s && *s; s++)
        if (*s == '\r' || *s == '\n' || *s == 0)
            return false;
    return s != NULL;
}
