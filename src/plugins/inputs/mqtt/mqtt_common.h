/* mqtt_common.h - what the `mqtt` input and output share: connection
 * options (URL, credentials, protocol version, keep-alive, TLS), opening a
 * connection through the outbound guard, non-blocking reads and writes on
 * it, a packet-id table and the reconnect backoff.
 *
 * Thread model: none of its own. A connection belongs to one thread at a
 * time (the input's loop thread, the output's own loop thread).
 * pb_mqtt_conn_open blocks (DNS, TCP, TLS, CONNECT/CONNACK, within the
 * connect timeout): call it on a thread that may block. */
#ifndef PB_MQTT_COMMON_H
#define PB_MQTT_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "mqtt_codec.h"
#include "patchbay/pb_conf.h"
#include "patchbay/pb_err.h"
#include "patchbay/pb_http.h"

struct pb_mqtt_tls {
    char *ca_file;
    char *cert_file;
    char *key_file;
};

/* Options of both plugins (decoded from their field tables) and what
 * pb_mqtt_conf_prepare derives from them. */
struct pb_mqtt_conf {
    char *url;
    char *user;
    char *password; /* secret */
    int protocol;   /* index into pb_mqtt_protocols: 0 "3.1.1", 1 "5" */
    int64_t keepalive_ms;
    int64_t connect_timeout_ms;
    struct pb_mqtt_tls tls;
    /* derived */
    char host[256];
    int port;
    bool use_tls;
    int version;     /* PB_MQTT_V311 or PB_MQTT_V5 */
    char shown[300]; /* mqtt[s]://host:port, for logs and errors */
};

extern const char *const pb_mqtt_protocols[];
extern const struct pb_field pb_mqtt_tls_fields[];

/* Field table rows for struct pb_mqtt_conf at member M of struct type T. */
#define PB_MQTT_CONF_FIELDS(T, M)                                                                  \
    {.name = "url",                                                                                \
     .type = PB_F_STR,                                                                             \
     .offset = offsetof(T, M.url),                                                                 \
     .flags = PB_FIELD_REQUIRED | PB_FIELD_URL,                                                    \
     .doc = "mqtt://host:port (mqtts:// for TLS); credentials go in user and password"},           \
        {.name = "user", .type = PB_F_STR, .offset = offsetof(T, M.user), .doc = "user name"},     \
        {.name = "password",                                                                       \
         .type = PB_F_SECRET,                                                                      \
         .offset = offsetof(T, M.password),                                                        \
         .doc = "password (secret)"},                                                              \
        {.name = "protocol",                                                                       \
         .type = PB_F_ENUM,                                                                        \
         .offset = offsetof(T, M.protocol),                                                        \
         .choices = pb_mqtt_protocols,                                                             \
         .def = "3.1.1",                                                                           \
         .doc = "MQTT version: 3.1.1 or 5"},                                                       \
        {.name = "keepalive",                                                                      \
         .type = PB_F_DURATION,                                                                    \
         .offset = offsetof(T, M.keepalive_ms),                                                    \
         .def = "30s",                                                                             \
         .doc = "MQTT keep-alive (whole seconds, 0 disables); a broker silent for longer "         \
                "is given up"},                                                                    \
        {.name = "connect_timeout",                                                                \
         .type = PB_F_DURATION,                                                                    \
         .offset = offsetof(T, M.connect_timeout_ms),                                              \
         .def = "10s",                                                                             \
         .doc = "DNS, TCP, TLS and the MQTT handshake"},                                           \
    {                                                                                              \
        .name = "tls", .type = PB_F_OBJECT, .offset = offsetof(T, M.tls),                          \
        .sub = pb_mqtt_tls_fields, .doc = "ca_file, cert_file, key_file (mqtts:// URLs)"           \
    }

/* Validate the options and split the URL; no I/O. */
int pb_mqtt_conf_prepare(struct pb_mqtt_conf *c, struct pb_err *err);

/* The TLS context of an mqtts:// connection: peer verification on (the CA
 * file, or the system's CAs), the client certificate when given. NULL with
 * err. Reads files: call it in start, not init. */
SSL_CTX *pb_mqtt_tls_ctx(const struct pb_mqtt_conf *c, struct pb_err *err);

/* ---- a connection ------------------------------------------------------------------- */

