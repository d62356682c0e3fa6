//! hello/isMaster, ping, buildInfo, serverStatus, replSetGetStatus and friends.

use super::Reply;
use crate::server::error::{ServerError, ServerResult};
use crate::server::oplog_writer::TERM;
use crate::server::session::TxnPhase;
use crate::server::state::State;
use crate::server::ServerInfo;
use bson::{doc, oid::ObjectId, Bson, DateTime, Document};

pub const VERSION: &str = "7.0.14";
pub const MAX_WIRE_VERSION: i32 = 21;
pub const MAX_BSON_OBJECT_SIZE: i32 = 16 * 1024 * 1024;

/// `electionId` for the current term: 0x7fffffff followed by the term, as OID::fromTerm builds it.
fn election_id() -> ObjectId {
    let mut bytes = [0u8; 12];
    bytes[0..4].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    bytes[4..12].copy_from_slice(&TERM.to_be_bytes());
    ObjectId::from_bytes(bytes)
}

fn op_time(state: &State) -> Document {
    doc! {"ts": state.last_write.0, "t": TERM}
}

/// The majority commit point as an optime.
fn majority_op_time(state: &State) -> Document {
    doc! {"ts": state.majority_point().ts, "t": TERM}
}

/// `hello`'s write dates: the optime's seconds (mongod passes `getTimestamp().getSecs()`).
fn date_of(ts: bson::Timestamp) -> DateTime {
    DateTime::from_millis(ts.time as i64 * 1000)
}

/// `hello`'s `lastWrite`.
fn last_write(state: &State) -> Document {
    doc! {
        "opTime": op_time(state), "lastWriteDate": date_of(state.last_write.0),
        "majorityOpTime": majority_op_time(state),
        "majorityWriteDate": date_of(state.majority_point().ts),
    }
}

pub fn hello(
    state: &State,
    info: &ServerInfo,
    body: &Document,
    connection_id: i64,
) -> ServerResult<Reply> {
    let cmd = body.keys().next().map(|k| k.as_str()).unwrap_or("hello");
    let me = info.address.clone();
    let mut d = doc! {
        "topologyVersion": {"processId": info.process_id, "counter": 0i64},
        "hosts": [me.clone()],
        "setName": info.replset.clone(),
        "setVersion": 1,
    };
    if cmd == "hello" {
        d.insert("isWritablePrimary", true);
    } else {
        d.insert("ismaster", true);
    }
    d.extend(doc! {
        "secondary": false,
        "primary": me.clone(),
        "me": me,
        "electionId": election_id(),
        "lastWrite": last_write(state),
        "maxBsonObjectSize": MAX_BSON_OBJECT_SIZE,
        "maxMessageSizeBytes": crate::server::wire::MAX_MESSAGE_SIZE as i32,
        "maxWriteBatchSize": 100_000,
        "localTime": DateTime::now(),
        "logicalSessionTimeoutMinutes": 30,
        "connectionId": connection_id as i32,
        "minWireVersion": 0,
        "maxWireVersion": MAX_WIRE_VERSION,
        "readOnly": false,
    });
    if body.contains_key("helloOk") {
        d.insert("helloOk", true);
    }
    Ok(Reply::Doc(d))
}

pub fn build_info() -> Reply {
    Reply::Doc(doc! {
        "version": VERSION,
        "gitVersion": "0000000000000000000000000000000000000000",
        "modules": Vec::<String>::new(),
        "allocator": "system",
        "javascriptEngine": "none",
        "sysInfo": "deprecated",
        "versionArray": [7, 0, 14, 0],
        "openssl": {"running": "disabled", "compiled": "disabled"},
        "bits": 64,
        "debug": false,
        "maxBsonObjectSize": MAX_BSON_OBJECT_SIZE,
        "storageEngines": ["inMemory"],
    })
}

