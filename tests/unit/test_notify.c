/* test_notify.c - sd_notify without libsystemd: datagrams reach a socket of
 * the test's own, named by a path or in the abstract namespace; the
 * watchdog interval is half of WATCHDOG_USEC and only for this process. */
#include "pb_test.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/notify.h"

static int listener(const char *name, bool abstract)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(name);
    memcpy(sa.sun_path, name, n);
    if (abstract)
        sa.sun_path[0] = 0;
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (bind(fd, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n)))
        return -1;
    return fd;
}

static void expect(int fd, const char *want)
{
    char buf[256];
    ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
    buf[n > 0 ? n : 0] = 0;
    PB_EQ_STR(buf, want);
}

PB_TEST(path_socket)
{
    char path[108];
    snprintf(path, sizeof(path), "/tmp/pbnotify-%d.sock", (int)getpid());
    unlink(path);
    int fd = listener(path, false);
    PB_CHECK(fd >= 0);
    setenv("NOTIFY_SOCKET", path, 1);
    PB_EQ_INT(pb_notify("READY=1\nSTATUS=running"), 1);
    expect(fd, "READY=1\nSTATUS=running");
    PB_EQ_INT(pb_notify("STOPPING=1"), 1);
    expect(fd, "STOPPING=1");
    close(fd);
    unlink(path);
    /* Nobody listening any more: an error, never a crash or a hang. */
    PB_CHECK(pb_notify("WATCHDOG=1") < 0);
    unsetenv("NOTIFY_SOCKET");
}

PB_TEST(abstract_socket)
{
    char name[64];
    snprintf(name, sizeof(name), "@pbnotify-%d", (int)getpid());
    int fd = listener(name, true);
    PB_CHECK(fd >= 0);
    setenv("NOTIFY_SOCKET", name, 1);
    PB_EQ_INT(pb_notify("WATCHDOG=1"), 1);
    expect(fd, "WATCHDOG=1");
    close(fd);
    unsetenv("NOTIFY_SOCKET");
}

PB_TEST(no_socket_or_a_bad_one)
{
    unsetenv("NOTIFY_SOCKET");
    PB_EQ_INT(pb_notify("READY=1"), 0);
    setenv("NOTIFY_SOCKET", "", 1);
    PB_EQ_INT(pb_notify("READY=1"), 0);
    setenv("NOTIFY_SOCKET", "relative/path", 1);
    PB_CHECK(pb_notify("READY=1") < 0);
    char long_path[200];
    memset(long_path, 'a', sizeof(long_path) - 1);
    long_path[0] = '/';
    long_path[sizeof(long_path) - 1] = 0;
    setenv("NOTIFY_SOCKET", long_path, 1);
    PB_CHECK(pb_notify("READY=1") < 0);
    unsetenv("NOTIFY_SOCKET");
}

PB_TEST(watchdog_interval)
{
    PB_EQ_INT(pb_notify_watchdog_interval("10000000", NULL, 42), 5000);
    PB_EQ_INT(pb_notify_watchdog_interval("10000000", "42", 42), 5000);
    PB_EQ_INT(pb_notify_watchdog_interval("10000000", "", 42), 5000);
    PB_EQ_INT(pb_notify_watchdog_interval("10000000", "43", 42), 0);
    PB_EQ_INT(pb_notify_watchdog_interval("1000", NULL, 42), 1);
    PB_EQ_INT(pb_notify_watchdog_interval("0", NULL, 42), 0);
    PB_EQ_INT(pb_notify_watchdog_interval("-5", NULL, 42), 0);
    PB_EQ_INT(pb_notify_watchdog_interval("10s", NULL, 42), 0);
    PB_EQ_INT(pb_notify_watchdog_interval(NULL, NULL, 42), 0);
}

int main(void)
{
    return pb_test_main();
}
