/* route_keys.c - keys process steps remember (pb_proc_key_claim) kept in
 * memory, for runs with no state store: `patchbay test`, where each case
 * starts with none and leaves none behind. The route stage keeps them in
 * the store instead (route_stage.c). A bounded list, one thread (the
 * caller's); the clock is passed in by whoever made it. */
#include <stdlib.h>
#include <string.h>

#include "core/route.h"

#define MEM_KEYS_MAX 100000 /* past this, a claim fails (a test case has far fewer) */

struct mem_key {
    struct mem_key *next;
    int64_t expires_at;
    char *scope, *key, *owner;
};

struct mem_keys {
    struct pb_route_keys k; /* first: the caller's handle */
    int64_t (*now)(void *arg);
    void *now_arg;
    struct mem_key *head;
    size_t n;
};

static int mem_claim(struct pb_route_keys *k, const char *scope, const char *key, const char *owner,
                     int64_t window_ms,
                     void (*done)(void *arg, int rc, bool first, const char *holder), void *arg)
{
    struct mem_keys *m = (struct mem_keys *)k;
    int64_t now = m->now(m->now_arg);
    for (struct mem_key *e = m->head; e; e = e->next) {
        if (strcmp(e->scope, scope) != 0 || strcmp(e->key, key) != 0)
            continue;
        if (e->expires_at > now && strcmp(e->owner, owner) != 0) {
            done(arg, 0, false, e->owner);
            return 0;
        }
        char *o = strdup(owner);
        if (!o)
            return PB_ENOMEM;
        if (e->expires_at <= now)
            e->expires_at = now + window_ms;
        free(e->owner);
        e->owner = o;
        done(arg, 0, true, owner);
        return 0;
    }
    if (m->n >= MEM_KEYS_MAX)
        return PB_EFULL;
    struct mem_key *e = calloc(1, sizeof(*e));
    if (!e || !(e->scope = strdup(scope)) || !(e->key = strdup(key)) ||
        !(e->owner = strdup(owner))) {
        if (e) {
            free(e->scope);
            free(e->key);
        }
        free(e);
        return PB_ENOMEM;
    }
    e->expires_at = now + window_ms;
    e->next = m->head;
    m->head = e;
    m->n++;
    done(arg, 0, true, owner);
    return 0;
}

struct pb_route_keys *pb_route_keys_memory(int64_t (*now)(void *arg), void *now_arg)
{
    struct mem_keys *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->k = (struct pb_route_keys){.claim = mem_claim, .synchronous = true};
    m->now = now;
    m->now_arg = now_arg;
    return &m->k;
}

void pb_route_keys_memory_free(struct pb_route_keys *k)
{
    struct mem_keys *m = (struct mem_keys *)k;
    if (!m)
        return;
    for (struct mem_key *e = m->head, *next; e; e = next) {
        next = e->next;
        free(e->scope);
        free(e->key);
        free(e->owner);
        free(e);
    }
    free(m);
}
