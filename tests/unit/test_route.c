/* test_route.c - the route stage's decision (src/core/route.c): process steps
 * run once per message, passing on 0..N messages with the outputs each goes
 * to; switch, split, filter and map as configured, $meta visible to every
 * step. The steps are set up the way the core does it. */
#include "pb_test.h"

#include "core/route.h"
#include "patchbay/pb_conf.h"
#include "patchbay/pb_jq.h"
#include "patchbay/pb_plugin.h"

extern const struct pb_processor_plugin pb_proc_map;
extern const struct pb_processor_plugin pb_proc_filter;
extern const struct pb_processor_plugin pb_proc_switch;
extern const struct pb_processor_plugin pb_proc_split;

static const char *const outs[] = {"payments", "fraud", "audit"};
static const struct pb_proc_env env = {.pipeline = "shop", .noutputs = 3, .outputs = outs};

struct chain {
    struct pb_conf_doc *doc;
    size_t n;
    struct pb_route_step steps[8];
};

/* Build the steps of `process:` in yaml (a list of one-key maps) as
 * config.c does: scalar form, sequence form or a field table. */
static int chain_open(struct chain *c, const char *yaml, struct pb_err *err)
{
    memset(c, 0, sizeof(*c));
    c->doc = pb_conf_load_string("test.yaml", yaml, strlen(yaml), err);
    if (!c->doc)
        return err->code;
    const struct pb_node *list = pb_conf_root(c->doc);
    for (size_t i = 0; i < list->n; i++) {
        const struct pb_node *step = list->vals[i];
        const struct pb_processor_plugin *p = pb_registry_processor(step->keys[0]->str);
        const struct pb_node *body = step->vals[0];
        if (!p)
            return pb_err_set(err, PB_ECONFIG, "no processor %s", step->keys[0]->str);
        struct pb_route_step *s = &c->steps[c->n++];
        s->plugin = p;
        s->ctx = calloc(1, p->ctx_size);
        if (p->scalar_form && body->type == PB_NODE_SCALAR) {
            char *str = strdup(body->str);
            memcpy((char *)s->ctx + p->scalar_offset, &str, sizeof(str));
        } else if (p->seq_form) {
            memcpy((char *)s->ctx + p->node_offset, &body, sizeof(body));
        } else {
            int rc = pb_conf_decode(body, p->fields, s->ctx, err);
            if (rc)
                return rc;
        }
        int rc = p->init(s->ctx, &env, err);
        if (rc)
            return rc;
    }
    return 0;
}

static void chain_close(struct chain *c)
{
    for (size_t i = 0; i < c->n; i++) {
        struct pb_route_step *s = &c->steps[i];
        s->plugin->destroy(s->ctx);
        if (s->plugin->scalar_form) {
            char *str;
            memcpy(&str, (char *)s->ctx + s->plugin->scalar_offset, sizeof(str));
            free(str);
            str = NULL;
            memcpy((char *)s->ctx + s->plugin->scalar_offset, &str, sizeof(str));
        }
        if (s->plugin->fields)
            pb_conf_free(s->plugin->fields, s->ctx);
        free(s->ctx);
    }
    pb_conf_doc_destroy(c->doc);
}

/* Route json with meta; fill texts[i] with each message as JSON. */
static int route(struct chain *c, const char *json, const char *meta, struct pb_route_result *res,
                 char texts[][256], struct pb_err *err)
{
    jv in, m = jv_null();
    int rc = pb_jq_parse(json, strlen(json), &in, err);
    if (rc)
        return rc;
    if (meta && (rc = pb_jq_parse(meta, strlen(meta), &m, err)) != 0)
        return rc;
    rc = pb_route_run(c->steps, c->n, in, m, 7, 100, res, err);
    jv_free(m);
    for (size_t i = 0; rc == 0 && i < res->n && i < 16; i++) {
        char *t;
        if (pb_jq_dump(jv_copy(res->items[i].body), &t, NULL, err) == 0) {
            snprintf(texts[i], 256, "%s", t);
            free(t);
        }
    }
    return rc;
}

