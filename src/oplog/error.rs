//! The one error type of the `oplog` module.

use bson::spec::ElementType;
use bson::Timestamp;

/// Everything that can go wrong while reading oplog entries, parsing filters, reassembling
/// transactions or translating update diffs. Messages name the offending input and, where there
/// is one, what to do next.
#[derive(Debug, thiserror::Error)]
pub enum OplogError {
    /// The raw BSON itself could not be read (truncated or corrupt bytes).
    #[error("malformed BSON in oplog entry: {0}")]
    Bson(#[from] bson::raw::Error),

    /// A field every entry of this kind must have is absent.
    #[error("oplog entry has no `{field}` field (entry: {context})")]
    MissingField {
        field: &'static str,
        context: String,
    },

    /// A field has a BSON type the oplog format does not allow there.
    #[error("oplog field `{field}` is {found:?}, expected {expected} (entry: {context})")]
    WrongType {
        field: String,
        expected: &'static str,
        found: ElementType,
        context: String,
    },

    /// An entry whose structure breaks the oplog format in a way no single field explains.
    #[error("malformed oplog entry: {0}")]
    Malformed(String),

    /// `op` is not one of `i`, `u`, `d`, `c`, `n`.
    #[error(
        "unknown oplog op type {0:?}: this tool understands i, u, d, c and n; \
         upgrade mmm or report the entry"
    )]
    UnknownOp(String),

    /// A namespace pattern given by the user is not valid.
    #[error("invalid namespace pattern {input:?}: {reason}")]
    InvalidNamespace { input: String, reason: String },

    /// An op-set string given by the user is not valid.
    #[error("invalid op set {input:?}: {reason}")]
    InvalidOpSet { input: String, reason: String },

    /// An update `o` (replacement, `$v:1` or `$v:2` diff) that breaks the format rules the
    /// server itself enforces.
    #[error("malformed update in oplog entry: {0}")]
    InvalidUpdate(String),

    /// A valid `$v:2` diff that ordinary update operators cannot express (binary `b` sections,
    /// field names containing `.` or starting with `$`, empty field names). Apply the entry with
    /// `applyOps` on the destination, or read, apply the diff locally and replace the document.
    #[error(
        "update diff cannot be expressed with update operators: {0}; \
         apply this entry with applyOps or by read-modify-replace instead"
    )]
    UntranslatableDiff(String),

    /// A transaction chain whose beginning was not seen (the tailer started in the middle of
    /// it), or whose `count` disagrees with the operations collected.
    #[error(
        "incomplete transaction (lsid {lsid}, txnNumber {txn_number}) at {ts:?}: {reason}; \
         resume tailing from an earlier checkpoint that includes the whole transaction"
    )]
    IncompleteTransaction {
        lsid: String,
        txn_number: i64,
        ts: Timestamp,
        reason: String,
    },

    /// An entry that contradicts the state of its transaction (for example a second `prepare`).
    #[error("inconsistent transaction (lsid {lsid}, txnNumber {txn_number}) at {ts:?}: {reason}")]
    TransactionState {
        lsid: String,
        txn_number: i64,
        ts: Timestamp,
        reason: String,
    },

    /// Pending (uncommitted) transactions hold more memory than the configured limit.
    #[error(
        "pending transactions hold {pending_bytes} bytes, over the limit of {limit} bytes; \
         raise the limit or investigate the long-running prepared transaction"
    )]
    PendingLimit { pending_bytes: usize, limit: usize },
}

impl OplogError {
    pub(crate) fn missing(field: &'static str, raw: &bson::RawDocument) -> Self {
        OplogError::MissingField {
            field,
            context: describe(raw),
        }
    }

    pub(crate) fn wrong_type(
        field: impl Into<String>,
        expected: &'static str,
        found: ElementType,
        raw: &bson::RawDocument,
    ) -> Self {
        OplogError::WrongType {
            field: field.into(),
            expected,
            found,
            context: describe(raw),
        }
    }
}

/// A short description of an entry for error messages: its `ts`, `op` and `ns` when readable.
pub(crate) fn describe(raw: &bson::RawDocument) -> String {
    let mut out = String::new();
    if let Ok(Some(ts)) = raw.get("ts") {
        if let Some(ts) = ts.as_timestamp() {
            out.push_str(&format!("ts {}:{} ", ts.time, ts.increment));
        }
    }
    for key in ["op", "ns"] {
        if let Ok(Some(v)) = raw.get(key) {
            if let Some(s) = v.as_str() {
                out.push_str(&format!("{key} {s:?} "));
            }
        }
    }
    if out.is_empty() {
        out.push_str("unreadable");
    }
    out.truncate(out.trim_end().len());
    out
}
