//! Transaction reassembly: turns the stream of oplog entries into *units* — one plain entry, or
//! one committed transaction / atomic batch with its inner operations in order (mongodb/mongo
//! `src/mongo/db/repl/README.md`, `src/mongo/db/transaction/transaction_operations.cpp`).
//!
//! Rules implemented (from the transactions section of `src/mongo/db/repl/README.md`, adjusted
//! for 8.0):
//! * `applyOps` with `lsid` + `txnNumber` and no (or zero) `multiOpType` belongs to a
//!   transaction keyed by `(lsid bytes, txnNumber)`. `partialTxn: true` and `prepare: true`
//!   entries are buffered; an `applyOps` without either commits the buffered ops plus its own;
//!   `commitTransaction` commits a prepared transaction, `abortTransaction` drops it.
//! * Chains are checked: the first entry seen of a transaction must have a null (or no)
//!   `prevOpTime`, each later one must point at the previous entry, and a final `count` must
//!   equal the number of operations collected. A violation means the tailer started in the
//!   middle of a transaction and is reported as [`OplogError::IncompleteTransaction`] rather
//!   than replicating half a transaction.
//! * `applyOps` that is not a transaction (8.0 batched inserts/deletes without `lsid`,
//!   retryable vectored inserts with `multiOpType`, user-issued `applyOps`) becomes one
//!   [`Unit::Transaction`] of kind [`TxnKind::Batch`]: the source applied it in one storage
//!   transaction at one timestamp, so it is handed on as one indivisible unit (the applier may
//!   apply it in a destination transaction; it must never put a checkpoint inside it). A
//!   retryable vectored insert split over several `applyOps` entries ("applied separately") is
//!   one unit per entry, since each entry was its own storage transaction.
//! * Nested `applyOps` inner operations are flattened in place, recursively.
//! * Everything else (CRUD, no-ops, DDL, other commands) is a [`Unit::Single`].
//!
//! A unit carries the timestamp of the entry that completed it; units come out in that order.
//! Memory is bounded by the pending (uncommitted) transactions; an optional byte limit turns an
//! unbounded prepared transaction into an error instead of unbounded growth.
//!
//! Checkpoints: while a transaction is pending the resume point must not pass its first entry.
//! [`Reassembler::resume_ts`] gives the latest safe resume point; after a restart from it the
//! units already applied before the restart are produced again and must be skipped by their
//! `ts` (keep the `ts` of the last applied unit alongside the resume point).

use std::collections::HashMap;

use bson::raw::RawBsonRef;
use bson::{DateTime, Document, RawDocument, RawDocumentBuf, Timestamp};

use super::entry::{int_field, CommandKind, Entry, OpKind};
use super::error::OplogError;

type Result<T> = std::result::Result<T, OplogError>;

/// Nested `applyOps` deeper than this is rejected (BSON itself nests at most 100 levels).
const MAX_NESTING: usize = 100;

/// What the tailer hands on.
#[derive(Debug, Clone, PartialEq)]
pub enum Unit {
    /// One ordinary entry (CRUD, no-op, DDL or other command), as read.
    Single(RawDocumentBuf),
    /// A committed transaction or an atomic `applyOps` batch.
    Transaction(Txn),
}

impl Unit {
    /// The `ts` of the entry that completed the unit.
    pub fn ts(&self) -> Result<Timestamp> {
        match self {
            Unit::Single(e) => Entry::new(e).ts(),
            Unit::Transaction(t) => Ok(t.ts),
        }
    }

    /// Number of data operations in the unit (1 for a single entry).
    pub fn op_count(&self) -> usize {
        match self {
            Unit::Single(_) => 1,
            Unit::Transaction(t) => t.ops.len(),
        }
    }
}

/// The kind of a multi-op unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnKind {
    /// An unprepared transaction: one `applyOps`, or a `partialTxn` chain ending in an
    /// `applyOps` without `partialTxn`.
    Unprepared,
    /// A prepared transaction, committed by a `commitTransaction` entry.
    Prepared,
    /// An `applyOps` that is not a transaction (batched write, retryable vectored insert,
    /// user-issued `applyOps`), applied atomically by the source.
    Batch,
}

