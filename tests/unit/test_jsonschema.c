/* test_jsonschema.c - the JSON Schema 2020-12 validator of the validate
 * processor: hand-written cases per keyword (with where a failure is
 * reported), then the official JSON-Schema-Test-Suite as Debian ships it
 * (libtest-json-schema-acceptance-perl), counted per keyword file. Each
 * file must pass at least the count recorded below, so a regression fails;
 * PB_JSONSCHEMA_REPORT=1 prints the table that docs/configuration.md shows. */
#include "pb_test.h"

#include <dirent.h>
#include <sys/stat.h>

#include "plugins/processors/validate/jsonschema.h"

#define SUITE "/usr/share/perl5/auto/share/dist/Test-JSON-Schema-Acceptance"

static int check(const char *schema, const char *inst, bool formats, struct js_error *e)
{
    struct js_opts o = {.assert_formats = formats};
    struct js_schema *s = js_create(&o);
    struct pb_err err = {0};
    int rc = js_compile(s, jv_parse(schema), &err);
    if (rc) {
        fprintf(stderr, "  compile: %s\n", err.msg);
        js_destroy(s);
        return -100;
    }
    jv v = jv_parse(inst);
    rc = js_validate(s, v, e);
    jv_free(v);
    js_destroy(s);
    return rc;
}

PB_TEST(types_and_numbers)
{
    struct js_error e;
    PB_EQ_INT(check("{\"type\":\"integer\"}", "3", false, &e), 0);
    PB_EQ_INT(check("{\"type\":\"integer\"}", "3.0", false, &e), 0);
    PB_EQ_INT(check("{\"type\":\"integer\"}", "3.5", false, &e), 1);
    PB_EQ_STR(e.keyword, "type");
    PB_EQ_INT(check("{\"type\":[\"string\",\"null\"]}", "null", false, &e), 0);
    PB_EQ_INT(check("{\"minimum\":1,\"maximum\":5}", "6", false, &e), 1);
    PB_EQ_STR(e.keyword, "maximum");
    PB_EQ_INT(check("{\"exclusiveMinimum\":1}", "1", false, &e), 1);
    PB_EQ_INT(check("{\"multipleOf\":0.01}", "19.99", false, &e), 0);
    PB_EQ_INT(check("{\"multipleOf\":0.01}", "19.991", false, &e), 1);
    PB_EQ_INT(check("{\"const\":{\"a\":[1,2]}}", "{\"a\":[1.0,2]}", false, &e), 0);
    PB_EQ_INT(check("{\"enum\":[1,\"x\"]}", "\"y\"", false, &e), 1);
    PB_EQ_STR(e.keyword, "enum");
}

PB_TEST(strings_count_characters_and_patterns_are_ecmascript)
{
    struct js_error e;
    PB_EQ_INT(check("{\"maxLength\":2}", "\"\\u00e9\\u00e9\"", false, &e), 0);
    PB_EQ_INT(check("{\"minLength\":3}", "\"\\u00e9\\u00e9\"", false, &e), 1);
    PB_EQ_INT(check("{\"pattern\":\"^\\\\d+$\"}", "\"123\"", false, &e), 0);
    PB_EQ_INT(check("{\"pattern\":\"^\\\\d+$\"}", "\"12a\"", false, &e), 1);
    PB_EQ_STR(e.keyword, "pattern");
    PB_EQ_INT(check("{\"pattern\":\"b\"}", "\"abc\"", false, &e), 0); /* not anchored */
    /* a pathological pattern hits the match limit instead of spinning */
    PB_EQ_INT(check("{\"pattern\":\"^(a+)+$\"}", "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab\"",
                    false, &e),
              PB_ETOOBIG);
}

