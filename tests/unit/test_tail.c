/* test_tail.c - the live tail's ring with times of the test's own:
 * nothing is kept until someone watches, each pipeline is sampled to its
 * rate with what it skipped reported on its next event, a reader resumes
 * after its cursor, learns what the ring lost, filters, and is told of the
 * next push once per arm. */
#include <stdlib.h>
#include <string.h>

#include "core/tail.h"
#include "pb_test.h"

#define T0 1700000000000LL

static struct pb_tail_event ev(size_t pl, int64_t at, enum pb_tail_kind kind, const char *id)
{
    struct pb_tail_event e = {
        .at = at, .kind = kind, .pipeline_index = pl, .pipeline = pl ? "b" : "a"};
    snprintf(e.msg_id, sizeof(e.msg_id), "%s", id);
    return e;
}

PB_TEST(nothing_is_kept_until_watched)
{
    struct pb_tail *t = pb_tail_create(1, 16, 100);
    PB_CHECK(!pb_tail_watched(t, T0));
    struct pb_tail_event e = ev(0, T0, PB_TAIL_RECEIVED, "m1"), out[4];
    pb_tail_push(t, &e);
    PB_EQ_INT(pb_tail_head(t), 0);
    pb_tail_watch(t, T0);
    PB_CHECK(pb_tail_watched(t, T0 + PB_TAIL_WATCH_MS - 1));
    PB_CHECK(!pb_tail_watched(t, T0 + PB_TAIL_WATCH_MS));
    pb_tail_push(t, &e);
    uint64_t next, lost;
    PB_EQ_INT(pb_tail_read(t, 0, NULL, NULL, out, 4, &next, &lost), 1);
    PB_EQ_INT(out[0].seq, 1);
    PB_EQ_STR(out[0].msg_id, "m1");
    PB_EQ_INT(next, 1);
    PB_EQ_INT(lost, 0);
    PB_EQ_INT(pb_tail_read(t, next, NULL, NULL, out, 4, &next, &lost), 0);
    PB_EQ_INT(next, 1);
    pb_tail_destroy(t);
}

PB_TEST(each_pipeline_is_sampled_to_its_rate)
{
    struct pb_tail *t = pb_tail_create(2, 64, 5); /* 5 a second, a burst of 5 */
    pb_tail_watch(t, T0);
    char id[16];
    for (int i = 0; i < 20; i++) {
        snprintf(id, sizeof(id), "a%d", i);
        struct pb_tail_event e = ev(0, T0, PB_TAIL_DELIVERED, id);
        pb_tail_push(t, &e);
    }
    /* A quiet pipeline is not starved by a busy one. */
    struct pb_tail_event e = ev(1, T0, PB_TAIL_RECEIVED, "b0");
    pb_tail_push(t, &e);
    PB_EQ_INT(pb_tail_head(t), 6);
    /* A second later the bucket is full again; the next event of pipeline
     * a says how many were skipped before it. */
    e = ev(0, T0 + 1000, PB_TAIL_DEAD, "a-late");
    pb_tail_push(t, &e);
    struct pb_tail_event out[16];
    uint64_t next, lost;
    size_t n = pb_tail_read(t, 0, NULL, NULL, out, 16, &next, &lost);
    PB_EQ_INT(n, 7);
    PB_EQ_STR(out[4].msg_id, "a4");
    PB_EQ_INT(out[4].skipped, 0);
    PB_EQ_STR(out[5].msg_id, "b0");
    PB_EQ_STR(out[6].msg_id, "a-late");
    PB_EQ_INT(out[6].skipped, 15);
    /* Refill is proportional: 200 ms gives one token back. */
    e = ev(0, T0 + 1000, PB_TAIL_DEAD, "x");
    for (int i = 0; i < 10; i++)
        pb_tail_push(t, &e);
    uint64_t head = pb_tail_head(t);
    e.at = T0 + 1200;
    pb_tail_push(t, &e);
    pb_tail_push(t, &e);
    PB_EQ_INT(pb_tail_head(t), head + 1);
    pb_tail_destroy(t);
}

static bool only_b(void *arg, const struct pb_tail_event *e)
{
    (void)arg;
    return e->pipeline_index == 1;
}

PB_TEST(readers_resume_filter_and_learn_what_was_lost)
{
    struct pb_tail *t = pb_tail_create(2, 8, 1000);
    pb_tail_watch(t, T0);
    char id[16];
    for (int i = 0; i < 20; i++) {
        snprintf(id, sizeof(id), "m%d", i);
        struct pb_tail_event e = ev((size_t)(i % 2), T0 + i, PB_TAIL_RECEIVED, id);
        pb_tail_push(t, &e);
    }
    struct pb_tail_event out[8];
    uint64_t next, lost;
    /* A reader at 3 missed 4..12: the ring holds 13..20. */
    size_t n = pb_tail_read(t, 3, NULL, NULL, out, 8, &next, &lost);
    PB_EQ_INT(lost, 9);
    PB_EQ_INT(n, 8);
    PB_EQ_INT(out[0].seq, 13);
    PB_EQ_INT(next, 20);
    /* max bounds what is looked at, the cursor goes on from there. */
    n = pb_tail_read(t, 12, NULL, NULL, out, 3, &next, &lost);
    PB_EQ_INT(n, 3);
    PB_EQ_INT(next, 15);
    PB_EQ_INT(lost, 0);
    /* Filtered: the cursor passes the events left out too. */
    n = pb_tail_read(t, 12, only_b, NULL, out, 8, &next, &lost);
    PB_EQ_INT(n, 4);
    PB_EQ_STR(out[0].msg_id, "m13");
    PB_EQ_INT(next, 20);
    /* A cursor from the future (a restart) reads from the newest. */
    n = pb_tail_read(t, 999, NULL, NULL, out, 8, &next, &lost);
    PB_EQ_INT(n, 0);
    PB_EQ_INT(next, 20);
    pb_tail_destroy(t);
}

static int notified;
static void notify_cb(void *arg)
{
    (void)arg;
    notified++;
}

PB_TEST(notify_once_per_arm)
{
    struct pb_tail *t = pb_tail_create(1, 8, 1000);
    pb_tail_set_notify(t, notify_cb, NULL);
    pb_tail_watch(t, T0);
    struct pb_tail_event e = ev(0, T0, PB_TAIL_RECEIVED, "m");
    pb_tail_push(t, &e);
    PB_EQ_INT(notified, 0);
    pb_tail_arm(t);
    pb_tail_push(t, &e);
    pb_tail_push(t, &e);
    PB_EQ_INT(notified, 1);
    pb_tail_arm(t);
    pb_tail_push(t, &e);
    PB_EQ_INT(notified, 2);
    pb_tail_destroy(t);
}

PB_TEST(long_text_is_cut)
{
    struct pb_tail *t = pb_tail_create(1, 8, 1000);
    pb_tail_watch(t, T0);
    struct pb_tail_event e = ev(0, T0, PB_TAIL_RECEIVED, "m"), out[1];
    e.text_len = 100000; /* a producer's bug must not overrun */
    pb_tail_push(t, &e);
    uint64_t next, lost;
    PB_EQ_INT(pb_tail_read(t, 0, NULL, NULL, out, 1, &next, &lost), 1);
    PB_EQ_INT(out[0].text_len, PB_TAIL_TEXT_MAX);
    pb_tail_destroy(t);
}

int main(void)
{
    return pb_test_main();
}
