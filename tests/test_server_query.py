"""Query semantics: BSON comparison order, dotted paths into arrays, and every query operator.

References: the MongoDB manual "Comparison/Sort Order" (BSON type order for sorting, type
bracketing, equality with null and missing, embedded documents compare exactly) and the query
operator and projection pages; mongodb/mongo src/mongo/bson/bsontypes.h (canonicalizeBSONType,
the order of types).
"""

import datetime
import re

import bson
import pytest
from bson import Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from pymongo.errors import OperationFailure


@pytest.fixture
def coll(client):
    return client.test.q


def ids(cursor):
    return [d["_id"] for d in cursor]


def test_sort_follows_bson_type_order(coll):
    oid = ObjectId("650000000000000000000000")
    when = datetime.datetime(2024, 1, 1)
    values = [
        ("maxkey", MaxKey()),
        ("regex", Regex("^a")),
        ("timestamp", Timestamp(5, 1)),
        ("date", when),
        ("bool", True),
        ("oid", oid),
        ("bindata", bson.Binary(b"\x01")),
        ("array", [7]),   # sorts by its smallest element (7, a number) ascending
        ("object", {"a": 1}),
        ("string", "abc"),
        ("number", 3),
        ("null", None),
        ("minkey", MinKey()),
    ]
    coll.insert_many([{"_id": name, "v": v} for name, v in values])
    coll.insert_one({"_id": "missing"})
    order = ids(coll.find({"_id": {"$ne": "array"}}).sort("v", 1))
    assert order == [
        "minkey", "null", "missing", "number", "string", "object", "bindata", "oid",
        "bool", "date", "timestamp", "regex", "maxkey",
    ] or order == [
        "minkey", "missing", "null", "number", "string", "object", "bindata", "oid",
        "bool", "date", "timestamp", "regex", "maxkey",
    ]


def test_numbers_of_different_types_compare_by_value(coll):
    coll.insert_many([
        {"_id": "int", "v": 2}, {"_id": "long", "v": Int64(1)}, {"_id": "double", "v": 1.5},
        {"_id": "neg", "v": -3.25},
    ])
    assert ids(coll.find().sort("v", 1)) == ["neg", "long", "double", "int"]
    assert ids(coll.find({"v": 1.0})) == ["long"]


def test_sort_on_array_uses_min_ascending_and_max_descending(coll):
    coll.insert_many([
        {"_id": "a", "v": [1, 10]}, {"_id": "b", "v": [5]}, {"_id": "c", "v": 7},
    ])
    assert ids(coll.find().sort("v", 1)) == ["a", "b", "c"]
    assert ids(coll.find().sort("v", -1)) == ["a", "c", "b"]


def test_compound_sort(coll):
    coll.insert_many([
        {"_id": 1, "a": 1, "b": 1}, {"_id": 2, "a": 1, "b": 2}, {"_id": 3, "a": 0, "b": 9},
    ])
    assert ids(coll.find().sort([("a", 1), ("b", -1)])) == [3, 2, 1]


def test_strings_compare_bytewise(coll):
    coll.insert_many([{"_id": s, "v": s} for s in ("b", "B", "a", "ä")])
    assert ids(coll.find().sort("v", 1)) == ["B", "a", "b", "ä"]


def test_dotted_path_descends_into_embedded_documents_and_arrays(coll):
    coll.insert_many([
        {"_id": 1, "a": {"b": 2}},
        {"_id": 2, "a": [{"b": 1}, {"b": 2}]},
        {"_id": 3, "a": [{"b": 3}]},
        {"_id": 4, "a": [[{"b": 2}]]},  # only one level of implicit array traversal
        {"_id": 5, "a": [1, 2]},
    ])
    assert ids(coll.find({"a.b": 2})) == [1, 2]


