//! Catching up after a link's position left its source's oplog: instead of copying every
//! document again, the link moves the documents its source changed since that position, as
//! versions (content and stamp), read from the source's `__mmm.meta` — the spool.
//!
//! Why this is exact: every write to a document of the source accounts for the document in its
//! `__mmm.meta` row (observation, committed with the observed position in `__mmm.clock`, keeps
//! it even while no link runs), compacted to the latest version per document, and the row says
//! up to where (`t`). Rows whose `t` is at or after the link's position are the documents
//! changed since; each is sent as the version it holds now, with its stamp, and the destination
//! decides it like any arriving version (a conflict journaled and resolved by the policy, a
//! tombstone kept). Before the scan the source's clock is observed at `T0`; the link then
//! follows the oplog from `T0`, and versions the scan already sent arrive again as duplicates.
//! A row written by a transaction that applied a batch records the position observation had
//! reached when it began, which can precede its commit by the transaction's life at most:
//! rows are taken from [`MARGIN_SECONDS`] before the position.
//!
//! When observation itself lost part of the source's oplog (`__mmm.clock` records the gap: no
//! process observed the source while its oplog rolled over), the rows cannot say what changed
//! in the lost stretch: every document of the link's namespaces is then compared with the
//! destination's, and the content hashes the rows hold tell which side changed each document
//! that differs (`converge/lost.rs`).

use super::runtime::{anchor, LinkFailure, LinkRuntime};
use crate::apply::converge::{snapshot_transaction, Composite, Converging, Versions};
use crate::apply::observe::observe;
use crate::apply::{Applier, Batch, Tag};
use crate::converge::fields::FieldStamps;
use crate::converge::{lost, Stamp};
use crate::doc_hash::content_hash_of;
use crate::oplog::NsPattern;
use crate::store::meta::{self, doc_key, MetaRow};
use crate::store::{is_replicable_ns, Checkpoint};
use bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};
use futures_util::TryStreamExt;
use mongodb::Client;
use std::collections::HashMap;

/// Longer than a transaction may live (MongoDB's transactionLifetimeLimitSeconds is 60 s).
pub const MARGIN_SECONDS: u32 = 120;
const BATCH: usize = 500;

/// A filter on `__mmm.meta` for the rows of the link's source namespaces.
/// Rows of the source's own writes say exactly where they were made (`t`); rows written by
/// transactions that applied a batch, where observation had reached when they began.
fn rows_filter(pattern: &NsPattern, since: Option<(&str, Timestamp)>) -> Document {
    let mut f = match pattern {
        NsPattern::Exact { db, coll } => doc! {"_id.n": format!("{db}.{coll}")},
        NsPattern::Database(db) => doc! {"_id.n": {"$regex": format!("^{}\\.", regex_escape(db))}},
        NsPattern::All => doc! {},
    };
    if let Some((site, since)) = since {
        let margin = Timestamp {
            time: since.time.saturating_sub(MARGIN_SECONDS),
            increment: 0,
        };
        f.insert(
            "$or",
            vec![
                doc! {"s": site, "t": {"$gte": since}},
                doc! {"s": {"$ne": site}, "t": {"$gte": margin}},
            ],
        );
    }
    f
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}

/// In field mode, the tag of versions a catch-up sends: they come from the source, as of
/// `ts` on it (as initial sync tags the documents it copies).
fn caught_up_tag(rt: &LinkRuntime, ts: Timestamp) -> Option<Tag> {
    rt.spec.tag_documents.then(|| Tag {
        origin: rt.src.id.clone(),
        ts,
    })
}

/// A whole version as an oplog op: an insert of the document, or a delete of its `_id`.
fn state_op(ns: &str, id: &Bson, doc: Option<&Document>) -> RawDocumentBuf {
    let d = match doc {
        Some(d) => doc! {"op": "i", "ns": ns, "o": d.clone()},
        None => doc! {"op": "d", "ns": ns, "o": {"_id": id.clone()}},
    };
    RawDocumentBuf::from_document(&d).unwrap_or_default()
}

