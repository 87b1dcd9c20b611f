/* err.c - error codes, names and the struct pb_err report. */
#include <stdio.h>
#include <string.h>

#include "patchbay/pb_err.h"

const char *pb_err_name(int code)
{
    switch (code) {
    case 0:
        return "PB_OK";
#define PB__ERR_NAME(name, value, text)                                                            \
    case value:                                                                                    \
        return "PB_E" #name;
        PB_ERRNO_MAP(PB__ERR_NAME)
#undef PB__ERR_NAME
    }
    return "PB_E?";
}

const char *pb_strerror(int code)
{
    switch (code) {
    case 0:
        return "ok";
#define PB__ERR_TEXT(name, value, text)                                                            \
    case value:                                                                                    \
        return text;
        PB_ERRNO_MAP(PB__ERR_TEXT)
#undef PB__ERR_TEXT
    }
    return "unknown error";
}

void pb_err_clear(struct pb_err *err)
{
    if (err)
        memset(err, 0, sizeof(*err));
}

int pb_err_vset(struct pb_err *err, int code, const char *fmt, va_list ap)
{
    if (err) {
        err->code = code;
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        err->file = NULL;
        err->line = err->col = 0;
    }
    return code;
}

int pb_err_set(struct pb_err *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pb_err_vset(err, code, fmt, ap);
    va_end(ap);
    return code;
}

int pb_err_at(struct pb_err *err, int code, const char *file, int line, int col, const char *fmt,
              ...)
{
    va_list ap;
    va_start(ap, fmt);
    pb_err_vset(err, code, fmt, ap);
    va_end(ap);
    if (err) {
        err->file = file;
        err->line = line;
        err->col = col;
    }
    return code;
}

const char *pb_err_format(const struct pb_err *err, char *buf, unsigned long len)
{
    if (!err || !buf || len == 0)
        return "";
    const char *msg = err->msg[0] ? err->msg : pb_strerror(err->code);
    if (err->file)
        snprintf(buf, len, "%s:%d:%d: %s", err->file, err->line, err->col, msg);
    else
        snprintf(buf, len, "%s", msg);
    return buf;
}