def test_numeric_path_component_indexes_arrays(coll):
    coll.insert_many([
        {"_id": 1, "a": [5, 6]}, {"_id": 2, "a": [6, 5]}, {"_id": 3, "a": {"0": 5}},
        {"_id": 4, "a": [{"b": 1}, {"b": 2}]},
    ])
    assert ids(coll.find({"a.0": 5})) == [1, 3]
    assert ids(coll.find({"a.1.b": 2})) == [4]


def test_equality_matches_array_elements_and_whole_arrays(coll):
    coll.insert_many([
        {"_id": 1, "t": ["x", "y"]}, {"_id": 2, "t": "x"}, {"_id": 3, "t": [["x", "y"]]},
    ])
    assert ids(coll.find({"t": "x"})) == [1, 2]
    assert ids(coll.find({"t": ["x", "y"]})) == [1, 3]


def test_embedded_documents_compare_with_field_order(coll):
    coll.insert_many([
        {"_id": 1, "d": {"x": 1, "y": 2}}, {"_id": 2, "d": bson.SON([("y", 2), ("x", 1)])},
    ])
    assert ids(coll.find({"d": {"x": 1, "y": 2}})) == [1]
    assert ids(coll.find({"d.x": 1, "d.y": 2})) == [1, 2]


def test_null_matches_missing(coll):
    coll.insert_many([{"_id": 1, "a": None}, {"_id": 2}, {"_id": 3, "a": 0}])
    assert ids(coll.find({"a": None})) == [1, 2]


@pytest.fixture
def nums(coll):
    coll.insert_many([
        {"_id": 1, "n": 1}, {"_id": 2, "n": 5}, {"_id": 3, "n": 10}, {"_id": 4, "n": "5"},
        {"_id": 5}, {"_id": 6, "n": [1, 10]}, {"_id": 7, "n": None},
    ])
    return coll


def test_eq(nums):
    assert ids(nums.find({"n": {"$eq": 5}})) == [2]
    assert ids(nums.find({"n": {"$eq": 10}})) == [3, 6]


def test_ne_matches_missing_and_excludes_arrays_containing_the_value(nums):
    assert ids(nums.find({"n": {"$ne": 10}})) == [1, 2, 4, 5, 7]


def test_gt_gte_lt_lte_are_type_bracketed(nums):
    assert ids(nums.find({"n": {"$gt": 5}})) == [3, 6]
    assert ids(nums.find({"n": {"$gte": 5}})) == [2, 3, 6]
    assert ids(nums.find({"n": {"$lt": 5}})) == [1, 6]
    assert ids(nums.find({"n": {"$lte": 5}})) == [1, 2, 6]
    assert ids(nums.find({"n": {"$gt": "4"}})) == [4]


def test_range_on_arrays_may_be_satisfied_by_different_elements(nums):
    assert ids(nums.find({"n": {"$gt": 2, "$lt": 8}})) == [2, 6]


def test_in_and_nin(nums):
    assert ids(nums.find({"n": {"$in": [1, "5"]}})) == [1, 4, 6]
    assert ids(nums.find({"n": {"$in": [None]}})) == [5, 7]
    assert ids(nums.find({"n": {"$nin": [1, "5"]}})) == [2, 3, 5, 7]


def test_in_accepts_regexes(coll):
    coll.insert_many([{"_id": 1, "s": "apple"}, {"_id": 2, "s": "berry"}, {"_id": 3, "s": "cherry"}])
    assert ids(coll.find({"s": {"$in": [re.compile("^a"), "cherry"]}})) == [1, 3]


def test_exists(nums):
    assert ids(nums.find({"n": {"$exists": True}})) == [1, 2, 3, 4, 6, 7]
    assert ids(nums.find({"n": {"$exists": False}})) == [5]


def test_and_or_nor(nums):
    assert ids(nums.find({"$and": [{"n": {"$gt": 1}}, {"n": {"$lt": 10}}]})) == [2, 6]
    assert ids(nums.find({"$or": [{"n": 1}, {"n": "5"}]})) == [1, 4, 6]
    assert ids(nums.find({"$nor": [{"n": 1}, {"n": {"$exists": False}}]})) == [2, 3, 4, 7]


