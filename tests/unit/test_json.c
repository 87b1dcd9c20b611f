/* test_json.c - the ingest JSON validator: syntax, UTF-8, depth, offsets and
 * the exact-number (fidelity) check. */
#include "pb_test.h"

#include "patchbay/pb_err.h"
#include "patchbay/pb_json.h"

/* A document with its length, so embedded NULs and bad bytes stay intact. */
#define DOC(s) s, sizeof(s) - 1

struct json_case {
    const char *doc;
    size_t len;
    int code;           /* expected return */
    const char *reason; /* substring of err_reason, or NULL */
    long offset;        /* expected err_offset, or -1 */
};

static const struct json_case syntax_cases[] = {
    /* valid documents */
    {DOC("{}"), 0, NULL, -1},
    {DOC("[]"), 0, NULL, -1},
    {DOC("{\"a\":1}"), 0, NULL, -1},
    {DOC(" {\"a\" : [1, 2.5, -3e10, true, false, null, \"x\", {}, []]} \n"), 0, NULL, -1},
    {DOC("[[[[]]],{\"k\":{\"k\":{}}}]"), 0, NULL, -1},
    {DOC("1"), 0, NULL, -1},
    {DOC("-0"), 0, NULL, -1},
    {DOC("0.5e-3"), 0, NULL, -1},
    {DOC("1E+2"), 0, NULL, -1},
    {DOC("\"s\""), 0, NULL, -1},
    {DOC("true"), 0, NULL, -1},
    {DOC("null"), 0, NULL, -1},
    {DOC("\t\r\n 1 \n"), 0, NULL, -1},
    {DOC("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\""), 0, NULL, -1},
    {DOC("\"\\u0000\\u00e9\\uFFFF\""), 0, NULL, -1},
    {DOC("\"\\ud83d\\ude00\""), 0, NULL, -1},
    {DOC("\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\""), 0, NULL, -1},
    {DOC("\"\xed\x9f\xbf \xee\x80\x80 \xf4\x8f\xbf\xbf\""), 0, NULL, -1},
    {DOC("\"\x7f\""), 0, NULL, -1},
    {DOC("\"a long plain ASCII string to go through the eight-byte path, twice over\""), 0, NULL,
     -1},

    /* structure */
    {DOC(""), PB_EPARSE, "empty input", 0},
    {DOC(" \n\t"), PB_EPARSE, "whitespace", 3},
    {DOC("1 2"), PB_EPARSE, "trailing characters", 2},
    {DOC("[1]\0"), PB_EPARSE, "trailing characters", 3},
    {DOC("[1,]"), PB_EPARSE, "trailing comma", 3},
    {DOC("{\"a\":1,}"), PB_EPARSE, "trailing comma", 7},
    {DOC("[,1]"), PB_EPARSE, "unexpected character", 1},
    {DOC("{,}"), PB_EPARSE, "expected a string key", 1},
    {DOC("[1 2]"), PB_EPARSE, "expected ',' or ']'", 3},
    {DOC("{\"a\":1 \"b\":2}"), PB_EPARSE, "expected ',' or '}'", 7},
    {DOC("{\"a\" 1}"), PB_EPARSE, "expected ':'", 5},
    {DOC("{a:1}"), PB_EPARSE, "expected a string key", 1},
    {DOC("{'a':1}"), PB_EPARSE, "expected a string key", 1},
    {DOC("'a'"), PB_EPARSE, "unexpected character", 0},
    {DOC("["), PB_EPARSE, "unexpected end", 1},
    {DOC("[1,2"), PB_EPARSE, "unexpected end", 4},
    {DOC("{\"a\":"), PB_EPARSE, "unexpected end", 5},
    {DOC("{\"a\""), PB_EPARSE, "unexpected end", 4},
    {DOC("]"), PB_EPARSE, "unexpected character", 0},
    {DOC("[1}"), PB_EPARSE, "expected ',' or ']'", 2},
    {DOC("\xef\xbb\xbf{}"), PB_EPARSE, "byte order mark", 0},
    {DOC("\xc3\xa9"), PB_EPARSE, "unexpected character", 0},

    /* literals and numbers */
    {DOC("tru"), PB_EPARSE, "invalid literal", 0},
    {DOC("truex"), PB_EPARSE, "trailing characters", 4},
    {DOC("True"), PB_EPARSE, "unexpected character", 0},
    {DOC("NaN"), PB_EPARSE, "unexpected character", 0},
    {DOC("Infinity"), PB_EPARSE, "unexpected character", 0},
    {DOC("-Infinity"), PB_EPARSE, "invalid number", 1},
    {DOC("01"), PB_EPARSE, "leading zero", 0},
    {DOC("[1, -01]"), PB_EPARSE, "leading zero", 5},
    {DOC("1."), PB_EPARSE, "after '.'", 2},
    {DOC("1.e5"), PB_EPARSE, "after '.'", 2},
    {DOC(".5"), PB_EPARSE, "unexpected character", 0},
    {DOC("-"), PB_EPARSE, "invalid number", 1},
    {DOC("+1"), PB_EPARSE, "unexpected character", 0},
    {DOC("1e"), PB_EPARSE, "exponent", 2},
    {DOC("1e+"), PB_EPARSE, "exponent", 3},
    {DOC("0x10"), PB_EPARSE, "trailing characters", 1},

    /* strings */
    {DOC("\"abc"), PB_EPARSE, "unterminated string", 4},
    {DOC("\"a\tb\""), PB_EPARSE, "control character", 2},
    {DOC("\"a\nb\""), PB_EPARSE, "control character", 2},
    {DOC("\"\0\""), PB_EPARSE, "control character", 1},
    {DOC("\"\x1f\""), PB_EPARSE, "control character", 1},
    {DOC("\"\\x\""), PB_EPARSE, "invalid escape", 1},
    {DOC("\"\\'\""), PB_EPARSE, "invalid escape", 1},
    {DOC("\"\\u12\""), PB_EPARSE, "\\u escape", 1},
    {DOC("\"\\u12g4\""), PB_EPARSE, "\\u escape", 1},
    {DOC("\"\\"), PB_EPARSE, "unterminated string", 2},
    {DOC("\"\\ud800\""), PB_EPARSE, "lone surrogate", 1},
    {DOC("\"ab\\udc00\""), PB_EPARSE, "lone surrogate", 3},
    {DOC("\"\\ud800\\u0041\""), PB_EPARSE, "lone surrogate", 1},
    {DOC("\"\\ud800x\""), PB_EPARSE, "lone surrogate", 1},
    {DOC("\"\\ud800\\ud800\""), PB_EPARSE, "lone surrogate", 1},

    /* UTF-8 */
    {DOC("\"ab\xc0\xaf\""), PB_EPARSE, "invalid UTF-8", 3},
    {DOC("\"\xc1\xbf\""), PB_EPARSE, "invalid UTF-8", 1},
    {DOC("\"\xe0\x80\xaf\""), PB_EPARSE, "invalid UTF-8", 1},
    {DOC("\"\xf0\x80\x80\xaf\""), PB_EPARSE, "invalid UTF-8", 1},
    {DOC("\"\xed\xa0\x80\""), PB_EPARSE, "invalid UTF-8", 1},
    {DOC("\"\xed\xbf\xbf\""), PB_EPARSE, "invalid UTF-8", 1},
    {DOC("\"\xf4\x90\x80\x80\""), PB_EPARSE, "invalid UTF-8", 1},
    {DOC("\"\xf5\x80\x80\x80\""), PB_EPARSE, "invalid UTF-8", 1},
    {DOC("\"\xe2\x82\""), PB_EPARSE, "invalid UTF-8", 1},
    {DOC("\"\xe2\x82"), PB_EPARSE, "invalid UTF-8", 1},
    {DOC("\"\xc3"), PB_EPARSE, "invalid UTF-8", 1},
    {DOC("\"\x80\""), PB_EPARSE, "invalid UTF-8", 1},
    {DOC("\"\xff\""), PB_EPARSE, "invalid UTF-8", 1},
    {DOC("\"0123456789abcdef\xc3\x28\""), PB_EPARSE, "invalid UTF-8", 17},
};