PB_TEST(no_steps_passes_the_message_unchanged)
{
    struct pb_err err = {0};
    struct pb_route_result res;
    char texts[16][256];
    struct chain c = {0};
    PB_EQ_INT(route(&c, "{\"a\":1}", NULL, &res, texts, &err), 0);
    PB_EQ_INT(res.n, 1);
    PB_EQ_INT(res.items[0].outputs, 7);
    PB_CHECK(!res.changed && !res.split);
    pb_route_result_cleanup(&res);
}

PB_TEST(filter_and_switch_do_not_change_the_body)
{
    struct pb_err err = {0};
    struct pb_route_result res;
    char texts[16][256];
    struct chain c;
    PB_EQ_INT(chain_open(&c,
                         "- filter: '.cents > 0'\n"
                         "- switch:\n"
                         "    - { when: '.cents >= 100000', to: [payments, fraud] }\n"
                         "    - { otherwise: [payments] }\n",
                         &err),
              0);
    PB_EQ_INT(route(&c, "{\"cents\":150000}", NULL, &res, texts, &err), 0);
    PB_EQ_INT(res.n, 1);
    PB_EQ_INT(res.items[0].outputs, 3); /* payments + fraud; audit routed away */
    PB_CHECK(!res.changed);
    pb_route_result_cleanup(&res);

    PB_EQ_INT(route(&c, "{\"cents\":5}", NULL, &res, texts, &err), 0);
    PB_EQ_INT(res.n, 1);
    PB_EQ_INT(res.items[0].outputs, 1); /* otherwise: payments */
    pb_route_result_cleanup(&res);

    PB_EQ_INT(route(&c, "{\"cents\":0}", NULL, &res, texts, &err), 0);
    PB_EQ_INT(res.n, 0);
    PB_EQ_INT(res.dropped_at, 1);
    PB_EQ_STR(res.dropped_by, "filter");
    pb_route_result_cleanup(&res);
    chain_close(&c);
}

PB_TEST(switch_first_true_case_decides_and_no_case_routes_away_everything)
{
    struct pb_err err = {0};
    struct pb_route_result res;
    char texts[16][256];
    struct chain c;
    PB_EQ_INT(chain_open(&c,
                         "- switch:\n"
                         "    - { when: '.a', to: [audit] }\n"
                         "    - { when: '.a or .b', to: [fraud] }\n",
                         &err),
              0);
    PB_EQ_INT(route(&c, "{\"a\":true,\"b\":true}", NULL, &res, texts, &err), 0);
    PB_EQ_INT(res.items[0].outputs, 4);
    pb_route_result_cleanup(&res);
    PB_EQ_INT(route(&c, "{\"b\":1}", NULL, &res, texts, &err), 0);
    PB_EQ_INT(res.items[0].outputs, 2);
    pb_route_result_cleanup(&res);
    PB_EQ_INT(route(&c, "{}", NULL, &res, texts, &err), 0);
    PB_EQ_INT(res.n, 1);
    PB_EQ_INT(res.items[0].outputs, 0);
    pb_route_result_cleanup(&res);
    chain_close(&c);
}

PB_TEST(switch_routes_on_meta_headers)
{
    struct pb_err err = {0};
    struct pb_route_result res;
    char texts[16][256];
    struct chain c;
    PB_EQ_INT(chain_open(&c,
                         "- switch:\n"
                         "    - { when: '$meta.headers[\"x-github-event\"] == \"push\"', to: "
                         "[payments] }\n"
                         "    - { otherwise: [audit] }\n",
                         &err),
              0);
    PB_EQ_INT(route(&c, "{}", "{\"headers\":{\"x-github-event\":\"push\"}}", &res, texts, &err), 0);
    PB_EQ_INT(res.items[0].outputs, 1);
    pb_route_result_cleanup(&res);
    PB_EQ_INT(route(&c, "{}", "{\"headers\":{\"x-github-event\":\"issues\"}}", &res, texts, &err),
              0);
    PB_EQ_INT(res.items[0].outputs, 4);
    pb_route_result_cleanup(&res);
    chain_close(&c);
}

