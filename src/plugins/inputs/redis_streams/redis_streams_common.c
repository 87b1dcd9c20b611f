/* redis_streams_common.c - connection options, URL, connect through the
 * outbound guard, reply helpers: what the redis_streams input and output
 * share (redis_streams_common.h).
 *
 * Thread model: stateless; rs_connect and every command block, so both
 * plugins call them from threads that may block (the input's own thread,
 * the output's worker). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#include "redis_streams_common.h"

const struct pb_field rs_tls_fields[] = {
    {.name = "ca_file", .type = PB_F_STR, .offset = offsetof(struct rs_tls_conf, ca_file)},
    {.name = "cert_file", .type = PB_F_STR, .offset = offsetof(struct rs_tls_conf, cert_file)},
    {.name = "key_file", .type = PB_F_STR, .offset = offsetof(struct rs_tls_conf, key_file)},
    {0},
};

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Percent-decode s[0..n) into a new string; NULL on a bad escape, an
 * embedded NUL or no memory (*nomem tells which). */
static char *pct_decode(const char *s, size_t n, bool *nomem)
{
    char *out = malloc(n + 1);
    size_t o = 0;
    *nomem = out == NULL;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            out[o++] = s[i];
            continue;
        }
        int hi = i + 2 < n ? hexval((unsigned char)s[i + 1]) : -1;
        int lo = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
            free(out);
            return NULL;
        }
        out[o++] = (char)(hi * 16 + lo);
        i += 2;
    }
    out[o] = 0;
    return out;
}

int rs_target_init(struct rs_target *t, const struct rs_conn_conf *c, struct pb_err *err)
{
    const char *u = c->url;
    bool nomem = false;

    memset(t, 0, sizeof(*t));
    if (c->tls.ca_file || c->tls.cert_file || c->tls.key_file)
        return pb_err_set(err, PB_ECONFIG,
                          "tls is not available: this build's hiredis (0.14, Debian 12) has no "
                          "TLS support; reach Redis over a private network or a TLS tunnel");
    if (strncasecmp(u, "rediss://", 9) == 0)
        return pb_err_set(err, PB_ECONFIG,
                          "url: rediss:// (TLS) is not available: this build's hiredis (0.14, "
                          "Debian 12) has no TLS support");
    if (strncasecmp(u, "redis://", 8) != 0)
        return pb_err_set(err, PB_ECONFIG, "url must start with redis://");
    u += 8;
    /* authority ends at the path, a query or a fragment */
    size_t alen = strcspn(u, "/?#");
    const char *rest = u + alen;
    const char *at = NULL;
    for (size_t i = 0; i < alen; i++)
        if (u[i] == '@')
            at = u + i; /* the last @: a password may hold one, percent-encoded or not */
    const char *hp = u;
    if (at) {
        const char *colon = memchr(u, ':', (size_t)(at - u));
        if (!colon)
            return pb_err_set(err, PB_ECONFIG,
                              "url: a user without a password; write "
                              "redis://:PASSWORD@host or redis://USER:PASSWORD@host");
        if (colon > u) {
            t->user = pct_decode(u, (size_t)(colon - u), &nomem);
            if (!t->user)
                goto bad_userinfo;
        }
        t->password = pct_decode(colon + 1, (size_t)(at - colon - 1), &nomem);
        if (!t->password)
            goto bad_userinfo;
        hp = at + 1;
    }
    size_t hplen = (size_t)(u + alen - hp);
    const char *port = NULL;
    size_t hlen;
    if (hplen && hp[0] == '[') {
        const char *close = memchr(hp, ']', hplen);
        if (!close)
            return pb_err_set(err, PB_ECONFIG, "url: unterminated [ in the host");
        hlen = (size_t)(close - hp - 1);
        if (close + 1 < hp + hplen) {
            if (close[1] != ':')
                return pb_err_set(err, PB_ECONFIG, "url: junk after ] in the host");
            port = close + 2;
        }
        hp++;
    } else {
        const char *colon = memchr(hp, ':', hplen);
        hlen = colon ? (size_t)(colon - hp) : hplen;
        if (colon)
            port = colon + 1;
    }
    if (hlen == 0 || hlen > RS_HOST_MAX)
        return pb_err_set(err, PB_ECONFIG, "url: no host (redis://host:port)");
    memcpy(t->host, hp, hlen);
    t->host[hlen] = 0;
    for (size_t i = 0; i < hlen; i++)
        if (!(isalnum((unsigned char)t->host[i]) || strchr(".-_:%", t->host[i])))
            return pb_err_set(err, PB_ECONFIG, "url: bad character in the host");
    t->port = 6379;
    if (port) {
        size_t plen = (size_t)(u + alen - port);
        long p = 0;
        if (plen == 0 || plen > 5)
            return pb_err_set(err, PB_ECONFIG, "url: the port must be 1-65535");
        for (size_t i = 0; i < plen; i++) {
            if (!isdigit((unsigned char)port[i]))
                return pb_err_set(err, PB_ECONFIG, "url: the port must be 1-65535");
            p = p * 10 + (port[i] - '0');
        }
        if (p < 1 || p > 65535)
            return pb_err_set(err, PB_ECONFIG, "url: the port must be 1-65535");
        t->port = (int)p;
    }
    if (*rest == '?' || *rest == '#')
        return pb_err_set(err, PB_ECONFIG,
                          "url: query and fragment are not supported (use the plugin's options)");
    if (*rest == '/' && rest[1]) {
        long db = 0;
        const char *d = rest + 1;
        size_t dl = strlen(d);
        if (dl > 9)
            return pb_err_set(err, PB_ECONFIG, "url: the path must be a database number");
        for (size_t i = 0; i < dl; i++) {
            if (!isdigit((unsigned char)d[i]))
                return pb_err_set(err, PB_ECONFIG, "url: the path must be a database number");
            db = db * 10 + (d[i] - '0');
        }
        t->db = db;
    }
    if (c->user) {
        free(t->user);
        t->user = strdup(c->user);
        if (!t->user)
            return pb_err_set(err, PB_ENOMEM, "out of memory");
    }
    if (c->password) {
        free(t->password);
        t->password = strdup(c->password);
        if (!t->password)
            return pb_err_set(err, PB_ENOMEM, "out of memory");
    }
    if (t->user && !t->password)
        return pb_err_set(err, PB_ECONFIG, "user \"%s\" needs a password", t->user);
    if (c->connect_timeout_ms <= 0 || c->timeout_ms <= 0)
        return pb_err_set(err, PB_ECONFIG, "connect_timeout and timeout must be above 0");
    return 0;

bad_userinfo:
    if (nomem)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    return pb_err_set(err, PB_ECONFIG, "url: bad %%-escape in the user or password");
}

