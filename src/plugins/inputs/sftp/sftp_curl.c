/* sftp_curl.c - SFTP over libcurl (its libssh2 backend) for the sftp input
 * and output, and the outbound guard for libcurl handles: see sftp_curl.h.
 *
 * One easy handle per struct sftp, reset before each call: libcurl keeps
 * the SSH connection in the handle's cache, so a poll, a download and the
 * rename after it share one connection and one host-key check. Paths in
 * URLs are percent-encoded; paths in commands (rename, rm, mkdir) are
 * quoted the way libcurl's command parser reads them. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "patchbay/pb_log.h"
#include "sftp_curl.h"

#define LIST_MAX (16u << 20) /* bytes of a folder listing */

/* ---- the guard ------------------------------------------------------------------------- */

static curl_socket_t guard_open_cb(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
    struct curl_guard *g = clientp;
    if (purpose != CURLSOCKTYPE_IPCXN || (a->family != AF_INET && a->family != AF_INET6)) {
        g->blocked = true;
        snprintf(g->why, sizeof(g->why), "blocked: not an IP connection");
        return CURL_SOCKET_BAD;
    }
    if (pb_outbound_check(g->allow, g->host, &a->addr, a->addrlen) != 0) {
        char ip[INET6_ADDRSTRLEN] = "?";
        const char *range = pb_addr_internal_range(&a->addr, a->addrlen);
        if (a->family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)&a->addr)->sin_addr, ip,
                      sizeof(ip));
        else
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)&a->addr)->sin6_addr,
                      ip, sizeof(ip));
        g->blocked = true;
        snprintf(g->why, sizeof(g->why), "blocked: %s is %s (add it to outbound.allow to permit)",
                 ip, range ? range : "not allowed");
        return CURL_SOCKET_BAD;
    }
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

int curl_guard_install(CURL *e, struct curl_guard *g, const char *host, const char *protocols)
{
    g->blocked = false;
    g->why[0] = 0;
    snprintf(g->host, sizeof(g->host), "%s", host ? host : "");
    CURLcode rc = curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, guard_open_cb);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, (void *)g);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(e, CURLOPT_PROXY, "");
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, protocols);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    return rc == CURLE_OK ? 0 : PB_EINVAL;
}

/* ---- options ------------------------------------------------------------------------------ */

int sftp_conf_check(const struct sftp_conf *c, struct pb_err *err)
{
    if (strncmp(c->url, "sftp://", 7) != 0)
        return pb_err_set(err, PB_ECONFIG, "url must start with sftp://");
    CURLU *u = curl_url();
    if (!u)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    char *user = NULL, *host = NULL;
    int rc = 0;
    if (curl_url_set(u, CURLUPART_URL, c->url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
        rc = pb_err_set(err, PB_ECONFIG, "url is not an sftp://user@host:port/folder URL");
    else if (curl_url_get(u, CURLUPART_USER, &user, CURLU_URLDECODE) != CURLUE_OK || !*user)
        rc = pb_err_set(err, PB_ECONFIG, "url names no user: sftp://user@host/folder");
    curl_free(user);
    curl_free(host);
    curl_url_cleanup(u);
    if (rc)
        return rc;
    if (!c->known_hosts && !c->host_key_sha256)
        return pb_err_set(err, PB_ECONFIG,
                          "the server's host key must be checked: set known_hosts (with "
                          "accept_new_host_keys: true to trust a new server on first use) or "
                          "host_key_sha256");
    if (c->accept_new_host_keys && !c->known_hosts)
        return pb_err_set(
            err, PB_ECONFIG,
            "accept_new_host_keys needs known_hosts (the file new keys are added to)");
    if (c->host_key_sha256 && strncmp(c->host_key_sha256, "SHA256:", 7) != 0)
        return pb_err_set(err, PB_ECONFIG,
                          "host_key_sha256 is written SHA256:<base64>, as ssh-keygen -l shows it");
    if (c->passphrase && !c->private_key)
        return pb_err_set(err, PB_ECONFIG, "passphrase without private_key");
    return 0;
}

/* ---- a connection --------------------------------------------------------------------- */

struct sftp {
    CURL *e;
    struct curl_guard guard;
    char *base;    /* sftp://host:port */
    char *dir;     /* /data/in/ */
    char *display; /* sftp://user@host:port/data/in/ */
    char *host;
    char *user;
    char *password;
    char *key_file;
    char *key_dir; /* a private folder holding an inline key */
    char *passphrase;
    char *known_hosts;
    char *sha256;
    bool accept_new;
    int64_t connect_timeout_ms, timeout_ms;
    const char *key_problem; /* set by the host-key callback */
    char errbuf[CURL_ERROR_SIZE];
    /* the body of a list or a download */
    char *buf;
    size_t n, cap;
    int fd;
    bool write_failed;
    const char *up;
    size_t up_len, up_off;
    const _Atomic bool *abort;
};

static int key_cb(CURL *e, const struct curl_khkey *known, const struct curl_khkey *found,
                  enum curl_khmatch m, void *arg)
{
    struct sftp *s = arg;
    (void)e;
    (void)known;
    (void)found;
    if (m == CURLKHMATCH_OK)
        return CURLKHSTAT_FINE;
    if (m == CURLKHMATCH_MISSING && s->accept_new) {
        PB_WARN("sftp: trusting a new host key host=%s (accept_new_host_keys; added to %s)",
                s->host, s->known_hosts);
        return CURLKHSTAT_FINE_ADD_TO_FILE;
    }
    s->key_problem =
        m == CURLKHMATCH_MISMATCH ? "differs from the one in known_hosts" : "is not in known_hosts";
    return CURLKHSTAT_REJECT;
}

static char *pct_encode(const char *s)
{
    static const char hx[] = "0123456789ABCDEF";
    char *o = malloc(strlen(s) * 3 + 1), *p = o;
    if (!o)
        return NULL;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            strchr("-._~/", c)) {
            *p++ = (char)c;
        } else {
            *p++ = '%';
            *p++ = hx[c >> 4];
            *p++ = hx[c & 15];
        }
    }
    *p = 0;
    return o;
}

