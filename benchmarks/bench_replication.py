"""One-way replication: apply throughput and steady-state lag.

    python benchmarks/bench_replication.py

Servers run as separate processes (``mmm serve``); the replicator runs in this process and its
peak RSS is reported. Each throughput figure is the median of three runs, each on a fresh pair
of servers, with its references run in the same run on the same servers:

- op-by-op: the original algorithm on current PyMongo (tail the source oplog, one round trip per
  op on the destination);
- ceiling: PyMongo ``insert_many`` of the same documents straight into the destination;
- mmm with ``resolve=None`` (detection only) beside the default ``lww``, on the same servers: what
  convergence costs (``bench_convergence.py`` measures both ways, conflicts and lag against a
  previous release).

Targets: mmm >= 10x op-by-op, >= 50% of the ceiling, p99 lag < 100 ms at 5,000 ops/s, peak RSS
< 300 MB (the lag phase runs the replicator as ``mmm run`` in its own process, to measure that).
"""

from __future__ import annotations

import gc
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import pymongo
from pymongo import CursorType

from _common import ServeProcess, child_peak_rss_mb, doc_1kb, quick, table, verdict

import mmm

N_DOCS = 10_000 if quick() else 100_000
# 400 MB of chunks: long enough that mmm's start (connections, checks: about 30 ms) does not
# dominate, as it does not in a real catch-up of hours of camera frames.
N_CHUNKS = 100 if quick() else 1600
CHUNK = 255 * 1024
REPEATS = 1 if quick() else 3
LAG_RATE = 5_000
LAG_SECONDS = 3 if quick() else 10


