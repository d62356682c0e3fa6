//! The error every server component returns: it becomes a MongoDB command error document
//! (`{ok: 0, errmsg, code, codeName}`) on the wire.

use bson::{doc, Document};
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub struct ServerError {
    pub code: i32,
    pub code_name: &'static str,
    pub message: String,
    /// Extra fields merged into the error reply (e.g. `keyPattern`/`keyValue` for 11000).
    pub extra: Option<Document>,
    /// Error labels such as "TransientTransactionError".
    pub labels: Vec<&'static str>,
}

pub type ServerResult<T> = Result<T, ServerError>;

impl ServerError {
    pub fn new(code: i32, code_name: &'static str, message: impl Into<String>) -> Self {
        ServerError {
            code,
            code_name,
            message: message.into(),
            extra: None,
            labels: Vec::new(),
        }
    }

    pub fn with_extra(mut self, extra: Document) -> Self {
        self.extra = Some(extra);
        self
    }

    pub fn with_label(mut self, label: &'static str) -> Self {
        self.labels.push(label);
        self
    }

    // The codes the server uses most; names and numbers from MongoDB's error_codes.yml.
    pub fn bad_value(msg: impl Into<String>) -> Self {
        Self::new(2, "BadValue", msg)
    }
    pub fn failed_to_parse(msg: impl Into<String>) -> Self {
        Self::new(9, "FailedToParse", msg)
    }
    pub fn type_mismatch(msg: impl Into<String>) -> Self {
        Self::new(14, "TypeMismatch", msg)
    }
    pub fn invalid_options(msg: impl Into<String>) -> Self {
        Self::new(72, "InvalidOptions", msg)
    }
    pub fn namespace_not_found(msg: impl Into<String>) -> Self {
        Self::new(26, "NamespaceNotFound", msg)
    }
    pub fn invalid_namespace(msg: impl Into<String>) -> Self {
        Self::new(73, "InvalidNamespace", msg)
    }
    pub fn namespace_exists(msg: impl Into<String>) -> Self {
        Self::new(48, "NamespaceExists", msg)
    }
    pub fn illegal_operation(msg: impl Into<String>) -> Self {
        Self::new(20, "IllegalOperation", msg)
    }
    pub fn immutable_field(msg: impl Into<String>) -> Self {
        Self::new(66, "ImmutableField", msg)
    }
    pub fn conflicting_update(msg: impl Into<String>) -> Self {
        Self::new(40, "ConflictingUpdateOperators", msg)
    }
    pub fn no_such_key(msg: impl Into<String>) -> Self {
        Self::new(4, "NoSuchKey", msg)
    }
    pub fn path_not_viable(msg: impl Into<String>) -> Self {
        Self::new(28, "PathNotViable", msg)
    }
    pub fn location(code: i32, msg: impl Into<String>) -> Self {
        Self::new(code, "Location", msg)
    }
    pub fn command_not_found(name: &str) -> Self {
        Self::new(59, "CommandNotFound", format!("no such command: '{name}'"))
    }
    pub fn not_implemented(msg: impl Into<String>) -> Self {
        Self::new(238, "NotImplemented", msg)
    }

    /// The `{ok: 0, errmsg, code, codeName}` reply body.
    pub fn to_document(&self) -> Document {
        let mut d = doc! {
            "ok": 0.0,
            "errmsg": self.message.clone(),
            "code": self.code,
            "codeName": self.code_name,
        };
        if let Some(extra) = &self.extra {
            for (k, v) in extra {
                d.insert(k.clone(), v.clone());
            }
        }
        if !self.labels.is_empty() {
            d.insert(
                "errorLabels",
                self.labels
                    .iter()
                    .map(|l| bson::Bson::String(l.to_string()))
                    .collect::<Vec<_>>(),
            );
        }
        d
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code_name, self.code, self.message)
    }
}

impl std::error::Error for ServerError {}
