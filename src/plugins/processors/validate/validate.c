/* validate.c - the validate processor: each message is checked against a
 * JSON Schema (2020-12) once, in the route stage.
 *
 *   validate: schemas/order.json
 *   validate: { schema: schemas/order.json, formats: assert }
 *
 * A valid message passes on unchanged. An invalid one fails the step, so the
 * route stage dead-letters it (once: a schema says the same thing on every
 * try) with the instance's JSON pointer, the keyword that failed and its
 * place in the schema. The schema file is read and compiled by init; $ref to
 * other files ("common.json#/$defs/address") is resolved relative to it.
 *
 * Threads: init on the loading thread; process on the dispatcher's, one at
 * a time (the compiled schema is not shared). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonschema.h"
#include "patchbay/pb_plugin.h"

#define SCHEMA_MAX_BYTES (4u << 20)

struct validate_ctx {
    char *schema; /* file (decoded by the core, freed by it) */
    int formats;  /* 0 annotate, 1 assert */
    struct js_schema *js;
};

static const char *const format_modes[] = {"annotate", "assert", NULL};

static const struct pb_field validate_fields[] = {
    {.name = "schema",
     .type = PB_F_STR,
     .offset = offsetof(struct validate_ctx, schema),
     .flags = PB_FIELD_REQUIRED,
     .doc = "JSON Schema (2020-12) file every message must match"},
    {.name = "formats",
     .type = PB_F_ENUM,
     .offset = offsetof(struct validate_ctx, formats),
     .choices = format_modes,
     .def = "annotate",
     .doc = "assert: `format` fails malformed dates, e-mail addresses, UUIDs..."},
    {0},
};

/* The bytes of path (at most SCHEMA_MAX_BYTES), parsed. */
static int read_json(const char *path, jv *out, char *why, size_t whylen)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0;
    int rc = PB_EIO;
    if (!f) {
        snprintf(why, whylen, "cannot open %s: %m", path);
        return rc;
    }
    buf = malloc(SCHEMA_MAX_BYTES + 1);
    if (!buf) {
        rc = PB_ENOMEM;
        snprintf(why, whylen, "out of memory");
        goto out;
    }
    len = fread(buf, 1, SCHEMA_MAX_BYTES + 1, f);
    if (ferror(f)) {
        snprintf(why, whylen, "cannot read %s", path);
        goto out;
    }
    if (len > SCHEMA_MAX_BYTES) {
        rc = PB_ETOOBIG;
        snprintf(why, whylen, "%s is larger than %u bytes", path, SCHEMA_MAX_BYTES);
        goto out;
    }
    jv v = jv_parse_sized(buf, (int)len);
    if (!jv_is_valid(v)) {
        jv msg = jv_invalid_get_msg(v);
        snprintf(why, whylen, "%s is not JSON: %s", path,
                 jv_get_kind(msg) == JV_KIND_STRING ? jv_string_value(msg) : "parse error");
        jv_free(msg);
        rc = PB_EPARSE;
        goto out;
    }
    *out = v;
    rc = 0;
out:
    free(buf);
    fclose(f);
    return rc;
}

/* $ref to another file next to the schema. */
static int load_file(void *arg, const char *uri, jv *doc)
{
    char why[256];
    (void)arg;
    if (strncmp(uri, "file://", 7) != 0)
        return PB_ENOTFOUND;
    return read_json(uri + 7, doc, why, sizeof(why));
}

static int validate_init(void *ctx, const struct pb_proc_env *env, struct pb_err *err)
{
    struct validate_ctx *v = ctx;
    char why[PATH_MAX + 128], abs[PATH_MAX], base[PATH_MAX + 8];
    jv doc;
    int rc;

    (void)env;
    if (!v->schema || !*v->schema)
        return pb_err_set(err, PB_ECONFIG, "validate: a schema file is required");
    rc = read_json(v->schema, &doc, why, sizeof(why));
    if (rc)
        return pb_err_set(err, PB_ECONFIG, "validate: %s", why);
    if (!realpath(v->schema, abs))
        snprintf(abs, sizeof(abs), "%s", v->schema);
    snprintf(base, sizeof(base), "file://%s", abs);
    struct js_opts o = {.assert_formats = v->formats == 1, .base_uri = base, .loader = load_file};
    v->js = js_create(&o);
    if (!v->js) {
        jv_free(doc);
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    }
    rc = js_compile(v->js, doc, err);
    if (rc) {
        char msg[PB_ERR_MSG_MAX];
        snprintf(msg, sizeof(msg), "%s", err->msg);
        return pb_err_set(err, PB_ECONFIG, "validate: %s: %s", v->schema, msg);
    }
    return 0;
}

static int validate_process(void *ctx, struct pb_proc_io *io, jv in, struct pb_err *err)
{
    struct validate_ctx *v = ctx;
    struct js_error e;
    int rc = js_validate(v->js, in, &e);
    if (rc == 0)
        return pb_proc_emit(io, in, pb_proc_outputs(io));
    jv_free(in);
    if (rc > 0)
        return pb_err_set(err, PB_EINVAL,
                          "schema validation failed at \"%s\": %s (keyword %s at schema \"%s\")",
                          e.instance, e.msg, e.keyword, e.schema);
    return pb_err_set(err, rc, "schema validation could not finish at \"%s\": %s", e.instance,
                      e.msg[0] ? e.msg : pb_strerror(rc));
}

static void validate_destroy(void *ctx)
{
    struct validate_ctx *v = ctx;
    if (!v)
        return;
    js_destroy(v->js);
    v->js = NULL;
}

const struct pb_processor_plugin pb_proc_validate = {
    .name = "validate",
    .fields = validate_fields,
    .scalar_form = true,
    .scalar_offset = offsetof(struct validate_ctx, schema),
    .ctx_size = sizeof(struct validate_ctx),
    .init = validate_init,
    .process = validate_process,
    .destroy = validate_destroy,
};
