//! Pipeline-style updates (`u` is an aggregation pipeline) and the oplog entry MongoDB 7.0 logs
//! for them (`PipelineExecutor::applyUpdate`): the pipeline's output replaces the document (its
//! `_id` kept, as `ObjectReplaceExecutor` does), and the entry is the `$v: 2` delta that
//! `doc_diff::computeOplogDiff` computes from the pre- and post-image — or, when that delta would
//! not be smaller than the new document, the new document itself (a replacement entry).

use super::cmp::identical;
use crate::server::error::{ErrorCode, ServerError, ServerResult};
use crate::server::query::run_pipeline;
use bson::{doc, Bson, Document};

/// The stages an update pipeline may hold (`isAllowedWithinUpdatePipeline`).
const ALLOWED_STAGES: &[&str] = &[
    "$addFields",
    "$set",
    "$project",
    "$unset",
    "$replaceRoot",
    "$replaceWith",
];

/// Bytes MongoDB adds for `{$v: 2, diff: ...}` when weighing a delta against the new document
/// (`update_oplog_entry::kSizeOfDeltaOplogEntryMetadata`).
const DELTA_METADATA_BYTES: usize = 15;
/// `doc_diff::kSizeOfEmptyDocumentDiffBuilder` and `kSizeOfEmptyArrayDiffBuilder`.
const EMPTY_DOC_DIFF: usize = 5;
const EMPTY_ARRAY_DIFF: usize = 9;
/// A section's wrapping object (type byte, one-letter name, terminator, empty document).
const SECTION_WRAPPING: usize = 8;

/// Checks an update pipeline as mongod does when it builds the `PipelineExecutor`: every stage
/// parses, then every stage must be one allowed in updates (InvalidOptions otherwise).
pub fn validate(pipeline: &[Document]) -> ServerResult<()> {
    run_pipeline(Vec::new(), pipeline)?;
    for stage in pipeline {
        let name = stage.keys().next().map(String::as_str).unwrap_or_default();
        if !ALLOWED_STAGES.contains(&name) {
            return Err(ServerError::invalid_options(format!(
                "{name} is not allowed to be used within an update"
            )));
        }
    }
    Ok(())
}

/// Runs the pipeline over `original`: the new document, `_id` first and unchanged.
pub fn apply(original: &Document, pipeline: &[Document]) -> ServerResult<Document> {
    let mut out = run_pipeline(vec![original.clone()], pipeline)?;
    let transformed = if out.len() == 1 {
        out.pop().unwrap()
    } else {
        return Err(ServerError::new(
            ErrorCode::InternalError,
            "an update pipeline must produce exactly one document",
        ));
    };
    super::replace(original, &transformed)
}

/// The oplog `o` for a pipeline update from `pre` to `post` (which differ).
pub fn oplog_entry(pre: &Document, post: &Document) -> Document {
    match compute_oplog_diff(pre, post) {
        Some(diff) => doc! {"$v": 2, "diff": diff},
        None => post.clone(),
    }
}

/// `doc_diff::computeOplogDiff`: the delta, if it is smaller than `post`.
pub fn compute_oplog_diff(pre: &Document, post: &Document) -> Option<Document> {
    let node = doc_diff(pre, post, DELTA_METADATA_BYTES)?;
    let diff = node.serialize();
    (crate::server::collection::bson_size(&diff) < crate::server::collection::bson_size(post))
        .then_some(diff)
}

/// One level of a document delta: sections in the order entries were added.
struct DocNode {
    size: usize,
    deletes: Vec<String>,
    updates: Vec<(String, Bson)>,
    inserts: Vec<(String, Bson)>,
    subs: Vec<(String, Sub)>,
}

enum Sub {
    Doc(DocNode),
    Array(ArrayNode),
}

impl Sub {
    fn size(&self) -> usize {
        match self {
            Sub::Doc(d) => d.size,
            Sub::Array(a) => a.size,
        }
    }

    fn serialize(&self) -> Document {
        match self {
            Sub::Doc(d) => d.serialize(),
            Sub::Array(a) => a.serialize(),
        }
    }
}

