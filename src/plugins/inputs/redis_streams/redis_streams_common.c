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

#include "patchbay/pb_url.h"
#include "redis_streams_common.h"

const struct pb_field rs_tls_fields[] = {
    {.name = "ca_file", .type = PB_F_STR, .offset = offsetof(struct rs_tls_conf, ca_file)},
    {.name = "cert_file", .type = PB_F_STR, .offset = offsetof(struct rs_tls_conf, cert_file)},
    {.name = "key_file", .type = PB_F_STR, .offset = offsetof(struct rs_tls_conf, key_file)},
    {0},
};

int rs_target_init(struct rs_target *t, const struct rs_conn_conf *c, struct pb_err *err)
{
    const char *u = c->url;

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
    struct pb_url_authority a;
    int rc = pb_url_authority(u, "url", "redis://host:6379", 6379, RS_HOST_MAX, &a, err);
    if (rc)
        return rc;
    if (a.user && !a.password) {
        pb_url_authority_free(&a);
        return pb_err_set(err, PB_ECONFIG,
                          "url: a user without a password; write "
                          "redis://:PASSWORD@host or redis://USER:PASSWORD@host");
    }
    if (a.user && !*a.user) {
        free(a.user); /* redis://:PASSWORD@host: the default user */
        a.user = NULL;
    }
    t->user = a.user;
    t->password = a.password;
    snprintf(t->host, sizeof(t->host), "%s", a.host);
    t->port = a.port;
    const char *rest = a.rest;
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
