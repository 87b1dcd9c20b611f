"""Fault 2 - SIGTERM under load.

A client posts without pause while the daemon gets SIGTERM at a random
moment, cycle after cycle (4 short, 20 long), each time restarted on the
same state. The partner differs per cycle:

  fast      answers in 0-20 ms: attempts in flight finish, the daemon exits
            well inside shutdown_timeout and logs no cut-short attempts;
  hanging   holds every request for 20 s (longer than shutdown_timeout):
            the attempts in flight are cut short at shutdown_timeout, stay
            pending and are made again after the restart;
  down      refuses connections (deliveries retrying): exits at once.

Every cycle must exit 0 within shutdown_timeout plus a small margin for
teardown. Requests arriving during shutdown get 503 or no connection,
never a 202 that is then forgotten: after the last restart every
acknowledged message is delivered."""

import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib  # noqa: E402
from faultlib import Deliveries, log, rng  # noqa: E402
from pbtest import Patchbay, Poster, check, check_eq, scaled, start_sink, test, wait_until  # noqa: E402

CYCLES = 20 if faultlib.LONG else 4
SHUTDOWN_TIMEOUT = 3.0
MODES = ("fast", "hanging", "fast", "down")

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
shutdown_timeout: 3s
pipelines:
  orders:
    input:
      http_server: { path: /hooks/shop }
    outputs:
      payments:
        http:
          url: "SINK/charges"
          timeout: 30s
          map: '{order: .id}'
          retry: { max_attempts: 1000, initial: 50ms, max: 1s, max_age: 1h }
          concurrency: 16
"""


@test
def sigterm_under_load():
    sink = start_sink(delay_jitter_ms=20, threads=2)
    pb = Patchbay(CONFIG.replace("SINK", sink.url))
    dl = Deliveries(sink)
    poster = Poster(pb.port, "/hooks/shop", faultlib.order, concurrency=16).start()
    exits = []
    try:
        for cycle in range(CYCLES):
            mode = MODES[cycle % len(MODES)]
            if mode == "hanging":
                sink.set_mode(delay_ms=20_000)
            elif mode == "down":
                sink.kill()
            target = poster.count_acked() + rng.randint(100, 600)
            wait_until(lambda: poster.count_acked() >= target, 60, f"cycle {cycle + 1}: {target} acks")
            if mode == "hanging":
                lab = dict(pipeline="orders", output="payments")
                wait_until(lambda: pb.metrics().value("patchbay_deliveries_inflight", **lab) > 0,
                           20, "attempts hanging at the partner")
            time.sleep(rng.uniform(0.0, 0.3))
            log_before = len(pb.log())
            t = time.monotonic()
            code = pb.term(timeout=SHUTDOWN_TIMEOUT + 30)
            dt = time.monotonic() - t
            text = pb.log()[log_before:]
            cut = re.search(r"attempts_in_flight=(\d+)", text)
            stopped = re.search(r"stopped in_ms=(\d+)", text)
            exits.append({"mode": mode, "seconds": round(dt, 2), "code": code,
                          "cut_short": int(cut.group(1)) if cut else 0})
            log(f"cycle {cycle + 1}/{CYCLES} ({mode}): SIGTERM after {poster.count_acked()} acks -> "
                f"exit {code} in {dt:.2f}s, attempts cut short: {exits[-1]['cut_short']}")
            check_eq(code, 0, f"cycle {cycle + 1}: exit code after SIGTERM")
            check(stopped, f"cycle {cycle + 1}: 'stopped' logged")
            check(dt <= SHUTDOWN_TIMEOUT + scaled(2.0),
                  f"cycle {cycle + 1} ({mode}): exit took {dt:.2f}s, shutdown_timeout is {SHUTDOWN_TIMEOUT}s")
            if mode == "fast":
                check(not cut, f"cycle {cycle + 1}: a fast partner's attempts finish inside "
                               f"shutdown_timeout, but some were cut short")
            if mode == "hanging":
                check(cut, f"cycle {cycle + 1}: hanging attempts are reported as cut short")
                sink.set_mode(delay_ms=0)
            if mode == "down":
                sink.restart()
            pb.start()
        target = poster.count_acked() + 300
        wait_until(lambda: poster.count_acked() >= target, 60, "acknowledgements after the last restart")
    finally:
        poster.stop()

    acked = [mid for _, mid in poster.acked()]
    statuses = {}
    for _, st, _ in poster.results:
        statuses[str(st)] = statuses.get(str(st), 0) + 1
    log(f"{len(acked)} acknowledged; answers by status: {statuses}")
    figures = faultlib.check_ledger(acked, dl, ("payments",), 120)
    faultlib.wait_backlog_zero(pb, 60)
    check_eq(pb.dead_letters(), [], "dead letters")
    t = time.monotonic()
    check_eq(pb.term(), 0, "final exit code")
    exits.append({"mode": "idle", "seconds": round(time.monotonic() - t, 2), "code": 0, "cut_short": 0})
    faultlib.integrity_ok(os.path.join(pb.dir, "state.db"))
    worst = max(e["seconds"] for e in exits)
    faultlib.result("sigterm", cycles=CYCLES, acknowledged=len(acked), answers=statuses,
                    shutdown_timeout_s=SHUTDOWN_TIMEOUT, worst_exit_s=worst,
                    cut_short_total=sum(e["cut_short"] for e in exits), exits=exits, **figures)


if __name__ == "__main__":
    faultlib.main()
