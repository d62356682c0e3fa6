"""CRUD through PyMongo: writes, reads, cursors, findAndModify, counting and simple aggregation.

References: the CRUD specification (mongodb/specifications source/crud/crud.md: write replies,
ordered vs unordered writeErrors, count_documents as an aggregation, upsert) and the
find/getMore/killCursors specification (find, getMore and cursor ids).
"""

import bson
import pymongo
import pytest
from pymongo import ReturnDocument
from pymongo.errors import BulkWriteError


@pytest.fixture
def coll(client):
    return client.test.items


def test_insert_one_generates_an_object_id_stored_first(coll):
    result = coll.insert_one({"b": 2, "a": 1})
    assert isinstance(result.inserted_id, bson.ObjectId)
    doc = coll.find_one({"_id": result.inserted_id})
    assert list(doc) == ["_id", "b", "a"]


def test_id_is_moved_first_when_sent_last(client):
    # Through the raw command, so the driver cannot reorder it.
    client.test.command("insert", "c", documents=[bson.SON([("x", 1), ("_id", 5)])])
    assert list(client.test.c.find_one()) == ["_id", "x"]


def test_insert_many_ordered_stops_at_the_first_duplicate(coll):
    docs = [{"_id": 1}, {"_id": 2}, {"_id": 1}, {"_id": 3}]
    with pytest.raises(BulkWriteError) as err:
        coll.insert_many(docs, ordered=True)
    result = err.value.details
    assert result["nInserted"] == 2
    [write_error] = result["writeErrors"]
    assert write_error["index"] == 2
    assert write_error["code"] == 11000
    assert sorted(d["_id"] for d in coll.find()) == [1, 2]


def test_insert_many_unordered_reports_every_duplicate(coll):
    docs = [{"_id": 1}, {"_id": 1}, {"_id": 2}, {"_id": 2}, {"_id": 3}]
    with pytest.raises(BulkWriteError) as err:
        coll.insert_many(docs, ordered=False)
    result = err.value.details
    assert result["nInserted"] == 3
    assert [e["index"] for e in result["writeErrors"]] == [1, 3]
    assert sorted(d["_id"] for d in coll.find()) == [1, 2, 3]


def test_raw_insert_reply_counts_n_before_the_error(client):
    client.test.c.insert_one({"_id": 2})
    reply = client.test.command(
        "insert", "c", documents=[{"_id": 1}, {"_id": 2}, {"_id": 3}], ordered=True
    )
    assert reply["ok"] == 1.0  # write errors are not command errors
    assert reply["n"] == 1
    assert reply["writeErrors"][0]["index"] == 1
    assert reply["writeErrors"][0]["keyValue"] == {"_id": 2}


def test_update_one_and_many_report_matched_and_modified(coll):
    coll.insert_many([{"_id": i, "g": i % 2, "v": 0} for i in range(4)])
    r = coll.update_one({"_id": 0}, {"$set": {"v": 1}})
    assert (r.matched_count, r.modified_count, r.upserted_id) == (1, 1, None)
    r = coll.update_many({"g": 1}, {"$set": {"v": 5}})
    assert (r.matched_count, r.modified_count) == (2, 2)
    # Setting a field to its current value matches but does not modify.
    r = coll.update_one({"_id": 0}, {"$set": {"v": 1}})
    assert (r.matched_count, r.modified_count) == (1, 0)
    assert [d["v"] for d in coll.find(sort=[("_id", 1)])] == [1, 5, 0, 5]


def test_replace_one_keeps_the_id_and_the_given_field_order(coll):
    coll.insert_one({"_id": 1, "a": 1, "b": 2})
    r = coll.replace_one({"_id": 1}, {"z": 1, "y": 2})
    assert r.modified_count == 1
    assert list(coll.find_one({"_id": 1}).items()) == [("_id", 1), ("z", 1), ("y", 2)]


def test_upsert_inserts_from_the_query_equalities(coll):
    r = coll.update_one({"name": "ann", "age": {"$gt": 3}}, {"$set": {"city": "x"}}, upsert=True)
    assert r.matched_count == 0
    assert r.upserted_id is not None
    doc = coll.find_one({"_id": r.upserted_id})
    assert doc == {"_id": r.upserted_id, "name": "ann", "city": "x"}


