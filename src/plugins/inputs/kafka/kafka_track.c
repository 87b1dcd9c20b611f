/* kafka_track.c - a partition's batches in flight and its commit offset
 * (see kafka_track.h). The input's loop thread. */
#include <stdlib.h>

#include "kafka_track.h"

struct kt_seg *kt_seg_new(int64_t offset)
{
    struct kt_seg *s = calloc(1, sizeof(*s));
    if (s)
        s->first = s->last = offset;
    return s;
}

void kt_append(struct kt_part *p, struct kt_seg *s)
{
    s->next = NULL;
    if (p->tail)
        p->tail->next = s;
    else
        p->head = s;
    p->tail = s;
}

void kt_end(struct kt_part *p, uint64_t epoch, struct kt_seg *s, bool ok)
{
    if (p->epoch == epoch)
        s->state = ok ? KT_DONE : KT_FAILED;
}

enum kt_move kt_advance(struct kt_part *p, int64_t *from)
{
    enum kt_move moved = KT_SAME;
    while (p->head && p->head->state == KT_DONE) {
        struct kt_seg *s = p->head;
        p->commit = s->last + 1;
        p->head = s->next;
        if (!p->head)
            p->tail = NULL;
        free(s);
        moved = KT_MOVED;
    }
    if (p->head && p->head->state == KT_FAILED) {
        *from = p->head->first;
        return KT_REWIND;
    }
    return moved;
}

void kt_reset(struct kt_part *p)
{
    for (struct kt_seg *s = p->head, *n; s; s = n) {
        n = s->next;
        free(s);
    }
    p->head = p->tail = NULL;
    p->epoch++;
}

void kt_rewind(struct kt_part *p, int64_t from)
{
    kt_reset(p);
    p->commit = from;
}

bool kt_busy(const struct kt_part *p)
{
    for (const struct kt_seg *s = p->head; s; s = s->next)
        if (s->state == KT_INFLIGHT)
            return true;
    return false;
}
