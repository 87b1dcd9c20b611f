/* pb_amqp.c - a small RabbitMQ client for system tests and measurements:
 * declare queues and bindings, publish numbered JSON messages with
 * publisher confirms (pipelined), consume and print what arrived as JSON
 * lines, count and purge. Single-threaded, blocking; one connection.
 *
 *   pb_amqp declare URL QUEUE [--bind EXCHANGE:KEY[:TYPE]]... [--delete]
 *   pb_amqp publish URL EXCHANGE KEY COUNT [--start N] [--id-prefix P]
 *                   [--poison N]... [--window W] [--transient] [--rich] [--body FMT]
 *   pb_amqp consume URL QUEUE [--count N] [--idle S] [--out FILE] [--discard]
 *   pb_amqp count URL QUEUE         prints "ready consumers"
 *   pb_amqp purge URL QUEUE
 *
 * publish bodies are {"n":N,"order_id":"o-N","cents":N*100}, or FMT with
 * every %d replaced by N (at most 64 KiB); with --id-prefix the message_id
 * is PREFIX<N>; a --poison N message has an invalid JSON body; --rich adds
 * properties (correlation_id, type, app_id, timestamp, priority) and headers
 * of every AMQP field kind. publish prints "published N in S s (R msg/s)".
 * consume writes each message as a JSON line to FILE (stdout), or nothing
 * with --discard, and prints "consumed N in S s (R msg/s)" on stderr, timed
 * from the first message to the last. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <jansson.h>

#include "plugins/inputs/amqp/amqp_common.h"

#define CH 1

static double now_s(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

/* fmt with every %d replaced by n; the length written, or -1 when it does not fit. */
static int fill(char *buf, size_t len, const char *fmt, long n)
{
    size_t o = 0;
    for (const char *p = fmt; *p; p++) {
        if (p[0] == '%' && p[1] == 'd') {
            int w = snprintf(buf + o, len - o, "%ld", n);
            if (w < 0 || (size_t)w >= len - o)
                return -1;
            o += (size_t)w;
            p++;
        } else {
            if (o + 1 >= len)
                return -1;
            buf[o++] = *p;
        }
    }
    buf[o] = 0;
    return (int)o;
}

static void die(const char *what, amqp_rpc_reply_t r)
{
    char t[512];
    fprintf(stderr, "pb_amqp: %s: %s\n", what, pb_amqp_reply_text(r, t, sizeof(t)));
    exit(1);
}

static amqp_connection_state_t open_url(const char *url)
{
    struct amqp_connection_info ci;
    char *u = strdup(url);
    amqp_default_connection_info(&ci);
    if (!u || amqp_parse_url(u, &ci) != AMQP_STATUS_OK) {
        fprintf(stderr, "pb_amqp: bad url\n");
        exit(2);
    }
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    struct timeval tv = {10, 0};
    int rc = amqp_socket_open_noblock(s, ci.host, ci.port, &tv);
    if (rc != AMQP_STATUS_OK) {
        fprintf(stderr, "pb_amqp: connect: %s\n", amqp_error_string2(rc));
        exit(1);
    }
    const char *vhost = ci.vhost && *ci.vhost ? ci.vhost : "/";
    amqp_rpc_reply_t r =
        amqp_login(c, vhost, 0, 131072, 30, AMQP_SASL_METHOD_PLAIN, ci.user, ci.password);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        die("login", r);
    amqp_channel_open(c, CH);
    r = amqp_get_rpc_reply(c);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        die("channel.open", r);
    free(u);
    return c;
}

static void close_conn(amqp_connection_state_t c)
{
    amqp_channel_close(c, CH, AMQP_REPLY_SUCCESS);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
}

static int cmd_declare(int argc, char **argv)
{
    if (argc < 4)
        return 2;
    amqp_connection_state_t c = open_url(argv[2]);
    amqp_bytes_t q = amqp_cstring_bytes(argv[3]);
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "--delete") == 0) {
            amqp_queue_delete(c, CH, q, 0, 0);
            amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
            if (r.reply_type != AMQP_RESPONSE_NORMAL)
                die("queue.delete", r);
        }
    }
    amqp_queue_declare(c, CH, q, 0, 1, 0, 0, amqp_empty_table);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        die("queue.declare", r);
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "--bind") != 0 || i + 1 >= argc)
            continue;
        char *spec = strdup(argv[++i]);
        char *ex = strtok(spec, ":");
        char *key = strtok(NULL, ":");
        char *type = strtok(NULL, ":");
        if (type) {
            amqp_exchange_declare(c, CH, amqp_cstring_bytes(ex), amqp_cstring_bytes(type), 0, 1, 0,
                                  0, amqp_empty_table);
            r = amqp_get_rpc_reply(c);
            if (r.reply_type != AMQP_RESPONSE_NORMAL)
                die("exchange.declare", r);
        }
        amqp_queue_bind(c, CH, q, amqp_cstring_bytes(ex), amqp_cstring_bytes(key ? key : ""),
                        amqp_empty_table);
        r = amqp_get_rpc_reply(c);
        if (r.reply_type != AMQP_RESPONSE_NORMAL)
            die("queue.bind", r);
        free(spec);
    }
    close_conn(c);
    return 0;
}

