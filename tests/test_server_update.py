"""Update semantics: every update operator, field order, and `_id` immutability.

References: the MongoDB manual "Update Operators" (each operator, $push modifier order, the
field order rules of "Update Operators – Behavior", upsert); mongodb/mongo
src/mongo/db/update/update_driver.cpp and src/mongo/base/error_codes.yml (ImmutableField 66).
"""

import datetime

import bson
import pytest
from bson import Int64
from pymongo import ReturnDocument
from pymongo.errors import OperationFailure, WriteError


@pytest.fixture
def coll(client):
    return client.test.u


def apply(coll, before, update, **kwargs):
    """Inserts ``before`` (with _id 1), runs ``update`` on it and returns the stored result."""
    coll.delete_many({})
    coll.insert_one({"_id": 1, **before})
    coll.update_one({"_id": 1}, update, **kwargs)
    doc = coll.find_one({"_id": 1})
    return doc


def items(doc):
    return list(doc.items())


def test_set_overwrites_in_place_and_appends_new_fields(coll):
    doc = apply(coll, {"a": 1, "b": 2}, {"$set": {"a": 10, "z": 1, "c": 3}})
    # New fields are appended in lexicographic order; existing ones keep their position.
    assert items(doc) == [("_id", 1), ("a", 10), ("b", 2), ("c", 3), ("z", 1)]


def test_set_dotted_path_creates_documents_and_indexes_arrays(coll):
    doc = apply(coll, {"arr": [1, 2]}, {"$set": {"x.y.z": 1, "arr.1": 9, "arr.4": 5}})
    assert doc == {"_id": 1, "arr": [1, 9, None, None, 5], "x": {"y": {"z": 1}}}


def test_set_under_a_scalar_is_path_not_viable(coll):
    coll.insert_one({"_id": 1, "a": 5})
    with pytest.raises(WriteError) as err:
        coll.update_one({"_id": 1}, {"$set": {"a.b": 1}})
    assert err.value.code == 28


def test_unset_removes_fields_and_nulls_array_elements(coll):
    doc = apply(coll, {"a": 1, "b": {"c": 1, "d": 2}, "arr": [1, 2, 3]},
                {"$unset": {"a": "", "b.d": "", "arr.1": "", "missing": ""}})
    assert doc == {"_id": 1, "b": {"c": 1}, "arr": [1, None, 3]}


def test_inc_adds_and_creates(coll):
    doc = apply(coll, {"n": 1, "f": 1.5}, {"$inc": {"n": 2, "f": 1, "new": 5}})
    assert doc == {"_id": 1, "n": 3, "f": 2.5, "new": 5}


def test_inc_type_promotion(coll):
    doc = apply(coll, {"i": 2**31 - 1, "l": Int64(1)}, {"$inc": {"i": 1, "l": 1}})
    assert doc["i"] == 2**31 and isinstance(doc["i"], Int64)
    assert isinstance(doc["l"], Int64)


def test_inc_on_non_numeric_is_type_mismatch(coll):
    coll.insert_one({"_id": 1, "s": "x"})
    with pytest.raises(WriteError) as err:
        coll.update_one({"_id": 1}, {"$inc": {"s": 1}})
    assert err.value.code == 14


def test_mul(coll):
    doc = apply(coll, {"p": 3, "q": 2.5}, {"$mul": {"p": 4, "q": 2, "missing": Int64(7)}})
    assert doc == {"_id": 1, "p": 12, "q": 5.0, "missing": 0}
    assert isinstance(doc["missing"], Int64)  # zero of the multiplier's type


def test_min_and_max(coll):
    doc = apply(coll, {"lo": 5, "hi": 5}, {"$min": {"lo": 3, "new": 1}, "$max": {"hi": 9}})
    assert doc == {"_id": 1, "lo": 3, "hi": 9, "new": 1}
    doc = apply(coll, {"lo": 5, "hi": 5}, {"$min": {"lo": 7}, "$max": {"hi": 1}})
    assert doc == {"_id": 1, "lo": 5, "hi": 5}


def test_min_compares_across_types_by_bson_order(coll):
    # null sorts before numbers, strings after them.
    doc = apply(coll, {"a": 5, "b": 5}, {"$min": {"a": None}, "$max": {"b": "x"}})
    assert doc == {"_id": 1, "a": None, "b": "x"}


def test_rename_moves_the_field_to_the_end(coll):
    doc = apply(coll, {"a": 1, "b": 2, "c": {"d": 3}}, {"$rename": {"a": "z", "c.d": "e"}})
    assert items(doc) == [("_id", 1), ("b", 2), ("c", {}), ("e", 3), ("z", 1)]