struct sftp *sftp_create(const struct sftp_conf *c, const struct pb_allowlist *allow,
                         struct pb_err *err)
{
    struct sftp *s = calloc(1, sizeof(*s));
    CURLU *u = curl_url();
    char *host = NULL, *port = NULL, *path = NULL, *user = NULL, *pass = NULL;
    if (!s || !u) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        goto fail;
    }
    s->fd = -1;
    s->guard.allow = allow;
    if (curl_url_set(u, CURLUPART_URL, c->url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_USER, &user, CURLU_URLDECODE) != CURLUE_OK) {
        pb_err_set(err, PB_ECONFIG, "url is not an sftp://user@host:port/folder URL");
        goto fail;
    }
    if (curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK)
        port = NULL;
    if (curl_url_get(u, CURLUPART_PATH, &path, CURLU_URLDECODE) != CURLUE_OK)
        path = NULL;
    if (curl_url_get(u, CURLUPART_PASSWORD, &pass, CURLU_URLDECODE) != CURLUE_OK)
        pass = NULL;
    const char *p = path && *path ? path : "/";
    size_t pl = strlen(p);
    s->dir = malloc(pl + 2);
    s->host = strdup(host);
    s->user = strdup(user);
    size_t bl = strlen(host) + 32;
    s->base = malloc(bl);
    s->display = malloc(bl + strlen(user) * 3 + pl * 3 + 8);
    if (!s->dir || !s->host || !s->user || !s->base || !s->display) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        goto fail;
    }
    snprintf(s->dir, pl + 2, "%s%s", p, p[pl - 1] == '/' ? "" : "/");
    bool v6 = strchr(host, ':') != NULL && host[0] != '[';
    snprintf(s->base, bl, "sftp://%s%s%s:%s", v6 ? "[" : "", host, v6 ? "]" : "",
             port ? port : "22");
    sprintf(s->display, "sftp://%s@%s%s%s:%s%s", user, v6 ? "[" : "", host, v6 ? "]" : "",
            port ? port : "22", s->dir);
    if ((c->password || pass) && !(s->password = strdup(c->password ? c->password : pass)))
        goto nomem;
    if (c->passphrase && !(s->passphrase = strdup(c->passphrase)))
        goto nomem;
    if (c->known_hosts && !(s->known_hosts = strdup(c->known_hosts)))
        goto nomem;
    if (c->host_key_sha256 && !(s->sha256 = strdup(c->host_key_sha256 + 7)))
        goto nomem;
    s->accept_new = c->accept_new_host_keys;
    s->connect_timeout_ms = c->connect_timeout_ms;
    s->timeout_ms = c->timeout_ms;
    if (c->private_key) {
        const char *k = c->private_key;
        while (*k == ' ' || *k == '\n' || *k == '\r' || *k == '\t')
            k++;
        if (strncmp(k, "-----BEGIN", 10) == 0) {
            /* The key itself: into a file only this user can read. */
            char tmpl[] = "/tmp/patchbay-key-XXXXXX";
            char *d = mkdtemp(tmpl);
            if (!d || !(s->key_dir = strdup(d))) {
                pb_err_set(err, PB_EIO, "cannot make a folder for the private key: %s",
                           strerror(errno));
                goto fail;
            }
            size_t fl = strlen(d) + 8;
            s->key_file = malloc(fl);
            if (!s->key_file)
                goto nomem;
            snprintf(s->key_file, fl, "%s/key", d);
            int fd = open(s->key_file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
            size_t kl = strlen(k);
            bool nl = kl && k[kl - 1] != '\n';
            if (fd < 0 || write(fd, k, kl) != (ssize_t)kl || (nl && write(fd, "\n", 1) != 1)) {
                if (fd >= 0)
                    close(fd);
                pb_err_set(err, PB_EIO, "cannot write the private key to a private file");
                goto fail;
            }
            close(fd);
        } else if (!(s->key_file = strdup(c->private_key))) {
            goto nomem;
        }
    }
    s->e = curl_easy_init();
    if (!s->e)
        goto nomem;
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_free(user);
    curl_free(pass);
    curl_url_cleanup(u);
    return s;
nomem:
    pb_err_set(err, PB_ENOMEM, "out of memory");
fail:
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_free(user);
    curl_free(pass);
    curl_url_cleanup(u);
    sftp_destroy(s);
    return NULL;
}

