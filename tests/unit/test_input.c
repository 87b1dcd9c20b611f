/* test_input.c - the submit/ack contract between an input and the core:
 * items and a checkpoint commit together and the callback runs once, on
 * the input's loop, after the commit; a duplicate key stores nothing new; a
 * dead item goes straight to the dead-letter queue; a commit that fails
 * calls back with the failure and stores nothing (so the input acks
 * nothing); a submit that fails never calls back. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "admin/views.h"
#include "core/engine.h"
#include "core/input.h"
#include "patchbay/pb_loop.h"
#include "pb_test.h"
#include "store/backend.h"

static struct pb_input *started_in;

static int test_start(void *ctx, struct pb_input *in, struct pb_err *err)
{
    (void)ctx;
    (void)err;
    started_in = in;
    return 0;
}

static const struct pb_input_plugin test_plugin = {
    .name = "test",
    .start = test_start,
};

/* Fails its first start, as a broker input does while its broker is down. */
static int flaky_starts;
static int flaky_start(void *ctx, struct pb_input *in, struct pb_err *err)
{
    if (flaky_starts++ == 0)
        return pb_err_set(err, PB_ENET, "connection refused");
    return test_start(ctx, in, err);
}

static const struct pb_input_plugin flaky_plugin = {
    .name = "flaky",
    .start = flaky_start,
};

static const struct pb_input_plugin *fixture_plugin = &test_plugin;

struct calls {
    int n;
    int status;
    size_t nres;
    struct pb_item_result res[8];
    bool on_loop;
    struct pb_loop *loop;
};

static void cb(void *arg, int status, const struct pb_item_result *res, size_t n)
{
    struct calls *c = arg;
    c->n++;
    c->status = status;
    c->nres = n;
    c->on_loop = pb_loop_on_thread(c->loop);
    if (res)
        memcpy(c->res, res, n * sizeof(*res));
}

struct fixture {
    char dir[64];
    struct pb_engine e;
    struct pb_loop *loop;
    const struct pb_input_plugin *orig;
    struct pb_input *in;
};

static void fixture_up(struct fixture *f)
{
    struct pb_err err = {0};
    char path[128], url[160];
    snprintf(f->dir, sizeof(f->dir), "/tmp/pbinput-XXXXXX");
    PB_CHECK(mkdtemp(f->dir) != NULL);
    snprintf(path, sizeof(path), "%s/patchbay.yaml", f->dir);
    FILE *fp = fopen(path, "w");
    fprintf(fp,
            "state: sqlite:%s/state.db\n"
            "pipelines:\n"
            "  p:\n"
            "    input: { generate: { count: 1 } }\n"
            "    outputs: { a: { drop: {} }, b: { drop: {} } }\n",
            f->dir);
    fclose(fp);
    f->e.cfg = pb_config_load(path, NULL, &err);
    if (!f->e.cfg)
        fprintf(stderr, "config: %s\n", err.msg);
    PB_CHECK(f->e.cfg != NULL);
    snprintf(url, sizeof(url), "sqlite:%s/state.db", f->dir);
    f->e.store = pb_store_open(url, NULL, &err);
    PB_CHECK(f->e.store != NULL);
    PB_EQ_INT(pb_store_start(f->e.store), 0);
    f->e.disp = pb_dispatcher_create(&f->e, &err); /* takes posts; never started */
    PB_CHECK(f->e.disp != NULL);
    f->loop = pb_loop_create(&err);
    f->in = f->e.cfg->pipelines[0].in;
    f->orig = f->in->plugin;
    f->in->plugin = fixture_plugin;
    started_in = NULL;
    PB_EQ_INT(pb__input_start(f->in, &f->e, f->loop, &err), 0);
    for (int i = 0; i < 300 && !started_in; i++) /* a failed start is retried after 1 s */
        pb_loop_run_once(f->loop, 10);
    PB_CHECK(started_in == f->in);
}

static void fixture_down(struct fixture *f)
{
    f->in->plugin = f->orig;
    pb_loop_timer_destroy(f->in->timer);
    f->in->timer = NULL;
    pb_store_stop(f->e.store);
    pb_dispatcher_destroy(f->e.disp);
    pb_store_destroy(f->e.store);
    pb_config_destroy(f->e.cfg);
    pb_loop_destroy(f->loop);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
    PB_EQ_INT(system(cmd), 0);
}

static void run_until(struct fixture *f, const int *n, int want)
{
    for (int i = 0; i < 2000 && *n < want; i++)
        pb_loop_run_once(f->loop, 10);
}