struct ArrayNode {
    size: usize,
    resize: Option<usize>,
    /// By index, ascending: a new value or a sub-delta.
    entries: Vec<(usize, ArrayEntry)>,
}

enum ArrayEntry {
    Update(Bson),
    Sub(Sub),
}

impl DocNode {
    fn new(padding: usize) -> DocNode {
        DocNode {
            size: EMPTY_DOC_DIFF + padding,
            deletes: Vec::new(),
            updates: Vec::new(),
            inserts: Vec::new(),
            subs: Vec::new(),
        }
    }

    fn add_delete(&mut self, field: &str) {
        if self.deletes.is_empty() {
            self.size += SECTION_WRAPPING;
        }
        self.size += field.len() + 2 + 1;
        self.deletes.push(field.to_string());
    }

    fn add_update(&mut self, field: &str, value: &Bson) {
        if self.updates.is_empty() {
            self.size += SECTION_WRAPPING;
        }
        self.size += field.len() + 2 + value_size(value);
        self.updates.push((field.to_string(), value.clone()));
    }

    fn add_insert(&mut self, field: &str, value: &Bson) {
        if self.inserts.is_empty() {
            self.size += SECTION_WRAPPING;
        }
        self.size += field.len() + 2 + value_size(value);
        self.inserts.push((field.to_string(), value.clone()));
    }

    fn add_sub(&mut self, field: &str, sub: Sub) {
        self.size += field.len() + 2 + sub.size() + 1;
        self.subs.push((field.to_string(), sub));
    }

    /// Sections `d`, `u`, `i`, then one `s<field>` per sub-delta (`DocumentSubDiffFrame`).
    fn serialize(&self) -> Document {
        let mut out = Document::new();
        if !self.deletes.is_empty() {
            let d: Document = self
                .deletes
                .iter()
                .map(|f| (f.clone(), Bson::Boolean(false)))
                .collect();
            out.insert("d", d);
        }
        if !self.updates.is_empty() {
            out.insert("u", self.updates.iter().cloned().collect::<Document>());
        }
        if !self.inserts.is_empty() {
            out.insert("i", self.inserts.iter().cloned().collect::<Document>());
        }
        for (field, sub) in &self.subs {
            out.insert(format!("s{field}"), sub.serialize());
        }
        out
    }
}

impl ArrayNode {
    fn new() -> ArrayNode {
        ArrayNode {
            size: EMPTY_ARRAY_DIFF,
            resize: None,
            entries: Vec::new(),
        }
    }

    fn add_update(&mut self, idx: usize, value: &Bson) {
        self.size += idx.to_string().len() + 1 + 2 + value_size(value);
        self.entries.push((idx, ArrayEntry::Update(value.clone())));
    }

    fn add_sub(&mut self, idx: usize, sub: Sub) {
        self.size += idx.to_string().len() + 1 + 2 + sub.size();
        self.entries.push((idx, ArrayEntry::Sub(sub)));
    }

    fn set_resize(&mut self, len: usize) {
        self.size += 1 + 2 + 4;
        self.resize = Some(len);
    }

    /// `a: true`, then `l` when the array shrank, then `u<i>`/`s<i>` by index (`ArrayFrame`).
    fn serialize(&self) -> Document {
        let mut out = doc! {"a": true};
        if let Some(l) = self.resize {
            out.insert("l", l as i32);
        }
        for (idx, entry) in &self.entries {
            match entry {
                ArrayEntry::Update(v) => {
                    out.insert(format!("u{idx}"), v.clone());
                }
                ArrayEntry::Sub(s) => {
                    out.insert(format!("s{idx}"), s.serialize());
                }
            }
        }
        out
    }
}