static void check_case(const struct json_case *t, struct pb_json_check *c, const char *what,
                       size_t i)
{
    int rc = pb_json_validate(t->doc, t->len, c);
    if (rc != t->code) {
        PB__FAIL("%s[%zu] \"%.*s\": got %s (%s at %zu), want %s", what, i, (int)t->len, t->doc,
                 pb_err_name(rc), c->err_reason ? c->err_reason : "-", c->err_offset,
                 pb_err_name(t->code));
        return;
    }
    pb__checks++;
    if (t->reason && (!c->err_reason || !strstr(c->err_reason, t->reason)))
        PB__FAIL("%s[%zu] \"%.*s\": reason \"%s\", want \"%s\"", what, i, (int)t->len, t->doc,
                 c->err_reason ? c->err_reason : "(null)", t->reason);
    if (t->offset >= 0 && c->err_offset != (size_t)t->offset)
        PB__FAIL("%s[%zu] \"%.*s\": offset %zu, want %ld", what, i, (int)t->len, t->doc,
                 c->err_offset, t->offset);
}

PB_TEST(syntax_table)
{
    for (size_t i = 0; i < sizeof(syntax_cases) / sizeof(syntax_cases[0]); i++) {
        struct pb_json_check c = {0};
        check_case(&syntax_cases[i], &c, "syntax", i);
    }
}

