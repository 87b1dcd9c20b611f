/* amqp_common.h - what the `amqp` input and output share: connection
 * options (URL, credentials, TLS, heartbeat, timeouts), connecting through
 * the outbound guard, error texts, and AMQP field tables to and from JSON.
 *
 * Thread model: none of its own. A connection (librabbitmq's state) is not
 * thread-safe: each plugin uses one connection on one thread at a time (the
 * input's loop thread, the output's worker thread). pb_amqp_open blocks
 * (DNS, TCP, TLS, the AMQP handshake): call it on a thread that may block. */
#ifndef PB_AMQP_COMMON_H
#define PB_AMQP_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <amqp.h>
#include <jansson.h>

#include "patchbay/pb_conf.h"
#include "patchbay/pb_err.h"
#include "patchbay/pb_http.h"

#define PB_AMQP_CHANNEL 1

struct pb_amqp_tls {
    char *ca_file;
    char *cert_file;
    char *key_file;
    bool verify; /* the broker's certificate and name */
};

/* Options of both plugins (decoded from their field tables), and what
 * pb_amqp_conf_prepare derives from them. */
struct pb_amqp_conf {
    char *url;      /* secret: it may carry the password */
    char *user;     /* overrides the URL's */
    char *password; /* secret; overrides the URL's */
    int64_t heartbeat_ms;
    int64_t connect_timeout_ms;
    struct pb_amqp_tls tls;
    /* derived (pb_amqp_conf_prepare); freed by pb_amqp_conf_cleanup */
    char *host;
    int port;
    char *vhost;
    char *login;  /* user name used */
    char *secret; /* password used */
    bool ssl;
    char shown[512]; /* the URL with its password as *** (for logs and errors) */
};

/* Field table rows for struct pb_amqp_conf at member `m` of struct type T. */
extern const struct pb_field pb_amqp_tls_fields[];
#define PB_AMQP_CONF_FIELDS(T, m)                                                                  \
    {.name = "url",                                                                                \
     .type = PB_F_SECRET,                                                                          \
     .offset = offsetof(T, m.url),                                                                 \
     .flags = PB_FIELD_REQUIRED | PB_FIELD_URL,                                                    \
     .doc = "amqp://user:password@host:port/vhost (amqps:// for TLS)"},                            \
        {.name = "user",                                                                           \
         .type = PB_F_STR,                                                                         \
         .offset = offsetof(T, m.user),                                                            \
         .doc = "user name (instead of the URL's)"},                                               \
        {.name = "password",                                                                       \
         .type = PB_F_SECRET,                                                                      \
         .offset = offsetof(T, m.password),                                                        \
         .doc = "password (instead of the URL's)"},                                                \
        {.name = "heartbeat",                                                                      \
         .type = PB_F_DURATION,                                                                    \
         .offset = offsetof(T, m.heartbeat_ms),                                                    \
         .def = "30s",                                                                             \
         .doc = "AMQP heartbeat (0 disables); a silent broker is given up after two"},             \
        {.name = "connect_timeout",                                                                \
         .type = PB_F_DURATION,                                                                    \
         .offset = offsetof(T, m.connect_timeout_ms),                                              \
         .def = "10s",                                                                             \
         .doc = "TCP, TLS and AMQP handshake, and each protocol request"},                         \
    {                                                                                              \
        .name = "tls", .type = PB_F_OBJECT, .offset = offsetof(T, m.tls),                          \
        .sub = pb_amqp_tls_fields, .doc = "ca_file, cert_file, key_file, verify (amqps:// URLs)"   \
    }

/* Validate and split the URL; no I/O. */
int pb_amqp_conf_prepare(struct pb_amqp_conf *c, struct pb_err *err);
void pb_amqp_conf_cleanup(struct pb_amqp_conf *c);

/* Connect: resolve the host through the outbound guard (al), open TCP (and
 * TLS) to the address it allowed, log in, open channel PB_AMQP_CHANNEL.
 * name is shown by the broker as the connection's name. 0 and *out, or a
 * negative code with err (PB_EDENIED: refused by the guard). Blocks. */
int pb_amqp_open(const struct pb_amqp_conf *c, const struct pb_allowlist *al, const char *name,
                 amqp_connection_state_t *out, struct pb_err *err);
/* Close (politely when graceful, waiting up to 2 s for each answer) and free.
 * Accepts NULL. */
void pb_amqp_close(amqp_connection_state_t conn, bool graceful);

/* The text of a reply that is not AMQP_RESPONSE_NORMAL ("NOT_FOUND - no
 * queue 'q' in vhost '/'", "connection closed"...). Returns buf. */
const char *pb_amqp_reply_text(amqp_rpc_reply_t r, char *buf, size_t len);
/* The text of a channel.close or connection.close method, or NULL for any
 * other method. */
const char *pb_amqp_close_text(const amqp_method_t *m, char *buf, size_t len);
/* Answer a channel.close or connection.close the broker sent. */
void pb_amqp_close_ok(amqp_connection_state_t conn, const amqp_frame_t *f);

/* AMQP bytes as a JSON value: a string when they are UTF-8, else
 * {"base64": "..."}. NULL on ENOMEM. */
json_t *pb_amqp_bytes_json(amqp_bytes_t b);
/* An AMQP field table as a JSON object (nested tables and arrays too,
 * integers beyond 2^53 as strings, decimals as strings). NULL on ENOMEM. */
json_t *pb_amqp_table_json(const amqp_table_t *t);

/* Fill an AMQP table from a string map: a value that is a whole number
 * becomes a long, true/false a boolean, anything else a string. Entries are
 * allocated in pool. 0 or PB_ENOMEM. */
int pb_amqp_table_from_map(const struct pb_strmap *m, amqp_pool_t *pool, amqp_table_t *out);

/* Copy src into dst (len bytes), cut if it must be; returns dst. */
char *pb_amqp_copy(char *dst, size_t len, const char *src);

/* Backoff: the next wait after `prev` ms (0: first), doubling from 500 ms to
 * 30 s, with full jitter applied by the caller's pick. */
int64_t pb_amqp_backoff_next(int64_t prev);
int64_t pb_amqp_backoff_jitter(int64_t ceiling);

#endif
