"""Document validators: `$jsonSchema` and query-operator validators, validationLevel,
validationAction, bypassDocumentValidation and collMod. Errors are DocumentValidationFailure
(121) with errInfo {failingDocumentId, details} as mongod 5.0+ reports them
(src/mongo/db/matcher/doc_validation_error.cpp; jstests/core/doc_validation/)."""

from __future__ import annotations

import pymongo
import pytest
from pymongo.errors import OperationFailure, WriteError

DOCUMENT_VALIDATION_FAILURE = 121

SCHEMA = {
    "$jsonSchema": {
        "bsonType": "object",
        "required": ["name", "age"],
        "properties": {
            "name": {"bsonType": "string", "minLength": 1},
            "age": {"bsonType": "int", "minimum": 0, "maximum": 150},
            "tags": {"bsonType": "array", "items": {"bsonType": "string"}},
        },
    }
}


@pytest.fixture
def people(client):
    client.test.create_collection("people", validator=SCHEMA)
    return client.test.people


def test_json_schema_validator_accepts_and_refuses(people):
    people.insert_one({"_id": 1, "name": "ada", "age": 36})
    with pytest.raises(WriteError) as e:
        people.insert_one({"_id": 2, "name": "bob"})
    assert e.value.code == DOCUMENT_VALIDATION_FAILURE
    info = e.value.details["errInfo"]
    assert info["failingDocumentId"] == 2
    assert info["details"]["operatorName"] == "$jsonSchema"
    rules = info["details"]["schemaRulesNotSatisfied"]
    assert {"operatorName": "required", "specifiedAs": {"required": ["name", "age"]},
            "missingProperties": ["age"]} in rules
    with pytest.raises(WriteError) as e:
        people.insert_one({"_id": 3, "name": "cy", "age": -1, "tags": ["a", 2]})
    rules = e.value.details["errInfo"]["details"]["schemaRulesNotSatisfied"]
    props = {p["propertyName"]: p["details"] for r in rules for p in r.get("propertiesNotSatisfied", [])}
    assert props["age"][0]["operatorName"] == "minimum"
    assert props["age"][0]["consideredValue"] == -1
    assert props["tags"][0]["operatorName"] == "items"
    assert people.count_documents({}) == 1


def test_updates_are_validated_too(people):
    people.insert_one({"_id": 1, "name": "ada", "age": 36})
    with pytest.raises(WriteError) as e:
        people.update_one({"_id": 1}, {"$set": {"age": "old"}})
    assert e.value.code == DOCUMENT_VALIDATION_FAILURE
    with pytest.raises(WriteError):
        people.replace_one({"_id": 1}, {"name": "ada"})
    with pytest.raises(WriteError):
        people.update_one({"_id": 9}, {"$set": {"name": "x"}}, upsert=True)
    with pytest.raises(OperationFailure) as e:
        people.find_one_and_update({"_id": 1}, {"$unset": {"name": ""}})
    assert e.value.code == DOCUMENT_VALIDATION_FAILURE
    assert people.find_one({"_id": 1}) == {"_id": 1, "name": "ada", "age": 36}


def test_bypass_document_validation(people):
    people.insert_one({"_id": 1}, bypass_document_validation=True)
    people.update_one({"_id": 1}, {"$set": {"x": 1}}, bypass_document_validation=True)
    people.insert_many([{"_id": 2}, {"_id": 3}], bypass_document_validation=True)
    assert people.count_documents({}) == 3


def test_query_operator_validator(client):
    client.test.create_collection("scores", validator={"score": {"$gte": 0}, "kind": {"$in": ["a", "b"]}})
    coll = client.test.scores
    coll.insert_one({"score": 5, "kind": "a"})
    with pytest.raises(WriteError) as e:
        coll.insert_one({"_id": 7, "score": -1, "kind": "a"})
    info = e.value.details["errInfo"]
    assert info["failingDocumentId"] == 7
    details = info["details"]
    assert details["operatorName"] == "$and"
    [clause] = details["clausesNotSatisfied"]
    assert clause["index"] == 0
    assert clause["details"]["operatorName"] == "$gte"
    assert clause["details"]["specifiedAs"] == {"score": {"$gte": 0}}
    assert clause["details"]["consideredValue"] == -1


