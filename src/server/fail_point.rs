//! Test commands' fail points, as `mongod --setParameter enableTestCommands=1` has them.
//!
//! `configureFailPoint` arms a fail point with a mode (`off`, `alwaysOn`, `{times: n}`,
//! `{skip: n}`, `{activationProbability: p}`) and its `data`. Three fail points exist:
//!
//! - `failCommand`: before a command runs (after its parsing, before sessions and transactions
//!   see it, as in mongod's service entry point) the connection blocks (`blockConnection`,
//!   `blockTimeMS`), is closed (`closeConnection`) or the command fails with `errorCode`; after a
//!   write command ran, `writeConcernError` is added to its reply. `failCommands` names the
//!   commands, `appName` and `namespace` narrow it. `errorLabels` replaces the labels the server
//!   would add (see `error_labels`).
//! - `onPrimaryTransactionalWrite`: a retryable write is rolled back
//!   (`failBeforeCommitExceptionCode`) and/or its connection closed (`closeConnection`, default
//!   true) after it ran. mongod fires it once per statement; here it fires once per command, which
//!   is the same for the one-statement writes drivers retry.
//! - `maxTimeAlwaysTimeOut`: every command with a `maxTimeMS` fails with MaxTimeMSExpired.

use crate::server::error::{ServerError, ServerResult};
use crate::server::error_labels::labels_for;
use crate::server::write_concern::supports_write_concern;
use bson::{doc, Bson, Document, RawDocumentBuf};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const FAIL_COMMAND: &str = "failCommand";
const ON_TRANSACTIONAL_WRITE: &str = "onPrimaryTransactionalWrite";
const MAX_TIME_ALWAYS: &str = "maxTimeAlwaysTimeOut";
const KNOWN: &[&str] = &[FAIL_COMMAND, ON_TRANSACTIONAL_WRITE, MAX_TIME_ALWAYS];

#[derive(Debug, Clone, PartialEq)]
enum Mode {
    Off,
    AlwaysOn,
    Times(i64),
    Skip(i64),
    Probability(f64),
}

#[derive(Debug)]
struct FailPoint {
    mode: Mode,
    data: Document,
    /// How often it fired; `configureFailPoint` answers it as `count`.
    entered: i64,
}

impl FailPoint {
    /// Decides whether one evaluation whose condition held fires, consuming `times`/`skip`.
    fn fire(&mut self) -> bool {
        let fired = match &mut self.mode {
            Mode::Off => false,
            Mode::AlwaysOn => true,
            Mode::Times(n) => {
                *n -= 1;
                if *n <= 0 {
                    self.mode = Mode::Off;
                }
                true
            }
            Mode::Skip(n) => {
                if *n > 0 {
                    *n -= 1;
                    false
                } else {
                    true
                }
            }
            Mode::Probability(p) => rand::random::<f64>() < *p,
        };
        if fired {
            self.entered += 1;
        }
        fired
    }
}

/// The armed fail points of one server.
#[derive(Debug, Default)]
pub struct FailPoints {
    points: HashMap<&'static str, FailPoint>,
    /// Retryable writes (session id, txnNumber) that `onPrimaryTransactionalWrite` let commit.
    committed_writes: HashSet<(Vec<u8>, i64)>,
}

const MAX_REMEMBERED_WRITES: usize = 10_000;

/// The (session id, txnNumber) of a retryable write.
fn write_attempt(body: &Document) -> Option<(Vec<u8>, i64)> {
    let id = match body.get_document("lsid").ok()?.get("id")? {
        Bson::Binary(b) => b.bytes.clone(),
        other => other.to_string().into_bytes(),
    };
    Some((id, body.get("txnNumber").and_then(as_int)?))
}

fn as_int(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(*i as i64),
        Bson::Int64(i) => Some(*i),
        Bson::Double(d) if d.fract() == 0.0 => Some(*d as i64),
        _ => None,
    }
}

