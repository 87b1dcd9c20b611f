"""broker.py - one message broker for bench/run.sh, started the way the system
tests start it (tests/system/srv_*.py): on 127.0.0.1, free ports, its data
in a directory of its own.

    python3 bench/broker.py KIND DIR [--topic NAME:PARTITIONS]... [--max-inflight N]

KIND is nats (nats-server with JetStream), amqp (rabbitmq-server), redis
(redis-server, append-only file fsynced on every write), mqtt (mosquitto,
persistence on) or kafka (librdkafka's mock cluster, tests/tools/pb_kafka_mock;
--topic creates a topic). The server's files go under DIR. Once the broker
takes connections, DIR/broker.env holds shell assignments:

    url=...      how a client reaches it (kafka: the bootstrap list)
    port=...     its port
    pid=...      the server's process (the bench sums the CPU of it and its children)

Then the script waits; SIGTERM or SIGINT stops the broker (as the tests do:
rabbitmqctl stop, SIGTERM to the others) and ends it. PB_SINK must name
the build's pb_sink: the fixtures find pb_amqp, pb_nats and pb_kafka_mock
next to it.

Thread model: one thread, the fixtures' own. Standard library only.
"""

import os
import signal
import sys
import threading

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "tests", "system"))

import pbtest  # noqa: E402
import servers  # noqa: E402


def start(kind, topics, max_inflight):
    if kind == "nats":
        from srv_nats import Nats
        return Nats()
    if kind == "amqp":
        from srv_amqp import RabbitMQ
        return RabbitMQ()
    if kind == "redis":
        from srv_redis_streams import Redis
        return Redis()
    if kind == "mqtt":
        from srv_mqtt import Mosquitto
        return Mosquitto(max_inflight=max_inflight)
    if kind == "kafka":
        from srv_kafka import Kafka
        return Kafka(topics=topics)
    raise SystemExit(f"broker.py: unknown broker {kind!r} (nats, amqp, redis, mqtt, kafka)")


def main():
    args = sys.argv[1:]
    if len(args) < 2:
        raise SystemExit(__doc__)
    kind, root = args[0], os.path.abspath(args[1])
    topics, max_inflight = [], None
    rest = iter(args[2:])
    for a in rest:
        if a == "--topic":
            topics.append(next(rest))
        elif a == "--max-inflight":
            max_inflight = int(next(rest))
        else:
            raise SystemExit(f"broker.py: unknown option {a!r}")
    os.makedirs(root, exist_ok=True)
    # The fixtures' directories go under root (and nothing removes them on
    # exit: the bench owns root).
    servers._root = root
    pbtest._tmp_root = root

    done = threading.Event()

    def on_signal(signum, frame):
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    srv = start(kind, topics, max_inflight)
    try:
        url = srv.bootstrap if kind == "kafka" else srv.url
        tmp = os.path.join(root, "broker.env.tmp")
        with open(tmp, "w") as f:
            f.write(f"url='{url}'\nport={srv.port}\npid={srv.proc.pid}\n")
        os.rename(tmp, os.path.join(root, "broker.env"))
        while not done.wait(1):
            if not srv.running():
                raise SystemExit(f"broker.py: {kind} exited:\n{srv.tail()}")
    finally:
        srv.stop()
        if srv.running():
            srv.kill9()


if __name__ == "__main__":
    main()
