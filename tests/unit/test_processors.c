/* test_processors.c - the map and filter processors driven through their
 * plugin structs, the way the core drives them: a zeroed context of
 * ctx_size, the program stored at scalar_offset, init, process, destroy. */
#include "pb_test.h"

#include "patchbay/pb_err.h"
#include "patchbay/pb_jq.h"
#include "patchbay/pb_plugin.h"
#include "core/route.h"

/* What one step did with one message (test-local names). */
enum { PB_PROC_PASS = 0, PB_PROC_DROP = 1 };

extern const struct pb_processor_plugin pb_proc_map;
extern const struct pb_processor_plugin pb_proc_filter;
extern const struct pb_processor_plugin pb_proc_dedupe;

static const char order[] = "{\"id\":\"ord_123\",\"total_cents\":4999,"
                            "\"customer\":{\"email\":\"a@b.example\"},"
                            "\"items\":[{\"sku\":\"X-1\"},{\"sku\":\"Y-2\"}],"
                            "\"paid\":true,\"note\":null,\"n\":9007199254740992}";

struct proc {
    const struct pb_processor_plugin *p;
    void *ctx;
};

/* Set up a processor the way the core would for "name: 'program'". */
static int proc_open(struct proc *pr, const struct pb_processor_plugin *p, const char *program,
                     struct pb_err *err)
{
    pr->p = p;
    pr->ctx = calloc(1, p->ctx_size);
    if (!pr->ctx)
        return PB_ENOMEM;
    if (program)
        *(char **)((char *)pr->ctx + p->scalar_offset) = strdup(program);
    static const char *const outs[] = {"a", "b"};
    struct pb_proc_env env = {.pipeline = "p", .noutputs = 2, .outputs = outs};
    return p->init(pr->ctx, &env, err);
}

/* destroy, then free what "the core" decoded */
static void proc_close(struct proc *pr)
{
    pr->p->destroy(pr->ctx);
    free(*(char **)((char *)pr->ctx + pr->p->scalar_offset));
    free(pr->ctx);
}

/* Run one message through; on PASS, *text is the output as JSON. */
static int proc_run(struct proc *pr, const char *json, char **text, struct pb_err *err)
{
    jv in, out = jv_invalid();
    int rc;

    *text = NULL;
    rc = pb_jq_parse(json, strlen(json), &in, err);
    if (rc)
        return rc;
    struct pb_route_step step = {.plugin = pr->p, .ctx = pr->ctx};
    struct pb_route_result res;
    rc = pb_route_run(&step, 1, in, jv_null(), 3, 16, &res, err);
    if (rc)
        return rc;
    if (res.n == 0)
        return PB_PROC_DROP;
    out = jv_copy(res.items[0].body);
    pb_route_result_cleanup(&res);
    rc = pb_jq_dump(out, text, NULL, err);
    return rc ? rc : PB_PROC_PASS;
}

PB_TEST(plugin_structs)
{
    PB_EQ_STR(pb_proc_map.name, "map");
    PB_EQ_STR(pb_proc_filter.name, "filter");
    PB_CHECK(pb_proc_map.scalar_form && pb_proc_filter.scalar_form);
    /* the long form's `program` field lands where the scalar form does */
    PB_EQ_STR(pb_proc_map.fields[0].name, "program");
    PB_EQ_INT(pb_proc_map.fields[0].type, PB_F_STR);
    PB_EQ_INT(pb_proc_map.fields[0].offset, pb_proc_map.scalar_offset);
    PB_EQ_INT(pb_proc_map.fields[1].type, PB_F_END);
    PB_CHECK(pb_proc_map.fields[1].name == NULL);
    PB_EQ_STR(pb_proc_filter.fields[0].name, "program");
    PB_EQ_INT(pb_proc_filter.fields[0].offset, pb_proc_filter.scalar_offset);
    PB_CHECK(pb_proc_filter.fields[1].name == NULL);
    PB_CHECK(pb_proc_map.ctx_size >= pb_proc_map.scalar_offset + sizeof(char *));
}

