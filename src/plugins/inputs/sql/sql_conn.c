/* sql_conn.c - DSNs, connecting through the outbound guard, statements
 * without rows, and the classification of database errors, for the three
 * drivers (sql_common.h).
 *
 * Thread model: stateless; sql_connect and every statement block, so the
 * plugins call them on threads that may block (an input's own thread, an
 * output's worker). mysql_library_init runs once, from the plugins' init
 * (the main thread), before any connection is made. */
#include <arpa/inet.h>
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <errmsg.h>
#include <mysqld_error.h>

#include "patchbay/pb_url.h"
#include "sql_common.h"

const char *const sql_driver_names[] = {"sqlite", "postgres", "mysql", NULL};

int sql_driver_index(const char *name)
{
    if (!name)
        return -1;
    for (int i = 0; sql_driver_names[i]; i++)
        if (strcmp(sql_driver_names[i], name) == 0)
            return i;
    if (strcmp(name, "postgresql") == 0)
        return SQL_POSTGRES;
    if (strcmp(name, "mariadb") == 0)
        return SQL_MYSQL;
    return -2;
}

/* ---- DSNs -------------------------------------------------------------------------------------
 */

static bool host_ok(const char *h)
{
    if (!*h)
        return false;
    for (const char *p = h; *p; p++)
        if (!(isalnum((unsigned char)*p) || strchr(".-_:%", *p)))
            return false;
    return true;
}

static int pg_target(struct sql_target *t, const char *dsn, struct pb_err *err)
{
    char *emsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(dsn, &emsg);
    int rc = 0;
    if (!opts) {
        /* libpq's message may quote the text it could not read: a password
         * among it, so it is not repeated. */
        PQfreemem(emsg);
        return pb_err_set(err, PB_ECONFIG,
                          "dsn: not a PostgreSQL connection string (postgres://user@host:5432/db "
                          "or \"host=... dbname=... user=...\")");
    }
    size_t n = 0;
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (o->val && *o->val)
            n++;
    t->kw = calloc(n + 1, sizeof(*t->kw));
    t->val = calloc(n + 1, sizeof(*t->val));
    if (!t->kw || !t->val) {
        rc = pb_err_set(err, PB_ENOMEM, "out of memory");
        goto out;
    }
    t->port = 5432;
    const char *user = NULL, *db = NULL;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val || !*o->val)
            continue;
        const char *k = o->keyword;
        if (strcmp(k, "host") == 0) {
            if (strchr(o->val, ',')) {
                rc = pb_err_set(err, PB_ECONFIG, "dsn: one host only (several given)");
                goto out;
            }
            if (o->val[0] == '/' || o->val[0] == '@') {
                rc = pb_err_set(err, PB_ECONFIG,
                                "dsn: a Unix socket is not reachable through the outbound guard; "
                                "give a host name or address (and outbound.allow for a local "
                                "one)");
                goto out;
            }
            if (strlen(o->val) > SQL_HOST_MAX || !host_ok(o->val)) {
                rc = pb_err_set(err, PB_ECONFIG, "dsn: bad host");
                goto out;
            }
            snprintf(t->host, sizeof(t->host), "%s", o->val);
            continue;
        }
        if (strcmp(k, "hostaddr") == 0 || strcmp(k, "service") == 0 ||
            strcmp(k, "replication") == 0 || strcmp(k, "passfile") == 0) {
            rc = pb_err_set(err, PB_ECONFIG,
                            "dsn: %s is not supported (patchbay resolves host through the "
                            "outbound guard and sets the rest)",
                            k);
            goto out;
        }
        if (strcmp(k, "port") == 0) {
            char *end;
            long p = strtol(o->val, &end, 10);
            if (*end || p < 1 || p > 65535) {
                rc = pb_err_set(err, PB_ECONFIG, "dsn: the port must be 1-65535 (one port)");
                goto out;
            }
            t->port = (int)p;
            continue;
        }
        if (strcmp(k, "user") == 0)
            user = o->val;
        if (strcmp(k, "dbname") == 0)
            db = o->val;
        t->kw[t->nkw] = strdup(k);
        t->val[t->nkw] = strdup(o->val);
        if (!t->kw[t->nkw] || !t->val[t->nkw]) {
            free(t->kw[t->nkw]);
            free(t->val[t->nkw]);
            t->kw[t->nkw] = t->val[t->nkw] = NULL;
            rc = pb_err_set(err, PB_ENOMEM, "out of memory");
            goto out;
        }
        t->nkw++;
    }
    if (!t->host[0]) {
        rc = pb_err_set(err, PB_ECONFIG, "dsn: no host (postgres://user@host:5432/db)");
        goto out;
    }
    snprintf(t->shown, sizeof(t->shown), "postgres://%s%s%s:%d/%s", user ? user : "",
             user ? "@" : "", t->host, t->port, db ? db : "");
