/* smtp_msg.h - the mail the `smtp` output sends, built from rendered
 * template fields: addresses checked and split, headers that cannot be
 * injected into, RFC 2047 for non-ASCII header text, quoted-printable
 * UTF-8 bodies (text, html, or both as multipart/alternative), and a
 * Message-ID derived from the delivery's idempotency key, so a mail sent
 * again after a retry is recognisably the same mail. Pure: any thread. */
#ifndef PB_SMTP_MSG_H
#define PB_SMTP_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SMTP_ADDR_MAX 320
#define SMTP_RCPT_MAX 100

/* One mailbox: how it is written in a header, and the bare address. */
struct smtp_addr {
    char header[SMTP_ADDR_MAX + 200]; /* "Name <a@b>" (name RFC 2047 encoded when needed) */
    char addr[SMTP_ADDR_MAX];         /* "a@b" */
};

/* Parse a comma-separated list of mailboxes ("a@b, \"Doe, J\" <j@d>") into
 * out[*n...] (appended, up to max). 0, or -1 with why. */
int smtp_parse_addrs(const char *list, struct smtp_addr *out, size_t *n, size_t max, char *why,
                     size_t whylen);

struct smtp_mail {
    const struct smtp_addr *from;
    const struct smtp_addr *to, *cc, *reply_to;
    size_t nto, ncc, nreply_to;
    const char *subject;
    const char *text;             /* NULL: none */
    const char *html;             /* NULL: none */
    const char *const *hdr_names; /* extra static headers */
    const char *const *hdr_values;
    size_t nhdrs;
    const char *idempotency_key;
    const char *msg_id; /* patchbay's message id (X-Patchbay-Message-Id) */
    int64_t date_ms;    /* unix ms for the Date header */
};

/* "<32 hex of SHA-256(key)>@<domain of from>" with the angle brackets. */
void smtp_message_id(const char *key, const char *from_addr, char *out, size_t len);

/* The whole message (headers, blank line, body), CRLF line ends, into a
 * malloc'd *out. 0, or -1 with why (a header value with a line break,
 * text that is not UTF-8). */
int smtp_build(const struct smtp_mail *m, char **out, size_t *len, char *why, size_t whylen);

/* Quoted-printable of s (for tests and the builder). */
int smtp_qp(const char *s, size_t len, char **out, size_t *outlen);

#endif
