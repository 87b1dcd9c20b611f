/* test_sched.c - the scheduler with a clock of the test's own: retries wait
 * for their time, a key's items go one at a time in admission order,
 * concurrency and rate limits bound what starts, pauses hold everything,
 * and draining takes an output's items wherever they wait. */
#include <stdlib.h>
#include <string.h>

#include "core/sched.h"
#include "pb_test.h"

#define T0 1700000000000LL

static struct pb_sched_item *item(int64_t next_at)
{
    struct pb_sched_item *it = calloc(1, sizeof(*it));
    it->next_at = next_at;
    return it;
}

/* Take everything q lets start at now, into out (up to n). */
static size_t take_all(struct pb_sched_q *q, int64_t now, struct pb_sched_item **out, size_t n)
{
    size_t k = 0;
    int64_t wait = 1000;
    struct pb_sched_item *it;
    while (k < n && (it = pb_sched_take(q, now, &wait)))
        out[k++] = it;
    return k;
}

PB_TEST(ready_now_and_retries_wait_for_their_time)
{
    struct pb_sched s = {0};
    struct pb_sched_q q = {.concurrency = 10};
    struct pb_sched_item *a = item(T0), *b = item(T0 + 500), *c = item(T0 + 100), *got[4];
    PB_EQ_INT(pb_sched_admit(&s, &q, a, NULL, T0), 0);
    PB_EQ_INT(pb_sched_admit(&s, &q, b, NULL, T0), 0);
    PB_EQ_INT(pb_sched_admit(&s, &q, c, NULL, T0), 0);
    PB_EQ_INT(take_all(&q, T0, got, 4), 1);
    PB_CHECK(got[0] == a);
    PB_EQ_INT(pb_sched_next_due(&s, T0), 100);
    pb_sched_due(&s, T0 + 99);
    PB_EQ_INT(take_all(&q, T0 + 99, got, 4), 0);
    pb_sched_due(&s, T0 + 500);
    PB_EQ_INT(take_all(&q, T0 + 500, got, 4), 2);
    PB_CHECK(got[0] == c && got[1] == b); /* in due order */
    PB_EQ_INT(pb_sched_next_due(&s, T0), -1);
    /* A failed attempt waits again for its retry time. */
    pb_sched_ended(&q);
    a->next_at = T0 + 2000;
    pb_sched_later(&s, a, T0 + 600);
    PB_EQ_INT(pb_sched_next_due(&s, T0 + 600), 1400);
    pb_sched_due(&s, T0 + 2000);
    PB_EQ_INT(take_all(&q, T0 + 2000, got, 4), 1);
    PB_CHECK(got[0] == a);
    pb_sched_cleanup(&s);
    pb_sched_q_cleanup(&q);
    free(a);
    free(b);
    free(c);
}

PB_TEST(one_at_a_time_per_key_in_admission_order_retries_included)
{
    struct pb_sched s = {0};
    struct pb_sched_q q = {.concurrency = 10};
    struct pb_sched_item *k1 = item(T0), *k2 = item(T0), *k3 = item(T0), *o1 = item(T0), *got[4];
    PB_EQ_INT(pb_sched_admit(&s, &q, k1, "cust-1", T0), 0);
    PB_EQ_INT(pb_sched_admit(&s, &q, k2, "cust-1", T0), 0);
    PB_EQ_INT(pb_sched_admit(&s, &q, o1, "cust-2", T0), 0);
    PB_EQ_INT(pb_sched_admit(&s, &q, k3, "cust-1", T0), 0);
    PB_CHECK(k2->waiting && k3->waiting);
    PB_EQ_INT(take_all(&q, T0, got, 4), 2);
    PB_CHECK(got[0] == k1 && got[1] == o1);
    /* k1 fails and waits for its retry: cust-1 stays busy. */
    pb_sched_ended(&q);
    k1->next_at = T0 + 1000;
    pb_sched_later(&s, k1, T0);
    PB_EQ_INT(take_all(&q, T0 + 10, got, 4), 0);
    pb_sched_due(&s, T0 + 1000);
    PB_EQ_INT(take_all(&q, T0 + 1000, got, 4), 1);
    PB_CHECK(got[0] == k1);
    /* k1 is finished: k2 goes, then k3, never both at once. */
    pb_sched_ended(&q);
    pb_sched_finish(&s, k1, T0 + 1001);
    PB_EQ_INT(take_all(&q, T0 + 1001, got, 4), 1);
    PB_CHECK(got[0] == k2);
    pb_sched_ended(&q);
    pb_sched_finish(&s, k2, T0 + 1002);
    PB_EQ_INT(take_all(&q, T0 + 1002, got, 4), 1);
    PB_CHECK(got[0] == k3);
    pb_sched_ended(&q);
    pb_sched_finish(&s, k3, T0 + 1003);
    pb_sched_ended(&q);
    pb_sched_finish(&s, o1, T0 + 1003);
    PB_EQ_INT(q.nkeys, 0); /* every key released */
    pb_sched_cleanup(&s);
    pb_sched_q_cleanup(&q);
    free(k1);
    free(k2);
    free(k3);
    free(o1);
}

