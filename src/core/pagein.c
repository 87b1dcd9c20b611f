/* pagein.c - outputs whose deliveries do not all fit in memory.
 *
 * An output holds at most limits.in_memory deliveries. Past that it is
 * "spilled": what is made for it meanwhile is made unleased and stays in
 * the store only, and the dispatcher claims pending deliveries back, a
 * batch at a time in id order, as room frees up (CLAIM: unleased ones, and
 * those an earlier process held, leased to this one). Claims run on the
 * store's writer; their rows come back here by a post. A delivery the
 * dispatcher cannot keep is released (its lease dropped) so a later claim
 * finds it.
 *
 * In a cluster, the outputs of an ordered pipeline stay spilled: whichever
 * node takes a message in, its deliveries wait unleased in the store, and
 * only the node holding the pipeline's order hold claims them, in id order,
 * so each key has one owner at a time and goes out in the order taken in.
 *
 * The spill ends when a claim comes back short of its limit: the store has
 * nothing more. That holds only if nothing was left in the store after the
 * claim ran, so every way of leaving a delivery there (made unleased,
 * released, lost on the way) bumps the output's store_gen, and a claim ends
 * the spill only when store_gen did not move since it was submitted. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dispatch_int.h"
#include "patchbay/pb_log.h"

#define LOAD_BATCH_MAX 2048
#define LOAD_BATCH_MIN 64

struct claim_op {
    struct pb__disp_post post;
    struct pb_op op;
    struct pb_dispatcher *d;
    struct pb_output *o;
    struct pb_dl *head, *tail; /* made from the rows on the writer thread */
    size_t limit;
    uint64_t gen; /* o->store_gen when submitted */
};

void pb__disp_store_has_more(struct pb_output *out)
{
    atomic_fetch_add(&out->store_gen, 1);
    atomic_store(&out->spilled, true);
}

/* Claimed by the holder of its pipeline's order hold only. */
static bool pinned(const struct pb_output *out)
{
    return out->pl && out->pl->order_hold[0];
}

bool pb__disp_spilled(const struct pb_output *out)
{
    return pinned(out) || atomic_load(&out->spilled);
}

/* Writer thread: one claimed row becomes a delivery in memory (not yet
 * admitted). */
static int claim_row_cb(void *arg, const struct pb_pending *row)
{
    struct claim_op *co = arg;
    struct pb_dl *dl = calloc(1, sizeof(*dl));
    struct pb_msg *m = dl ? pb_msg_create(row->body, row->len, row->content_type) : NULL;
    if (!m) {
        free(dl);
        return 1; /* stop; the rest stays in the store, unleased */
    }
    m->okey_known = row->key_known;
    if ((row->key && !(m->okey = strdup(row->key))) ||
        pb_msg_set_meta(m, row->meta, row->meta_len) != 0) {
        pb_msg_unref(m);
        free(dl);
        return 1;
    }
    m->seq = row->msg_seq;
    m->received_at = row->received_at;
    m->damaged = row->body_damaged;
    snprintf(m->id, sizeof(m->id), "%s", row->msg_id);
    dl->id = row->delivery_id;
    dl->msg = m;
    dl->out = co->o;
    dl->disp = co->d;
    dl->attempts = row->attempts;
    dl->si.next_at = row->next_at;
    dl->leased = true;
    if (co->tail)
        co->tail->next = dl;
    else
        co->head = dl;
    co->tail = dl;
    return 0;
}

static void claim_complete(struct pb_dispatcher *d, struct pb__disp_post *p, int64_t now)
{
    struct claim_op *co = (struct claim_op *)p;
    struct pb_output *o = co->o;
    o->claiming = false;
    bool ok = co->op.status == 0 && now >= 0 && !atomic_load(&d->aborting);
    if (co->op.status != 0 && now >= 0) {
        PB_ERROR("claiming pending deliveries failed pipeline=%s output=%s error=%s", o->pl->name,
                 o->name, pb_strerror(co->op.status));
        o->load_after = now + 1000;
    }
    size_t n = 0;
    for (struct pb_dl *dl = co->head, *next; dl; dl = next) {
        next = dl->next;
        dl->next = NULL;
        if (ok) {
            pb__disp_admit(d, dl, now);
            n++;
        } else {
            pb__disp_dl_free(dl); /* the claim did not commit, or the dispatcher is going */
        }
    }
    /* Short: the store had nothing more when the claim ran, and nothing was
     * left there since. */
    if (ok && n < co->limit && atomic_load(&o->store_gen) == co->gen && !pinned(o))
        atomic_store(&o->spilled, false);
    free(co);
}

