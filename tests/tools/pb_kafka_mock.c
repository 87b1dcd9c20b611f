/* pb_kafka_mock.c - a Kafka cluster for system tests and the bench, and the
 * small clients the tests use to talk to it.
 *
 * Debian ships no Kafka broker; librdkafka ships a mock cluster
 * (rdkafka_mock.h) that speaks the protocol on 127.0.0.1: produce (the
 * idempotent producer included), fetch, metadata, list offsets, consumer
 * groups with rebalancing, and offset commits. It keeps its data in memory.
 *
 *   pb_kafka_mock serve [--brokers N] [--topic NAME:PARTITIONS[:LEADER]]...
 *                       [--topic-error NAME=CODE]... [--bootstrap-file F]
 *       Starts the cluster, prints its bootstrap list on stdout (and writes it
 *       to F), creates the topics, and runs until SIGTERM/SIGINT. The mock
 *       creates any topic a client asks for; --topic-error makes metadata
 *       requests for NAME answer with the Kafka error CODE instead (3: unknown
 *       topic, 29: topic authorization failed). SIGUSR1 takes
 *       every broker down (connections are cut and refused), SIGUSR2 brings
 *       them up again, with their data; "up" or "down" is then written to
 *       F.state, so a test can wait for the change.
 *   pb_kafka_mock produce --bootstrap B --topic T --count N [--from I]
 *                         [--partition P] [--raw TEXT] [--pad BYTES] [--header NAME=VALUE]
 *                         [--body FMT]
 *       Produces N messages {"n": I..I+N-1, "pad": "..."} keyed "k<I>" (or N
 *       copies of the raw TEXT, or FMT with every %d replaced by the number),
 *       idempotent, acks=all, waits for every delivery report and prints
 *       {"delivered":N,"failed":N,"seconds":S}; exit 0 when all were delivered.
 *   pb_kafka_mock offsets --bootstrap B --topic T [--group G]
 *       Prints {"partitions":[{"partition":P,"low":L,"high":H,"committed":C}],
 *       "high":sum,"committed":sum} (committed -1 when the group has none).
 *   pb_kafka_mock consume --bootstrap B --topic T [--expect N] [--timeout S] [--quiet]
 *       Reads every partition from the start up to its high watermark (or
 *       until N messages were read) and prints one JSON line per message:
 *       {"partition","offset","key","value","headers":{name:value},"timestamp"};
 *       with --quiet only {"consumed":N,"seconds":S} at the end (first message
 *       to last). No offsets are committed.
 *
 * Thread model: one thread of ours; librdkafka runs the mock brokers and the
 * clients on threads of its own. Signals only set flags. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define MAX_TOPICS 32

static volatile sig_atomic_t want_stop, want_down, want_up;

static void on_signal(int sig)
{
    if (sig == SIGUSR1)
        want_down = 1;
    else if (sig == SIGUSR2)
        want_up = 1;
    else
        want_stop = 1;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: pb_kafka_mock serve [--brokers N] [--topic NAME:PARTS[:LEADER]]... "
            "[--bootstrap-file F]\n"
            "       pb_kafka_mock produce --bootstrap B --topic T --count N [--from I] "
            "[--partition P] [--raw TEXT] [--pad BYTES] [--header NAME=VALUE] [--body FMT]\n"
            "       pb_kafka_mock offsets --bootstrap B --topic T [--group G]\n"
            "       pb_kafka_mock consume --bootstrap B --topic T [--expect N] [--timeout S] "
            "[--quiet]\n");
    exit(2);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void write_file(const char *path, const char *text)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        fprintf(stderr, "pb_kafka_mock: cannot write %s: %s\n", tmp, strerror(errno));
        exit(1);
    }
    fprintf(f, "%s\n", text);
    fclose(f);
    if (rename(tmp, path) != 0) {
        fprintf(stderr, "pb_kafka_mock: cannot rename %s: %s\n", tmp, strerror(errno));
        exit(1);
    }
}

static rd_kafka_conf_t *conf_new(const char *bootstrap)
{
    char err[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    if (bootstrap && rd_kafka_conf_set(c, "bootstrap.servers", bootstrap, err, sizeof(err)) !=
                         RD_KAFKA_CONF_OK) {
        fprintf(stderr, "pb_kafka_mock: %s\n", err);
        exit(2);
    }
    return c;
}

static void conf_set(rd_kafka_conf_t *c, const char *name, const char *value)
{
    char err[512];
    if (rd_kafka_conf_set(c, name, value, err, sizeof(err)) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "pb_kafka_mock: %s=%s: %s\n", name, value, err);
        exit(2);
    }
}

static rd_kafka_t *client_new(rd_kafka_type_t type, rd_kafka_conf_t *c)
{
    char err[512];
    rd_kafka_t *rk = rd_kafka_new(type, c, err, sizeof(err));
    if (!rk) {
        fprintf(stderr, "pb_kafka_mock: rd_kafka_new: %s\n", err);
        exit(1);
    }
    return rk;
}

/* ---- serve ---------------------------------------------------------------------------- */

