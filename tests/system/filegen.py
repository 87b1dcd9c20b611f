"""filegen - files for the file and sftp tests: CSV, JSON lines and XML with
known records, written atomically (a temporary name, then a rename), and a
look into a stopped (or killed) patchbay's state store.

    recs = write_csv(path, "f1", 100)     # the ids of its records, in order
    ids  = records_in_store(state_db, pipeline)   # {(file name, record no)}

Every record carries an id "<tag>-<n>" the tests follow to the partner.
Standard library only.
"""

import json
import os
import shutil
import sqlite3
import tempfile


def _atomic(path, data):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


def csv_bytes(tag, n, pad=0):
    lines = ["id,qty,note"]
    for i in range(1, n + 1):
        note = f'"note, with ""quotes"" {i}{"x" * pad}"'
        lines.append(f"{tag}-{i},{i % 7},{note}")
    return ("\r\n".join(lines) + "\r\n").encode()


def jsonl_bytes(tag, n, pad=0):
    return "".join(
        json.dumps({"id": f"{tag}-{i}", "qty": i % 5, "pad": "y" * pad}) + "\n"
        for i in range(1, n + 1)
    ).encode()


def xml_bytes(tag, n):
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n<orders>\n']
    for i in range(1, n + 1):
        parts.append(f'  <order id="{tag}-{i}"><sku>A&amp;{i}</sku><sku>B</sku>'
                     f"<qty>{i % 3}</qty></order>\n")
    parts.append("</orders>\n")
    return "".join(parts).encode()


def write_csv(path, tag, n, pad=0):
    _atomic(path, csv_bytes(tag, n, pad))
    return [f"{tag}-{i}" for i in range(1, n + 1)]


def write_jsonl(path, tag, n, pad=0):
    _atomic(path, jsonl_bytes(tag, n, pad))
    return [f"{tag}-{i}" for i in range(1, n + 1)]


def write_xml(path, tag, n):
    _atomic(path, xml_bytes(tag, n))
    return [f"{tag}-{i}" for i in range(1, n + 1)]


def record_id(body):
    """The id of a record as the tests' output map sends it."""
    doc = json.loads(body)
    return doc["id"]


def records_in_store(state_db, pipeline):
    """{(file name, record number): count of messages} in a stopped
    patchbay's store (read from a copy, so the store itself is untouched)."""
    d = tempfile.mkdtemp(prefix="pbstore-")
    try:
        for suffix in ("", "-wal"):
            if os.path.exists(state_db + suffix):
                shutil.copy(state_db + suffix, os.path.join(d, "state.db" + suffix))
        con = sqlite3.connect(os.path.join(d, "state.db"))
        try:
            out = {}
            for (meta,) in con.execute("SELECT meta FROM messages WHERE pipeline = ?",
                                       (pipeline,)):
                m = json.loads(meta)
                k = (m["name"], m["record"])
                out[k] = out.get(k, 0) + 1
            return out
        finally:
            con.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
