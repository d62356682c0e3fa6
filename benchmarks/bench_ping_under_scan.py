"""A ping's latency while another client runs a long query, against the ping alone.

    python benchmarks/bench_ping_under_scan.py

The server runs in its own process (``mmm serve``). 100,000 documents are loaded; one client then
runs ``find({_id: {$in: <20,000 ids>}})`` over and over while another sends pings (for at least
three queries). Reported:
the query's duration, ping latency alone (the baseline, same run) and during the query (median and
worst), and their ratios. A server that ran every command under one lock would make each ping
wait for the query (ratio in the thousands); the target is a median ratio under 20.
"""

from __future__ import annotations

import statistics
import multiprocessing
import time

import pymongo

from _common import ServeProcess, quick, table, verdict

N_DOCS = 20_000 if quick() else 100_000
N_IN = 4_000 if quick() else 20_000
N_PINGS = 300


def ping_latencies(client: pymongo.MongoClient, n: int, until=lambda: True):
    """At least `n` pings, and more until `until()` holds."""
    out = []
    while len(out) < n or not until():
        t = time.perf_counter()
        client.admin.command("ping")
        out.append(time.perf_counter() - t)
    return out


def run_queries(uri, ids, stop, done, total) -> None:
    client = pymongo.MongoClient(uri)
    while not stop.is_set():
        t = time.perf_counter()
        list(client.bench.scan.find({"_id": {"$in": ids}}))
        with total.get_lock():
            total.value += time.perf_counter() - t
        with done.get_lock():
            done.value += 1


def main() -> None:
    server = ServeProcess(oplog_size_mb=1024)
    try:
        loader = pymongo.MongoClient(server.uri)
        coll = loader.bench.scan
        for s in range(0, N_DOCS, 5_000):
            coll.insert_many([{"_id": i, "v": i % 97, "pad": "x" * 100} for i in range(s, s + 5_000)])
        ids = list(range(0, N_DOCS, max(1, N_DOCS // N_IN)))[:N_IN]

        pinger = pymongo.MongoClient(server.uri)
        ping_latencies(pinger, 50)  # warm up
        alone = ping_latencies(pinger, N_PINGS)

        query_client = pymongo.MongoClient(server.uri)
        t = time.perf_counter()
        n = len(list(query_client.bench.scan.find({"_id": {"$in": ids}})))
        query_alone = time.perf_counter() - t
        assert n == len(ids), n

        # The query runs in another process: in this one, decoding its 20,000-document replies
        # would hold the GIL and delay the pings on the client side.
        ctx = multiprocessing.get_context("spawn")
        stop, done = ctx.Event(), ctx.Value("i", 0)
        total = ctx.Value("d", 0.0)
        worker = ctx.Process(target=run_queries, args=(server.uri, ids, stop, done, total))
        worker.start()
        while done.value == 0 and worker.is_alive():
            time.sleep(0.01)  # the first query is under way (and has finished once)
        during = ping_latencies(pinger, N_PINGS, until=lambda: done.value >= 4)
        stop.set()
        worker.join()
        query_times = [total.value / max(done.value, 1)]

        ms = lambda s: f"{s * 1000:.2f}"  # noqa: E731
        med_alone, med_during = statistics.median(alone), statistics.median(during)
        ratio = med_during / med_alone
        rows = [
            ("measure", "alone (ms)", "during query (ms)", "ratio"),
            ("ping median", ms(med_alone), ms(med_during), f"{ratio:.1f}"),
            ("ping worst", ms(max(alone)), ms(max(during)), f"{max(during) / max(alone):.1f}"),
            ("$in query", ms(query_alone), ms(query_times[0]) + " (mean)", ""),
        ]
        table(f"ping while find({{_id: {{$in: {len(ids)} ids}}}}) scans {N_DOCS} documents", rows)
        print(f"\nping median ratio {ratio:.1f} (target < 20): {verdict(ratio < 20)}")
        print(f"queries run during the pings: {done.value}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
