/* crypto.c - base64, hex and HMAC for verifying and signing webhooks
 * (pb_crypto.h), on OpenSSL 3. */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "patchbay/pb_crypto.h"

static int b64val(unsigned char c, bool url)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == (url ? '-' : '+'))
        return 62;
    if (c == (url ? '_' : '/'))
        return 63;
    return -1;
}

int pb_base64_decode(const char *s, size_t len, bool url, unsigned char *out, size_t cap,
                     size_t *outlen)
{
    if (!url && len > 0 && len % 4 == 0 && s[len - 1] == '=')
        len -= s[len - 2] == '=' ? 2 : 1;
    size_t rem = len % 4;
    if (rem == 1)
        return -1;
    size_t n = len / 4 * 3 + (rem ? rem - 1 : 0);
    if (n > cap)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    unsigned bits = 0;
    for (size_t i = 0; i < len; i++) {
        int d = b64val((unsigned char)s[i], url);
        if (d < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)d;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) /* the unused low bits of the last character must be zero */
        return -1;
    *outlen = o;
    return 0;
}

size_t pb_base64_encode(const void *in, size_t len, bool url, char *out, size_t cap)
{
    static const char std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    static const char web[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const char *a = url ? web : std;
    const unsigned char *p = in;
    size_t need = url ? (len * 4 + 2) / 3 : (len + 2) / 3 * 4;
    if (need + 1 > cap)
        return 0;
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = a[v >> 18];
        out[o++] = a[(v >> 12) & 63];
        out[o++] = a[(v >> 6) & 63];
        out[o++] = a[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = a[v >> 18];
        out[o++] = a[(v >> 12) & 63];
        if (!url) {
            out[o++] = '=';
            out[o++] = '=';
        }
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = a[v >> 18];
        out[o++] = a[(v >> 12) & 63];
        out[o++] = a[(v >> 6) & 63];
        if (!url)
            out[o++] = '=';
    }
    out[o] = 0;
    return o;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int pb_hex_decode(const char *s, size_t len, unsigned char *out, size_t cap, size_t *outlen)
{
    if (len % 2 || len / 2 > cap)
        return -1;
    for (size_t i = 0; i < len; i += 2) {
        int hi = hexval(s[i]), lo = hexval(s[i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i / 2] = (unsigned char)(hi << 4 | lo);
    }
    *outlen = len / 2;
    return 0;
}

static EVP_MAC *hmac_alg;
static pthread_once_t hmac_once = PTHREAD_ONCE_INIT;

static void hmac_fetch(void)
{
    hmac_alg = EVP_MAC_fetch(NULL, "HMAC", NULL);
}

int pb_hmac(const char *digest, const void *key, size_t klen, const struct pb_piece *pieces,
            size_t npieces, unsigned char mac[PB_MAC_MAX], size_t *maclen)
{
    pthread_once(&hmac_once, hmac_fetch);
    if (!hmac_alg)
        return -1;
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(hmac_alg);
    int rc = -1;
    if (!ctx)
        return -1;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string("digest", (char *)digest, 0),
        OSSL_PARAM_construct_end(),
    };
    if (!EVP_MAC_init(ctx, key, klen, params))
        goto out;
    for (size_t i = 0; i < npieces; i++)
        if (pieces[i].len && !EVP_MAC_update(ctx, pieces[i].p, pieces[i].len))
            goto out;
    if (EVP_MAC_final(ctx, mac, maclen, PB_MAC_MAX))
        rc = 0;
out:
    EVP_MAC_CTX_free(ctx);
    return rc;
}

bool pb_ct_equal(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}
