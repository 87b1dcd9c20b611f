/* ui.c - the dashboard's files under /ui, from the table compiled into the
 * binary (ui_assets.h): nothing is read from disk or fetched at run time.
 *
 * The files are the application only: every piece of data comes from /api
 * with the admin token, which the page keeps in session storage. Each
 * answer carries a Content-Security-Policy that lets the page load its own
 * scripts and styles and talk to this server only (no inline script, no
 * framing), and an ETag, so a browser revalidates instead of downloading
 * again. Listener thread: answered at once, from memory. */
#include <stdio.h>
#include <string.h>

#include "admin/api.h"
#include "admin/ui_assets.h"

static const char csp[] = "default-src 'none'; script-src 'self'; style-src 'self'; "
                          "img-src 'self' data:; connect-src 'self'; font-src 'self'; "
                          "base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

void pb_admin_ui(void *arg, struct pb_http_request *r)
{
    (void)arg;
    const char *path = pb_http_request_path(r);
    if (strcmp(path, "/ui") == 0) {
        struct pb_http_header h = {"Location", "/ui/"};
        pb_http_respond(r, 308, "text/plain; charset=utf-8", "/ui/\n", 5, &h, 1);
        return;
    }
    if (strcmp(path, "/ui/") == 0)
        path = "/ui/index.html";
    const struct pb_ui_asset *a = NULL;
    for (size_t i = 0; pb_ui_assets[i].path; i++)
        if (strcmp(pb_ui_assets[i].path, path) == 0)
            a = &pb_ui_assets[i];
    struct pb_http_header h[] = {
        {"Content-Security-Policy", csp},
        {"X-Content-Type-Options", "nosniff"},
        {"Referrer-Policy", "no-referrer"},
        {"X-Frame-Options", "DENY"},
        {"Cross-Origin-Opener-Policy", "same-origin"},
        {"Cache-Control", "no-cache"},
        {"ETag", a ? a->etag : ""},
    };
    size_t nh = sizeof(h) / sizeof(h[0]);
    if (!a) {
        static const char nf[] = "no such file\n";
        pb_http_respond(r, 404, "text/plain; charset=utf-8", nf, sizeof(nf) - 1, h, nh - 1);
        return;
    }
    const char *inm = pb_http_request_header(r, "If-None-Match");
    if (inm && strstr(inm, a->etag)) {
        pb_http_respond(r, 304, a->content_type, "", 0, h, nh);
        return;
    }
    pb_http_respond(r, 200, a->content_type, a->data, a->len, h, nh);
}
