/* test_conf.c - the configuration module: YAML loading and its limits,
 * interpolation, the strict value parsers, field-table decoding, error
 * positions, and that secrets never reach an error message. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "patchbay/pb_conf.h"
#include "pb_test.h"

static struct pb_conf_doc *load(const char *yaml, struct pb_err *err)
{
    pb_err_clear(err);
    return pb_conf_load_string("test.yaml", yaml, strlen(yaml), err);
}

/* Load yaml expecting failure; err holds the report. */
static void load_fails(const char *yaml, struct pb_err *err)
{
    struct pb_conf_doc *doc = load(yaml, err);
    PB_CHECK(doc == NULL);
    pb_conf_doc_destroy(doc);
    PB_EQ_INT(err->code, PB_ECONFIG);
}

/* A string of n copies of s. */
static char *repeat(const char *s, size_t n)
{
    size_t len = strlen(s);
    char *out = malloc(len * n + 1);
    if (!out)
        abort();
    for (size_t i = 0; i < n; i++)
        memcpy(out + i * len, s, len);
    out[len * n] = '\0';
    return out;
}

/* ---- value parsers -------------------------------------------------------- */

PB_TEST(duration_good)
{
    static const struct {
        const char *s;
        int64_t ms;
    } cases[] = {
        {"0", 0},
        {"0s", 0},
        {"500ms", 500},
        {"10s", 10000},
        {"10m", 600000},
        {"2h", 7200000},
        {"3d", 259200000},
        {"1h30m", 5400000},
        {"1d2h3m4s5ms", 86400000 + 7200000 + 180000 + 4000 + 5},
        {"1s500ms", 1500},
        {"007s", 7000},
        {"9223372036854775807ms", INT64_MAX},
        {"106751991167d25975807ms", INT64_MAX},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int64_t ms = -1;
        PB_EQ_INT(pb_parse_duration(cases[i].s, &ms), 0);
        PB_EQ_INT(ms, cases[i].ms);
    }
}

PB_TEST(duration_bad)
{
    static const char *const cases[] = {
        "",
        "5x",
        "5",
        "00",
        "10 s",
        " 10s",
        "10s ",
        "-5s",
        "+5s",
        "1.5s",
        "s",
        "ms",
        "5S",
        "5sec",
        "1h 30m",
        "30m1h",
        "1m1m",
        "5ms5s",
        "1h30",
        "5s\n",
        "0x10s",
        "9223372036854775808ms",    /* one past INT64_MAX */
        "106751991168d",            /* days overflow */
        "106751991167d25975808ms",  /* the sum overflows */
        "99999999999999999999999s", /* the digits overflow */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int64_t ms = 12345;
        int rc = pb_parse_duration(cases[i], &ms);
        if (rc != PB_EINVAL)
            PB__FAIL("duration \"%s\" accepted as %lld", cases[i], (long long)ms);
        PB_EQ_INT(ms, 12345); /* untouched on error */
    }
    int64_t ms;
    PB_EQ_INT(pb_parse_duration(NULL, &ms), PB_EINVAL);
}

PB_TEST(size_good_and_bad)
{
    static const struct {
        const char *s;
        uint64_t bytes;
    } good[] = {
        {"0", 0},
        {"1024", 1024},
        {"1B", 1},
        {"1KB", 1000},
        {"1MB", 1000000},
        {"5GB", 5000000000ull},
        {"2TB", 2000000000000ull},
        {"1KiB", 1024},
        {"1MiB", 1048576},
        {"3GiB", 3ull << 30},
        {"16777215TiB", 16777215ull << 40},
        {"18446744073709551615", UINT64_MAX},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        uint64_t b = 7;
        PB_EQ_INT(pb_parse_size(good[i].s, &b), 0);
        if (b != good[i].bytes)
            PB__FAIL("size \"%s\": got %" PRIu64 ", want %" PRIu64, good[i].s, b, good[i].bytes);
    }
    static const char *const bad[] = {
        "",
        "1 MiB",
        "1mb",
        "1Mb",
        "1.5MiB",
        "-1",
        "+1",
        "MiB",
        "1KiBB",
        "1K",
        "1kib",
        " 1",
        "1 ",
        "1PB",
        "18446744073709551616", /* overflow */
        "16777216TiB",          /* 2^64 */
        "18446744073709552KB",  /* overflow by the unit */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t b = 7;
        if (pb_parse_size(bad[i], &b) != PB_EINVAL)
            PB__FAIL("size \"%s\" accepted as %" PRIu64, bad[i], b);
        PB_EQ_INT(b, 7);
    }
}

PB_TEST(rate_good_and_bad)
{
    struct pb_rate r;
    PB_EQ_INT(pb_parse_rate("100/s", &r), 0);
    PB_EQ_INT(r.count, 100);
    PB_EQ_INT(r.period_ms, 1000);
    PB_EQ_INT(pb_parse_rate("5/m", &r), 0);
    PB_EQ_INT(r.count, 5);
    PB_EQ_INT(r.period_ms, 60000);
    PB_EQ_INT(pb_parse_rate("1/h", &r), 0);
    PB_EQ_INT(r.count, 1);
    PB_EQ_INT(r.period_ms, 3600000);

    static const char *const bad[] = {
        "",
        "0/s",
        "100/ms",
        "100/d",
        "100",
        "/s",
        "100/",
        "100 /s",
        "100/ s",
        "-1/s",
        "+1/s",
        "100/s ",
        "100/S",
        "1.5/s",
        "100/sec",
        "100//s",
        "18446744073709551616/s",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        r = (struct pb_rate){7, 7};
        if (pb_parse_rate(bad[i], &r) != PB_EINVAL)
            PB__FAIL("rate \"%s\" accepted", bad[i]);
        PB_EQ_INT(r.count, 7);
    }
}

