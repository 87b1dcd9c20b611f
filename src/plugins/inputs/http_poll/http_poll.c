/* http_poll.c - the `http_poll` input: a REST or GraphQL API polled on an
 * interval or a cron schedule, page by page, with a persisted cursor.
 *
 *   http_poll:
 *     url: https://shop.example/api/orders
 *     interval: 1m
 *     items: '.orders[]'
 *     pagination: { type: cursor, cursor: '.next_page_token', param: page_token }
 *     cursor: { value: '.updated_at', param: updated_since, lookback: 5m }
 *     dedupe_key: '"\(.id)@\(.updated_at)"'
 *
 * A run reads pages until an empty page, a missing token or URL, or
 * max_pages. Each page's records are submitted with the checkpoint they
 * move to, in one commit: the run's position (the next page) while it is
 * under way, and the incremental cursor (the largest `cursor.value` seen)
 * once it has ended. So a crash resumes at the page after the last one
 * committed, and a new run asks for what changed since the cursor, moved
 * back by `lookback`. A page seen again (after a crash, or in the lookback
 * window) creates nothing new: each record carries `dedupe_key` (by default
 * a digest of the record) as its idempotency key. A page token, or next URL,
 * repeated within a run, or a page identical to the previous one, ends the
 * run with an error instead of looping; the cursor then stays where it was.
 *
 * auth and tls are the blocks every HTTP plugin shares (pb_http_auth.h).
 * With oauth2 a page first waits for a token; a 401 drops the token once
 * (for every user of it) and the same page is asked again with a new one.
 * When the token endpoint fails the run stops with that reason (the input
 * shows it, /ready lists the endpoint) and goes on from the same page when
 * the endpoint is tried again; under --once the run ends with it.
 *
 * Threads: a loop and thread of its own (PB_INPUT_OWN_THREAD); the HTTP
 * client (curl multi, through the outbound guard) lives on that loop, and
 * every callback here runs on it. One poller per pipeline, on one node
 * (PB_INPUT_SINGLETON). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_poll_int.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_time.h"

#define MAY_FETCH_RETRY_MS 250 /* a singleton not sure of its hold looks again */

/* ---- helpers ------------------------------------------------------------------------ */

static void seen_clear(struct in_poll *p)
{
    for (size_t i = 0; i < p->nseen; i++)
        free(p->seen[i]);
    free(p->seen);
    p->seen = NULL;
    p->nseen = 0;
}

/* true when s was followed already in this run; remembers it otherwise. */
static bool seen_before(struct in_poll *p, const char *s)
{
    for (size_t i = 0; i < p->nseen; i++)
        if (strcmp(p->seen[i], s) == 0)
            return true;
    char **n = realloc(p->seen, (p->nseen + 1) * sizeof(*n));
    if (n) {
        p->seen = n;
        if ((n[p->nseen] = strdup(s)))
            p->nseen++;
    }
    return false;
}

static void run_reset(struct in_poll *p)
{
    p->in_run = false;
    p->page_no = 0;
    free(p->token);
    free(p->next_url);
    p->token = p->next_url = NULL;
    jv_free(p->sent);
    jv_free(p->run_max);
    p->sent = jv_null();
    p->run_max = jv_null();
    p->have_hash = false;
    seen_clear(p);
}

static jv jv_max(jv a, jv b)
{
    if (jv_get_kind(a) == JV_KIND_NULL) {
        jv_free(a);
        return b;
    }
    if (jv_get_kind(b) == JV_KIND_NULL) {
        jv_free(b);
        return a;
    }
    if (jv_cmp(jv_copy(a), jv_copy(b)) >= 0) {
        jv_free(b);
        return a;
    }
    jv_free(a);
    return b;
}

static void set_position(struct in_poll *p)
{
    char buf[300];
    char *c = poll_scalar_text(p->committed);
    snprintf(buf, sizeof(buf), "cursor=%s%s", c ? c : "-", p->in_run ? " (run under way)" : "");
    free(c);
    pb_input_set_position(p->in, buf);
}

/* ---- scheduling ----------------------------------------------------------------------- */

static void request_page(struct in_poll *p);

