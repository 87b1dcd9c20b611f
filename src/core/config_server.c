/* config_server.c - the server block of patchbay.yaml (the shared
 * listener, the admin token, the dashboard) as a field table, decoded by
 * config.c with the rest of the file. Data only: no threads. */
#include <stddef.h>

#include "core/engine.h"

const struct pb_field pb__server_fields[] = {
    {.name = "listen",
     .type = PB_F_STR,
     .offset = offsetof(struct pb_server_conf, listen),
     .def = "127.0.0.1:8080",
     .doc = "address:port of the shared HTTP listener"},
    {.name = "admin_token",
     .type = PB_F_SECRET,
     .offset = offsetof(struct pb_server_conf, admin_token),
     .doc = "bearer token for /api; the admin API is disabled when empty"},
    {.name = "max_connections",
     .type = PB_F_INT,
     .offset = offsetof(struct pb_server_conf, max_connections),
     .def = "1024",
     .min = 1,
     .max = 100000,
     .doc = "simultaneous client connections"},
    {.name = "threads",
     .type = PB_F_INT,
     .offset = offsetof(struct pb_server_conf, threads),
     .def = "1",
     .min = 1,
     .max = 64,
     .doc = "listener threads (one carries tens of thousands of requests/s)"},
    {.name = "connection_timeout",
     .type = PB_F_DURATION,
     .offset = offsetof(struct pb_server_conf, connection_timeout_ms),
     .def = "30s",
     .doc = "a client connection silent for this long, or whose request has not fully "
            "arrived this long after it began, is closed"},
    {.name = "ui",
     .type = PB_F_BOOL,
     .offset = offsetof(struct pb_server_conf, ui),
     .def = "true",
     .doc = "serve the dashboard at /ui (it needs admin_token)"},
    {0},
};
