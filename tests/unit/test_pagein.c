/* test_pagein.c - a spilled output and its claims (src/core/pagein.c),
 * against a real store, with the dispatcher's turn played step by step:
 * a claim that comes back short ends the spill only when nothing was left
 * in the store after it was submitted. A delivery made unleased while a
 * claim is on its way would otherwise stay in the store, pending, with
 * nothing left to claim it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/dispatch_int.h"
#include "core/engine.h"
#include "pb_test.h"

struct fixture {
    char dir[64];
    struct pb_engine e;
    struct pb_output *o;
};

static void fixture_up(struct fixture *f)
{
    struct pb_err err = {0};
    char path[128], url[160];
    snprintf(f->dir, sizeof(f->dir), "/tmp/pbpagein-XXXXXX");
    PB_CHECK(mkdtemp(f->dir) != NULL);
    snprintf(path, sizeof(path), "%s/patchbay.yaml", f->dir);
    FILE *fp = fopen(path, "w");
    PB_CHECK(fp != NULL);
    fprintf(fp,
            "state: sqlite:%s/state.db\n"
            "limits: { in_memory: 16 }\n"
            "pipelines:\n"
            "  p:\n"
            "    input: { generate: { count: 1 } }\n"
            "    outputs: { a: { drop: {} } }\n",
            f->dir);
    fclose(fp);
    f->e.cfg = pb_config_load(path, NULL, &err);
    PB_CHECK(f->e.cfg != NULL);
    snprintf(url, sizeof(url), "sqlite:%s/state.db", f->dir);
    f->e.store = pb_store_open(url, NULL, &err);
    PB_CHECK(f->e.store != NULL);
    PB_EQ_INT(pb_store_start(f->e.store), 0);
    /* Never started: the test plays the dispatcher thread. */
    f->e.disp = pb_dispatcher_create(&f->e, &err);
    PB_CHECK(f->e.disp != NULL);
    f->o = &f->e.cfg->pipelines[0].outs[0];
}

static void fixture_down(struct fixture *f)
{
    pb_store_stop(f->e.store);
    pb_dispatcher_destroy(f->e.disp);
    pb_store_destroy(f->e.store);
    pb_config_destroy(f->e.cfg);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
    PB_EQ_INT(system(cmd), 0);
}

/* The next callback posted to the dispatcher (a claim coming back). */
static struct pb__disp_post *wait_post(struct pb_dispatcher *d)
{
    for (int i = 0; i < 5000; i++) {
        pthread_mutex_lock(&d->lock);
        struct pb__disp_post *p = d->posts_head;
        if (p) {
            d->posts_head = p->next;
            if (!d->posts_head)
                d->posts_tail = NULL;
        }
        pthread_mutex_unlock(&d->lock);
        if (p)
            return p;
        usleep(1000);
    }
    return NULL;
}

/* The deliveries the inbox holds now, taken out of it. */
static struct pb_dl *wait_inbox(struct pb_dispatcher *d)
{
    for (int i = 0; i < 5000; i++) {
        pthread_mutex_lock(&d->lock);
        struct pb_dl *list = d->inbox_head;
        d->inbox_head = d->inbox_tail = NULL;
        pthread_mutex_unlock(&d->lock);
        if (list)
            return list;
        usleep(1000);
    }
    return NULL;
}

static void page_in(struct fixture *f)
{
    int64_t wait = 500;
    pb__disp_page_in(f->e.disp, f->o, pb_now_ms(), &wait);
}

PB_TEST(a_short_claim_ends_the_spill)
{
    struct fixture f = {0};
    fixture_up(&f);
    PB_CHECK(pb__disp_spilled(f.o)); /* a new dispatcher resumes what the store holds */
    page_in(&f);
    PB_CHECK(f.o->claiming);
    struct pb__disp_post *p = wait_post(f.e.disp);
    PB_CHECK(p != NULL);
    p->fn(f.e.disp, p, pb_now_ms());
    PB_CHECK(!f.o->claiming);
    PB_CHECK(!pb__disp_spilled(f.o));
    fixture_down(&f);
}

PB_TEST(a_delivery_made_unleased_during_a_claim_is_claimed_later)
{
    struct fixture f = {0};
    fixture_up(&f);
    struct pb_dispatcher *d = f.e.disp;
    page_in(&f); /* the claim runs on the writer: the store is empty */
    struct pb__disp_post *claim = wait_post(d);
    PB_CHECK(claim != NULL);
    /* Committed after the claim ran, while the output is still spilled:
     * made unleased. */
    PB_EQ_INT(pb_dispatcher_emit(d, "p", "{\"n\":1}"), 0);
    struct pb_dl *dl = wait_inbox(d);
    PB_CHECK(dl != NULL);
    PB_CHECK(!dl->leased);
    /* The turn takes the inbox first (as take_inbox does with an unleased
     * delivery), then the claim's short answer. */
    pb__disp_store_has_more(dl->out);
    pb__disp_dl_free(dl);
    claim->fn(d, claim, pb_now_ms());
    PB_CHECK(pb__disp_spilled(f.o)); /* the store still holds one */
    /* The next claim finds it and brings it into memory. */
    page_in(&f);
    claim = wait_post(d);
    PB_CHECK(claim != NULL);
    claim->fn(d, claim, pb_now_ms());
    PB_EQ_INT(f.o->inmem, 1);
    PB_CHECK(!pb__disp_spilled(f.o));
    fixture_down(&f);
}

PB_TEST(a_release_after_a_claim_keeps_the_spill)
{
    struct fixture f = {0};
    fixture_up(&f);
    struct pb_dispatcher *d = f.e.disp;
    page_in(&f);
    struct pb__disp_post *claim = wait_post(d);
    PB_CHECK(claim != NULL);
    /* A delivery of this output is released (no room): it is left in the
     * store after the claim ran. */
    f.o->inmem++;
    struct pb_dl *held = calloc(1, sizeof(*held));
    held->out = f.o;
    held->id = 0; /* not leased: nothing to release in the store */
    pb__disp_release_later(d, held);
    f.o->inmem--;
    claim->fn(d, claim, pb_now_ms());
    PB_CHECK(pb__disp_spilled(f.o));
    fixture_down(&f);
}

int main(void)
{
    return pb_test_main();
}