PB_TEST(int_good_and_bad)
{
    static const struct {
        const char *s;
        int64_t v;
    } good[] = {
        {"0", 0},
        {"-0", 0},
        {"42", 42},
        {"-42", -42},
        {"007", 7},
        {"9223372036854775807", INT64_MAX},
        {"-9223372036854775808", INT64_MIN},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        int64_t v = 99;
        PB_EQ_INT(pb_parse_int(good[i].s, &v), 0);
        PB_EQ_INT(v, good[i].v);
    }
    static const char *const bad[] = {
        "",
        "-",
        "+1",
        " 1",
        "1 ",
        "1.0",
        "0x10",
        "1e3",
        "--1",
        "1_000",
        "one",
        "9223372036854775808",
        "-9223372036854775809",
        "99999999999999999999",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int64_t v = 99;
        if (pb_parse_int(bad[i], &v) != PB_EINVAL)
            PB__FAIL("int \"%s\" accepted as %lld", bad[i], (long long)v);
        PB_EQ_INT(v, 99);
    }
}

PB_TEST(bool_good_and_bad)
{
    bool b = false;
    PB_EQ_INT(pb_parse_bool("true", &b), 0);
    PB_CHECK(b);
    PB_EQ_INT(pb_parse_bool("false", &b), 0);
    PB_CHECK(!b);
    static const char *const bad[] = {"",  "True", "TRUE",  "yes",    "no", "on",
                                      "1", "0",    "true ", " false", "t"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        b = true;
        if (pb_parse_bool(bad[i], &b) != PB_EINVAL)
            PB__FAIL("bool \"%s\" accepted", bad[i]);
        PB_CHECK(b);
    }
}

/* ---- loading -------------------------------------------------------------- */

PB_TEST(load_tree_positions_and_parents)
{
    struct pb_err err;
    struct pb_conf_doc *doc = load("server:\n"
                                   "  listen: 127.0.0.1:8080\n"
                                   "  tags: [a, 'b c']\n"
                                   "empty:\n"
                                   "tilde: ~\n"
                                   "quoted: \"null\"\n",
                                   &err);
    PB_CHECK(doc != NULL);
    if (!doc)
        return;
    const struct pb_node *root = pb_conf_root(doc);
    PB_EQ_INT(root->type, PB_NODE_MAP);
    PB_EQ_INT(root->n, 4);
    PB_CHECK(root->parent == NULL);
    PB_EQ_STR(root->file, "test.yaml");

    const struct pb_node *server = pb_node_get(root, "server");
    PB_CHECK(server && server->type == PB_NODE_MAP);
    PB_CHECK(server->parent == root);
    const struct pb_node *listen = pb_node_get(server, "listen");
    PB_CHECK(listen && listen->type == PB_NODE_SCALAR);
    PB_EQ_STR(listen->str, "127.0.0.1:8080");
    PB_EQ_INT(listen->len, 14);
    PB_EQ_INT(listen->line, 2);
    PB_EQ_INT(listen->col, 11);
    PB_CHECK(!listen->quoted);
    PB_CHECK(!listen->interpolated);
    PB_EQ_INT(server->keys[0]->line, 2);
    PB_EQ_INT(server->keys[0]->col, 3);
    PB_CHECK(server->keys[0]->parent == server);

    const struct pb_node *tags = pb_node_get(server, "tags");
    PB_CHECK(tags && tags->type == PB_NODE_SEQ && tags->n == 2 && tags->keys == NULL);
    if (tags && tags->n == 2) {
        PB_EQ_STR(tags->vals[1]->str, "b c");
        PB_CHECK(tags->vals[1]->quoted);
        PB_EQ_INT(tags->vals[1]->line, 3);
        PB_EQ_INT(tags->vals[1]->col, 13);
        PB_CHECK(tags->vals[1]->parent == tags);
    }
    const struct pb_node *empty = pb_node_get(root, "empty");
    PB_CHECK(empty && empty->type == PB_NODE_NULL);
    const struct pb_node *tilde = pb_node_get(root, "tilde");
    PB_CHECK(tilde && tilde->type == PB_NODE_NULL);
    const struct pb_node *quoted = pb_node_get(root, "quoted");
    PB_CHECK(quoted && quoted->type == PB_NODE_SCALAR && quoted->quoted);
    PB_EQ_STR(quoted ? quoted->str : NULL, "null");

    PB_CHECK(pb_node_get(root, "missing") == NULL);
    PB_CHECK(pb_node_get(listen, "x") == NULL); /* not a map */
    PB_CHECK(pb_node_get(NULL, "x") == NULL);
    PB_EQ_STR(pb_node_type_name(PB_NODE_SEQ), "sequence");
    PB_EQ_STR(pb_node_type_name(PB_NODE_MAP), "map");
    pb_conf_doc_destroy(doc);
    pb_conf_doc_destroy(NULL);
}

PB_TEST(load_file_and_missing_file)
{
    struct pb_err err;
    pb_err_clear(&err);
    struct pb_conf_doc *doc = pb_conf_load_file("data/conf/basic.yaml", &err);
    PB_CHECK(doc != NULL);
    if (doc) {
        const struct pb_node *root = pb_conf_root(doc);
        const struct pb_node *t = pb_node_get(pb_node_get(root, "server"), "timeout");
        PB_CHECK(t != NULL);
        if (t) {
            PB_EQ_STR(t->file, "data/conf/basic.yaml");
            PB_EQ_INT(t->line, 4);
            PB_EQ_INT(t->col, 12);
        }
        PB_EQ_INT(pb_node_get(root, "tags")->n, 2);
        pb_conf_doc_destroy(doc);
    }

    pb_err_clear(&err);
    doc = pb_conf_load_file("data/conf/no-such-file.yaml", &err);
    PB_CHECK(doc == NULL);
    PB_EQ_INT(err.code, PB_EIO);
    PB_CONTAINS(err.msg, "no-such-file.yaml");

    pb_err_clear(&err);
    doc = pb_conf_load_file("data/conf", &err);
    PB_CHECK(doc == NULL);
    PB_EQ_INT(err.code, PB_EIO);
}

PB_TEST(empty_document_is_a_null_root)
{
    struct pb_err err;
    struct pb_conf_doc *doc = load("# only a comment\n", &err);
    PB_CHECK(doc != NULL);
    PB_CHECK(doc && pb_conf_root(doc) && pb_conf_root(doc)->type == PB_NODE_NULL);
    pb_conf_doc_destroy(doc);
}

