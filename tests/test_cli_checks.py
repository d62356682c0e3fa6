"""The ``mmm`` command's checks: `replicate` checks what `run` checks before storing, hostile
configuration files and arguments are one line each, and `validate` shows whose writes reach whom."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pymongo
import pytest

MMM = [sys.executable, "-m", "mmm"]


def mmm(*args, env=None, timeout=60):
    return subprocess.run(MMM + list(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def lines(text: str):
    return [l for l in text.splitlines() if l.strip()]


@pytest.fixture
def three(mongo_server_factory, tmp_path):
    servers = {name: mongo_server_factory() for name in ("a", "b", "c")}
    cfg = tmp_path / "mmm.yml"
    cfg.write_text("".join(f"{n}:\n  id: {n.upper()}\n  uri: '{s.uri}'\n" for n, s in servers.items()))
    clients = {n: pymongo.MongoClient(s.uri) for n, s in servers.items()}
    yield cfg, clients
    for c in clients.values():
        c.close()


# -- defect 4: replicate runs run's checks, on namespaces ------------------------------------

def test_links_on_different_collections_between_two_servers_are_one_path_each(three):
    cfg, clients = three
    for coll in ("c", "e"):
        out = mmm("-c", str(cfg), "replicate", "--src", f"a/d.{coll}", "--dst", f"b/d.{coll}")
        assert out.returncode == 0, out.stderr
    assert clients["b"]["__mmm"].links.count_documents({}) == 2
    status = mmm("-c", str(cfg), "status", "--json")
    assert status.returncode == 0, status.stderr
    assert sorted(r["id"] for r in json.loads(status.stdout)) == ["a/d.c->b/d.c", "a/d.e->b/d.e"]
    assert mmm("-c", str(cfg), "validate").returncode == 0
    # and run accepts it: both links replicate
    proc = subprocess.Popen(MMM + ["-c", str(cfg), "run"], stderr=subprocess.PIPE, text=True)
    try:
        assert "replicating 2 link(s)" in proc.stderr.readline()
        deadline = time.monotonic() + 30  # each link has its starting position once it checkpoints
        while time.monotonic() < deadline and clients["b"]["__mmm"].checkpoints.count_documents({}) < 2:
            time.sleep(0.1)
        clients["a"].d.c.insert_one({"_id": 1})
        clients["a"].d.e.insert_one({"_id": 2})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (clients["b"].d.c.find_one({"_id": 1}) and clients["b"].d.e.find_one({"_id": 2})):
            time.sleep(0.1)
        assert clients["b"].d.c.find_one({"_id": 1}) and clients["b"].d.e.find_one({"_id": 2})
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_a_second_path_across_stored_links_is_refused_before_storing(three):
    cfg, clients = three
    assert mmm("-c", str(cfg), "replicate", "--src", "a/d.*", "--dst", "b/d.*").returncode == 0
    assert mmm("-c", str(cfg), "replicate", "--src", "b/d.*", "--dst", "c/d.*", "--forward").returncode == 0
    # a's writes already reach c through b: a direct link would apply them twice
    out = mmm("-c", str(cfg), "replicate", "--src", "a/d.x", "--dst", "c/d.x")
    assert out.returncode == 1
    assert "two paths" in out.stderr and "a -> b -> c" in out.stderr and len(lines(out.stderr)) == 1
    assert [l["_id"] for l in clients["c"]["__mmm"].links.find()] == ["b/d.*->c/d.*"]
    # the configuration still runs: status accepts it
    assert mmm("-c", str(cfg), "status").returncode == 0
    # another database is another namespace: no second path
    assert mmm("-c", str(cfg), "replicate", "--src", "a/other.x", "--dst", "c/other.x").returncode == 0


def test_replicate_refuses_a_source_that_is_no_replica_set_member(three, tmp_path):
    cfg, clients = three
    bad = tmp_path / "bad.yml"
    # a direct connection to a member presents it as what it is; port 1 is down
    bad.write_text(cfg.read_text() + "down:\n  id: D\n  uri: 'mongodb://127.0.0.1:1/?replicaSet=rs0&serverSelectionTimeoutMS=300'\n")
    out = mmm("-c", str(bad), "replicate", "--src", "down/d.c", "--dst", "a/d.c")
    assert out.returncode == 0, out.stderr  # a source that is down: stored, it starts later
    assert "down" in out.stderr and "unreachable" in out.stderr
    out = mmm("-c", str(bad), "replicate", "--src", "a/d.c", "--dst", "down/d.c")
    assert out.returncode == 1 and "unreachable" in out.stderr


# -- defect 7: a whole URI from a variable ---------------------------------------------------

def test_whole_uri_in_a_variable(mongo_server, tmp_path):
    cfg = tmp_path / "m.yml"
    cfg.write_text("a:\n  id: A\n  uri: '${MMM_TEST_WHOLE_URI}'\n")
    out = mmm("-c", str(cfg), "validate", env={"MMM_TEST_WHOLE_URI": mongo_server.uri})
    assert out.returncode == 0, out.stderr
    out = mmm("-c", str(cfg), "validate", env={"MMM_TEST_WHOLE_URI": "http://x"})
    assert out.returncode == 1 and "line 3, key 'a.uri'" in out.stderr and "${MMM_TEST_WHOLE_URI}" in out.stderr


# -- defect 8: hostile files and arguments, one line each -------------------------------------

HOSTILE_FILES = [
    (b"a:\n  id: !!python/name:os.system A\n  uri: mongodb://x\n", "line 2, key 'a.id'", "YAML tag"),
    (b"a: !!python/object/apply:os.system [ls]\n", "line 1, key 'a'", "YAML tag"),
    (b"!!python/object:__main__.X\na: {id: A, uri: 'mongodb://x'}\n", "line", "YAML tag"),
    (b"? [a, b]\n: {id: A, uri: 'mongodb://x'}\n", "line 1", "plain name"),
    (b"a:\n  ? {x: 1}\n  : 2\n", "line 2", "plain name"),
    (b"a:\n  id: A\n  uri: 'mongodb://h'\n  \xff\xfe: x\n", "not UTF-8", "offset 34"),
    (b"a:\n  id: null\n  uri: 'mongodb://h'\n", "line 2, key 'a.id'", "non-empty string"),
    (b"a:\n  id:\n  uri: 'mongodb://h'\n", "line 2, key 'a.id'", "non-empty string"),
    (b"a:\n  id: ''\n  uri: 'mongodb://h'\n", "line 2, key 'a.id'", "non-empty string"),
    (b"a:\n  id: '  '\n  uri: 'mongodb://h'\n", "line 2, key 'a.id'", "non-empty string"),
    (b"a:\n  id: true\n  uri: 'mongodb://h'\n", "line 2, key 'a.id'", "non-empty string"),
    (b"a:\n  id: [x]\n  uri: 'mongodb://h'\n", "line 2, key 'a.id'", "single value"),
    (b"a:\n  id: A\n  id: B\n  uri: 'mongodb://h'\n", "line 3, key 'a.id'", "given twice"),
    (b"a:\n  id: A\n  uri: 'mongodb://h'\na:\n  id: B\n  uri: 'mongodb://h'\n", "line 4, key 'a'", "given twice"),
    (b"a:\n  id: A\n  uri: 'mongodb://h'\nlinks:\n  - {src: a/d.c, dst: b/d.c, src: a/d.e}\n", "key 'links[0].src'", "given twice"),
    (b"a:\n  id: &x A\n  uri: *x\n", "key 'a.uri'", "mongodb://"),
    (b"a:\n  id: A\n  uri: 'mongodb://u:p@ss@h'\n", "line 3, key 'a.uri'", "percent-encoded"),
    (b"a:\n  id: A\n  uri: 'mongodb://u:S3cr@:::h'\n", "line 3, key 'a.uri'", "not a valid MongoDB URI"),
    (b"a:\n  id: A\n  uri: 'mongodb://u:S3cr@h:notaport/'\n", "line 3, key 'a.uri'", "not a valid MongoDB URI"),
    (b"- a\n- b\n", "line 1", "mapping of server names"),
    (b"a: {id: A, uri: 'mongodb://h'}\n" * 2 + b"x" * 100, "", ""),
    (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "", "nested too deeply"),
    # a "billion laughs": 10**9 references to one list, which must be looked at once
    (b"x0: &x0 [a, a, a, a, a, a, a, a, a, a]\n"
     + b"".join(b"x%d: &x%d [" % (i, i) + b", ".join([b"*x%d" % (i - 1)] * 10) + b"]\n" for i in range(1, 10)),
     "line 1, key 'x0'", "a server entry is a mapping"),
]


@pytest.mark.parametrize("content, where, what", HOSTILE_FILES)
def test_hostile_configuration_files(tmp_path, content, where, what):
    cfg = tmp_path / "hostile.yml"
    cfg.write_bytes(content)
    for verb in ("dump-config", "validate"):
        out = mmm("-c", str(cfg), verb)
        assert out.returncode == 1, out
        assert len(lines(out.stderr)) == 1, out.stderr
        assert str(cfg) in out.stderr and where in out.stderr and what in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and out.stdout == ""
        assert "S3cr" not in out.stderr


def test_endless_configuration_file_is_refused():
    out = mmm("-l", "/dev/zero", "-c", "/dev/null", "dump-config", timeout=60)
    assert out.returncode == 1 and "/dev/zero: not a logging configuration file" in out.stderr, out.stderr
    out = mmm("-c", "/dev/zero", "dump-config", timeout=60)
    assert out.returncode == 1 and "/dev/zero: larger than 16 MiB" in out.stderr, out.stderr
    assert len(lines(out.stderr)) == 1


def test_hostile_configuration_file_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "hostile.yml"
    cfg.write_text(f"a:\n  id: !!python/object/apply:os.system ['touch {marker}']\n  uri: mongodb://x\n")
    assert mmm("-c", str(cfg), "dump-config").returncode == 1
    assert not marker.exists()


@pytest.mark.parametrize("ini, what", [
    ("[loggers]\nkeys=root\n", "logging configuration"),
    ("not an ini file at all\n", "logging configuration"),
    ("[loggers]\nkeys=root\n[handlers]\nkeys=h\n[formatters]\nkeys=\n[logger_root]\nhandlers=h\n"
     "[handler_h]\nclass=NoSuchHandler\nargs=()\n", "logging configuration"),
    (b"\xff\xfe\x00".decode("latin-1"), "logging configuration"),
])
def test_malformed_logging_ini(tmp_path, mongo_server, ini, what):
    path = tmp_path / "log.ini"
    path.write_text(ini, encoding="latin-1")
    cfg = tmp_path / "m.yml"
    cfg.write_text(f"a:\n  id: A\n  uri: '{mongo_server.uri}'\n")
    out = mmm("-l", str(path), "-c", str(cfg), "dump-config")
    assert out.returncode == 1
    assert len(lines(out.stderr)) == 1 and str(path) in out.stderr and what in out.stderr, out.stderr


@pytest.mark.parametrize("args, message", [
    (["demo", "--seconds", "-5"], "--seconds"),
    (["demo", "--seconds", "0"], "--seconds"),
    (["demo", "--seconds", "nan"], "--seconds"),
    (["demo", "--seconds", "inf"], "--seconds"),
    (["demo", "--outage", "-1"], "--outage"),
    (["run", "--status-interval", "-1"], "--status-interval"),
    (["serve", "--port", "70000"], "--port"),
    (["serve", "--port", "-1"], "--port"),
    (["serve", "--oplog-size-mb", "0"], "--oplog-size-mb"),
])
def test_bad_numbers_are_refused(args, message):
    out = mmm(*args, timeout=20)
    assert out.returncode == 2
    error = [l for l in lines(out.stderr) if "error:" in l]
    assert len(error) == 1 and message in error[0], out.stderr


def test_unreachable_server_is_one_short_line(tmp_path):
    cfg = tmp_path / "m.yml"
    cfg.write_text("a:\n  id: A\n  uri: 'mongodb://127.0.0.1:1/?replicaSet=rs0&serverSelectionTimeoutMS=300'\n"
                   "b:\n  id: B\n  uri: 'mongodb://127.0.0.1:2/?replicaSet=rs0&serverSelectionTimeoutMS=300'\n"
                   "links:\n  - {src: a/d.c, dst: b/d.c}\n")
    for verb in (["validate"], ["status"], ["status", "--json"], ["dump-config"],
                 ["replicate", "--src", "b/d.e", "--dst", "a/d.e"]):
        out = mmm("-c", str(cfg), *verb)
        text = out.stdout + out.stderr
        assert "Topology Description" not in text and "<TopologyDescription" not in text, text
        assert "Topology: {" not in text and "labels: {" not in text, text  # the Rust driver's dump
        assert all(len(l) < 300 for l in text.splitlines()), text


# -- defect 9: whose writes reach whom -------------------------------------------------------

def test_validate_shows_a_star_that_is_not_one(three):
    cfg, clients = three
    star = cfg.read_text() + (
        "links:\n"
        "  - {src: a/d.*, dst: b/d.*}\n  - {src: b/d.*, dst: a/d.*}\n"
        "  - {src: c/d.*, dst: b/d.*}\n  - {src: b/d.*, dst: c/d.*}\n"
    )
    cfg.write_text(star)
    out = mmm("-c", str(cfg), "validate")
    assert out.returncode == 0, out.stderr
    table = out.stdout.split("d.*: whose writes", 1)[1].splitlines()[1:5]
    assert table[0].split() == ["a", "b", "c"]
    assert table[1].split() == ["a", ".", "yes", "no"]
    assert table[2].split() == ["b", "yes", ".", "yes"]
    assert table[3].split() == ["c", "no", "yes", "."]
    warnings = [l for l in out.stdout.splitlines() if l.startswith("warning:")]
    assert len(warnings) == 2
    assert '"a" to d.* reach "b" but not "c"' in warnings[0] and "forward: true on b/d.*->c/d.*" in warnings[0]
    # the hub forwarding: everyone reaches everyone, no warning
    cfg.write_text(star.replace("{src: b/d.*, dst: a/d.*}", "{src: b/d.*, dst: a/d.*, forward: true}")
                   .replace("{src: b/d.*, dst: c/d.*}", "{src: b/d.*, dst: c/d.*, forward: true}"))
    out = mmm("-c", str(cfg), "validate")
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stdout and "no" not in out.stdout.split("whose writes", 1)[1].split()


@pytest.mark.parametrize("bad", [None, "", "  ", True, 1.5, ["x"]])
def test_replicator_refuses_a_missing_or_empty_server_id(bad):
    import mmm

    with pytest.raises(ValueError, match="the id must be a non-empty string"):
        mmm.Replicator({"a": {"id": bad, "uri": "mongodb://h"}, "b": {"id": "B", "uri": "mongodb://h2"}})
