//! `hint`, `min` and `max` of find: the hinted index orders the results (an index scan returns
//! documents in key order) and `min` (inclusive) / `max` (exclusive) bound its keys, as mongod's
//! planner does (query_planner.cpp: min/max need a hint, 51173, and must name the hinted index's
//! fields in order, 51174). A hint naming no index fails with BadValue.

use crate::server::collection::Collection;
use crate::server::error::{ServerError, ServerResult};
use crate::server::query::{compare_values, values_equal, SortSpec};
use bson::{Bson, Document};
use std::cmp::Ordering;
use std::ops::Deref;

pub enum Hint {
    /// `{$natural: 1 | -1}`: collection order.
    Natural(i32),
    /// The key pattern of the hinted index.
    Index(Document),
}

fn no_such_index() -> ServerError {
    ServerError::bad_value("hint provided does not correspond to an existing index")
}

fn index_keys(view: &Collection) -> impl Iterator<Item = (String, Document)> + '_ {
    let id = view
        .has_id_index
        .then(|| ("_id_".to_string(), bson::doc! {"_id": 1}));
    id.into_iter()
        .chain(view.indexes.iter().map(|i| (i.name.clone(), i.key.clone())))
}

fn same_pattern(a: &Document, b: &Document) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && values_equal(va, vb))
}

/// The `hint` of `body` resolved against the collection (`None`: no hint, or no collection).
pub fn resolve(view: Option<&Collection>, body: &Document) -> ServerResult<Option<Hint>> {
    let hint = match body.get("hint") {
        None => return Ok(None),
        Some(Bson::String(s)) if s.is_empty() => return Ok(None),
        Some(Bson::Document(d)) if d.is_empty() => return Ok(None),
        Some(h) => h,
    };
    if let Bson::Document(d) = hint {
        if let Some(dir) = d.get("$natural") {
            let dir = match dir {
                Bson::Int32(i) => *i as f64,
                Bson::Int64(i) => *i as f64,
                Bson::Double(f) => *f,
                _ => return Err(ServerError::bad_value("$natural hint must be 1 or -1")),
            };
            return Ok(Some(Hint::Natural(if dir < 0.0 { -1 } else { 1 })));
        }
    }
    let Some(view) = view else {
        return Ok(None); // no collection: nothing to scan, as mongod's EOF plan
    };
    let found = match hint {
        Bson::String(name) => index_keys(view).find(|(n, _)| n == name),
        Bson::Document(pattern) => index_keys(view).find(|(_, k)| same_pattern(k, pattern)),
        _ => {
            return Err(ServerError::failed_to_parse(
                "hint must be either a string or a nested object",
            ))
        }
    };
    found
        .map(|(_, key)| Some(Hint::Index(key)))
        .ok_or_else(no_such_index)
}

/// Checks `min`/`max` against the hint; answers the bounds to apply.
pub fn bounds(
    body: &Document,
    hint: Option<&Hint>,
) -> ServerResult<Option<(Document, Option<Document>, Option<Document>)>> {
    let arg = |k: &str| -> ServerResult<Option<Document>> {
        match body.get(k) {
            None => Ok(None),
            Some(Bson::Document(d)) if d.is_empty() => Ok(None),
            Some(Bson::Document(d)) => Ok(Some(d.clone())),
            Some(_) => Err(ServerError::type_mismatch(format!(
                "BSON field 'FindCommandRequest.{k}' is the wrong type, expected type 'object'"
            ))),
        }
    };
    let (min, max) = (arg("min")?, arg("max")?);
    if min.is_none() && max.is_none() {
        return Ok(None);
    }
    let Some(Hint::Index(key)) = hint else {
        return Err(ServerError::location(
            51173,
            "When using min()/max() a hint of which index to use must be provided",
        ));
    };
    for bound in [&min, &max].into_iter().flatten() {
        let same_fields =
            bound.len() == key.len() && bound.keys().zip(key.keys()).all(|(a, b)| a == b);
        if !same_fields {
            return Err(ServerError::location(
                51174,
                "The index chosen is not compatible with min/max",
            ));
        }
    }
    Ok(Some((key.clone(), min, max)))
}

fn direction(v: &Bson) -> Option<bool> {
    match v {
        Bson::Int32(i) => Some(*i >= 0),
        Bson::Int64(i) => Some(*i >= 0),
        Bson::Double(f) => Some(*f >= 0.0),
        _ => None,
    }
}

/// Orders `docs` by the index key pattern (only for ascending/descending keys; ties keep
/// collection order, as record ids break ties in an index).
pub fn index_order<T: Deref<Target = Document>>(key: &Document, docs: &mut [T]) {
    if key.values().all(|v| direction(v).is_some()) {
        if let Ok(spec) = SortSpec::new(key) {
            docs.sort_by(|a, b| spec.compare(a, b));
        }
    }
}

/// Keeps the documents whose index key lies in `[min, max)` in index order.
pub fn apply_bounds<T: Deref<Target = Document>>(
    key: &Document,
    min: Option<&Document>,
    max: Option<&Document>,
    docs: Vec<T>,
) -> Vec<T> {
    let cmp = |doc: &Document, bound: &Document| -> Ordering {
        for (field, dir) in key {
            let value = doc_path(doc, field).unwrap_or(Bson::Null);
            let b = bound.get(field).cloned().unwrap_or(Bson::Null);
            let c = compare_values(&value, &b);
            let c = if direction(dir).unwrap_or(true) {
                c
            } else {
                c.reverse()
            };
            if c != Ordering::Equal {
                return c;
            }
        }
        Ordering::Equal
    };
    docs.into_iter()
        .filter(|d| min.is_none_or(|m| cmp(d, m) != Ordering::Less))
        .filter(|d| max.is_none_or(|m| cmp(d, m) == Ordering::Less))
        .collect()
}

fn doc_path(doc: &Document, path: &str) -> Option<Bson> {
    let mut parts = path.split('.');
    let mut cur = doc.get(parts.next()?)?;
    for part in parts {
        cur = cur.as_document()?.get(part)?;
    }
    Some(cur.clone())
}
