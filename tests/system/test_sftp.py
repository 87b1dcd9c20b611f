"""The sftp input and output against Debian's OpenSSH server (one sshd for
the module, its own config, host key and authorized test key): files taken
and archived on the server only after commit, the malformed one in
error_dir with its report uploaded, host keys refused when wrong or
unknown (trusted on first use only when asked), the outbound guard, the
server killed in the middle of a download and of uploads, kill -9 of
patchbay, an inline private key, and whole files written by the output."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import filegen  # noqa: E402
from pbtest import (Patchbay, check, check_eq, free_port, run, start_sink, test,  # noqa: E402
                    tmpdir, wait_until)
from srv_sftp import Sshd  # noqa: E402

SSHD = Sshd()
_n = [0]

INPUT = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
%(outbound)s
pipelines:
  remote:
    input:
      sftp:
        url: "%(url)s"
        private_key: %(key)s
        %(hostkey)s
        paths: ["*.csv"]
        format: csv
        archive_dir: done
        error_dir: failed
        min_age: %(min_age)s
        poll_interval: 200ms
        spool_dir: %(spool)s
        %(extra)s
    outputs:
      sink:
        http:
          url: "%(sink)s/in"
          map: '{id, file: $meta.name, record: $meta.record, from: $meta.url}'
"""


def folder():
    _n[0] += 1
    name = f"in{_n[0]}"
    return name, SSHD.path(name)


def input_conf(sub, sink, hostkey=None, outbound=True, key=None, min_age="0s", extra="",
               spool=None):
    return INPUT % {
        "url": SSHD.url(sub),
        "key": key or SSHD.client_key,
        "hostkey": f"known_hosts: {SSHD.known_hosts}" if hostkey is None else hostkey,
        "outbound": "outbound: { allow: [127.0.0.0/8] }" if outbound else "",
        "min_age": min_age,
        "spool": spool or tmpdir("spool"),
        "extra": extra,
        "sink": sink.url,
    }


def sink_ids(sink):
    out = {}
    for r in sink.records():
        doc = json.loads(r["body"])
        out.setdefault(doc["id"], set()).add(r["headers"].get("idempotency-key"))
    return out


def start_refused(conf, **kw):
    """A patchbay whose input will not connect: /ready stays 503."""
    pb = Patchbay(conf, start=False, **kw)
    pb.start(wait_ready=False)
    wait_until(lambda: pb.admin("GET", "/api/inputs")[0] == 200, 30, "the admin API")
    return pb


def the_input(pb):
    st, doc = pb.admin("GET", "/api/inputs")
    check_eq(st, 200, "/api/inputs")
    return doc["inputs"][0]


