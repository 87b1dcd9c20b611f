/* poll_state.c - the http_poll input's checkpoint: the committed cursor
 * and, while a run is under way, where it stands, as JSON text (written
 * with each page's records, read back at start).
 *
 * Threads: the input's loop thread (pure functions of struct in_poll). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_poll_int.h"
#include "patchbay/pb_log.h"

/* The checkpoint: the committed cursor and, while a run is under way, where
 * it stands (the next page to read). */
char *poll_state_text(struct in_poll *p, jv cursor, bool run_ends)
{
    jv st = jv_object_set(jv_object(), jv_string("v"), jv_number(1));
    st = jv_object_set(st, jv_string("cursor"), cursor);
    if (!run_ends) {
        jv r = jv_object();
        r = jv_object_set(r, jv_string("page_no"), jv_number((double)p->page_no));
        r = jv_object_set(r, jv_string("page"), jv_number((double)p->page));
        r = jv_object_set(r, jv_string("offset"), jv_number((double)p->offset));
        r = jv_object_set(r, jv_string("token"), p->token ? jv_string(p->token) : jv_null());
        r = jv_object_set(r, jv_string("url"), p->next_url ? jv_string(p->next_url) : jv_null());
        r = jv_object_set(r, jv_string("sent"), jv_copy(p->sent));
        r = jv_object_set(r, jv_string("max"), jv_copy(p->run_max));
        st = jv_object_set(st, jv_string("run"), r);
    }
    char *s = NULL;
    if (pb_jq_dump(st, &s, NULL, NULL) != 0)
        return NULL;
    return s;
}

void poll_state_load(struct in_poll *p, const char *text, size_t len)
{
    jv st = jv_parse_sized(text, (int)len);
    if (jv_get_kind(st) != JV_KIND_OBJECT) {
        jv_free(st);
        PB_WARN("http_poll: checkpoint unreadable, starting afresh pipeline=%s", p->pipeline);
        return;
    }
    jv_free(p->committed);
    p->committed = jv_object_get(jv_copy(st), jv_string("cursor"));
    if (!jv_is_valid(p->committed))
        p->committed = jv_null();
    jv r = jv_object_get(jv_copy(st), jv_string("run"));
    if (jv_get_kind(r) == JV_KIND_OBJECT) {
        jv v;
        p->in_run = true;
        v = jv_object_get(jv_copy(r), jv_string("page_no"));
        p->page_no = jv_get_kind(v) == JV_KIND_NUMBER ? (int64_t)jv_number_value(v) : 0;
        jv_free(v);
        v = jv_object_get(jv_copy(r), jv_string("page"));
        p->page = jv_get_kind(v) == JV_KIND_NUMBER ? (int64_t)jv_number_value(v) : 0;
        jv_free(v);
        v = jv_object_get(jv_copy(r), jv_string("offset"));
        p->offset = jv_get_kind(v) == JV_KIND_NUMBER ? (int64_t)jv_number_value(v) : 0;
        jv_free(v);
        v = jv_object_get(jv_copy(r), jv_string("token"));
        p->token = jv_get_kind(v) == JV_KIND_STRING ? strdup(jv_string_value(v)) : NULL;
        jv_free(v);
        v = jv_object_get(jv_copy(r), jv_string("url"));
        p->next_url = jv_get_kind(v) == JV_KIND_STRING ? strdup(jv_string_value(v)) : NULL;
        jv_free(v);
        jv_free(p->sent);
        p->sent = jv_object_get(jv_copy(r), jv_string("sent"));
        jv_free(p->run_max);
        p->run_max = jv_object_get(jv_copy(r), jv_string("max"));
        if (!jv_is_valid(p->sent))
            p->sent = jv_null();
        if (!jv_is_valid(p->run_max))
            p->run_max = jv_null();
    }
    jv_free(r);
    jv_free(st);
}
