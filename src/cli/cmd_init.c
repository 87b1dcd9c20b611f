/* cmd_init.c - `patchbay init [PATTERN]` (written below). */
#include "cli/cli.h"

int pb_cmd_init(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return 2;
}
