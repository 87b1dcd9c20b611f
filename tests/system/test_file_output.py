"""The file output: JSON lines and CSV appended (one write and one fsync per
batch, one CSV header per file), rotation by size and by time, whole JSON
files written atomically, paths from templates (never outside with ..),
payloads that do not fit dead-lettered, and kill -9 while writing (no
partial line, every record there)."""

import csv
import io
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (Patchbay, check, check_eq, run, scaled, test, tmpdir,  # noqa: E402
                    wait_until)

GEN = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
pipelines:
  gen:
    input:
      generate: { interval: %(interval)s, count: %(count)d, batch: %(batch)d,
                  template: '%(template)s' }
    outputs:
%(outputs)s
"""

TEMPLATE = '{id: $meta.seq, name: "n, \\"q\\" \\($meta.seq)", price: "12.50", tags: [1, 2], none: null}'


def gen(outputs, count=300, batch=50, interval="1ms", template=TEMPLATE):
    return GEN % {"count": count, "batch": batch, "interval": interval, "template": template,
                  "outputs": outputs}


def run_once(pb, timeout=60):
    pb.run_args = ["--once"]
    pb.start(wait_ready=False)
    code = pb.proc.wait(timeout=scaled(timeout))
    check_eq(code, 0, f"run --once exit code: {pb.log()[-1500:]}")
    pb.run_args = []  # a later pb.start() runs the daemon, not another --once


def lines(path):
    with open(path, "rb") as f:
        data = f.read()
    check(data == b"" or data.endswith(b"\n"), f"{path} ends with a whole line")
    return [json.loads(x) for x in data.decode().splitlines()]


@test
def jsonl_and_csv_with_rotation():
    out = tmpdir("out")
    outputs = f"""      jl: {{ file: {{ path: "{out}/all.jsonl" }} }}
      csv:
        file:
          path: '{out}/csv/{{{{ $meta.pipeline }}}}.csv'
          format: csv
          rotate: {{ size: 4KiB }}
          batch: {{ count: 20 }}
"""
    pb = Patchbay(gen(outputs), start=False)
    run_once(pb)
    recs = lines(os.path.join(out, "all.jsonl"))
    check_eq([r["id"] for r in recs], list(range(1, 301)), "every record once, in order")
    check_eq(recs[0], {"id": 1, "name": 'n, "q" 1', "price": "12.50", "tags": [1, 2],
                       "none": None}, "a record as it was")
    files = sorted(os.listdir(os.path.join(out, "csv")))
    check(len(files) >= 3, f"rotated by size: {files}")
    check("gen.csv" in files, f"the current file keeps its name: {files}")
    rows = []
    for name in files:
        with open(os.path.join(out, "csv", name), newline="") as f:
            text = f.read()
        check(text.count("id,name,price,tags,none\r\n") == 1 and
              text.startswith("id,name,price,tags,none\r\n"), f"one header at the top of {name}")
        check(len(text.encode()) < 4096 + 20 * 60, f"{name} rotated near 4KiB")
        rows += list(csv.DictReader(io.StringIO(text)))
    check_eq(sorted(int(r["id"]) for r in rows), list(range(1, 301)), "every row once")
    r1 = [r for r in rows if r["id"] == "1"][0]
    check_eq(r1, {"id": "1", "name": 'n, "q" 1', "price": "12.50", "tags": "[1,2]", "none": ""},
             "CSV values as they were")


@test
def rotation_by_time_without_new_writes():
    out = tmpdir("out")
    outputs = f"""      jl: {{ file: {{ path: "{out}/t.jsonl", rotate: {{ interval: 1s }} }} }}
"""
    pb = Patchbay(gen(outputs, count=5, batch=5))
    wait_until(lambda: len(os.listdir(out)) == 1 and len(lines(os.path.join(out, "t.jsonl"))) == 5,
               20, "five records written")
    wait_until(lambda: "t.jsonl" not in os.listdir(out), 20, "the file rotated after 1s")
    names = os.listdir(out)
    check_eq(len(names), 1, f"one rotated file: {names}")
    check(names[0].startswith("t.") and names[0].endswith("Z.jsonl"), f"its name: {names[0]}")
    check_eq(len(lines(os.path.join(out, names[0]))), 5, "its records")
    pb.term()


@test
def whole_json_files_and_bad_paths():
    out = tmpdir("out")
    tpl = '{id: $meta.seq, dir: (if $meta.seq == 3 then ".." else "ok" end)}'
    outputs = f"""      js: {{ file: {{ path: '{out}/{{{{ .dir }}}}/{{{{ .id }}}}.json', format: json }} }}
"""
    pb = Patchbay(gen(outputs, count=5, batch=5, template=tpl), start=False)
    run_once(pb)
    names = sorted(os.listdir(os.path.join(out, "ok")))
    check_eq(names, ["1.json", "2.json", "4.json", "5.json"], "one whole file per delivery, "
             "no temporary file left")
    with open(os.path.join(out, "ok", "2.json")) as f:
        check_eq(json.load(f), {"id": 2, "dir": "ok"}, "the file's content")
    pb.start()
    dead = pb.dead_letters(pipeline="gen")
    check_eq(len(dead), 1, "the message whose path climbs out is a dead letter")
    st, msg = pb.admin("GET", f"/api/messages/{dead[0]['message_id']}")
    check("climbs with .." in json.dumps(msg), f"the reason: {msg}")


@test
def csv_refuses_what_it_cannot_carry():
    out = tmpdir("out")
    tpl = 'if $meta.seq == 2 then {id: 2, extra: 1} elif $meta.seq == 3 then [3] else {id: $meta.seq} end'
    outputs = f"""      c: {{ file: {{ path: "{out}/c.csv", format: csv, csv: {{ columns: [id, note] }} }} }}
"""
    pb = Patchbay(gen(outputs, count=4, batch=4, template=tpl), start=False)
    run_once(pb)
    with open(os.path.join(out, "c.csv"), newline="") as f:
        check_eq(f.read(), "id,note\r\n1,\r\n4,\r\n", "the rows that fit")
    pb.start()
    reasons = json.dumps([pb.admin("GET", f"/api/messages/{d['message_id']}")[1]
                          for d in pb.dead_letters(pipeline="gen")])
    check('member \\"extra\\" is not a column' in reasons, f"extra member: {reasons[:600]}")
    check("not a JSON object" in reasons, "an array is no row")


@test
def kill9_while_appending():
    out = tmpdir("out")
    outputs = f"""      jl: {{ file: {{ path: "{out}/k.jsonl", batch: {{ count: 50 }} }} }}
"""
    n = 4000
    pb = Patchbay(gen(outputs, count=n, batch=10, interval="3ms"))
    path = os.path.join(out, "k.jsonl")

    def count():
        try:
            with open(path, "rb") as f:
                return f.read().count(b"\n")
        except OSError:
            return 0

    at = []
    for k in range(3):
        wait_until(lambda: count() > 600 * (k + 1), 60, "records written before a kill")
        pb.kill9()
        at.append(count())
        pb.start()
    check(at[-1] < n, f"killed while writing: {at}")
    wait_until(lambda: len({r["id"] for r in lines(path)}) == n, 120, "every record written")
    pb.term()
    recs = lines(path)  # every line whole JSON (a partial one would not parse)
    check_eq({r["id"] for r in recs}, set(range(1, n + 1)), "every record")
    check(len(recs) < n + 600, f"repeats only from batches not confirmed: {len(recs) - n}")


if __name__ == "__main__":
    run()
