/* test_progress.c - the progress line and summary of `patchbay run --once`. */
#include <string.h>

#include "core/progress.h"
#include "pb_test.h"

PB_TEST(line_with_files)
{
    struct pb_progress_view v = {.files = true,
                                 .files_total = 50,
                                 .files_done = 25,
                                 .files_failed = 1,
                                 .records = 1200,
                                 .delivered = 1100,
                                 .dead = 2,
                                 .pending = 98};
    char buf[256];
    pb__progress_format(&v, 3400, false, 10, buf, sizeof(buf));
    PB_EQ_STR(buf,
              "[#####-----] 25/50 files  1200 records  1100 delivered  2 dead  98 pending  3.4s");
    pb__progress_format(&v, 125000, true, 0, buf, sizeof(buf));
    PB_EQ_STR(buf, "run --once: 25 files (1 failed), 1200 records, 1100 delivered, 2 dead-lettered "
                   "in 2m05s");
}

PB_TEST(line_without_files_follows_deliveries)
{
    struct pb_progress_view v = {.records = 40, .delivered = 30, .dead = 0, .pending = 10};
    char buf[256];
    pb__progress_format(&v, 500, false, 4, buf, sizeof(buf));
    PB_EQ_STR(buf, "[###-] 40 messages  30 delivered  0 dead  10 pending  0.5s");
    pb__progress_format(&v, 500, true, 0, buf, sizeof(buf));
    PB_EQ_STR(buf, "run --once: 40 messages, 30 delivered, 0 dead-lettered in 0.5s");
    struct pb_progress_view z = {0};
    pb__progress_format(&z, 0, false, 3, buf, sizeof(buf));
    PB_EQ_STR(buf, "[---] 0 messages  0 delivered  0 dead  0 pending  0.0s");
}

int main(void)
{
    return pb_test_main();
}