fn parse_mode(mode: Option<&Bson>) -> ServerResult<Mode> {
    match mode {
        Some(Bson::String(s)) if s == "off" => Ok(Mode::Off),
        Some(Bson::String(s)) if s == "alwaysOn" => Ok(Mode::AlwaysOn),
        Some(Bson::String(s)) => Err(ServerError::bad_value(format!("unknown mode: {s}"))),
        Some(Bson::Document(d)) => {
            if let Some(v) = d.get("times") {
                let n = as_int(v).ok_or_else(|| {
                    ServerError::type_mismatch("'times' option to 'mode' must be a number")
                })?;
                if n < 0 {
                    return Err(ServerError::bad_value(
                        "'times' option to 'mode' must be positive",
                    ));
                }
                Ok(if n == 0 { Mode::Off } else { Mode::Times(n) })
            } else if let Some(v) = d.get("skip") {
                let n = as_int(v).ok_or_else(|| {
                    ServerError::type_mismatch("'skip' option to 'mode' must be a number")
                })?;
                if n < 0 {
                    return Err(ServerError::bad_value(
                        "'skip' option to 'mode' must be positive",
                    ));
                }
                Ok(Mode::Skip(n))
            } else if let Some(v) = d.get("activationProbability") {
                let p = match v {
                    Bson::Double(f) => *f,
                    other => as_int(other).map(|i| i as f64).ok_or_else(|| {
                        ServerError::type_mismatch(
                            "'activationProbability' option to 'mode' must be a double",
                        )
                    })?,
                };
                if !(0.0..=1.0).contains(&p) {
                    return Err(ServerError::bad_value(
                        "'activationProbability' option to 'mode' must be between 0 and 1",
                    ));
                }
                Ok(Mode::Probability(p))
            } else {
                Err(ServerError::bad_value("'mode' must be one of 'off', 'alwaysOn', 'times', 'skip' and 'activationProbability'"))
            }
        }
        Some(_) => Err(ServerError::type_mismatch(
            "'mode' must be a string or an object",
        )),
        None => Err(ServerError::type_mismatch("Missing mode")),
    }
}

impl FailPoints {
    /// `{configureFailPoint: name, mode, data}`: answers `{count}`, the times it fired so far.
    pub fn configure(&mut self, body: &Document) -> ServerResult<Document> {
        let name = match body.get("configureFailPoint") {
            Some(Bson::String(s)) => s.as_str(),
            _ => {
                return Err(ServerError::type_mismatch(
                    "configureFailPoint must be a string",
                ))
            }
        };
        let Some(name) = KNOWN.iter().copied().find(|k| *k == name) else {
            return Err(ServerError::location(266, format!("{name} not found")));
        };
        let mode = parse_mode(body.get("mode"))?;
        let data = match body.get("data") {
            Some(Bson::Document(d)) => d.clone(),
            None => Document::new(),
            Some(_) => {
                return Err(ServerError::type_mismatch(
                    "the 'data' option must be an object",
                ))
            }
        };
        if name == FAIL_COMMAND && bool_field(&data, "blockConnection") {
            match data.get("blockTimeMS").and_then(as_int) {
                Some(ms) if ms >= 0 => {}
                Some(_) => {
                    return Err(ServerError::invalid_options(
                        "'blockTimeMS' must be non-negative",
                    ))
                }
                None => {
                    return Err(ServerError::invalid_options(
                        "must specify 'blockTimeMS' when 'blockConnection' is true",
                    ))
                }
            }
        }
        let point = self.points.entry(name).or_insert(FailPoint {
            mode: Mode::Off,
            data: Document::new(),
            entered: 0,
        });
        let count = point.entered;
        point.mode = mode;
        point.data = data;
        Ok(doc! {"count": count})
    }

    fn armed(&mut self, name: &str) -> Option<&mut FailPoint> {
        self.points.get_mut(name).filter(|p| p.mode != Mode::Off)
    }

    /// What `failCommand`, `maxTimeAlwaysTimeOut` and `onPrimaryTransactionalWrite` do to `body`
    /// before it runs.
    ///
    /// Not-primary errors carry the server's `topologyVersion` (`process_id`, counter 0), as
    /// mongod's replies do, so drivers see that the topology has not changed.
    pub fn before(
        &mut self,
        body: &Document,
        app_name: Option<&str>,
        process_id: bson::oid::ObjectId,
    ) -> Option<Intercept> {
        let cmd = body.keys().next()?.as_str();
        if cmd == "configureFailPoint" {
            return None; // never failed, even when listed
        }
        let mut intercept = Intercept::default();
        if let Some(fp) = self.armed(FAIL_COMMAND) {
            let data = &fp.data;
            let close = bool_field(data, "closeConnection");
            let block = bool_field(data, "blockConnection");
            let code = data.get("errorCode").and_then(as_int);
            if (close || block || code.is_some())
                && matches_command(data, body, cmd, app_name)
                && fp.fire()
            {
                let data = &fp.data;
                if block {
                    let ms = data.get("blockTimeMS").and_then(as_int).unwrap_or(0).max(0);
                    intercept.block = Some(Duration::from_millis(ms as u64));
                }
                if close {
                    intercept.close = true;
                } else if let Some(code) = code {
                    let mut e = labelled(
                        ServerError::location(
                            code as i32,
                            "Failing command via 'failCommand' failpoint",
                        ),
                        data,
                        body,
                        cmd,
                    );
                    if is_not_primary(e.code) {
                        if let Some(extra) = e.extra.as_mut() {
                            extra.insert(
                                "topologyVersion",
                                doc! {"processId": process_id, "counter": 0i64},
                            );
                        }
                    }
                    intercept.error = Some(e);
                }
                return Some(intercept);
            }
        }
        if body
            .get("maxTimeMS")
            .and_then(as_int)
            .is_some_and(|ms| ms > 0)
        {
            if let Some(fp) = self.armed(MAX_TIME_ALWAYS) {
                if fp.fire() {
                    intercept.error =
                        Some(ServerError::location(50, "operation exceeded time limit"));
                    return Some(intercept);
                }
            }
        }
        if is_retryable_write(body, cmd) {
            // A retry of a write that committed is answered from the session's history and
            // writes nothing, so the fail point (which fires after writes) does not see it.
            let attempt = write_attempt(body);
            if attempt
                .as_ref()
                .is_some_and(|a| self.committed_writes.contains(a))
            {
                return None;
            }
            if let Some(fp) = self.armed(ON_TRANSACTIONAL_WRITE) {
                if fp.fire() {
                    let data = &fp.data;
                    intercept.close_after = data
                        .get("closeConnection")
                        .map(|_| bool_field(data, "closeConnection"))
                        .unwrap_or(true);
                    if let Some(code) = data.get("failBeforeCommitExceptionCode").and_then(as_int) {
                        let e =
                            ServerError::location(code as i32, "Failing write for test purposes");
                        intercept.error = Some(labelled(e, &Document::new(), body, cmd));
                        intercept.close = intercept.close_after;
                    } else if let Some(a) = attempt {
                        if self.committed_writes.len() >= MAX_REMEMBERED_WRITES {
                            self.committed_writes.clear();
                        }
                        self.committed_writes.insert(a);
                    }
                    return Some(intercept);
                }
            }
        }
        None
    }

