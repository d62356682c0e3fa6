"""Outages longer than the source's oplog window: the link catches up from the source's
``__mmm.meta`` (the documents changed since its position, each as its latest version), not by
copying everything again, and deletes made during the outage stay deletes."""

from __future__ import annotations

import random
import time

import pymongo
import pytest

import mmm
from conftest import wait_for

N = 1000


def everything(client):
    return sorted(client.app.c.find(), key=lambda d: (type(d["_id"]).__name__, d["_id"]))


def roll_over(client, slowly=False):
    """Writes outside the replicated database until the 1 MB oplog has wrapped (slowly: at
    half a megabyte a second, which the source's observer, reading every second, keeps up with)."""
    for _ in range(60):
        client.filler.x.insert_many([{"blob": "z" * 10_000} for _ in range(5)])
        if slowly:
            time.sleep(0.1)


@pytest.fixture
def pair(mongo_server_factory):
    a, b = mongo_server_factory(oplog_size_mb=1), mongo_server_factory()
    ca, cb = pymongo.MongoClient(a.uri), pymongo.MongoClient(b.uri, serverSelectionTimeoutMS=20000)
    yield a, b, ca, cb
    ca.close()
    cb.close()


def running(r):
    return all(s["state"] == "running" for s in r.status())


def catch_up_after_losing_both_histories(servers, links, ca, cb):
    """Wraps both oplogs while nothing observes either server, replicates until both servers
    hold the same documents, and returns the conflict journal of `app.c`."""
    roll_over(ca)
    roll_over(cb)
    with mmm.Replicator(servers, links) as r:
        wait_for(lambda: everything(ca) == everything(cb), timeout=60)
        wait_for(lambda: running(r), timeout=30)
        time.sleep(1)
        assert everything(ca) == everything(cb)
        return r.conflicts("app.c", limit=100_000)


def test_an_outage_past_the_oplog_window_catches_up_with_only_the_changed_documents(pair):
    a, b, ca, cb = pair
    servers = {"factory": {"id": "F", "uri": a.uri}, "cloud": {"id": "C", "uri": b.uri}}
    r = mmm.Replicator(servers, [("factory/app.*", "cloud/app.*"), ("cloud/app.*", "factory/app.*")])
    with r:
        wait_for(lambda: running(r), timeout=30)
        ca.app.c.insert_many([{"_id": i, "v": 0} for i in range(N)])
        wait_for(lambda: cb.app.c.count_documents({}) == N, timeout=60)
        applied_before = r.status()[0]["ops_applied"]
        b.pause(12)  # the cloud is unreachable; the factory keeps writing
        time.sleep(0.3)
        for i in range(0, 20):
            ca.app.c.update_one({"_id": i}, {"$set": {"v": "changed"}})
        ca.app.c.delete_many({"_id": {"$gte": 20, "$lt": 30}})
        ca.app.c.insert_many([{"_id": N + i, "v": "new"} for i in range(10)])
        roll_over(ca, slowly=True)
        oldest = ca.local["oplog.rs"].find_one(sort=[("$natural", 1)])["ts"]
        wait_for(lambda: everything(ca) == everything(cb), timeout=60)
        moved = r.status()[0]["ops_applied"] - applied_before
        # The link follows the factory's oplog on. (Its reader may also have read the whole
        # wrap ahead into its buffers while the cloud was away, and then it had nothing to
        # catch up: either way its position ends past the oldest entry.)
        ca.app.c.insert_one({"_id": "after"})
        wait_for(lambda: cb.app.c.find_one({"_id": "after"}) is not None, timeout=30)
        wait_for(lambda: cb["__mmm"].checkpoints.find_one({"src": "F"})["ts"] >= oldest, timeout=30)
        ca.app.c.delete_one({"_id": "after"})
        wait_for(lambda: everything(ca) == everything(cb), timeout=30)
    assert everything(ca) == everything(cb)
    assert cb.app.c.count_documents({"_id": {"$gte": 20, "$lt": 30}}) == 0
    assert cb.app.c.count_documents({"v": "changed"}) == 20
    # 40 documents changed, not 1000: only those moved.
    assert 40 <= moved < 100, moved


def test_on_rollover_stop_keeps_the_old_behaviour(pair):
    a, b, ca, cb = pair
    servers = {"factory": {"id": "F", "uri": a.uri}, "cloud": {"id": "C", "uri": b.uri}}
    links = [mmm.Link("factory/app.*", "cloud/app.*", on_rollover="stop")]
    with mmm.Replicator(servers, links) as r:
        wait_for(lambda: running(r), timeout=30)
        ca.app.c.insert_one({"_id": 0})
        wait_for(lambda: cb.app.c.count_documents({}) == 1, timeout=30)
    roll_over(ca)
    r = mmm.Replicator(servers, links)
    with pytest.raises(mmm.ReplicationError, match="resync"):
        r.run()
    with pytest.raises(ValueError, match="on_rollover"):
        mmm.Link("factory/app.*", "cloud/app.*", on_rollover="sometimes")