PB_TEST(switch_config_errors)
{
    struct pb_err err = {0};
    struct chain c;
    PB_CHECK(chain_open(&c, "- switch:\n    - { when: '.a', to: [nowhere] }\n", &err) != 0);
    PB_CONTAINS(err.msg, "no output \"nowhere\"");
    PB_CONTAINS(err.msg, "payments, fraud, audit");
    PB_EQ_INT(err.line, 2);
    chain_close(&c);
    memset(&err, 0, sizeof(err));
    PB_CHECK(chain_open(
                 &c, "- switch:\n    - { otherwise: [audit] }\n    - { when: '.a', to: [audit] }\n",
                 &err) != 0);
    PB_CONTAINS(err.msg, "otherwise must be the last case");
    chain_close(&c);
    memset(&err, 0, sizeof(err));
    PB_CHECK(chain_open(&c, "- switch:\n    - { when: '.a' }\n", &err) != 0);
    PB_CONTAINS(err.msg, "needs when and to");
    chain_close(&c);
    memset(&err, 0, sizeof(err));
    PB_CHECK(chain_open(&c, "- switch:\n    - { when: '.a |', to: [audit] }\n", &err) != 0);
    PB_CONTAINS(err.msg, "jq");
    PB_EQ_INT(err.line, 2);
    chain_close(&c);
}

PB_TEST(split_makes_new_messages_and_later_steps_see_each)
{
    struct pb_err err = {0};
    struct pb_route_result res;
    char texts[16][256];
    struct chain c;
    PB_EQ_INT(chain_open(&c,
                         "- split: '.items[]'\n"
                         "- map: '{sku, order: $meta.order}'\n"
                         "- switch:\n"
                         "    - { when: '.sku == \"B\"', to: [audit] }\n"
                         "    - { otherwise: [payments] }\n",
                         &err),
              0);
    PB_EQ_INT(route(&c, "{\"items\":[{\"sku\":\"A\"},{\"sku\":\"B\"},{\"sku\":\"C\"}]}",
                    "{\"order\":7}", &res, texts, &err),
              0);
    PB_EQ_INT(res.n, 3);
    PB_CHECK(res.split && res.changed);
    PB_EQ_STR(texts[0], "{\"sku\":\"A\",\"order\":7}");
    PB_EQ_STR(texts[1], "{\"sku\":\"B\",\"order\":7}");
    PB_EQ_INT(res.items[0].outputs, 1);
    PB_EQ_INT(res.items[1].outputs, 4);
    PB_EQ_INT(res.items[2].outputs, 1);
    pb_route_result_cleanup(&res);

    /* nothing to split: dropped on purpose, at step 1 */
    PB_EQ_INT(route(&c, "{\"items\":[]}", NULL, &res, texts, &err), 0);
    PB_EQ_INT(res.n, 0);
    PB_EQ_INT(res.dropped_at, 1);
    pb_route_result_cleanup(&res);
    chain_close(&c);
}

PB_TEST(split_bounds)
{
    struct pb_err err = {0};
    struct pb_route_result res;
    char texts[16][256];
    struct chain c;
    PB_EQ_INT(chain_open(&c, "- split: { program: 'range(5)', max: 4 }\n", &err), 0);
    PB_EQ_INT(route(&c, "{}", NULL, &res, texts, &err), PB_EJQ);
    PB_CONTAINS(err.msg, "process step 1 (split)");
    PB_EQ_INT(res.n, 0);
    chain_close(&c);

    /* the stage's own bound (100 here) holds across steps */
    memset(&err, 0, sizeof(err));
    PB_EQ_INT(chain_open(&c, "- split: 'range(60)'\n- split: '., .'\n", &err), 0);
    PB_EQ_INT(route(&c, "{}", NULL, &res, texts, &err), PB_ETOOBIG);
    PB_CONTAINS(err.msg, "process step 2 (split)");
    chain_close(&c);
}

