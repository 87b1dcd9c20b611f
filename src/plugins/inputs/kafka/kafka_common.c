/* kafka_common.c - the options, client configuration and outbound guard the
 * kafka input and output share (see kafka_common.h).
 *
 * Threads: kafka_conf_new, kafka_link_init and kafka_resolve_brokers run on
 * the plugin's own thread (init, start); kafka_connect_cb and the log
 * callback run on librdkafka's broker threads and only read the link, apart
 * from the refusal note, which is under the link's lock. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "kafka_common.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_time.h"

#define REFUSAL_LOG_EVERY_MS 10000

static const char *const sasl_mechanisms[] = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", NULL};

const struct pb_field kafka_sasl_fields[] = {
    {.name = "mechanism",
     .type = PB_F_ENUM,
     .offset = offsetof(struct kafka_sasl, mechanism),
     .choices = sasl_mechanisms,
     .def = "PLAIN"},
    {.name = "user",
     .type = PB_F_STR,
     .offset = offsetof(struct kafka_sasl, user),
     .flags = PB_FIELD_REQUIRED},
    {.name = "password",
     .type = PB_F_SECRET,
     .offset = offsetof(struct kafka_sasl, password),
     .flags = PB_FIELD_REQUIRED},
    {0},
};

const struct pb_field kafka_tls_fields[] = {
    {.name = "enabled",
     .type = PB_F_BOOL,
     .offset = offsetof(struct kafka_tls, enabled),
     .def = "false",
     .doc = "TLS with the system's CA certificates (on by itself when a file is given)"},
    {.name = "ca_file",
     .type = PB_F_STR,
     .offset = offsetof(struct kafka_tls, ca_file),
     .doc = "CA certificates (PEM) the brokers' certificates are checked against; default: "
            "the system's"},
    {.name = "cert_file",
     .type = PB_F_STR,
     .offset = offsetof(struct kafka_tls, cert_file),
     .doc = "client certificate (PEM), for mutual TLS"},
    {.name = "key_file",
     .type = PB_F_STR,
     .offset = offsetof(struct kafka_tls, key_file),
     .doc = "client private key (PEM)"},
    {.name = "key_password",
     .type = PB_F_SECRET,
     .offset = offsetof(struct kafka_tls, key_password),
     .doc = "passphrase of key_file"},
    {0},
};

/* Properties patchbay sets itself whatever `properties` says, and why. */
struct reserved {
    const char *name;
    const char *why;
};
static const struct reserved common_reserved[] = {
    {"bootstrap.servers", "set it with brokers"},
    {"metadata.broker.list", "set it with brokers"},
    {"client.id", "set it with client_id"},
    {"security.protocol", "set by the sasl and tls options"},
    {"sasl.mechanisms", "set it with sasl.mechanism"},
    {"sasl.mechanism", "set it with sasl.mechanism"},
    {"sasl.username", "set it with sasl.user"},
    {"ssl.ca.location", "set it with tls.ca_file"},
    {"ssl.certificate.location", "set it with tls.cert_file"},
    {"ssl.key.location", "set it with tls.key_file"},
    {"statistics.interval.ms", "patchbay reads the statistics for its connection state and lag"},
    {"log.queue", "patchbay logs librdkafka's messages itself"},
    {"enabled_events", "patchbay serves librdkafka's events itself"},
    {NULL, NULL},
};