/* n arrays nested, with a 1 in the middle. */
static char *nested(size_t n, size_t *len)
{
    char *s = malloc(2 * n + 2);
    if (!s)
        return NULL;
    memset(s, '[', n);
    s[n] = '1';
    memset(s + n + 1, ']', n);
    s[2 * n + 1] = 0;
    *len = 2 * n + 1;
    return s;
}

PB_TEST(depth_limits)
{
    struct pb_json_check c = {0};
    size_t len;
    char *s = nested(64, &len);
    PB_CHECK(s != NULL);
    PB_EQ_INT(pb_json_validate(s, len, &c), 0);
    free(s);

    s = nested(65, &len);
    PB_EQ_INT(pb_json_validate(s, len, &c), PB_EPARSE);
    PB_EQ_STR(c.err_reason, "nesting too deep");
    PB_EQ_INT(c.err_offset, 64);
    free(s);

    /* objects count as levels too */
    const char obj3[] = "{\"a\":{\"b\":[1]}}";
    c = (struct pb_json_check){.max_depth = 3};
    PB_EQ_INT(pb_json_validate(obj3, strlen(obj3), &c), 0);
    c = (struct pb_json_check){.max_depth = 2};
    PB_EQ_INT(pb_json_validate(obj3, strlen(obj3), &c), PB_EPARSE);
    PB_EQ_INT(c.err_offset, 10);

    /* deep but allowed, across several words of the container stack */
    s = nested(1000, &len);
    c = (struct pb_json_check){.max_depth = 1000};
    PB_EQ_INT(pb_json_validate(s, len, &c), 0);
    free(s);

    /* a mix of objects and arrays closes in the right order */
    char mix[4096];
    size_t n = 0;
    for (int i = 0; i < 200; i++)
        n += (size_t)snprintf(mix + n, sizeof(mix) - n, i % 3 ? "[" : "{\"k\":");
    mix[n++] = '0';
    for (int i = 199; i >= 0; i--)
        mix[n++] = i % 3 ? ']' : '}';
    c = (struct pb_json_check){.max_depth = 200};
    PB_EQ_INT(pb_json_validate(mix, n, &c), 0);
    mix[n - 1] = ']'; /* the outermost is an object */
    PB_EQ_INT(pb_json_validate(mix, n, &c), PB_EPARSE);
    PB_EQ_INT(c.err_offset, n - 1);

    /* a huge max_depth is clamped, never overflows the stack */
    s = nested(5000, &len);
    c = (struct pb_json_check){.max_depth = 100000};
    PB_EQ_INT(pb_json_validate(s, len, &c), PB_EPARSE);
    PB_EQ_STR(c.err_reason, "nesting too deep");
    free(s);
}

static const struct json_case number_cases[] = {
    {DOC("9007199254740992"), 0, NULL, -1},
    {DOC("-9007199254740992"), 0, NULL, -1},
    {DOC("9007199254740993"), PB_EFIDELITY, "integer beyond 2^53", 0},
    {DOC("-9007199254740993"), PB_EFIDELITY, "integer beyond 2^53", 0},
    {DOC("10000000000000000"), PB_EFIDELITY, "integer beyond 2^53", 0},
    {DOC("12345678901234567890"), PB_EFIDELITY, "integer beyond 2^53", 0},
    {DOC("[1, 9007199254740993]"), PB_EFIDELITY, "integer beyond 2^53", 4},
    {DOC("{\"id\": -9007199254740993}"), PB_EFIDELITY, "integer beyond 2^53", 7},
    {DOC("0"), 0, NULL, -1},
    {DOC("-0"), 0, NULL, -1},
    {DOC("0.1"), 0, NULL, -1},
    {DOC("19.99"), 0, NULL, -1},
    {DOC("1.2345678901234567"), 0, NULL, -1},
    {DOC("1.23456789012345678"), PB_EFIDELITY, "significant digits", 0},
    {DOC("0.30000000000000004"), 0, NULL, -1},
    {DOC("0.30000000000000001"), PB_EFIDELITY, "significant digits", 0},
    {DOC("9007199254740993.0"), PB_EFIDELITY, "significant digits", 0},
    {DOC("9007199254740994.0"), 0, NULL, -1},
    {DOC("1.00000000000000000000001"), PB_EFIDELITY, "significant digits", 0},
    /* leading and trailing zeros of the mantissa are not significant */
    {DOC("0.000000000000000000001"), 0, NULL, -1},
    {DOC("100000000000000000000.0"), 0, NULL, -1},
    {DOC("0.10000000000000000000000"), 0, NULL, -1},
    {DOC("0.0000000000000000000000"), 0, NULL, -1},
    {DOC("1e16"), 0, NULL, -1},
    {DOC("1.5e300"), 0, NULL, -1},
    {DOC("1e-300"), 0, NULL, -1},
    {DOC("1.7976931348623157e308"), 0, NULL, -1},
    {DOC("2.2250738585072014e-308"), 0, NULL, -1},
    {DOC("5e-324"), 0, NULL, -1},
    {DOC("0e999999999999999999999"), 0, NULL, -1},
    {DOC("1e400"), PB_EFIDELITY, "too large", 0},
    {DOC("-1e400"), PB_EFIDELITY, "too large", 0},
    {DOC("1.7976931348623159e308"), PB_EFIDELITY, "too large", 0},
    {DOC("1e99999999999999999999"), PB_EFIDELITY, "too large", 0},
    {DOC("1e-400"), PB_EFIDELITY, "too small", 0},
    {DOC("4.9e-324"), PB_EFIDELITY, "significant digits", 0},
    {DOC("1.2345e-320"), PB_EFIDELITY, "significant digits", 0},
};