/// One committed transaction or atomic batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Txn {
    pub kind: TxnKind,
    /// `ts` of the entry that completed the unit (commit `applyOps`, `commitTransaction`, or
    /// the batch entry itself).
    pub ts: Timestamp,
    /// `t` of that entry.
    pub t: Option<i64>,
    /// `wall` of that entry.
    pub wall: Option<DateTime>,
    /// `ts` of the first entry of the unit (equal to `ts` for single-entry units).
    pub first_ts: Timestamp,
    /// `commitTimestamp` of a prepared transaction (the time its writes became visible).
    pub commit_ts: Option<Timestamp>,
    pub lsid: Option<Document>,
    pub txn_number: Option<i64>,
    /// The inner operations in order (nested `applyOps` flattened). They have no `ts`/`t`/
    /// `wall` of their own.
    pub ops: Vec<RawDocumentBuf>,
    /// Number of oplog entries the unit was assembled from.
    pub entry_count: usize,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReassemblerStats {
    /// Entries pushed.
    pub entries: u64,
    /// Units emitted (of all kinds).
    pub units: u64,
    /// `Unit::Single` emitted.
    pub singles: u64,
    /// `Unit::Transaction` of kind `Unprepared` or `Prepared` emitted.
    pub transactions: u64,
    /// `Unit::Transaction` of kind `Batch` emitted.
    pub batches: u64,
    /// Inner operations emitted inside `Unit::Transaction` units.
    pub inner_ops: u64,
    /// Prepared transactions dropped by `abortTransaction`.
    pub aborted: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TxnKey {
    lsid: Vec<u8>,
    txn_number: i64,
}

#[derive(Debug)]
struct Pending {
    first_ts: Timestamp,
    /// `ts` of the last entry of this transaction seen so far (what the next `prevOpTime`
    /// must point at).
    last_ts: Timestamp,
    /// `ts` of the entry pushed just before this transaction's first entry.
    resume_after: Option<Timestamp>,
    prepared: bool,
    ops: Vec<RawDocumentBuf>,
    /// Operations counted as the server counts them (top-level `applyOps` elements).
    counted_ops: usize,
    bytes: usize,
    entry_count: usize,
}

/// Feed raw entries in oplog order, get units back.
#[derive(Debug, Default)]
pub struct Reassembler {
    pending: HashMap<TxnKey, Pending>,
    pending_bytes: usize,
    max_pending_bytes: Option<usize>,
    last_ts: Option<Timestamp>,
    stats: ReassemblerStats,
}

/// What to do with one entry, decided while it is borrowed.
enum Action {
    Single,
    Buffer { prepare: bool },
    CommitApplyOps,
    CommitPrepared,
    Abort,
    Batch,
}

impl Reassembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fails `push` with [`OplogError::PendingLimit`] when pending transactions would hold
    /// more than `limit` bytes of operations.
    pub fn with_max_pending_bytes(limit: usize) -> Self {
        Reassembler {
            max_pending_bytes: Some(limit),
            ..Self::default()
        }
    }

    /// Pushes one entry; returns the units it completes (zero or one).
    pub fn push(&mut self, entry: RawDocumentBuf) -> Result<Vec<Unit>> {
        let mut out = Vec::new();
        self.push_into(entry, &mut out)?;
        Ok(out)
    }

    /// Like [`Reassembler::push`], appending to `out` (no allocation for plain entries).
    pub fn push_into(&mut self, entry: RawDocumentBuf, out: &mut Vec<Unit>) -> Result<()> {
        let e = Entry::new(&entry);
        let ts = e.ts()?;
        let op = e.op()?;
        let action = if op != OpKind::Command {
            Action::Single
        } else {
            match e.command_kind()? {
                Some(CommandKind::TxnPartialApplyOps) => Action::Buffer { prepare: false },
                Some(CommandKind::TxnPrepareApplyOps) => Action::Buffer { prepare: true },
                Some(CommandKind::TxnCommitApplyOps) => Action::CommitApplyOps,
                Some(CommandKind::CommitTransaction) => Action::CommitPrepared,
                Some(CommandKind::AbortTransaction) => Action::Abort,
                Some(CommandKind::BatchedApplyOps) | Some(CommandKind::UserApplyOps) => {
                    Action::Batch
                }
                _ => Action::Single,
            }
        };
        let resume_after = self.last_ts;
        match action {
            Action::Single => {
                self.stats.units += 1;
                self.stats.singles += 1;
                out.push(Unit::Single(entry));
            }
            Action::Batch => {
                let mut ops = Vec::new();
                expand_apply_ops(e.o()?, &mut ops, 0)?;
                let txn = Txn {
                    kind: TxnKind::Batch,
                    ts,
                    t: e.t()?,
                    wall: e.wall()?,
                    first_ts: ts,
                    commit_ts: None,
                    lsid: lsid_document(&e)?,
                    txn_number: e.txn_number()?,
                    ops,
                    entry_count: 1,
                };
                self.emit(txn, out);
            }
            Action::Buffer { prepare } => {
                let key = txn_key(&e)?;
                let o = e.o()?;
                if prepare && entry_flag(o, "partialTxn")? {
                    return Err(state_error(
                        &e,
                        &key,
                        ts,
                        "entry has both prepare and partialTxn",
                    ));
                }
                self.check_chain(&e, &key, ts, false)?;
                let mut ops = Vec::new();
                let counted = expand_apply_ops(o, &mut ops, 0)?;
                let bytes: usize = ops.iter().map(|d| d.as_bytes().len()).sum();
                if let Some(limit) = self.max_pending_bytes {
                    if self.pending_bytes + bytes > limit {
                        return Err(OplogError::PendingLimit {
                            pending_bytes: self.pending_bytes + bytes,
                            limit,
                        });
                    }
                }
                let count = int_field(o, "count")?;
                let p = self.pending.entry(key.clone()).or_insert_with(|| Pending {
                    first_ts: ts,
                    last_ts: ts,
                    resume_after,
                    prepared: false,
                    ops: Vec::new(),
                    counted_ops: 0,
                    bytes: 0,
                    entry_count: 0,
                });
                p.last_ts = ts;
                p.prepared = prepare;
                p.ops.extend(ops);
                p.counted_ops += counted;
                p.bytes += bytes;
                p.entry_count += 1;
                self.pending_bytes += bytes;
                if prepare {
                    let counted_ops = p.counted_ops;
                    check_count(&e, &key, ts, count, counted_ops)?;
                }
            }
            Action::CommitApplyOps => {
                let key = txn_key(&e)?;
                self.check_chain(&e, &key, ts, false)?;
                let o = e.o()?;
                let count = int_field(o, "count")?;
                let (mut ops, mut counted, first_ts, entry_count) = match self.take(&key) {
                    Some(p) => (p.ops, p.counted_ops, p.first_ts, p.entry_count + 1),
                    None => (Vec::new(), 0, ts, 1),
                };
                counted += expand_apply_ops(o, &mut ops, 0)?;
                check_count(&e, &key, ts, count, counted)?;
                let txn = Txn {
                    kind: TxnKind::Unprepared,
                    ts,
                    t: e.t()?,
                    wall: e.wall()?,
                    first_ts,
                    commit_ts: None,
                    lsid: lsid_document(&e)?,
                    txn_number: e.txn_number()?,
                    ops,
                    entry_count,
                };
                self.emit(txn, out);
            }
            Action::CommitPrepared => {
                let key = txn_key(&e)?;
                self.check_chain(&e, &key, ts, true)?;
                let p = self.take(&key).expect("check_chain verified it is pending");
                let commit_ts = match e.o()?.get("commitTimestamp")? {
                    Some(RawBsonRef::Timestamp(t)) => Some(t),
                    _ => None,
                };
                let txn = Txn {
                    kind: TxnKind::Prepared,
                    ts,
                    t: e.t()?,
                    wall: e.wall()?,
                    first_ts: p.first_ts,
                    commit_ts,
                    lsid: lsid_document(&e)?,
                    txn_number: e.txn_number()?,
                    ops: p.ops,
                    entry_count: p.entry_count + 1,
                };
                self.emit(txn, out);
            }
            Action::Abort => {
                let key = txn_key(&e)?;
                if self.take(&key).is_some() {
                    self.stats.aborted += 1;
                }
            }
        }
        // Only a fully processed entry moves the resume point.
        self.stats.entries += 1;
        self.last_ts = Some(ts);
        Ok(())
    }

    fn emit(&mut self, txn: Txn, out: &mut Vec<Unit>) {
        self.stats.units += 1;
        self.stats.inner_ops += txn.ops.len() as u64;
        match txn.kind {
            TxnKind::Batch => self.stats.batches += 1,
            _ => self.stats.transactions += 1,
        }
        out.push(Unit::Transaction(txn));
    }

    fn take(&mut self, key: &TxnKey) -> Option<Pending> {
        let p = self.pending.remove(key)?;
        self.pending_bytes -= p.bytes;
        Some(p)
    }

    /// Checks an entry of a transaction against what is pending for it.
    /// `commit_prepared`: the entry is a `commitTransaction`, which needs a prepared buffer.
    fn check_chain(
        &self,
        e: &Entry<'_>,
        key: &TxnKey,
        ts: Timestamp,
        commit_prepared: bool,
    ) -> Result<()> {
        let prev = e.prev_op_time()?;
        match self.pending.get(key) {
            None => {
                if commit_prepared {
                    return Err(incomplete(
                        e,
                        key,
                        ts,
                        "commitTransaction without its prepare entry".into(),
                    ));
                }
                if let Some(prev) = prev.filter(|p| !p.is_null()) {
                    return Err(incomplete(
                        e,
                        key,
                        ts,
                        format!(
                            "first entry seen points back to an earlier entry at {}:{} \
                             (prevOpTime) that was not seen",
                            prev.ts.time, prev.ts.increment
                        ),
                    ));
                }
            }
            Some(p) => {
                if p.prepared && !commit_prepared {
                    return Err(state_error(
                        e,
                        key,
                        ts,
                        "applyOps for a transaction that is already prepared",
                    ));
                }
                if !p.prepared && commit_prepared {
                    return Err(state_error(
                        e,
                        key,
                        ts,
                        "commitTransaction for a transaction that was never prepared",
                    ));
                }
                if let Some(prev) = prev {
                    if prev.ts != p.last_ts {
                        return Err(incomplete(
                            e,
                            key,
                            ts,
                            format!(
                                "prevOpTime points at {}:{} but the previous entry seen is {}:{}",
                                prev.ts.time,
                                prev.ts.increment,
                                p.last_ts.time,
                                p.last_ts.increment
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The `ts` of the first entry of the oldest transaction still pending.
    pub fn oldest_pending_ts(&self) -> Option<Timestamp> {
        self.pending.values().map(|p| p.first_ts).min()
    }

    /// The latest resume point (resume with `ts > resume_ts`) that loses nothing: the last
    /// pushed entry when nothing is pending, else the entry just before the oldest pending
    /// transaction began. `None` when there is no such point among the pushed entries (nothing
    /// pushed yet, or a pending transaction began with the first pushed entry): keep the
    /// previous checkpoint then.
    pub fn resume_ts(&self) -> Option<Timestamp> {
        let mut best = self.last_ts;
        for p in self.pending.values() {
            match (p.resume_after, best) {
                (None, _) => return None,
                (Some(r), Some(b)) if r < b => best = Some(r),
                _ => {}
            }
        }
        best
    }

    /// Number of transactions pending.
    pub fn pending_transactions(&self) -> usize {
        self.pending.len()
    }

    /// Number of operations held by pending transactions.
    pub fn pending_ops(&self) -> usize {
        self.pending.values().map(|p| p.ops.len()).sum()
    }

    /// Bytes of operations held by pending transactions.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    pub fn stats(&self) -> ReassemblerStats {
        self.stats
    }
}

fn entry_flag(o: &RawDocument, key: &str) -> Result<bool> {
    super::entry::flag(o, key)
}

fn txn_key(e: &Entry<'_>) -> Result<TxnKey> {
    let lsid = e
        .lsid()?
        .ok_or_else(|| OplogError::missing("lsid", e.raw()))?;
    let txn_number = e
        .txn_number()?
        .ok_or_else(|| OplogError::missing("txnNumber", e.raw()))?;
    Ok(TxnKey {
        lsid: lsid.as_bytes().to_vec(),
        txn_number,
    })
}

fn lsid_document(e: &Entry<'_>) -> Result<Option<Document>> {
    match e.lsid()? {
        None => Ok(None),
        Some(raw) => Ok(Some(Document::try_from(raw)?)),
    }
}

fn lsid_text(e: &Entry<'_>) -> String {
    match e.lsid() {
        Ok(Some(raw)) => match Document::try_from(raw) {
            Ok(d) => d.to_string(),
            Err(_) => "<unreadable>".into(),
        },
        _ => "<none>".into(),
    }
}

fn incomplete(e: &Entry<'_>, key: &TxnKey, ts: Timestamp, reason: String) -> OplogError {
    OplogError::IncompleteTransaction {
        lsid: lsid_text(e),
        txn_number: key.txn_number,
        ts,
        reason,
    }
}

fn state_error(e: &Entry<'_>, key: &TxnKey, ts: Timestamp, reason: &str) -> OplogError {
    OplogError::TransactionState {
        lsid: lsid_text(e),
        txn_number: key.txn_number,
        ts,
        reason: reason.into(),
    }
}

fn check_count(
    e: &Entry<'_>,
    key: &TxnKey,
    ts: Timestamp,
    count: Option<i64>,
    counted: usize,
) -> Result<()> {
    match count {
        Some(c) if c != counted as i64 => Err(incomplete(
            e,
            key,
            ts,
            format!("the final entry says count {c} but {counted} operations were collected"),
        )),
        _ => Ok(()),
    }
}

/// Appends the inner operations of `o.applyOps` to `out`, flattening nested `applyOps`
/// commands in place. Returns the number of top-level elements (what `count` counts).
fn expand_apply_ops(o: &RawDocument, out: &mut Vec<RawDocumentBuf>, depth: usize) -> Result<usize> {
    if depth > MAX_NESTING {
        return Err(OplogError::Malformed(format!(
            "applyOps nested more than {MAX_NESTING} levels"
        )));
    }
    let arr = match o.get("applyOps")? {
        Some(RawBsonRef::Array(a)) => a,
        Some(v) => {
            return Err(OplogError::wrong_type(
                "o.applyOps",
                "Array",
                v.element_type(),
                o,
            ))
        }
        None => return Err(OplogError::missing("o.applyOps", o)),
    };
    let mut n = 0;
    for item in arr {
        let item = item?;
        let doc = item.as_document().ok_or_else(|| {
            OplogError::wrong_type("o.applyOps[]", "Document", item.element_type(), o)
        })?;
        n += 1;
        if let Some(nested) = nested_apply_ops(doc)? {
            expand_apply_ops(nested, out, depth + 1)?;
        } else {
            out.push(doc.to_raw_document_buf());
        }
    }
    Ok(n)
}

/// `Some(o)` when the inner op is itself an `applyOps` command.
fn nested_apply_ops(op: &RawDocument) -> Result<Option<&RawDocument>> {
    if op.get("op")?.and_then(|v| v.as_str()) != Some("c") {
        return Ok(None);
    }
    let Some(o) = op.get("o")?.and_then(|v| v.as_document()) else {
        return Ok(None);
    };
    match o.iter().next() {
        Some(first) => Ok((first?.0 == "applyOps").then_some(o)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests;