pub fn server_status(state: &State, info: &ServerInfo) -> Reply {
    let uptime = info.started.elapsed();
    Reply::Doc(doc! {
        "host": info.address.clone(),
        "version": VERSION,
        "process": "mongod",
        "pid": std::process::id() as i64,
        "uptime": uptime.as_secs_f64().floor(),
        "uptimeMillis": uptime.as_millis() as i64,
        "uptimeEstimate": uptime.as_secs() as i64,
        "localTime": DateTime::now(),
        "connections": {
            "current": info.connections.load(std::sync::atomic::Ordering::Relaxed) as i32,
            "available": 1_000_000,
            "totalCreated": info.total_connections.load(std::sync::atomic::Ordering::Relaxed) as i32,
        },
        "repl": {
            "setName": info.replset.clone(), "isWritablePrimary": true, "secondary": false,
            "primary": info.address.clone(), "me": info.address.clone(), "hosts": [info.address.clone()],
        },
        "storageEngine": {"name": "inMemory"},
        "metrics": {"cursor": {
            "timedOut": state.cursors.timed_out as i64,
            "totalOpened": state.cursors.total_opened as i64,
            "open": {
                "noTimeout": state.cursors.no_timeout_count() as i64,
                "total": state.cursors.len() as i64,
            },
        }},
    })
}

pub fn repl_set_get_status(state: &State, info: &ServerInfo) -> Reply {
    let (ts, wall) = state.last_write;
    let optime = op_time(state);
    // The commit point (lastCommitted) and the snapshot majority reads use (readConcernMajority)
    // are one point here: both held by `hold_majority`.
    let committed = majority_op_time(state);
    let committed_wall = state.majority_point().wall;
    Reply::Doc(doc! {
        "set": info.replset.clone(),
        "date": DateTime::now(),
        "myState": 1,
        "term": TERM,
        "syncSourceHost": "",
        "syncSourceId": -1,
        "heartbeatIntervalMillis": 2000i64,
        "majorityVoteCount": 1,
        "writeMajorityCount": 1,
        "votingMembersCount": 1,
        "writableVotingMembersCount": 1,
        "optimes": {
            "lastCommittedOpTime": committed.clone(), "lastCommittedWallTime": committed_wall,
            "readConcernMajorityOpTime": committed, "readConcernMajorityWallTime": committed_wall,
            "appliedOpTime": optime.clone(), "durableOpTime": optime.clone(),
            "lastAppliedWallTime": wall, "lastDurableWallTime": wall,
        },
        "members": [{
            "_id": 0, "name": info.address.clone(), "health": 1.0, "state": 1, "stateStr": "PRIMARY",
            "uptime": info.started.elapsed().as_secs() as i32, "optime": optime, "optimeDate": DateTime::from_millis(ts.time as i64 * 1000),
            "lastAppliedWallTime": wall, "lastDurableWallTime": wall,
            "syncSourceHost": "", "syncSourceId": -1, "infoMessage": "",
            "electionTime": bson::Timestamp { time: info.started_unix, increment: 1 },
            "electionDate": DateTime::from_millis(info.started_unix as i64 * 1000),
            "configVersion": 1, "configTerm": TERM as i32, "self": true, "lastHeartbeatMessage": "",
        }],
    })
}

/// The options the server runs with, shaped like mongod's (`argv` is the equivalent `mmm serve`
/// command line, `parsed` the options as mongod's configuration file would name them).
pub fn get_cmd_line_opts(info: &ServerInfo) -> Reply {
    let (host, port) = info
        .address
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse::<i32>().unwrap_or(0)))
        .unwrap_or_default();
    let mut argv = vec![
        "mmm".to_string(),
        "serve".into(),
        "--host".into(),
        host.clone(),
        "--port".into(),
        port.to_string(),
        "--replset".into(),
        info.replset.clone(),
    ];
    let mut parsed = doc! {
        "net": {"bindIp": host, "port": port},
        "replication": {"replSet": info.replset.clone()},
        "storage": {"engine": "inMemory"},
    };
    if info.test_commands {
        parsed.insert("setParameter", doc! {"enableTestCommands": "1"});
    } else {
        argv.push("--no-test-commands".into());
    }
    Reply::Doc(doc! {"argv": argv, "parsed": parsed})
}

