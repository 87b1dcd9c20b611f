/* test_jq.c - jq programs through pb_jq: compile errors, runtime errors,
 * output caps, the fidelity checks on the way in and out, and reference
 * counting (run under ASan/LSan: a leak fails the build). */
#include "pb_test.h"

#include "patchbay/pb_err.h"
#include "patchbay/pb_jq.h"

static const char order[] = "{\"id\":\"ord_123\",\"total_cents\":4999,\"currency\":\"usd\","
                            "\"customer\":{\"email\":\"a@b.example\",\"name\":\"J\\u00f6rg\"},"
                            "\"items\":[{\"sku\":\"X-1\",\"qty\":2},{\"sku\":\"Y-2\",\"qty\":1}],"
                            "\"paid\":true,\"note\":null}";

/* Compile program, run it on the JSON text in, dump the single output into
 * *text (malloc'd). Returns the first error. */
static int run1(const char *program, const char *in, char **text, struct pb_err *err)
{
    struct pb_jq *q = pb_jq_compile(program, err);
    jv v, out[2];
    size_t n = 0;
    int rc;

    *text = NULL;
    if (!q)
        return err->code;
    rc = pb_jq_parse(in, strlen(in), &v, err);
    if (rc)
        goto out;
    rc = pb_jq_run(q, v, out, 2, &n, err);
    if (rc)
        goto out;
    if (n != 1) {
        while (n)
            jv_free(out[--n]);
        rc = pb_err_set(err, PB_EINTERNAL, "expected one output");
        goto out;
    }
    rc = pb_jq_dump(out[0], text, NULL, err);
out:
    pb_jq_destroy(q);
    return rc;
}

PB_TEST(map_order_byte_exact)
{
    struct pb_err err = {0};
    char *text;
    PB_EQ_INT(
        run1("{order_id: .id, cents: .total_cents, email: .customer.email}", order, &text, &err),
        0);
    PB_EQ_STR(text, "{\"order_id\":\"ord_123\",\"cents\":4999,\"email\":\"a@b.example\"}");
    free(text);

    /* identity keeps key order and values; escapes come out as UTF-8 */
    PB_EQ_INT(run1(".",
                   "{\"b\":1,\"a\":[true,null,\"\\u00e9\\/\"],\"n\":9007199254740992,"
                   "\"f\":0.30000000000000004,\"z\":-0.5e-3}",
                   &text, &err),
              0);
    PB_EQ_STR(text, "{\"b\":1,\"a\":[true,null,\"\xc3\xa9/\"],\"n\":9007199254740992,"
                    "\"f\":0.30000000000000004,\"z\":-0.0005}");
    free(text);
}

PB_TEST(dump_length_and_scalars)
{
    struct pb_err err = {0};
    char *text;
    size_t len;
    PB_EQ_INT(pb_jq_dump(jv_string("caf\xc3\xa9\n"), &text, &len, &err), 0);
    PB_EQ_STR(text, "\"caf\xc3\xa9\\n\"");
    PB_EQ_INT(len, strlen(text));
    free(text);
    PB_EQ_INT(pb_jq_dump(jv_null(), &text, &len, &err), 0);
    PB_EQ_STR(text, "null");
    free(text);
    PB_EQ_INT(pb_jq_dump(jv_invalid(), &text, &len, &err), PB_EINVAL);
    PB_CHECK(text == NULL);
}

PB_TEST(truthiness)
{
    PB_CHECK(!pb_jq_truthy(jv_false()));
    PB_CHECK(!pb_jq_truthy(jv_null()));
    PB_CHECK(pb_jq_truthy(jv_true()));
    PB_CHECK(pb_jq_truthy(jv_number(0)));
    jv e = jv_string("");
    PB_CHECK(pb_jq_truthy(e));
    jv_free(e);
    jv a = jv_array();
    PB_CHECK(pb_jq_truthy(a)); /* borrows */
    PB_CHECK(pb_jq_truthy(a));
    jv_free(a);
    jv o = jv_object();
    PB_CHECK(pb_jq_truthy(o));
    jv_free(o);

    struct pb_err err = {0};
    char *text;
    PB_EQ_INT(run1(".paid and (.total_cents > 1000)", order, &text, &err), 0);
    PB_EQ_STR(text, "true");
    free(text);
    PB_EQ_INT(run1(".note", order, &text, &err), 0);
    PB_EQ_STR(text, "null");
    free(text);
}