    /// `failCommand`'s `writeConcernError`, added to the reply of a write command that ran.
    pub fn after(&mut self, body: &Document, app_name: Option<&str>, reply: &mut RawDocumentBuf) {
        let Some(cmd) = body.keys().next().map(|s| s.as_str()) else {
            return;
        };
        if !supports_write_concern(body, cmd)
            || reply.get("writeConcernError").ok().flatten().is_some()
        {
            return;
        }
        let Some(fp) = self.armed(FAIL_COMMAND) else {
            return;
        };
        let Some(Bson::Document(wce)) = fp.data.get("writeConcernError").cloned() else {
            return;
        };
        if !matches_command(&fp.data, body, cmd, app_name) || !fp.fire() {
            return;
        }
        let labels = match fp.data.get("errorLabels") {
            Some(Bson::Array(a)) => a.clone(),
            _ => {
                let wc_code = wce.get("code").and_then(as_int).map(|c| c as i32);
                labels_for(body, cmd, None, wc_code)
                    .into_iter()
                    .map(Bson::String)
                    .collect()
            }
        };
        if let Ok(raw) = RawDocumentBuf::from_document(&wce) {
            reply.append("writeConcernError", raw);
        }
        if !labels.is_empty() && reply.get("errorLabels").ok().flatten().is_none() {
            let mut arr = bson::RawArrayBuf::new();
            for label in labels {
                if let Bson::String(s) = label {
                    arr.push(s.as_str());
                }
            }
            reply.append("errorLabels", arr);
        }
    }
}

/// What a fail point does to one request.
#[derive(Debug, Default)]
pub struct Intercept {
    /// Sleep this long first (the command then runs, unless `error` or `close` say otherwise).
    pub block: Option<Duration>,
    /// Close the connection instead of answering.
    pub close: bool,
    /// Answer this error instead of running the command.
    pub error: Option<ServerError>,
    /// Run the command, then close the connection instead of answering.
    pub close_after: bool,
}

fn bool_field(d: &Document, key: &str) -> bool {
    match d.get(key) {
        Some(Bson::Boolean(b)) => *b,
        Some(v) => as_int(v).is_some_and(|i| i != 0),
        None => false,
    }
}

/// `shouldActivateFailCommandFailPoint`: the command is listed (or `failAllCommands`), and the
/// connection's appName and the command's namespace match when the data names them.
fn matches_command(data: &Document, body: &Document, cmd: &str, app_name: Option<&str>) -> bool {
    if let Some(Bson::String(want)) = data.get("appName") {
        if app_name != Some(want.as_str()) {
            return false;
        }
    }
    if let Some(Bson::String(want)) = data.get("namespace") {
        let db = body.get_str("$db").unwrap_or("");
        let ns = match body.get(cmd) {
            Some(Bson::String(coll)) => format!("{db}.{coll}"),
            _ => db.to_string(),
        };
        if &ns != want {
            return false;
        }
    }
    if data.contains_key("failAllCommands") {
        return true;
    }
    match data.get("failCommands") {
        Some(Bson::Array(names)) => names.iter().any(|n| match n {
            Bson::String(s) => s == cmd || aliases(s).contains(&cmd),
            _ => false,
        }),
        _ => false,
    }
}