/* The wait until the next run starts. */
static int64_t next_run_in(struct in_poll *p, int64_t now)
{
    if (p->cron) {
        int64_t at = poll_cron_next(&p->cr, now);
        return at < 0 ? 3600 * 1000 : at - now;
    }
    int64_t at = p->run_started_at + p->interval_ms;
    return at > now ? at - now : 0;
}

/* The run is over (well or not): wait for the next. */
static void run_over(struct in_poll *p, const char *error)
{
    int64_t took = pb_now_ms() - p->run_started_at;
    if (error) {
        char safe[600];
        PB_ERROR("http_poll: run ended with an error pipeline=%s pages=%lld error=\"%s\" (the "
                 "cursor stays where it was)",
                 p->pipeline, (long long)p->page_no, pb_log_value(error, safe, sizeof(safe)));
        pb_input_set_state(p->in, PB_INPUT_RECONNECTING, error);
    } else {
        PB_INFO("http_poll: run done pipeline=%s pages=%lld took_ms=%lld", p->pipeline,
                (long long)p->page_no, (long long)took);
        pb_input_set_state(p->in, PB_INPUT_CONNECTED, NULL);
    }
    run_reset(p);
    set_position(p);
    p->runs++;
    if (p->once) {
        pb_input_finished(p->in);
        return;
    }
    if (!p->stopped)
        pb_loop_timer_start(p->timer, next_run_in(p, pb_now_ms()));
}

static void run_begin(struct in_poll *p)
{
    run_reset(p);
    p->in_run = true;
    p->run_started_at = pb_now_ms();
    p->page = p->pagination.start;
    p->offset = p->pagination.start;
    if (p->cursor.value) {
        jv from = jv_copy(p->committed);
        if (jv_get_kind(from) == JV_KIND_NULL && p->cursor.initial) {
            jv_free(from);
            from = jv_string(p->cursor.initial);
        }
        jv_free(p->sent);
        p->sent = poll_cursor_back(from, p->cursor.lookback_ms);
    }
    request_page(p);
}

static void timer_cb(struct pb_loop_timer *t, void *arg)
{
    struct in_poll *p = arg;
    (void)t;
    if (p->stopped || p->busy)
        return;
    if (p->paused) {
        p->want_page = true;
        return;
    }
    /* Not while another node of the cluster may be polling: a moment later
     * (the core pauses the input if it lasts). */
    if (!pb_input_may_fetch(p->in)) {
        pb_loop_timer_start(p->timer, MAY_FETCH_RETRY_MS);
        return;
    }
    if (p->in_run)
        request_page(p); /* a page to fetch again (after a failure) */
    else
        run_begin(p);
}

/* Try the same page again after a backoff. */
static void retry_later(struct in_poll *p, const char *error)
{
    char safe[600];
    p->backoff_ms = p->backoff_ms ? p->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (p->backoff_ms > BACKOFF_MAX_MS)
        p->backoff_ms = BACKOFF_MAX_MS;
    int64_t wait = (int64_t)(pb_rand64() % (uint64_t)p->backoff_ms) / 2 + p->backoff_ms / 2;
    PB_WARN("http_poll: page failed, trying again pipeline=%s page=%lld retry_in_ms=%lld "
            "error=\"%s\"",
            p->pipeline, (long long)p->page_no + 1, (long long)wait,
            pb_log_value(error, safe, sizeof(safe)));
    pb_input_set_state(p->in, PB_INPUT_RECONNECTING, error);
    if (!p->stopped)
        pb_loop_timer_start(p->timer, wait);
}

/* ---- a page ---------------------------------------------------------------------------- */

/* url with name=value added (value taken); url itself when that fails. */
static char *add_param(char *url, const char *name, jv value)
{
    char *v = poll_scalar_text(value);
    jv_free(value);
    char *out = v ? poll_url_add(url, name, v) : NULL;
    free(v);
    if (!out)
        return url;
    free(url);
    return out;
}

static char *add_int(char *url, const char *name, int64_t n)
{
    return add_param(url, name, jv_number((double)n));
}

static void done_cb(void *arg, const struct pb_http_resp *resp);