def test_rename_missing_field_is_a_no_op(coll):
    coll.insert_one({"_id": 1, "a": 1})
    r = coll.update_one({"_id": 1}, {"$rename": {"nope": "x"}})
    assert r.modified_count == 0


def test_push_appends_and_creates(coll):
    doc = apply(coll, {"a": [1]}, {"$push": {"a": 2, "b": "x"}})
    assert doc == {"_id": 1, "a": [1, 2], "b": ["x"]}


def test_push_each_position_sort_slice(coll):
    doc = apply(coll, {"a": [1, 5]}, {"$push": {"a": {"$each": [3, 4], "$position": 1}}})
    assert doc["a"] == [1, 3, 4, 5]
    doc = apply(coll, {"a": [1, 5]}, {"$push": {"a": {"$each": [9], "$position": -1}}})
    assert doc["a"] == [1, 9, 5]
    # $sort then $slice, regardless of the order they are written in.
    doc = apply(coll, {"a": [5, 1, 4]},
                {"$push": {"a": {"$slice": 3, "$each": [2, 3], "$sort": 1}}})
    assert doc["a"] == [1, 2, 3]
    doc = apply(coll, {"a": [5, 1]}, {"$push": {"a": {"$each": [7], "$slice": -2}}})
    assert doc["a"] == [1, 7]
    doc = apply(coll, {"a": [{"s": 2}, {"s": 1}]},
                {"$push": {"a": {"$each": [{"s": 3}], "$sort": {"s": -1}}}})
    assert doc["a"] == [{"s": 3}, {"s": 2}, {"s": 1}]


def test_push_to_a_non_array_fails(coll):
    coll.insert_one({"_id": 1, "a": 1})
    with pytest.raises(WriteError):
        coll.update_one({"_id": 1}, {"$push": {"a": 2}})
    assert coll.find_one() == {"_id": 1, "a": 1}


def test_add_to_set(coll):
    doc = apply(coll, {"a": [1, 2]}, {"$addToSet": {"a": 2, "b": 1}})
    assert doc == {"_id": 1, "a": [1, 2], "b": [1]}
    doc = apply(coll, {"a": [1, 2]}, {"$addToSet": {"a": {"$each": [2, 3, 3, 1.0, 4]}}})
    assert doc["a"] == [1, 2, 3, 4]


def test_pull_by_value_and_by_condition(coll):
    doc = apply(coll, {"a": [1, 2, 3, 2]}, {"$pull": {"a": 2}})
    assert doc["a"] == [1, 3]
    doc = apply(coll, {"a": [1, 6, 7, 2]}, {"$pull": {"a": {"$gte": 6}}})
    assert doc["a"] == [1, 2]
    doc = apply(coll, {"a": [{"s": 8, "t": 1}, {"s": 9}, {"s": 8}]}, {"$pull": {"a": {"s": 8}}})
    assert doc["a"] == [{"s": 9}]


def test_pull_all(coll):
    doc = apply(coll, {"a": [0, 1, 2, 1, 3]}, {"$pullAll": {"a": [1, 3]}})
    assert doc["a"] == [0, 2]


def test_pop(coll):
    assert apply(coll, {"a": [1, 2, 3]}, {"$pop": {"a": 1}})["a"] == [1, 2]
    assert apply(coll, {"a": [1, 2, 3]}, {"$pop": {"a": -1}})["a"] == [2, 3]
    assert apply(coll, {"a": []}, {"$pop": {"a": 1}})["a"] == []


def test_current_date(coll):
    before = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    doc = apply(coll, {}, {"$currentDate": {"d": True, "ts": {"$type": "timestamp"},
                                            "d2": {"$type": "date"}}})
    assert isinstance(doc["d"], datetime.datetime)
    assert isinstance(doc["d2"], datetime.datetime)
    assert isinstance(doc["ts"], bson.Timestamp)
    assert doc["d"] >= before - datetime.timedelta(seconds=5)


def test_set_on_insert_only_applies_when_upserting(coll):
    coll.update_one({"_id": 1}, {"$set": {"a": 1}, "$setOnInsert": {"created": True}}, upsert=True)
    assert coll.find_one({"_id": 1}) == {"_id": 1, "a": 1, "created": True}
    coll.update_one({"_id": 1}, {"$set": {"a": 2}, "$setOnInsert": {"other": True}}, upsert=True)
    assert coll.find_one({"_id": 1}) == {"_id": 1, "a": 2, "created": True}


def test_conflicting_paths_are_rejected(coll):
    coll.insert_one({"_id": 1, "a": {"b": 1}})
    with pytest.raises(WriteError) as err:
        coll.update_one({"_id": 1}, {"$set": {"a": 1}, "$inc": {"a.b": 1}})
    assert err.value.code == 40  # ConflictingUpdateOperators