PB_TEST(map_changes_and_errors_name_the_step)
{
    struct pb_err err = {0};
    struct pb_route_result res;
    char texts[16][256];
    struct chain c;
    PB_EQ_INT(
        chain_open(&c, "- filter: 'true'\n- map: '{x: (.a + 1), input: $meta.input}'\n", &err), 0);
    PB_EQ_INT(route(&c, "{\"a\":1}", "{\"input\":\"http_server\"}", &res, texts, &err), 0);
    PB_CHECK(res.changed);
    PB_EQ_STR(texts[0], "{\"x\":2,\"input\":\"http_server\"}");
    pb_route_result_cleanup(&res);
    PB_EQ_INT(route(&c, "{\"a\":\"s\"}", NULL, &res, texts, &err), PB_EJQ);
    PB_CONTAINS(err.msg, "process step 2 (map): jq:");
    chain_close(&c);
}

PB_TEST(identity_map_is_still_a_change)
{
    /* `map: .` re-serialises: the routed body is jq's text, not the bytes. */
    struct pb_err err = {0};
    struct pb_route_result res;
    char texts[16][256];
    struct chain c;
    PB_EQ_INT(chain_open(&c, "- map: '.a'\n", &err), 0);
    PB_EQ_INT(route(&c, "{\"a\":{\"b\":1}}", NULL, &res, texts, &err), 0);
    PB_CHECK(res.changed);
    PB_EQ_STR(texts[0], "{\"b\":1}");
    pb_route_result_cleanup(&res);
    chain_close(&c);
}

/* ---- steps that wait ------------------------------------------------------------------------ */

/* A step that parks every message and is resumed by the test: it adds
 * {"looked_up": n} once resumed, or fails with what the test says. */
struct waiter {
    struct pb_proc_wait *w;
    jv held;
    int mode; /* 0 park; 1 park and resume at once (from inside process) */
    bool park_refused;
};

static int waiter_process(void *ctx, struct pb_proc_io *io, jv in, struct pb_err *err)
{
    struct waiter *wt = ctx;
    struct pb_proc_wait *w = pb_proc_park(io);
    (void)err;
    if (!w) {
        wt->park_refused = true;
        return pb_proc_emit(io, in, pb_proc_outputs(io));
    }
    if (wt->mode == 1) {
        pb_proc_emit(pb_proc_wait_io(w), jv_object_set(in, jv_string("inline"), jv_true()),
                     pb_proc_outputs(io));
        pb_proc_resume(w, 0, NULL);
        return 0;
    }
    wt->w = w;
    wt->held = in;
    return 0;
}

static const struct pb_processor_plugin waiter_plugin = {
    .name = "waiter", .ctx_size = sizeof(struct waiter), .process = waiter_process};

static int resumed_calls;
static void on_resumed(void *arg)
{
    (void)arg;
    resumed_calls++;
}

static void waiter_finish(struct waiter *wt, int rc, const char *why)
{
    struct pb_err e = {0};
    struct pb_proc_io *io = pb_proc_wait_io(wt->w);
    if (rc == 0)
        pb_proc_emit(io, jv_object_set(wt->held, jv_string("looked_up"), jv_number(1)), 1);
    else
        jv_free(wt->held);
    if (why)
        pb_err_set(&e, rc, "%s", why);
    pb_proc_resume(wt->w, rc, why ? &e : NULL);
}

PB_TEST(a_parked_step_resumes_and_the_next_steps_run)
{
    struct pb_err err = {0};
    struct chain c;
    PB_EQ_INT(chain_open(&c, "- map: '.b = 2'\n", &err), 0);
    struct waiter wt = {0};
    struct pb_route_step steps[2] = {{.plugin = &waiter_plugin, .ctx = &wt}, c.steps[0]};
    struct pb_route_run run;
    struct pb_route_result res;
    resumed_calls = 0;
    PB_EQ_INT(pb_route_start(&run, steps, 2, jv_parse("{\"a\":1}"), jv_null(), 7, 100, on_resumed,
                             NULL, &res, &err),
              PB_ROUTE_PARKED);
    PB_EQ_INT(resumed_calls, 0);
    waiter_finish(&wt, 0, NULL);
    PB_EQ_INT(resumed_calls, 1);
    PB_EQ_INT(pb_route_continue(&run, &err), 0);
    PB_EQ_INT(res.n, 1);
    PB_EQ_INT(res.items[0].outputs, 1);
    PB_CHECK(res.changed);
    char *t = NULL;
    pb_jq_dump(jv_copy(res.items[0].body), &t, NULL, &err);
    PB_EQ_STR(t, "{\"a\":1,\"looked_up\":1,\"b\":2}");
    free(t);
    pb_route_result_cleanup(&res);
    chain_close(&c);
}