/* The GraphQL request body for the next page. */
static char *graphql_body(struct in_poll *p, size_t *len)
{
    jv out[1];
    size_t n = 0;
    struct pb_err err = {0};
    char *s = NULL;
    if (pb_jq_run(p->vars_q, jv_null(), out, 1, &n, &err) != 0 || n == 0 ||
        jv_get_kind(out[0]) != JV_KIND_OBJECT) {
        if (n)
            jv_free(out[0]);
        return NULL;
    }
    jv vars = out[0];
    if (p->token)
        vars = jv_object_set(vars, jv_string(p->graphql.variable), jv_string(p->token));
    if (p->cursor.value && jv_get_kind(p->sent) != JV_KIND_NULL)
        vars = jv_object_set(vars, jv_string(p->cursor.param), jv_copy(p->sent));
    jv req = jv_object_set(jv_object(), jv_string("query"), jv_string(p->graphql.query));
    req = jv_object_set(req, jv_string("variables"), vars);
    if (pb_jq_dump(req, &s, len, &err) != 0)
        return NULL;
    return s;
}

struct page_req {
    struct in_poll *p;
    char *url;
    char *body;
    size_t blen;
    struct pb_http_auth_waiter w;
    uint64_t gen;   /* the token sent */
    bool refreshed; /* a 401 got its new token already */
};

static void page_req_free(struct page_req *r)
{
    free(r->url);
    free(r->body);
    free(r);
}

static void page_send(struct page_req *r);

/* No token for the page: the run stops with why; it goes on from this page
 * when the token endpoint is tried again (retry_in), or ends under --once. */
static void token_failed(struct in_poll *p, const char *why, int64_t retry_in)
{
    char safe[600];
    if (p->once) {
        run_over(p, why);
        return;
    }
    int64_t wait = retry_in > BACKOFF_MIN_MS ? retry_in : BACKOFF_MIN_MS;
    PB_ERROR("http_poll: run stopped, no OAuth2 token pipeline=%s page=%lld retry_in_ms=%lld "
             "error=\"%s\"",
             p->pipeline, (long long)p->page_no + 1, (long long)wait,
             pb_log_value(why, safe, sizeof(safe)));
    pb_input_set_state(p->in, PB_INPUT_RECONNECTING, why);
    if (!p->stopped)
        pb_loop_timer_start(p->timer, wait);
}

static void auth_cb(void *arg, int status, int64_t retry_in_ms)
{
    struct page_req *r = arg;
    struct in_poll *p = r->p;
    p->waiting = NULL;
    p->busy = false;
    if (p->stopped) {
        page_req_free(r);
        return;
    }
    if (status == 0) {
        page_send(r);
        return;
    }
    page_req_free(r);
    if (status == PB_ESHUTDOWN) {
        retry_later(p, "no OAuth2 token: shutting down");
        return;
    }
    char why[256], reason[320];
    pb_http_auth_error(p->a, why, sizeof(why));
    snprintf(reason, sizeof(reason), "no OAuth2 token: %s",
             why[0] ? why : "the token endpoint is failing");
    token_failed(p, reason, retry_in_ms);
}

/* Send r with the auth header of now, or wait for a token first. */
static void page_send(struct page_req *r)
{
    struct in_poll *p = r->p;
    struct pb_http_auth_ticket tk; /* large: on the stack, for this call */
    int rc = pb_http_auth_header(p->a, &tk);
    if (rc == PB_EAGAIN) {
        p->waiting = r;
        p->busy = true;
        if (pb_http_auth_wait(p->a, &r->w, p->loop, auth_cb, r) == 0)
            return;
        p->waiting = NULL;
        p->busy = false;
        rc = PB_ESHUTDOWN;
    }
    if (rc != 0) {
        page_req_free(r);
        retry_later(p, "no OAuth2 token: shutting down");
        return;
    }
    r->gen = tk.gen;
    struct pb_http_header hdrs[MAX_HEADERS + 4];
    size_t n = 0;
    hdrs[n++] = (struct pb_http_header){"User-Agent", "patchbay/" PB_VERSION};
    hdrs[n++] = (struct pb_http_header){"Accept", "application/json"};
    if (r->body)
        hdrs[n++] = (struct pb_http_header){"Content-Type", "application/json"};
    if (tk.name)
        hdrs[n++] = (struct pb_http_header){tk.name, tk.value};
    for (size_t i = 0; i < p->nstatic; i++)
        hdrs[n++] = p->statics[i];
    struct pb_http_req req = {
        .method = r->body ? "POST" : poll_methods[p->method],
        .url = r->url,
        .headers = hdrs,
        .nheaders = n,
        .body = r->body,
        .len = r->blen,
        .timeout_ms = p->timeout_ms,
        .connect_timeout_ms = p->timeout_ms,
        .max_response = (size_t)p->max_response,
        .allow = p->allow,
        .tls = p->t,
    };
    rc = pb_http_client_send(p->http, &req, done_cb, r);
    if (rc != 0) {
        char why[200];
        snprintf(why, sizeof(why), "the request could not start: %s", pb_strerror(rc));
        page_req_free(r);
        retry_later(p, why);
        return;
    }
    p->busy = true;
}

