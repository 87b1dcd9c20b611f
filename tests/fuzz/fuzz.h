/* fuzz.h - what every fuzz target (tests/fuzz/fuzz_*.c) declares.
 *
 * A target defines LLVMFuzzerTestOneInput and may define LLVMFuzzerInitialize.
 * Built with -DPB_FUZZ=ON (clang) they are libFuzzer entry points; otherwise
 * tests/fuzz/driver.c calls them once per file of the checked-in corpus.
 * A target reports a broken property with FUZZ_ASSERT, which aborts with
 * the condition and its location, so libFuzzer keeps the input as a crash. */
#ifndef PB_FUZZ_H
#define PB_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_ASSERT(cond, ...)                                                                     \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: property broken: %s: ", __FILE__, __LINE__, #cond);            \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* A NUL-terminated copy of the input (the parsers under test take C strings). */
static inline char *fuzz_strdup(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (s) {
        for (size_t i = 0; i < size; i++)
            s[i] = (char)data[i];
        s[size] = '\0';
    }
    return s;
}

#endif
