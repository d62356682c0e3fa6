//! The destination half of a link: applies, in order, the work the reading half hands over.
//! It runs as its own task, so the destination applies one batch while the next is being read
//! and planned; the channel between the halves holds one batch, which bounds memory.

use super::conflicts::Conflict;
use super::runtime::{report_conflict, LinkFailure, LinkRuntime};
use crate::apply::converge::{Converging, Versions};
use crate::apply::ddl::DdlCommand;
use crate::apply::{Applier, Batch, Plan, Tag};
use crate::store::checkpoints::SrcClock;
use bson::Timestamp;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// What the reading half hands over, in source order.
pub enum Work {
    /// A batch of versions of one origin, with where the link resumes once it is applied and
    /// the source's clock there.
    Batch {
        versions: Versions,
        /// Ops the versions hold (for counts and lag).
        ops: usize,
        origin: String,
        resume: Timestamp,
        applied: Timestamp,
        clock: SrcClock,
        /// Field mode: the tag written into documents.
        tag: Option<Tag>,
    },
    /// A DDL command, run outside any transaction between two checkpoint writes.
    Ddl {
        origin: String,
        ddl: DdlCommand,
        resume: Timestamp,
        applied_before: Timestamp,
        ddl_ts: Timestamp,
        /// The source's clock before the DDL entry (and after it: DDL does not tick it).
        clock: SrcClock,
    },
    /// Only the checkpoint moves (nothing to apply passed by for a while).
    Checkpoint {
        resume: Timestamp,
        applied: Timestamp,
        clock: SrcClock,
    },
}

/// Applies work until the reading half hangs up; the first failure is sent on `failed`.
pub async fn run(
    rt: Arc<LinkRuntime>,
    applier: Applier,
    converging: Converging,
    mut work: mpsc::Receiver<Work>,
    failed: oneshot::Sender<LinkFailure>,
) {
    while let Some(item) = work.recv().await {
        if let Err(e) = apply(&rt, &applier, &converging, item).await {
            let _ = failed.send(e);
            return;
        }
    }
}

async fn apply(
    rt: &LinkRuntime,
    applier: &Applier,
    converging: &Converging,
    item: Work,
) -> Result<(), LinkFailure> {
    match item {
        Work::Batch {
            versions,
            ops,
            origin,
            resume,
            applied,
            clock,
            tag,
        } => {
            // Built here, not by the reading half: the running totals it carries must include
            // every batch applied before this one.
            let mut checkpoint = rt.checkpoint(origin, resume, applied, ops, clock);
            checkpoint.writer_know = Some(versions.know.clone());
            let mut seen = crate::converge::Knowledge::default();
            for c in &versions.composites {
                seen.see(&c.stamp);
            }
            checkpoint.seen = Some(seen);
            let batch = Batch::Versions {
                versions: &versions,
                converging,
                tag: tag.as_ref(),
            };
            let done = rt.batch_outcome(applier.apply_batch(batch, &checkpoint).await, ops)?;
            {
                let mut s = rt.status.lock();
                s.ops_applied += (ops as u64).saturating_sub(done.rejected);
                s.rejected += done.rejected;
                s.batches_applied += 1;
                s.checkpoint = Some(checkpoint.ts);
                s.lag_ops = s.lag_ops.saturating_sub(ops as u64);
                s.queued_since.pop_front();
            }
            for record in done.conflicts {
                report_conflict(rt, Conflict::from_record(&rt.dst.id, &rt.src.id, record));
            }
            Ok(())
        }
        Work::Ddl {
            origin,
            ddl,
            resume,
            applied_before,
            ddl_ts,
            clock,
        } => {
            apply_ddl(
                rt,
                applier,
                &origin,
                ddl,
                resume,
                applied_before,
                ddl_ts,
                clock,
            )
            .await
        }
        Work::Checkpoint {
            resume,
            applied,
            clock,
        } => {
            let c = rt.checkpoint(rt.src.id.clone(), resume, applied, 0, clock);
            applier.apply(&Plan::default(), &c).await?;
            rt.status.lock().checkpoint = Some(c.ts);
            Ok(())
        }
    }
}

/// DDL cannot run in a transaction, so: a checkpoint transaction announcing it (so a crash
/// midway redoes it, and tailers of the destination know the DDL entries that follow are
/// replicated), the command itself (idempotent), then a checkpoint transaction past it.
#[allow(clippy::too_many_arguments)]
async fn apply_ddl(
    rt: &LinkRuntime,
    applier: &Applier,
    origin: &str,
    ddl: DdlCommand,
    resume: Timestamp,
    applied_before: Timestamp,
    ddl_ts: Timestamp,
    clock: SrcClock,
) -> Result<(), LinkFailure> {
    let mut marker = rt.checkpoint(origin.to_string(), resume, applied_before, 0, clock.clone());
    marker.pending_ddl = Some((ddl.clone(), ddl_ts));
    applier.apply(&Plan::default(), &marker).await?;
    applier.run_ddl(&ddl).await?;
    let done = rt.checkpoint(origin.to_string(), resume, ddl_ts, 1, clock);
    applier.apply(&Plan::default(), &done).await?;
    let mut s = rt.status.lock();
    s.ops_applied += 1;
    s.checkpoint = Some(done.ts);
    Ok(())
}

/// Aborts the task when dropped: a link session that ends (stopped, failed) takes its writer
/// with it, so no batch of an old session commits behind the back of the next one.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
