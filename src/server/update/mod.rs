//! The update engine: applying update documents to BSON documents with MongoDB 7.0 semantics and
//! producing the `o` field MongoDB logs in the oplog for the update (`{$v: 2, diff}` for operator
//! updates, the new document for replacements).
//!
//! Operator updates are parsed into MongoDB's update tree (one node per path component, children
//! in `cmpPathsAndArrayIndexes` order — so new fields are appended in that order), applied by
//! walking the tree, and every change is logged into a port of MongoDB's `V2LogBuilder`.

mod apply;
mod cmp;
mod diff;
mod fmt;
mod ops;
mod parse;
mod upsert;

#[cfg(test)]
mod tests;

use crate::server::query::compare_values;

pub use self::upsert::{upsert_seed, upsert_seed_for_replacement};

use self::apply::Applier;
use self::parse::UNode;
use crate::server::error::{ServerError, ServerResult};
use bson::{Bson, Document};
use std::cmp::Ordering;

/// Values that compare equal in BSON order (numbers by value, documents by fields in order).
fn values_equal(a: &Bson, b: &Bson) -> bool {
    compare_values(a, b) == Ordering::Equal
}

/// Context of one application of an update.
#[derive(Debug, Clone)]
pub struct UpdateContext {
    /// True when the update builds an upserted document (`$setOnInsert` applies only then).
    pub inserting: bool,
    /// `$currentDate` (date form).
    pub now: bson::DateTime,
    /// `$currentDate: {$type: "timestamp"}`.
    pub now_ts: bson::Timestamp,
}

/// What an update did.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateOutcome {
    /// False when the document is byte-identical afterwards: no oplog entry, not counted in
    /// `nModified`.
    pub modified: bool,
    /// The oplog `o`: `{"$v": 2, "diff": {...}}` (operator update) or the new document with `_id`
    /// first (replacement). Empty when `modified` is false.
    pub oplog_o: Document,
}

#[derive(Debug, Clone)]
enum Kind {
    Operators(UNode),
    Replacement(Document),
}

/// A parsed update document.
#[derive(Debug, Clone)]
pub struct UpdateSpec {
    kind: Kind,
}

impl UpdateSpec {
    /// `{$set: ..., $inc: ...}` → operator update; a document whose first key does not start
    /// with `$` → replacement. Validates modifiers and their operands, conflicting paths, and
    /// `$`-prefixed top-level fields in replacements.
    pub fn parse(
        update: &Document,
        array_filters: Option<&[Document]>,
    ) -> ServerResult<UpdateSpec> {
        let first_is_op = update.keys().next().is_some_and(|k| k.starts_with('$'));
        if !first_is_op {
            for (k, v) in update {
                if k.starts_with('$') {
                    return Err(ServerError::new(
                        52,
                        "DollarPrefixedFieldName",
                        format!(
                            "The dollar ($) prefixed field '{}' in '{}' is not valid for storage.",
                            k, k
                        ),
                    ));
                }
                if k == "_id" && matches!(v, Bson::Array(_)) {
                    return Err(ServerError::new(
                        53,
                        "InvalidIdField",
                        "The '_id' value cannot be of type array",
                    ));
                }
            }
            return Ok(UpdateSpec {
                kind: Kind::Replacement(update.clone()),
            });
        }
        let tree = parse::parse_operator_update(update, array_filters)?;
        Ok(UpdateSpec {
            kind: Kind::Operators(tree),
        })
    }

    /// Like `parse`, for the raw `u` value of an update statement: an array (pipeline update)
    /// is rejected with NotImplemented (238).
    pub fn parse_bson(
        update: &Bson,
        array_filters: Option<&[Document]>,
    ) -> ServerResult<UpdateSpec> {
        match update {
            Bson::Document(d) => Self::parse(d, array_filters),
            Bson::Array(_) => Err(ServerError::not_implemented(
                "pipeline-style updates are not supported",
            )),
            _ => Err(ServerError::failed_to_parse(
                "Update argument must be either an object or an array",
            )),
        }
    }

    pub fn is_replacement(&self) -> bool {
        matches!(self.kind, Kind::Replacement(_))
    }

    /// Apply to `doc` in place (on error `doc` is left unchanged). When `ctx.inserting`, the
    /// result also gets `_id` moved first, or a new ObjectId `_id` if it has none.
    pub fn apply(&self, doc: &mut Document, ctx: &UpdateContext) -> ServerResult<UpdateOutcome> {
        let before = doc.clone();
        let (mut after, oplog_o) = match &self.kind {
            Kind::Replacement(repl) => {
                let new_doc = replace(&before, repl)?;
                (new_doc.clone(), new_doc)
            }
            Kind::Operators(tree) => {
                let mut applier = Applier::new(before.clone(), ctx);
                applier.apply_tree(tree)?;
                let (new_doc, log) = applier.into_document();
                let o = if log.is_empty() {
                    Document::new()
                } else {
                    log.serialize()
                };
                (new_doc, o)
            }
        };
        if ctx.inserting {
            if !after.contains_key("_id") {
                after.insert("_id", bson::oid::ObjectId::new());
            }
            after = upsert::id_first(after);
        }
        let modified = !cmp::documents_identical(&before, &after);
        *doc = after;
        Ok(UpdateOutcome {
            modified,
            oplog_o: if modified { oplog_o } else { Document::new() },
        })
    }
}

/// `ObjectReplaceExecutor`: the replacement with the original `_id` (first).
fn replace(original: &Document, repl: &Document) -> ServerResult<Document> {
    let mut out = Document::new();
    match (original.get("_id"), repl.get("_id")) {
        (Some(old), Some(new)) => {
            if compare_values(old, new) != Ordering::Equal {
                return Err(ServerError::immutable_field(format!(
                    "After applying the update, the (immutable) field '_id' was found to have \
                     been altered to {}",
                    fmt::element("_id", new)
                )));
            }
            out.insert("_id", new.clone());
        }
        (Some(id), None) | (None, Some(id)) => {
            out.insert("_id", id.clone());
        }
        (None, None) => {}
    }
    for (k, v) in repl {
        if k != "_id" {
            out.insert(k.clone(), v.clone());
        }
    }
    Ok(out)
}