/* Properties and headers of every kind, for $meta. Static storage: one
 * message at a time. */
static void add_rich(amqp_basic_properties_t *p, long n)
{
    static amqp_table_entry_t inner[1], hs[10];
    static amqp_field_value_t arr[2];
    static char corr[32];
    static const unsigned char raw[3] = {0xff, 0x00, 0x41};
    snprintf(corr, sizeof(corr), "c-%ld", n);
    p->_flags |= AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_APP_ID_FLAG |
                 AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_PRIORITY_FLAG | AMQP_BASIC_HEADERS_FLAG |
                 AMQP_BASIC_REPLY_TO_FLAG;
    p->correlation_id = amqp_cstring_bytes(corr);
    p->type = amqp_cstring_bytes("order.created");
    p->app_id = amqp_cstring_bytes("shop");
    p->reply_to = amqp_cstring_bytes("replies");
    p->timestamp = 1700000000;
    p->priority = 3;
    inner[0].key = amqp_cstring_bytes("a");
    inner[0].value.kind = AMQP_FIELD_KIND_I32;
    inner[0].value.value.i32 = 1;
    arr[0].kind = AMQP_FIELD_KIND_I16;
    arr[0].value.i16 = 1;
    arr[1].kind = AMQP_FIELD_KIND_UTF8;
    arr[1].value.bytes = amqp_cstring_bytes("two");
    int k = 0;
    hs[k].key = amqp_cstring_bytes("x-str");
    hs[k].value.kind = AMQP_FIELD_KIND_UTF8;
    hs[k++].value.value.bytes = amqp_cstring_bytes("v\"q");
    hs[k].key = amqp_cstring_bytes("x-int");
    hs[k].value.kind = AMQP_FIELD_KIND_I32;
    hs[k++].value.value.i32 = -42;
    hs[k].key = amqp_cstring_bytes("x-big");
    hs[k].value.kind = AMQP_FIELD_KIND_I64;
    hs[k++].value.value.i64 = 1152921504606846977LL; /* 2^60 + 1 */
    hs[k].key = amqp_cstring_bytes("x-bool");
    hs[k].value.kind = AMQP_FIELD_KIND_BOOLEAN;
    hs[k++].value.value.boolean = 1;
    hs[k].key = amqp_cstring_bytes("x-float");
    hs[k].value.kind = AMQP_FIELD_KIND_F64;
    hs[k++].value.value.f64 = 2.5;
    hs[k].key = amqp_cstring_bytes("x-dec");
    hs[k].value.kind = AMQP_FIELD_KIND_DECIMAL;
    hs[k].value.value.decimal.decimals = 2;
    hs[k++].value.value.decimal.value = 1234;
    hs[k].key = amqp_cstring_bytes("x-tbl");
    hs[k].value.kind = AMQP_FIELD_KIND_TABLE;
    hs[k++].value.value.table = (amqp_table_t){.num_entries = 1, .entries = inner};
    hs[k].key = amqp_cstring_bytes("x-arr");
    hs[k].value.kind = AMQP_FIELD_KIND_ARRAY;
    hs[k++].value.value.array = (amqp_array_t){.num_entries = 2, .entries = arr};
    hs[k].key = amqp_cstring_bytes("x-raw");
    hs[k].value.kind = AMQP_FIELD_KIND_BYTES;
    hs[k++].value.value.bytes = (amqp_bytes_t){.len = 3, .bytes = (void *)raw};
    hs[k].key = amqp_cstring_bytes("x-void");
    hs[k++].value.kind = AMQP_FIELD_KIND_VOID;
    p->headers = (amqp_table_t){.num_entries = k, .entries = hs};
}

