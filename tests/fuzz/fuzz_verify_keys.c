/* fuzz_verify_keys.c - what a `verify` block decodes when the configuration
 * loads (pb_verifier_create): standard-webhooks keys (whsec_/whpk_/whsk_),
 * a JSON Web Key Set file, a PEM public key file, an hmac template and
 * basic credentials, each taken from the fuzz input.
 *
 * Input: byte 0 picks what the rest is. Properties: no crash, leak or
 * overread; a refusal is a PB_ECONFIG/PB_ENOMEM error with a message that
 * names the verify field and never contains the secret's value; an
 * accepted verifier is destroyed cleanly. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"
#include "verify.h"

static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(path, sizeof(path), "/tmp/pb-fuzz-keys-%ld", (long)getpid());
    return 0;
}

static void write_file(const char *s, size_t n)
{
    FILE *f = fopen(path, "wb");
    FUZZ_ASSERT(f, "cannot write %s", path);
    fwrite(s, 1, n, f);
    fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char *s = fuzz_strdup(data + 1, size - 1);
    size_t n = size - 1;
    struct pb_verify_conf c;
    char *items[17];
    size_t nitems = 0;
    bool secret_in_msg_check = false;

    memset(&c, 0, sizeof(c));
    c.tolerance_ms = 5 * 60 * 1000;
    c.leeway_ms = 60 * 1000;
    switch (data[0] % 5) {
    case 0: /* a standard-webhooks key */
        c.scheme = PB_SCHEME_STANDARD_WEBHOOKS;
        c.secret = s;
        secret_in_msg_check = strlen(s) >= 24;
        break;
    case 1: /* a JSON Web Key Set */
        c.scheme = PB_SCHEME_JWT;
        write_file(s, n);
        c.jwks_file = path;
        break;
    case 2: /* a PEM file */
        c.scheme = PB_SCHEME_JWT;
        write_file(s, n);
        items[0] = path;
        c.public_key_file = (struct pb_strlist){.n = 1, .items = items};
        break;
    case 3: /* an hmac template */
        c.scheme = PB_SCHEME_HMAC;
        c.secret = "k";
        c.header = "X-Sig";
        c.template = s;
        if (strstr(s, "{timestamp}"))
            c.timestamp_header = "X-Ts";
        if (strstr(s, "{id}"))
            c.id_header = "X-Id";
        break;
    default: /* basic credentials, one per line */
        c.scheme = PB_SCHEME_BASIC;
        for (char *save = NULL, *t = strtok_r(s, "\n", &save); t && nitems < 17;
             t = strtok_r(NULL, "\n", &save))
            items[nitems++] = t;
        c.credentials = (struct pb_strlist){.n = nitems, .items = items};
        break;
    }
    struct pb_err err = {0};
    int crc = pb_verify_conf_check(&c, &err);
    FUZZ_ASSERT(crc == 0, "a block built for its scheme fails the option check: %s", err.msg);
    struct pb_verifier *v = pb_verifier_create(&c, &err);
    if (!v) {
        FUZZ_ASSERT((err.code == PB_ECONFIG || err.code == PB_ENOMEM) && err.msg[0],
                    "refusal without a config error: %d %s", err.code, err.msg);
        if (secret_in_msg_check)
            FUZZ_ASSERT(!strstr(err.msg, s), "the error shows the secret: %s", err.msg);
    }
    pb_verifier_destroy(v);
    free(s);
    return 0;
}