def test_unknown_modifier_is_failed_to_parse(coll):
    coll.insert_one({"_id": 1})
    with pytest.raises(WriteError) as err:
        coll.update_one({"_id": 1}, {"$frobnicate": {"a": 1}})
    assert err.value.code == 9


def test_modifying_id_with_an_operator_is_immutable_field(coll):
    coll.insert_one({"_id": 1, "a": 1})
    with pytest.raises(WriteError) as err:
        coll.update_one({"_id": 1}, {"$set": {"_id": 2}})
    assert err.value.code == 66
    # Setting _id to its current value is allowed.
    assert coll.update_one({"_id": 1}, {"$set": {"_id": 1}}).matched_count == 1
    assert coll.find_one() == {"_id": 1, "a": 1}


def test_replacement_with_another_id_is_immutable_field(coll):
    coll.insert_one({"_id": 1, "a": 1})
    with pytest.raises(WriteError) as err:
        coll.replace_one({"_id": 1}, {"_id": 2, "a": 2})
    assert err.value.code == 66
    assert coll.find_one() == {"_id": 1, "a": 1}


def test_update_many_applies_to_every_match(coll):
    coll.insert_many([{"_id": i, "tags": ["x"]} for i in range(3)])
    r = coll.update_many({}, {"$push": {"tags": "y"}, "$inc": {"n": 1}})
    assert (r.matched_count, r.modified_count) == (3, 3)
    assert all(d == {"_id": d["_id"], "tags": ["x", "y"], "n": 1} for d in coll.find())


def test_update_by_positional_operator(coll):
    coll.insert_one({"_id": 1, "a": [{"k": 1, "v": 0}, {"k": 2, "v": 0}]})
    coll.update_one({"_id": 1, "a.k": 2}, {"$set": {"a.$.v": 9}})
    assert coll.find_one()["a"] == [{"k": 1, "v": 0}, {"k": 2, "v": 9}]


def test_raw_update_with_array_filters(client):
    client.test.u.insert_one({"_id": 1, "a": [1, 5, 9]})
    client.test.command("update", "u", updates=[{
        "q": {"_id": 1}, "u": {"$set": {"a.$[big]": 0}}, "arrayFilters": [{"big": {"$gt": 4}}],
    }])
    assert client.test.u.find_one()["a"] == [1, 0, 0]


def test_positional_operator_per_document_with_update_many(coll):
    # The matched index is taken from each document (MatchDetails::elemMatchKey).
    coll.insert_many([{"_id": 1, "a": [5, 7]}, {"_id": 2, "a": [7, 5, 7]}])
    coll.update_many({"a": 7}, {"$inc": {"a.$": 100}})
    assert [d["a"] for d in coll.find(sort=[("_id", 1)])] == [[5, 107], [107, 5, 7]]


def test_positional_operator_without_array_match_fails(coll):
    coll.insert_one({"_id": 1, "a": [1, 2]})
    with pytest.raises(OperationFailure) as e:
        coll.update_one({"_id": 1}, {"$set": {"a.$": 0}})
    assert e.value.code == 2
    assert "The positional operator did not find the match needed from the query." in str(e.value)


def test_find_and_modify_with_array_filters(coll):
    coll.insert_one({"_id": 1, "a": [{"k": 1}, {"k": 2}, {"k": 3}]})
    after = coll.find_one_and_update({"_id": 1}, {"$set": {"a.$[e].k": 0}},
                                     array_filters=[{"e.k": {"$gte": 2}}],
                                     return_document=ReturnDocument.AFTER)
    assert after["a"] == [{"k": 1}, {"k": 0}, {"k": 0}]


def test_array_filter_identifier_errors(coll):
    coll.insert_one({"_id": 1, "a": [1]})
    with pytest.raises(OperationFailure) as e:
        coll.update_one({"_id": 1}, {"$set": {"a.$[i]": 0}})
    assert e.value.code == 2
    assert "No array filter found for identifier 'i' in path 'a.$[i]'" in str(e.value)
    with pytest.raises(OperationFailure) as e:
        coll.update_one({"_id": 1}, {"$set": {"a.$[i]": 5.0}}, array_filters=[{"i": 0}, {"j": 0}])
    assert e.value.code == 9
    assert ("The array filter for identifier 'j' was not used in the update "
            "{ $set: { a.$[i]: 5.0 } }") in str(e.value)


def test_failed_update_leaves_the_document_unchanged(client):
    coll = client.test.u
    coll.insert_one({"_id": 1, "a": 1, "s": "x"})
    with pytest.raises(OperationFailure):
        coll.update_one({"_id": 1}, {"$set": {"a": 2}, "$inc": {"s": 1}})
    assert coll.find_one() == {"_id": 1, "a": 1, "s": "x"}
