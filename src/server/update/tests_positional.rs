//! Tests of the positional update operators (`$`, `$[]`, `$[<identifier>]` with arrayFilters)
//! and of `$currentDate` on an existing field. Expected values are cited from MongoDB's
//! src/mongo/db/update/update_array_node_test.cpp ("array node test", whose `$v:1` log
//! documents are given here in the `$v:2` form the same logging calls produce),
//! update_object_node_test.cpp, current_date_node_test.cpp, jstests/core/update_arrayFilters.js
//! and MongoDB's update node tests (`src/mongo/db/update/*_node_test.cpp`).

use super::tests::{assert_same, ctx, v2};
use super::*;
use bson::{doc, Document};

#[track_caller]
fn run(
    doc: Document,
    update: Document,
    filters: &[Document],
    matched: Option<usize>,
) -> (Document, UpdateOutcome) {
    let spec = UpdateSpec::parse(&update, Some(filters)).unwrap();
    let mut d = doc;
    let out = spec.apply_matched(&mut d, &ctx(), matched).unwrap();
    (d, out)
}

/// Apply and check the post-image and the logged `o`.
#[track_caller]
fn check(
    doc: Document,
    update: Document,
    filters: &[Document],
    matched: Option<usize>,
    after: Document,
    diff: Document,
) {
    let (d, out) = run(doc, update, filters, matched);
    assert_same(&d, &after);
    assert!(out.modified);
    assert_same(&out.oplog_o, &v2(diff));
}

/// Apply and check that nothing changed and nothing is logged.
#[track_caller]
fn check_noop(doc: Document, update: Document, filters: &[Document]) {
    let (d, out) = run(doc.clone(), update, filters, None);
    assert_same(&d, &doc);
    assert!(!out.modified);
    assert!(out.oplog_o.is_empty());
}

#[track_caller]
fn err(
    doc: Document,
    update: Document,
    filters: &[Document],
    matched: Option<usize>,
) -> ServerError {
    let mut d = doc.clone();
    let e = match UpdateSpec::parse(&update, Some(filters)) {
        Err(e) => e,
        Ok(spec) => spec.apply_matched(&mut d, &ctx(), matched).unwrap_err(),
    };
    assert_same(&d, &doc);
    e
}

#[track_caller]
fn assert_err(e: ServerError, code: i32, message: &str) {
    assert_eq!((e.code, e.message.as_str()), (code, message));
}

// ---------------------------------------------------------------- positional $

#[test]
fn positional_set_logs_the_matched_element() {
    // set_node_test: `$set: {'a.$': 6}` (matched index 1) on {a: [0, 1, 2]} → {sa: {a: true, u1: 6}}.
    check(
        doc! {"a": [0, 1, 2]},
        doc! {"$set": {"a.$": 6}},
        &[],
        Some(1),
        doc! {"a": [0, 6, 2]},
        doc! {"sa": {"a": true, "u1": 6}},
    );
    // The positional child of an array of documents.
    check(
        doc! {"a": [{"k": 1, "v": 0}, {"k": 2, "v": 0}]},
        doc! {"$set": {"a.$.v": 9}},
        &[],
        Some(1),
        doc! {"a": [{"k": 1, "v": 0}, {"k": 2, "v": 9}]},
        doc! {"sa": {"a": true, "s1": {"u": {"v": 9}}}},
    );
}

#[test]
fn positional_without_a_match_fails() {
    // UpdateObjectNode::apply: BadValue when the query gave no matched field.
    assert_err(
        err(doc! {"a": [0, 1]}, doc! {"$set": {"a.$": 6}}, &[], None),
        2,
        "The positional operator did not find the match needed from the query.",
    );
}