def test_upsert_with_id_in_query_and_replacement(coll):
    r = coll.replace_one({"_id": 9}, {"v": 1}, upsert=True)
    assert r.upserted_id == 9
    assert coll.find_one({"_id": 9}) == {"_id": 9, "v": 1}


def test_raw_update_reply_for_an_upsert(client):
    reply = client.test.command(
        "update", "c", updates=[{"q": {"_id": 3}, "u": {"$set": {"a": 1}}, "upsert": True}]
    )
    assert reply["n"] == 1
    assert reply["nModified"] == 0
    assert reply["upserted"] == [{"index": 0, "_id": 3}]


def test_delete_one_and_many(coll):
    coll.insert_many([{"_id": i, "g": i % 2} for i in range(5)])
    assert coll.delete_one({"g": 0}).deleted_count == 1
    assert coll.delete_many({"g": 1}).deleted_count == 2
    assert coll.delete_many({"g": 7}).deleted_count == 0
    assert sorted(d["_id"] for d in coll.find()) == [2, 4]


def test_find_with_filter_sort_projection_skip_limit(coll):
    coll.insert_many([{"_id": i, "k": i % 3, "v": i * 10, "extra": "x"} for i in range(9)])
    docs = list(
        coll.find({"k": 1}, {"v": 1, "_id": 0}).sort("v", pymongo.DESCENDING).skip(1).limit(2)
    )
    assert docs == [{"v": 40}, {"v": 10}]


def test_find_without_sort_returns_insertion_order(coll):
    coll.insert_many([{"_id": x} for x in (5, 1, 3)])
    assert [d["_id"] for d in coll.find()] == [5, 1, 3]


def test_batch_size_forces_get_more(client, coll):
    coll.insert_many([{"_id": i} for i in range(10)])
    reply = client.test.command("find", "items", batchSize=3)
    first = reply["cursor"]
    assert len(first["firstBatch"]) == 3
    assert first["id"] != 0
    assert first["ns"] == "test.items"
    more = client.test.command("getMore", first["id"], collection="items", batchSize=4)
    assert [d["_id"] for d in more["cursor"]["nextBatch"]] == [3, 4, 5, 6]
    rest = client.test.command("getMore", first["id"], collection="items")
    assert [d["_id"] for d in rest["cursor"]["nextBatch"]] == [7, 8, 9]
    assert rest["cursor"]["id"] == 0
    with pytest.raises(pymongo.errors.OperationFailure) as err:
        client.test.command("getMore", first["id"], collection="items")
    assert err.value.code == 43  # CursorNotFound


def test_driver_cursor_iterates_across_batches(coll):
    coll.insert_many([{"_id": i} for i in range(25)])
    assert [d["_id"] for d in coll.find().batch_size(4)] == list(range(25))


def test_limit_applies_across_batches(coll):
    coll.insert_many([{"_id": i} for i in range(25)])
    assert [d["_id"] for d in coll.find().batch_size(4).limit(10)] == list(range(10))


def test_find_one_and_update_returns_before_or_after(coll):
    coll.insert_one({"_id": 1, "n": 1})
    before = coll.find_one_and_update({"_id": 1}, {"$inc": {"n": 1}})
    assert before == {"_id": 1, "n": 1}
    after = coll.find_one_and_update(
        {"_id": 1}, {"$inc": {"n": 1}}, return_document=ReturnDocument.AFTER
    )
    assert after == {"_id": 1, "n": 3}
    assert coll.find_one_and_update({"_id": 2}, {"$set": {"n": 0}}) is None


def test_find_one_and_update_upsert(coll):
    none = coll.find_one_and_update({"_id": 5}, {"$set": {"n": 1}}, upsert=True)
    assert none is None  # pre-image of an inserted document
    doc = coll.find_one_and_update(
        {"_id": 6}, {"$set": {"n": 2}}, upsert=True, return_document=ReturnDocument.AFTER
    )
    assert doc == {"_id": 6, "n": 2}


def test_find_one_and_update_sort_picks_the_first(coll):
    coll.insert_many([{"_id": 1, "p": 5}, {"_id": 2, "p": 9}, {"_id": 3, "p": 7}])
    doc = coll.find_one_and_update(
        {}, {"$set": {"taken": True}}, sort=[("p", -1)], return_document=ReturnDocument.AFTER
    )
    assert doc == {"_id": 2, "p": 9, "taken": True}