int kafka_common_check(const struct kafka_common *k, struct pb_err *err)
{
    if (k->brokers.n == 0)
        return pb_err_set(err, PB_ECONFIG, "brokers needs at least one host:port");
    if (k->brokers.n > KAFKA_BOOTSTRAP_MAX)
        return pb_err_set(err, PB_ECONFIG, "brokers: at most %d", KAFKA_BOOTSTRAP_MAX);
    for (size_t i = 0; i < k->brokers.n; i++) {
        const char *b = k->brokers.items[i];
        const char *colon = strrchr(b, ':');
        const char *close = strchr(b, ']');
        size_t hl = colon && (!close || colon > close) ? (size_t)(colon - b) : strlen(b);
        long port = 9092;
        if (colon && (!close || colon > close)) {
            char *end = NULL;
            port = strtol(colon + 1, &end, 10);
            if (!colon[1] || *end || port < 1 || port > 65535)
                return pb_err_set(err, PB_ECONFIG,
                                  "broker \"%s\" is not host:port (a port of 1-65535)", b);
        }
        if (b[0] == '[' && (!close || close != b + hl - 1))
            return pb_err_set(err, PB_ECONFIG, "broker \"%s\": an IPv6 address goes in [ ]", b);
        if (hl == 0 || hl > KAFKA_HOST_MAX || strpbrk(b, " /,\t"))
            return pb_err_set(err, PB_ECONFIG, "broker \"%s\" is not host:port", b);
    }
    if (k->client_id && (!*k->client_id || strlen(k->client_id) > 200))
        return pb_err_set(err, PB_ECONFIG, "client_id must be 1-200 characters");
    if ((k->tls.cert_file != NULL) != (k->tls.key_file != NULL))
        return pb_err_set(err, PB_ECONFIG, "tls: cert_file and key_file go together");
    return 0;
}

bool kafka_tls_on(const struct kafka_common *k)
{
    return k->tls.enabled || k->tls.ca_file || k->tls.cert_file;
}

int kafka_conf_set(rd_kafka_conf_t *c, const char *name, const char *value, struct pb_err *err)
{
    char msg[512];
    if (rd_kafka_conf_set(c, name, value, msg, sizeof(msg)) != RD_KAFKA_CONF_OK)
        return pb_err_set(err, PB_ECONFIG, "kafka property %s: %s", name, msg);
    return 0;
}

static bool secret_name(const char *name)
{
    return strstr(name, "password") || strstr(name, "secret") || strcmp(name, "ssl.key.pem") == 0 ||
           strcmp(name, "sasl.oauthbearer.config") == 0;
}

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    const struct kafka_link *l = rd_kafka_opaque(rk);
    char safe[512];
    enum pb_log_level lv = level <= 4 ? PB_LOG_WARN : level <= 6 ? PB_LOG_INFO : PB_LOG_DEBUG;
    PB_LOG(lv, "kafka: librdkafka %s facility=%s message=\"%s\"", l ? l->what : "", fac,
           pb_log_value(buf, safe, sizeof(safe)));
}

