/* pb_err.h - error codes and the error report that travels with them.
 *
 * Functions return 0 or a negative PB_E* code. Constructors return NULL and
 * fill a struct pb_err, which carries a message and, when the error comes from
 * the configuration file, the file:line:col it points at. */
#ifndef PB_ERR_H
#define PB_ERR_H

#include <stdarg.h>

/* X(name, value, text): one row per error code. */
#define PB_ERRNO_MAP(X)                                                                            \
    X(NOMEM, -1, "out of memory")                                                                  \
    X(INVAL, -2, "invalid argument")                                                               \
    X(IO, -3, "i/o error")                                                                         \
    X(NOTFOUND, -4, "not found")                                                                   \
    X(EXISTS, -5, "already exists")                                                                \
    X(AGAIN, -6, "try again")                                                                      \
    X(FULL, -7, "queue full")                                                                      \
    X(TOOBIG, -8, "too large")                                                                     \
    X(PARSE, -9, "parse error")                                                                    \
    X(CONFIG, -10, "configuration error")                                                          \
    X(STORE, -11, "state store error")                                                             \
    X(CORRUPT, -12, "state store is corrupt")                                                      \
    X(TIMEOUT, -13, "timed out")                                                                   \
    X(NET, -14, "network error")                                                                   \
    X(DENIED, -15, "not allowed")                                                                  \
    X(JQ, -16, "jq error")                                                                         \
    X(FIDELITY, -17, "value cannot be carried exactly")                                            \
    X(SHUTDOWN, -18, "shutting down")                                                              \
    X(NOSPACE, -19, "no space left on device")                                                     \
    X(INTERNAL, -20, "internal error")

enum pb_errno {
    PB_OK = 0,
#define PB__ERRNO_ENUM(name, value, text) PB_E##name = (value),
    PB_ERRNO_MAP(PB__ERRNO_ENUM)
#undef PB__ERRNO_ENUM
};

#define PB_ERR_MSG_MAX 512

struct pb_err {
    int code;                 /* PB_E* or 0 */
    char msg[PB_ERR_MSG_MAX]; /* human text, never contains a secret value */
    const char *file;         /* borrowed; NULL when not from a file */
    int line, col;            /* 1-based; 0 when unknown */
};

/* Name of an error code ("PB_ENOMEM") and its text ("out of memory"). */
const char *pb_err_name(int code);
const char *pb_strerror(int code);

void pb_err_clear(struct pb_err *err);
/* Fill err (may be NULL) and return code, so callers can `return pb_err_set(...)`. */
int pb_err_set(struct pb_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int pb_err_vset(struct pb_err *err, int code, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
/* Same, with a position in a file. file is borrowed and must outlive err. */
int pb_err_at(struct pb_err *err, int code, const char *file, int line, int col, const char *fmt,
              ...) __attribute__((format(printf, 6, 7)));
/* "file:line:col: message" or "message" into buf; returns buf. */
const char *pb_err_format(const struct pb_err *err, char *buf, unsigned long len);

#endif
