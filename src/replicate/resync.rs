//! Starting one link over after its position was lost (the source's oplog rolled over past its
//! checkpoint): the link's checkpoint on its destination is replaced by a fresh "initial sync in
//! progress" state at the source's newest oplog position. The next run of the link copies the
//! source's documents again and follows the oplog from that position (see `initial_sync`).
//! Nothing else is touched: other links keep their checkpoints, even on the same server.

use super::initial_sync;
use super::runtime::anchor;
use super::session::require_replica_set;
use super::topology::{LinkSpec, ServerSpec};
use crate::apply::{Applier, Plan};
use crate::store::{self, Checkpoint};
use crate::tail::TailError;
use bson::Timestamp;
use mongodb::options::ClientOptions;
use mongodb::Client;

/// Replaces `spec`'s checkpoint with a fresh initial sync; returns the source position the
/// link will follow on from. The link must not be running meanwhile. `mirror`: the copy also
/// deletes the destination's documents the source does not have (in the copied namespaces).
pub async fn resync(
    spec: &LinkSpec,
    src: &ServerSpec,
    dst: &ServerSpec,
    src_options: ClientOptions,
    dst_options: ClientOptions,
    mirror: bool,
) -> Result<Timestamp, String> {
    let src_client = Client::with_options(src_options).map_err(|e| e.to_string())?;
    let dst_client = Client::with_options(dst_options).map_err(|e| e.to_string())?;
    require_replica_set(&src_client, src)
        .await
        .map_err(|e| e.to_string())?;
    require_replica_set(&dst_client, dst)
        .await
        .map_err(|e| e.to_string())?;
    store::ensure_collection(&dst_client, store::CHECKPOINTS)
        .await
        .map_err(|e| e.to_string())?;
    let applier = Applier::new(dst_client, &spec.id());
    let old = applier.read_checkpoint().await.map_err(|e| e.to_string())?;
    let fields = super::topology::fields_ns(std::slice::from_ref(spec), &spec.src);
    let (start, _, clock) = anchor(&src_client, &src.id, &fields)
        .await
        .map_err(|e| e.to_string())?;
    let base = Checkpoint {
        link: spec.id(),
        origin: src.id.clone(),
        src: src.id.clone(),
        ts: start,
        applied: start,
        // The running totals describe the link's whole life: kept.
        ops_applied: old.as_ref().map_or(0, |c| c.ops_applied),
        conflicts: old.as_ref().map_or(0, |c| c.conflicts),
        rejected: old.as_ref().map_or(0, |c| c.rejected),
        pending_ddl: None,
        initial_sync: None,
        src_clock: Some(clock),
        writer_know: None,
        seen: None,
        seen_covers_rows: false,
    };
    let mut fresh = initial_sync::fresh(base, start);
    if let Some(progress) = fresh.initial_sync.as_mut() {
        progress.mirror = mirror;
    }
    applier
        .apply(&Plan::default(), &fresh)
        .await
        .map_err(|e| e.to_string())?;
    log::info!(target: "mmm",
        "link {}: starts over with an initial sync from Timestamp({}, {}) at its next run",
        spec.id(), start.time, start.increment
    );
    Ok(start)
}

/// What a link whose checkpoint fell off its source's oplog says, naming the remedy.
pub fn rollover_message(link: &str, error: &TailError) -> String {
    match error {
        TailError::Rollover {
            checkpoint,
            oldest,
            server,
        } => format!(
            "its checkpoint Timestamp({}, {}) is no longer in the oplog of {server} (the oldest entry is \
             Timestamp({}, {})): the writes between them cannot be replicated. Start this link over with \
             `mmm resync '{link}'` (Replicator.resync): it copies the source's documents again, then follows \
             the oplog from there",
            checkpoint.time, checkpoint.increment, oldest.time, oldest.increment
        ),
        other => other.to_string(),
    }
}
