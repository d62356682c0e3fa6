//! Translation of update `o` documents into ordinary update documents (`src/mongo/db/update/`
//! in mongodb/mongo).
//!
//! `$v:2` diffs are validated the way the server's `DocumentDiffReader` / `ArrayDiffReader`
//! validate them and translated so that applying the returned update documents *in order*,
//! with normal update semantics, to the pre-image the diff was computed from gives the document
//! the server's diff applier (`src/mongo/db/update/document_diff_applier.cpp`) gives:
//!
//! | diff at path `P`                  | operator                                        |
//! |-----------------------------------|-------------------------------------------------|
//! | `d: {f: false}`                   | `$unset: {"P.f": ""}`                           |
//! | `u: {f: v}`, `i: {f: v}`          | `$set: {"P.f": v}`                              |
//! | `s<f>: <doc diff>`                | recurse with `P.f`                              |
//! | `s<f>: {a: true, l: n, ...}`      | `$push: {"P.f": {$each: [], $slice: n}}` first  |
//! | array `u<k>: v`                   | `$set: {"P.f.k": v}` (pads with null past end)  |
//! | array `s<k>: <diff>`              | recurse with `P.f.k`                            |
//!
//! **Order of documents.** The applier truncates an array (`l`) before it writes indexes below
//! the new length, and MongoDB rejects one update that both `$push`es `P.f` and `$set`s
//! `P.f.k` ("would create a conflict"). So a truncation goes into one document and everything
//! below that array into the following ones; nested truncations add one document per level.
//!
//! **Field order.** With the default options the result is equal to the applier's as a value
//! (same fields, same values, arrays identical) but the *order of fields inside an object* can
//! differ in two cases: an `i` field that already existed (the applier moves it to the end,
//! `$set` keeps it in place) and several new fields created at one level (the applier appends
//! them in diff order, one `$set` creates them in lexicographic order).
//! With [`TranslateOptions::exact_field_order`] the translation is exact to the byte: `i`
//! fields are `$unset` first and `$set` in a later document, and new fields are created by a
//! sequence of documents whose `$set`s each create fields in an order MongoDB's update system
//! preserves (strictly increasing names without digits; any other name alone). This costs
//! extra update documents (usually two instead of one when the diff has an `i` section).
//!
//! **Limits.** The translation is exact for the pre-image the diff was made from (the normal
//! case when source and destination agree). It does not reproduce the applier's behaviour on a
//! *different* pre-image: a sub-diff on a missing field (the applier ignores it, `$set` on the
//! dotted path creates it), a sub-diff on a field of another type (the applier writes `null`,
//! `$set` fails or creates a field), or a resize `l` beyond the array's length that is not
//! covered by a `u` at index `l-1` (the applier pads with null; `$slice` does not — the server's
//! diff calculator only emits `l` to shrink). Binary `b` sections and field names that dotted
//! paths cannot address (empty, containing `.`, starting with `$`) give
//! [`OplogError::UntranslatableDiff`]: apply such entries with `applyOps` or by
//! read-modify-replace.

use std::collections::HashSet;

use bson::{doc, Bson, Document};

use super::error::OplogError;

type Result<T> = std::result::Result<T, OplogError>;

/// The result of translating an update's `o`.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateTranslation {
    /// `o` is a full replacement document (no `$v`, first field not `$`-prefixed).
    Replacement(Document),
    /// Update-operator documents to apply in order to the document matched by `o2`.
    /// Empty when the update changes nothing.
    Operators(Vec<Document>),
}

/// The three forms of an update's `o` (the server's `extractUpdateType`,
/// `src/mongo/db/update/update_oplog_entry_serialization.cpp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateFormat {
    Replacement,
    /// `$v: 1`, or no `$v` and a `$`-prefixed first field: `{$set: ..., $unset: ...}`.
    Modifier,
    /// `$v: 2`: `{$v: 2, diff: {...}}`.
    Delta,
}

/// Options for [`diff_to_update_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TranslateOptions {
    /// Reproduce the applier's field order exactly, at the cost of more update documents.
    pub exact_field_order: bool,
}