/// `computeDocDiff` with its size limit: `None` when the delta grows larger than `post`.
fn doc_diff(pre: &Document, post: &Document, padding: usize) -> Option<DocNode> {
    let post_size = crate::server::collection::bson_size(post);
    let mut node = DocNode::new(padding);
    let pre_fields: Vec<(&String, &Bson)> = pre.iter().collect();
    let post_fields: Vec<(&String, &Bson)> = post.iter().collect();
    let (mut i, mut j) = (0, 0);
    // Fields out of place in `pre`: deleted unless they turn up later in `post` (then inserted).
    let mut deferred: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    while i < pre_fields.len() && j < post_fields.len() {
        if post_size < node.size {
            return None;
        }
        let (pk, pv) = pre_fields[i];
        let (qk, qv) = post_fields[j];
        if pk == qk && identical(pv, qv) {
            i += 1;
            j += 1;
            continue;
        }
        if pk == qk {
            match sub_diff(pv, qv) {
                Some(Some(sub)) => node.add_sub(pk, sub),
                _ => node.add_update(pk, qv),
            }
            i += 1;
            j += 1;
        } else {
            deferred.insert(pk);
            i += 1;
        }
    }
    for (pk, _) in &pre_fields[i..] {
        node.add_delete(pk);
    }
    for (qk, qv) in &post_fields[j..] {
        node.add_insert(qk, qv);
        deferred.remove(qk.as_str());
    }
    for field in deferred {
        node.add_delete(field);
    }
    (post_size > node.size).then_some(node)
}

/// `computeArrayDiff` with its size limit.
fn array_diff(pre: &[Bson], post: &[Bson]) -> Option<ArrayNode> {
    let post_size = array_size(post);
    let mut node = ArrayNode::new();
    let common = pre.len().min(post.len());
    for idx in 0..common {
        if post_size < node.size {
            return None;
        }
        let (pv, qv) = (&pre[idx], &post[idx]);
        if identical(pv, qv) {
            continue;
        }
        match sub_diff(pv, qv) {
            Some(Some(sub)) => node.add_sub(idx, sub),
            _ => node.add_update(idx, qv),
        }
    }
    for (idx, qv) in post.iter().enumerate().skip(common) {
        node.add_update(idx, qv);
    }
    if pre.len() > post.len() {
        node.set_resize(post.len());
    }
    (post_size > node.size).then_some(node)
}

/// `calculateSubDiffHelper`: `None` when the values are not both documents or both arrays;
/// `Some(None)` when the sub-delta would not be smaller than the new value.
fn sub_diff(pre: &Bson, post: &Bson) -> Option<Option<Sub>> {
    match (pre, post) {
        (Bson::Document(a), Bson::Document(b)) => Some(doc_diff(a, b, 0).map(Sub::Doc)),
        (Bson::Array(a), Bson::Array(b)) => Some(array_diff(a, b).map(Sub::Array)),
        _ => None,
    }
}

/// `BSONElement::valuesize()`: the bytes of a value without its type byte and name.
fn value_size(v: &Bson) -> usize {
    match v {
        Bson::Double(_) | Bson::Int64(_) | Bson::DateTime(_) | Bson::Timestamp(_) => 8,
        Bson::Int32(_) => 4,
        Bson::Boolean(_) => 1,
        Bson::Null | Bson::Undefined | Bson::MinKey | Bson::MaxKey => 0,
        Bson::String(s) | Bson::Symbol(s) | Bson::JavaScriptCode(s) => 4 + s.len() + 1,
        Bson::ObjectId(_) => 12,
        Bson::Decimal128(_) => 16,
        Bson::Binary(b) => 4 + 1 + b.bytes.len(),
        Bson::RegularExpression(r) => r.pattern.len() + 1 + r.options.len() + 1,
        Bson::Document(d) => doc_size(d),
        Bson::Array(a) => array_size(a),
        Bson::DbPointer(_) => 4 + 1 + 12,
        Bson::JavaScriptCodeWithScope(c) => 4 + 4 + c.code.len() + 1 + doc_size(&c.scope),
    }
}

fn doc_size(d: &Document) -> usize {
    5 + d
        .iter()
        .map(|(k, v)| 1 + k.len() + 1 + value_size(v))
        .sum::<usize>()
}

