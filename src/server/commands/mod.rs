//! Command dispatch: session and transaction rules around every command, then the command.

mod admin;
mod catalog;
mod coll_stats;
mod ctx;
mod explain;
mod hint;
mod out;
mod read;
mod transaction;
mod util;
mod validate;
mod vars;
mod write;

pub use admin::{MAX_WIRE_VERSION, VERSION};

use crate::server::error::{ServerError, ServerResult};
use crate::server::error_codes::ErrorCode;
use crate::server::state::State;
use crate::server::wire::Command;
use crate::server::ServerInfo;
use bson::{doc, Binary, Bson, Document, RawDocumentBuf, Timestamp};
use ctx::Ctx;
use util::as_i64;

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
            &ServerError::new(ErrorCode::InternalError, e.to_string()).to_document(),
        )
        .unwrap()
    })
}

/// How a request is to be run (decided under the state lock by [`detach_read`]).
pub enum Detach {
    /// Under the lock, by [`execute`].
    Locked,
    /// By [`execute`] on this detached view, without the lock; then [`reattach`] it.
    View(Box<State>),
    /// Answered already (a snapshot read that cannot be served).
    Reply(RawDocumentBuf),
}

use crate::server::read_concern::level as read_concern_level;

/// Reads run on a copy of the catalog taken under the lock and are evaluated without it, so a
/// long scan never holds up other clients (mongod's reads yield their locks likewise). A read
/// with `readConcern: {level: "snapshot"}` runs on the version of the catalog at its
/// `atClusterTime` (or at the latest time, which the reply then names). Transactions and
/// retryable writes keep the lock: they live in the session table.
/// `$listLocalSessions` reads the session cache, which only the server's own state holds.
fn lists_sessions(body: &Command) -> bool {
    body.get_array("pipeline")
        .ok()
        .and_then(|p| p.first())
        .and_then(|s| s.as_document())
        .is_some_and(|s| s.contains_key("$listLocalSessions"))
}

pub fn detach_read(state: &mut State, body: &Command) -> Detach {
    // Every request comes here first, under the lock: the session cache sees every session.
    if let Ok(lsid) = body.get_document("lsid") {
        state.session_cache.touch(lsid);
    }
    let cmd = body.keys().next().map(String::as_str).unwrap_or_default();
    if !matches!(cmd, "find" | "aggregate" | "count" | "distinct" | "getMore")
        || body.contains_key("txnNumber")
        || body.contains_key("autocommit")
    {
        return Detach::Locked;
    }
    if cmd == "aggregate" && (aggregate_writes(body) || lists_sessions(body)) {
        return Detach::Locked;
    }
    if cmd == "getMore" {
        // A getMore opens no cursor, so the cap below does not concern it.
        let Some(id) = body.get("getMore").and_then(as_i64) else {
            return Detach::Locked;
        };
        let Some(cursor) = state.cursors.pin(id) else {
            return Detach::Locked;
        };
        // A majority cursor reads at the commit point on each getMore (its newest version).
        let catalog = match cursor.majority {
            true => state
                .majority_catalog()
                .unwrap_or_else(|_| state.dbs.clone()),
            false => state.dbs.clone(),
        };
        let mut view = state.read_view(catalog, None);
        view.read_majority = cursor.majority;
        view.pinned_cursor = Some(id);
        view.cursors.hold(id, cursor);
        return Detach::View(Box::new(view));
    }
    if state.cursors.len() >= crate::server::cursor_table::MAX_OPEN_CURSORS {
        return Detach::Locked; // the cap is checked against the server's own table
    }
    let db = match body.get("$db") {
        Some(Bson::String(db)) => db.clone(),
        _ => return Detach::Locked,
    };
    if read_concern_level(body) == Some("majority") {
        return match state.majority_catalog() {
            Ok(catalog) => {
                let mut view = state.read_view(catalog, None);
                view.read_majority = true;
                Detach::View(Box::new(view))
            }
            Err(e) => Detach::Reply(finish(state, Err(e), None)),
        };
    }
    if read_concern_level(body) != Some("snapshot") {
        return Detach::View(Box::new(state.read_view(state.dbs.clone(), None)));
    }
    if cmd == "count" {
        return Detach::Locked; // refused by `execute`, as mongod refuses it
    }
    let snapshot =
        (|| -> ServerResult<State> {
            let now = state.clock.last();
            let at =
                match body
                    .get_document("readConcern")
                    .ok()
                    .and_then(|rc| rc.get("atClusterTime"))
                {
                    None => now,
                    Some(Bson::Timestamp(ts)) => *ts,
                    Some(_) => return Err(ServerError::type_mismatch(
                        "BSON field 'atClusterTime' is the wrong type, expected type 'timestamp'",
                    )),
                };
            let catalog = state.history.at(at, now)?;
            let coll = match body.get(cmd) {
                Some(Bson::String(c)) => Some(c.as_str()),
                _ => None,
            };
            if let Some(c) = coll.and_then(|c| catalog.get(&db).and_then(|d| d.get(c))) {
                if c.capped.is_some() {
                    return Err(ServerError::new(ErrorCode::SnapshotUnavailable,
                    "Reading from capped collections with readConcern snapshot is not supported",
                ));
                }
            }
            Ok(state.read_view(catalog.as_ref().clone(), Some(at)))
        })();
    match snapshot {
        Ok(view) => Detach::View(Box::new(view)),
        Err(e) => Detach::Reply(finish(state, Err(e), None)),
    }
}

