"""Pipeline-style updates, the writing aggregation stages ``$out`` and ``$merge``, and ``let``,
with the oplog entries MongoDB 7.0 writes for them.

References (mongodb/mongo): update/pipeline_executor.cpp (a pipeline update replaces the
document, keeps ``_id``, logs the ``$v: 2`` delta of ``doc_diff::computeOplogDiff`` when it is
smaller than the new document, else the new document; only ``$addFields/$set/$project/$unset/
$replaceRoot/$replaceWith`` are allowed, InvalidOptions otherwise; no ``arrayFilters``,
FailedToParse); update/document_diff_calculator.cpp; pipeline/document_source_out.cpp (results
into ``<db>.tmp.agg_out.<uuid>``, then ``renameCollection`` with ``dropTarget``);
pipeline/document_source_merge.cpp (ordinary upserts/updates per document; defaults ``on: _id``,
``whenMatched: merge``, ``whenNotMatched: insert``); variable_validation.cpp (user variable names);
the oplog notes, §3.4-3.5 and the renameCollection entry.
"""

import pytest
from bson import ObjectId
from pymongo.errors import OperationFailure

from conftest import entries_after, last_ts

PAD = "p" * 500


@pytest.fixture
def coll(plain_client):
    c = plain_client.test.pu
    c.insert_many([
        {"_id": 1, "pad": PAD, "a": 1, "b": [1, 2, 3], "n": {"x": 1, "y": 2}},
        {"_id": 2, "a": 5},
    ])
    return c


def test_pipeline_update_logs_a_delta_when_smaller(plain_client, coll):
    ts = last_ts(plain_client)
    r = coll.update_one({"_id": 1}, [{"$set": {"a": {"$add": ["$a", 1]}, "b": [1, 2, 3, 4]}},
                                     {"$unset": "n.y"}])
    assert (r.matched_count, r.modified_count) == (1, 1)
    assert coll.find_one({"_id": 1}) == {"_id": 1, "pad": PAD, "a": 2, "b": [1, 2, 3, 4], "n": {"x": 1}}
    [e] = entries_after(plain_client, ts)
    assert e["op"] == "u" and e["o2"] == {"_id": 1}
    # a changed in place, b grew by one element, n.y removed (small sub-documents are logged whole).
    assert e["o"] == {"$v": 2, "diff": {"u": {"a": 2, "n": {"x": 1}}, "sb": {"a": True, "u3": 4}}}


def test_pipeline_update_logs_the_document_when_the_delta_is_not_smaller(plain_client, coll):
    ts = last_ts(plain_client)
    coll.update_one({"_id": 2}, [{"$replaceWith": {"z": "$a", "w": [1, 2]}}])
    assert coll.find_one({"_id": 2}) == {"_id": 2, "z": 5, "w": [1, 2]}
    [e] = entries_after(plain_client, ts)
    assert e["op"] == "u" and e["o"] == {"_id": 2, "z": 5, "w": [1, 2]}


def test_pipeline_update_that_changes_nothing_logs_nothing(plain_client, coll):
    ts = last_ts(plain_client)
    r = coll.update_one({"_id": 2}, [{"$set": {"a": 5}}])
    assert (r.matched_count, r.modified_count) == (1, 0)
    assert entries_after(plain_client, ts) == []


def test_pipeline_update_multi_upsert_and_find_and_modify(plain_client, coll):
    coll.update_many({}, [{"$set": {"seen": True}}])
    assert coll.count_documents({"seen": True}) == 2
    r = coll.update_one({"_id": 9}, [{"$set": {"made": {"$concat": ["x", "y"]}}}], upsert=True)
    assert r.upserted_id == 9
    assert coll.find_one({"_id": 9}) == {"_id": 9, "made": "xy"}
    got = coll.find_one_and_update({"_id": 9}, [{"$project": {"made": 1, "k": {"$literal": 1}}}],
                                   return_document=True)
    assert got == {"_id": 9, "made": "xy", "k": 1}


def test_pipeline_update_errors(coll):
    with pytest.raises(OperationFailure) as e:
        coll.update_one({"_id": 1}, [{"$match": {"a": 1}}])
    assert e.value.code == 72 and "$match is not allowed to be used within an update" in str(e.value)
    with pytest.raises(OperationFailure) as e:
        coll.update_one({"_id": 1}, [{"$set": {"_id": 5}}])
    assert e.value.code == 66
    with pytest.raises(OperationFailure) as e:
        coll.update_one({"_id": 1}, [{"$set": {"a": 1}}], array_filters=[{"x.a": 1}])
    assert e.value.code == 9
    assert coll.find_one({"_id": 1})["a"] == 1


