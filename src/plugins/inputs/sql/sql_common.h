/* sql_common.h - what the `sql` input, the `sql` output and `postgres_cdc`
 * share: the DSN of each driver (parsed without I/O, printed with its
 * secrets redacted), connecting through the outbound guard, classifying
 * database errors, and turning database values into JSON with exact types.
 *
 * Drivers: sqlite (libsqlite3, a local file: no network, no guard),
 * postgres (libpq) and mysql (libmariadb, MariaDB and MySQL servers).
 *
 * Values (sql_cell -> JSON): integers are numbers while they fit in +-2^53
 * and strings beyond (a double cannot carry them); numeric/decimal are
 * strings, so every jq stage carries them exactly, unless `decimal:
 * number` asks for JSON numbers (written with the database's own digits);
 * floats are numbers (shortest text that reads back the same double),
 * NaN and infinities strings; bytes (bytea, BLOB, BINARY) base64;
 * timestamps RFC 3339 ("2024-05-01T12:00:00.5Z"; without a time zone, no
 * offset); json/jsonb embedded as JSON; PostgreSQL arrays JSON arrays of
 * their elements, converted alike; everything else the text the database
 * gives. Text that is not UTF-8 fails the row (the caller dead-letters it).
 *
 * Thread model: nothing here keeps state between calls; a struct sql_conn
 * belongs to one thread. Connecting and every statement block: call them on
 * an input's own thread or an output's worker, never on a shared loop. */
#ifndef PB_SQL_COMMON_H
#define PB_SQL_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>
#include <mysql.h>
#include <sqlite3.h>

#include "patchbay/pb_conf.h"
#include "patchbay/pb_err.h"
#include "patchbay/pb_http.h"

/* ---- a growing text buffer ------------------------------------------------------------ */

struct sql_buf {
    char *p;
    size_t len, cap;
    size_t max; /* 0: no bound; past it the buffer is marked full */
    bool oom;   /* an allocation failed, or max was passed: the text is incomplete */
    bool full;  /* max was passed */
};

