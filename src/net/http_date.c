/* http_date.c - HTTP header values with dates and delays: Retry-After
 * (delta-seconds or an IMF-fixdate). Pure: the clock is passed in. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "patchbay/pb_err.h"
#include "patchbay/pb_http.h"

/* A partner may ask us to wait, but not for longer than this: past it the
 * message's max_age decides, not the partner. */
#define RETRY_AFTER_CAP_MS (24LL * 60 * 60 * 1000)

static bool is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

static bool is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

/* Exactly n digits at s into *out. */
static bool digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
 * days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m)
{
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : mdays[m - 1];
}

/* IMF-fixdate, "Sun, 06 Nov 1994 08:49:37 GMT" (RFC 9110 5.6.7), exactly
 * 29 characters. Returns false on anything else. */
static bool parse_imf_fixdate(const char *s, size_t len, int64_t *unix_ms)
{
    static const char *const wdays[] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    int day, year, hh, mm, ss, mon = 0;
    bool wday_ok = false;

    if (len != 29)
        return false;
    for (int i = 0; i < 7; i++)
        if (memcmp(s, wdays[i], 3) == 0)
            wday_ok = true;
    if (!wday_ok || s[3] != ',' || s[4] != ' ' || s[7] != ' ' || s[11] != ' ' || s[16] != ' ' ||
        s[19] != ':' || s[22] != ':' || memcmp(s + 25, " GMT", 4) != 0)
        return false;
    for (int i = 0; i < 12; i++)
        if (memcmp(s + 8, months[i], 3) == 0)
            mon = i + 1;
    if (!mon || !digits(s + 5, 2, &day) || !digits(s + 12, 4, &year) || !digits(s + 17, 2, &hh) ||
        !digits(s + 20, 2, &mm) || !digits(s + 23, 2, &ss))
        return false;
    if (day < 1 || day > days_in_month(year, mon) || hh > 23 || mm > 59 || ss > 60)
        return false;
    int64_t secs = days_from_civil(year, mon, day) * 86400 + hh * 3600 + mm * 60 + ss;
    *unix_ms = secs * 1000;
    return true;
}

int pb_parse_retry_after(const char *value, int64_t now_ms, int64_t *delay_ms)
{
    if (!value || !delay_ms)
        return PB_EINVAL;
    const char *s = value;
    while (is_ows(*s))
        s++;
    size_t len = strlen(s);
    while (len > 0 && (is_ows(s[len - 1]) || s[len - 1] == '\r' || s[len - 1] == '\n'))
        len--;
    if (len == 0)
        return PB_EINVAL;

    if (is_digit(s[0])) {
        /* delta-seconds = 1*DIGIT; saturate instead of overflowing. */
        int64_t secs = 0;
        for (size_t i = 0; i < len; i++) {
            if (!is_digit(s[i]))
                return PB_EINVAL;
            if (secs <= RETRY_AFTER_CAP_MS / 1000)
                secs = secs * 10 + (s[i] - '0');
        }
        int64_t ms = secs > RETRY_AFTER_CAP_MS / 1000 ? RETRY_AFTER_CAP_MS : secs * 1000;
        *delay_ms = ms;
        return 0;
    }

    int64_t at;
    if (!parse_imf_fixdate(s, len, &at))
        return PB_EINVAL;
    /* Past dates mean "now"; compare before subtracting so no overflow. */
    if (at <= now_ms)
        *delay_ms = 0;
    else if (now_ms < at - RETRY_AFTER_CAP_MS)
        *delay_ms = RETRY_AFTER_CAP_MS;
    else
        *delay_ms = at - now_ms;
    return 0;
}
