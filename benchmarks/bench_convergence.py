"""What convergence costs: replication throughput and lag with conflict resolution (``lww``)
beside detection only (``resolve: none``), run in the same run on fresh servers.

    python benchmarks/bench_convergence.py [--baseline-python PATH]

Each figure runs ``mmm run`` as its own process on a fresh pair of servers (``mmm serve``):

- one-way: a backlog of 1 KB inserts written while the link was stopped, timed until applied
  (against the reference also from the first document applied on, which leaves out starting
  the process: the rate at which documents flow);
- both ways: both servers update a shared set of documents while the links are stopped,
  no document on both sides (0%) or 1% of the writes on documents the other side also writes,
  timed until every write is applied on the other side (with ``lww`` the servers are then
  checked to hold identical documents; with detection only they may not);
- lag: 5,000 inserts/s written on each side for a few seconds, each stamped with its write
  time; the lag of an insert is when it appears in the other server's oplog minus that time.

``--baseline-python`` runs the same workloads with another installation of mmm (the
interpreter of a virtualenv holding an older release) as the reference for "today".
Targets: lww one-way >= 70% of the reference, p99 lag < 100 ms at 5,000 ops/s each way.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import pymongo
from pymongo import CursorType

from _common import ServeProcess, doc_1kb, quick, table, verdict

N_BACKLOG = 5_000 if quick() else 50_000
N_SHARED = 2_000 if quick() else 10_000
LAG_RATE = 5_000
LAG_SECONDS = 3 if quick() else 8


def config(a: ServeProcess, b: ServeProcess, resolve, both: bool) -> str:
    """A configuration file; ``resolve`` None writes no ``resolve:`` key (older releases)."""
    links = "  - {src: a/bench.*, dst: b/bench.*}\n"
    if both:
        links += "  - {src: b/bench.*, dst: a/bench.*}\n"
    f = tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False)
    key = f"resolve: {resolve}\n" if resolve else ""
    f.write(f"a:\n  id: A\n  uri: '{a.uri}'\nb:\n  id: B\n  uri: '{b.uri}'\n{key}links:\n{links}")
    f.close()
    return f.name


class Run:
    """``mmm run`` in its own process."""

    def __init__(self, python: str, cfg: str) -> None:
        self.proc = subprocess.Popen([python, "-m", "mmm", "-c", cfg, "run"], stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def wait_links(clients, n_links: int) -> None:
    deadline = time.monotonic() + 60
    while sum(c["__mmm"].checkpoints.count_documents({}) for c in clients) < n_links:
        if time.monotonic() > deadline:
            raise SystemExit("links did not start")
        time.sleep(0.02)


def fresh_pair():
    a, b = ServeProcess(oplog_size_mb=2048), ServeProcess(oplog_size_mb=2048)
    return a, b, pymongo.MongoClient(a.uri), pymongo.MongoClient(b.uri)


def one_way(python: str, resolve: str) -> float:
    """Documents applied per second from a backlog."""
    return one_way_rates(python, resolve)[0]


def one_way_rates(python: str, resolve: str):
    """Documents applied per second from a backlog: from the start of ``mmm run``, and from the
    first document applied on (without starting the process and its links)."""
    a, b, ca, cb = fresh_pair()
    try:
        cfg = config(a, b, resolve, both=False)
        r = Run(python, cfg)
        wait_links([cb], 1)
        r.stop()
        for start in range(0, N_BACKLOG, 1000):
            ca.bench.c.insert_many([doc_1kb(i) for i in range(start, start + 1000)])
        t0 = time.perf_counter()
        r = Run(python, cfg)
        first = None
        while (n := cb.bench.c.estimated_document_count()) < N_BACKLOG:
            if n and first is None:
                first = (time.perf_counter(), n)
            time.sleep(0.005)
        end = time.perf_counter()
        r.stop()
        after = (N_BACKLOG - first[1]) / (end - first[0]) if first and end > first[0] else float("nan")
        return N_BACKLOG / (end - t0), after
    finally:
        a.stop()
        b.stop()


def both_ways(python: str, resolve: str, conflict_share: float) -> float:
    """Updates per second until both servers agree, with a share of them in conflict."""
    a, b, ca, cb = fresh_pair()
    try:
        cfg = config(a, b, resolve, both=True)
        r = Run(python, cfg)
        wait_links([ca, cb], 2)
        ca.bench.c.insert_many([{"_id": i, "v": 0} for i in range(N_SHARED)])
        while cb.bench.c.estimated_document_count() < N_SHARED:
            time.sleep(0.01)
        r.stop()
        rng = random.Random(7)
        half = N_SHARED // 2
        writes = 0
        for i in range(half):
            # Side A writes the first half, side B the second; a share of B's writes go to
            # documents A writes too.
            ca.bench.c.update_one({"_id": i}, {"$set": {"v": f"a{i}"}})
            j = rng.randrange(half) if rng.random() < conflict_share * 2 else half + i
            cb.bench.c.update_one({"_id": j}, {"$set": {"v": f"b{i}"}})
            writes += 2
        def applied():
            on_b = cb["__mmm"].checkpoints.find_one({"src": "A"})["ops_applied"]
            on_a = ca["__mmm"].checkpoints.find_one({"src": "B"})["ops_applied"]
            return on_a + on_b

        before = applied()
        t0 = time.perf_counter()
        r = Run(python, cfg)
        # Every write applied on the other side (detection only never agrees on conflicts).
        while applied() - before < writes:
            if time.perf_counter() - t0 > 600:
                raise SystemExit(f"{resolve}: the writes were not applied within 600 s")
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        if resolve == "lww":
            deadline = time.perf_counter() + 60
            while list(ca.bench.c.find().sort("_id", 1)) != list(cb.bench.c.find().sort("_id", 1)):
                if time.perf_counter() > deadline:
                    raise SystemExit("lww: the servers did not agree within 60 s of applying everything")
                time.sleep(0.05)
        r.stop()
        return writes / elapsed
    finally:
        a.stop()
        b.stop()


def lag(python: str, resolve: str):
    """p50 and p99 lag (ms) of inserts written at LAG_RATE per second on each side."""
    a, b, ca, cb = fresh_pair()
    try:
        cfg = config(a, b, resolve, both=True)
        r = Run(python, cfg)
        wait_links([ca, cb], 2)
        lags = []
        stop = threading.Event()

        def watch(client, side):
            oplog = client.local["oplog.rs"]
            last = oplog.find_one(sort=[("$natural", -1)])["ts"]
            cursor = oplog.find({"ts": {"$gt": last}}, cursor_type=CursorType.TAILABLE_AWAIT)
            while not stop.is_set() and cursor.alive:
                for e in cursor:
                    now = time.time()
                    for op in e["o"].get("applyOps", []) if e["op"] == "c" else []:
                        if op.get("ns") == "bench.lag" and op["o"].get("side") != side:
                            lags.append((now - op["o"]["t"]) * 1000)
                    if stop.is_set():
                        break

        watchers = [threading.Thread(target=watch, args=(c, s), daemon=True) for c, s in ((ca, "a"), (cb, "b"))]
        for w in watchers:
            w.start()

        def write(client, side):
            n = 0
            start = time.perf_counter()
            while time.perf_counter() - start < LAG_SECONDS:
                batch = [{"side": side, "n": n + k, "t": time.time()} for k in range(50)]
                client.bench.lag.insert_many(batch)
                n += 50
                ahead = n / LAG_RATE - (time.perf_counter() - start)
                if ahead > 0:
                    time.sleep(ahead)

        writers = [threading.Thread(target=write, args=(c, s)) for c, s in ((ca, "a"), (cb, "b"))]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
        time.sleep(1.0)
        stop.set()
        r.stop()
        lags.sort()
        if not lags:
            return float("nan"), float("nan")
        return statistics.median(lags), lags[int(len(lags) * 0.99) - 1]
    finally:
        a.stop()
        b.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline-python", help="the interpreter of another mmm installation, run as the reference")
    args = p.parse_args()
    here = sys.executable
    rows = [("workload", "resolve: none", "lww", "lww / none")]
    base = {}
    for name, fn in (("one-way, docs/s", lambda py, res: one_way(py, res)),
                     ("both ways, 0% conflicts, writes/s", lambda py, res: both_ways(py, res, 0.0)),
                     ("both ways, 1% conflicts, writes/s", lambda py, res: both_ways(py, res, 0.01))):
        none = fn(here, "none")
        lww = fn(here, "lww")
        base[name] = none
        rows.append((name, f"{none:,.0f}", f"{lww:,.0f}", f"{lww / none:.2f}"))
    table(f"Throughput ({'quick' if quick() else 'full'} sizes; mmm run in its own process)", rows)
    p50, p99 = lag(here, "lww")
    table(f"Lag at {LAG_RATE:,} inserts/s each way for {LAG_SECONDS} s (lww)",
          [("p50 ms", "p99 ms", "target p99 < 100 ms"), (f"{p50:.1f}", f"{p99:.1f}", verdict(p99 < 100))])
    if args.baseline_python:
        old, old_after = one_way_rates(args.baseline_python, None)
        new, new_after = one_way_rates(here, "lww")
        table("One-way against the reference installation",
              [("", "reference docs/s", "lww docs/s", "ratio", "target >= 0.70"),
               ("from the start of mmm run", f"{old:,.0f}", f"{new:,.0f}", f"{new / old:.2f}",
                verdict(new / old >= 0.7)),
               ("from the first document applied", f"{old_after:,.0f}", f"{new_after:,.0f}",
                f"{new_after / old_after:.2f}", "")])


if __name__ == "__main__":
    main()