static void request_page(struct in_poll *p)
{
    struct page_req *r = calloc(1, sizeof(*r));
    size_t blen = 0;
    if (!r)
        goto oom;
    r->p = p;
    bool first = p->page_no == 0;
    if (p->next_url) {
        r->url = strdup(p->next_url);
    } else {
        r->url = strdup(p->url);
        if (r->url && p->cursor.value && !p->graphql.query &&
            jv_get_kind(p->sent) != JV_KIND_NULL && (first || p->pagination.type != PAGE_LINK))
            r->url = add_param(r->url, p->cursor.param, jv_copy(p->sent));
        switch (r->url ? p->pagination.type : PAGE_NONE) {
        case PAGE_PAGE:
            r->url = add_int(r->url, p->pagination.param, p->page);
            break;
        case PAGE_OFFSET:
            r->url = add_int(r->url, p->pagination.param, p->offset);
            break;
        case PAGE_CURSOR:
            if (p->token)
                r->url = add_param(r->url, p->pagination.param, jv_string(p->token));
            break;
        default:
            break;
        }
        if (r->url && p->pagination.size_param && p->pagination.size)
            r->url = add_int(r->url, p->pagination.size_param, p->pagination.size);
    }
    if (!r->url)
        goto oom;
    if (p->graphql.query) {
        r->body = graphql_body(p, &blen);
        if (!r->body) {
            free(r->url);
            free(r);
            run_over(p, "graphql.variables must make an object");
            return;
        }
    } else if (p->body) {
        r->body = strdup(p->body);
        blen = strlen(p->body);
        if (!r->body)
            goto oom;
    }
    r->blen = blen;
    page_send(r);
    return;
oom:
    if (r) {
        free(r->url);
        free(r);
    }
    retry_later(p, "out of memory");
}

/* One page's records and checkpoint on their way to the store. */
struct batch {
    struct in_poll *p;
    size_t n, done;
    struct pb_item *items;
    char **bodies, **keys, **metas;
    char *state;
    bool run_ends;
    char *error; /* the run ends with this error once committed */
    /* The page's digest, the one the next page is compared with once this
     * one is committed (a page fetched again after a failed commit is not
     * "identical to the one before"). */
    unsigned char md[SHA256_DIGEST_LENGTH];
};

static void batch_free(struct batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        free(b->bodies[i]);
        free(b->keys[i]);
        free(b->metas[i]);
    }
    free(b->items);
    free(b->bodies);
    free(b->keys);
    free(b->metas);
    free(b->state);
    free(b->error);
    free(b);
}

static void submit_next(struct batch *b);

static void submit_cb(void *arg, int status, const struct pb_item_result *res, size_t n)
{
    struct batch *b = arg;
    struct in_poll *p = b->p;
    (void)res;
    if (status != 0) {
        p->busy = false;
        char why[160];
        snprintf(why, sizeof(why), "the page was not committed: %s", pb_strerror(status));
        batch_free(b);
        if (!p->stopped)
            retry_later(p, why);
        return;
    }
    b->done += n;
    if (b->done < b->n) {
        submit_next(b);
        return;
    }
    p->busy = false;
    p->backoff_ms = 0;
    p->records += b->n;
    p->page_no++;
    memcpy(p->last_hash, b->md, sizeof(b->md));
    p->have_hash = true;
    if (p->stopped) {
        batch_free(b);
        return;
    }
    pb_input_set_state(p->in, PB_INPUT_CONNECTED, NULL);
    if (b->run_ends || b->error) {
        if (!b->error)
            p->committed = jv_max(p->committed, jv_copy(p->run_max));
        char *e = b->error;
        b->error = NULL;
        batch_free(b);
        run_over(p, e);
        free(e);
        return;
    }
    batch_free(b);
    set_position(p);
    if (p->paused)
        p->want_page = true;
    else if (!pb_input_may_fetch(p->in))
        pb_loop_timer_start(p->timer, MAY_FETCH_RETRY_MS); /* the page, then */
    else
        request_page(p);
}