PB_TEST(syntax_error_has_position)
{
    struct pb_err err;
    load_fails("a: 1\nb: [1, 2\nc: 3\n", &err);
    PB_EQ_STR(err.file, "test.yaml");
    PB_CHECK(err.line >= 2);
    PB_CONTAINS(err.msg, "YAML syntax error");

    load_fails("a:\n\tb: 1\n", &err); /* a tab for indentation */
    PB_EQ_INT(err.line, 2);

    load_fails("a: \"\xff\xfe\"\n", &err); /* not UTF-8 */
    PB_EQ_INT(err.line, 1);
    PB_EQ_INT(err.col, 5);
}

PB_TEST(duplicate_keys_point_at_the_second)
{
    struct pb_err err;
    load_fails("a: 1\nb: 2\na: 3\n", &err);
    PB_CONTAINS(err.msg, "duplicate key \"a\"");
    PB_EQ_INT(err.line, 3);
    PB_EQ_INT(err.col, 1);

    load_fails("outer:\n  x: 1\n  y: {p: 1, p: 2}\n", &err);
    PB_CONTAINS(err.msg, "duplicate key \"p\"");
    PB_EQ_INT(err.line, 3);
    PB_EQ_INT(err.col, 13);

    /* Quoting does not make a key different. */
    load_fails("a: 1\n'a': 2\n", &err);
    PB_EQ_INT(err.line, 2);

    /* A big map takes the sorting path; the earliest repeat is reported. */
    char yaml[8192];
    size_t o = 0;
    for (int i = 0; i < 200; i++)
        o += (size_t)snprintf(yaml + o, sizeof(yaml) - o, "k%d: %d\n", i, i);
    o += (size_t)snprintf(yaml + o, sizeof(yaml) - o, "k150: x\nk7: x\n");
    load_fails(yaml, &err);
    PB_CONTAINS(err.msg, "duplicate key \"k150\"");
    PB_EQ_INT(err.line, 201);

    /* ...and a big map without repeats loads. */
    yaml[0] = '\0';
    o = 0;
    for (int i = 0; i < 200; i++)
        o += (size_t)snprintf(yaml + o, sizeof(yaml) - o, "k%d: %d\n", i, i);
    struct pb_conf_doc *doc = load(yaml, &err);
    PB_CHECK(doc != NULL);
    PB_EQ_INT(doc ? pb_conf_root(doc)->n : 0, 200);
    pb_conf_doc_destroy(doc);
}

PB_TEST(yaml_features_refused)
{
    struct pb_err err;
    load_fails("a: &x 1\nb: *x\n", &err);
    PB_CONTAINS(err.msg, "anchors");
    PB_EQ_INT(err.line, 1);
    PB_EQ_INT(err.col, 4);

    load_fails("a: *x\n", &err);
    PB_CONTAINS(err.msg, "aliases");
    PB_EQ_INT(err.line, 1);

    load_fails("base: &b {x: 1}\n", &err);
    PB_CONTAINS(err.msg, "anchors");

    load_fails("a: !!str 1\n", &err);
    PB_CONTAINS(err.msg, "tags");
    load_fails("a: !custom {x: 1}\n", &err);
    PB_CONTAINS(err.msg, "tags");

    load_fails("a: 1\n---\nb: 2\n", &err);
    PB_CONTAINS(err.msg, "second YAML document");
    PB_EQ_INT(err.line, 2);

    load_fails("? [a, b]\n: 1\n", &err);
    PB_CONTAINS(err.msg, "map keys must be");
    load_fails("{{a: 1}: 2}\n", &err);
    PB_CONTAINS(err.msg, "map keys must be");
}

PB_TEST(depth_limit)
{
    struct pb_err err;
    char *open64 = repeat("[", 64), *close64 = repeat("]", 64);
    char *open65 = repeat("[", 65), *close65 = repeat("]", 65);
    char yaml[512];

    snprintf(yaml, sizeof(yaml), "%s%s\n", open64, close64);
    struct pb_conf_doc *doc = load(yaml, &err);
    PB_CHECK(doc != NULL);
    pb_conf_doc_destroy(doc);

    snprintf(yaml, sizeof(yaml), "%s%s\n", open65, close65);
    load_fails(yaml, &err);
    PB_CONTAINS(err.msg, "deeper than 64");
    PB_EQ_INT(err.line, 1);
    PB_EQ_INT(err.col, 65);

    free(open64);
    free(close64);
    free(open65);
    free(close65);
}

PB_TEST(node_and_size_limits)
{
    struct pb_err err;
    /* A sequence of 99,999 items is 100,000 nodes: allowed. */
    char *items = repeat("0,", 99999);
    size_t len = strlen(items);
    char *yaml = malloc(len + 4);
    PB_CHECK(yaml != NULL);
    if (!yaml) {
        free(items);
        return;
    }
    snprintf(yaml, len + 4, "[%.*s]", (int)len - 1, items);
    struct pb_conf_doc *doc = load(yaml, &err);
    PB_CHECK(doc != NULL);
    PB_EQ_INT(doc ? pb_conf_root(doc)->n : 0, 99999);
    pb_conf_doc_destroy(doc);
    /* One more is too many. */
    snprintf(yaml, len + 4, "[%s0]", items);
    load_fails(yaml, &err);
    PB_CONTAINS(err.msg, "more than 100000");
    free(yaml);
    free(items);

    /* 4 MiB is the most a file may hold. */
    size_t big = ((size_t)4 << 20) + 1;
    char *text = malloc(big);
    PB_CHECK(text != NULL);
    if (!text)
        return;
    memset(text, '#', big);
    struct pb_conf_doc *d = pb_conf_load_string("big.yaml", text, big, &err);
    PB_CHECK(d == NULL);
    PB_EQ_INT(err.code, PB_ECONFIG);
    PB_CONTAINS(err.msg, "4 MiB");
    text[0] = '\n';
    d = pb_conf_load_string("big.yaml", text, big - 1, &err); /* all comment: fine */
    PB_CHECK(d != NULL);
    pb_conf_doc_destroy(d);
    free(text);
}

