/* cmd_init.c - `patchbay init [PATTERN]`: write a starter configuration for
 * a common integration, and a test file next to it, so that
 * `patchbay lint` and `patchbay test` pass before anything is edited.
 *
 * Every value a user must change comes from the environment with a
 * default (${TARGET_URL:-https://...}), the state store follows systemd's
 * StateDirectory ($STATE_DIRECTORY) when there is one, and the admin API
 * stays off until PATCHBAY_ADMIN_TOKEN is set. A pattern may name a plugin
 * this build does not have yet: the file is written all the same, with a
 * note, and lint will say so.
 *
 * Single-threaded. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "patchbay/pb_plugin.h"

#define HEADER                                                                                     \
    "server:\n"                                                                                    \
    "  listen: ${PATCHBAY_LISTEN:-127.0.0.1:8080}\n"                                               \
    "  admin_token: ${PATCHBAY_ADMIN_TOKEN:-}      # /api stays off while this is empty\n"         \
    "state: sqlite:${STATE_DIRECTORY:-./patchbay-data}/state.db\n"                                 \
    "# Partners on internal addresses (10.x, 192.168.x, localhost) must be listed:\n"              \
    "# outbound: { allow: [10.0.0.0/8] }\n"                                                        \
    "shutdown_timeout: 10s\n"                                                                      \
    "\n"

struct pattern {
    const char *name;
    const char *summary;
    const char *input, *output; /* plugins it needs */
    const char *config;
    const char *tests;
};

