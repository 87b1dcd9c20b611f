/* fuzz_json.c - the ingest JSON validator (pb_json_validate, pb_utf8_valid),
 * differentially against jansson and a reference UTF-8 decoder.
 *
 * Properties:
 *  - accept/reject agrees with jansson (json_loadb, any value at the top,
 *    NUL escapes allowed), except where the two are known to differ on
 *    purpose: nesting past our depth limit (64) or jansson's (2048),
 *    integers beyond jansson's 64-bit range, reals it reports as
 *    overflowing, "\u0000" in object keys (jansson cannot hold them) and raw
 *    NUL bytes (jansson accepts "[1\0, 2]") - those inputs are skipped;
 *  - an error has a reason and an offset inside the input;
 *  - exact_numbers only ever rejects more, and only with PB_EFIDELITY;
 *  - pb_utf8_valid agrees with a straightforward RFC 3629 decoder, and the
 *    validator rejects every input that is not valid UTF-8. */
#include <jansson.h>
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "patchbay/pb_err.h"
#include "patchbay/pb_json.h"

/* RFC 3629: no overlongs, no surrogates, nothing past U+10FFFF. */
static bool utf8_ref(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint32_t c = s[i];
        size_t len;
        uint32_t min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            len = 2, min = 0x80, c &= 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, min = 0x800, c &= 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, min = 0x10000, c &= 0x07;
        } else {
            return false;
        }
        if (i + len > n)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            c = (c << 6) | (s[i + k] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return false;
        i += len;
    }
    return true;
}

/* Deepest nesting of [ and { outside strings (to skip depth-limit inputs). */
static size_t max_depth(const uint8_t *s, size_t n)
{
    size_t d = 0, m = 0;
    bool str = false;
    for (size_t i = 0; i < n; i++) {
        if (str) {
            if (s[i] == '\\')
                i++;
            else if (s[i] == '"')
                str = false;
        } else if (s[i] == '"') {
            str = true;
        } else if (s[i] == '[' || s[i] == '{') {
            if (++d > m)
                m = d;
        } else if ((s[i] == ']' || s[i] == '}') && d) {
            d--;
        }
    }
    return m;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    struct pb_json_check plain = {0}, exact = {.exact_numbers = true};
    int rc = pb_json_validate(buf, size, &plain);
    int rce = pb_json_validate(buf, size, &exact);

    if (rc != 0) {
        FUZZ_ASSERT(plain.err_reason && plain.err_offset <= size, "error without reason/offset");
        FUZZ_ASSERT(rc == PB_EPARSE, "plain mode rejects with %d", rc);
        FUZZ_ASSERT(rce != 0, "exact mode accepts what plain mode rejects");
    }
    if (rc == 0 && rce != 0)
        FUZZ_ASSERT(rce == PB_EFIDELITY && exact.err_reason, "exact mode: %d %s", rce,
                    exact.err_reason ? exact.err_reason : "(none)");

    bool utf8 = pb_utf8_valid(buf, size);
    FUZZ_ASSERT(utf8 == utf8_ref(data, size), "pb_utf8_valid says %d, RFC 3629 says %d", utf8,
                !utf8);
    if (!utf8)
        FUZZ_ASSERT(rc != 0, "valid JSON accepted although the text is not UTF-8");

    /* Differential against jansson. */
    size_t depth = max_depth(data, size);
    if (depth > 60 || memchr(data, 0, size))
        return 0; /* jansson's reader takes a raw NUL byte for the end of input */
    json_error_t jerr;
    json_t *j = json_loadb(buf, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (j) {
        json_decref(j);
        FUZZ_ASSERT(rc == 0, "jansson accepts, pb_json_validate rejects: %s at %zu",
                    plain.err_reason, plain.err_offset);
    } else {
        const char *t = jerr.text;
        if (strstr(t, "too big") || strstr(t, "overflow") || strstr(t, "maximum") ||
            strstr(t, "depth") || strstr(t, "NUL byte in object key"))
            return 0; /* jansson's own limits */
        FUZZ_ASSERT(rc != 0, "pb_json_validate accepts, jansson rejects: %s (line %d col %d)", t,
                    jerr.line, jerr.column);
    }
    return 0;
}
