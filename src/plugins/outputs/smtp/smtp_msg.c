/* smtp_msg.c - building the mail of the smtp output: see smtp_msg.h.
 * Any thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "patchbay/pb_crypto.h"
#include "patchbay/pb_json.h"
#include "smtp_msg.h"

struct sb {
    char *p;
    size_t n, cap;
    int err;
};

static void put(struct sb *b, const char *s, size_t len)
{
    if (b->err)
        return;
    if (b->n + len + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 4096;
        while (nc < b->n + len + 1)
            nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) {
            b->err = 1;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, len);
    b->n += len;
    b->p[b->n] = 0;
}

static void puts_(struct sb *b, const char *s)
{
    put(b, s, strlen(s));
}

static bool has_break(const char *s)
{
    return strpbrk(s, "\r\n") != NULL;
}

static bool ascii_printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
            return false;
    return true;
}

/* Header text: as it is when it is printable ASCII, otherwise RFC 2047
 * encoded words (UTF-8, base64), folded, never splitting a character. */
static int header_text(struct sb *b, const char *s, char *why, size_t whylen)
{
    size_t len = strlen(s);
    if (has_break(s)) {
        snprintf(why, whylen, "a header value holds a line break");
        return -1;
    }
    if (!pb_utf8_valid(s, len)) {
        snprintf(why, whylen, "a header value is not UTF-8");
        return -1;
    }
    if (ascii_printable(s) && len <= 900) {
        put(b, s, len);
        return 0;
    }
    size_t i = 0;
    bool first = true;
    while (i < len) {
        size_t k = len - i > 45 ? 45 : len - i;
        /* back off to a character boundary */
        while (k > 0 && i + k < len && ((unsigned char)s[i + k] & 0xC0) == 0x80)
            k--;
        char enc[80];
        pb_base64_encode(s + i, k, false, enc, sizeof(enc));
        if (!first)
            puts_(b, "\r\n ");
        puts_(b, "=?UTF-8?B?");
        puts_(b, enc);
        puts_(b, "?=");
        first = false;
        i += k;
    }
    return 0;
}

/* ---- addresses ----------------------------------------------------------------------------- */

static bool addr_ok(const char *a)
{
    size_t len = strlen(a);
    const char *at = strchr(a, '@');
    if (len == 0 || len > 254 || !at || at == a || !at[1] || strchr(at + 1, '@'))
        return false;
    for (const char *p = a; p < at; p++) {
        unsigned char c = (unsigned char)*p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("!#$%&'*+/=?^_`{|}~.-", c)))
            return false;
    }
    const char *d = at + 1;
    if (d[0] == '[') {
        size_t dl = strlen(d);
        if (d[dl - 1] != ']')
            return false;
        for (const char *p = d + 1; p < d + dl - 1; p++)
            if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') ||
                  (*p >= 'A' && *p <= 'F') || *p == '.' || *p == ':'))
                return false;
        return true;
    }
    for (const char *p = d; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.'))
            return false;
    }
    return d[0] != '.' && d[strlen(d) - 1] != '.';
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = 0;
    return s;
}

static int one_addr(char *tok, struct smtp_addr *out, char *why, size_t whylen)
{
    char *t = trim(tok);
    char *lt = strrchr(t, '<');
    char name[256] = "";
    if (lt) {
        char *gt = strchr(lt, '>');
        if (!gt || *trim(gt + 1)) {
            snprintf(why, whylen, "\"%.100s\" is not a mailbox", t);
            return -1;
        }
        *gt = 0;
        *lt = 0;
        char *nm = trim(t);
        size_t nl = strlen(nm);
        if (nl >= 2 && nm[0] == '"' && nm[nl - 1] == '"') {
            nm[nl - 1] = 0;
            nm++;
            /* unescape \" and \\ */
            char *w = nm;
            for (char *r = nm; *r; r++) {
                if (*r == '\\' && r[1])
                    r++;
                *w++ = *r;
            }
            *w = 0;
        }
        snprintf(name, sizeof(name), "%s", nm);
        t = trim(lt + 1);
    }
    if (!addr_ok(t)) {
        snprintf(why, whylen, "\"%.100s\" is not an e-mail address", t);
        return -1;
    }
    snprintf(out->addr, sizeof(out->addr), "%s", t);
    if (!name[0]) {
        snprintf(out->header, sizeof(out->header), "%s", out->addr);
        return 0;
    }
    struct sb b = {0};
    if (ascii_printable(name)) {
        /* a quoted string: safe whatever specials it holds */
        puts_(&b, "\"");
        for (const char *p = name; *p; p++) {
            if (*p == '"' || *p == '\\')
                puts_(&b, "\\");
            put(&b, p, 1);
        }
        puts_(&b, "\"");
    } else if (header_text(&b, name, why, whylen) != 0) {
        free(b.p);
        return -1;
    }
    int n = snprintf(out->header, sizeof(out->header), "%s <%s>", b.p ? b.p : "", out->addr);
    free(b.p);
    if (b.err || n < 0 || (size_t)n >= sizeof(out->header)) {
        snprintf(why, whylen, "a display name is too long");
        return -1;
    }
    return 0;
}