static int cmd_publish(int argc, char **argv)
{
    if (argc < 6)
        return 2;
    const char *exchange = argv[3], *key = argv[4];
    long count = strtol(argv[5], NULL, 10), start = 0, window = 1000;
    const char *prefix = NULL, *fmt = NULL;
    long poison[64];
    int npoison = 0;
    int mode = AMQP_DELIVERY_PERSISTENT;
    bool rich = false;
    for (int i = 6; i < argc; i++) {
        if (strcmp(argv[i], "--start") == 0 && i + 1 < argc)
            start = strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--id-prefix") == 0 && i + 1 < argc)
            prefix = argv[++i];
        else if (strcmp(argv[i], "--poison") == 0 && i + 1 < argc && npoison < 64)
            poison[npoison++] = strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--window") == 0 && i + 1 < argc)
            window = strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--transient") == 0)
            mode = AMQP_DELIVERY_NONPERSISTENT;
        else if (strcmp(argv[i], "--rich") == 0)
            rich = true;
        else if (strcmp(argv[i], "--body") == 0 && i + 1 < argc)
            fmt = argv[++i];
    }
    static char body[65536];
    amqp_connection_state_t c = open_url(argv[2]);
    amqp_confirm_select(c, CH);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        die("confirm.select", r);
    double t0 = now_s();
    uint64_t seq = 0, confirmed = 0;
    for (long n = start; n < start + count;) {
        long end = n + window < start + count ? n + window : start + count;
        for (; n < end; n++) {
            char id[128];
            bool bad = false;
            for (int k = 0; k < npoison; k++)
                bad |= poison[k] == n;
            int len =
                bad   ? snprintf(body, sizeof(body), "{\"n\":%ld, not json", n)
                : fmt ? fill(body, sizeof(body), fmt, n)
                      : snprintf(body, sizeof(body),
                                 "{\"n\":%ld,\"order_id\":\"o-%ld\",\"cents\":%ld}", n, n, n * 100);
            if (len < 0) {
                fprintf(stderr, "pb_amqp: --body longer than 64 KiB\n");
                return 2;
            }
            amqp_basic_properties_t p = {0};
            p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG;
            p.delivery_mode = (uint8_t)mode;
            p.content_type = amqp_cstring_bytes("application/json");
            if (prefix) {
                snprintf(id, sizeof(id), "%s%ld", prefix, n);
                p._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
                p.message_id = amqp_cstring_bytes(id);
            }
            if (rich)
                add_rich(&p, n);
            amqp_bytes_t b = {.len = (size_t)len, .bytes = body};
            int rc = amqp_basic_publish(c, CH, amqp_cstring_bytes(exchange),
                                        amqp_cstring_bytes(key), 0, 0, &p, b);
            if (rc != AMQP_STATUS_OK) {
                fprintf(stderr, "pb_amqp: publish: %s\n", amqp_error_string2(rc));
                return 1;
            }
            seq++;
        }
        while (confirmed < seq) {
            amqp_frame_t f;
            struct timeval tv = {30, 0};
            amqp_maybe_release_buffers(c);
            int rc = amqp_simple_wait_frame_noblock(c, &f, &tv);
            if (rc != AMQP_STATUS_OK) {
                fprintf(stderr, "pb_amqp: waiting for confirms: %s\n", amqp_error_string2(rc));
                return 1;
            }
            if (f.frame_type != AMQP_FRAME_METHOD)
                continue;
            if (f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
                amqp_basic_ack_t *a = f.payload.method.decoded;
                confirmed = a->multiple ? a->delivery_tag : confirmed + 1;
            } else if (f.payload.method.id == AMQP_BASIC_NACK_METHOD) {
                fprintf(stderr, "pb_amqp: the broker nacked a publish\n");
                return 1;
            }
        }
    }
    double dt = now_s() - t0;
    printf("published %ld in %.3f s (%.0f msg/s)\n", count, dt, dt > 0 ? count / dt : 0.0);
    close_conn(c);
    return 0;
}

static json_t *envelope_json(const amqp_envelope_t *e)
{
    const amqp_basic_properties_t *p = &e->message.properties;
    json_t *o = json_object();
    json_object_set_new(o, "exchange", pb_amqp_bytes_json(e->exchange));
    json_object_set_new(o, "routing_key", pb_amqp_bytes_json(e->routing_key));
    json_object_set_new(o, "redelivered", json_boolean(e->redelivered));
    json_object_set_new(o, "body", pb_amqp_bytes_json(e->message.body));
    if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
        json_object_set_new(o, "message_id", pb_amqp_bytes_json(p->message_id));
    if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG)
        json_object_set_new(o, "correlation_id", pb_amqp_bytes_json(p->correlation_id));
    if (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG)
        json_object_set_new(o, "content_type", pb_amqp_bytes_json(p->content_type));
    if (p->_flags & AMQP_BASIC_APP_ID_FLAG)
        json_object_set_new(o, "app_id", pb_amqp_bytes_json(p->app_id));
    if (p->_flags & AMQP_BASIC_TYPE_FLAG)
        json_object_set_new(o, "type", pb_amqp_bytes_json(p->type));
    if (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG)
        json_object_set_new(o, "delivery_mode", json_integer(p->delivery_mode));
    if (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG)
        json_object_set_new(o, "timestamp", json_integer((json_int_t)p->timestamp));
    if (p->_flags & AMQP_BASIC_HEADERS_FLAG)
        json_object_set_new(o, "headers", pb_amqp_table_json(&p->headers));
    return o;
}

