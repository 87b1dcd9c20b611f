/* tail_api.c - GET /api/tail: the live tail as server-sent events.
 *
 * The stream comes in windows: each request is answered with the events
 * after its cursor (`after`, or the Last-Event-ID header) as soon as some
 * arrive (gathered for COALESCE_MS), or with none once `wait` has passed,
 * and the client asks again from the cursor the answer ends with. Each
 * answer is text/event-stream (`retry:`, then `id:`/`event:`/`data:` per
 * event, then a `cursor` event), so an EventSource reconnects on its own;
 * the dashboard reads it with fetch, which can send the bearer token.
 *
 * Threads: the request arrives on an admin worker, which answers at once
 * when there is something to say, or parks it. The tail server thread
 * (pb-tail) answers parked requests: it sleeps on a condition variable
 * until its earliest deadline or until the ring tells it of a push
 * (pb_tail_arm: one notification per arm, from the pushing thread). At
 * most MAX_WAITERS requests are parked; stopping answers them all. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "admin/api.h"
#include "admin/views.h"
#include "core/tail.h"
#include "patchbay/pb_log.h"

#define MAX_WAITERS 64
#define WAIT_DEFAULT_MS 15000
#define WAIT_MAX_MS 25000
#define MAX_DEFAULT 100
#define MAX_EVENTS 500
#define COALESCE_MS 150
#define BACKLOG_FIRST 20 /* recent events the first request of a client gets */

struct waiter {
    struct waiter *next;
    struct pb_http_request *r;
    char pipeline[PB_NAME_MAX_STORE];
    char output[PB_NAME_MAX_STORE + PB_SUB_ID_MAX];
    unsigned kinds; /* bit per enum pb_tail_kind; 0: all */
    uint64_t after;
    int max;
    int64_t deadline_us; /* monotonic */
};

struct pb_tail_server {
    struct pb_engine *e;
    pthread_mutex_t lock;
    pthread_cond_t cond; /* on the monotonic clock */
    struct waiter *head;
    size_t n;
    bool pushed;   /* the ring was pushed to since the thread last looked */
    bool stopping; /* no more parking; the thread ends */
    pthread_t thread;
    bool running;
};

static bool keep(void *arg, const struct pb_tail_event *ev)
{
    const struct waiter *w = arg;
    if (w->pipeline[0] && strcmp(w->pipeline, ev->pipeline) != 0)
        return false;
    if (w->output[0]) {
        size_t n = strlen(w->output);
        /* An output takes its sub-outputs' events too. */
        if (strncmp(ev->output, w->output, n) != 0 || (ev->output[n] && ev->output[n] != '/'))
            return false;
    }
    return !w->kinds || (w->kinds >> ev->kind & 1);
}

static json_t *event_json(const struct pb_tail_event *ev)
{
    json_t *o = json_pack("{s:I, s:I, s:s, s:s, s:s}", "seq", (json_int_t)ev->seq, "at",
                          (json_int_t)ev->at, "kind", pb_tail_kind_names[ev->kind], "pipeline",
                          ev->pipeline, "msg_id", ev->msg_id);
    if (!o)
        return NULL;
    if (ev->skipped)
        json_object_set_new(o, "skipped_before", json_integer((json_int_t)ev->skipped));
    if (ev->kind == PB_TAIL_RECEIVED) {
        json_object_set_new(o, "size", json_integer((json_int_t)ev->body_len));
        json_object_set_new(o, "excerpt", pb_admin_text_json(ev->text, ev->text_len));
        json_object_set_new(o, "truncated", json_boolean(ev->text_len < ev->body_len));
        return o;
    }
    json_object_set_new(o, "output", json_string(ev->output));
    json_object_set_new(o, "delivery_id", json_integer(ev->delivery_id));
    json_object_set_new(o, "attempt", json_integer(ev->attempt));
    json_object_set_new(o, "status", ev->status ? json_integer(ev->status) : json_null());
    json_object_set_new(o, "latency_ms", json_integer(ev->latency_ms));
    if (ev->text_len)
        json_object_set_new(o, "error", pb_admin_text_json(ev->text, ev->text_len));
    return o;
}

struct buf {
    char *p;
    size_t len, cap;
    bool oom;
};