@test
def files_taken_then_archived_on_the_server():
    sink = start_sink()
    sub, local = folder()
    expected = set()
    for i in range(4):
        expected.update(filegen.write_csv(os.path.join(local, f"f{i}.csv"), f"f{i}", 50 * (i + 1)))
    with open(os.path.join(local, "bad.csv"), "wb") as f:
        f.write(b"id,qty,note\n1,2,3\n2,3\n")
    with open(os.path.join(local, "notes.txt"), "w") as f:
        f.write("not a match\n")
    pb = Patchbay(input_conf(sub, sink))
    wait_until(lambda: set(sink_ids(sink)) == expected, 60, "every record at the sink")
    wait_until(lambda: sorted(os.listdir(os.path.join(local, "done"))) ==
               [f"f{i}.csv" for i in range(4)], 30, "every file archived on the server")
    ids = sink_ids(sink)
    check(all(len(k) == 1 for k in ids.values()), "one message per record")
    wait_until(lambda: sorted(os.listdir(os.path.join(local, "failed"))) ==
               ["bad.csv", "bad.csv.error.json"], 30, "the malformed file in error_dir")
    with open(os.path.join(local, "failed", "bad.csv.error.json")) as f:
        rep = json.load(f)
    check_eq((rep["line"], rep["column"]), (3, 1), "the report's line and column")
    check("fields" in rep["reason"], f"the report's reason: {rep}")
    check(rep["file"].startswith("sftp://") and rep["file"].endswith("/bad.csv"), f"{rep['file']}")
    check(not any(i.startswith("bad") for i in ids), "nothing of the malformed file taken")
    check_eq(sorted(os.listdir(local)), ["done", "failed", "notes.txt"], "what is left")
    body = json.loads(sink.records()[0]["body"])
    check(body["from"].startswith(f"sftp://{SSHD.user}@127.0.0.1:{SSHD.port}/"), f"$meta.url {body}")
    check_eq(the_input(pb)["state"], "connected", "the input's state")
    # A file being written is left until it has been quiet for min_age.
    pb.term()
    sub2, local2 = folder()
    pb2 = Patchbay(input_conf(sub2, sink, min_age="1500ms"))
    path = os.path.join(local2, "slow.csv")
    with open(path, "wb") as f:
        f.write(b"id,qty,note\n")
        for i in range(1, 5):
            f.write(f"slow-{i},1,x\n".encode())
            f.flush()
            time.sleep(0.4)
            check("slow-1" not in sink_ids(sink), "nothing taken from a file being written")
    wait_until(lambda: {f"slow-{i}" for i in range(1, 5)} <= set(sink_ids(sink)), 30,
               "the quiet file taken")
    pb2.term()


@test
def host_keys_are_checked():
    sink = start_sink()
    sub, local = folder()
    filegen.write_csv(os.path.join(local, "k.csv"), "k", 5)
    # A key that differs from known_hosts: refused, nothing read.
    pb = start_refused(input_conf(sub, sink, hostkey=f"known_hosts: {SSHD.wrong_known_hosts}"))
    wait_until(lambda: the_input(pb)["state"] == "reconnecting", 20, "refused")
    detail = the_input(pb)["detail"]
    check("host key" in detail and "differs" in detail, f"the reason: {detail}")
    check(os.path.exists(os.path.join(local, "k.csv")), "the file untouched")
    check_eq(len(sink.records()), 0, "nothing taken")
    pb.term()
    # Unknown (an empty known_hosts): refused unless asked to trust it.
    kh = os.path.join(tmpdir("kh"), "known_hosts")
    open(kh, "w").close()
    pb = start_refused(input_conf(sub, sink, hostkey=f"known_hosts: {kh}"))
    wait_until(lambda: "not in known_hosts" in (the_input(pb)["detail"] or ""), 20,
               "an unknown key refused")
    pb.term()
    check_eq(len(sink.records()), 0, "nothing taken")
    pb = Patchbay(input_conf(sub, sink, hostkey=f"known_hosts: {kh}\n        "
                                                "accept_new_host_keys: true"))
    wait_until(lambda: len(sink_ids(sink)) == 5, 30, "trusted on first use when asked")
    with open(SSHD.host_key + ".pub") as f:
        hostkey = f.read().split()[1]
    with open(kh) as f:
        check(hostkey in f.read(), "the key added to known_hosts")
    pb.term()
    # Trusted from then on without accept_new_host_keys.
    filegen.write_csv(os.path.join(local, "k2.csv"), "k2", 2)
    pb = Patchbay(input_conf(sub, sink, hostkey=f"known_hosts: {kh}"))
    wait_until(lambda: {"k2-1", "k2-2"} <= set(sink_ids(sink)), 30, "the added key trusted")
    pb.term()
    # Pinned by fingerprint instead.
    filegen.write_csv(os.path.join(local, "p.csv"), "p", 3)
    pb = Patchbay(input_conf(sub, sink, hostkey=f"host_key_sha256: \"{SSHD.host_key_sha256}\""))
    wait_until(lambda: {"p-1", "p-2", "p-3"} <= set(sink_ids(sink)), 30, "a pinned key")
    pb.term()
    # lint says why a config without any host-key check is refused.
    conf = input_conf(sub, sink, hostkey="")
    p = os.path.join(tmpdir("lint"), "p.yaml")
    with open(p, "w") as f:
        f.write(conf.replace("@LISTEN@", "127.0.0.1:1").replace("@TOKEN@", "t")
                .replace("@DIR@", "/tmp"))
    r = pb.cli("lint", p)
    check(r.returncode == 1 and "host key must be checked" in r.stderr, f"lint: {r.stderr}")