static int count_messages(struct fixture *f)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "sqlite3 %s/state.db 'SELECT count(*) FROM messages' 2>/dev/null",
             f->dir);
    FILE *p = popen(cmd, "r");
    int n = -1;
    if (p) {
        if (fscanf(p, "%d", &n) != 1)
            n = -1;
        pclose(p);
    }
    return n;
}

PB_TEST(items_and_checkpoint_commit_together_callback_once_on_loop)
{
    struct fixture f = {0};
    fixture_up(&f);
    struct calls c = {.loop = f.loop};
    struct pb_item items[3] = {
        {.body = "{\"a\":1}", .len = 7, .key = "k1", .meta = "{\"topic\":\"t\"}", .meta_len = 13},
        {.body = "{\"a\":2}", .len = 7, .key = "k1"}, /* same key in one batch: a duplicate */
        {.body = "not json", .len = 8, .dead_reason = "invalid JSON at byte 0"},
    };
    struct pb_checkpoint cp = {.name = "offset", .value = "42", .len = 2};
    PB_EQ_INT(pb_input_submit(f.in, items, 3, &cp, 1, cb, &c), 0);
    const void *v;
    size_t len;
    PB_EQ_INT(pb_input_checkpoint(f.in, "offset", &v, &len), PB_ENOTFOUND);
    run_until(&f, &c.n, 1);
    PB_EQ_INT(c.n, 1);
    PB_EQ_INT(c.status, 0);
    PB_CHECK(c.on_loop);
    PB_EQ_INT(c.nres, 3);
    PB_EQ_INT(c.res[0].status, PB_ITEM_STORED);
    PB_EQ_INT(c.res[1].status, PB_ITEM_DUPLICATE);
    PB_EQ_STR(c.res[1].msg_id, c.res[0].msg_id);
    PB_EQ_INT(c.res[2].status, PB_ITEM_DEAD);
    PB_EQ_INT(pb_input_checkpoint(f.in, "offset", &v, &len), 0);
    PB_EQ_INT(len, 2);
    PB_CHECK(memcmp(v, "42", 2) == 0);
    PB_EQ_INT(count_messages(&f), 2);
    /* The message carries $meta: the core's fields, then the input's. */
    struct pb_err err = {0};
    json_t *m = pb_admin_message_json(f.e.store, c.res[0].msg_id, &err);
    PB_CHECK(m != NULL);
    json_t *meta = json_object_get(m, "meta");
    PB_EQ_STR(json_string_value(json_object_get(meta, "input")), "generate");
    PB_EQ_STR(json_string_value(json_object_get(meta, "pipeline")), "p");
    PB_EQ_STR(json_string_value(json_object_get(meta, "topic")), "t");
    PB_CHECK(json_integer_value(json_object_get(meta, "received_at")) > 0);
    json_decref(m);
    /* The dead item sits in the dead-letter queue with its reason. */
    json_t *dl = pb_admin_dead_letters_json(f.e.store, "p", PB_INPUT_OUTPUT, 0, 10, &err);
    PB_CHECK(dl != NULL);
    json_t *list = json_object_get(dl, "items");
    PB_EQ_INT(json_array_size(list), 1);
    PB_EQ_STR(json_string_value(json_object_get(json_array_get(list, 0), "last_error")),
              "invalid JSON at byte 0");
    json_decref(dl);
    /* Checkpoints survive: the store has them for the next start. */
    fixture_down(&f);
}

PB_TEST(failed_commit_calls_back_with_failure_and_stores_nothing)
{
    struct fixture f = {0};
    fixture_up(&f);
    struct calls c = {.loop = f.loop};
    struct pb_checkpoint cp = {.name = "offset", .value = "1", .len = 1};
    struct pb_item ok = {.body = "{}", .len = 2};
    PB_EQ_INT(pb_input_submit(f.in, &ok, 1, &cp, 1, cb, &c), 0);
    run_until(&f, &c.n, 1);
    PB_EQ_INT(c.status, 0);
    int before = count_messages(&f);
    /* The store cannot grow any more: the next commit fails. */
    PB_EQ_INT(pb__store_test_max_pages(f.e.store, 1), 0);
    static char big[200000];
    memset(big, '1', sizeof(big));
    struct pb_item item = {.body = big, .len = sizeof(big)};
    struct pb_checkpoint cp2 = {.name = "offset", .value = "2", .len = 1};
    c.n = 0;
    PB_EQ_INT(pb_input_submit(f.in, &item, 1, &cp2, 1, cb, &c), 0);
    run_until(&f, &c.n, 1);
    PB_EQ_INT(c.n, 1);
    PB_CHECK(c.status < 0);
    PB_EQ_INT(c.nres, 0);
    PB_CHECK(c.on_loop);
    const void *v;
    size_t len;
    PB_EQ_INT(pb_input_checkpoint(f.in, "offset", &v, &len), 0);
    PB_CHECK(len == 1 && memcmp(v, "1", 1) == 0); /* the failed batch's checkpoint is not taken */
    PB_EQ_INT(pb__store_test_max_pages(f.e.store, 0), 0);
    PB_EQ_INT(count_messages(&f), before);
    fixture_down(&f);
}

