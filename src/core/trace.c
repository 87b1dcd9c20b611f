/* trace.c - W3C Trace Context for messages and their attempts.
 *
 * A message keeps the trace it arrived with: an input that reads a
 * traceparent (an HTTP header, a broker header) hands it over, ingest
 * writes it into $meta.traceparent (a new trace when none came in or the
 * one that came is malformed), and $meta.tracestate next to it. Each
 * attempt of each delivery is a span of that trace: it carries a
 * traceparent with the message's trace id and a span id of its own, which
 * the outputs send as the traceparent header (HTTP, webhooks) or message
 * header (brokers that have headers).
 *
 * Pure functions (the random ids come from pb_rand64), any thread. */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "core/trace.h"
#include "patchbay/pb_time.h"

static const char hexd[] = "0123456789abcdef";

static bool hex_run(const char *s, size_t n, bool *zero)
{
    *zero = true;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
        if (c != '0')
            *zero = false;
    }
    return true;
}

bool pb_trace_parse(const char *s, char out[PB_TRACEPARENT_LEN + 1])
{
    bool zero;
    if (!s)
        return false;
    size_t n = strnlen(s, PB_TRACEPARENT_LEN + 1);
    if (n < PB_TRACEPARENT_LEN || !hex_run(s, 2, &zero) || (s[0] == 'f' && s[1] == 'f'))
        return false;
    bool v00 = s[0] == '0' && s[1] == '0';
    if (v00 ? n != PB_TRACEPARENT_LEN : (n > PB_TRACEPARENT_LEN && s[PB_TRACEPARENT_LEN] != '-'))
        return false;
    if (s[2] != '-' || s[35] != '-' || s[52] != '-')
        return false;
    if (!hex_run(s + 3, 32, &zero) || zero)
        return false;
    if (!hex_run(s + 36, 16, &zero) || zero)
        return false;
    if (!hex_run(s + 53, 2, &zero))
        return false;
    int flags = (s[53] >= 'a' ? s[53] - 'a' + 10 : s[53] - '0') * 16 +
                (s[54] >= 'a' ? s[54] - 'a' + 10 : s[54] - '0');
    memcpy(out, "00", 2);
    memcpy(out + 2, s + 2, 51);
    out[53] = '0';
    out[54] = (flags & 1) ? '1' : '0';
    out[PB_TRACEPARENT_LEN] = 0;
    return true;
}

static void put_hex(char *p, uint64_t v, int nbytes)
{
    for (int i = nbytes - 1; i >= 0; i--) {
        p[2 * i + 1] = hexd[v & 15];
        p[2 * i] = hexd[(v >> 4) & 15];
        v >>= 8;
    }
}

/* A random 64-bit id that is not zero. */
static uint64_t nonzero64(void)
{
    uint64_t v;
    do
        v = pb_rand64();
    while (v == 0);
    return v;
}

bool pb_trace_take(const char *incoming, char out[PB_TRACEPARENT_LEN + 1])
{
    if (pb_trace_parse(incoming, out))
        return true;
    memcpy(out, "00-", 3);
    put_hex(out + 3, pb_rand64(), 8);
    put_hex(out + 19, nonzero64(), 8);
    out[35] = '-';
    put_hex(out + 36, nonzero64(), 8);
    memcpy(out + 52, "-01", 4);
    return false;
}

void pb_trace_child(const char *parent, char out[PB_TRACEPARENT_LEN + 1])
{
    char p[PB_TRACEPARENT_LEN + 1];
    if (!pb_trace_parse(parent, p)) {
        pb_trace_take(NULL, out);
        return;
    }
    memcpy(out, p, PB_TRACEPARENT_LEN + 1);
    put_hex(out + 36, nonzero64(), 8);
}

bool pb_trace_state_ok(const char *s)
{
    if (!s)
        return false;
    size_t n = 0;
    for (; s[n]; n++) {
        unsigned char c = (unsigned char)s[n];
        if (n >= PB_TRACESTATE_MAX || c < 0x20 || c > 0x7e || c == '"' || c == '\\')
            return false;
    }
    return n > 0;
}