out:
    PQconninfoFree(opts);
    return rc;
}

struct my_param {
    const char *name;
    size_t off;
};

static int my_target(struct sql_target *t, const char *dsn, struct pb_err *err)
{
    const char *u = strstr(dsn, "://") + 3;
    struct pb_url_authority a;
    int rc = pb_url_authority(u, "dsn", "mysql://user@host:3306/db", 3306, SQL_HOST_MAX, &a, err);
    if (rc)
        return rc;
    t->user = a.user;
    t->password = a.password;
    snprintf(t->host, sizeof(t->host), "%s", a.host);
    t->port = a.port;
    const char *rest = a.rest;
    bool nomem = false;
    if (*rest == '/') {
        size_t dl = strcspn(rest + 1, "?#");
        if (dl) {
            t->db = pb_pct_decode(rest + 1, dl, &nomem);
            if (!t->db)
                return nomem ? pb_err_set(err, PB_ENOMEM, "out of memory")
                             : pb_err_set(err, PB_ECONFIG, "dsn: bad %%-escape in the database");
        }
        rest += 1 + dl;
    }
    if (*rest == '?') {
        const char *q = rest + 1;
        while (*q && *q != '#') {
            size_t pl = strcspn(q, "&#");
            const char *eq = memchr(q, '=', pl);
            if (!eq)
                return pb_err_set(err, PB_ECONFIG, "dsn: a parameter without a value");
            size_t kl = (size_t)(eq - q);
            char *v = pb_pct_decode(eq + 1, pl - kl - 1, &nomem);
            if (!v)
                return nomem ? pb_err_set(err, PB_ENOMEM, "out of memory")
                             : pb_err_set(err, PB_ECONFIG, "dsn: bad %%-escape in a parameter");
            char **slot = NULL;
            if ((kl == 8 && strncmp(q, "ssl-mode", 8) == 0) ||
                (kl == 7 && strncmp(q, "sslmode", 7) == 0)) {
                static const char *const modes[] = {"disabled", "required", "verify-ca",
                                                    "verify-identity"};
                int m = -1;
                for (int i = 0; i < 4; i++)
                    if (strcasecmp(v, modes[i]) == 0 ||
                        (i == 3 && strcasecmp(v, "verify_identity") == 0))
                        m = i;
                free(v);
                if (m < 0 || m == 2)
                    return pb_err_set(err, PB_ECONFIG,
                                      "dsn: ssl-mode must be disabled, required or "
                                      "verify-identity (libmariadb checks the name with the "
                                      "chain)");
                t->ssl_mode = m;
            } else if (kl == 6 && strncmp(q, "ssl-ca", 6) == 0) {
                slot = &t->ssl_ca;
            } else if (kl == 8 && strncmp(q, "ssl-cert", 8) == 0) {
                slot = &t->ssl_cert;
            } else if (kl == 7 && strncmp(q, "ssl-key", 7) == 0) {
                slot = &t->ssl_key;
            } else {
                free(v);
                return pb_err_set(err, PB_ECONFIG,
                                  "dsn: unknown parameter \"%.*s\" (ssl-mode, ssl-ca, ssl-cert, "
                                  "ssl-key)",
                                  (int)(kl > 40 ? 40 : kl), q);
            }
            if (slot) {
                free(*slot);
                *slot = v;
            }
            q += pl;
            if (*q == '&')
                q++;
        }
    }
    snprintf(t->shown, sizeof(t->shown), "mysql://%s%s%s:%d/%s", t->user ? t->user : "",
             t->user ? "@" : "", t->host, t->port, t->db ? t->db : "");
    return 0;
}