PB_TEST(compile_errors)
{
    struct pb_err err = {0};
    PB_CHECK(pb_jq_compile(".a +", &err) == NULL);
    PB_EQ_INT(err.code, PB_EJQ);
    PB_CONTAINS(err.msg, "jq: syntax error");
    PB_CONTAINS(err.msg, "line 1");
    PB_CHECK(strchr(err.msg, '\n') == NULL);
    PB_CHECK(strstr(err.msg, "shell quoting") == NULL);

    PB_CHECK(pb_jq_compile("{a: foo(1)}", &err) == NULL);
    PB_EQ_INT(err.code, PB_EJQ);
    PB_CONTAINS(err.msg, "foo/1 is not defined");

    /* every message, not just the first */
    PB_CHECK(pb_jq_compile("$x + $y", &err) == NULL);
    PB_CONTAINS(err.msg, "$x is not defined");
    PB_CONTAINS(err.msg, "$y is not defined");

    /* libjq 1.6 asserts on modules without a library path: must not abort */
    PB_CHECK(pb_jq_compile("import \"a\" as a; .", &err) == NULL);
    PB_CONTAINS(err.msg, "module not found");
    PB_CHECK(pb_jq_compile("include \"/etc/passwd\"; .", &err) == NULL);
    PB_CONTAINS(err.msg, "module not found");

    PB_CHECK(pb_jq_compile(NULL, &err) == NULL);
    PB_EQ_INT(err.code, PB_EINVAL);
    pb_jq_destroy(NULL);
}

PB_TEST(runtime_errors)
{
    struct pb_err err = {0};
    char *text;
    PB_EQ_INT(run1(".a + 1", "\"a string\"", &text, &err), PB_EJQ);
    PB_CONTAINS(err.msg, "jq: Cannot index string with string");
    PB_CHECK(text == NULL);

    PB_EQ_INT(run1("error(\"custom reason\")", "{}", &text, &err), PB_EJQ);
    PB_EQ_STR(err.msg, "jq: custom reason");

    PB_EQ_INT(run1("error({code: 7})", "{}", &text, &err), PB_EJQ);
    PB_CONTAINS(err.msg, "{\"code\":7}");
    PB_CONTAINS(err.msg, "not a string");

    /* halt looks like "no more output" in libjq 1.6; it must not drop silently */
    PB_EQ_INT(run1("\"bye\\n\" | halt_error", "{}", &text, &err), PB_EJQ);
    PB_EQ_STR(err.msg, "jq: halt_error: bye");
    PB_EQ_INT(run1("halt", "{}", &text, &err), PB_EJQ);
    PB_CONTAINS(err.msg, "halt");
}

