/* pb_log.h - logging to stderr, human or JSON lines.
 *
 * Messages are an event text followed by key=value fields:
 *     PB_INFO("delivered pipeline=%s output=%s msg_id=%s attempt=%d", ...);
 * The macros skip argument evaluation below the active level. Never pass a
 * secret value: print "***" instead (pb_log_secret() returns it). */
#ifndef PB_LOG_H
#define PB_LOG_H

#include <stddef.h>

enum pb_log_level { PB_LOG_DEBUG = 0, PB_LOG_INFO, PB_LOG_WARN, PB_LOG_ERROR, PB_LOG_OFF };
enum pb_log_format { PB_LOG_HUMAN = 0, PB_LOG_JSON };

extern int pb_log_level_min;

void pb_log_setup(enum pb_log_level min, enum pb_log_format format);
int pb_log_parse_level(const char *s, enum pb_log_level *out);
void pb_log_write(enum pb_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* s escaped for a quoted value (key="..."): \" \\ \n \r \t and \xHH for
 * other control bytes, so a partner's text is kept exactly and cannot break
 * the line; JSON lines decode it back. Cut at len, never inside an escape.
 * Returns buf. */
const char *pb_log_value(const char *s, char *buf, size_t len);

#define PB_LOG(level, ...)                                                                         \
    do {                                                                                           \
        if ((int)(level) >= pb_log_level_min)                                                      \
            pb_log_write((level), __VA_ARGS__);                                                    \
    } while (0)
#define PB_DEBUG(...) PB_LOG(PB_LOG_DEBUG, __VA_ARGS__)
#define PB_INFO(...) PB_LOG(PB_LOG_INFO, __VA_ARGS__)
#define PB_WARN(...) PB_LOG(PB_LOG_WARN, __VA_ARGS__)
#define PB_ERROR(...) PB_LOG(PB_LOG_ERROR, __VA_ARGS__)

#endif