int sql_target_init(struct sql_target *t, int driver, const char *dsn, struct pb_err *err)
{
    memset(t, 0, sizeof(*t));
    int from_scheme = -1;
    if (strncasecmp(dsn, "postgres://", 11) == 0 || strncasecmp(dsn, "postgresql://", 13) == 0)
        from_scheme = SQL_POSTGRES;
    else if (strncasecmp(dsn, "mysql://", 8) == 0 || strncasecmp(dsn, "mariadb://", 10) == 0)
        from_scheme = SQL_MYSQL;
    else if (strncasecmp(dsn, "sqlite:", 7) == 0 || strncasecmp(dsn, "file:", 5) == 0)
        from_scheme = SQL_SQLITE;
    if (driver < 0)
        driver = from_scheme;
    if (driver < 0)
        return pb_err_set(err, PB_ECONFIG,
                          "set driver (sqlite, postgres or mysql): the dsn does not say");
    if (from_scheme >= 0 && from_scheme != driver)
        return pb_err_set(err, PB_ECONFIG, "dsn is for %s, driver says %s",
                          sql_driver_names[from_scheme], sql_driver_names[driver]);
    t->driver = (enum sql_driver)driver;
    switch (t->driver) {
    case SQL_POSTGRES:
        return pg_target(t, dsn, err);
    case SQL_MYSQL:
        if (!strstr(dsn, "://"))
            return pb_err_set(err, PB_ECONFIG, "dsn: mysql://user:password@host:3306/db");
        return my_target(t, dsn, err);
    case SQL_SQLITE: {
        const char *p = dsn;
        if (strncasecmp(p, "sqlite://", 9) == 0)
            p += 9;
        else if (strncasecmp(p, "sqlite:", 7) == 0)
            p += 7;
        if (!*p)
            return pb_err_set(err, PB_ECONFIG, "dsn: the database file (sqlite:/path/to/db)");
        t->path = strdup(p);
        if (!t->path)
            return pb_err_set(err, PB_ENOMEM, "out of memory");
        snprintf(t->shown, sizeof(t->shown), "sqlite:%s", p);
        /* a file: URI may carry no secret, but keep what is shown short */
        char *q = strchr(t->shown, '?');
        if (q)
            *q = 0;
        return 0;
    }
    }
    return pb_err_set(err, PB_ECONFIG, "unknown driver");
}

void sql_target_cleanup(struct sql_target *t)
{
    for (size_t i = 0; i < t->nkw; i++) {
        free(t->kw[i]);
        free(t->val[i]);
    }
    free(t->kw);
    free(t->val);
    free(t->user);
    free(t->password);
    free(t->db);
    free(t->ssl_ca);
    free(t->ssl_cert);
    free(t->ssl_key);
    free(t->path);
    memset(t, 0, sizeof(*t));
}

/* ---- errors -----------------------------------------------------------------------------------
 */

enum sql_errkind sql_pg_kind(const char *st)
{
    if (!st || strlen(st) != 5)
        return SQL_ERR_CONN; /* no SQLSTATE: the client lost the server */
    if (strncmp(st, "08", 2) == 0 || strcmp(st, "57P01") == 0 || strcmp(st, "57P02") == 0 ||
        strcmp(st, "57P03") == 0 || strcmp(st, "25P03") == 0)
        return SQL_ERR_CONN;
    if (strncmp(st, "40", 2) == 0 || strncmp(st, "53", 2) == 0 || strcmp(st, "55P03") == 0 ||
        strcmp(st, "57014") == 0 || strcmp(st, "55006") == 0)
        return SQL_ERR_TRANSIENT;
    if (strncmp(st, "23", 2) == 0 || strncmp(st, "22", 2) == 0)
        return SQL_ERR_ROW;
    return SQL_ERR_OTHER;
}