PB_TEST(failed_submit_never_calls_back)
{
    struct fixture f = {0};
    fixture_up(&f);
    struct calls c = {.loop = f.loop};
    struct pb_item bad_meta = {.body = "{}", .len = 2, .meta = "[1]", .meta_len = 3};
    PB_EQ_INT(pb_input_submit(f.in, &bad_meta, 1, NULL, 0, cb, &c), PB_EINVAL);
    PB_EQ_INT(pb_input_submit(f.in, NULL, 0, NULL, 0, cb, &c), PB_EINVAL);
    char key[300];
    memset(key, 'k', sizeof(key) - 1);
    key[sizeof(key) - 1] = 0;
    struct pb_item long_key = {.body = "{}", .len = 2, .key = key};
    PB_EQ_INT(pb_input_submit(f.in, &long_key, 1, NULL, 0, cb, &c), PB_EINVAL);
    /* Past the ingest queue's bound: PB_EFULL, and the input is told to pause. */
    f.e.cfg->limits.ingest_queue = 0;
    struct pb_item ok = {.body = "{}", .len = 2};
    PB_EQ_INT(pb_input_submit(f.in, &ok, 1, NULL, 0, cb, &c), PB_EFULL);
    f.e.cfg->limits.ingest_queue = 8192;
    atomic_store(&f.in->stopped, true);
    PB_EQ_INT(pb_input_submit(f.in, &ok, 1, NULL, 0, cb, &c), PB_ESHUTDOWN);
    for (int i = 0; i < 20; i++)
        pb_loop_run_once(f.loop, 5);
    PB_EQ_INT(c.n, 0);
    PB_EQ_INT(count_messages(&f), 0);
    fixture_down(&f);
}

/* A start that failed (the core reported "reconnecting") and then
 * succeeded leaves the input connected. */
PB_TEST(a_start_that_succeeds_after_a_failure_is_connected)
{
    struct fixture f = {0};
    flaky_starts = 0;
    fixture_plugin = &flaky_plugin;
    fixture_up(&f);
    fixture_plugin = &test_plugin;
    PB_EQ_INT(flaky_starts, 2);
    PB_EQ_INT(atomic_load(&f.in->state), PB_INPUT_CONNECTED);
    fixture_down(&f);
}

/* An input that connects out (a broker) gets the top-level outbound.allow
 * as env.allow: without it the guard refuses a broker on 127.0.0.1. */
static struct pb_config *load_text(const char *dir, const char *text)
{
    struct pb_err err = {0};
    char path[128];
    snprintf(path, sizeof(path), "%s/allow.yaml", dir);
    FILE *fp = fopen(path, "w");
    fputs(text, fp);
    fclose(fp);
    struct pb_config *c = pb_config_load(path, NULL, &err);
    if (!c)
        fprintf(stderr, "config: %s\n", err.msg);
    return c;
}

PB_TEST(inputs_get_the_outbound_allowlist)
{
    char dir[64];
    snprintf(dir, sizeof(dir), "/tmp/pbinput-XXXXXX");
    PB_CHECK(mkdtemp(dir) != NULL);
    struct sockaddr_in lo = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct pb_config *c = load_text(dir, "outbound: { allow: [127.0.0.0/8] }\n"
                                         "pipelines:\n"
                                         "  p:\n"
                                         "    input: { generate: { count: 1 } }\n"
                                         "    outputs: { a: { drop: {} } }\n");
    PB_CHECK(c != NULL);
    if (c) {
        const struct pb_allowlist *al = c->pipelines[0].in->env.allow;
        PB_CHECK(al != NULL);
        PB_EQ_INT(pb_outbound_check(al, "127.0.0.1", &lo, sizeof(lo)), 0);
        pb_config_destroy(c);
    }
    c = load_text(dir, "pipelines:\n"
                       "  p:\n"
                       "    input: { generate: { count: 1 } }\n"
                       "    outputs: { a: { drop: {} } }\n");
    PB_CHECK(c != NULL);
    if (c) {
        const struct pb_allowlist *al = c->pipelines[0].in->env.allow;
        PB_CHECK(al != NULL);
        PB_EQ_INT(pb_outbound_check(al, "127.0.0.1", &lo, sizeof(lo)), PB_EDENIED);
        pb_config_destroy(c);
    }
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    PB_EQ_INT(system(cmd), 0);
}