/* ---- interpolation -------------------------------------------------------- */

PB_TEST(interpolation)
{
    struct pb_err err;
    setenv("PBT_A", "hello", 1);
    setenv("PBT_EMPTY", "", 1);
    unsetenv("PBT_UNSET");
    struct pb_conf_doc *doc = load("a: ${PBT_A}\n"
                                   "b: x${PBT_A}-${PBT_A}y\n"
                                   "c: ${PBT_UNSET:-fallback}\n"
                                   "d: $$HOME and $${PBT_A}\n"
                                   "e: 'cost $5, $'\n"
                                   "f: ${PBT_EMPTY}\n"
                                   "g: ${PBT_EMPTY:-used}\n"
                                   "h: ${PBT_A:-unused}\n"
                                   "i: ${PBT_UNSET:-}\n"
                                   "${PBT_A}: keys are literal\n"
                                   "j: \"${PBT_A}\"\n",
                                   &err);
    PB_CHECK(doc != NULL);
    if (!doc) {
        fprintf(stderr, "  %s\n", err.msg);
        return;
    }
    const struct pb_node *r = pb_conf_root(doc);
    PB_EQ_STR(pb_node_get(r, "a")->str, "hello");
    PB_CHECK(pb_node_get(r, "a")->interpolated);
    PB_EQ_INT(pb_node_get(r, "a")->len, 5);
    PB_EQ_STR(pb_node_get(r, "b")->str, "xhello-helloy");
    PB_CHECK(pb_node_get(r, "b")->interpolated);
    PB_EQ_STR(pb_node_get(r, "c")->str, "fallback");
    PB_CHECK(!pb_node_get(r, "c")->interpolated); /* the text came from the file */
    PB_EQ_STR(pb_node_get(r, "d")->str, "$HOME and ${PBT_A}");
    PB_CHECK(!pb_node_get(r, "d")->interpolated);
    PB_EQ_STR(pb_node_get(r, "e")->str, "cost $5, $");
    PB_EQ_STR(pb_node_get(r, "f")->str, "");
    PB_EQ_INT(pb_node_get(r, "f")->type, PB_NODE_SCALAR);
    PB_CHECK(pb_node_get(r, "f")->interpolated);
    PB_EQ_STR(pb_node_get(r, "g")->str, "used");
    PB_EQ_STR(pb_node_get(r, "h")->str, "hello");
    PB_EQ_STR(pb_node_get(r, "i")->str, "");
    PB_CHECK(pb_node_get(r, "${PBT_A}") != NULL);
    PB_EQ_STR(pb_node_get(r, "j")->str, "hello");
    pb_conf_doc_destroy(doc);
}

PB_TEST(interpolation_errors)
{
    struct pb_err err;
    unsetenv("PBT_UNSET");
    setenv("PBT_A", "hello", 1);

    load_fails("a: 1\nkey:   pre-${PBT_UNSET}-post\n", &err);
    PB_CONTAINS(err.msg, "environment variable \"PBT_UNSET\" is not set");
    PB_EQ_STR(err.file, "test.yaml");
    PB_EQ_INT(err.line, 2);
    PB_EQ_INT(err.col, 8);

    load_fails("a: ${PBT_A\n", &err);
    PB_CONTAINS(err.msg, "unterminated");
    PB_EQ_INT(err.line, 1);
    PB_EQ_INT(err.col, 4);

    load_fails("a: x${\n", &err);
    PB_CONTAINS(err.msg, "unterminated");

    static const char *const bad_refs[] = {"a: ${}\n",        "a: ${1A}\n",
                                           "a: ${A-B}\n",     "a: ${PBT_A:x}\n",
                                           "a: ${ PBT_A }\n", "a: ${PBT_A-default}\n"};
    for (size_t i = 0; i < sizeof(bad_refs) / sizeof(bad_refs[0]); i++) {
        load_fails(bad_refs[i], &err);
        PB_CONTAINS(err.msg, "bad variable reference");
    }
    load_fails("a: ${PBT_UNSET:-${PBT_A}}\n", &err);
    PB_CONTAINS(err.msg, "nested");
}

/* ---- decoding ------------------------------------------------------------- */

struct t_retry {
    int64_t max_attempts;
    int64_t initial;
};

struct t_conf {
    char *name;
    char *token;
    bool enabled;
    int64_t count;
    int64_t timeout;
    uint64_t max_body;
    struct pb_rate limit;
    int format;
    struct pb_strlist tags;
    struct pb_strlist hosts;
    struct pb_strmap headers;
    struct t_retry retry;
    const struct pb_node *extra;
    int private_byte; /* not in the table: decode must leave it alone */
};

static const char *const formats[] = {"json", "raw", NULL};

static const struct pb_field retry_fields[] = {
    {.name = "max_attempts",
     .type = PB_F_INT,
     .offset = offsetof(struct t_retry, max_attempts),
     .def = "12",
     .min = 1,
     .max = 1000},
    {.name = "initial",
     .type = PB_F_DURATION,
     .offset = offsetof(struct t_retry, initial),
     .def = "500ms"},
    {0},
};

#define T_OFF(f) offsetof(struct t_conf, f)
static const struct pb_field t_fields[] = {
    {.name = "name", .type = PB_F_STR, .offset = T_OFF(name), .flags = PB_FIELD_REQUIRED},
    {.name = "token", .type = PB_F_SECRET, .offset = T_OFF(token)},
    {.name = "enabled", .type = PB_F_BOOL, .offset = T_OFF(enabled), .def = "true"},
    {.name = "count", .type = PB_F_INT, .offset = T_OFF(count), .def = "3", .min = 1, .max = 10},
    {.name = "timeout", .type = PB_F_DURATION, .offset = T_OFF(timeout), .def = "30s"},
    {.name = "max_body", .type = PB_F_SIZE, .offset = T_OFF(max_body), .def = "1MiB"},
    {.name = "limit", .type = PB_F_RATE, .offset = T_OFF(limit)},
    {.name = "format",
     .type = PB_F_ENUM,
     .offset = T_OFF(format),
     .def = "raw",
     .choices = formats},
    {.name = "tags", .type = PB_F_STRLIST, .offset = T_OFF(tags)},
    {.name = "hosts", .type = PB_F_STRLIST, .offset = T_OFF(hosts), .def = "[a.example, b]"},
    {.name = "headers", .type = PB_F_STRMAP, .offset = T_OFF(headers)},
    {.name = "retry", .type = PB_F_OBJECT, .offset = T_OFF(retry), .sub = retry_fields},
    {.name = "extra", .type = PB_F_NODE, .offset = T_OFF(extra)},
    {0},
};