/// Whether an aggregate pipeline writes (`$out`, `$merge`): it then runs under the lock.
fn aggregate_writes(body: &Document) -> bool {
    body.get_array("pipeline").is_ok_and(|stages| {
        stages.iter().any(|s| {
            s.as_document()
                .and_then(|d| d.keys().next())
                .is_some_and(|k| k == "$out" || k == "$merge")
        })
    })
}

/// Moves the cursors a detached read left open into the server's state.
pub fn reattach(state: &mut State, view: State) {
    state.cursors.adopt(view.cursors, view.pinned_cursor);
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
    let db = match body.get("$db") {
        Some(Bson::String(db)) => db.clone(),
        _ => {
            let e = ServerError::new(
                ErrorCode::IDLFailedToParse,
                "BSON field '$db' is missing but a required field",
            );
            return Execution::Done(finish(state, Err(e), None));
        }
    };
    if cmd == "getMore" {
        return match read::get_more(state, &db, body, final_attempt) {
            // A majority cursor's getMores read at the commit point, their operationTime.
            Ok(Some((reply, majority))) => {
                let op_time = majority.then(|| state.majority_point().ts);
                Execution::Done(finish(state, Ok(reply), op_time))
            }
            Ok(None) => Execution::Wait {
                seen: state.capped_appends,
            },
            Err(e) => Execution::Done(finish(state, Err(e), None)),
        };
    }
    let txn_number = body.get("txnNumber").and_then(as_i64);
    if read_concern_level(body) == Some("snapshot")
        && state.read_at.is_none()
        && !body.contains_key("autocommit")
    {
        // Snapshot reads outside transactions are only find, aggregate and distinct, and they
        // are served by `detach_read`; anything else reaching here is refused, as mongod does.
        let e = ServerError::invalid_options(format!(
            "Command {cmd} does not support {{ readConcern: {{ level: \"snapshot\", provenance: \"clientSupplied\" }} }} :: caused by :: read concern not supported"
        ));
        return Execution::Done(finish(state, Err(e), None));
    }
    let autocommit = body
        .get("autocommit")
        .map(|a| matches!(a, Bson::Boolean(true)));
    let session = transaction::lsid_key(body);
    let (reply, op_time) = match (txn_number, autocommit, session) {
        (Some(n), Some(false), Some((key, id))) => {
            transaction::in_transaction(state, info, &db, &cmd, body, connection_id, n, key, id)
        }
        (Some(n), None, Some((key, id))) => {
            transaction::retryable(state, info, &db, &cmd, body, connection_id, n, key, id)
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
                // A read at majority (it wrote nothing) reports the commit point it read at,
                // as mongod's computeOperationTime does.
                let t = t.or_else(|| {
                    (read_concern_level(body) == Some("majority"))
                        .then(|| ctx.state.majority_point().ts)
                });
                (r, t)
            }
        }
    };
    Execution::Done(finish(state, reply, op_time))
}

fn admin_only(ctx: &Ctx, cmd: &str) -> ServerResult<()> {
    if ctx.db != "admin" {
        return Err(ServerError::new(
            ErrorCode::Unauthorized,
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
            ErrorCode::AlreadyInitialized,
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
        "collMod" => catalog::coll_mod(ctx, body),
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
        "killCursors" => read::kill_cursors(ctx.state, &ctx.db, body),
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
