//! Tests for the diff translation: worked examples (diffs as `v2_log_builder_test.cpp` and the
//! update node tests in mongodb/mongo `src/mongo/db/update/` assert them), validation, and a
//! property test against a reference diff applier written from `document_diff_applier.cpp`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};

use bson::{doc, Bson, Document};
use proptest::prelude::*;

use super::*;

// ---------------------------------------------------------------------------------------------
// Reference $v:2 applier (after `src/mongo/db/update/document_diff_applier.cpp`), independent of
// the translator.

enum RefMod<'a> {
    Delete,
    Update(&'a Bson),
    Insert,
    Sub(&'a Document),
}

fn is_array_diff(d: &Document) -> bool {
    d.keys().next().map(String::as_str) == Some("a")
}

fn ref_apply_doc(pre: &Document, diff: &Document) -> Document {
    let mut table: HashMap<&str, RefMod> = HashMap::new();
    let mut to_append: Vec<(&str, &Bson)> = Vec::new();
    // Tables are built section by section: deletes, updates, inserts, sub-diffs.
    for (key, value) in diff {
        let body = value.as_document().expect("section is a document");
        match key.as_bytes()[0] {
            b'd' => {
                for f in body.keys() {
                    assert!(table.insert(f, RefMod::Delete).is_none());
                }
            }
            b'u' => {
                for (f, v) in body {
                    assert!(table.insert(f, RefMod::Update(v)).is_none());
                    to_append.push((f, v));
                }
            }
            b'i' => {
                for (f, v) in body {
                    assert!(table.insert(f, RefMod::Insert).is_none());
                    to_append.push((f, v));
                }
            }
            b's' => {
                assert!(table.insert(&key[1..], RefMod::Sub(body)).is_none());
            }
            other => panic!("unexpected section {other}"),
        }
    }
    let mut out = Document::new();
    let mut done: HashSet<&str> = HashSet::new();
    for (field, value) in pre {
        match table.get(field.as_str()) {
            None => {
                out.insert(field.clone(), value.clone());
            }
            Some(RefMod::Delete) | Some(RefMod::Insert) => {}
            Some(RefMod::Update(v)) => {
                out.insert(field.clone(), (*v).clone());
                done.insert(field);
            }
            Some(RefMod::Sub(sub)) => {
                let new = match (value, is_array_diff(sub)) {
                    (Bson::Document(d), false) => Bson::Document(ref_apply_doc(d, sub)),
                    (Bson::Array(a), true) => Bson::Array(ref_apply_array(a, sub)),
                    _ => Bson::Null,
                };
                out.insert(field.clone(), new);
            }
        }
    }
    // Note: the real applier keys `done` by the pre-image field; `u` fields that existed are
    // done, everything else in `to_append` goes to the end in diff order.
    for (field, value) in to_append {
        if !done.contains(field) {
            out.insert(field, value.clone());
        }
    }
    out
}

fn ref_apply_array(pre: &[Bson], diff: &Document) -> Vec<Bson> {
    let mut iter = diff.iter();
    iter.next(); // "a": true
    let mut resize = None;
    let mut mods: Vec<(usize, u8, &Bson)> = Vec::new();
    for (k, v) in iter {
        if k == "l" {
            resize = Some(v.as_i32().unwrap() as usize);
            continue;
        }
        mods.push((k[1..].parse().unwrap(), k.as_bytes()[0], v));
    }
    let apply_mod = |pre: Option<&Bson>, kind: u8, v: &Bson| -> Bson {
        if kind == b'u' {
            return v.clone();
        }
        let sub = v.as_document().unwrap();
        match (pre, is_array_diff(sub)) {
            (Some(Bson::Array(a)), true) => Bson::Array(ref_apply_array(a, sub)),
            (Some(Bson::Document(d)), false) => Bson::Document(ref_apply_doc(d, sub)),
            _ => Bson::Null,
        }
    };
    let mut out = Vec::new();
    let mut next = 0;
    let mut idx = 0;
    while idx < pre.len() && resize.is_none_or(|l| idx < l) {
        if next < mods.len() && mods[next].0 == idx {
            out.push(apply_mod(Some(&pre[idx]), mods[next].1, mods[next].2));
            next += 1;
        } else {
            out.push(pre[idx].clone());
        }
        idx += 1;
    }
    while resize.is_some_and(|l| idx < l) || next < mods.len() {
        if next < mods.len() && mods[next].0 == idx {
            out.push(apply_mod(None, mods[next].1, mods[next].2));
            next += 1;
        } else {
            out.push(Bson::Null);
        }
        idx += 1;
    }
    if let Some(l) = resize {
        assert_eq!(out.len(), l, "applier invariant");
    }
    out
}

fn ref_apply(pre: &Document, o: &Document) -> Document {
    ref_apply_doc(pre, o.get_document("diff").unwrap())
}

// ---------------------------------------------------------------------------------------------
// A small update-operator applier for what the translator emits: $set / $unset with dotted
// paths, $push {$each: [], $slice: n}. It rejects conflicting paths in one update and applies
// the writes in MongoDB 5.0+ field order (lexicographic, numeric names numerically), which is
// the order in which one update creates new fields.

fn cmp_component(a: &str, b: &str) -> Ordering {
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if numeric(a) && numeric(b) {
        (a.len(), a).cmp(&(b.len(), b))
    } else {
        a.as_bytes().cmp(b.as_bytes())
    }
}

fn cmp_path(a: &[&str], b: &[&str]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        match cmp_component(x, y) {
            Ordering::Equal => continue,
            other => return other,
        }
    }
    a.len().cmp(&b.len())
}