PB_TEST(errors_name_the_instance_pointer_and_schema_keyword)
{
    struct js_error e;
    const char *schema = "{\"properties\":{\"items\":{\"type\":\"array\",\"items\":{"
                         "\"required\":[\"sku\"],\"properties\":{\"qty\":{\"minimum\":1}}}}}}";
    PB_EQ_INT(check(schema, "{\"items\":[{\"sku\":\"a\",\"qty\":2},{\"sku\":\"b/c\",\"qty\":0}]}",
                    false, &e),
              1);
    PB_EQ_STR(e.instance, "/items/1/qty");
    PB_EQ_STR(e.keyword, "minimum");
    PB_EQ_STR(e.schema, "/properties/items/items/properties/qty/minimum");
    PB_EQ_INT(check(schema, "{\"items\":[{\"qty\":2}]}", false, &e), 1);
    PB_EQ_STR(e.instance, "/items/0");
    PB_EQ_STR(e.keyword, "required");
    PB_CHECK(strstr(e.msg, "\"sku\"") != NULL);
    PB_EQ_INT(check("{\"additionalProperties\":false,\"properties\":{\"a\":{}}}",
                    "{\"a\":1,\"x/y\":2}", false, &e),
              1);
    PB_EQ_STR(e.instance, "/x~1y");
    PB_EQ_STR(e.keyword, "additionalProperties");
    /* under anyOf the combinator is what failed */
    PB_EQ_INT(check("{\"anyOf\":[{\"type\":\"string\"},{\"minimum\":3}]}", "1", false, &e), 1);
    PB_EQ_STR(e.keyword, "anyOf");
    PB_EQ_STR(e.schema, "/anyOf");
}

PB_TEST(refs_defs_anchors_and_recursion)
{
    struct js_error e;
    const char *tree = "{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{"
                       "\"value\":{\"type\":\"number\"},"
                       "\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/node\"}}}}},"
                       "\"$ref\":\"#/$defs/node\"}";
    PB_EQ_INT(
        check(tree, "{\"value\":1,\"kids\":[{\"value\":2,\"kids\":[{\"value\":3}]}]}", false, &e),
        0);
    PB_EQ_INT(check(tree, "{\"value\":1,\"kids\":[{\"value\":2,\"kids\":[{\"value\":\"x\"}]}]}",
                    false, &e),
              1);
    PB_EQ_STR(e.instance, "/kids/0/kids/0/value");
    PB_EQ_INT(check("{\"$ref\":\"#a\",\"$defs\":{\"x\":{\"$anchor\":\"a\",\"type\":\"null\"}}}",
                    "null", false, &e),
              0);
    PB_EQ_INT(check("{\"$ref\":\"#/$defs/missing\"}", "null", false, &e), -100);
    /* a schema that refers to itself without consuming the instance */
    PB_EQ_INT(check("{\"$ref\":\"#\"}", "1", false, &e), PB_ETOOBIG);
}

PB_TEST(unevaluated_properties_and_items)
{
    struct js_error e;
    const char *s = "{\"allOf\":[{\"properties\":{\"a\":{}}}],\"properties\":{\"b\":{}},"
                    "\"unevaluatedProperties\":false}";
    PB_EQ_INT(check(s, "{\"a\":1,\"b\":2}", false, &e), 0);
    PB_EQ_INT(check(s, "{\"a\":1,\"b\":2,\"c\":3}", false, &e), 1);
    PB_EQ_STR(e.keyword, "unevaluatedProperties");
    PB_EQ_STR(e.instance, "/c");
    const char *a = "{\"prefixItems\":[{}],\"anyOf\":[{\"prefixItems\":[{},{\"const\":2}]}],"
                    "\"unevaluatedItems\":false}";
    PB_EQ_INT(check(a, "[1,2]", false, &e), 0);
    PB_EQ_INT(check(a, "[1,2,3]", false, &e), 1);
    PB_EQ_STR(e.instance, "/2");
    PB_EQ_STR(e.keyword, "unevaluatedItems");
}

