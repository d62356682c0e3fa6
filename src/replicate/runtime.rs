//! What every step of a running link shares: its spec and servers, its status, where events
//! go, the conflict tracker; how a step fails; the batch limits.

use super::conflicts::Conflict;
use super::status::{LinkState, LinkStatus};
use super::topology::{LinkSpec, ServerSpec};
use crate::apply::converge::Resolve;
use crate::apply::{describe, ApplyError, Refusal};
use crate::store::checkpoints::SrcClock;
use crate::store::{Checkpoint, StoreError};
use crate::tail::TailError;
use bson::Timestamp;
use mongodb::options::ClientOptions;
use mongodb::Client;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// A batch closes at this many ops or bytes (or when the tailer has nothing more).
pub const MAX_BATCH_OPS: usize = 5000;
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// The size a link's batches close at: [`MAX_BATCH_OPS`] and [`MAX_BATCH_BYTES`], halved each
/// time the destination ends a batch's transaction for living too long
/// (`transactionLifetimeLimitSeconds`: a slow or loaded server), grown back by an eighth with
/// each full batch applied. Without it such a link would send the same batch for ever.
#[derive(Debug)]
pub struct BatchLimit(AtomicUsize);

impl Default for BatchLimit {
    fn default() -> Self {
        BatchLimit(AtomicUsize::new(MAX_BATCH_OPS))
    }
}

impl BatchLimit {
    pub fn ops(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// The byte limit, in proportion to the op limit.
    pub fn bytes(&self) -> usize {
        (MAX_BATCH_BYTES / MAX_BATCH_OPS * self.ops()).max(64 * 1024)
    }

    /// Halves the limit (one op at the least); returns the new one.
    pub fn shrink(&self) -> usize {
        let now = (self.ops() / 2).max(1);
        self.0.store(now, Ordering::Relaxed);
        now
    }

    /// After a batch of `ops` applied: a full one grows the limit back towards the maximum.
    pub fn applied(&self, ops: usize) {
        let limit = self.ops();
        if ops >= limit && limit < MAX_BATCH_OPS {
            let grown = (limit + (limit / 8).max(1)).min(MAX_BATCH_OPS);
            self.0.store(grown, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Clone)]
pub enum LinkEvent {
    Conflict(Conflict),
    Failed { link: String, error: String },
}

pub struct LinkRuntime {
    pub spec: LinkSpec,
    pub src: ServerSpec,
    pub dst: ServerSpec,
    pub src_options: ClientOptions,
    pub dst_options: ClientOptions,
    pub status: Arc<Mutex<LinkStatus>>,
    pub events: mpsc::UnboundedSender<LinkEvent>,
    /// Resolver functions by namespace pattern (`mmm.Resolver`).
    pub resolvers: HashMap<String, Arc<dyn Resolve>>,
    /// The source's namespaces under the `fields` policy (see [`super::topology::fields_ns`]).
    pub src_fields: crate::apply::observe::FieldsNs,
    /// The destination's.
    pub dst_fields: crate::apply::observe::FieldsNs,
    /// What the link's batches may hold now (kept across its sessions).
    pub batch_limit: BatchLimit,
    /// The destination's turns in this process (`apply/turns.rs`).
    pub dst_turns: crate::apply::turns::Turns,
}

/// Why a link session ended. Only [`LinkFailure::Transient`] is worth another session.
#[derive(Debug)]
pub enum LinkFailure {
    /// Network trouble, a failover, a write conflict: back off and resume from the checkpoint.
    Transient(String),
    /// The destination refused a write.
    Refused(Refusal),
    /// The source cannot be followed (not a replica set, rolled over, an unreadable entry).
    Source(TailError),
    /// An op the link cannot replicate.
    Unreplicable(String),
}

impl LinkFailure {
    pub fn is_transient(&self) -> bool {
        matches!(self, LinkFailure::Transient(_))
    }
}

impl fmt::Display for LinkFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkFailure::Transient(m) | LinkFailure::Unreplicable(m) => f.write_str(m),
            LinkFailure::Refused(r) => r.fmt(f),
            LinkFailure::Source(e) => e.fmt(f),
        }
    }
}

impl From<mongodb::error::Error> for LinkFailure {
    fn from(e: mongodb::error::Error) -> Self {
        // A step that speaks the driver's error type (the initial sync) carries an apply
        // error inside it: a refused write stays a refusal.
        if let Some(applying) = e.get_custom::<ApplyError>() {
            return applying.clone().into();
        }
        LinkFailure::Transient(describe(&e))
    }
}

impl From<StoreError> for LinkFailure {
    fn from(e: StoreError) -> Self {
        LinkFailure::Transient(format!("{}: {}", e.what, describe(&e.source)))
    }
}

