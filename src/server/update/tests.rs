//! Tests of the update engine. Expected `$v:2` entries come from the reference
//! (MongoDB's update node tests and `v2_log_builder_test.cpp`, "node tests") and from MongoDB's node tests in
//! src/mongo/db/update/*_node_test.cpp and v2_log_builder_test.cpp (cited per test).

use super::*;
use bson::{doc, Bson, DateTime, Document, Timestamp};

pub(super) fn ctx() -> UpdateContext {
    UpdateContext {
        inserting: false,
        now: DateTime::from_millis(1_700_000_000_123),
        now_ts: Timestamp {
            time: 1_700_000_000,
            increment: 7,
        },
    }
}

fn bytes(d: &Document) -> Vec<u8> {
    let mut v = Vec::new();
    d.to_writer(&mut v).unwrap();
    v
}

/// Byte-level equality (field order and types matter).
#[track_caller]
pub(super) fn assert_same(actual: &Document, expected: &Document) {
    assert!(
        bytes(actual) == bytes(expected),
        "\n  actual:   {:?}\n  expected: {:?}",
        actual,
        expected
    );
}

pub(super) fn v2(diff: Document) -> Document {
    doc! {"$v": 2, "diff": diff}
}

/// Apply `update` to `doc`; returns the new document and the outcome.
#[track_caller]
fn run(doc: Document, update: Document) -> (Document, UpdateOutcome) {
    let spec = UpdateSpec::parse(&update, None).unwrap();
    let mut d = doc;
    let out = spec.apply(&mut d, &ctx()).unwrap();
    (d, out)
}

/// Apply and check both the post-image and the logged `o`.
#[track_caller]
fn check(doc: Document, update: Document, after: Document, diff: Document) {
    let (d, out) = run(doc, update);
    assert_same(&d, &after);
    assert!(out.modified);
    assert_same(&out.oplog_o, &v2(diff));
}

#[track_caller]
fn err(doc: Document, update: Document) -> ServerError {
    let mut d = doc.clone();
    let e = match UpdateSpec::parse(&update, None) {
        Err(e) => e,
        Ok(spec) => spec.apply(&mut d, &ctx()).unwrap_err(),
    };
    assert_same(&d, &doc); // unchanged on error
    e
}

// ---------------------------------------------------------------- $v:2 diff shapes

#[test]
fn diff_set_existing_and_new_field() {
    // Worked example 1 (a diff as document_diff_applier.cpp applies it).
    check(
        doc! {"_id": 1, "a": 1, "b": "x"},
        doc! {"$set": {"a": 2, "c": true}},
        doc! {"_id": 1, "a": 2, "b": "x", "c": true},
        doc! {"u": {"a": 2}, "i": {"c": true}},
    );
}

#[test]
fn diff_inc_and_nested_unset_sections_order() {
    // Worked example 2: sections d, u, then sub-diffs (v2_log_builder.cpp order).
    check(
        doc! {"_id": 2, "a": 5, "b": {"c": 1, "d": 2}, "e": 0},
        doc! {"$inc": {"a": 1}, "$unset": {"b.d": "", "e": ""}},
        doc! {"_id": 2, "a": 6, "b": {"c": 1}},
        doc! {"d": {"e": false}, "u": {"a": 6}, "sb": {"d": {"d": false}}},
    );
}

#[test]
fn diff_indexed_set_and_push_append() {
    // Worked example 3.
    check(
        doc! {"_id": 3, "arr": [10, 20, 30], "tags": ["x"]},
        doc! {"$set": {"arr.1": 99}, "$push": {"tags": "y"}},
        doc! {"_id": 3, "arr": [10, 99, 30], "tags": ["x", "y"]},
        doc! {"sarr": {"a": true, "u1": 99}, "stags": {"a": true, "u1": "y"}},
    );
}

#[test]
fn diff_pull_logs_whole_array() {
    // Worked example 4.
    check(
        doc! {"_id": 4, "a": [1, 2, 3, 2]},
        doc! {"$pull": {"a": 2}},
        doc! {"_id": 4, "a": [1, 3]},
        doc! {"u": {"a": [1, 3]}},
    );
}