static void put(struct buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 4096) + n;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void puts_(struct buf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* Read w's events now; answer and return true when there is something to
 * say (events, events lost) or force. */
static bool try_answer(struct pb_tail_server *t, struct waiter *w, bool force)
{
    struct pb_tail_event *evs = malloc((size_t)w->max * sizeof(*evs));
    if (!evs) {
        pb_http_respond_json(w->r, 503, "{\"error\":\"out of memory\"}");
        return true;
    }
    uint64_t next = w->after, lost = 0;
    size_t n = pb_tail_read(t->e->tail, w->after, keep, w, evs, (size_t)w->max, &next, &lost);
    if (n == 0 && lost == 0 && !force) {
        /* Nothing for this client yet: what it passed over is not looked
         * at again. */
        w->after = next;
        free(evs);
        return false;
    }
    struct buf b = {0};
    char line[96];
    puts_(&b, "retry: 1000\n\n");
    if (lost) {
        snprintf(line, sizeof(line), "event: gap\ndata: {\"lost\":%llu}\n\n",
                 (unsigned long long)lost);
        puts_(&b, line);
    }
    for (size_t i = 0; i < n; i++) {
        json_t *o = event_json(&evs[i]);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text) {
            b.oom = true;
            break;
        }
        snprintf(line, sizeof(line), "id: %llu\nevent: %s\ndata: ", (unsigned long long)evs[i].seq,
                 pb_tail_kind_names[evs[i].kind]);
        puts_(&b, line);
        puts_(&b, text); /* compact JSON: one line */
        puts_(&b, "\n\n");
        free(text);
    }
    /* Where to go on from (past events this client filters out too). */
    snprintf(line, sizeof(line), "id: %llu\nevent: cursor\ndata: {\"next\":%llu}\n\n",
             (unsigned long long)next, (unsigned long long)next);
    puts_(&b, line);
    free(evs);
    struct pb_http_header h[] = {{"Cache-Control", "no-store"}};
    if (b.oom)
        pb_http_respond_json(w->r, 503, "{\"error\":\"out of memory\"}");
    else
        pb_http_respond(w->r, 200, "text/event-stream; charset=utf-8", b.p, b.len, h, 1);
    free(b.p);
    return true;
}

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void notify_cb(void *arg)
{
    struct pb_tail_server *t = arg;
    pthread_mutex_lock(&t->lock);
    t->pushed = true;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
}

static void *tail_main(void *arg)
{
    struct pb_tail_server *t = arg;
    pthread_mutex_lock(&t->lock);
    while (!t->stopping) {
        if (!t->head) {
            pthread_cond_wait(&t->cond, &t->lock);
            continue;
        }
        int64_t now = mono_us(), first = INT64_MAX;
        for (struct waiter *w = t->head; w; w = w->next)
            if (w->deadline_us < first)
                first = w->deadline_us;
        if (!t->pushed && first > now) {
            pb_tail_arm(t->e->tail);
            /* A push between a waiter's last read and the arm told no one. */
            uint64_t head = pb_tail_head(t->e->tail);
            bool behind = false;
            for (struct waiter *w = t->head; w && !behind; w = w->next)
                behind = w->after < head;
            if (!behind) {
                struct timespec ts = {.tv_sec = first / 1000000, .tv_nsec = first % 1000000 * 1000};
                pthread_cond_timedwait(&t->cond, &t->lock, &ts);
                continue;
            }
            t->pushed = true;
        }
        bool pushed = t->pushed;
        t->pushed = false;
        /* Take every waiter out, answer outside the lock, put back those
         * with nothing to say yet. */
        struct waiter *list = t->head, *keep_list = NULL;
        t->head = NULL;
        t->n = 0;
        pthread_mutex_unlock(&t->lock);
        if (pushed) {
            struct timespec ts = {0, COALESCE_MS * 1000000L};
            nanosleep(&ts, NULL); /* let a burst gather into one answer */
        }
        now = mono_us();
        size_t kept = 0;
        for (struct waiter *w = list, *next; w; w = next) {
            next = w->next;
            if (try_answer(t, w, now >= w->deadline_us)) {
                free(w);
            } else {
                w->next = keep_list;
                keep_list = w;
                kept++;
            }
        }
        pthread_mutex_lock(&t->lock);
        /* Parked meanwhile: they stay too. */
        if (keep_list) {
            struct waiter *tail = keep_list;
            while (tail->next)
                tail = tail->next;
            tail->next = t->head;
            t->head = keep_list;
            t->n += kept;
        }
    }
    /* Stopping: everyone gets what there is. */
    struct waiter *list = t->head;
    t->head = NULL;
    t->n = 0;
    pthread_mutex_unlock(&t->lock);
    for (struct waiter *w = list, *next; w; w = next) {
        next = w->next;
        try_answer(t, w, true);
        free(w);
    }
    return NULL;
}

struct pb_tail_server *pb_admin_tail_create(struct pb_engine *e, struct pb_err *err)
{
    struct pb_tail_server *t = calloc(1, sizeof(*t));
    pthread_condattr_t ca;
    if (!t) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    t->e = e;
    if (pthread_mutex_init(&t->lock, NULL) != 0 || pthread_condattr_init(&ca) != 0) {
        free(t);
        pb_err_set(err, PB_ENOMEM, "cannot create the live tail's lock");
        return NULL;
    }
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&t->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0) {
        pthread_mutex_destroy(&t->lock);
        free(t);
        pb_err_set(err, PB_ENOMEM, "cannot create the live tail's condition");
        return NULL;
    }
    pb_tail_set_notify(e->tail, notify_cb, t);
    if (pthread_create(&t->thread, NULL, tail_main, t) != 0) {
        pthread_cond_destroy(&t->cond);
        pthread_mutex_destroy(&t->lock);
        free(t);
        pb_err_set(err, PB_ENOMEM, "cannot start the live tail's thread");
        return NULL;
    }
    pthread_setname_np(t->thread, "pb-tail");
    t->running = true;
    return t;
}

