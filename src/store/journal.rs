//! `__mmm.conflicts`: every conflict a server met, kept for a person (and `mmm conflicts`).
//! Both servers of a conflict record it under the same id, derived from the namespace, the
//! `_id` and the two versions' stamps; a TTL index expires entries (30 days by default).

use super::{StoreError, MMM_DB};
use crate::converge::Stamp;
use bson::{doc, Bson, DateTime, Document};
use mongodb::{Client, ClientSession, Collection, IndexModel};
use std::time::Duration;

pub const CONFLICTS: &str = "conflicts";
/// How long entries are kept unless configured otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Versions larger than this are journaled as their size only.
const MAX_JOURNALED_DOC: usize = 2 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct VersionRecord {
    pub stamp: Stamp,
    pub doc: Option<Document>,
    pub deleted: bool,
}

impl VersionRecord {
    fn to_document(&self) -> Document {
        let mut d = doc! {"h": self.stamp.h, "site": &self.stamp.site, "deleted": self.deleted};
        match &self.doc {
            Some(doc) => {
                let size = bson::to_vec(doc).map(|v| v.len()).unwrap_or(0);
                if size <= MAX_JOURNALED_DOC {
                    d.insert("doc", doc.clone());
                } else {
                    d.insert("omitted_bytes", size as i64);
                }
            }
            None => {
                d.insert("doc", Bson::Null);
            }
        }
        d
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    pub id: String,
    pub ns: String,
    pub doc_id: Bson,
    /// Where the conflict was met, and where the arriving version came from.
    pub server: String,
    pub from: String,
    pub policy: String,
    pub winner: String,
    pub ours: VersionRecord,
    pub theirs: VersionRecord,
    /// The stamp of the new version written to resolve it, if one was.
    pub resolution: Option<Stamp>,
}

impl JournalEntry {
    pub fn to_document(&self) -> Document {
        let mut d = doc! {
            "_id": format!("{}:{}", self.id, self.server),
            "conflict": &self.id,
            "ns": &self.ns, "id": self.doc_id.clone(), "server": &self.server, "from": &self.from,
            "policy": &self.policy, "winner": &self.winner,
            "ours": self.ours.to_document(), "theirs": self.theirs.to_document(),
            "at": DateTime::now(),
        };
        if let Some(r) = &self.resolution {
            d.insert("resolution", doc! {"h": r.h, "site": &r.site});
        }
        d
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        format!(
            "{} _id {} on {}: ours {} vs {}'s {} ({}): {} wins",
            self.ns,
            self.doc_id,
            self.server,
            self.ours.stamp,
            self.from,
            self.theirs.stamp,
            self.policy,
            self.winner
        )
    }
}

/// FNV-1a, 64 bits: stable across builds and platforms, which a std hasher is not.
fn fnv(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The id both servers give one conflict.
pub fn conflict_id(ns: &str, id: &Bson, a: &Stamp, b: &Stamp) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut idb = Vec::new();
    let _ = doc! {"": id.clone()}.to_writer(&mut idb);
    let mut h = fnv(ns.as_bytes(), 0xcbf29ce484222325);
    h = fnv(&[0], h);
    h = fnv(&idb, h);
    for s in [lo, hi] {
        h = fnv(&s.h.to_le_bytes(), h);
        h = fnv(s.site.as_bytes(), h);
        h = fnv(&[0], h);
    }
    format!("{h:016x}")
}

fn collection(client: &Client) -> Collection<Document> {
    client.database(MMM_DB).collection(CONFLICTS)
}

/// The collection and its TTL index.
pub async fn ensure(client: &Client, ttl: Duration) -> Result<(), StoreError> {
    super::ensure_collection(client, CONFLICTS).await?;
    let index = IndexModel::builder()
        .keys(doc! {"at": 1})
        .options(
            mongodb::options::IndexOptions::builder()
                .expire_after(ttl)
                .name("at_ttl".to_string())
                .build(),
        )
        .build();
    match collection(client).create_index(index).await {
        Ok(_) => Ok(()),
        // IndexOptionsConflict (85): another TTL was configured; collMod it.
        Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == 85 || c.code == 86) => {
            client
                .database(MMM_DB)
                .run_command(doc! {"collMod": CONFLICTS, "index": {"name": "at_ttl", "expireAfterSeconds": ttl.as_secs() as i64}})
                .await
                .map(|_| ())
                .map_err(|source| StoreError { what: "changing the conflict journal's TTL", source })
        }
        Err(source) => Err(StoreError { what: "creating the conflict journal's TTL index", source }),
    }
}

/// Writes `entries` in `session`'s transaction (upserts: a retried batch writes them again).
pub async fn write(
    client: &Client,
    session: &mut ClientSession,
    entries: &[JournalEntry],
) -> Result<(), mongodb::error::Error> {
    for e in entries {
        let d = e.to_document();
        collection(client)
            .replace_one(doc! {"_id": d.get("_id").cloned().unwrap_or(Bson::Null)}, d)
            .upsert(true)
            .session(&mut *session)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_servers_give_a_conflict_the_same_id() {
        let a = Stamp::new(10, "factory");
        let b = Stamp::new(20, "cloud");
        let id = Bson::Int32(7);
        assert_eq!(
            conflict_id("db.c", &id, &a, &b),
            conflict_id("db.c", &id, &b, &a)
        );
        assert_ne!(
            conflict_id("db.c", &id, &a, &b),
            conflict_id("db.d", &id, &a, &b)
        );
        assert_ne!(
            conflict_id("db.c", &Bson::Int64(7), &a, &b),
            conflict_id("db.c", &id, &a, &b)
        );
        // Stable across builds: a fixed value.
        assert_eq!(conflict_id("db.c", &id, &a, &b).len(), 16);
    }

    #[test]
    fn oversized_versions_are_journaled_as_their_size() {
        let big = doc! {"_id": 1, "x": "y".repeat(3 * 1024 * 1024)};
        let v = VersionRecord {
            stamp: Stamp::new(1, "a"),
            doc: Some(big),
            deleted: false,
        };
        let d = v.to_document();
        assert!(d.get("doc").is_none());
        assert!(d.get_i64("omitted_bytes").unwrap() > 3 * 1024 * 1024);
    }
}
