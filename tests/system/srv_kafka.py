"""srv_kafka - a Kafka cluster for system tests: librdkafka's mock cluster,
run by tests/tools/pb_kafka_mock (Debian ships no Kafka broker).

The mock speaks the Kafka protocol on 127.0.0.1 (a random port per broker)
and keeps its data in memory, so it is never restarted: a broker outage is
down() then up(), which cuts every connection and refuses new ones while
keeping the data, the committed offsets and the ports.

    from srv_kafka import Kafka
    k = Kafka(topics=["orders:4"])           # name:partitions[:leader broker]
    k.brokers_yaml                           # "[127.0.0.1:41234]" for a config
    k.produce("orders", 1000)                # {"n": 0..999} keyed k0..k999
    k.offsets("orders", group="g")           # committed and high watermarks
    k.consume("orders")                      # every message, as dicts
    k.down(); k.up()

Standard library only.
"""

import json
import os
import signal
import subprocess

from pbtest import PB_SINK, TestFailure, check, scaled, wait_until
from servers import Server


def tool():
    path = os.environ.get("PB_KAFKA_MOCK") or os.path.join(os.path.dirname(PB_SINK),
                                                            "pb_kafka_mock")
    check(os.access(path, os.X_OK), f"pb_kafka_mock not found at {path}")
    return path


class Kafka(Server):
    name = "kafka"

    def __init__(self, topics=(), brokers=1, topic_errors=(), start=True):
        self.topics = list(topics)
        self.nbrokers = brokers
        self.topic_errors = list(topic_errors)  # "name=code": metadata answers that error
        self._bootstrap = None
        super().__init__(start=start)

    @property
    def bootstrap_file(self):
        return os.path.join(self.dir, "bootstrap")

    def argv(self):
        a = [tool(), "serve", "--brokers", str(self.nbrokers), "--bootstrap-file",
             self.bootstrap_file]
        for t in self.topics:
            a += ["--topic", t]
        for e in self.topic_errors:
            a += ["--topic-error", e]
        return a

    def ready(self):
        try:
            with open(self.bootstrap_file) as f:
                self._bootstrap = f.read().strip()
            return bool(self._bootstrap)
        except OSError:
            return False

    def start(self, timeout=None):
        check(self.starts == 0, "the mock cluster keeps its data in memory: use down()/up()")
        return super().start(timeout)

    def restart(self, timeout=None):
        raise TestFailure("the mock cluster cannot restart with its data: use down()/up()")

    # -- addresses --------------------------------------------------------------------------

    @property
    def bootstrap(self):
        """The brokers as host:port, comma-separated."""
        return self._bootstrap

    @property
    def brokers(self):
        return self._bootstrap.split(",")

    @property
    def brokers_yaml(self):
        return "[" + ", ".join(self.brokers) + "]"

    # -- outages ------------------------------------------------------------------------------

    def _state(self):
        try:
            with open(self.bootstrap_file + ".state") as f:
                return f.read().strip()
        except OSError:
            return ""

    def down(self):
        """Every broker cuts its connections and refuses new ones; data stays."""
        os.kill(self.proc.pid, signal.SIGUSR1)
        wait_until(lambda: self._state() == "down", 10, "the mock brokers to go down")

    def up(self):
        os.kill(self.proc.pid, signal.SIGUSR2)
        wait_until(lambda: self._state() == "up", 10, "the mock brokers to come up")

    # -- clients ------------------------------------------------------------------------------

    def _run(self, args, timeout=120):
        r = subprocess.run([tool(), *args], stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=scaled(timeout))
        if r.returncode != 0:
            raise TestFailure(f"pb_kafka_mock {' '.join(args)} exited {r.returncode}: "
                              f"{r.stderr[-2000:]}")
        return r.stdout

    def produce(self, topic, count, start=0, pad=0, raw=None, partition=None, header=None):
        """count messages {"n": start.., "pad": "x"*pad} keyed "k<n>" (or the
        raw text count times) with one header ("source: pb_kafka_mock", or
        header=(name, value)); returns once every one was delivered."""
        a = ["produce", "--bootstrap", self.bootstrap, "--topic", topic, "--count", str(count),
             "--from", str(start), "--pad", str(pad)]
        if raw is not None:
            a += ["--raw", raw]
        if partition is not None:
            a += ["--partition", str(partition)]
        if header is not None:
            a += ["--header", f"{header[0]}={header[1]}"]
        return json.loads(self._run(a))

    def offsets(self, topic, group=None):
        """{"partitions": [{"partition", "low", "high", "committed"}], "high": sum,
        "committed": sum} (committed -1 where the group has none)."""
        a = ["offsets", "--bootstrap", self.bootstrap, "--topic", topic]
        if group:
            a += ["--group", group]
        return json.loads(self._run(a, timeout=60))

    def committed_at_end(self, topic, group):
        """True when the group's committed offset is the high watermark on
        every partition that has messages (nothing read and left
        unacknowledged)."""
        o = self.offsets(topic, group)
        return all(p["committed"] == p["high"] or (p["committed"] < 0 and p["high"] == p["low"])
                   for p in o["partitions"])

    def consume(self, topic, expect=None, timeout=60):
        """Every message of topic from the start to its end (or until expect
        were read): dicts with partition, offset, key, value, headers, timestamp."""
        a = ["consume", "--bootstrap", self.bootstrap, "--topic", topic, "--timeout",
             str(int(scaled(timeout)))]
        if expect is not None:
            a += ["--expect", str(expect)]
        out = self._run(a, timeout=timeout + 30)
        return [json.loads(line) for line in out.splitlines() if line.strip()]
