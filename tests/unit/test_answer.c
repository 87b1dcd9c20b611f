/* test_answer.c - the partner's answer excerpt kept per attempt: bounded,
 * valid UTF-8, control characters replaced, never split in a character. */
#include "pb_test.h"

#include <string.h>

#include "core/answer.h"

PB_TEST(plain)
{
    char out[PB_ANSWER_EXCERPT_MAX + 1];
    PB_EQ_INT((long long)pb_answer_excerpt(out, "{\"ok\":true}\n", 12), 11);
    PB_EQ_STR(out, "{\"ok\":true}");
    PB_EQ_INT((long long)pb_answer_excerpt(out, NULL, 5), 0);
    PB_EQ_INT((long long)pb_answer_excerpt(out, "", 0), 0);
    PB_EQ_STR(out, "");
    PB_EQ_INT((long long)pb_answer_excerpt(out, " \r\n\t", 4), 0);
    PB_EQ_INT((long long)pb_answer_excerpt(out, "a\tb\nc", 5), 5);
    PB_EQ_STR(out, "a\tb\nc");
}

PB_TEST(replaced)
{
    char out[PB_ANSWER_EXCERPT_MAX + 1];
    /* NUL, ESC, DEL, a stray continuation byte, an overlong '/', a surrogate,
     * a truncated sequence at the end */
    static const char in[] = "a\0b\x1b[c\x7f\x80x\xC0\xAFy\xED\xA0\x80z\xE2\x82";
    size_t n = pb_answer_excerpt(out, in, sizeof(in) - 1);
    PB_EQ_INT((long long)n, (long long)strlen(out));
    PB_EQ_STR(out, "a\xEF\xBF\xBD"
                   "b\xEF\xBF\xBD[c\xEF\xBF\xBD\xEF\xBF\xBDx\xEF\xBF\xBD\xEF\xBF\xBDy"
                   "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBDz\xEF\xBF\xBD\xEF\xBF\xBD");
    /* valid multi-byte text passes as it is */
    PB_EQ_INT((long long)pb_answer_excerpt(out, "caf\xC3\xA9 \xF0\x9F\x98\x80", 10), 10);
    PB_EQ_STR(out, "caf\xC3\xA9 \xF0\x9F\x98\x80");
}

PB_TEST(bounded)
{
    char out[PB_ANSWER_EXCERPT_MAX + 1];
    char big[4096];
    memset(big, 'x', sizeof(big));
    PB_EQ_INT((long long)pb_answer_excerpt(out, big, sizeof(big)), PB_ANSWER_EXCERPT_MAX);
    PB_EQ_INT((long long)strlen(out), PB_ANSWER_EXCERPT_MAX);
    /* a two-byte character straddling the limit is left out whole */
    big[PB_ANSWER_EXCERPT_MAX - 1] = (char)0xC3;
    big[PB_ANSWER_EXCERPT_MAX] = (char)0xA9;
    PB_EQ_INT((long long)pb_answer_excerpt(out, big, sizeof(big)), PB_ANSWER_EXCERPT_MAX - 1);
    /* replacements count toward the limit too */
    memset(big, 0x01, sizeof(big));
    size_t n = pb_answer_excerpt(out, big, sizeof(big));
    PB_CHECK(n <= PB_ANSWER_EXCERPT_MAX && n % 3 == 0 && n >= PB_ANSWER_EXCERPT_MAX - 2);
}

int main(void)
{
    return pb_test_main();
}