struct pb_mqtt_conn {
    int fd; /* -1 when closed */
    SSL *ssl;
    uint8_t *in; /* bytes read and not yet consumed */
    size_t in_len, in_cap;
    struct pb_mqtt_buf out; /* bytes to write, from out_off */
    size_t out_off;
    bool read_wants_write; /* TLS: a read needs the socket writable */
    bool write_wants_read; /* TLS: a write needs the socket readable */
    char err[256];         /* why the last call failed */
};

void pb_mqtt_conn_init(struct pb_mqtt_conn *c);
/* Resolve the host through the outbound guard (al), connect to the
 * address it allowed, TLS when ctx is set (SNI and certificate checked
 * against the URL's host), send CONNECT and wait for the CONNACK, all
 * within the connect timeout. 0 with *ack (bytes that came after the
 * CONNACK stay in c->in); otherwise a negative code with err (PB_EDENIED:
 * refused by the guard or by the broker's CONNACK) and c closed. Blocks. */
int pb_mqtt_conn_open(struct pb_mqtt_conn *c, const struct pb_mqtt_conf *conf, SSL_CTX *ctx,
                      const struct pb_allowlist *al, const struct pb_mqtt_connect *cp,
                      struct pb_mqtt_connack *ack, struct pb_err *err);
/* Read what the socket has (up to max buffered bytes): > 0 bytes read, 0
 * nothing now, PB_ENET when the connection is gone (c->err says why). */
long pb_mqtt_conn_read(struct pb_mqtt_conn *c, size_t max);
/* TLS may hold decrypted bytes the socket no longer signals. */
bool pb_mqtt_conn_read_pending(const struct pb_mqtt_conn *c);
/* Drop n consumed bytes from the front of c->in. */
void pb_mqtt_conn_consume(struct pb_mqtt_conn *c, size_t n);
/* Write what c->out holds: 0 all written, 1 some left (wait for
 * writable), PB_ENET when the connection is gone. */
int pb_mqtt_conn_flush(struct pb_mqtt_conn *c);
/* The same, waiting up to timeout_ms for the socket (after the loop's
 * watch is gone). */
int pb_mqtt_conn_flush_wait(struct pb_mqtt_conn *c, int64_t timeout_ms);
/* Block until the socket is ready for what the connection waits for (as
 * pb_mqtt_conn_events says), or deadline_ms (monotonic) passes:
 * PB_ETIMEOUT. */
int pb_mqtt_conn_wait(const struct pb_mqtt_conn *c, bool reading, int64_t deadline_ms);
/* PB_LOOP_READ / PB_LOOP_WRITE this connection waits for now. */
unsigned pb_mqtt_conn_events(const struct pb_mqtt_conn *c, bool reading);
/* Close the socket and free the buffers. Accepts a closed connection. */
void pb_mqtt_conn_close(struct pb_mqtt_conn *c);

/* ---- packet ids in use -------------------------------------------------------------- */

/* One packet id's entry; the fields after id are the user's. */
struct pb_mqtt_slot {
    uint16_t id;
    bool used;
    uint8_t state;
    uint32_t gen;
    uint64_t tag;
    void *ptr;
};
/* An open-addressing table of slots by packet id. */
struct pb_mqtt_idmap {
    struct pb_mqtt_slot *s;
    size_t cap, n;
};
struct pb_mqtt_slot *pb_mqtt_idmap_get(struct pb_mqtt_idmap *m, uint16_t id);
/* The slot of id, added (zeroed, used) when absent; NULL when out of memory. */
struct pb_mqtt_slot *pb_mqtt_idmap_put(struct pb_mqtt_idmap *m, uint16_t id);
/* Remove a slot pb_mqtt_idmap_get/put returned. Other slot pointers are
 * invalid afterwards. */
void pb_mqtt_idmap_del(struct pb_mqtt_idmap *m, struct pb_mqtt_slot *s);
void pb_mqtt_idmap_free(struct pb_mqtt_idmap *m);

/* ---- reconnecting --------------------------------------------------------------------- */

/* The next ceiling after prev ms (0: first): 250 ms doubling to 30 s. */
int64_t pb_mqtt_backoff_next(int64_t prev);
/* A wait between half the ceiling and the ceiling. */
int64_t pb_mqtt_backoff_jitter(int64_t ceiling);

#endif
