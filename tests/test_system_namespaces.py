"""The server's namespaces (``admin``, ``config``, ``local``, ``system.*``) and mmm's own
(``__mmm``) are never replicated: wildcard links skip them, explicit links to or from them are
refused when the link is built, as MongoDB's own tools (mongosync) leave them alone."""

from __future__ import annotations

import subprocess
import sys
import time

import pymongo
import pytest

import mmm
from mmm.config import load_config
from conftest import wait_for

REFUSED = [
    ("a/local.oplog.rs", "b/app.oplog"),
    ("a/local.*", "b/local.*"),
    ("a/admin.*", "b/admin.*"),
    ("a/admin.system.users", "b/app.users"),
    ("a/app.users", "b/admin.system.users"),
    ("a/config.*", "b/config.*"),
    ("a/config.system.sessions", "b/app.sessions"),
    ("a/__mmm.*", "b/__mmm.*"),
    ("a/__mmm.checkpoints", "b/app.checkpoints"),
    ("a/app.orders", "b/__mmm.orders"),
    ("a/app.system.views", "b/app.system.views"),
    ("a/Admin.*", "b/Admin.*"),  # database names differ from an existing one in more than case
    ("a/app.$cmd", "b/app.$cmd"),
]


@pytest.mark.parametrize("src,dst", REFUSED)
def test_explicit_links_on_server_namespaces_are_refused_when_built(src, dst):
    with pytest.raises(ValueError, match="cannot be replicated"):
        mmm.Link(src, dst)


@pytest.mark.parametrize("src,dst", REFUSED[:4])
def test_yaml_and_cli_refuse_them_with_one_line(tmp_path, mongo_server_factory, src, dst):
    a, b = mongo_server_factory(), mongo_server_factory()
    cfg = tmp_path / "mmm.yml"
    cfg.write_text(f"a:\n  id: A\n  uri: '{a.uri}'\nb:\n  id: B\n  uri: '{b.uri}'\nlinks:\n  - {{src: '{src}', dst: '{dst}'}}\n")
    with pytest.raises(mmm.ConfigError, match=r"line 8, key .links\[0\].: .*cannot be replicated"):
        load_config(str(cfg))
    cfg.write_text(f"a:\n  id: A\n  uri: '{a.uri}'\nb:\n  id: B\n  uri: '{b.uri}'\n")
    out = subprocess.run([sys.executable, "-m", "mmm", "-c", str(cfg), "replicate", "--src", src, "--dst", dst],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "cannot be replicated" in lines[0], out.stderr
    with pymongo.MongoClient(b.uri) as cb:
        assert "__mmm" not in cb.list_database_names()


def test_wildcard_links_skip_server_and_system_namespaces(pair):
    a, b, ca, cb = pair
    r = mmm.Replicator(
        servers={"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}},
        links=[mmm.Link("a/*", "b/*", ops="iudc")],
    )
    with r:
        wait_for(lambda: all(s["state"] == "running" for s in r.status()))
        ca.admin.mmm_probe.insert_one({"_id": 1})
        ca.config.mmm_probe.insert_one({"_id": 1})
        ca.local.mmm_probe.insert_one({"_id": 1})
        ca.app.system.js.insert_one({"_id": "f", "value": "x"})
        ca.app.orders.insert_one({"_id": 1})
        wait_for(lambda: cb.app.orders.count_documents({}) == 1)
        time.sleep(1.0)  # time for anything else to arrive
        assert r.status()[0]["state"] == "running"
    assert "mmm_probe" not in cb.admin.list_collection_names()
    assert "mmm_probe" not in cb.config.list_collection_names()
    assert "mmm_probe" not in cb.local.list_collection_names()
    assert "system.js" not in cb.app.list_collection_names()


def test_database_wildcard_skips_its_system_collections(pair):
    a, b, ca, cb = pair
    r = mmm.Replicator(
        servers={"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}},
        links=[mmm.Link("a/app.*", "b/app.*", initial_sync=True)],
    )
    ca.app.system.js.insert_one({"_id": "before", "value": "x"})
    ca.app.orders.insert_one({"_id": "before"})
    with r:
        wait_for(lambda: all(s["state"] == "running" for s in r.status()))
        ca.app.system.js.insert_one({"_id": "after", "value": "x"})
        ca.app.orders.insert_one({"_id": "after"})
        wait_for(lambda: cb.app.orders.count_documents({}) == 2)
        time.sleep(1.0)
        assert r.status()[0]["state"] == "running"
    assert "system.js" not in cb.app.list_collection_names()


def test_a_stored_link_no_longer_allowed_is_skipped_with_a_warning(pair, caplog):
    a, b, ca, cb = pair
    links = cb["__mmm"]["links"]
    links.insert_one({"_id": "a/admin.*->b/admin.*", "src": "a/admin.*", "dst": "b/admin.*"})
    links.insert_one({"_id": "a/app.x->b/app.x", "src": "a/app.x", "dst": "b/app.x", "on_reject": "shrug"})
    links.insert_one({"_id": "a/app.y->b/app.y", "src": "a/app.y", "dst": "b/app.y"})
    servers = {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}}
    with caplog.at_level("WARNING", logger="mmm.replication"):
        r = mmm.Replicator(servers, load_stored_links=True)
    assert [(l.src, l.dst) for l in r.links] == [("a/app.y", "b/app.y")]
    warnings = [m for m in caplog.messages if "ignored" in m]
    assert len(warnings) == 2 and "cannot be replicated" in warnings[0] and "on_reject" in warnings[1], warnings
