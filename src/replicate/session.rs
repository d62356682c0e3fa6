//! One session of a link, from connecting to the first failure or stop, in named steps:
//! connect and check both servers, find where to start (reading the checkpoint, or taking a
//! first position and running the initial sync, and finishing a DDL command a crash
//! interrupted), then read the source: each unit is classified (local, replicated, mmm's own),
//! echoes and ops the link does not forward are skipped, DDL runs on its own, the rest is
//! batched by origin and handed to the writer task, which applies each batch with its
//! checkpoint.

use super::initial_sync;
use super::provenance::{classify, ddl_target, Provenance};
use super::route::route;
use super::runtime::{
    latest_ts, report_conflict, LinkFailure, LinkRuntime, StopOnDrop, MAX_BATCH_BYTES,
    MAX_BATCH_OPS,
};
use super::status::LinkState;
use super::topology::ServerSpec;
use super::writer::{self, AbortOnDrop, Work};
use crate::apply::ddl::{self, DdlCommand};
use crate::apply::{Applier, OnReject, Plan, Tag};
use crate::oplog::{OpKind, Unit};
use crate::store::checkpoints::{self, DdlScope};
use crate::store::{self, is_replicable_ns, Checkpoint};
use crate::tail::{self, StartAt, TailError, TailOptions, UnitBatch};
use bson::{doc, Document, Timestamp};
use mongodb::Client;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// How often a link with nothing to apply still moves its checkpoint (so it never falls behind
/// the source's oplog window while only echoes or no-ops pass by).
const IDLE_CHECKPOINT_EVERY: Duration = Duration::from_secs(30);

/// `fence`: the link's lease term, which every checkpoint write of this session is
/// conditional on (see `store/leases.rs`).
pub async fn session(rt: &Arc<LinkRuntime>, fence: Option<i64>) -> Result<(), LinkFailure> {
    rt.set_state(LinkState::Starting, None);
    let (src, dst) = connect(rt).await?;
    rt.conflicts.unpin_link(&rt.spec.id());
    rt.status.lock().reset_pending();
    let applier = Applier::new(dst.clone(), &rt.spec.id())
        .on_reject(rt.spec.on_reject)
        .fenced(fence);
    let checkpoint = starting_checkpoint(rt, &src, &dst, &applier).await?;
    // Knowledge of the reverse direction serves only checks on the destination (a one-way
    // link skips the oplog scan it costs).
    if rt.conflicts.checks(&rt.dst.id) {
        load_reverse_knowledge(rt, &src, checkpoint.applied).await?;
    }
    {
        let mut s = rt.status.lock();
        s.checkpoint = Some(checkpoint.ts);
        // Totals continue from what the checkpoint recorded in earlier runs.
        s.ops_applied = s.ops_applied.max(checkpoint.ops_applied);
        s.conflicts = s.conflicts.max(checkpoint.conflicts);
        s.rejected = s.rejected.max(checkpoint.rejected);
    }
    let (tx, mut rx) = mpsc::channel(4);
    let tail_options = TailOptions {
        options: rt.src_options.clone(),
        start: StartAt::After(checkpoint.ts),
        batch_size: 5000,
        max_await: Duration::from_millis(500),
        skip_through: Some(checkpoint.applied),
    };
    let (tail_stop, tail_stop_rx) = watch::channel(false);
    let tailer = tokio::spawn(tail::run(tail_options, tx, tail_stop_rx));
    let _guard = StopOnDrop(tail_stop);
    rt.set_state(LinkState::Running, None);
    let mut reader = Reader::new(rt, &checkpoint, WriterHandle::start(rt, applier));
    loop {
        let event = tokio::select! {
            event = rx.recv() => match event {
                Some(event) => event,
                None => break,
            },
            failure = &mut reader.writer.failed => return Err(writer_failure(failure)),
        };
        reader.read(event?).await?;
    }
    // The tailer ended without an error event: it was stopped.
    let _ = tailer.await;
    Ok(())
}

/// Clients of both servers, each checked to be a replica set member, and the checkpoint
/// collection ready on the destination.
async fn connect(rt: &LinkRuntime) -> Result<(Client, Client), LinkFailure> {
    let dst = Client::with_options(rt.dst_options.clone())?;
    let src = Client::with_options(rt.src_options.clone())?;
    require_replica_set(&dst, &rt.dst).await?;
    require_replica_set(&src, &rt.src).await?;
    store::ensure_collection(&dst, store::CHECKPOINTS).await?;
    if rt.spec.on_reject == OnReject::Journal {
        store::ensure_collection(&dst, store::REJECTED).await?;
    }
    Ok((src, dst))
}

pub(super) async fn require_replica_set(
    client: &Client,
    server: &ServerSpec,
) -> Result<(), LinkFailure> {
    let hello = client
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await?;
    if !hello.contains_key("setName") {
        return Err(LinkFailure::Source(TailError::NotReplicaSet {
            server: format!("{} ({})", server.name, server.uri),
        }));
    }
    Ok(())
}