PB_TEST(output_counts)
{
    struct pb_err err = {0};
    struct pb_jq *q = pb_jq_compile("empty", &err);
    jv in, out[4];
    size_t n = 99;
    PB_CHECK(q != NULL);
    PB_EQ_INT(pb_jq_parse("{\"a\":1}", 7, &in, &err), 0);
    PB_EQ_INT(pb_jq_run(q, in, out, 4, &n, &err), 0);
    PB_EQ_INT(n, 0);
    pb_jq_destroy(q);

    q = pb_jq_compile(".[]", &err);
    PB_CHECK(q != NULL);
    PB_EQ_INT(pb_jq_parse("[1,2,3]", 7, &in, &err), 0);
    PB_EQ_INT(pb_jq_run(q, in, out, 1, &n, &err), PB_EJQ);
    PB_EQ_INT(n, 0);
    PB_CONTAINS(err.msg, "more than 1 value");

    PB_EQ_INT(pb_jq_parse("[1,2,3]", 7, &in, &err), 0);
    PB_EQ_INT(pb_jq_run(q, in, out, 3, &n, &err), 0);
    PB_EQ_INT(n, 3);
    for (size_t i = 0; i < n; i++) {
        PB_EQ_INT(jv_number_value(out[i]), (double)(i + 1));
        jv_free(out[i]);
    }
    pb_jq_destroy(q);

    /* an endless generator stops at the cap */
    q = pb_jq_compile("repeat(.)", &err);
    PB_CHECK(q != NULL);
    PB_EQ_INT(pb_jq_run(q, jv_number(1), out, 4, &n, &err), PB_EJQ);
    PB_EQ_INT(n, 0);
    pb_jq_destroy(q);

    /* bad arguments still consume the input */
    PB_EQ_INT(pb_jq_run(NULL, jv_string("x"), out, 1, &n, &err), PB_EINVAL);
}

PB_TEST(input_fidelity)
{
    struct pb_err err = {0};
    jv v;
    PB_EQ_INT(pb_jq_parse("{\"id\":12345678901234567890}", 27, &v, &err), PB_EFIDELITY);
    PB_CONTAINS(err.msg, "integer beyond 2^53 at byte 6");
    PB_EQ_INT(jv_get_kind(v), JV_KIND_INVALID);

    PB_EQ_INT(pb_jq_parse("[9007199254740993]", 18, &v, &err), PB_EFIDELITY);
    PB_EQ_INT(pb_jq_parse("[1.23456789012345678]", 21, &v, &err), PB_EFIDELITY);
    PB_CONTAINS(err.msg, "significant digits");
    PB_EQ_INT(pb_jq_parse("[1e400]", 7, &v, &err), PB_EFIDELITY);

    PB_EQ_INT(pb_jq_parse("{\"a\":1,}", 8, &v, &err), PB_EPARSE);
    PB_EQ_STR(err.msg, "trailing comma at byte 7");
    PB_EQ_INT(pb_jq_parse("\"\xed\xa0\x80\"", 5, &v, &err), PB_EPARSE);
    PB_CONTAINS(err.msg, "invalid UTF-8 at byte 1");

    PB_EQ_INT(pb_jq_parse("[9007199254740992, 1.2345678901234567]", 38, &v, &err), 0);
    PB_EQ_INT(jv_get_kind(v), JV_KIND_ARRAY);
    jv_free(v);
}

PB_TEST(input_duplicate_keys)
{
    struct pb_err err = {0};
    jv v;
    /* jq would keep the last value and drop the first, at any depth and
     * whatever the spelling of the key. */
    static const char *const dup[] = {
        "{\"a\":1,\"a\":2}",
        "[0,{\"x\":[{\"b\":1,\"c\":2,\"b\":3}]}]",
        "{\"a\":1,\"\\u0061\":2}",
        "{\"a\":{},\"a\":{}}",
    };
    for (size_t i = 0; i < sizeof(dup) / sizeof(dup[0]); i++) {
        PB_EQ_INT(pb_jq_parse(dup[i], strlen(dup[i]), &v, &err), PB_EFIDELITY);
        PB_CONTAINS(err.msg, "same key twice");
        PB_EQ_INT(jv_get_kind(v), JV_KIND_INVALID);
    }
    /* The same key in different objects is not a duplicate. */
    static const char ok[] = "[{\"a\":1},{\"a\":2,\"b\":{\"a\":3}}]";
    PB_EQ_INT(pb_jq_parse(ok, sizeof(ok) - 1, &v, &err), 0);
    jv_free(v);
}