PB_TEST(exact_numbers)
{
    for (size_t i = 0; i < sizeof(number_cases) / sizeof(number_cases[0]); i++) {
        struct pb_json_check c = {.exact_numbers = true};
        check_case(&number_cases[i], &c, "number", i);
    }
    /* without the check, only the syntax matters */
    for (size_t i = 0; i < sizeof(number_cases) / sizeof(number_cases[0]); i++) {
        struct pb_json_check c = {0};
        struct json_case t = number_cases[i];
        t.code = 0;
        t.reason = NULL;
        t.offset = -1;
        check_case(&t, &c, "number (no check)", i);
    }
}

PB_TEST(null_check_struct)
{
    PB_EQ_INT(pb_json_validate("[1]", 3, NULL), 0);
    PB_EQ_INT(pb_json_validate("[1", 2, NULL), PB_EPARSE);
    /* exact_numbers is off without a struct */
    PB_EQ_INT(pb_json_validate("9007199254740993", 16, NULL), 0);
}

PB_TEST(success_clears_error)
{
    struct pb_json_check c = {.err_offset = 99, .err_reason = "stale"};
    PB_EQ_INT(pb_json_validate("{}", 2, &c), 0);
    PB_EQ_INT(c.err_offset, 0);
    PB_CHECK(c.err_reason == NULL);
}

PB_TEST(utf8_only)
{
    PB_CHECK(pb_utf8_valid("", 0));
    PB_CHECK(pb_utf8_valid(DOC("plain ascii, long enough for the word-at-a-time loop")));
    PB_CHECK(pb_utf8_valid(DOC("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 and more ascii")));
    PB_CHECK(pb_utf8_valid(DOC("\xf4\x8f\xbf\xbf")));
    PB_CHECK(pb_utf8_valid(DOC("\x00\x01\x7f")));
    PB_CHECK(!pb_utf8_valid(DOC("\xc0\xaf")));
    PB_CHECK(!pb_utf8_valid(DOC("\xed\xa0\x80")));
    PB_CHECK(!pb_utf8_valid(DOC("\xf4\x90\x80\x80")));
    PB_CHECK(!pb_utf8_valid(DOC("12345678\xe2\x82")));
    PB_CHECK(!pb_utf8_valid(DOC("\x80")));
    PB_CHECK(!pb_utf8_valid(DOC("abcdefghijklmnop\xfe")));
}

/* Walk every prefix of a valid document: each proper prefix is refused with
 * an offset inside it, and nothing reads past the end (ASan). */
PB_TEST(prefixes_are_refused)
{
    const char doc[] = "{\"id\":\"ord_123\",\"total_cents\":4999,\"tax\":1.25e1,"
                       "\"customer\":{\"email\":\"a@b.example\",\"name\":\"J\xc3\xb6rg \\u00e9\"},"
                       "\"items\":[{\"sku\":\"X\",\"qty\":2,\"gift\":false,\"note\":null}],"
                       "\"paid\":true}";
    size_t len = sizeof(doc) - 1;
    struct pb_json_check c = {.exact_numbers = true};
    PB_EQ_INT(pb_json_validate(doc, len, &c), 0);
    for (size_t n = 0; n < len; n++) {
        char *copy = malloc(n ? n : 1); /* exact size, so ASan sees any overread */
        PB_CHECK(copy != NULL);
        memcpy(copy, doc, n);
        int rc = pb_json_validate(copy, n, &c);
        if (rc != PB_EPARSE || c.err_offset > n)
            PB__FAIL("prefix %zu: rc %s offset %zu", n, pb_err_name(rc), c.err_offset);
        free(copy);
    }
}

int main(void)
{
    return pb_test_main();
}
