"""Failover under load: four processes run the same leased tailer and the same leased
replicator, as four gunicorn workers would; the leader is SIGKILLed or SIGSTOPped 20 times.

    python benchmarks/bench_failover.py            # TTL 2 s (MMM_BENCH_TTL to change it)

Two embedded servers run in their own processes: ``a`` (the source, and the tailer's checkpoint
store) and ``b`` (the link's destination). Every worker process runs

- ``Tailer(a, name="bench", lease=True)`` with a transactional trigger on ``load.jobs`` inserts
  that writes one document per op into ``fx.effects`` on ``a`` (with the trigger's session);
- ``Replicator(lease=True)`` with the link ``a/load.* -> b/load.*``.

A load thread inserts into ``a``'s ``load.jobs`` the whole time. Each round picks the process
holding the tailer's lease and alternately kills it (SIGKILL; a fresh worker replaces it) or
pauses it (SIGSTOP; it is resumed, as a hung host coming back, once another holds the lease:
it wakes up fenced). Failover time: from the signal to the lease held by another process, read
from ``__mmm.leases`` on the servers. The bound is TTL plus one renewal interval (TTL / 3).

The TTL here is 2 s instead of the default 10 s to keep the run short (the protocol scales with
the TTL). The servers' ``transactionLifetimeLimitSeconds`` is lowered to 2 s as well, as the
README advises for fast failover: a killed leader's open transaction otherwise keeps its
documents locked for MongoDB's default 60 s.

At the end: every op has exactly one effect (zero duplicates, zero lost), and ``b`` holds exactly
``a``'s jobs. The baseline, measured in the same run: the same load for about as long with one
worker and no failover (the drain time after the load stops compares the two).
"""

from __future__ import annotations

import collections
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

import pymongo

from _common import ServeProcess, quick, table, verdict

TTL = float(os.environ.get("MMM_BENCH_TTL", "2.0"))
BOUND = TTL + TTL / 3
WORKERS = 4
ROUNDS = 6 if quick() else 20
RATE = 200  # jobs inserted per second

