//! One link at work: read the source's oplog after the checkpoint stored on the destination,
//! keep what the link carries (never an op back to its origin), apply it in batches, each in a
//! transaction with the new checkpoint. Network trouble on either side: back off and resume
//! from the checkpoint, so nothing is lost or applied twice.

use super::conflicts::ConflictTracker;
use super::initial_sync;
use super::provenance::{
    classify, ddl_database, Provenance, CHECKPOINTS_COLL, CHECKPOINTS_NS, MMM_DB,
};
use super::route::route;
use super::status::{LinkState, LinkStatus};
use super::topology::{LinkSpec, ServerSpec};
use super::writer::{self, AbortOnDrop, Work};
use crate::apply::ddl::{self, DdlCommand};
use crate::apply::{Applier, ApplyError, Checkpoint, Plan, Tag};
use crate::oplog::{OpKind, Unit};
use crate::tail::{self, StartAt, TailError, TailOptions};
use bson::{doc, Document, Timestamp};
use mongodb::options::ClientOptions;
use mongodb::Client;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// A batch closes at this many ops or bytes (or when the tailer has nothing more).
pub const MAX_BATCH_OPS: usize = 5000;
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// How often a link with nothing to apply still moves its checkpoint (so it never falls behind
/// the source's oplog window while only echoes or no-ops pass by).
const IDLE_CHECKPOINT_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub enum LinkEvent {
    Conflict(super::conflicts::Conflict),
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
    pub conflicts: Arc<ConflictTracker>,
}

pub(super) enum LinkFailure {
    Fatal(String),
    Retry(String),
}

impl From<mongodb::error::Error> for LinkFailure {
    fn from(e: mongodb::error::Error) -> Self {
        LinkFailure::Retry(e.to_string())
    }
}

impl From<ApplyError> for LinkFailure {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Retry(m) => LinkFailure::Retry(m),
            ApplyError::Rejected(m) => LinkFailure::Fatal(m),
        }
    }
}

impl LinkRuntime {
    /// The checkpoint to store with a batch of `ops` more operations.
    pub(super) fn checkpoint(
        &self,
        origin: String,
        ts: Timestamp,
        applied: Timestamp,
        ops: usize,
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
            pending_ddl: None,
            initial_sync: None,
        }
    }

    fn set_state(&self, state: LinkState, error: Option<String>) {
        let mut s = self.status.lock();
        s.state = state;
        if error.is_some() {
            s.last_error = error;
        }
    }
}

