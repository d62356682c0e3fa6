//! The update engine: applying update documents to BSON documents with MongoDB 7.0 semantics and
//! producing the `o` field MongoDB logs in the oplog for the update (`{$v: 2, diff}` for operator
//! updates, the new document for replacements).
//!
//! Operator updates are parsed into MongoDB's update tree (one node per path component, children
//! in `cmpPathsAndArrayIndexes` order — so new fields are appended in that order), applied by
//! walking the tree, and every change is logged into a port of MongoDB's `V2LogBuilder`.
//! Positional components follow MongoDB's `UpdateObjectNode` (a `$` child applied at the
//! array index the query matched, passed to [`UpdateSpec::apply_matched`]) and
//! `UpdateArrayNode` (`$[]` / `$[<identifier>]` children applied to the elements their
//! `arrayFilters` entry matches).

mod apply;
mod cmp;
mod diff;
mod fmt;
mod ops;
mod parse;
pub mod pipeline;
mod upsert;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_positional;

use crate::server::error_codes::ErrorCode;
use crate::server::query::{compare_values, Matcher};

pub use self::upsert::{upsert_seed, upsert_seed_for_replacement};

use self::apply::Applier;
use self::parse::UNode;

/// One parsed `arrayFilters` entry: its identifier and the filter, matched against an array
/// element as the value of the identifier.
#[derive(Debug, Clone)]
pub(crate) struct ArrayFilter {
    pub id: String,
    matcher: Matcher,
}

impl ArrayFilter {
    /// `ExpressionWithPlaceholder::getFilter()->matchesBSONElement(element)`.
    pub(crate) fn matches_element(&self, element: &Bson) -> bool {
        let mut d = Document::new();
        d.insert(self.id.clone(), element.clone());
        self.matcher.matches(&d)
    }
}

/// `ParsedUpdate::parseArrayFilters`: each filter is a query whose paths all start with one
/// identifier (the "placeholder"), unique among the filters.
fn parse_array_filters(raw: Option<&[Document]>) -> ServerResult<Vec<ArrayFilter>> {
    let context = |e: ServerError| {
        ServerError::location(
            e.code,
            format!("Error parsing array filter :: caused by :: {}", e.message),
        )
    };
    let mut out: Vec<ArrayFilter> = Vec::new();
    for filter in raw.unwrap_or(&[]) {
        let matcher = Matcher::new(filter).map_err(context)?;
        let id = match matcher.top_level_field() {
            Err((a, b)) => {
                return Err(context(ServerError::failed_to_parse(format!(
                    "Expected a single top-level field name, found '{}' and '{}'",
                    a, b
                ))))
            }
            Ok(Some(id)) => {
                let mut chars = id.chars();
                let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
                    && chars.all(|c| c.is_ascii_alphanumeric());
                if !valid {
                    return Err(context(ServerError::bad_value(format!(
                        "The top-level field name must be an alphanumeric string beginning \
                         with a lowercase letter, found '{}'",
                        id
                    ))));
                }
                id
            }
            Ok(None) => {
                return Err(ServerError::failed_to_parse(
                    "Cannot use an expression without a top-level field name in arrayFilters",
                ))
            }
        };
        if out.iter().any(|f| f.id == id) {
            return Err(ServerError::failed_to_parse(format!(
                "Found multiple array filters with the same top-level field name {}",
                id
            )));
        }
        out.push(ArrayFilter { id, matcher });
    }
    Ok(out)
}
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
    Operators {
        tree: UNode,
        /// The tree has a positional `$` component.
        positional: bool,
    },
    Replacement(Document),
    /// An aggregation pipeline (`u: [...]`).
    Pipeline(Vec<Document>),
}

/// A parsed update document.
#[derive(Debug, Clone)]
pub struct UpdateSpec {
    kind: Kind,
    array_filters: Vec<ArrayFilter>,
}