int smtp_parse_addrs(const char *list, struct smtp_addr *out, size_t *n, size_t max, char *why,
                     size_t whylen)
{
    if (has_break(list)) {
        snprintf(why, whylen, "an address list holds a line break");
        return -1;
    }
    char *s = strdup(list);
    if (!s) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    char *start = s;
    bool q = false, angle = false;
    int rc = 0;
    for (char *p = s;; p++) {
        if (*p == '"' && (p == s || p[-1] != '\\'))
            q = !q;
        else if (!q && *p == '<')
            angle = true;
        else if (!q && *p == '>')
            angle = false;
        if (*p && (q || angle || *p != ','))
            continue;
        bool end = !*p;
        *p = 0;
        if (*trim(start)) {
            if (*n >= max) {
                snprintf(why, whylen, "more than %zu recipients", max);
                rc = -1;
                break;
            }
            if ((rc = one_addr(start, &out[*n], why, whylen)) != 0)
                break;
            (*n)++;
        }
        if (end)
            break;
        start = p + 1;
    }
    free(s);
    return rc;
}

/* ---- bodies ---------------------------------------------------------------------------------- */

int smtp_qp(const char *s, size_t len, char **out, size_t *outlen)
{
    static const char hx[] = "0123456789ABCDEF";
    struct sb b = {0};
    size_t col = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\r' && i + 1 < len && s[i + 1] == '\n')
            continue; /* the \n makes the line end */
        if (c == '\n') {
            /* a space or tab before a line end would be lost in transit */
            if (b.n && (b.p[b.n - 1] == ' ' || b.p[b.n - 1] == '\t')) {
                char t = b.p[b.n - 1];
                b.n--;
                char e[3] = {'=', hx[(unsigned char)t >> 4], hx[(unsigned char)t & 15]};
                put(&b, e, 3);
            }
            puts_(&b, "\r\n");
            col = 0;
            continue;
        }
        char e[3];
        size_t k;
        if ((c >= 33 && c <= 126 && c != '=') || c == ' ' || c == '\t') {
            e[0] = (char)c;
            k = 1;
        } else {
            e[0] = '=';
            e[1] = hx[c >> 4];
            e[2] = hx[c & 15];
            k = 3;
        }
        if (col + k > 75) {
            puts_(&b, "=\r\n");
            col = 0;
        }
        put(&b, e, k);
        col += k;
    }
    if (b.n && (b.p[b.n - 1] == ' ' || b.p[b.n - 1] == '\t')) {
        char t = b.p[b.n - 1];
        b.n--;
        char e[3] = {'=', hx[(unsigned char)t >> 4], hx[(unsigned char)t & 15]};
        put(&b, e, 3);
    }
    if (b.err) {
        free(b.p);
        return -1;
    }
    *out = b.p ? b.p : strdup("");
    *outlen = b.n;
    return *out ? 0 : -1;
}

/* A body part. In a multipart message the line end before the next
 * boundary belongs to the boundary: one more is written so the part keeps
 * its own last line end. */
