/* listen.h - parsing server.listen (listen.c). */
#ifndef PB_NET_LISTEN_H
#define PB_NET_LISTEN_H

#include <sys/socket.h>

/* "host:port", "[v6]:port" or ":port"; host an IPv4 or IPv6 literal,
 * localhost or 0.0.0.0; port 0..65535. 0 or PB_EINVAL. */
int pb_listen_parse(const char *s, struct sockaddr_storage *ss, socklen_t *len);

#endif