def test_a_reader_that_was_down_too_sends_every_document(pair):
    """Nothing observed the factory while its oplog wrapped: the rows cannot say what changed,
    so every document of the link's namespaces is sent as a version (still no full resync by
    hand, and the cloud's own newer versions are kept)."""
    a, b, ca, cb = pair
    servers = {"factory": {"id": "F", "uri": a.uri}, "cloud": {"id": "C", "uri": b.uri}}
    links = [("factory/app.*", "cloud/app.*"), ("cloud/app.*", "factory/app.*")]
    with mmm.Replicator(servers, links) as r:
        wait_for(lambda: running(r), timeout=30)
        ca.app.c.insert_many([{"_id": i, "v": 0} for i in range(50)])
        wait_for(lambda: cb.app.c.count_documents({}) == 50, timeout=30)
    # Both replicators are down; the factory changes and deletes documents, its oplog wraps.
    ca.app.c.update_many({"_id": {"$lt": 5}}, {"$set": {"v": "factory"}})
    ca.app.c.delete_many({"_id": {"$gte": 40}})
    roll_over(ca)
    time.sleep(0.02)
    cb.app.c.update_one({"_id": 7}, {"$set": {"v": "cloud, later"}})
    with mmm.Replicator(servers, links) as r:
        wait_for(lambda: everything(ca) == everything(cb), timeout=60)
        wait_for(lambda: running(r), timeout=30)
    assert cb.app.c.count_documents({"v": "factory"}) == 5
    assert ca.app.c.find_one({"_id": 7})["v"] == "cloud, later"
    # Deleted on the factory while unobserved, older on the cloud: deleted on both.
    assert cb.app.c.count_documents({"_id": {"$gte": 40}}) == 0


