"""Initial sync stopped at about 35% and resumed, against an uninterrupted copy.

    python benchmarks/bench_initial_sync.py

Servers run as separate processes (``mmm serve``); the replicator runs in this process. Two runs
on fresh pairs of servers with the same 1 KB documents:

- baseline: one uninterrupted initial sync;
- resumed: the copy is stopped once about 35% is on the destination, the copied documents are
  deleted at the source, and the link is started again.

Reported: time of each, the ratio resumed/baseline, documents the second run copied (a resumed
copy moves only what was left, not everything again), and whether the destination ends identical
to the source (the deletes made while stopped are replayed).
Targets: identical; the second run copies at most what was left plus one batch.
"""

from __future__ import annotations

import time

import pymongo

from _common import ServeProcess, doc_1kb, quick, table, verdict

import mmm

N_DOCS = 20_000 if quick() else 100_000
STOP_AT = 0.35
BATCH = 5_000  # the copy's batch (MAX_BATCH_OPS)


def pair():
    a, b = ServeProcess(), ServeProcess()
    ca, cb = pymongo.MongoClient(a.uri), pymongo.MongoClient(b.uri)
    servers = {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}}
    for i in range(0, N_DOCS, 10_000):
        ca.app.big.insert_many([doc_1kb(j) for j in range(i, min(i + 10_000, N_DOCS))])
    return a, b, ca, cb, servers


def synced(r, cb, expected: int) -> bool:
    s = r.status()[0]
    return s["state"] == "running" and cb.app.big.estimated_document_count() == expected


def wait(predicate, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.005)


def baseline() -> float:
    a, b, ca, cb, servers = pair()
    try:
        link = mmm.Link("a/app.big", "b/app.big", initial_sync=True)
        t0 = time.perf_counter()
        with mmm.Replicator(servers, [link]) as r:
            wait(lambda: synced(r, cb, N_DOCS))
            return time.perf_counter() - t0
    finally:
        a.stop()
        b.stop()


def resumed():
    a, b, ca, cb, servers = pair()
    try:
        link = mmm.Link("a/app.big", "b/app.big", initial_sync=True)
        t0 = time.perf_counter()
        r = mmm.Replicator(servers, [link])
        r.start()
        wait(lambda: cb.app.big.estimated_document_count() >= STOP_AT * N_DOCS)
        r.stop()
        r.join()
        first = time.perf_counter() - t0
        copied_first = cb.app.big.count_documents({})
        # Copied in `_id` order: the copied documents are those up to the last one copied.
        last = cb.app.big.find_one({}, sort=[("_id", -1)])["_id"]
        deleted = ca.app.big.delete_many({"_id": {"$lte": last}}).deleted_count
        t1 = time.perf_counter()
        with mmm.Replicator(servers, [link]) as r:
            wait(lambda: synced(r, cb, N_DOCS - deleted))
            second = time.perf_counter() - t1
            copied_total = r.status()[0]["initial_sync"][0]
        identical = sorted(ca.app.big.find(), key=lambda d: d["_id"]) == sorted(cb.app.big.find(), key=lambda d: d["_id"])
        return first, second, copied_first, copied_total - copied_first, identical
    finally:
        a.stop()
        b.stop()


def main() -> None:
    base = baseline()
    first, second, copied_first, copied_second, identical = resumed()
    left = N_DOCS - copied_first
    table(f"initial sync of {N_DOCS:,} documents of 1 KB, stopped at ~{STOP_AT:.0%} and resumed", [
        ("run", "seconds", "documents copied", "note"),
        ("baseline (uninterrupted)", f"{base:.2f}", f"{N_DOCS:,}", ""),
        ("resumed: first run", f"{first:.2f}", f"{copied_first:,}", "then stopped; those deleted at the source"),
        ("resumed: second run", f"{second:.2f}", f"{copied_second:,}", f"{left:,} were left"),
        ("resumed total / baseline", f"{(first + second) / base:.2f}x", "", ""),
    ])
    print(f"\n  destination identical to the source: {identical} ({verdict(identical)})")
    ok = copied_second <= left + BATCH
    print(f"  second run copied only what was left: {copied_second:,} <= {left + BATCH:,} ({verdict(ok)})")


if __name__ == "__main__":
    main()
