//! Initial sync: copy a link's existing source documents before following the oplog, in a way
//! that survives being stopped or killed at any moment.
//!
//! Before anything is copied, the source's newest oplog position `start` is stored as the
//! link's checkpoint, marked "initial sync in progress" ([`CopyProgress`]). Namespaces are then
//! copied one after the other in name order, each in `_id` order, in batches; each batch is a
//! transaction that also rewrites that checkpoint with the last `_id` copied, so the documents
//! on the destination and the recorded progress always agree. A restart finds the mark, resumes
//! the copy after the recorded `_id`, and only then follows the oplog from `start` (the position
//! is never taken again). Copy batches begin with the checkpoint write naming the source as
//! origin, like replicated batches, so the reverse link never sends them back.
//!
//! Why the destination converges to the source, for any document `d` of a copied namespace:
//! - Every write to `d` after `start` is in the source's oplog after `start`, and the link
//!   replays all of them once the copy is complete, however many runs the copy took (an outage
//!   included): the replay starts at `start`, not at the restart.
//! - The copy puts on the destination the state `d` had at some moment `t >= start` (when its
//!   batch was read), or nothing if `d` did not exist then. Replaying the writes after `start` in
//!   order over that state ends at `d`'s state after the last of them: inserts become upserts
//!   when the document is already there, updates are applied by `_id` and are idempotent
//!   (MongoDB's oplog entries are built to be re-applied, which its own initial sync relies on),
//!   and deletes by `_id` remove the document whenever the replayed write order says so.
//! - A document copied before an outage and deleted at the source during it: the delete is in
//!   the oplog after `start`, so the replay removes it from the destination.
//! - A document whose `_id` falls before the resume point but that was inserted (or changed)
//!   after its part was copied: its insert is in the oplog after `start`, so the replay brings
//!   it. The resumed copy never needs to look back.
//! - A document after the resume point is copied as it is at the restart, or not at all if it
//!   is gone by then; the replay of its earlier writes (an insert then a delete) ends the same.
//! - A namespace that appears after `start`, even one sorting before the namespace being
//!   copied at a restart, got every document by a write after `start`, so the replay brings it.
//!
//! A mirroring copy (`resync --mirror`) also deletes, with each batch, the destination's
//! documents in the batch's `_id` range that the source did not return, and after a
//! namespace's last batch those past it. That is safe for the same reason: a document absent
//! from the source when its range was read and present later was written after `start`, so the
//! replay brings it back.
//!
//! The one requirement is the oplog's: the source must still hold `start` when the copy ends.
//! If it rolled over meanwhile, the link stops with the rollover error rather than diverge.

use super::id_order::after_filter;
use super::runtime::{LinkFailure, LinkRuntime};
use crate::apply::{Applier, Plan, Tag};
use crate::oplog::NsPattern;
use crate::store::namespaces::{is_system_collection, SERVER_DATABASES as SKIP_DBS};
use crate::store::{Checkpoint, CopyProgress};
use bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};
use futures_util::StreamExt;
use mongodb::Client;

/// The source namespaces a link copies, sorted (the copy's order, which progress relies on).
async fn source_namespaces(
    src: &Client,
    pattern: &NsPattern,
) -> mongodb::error::Result<Vec<String>> {
    let dbs: Vec<String> = match pattern {
        NsPattern::Exact { db, coll } => return Ok(vec![format!("{db}.{coll}")]),
        NsPattern::Database(db) => vec![db.clone()],
        NsPattern::All => src
            .list_database_names()
            .await?
            .into_iter()
            .filter(|d| !SKIP_DBS.contains(&d.as_str()))
            .collect(),
    };
    let mut out = Vec::new();
    for db in dbs {
        let names = src.database(&db).list_collection_names().await?;
        out.extend(
            names
                .into_iter()
                .filter(|c| !is_system_collection(c))
                .map(|c| format!("{db}.{c}")),
        );
    }
    out.sort();
    Ok(out)
}

/// The checkpoint that starts an initial sync from the source position `start`: nothing of
/// the oplog applied yet, nothing copied yet. Stored before the copy begins.
pub fn fresh(mut checkpoint: Checkpoint, start: Timestamp) -> Checkpoint {
    checkpoint.ts = start;
    checkpoint.applied = Timestamp {
        time: 0,
        increment: 0,
    };
    checkpoint.pending_ddl = None;
    checkpoint.initial_sync = Some(CopyProgress::default());
    checkpoint
}