#[test]
fn diff_create_nested_path_from_root_and_under_existing_parent() {
    // Worked example 5 (both cases).
    check(
        doc! {"_id": 5, "x": 1},
        doc! {"$set": {"p.q.r": 1}},
        doc! {"_id": 5, "x": 1, "p": {"q": {"r": 1}}},
        doc! {"i": {"p": {"q": {"r": 1}}}},
    );
    check(
        doc! {"_id": 5, "p": {"z": 0}},
        doc! {"$set": {"p.q.r": 1}},
        doc! {"_id": 5, "p": {"z": 0, "q": {"r": 1}}},
        doc! {"sp": {"i": {"q": {"r": 1}}}},
    );
}

#[test]
fn diff_rename_top_level() {
    // Worked example 6.
    check(
        doc! {"_id": 6, "a": 1, "b": 2},
        doc! {"$rename": {"a": "z"}},
        doc! {"_id": 6, "b": 2, "z": 1},
        doc! {"d": {"a": false}, "i": {"z": 1}},
    );
}

#[test]
fn diff_set_create_path_from_root() {
    // set_node_test ApplyCreatePathFromRoot: {c: 5} + {$set: {'a.b': 6}} → {i: {a: {b: 6}}}.
    check(
        doc! {"c": 5},
        doc! {"$set": {"a.b": 6}},
        doc! {"c": 5, "a": {"b": 6}},
        doc! {"i": {"a": {"b": 6}}},
    );
}

#[test]
fn diff_inc_create_path_from_root() {
    // arithmetic_node_test (ApplyCreatePath...): {c: 5} + {$inc: {'a.b': 6}} → {i: {a: {b: 6}}}.
    check(
        doc! {"c": 5},
        doc! {"$inc": {"a.b": 6}},
        doc! {"c": 5, "a": {"b": 6}},
        doc! {"i": {"a": {"b": 6}}},
    );
}

#[test]
fn diff_unset_top_level() {
    // v2_log_builder_test BasicDelete / unset_node_test: {d: {x: false}}.
    check(
        doc! {"x": 1},
        doc! {"$unset": {"x": 1}},
        doc! {},
        doc! {"d": {"x": false}},
    );
}

#[test]
fn diff_unset_array_element_nulls_it() {
    // unset_node_test (array element): {a: [1], b: 1} → {sa: {a: true, u0: null}}.
    check(
        doc! {"a": [1], "b": 1},
        doc! {"$unset": {"a.0": 1}},
        doc! {"a": [Bson::Null], "b": 1},
        doc! {"sa": {"a": true, "u0": Bson::Null}},
    );
}

#[test]
fn diff_nested_unsets_in_tree_order() {
    // v2_log_builder_test VerifyDeletesOrder logs a.c, a.b, x.z, x.y directly into the builder
    // and keeps that order; through an update the tree applies (and logs) paths in sorted order.
    check(
        doc! {"a": {"b": 1, "c": 1, "d": 1}, "x": {"y": 1, "z": 1}},
        doc! {"$unset": {"a.c": 1, "a.b": 1, "x.z": 1, "x.y": 1}},
        doc! {"a": {"d": 1}, "x": {}},
        doc! {"sa": {"d": {"b": false, "c": false}}, "sx": {"d": {"y": false, "z": false}}},
    );
}

#[test]
fn diff_push_one_and_each_append() {
    // push_node_test: appends are logged per element as u<idx>.
    check(
        doc! {"a": [0]},
        doc! {"$push": {"a": 1}},
        doc! {"a": [0, 1]},
        doc! {"sa": {"a": true, "u1": 1}},
    );
    check(
        doc! {"a": [0]},
        doc! {"$push": {"a": {"$each": [1, 2]}}},
        doc! {"a": [0, 1, 2]},
        doc! {"sa": {"a": true, "u1": 1, "u2": 2}},
    );
}