/// Sends the documents changed since the link's checkpoint as versions, then moves the
/// checkpoint to where the source's clock was observed. Returns how many versions were sent.
pub async fn catch_up(
    rt: &LinkRuntime,
    src: &Client,
    applier: &Applier,
    converging: &Converging,
    checkpoint: &Checkpoint,
) -> Result<u64, LinkFailure> {
    let (pos, applied, clock) = anchor(src, &rt.src.id, &rt.src_fields).await?;
    let stored = meta::read_clock(src, None).await?;
    let gap = stored
        .as_ref()
        .and_then(|c| c.gap)
        .filter(|(_, to)| *to > checkpoint.applied);
    let lost = gap.is_some();
    let since = (!lost).then_some((rt.src.id.as_str(), checkpoint.applied));
    log::warn!(target: "mmm",
        "link {}: its position Timestamp({}, {}) left the oplog of {}; catching up from {}",
        rt.spec.id(), checkpoint.applied.time, checkpoint.applied.increment, rt.src.name,
        if lost { "every document (the source's oplog was lost unobserved too)" } else { "the documents changed since (__mmm.meta)" }
    );
    let mut sent = 0u64;
    let dst = Client::with_options(rt.dst_options.clone())?;
    let namespaces: Vec<String> = if lost {
        src_namespaces(src, &rt.spec.src_ns).await?
    } else {
        vec![String::new()]
    };
    for ns in namespaces {
        let mut keys: Vec<(String, Bson)> = Vec::new();
        if lost {
            let (db, coll) = ns.split_once('.').unwrap_or((&ns, ""));
            let mut cursor = src
                .database(db)
                .collection::<Document>(coll)
                .find(doc! {})
                .projection(doc! {"_id": 1})
                .await?;
            while let Some(d) = cursor.try_next().await? {
                if let Some(id) = d.get("_id") {
                    keys.push((ns.clone(), id.clone()));
                }
                if keys.len() >= BATCH {
                    sent += send_differing(
                        rt,
                        src,
                        &dst,
                        applier,
                        converging,
                        checkpoint,
                        &std::mem::take(&mut keys),
                        gap,
                    )
                    .await?;
                }
            }
            if !keys.is_empty() {
                sent += send_differing(
                    rt,
                    src,
                    &dst,
                    applier,
                    converging,
                    checkpoint,
                    &std::mem::take(&mut keys),
                    gap,
                )
                .await?;
            }
        } else {
            let mut cursor = src
                .database(crate::store::MMM_DB)
                .collection::<Document>(crate::store::META)
                .find(rows_filter(&rt.spec.src_ns, since))
                .await?;
            while let Some(d) = cursor.try_next().await? {
                if let Some(row) = MetaRow::from_document(&d) {
                    // Versions that came from the destination are there already.
                    let echo = crate::converge::stamp::server_of(&row.stamp.site) == rt.dst.id;
                    if is_replicable_ns(&row.ns) && !echo {
                        keys.push((row.ns, row.id));
                    }
                }
                if keys.len() >= BATCH {
                    sent += send(
                        rt,
                        src,
                        applier,
                        converging,
                        checkpoint,
                        &std::mem::take(&mut keys),
                    )
                    .await?;
                }
            }
        }
        if !keys.is_empty() {
            sent += send(rt, src, applier, converging, checkpoint, &keys).await?;
        }
        if gap.is_some() {
            sent +=
                remove_vanished(rt, src, &dst, applier, converging, checkpoint, &ns, gap).await?;
        }
    }
    let mut done = checkpoint.clone();
    done.ts = pos;
    done.applied = applied;
    done.src_clock = Some(clock);
    applier.apply(&crate::apply::Plan::default(), &done).await?;
    log::warn!(target: "mmm", "link {}: caught up: {sent} document versions sent; following the oplog again", rt.spec.id());
    Ok(sent)
}

