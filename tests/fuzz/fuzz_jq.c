/* fuzz_jq.c - the jq wrapper's JSON intake and output (pb_jq_parse,
 * pb_jq_dump, pb_jq_run with the identity program).
 *
 * The promise under test is fidelity: what pb_jq_parse accepts, jq carries
 * exactly. Properties:
 *  - pb_jq_parse accepts exactly what pb_json_validate accepts with
 *    exact_numbers, less objects with a key given twice (jansson, told to
 *    reject duplicates, agrees on those);
 *  - an accepted value dumps without error; the dump is valid JSON, jq reads
 *    it back as the same value, and dumps that to the same bytes;
 *  - the dump denotes the same value as the input: compared through jansson
 *    with numbers as doubles (so "1.0" and "1" are the same number, but no
 *    digit may change) and strings byte for byte;
 *  - running "." gives one output, equal to the input. */
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "patchbay/pb_jq.h"
#include "patchbay/pb_json.h"

static struct pb_jq *identity;

/* libjq keeps its stack through a pointer to the end of the block, which
 * LeakSanitizer does not count as a reference: the stack of a program kept
 * across inputs shows up as a (false) leak in jq_start. tests/fuzz/lsan.supp
 * suppresses exactly that; compiling "." per input would cost 2 ms each. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    struct pb_err err = {0};
    identity = pb_jq_compile(".", &err);
    FUZZ_ASSERT(identity, "cannot compile \".\": %s", err.msg);
    return 0;
}

static bool same_value(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b)) {
        double x = json_number_value(a), y = json_number_value(b);
        return x == y || (isnan(x) && isnan(y));
    }
    if (json_typeof(a) != json_typeof(b))
        return false;
    switch (json_typeof(a)) {
    case JSON_OBJECT: {
        if (json_object_size(a) != json_object_size(b))
            return false;
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)a, k, v)
        {
            json_t *w = json_object_get(b, k);
            if (!w || !same_value(v, w))
                return false;
        }
        return true;
    }
    case JSON_ARRAY:
        if (json_array_size(a) != json_array_size(b))
            return false;
        for (size_t i = 0; i < json_array_size(a); i++)
            if (!same_value(json_array_get(a, i), json_array_get(b, i)))
                return false;
        return true;
    case JSON_STRING:
        return json_string_length(a) == json_string_length(b) &&
               memcmp(json_string_value(a), json_string_value(b), json_string_length(a)) == 0;
    default:
        return json_equal((json_t *)a, (json_t *)b);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    struct pb_err err = {0};
    struct pb_json_check chk = {.exact_numbers = true};
    int vrc = pb_json_validate(buf, size, &chk);
    jv v;
    int rc = pb_jq_parse(buf, size, &v, &err);

    json_error_t je;
    const size_t jflags = JSON_DECODE_ANY | JSON_ALLOW_NUL;
    if (rc != 0) {
        FUZZ_ASSERT(err.msg[0], "pb_jq_parse failed without a message");
        if (vrc == 0) {
            FUZZ_ASSERT(strstr(err.msg, "same key twice"),
                        "pb_jq_parse rejects what the validator accepts: %s", err.msg);
            json_t *plain = json_loadb(buf, size, jflags, &je);
            json_t *strict = json_loadb(buf, size, jflags | JSON_REJECT_DUPLICATES, &je);
            FUZZ_ASSERT(!plain || !strict, "jansson finds no duplicate key in what was refused");
            json_decref(plain);
            json_decref(strict);
        }
        jv_free(v);
        return 0;
    }
    FUZZ_ASSERT(vrc == 0, "pb_jq_parse accepts what the validator rejects: %s", chk.err_reason);
    {
        json_t *plain = json_loadb(buf, size, jflags, &je);
        json_t *strict = json_loadb(buf, size, jflags | JSON_REJECT_DUPLICATES, &je);
        FUZZ_ASSERT(!plain || strict, "a duplicate key got through pb_jq_parse");
        json_decref(plain);
        json_decref(strict);
    }

    /* Identity through jq. */
    jv outv[2];
    size_t nout = 0;
    struct pb_err rerr = {0};
    int runrc = pb_jq_run(identity, jv_copy(v), outv, 2, &nout, &rerr);
    FUZZ_ASSERT(runrc == 0 && nout == 1, "\".\" failed: %d %s (%zu outputs)", runrc, rerr.msg,
                nout);
    FUZZ_ASSERT(jv_equal(jv_copy(v), jv_copy(outv[0])), "\".\" changed the value");
    jv_free(outv[0]);

    char *d1 = NULL, *d2 = NULL;
    size_t l1 = 0, l2 = 0;
    rc = pb_jq_dump(jv_copy(v), &d1, &l1, &err);
    FUZZ_ASSERT(rc == 0, "accepted value does not dump: %s", err.msg);
    /* The dump is valid JSON that jq reads back as the same value. (Not
     * necessarily one pb_jq_parse takes: 1e17 is exact and accepted, but jq
     * prints it as the integer 100000000000000000, and integer literals past
     * 2^53 are refused whatever their value.) */
    struct pb_json_check chk2 = {0};
    FUZZ_ASSERT(pb_json_validate(d1, l1, &chk2) == 0, "dump is not valid JSON: %s: %.*s",
                chk2.err_reason, (int)(l1 > 200 ? 200 : l1), d1);
    jv v2 = jv_parse_sized(d1, (int)l1);
    FUZZ_ASSERT(jv_is_valid(v2), "jq cannot read its own dump");
    struct pb_err derr = {0};
    FUZZ_ASSERT(pb_jq_dump(jv_copy(v2), &d2, &l2, &derr) == 0, "dump of the dump: %s", derr.msg);
    FUZZ_ASSERT(jv_equal(v, v2), "the dump reads back as another value");
    FUZZ_ASSERT(l1 == l2 && memcmp(d1, d2, l1) == 0, "dump is not a fixed point");

    json_t *a = json_loadb(buf, size, jflags, &je);
    json_t *b = json_loadb(d1, l1, jflags, &je);
    if (a && b)
        FUZZ_ASSERT(same_value(a, b), "jq altered the value: in %.*s out %.*s",
                    (int)(size > 300 ? 300 : size), buf, (int)(l1 > 300 ? 300 : l1), d1);
    json_decref(a);
    json_decref(b);
    free(d1);
    free(d2);
    return 0;
}