fn apply_update(target: &mut Document, update: &Document) -> std::result::Result<(), String> {
    let mut writes: Vec<(Vec<&str>, &str, &Bson)> = Vec::new();
    for (op, args) in update {
        let args = args
            .as_document()
            .ok_or("operator argument is not a document")?;
        for (path, v) in args {
            writes.push((path.split('.').collect(), op.as_str(), v));
        }
    }
    for (i, (a, _, _)) in writes.iter().enumerate() {
        for (b, _, _) in &writes[i + 1..] {
            let n = a.len().min(b.len());
            if a[..n] == b[..n] {
                return Err(format!(
                    "Updating the path '{}' would create a conflict at '{}'",
                    b.join("."),
                    a.join(".")
                ));
            }
        }
    }
    writes.sort_by(|a, b| cmp_path(&a.0, &b.0));
    for (path, op, v) in writes {
        match op {
            "$set" => set_path(target, &path, v.clone())?,
            "$unset" => unset_path(target, &path),
            "$push" => {
                let spec = v.as_document().unwrap();
                assert_eq!(spec.get_array("$each").unwrap().len(), 0);
                let n = spec.get_i32("$slice").unwrap() as usize;
                match get_mut(target, &path) {
                    Some(Bson::Array(a)) => a.truncate(n),
                    other => return Err(format!("$push target is {other:?}")),
                }
            }
            other => return Err(format!("unsupported operator {other}")),
        }
    }
    Ok(())
}

