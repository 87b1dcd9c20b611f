/* pb_test.h - the tiny unit-test harness: assertions print both values.
 *
 *   PB_TEST(name) { PB_EQ_INT(1 + 1, 2); }
 *   int main(void) { return pb_test_main(); }   -- runs every PB_TEST in the file
 */
#ifndef PB_TEST_H
#define PB_TEST_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pb_test_case {
    const char *name;
    void (*fn)(void);
};

#define PB_TEST_MAX 256
static struct pb_test_case pb__tests[PB_TEST_MAX];
static int pb__ntests;
static int pb__failed_here;
static int pb__checks;

#define PB_TEST(name)                                                                              \
    static void test_##name(void);                                                                 \
    __attribute__((constructor)) static void register_##name(void)                                 \
    {                                                                                              \
        if (pb__ntests < PB_TEST_MAX)                                                              \
            pb__tests[pb__ntests++] = (struct pb_test_case){#name, test_##name};                   \
    }                                                                                              \
    static void test_##name(void)

#define PB__FAIL(...)                                                                              \
    do {                                                                                           \
        fprintf(stderr, "  %s:%d: ", __FILE__, __LINE__);                                          \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fprintf(stderr, "\n");                                                                     \
        pb__failed_here = 1;                                                                       \
    } while (0)

#define PB_CHECK(cond)                                                                             \
    do {                                                                                           \
        pb__checks++;                                                                              \
        if (!(cond))                                                                               \
            PB__FAIL("check failed: %s", #cond);                                                   \
    } while (0)

#define PB_EQ_INT(a, b)                                                                            \
    do {                                                                                           \
        long long pb__a = (long long)(a), pb__b = (long long)(b);                                  \
        pb__checks++;                                                                              \
        if (pb__a != pb__b)                                                                        \
            PB__FAIL("%s == %s: got %lld, want %lld", #a, #b, pb__a, pb__b);                       \
    } while (0)

#define PB_EQ_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *pb__a = (a), *pb__b = (b);                                                     \
        pb__checks++;                                                                              \
        if (!pb__a || !pb__b || strcmp(pb__a, pb__b) != 0)                                         \
            PB__FAIL("%s == %s: got \"%s\", want \"%s\"", #a, #b, pb__a ? pb__a : "(null)",        \
                     pb__b ? pb__b : "(null)");                                                    \
    } while (0)

#define PB_CONTAINS(hay, needle)                                                                   \
    do {                                                                                           \
        const char *pb__h = (hay), *pb__n = (needle);                                              \
        pb__checks++;                                                                              \
        if (!pb__h || !strstr(pb__h, pb__n))                                                       \
            PB__FAIL("%s contains \"%s\": got \"%s\"", #hay, pb__n, pb__h ? pb__h : "(null)");     \
    } while (0)

static inline int pb_test_main(void)
{
    int failed = 0;
    for (int i = 0; i < pb__ntests; i++) {
        pb__failed_here = 0;
        pb__tests[i].fn();
        printf("%s %s\n", pb__failed_here ? "FAIL" : "ok  ", pb__tests[i].name);
        failed += pb__failed_here;
    }
    printf("%d passed, %d failed\n", pb__ntests - failed, failed);
    return failed ? 1 : 0;
}

#endif
