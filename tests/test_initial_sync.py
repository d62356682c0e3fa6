"""Initial sync that is interrupted and resumed: the oplog position taken before the copy and the
copy's progress are stored on the destination, so a restarted link resumes the copy and replays
every write made since the copy began, including the outage."""

from __future__ import annotations

import pymongo

import mmm
from conftest import wait_for

N = 20_000


def servers_of(a, b):
    return {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}}


def by_id(coll):
    return sorted(coll.find(), key=lambda d: (str(type(d["_id"])), repr(d["_id"])))


def stop_midway(r, dst_coll, total):
    """Stops the replicator once part, not all, of the copy is committed on the destination."""
    r.start()
    wait_for(lambda: dst_coll.count_documents({}) > 0, timeout=60, interval=0.005)
    r.stop()
    r.join()
    copied = dst_coll.count_documents({})
    assert 0 < copied < total, f"the copy was not interrupted midway ({copied} of {total})"
    return copied


def test_restarted_initial_sync_replays_deletes_made_during_the_outage(pair):
    a, b, ca, cb = pair
    ca.app.big.insert_many([{"_id": i, "v": 0, "pad": "x" * 200} for i in range(N)])
    link = mmm.Link("a/app.*", "b/app.*", initial_sync=True)
    stop_midway(mmm.Replicator(servers_of(a, b), [link]), cb.app.big, N)
    state = cb["__mmm"].checkpoints.find_one({"_id": "a/app.*->b/app.*"})
    assert state is not None and state["initial_sync"]["ns"] == "app.big"
    # During the outage: the documents already copied are deleted at the source, others are
    # updated, and new ones appear both before and after the copy's resume point.
    copied_ids = [d["_id"] for d in cb.app.big.find({}, {"_id": 1})]
    ca.app.big.delete_many({"_id": {"$in": copied_ids}})
    ca.app.big.update_many({"_id": {"$gte": N - 100}}, {"$set": {"v": 1}})
    ca.app.big.insert_many([{"_id": -i, "v": 2} for i in range(1, 51)])
    ca.app.big.insert_many([{"_id": f"s{i}", "v": 3} for i in range(50)])
    with mmm.Replicator(servers_of(a, b), [link]) as r:
        wait_for(lambda: r.status()[0]["state"] == "running", timeout=60)
        ca.app.big.delete_one({"_id": -1})
        wait_for(lambda: by_id(ca.app.big) == by_id(cb.app.big), timeout=60)
        copied, total = r.status()[0]["initial_sync"]
    assert cb.app.big.count_documents({}) == N - len(copied_ids) + 49 + 50
    # Progress counts across the restart: the first run's copies plus the second run's.
    assert copied >= N - 100
    assert total == copied, "the total counts what was left of the resumed collection exactly"
    assert "initial_sync" not in cb["__mmm"].checkpoints.find_one({"_id": "a/app.*->b/app.*"})


def test_resumed_copy_keeps_ids_of_every_type_after_the_resume_point(pair):
    """The resume point is an `_id` of one BSON type; documents whose `_id` has a type that
    sorts after it (strings after numbers, ObjectIds after strings) are still copied."""
    a, b, ca, cb = pair
    docs = [{"_id": i, "pad": "x" * 200} for i in range(N)]
    docs += [{"_id": f"k{i:05d}"} for i in range(200)] + [{"_id": bson_oid()} for _ in range(200)]
    docs += [{"_id": {"k": i}} for i in range(50)] + [{"_id": True}, {"_id": None}]
    ca.app.mixed.insert_many(docs)
    link = mmm.Link("a/app.mixed", "b/app.mixed", initial_sync=True)
    stop_midway(mmm.Replicator(servers_of(a, b), [link]), cb.app.mixed, len(docs))
    with mmm.Replicator(servers_of(a, b), [link]):
        wait_for(lambda: cb.app.mixed.count_documents({}) == len(docs), timeout=60)
    assert by_id(ca.app.mixed) == by_id(cb.app.mixed)


