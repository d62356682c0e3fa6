//! One session of a link, from connecting to the first failure or stop, in named steps:
//! connect and check both servers, find where to start (reading the checkpoint, or taking a
//! first position and running the initial sync, and finishing a DDL command a crash
//! interrupted), then read the source: each unit is classified (local, replicated, mmm's own),
//! echoes and ops the link does not forward are skipped, DDL runs on its own, the rest is
//! batched by origin and handed to the writer task, which applies each batch with its
//! checkpoint.

use super::initial_sync;
use super::provenance::{classify, ddl_target, Provenance};
use super::route::route_op;
use super::runtime::{anchor, LinkFailure, LinkRuntime, StopOnDrop};
use super::status::LinkState;
use super::topology::ServerSpec;
use super::writer::{self, AbortOnDrop, Work};
use crate::apply::converge::{Composite, Converging, Versions};
use crate::apply::ddl::{self, DdlCommand};
use crate::apply::{observe, Applier, OnReject, Plan, Tag};
use crate::converge::observe::{op_doc_id, ClockState};
use crate::converge::stamp::server_of;
use crate::converge::Knowledge;
use crate::oplog::{Entry, OpKind, Unit};
use crate::store::checkpoints::{self, DdlScope, SrcClock};
use crate::store::meta::{doc_key, DocKey, MetaRow};
use crate::store::{self, is_replicable_ns, Checkpoint};
use crate::tail::{self, StartAt, TailError, TailOptions, UnitBatch};
use bson::{doc, RawDocumentBuf, Timestamp};
use mongodb::Client;
use std::collections::HashMap;
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
    rt.status.lock().reset_pending();
    let applier = Applier::new(dst.clone(), &rt.spec.id())
        .on_reject(rt.spec.on_reject)
        .fenced(fence)
        .taking_turns(rt.dst_turns.clone());
    let checkpoint = starting_checkpoint(rt, &src, &dst, &applier).await?;
    let clock = match &checkpoint.src_clock {
        Some(c) => c.clone(),
        None => {
            // A checkpoint written before stamps existed: start from the source's observed
            // clock (stamps of the few entries between the two may differ from observation's).
            log::info!(target: "mmm", "link {}: starting the source's clock from its observation", rt.spec.id());
            anchor(&src, &rt.src.id, &rt.src_fields).await?.2
        }
    };
    let converging = Converging {
        site: rt.dst.id.clone(),
        src: src.clone(),
        src_site: rt.src.id.clone(),
        policies: rt.spec.policies.clone(),
        resolvers: rt.resolvers.clone(),
        observed: Default::default(),
    };
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
    let mut reader = Reader::new(
        rt,
        &checkpoint,
        clock,
        WriterHandle::start(rt, applier, converging),
    );
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

/// Catches the link up after its position left the source's oplog (see `catch_up.rs`).
pub async fn recover_from_rollover(rt: &Arc<LinkRuntime>) -> Result<u64, LinkFailure> {
    rt.set_state(LinkState::Starting, None);
    let (src, dst) = connect(rt).await?;
    let applier = Applier::new(dst.clone(), &rt.spec.id())
        .on_reject(rt.spec.on_reject)
        .taking_turns(rt.dst_turns.clone());
    let checkpoint = applier
        .read_checkpoint()
        .await?
        .ok_or_else(|| LinkFailure::Transient("the link's checkpoint is missing".into()))?;
    let converging = Converging {
        site: rt.dst.id.clone(),
        src: src.clone(),
        src_site: rt.src.id.clone(),
        policies: rt.spec.policies.clone(),
        resolvers: rt.resolvers.clone(),
        observed: Default::default(),
    };
    super::catch_up::catch_up(rt, &src, &applier, &converging, &checkpoint).await
}

