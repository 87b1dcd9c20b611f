/* sqlite_wal.h - the check of a SQLite store's write-ahead log that runs
 * before SQLite opens the store (sqlite_wal.c). Not for use outside
 * src/store. */
#ifndef PB_STORE_SQLITE_WAL_H
#define PB_STORE_SQLITE_WAL_H

#include <stdint.h>

#include "patchbay/pb_err.h"

/* Would SQLite's replay of the log at wal_path lose a commit it holds?
 * db_page_size is the database file's page size, 0 when unknown; display
 * names the store in messages. The log is only read, never changed.
 *
 * 0 when the log is absent, empty or intact, or when all that fails is its
 * tail after the last commit (what a crash leaves; SQLite drops it).
 * PB_ECORRUPT + err when its header is damaged while it holds frames, or
 * when a frame fails although a later frame still closes a transaction.
 * PB_EIO, PB_EINVAL or PB_ENOMEM + err when it cannot be read. */
int pb__sqlite_wal_check(const char *wal_path, const char *display, uint32_t db_page_size,
                         struct pb_err *err);

#endif