def test_every_namespace_of_a_wildcard_link_is_copied_once_across_restarts(pair):
    a, b, ca, cb = pair
    for name in ("c1", "c2", "c3"):
        ca.app[name].insert_many([{"_id": i, "c": name, "pad": "x" * 200} for i in range(N // 2)])
    ca.other.z.insert_many([{"_id": i} for i in range(100)])
    link = mmm.Link("a/*", "b/*", initial_sync=True)
    r = mmm.Replicator(servers_of(a, b), [link])
    r.start()
    wait_for(lambda: cb.app.c2.count_documents({}) > 0, timeout=60, interval=0.005)
    r.stop()
    r.join()
    assert cb.app.c1.count_documents({}) == N // 2, "namespaces are copied in order, one after the other"
    ca.app.c1.delete_many({"_id": {"$lt": 100}})
    ca.app.c3.delete_many({"_id": {"$lt": 100}})
    with mmm.Replicator(servers_of(a, b), [link]):
        def same():
            return all(by_id(ca[db][c]) == by_id(cb[db][c])
                       for db, c in (("app", "c1"), ("app", "c2"), ("app", "c3"), ("other", "z")))

        wait_for(same, timeout=60)


def bson_oid():
    from bson import ObjectId

    return ObjectId()


def test_sigkill_of_mmm_run_mid_copy_resumes_and_converges(mongo_server_factory, tmp_path):
    import signal
    import subprocess
    import sys

    a, b = mongo_server_factory(), mongo_server_factory()
    ca, cb = pymongo.MongoClient(a.uri), pymongo.MongoClient(b.uri)
    # The killed process leaves its open transaction behind until the server reaps it.
    cb.admin.command("setParameter", 1, transactionLifetimeLimitSeconds=2)
    ca.app.big.insert_many([{"_id": i, "pad": "x" * 200} for i in range(N)])
    cfg = tmp_path / "mmm.yml"
    cfg.write_text(
        f"a:\n  id: A\n  uri: '{a.uri}'\nb:\n  id: B\n  uri: '{b.uri}'\n"
        "links:\n  - {src: a/app.*, dst: b/app.*, initial_sync: true}\n"
    )
    cli = [sys.executable, "-m", "mmm", "-c", str(cfg)]
    proc = subprocess.Popen(cli + ["run"], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: cb.app.big.count_documents({}) > 0, timeout=60, interval=0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    copied = cb.app.big.count_documents({})
    assert copied < N, "the copy was not interrupted midway"
    # `mmm status` shows the interrupted copy, from the checkpoint on the destination.
    out = subprocess.run(cli + ["status"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"initial-sync {copied}/" in out.stdout
    ca.app.big.delete_many({"_id": {"$lt": copied}})
    ca.app.big.insert_one({"_id": -5})
    proc = subprocess.Popen(cli + ["run"], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: by_id(ca.app.big) == by_id(cb.app.big), timeout=90)
        wait_for(lambda: "initial_sync" not in cb["__mmm"].checkpoints.find_one({"_id": "a/app.*->b/app.*"}), timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert cb.app.big.count_documents({}) == N - copied + 1


def test_documents_refused_during_the_copy_are_journaled_and_counted_as_rejected(pair):
    a, b, ca, cb = pair
    cb.app.users.create_index("email", unique=True)
    cb.app.users.insert_one({"_id": "b0", "email": "taken@example.com"})
    ca.app.users.insert_many([{"_id": f"a{i:02d}", "email": "taken@example.com" if i == 7 else f"{i}@example.com"}
                              for i in range(20)])
    link = mmm.Link("a/app.users", "b/app.users", initial_sync=True, on_reject="journal")
    with mmm.Replicator(servers_of(a, b), [link]) as r:
        wait_for(lambda: r.status()[0]["state"] == "running", timeout=30)
        ca.app.users.insert_one({"_id": "later", "email": "later@example.com"})
        wait_for(lambda: cb.app.users.find_one({"_id": "later"}) is not None)
        status = r.status()[0]
    assert cb.app.users.count_documents({}) == 1 + 19 + 1
    assert status["rejected"] == 1 and status["ops_applied"] == 1
    (entry,) = cb["__mmm"]["rejected"].find()
    assert (entry["ns"], entry["doc_id"], entry["code"]) == ("app.users", "a07", 11000)
    checkpoint = cb["__mmm"].checkpoints.find_one({"_id": "a/app.users->b/app.users"})
    assert (checkpoint["rejected"], checkpoint["ops_applied"]) == (1, 1)
