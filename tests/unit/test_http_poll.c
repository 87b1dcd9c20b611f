/* test_http_poll.c - the pure parts of the http_poll input: cron schedules
 * (UTC, clock passed in), Link headers (RFC 8288), URL resolution and query
 * parameters, and the lookback applied to a cursor. */
#include "pb_test.h"

#include <time.h>

#include "plugins/inputs/http_poll/poll_util.h"

static int64_t at(int y, int mo, int d, int h, int mi)
{
    struct tm tm = {
        .tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi};
    return (int64_t)timegm(&tm) * 1000;
}

PB_TEST(cron_next_fire_times)
{
    struct poll_cron c;
    char why[128];
    PB_EQ_INT(poll_cron_parse("*/15 * * * *", &c, why, sizeof(why)), 0);
    PB_EQ_INT(poll_cron_next(&c, at(2024, 3, 1, 10, 7)), at(2024, 3, 1, 10, 15));
    PB_EQ_INT(poll_cron_next(&c, at(2024, 3, 1, 10, 15)), at(2024, 3, 1, 10, 30));
    PB_EQ_INT(poll_cron_parse("30 2 * * 1-5", &c, why, sizeof(why)), 0);
    /* Friday 2024-03-01 after 02:30 -> Monday 2024-03-04 02:30 */
    PB_EQ_INT(poll_cron_next(&c, at(2024, 3, 1, 3, 0)), at(2024, 3, 4, 2, 30));
    PB_EQ_INT(poll_cron_parse("0 0 29 2 *", &c, why, sizeof(why)), 0);
    PB_EQ_INT(poll_cron_next(&c, at(2024, 3, 1, 0, 0)), at(2028, 2, 29, 0, 0));
    PB_EQ_INT(poll_cron_parse("0 12 * * 7", &c, why, sizeof(why)), 0); /* 7 is Sunday */
    PB_EQ_INT(poll_cron_next(&c, at(2024, 3, 1, 0, 0)), at(2024, 3, 3, 12, 0));
    PB_EQ_INT(poll_cron_parse("0 0 1,15 * 0", &c, why, sizeof(why)), 0); /* dom or dow */
    PB_EQ_INT(poll_cron_next(&c, at(2024, 3, 1, 1, 0)), at(2024, 3, 3, 0, 0));
    PB_EQ_INT(poll_cron_parse("* * *", &c, why, sizeof(why)), -1);
    PB_EQ_INT(poll_cron_parse("60 * * * *", &c, why, sizeof(why)), -1);
    PB_CHECK(strstr(why, "minute") != NULL);
    PB_EQ_INT(poll_cron_parse("0 0 31 2 *", &c, why, sizeof(why)), 0);
    PB_EQ_INT(poll_cron_next(&c, at(2024, 3, 1, 0, 0)), -1); /* never */
}

PB_TEST(link_headers)
{
    char out[256];
    PB_CHECK(poll_link_next("<https://a.example/x?page=2>; rel=\"next\"", out, sizeof(out)));
    PB_EQ_STR(out, "https://a.example/x?page=2");
    PB_CHECK(
        poll_link_next("</p?page=9>; rel=\"last\", </p?page=3>; rel=\"next\"", out, sizeof(out)));
    PB_EQ_STR(out, "/p?page=3");
    PB_CHECK(poll_link_next("</p?a=1,2>; title=\"x, y\"; rel=\"prefetch NEXT\"", out, sizeof(out)));
    PB_EQ_STR(out, "/p?a=1,2");
    PB_CHECK(poll_link_next("</n>;rel=next", out, sizeof(out)));
    PB_EQ_STR(out, "/n");
    PB_CHECK(!poll_link_next("</p?page=1>; rel=\"prev\"", out, sizeof(out)));
    PB_CHECK(!poll_link_next("garbage", out, sizeof(out)));
    PB_CHECK(!poll_link_next("</next-but-not-rel>; rel=\"nextish\"", out, sizeof(out)));
}

PB_TEST(urls_and_parameters)
{
    char *u = poll_url_resolve("http://h:1/api/orders?page=1", "/api/orders?page=2");
    PB_EQ_STR(u, "http://h:1/api/orders?page=2");
    free(u);
    u = poll_url_resolve("http://h/api/v1/orders", "next?c=x");
    PB_EQ_STR(u, "http://h/api/v1/next?c=x");
    free(u);
    u = poll_url_add("http://h/o?a=1", "since", "2024-01-01T00:00:00+01:00");
    PB_EQ_STR(u, "http://h/o?a=1&since=2024-01-01T00%3a00%3a00%2b01%3a00");
    free(u);
    u = poll_url_add("http://h/o", "page", "2");
    PB_EQ_STR(u, "http://h/o?page=2");
    free(u);
}

PB_TEST(lookback_moves_timestamps_and_numbers_back)
{
    jv v = poll_cursor_back(jv_string("2024-03-01T00:02:00Z"), 5 * 60000);
    PB_EQ_STR(jv_string_value(v), "2024-02-29T23:57:00Z");
    jv_free(v);
    v = poll_cursor_back(jv_string("2024-03-01T01:00:00.250+01:00"), 1000);
    PB_EQ_STR(jv_string_value(v), "2024-02-29T23:59:59.250Z");
    jv_free(v);
    v = poll_cursor_back(jv_number(1700000000), 60000);
    PB_EQ_INT(jv_number_value(v), 1699999940);
    jv_free(v);
    v = poll_cursor_back(jv_number(1700000000000.0), 60000);
    PB_EQ_INT(jv_number_value(v), 1699999940000LL);
    jv_free(v);
    v = poll_cursor_back(jv_string("not a time"), 60000);
    PB_EQ_STR(jv_string_value(v), "not a time");
    jv_free(v);
    v = poll_cursor_back(jv_string("2024-03-01T00:02:00Z"), 0);
    PB_EQ_STR(jv_string_value(v), "2024-03-01T00:02:00Z");
    jv_free(v);
}

int main(void)
{
    return pb_test_main();
}
