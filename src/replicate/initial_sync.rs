//! Initial sync: copy a link's existing source documents before following the oplog. The copy
//! runs after the oplog position was taken, and replaying the oplog from there is idempotent,
//! so writes made during the copy are neither lost nor doubled. Copy batches are transactions
//! marked like replicated batches, so the reverse link never sends them back.

use super::runtime::{LinkRuntime, MAX_BATCH_BYTES, MAX_BATCH_OPS};
use crate::apply::{Applier, Plan, Tag};
use crate::oplog::NsPattern;
use crate::store::Checkpoint;
use bson::{doc, Document, RawDocumentBuf, Timestamp};
use futures_util::StreamExt;
use mongodb::Client;

use crate::store::namespaces::{is_system_collection, SERVER_DATABASES as SKIP_DBS};

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
        let mut names = src.database(&db).list_collection_names().await?;
        names.sort();
        out.extend(
            names
                .into_iter()
                .filter(|c| !is_system_collection(c))
                .map(|c| format!("{db}.{c}")),
        );
    }
    Ok(out)
}

/// `start`: the source ts the link continues from (field mode tags copies with it).
pub async fn initial_sync(
    rt: &LinkRuntime,
    src: &Client,
    dst: &Client,
    start: Timestamp,
) -> Result<(), mongodb::error::Error> {
    let tag = rt.spec.tag_documents.then(|| Tag {
        origin: rt.src.id.clone(),
        ts: start,
    });
    let marker = format!("{}#initial-sync", rt.spec.id());
    let applier = Applier::new(dst.clone(), &marker).on_reject(rt.spec.on_reject);
    let namespaces = source_namespaces(src, &rt.spec.src_ns).await?;
    let mut total = 0u64;
    for ns in &namespaces {
        let (db, coll) = ns.split_once('.').unwrap();
        total += src
            .database(db)
            .collection::<Document>(coll)
            .estimated_document_count()
            .await?;
    }
    rt.status.lock().initial_sync_total = total;
    log::info!(target: "mmm",
        "link {}: initial sync of {} collection(s), about {total} documents",
        rt.spec.id(),
        namespaces.len()
    );
    let zero = Timestamp {
        time: 0,
        increment: 0,
    };
    let checkpoint = Checkpoint {
        link: marker.clone(),
        origin: rt.src.id.clone(),
        src: rt.src.id.clone(),
        ts: zero,
        applied: zero,
        ops_applied: 0,
        conflicts: 0,
        rejected: 0,
        pending_ddl: None,
    };
    let apply = |plan: Plan| {
        let applier = &applier;
        let checkpoint = &checkpoint;
        async move {
            let applied = applier
                .apply(&plan, checkpoint)
                .await
                .map_err(mongodb::error::Error::custom)?;
            let mut s = rt.status.lock();
            s.initial_sync_copied += plan.ops as u64;
            s.rejected += applied.rejected;
            Ok::<(), mongodb::error::Error>(())
        }
    };
    for ns in &namespaces {
        let Some(dst_ns) = rt.spec.src_ns.rename(ns, &rt.spec.dst_ns) else {
            continue;
        };
        let (db, coll) = ns.split_once('.').unwrap();
        let mut cursor = src
            .database(db)
            .collection::<RawDocumentBuf>(coll)
            .find(doc! {})
            .batch_size(1000)
            .batch()
            .await?;
        let mut plan = Plan::default();
        while let Some(batch) = cursor.next().await {
            let batch = batch?;
            for doc in batch.doc_slices()? {
                let Some(raw) = doc?.as_document() else {
                    continue;
                };
                let mut op = RawDocumentBuf::new();
                op.append("op", "i");
                op.append("ns", ns.as_str());
                op.append("o", raw.to_raw_document_buf());
                plan.add_tagged(&dst_ns, &op, tag.as_ref())
                    .map_err(|e| mongodb::error::Error::custom(e.to_string()))?;
                if plan.ops >= MAX_BATCH_OPS || plan.bytes >= MAX_BATCH_BYTES {
                    apply(std::mem::take(&mut plan)).await?;
                }
            }
        }
        if !plan.is_empty() {
            apply(plan).await?;
        }
    }
    log::info!(target: "mmm",
        "link {}: initial sync copied {} documents",
        rt.spec.id(),
        rt.status.lock().initial_sync_copied
    );
    Ok(())
}
