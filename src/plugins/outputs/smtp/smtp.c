/* smtp.c - the `smtp` output: each delivery a mail, sent with libcurl's SMTP.
 *
 *   smtp: { url: "smtp://mail.example:587", auth: { user: shop, password: "${SMTP_PASSWORD}" },
 *           from: 'Shop <orders@shop.example>', to: ['{{ .email }}'],
 *           subject: 'Order {{ .order_id }}', text: 'Thank you, {{ .name }}!' }
 *
 * from, to, cc, bcc, reply_to, subject, text and html are templates; an
 * address field may give several addresses separated by commas. Without
 * text or html the mail's text is the payload. STARTTLS is required by
 * default (starttls: opportunistic uses it when offered, never does not);
 * smtps:// speaks TLS from the start. Server certificates are verified.
 *
 * The Message-ID is derived from the delivery's idempotency key: a mail
 * sent again (a retry after a lost answer, a crash) carries the same
 * Message-ID, which mail systems use to drop the copy. The server's reply
 * decides: 2xx delivered; 4xx and connection trouble retried; 5xx (a
 * refused sender or recipient, a refused message) dead-lettered. One refused
 * recipient fails the whole mail: a mail never silently misses someone.
 *
 * Thread model: deliveries run on `workers` threads of the output's own
 * (libcurl's easy interface blocks); each takes a handle from a small pool
 * (kept connections), guarded by `mu`. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "../../inputs/sftp/sftp_curl.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_plugin.h"
#include "patchbay/pb_time.h"
#include "smtp_msg.h"

#define WORKERS 4
#define LIST_MAX 16 /* templates per address field */

static const char *const starttls_modes[] = {"required", "opportunistic", "never", NULL};
enum { TLS_REQUIRED = 0, TLS_OPPORTUNISTIC, TLS_NEVER };

struct auth_conf {
    char *user;
    char *password;
};
struct tls_conf {
    char *ca_file;
};

struct handle {
    CURL *e;
    struct curl_guard guard;
    /* The server's last reply line of the attempt (to the end of the
     * mail, when it got that far): the partner's answer kept per attempt. */
    char reply[PB_ANSWER_EXCERPT_MAX + 1];
    size_t reply_len;
};

struct out_smtp {
    /* options */
    char *url;
    int starttls;
    struct auth_conf auth;
    struct tls_conf tls;
    char *from;
    struct pb_strlist to, cc, bcc;
    char *reply_to;
    char *subject;
    char *text;
    char *html;
    struct pb_strmap headers;
    int64_t timeout_ms;
    int64_t connect_timeout_ms;
    /* template indexes */
    int t_from, t_reply_to, t_subject, t_text, t_html;
    int t_to[LIST_MAX], t_cc[LIST_MAX], t_bcc[LIST_MAX];
    /* run time */
    char host[256];
    bool smtps;
    const struct pb_allowlist *allow;
    struct pb_output *out;
    pthread_mutex_t mu;
    bool mu_ready;
    struct handle *pool[WORKERS * 2];
    size_t npool;
    char name[200];
};

static const struct pb_field auth_fields[] = {
    {.name = "user",
     .type = PB_F_STR,
     .offset = offsetof(struct auth_conf, user),
     .flags = PB_FIELD_REQUIRED},
    {.name = "password",
     .type = PB_F_SECRET,
     .offset = offsetof(struct auth_conf, password),
     .flags = PB_FIELD_REQUIRED},
    {0},
};
static const struct pb_field tls_fields[] = {
    {.name = "ca_file",
     .type = PB_F_STR,
     .offset = offsetof(struct tls_conf, ca_file),
     .doc = "CA certificates to verify the server with (default: the system's)"},
    {0},
};

