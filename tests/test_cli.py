"""The ``mmm`` command, run as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pymongo
import pytest

from conftest import wait_for

MMM = [sys.executable, "-m", "mmm"]


def mmm(*args, input=None, timeout=60, env=None):
    return subprocess.run(MMM + list(args), capture_output=True, text=True, input=input, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def two(mongo_server_factory, tmp_path):
    a, b = mongo_server_factory(), mongo_server_factory()
    cfg = tmp_path / "mmm.yml"
    cfg.write_text(f"server_a:\n  id: A\n  uri: '{a.uri}'\nserver_b:\n  id: B\n  uri: '{b.uri}'\n")
    ca, cb = pymongo.MongoClient(a.uri), pymongo.MongoClient(b.uri)
    yield cfg, a, b, ca, cb
    ca.close()
    cb.close()


def test_version_and_help():
    out = mmm("--version")
    assert out.returncode == 0 and out.stdout.startswith("mmm ")
    assert mmm().returncode == 2


def test_replicate_dump_status_and_clear_config(two):
    cfg, a, b, ca, cb = two
    out = mmm("-c", str(cfg), "replicate", "--src", "server_a/app.items", "--dst", "server_b/app.items")
    assert out.returncode == 0, out.stderr
    assert cb["__mmm"].links.count_documents({}) == 1  # kept in the destination's __mmm config
    dump = mmm("-c", str(cfg), "dump-config")
    assert dump.returncode == 0
    assert "server_a/app.items" in dump.stdout and "uri:" in dump.stdout
    status = mmm("-c", str(cfg), "status", "--json")
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    assert [r["state"] for r in rows] == ["never run"]
    no = mmm("-c", str(cfg), "clear-config", "-s", "server_b", input="n\n")
    assert "__mmm" in cb.list_database_names()
    assert no.returncode != 0 or "nothing deleted" in no.stdout
    yes = mmm("-c", str(cfg), "clear-config", "-s", "server_b", "--yes")
    assert yes.returncode == 0, yes.stderr
    assert "__mmm" not in cb.list_database_names()


def test_run_replicates_and_sigterm_stops_cleanly_then_resumes(two):
    cfg, a, b, ca, cb = two
    cfg.write_text(cfg.read_text() + "links:\n  - {src: server_a/app.*, dst: server_b/app.*}\n")
    proc = subprocess.Popen(MMM + ["-c", str(cfg), "run"], stderr=subprocess.PIPE, text=True)
    assert "replicating 1 link" in proc.stderr.readline()
    wait_for(lambda: cb["__mmm"].checkpoints.count_documents({}) == 1)
    for i in range(200):
        ca.app.t.insert_one({"_id": i})
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    ca.app.t.insert_many([{"_id": i} for i in range(200, 300)])
    ca.app.t.update_one({"_id": 5}, {"$inc": {"n": 1}})
    proc = subprocess.Popen(MMM + ["-c", str(cfg), "run"], stderr=subprocess.PIPE, text=True)
    wait_for(lambda: cb.app.t.count_documents({}) == 300 and cb.app.t.find_one({"_id": 5}).get("n") == 1, timeout=30)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    assert sorted(d["_id"] for d in cb.app.t.find()) == list(range(300))
    assert cb.app.t.find_one({"_id": 5}) == {"_id": 5, "n": 1}
    status = json.loads(mmm("-c", str(cfg), "status", "--json").stdout)
    assert status[0]["state"] == "caught up" and status[0]["ops_applied"] == 301


def test_validate_checks_every_server(two, tmp_path):
    cfg, a, b, ca, cb = two
    out = mmm("-c", str(cfg), "validate")
    assert out.returncode == 0, out.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text(cfg.read_text() + "server_c:\n  id: C\n  uri: 'mongodb://127.0.0.1:1/?replicaSet=rs0'\n")
    out = mmm("-c", str(bad), "validate")
    assert out.returncode == 1
    assert "server_c" in out.stderr and "unreachable" in out.stderr


@pytest.mark.parametrize(
    "args, config, message",
    [
        (["bogus"], None, "invalid choice"),
        (["dump-config"], "missing", "no such configuration file"),
        (["dump-config"], "a: [1, 2\n", "not valid YAML"),
        (["dump-config"], "a:\n  id: 1\n  url: mongodb://x\n", "line 3, key 'a.url'"),
        (["dump-config"], "a:\n  id: 1\n  uri: 'mongodb://${MMM_TEST_UNSET_VAR}@x'\n", "MMM_TEST_UNSET_VAR is not set"),
        (["replicate", "--src", "nowhere/app.t", "--dst", "server_b/app.t"], "two", "unknown server 'nowhere'"),
        (["replicate", "--src", "server_a/app", "--dst", "server_b/app.t"], "two", "server_a/app"),
        (["replicate", "--src", "server_a/app.t", "--dst", "server_b/app.t", "--ops", "ix"], "two", "ix"),
        (["run"], "two", "no links to run"),
        (["dump-config"], "a:\n  id: A\n  uri: mongodb://x\nlinks:\n  - {src: a/d.*, dst: a/e.*, marker: tag}\n",
         "line 5, key 'links[0].marker'"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_writes_nothing(two, tmp_path, args, config, message):
    cfg, a, b, ca, cb = two
    if config == "missing":
        path = tmp_path / "absent.yml"
    elif config == "two":
        path = cfg
    elif config is None:
        path = cfg
    else:
        path = tmp_path / "c.yml"
        path.write_text(config)
    out = mmm("-c", str(path), *args)
    assert out.returncode != 0
    assert message in out.stderr
    if config not in (None,):
        assert len([l for l in out.stderr.splitlines() if l.strip()]) == 1, out.stderr
    assert "__mmm" not in cb.list_database_names() and "__mmm" not in ca.list_database_names()


def test_unreachable_and_not_replica_set_destination(tmp_path):
    cfg = tmp_path / "m.yml"
    cfg.write_text("a:\n  id: A\n  uri: 'mongodb://127.0.0.1:1/?replicaSet=rs0'\nb:\n  id: B\n  uri: 'mongodb://127.0.0.1:1/?replicaSet=rs0'\n")
    out = mmm("-c", str(cfg), "replicate", "--src", "a/app.t", "--dst", "b/app.t")
    assert out.returncode == 1 and "unreachable" in out.stderr


def test_serve_runs_until_sigterm():
    proc = subprocess.Popen(MMM + ["serve", "--port", "0"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "embedded MongoDB server on 127.0.0.1:" in line
    uri = proc.stdout.readline().split("connect with", 1)[1].strip()
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
    assert client.admin.command("ping")["ok"] == 1.0
    client.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


def test_demo_ends_with_both_sides_identical():
    out = mmm("demo", "--seconds", "5", "--outage", "1.5", timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    assert "OK: factory and cloud are identical" in out.stdout
    assert "link is cut" in out.stdout and "link is back" in out.stdout