WORKER = r"""
import logging, os, sys, time
import mmm
a, b, ttl = sys.argv[1], sys.argv[2], float(sys.argv[3])
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
tailer = mmm.Tailer(a, name="bench", lease=True, lease_ttl=ttl, save_interval=0.2)

@tailer.on("load.jobs", "i", transactional=True)
def effect(op, session):
    session.client.fx.effects.insert_one({"job": op["o"]["_id"]}, session=session)

replicator = mmm.Replicator({"a": {"id": "A", "uri": a}, "b": {"id": "B", "uri": b}},
                            [("a/load.*", "b/load.*")], lease=True, lease_ttl=ttl)
tailer.start()
replicator.start()
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def lease(client: pymongo.MongoClient, lease_id: str) -> Optional[dict]:
    return client["__mmm"]["leases"].find_one({"_id": lease_id})


class Load(threading.Thread):
    def __init__(self, uri: str) -> None:
        super().__init__(daemon=True)
        self.client = pymongo.MongoClient(uri)
        self.stop = threading.Event()
        self.n = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.client.load.jobs.insert_one({"_id": self.n, "at": time.time()})
            self.n += 1
            time.sleep(1 / RATE)


def start_worker(script: str, a: str, b: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, script, a, b, str(TTL)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def wait_new_holders(start: float, watched: List[tuple], limit: float) -> List[Optional[float]]:
    """For each ``(client, lease id, old term)``: seconds from ``start`` until the lease has a
    greater term (None if not within ``limit``). All are watched at once."""
    found: List[Optional[float]] = [None] * len(watched)
    while time.monotonic() - start < limit and None in found:
        for i, (client, lease_id, old_term) in enumerate(watched):
            if found[i] is None:
                doc = lease(client, lease_id)
                if doc is not None and doc["term"] > old_term:
                    found[i] = time.monotonic() - start
        time.sleep(0.005)
    return found


def drain(ca: pymongo.MongoClient, cb: pymongo.MongoClient, jobs: int, limit: float = 120) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if ca.fx.effects.count_documents({}) >= jobs and cb.load.jobs.count_documents({}) >= jobs:
            break
        time.sleep(0.1)
    return time.monotonic() - start


def run(script: str, workers: int, rounds: int, duration: float = 0.0) -> Dict[str, object]:
    servers = [ServeProcess(oplog_size_mb=512), ServeProcess(oplog_size_mb=512)]
    a, b = servers[0].uri, servers[1].uri
    ca, cb = pymongo.MongoClient(a), pymongo.MongoClient(b)
    for c in (ca, cb):
        c.admin.command("setParameter", 1, transactionLifetimeLimitSeconds=2)
    procs: Dict[int, subprocess.Popen] = {}
    tailer_times: List[float] = []
    link_times: List[float] = []
    misses = 0
    link_id = "link:a/load.*->b/load.*"
    load = Load(a)
    try:
        for _ in range(workers):
            p = start_worker(script, a, b)
            procs[p.pid] = p
        while lease(ca, "tailer:bench") is None or lease(cb, link_id) is None:
            time.sleep(0.05)
        time.sleep(1.0)  # first positions stored before any load
        load.start()
        time.sleep(duration)
        for i in range(rounds):
            time.sleep(1.0)
            held = lease(ca, "tailer:bench")
            leader = procs.get(held["holder"]["pid"])
            if leader is None:
                continue
            link = lease(cb, link_id)
            also_link = link is not None and link["holder"]["pid"] == leader.pid
            sig = signal.SIGKILL if i % 2 == 0 else signal.SIGSTOP
            watched = [(ca, "tailer:bench", held["term"])] + ([(cb, link_id, link["term"])] if also_link else [])
            sent = time.monotonic()
            leader.send_signal(sig)
            found = wait_new_holders(sent, watched, limit=4 * BOUND + 10)
            tailer_after, link_after = found[0], (found[1] if also_link else None)
            if tailer_after is None:
                misses += 1
            else:
                tailer_times.append(tailer_after)
            if also_link:
                if link_after is None:
                    misses += 1
                else:
                    link_times.append(link_after)
            if sig == signal.SIGKILL:
                leader.wait()
                del procs[leader.pid]
                p = start_worker(script, a, b)  # as the app server would fork a new worker
                procs[p.pid] = p
            else:
                # The paused leader wakes up once another holds its leases: fenced, it stands by.
                leader.send_signal(signal.SIGCONT)
        load.stop.set()
        load.join()
        drained = drain(ca, cb, load.n)
        time.sleep(1.0)
        effects = collections.Counter(d["job"] for d in ca.fx.effects.find({}, {"job": 1}))
        jobs_a = sorted(d["_id"] for d in ca.load.jobs.find({}, {"_id": 1}))
        jobs_b = sorted(d["_id"] for d in cb.load.jobs.find({}, {"_id": 1}))
        return {
            "jobs": load.n,
            "duplicates": sum(n - 1 for n in effects.values() if n > 1),
            "lost_effects": len(set(jobs_a) - set(effects)),
            "lost_replicated": len(set(jobs_a) - set(jobs_b)),
            "extra_replicated": len(set(jobs_b) - set(jobs_a)),
            "tailer_failovers": tailer_times,
            "link_failovers": link_times,
            "misses": misses,
            "drain_s": drained,
        }
    finally:
        load.stop.set()
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()
        for s in servers:
            s.stop()


def dist(values: List[float]) -> str:
    if not values:
        return "-"
    v = sorted(values)
    p90 = v[min(len(v) - 1, int(round(0.9 * (len(v) - 1))))]
    return f"n={len(v)} min {v[0]:.2f} median {statistics.median(v):.2f} p90 {p90:.2f} max {v[-1]:.2f}"


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "worker.py")
        with open(script, "w") as f:
            f.write(WORKER)
        print(f"TTL {TTL:.1f} s (renewal every {TTL / 3:.2f} s): a failover must take at most {BOUND:.2f} s")
        baseline = run(script, workers=1, rounds=0, duration=ROUNDS * 3.0)
        measured = run(script, workers=WORKERS, rounds=ROUNDS)
    rows = [("", "baseline: 1 worker, no failover", f"{WORKERS} workers, {ROUNDS} failovers")]
    for key in ("jobs", "duplicates", "lost_effects", "lost_replicated", "extra_replicated", "misses"):
        rows.append((key, str(baseline[key]), str(measured[key])))
    rows.append(("drain after load (s)", f"{baseline['drain_s']:.2f}", f"{measured['drain_s']:.2f}"))
    table("Failover under load", rows)
    tailer_times = measured["tailer_failovers"]
    link_times = measured["link_failovers"]
    assert isinstance(tailer_times, list) and isinstance(link_times, list)
    print(f"\n  tailer failover (s): {dist(tailer_times)}")
    print(f"  link failover (s):   {dist(link_times)}")
    worst = max(tailer_times + link_times, default=0.0)
    print(f"  worst / bound: {worst / BOUND:.2f}")
    ok = (measured["duplicates"] == 0 and measured["lost_effects"] == 0 and measured["lost_replicated"] == 0
          and measured["misses"] == 0 and worst <= BOUND)
    print(f"\n  zero duplicates, zero lost, every failover within TTL + interval: {verdict(ok)}")


if __name__ == "__main__":
    main()