void sqlb_add(struct sql_buf *b, const void *s, size_t n);
void sqlb_adds(struct sql_buf *b, const char *s);
void sqlb_addc(struct sql_buf *b, char c);
void sqlb_printf(struct sql_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A JSON string of s[0..n). false (nothing appended) when s is not UTF-8. */
bool sqlb_json_str(struct sql_buf *b, const char *s, size_t n);
/* The text, NUL-terminated (NULL after a failed allocation). */
const char *sqlb_text(struct sql_buf *b);
void sqlb_reset(struct sql_buf *b);
void sqlb_free(struct sql_buf *b);

/* ---- drivers and DSNs ------------------------------------------------------------------- */

enum sql_driver { SQL_SQLITE = 0, SQL_POSTGRES, SQL_MYSQL };
extern const char *const sql_driver_names[]; /* for PB_F_ENUM, NULL-terminated */
/* The driver a `driver` option names (postgresql and mariadb are accepted
 * as aliases): its enum sql_driver, -1 when name is NULL (taken from the
 * DSN's scheme), -2 when unknown. */
int sql_driver_index(const char *name);

#define SQL_HOST_MAX 255

/* Where to connect, from `driver` and `dsn` (no I/O; init calls it, so lint
 * reports a bad DSN). Error texts never hold the DSN's secrets. */
struct sql_target {
    enum sql_driver driver;
    char host[SQL_HOST_MAX + 1]; /* postgres, mysql */
    int port;
    /* postgres: every keyword the DSN set, host/hostaddr/port excluded */
    size_t nkw;
    char **kw, **val;
    /* mysql */
    char *user, *password, *db;
    int ssl_mode; /* 0 disabled/unset, 1 required, 2 verify-ca, 3 verify-identity */
    char *ssl_ca, *ssl_cert, *ssl_key;
    /* sqlite: a path or a file: URI */
    char *path;
    /* printable: the DSN with its password left out */
    char shown[512];
};

/* driver: the `driver` option (-1 when absent: taken from the DSN's scheme). */
int sql_target_init(struct sql_target *t, int driver, const char *dsn, struct pb_err *err);
void sql_target_cleanup(struct sql_target *t);

/* ---- connections -------------------------------------------------------------------------- */

enum sql_errkind {
    SQL_ERR_NONE = 0,
    SQL_ERR_CONN,      /* the connection is gone or unusable: reconnect, retry */
    SQL_ERR_TRANSIENT, /* deadlock, serialization failure, lock timeout: retry */
    SQL_ERR_ROW,       /* this row's data: a constraint, a value out of range */
    SQL_ERR_OTHER,     /* the statement (syntax, a missing table, privileges) */
};

struct sql_conn {
    enum sql_driver driver;
    PGconn *pg;
    MYSQL *my;
    sqlite3 *lite;
    /* the last error */
    enum sql_errkind kind;
    char sqlstate[6]; /* postgres SQLSTATE, or "" */
    unsigned my_errno;
    int lite_code;
    char msg[512];
};

struct sql_connect_opts {
    int64_t connect_timeout_ms;
    int64_t statement_timeout_ms; /* 0: none */
    bool read_only;               /* sqlite: open read-only */
    bool replication;             /* postgres: a walsender connection (replication=database) */
    const char *application_name;
};

/* Resolve through the outbound guard and connect to the address it allows
 * (libpq: hostaddr= that address, host= the name, for TLS; libmariadb: the
 * address, or the name when TLS must verify it, the peer checked against
 * the guard after connecting), then set the session up: UTF-8, UTC,
 * ISO dates, hex bytea, floats in full. Blocks. NULL with err: PB_EDENIED
 * (the guard, or refused credentials), PB_ENET, PB_ENOMEM. */
struct sql_conn *sql_connect(const struct sql_target *t, const struct pb_allowlist *allow,
                             const struct sql_connect_opts *o, struct pb_err *err);
void sql_close(struct sql_conn *c);

/* Record the error of a failed call in c (kind, code, message). */
void sql_pg_error(struct sql_conn *c, const PGresult *r);
void sql_my_error(struct sql_conn *c, MYSQL *my, MYSQL_STMT *st);
void sql_lite_error(struct sql_conn *c, int rc);
/* Classify by code (pure; unit-tested). */
enum sql_errkind sql_pg_kind(const char *sqlstate);
enum sql_errkind sql_my_kind(unsigned code);
enum sql_errkind sql_lite_kind(int code);

/* Run a statement that returns no rows (BEGIN, SAVEPOINT, SET...). 0, or -1
 * with the error in c. */
int sql_exec(struct sql_conn *c, const char *sql);

/* Quote an identifier for the driver ("a"."b" / `a`.`b`): a dotted name is
 * quoted part by part. */
void sql_quote_ident(struct sql_buf *b, enum sql_driver d, const char *name);

/* ---- values -------------------------------------------------------------------------------- */

enum sql_vkind {
    SQLV_NULL = 0,
    SQLV_BOOL,     /* p: "t"/"f"/"1"/"0"/"true"/"false" */
    SQLV_INT,      /* decimal digits with an optional sign */
    SQLV_DECIMAL,  /* exact decimal text (or NaN, Infinity) */
    SQLV_FLOAT,    /* the database's float text (or NaN, Infinity) */
    SQLV_TEXT,     /* a string */
    SQLV_BYTES,    /* raw bytes */
    SQLV_PG_BYTEA, /* PostgreSQL's hex text: \x0a0b */
    SQLV_BITS,     /* MySQL BIT: big-endian raw bytes, as an integer */
    SQLV_JSON,     /* JSON text, embedded */
    SQLV_TS_TZ,    /* a timestamp in UTC ("2024-05-01 12:00:00.5+00") */
    SQLV_TS,       /* a timestamp without time zone */
    SQLV_PG_ARRAY, /* PostgreSQL array text; elem the element type's OID */
};

struct sql_cell {
    enum sql_vkind k;
    const char *p;
    size_t n;
    unsigned elem; /* SQLV_PG_ARRAY: element type OID */
};

struct sql_fmt {
    bool decimal_number; /* `decimal: number` */
};

/* The cell of a PostgreSQL value in text format of type oid. */
struct sql_cell sql_pg_cell(unsigned oid, const char *p, size_t n);
/* The cell of a MySQL text-protocol value of field f. */
struct sql_cell sql_my_cell(const MYSQL_FIELD *f, const char *p, size_t n);
/* The cell of column i of a stepped SQLite statement; tmp holds its text
 * when the value is a number (>= 32 bytes). */
struct sql_cell sql_lite_cell(sqlite3_stmt *st, int i, char *tmp, size_t tmplen);

/* Append the JSON value of c. 0, or -1 with *why (static text) when it
 * cannot be carried (not UTF-8, malformed). */
int sql_cell_json(struct sql_buf *b, const struct sql_cell *c, const struct sql_fmt *f,
                  const char **why);

/* The shortest text that reads back as the same double ("0.1", "1e+100"). */
void sql_double_text(double v, char *buf, size_t len);
/* True when s[0..n) is an integer that a double carries exactly (|v| <= 2^53). */
bool sql_int_fits_double(const char *s, size_t n);
/* A strict JSON number ("-1.5e3"), the syntax SQL accepts as a literal too. */
bool sql_is_number(const char *s, size_t n);

/* ---- cursor values ------------------------------------------------------------------------- */

/* A value kept in a cursor, bound back into the next query: its kind picks
 * how (a number unquoted, text quoted, bytes as bytes). */
enum sql_ckind {
    SQLC_NULL = 'z',
    SQLC_NUM = 'n',
    SQLC_TEXT = 's',
    SQLC_BYTES = 'b',
    SQLC_BOOL = 't'
};

struct sql_cval {
    char kind;  /* enum sql_ckind */
    char *text; /* number/text as the database wrote it; bytes raw; "t"/"f" */
    size_t len;
};

/* The cursor value of a cell (text copied; bytea decoded). 0 or PB_ENOMEM/PB_EPARSE. */
int sql_cval_from_cell(struct sql_cval *v, const struct sql_cell *c);
void sql_cval_free(struct sql_cval *v);

/* ---- named parameters ---------------------------------------------------------------------- */

/* A query whose ":name" parameters were found: where each is, outside
 * string literals, quoted identifiers, comments, dollar quotes and "::"
 * casts. */
struct sql_params {
    size_t n;
    struct {
        size_t at, len; /* of ":name" in the query */
        int index;      /* of name in the caller's list */
    } * use;
    /* The names used, in order of first use: placeholder j+1 binds the
     * value of name bind[j]. */
    size_t nbind;
    int *bind;
};

/* Find :name uses; every name must be one of names[0..nnames). Backslashes
 * escape inside MySQL strings and PostgreSQL E'' strings only. PB_ECONFIG
 * naming the unknown one. */
int sql_params_find(struct sql_params *ps, enum sql_driver d, const char *query,
                    const char *const *names, size_t nnames, struct pb_err *err);
void sql_params_free(struct sql_params *ps);
/* The query for the driver: postgres $1.., sqlite ?1.. (numbered in order
 * of first use: see bind), mysql the values themselves as literals (vals;
 * escaped with the connection's rules). NULL on ENOMEM. */
char *sql_params_render(const struct sql_params *ps, const char *query, enum sql_driver d,
                        MYSQL *my, const struct sql_cval *vals);

#endif