/// Copies what the in-progress `checkpoint` says is left, then stores and returns the
/// checkpoint the link follows the oplog from (at the position taken before the copy).
pub async fn initial_sync(
    rt: &LinkRuntime,
    src: &Client,
    dst: &Client,
    applier: &Applier,
    mut checkpoint: Checkpoint,
) -> Result<Checkpoint, LinkFailure> {
    let start = checkpoint.ts;
    let mut progress = checkpoint.initial_sync.clone().unwrap_or_default();
    let (resume_ns, resume_after) = (progress.ns.clone(), progress.after.clone());
    let tag = rt.spec.tag_documents.then(|| Tag {
        origin: rt.src.id.clone(),
        ts: start,
    });
    let namespaces = source_namespaces(src, &rt.spec.src_ns).await?;
    let mut estimate = 0u64;
    for ns in namespaces.iter().filter(|ns| **ns >= resume_ns) {
        let (db, coll) = ns.split_once('.').unwrap();
        let coll = src.database(db).collection::<Document>(coll);
        estimate += match resume_after.as_ref().filter(|_| *ns == resume_ns) {
            // What is left of the namespace being resumed (an `_id` index range).
            Some(after) => coll.count_documents(after_filter(after)).await?,
            None => coll.estimated_document_count().await?,
        };
    }
    // Copied so far plus what is left.
    progress.total = progress.copied + estimate;
    {
        let mut s = rt.status.lock();
        s.initial_sync_copied = progress.copied;
        s.initial_sync_total = progress.total;
    }
    log::info!(target: "mmm",
        "link {}: initial sync of {} collection(s), about {} documents{}",
        rt.spec.id(),
        namespaces.len(),
        progress.total,
        if resume_ns.is_empty() {
            String::new()
        } else {
            format!(", resumed after {} copied (in {resume_ns})", progress.copied)
        }
    );
    for ns in namespaces.iter().filter(|ns| **ns >= resume_ns) {
        let Some(dst_ns) = rt.spec.src_ns.rename(ns, &rt.spec.dst_ns) else {
            continue;
        };
        let after = if *ns == resume_ns {
            resume_after.clone()
        } else {
            None
        };
        let (db, coll) = ns.split_once('.').unwrap();
        let filter = after.as_ref().map(after_filter).unwrap_or_default();
        let mut cursor = src
            .database(db)
            .collection::<RawDocumentBuf>(coll)
            .find(filter)
            .sort(doc! {"_id": 1})
            .batch_size(1000)
            .batch()
            .await?;
        let mut copy = CopyBatch {
            ns,
            dst_ns: &dst_ns,
            tag: tag.as_ref(),
            mirror: progress.mirror.then_some(dst),
            docs: Vec::new(),
            bytes: 0,
            from: after,
        };
        while let Some(batch) = cursor.next().await {
            let batch = batch?;
            for doc in batch.doc_slices()? {
                let Some(raw) = doc.map_err(unreadable)?.as_document() else {
                    continue;
                };
                let id = raw
                    .get("_id")
                    .map_err(unreadable)?
                    .and_then(|v| Bson::try_from(v.to_raw_bson()).ok())
                    .ok_or_else(|| {
                        LinkFailure::Unreplicable(format!(
                            "initial sync: a document of {ns} has no _id"
                        ))
                    })?;
                copy.bytes += raw.as_bytes().len();
                copy.docs.push((id, raw.to_raw_document_buf()));
                if copy.docs.len() >= rt.batch_limit.ops() || copy.bytes >= rt.batch_limit.bytes() {
                    copy.flush(rt, applier, &mut checkpoint, &mut progress, false)
                        .await?;
                }
            }
        }
        copy.flush(rt, applier, &mut checkpoint, &mut progress, true)
            .await?;
    }
    log::info!(target: "mmm",
        "link {}: initial sync copied {} documents",
        rt.spec.id(),
        progress.copied
    );
    let done = Checkpoint {
        applied: start,
        initial_sync: None,
        ..checkpoint
    };
    applier.apply(&Plan::default(), &done).await?;
    Ok(done)
}

/// A source reply that is not well-formed BSON: read again after a backoff.
fn unreadable(e: bson::raw::Error) -> LinkFailure {
    LinkFailure::Transient(format!(
        "initial sync: unreadable reply from the source: {e}"
    ))
}

/// The documents of one namespace read and not yet applied, in `_id` order.
struct CopyBatch<'a> {
    ns: &'a str,
    dst_ns: &'a str,
    tag: Option<&'a Tag>,
    /// Mirroring (a resync that asked for it): the destination, whose documents the source
    /// does not have are deleted range by range.
    mirror: Option<&'a Client>,
    docs: Vec<(Bson, RawDocumentBuf)>,
    bytes: usize,
    /// The last `_id` applied before these (None: the start of the namespace).
    from: Option<Bson>,
}

