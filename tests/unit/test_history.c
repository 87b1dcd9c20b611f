/* test_history.c - the metric ring with times of the test's own: samples
 * come back oldest first from a given time, with the one before them for
 * the first rate, the oldest go once the ring is full, and rates are
 * per second, never negative, absent where a series was not sampled. */
#include <math.h>
#include <stdlib.h>

#include "core/history.h"
#include "pb_test.h"

#define T0 1700000000000LL

static void push2(struct pb_history *h, int64_t at, int64_t a, int64_t b)
{
    int64_t v[2] = {a, b};
    pb_history_push(h, at, v);
}

PB_TEST(reads_from_since_with_the_sample_before)
{
    struct pb_history *h = pb_history_create(2, 8);
    PB_CHECK(h != NULL);
    int64_t times[8], vals[16];
    bool prev = true;
    PB_EQ_INT(pb_history_read(h, 0, 8, times, vals, &prev), 0);
    PB_CHECK(!prev);
    for (int i = 0; i < 5; i++)
        push2(h, T0 + i * 5000, i * 10, 100 - i);
    /* Everything: no sample before the first. */
    PB_EQ_INT(pb_history_read(h, 0, 8, times, vals, &prev), 5);
    PB_CHECK(!prev);
    PB_EQ_INT(times[0], T0);
    PB_EQ_INT(vals[1], 100);
    PB_EQ_INT(vals[4 * 2], 40);
    /* From the third sample on: the second comes first, for the rate. */
    PB_EQ_INT(pb_history_read(h, T0 + 10000, 8, times, vals, &prev), 4);
    PB_CHECK(prev);
    PB_EQ_INT(times[0], T0 + 5000);
    PB_EQ_INT(vals[0], 10);
    /* Between samples: the next one is the first at or after since. */
    PB_EQ_INT(pb_history_read(h, T0 + 12000, 8, times, vals, &prev), 3);
    PB_EQ_INT(times[1], T0 + 15000);
    /* Nothing newer than since. */
    PB_EQ_INT(pb_history_read(h, T0 + 30000, 8, times, vals, &prev), 0);
    PB_CHECK(!prev);
    pb_history_destroy(h);
}

PB_TEST(the_oldest_go_once_full)
{
    struct pb_history *h = pb_history_create(2, 4);
    int64_t times[4], vals[8];
    bool prev;
    for (int i = 0; i < 10; i++)
        push2(h, T0 + i * 1000, i, -i);
    PB_EQ_INT(pb_history_read(h, 0, 4, times, vals, &prev), 4);
    PB_EQ_INT(times[0], T0 + 6000);
    PB_EQ_INT(times[3], T0 + 9000);
    PB_EQ_INT(vals[0], 6);
    PB_EQ_INT(vals[7], -9);
    /* At most max, the newest ones; the first is then only the rate's base. */
    PB_EQ_INT(pb_history_read(h, 0, 2, times, vals, &prev), 2);
    PB_CHECK(prev);
    PB_EQ_INT(times[0], T0 + 8000);
    PB_EQ_INT(times[1], T0 + 9000);
    pb_history_destroy(h);
}

PB_TEST(rates_per_second)
{
    static const struct {
        int64_t v0, t0, v1, t1;
        double want;
    } cases[] = {
        {0, T0, 50, T0 + 5000, 10.0},
        {100, T0, 100, T0 + 5000, 0.0},
        {10, T0, 11, T0 + 2000, 0.5},
        {100, T0, 40, T0 + 5000, 0.0},           /* never negative */
        {PB_HISTORY_NONE, T0, 5, T0 + 5000, -1}, /* a series that did not exist yet */
        {5, T0, PB_HISTORY_NONE, T0 + 5000, -1},
        {1, T0, 2, T0, -1}, /* no time between the samples */
        {1, T0 + 5, 2, T0, -1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        double got = pb_history_rate(cases[i].v0, cases[i].t0, cases[i].v1, cases[i].t1);
        if (fabs(got - cases[i].want) > 1e-9)
            PB__FAIL("case %zu: rate %g, want %g", i, got, cases[i].want);
        pb__checks++;
    }
}

PB_TEST(refuses_empty_shapes)
{
    PB_CHECK(pb_history_create(0, 10) == NULL);
    PB_CHECK(pb_history_create(10, 0) == NULL);
    PB_CHECK(pb_history_create(SIZE_MAX / 4, 1000) == NULL);
}

int main(void)
{
    return pb_test_main();
}