PB_TEST(formats_assert_only_when_asked)
{
    struct js_error e;
    PB_EQ_INT(check("{\"format\":\"date-time\"}", "\"yesterday\"", false, &e), 0);
    PB_EQ_INT(check("{\"format\":\"date-time\"}", "\"yesterday\"", true, &e), 1);
    PB_EQ_STR(e.keyword, "format");
    PB_EQ_INT(check("{\"format\":\"date-time\"}", "\"2024-02-29T12:00:00Z\"", true, &e), 0);
    PB_EQ_INT(check("{\"format\":\"date\"}", "\"2023-02-29\"", true, &e), 1);
    PB_EQ_INT(check("{\"format\":\"email\"}", "\"a@b.example\"", true, &e), 0);
    PB_EQ_INT(check("{\"format\":\"uuid\"}", "\"2eb8aa08-aa98-11ea-b4aa-73b441d16380\"", true, &e),
              0);
    PB_EQ_INT(check("{\"format\":\"ipv4\"}", "\"256.0.0.1\"", true, &e), 1);
    PB_EQ_INT(check("{\"format\":\"no-such-format\"}", "\"x\"", true, &e), 0);
}

PB_TEST(bad_schemas_are_refused_with_where)
{
    struct pb_err err = {0};
    struct js_schema *s = js_create(NULL);
    PB_EQ_INT(js_compile(s, jv_parse("{\"properties\":{\"a\":{\"minLength\":-1}}}"), &err),
              PB_ECONFIG);
    PB_CHECK(strstr(err.msg, "/properties/a") != NULL);
    js_destroy(s);
    s = js_create(NULL);
    PB_EQ_INT(js_compile(s, jv_parse("{\"pattern\":\"(\"}"), &err), PB_ECONFIG);
    js_destroy(s);
}

/* ---- the official suite ------------------------------------------------------------------ */

struct tally {
    char file[160];
    int pass, total;
};

static jv read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return jv_invalid();
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    size_t got = buf ? fread(buf, 1, (size_t)n, f) : 0;
    fclose(f);
    jv v = buf ? jv_parse_sized(buf, (int)got) : jv_invalid();
    free(buf);
    return v;
}

/* The suite's remotes, served at http://localhost:1234/. */
static void add_remotes(struct js_schema *s, const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    if (!d)
        return;
    while ((de = readdir(d))) {
        char path[1024], uri[1024];
        struct stat st;
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        snprintf(uri, sizeof(uri), "%s%s", prefix, de->d_name);
        if (stat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            char sub[1100];
            snprintf(sub, sizeof(sub), "%s/", uri);
            if (strcmp(de->d_name, "draft2019-09") && strcmp(de->d_name, "draft7") &&
                strcmp(de->d_name, "draft-next"))
                add_remotes(s, path, sub);
        } else if (strstr(de->d_name, ".json")) {
            js_add_document(s, uri, read_file(path));
        }
    }
    closedir(d);
}

static void run_file(const char *path, const char *name, bool formats, struct tally *t)
{
    jv groups = read_file(path);
    snprintf(t->file, sizeof(t->file), "%s", name);
    if (jv_get_kind(groups) != JV_KIND_ARRAY) {
        jv_free(groups);
        return;
    }
    jv_array_foreach(groups, gi, g)
    {
        jv tests = jv_object_get(jv_copy(g), jv_string("tests"));
        struct js_schema *s = js_create(&(struct js_opts){.assert_formats = formats});
        add_remotes(s, SUITE "/remotes/draft2020-12", "http://localhost:1234/draft2020-12/");
        add_remotes(s, SUITE "/remotes", "http://localhost:1234/");
        struct pb_err err = {0};
        int crc = js_compile(s, jv_object_get(jv_copy(g), jv_string("schema")), &err);
        jv_array_foreach(tests, ti, tc)
        {
            jv data = jv_object_get(jv_copy(tc), jv_string("data"));
            bool want = jv_get_kind(jv_object_get(jv_copy(tc), jv_string("valid"))) == JV_KIND_TRUE;
            struct js_error e;
            int rc = crc ? -1 : js_validate(s, data, &e);
            t->total++;
            if ((rc == 0) == want && rc >= 0)
                t->pass++;
            else if (getenv("PB_JSONSCHEMA_VERBOSE")) {
                jv d = jv_object_get(jv_copy(g), jv_string("description"));
                jv td = jv_object_get(jv_copy(tc), jv_string("description"));
                fprintf(stderr, "    FAIL %s: %s / %s (rc=%d%s%s)\n", name, jv_string_value(d),
                        jv_string_value(td), rc, crc ? " compile: " : "", crc ? err.msg : "");
                jv_free(d);
                jv_free(td);
            }
            jv_free(data);
            jv_free(tc);
        }
        js_destroy(s);
        jv_free(tests);
        jv_free(g);
    }
    jv_free(groups);
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(((const struct tally *)a)->file, ((const struct tally *)b)->file);
}

