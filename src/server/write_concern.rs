//! Write concerns a single-node replica set cannot satisfy: `w` above its one data-bearing
//! member, or a tag set it does not have. As on mongod, the write itself is done and the reply
//! carries a `writeConcernError` (UnsatisfiableWriteConcern 100, UnknownReplWriteConcern 79).
//!
//! And `w: "majority"`, which waits for the majority commit point to pass the command's
//! operation time (see [`crate::server::majority`]): at once unless the point is held, else
//! until it is released, the `wtimeout` passes (WriteConcernFailed 64, `errInfo.wtimeout`) or
//! the command's `maxTimeMS` does (MaxTimeMSExpired 50). A command that names no `w` gets
//! MongoDB 5.0+'s implicit default, `{w: "majority"}`, and `dropDatabase` always waits for
//! majority (keeping the `wtimeout` it is given), as mongod's does.

use crate::server::clock::ts_to_u64;
use crate::server::error_codes::ErrorCode;
use crate::server::Shared;
use bson::{doc, Bson, Document, RawDocumentBuf};
use std::time::{Duration, Instant};

/// Commands that take a write concern (mongod's `supportsWriteConcern`).
pub fn supports_write_concern(body: &Document, cmd: &str) -> bool {
    match cmd {
        "insert" | "update" | "delete" | "findAndModify" | "findandmodify" | "create" | "drop"
        | "dropDatabase" | "createIndexes" | "dropIndexes" | "deleteIndexes"
        | "renameCollection" | "collMod" | "commitTransaction" | "abortTransaction" => true,
        "aggregate" => body
            .get_array("pipeline")
            .ok()
            .and_then(|p| p.last())
            .and_then(|s| s.as_document())
            .and_then(|s| s.keys().next())
            .is_some_and(|k| k == "$out" || k == "$merge"),
        _ => false,
    }
}

/// The `writeConcernError` for `body`'s write concern, if this server cannot satisfy it.
pub fn unsatisfiable(body: &Document) -> Option<Document> {
    let cmd = body.keys().next()?;
    // Statements inside a transaction wait for the commit's write concern instead.
    let in_txn = body.contains_key("autocommit")
        && !matches!(cmd.as_str(), "commitTransaction" | "abortTransaction");
    if in_txn || !supports_write_concern(body, cmd) {
        return None;
    }
    let wc = body.get_document("writeConcern").ok()?;
    let (code, name, msg) = match wc.get("w")? {
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => {
            let w = match wc.get("w")? {
                Bson::Int32(i) => *i as f64,
                Bson::Int64(i) => *i as f64,
                Bson::Double(d) => *d,
                _ => return None,
            };
            if w <= 1.0 {
                return None;
            }
            (
                100,
                "UnsatisfiableWriteConcern",
                "Not enough data-bearing nodes".to_string(),
            )
        }
        Bson::String(mode) if mode == "majority" => return None,
        Bson::String(mode) => (
            79,
            "UnknownReplWriteConcern",
            format!("No write concern mode named '{mode}' found in replica set configuration"),
        ),
        _ => return None,
    };
    let mut echoed = wc.clone();
    echoed.insert("provenance", "clientSupplied");
    Some(doc! {"code": code, "codeName": name, "errmsg": msg, "errInfo": {"writeConcern": echoed}})
}

/// Adds the `writeConcernError` of an unsatisfiable write concern to `reply`.
pub fn check(body: &Document, reply: &mut RawDocumentBuf) {
    if reply.get("writeConcernError").ok().flatten().is_some() {
        return;
    }
    if let Some(wce) = unsatisfiable(body) {
        if let Ok(raw) = RawDocumentBuf::from_document(&wce) {
            reply.append("writeConcernError", raw);
        }
    }
}

/// How a command waits for the majority commit point.
#[derive(Debug, Clone, PartialEq)]
pub struct MajorityWait {
    /// `wtimeout`; `None`: no limit (absent or 0).
    pub wtimeout: Option<Duration>,
    /// The write concern as used, for `errInfo.writeConcern`.
    pub used: Document,
}