/// Classifies an update's `o`.
pub fn update_format(o: &Document) -> Result<UpdateFormat> {
    if let Some(v) = o.get("$v") {
        let version = match v {
            Bson::Int32(n) => Some(i64::from(*n)),
            Bson::Int64(n) => Some(*n),
            Bson::Double(f) if f.fract() == 0.0 => Some(*f as i64),
            _ => None,
        };
        return match version {
            Some(1) => Ok(UpdateFormat::Modifier),
            Some(2) => Ok(UpdateFormat::Delta),
            _ => Err(OplogError::InvalidUpdate(format!(
                "unrecognized value for '$v': {v}"
            ))),
        };
    }
    match o.keys().next() {
        Some(k) if k.starts_with('$') => Ok(UpdateFormat::Modifier),
        _ => Ok(UpdateFormat::Replacement),
    }
}

/// Translates an update's `o` with the default options (value-exact, fewest documents).
pub fn diff_to_update(o: &Document) -> Result<UpdateTranslation> {
    diff_to_update_with(o, TranslateOptions::default())
}

/// Translates an update's `o`: a replacement is returned as is, a `$v:1` update without its
/// `$v`, a `$v:2` diff as update-operator documents (see the module documentation).
pub fn diff_to_update_with(o: &Document, opts: TranslateOptions) -> Result<UpdateTranslation> {
    match update_format(o)? {
        UpdateFormat::Replacement => Ok(UpdateTranslation::Replacement(o.clone())),
        UpdateFormat::Modifier => {
            let mut rest = Document::new();
            for (k, v) in o {
                if k == "$v" {
                    continue;
                }
                if !k.starts_with('$') {
                    return Err(OplogError::InvalidUpdate(format!(
                        "modifier update mixes operators with the plain field {k:?}"
                    )));
                }
                rest.insert(k.clone(), v.clone());
            }
            Ok(UpdateTranslation::Operators(if rest.is_empty() {
                Vec::new()
            } else {
                vec![rest]
            }))
        }
        UpdateFormat::Delta => {
            let diff = match o.get("diff") {
                Some(Bson::Document(d)) => d,
                Some(other) => {
                    return Err(OplogError::InvalidUpdate(format!(
                        "'diff' must be a document, got {:?}",
                        other.element_type()
                    )))
                }
                None => {
                    return Err(OplogError::InvalidUpdate(
                        "$v:2 update has no 'diff' field".into(),
                    ))
                }
            };
            let mut planner = Planner {
                exact: opts.exact_field_order,
                ops: Vec::new(),
            };
            planner.doc(diff, None, 0)?;
            Ok(UpdateTranslation::Operators(planner.pack()))
        }
    }
}

/// One operator write, before packing into documents.
enum Planned {
    Set(String, Bson),
    Unset(String),
    Truncate(String, i32),
}

struct Planner {
    exact: bool,
    /// `(document index, write)`.
    ops: Vec<(usize, Planned)>,
}