enum sql_errkind sql_my_kind(unsigned code)
{
    if (code >= 2000 && code < 3000)
        return SQL_ERR_CONN; /* client errors: gone, lost, cannot connect */
    switch (code) {
    case ER_LOCK_DEADLOCK:
    case ER_LOCK_WAIT_TIMEOUT:
    case ER_CON_COUNT_ERROR:
    case ER_TOO_MANY_USER_CONNECTIONS:
    case ER_QUERY_INTERRUPTED:
    case 1969: /* max_statement_time exceeded */
        return SQL_ERR_TRANSIENT;
    case ER_SERVER_SHUTDOWN:
    case ER_CONNECTION_KILLED:
    case ER_NET_READ_ERROR:
    case ER_NET_READ_INTERRUPTED:
    case ER_NET_ERROR_ON_WRITE:
    case ER_NET_WRITE_INTERRUPTED:
        return SQL_ERR_CONN;
    case ER_DUP_ENTRY:
    case ER_DUP_ENTRY_WITH_KEY_NAME:
    case ER_DUP_UNIQUE:
    case ER_NO_REFERENCED_ROW:
    case ER_ROW_IS_REFERENCED:
    case ER_NO_REFERENCED_ROW_2:
    case ER_ROW_IS_REFERENCED_2:
    case ER_BAD_NULL_ERROR:
    case ER_NO_DEFAULT_FOR_FIELD:
    case ER_WARN_DATA_OUT_OF_RANGE:
    case WARN_DATA_TRUNCATED:
    case ER_TRUNCATED_WRONG_VALUE:
    case ER_TRUNCATED_WRONG_VALUE_FOR_FIELD:
    case ER_DATA_TOO_LONG:
    case ER_DATA_OUT_OF_RANGE:
    case ER_ILLEGAL_VALUE_FOR_TYPE:
    case ER_WRONG_VALUE_FOR_TYPE:
    case ER_DIVISION_BY_ZERO:
    case 4038: /* syntax error in JSON text */
    case 4025: /* CONSTRAINT `...` failed (a CHECK) */
    case 3819: /* Check constraint is violated (MySQL) */
    case 4078: /* illegal parameter data type */
        return SQL_ERR_ROW;
    default:
        return SQL_ERR_OTHER;
    }
}

enum sql_errkind sql_lite_kind(int code)
{
    switch (code & 0xff) {
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH:
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
        return SQL_ERR_ROW;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_INTERRUPT:
        return SQL_ERR_TRANSIENT;
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN:
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_FULL:
    case SQLITE_NOMEM:
        return SQL_ERR_CONN;
    default:
        return SQL_ERR_OTHER;
    }
}

/* Copy text into c->msg on one line ("ERROR:  x\nDETAIL:  y" -> "x; y"). */
static void set_msg(struct sql_conn *c, const char *text)
{
    size_t o = 0;
    if (!text || !*text)
        text = "unknown error";
    for (const char *p = text; *p && o < sizeof(c->msg) - 3; p++) {
        if (*p == '\n') {
            while (o && c->msg[o - 1] == ' ')
                o--;
            if (p[1]) {
                c->msg[o++] = ';';
                c->msg[o++] = ' ';
            }
            continue;
        }
        if ((unsigned char)*p < 0x20) {
            if (*p == '\t' && o && c->msg[o - 1] != ' ')
                c->msg[o++] = ' ';
            continue;
        }
        c->msg[o++] = *p;
    }
    c->msg[o] = 0;
    /* libpq prefixes "ERROR:  " */
    if (strncmp(c->msg, "ERROR:  ", 8) == 0)
        memmove(c->msg, c->msg + 8, strlen(c->msg + 8) + 1);
    char *d = strstr(c->msg, "DETAIL:  ");
    if (d)
        memmove(d, d + 8, strlen(d + 8) + 1);
}