void sftp_destroy(struct sftp *s)
{
    if (!s)
        return;
    if (s->e)
        curl_easy_cleanup(s->e);
    if (s->key_dir) {
        if (s->key_file)
            unlink(s->key_file);
        rmdir(s->key_dir);
    }
    free(s->key_dir);
    free(s->key_file);
    free(s->base);
    free(s->dir);
    free(s->display);
    free(s->host);
    free(s->user);
    free(s->password);
    free(s->passphrase);
    free(s->known_hosts);
    free(s->sha256);
    free(s->buf);
    free(s);
}

void sftp_set_abort(struct sftp *s, const _Atomic bool *flag)
{
    s->abort = flag;
}

static int progress_cb(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    struct sftp *s = arg;
    (void)dt;
    (void)dn;
    (void)ut;
    (void)un;
    return s->abort && atomic_load(s->abort) ? 1 : 0;
}

const char *sftp_dir(const struct sftp *s)
{
    return s->dir;
}

const char *sftp_display(const struct sftp *s)
{
    return s->display;
}

int sftp_path(const struct sftp *s, const char *rel, char *out, size_t len)
{
    int n;
    if (rel[0] == '/')
        n = snprintf(out, len, "%s", rel);
    else
        n = snprintf(out, len, "%s%s", s->dir, rel);
    return n < 0 || (size_t)n >= len ? PB_ETOOBIG : 0;
}

/* ---- calls -------------------------------------------------------------------------------- */

#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (cc == CURLE_OK)                                                                        \
            cc = curl_easy_setopt(s->e, opt, val);                                                 \
    } while (0)