static const struct pb_field smtp_fields[] = {
    {.name = "url",
     .type = PB_F_STR,
     .offset = offsetof(struct out_smtp, url),
     .flags = PB_FIELD_REQUIRED | PB_FIELD_URL,
     .doc = "smtp://host:587 (STARTTLS) or smtps://host:465 (TLS)"},
    {.name = "starttls",
     .type = PB_F_ENUM,
     .offset = offsetof(struct out_smtp, starttls),
     .choices = starttls_modes,
     .def = "required",
     .doc = "required, opportunistic or never (smtp://)"},
    {.name = "auth",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct out_smtp, auth),
     .sub = auth_fields},
    {.name = "tls",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct out_smtp, tls),
     .sub = tls_fields},
    {.name = "from",
     .type = PB_F_STR,
     .offset = offsetof(struct out_smtp, from),
     .flags = PB_FIELD_REQUIRED,
     .doc = "the sender (a template): 'Shop <orders@shop.example>'"},
    {.name = "to",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct out_smtp, to),
     .doc = "recipients (templates; each may give several, comma-separated)"},
    {.name = "cc", .type = PB_F_STRLIST, .offset = offsetof(struct out_smtp, cc)},
    {.name = "bcc",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct out_smtp, bcc),
     .doc = "recipients not shown in the mail"},
    {.name = "reply_to", .type = PB_F_STR, .offset = offsetof(struct out_smtp, reply_to)},
    {.name = "subject",
     .type = PB_F_STR,
     .offset = offsetof(struct out_smtp, subject),
     .flags = PB_FIELD_REQUIRED,
     .doc = "a template"},
    {.name = "text",
     .type = PB_F_STR,
     .offset = offsetof(struct out_smtp, text),
     .doc = "the plain-text body (a template; default: the payload)"},
    {.name = "html",
     .type = PB_F_STR,
     .offset = offsetof(struct out_smtp, html),
     .doc = "the HTML body (a template)"},
    {.name = "headers",
     .type = PB_F_STRMAP,
     .offset = offsetof(struct out_smtp, headers),
     .doc = "more headers (static)"},
    {.name = "timeout",
     .type = PB_F_DURATION,
     .offset = offsetof(struct out_smtp, timeout_ms),
     .def = "60s",
     .doc = "a whole mail"},
    {.name = "connect_timeout",
     .type = PB_F_DURATION,
     .offset = offsetof(struct out_smtp, connect_timeout_ms),
     .def = "10s"},
    {0},
};

static bool header_name_ok(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!(*s == '-' || (*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'z') ||
              (*s >= 'A' && *s <= 'Z')))
            return false;
    return true;
}

static int add_list(struct pb_output_env *env, const struct pb_strlist *l, int *idx,
                    const char *what, struct pb_err *err)
{
    if (l->n > LIST_MAX)
        return pb_err_set(err, PB_ECONFIG, "%s takes at most %d entries", what, LIST_MAX);
    for (size_t i = 0; i < l->n; i++) {
        int k = env->template_add(env, l->items[i], err);
        if (k < 0)
            return k;
        idx[i] = k;
    }
    return 0;
}

