/* cmd_endpoints.c - `patchbay endpoints ...`: managed webhook endpoints of a
 * running daemon, through its admin API. */
#include <curl/curl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static void usage(void)
{
    fprintf(stderr,
            "usage: patchbay endpoints list [--pipeline P] [--output O]\n"
            "       patchbay endpoints create --output O --endpoint-url URL [--event TYPE]... "
            "[--pipeline P] [--rate-limit R] [--description D]\n"
            "       patchbay endpoints show|secret|rotate|disable|enable|delete ID\n"
            "       patchbay endpoints recover ID --since (UNIX_MS | YYYY-MM-DDTHH:MM:SSZ)\n");
}

static void print_json(json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2));
    printf("%s\n", s ? s : "");
    free(s);
}

int pb_cmd_endpoints(int argc, char **argv)
{
    const char *url = getenv("PATCHBAY_URL"), *token = getenv("PATCHBAY_ADMIN_TOKEN");
    const char *pipeline = NULL, *output = NULL, *target = NULL, *since = NULL, *rate = NULL,
               *desc = NULL;
    const char *pos[2] = {0};
    size_t npos = 0;
    json_t *events = json_array();
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
        else if (!strcmp(a, "--endpoint-url"))
            slot = &target;
        else if (!strcmp(a, "--since"))
            slot = &since;
        else if (!strcmp(a, "--rate-limit"))
            slot = &rate;
        else if (!strcmp(a, "--description"))
            slot = &desc;
        else if (!strcmp(a, "--event")) {
            if (i + 1 >= argc)
                goto bad;
            json_array_append_new(events, json_string(argv[++i]));
            continue;
        } else if (a[0] == '-')
            goto bad;
        else if (npos < 2)
            pos[npos++] = a;
        else
            goto bad;
        if (slot) {
            if (i + 1 >= argc)
                goto bad;
            *slot = argv[++i];
        }
    }
    if (!pos[0])
        goto bad;
    if (!url || !*url)
        url = "http://127.0.0.1:8080";
    curl_global_init(CURL_GLOBAL_DEFAULT);
    char path[1024], q[700] = "";
    json_t *body = NULL;
    long status = 0, want = 200;
    const char *verb = pos[0], *id = pos[1];
    char *payload = NULL;
    const char *method = "POST";
    if (!strcmp(verb, "list")) {
        pb_cli_append_arg(q, sizeof(q), "pipeline", pipeline);
        pb_cli_append_arg(q, sizeof(q), "output", output);
        snprintf(path, sizeof(path), "/api/endpoints%s", q);
        method = "GET";
    } else if (!strcmp(verb, "create")) {
        /* The endpoint's URL may be given as the second word or --endpoint-url. */
        const char *ep = target ? target : id;
        json_t *in =
            json_pack("{s:s?, s:s?, s:s?, s:O, s:s?, s:s?}", "pipeline", pipeline, "output", output,
                      "url", ep, "events", events, "rate_limit", rate, "description", desc);
        payload = in ? json_dumps(in, JSON_COMPACT) : NULL;
        json_decref(in);
        snprintf(path, sizeof(path), "/api/endpoints");
        want = 201;
    } else if (id && (!strcmp(verb, "show") || !strcmp(verb, "secret"))) {
        snprintf(path, sizeof(path), "/api/endpoints/%s%s", id,
                 !strcmp(verb, "secret") ? "/secret" : "");
        method = "GET";
    } else if (id &&
               (!strcmp(verb, "rotate") || !strcmp(verb, "disable") || !strcmp(verb, "enable"))) {
        snprintf(path, sizeof(path), "/api/endpoints/%s/%s", id, verb);
    } else if (id && !strcmp(verb, "delete")) {
        snprintf(path, sizeof(path), "/api/endpoints/%s", id);
        method = "DELETE";
        want = 204;
    } else if (id && !strcmp(verb, "recover") && since) {
        pb_cli_append_arg(q, sizeof(q), "since", since);
        snprintf(path, sizeof(path), "/api/endpoints/%s/recover%s", id, q);
    } else {
        curl_global_cleanup();
        goto bad;
    }
    status = pb_cli_request(url, token, method, path, payload, &body);
    int rc = 0;
    if (status != want)
        rc = pb_cli_fail_status(status, body);
    else if (!strcmp(verb, "delete"))
        printf("deleted endpoint %s\n", id);
    else if (!strcmp(verb, "recover"))
        printf("recovered endpoint %s: %lld delivery(ies) sent again\n", id,
               (long long)json_integer_value(json_object_get(body, "replayed")));
    else
        print_json(body);
    free(payload);
    json_decref(body);
    json_decref(events);
    curl_global_cleanup();
    return rc;
bad:
    json_decref(events);
    usage();
    return 2;
}
