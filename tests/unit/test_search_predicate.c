/* test_search_predicate.c - the message explorer's jq predicate: it holds
 * or not on the body and on $meta, a body that is not JSON (or that jq
 * cannot carry exactly) is null so a $meta condition still applies, a
 * program that fails on a message is no match and is counted, and what
 * does not compile or is too long is refused up front. */
#include <string.h>

#include "admin/search.h"
#include "pb_test.h"

static int match(struct pb_admin_pred *p, const char *body, const char *ct, const char *meta)
{
    return pb_admin_pred_match(p, body, strlen(body), ct, meta, meta ? strlen(meta) : 0);
}

PB_TEST(body_and_meta)
{
    struct pb_err err = {0};
    struct pb_admin_pred *p = pb_admin_pred_compile(".customer.id == 42", &err);
    PB_CHECK(p != NULL);
    PB_EQ_INT(match(p, "{\"customer\":{\"id\":42}}", NULL, NULL), 1);
    PB_EQ_INT(match(p, "{\"customer\":{\"id\":7}}", NULL, NULL), 0);
    PB_EQ_INT(match(p, "{\"customer\":{\"id\":42}}", "application/json; charset=utf-8", NULL), 1);
    PB_EQ_INT(match(p, "{\"customer\":{\"id\":42}}", "application/vnd.shop+json", NULL), 1);
    /* A body of another type is not parsed: the program sees null. */
    PB_EQ_INT(match(p, "{\"customer\":{\"id\":42}}", "text/plain", NULL), 0);
    pb_admin_pred_destroy(p);

    p = pb_admin_pred_compile("$meta.headers[\"x-event\"] == \"paid\"", &err);
    PB_CHECK(p != NULL);
    const char *meta = "{\"input\":\"http_server\",\"headers\":{\"x-event\":\"paid\"}}";
    PB_EQ_INT(match(p, "{}", NULL, meta), 1);
    PB_EQ_INT(match(p, "not json at all", "text/csv", meta), 1);
    PB_EQ_INT(match(p, "{}", NULL, "{\"headers\":{\"x-event\":\"refund\"}}"), 0);
    PB_EQ_INT(match(p, "{}", NULL, NULL), 0); /* no $meta: null */
    PB_EQ_INT(pb_admin_pred_errors(p, NULL), 0);
    pb_admin_pred_destroy(p);
}

PB_TEST(truthiness_first_output_and_fidelity)
{
    struct pb_err err = {0};
    struct pb_admin_pred *p = pb_admin_pred_compile(".a", &err);
    PB_EQ_INT(match(p, "{\"a\":0}", NULL, NULL), 1); /* jq: 0 is true */
    PB_EQ_INT(match(p, "{\"a\":false}", NULL, NULL), 0);
    PB_EQ_INT(match(p, "{\"a\":null}", NULL, NULL), 0);
    PB_EQ_INT(match(p, "{}", NULL, NULL), 0);
    pb_admin_pred_destroy(p);
    /* Only the first output counts; no output is false. */
    p = pb_admin_pred_compile(".a, false", &err);
    PB_EQ_INT(match(p, "{\"a\":1}", NULL, NULL), 1);
    pb_admin_pred_destroy(p);
    p = pb_admin_pred_compile("empty", &err);
    PB_EQ_INT(match(p, "{}", NULL, NULL), 0);
    pb_admin_pred_destroy(p);
    /* A number jq would round makes the body null, never a wrong match. */
    p = pb_admin_pred_compile(".id == 9007199254740992", &err);
    PB_EQ_INT(match(p, "{\"id\":9007199254740993}", NULL, NULL), 0);
    PB_EQ_INT(match(p, "{\"id\":9007199254740992}", NULL, NULL), 1);
    pb_admin_pred_destroy(p);
}

PB_TEST(failures_count_as_no_match)
{
    struct pb_err err = {0};
    struct pb_admin_pred *p = pb_admin_pred_compile(".items[0].price > 10", &err);
    PB_CHECK(p != NULL);
    const char *first = "x";
    PB_EQ_INT(match(p, "{\"items\":\"none\"}", NULL, NULL), 0);
    PB_EQ_INT(match(p, "{\"items\":[{\"price\":11}]}", NULL, NULL), 1);
    PB_EQ_INT(match(p, "[1,2]", NULL, NULL), 0);
    PB_EQ_INT(pb_admin_pred_errors(p, &first), 2);
    PB_CHECK(first != NULL && strlen(first) > 0);
    pb_admin_pred_destroy(p);
}

PB_TEST(refused_up_front)
{
    struct pb_err err = {0};
    PB_CHECK(pb_admin_pred_compile(".a ==", &err) == NULL);
    PB_CHECK(err.msg[0] != 0);
    PB_CHECK(pb_admin_pred_compile("", &err) == NULL);
    char big[PB_ADMIN_PRED_MAX + 2];
    memset(big, ' ', sizeof(big) - 1);
    big[0] = '.';
    big[sizeof(big) - 1] = 0;
    PB_CHECK(pb_admin_pred_compile(big, &err) == NULL);
    PB_CHECK(strstr(err.msg, "longer") != NULL);
}

int main(void)
{
    return pb_test_main();
}
