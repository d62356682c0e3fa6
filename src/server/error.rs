//! The error every server component returns: it becomes a MongoDB command error document
//! (`{ok: 0, errmsg, code, codeName}`) on the wire.

pub use crate::server::error_codes::ErrorCode;
use bson::{doc, Document};
use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub struct ServerError {
    pub code: i32,
    pub message: String,
    /// Extra fields merged into the error reply (e.g. `keyPattern`/`keyValue` for 11000).
    pub extra: Option<Document>,
    /// Error labels such as "TransientTransactionError".
    pub labels: Vec<&'static str>,
}

pub type ServerResult<T> = Result<T, ServerError>;

impl ServerError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::location(code.code(), message)
    }

    /// An error with a bare numeric code: a `uassert` site ("Location") code, or a code taken
    /// from another error. Its name comes from the table.
    pub fn location(code: i32, message: impl Into<String>) -> Self {
        ServerError {
            code,
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
        Self::new(ErrorCode::BadValue, msg)
    }
    pub fn failed_to_parse(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::FailedToParse, msg)
    }
    pub fn type_mismatch(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::TypeMismatch, msg)
    }
    pub fn invalid_options(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidOptions, msg)
    }
    pub fn namespace_not_found(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::NamespaceNotFound, msg)
    }
    pub fn invalid_namespace(msg: impl Into<String>) -> Self {
        Self::location(73, msg)
    }
    pub fn namespace_exists(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::NamespaceExists, msg)
    }
    pub fn illegal_operation(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::IllegalOperation, msg)
    }
    pub fn immutable_field(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::ImmutableField, msg)
    }
    pub fn conflicting_update(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::ConflictingUpdateOperators, msg)
    }
    pub fn no_such_key(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::NoSuchKey, msg)
    }
    pub fn path_not_viable(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::PathNotViable, msg)
    }
    pub fn command_not_found(name: &str) -> Self {
        Self::new(
            ErrorCode::CommandNotFound,
            format!("no such command: '{name}'"),
        )
    }
    pub fn not_implemented(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotImplemented, msg)
    }

    /// The name mongod gives this error's code.
    pub fn code_name(&self) -> Cow<'static, str> {
        crate::server::error_codes::code_name(self.code)
    }

    /// The `{ok: 0, errmsg, code, codeName}` reply body.
    pub fn to_document(&self) -> Document {
        let mut d = doc! {
            "ok": 0.0,
            "errmsg": self.message.clone(),
            "code": self.code,
            "codeName": self.code_name().as_ref(),
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
        write!(f, "{} ({}): {}", self.code_name(), self.code, self.message)
    }
}

impl std::error::Error for ServerError {}