rd_kafka_conf_t *kafka_conf_new(const struct kafka_common *k, const char *const *defaults,
                                const char *const *reserved, const char *bootstrap, void *opaque,
                                struct pb_err *err)
{
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    if (!c) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    for (size_t i = 0; defaults && defaults[i]; i += 2)
        if (kafka_conf_set(c, defaults[i], defaults[i + 1], err))
            goto fail;
    for (size_t i = 0; i < k->properties.n; i++) {
        const char *name = k->properties.keys[i];
        for (size_t j = 0; common_reserved[j].name; j++)
            if (strcmp(name, common_reserved[j].name) == 0) {
                pb_err_set(err, PB_ECONFIG, "kafka property %s is not taken from properties: %s",
                           name, common_reserved[j].why);
                goto fail;
            }
        for (size_t j = 0; reserved && reserved[j]; j += 2)
            if (strcmp(name, reserved[j]) == 0) {
                pb_err_set(err, PB_ECONFIG, "kafka property %s is not taken from properties: %s",
                           name, reserved[j + 1]);
                goto fail;
            }
        if (secret_name(name)) {
            pb_err_set(err, PB_ECONFIG,
                       "kafka property %s is a secret: use the sasl and tls options, which keep "
                       "it out of logs",
                       name);
            goto fail;
        }
        if (kafka_conf_set(c, name, k->properties.vals[i], err))
            goto fail;
    }
    bool tls = kafka_tls_on(k);
    const char *proto =
        k->sasl.user ? (tls ? "SASL_SSL" : "SASL_PLAINTEXT") : (tls ? "SSL" : "PLAINTEXT");
    if (kafka_conf_set(c, "security.protocol", proto, err))
        goto fail;
    if (k->sasl.user &&
        (kafka_conf_set(c, "sasl.mechanisms", sasl_mechanisms[k->sasl.mechanism], err) ||
         kafka_conf_set(c, "sasl.username", k->sasl.user, err)))
        goto fail;
    if (k->sasl.password) {
        char msg[512];
        if (rd_kafka_conf_set(c, "sasl.password", k->sasl.password, msg, sizeof(msg)) !=
            RD_KAFKA_CONF_OK) {
            pb_err_set(err, PB_ECONFIG, "kafka: sasl.password refused");
            goto fail;
        }
    }
    if ((k->tls.ca_file && kafka_conf_set(c, "ssl.ca.location", k->tls.ca_file, err)) ||
        (k->tls.cert_file &&
         kafka_conf_set(c, "ssl.certificate.location", k->tls.cert_file, err)) ||
        (k->tls.key_file && kafka_conf_set(c, "ssl.key.location", k->tls.key_file, err)))
        goto fail;
    if (k->tls.key_password) {
        char msg[512];
        if (rd_kafka_conf_set(c, "ssl.key.password", k->tls.key_password, msg, sizeof(msg)) !=
            RD_KAFKA_CONF_OK) {
            pb_err_set(err, PB_ECONFIG, "kafka: tls.key_password refused");
            goto fail;
        }
    }
    if (kafka_conf_set(c, "client.id", k->client_id ? k->client_id : "patchbay", err) ||
        kafka_conf_set(c, "statistics.interval.ms", "1000", err))
        goto fail;
    if (bootstrap && kafka_conf_set(c, "bootstrap.servers", bootstrap, err))
        goto fail;
    rd_kafka_conf_set_log_cb(c, log_cb);
    rd_kafka_conf_set_connect_cb(c, kafka_connect_cb);
    rd_kafka_conf_set_opaque(c, opaque);
    return c;
fail:
    rd_kafka_conf_destroy(c);
    return NULL;
}

/* ---- the outbound guard ---------------------------------------------------------------- */

int kafka_link_init(struct kafka_link *l, const struct pb_allowlist *allow, const char *what)
{
    l->allow = allow;
    snprintf(l->what, sizeof(l->what), "%s", what);
    if (!l->lock_ready) {
        if (pthread_mutex_init(&l->lock, NULL) != 0)
            return PB_ENOMEM;
        l->lock_ready = true;
    }
    return 0;
}

void kafka_link_cleanup(struct kafka_link *l)
{
    if (l->lock_ready)
        pthread_mutex_destroy(&l->lock);
    l->lock_ready = false;
}

/* host and port of "host:port" / "[v6]:port" (port 9092 when absent). */
static bool split_hostport(const char *s, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(s, ':');
    const char *close = strchr(s, ']');
    size_t hl;
    *port = 9092;
    if (s[0] == '[') {
        if (!close)
            return false;
        s++;
        hl = (size_t)(close - s);
        colon = close[1] == ':' ? close + 1 : NULL;
    } else {
        if (colon && strchr(s, ':') != colon)
            colon = NULL; /* a bare IPv6 address */
        hl = colon ? (size_t)(colon - s) : strlen(s);
    }
    if (colon)
        *port = atoi(colon + 1);
    if (hl == 0 || hl >= hostlen)
        return false;
    memcpy(host, s, hl);
    host[hl] = 0;
    return true;
}