static int cmd_serve(int argc, char **argv)
{
    int brokers = 1;
    const char *topics[MAX_TOPICS];
    int ntopics = 0;
    const char *errors[MAX_TOPICS];
    int nerrors = 0;
    const char *bootstrap_file = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--topic-error") == 0 && i + 1 < argc && nerrors < MAX_TOPICS)
            errors[nerrors++] = argv[++i];
        else if (strcmp(argv[i], "--brokers") == 0 && i + 1 < argc)
            brokers = atoi(argv[++i]);
        else if (strcmp(argv[i], "--topic") == 0 && i + 1 < argc && ntopics < MAX_TOPICS)
            topics[ntopics++] = argv[++i];
        else if (strcmp(argv[i], "--bootstrap-file") == 0 && i + 1 < argc)
            bootstrap_file = argv[++i];
        else
            usage();
    }
    if (brokers < 1 || brokers > 16)
        usage();

    rd_kafka_conf_t *c = conf_new(NULL);
    conf_set(c, "log_level", "4");
    rd_kafka_t *rk = client_new(RD_KAFKA_PRODUCER, c);
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, brokers);
    if (!mc) {
        fprintf(stderr, "pb_kafka_mock: cannot create the mock cluster\n");
        return 1;
    }
    for (int i = 0; i < ntopics; i++) {
        char name[256];
        int parts = 1, leader = -1;
        const char *colon = strchr(topics[i], ':');
        size_t nl = colon ? (size_t)(colon - topics[i]) : strlen(topics[i]);
        if (nl == 0 || nl >= sizeof(name))
            usage();
        memcpy(name, topics[i], nl);
        name[nl] = 0;
        if (colon)
            sscanf(colon + 1, "%d:%d", &parts, &leader);
        if (parts < 1 ||
            rd_kafka_mock_topic_create(mc, name, parts, 1) != RD_KAFKA_RESP_ERR_NO_ERROR) {
            fprintf(stderr, "pb_kafka_mock: cannot create topic %s\n", name);
            return 1;
        }
        for (int p = 0; leader > 0 && p < parts; p++)
            rd_kafka_mock_partition_set_leader(mc, name, p, leader);
    }
    for (int i = 0; i < nerrors; i++) {
        char name[256];
        const char *eq = strchr(errors[i], '=');
        size_t nl = eq ? (size_t)(eq - errors[i]) : 0;
        if (nl == 0 || nl >= sizeof(name))
            usage();
        memcpy(name, errors[i], nl);
        name[nl] = 0;
        rd_kafka_mock_topic_set_error(mc, name, (rd_kafka_resp_err_t)atoi(eq + 1));
    }
    const char *bs = rd_kafka_mock_cluster_bootstraps(mc);
    char state_file[4096] = "";
    if (bootstrap_file) {
        snprintf(state_file, sizeof(state_file), "%s.state", bootstrap_file);
        write_file(state_file, "up");
        write_file(bootstrap_file, bs);
    }
    printf("%s\n", bs);
    fflush(stdout);

    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    while (!want_stop) {
        if (want_down) {
            want_down = 0;
            for (int b = 1; b <= brokers; b++)
                rd_kafka_mock_broker_set_down(mc, b);
            fprintf(stderr, "pb_kafka_mock: brokers down\n");
            if (state_file[0])
                write_file(state_file, "down");
        }
        if (want_up) {
            want_up = 0;
            for (int b = 1; b <= brokers; b++)
                rd_kafka_mock_broker_set_up(mc, b);
            fprintf(stderr, "pb_kafka_mock: brokers up\n");
            if (state_file[0])
                write_file(state_file, "up");
        }
        sleep_ms(20);
    }
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return 0;
}