PB_TEST(concurrency_and_pause_bound_what_starts)
{
    struct pb_sched s = {0};
    struct pb_sched_q q = {.concurrency = 2};
    struct pb_sched_item *it[5], *got[5];
    for (int i = 0; i < 5; i++) {
        it[i] = item(T0);
        PB_EQ_INT(pb_sched_admit(&s, &q, it[i], NULL, T0), 0);
    }
    PB_EQ_INT(take_all(&q, T0, got, 5), 2);
    PB_EQ_INT(take_all(&q, T0, got, 5), 0);
    pb_sched_ended(&q);
    PB_EQ_INT(take_all(&q, T0, got, 5), 1);
    q.paused = true;
    pb_sched_ended(&q);
    pb_sched_ended(&q);
    PB_EQ_INT(take_all(&q, T0, got, 5), 0);
    q.paused = false;
    PB_EQ_INT(take_all(&q, T0, got, 5), 2);
    PB_EQ_INT(q.nready, 0);
    pb_sched_cleanup(&s);
    for (int i = 0; i < 5; i++)
        free(it[i]);
}

PB_TEST(rate_limit_paces_starts_and_says_when)
{
    struct pb_sched s = {0};
    struct pb_sched_q q = {.concurrency = 100, .rate = {.count = 10, .period_ms = 1000}};
    struct pb_sched_item *it[30], *got[30];
    for (int i = 0; i < 30; i++) {
        it[i] = item(T0);
        PB_EQ_INT(pb_sched_admit(&s, &q, it[i], NULL, T0), 0);
    }
    /* A full bucket: a burst of 10, then one per 100 ms. */
    PB_EQ_INT(take_all(&q, T0, got, 30), 10);
    int64_t wait = 1000;
    PB_CHECK(pb_sched_take(&q, T0, &wait) == NULL);
    PB_CHECK(wait > 0 && wait <= 101);
    PB_EQ_INT(take_all(&q, T0 + 100, got, 30), 1);
    PB_EQ_INT(take_all(&q, T0 + 150, got, 30), 0);
    PB_EQ_INT(take_all(&q, T0 + 1100, got, 30), 10);
    /* A clock that goes back does not mint tokens. */
    PB_EQ_INT(take_all(&q, T0, got, 30), 0);
    pb_sched_cleanup(&s);
    for (int i = 0; i < 30; i++)
        free(it[i]);
}

static int drained;
static void count_cb(struct pb_sched_item *it, void *arg)
{
    (void)it;
    (void)arg;
    drained++;
}

PB_TEST(drain_takes_ready_waiting_and_timed_items_of_one_output_only)
{
    struct pb_sched s = {0};
    struct pb_sched_q q = {.concurrency = 1}, other = {.concurrency = 1};
    struct pb_sched_item *ready = item(T0), *keyed = item(T0), *behind = item(T0),
                         *later = item(T0 + 5000), *mine = item(T0 + 100), *got[4];
    PB_EQ_INT(pb_sched_admit(&s, &q, ready, NULL, T0), 0);
    PB_EQ_INT(pb_sched_admit(&s, &q, keyed, "k", T0), 0);
    PB_EQ_INT(pb_sched_admit(&s, &q, behind, "k", T0), 0);
    PB_EQ_INT(pb_sched_admit(&s, &q, later, NULL, T0), 0);
    PB_EQ_INT(pb_sched_admit(&s, &other, mine, NULL, T0), 0);
    drained = 0;
    pb_sched_drain(&s, &q, count_cb, NULL);
    PB_EQ_INT(drained, 4);
    PB_EQ_INT(q.nready, 0);
    PB_EQ_INT(s.nheap, 1); /* the other output's timer stays */
    pb_sched_due(&s, T0 + 100);
    PB_EQ_INT(take_all(&other, T0 + 100, got, 4), 1);
    PB_CHECK(got[0] == mine);
    pb_sched_q_cleanup(&q);
    pb_sched_cleanup(&s);
    free(ready);
    free(keyed);
    free(behind);
    free(later);
    free(mine);
}

static struct pb_sched_item *keyed(int64_t next_at, const char *rkey)
{
    struct pb_sched_item *it = item(next_at);
    it->rkey = rkey ? strdup(rkey) : NULL;
    return it;
}

static void free_item(struct pb_sched_item *it)
{
    free(it->rkey);
    free(it);
}

