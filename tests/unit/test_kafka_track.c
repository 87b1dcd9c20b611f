/* test_kafka_track.c - the kafka input's commit offsets: never past a batch
 * whose commit in patchbay has not succeeded, whatever order the batches
 * end in; a failed batch is read again from its first offset; a batch that
 * ends after its partition was reset touches nothing. */
#include <stdlib.h>

#include "pb_test.h"
#include "plugins/inputs/kafka/kafka_track.h"

static struct kt_seg *add(struct kt_part *p, int64_t first, int64_t last)
{
    struct kt_seg *s = kt_seg_new(first);
    PB_CHECK(s != NULL);
    s->last = last;
    kt_append(p, s);
    return s;
}

PB_TEST(commit_moves_only_past_done_batches_in_order)
{
    struct kt_part p = {.commit = -1};
    int64_t from = -1;
    struct kt_seg *a = add(&p, 0, 9), *b = add(&p, 10, 19), *c = add(&p, 20, 29);
    PB_CHECK(kt_busy(&p));
    kt_end(&p, p.epoch, b, true); /* the second ends first */
    PB_EQ_INT(kt_advance(&p, &from), KT_SAME);
    PB_EQ_INT(p.commit, -1);
    kt_end(&p, p.epoch, a, true);
    PB_EQ_INT(kt_advance(&p, &from), KT_MOVED);
    PB_EQ_INT(p.commit, 20);
    PB_CHECK(kt_busy(&p));
    kt_end(&p, p.epoch, c, true);
    PB_EQ_INT(kt_advance(&p, &from), KT_MOVED);
    PB_EQ_INT(p.commit, 30);
    PB_CHECK(!kt_busy(&p));
    PB_CHECK(p.head == NULL && p.tail == NULL);
}

PB_TEST(a_failed_batch_stops_the_commit_and_is_read_again)
{
    struct kt_part p = {.commit = 5};
    int64_t from = -1;
    struct kt_seg *a = add(&p, 5, 9), *b = add(&p, 10, 19), *c = add(&p, 20, 29);
    kt_end(&p, p.epoch, b, false); /* fails while the one before is in flight */
    PB_EQ_INT(kt_advance(&p, &from), KT_SAME);
    kt_end(&p, p.epoch, c, true); /* one after it succeeds: no commit past b */
    PB_EQ_INT(kt_advance(&p, &from), KT_SAME);
    PB_EQ_INT(p.commit, 5);
    kt_end(&p, p.epoch, a, true);
    PB_EQ_INT(kt_advance(&p, &from), KT_REWIND);
    PB_EQ_INT(p.commit, 10);
    PB_EQ_INT(from, 10);
    uint64_t old = p.epoch;
    kt_rewind(&p, from);
    PB_CHECK(p.epoch != old);
    PB_EQ_INT(p.commit, 10);
    PB_CHECK(!kt_busy(&p));
    /* Read again: it commits this time. */
    struct kt_seg *again = add(&p, 10, 29);
    kt_end(&p, p.epoch, again, true);
    PB_EQ_INT(kt_advance(&p, &from), KT_MOVED);
    PB_EQ_INT(p.commit, 30);
}

PB_TEST(a_batch_ending_after_a_reset_touches_nothing)
{
    struct kt_part p = {.commit = -1};
    int64_t from;
    uint64_t epoch = p.epoch;
    struct kt_seg *a = add(&p, 0, 9);
    (void)a;
    kt_reset(&p);                            /* revoked: the segment is freed */
    struct kt_seg *mine = add(&p, 100, 109); /* assigned again */
    /* The old batch's callback: its epoch is gone, so its (freed) segment is
     * not touched (ASan would see it) and nothing moves. */
    kt_end(&p, epoch, a, true);
    PB_EQ_INT(kt_advance(&p, &from), KT_SAME);
    PB_EQ_INT(p.commit, -1);
    kt_end(&p, p.epoch, mine, true);
    PB_EQ_INT(kt_advance(&p, &from), KT_MOVED);
    PB_EQ_INT(p.commit, 110);
}

/* Random orders and failures: the commit offset never passes the first
 * offset of a batch that has not succeeded. */
PB_TEST(never_past_a_batch_not_committed_random)
{
    srand(7);
    for (int round = 0; round < 300; round++) {
        enum { N = 12 };
        struct kt_part p = {.commit = 0};
        struct kt_seg *segs[N];
        int64_t first[N];
        int result[N]; /* 0 pending, 1 ok, 2 failed */
        int order[N];
        int64_t off = 0;
        for (int i = 0; i < N; i++) {
            int len = 1 + rand() % 5;
            first[i] = off;
            segs[i] = add(&p, off, off + len - 1);
            off += len;
            result[i] = 0;
            order[i] = i;
        }
        for (int i = N - 1; i > 0; i--) {
            int j = rand() % (i + 1), t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        bool rewound = false;
        for (int n = 0; n < N && !rewound; n++) {
            int i = order[n];
            result[i] = rand() % 6 == 0 ? 2 : 1;
            kt_end(&p, p.epoch, segs[i], result[i] == 1);
            int64_t from = -1;
            enum kt_move mv = kt_advance(&p, &from);
            int firstbad = 0;
            while (firstbad < N && result[firstbad] == 1)
                firstbad++;
            int64_t bound = firstbad < N ? first[firstbad] : off;
            if (p.commit > bound)
                PB__FAIL("round %d: commit %lld past %lld", round, (long long)p.commit,
                         (long long)bound);
            if (mv == KT_REWIND) {
                PB_EQ_INT(result[firstbad], 2);
                PB_EQ_INT(from, first[firstbad]);
                PB_EQ_INT(p.commit, first[firstbad]);
                kt_rewind(&p, from);
                rewound = true;
            }
        }
        if (!rewound) {
            PB_EQ_INT(p.commit, off);
            PB_CHECK(!kt_busy(&p));
        }
        kt_reset(&p);
    }
}

int main(void)
{
    return pb_test_main();
}
