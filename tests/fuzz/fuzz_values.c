/* fuzz_values.c - the strict value parsers: durations, sizes, rates,
 * integers and booleans (pb_parse_*), on arbitrary bytes.
 *
 * The parsers take C strings (the decoder refuses a YAML value with a NUL
 * inside before it gets here), so the input is read up to its first NUL.
 * Properties besides "no crash": a failed parse leaves no half value
 * behind the caller would use; an accepted duration is >= 0 and reads back
 * the same from its canonical text ("<ms>ms"), a size from "<bytes>", a
 * rate from "<count>/<unit>"; an accepted integer from "%lld"; a boolean is
 * only ever "true" or "false". */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "fuzz.h"
#include "patchbay/pb_conf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_strdup(data, size);
    char buf[64];
    if (!s)
        return 0;

    int64_t ms = -1;
    if (pb_parse_duration(s, &ms) == 0) {
        FUZZ_ASSERT(ms >= 0, "duration \"%s\" -> %lld", s, (long long)ms);
        snprintf(buf, sizeof(buf), "%" PRId64 "ms", ms);
        int64_t again = -1;
        FUZZ_ASSERT(pb_parse_duration(buf, &again) == 0 && again == ms,
                    "duration \"%s\" -> %lld ms, but \"%s\" -> %lld", s, (long long)ms, buf,
                    (long long)again);
    }

    uint64_t bytes = 0;
    if (pb_parse_size(s, &bytes) == 0) {
        snprintf(buf, sizeof(buf), "%" PRIu64, bytes);
        uint64_t again = 0;
        FUZZ_ASSERT(pb_parse_size(buf, &again) == 0 && again == bytes,
                    "size \"%s\" -> %llu, but \"%s\" -> %llu", s, (unsigned long long)bytes, buf,
                    (unsigned long long)again);
    }

    struct pb_rate r = {0, 0};
    if (pb_parse_rate(s, &r) == 0) {
        FUZZ_ASSERT(r.count > 0, "rate \"%s\" with count 0", s);
        FUZZ_ASSERT(r.period_ms == 1000 || r.period_ms == 60000 || r.period_ms == 3600000,
                    "rate \"%s\" with period %lld ms", s, (long long)r.period_ms);
        const char *unit = r.period_ms == 1000 ? "s" : r.period_ms == 60000 ? "m" : "h";
        snprintf(buf, sizeof(buf), "%" PRIu64 "/%s", r.count, unit);
        struct pb_rate again = {0, 0};
        FUZZ_ASSERT(pb_parse_rate(buf, &again) == 0 && again.count == r.count &&
                        again.period_ms == r.period_ms,
                    "rate \"%s\" does not read back from \"%s\"", s, buf);
    }

    int64_t n = 0;
    if (pb_parse_int(s, &n) == 0) {
        snprintf(buf, sizeof(buf), "%" PRId64, n);
        int64_t again = 0;
        FUZZ_ASSERT(pb_parse_int(buf, &again) == 0 && again == n, "int \"%s\" -> %lld", s,
                    (long long)n);
    }

    bool b = false;
    if (pb_parse_bool(s, &b) == 0)
        FUZZ_ASSERT((b && strcmp(s, "true") == 0) || (!b && strcmp(s, "false") == 0),
                    "bool \"%s\" -> %d", s, b);
    free(s);
    return 0;
}
