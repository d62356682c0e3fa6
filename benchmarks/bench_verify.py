"""``mmm verify`` of identical collections, against the time to copy them.

    python benchmarks/bench_verify.py            # 200,000 documents of 1 KB
    python benchmarks/bench_verify.py --full     # 1,000,000 (the issue's size; needs ~8 GB free)

Two embedded servers run as separate processes (``mmm serve``). The source gets N documents of
1 KB; then, in the same run:

- copy (baseline): an initial sync of the link a -> b (``initial_sync=True``), from start to the
  last document on the destination;
- verify: ``Replicator.verify`` in this process, timed (median of three runs); then ``mmm -c FILE verify --json`` as a
  subprocess (so that its memory is its own) for the peak RSS, on the same collection and on a
  collection a tenth its size (memory must not grow with the collection). Both must find the
  collections consistent.

Reported: both times, the ratio verify/copy (target: well under 1), documents per second, and
the verify processes' peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import pymongo

from _common import ServeProcess, doc_1kb, quick, table, verdict

import mmm


def fill(client, coll: str, n: int) -> None:
    for i in range(0, n, 10_000):
        client.app[coll].insert_many([doc_1kb(j) for j in range(i, min(i + 10_000, n))])


def copy(servers, cb, n: int) -> float:
    link = mmm.Link("a/app.*", "b/app.*", initial_sync=True)
    t0 = time.perf_counter()
    with mmm.Replicator(servers, [link]) as r:
        while cb.app.big.estimated_document_count() < n or r.status()[0]["state"] != "running":
            time.sleep(0.01)
        took = time.perf_counter() - t0
    return took


def verify_child(cfg: str, ns: str):
    """Runs ``mmm verify`` in a child process: (peak RSS in MB, its JSON)."""
    out = subprocess.run([sys.executable, "-m", "mmm", "-c", cfg, "verify", "--ns", ns, "--json", "--restart"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"verify exited {out.returncode}: {out.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return peak, json.loads(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="1,000,000 documents")
    p.add_argument("-n", type=int, help="documents (overrides --full)")
    args = p.parse_args()
    n = args.n or (1_000_000 if args.full else 20_000 if quick() else 200_000)
    small = max(1, n // 10)
    # Room for the documents and their oplog entries on both servers.
    size_mb = max(1024, n * 3 // 1000)
    a, b = ServeProcess(oplog_size_mb=size_mb), ServeProcess(oplog_size_mb=size_mb)
    try:
        ca, cb = pymongo.MongoClient(a.uri), pymongo.MongoClient(b.uri)
        servers = {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}}
        print(f"filling the source with {n:,} + {small:,} documents of 1 KB ...", flush=True)
        fill(ca, "small", small)
        fill(ca, "big", n)
        copy_s = copy(servers, cb, n)
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
            f.write(f"a:\n  id: A\n  uri: '{a.uri}'\nb:\n  id: B\n  uri: '{b.uri}'\n"
                    "links:\n  - {src: 'a/app.*', dst: 'b/app.*'}\n")
            cfg = f.name
        r = mmm.Replicator(servers, [("a/app.*", "b/app.*")])
        times = []
        for _ in range(3):  # the machine is noisy: the median of three
            t0 = time.perf_counter()
            result = r.verify("app.big", restart=True)
            times.append(time.perf_counter() - t0)
            assert result.consistent and result.pairs[0].compared == n, result
        verify_s = statistics.median(times)
        try:
            # The smaller one first: RUSAGE_CHILDREN's peak only grows.
            small_peak, _ = verify_child(cfg, "app.small")
            peak, child = verify_child(cfg, "app.big")
        finally:
            os.unlink(cfg)
        assert child["consistent"] and child["pairs"][0]["compared"] == n, child
    finally:
        a.stop()
        b.stop()
    ratio = verify_s / copy_s
    table(f"verify of {n:,} identical 1 KB documents (servers in their own processes)", [
        ("phase", "seconds", "docs/s", "peak RSS MB", "ratio", "target"),
        ("copy (initial sync)", f"{copy_s:.2f}", f"{n / copy_s:,.0f}", "", "1.00", "baseline"),
        ("verify", f"{verify_s:.2f}", f"{n / verify_s:,.0f}", f"{peak:.0f}", f"{ratio:.2f}",
         f"< 1: {verdict(ratio < 1)}"),
        (f"verify of {small:,}", "", "", f"{small_peak:.0f}", "", "same memory: independent of size"),
    ])


if __name__ == "__main__":
    main()
