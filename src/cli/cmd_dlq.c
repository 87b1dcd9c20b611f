/* cmd_dlq.c - `patchbay dlq ...`: the dead-letter queue of a running daemon,
 * through its admin API. */
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
static long request(const char *base, const char *token, const char *method, const char *path,
                    json_t **out)
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
    if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
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

static int fail_status(long status, json_t *body)
{
    if (status == 0)
        return 1;
    const char *msg = json_string_value(json_object_get(body, "error"));
    fprintf(stderr, "patchbay: HTTP %ld: %s\n", status, msg ? msg : "request failed");
    return 1;
}

static void append_arg(char *q, size_t len, const char *name, const char *value)
{
    if (!value)
        return;
    char *esc = curl_easy_escape(NULL, value, 0);
    size_t used = strlen(q);
    snprintf(q + used, len - used, "%s%s=%s", used ? "&" : "?", name, esc ? esc : "");
    curl_free(esc);
}

static bool is_id(const char *s)
{
    if (!s || !*s || strlen(s) > 18)
        return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return false;
    return true;
}

static void print_table(json_t *list)
{
    json_t *items = json_object_get(list, "items");
    printf("%-10s %-16s %-16s %-30s %8s %6s  %s\n", "ID", "PIPELINE", "OUTPUT", "MESSAGE",
           "ATTEMPTS", "STATUS", "LAST ERROR");
    size_t i;
    json_t *it;
    json_array_foreach(items, i, it)
    {
        const char *err = json_string_value(json_object_get(it, "last_error"));
        char short_err[61];
        snprintf(short_err, sizeof(short_err), "%s", err ? err : "");
        printf("%-10lld %-16s %-16s %-30s %8lld %6lld  %s\n",
               (long long)json_integer_value(json_object_get(it, "id")),
               json_string_value(json_object_get(it, "pipeline")),
               json_string_value(json_object_get(it, "output")),
               json_string_value(json_object_get(it, "message_id")),
               (long long)json_integer_value(json_object_get(it, "attempts")),
               (long long)json_integer_value(json_object_get(it, "last_status")), short_err);
    }
    json_t *next = json_object_get(list, "next_after");
    if (json_is_integer(next))
        printf("(more: --after %lld)\n", (long long)json_integer_value(next));
    else if (json_array_size(items) == 0)
        printf("(the dead-letter queue is empty)\n");
}

int pb_cmd_dlq(int argc, char **argv)
{
    const char *url = getenv("PATCHBAY_URL"), *token = getenv("PATCHBAY_ADMIN_TOKEN");
    const char *pipeline = NULL, *output = NULL, *limit = NULL, *after = NULL;
    const char *pos[3] = {0};
    size_t npos = 0;
    bool all = false, as_json = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = NULL;
        if (!strcmp(a, "--url"))
            slot = &url;
        else if (!strcmp(a, "--token"))
            slot = &token;
        else if (!strcmp(a, "--pipeline"))
            slot = &pipeline;
        else if (!strcmp(a, "--output"))
            slot = &output;
        else if (!strcmp(a, "--limit"))
            slot = &limit;
        else if (!strcmp(a, "--after"))
            slot = &after;
        else if (!strcmp(a, "--all"))
            all = true;
        else if (!strcmp(a, "--json"))
            as_json = true;
        else if (a[0] == '-') {
            fprintf(stderr, "patchbay dlq: unknown option %s\n", a);
            return 2;
        } else if (npos < 3)
            pos[npos++] = a;
        else {
            fprintf(stderr, "patchbay dlq: too many arguments\n");
            return 2;
        }
        if (slot) {
            if (i + 1 >= argc) {
                fprintf(stderr, "patchbay dlq: %s needs a value\n", a);
                return 2;
            }
            *slot = argv[++i];
        }
    }
    if (!url || !*url)
        url = "http://127.0.0.1:8080";
    char base[1024];
    snprintf(base, sizeof(base), "%s", url);
    size_t bl = strlen(base);
    while (bl && base[bl - 1] == '/')
        base[--bl] = 0;
    const char *verb = pos[0];
    if (!verb) {
        fprintf(stderr, "usage: patchbay dlq list|show ID|replay ID|replay --all|purge ID\n");
        return 2;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    char path[1024] = "", q[900] = "";
    json_t *body = NULL;
    long status;
    int rc = 0;
    if (!strcmp(verb, "list")) {
        append_arg(q, sizeof(q), "pipeline", pipeline);
        append_arg(q, sizeof(q), "output", output);
        append_arg(q, sizeof(q), "limit", limit);
        append_arg(q, sizeof(q), "after", after);
        snprintf(path, sizeof(path), "/api/dead-letters%s", q);
        status = request(base, token, "GET", path, &body);
        if (status != 200)
            rc = fail_status(status, body);
        else if (as_json) {
            char *s = json_dumps(body, JSON_INDENT(2));
            printf("%s\n", s ? s : "");
            free(s);
        } else
            print_table(body);
    } else if (!strcmp(verb, "show") && is_id(pos[1])) {
        snprintf(path, sizeof(path), "/api/dead-letters/%s", pos[1]);
        status = request(base, token, "GET", path, &body);
        if (status != 200)
            rc = fail_status(status, body);
        else {
            char *s = json_dumps(body, JSON_INDENT(2));
            printf("%s\n", s ? s : "");
            free(s);
        }
    } else if (!strcmp(verb, "replay") && (all || is_id(pos[1]))) {
        if (all) {
            append_arg(q, sizeof(q), "pipeline", pipeline);
            append_arg(q, sizeof(q), "output", output);
            snprintf(path, sizeof(path), "/api/dead-letters/replay%s", q);
        } else {
            snprintf(path, sizeof(path), "/api/dead-letters/%s/replay", pos[1]);
        }
        status = request(base, token, "POST", path, &body);
        if (status != 200)
            rc = fail_status(status, body);
        else if (all)
            printf("replayed %lld dead letter(s)\n",
                   (long long)json_integer_value(json_object_get(body, "replayed")));
        else
            printf("replayed dead letter %s as delivery %lld\n", pos[1],
                   (long long)json_integer_value(json_object_get(body, "delivery_id")));
    } else if (!strcmp(verb, "purge") && is_id(pos[1])) {
        snprintf(path, sizeof(path), "/api/dead-letters/%s", pos[1]);
        status = request(base, token, "DELETE", path, &body);
        if (status != 204)
            rc = fail_status(status, body);
        else
            printf("purged dead letter %s\n", pos[1]);
    } else {
        fprintf(stderr, "usage: patchbay dlq list|show ID|replay ID|replay --all|purge ID\n");
        rc = 2;
    }
    json_decref(body);
    curl_global_cleanup();
    return rc;
}
