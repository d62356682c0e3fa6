"""Starting one link over (`Replicator.resync`, `mmm resync`) after its source's oplog rolled
over past its checkpoint: that link copies again and follows on, every other link keeps its
checkpoint, including links into the same server."""

from __future__ import annotations

import subprocess
import sys

import pymongo
import pytest
from bson import Timestamp

import mmm
from conftest import wait_for

ROLLED = "a/app.*->b/app.*"
OTHER = "c/other.*->b/other.*"


def by_id(coll):
    return sorted(coll.find(), key=lambda d: repr(d["_id"]))


@pytest.fixture
def three(mongo_server_factory):
    """a (a 1 MB oplog that wraps quickly), b and c; links a -> b and c -> b, both run once,
    stopping (rather than catching up) when their position leaves the oplog."""
    a = mongo_server_factory(oplog_size_mb=1)
    b, c = mongo_server_factory(), mongo_server_factory()
    ca, cb, cc = (pymongo.MongoClient(s.uri) for s in (a, b, c))
    servers = {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}, "c": {"id": "C", "uri": c.uri}}
    links = [mmm.Link("a/app.*", "b/app.*", on_rollover="stop"), mmm.Link("c/other.*", "b/other.*", on_rollover="stop")]
    with mmm.Replicator(servers, links):
        ca.app.x.insert_one({"_id": 0})
        cc.other.y.insert_one({"_id": 0})
        wait_for(lambda: cb.app.x.count_documents({}) == 1 and cb.other.y.count_documents({}) == 1)
    yield servers, links, ca, cb, cc
    for client in (ca, cb, cc):
        client.close()


def roll_over(ca):
    ca.app.x.insert_many([{"_id": i, "blob": "z" * 10_000} for i in range(1, 301)])


def test_a_rolled_over_link_is_resynced_and_others_are_untouched(three):
    servers, links, ca, cb, cc = three
    roll_over(ca)
    r = mmm.Replicator(servers, links)
    with pytest.raises(mmm.ReplicationError, match=r"mmm resync 'a/app\.\*->b/app\.\*'"):
        r.run()
    other_before = cb["__mmm"].checkpoints.find_one({"_id": OTHER})
    assert other_before is not None
    start = r.resync("a/app.* -> b/app.*")
    assert isinstance(start, Timestamp) and start.time > 0
    assert cb["__mmm"].checkpoints.find_one({"_id": OTHER}) == other_before
    state = cb["__mmm"].checkpoints.find_one({"_id": ROLLED})
    assert state["initial_sync"]["copied"] == 0 and state["ts"] == start
    ca.app.x.delete_one({"_id": 1})  # after the resync: replayed over the copy
    with mmm.Replicator(servers, links) as r2:
        wait_for(lambda: by_id(ca.app.x) == by_id(cb.app.x), timeout=60)
        ca.app.x.insert_one({"_id": "after"})
        cc.other.y.insert_one({"_id": "after"})
        wait_for(lambda: cb.app.x.find_one({"_id": "after"}) and cb.other.y.find_one({"_id": "after"}))
        assert {s["id"]: s["state"] for s in r2.status()} == {ROLLED: "running", OTHER: "running"}
    assert "initial_sync" not in cb["__mmm"].checkpoints.find_one({"_id": ROLLED})


def test_resync_takes_a_link_object_and_refuses_unknown_links(three):
    servers, links, ca, cb, cc = three
    r = mmm.Replicator(servers, links)
    for bad in ("a/app.*->c/app.*", "", "->", "a/app.*", "x" * 100_000, "a/app.*->b/app.*\x00", "☃->☃"):
        with pytest.raises(ValueError, match=r"unknown link .*known: a/app\.\*->b/app\.\*, c/other\.\*->b/other\.\*"):
            r.resync(bad)
    with pytest.raises(ValueError, match="unknown link"):
        r.resync(mmm.Link("b/app.*", "a/app.*"))
    with pytest.raises(TypeError):
        r.resync(42)
    assert cb["__mmm"].checkpoints.count_documents({"initial_sync": {"$exists": True}}) == 0
    r.resync(mmm.Link("c/other.*", "b/other.*"))
    assert cb["__mmm"].checkpoints.find_one({"_id": OTHER})["initial_sync"]["copied"] == 0
    assert "initial_sync" not in cb["__mmm"].checkpoints.find_one({"_id": ROLLED})


