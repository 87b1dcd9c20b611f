/* redis_streams_common.h - what the redis_streams input and output share:
 * the connection options (url, user, password, timeouts, tls), the URL
 * parser, connecting through the outbound guard, and reply helpers.
 *
 * Thread model: nothing here keeps state between calls. rs_connect blocks
 * (DNS, TCP connect, AUTH, SELECT) and every command on a context blocks up
 * to its timeout: call them on the input's own thread or on an output
 * worker, never on a shared loop.
 *
 * TLS: Debian 12's hiredis 0.14 has no TLS support, so `rediss://` URLs and
 * a `tls` block are refused by init (and so by lint) with a clear error. */
#ifndef PB_REDIS_STREAMS_COMMON_H
#define PB_REDIS_STREAMS_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "patchbay/pb_conf.h"
#include "patchbay/pb_err.h"
#include "patchbay/pb_http.h"

#define RS_HOST_MAX 255
#define RS_ID_MAX 48 /* "<ms>-<seq>": two 20-digit numbers, a dash, a NUL */

struct rs_tls_conf {
    char *ca_file;
    char *cert_file;
    char *key_file;
};

/* Connection options as decoded; embedded in each plugin's context. */
struct rs_conn_conf {
    char *url;      /* redis://[user[:password]@]host[:port][/db] (secret: may hold a password) */
    char *user;     /* ACL user (overrides the URL's) */
    char *password; /* secret (overrides the URL's) */
    int64_t connect_timeout_ms;
    int64_t timeout_ms; /* for a command's answer */
    struct rs_tls_conf tls;
};

extern const struct pb_field rs_tls_fields[];

/* The rows of the connection options, for a plugin's field table: T is the
 * plugin's context type, M the rs_conn_conf member in it. */
/* clang-format off */
#define RS_CONN_FIELDS(T, M)                                                                       \
    {.name = "url", .type = PB_F_SECRET, .offset = offsetof(T, M.url),                             \
     .flags = PB_FIELD_REQUIRED | PB_FIELD_URL,                                                    \
     .doc = "redis://[user[:password]@]host[:port][/db]"},                                         \
    {.name = "user", .type = PB_F_STR, .offset = offsetof(T, M.user),                              \
     .doc = "ACL user name (Redis 6+); overrides the URL's"},                                      \
    {.name = "password", .type = PB_F_SECRET, .offset = offsetof(T, M.password),                   \
     .doc = "password (AUTH); overrides the URL's"},                                               \
    {.name = "connect_timeout", .type = PB_F_DURATION, .offset = offsetof(T, M.connect_timeout_ms),\
     .def = "5s", .doc = "TCP connect, AUTH and SELECT"},                                          \
    {.name = "timeout", .type = PB_F_DURATION, .offset = offsetof(T, M.timeout_ms),                \
     .def = "10s", .doc = "longest wait for the answer to a command"},                             \
    {.name = "tls", .type = PB_F_OBJECT, .offset = offsetof(T, M.tls), .sub = rs_tls_fields,       \
     .doc = "not available: this build's hiredis (0.14) has no TLS"}
/* clang-format on */

/* Where to connect, parsed from the options by rs_target_init. */
struct rs_target {
    char host[RS_HOST_MAX + 1]; /* name or address, without [] */
    int port;
    long db;
    char *user;     /* NULL: none (AUTH with the password only) */
    char *password; /* NULL: no AUTH */
};

/* Parse and check the connection options (no I/O; init calls it, so lint
 * reports a bad URL or a tls block). The error text never holds the URL. */
int rs_target_init(struct rs_target *t, const struct rs_conn_conf *c, struct pb_err *err);
void rs_target_cleanup(struct rs_target *t);

/* Resolve through the outbound guard, connect to the literal address it
 * returns, AUTH and SELECT. Blocks. NULL with err: PB_EDENIED (refused by
 * the guard, or the server refused the credentials), PB_ENET, PB_ENOMEM. */
redisContext *rs_connect(const struct rs_target *t, const struct rs_conn_conf *c,
                         const struct pb_allowlist *allow, struct pb_err *err);

/* Socket send/receive timeout of a connected context (ms > 0). */
int rs_set_timeout(redisContext *ctx, int64_t ms);

/* Why a command failed, as printable text in buf: the context's I/O error
 * when reply is NULL, else the reply's error text. Returns buf. */
const char *rs_error_text(const redisContext *ctx, const redisReply *reply, char *buf, size_t len);

/* True when reply is an error whose text starts with code ("NOGROUP"). */
bool rs_reply_is(const redisReply *reply, const char *code);

/* Check an entry id ("1712345678901-0", "0", "$" not included). */
bool rs_id_valid(const char *id);

#endif