int kafka_resolve_brokers(struct kafka_link *l, const struct pb_strlist *brokers, bool names,
                          char *out, size_t outlen, struct pb_err *err)
{
    size_t used = 0;
    l->nboot = 0;
    out[0] = 0;
    for (size_t i = 0; i < brokers->n && i < KAFKA_BOOTSTRAP_MAX; i++) {
        char host[KAFKA_HOST_MAX + 1], ip[64];
        int port;
        if (!split_hostport(brokers->items[i], host, sizeof(host), &port))
            return pb_err_set(err, PB_ECONFIG, "broker \"%s\" is not host:port", brokers->items[i]);
        int rc = pb_outbound_resolve(l->allow, host, port, ip, sizeof(ip), err);
        if (rc)
            return rc;
        const char *give = names ? host : ip;
        snprintf(l->boot[l->nboot].literal, sizeof(l->boot[0].literal), "%s", give);
        snprintf(l->boot[l->nboot].host, sizeof(l->boot[0].host), "%s", host);
        l->boot[l->nboot].port = port;
        l->nboot++;
        int n = snprintf(out + used, outlen - used, strchr(give, ':') ? "%s[%s]:%d" : "%s%s:%d",
                         used ? "," : "", give, port);
        if (n < 0 || (size_t)n >= outlen - used)
            return pb_err_set(err, PB_ECONFIG, "brokers: the list is too long");
        used += (size_t)n;
    }
    return 0;
}

bool kafka_link_refused(struct kafka_link *l, int64_t within_ms, char *buf, size_t len)
{
    bool got = false;
    if (!l->lock_ready)
        return false;
    pthread_mutex_lock(&l->lock);
    if (l->refused_at && pb_now_ms() - l->refused_at <= within_ms) {
        snprintf(buf, len, "%s", l->refused);
        got = true;
    }
    pthread_mutex_unlock(&l->lock);
    return got;
}

int kafka_connect_cb(int sockfd, const struct sockaddr *addr, int addrlen, const char *id,
                     void *opaque)
{
    struct kafka_link *l = opaque;
    char host[KAFKA_HOST_MAX + 1] = "", ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    const char *name = host;

    if (!id || !split_hostport(id, host, sizeof(host), &port))
        host[0] = 0;
    /* A bootstrap broker was handed over as the literal its name resolved to:
     * the allow list is checked against the name. */
    for (size_t i = 0; i < l->nboot; i++)
        if (port == l->boot[i].port && strcmp(host, l->boot[i].literal) == 0)
            name = l->boot[i].host;
    if (pb_outbound_check(l->allow, name, addr, (size_t)addrlen) != 0) {
        const char *range = pb_addr_internal_range(addr, (size_t)addrlen);
        if (addr->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)addr)->sin_addr, ip, sizeof(ip));
        else if (addr->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)addr)->sin6_addr, ip, sizeof(ip));
        char why[256];
        snprintf(why, sizeof(why),
                 "blocked: %s (broker %s) is %s (add it to outbound.allow to permit)", ip,
                 id ? id : "?", range ? range : "not allowed");
        pthread_mutex_lock(&l->lock);
        snprintf(l->refused, sizeof(l->refused), "%s", why);
        l->refused_at = pb_now_ms();
        pthread_mutex_unlock(&l->lock);
        int64_t now = pb_mono_us() / 1000, last = atomic_load(&l->warned_at);
        if ((last == 0 || now - last >= REFUSAL_LOG_EVERY_MS) &&
            atomic_compare_exchange_strong(&l->warned_at, &last, now)) {
            char safe[300];
            PB_WARN("kafka: connection refused by the outbound guard %s error=\"%s\"", l->what,
                    pb_log_value(why, safe, sizeof(safe)));
        }
        return EACCES;
    }
    if (connect(sockfd, addr, (socklen_t)addrlen) == -1 && errno != EINPROGRESS)
        return errno;
    return 0;
}

/* ---- the rest ------------------------------------------------------------------------------ */

void kafka_stats_brokers(json_t *stats, int *up, int *total)
{
    const char *name;
    json_t *b;
    *up = *total = 0;
    json_object_foreach(json_object_get(stats, "brokers"), name, b)
    {
        const char *state = json_string_value(json_object_get(b, "state"));
        (*total)++;
        if (state && strcmp(state, "UP") == 0)
            (*up)++;
    }
}

bool kafka_topic_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > KAFKA_TOPIC_MAX || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '.' || *s == '_' || *s == '-'))
            return false;
    return true;
}