/* A header value: a string, or the first string of a list. */
static const char *header_text(json_t *v)
{
    if (json_is_array(v))
        v = json_array_get(v, 0);
    return json_string_value(v);
}

/* Does word (lower case) occur in text, in any case? */
static bool mentions(const char *text, size_t len, const char *word)
{
    size_t n = strlen(word);
    for (size_t i = 0; i + n <= len; i++)
        if (strncasecmp(text + i, word, n) == 0)
            return true;
    return false;
}

int pb_trace_from_item_meta(const char *meta, size_t len, char tp[PB_TRACEPARENT_LEN + 1],
                            char ts[PB_TRACESTATE_MAX + 1])
{
    int found = 0;
    if (!meta || !len || !mentions(meta, len, "traceparent"))
        return 0; /* the common case: nothing to parse */
    json_t *root = json_loadb(meta, len, 0, NULL);
    json_t *h = json_object_get(root, "headers");
    const char *key;
    json_t *v;
    json_object_foreach(h, key, v)
    {
        const char *s = header_text(v);
        if (!s)
            continue;
        if (!(found & 1) && strcasecmp(key, "traceparent") == 0 && pb_trace_parse(s, tp))
            found |= 1;
        else if (!(found & 2) && strcasecmp(key, "tracestate") == 0 && pb_trace_state_ok(s)) {
            snprintf(ts, PB_TRACESTATE_MAX + 1, "%s", s);
            found |= 2;
        }
    }
    json_decref(root);
    return found;
}

/* 64-bit FNV-1a of s with a seed. */
static uint64_t fnv(const char *s, uint64_t h)
{
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h ? h : 1;
}

void pb_trace_of_msg(const char *meta, size_t len, const char *msg_id,
                     char tp[PB_TRACEPARENT_LEN + 1], char ts[PB_TRACESTATE_MAX + 1])
{
    static const char key[] = "\"traceparent\":\"", skey[] = ",\"tracestate\":\"";
    ts[0] = 0;
    const char *p = meta && len ? memmem(meta, len, key, sizeof(key) - 1) : NULL;
    if (p) {
        p += sizeof(key) - 1;
        size_t left = len - (size_t)(p - meta);
        char cand[PB_TRACEPARENT_LEN + 1];
        if (left > PB_TRACEPARENT_LEN && p[PB_TRACEPARENT_LEN] == '"') {
            memcpy(cand, p, PB_TRACEPARENT_LEN);
            cand[PB_TRACEPARENT_LEN] = 0;
            if (pb_trace_parse(cand, tp)) {
                const char *q = p + PB_TRACEPARENT_LEN + 1;
                left = len - (size_t)(q - meta);
                if (left > sizeof(skey) - 1 && memcmp(q, skey, sizeof(skey) - 1) == 0) {
                    q += sizeof(skey) - 1;
                    left -= sizeof(skey) - 1;
                    const char *end = memchr(q, '"', left);
                    size_t n = end ? (size_t)(end - q) : 0;
                    if (end && n > 0 && n <= PB_TRACESTATE_MAX) {
                        memcpy(ts, q, n);
                        ts[n] = 0;
                        if (!pb_trace_state_ok(ts))
                            ts[0] = 0;
                    }
                }
                return;
            }
        }
    }
    /* No trace kept with the message: one derived from its id. */
    uint64_t a = fnv(msg_id ? msg_id : "", 0xcbf29ce484222325ULL);
    uint64_t b = fnv(msg_id ? msg_id : "", 0x84222325cbf29ce4ULL);
    memcpy(tp, "00-", 3);
    put_hex(tp + 3, a, 8);
    put_hex(tp + 19, b, 8);
    tp[35] = '-';
    put_hex(tp + 36, a ^ b ? a ^ b : 1, 8);
    memcpy(tp + 52, "-01", 4);
}