impl CopyBatch<'_> {
    /// Applies the documents read so far together with the progress they make. `last`: the
    /// namespace is done (a mirror then also covers the range after its last document).
    async fn flush(
        &mut self,
        rt: &LinkRuntime,
        applier: &Applier,
        checkpoint: &mut Checkpoint,
        progress: &mut CopyProgress,
        last: bool,
    ) -> Result<(), LinkFailure> {
        if self.docs.is_empty() && !(last && self.mirror.is_some()) {
            return Ok(());
        }
        let docs = std::mem::take(&mut self.docs);
        self.bytes = 0;
        let until = if last {
            None
        } else {
            docs.last().map(|(id, _)| id.clone())
        };
        let mut plan = Plan::default();
        if let Some(dst) = self.mirror {
            // Deletes first: a destination `_id` equal but not identical to a copied one
            // (1.0 and 1) is removed before the copy is inserted.
            for id in self.extras(dst, &docs, until.as_ref()).await? {
                let mut op = RawDocumentBuf::new();
                op.append("op", "d");
                op.append("ns", self.ns);
                let mut o = RawDocumentBuf::new();
                o.append(
                    "_id",
                    bson::RawBson::try_from(id).map_err(|e| {
                        LinkFailure::Unreplicable(format!("initial sync of {}: {e}", self.ns))
                    })?,
                );
                op.append("o", o);
                self.add(&mut plan, &op)?;
            }
        }
        let copied = docs.len();
        for (_, raw) in &docs {
            let mut op = RawDocumentBuf::new();
            op.append("op", "i");
            op.append("ns", self.ns);
            op.append("o", raw.clone());
            self.add(&mut plan, &op)?;
        }
        let last_id = docs.last().map(|(id, _)| id.clone()).or(self.from.clone());
        if plan.is_empty() && last_id == progress.after && self.ns == progress.ns {
            return Ok(());
        }
        copy_batch(
            rt, applier, checkpoint, progress, self.ns, &last_id, copied, plan,
        )
        .await?;
        self.from = last_id;
        Ok(())
    }

    fn add(&self, plan: &mut Plan, op: &RawDocumentBuf) -> Result<(), LinkFailure> {
        plan.add_tagged(self.dst_ns, op, self.tag)
            .map_err(|e| LinkFailure::Unreplicable(format!("initial sync of {}: {e}", self.ns)))
    }

    /// Destination `_id`s after `self.from` and up to `until` (to the end when None) that are
    /// not among `docs`.
    async fn extras(
        &self,
        dst: &Client,
        docs: &[(Bson, RawDocumentBuf)],
        until: Option<&Bson>,
    ) -> Result<Vec<Bson>, LinkFailure> {
        let (db, coll) = self.dst_ns.split_once('.').unwrap_or((self.dst_ns, ""));
        let mut range = vec![self.from.as_ref().map(after_filter).unwrap_or_default()];
        if let Some(until) = until {
            range.push(doc! {"$nor": [after_filter(until)]});
        }
        let copied: std::collections::HashSet<Vec<u8>> =
            docs.iter().map(|(id, _)| id_bytes(id)).collect();
        let mut cursor = dst
            .database(db)
            .collection::<Document>(coll)
            .find(doc! {"$and": range})
            .projection(doc! {"_id": 1})
            .await?;
        let mut out = Vec::new();
        while let Some(d) = cursor.next().await {
            if let Some(id) = d?.get("_id") {
                if !copied.contains(&id_bytes(id)) {
                    out.push(id.clone());
                }
            }
        }
        Ok(out)
    }
}

fn id_bytes(id: &Bson) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = doc! {"": id.clone()}.to_writer(&mut out);
    out
}

/// Applies one copy batch (`copied` documents) together with the progress it makes.
#[allow(clippy::too_many_arguments)]
async fn copy_batch(
    rt: &LinkRuntime,
    applier: &Applier,
    checkpoint: &mut Checkpoint,
    progress: &mut CopyProgress,
    ns: &str,
    last_id: &Option<Bson>,
    copied: usize,
    plan: Plan,
) -> Result<(), LinkFailure> {
    let next = CopyProgress {
        ns: ns.to_string(),
        after: last_id.clone(),
        copied: progress.copied + copied as u64,
        total: progress.total.max(progress.copied + copied as u64),
        mirror: progress.mirror,
    };
    let with_progress = Checkpoint {
        initial_sync: Some(next.clone()),
        ..checkpoint.clone()
    };
    let applied = rt.batch_outcome(applier.apply(&plan, &with_progress).await, copied)?;
    // Copies are not counted as applied ops; documents the destination refused and a
    // `journal` link set aside are counted as rejected.
    checkpoint.rejected += applied.rejected;
    *progress = next;
    let mut s = rt.status.lock();
    s.rejected += applied.rejected;
    s.initial_sync_copied = progress.copied;
    s.initial_sync_total = progress.total;
    Ok(())
}