fn get_mut<'a>(doc: &'a mut Document, path: &[&str]) -> Option<&'a mut Bson> {
    let mut cur = doc.get_mut(path[0])?;
    for comp in &path[1..] {
        cur = match cur {
            Bson::Document(d) => d.get_mut(*comp)?,
            Bson::Array(a) => a.get_mut(comp.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn set_path(doc: &mut Document, path: &[&str], v: Bson) -> std::result::Result<(), String> {
    if path.len() == 1 {
        doc.insert(path[0], v);
        return Ok(());
    }
    if !doc.contains_key(path[0]) {
        doc.insert(path[0], Document::new());
    }
    set_in(doc.get_mut(path[0]).unwrap(), &path[1..], v)
}

fn set_in(container: &mut Bson, path: &[&str], v: Bson) -> std::result::Result<(), String> {
    match container {
        Bson::Document(d) => set_path(d, path, v),
        Bson::Array(a) => {
            let idx: usize = path[0].parse().map_err(|_| "non-numeric index")?;
            while a.len() < idx {
                a.push(Bson::Null);
            }
            if path.len() == 1 {
                if idx < a.len() {
                    a[idx] = v;
                } else {
                    a.push(v);
                }
                return Ok(());
            }
            if idx == a.len() {
                a.push(Bson::Document(Document::new()));
            }
            set_in(&mut a[idx], &path[1..], v)
        }
        other => Err(format!("Cannot create field '{}' in {other}", path[0])),
    }
}

fn unset_path(doc: &mut Document, path: &[&str]) {
    if path.len() == 1 {
        doc.remove(path[0]);
        return;
    }
    let parent = match get_mut(doc, &path[..path.len() - 1]) {
        Some(p) => p,
        None => return,
    };
    let last = path[path.len() - 1];
    match parent {
        Bson::Document(d) => {
            d.remove(last);
        }
        Bson::Array(a) => {
            if let Some(slot) = last.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                *slot = Bson::Null;
            }
        }
        _ => {}
    }
}

fn apply_all(pre: &Document, updates: &[Document]) -> std::result::Result<Document, String> {
    let mut doc = pre.clone();
    for u in updates {
        apply_update(&mut doc, u)?;
    }
    Ok(doc)
}

fn operators(t: UpdateTranslation) -> Vec<Document> {
    match t {
        UpdateTranslation::Operators(v) => v,
        other => panic!("expected operators, got {other:?}"),
    }
}

fn translate(o: &Document) -> Vec<Document> {
    operators(diff_to_update(o).unwrap())
}

fn translate_exact(o: &Document) -> Vec<Document> {
    operators(
        diff_to_update_with(
            o,
            TranslateOptions {
                exact_field_order: true,
            },
        )
        .unwrap(),
    )
}

fn bytes(d: &Document) -> Vec<u8> {
    let mut v = Vec::new();
    d.to_writer(&mut v).unwrap();
    v
}

/// Field order of objects ignored, everything else (types, array order) compared.
fn normalized(b: &Bson) -> Bson {
    match b {
        Bson::Document(d) => {
            let sorted: BTreeMap<&String, Bson> =
                d.iter().map(|(k, v)| (k, normalized(v))).collect();
            Bson::Document(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Bson::Array(a) => Bson::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

fn same_value(a: &Document, b: &Document) -> bool {
    bytes(
        normalized(&Bson::Document(a.clone()))
            .as_document()
            .unwrap(),
    ) == bytes(
        normalized(&Bson::Document(b.clone()))
            .as_document()
            .unwrap(),
    )
}

/// Checks one worked example: the translation, the reference applier's result, and that the
/// translation applied gives that result (exactly in exact mode, as a value otherwise).
fn check_example(before: Document, o: Document, expected: Vec<Document>, after: Document) {
    let ref_after = ref_apply(&before, &o);
    assert_eq!(
        bytes(&ref_after),
        bytes(&after),
        "reference applier: {ref_after}"
    );
    let ops = translate(&o);
    assert_eq!(ops, expected);
    for (a, b) in ops.iter().zip(&expected) {
        assert_eq!(bytes(a), bytes(b), "operator document order");
    }
    let got = apply_all(&before, &ops).unwrap();
    assert!(same_value(&got, &after), "{got} vs {after}");
    let exact = apply_all(&before, &translate_exact(&o)).unwrap();
    assert_eq!(bytes(&exact), bytes(&after), "exact: {exact} vs {after}");
}

// ---------------------------------------------------------------------------------------------
// Worked examples: a pre-image, an update, the diff MongoDB logs for it, the post-image.

#[test]
fn example_1_set_existing_and_add_field() {
    check_example(
        doc! {"_id": 1, "a": 1, "b": "x"},
        doc! {"$v": 2, "diff": {"u": {"a": 2}, "i": {"c": true}}},
        vec![doc! {"$set": {"a": 2, "c": true}}],
        doc! {"_id": 1, "a": 2, "b": "x", "c": true},
    );
    assert_eq!(
        translate_exact(&doc! {"$v": 2, "diff": {"u": {"a": 2}, "i": {"c": true}}}),
        vec![
            doc! {"$set": {"a": 2}, "$unset": {"c": ""}},
            doc! {"$set": {"c": true}}
        ]
    );
}

#[test]
fn example_2_inc_and_unsets() {
    check_example(
        doc! {"_id": 2, "a": 5, "b": {"c": 1, "d": 2}, "e": 0},
        doc! {"$v": 2, "diff": {"d": {"e": false}, "u": {"a": 6}, "sb": {"d": {"d": false}}}},
        vec![doc! {"$set": {"a": 6}, "$unset": {"e": "", "b.d": ""}}],
        doc! {"_id": 2, "a": 6, "b": {"c": 1}},
    );
}

#[test]
fn example_3_positional_set_and_push() {
    check_example(
        doc! {"_id": 3, "arr": [10, 20, 30], "tags": ["x"]},
        doc! {"$v": 2, "diff": {"sarr": {"a": true, "u1": 99}, "stags": {"a": true, "u1": "y"}}},
        vec![doc! {"$set": {"arr.1": 99, "tags.1": "y"}}],
        doc! {"_id": 3, "arr": [10, 99, 30], "tags": ["x", "y"]},
    );
}

#[test]
fn example_4_pull_rewrites_array() {
    check_example(
        doc! {"_id": 4, "a": [1, 2, 3, 2]},
        doc! {"$v": 2, "diff": {"u": {"a": [1, 3]}}},
        vec![doc! {"$set": {"a": [1, 3]}}],
        doc! {"_id": 4, "a": [1, 3]},
    );
}

#[test]
fn example_5_create_nested_path() {
    check_example(
        doc! {"_id": 5, "x": 1},
        doc! {"$v": 2, "diff": {"i": {"p": {"q": {"r": 1}}}}},
        vec![doc! {"$set": {"p": {"q": {"r": 1}}}}],
        doc! {"_id": 5, "x": 1, "p": {"q": {"r": 1}}},
    );
    check_example(
        doc! {"_id": 5, "p": {"z": 0}},
        doc! {"$v": 2, "diff": {"sp": {"i": {"q": {"r": 1}}}}},
        vec![doc! {"$set": {"p.q": {"r": 1}}}],
        doc! {"_id": 5, "p": {"z": 0, "q": {"r": 1}}},
    );
}

#[test]
fn example_6_rename() {
    check_example(
        doc! {"_id": 6, "a": 1, "b": 2},
        doc! {"$v": 2, "diff": {"d": {"a": false}, "i": {"z": 1}}},
        vec![doc! {"$set": {"z": 1}, "$unset": {"a": ""}}],
        doc! {"_id": 6, "b": 2, "z": 1},
    );
}

#[test]
fn example_7_shrink_array_and_edit_element() {
    check_example(
        doc! {"_id": 7, "padding": "p", "a": [1, {"b": 10, "note": "n"}, 3]},
        doc! {"$v": 2, "diff": {"sa": {"a": true, "l": 2, "s1": {"u": {"b": 9}}}}},
        vec![
            doc! {"$push": {"a": {"$each": [], "$slice": 2}}},
            doc! {"$set": {"a.1.b": 9}},
        ],
        doc! {"_id": 7, "padding": "p", "a": [1, {"b": 9, "note": "n"}]},
    );
    check_example(
        doc! {"_id": 7, "a": [1, {"b": 10}, 3]},
        doc! {"$v": 2, "diff": {"sa": {"a": true, "l": 2, "u1": {"b": 9}}}},
        vec![
            doc! {"$push": {"a": {"$each": [], "$slice": 2}}},
            doc! {"$set": {"a.1": {"b": 9}}},
        ],
        doc! {"_id": 7, "a": [1, {"b": 9}]},
    );
}

#[test]
fn example_8_append_and_remove_from_middle() {
    check_example(
        doc! {"_id": 8, "a": [1, 2, 3]},
        doc! {"$v": 2, "diff": {"sa": {"a": true, "u3": 4, "u4": 5}}},
        vec![doc! {"$set": {"a.3": 4, "a.4": 5}}],
        doc! {"_id": 8, "a": [1, 2, 3, 4, 5]},
    );
    check_example(
        doc! {"_id": 8, "a": [1, 2, 999, 3, 4]},
        doc! {"$v": 2, "diff": {"sa": {"a": true, "l": 4, "u2": 3, "u3": 4}}},
        vec![
            doc! {"$push": {"a": {"$each": [], "$slice": 4}}},
            doc! {"$set": {"a.2": 3, "a.3": 4}},
        ],
        doc! {"_id": 8, "a": [1, 2, 3, 4]},
    );
}

#[test]
fn example_9_insert_moves_field_to_end() {
    let before = doc! {"_id": 9, "padding": "p", "x": "foo", "y": "bar"};
    let o = doc! {"$v": 2, "diff": {"i": {"x": "foo"}}};
    let after = doc! {"_id": 9, "padding": "p", "y": "bar", "x": "foo"};
    // The default translation is value-equal but keeps `x` in place ...
    let compact = apply_all(&before, &translate(&o)).unwrap();
    assert!(same_value(&compact, &after));
    assert_ne!(bytes(&compact), bytes(&after));
    // ... the exact one moves it.
    assert_eq!(
        translate_exact(&o),
        vec![doc! {"$unset": {"x": ""}}, doc! {"$set": {"x": "foo"}}]
    );
    check_example(before, o, vec![doc! {"$set": {"x": "foo"}}], after);
}

#[test]
fn nested_truncations_take_one_document_per_level() {
    let before = doc! {"_id": 1, "a": [[1, 2, 3], [4, 5, 6], 7], "b": 1};
    let o = doc! {"$v": 2, "diff": {"u": {"b": 2}, "sa": {"a": true, "l": 2, "s0": {"a": true, "l": 1}, "s1": {"a": true, "u0": 0}}}};
    let ops = translate(&o);
    assert_eq!(
        ops,
        vec![
            doc! {"$set": {"b": 2}, "$push": {"a": {"$each": [], "$slice": 2}}},
            doc! {"$set": {"a.1.0": 0}, "$push": {"a.0": {"$each": [], "$slice": 1}}},
        ]
    );
    let want = ref_apply(&before, &o);
    assert_eq!(want, doc! {"_id": 1, "a": [[1], [0, 5, 6]], "b": 2});
    assert_eq!(bytes(&apply_all(&before, &ops).unwrap()), bytes(&want));
}

#[test]
fn index_past_the_end_pads_with_null() {
    let before = doc! {"a": [1]};
    let o = doc! {"$v": 2, "diff": {"sa": {"a": true, "u3": 4}}};
    let want = doc! {"a": [1, Bson::Null, Bson::Null, 4]};
    assert_eq!(ref_apply(&before, &o), want);
    assert_eq!(apply_all(&before, &translate(&o)).unwrap(), want);
}

#[test]
fn exact_mode_keeps_diff_order_of_new_fields() {
    let before = doc! {"_id": 1, "m": 0};
    // Pipeline-style diff: new fields in non-lexicographic order, a digit-bearing name.
    let o = doc! {"$v": 2, "diff": {"i": {"z": 1, "b": 2, "c": 3, "k9": 4, "k10": 5}}};
    let want = ref_apply(&before, &o);
    let keys: Vec<&String> = want.keys().collect();
    assert_eq!(keys, ["_id", "m", "z", "b", "c", "k9", "k10"]);
    let ops = translate_exact(&o);
    // unset all; then runs [z], [b, c], [k9], [k10]
    assert_eq!(ops.len(), 5, "{ops:?}");
    assert_eq!(bytes(&apply_all(&before, &ops).unwrap()), bytes(&want));
    // The compact translation creates them lexicographically instead.
    let compact = apply_all(&before, &translate(&o)).unwrap();
    assert!(same_value(&compact, &want));
    assert_ne!(bytes(&compact), bytes(&want));
}

#[test]
fn exact_mode_does_not_unset_id() {
    let ops = translate_exact(&doc! {"$v": 2, "diff": {"i": {"_id": 1, "a": 1}}});
    assert_eq!(
        ops,
        vec![
            doc! {"$unset": {"a": ""}},
            doc! {"$set": {"_id": 1, "a": 1}}
        ]
    );
}

#[test]
fn v1_and_replacement() {
    let o = doc! {"$v": 1, "$set": {"b": 3}, "$unset": {"c": true}};
    assert_eq!(
        diff_to_update(&o).unwrap(),
        UpdateTranslation::Operators(vec![doc! {"$set": {"b": 3}, "$unset": {"c": true}}])
    );
    let o = doc! {"$set": {"b": 3}};
    assert_eq!(update_format(&o).unwrap(), UpdateFormat::Modifier);
    assert_eq!(translate(&o), vec![doc! {"$set": {"b": 3}}]);
    let o = doc! {"_id": 1, "b": 2};
    assert_eq!(
        diff_to_update(&o).unwrap(),
        UpdateTranslation::Replacement(o.clone())
    );
    assert_eq!(
        update_format(&doc! {"$v": 2_i64, "diff": {"u": {"a": 1}}}).unwrap(),
        UpdateFormat::Delta
    );
    assert!(translate(&doc! {"$v": 1}).is_empty());
    assert!(matches!(
        diff_to_update(&doc! {"$v": 3, "diff": {}}),
        Err(OplogError::InvalidUpdate(m)) if m.contains("'$v'")
    ));
    assert!(matches!(
        diff_to_update(&doc! {"$v": 1, "$set": {"a": 1}, "b": 2}),
        Err(OplogError::InvalidUpdate(_))
    ));
}

#[test]
fn invalid_diffs_are_rejected() {
    let cases: Vec<(Document, &str)> = vec![
        (doc! {}, "empty diff"),
        (
            doc! {"u": {"a": 1}, "d": {"b": false}},
            "unexpected section",
        ),
        (doc! {"u": {"a": 1}, "ux": {"b": 1}}, "unexpected section"),
        (doc! {"x": {"a": 1}}, "unexpected section"),
        (
            doc! {"sa": {"u": {"b": 1}}, "u": {"c": 1}},
            "unexpected section",
        ),
        (doc! {"u": 5}, "must be a document"),
        (doc! {"u": {"a": 1}, "i": {"a": 2}}, "duplicate field name"),
        (
            doc! {"d": {"a": false}, "sa": {"u": {"b": 1}}},
            "duplicate field name",
        ),
        (doc! {"sa": {}}, "empty sub-diff"),
        (doc! {"sa": 1}, "must be a document"),
        (doc! {"sa": {"a": false, "u0": 1}}, "must be true"),
        (doc! {"sa": {"a": true, "l": 1_i64}}, "Int32"),
        (doc! {"sa": {"a": true, "l": -1}}, "Int32"),
        (doc! {"sa": {"a": true, "x0": 1}}, "expected 'u' or 's'"),
        (doc! {"sa": {"a": true, "u": 1}}, "not u<index>"),
        (doc! {"sa": {"a": true, "u-1": 1}}, "not u<index>"),
        (
            doc! {"sa": {"a": true, "u2": 1, "u1": 1}},
            "strictly increasing",
        ),
        (
            doc! {"sa": {"a": true, "u1": 1, "s1": {"u": {"b": 1}}}},
            "strictly increasing",
        ),
        (
            doc! {"sa": {"a": true, "l": 2, "u2": 1}},
            "beyond its new length",
        ),
        (doc! {"sa": {"a": true, "s0": 3}}, "must be a document"),
        (doc! {"sa": {"a": true, "s0": {}}}, "empty sub-diff"),
    ];
    for (diff, needle) in cases {
        let err = diff_to_update(&doc! {"$v": 2, "diff": diff.clone()}).unwrap_err();
        assert!(
            matches!(&err, OplogError::InvalidUpdate(m) if m.contains(needle)),
            "{diff}: {err}"
        );
    }
    assert!(diff_to_update(&doc! {"$v": 2}).is_err());
    assert!(diff_to_update(&doc! {"$v": 2, "diff": 1}).is_err());
}

#[test]
fn untranslatable_diffs() {
    let cases = [
        doc! {"b": {"data": Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![1] })}},
        doc! {"u": {"a.b": 1}},
        doc! {"u": {"$x": 1}},
        doc! {"i": {"": 1}},
        doc! {"s": {"u": {"x": 1}}},
        doc! {"sa": {"a": true, "s0": {"d": {"x.y": false}}}},
    ];
    for diff in cases {
        let err = diff_to_update(&doc! {"$v": 2, "diff": diff.clone()}).unwrap_err();
        assert!(
            matches!(err, OplogError::UntranslatableDiff(_)),
            "{diff}: {err}"
        );
        assert!(err.to_string().contains("applyOps"));
    }
}

#[test]
fn type_mismatch_reapplication_is_the_documented_limit() {
    // On a pre-image of another type the applier writes null (document_diff_applier.cpp). The
    // translation targets the pre-image the diff was made from, so it differs here; this
    // test pins the documented limit (and the reference applier's behaviour).
    let before = doc! {"_id": 1, "a": Bson::Null};
    let o = doc! {"$v": 2, "diff": {"u": {"b": 1}, "sa": {"a": true, "u0": 1}}};
    assert_eq!(
        ref_apply(&before, &o),
        doc! {"_id": 1, "a": Bson::Null, "b": 1}
    );
    assert!(apply_all(&before, &translate(&o)).is_err());
    let o = doc! {"$v": 2, "diff": {"sz": {"u": {"field": 2}}}};
    assert_eq!(ref_apply(&before, &o), before);
}

#[test]
fn operator_applier_rejects_conflicts() {
    // Guards the property test: the applier must refuse what MongoDB refuses.
    let mut d = doc! {"a": [1, 2, 3]};
    let both = doc! {"$set": {"a.1": 5}, "$push": {"a": {"$each": [], "$slice": 1}}};
    assert!(apply_update(&mut d, &both)
        .unwrap_err()
        .contains("conflict"));
    let mut d = doc! {};
    apply_update(&mut d, &doc! {"$set": {"b": 1, "a": 1}}).unwrap();
    assert_eq!(d.keys().collect::<Vec<_>>(), ["a", "b"]);
}

// ---------------------------------------------------------------------------------------------
// Property test: random pre-images and random diffs valid for them.

const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f", "x1"];

fn leaf() -> impl Strategy<Value = Bson> {
    prop_oneof![
        (0..4i32).prop_map(Bson::Int32),
        Just(Bson::Null),
        Just(Bson::String("s".into())),
        any::<bool>().prop_map(Bson::Boolean),
        Just(Bson::Int64(7)),
    ]
}

fn value() -> impl Strategy<Value = Bson> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Bson::Array),
            proptest::collection::btree_map(proptest::sample::select(NAMES), inner, 0..4).prop_map(
                |m| { Bson::Document(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()) }
            ),
        ]
    })
}

