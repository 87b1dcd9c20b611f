/* listen.c - the text of server.listen as a socket address: one parser for
 * the listener and for lint, so the two never disagree. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/listen.h"
#include "patchbay/pb_err.h"

/* "host:port", "[v6]:port" or ":port". */
int pb_listen_parse(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[256];
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s + strlen(s) - 1)
        return PB_EINVAL;
    size_t hl = (size_t)(colon - s);
    if (hl >= sizeof(host))
        return PB_EINVAL;
    memcpy(host, s, hl);
    host[hl] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535)
        return PB_EINVAL;
    memset(ss, 0, sizeof(*ss));
    if (host[0] == '[') {
        size_t l = strlen(host);
        if (l < 2 || host[l - 1] != ']')
            return PB_EINVAL;
        host[l - 1] = 0;
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host + 1, &a->sin6_addr) != 1)
            return PB_EINVAL;
        *len = sizeof(*a);
        return 0;
    }
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    if (hl == 0 || strcmp(host, "0.0.0.0") == 0)
        a->sin_addr.s_addr = htonl(INADDR_ANY);
    else if (strcmp(host, "localhost") == 0)
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    else if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
        return PB_EINVAL;
    *len = sizeof(*a);
    return 0;
}