/* An input may give its pipeline a default ordering key (postgres_cdc:
 * table + primary key); the pipeline's own ordering.key wins, and inputs
 * without one leave the pipeline unordered. */
PB_TEST(inputs_give_a_default_ordering_key)
{
    char dir[64];
    snprintf(dir, sizeof(dir), "/tmp/pbinput-XXXXXX");
    PB_CHECK(mkdtemp(dir) != NULL);
    struct pb_config *c =
        load_text(dir, "pipelines:\n"
                       "  p:\n"
                       "    input: { postgres_cdc: { dsn: 'postgres://u@db/erp' } }\n"
                       "    outputs: { a: { drop: {} } }\n");
    PB_CHECK(c != NULL);
    if (c) {
        PB_CHECK(c->pipelines[0].key_jq != NULL);
        PB_CHECK(c->pipelines[0].ordering_key &&
                 strstr(c->pipelines[0].ordering_key, ".table") != NULL);
        pb_config_destroy(c);
    }
    c = load_text(dir, "pipelines:\n"
                       "  p:\n"
                       "    input: { postgres_cdc: { dsn: 'postgres://u@db/erp' } }\n"
                       "    ordering: { key: .after.region }\n"
                       "    outputs: { a: { drop: {} } }\n");
    PB_CHECK(c != NULL);
    if (c) {
        PB_EQ_STR(c->pipelines[0].ordering_key, ".after.region");
        pb_config_destroy(c);
    }
    c = load_text(dir, "pipelines:\n"
                       "  p:\n"
                       "    input: { generate: { count: 1 } }\n"
                       "    outputs: { a: { drop: {} } }\n");
    PB_CHECK(c != NULL);
    if (c) {
        PB_CHECK(c->pipelines[0].ordering_key == NULL && c->pipelines[0].key_jq == NULL);
        pb_config_destroy(c);
    }
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    PB_EQ_INT(system(cmd), 0);
}

/* A dead item's reason is the input's until submit returns: the core keeps
 * a copy, as it does of keys and checkpoints. */
static void count_cb(void *arg, int status, const struct pb_item_result *res, size_t n)
{
    (void)status;
    (void)res;
    (void)n;
    ((struct calls *)arg)->n++;
}

PB_TEST(dead_reason_is_copied_by_submit)
{
    struct fixture f = {0};
    fixture_up(&f);
    struct calls c = {.loop = f.loop}, busy = {.loop = f.loop};
    /* A big batch first keeps the writer busy while the reason is changed. */
    static struct pb_item many[PB_SUBMIT_MAX];
    static char body[4096];
    memset(body, '1', sizeof(body));
    for (size_t i = 0; i < PB_SUBMIT_MAX; i++)
        many[i] = (struct pb_item){.body = body, .len = sizeof(body)};
    PB_EQ_INT(pb_input_submit(f.in, many, PB_SUBMIT_MAX, NULL, 0, count_cb, &busy), 0);
    const char *why = "invalid JSON: unexpected character at byte 4";
    char *reason = strdup(why);
    struct pb_item item = {.body = "not json", .len = 8, .dead_reason = reason};
    PB_EQ_INT(pb_input_submit(f.in, &item, 1, NULL, 0, cb, &c), 0);
    memset(reason, 'X', strlen(reason));
    free(reason);
    run_until(&f, &busy.n, 1);
    run_until(&f, &c.n, 1);
    PB_EQ_INT(c.status, 0);
    PB_EQ_INT(c.res[0].status, PB_ITEM_DEAD);
    struct pb_err err = {0};
    json_t *dl = pb_admin_dead_letters_json(f.e.store, "p", PB_INPUT_OUTPUT, 0, 10, &err);
    PB_CHECK(dl != NULL);
    json_t *list = json_object_get(dl, "items");
    PB_EQ_INT(json_array_size(list), 1);
    PB_EQ_STR(json_string_value(json_object_get(json_array_get(list, 0), "last_error")), why);
    json_decref(dl);
    fixture_down(&f);
}

