"""Commands and options drivers' own test suites rely on, checked against mongod's behaviour:
killAllSessions, $listLocalSessions, unsatisfiable write concerns, strict update/delete
statements, hint/min/max, explain, validate, and `_id` storage rules (MongoDB 5.0+).
"""

from __future__ import annotations

import os

import pymongo
import pytest
from bson import Binary, Int64
from pymongo.errors import OperationFailure, WriteConcernError, WriteError
from pymongo.write_concern import WriteConcern


def test_kill_all_sessions_aborts_open_transactions(client):
    coll = client.t.c
    coll.insert_one({"_id": 0})
    with client.start_session() as s:
        s.start_transaction()
        coll.update_one({"_id": 0}, {"$set": {"x": 1}}, session=s)
        assert client.admin.command("killAllSessions", [])["ok"] == 1
        # The transaction is gone: its commit fails and its write never shows.
        with pytest.raises(OperationFailure) as e:
            s.commit_transaction()
        assert e.value.code == 251
    assert coll.find_one() == {"_id": 0}
    with pytest.raises(OperationFailure) as e:
        client.admin.command("killAllSessions", "everyone")
    assert e.value.code == 14


def test_list_local_sessions(client):
    with client.start_session() as s:
        client.t.command("ping", session=s)
        sessions = list(client.admin.aggregate([{"$listLocalSessions": {}}]))
        ids = [d["_id"]["id"] for d in sessions]
        assert s.session_id["id"] in ids
        mine = next(d for d in sessions if d["_id"]["id"] == s.session_id["id"])
        assert isinstance(mine["_id"]["uid"], bytes) and len(mine["_id"]["uid"]) == 32
        assert "lastUse" in mine
        # Any database with {aggregate: 1}; never on a collection.
        assert list(client.t.aggregate([{"$listLocalSessions": {"allUsers": True}}, {"$limit": 1}]))
        with pytest.raises(OperationFailure) as e:
            list(client.t.c.aggregate([{"$listLocalSessions": {}}]))
        assert e.value.code == 73
        for bad in ({"allUsers": 1}, {"nonsense": True}, "x"):
            with pytest.raises(OperationFailure):
                list(client.admin.aggregate([{"$listLocalSessions": bad}]))


def test_unsatisfiable_write_concern_is_a_write_concern_error(client):
    for w, code in ((2, 100), (50, 100), ("nosuchtag", 79)):
        coll = client.t.get_collection("c", write_concern=WriteConcern(w=w))
        with pytest.raises(WriteConcernError) as e:
            coll.insert_one({"w": str(w)})
        assert e.value.code == code
        assert e.value.details["errInfo"]["writeConcern"]["w"] == w
    # The writes themselves were done, and w: 1 / majority are fine.
    assert client.t.c.count_documents({}) == 3
    client.t.get_collection("c", write_concern=WriteConcern(w="majority")).insert_one({})
    with pytest.raises(WriteConcernError):
        client.t.get_collection("c", write_concern=WriteConcern(w=2)).drop()
    assert "c" not in client.t.list_collection_names()


def test_update_and_delete_statements_are_strict(client):
    client.t.c.insert_many([{"_id": 1}, {"_id": 2}])
    with pytest.raises(OperationFailure) as e:
        client.t.command({"update": "c", "updates": [{"q": {}, "u": {"$set": {"x": 1}}, "sort": {"_id": -1}}]})
    assert e.value.code == 40415 and "update.updates.sort" in str(e.value)
    with pytest.raises(OperationFailure) as e:
        client.t.command({"delete": "c", "deletes": [{"q": {}, "limit": 1, "bogus": 1}]})
    assert e.value.code == 40415
    # Nothing ran: a statement that does not parse fails the whole command.
    assert client.t.c.count_documents({"x": 1}) == 0 and client.t.c.count_documents({}) == 2