/* ---- produce -------------------------------------------------------------------------- */

static long delivered, failed;

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

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    if (m->err) {
        if (failed < 5)
            fprintf(stderr, "pb_kafka_mock: delivery failed: %s\n", rd_kafka_err2str(m->err));
        failed++;
    } else {
        delivered++;
    }
}

static int cmd_produce(int argc, char **argv)
{
    const char *bootstrap = NULL, *topic = NULL, *raw = NULL, *header = NULL, *fmt = NULL;
    long count = 0, from = 0, pad = 0;
    int partition = RD_KAFKA_PARTITION_UA;
    for (int i = 0; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        if (strcmp(argv[i], "--bootstrap") == 0)
            bootstrap = argv[++i];
        else if (strcmp(argv[i], "--topic") == 0)
            topic = argv[++i];
        else if (strcmp(argv[i], "--count") == 0)
            count = atol(argv[++i]);
        else if (strcmp(argv[i], "--from") == 0)
            from = atol(argv[++i]);
        else if (strcmp(argv[i], "--partition") == 0)
            partition = atoi(argv[++i]);
        else if (strcmp(argv[i], "--raw") == 0)
            raw = argv[++i];
        else if (strcmp(argv[i], "--pad") == 0)
            pad = atol(argv[++i]);
        else if (strcmp(argv[i], "--header") == 0)
            header = argv[++i];
        else if (strcmp(argv[i], "--body") == 0)
            fmt = argv[++i];
        else
            usage();
    }
    if (fmt && pad < (long)strlen(fmt) + 1024)
        pad = (long)strlen(fmt) + 1024; /* room for the numbers */
    if (!bootstrap || !topic || count <= 0 || pad < 0 || pad > 1000000)
        usage();
    char hname[256] = "source";
    const char *hval = "pb_kafka_mock";
    if (header) {
        const char *eq = strchr(header, '=');
        if (!eq || eq == header || (size_t)(eq - header) >= sizeof(hname))
            usage();
        memcpy(hname, header, (size_t)(eq - header));
        hname[eq - header] = 0;
        hval = eq + 1;
    }
    rd_kafka_conf_t *c = conf_new(bootstrap);
    conf_set(c, "enable.idempotence", "true");
    conf_set(c, "linger.ms", "5");
    rd_kafka_conf_set_dr_msg_cb(c, dr_cb);
    rd_kafka_t *rk = client_new(RD_KAFKA_PRODUCER, c);
    char *padding = calloc(1, (size_t)pad + 1);
    char *body = malloc((size_t)pad + 128);
    if (!padding || !body)
        return 1;
    memset(padding, 'x', (size_t)pad);
    int64_t t0 = now_ms();
    for (long n = from; n < from + count; n++) {
        char key[32];
        int blen;
        snprintf(key, sizeof(key), "k%ld", n);
        if (raw)
            blen = snprintf(body, (size_t)pad + 128, "%s", raw);
        else if (fmt)
            blen = fill(body, (size_t)pad + 128, fmt, n);
        else
            blen = snprintf(body, (size_t)pad + 128, "{\"n\":%ld,\"pad\":\"%s\"}", n, padding);
        for (;;) {
            rd_kafka_resp_err_t err = rd_kafka_producev(
                rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY(key, strlen(key)),
                RD_KAFKA_V_VALUE(body, (size_t)blen), RD_KAFKA_V_HEADER(hname, hval, -1),
                RD_KAFKA_V_END);
            if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                rd_kafka_poll(rk, 50);
                continue;
            }
            if (err) {
                fprintf(stderr, "pb_kafka_mock: produce: %s\n", rd_kafka_err2str(err));
                return 1;
            }
            break;
        }
        rd_kafka_poll(rk, 0);
    }
    rd_kafka_flush(rk, 60000);
    double secs = (double)(now_ms() - t0) / 1000.0;
    rd_kafka_destroy(rk);
    free(padding);
    free(body);
    printf("{\"delivered\":%ld,\"failed\":%ld,\"seconds\":%.3f}\n", delivered, failed, secs);
    return failed == 0 && delivered == count ? 0 : 1;
}

