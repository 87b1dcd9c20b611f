/* kafka_track.h - where one partition stands between the kafka input and
 * the group: the batches it has in flight, in offset order, and the offset
 * that may be committed, which never passes a batch whose commit in
 * patchbay has not succeeded.
 *
 * A batch takes a range [first, last] of each partition it holds messages
 * of: one segment per partition, appended in the order the batches were
 * submitted (so in offset order). When the batch's commit ends, each of its
 * segments is marked done or failed; kt_advance then moves the commit offset
 * past the done segments at the head, and stops at a failed one, which the
 * input reads again from its first offset.
 *
 * An epoch guards what a batch holds: kt_reset (a revocation, a rewind, a
 * new assignment) frees the segments and bumps it, and kt_end with an older
 * epoch is ignored, so a batch never touches a segment that is gone.
 *
 * Pure bookkeeping, no locks: the input's loop thread. */
#ifndef PB_KAFKA_TRACK_H
#define PB_KAFKA_TRACK_H

#include <stdbool.h>
#include <stdint.h>

enum kt_state { KT_INFLIGHT = 0, KT_DONE, KT_FAILED };

struct kt_seg {
    struct kt_seg *next;
    int64_t first, last;
    enum kt_state state;
};

struct kt_part {
    uint64_t epoch;
    int64_t commit; /* every offset before it is committed in patchbay; -1: none yet */
    struct kt_seg *head, *tail;
};

/* A segment starting (and, for now, ending) at offset; NULL on ENOMEM. The
 * caller extends it (s->last) while the batch takes messages, then hands it
 * to kt_append, or frees it if the batch is not submitted. */
struct kt_seg *kt_seg_new(int64_t offset);
/* Append s (ownership taken) to p's segments. */
void kt_append(struct kt_part *p, struct kt_seg *s);
/* The batch holding s ended: committed (ok) or not. Ignored when p has been
 * reset since (epoch differs): s is gone then. */
void kt_end(struct kt_part *p, uint64_t epoch, struct kt_seg *s, bool ok);

enum kt_move { KT_SAME = 0, KT_MOVED, KT_REWIND };
/* Move the commit offset past the done segments at the head. KT_REWIND
 * when the head failed: *from is its first offset (the caller reads again
 * from there with kt_rewind, or gives the partition up with kt_reset). */
enum kt_move kt_advance(struct kt_part *p, int64_t *from);
/* Forget every segment (batches in flight are ignored from now on). */
void kt_reset(struct kt_part *p);
/* kt_reset, then the commit offset is from: everything before it is
 * committed, everything from it on is read again. */
void kt_rewind(struct kt_part *p, int64_t from);
/* A segment of p still waits for its batch's commit. */
bool kt_busy(const struct kt_part *p);

#endif