/* Submit the next chunk of b (at most PB_SUBMIT_MAX records); the last one
 * carries the checkpoint. */
static void submit_next(struct batch *b)
{
    struct in_poll *p = b->p;
    size_t left = b->n - b->done;
    size_t take = left > PB_SUBMIT_MAX ? PB_SUBMIT_MAX : left;
    bool last = take == left;
    struct pb_checkpoint cp = {.name = "state", .value = b->state, .len = strlen(b->state)};
    int rc = pb_input_submit(p->in, b->items + b->done, take, last ? &cp : NULL, last ? 1 : 0,
                             submit_cb, b);
    if (rc == 0)
        return;
    p->busy = false;
    batch_free(b);
    if (rc == PB_EFULL) {
        p->want_page = true; /* fetched again on resume */
        return;
    }
    if (rc != PB_ESHUTDOWN)
        retry_later(p, "the page could not be submitted");
}

/* The records of a parsed page into b; their cursor values into run_max. */
static int make_items(struct in_poll *p, jv doc, const char *url, struct batch *b, char *why,
                      size_t wl)
{
    struct pb_err err = {0};
    jv *vals = calloc(PAGE_ITEMS_MAX, sizeof(jv));
    size_t n = 0;
    int rc = 0;
    if (!vals) {
        snprintf(why, wl, "out of memory");
        return PB_ENOMEM;
    }
    rc = pb_jq_run(p->items_q, jv_copy(doc), vals, PAGE_ITEMS_MAX, &n, &err);
    if (rc) {
        snprintf(why, wl, "items: %s", err.msg);
        free(vals);
        return rc;
    }
    b->items = calloc(n ? n : 1, sizeof(*b->items));
    b->bodies = calloc(n ? n : 1, sizeof(char *));
    b->keys = calloc(n ? n : 1, sizeof(char *));
    b->metas = calloc(n ? n : 1, sizeof(char *));
    if (!b->items || !b->bodies || !b->keys || !b->metas) {
        rc = PB_ENOMEM;
        snprintf(why, wl, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        jv v = vals[i];
        vals[i] = jv_invalid();
        if (rc) {
            jv_free(v);
            continue;
        }
        size_t len = 0;
        if (p->value_q) {
            jv cv[1];
            size_t cn = 0;
            if (pb_jq_run(p->value_q, jv_copy(v), cv, 1, &cn, &err) == 0 && cn)
                p->run_max = jv_max(p->run_max, cv[0]);
        }
        char *key = NULL;
        if (p->key_q) {
            jv kv[1];
            size_t kn = 0;
            if (pb_jq_run(p->key_q, jv_copy(v), kv, 1, &kn, &err) != 0 || kn == 0 ||
                !(key = poll_scalar_text(kv[0]))) {
                if (kn)
                    jv_free(kv[0]);
                snprintf(why, wl, "dedupe_key gives no string or number for record %zu%s%s", i,
                         err.msg[0] ? ": " : "", err.msg);
                jv_free(v);
                rc = PB_EJQ;
                continue;
            }
            jv_free(kv[0]);
        }
        if (pb_jq_dump(v, &b->bodies[b->n], &len, &err) != 0) {
            snprintf(why, wl, "record %zu: %s", i, err.msg);
            free(key);
            rc = PB_EFIDELITY;
            continue;
        }
        if (!key || strlen(key) > PB_ITEM_KEY_MAX - 16) {
            /* a digest of the record, or of a key too long to keep as is */
            unsigned char md[SHA256_DIGEST_LENGTH];
            const char *src = key ? key : b->bodies[b->n];
            SHA256((const unsigned char *)src, strlen(src), md);
            free(key);
            key = malloc(2 * SHA256_DIGEST_LENGTH + 8);
            if (key) {
                int o = snprintf(key, 8, "sha256:");
                for (int k = 0; k < SHA256_DIGEST_LENGTH; k++)
                    o += snprintf(key + o, 3, "%02x", md[k]);
            }
        }
        char meta[META_MAX];
        jv m = jv_object_set(jv_object(), jv_string("url"), jv_string(url));
        m = jv_object_set(m, jv_string("page"), jv_number((double)p->page_no + 1));
        char *mt = NULL;
        if (pb_jq_dump(m, &mt, NULL, NULL) == 0) {
            snprintf(meta, sizeof(meta), "%s", mt);
            free(mt);
        } else {
            snprintf(meta, sizeof(meta), "{}");
        }
        b->metas[b->n] = strdup(meta);
        b->keys[b->n] = key;
        if (!key || !b->metas[b->n]) {
            rc = PB_ENOMEM;
            snprintf(why, wl, "out of memory");
        }
        b->items[b->n] = (struct pb_item){.body = b->bodies[b->n],
                                          .len = len,
                                          .meta = b->metas[b->n],
                                          .meta_len = b->metas[b->n] ? strlen(b->metas[b->n]) : 0,
                                          .key = key,
                                          .key_window_ms = p->window_ms};
        b->n++;
    }
    free(vals);
    return rc;
}

/* Where the next page is, from this one; *ends when the run is over. A
 * repeated token or URL is an error (why). */
static int advance(struct in_poll *p, jv doc, const struct pb_http_resp *resp, const char *url,
                   size_t nitems, bool *ends, char *why, size_t wl)
{
    struct pb_err err = {0};
    jv out[1];
    size_t n = 0;
    *ends = nitems == 0;
    if (p->graphql.query && p->has_next_q) {
        bool more = false;
        if (pb_jq_test(p->has_next_q, doc, jv_null(), &more, &err) != 0) {
            snprintf(why, wl, "graphql.has_next: %s", err.msg);
            return PB_EJQ;
        }
        if (!more) {
            *ends = true;
            return 0;
        }
    }
    if (*ends)
        return 0;
    char *next = NULL;
    switch (p->graphql.query ? PAGE_CURSOR : p->pagination.type) {
    case PAGE_NONE:
        *ends = true;
        return 0;
    case PAGE_PAGE:
    case PAGE_OFFSET:
        /* A page shorter than the size asked for is the last one. */
        if (p->pagination.size && (int64_t)nitems < p->pagination.size) {
            *ends = true;
            return 0;
        }
        if (p->pagination.type == PAGE_PAGE)
            p->page++;
        else
            p->offset += (int64_t)nitems;
        return 0;
    case PAGE_CURSOR: {
        if (pb_jq_run(p->token_q, jv_copy(doc), out, 1, &n, &err) != 0) {
            snprintf(why, wl, "pagination cursor: %s", err.msg);
            return PB_EJQ;
        }
        next = n ? poll_scalar_text(out[0]) : NULL;
        if (n)
            jv_free(out[0]);
        if (!next || !*next) {
            free(next);
            if (p->graphql.query) {
                snprintf(why, wl, "has_next is true but the cursor is missing");
                return PB_EPARSE;
            }
            *ends = true;
            return 0;
        }
        if (seen_before(p, next) || (p->token && strcmp(p->token, next) == 0)) {
            snprintf(why, wl, "pagination loop: page token \"%.200s\" repeated in one run", next);
            free(next);
            return PB_EPARSE;
        }
        free(p->token);
        p->token = next;
        return 0;
    }
    case PAGE_LINK:
    case PAGE_NEXT_URL: {
        char link[4096];
        if (p->pagination.type == PAGE_LINK) {
            bool found = false;
            for (size_t i = 0; !found && i < 16; i++) {
                const char *h = pb_http_resp_header(resp, "Link", i);
                if (!h)
                    break;
                found = poll_link_next(h, link, sizeof(link));
            }
            if (!found) {
                *ends = true;
                return 0;
            }
        } else {
            if (pb_jq_run(p->next_q, jv_copy(doc), out, 1, &n, &err) != 0) {
                snprintf(why, wl, "pagination next_url: %s", err.msg);
                return PB_EJQ;
            }
            char *s = n ? poll_scalar_text(out[0]) : NULL;
            if (n)
                jv_free(out[0]);
            if (!s || !*s) {
                free(s);
                *ends = true;
                return 0;
            }
            snprintf(link, sizeof(link), "%s", s);
            free(s);
        }
        next = poll_url_resolve(url, link);
        if (!next) {
            snprintf(why, wl, "the next page's URL \"%.200s\" is not a URL", link);
            return PB_EPARSE;
        }
        if (seen_before(p, next) || strcmp(next, url) == 0) {
            snprintf(why, wl, "pagination loop: next URL \"%.200s\" repeated in one run", next);
            free(next);
            return PB_EPARSE;
        }
        free(p->next_url);
        p->next_url = next;
        return 0;
    }
    }
    return 0;
}

static void done_cb(void *arg, const struct pb_http_resp *resp)
{
    struct page_req *r = arg;
    struct in_poll *p = r->p;
    char why[1024], safe[300];
    struct batch *b = NULL;
    jv doc = jv_invalid();
    p->busy = false;
    if (p->stopped)
        goto out;
    if (resp->status == 401 && !r->refreshed && pb_http_auth_refreshable(p->a)) {
        /* Refused token: a new one (once for everyone), the same page again. */
        r->refreshed = true;
        pb_http_auth_rejected(p->a, r->gen);
        page_send(r);
        return;
    }
    if (resp->status < 200 || resp->status >= 300) {
        if (resp->status)
            snprintf(why, sizeof(why), "HTTP %d from %s: %s", resp->status, r->url,
                     pb_log_value(resp->body ? resp->body : "", safe, sizeof(safe)));
        else
            snprintf(why, sizeof(why), "%s (%s)", resp->error ? resp->error : "no answer", r->url);
        if (resp->status && pb_classify_http(resp->status) == PB_RESULT_PERMANENT)
            run_over(p, why);
        else
            retry_later(p, why);
        goto out;
    }
    if (resp->truncated) {
        snprintf(why, sizeof(why), "the page from %s is larger than max_response (%llu bytes)",
                 r->url, (unsigned long long)p->max_response);
        run_over(p, why);
        goto out;
    }
    struct pb_err err = {0};
    if (pb_jq_parse(resp->body, resp->body_len, &doc, &err) != 0) {
        snprintf(why, sizeof(why), "the page from %s is not JSON: %s", r->url, err.msg);
        retry_later(p, why);
        goto out;
    }
    if (p->graphql.query) {
        jv errs = jv_object_get(jv_copy(doc), jv_string("errors"));
        if (jv_get_kind(errs) == JV_KIND_ARRAY && jv_array_length(jv_copy(errs)) > 0) {
            jv m = jv_getpath(errs, JV_ARRAY(jv_number(0), jv_string("message")));
            snprintf(why, sizeof(why), "GraphQL error from %s: %s", r->url,
                     pb_log_value(jv_get_kind(m) == JV_KIND_STRING ? jv_string_value(m) : "?", safe,
                                  sizeof(safe)));
            jv_free(m);
            run_over(p, why);
            goto out;
        }
        jv_free(errs);
    }
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)resp->body, resp->body_len, md);
    bool same = p->have_hash && memcmp(md, p->last_hash, sizeof(md)) == 0;
    b = calloc(1, sizeof(*b));
    if (!b) {
        retry_later(p, "out of memory");
        goto out;
    }
    b->p = p;
    memcpy(b->md, md, sizeof(md));
    int rc = make_items(p, doc, r->url, b, why, sizeof(why));
    if (rc) {
        batch_free(b);
        b = NULL;
        if (rc == PB_ENOMEM)
            retry_later(p, why);
        else
            run_over(p, why);
        goto out;
    }
    if (same && b->n > 0) {
        snprintf(why, sizeof(why),
                 "pagination loop: the page from %s is identical to the one before it", r->url);
        batch_free(b);
        b = NULL;
        run_over(p, why);
        goto out;
    }
    bool ends = false;
    rc = advance(p, doc, resp, r->url, b->n, &ends, why, sizeof(why));
    if (rc) {
        /* The records of this page are good: commit them, then end. */
        b->error = strdup(why);
        ends = true;
    }
    if (!ends && p->page_no + 1 >= p->max_pages) {
        PB_INFO("http_poll: max_pages reached pipeline=%s pages=%lld", p->pipeline,
                (long long)p->max_pages);
        ends = true;
    }
    b->run_ends = ends;
    jv cur = ends && !b->error ? jv_max(jv_copy(p->committed), jv_copy(p->run_max))
                               : jv_copy(p->committed);
    b->state = poll_state_text(p, cur, ends);
    if (!b->state) {
        batch_free(b);
        b = NULL;
        retry_later(p, "out of memory");
        goto out;
    }
    p->busy = true;
    submit_next(b);
