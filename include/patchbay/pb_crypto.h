/* pb_crypto.h - the encodings and MACs that both sides of webhooks use:
 * verifying what partners send (http_server) and signing what patchbay
 * sends (webhook). One implementation, so the two can never disagree. */
#ifndef PB_CRYPTO_H
#define PB_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>

/* A piece of signed content. */
struct pb_piece {
    const void *p;
    size_t len;
};

#define PB_MAC_MAX 64 /* bytes of the largest MAC (SHA-512) */

/* Strict decoders: 0 on success, -1 on anything else (bad character, bad
 * padding or trailing bits, more than cap bytes). Standard base64 accepts
 * the text with or without its '=' padding; base64url (url) takes no
 * padding at all. */
int pb_base64_decode(const char *s, size_t len, bool url, unsigned char *out, size_t cap,
                     size_t *outlen);
int pb_hex_decode(const char *s, size_t len, unsigned char *out, size_t cap, size_t *outlen);
/* Standard base64 (padded) or base64url (unpadded) of len bytes into out,
 * NUL-terminated. Returns the length written, or 0 when cap is too small. */
size_t pb_base64_encode(const void *in, size_t len, bool url, char *out, size_t cap);

/* HMAC (digest "SHA256", "SHA1" or "SHA512") of the pieces, in order, with
 * key. 0, or -1 (unknown digest, allocation failure). Thread-safe. */
int pb_hmac(const char *digest, const void *key, size_t klen, const struct pb_piece *pieces,
            size_t npieces, unsigned char mac[PB_MAC_MAX], size_t *maclen);
/* Equality in time independent of where a and b differ. */
bool pb_ct_equal(const void *a, const void *b, size_t n);

#endif
