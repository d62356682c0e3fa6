//! Logical sessions: retryable-write bookkeeping and multi-document transactions.
//!
//! A transaction works on O(1) snapshots of the collections it touches. At commit every document
//! it wrote is checked against the live collection (a document changed by someone else since the
//! snapshot is a WriteConflict), then the final versions are applied and logged as one `applyOps`
//! entry (a chain of `partialTxn` entries when large), exactly as a replica-set primary does.

use crate::server::collection::Collection;
use crate::server::error::{ServerError, ServerResult};
use crate::server::error_codes::ErrorCode;
use crate::server::oplog_writer::{
    build_apply_ops_entry, null_optime, optime, ApplyOpsEnd, EntryExtras, OpRecord, SessionInfo,
    TERM,
};
use crate::server::query::KeyValue;
use crate::server::state::{split_ns, Catalog, State};
use bson::{Bson, Document, Timestamp};
use std::collections::{BTreeMap, HashMap};

/// Above this many bytes of operations a commit is split into a partialTxn chain (mongod: 16 MB).
pub const MAX_APPLY_OPS_BYTES: usize = 16 * 1024 * 1024 - 64 * 1024;

#[derive(Debug, Default)]
pub struct Session {
    pub active_txn: Option<i64>,
    pub state: TxnPhase,
    /// Reply of the last retryable write, returned again if the driver retries it.
    pub retry_reply: Option<(i64, Document)>,
    /// OpTime of the last entry written by the active retryable write (for prevOpTime chains).
    pub last_op_time: Option<Timestamp>,
}

#[derive(Debug, Default)]
pub enum TxnPhase {
    #[default]
    None,
    RetryableWrite,
    InProgress(Box<Txn>),
    Committed,
    Aborted,
}

#[derive(Debug, Default)]
pub struct Txn {
    /// The catalog as it was when the transaction started: snapshot isolation means every read
    /// of the transaction sees this state plus its own writes (mongod reads at the snapshot
    /// timestamp chosen by the first statement). `None` only for a default-constructed Txn.
    pub base: Option<Catalog>,
    /// Collection states when the transaction first touched them (None: did not exist).
    pub snapshots: HashMap<String, Option<Collection>>,
    /// The transaction's private working copies.
    pub working: HashMap<String, Collection>,
    /// `_id`s written per namespace, each with its place in first-write order: membership
    /// tests (other transactions' writes conflict with these) and the order of the commit.
    pub written: HashMap<String, BTreeMap<KeyValue, usize>>,
    pub ops: Vec<OpRecord>,
    pub ops_bytes: usize,
    /// When the transaction started (mongod aborts it after transactionLifetimeLimitSeconds).
    pub started: Option<std::time::Instant>,
}

impl Txn {
    /// A transaction reading the catalog as it is now (collections are O(1) to clone).
    pub fn starting_at(state: &State) -> Txn {
        Txn {
            base: Some(state.dbs.clone()),
            started: Some(std::time::Instant::now()),
            ..Txn::default()
        }
    }

    /// A collection as of the transaction's snapshot (the live one if there is no snapshot).
    fn at_snapshot<'a>(&'a self, state: &'a State, ns: &str) -> Option<&'a Collection> {
        let (db, coll) = split_ns(ns);
        match &self.base {
            Some(base) => base.get(db).and_then(|d| d.get(coll)).map(|c| c.as_ref()),
            None => state.coll(db, coll),
        }
    }

    /// The transaction's view of a collection (its copy, or the snapshot read-only).
    pub fn view<'a>(&'a self, state: &'a State, ns: &str) -> Option<&'a Collection> {
        if let Some(c) = self.working.get(ns) {
            return Some(c);
        }
        self.at_snapshot(state, ns)
    }