/// With the source's history lost, its rows cannot say which of its documents changed in the
/// lost stretch; their content hashes can. Each document of `keys` whose content differs on
/// the destination is decided by `converge/lost.rs`: sent as a new version (recorded on the
/// source in the transaction that read its content), sent as the version its row names, or
/// left to the link the other way.
#[allow(clippy::too_many_arguments)]
async fn send_differing(
    rt: &LinkRuntime,
    src: &Client,
    dst: &Client,
    applier: &Applier,
    converging: &Converging,
    checkpoint: &Checkpoint,
    keys: &[(String, Bson)],
    gap: Option<(Timestamp, Timestamp)>,
) -> Result<u64, LinkFailure> {
    let Some((gap_from, _)) = gap else {
        return Ok(0);
    };
    let gap_ms = (gap_from.time as i64 + 1) * 1000;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut versions = Versions::default();
    let mut rows = Vec::new();
    // Both sides' documents of the batch, two reads (the keys of one batch share a namespace).
    let fetch = |client: Client, ns: String, ids: Vec<Bson>| async move {
        let (db, coll) = ns.split_once('.').unwrap_or((&ns, ""));
        let found: Vec<Document> = client
            .database(db)
            .collection::<Document>(coll)
            .find(doc! {"_id": {"$in": ids}})
            .await?
            .try_collect()
            .await?;
        Ok::<_, mongodb::error::Error>(
            found
                .into_iter()
                .filter_map(|d| Some((doc_key("", d.get("_id")?).1, d)))
                .collect::<HashMap<_, _>>(),
        )
    };
    let Some((first_ns, _)) = keys.first() else {
        return Ok(0);
    };
    let Some(first_dst) = rt.spec.src_ns.rename(first_ns, &rt.spec.dst_ns) else {
        return Ok(0);
    };
    let ids: Vec<Bson> = keys.iter().map(|(_, id)| id.clone()).collect();
    // The source's documents and rows are read in the transaction that records the new
    // versions: a version that arrived on the source meanwhile (the link the other way
    // catching up too) makes the transaction fail with a write conflict and the batch is
    // decided again, instead of recording a version whose content the source no longer holds.
    let mut session = snapshot_transaction(src).await?;
    let src_docs: HashMap<Vec<u8>, Document> = {
        let (db, coll) = first_ns.split_once('.').unwrap_or((first_ns, ""));
        let mut cursor = src
            .database(db)
            .collection::<Document>(coll)
            .find(doc! {"_id": {"$in": ids.clone()}})
            .session(&mut session)
            .await?;
        let mut found = HashMap::new();
        while let Some(d) = cursor.next(&mut session).await {
            let d = d?;
            if let Some(id) = d.get("_id") {
                found.insert(doc_key("", id).1, d.clone());
            }
        }
        found
    };
    let src_rows = meta::read_rows(src, &mut session, keys).await?;
    let src_hashes: HashMap<&Vec<u8>, Option<i64>> = src_docs
        .iter()
        .map(|(k, d)| (k, content_hash_of(d)))
        .collect();
    // The destination's rows, then its documents only where they may matter: a source
    // document that is still the version its row names, where the destination's row names the
    // same version, needs nothing from this link whatever the destination holds now (a change
    // made there is the link the other way's to send). Rows are small; documents may not be.
    let dst_keys: Vec<(String, Bson)> = keys
        .iter()
        .filter_map(|(ns, id)| Some((rt.spec.src_ns.rename(ns, &rt.spec.dst_ns)?, id.clone())))
        .collect();
    let dst_rows = meta::read_rows(dst, &mut dst.start_session().await?, &dst_keys).await?;
    let settled: std::collections::HashSet<Vec<u8>> = keys
        .iter()
        .zip(&dst_keys)
        .filter(|((ns, id), (dst_ns, _))| {
            let k = doc_key("", id).1;
            let ours = src_hashes.get(&k).copied();
            match (
                src_rows.get(&doc_key(ns, id)),
                dst_rows.get(&doc_key(dst_ns, id)),
            ) {
                (Some(s), Some(d)) if s.stamp == d.stamp && s.deleted == d.deleted => {
                    if s.deleted {
                        ours.is_none()
                    } else {
                        s.content.is_some() && d.content == s.content && ours == Some(s.content)
                    }
                }
                _ => false,
            }
        })
        .map(|((_, id), _)| doc_key("", id).1)
        .collect();
    let wanted: Vec<Bson> = ids
        .into_iter()
        .filter(|id| !settled.contains(&doc_key("", id).1))
        .collect();
    let dst_docs = if wanted.is_empty() {
        HashMap::new()
    } else {
        fetch(dst.clone(), first_dst, wanted).await?
    };
    for (ns, id) in keys {
        let Some(dst_ns) = rt.spec.src_ns.rename(ns, &rt.spec.dst_ns) else {
            continue;
        };
        let k = doc_key("", id).1;
        if settled.contains(&k) {
            continue;
        }
        let ours = src_docs.get(&k).cloned();
        let theirs = dst_docs.get(&k).cloned();
        if crate::apply::converge::same_content(&ours, &theirs) {
            continue;
        }
        let dst_row = dst_rows.get(&doc_key(&dst_ns, id)).cloned();
        let src_row = src_rows.get(&doc_key(ns, id)).cloned();
        let (src_found, dst_found) = (
            lost::Found {
                server: &rt.src.id,
                row: src_row.as_ref(),
                present: ours.is_some(),
                hash: src_hashes.get(&k).copied().flatten(),
            },
            lost::Found {
                server: &rt.dst.id,
                row: dst_row.as_ref(),
                present: theirs.is_some(),
                hash: theirs.as_ref().and_then(content_hash_of),
            },
        );
        let what = lost::send(&src_found, &dst_found, gap_ms);
        log::debug!(target: "mmm", "link {}: {ns} _id {id} differs after a lost stretch from {gap_ms} ms: {what:?} ({:?} here, {:?} there; rows {:?} / {:?})",
            rt.spec.id(), src_found.change(), dst_found.change(), src_row.as_ref().map(|r| &r.stamp), dst_row.as_ref().map(|r| &r.stamp));
        let (stamp, fields) = match (what, &src_row) {
            (lost::Send::Nothing, _) | (lost::Send::AsIs, None) => continue,
            // The source's version as its row names it.
            (lost::Send::AsIs, Some(r)) => {
                let fields = rt.spec.policies.is_fields(&dst_ns).then(|| {
                    r.fields
                        .clone()
                        .unwrap_or_else(|| FieldStamps::whole(r.stamp.clone(), r.deleted))
                });
                (r.stamp.clone(), fields)
            }
            // A new version of the source's content, recorded on the source too.
            (lost::Send::New, _) => {
                let floor = [src_row.as_ref(), dst_row.as_ref()]
                    .into_iter()
                    .flatten()
                    .map(|r| r.stamp.h)
                    .max()
                    .unwrap_or(0);
                let stamp = Stamp::new(
                    crate::converge::stamp::tick(floor, now_ms),
                    crate::converge::stamp::resolution_site(&rt.src.id),
                );
                // Under `fields`, a new version written whole.
                let fields = rt
                    .spec
                    .policies
                    .is_fields(&dst_ns)
                    .then(|| FieldStamps::whole(stamp.clone(), ours.is_none()));
                rows.push(MetaRow {
                    ns: ns.clone(),
                    id: id.clone(),
                    stamp: stamp.clone(),
                    deleted: ours.is_none(),
                    through: gap_from,
                    fields: fields.clone(),
                    content: ours.as_ref().and_then(content_hash_of),
                });
                (stamp, fields)
            }
        };
        versions.composites.push(Composite {
            content: Default::default(),
            ns: dst_ns,
            src_ns: ns.clone(),
            id: id.clone(),
            ops: vec![state_op(ns, id, ours.as_ref())],
            fields,
            stamp,
            deleted: ours.is_none(),
            src_ts: gap_from,
            know: None,
        });
    }
    if versions.composites.is_empty() {
        let _ = session.abort_transaction().await;
        return Ok(0);
    }
    // The source records the versions first: if the destination's batch fails, they are sent
    // again (a duplicate there), never lost.
    meta::write_rows(src, &mut session, &rows).await?;
    session.commit_transaction().await?;
    versions.know.see(&versions.composites[0].stamp);
    let n = versions.composites.len() as u64;
    let tag = caught_up_tag(rt, gap_from);
    let batch = Batch::Versions {
        versions: &versions,
        converging,
        tag: tag.as_ref(),
    };
    applier.apply_batch(batch, checkpoint).await?;
    rt.status.lock().ops_applied += n;
    Ok(n)
}

