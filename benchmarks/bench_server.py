"""Embedded server throughput from one PyMongo client.

    python benchmarks/bench_server.py

Measures bulk insert of 1 KB documents (docs/s), single-document updates by _id (ops/s), and a
scan of 100,000 oplog entries, against the targets on a 2-core machine: 100,000 docs/s bulk
insert and 20,000 updates/s.
"""

from __future__ import annotations

import pymongo

from _common import doc_1kb, peak_rss_mb, quick, table, timed, verdict

from mmm.embedded import MongoServer

N_INSERT = 20_000 if quick() else 200_000
N_UPDATE = 5_000 if quick() else 50_000
N_OPLOG = 100_000


def main() -> None:
    with MongoServer(oplog_size_mb=2048) as server:
        client = pymongo.MongoClient(server.uri)
        coll = client.bench.docs
        batch = 1000
        with timed() as t_insert:
            for start in range(0, N_INSERT, batch):
                coll.insert_many([doc_1kb(i) for i in range(start, start + batch)], ordered=True)
        with timed() as t_update:
            for i in range(N_UPDATE):
                coll.update_one({"_id": i}, {"$inc": {"n": 1}})
        oplog = client.local["oplog.rs"]
        with timed() as t_scan:
            scanned = sum(1 for _ in oplog.find({}, batch_size=10_000).limit(N_OPLOG))
        insert_rate = N_INSERT / t_insert[0]
        update_rate = N_UPDATE / t_update[0]
        scan_rate = scanned / t_scan[0]
        table(
            "embedded server, one PyMongo client",
            [
                ("measure", "result", "target", ""),
                (f"bulk insert {N_INSERT:,} x 1 KB (insert_many of 1000)", f"{insert_rate:,.0f} docs/s", ">= 100,000 docs/s", verdict(insert_rate >= 100_000)),
                (f"update_one by _id x {N_UPDATE:,}", f"{update_rate:,.0f} ops/s", ">= 20,000 ops/s", verdict(update_rate >= 20_000)),
                (f"oplog scan of {scanned:,} entries", f"{t_scan[0]:.2f} s ({scan_rate:,.0f} entries/s)", "", ""),
                ("peak RSS (client and server, one process)", f"{peak_rss_mb():.0f} MB", "", ""),
            ],
        )
        client.close()


if __name__ == "__main__":
    main()
