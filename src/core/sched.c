/* sched.c - the scheduling of attempts (sched.h): a min-heap on next_at for
 * items waiting, a FIFO of ready items per output, per-key queues (a key is
 * held from the admission of its first item until that item is finished,
 * and the next item of the key goes on then), and a token bucket per
 * output. */
#include <stdlib.h>
#include <string.h>

#include "core/sched.h"
#include "patchbay/pb_err.h"

struct pb_sched_key {
    char *key;
    uint64_t hash;
    struct pb_sched_key *next;         /* hash chain */
    struct pb_sched_item *head, *tail; /* admitted, waiting for the key */
};

/* ---- the timer heap ------------------------------------------------------------------ */

static void heap_swap(struct pb_sched *s, size_t a, size_t b)
{
    struct pb_sched_item *t = s->heap[a];
    s->heap[a] = s->heap[b];
    s->heap[b] = t;
    s->heap[a]->heap_idx = a;
    s->heap[b]->heap_idx = b;
}

static void heap_up(struct pb_sched *s, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (s->heap[p]->next_at <= s->heap[i]->next_at)
            break;
        heap_swap(s, p, i);
        i = p;
    }
}

static void heap_down(struct pb_sched *s, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < s->nheap && s->heap[l]->next_at < s->heap[m]->next_at)
            m = l;
        if (r < s->nheap && s->heap[r]->next_at < s->heap[m]->next_at)
            m = r;
        if (m == i)
            break;
        heap_swap(s, i, m);
        i = m;
    }
}

static int heap_push(struct pb_sched *s, struct pb_sched_item *it)
{
    if (s->nheap == s->heapcap) {
        size_t cap = s->heapcap ? s->heapcap * 2 : 256;
        struct pb_sched_item **h = realloc(s->heap, cap * sizeof(*h));
        if (!h)
            return PB_ENOMEM;
        s->heap = h;
        s->heapcap = cap;
    }
    it->heap_idx = s->nheap;
    it->in_heap = true;
    s->heap[s->nheap++] = it;
    heap_up(s, it->heap_idx);
    return 0;
}

static void heap_remove(struct pb_sched *s, struct pb_sched_item *it)
{
    size_t i = it->heap_idx;
    it->in_heap = false;
    s->nheap--;
    if (i == s->nheap)
        return;
    s->heap[i] = s->heap[s->nheap];
    s->heap[i]->heap_idx = i;
    heap_down(s, i);
    heap_up(s, i);
}

/* ---- ready queues --------------------------------------------------------------------- */

static void ready_push(struct pb_sched_q *q, struct pb_sched_item *it)
{
    it->next = NULL;
    if (q->ready_tail)
        q->ready_tail->next = it;
    else
        q->ready_head = it;
    q->ready_tail = it;
    q->nready++;
}

static struct pb_sched_item *ready_pop(struct pb_sched_q *q)
{
    struct pb_sched_item *it = q->ready_head;
    if (it) {
        q->ready_head = it->next;
        if (!q->ready_head)
            q->ready_tail = NULL;
        q->nready--;
        it->next = NULL;
    }
    return it;
}

/* Where it waits for its next attempt: ready now, or in the heap. Without
 * room in the heap it is ready at once (early rather than lost). */
static void place(struct pb_sched *s, struct pb_sched_item *it, int64_t now)
{
    if (it->next_at <= now || heap_push(s, it) != 0)
        ready_push(it->q, it);
}

/* ---- keys ------------------------------------------------------------------------------ */

static uint64_t hash_str(const char *k)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *k; k++) {
        h ^= (unsigned char)*k;
        h *= 1099511628211ull;
    }
    return h;
}

static struct pb_sched_key *key_find(struct pb_sched_q *q, const char *key, uint64_t h)
{
    if (!q->keycap)
        return NULL;
    for (struct pb_sched_key *k = q->keys[h & (q->keycap - 1)]; k; k = k->next)
        if (k->hash == h && strcmp(k->key, key) == 0)
            return k;
    return NULL;
}

static int key_grow(struct pb_sched_q *q)
{
    size_t cap = q->keycap ? q->keycap * 2 : 64;
    struct pb_sched_key **t = calloc(cap, sizeof(*t));
    if (!t)
        return PB_ENOMEM;
    for (size_t i = 0; i < q->keycap; i++)
        for (struct pb_sched_key *k = q->keys[i], *n; k; k = n) {
            n = k->next;
            k->next = t[k->hash & (cap - 1)];
            t[k->hash & (cap - 1)] = k;
        }
    free(q->keys);
    q->keys = t;
    q->keycap = cap;
    return 0;
}

static struct pb_sched_key *key_add(struct pb_sched_q *q, const char *key, uint64_t h)
{
    if (q->nkeys + 1 > q->keycap && key_grow(q))
        return NULL;
    struct pb_sched_key *k = calloc(1, sizeof(*k));
    if (!k || !(k->key = strdup(key))) {
        free(k);
        return NULL;
    }
    k->hash = h;
    k->next = q->keys[h & (q->keycap - 1)];
    q->keys[h & (q->keycap - 1)] = k;
    q->nkeys++;
    return k;
}

