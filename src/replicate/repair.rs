//! Repair: one document that differs between two servers (found by `verify`) is brought into
//! agreement without any link's help, and the decision is journaled on both.
//!
//! A side whose document is no longer the version its `__mmm.meta` row names (its content
//! hash differs: it was written where observation could not see it, in a stretch of oplog
//! lost unobserved) wins over a side that still holds its row's version: that is the later
//! write, not a concurrent one. Otherwise the winner is chosen by the namespace's policy: a
//! delete rule between a present and an absent document, `Prefer`'s server, otherwise the
//! version with the larger stamp (a side with no metadata counts as the oldest possible
//! version; between two such, the larger server id, so every repair of the pair decides the
//! same way). The winner's content is then written on both servers as a new version, stamped
//! above both, through the same transaction that applies a batch (data, `__mmm.meta` row and
//! a checkpoint that marks it as replicated, so no link sends it back as a local write). Both servers end with equal content and equal stamps:
//! `verify` finds them consistent, and later versions of the document are decided as usual.

use super::topology::ServerSpec;
use crate::apply::converge::{same_content, Composite, Converging, Versions};
use crate::apply::observe::observe_and_store;
use crate::apply::{Applier, Batch};
use crate::converge::stamp::resolution_site;
use crate::converge::{lost, Deletes, Knowledge, Policy, PolicyMap, Stamp};
use crate::store::journal::{self, conflict_id, JournalEntry, VersionRecord};
use crate::store::meta;
use crate::store::Checkpoint;
use bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};
use mongodb::options::ClientOptions;
use mongodb::Client;

/// One end of a repaired pair.
pub struct End<'a> {
    pub server: &'a ServerSpec,
    pub options: ClientOptions,
    pub ns: &'a str,
}