impl UpdateSpec {
    /// `{$set: ..., $inc: ...}` → operator update; a document whose first key does not start
    /// with `$` → replacement. Validates the array filters (first, as mongod does), modifiers
    /// and their operands, conflicting paths, array filter identifiers, and `$`-prefixed
    /// top-level fields in replacements (which ignore `arrayFilters`).
    pub fn parse(
        update: &Document,
        array_filters: Option<&[Document]>,
    ) -> ServerResult<UpdateSpec> {
        let array_filters = parse_array_filters(array_filters)?;
        let first_is_op = update.keys().next().is_some_and(|k| k.starts_with('$'));
        if !first_is_op {
            for (k, v) in update {
                if k.starts_with('$') {
                    return Err(ServerError::new(
                        ErrorCode::DollarPrefixedFieldName,
                        format!(
                            "The dollar ($) prefixed field '{}' in '{}' is not valid for storage.",
                            k, k
                        ),
                    ));
                }
                if k == "_id" && matches!(v, Bson::Array(_)) {
                    return Err(ServerError::new(
                        ErrorCode::InvalidIdField,
                        "The '_id' value cannot be of type array",
                    ));
                }
            }
            return Ok(UpdateSpec {
                kind: Kind::Replacement(update.clone()),
                array_filters: Vec::new(),
            });
        }
        let ids: Vec<String> = array_filters.iter().map(|f| f.id.clone()).collect();
        let parsed = parse::parse_operator_update(update, &ids)?;
        Ok(UpdateSpec {
            kind: Kind::Operators {
                tree: parsed.root,
                positional: parsed.positional,
            },
            array_filters,
        })
    }

    /// Like `parse`, for the raw `u` value of an update statement: an array is a pipeline
    /// update (only the stages mongod allows in updates; no `arrayFilters`).
    pub fn parse_bson(
        update: &Bson,
        array_filters: Option<&[Document]>,
    ) -> ServerResult<UpdateSpec> {
        match update {
            Bson::Document(d) => Self::parse(d, array_filters),
            Bson::Array(stages) => {
                if array_filters.is_some_and(|f| !f.is_empty()) {
                    return Err(ServerError::failed_to_parse(
                        "arrayFilters may not be specified for pipeline-style updates",
                    ));
                }
                let stages = stages
                    .iter()
                    .map(|s| match s {
                        Bson::Document(d) => Ok(d.clone()),
                        _ => Err(ServerError::type_mismatch(
                            "Each element of the 'pipeline' array must be an object",
                        )),
                    })
                    .collect::<ServerResult<Vec<_>>>()?;
                pipeline::validate(&stages)?;
                Ok(UpdateSpec {
                    kind: Kind::Pipeline(stages),
                    array_filters: Vec::new(),
                })
            }
            _ => Err(ServerError::failed_to_parse(
                "Update argument must be either an object or an array",
            )),
        }
    }

    pub fn is_replacement(&self) -> bool {
        matches!(self.kind, Kind::Replacement(_))
    }

    /// True when the update uses the positional `$` operator (`UpdateDriver::needMatchDetails`):
    /// the caller must then pass the array index the query matched to [`Self::apply_matched`]
    /// (see `Matcher::positional_match`).
    pub fn is_positional(&self) -> bool {
        matches!(
            self.kind,
            Kind::Operators {
                positional: true,
                ..
            }
        )
    }

    /// Apply to `doc` in place (on error `doc` is left unchanged). When `ctx.inserting`, the
    /// result also gets `_id` moved first, or a new ObjectId `_id` if it has none.
    pub fn apply(&self, doc: &mut Document, ctx: &UpdateContext) -> ServerResult<UpdateOutcome> {
        self.apply_matched(doc, ctx, None)
    }

    /// [`Self::apply`] with the array index the query matched in `doc` (mongod's
    /// `matchedField`), which the positional `$` component stands for.
    pub fn apply_matched(
        &self,
        doc: &mut Document,
        ctx: &UpdateContext,
        matched: Option<usize>,
    ) -> ServerResult<UpdateOutcome> {
        let before = doc.clone();
        // mongod counts a document as unmodified when its modifiers changed nothing in place
        // ("inPlace && damages.empty()" in UpdateStage::transformAndUpdate, e.g. `$push` with
        // an empty `$each` and `$sort` on a sorted array), but `$currentDate` always writes its
        // value (CurrentDateNode::updateExistingElement), so it is logged even when unchanged.
        let mut forced_write = false;
        let (mut after, oplog_o) = match &self.kind {
            Kind::Replacement(repl) => {
                let new_doc = replace(&before, repl)?;
                (new_doc.clone(), new_doc)
            }
            Kind::Pipeline(stages) => {
                let new_doc = pipeline::apply(&before, stages)?;
                let o = if cmp::documents_identical(&before, &new_doc) {
                    Document::new()
                } else {
                    pipeline::oplog_entry(&before, &new_doc)
                };
                (new_doc, o)
            }
            Kind::Operators { tree, .. } => {
                let matched = matched.map(|i| i.to_string());
                let mut applier =
                    Applier::new(before.clone(), ctx, &self.array_filters, matched.as_deref());
                applier.apply_tree(tree)?;
                forced_write = applier.forced_write;
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
        let modified = forced_write || !cmp::documents_identical(&before, &after);
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