def test_validation_level_moderate_and_off(client, people):
    people.insert_one({"_id": 1, "name": "ada", "age": 36})
    people.insert_one({"_id": 2}, bypass_document_validation=True)  # already invalid
    client.test.command("collMod", "people", validationLevel="moderate")
    # Moderate: an invalid document may still be updated; a valid one must stay valid.
    people.update_one({"_id": 2}, {"$set": {"x": 1}})
    with pytest.raises(WriteError):
        people.update_one({"_id": 1}, {"$set": {"age": "x"}})
    with pytest.raises(WriteError):
        people.insert_one({"_id": 3})
    client.test.command("collMod", "people", validationLevel="off")
    people.insert_one({"_id": 3})
    opts = client.test.people.options()
    assert opts["validationLevel"] == "off" and opts["validator"] == SCHEMA


def test_validation_action_warn_lets_the_write_through(client, people):
    client.test.command("collMod", "people", validationAction="warn")
    people.insert_one({"_id": 5})
    assert people.find_one({"_id": 5}) == {"_id": 5}


def test_coll_mod_replaces_and_removes_the_validator(client, people):
    client.test.command("collMod", "people", validator={"n": {"$type": "int"}})
    people.insert_one({"n": 1})
    with pytest.raises(WriteError):
        people.insert_one({"name": "ada", "age": 3})
    client.test.command("collMod", "people", validator={})
    people.insert_one({"anything": True})


def test_bad_validators_are_refused(client):
    for bad in ({"$jsonSchema": {"type": "integer"}}, {"$jsonSchema": {"nope": 1}},
                {"a": {"$unknownOp": 1}}):
        with pytest.raises(OperationFailure):
            client.test.create_collection("bad", validator=bad)
    with pytest.raises(OperationFailure):
        client.test.create_collection("bad", validator={"a": 1}, validationLevel="sometimes")
    with pytest.raises(OperationFailure):
        client.test.command("collMod", "missing_collection", validationLevel="off")
    assert "bad" not in client.test.list_collection_names()


def test_validators_apply_inside_transactions(client, people):
    with client.start_session() as s:
        s.start_transaction()
        reply = client.test.command({"insert": "people", "documents": [{"_id": 1}]}, session=s)
        assert reply["writeErrors"][0]["code"] == DOCUMENT_VALIDATION_FAILURE
        s.abort_transaction()


def test_out_and_merge_validate_unless_bypassed(client, people):
    client.test.src.insert_many([{"_id": 1, "name": "ada", "age": 36}, {"_id": 2, "name": "x"}])
    for stage in ({"$out": "people"}, {"$merge": {"into": "people"}}):
        with pytest.raises(OperationFailure) as e:
            client.test.src.aggregate([stage])
        assert e.value.code == DOCUMENT_VALIDATION_FAILURE
        client.test.src.aggregate([stage], bypassDocumentValidation=True)
        assert people.count_documents({}) == 2
        people.delete_many({})


def test_json_schema_inside_logical_operators(client):
    client.test.create_collection("either", validator={
        "$or": [{"$jsonSchema": {"required": ["a"]}}, {"b": {"$exists": True}}],
    })
    coll = client.test.either
    coll.insert_one({"a": 1})
    coll.insert_one({"b": 1})
    with pytest.raises(WriteError) as e:
        coll.insert_one({"_id": 3, "c": 1})
    details = e.value.details["errInfo"]["details"]
    assert details["operatorName"] == "$or"
    assert [c["index"] for c in details["clausesNotSatisfied"]] == [0, 1]
    assert details["clausesNotSatisfied"][0]["details"]["operatorName"] == "$jsonSchema"
    assert coll.count_documents({}) == 2
