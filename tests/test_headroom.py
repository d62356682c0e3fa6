"""Oplog headroom: how much history each source's oplog holds at the current write rate, and
how close each link's position is to falling off it (status(), mmm status, mmm validate, log)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import pymongo
import pytest

import mmm
from conftest import wait_for

MMM = [sys.executable, "-m", "mmm"]


def run_cli(*args):
    return subprocess.run(MMM + list(args), capture_output=True, text=True, timeout=120)


def oplog_stats(client):
    (stats,) = client.local["oplog.rs"].aggregate([{"$collStats": {"storageStats": {}}}])
    return stats


def test_the_oplog_reports_its_size_and_cap_as_mongod_does(mongo_server_factory):
    server = mongo_server_factory(oplog_size_mb=2)
    client = pymongo.MongoClient(server.uri)
    client.app.c.insert_many([{"_id": i, "pad": "x" * 200} for i in range(1000)])
    stats = oplog_stats(client)
    storage = stats["storageStats"]
    assert stats["ns"] == "local.oplog.rs" and "localTime" in stats and "host" in stats
    assert storage["capped"] is True
    assert storage["maxSize"] == 2 * 1024 * 1024
    assert storage["count"] >= 1000 and 200 * 1000 < storage["size"] <= storage["maxSize"]
    assert storage["avgObjSize"] == storage["size"] // storage["count"]
    scaled = client.local["oplog.rs"].aggregate([{"$collStats": {"storageStats": {"scale": 1024}}}]).next()
    assert scaled["storageStats"]["maxSize"] == 2048 and scaled["storageStats"]["scaleFactor"] == 1024
    # An ordinary collection: not capped, no cap reported; count only when asked.
    plain = client.app.c.aggregate([{"$collStats": {"storageStats": {}, "count": {}}}]).next()
    assert plain["storageStats"]["capped"] is False and "maxSize" not in plain["storageStats"]
    assert plain["count"] == 1000
    assert "count" not in client.app.c.aggregate([{"$collStats": {}}]).next()
    for bad in ({"storageStats": {"scale": 0}}, {"storageStats": 1}, {"nonsense": {}}, 5):
        with pytest.raises(pymongo.errors.OperationFailure):
            list(client.app.c.aggregate([{"$collStats": bad}]))
    with pytest.raises(pymongo.errors.OperationFailure):
        list(client.app.missing.aggregate([{"$collStats": {"storageStats": {}}}]))


def _fill(client, seconds, bytes_per_second):
    """Writes for `seconds` at about `bytes_per_second`, in bursts, so the oplog spans time."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        client.app.load.insert_many([{"pad": "x" * 1000} for _ in range(max(1, bytes_per_second // 10_000))])
        n += 1
        time.sleep(0.1)


def test_status_shows_headroom_and_the_link_margin(mongo_server_factory):
    a, b = mongo_server_factory(oplog_size_mb=4), mongo_server_factory()
    ca = pymongo.MongoClient(a.uri)
    r = mmm.Replicator(servers={"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}},
                       links=[("a/app.*", "b/app.*")])
    with r:
        _fill(ca, 2.5, 200_000)

        def headroom():
            oplog = r.status()[0].get("oplog")
            return oplog if oplog and oplog["capacity_seconds"] else None

        wait_for(headroom, timeout=20)
        h = headroom()
    stats = oplog_stats(ca)["storageStats"]
    assert h["max_size_bytes"] == stats["maxSize"] == 4 * 1024 * 1024
    assert h["window_seconds"] >= 1
    # capacity = window x maxSize / size; the link keeps up, so its margin is about all of it.
    assert h["capacity_seconds"] == pytest.approx(h["window_seconds"] * h["max_size_bytes"] / h["size_bytes"])
    assert h["capacity_seconds"] > h["window_seconds"]
    assert 0 < h["margin_seconds"] <= h["capacity_seconds"] and h["near_rollover"] is False


def test_a_link_about_to_fall_off_is_warned_about(mongo_server_factory, tmp_path, caplog):
    a, b = mongo_server_factory(oplog_size_mb=1), mongo_server_factory()
    ca = pymongo.MongoClient(a.uri)
    links = [("a/app.c", "b/app.c")]
    r = mmm.Replicator(servers={"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}}, links=links)
    r.start()
    ca.app.c.insert_one({"_id": 1})
    wait_for(lambda: pymongo.MongoClient(b.uri).app.c.count_documents({}) == 1)
    r.stop()
    r.join()
    cfg = tmp_path / "mmm.yml"
    cfg.write_text(f"a:\n  id: A\n  uri: '{a.uri}'\nb:\n  id: B\n  uri: '{b.uri}'\nlinks:\n  - {{src: a/app.c, dst: b/app.c}}\n")
    fresh = run_cli("-c", str(cfg), "validate")
    assert fresh.returncode == 0, fresh.stderr
    assert "oplog of a: holds" in fresh.stdout and "from falling off" in fresh.stdout
    assert "within 20%" not in fresh.stdout
    # The link is stopped while writes on other collections fill the oplog past its position.
    time.sleep(1.1)
    _fill(ca, 2, 700_000)
    status = run_cli("-c", str(cfg), "status", "--json")
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)
    oplog = row["oplog"]
    assert oplog["near_rollover"] is True
    assert oplog["margin_seconds"] < 0.2 * oplog["capacity_seconds"]
    table = run_cli("-c", str(cfg), "status")
    assert "oplog margin" in table.stdout and " !" in table.stdout
    validate = run_cli("-c", str(cfg), "validate")
    assert "warning: link a/app.c->b/app.c is within 20% of falling off the oplog of a" in validate.stdout
    # A running replicator whose destination is cut off while the oplog fills warns in the log.
    caplog.set_level(logging.WARNING, logger="mmm")
    r = mmm.Replicator(servers={"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}},
                       links=[("a/app.d", "b/app.d")])
    r.start()
    try:
        ca.app.d.insert_one({"_id": 2})
        wait_for(lambda: pymongo.MongoClient(b.uri).app.d.count_documents({}) == 1)
        b.pause(30)
        time.sleep(1.1)
        _fill(ca, 2, 700_000)
        wait_for(lambda: any("falling off the oplog of a" in rec.getMessage() for rec in caplog.records), timeout=20)
    finally:
        b.pause(0)
        r.stop()
        try:
            r.join()
        except mmm.ReplicationError:
            pass  # the link may have fallen off meanwhile: that is what was warned about
