"""Repair: documents that differ between the servers of a link (a divergence made behind mmm's
back) are found by ``verify`` and brought into agreement by ``repair``, moving only those
documents, each decision journaled on both servers."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pymongo
import pytest

import mmm
from conftest import wait_for


@pytest.fixture
def one_way(mongo_server_factory, tmp_path):
    """a -> b only: what is written on b directly never reaches a (a divergence)."""
    a, b = mongo_server_factory(), mongo_server_factory()
    ca, cb = pymongo.MongoClient(a.uri), pymongo.MongoClient(b.uri)
    servers = {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}}
    links = [("a/app.c", "b/app.c")]
    cfg = tmp_path / "mmm.yml"
    cfg.write_text(f"a:\n  id: A\n  uri: '{a.uri}'\nb:\n  id: B\n  uri: '{b.uri}'\nlinks:\n  - {{src: a/app.c, dst: b/app.c}}\n")
    with mmm.Replicator(servers, links) as r:
        wait_for(lambda: r.status()[0]["state"] == "running", timeout=30)
        ca.app.c.insert_many([{"_id": i, "v": 0} for i in range(200)])
        wait_for(lambda: cb.app.c.count_documents({}) == 200, timeout=30)
        # Behind mmm's back: on b only, while replication runs.
        cb.app.c.update_one({"_id": 5}, {"$set": {"v": "b only"}})
        cb.app.c.delete_one({"_id": 6})
        cb.app.c.insert_one({"_id": "extra", "v": "b only"})
        time.sleep(1.5)  # observed on b
    yield servers, links, ca, cb, cfg
    ca.close()
    cb.close()


def docs(client):
    return sorted(client.app.c.find(), key=lambda d: repr(d["_id"]))


def test_verify_finds_the_divergence_and_repair_moves_only_it(one_way):
    servers, links, ca, cb, _ = one_way
    r = mmm.Replicator(servers, links)
    found = r.verify(wait=5)
    assert not found.consistent
    assert sorted(repr(d.id) for d in found.differences) == sorted(["5", "6", "'extra'"])
    out = r.repair(wait=5)
    assert out["repaired"] == 3
    assert out["verify"].consistent
    assert docs(ca) == docs(cb)
    # The later versions (b's writes, stamped when b's writes were observed) won.
    assert ca.app.c.find_one({"_id": 5})["v"] == "b only"
    assert ca.app.c.find_one({"_id": 6}) is None
    assert ca.app.c.find_one({"_id": "extra"})["v"] == "b only"
    journal = r.conflicts("app.c")
    assert {(e["server"], e["winner"]) for e in journal} == {("A", "repair:B"), ("B", "repair:B")}
    assert len(journal) == 6
    # Repairing again finds nothing to do; and the pair keeps replicating afterwards.
    assert r.repair(wait=5)["repaired"] == 0
    with r:
        wait_for(lambda: r.status()[0]["state"] == "running", timeout=30)
        ca.app.c.update_one({"_id": 5}, {"$set": {"v": "a, after the repair"}})
        wait_for(lambda: cb.app.c.find_one({"_id": 5})["v"] == "a, after the repair", timeout=30)


def test_a_delete_rule_decides_present_against_absent(one_way):
    servers, links, ca, cb, _ = one_way
    r = mmm.Replicator(servers, links, resolve=mmm.LWW(deletes="update_wins"))
    r.repair(wait=5)
    # b deleted _id 6 later than a wrote it, but updates win: it is back on b.
    assert cb.app.c.find_one({"_id": 6}) == {"_id": 6, "v": 0}
    assert docs(ca) == docs(cb)


def test_mmm_repair_exit_codes_and_json(one_way):
    servers, links, ca, cb, cfg = one_way
    cli = [sys.executable, "-m", "mmm", "-c", str(cfg)]
    before = subprocess.run(cli + ["verify", "--wait", "5"], capture_output=True, text=True, timeout=120)
    assert before.returncode == 1
    out = subprocess.run(cli + ["repair", "--json", "--wait", "5"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["repaired"] == 3 and report["consistent"] is True
    after = subprocess.run(cli + ["verify", "--wait", "5"], capture_output=True, text=True, timeout=120)
    assert after.returncode == 0
    bad = subprocess.run(cli + ["repair", "--ns", "nope.nothing"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_a_change_made_while_the_oplog_was_lost_unobserved_wins(mongo_server_factory):
    """Nothing observed the factory while it changed a document, deleted another and its oplog
    rolled over: both servers' rows still name the versions they shared. Each row holds the
    hash of its version's content, so repair sees which side changed (the factory, whose
    content no longer matches its rows) and keeps that change, whatever the server ids."""
    a, b = mongo_server_factory(oplog_size_mb=1), mongo_server_factory()
    ca, cb = pymongo.MongoClient(a.uri), pymongo.MongoClient(b.uri)
    servers = {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}}
    links = [("a/app.c", "b/app.c")]
    r = mmm.Replicator(servers, links)
    with r:
        wait_for(lambda: r.status()[0]["state"] == "running", timeout=30)
        ca.app.c.insert_many([{"_id": i, "v": 0} for i in range(50)])
        ca.app.c.update_one({"_id": 3}, {"$set": {"v": 1}})
        wait_for(lambda: cb.app.c.count_documents({}) == 50 and cb.app.c.find_one({"_id": 3})["v"] == 1, timeout=30)
        time.sleep(1.5)  # observed on both
    ca.app.c.update_one({"_id": 3}, {"$inc": {"v": 10}})
    ca.app.c.delete_one({"_id": 4})
    for _ in range(60):
        ca.filler.x.insert_many([{"blob": "z" * 10_000} for _ in range(5)])
    out = r.repair(wait=5)
    assert out["repaired"] == 2
    assert out["verify"].consistent
    assert cb.app.c.find_one({"_id": 3})["v"] == 11
    assert cb.app.c.find_one({"_id": 4}) is None
    assert {e["winner"] for e in r.conflicts("app.c")} == {"repair:A"}
    ca.close()
    cb.close()