#[test]
fn diff_push_onto_empty_array_logs_whole_array() {
    // push_node.cpp insertElementsWithPosition: arraySize == 0 → kNormalUpdate.
    check(
        doc! {"a": []},
        doc! {"$push": {"a": 1}},
        doc! {"a": [1]},
        doc! {"u": {"a": [1]}},
    );
}

#[test]
fn diff_push_creating_array() {
    // push_node_test: $push creating the array → {i: {a: [1]}}.
    check(
        doc! {},
        doc! {"$push": {"a": 1}},
        doc! {"a": [1]},
        doc! {"i": {"a": [1]}},
    );
}

#[test]
fn diff_push_position_sort_slice_log_whole_array() {
    // push_node.cpp: kNormalUpdate when inserted at the beginning/middle, sorted or sliced.
    check(
        doc! {"a": [1, 2]},
        doc! {"$push": {"a": {"$each": [0], "$position": 0}}},
        doc! {"a": [0, 1, 2]},
        doc! {"u": {"a": [0, 1, 2]}},
    );
    check(
        doc! {"a": [3, 1]},
        doc! {"$push": {"a": {"$each": [2], "$sort": 1}}},
        doc! {"a": [1, 2, 3]},
        doc! {"u": {"a": [1, 2, 3]}},
    );
    check(
        doc! {"a": [1, 2, 3]},
        doc! {"$push": {"a": {"$each": [4], "$slice": -2}}},
        doc! {"a": [3, 4]},
        doc! {"u": {"a": [3, 4]}},
    );
    // A $slice that removes nothing keeps the append form.
    check(
        doc! {"a": [1]},
        doc! {"$push": {"a": {"$each": [2], "$slice": 5}}},
        doc! {"a": [1, 2]},
        doc! {"sa": {"a": true, "u1": 2}},
    );
    // $position equal to the size is not "past the end": kNormalUpdate.
    check(
        doc! {"a": [1]},
        doc! {"$push": {"a": {"$each": [2], "$position": 1}}},
        doc! {"a": [1, 2]},
        doc! {"u": {"a": [1, 2]}},
    );
}

#[test]
fn diff_add_to_set_logs_whole_array() {
    // addtoset_node_test ApplyNonEach (7.0): {a: [0]} + {$addToSet: {a: 1}} → {u: {a: [0, 1]}}.
    check(
        doc! {"a": [0]},
        doc! {"$addToSet": {"a": 1}},
        doc! {"a": [0, 1]},
        doc! {"u": {"a": [0, 1]}},
    );
}

#[test]
fn diff_add_to_set_nested_array_element() {
    // addtoset_node_test: $addToSet on a.1 of {a: [1, []]} → {sa: {a: true, u1: [1]}}.
    check(
        doc! {"a": [1, []]},
        doc! {"$addToSet": {"a.1": 1}},
        doc! {"a": [1, [1]]},
        doc! {"sa": {"a": true, "u1": [1]}},
    );
}

#[test]
fn diff_rename_dbref_id() {
    // rename_node_test: {$rename: {'a.$id': 'b'}} on {a: {$ref: 'c', $id: 0}}
    // → {i: {b: 0}, sa: {d: {$id: false}}}.
    check(
        doc! {"a": {"$ref": "c", "$id": 0}},
        doc! {"$rename": {"a.$id": "b"}},
        doc! {"a": {"$ref": "c"}, "b": 0},
        doc! {"i": {"b": 0}, "sa": {"d": {"$id": false}}},
    );
}

#[test]
fn diff_rename_over_existing_field() {
    // rename = $set at the destination (kept in place → u) + delete of the source.
    check(
        doc! {"a": 1, "b": 2},
        doc! {"$rename": {"a": "b"}},
        doc! {"b": 1},
        doc! {"d": {"a": false}, "u": {"b": 1}},
    );
}

#[test]
fn diff_bit_creating_field() {
    // bit_node_test: $bit creating a field → {i: {a: 0}}.
    check(
        doc! {},
        doc! {"$bit": {"a": {"and": 1}}},
        doc! {"a": 0},
        doc! {"i": {"a": 0}},
    );
}