impl Planner {
    /// A document diff at `prefix` (`None` = top level) whose writes start in document `stage`.
    fn doc(&mut self, diff: &Document, prefix: Option<&str>, stage: usize) -> Result<()> {
        let at = || prefix.unwrap_or("<top level>").to_owned();
        if diff.is_empty() {
            return Err(invalid(format!("empty diff at {}", at())));
        }
        let mut deletes: Vec<&str> = Vec::new();
        let mut updates: Vec<(&str, &Bson)> = Vec::new();
        let mut inserts: Vec<(&str, &Bson)> = Vec::new();
        let mut subs: Vec<(&str, &Document)> = Vec::new();
        let mut prev_order = 0;
        for (key, value) in diff {
            // Like the server, a section is named by the first character of its key.
            let Some(section) = key.chars().next() else {
                return Err(invalid(format!("empty section name in diff at {}", at())));
            };
            let order = match section {
                'd' => 1,
                'u' => 2,
                'i' => 3,
                'b' => 4,
                's' => 5,
                _ => 0,
            };
            // Only sub-diffs may repeat; every other section appears once, in order d u i b s.
            if order == 0 || order < prev_order || (order == prev_order && order != 5) {
                return Err(invalid(format!(
                    "unexpected section {key:?} in diff at {} (sections are d, u, i, b, then s<field>)",
                    at()
                )));
            }
            prev_order = order;
            let Bson::Document(body) = value else {
                return Err(invalid(format!(
                    "section {key:?} at {} must be a document, got {:?}",
                    at(),
                    value.element_type()
                )));
            };
            match section {
                'd' => deletes.extend(body.keys().map(String::as_str)),
                'u' => updates.extend(body.iter().map(|(k, v)| (k.as_str(), v))),
                'i' => inserts.extend(body.iter().map(|(k, v)| (k.as_str(), v))),
                'b' => {
                    if let Some(field) = body.keys().next() {
                        return Err(OplogError::UntranslatableDiff(format!(
                            "binary (BSONColumn) diff for field {:?}",
                            join(prefix, field)
                        )));
                    }
                }
                _ => subs.push((&key[1..], body)),
            }
        }

        let mut seen = HashSet::new();
        let names = deletes
            .iter()
            .copied()
            .chain(updates.iter().map(|(k, _)| *k))
            .chain(inserts.iter().map(|(k, _)| *k))
            .chain(subs.iter().map(|(k, _)| *k));
        for name in names {
            if !seen.insert(name) {
                return Err(invalid(format!(
                    "duplicate field name in diff: {name:?} at {}",
                    at()
                )));
            }
            addressable(prefix, name)?;
        }

        for name in &deletes {
            self.push(stage, Planned::Unset(join(prefix, name)));
        }
        if self.exact {
            // The applier keeps `u` fields in place if they exist and appends the others in
            // diff order, then removes every `i` field and appends it in diff order.
            let mut moved_any = false;
            for (name, _) in &inserts {
                // `_id` is immutable and never moves; $unset of it would fail.
                if !(prefix.is_none() && *name == "_id") {
                    self.push(stage, Planned::Unset(join(prefix, name)));
                    moved_any = true;
                }
            }
            let update_runs = run_numbers(&updates);
            for ((name, value), run) in updates.iter().zip(&update_runs) {
                self.push(
                    stage + run,
                    Planned::Set(join(prefix, name), (*value).clone()),
                );
            }
            let runs_used = update_runs.last().map_or(0, |r| r + 1);
            let first_insert_stage = stage
                + if moved_any {
                    runs_used.max(1)
                } else {
                    runs_used
                };
            for ((name, value), run) in inserts.iter().zip(run_numbers(&inserts)) {
                self.push(
                    first_insert_stage + run,
                    Planned::Set(join(prefix, name), (*value).clone()),
                );
            }
        } else {
            for (name, value) in updates.iter().chain(&inserts) {
                self.push(stage, Planned::Set(join(prefix, name), (*value).clone()));
            }
        }

        for (name, sub) in subs {
            let path = join(prefix, name);
            self.sub(sub, &path, stage)?;
        }
        Ok(())
    }

    /// A sub-diff (document or array) for the value at `path`.
    fn sub(&mut self, sub: &Document, path: &str, stage: usize) -> Result<()> {
        match sub.keys().next().map(String::as_str) {
            None => Err(invalid(format!("empty sub-diff for {path:?}"))),
            Some("a") => self.array(sub, path, stage),
            Some(_) => self.doc(sub, Some(path), stage),
        }
    }

