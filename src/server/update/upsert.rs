//! The document an upsert starts from (`UpdateDriver::populateDocumentWithQueryFields`):
//! the equality predicates of the query (`extractEqualityMatches` + `addEqualitiesToDoc`).

use super::fmt;
use crate::server::error::{ServerError, ServerResult};
use crate::server::error_codes::ErrorCode;
use bson::{Bson, Document};

fn not_single_value(msg: String) -> ServerError {
    ServerError::new(ErrorCode::NotSingleValueField, msg)
}

/// Collect `(path, value)` equalities of a query, as the canonical query exposes them:
/// `field: value` (not a regex, not an operator document), `field: {$eq: v}`, a one-element
/// `$in` (rewritten to `$eq` by the optimizer), and those inside `$and` (and a one-clause `$or`,
/// which the optimizer collapses into its clause).
fn collect(query: &Document, out: &mut Vec<(String, Bson)>) {
    for (key, value) in query {
        match key.as_str() {
            "$and" => {
                if let Bson::Array(clauses) = value {
                    for c in clauses {
                        if let Bson::Document(d) = c {
                            collect(d, out);
                        }
                    }
                }
            }
            "$or" => {
                if let Bson::Array(clauses) = value {
                    if let [Bson::Document(d)] = clauses.as_slice() {
                        collect(d, out);
                    }
                }
            }
            k if k.starts_with('$') => {}
            _ => match value {
                Bson::Document(ops) if ops.keys().next().is_some_and(|k| k.starts_with('$')) => {
                    if let Some(v) = ops.get("$eq") {
                        out.push((key.clone(), v.clone()));
                    } else if let Some(Bson::Array(items)) = ops.get("$in") {
                        if let [item] = items.as_slice() {
                            if !matches!(item, Bson::RegularExpression(_)) {
                                out.push((key.clone(), item.clone()));
                            }
                        }
                    }
                }
                Bson::RegularExpression(_) => {}
                v => out.push((key.clone(), v.clone())),
            },
        }
    }
}

fn is_path_prefix(prefix: &str, path: &str) -> bool {
    path.len() > prefix.len() && path.starts_with(prefix) && path.as_bytes()[prefix.len()] == b'.'
}

fn set_at_path(doc: &mut Document, path: &str, value: Bson) -> ServerResult<()> {
    crate::server::limits::check_path(path)?;
    let parts: Vec<&str> = path.split('.').collect();
    let mut cur = doc;
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            cur.insert(part.to_string(), value);
            return Ok(());
        }
        if !cur.contains_key(*part) {
            cur.insert(part.to_string(), Document::new());
        }
        cur = match cur.get_mut(*part) {
            Some(Bson::Document(d)) => d,
            Some(other) => {
                return Err(ServerError::path_not_viable(format!(
                    "Cannot create field '{}' in element {{{}}}",
                    parts[i + 1],
                    fmt::element(part, other)
                )))
            }
            None => unreachable!(),
        };
    }
    Ok(())
}

/// Seed document of an operator-style upsert: every equality of the query, dotted paths
/// building nested documents, fields in path order (MongoDB keeps the equalities in a map
/// ordered by path), `_id` first.
pub fn upsert_seed(query: &Document) -> ServerResult<Document> {
    let mut eqs = Vec::new();
    collect(query, &mut eqs);
    eqs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    for w in eqs.windows(2) {
        let (a, b) = (&w[0].0, &w[1].0);
        if a == b {
            return Err(not_single_value(format!(
                "cannot infer query fields to set, path '{}' is matched twice",
                a
            )));
        }
    }
    for (i, (a, _)) in eqs.iter().enumerate() {
        for (b, _) in eqs.iter().skip(i + 1) {
            if is_path_prefix(a, b) {
                return Err(not_single_value(format!(
                    "cannot infer query fields to set, both paths '{}' and '{}' are matched",
                    b, a
                )));
            }
        }
    }
    let mut doc = Document::new();
    for (path, value) in eqs {
        set_at_path(&mut doc, &path, value)?;
    }
    Ok(id_first(doc))
}

/// Seed document of a replacement-style upsert: only the immutable `_id` is taken from the
/// query (`extractFullEqualityMatches` with the immutable paths).
pub fn upsert_seed_for_replacement(query: &Document) -> ServerResult<Document> {
    let mut eqs = Vec::new();
    collect(query, &mut eqs);
    let mut doc = Document::new();
    for (path, value) in eqs {
        if path == "_id" {
            doc.insert("_id", value);
        } else if is_path_prefix("_id", &path) {
            return Err(ServerError::new(
                ErrorCode::NotExactValueField,
                format!(
                    "field at '_id' must be exactly specified, field at sub-path '{}'found",
                    path
                ),
            ));
        }
    }
    Ok(doc)
}

/// Move `_id` to the front (`ensureIdFieldIsFirst`).
pub(crate) fn id_first(doc: Document) -> Document {
    match doc.get("_id") {
        None => doc,
        Some(_) if doc.keys().next().map(|k| k == "_id").unwrap_or(false) => doc,
        Some(id) => {
            let mut out = Document::new();
            out.insert("_id", id.clone());
            for (k, v) in doc {
                if k != "_id" {
                    out.insert(k, v);
                }
            }
            out
        }
    }
}