static void key_remove(struct pb_sched_q *q, struct pb_sched_key *k)
{
    struct pb_sched_key **pp = &q->keys[k->hash & (q->keycap - 1)];
    while (*pp && *pp != k)
        pp = &(*pp)->next;
    if (*pp)
        *pp = k->next;
    q->nkeys--;
    free(k->key);
    free(k);
}

/* ---- the interface ---------------------------------------------------------------------- */

int pb_sched_admit(struct pb_sched *s, struct pb_sched_q *q, struct pb_sched_item *it,
                   const char *key, int64_t now)
{
    it->q = q;
    it->next = NULL;
    it->key = NULL;
    it->in_heap = false;
    it->waiting = false;
    if (key) {
        uint64_t h = hash_str(key);
        struct pb_sched_key *k = key_find(q, key, h);
        if (k) {
            /* The key is busy: wait behind its last item. */
            it->key = k;
            it->waiting = true;
            if (k->tail)
                k->tail->next = it;
            else
                k->head = it;
            k->tail = it;
            return 0;
        }
        if (!(k = key_add(q, key, h)))
            return PB_ENOMEM;
        it->key = k;
    }
    place(s, it, now);
    return 0;
}

void pb_sched_later(struct pb_sched *s, struct pb_sched_item *it, int64_t now)
{
    place(s, it, now);
}

void pb_sched_due(struct pb_sched *s, int64_t now)
{
    while (s->nheap && s->heap[0]->next_at <= now) {
        struct pb_sched_item *it = s->heap[0];
        heap_remove(s, it);
        ready_push(it->q, it);
    }
}

/* A token of q's rate limit, or false with *wait_ms lowered to when one comes. */
static bool take_token(struct pb_sched_q *q, int64_t now, int64_t *wait_ms)
{
    const struct pb_rate *r = &q->rate;
    if (r->count == 0)
        return true;
    double cap = (double)r->count;
    double per_ms = (double)r->count / (double)r->period_ms;
    if (q->tokens_at == 0) {
        q->tokens = cap;
        q->tokens_at = now;
    }
    if (now > q->tokens_at) {
        q->tokens += (double)(now - q->tokens_at) * per_ms;
        q->tokens_at = now;
    }
    if (q->tokens > cap)
        q->tokens = cap;
    if (q->tokens >= 1.0) {
        q->tokens -= 1.0;
        return true;
    }
    int64_t ms = (int64_t)((1.0 - q->tokens) / per_ms) + 1;
    if (wait_ms && ms < *wait_ms)
        *wait_ms = ms;
    return false;
}

struct pb_sched_item *pb_sched_take(struct pb_sched_q *q, int64_t now, int64_t *wait_ms)
{
    if (q->paused || !q->ready_head || q->inflight >= q->concurrency ||
        !take_token(q, now, wait_ms))
        return NULL;
    q->inflight++;
    return ready_pop(q);
}

void pb_sched_ended(struct pb_sched_q *q)
{
    if (q->inflight)
        q->inflight--;
}

void pb_sched_finish(struct pb_sched *s, struct pb_sched_item *it, int64_t now)
{
    struct pb_sched_key *k = it->key;
    struct pb_sched_q *q = it->q;
    if (it->in_heap)
        heap_remove(s, it);
    it->key = NULL;
    if (!k)
        return;
    struct pb_sched_item *nx = k->head;
    if (!nx) {
        key_remove(q, k);
        return;
    }
    k->head = nx->next;
    if (!k->head)
        k->tail = NULL;
    nx->next = NULL;
    nx->waiting = false;
    place(s, nx, now);
}

int64_t pb_sched_next_due(const struct pb_sched *s, int64_t now)
{
    if (!s->nheap)
        return -1;
    int64_t t = s->heap[0]->next_at - now;
    return t < 0 ? 0 : t;
}

void pb_sched_drain(struct pb_sched *s, struct pb_sched_q *q,
                    void (*fn)(struct pb_sched_item *it, void *arg), void *arg)
{
    struct pb_sched_item *it;
    while ((it = ready_pop(q)))
        fn(it, arg);
    for (size_t i = 0; i < q->keycap; i++)
        for (struct pb_sched_key *k = q->keys[i]; k; k = k->next) {
            for (struct pb_sched_item *w = k->head, *n; w; w = n) {
                n = w->next;
                fn(w, arg);
            }
            k->head = k->tail = NULL;
        }
    /* The heap, at once: a rebuild after taking q's items out. */
    size_t kept = 0;
    for (size_t i = 0; i < s->nheap; i++) {
        struct pb_sched_item *h = s->heap[i];
        if (h->q == q) {
            h->in_heap = false;
            fn(h, arg);
            continue;
        }
        h->heap_idx = kept;
        s->heap[kept++] = h;
    }
    if (kept != s->nheap) {
        s->nheap = kept;
        for (size_t i = kept / 2 + 1; i-- > 0;)
            heap_down(s, i);
    }
}

void pb_sched_q_cleanup(struct pb_sched_q *q)
{
    for (size_t i = 0; i < q->keycap; i++)
        for (struct pb_sched_key *k = q->keys[i], *n; k; k = n) {
            n = k->next;
            free(k->key);
            free(k);
        }
    free(q->keys);
    q->keys = NULL;
    q->keycap = q->nkeys = 0;
}

void pb_sched_cleanup(struct pb_sched *s)
{
    free(s->heap);
    s->heap = NULL;
    s->nheap = s->heapcap = 0;
}
