/* poll_util.h - the pure parts of the http_poll input: cron schedules,
 * RFC 8288 Link headers, URLs and query parameters, and the lookback
 * applied to an incremental cursor. No I/O; the clock is passed in. */
#ifndef PB_POLL_UTIL_H
#define PB_POLL_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jv.h>

/* A five-field cron expression (minute hour day-of-month month
 * day-of-week; *, lists, ranges, steps; day-of-week 0-7 with 0 and 7
 * Sunday), evaluated in UTC. */
struct poll_cron {
    uint64_t minute; /* bit per allowed value */
    uint32_t hour, dom, month;
    uint8_t dow;
    bool dom_any, dow_any;
};
/* 0 or -1 (with why) for a malformed expression. */
int poll_cron_parse(const char *s, struct poll_cron *c, char *why, size_t whylen);
/* The first minute strictly after now_ms that matches (unix ms), or -1
 * when none comes within five years. */
int64_t poll_cron_next(const struct poll_cron *c, int64_t now_ms);

/* The target of the first rel="next" link in a Link header value (several
 * links, comma separated), unresolved, into out. true when found. */
bool poll_link_next(const char *header, char *out, size_t len);

/* ref resolved against base (RFC 3986), malloc'd; NULL when either is not
 * a URL. */
char *poll_url_resolve(const char *base, const char *ref);
/* url with name=value added to its query (value percent-encoded),
 * malloc'd; NULL on a bad URL. */
char *poll_url_add(const char *url, const char *name, const char *value);

/* A cursor value moved back by lookback_ms: an RFC 3339 timestamp (the
 * result in UTC, "Z", with milliseconds when the value had a fraction), or
 * a number of unix seconds (milliseconds when above 10^11). Anything else
 * comes back unchanged. Takes v. */
jv poll_cursor_back(jv v, int64_t lookback_ms);

/* A scalar as query-parameter text (strings as they are, numbers as JSON),
 * malloc'd; NULL for anything else. Borrows v. */
char *poll_scalar_text(jv v);

#endif