out:
    jv_free(doc);
    page_req_free(r);
}

/* ---- life cycle ----------------------------------------------------------------------- */

static int poll_start(void *ctx, struct pb_input *in, struct pb_err *err)
{
    struct in_poll *p = ctx;
    const void *v;
    size_t len;
    p->in = in;
    p->loop = pb_input_loop(in);
    if (!p->http && !(p->http = pb_http_client_create(p->loop, NULL, err)))
        return err->code ? err->code : PB_ENOMEM;
    if (!p->timer && !(p->timer = pb_loop_timer_create(p->loop, timer_cb, p)))
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    if (pb_input_checkpoint(in, "state", &v, &len) == 0)
        poll_state_load(p, v, len);
    set_position(p);
    pb_input_set_state(in, PB_INPUT_CONNECTED, NULL);
    if (p->in_run) {
        PB_INFO("http_poll: resuming the run under way pipeline=%s next_page=%lld", p->pipeline,
                (long long)p->page_no + 1);
        p->run_started_at = pb_now_ms();
        pb_loop_timer_start(p->timer, 0);
    } else {
        /* The first run at once (interval) or at the schedule (cron). */
        p->run_started_at = pb_now_ms() - p->interval_ms;
        pb_loop_timer_start(p->timer, p->once ? 0 : next_run_in(p, pb_now_ms()));
    }
    return 0;
}