/* Writer or syncer thread. */
static void claim_done_cb(struct pb_op *op, void *arg)
{
    struct claim_op *co = arg;
    (void)op;
    co->post.fn = claim_complete;
    pb__disp_post(co->d, &co->post);
}

void pb__disp_page_in(struct pb_dispatcher *d, struct pb_output *o, int64_t now, int64_t *wait)
{
    size_t cap = (size_t)d->e->cfg->limits.in_memory;
    uint64_t gen = atomic_load(&o->store_gen);
    if (gen != o->gen_seen) {
        o->gen_seen = gen;
        atomic_store(&o->spilled, true);
    }
    if (!atomic_load(&o->spilled) || o->claiming || o->inmem >= cap)
        return;
    if (pinned(o) && !pb_store_holds(d->e->store, o->pl->order_hold))
        return; /* another node's keys; claimed here once this node holds them */
    if (now < o->load_after) {
        if (o->load_after - now < *wait)
            *wait = o->load_after - now;
        return;
    }
    size_t want = cap - o->inmem;
    if (want > LOAD_BATCH_MAX)
        want = LOAD_BATCH_MAX;
    if (want < LOAD_BATCH_MIN && o->inmem > 0)
        return; /* wait for more room: page in in batches */
    struct claim_op *co = calloc(1, sizeof(*co));
    if (!co) {
        o->load_after = now + 1000;
        return;
    }
    co->d = d;
    co->o = o;
    co->limit = want;
    co->gen = gen;
    co->op.kind = PB_OP_CLAIM;
    co->op.done_cb = claim_done_cb;
    co->op.arg = co;
    co->op.u.claim = (struct pb_op_claim){
        .pipeline = o->pl->name,
        .output = o->is_virtual ? o->parent->name : o->name,
        .sub = o->sub,
        .limit = want,
        .lease = d->lease,
        .cb = claim_row_cb,
        .arg = co,
    };
    if (pb_store_submit(d->e->store, &co->op) != 0) {
        free(co);
        o->load_after = now + 1000;
        return;
    }
    o->claiming = true;
}

void pb__disp_release_later(struct pb_dispatcher *d, struct pb_dl *dl)
{
    pb__disp_store_has_more(dl->out);
    if (dl->leased) {
        if (d->nrelease == d->releasecap) {
            size_t cap = d->releasecap ? d->releasecap * 2 : 256;
            int64_t *r = realloc(d->release, cap * sizeof(*r));
            if (r) {
                d->release = r;
                d->releasecap = cap;
            }
        }
        if (d->nrelease < d->releasecap)
            d->release[d->nrelease++] = dl->id;
        /* else: it stays leased to this process until the next start */
    }
    pb__disp_dl_free(dl);
}

struct release_op {
    struct pb_op op;
    int64_t ids[];
};

static void release_done_cb(struct pb_op *op, void *arg)
{
    (void)op;
    free(arg);
}

static int submit_release(struct pb_dispatcher *d, const int64_t *ids, size_t n)
{
    struct release_op *r = malloc(sizeof(*r) + n * sizeof(int64_t));
    if (!r)
        return PB_ENOMEM;
    memcpy(r->ids, ids, n * sizeof(int64_t));
    r->op = (struct pb_op){.kind = PB_OP_RELEASE, .done_cb = release_done_cb, .arg = r};
    r->op.u.release = (struct pb_op_release){.n = n, .ids = r->ids, .lease = d->lease};
    int rc = pb_store_submit(d->e->store, &r->op);
    if (rc)
        free(r);
    return rc;
}

/* The turn's releases in one op, submitted before the turn's claims so
 * the writer runs it first and a claim finds what it freed. */
void pb__disp_flush_releases(struct pb_dispatcher *d)
{
    if (d->nrelease)
        (void)submit_release(d, d->release, d->nrelease);
    d->nrelease = 0;
}

void pb__disp_lost(struct pb_dispatcher *d, struct pb_output *out, int64_t id)
{
    pb__disp_store_has_more(out);
    if (d->loop)
        pb_loop_wake(d->loop);
    if (!id || submit_release(d, &id, 1) == 0)
        return;
    PB_ERROR("out of memory: delivery_id=%lld stays held until the next start", (long long)id);
}