/// The stored checkpoint; for a link that never ran, the source's newest entry (stored first,
/// then the initial sync runs when the link asks for one). An initial sync in progress is
/// finished; a DDL command a crash interrupted runs again.
async fn starting_checkpoint(
    rt: &LinkRuntime,
    src: &Client,
    dst: &Client,
    applier: &Applier,
) -> Result<Checkpoint, LinkFailure> {
    let checkpoint = match applier.read_checkpoint().await? {
        Some(c) => c,
        None => {
            // The position comes first, stored before any copy (see initial_sync).
            let c = first_checkpoint(rt, src).await?;
            applier.apply(&Plan::default(), &c).await?;
            c
        }
    };
    // A copy in progress (first run, restart, or `resync`) is finished before the oplog.
    let checkpoint = match checkpoint.initial_sync {
        Some(_) => {
            rt.set_state(LinkState::InitialSync, None);
            initial_sync::initial_sync(rt, src, dst, applier, checkpoint).await?
        }
        None => checkpoint,
    };
    match checkpoint.pending_ddl.clone() {
        // A crash between announcing a DDL command and recording it: run it again.
        Some((ddl, ddl_ts)) => {
            applier.run_ddl(&ddl).await?;
            let done = rt.checkpoint(checkpoint.origin.clone(), checkpoint.ts, ddl_ts, 0);
            applier.apply(&Plan::default(), &done).await?;
            Ok(done)
        }
        None => Ok(checkpoint),
    }
}

/// The checkpoint of a link that never ran: the source's newest entry, with an initial sync
/// to run first when the link asks for one.
pub(super) async fn first_checkpoint(
    rt: &LinkRuntime,
    src: &Client,
) -> Result<Checkpoint, LinkFailure> {
    let start = latest_ts(src).await?;
    let c = rt.checkpoint(rt.src.id.clone(), start, start, 0);
    Ok(match rt.spec.initial_sync {
        true => initial_sync::fresh(c, start),
        false => c,
    })
}

/// How far `src` had applied `dst`'s writes at the point this link starts reading `src`'s
/// oplog: the last batch the reverse link (dst -> src) committed on `src` at or before `start`,
/// found in `src`'s oplog by its checkpoint write. Later batches are seen in order while tailing.
async fn load_reverse_knowledge(
    rt: &LinkRuntime,
    src: &Client,
    start: Timestamp,
) -> Result<(), LinkFailure> {
    let oplog = src.database("local").collection::<Document>("oplog.rs");
    let filter = checkpoints::oplog_filter_for_links_from(&rt.dst.id, start);
    let last = oplog.find_one(filter).sort(doc! {"$natural": -1}).await?;
    let applied = last
        .as_ref()
        .and_then(|entry| checkpoints::applied_in_oplog_entry(entry, &rt.dst.id));
    if let Some(applied) = applied {
        rt.conflicts.note_known(&rt.src.id, &rt.dst.id, applied);
    }
    Ok(())
}

fn writer_failure(failure: Result<LinkFailure, oneshot::error::RecvError>) -> LinkFailure {
    failure.unwrap_or_else(|_| LinkFailure::Transient("the destination writer stopped".into()))
}

/// The reading half's end of the writer: hands work over in order and learns of its failure.
struct WriterHandle {
    work: mpsc::Sender<Work>,
    failed: oneshot::Receiver<LinkFailure>,
    _task: AbortOnDrop,
    batches: u64,
}

impl WriterHandle {
    fn start(rt: &Arc<LinkRuntime>, applier: Applier) -> WriterHandle {
        // One batch waits while another is applied: the source is read ahead by one batch.
        let (work, work_rx) = mpsc::channel(1);
        let (failed_tx, failed) = oneshot::channel();
        let task = tokio::spawn(writer::run(rt.clone(), applier, work_rx, failed_tx));
        WriterHandle {
            work,
            failed,
            _task: AbortOnDrop(task),
            batches: 0,
        }
    }

    async fn hand_over(&mut self, item: Work) -> Result<(), LinkFailure> {
        tokio::select! {
            sent = self.work.send(item) => match sent {
                Ok(()) => Ok(()),
                // The writer ended: its failure is on the way.
                Err(_) => Err(writer_failure((&mut self.failed).await)),
            },
            failure = &mut self.failed => Err(writer_failure(failure)),
        }
    }

    /// A fresh pin key for the next batch.
    fn next_pin(&mut self, link: &str) -> String {
        self.batches += 1;
        format!("{link}#{}", self.batches)
    }
}