#[test]
fn positional_is_merged_with_the_child_of_the_same_name() {
    // UpdateObjectNode::apply merges the positional child with the child named like the
    // matched field; two leaves conflict (createUpdateNodeByMerging).
    assert_err(
        err(
            doc! {"a": [0, 1]},
            doc! {"$set": {"a.$": 5, "a.1": 6}},
            &[],
            Some(1),
        ),
        40,
        "Update created a conflict at 'a.1'",
    );
    check(
        doc! {"a": [{}, {"x": 0}]},
        doc! {"$set": {"a.$.c": 1, "a.1.b": 2}},
        &[],
        Some(1),
        doc! {"a": [{}, {"x": 0, "b": 2, "c": 1}]},
        doc! {"sa": {"a": true, "s1": {"i": {"b": 2, "c": 1}}}},
    );
}

#[test]
fn positional_path_checks() {
    // update_object_node.cpp parseAndMerge.
    assert_err(
        err(doc! {}, doc! {"$set": {"a.$.b.$": 1}}, &[], Some(0)),
        2,
        "Too many positional (i.e. '$') elements found in path 'a.$.b.$'",
    );
    assert_err(
        err(doc! {}, doc! {"$set": {"$.a": 1}}, &[], Some(0)),
        2,
        "Cannot have positional (i.e. '$') element in the first position in path '$.a'",
    );
    // rename_node.cpp init.
    assert_err(
        err(doc! {}, doc! {"$rename": {"a.$": "b"}}, &[], Some(0)),
        2,
        "The source field for $rename may not be dynamic: a.$",
    );
    assert_err(
        err(doc! {}, doc! {"$rename": {"b": "a.$[]"}}, &[], Some(0)),
        2,
        "The destination field for $rename may not be dynamic: a.$[]",
    );
}

// ---------------------------------------------------------------- $[] and $[<identifier>]

#[test]
fn array_filter_update_is_applied_to_all_matching_elements() {
    // array node test UpdateIsAppliedToAllMatchingElements: {$set: {a: [2, 1, 2]}}.
    check(
        doc! {"a": [0, 1, 0]},
        doc! {"$set": {"a.$[i]": 2}},
        &[doc! {"i": 0}],
        None,
        doc! {"a": [2, 1, 2]},
        doc! {"u": {"a": [2, 1, 2]}},
    );
}

#[test]
fn empty_identifier_applies_to_all_elements() {
    // array node test UpdateForEmptyIdentifierIsAppliedToAllArrayElements.
    check(
        doc! {"a": [0, 0, 0]},
        doc! {"$set": {"a.$[]": 1}},
        &[],
        None,
        doc! {"a": [1, 1, 1]},
        doc! {"u": {"a": [1, 1, 1]}},
    );
}

#[test]
fn several_updates_to_one_element_are_logged_by_the_children() {
    // array node test ApplyMultipleUpdatesToArrayElement: {$set: {'a.0.b': 1, 'a.0.c': 1,
    // 'a.0.d': 1}}; the node tests give the $v:2 form.
    check(
        doc! {"a": [{"b": 0, "c": 0, "d": 0}]},
        doc! {"$set": {"a.$[i].b": 1, "a.$[j].c": 1, "a.$[k].d": 1}},
        &[doc! {"i.b": 0}, doc! {"j.c": 0}, doc! {"k.d": 0}],
        None,
        doc! {"a": [{"b": 1, "c": 1, "d": 1}]},
        doc! {"sa": {"a": true, "s0": {"u": {"b": 1, "c": 1, "d": 1}}}},
    );
    // ... and with one identifier (the pytest case).
    check(
        doc! {"a": [{"b": 0, "c": 0, "d": 0}]},
        doc! {"$set": {"a.$[i].b": 1, "a.$[i].c": 1, "a.$[i].d": 1}},
        &[doc! {"i.b": 0}],
        None,
        doc! {"a": [{"b": 1, "c": 1, "d": 1}]},
        doc! {"sa": {"a": true, "s0": {"u": {"b": 1, "c": 1, "d": 1}}}},
    );
    // ApplyMultipleUpdatesToArrayElementWithEmptyIdentifiers: {$set: {'a.0.b': 1, 'a.0.c': 1}}.
    check(
        doc! {"a": [{"b": 0, "c": 0}]},
        doc! {"$set": {"a.$[].b": 1, "a.$[].c": 1}},
        &[],
        None,
        doc! {"a": [{"b": 1, "c": 1}]},
        doc! {"sa": {"a": true, "s0": {"u": {"b": 1, "c": 1}}}},
    );
}

