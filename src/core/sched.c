/* sched.c - the scheduling of attempts (sched.h): a min-heap on next_at for
 * items waiting, a FIFO of ready items per output, per-key queues (a key is
 * held from the admission of its first item until that item is finished,
 * and the next item of the key goes on then), a token bucket per output or
 * one per rate key (bounded, least recently used dropped), and the gates of
 * flow control: a time before which nothing starts and a pace between
 * starts (GCRA without burst). An item whose rate key has no token waits in
 * the heap for it, so other keys go on meanwhile. */
#include <math.h>
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

/* ---- rate keys --------------------------------------------------------------------------- */

#define RKEY_SKIP_MAX 64 /* items moved aside per take, waiting for their key's token */

struct rkey {
    char *key;
    uint64_t hash;
    struct rkey *hnext;         /* hash chain */
    struct rkey *lprev, *lnext; /* LRU: head is the most recent */
    double tokens;
    int64_t tokens_at;
};

struct pb_sched_rkeys {
    struct rkey **tab;
    size_t n, cap;
    struct rkey *lru_head, *lru_tail;
};

static void lru_unlink(struct pb_sched_rkeys *r, struct rkey *k)
{
    if (k->lprev)
        k->lprev->lnext = k->lnext;
    else
        r->lru_head = k->lnext;
    if (k->lnext)
        k->lnext->lprev = k->lprev;
    else
        r->lru_tail = k->lprev;
    k->lprev = k->lnext = NULL;
}

static void lru_front(struct pb_sched_rkeys *r, struct rkey *k)
{
    k->lprev = NULL;
    k->lnext = r->lru_head;
    if (r->lru_head)
        r->lru_head->lprev = k;
    r->lru_head = k;
    if (!r->lru_tail)
        r->lru_tail = k;
}

static void rkey_drop(struct pb_sched_rkeys *r, struct rkey *k)
{
    struct rkey **pp = &r->tab[k->hash & (r->cap - 1)];
    while (*pp && *pp != k)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = k->hnext;
    lru_unlink(r, k);
    r->n--;
    free(k->key);
    free(k);
}

/* The bucket of key (made, the oldest dropped past the bound), or NULL
 * without memory. */
static struct rkey *rkey_get(struct pb_sched_q *q, const char *key)
{
    struct pb_sched_rkeys *r = q->rkeys;
    if (!r) {
        if (!(r = calloc(1, sizeof(*r))))
            return NULL;
        q->rkeys = r;
    }
    uint64_t h = hash_str(key);
    if (r->cap)
        for (struct rkey *k = r->tab[h & (r->cap - 1)]; k; k = k->hnext)
            if (k->hash == h && strcmp(k->key, key) == 0) {
                lru_unlink(r, k);
                lru_front(r, k);
                return k;
            }
    while (r->n >= q->max_rkeys && r->lru_tail)
        rkey_drop(r, r->lru_tail);
    if (r->n + 1 > r->cap / 2) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        struct rkey **t = calloc(cap, sizeof(*t));
        if (!t)
            return NULL;
        for (size_t i = 0; i < r->cap; i++)
            for (struct rkey *k = r->tab[i], *n; k; k = n) {
                n = k->hnext;
                k->hnext = t[k->hash & (cap - 1)];
                t[k->hash & (cap - 1)] = k;
            }
        free(r->tab);
        r->tab = t;
        r->cap = cap;
    }
    struct rkey *k = calloc(1, sizeof(*k));
    if (!k || !(k->key = strdup(key))) {
        free(k);
        return NULL;
    }
    k->hash = h;
    k->hnext = r->tab[h & (r->cap - 1)];
    r->tab[h & (r->cap - 1)] = k;
    lru_front(r, k);
    r->n++;
    return k;
}

size_t pb_sched_rkeys_count(const struct pb_sched_q *q)
{
    return q->rkeys ? q->rkeys->n : 0;
}

static void rkeys_free(struct pb_sched_q *q)
{
    struct pb_sched_rkeys *r = q->rkeys;
    if (!r)
        return;
    while (r->lru_head)
        rkey_drop(r, r->lru_head);
    free(r->tab);
    free(r);
    q->rkeys = NULL;
}

/* ---- the interface ---------------------------------------------------------------------- */

