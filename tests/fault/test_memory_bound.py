"""Fault 7 - memory stays bounded while a partner is down.

The partner is down (connections refused) while 30,000 messages of ~600
bytes arrive (200,000 in the long form), with limits.in_memory 1000: at
most 1000 pending deliveries are held in memory, the rest wait in the store
and are paged back in as room frees up. The daemon's resident memory is
sampled from /proc every 100 ms.

Bounds (documented in docs/reliability.md):
  - peak RSS (VmHWM) under RSS_BOUND_MIB (x3 under ASan/UBSan, whose shadow
    memory is counted too; the daemon then runs with a 16 MiB quarantine);
  - flat, not proportional to the backlog: RSS after the last message is at
    most GROWTH_BOUND_MIB above RSS after the first third (x3 under ASan),
    while the backlog tripled.
Ingest may push back (503) or the store may absorb; either is fine, and
every 503 is retried by the client. Then the partner comes back and every
acknowledged message is delivered, paged in from the store."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib  # noqa: E402
from faultlib import Deliveries, RssSampler, log, proc_status  # noqa: E402
from pbtest import Patchbay, Poster, check, check_eq, start_sink, test, wait_until  # noqa: E402

N = 200_000 if faultlib.LONG else 30_000
IN_MEMORY = 1000
RSS_BOUND_MIB = 64
GROWTH_BOUND_MIB = 24
FACTOR = 3 if faultlib.SANITIZE else 1

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
limits: { in_memory: 1000, ingest_queue: 2048 }
pipelines:
  orders:
    input:
      http_server: { path: /hooks/shop }
    outputs:
      payments:
        http:
          url: "SINK/charges"
          timeout: 5s
          retry: { max_attempts: 1000, initial: 200ms, max: 2s, max_age: 1d }
          concurrency: 32
"""


def body(i):
    return faultlib.order(i, pad=500)


@test
def memory_bounded_while_partner_down():
    sink = start_sink(threads=2)
    sink.kill()
    env = {}
    if faultlib.SANITIZE:
        # ASan's quarantine (256 MiB by default) would be most of what is measured.
        env["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=16"
    pb = Patchbay(CONFIG.replace("SINK", sink.url), env=env)
    sampler = RssSampler(pb.proc.pid)
    sampler.start()
    start_kib = proc_status(pb.proc.pid)["VmRSS"]
    t0 = time.monotonic()
    poster = Poster(pb.port, "/hooks/shop", body, concurrency=16).start()
    marks = {}
    for frac in (1, 2, 3):
        target = N * frac // 3
        wait_until(lambda: poster.count_acked() >= target, 600, f"{target} acknowledgements")
        marks[frac] = proc_status(pb.proc.pid)["VmRSS"]
        log(f"{poster.count_acked()} acknowledged after {time.monotonic() - t0:.0f}s: "
            f"RSS {marks[frac] / 1024:.1f} MiB, peak so far {sampler.peak_kib / 1024:.1f} MiB")
    poster.stop()
    ingest_s = time.monotonic() - t0
    acked = [mid for _, mid in poster.acked()]
    r503 = sum(1 for _, st, _ in poster.results if st == 503)
    m = pb.metrics()
    backlog = m.value("patchbay_backlog", pipeline="orders")
    log(f"{len(acked)} acknowledged in {ingest_s:.0f}s ({len(acked) / ingest_s:.0f}/s), "
        f"{r503} pushed back with 503; backlog {backlog:.0f}")
    check(backlog >= len(acked), f"backlog {backlog} holds every acknowledged message")
    peak = sampler.peak_kib / 1024.0
    growth = (marks[3] - marks[1]) / 1024.0
    bound, gbound = RSS_BOUND_MIB * FACTOR, GROWTH_BOUND_MIB * FACTOR
    log(f"RSS: {start_kib / 1024:.1f} MiB at start, peak {peak:.1f} MiB (bound {bound} MiB); "
        f"grew {growth:.1f} MiB from 1/3 to all of the backlog (bound {gbound} MiB)")
    check(peak <= bound, f"peak RSS {peak:.1f} MiB over the bound {bound} MiB")
    check(growth <= gbound, f"RSS grew {growth:.1f} MiB with the backlog (bound {gbound} MiB)")

    # The partner returns: everything is paged in from the store and delivered.
    sink.restart()
    dl = Deliveries(sink)
    t1 = time.monotonic()
    figures = faultlib.check_ledger(acked, dl, ("payments",), 900)
    drain_s = time.monotonic() - t1
    faultlib.wait_backlog_zero(pb, 60)
    peak_all = sampler.stop() / 1024.0
    log(f"delivered all {len(acked)} in {drain_s:.0f}s after the partner returned "
        f"({len(acked) / drain_s:.0f}/s); peak RSS over the whole run {peak_all:.1f} MiB")
    check(peak_all <= bound, f"peak RSS while draining {peak_all:.1f} MiB over the bound {bound} MiB")
    check_eq(pb.term(), 0, "exit code on SIGTERM")
    faultlib.result("memory_bound", messages=N, acknowledged=len(acked), pushed_back_503=r503,
                    in_memory=IN_MEMORY, body_bytes=len(str(body(0))),
                    rss_start_mib=round(start_kib / 1024, 1), rss_peak_mib=round(peak_all, 1),
                    rss_bound_mib=bound, growth_third_to_all_mib=round(growth, 1),
                    growth_bound_mib=gbound, ingest_per_s=round(len(acked) / ingest_s),
                    drain_per_s=round(len(acked) / drain_s), **figures)


if __name__ == "__main__":
    faultlib.main()
