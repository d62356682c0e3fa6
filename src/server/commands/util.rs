//! Argument parsing helpers shared by the commands.

use crate::server::error::{ServerError, ServerResult};
use crate::server::error_codes::ErrorCode;
use bson::{doc, Bson, Document};

pub fn as_i64(b: &Bson) -> Option<i64> {
    match b {
        Bson::Int32(i) => Some(*i as i64),
        Bson::Int64(i) => Some(*i),
        Bson::Double(d) if d.fract() == 0.0 => Some(*d as i64),
        _ => None,
    }
}

/// The collection named by the command field (`{find: "users"}`).
pub fn coll_name(body: &Document, cmd: &str) -> ServerResult<String> {
    match body.get(cmd) {
        Some(Bson::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Bson::String(_)) => Err(ServerError::new(
            ErrorCode::InvalidNamespace,
            "Invalid namespace specified ''",
        )),
        _ => Err(ServerError::new(
            ErrorCode::InvalidNamespace,
            format!(
                "collection name has invalid type {}",
                type_name(body.get(cmd))
            ),
        )),
    }
}

pub fn type_name(b: Option<&Bson>) -> &'static str {
    match b {
        None => "missing",
        Some(Bson::Double(_)) => "double",
        Some(Bson::String(_)) => "string",
        Some(Bson::Document(_)) => "object",
        Some(Bson::Array(_)) => "array",
        Some(Bson::Boolean(_)) => "bool",
        Some(Bson::Int32(_)) => "int",
        Some(Bson::Int64(_)) => "long",
        Some(Bson::Null) => "null",
        Some(_) => "other",
    }
}

pub fn bool_arg(body: &Document, key: &str, default: bool) -> bool {
    match body.get(key) {
        Some(Bson::Boolean(b)) => *b,
        Some(other) => as_i64(other).map(|i| i != 0).unwrap_or(default),
        None => default,
    }
}

pub fn doc_arg<'a>(body: &'a Document, key: &str) -> ServerResult<Option<&'a Document>> {
    match body.get(key) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Document(d)) => Ok(Some(d)),
        Some(other) => Err(ServerError::type_mismatch(format!(
            "BSON field '{key}' is the wrong type '{}', expected type 'object'",
            type_name(Some(other))
        ))),
    }
}

/// The documents of an array argument, borrowed.
pub fn docs_ref<'a>(body: &'a Document, key: &str) -> ServerResult<Vec<&'a Document>> {
    match body.get(key) {
        Some(Bson::Array(items)) => items
            .iter()
            .map(|b| match b {
                Bson::Document(d) => Ok(d),
                _ => Err(ServerError::type_mismatch(format!(
                    "BSON field '{key}' must be an array of documents"
                ))),
            })
            .collect(),
        None => Err(ServerError::failed_to_parse(format!(
            "BSON field '{key}' is missing but a required field"
        ))),
        Some(other) => Err(ServerError::type_mismatch(format!(
            "BSON field '{key}' is the wrong type '{}', expected type 'array'",
            type_name(Some(other))
        ))),
    }
}

pub fn non_negative(body: &Document, key: &str) -> ServerResult<Option<i64>> {
    match body.get(key) {
        None | Some(Bson::Null) => Ok(None),
        Some(b) => match as_i64(b) {
            Some(v) if v >= 0 => Ok(Some(v)),
            Some(v) => Err(ServerError::bad_value(format!(
                "{key} value must be non-negative, but received: {v}"
            ))),
            None => Err(ServerError::type_mismatch(format!(
                "BSON field '{key}' must be a number"
            ))),
        },
    }
}

/// One entry of `writeErrors`.
pub fn write_error(index: usize, e: &ServerError) -> Bson {
    let mut d = doc! {"index": index as i32, "code": e.code, "errmsg": e.message.clone()};
    if let Some(extra) = &e.extra {
        for (k, v) in extra {
            d.insert(k.clone(), v.clone());
        }
    }
    Bson::Document(d)
}

/// The stages of a `pipeline` array, each of which must be a document.
pub fn pipeline_stages(stages: &[Bson]) -> ServerResult<Vec<Document>> {
    stages
        .iter()
        .map(|s| {
            s.as_document().cloned().ok_or_else(|| {
                ServerError::type_mismatch("Each element of the 'pipeline' array must be an object")
            })
        })
        .collect()
}