static void poll_pause(void *ctx)
{
    struct in_poll *p = ctx;
    p->paused = true;
}

static void poll_resume(void *ctx)
{
    struct in_poll *p = ctx;
    p->paused = false;
    if (p->want_page && !p->busy && !p->stopped) {
        p->want_page = false;
        if (p->in_run)
            request_page(p);
        else
            run_begin(p);
    }
}

static void poll_stop(void *ctx)
{
    struct in_poll *p = ctx;
    p->stopped = true;
    pb_loop_timer_destroy(p->timer);
    p->timer = NULL;
    /* A page waiting for a token: taken back, or its callback sees stopped. */
    if (p->waiting && pb_http_auth_cancel(p->a, &p->waiting->w)) {
        page_req_free(p->waiting);
        p->waiting = NULL;
    }
    /* Aborts a page in flight: its callback sees stopped. */
    pb_http_client_destroy(p->http);
    p->http = NULL;
}

static void poll_destroy(void *ctx)
{
    struct in_poll *p = ctx;
    if (p->runs)
        PB_INFO("http_poll: stopped pipeline=%s runs=%llu records=%llu", p->pipeline,
                (unsigned long long)p->runs, (unsigned long long)p->records);
    pb_loop_timer_destroy(p->timer);
    p->timer = NULL;
    pb_http_client_destroy(p->http);
    p->http = NULL;
    run_reset(p);
    jv_free(p->committed);
    jv_free(p->sent);
    jv_free(p->run_max);
    p->committed = p->sent = p->run_max = jv_invalid();
    pb_jq_destroy(p->items_q);
    pb_jq_destroy(p->token_q);
    pb_jq_destroy(p->next_q);
    pb_jq_destroy(p->has_next_q);
    pb_jq_destroy(p->vars_q);
    pb_jq_destroy(p->value_q);
    pb_jq_destroy(p->key_q);
    p->items_q = p->token_q = p->next_q = p->has_next_q = p->vars_q = p->value_q = p->key_q = NULL;
    pb_http_auth_destroy(p->a);
    p->a = NULL;
    pb_http_tls_destroy(p->t);
    p->t = NULL;
}

const struct pb_input_plugin pb_in_http_poll = {
    .name = "http_poll",
    .fields = poll_fields,
    .ctx_size = sizeof(struct in_poll),
    .flags = PB_INPUT_OWN_THREAD | PB_INPUT_SINGLETON | PB_INPUT_CAN_FINISH,
    .init = poll_init,
    .start = poll_start,
    .stop = poll_stop,
    .pause = poll_pause,
    .resume = poll_resume,
    .destroy = poll_destroy,
};