PB_TEST(rate_limit_per_key_lets_other_keys_go_on)
{
    struct pb_sched s = {0};
    struct pb_sched_q q = {
        .concurrency = 100, .rate = {.count = 2, .period_ms = 1000}, .max_rkeys = 100};
    struct pb_sched_item *a[5], *b[2], *got[8];
    for (int i = 0; i < 5; i++) {
        a[i] = keyed(T0, "acme");
        PB_EQ_INT(pb_sched_admit(&s, &q, a[i], NULL, T0), 0);
    }
    for (int i = 0; i < 2; i++) {
        b[i] = keyed(T0, "globex");
        PB_EQ_INT(pb_sched_admit(&s, &q, b[i], NULL, T0), 0);
    }
    /* acme's bucket holds 2: the other three wait for tokens in the heap,
     * and globex goes on behind them instead of waiting too. */
    PB_EQ_INT(take_all(&q, T0, got, 8), 4);
    PB_CHECK(got[0] == a[0] && got[1] == a[1] && got[2] == b[0] && got[3] == b[1]);
    PB_EQ_INT(pb_sched_rkeys_count(&q), 2);
    PB_EQ_INT(pb_sched_next_due(&s, T0), 501); /* acme's next token */
    pb_sched_due(&s, T0 + 501);
    PB_EQ_INT(take_all(&q, T0 + 501, got, 8), 1);
    PB_CHECK(got[0] == a[2]);
    pb_sched_due(&s, T0 + 1001);
    PB_EQ_INT(take_all(&q, T0 + 1001, got, 8), 1);
    pb_sched_due(&s, T0 + 1600);
    PB_EQ_INT(take_all(&q, T0 + 1600, got, 8), 1);
    PB_EQ_INT(pb_sched_next_due(&s, T0 + 1600), -1);
    pb_sched_cleanup(&s);
    pb_sched_q_cleanup(&q);
    for (int i = 0; i < 5; i++)
        free_item(a[i]);
    for (int i = 0; i < 2; i++)
        free_item(b[i]);
}

PB_TEST(rate_keys_are_bounded_least_recently_used_first)
{
    struct pb_sched s = {0};
    struct pb_sched_q q = {
        .concurrency = 100, .rate = {.count = 1, .period_ms = 60000}, .max_rkeys = 3};
    struct pb_sched_item *it[5], *got[8];
    const char *keys[] = {"k1", "k2", "k3", "k4", "k1"};
    for (int i = 0; i < 5; i++) {
        it[i] = keyed(T0, keys[i]);
        PB_EQ_INT(pb_sched_admit(&s, &q, it[i], NULL, T0), 0);
    }
    /* k4 pushes out k1 (the oldest): the second k1 finds a full bucket. */
    PB_EQ_INT(take_all(&q, T0, got, 8), 5);
    PB_EQ_INT(pb_sched_rkeys_count(&q), 3);
    /* An item without a key shares the output's one bucket. */
    struct pb_sched_item *plain = keyed(T0, NULL), *plain2 = keyed(T0, NULL);
    PB_EQ_INT(pb_sched_admit(&s, &q, plain, NULL, T0), 0);
    PB_EQ_INT(pb_sched_admit(&s, &q, plain2, NULL, T0), 0);
    int64_t wait = 100000;
    PB_CHECK(pb_sched_take(&q, T0, &wait) == plain);
    PB_CHECK(pb_sched_take(&q, T0, &wait) == NULL);
    PB_EQ_INT(wait, 60001);
    pb_sched_cleanup(&s);
    pb_sched_q_cleanup(&q);
    for (int i = 0; i < 5; i++)
        free_item(it[i]);
    free_item(plain);
    free_item(plain2);
}

PB_TEST(hold_and_pace_gate_every_start)
{
    struct pb_sched s = {0};
    struct pb_sched_q q = {.concurrency = 100};
    struct pb_sched_item *it[6], *got[8];
    for (int i = 0; i < 6; i++) {
        it[i] = item(T0);
        PB_EQ_INT(pb_sched_admit(&s, &q, it[i], NULL, T0), 0);
    }
    /* Held: nothing starts, and the wait says until when. */
    q.not_before = T0 + 700;
    int64_t wait = 100000;
    PB_CHECK(pb_sched_take(&q, T0, &wait) == NULL);
    PB_EQ_INT(wait, 700);
    /* Paced at 4/s: one start every 250 ms, no burst after the hold. */
    q.not_before = 0;
    q.pace_ms = 250;
    PB_EQ_INT(take_all(&q, T0 + 700, got, 8), 1);
    wait = 100000;
    PB_CHECK(pb_sched_take(&q, T0 + 800, &wait) == NULL);
    PB_EQ_INT(wait, 150);
    PB_EQ_INT(take_all(&q, T0 + 950, got, 8), 1);
    /* Late by a second: still one, not four to catch up. */
    PB_EQ_INT(take_all(&q, T0 + 1950, got, 8), 1);
    PB_EQ_INT(take_all(&q, T0 + 2199, got, 8), 0);
    PB_EQ_INT(take_all(&q, T0 + 2200, got, 8), 1);
    pb_sched_cleanup(&s);
    pb_sched_q_cleanup(&q);
    for (int i = 0; i < 6; i++)
        free(it[i]);
}

int main(void)
{
    return pb_test_main();
}