#[test]
fn diff_set_past_end_of_array_pads_with_nulls() {
    // v2_log_builder ArrayFrame: a created element is written u<idx>; no 'l'.
    check(
        doc! {"a": [0]},
        doc! {"$set": {"a.3": 1}},
        doc! {"a": [0, Bson::Null, Bson::Null, 1]},
        doc! {"sa": {"a": true, "u3": 1}},
    );
}

#[test]
fn diff_create_subdocument_in_new_array_element() {
    // v2_log_builder.cpp ArrayFrame comment: {$set: {"a.0.c": 1}} on {a: []} → u0: {c: 1}.
    check(
        doc! {"a": []},
        doc! {"$set": {"a.0.c": 1}},
        doc! {"a": [{"c": 1}]},
        doc! {"sa": {"a": true, "u0": {"c": 1}}},
    );
}

#[test]
fn diff_all_modification_types() {
    // v2_log_builder_test WithAllModificationTypes: update a.b.c, create a.b.d.e, delete a.b.e.
    check(
        doc! {"a": {"b": {"c": 0, "d": {}, "e": 1}}},
        doc! {"$set": {"a.b.c": 1, "a.b.d.e": 2}, "$unset": {"a.b.e": 1}},
        doc! {"a": {"b": {"c": 1, "d": {"e": 2}}}},
        doc! {"sa": {"sb": {"d": {"e": false}, "u": {"c": 1}, "sd": {"i": {"e": 2}}}}},
    );
}

#[test]
fn diff_one_array_element_several_fields() {
    // update_array_node_test (one element, several fields): {sa: {a: true, s0: {u: {b, c, d}}}}.
    check(
        doc! {"a": [{"b": 0, "c": 0, "d": 0}]},
        doc! {"$set": {"a.0.b": 1, "a.0.c": 1, "a.0.d": 1}},
        doc! {"a": [{"b": 1, "c": 1, "d": 1}]},
        doc! {"sa": {"a": true, "s0": {"u": {"b": 1, "c": 1, "d": 1}}}},
    );
}

#[test]
fn diff_new_fields_in_lexicographic_order() {
    // MongoDB manual "Update Operators – Behavior": several new fields are applied (appended and logged) in
    // lexicographic order; numeric names numerically (cmpPathsAndArrayIndexes).
    check(
        doc! {"_id": 1},
        doc! {"$set": {"z": 1, "a": 1}},
        doc! {"_id": 1, "a": 1, "z": 1},
        doc! {"i": {"a": 1, "z": 1}},
    );
    check(
        doc! {"o": {}},
        doc! {"$set": {"o.10": 1, "o.9": 2}},
        doc! {"o": {"9": 2, "10": 1}},
        doc! {"so": {"i": {"9": 2, "10": 1}}},
    );
}

#[test]
fn diff_several_fields_created_under_one_new_parent() {
    // The second field goes into the same DocumentInsertionNode.
    check(
        doc! {"x": 0},
        doc! {"$set": {"a.c": 2, "a.b": 1}},
        doc! {"x": 0, "a": {"b": 1, "c": 2}},
        doc! {"i": {"a": {"b": 1, "c": 2}}},
    );
}

#[test]
fn diff_type_change_is_a_modification() {
    // binaryEqualValues compares types: 1 → 1.0 is logged.
    check(
        doc! {"a": 1},
        doc! {"$set": {"a": 1.0}},
        doc! {"a": 1.0},
        doc! {"u": {"a": 1.0}},
    );
}

#[test]
fn diff_pop_and_pull_all_log_whole_array() {
    // pull_node_test, pullall_node_test, pop_node_test: $pull, $pullAll, $pop → whole array in u.
    check(
        doc! {"a": [0, 1, 2, 3]},
        doc! {"$pull": {"a": {"$lt": 1}}},
        doc! {"a": [1, 2, 3]},
        doc! {"u": {"a": [1, 2, 3]}},
    );
    check(
        doc! {"a": [1, 2, 3]},
        doc! {"$pop": {"a": -1}},
        doc! {"a": [2, 3]},
        doc! {"u": {"a": [2, 3]}},
    );
    check(
        doc! {"a": [1, 2, 1, 3]},
        doc! {"$pullAll": {"a": [1, 3]}},
        doc! {"a": [2]},
        doc! {"u": {"a": [2]}},
    );
}

