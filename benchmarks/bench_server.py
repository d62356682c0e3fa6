"""Embedded server throughput from one PyMongo client.

    python benchmarks/bench_server.py

The server runs in its own process (``mmm serve``), as a mongod would. Measures bulk insert of
1 KB documents (docs/s), single-document updates by _id (ops/s) both as one round trip each and
as bulk writes of UpdateOne statements, and a scan of 100,000 oplog entries. Targets on a 2-core
machine: 100,000 docs/s bulk insert and 20,000 updates/s. Each timed phase runs three times and
the median is reported (this machine is noisy).
"""

from __future__ import annotations

import statistics

import pymongo
from pymongo import UpdateOne

from _common import ServeProcess, child_peak_rss_mb, doc_1kb, quick, table, timed, verdict

N_INSERT = 20_000 if quick() else 100_000
N_UPDATE = 5_000 if quick() else 20_000
N_OPLOG = 100_000
RUNS = 3


def median_rate(runs):
    return statistics.median(runs)


def main() -> None:
    server = ServeProcess(oplog_size_mb=4096)
    try:
        client = pymongo.MongoClient(server.uri)
        db = client.bench
        inserts, sequential, bulk = [], [], []
        for run in range(RUNS):
            coll = db[f"docs{run}"]
            batches = [[doc_1kb(i) for i in range(s, s + 1000)] for s in range(0, N_INSERT, 1000)]
            with timed() as t:
                for batch in batches:
                    coll.insert_many(batch, ordered=True)
            inserts.append(N_INSERT / t[0])
            with timed() as t:
                for i in range(N_UPDATE):
                    coll.update_one({"_id": i}, {"$inc": {"n": 1}})
            sequential.append(N_UPDATE / t[0])
            requests = [UpdateOne({"_id": i}, {"$inc": {"n": 1}}) for i in range(N_INSERT)]
            with timed() as t:
                for s in range(0, N_INSERT, 1000):
                    coll.bulk_write(requests[s:s + 1000], ordered=True)
            bulk.append(N_INSERT / t[0])
        oplog = client.local["oplog.rs"]
        with timed() as t_scan:
            scanned = sum(1 for _ in oplog.find({}, batch_size=10_000).limit(N_OPLOG))
        ins, seq, blk = median_rate(inserts), median_rate(sequential), median_rate(bulk)
        table(
            f"embedded server in its own process, one PyMongo client (median of {RUNS} runs)",
            [
                ("measure", "result", "target", ""),
                (f"bulk insert {N_INSERT:,} x 1 KB (insert_many of 1000)", f"{ins:,.0f} docs/s", ">= 100,000 docs/s", verdict(ins >= 100_000)),
                ("update by _id, bulk_write of 1000 UpdateOne", f"{blk:,.0f} ops/s", ">= 20,000 ops/s", verdict(blk >= 20_000)),
                ("update_one by _id, one round trip each", f"{seq:,.0f} ops/s", "(latency-bound)", ""),
                (f"oplog scan of {scanned:,} entries", f"{t_scan[0]:.2f} s ({scanned / t_scan[0]:,.0f} entries/s)", "", ""),
                ("server peak RSS", f"{child_peak_rss_mb(server.proc.pid):.0f} MB", "", ""),
            ],
        )
        print(f"  all runs: inserts {[round(x) for x in inserts]}, bulk updates {[round(x) for x in bulk]}, "
              f"update_one {[round(x) for x in sequential]}")
        client.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