fn millis(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(*i as i64),
        Bson::Int64(i) => Some(*i),
        Bson::Double(d) if d.is_finite() => Some(*d as i64),
        _ => None,
    }
}

/// Whether (and how) `body` waits for the majority commit point after it ran.
pub fn majority_wait(body: &Document) -> Option<MajorityWait> {
    let cmd = body.keys().next()?;
    let in_txn = body.contains_key("autocommit")
        && !matches!(cmd.as_str(), "commitTransaction" | "abortTransaction");
    if in_txn || !supports_write_concern(body, cmd) {
        return None;
    }
    let wc = body.get_document("writeConcern").ok();
    let majority = match wc.and_then(|wc| wc.get("w")) {
        None => true,
        Some(Bson::String(mode)) => mode == "majority",
        // w: 0 asks for no acknowledgement at all.
        Some(w) => cmd == "dropDatabase" && millis(w).is_some_and(|n| n > 0),
    };
    if !majority {
        return None;
    }
    let wtimeout = wc
        .and_then(|wc| wc.get("wtimeout"))
        .and_then(millis)
        .unwrap_or(0);
    let mut used = doc! {"w": "majority"};
    if let Some(j) = wc.and_then(|wc| wc.get("j")) {
        used.insert("j", j.clone());
    }
    used.insert("wtimeout", wtimeout.clamp(0, i32::MAX as i64) as i32);
    let explicit = wc.is_some_and(|wc| !wc.is_empty());
    used.insert(
        "provenance",
        if explicit {
            "clientSupplied"
        } else {
            "implicitDefault"
        },
    );
    Some(MajorityWait {
        wtimeout: (wtimeout > 0).then(|| Duration::from_millis(wtimeout as u64)),
        used,
    })
}

/// The command's `maxTimeMS`, if it sets one.
pub fn max_time(body: &Document) -> Option<Duration> {
    body.get("maxTimeMS")
        .and_then(millis)
        .filter(|ms| *ms > 0)
        .map(|ms| Duration::from_millis(ms as u64))
}