    /// A writable copy of `ns`, taken from the snapshot on first touch.
    pub fn touch<'a>(&'a mut self, state: &State, ns: &str) -> Option<&'a mut Collection> {
        if !self.working.contains_key(ns) {
            let snap = self.at_snapshot(state, ns)?.clone();
            self.snapshots.insert(ns.to_string(), Some(snap.clone()));
            self.working.insert(ns.to_string(), snap);
        }
        self.working.get_mut(ns)
    }

    pub fn add_created(&mut self, ns: &str, c: Collection) {
        self.snapshots.insert(ns.to_string(), None);
        self.working.insert(ns.to_string(), c);
    }

    pub fn note_write(&mut self, ns: &str, id: &Bson) {
        let ids = match self.written.get_mut(ns) {
            Some(ids) => ids,
            None => self.written.entry(ns.to_string()).or_default(),
        };
        if !ids.contains_key(KeyValue::from_ref(id)) {
            let place = ids.len();
            ids.insert(KeyValue(id.clone()), place);
        }
    }

    pub fn has_written(&self, ns: &str, id: &Bson) -> bool {
        self.written
            .get(ns)
            .is_some_and(|ids| ids.contains_key(KeyValue::from_ref(id)))
    }

    /// The `_id`s written in `ns`, in first-write order.
    fn written_in_order(&self, ns: &str) -> Vec<&Bson> {
        let Some(ids) = self.written.get(ns) else {
            return Vec::new();
        };
        let mut ordered: Vec<(&KeyValue, &usize)> = ids.iter().collect();
        ordered.sort_unstable_by_key(|(_, place)| **place);
        ordered.into_iter().map(|(id, _)| &id.0).collect()
    }

    pub fn log(&mut self, op: OpRecord) {
        self.ops_bytes += op.o.size() + op.ns.len() + 64;
        self.ops.push(op);
    }
}

pub fn version_of(c: Option<&Collection>, id: &Bson) -> Option<u64> {
    let c = c?;
    let rid = c.find_id(id)?;
    c.records.get(&rid).map(|r| r.version)
}

pub fn write_conflict() -> ServerError {
    ServerError::new(
        ErrorCode::WriteConflict,
        "Write conflict during plan execution and yielding is disabled. :: Please retry your operation or multi-document transaction.",
    )
    .with_label("TransientTransactionError")
}

/// Applies a committed transaction to the live catalog and logs it. On error nothing changes.
pub fn commit(
    state: &mut State,
    txn: Txn,
    session: &SessionInfo,
) -> ServerResult<Option<Timestamp>> {
    let mut updated: Vec<(String, Collection)> = Vec::new();
    let mut namespaces: Vec<&String> = txn.snapshots.keys().collect();
    namespaces.sort();
    for ns in namespaces {
        let (db, coll) = split_ns(ns);
        let live = state.coll(db, coll);
        let snapshot = txn.snapshots[ns].as_ref();
        let working = &txn.working[ns];
        let ids = txn.written_in_order(ns);
        match (snapshot, live) {
            (None, Some(_)) => return Err(write_conflict()), // created concurrently
            (Some(_), None) => return Err(write_conflict()), // dropped concurrently
            _ => {}
        }
        if snapshot.is_some() && unchanged_since_start(&txn, state, db, coll) {
            // Nothing was committed to this collection since the transaction began, so its
            // working copy is the snapshot plus exactly its own writes, indexes maintained, each
            // record stamped with a fresh version: it becomes the live collection as it is.
            state.version += 1;
            updated.push((ns.clone(), working.clone()));
            continue;
        }
        for &id in &ids {
            if version_of(snapshot, id) != version_of(live, id) {
                return Err(write_conflict());
            }
        }
        let mut target = match live {
            Some(c) => c.clone(),
            None => {
                let mut fresh = working.clone();
                fresh.records = Default::default();
                fresh.id_index = Default::default();
                for index in fresh.indexes.iter_mut() {
                    index.entries = Default::default();
                }
                fresh.data_size = 0;
                fresh
            }
        };
        for id in ids {
            let version = state.version + 1;
            state.version = version;
            let final_record = working
                .find_id(id)
                .and_then(|rid| working.records.get(&rid))
                .cloned();
            match (target.find_id(id), final_record) {
                (Some(rid), Some(rec)) => target.replace_record(rid, rec.raw, version)?,
                (None, Some(rec)) => {
                    target.insert_record(rec.raw, version)?;
                }
                (Some(rid), None) => {
                    target.remove(rid);
                }
                (None, None) => {}
            }
        }
        // Indexes created inside the transaction.
        for index in &working.indexes {
            if !target.indexes.iter().any(|i| i.name == index.name) {
                let mut fresh = index.clone();
                fresh.entries = Default::default();
                target.add_index(fresh)?;
            }
        }
        updated.push((ns.clone(), target));
    }
    for (ns, c) in updated {
        let (db, coll) = split_ns(&ns);
        state
            .dbs
            .entry(db.to_string())
            .or_default()
            .insert(coll.to_string(), std::sync::Arc::new(c));
    }
    if txn.ops.is_empty() {
        return Ok(None);
    }
    Ok(Some(log_apply_ops(state, txn.ops, session)))
}

