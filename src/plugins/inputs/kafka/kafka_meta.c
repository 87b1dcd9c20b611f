/* kafka_meta.c - $meta, idempotency key and JSON check of a consumed Kafka
 * message (see kafka_meta.h). No state; any thread. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "kafka_meta.h"
#include "patchbay/pb_json.h"
#include "patchbay/pb_plugin.h"

char *kafka_base64(const void *data, size_t len)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = data;
    char *out = malloc(4 * ((len + 2) / 3) + 1), *o = out;
    if (!out)
        return NULL;
    size_t i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = tab[(v >> 6) & 63];
        *o++ = tab[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < len ? (uint32_t)p[i + 1] << 8 : 0);
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = i + 1 < len ? tab[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o = 0;
    return out;
}

/* Set name in obj (or name in b64obj, base64) to the bytes; NULL data: null.
 * -1 on ENOMEM. */
static int set_bytes(json_t *obj, json_t *b64obj, const char *name, const void *data, size_t len)
{
    if (!data)
        return json_object_set_new(obj, name, json_null());
    json_t *s = json_stringn(data, len); /* NULL when not UTF-8 */
    if (s)
        return json_object_set_new(obj, name, s);
    char *b = kafka_base64(data, len);
    if (!b)
        return -1;
    json_object_del(obj, name);
    int rc = json_object_set_new(b64obj, name, json_string(b));
    free(b);
    return rc;
}

char *kafka_message_meta(const rd_kafka_message_t *m, size_t *len)
{
    json_t *o = json_object(), *kb64 = json_object(), *h = json_object(), *hb64 = json_object();
    char *text = NULL;
    if (!o || !kb64 || !h || !hb64)
        goto out;
    const char *topic = m->rkt ? rd_kafka_topic_name(m->rkt) : "";
    if (json_object_set_new(o, "topic", json_string(topic)) ||
        json_object_set_new(o, "partition", json_integer(m->partition)) ||
        json_object_set_new(o, "offset", json_integer(m->offset)))
        goto out;
    if (set_bytes(o, kb64, "key", m->key, m->key_len))
        goto out;
    if (json_object_get(kb64, "key") &&
        (json_object_set(o, "key", json_null()) ||
         json_object_set(o, "key_base64", json_object_get(kb64, "key"))))
        goto out;
    rd_kafka_timestamp_type_t tt;
    int64_t ts = rd_kafka_message_timestamp(m, &tt);
    if (tt != RD_KAFKA_TIMESTAMP_NOT_AVAILABLE &&
        (json_object_set_new(o, "timestamp", json_integer(ts)) ||
         json_object_set_new(o, "timestamp_type",
                             json_string(tt == RD_KAFKA_TIMESTAMP_CREATE_TIME
                                             ? "create_time"
                                             : "log_append_time"))))
        goto out;
    rd_kafka_headers_t *hdrs = NULL;
    if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        const char *name;
        const void *val;
        size_t vlen;
        for (size_t i = 0; rd_kafka_header_get_all(hdrs, i, &name, &val, &vlen) == 0; i++) {
            json_object_del(hb64, name); /* the last of a repeated name wins */
            if (!pb_utf8_valid(name, strlen(name)))
                continue; /* a name that is not UTF-8 has no place in $meta */
            if (set_bytes(h, hb64, name, val, vlen))
                goto out;
        }
    }
    if (json_object_set(o, "headers", h))
        goto out;
    if (json_object_size(hb64) && json_object_set(o, "headers_base64", hb64))
        goto out;
    text = json_dumps(o, JSON_COMPACT);
    if (text)
        *len = strlen(text);
out:
    json_decref(o);
    json_decref(kb64);
    json_decref(h);
    json_decref(hb64);
    return text;
}

/* FNV-1a, 64 bits. */
static uint64_t fnv64(const char *s)
{
    uint64_t h = 14695981039346656037ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

void kafka_message_key(const rd_kafka_message_t *m, const char *header, char *buf, size_t len)
{
    rd_kafka_headers_t *hdrs = NULL;
    const void *val;
    size_t vlen;
    if (header && rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR &&
        rd_kafka_header_get_last(hdrs, header, &val, &vlen) == RD_KAFKA_RESP_ERR_NO_ERROR && val &&
        vlen > 0 && vlen <= PB_ITEM_KEY_MAX && vlen < len) {
        const unsigned char *v = val;
        bool ok = true;
        for (size_t i = 0; ok && i < vlen; i++)
            ok = v[i] > 0x20 && v[i] < 0x7f;
        if (ok) {
            memcpy(buf, val, vlen);
            buf[vlen] = 0;
            return;
        }
    }
    const char *topic = m->rkt ? rd_kafka_topic_name(m->rkt) : "";
    int n = snprintf(buf, len, "%s:%d:%lld", topic, (int)m->partition, (long long)m->offset);
    if (n >= 0 && (size_t)n < len && n <= PB_ITEM_KEY_MAX)
        return;
    snprintf(buf, len, "%.180s~%016llx:%d:%lld", topic, (unsigned long long)fnv64(topic),
             (int)m->partition, (long long)m->offset);
}

bool kafka_json_invalid(const rd_kafka_message_t *m, char *buf, size_t len)
{
    if (!m->payload || m->len == 0) {
        snprintf(buf, len, "invalid JSON: the message has no value%s",
                 m->payload ? "" : " (a tombstone)");
        return true;
    }
    struct pb_json_check chk = {0};
    if (pb_json_validate(m->payload, m->len, &chk) == 0)
        return false;
    snprintf(buf, len, "invalid JSON: %s at byte %zu",
             chk.err_reason ? chk.err_reason : "malformed", chk.err_offset);
    return true;
}
