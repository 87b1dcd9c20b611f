/* test_enrich_cache.c - the enrich processor's cache: TTLs on a clock
 * passed in, the entry and byte bounds with least-recently-used eviction,
 * pending entries (a lookup in flight) neither counted nor evicted. */
#include "pb_test.h"

#include "plugins/processors/enrich/enrich_cache.h"

static struct ec_entry *put(struct ec_cache *c, const char *k, size_t bytes, int64_t ttl,
                            int64_t now)
{
    struct ec_entry *e = ec_add_pending(c, k, strlen(k));
    return ec_settle(c, e, EC_FOUND, jv_string(k), bytes, ttl, now);
}

PB_TEST(answers_expire_after_their_ttl)
{
    struct ec_cache c;
    PB_EQ_INT(ec_init(&c, 10, 0), 0);
    PB_CHECK(put(&c, "a", 1, 1000, 0) != NULL);
    struct ec_entry *e = ec_get(&c, "a", 1, 999);
    PB_CHECK(e && e->state == EC_FOUND);
    PB_EQ_STR(jv_string_value(e->answer), "a");
    PB_CHECK(ec_get(&c, "a", 1, 1000) == NULL);
    PB_EQ_INT(c.count, 0);
    PB_EQ_INT(c.hits, 1);
    PB_EQ_INT(c.misses, 1);
    ec_cleanup(&c);
}

PB_TEST(the_entry_bound_evicts_the_least_recently_used)
{
    struct ec_cache c;
    char k[16];
    PB_EQ_INT(ec_init(&c, 3, 0), 0);
    put(&c, "a", 1, 60000, 0);
    put(&c, "b", 1, 60000, 0);
    put(&c, "c", 1, 60000, 0);
    PB_CHECK(ec_get(&c, "a", 1, 1) != NULL); /* a is now the most recent */
    put(&c, "d", 1, 60000, 2);
    PB_EQ_INT(c.count, 3);
    PB_EQ_INT(c.evictions, 1);
    PB_CHECK(ec_get(&c, "b", 1, 3) == NULL);
    PB_CHECK(ec_get(&c, "a", 1, 3) != NULL);
    for (int i = 0; i < 1000; i++) {
        snprintf(k, sizeof(k), "k%d", i);
        put(&c, k, 1, 60000, 4);
    }
    PB_EQ_INT(c.count, 3);
    ec_cleanup(&c);
}

PB_TEST(the_byte_bound_holds_and_oversized_answers_are_not_kept)
{
    struct ec_cache c;
    PB_EQ_INT(ec_init(&c, 100, 100), 0);
    put(&c, "a", 40, 60000, 0);
    put(&c, "b", 40, 60000, 0);
    put(&c, "c", 40, 60000, 0);
    PB_CHECK(c.bytes <= 100);
    PB_EQ_INT(c.count, 2);
    PB_CHECK(put(&c, "huge", 101, 60000, 0) == NULL);
    PB_CHECK(ec_get(&c, "huge", 4, 0) == NULL);
    ec_cleanup(&c);
}

PB_TEST(pending_lookups_are_found_and_never_evicted)
{
    struct ec_cache c;
    PB_EQ_INT(ec_init(&c, 1, 0), 0);
    struct ec_entry *p = ec_add_pending(&c, "p", 1);
    put(&c, "a", 1, 60000, 0);
    put(&c, "b", 1, 60000, 0);
    PB_CHECK(ec_get(&c, "p", 1, 0) == p);
    PB_EQ_INT(c.count, 1);
    /* a zero TTL settles by dropping */
    PB_CHECK(ec_settle(&c, p, EC_FOUND, jv_null(), 1, 0, 0) == NULL);
    PB_CHECK(ec_get(&c, "p", 1, 0) == NULL);
    ec_cleanup(&c);
}

int main(void)
{
    return pb_test_main();
}