// ---------------------------------------------------------------- operator semantics

#[test]
fn noop_updates_are_not_modifications() {
    for update in [
        doc! {"$set": {"a": 1}},
        doc! {"$set": {}},
        doc! {"$unset": {"zz": 1}},
        doc! {"$inc": {"a": 0}},
        doc! {"$min": {"a": 5}},
        doc! {"$max": {"a": -5}},
        doc! {"$addToSet": {"b": 1}},
        doc! {"$pull": {"b": 9}},
        doc! {"$pop": {"missing": 1}},
        doc! {"$rename": {"missing": "x"}},
        doc! {"$setOnInsert": {"c": 1}},
        doc! {"$push": {"b": {"$each": [], "$sort": 1}}},
    ] {
        let (d, out) = run(doc! {"_id": 1, "a": 1, "b": [1, 2]}, update.clone());
        assert!(!out.modified, "{:?}", update);
        assert!(out.oplog_o.is_empty());
        assert_same(&d, &doc! {"_id": 1, "a": 1, "b": [1, 2]});
    }
}

#[test]
fn inc_and_mul_type_rules() {
    let (d, _) = run(doc! {"a": i32::MAX}, doc! {"$inc": {"a": 1}});
    assert_same(&d, &doc! {"a": i32::MAX as i64 + 1});
    let (d, _) = run(doc! {"a": 1}, doc! {"$inc": {"a": 1_i64}});
    assert_same(&d, &doc! {"a": 2_i64});
    let (d, _) = run(doc! {"a": 1}, doc! {"$inc": {"a": 0.5}});
    assert_same(&d, &doc! {"a": 1.5});
    let (d, _) = run(doc! {"a": 70000}, doc! {"$mul": {"a": 70000}});
    assert_same(&d, &doc! {"a": 4_900_000_000_i64});
    // $mul on a missing field creates a zero of the multiplier's type.
    let (d, _) = run(doc! {}, doc! {"$mul": {"a": 5_i64, "b": 2.5, "c": 3}});
    assert_same(&d, &doc! {"a": 0_i64, "b": 0.0, "c": 0});
    let e = err(doc! {"_id": 1, "a": i64::MAX}, doc! {"$inc": {"a": 1}});
    assert_eq!(e.code, 2);
}

#[test]
fn min_max_current_date_set_on_insert() {
    let (d, _) = run(
        doc! {"a": 5, "b": 5},
        doc! {"$min": {"a": 3}, "$max": {"b": 9, "c": 1}},
    );
    assert_same(&d, &doc! {"a": 3, "b": 9, "c": 1});
    let c = ctx();
    let (d, _) = run(
        doc! {"a": 1},
        doc! {"$currentDate": {"a": true, "b": {"$type": "timestamp"}, "c": {"$type": "date"}}},
    );
    assert_same(
        &d,
        &doc! {"a": c.now, "b": Bson::Timestamp(c.now_ts), "c": c.now},
    );
    // $setOnInsert applies only when inserting.
    let spec = UpdateSpec::parse(&doc! {"$setOnInsert": {"x": 1}, "$set": {"y": 2}}, None).unwrap();
    let mut d = doc! {"_id": 7};
    spec.apply(&mut d, &ctx()).unwrap();
    assert_same(&d, &doc! {"_id": 7, "y": 2});
    let mut d = doc! {"_id": 7};
    let ins = UpdateContext {
        inserting: true,
        ..ctx()
    };
    spec.apply(&mut d, &ins).unwrap();
    assert_same(&d, &doc! {"_id": 7, "x": 1, "y": 2});
}