static int smtp_init(void *ctx, struct pb_output_env *env, struct pb_err *err)
{
    struct out_smtp *s = ctx;
    int rc;
    s->smtps = strncasecmp(s->url, "smtps://", 8) == 0;
    if (!s->smtps && strncasecmp(s->url, "smtp://", 7) != 0)
        return pb_err_set(err, PB_ECONFIG, "url must start with smtp:// or smtps://");
    CURLU *u = curl_url();
    char *host = NULL;
    if (!u)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    if (curl_url_set(u, CURLUPART_URL, s->url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
        curl_url_cleanup(u);
        return pb_err_set(err, PB_ECONFIG, "url is not an smtp://host:port URL");
    }
    char *user = NULL;
    bool has_user = curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK && user;
    curl_free(user);
    snprintf(s->host, sizeof(s->host), "%s", host);
    curl_free(host);
    curl_url_cleanup(u);
    if (has_user)
        return pb_err_set(err, PB_ECONFIG, "put credentials in auth, not in the url");
    if (s->to.n + s->cc.n + s->bcc.n == 0)
        return pb_err_set(err, PB_ECONFIG, "no recipient: set to, cc or bcc");
    if (s->auth.user && s->starttls == TLS_NEVER && !s->smtps)
        return pb_err_set(err, PB_ECONFIG,
                          "auth with starttls: never would send the password in clear text");
    for (size_t i = 0; i < s->headers.n; i++)
        if (!header_name_ok(s->headers.keys[i]) || strpbrk(s->headers.vals[i], "\r\n"))
            return pb_err_set(err, PB_ECONFIG, "header \"%s\" has a bad name or value",
                              s->headers.keys[i]);
    s->t_reply_to = s->t_text = s->t_html = -1;
    if ((s->t_from = env->template_add(env, s->from, err)) < 0)
        return s->t_from;
    if ((s->t_subject = env->template_add(env, s->subject, err)) < 0)
        return s->t_subject;
    if (s->reply_to && (s->t_reply_to = env->template_add(env, s->reply_to, err)) < 0)
        return s->t_reply_to;
    if (s->text && (s->t_text = env->template_add(env, s->text, err)) < 0)
        return s->t_text;
    if (s->html && (s->t_html = env->template_add(env, s->html, err)) < 0)
        return s->t_html;
    if ((rc = add_list(env, &s->to, s->t_to, "to", err)) != 0 ||
        (rc = add_list(env, &s->cc, s->t_cc, "cc", err)) != 0 ||
        (rc = add_list(env, &s->bcc, s->t_bcc, "bcc", err)) != 0)
        return rc;
    s->allow = env->allow;
    env->attempt_timeout_ms = s->timeout_ms + 5000;
    snprintf(s->name, sizeof(s->name), "%s/%s", env->pipeline, env->output);
    if (pthread_mutex_init(&s->mu, NULL) != 0)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    s->mu_ready = true;
    return 0;
}

static int smtp_start(void *ctx, struct pb_output *out, struct pb_err *err)
{
    struct out_smtp *s = ctx;
    (void)err;
    s->out = out;
    pb_output_set_state(out, PB_OUTPUT_CONNECTED, NULL);
    return 0;
}

/* ---- a mail ------------------------------------------------------------------------------------
 */

struct reader {
    const char *p;
    size_t len, off;
};

static size_t read_cb(char *buf, size_t size, size_t nmemb, void *arg)
{
    struct reader *r = arg;
    size_t k = size * nmemb;
    if (k > r->len - r->off)
        k = r->len - r->off;
    memcpy(buf, r->p + r->off, k);
    r->off += k;
    return k;
}

static struct handle *handle_get(struct out_smtp *s)
{
    struct handle *h = NULL;
    pthread_mutex_lock(&s->mu);
    if (s->npool)
        h = s->pool[--s->npool];
    pthread_mutex_unlock(&s->mu);
    if (h)
        return h;
    h = calloc(1, sizeof(*h));
    if (h && !(h->e = curl_easy_init())) {
        free(h);
        h = NULL;
    }
    return h;
}

static void handle_put(struct out_smtp *s, struct handle *h)
{
    pthread_mutex_lock(&s->mu);
    if (s->npool < sizeof(s->pool) / sizeof(s->pool[0])) {
        s->pool[s->npool++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&s->mu);
    if (h) {
        curl_easy_cleanup(h->e);
        free(h);
    }
}

static void done_answer(struct pb_delivery *d, enum pb_result r, int status, const char *error,
                        const struct handle *h)
{
    struct pb_outcome o = {.result = r, .status = status, .retry_after_ms = -1, .error = error};
    if (h && h->reply_len) {
        o.answer = h->reply;
        o.answer_len = h->reply_len;
    }
    pb_delivery_done(d, &o);
}

static void done(struct pb_delivery *d, enum pb_result r, int status, const char *error)
{
    done_answer(d, r, status, error, NULL);
}

/* libcurl hands each line the server answers with to the header callback:
 * keep the last one but the 221 that answers the QUIT closing a failed
 * attempt. Server replies only: what this side sends (AUTH credentials
 * among them) never comes through here. */
static size_t reply_cb(char *data, size_t size, size_t n, void *arg)
{
    struct handle *h = arg;
    size_t len = size * n, keep = len;
    while (keep && (data[keep - 1] == '\n' || data[keep - 1] == '\r'))
        keep--;
    if (keep >= 3 && memcmp(data, "221", 3) == 0)
        return len;
    if (keep) {
        if (keep > PB_ANSWER_EXCERPT_MAX)
            keep = PB_ANSWER_EXCERPT_MAX;
        memcpy(h->reply, data, keep);
        h->reply[keep] = 0;
        h->reply_len = keep;
    }
    return len;
}

static int collect(const struct pb_delivery *d, const int *idx, size_t n, struct smtp_addr *a,
                   size_t *na, char *why, size_t whylen)
{
    for (size_t i = 0; i < n; i++)
        if (smtp_parse_addrs(d->tmpl[idx[i]], a, na, SMTP_RCPT_MAX, why, whylen) != 0)
            return -1;
    return 0;
}

#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (cc == CURLE_OK)                                                                        \
            cc = curl_easy_setopt(h->e, opt, val);                                                 \
    } while (0)

static void smtp_deliver(void *ctx, struct pb_delivery *d)
{
    struct out_smtp *s = ctx;
    char why[512];
    struct smtp_addr from = {0}, *to = NULL, *cca = NULL, *bcc = NULL, *rt = NULL;
    size_t nfrom = 0, nto = 0, ncc = 0, nbcc = 0, nrt = 0;
    char *msg = NULL;
    size_t msglen = 0;
    struct curl_slist *rcpt = NULL;
    struct handle *h = NULL;
    to = calloc(SMTP_RCPT_MAX, sizeof(*to));
    cca = calloc(SMTP_RCPT_MAX, sizeof(*cca));
    bcc = calloc(SMTP_RCPT_MAX, sizeof(*bcc));
    rt = calloc(4, sizeof(*rt));
    if (!to || !cca || !bcc || !rt) {
        done(d, PB_RESULT_RETRY, 0, "out of memory");
        goto out;
    }
    /* Everything the message says is checked before anything is sent. */
    if (smtp_parse_addrs(d->tmpl[s->t_from], &from, &nfrom, 1, why, sizeof(why)) != 0 ||
        collect(d, s->t_to, s->to.n, to, &nto, why, sizeof(why)) != 0 ||
        collect(d, s->t_cc, s->cc.n, cca, &ncc, why, sizeof(why)) != 0 ||
        collect(d, s->t_bcc, s->bcc.n, bcc, &nbcc, why, sizeof(why)) != 0 ||
        (s->t_reply_to >= 0 &&
         smtp_parse_addrs(d->tmpl[s->t_reply_to], rt, &nrt, 4, why, sizeof(why)) != 0)) {
        done(d, PB_RESULT_PERMANENT, 0, why);
        goto out;
    }
    if (nfrom != 1) {
        done(d, PB_RESULT_PERMANENT, 0, "from gives no sender");
        goto out;
    }
    if (nto + ncc + nbcc == 0) {
        done(d, PB_RESULT_PERMANENT, 0, "no recipient: to, cc and bcc are all empty");
        goto out;
    }
    char *payload_text = NULL;
    const char *text = s->t_text >= 0 ? d->tmpl[s->t_text] : NULL;
    const char *html = s->t_html >= 0 ? d->tmpl[s->t_html] : NULL;
    if (!text && !html) {
        payload_text = strndup(d->payload, d->len);
        text = payload_text;
    }
    struct smtp_mail m = {
        .from = &from,
        .to = to,
        .nto = nto,
        .cc = cca,
        .ncc = ncc,
        .reply_to = rt,
        .nreply_to = nrt,
        .subject = d->tmpl[s->t_subject],
        .text = text,
        .html = html,
        .hdr_names = (const char *const *)s->headers.keys,
        .hdr_values = (const char *const *)s->headers.vals,
        .nhdrs = s->headers.n,
        .idempotency_key = d->idempotency_key,
        .msg_id = d->msg_id,
        .date_ms = pb_now_ms(),
    };
    int brc = text || html ? smtp_build(&m, &msg, &msglen, why, sizeof(why)) : -1;
    free(payload_text);
    if (brc != 0) {
        done(d, PB_RESULT_PERMANENT, 0, text || html ? why : "out of memory");
        goto out;
    }
    struct smtp_addr *lists[] = {to, cca, bcc};
    size_t counts[] = {nto, ncc, nbcc};
    for (int l = 0; l < 3; l++) {
        for (size_t i = 0; i < counts[l]; i++) {
            char a[SMTP_ADDR_MAX + 3];
            snprintf(a, sizeof(a), "<%s>", lists[l][i].addr);
            struct curl_slist *nl = curl_slist_append(rcpt, a);
            if (!nl) {
                done(d, PB_RESULT_RETRY, 0, "out of memory");
                goto out;
            }
            rcpt = nl;
        }
    }
    h = handle_get(s);
    if (!h) {
        done(d, PB_RESULT_RETRY, 0, "out of memory");
        goto out;
    }
    curl_easy_reset(h->e);
    CURLcode cc = CURLE_OK;
    char errbuf[CURL_ERROR_SIZE] = "";
    char mailfrom[SMTP_ADDR_MAX + 3];
    snprintf(mailfrom, sizeof(mailfrom), "<%s>", from.addr);
    struct reader rd = {msg, msglen, 0};
    if (curl_guard_install(h->e, &h->guard, s->host, "smtp,smtps") != 0)
        cc = CURLE_FAILED_INIT;
    h->guard.allow = s->allow;
    SET(CURLOPT_URL, s->url);
    SET(CURLOPT_MAIL_FROM, mailfrom);
    SET(CURLOPT_MAIL_RCPT, rcpt);
    SET(CURLOPT_UPLOAD, 1L);
    SET(CURLOPT_READFUNCTION, read_cb);
    SET(CURLOPT_READDATA, (void *)&rd);
    SET(CURLOPT_INFILESIZE_LARGE, (curl_off_t)msglen);
    SET(CURLOPT_ERRORBUFFER, errbuf);
    h->reply_len = 0;
    SET(CURLOPT_HEADERFUNCTION, reply_cb);
    SET(CURLOPT_HEADERDATA, (void *)h);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)s->connect_timeout_ms);
    int64_t left = d->deadline_ms - pb_now_ms();
    SET(CURLOPT_TIMEOUT_MS, (long)(left > 1000 && left < s->timeout_ms ? left : s->timeout_ms));
    if (!s->smtps)
        SET(CURLOPT_USE_SSL, s->starttls == TLS_REQUIRED        ? (long)CURLUSESSL_ALL
                             : s->starttls == TLS_OPPORTUNISTIC ? (long)CURLUSESSL_TRY
                                                                : (long)CURLUSESSL_NONE);
    if (s->tls.ca_file)
        SET(CURLOPT_CAINFO, s->tls.ca_file);
    if (s->auth.user) {
        SET(CURLOPT_USERNAME, s->auth.user);
        SET(CURLOPT_PASSWORD, s->auth.password);
    }
    if (cc == CURLE_OK)
        cc = curl_easy_perform(h->e);
    long code = 0;
    curl_easy_getinfo(h->e, CURLINFO_RESPONSE_CODE, &code);
    if (cc == CURLE_OK) {
        pb_output_set_state(s->out, PB_OUTPUT_CONNECTED, NULL);
        done_answer(d, PB_RESULT_OK, (int)code, NULL, h);
    } else if (h->guard.blocked) {
        /* Retrying cannot make the address allowed. */
        done(d, PB_RESULT_PERMANENT, 0, h->guard.why);
    } else {
        const char *detail = errbuf[0] ? errbuf : curl_easy_strerror(cc);
        if (cc == CURLE_USE_SSL_FAILED)
            snprintf(why, sizeof(why),
                     "the server offers no STARTTLS (starttls: required): nothing was sent");
        else if (code >= 400)
            snprintf(why, sizeof(why), "SMTP %ld: %s", code, detail);
        else
            snprintf(why, sizeof(why), "%s", detail);
        enum pb_result r = code >= 500 && code < 600 ? PB_RESULT_PERMANENT : PB_RESULT_RETRY;
        if (code < 400 || cc == CURLE_USE_SSL_FAILED)
            pb_output_set_state(s->out, PB_OUTPUT_RECONNECTING, why);
        /* The status is the server's refusal; a 2xx to an earlier command
         * is no answer to the mail. */
        done_answer(d, r, code >= 400 ? (int)code : 0, why, code >= 400 ? h : NULL);
    }
out:
    if (h)
        handle_put(s, h);
    curl_slist_free_all(rcpt);
    free(msg);
    free(to);
    free(cca);
    free(bcc);
    free(rt);
}

static void smtp_destroy(void *ctx)
{
    struct out_smtp *s = ctx;
    for (size_t i = 0; i < s->npool; i++) {
        curl_easy_cleanup(s->pool[i]->e);
        free(s->pool[i]);
    }
    s->npool = 0;
    if (s->mu_ready) {
        pthread_mutex_destroy(&s->mu);
        s->mu_ready = false;
    }
}

const struct pb_output_plugin pb_out_smtp = {
    .name = "smtp",
    .fields = smtp_fields,
    .ctx_size = sizeof(struct out_smtp),
    .default_concurrency = WORKERS,
    .workers = WORKERS,
    .init = smtp_init,
    .start = smtp_start,
    .deliver = smtp_deliver,
    .destroy = smtp_destroy,
};
