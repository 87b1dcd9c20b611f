/* test_log.c - log lines: JSON mode parses, fields come out as keys, and a
 * partner's error text cannot break the line. */
#include <jansson.h>
#include <unistd.h>

#include "patchbay/pb_log.h"
#include "pb_test.h"

/* Run one log call with stderr captured; returns the line (static buffer). */
static const char *capture(enum pb_log_format fmt, const char *reason)
{
    static char out[4096];
    int fds[2], saved = dup(2);
    if (pipe(fds) != 0 || saved < 0)
        return "";
    dup2(fds[1], 2);
    pb_log_setup(PB_LOG_DEBUG, fmt);
    char safe[256];
    PB_WARN("dead-lettered pipeline=%s attempt=%d reason=\"%s\"", "shop orders", 3,
            pb_log_value(reason, safe, sizeof(safe)));
    dup2(saved, 2);
    close(saved);
    close(fds[1]);
    ssize_t n = read(fds[0], out, sizeof(out) - 1);
    close(fds[0]);
    out[n > 0 ? n : 0] = 0;
    return out;
}

PB_TEST(json_line_parses_with_fields)
{
    const char *line = capture(PB_LOG_JSON, "HTTP 400: {\"ok\":false}\n\\x");
    json_error_t e;
    json_t *j = json_loads(line, 0, &e);
    PB_CHECK(j != NULL);
    if (!j) {
        fprintf(stderr, "  line: %s  error: %s\n", line, e.text);
        return;
    }
    PB_EQ_STR(json_string_value(json_object_get(j, "level")), "warn");
    PB_EQ_STR(json_string_value(json_object_get(j, "msg")), "dead-lettered");
    PB_CHECK(json_is_integer(json_object_get(j, "attempt")));
    PB_EQ_INT(json_integer_value(json_object_get(j, "attempt")), 3);
    PB_EQ_STR(json_string_value(json_object_get(j, "pipeline")), "shop orders");
    /* the partner's text exactly: quotes, newline and backslash kept */
    PB_EQ_STR(json_string_value(json_object_get(j, "reason")), "HTTP 400: {\"ok\":false}\n\\x");
    json_decref(j);
}

PB_TEST(human_line_has_level_and_fields)
{
    const char *line = capture(PB_LOG_HUMAN, "timeout");
    PB_CONTAINS(line, " warn  dead-lettered pipeline=shop orders attempt=3 reason=\"timeout\"");
    PB_CHECK(line[strlen(line) - 1] == '\n');
}

PB_TEST(human_line_escapes_partner_text)
{
    const char *line = capture(PB_LOG_HUMAN, "say \"hi\"\n\\ \x01");
    PB_CONTAINS(line, "reason=\"say \\\"hi\\\"\\n\\\\ \\x01\"");
    PB_CHECK(strchr(line, '\n') == line + strlen(line) - 1);
}

PB_TEST(log_value_never_cuts_an_escape)
{
    char buf[6];
    PB_EQ_STR(pb_log_value("ab\"cd", buf, sizeof(buf)), "ab\\\"c");
    PB_EQ_STR(pb_log_value("abcd\"", buf, sizeof(buf)), "abcd");
}

PB_TEST(below_level_is_not_written)
{
    int fds[2], saved = dup(2);
    PB_CHECK(pipe(fds) == 0);
    dup2(fds[1], 2);
    pb_log_setup(PB_LOG_ERROR, PB_LOG_HUMAN);
    int evaluated = 0;
    PB_INFO("never %d", ++evaluated); /* arguments are not even evaluated */
    dup2(saved, 2);
    close(saved);
    close(fds[1]);
    char buf[16];
    PB_EQ_INT(read(fds[0], buf, sizeof(buf)), 0);
    PB_EQ_INT(evaluated, 0);
    close(fds[0]);
}

int main(void)
{
    return pb_test_main();
}
