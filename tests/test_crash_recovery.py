"""Exactly-once under crashes: the replicator process is killed with SIGKILL at random moments
while both sides are written to; after a final run every document is identical on both sides and
every source op was applied exactly once (the counters committed with the checkpoints match the
number of ops written)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time

import pymongo

from conftest import wait_for

KILLS = 20


class Writer(threading.Thread):
    """Inserts, updates and deletes on one side; counts the oplog ops it caused."""

    def __init__(self, client: pymongo.MongoClient, side: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.coll = client.app.items
        self.side = side
        self.rng = random.Random(seed)
        self.ops = 0
        self.next_id = 0
        self.live: list = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            roll = self.rng.random()
            if roll < 0.5 or not self.live:
                _id = f"{self.side}-{self.next_id}"
                self.next_id += 1
                self.coll.insert_one({"_id": _id, "n": 0, "side": self.side})
                self.live.append(_id)
            elif roll < 0.9:
                self.coll.update_one({"_id": self.rng.choice(self.live)}, {"$inc": {"n": 1}, "$push": {"h": self.ops}})
            else:
                _id = self.live.pop(self.rng.randrange(len(self.live)))
                self.coll.delete_one({"_id": _id})
            self.ops += 1
            time.sleep(0.002)


def test_sigkill_at_random_moments_loses_nothing_and_applies_nothing_twice(mongo_server_factory, tmp_path):
    a, b = mongo_server_factory(), mongo_server_factory()
    ca, cb = pymongo.MongoClient(a.uri), pymongo.MongoClient(b.uri)
    # A killed replicator leaves its open transaction behind, holding its documents until the
    # server's transaction reaper aborts it (60 s by default): shorten that for the test.
    for c in (ca, cb):
        c.admin.command("setParameter", 1, transactionLifetimeLimitSeconds=2)
    cfg = tmp_path / "mmm.yml"
    cfg.write_text(
        f"a:\n  id: A\n  uri: '{a.uri}'\nb:\n  id: B\n  uri: '{b.uri}'\n"
        "links:\n  - {src: a/app.*, dst: b/app.*}\n  - {src: b/app.*, dst: a/app.*}\n"
    )
    # Every process here must work from its first moment, to be killed mid-batch: with leases
    # (the default), a killed holder's lease must lapse before the next process works, and these
    # short-lived processes would mostly stand by. Killing leased holders: tests/test_leases.py.
    run = [sys.executable, "-m", "mmm", "-c", str(cfg), "run", "--no-lease"]
    # A first clean run creates both links' checkpoints before any data is written.
    proc = subprocess.Popen(run, stderr=subprocess.DEVNULL)
    wait_for(lambda: ca["__mmm"].checkpoints.count_documents({}) == 1 and cb["__mmm"].checkpoints.count_documents({}) == 1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0

    writers = [Writer(ca, "a", 1), Writer(cb, "b", 2)]
    for w in writers:
        w.start()
    rng = random.Random(42)
    for _ in range(KILLS):
        proc = subprocess.Popen(run, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    for w in writers:
        w.stop.set()
        w.join()

    proc = subprocess.Popen(run, stderr=subprocess.DEVNULL)
    try:
        def same():
            return sorted(ca.app.items.find(), key=lambda d: d["_id"]) == sorted(cb.app.items.find(), key=lambda d: d["_id"])

        wait_for(same, timeout=60)

        def counted():
            on_b = cb["__mmm"].checkpoints.find_one({"src": "A", "_id": {"$not": {"$regex": "#"}}})
            on_a = ca["__mmm"].checkpoints.find_one({"src": "B", "_id": {"$not": {"$regex": "#"}}})
            return on_b["ops_applied"] == writers[0].ops and on_a["ops_applied"] == writers[1].ops

        wait_for(counted, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert ca.app.items.count_documents({}) > 100