pub fn get_parameter(state: &State, info: &ServerInfo, body: &Document) -> ServerResult<Reply> {
    let mut d = Document::new();
    let all = matches!(body.get("getParameter"), Some(bson::Bson::String(s)) if s == "*");
    if all || body.contains_key("enableTestCommands") {
        d.insert("enableTestCommands", info.test_commands);
    }
    if all || body.contains_key("featureCompatibilityVersion") {
        d.insert("featureCompatibilityVersion", doc! {"version": "7.0"});
    }
    if all || body.contains_key("transactionLifetimeLimitSeconds") {
        d.insert(
            "transactionLifetimeLimitSeconds",
            state.txn_lifetime_limit_secs as i32,
        );
    }
    if all || body.contains_key("minSnapshotHistoryWindowInSeconds") {
        d.insert(
            "minSnapshotHistoryWindowInSeconds",
            state.history.window_secs as i32,
        );
    }
    if all || body.contains_key("cursorTimeoutMillis") {
        d.insert(
            "cursorTimeoutMillis",
            state.cursors.timeout.as_millis() as i64,
        );
    }
    if d.is_empty() {
        return Err(ServerError::invalid_options("no option found to get"));
    }
    Ok(Reply::Doc(d))
}

/// `{killAllSessions: [users]}`: aborts the open transactions of every session (`[]`: of all
/// users; sessions here belong to no user, so a non-empty list matches none). The sessions and
/// their retryable-write history stay, as in mongod.
pub fn kill_all_sessions(state: &mut State, body: &Document) -> ServerResult<Reply> {
    let users = body
        .get_array("killAllSessions")
        .map_err(|_| ServerError::type_mismatch("killAllSessions must be an array of users"))?;
    if users.is_empty() {
        for session in state.sessions.values_mut() {
            if matches!(session.state, TxnPhase::InProgress(_)) {
                session.state = TxnPhase::Aborted;
            }
        }
    }
    Ok(Reply::Doc(Document::new()))
}

/// `{setParameter: 1, <name>: <value>}` for the parameters this server has; replies `{was}`.
/// An integer server parameter (a double is truncated, as mongod does), at least `min` and at
/// most `i32::MAX`.
fn int_parameter(name: &str, value: &Bson, min: i64) -> ServerResult<i64> {
    let n = match value {
        Bson::Int32(i) => *i as i64,
        Bson::Int64(i) => *i,
        Bson::Double(f) => *f as i64,
        _ => {
            return Err(ServerError::bad_value(format!("{name} must be a number")));
        }
    };
    if n < min || n > i32::MAX as i64 {
        return Err(ServerError::bad_value(format!(
            "Invalid value for parameter {name}: {n} is not greater than or equal to {min}"
        )));
    }
    Ok(n)
}

pub fn set_parameter(state: &mut State, body: &Document) -> ServerResult<Reply> {
    let mut was = None;
    for (name, value) in body.iter().skip(1) {
        if name.starts_with('$') || matches!(name.as_str(), "lsid" | "comment" | "$clusterTime") {
            continue;
        }
        match name.as_str() {
            "transactionLifetimeLimitSeconds" => {
                let secs = int_parameter("transactionLifetimeLimitSeconds", value, 1)?;
                was = Some(Bson::Int32(state.txn_lifetime_limit_secs as i32));
                state.txn_lifetime_limit_secs = secs;
            }
            "minSnapshotHistoryWindowInSeconds" => {
                let secs = int_parameter("minSnapshotHistoryWindowInSeconds", value, 0)?;
                was = Some(Bson::Int32(state.history.window_secs as i32));
                state.history.window_secs = secs;
            }
            "cursorTimeoutMillis" => {
                let ms = int_parameter("cursorTimeoutMillis", value, 0)?;
                was = Some(Bson::Int64(state.cursors.timeout.as_millis() as i64));
                state.cursors.timeout = std::time::Duration::from_millis(ms as u64);
            }
            other => {
                return Err(ServerError::invalid_options(format!(
                "attempted to set unrecognized parameter [{other}], use help:true to see options "
            )))
            }
        }
    }
    match was {
        Some(w) => Ok(Reply::Doc(doc! {"was": w})),
        None => Err(ServerError::invalid_options(
            "no option found to set, use help:true to see options ",
        )),
    }
}