def test_hint_orders_by_the_index_and_must_name_one(client):
    c = client.t.c
    c.insert_many([{"num": i, "foo": i % 3} for i in range(10)])
    c.create_index([("num", pymongo.DESCENDING)])
    assert next(c.find())["num"] == 0
    assert next(c.find().hint([("num", pymongo.DESCENDING)]))["num"] == 9
    assert next(c.find().hint("num_-1"))["num"] == 9
    assert next(c.find().hint([("$natural", -1)]))["num"] == 9
    assert [d["num"] for d in c.find().hint("_id_")][:2] == [0, 1]
    for hint in ([("foo", 1)], "nope"):
        with pytest.raises(OperationFailure) as e:
            list(c.find().hint(hint))
        assert e.value.code == 2


def test_min_max_need_a_matching_hint(client):
    c = client.t.c
    c.insert_many([{"j": j, "k": j} for j in range(10)])
    c.create_index([("j", 1)])
    c.create_index([("j", 1), ("k", 1)])
    assert len(list(c.find().min([("j", 3)]).hint([("j", 1)]))) == 7
    assert len(list(c.find().max([("j", 3)]).hint([("j", 1)]))) == 3
    assert [d["j"] for d in c.find().min([("j", 2), ("k", 2)]).max([("j", 5), ("k", 5)]).hint([("j", 1), ("k", 1)])] == [2, 3, 4]
    with pytest.raises(OperationFailure) as e:
        client.t.command({"find": "c", "min": {"j": 3}})  # drivers refuse this before sending
    assert e.value.code == 51173
    with pytest.raises(OperationFailure) as e:
        list(c.find().min([("k", 3), ("j", 3)]).hint([("j", 1), ("k", 1)]))
    assert e.value.code == 51174
    c.create_index([("d", -1)])
    c.insert_many([{"d": d} for d in range(5)])
    # Descending key order from 3 down; documents without `d` have the key null, lowest of all.
    assert [x.get("d") for x in c.find().min([("d", 3)]).hint([("d", -1)])] == [3, 2, 1, 0] + [None] * 10


def test_explain(client):
    c = client.t.c
    c.insert_many([{"x": i} for i in range(5)])
    e = c.find({"x": {"$gt": 2}}).explain()
    assert e["queryPlanner"]["namespace"] == "t.c"
    assert e["queryPlanner"]["winningPlan"]["stage"] == "COLLSCAN"
    assert e["executionStats"]["nReturned"] == 2
    assert e["command"]["find"] == "c"
    planner_only = client.t.command({"explain": {"find": "c"}, "verbosity": "queryPlanner"})
    assert "executionStats" not in planner_only
    agg = client.t.command({"explain": {"aggregate": "c", "pipeline": [{"$match": {"x": 1}}], "cursor": {}}})
    assert agg["executionStats"]["nReturned"] == 1
    # Explaining a write never writes.
    upd = client.t.command({"explain": {"update": "c", "updates": [{"q": {}, "u": {"$set": {"y": 1}}, "multi": True}]}})
    assert upd["queryPlanner"]["winningPlan"]["stage"] == "UPDATE"
    assert c.count_documents({"y": 1}) == 0
    for bad in ({"explain": {"nosuch": "c"}}, {"explain": 1}, {"explain": {"find": "c"}, "verbosity": "loud"}):
        with pytest.raises(OperationFailure):
            client.t.command(bad)


def test_validate(client):
    c = client.t.c
    c.insert_many([{"_id": i, "u": i} for i in range(4)])
    c.create_index("u", unique=True)
    r = client.t.validate_collection("c", full=True)
    assert r["valid"] is True and r["nrecords"] == 4
    assert r["keysPerIndex"] == {"_id_": 4, "u_1": 4}
    with pytest.raises(OperationFailure) as e:
        client.t.validate_collection("missing")
    assert e.value.code == 26
    engine = client.admin.command("serverStatus")["storageEngine"]["name"]
    if engine == "inMemory":  # background validation needs checkpoints, which inMemory lacks
        with pytest.raises(OperationFailure) as e:
            client.t.command("validate", "c", background=True)
        assert e.value.code == 115