fn aliases(name: &str) -> &'static [&'static str] {
    match name {
        "hello" => &["isMaster", "ismaster"],
        "isMaster" | "ismaster" => &["hello", "isMaster", "ismaster"],
        "findAndModify" => &["findandmodify"],
        "findandmodify" => &["findAndModify"],
        "dropIndexes" => &["deleteIndexes"],
        "buildInfo" => &["buildinfo"],
        _ => &[],
    }
}

/// The error with its code name and labels: the fail point's `errorLabels` when it has them,
/// else those mongod's error label builder adds.
fn labelled(e: ServerError, data: &Document, body: &Document, cmd: &str) -> ServerError {
    let labels: Vec<Bson> = match data.get("errorLabels") {
        Some(Bson::Array(a)) => a.clone(),
        _ => labels_for(body, cmd, Some(e.code), None)
            .into_iter()
            .map(Bson::String)
            .collect(),
    };
    let mut extra = Document::new();
    if !labels.is_empty() {
        extra.insert("errorLabels", labels);
    }
    e.with_extra(extra)
}

/// error_codes.yml's `NotPrimaryError` category.
fn is_not_primary(code: i32) -> bool {
    matches!(code, 189 | 10107 | 11602 | 13435 | 13436)
}

fn is_retryable_write(body: &Document, cmd: &str) -> bool {
    body.contains_key("txnNumber")
        && !body.contains_key("autocommit")
        && matches!(
            cmd,
            "insert" | "update" | "delete" | "findAndModify" | "findandmodify"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid() -> bson::oid::ObjectId {
        bson::oid::ObjectId::new()
    }

    fn configure(fps: &mut FailPoints, d: Document) -> ServerResult<Document> {
        fps.configure(&d)
    }

    #[test]
    fn times_and_skip_count_only_matching_commands() {
        let mut fps = FailPoints::default();
        configure(&mut fps, doc! {"configureFailPoint": "failCommand", "mode": {"times": 2}, "data": {"failCommands": ["find"], "errorCode": 91}}).unwrap();
        let find = doc! {"find": "c", "$db": "t"};
        let ping = doc! {"ping": 1, "$db": "t"};
        assert!(fps.before(&ping, None, oid()).is_none());
        assert_eq!(
            fps.before(&find, None, oid()).unwrap().error.unwrap().code,
            91
        );
        assert!(fps.before(&find, None, oid()).is_some());
        assert!(
            fps.before(&find, None, oid()).is_none(),
            "times: 2 is spent"
        );
        let r = configure(&mut fps, doc! {"configureFailPoint": "failCommand", "mode": {"skip": 1}, "data": {"failCommands": ["find"], "closeConnection": true}}).unwrap();
        assert_eq!(r.get_i64("count").unwrap(), 2);
        assert!(fps.before(&find, None, oid()).is_none(), "skipped");
        assert!(fps.before(&find, None, oid()).unwrap().close);
        assert!(fps.before(&find, None, oid()).unwrap().close);
    }

    #[test]
    fn app_name_and_bad_modes() {
        let mut fps = FailPoints::default();
        configure(&mut fps, doc! {"configureFailPoint": "failCommand", "mode": "alwaysOn", "data": {"failCommands": ["find"], "errorCode": 2, "appName": "a"}}).unwrap();
        let find = doc! {"find": "c", "$db": "t"};
        assert!(fps.before(&find, Some("b"), oid()).is_none());
        assert!(fps.before(&find, None, oid()).is_none());
        assert!(fps.before(&find, Some("a"), oid()).is_some());
        for mode in [
            Bson::String("sometimes".into()),
            Bson::Document(doc! {"times": -1}),
            Bson::Int32(1),
        ] {
            assert!(configure(
                &mut fps,
                doc! {"configureFailPoint": "failCommand", "mode": mode}
            )
            .is_err());
        }
        let e = configure(
            &mut fps,
            doc! {"configureFailPoint": "noSuchFailPoint", "mode": "off"},
        )
        .unwrap_err();
        assert_eq!(e.code, 266);
        let e = configure(&mut fps, doc! {"configureFailPoint": "failCommand", "mode": "alwaysOn", "data": {"failCommands": ["find"], "blockConnection": true}}).unwrap_err();
        assert_eq!(e.code, 72);
    }

    #[test]
    fn configure_fail_point_is_never_failed() {
        let mut fps = FailPoints::default();
        configure(&mut fps, doc! {"configureFailPoint": "failCommand", "mode": "alwaysOn", "data": {"failCommands": ["configureFailPoint"], "errorCode": 2}}).unwrap();
        assert!(fps
            .before(
                &doc! {"configureFailPoint": "failCommand", "mode": "off", "$db": "admin"},
                None,
                oid()
            )
            .is_none());
    }
}
