//! Sessions' transaction and retryable-write state machine around a command: which transaction
//! number is active, whether a statement may run, what a retried write answers, and how a
//! failed statement ends its transaction.

use super::ctx::{Ctx, Retryable};
use super::util::{as_i64, bool_arg};
use super::{run, Reply};
use crate::server::error::{ErrorCode, ServerError, ServerResult};
use crate::server::oplog_writer::{oplog_lsid, SessionInfo};
use crate::server::session::{commit, Session, Txn, TxnPhase};
use crate::server::state::State;
use crate::server::wire::Command;
use crate::server::ServerInfo;
use bson::{Bson, Document, Timestamp};

const TRANSIENT_CODES: &[i32] = &[112, 24, 251, 267, 239, 246];

/// An error that ends a transaction's statement as a failed command with the
/// `TransientTransactionError` label, rather than as a write error in the reply.
pub(super) fn is_transient(e: &ServerError) -> bool {
    TRANSIENT_CODES.contains(&e.code) || e.labels.contains(&"TransientTransactionError")
}

pub(super) fn lsid_key(body: &Document) -> Option<(Vec<u8>, Bson)> {
    let id = body.get_document("lsid").ok()?.get("id")?;
    let key = match id {
        Bson::Binary(b) => b.bytes.clone(),
        other => other.to_string().into_bytes(),
    };
    Some((key, id.clone()))
}