def test_let_in_aggregate_and_pipeline_updates(coll):
    got = list(coll.aggregate([{"$match": {"_id": 2}}, {"$project": {"v": {"$add": ["$a", "$$k"]}}}],
                              let={"k": {"$multiply": [2, 5]}}))
    assert got == [{"_id": 2, "v": 15}]
    coll.update_one({"_id": 2}, [{"$set": {"a": "$$val"}}], let={"val": "new"})
    assert coll.find_one({"_id": 2})["a"] == "new"
    coll.find_one_and_update({"_id": 2}, [{"$set": {"b": "$$v.x"}}], let={"v": {"x": 7}})
    assert coll.find_one({"_id": 2})["b"] == 7
    # Outside $expr, "$$k" in a filter is a plain string.
    assert coll.find_one({"a": "$$k"}, let={"k": 1}) is None
    coll.delete_one({"_id": 2}, let={"k": 1})
    with pytest.raises(OperationFailure) as e:
        coll.find_one({}, let={"Bad": 1})
    assert e.value.code == 16867


def test_out_replaces_the_target_through_a_temporary_collection(plain_client, coll):
    db = plain_client.test
    db.target.insert_one({"_id": "old"})
    db.target.create_index("a")
    old_uuid = next(db.list_collections(filter={"name": "target"}))["info"]["uuid"]
    ts = last_ts(plain_client)
    assert list(coll.aggregate([{"$match": {"a": {"$gte": 1}}}, {"$project": {"a": 1}}, {"$out": "target"}])) == []
    assert list(db.target.find().sort("_id", 1)) == [{"_id": 1, "a": 1}, {"_id": 2, "a": 5}]
    assert sorted(i["name"] for i in db.target.list_indexes()) == ["_id_", "a_1"]
    assert [c for c in db.list_collection_names() if c.startswith("tmp.agg_out.")] == []
    entries = entries_after(plain_client, ts)
    ops = [(e["op"], next(iter(e["o"])) if e["op"] == "c" else e["ns"]) for e in entries]
    create, index, ins1, ins2, rename = entries
    temp = create["o"]["create"]
    assert temp.startswith("tmp.agg_out.") and create["o"]["temp"] is True
    assert ops == [("c", "create"), ("c", "createIndexes"), ("i", f"test.{temp}"),
                   ("i", f"test.{temp}"), ("c", "renameCollection")]
    assert rename["ns"] == "test.$cmd"
    assert rename["o"]["renameCollection"] == f"test.{temp}" and rename["o"]["to"] == "test.target"
    assert rename["o"]["dropTarget"] == old_uuid and rename["o"]["stayTemp"] is False
    assert "temp" not in next(db.list_collections(filter={"name": "target"}))["options"]


def test_out_failure_leaves_the_target_and_drops_the_temporary(plain_client):
    db = plain_client.test
    db.src.insert_many([{"_id": 1, "k": 1}, {"_id": 2, "k": 1}])
    db.target.insert_one({"_id": "keep"})
    with pytest.raises(OperationFailure) as e:
        list(db.src.aggregate([{"$project": {"_id": "$k"}}, {"$out": "target"}]))
    assert e.value.code == 11000
    assert list(db.target.find()) == [{"_id": "keep"}]
    assert [c for c in db.list_collection_names() if c.startswith("tmp.agg_out.")] == []
    with pytest.raises(OperationFailure) as e:
        list(db.src.aggregate([{"$out": "target"}, {"$match": {}}]))
    assert e.value.code == 40601


def test_merge_writes_ordinary_upserts_and_updates(plain_client):
    db = plain_client.test
    db.src.insert_many([{"_id": 1, "v": 10}, {"_id": 2, "v": 20}])
    db.dst.insert_many([{"_id": 1, "v": 0, "keep": True}])
    ts = last_ts(plain_client)
    list(db.src.aggregate([{"$merge": {"into": "dst"}}]))
    assert list(db.dst.find().sort("_id", 1)) == [{"_id": 1, "v": 10, "keep": True}, {"_id": 2, "v": 20}]
    entries = entries_after(plain_client, ts)
    assert [(e["op"], e["ns"]) for e in entries] == [("u", "test.dst"), ("i", "test.dst")]
    assert entries[0]["o"] == {"$v": 2, "diff": {"u": {"v": 10}}} and entries[0]["o2"] == {"_id": 1}
    assert entries[1]["o"] == {"_id": 2, "v": 20}
    # replace / keepExisting / discard / fail
    db.src.update_one({"_id": 1}, {"$set": {"v": 11}})
    list(db.src.aggregate([{"$merge": {"into": "dst", "whenMatched": "replace"}}]))
    assert db.dst.find_one({"_id": 1}) == {"_id": 1, "v": 11}
    db.src.insert_one({"_id": 3, "v": 30})
    list(db.src.aggregate([{"$merge": {"into": "dst", "whenMatched": "keepExisting",
                                       "whenNotMatched": "discard"}}]))
    assert db.dst.count_documents({}) == 2
    with pytest.raises(OperationFailure) as e:
        list(db.src.aggregate([{"$merge": {"into": "dst", "whenMatched": "fail"}}]))
    assert e.value.code == 11000
    with pytest.raises(OperationFailure) as e:
        list(db.src.aggregate([{"$merge": {"into": "dst", "whenNotMatched": "fail"}}]))
    assert e.value.code == 13113


