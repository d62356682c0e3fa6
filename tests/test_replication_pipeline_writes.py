"""What pipeline-style updates, ``$merge`` and ``$out`` write to the oplog is understood by the
replicator and by triggers: the other server ends up identical, and a trigger sees each change.
"""

from __future__ import annotations

import time

import mmm
from conftest import wait_for
from test_replication import wait_identical

PAD = "p" * 400


def seed(client):
    client.app.docs.insert_many([
        {"_id": 1, "pad": PAD, "a": [1, 2, 999, 3, 4], "x": "foo", "y": "bar", "sub": {"k": 1, "big": PAD}},
        {"_id": 2, "pad": PAD, "n": 1, "gone": True},
        {"_id": 3, "n": 3},
    ])


PIPELINE_UPDATES = [
    # array shrunk and rewritten (l + u), a field moved (i), a sub-document edited (s)
    ({"_id": 1}, [{"$set": {"a": [1, 2, 3, 4], "sub.k": 2}},
                  {"$replaceWith": {"_id": "$_id", "pad": "$pad", "a": "$a", "y": "$y", "x": "$x", "sub": "$sub"}}]),
    # a field removed and one added
    ({"_id": 2}, [{"$unset": "gone"}, {"$set": {"n": {"$add": ["$n", 1]}, "extra": [{"q": 1}]}}]),
    # small document: logged as a replacement
    ({"_id": 3}, [{"$project": {"m": {"$multiply": ["$n", 2]}}}]),
]


def test_pipeline_update_merge_and_out_arrive_identical(pair):
    """$out replaces its target by a renameCollection: DDL, so the links carry ops 'iudc'."""
    a, b, ca, cb = pair
    r = mmm.Replicator(
        {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}},
        [mmm.Link("a/app.*", "b/app.*", ops="iudc"), mmm.Link("b/app.*", "a/app.*", ops="iudc")],
    )
    with r:
        wait_for(lambda: all(s["state"] == "running" for s in r.status()))
        seed(ca)
        wait_identical([ca, cb])
        for q, pipeline in PIPELINE_UPDATES:
            ca.app.docs.update_one(q, pipeline)
        ca.app.totals.insert_one({"_id": "n", "value": 0, "keep": 1})
        list(ca.app.docs.aggregate([
            {"$group": {"_id": "n", "value": {"$sum": {"$ifNull": ["$n", 0]}}}},
            {"$merge": {"into": "totals"}},
        ]))
        list(ca.app.docs.aggregate([
            {"$project": {"pad": 0}},
            {"$merge": {"into": "copy", "whenMatched": "replace"}},
        ]))
        cb.app.report.insert_one({"_id": "stale"})
        cb.app.report.create_index("x")
        wait_identical([ca, cb])
        wait_for(lambda: "x_1" in ca.app.report.index_information())
        list(ca.app.docs.aggregate([{"$project": {"x": 1, "m": 1}}, {"$out": "report"}]))
        data = wait_identical([ca, cb])
    assert data["docs"][0] == {"_id": 1, "pad": PAD, "a": [1, 2, 3, 4], "y": "bar", "x": "foo",
                               "sub": {"k": 2, "big": PAD}}
    # The source moved x after y (the diff's `i` section). The replicator's default translation
    # of diffs is equal as a value, not in field order (src/oplog/diff.rs, "Field order").
    assert list(ca.app.docs.find_one({"_id": 1})) == ["_id", "pad", "a", "y", "x", "sub"]
    assert data["totals"] == [{"_id": "n", "value": 2, "keep": 1}]
    assert data["report"] == [{"_id": 1, "x": "foo"}, {"_id": 2}, {"_id": 3, "m": 6}]
    assert [n for n in cb.app.list_collection_names() if n.startswith("tmp.agg_out.")] == []
    assert sorted(i["name"] for i in cb.app.report.list_indexes()) == ["_id_", "x_1"]


def test_triggers_see_pipeline_updates_and_diff_to_update_reproduces_them(mongo_server, client):
    tailer = mmm.Tailer(mongo_server.uri)
    seen = []
    tailer.register("app.docs", "u", seen.append)
    seed(client)
    # The same starting documents in a scratch collection, to replay the translated updates on.
    client.app.replay.insert_many(list(client.app.docs.find()))
    with tailer:
        time.sleep(0.3)
        for q, pipeline in PIPELINE_UPDATES:
            client.app.docs.update_one(q, pipeline)
        wait_for(lambda: len(seen) == len(PIPELINE_UPDATES))
    kinds = ["diff" if "$v" in op["o"] else "replacement" for op in seen]
    assert kinds == ["diff", "diff", "replacement"]
    for op in seen:
        update = mmm.diff_to_update(op["o"])
        if "$v" in op["o"]:
            # one update document, or several to apply in order
            for step in update if isinstance(update, list) else [update]:
                client.app.replay.update_one(op["o2"], step)
        else:
            client.app.replay.replace_one(op["o2"], update)
    for d in client.app.docs.find():
        # same values; the replay of a moved field keeps values, not necessarily the order
        assert client.app.replay.find_one({"_id": d["_id"]}) == d