def test_find_one_and_replace(coll):
    coll.insert_one({"_id": 1, "a": 1})
    before = coll.find_one_and_replace({"_id": 1}, {"b": 2})
    assert before == {"_id": 1, "a": 1}
    after = coll.find_one_and_replace(
        {"_id": 1}, {"c": 3}, return_document=ReturnDocument.AFTER
    )
    assert after == {"_id": 1, "c": 3}


def test_find_one_and_delete(coll):
    coll.insert_many([{"_id": 1, "p": 1}, {"_id": 2, "p": 2}])
    assert coll.find_one_and_delete({}, sort=[("p", -1)]) == {"_id": 2, "p": 2}
    assert coll.find_one_and_delete({"_id": 99}) is None
    assert list(coll.find()) == [{"_id": 1, "p": 1}]


def test_raw_find_and_modify_reply_shape(client):
    client.test.c.insert_one({"_id": 1, "x": 1})
    reply = client.test.command(
        "findAndModify", "c", query={"_id": 1}, update={"$set": {"x": 2}}
    )
    assert reply["lastErrorObject"] == {"n": 1, "updatedExisting": True}
    assert reply["value"] == {"_id": 1, "x": 1}
    missing = client.test.command("findAndModify", "c", query={"_id": 2}, remove=True)
    assert missing["lastErrorObject"] == {"n": 0}
    assert missing["value"] is None


def test_count_documents_and_estimated_document_count(coll):
    coll.insert_many([{"_id": i, "even": i % 2 == 0} for i in range(7)])
    assert coll.count_documents({}) == 7
    assert coll.count_documents({"even": True}) == 4
    assert coll.count_documents({"even": True}, skip=1, limit=2) == 2
    assert coll.count_documents({"_id": {"$gte": 5}}) == 2
    assert coll.estimated_document_count() == 7
    assert coll.database.missing.count_documents({}) == 0
    assert coll.database.missing.estimated_document_count() == 0


def test_distinct_unwinds_arrays_and_dedups_numbers(coll):
    coll.insert_many([
        {"t": ["a", "b"]}, {"t": "a"}, {"t": 1}, {"t": 1.0}, {"t": None}, {"u": 1},
    ])
    values = coll.distinct("t")
    assert len(values) == 4
    assert set(map(repr, values)) >= {"'a'", "'b'", "None"}
    assert sorted(coll.distinct("t", {"t": "b"})) == ["a", "b"]


def test_aggregate_match_sort_skip_limit_project(coll):
    coll.insert_many([{"_id": i, "k": i % 2, "v": i} for i in range(10)])
    out = list(coll.aggregate([
        {"$match": {"k": 0}},
        {"$sort": {"v": -1}},
        {"$skip": 1},
        {"$limit": 2},
        {"$project": {"_id": 0, "v": 1}},
    ]))
    assert out == [{"v": 6}, {"v": 4}]


def test_aggregate_count(coll):
    coll.insert_many([{"k": i % 3} for i in range(10)])
    assert list(coll.aggregate([{"$match": {"k": 0}}, {"$count": "total"}])) == [{"total": 4}]
    assert list(coll.aggregate([{"$match": {"k": 9}}, {"$count": "total"}])) == []


def test_aggregate_group_sum(coll):
    coll.insert_many([
        {"cat": "a", "qty": 1}, {"cat": "b", "qty": 5}, {"cat": "a", "qty": 2},
    ])
    out = list(coll.aggregate([
        {"$group": {"_id": "$cat", "total": {"$sum": "$qty"}, "n": {"$sum": 1}}},
        {"$sort": {"_id": 1}},
    ]))
    assert out == [{"_id": "a", "total": 3, "n": 2}, {"_id": "b", "total": 5, "n": 1}]


def test_aggregate_cursor_with_batch_size(coll):
    coll.insert_many([{"_id": i} for i in range(12)])
    out = [d["_id"] for d in coll.aggregate([{"$sort": {"_id": -1}}], batchSize=5)]
    assert out == list(range(11, -1, -1))