pub async fn run_link(rt: LinkRuntime, mut stop: watch::Receiver<bool>) {
    let rt = Arc::new(rt);
    let mut backoff = Duration::from_millis(100);
    loop {
        let outcome = tokio::select! {
            r = session(&rt) => r,
            _ = stop.wait_for(|s| *s) => Ok(()),
        };
        match outcome {
            Ok(()) => {
                rt.set_state(LinkState::Stopped, None);
                return;
            }
            Err(LinkFailure::Fatal(msg)) => {
                log::error!(target: "mmm", "link {} stopped: {msg}", rt.spec.id());
                rt.set_state(LinkState::Failed, Some(msg.clone()));
                let _ = rt.events.send(LinkEvent::Failed {
                    link: rt.spec.id(),
                    error: msg,
                });
                return;
            }
            Err(LinkFailure::Retry(msg)) => {
                log::warn!(target: "mmm",
                    "link {}: {msg}; retrying in {:.1}s",
                    rt.spec.id(),
                    backoff.as_secs_f64()
                );
                rt.set_state(LinkState::Retrying, Some(msg));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => {
                        rt.set_state(LinkState::Stopped, None);
                        return;
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
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
        return Err(LinkFailure::Fatal(
            TailError::NotReplicaSet {
                server: format!("{} ({})", server.name, server.uri),
            }
            .to_string(),
        ));
    }
    Ok(())
}

pub async fn latest_ts(client: &Client) -> Result<Timestamp, mongodb::error::Error> {
    let oplog = client.database("local").collection::<Document>("oplog.rs");
    let last = oplog
        .find_one(doc! {})
        .sort(doc! {"$natural": -1})
        .projection(doc! {"ts": 1})
        .await?;
    Ok(last
        .and_then(|d| d.get_timestamp("ts").ok())
        .unwrap_or(Timestamp {
            time: 0,
            increment: 0,
        }))
}

pub(super) async fn ensure_checkpoint_collection(client: &Client) -> Result<(), LinkFailure> {
    match client
        .database(MMM_DB)
        .create_collection(CHECKPOINTS_COLL)
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == 48) => {
            Ok(())
        }
        Err(e) => Err(e.into()),
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
        let gone = || LinkFailure::Retry("the destination writer stopped".into());
        tokio::select! {
            sent = self.work.send(item) => match sent {
                Ok(()) => Ok(()),
                // The writer ended: its failure is on the way.
                Err(_) => Err((&mut self.failed).await.unwrap_or_else(|_| gone())),
            },
            failure = &mut self.failed => Err(failure.unwrap_or_else(|_| gone())),
        }
    }

    /// A fresh pin key for the next batch.
    fn next_pin(&mut self, link: &str) -> String {
        self.batches += 1;
        format!("{link}#{}", self.batches)
    }
}

async fn session(rt: &Arc<LinkRuntime>) -> Result<(), LinkFailure> {
    let link_id = rt.spec.id();
    rt.set_state(LinkState::Starting, None);
    let dst = Client::with_options(rt.dst_options.clone())?;
    let src = Client::with_options(rt.src_options.clone())?;
    require_replica_set(&dst, &rt.dst).await?;
    require_replica_set(&src, &rt.src).await?;
    ensure_checkpoint_collection(&dst).await?;
    rt.conflicts.unpin_link(&link_id);
    rt.status.lock().reset_pending();
    let applier = Applier::new(dst.clone(), &link_id);
    let checkpoint = match applier.read_checkpoint().await? {
        Some(c) => c,
        None => {
            // The position comes first, stored before any copy (see initial_sync).
            let start = latest_ts(&src).await?;
            let mut c = rt.checkpoint(rt.src.id.clone(), start, start, 0);
            if rt.spec.initial_sync {
                c = initial_sync::fresh(c, start);
            }
            applier.apply(&Plan::default(), &c).await?;
            c
        }
    };
    // A copy in progress (first run, restart, or `resync`) is finished before the oplog.
    let checkpoint = match checkpoint.initial_sync {
        Some(_) => {
            rt.set_state(LinkState::InitialSync, None);
            initial_sync::initial_sync(rt, &src, &applier, checkpoint).await?
        }
        None => checkpoint,
    };
    let checkpoint = match checkpoint.pending_ddl.clone() {
        // A crash between announcing a DDL command and recording it: run it again.
        Some((ddl, ddl_ts)) => {
            applier.run_ddl(&ddl).await?;
            let done = rt.checkpoint(checkpoint.origin.clone(), checkpoint.ts, ddl_ts, 0);
            applier.apply(&Plan::default(), &done).await?;
            done
        }
        None => checkpoint,
    };
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
    let mut resume_safe = checkpoint.ts;
    let mut prev_ts = checkpoint.applied;
    let mut ddl_window: Option<(String, String)> = None;
    let mut last_checkpoint_write = Instant::now();
    let mut idle_progress = false;
    let mut writer = WriterHandle::start(rt, applier);
    loop {
        let event = tokio::select! {
            event = rx.recv() => match event {
                Some(event) => event,
                None => break,
            },
            failure = &mut writer.failed => {
                return Err(failure.unwrap_or_else(|_| LinkFailure::Retry("the destination writer stopped".into())));
            }
        };
        let batch = match event {
            Ok(b) => b,
            Err(e @ TailError::Rollover { .. }) => {
                return Err(LinkFailure::Fatal(super::resync::rollover_message(
                    &link_id, &e,
                )))
            }
            Err(e) => return Err(LinkFailure::Fatal(e.to_string())),
        };
        let read_at = Instant::now();
        let mut pending = Pending {
            plan: Plan::default(),
            known_at: Vec::new(),
            origin: rt.src.id.clone(),
            last_unit: None,
            pin: writer.next_pin(&link_id),
        };
        let mut last_unit_in_batch = None;
        for unit in &batch.units {
            let ts = unit.ts().map_err(|e| LinkFailure::Fatal(e.to_string()))?;
            last_unit_in_batch = Some(ts);
            // Every unit before this one is applied, pending in the batch, or skipped.
            let unit_prev_ts = prev_ts;
            prev_ts = ts;
            let prev_ts_for_ddl = unit_prev_ts;
            let mut provenance = classify(unit);
            // DDL that mmm itself ran here (announced by a checkpoint) is replicated, not local.
            match &provenance {
                Provenance::Replicated {
                    origin,
                    ddl_db: Some(db),
                    ..
                } => ddl_window = Some((db.clone(), origin.clone())),
                Provenance::Replicated {
                    origin,
                    ddl_db: None,
                    ..
                } if ddl_window.as_ref().is_some_and(|w| &w.1 == origin) => ddl_window = None,
                Provenance::Local => {
                    if let (Some((db, origin)), Some(unit_db)) = (&ddl_window, ddl_database(unit)) {
                        if *db == unit_db {
                            provenance = Provenance::Replicated {
                                origin: origin.clone(),
                                has_data: true,
                                ddl_db: None,
                            };
                        }
                    }
                }
                _ => {}
            }
            for conflict in rt.conflicts.observe(&rt.src.id, ts, unit, &provenance) {
                report_conflict(rt, conflict);
            }
            let origin = match provenance {
                Provenance::Local => rt.src.id.clone(),
                Provenance::Replicated {
                    origin, has_data, ..
                } => {
                    if origin == rt.dst.id && has_data {
                        rt.status.lock().ops_skipped_echo += unit.op_count() as u64;
                    }
                    if origin == rt.dst.id || !rt.spec.forward || !has_data {
                        idle_progress |= has_data;
                        continue;
                    }
                    origin
                }
                Provenance::Internal => continue,
            };
            if let Some(ddl) = link_ddl(rt, unit)? {
                if !pending.plan.is_empty() {
                    flush(rt, &mut writer, &mut pending, resume_safe, None).await?;
                }
                writer
                    .hand_over(Work::Ddl {
                        origin: origin.clone(),
                        ddl,
                        resume: resume_safe.min(prev_ts_for_ddl),
                        applied_before: prev_ts_for_ddl,
                        ddl_ts: ts,
                    })
                    .await?;
                last_checkpoint_write = Instant::now();
                continue;
            }
            let routed = route(&rt.spec, unit).map_err(|e| LinkFailure::Fatal(e.to_string()))?;
            if routed.is_empty() {
                idle_progress = true;
                continue;
            }
            if !pending.plan.is_empty()
                && (pending.origin != origin
                    || pending.plan.ops >= MAX_BATCH_OPS
                    || pending.plan.bytes >= MAX_BATCH_BYTES)
            {
                flush(rt, &mut writer, &mut pending, resume_safe, None).await?;
                last_checkpoint_write = Instant::now();
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
                    .add_tagged(&r.dst_ns, &r.op, tag.as_ref())
                    .map_err(|e| LinkFailure::Fatal(format!("link {link_id}: {e}")))?;
            }
            pending.last_unit = Some(ts);
            let mut s = rt.status.lock();
            s.lag_ops += routed.len() as u64;
            s.building_since.get_or_insert(read_at);
        }
        if let Some(c) = batch.checkpoint {
            resume_safe = c;
        }
        if !pending.plan.is_empty() {
            flush(
                rt,
                &mut writer,
                &mut pending,
                resume_safe,
                last_unit_in_batch,
            )
            .await?;
            last_checkpoint_write = Instant::now();
            idle_progress = false;
        } else if idle_progress && last_checkpoint_write.elapsed() >= IDLE_CHECKPOINT_EVERY {
            if let Some(last) = last_unit_in_batch {
                let (resume, applied) = (resume_safe.min(last), last);
                writer
                    .hand_over(Work::Checkpoint { resume, applied })
                    .await?;
                last_checkpoint_write = Instant::now();
                idle_progress = false;
            }
        }
    }
    // The tailer ended without an error event: it was stopped.
    let _ = tailer.await;
    Ok(())
}

/// The DDL command this link replicates for `unit`, if it is a DDL entry the link carries.
fn link_ddl(rt: &LinkRuntime, unit: &Unit) -> Result<Option<DdlCommand>, LinkFailure> {
    let Unit::Single(op) = unit else {
        return Ok(None);
    };
    if !rt.spec.ops.contains(OpKind::Command) || ddl_database(unit).is_none() {
        return Ok(None);
    }
    ddl::translate(op, |ns| rt.spec.src_ns.rename(ns, &rt.spec.dst_ns))
        .map_err(|e| LinkFailure::Fatal(format!("link {}: {e}", rt.spec.id())))
}

pub(super) fn report_conflict(rt: &LinkRuntime, conflict: super::conflicts::Conflict) {
    log::warn!(target: "mmm", "conflict: {conflict}");
    rt.status.lock().conflicts += 1;
    let _ = rt.events.send(LinkEvent::Conflict(conflict));
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
    let filter = doc! {
        "ts": {"$lte": start},
        "op": "c",
        "ns": "admin.$cmd",
        "o.applyOps": {"$elemMatch": {"ns": CHECKPOINTS_NS, "o.src": &rt.dst.id}},
    };
    let last = oplog.find_one(filter).sort(doc! {"$natural": -1}).await?;
    let applied = last.as_ref().and_then(|entry| {
        entry
            .get_document("o")
            .ok()?
            .get_array("applyOps")
            .ok()?
            .iter()
            .find_map(|op| {
                let op = op.as_document()?;
                let o = op.get_document("o").ok()?;
                (op.get_str("ns").ok()? == CHECKPOINTS_NS && o.get_str("src").ok()? == rt.dst.id)
                    .then(|| o.get_timestamp("applied").ok())
                    .flatten()
            })
    });
    if let Some(applied) = applied {
        rt.conflicts.note_known(&rt.src.id, &rt.dst.id, applied);
    }
    Ok(())
}

struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// Hands the pending batch to the writer, which applies it with its checkpoint.
/// `handled_through`: at the end of a tailer batch, the last unit read (everything up to it is
/// applied or deliberately skipped).
async fn flush(
    rt: &LinkRuntime,
    writer: &mut WriterHandle,
    pending: &mut Pending,
    resume_safe: Timestamp,
    handled_through: Option<Timestamp>,
) -> Result<(), LinkFailure> {
    let last = pending
        .last_unit
        .expect("a non-empty batch has a last unit");
    let applied = handled_through.unwrap_or(last).max(last);
    {
        let mut s = rt.status.lock();
        let since = s.building_since.take().unwrap_or_else(Instant::now);
        s.queued_since.push_back(since);
    }
    let next_pin = writer.next_pin(&rt.spec.id());
    let work = Work::Batch {
        plan: std::mem::take(&mut pending.plan),
        known_at: std::mem::take(&mut pending.known_at),
        origin: pending.origin.clone(),
        resume: resume_safe.min(applied),
        applied,
        pin: std::mem::replace(&mut pending.pin, next_pin),
    };
    pending.last_unit = None;
    writer.hand_over(work).await
}