PB_TEST(map_pass)
{
    struct pb_err err = {0};
    struct proc pr;
    char *text;
    PB_EQ_INT(proc_open(&pr, &pb_proc_map,
                        "{order_id: .id, cents: .total_cents, email: .customer.email}", &err),
              0);
    PB_EQ_INT(proc_run(&pr, order, &text, &err), PB_PROC_PASS);
    PB_EQ_STR(text, "{\"order_id\":\"ord_123\",\"cents\":4999,\"email\":\"a@b.example\"}");
    free(text);
    /* the same context serves many messages */
    PB_EQ_INT(proc_run(&pr, "{\"id\":\"b\",\"total_cents\":1}", &text, &err), PB_PROC_PASS);
    PB_EQ_STR(text, "{\"order_id\":\"b\",\"cents\":1,\"email\":null}");
    free(text);
    proc_close(&pr);

    /* identity keeps the value exactly */
    PB_EQ_INT(proc_open(&pr, &pb_proc_map, ".", &err), 0);
    PB_EQ_INT(proc_run(&pr, order, &text, &err), PB_PROC_PASS);
    PB_EQ_STR(text, order);
    free(text);
    proc_close(&pr);
}

PB_TEST(map_drop_and_errors)
{
    struct pb_err err = {0};
    struct proc pr;
    char *text;

    PB_EQ_INT(proc_open(&pr, &pb_proc_map, "select(.paid | not)", &err), 0);
    PB_EQ_INT(proc_run(&pr, order, &text, &err), PB_PROC_DROP);
    PB_CHECK(text == NULL);
    proc_close(&pr);

    PB_EQ_INT(proc_open(&pr, &pb_proc_map, ".items[]", &err), 0);
    PB_EQ_INT(proc_run(&pr, order, &text, &err), PB_EJQ);
    PB_CONTAINS(err.msg, "map produced 2 values; expected one");
    PB_EQ_INT(proc_run(&pr, "{\"items\":[{\"sku\":1}]}", &text, &err), PB_PROC_PASS);
    PB_EQ_STR(text, "{\"sku\":1}");
    free(text);
    PB_EQ_INT(proc_run(&pr, "{\"items\":[]}", &text, &err), PB_PROC_DROP);
    proc_close(&pr);

    PB_EQ_INT(proc_open(&pr, &pb_proc_map, "range(100)", &err), 0);
    PB_EQ_INT(proc_run(&pr, "null", &text, &err), PB_EJQ);
    PB_CONTAINS(err.msg, "more than");
    proc_close(&pr);

    PB_EQ_INT(proc_open(&pr, &pb_proc_map, ".id + 1", &err), 0);
    PB_EQ_INT(proc_run(&pr, order, &text, &err), PB_EJQ);
    PB_CONTAINS(err.msg, "cannot be added");
    proc_close(&pr);

    /* NaN made by the program is caught when the output is written */
    PB_EQ_INT(proc_open(&pr, &pb_proc_map, "{x: nan}", &err), 0);
    PB_EQ_INT(proc_run(&pr, order, &text, &err), PB_EFIDELITY);
    proc_close(&pr);
}

PB_TEST(init_failures)
{
    struct pb_err err = {0};
    struct proc pr;

    PB_EQ_INT(proc_open(&pr, &pb_proc_map, "{a: .b", &err), PB_EJQ);
    PB_CONTAINS(err.msg, "syntax error");
    proc_close(&pr); /* destroy copes with a failed init */

    PB_EQ_INT(proc_open(&pr, &pb_proc_filter, ".a ==", &err), PB_EJQ);
    PB_CONTAINS(err.msg, "syntax error");
    PB_CHECK(strstr(err.msg, "first") == NULL); /* the user's text, not our wrapper */
    proc_close(&pr);

    /* a text that would only parse once wrapped is refused */
    PB_EQ_INT(proc_open(&pr, &pb_proc_filter, ".) | (.", &err), PB_EJQ);
    proc_close(&pr);

    PB_EQ_INT(proc_open(&pr, &pb_proc_map, NULL, &err), PB_ECONFIG);
    proc_close(&pr);
    PB_EQ_INT(proc_open(&pr, &pb_proc_filter, " \n", &err), PB_ECONFIG);
    PB_CONTAINS(err.msg, "filter");
    proc_close(&pr);

    /* destroy on a context init never saw */
    void *ctx = calloc(1, pb_proc_filter.ctx_size);
    PB_CHECK(ctx != NULL);
    pb_proc_filter.destroy(ctx);
    pb_proc_map.destroy(ctx);
    free(ctx);
    pb_proc_map.destroy(NULL);
    pb_proc_filter.destroy(NULL);
}