@pytest.mark.parametrize("bad_id", [{"$a": 1}, {"x": {"$b": 1}}, {"x": [{"$c": 1}]}])
def test_id_may_not_hold_dollar_prefixed_fields(client, bad_id):
    with pytest.raises(WriteError) as e:
        client.t.c.insert_one({"_id": bad_id})
    assert e.value.code == 52
    assert "_id fields may not contain '$'-prefixed fields" in str(e.value)
    assert client.t.c.count_documents({}) == 0
    # Top-level $-prefixed fields and DBRef fields are allowed (5.0+).
    client.t.c.insert_one({"_id": {"$ref": "x", "$id": 1}, "$top": 1})
    assert client.t.c.find_one()["$top"] == 1


def test_exhaust_get_more_streams_the_batches(mongo_server, client):
    from conftest import RawConnection

    client.t.c.insert_many([{"i": i} for i in range(7)])
    with RawConnection(mongo_server.address) as conn:
        first = conn.command({"find": "c", "batchSize": 2, "$db": "t"})
        cursor_id = first["cursor"]["id"]
        rid = conn.op_msg({"getMore": cursor_id, "collection": "c", "batchSize": 2, "$db": "t"}, flags=1 << 16)
        seen, answering, more = [], rid, True
        while more:
            (_, request_id, response_to, _), flags, doc = conn.read_reply()
            assert response_to == answering  # each reply answers the previous one
            answering = request_id
            more = bool(flags & 2)  # moreToCome until the cursor is exhausted
            seen += [d["i"] for d in doc["cursor"]["nextBatch"]]
        assert doc["cursor"]["id"] == 0
        assert seen == [2, 3, 4, 5, 6]
        assert conn.command({"ping": 1, "$db": "t"})["ok"] == 1  # the connection goes on


def test_exhaust_cursor_through_the_driver(client):
    client.t.c.insert_many([{"i": i} for i in range(150)])
    cur = client.t.c.find(cursor_type=pymongo.CursorType.EXHAUST, batch_size=7)
    assert [d["i"] for d in cur] == list(range(150))


def test_collation_strength_two_ignores_case(client):
    c = client.t.c
    c.insert_many([{"_id": 1, "s": "ping"}, {"_id": 2, "s": "PING"}, {"_id": 3, "s": "Pong"}, {"_id": 4, "s": "péng"}])
    ci = {"locale": "en_US", "strength": 2}
    assert sorted(d["_id"] for d in c.find({"s": "ping"}, collation=ci)) == [1, 2]
    assert [d["_id"] for d in c.find({"s": "ping"})] == [1]  # binary without a collation
    assert c.count_documents({"s": "PING"}, collation=ci) == 2
    assert c.count_documents({"s": "peng"}, collation={"locale": "en", "strength": 1}) == 1
    assert c.count_documents({"s": {"$gt": "PIN", "$lt": "pinh"}}, collation=ci) == 2
    # Sorting: letters before case; lower case first at the default strength 3.
    order = [d["s"] for d in c.find({}, {"_id": 0}, collation={"locale": "en"}).sort("s", 1)]
    assert order == ["péng", "ping", "PING", "Pong"]
    # Statement-level collations of updates and deletes.
    assert c.update_many({"s": "PiNg"}, {"$set": {"hit": True}}, collation=ci).modified_count == 2
    assert c.delete_one({"s": "pong"}, collation=ci).deleted_count == 1
    assert c.find_one_and_update({"s": "PÉNG"}, {"$set": {"x": 1}}, collation={"locale": "en", "strength": 1})["_id"] == 4
    # An empty collation object is no collation.
    assert [d["_id"] for d in c.find({"s": "PING"}, collation={})] == [2]


EMBEDDED_ONLY = pytest.mark.skipif(
    bool(os.environ.get("MMM_TEST_MONGOD")), reason="the embedded server's own limits"
)


