/* sftp_curl.h - SFTP through libcurl for the `sftp` input and output: the
 * connection options they share, and list / stat / download / upload /
 * rename / remove on one connection that is kept between calls. Also the
 * outbound guard for any libcurl handle that is not the shared HTTP client
 * (the `smtp` output uses it too).
 *
 * Host keys are always checked: against known_hosts (OpenSSH format, a
 * "[host]:port" entry for another port) or a pinned SHA-256 of the key; a
 * key that is missing is refused unless accept_new_host_keys is set (then
 * it is added to known_hosts), a key that differs is refused always.
 *
 * Thread model: a struct sftp is used by one thread at a time; its calls
 * block (network), so they run on threads that may block. */
#ifndef PB_SFTP_CURL_H
#define PB_SFTP_CURL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>

#include "patchbay/pb_conf.h"
#include "patchbay/pb_err.h"
#include "patchbay/pb_http.h"

/* ---- the outbound guard for a libcurl handle ---------------------------------------- */

/* What the guard needs while a transfer runs; owned by the caller, kept
 * alive as long as the handle may connect. */
struct curl_guard {
    const struct pb_allowlist *allow;
    char host[256]; /* the URL's host, for host-name entries */
    bool blocked;
    char why[200];
};
/* Install the guard on e: every address libcurl is about to connect to is
 * checked (after DNS, so a name resolving to an internal address is
 * refused unless allowed), proxies from the environment are ignored, and
 * only protocols (a CURLOPT_PROTOCOLS_STR list) are spoken. 0 or PB_EINVAL. */
int curl_guard_install(CURL *e, struct curl_guard *g, const char *host, const char *protocols);

/* ---- connection options ----------------------------------------------------------------- */

struct sftp_conf {
    char *url; /* sftp://user@host:port/dir */
    char *password;
    char *private_key; /* a file, or the key itself ("-----BEGIN ...") */
    char *passphrase;
    char *known_hosts;
    bool accept_new_host_keys;
    char *host_key_sha256;
    int64_t connect_timeout_ms;
    int64_t timeout_ms; /* the longest time without progress */
};

/* The field rows for a struct sftp_conf at member m of type t. */
#define SFTP_CONN_FIELDS(t, m)                                                                     \
    {.name = "url",                                                                                \
     .type = PB_F_SECRET,                                                                          \
     .offset = offsetof(t, m.url),                                                                 \
     .flags = PB_FIELD_REQUIRED | PB_FIELD_URL,                                                    \
     .doc = "sftp://user@host:port/folder (secret: it may hold a password)"},                      \
        {.name = "password",                                                                       \
         .type = PB_F_SECRET,                                                                      \
         .offset = offsetof(t, m.password),                                                        \
         .doc = "password authentication"},                                                        \
        {.name = "private_key",                                                                    \
         .type = PB_F_SECRET,                                                                      \
         .offset = offsetof(t, m.private_key),                                                     \
         .doc = "a private key file, or the key itself (PEM / OpenSSH)"},                          \
        {.name = "passphrase",                                                                     \
         .type = PB_F_SECRET,                                                                      \
         .offset = offsetof(t, m.passphrase),                                                      \
         .doc = "the private key's passphrase"},                                                   \
        {.name = "known_hosts",                                                                    \
         .type = PB_F_STR,                                                                         \
         .offset = offsetof(t, m.known_hosts),                                                     \
         .doc = "OpenSSH known_hosts file the server's key is checked against"},                   \
        {.name = "accept_new_host_keys",                                                           \
         .type = PB_F_BOOL,                                                                        \
         .offset = offsetof(t, m.accept_new_host_keys),                                            \
         .def = "false",                                                                           \
         .doc = "trust a host key not in known_hosts on first use (and add it)"},                  \
        {.name = "host_key_sha256",                                                                \
         .type = PB_F_STR,                                                                         \
         .offset = offsetof(t, m.host_key_sha256),                                                 \
         .doc = "the server key's SHA-256 fingerprint (SHA256:base64), instead of known_hosts"},   \
        {.name = "connect_timeout",                                                                \
         .type = PB_F_DURATION,                                                                    \
         .offset = offsetof(t, m.connect_timeout_ms),                                              \
         .def = "10s"},                                                                            \
    {                                                                                              \
        .name = "timeout", .type = PB_F_DURATION, .offset = offsetof(t, m.timeout_ms),             \
        .def = "60s", .doc = "give up a transfer that makes no progress for this long"             \
    }

/* Validate (init: no I/O). */
int sftp_conf_check(const struct sftp_conf *c, struct pb_err *err);

/* ---- a connection ---------------------------------------------------------------------------- */

struct sftp;
/* Parse and prepare (an inline private key is written to a private file
 * here). NULL with err. */
struct sftp *sftp_create(const struct sftp_conf *c, const struct pb_allowlist *allow,
                         struct pb_err *err);
void sftp_destroy(struct sftp *s);
/* A flag (owned by the caller) that, once set, makes a call under way give
 * up within about a second (PB_ESHUTDOWN). */
void sftp_set_abort(struct sftp *s, const _Atomic bool *flag);
/* The URL's folder ("/data/in/", "/~/in/"), and the URL without secrets
 * for logs ("sftp://user@host:22/data/in/"). */
const char *sftp_dir(const struct sftp *s);
const char *sftp_display(const struct sftp *s);
/* A path under the URL's folder for rel, or rel itself when absolute. */
int sftp_path(const struct sftp *s, const char *rel, char *out, size_t len);

/* Every call: 0, or PB_ENOTFOUND (no such remote file), PB_EDENIED (host
 * key, login, outbound guard: needs a person), PB_ENET (connection trouble:
 * try again later), PB_EIO (the server refused the operation); why says
 * what happened. */
int sftp_list(struct sftp *s, const char *dir, int (*fn)(void *arg, const char *name), void *arg,
              char *why, size_t whylen);
/* A regular file's size and modification time (unix s). */
int sftp_stat(struct sftp *s, const char *path, int64_t *size, int64_t *mtime, char *why,
              size_t whylen);
/* Download path into fd, at most max_speed bytes/s (0: no limit). */
int sftp_get(struct sftp *s, const char *path, int fd, uint64_t max_speed, char *why,
             size_t whylen);
/* Upload data to tmp (folders made), then rename it to path. */
int sftp_put(struct sftp *s, const char *tmp, const char *path, const void *data, size_t len,
             char *why, size_t whylen);
int sftp_rename(struct sftp *s, const char *from, const char *to, char *why, size_t whylen);
int sftp_remove(struct sftp *s, const char *path, char *why, size_t whylen);
/* Make a folder (and its parents); one that exists is fine. */
int sftp_mkdir(struct sftp *s, const char *dir, char *why, size_t whylen);

#endif