#[test]
fn push_modifiers_and_add_to_set_each() {
    let (d, _) = run(
        doc! {"a": [{"s": 3}, {"s": 1}]},
        doc! {"$push": {"a": {"$each": [{"s": 2}], "$sort": {"s": -1}, "$slice": 2}}},
    );
    assert_same(&d, &doc! {"a": [{"s": 3}, {"s": 2}]});
    let (d, _) = run(
        doc! {"a": [1, 2, 3]},
        doc! {"$push": {"a": {"$each": [9], "$position": -1}}},
    );
    assert_same(&d, &doc! {"a": [1, 2, 9, 3]});
    let (d, out) = run(
        doc! {"a": [1, 2]},
        doc! {"$addToSet": {"a": {"$each": [2, 3, 3, 4.0]}}},
    );
    assert_same(&d, &doc! {"a": [1, 2, 3, 4.0]});
    assert_same(&out.oplog_o, &v2(doc! {"u": {"a": [1, 2, 3, 4.0]}}));
}

#[test]
fn pull_with_conditions() {
    let (d, _) = run(doc! {"a": [1, 5, 6, 9]}, doc! {"$pull": {"a": {"$gte": 6}}});
    assert_same(&d, &doc! {"a": [1, 5]});
    let (d, _) = run(
        doc! {"r": [{"score": 8, "item": "A"}, {"score": 7}, {"score": 8, "item": "B"}]},
        doc! {"$pull": {"r": {"score": 8}}},
    );
    assert_same(&d, &doc! {"r": [{"score": 7}]});
    let (d, _) = run(doc! {"a": [1, 1.0, "1"]}, doc! {"$pull": {"a": 1}});
    assert_same(&d, &doc! {"a": ["1"]});
    let (d, _) = run(
        doc! {"a": ["apple", "banana", "avocado"]},
        doc! {"$pull": {"a": Bson::RegularExpression(bson::Regex { pattern: "^a".into(), options: "".into() })}},
    );
    assert_same(&d, &doc! {"a": ["banana"]});
}

#[test]
fn bit_operations() {
    let (d, _) = run(
        doc! {"a": 13, "b": 1},
        doc! {"$bit": {"a": {"and": 10}, "b": {"or": 4_i64}}},
    );
    assert_same(&d, &doc! {"a": 8, "b": 5_i64});
    let e = err(doc! {"_id": 1, "a": 1.5}, doc! {"$bit": {"a": {"xor": 1}}});
    assert_eq!(e.code, 2);
}

#[test]
fn rename_nested_moves_to_end_of_target() {
    let (d, out) = run(
        doc! {"_id": 1, "a": {"x": 1, "y": 2}, "b": {"k": 0}},
        doc! {"$rename": {"a.x": "b.x"}},
    );
    assert_same(&d, &doc! {"_id": 1, "a": {"y": 2}, "b": {"k": 0, "x": 1}});
    // Destination logged first (sb), then the deleted source (sa).
    assert_same(
        &out.oplog_o,
        &v2(doc! {"sb": {"i": {"x": 1}}, "sa": {"d": {"x": false}}}),
    );
}