def test_both_sides_lost_their_history_and_keep_every_change(mongo_server_factory):
    """Both oplogs wrapped while nothing observed either side, and each side changed, deleted
    and inserted documents: both links catch up by comparing at the same time. Each row holds
    the hash of the version it names, so a side whose content no longer matches its row is the
    side that changed: every change made on one side is kept, deletes stay deletes, and a
    document changed on both sides is a conflict, decided by the policy and journaled. The
    servers must also end identical although both links write at once (each records a
    version it reads in the transaction that records it)."""
    a, b = mongo_server_factory(oplog_size_mb=1), mongo_server_factory(oplog_size_mb=1)
    ca, cb = pymongo.MongoClient(a.uri), pymongo.MongoClient(b.uri)
    servers = {"factory": {"id": "F", "uri": a.uri}, "cloud": {"id": "C", "uri": b.uri}}
    links = [("factory/app.*", "cloud/app.*"), ("cloud/app.*", "factory/app.*")]
    with mmm.Replicator(servers, links) as r:
        wait_for(lambda: running(r), timeout=30)
        ca.app.c.insert_many([{"_id": i, "v": 0} for i in range(N)])
        wait_for(lambda: cb.app.c.count_documents({}) == N, timeout=30)
        # Some versions reach the cloud as updates (their rows' hashes are read back).
        ca.app.c.update_many({"_id": {"$lt": N // 2}}, {"$set": {"w": 1}})
        wait_for(lambda: cb.app.c.count_documents({"w": 1}) == N // 2, timeout=30)

        def hashes(client):
            return {r["_id"]["i"]: (r["h"], r.get("c")) for r in client["__mmm"].meta.find({"_id.n": "app.c"})}

        # Both servers' rows name each version with the same content hash: observed inserts and
        # updates on the factory, versions installed whole or as changes on the cloud.
        wait_for(lambda: len(hashes(ca)) == N and hashes(ca) == hashes(cb), timeout=30)
        assert None not in {c for _, c in hashes(cb).values()}
    for i in range(0, N, 8):
        ca.app.c.update_one({"_id": i}, {"$set": {"v": "factory"}})
        cb.app.c.update_one({"_id": i + 1}, {"$inc": {"v": 5}})
        ca.app.c.delete_one({"_id": i + 2})
        cb.app.c.replace_one({"_id": i + 3}, {"v": "cloud"})
        cb.app.c.delete_one({"_id": i + 4})
    ca.app.c.insert_many([{"_id": f"f{i}", "v": "new"} for i in range(20)])
    cb.app.c.insert_many([{"_id": f"c{i}", "v": "new"} for i in range(20)])
    ca.app.c.update_one({"_id": 5}, {"$set": {"v": "both: factory"}})
    cb.app.c.update_one({"_id": 5}, {"$set": {"v": "both: cloud"}})
    journaled = catch_up_after_losing_both_histories(servers, links, ca, cb)
    for i in range(0, N, 8):
        assert ca.app.c.find_one({"_id": i})["v"] == "factory"
        assert ca.app.c.find_one({"_id": i + 1})["v"] == 5
        assert ca.app.c.find_one({"_id": i + 2}) is None
        assert ca.app.c.find_one({"_id": i + 3}) == {"_id": i + 3, "v": "cloud"}
        assert ca.app.c.find_one({"_id": i + 4}) is None
    assert ca.app.c.count_documents({"v": "new"}) == 40
    assert ca.app.c.find_one({"_id": 5})["v"] in ("both: factory", "both: cloud")
    assert any(c["id"] == 5 for c in journaled)
    # Documents neither side changed were not touched.
    untouched = [i for i in range(N) if i % 8 in (6, 7) and i != 5]
    assert all(d["v"] == 0 for d in ca.app.c.find({"_id": {"$in": untouched}}))


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_random_histories_with_both_sides_lost_keep_one_sided_changes(mongo_server_factory, seed):
    """Seeded histories: documents shared before the outage are changed on one side, on the
    other, on both or on neither, with random kinds of writes, plus inserts on each side, while
    nothing observes either server and both oplogs roll over. After the catch-up both servers
    are identical, every one-sided change is there, deletes stay deleted, untouched documents
    are untouched, and every document changed on both sides holds one side's change and is in
    the journal."""
    rng = random.Random(seed)
    a, b = mongo_server_factory(oplog_size_mb=1), mongo_server_factory(oplog_size_mb=1)
    ca, cb = pymongo.MongoClient(a.uri), pymongo.MongoClient(b.uri)
    servers = {"factory": {"id": "F", "uri": a.uri}, "cloud": {"id": "C", "uri": b.uri}}
    links = [("factory/app.*", "cloud/app.*"), ("cloud/app.*", "factory/app.*")]
    n = 60
    with mmm.Replicator(servers, links) as r:
        wait_for(lambda: running(r), timeout=30)
        # Half written on each side, some of them updated once (rows hashed from updates).
        ca.app.c.insert_many([{"_id": i, "v": 0, "l": [0]} for i in range(0, n, 2)])
        cb.app.c.insert_many([{"_id": i, "v": 0, "l": [0]} for i in range(1, n, 2)])
        for i in rng.sample(range(n), n // 3):
            (ca if i % 2 == 0 else cb).app.c.update_one({"_id": i}, {"$set": {"u": 1}})
        wait_for(lambda: everything(ca) == everything(cb) and len(everything(ca)) == n, timeout=30)
        time.sleep(1.5)  # observation stores what it saw
    before = {d["_id"]: d for d in everything(ca)}
    who = {i: rng.choice(["factory", "cloud", "both", "neither"]) for i in range(n)}
    expected = {}
    for side, client in (("factory", ca), ("cloud", cb)):
        for i in [i for i in range(n) if who[i] in (side, "both")]:
            kind = rng.choice(["set", "inc", "replace", "delete", "push"])
            coll = client.app.c
            if kind == "set":
                coll.update_one({"_id": i}, {"$set": {"v": side}})
            elif kind == "inc":
                coll.update_one({"_id": i}, {"$inc": {"v": 7 if side == "factory" else 9}})
            elif kind == "replace":
                coll.replace_one({"_id": i}, {"whole": side})
            elif kind == "delete":
                coll.delete_one({"_id": i})
            else:
                coll.update_one({"_id": i}, {"$push": {"l": side}})
            expected.setdefault(i, []).append(coll.find_one({"_id": i}))
        inserted = [{"_id": f"{side}-{k}", "v": side} for k in range(rng.randint(0, 5))]
        if inserted:
            client.app.c.insert_many(inserted)
            for d in inserted:
                expected[d["_id"]] = [d]
    journaled = {c["id"] for c in catch_up_after_losing_both_histories(servers, links, ca, cb)}
    now = {d["_id"]: d for d in everything(ca)}
    for i, d in before.items():
        if who[i] == "neither":
            assert now.get(i) == d, (seed, i)
    for i, versions in expected.items():
        if len(versions) == 1:
            assert now.get(i) == versions[0], (seed, i, who.get(i), now.get(i), versions)
        else:
            assert now.get(i) in versions, (seed, i, now.get(i), versions)
            assert i in journaled, (seed, i)