void rs_target_cleanup(struct rs_target *t)
{
    if (!t)
        return;
    free(t->user);
    if (t->password) {
        memset(t->password, 0, strlen(t->password));
        free(t->password);
    }
    t->user = t->password = NULL;
}

static struct timeval to_tv(int64_t ms)
{
    if (ms <= 0)
        ms = 1;
    return (struct timeval){.tv_sec = (time_t)(ms / 1000),
                            .tv_usec = (suseconds_t)(ms % 1000) * 1000};
}

int rs_set_timeout(redisContext *ctx, int64_t ms)
{
    return redisSetTimeout(ctx, to_tv(ms)) == REDIS_OK ? 0 : PB_EIO;
}

static void printable(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
            *s = ' ';
}

const char *rs_error_text(const redisContext *ctx, const redisReply *reply, char *buf, size_t len)
{
    if (!len)
        return buf;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        snprintf(buf, len, "%.*s", (int)(reply->len < 200 ? reply->len : 200), reply->str);
    else if (reply)
        snprintf(buf, len, "unexpected reply of type %d", reply->type);
    else if (ctx && ctx->err)
        snprintf(buf, len, "%s", ctx->errstr[0] ? ctx->errstr : "connection error");
    else
        snprintf(buf, len, "no reply");
    printable(buf);
    return buf;
}

bool rs_reply_is(const redisReply *reply, const char *code)
{
    size_t n = strlen(code);
    return reply && reply->type == REDIS_REPLY_ERROR && reply->len >= n &&
           strncmp(reply->str, code, n) == 0 && (reply->len == n || reply->str[n] == ' ');
}

bool rs_id_valid(const char *id)
{
    const char *p = id;
    size_t digits = 0;
    while (isdigit((unsigned char)*p))
        p++, digits++;
    if (digits == 0 || digits > 20)
        return false;
    if (*p == 0)
        return true;
    if (*p++ != '-')
        return false;
    digits = 0;
    while (isdigit((unsigned char)*p))
        p++, digits++;
    return digits > 0 && digits <= 20 && *p == 0;
}

/* One command whose reply must be a status or a string; the error text
 * goes to err. */
static int simple(redisContext *ctx, int argc, const char **argv, const char *what,
                  struct pb_err *err, int code)
{
    char txt[256];
    redisReply *r = redisCommandArgv(ctx, argc, argv, NULL);
    if (!r || r->type == REDIS_REPLY_ERROR) {
        int rc = pb_err_set(err, r ? code : PB_ENET, "%s: %s", what,
                            rs_error_text(ctx, r, txt, sizeof(txt)));
        if (r)
            freeReplyObject(r);
        return rc;
    }
    freeReplyObject(r);
    return 0;
}

redisContext *rs_connect(const struct rs_target *t, const struct rs_conn_conf *c,
                         const struct pb_allowlist *allow, struct pb_err *err)
{
    char ip[64];
    redisContext *ctx = NULL;

    if (pb_outbound_resolve(allow, t->host, t->port, ip, sizeof(ip), err) != 0)
        return NULL;
    ctx = redisConnectWithTimeout(ip, t->port, to_tv(c->connect_timeout_ms));
    if (!ctx) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    if (ctx->err) {
        char txt[160];
        snprintf(txt, sizeof(txt), "%s", ctx->errstr);
        printable(txt);
        pb_err_set(err, PB_ENET, "connect to %s:%d (%s): %s", t->host, t->port, ip, txt);
        goto fail;
    }
    redisEnableKeepAlive(ctx);
    if (rs_set_timeout(ctx, c->connect_timeout_ms) != 0) {
        pb_err_set(err, PB_EIO, "cannot set the socket timeout");
        goto fail;
    }
    /* AUTH and SELECT are part of connecting: they share its timeout. */
    if (t->password) {
        const char *argv[3] = {"AUTH", t->user ? t->user : t->password, t->password};
        if (simple(ctx, t->user ? 3 : 2, argv, "AUTH", err, PB_EDENIED) != 0)
            goto fail;
    }
    if (t->db) {
        char db[24];
        snprintf(db, sizeof(db), "%ld", t->db);
        const char *argv[2] = {"SELECT", db};
        if (simple(ctx, 2, argv, "SELECT", err, PB_ECONFIG) != 0)
            goto fail;
    }
    if (rs_set_timeout(ctx, c->timeout_ms) != 0) {
        pb_err_set(err, PB_EIO, "cannot set the socket timeout");
        goto fail;
    }
    return ctx;
fail:
    redisFree(ctx);
    return NULL;
}