/* Load yaml and decode its root (or the map at key `at` if given). */
static int decode_yaml(const char *yaml, const struct pb_field *fields, void *out,
                       struct pb_err *err, struct pb_conf_doc **docp)
{
    struct pb_conf_doc *doc = load(yaml, err);
    *docp = doc;
    if (!doc) {
        fprintf(stderr, "  unexpected load error: %s\n", err->msg);
        return -100;
    }
    return pb_conf_decode(pb_conf_root(doc), fields, out, err);
}

PB_TEST(decode_everything)
{
    struct pb_err err;
    struct pb_conf_doc *doc;
    struct t_conf c;
    memset(&c, 0x5a, sizeof(c)); /* decode must not trust what was there */
    c.private_byte = 77;
    int rc = decode_yaml("name: orders\n"
                         "token: hunter2\n"
                         "enabled: false\n"
                         "count: 10\n"
                         "timeout: 1h30m\n"
                         "max_body: 512KiB\n"
                         "limit: 100/s\n"
                         "format: json\n"
                         "tags: [x, 'y z']\n"
                         "hosts: only.example\n"
                         "headers: {X-A: '1', X-B: two}\n"
                         "retry: {max_attempts: 5}\n"
                         "extra: [1, {any: shape}]\n",
                         t_fields, &c, &err, &doc);
    PB_EQ_INT(rc, 0);
    if (rc)
        fprintf(stderr, "  %s\n", err.msg);
    PB_EQ_STR(c.name, "orders");
    PB_EQ_STR(c.token, "hunter2");
    PB_CHECK(!c.enabled);
    PB_EQ_INT(c.count, 10);
    PB_EQ_INT(c.timeout, 5400000);
    PB_EQ_INT(c.max_body, 512 * 1024);
    PB_EQ_INT(c.limit.count, 100);
    PB_EQ_INT(c.limit.period_ms, 1000);
    PB_EQ_INT(c.format, 0);
    PB_EQ_INT(c.tags.n, 2);
    if (c.tags.n == 2) {
        PB_EQ_STR(c.tags.items[0], "x");
        PB_EQ_STR(c.tags.items[1], "y z");
    }
    PB_EQ_INT(c.hosts.n, 1); /* a scalar is a one-item list */
    if (c.hosts.n == 1)
        PB_EQ_STR(c.hosts.items[0], "only.example");
    PB_EQ_INT(c.headers.n, 2);
    PB_EQ_STR(pb_strmap_get(&c.headers, "X-B"), "two");
    PB_EQ_STR(pb_strmap_get(&c.headers, "X-A"), "1");
    PB_CHECK(pb_strmap_get(&c.headers, "X-C") == NULL);
    PB_EQ_INT(c.retry.max_attempts, 5);
    PB_EQ_INT(c.retry.initial, 500); /* default inside a present object */
    PB_CHECK(c.extra && c.extra->type == PB_NODE_SEQ && c.extra->n == 2);
    PB_EQ_INT(c.private_byte, 77);
    pb_conf_free(t_fields, &c);
    PB_CHECK(c.name == NULL && c.tags.items == NULL && c.headers.n == 0);
    pb_conf_doc_destroy(doc);
}

PB_TEST(decode_defaults)
{
    struct pb_err err;
    struct pb_conf_doc *doc;
    struct t_conf c;
    memset(&c, 0x5a, sizeof(c));
    /* A key with no value counts as absent. */
    int rc = decode_yaml("name: n\ntimeout:\nretry:\n", t_fields, &c, &err, &doc);
    PB_EQ_INT(rc, 0);
    PB_CHECK(c.token == NULL);
    PB_CHECK(c.enabled);
    PB_EQ_INT(c.count, 3);
    PB_EQ_INT(c.timeout, 30000);
    PB_EQ_INT(c.max_body, 1048576);
    PB_EQ_INT(c.limit.count, 0);
    PB_EQ_INT(c.limit.period_ms, 0);
    PB_EQ_INT(c.format, 1);
    PB_EQ_INT(c.tags.n, 0);
    PB_CHECK(c.tags.items == NULL);
    PB_EQ_INT(c.hosts.n, 2); /* list default written as YAML */
    if (c.hosts.n == 2) {
        PB_EQ_STR(c.hosts.items[0], "a.example");
        PB_EQ_STR(c.hosts.items[1], "b");
    }
    PB_EQ_INT(c.headers.n, 0);
    PB_EQ_INT(c.retry.max_attempts, 12); /* absent object: defaults, recursively */
    PB_EQ_INT(c.retry.initial, 500);
    PB_CHECK(c.extra == NULL);
    pb_conf_free(t_fields, &c);
    pb_conf_doc_destroy(doc);

    /* A NULL node means "all defaults"; required keys are still required. */
    struct t_retry r = {-1, -1};
    PB_EQ_INT(pb_conf_decode(NULL, retry_fields, &r, &err), 0);
    PB_EQ_INT(r.max_attempts, 12);
    PB_EQ_INT(r.initial, 500);
    memset(&c, 0, sizeof(c));
    PB_EQ_INT(pb_conf_decode(NULL, t_fields, &c, &err), PB_ECONFIG);
    PB_CONTAINS(err.msg, "missing required key \"name\"");
    pb_conf_free(t_fields, &c);
}

struct t_outer {
    struct {
        char *key;
        int64_t level;
    } ordering;
};
static const struct pb_field t_ordering_fields[] = {
    {.name = "key", .type = PB_F_STR, .offset = 0, .flags = PB_FIELD_REQUIRED},
    {.name = "level", .type = PB_F_INT, .offset = sizeof(char *), .def = "4"},
    {0},
};
static const struct pb_field t_outer_fields[] = {
    {.name = "ordering", .type = PB_F_OBJECT, .offset = 0, .sub = t_ordering_fields},
    {0},
};

