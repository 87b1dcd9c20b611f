/* ui_assets.h - the dashboard's files as compiled into the binary: a table
 * generated from ui/ at build time (cmake/embed_ui.cmake), read-only. */
#ifndef PB_ADMIN_UI_ASSETS_H
#define PB_ADMIN_UI_ASSETS_H

#include <stddef.h>

struct pb_ui_asset {
    const char *path;         /* "/ui/app.js" */
    const char *content_type; /* "text/javascript; charset=utf-8" */
    const unsigned char *data;
    size_t len;
    const char *etag; /* quoted */
};

/* Ends with an entry whose path is NULL. */
extern const struct pb_ui_asset pb_ui_assets[];

#endif