/* Reset the handle for a call on path (a file or a folder ending in '/'). */
static int setup(struct sftp *s, const char *path)
{
    CURLcode cc = CURLE_OK;
    char *enc = pct_encode(path);
    if (!enc)
        return PB_ENOMEM;
    size_t ul = strlen(s->base) + strlen(enc) + 2;
    char *url = malloc(ul);
    if (!url) {
        free(enc);
        return PB_ENOMEM;
    }
    /* "/~/x" is relative to the home folder, as libcurl reads it. */
    snprintf(url, ul, "%s%s%s", s->base, enc[0] == '/' ? "" : "/", enc);
    free(enc);
    curl_easy_reset(s->e);
    s->key_problem = NULL;
    s->errbuf[0] = 0;
    s->n = 0;
    s->write_failed = false;
    if (curl_guard_install(s->e, &s->guard, s->host, "sftp") != 0)
        cc = CURLE_FAILED_INIT;
    SET(CURLOPT_URL, url);
    SET(CURLOPT_USERNAME, s->user);
    if (s->password)
        SET(CURLOPT_PASSWORD, s->password);
    long auth = 0;
    if (s->key_file) {
        SET(CURLOPT_SSH_PRIVATE_KEYFILE, s->key_file);
        auth |= CURLSSH_AUTH_PUBLICKEY;
        if (s->passphrase)
            SET(CURLOPT_KEYPASSWD, s->passphrase);
    }
    if (s->password)
        auth |= CURLSSH_AUTH_PASSWORD | CURLSSH_AUTH_KEYBOARD;
    SET(CURLOPT_SSH_AUTH_TYPES, auth ? auth : (long)CURLSSH_AUTH_AGENT);
    if (s->known_hosts) {
        SET(CURLOPT_SSH_KNOWNHOSTS, s->known_hosts);
        SET(CURLOPT_SSH_KEYFUNCTION, key_cb);
        SET(CURLOPT_SSH_KEYDATA, (void *)s);
    }
    if (s->sha256)
        SET(CURLOPT_SSH_HOST_PUBLIC_KEY_SHA256, s->sha256);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)s->connect_timeout_ms);
    SET(CURLOPT_LOW_SPEED_LIMIT, 1L);
    SET(CURLOPT_LOW_SPEED_TIME, (long)((s->timeout_ms + 999) / 1000));
    SET(CURLOPT_ERRORBUFFER, s->errbuf);
    if (s->abort) {
        SET(CURLOPT_NOPROGRESS, 0L);
        SET(CURLOPT_XFERINFOFUNCTION, progress_cb);
        SET(CURLOPT_XFERINFODATA, (void *)s);
    }
    free(url);
    return cc == CURLE_OK ? 0 : PB_EINVAL;
}

static int outcome(struct sftp *s, CURLcode cc, char *why, size_t whylen)
{
    if (cc == CURLE_OK)
        return 0;
    if (cc == CURLE_ABORTED_BY_CALLBACK) {
        snprintf(why, whylen, "stopping");
        return PB_ESHUTDOWN;
    }
    const char *detail = s->errbuf[0] ? s->errbuf : curl_easy_strerror(cc);
    if (s->guard.blocked) {
        snprintf(why, whylen, "%s", s->guard.why);
        return PB_EDENIED;
    }
    switch (cc) {
    case CURLE_PEER_FAILED_VERIFICATION:
        snprintf(why, whylen, "the host key of %s %s: refused", s->host,
                 s->key_problem ? s->key_problem : "does not match host_key_sha256");
        return PB_EDENIED;
    case CURLE_LOGIN_DENIED:
        snprintf(why, whylen, "login refused for %s@%s", s->user, s->host);
        return PB_EDENIED;
    case CURLE_REMOTE_FILE_NOT_FOUND:
        snprintf(why, whylen, "no such remote file: %s", detail);
        return PB_ENOTFOUND;
    case CURLE_QUOTE_ERROR:
    case CURLE_REMOTE_ACCESS_DENIED:
    case CURLE_UPLOAD_FAILED:
    case CURLE_REMOTE_DISK_FULL:
    case CURLE_REMOTE_FILE_EXISTS:
        snprintf(why, whylen, "%s", detail);
        return PB_EIO;
    case CURLE_WRITE_ERROR:
        snprintf(why, whylen, "cannot write the local copy: %s", detail);
        return PB_EIO;
    default:
        snprintf(why, whylen, "%s", detail);
        return PB_ENET;
    }
}

static size_t list_write(char *p, size_t size, size_t nmemb, void *arg)
{
    struct sftp *s = arg;
    size_t len = size * nmemb;
    if (s->n + len + 1 > LIST_MAX)
        return 0;
    if (s->n + len + 1 > s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 65536;
        while (nc < s->n + len + 1)
            nc *= 2;
        char *nb = realloc(s->buf, nc);
        if (!nb)
            return 0;
        s->buf = nb;
        s->cap = nc;
    }
    memcpy(s->buf + s->n, p, len);
    s->n += len;
    s->buf[s->n] = 0;
    return len;
}

/* A long listing line ("-rw-r--r--  1 user group  1234 Dec  7 02:12 name"):
 * regular files only; the name is what follows the eighth field. */
