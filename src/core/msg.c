/* msg.c - immutable, reference-counted messages, their ids, and the clocks
 * and random numbers the core uses. */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "core/engine.h"

struct pb_msg *pb_msg_create(const void *body, size_t len, const char *content_type)
{
    struct pb_msg *m = malloc(sizeof(*m) + len + 1);
    if (!m)
        return NULL;
    memset(m, 0, sizeof(*m));
    atomic_init(&m->refs, 1);
    if (content_type && strcmp(content_type, "application/json") != 0) {
        m->content_type = strdup(content_type);
        if (!m->content_type) {
            free(m);
            return NULL;
        }
    }
    if (len)
        memcpy(m->body, body, len);
    m->body[len] = 0;
    m->len = len;
    return m;
}

int pb_msg_set_meta(struct pb_msg *m, const char *meta, size_t len)
{
    char *copy = NULL;
    if (meta) {
        copy = malloc(len + 1);
        if (!copy)
            return PB_ENOMEM;
        memcpy(copy, meta, len);
        copy[len] = 0;
    }
    free(m->meta);
    m->meta = copy;
    m->meta_len = copy ? len : 0;
    return 0;
}

struct pb_msg *pb_msg_ref(struct pb_msg *m)
{
    atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    return m;
}

void pb_msg_unref(struct pb_msg *m)
{
    if (m && atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1) {
        free(m->content_type);
        free(m->meta);
        free(m->okey);
        free(m);
    }
}

int64_t pb_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t pb_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* xoshiro256** per thread, seeded from getrandom(2). Not for secrets. */
static _Thread_local uint64_t rng[4];
static _Thread_local int rng_seeded;

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t pb_rand64(void)
{
    if (!rng_seeded) {
        if (getrandom(rng, sizeof(rng), 0) != (ssize_t)sizeof(rng)) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            rng[0] = (uint64_t)ts.tv_nsec ^ 0x9e3779b97f4a7c15ull;
            rng[1] = (uint64_t)(uintptr_t)&ts;
            rng[2] = (uint64_t)ts.tv_sec;
            rng[3] = 0xdeadbeefcafef00dull;
        }
        rng_seeded = 1;
    }
    uint64_t result = rotl(rng[1] * 5, 7) * 9;
    uint64_t t = rng[1] << 17;
    rng[2] ^= rng[0];
    rng[3] ^= rng[1];
    rng[1] ^= rng[2];
    rng[0] ^= rng[3];
    rng[2] ^= t;
    rng[3] = rotl(rng[3], 45);
    return result;
}

void pb_ulid(char *buf, int64_t now_ms)
{
    static const char alphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    unsigned char raw[16];
    uint64_t t = (uint64_t)now_ms;
    for (int i = 5; i >= 0; i--) {
        raw[i] = (unsigned char)(t & 0xff);
        t >>= 8;
    }
    uint64_t r1 = pb_rand64(), r2 = pb_rand64();
    memcpy(raw + 6, &r1, 8);
    memcpy(raw + 14, &r2, 2);
    /* 128 bits -> 26 base32 digits, most significant first (2 pad bits). */
    for (int i = 0; i < 26; i++) {
        int bit = i * 5 - 2; /* position in the 128-bit string; first digit has 3 bits */
        unsigned v = 0;
        for (int b = 0; b < 5; b++, bit++) {
            v <<= 1;
            if (bit >= 0)
                v |= (raw[bit / 8] >> (7 - bit % 8)) & 1u;
        }
        buf[i] = alphabet[v];
    }
    buf[26] = 0;
}

/* "msg_" + ULID, so message ids sort by acceptance time and are unique
 * across nodes. */
void pb_msg_new_id(char *buf, int64_t now_ms)
{
    memcpy(buf, "msg_", 4);
    pb_ulid(buf + 4, now_ms);
}
