/* pb_url.h - the authority of a connector's URL (user:password@host:port),
 * read by one parser for every plugin that takes such a URL (redis://,
 * mysql://...), with the same rules and the same messages. */
#ifndef PB_URL_H
#define PB_URL_H

#include <stdbool.h>
#include <stddef.h>

#include "patchbay/pb_err.h"

#define PB_URL_HOST_MAX 255

struct pb_url_authority {
    char *user;     /* percent-decoded (malloc'd); NULL: no userinfo; "" when empty */
    char *password; /* percent-decoded (malloc'd); NULL: no ':' in the userinfo */
    char host[PB_URL_HOST_MAX + 1]; /* an IPv6 address without its [] */
    int port;                       /* default_port when none is given */
    const char *rest;               /* what follows in s: "", "/...", "?..." or "#..." */
};

/* Read the authority at s (what follows "scheme://"): the last '@' ends
 * the userinfo (a password may hold one), a host name, IPv4 or [IPv6], an
 * optional port 1-65535. what names the option in messages ("url", "dsn"),
 * example shows a whole one ("redis://host:6379") when there is no host;
 * host_max (at most PB_URL_HOST_MAX) bounds the host. 0, or PB_ECONFIG or
 * PB_ENOMEM with err (nothing left to free); the text of a password is never
 * in a message. */
int pb_url_authority(const char *s, const char *what, const char *example, int default_port,
                     size_t host_max, struct pb_url_authority *a, struct pb_err *err);
/* Free user and password (the password wiped first). */
void pb_url_authority_free(struct pb_url_authority *a);
/* s[0..n) percent-decoded into a new string; NULL on a bad escape or an
 * escaped NUL (*nomem false) or ENOMEM (*nomem true). */
char *pb_pct_decode(const char *s, size_t n, bool *nomem);

#endif
