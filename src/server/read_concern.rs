//! `readConcern.afterClusterTime`: a read waits until the data it reads includes that time. On a
//! one-member set every write is applied when acknowledged, so a `local` read never waits; a
//! `majority` read waits for the majority commit point to reach the time (it only lags while
//! held). A time later than the server's cluster time is refused, as mongod refuses it.

use crate::server::clock::ts_to_u64;
use crate::server::error::{ServerError, ServerResult};
use crate::server::error_codes::ErrorCode;
use crate::server::write_concern::max_time;
use crate::server::Shared;
use bson::{Bson, Document, Timestamp};
use std::time::Instant;

/// `readConcern.level` of a command.
pub fn level(body: &Document) -> Option<&str> {
    body.get_document("readConcern")
        .ok()
        .and_then(|rc| rc.get_str("level").ok())
}

fn after_cluster_time(body: &Document) -> Option<Timestamp> {
    match body
        .get_document("readConcern")
        .ok()?
        .get("afterClusterTime")?
    {
        Bson::Timestamp(ts) => Some(*ts),
        _ => None,
    }
}

fn render(ts: Timestamp) -> String {
    format!("Timestamp({}, {})", ts.time, ts.increment)
}

/// Waits (without the server lock) until `body` may read: an error reply when its
/// `afterClusterTime` is later than the cluster time, or when its `maxTimeMS` (counted from
/// `started`) passes first. Dropping the future ends the wait.
pub async fn wait_for_read_concern(
    shared: &Shared,
    body: &Document,
    started: Instant,
) -> ServerResult<()> {
    let Some(after) = after_cluster_time(body) else {
        return Ok(());
    };
    let now = shared.state.lock().clock.last();
    if ts_to_u64(after) > ts_to_u64(now) {
        return Err(ServerError::invalid_options(format!(
            "readConcern afterClusterTime value must not be greater than the current clusterTime. Requested clusterTime: {}; current clusterTime: {}",
            render(after),
            render(now)
        )));
    }
    if level(body) != Some("majority") {
        return Ok(());
    }
    let target = ts_to_u64(after);
    let mut point = shared.commit_point.subscribe();
    if *point.borrow() >= target {
        return Ok(());
    }
    let reached = point.wait_for(|p| *p >= target);
    match max_time(body).and_then(|d| started.checked_add(d)) {
        Some(at) => match tokio::time::timeout_at(at.into(), reached).await {
            Ok(_) => Ok(()),
            Err(_) => Err(ServerError::new(
                ErrorCode::MaxTimeMSExpired,
                "operation exceeded time limit",
            )),
        },
        None => {
            let _ = reached.await;
            Ok(())
        }
    }
}
