/* client.c - talking to a running daemon's admin API from the command line. */
#include <curl/curl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

struct body {
    char *p;
    size_t len;
};

static size_t write_cb(char *ptr, size_t size, size_t n, void *arg)
{
    struct body *b = arg;
    size_t add = size * n;
    if (b->len + add > (64u << 20))
        return 0;
    char *np = realloc(b->p, b->len + add + 1);
    if (!np)
        return 0;
    memcpy(np + b->len, ptr, add);
    b->p = np;
    b->len += add;
    b->p[b->len] = 0;
    return add;
}

/* Perform one admin request; returns the HTTP status (0 on transport error)
 * and the parsed JSON body in *out (may be NULL). */
long pb_cli_request(const char *base, const char *token, const char *method, const char *path,
                    const char *body, json_t **out)
{
    char url[2048];
    snprintf(url, sizeof(url), "%s%s", base, path);
    CURL *c = curl_easy_init();
    if (!c)
        return 0;
    struct body b = {0};
    struct curl_slist *h = NULL;
    char auth[1024];
    if (token) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
        h = curl_slist_append(h, auth);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body || strcmp(method, "POST") == 0 || strcmp(method, "PATCH") == 0) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)(body ? strlen(body) : 0));
        h = curl_slist_append(h, "Content-Type: application/json");
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    else
        fprintf(stderr, "patchbay: cannot reach %s: %s\n", base, curl_easy_strerror(rc));
    *out = b.p ? json_loads(b.p, 0, NULL) : NULL;
    free(b.p);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return status;
}

int pb_cli_fail_status(long status, json_t *body)
{
    if (status == 0)
        return 1;
    const char *msg = json_string_value(json_object_get(body, "error"));
    fprintf(stderr, "patchbay: HTTP %ld: %s\n", status, msg ? msg : "request failed");
    return 1;
}

void pb_cli_append_arg(char *q, size_t len, const char *name, const char *value)
{
    if (!value)
        return;
    char *esc = curl_easy_escape(NULL, value, 0);
    size_t used = strlen(q);
    snprintf(q + used, len - used, "%s%s=%s", used ? "&" : "?", name, esc ? esc : "");
    curl_free(esc);
}