static const struct pattern patterns[] = {
    {
        .name = "webhook-relay",
        .summary = "webhooks in over HTTP, verified, forwarded to your API with retries",
        .input = "http_server",
        .output = "http",
        .config =
            "# Webhook relay: a partner (a shop, a payment processor) posts webhooks to\n"
            "# /hooks/in. Each is committed before it is acknowledged (202), then forwarded,\n"
            "# mapped, to your API with retries; what your API refuses waits in the\n"
            "# dead-letter queue (patchbay dlq list).\n"
            "#\n"
            "#   patchbay lint patchbay.yaml && patchbay test patchbay.yaml\n"
            "#   TARGET_URL=https://api.internal.example/events patchbay run patchbay.yaml\n" HEADER
            "pipelines:\n"
            "  webhooks:\n"
            "    input:\n"
            "      http_server:\n"
            "        path: /hooks/in\n"
            "        max_body: 1MiB\n"
            "        idempotency: { header: Idempotency-Key, window: 24h }\n"
            "        headers: [X-Event-Type]\n"
            "        # Check who sent it (standard-webhooks, stripe, github, hmac, ...):\n"
            "        # verify: { scheme: standard-webhooks, secret: \"${WEBHOOK_SECRET}\" }\n"
            "    process:\n"
            "      - filter: '.type != \"ping\"'          # the partner's health checks stop here\n"
            "    outputs:\n"
            "      target:\n"
            "        http:\n"
            "          url: ${TARGET_URL:-https://api.example.com/events}\n"
            "          # auth: { bearer: \"${TARGET_TOKEN}\" }\n"
            "          timeout: 10s\n"
            "          map: '{event: (.type // $meta.headers[\"x-event-type\"]), data: "
            "(.data // .), received_at: $meta.received_at}'\n"
            "          retry: { max_attempts: 10, initial: 1s, max: 5m, max_age: 1d }\n",
        .tests = "cases:\n"
                 "  - name: an event is forwarded in the target's shape\n"
                 "    input:\n"
                 "      body: { type: order.paid, data: { id: ord-1, total_cents: 1800 } }\n"
                 "      meta: { received_at: 1700000000000 }\n"
                 "    expect:\n"
                 "      target:\n"
                 "        - { event: order.paid, data: { id: ord-1, total_cents: 1800 }, "
                 "received_at: 1700000000000 }\n"
                 "  - name: the event type may come as a header\n"
                 "    input:\n"
                 "      body: { id: ord-2 }\n"
                 "      headers: { X-Event-Type: order.created }\n"
                 "    expect:\n"
                 "      target: [ { subset: { event: order.created, data: { id: ord-2 } } } ]\n"
                 "  - name: pings go nowhere\n"
                 "    input: { body: { type: ping } }\n"
                 "    expect:\n"
                 "      target: filtered\n"
                 "  - name: the target is down for a while, then takes it\n"
                 "    input: { body: { type: order.paid, data: {} } }\n"
                 "    mock: { outputs: { target: [503, 503, 200] } }\n"
                 "    expect:\n"
                 "      target: [ { attempts: 3, subset: { event: order.paid } } ]\n"
                 "  - name: what the target refuses is dead-lettered with its answer\n"
                 "    input: { body: { type: order.paid, data: {} } }\n"
                 "    mock: { outputs: { target: { status: 422, body: { error: bad event } } } }\n"
                 "    expect:\n"
                 "      target: { dead_letter: \"HTTP 422\" }\n",
    },
    {
        .name = "api-sync",
        .summary = "a REST API polled for changes, each record sent to another API",
        .input = "http_poll",
        .output = "http",
        .config =
            "# API sync: a source API is polled every minute for what changed since the last\n"
            "# run (its cursor is kept with the records it produced, so a restart neither\n"
            "# skips nor repeats), and each record is upserted into a target API.\n"
            "#\n"
            "#   patchbay lint patchbay.yaml && patchbay test patchbay.yaml\n"
            "#   SOURCE_URL=... SOURCE_TOKEN=... TARGET_URL=... patchbay run patchbay.yaml\n" HEADER
            "pipelines:\n"
            "  contacts:\n"
            "    input:\n"
            "      http_poll:\n"
            "        url: ${SOURCE_URL:-https://source.example.com/api/contacts}\n"
            "        interval: 1m\n"
            "        headers: { Authorization: \"Bearer ${SOURCE_TOKEN:-}\" }\n"
            "        items: '.data[]'\n"
            "        pagination: { type: cursor, cursor: '.next_cursor', param: cursor }\n"
            "        cursor: { value: '.updated_at', param: updated_since }\n"
            "    process:\n"
            "      - filter: '.email != null'\n"
            "    outputs:\n"
            "      target:\n"
            "        http:\n"
            "          url: ${TARGET_URL:-https://target.example.com/api/contacts}\n"
            "          method: PUT\n"
            "          timeout: 10s\n"
            "          map: '{external_id: .id, email, name: ([.first_name, .last_name] | "
            "map(select(. != null)) | join(\" \"))}'\n"
            "          retry: { max_attempts: 10, initial: 1s, max: 5m, max_age: 1d }\n",
        .tests = "cases:\n"
                 "  - name: a contact is upserted in the target's shape\n"
                 "    input:\n"
                 "      body: { id: c-1, email: ada@example.com, first_name: Ada, last_name: "
                 "Lovelace, updated_at: \"2024-05-01T10:00:00Z\" }\n"
                 "    expect:\n"
                 "      target: [ { external_id: c-1, email: ada@example.com, name: Ada "
                 "Lovelace } ]\n"
                 "  - name: a contact without an email is not sent\n"
                 "    input: { body: { id: c-2, first_name: Bob } }\n"
                 "    expect:\n"
                 "      target: filtered\n",
    },
    {
        .name = "queue-bridge",
        .summary = "a RabbitMQ queue bridged to NATS JetStream, acknowledged after commit",
        .input = "amqp",
        .output = "nats",
        .config =
            "# Queue bridge: messages consumed from a RabbitMQ queue are acknowledged to\n"
            "# RabbitMQ only once committed here, then published to NATS JetStream, where\n"
            "# the stream's PubAck confirms each. A redelivery carries the same\n"
            "# message_id and is dropped as a duplicate; NATS gets a stable Nats-Msg-Id.\n"
            "#\n"
            "#   patchbay lint patchbay.yaml && patchbay test patchbay.yaml\n"
            "#   RABBITMQ_URL=amqp://... NATS_URL=nats://... patchbay run patchbay.yaml\n" HEADER
            "pipelines:\n"
            "  bridge:\n"
            "    input:\n"
            "      amqp:\n"
            "        url: \"${RABBITMQ_URL:-amqp://guest:guest@rabbitmq.example.com:5672/%2f}\"\n"
            "        queue: events\n"
            "        prefetch: 256\n"
            "        declare:\n"
            "          durable: true\n"
            "          bindings:\n"
            "            - { exchange: events, routing_key: '#', exchange_type: topic }\n"
            "    outputs:\n"
            "      nats:\n"
            "        nats:\n"
            "          url: \"${NATS_URL:-nats://nats.example.com:4222}\"\n"
            "          subject: 'events.{{ $meta.routing_key }}'\n"
            "          retry: { max_attempts: 20, initial: 500ms, max: 1m, max_age: 1d }\n",
        .tests = "cases:\n"
                 "  - name: a message keeps its body and gets a subject from its routing key\n"
                 "    input:\n"
                 "      body: { order_id: o-17, cents: 1700 }\n"
                 "      meta: { exchange: events, routing_key: order.created, message_id: m-17 }\n"
                 "    expect:\n"
                 "      nats:\n"
                 "        - equals: { order_id: o-17, cents: 1700 }\n"
                 "          fields: { subject: events.order.created }\n"
                 "  - name: bytes pass through unchanged\n"
                 "    input:\n"
                 "      raw: '{\"price\": 1.10,  \"sku\": \"A-1\"}'\n"
                 "      meta: { routing_key: price.changed }\n"
                 "    expect:\n"
                 "      nats: [ { raw: '{\"price\": 1.10,  \"sku\": \"A-1\"}' } ]\n",
    },
    {
        .name = "cdc-to-api",
        .summary = "PostgreSQL changes (logical replication) sent to an API, in order per row",
        .input = "postgres_cdc",
        .output = "http",
        .config =
            "# CDC to API: every insert, update and delete of the ERP's customers table,\n"
            "# read from PostgreSQL's own log (logical replication, pgoutput), is sent to a\n"
            "# CRM's API in commit order per row; the LSN is confirmed to PostgreSQL only\n"
            "# after the changes are committed here.\n"
            "#\n"
            "#   patchbay lint patchbay.yaml && patchbay test patchbay.yaml\n"
            "#   ERP_DSN=postgres://... CRM_URL=https://... patchbay run patchbay.yaml\n" HEADER
            "pipelines:\n"
            "  erp-customers:\n"
            "    input:\n"
            "      postgres_cdc:\n"
            "        dsn: \"${ERP_DSN:-postgres://patchbay@erp-db.example.com/erp}\"\n"
            "        slot: patchbay\n"
            "        publication: patchbay\n"
            "        tables: [public.customers]\n"
            "        snapshot: initial\n"
            "    process:\n"
            "      - filter: '.op != \"truncate\"'\n"
            "    outputs:\n"
            "      crm:\n"
            "        http:\n"
            "          url: ${CRM_URL:-https://crm.example.com/api/contacts}\n"
            "          method: PUT\n"
            "          timeout: 10s\n"
            "          map: >-\n"
            "            if .op == \"delete\" then {id: .key.id, deleted: true}\n"
            "            else {id: .after.id, email: .after.email, name: .after.name} end\n"
            "          retry: { max_attempts: 20, initial: 1s, max: 5m, max_age: 3d }\n",
        .tests = "cases:\n"
                 "  - name: an update is sent as the row after it\n"
                 "    input:\n"
                 "      body: { op: update, schema: public, table: customers, key: { id: 7 },\n"
                 "              before: { id: 7, email: a@example.com, name: A },\n"
                 "              after: { id: 7, email: b@example.com, name: A } }\n"
                 "    expect:\n"
                 "      crm: [ { id: 7, email: b@example.com, name: A } ]\n"
                 "  - name: a delete is sent as a tombstone\n"
                 "    input:\n"
                 "      body: { op: delete, schema: public, table: customers, key: { id: 7 }, "
                 "before: { id: 7 } }\n"
                 "    expect:\n"
                 "      crm: [ { id: 7, deleted: true } ]\n"
                 "  - name: a truncate is not sent\n"
                 "    input: { body: { op: truncate, schema: public, table: customers } }\n"
                 "    expect:\n"
                 "      crm: filtered\n",
    },
};

