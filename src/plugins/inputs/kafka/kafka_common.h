/* kafka_common.h - what the kafka input and output share: the options both
 * take (brokers, SASL, TLS, librdkafka properties), the client
 * configuration built from them, and the outbound guard on every connection
 * librdkafka makes.
 *
 * librdkafka resolves and connects on threads of its own, to the bootstrap
 * brokers and then to every broker the cluster's metadata advertises. The
 * bootstrap hosts are resolved here with pb_outbound_resolve and handed over
 * as literals; every connection (bootstrap or advertised) then passes
 * kafka_connect_cb, which checks the address actually connected to against
 * the allow list before connecting. */
#ifndef PB_KAFKA_COMMON_H
#define PB_KAFKA_COMMON_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>

#include "patchbay/pb_conf.h"
#include "patchbay/pb_err.h"
#include "patchbay/pb_http.h"

#define KAFKA_BOOTSTRAP_MAX 32
#define KAFKA_HOST_MAX 253
#define KAFKA_TOPIC_MAX 249

struct kafka_tls {
    bool enabled; /* also on when a file is given */
    char *ca_file;
    char *cert_file;
    char *key_file;
    char *key_password; /* secret */
};

struct kafka_sasl {
    int mechanism; /* index into kafka_sasl_mechanisms */
    char *user;
    char *password; /* secret */
};

/* Options both plugins take; embedded in each plugin's context as `common`. */
struct kafka_common {
    struct pb_strlist brokers;
    struct kafka_sasl sasl;
    struct kafka_tls tls;
    struct pb_strmap properties;
    char *client_id;
};

extern const struct pb_field kafka_sasl_fields[];
extern const struct pb_field kafka_tls_fields[];

/* The common rows of a plugin's field table; T is the context type. */
#define KAFKA_COMMON_FIELDS(T)                                                                     \
    {.name = "brokers",                                                                            \
     .type = PB_F_STRLIST,                                                                         \
     .offset = offsetof(T, common.brokers),                                                        \
     .flags = PB_FIELD_REQUIRED,                                                                   \
     .doc = "bootstrap brokers, host:port"},                                                       \
        {.name = "sasl",                                                                           \
         .type = PB_F_OBJECT,                                                                      \
         .offset = offsetof(T, common.sasl),                                                       \
         .sub = kafka_sasl_fields,                                                                 \
         .doc = "SASL credentials: mechanism, user, password"},                                    \
        {.name = "tls",                                                                            \
         .type = PB_F_OBJECT,                                                                      \
         .offset = offsetof(T, common.tls),                                                        \
         .sub = kafka_tls_fields,                                                                  \
         .doc = "TLS: ca_file, cert_file, key_file, key_password"},                                \
        {.name = "properties",                                                                     \
         .type = PB_F_STRMAP,                                                                      \
         .offset = offsetof(T, common.properties),                                                 \
         .doc = "further librdkafka properties (name: value)"},                                    \
    {                                                                                              \
        .name = "client_id", .type = PB_F_STR, .offset = offsetof(T, common.client_id),            \
        .def = "patchbay", .doc = "client.id the brokers see"                                      \
    }

/* The outbound guard and the log identity of one client. The first member
 * of each plugin's context, so librdkafka's opaque (the context) is one too.
 * Written before the client is created; read by librdkafka's threads. */
struct kafka_link {
    const struct pb_allowlist *allow;
    char what[192]; /* "pipeline=p input=kafka", for logs */
    size_t nboot;
    struct {
        char literal[KAFKA_HOST_MAX + 1]; /* what librdkafka was given */
        int port;
        char host[KAFKA_HOST_MAX + 1]; /* the name it came from */
    } boot[KAFKA_BOOTSTRAP_MAX];
    /* The last connection the guard refused (any thread). */
    pthread_mutex_t lock;
    bool lock_ready;
    char refused[256];
    int64_t refused_at;        /* unix ms; 0: none */
    _Atomic int64_t warned_at; /* monotonic ms of the last refusal logged */
};

/* Check the common options (init: no I/O). */
int kafka_common_check(const struct kafka_common *k, struct pb_err *err);
/* TLS is on (enabled, or a CA or client certificate given). */
bool kafka_tls_on(const struct kafka_common *k);

/* A configuration with the common options applied: the plugin's defaults
 * (name, value pairs, NULL-terminated), then the user's properties (refusing
 * the names in reserved, name and reason pairs, and anything secret), then
 * SASL, TLS, client.id, statistics, the log and connect callbacks and
 * opaque. bootstrap: the resolved list, or NULL (init: validation only). */
rd_kafka_conf_t *kafka_conf_new(const struct kafka_common *k, const char *const *defaults,
                                const char *const *reserved, const char *bootstrap, void *opaque,
                                struct pb_err *err);
/* Set one property; a refusal becomes a PB_ECONFIG error naming it. */
int kafka_conf_set(rd_kafka_conf_t *c, const char *name, const char *value, struct pb_err *err);

/* Set up link (allow list and log identity); once, in init. */
int kafka_link_init(struct kafka_link *l, const struct pb_allowlist *allow, const char *what);
void kafka_link_cleanup(struct kafka_link *l);
/* Resolve every broker through the guard (blocks on DNS) into a bootstrap
 * list of the literal addresses, remembering which name each came from.
 * names: list the names instead (TLS checks the broker's certificate
 * against the name; kafka_connect_cb still checks every address connected
 * to). PB_EDENIED when the guard refuses one, PB_ENET when one does not
 * resolve. */
int kafka_resolve_brokers(struct kafka_link *l, const struct pb_strlist *brokers, bool names,
                          char *out, size_t outlen, struct pb_err *err);
/* The last refusal within the last `within_ms`, copied into buf; false if none. */
bool kafka_link_refused(struct kafka_link *l, int64_t within_ms, char *buf, size_t len);

/* librdkafka's connect callback: the guard, then connect(). */
int kafka_connect_cb(int sockfd, const struct sockaddr *addr, int addrlen, const char *id,
                     void *opaque);

/* From librdkafka's statistics (parsed): brokers in state UP, and all. */
void kafka_stats_brokers(json_t *stats, int *up, int *total);

/* A topic name Kafka accepts: 1-249 of [A-Za-z0-9._-], not "." or "..". */
bool kafka_topic_name_ok(const char *s);

#endif
