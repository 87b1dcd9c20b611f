/* fuzz_conf.c - the YAML loader (pb_conf_load_string) and the field-table
 * decoder (pb_conf_decode, pb_conf_decode2) on arbitrary text.
 *
 * The document is loaded with a few environment variables set (so ${VAR},
 * ${VAR:-default} and $$ take both paths), every node is walked, and the root
 * is decoded against a table that has one field of each type, nested
 * objects included, at the top level and one level down ("sub"). Properties:
 * no crash, leak or overread; an error carries a message; a document that
 * decodes once decodes again to the same values. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "patchbay/pb_conf.h"

struct inner {
    char *name;
    int64_t n;
    struct pb_strlist tags;
};

struct cfg {
    char *str;
    char *secret;
    bool flag;
    int64_t count;
    int64_t wait_ms;
    uint64_t bytes;
    struct pb_rate rate;
    int mode;
    struct pb_strlist allow;
    struct pb_strmap headers;
    struct inner sub;
    const struct pb_node *any;
};

struct extra {
    int64_t other;
};

static const char *const modes[] = {"json", "raw", "both", NULL};

static const struct pb_field inner_fields[] = {
    {.name = "name", .type = PB_F_STR, .offset = offsetof(struct inner, name), .def = "x"},
    {.name = "n", .type = PB_F_INT, .offset = offsetof(struct inner, n), .min = -5, .max = 500},
    {.name = "tags", .type = PB_F_STRLIST, .offset = offsetof(struct inner, tags), .def = "[a, b]"},
    {0},
};

static const struct pb_field fields[] = {
    {.name = "str", .type = PB_F_STR, .offset = offsetof(struct cfg, str)},
    {.name = "secret", .type = PB_F_SECRET, .offset = offsetof(struct cfg, secret)},
    {.name = "flag", .type = PB_F_BOOL, .offset = offsetof(struct cfg, flag), .def = "false"},
    {.name = "count",
     .type = PB_F_INT,
     .offset = offsetof(struct cfg, count),
     .min = 1,
     .max = 1000,
     .def = "12"},
    {.name = "wait",
     .type = PB_F_DURATION,
     .offset = offsetof(struct cfg, wait_ms),
     .def = "500ms"},
    {.name = "bytes", .type = PB_F_SIZE, .offset = offsetof(struct cfg, bytes), .def = "1MiB"},
    {.name = "rate", .type = PB_F_RATE, .offset = offsetof(struct cfg, rate)},
    {.name = "mode",
     .type = PB_F_ENUM,
     .offset = offsetof(struct cfg, mode),
     .choices = modes,
     .def = "json"},
    {.name = "allow", .type = PB_F_STRLIST, .offset = offsetof(struct cfg, allow)},
    {.name = "headers", .type = PB_F_STRMAP, .offset = offsetof(struct cfg, headers)},
    {.name = "sub", .type = PB_F_OBJECT, .offset = offsetof(struct cfg, sub), .sub = inner_fields},
    {.name = "any", .type = PB_F_NODE, .offset = offsetof(struct cfg, any)},
    {0},
};

static const struct pb_field extra_fields[] = {
    {.name = "other", .type = PB_F_INT, .offset = offsetof(struct extra, other)},
    {0},
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    setenv("FUZZ_A", "alpha", 1);
    setenv("FUZZ_EMPTY", "", 1);
    setenv("FUZZ_NUM", "42", 1);
    setenv("FUZZ_DUR", "1h30m", 1);
    return 0;
}

/* Visit every node; count them so the walk is not optimised away. */
static size_t walk(const struct pb_node *n, int depth)
{
    size_t c = 1;
    FUZZ_ASSERT(depth <= 70, "depth %d beyond the loader's limit", depth);
    FUZZ_ASSERT(n->line >= 1 && n->col >= 1, "node without a position: %d:%d", n->line, n->col);
    switch (n->type) {
    case PB_NODE_SCALAR:
        FUZZ_ASSERT(n->str && strlen(n->str) <= n->len, "scalar length %zu", n->len);
        break;
    case PB_NODE_MAP:
        for (size_t i = 0; i < n->n; i++) {
            FUZZ_ASSERT(n->keys[i]->parent == n && n->vals[i]->parent == n, "parent link");
            if (n->keys[i]->type == PB_NODE_SCALAR)
                FUZZ_ASSERT(pb_node_get(n, n->keys[i]->str) != NULL ||
                                strlen(n->keys[i]->str) != n->keys[i]->len,
                            "key %s not found in its map", n->keys[i]->str);
            c += walk(n->keys[i], depth + 1) + walk(n->vals[i], depth + 1);
        }
        break;
    case PB_NODE_SEQ:
        for (size_t i = 0; i < n->n; i++)
            c += walk(n->vals[i], depth + 1);
        break;
    default:
        break;
    }
    return c;
}

