//! Pure oplog logic: no I/O, no async.
//!
//! * [`entry`] — a cheap typed view over one raw `local.oplog.rs` entry, and the
//!   classification of command entries (transactions, batched writes, DDL).
//! * [`filter`] — namespace patterns (`db.coll`, `db.*`, `*`), op sets (`"iud"`, `"*"`) and a
//!   subscription table fast enough to consult for every op of a large backlog.
//! * [`units`] — transaction reassembly: entries in, [`Unit`]s out (a plain entry, or a
//!   committed transaction / atomic batch with its inner ops in order).
//! * [`diff`] — translation of `$v:2` update diffs (and `$v:1` / replacement updates) into
//!   ordinary update documents.
//!
//! The format facts behind this module are in `ref/oplog-format.md` (§1 fields, §3 updates,
//! §5.9 applyOps, §6 transactions, §8 no-ops).

pub mod diff;
pub mod entry;
pub mod error;
pub mod filter;
pub mod units;

pub use diff::{
    diff_to_update, diff_to_update_with, update_format, TranslateOptions, UpdateFormat,
    UpdateTranslation,
};
pub use entry::{CommandKind, DdlKind, Entry, OpKind, OpTime};
pub use error::OplogError;
pub use filter::{NsPattern, OpSet, Subscriptions};
pub use units::{Reassembler, ReassemblerStats, Txn, TxnKind, Unit};
