/* notify.c - systemd's service notifications, without libsystemd.
 *
 * Under Type=notify systemd passes $NOTIFY_SOCKET, a Unix datagram socket
 * (a path, or an abstract name written with a leading '@'), and waits for
 * "READY=1" before it calls the service started; "STOPPING=1" says a stop
 * has begun, "RELOADING=1" a reload, "STATUS=..." is shown by systemctl
 * status, and with WatchdogSec= "WATCHDOG=1" must come at least every
 * $WATCHDOG_USEC or the service is restarted. Each message is one datagram
 * of newline-separated assignments (sd_notify(3)).
 *
 * Any thread: each call opens, sends on and closes its own socket. */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/notify.h"
#include "patchbay/pb_conf.h"
#include "patchbay/pb_err.h"

int pb_notify(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n;
    if (!path || !*path)
        return 0;
    n = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || n >= sizeof(sa.sun_path))
        return PB_EINVAL;
    memcpy(sa.sun_path, path, n);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = 0; /* abstract namespace: the length says where it ends */
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return PB_EIO;
    ssize_t w;
    do
        w = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, len);
    while (w < 0 && errno == EINTR);
    close(fd);
    return w == (ssize_t)strlen(state) ? 1 : PB_EIO;
}

int64_t pb_notify_watchdog_interval(const char *usec, const char *pid, pid_t self)
{
    int64_t us, p;
    if (!usec || pb_parse_int(usec, &us) != 0 || us <= 0)
        return 0;
    if (pid && *pid && (pb_parse_int(pid, &p) != 0 || p != (int64_t)self))
        return 0; /* meant for another process */
    int64_t ms = us / 2000;
    return ms > 0 ? ms : 1;
}
