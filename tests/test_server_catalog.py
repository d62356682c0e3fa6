"""Databases, collections and indexes.

References: the enumerate-collections, enumerate-databases and index-management specifications
(mongodb/specifications source/; reply shapes of listCollections, listDatabases, createIndexes,
listIndexes, dropIndexes), SERVER-60064 (7.0 idempotent create), SERVER-43894 (7.0 drop of a
missing collection is ok); mongodb/mongo src/mongo/db/storage/index_entry_comparison.h
(buildDupKeyErrorStatus: the E11000 message with keyPattern/keyValue).
"""

import bson
import pymongo
import pytest
from pymongo.errors import DuplicateKeyError, OperationFailure


def test_create_lists_the_collection_with_its_uuid(client):
    client.test.command("create", "plain")
    [info] = list(client.test.list_collections(filter={"name": "plain"}))
    assert info["name"] == "plain"
    assert info["type"] == "collection"
    assert info["options"] == {}
    assert info["info"]["readOnly"] is False
    uuid = info["info"]["uuid"]
    assert isinstance(uuid, bson.Binary) and uuid.subtype == 4
    assert info["idIndex"] == {"v": 2, "key": {"_id": 1}, "name": "_id_"}
    assert client.test.list_collection_names() == ["plain"]


def test_create_capped_collection_keeps_its_options(client):
    client.test.create_collection("capped", capped=True, size=4096, max=3)
    assert client.test.capped.options() == {"capped": True, "size": 4096, "max": 3}
    # A capped collection keeps at most `max` documents, dropping the oldest.
    client.test.capped.insert_many([{"_id": i} for i in range(5)])
    assert [d["_id"] for d in client.test.capped.find()] == [2, 3, 4]


def test_create_existing_collection_same_options_is_ok_different_options_fail(client):
    client.test.command("create", "c")
    assert client.test.command("create", "c")["ok"] == 1.0  # 7.0+: identical options succeed
    with pytest.raises(OperationFailure) as err:
        client.test.command("create", "c", capped=True, size=4096)
    assert err.value.code == 48  # NamespaceExists


def test_drop_collection_and_missing_collection(client):
    client.test.c.insert_one({"x": 1})
    reply = client.test.command("drop", "c")
    assert reply["ok"] == 1.0
    assert reply["nIndexesWas"] == 1
    assert "c" not in client.test.list_collection_names()
    # Dropping a collection that does not exist is not an error in 7.0.
    assert client.test.command("drop", "c")["ok"] == 1.0


def test_drop_database_removes_all_its_collections(client):
    client.shop.a.insert_one({})
    client.shop.b.insert_one({})
    client.other.keep.insert_one({})
    client.drop_database("shop")
    assert "shop" not in client.list_database_names()
    assert client.shop.list_collection_names() == []
    assert len(list(client.other.keep.find())) == 1


def test_list_databases(client):
    client.test.c.insert_one({"x": 1})
    names = client.list_database_names()
    assert "test" in names
    assert "local" in names  # holds oplog.rs
    full = {d["name"]: d for d in client.list_databases()}
    assert full["test"]["empty"] is False
    assert isinstance(full["test"]["sizeOnDisk"], int)


def test_rename_collection_keeps_documents_and_uuid(client):
    client.test.a.insert_many([{"_id": 1}, {"_id": 2}])
    uuid = _uuid(client, "a")
    client.test.a.rename("b")
    assert client.test.list_collection_names() == ["b"]
    assert [d["_id"] for d in client.test.b.find()] == [1, 2]
    assert _uuid(client, "b") == uuid


def _uuid(client, name):
    [info] = list(client.test.list_collections(filter={"name": name}))
    return info["info"]["uuid"]


def test_rename_onto_existing_collection_needs_drop_target(client):
    client.test.a.insert_one({"_id": "a"})
    client.test.b.insert_one({"_id": "b"})
    with pytest.raises(OperationFailure) as err:
        client.test.a.rename("b")
    assert err.value.code == 48  # NamespaceExists
    client.test.a.rename("b", dropTarget=True)
    assert list(client.test.b.find()) == [{"_id": "a"}]


def test_list_indexes_starts_with_the_id_index(client):
    client.test.c.insert_one({})
    client.test.c.create_index("email", unique=True)
    specs = list(client.test.c.list_indexes())
    assert [s["name"] for s in specs] == ["_id_", "email_1"]
    assert specs[0]["key"] == {"_id": 1}
    assert specs[1]["key"] == {"email": 1}
    assert specs[1]["unique"] is True
    assert specs[1]["v"] == 2


def test_list_indexes_on_missing_collection_is_namespace_not_found(client):
    with pytest.raises(OperationFailure) as err:
        client.test.command("listIndexes", "missing")
    assert err.value.code == 26
    assert list(client.test.missing.list_indexes()) == []  # PyMongo hides the 26


def test_create_indexes_reply_and_idempotence(client):
    reply = client.test.command(
        "createIndexes", "c", indexes=[{"key": {"a": 1}, "name": "a_1"}]
    )
    assert reply["numIndexesBefore"] == 1
    assert reply["numIndexesAfter"] == 2
    assert reply["createdCollectionAutomatically"] is True
    again = client.test.command("createIndexes", "c", indexes=[{"key": {"a": 1}, "name": "a_1"}])
    assert again["numIndexesBefore"] == again["numIndexesAfter"] == 2
    assert again["note"] == "all indexes already exist"


def test_unique_index_rejects_duplicates_with_mongodb_error_shape(client):
    users = client.test.users
    users.create_index("email", unique=True)
    users.insert_one({"_id": 1, "email": "a@x"})
    with pytest.raises(DuplicateKeyError) as err:
        users.insert_one({"_id": 2, "email": "a@x"})
    details = err.value.details
    assert err.value.code == 11000
    assert details["errmsg"] == (
        'E11000 duplicate key error collection: test.users index: email_1 dup key: { email: "a@x" }'
    )
    assert details["keyPattern"] == {"email": 1}
    assert details["keyValue"] == {"email": "a@x"}
    assert len(list(users.find())) == 1


def test_unique_index_on_existing_duplicates_fails(client):
    client.test.c.insert_many([{"a": 1}, {"a": 1}])
    with pytest.raises(OperationFailure) as err:
        client.test.c.create_index("a", unique=True)
    assert err.value.code == 11000
    assert [i["name"] for i in client.test.c.list_indexes()] == ["_id_"]


def test_duplicate_id_error_message(client):
    client.test.c.insert_one({"_id": 1})
    with pytest.raises(DuplicateKeyError) as err:
        client.test.c.insert_one({"_id": 1})
    assert err.value.details["errmsg"] == (
        "E11000 duplicate key error collection: test.c index: _id_ dup key: { _id: 1 }"
    )
    assert err.value.details["keyPattern"] == {"_id": 1}
    assert err.value.details["keyValue"] == {"_id": 1}


def test_drop_indexes(client):
    c = client.test.c
    c.create_index("a")
    c.create_index([("b", pymongo.DESCENDING)])
    c.drop_index("a_1")
    assert [i["name"] for i in c.list_indexes()] == ["_id_", "b_-1"]
    with pytest.raises(OperationFailure) as err:
        c.drop_index("nope_1")
    assert err.value.code == 27  # IndexNotFound
    c.drop_indexes()
    assert [i["name"] for i in c.list_indexes()] == ["_id_"]