@test
def outbound_guard_and_inline_key():
    sink = start_sink()
    sub, local = folder()
    filegen.write_csv(os.path.join(local, "g.csv"), "g", 4)
    pb = start_refused(input_conf(sub, sink, outbound=False))
    wait_until(lambda: "blocked: 127.0.0.1 is loopback" in (the_input(pb)["detail"] or ""), 20,
               "refused by the outbound guard")
    check_eq(len(sink.records()), 0, "nothing taken")
    pb.term()
    with open(SSHD.client_key) as f:
        key = f.read()
    pb = Patchbay(input_conf(sub, sink, key='"${SFTP_KEY}"'), env={"SFTP_KEY": key})
    wait_until(lambda: len(sink_ids(sink)) == 4, 30, "taken with the key given inline")
    check("BEGIN OPENSSH" not in pb.log(), "the key never logged")
    pb.term()


@test
def server_killed_mid_download_and_patchbay_killed():
    sink = start_sink()
    sub, local = folder()
    spool = tmpdir("spool")
    # About 6 MB at 1 MiB/s: several seconds of download to cut.
    ids = filegen.write_csv(os.path.join(local, "big.csv"), "big", 20000, pad=250)
    small = filegen.write_csv(os.path.join(local, "small.csv"), "small", 30)
    pb = Patchbay(input_conf(sub, sink, extra="download_rate: 1MiB", spool=spool))

    def downloading():
        for n in os.listdir(spool):
            if os.path.getsize(os.path.join(spool, n)) > 1 << 20:
                return True
        return False

    wait_until(downloading, 30, "the big file half downloaded")
    SSHD.kill_tree()
    wait_until(lambda: the_input(pb)["state"] == "reconnecting", 20, "the input reconnecting")
    SSHD.start()
    # Once the records flow, kill patchbay itself in the middle of the file.
    wait_until(lambda: len(sink.records()) > 2000, 120, "records of the big file")
    pb.kill9()
    check(os.path.exists(os.path.join(local, "big.csv")), "not archived before committed")
    pb.start()
    want = set(ids) | set(small)
    wait_until(lambda: set(sink_ids(sink)) >= want, 180, "every record")
    wait_until(lambda: sorted(os.listdir(os.path.join(local, "done"))) == ["big.csv", "small.csv"],
               30, "both archived")
    got = sink_ids(sink)
    check(all(len(k) == 1 for k in got.values()), "one message per record after the kills")
    pb.term()
    check_eq(os.listdir(spool), [], "the spool emptied")


OUTPUT = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  gen:
    input:
      generate: { interval: %(interval)s, count: %(count)d, batch: 20,
                  template: '{id: $meta.seq, kind: (if $meta.seq %% 2 == 0 then "even" else "odd" end), note: "a, \\"b\\""}' }
    outputs:
      csv:
        sftp:
          url: "%(url)s"
          private_key: %(key)s
          known_hosts: %(kh)s
          path: 'csv/{{ .kind }}.csv'
          format: csv
          batch: { count: 40, period: 100ms }
      js:
        sftp: { url: "%(url)s", private_key: %(key)s, known_hosts: %(kh)s,
                path: 'json/{{ .id }}.json', format: json }
"""


def csv_rows(d):
    rows = {}
    for name in os.listdir(d):
        check(not name.startswith("."), f"no temporary file left: {name}")
        with open(os.path.join(d, name), newline="") as f:
            lines = f.read().split("\r\n")
        check_eq(lines[0], "id,kind,note", f"{name} starts with its header")
        check_eq(lines[-1], "", f"{name} ends with a whole line")
        for ln in lines[1:-1]:
            i = int(ln.split(",")[0])
            rows[i] = rows.get(i, 0) + 1
            check(ln.endswith(',"a, ""b"""'), f"a CSV row as written: {ln!r}")
    return rows


