/* history_api.c - GET /api/metrics/history: the last hour of each
 * pipeline's and output's rates and gauges, from the engine's ring of
 * samples (src/core/history.c), for the dashboard's charts.
 *
 *   {interval_ms, capacity, times: [unix ms...],
 *    series: [{pipeline, output, metric, kind: "rate"|"gauge", values: [...]}]}
 *
 * Rates are per second over the interval ending at each time; a value is
 * null where the series was not sampled yet. ?since= returns only newer
 * samples (the dashboard asks for what it has not seen). Admin worker
 * thread; reads no store. */
#include <math.h>
#include <string.h>

#include "admin/api.h"
#include "core/history.h"

static json_t *number(double v)
{
    if (v < 0)
        return json_null();
    return json_real(round(v * 1000.0) / 1000.0);
}

/* One series of group g, metric m at offset k of the group. */
static json_t *series(const struct pb_history_snapshot *s, const struct pb_history_group *g,
                      const char *metric, size_t k, bool gauge, size_t first)
{
    json_t *vals = json_array();
    json_t *o =
        json_pack("{s:s, s:s?, s:s, s:s, s:o}", "pipeline", g->pipeline, "output", g->output,
                  "metric", metric, "kind", gauge ? "gauge" : "rate", "values", vals);
    if (!o)
        return NULL;
    size_t col = g->base + k;
    for (size_t i = first; i < s->n; i++) {
        int64_t v = s->values[i * s->width + col];
        json_t *x;
        if (gauge)
            x = v == PB_HISTORY_NONE ? json_null() : json_integer(v);
        else if (i == 0)
            x = json_null();
        else
            x = number(pb_history_rate(s->values[(i - 1) * s->width + col], s->times[i - 1], v,
                                       s->times[i]));
        if (!x || json_array_append_new(vals, x) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

int pb_admin_history(struct pb_engine *e, struct pb_http_request *c, struct pb_api_resp *r)
{
    int64_t since = 0;
    const char *a = pb_admin_arg(c, "since");
    if (a && pb_admin_parse_time(a, &since) != 0)
        return pb_admin_error(r, 400, "since: unix milliseconds or an RFC 3339 time");
    /* Strictly newer than since: the dashboard passes the last time it has. */
    if (a)
        since++;
    const char *only = pb_admin_arg(c, "pipeline");
    struct pb_history_snapshot s;
    if (!e->history || pb_engine_history_read(e->history, since, &s) != 0)
        return pb_admin_error(r, 500, "out of memory");
    /* The sample before the first one asked for is there only for rates. */
    size_t first = s.with_prev ? 1 : 0;
    json_t *times = json_array(), *list = json_array();
    bool bad = !times || !list;
    for (size_t i = first; !bad && i < s.n; i++)
        bad = json_array_append_new(times, json_integer(s.times[i])) != 0;
    for (size_t g = 0; !bad && g < s.ngroups; g++) {
        const struct pb_history_group *gr = &s.groups[g];
        if (only && strcmp(only, gr->pipeline) != 0)
            continue;
        size_t nm = gr->output ? PB_HM_OUT_COUNT : PB_HM_PL_COUNT;
        for (size_t k = 0; !bad && k < nm; k++) {
            const char *metric = gr->output ? pb_hm_output_names[k] : pb_hm_pipeline_names[k];
            bool gauge = gr->output && pb_hm_output_is_gauge((int)k);
            json_t *o = series(&s, gr, metric, k, gauge, first);
            bad = !o || json_array_append_new(list, o) != 0;
        }
    }
    int64_t interval = s.interval_ms;
    size_t cap = s.capacity;
    pb_history_snapshot_cleanup(&s);
    if (bad) {
        json_decref(times);
        json_decref(list);
        return pb_admin_error(r, 500, "out of memory");
    }
    json_t *out = json_pack("{s:I, s:I, s:o, s:o}", "interval_ms", (json_int_t)interval,
                            "capacity", (json_int_t)cap, "times", times, "series", list);
    /* Rates print as 4.2, not 4.2000000000000002. */
    r->body = out ? json_dumps(out, JSON_COMPACT | JSON_REAL_PRECISION(10)) : NULL;
    json_decref(out);
    if (!r->body)
        return pb_admin_error(r, 500, "out of memory");
    r->status = 200;
    return 0;
}
