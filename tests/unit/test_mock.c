/* test_mock.c - mocked answers for processors (`patchbay test`): a lookup
 * processor of the test's own, shaped like enrich (an HTTP GET per message,
 * its answer merged in), run through pb_route_run with a pb_mock in its
 * env, the way the test runner loads a configuration. */
#include "pb_test.h"

#include "core/mock.h"
#include "core/route.h"

struct lookup {
    struct pb_mock *mock;
};

static int lookup_init(void *ctx, const struct pb_proc_env *env, struct pb_err *err)
{
    struct lookup *l = ctx;
    (void)err;
    l->mock = env->mock;
    return 0;
}

/* GET https://crm.example/customers/<.customer> and put the answer in .crm. */
static int lookup_process(void *ctx, struct pb_proc_io *io, jv in, struct pb_err *err)
{
    struct lookup *l = ctx;
    char url[256];
    jv c = jv_object_get(jv_copy(in), jv_string("customer"));
    snprintf(url, sizeof(url), "https://crm.example/customers/%s",
             jv_get_kind(c) == JV_KIND_STRING ? jv_string_value(c) : "?");
    struct pb_http_header h = {"Accept", "application/json"};
    struct pb_http_req req = {.method = "GET", .url = url, .headers = &h, .nheaders = 1};
    struct pb_http_resp resp;
    int rc = pb_mock_http(l->mock, "lookup",
                          jv_get_kind(c) == JV_KIND_STRING ? jv_string_value(c) : NULL, &req, &resp,
                          err);
    jv_free(c);
    if (rc) {
        jv_free(in);
        return rc;
    }
    if (resp.status == 0) {
        jv_free(in);
        return pb_err_set(err, PB_ENET, "lookup: %s", resp.error);
    }
    jv ans;
    if (resp.status != 200 || pb_jq_parse(resp.body, resp.body_len, &ans, NULL) != 0)
        ans = jv_number(resp.status);
    return pb_proc_emit(io, jv_object_set(in, jv_string("crm"), ans), pb_proc_outputs(io));
}

static const struct pb_processor_plugin lookup_plugin = {
    .name = "lookup",
    .ctx_size = sizeof(struct lookup),
    .init = lookup_init,
    .process = lookup_process,
};

static jv J(const char *text)
{
    jv v;
    if (pb_jq_parse(text, strlen(text), &v, NULL) != 0)
        abort();
    return v;
}

/* Run the lookup on body; the result as JSON text (malloc'd) or NULL with err. */
static char *run(struct pb_mock *m, const char *body, struct pb_err *err)
{
    struct lookup ctx = {0};
    struct pb_proc_env env = {.pipeline = "p", .noutputs = 1, .mock = m};
    lookup_init(&ctx, &env, err);
    struct pb_route_step step = {.plugin = &lookup_plugin, .ctx = &ctx};
    struct pb_route_result res;
    char *text = NULL;
    if (pb_route_run(&step, 1, J(body), jv_null(), 1, 10, &res, err) != 0)
        return NULL;
    if (res.n == 1)
        pb_jq_dump(jv_copy(res.items[0].body), &text, NULL, err);
    pb_route_result_cleanup(&res);
    return text;
}

PB_TEST(first_matching_answer_wins)
{
    struct pb_mock *m = pb_mock_create();
    struct pb_err err = {0};
    PB_EQ_INT(pb_mock_add(m, "lookup", J("{\"key\":\"c1\"}"), NULL,
                          J("{\"body\":{\"tier\":\"gold\"}}"), &err),
              0);
    PB_EQ_INT(pb_mock_add(m, "lookup", J("{\"url\":\"https://crm.example/customers/c2\"}"), NULL,
                          J("{\"status\":404}"), &err),
              0);
    PB_EQ_INT(pb_mock_add(m, "lookup", jv_null(), NULL,
                          J("{\"raw\":\"{\\\"tier\\\":\\\"any\\\"}\"}"), &err),
              0);
    char *t = run(m, "{\"customer\":\"c1\"}", &err);
    PB_EQ_STR(t, "{\"customer\":\"c1\",\"crm\":{\"tier\":\"gold\"}}");
    free(t);
    t = run(m, "{\"customer\":\"c2\"}", &err);
    PB_EQ_STR(t, "{\"customer\":\"c2\",\"crm\":404}");
    free(t);
    t = run(m, "{\"customer\":\"c3\"}", &err);
    PB_EQ_STR(t, "{\"customer\":\"c3\",\"crm\":{\"tier\":\"any\"}}");
    free(t);
    PB_EQ_INT(pb_mock_ncalls(m), 3);
    PB_EQ_STR(pb_mock_call(m, 1), "lookup GET https://crm.example/customers/c2 (key c2)");
    pb_mock_destroy(m);
}

PB_TEST(when_predicate_headers_and_no_match)
{
    struct pb_mock *m = pb_mock_create();
    struct pb_err err = {0};
    PB_EQ_INT(pb_mock_add(m, "lookup", J("{\"headers\":{\"accept\":\"application/json\"}}"),
                          pb_jq_compile_predicate(".key | startswith(\"vip-\")", &err),
                          J("{\"body\":true}"), &err),
              0);
    PB_EQ_INT(pb_mock_add(m, "other", jv_null(), NULL, J("{\"body\":1}"), &err), 0);
    PB_EQ_INT(pb_mock_add(m, "lookup", J("{\"key\":\"down\"}"), NULL,
                          J("{\"error\":\"connection refused\"}"), &err),
              0);
    char *t = run(m, "{\"customer\":\"vip-1\"}", &err);
    PB_EQ_STR(t, "{\"customer\":\"vip-1\",\"crm\":true}");
    free(t);
    memset(&err, 0, sizeof(err));
    t = run(m, "{\"customer\":\"plain\"}", &err);
    PB_CHECK(t == NULL);
    PB_CONTAINS(err.msg, "no mocked answer for lookup GET https://crm.example/customers/plain");
    memset(&err, 0, sizeof(err));
    t = run(m, "{\"customer\":\"down\"}", &err);
    PB_CHECK(t == NULL);
    PB_CONTAINS(err.msg, "lookup: connection refused");
    pb_mock_reset(m);
    PB_EQ_INT(pb_mock_ncalls(m), 0);
    memset(&err, 0, sizeof(err));
    t = run(m, "{\"customer\":\"vip-1\"}", &err);
    PB_CHECK(t == NULL);
    pb_mock_destroy(m);
}

PB_TEST(subset)
{
    static const struct {
        const char *want, *got;
        bool ok;
    } cases[] = {
        {"{}", "{\"a\":1}", true},
        {"{\"a\":1}", "{\"a\":1.0,\"b\":2}", true},
        {"{\"a\":{\"b\":[1,{\"c\":2}]}}", "{\"a\":{\"b\":[1,{\"c\":2,\"d\":3}],\"x\":0}}", true},
        {"{\"a\":[1]}", "{\"a\":[1,2]}", false},
        {"{\"a\":null}", "{}", false},
        {"{\"a\":null}", "{\"a\":null}", true},
        {"\"x\"", "\"xy\"", false},
        {"1", "\"1\"", false},
        {"[]", "{}", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        jv w = J(cases[i].want), g = J(cases[i].got);
        bool got = pb_jv_subset(w, g);
        if (got != cases[i].ok)
            PB__FAIL("subset(%s, %s): got %d", cases[i].want, cases[i].got, got);
        jv_free(w);
        jv_free(g);
    }
}

int main(void)
{
    return pb_test_main();
}