/// A shuffled list of (name, value) with distinct names, so field order is not sorted.
fn document() -> impl Strategy<Value = Document> {
    (
        proptest::collection::btree_map(proptest::sample::select(NAMES), value(), 0..5),
        proptest::collection::vec(any::<u32>(), 8),
    )
        .prop_map(|(fields, shuffle)| {
            let mut fields: Vec<(&str, Bson)> = fields.into_iter().collect();
            for (i, r) in shuffle.iter().enumerate() {
                if fields.len() > 1 {
                    let len = fields.len();
                    fields.swap(i % len, *r as usize % len);
                }
            }
            let mut d = doc! {"_id": 1};
            d.extend(fields.into_iter().map(|(k, v)| (k.to_owned(), v)));
            d
        })
}

/// A stream of choices; reads 0 when exhausted so shrinking shortens the diff.
struct Choices<'a> {
    v: &'a [u32],
    i: usize,
}

impl Choices<'_> {
    fn next(&mut self, n: u32) -> u32 {
        let x = self.v.get(self.i).copied().unwrap_or(0);
        self.i += 1;
        x % n
    }

    fn value(&mut self, depth: u32) -> Bson {
        match self.next(if depth > 1 { 4 } else { 6 }) {
            0 => Bson::Int32(self.next(9) as i32 + 10),
            1 => Bson::String("new".into()),
            2 => Bson::Null,
            3 => Bson::Boolean(true),
            4 => {
                let n = self.next(3);
                Bson::Array((0..n).map(|_| self.value(depth + 1)).collect())
            }
            _ => {
                let mut d = Document::new();
                for _ in 0..self.next(3) {
                    let name = NAMES[self.next(NAMES.len() as u32) as usize];
                    let v = self.value(depth + 1);
                    d.insert(name, v);
                }
                Bson::Document(d)
            }
        }
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.next(i as u32 + 1) as usize;
            items.swap(i, j);
        }
    }
}

