//! The destination half of a link: applies, in order, the work the reading half hands over.
//! It runs as its own task, so the destination applies one batch while the next is being read
//! and planned; the channel between the halves holds one batch, which bounds memory.

use super::runtime::{report_conflict, LinkFailure, LinkRuntime};
use crate::apply::ddl::DdlCommand;
use crate::apply::{Applier, Plan};
use bson::Timestamp;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// What the reading half hands over, in source order.
pub enum Work {
    /// A batch of one origin's ops, with where the link resumes once it is applied.
    Batch {
        plan: Plan,
        /// Per op of the plan: how far the source had applied the destination's writes when
        /// the op was read (for conflict detection).
        known_at: Vec<Timestamp>,
        origin: String,
        resume: Timestamp,
        applied: Timestamp,
        /// The conflict tracker's pin for this batch's knowledge (released once applied).
        pin: String,
    },
    /// A DDL command, run outside any transaction between two checkpoint writes.
    Ddl {
        origin: String,
        ddl: DdlCommand,
        resume: Timestamp,
        applied_before: Timestamp,
        ddl_ts: Timestamp,
    },
    /// Only the checkpoint moves (nothing to apply passed by for a while).
    Checkpoint {
        resume: Timestamp,
        applied: Timestamp,
    },
}

/// Applies work until the reading half hangs up; the first failure is sent on `failed`.
pub async fn run(
    rt: Arc<LinkRuntime>,
    applier: Applier,
    mut work: mpsc::Receiver<Work>,
    failed: oneshot::Sender<LinkFailure>,
) {
    while let Some(item) = work.recv().await {
        if let Err(e) = apply(&rt, &applier, item).await {
            let _ = failed.send(e);
            return;
        }
    }
}

async fn apply(rt: &LinkRuntime, applier: &Applier, item: Work) -> Result<(), LinkFailure> {
    match item {
        Work::Batch {
            plan,
            known_at,
            origin,
            resume,
            applied,
            pin,
        } => apply_batch(rt, applier, plan, known_at, origin, resume, applied, &pin).await,
        Work::Ddl {
            origin,
            ddl,
            resume,
            applied_before,
            ddl_ts,
        } => apply_ddl(rt, applier, &origin, ddl, resume, applied_before, ddl_ts).await,
        Work::Checkpoint { resume, applied } => {
            let c = rt.checkpoint(rt.src.id.clone(), resume, applied, 0);
            applier.apply(&Plan::default(), &c).await?;
            rt.status.lock().checkpoint = Some(c.ts);
            Ok(())
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn apply_batch(
    rt: &LinkRuntime,
    applier: &Applier,
    plan: Plan,
    known_at: Vec<Timestamp>,
    origin: String,
    resume: Timestamp,
    applied: Timestamp,
    pin: &str,
) -> Result<(), LinkFailure> {
    // Built here, not by the reading half: the running totals it carries must include every
    // batch applied before this one.
    let checkpoint = rt.checkpoint(origin, resume, applied, plan.ops);
    let applied = applier.apply(&plan, &checkpoint).await?;
    let commit_ts = applied.commit_ts;
    {
        let mut s = rt.status.lock();
        s.ops_applied += plan.ops as u64 - applied.rejected;
        s.rejected += applied.rejected;
        s.batches_applied += 1;
        s.checkpoint = Some(checkpoint.ts);
        s.lag_ops = s.lag_ops.saturating_sub(plan.ops as u64);
        s.queued_since.pop_front();
    }
    if let Some(commit_ts) = commit_ts {
        let touched = plan
            .touched
            .into_iter()
            .zip(known_at)
            .map(|((ns, id), known)| (ns, id, known))
            .collect();
        for conflict in rt
            .conflicts
            .after_apply(pin, &rt.dst.id, &rt.src.id, commit_ts, touched)
        {
            report_conflict(rt, conflict);
        }
    }
    rt.conflicts.unpin(pin);
    Ok(())
}

/// DDL cannot run in a transaction, so: a checkpoint transaction announcing it (so a crash
/// midway redoes it, and tailers of the destination know the DDL entries that follow are
/// replicated), the command itself (idempotent), then a checkpoint transaction past it.
async fn apply_ddl(
    rt: &LinkRuntime,
    applier: &Applier,
    origin: &str,
    ddl: DdlCommand,
    resume: Timestamp,
    applied_before: Timestamp,
    ddl_ts: Timestamp,
) -> Result<(), LinkFailure> {
    let mut marker = rt.checkpoint(origin.to_string(), resume, applied_before, 0);
    marker.pending_ddl = Some((ddl.clone(), ddl_ts));
    applier.apply(&Plan::default(), &marker).await?;
    applier.run_ddl(&ddl).await?;
    let done = rt.checkpoint(origin.to_string(), resume, ddl_ts, 1);
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
