/* enrich_cache.c - a bounded LRU cache with TTLs for the enrich processor
 * (see enrich_cache.h). Chained hash table (FNV-1a) plus a doubly linked
 * recency list of settled entries. Single-threaded; clock passed in. */
#include <stdlib.h>
#include <string.h>

#include "enrich_cache.h"

#define BUCKETS_MAX (1u << 20)

static uint64_t fnv(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

int ec_init(struct ec_cache *c, size_t max_entries, uint64_t max_bytes)
{
    memset(c, 0, sizeof(*c));
    c->max_entries = max_entries;
    c->max_bytes = max_bytes;
    size_t nb = 64;
    while (nb < max_entries && nb < BUCKETS_MAX)
        nb *= 2;
    c->buckets = calloc(nb, sizeof(*c->buckets));
    if (!c->buckets)
        return -1;
    c->nbuckets = nb;
    return 0;
}

static void lru_unlink(struct ec_cache *c, struct ec_entry *e)
{
    if (e->lprev)
        e->lprev->lnext = e->lnext;
    else if (c->lru_head == e)
        c->lru_head = e->lnext;
    if (e->lnext)
        e->lnext->lprev = e->lprev;
    else if (c->lru_tail == e)
        c->lru_tail = e->lprev;
    e->lprev = e->lnext = NULL;
}

static void lru_front(struct ec_cache *c, struct ec_entry *e)
{
    e->lprev = NULL;
    e->lnext = c->lru_head;
    if (c->lru_head)
        c->lru_head->lprev = e;
    c->lru_head = e;
    if (!c->lru_tail)
        c->lru_tail = e;
}

void ec_remove(struct ec_cache *c, struct ec_entry *e)
{
    struct ec_entry **pp = &c->buckets[e->hash & (c->nbuckets - 1)];
    while (*pp && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = e->hnext;
    if (e->state != EC_PENDING) {
        lru_unlink(c, e);
        c->count--;
        c->bytes -= e->bytes;
    }
    jv_free(e->answer);
    free(e->key);
    free(e);
}

struct ec_entry *ec_get(struct ec_cache *c, const char *key, size_t klen, int64_t now)
{
    uint64_t h = fnv(key, klen);
    struct ec_entry *e = c->buckets[h & (c->nbuckets - 1)];
    for (; e; e = e->hnext)
        if (e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0)
            break;
    if (!e) {
        c->misses++;
        return NULL;
    }
    if (e->state == EC_PENDING)
        return e;
    if (now >= e->expires_at) {
        ec_remove(c, e);
        c->misses++;
        return NULL;
    }
    c->hits++;
    lru_unlink(c, e);
    lru_front(c, e);
    return e;
}

struct ec_entry *ec_add_pending(struct ec_cache *c, const char *key, size_t klen)
{
    struct ec_entry *e = calloc(1, sizeof(*e));
    if (!e || !(e->key = malloc(klen + 1))) {
        free(e);
        return NULL;
    }
    memcpy(e->key, key, klen);
    e->key[klen] = 0;
    e->klen = klen;
    e->hash = fnv(key, klen);
    e->state = EC_PENDING;
    e->answer = jv_invalid();
    size_t b = e->hash & (c->nbuckets - 1);
    e->hnext = c->buckets[b];
    c->buckets[b] = e;
    return e;
}

struct ec_entry *ec_settle(struct ec_cache *c, struct ec_entry *e, enum ec_state state, jv answer,
                           size_t bytes, int64_t ttl_ms, int64_t now)
{
    if (ttl_ms <= 0 || (c->max_bytes && bytes > c->max_bytes) || c->max_entries == 0) {
        jv_free(answer);
        ec_remove(c, e);
        return NULL;
    }
    e->state = state;
    jv_free(e->answer);
    e->answer = answer;
    e->bytes = bytes;
    e->expires_at = now + ttl_ms;
    c->count++;
    c->bytes += bytes;
    lru_front(c, e);
    while ((c->count > c->max_entries || (c->max_bytes && c->bytes > c->max_bytes)) &&
           c->lru_tail && c->lru_tail != e) {
        ec_remove(c, c->lru_tail);
        c->evictions++;
    }
    return e;
}

void ec_cleanup(struct ec_cache *c)
{
    for (size_t i = 0; c->buckets && i < c->nbuckets; i++) {
        struct ec_entry *e = c->buckets[i];
        while (e) {
            struct ec_entry *n = e->hnext;
            jv_free(e->answer);
            free(e->key);
            free(e);
            e = n;
        }
    }
    free(c->buckets);
    memset(c, 0, sizeof(*c));
}