/// The batch being built: ops of one origin.
struct Pending {
    plan: Plan,
    /// Per op of the plan: how far the source had applied the destination's writes when the
    /// op was read (for conflict detection).
    known_at: Vec<Timestamp>,
    origin: String,
    last_unit: Option<Timestamp>,
    /// The conflict tracker's pin for this batch (one per batch: several can be in flight).
    pin: String,
}

/// The reading half of a session: turns the tailer's batches into work for the writer.
struct Reader<'a> {
    rt: &'a Arc<LinkRuntime>,
    writer: WriterHandle,
    /// Where the link may resume from if it stopped now (the tailer's safe point).
    resume_safe: Timestamp,
    /// The last unit read: every unit up to it is applied, pending, or skipped.
    prev_ts: Timestamp,
    /// A DDL command announced by a replicated checkpoint: (scope, origin). The DDL entries in
    /// that scope that follow are mmm's own, replicated from that origin.
    ddl_window: Option<(DdlScope, String)>,
    last_checkpoint_write: Instant,
    /// Units passed by (echoes, ops the link does not carry) since the last checkpoint write.
    idle_progress: bool,
}

impl<'a> Reader<'a> {
    fn new(rt: &'a Arc<LinkRuntime>, checkpoint: &Checkpoint, writer: WriterHandle) -> Self {
        Reader {
            rt,
            writer,
            resume_safe: checkpoint.ts,
            prev_ts: checkpoint.applied,
            ddl_window: None,
            last_checkpoint_write: Instant::now(),
            idle_progress: false,
        }
    }

    fn new_pending(&mut self) -> Pending {
        Pending {
            plan: Plan::default(),
            known_at: Vec::new(),
            origin: self.rt.src.id.clone(),
            last_unit: None,
            pin: self.writer.next_pin(&self.rt.spec.id()),
        }
    }

    /// One batch from the tailer: every unit in order, then the batch's pending ops handed to
    /// the writer (or, after a long idle stretch, only the checkpoint).
    async fn read(&mut self, batch: UnitBatch) -> Result<(), LinkFailure> {
        let read_at = Instant::now();
        let mut pending = self.new_pending();
        let mut last_unit_in_batch = None;
        for unit in &batch.units {
            let ts = unit
                .ts()
                .map_err(|e| LinkFailure::Source(TailError::Malformed(e.to_string())))?;
            last_unit_in_batch = Some(ts);
            let prev_ts = std::mem::replace(&mut self.prev_ts, ts);
            let provenance = self.provenance(unit);
            for conflict in self
                .rt
                .conflicts
                .observe(&self.rt.src.id, ts, unit, &provenance)
            {
                report_conflict(self.rt, conflict);
            }
            let Some(origin) = self.origin_to_carry(unit, provenance) else {
                continue;
            };
            if let Some(ddl) = link_ddl(self.rt, unit)? {
                self.hand_over_ddl(&mut pending, origin, ddl, prev_ts, ts)
                    .await?;
                continue;
            }
            self.add_to_batch(&mut pending, unit, origin, ts, read_at)
                .await?;
        }
        if let Some(c) = batch.checkpoint {
            self.resume_safe = c;
        }
        if !pending.plan.is_empty() {
            self.flush(&mut pending, last_unit_in_batch).await?;
            self.idle_progress = false;
        } else if self.idle_progress
            && self.last_checkpoint_write.elapsed() >= IDLE_CHECKPOINT_EVERY
        {
            if let Some(last) = last_unit_in_batch {
                let (resume, applied) = (self.resume_safe.min(last), last);
                self.writer
                    .hand_over(Work::Checkpoint { resume, applied })
                    .await?;
                self.last_checkpoint_write = Instant::now();
                self.idle_progress = false;
            }
        }
        Ok(())
    }

    /// Where a unit comes from. DDL that mmm itself ran here (announced by a replicated
    /// checkpoint) is replicated, not local.
    fn provenance(&mut self, unit: &Unit) -> Provenance {
        let provenance = classify(unit);
        match &provenance {
            Provenance::Replicated {
                origin,
                ddl_scope: Some(scope),
                ..
            } => self.ddl_window = Some((scope.clone(), origin.clone())),
            Provenance::Replicated {
                origin,
                ddl_scope: None,
                ..
            } if self.ddl_window.as_ref().is_some_and(|w| &w.1 == origin) => self.ddl_window = None,
            Provenance::Local => {
                if let (Some((scope, origin)), Some(target)) = (&self.ddl_window, ddl_target(unit))
                {
                    if scope.covers(&target) {
                        return Provenance::Replicated {
                            origin: origin.clone(),
                            has_data: true,
                            ddl_scope: None,
                        };
                    }
                }
            }
            _ => {}
        }
        provenance
    }