#[test]
fn several_modified_elements_log_the_whole_array() {
    // ApplyMultipleUpdatesToArrayElementsUsingMergedChildrenCache.
    check(
        doc! {"a": [{"b": 0, "c": 0}, {"b": 0, "c": 0}]},
        doc! {"$set": {"a.$[i].b": 1, "a.$[j].c": 1}},
        &[doc! {"i.b": 0}, doc! {"j.c": 0}],
        None,
        doc! {"a": [{"b": 1, "c": 1}, {"b": 1, "c": 1}]},
        doc! {"u": {"a": [{"b": 1, "c": 1}, {"b": 1, "c": 1}]}},
    );
    // ApplyMultipleUpdatesToArrayElementsWithoutMergedChildrenCache.
    check(
        doc! {"a": [{"b": 0, "c": 0, "d": 1}, {"b": 1, "c": 0, "d": 0}]},
        doc! {"$set": {"a.$[i].b": 2, "a.$[j].c": 2, "a.$[k].d": 2}},
        &[doc! {"i.b": 0}, doc! {"j.c": 0}, doc! {"k.d": 0}],
        None,
        doc! {"a": [{"b": 2, "c": 2, "d": 1}, {"b": 1, "c": 2, "d": 2}]},
        doc! {"u": {"a": [{"b": 2, "c": 2, "d": 1}, {"b": 1, "c": 2, "d": 2}]}},
    );
}

#[test]
fn nested_array_updates() {
    // ApplyNestedArrayUpdates: {$set: {'a.0.b.0.c': 1, 'a.0.b.0.d': 1}}.
    check(
        doc! {"a": [{"x": 0, "b": [{"c": 0, "d": 0}]}]},
        doc! {"$set": {"a.$[i].b.$[j].c": 1, "a.$[k].b.$[l].d": 1}},
        &[
            doc! {"i.x": 0},
            doc! {"j.c": 0},
            doc! {"k.x": 0},
            doc! {"l.d": 0},
        ],
        None,
        doc! {"a": [{"x": 0, "b": [{"c": 1, "d": 1}]}]},
        doc! {"sa": {"a": true, "s0": {"sb": {"a": true, "s0": {"u": {"c": 1, "d": 1}}}}}},
    );
    // jstests/core/update_arrayFilters.js: nested identifiers update only matching elements.
    let (d, _) = run(
        doc! {"a": [{"b": 0, "c": [{"d": 0}, {"d": 1}]}, {"b": 1, "c": [{"d": 0}, {"d": 1}]}]},
        doc! {"$set": {"a.$[i].c.$[j].d": 2}},
        &[doc! {"i.b": 0}, doc! {"j.d": 0}],
        None,
    );
    assert_same(
        &d,
        &doc! {"a": [{"b": 0, "c": [{"d": 2}, {"d": 1}]}, {"b": 1, "c": [{"d": 0}, {"d": 1}]}]},
    );
    // ... and a logical filter: {$or: [{i: 0}, {i: 3}]} on [0, 1, 3] → [2, 1, 2].
    let (d, _) = run(
        doc! {"a": [0, 1, 3]},
        doc! {"$set": {"a.$[i]": 2}},
        &[doc! {"$or": [{"i": 0}, {"i": 3}]}],
        None,
    );
    assert_same(&d, &doc! {"a": [2, 1, 2]});
}