def wait_count(coll, n: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while coll.estimated_document_count() < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {n} documents in {coll.full_name}")
        time.sleep(0.002)


def replicate_backlog(src_uri: str, dst_uri: str, db: str, load, resolve="lww") -> float:
    """Seconds mmm needs to apply a backlog written while its link was stopped."""
    servers = {"a": {"id": "A", "uri": src_uri}, "b": {"id": "B", "uri": dst_uri}}
    links = [(f"a/{db}.*", f"b/{db}.*")]
    with mmm.Replicator(servers, links, resolve=resolve):
        pass  # creates the link's checkpoint "now"
    expected = load(db)
    dst = pymongo.MongoClient(dst_uri)
    start = time.perf_counter()
    with mmm.Replicator(servers, links, resolve=resolve):
        wait_count(dst[db]["c"], expected)
    elapsed = time.perf_counter() - start
    dst.close()
    return elapsed


def op_by_op(src, dst, db: str, start_ts):
    """The 2012 algorithm on current PyMongo: read the oplog, one round trip per op on the
    destination (into a separate database, so the same backlog is replayed). Returns (ops, s)."""
    begin = time.perf_counter()
    n = 0
    for op in src.local["oplog.rs"].find({"ts": {"$gte": start_ts}, "ns": f"{db}.c"}):
        dst[f"{db}obo"]["c"].replace_one({"_id": op["o"]["_id"]}, op["o"], upsert=True)
        n += 1
    return n, time.perf_counter() - begin


def throughput(items: list, batch: int, amount: float):
    """Rates, in `amount` per second, of mmm, op-by-op and the ceiling for `items`, on a fresh
    pair of servers: every run starts from the same state (an in-memory server that already
    holds the earlier runs' gigabytes is slower for all three, by up to 2x here)."""
    a, b = ServeProcess(), ServeProcess()
    ca, cb = pymongo.MongoClient(a.uri), pymongo.MongoClient(b.uri)
    try:
        return _throughput(a.uri, b.uri, ca, cb, "bench", items, batch, amount)
    finally:
        ca.close()
        cb.close()
        a.stop()
        b.stop()


def _throughput(src_uri: str, dst_uri: str, ca, cb, db: str, items: list, batch: int, amount: float):
    def load(into: str) -> int:
        for s in range(0, len(items), batch):
            ca[into]["c"].insert_many(items[s:s + batch])
        return len(items)

    t_mmm = replicate_backlog(src_uri, dst_uri, db, load)
    t_none = replicate_backlog(src_uri, dst_uri, f"{db}none", load, resolve=None)
    start_ts = ca.local["oplog.rs"].find_one({"ns": f"{db}.c"}, sort=[("$natural", 1)])["ts"]
    n, t_obo = op_by_op(ca, cb, db, start_ts)
    begin = time.perf_counter()
    for s in range(0, len(items), batch):
        cb[f"{db}ceiling"]["c"].insert_many(items[s:s + batch])
    t_ceiling = time.perf_counter() - begin
    return amount / t_mmm, amount * n / len(items) / t_obo, amount / t_ceiling, amount / t_none


def main() -> None:
    a, b = ServeProcess(), ServeProcess()
    try:
        ca, cb = pymongo.MongoClient(a.uri), pymongo.MongoClient(b.uri)
        docs = [doc_1kb(i) for i in range(N_DOCS)]
        # The script's own 100,000 dicts would otherwise be walked by every garbage collection
        # of this process, where the replicator and the references all run.
        gc.freeze()
        rows = [("measure", "mmm", "op-by-op", "ceiling", "vs op-by-op", "vs ceiling", "",
                 "mmm, resolve=None", "lww / none")]
        payload = os.urandom(CHUNK)
        chunks = [{"_id": i, "files_id": 1, "n": i, "data": payload} for i in range(N_CHUNKS)]
        cases = [
            (f"{N_DOCS:,} x 1 KB docs (ops/s)", "d1", docs, 1000, N_DOCS, "{:,.0f}", True),
            (f"{N_CHUNKS} x 255 KB chunks (MB/s)", "d2", chunks, 20, N_CHUNKS * CHUNK / 1e6, "{:,.1f}", False),
        ]
        runs = []
        for label, db, items, batch, amount, fmt, needs_10x in cases:
            rates = [throughput(items, batch, amount) for _ in range(REPEATS)]
            r_mmm, r_obo, r_ceil, r_none = (statistics.median(r[i] for r in rates) for i in range(4))
            ok = r_mmm >= 0.5 * r_ceil and (r_mmm >= 10 * r_obo or not needs_10x)
            rows.append((label, fmt.format(r_mmm), fmt.format(r_obo), fmt.format(r_ceil),
                         f"{r_mmm / r_obo:.1f}x", f"{100 * r_mmm / r_ceil:.0f}%", verdict(ok),
                         fmt.format(r_none), f"{r_mmm / r_none:.2f}"))
            runs.append(f"{db}: " + ", ".join("/".join(fmt.format(x) for x in r) for r in rates))
        table(f"one-way apply throughput (median of {REPEATS} runs)", rows)
        print("  all runs (mmm/op-by-op/ceiling/mmm resolve=None): " + "; ".join(runs))

        # Lag at a steady rate.
        lags = []
        stop = threading.Event()

        def watch() -> None:
            """Records when each replicated op shows up in the destination's oplog."""
            newest = cb.local["oplog.rs"].find_one(sort=[("$natural", -1)])["ts"]
            cursor = cb.local["oplog.rs"].find(
                {"ts": {"$gt": newest}}, cursor_type=CursorType.TAILABLE_AWAIT, oplog_replay=True
            )
            while not stop.is_set() and cursor.alive:
                try:
                    op = next(cursor, None)
                except pymongo.errors.PyMongoError:
                    return  # the servers are stopping
                if op is None:
                    continue
                now = time.time()
                for inner in op.get("o", {}).get("applyOps", []):
                    if inner.get("ns") == "d3.c" and inner.get("op") == "i":
                        lags.append(now - inner["o"]["sent"])

        # The replicator runs as `mmm run` in its own process, so its peak RSS is its own.
        cfg = os.path.join(tempfile.mkdtemp(), "mmm.yml")
        with open(cfg, "w") as f:
            f.write(f"a:\n  id: A\n  uri: '{a.uri}'\nb:\n  id: B\n  uri: '{b.uri}'\n"
                    "links:\n  - {src: a/d3.*, dst: b/d3.*}\n")
        runner = subprocess.Popen([sys.executable, "-m", "mmm", "-c", cfg, "run"], stderr=subprocess.PIPE, text=True)
        runner.stderr.readline()
        wait_checkpoint = time.monotonic() + 30
        while cb["__mmm"]["checkpoints"].count_documents({"src": "A", "_id": {"$regex": "d3"}}) == 0:
            if time.monotonic() > wait_checkpoint:
                raise SystemExit("the replicator did not start")
            time.sleep(0.05)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        interval = 1.0 / LAG_RATE
        total = LAG_RATE * LAG_SECONDS
        begin = time.perf_counter()
        batch = 50  # writers send small batches to keep the rate steady
        for i in range(0, total, batch):
            target = begin + i * interval
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            ca.d3["c"].insert_many([{"_id": j, "sent": time.time()} for j in range(i, i + batch)])
        achieved = total / (time.perf_counter() - begin)
        wait_count(cb.d3["c"], total, timeout=60)
        time.sleep(0.5)
        stop.set()
        rss = child_peak_rss_mb(runner.pid)
        runner.terminate()
        runner.wait(30)
        watcher.join(5)
        lags.sort()
        p50 = lags[len(lags) // 2] * 1000 if lags else float("nan")
        p99 = lags[int(len(lags) * 0.99)] * 1000 if lags else float("nan")
        table(
            f"lag at a steady {LAG_RATE:,} ops/s for {LAG_SECONDS}s (achieved {achieved:,.0f} ops/s, {len(lags):,} ops observed)",
            [("p50 lag", "p99 lag", "target", "replicator peak RSS (mmm run)", ""),
             (f"{p50:.1f} ms", f"{p99:.1f} ms", "p99 < 100 ms, RSS < 300 MB", f"{rss:.0f} MB", verdict(p99 < 100 and rss < 300))],
        )
        ca.close()
        cb.close()
    finally:
        a.stop()
        b.stop()


if __name__ == "__main__":
    main()