fn is_retryable_write(cmd: &str, body: &Document) -> bool {
    let all = |field: &str, ok: &dyn Fn(&Document) -> bool| {
        body.get_array(field)
            .map(|a| a.iter().all(|s| s.as_document().is_some_and(ok)))
            .unwrap_or(true)
    };
    match cmd {
        "insert" | "findAndModify" | "findandmodify" => true,
        "update" => all("updates", &|s| !bool_arg(s, "multi", false)),
        "delete" => all("deletes", &|s| s.get("limit").and_then(as_i64) == Some(1)),
        _ => false,
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn retryable(
    state: &mut State,
    info: &ServerInfo,
    db: &str,
    cmd: &str,
    body: &Command,
    conn: i64,
    n: i64,
    key: Vec<u8>,
    id: Bson,
) -> (ServerResult<Reply>, Option<Timestamp>) {
    if !is_retryable_write(cmd, body) {
        if matches!(cmd, "update" | "delete") {
            // Multi-document statements are simply not retryable: run them plainly.
            let mut ctx = Ctx::new(state, db);
            let r = run(&mut ctx, info, cmd, body, conn);
            let t = ctx.last_op;
            return (r, t);
        }
        return (Err(ServerError::new(ErrorCode::NotARetryableWriteCommand, format!("txnNumber may only be provided for multi-document transactions and retryable write commands. autocommit:false was not provided, and {cmd} is not a retryable write command."))), None);
    }
    let session = state.sessions.entry(key.clone()).or_default();
    if let Some(active) = session.active_txn {
        if n < active {
            return (Err(ServerError::new(ErrorCode::TransactionTooOld, format!("Cannot start transaction {n} on session because a newer transaction {active} has already started."))), None);
        }
        if n == active {
            if let Some((num, reply)) = &session.retry_reply {
                if *num == n {
                    return (Ok(Reply::Doc(reply.clone())), None);
                }
            }
            if !matches!(session.state, TxnPhase::RetryableWrite) {
                return (Err(ServerError::new(ErrorCode::IncompleteTransactionHistory, "Incomplete history detected for transaction number; the transaction number was used by a transaction")), None);
            }
        }
    }
    session.active_txn = Some(n);
    session.state = TxnPhase::RetryableWrite;
    let mut ctx = Ctx::new(state, db);
    ctx.retryable = Some(Retryable {
        session: SessionInfo {
            lsid: oplog_lsid(&id),
            txn_number: n,
        },
        prev: None,
    });
    let r = run(&mut ctx, info, cmd, body, conn);
    let t = ctx.last_op;
    if let Ok(Reply::Doc(d)) = &r {
        if let Some(s) = state.sessions.get_mut(&key) {
            s.retry_reply = Some((n, d.clone()));
        }
    }
    (r, t)
}

fn no_such_txn(n: i64, active: Option<i64>) -> ServerError {
    let msg = match active {
        Some(a) => format!("Given transaction number {n} does not match any in-progress transactions. The active transaction number is {a}"),
        None => format!("Given transaction number {n} does not match any in-progress transactions. The active transaction number is -1"),
    };
    ServerError::new(ErrorCode::NoSuchTransaction, msg)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn in_transaction(
    state: &mut State,
    info: &ServerInfo,
    db: &str,
    cmd: &str,
    body: &Command,
    conn: i64,
    n: i64,
    key: Vec<u8>,
    id: Bson,
) -> (ServerResult<Reply>, Option<Timestamp>) {
    let start = bool_arg(body, "startTransaction", false);
    let result = (|| -> ServerResult<(Reply, Option<Timestamp>)> {
        // The snapshot the transaction reads from is taken when it starts.
        let fresh_txn = start.then(|| Box::new(Txn::starting_at(state)));
        let session = state.sessions.entry(key.clone()).or_default();
        let active = session.active_txn;
        if active.is_some_and(|a| n < a) {
            return Err(ServerError::new(ErrorCode::TransactionTooOld, format!("Cannot start transaction {n} on session because a newer transaction {} has already started.", active.unwrap())));
        }
        if start {
            if active == Some(n) {
                return Err(ServerError::new(ErrorCode::ConflictingOperationInProgress, "Only servers in a sharded cluster can start a new transaction at the active transaction number"));
            }
            session.active_txn = Some(n);
            session.state = TxnPhase::InProgress(fresh_txn.unwrap_or_default());
        } else if active != Some(n) {
            return Err(no_such_txn(n, active));
        }
        match (&session.state, cmd) {
            (TxnPhase::Committed, "commitTransaction") => {
                return Ok((Reply::Doc(Document::new()), None))
            }
            (TxnPhase::Committed, _) => {
                return Err(ServerError::new(
                    ErrorCode::TransactionCommitted,
                    format!("Transaction {n} has been committed."),
                ))
            }
            (TxnPhase::Aborted, _) => {
                return Err(ServerError::new(
                    ErrorCode::NoSuchTransaction,
                    format!("Transaction with {{ txnNumber: {n} }} has been aborted."),
                ))
            }
            (TxnPhase::InProgress(_), _) => {}
            _ => return Err(no_such_txn(n, active)),
        }
        let TxnPhase::InProgress(txn) = std::mem::take(&mut session.state) else {
            unreachable!()
        };
        match cmd {
            "commitTransaction" => {
                let info = SessionInfo {
                    lsid: oplog_lsid(&id),
                    txn_number: n,
                };
                let committed = commit(state, *txn, &info);
                let session = state.sessions.get_mut(&key).unwrap();
                session.state = if committed.is_ok() {
                    TxnPhase::Committed
                } else {
                    TxnPhase::Aborted
                };
                let ts = committed?;
                Ok((Reply::Doc(Document::new()), ts))
            }
            "abortTransaction" => {
                session.state = TxnPhase::Aborted;
                Ok((Reply::Doc(Document::new()), None))
            }
            _ => {
                let mut ctx = Ctx::new(state, db);
                ctx.txn = Some(txn);
                let r = run(&mut ctx, info, cmd, body, conn);
                let txn: Box<Txn> = ctx.txn.take().unwrap();
                let failed = ctx.txn_failed;
                let session: &mut Session = state.sessions.get_mut(&key).unwrap();
                match r {
                    Ok(reply) if failed => {
                        // A write error (reported in the reply) ends the transaction.
                        session.state = TxnPhase::Aborted;
                        Ok((reply, None))
                    }
                    Ok(reply) => {
                        session.state = TxnPhase::InProgress(txn);
                        Ok((reply, None))
                    }
                    Err(e) => {
                        // A failed statement aborts the whole transaction, as on mongod.
                        session.state = TxnPhase::Aborted;
                        Err(e)
                    }
                }
            }
        }
    })();
    match result {
        Ok((reply, ts)) => (Ok(reply), ts),
        Err(mut e) => {
            let is_end = cmd == "commitTransaction" || cmd == "abortTransaction";
            if TRANSIENT_CODES.contains(&e.code)
                && !e.labels.contains(&"TransientTransactionError")
                && (!is_end || e.code == 251)
            {
                e = e.with_label("TransientTransactionError");
            }
            (Err(e), None)
        }
    }
}
