//! What a command runs against: the server state, and (inside a transaction) the transaction's
//! private view, so CRUD code is written once for both.

use crate::server::collection::Collection;
use crate::server::error::{ServerError, ServerResult};
use crate::server::error_codes::ErrorCode;
use crate::server::oplog_writer::{null_optime, optime, EntryExtras, OpRecord, SessionInfo, TERM};
use crate::server::session::{unchanged_since_start, version_of, write_conflict, Txn, TxnPhase};
use crate::server::state::{
    create_op, split_ns, validate_coll_name, validate_db_name, State, OPLOG_NS,
};
use bson::{DateTime, Document, Timestamp};

/// Retryable-write bookkeeping for oplog entries (lsid, txnNumber, stmtId, prevOpTime chain).
pub struct Retryable {
    pub session: SessionInfo,
    pub prev: Option<Timestamp>,
}

pub struct Ctx<'a> {
    pub state: &'a mut State,
    pub db: String,
    pub txn: Option<Box<Txn>>,
    pub retryable: Option<Retryable>,
    /// stmtId of the statement being executed (retryable writes).
    pub stmt_id: i32,
    pub now: DateTime,
    /// Timestamp of the last oplog entry this command wrote (its operationTime).
    pub last_op: Option<Timestamp>,
    /// A statement of this command failed inside a transaction (reported in `writeErrors`):
    /// the transaction is aborted.
    pub txn_failed: bool,
    /// The command's `bypassDocumentValidation`.
    pub bypass_validation: bool,
}

impl<'a> Ctx<'a> {
    pub fn new(state: &'a mut State, db: &str) -> Ctx<'a> {
        Ctx {
            state,
            db: db.to_string(),
            txn: None,
            retryable: None,
            stmt_id: 0,
            now: DateTime::now(),
            last_op: None,
            txn_failed: false,
            bypass_validation: false,
        }
    }

    pub fn in_txn(&self) -> bool {
        self.txn.is_some()
    }

    /// Read access to a collection as this command sees it.
    pub fn view(&self, db: &str, coll: &str) -> Option<&Collection> {
        match &self.txn {
            Some(txn) => txn.view(self.state, &format!("{db}.{coll}")),
            None => self.state.coll(db, coll),
        }
    }

    /// Write access; `create` makes the collection (logging `create`) when it does not exist.
    pub fn coll_for_write(
        &mut self,
        db: &str,
        coll: &str,
        create: bool,
    ) -> ServerResult<Option<&mut Collection>> {
        let ns = format!("{db}.{coll}");
        if ns == OPLOG_NS {
            return Err(ServerError::new(
                ErrorCode::Unauthorized,
                "not authorized to write to local.oplog.rs",
            ));
        }
        match self.txn.as_mut() {
            Some(txn) => {
                if txn.touch(self.state, &ns).is_none() && create {
                    validate_db_name(db)?;
                    validate_coll_name(db, coll)?;
                    let c = Collection::new(&ns, Document::new())?;
                    let op = create_op(db, coll, &c);
                    txn.add_created(&ns, c);
                    txn.log(op);
                }
                Ok(txn.working.get_mut(&ns))
            }
            None => {
                if self.state.coll(db, coll).is_none() {
                    if !create {
                        return Ok(None);
                    }
                    self.state.create_collection(db, coll, Document::new())?;
                }
                Ok(self.state.coll_mut(db, coll))
            }
        }
    }

    pub fn next_version(&mut self) -> u64 {
        self.state.next_version()
    }

    /// Records that the transaction (if any) wrote document `id` of `ns`.
    ///
    /// Snapshot isolation's "first updater wins" rule, as mongod applies it at the write itself
    /// (jstests/core/txns/transactions_write_conflicts.js): a transaction may not write a document
    /// that another open transaction has written, nor one changed by a commit after its snapshot;
    /// the write fails with WriteConflict (112, TransientTransactionError) and the transaction
    /// is aborted by the caller.
    pub fn note_write(&mut self, ns: &str, id: &bson::Bson) -> ServerResult<()> {
        let Some(txn) = self.txn.as_mut() else {
            return Ok(());
        };
        let (db, coll) = split_ns(ns);
        // A collection nobody committed to since the snapshot holds every document at the
        // snapshot's version: only a changed one is looked up, document by document.
        if !unchanged_since_start(txn, self.state, db, coll) {
            let snapshot = txn.snapshots.get(ns).and_then(|c| c.as_ref());
            if version_of(snapshot, id) != version_of(self.state.coll(db, coll), id) {
                return Err(write_conflict());
            }
        }
        let written_elsewhere = self.state.sessions.values().any(|s| match &s.state {
            TxnPhase::InProgress(other) => other.has_written(ns, id),
            _ => false,
        });
        if written_elsewhere {
            return Err(write_conflict());
        }
        txn.note_write(ns, id);
        Ok(())
    }

    /// Records one change: into the transaction, or as an oplog entry right away.
    pub fn log(&mut self, op: OpRecord, retryable_statement: bool) {
        if crate::server::state::is_local_ns(&op.ns) {
            return; // `local` is never logged
        }
        if let Some(txn) = self.txn.as_mut() {
            txn.log(op);
            return;
        }
        let ts = match self.retryable.as_mut().filter(|_| retryable_statement) {
            Some(r) => {
                let prev = r
                    .prev
                    .map(|ts| optime(ts, TERM))
                    .unwrap_or_else(null_optime);
                let extras = EntryExtras {
                    session: Some(&r.session),
                    stmt_id: Some(self.stmt_id),
                    prev_op_time: Some(prev),
                };
                let ts = self.state.append_oplog(op, &extras);
                r.prev = Some(ts);
                ts
            }
            None => self.state.append_oplog(op, &EntryExtras::NONE),
        };
        self.last_op = Some(ts);
    }
}
