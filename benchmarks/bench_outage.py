"""Recovery after an outage longer than the source's oplog window, against a full copy.

    python benchmarks/bench_outage.py

100,000 documents of 1 KB (20,000 with MMM_BENCH_QUICK=1) are replicated; then, on a fresh pair
each time:

- spool: the network between the two sites is cut (a relay in front of each server) while each
  site's replicator keeps running against its own server; each side changes 1% of the
  documents and both 16 MB oplogs wrap. Each link catches up from its source's ``__mmm.meta``.
- lost: both sides change 1% of the documents while no replicator runs and both oplogs wrap; the
  links compare documents and move those that differ.
- reference: the time to copy every document (``initial_sync=True`` into an empty server).

Reported: recovery time, bytes written to the destination's documents by the recovery (the data
ops in its oplog) against the bytes of the changed documents, both sides identical at the end.
Targets: identical; at most 3x the bytes of the changed documents; time well under the copy.
"""

from __future__ import annotations

import time

import bson
import pymongo

from _common import Proxy, doc_1kb, quick, table, verdict

import mmm
from mmm.pytest_plugin import start_test_server

N = 20_000 if quick() else 100_000
OPLOG_MB = 16


def wait(predicate, timeout: float = 900, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {what}")
        time.sleep(0.05)


def data_bytes_since(client, after) -> int:
    """Bytes of the documents the batches after `after` wrote in user namespaces."""
    total = 0
    for e in client.local["oplog.rs"].find({"ts": {"$gt": after}}):
        ops = e["o"].get("applyOps", []) if e["op"] == "c" else [e]
        for op in ops:
            if op.get("ns", "").startswith("bench."):
                total += len(bson.encode(op["o"]))
    return total


def last_ts(client):
    return client.local["oplog.rs"].find_one(sort=[("$natural", -1)])["ts"]


def roll(client, mb_per_s: float = 0) -> None:
    """Writes twice the oplog's size outside the replicated database (at `mb_per_s`: a real
    oplog holds hours; the observers of a live site read it every 200 ms)."""
    for _ in range(OPLOG_MB * 4):
        client.filler.x.insert_many([{"blob": "z" * 10_000} for _ in range(50)])
        if mb_per_s:
            time.sleep(0.5 / mb_per_s)


def load(ca, cb, r) -> None:
    with r:
        wait(lambda: all(s["state"] == "running" for s in r.status()), 60, "links")
        for start in range(0, N, 1000):
            ca.bench.c.insert_many([doc_1kb(i) for i in range(start, start + 1000)])
        wait(lambda: cb.bench.c.estimated_document_count() == N, what="initial load")


def kept_changes(client, ids, side: str) -> int:
    """How many of the documents `side` changed hold its change."""
    return client.bench.c.count_documents({"_id": {"$in": list(ids)}, "payload": side * 960})


def all_changes_arrived(ca, cb, a_ids, b_ids) -> bool:
    """Each side holds the other's changes (read by `_id`, so that polling stays cheap and does
    not slow the recovery it measures)."""
    return (kept_changes(cb, a_ids, "a") == len(a_ids)
            and kept_changes(ca, b_ids, "b") == len(b_ids))


def same_documents(ca, cb) -> bool:
    return list(ca.bench.c.find().sort("_id", 1)) == list(cb.bench.c.find().sort("_id", 1))


def changed_bytes(client, ids) -> int:
    return sum(len(bson.encode(d)) for d in client.bench.c.find({"_id": {"$in": list(ids)}}))


def spool() -> tuple:
    """Both sites write while the link between them is cut; each site's process keeps running
    and reaches its own server (as one ``mmm run`` per site does): each reader keeps its spool."""
    a, b = start_test_server(oplog_size_mb=OPLOG_MB), start_test_server(oplog_size_mb=OPLOG_MB)
    ca, cb = pymongo.MongoClient(a.uri), pymongo.MongoClient(b.uri)
    to_a, to_b = Proxy(a.uri), Proxy(b.uri)
    at_a = {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": to_b.uri}}
    at_b = {"a": {"id": "A", "uri": to_a.uri}, "b": {"id": "B", "uri": b.uri}}
    # The factory's data is there before replication starts (as in a deployment), copied to
    # the cloud by the link's initial sync: loading 100 MB through 16 MB oplogs while the
    # observers run would outpace them, which is the "lost" case, not this one.
    for start in range(0, N, 1000):
        ca.bench.c.insert_many([doc_1kb(i) for i in range(start, start + 1000)])
    ra = mmm.Replicator(at_a, [mmm.Link("a/bench.*", "b/bench.*", initial_sync=True)])
    rb = mmm.Replicator(at_b, [("b/bench.*", "a/bench.*")])
    try:
        with ra:
            wait(lambda: cb.bench.c.estimated_document_count() == N, what="initial copy")
            wait(lambda: all(s["state"] == "running" for s in ra.status()), 60, "link a->b")
            with rb:
                wait(lambda: all(s["state"] == "running" for s in rb.status()), 60, "link b->a")
                recovered = outage(ca, cb, to_a, to_b)
        return recovered
    finally:
        to_a.close()
        to_b.close()
        a.stop()
        b.stop()


def outage(ca, cb, to_a, to_b) -> tuple:
    """Cuts both relays, changes 1% on each side, wraps both oplogs, restores the relays and
    times the catch-up."""
    to_a.cut()
    to_b.cut()
    a_ids, b_ids = range(0, N, 100), range(50, N, 100)
    for i in a_ids:
        ca.bench.c.update_one({"_id": i}, {"$set": {"payload": "a" * 960}})
    for i in b_ids:
        cb.bench.c.update_one({"_id": i}, {"$set": {"payload": "b" * 960}})
    roll(ca, mb_per_s=4)
    roll(cb, mb_per_s=4)
    time.sleep(1)
    before_a, before_b = last_ts(ca), last_ts(cb)
    changed = changed_bytes(ca, a_ids) + changed_bytes(cb, b_ids)
    t0 = time.monotonic()
    to_a.restore()
    to_b.restore()
    wait(lambda: all_changes_arrived(ca, cb, a_ids, b_ids), what="spool recovery")
    took = time.monotonic() - t0
    time.sleep(1)
    same = same_documents(ca, cb)
    moved = data_bytes_since(ca, before_a) + data_bytes_since(cb, before_b)
    kept = kept_changes(ca, a_ids, "a") + kept_changes(ca, b_ids, "b")
    return took, moved, changed, same, kept, len(a_ids) + len(b_ids)


def lost() -> tuple:
    a, b = start_test_server(oplog_size_mb=OPLOG_MB), start_test_server(oplog_size_mb=OPLOG_MB)
    ca, cb = pymongo.MongoClient(a.uri), pymongo.MongoClient(b.uri)
    servers = {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}}
    links = [("a/bench.*", "b/bench.*"), ("b/bench.*", "a/bench.*")]
    try:
        load(ca, cb, mmm.Replicator(servers, links))
        a_ids, b_ids = range(0, N, 100), range(50, N, 100)
        for i in a_ids:
            ca.bench.c.update_one({"_id": i}, {"$set": {"payload": "a" * 960}})
        for i in b_ids:
            cb.bench.c.update_one({"_id": i}, {"$set": {"payload": "b" * 960}})
        roll(ca)
        roll(cb)
        before_a, before_b = last_ts(ca), last_ts(cb)
        changed = changed_bytes(ca, a_ids) + changed_bytes(cb, b_ids)
        t0 = time.monotonic()
        with mmm.Replicator(servers, links) as r:
            # Done when both links have caught up (each found what differs and sent it).
            wait(lambda: all(s["state"] == "running" for s in r.status()) and same_documents(ca, cb),
                 what="lost recovery")
            took = time.monotonic() - t0
        moved = data_bytes_since(ca, before_a) + data_bytes_since(cb, before_b)
        kept = kept_changes(ca, a_ids, "a") + kept_changes(ca, b_ids, "b")
        return took, moved, changed, True, kept, len(a_ids) + len(b_ids)
    finally:
        a.stop()
        b.stop()


def full_copy() -> float:
    a, b = start_test_server(), start_test_server()
    ca, cb = pymongo.MongoClient(a.uri), pymongo.MongoClient(b.uri)
    try:
        for start in range(0, N, 1000):
            ca.bench.c.insert_many([doc_1kb(i) for i in range(start, start + 1000)])
        servers = {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}}
        t0 = time.monotonic()
        with mmm.Replicator(servers, [mmm.Link("a/bench.*", "b/bench.*", initial_sync=True)]):
            wait(lambda: cb.bench.c.estimated_document_count() == N, what="full copy")
            return time.monotonic() - t0
    finally:
        a.stop()
        b.stop()


def main() -> None:
    copy = full_copy()
    rows = [("case", "recovery s", "x copy time", "bytes moved", "changed bytes", "ratio", "identical",
             "changes kept", "target <= 3x")]
    for name, fn in (("spool (reader alive)", spool), ("lost (reader down too)", lost)):
        took, moved, changed, same, kept, changes = fn()
        rows.append((name, f"{took:.1f}", f"{took / copy:.2f}", f"{moved:,}", f"{changed:,}", f"{moved / changed:.2f}",
                     str(same), f"{kept} of {changes}", verdict(same and moved <= 3 * changed)))
    table(f"Outage past the oplog window, {N:,} documents, 1% changed per side (full copy: {copy:.1f} s)", rows)


if __name__ == "__main__":
    main()
