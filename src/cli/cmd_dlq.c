/* cmd_dlq.c - `patchbay dlq ...`: the dead-letter queue of a running daemon,
 * through its admin API. */
#include <curl/curl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

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
        pb_cli_append_arg(q, sizeof(q), "pipeline", pipeline);
        pb_cli_append_arg(q, sizeof(q), "output", output);
        pb_cli_append_arg(q, sizeof(q), "limit", limit);
        pb_cli_append_arg(q, sizeof(q), "after", after);
        snprintf(path, sizeof(path), "/api/dead-letters%s", q);
        status = pb_cli_request(base, token, "GET", path, NULL, &body);
        if (status != 200)
            rc = pb_cli_fail_status(status, body);
        else if (as_json) {
            char *s = json_dumps(body, JSON_INDENT(2));
            printf("%s\n", s ? s : "");
            free(s);
        } else
            print_table(body);
    } else if (!strcmp(verb, "show") && is_id(pos[1])) {
        snprintf(path, sizeof(path), "/api/dead-letters/%s", pos[1]);
        status = pb_cli_request(base, token, "GET", path, NULL, &body);
        if (status != 200)
            rc = pb_cli_fail_status(status, body);
        else {
            char *s = json_dumps(body, JSON_INDENT(2));
            printf("%s\n", s ? s : "");
            free(s);
        }
    } else if (!strcmp(verb, "replay") && (all || is_id(pos[1]))) {
        if (all) {
            pb_cli_append_arg(q, sizeof(q), "pipeline", pipeline);
            pb_cli_append_arg(q, sizeof(q), "output", output);
            snprintf(path, sizeof(path), "/api/dead-letters/replay%s", q);
        } else {
            snprintf(path, sizeof(path), "/api/dead-letters/%s/replay", pos[1]);
        }
        status = pb_cli_request(base, token, "POST", path, NULL, &body);
        if (status != 200)
            rc = pb_cli_fail_status(status, body);
        else if (all)
            printf("replayed %lld dead letter(s)\n",
                   (long long)json_integer_value(json_object_get(body, "replayed")));
        else
            printf("replayed dead letter %s as delivery %lld\n", pos[1],
                   (long long)json_integer_value(json_object_get(body, "delivery_id")));
    } else if (!strcmp(verb, "purge") && is_id(pos[1])) {
        snprintf(path, sizeof(path), "/api/dead-letters/%s", pos[1]);
        status = pb_cli_request(base, token, "DELETE", path, NULL, &body);
        if (status != 204)
            rc = pb_cli_fail_status(status, body);
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
