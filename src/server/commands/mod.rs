//! Command dispatch: session and transaction rules around every command, then the command.

mod admin;
mod catalog;
mod ctx;
mod explain;
mod hint;
mod read;
mod util;
mod validate;
mod write;

pub use admin::{MAX_WIRE_VERSION, VERSION};

use crate::server::error::{ServerError, ServerResult};
use crate::server::oplog_writer::{oplog_lsid, SessionInfo};
use crate::server::session::{commit, Session, Txn, TxnPhase};
use crate::server::state::State;
use crate::server::wire::Command;
use crate::server::ServerInfo;
use bson::{doc, Binary, Bson, Document, RawDocumentBuf, Timestamp};
use ctx::{Ctx, Retryable};
use util::{as_i64, bool_arg};

pub enum Reply {
    Doc(Document),
    Raw(RawDocumentBuf),
}

/// What running a request produced.
pub enum Execution {
    Done(RawDocumentBuf),
    /// An awaitData getMore found nothing: wait until capped appends pass `seen`, then retry.
    Wait {
        seen: u64,
    },
}

/// Commands a legacy OP_QUERY may carry (mongod 5.1+ refuses the rest with 352).
pub fn allowed_over_op_query(cmd: &str) -> bool {
    matches!(
        cmd,
        "hello"
            | "isMaster"
            | "ismaster"
            | "buildinfo"
            | "buildInfo"
            | "saslStart"
            | "saslContinue"
            | "authenticate"
    )
}

const TRANSIENT_CODES: &[i32] = &[112, 24, 251, 267, 239, 246];

fn cluster_time(ts: Timestamp) -> Document {
    doc! {
        "clusterTime": ts,
        "signature": {
            "hash": Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0; 20] },
            "keyId": 0i64,
        },
    }
}

fn finish(state: &State, reply: ServerResult<Reply>, op_time: Option<Timestamp>) -> RawDocumentBuf {
    let now = state.clock.last();
    let op_time = op_time.unwrap_or(now);
    let mut raw = match reply {
        Ok(Reply::Doc(mut d)) => {
            d.insert("ok", 1.0);
            to_raw(&d)
        }
        Ok(Reply::Raw(mut r)) => {
            r.append("ok", 1.0);
            r
        }
        Err(e) => to_raw(&e.to_document()),
    };
    raw.append("$clusterTime", to_raw(&cluster_time(now)));
    raw.append("operationTime", op_time);
    raw
}

/// An error reply as `execute` answers it (with `$clusterTime` and `operationTime`).
pub fn error_reply(state: &State, e: ServerError) -> RawDocumentBuf {
    finish(state, Err(e), None)
}

pub fn to_raw(d: &Document) -> RawDocumentBuf {
    RawDocumentBuf::from_document(d).unwrap_or_else(|e| {
        RawDocumentBuf::from_document(
            &ServerError::new(1, "InternalError", e.to_string()).to_document(),
        )
        .unwrap()
    })
}