PB_TEST(decode_required)
{
    struct pb_err err;
    struct pb_conf_doc *doc;
    struct t_conf c;

    /* missing at the top: points at the map */
    int rc = decode_yaml("count: 2\ntimeout: 1s\n", t_fields, &c, &err, &doc);
    PB_EQ_INT(rc, PB_ECONFIG);
    PB_EQ_STR(err.msg, "missing required key \"name\" at the top level");
    PB_EQ_INT(err.line, 1);
    PB_EQ_INT(err.col, 1);
    pb_conf_free(t_fields, &c);
    pb_conf_doc_destroy(doc);

    /* present with no value */
    rc = decode_yaml("count: 2\nname:\n", t_fields, &c, &err, &doc);
    PB_EQ_INT(rc, PB_ECONFIG);
    PB_CONTAINS(err.msg, "\"name\" has no value");
    PB_EQ_INT(err.line, 2);
    pb_conf_free(t_fields, &c);
    pb_conf_doc_destroy(doc);

    /* A required key inside an optional object binds only when it is given. */
    struct t_outer o;
    rc = decode_yaml("{}\n", t_outer_fields, &o, &err, &doc);
    PB_EQ_INT(rc, 0);
    PB_CHECK(o.ordering.key == NULL);
    PB_EQ_INT(o.ordering.level, 4);
    pb_conf_free(t_outer_fields, &o);
    pb_conf_doc_destroy(doc);

    rc = decode_yaml("ordering:\n  level: 2\n", t_outer_fields, &o, &err, &doc);
    PB_EQ_INT(rc, PB_ECONFIG);
    PB_EQ_STR(err.msg, "missing required key \"key\" in \"ordering\"");
    PB_EQ_INT(err.line, 2);
    PB_EQ_INT(err.col, 3);
    pb_conf_free(t_outer_fields, &o);
    pb_conf_doc_destroy(doc);

    rc = decode_yaml("ordering: {key: .id}\n", t_outer_fields, &o, &err, &doc);
    PB_EQ_INT(rc, 0);
    PB_EQ_STR(o.ordering.key, ".id");
    pb_conf_free(t_outer_fields, &o);
    pb_conf_doc_destroy(doc);
}

PB_TEST(error_positions_exact)
{
    struct pb_err err;
    struct pb_conf_doc *doc;
    struct t_outer o;
    const char *yaml = "# leading comment\n"
                       "ordering:\n"
                       "  key: .id\n"
                       "  levle: 3\n";
    int rc = decode_yaml(yaml, t_outer_fields, &o, &err, &doc);
    PB_EQ_INT(rc, PB_ECONFIG);
    PB_EQ_STR(err.file, "test.yaml");
    PB_EQ_INT(err.line, 4);
    PB_EQ_INT(err.col, 3);
    PB_EQ_STR(err.msg, "unknown key \"levle\" in \"ordering\": did you mean \"level\"? "
                       "(expected one of: key, level)");
    pb_conf_free(t_outer_fields, &o);
    pb_conf_doc_destroy(doc);

    struct t_conf c;
    rc = decode_yaml("name: x\n"
                     "retry:\n"
                     "  max_attempts: 3\n"
                     "  initial:    5x\n",
                     t_fields, &c, &err, &doc);
    PB_EQ_INT(rc, PB_ECONFIG);
    PB_EQ_INT(err.line, 4);
    PB_EQ_INT(err.col, 15);
    PB_EQ_STR(err.msg, "bad duration \"5x\" for \"initial\": expected a number with a unit ms, "
                       "s, m, h or d (e.g. 500ms, 10m, 3d, 1h30m)");
    char line[PB_ERR_MSG_MAX + 64];
    PB_CONTAINS(pb_err_format(&err, line, sizeof(line)), "test.yaml:4:15: bad duration");
    pb_conf_free(t_fields, &c);
    pb_conf_doc_destroy(doc);

    /* From a real file: file name, line and column of the value. */
    doc = pb_conf_load_file("data/conf/bad_value.yaml", &err);
    PB_CHECK(doc != NULL);
    if (doc) {
        static const struct pb_field srv[] = {
            {.name = "listen", .type = PB_F_STR, .offset = 0},
            {.name = "timeout", .type = PB_F_DURATION, .offset = sizeof(char *)},
            {0},
        };
        struct {
            char *listen;
            int64_t timeout;
        } s;
        rc = pb_conf_decode(pb_node_get(pb_conf_root(doc), "server"), srv, &s, &err);
        PB_EQ_INT(rc, PB_ECONFIG);
        PB_EQ_STR(err.file, "data/conf/bad_value.yaml");
        PB_EQ_INT(err.line, 3);
        PB_EQ_INT(err.col, 12);
        PB_CONTAINS(err.msg, "\"30 s\"");
        pb_conf_free(srv, &s);
        pb_conf_doc_destroy(doc);
    }
}