void pb_admin_tail_stop(struct pb_tail_server *t)
{
    if (!t || !t->running)
        return;
    pthread_mutex_lock(&t->lock);
    t->stopping = true;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
    pthread_join(t->thread, NULL);
    t->running = false;
}

void pb_admin_tail_destroy(struct pb_tail_server *t)
{
    if (!t)
        return;
    pb_admin_tail_stop(t);
    pthread_cond_destroy(&t->cond);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

/* "received,dead" into a mask; -1 for an unknown kind. */
static int parse_kinds(const char *s, unsigned *mask)
{
    *mask = 0;
    while (*s) {
        size_t n = strcspn(s, ",");
        int k;
        for (k = 0; k < PB_TAIL_KIND_COUNT; k++)
            if (strlen(pb_tail_kind_names[k]) == n && strncmp(pb_tail_kind_names[k], s, n) == 0)
                break;
        if (k == PB_TAIL_KIND_COUNT)
            return -1;
        *mask |= 1u << k;
        s += n;
        if (*s == ',')
            s++;
    }
    return 0;
}

bool pb_admin_tail(struct pb_engine *e, struct pb_http_request *c, struct pb_api_resp *r)
{
    struct pb_admin *adm = e->admin;
    struct pb_tail_server *t = adm ? adm->tail : NULL;
    if (strcmp(pb_http_request_method(c), "GET") != 0) {
        pb_admin_error(r, 405, "method not allowed");
        return false;
    }
    struct waiter *w = calloc(1, sizeof(*w));
    if (!w || !t) {
        free(w);
        pb_admin_error(r, 503, "the live tail is not available");
        return false;
    }
    const char *a;
    int64_t v, wait_ms = WAIT_DEFAULT_MS;
    w->max = MAX_DEFAULT;
    w->r = c;
    bool have_cursor = false;
    const char *bad = NULL;
    if ((a = pb_admin_arg(c, "pipeline"))) {
        if (!pb_engine_pipeline(e, a))
            bad = "no such pipeline";
        snprintf(w->pipeline, sizeof(w->pipeline), "%s", a);
    }
    if ((a = pb_admin_arg(c, "output")))
        snprintf(w->output, sizeof(w->output), "%s", a);
    if ((a = pb_admin_arg(c, "kind")) && parse_kinds(a, &w->kinds) != 0)
        bad = "kind: a comma-separated list of received, delivered, retry, dead, filtered";
    if ((a = pb_admin_arg(c, "wait"))) {
        if (pb_admin_parse_int(a, 0, WAIT_MAX_MS, &wait_ms) != 0)
            bad = "wait must be 0..25000 (milliseconds)";
    }
    if ((a = pb_admin_arg(c, "max"))) {
        if (pb_admin_parse_int(a, 1, MAX_EVENTS, &v) != 0)
            bad = "max must be 1..500";
        else
            w->max = (int)v;
    }
    a = pb_admin_arg(c, "after");
    if (!a)
        a = pb_http_request_header(c, "Last-Event-ID");
    if (a && *a) {
        if (pb_admin_parse_int(a, 0, INT64_MAX / 2, &v) != 0)
            bad = "after must be the cursor of an earlier answer";
        else
            w->after = (uint64_t)v;
        have_cursor = true;
    }
    if (bad) {
        free(w);
        pb_admin_error(r, 400, bad);
        return false;
    }
    int64_t now = pb_now_ms();
    pb_tail_watch(e->tail, now);
    if (!have_cursor) {
        /* A new client: the last few events, and its cursor, at once. */
        uint64_t head = pb_tail_head(e->tail);
        w->after = head > BACKLOG_FIRST ? head - BACKLOG_FIRST : 0;
        try_answer(t, w, true);
        free(w);
        return true;
    }
    if (try_answer(t, w, wait_ms == 0)) {
        free(w);
        return true;
    }
    w->deadline_us = mono_us() + wait_ms * 1000;
    pthread_mutex_lock(&t->lock);
    if (t->stopping || t->n >= MAX_WAITERS) {
        bool stopping = t->stopping;
        pthread_mutex_unlock(&t->lock);
        if (stopping) {
            try_answer(t, w, true);
        } else {
            struct pb_http_header h = {"Retry-After", "1"};
            const char *msg = "{\"error\":\"too many live tail clients\"}";
            pb_http_respond(c, 503, NULL, msg, strlen(msg), &h, 1);
        }
        free(w);
        return true;
    }
    w->next = t->head;
    t->head = w;
    t->n++;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
    return true;
}
