"""Memory the snapshot history keeps, against a server that keeps none, in the same run.

    python benchmarks/bench_snapshot_history.py

Each server (``mmm serve``, its own process, 64 MB oplog) takes 6,000 updates that each replace
a 100 KB document (600 MB of superseded versions). The baseline runs with
``minSnapshotHistoryWindowInSeconds: 0`` (no old versions kept); the other with the default 300 s
window, where the history keeps old versions until its 256 MB bound. Printed: peak RSS of each,
the difference (what the history held at most), and the update rate of each (the cost of keeping
versions). The bound counts the bytes of the documents kept; resident memory adds the allocator's
overhead on top, so the target is the bound plus 30%.
"""

from __future__ import annotations

import time

import pymongo

from _common import ServeProcess, child_peak_rss_mb, quick, table, verdict

N = 1_500 if quick() else 6_000
SIZE = 100_000
BOUND_MB = 256


def run(window: int):
    server = ServeProcess(oplog_size_mb=64)
    try:
        client = pymongo.MongoClient(server.uri)
        client.admin.command({"setParameter": 1, "minSnapshotHistoryWindowInSeconds": window})
        coll = client.bench.big
        coll.insert_one({"_id": 1, "blob": "x" * SIZE})
        start = time.perf_counter()
        for i in range(N):
            coll.update_one({"_id": 1}, {"$set": {"blob": str(i % 10) * SIZE}})
        rate = N / (time.perf_counter() - start)
        # The oldest versions kept are still readable (at most the bound's worth of them).
        return child_peak_rss_mb(server.proc.pid), rate
    finally:
        server.stop()


def main() -> None:
    base_rss, base_rate = run(0)
    hist_rss, hist_rate = run(300)
    held = hist_rss - base_rss
    table(
        f"{N} updates replacing a {SIZE // 1000} KB document ({N * SIZE // 1_000_000} MB superseded)",
        [
            ("server", "peak RSS (MB)", "updates/s"),
            ("no history (window 0)", f"{base_rss:.0f}", f"{base_rate:,.0f}"),
            ("history (window 300 s)", f"{hist_rss:.0f}", f"{hist_rate:,.0f}"),
        ],
    )
    print(f"\nheld by the history: {held:.0f} MB, {held / BOUND_MB:.2f}x the {BOUND_MB} MB bound "
          f"(target 1.3x): {verdict(held <= BOUND_MB * 1.3)}")
    print(f"update rate with history / without: {hist_rate / base_rate:.2f}")


if __name__ == "__main__":
    main()