/// Whether the live `db.coll` is the very collection the transaction's snapshot holds. Every
/// change to a live collection goes through `Arc::make_mut` or a new `Arc`, and the snapshot
/// keeps a reference, so any change since then left a different allocation in the catalog.
pub fn unchanged_since_start(txn: &Txn, state: &State, db: &str, coll: &str) -> bool {
    let at_start = txn
        .base
        .as_ref()
        .and_then(|b| b.get(db))
        .and_then(|d| d.get(coll));
    let live = state.dbs.get(db).and_then(|d| d.get(coll));
    matches!((at_start, live), (Some(a), Some(b)) if std::sync::Arc::ptr_eq(a, b))
}

/// Logs committed operations as one `applyOps` entry, or a partialTxn chain when too large.
fn log_apply_ops(state: &mut State, ops: Vec<OpRecord>, session: &SessionInfo) -> Timestamp {
    let total = ops.len();
    // Entries up to MAX_APPLY_OPS_BYTES each: (first op, bytes) of each.
    let mut bounds: Vec<(usize, usize)> = vec![(0, 0)];
    for (i, op) in ops.iter().enumerate() {
        let size = op.inner_size();
        let last = bounds.last_mut().unwrap();
        if last.1 + size > MAX_APPLY_OPS_BYTES && last.0 < i {
            bounds.push((i, size));
        } else {
            last.1 += size;
        }
    }
    let n = bounds.len();
    let mut prev = null_optime();
    let mut ts = Timestamp {
        time: 0,
        increment: 0,
    };
    for (k, &(first, _)) in bounds.iter().enumerate() {
        let last = bounds.get(k + 1).map_or(ops.len(), |b| b.0);
        let end = if k + 1 < n {
            ApplyOpsEnd::Partial
        } else if n > 1 {
            ApplyOpsEnd::Count(total as i64)
        } else {
            ApplyOpsEnd::Whole
        };
        let extras = EntryExtras {
            session: Some(session),
            stmt_id: None,
            prev_op_time: Some(prev),
        };
        ts = state.append_oplog_entry(|ts, wall| {
            build_apply_ops_entry(&ops[first..last], end, ts, wall, &extras)
        });
        prev = optime(ts, TERM);
    }
    ts
}

/// Aborts transactions that have been open longer than `limit`, as mongod's periodic
/// transaction reaper does (transactionLifetimeLimitSeconds): a client that died mid-transaction
/// must not keep its documents locked for ever.
pub fn expire_transactions(state: &mut State, limit: std::time::Duration) {
    for session in state.sessions.values_mut() {
        if let TxnPhase::InProgress(txn) = &session.state {
            if txn.started.is_some_and(|t| t.elapsed() > limit) {
                session.state = TxnPhase::Aborted;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn written_ids_keep_first_write_order_and_equal_ids_of_other_types_are_one_document() {
        let mut txn = Txn::default();
        let ids = [
            Bson::Document(doc! {"n": "db.c", "i": 3}),
            Bson::Int32(2),
            Bson::String("a".into()),
            Bson::Double(1.0),
        ];
        for id in &ids {
            txn.note_write("db.c", id);
        }
        // Written again, under equal values of other types: no new place.
        txn.note_write("db.c", &Bson::Int64(2));
        txn.note_write("db.c", &Bson::Int32(1));
        txn.note_write("db.c", &Bson::Document(doc! {"n": "db.c", "i": 3.0}));
        txn.note_write("db.d", &Bson::Int32(2));
        let order: Vec<Bson> = txn.written_in_order("db.c").into_iter().cloned().collect();
        assert_eq!(order, ids);
        assert!(txn.has_written("db.c", &Bson::Int64(1)));
        assert!(txn.has_written("db.c", &Bson::Document(doc! {"n": "db.c", "i": 3_i64})));
        assert!(!txn.has_written("db.c", &Bson::String("A".into())));
        assert!(!txn.has_written("db.e", &Bson::Int32(2)));
        assert_eq!(txn.written_in_order("db.d"), [&Bson::Int32(2)]);
        assert!(txn.written_in_order("db.e").is_empty());
    }
}