def test_logical_operators_need_a_nonempty_array(coll):
    for op in ("$and", "$or", "$nor"):
        with pytest.raises(OperationFailure) as err:
            coll.find_one({op: []})
        assert err.value.code == 2  # BadValue


def test_not(nums):
    assert ids(nums.find({"n": {"$not": {"$gt": 5}}})) == [1, 2, 4, 5, 7]
    assert ids(nums.find({"n": {"$not": re.compile("^5")}})) == [1, 2, 3, 5, 6, 7]


def test_elem_match_requires_one_element_to_satisfy_everything(coll):
    coll.insert_many([
        {"_id": 1, "a": [{"x": 1, "y": 5}, {"x": 5, "y": 1}]},
        {"_id": 2, "a": [{"x": 5, "y": 5}]},
        {"_id": 3, "r": [1, 15]},
        {"_id": 4, "r": [7]},
    ])
    assert ids(coll.find({"a": {"$elemMatch": {"x": 5, "y": 5}}})) == [2]
    assert ids(coll.find({"a.x": 5, "a.y": 5})) == [1, 2]
    assert ids(coll.find({"r": {"$elemMatch": {"$gt": 5, "$lt": 10}}})) == [4]
    assert ids(coll.find({"r": {"$gt": 5, "$lt": 10}})) == [3, 4]


def test_size(coll):
    coll.insert_many([{"_id": 1, "a": []}, {"_id": 2, "a": [1, 2]}, {"_id": 3, "a": 2}])
    assert ids(coll.find({"a": {"$size": 2}})) == [2]
    assert ids(coll.find({"a": {"$size": 0}})) == [1]


def test_type(coll):
    coll.insert_many([
        {"_id": 1, "v": 1}, {"_id": 2, "v": Int64(1)}, {"_id": 3, "v": 1.5},
        {"_id": 4, "v": "s"}, {"_id": 5, "v": [1, "s"]}, {"_id": 6, "v": None},
    ])
    assert ids(coll.find({"v": {"$type": "string"}})) == [4, 5]
    assert ids(coll.find({"v": {"$type": 16}})) == [1, 5]
    assert ids(coll.find({"v": {"$type": "long"}})) == [2]
    assert ids(coll.find({"v": {"$type": "number"}})) == [1, 2, 3, 5]
    assert ids(coll.find({"v": {"$type": ["double", "null"]}})) == [3, 6]
    assert ids(coll.find({"v": {"$type": "array"}})) == [5]


def test_regex(coll):
    coll.insert_many([
        {"_id": 1, "s": "Apple"}, {"_id": 2, "s": "apricot"}, {"_id": 3, "s": ["x", "ape"]},
        {"_id": 4, "s": 5}, {"_id": 5, "s": "line1\napple"},
    ])
    assert ids(coll.find({"s": {"$regex": "^ap"}})) == [2, 3]
    assert ids(coll.find({"s": {"$regex": "^ap", "$options": "i"}})) == [1, 2, 3]
    assert ids(coll.find({"s": re.compile("^ap", re.IGNORECASE)})) == [1, 2, 3]
    assert ids(coll.find({"s": {"$regex": "^apple", "$options": "m"}})) == [5]


def test_unknown_operator_is_bad_value(coll):
    with pytest.raises(OperationFailure) as err:
        coll.find_one({"a": {"$bogus": 1}})
    assert err.value.code == 2


def test_projection_inclusion_keeps_document_order(coll):
    coll.insert_one({"_id": 1, "a": 1, "b": {"c": 1, "d": 2}, "e": 3})
    doc = coll.find_one({}, {"e": 1, "b.c": 1})
    assert list(doc.items()) == [("_id", 1), ("b", {"c": 1}), ("e", 3)]
    assert coll.find_one({}, {"_id": 0, "a": 1}) == {"a": 1}


