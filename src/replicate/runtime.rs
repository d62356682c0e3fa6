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
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// A batch closes at this many ops or bytes (or when the tailer has nothing more).
pub const MAX_BATCH_OPS: usize = 5000;
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

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
        }
    }
}

impl From<TailError> for LinkFailure {
    fn from(e: TailError) -> Self {
        LinkFailure::Source(e)
    }
}

impl LinkRuntime {
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