static const char *listing_name(char *line)
{
    if (line[0] != '-')
        return NULL;
    char *p = line;
    for (int f = 0; f < 8; f++) {
        while (*p && *p != ' ')
            p++;
        while (*p == ' ')
            p++;
        if (!*p)
            return NULL;
    }
    return p;
}

int sftp_list(struct sftp *s, const char *dir, int (*fn)(void *arg, const char *name), void *arg,
              char *why, size_t whylen)
{
    char d[4096];
    size_t dl = strlen(dir);
    if (dl + 2 > sizeof(d))
        return PB_ETOOBIG;
    snprintf(d, sizeof(d), "%s%s", dir, dl && dir[dl - 1] == '/' ? "" : "/");
    int rc = setup(s, d);
    if (rc)
        return rc;
    CURLcode cc = CURLE_OK;
    SET(CURLOPT_WRITEFUNCTION, list_write);
    SET(CURLOPT_WRITEDATA, (void *)s);
    if (cc == CURLE_OK)
        cc = curl_easy_perform(s->e);
    rc = outcome(s, cc, why, whylen);
    if (rc)
        return rc;
    char *p = s->buf ? s->buf : (char *)"";
    while (*p) {
        char *nl = strchr(p, '\n');
        if (nl)
            *nl = 0;
        size_t l = strlen(p);
        if (l && p[l - 1] == '\r')
            p[l - 1] = 0;
        const char *name = listing_name(p);
        if (fn && name && *name && strcmp(name, ".") != 0 && strcmp(name, "..") != 0 &&
            (rc = fn(arg, name)) != 0)
            return rc;
        if (!nl)
            break;
        p = nl + 1;
    }
    return 0;
}

static size_t discard(char *p, size_t size, size_t nmemb, void *arg)
{
    (void)p;
    (void)arg;
    return size * nmemb;
}

int sftp_stat(struct sftp *s, const char *path, int64_t *size, int64_t *mtime, char *why,
              size_t whylen)
{
    int rc = setup(s, path);
    if (rc)
        return rc;
    CURLcode cc = CURLE_OK;
    SET(CURLOPT_NOBODY, 1L);
    SET(CURLOPT_FILETIME, 1L);
    SET(CURLOPT_WRITEFUNCTION, discard);
    if (cc == CURLE_OK)
        cc = curl_easy_perform(s->e);
    rc = outcome(s, cc, why, whylen);
    if (rc)
        return rc;
    curl_off_t ft = -1, len = -1;
    curl_easy_getinfo(s->e, CURLINFO_FILETIME_T, &ft);
    curl_easy_getinfo(s->e, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len);
    *size = (int64_t)len;
    *mtime = (int64_t)ft;
    return 0;
}

static size_t fd_write(char *p, size_t size, size_t nmemb, void *arg)
{
    struct sftp *s = arg;
    size_t len = size * nmemb, off = 0;
    while (off < len) {
        ssize_t w = write(s->fd, p + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            s->write_failed = true;
            return 0;
        }
        off += (size_t)w;
    }
    return len;
}

int sftp_get(struct sftp *s, const char *path, int fd, uint64_t max_speed, char *why, size_t whylen)
{
    int rc = setup(s, path);
    if (rc)
        return rc;
    CURLcode cc = CURLE_OK;
    s->fd = fd;
    SET(CURLOPT_WRITEFUNCTION, fd_write);
    SET(CURLOPT_WRITEDATA, (void *)s);
    if (max_speed)
        SET(CURLOPT_MAX_RECV_SPEED_LARGE, (curl_off_t)max_speed);
    if (cc == CURLE_OK)
        cc = curl_easy_perform(s->e);
    s->fd = -1;
    return outcome(s, cc, why, whylen);
}

static size_t mem_read(char *p, size_t size, size_t nmemb, void *arg)
{
    struct sftp *s = arg;
    size_t k = size * nmemb;
    if (k > s->up_len - s->up_off)
        k = s->up_len - s->up_off;
    memcpy(p, s->up + s->up_off, k);
    s->up_off += k;
    return k;
}

/* A path as a word of a command: quoted, \ and " escaped. */
static int quote_path(const char *p, char *out, size_t len)
{
    size_t k = 0;
    if (len < 3)
        return PB_ETOOBIG;
    out[k++] = '"';
    for (; *p; p++) {
        if (k + 4 >= len)
            return PB_ETOOBIG;
        if (*p == '"' || *p == '\\')
            out[k++] = '\\';
        out[k++] = *p;
    }
    out[k++] = '"';
    out[k] = 0;
    return 0;
}