static int part(struct sb *b, const char *type, const char *body, bool multi, char *why,
                size_t whylen)
{
    if (!pb_utf8_valid(body, strlen(body))) {
        snprintf(why, whylen, "the %s body is not UTF-8", type);
        return -1;
    }
    char *qp = NULL;
    size_t ql = 0;
    if (smtp_qp(body, strlen(body), &qp, &ql) != 0) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    puts_(b, "Content-Type: text/");
    puts_(b, type);
    puts_(b, "; charset=UTF-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n");
    put(b, qp, ql);
    if (multi || (ql && qp[ql - 1] != '\n'))
        puts_(b, "\r\n");
    free(qp);
    return 0;
}

void smtp_message_id(const char *key, const char *from_addr, char *out, size_t len)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    char hex[65] = "";
    static const char hx[] = "0123456789abcdef";
    if (EVP_Digest(key, strlen(key), md, &n, EVP_sha256(), NULL) == 1)
        for (unsigned int i = 0; i < 16 && i < n; i++) {
            hex[2 * i] = hx[md[i] >> 4];
            hex[2 * i + 1] = hx[md[i] & 15];
            hex[2 * i + 2] = 0;
        }
    const char *at = from_addr ? strrchr(from_addr, '@') : NULL;
    snprintf(out, len, "<%s@%s>", hex, at && at[1] ? at + 1 : "patchbay.invalid");
}

static void list_header(struct sb *b, const char *name, const struct smtp_addr *a, size_t n)
{
    if (!n)
        return;
    puts_(b, name);
    puts_(b, ": ");
    for (size_t i = 0; i < n; i++) {
        if (i)
            puts_(b, ",\r\n ");
        puts_(b, a[i].header);
    }
    puts_(b, "\r\n");
}

int smtp_build(const struct smtp_mail *m, char **out, size_t *len, char *why, size_t whylen)
{
    struct sb b = {0};
    char date[64], mid[200];
    time_t t = (time_t)(m->date_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
    puts_(&b, "Date: ");
    puts_(&b, date);
    puts_(&b, "\r\nFrom: ");
    puts_(&b, m->from->header);
    puts_(&b, "\r\n");
    list_header(&b, "To", m->to, m->nto);
    list_header(&b, "Cc", m->cc, m->ncc);
    list_header(&b, "Reply-To", m->reply_to, m->nreply_to);
    puts_(&b, "Subject: ");
    if (header_text(&b, m->subject ? m->subject : "", why, whylen) != 0)
        goto fail;
    smtp_message_id(m->idempotency_key, m->from->addr, mid, sizeof(mid));
    puts_(&b, "\r\nMessage-ID: ");
    puts_(&b, mid);
    puts_(&b, "\r\nMIME-Version: 1.0\r\n");
    if (m->msg_id && ascii_printable(m->msg_id)) {
        puts_(&b, "X-Patchbay-Message-Id: ");
        puts_(&b, m->msg_id);
        puts_(&b, "\r\n");
    }
    for (size_t i = 0; i < m->nhdrs; i++) {
        puts_(&b, m->hdr_names[i]);
        puts_(&b, ": ");
        if (header_text(&b, m->hdr_values[i], why, whylen) != 0)
            goto fail;
        puts_(&b, "\r\n");
    }
    if (m->text && m->html) {
        char boundary[64];
        snprintf(boundary, sizeof(boundary), "=_pb_%.24s", mid + 1);
        puts_(&b, "Content-Type: multipart/alternative; boundary=\"");
        puts_(&b, boundary);
        puts_(&b, "\"\r\n\r\n--");
        puts_(&b, boundary);
        puts_(&b, "\r\n");
        if (part(&b, "plain", m->text, true, why, whylen) != 0)
            goto fail;
        puts_(&b, "--");
        puts_(&b, boundary);
        puts_(&b, "\r\n");
        if (part(&b, "html", m->html, true, why, whylen) != 0)
            goto fail;
        puts_(&b, "--");
        puts_(&b, boundary);
        puts_(&b, "--\r\n");
    } else if (part(&b, m->html ? "html" : "plain",
                    m->html   ? m->html
                    : m->text ? m->text
                              : "",
                    false, why, whylen) != 0) {
        goto fail;
    }
    if (b.err) {
        snprintf(why, whylen, "out of memory");
        goto fail;
    }
    *out = b.p;
    *len = b.n;
    return 0;
fail:
    free(b.p);
    return -1;
}