def test_merge_with_a_pipeline_and_on_fields(plain_client):
    db = plain_client.test
    db.src.insert_many([{"_id": 1, "k": "a", "n": 1}, {"_id": 2, "k": "b", "n": 2}])
    db.dst.insert_one({"_id": ObjectId(), "k": "a", "n": 100})
    with pytest.raises(OperationFailure) as e:
        list(db.src.aggregate([{"$project": {"_id": 0}}, {"$merge": {"into": "dst", "on": "k"}}]))
    assert e.value.code == 51183
    db.dst.create_index("k", unique=True)
    list(db.src.aggregate([
        {"$project": {"_id": 0}},
        {"$merge": {"into": "dst", "on": "k",
                    # let is evaluated against each result document (n: 1 -> bonus 1000).
                    "whenMatched": [{"$set": {"n": {"$add": ["$n", "$$new.n", "$$bonus"]}}}],
                    "let": {"new": "$$ROOT", "bonus": {"$multiply": ["$n", 1000]}}}},
    ]))
    assert db.dst.find_one({"k": "a"}, {"_id": 0}) == {"k": "a", "n": 1101}
    assert db.dst.find_one({"k": "b"}, {"_id": 0}) == {"k": "b", "n": 2}


@pytest.mark.parametrize("stage, code", [
    ({"$out": "local"}, None),  # a collection named "local" in the command's database is fine
    ({"$out": {"db": "local", "coll": "x"}}, 73),
    ({"$out": {"db": "admin", "coll": "x"}}, 73),
    ({"$out": "system.views"}, 73),
    ({"$out": "a$b"}, 73),
    ({"$out": ""}, 73),
    ({"$out": 5}, 16990),
    ({"$out": {"db": 5, "coll": "x"}}, 14),
    ({"$out": {"db": "test"}}, 9),
    ({"$merge": {"into": "x", "bogus": 1}}, 40415),
    ({"$merge": {"into": "x", "whenMatched": "explode"}}, 2),
    ({"$merge": {"into": "x", "whenNotMatched": 3}}, 14),
    ({"$merge": {"into": "x", "on": []}}, 51186),
    ({"$merge": {"into": "x", "on": [1]}}, 51134),
    ({"$merge": {"into": "x", "let": "no"}}, 14),
    ({"$merge": {"into": {"db": "config", "coll": "x"}}}, 73),
    ({"$merge": None}, 51182),
])
def test_writing_stages_refuse_bad_targets_and_options(plain_client, stage, code):
    db = plain_client.test
    db.src.insert_one({"_id": 1})
    before = sorted(plain_client.list_database_names())
    if code is None:
        list(db.src.aggregate([stage]))
        return
    with pytest.raises(OperationFailure) as e:
        list(db.src.aggregate([stage]))
    assert e.value.code == code
    assert sorted(plain_client.list_database_names()) == before


def test_writing_stages_and_let_refuse_transactions_and_bad_values(client):
    db = client.test
    db.src.insert_one({"_id": 1, "a": 1})
    with client.start_session() as s:
        s.start_transaction()
        with pytest.raises(OperationFailure) as e:
            list(db.src.aggregate([{"$out": "t"}], session=s))
        assert e.value.code == 263
        s.abort_transaction()
    assert "t" not in db.list_collection_names()
    for bad in ({"": 1}, {"A": 1}, {"a.b": 1}, {"$x": 1}):
        with pytest.raises(OperationFailure):
            list(db.src.aggregate([{"$project": {"a": 1}}], let=bad))
    with pytest.raises(OperationFailure) as e:
        db.command({"update": "src", "updates": [{"q": {}, "u": [{"$set": {"a": "$$c1"}}], "c": 5}]})
    assert e.value.code == 14
    r = db.command({"update": "src", "updates": [{"q": {}, "u": [{"$set": {"a": "$$c1"}}], "c": {"c1": "v"}}]})
    assert r["nModified"] == 1 and db.src.find_one()["a"] == "v"
    # Deeply nested values are refused before anything walks them.
    deep = "x"
    for _ in range(250):
        deep = {"d": deep}
    with pytest.raises(OperationFailure):
        db.command({"aggregate": "src", "pipeline": [{"$set": {"a": "$$v"}}], "cursor": {}, "let": {"v": {"$literal": deep}}})
    assert client.admin.command("ping")["ok"] == 1
