/* jsonschema_uri.c - URI references for JSON Schema identifiers: RFC 3986
 * resolution of a reference against a base ($id, $ref) and percent-decoding
 * of fragments. Pure functions; any thread. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonschema_int.h"

/* ---- URIs --------------------------------------------------------------------- */

struct uri {
    const char *scheme, *auth, *path, *query, *frag;
    size_t ls, la, lp, lq, lf;
    bool has_scheme, has_auth, has_query, has_frag;
};

static void uri_parse(const char *s, struct uri *u)
{
    memset(u, 0, sizeof(*u));
    const char *p = s;
    const char *c = p;
    while (*c && *c != ':' && *c != '/' && *c != '?' && *c != '#')
        c++;
    if (*c == ':' && c > p) {
        u->has_scheme = true;
        u->scheme = p;
        u->ls = (size_t)(c - p);
        p = c + 1;
    }
    if (p[0] == '/' && p[1] == '/') {
        u->has_auth = true;
        p += 2;
        u->auth = p;
        while (*p && *p != '/' && *p != '?' && *p != '#')
            p++;
        u->la = (size_t)(p - u->auth);
    }
    u->path = p;
    while (*p && *p != '?' && *p != '#')
        p++;
    u->lp = (size_t)(p - u->path);
    if (*p == '?') {
        u->has_query = true;
        u->query = ++p;
        while (*p && *p != '#')
            p++;
        u->lq = (size_t)(p - u->query);
    }
    if (*p == '#') {
        u->has_frag = true;
        u->frag = p + 1;
        u->lf = strlen(u->frag);
    }
}

/* RFC 3986 5.2.4, in place on a NUL-terminated path. */
static void remove_dots(char *in)
{
    char *out = in, *r = in;
    char *start = in;
    while (*r) {
        if (strncmp(r, "../", 3) == 0)
            r += 3;
        else if (strncmp(r, "./", 2) == 0)
            r += 2;
        else if (strncmp(r, "/./", 3) == 0)
            r += 2;
        else if (strcmp(r, "/.") == 0)
            r[1] = 0;
        else if (strncmp(r, "/../", 4) == 0 || strcmp(r, "/..") == 0) {
            if (r[3] == 0)
                r[2] = '/', r += 2;
            else
                r += 3;
            while (out > start && *--out != '/')
                ;
            *out = 0;
        } else if (strcmp(r, ".") == 0 || strcmp(r, "..") == 0) {
            r += strlen(r);
        } else {
            if (*r == '/')
                *out++ = *r++;
            while (*r && *r != '/')
                *out++ = *r++;
        }
    }
    *out = 0;
}

/* The absolute URI of reference ref against base (malloc'd), fragment kept. */
char *js_uri_resolve(const char *base, const char *ref)
{
    struct uri b, r;
    uri_parse(base, &b);
    uri_parse(ref, &r);
    size_t cap = strlen(base) + strlen(ref) + 8;
    char *path = calloc(1, cap), *out = calloc(1, cap);
    const struct uri *auth_from, *query_from;
    if (!path || !out)
        goto fail;
    const char *scheme = b.scheme;
    size_t ls = b.ls;
    bool has_scheme = b.has_scheme;
    if (r.has_scheme) {
        scheme = r.scheme, ls = r.ls;
        has_scheme = true;
        auth_from = &r;
        memcpy(path, r.path, r.lp);
        query_from = &r;
    } else if (r.has_auth) {
        auth_from = &r;
        memcpy(path, r.path, r.lp);
        query_from = &r;
    } else {
        auth_from = &b;
        if (r.lp == 0) {
            memcpy(path, b.path, b.lp);
            query_from = r.has_query ? &r : &b;
        } else {
            if (r.path[0] == '/') {
                memcpy(path, r.path, r.lp);
            } else if (b.has_auth && b.lp == 0) {
                path[0] = '/';
                memcpy(path + 1, r.path, r.lp);
            } else {
                const char *slash = NULL;
                for (size_t i = 0; i < b.lp; i++)
                    if (b.path[i] == '/')
                        slash = b.path + i;
                size_t keep = slash ? (size_t)(slash - b.path) + 1 : 0;
                memcpy(path, b.path, keep);
                memcpy(path + keep, r.path, r.lp);
            }
            query_from = &r;
        }
    }
    if (path[0] == '/' || auth_from->has_auth)
        remove_dots(path);
    size_t n = 0;
    if (has_scheme)
        n += (size_t)snprintf(out + n, cap - n, "%.*s:", (int)ls, scheme);
    if (auth_from->has_auth)
        n += (size_t)snprintf(out + n, cap - n, "//%.*s", (int)auth_from->la, auth_from->auth);
    n += (size_t)snprintf(out + n, cap - n, "%s", path);
    if (query_from->has_query)
        n += (size_t)snprintf(out + n, cap - n, "?%.*s", (int)query_from->lq, query_from->query);
    if (r.has_frag)
        snprintf(out + n, cap - n, "#%s", r.frag);
    free(path);
    return out;
fail:
    free(path);
    free(out);
    return NULL;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decode s in place (a fragment). */
void js_pct_decode(char *s)
{
    char *o = s;
    for (char *p = s; *p; p++) {
        if (p[0] == '%' && hexval(p[1]) >= 0 && hexval(p[2]) >= 0) {
            *o++ = (char)(hexval(p[1]) * 16 + hexval(p[2]));
            p += 2;
        } else {
            *o++ = *p;
        }
    }
    *o = 0;
}
