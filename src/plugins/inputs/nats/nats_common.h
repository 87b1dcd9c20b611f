/* nats_common.h - what the `nats` input and output share: the connection
 * options (url, credentials, tls), their validation, and a connection opened
 * through the outbound guard.
 *
 * Threads: nats_conn_open and nats_conn_close block (DNS, TCP, TLS, the
 * server's handshake) and run on a thread that may block (the input's own
 * loop or fetcher, the output's worker). The state callback runs on the
 * library's callback thread; it must not block and must not call back into
 * the connection. */
#ifndef PB_NATS_COMMON_H
#define PB_NATS_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nats/nats.h>

#include "patchbay/pb_conf.h"
#include "patchbay/pb_err.h"
#include "patchbay/pb_http.h"

#define NATS_MAX_URLS 16
#define NATS_HOST_MAX 256

struct nats_tls_conf {
    char *ca_file;
    char *cert_file;
    char *key_file;
    char *server_name; /* checked against the certificate instead of the url's host */
};

/* Decoded options (read-only once init has run). */
struct nats_conn_conf {
    char *url; /* one or several, comma-separated: nats://host:port, tls://host:port */
    char *user;
    char *password; /* secret */
    char *token;    /* secret */
    char *credentials_file;
    struct nats_tls_conf tls;
    int64_t connect_timeout_ms;
    int64_t ping_interval_ms;
    int64_t reconnect_attempts; /* the library's own, to the same addresses */
    /* Filled by nats_conf_check: */
    size_t nurls;
    bool secure; /* a tls:// url or a tls block */
    struct nats_url {
        char host[NATS_HOST_MAX];
        int port;
        bool tls;
    } urls[NATS_MAX_URLS];
};

extern const struct pb_field nats_tls_fields[];

/* The connection's options at the top of a plugin's block; T is the
 * plugin's context type, M the member holding a struct nats_conn_conf. */
// clang-format off
#define NATS_CONN_FIELDS(T, M)                                                                     \
    {.name = "url", .type = PB_F_STR, .offset = offsetof(T, M.url),                                \
     .flags = PB_FIELD_REQUIRED | PB_FIELD_URL,                                                    \
     .doc = "nats://host:port or tls://host:port; several comma-separated for a cluster"},         \
    {.name = "user", .type = PB_F_STR, .offset = offsetof(T, M.user),                              \
     .doc = "user name (with password)"},                                                          \
    {.name = "password", .type = PB_F_SECRET, .offset = offsetof(T, M.password),                   \
     .doc = "password (secret)"},                                                                  \
    {.name = "token", .type = PB_F_SECRET, .offset = offsetof(T, M.token),                         \
     .doc = "authentication token (secret)"},                                                      \
    {.name = "credentials_file", .type = PB_F_STR, .offset = offsetof(T, M.credentials_file),      \
     .doc = "a .creds file (user JWT and NKey seed)"},                                             \
    {.name = "tls", .type = PB_F_OBJECT, .offset = offsetof(T, M.tls), .sub = nats_tls_fields,     \
     .doc = "ca_file, cert_file, key_file, server_name"},                                          \
    {.name = "connect_timeout", .type = PB_F_DURATION,                                             \
     .offset = offsetof(T, M.connect_timeout_ms), .def = "5s"},                                    \
    {.name = "ping_interval", .type = PB_F_DURATION, .offset = offsetof(T, M.ping_interval_ms),    \
     .def = "10s", .doc = "a connection silent for two of these is taken as lost"},                \
    {.name = "reconnect_attempts", .type = PB_F_INT, .offset = offsetof(T, M.reconnect_attempts),  \
     .def = "10", .min = 0, .max = 1000000,                                                        \
     .doc = "reconnects to the same addresses before they are resolved again"}
// clang-format on

/* init: parse and check the url list and the credentials. No I/O. */
int nats_conf_check(struct nats_conn_conf *c, struct pb_err *err);

/* What happened to a connection (the library's callback thread). */
enum nats_event {
    NATS_EV_DISCONNECTED = 0, /* the library reconnects on its own */
    NATS_EV_RECONNECTED,
    NATS_EV_CLOSED, /* for good: open another */
};
typedef void (*nats_event_cb)(void *arg, enum nats_event ev, const char *detail);

struct nats_conn;

/* Resolve every url host through the outbound guard, then connect to the
 * literal addresses (the TLS certificate is still checked against the
 * host name). The library reconnects to those addresses on its own
 * (reconnect_attempts), ignores the servers the cluster advertises (they
 * have not been through the guard) and reports what happens to cb until
 * nats_conn_close. NULL with err on failure (PB_EDENIED: refused by the
 * guard). name: the client name the server shows. */
struct nats_conn *nats_conn_open(const struct nats_conn_conf *c, const struct pb_allowlist *allow,
                                 const char *name, nats_event_cb cb, void *arg, struct pb_err *err);
natsConnection *nats_conn_nc(struct nats_conn *c);
/* Send what is buffered (acks) for up to flush_ms, then close and free;
 * cb is not called any more once this starts. Accepts NULL. */
void nats_conn_close(struct nats_conn *c, int64_t flush_ms);

/* Text for a failed library call: the library's own text of what went
 * wrong on this thread, or that of the status. Never holds a secret. */
const char *nats_status_text(natsStatus s, char *buf, size_t len);

/* A subject a message can be published to: tokens of visible characters
 * other than '.', no empty token, no wildcard. */
bool nats_subject_ok(const char *s, bool wildcards);
/* A header name and value NATS can carry. */
bool nats_header_name_ok(const char *s);
bool nats_header_value_ok(const char *s);

#endif
