/* test_trace.c - W3C Trace Context: parsing what comes in, starting a
 * trace when nothing valid came, a span per attempt, and finding a
 * message's trace again in its $meta. */
#include "pb_test.h"

#include "core/trace.h"

static const char good[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

PB_TEST(parse)
{
    static const struct {
        const char *in, *want; /* want NULL: refused */
    } cases[] = {
        {good, good},
        {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
         "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"},
        /* unknown flags are not passed on */
        {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff",
         "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        /* a later version is read as 00, trailing fields after '-' */
        {"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever", good},
        {"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", good},
        {"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", NULL},
        {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", NULL},
        {"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", NULL},
        {"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", NULL},
        {"00-00000000000000000000000000000000-00f067aa0ba902b7-01", NULL},
        {"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", NULL},
        {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", NULL},
        {"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", NULL},
        {"00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01", NULL},
        {"", NULL},
        {NULL, NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char out[PB_TRACEPARENT_LEN + 1] = "";
        bool ok = pb_trace_parse(cases[i].in, out);
        if (ok != (cases[i].want != NULL))
            PB__FAIL("parse(%s): got %d", cases[i].in ? cases[i].in : "NULL", ok);
        else if (ok)
            PB_EQ_STR(out, cases[i].want);
    }
}

PB_TEST(take_continues_or_starts)
{
    char a[PB_TRACEPARENT_LEN + 1], b[PB_TRACEPARENT_LEN + 1];
    PB_CHECK(pb_trace_take(good, a));
    PB_EQ_STR(a, good);
    PB_CHECK(!pb_trace_take("garbage", a));
    PB_CHECK(!pb_trace_take(NULL, b));
    /* new traces are valid, sampled and distinct */
    char c[PB_TRACEPARENT_LEN + 1];
    PB_CHECK(pb_trace_parse(a, c));
    PB_CHECK(pb_trace_parse(b, c));
    PB_EQ_INT(strlen(a), PB_TRACEPARENT_LEN);
    PB_CHECK(strncmp(a + 3, b + 3, 32) != 0);
    PB_EQ_STR(a + 52, "-01");
}

PB_TEST(child_keeps_trace_new_span)
{
    char a[PB_TRACEPARENT_LEN + 1], b[PB_TRACEPARENT_LEN + 1];
    pb_trace_child(good, a);
    pb_trace_child(good, b);
    PB_CHECK(strncmp(a, good, 36) == 0); /* version and trace id */
    PB_CHECK(strncmp(a + 36, good + 36, 16) != 0);
    PB_CHECK(strncmp(a + 36, b + 36, 16) != 0);
    PB_EQ_STR(a + 52, "-01");
    char c[PB_TRACEPARENT_LEN + 1];
    PB_CHECK(pb_trace_parse(a, c));
}

PB_TEST(state)
{
    PB_CHECK(pb_trace_state_ok("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
    PB_CHECK(!pb_trace_state_ok(""));
    PB_CHECK(!pb_trace_state_ok("a=\"b\""));
    PB_CHECK(!pb_trace_state_ok("a=b\\"));
    PB_CHECK(!pb_trace_state_ok("a=\x01"));
    char big[PB_TRACESTATE_MAX + 2];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    PB_CHECK(!pb_trace_state_ok(big));
    big[PB_TRACESTATE_MAX] = 0;
    PB_CHECK(pb_trace_state_ok(big));
}

PB_TEST(from_item_meta)
{
    char tp[PB_TRACEPARENT_LEN + 1] = "", ts[PB_TRACESTATE_MAX + 1] = "";
    const char *m1 = "{\"subject\":\"a\",\"headers\":{\"Traceparent\":\"" /* any case */
                     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\","
                     "\"tracestate\":[\"k=v\",\"x=y\"]}}";
    PB_EQ_INT(pb_trace_from_item_meta(m1, strlen(m1), tp, ts), 3);
    PB_EQ_STR(tp, good);
    PB_EQ_STR(ts, "k=v");
    const char *m2 = "{\"headers\":{\"traceparent\":\"nonsense\"},\"traceparent\":\"x\"}";
    PB_EQ_INT(pb_trace_from_item_meta(m2, strlen(m2), tp, ts), 0);
    PB_EQ_INT(pb_trace_from_item_meta("{}", 2, tp, ts), 0);
    const char *m3 = "{\"headers\":{\"TRACEPARENT\":\""
                     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\"}}";
    PB_EQ_INT(pb_trace_from_item_meta(m3, strlen(m3), tp, ts), 1);
    PB_EQ_INT(pb_trace_from_item_meta("{\"headers\":", 11, tp, ts), 0);
}

PB_TEST(of_msg)
{
    char tp[PB_TRACEPARENT_LEN + 1], ts[PB_TRACESTATE_MAX + 1];
    const char *m = "{\"input\":\"http_server\",\"pipeline\":\"p\",\"received_at\":1,"
                    "\"traceparent\":\"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\","
                    "\"tracestate\":\"k=v\",\"headers\":{\"traceparent\":\"00-11111111111111111111"
                    "111111111111-2222222222222222-00\"}}";
    pb_trace_of_msg(m, strlen(m), "msg_1", tp, ts);
    PB_EQ_STR(tp, good);
    PB_EQ_STR(ts, "k=v");
    /* without the core's own: the first one found; no tracestate */
    const char *h = strstr(m, "\"headers\"");
    char hm[256];
    snprintf(hm, sizeof(hm), "{%s", h);
    pb_trace_of_msg(hm, strlen(hm), "msg_1", tp, ts);
    PB_EQ_STR(tp, "00-11111111111111111111111111111111-2222222222222222-00");
    PB_EQ_STR(ts, "");
    /* nothing: derived from the message id, the same every time */
    char a[PB_TRACEPARENT_LEN + 1], b[PB_TRACEPARENT_LEN + 1], c[PB_TRACEPARENT_LEN + 1];
    pb_trace_of_msg("{}", 2, "msg_1", a, ts);
    pb_trace_of_msg(NULL, 0, "msg_1", b, ts);
    pb_trace_of_msg("{}", 2, "msg_2", c, ts);
    PB_EQ_STR(a, b);
    PB_CHECK(strcmp(a, c) != 0);
    PB_CHECK(pb_trace_parse(a, c));
}

int main(void)
{
    return pb_test_main();
}