@pytest.mark.parametrize(
    "collation",
    [
        {"locale": "en", "strength": 0}, {"strength": 2}, {"locale": 5},
        {"locale": "simple", "strength": 2}, {"locale": "en", "bogus": 1},
        # mongod has these; the embedded server refuses them rather than answer binary.
        pytest.param({"locale": "fr"}, marks=EMBEDDED_ONLY),
        pytest.param({"locale": "en", "numericOrdering": True}, marks=EMBEDDED_ONLY),
    ],
)
def test_collations_not_understood_are_refused(client, collation):
    client.t.c.insert_one({"s": "a"})
    with pytest.raises(OperationFailure):
        client.t.c.find_one({"s": "A"}, collation=collation)
    with pytest.raises(OperationFailure):
        client.t.c.delete_one({"s": "A"}, collation=collation)
    assert client.t.c.count_documents({}) == 1


def test_a_full_batch_leaves_the_cursor_open(client):
    client.t.c.insert_many([{"_id": i} for i in range(2)])
    first = client.t.command({"find": "c", "batchSize": 2})
    assert len(first["cursor"]["firstBatch"]) == 2
    assert first["cursor"]["id"] != 0  # mongod stops at a full batch without looking further
    more = client.t.command({"getMore": first["cursor"]["id"], "collection": "c"})
    assert more["cursor"]["nextBatch"] == [] and more["cursor"]["id"] == 0
    short = client.t.command({"find": "c", "batchSize": 3})
    assert short["cursor"]["id"] == 0


def test_tailable_cursor_skips(client):
    client.t.create_collection("capped", capped=True, size=4096, max=3)
    client.t.capped.insert_many([{"x": i} for i in range(1, 7)])
    for cursor_type in (pymongo.CursorType.TAILABLE, pymongo.CursorType.TAILABLE_AWAIT):
        assert [d["x"] for d in client.t.capped.find(cursor_type=cursor_type).skip(1).limit(1)] == [5]
        assert [d["x"] for d in client.t.capped.find(cursor_type=cursor_type).skip(2)] == [6]


def test_users_info_lists_no_users(client):
    assert client.t.command("usersInfo", "someone")["users"] == []
    assert client.admin.command({"usersInfo": 1})["users"] == []


def test_set_get_unset_field_reach_dotted_and_dollar_names(client):
    c = client.t.c
    c.insert_one({"_id": 1, "foo": {}})
    # MongoDB 5.0+: pipeline updates may store such names through $setField.
    c.update_one({"_id": 1}, [{"$replaceWith": {"$setField": {"field": {"$literal": "$a"}, "value": 1, "input": "$$ROOT"}}}])
    c.update_one({"_id": 1}, [{"$set": {"foo": {"$setField": {"field": "a.b", "value": 2, "input": "$foo"}}}}])
    assert c.find_one() == {"_id": 1, "foo": {"a.b": 2}, "$a": 1}
    got = c.aggregate([{"$project": {
        "_id": 0,
        "top": {"$getField": {"$literal": "$a"}},
        "dotted": {"$getField": {"field": "a.b", "input": "$foo"}},
        "unset": {"$unsetField": {"field": "a.b", "input": "$foo"}},
        "null_input": {"$setField": {"field": "x", "input": None, "value": 1}},
    }}]).next()
    assert got == {"top": 1, "dotted": 2, "unset": {}, "null_input": None}
    for bad in (
        {"$setField": {"field": "$x", "input": "$$ROOT", "value": 1}},  # field must be constant
        {"$setField": {"field": "a", "input": 5, "value": 1}},  # input must be an object
        {"$setField": {"field": "a", "input": "$$ROOT"}},  # value required
        {"$getField": {"field": "a", "bogus": 1}},
        {"$unsetField": "a"},
    ):
        with pytest.raises(OperationFailure):
            list(c.aggregate([{"$project": {"x": bad}}]))


def test_min_max_with_a_sort_on_id(client):
    c = client.t.c
    c.insert_many([{"_id": i, "j": 9 - i} for i in range(10)])
    c.create_index("j")
    got = [d["_id"] for d in c.find().min([("j", 2)]).max([("j", 5)]).hint("j_1").sort("_id", 1)]
    assert got == [5, 6, 7]