static int cmd_consume(int argc, char **argv)
{
    if (argc < 4)
        return 2;
    long want = -1;
    double idle = 5;
    const char *out_path = NULL;
    bool discard = false;
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "--discard") == 0)
            discard = true;
        else if (strcmp(argv[i], "--count") == 0 && i + 1 < argc)
            want = strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--idle") == 0 && i + 1 < argc)
            idle = strtod(argv[++i], NULL);
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            out_path = argv[++i];
    }
    FILE *out = out_path ? fopen(out_path, "w") : stdout;
    if (!out) {
        fprintf(stderr, "pb_amqp: cannot write %s: %s\n", out_path, strerror(errno));
        return 1;
    }
    amqp_connection_state_t c = open_url(argv[2]);
    amqp_basic_qos(c, CH, 0, 1000, 0);
    amqp_basic_consume(c, CH, amqp_cstring_bytes(argv[3]), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        die("basic.consume", r);
    long got = 0;
    uint64_t last = 0;
    double t0 = 0, t1 = 0;
    while (want < 0 || got < want) {
        amqp_envelope_t e;
        struct timeval tv = {(long)idle, (long)((idle - (long)idle) * 1e6)};
        amqp_maybe_release_buffers(c);
        r = amqp_consume_message(c, &e, &tv, 0);
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_TIMEOUT)
            break;
        if (r.reply_type != AMQP_RESPONSE_NORMAL)
            die("consume", r);
        if (!got)
            t0 = now_s();
        if (!discard) {
            json_t *o = envelope_json(&e);
            char *t = json_dumps(o, JSON_COMPACT);
            fprintf(out, "%s\n", t);
            free(t);
            json_decref(o);
        }
        last = e.delivery_tag;
        amqp_destroy_envelope(&e);
        got++;
        if (got % 200 == 0)
            amqp_basic_ack(c, CH, last, 1);
        t1 = now_s();
    }
    if (last)
        amqp_basic_ack(c, CH, last, 1);
    fflush(out);
    if (out != stdout)
        fclose(out);
    close_conn(c);
    double dt = t1 - t0;
    fprintf(stderr, "consumed %ld in %.3f s (%.0f msg/s)\n", got, dt, dt > 0 ? got / dt : 0.0);
    return 0;
}

static int cmd_count(int argc, char **argv, bool purge)
{
    if (argc < 4)
        return 2;
    amqp_connection_state_t c = open_url(argv[2]);
    if (purge) {
        amqp_queue_purge(c, CH, amqp_cstring_bytes(argv[3]));
        amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
        if (r.reply_type != AMQP_RESPONSE_NORMAL)
            die("queue.purge", r);
    } else {
        amqp_queue_declare_ok_t *ok =
            amqp_queue_declare(c, CH, amqp_cstring_bytes(argv[3]), 1, 0, 0, 0, amqp_empty_table);
        amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
        if (!ok || r.reply_type != AMQP_RESPONSE_NORMAL)
            die("queue.declare", r);
        printf("%u %u\n", ok->message_count, ok->consumer_count);
    }
    close_conn(c);
    return 0;
}

int main(int argc, char **argv)
{
    int rc = 2;
    if (argc >= 2 && strcmp(argv[1], "declare") == 0)
        rc = cmd_declare(argc, argv);
    else if (argc >= 2 && strcmp(argv[1], "publish") == 0)
        rc = cmd_publish(argc, argv);
    else if (argc >= 2 && strcmp(argv[1], "consume") == 0)
        rc = cmd_consume(argc, argv);
    else if (argc >= 2 && strcmp(argv[1], "count") == 0)
        rc = cmd_count(argc, argv, false);
    else if (argc >= 2 && strcmp(argv[1], "purge") == 0)
        rc = cmd_count(argc, argv, true);
    if (rc == 2)
        fprintf(stderr, "usage: pb_amqp declare|publish|consume|count|purge URL ...\n");
    return rc;
}