@test
def output_writes_whole_files_through_a_server_restart():
    sub, local = folder()
    n = 400
    pb = Patchbay(OUTPUT % {"url": SSHD.url(sub), "key": SSHD.client_key, "kh": SSHD.known_hosts,
                            "count": n, "interval": "30ms"})
    wait_until(lambda: os.path.isdir(os.path.join(local, "csv")) and
               len(os.listdir(os.path.join(local, "csv"))) >= 2, 30, "the first files")
    SSHD.kill_tree()
    time.sleep(1)  # the outage itself: deliveries fail meanwhile
    SSHD.start()
    wait_until(lambda: len(os.listdir(os.path.join(local, "json"))) == n, 120, "every JSON file")
    wait_until(lambda: len(csv_rows(os.path.join(local, "csv"))) == n, 60, "every CSV row")
    rows = csv_rows(os.path.join(local, "csv"))
    check_eq(sorted(rows), list(range(1, n + 1)), "every record in a CSV file")
    for name in os.listdir(os.path.join(local, "json")):
        check(not name.startswith("."), f"no temporary file left: {name}")
        with open(os.path.join(local, "json", name)) as f:
            doc = json.load(f)
        check_eq(f"{doc['id']}.json", name, "each JSON file whole")
    pb.term()


@test
def example_sftp_nightly_csv_runs():
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "..", "examples", "sftp-nightly-csv", "patchbay.yaml")
    with open(path) as f:
        conf = f.read()
    sub, local = folder()
    with open(os.path.join(local, "stock-20240507.csv"), "wb") as f:
        f.write(b"sku;warehouse;quantity\r\nA-100;BER;42\r\nB-200;HAM;7\r\n")
    with open(os.path.join(local, "stock-20240508.csv"), "wb") as f:
        f.write(b"sku;warehouse;quantity\r\nC-300;BER\r\n")
    api = start_sink()
    port, token = free_port(), "example-token"
    pb = Patchbay(conf, port=port, token=token, start=False, env={
        "SFTP_URL": SSHD.url(sub), "SFTP_KEY": SSHD.client_key,
        "SFTP_KNOWN_HOSTS": SSHD.known_hosts, "WAREHOUSE_URL": api.url + "/stock",
        "PATCHBAY_LISTEN": f"127.0.0.1:{port}", "PATCHBAY_DATA": tmpdir("data"),
        "PATCHBAY_ADMIN_TOKEN": token})
    # min_age is 10s in the example: a file must look older than that.
    old = time.time() - 3600
    for name in os.listdir(local):
        os.utime(os.path.join(local, name), (old, old))
    pb.run_args = ["--once"]
    pb.start(wait_ready=False)
    check_eq(pb.proc.wait(timeout=120), 0, f"run --once: {pb.log()[-1500:]}")
    got = sorted((json.loads(r["body"]) for r in api.records()), key=lambda b: b["sku"])
    check_eq([r["method"] for r in api.records()], ["PUT", "PUT"], "two PUT requests")
    check_eq(got[0], {"sku": "A-100", "warehouse": "BER", "quantity": 42, "as_of": "20240507",
                      "source": {"file": "stock-20240507.csv", "row": 1}}, "a row as the API gets it")
    check_eq(os.listdir(os.path.join(local, "done")), ["stock-20240507.csv"], "archived")
    check_eq(sorted(os.listdir(os.path.join(local, "failed"))),
             ["stock-20240508.csv", "stock-20240508.csv.error.json"], "the broken file")
    check("run --once: 2 files (1 failed), 2 records, 2 delivered, 0 dead-lettered" in pb.log(),
          "the summary line")


if __name__ == "__main__":
    run()