    fn array(&mut self, diff: &Document, path: &str, stage: usize) -> Result<()> {
        let mut iter = diff.iter().peekable();
        match iter.next() {
            Some((k, Bson::Boolean(true))) if k == "a" => {}
            Some((k, v)) if k == "a" => {
                return Err(invalid(format!(
                    "array header of the diff for {path:?} must be true, got {v}"
                )))
            }
            _ => unreachable!("array() is only called for diffs starting with 'a'"),
        }
        let mut resize = None;
        if let Some((k, v)) = iter.peek() {
            if k.as_str() == "l" {
                match v {
                    Bson::Int32(n) if *n >= 0 => resize = Some(*n),
                    _ => {
                        return Err(invalid(format!(
                            "array resize 'l' for {path:?} must be a non-negative Int32, got {v}"
                        )))
                    }
                }
                iter.next();
            }
        }
        let inner_stage = match resize {
            Some(n) => {
                self.push(stage, Planned::Truncate(path.to_owned(), n));
                stage + 1
            }
            None => stage,
        };
        let mut last_index: Option<usize> = None;
        for (key, value) in iter {
            let index = key
                .get(1..)
                .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|digits| digits.parse::<usize>().ok())
                .ok_or_else(|| {
                    invalid(format!(
                        "array diff key {key:?} for {path:?} is not u<index> or s<index>"
                    ))
                })?;
            if last_index.is_some_and(|last| index <= last) {
                return Err(invalid(format!(
                    "array diff indexes for {path:?} are not strictly increasing at {key:?}"
                )));
            }
            last_index = Some(index);
            if resize.is_some_and(|n| index >= n as usize) {
                return Err(invalid(format!(
                    "array diff for {path:?} modifies index {index} beyond its new length {}",
                    resize.unwrap_or_default()
                )));
            }
            let element = format!("{path}.{index}");
            match (key.as_bytes()[0], value) {
                (b'u', v) => self.push(inner_stage, Planned::Set(element, v.clone())),
                (b's', Bson::Document(sub)) => self.sub(sub, &element, inner_stage)?,
                (b's', other) => {
                    return Err(invalid(format!(
                        "sub-diff at index {index} of {path:?} must be a document, got {:?}",
                        other.element_type()
                    )))
                }
                _ => {
                    return Err(invalid(format!(
                        "expected 'u' or 's' at index {index} of {path:?}, got {key:?}"
                    )))
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, stage: usize, op: Planned) {
        self.ops.push((stage, op));
    }

    /// Groups the planned writes into update documents, one per stage, in stage order.
    fn pack(self) -> Vec<Document> {
        let stages = self.ops.iter().map(|(s, _)| s + 1).max().unwrap_or(0);
        let mut sets = vec![Document::new(); stages];
        let mut unsets = vec![Document::new(); stages];
        let mut pushes = vec![Document::new(); stages];
        for (stage, op) in self.ops {
            match op {
                Planned::Set(path, v) => {
                    sets[stage].insert(path, v);
                }
                Planned::Unset(path) => {
                    unsets[stage].insert(path, "");
                }
                Planned::Truncate(path, n) => {
                    pushes[stage].insert(path, doc! {"$each": [], "$slice": n});
                }
            }
        }
        let mut out = Vec::new();
        for ((set, unset), push) in sets.into_iter().zip(unsets).zip(pushes) {
            let mut update = Document::new();
            if !set.is_empty() {
                update.insert("$set", set);
            }
            if !unset.is_empty() {
                update.insert("$unset", unset);
            }
            if !push.is_empty() {
                update.insert("$push", push);
            }
            if !update.is_empty() {
                out.push(update);
            }
        }
        out
    }
}

/// For exact field order: splits fields into runs that one `$set` creates in the same order
/// as the applier appends them. MongoDB 5.0+ creates the fields of one update in lexicographic
/// order, numeric names in numeric order; a run is therefore kept only while names strictly
/// increase and contain no digit (whose ordering rules we do not rely on).
fn run_numbers(fields: &[(&str, &Bson)]) -> Vec<usize> {
    let plain = |s: &str| !s.bytes().any(|b| b.is_ascii_digit());
    let mut runs = Vec::with_capacity(fields.len());
    let mut run = 0;
    for (i, (name, _)) in fields.iter().enumerate() {
        if i > 0 {
            let prev = fields[i - 1].0;
            if !(plain(prev) && plain(name) && prev.as_bytes() < name.as_bytes()) {
                run += 1;
            }
        }
        runs.push(run);
    }
    runs
}

fn join(prefix: Option<&str>, name: &str) -> String {
    match prefix {
        None => name.to_owned(),
        Some(p) => format!("{p}.{name}"),
    }
}

/// Can `name` be a component of a dotted update path?
fn addressable(prefix: Option<&str>, name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        "is empty"
    } else if name.contains('.') {
        "contains '.'"
    } else if name.starts_with('$') {
        "starts with '$'"
    } else {
        return Ok(());
    };
    Err(OplogError::UntranslatableDiff(format!(
        "field name {name:?} under {} {problem}",
        prefix.unwrap_or("the top level")
    )))
}

fn invalid(msg: String) -> OplogError {
    OplogError::InvalidUpdate(msg)
}

#[cfg(test)]
mod tests;
