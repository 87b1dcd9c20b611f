/* answer.c - the printable excerpt of a partner's answer kept per attempt:
 * what the message explorer shows on the attempt timeline. Pure function,
 * any thread. */
#include "core/answer.h"

#include <stdint.h>
#include <string.h>

/* Length of the valid UTF-8 sequence at s[0..n) (1..4), 0 when invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t want;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        want = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        want = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        want = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < want)
        return 0;
    for (size_t i = 1; i < want; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((want == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (want == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0; /* overlong or a surrogate */
    return want;
}

size_t pb_answer_excerpt(char dst[PB_ANSWER_EXCERPT_MAX + 1], const void *src, size_t len)
{
    static const char repl[] = "\xEF\xBF\xBD"; /* U+FFFD */
    const unsigned char *s = src;
    size_t n = 0, i = 0;

    dst[0] = 0;
    if (!s)
        return 0;
    while (i < len) {
        size_t k = utf8_seq(s + i, len - i);
        const char *put = (const char *)s + i;
        size_t plen = k;
        if (k == 0 || (k == 1 && ((s[i] < 0x20 && s[i] != '\t' && s[i] != '\n' && s[i] != '\r') ||
                                  s[i] == 0x7F))) {
            put = repl;
            plen = 3;
            k = k ? k : 1;
        }
        if (n + plen > PB_ANSWER_EXCERPT_MAX)
            break;
        memcpy(dst + n, put, plen);
        n += plen;
        i += k;
    }
    while (n > 0 &&
           (dst[n - 1] == ' ' || dst[n - 1] == '\t' || dst[n - 1] == '\n' || dst[n - 1] == '\r'))
        n--;
    dst[n] = 0;
    return n;
}