#define NPATTERNS (sizeof(patterns) / sizeof(patterns[0]))

static const char usage_text[] =
    "usage: patchbay init [PATTERN] [--output FILE|-] [--force] [--no-tests] [--list]\n";

static void list(FILE *f)
{
    fprintf(f, "patterns:\n");
    for (size_t i = 0; i < NPATTERNS; i++)
        fprintf(f, "  %-14s %s\n", patterns[i].name, patterns[i].summary);
}

/* Write text to path, refusing to replace a file unless force. */
static int write_file(const char *path, const char *text, bool force)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (force ? O_TRUNC : O_EXCL), 0644);
    if (fd < 0) {
        if (errno == EEXIST)
            fprintf(stderr, "patchbay init: %s exists (--force replaces it)\n", path);
        else
            fprintf(stderr, "patchbay init: cannot write %s: %s\n", path, strerror(errno));
        return 1;
    }
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            fprintf(stderr, "patchbay init: cannot write %s: %s\n", path, strerror(errno));
            close(fd);
            return 1;
        }
        off += (size_t)w;
    }
    if (close(fd) != 0) {
        fprintf(stderr, "patchbay init: cannot write %s: %s\n", path, strerror(errno));
        return 1;
    }
    return 0;
}

int pb_cmd_init(int argc, char **argv)
{
    const char *name = NULL, *out = "patchbay.yaml";
    bool force = false, tests = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--list")) {
            list(stdout);
            return 0;
        } else if (!strcmp(a, "--force")) {
            force = true;
        } else if (!strcmp(a, "--no-tests")) {
            tests = false;
        } else if ((!strcmp(a, "--output") || !strcmp(a, "-o")) && i + 1 < argc) {
            out = argv[++i];
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "patchbay init: unknown option %s\n%s", a, usage_text);
            return 2;
        } else if (!name) {
            name = a;
        } else {
            fputs(usage_text, stderr);
            return 2;
        }
    }
    const struct pattern *p = NULL;
    for (size_t i = 0; i < NPATTERNS; i++)
        if (!strcmp(patterns[i].name, name ? name : "webhook-relay"))
            p = &patterns[i];
    if (!p) {
        fprintf(stderr, "patchbay init: unknown pattern \"%s\"\n", name);
        list(stderr);
        return 2;
    }
    char *config = NULL;
    if (asprintf(&config, "# Generated by `patchbay init %s`.\n%s", p->name, p->config) < 0) {
        fprintf(stderr, "patchbay init: out of memory\n");
        return 1;
    }
    if (!strcmp(out, "-")) {
        fputs(config, stdout);
        free(config);
        return 0;
    }
    int rc = write_file(out, config, force);
    free(config);
    if (rc)
        return rc;
    printf("wrote %s (%s)\n", out, p->summary);
    if (tests) {
        char tpath[4096];
        size_t n = strlen(out);
        if (n > 5 && !strcmp(out + n - 5, ".yaml"))
            snprintf(tpath, sizeof(tpath), "%.*s.test.yaml", (int)(n - 5), out);
        else if (n > 4 && !strcmp(out + n - 4, ".yml"))
            snprintf(tpath, sizeof(tpath), "%.*s.test.yaml", (int)(n - 4), out);
        else
            snprintf(tpath, sizeof(tpath), "%s.test.yaml", out);
        char *t = NULL;
        if (asprintf(&t,
                     "# Test cases of %s: `patchbay test %s` runs them without connecting "
                     "anywhere.\n%s",
                     out, out, p->tests) < 0) {
            fprintf(stderr, "patchbay init: out of memory\n");
            return 1;
        }
        rc = write_file(tpath, t, force);
        free(t);
        if (rc)
            return rc;
        printf("wrote %s (patchbay test %s)\n", tpath, out);
    }
    bool missing = false;
    if (!pb_registry_input(p->input)) {
        printf("note: this build has no %s input yet: lint and test refuse %s until it does\n",
               p->input, out);
        missing = true;
    }
    if (!pb_registry_output(p->output)) {
        printf("note: this build has no %s output yet: lint and test refuse %s until it does\n",
               p->output, out);
        missing = true;
    }
    if (!missing)
        printf("next: patchbay lint %s && patchbay test %s\n", out, out);
    return 0;
}
