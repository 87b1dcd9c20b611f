/* jsonschema_format.c - the "format" checks a schema may assert: dates and
 * times (RFC 3339), durations (ISO 8601, as RFC 3339 appendix A), e-mail
 * addresses, host names, IPv4/IPv6 addresses, URIs and URI references,
 * UUIDs, JSON pointers and regular expressions. A format this file does not
 * know passes (the specification's rule). Pure functions; any thread. */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonschema_int.h"

static bool digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

static int num(const char *s, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    return v;
}

static bool date_ok(const char *s, size_t len)
{
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (len != 10 || s[4] != '-' || s[7] != '-' || !digits(s, 4) || !digits(s + 5, 2) ||
        !digits(s + 8, 2))
        return false;
    int y = num(s, 4), m = num(s + 5, 2), d = num(s + 8, 2);
    if (m < 1 || m > 12 || d < 1 || d > mdays[m - 1])
        return false;
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return !(m == 2 && d == 29 && !leap);
}

static bool time_ok(const char *s, size_t len)
{
    if (len < 9 || s[2] != ':' || s[5] != ':' || !digits(s, 2) || !digits(s + 3, 2) ||
        !digits(s + 6, 2))
        return false;
    int h = num(s, 2), mi = num(s + 3, 2), sec = num(s + 6, 2);
    size_t i = 8;
    if (i < len && s[i] == '.') {
        size_t j = ++i;
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == j)
            return false;
    }
    if (i >= len)
        return false;
    int oh = 0, om = 0, sign = 0;
    if (s[i] == 'Z' || s[i] == 'z') {
        if (i + 1 != len)
            return false;
    } else if (s[i] == '+' || s[i] == '-') {
        if (len - i != 6 || s[i + 3] != ':' || !digits(s + i + 1, 2) || !digits(s + i + 4, 2))
            return false;
        sign = s[i] == '+' ? 1 : -1;
        oh = num(s + i + 1, 2);
        om = num(s + i + 4, 2);
        if (oh > 23 || om > 59)
            return false;
    } else {
        return false;
    }
    if (h > 23 || mi > 59 || sec > 60)
        return false;
    if (sec == 60) {
        /* a leap second is 23:59:60 in UTC */
        int utc = (h * 60 + mi - sign * (oh * 60 + om) + 2880) % 1440;
        if (utc != 23 * 60 + 59)
            return false;
    }
    return true;
}

static bool datetime_ok(const char *s, size_t len)
{
    if (len < 20 || (s[10] != 'T' && s[10] != 't'))
        return false;
    return date_ok(s, 10) && time_ok(s + 11, len - 11);
}

static bool duration_ok(const char *s, size_t len)
{
    if (len < 2 || s[0] != 'P')
        return false;
    size_t i = 1;
    bool in_time = false, any = false, weeks = false, other = false;
    const char *order = "YMD";
    const char *torder = "HMS";
    size_t pos = 0, tpos = 0;
    while (i < len) {
        if (s[i] == 'T') {
            if (in_time)
                return false;
            in_time = true;
            i++;
            if (i == len)
                return false;
            continue;
        }
        size_t j = i;
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == j || i == len)
            return false;
        char u = s[i++];
        any = true;
        if (u == 'W' && !in_time) {
            weeks = true;
            continue;
        }
        other = true;
        const char *o = in_time ? torder : order;
        size_t *p = in_time ? &tpos : &pos;
        const char *at = strchr(o + *p, u);
        if (!at || !u)
            return false;
        *p = (size_t)(at - o) + 1;
    }
    return any && !(weeks && other) && !(in_time && tpos == 0);
}

static bool hostname_ok(const char *s, size_t len)
{
    if (len == 0 || len > 253)
        return false;
    size_t label = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (ch == '.') {
            if (label == 0 || s[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        if (!(isalnum((unsigned char)ch) || ch == '-'))
            return false;
        if (label == 0 && ch == '-')
            return false;
        if (++label > 63)
            return false;
    }
    return label > 0 && s[len - 1] != '-';
}

static bool email_ok(const char *s, size_t len)
{
    const char *at = memrchr(s, '@', len);
    if (!at || at == s)
        return false;
    size_t ll = (size_t)(at - s), dl = len - ll - 1;
    if (s[0] == '"') {
        if (ll < 2 || s[ll - 1] != '"')
            return false;
    } else {
        if (s[0] == '.' || s[ll - 1] == '.')
            return false;
        for (size_t i = 0; i < ll; i++) {
            unsigned char ch = (unsigned char)s[i];
            if (ch == '.' && s[i + 1] == '.')
                return false;
            if (!(isalnum(ch) || ch >= 0x80 || strchr("!#$%&'*+-/=?^_`{|}~.", ch)))
                return false;
        }
    }
    const char *d = at + 1;
    if (dl > 2 && d[0] == '[' && d[dl - 1] == ']') {
        char ip[64];
        if (dl - 2 >= sizeof(ip))
            return false;
        if (dl > 7 && strncmp(d + 1, "IPv6:", 5) == 0) {
            snprintf(ip, sizeof(ip), "%.*s", (int)(dl - 7), d + 6);
            struct in6_addr a6;
            return inet_pton(AF_INET6, ip, &a6) == 1;
        }
        snprintf(ip, sizeof(ip), "%.*s", (int)(dl - 2), d + 1);
        struct in_addr a4;
        return inet_pton(AF_INET, ip, &a4) == 1;
    }
    return hostname_ok(d, dl);
}

static bool ipv4_ok(const char *s, size_t len)
{
    int parts = 0;
    size_t i = 0;
    while (i <= len) {
        size_t j = i;
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
        size_t n = i - j;
        if (n == 0 || n > 3 || (n > 1 && s[j] == '0') || num(s + j, n) > 255)
            return false;
        parts++;
        if (i == len)
            break;
        if (s[i] != '.')
            return false;
        i++;
    }
    return parts == 4;
}

static bool ipv6_ok(const char *s, size_t len)
{
    char buf[64];
    struct in6_addr a;
    if (len >= sizeof(buf) || memchr(s, '%', len))
        return false;
    memcpy(buf, s, len);
    buf[len] = 0;
    return inet_pton(AF_INET6, buf, &a) == 1;
}

static bool uuid_ok(const char *s, size_t len)
{
    if (len != 36)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (!isxdigit((unsigned char)s[i])) {
            return false;
        }
    }
    return true;
}

/* URI characters (RFC 3986): unreserved, reserved, and valid %XX. */
static bool uri_chars(const char *s, size_t len, bool iri)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '%') {
            if (i + 2 >= len + 0 || !isxdigit((unsigned char)s[i + 1]) ||
                !isxdigit((unsigned char)s[i + 2]))
                return false;
            i += 2;
        } else if (ch >= 0x80) {
            if (!iri)
                return false;
        } else if (!(isalnum(ch) || strchr("-._~:/?#[]@!$&'()*+,;=", ch))) {
            return false;
        }
    }
    return true;
}