    /// The origin of a unit this link carries; `None` for echoes (ops that came from the
    /// destination), replicated ops on a link that does not forward, and mmm's own writes.
    fn origin_to_carry(&mut self, unit: &Unit, provenance: Provenance) -> Option<String> {
        let rt = self.rt;
        match provenance {
            Provenance::Local => Some(rt.src.id.clone()),
            Provenance::Replicated {
                origin, has_data, ..
            } => {
                if origin == rt.dst.id && has_data {
                    rt.status.lock().ops_skipped_echo += unit.op_count() as u64;
                }
                if origin == rt.dst.id || !rt.spec.forward || !has_data {
                    self.idle_progress |= has_data;
                    return None;
                }
                Some(origin)
            }
            Provenance::Internal => None,
        }
    }

    /// DDL runs alone, between two checkpoint writes: the batch before it goes first.
    async fn hand_over_ddl(
        &mut self,
        pending: &mut Pending,
        origin: String,
        ddl: DdlCommand,
        prev_ts: Timestamp,
        ts: Timestamp,
    ) -> Result<(), LinkFailure> {
        if !pending.plan.is_empty() {
            self.flush(pending, None).await?;
        }
        self.writer
            .hand_over(Work::Ddl {
                origin,
                ddl,
                resume: self.resume_safe.min(prev_ts),
                applied_before: prev_ts,
                ddl_ts: ts,
            })
            .await?;
        self.last_checkpoint_write = Instant::now();
        Ok(())
    }

    /// Adds the ops of `unit` the link carries to the batch, handing the batch over first when
    /// it is full or holds another origin's ops.
    async fn add_to_batch(
        &mut self,
        pending: &mut Pending,
        unit: &Unit,
        origin: String,
        ts: Timestamp,
        read_at: Instant,
    ) -> Result<(), LinkFailure> {
        let rt = self.rt;
        let routed = route(&rt.spec, unit)
            .map_err(|e| LinkFailure::Source(TailError::Malformed(e.to_string())))?;
        if routed.is_empty() {
            self.idle_progress = true;
            return Ok(());
        }
        if !pending.plan.is_empty()
            && (pending.origin != origin
                || pending.plan.ops >= MAX_BATCH_OPS
                || pending.plan.bytes >= MAX_BATCH_BYTES)
        {
            self.flush(pending, None).await?;
        }
        pending.origin = origin;
        let known = rt.conflicts.known(&pending.pin, &rt.src.id, &rt.dst.id);
        let tag = rt.spec.tag_documents.then(|| Tag {
            origin: pending.origin.clone(),
            ts,
        });
        for r in &routed {
            pending.known_at.push(known);
            pending
                .plan
                .add_tagged(&r.dst_ns, r.op, tag.as_ref())
                .map_err(|e| LinkFailure::Unreplicable(format!("link {}: {e}", rt.spec.id())))?;
        }
        pending.last_unit = Some(ts);
        let mut s = rt.status.lock();
        s.lag_ops += routed.len() as u64;
        s.building_since.get_or_insert(read_at);
        Ok(())
    }

    /// Hands the pending batch to the writer, which applies it with its checkpoint.
    /// `handled_through`: at the end of a tailer batch, the last unit read (everything up to it
    /// is applied or deliberately skipped).
    async fn flush(
        &mut self,
        pending: &mut Pending,
        handled_through: Option<Timestamp>,
    ) -> Result<(), LinkFailure> {
        let rt = self.rt;
        let last = pending
            .last_unit
            .expect("a non-empty batch has a last unit");
        let applied = handled_through.unwrap_or(last).max(last);
        {
            let mut s = rt.status.lock();
            let since = s.building_since.take().unwrap_or_else(Instant::now);
            s.queued_since.push_back(since);
        }
        let next_pin = self.writer.next_pin(&rt.spec.id());
        let work = Work::Batch {
            plan: std::mem::take(&mut pending.plan),
            known_at: std::mem::take(&mut pending.known_at),
            origin: pending.origin.clone(),
            resume: self.resume_safe.min(applied),
            applied,
            pin: std::mem::replace(&mut pending.pin, next_pin),
        };
        pending.last_unit = None;
        self.writer.hand_over(work).await?;
        self.last_checkpoint_write = Instant::now();
        Ok(())
    }
}

/// The DDL command this link replicates for `unit`, if it is a DDL entry the link carries.
fn link_ddl(rt: &LinkRuntime, unit: &Unit) -> Result<Option<DdlCommand>, LinkFailure> {
    let Unit::Single(op) = unit else {
        return Ok(None);
    };
    if !rt.spec.ops.contains(OpKind::Command) || ddl_target(unit).is_none() {
        return Ok(None);
    }
    ddl::translate(op, |ns| {
        is_replicable_ns(ns)
            .then(|| rt.spec.src_ns.rename(ns, &rt.spec.dst_ns))
            .flatten()
    })
    .map_err(|e| LinkFailure::Unreplicable(format!("link {}: {e}", rt.spec.id())))
}
