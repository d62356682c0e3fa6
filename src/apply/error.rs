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

/// Names of the codes a destination refuses writes with, for replies that give the code alone
/// (`writeErrors` entries carry no `codeName`). From MongoDB's src/mongo/base/error_codes.yml.
pub fn code_name(code: i32) -> &'static str {
    match code {
        2 => "BadValue",
        13 => "Unauthorized",
        14 => "TypeMismatch",
        28 => "PathNotViable",
        52 => "DollarPrefixedFieldName",
        66 => "ImmutableField",
        121 => "DocumentValidationFailure",
        10334 => "BSONObjectTooLarge",
        11000 => "DuplicateKey",
        _ => "",
    }
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
        let name = match self.code_name.as_str() {
            "" => code_name(self.code),
            name => name,
        };
        if name.is_empty() {
            write!(f, " (code {})", self.code)
        } else {
            write!(f, " ({name}, code {})", self.code)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ApplyError {
    /// Network trouble, a failover, a write conflict: try again from the stored checkpoint.
    Transient(String),
    /// A write the destination refused (see [`Refusal`]).
    Refused(Refusal),
    /// The destination ended the batch's transaction before its commit (NoSuchTransaction):
    /// it ran longer than the server lets a transaction live. The same batch would again:
    /// smaller ones are needed.
    Overlong(String),
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::Transient(m) => f.write_str(&one_line(m)),
            ApplyError::Refused(r) => r.fmt(f),
            ApplyError::Overlong(m) => f.write_str(&one_line(m)),
        }
    }
}

impl std::error::Error for ApplyError {}

impl From<mongodb::error::Error> for ApplyError {
    fn from(e: mongodb::error::Error) -> Self {
        ApplyError::Transient(e.to_string())
    }
}

/// Server error codes worth retrying: the retryable-write codes of the driver specification
/// (mongodb/specifications, source/retryable-writes/retryable-writes.md, "Determining
/// Retryable Errors": failover, shutdown and network codes), WriteConcernFailed (64), which
/// leaves a commit's result unknown, and WriteConflict (112), a concurrent writer that a new
/// attempt no longer meets. Names from MongoDB's src/mongo/base/error_codes.yml.
pub const TRANSIENT_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    64,    // WriteConcernFailed
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    112,   // WriteConflict
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// Unauthorized: the link's user may not write there. A configuration problem, never journaled
/// as one op's fault.
pub const UNAUTHORIZED: i32 = 13;