static bool uri_ref_ok(const char *s, size_t len, bool iri)
{
    if (!uri_chars(s, len, iri))
        return false;
    /* '#' at most once; brackets only around an IPv6 host */
    const char *h = memchr(s, '#', len);
    if (h && memchr(h + 1, '#', len - (size_t)(h - s) - 1))
        return false;
    return true;
}

static bool uri_ok(const char *s, size_t len, bool iri)
{
    size_t i = 0;
    if (len == 0 || !isalpha((unsigned char)s[0]))
        return false;
    while (i < len && (isalnum((unsigned char)s[i]) || s[i] == '+' || s[i] == '-' || s[i] == '.'))
        i++;
    if (i == len || s[i] != ':')
        return false;
    if (!uri_ref_ok(s, len, iri))
        return false;
    /* an authority: no '[' except around the host */
    if (len > i + 2 && s[i + 1] == '/' && s[i + 2] == '/') {
        const char *a = s + i + 3;
        size_t al = strcspn(a, "/?#");
        if (al > len - i - 3)
            al = len - i - 3;
        const char *at = memrchr(a, '@', al);
        const char *host = at ? at + 1 : a;
        size_t hl = al - (size_t)(host - a);
        if (memchr(host, '[', hl) && host[0] != '[')
            return false;
        if (host[0] != '[' && memchr(host, ':', hl)) {
            const char *colon = memchr(host, ':', hl);
            if (!digits(colon + 1, hl - (size_t)(colon + 1 - host)))
                return false;
        }
    }
    return true;
}

static bool json_pointer_ok(const char *s, size_t len)
{
    if (len && s[0] != '/')
        return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] == '~' && (i + 1 >= len || (s[i + 1] != '0' && s[i + 1] != '1')))
            return false;
    return true;
}

static bool rel_json_pointer_ok(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len && s[i] >= '0' && s[i] <= '9')
        i++;
    if (i == 0 || (i > 1 && s[0] == '0'))
        return false;
    if (i == len)
        return true;
    if (s[i] == '#')
        return i + 1 == len;
    return json_pointer_ok(s + i, len - i);
}

static bool regex_ok(const char *s, size_t len)
{
    pcre2_code *re = js_re_compile(s, len);
    if (!re)
        return false;
    pcre2_code_free(re);
    return true;
}

bool js_format_ok(const char *format, const char *s, size_t len)
{
    if (strcmp(format, "date-time") == 0)
        return datetime_ok(s, len);
    if (strcmp(format, "date") == 0)
        return date_ok(s, len);
    if (strcmp(format, "time") == 0)
        return time_ok(s, len);
    if (strcmp(format, "duration") == 0)
        return duration_ok(s, len);
    if (strcmp(format, "email") == 0 || strcmp(format, "idn-email") == 0)
        return email_ok(s, len);
    if (strcmp(format, "hostname") == 0)
        return hostname_ok(s, len);
    if (strcmp(format, "ipv4") == 0)
        return ipv4_ok(s, len);
    if (strcmp(format, "ipv6") == 0)
        return ipv6_ok(s, len);
    if (strcmp(format, "uuid") == 0)
        return uuid_ok(s, len);
    if (strcmp(format, "uri") == 0)
        return uri_ok(s, len, false);
    if (strcmp(format, "iri") == 0)
        return uri_ok(s, len, true);
    if (strcmp(format, "uri-reference") == 0)
        return uri_ref_ok(s, len, false);
    if (strcmp(format, "iri-reference") == 0)
        return uri_ref_ok(s, len, true);
    if (strcmp(format, "json-pointer") == 0)
        return json_pointer_ok(s, len);
    if (strcmp(format, "relative-json-pointer") == 0)
        return rel_json_pointer_ok(s, len);
    if (strcmp(format, "regex") == 0)
        return regex_ok(s, len);
    return true;
}
