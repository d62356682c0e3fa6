"""Ops/s delivered to a no-op Python trigger from a 1,000,000-op oplog backlog.

    python benchmarks/bench_tailer.py

Each run happens in a fresh child process (so its peak RSS is its own) against an embedded
server in another process. The baseline is the original algorithm on current PyMongo: a
tailable await cursor on the oplog and a dict dispatch by namespace, in Python. Cases: (a) every
op matches a trigger, (b) 1% of the ops match. Targets: mmm >= 1.5x the baseline in (a), >= 10x
in (b), peak RSS of the mmm run < 200 MB.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pymongo

from _common import ServeProcess, quick, table, verdict

N_OPS = 100_000 if quick() else 1_000_000
HOT_EVERY = 100  # 1% of the ops go to bench.hot

CHILD = r"""
import json, resource, sys, time
mode, uri, ns_filter, expected = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
seen = 0
start = time.perf_counter()
if mode == "mmm":
    import mmm
    t = mmm.Tailer(uri, checkpoint="oldest")
    def noop(op):
        global seen
        seen += 1
        if seen >= expected:
            t.stop()
    t.register(ns_filter, "i", noop)
    t.run()
else:
    import pymongo
    from pymongo import CursorType
    client = pymongo.MongoClient(uri)
    handlers = {}
    def noop(op):
        global seen
        seen += 1
    if ns_filter == "*":
        dispatch = lambda op: noop(op)
    else:
        handlers[ns_filter] = noop
        dispatch = lambda op: handlers.get(op["ns"], lambda o: None)(op)
    cursor = client.local["oplog.rs"].find({}, cursor_type=CursorType.TAILABLE_AWAIT, oplog_replay=True)
    for op in cursor:
        if op["op"] == "i":
            dispatch(op)
        if seen >= expected:
            break
elapsed = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seen": seen, "seconds": elapsed, "rss_mb": rss}))
"""


def run_child(mode: str, uri: str, ns_filter: str, expected: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, uri, ns_filter, str(expected)],
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    server = ServeProcess()
    try:
        client = pymongo.MongoClient(server.uri)
        print(f"loading a backlog of {N_OPS:,} inserts ...", flush=True)
        batch = []
        for i in range(N_OPS):
            coll = "hot" if i % HOT_EVERY == 0 else "cold"
            batch.append((coll, {"_id": i, "v": i}))
            if len(batch) == 10_000:
                for name in ("hot", "cold"):
                    docs = [d for c, d in batch if c == name]
                    if docs:
                        client.bench[name].insert_many(docs, ordered=False)
                batch.clear()
        hot = sum(1 for i in range(N_OPS) if i % HOT_EVERY == 0)
        cases = [("(a) every op matches", "*", N_OPS), ("(b) 1% match", "bench.hot", hot)]
        rows = [("case", "baseline ops/s", "mmm ops/s", "ratio", "target", "mmm peak RSS", "")]
        for label, ns, expected in cases:
            base = run_child("pymongo", server.uri, ns, expected)
            ours = run_child("mmm", server.uri, ns, expected)
            # Throughput is over the oplog entries read, matched or not.
            base_rate = N_OPS / base["seconds"]
            our_rate = N_OPS / ours["seconds"]
            ratio = our_rate / base_rate
            target = 1.5 if ns == "*" else 10.0
            rows.append((label, f"{base_rate:,.0f}", f"{our_rate:,.0f}", f"{ratio:.1f}x", f">= {target}x",
                         f"{ours['rss_mb']:.0f} MB", verdict(ratio >= target and ours["rss_mb"] < 200)))
        table(f"oplog backlog of {N_OPS:,} ops, no-op trigger (entries read per second)", rows)
        client.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