void sql_pg_error(struct sql_conn *c, const PGresult *r)
{
    const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    snprintf(c->sqlstate, sizeof(c->sqlstate), "%s", st ? st : "");
    const char *m = r ? PQresultErrorMessage(r) : NULL;
    set_msg(c, m && *m ? m : PQerrorMessage(c->pg));
    c->kind = PQstatus(c->pg) == CONNECTION_BAD ? SQL_ERR_CONN : sql_pg_kind(st);
}

void sql_my_error(struct sql_conn *c, MYSQL *my, MYSQL_STMT *st)
{
    c->my_errno = st ? mysql_stmt_errno(st) : mysql_errno(my);
    set_msg(c, st ? mysql_stmt_error(st) : mysql_error(my));
    c->kind = sql_my_kind(c->my_errno);
    snprintf(c->sqlstate, sizeof(c->sqlstate), "%s",
             st ? mysql_stmt_sqlstate(st) : mysql_sqlstate(my));
}

void sql_lite_error(struct sql_conn *c, int rc)
{
    c->lite_code = rc;
    set_msg(c, c->lite ? sqlite3_errmsg(c->lite) : sqlite3_errstr(rc));
    c->kind = sql_lite_kind(rc);
}

/* ---- connecting ---------------------------------------------------------------------------------
 */

static void quiet_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

static int pg_connect(struct sql_conn *c, const struct sql_target *t,
                      const struct pb_allowlist *allow, const struct sql_connect_opts *o,
                      struct pb_err *err)
{
    char ip[64], port[16], ctmo[24], options[1024];
    int rc = pb_outbound_resolve(allow, t->host, t->port, ip, sizeof(ip), err);
    if (rc)
        return rc;
    snprintf(port, sizeof(port), "%d", t->port);
    long secs = (long)((o->connect_timeout_ms + 999) / 1000);
    snprintf(ctmo, sizeof(ctmo), "%ld", secs < 2 ? 2 : secs);
    const char *user_options = "";
    bool has_app = false, has_ctmo = false;
    for (size_t i = 0; i < t->nkw; i++) {
        if (strcmp(t->kw[i], "options") == 0)
            user_options = t->val[i];
        if (strcmp(t->kw[i], "application_name") == 0)
            has_app = true;
        if (strcmp(t->kw[i], "connect_timeout") == 0)
            has_ctmo = true;
    }
    char stmo[48] = "";
    if (o->statement_timeout_ms > 0 && !o->replication)
        snprintf(stmo, sizeof(stmo), " -c statement_timeout=%lld",
                 (long long)o->statement_timeout_ms);
    snprintf(options, sizeof(options),
             "%s%s-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=iso_8601 "
             "-c extra_float_digits=3 -c bytea_output=hex%s",
             user_options, *user_options ? " " : "", stmo);
    const char *kw[64], *val[64];
    size_t n = 0;
    kw[n] = "host", val[n++] = t->host;
    kw[n] = "hostaddr", val[n++] = ip;
    kw[n] = "port", val[n++] = port;
    kw[n] = "client_encoding", val[n++] = "UTF8";
    kw[n] = "options", val[n++] = options;
    if (!has_ctmo)
        kw[n] = "connect_timeout", val[n++] = ctmo;
    if (!has_app)
        kw[n] = "application_name",
        val[n++] = o->application_name ? o->application_name : "patchbay";
    if (o->replication)
        kw[n] = "replication", val[n++] = "database";
    for (size_t i = 0; i < t->nkw && n < 62; i++) {
        if (strcmp(t->kw[i], "options") == 0 || strcmp(t->kw[i], "client_encoding") == 0)
            continue;
        kw[n] = t->kw[i], val[n++] = t->val[i];
    }
    kw[n] = NULL, val[n] = NULL;
    c->pg = PQconnectdbParams(kw, val, 0);
    if (!c->pg)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    PQsetNoticeProcessor(c->pg, quiet_notice, NULL);
    if (PQstatus(c->pg) != CONNECTION_OK) {
        set_msg(c, PQerrorMessage(c->pg));
        return pb_err_set(err, PB_ENET, "%s: %s", t->shown, c->msg);
    }
    return 0;
}

