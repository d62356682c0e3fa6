"""The oplog (`local.oplog.rs`) as MongoDB 7.0 writes it, one entry kind at a time.

References (mongodb/mongo): src/mongo/db/repl/oplog_entry.idl (common fields; 5.0–7.0 field
order `[lsid, txnNumber,] op, ns, ui, o, [o2,] ts, t, v, wall [, stmtId, prevOpTime]`),
SERVER-91730 (o2 = {_id} on 7.0 inserts); src/mongo/db/op_observer/op_observer_impl.cpp
(inserts with an implicit create first, replacement updates, deletes, create/drop/dropDatabase/
renameCollection/index builds, a committed transaction as one applyOps, no entry for a no-op
update); the MongoDB developer documentation "Understanding the Oplog"; retryable writes (lsid
{id, uid}, txnNumber, stmtId, prevOpTime chain) from jstests/sharding/session_info_in_oplog.js.
"""

import hashlib

import bson
import pytest
from bson import Int64, SON, Timestamp
from pymongo import WriteConcern

from conftest import (
    BSON_BINARY, BSON_DATETIME, BSON_DOCUMENT, BSON_INT32, BSON_INT64, BSON_STRING,
    BSON_TIMESTAMP, element_types, entries_after, last_ts, oplog, raw_entries_after,
    without_volatile,
)

CRUD_ORDER = ["op", "ns", "ui", "o", "o2", "ts", "t", "v", "wall"]
NULL_OPTIME = {"ts": Timestamp(0, 0), "t": -1}
UNAUTHENTICATED_UID = hashlib.sha256(b"").digest()


def collection_uuid(client, db, name):
    [info] = list(client[db].list_collections(filter={"name": name}))
    return info["info"]["uuid"]


def test_first_entry_of_a_new_set_is_initiating_set(client):
    first = oplog(client).find_one({}, sort=[("$natural", 1)])
    assert first["op"] == "n"
    assert first["ns"] == ""
    assert first["o"] == {"msg": "initiating set"}