fn array_size(a: &[Bson]) -> usize {
    5 + a
        .iter()
        .enumerate()
        .map(|(i, v)| 1 + i.to_string().len() + 1 + value_size(v))
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pad() -> String {
        "p".repeat(1000)
    }

    #[test]
    fn changed_field_is_an_update_and_unchanged_ones_are_left_out() {
        let pre = doc! {"_id": 1, "padding": pad(), "a": 1, "b": "x"};
        let post = doc! {"_id": 1, "padding": pad(), "a": 2, "b": "x"};
        assert_eq!(
            oplog_entry(&pre, &post),
            doc! {"$v": 2, "diff": {"u": {"a": 2}}}
        );
    }

    #[test]
    fn shrunk_array_with_edited_element() {
        // With a small array the array delta (9 + `u1` 16 + `l` 7 bytes) is not smaller than the
        // 27-byte array, so `computeArrayDiff` gives up and the field is logged whole.
        let pre = doc! {"_id": 7, "padding": pad(), "a": [1, {"b": 10}, 3]};
        let post = doc! {"_id": 7, "padding": pad(), "a": [1, {"b": 9}]};
        assert_eq!(
            oplog_entry(&pre, &post),
            doc! {"$v": 2, "diff": {"u": {"a": [1, {"b": 9}]}}}
        );
        let note = "n".repeat(200);
        let pre = doc! {"_id": 7, "padding": pad(), "a": [1, {"b": 10, "note": note.clone()}, 3]};
        let post = doc! {"_id": 7, "padding": pad(), "a": [1, {"b": 9, "note": note}]};
        assert_eq!(
            oplog_entry(&pre, &post),
            doc! {"$v": 2, "diff": {"sa": {"a": true, "l": 2, "s1": {"u": {"b": 9}}}}}
        );
    }

    #[test]
    fn appended_and_rewritten_array_tails() {
        let pre = doc! {"_id": 8, "padding": pad(), "a": [1, 2, 3]};
        let post = doc! {"_id": 8, "padding": pad(), "a": [1, 2, 3, 4, 5]};
        assert_eq!(
            oplog_entry(&pre, &post),
            doc! {"$v": 2, "diff": {"sa": {"a": true, "u3": 4, "u4": 5}}}
        );
        let pre = doc! {"_id": 8, "padding": pad(), "a": [1, 2, 999, 3, 4]};
        let post = doc! {"_id": 8, "padding": pad(), "a": [1, 2, 3, 4]};
        assert_eq!(
            oplog_entry(&pre, &post),
            doc! {"$v": 2, "diff": {"sa": {"a": true, "l": 4, "u2": 3, "u3": 4}}}
        );
    }

    #[test]
    fn moved_field_is_an_insert_and_removed_ones_are_deletes() {
        // Example 9: x out of place in the pre-image, found later in the post-image.
        let pre = doc! {"_id": 9, "padding": pad(), "x": "foo", "y": "bar"};
        let post = doc! {"_id": 9, "padding": pad(), "y": "bar", "x": "foo"};
        assert_eq!(
            oplog_entry(&pre, &post),
            doc! {"$v": 2, "diff": {"i": {"x": "foo"}}}
        );
        let pre = doc! {"_id": 1, "padding": pad(), "gone": 1, "z": 2, "tail": 3};
        let post = doc! {"_id": 1, "padding": pad(), "z": 2, "new": true};
        assert_eq!(
            oplog_entry(&pre, &post),
            doc! {"$v": 2, "diff": {"d": {"tail": false, "gone": false}, "i": {"new": true}}}
        );
    }

    #[test]
    fn small_documents_log_a_replacement() {
        let pre = doc! {"_id": 1, "a": 1};
        let post = doc! {"_id": 1, "a": 2, "b": [1, 2]};
        assert_eq!(oplog_entry(&pre, &post), post);
    }

    #[test]
    fn only_update_stages_are_allowed() {
        assert!(validate(&[doc! {"$set": {"a": 1}}, doc! {"$unset": "b"}]).is_ok());
        let e = validate(&[doc! {"$match": {"a": 1}}]).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (72, "$match is not allowed to be used within an update")
        );
        assert_eq!(validate(&[doc! {"$nope": 1}]).unwrap_err().code, 40324);
    }

    #[test]
    fn apply_keeps_the_id() {
        let d = doc! {"_id": 1, "a": 1};
        assert_eq!(
            apply(&d, &[doc! {"$replaceWith": {"b": "$a"}}]).unwrap(),
            doc! {"_id": 1, "b": 1}
        );
        assert_eq!(
            apply(&d, &[doc! {"$set": {"_id": 2}}]).unwrap_err().code,
            66
        );
    }
}