static int my_peer_allowed(struct sql_conn *c, const struct sql_target *t,
                           const struct pb_allowlist *allow, struct pb_err *err)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int fd = (int)mysql_get_socket(c->my);
    if (fd < 0 || getpeername(fd, (struct sockaddr *)&ss, &sl) != 0)
        return pb_err_set(err, PB_ENET, "%s: no peer address", t->shown);
    if (pb_outbound_check(allow, t->host, &ss, sl) != 0) {
        char addr[INET6_ADDRSTRLEN] = "?";
        const void *a = ss.ss_family == AF_INET
                            ? (const void *)&((struct sockaddr_in *)&ss)->sin_addr
                            : (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr;
        inet_ntop(ss.ss_family, a, addr, sizeof(addr));
        const char *range = pb_addr_internal_range(&ss, sl);
        return pb_err_set(err, PB_EDENIED, "blocked: %s is %s (add it to outbound.allow to permit)",
                          addr, range ? range : "not allowed");
    }
    return 0;
}

static int my_connect(struct sql_conn *c, const struct sql_target *t,
                      const struct pb_allowlist *allow, const struct sql_connect_opts *o,
                      struct pb_err *err)
{
    char ip[64];
    int rc = pb_outbound_resolve(allow, t->host, t->port, ip, sizeof(ip), err);
    if (rc)
        return rc;
    c->my = mysql_init(NULL);
    if (!c->my)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    unsigned ctmo = (unsigned)((o->connect_timeout_ms + 999) / 1000);
    unsigned rtmo =
        o->statement_timeout_ms > 0 ? (unsigned)((o->statement_timeout_ms + 999) / 1000) : 0;
    my_bool off = 0, on = 1;
    unsigned proto = MYSQL_PROTOCOL_TCP;
    mysql_optionsv(c->my, MYSQL_OPT_PROTOCOL, &proto);
    mysql_optionsv(c->my, MYSQL_OPT_CONNECT_TIMEOUT, &ctmo);
    if (rtmo) {
        mysql_optionsv(c->my, MYSQL_OPT_READ_TIMEOUT, &rtmo);
        mysql_optionsv(c->my, MYSQL_OPT_WRITE_TIMEOUT, &rtmo);
    }
    mysql_optionsv(c->my, MYSQL_OPT_RECONNECT, &off);
    mysql_optionsv(c->my, MYSQL_OPT_LOCAL_INFILE, &off);
    mysql_optionsv(c->my, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    mysql_optionsv(c->my, MYSQL_INIT_COMMAND,
                   "SET time_zone = '+00:00', sql_mode = CONCAT(@@sql_mode, "
                   "',STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION')");
    if (t->ssl_mode >= 1) {
        mysql_optionsv(c->my, MYSQL_OPT_SSL_ENFORCE, &on);
        my_bool verify = t->ssl_mode == 3;
        mysql_optionsv(c->my, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &verify);
        if (t->ssl_ca)
            mysql_optionsv(c->my, MYSQL_OPT_SSL_CA, t->ssl_ca);
        if (t->ssl_cert)
            mysql_optionsv(c->my, MYSQL_OPT_SSL_CERT, t->ssl_cert);
        if (t->ssl_key)
            mysql_optionsv(c->my, MYSQL_OPT_SSL_KEY, t->ssl_key);
    }
    /* With verify-identity the certificate is checked against the name, so
     * the name is what libmariadb connects to; the peer is checked against
     * the guard right after. Otherwise the address the guard allowed. */
    const char *to = t->ssl_mode == 3 ? t->host : ip;
    if (!mysql_real_connect(c->my, to, t->user, t->password ? t->password : "", t->db, t->port,
                            NULL, CLIENT_FOUND_ROWS)) {
        set_msg(c, mysql_error(c->my));
        unsigned code = mysql_errno(c->my);
        return pb_err_set(err, code == ER_ACCESS_DENIED_ERROR ? PB_EDENIED : PB_ENET, "%s: %s",
                          t->shown, c->msg);
    }
    return my_peer_allowed(c, t, allow, err);
}

static int lite_connect(struct sql_conn *c, const struct sql_target *t,
                        const struct sql_connect_opts *o, struct pb_err *err)
{
    int flags = (o->read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) |
                SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX;
    int rc = sqlite3_open_v2(t->path, &c->lite, flags, NULL);
    if (rc != SQLITE_OK) {
        set_msg(c, c->lite ? sqlite3_errmsg(c->lite) : sqlite3_errstr(rc));
        return pb_err_set(err, PB_EIO, "%s: %s", t->shown, c->msg);
    }
    sqlite3_busy_timeout(c->lite,
                         o->statement_timeout_ms > 0 ? (int)o->statement_timeout_ms : 5000);
    sqlite3_extended_result_codes(c->lite, 1);
    return 0;
}

static pthread_once_t my_once = PTHREAD_ONCE_INIT;

static void my_library_init(void)
{
    mysql_library_init(0, NULL, NULL);
}

struct sql_conn *sql_connect(const struct sql_target *t, const struct pb_allowlist *allow,
                             const struct sql_connect_opts *o, struct pb_err *err)
{
    struct sql_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    c->driver = t->driver;
    int rc;
    switch (t->driver) {
    case SQL_POSTGRES:
        rc = pg_connect(c, t, allow, o, err);
        break;
    case SQL_MYSQL:
        pthread_once(&my_once, my_library_init);
        rc = my_connect(c, t, allow, o, err);
        break;
    default:
        rc = lite_connect(c, t, o, err);
        break;
    }
    if (rc) {
        sql_close(c);
        return NULL;
    }
    return c;
}

void sql_close(struct sql_conn *c)
{
    if (!c)
        return;
    if (c->pg)
        PQfinish(c->pg);
    if (c->my)
        mysql_close(c->my);
    if (c->lite)
        sqlite3_close_v2(c->lite);
    free(c);
}

int sql_exec(struct sql_conn *c, const char *sql)
{
    switch (c->driver) {
    case SQL_POSTGRES: {
        PGresult *r = PQexec(c->pg, sql);
        ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
            sql_pg_error(c, r);
            PQclear(r);
            return -1;
        }
        PQclear(r);
        return 0;
    }
    case SQL_MYSQL: {
        if (mysql_real_query(c->my, sql, strlen(sql)) != 0) {
            sql_my_error(c, c->my, NULL);
            return -1;
        }
        MYSQL_RES *res = mysql_store_result(c->my);
        if (res)
            mysql_free_result(res);
        else if (mysql_field_count(c->my) != 0) {
            sql_my_error(c, c->my, NULL);
            return -1;
        }
        return 0;
    }
    default: {
        int rc = sqlite3_exec(c->lite, sql, NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
            sql_lite_error(c, rc);
            return -1;
        }
        return 0;
    }
    }
}

void sql_quote_ident(struct sql_buf *b, enum sql_driver d, const char *name)
{
    char q = d == SQL_MYSQL ? '`' : '"';
    const char *p = name;
    for (;;) {
        size_t n = strcspn(p, ".");
        sqlb_addc(b, q);
        for (size_t i = 0; i < n; i++) {
            if (p[i] == q)
                sqlb_addc(b, q);
            sqlb_addc(b, p[i]);
        }
        sqlb_addc(b, q);
        if (!p[n])
            break;
        sqlb_addc(b, '.');
        p += n + 1;
    }
}