static size_t run_dir(const char *dir, const char *prefix, bool formats, struct tally *t,
                      size_t max)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    size_t n = 0;
    if (!d)
        return 0;
    while ((de = readdir(d)) && n < max) {
        char path[1024], name[128];
        if (!strstr(de->d_name, ".json"))
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        snprintf(name, sizeof(name), "%s%.*s", prefix, (int)(strlen(de->d_name) - 5), de->d_name);
        run_file(path, name, formats, &t[n++]);
    }
    closedir(d);
    qsort(t, n, sizeof(*t), name_cmp);
    return n;
}

/* Files whose every case need not pass, with the floor they must reach. */
static const struct {
    const char *file;
    int min;
} partial[] = {
    /* cases that validate against the 2020-12 meta-schema, which the suite
     * does not ship (https://json-schema.org/draft/2020-12/schema) */
    {"anchor", 14},
    {"defs", 0},
    {"id", 5},
    {"ref", 69},
    /* a custom meta-schema switching the validation vocabulary off */
    {"vocabulary", 4},
};

PB_TEST(official_suite_draft2020_12)
{
    static struct tally req[128], opt[64];
    struct stat st;
    if (stat(SUITE "/tests/draft2020-12", &st) != 0) {
        PB__FAIL("the JSON-Schema-Test-Suite is missing (%s): ./dev.sh installs "
                 "libtest-json-schema-acceptance-perl",
                 SUITE);
        return;
    }
    size_t nreq = run_dir(SUITE "/tests/draft2020-12", "", false, req, 128);
    size_t nopt = run_dir(SUITE "/tests/draft2020-12/optional", "optional/", false, opt, 64);
    static struct tally fmt[64];
    size_t nfmt =
        run_dir(SUITE "/tests/draft2020-12/optional/format", "optional/format/", true, fmt, 64);
    bool report = getenv("PB_JSONSCHEMA_REPORT") != NULL;
    int tp = 0, tt = 0;
    struct {
        struct tally *t;
        size_t n;
    } sets[] = {{req, nreq}, {opt, nopt}, {fmt, nfmt}};
    for (size_t k = 0; k < 3; k++)
        for (size_t i = 0; i < sets[k].n; i++) {
            struct tally *t = &sets[k].t[i];
            if (report)
                printf("| %s | %d / %d |\n", t->file, t->pass, t->total);
            if (k == 0) {
                tp += t->pass;
                tt += t->total;
                int min = t->total;
                for (size_t p = 0; p < sizeof(partial) / sizeof(partial[0]); p++)
                    if (strcmp(partial[p].file, t->file) == 0)
                        min = partial[p].min;
                if (t->pass < min)
                    PB__FAIL("suite %s: %d of %d pass, want at least %d", t->file, t->pass,
                             t->total, min);
            }
        }
    fprintf(stderr, "  JSON-Schema-Test-Suite draft2020-12: %d of %d pass\n", tp, tt);
}

int main(void)
{
    return pb_test_main();
}
