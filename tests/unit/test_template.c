/* test_template.c - template fields: literal text, {{ JQ }} parts with
 * braces and strings inside, what a part may give (strings, numbers) and
 * the errors for everything else. */
#include <stdlib.h>

#include "core/template.h"
#include "patchbay/pb_jq.h"
#include "pb_test.h"

static char *render(const char *text, const char *body, const char *meta, int *rc, char *why,
                    size_t whylen)
{
    struct pb_err err = {0};
    struct pb_template *t = pb_template_compile(text, &err);
    char *out = NULL;
    if (!t) {
        *rc = err.code ? err.code : -1;
        snprintf(why, whylen, "%s", err.msg);
        return NULL;
    }
    jv b, m = jv_null();
    PB_EQ_INT(pb_jq_parse(body, strlen(body), &b, NULL), 0);
    if (meta)
        PB_EQ_INT(pb_jq_parse(meta, strlen(meta), &m, NULL), 0);
    *rc = pb_template_render(t, b, m, &out, NULL, &err);
    snprintf(why, whylen, "%s", err.msg);
    jv_free(b);
    jv_free(m);
    pb_template_destroy(t);
    return out;
}

PB_TEST(parts_and_literals)
{
    static const struct {
        const char *text, *body, *want;
    } rows[] = {
        {"plain", "{}", "plain"},
        {"", "{}", ""},
        {"review.{{ .order_id }}", "{\"order_id\":\"A-1\"}", "review.A-1"},
        {"{{.n}}", "{\"n\":42}", "42"},
        {"{{.n}}", "{\"n\":1.5}", "1.5"},
        {"a{{.x}}b{{.y}}c", "{\"x\":\"1\",\"y\":2}", "a1b2c"},
        {"{{ {a: .x} | .a }}", "{\"x\":\"in\"}", "in"},
        {"{{ \"}}\" }}", "{}", "}}"},
        {"{{ .s + \"-\" + (.n | tostring) }}", "{\"s\":\"k\",\"n\":7}", "k-7"},
        {"{{ $meta.topic }}", "{}", "orders"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        int rc = 0;
        char why[PB_ERR_MSG_MAX];
        char *got =
            render(rows[i].text, rows[i].body, "{\"topic\":\"orders\"}", &rc, why, sizeof(why));
        if (rc)
            fprintf(stderr, "  %s: %s\n", rows[i].text, why);
        PB_EQ_INT(rc, 0);
        PB_EQ_STR(got, rows[i].want);
        free(got);
    }
}

PB_TEST(values_a_part_may_not_give)
{
    static const struct {
        const char *text, *body, *why;
    } rows[] = {
        {"{{ .o }}", "{\"o\":{}}", "gave an object"},
        {"{{ .a }}", "{\"a\":[1]}", "gave an array"},
        {"{{ .missing }}", "{}", "gave null"},
        {"{{ .b }}", "{\"b\":true}", "gave a boolean"},
        {"{{ empty }}", "{}", "gave no value"},
        {"{{ error(\"boom\") }}", "{}", "boom"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        int rc = 0;
        char why[PB_ERR_MSG_MAX];
        char *got = render(rows[i].text, rows[i].body, NULL, &rc, why, sizeof(why));
        PB_CHECK(rc != 0);
        PB_CHECK(got == NULL);
        PB_CONTAINS(why, rows[i].why);
    }
}

PB_TEST(compile_errors)
{
    static const char *const bad[] = {"{{ .a", "x {{ }} y", "{{ .a | }}", "{{ \"unclosed }}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct pb_err err = {0};
        struct pb_template *t = pb_template_compile(bad[i], &err);
        if (t)
            fprintf(stderr, "  compiled: %s\n", bad[i]);
        PB_CHECK(t == NULL);
        PB_CHECK(err.code != 0);
        pb_template_destroy(t);
    }
    struct pb_template *lit = pb_template_compile("no parts", NULL);
    PB_CHECK(lit && pb_template_is_literal(lit));
    pb_template_destroy(lit);
}

int main(void)
{
    return pb_test_main();
}