def test_projection_exclusion(coll):
    coll.insert_one({"_id": 1, "a": 1, "b": {"c": 1, "d": 2}})
    assert coll.find_one({}, {"a": 0, "b.d": 0}) == {"_id": 1, "b": {"c": 1}}


def test_projection_through_arrays(coll):
    coll.insert_one({"_id": 1, "a": [{"b": 1, "c": 2}, 5, {"c": 3}]})
    assert coll.find_one({}, {"a.b": 1}) == {"_id": 1, "a": [{"b": 1}, {}]}


def test_mixing_inclusion_and_exclusion_is_an_error(coll):
    coll.insert_one({"_id": 1, "a": 1, "b": 2})
    with pytest.raises(OperationFailure):
        coll.find_one({}, {"a": 1, "b": 0})


def test_sort_by_id_alone_follows_bson_order_with_filter_skip_limit_and_batches(coll):
    """A find sorted by ``_id`` only (served by the ``_id`` index, as mongod's IXSCAN on ``_id_``)
    returns the same order as the BSON comparison rules, across getMores, with filter, skip and
    limit applied in that order."""
    oid = ObjectId("650000000000000000000000")
    ordered_ids = [
        MinKey(), None, -2.5, 0, Int64(3), 7.5, "", "a", "b", {"x": 1}, {"x": 2},
        bson.Binary(b"\x01"), oid, False, True, datetime.datetime(2024, 1, 1), Timestamp(5, 1),
        MaxKey(),
    ]
    docs = [{"_id": v, "n": i} for i, v in enumerate(ordered_ids)]
    coll.insert_many(list(reversed(docs)))
    expected = [d["n"] for d in docs]

    def ns(**kw):
        return [d["n"] for d in coll.find({}, sort=[("_id", kw.pop("direction", 1))], **kw)]

    assert ns(batch_size=2) == expected
    assert ns(direction=-1, batch_size=3) == expected[::-1]
    assert ns(skip=3, limit=4, batch_size=1) == expected[3:7]
    odd = [d["n"] for d in coll.find({"n": {"$mod": [2, 1]}}, sort=[("_id", -1)], skip=1, batch_size=2)]
    assert odd == [n for n in expected[::-1] if n % 2 == 1][1:]
    # A sort on _id and another key is not "_id alone": still the full BSON order.
    assert [d["n"] for d in coll.find({}, sort=[("_id", 1), ("n", -1)])] == expected



def test_id_equality_and_in_find_what_a_scan_finds(coll):
    """Filters on `_id` values (answered from the `_id` index) find exactly the documents a
    collection scan would, whatever the value types, duplicates and other predicates."""
    docs = [
        {"_id": 1, "x": 1},
        {"_id": 2.5, "x": 2},
        {"_id": "a", "x": 3},
        {"_id": {"n": "db.c", "i": 7}, "x": 4},
        {"_id": Int64(9), "x": 5},
        {"_id": ObjectId(), "x": 6},
    ]
    coll.insert_many(docs)
    filters = [
        {"_id": 1},
        {"_id": 1.0},
        {"_id": {"$eq": "a"}},
        {"_id": {"$in": [9, 1, 1.0, "a", "zz", {"n": "db.c", "i": 7}]}},
        {"_id": {"$in": []}},
        {"_id": {"$in": [1, 2.5]}, "x": {"$gt": 1}},
        {"$and": [{"x": {"$lt": 6}}, {"_id": {"$in": [2.5, {"i": 7, "n": "db.c"}]}}]},
        {"_id": {"i": 7, "n": "db.c"}},
    ]
    for f in filters:
        # The same filter under `$or` cannot use a point lookup: a scan answers it.
        scanned = sorted(d["x"] for d in coll.find({"$or": [f]}))
        assert sorted(d["x"] for d in coll.find(f)) == scanned, f
        assert coll.count_documents(f) == len(scanned), f
    found = list(coll.find({"_id": {"$in": [9, 1, "a"]}}).sort("_id", -1).skip(1).limit(1))
    assert [d["x"] for d in found] == [5]