/// With the source's history lost, a document the destination has and the source does not
/// was either deleted on the source in the lost stretch or written on the destination: those
/// documents are decided like any that differ ([`send_differing`]).
#[allow(clippy::too_many_arguments)]
async fn remove_vanished(
    rt: &LinkRuntime,
    src: &Client,
    dst: &Client,
    applier: &Applier,
    converging: &Converging,
    checkpoint: &Checkpoint,
    src_ns: &str,
    gap: Option<(Timestamp, Timestamp)>,
) -> Result<u64, LinkFailure> {
    let Some(dst_ns) = rt.spec.src_ns.rename(src_ns, &rt.spec.dst_ns) else {
        return Ok(0);
    };
    let (db, coll) = dst_ns.split_once('.').unwrap_or((&dst_ns, ""));
    let (sdb, scoll) = src_ns.split_once('.').unwrap_or((src_ns, ""));
    let mut cursor = dst
        .database(db)
        .collection::<Document>(coll)
        .find(doc! {})
        .projection(doc! {"_id": 1})
        .await?;
    let mut ids = Vec::new();
    let mut sent = 0;
    loop {
        let next = cursor.try_next().await?;
        if let Some(id) = next.as_ref().and_then(|d| d.get("_id")) {
            ids.push(id.clone());
        }
        if ids.len() < BATCH && next.is_some() {
            continue;
        }
        let batch = std::mem::take(&mut ids);
        if !batch.is_empty() {
            let present: std::collections::HashSet<Vec<u8>> = src
                .database(sdb)
                .collection::<Document>(scoll)
                .find(doc! {"_id": {"$in": batch.clone()}})
                .projection(doc! {"_id": 1})
                .await?
                .try_collect::<Vec<Document>>()
                .await?
                .iter()
                .filter_map(|d| d.get("_id"))
                .map(|id| doc_key("", id).1)
                .collect();
            let absent: Vec<(String, Bson)> = batch
                .into_iter()
                .filter(|id| !present.contains(&doc_key("", id).1))
                .map(|id| (src_ns.to_string(), id))
                .collect();
            if !absent.is_empty() {
                sent += send_differing(rt, src, dst, applier, converging, checkpoint, &absent, gap)
                    .await?;
            }
        }
        if next.is_none() {
            return Ok(sent);
        }
    }
}