PB_TEST(output_fidelity)
{
    struct pb_err err = {0};
    char *text;
    PB_EQ_INT(run1("nan", "null", &text, &err), PB_EFIDELITY);
    PB_EQ_STR(err.msg, "NaN or infinity cannot be represented in JSON");
    PB_CHECK(text == NULL);
    PB_EQ_INT(run1("infinite", "null", &text, &err), PB_EFIDELITY);
    PB_EQ_INT(run1("{a: [1, {b: -infinite}]}", "null", &text, &err), PB_EFIDELITY);
    PB_EQ_INT(run1(".total_cents / 0", order, &text, &err), PB_EJQ); /* jq refuses itself */
    PB_EQ_INT(run1("[.[] | . * 1e308]", "[1, 10]", &text, &err), PB_EFIDELITY);

    /* jq 1.6 prints "<stripped: exceeds max depth>" below 256 levels */
    PB_EQ_INT(run1("reduce range(256) as $i (0; [.])", "null", &text, &err), 0);
    PB_CHECK(text && strlen(text) == 513 && !strstr(text, "stripped"));
    free(text);
    PB_EQ_INT(run1("reduce range(257) as $i (0; [.])", "null", &text, &err), PB_EFIDELITY);
    PB_CONTAINS(err.msg, "nested deeper than 256");
    PB_EQ_INT(run1("reduce range(300) as $i ({}; {a: .})", "null", &text, &err), PB_EFIDELITY);
    PB_EQ_INT(run1("reduce range(256) as $i ([]; [.])", "null", &text, &err), 0);
    free(text);
}

PB_TEST(many_runs_do_not_leak)
{
    struct pb_err err = {0};
    struct pb_jq *q =
        pb_jq_compile("{order_id: .id, cents: .total_cents, email: .customer.email}", &err);
    struct pb_jq *bad = pb_jq_compile(".customer.email + 1", &err);
    size_t total = 0;
    PB_CHECK(q != NULL && bad != NULL);
    for (int i = 0; i < 10000; i++) {
        jv in, out[1];
        size_t n;
        char *text;
        size_t len;
        if (pb_jq_parse(order, sizeof(order) - 1, &in, &err) != 0)
            break;
        if (i % 10 == 0) { /* errors must release everything too */
            if (pb_jq_run(bad, in, out, 1, &n, &err) != PB_EJQ)
                break;
            continue;
        }
        if (pb_jq_run(q, in, out, 1, &n, &err) != 0 || n != 1)
            break;
        if (pb_jq_dump(out[0], &text, &len, &err) != 0)
            break;
        total += len;
        free(text);
    }
    PB_EQ_INT(total, 9000 * strlen("{\"order_id\":\"ord_123\",\"cents\":4999,"
                                   "\"email\":\"a@b.example\"}"));
    pb_jq_destroy(q);
    pb_jq_destroy(bad);

    /* compiling over and over, with and without errors */
    for (int i = 0; i < 200; i++) {
        pb_jq_destroy(pb_jq_compile(".a | {b: .}", &err));
        PB_CHECK(pb_jq_compile(".a |", &err) == NULL);
    }
}

/* A program that never names $meta is run without the message's metadata
 * being parsed; one that does gets it. */
PB_TEST(uses_meta_is_known_at_compile)
{
    struct pb_err err = {0};
    struct pb_jq *plain = pb_jq_compile("{id: .id}", &err);
    struct pb_jq *meta = pb_jq_compile("{id: .id, topic: $meta.topic}", &err);
    PB_CHECK(plain && meta);
    PB_CHECK(!pb_jq_uses_meta(plain));
    PB_CHECK(pb_jq_uses_meta(meta));
    jv out[1];
    size_t n = 0;
    PB_EQ_INT(pb_jq_run_meta(meta, jv_parse("{\"id\":1}"), jv_parse("{\"topic\":\"t\"}"), out, 1,
                             &n, &err),
              0);
    PB_EQ_INT(n, 1);
    jv topic = jv_object_get(out[0], jv_string("topic"));
    PB_EQ_STR(jv_string_value(topic), "t");
    jv_free(topic);
    pb_jq_destroy(plain);
    pb_jq_destroy(meta);
}

int main(void)
{
    return pb_test_main();
}