/* ---- offsets -------------------------------------------------------------------------- */

static int partition_count(rd_kafka_t *rk, const char *topic)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    int n = -1;
    if (rd_kafka_metadata(rk, 0, rkt, &md, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        if (md->topic_cnt == 1 && md->topics[0].err == 0)
            n = md->topics[0].partition_cnt;
        rd_kafka_metadata_destroy(md);
    }
    rd_kafka_topic_destroy(rkt);
    return n;
}

static int cmd_offsets(int argc, char **argv)
{
    const char *bootstrap = NULL, *topic = NULL, *group = "pb-kafka-mock-none";
    for (int i = 0; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        if (strcmp(argv[i], "--bootstrap") == 0)
            bootstrap = argv[++i];
        else if (strcmp(argv[i], "--topic") == 0)
            topic = argv[++i];
        else if (strcmp(argv[i], "--group") == 0)
            group = argv[++i];
        else
            usage();
    }
    if (!bootstrap || !topic)
        usage();
    rd_kafka_conf_t *c = conf_new(bootstrap);
    conf_set(c, "group.id", group);
    conf_set(c, "enable.auto.commit", "false");
    rd_kafka_t *rk = client_new(RD_KAFKA_CONSUMER, c);
    int np = partition_count(rk, topic);
    if (np <= 0) {
        fprintf(stderr, "pb_kafka_mock: no metadata for %s\n", topic);
        return 1;
    }
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(np);
    for (int p = 0; p < np; p++)
        rd_kafka_topic_partition_list_add(l, topic, p);
    rd_kafka_resp_err_t err = rd_kafka_committed(rk, l, 10000);
    if (err) {
        fprintf(stderr, "pb_kafka_mock: committed: %s\n", rd_kafka_err2str(err));
        return 1;
    }
    json_t *parts = json_array();
    int64_t hsum = 0, csum = 0;
    for (int p = 0; p < np; p++) {
        int64_t lo = -1, hi = -1;
        err = rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, 10000);
        if (err) {
            fprintf(stderr, "pb_kafka_mock: watermarks: %s\n", rd_kafka_err2str(err));
            return 1;
        }
        int64_t co = l->elems[p].offset >= 0 ? l->elems[p].offset : -1;
        hsum += hi;
        csum += co > 0 ? co : 0;
        json_array_append_new(parts,
                              json_pack("{s:i,s:I,s:I,s:I}", "partition", p, "low", (json_int_t)lo,
                                        "high", (json_int_t)hi, "committed", (json_int_t)co));
    }
    json_t *o = json_pack("{s:o,s:I,s:I}", "partitions", parts, "high", (json_int_t)hsum,
                          "committed", (json_int_t)csum);
    char *t = json_dumps(o, JSON_COMPACT);
    printf("%s\n", t);
    free(t);
    json_decref(o);
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return 0;
}

/* ---- consume -------------------------------------------------------------------------- */

static json_t *bytes_json(const void *p, size_t len)
{
    if (!p)
        return json_null();
    json_t *s = json_stringn((const char *)p, len);
    return s ? s : json_string("<not utf-8>");
}

