/* log.c - stderr logging, human lines or JSON lines.
 *
 * A message is "event text key=value key=value". In JSON mode the leading
 * text becomes "msg" and each key=value pair (values may be "quoted") becomes
 * a field. One write(2) per line so concurrent threads never interleave. */
#include <stdarg.h>
#include <stdbool.h>
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

/* An integer as JSON writes it: -?(0|[1-9][0-9]*), at most 18 digits. */
static bool is_integer(const char *s, size_t n)
{
    size_t i = n && s[0] == '-' ? 1 : 0;
    if (i == n || n - i > 18 || (s[i] == '0' && n - i > 1))
        return false;
    for (; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

/* A quoted value as pb_log_value escaped it, decoded and appended to buf as
 * JSON string content. */
static size_t json_unescape(char *buf, size_t pos, size_t cap, const char *s, size_t n)
{
    for (size_t i = 0; i < n && pos + 7 < cap; i++) {
        char c = s[i];
        if (c == '\\' && i + 1 < n) {
            char e = s[++i];
            if (e == 'n')
                c = '\n';
            else if (e == 'r')
                c = '\r';
            else if (e == 't')
                c = '\t';
            else if (e == 'x') {
                unsigned v = 0;
                int got = 0;
                for (int k = 0; k < 2 && i + 1 < n; k++) {
                    char h = s[i + 1];
                    unsigned d = (h >= '0' && h <= '9')   ? (unsigned)(h - '0')
                                 : (h >= 'a' && h <= 'f') ? (unsigned)(h - 'a' + 10)
                                                          : 16;
                    if (d == 16)
                        break;
                    v = v * 16 + d;
                    i++;
                    got++;
                }
                c = got ? (char)v : 'x';
            } else {
                c = e; /* \" and \\ */
            }
        }
        pos = json_escape(buf, pos, cap, &c, 1);
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
        bool quoted = *v == '"';
        if (quoted) {
            v++;
            vend = v;
            while (*vend && *vend != '"')
                vend += (*vend == '\\' && vend[1]) ? 2 : 1;
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
        }
        if (!quoted && is_integer(v, (size_t)(vend - v))) {
            /* attempt=3, status=503: a number in JSON too */
            size_t n = (size_t)(vend - v);
            if (pos + n < cap) {
                memcpy(buf + pos, v, n);
                pos += n;
            }
        } else {
            if (pos < cap)
                buf[pos++] = '"';
            pos = quoted ? json_unescape(buf, pos, cap, v, (size_t)(vend - v))
                         : json_escape(buf, pos, cap, v, (size_t)(vend - v));
            if (pos < cap)
                buf[pos++] = '"';
        }
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
    static const char hex[] = "0123456789abcdef";
    size_t j = 0;
    for (size_t i = 0; s && s[i]; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[4];
        size_t n = 0;
        if (c == '"' || c == '\\') {
            esc[n++] = '\\';
            esc[n++] = (char)c;
        } else if (c == '\n' || c == '\r' || c == '\t') {
            esc[n++] = '\\';
            esc[n++] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
        } else if (c < 0x20 || c == 0x7f) {
            esc[n++] = '\\';
            esc[n++] = 'x';
            esc[n++] = hex[c >> 4];
            esc[n++] = hex[c & 15];
        } else {
            esc[n++] = (char)c;
        }
        if (j + n + 1 > len)
            break; /* never half an escape */
        memcpy(buf + j, esc, n);
        j += n;
    }
    if (len)
        buf[j] = 0;
    return buf;
}