/// Clients of both servers, each checked to be a replica set member, and the checkpoint
/// collection ready on the destination.
async fn connect(rt: &LinkRuntime) -> Result<(Client, Client), LinkFailure> {
    let dst = Client::with_options(rt.dst_options.clone())?;
    let src = Client::with_options(rt.src_options.clone())?;
    require_replica_set(&dst, &rt.dst).await?;
    require_replica_set(&src, &rt.src).await?;
    store::ensure_collection(&dst, store::CHECKPOINTS).await?;
    store::journal::ensure(&dst, store::journal::DEFAULT_TTL).await?;
    observe::ensure_clock(&dst).await?;
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
            let clock = checkpoint.src_clock.clone().unwrap_or_default();
            let done = rt.checkpoint(checkpoint.origin.clone(), checkpoint.ts, ddl_ts, 0, clock);
            applier.apply(&Plan::default(), &done).await?;
            Ok(done)
        }
        None => Ok(checkpoint),
    }
}

/// The checkpoint of a link that never ran: where the source's clock was observed (so the
/// link's stamps continue observation's), with an initial sync to run first when the link
/// asks for one.
pub(super) async fn first_checkpoint(
    rt: &LinkRuntime,
    src: &Client,
) -> Result<Checkpoint, LinkFailure> {
    let (start, applied, clock) = anchor(src, &rt.src.id, &rt.src_fields).await?;
    let c = rt.checkpoint(rt.src.id.clone(), start, applied, 0, clock);
    Ok(match rt.spec.initial_sync {
        true => initial_sync::fresh(c, start),
        false => c,
    })
}

fn writer_failure(failure: Result<LinkFailure, oneshot::error::RecvError>) -> LinkFailure {
    failure.unwrap_or_else(|_| LinkFailure::Transient("the destination writer stopped".into()))
}

/// The reading half's end of the writer: hands work over in order and learns of its failure.
struct WriterHandle {
    work: mpsc::Sender<Work>,
    failed: oneshot::Receiver<LinkFailure>,
    _task: AbortOnDrop,
}

impl WriterHandle {
    fn start(rt: &Arc<LinkRuntime>, applier: Applier, converging: Converging) -> WriterHandle {
        // One batch waits while another is applied: the source is read ahead by one batch.
        let (work, work_rx) = mpsc::channel(1);
        let (failed_tx, failed) = oneshot::channel();
        let task = tokio::spawn(writer::run(
            rt.clone(),
            applier,
            converging,
            work_rx,
            failed_tx,
        ));
        WriterHandle {
            work,
            failed,
            _task: AbortOnDrop(task),
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
}

/// The batch being built: versions of one origin.
#[derive(Default)]
struct Pending {
    versions: Versions,
    /// Composite per destination document.
    index: HashMap<DocKey, usize>,
    origin: String,
    /// The batch's knowledge without the origin's own entries, to tell which versions were
    /// made with another.
    others: Knowledge,
    ops: usize,
    bytes: usize,
    last_unit: Option<Timestamp>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.versions.composites.is_empty()
    }
}

/// Knowledge of every site but `server`'s own (its local and resolution sites).
fn others(know: &Knowledge, server: &str) -> Knowledge {
    Knowledge(
        know.0
            .iter()
            .filter(|(site, _)| server_of(site) != server)
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
    )
}

/// One version of one document on its way: a composite's part from one unit.
struct Version<'u> {
    dst_ns: String,
    src_ns: String,
    id: bson::Bson,
    ops: Vec<&'u RawDocumentBuf>,
    stamp: crate::converge::Stamp,
    deleted: bool,
    /// Under the `fields` policy, the version's field stamps.
    fields: Option<crate::converge::fields::FieldStamps>,
}

/// The reading half of a session: turns the tailer's batches into work for the writer.
struct Reader<'a> {
    rt: &'a Arc<LinkRuntime>,
    writer: WriterHandle,
    /// The source's clock after the last unit read.
    clock: ClockState,
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

fn src_clock(c: &ClockState) -> SrcClock {
    SrcClock {
        h: c.h,
        know: c.know.clone(),
    }
}

