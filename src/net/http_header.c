/* http_header.c - what a header from a configuration may hold: the checks
 * every plugin that sends HTTP applies to its static headers. Pure. */
#include <stdbool.h>

#include "patchbay/pb_http.h"

bool pb_http_header_name_ok(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!(*s == '-' || *s == '_' || (*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'z') ||
              (*s >= 'A' && *s <= 'Z')))
            return false;
    return true;
}

bool pb_http_header_value_ok(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 && *s != '\t')
            return false;
    return true;
}
