/* enrich_cache.h - the enrich processor's lookup cache: answers by key,
 * each kept for a TTL, at most max_entries of them and max_bytes of
 * answers, the least recently used evicted first. A key being looked up is
 * a pending entry (not counted, not evictable) that later lookups of the
 * same key wait on, so concurrent messages make one request.
 *
 * Pure and single-threaded: the clock is passed in (now, unix ms). */
#ifndef PB_ENRICH_CACHE_H
#define PB_ENRICH_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jv.h>

enum ec_state { EC_PENDING = 0, EC_FOUND, EC_MISSING };

struct ec_entry {
    char *key;
    size_t klen;
    uint64_t hash;
    enum ec_state state;
    jv answer; /* EC_FOUND */
    size_t bytes;
    int64_t expires_at;
    void *user; /* the caller's (waiters of a pending entry) */
    struct ec_entry *hnext, *lprev, *lnext;
};

struct ec_cache {
    size_t max_entries;
    uint64_t max_bytes;
    struct ec_entry **buckets;
    size_t nbuckets;
    size_t count;   /* entries settled (found or missing) */
    uint64_t bytes; /* their answers' size */
    struct ec_entry *lru_head, *lru_tail;
    uint64_t hits, misses, evictions;
};

int ec_init(struct ec_cache *c, size_t max_entries, uint64_t max_bytes);
void ec_cleanup(struct ec_cache *c);
/* The live entry for key (pending, or settled and not expired: a hit moves
 * it to the front), or NULL (an expired one is dropped). Counts hits and
 * misses of settled entries. */
struct ec_entry *ec_get(struct ec_cache *c, const char *key, size_t klen, int64_t now);
/* A new pending entry for key (none may exist). NULL on ENOMEM. */
struct ec_entry *ec_add_pending(struct ec_cache *c, const char *key, size_t klen);
/* Settle pending e: kept for ttl_ms (answer taken; bytes its size) and the
 * least recently used evicted past the bounds, or dropped at once when
 * ttl_ms <= 0. e must not be used afterwards unless it was kept: returns
 * e, or NULL when it was dropped. */
struct ec_entry *ec_settle(struct ec_cache *c, struct ec_entry *e, enum ec_state state, jv answer,
                           size_t bytes, int64_t ttl_ms, int64_t now);
/* Drop e (pending or settled). */
void ec_remove(struct ec_cache *c, struct ec_entry *e);

#endif
