"""servers.py: a server a test module starts once serves all of its cases.
The runner kills the processes a case started and removes its temporary
root after it; a server and its directory must survive that until the
interpreter exits."""

import os
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import check, check_eq, run, test  # noqa: E402
from servers import Server  # noqa: E402


class Files(Server):
    """python3's own HTTP file server on the port, serving its directory."""

    name = "files"

    def argv(self):
        return [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                self.dir, str(self.port)]

    def prepare(self):
        with open(os.path.join(self.dir, "hello.txt"), "w") as f:
            f.write("hello")


SERVER = None


def server():
    global SERVER
    if SERVER is None:
        SERVER = Files()
    return SERVER


def fetch(s):
    with urllib.request.urlopen(f"http://127.0.0.1:{s.port}/hello.txt", timeout=5) as r:
        return r.read().decode()


@test
def first_case_starts_the_server():
    s = server()
    check_eq(fetch(s), "hello", "served")
    check_eq(s.starts, 1, "started once")


@test
def second_case_finds_it_running_with_its_directory():
    s = server()
    check(s.running(), "still running after the first case")
    check(os.path.isdir(s.dir), "its directory is still there")
    check_eq(fetch(s), "hello", "served")
    check_eq(s.starts, 1, "not started again")


@test
def kill9_and_restart_on_the_same_port():
    s = server()
    port = s.port
    s.kill9()
    check(not s.running(), "killed")
    s.restart()
    check_eq((s.port, s.starts), (port, 2), "same port, second start")
    check_eq(fetch(s), "hello", "served again from the same directory")


if __name__ == "__main__":
    run()