impl<'a> Reader<'a> {
    fn new(
        rt: &'a Arc<LinkRuntime>,
        checkpoint: &Checkpoint,
        clock: SrcClock,
        writer: WriterHandle,
    ) -> Self {
        Reader {
            rt,
            writer,
            clock: ClockState::new(rt.src.id.clone(), clock.h, clock.know),
            resume_safe: checkpoint.ts,
            prev_ts: checkpoint.applied,
            ddl_window: None,
            last_checkpoint_write: Instant::now(),
            idle_progress: false,
        }
    }

    /// One batch from the tailer: every unit in order, then the batch's pending versions
    /// handed to the writer (or, after a long idle stretch, only the checkpoint).
    async fn read(&mut self, batch: UnitBatch) -> Result<(), LinkFailure> {
        let read_at = Instant::now();
        let mut pending = Pending::default();
        let mut last_unit_in_batch = None;
        for unit in &batch.units {
            let ts = unit
                .ts()
                .map_err(|e| LinkFailure::Source(TailError::Malformed(e.to_string())))?;
            last_unit_in_batch = Some(ts);
            let prev_ts = std::mem::replace(&mut self.prev_ts, ts);
            let before = self.clock.clone();
            let provenance = self.provenance(unit);
            let versions = self.versions_of(unit, &provenance);
            if let Some(ddl) = self.carried_ddl(unit, &provenance)? {
                self.hand_over_ddl(&mut pending, ddl, prev_ts, ts, &before)
                    .await?;
                continue;
            }
            for (versions, know) in versions {
                self.add_to_batch(&mut pending, versions, know, ts, prev_ts, &before, read_at)
                    .await?;
            }
        }
        if let Some(c) = batch.checkpoint {
            self.resume_safe = c;
        }
        if !pending.is_empty() {
            let clock = src_clock(&self.clock);
            self.flush(&mut pending, last_unit_in_batch, clock).await?;
            self.idle_progress = false;
        } else if self.idle_progress
            && self.last_checkpoint_write.elapsed() >= IDLE_CHECKPOINT_EVERY
        {
            if let Some(last) = last_unit_in_batch {
                let (resume, applied) = (self.resume_safe.min(last), last);
                let clock = src_clock(&self.clock);
                self.writer
                    .hand_over(Work::Checkpoint {
                        resume,
                        applied,
                        clock,
                    })
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

    /// The versions of `unit` this link carries, in groups made with one knowledge each; the
    /// clock moves over every unit (carried or not). Empty when the link carries nothing of it.
    fn versions_of<'u>(
        &mut self,
        unit: &'u Unit,
        provenance: &Provenance,
    ) -> Vec<(Vec<Version<'u>>, Knowledge)> {
        let rt = self.rt;
        let spec = &rt.spec;
        match provenance {
            Provenance::Local => {
                let know = self.clock.know.clone();
                let mut out = Vec::new();
                for (s, op) in self.clock.local_ops(unit) {
                    if let Some(dst_ns) = route_op(spec, op) {
                        // Each op stamps the fields it wrote, never the whole composite.
                        let fields = spec.policies.is_fields(&dst_ns).then(|| {
                            crate::converge::fields::FieldStamps::of_ops([(op.as_ref(), &s.stamp)])
                        });
                        out.push(Version {
                            dst_ns,
                            src_ns: s.ns,
                            id: s.id,
                            ops: vec![op],
                            stamp: s.stamp,
                            deleted: s.deleted,
                            fields,
                        });
                    }
                }
                if out.is_empty() {
                    self.idle_progress = true;
                    return Vec::new();
                }
                vec![(out, know)]
            }
            Provenance::Replicated {
                has_data, origin, ..
            } => {
                let Unit::Transaction(txn) = unit else {
                    return Vec::new();
                };
                let rows = self.clock.applied(&txn.ops);
                if !has_data && rows.is_empty() {
                    return Vec::new();
                }
                let writer_know = checkpoints::checkpoint_in_ops(&txn.ops)
                    .and_then(|c| c.writer_know)
                    .unwrap_or_default();
                self.forwarded(txn, rows, writer_know, origin)
            }
            Provenance::Internal => Vec::new(),
        }
    }

    /// The versions a batch applied on the source that this link carries: the source's own
    /// resolutions always (they are new versions, like local writes), versions from elsewhere
    /// when the link forwards, never back to the server they came from.
    fn forwarded<'u>(
        &mut self,
        txn: &'u crate::oplog::Txn,
        rows: Vec<MetaRow>,
        writer_know: Knowledge,
        origin: &str,
    ) -> Vec<(Vec<Version<'u>>, Knowledge)> {
        let rt = self.rt;
        let here = rt.src.id.as_str();
        let mut by_doc: HashMap<DocKey, Vec<&RawDocumentBuf>> = HashMap::new();
        for op in &txn.ops {
            let entry = Entry::new(op);
            let (Ok(ns), Some(id)) = (entry.ns(), op_doc_id(&entry)) else {
                continue;
            };
            if is_replicable_ns(ns) {
                by_doc.entry(doc_key(ns, &id)).or_default().push(op);
            }
        }
        let mut own = Vec::new();
        let mut relayed = Vec::new();
        for row in rows {
            // A row with field stamps is a merge of what this server held with a version
            // from the batch's origin: new content under an old stamp, whichever server made
            // that stamp (this one included). It goes everywhere but back to that origin.
            let maker = if row.fields.is_some() {
                origin
            } else {
                server_of(&row.stamp.site)
            };
            // Observation rows (this server's local writes, carried when they were read).
            if row.stamp.site == here && row.fields.is_none() {
                continue;
            }
            let resolution = maker == here;
            if maker == rt.dst.id || (!resolution && !rt.spec.forward) {
                if !resolution {
                    rt.status.lock().ops_skipped_echo += 1;
                }
                continue;
            }
            let Some(dst_ns) = rt.spec.src_ns.rename(&row.ns, &rt.spec.dst_ns) else {
                continue;
            };
            if !is_replicable_ns(&row.ns) {
                continue;
            }
            let ops = by_doc.remove(&row.key()).unwrap_or_default();
            let v = Version {
                dst_ns,
                src_ns: row.ns.clone(),
                id: row.id.clone(),
                ops,
                stamp: row.stamp.clone(),
                deleted: row.deleted,
                fields: row.fields.clone(),
            };
            if resolution {
                own.push(v);
            } else {
                relayed.push(v);
            }
        }
        // Relayed versions keep their writer's knowledge; resolutions were made knowing what
        // this server knows (after this unit): two groups, each batched with its own.
        let mut groups = Vec::new();
        if !relayed.is_empty() {
            groups.push((relayed, writer_know));
        }
        if !own.is_empty() {
            groups.push((own, self.clock.know.clone()));
        }
        if groups.is_empty() {
            self.idle_progress = true;
        }
        groups
    }

    /// The DDL command this link replicates for `unit`, if any: local DDL, or DDL from
    /// elsewhere on a forwarding link (never back to its origin).
    fn carried_ddl(
        &mut self,
        unit: &Unit,
        provenance: &Provenance,
    ) -> Result<Option<(String, DdlCommand)>, LinkFailure> {
        let rt = self.rt;
        let origin = match provenance {
            Provenance::Local => rt.src.id.clone(),
            Provenance::Replicated { origin, .. } => {
                if *origin == rt.dst.id || !rt.spec.forward {
                    return Ok(None);
                }
                origin.clone()
            }
            Provenance::Internal => return Ok(None),
        };
        Ok(link_ddl(rt, unit)?.map(|ddl| (origin, ddl)))
    }

    /// DDL runs alone, between two checkpoint writes: the batch before it goes first.
    async fn hand_over_ddl(
        &mut self,
        pending: &mut Pending,
        (origin, ddl): (String, DdlCommand),
        prev_ts: Timestamp,
        ts: Timestamp,
        before: &ClockState,
    ) -> Result<(), LinkFailure> {
        if !pending.is_empty() {
            self.flush(pending, Some(prev_ts), src_clock(before))
                .await?;
        }
        self.writer
            .hand_over(Work::Ddl {
                origin,
                ddl,
                resume: self.resume_safe.min(prev_ts),
                applied_before: prev_ts,
                ddl_ts: ts,
                clock: src_clock(before),
            })
            .await?;
        self.last_checkpoint_write = Instant::now();
        Ok(())
    }

    /// Adds versions to the batch, handing the batch over first when it is full or holds
    /// another origin's versions.
    #[allow(clippy::too_many_arguments)]
    async fn add_to_batch(
        &mut self,
        pending: &mut Pending,
        versions: Vec<Version<'_>>,
        know: Knowledge,
        ts: Timestamp,
        prev_ts: Timestamp,
        before: &ClockState,
        read_at: Instant,
    ) -> Result<(), LinkFailure> {
        let rt = self.rt;
        let origin = server_of(&versions[0].stamp.site).to_string();
        let others_know = others(&know, &origin);
        let announcement_clash = versions.iter().any(|v| {
            pending
                .index
                .get(&doc_key(&v.dst_ns, &v.id))
                .is_some_and(|i| v.ops.is_empty() || pending.versions.composites[*i].ops.is_empty())
        });
        if !pending.is_empty()
            && (pending.origin != origin
                || announcement_clash
                || pending.ops >= rt.batch_limit.ops()
                || pending.bytes >= rt.batch_limit.bytes())
        {
            self.flush(pending, Some(prev_ts), src_clock(before))
                .await?;
        }
        if pending.is_empty() {
            pending.origin = origin;
            pending.others = others_know.clone();
            pending.versions.know = know.clone();
        }
        // Versions made after their writer learned of others carry their own knowledge.
        let own_know = (pending.others != others_know).then_some(know);
        let mut added = 0usize;
        for v in versions {
            let key = doc_key(&v.dst_ns, &v.id);
            let bytes: usize = v.ops.iter().map(|o| o.as_bytes().len()).sum();
            pending.bytes += bytes;
            pending.ops += v.ops.len().max(1);
            added += v.ops.len().max(1);
            let ops: Vec<RawDocumentBuf> = v.ops.into_iter().cloned().collect();
            match pending.index.get(&key) {
                Some(i) => {
                    let c = &mut pending.versions.composites[*i];
                    c.ops.extend(ops);
                    c.content = Default::default();
                    c.stamp = v.stamp;
                    c.deleted = v.deleted;
                    c.src_ts = ts;
                    // Later ops' stamps are larger: the join is their sequence.
                    c.fields = match (c.fields.take(), v.fields) {
                        (Some(mut a), Some(b)) => {
                            a.join(b);
                            Some(a)
                        }
                        (_, b) => b,
                    };
                }
                None => {
                    pending.index.insert(key, pending.versions.composites.len());
                    pending.versions.composites.push(Composite {
                        content: Default::default(),
                        ns: v.dst_ns,
                        src_ns: v.src_ns,
                        id: v.id,
                        ops,
                        stamp: v.stamp,
                        deleted: v.deleted,
                        src_ts: ts,
                        know: own_know.clone(),
                        fields: v.fields,
                    });
                }
            }
        }
        pending.last_unit = Some(ts);
        let mut s = rt.status.lock();
        s.lag_ops += added as u64;
        s.building_since.get_or_insert(read_at);
        Ok(())
    }

    /// Hands the pending batch to the writer, which applies it with its checkpoint.
    /// `handled_through`: every unit up to it is applied, pending or skipped; `clock` is the
    /// source's clock right after it.
    async fn flush(
        &mut self,
        pending: &mut Pending,
        handled_through: Option<Timestamp>,
        clock: SrcClock,
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
        let taken = std::mem::take(pending);
        // Hashed here, while the writer applies the batch before: not on its path.
        for c in &taken.versions.composites {
            c.content_hash();
        }
        let tag = rt.spec.tag_documents.then(|| Tag {
            origin: taken.origin.clone(),
            ts: last,
        });
        let work = Work::Batch {
            versions: taken.versions,
            ops: taken.ops,
            origin: taken.origin,
            resume: self.resume_safe.min(applied),
            applied,
            clock,
            tag,
        };
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