fn gen_doc_diff(pre: &Document, ch: &mut Choices, top: bool) -> Option<Document> {
    let mut deletes = Vec::new();
    let mut updates: Vec<(String, Bson)> = Vec::new();
    let mut inserts: Vec<(String, Bson)> = Vec::new();
    let mut subs: Vec<(String, Document)> = Vec::new();
    for (field, v) in pre {
        if top && field == "_id" {
            continue;
        }
        match ch.next(7) {
            0 | 1 => {}
            2 => deletes.push(field.clone()),
            3 => updates.push((field.clone(), ch.value(0))),
            4 => inserts.push((field.clone(), ch.value(0))),
            5 => inserts.push((field.clone(), v.clone())), // move to the end, same value
            _ => {
                let sub = match v {
                    Bson::Document(d) => gen_doc_diff(d, ch, false),
                    Bson::Array(a) => Some(gen_array_diff(a, ch)),
                    _ => None,
                };
                match sub {
                    Some(s) => subs.push((field.clone(), s)),
                    None => updates.push((field.clone(), ch.value(0))),
                }
            }
        }
    }
    for _ in 0..ch.next(3) {
        let name = NAMES[ch.next(NAMES.len() as u32) as usize];
        let taken =
            pre.contains_key(name) || updates.iter().chain(&inserts).any(|(k, _)| k == name);
        if !taken {
            let v = ch.value(0);
            if ch.next(2) == 0 {
                updates.push((name.to_owned(), v));
            } else {
                inserts.push((name.to_owned(), v));
            }
        }
    }
    ch.shuffle(&mut deletes);
    ch.shuffle(&mut updates);
    ch.shuffle(&mut inserts);
    ch.shuffle(&mut subs);
    let mut diff = Document::new();
    if !deletes.is_empty() {
        diff.insert(
            "d",
            deletes
                .into_iter()
                .map(|k| (k, Bson::Boolean(false)))
                .collect::<Document>(),
        );
    }
    if !updates.is_empty() {
        diff.insert("u", updates.into_iter().collect::<Document>());
    }
    if !inserts.is_empty() {
        diff.insert("i", inserts.into_iter().collect::<Document>());
    }
    for (k, s) in subs {
        diff.insert(format!("s{k}"), s);
    }
    (!diff.is_empty()).then_some(diff)
}