def test_resync_is_refused_while_the_replicator_runs(three):
    servers, links, ca, cb, cc = three
    with mmm.Replicator(servers, links) as r:
        with pytest.raises(RuntimeError, match="stop the replicator"):
            r.resync(ROLLED)


def test_mmm_resync_command(three, tmp_path):
    servers, links, ca, cb, cc = three
    cfg = tmp_path / "mmm.yml"
    cfg.write_text(
        "".join(f"{name}:\n  id: {s['id']}\n  uri: '{s['uri']}'\n" for name, s in servers.items())
        + "links:\n  - {src: a/app.*, dst: b/app.*, on_rollover: stop}\n  - {src: c/other.*, dst: b/other.*, on_rollover: stop}\n"
    )
    cli = [sys.executable, "-m", "mmm", "-c", str(cfg)]
    bad = subprocess.run(cli + ["resync", "a/app.*->z/app.*"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "known: a/app.*->b/app.*, c/other.*->b/other.*" in bad.stderr
    roll_over(ca)
    other_before = cb["__mmm"].checkpoints.find_one({"_id": OTHER})
    ok = subprocess.run(cli + ["resync", "--mirror", ROLLED], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ROLLED in ok.stdout and "initial sync" in ok.stdout
    assert cb["__mmm"].checkpoints.find_one({"_id": ROLLED})["initial_sync"]["mirror"] is True
    status = subprocess.run(cli + ["status"], capture_output=True, text=True, timeout=60)
    assert "initial-sync 0/0" in status.stdout
    assert cb["__mmm"].checkpoints.find_one({"_id": OTHER}) == other_before
    proc = subprocess.Popen(cli + ["run"], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: by_id(ca.app.x) == by_id(cb.app.x), timeout=60)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


def test_mirror_resync_also_removes_what_the_source_deleted_while_the_position_was_lost(three):
    servers, links, ca, cb, cc = three
    cb.app.x.insert_many([{"_id": i} for i in range(1000, 1010)] + [{"_id": "z"}])
    roll_over(ca)
    ca.app.x.delete_many({"_id": {"$in": [0, 5, 300]}})  # lost with the rolled-over window
    other_before = cb["__mmm"].checkpoints.find_one({"_id": OTHER})
    plain = mmm.Replicator(servers, links)
    plain.resync(ROLLED)
    with mmm.Replicator(servers, links) as r:
        wait_for(lambda: r.status()[0]["state"] == "running", timeout=60)
    # A plain resync only adds: what the source lost stays.
    assert cb.app.x.find_one({"_id": 0}) is not None and cb.app.x.find_one({"_id": "z"}) is not None
    plain.resync(ROLLED, mirror=True)
    assert cb["__mmm"].checkpoints.find_one({"_id": ROLLED})["initial_sync"]["mirror"] is True
    with mmm.Replicator(servers, links) as r:
        wait_for(lambda: by_id(ca.app.x) == by_id(cb.app.x), timeout=60)
        ca.app.x.delete_one({"_id": 7})
        wait_for(lambda: by_id(ca.app.x) == by_id(cb.app.x), timeout=60)
    assert cb["__mmm"].checkpoints.find_one({"_id": OTHER})["ts"] >= other_before["ts"]
    assert cb.other.y.count_documents({}) == 1


def test_a_resync_that_cannot_reach_a_server_says_so_without_its_password(mongo_server_factory):
    a = mongo_server_factory()
    down = "mongodb://mmm:s3cr%40t-pw@127.0.0.1:1/?replicaSet=rs0&serverSelectionTimeoutMS=300"
    servers = {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": down}}
    r = mmm.Replicator(servers, [("a/app.*", "b/app.*")], preflight=False)
    with pytest.raises(mmm.ReplicationError) as err:
        r.resync("a/app.*->b/app.*")
    message = str(err.value)
    assert "resync of link a/app.*->b/app.*" in message
    assert "s3cr" not in message and "t-pw" not in message