/* One message as a JSON line on stdout. */
static void print_message(const rd_kafka_message_t *m)
{
    json_t *h = json_object();
    rd_kafka_headers_t *hdrs = NULL;
    if (rd_kafka_message_headers(m, &hdrs) == 0) {
        const char *name;
        const void *val;
        size_t vlen;
        for (size_t i = 0; rd_kafka_header_get_all(hdrs, i, &name, &val, &vlen) == 0; i++)
            json_object_set_new(h, name, bytes_json(val, vlen));
    }
    rd_kafka_timestamp_type_t tt;
    int64_t ts = rd_kafka_message_timestamp(m, &tt);
    json_t *o =
        json_pack("{s:i,s:I,s:o,s:o,s:o,s:I}", "partition", m->partition, "offset",
                  (json_int_t)m->offset, "key", bytes_json(m->key, m->key_len), "value",
                  bytes_json(m->payload, m->len), "headers", h, "timestamp", (json_int_t)ts);
    char *t = json_dumps(o, JSON_COMPACT);
    printf("%s\n", t);
    free(t);
    json_decref(o);
}

static int cmd_consume(int argc, char **argv)
{
    const char *bootstrap = NULL, *topic = NULL;
    long expect = -1, timeout_s = 60;
    bool quiet = false;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--quiet") == 0) {
            quiet = true;
            continue;
        }
        if (i + 1 >= argc)
            usage();
        if (strcmp(argv[i], "--bootstrap") == 0)
            bootstrap = argv[++i];
        else if (strcmp(argv[i], "--topic") == 0)
            topic = argv[++i];
        else if (strcmp(argv[i], "--expect") == 0)
            expect = atol(argv[++i]);
        else if (strcmp(argv[i], "--timeout") == 0)
            timeout_s = atol(argv[++i]);
        else
            usage();
    }
    if (!bootstrap || !topic)
        usage();
    rd_kafka_conf_t *c = conf_new(bootstrap);
    conf_set(c, "group.id", "pb-kafka-mock-reader");
    conf_set(c, "enable.auto.commit", "false");
    conf_set(c, "enable.partition.eof", "true");
    rd_kafka_t *rk = client_new(RD_KAFKA_CONSUMER, c);
    int np = partition_count(rk, topic);
    if (np <= 0) {
        fprintf(stderr, "pb_kafka_mock: no metadata for %s\n", topic);
        return 1;
    }
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(np);
    int64_t *high = calloc((size_t)np, sizeof(*high));
    bool *done = calloc((size_t)np, sizeof(*done));
    int ndone = 0;
    for (int p = 0; p < np; p++) {
        int64_t lo;
        if (rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &high[p], 10000) != 0)
            return 1;
        rd_kafka_topic_partition_list_add(l, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
        if (high[p] == 0 && expect < 0) {
            done[p] = true;
            ndone++;
        }
    }
    rd_kafka_assign(rk, l);
    long got = 0;
    int64_t deadline = now_ms() + timeout_s * 1000, first = 0, last = 0;
    while (now_ms() < deadline && (expect < 0 ? ndone < np : got < expect)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
        if (!m)
            continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            if (expect < 0 && !done[m->partition] && m->offset >= high[m->partition]) {
                done[m->partition] = true;
                ndone++;
            }
            rd_kafka_message_destroy(m);
            continue;
        }
        if (m->err) {
            fprintf(stderr, "pb_kafka_mock: consume: %s\n", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        last = now_ms();
        if (!got)
            first = last;
        if (!quiet)
            print_message(m);
        got++;
        if (expect < 0 && !done[m->partition] && m->offset + 1 >= high[m->partition]) {
            done[m->partition] = true;
            ndone++;
        }
        rd_kafka_message_destroy(m);
    }
    if (quiet)
        printf("{\"consumed\":%ld,\"seconds\":%.3f}\n", got, (double)(last - first) / 1000.0);
    fflush(stdout);
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    free(high);
    free(done);
    bool ok = expect < 0 ? ndone == np : got >= expect;
    if (!ok)
        fprintf(stderr, "pb_kafka_mock: consume timed out after %ld messages\n", got);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    if (strcmp(argv[1], "serve") == 0)
        return cmd_serve(argc - 2, argv + 2);
    if (strcmp(argv[1], "produce") == 0)
        return cmd_produce(argc - 2, argv + 2);
    if (strcmp(argv[1], "offsets") == 0)
        return cmd_offsets(argc - 2, argv + 2);
    if (strcmp(argv[1], "consume") == 0)
        return cmd_consume(argc - 2, argv + 2);
    usage();
    return 2;
}