fn gen_array_diff(pre: &[Bson], ch: &mut Choices) -> Document {
    let n = pre.len();
    let mut resize = None;
    let mut mods: BTreeMap<usize, (char, Bson)> = BTreeMap::new();
    let mode = ch.next(4);
    let limit = if mode == 1 {
        let l = ch.next(n as u32 + 1) as usize;
        resize = Some(l);
        l
    } else {
        n
    };
    for (idx, element) in pre.iter().enumerate().take(limit) {
        match ch.next(4) {
            0 | 1 => {}
            2 => {
                mods.insert(idx, ('u', ch.value(1)));
            }
            _ => {
                let sub = match element {
                    Bson::Document(d) => gen_doc_diff(d, ch, false),
                    Bson::Array(a) => Some(gen_array_diff(a, ch)),
                    _ => None,
                };
                match sub {
                    Some(s) => mods.insert(idx, ('s', Bson::Document(s))),
                    None => mods.insert(idx, ('u', ch.value(1))),
                };
            }
        }
    }
    match mode {
        // Appends past the end, possibly with gaps (padded with null).
        0 | 3 => {
            let mut at = n;
            for _ in 0..ch.next(3) {
                at += ch.next(2) as usize;
                mods.insert(at, ('u', ch.value(1)));
                at += 1;
            }
        }
        // Growth by resize, with the last slot written (as a `u` past the end).
        2 => {
            let l = n + 1 + ch.next(2) as usize;
            resize = Some(l);
            mods.insert(l - 1, ('u', ch.value(1)));
        }
        _ => {}
    }
    let mut diff = doc! {"a": true};
    if let Some(l) = resize {
        diff.insert("l", l as i32);
    }
    for (idx, (kind, v)) in mods {
        diff.insert(format!("{kind}{idx}"), v);
    }
    diff
}

fn pre_and_diff() -> impl Strategy<Value = (Document, Document)> {
    (document(), proptest::collection::vec(any::<u32>(), 0..120)).prop_map(|(pre, choices)| {
        let mut ch = Choices { v: &choices, i: 0 };
        let diff = gen_doc_diff(&pre, &mut ch, true).unwrap_or_else(|| doc! {"u": {"zz": 1}});
        (pre, doc! {"$v": 2, "diff": diff})
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn translation_matches_the_diff_applier((pre, o) in pre_and_diff()) {
        let want = ref_apply(&pre, &o);

        let compact = translate(&o);
        let got = apply_all(&pre, &compact).map_err(|e| TestCaseError::fail(format!("{e}: {compact:?}")))?;
        prop_assert!(same_value(&got, &want), "compact {:?}\n got  {}\n want {}", compact, got, want);

        let exact = translate_exact(&o);
        let got = apply_all(&pre, &exact).map_err(|e| TestCaseError::fail(format!("{e}: {exact:?}")))?;
        prop_assert_eq!(bytes(&got), bytes(&want), "exact {:?}\n got  {}\n want {}", exact, got, want);
    }
}
