"""Writes a destination refuses (a unique index, a validator, a document too large): the link
stops as ``failed`` with one readable line, or, with ``on_reject="journal"``, journals the op in
``__mmm.rejected`` and goes on. Transient trouble (dropped connections) is retried."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pymongo
import pytest

import mmm
from mmm.config import load_config
from conftest import wait_for

SERVERS = lambda a, b: {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}}  # noqa: E731


def one_way(a, b, **link):
    return mmm.Replicator(SERVERS(a, b), [mmm.Link("a/app.*", "b/app.*", **link)])


def readable(line: str) -> None:
    """One line a person can read: no driver debug dump, no bytes."""
    assert "\n" not in line and "Kind:" not in line and "\\x" not in line and "RawDocument" not in line, line


def unique_email(client):
    client.app.users.create_index("email", unique=True)
    client.app.users.insert_one({"_id": "b1", "email": "taken@example.com"})


def test_an_insert_meeting_an_existing_document_is_applied_as_an_upsert(pair):
    a, b, ca, cb = pair
    cb.app.items.insert_one({"_id": 1, "v": "written on b"})
    with one_way(a, b) as r:
        wait_for(lambda: r.status()[0]["state"] == "running")
        ca.app.items.insert_many([{"_id": 0, "v": "a"}, {"_id": 1, "v": "written on a"}, {"_id": 2, "v": "a"}])
        wait_for(lambda: cb.app.items.count_documents({}) == 3 and cb.app.items.find_one({"_id": 1})["v"] == "written on a")
        status = r.status()[0]
    assert status["state"] == "running" and status["last_error"] is None


def test_a_unique_index_violation_fails_the_link_with_one_readable_line(pair):
    a, b, ca, cb = pair
    unique_email(cb)
    ca.app.users.create_index("email", unique=True)
    r = one_way(a, b)
    r.start()
    wait_for(lambda: r.status()[0]["state"] == "running")
    ca.app.users.insert_many([{"_id": "a1", "email": "one@example.com"}, {"_id": "a2", "email": "taken@example.com"},
                              {"_id": "a3", "email": "three@example.com"}])
    wait_for(lambda: r.status()[0]["state"] == "failed")
    with pytest.raises(mmm.ReplicationError) as err:
        r.join(10)
    error = r.status()[0]["last_error"]
    readable(error)
    for part in ("app.users", "a2", "DuplicateKey, code 11000", "duplicate key"):
        assert part in error, error
    assert str(err.value).endswith(error)
    # Nothing of the refused batch is applied, and the checkpoint did not move past it.
    assert cb.app.users.count_documents({}) == 1


def test_journal_mode_records_the_refused_op_and_goes_on(pair):
    a, b, ca, cb = pair
    unique_email(cb)
    with one_way(a, b, on_reject="journal") as r:
        wait_for(lambda: r.status()[0]["state"] == "running")
        ca.app.users.insert_many([{"_id": f"a{i}", "email": "taken@example.com" if i == 5 else f"{i}@example.com"}
                                  for i in range(10)])
        ca.app.users.insert_one({"_id": "later", "email": "later@example.com"})
        wait_for(lambda: cb.app.users.count_documents({}) == 11)
        status = r.status()[0]
    assert status["state"] == "running" and status["rejected"] == 1 and status["ops_applied"] == 10
    rejected = list(cb["__mmm"]["rejected"].find())
    assert len(rejected) == 1
    (entry,) = rejected
    assert (entry["ns"], entry["doc_id"], entry["code"]) == ("app.users", "a5", 11000)
    assert entry["link"] == "a/app.*->b/app.*" and "duplicate key" in entry["errmsg"]
    assert entry["codeName"] == "DuplicateKey"
    assert entry["statement"]["email"] == "taken@example.com"
    assert cb.app.users.find_one({"_id": "a5"}) is None
    # Restarted, the link neither journals it again nor applies anything twice.
    with one_way(a, b, on_reject="journal") as r:
        wait_for(lambda: r.status()[0]["state"] == "running")
        ca.app.users.insert_one({"_id": "last", "email": "last@example.com"})
        wait_for(lambda: cb.app.users.count_documents({}) == 12)
        assert r.status()[0]["rejected"] == 1
    assert cb["__mmm"]["rejected"].count_documents({}) == 1


def test_a_validator_refusal_fails_the_link(pair):
    a, b, ca, cb = pair
    cb.app.create_collection("stock", validator={"qty": {"$gte": 0}})
    try:
        cb.app.stock.insert_one({"_id": "probe", "qty": -1})
    except pymongo.errors.WriteError:
        pass
    else:
        pytest.skip("this server does not enforce document validators")
    r = one_way(a, b)
    r.start()
    wait_for(lambda: r.status()[0]["state"] == "running")
    ca.app.stock.insert_one({"_id": "neg", "qty": -5})
    wait_for(lambda: r.status()[0]["state"] == "failed")
    with pytest.raises(mmm.ReplicationError):
        r.join(10)
    error = r.status()[0]["last_error"]
    readable(error)
    assert "app.stock" in error and "neg" in error and "DocumentValidationFailure, code 121" in error, error


def test_a_document_made_too_large_by_field_mode_is_refused(pair):
    a, b, ca, cb = pair
    limit = ca.admin.command("hello")["maxBsonObjectSize"]
    try:
        cb.app.probe.insert_one({"_id": "probe", "blob": "x" * limit})
    except (pymongo.errors.DocumentTooLarge, pymongo.errors.WriteError, pymongo.errors.OperationFailure):
        pass
    if cb.app.probe.count_documents({}):
        pytest.skip("this server stores documents over the BSON size limit")
    r = one_way(a, b, marker="field", on_reject="journal")
    r.start()
    wait_for(lambda: r.status()[0]["state"] == "running")
    ca.app.big.insert_one({"_id": "big", "blob": "x" * (limit - 40)})  # fits; its tag does not
    ca.app.big.insert_one({"_id": "small"})
    wait_for(lambda: cb.app.big.count_documents({}) == 1, timeout=30)
    r.stop()
    r.join(10)
    assert cb.app.big.find_one({"_id": "small"}) is not None
    (entry,) = cb["__mmm"]["rejected"].find()
    assert entry["doc_id"] == "big"


def test_dropped_connections_while_applying_are_retried_and_reported_as_such(pair):
    a, b, ca, cb = pair
    seen_errors = set()
    with one_way(a, b) as r:
        wait_for(lambda: r.status()[0]["state"] == "running")
        for i in range(40):
            ca.app.stream.insert_many([{"_id": i * 100 + j, "pad": "p" * 200} for j in range(100)])
            b.drop_connections()
            error = r.status()[0]["last_error"]
            if error:
                seen_errors.add(error)
            time.sleep(0.01)
        wait_for(lambda: cb.app.stream.count_documents({}) == 4000, timeout=60)
        wait_for(lambda: r.status()[0]["state"] == "running", timeout=30)
        seen_errors.add(r.status()[0]["last_error"] or "")
    for error in seen_errors:
        assert "already in progress" not in error, seen_errors
        readable(error)


def test_a_destination_that_goes_away_shows_the_network_error_while_retrying(pair):
    a, b, ca, cb = pair
    quick = b.uri + ("&" if "?" in b.uri else "?") + "serverSelectionTimeoutMS=500"
    r = mmm.Replicator({"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": quick}},
                       [mmm.Link("a/app.*", "b/app.*")])
    # Its own client for b: closing a client whose server is gone waits its selection timeout.
    with r, pymongo.MongoClient(quick) as to_b:
        wait_for(lambda: r.status()[0]["state"] == "running")
        ca.app.items.insert_one({"_id": 0})
        wait_for(lambda: to_b.app.items.count_documents({}) == 1)
        b.stop()
        ca.app.items.insert_one({"_id": 1})
        wait_for(lambda: r.status()[0]["state"] == "retrying" and r.status()[0]["last_error"], timeout=15)
        error = r.status()[0]["last_error"]
    readable(error)
    assert "already in progress" not in error and ("network" in error or "no server" in error), error


def test_on_reject_in_yaml_and_cli(tmp_path, pair):
    a, b, ca, cb = pair
    cfg = tmp_path / "mmm.yml"
    base = f"a:\n  id: A\n  uri: '{a.uri}'\nb:\n  id: B\n  uri: '{b.uri}'\n"
    cfg.write_text(base + "links:\n  - {src: a/app.*, dst: b/app.*, on_reject: journal}\n")
    assert load_config(str(cfg)).links[0].on_reject == "journal"
    cfg.write_text(base + "links:\n  - {src: a/app.*, dst: b/app.*, on_reject: skip}\n")
    with pytest.raises(mmm.ConfigError, match="line 8.*on_reject"):
        load_config(str(cfg))
    with pytest.raises(ValueError, match="on_reject"):
        mmm.Link("a/app.*", "b/app.*", on_reject="ignore")
    cfg.write_text(base)
    run = lambda *args: subprocess.run([sys.executable, "-m", "mmm", "-c", str(cfg), *args],  # noqa: E731
                                       capture_output=True, text=True, timeout=60)
    out = run("replicate", "--src", "a/app.*", "--dst", "b/app.*", "--on-reject", "journal")
    assert out.returncode == 0, out.stderr
    assert cb["__mmm"]["links"].find_one()["on_reject"] == "journal"


def test_mmm_run_exits_non_zero_on_a_refused_write_and_status_counts_journaled_ops(tmp_path, pair):
    a, b, ca, cb = pair
    unique_email(cb)
    cfg = tmp_path / "mmm.yml"
    base = f"a:\n  id: A\n  uri: '{a.uri}'\nb:\n  id: B\n  uri: '{b.uri}'\n"
    mmm_cmd = [sys.executable, "-m", "mmm", "-c", str(cfg)]
    started = lambda: cb["__mmm"]["checkpoints"].count_documents({}) == 1  # noqa: E731
    cfg.write_text(base + "links:\n  - {src: a/app.*, dst: b/app.*}\n")
    proc = subprocess.Popen(mmm_cmd + ["run"], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(started, timeout=30)
        ca.app.users.insert_one({"_id": "a2", "email": "taken@example.com"})
        assert proc.wait(30) == 1
    finally:
        proc.kill()
    last = proc.stderr.read().strip().splitlines()[-1]
    readable(last)
    assert "app.users" in last and "a2" in last, last
    # The same link journaling: it runs on, and `mmm status` counts the journaled op.
    cfg.write_text(base + "links:\n  - {src: a/app.*, dst: b/app.*, on_reject: journal}\n")
    proc = subprocess.Popen(mmm_cmd + ["run"], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: cb["__mmm"]["rejected"].count_documents({}) == 1, timeout=30)
        ca.app.users.insert_one({"_id": "a3", "email": "free@example.com"})
        wait_for(lambda: cb.app.users.find_one({"_id": "a3"}) is not None, timeout=30)
        status = subprocess.run(mmm_cmd + ["status", "--json"], capture_output=True, text=True, timeout=60)
        assert json.loads(status.stdout)[0]["rejected"] == 1, status.stdout
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_refused_copy_during_initial_sync_fails_the_link(pair):
    a, b, ca, cb = pair
    unique_email(cb)
    ca.app.users.insert_one({"_id": "a2", "email": "taken@example.com"})
    r = one_way(a, b, initial_sync=True)
    with pytest.raises(mmm.ReplicationError, match="app.users refused a write"):
        r.run()
    error = r.status()[0]["last_error"]
    readable(error)
    assert r.status()[0]["state"] == "failed" and "a2" in error, error


def test_journal_mode_covers_the_initial_sync(pair):
    a, b, ca, cb = pair
    unique_email(cb)
    ca.app.users.insert_many([{"_id": f"a{i}", "email": "taken@example.com" if i == 2 else f"{i}@example.com"}
                              for i in range(5)])
    with one_way(a, b, initial_sync=True, on_reject="journal") as r:
        wait_for(lambda: r.status()[0]["state"] == "running")
        ca.app.users.insert_one({"_id": "later", "email": "later@example.com"})
        wait_for(lambda: cb.app.users.count_documents({}) == 6)
        status = r.status()[0]
    assert status["rejected"] == 1 and status["last_error"] is None
    (entry,) = cb["__mmm"]["rejected"].find()
    assert (entry["ns"], entry["doc_id"], entry["code"]) == ("app.users", "a2", 11000)