#[test]
fn merge_conflicts_at_an_element() {
    // ApplyUpdatesWithMergeConflictToArrayElementFails.
    assert_err(
        err(
            doc! {"a": [0]},
            doc! {"$set": {"a.$[i]": 1, "a.$[j]": 1}},
            &[doc! {"i": 0}, doc! {"j": 0}],
            None,
        ),
        40,
        "Update created a conflict at 'a.0'",
    );
    // ApplyUpdatesWithEmptyIdentifiersWithMergeConflictToArrayElementFails.
    assert_err(
        err(
            doc! {"a": [{"b": [0]}]},
            doc! {"$set": {"a.$[].b.$[i]": 1, "a.$[].b.$[j]": 1}},
            &[doc! {"i": 0}, doc! {"j": 0}],
            None,
        ),
        40,
        "Update created a conflict at 'a.0.b.0'",
    );
    // ApplyNestedArrayUpdatesWithMergeConflictFails.
    assert_err(
        err(
            doc! {"a": [{"b": [0], "c": 0}]},
            doc! {"$set": {"a.$[i].b.$[j]": 1, "a.$[k].b.$[l]": 1}},
            &[
                doc! {"i.c": 0},
                doc! {"j": 0},
                doc! {"k.c": 0},
                doc! {"l": 0},
            ],
            None,
        ),
        40,
        "Update created a conflict at 'a.0.b.0'",
    );
}

#[test]
fn no_matching_or_unchanged_elements_are_a_noop() {
    // NoArrayElementsMatch, UpdatesToAllArrayElementsAreNoops, ArrayUpdateOnEmptyArrayIsANoop.
    check_noop(
        doc! {"a": [2, 2, 2]},
        doc! {"$set": {"a.$[i]": 1}},
        &[doc! {"i": 0}],
    );
    check_noop(
        doc! {"a": [1, 1, 1]},
        doc! {"$set": {"a.$[i]": 1}},
        &[doc! {"i": 1}],
    );
    check_noop(doc! {"a": []}, doc! {"$set": {"a.$[]": 0}}, &[]);
}

#[test]
fn one_matched_or_one_modified_element() {
    // WhenOneElementIsMatchedLogElementUpdateDirectly: {$set: {'a.1.b': 0}} (a created field).
    check(
        doc! {"a": [{"c": 1}, {"c": 0}, {"c": 1}]},
        doc! {"$set": {"a.$[i].b": 0}},
        &[doc! {"i.c": 0}],
        None,
        doc! {"a": [{"c": 1}, {"c": 0, "b": 0}, {"c": 1}]},
        doc! {"sa": {"a": true, "s1": {"i": {"b": 0}}}},
    );
    // WhenOneElementIsModifiedLogElement: two elements match, one changes → {$set: {'a.1':
    // {c: 0, b: 0}}}.
    check(
        doc! {"a": [{"c": 0, "b": 0}, {"c": 0}, {"c": 1}]},
        doc! {"$set": {"a.$[i].b": 0}},
        &[doc! {"i.c": 0}],
        None,
        doc! {"a": [{"c": 0, "b": 0}, {"c": 0, "b": 0}, {"c": 1}]},
        doc! {"sa": {"a": true, "u1": {"c": 0, "b": 0}}},
    );
}

#[test]
fn positional_inside_array_update() {
    // ApplyPositionalInsideArrayUpdate (matchedField "1"): {$set: {'a.0.b.1': 1}}.
    check(
        doc! {"a": [{"b": [0, 0], "c": 0}]},
        doc! {"$set": {"a.$[i].b.$": 1}},
        &[doc! {"i.c": 0}],
        Some(1),
        doc! {"a": [{"b": [0, 1], "c": 0}]},
        doc! {"sa": {"a": true, "s0": {"sb": {"a": true, "u1": 1}}}},
    );
}

