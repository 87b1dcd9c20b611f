/* log.c - stderr logging, human lines or JSON lines.
 *
 * A message is "event text key=value key=value". In JSON mode the leading
 * text becomes "msg" and each key=value pair (values may be "quoted") becomes
 * a field. One write(2) per line so concurrent threads never interleave. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "patchbay/pb_log.h"

int pb_log_level_min = PB_LOG_INFO;
static enum pb_log_format log_format = PB_LOG_HUMAN;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void pb_log_setup(enum pb_log_level min, enum pb_log_format format)
{
    pb_log_level_min = (int)min;
    log_format = format;
}

int pb_log_parse_level(const char *s, enum pb_log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (enum pb_log_level)i;
            return 0;
        }
    }
    return -1;
}

/* Append s to buf as JSON string content. */
static size_t json_escape(char *buf, size_t pos, size_t cap, const char *s, size_t n)
{
    for (size_t i = 0; i < n && pos + 7 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            buf[pos++] = '\\';
            buf[pos++] = (char)c;
        } else if (c < 0x20) {
            pos += (size_t)snprintf(buf + pos, cap - pos, "\\u%04x", c);
        } else {
            buf[pos++] = (char)c;
        }
    }
    return pos;
}

/* Start of the first " key=" token, or NULL. */
static const char *first_field(const char *s)
{
    for (const char *p = strchr(s, ' '); p; p = strchr(p + 1, ' ')) {
        const char *k = p + 1;
        while (*k && *k != ' ' && *k != '=' && *k != '"')
            k++;
        if (*k == '=' && k > p + 1)
            return p;
    }
    return NULL;
}

static size_t format_json(char *buf, size_t cap, const char *ts, const char *level,
                          const char *text)
{
    size_t pos =
        (size_t)snprintf(buf, cap, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"", ts, level);
    const char *f = first_field(text);
    size_t msglen = f ? (size_t)(f - text) : strlen(text);
    pos = json_escape(buf, pos, cap, text, msglen);
    if (pos < cap)
        buf[pos++] = '"';
    const char *p = f;
    while (p && *p) {
        while (*p == ' ')
            p++;
        const char *eq = strchr(p, '=');
        if (!eq)
            break;
        const char *v = eq + 1, *vend;
        if (*v == '"') {
            v++;
            vend = v;
            while (*vend && !(*vend == '"' && vend[-1] != '\\'))
                vend++;
        } else {
            /* Unquoted: up to the next " key=" (names may hold spaces). */
            vend = first_field(v);
            if (!vend)
                vend = v + strlen(v);
        }
        if (pos + 4 < cap) {
            buf[pos++] = ',';
            buf[pos++] = '"';
        }
        pos = json_escape(buf, pos, cap, p, (size_t)(eq - p));
        if (pos + 4 < cap) {
            buf[pos++] = '"';
            buf[pos++] = ':';
            buf[pos++] = '"';
        }
        pos = json_escape(buf, pos, cap, v, (size_t)(vend - v));
        if (pos < cap)
            buf[pos++] = '"';
        p = (*vend == '"') ? vend + 1 : vend;
    }
    if (pos + 2 < cap) {
        buf[pos++] = '}';
    }
    return pos;
}

void pb_log_write(enum pb_log_level level, const char *fmt, ...)
{
    char text[2048], line[4096], ts[40];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);

    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    size_t tl = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + tl, sizeof(ts) - tl, ".%03ldZ", now.tv_nsec / 1000000);

    const char *lname = level_names[level <= PB_LOG_ERROR ? level : PB_LOG_ERROR];
    size_t n;
    if (log_format == PB_LOG_JSON)
        n = format_json(line, sizeof(line) - 1, ts, lname, text);
    else {
        int w = snprintf(line, sizeof(line) - 1, "%s %-5s %s", ts, lname, text);
        n = w < 0 ? 0 : ((size_t)w >= sizeof(line) - 1 ? sizeof(line) - 2 : (size_t)w);
    }
    line[n++] = '\n';
    ssize_t r = write(STDERR_FILENO, line, n);
    (void)r;
}

const char *pb_log_value(const char *s, char *buf, size_t len)
{
    size_t j = 0;
    for (size_t i = 0; s && s[i] && j + 1 < len; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[j++] = c == '"' ? '\'' : (c < 0x20 || c == '\\') ? ' ' : (char)c;
    }
    if (len)
        buf[j] = 0;
    return buf;
}