int pb_sched_admit(struct pb_sched *s, struct pb_sched_q *q, struct pb_sched_item *it,
                   const char *key, int64_t now)
{
    it->q = q;
    q->sched = s;
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

/* A token of a bucket filled at rate r, or false with *in_ms set to when
 * one comes. */
static bool bucket_take(const struct pb_rate *r, double *tokens, int64_t *tokens_at, int64_t now,
                        int64_t *in_ms)
{
    double cap = (double)r->count;
    double per_ms = (double)r->count / (double)r->period_ms;
    if (*tokens_at == 0) {
        *tokens = cap;
        *tokens_at = now;
    }
    if (now > *tokens_at) {
        *tokens += (double)(now - *tokens_at) * per_ms;
        *tokens_at = now;
    }
    if (*tokens > cap)
        *tokens = cap;
    if (*tokens >= 1.0) {
        *tokens -= 1.0;
        return true;
    }
    *in_ms = (int64_t)((1.0 - *tokens) / per_ms) + 1;
    return false;
}

/* A token of q's rate limit, or false with *wait_ms lowered to when one comes. */
static bool take_token(struct pb_sched_q *q, int64_t now, int64_t *wait_ms)
{
    int64_t ms = 0;
    if (q->rate.count == 0 || bucket_take(&q->rate, &q->tokens, &q->tokens_at, now, &ms))
        return true;
    if (wait_ms && ms < *wait_ms)
        *wait_ms = ms;
    return false;
}

/* Take `it` out of q's ready queue, wherever it is (prev: the one before). */
static void ready_remove(struct pb_sched_q *q, struct pb_sched_item *prev, struct pb_sched_item *it)
{
    if (prev)
        prev->next = it->next;
    else
        q->ready_head = it->next;
    if (q->ready_tail == it)
        q->ready_tail = prev;
    q->nready--;
    it->next = NULL;
}

/* The first ready item whose rate key has a token. Items before it whose
 * key has none wait in the heap until it comes (at most RKEY_SKIP_MAX per
 * call, so a call stays short). */
static struct pb_sched_item *take_keyed(struct pb_sched_q *q, int64_t now, int64_t *wait_ms)
{
    struct pb_sched_item *prev = NULL, *it = q->ready_head;
    for (int moved = 0; it;) {
        struct rkey *k = it->rkey ? rkey_get(q, it->rkey) : NULL;
        int64_t ms = 0;
        bool ok = k ? bucket_take(&q->rate, &k->tokens, &k->tokens_at, now, &ms)
                    : take_token(q, now, wait_ms); /* no key, or no memory: the shared bucket */
        if (ok) {
            ready_remove(q, prev, it);
            return it;
        }
        if (!k || moved >= RKEY_SKIP_MAX || !q->sched) {
            if (k && wait_ms && ms < *wait_ms)
                *wait_ms = ms;
            return NULL;
        }
        struct pb_sched_item *next = it->next;
        ready_remove(q, prev, it);
        it->next_at = now + ms;
        place(q->sched, it, now);
        moved++;
        it = next;
    }
    return NULL;
}

struct pb_sched_item *pb_sched_take(struct pb_sched_q *q, int64_t now, int64_t *wait_ms)
{
    if (q->paused || !q->ready_head || q->inflight >= q->concurrency)
        return NULL;
    if (now < q->not_before) {
        if (wait_ms && q->not_before - now < *wait_ms)
            *wait_ms = q->not_before - now;
        return NULL;
    }
    if (q->pace_ms > 0 && (double)now < q->pace_tat) {
        int64_t ms = (int64_t)ceil(q->pace_tat - (double)now);
        if (wait_ms && ms < *wait_ms)
            *wait_ms = ms;
        return NULL;
    }
    struct pb_sched_item *it;
    if (q->max_rkeys && q->rate.count) {
        if (!(it = take_keyed(q, now, wait_ms)))
            return NULL;
    } else {
        if (!take_token(q, now, wait_ms))
            return NULL;
        it = ready_pop(q);
    }
    if (q->pace_ms > 0)
        q->pace_tat = ((double)now > q->pace_tat ? (double)now : q->pace_tat) + q->pace_ms;
    q->inflight++;
    return it;
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
    rkeys_free(q);
}

void pb_sched_cleanup(struct pb_sched *s)
{
    free(s->heap);
    s->heap = NULL;
    s->nheap = s->heapcap = 0;
}
