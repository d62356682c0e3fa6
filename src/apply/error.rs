//! What can go wrong applying a batch, typed: the link decides from the kind alone whether to
//! retry from its checkpoint or to stop (or journal the op), and the message is one readable
//! line naming the namespace, the document and MongoDB's code and message.

use bson::Bson;
use std::fmt;

/// A write the destination refused; retrying it cannot help.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// Destination namespace of the refused write (the database alone for a command).
    pub ns: String,
    /// `_id` of the document written, when the write names one.
    pub id: Option<Bson>,
    /// MongoDB's error code, its name when the reply gives one, and its message.
    pub code: i32,
    pub code_name: String,
    pub message: String,
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} refused a write", self.ns)?;
        if let Some(id) = &self.id {
            write!(f, " to _id {id}")?;
        }
        write!(f, ": {}", one_line(&self.message))?;
        if self.code_name.is_empty() {
            write!(f, " (code {})", self.code)
        } else {
            write!(f, " ({}, code {})", self.code_name, self.code)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ApplyError {
    /// Network trouble, a failover, a write conflict: try again from the stored checkpoint.
    Transient(String),
    /// A write the destination refused (see [`Refusal`]).
    Refused(Refusal),
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::Transient(m) => f.write_str(&one_line(m)),
            ApplyError::Refused(r) => r.fmt(f),
        }
    }
}

impl std::error::Error for ApplyError {}

impl From<mongodb::error::Error> for ApplyError {
    fn from(e: mongodb::error::Error) -> Self {
        ApplyError::Transient(e.to_string())
    }
}
