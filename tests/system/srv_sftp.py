"""srv_sftp - Debian's OpenSSH server for the sftp tests, on 127.0.0.1 with a
free port and a folder of its own: its own config, host key, an authorized
test key (ed25519, no passphrase) and the internal SFTP server. It serves
the machine's file system as the user running the tests, so a test puts
files where the server reads them and looks at what it wrote.

    from srv_sftp import Sshd
    s = Sshd()                           # started, waited for
    s.url("inbox")                       # sftp://user@127.0.0.1:PORT/<root>/inbox
    s.path("inbox")                      # the same folder on the local disk
    s.known_hosts, s.wrong_known_hosts   # files to check its host key against
    s.kill_tree(); s.start()             # cut every session, then serve again

Standard library only (plus ssh-keygen and sshd from openssh-client/-server).
"""

import getpass
import os
import signal
import subprocess

from pbtest import TestFailure
from servers import Server

SSHD = "/usr/sbin/sshd"


class Sshd(Server):
    name = "sshd"

    def prepare(self):
        if not os.path.exists(SSHD):
            raise TestFailure("sshd not found: ./dev.sh installs openssh-server")
        # Debian's sshd wants its privilege separation folder, even for a
        # server that is not the system's.
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.user = getpass.getuser()
        self.root = os.path.join(self.dir, "files")
        os.makedirs(self.root)
        self.host_key = os.path.join(self.dir, "host_ed25519")
        self.client_key = os.path.join(self.dir, "client_ed25519")
        self.other_key = os.path.join(self.dir, "other_ed25519")
        for k in (self.host_key, self.client_key, self.other_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pbtest", "-f", k],
                           check=True, capture_output=True)
        self.authorized = os.path.join(self.dir, "authorized_keys")
        with open(self.client_key + ".pub") as f, open(self.authorized, "w") as out:
            out.write(f.read())
        self.known_hosts = os.path.join(self.dir, "known_hosts")
        self.wrong_known_hosts = os.path.join(self.dir, "wrong_known_hosts")
        with open(self.host_key + ".pub") as f:
            kt, kb = f.read().split()[:2]
        with open(self.known_hosts, "w") as f:
            f.write(f"[127.0.0.1]:{self.port} {kt} {kb}\n")
        with open(self.other_key + ".pub") as f:
            kt, kb = f.read().split()[:2]
        with open(self.wrong_known_hosts, "w") as f:
            f.write(f"[127.0.0.1]:{self.port} {kt} {kb}\n")
        r = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", self.host_key + ".pub"],
                           check=True, capture_output=True, text=True)
        self.host_key_sha256 = r.stdout.split()[1]
        self.config = os.path.join(self.dir, "sshd_config")
        with open(self.config, "w") as f:
            f.write(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
PidFile {self.dir}/sshd.pid
AuthorizedKeysFile {self.authorized}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
LogLevel VERBOSE
MaxStartups 100
""")

    def argv(self):
        return [SSHD, "-D", "-e", "-f", self.config]

    def url(self, sub=""):
        return f"sftp://{self.user}@127.0.0.1:{self.port}{self.root}/{sub}"

    def path(self, sub=""):
        p = os.path.join(self.root, sub)
        os.makedirs(p, exist_ok=True)
        return p

    def kill_tree(self):
        """kill -9 the server and every session it forked (they leave its
        process group), so connections in use are cut."""
        if self.proc is None:
            return
        kids = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(pid))
        todo, tree = [self.proc.pid], []
        while todo:
            p = todo.pop()
            tree.append(p)
            todo += kids.get(p, [])
        for p in tree:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