PB_TEST(a_parked_step_that_fails_names_itself_and_keeps_its_code)
{
    struct pb_err err = {0};
    struct waiter wt = {0};
    struct pb_route_step steps[1] = {{.plugin = &waiter_plugin, .ctx = &wt}};
    struct pb_route_run run;
    struct pb_route_result res;
    PB_EQ_INT(pb_route_start(&run, steps, 1, jv_parse("{}"), jv_null(), 1, 100, on_resumed, NULL,
                             &res, &err),
              PB_ROUTE_PARKED);
    waiter_finish(&wt, PB_EAGAIN, "lookup failed: HTTP 503");
    PB_EQ_INT(pb_route_continue(&run, &err), PB_EAGAIN);
    PB_EQ_STR(err.msg, "process step 1 (waiter): lookup failed: HTTP 503");
    PB_EQ_INT(res.n, 0);
}

PB_TEST(resuming_from_inside_process_goes_straight_on)
{
    struct pb_err err = {0};
    struct waiter wt = {.mode = 1};
    struct pb_route_step steps[1] = {{.plugin = &waiter_plugin, .ctx = &wt}};
    struct pb_route_run run;
    struct pb_route_result res;
    resumed_calls = 0;
    PB_EQ_INT(pb_route_start(&run, steps, 1, jv_parse("{}"), jv_null(), 1, 100, on_resumed, NULL,
                             &res, &err),
              0);
    PB_EQ_INT(resumed_calls, 0);
    PB_EQ_INT(res.n, 1);
    pb_route_result_cleanup(&res);
}

PB_TEST(a_run_that_cannot_wait_refuses_to_park)
{
    struct pb_err err = {0};
    struct waiter wt = {0};
    struct pb_route_step steps[1] = {{.plugin = &waiter_plugin, .ctx = &wt}};
    struct pb_route_result res;
    jv m = jv_null();
    PB_EQ_INT(pb_route_run(steps, 1, jv_parse("{}"), m, 1, 100, &res, &err), 0);
    PB_CHECK(wt.park_refused);
    PB_EQ_INT(res.n, 1);
    pb_route_result_cleanup(&res);
}

PB_TEST(a_split_of_parked_messages_resumes_each_in_order)
{
    struct pb_err err = {0};
    struct chain c;
    PB_EQ_INT(chain_open(&c, "- split: '.[]'\n", &err), 0);
    struct waiter wt = {0};
    struct pb_route_step steps[2] = {c.steps[0], {.plugin = &waiter_plugin, .ctx = &wt}};
    struct pb_route_run run;
    struct pb_route_result res;
    int rc = pb_route_start(&run, steps, 2, jv_parse("[{\"i\":1},{\"i\":2},{\"i\":3}]"), jv_null(),
                            1, 100, on_resumed, NULL, &res, &err);
    int parks = 0;
    while (rc == PB_ROUTE_PARKED && parks < 10) {
        parks++;
        waiter_finish(&wt, 0, NULL);
        rc = pb_route_continue(&run, &err);
    }
    PB_EQ_INT(rc, 0);
    PB_EQ_INT(parks, 3);
    PB_EQ_INT(res.n, 3);
    PB_CHECK(res.split);
    char *t = NULL;
    pb_jq_dump(jv_copy(res.items[2].body), &t, NULL, &err);
    PB_EQ_STR(t, "{\"i\":3,\"looked_up\":1}");
    free(t);
    pb_route_result_cleanup(&res);
    chain_close(&c);
}

int main(void)
{
    return pb_test_main();
}
