//! What a command runs against: the server state, and (inside a transaction) the transaction's
//! private view, so CRUD code is written once for both.

use crate::server::collection::Collection;
use crate::server::error::{ServerError, ServerResult};
use crate::server::oplog_writer::{null_optime, optime, EntryExtras, OpRecord, SessionInfo, TERM};
use crate::server::session::Txn;
use crate::server::state::{create_op, validate_coll_name, validate_db_name, State, OPLOG_NS};
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
                13,
                "Unauthorized",
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

    pub fn note_write(&mut self, ns: &str, id: &bson::Bson) {
        if let Some(txn) = self.txn.as_mut() {
            txn.note_write(ns, id);
        }
    }

    /// Records one change: into the transaction, or as an oplog entry right away.
    pub fn log(&mut self, op: OpRecord, retryable_statement: bool) {
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
                let ts = self.state.append_oplog(&op, &extras);
                r.prev = Some(ts);
                ts
            }
            None => self.state.append_oplog(&op, &EntryExtras::NONE),
        };
        self.last_op = Some(ts);
    }
}