#[test]
fn error_messages_and_codes() {
    let e = err(doc! {"_id": 1, "a": "x"}, doc! {"$inc": {"a": 1}});
    assert_eq!((e.code, e.code_name().as_ref()), (14, "TypeMismatch"));
    assert_eq!(
        e.message,
        "Cannot apply $inc to a value of non-numeric type. {_id: 1} has the field 'a' of \
         non-numeric type string"
    );
    let e = err(doc! {"_id": 1}, doc! {"$foo": {"a": 1}});
    assert_eq!(e.code, 9);
    assert_eq!(
        e.message,
        "Unknown modifier: $foo. Expected a valid update modifier or pipeline-style update \
         specified as an array"
    );
    let e = err(doc! {"_id": 1}, doc! {"$set": {"a": 1}, "$inc": {"a.b": 1}});
    assert_eq!(e.code, 40);
    assert_eq!(
        e.message,
        "Updating the path 'a.b' would create a conflict at 'a'"
    );
    let e = err(doc! {"_id": 1}, doc! {"$set": {"a": 1}, "$inc": {"a": 1}});
    assert_eq!(
        e.message,
        "Updating the path 'a' would create a conflict at 'a'"
    );
    let e = err(doc! {"_id": 1, "a": 5}, doc! {"$set": {"a.b": 1}});
    assert_eq!(
        (e.code, e.message.as_str()),
        (28, "Cannot create field 'b' in element {a: 5}")
    );
    let e = err(doc! {"_id": 1, "a": [1, 2]}, doc! {"$set": {"a.b": 1}});
    assert_eq!(
        e.message,
        "Cannot create field 'b' in element {a: [ 1, 2 ]}"
    );
    let e = err(doc! {"_id": 1}, doc! {"$set": {"_id": 2}});
    assert_eq!((e.code, e.code_name().as_ref()), (66, "ImmutableField"));
    assert_eq!(
        e.message,
        "Performing an update on the path '_id' would modify the immutable field '_id'"
    );
    let e = err(doc! {"_id": 1}, doc! {"$unset": {"_id": 1}});
    assert_eq!(e.code, 66);
    let e = err(doc! {"_id": 1, "a": 1}, doc! {"$push": {"a": 2}});
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            2,
            "The field 'a' must be an array but is of type int in document {_id: 1}"
        )
    );
    let e = err(doc! {"_id": 1, "a": 1}, doc! {"$pop": {"a": 1}});
    assert_eq!(
        (e.code, e.message.as_str()),
        (14, "Path 'a' contains an element of non-array type 'int'")
    );
    let e = err(doc! {"_id": 1}, doc! {"$pop": {"a": 2}});
    assert_eq!(e.code, 9);
    let e = err(doc! {"_id": 1}, doc! {"$set": 1});
    assert_eq!(e.code, 9);
    let e = err(doc! {"_id": 1}, doc! {"$rename": {"a": "a.b"}});
    assert_eq!(e.code, 2);
    // Array updates need the array (update_array_node_test ApplyCreatePathFails).
    let e = err(doc! {"_id": 1}, doc! {"$set": {"a.$[]": 1}});
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            2,
            "The path 'a' must exist in the document in order to apply array updates."
        )
    );
    let e = err(doc! {"_id": 1}, doc! {"$set": {"a..b": 1}});
    assert_eq!(e.code, 56);
    let e = err(doc! {"_id": 1, "a": 5}, doc! {"$pull": {"a.b": 1}});
    assert_eq!(e.code, 28);
    // Setting _id to its current value is allowed (no-op).
    let (_, out) = run(doc! {"_id": 1}, doc! {"$set": {"_id": 1}});
    assert!(!out.modified);
}

#[test]
fn pipeline_updates_replace_and_log_a_delta_or_the_document() {
    let spec = UpdateSpec::parse_bson(
        &Bson::Array(vec![Bson::Document(doc! {"$set": {"a": 1}})]),
        None,
    )
    .unwrap();
    let pad = "p".repeat(500);
    let mut d = doc! {"_id": 1, "pad": pad.clone(), "a": 0};
    let out = spec.apply(&mut d, &ctx()).unwrap();
    assert_eq!(d, doc! {"_id": 1, "pad": pad, "a": 1});
    assert_eq!(out.oplog_o, doc! {"$v": 2, "diff": {"u": {"a": 1}}});
    // Unchanged: no entry.
    let out = spec.apply(&mut d, &ctx()).unwrap();
    assert!(!out.modified && out.oplog_o.is_empty());
    let e = UpdateSpec::parse_bson(
        &Bson::Array(vec![Bson::Document(doc! {"$set": {"a": 1}})]),
        Some(&[doc! {"x.a": 1}]),
    )
    .unwrap_err();
    assert_eq!(e.code, 9);
}

// ---------------------------------------------------------------- replacement