/* Stopping has begun but the plugin's stop has not run yet: what the input
 * fetched meanwhile is still committed and called back (a broker cannot
 * take it back), and only after stop are submits refused. */
PB_TEST(submit_between_stopping_and_stop_is_committed)
{
    struct fixture f = {0};
    fixture_up(&f);
    struct calls c = {.loop = f.loop};
    struct pb_item ok = {.body = "{}", .len = 2, .key = "fetched-before-stop"};
    atomic_store(&f.in->stopping, true);
    PB_EQ_INT(pb_input_submit(f.in, &ok, 1, NULL, 0, cb, &c), 0);
    run_until(&f, &c.n, 1);
    PB_EQ_INT(c.n, 1);
    PB_EQ_INT(c.status, 0);
    PB_EQ_INT(count_messages(&f), 1);
    atomic_store(&f.in->stopped, true);
    PB_EQ_INT(pb_input_submit(f.in, &ok, 1, NULL, 0, cb, &c), PB_ESHUTDOWN);
    fixture_down(&f);
}

/* An input that counts its lag in bytes (a replication slot) shows it as
 * its own gauge; an input that never set it has none. */
PB_TEST(lag_bytes_show_in_the_metrics)
{
    struct fixture f = {0};
    fixture_up(&f);
    size_t len = 0;
    char *text = pb_metrics_render(&f.e, &len);
    PB_CHECK(text != NULL);
    PB_CHECK(text && !strstr(text, "patchbay_input_lag_bytes{"));
    free(text);
    pb_input_set_lag_bytes(f.in, 123456);
    text = pb_metrics_render(&f.e, &len);
    PB_CHECK(text && strstr(text, "# TYPE patchbay_input_lag_bytes gauge"));
    PB_CHECK(text &&
             strstr(text, "patchbay_input_lag_bytes{pipeline=\"p\",input=\"test\"} 123456"));
    free(text);
    fixture_down(&f);
}

PB_TEST(trace_context_kept_in_meta_or_started)
{
    struct fixture f = {0};
    fixture_up(&f);
    struct calls c = {.loop = f.loop};
    static const char tp[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    static const char hdrs[] =
        "{\"headers\":{\"TraceParent\":\"00-11111111111111111111111111111111-2222222222222222-"
        "00\",\"tracestate\":\"k=v\"}}";
    struct pb_item items[4] = {
        {.body = "{}", .len = 2, .traceparent = tp, .tracestate = "congo=t61rcWkgMzE"},
        {.body = "{}", .len = 2, .meta = hdrs, .meta_len = sizeof(hdrs) - 1},
        {.body = "{}", .len = 2, .traceparent = "garbage", .tracestate = "a=\"b\""},
        {.body = "{}", .len = 2},
    };
    PB_EQ_INT(pb_input_submit(f.in, items, 4, NULL, 0, cb, &c), 0);
    run_until(&f, &c.n, 1);
    PB_EQ_INT(c.status, 0);
    const char *want_tp[4] = {tp, "00-11111111111111111111111111111111-2222222222222222-00", NULL,
                              NULL};
    const char *want_ts[4] = {"congo=t61rcWkgMzE", "k=v", NULL, NULL};
    char started[2][64] = {"", ""};
    for (int i = 0; i < 4; i++) {
        struct pb_err err = {0};
        json_t *m = pb_admin_message_json(f.e.store, c.res[i].msg_id, &err);
        PB_CHECK(m != NULL);
        json_t *meta = json_object_get(m, "meta");
        const char *got = json_string_value(json_object_get(meta, "traceparent"));
        const char *ts = json_string_value(json_object_get(meta, "tracestate"));
        PB_CHECK(got && strlen(got) == 55);
        if (want_tp[i])
            PB_EQ_STR(got, want_tp[i]);
        else if (got)
            snprintf(started[i - 2], sizeof(started[0]), "%s", got);
        if (want_ts[i])
            PB_EQ_STR(ts, want_ts[i]);
        else
            PB_CHECK(ts == NULL);
        json_decref(m);
    }
    /* Two new traces, sampled, with different ids. */
    PB_CHECK(strncmp(started[0], "00-", 3) == 0 && strcmp(started[0] + 52, "-01") == 0);
    PB_CHECK(strncmp(started[0] + 3, started[1] + 3, 32) != 0);
    fixture_down(&f);
}

int main(void)
{
    return pb_test_main();
}
