"""mmm's own database as Python sees it through ``mmm._mmm``: names, link ids, checkpoints."""

from __future__ import annotations

import bson
import pytest

import mmm
from mmm import _mmm
from conftest import wait_for


def test_names_and_link_ids():
    assert _mmm.MMM_DB == "__mmm"
    assert (_mmm.CHECKPOINTS_COLLECTION, _mmm.LINKS_COLLECTION, _mmm.REJECTED_COLLECTION) == (
        "checkpoints", "links", "rejected")
    assert _mmm.link_id("a/app.*", "b/app.*") == "a/app.*->b/app.*" == mmm.Link("a/app.*", "b/app.*").id
    for bad in ("a", "/app.c", "a/app", "a/d\x00b.c", "a/" + "x" * 10_000 + ".c"):
        with pytest.raises(ValueError):
            _mmm.link_id(bad, "b/app.c")


def test_a_link_s_checkpoint_is_read_where_it_is_stored(pair):
    a, b, ca, cb = pair
    link = mmm.Link("a/app.*", "b/app.*")
    assert _mmm.read_checkpoint(b.uri, link.id) is None
    r = mmm.Replicator({"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}}, [link])
    with r:
        ca.app.c.insert_many([{"_id": i} for i in range(3)])
        wait_for(lambda: (_mmm.read_checkpoint(b.uri, link.id) or {}).get("ops_applied") == 3)
    checkpoint = _mmm.read_checkpoint(b.uri, link.id)
    stored = cb["__mmm"]["checkpoints"].find_one({"_id": link.id})
    assert bson.Timestamp(*checkpoint["ts"]) == stored["ts"]
    assert (checkpoint["link"], checkpoint["src"], checkpoint["origin"]) == (link.id, "A", "A")
    assert (checkpoint["conflicts"], checkpoint["rejected"], checkpoint["pending_ddl"]) == (0, 0, False)


def test_an_unreachable_server_is_one_line():
    with pytest.raises(mmm.MmmError) as err:
        _mmm.read_checkpoint("mongodb://127.0.0.1:1/?replicaSet=rs0", "x", timeout=0.3)
    assert "\n" not in str(err.value) and "Topology" not in str(err.value)