PB_TEST(filter_truthiness)
{
    static const struct {
        const char *program;
        int verdict;
    } cases[] = {
        {".paid", PB_PROC_PASS},
        {".paid | not", PB_PROC_DROP},
        {".note", PB_PROC_DROP},
        {".missing", PB_PROC_DROP},
        {"empty", PB_PROC_DROP},
        {".total_cents > 1000", PB_PROC_PASS},
        {".total_cents", PB_PROC_PASS},
        {"0", PB_PROC_PASS},
        {"\"\"", PB_PROC_PASS},
        {"[]", PB_PROC_PASS},
        /* the first output decides; the rest is never computed */
        {".items[] | .sku == \"X-1\"", PB_PROC_PASS},
        {".items[] | .sku == \"Y-2\"", PB_PROC_DROP},
        {"true, error(\"not reached\")", PB_PROC_PASS},
        {"(false, true)", PB_PROC_DROP},
        {"def paid: .paid; paid", PB_PROC_PASS},
        {".paid # a trailing comment", PB_PROC_PASS},
        {".note # comment\n | not", PB_PROC_PASS},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct pb_err err = {0};
        struct proc pr;
        char *text;
        int rc = proc_open(&pr, &pb_proc_filter, cases[i].program, &err);
        if (rc) {
            PB__FAIL("filter '%s': init %s: %s", cases[i].program, pb_err_name(rc), err.msg);
            proc_close(&pr);
            continue;
        }
        rc = proc_run(&pr, order, &text, &err);
        if (rc != cases[i].verdict)
            PB__FAIL("filter '%s': got %d (%s), want %d", cases[i].program, rc, err.msg,
                     cases[i].verdict);
        pb__checks++;
        /* a passed message is the input, unchanged */
        if (rc == PB_PROC_PASS && (!text || strcmp(text, order) != 0))
            PB__FAIL("filter '%s': passed \"%s\"", cases[i].program, text ? text : "(null)");
        free(text);
        proc_close(&pr);
    }
}

PB_TEST(filter_errors)
{
    struct pb_err err = {0};
    struct proc pr;
    char *text;
    PB_EQ_INT(proc_open(&pr, &pb_proc_filter, ".id > (.total_cents + \"x\")", &err), 0);
    PB_EQ_INT(proc_run(&pr, order, &text, &err), PB_EJQ);
    PB_CONTAINS(err.msg, "cannot be added");
    proc_close(&pr);
}

PB_TEST(many_messages_do_not_leak)
{
    struct pb_err err = {0};
    struct proc m, f;
    int pass = 0, drop = 0;
    PB_EQ_INT(proc_open(&m, &pb_proc_map, "{id, paid: (.total_cents > 2000)}", &err), 0);
    PB_EQ_INT(proc_open(&f, &pb_proc_filter, ".paid", &err), 0);
    struct pb_route_step steps[] = {{m.p, m.ctx}, {f.p, f.ctx}};
    for (int i = 0; i < 5000; i++) {
        char body[128];
        jv in;
        struct pb_route_result res;
        snprintf(body, sizeof(body), "{\"id\":%d,\"total_cents\":%d}", i, i);
        if (pb_jq_parse(body, strlen(body), &in, &err))
            break;
        if (pb_route_run(steps, 2, in, jv_null(), 3, 16, &res, &err) != 0)
            break;
        if (res.n == 1)
            pass++;
        else if (res.n == 0 && res.dropped_at == 2)
            drop++;
        pb_route_result_cleanup(&res);
    }
    PB_EQ_INT(pass, 5000 - 2001);
    PB_EQ_INT(drop, 2001);
    proc_close(&m);
    proc_close(&f);
}

/* ---- dedupe, with keys in memory and a clock of the test's ---- */

static int64_t fake_now(void *arg)
{
    return *(int64_t *)arg;
}

