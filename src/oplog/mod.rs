//! Pure oplog logic: no I/O, no async.
//!
//! * [`entry`] — a cheap typed view over one raw `local.oplog.rs` entry, and the
//!   classification of command entries (transactions, batched writes, DDL).
//! * [`filter`] — namespace patterns (`db.coll`, `db.*`, `*`), op sets (`"iud"`, `"*"`) and a
//!   subscription table fast enough to consult for every op of a large backlog.
//! * [`units`] — transaction reassembly: entries in, [`Unit`]s out (a plain entry, or a
//!   committed transaction / atomic batch with its inner ops in order).
//! * [`fields`] — the top-level fields an op writes (per-field conflict resolution).
//! * [`diff`] — translation of `$v:2` update diffs (and `$v:1` / replacement updates) into
//!   ordinary update documents.
//!
//! The format facts behind this module come from MongoDB's source (mongodb/mongo):
//! `src/mongo/db/repl/oplog_entry.idl` (fields), `src/mongo/db/update/` (update entries:
//! `update_oplog_entry_serialization.cpp`, `document_diff_applier.cpp`),
//! `src/mongo/db/op_observer/op_observer_impl.cpp` and `src/mongo/db/repl/README.md` (applyOps,
//! transactions), `src/mongo/db/repl/noop_writer.cpp` (no-ops).

pub mod diff;
pub mod entry;
pub mod error;
pub mod fields;
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