#[test]
fn replacement_keeps_id_first_and_logs_new_document() {
    let spec = UpdateSpec::parse(&doc! {"b": 2, "_id": 1}, None).unwrap();
    assert!(spec.is_replacement());
    let mut d = doc! {"_id": 1, "a": 1};
    let out = spec.apply(&mut d, &ctx()).unwrap();
    assert_same(&d, &doc! {"_id": 1, "b": 2});
    assert!(out.modified);
    assert_same(&out.oplog_o, &doc! {"_id": 1, "b": 2});

    // Without _id: the original _id is kept (first).
    let spec = UpdateSpec::parse(&doc! {"c": 3}, None).unwrap();
    let mut d = doc! {"_id": 9, "a": 1};
    let out = spec.apply(&mut d, &ctx()).unwrap();
    assert_same(&out.oplog_o, &doc! {"_id": 9, "c": 3});

    // Identical replacement: no modification.
    let spec = UpdateSpec::parse(&doc! {"a": 1}, None).unwrap();
    let mut d = doc! {"_id": 9, "a": 1};
    assert!(!spec.apply(&mut d, &ctx()).unwrap().modified);
}

#[test]
fn replacement_errors() {
    let spec = UpdateSpec::parse(&doc! {"_id": 2, "a": 1}, None).unwrap();
    let mut d = doc! {"_id": 1};
    let e = spec.apply(&mut d, &ctx()).unwrap_err();
    assert_eq!(e.code, 66);
    assert_eq!(
        e.message,
        "After applying the update, the (immutable) field '_id' was found to have been altered \
         to _id: 2"
    );
    let e = UpdateSpec::parse(&doc! {"a": 1, "$set": {"b": 1}}, None).unwrap_err();
    assert_eq!(e.code, 52);
}

// ---------------------------------------------------------------- upsert

#[test]
fn upsert_seed_from_equalities() {
    let q = doc! {"a": 1, "b.c": 2, "$and": [{"d": 3}], "e": {"$gt": 1}, "f": {"$eq": 4}, "_id": 5};
    assert_same(
        &upsert_seed(&q).unwrap(),
        &doc! {"_id": 5, "a": 1, "b": {"c": 2}, "d": 3, "f": 4},
    );
    let e = upsert_seed(&doc! {"a": 1, "a.b": 2}).unwrap_err();
    assert_eq!(e.code, 54);
    assert_same(
        &upsert_seed_for_replacement(&doc! {"_id": 3, "x": 1}).unwrap(),
        &doc! {"_id": 3},
    );
}

#[test]
fn upsert_apply_generates_id_and_checks_immutability() {
    let ins = UpdateContext {
        inserting: true,
        ..ctx()
    };
    let seed = upsert_seed(&doc! {"a": 1}).unwrap();
    let spec = UpdateSpec::parse(&doc! {"$set": {"b": 2}, "$setOnInsert": {"c": 3}}, None).unwrap();
    let mut d = seed;
    spec.apply(&mut d, &ins).unwrap();
    assert_eq!(d.keys().collect::<Vec<_>>(), vec!["_id", "a", "b", "c"]);
    assert!(matches!(d.get("_id"), Some(Bson::ObjectId(_))));

    let mut d = upsert_seed(&doc! {"_id": 1}).unwrap();
    let spec = UpdateSpec::parse(&doc! {"$set": {"_id": 2}}, None).unwrap();
    assert_eq!(spec.apply(&mut d, &ins).unwrap_err().code, 66);
}

#[test]
fn diff_two_fields_in_new_array_element_past_the_end() {
    // Second field logged into the same created element (applyChild moves the created
    // 'pathToCreate' into the path taken).
    check(
        doc! {"a": [0]},
        doc! {"$set": {"a.2.y": 2, "a.2.x": 1}},
        doc! {"a": [0, Bson::Null, {"x": 1, "y": 2}]},
        doc! {"sa": {"a": true, "u2": {"x": 1, "y": 2}}},
    );
    // A numeric name on an object is a field, not an index.
    check(
        doc! {"a": {"0": 1}},
        doc! {"$set": {"a.0": 5}},
        doc! {"a": {"0": 5}},
        doc! {"sa": {"u": {"0": 5}}},
    );
}