async fn src_namespaces(src: &Client, pattern: &NsPattern) -> Result<Vec<String>, LinkFailure> {
    let dbs: Vec<String> = match pattern {
        NsPattern::Exact { db, coll } => return Ok(vec![format!("{db}.{coll}")]),
        NsPattern::Database(db) => vec![db.clone()],
        NsPattern::All => src.list_database_names().await?,
    };
    let mut out = Vec::new();
    for db in dbs {
        for coll in src.database(&db).list_collection_names().await? {
            let ns = format!("{db}.{coll}");
            if is_replicable_ns(&ns) {
                out.push(ns);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads the versions of `keys` on the source in one snapshot (content and row, with local
/// writes not yet observed accounted for) and applies them on the destination as a batch.
async fn send(
    rt: &LinkRuntime,
    src: &Client,
    applier: &Applier,
    converging: &Converging,
    checkpoint: &Checkpoint,
    keys: &[(String, Bson)],
) -> Result<u64, LinkFailure> {
    let mut session = snapshot_transaction(src).await?;
    let clock = meta::read_clock(src, Some(&mut session))
        .await?
        .ok_or_else(|| LinkFailure::Transient("__mmm.clock is missing on the source".into()))?;
    let mut rows = meta::read_rows(src, &mut session, keys).await?;
    let observed = observe(
        src,
        &rt.src.id,
        &clock,
        session.operation_time(),
        rt.src_fields.as_ref(),
    )
    .await?;
    for (k, o) in observed.rows {
        if rows.get(&k).is_none_or(|r| r.through < o.through) {
            let o = crate::apply::observe::with_stored_fields(o, rows.get(&k));
            rows.insert(k, o);
        }
    }
    let mut by_ns: HashMap<&str, Vec<Bson>> = HashMap::new();
    for (ns, id) in keys {
        by_ns.entry(ns.as_str()).or_default().push(id.clone());
    }
    let mut docs: HashMap<_, Document> = HashMap::new();
    for (ns, ids) in by_ns {
        let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
        let mut cursor = src
            .database(db)
            .collection::<Document>(coll)
            .find(doc! {"_id": {"$in": ids}})
            .session(&mut session)
            .await?;
        while let Some(d) = cursor.next(&mut session).await {
            let d = d?;
            if let Some(id) = d.get("_id") {
                docs.insert(doc_key(ns, id), d.clone());
            }
        }
    }
    let _ = session.abort_transaction().await;
    let mut versions = Versions {
        composites: Vec::new(),
        know: clock.know.clone(),
    };
    for (ns, id) in keys {
        let Some(dst_ns) = rt.spec.src_ns.rename(ns, &rt.spec.dst_ns) else {
            continue;
        };
        let key = doc_key(ns, id);
        let doc = docs.get(&key);
        // A document with no row was never written since observation began: it is sent with
        // the oldest possible stamp of its source (any version the destination has wins).
        let (stamp, deleted) = match rows.get(&key) {
            Some(r) => (r.stamp.clone(), doc.is_none()),
            None if doc.is_some() => (Stamp::new(0, rt.src.id.clone()), false),
            None => continue,
        };
        // Under `fields`, the row's field stamps (the content sent is the one they describe:
        // both were read in one snapshot).
        let fields = rt.spec.policies.is_fields(&dst_ns).then(|| {
            rows.get(&key)
                .and_then(|r| r.fields.clone())
                .unwrap_or_else(|| FieldStamps::whole(stamp.clone(), deleted))
        });
        versions.composites.push(Composite {
            content: Default::default(),
            fields,
            ns: dst_ns,
            src_ns: ns.clone(),
            id: id.clone(),
            ops: vec![state_op(ns, id, doc)],
            stamp,
            deleted,
            src_ts: clock.pos,
            know: None,
        });
    }
    let n = versions.composites.len() as u64;
    if n > 0 {
        let tag = caught_up_tag(rt, clock.pos);
        let batch = Batch::Versions {
            versions: &versions,
            converging,
            tag: tag.as_ref(),
        };
        applier.apply_batch(batch, checkpoint).await?;
        rt.status.lock().ops_applied += n;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_picked_by_namespace_pattern_and_position() {
        let t = Timestamp {
            time: 500,
            increment: 3,
        };
        let margin = Timestamp {
            time: 380,
            increment: 0,
        };
        assert_eq!(
            rows_filter(&NsPattern::parse("db.c").unwrap(), Some(("A", t))),
            doc! {"_id.n": "db.c", "$or": [{"s": "A", "t": {"$gte": t}}, {"s": {"$ne": "A"}, "t": {"$gte": margin}}]}
        );
        assert_eq!(
            rows_filter(&NsPattern::parse("my-db.*").unwrap(), None),
            doc! {"_id.n": {"$regex": "^my\\-db\\."}}
        );
        assert_eq!(rows_filter(&NsPattern::All, None), doc! {});
    }

    #[test]
    fn versions_travel_as_whole_states() {
        let op = state_op("db.c", &Bson::Int32(1), Some(&doc! {"_id": 1, "a": 2}));
        assert_eq!(
            op.to_document().unwrap(),
            doc! {"op": "i", "ns": "db.c", "o": {"_id": 1, "a": 2}}
        );
        let op = state_op("db.c", &Bson::Int32(1), None);
        assert_eq!(
            op.to_document().unwrap(),
            doc! {"op": "d", "ns": "db.c", "o": {"_id": 1}}
        );
    }
}