static bool same_list(const struct pb_strlist *a, const struct pb_strlist *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->items[i], b->items[i]) != 0)
            return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pb_err err = {0};
    struct pb_conf_doc *doc = pb_conf_load_string("fuzz.yaml", (const char *)data, size, &err);

    if (!doc) {
        FUZZ_ASSERT(err.code < 0 && err.msg[0], "failed load without an error: %d", err.code);
        return 0;
    }
    const struct pb_node *root = pb_conf_root(doc);
    if (root)
        walk(root, 0);

    struct cfg a, b;
    struct extra x;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    memset(&x, 0, sizeof(x));
    pb_err_clear(&err);
    int rc = pb_conf_decode(root && root->type == PB_NODE_MAP ? root : NULL, fields, &a, &err);
    if (rc != 0) {
        FUZZ_ASSERT(rc < 0 && err.msg[0], "failed decode without an error: %d", rc);
    } else {
        /* Deterministic: a second decode gives the same values. */
        struct pb_err err2 = {0};
        FUZZ_ASSERT(
            pb_conf_decode(root && root->type == PB_NODE_MAP ? root : NULL, fields, &b, &err2) == 0,
            "second decode failed: %s", err2.msg);
        FUZZ_ASSERT(a.count == b.count && a.wait_ms == b.wait_ms && a.bytes == b.bytes &&
                        a.flag == b.flag && a.mode == b.mode && a.rate.count == b.rate.count &&
                        same_list(&a.allow, &b.allow) && same_list(&a.sub.tags, &b.sub.tags),
                    "decode is not deterministic");
        FUZZ_ASSERT(a.count >= 1 && a.count <= 1000, "count %lld out of bounds",
                    (long long)a.count);
        FUZZ_ASSERT(a.wait_ms >= 0, "negative duration %lld", (long long)a.wait_ms);
        FUZZ_ASSERT(a.mode >= 0 && a.mode < 3, "enum index %d", a.mode);
        FUZZ_ASSERT(a.rate.count == 0 || a.rate.period_ms > 0, "rate without a period");
    }
    pb_conf_free(fields, &a);
    pb_conf_free(fields, &b);

    /* Two tables over one map: every key must belong to exactly one. */
    if (root && root->type == PB_NODE_MAP) {
        memset(&a, 0, sizeof(a));
        pb_err_clear(&err);
        rc = pb_conf_decode2(root, fields, &a, extra_fields, &x, &err);
        FUZZ_ASSERT(rc == 0 || (rc < 0 && err.msg[0]), "decode2 failed without an error");
        pb_conf_free(fields, &a);
        pb_conf_free(extra_fields, &x);
        const struct pb_node *sub = pb_node_get(root, "sub");
        if (sub && sub->type == PB_NODE_MAP) {
            struct inner in;
            memset(&in, 0, sizeof(in));
            pb_err_clear(&err);
            rc = pb_conf_decode(sub, inner_fields, &in, &err);
            FUZZ_ASSERT(rc == 0 || err.msg[0], "sub decode failed without an error");
            pb_conf_free(inner_fields, &in);
        }
    }
    pb_conf_doc_destroy(doc);
    return 0;
}