#[test]
fn array_updates_need_an_existing_array() {
    // ApplyCreatePathFails / ApplyToNonArrayFails.
    assert_err(
        err(
            doc! {"a": {}},
            doc! {"$set": {"a.b.$[i]": 0}},
            &[doc! {"i": 0}],
            None,
        ),
        2,
        "The path 'a.b' must exist in the document in order to apply array updates.",
    );
    assert_err(
        err(
            doc! {"a": {}},
            doc! {"$set": {"a.$[i]": 0}},
            &[doc! {"i": 0}],
            None,
        ),
        2,
        "Cannot apply array updates to non-array element a: {}",
    );
}

#[test]
fn array_filter_identifier_errors() {
    // update_object_node_test IdentifierWithoutArrayFilterFailsToParse.
    assert_err(
        err(doc! {}, doc! {"$set": {"a.$[i]": 5}}, &[], None),
        2,
        "No array filter found for identifier 'i' in path 'a.$[i]'",
    );
    // jstests/core/update_arrayFilters.js: unused array filter.
    assert_err(
        err(
            doc! {},
            doc! {"$set": {"a.$[i]": 5.0}},
            &[doc! {"i": 0}, doc! {"j": 0}],
            None,
        ),
        9,
        "The array filter for identifier 'j' was not used in the update { $set: { a.$[i]: 5.0 } }",
    );
    // ... an identifier at the same position as `$`.
    assert_err(
        err(
            doc! {},
            doc! {"$set": {"a.$[i]": 0, "a.$": 0}},
            &[doc! {"i": 0}],
            Some(0),
        ),
        40,
        "Updating the path 'a.$' would create a conflict at 'a'",
    );
    assert_err(
        err(doc! {}, doc! {"$set": {"$[]": 0}}, &[], None),
        2,
        "Cannot have array filter identifier (i.e. '$[<id>]') element in the first position in \
         path '$[]'",
    );
}

#[test]
fn array_filter_parse_errors() {
    // parsed_update.cpp parseArrayFilters / expression_with_placeholder.cpp (messages as in
    // jstests/core/update_arrayFilters.js).
    assert_err(
        err(
            doc! {},
            doc! {"$set": {"a.$[I]": 1}},
            &[doc! {"I": 0}],
            None,
        ),
        2,
        "Error parsing array filter :: caused by :: The top-level field name must be an \
         alphanumeric string beginning with a lowercase letter, found 'I'",
    );
    assert_err(
        err(
            doc! {},
            doc! {"$set": {"a.$[i]": 1}},
            &[doc! {"i": 0}, doc! {"i": 1}],
            None,
        ),
        9,
        "Found multiple array filters with the same top-level field name i",
    );
    assert_err(
        err(
            doc! {},
            doc! {"$set": {"a.$[i]": 1}},
            &[doc! {"i": 0, "j": 0}],
            None,
        ),
        9,
        "Error parsing array filter :: caused by :: Expected a single top-level field name, \
         found 'i' and 'j'",
    );
}

// ---------------------------------------------------------------- $currentDate

#[test]
fn current_date_on_existing_field_is_always_an_update() {
    // current_date_node_test ApplyTrue: {a: 0} → a Date, logged as an update of `a`.
    let c = ctx();
    check(
        doc! {"a": 0},
        doc! {"$currentDate": {"a": true}},
        &[],
        None,
        doc! {"a": c.now},
        doc! {"u": {"a": c.now}},
    );
    // updateExistingElement always reports kNormalUpdate: even an unchanged value is written.
    check(
        doc! {"a": c.now},
        doc! {"$currentDate": {"a": {"$type": "date"}}},
        &[],
        None,
        doc! {"a": c.now},
        doc! {"u": {"a": c.now}},
    );
    // init(): the message names the operand's type.
    assert_err(
        err(doc! {}, doc! {"$currentDate": {"a": 1}}, &[], None),
        2,
        "int is not valid type for $currentDate. Please use a boolean ('true') or a $type \
         expression ({$type: 'timestamp/date'}).",
    );
}