/* Run commands (libcurl's QUOTE list) on the URL's folder. */
static int run_cmds(struct sftp *s, struct curl_slist *cmds, char *why, size_t whylen)
{
    int rc = setup(s, s->dir);
    if (rc)
        return rc;
    CURLcode cc = CURLE_OK;
    SET(CURLOPT_QUOTE, cmds);
    SET(CURLOPT_NOBODY, 1L);
    SET(CURLOPT_WRITEFUNCTION, discard);
    if (cc == CURLE_OK)
        cc = curl_easy_perform(s->e);
    return outcome(s, cc, why, whylen);
}

static int cmd2(struct sftp *s, const char *verb, const char *a, const char *b, char *why,
                size_t whylen)
{
    char qa[4200], qb[4200], line[8500];
    if (quote_path(a, qa, sizeof(qa)) != 0 || (b && quote_path(b, qb, sizeof(qb)) != 0))
        return PB_ETOOBIG;
    snprintf(line, sizeof(line), "%s %s%s%s", verb, qa, b ? " " : "", b ? qb : "");
    struct curl_slist *l = curl_slist_append(NULL, line);
    if (!l)
        return PB_ENOMEM;
    int rc = run_cmds(s, l, why, whylen);
    curl_slist_free_all(l);
    return rc;
}

int sftp_rename(struct sftp *s, const char *from, const char *to, char *why, size_t whylen)
{
    return cmd2(s, "rename", from, to, why, whylen);
}

int sftp_remove(struct sftp *s, const char *path, char *why, size_t whylen)
{
    return cmd2(s, "rm", path, NULL, why, whylen);
}

int sftp_mkdir(struct sftp *s, const char *dir, char *why, size_t whylen)
{
    /* Each level, ignoring "exists" ('*': a failure is not an error). */
    struct curl_slist *l = NULL;
    char part[4096], q[4200], line[4300];
    size_t n = strlen(dir);
    if (n >= sizeof(part))
        return PB_ETOOBIG;
    for (size_t i = 1; i <= n; i++) {
        if (i < n && dir[i] != '/')
            continue;
        memcpy(part, dir, i);
        part[i] = 0;
        if (strcmp(part, "/~") == 0 || strcmp(part, "/") == 0)
            continue;
        if (quote_path(part, q, sizeof(q)) != 0)
            break;
        snprintf(line, sizeof(line), "*mkdir %s", q);
        struct curl_slist *nl = curl_slist_append(l, line);
        if (!nl) {
            curl_slist_free_all(l);
            return PB_ENOMEM;
        }
        l = nl;
    }
    if (!l)
        return 0;
    int rc = run_cmds(s, l, why, whylen);
    curl_slist_free_all(l);
    return rc;
}

int sftp_put(struct sftp *s, const char *tmp, const char *path, const void *data, size_t len,
             char *why, size_t whylen)
{
    int rc = setup(s, tmp);
    if (rc)
        return rc;
    char qa[4200], qb[4200], line[8500];
    if (quote_path(tmp, qa, sizeof(qa)) != 0 || quote_path(path, qb, sizeof(qb)) != 0)
        return PB_ETOOBIG;
    snprintf(line, sizeof(line), "rename %s %s", qa, qb);
    struct curl_slist *post = curl_slist_append(NULL, line);
    if (!post)
        return PB_ENOMEM;
    CURLcode cc = CURLE_OK;
    s->up = data;
    s->up_len = len;
    s->up_off = 0;
    SET(CURLOPT_UPLOAD, 1L);
    SET(CURLOPT_READFUNCTION, mem_read);
    SET(CURLOPT_READDATA, (void *)s);
    SET(CURLOPT_INFILESIZE_LARGE, (curl_off_t)len);
    SET(CURLOPT_FTP_CREATE_MISSING_DIRS, (long)CURLFTP_CREATE_DIR);
    SET(CURLOPT_NEW_FILE_PERMS, 0640L);
    SET(CURLOPT_POSTQUOTE, post);
    if (cc == CURLE_OK)
        cc = curl_easy_perform(s->e);
    curl_slist_free_all(post);
    s->up = NULL;
    return outcome(s, cc, why, whylen);
}