fn lsid_key(body: &Document) -> Option<(Vec<u8>, Bson)> {
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

/// Runs one request under the state lock.
pub fn execute(
    state: &mut State,
    info: &ServerInfo,
    body: &Command,
    connection_id: i64,
    final_attempt: bool,
) -> Execution {
    if state.last_txn_sweep.elapsed() >= std::time::Duration::from_millis(100) {
        state.last_txn_sweep = std::time::Instant::now();
        let limit = std::time::Duration::from_secs(state.txn_lifetime_limit_secs as u64);
        crate::server::session::expire_transactions(state, limit);
    }
    let cmd = body.keys().next().cloned().unwrap_or_default();
    if let Ok(lsid) = body.get_document("lsid") {
        state.session_cache.touch(lsid);
    }
    let db = match body.get("$db") {
        Some(Bson::String(db)) => db.clone(),
        _ => {
            let e = ServerError::new(
                40414,
                "Location40414",
                "BSON field '$db' is missing but a required field",
            );
            return Execution::Done(finish(state, Err(e), None));
        }
    };
    if cmd == "getMore" {
        return match read::get_more(state, &db, body, final_attempt) {
            Ok(Some(reply)) => Execution::Done(finish(state, Ok(reply), None)),
            Ok(None) => Execution::Wait {
                seen: state.capped_appends,
            },
            Err(e) => Execution::Done(finish(state, Err(e), None)),
        };
    }
    let txn_number = body.get("txnNumber").and_then(as_i64);
    let autocommit = body
        .get("autocommit")
        .map(|a| matches!(a, Bson::Boolean(true)));
    let session = lsid_key(body);
    let (reply, op_time) = match (txn_number, autocommit, session) {
        (Some(n), Some(false), Some((key, id))) => {
            in_transaction(state, info, &db, &cmd, body, connection_id, n, key, id)
        }
        (Some(n), None, Some((key, id))) => {
            retryable(state, info, &db, &cmd, body, connection_id, n, key, id)
        }
        (Some(_), _, None) => (
            Err(ServerError::invalid_options(
                "Transaction numbers require a session (lsid)",
            )),
            None,
        ),
        _ => {
            if cmd == "commitTransaction" || cmd == "abortTransaction" {
                (
                    Err(ServerError::invalid_options(format!(
                        "'{cmd}' requires a transaction number and autocommit: false"
                    ))),
                    None,
                )
            } else {
                let mut ctx = Ctx::new(state, &db);
                let r = run(&mut ctx, info, &cmd, body, connection_id);
                let t = ctx.last_op;
                (r, t)
            }
        }
    };
    Execution::Done(finish(state, reply, op_time))
}

#[allow(clippy::too_many_arguments)]
fn retryable(
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
        return (Err(ServerError::new(50768, "NotARetryableWriteCommand", format!("txnNumber may only be provided for multi-document transactions and retryable write commands. autocommit:false was not provided, and {cmd} is not a retryable write command."))), None);
    }
    let session = state.sessions.entry(key.clone()).or_default();
    if let Some(active) = session.active_txn {
        if n < active {
            return (Err(ServerError::new(225, "TransactionTooOld", format!("Cannot start transaction {n} on session because a newer transaction {active} has already started."))), None);
        }
        if n == active {
            if let Some((num, reply)) = &session.retry_reply {
                if *num == n {
                    return (Ok(Reply::Doc(reply.clone())), None);
                }
            }
            if !matches!(session.state, TxnPhase::RetryableWrite) {
                return (Err(ServerError::new(217, "IncompleteTransactionHistory", "Incomplete history detected for transaction number; the transaction number was used by a transaction")), None);
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
    ServerError::new(251, "NoSuchTransaction", msg)
}

#[allow(clippy::too_many_arguments)]
fn in_transaction(
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
            return Err(ServerError::new(225, "TransactionTooOld", format!("Cannot start transaction {n} on session because a newer transaction {} has already started.", active.unwrap())));
        }
        if start {
            if active == Some(n) {
                return Err(ServerError::new(117, "ConflictingOperationInProgress", "Only servers in a sharded cluster can start a new transaction at the active transaction number"));
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
                    256,
                    "TransactionCommitted",
                    format!("Transaction {n} has been committed."),
                ))
            }
            (TxnPhase::Aborted, _) => {
                return Err(ServerError::new(
                    251,
                    "NoSuchTransaction",
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
                let session: &mut Session = state.sessions.get_mut(&key).unwrap();
                match r {
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

fn admin_only(ctx: &Ctx, cmd: &str) -> ServerResult<()> {
    if ctx.db != "admin" {
        return Err(ServerError::new(
            13,
            "Unauthorized",
            format!("{cmd} may only be run against the admin database."),
        ));
    }
    Ok(())
}

fn run(
    ctx: &mut Ctx,
    info: &ServerInfo,
    cmd: &str,
    body: &Command,
    conn: i64,
) -> ServerResult<Reply> {
    let collated = matches!(
        cmd,
        "find" | "count" | "distinct" | "aggregate" | "findAndModify" | "findandmodify"
    );
    let _collation =
        crate::server::query::collation::scope(body.get("collation").filter(|_| collated))?;
    match cmd {
        "hello" | "isMaster" | "ismaster" => admin::hello(ctx.state, info, body, conn),
        "ping" => Ok(Reply::Doc(Document::new())),
        "buildInfo" | "buildinfo" => Ok(admin::build_info()),
        "serverStatus" => Ok(admin::server_status(ctx.state, info)),
        "replSetGetStatus" => {
            admin_only(ctx, cmd)?;
            Ok(admin::repl_set_get_status(ctx.state, info))
        }
        "replSetInitiate" => Err(ServerError::new(
            23,
            "AlreadyInitialized",
            "already initialized",
        )),
        "getParameter" => {
            admin_only(ctx, cmd)?;
            admin::get_parameter(ctx.state, info, body)
        }
        "setParameter" => {
            admin_only(ctx, cmd)?;
            admin::set_parameter(ctx.state, body)
        }
        "getCmdLineOpts" => {
            admin_only(ctx, cmd)?;
            Ok(admin::get_cmd_line_opts(info))
        }
        "configureFailPoint" if info.test_commands => {
            admin_only(ctx, cmd)?;
            Ok(Reply::Doc(info.fail_points.lock().configure(body)?))
        }
        "connectionStatus" => Ok(Reply::Doc(
            doc! {"authInfo": {"authenticatedUsers": [], "authenticatedUserRoles": []}},
        )),
        // No authentication, so no users (createUser is not implemented).
        "usersInfo" => Ok(Reply::Doc(doc! {"users": Vec::<Bson>::new()})),
        "whatsmyuri" => Ok(Reply::Doc(doc! {"you": "127.0.0.1:0"})),
        "startSession" => Ok(Reply::Doc(
            doc! {"id": {"id": bson::Uuid::new()}, "timeoutMinutes": 30},
        )),
        "endSessions" | "killSessions" => {
            if let Ok(ids) = body.get_array(cmd) {
                for id in ids.iter().filter_map(|d| d.as_document()) {
                    let key = match id.get("id") {
                        Some(Bson::Binary(b)) => b.bytes.clone(),
                        Some(other) => other.to_string().into_bytes(),
                        None => continue,
                    };
                    ctx.state.sessions.remove(&key);
                    ctx.state.session_cache.end(&key);
                }
            }
            Ok(Reply::Doc(Document::new()))
        }
        "killAllSessions" => admin::kill_all_sessions(ctx.state, body),
        "listDatabases" => {
            admin_only(ctx, cmd)?;
            catalog::list_databases(ctx, body)
        }
        "listCollections" => catalog::list_collections(ctx, body),
        "listIndexes" => catalog::list_indexes(ctx, body),
        "create" => catalog::create(ctx, body),
        "drop" => catalog::drop(ctx, body),
        "dropDatabase" => catalog::drop_database(ctx, body),
        "renameCollection" => catalog::rename_collection(ctx, body),
        "createIndexes" => catalog::create_indexes(ctx, body),
        "dropIndexes" | "deleteIndexes" => catalog::drop_indexes(ctx, body),
        "insert" => write::insert(ctx, body, body.raw_documents.as_deref()).map(Reply::Doc),
        "update" => write::update(ctx, body).map(Reply::Doc),
        "delete" => write::delete(ctx, body).map(Reply::Doc),
        "findAndModify" | "findandmodify" => write::find_and_modify(ctx, body).map(Reply::Doc),
        "find" => read::find(ctx, body),
        "killCursors" => read::kill_cursors(ctx.state, body),
        "explain" => explain::explain(ctx, info, body),
        "validate" => validate::validate(ctx, body),
        "count" => read::count(ctx, body),
        "distinct" => read::distinct(ctx, body),
        "aggregate" => read::aggregate(ctx, body),
        "commitTransaction" | "abortTransaction" => Err(ServerError::invalid_options(format!(
            "'{cmd}' requires a transaction"
        ))),
        other => Err(ServerError::command_not_found(other)),
    }
}
