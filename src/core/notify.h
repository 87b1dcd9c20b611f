/* notify.h - systemd's service notifications (sd_notify protocol), without
 * libsystemd (notify.c). */
#ifndef PB_CORE_NOTIFY_H
#define PB_CORE_NOTIFY_H

#include <stdint.h>
#include <sys/types.h>

/* Send state ("READY=1", "STOPPING=1", "WATCHDOG=1", "STATUS=..." lines)
 * to $NOTIFY_SOCKET: 1 when sent, 0 when there is no socket to send to
 * (not started by systemd), a negative PB_E* code when it failed. Any
 * thread; never blocks for long (a datagram). */
int pb_notify(const char *state);
/* How often to send WATCHDOG=1, in ms: half of usec (WATCHDOG_USEC), when
 * pid (WATCHDOG_PID, may be NULL) is unset or names self; 0 for none. */
int64_t pb_notify_watchdog_interval(const char *usec, const char *pid, pid_t self);

#endif