/* Run one message (id msg_id) through pr with keys; PB_PROC_PASS/DROP or < 0. */
static int dedupe_run(struct proc *pr, struct pb_route_keys *keys, const char *msg_id,
                      const char *json, struct pb_err *err)
{
    jv in;
    int rc = pb_jq_parse(json, strlen(json), &in, err);
    if (rc)
        return rc;
    struct pb_route_step step = {.plugin = pr->p, .ctx = pr->ctx};
    struct pb_route_env env = {.pipeline = "p", .msg_id = msg_id, .keys = keys};
    struct pb_route_result res;
    rc = pb_route_run_env(&env, &step, 1, in, jv_null(), 3, 16, &res, err);
    if (rc)
        return rc;
    rc = res.n ? PB_PROC_PASS : PB_PROC_DROP;
    pb_route_result_cleanup(&res);
    return rc;
}

PB_TEST(dedupe_passes_each_key_once_per_window)
{
    struct pb_err err = {0};
    struct proc pr;
    int64_t now = 1000000;
    struct pb_route_keys *keys = pb_route_keys_memory(fake_now, &now);
    PB_CHECK(keys != NULL);
    PB_EQ_INT(proc_open(&pr, &pb_proc_dedupe, ".id", &err), 0);
    PB_EQ_INT(dedupe_run(&pr, keys, "m1", "{\"id\":1}", &err), PB_PROC_PASS);
    PB_EQ_INT(dedupe_run(&pr, keys, "m2", "{\"id\":2}", &err), PB_PROC_PASS);
    PB_EQ_INT(dedupe_run(&pr, keys, "m3", "{\"id\":1,\"v\":2}", &err), PB_PROC_DROP);
    /* A string is keyed by its text and a number by its JSON: 1 and "1"
     * are one key. */
    PB_EQ_INT(dedupe_run(&pr, keys, "m4", "{\"id\":\"1\"}", &err), PB_PROC_DROP);
    /* The same message routed again (a restart before its decision). */
    PB_EQ_INT(dedupe_run(&pr, keys, "m1", "{\"id\":1}", &err), PB_PROC_PASS);
    /* No key: passes (on_missing: pass, the default). */
    PB_EQ_INT(dedupe_run(&pr, keys, "m5", "{\"x\":1}", &err), PB_PROC_PASS);
    /* The window (24 h by default) over: the key is free again. */
    now += 24LL * 3600 * 1000;
    PB_EQ_INT(dedupe_run(&pr, keys, "m6", "{\"id\":1}", &err), PB_PROC_PASS);
    PB_EQ_INT(dedupe_run(&pr, keys, "m1", "{\"id\":1}", &err), PB_PROC_DROP);
    /* A run that keeps no keys fails the message rather than let repeats by. */
    PB_EQ_INT(dedupe_run(&pr, NULL, "m7", "{\"id\":9}", &err), PB_EINVAL);
    proc_close(&pr);
    pb_route_keys_memory_free(keys);
}

PB_TEST(dedupe_long_keys_and_bad_windows)
{
    struct pb_err err = {0};
    struct proc pr;
    int64_t now = 5000;
    struct pb_route_keys *keys = pb_route_keys_memory(fake_now, &now);
    PB_EQ_INT(proc_open(&pr, &pb_proc_dedupe, ".s", &err), 0);
    char big[1400];
    memset(big, 0, sizeof(big));
    strcpy(big, "{\"s\":\"");
    memset(big + 6, 'a', 1000);
    strcpy(big + 1006, "\"}");
    PB_EQ_INT(dedupe_run(&pr, keys, "m1", big, &err), PB_PROC_PASS);
    PB_EQ_INT(dedupe_run(&pr, keys, "m2", big, &err), PB_PROC_DROP);
    big[500] = 'b'; /* another long key */
    PB_EQ_INT(dedupe_run(&pr, keys, "m3", big, &err), PB_PROC_PASS);
    proc_close(&pr);
    pb_route_keys_memory_free(keys);

    struct proc bad = {.p = &pb_proc_dedupe};
    bad.ctx = calloc(1, pb_proc_dedupe.ctx_size);
    PB_CHECK(bad.ctx != NULL);
    *(char **)((char *)bad.ctx + pb_proc_dedupe.scalar_offset) = strdup(".id");
    /* window follows the key in the context: 10 ms is refused */
    struct pb_proc_env env = {.pipeline = "p"};
    int64_t *window = (int64_t *)((char *)bad.ctx + pb_proc_dedupe.fields[1].offset);
    *window = 10;
    PB_EQ_INT(pb_proc_dedupe.init(bad.ctx, &env, &err), PB_ECONFIG);
    proc_close(&bad);
}

int main(void)
{
    return pb_test_main();
}