PB_TEST(decode_value_errors)
{
    static const struct {
        const char *yaml;
        const char *want;
        int line, col;
    } cases[] = {
        {"name: x\ncount: 0\n", "\"count\" must be between 1 and 10, got \"0\"", 2, 8},
        {"name: x\ncount: 11\n", "\"count\" must be between 1 and 10", 2, 8},
        {"name: x\ncount: 1.5\n", "bad integer \"1.5\" for \"count\"", 2, 8},
        {"name: x\ncount: 99999999999999999999\n", "is too large", 2, 8},
        {"name: x\nenabled: yes\n", "bad boolean \"yes\" for \"enabled\": expected true or false",
         2, 10},
        {"name: x\nmax_body: 1 MiB\n", "bad size \"1 MiB\" for \"max_body\"", 2, 11},
        {"name: x\nlimit: 0/s\n", "bad rate \"0/s\" for \"limit\"", 2, 8},
        {"name: x\nformat: jsno\n",
         "bad value \"jsno\" for \"format\": expected one of: json, raw (did you mean \"json\"?)",
         2, 9},
        {"name: x\nformat: xml\n", "bad value \"xml\" for \"format\": expected one of: json, raw",
         2, 9},
        {"name: x\nretry: [1]\n", "expected a map for \"retry\", got a sequence", 2, 8},
        {"name: x\nretry: 3\n", "expected a map for \"retry\", got a scalar", 2, 8},
        {"name: x\nretry: {max_attempts: 0}\n", "\"max_attempts\" must be between 1 and 1000", 2,
         23},
        {"name: {a: 1}\n", "expected a string for \"name\", got a map", 1, 7},
        {"name: x\ntags: {a: b}\n", "expected a list of strings for \"tags\", got a map", 2, 7},
        {"name: x\ntags: [a, [b]]\n", "expected a string in the list \"tags\", got a sequence", 2,
         11},
        {"name: x\nheaders: [a]\n", "expected a map of strings for \"headers\", got a sequence", 2,
         10},
        {"name: x\nheaders: {X-A: [1]}\n",
         "expected a string for \"X-A\" in \"headers\", got a sequence", 2, 16},
        {"name: \"a\\0b\"\n", "contains a NUL character", 1, 7},
        {"name: x\nnmae: y\n",
         "unknown key \"nmae\" at the top level: did you mean \"name\"? (expected one of: name, "
         "token, enabled, count, timeout, max_body, limit, format, tags, hosts, headers, retry, "
         "extra)",
         2, 1},
        {"name: x\nzzz: y\n", "unknown key \"zzz\" at the top level (expected one of:", 2, 1},
        {"- name: x\n", "expected a map at the top level, got a sequence", 1, 1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct pb_err err;
        struct pb_conf_doc *doc;
        struct t_conf c;
        int rc = decode_yaml(cases[i].yaml, t_fields, &c, &err, &doc);
        if (rc != PB_ECONFIG || !strstr(err.msg, cases[i].want) || err.line != cases[i].line ||
            err.col != cases[i].col)
            PB__FAIL("case %zu: rc %d at %d:%d \"%s\"; want %d:%d \"%s\"", i, rc, err.line, err.col,
                     err.msg, cases[i].line, cases[i].col, cases[i].want);
        pb__checks++;
        pb_conf_free(t_fields, &c);
        pb_conf_doc_destroy(doc);
    }
}

PB_TEST(nested_path_in_messages)
{
    struct pb_err err;
    struct pb_conf_doc *doc = load("pipelines:\n"
                                   "  shop:\n"
                                   "    outputs:\n"
                                   "      payments:\n"
                                   "        http:\n"
                                   "          retyr: {}\n"
                                   "    process:\n"
                                   "      - map: 3\n",
                                   &err);
    PB_CHECK(doc != NULL);
    if (!doc)
        return;
    const struct pb_node *root = pb_conf_root(doc);
    const struct pb_node *shop = pb_node_get(pb_node_get(root, "pipelines"), "shop");
    const struct pb_node *http =
        pb_node_get(pb_node_get(pb_node_get(shop, "outputs"), "payments"), "http");
    struct t_retry common;
    struct t_outer own;
    int rc = pb_conf_decode2(http, retry_fields, &common, t_outer_fields, &own, &err);
    PB_EQ_INT(rc, PB_ECONFIG);
    PB_EQ_STR(err.msg, "unknown key \"retyr\" in \"pipelines.shop.outputs.payments.http\" "
                       "(expected one of: max_attempts, initial, ordering)");
    PB_EQ_INT(err.line, 6);
    PB_EQ_INT(err.col, 11);
    pb_conf_free(retry_fields, &common);
    pb_conf_free(t_outer_fields, &own);

    const struct pb_node *step = pb_node_get(shop, "process")->vals[0];
    rc = pb_conf_decode(pb_node_get(step, "map"), retry_fields, &common, &err);
    PB_EQ_INT(rc, PB_ECONFIG);
    PB_EQ_STR(err.msg, "expected a map for \"pipelines.shop.process[0].map\", got a scalar");
    pb_conf_doc_destroy(doc);
}

PB_TEST(decode2_splits_keys)
{
    struct pb_err err;
    struct pb_conf_doc *doc = load("max_attempts: 7\n"
                                   "ordering: {key: .k}\n"
                                   "initial: 2s\n",
                                   &err);
    PB_CHECK(doc != NULL);
    if (!doc)
        return;
    struct t_retry a;
    struct t_outer b;
    int rc = pb_conf_decode2(pb_conf_root(doc), retry_fields, &a, t_outer_fields, &b, &err);
    PB_EQ_INT(rc, 0);
    PB_EQ_INT(a.max_attempts, 7);
    PB_EQ_INT(a.initial, 2000);
    PB_EQ_STR(b.ordering.key, ".k");
    PB_EQ_INT(b.ordering.level, 4);
    pb_conf_free(retry_fields, &a);
    pb_conf_free(t_outer_fields, &b);

    /* A key known to neither table lists both tables' keys. */
    pb_conf_doc_destroy(doc);
    doc = load("max_attempts: 7\nordrering: {}\n", &err);
    rc = pb_conf_decode2(pb_conf_root(doc), retry_fields, &a, t_outer_fields, &b, &err);
    PB_EQ_INT(rc, PB_ECONFIG);
    PB_EQ_STR(err.msg, "unknown key \"ordrering\" at the top level: did you mean \"ordering\"? "
                       "(expected one of: max_attempts, initial, ordering)");
    pb_conf_free(retry_fields, &a);
    pb_conf_free(t_outer_fields, &b);

    /* Tables that share a name are a programming error, caught at once. */
    rc = pb_conf_decode2(pb_conf_root(doc), retry_fields, &a, retry_fields, &a, &err);
    PB_EQ_INT(rc, PB_EINVAL);
    PB_CONTAINS(err.msg, "\"max_attempts\" is defined by both tables");
    pb_conf_free(retry_fields, &a);

    /* A table may be empty (a plugin with no options). */
    pb_conf_doc_destroy(doc);
    doc = load("initial: 1s\n", &err);
    rc = pb_conf_decode2(pb_conf_root(doc), retry_fields, &a, NULL, NULL, &err);
    PB_EQ_INT(rc, 0);
    PB_EQ_INT(a.initial, 1000);
    pb_conf_doc_destroy(doc);

    doc = load("x: 1\n", &err);
    rc = pb_conf_decode(pb_conf_root(doc), NULL, NULL, &err);
    PB_EQ_INT(rc, PB_ECONFIG);
    PB_CONTAINS(err.msg, "takes no options");
    pb_conf_doc_destroy(doc);
}

#define SECRET_VALUE "s3cr3t-XYZZY-42"

PB_TEST(secrets_never_in_messages)
{
    struct pb_err err;
    struct pb_conf_doc *doc;
    struct t_conf c;
    setenv("PBT_SECRET", SECRET_VALUE, 1);

    /* The same mistake written literally is shown: the hiding below is real. */
    int rc = decode_yaml("name: x\ntimeout: " SECRET_VALUE "\n", t_fields, &c, &err, &doc);
    PB_EQ_INT(rc, PB_ECONFIG);
    PB_CONTAINS(err.msg, SECRET_VALUE);
    pb_conf_free(t_fields, &c);
    pb_conf_doc_destroy(doc);

    static const char *const leaks[] = {
        "name: x\ntimeout: ${PBT_SECRET}\n",  "name: x\ntimeout: 5s${PBT_SECRET}\n",
        "name: x\nmax_body: ${PBT_SECRET}\n", "name: x\nlimit: ${PBT_SECRET}\n",
        "name: x\ncount: ${PBT_SECRET}\n",    "name: x\nenabled: ${PBT_SECRET}\n",
        "name: x\nformat: ${PBT_SECRET}\n",   "name: x\nretry: {initial: \"${PBT_SECRET}\"}\n",
    };
    for (size_t i = 0; i < sizeof(leaks) / sizeof(leaks[0]); i++) {
        rc = decode_yaml(leaks[i], t_fields, &c, &err, &doc);
        PB_EQ_INT(rc, PB_ECONFIG);
        pb__checks++;
        if (strstr(err.msg, SECRET_VALUE) || strstr(err.msg, "s3cr3t"))
            PB__FAIL("case %zu leaks the secret: %s", i, err.msg);
        PB_CONTAINS(err.msg, "(value hidden)");
        pb_conf_free(t_fields, &c);
        pb_conf_doc_destroy(doc);
    }

    /* An interpolated number out of range: the bound is told, not the value. */
    setenv("PBT_NUM", "424242", 1);
    rc = decode_yaml("name: x\ncount: ${PBT_NUM}\n", t_fields, &c, &err, &doc);
    PB_EQ_INT(rc, PB_ECONFIG);
    PB_CHECK(strstr(err.msg, "424242") == NULL);
    PB_CONTAINS(err.msg, "must be between 1 and 10, got (value hidden)");
    pb_conf_free(t_fields, &c);
    pb_conf_doc_destroy(doc);

    /* A secret field of the wrong shape: no part of it is printed. */
    rc = decode_yaml("name: x\ntoken: [" SECRET_VALUE "]\n", t_fields, &c, &err, &doc);
    PB_EQ_INT(rc, PB_ECONFIG);
    PB_CHECK(strstr(err.msg, SECRET_VALUE) == NULL);
    PB_CONTAINS(err.msg, "expected a string for \"token\"");
    pb_conf_free(t_fields, &c);
    pb_conf_doc_destroy(doc);
}

PB_TEST(bad_defaults_are_table_errors)
{
    static const struct pb_field bad_dur[] = {
        {.name = "t", .type = PB_F_DURATION, .offset = 0, .def = "10 s"}, {0}};
    static const struct pb_field bad_range[] = {
        {.name = "n", .type = PB_F_INT, .offset = 0, .def = "0", .min = 1, .max = 5}, {0}};
    static const struct pb_field bad_list[] = {
        {.name = "l", .type = PB_F_STRLIST, .offset = 0, .def = "[a, [b]]"}, {0}};
    struct pb_err err;
    union {
        int64_t i;
        struct pb_strlist l;
    } u;

    pb_err_clear(&err);
    PB_EQ_INT(pb_conf_decode(NULL, bad_dur, &u, &err), PB_EINVAL);
    PB_CONTAINS(err.msg, "the default of field \"t\" is wrong");
    PB_CHECK(err.file == NULL);
    PB_EQ_INT(pb_conf_decode(NULL, bad_range, &u, &err), PB_EINVAL);
    PB_CONTAINS(err.msg, "must be between 1 and 5");
    PB_EQ_INT(pb_conf_decode(NULL, bad_list, &u, &err), PB_EINVAL);
    PB_CONTAINS(err.msg, "the default of field \"l\"");
    PB_CHECK(err.file == NULL); /* never the freed default document */
    pb_conf_free(bad_list, &u);
}

PB_TEST(free_after_partial_decode)
{
    /* Strings, lists and maps decoded before the error are freed by
     * pb_conf_free (ASan's leak check holds this test to it). */
    struct pb_err err;
    struct pb_conf_doc *doc;
    struct t_conf c;
    int rc = decode_yaml("name: x\ntoken: t\ntags: [a, b]\nheaders: {A: b}\ncount: nope\n",
                         t_fields, &c, &err, &doc);
    PB_EQ_INT(rc, PB_ECONFIG);
    PB_EQ_STR(c.name, "x");
    PB_EQ_INT(c.tags.n, 2);
    pb_conf_free(t_fields, &c);
    PB_CHECK(c.name == NULL && c.token == NULL && c.tags.n == 0 && c.headers.n == 0);
    pb_conf_free(t_fields, &c); /* twice is harmless */
    pb_conf_free(t_fields, NULL);
    pb_conf_free(NULL, &c);
    pb_conf_doc_destroy(doc);

    struct pb_strmap m = {0};
    PB_CHECK(pb_strmap_get(&m, "x") == NULL);
    PB_CHECK(pb_strmap_get(NULL, "x") == NULL);
    pb_strmap_free(&m);
    pb_strlist_free(NULL);
}

int main(void)
{
    return pb_test_main();
}