impl From<ApplyError> for LinkFailure {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Transient(m) => LinkFailure::Transient(m),
            ApplyError::Refused(r) => LinkFailure::Refused(r),
            ApplyError::Overlong(m) => LinkFailure::Transient(m),
        }
    }
}

impl From<TailError> for LinkFailure {
    fn from(e: TailError) -> Self {
        LinkFailure::Source(e)
    }
}

impl LinkRuntime {
    /// The outcome of applying a batch of `ops` ops, with the batch limit adjusted: a batch
    /// whose transaction the destination ended for living too long halves it (logged), a
    /// full batch applied grows it back.
    pub fn batch_outcome<T>(
        &self,
        outcome: Result<T, ApplyError>,
        ops: usize,
    ) -> Result<T, LinkFailure> {
        match outcome {
            Ok(done) => {
                self.batch_limit.applied(ops);
                Ok(done)
            }
            Err(ApplyError::Overlong(m)) => {
                let now = self.batch_limit.shrink();
                log::warn!(target: "mmm",
                    "link {}: {m}; its batches now hold at most {now} ops", self.spec.id());
                Err(LinkFailure::Transient(m))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The checkpoint to store with a batch of `ops` more operations.
    pub fn checkpoint(
        &self,
        origin: String,
        ts: Timestamp,
        applied: Timestamp,
        ops: usize,
        src_clock: SrcClock,
    ) -> Checkpoint {
        let s = self.status.lock();
        Checkpoint {
            link: self.spec.id(),
            origin,
            src: self.src.id.clone(),
            ts,
            applied,
            ops_applied: s.ops_applied + ops as u64,
            conflicts: s.conflicts,
            rejected: s.rejected,
            pending_ddl: None,
            initial_sync: None,
            src_clock: Some(src_clock),
            writer_know: None,
            seen: None,
            seen_covers_rows: false,
        }
    }

    pub fn set_state(&self, state: LinkState, error: Option<String>) {
        self.status.lock().set_state(state, error);
    }
}

pub fn report_conflict(rt: &LinkRuntime, conflict: Conflict) {
    rt.status.lock().conflicts += 1;
    let _ = rt.events.send(LinkEvent::Conflict(conflict));
}

/// The ts of the newest entry in the oplog of `client`'s server.
pub async fn latest_ts(client: &Client) -> Result<Timestamp, mongodb::error::Error> {
    Ok(crate::apply::observe::newest_entry(client).await?.0)
}

/// Where a link starts reading `src` with no checkpoint: the position its clock was observed
/// at (so that the link's stamps follow on from the ones observation stored), and the clock.
/// Returns (resume after, units handled through, clock).
pub async fn anchor(
    src: &Client,
    src_id: &str,
    fields: &crate::apply::observe::FieldsNs,
) -> Result<(Timestamp, Timestamp, SrcClock), LinkFailure> {
    let mut clock = crate::apply::observe::observe_and_store(src, src_id, fields).await?;
    // A transaction open across the position: wait until it has ended.
    for _ in 0..100 {
        if clock.pos == clock.applied {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        clock = crate::apply::observe::observe_and_store(src, src_id, fields).await?;
    }
    Ok((
        clock.pos,
        clock.applied,
        SrcClock {
            h: clock.h,
            know: clock.know,
        },
    ))
}

/// Stops a watched task (the tailer) when dropped.
pub struct StopOnDrop(pub watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_limit_halves_on_each_overlong_batch_and_full_batches_grow_it_back() {
        let limit = BatchLimit::default();
        assert_eq!(
            (limit.ops(), limit.bytes()),
            (
                MAX_BATCH_OPS,
                MAX_BATCH_BYTES / MAX_BATCH_OPS * MAX_BATCH_OPS
            )
        );
        limit.applied(MAX_BATCH_OPS); // at the maximum already
        assert_eq!(limit.ops(), MAX_BATCH_OPS);
        assert_eq!(limit.shrink(), 2500);
        assert_eq!(limit.shrink(), 1250);
        limit.applied(10); // a small batch says nothing about a full one
        assert_eq!(limit.ops(), 1250);
        limit.applied(1250);
        assert_eq!(limit.ops(), 1406);
        for _ in 0..13 {
            limit.shrink();
        }
        assert_eq!(limit.ops(), 1, "never below one op");
        assert_eq!(limit.bytes(), 64 * 1024);
        limit.applied(1);
        assert_eq!(limit.ops(), 2);
        for _ in 0..100 {
            limit.applied(limit.ops());
        }
        assert_eq!(
            limit.ops(),
            MAX_BATCH_OPS,
            "grown back, never past the maximum"
        );
    }
}