struct Side {
    client: Client,
    doc: Option<Document>,
    stamp: Stamp,
    /// Written after the version its row names, unobserved.
    changed: bool,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

async fn read_side(end: &End<'_>, id: &Bson, fields: bool) -> Result<Side, String> {
    let client = Client::with_options(end.options.clone()).map_err(err)?;
    let ns = end.ns.to_string();
    let fields: crate::apply::observe::FieldsNs =
        std::sync::Arc::new(move |n: &str| fields && n == ns);
    observe_and_store(&client, &end.server.id, &fields)
        .await
        .map_err(err)?;
    let (db, coll) = end.ns.split_once('.').unwrap_or((end.ns, ""));
    let doc = client
        .database(db)
        .collection::<Document>(coll)
        .find_one(doc! {"_id": id.clone()})
        .await
        .map_err(err)?;
    let row = meta::read_row(&client, end.ns, id).await.map_err(err)?;
    // Observation is current here, so a document that is not the version its row names was
    // written where observation could not see it (a stretch of oplog lost unobserved).
    let changed = lost::Found {
        server: &end.server.id,
        row: row.as_ref(),
        present: doc.is_some(),
        hash: doc.as_ref().and_then(crate::doc_hash::content_hash_of),
    }
    .change()
        == lost::Change::Changed;
    let stamp = row
        .map(|r| r.stamp)
        .unwrap_or_else(|| Stamp::new(0, end.server.id.clone()));
    Ok(Side {
        client,
        doc,
        stamp,
        changed,
    })
}

/// Which end's version wins (true: `a`).
fn a_wins(policy: &Policy, a: &End, b: &End, sa: &Side, sb: &Side) -> bool {
    // One side changed after the version both rows may still name, the other did not: not a
    // concurrent conflict, the change is simply the later write (`converge/lost.rs`).
    if sa.changed != sb.changed {
        return sa.changed;
    }
    let (a_gone, b_gone) = (sa.doc.is_none(), sb.doc.is_none());
    if a_gone != b_gone {
        match policy.deletes() {
            Deletes::DeleteWins => return a_gone,
            Deletes::UpdateWins => return !a_gone,
            Deletes::Lww => {}
        }
    }
    if let Policy::Prefer { site, .. } = policy {
        if &a.server.id == site {
            return true;
        }
        if &b.server.id == site {
            return false;
        }
    }
    (sa.stamp.h, &a.server.id) > (sb.stamp.h, &b.server.id)
}

fn state_op(ns: &str, id: &Bson, doc: Option<&Document>) -> RawDocumentBuf {
    let d = match doc {
        Some(d) => doc! {"op": "i", "ns": ns, "o": d.clone()},
        None => doc! {"op": "d", "ns": ns, "o": {"_id": id.clone()}},
    };
    RawDocumentBuf::from_document(&d).unwrap_or_default()
}

/// Repairs one `_id`; returns the winning server's name and the new version's stamp, or None
/// when the two already agree.
pub async fn repair_document(
    a: End<'_>,
    b: End<'_>,
    policies: &PolicyMap,
    id: &Bson,
) -> Result<Option<(String, Stamp)>, String> {
    let fields = policies.is_fields(b.ns);
    let sa = read_side(&a, id, fields).await?;
    let sb = read_side(&b, id, fields).await?;
    if same_content(&sa.doc, &sb.doc) {
        return Ok(None);
    }
    let policy = policies.for_namespace(b.ns);
    let a_won = a_wins(&policy, &a, &b, &sa, &sb);
    let (winner, win_side) = if a_won { (&a, &sa) } else { (&b, &sb) };
    let fresh = Stamp::new(
        sa.stamp.h.max(sb.stamp.h).max(0) + 1,
        resolution_site(&winner.server.id),
    );
    let mut know = Knowledge::default();
    know.see(&sa.stamp);
    know.see(&sb.stamp);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0);
    for (end, side, other) in [(&a, &sa, &sb), (&b, &sb, &sa)] {
        let versions = Versions {
            composites: vec![Composite {
                content: Default::default(),
                ns: end.ns.to_string(),
                src_ns: winner.ns.to_string(),
                id: id.clone(),
                ops: vec![state_op(end.ns, id, win_side.doc.as_ref())],
                fields: fields.then(|| {
                    crate::converge::fields::FieldStamps::whole(
                        fresh.clone(),
                        win_side.doc.is_none(),
                    )
                }),
                stamp: fresh.clone(),
                deleted: win_side.doc.is_none(),
                src_ts: Timestamp {
                    time: now,
                    increment: 0,
                },
                know: None,
            }],
            know: know.clone(),
        };
        let link = format!("repair:{}", end.ns);
        let converging = Converging {
            site: end.server.id.clone(),
            src: other.client.clone(),
            src_site: winner.server.id.clone(),
            policies: policies.clone(),
            resolvers: Default::default(),
            observed: Default::default(),
        };
        let checkpoint = Checkpoint {
            link: link.clone(),
            origin: winner.server.id.clone(),
            src: winner.server.id.clone(),
            ts: Timestamp {
                time: now,
                increment: 0,
            },
            applied: Timestamp {
                time: now,
                increment: 0,
            },
            ops_applied: 0,
            conflicts: 0,
            rejected: 0,
            pending_ddl: None,
            initial_sync: None,
            src_clock: None,
            writer_know: Some(know.clone()),
            seen: None,
            seen_covers_rows: false,
        };
        crate::store::ensure_collection(&side.client, crate::store::CHECKPOINTS)
            .await
            .map_err(err)?;
        journal::ensure(&side.client, journal::DEFAULT_TTL)
            .await
            .map_err(err)?;
        Applier::new(side.client.clone(), &link)
            .apply_batch(
                Batch::Versions {
                    versions: &versions,
                    converging: &converging,
                    tag: None,
                },
                &checkpoint,
            )
            .await
            .map_err(err)?;
        let entry = JournalEntry {
            id: conflict_id(end.ns, id, &side.stamp, &other.stamp),
            ns: end.ns.to_string(),
            doc_id: id.clone(),
            server: end.server.id.clone(),
            from: if std::ptr::eq(side, &sa) {
                b.server.id.clone()
            } else {
                a.server.id.clone()
            },
            policy: policy.to_string(),
            winner: format!("repair:{}", winner.server.id),
            ours: VersionRecord {
                stamp: side.stamp.clone(),
                doc: side.doc.clone(),
                deleted: side.doc.is_none(),
            },
            theirs: VersionRecord {
                stamp: other.stamp.clone(),
                doc: other.doc.clone(),
                deleted: other.doc.is_none(),
            },
            resolution: Some(fresh.clone()),
        };
        let mut session = side.client.start_session().await.map_err(err)?;
        session.start_transaction().await.map_err(err)?;
        journal::write(&side.client, &mut session, &[entry])
            .await
            .map_err(err)?;
        session.commit_transaction().await.map_err(err)?;
    }
    Ok(Some((winner.server.name.clone(), fresh)))
}