/// Waits, without the server lock, until the majority commit point reaches the operation time
/// of `reply` when `body` asks for w:majority; adds the `writeConcernError` of a wait cut short
/// by `wtimeout` or `maxTimeMS` (counted from `started`). Dropping the future ends the wait.
pub async fn wait_for_majority(
    shared: &Shared,
    body: &Document,
    reply: &mut RawDocumentBuf,
    started: Instant,
) {
    let Some(wait) = majority_wait(body) else {
        return;
    };
    if reply.get("writeConcernError").ok().flatten().is_some() {
        return;
    }
    let Ok(target) = reply.get_timestamp("operationTime") else {
        return;
    };
    let target = ts_to_u64(target);
    let mut point = shared.commit_point.subscribe();
    if *point.borrow() >= target {
        return;
    }
    // A limit too far away to represent is no limit.
    let wtimeout_at = wait.wtimeout.and_then(|d| Instant::now().checked_add(d));
    let max_time_at = max_time(body).and_then(|d| started.checked_add(d));
    let deadline = match (wtimeout_at, max_time_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let reached = point.wait_for(|p| *p >= target);
    let timed_out = match deadline {
        Some(at) => tokio::time::timeout_at(at.into(), reached).await.is_err(),
        None => {
            let _ = reached.await;
            false
        }
    };
    if !timed_out {
        return;
    }
    let by_wtimeout = match (wtimeout_at, max_time_at) {
        (Some(w), Some(m)) => w <= m,
        (w, _) => w.is_some(),
    };
    let wce = if by_wtimeout {
        doc! {
            "code": ErrorCode::WriteConcernFailed.code(),
            "codeName": ErrorCode::WriteConcernFailed.name(),
            "errmsg": "waiting for replication timed out",
            "errInfo": {"wtimeout": true, "writeConcern": wait.used},
        }
    } else {
        doc! {
            "code": ErrorCode::MaxTimeMSExpired.code(),
            "codeName": ErrorCode::MaxTimeMSExpired.name(),
            "errmsg": "operation exceeded time limit",
            "errInfo": {"writeConcern": wait.used},
        }
    };
    if let Ok(raw) = RawDocumentBuf::from_document(&wce) {
        reply.append("writeConcernError", raw);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_one_node_cannot_do() {
        let w = |w: Bson| doc! {"insert": "c", "writeConcern": {"w": w}};
        assert!(unsatisfiable(&w(Bson::Int32(1))).is_none());
        assert!(unsatisfiable(&w(Bson::Int32(0))).is_none());
        assert!(unsatisfiable(&w(Bson::String("majority".into()))).is_none());
        assert_eq!(
            unsatisfiable(&w(Bson::Int32(2)))
                .unwrap()
                .get_i32("code")
                .unwrap(),
            100
        );
        assert_eq!(
            unsatisfiable(&w(Bson::String("dc".into())))
                .unwrap()
                .get_i32("code")
                .unwrap(),
            79
        );
        assert!(unsatisfiable(&doc! {"find": "c", "writeConcern": {"w": 2}}).is_none());
        let in_txn = doc! {"insert": "c", "autocommit": false, "writeConcern": {"w": 2}};
        assert!(unsatisfiable(&in_txn).is_none());
    }

    #[test]
    fn which_commands_wait_for_majority() {
        let waits = |body: Document| majority_wait(&body);
        // The implicit default write concern is majority (MongoDB 5.0+).
        let implicit = waits(doc! {"insert": "c"}).unwrap();
        assert_eq!(implicit.wtimeout, None);
        assert_eq!(
            implicit.used.get_str("provenance").unwrap(),
            "implicitDefault"
        );
        let explicit =
            waits(doc! {"insert": "c", "writeConcern": {"w": "majority", "wtimeout": 250}})
                .unwrap();
        assert_eq!(explicit.wtimeout, Some(Duration::from_millis(250)));
        assert_eq!(
            explicit.used.get_str("provenance").unwrap(),
            "clientSupplied"
        );
        assert_eq!(explicit.used.get_i32("wtimeout").unwrap(), 250);
        // `w` missing: the default's w, the client's wtimeout.
        let no_w = waits(doc! {"update": "c", "writeConcern": {"wtimeout": 5}}).unwrap();
        assert_eq!(no_w.wtimeout, Some(Duration::from_millis(5)));
        assert!(waits(doc! {"insert": "c", "writeConcern": {"w": 1}}).is_none());
        assert!(waits(doc! {"insert": "c", "writeConcern": {"w": 0}}).is_none());
        assert!(waits(doc! {"find": "c"}).is_none());
        assert!(waits(doc! {"insert": "c", "autocommit": false}).is_none());
        assert!(waits(doc! {"commitTransaction": 1, "autocommit": false}).is_some());
        // dropDatabase waits for majority whatever acknowledged `w` it is given.
        assert!(waits(doc! {"dropDatabase": 1, "writeConcern": {"w": 1}}).is_some());
        assert!(waits(doc! {"dropDatabase": 1, "writeConcern": {"w": 0}}).is_none());
        // Hostile values: no panic, no wait forever from a negative or huge timeout.
        let negative =
            waits(doc! {"insert": "c", "writeConcern": {"w": "majority", "wtimeout": -5}}).unwrap();
        assert_eq!(negative.wtimeout, None);
        let nan = waits(doc! {"insert": "c", "writeConcern": {"wtimeout": f64::NAN}}).unwrap();
        assert_eq!(nan.wtimeout, None);
        assert_eq!(
            max_time(&doc! {"insert": "c", "maxTimeMS": i64::MAX}),
            Some(Duration::from_millis(i64::MAX as u64))
        );
    }
}