def test_insert_into_new_collection_logs_create_then_insert(plain_client):
    client = plain_client
    start = last_ts(client)
    client.test.c.insert_one({"_id": 1, "s": "other thing", "n": 1})
    create, insert = entries_after(client, start)
    uuid = collection_uuid(client, "test", "c")

    assert list(create) == ["op", "ns", "ui", "o", "ts", "t", "v", "wall"]
    assert without_volatile(create) == {
        "op": "c", "ns": "test.$cmd",
        "o": {"create": "c", "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}},
        "t": 1, "v": 2,
    }
    assert create["ui"] == uuid

    # An insert entry as MongoDB 7.0 logs it (fields of src/mongo/db/repl/oplog_entry.idl, o2
    # since SERVER-91730), modulo ids and times.
    assert list(insert) == CRUD_ORDER
    assert without_volatile(insert) == {
        "op": "i", "ns": "test.c",
        "o": {"_id": 1, "s": "other thing", "n": 1}, "o2": {"_id": 1},
        "t": 1, "v": 2,
    }
    assert insert["ui"] == uuid
    assert list(insert["o"]) == ["_id", "s", "n"]


def test_insert_entry_bson_types(plain_client):
    client = plain_client
    client.test.c.insert_one({"_id": 0})
    start = last_ts(client)
    client.test.c.insert_one({"_id": 1})
    [raw] = raw_entries_after(client, start)
    assert element_types(raw) == [
        ("op", BSON_STRING), ("ns", BSON_STRING), ("ui", BSON_BINARY), ("o", BSON_DOCUMENT),
        ("o2", BSON_DOCUMENT), ("ts", BSON_TIMESTAMP), ("t", BSON_INT64), ("v", BSON_INT64),
        ("wall", BSON_DATETIME),
    ]
    decoded = bson.decode(raw.raw)
    assert decoded["ui"].subtype == 4  # a UUID


def test_generated_id_is_first_in_o(client):
    start = last_ts(client)
    client.test.command("insert", "c", documents=[SON([("x", 1)])])
    insert = [e for e in entries_after(client, start) if e["op"] == "i"][0]
    assert list(insert["o"]) == ["_id", "x"]
    assert isinstance(insert["o"]["_id"], bson.ObjectId)
    assert insert["o2"] == {"_id": insert["o"]["_id"]}


def test_insert_many_logs_one_entry_per_document_with_increasing_ts(plain_client):
    client = plain_client
    client.test.c.insert_one({"_id": 0})
    start = last_ts(client)
    client.test.c.insert_many([{"_id": 1}, {"_id": 2}, {"_id": 3}])
    entries = entries_after(client, start)
    assert [(e["op"], e["o"]) for e in entries] == [("i", {"_id": i}) for i in (1, 2, 3)]
    stamps = [e["ts"] for e in entries]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3


def test_replacement_update_logs_the_full_document(plain_client):
    client = plain_client
    client.test.c.insert_one({"_id": 1, "a": 1})
    start = last_ts(client)
    client.test.c.replace_one({"_id": 1}, {"b": 2})
    [update] = entries_after(client, start)
    assert list(update) == CRUD_ORDER
    assert without_volatile(update) == {
        "op": "u", "ns": "test.c", "o": {"_id": 1, "b": 2}, "o2": {"_id": 1}, "t": 1, "v": 2,
    }
    assert "$v" not in update["o"]


def test_modifier_update_logs_a_v2_delta(plain_client):
    client = plain_client
    client.test.c.insert_one({"_id": 1, "a": 1})
    start = last_ts(client)
    client.test.c.update_one({"_id": 1}, {"$set": {"a": 2}})
    [update] = entries_after(client, start)
    assert list(update) == CRUD_ORDER
    assert without_volatile(update) == {
        "op": "u", "ns": "test.c", "o": {"$v": 2, "diff": {"u": {"a": 2}}}, "o2": {"_id": 1},
        "t": 1, "v": 2,
    }
    assert list(update["o"]) == ["$v", "diff"]


def test_upsert_that_inserts_is_logged_as_an_insert(plain_client):
    client = plain_client
    client.test.c.insert_one({"_id": 0})
    start = last_ts(client)
    client.test.c.update_one({"_id": 20}, {"$set": {"y": 1}}, upsert=True)
    [entry] = entries_after(client, start)
    assert entry["op"] == "i"
    assert entry["o"] == {"_id": 20, "y": 1}
    assert entry["o2"] == {"_id": 20}


def test_delete_logs_the_id_without_o2(plain_client):
    client = plain_client
    client.test.c.insert_many([{"_id": 1, "x": "big"}, {"_id": 2}])
    start = last_ts(client)
    client.test.c.delete_one({"_id": 1})
    [delete] = entries_after(client, start)
    assert list(delete) == ["op", "ns", "ui", "o", "ts", "t", "v", "wall"]
    assert without_volatile(delete) == {"op": "d", "ns": "test.c", "o": {"_id": 1}, "t": 1, "v": 2}
    assert delete["ui"] == collection_uuid(client, "test", "c")


def test_no_entry_for_an_update_that_changes_nothing(plain_client):
    client = plain_client
    client.test.c.insert_one({"_id": 1, "a": 1})
    start = last_ts(client)
    assert client.test.c.update_one({"_id": 1}, {"$set": {"a": 1}}).modified_count == 0
    assert client.test.c.update_one({"_id": 99}, {"$set": {"a": 1}}).matched_count == 0
    client.test.c.replace_one({"_id": 1}, {"a": 1})
    assert entries_after(client, start) == []


def test_drop_logs_num_records(plain_client):
    client = plain_client
    client.test.c.insert_many([{"_id": 1}, {"_id": 2}])
    uuid = collection_uuid(client, "test", "c")
    start = last_ts(client)
    client.test.c.drop()
    [drop] = entries_after(client, start)
    assert list(drop) == ["op", "ns", "ui", "o", "o2", "ts", "t", "v", "wall"]
    assert without_volatile(drop) == {
        "op": "c", "ns": "test.$cmd", "o": {"drop": "c"}, "o2": {"numRecords": 2}, "t": 1, "v": 2,
    }
    assert drop["ui"] == uuid


def test_explicit_capped_create_logs_its_options(plain_client):
    client = plain_client
    start = last_ts(client)
    client.test.create_collection("cap", capped=True, size=4096)
    [create] = entries_after(client, start)
    assert create["op"] == "c"
    assert create["o"]["create"] == "cap"
    assert create["o"]["capped"] is True
    assert create["o"]["size"] == 4096
    assert create["o"]["idIndex"] == {"v": 2, "key": {"_id": 1}, "name": "_id_"}
    assert list(create["o"])[0] == "create" and list(create["o"])[-1] == "idIndex"


def test_create_index_on_empty_collection_logs_create_indexes(plain_client):
    client = plain_client
    client.test.command("create", "c")
    uuid = collection_uuid(client, "test", "c")
    start = last_ts(client)
    client.test.c.create_index("baz")
    [entry] = entries_after(client, start)
    # Captured [OPLOGDOC] shape: o = {createIndexes: <coll>} + the index spec.
    assert without_volatile(entry) == {
        "op": "c", "ns": "test.$cmd",
        "o": {"createIndexes": "c", "v": 2, "key": {"baz": 1}, "name": "baz_1"},
        "t": 1, "v": 2,
    }
    assert list(entry["o"]) == ["createIndexes", "v", "key", "name"]
    assert entry["ui"] == uuid


def test_create_index_on_non_empty_collection_is_a_two_phase_build(plain_client):
    client = plain_client
    client.test.c.insert_one({"a": 1})
    start = last_ts(client)
    client.test.c.create_index("a", unique=True)
    entries = entries_after(client, start)
    assert [list(e["o"])[0] for e in entries] == ["startIndexBuild", "commitIndexBuild"]
    start_build, commit = entries
    spec = {"v": 2, "key": {"a": 1}, "name": "a_1", "unique": True}
    assert start_build["o"] == {
        "startIndexBuild": "c", "indexBuildUUID": start_build["o"]["indexBuildUUID"],
        "indexes": [spec],
    }
    assert commit["o"] == {
        "commitIndexBuild": "c", "indexBuildUUID": start_build["o"]["indexBuildUUID"],
        "indexes": [spec],
    }
    assert start_build["o"]["indexBuildUUID"].subtype == 4


def test_drop_index_logs_the_spec_in_o2(plain_client):
    client = plain_client
    client.test.command("create", "c")
    client.test.c.create_index("a")
    start = last_ts(client)
    client.test.c.drop_index("a_1")
    [entry] = entries_after(client, start)
    assert entry["o"] == {"dropIndexes": "c", "index": "a_1"}
    assert entry["o2"] == {"v": 2, "key": {"a": 1}, "name": "a_1"}


def test_rename_collection_entry(plain_client):
    client = plain_client
    client.test.a.insert_one({"_id": 1})
    uuid = collection_uuid(client, "test", "a")
    start = last_ts(client)
    client.test.a.rename("b")
    [entry] = entries_after(client, start)
    assert without_volatile(entry) == {
        "op": "c", "ns": "test.$cmd",
        "o": {"renameCollection": "test.a", "to": "test.b", "stayTemp": False},
        "t": 1, "v": 2,
    }
    assert entry["ui"] == uuid


def test_rename_collection_with_drop_target(plain_client):
    client = plain_client
    client.test.a.insert_one({"_id": 1})
    client.test.b.insert_many([{"_id": 1}, {"_id": 2}, {"_id": 3}])
    source, target = collection_uuid(client, "test", "a"), collection_uuid(client, "test", "b")
    start = last_ts(client)
    client.test.a.rename("b", dropTarget=True)
    [entry] = entries_after(client, start)
    assert entry["ui"] == source
    assert entry["o"] == {
        "renameCollection": "test.a", "to": "test.b", "stayTemp": False, "dropTarget": target,
    }
    assert entry["o2"] == {"numRecords": 3}


def test_drop_database_logs_drops_then_drop_database(plain_client):
    client = plain_client
    client.shop.a.insert_one({})
    client.shop.b.insert_many([{}, {}])
    start = last_ts(client)
    client.drop_database("shop")
    entries = entries_after(client, start, db="shop")
    *drops, last = entries
    assert sorted((d["o"]["drop"], d["o2"]["numRecords"]) for d in drops) == [("a", 1), ("b", 2)]
    assert all(d["ns"] == "shop.$cmd" for d in drops)
    assert without_volatile(last) == {
        "op": "c", "ns": "shop.$cmd", "o": {"dropDatabase": 1}, "t": 1, "v": 2,
    }
    assert "ui" not in last


def test_retryable_insert_carries_session_fields_and_a_prev_op_time_chain(client):
    client.test.c.insert_one({"_id": 0})  # create the collection first
    start = last_ts(client)
    with client.start_session() as session:
        client.test.c.insert_many([{"_id": 1}, {"_id": 2}], session=session)
        lsid = session.session_id
    first, second = entries_after(client, start)
    order = ["lsid", "txnNumber", "op", "ns", "ui", "o", "o2", "ts", "t", "v", "wall",
             "stmtId", "prevOpTime"]
    assert list(first) == order and list(second) == order
    assert first["lsid"] == {"id": lsid["id"], "uid": UNAUTHENTICATED_UID}
    assert list(first["lsid"]) == ["id", "uid"]
    assert first["txnNumber"] == second["txnNumber"]
    assert (first["stmtId"], second["stmtId"]) == (0, 1)
    assert first["prevOpTime"] == NULL_OPTIME
    assert second["prevOpTime"] == {"ts": first["ts"], "t": 1}
    assert (first["o"], second["o"]) == ({"_id": 1}, {"_id": 2})


def test_retryable_entry_bson_types(client):
    client.test.c.insert_one({"_id": 0})
    start = last_ts(client)
    client.test.c.insert_one({"_id": 1})
    [raw] = raw_entries_after(client, start)
    types = dict(element_types(raw))
    assert types["txnNumber"] == BSON_INT64
    assert types["stmtId"] == BSON_INT32
    prev = bson.decode(raw.raw)["prevOpTime"]
    assert isinstance(prev["t"], Int64) and prev["t"] == -1
    uid = bson.decode(raw.raw)["lsid"]["uid"]
    assert isinstance(uid, bytes) and len(uid) == 32  # BinData subtype 0 decodes to bytes


def test_multi_update_is_not_retryable(client):
    client.test.c.insert_many([{"_id": 1}, {"_id": 2}])
    start = last_ts(client)
    client.test.c.update_many({}, {"$set": {"x": 1}})
    entries = entries_after(client, start)
    assert len(entries) == 2
    assert all("lsid" not in e and "txnNumber" not in e for e in entries)


def test_committed_transaction_is_one_apply_ops_entry(client):
    client.test.c.insert_one({"_id": 1, "x": 1})
    uuid = collection_uuid(client, "test", "c")
    start = last_ts(client)
    with client.start_session() as session:
        def txn(s):
            client.test.c.insert_one({"_id": 2, "y": 1}, session=s)
            client.test.c.update_one({"_id": 1}, {"$set": {"x": 2}}, session=s)
            client.test.c.delete_one({"_id": 2}, session=s)
        session.with_transaction(txn)
        lsid = session.session_id
    [entry] = entries_after(client, start)
    assert list(entry) == ["lsid", "txnNumber", "op", "ns", "o", "ts", "t", "v", "wall",
                           "prevOpTime"]
    assert entry["op"] == "c"
    assert entry["ns"] == "admin.$cmd"
    assert entry["lsid"] == {"id": lsid["id"], "uid": UNAUTHENTICATED_UID}
    assert entry["prevOpTime"] == NULL_OPTIME
    assert isinstance(entry["txnNumber"], Int64)
    assert list(entry["o"]) == ["applyOps"]
    assert entry["o"]["applyOps"] == [
        {"op": "i", "ns": "test.c", "ui": uuid, "o": {"_id": 2, "y": 1}, "o2": {"_id": 2}},
        {"op": "u", "ns": "test.c", "ui": uuid, "o": {"$v": 2, "diff": {"u": {"x": 2}}},
         "o2": {"_id": 1}},
        {"op": "d", "ns": "test.c", "ui": uuid, "o": {"_id": 2}},
    ]
    for inner in entry["o"]["applyOps"]:
        assert not {"ts", "t", "v", "wall"} & set(inner)
        assert list(inner)[:4] == ["op", "ns", "ui", "o"]


def test_aborted_transaction_writes_nothing(client):
    client.test.c.insert_one({"_id": 1})
    start = last_ts(client)
    with client.start_session() as session:
        session.start_transaction()
        client.test.c.insert_one({"_id": 2}, session=session)
        client.test.c.update_one({"_id": 1}, {"$set": {"x": 1}}, session=session)
        session.abort_transaction()
    assert entries_after(client, start) == []
    assert list(client.test.c.find()) == [{"_id": 1}]


def test_timestamps_strictly_increase(client):
    for i in range(30):
        client.test.c.insert_one({"_id": i})
        client.test.c.update_one({"_id": i}, {"$set": {"x": i}})
    stamps = [e["ts"] for e in oplog(client).find()]
    assert all(a < b for a, b in zip(stamps, stamps[1:]))
    # Timestamps are (wall-clock seconds, increment): seconds are close to the entry's wall time.
    last = oplog(client).find_one({}, sort=[("$natural", -1)])
    assert abs(last["ts"].time - last["wall"].timestamp()) < 5


def test_unacknowledged_write_is_logged_too(client):
    client.test.c.insert_one({"_id": 0})
    start = last_ts(client)
    client.test.get_collection("c", write_concern=WriteConcern(w=0)).insert_one({"_id": 1})
    import time
    deadline = time.monotonic() + 5
    while not entries_after(client, start):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [entry] = entries_after(client, start)
    assert entry["o"] == {"_id": 1}
    assert "lsid" not in entry


def test_the_oplog_cannot_be_written_by_clients(client):
    import pymongo.errors
    with pytest.raises(pymongo.errors.OperationFailure):
        client.local["oplog.rs"].insert_one({"op": "n"})


def test_writes_to_the_local_database_are_never_logged(plain_client):
    # mongod never replicates `local` (each member's own database).
    before = last_ts(plain_client)
    local = plain_client.local
    local.scratch.insert_one({"_id": 1})
    local.scratch.update_one({"_id": 1}, {"$set": {"a": 1}})
    local.scratch.create_index("a")
    local.scratch.delete_one({"_id": 1})
    local.create_collection("other")
    local.other.drop()
    local.scratch.drop()
    plain_client.test.after_local.insert_one({"_id": 1})  # a write that is logged, as a marker
    entries = entries_after(plain_client, before, db=None)
    assert all(not e["ns"].startswith("local.") for e in entries), entries
    assert [e["ns"] for e in entries if e["op"] == "i"] == ["test.after_local"]