/// Whether a driver error is worth another attempt: network trouble, a failover, a write
/// conflict, or a reply the server labels `TransientTransactionError`, `RetryableWriteError`
/// or `UnknownTransactionCommitResult`.
pub fn is_transient(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{
        ErrorKind, WriteFailure, RETRYABLE_WRITE_ERROR, TRANSIENT_TRANSACTION_ERROR,
        UNKNOWN_TRANSACTION_COMMIT_RESULT,
    };
    if [
        TRANSIENT_TRANSACTION_ERROR,
        RETRYABLE_WRITE_ERROR,
        UNKNOWN_TRANSACTION_COMMIT_RESULT,
    ]
    .iter()
    .any(|label| e.contains_label(label))
    {
        return true;
    }
    match e.kind.as_ref() {
        ErrorKind::Command(c) => TRANSIENT_CODES.contains(&c.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => TRANSIENT_CODES.contains(&w.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => TRANSIENT_CODES.contains(&w.code),
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Transaction { .. }
        | ErrorKind::Internal { .. }
        | ErrorKind::Shutdown => true,
        _ => false,
    }
}

fn first_line(s: &str) -> &str {
    s.lines()
        .next()
        .unwrap_or_default()
        .trim_end_matches([',', ' '])
}

/// The driver's server selection message without its topology dump: the reason, and the first
/// server's error when it names one.
fn server_selection(message: &str) -> String {
    let reason = message.split(". Topology:").next().unwrap_or(message);
    let cause = message
        .split_once("Error: Kind: ")
        .and_then(|(_, rest)| rest.split(", labels:").next());
    match cause {
        Some(cause) => format!("no server available: {} ({cause})", first_line(reason)),
        None => format!("no server available: {}", first_line(reason)),
    }
}

/// A driver error as one readable line (never the reply's bytes nor the error's debug form).
pub fn describe(e: &mongodb::error::Error) -> String {
    use mongodb::error::{ErrorKind, WriteFailure};
    let line = match e.kind.as_ref() {
        ErrorKind::Command(c) => format!("{} (code {}): {}", c.code_name, c.code, c.message),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => format!(
            "write concern error {} (code {}): {}",
            w.code_name, w.code, w.message
        ),
        ErrorKind::Write(WriteFailure::WriteError(w)) => format!(
            "{} (code {}): {}",
            w.code_name.as_deref().unwrap_or("write error"),
            w.code,
            w.message
        ),
        ErrorKind::Io(io) => format!("network error: {io}"),
        ErrorKind::ServerSelection { message, .. } => server_selection(message),
        ErrorKind::Custom(_) => match e.get_custom::<String>() {
            Some(message) => message.clone(),
            None => first_line(&e.kind.to_string()).to_string(),
        },
        other => first_line(&other.to_string()).to_string(),
    };
    one_line(&line)
}

/// The refusal a driver error stands for, when it is a server's answer that retrying cannot
/// change; `None` for transient trouble.
pub fn refusal_of(e: &mongodb::error::Error, ns: &str) -> Option<Refusal> {
    use mongodb::error::{ErrorKind, WriteFailure};
    if is_transient(e) {
        return None;
    }
    let (code, code_name, message) = match e.kind.as_ref() {
        ErrorKind::Command(c) => (c.code, c.code_name.clone(), c.message.clone()),
        ErrorKind::Write(WriteFailure::WriteError(w)) => (
            w.code,
            w.code_name.clone().unwrap_or_default(),
            w.message.clone(),
        ),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => {
            (w.code, w.code_name.clone(), w.message.clone())
        }
        _ => (0, String::new(), describe(e)),
    };
    Some(Refusal {
        ns: ns.to_string(),
        id: None,
        code,
        code_name,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::error::{Error, ErrorKind};

    fn command_error(code: i32, name: &str) -> Error {
        let reply =
            bson::doc! {"ok": 0, "code": code, "codeName": name, "errmsg": "boom\nsecond line"};
        let e: mongodb::error::CommandError = bson::from_document(reply).unwrap();
        Error::from(ErrorKind::Command(e))
    }

    #[test]
    fn failover_network_and_conflicts_are_transient_refusals_are_not() {
        for (code, name) in [
            (10107, "NotWritablePrimary"),
            (112, "WriteConflict"),
            (189, "PrimarySteppedDown"),
        ] {
            assert!(is_transient(&command_error(code, name)), "{name}");
        }
        for (code, name) in [
            (11000, "DuplicateKey"),
            (121, "DocumentValidationFailure"),
            (13, "Unauthorized"),
            (10334, "BSONObjectTooLarge"),
        ] {
            let e = command_error(code, name);
            assert!(!is_transient(&e), "{name}");
            let r = refusal_of(&e, "app.c").unwrap();
            assert_eq!((r.code, r.code_name.as_str()), (code, name));
        }
        let io = Error::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        assert!(is_transient(&io) && refusal_of(&io, "app.c").is_none());
    }

    #[test]
    fn messages_are_one_line() {
        let e = command_error(11000, "DuplicateKey");
        assert_eq!(describe(&e), "DuplicateKey (code 11000): boom second line");
        let r = Refusal {
            ns: "app.users".into(),
            id: Some(Bson::String("a2".into())),
            code: 11000,
            // writeErrors carry no codeName: the name comes from the code.
            code_name: String::new(),
            message: "E11000 duplicate key\n error".into(),
        };
        assert_eq!(
            r.to_string(),
            "app.users refused a write to _id \"a2\": E11000 duplicate key error (DuplicateKey, code 11000)"
        );
    }
}
