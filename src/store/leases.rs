//! `__mmm.leases`: one active process per tailer name or replication link, with fencing.
//!
//! A lease is one document `{_id, term, holder: {id, host, pid}, ttl_ms, renewed}` on the server
//! that also holds the checkpoint it protects (a tailer's checkpoint store, a link's
//! destination), because the fence below must be checked in the same transaction as the
//! checkpoint write, and a transaction spans one replica set. A link's lease is therefore per
//! link, on its destination (`link:<link id>`); a tailer's is per name, on its checkpoint store
//! (`tailer:<name>`). Links of one replicator may be held by different processes; each still
//! has exactly one writer.
//!
//! **Time.** `renewed` is written with `$currentDate`, so it is the server's clock, and a
//! lease is expired when `renewed + ttl_ms <= now` with `now` the same server's `hello.localTime`.
//! No holder's clock is ever compared with the server's. Taking an expired lease is a
//! compare-and-swap on the `(term, renewed)` just read, so a renewal that lands in between wins
//! and the taker fails. The holder renews every `ttl / 3` and stops working on its own, by its
//! monotonic clock, `ttl` after it *sent* its last successful renewal (so before the server can
//! judge the lease expired, assuming clocks that tick at nearly the same rate); a waiter polls
//! at the same interval, so a dead or hung holder is replaced within `ttl + interval`.
//!
//! **Fencing: why a paused holder cannot do harm.** Clocks give liveness only; safety rests on
//! the term, which only grows (every takeover is `term + 1`, by compare-and-swap). A new holder
//! first *claims* its checkpoint document: it stamps `term` on it (inserting it if missing)
//! unless a greater term is there. Every later checkpoint write, always inside the transaction
//! that carries the work (a replicated batch, a transactional trigger's writes), matches
//! `term <= mine` and upserts: against a greater term the upsert collides with the existing
//! `_id` (DuplicateKey) and the whole transaction aborts. The claim and the write touch the same
//! document, so the server orders them: a write that committed before the claim is seen by the
//! new holder when it reads the checkpoint after claiming; one that comes after fails; one whose
//! snapshot predates the claim meets a write conflict, is retried and then fails. So a holder
//! paused past its lease (SIGSTOP, a long GC, a partitioned host) wakes up, tries to move the
//! checkpoint, is refused, and goes back to waiting, with none of its transactional work
//! committed. Work done outside that transaction (a non-transactional trigger's side effects,
//! a link's DDL, which is idempotent and announced by a fenced checkpoint first) may happen
//! twice around a takeover: it is at-least-once.

use super::{StoreError, MMM_DB};
use bson::{doc, Bson, DateTime, Document};
use mongodb::error::{Error, ErrorKind, WriteFailure};
use mongodb::Client;
use std::time::Duration;

/// Collection of the leases, in [`MMM_DB`].
pub const LEASES: &str = "leases";
/// `lease_ttl` when none is given.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Longest accepted lease name (a document `_id` stays far below the 16 MB limit).
pub const MAX_NAME_LEN: usize = 64 * 1024;
/// DuplicateKey (MongoDB's src/mongo/base/error_codes.yml).
const DUPLICATE_KEY: i32 = 11000;

/// How often a holder renews and a waiter looks: a third of the TTL, so two renewals may be
/// lost before the lease lapses.
pub fn renew_interval(ttl: Duration) -> Duration {
    ttl / 3
}

/// Refuses a lease name or TTL no lease can have, in a sentence a user can act on.
pub fn validate(name: &str, ttl: Duration) -> Result<(), String> {
    if name.is_empty() {
        return Err("a lease needs a non-empty name".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "a lease name is at most {MAX_NAME_LEN} bytes, got {}",
            name.len()
        ));
    }
    if name.contains('\0') {
        return Err("a lease name cannot contain a NUL character".into());
    }
    if ttl < Duration::from_millis(100) {
        return Err(format!(
            "lease_ttl must be at least 0.1 s, got {:.3} s",
            ttl.as_secs_f64()
        ));
    }
    Ok(())
}

/// The lease `_id` of a tailer name.
pub fn tailer_lease(name: &str) -> String {
    format!("tailer:{name}")
}

/// The lease `_id` of a replication link (on its destination).
pub fn link_lease(link_id: &str) -> String {
    format!("link:{link_id}")
}

/// Who holds (or wants) a lease: a random id per lease keeper, with host and pid for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    pub id: String,
    pub host: String,
    pub pid: u32,
}

impl Holder {
    /// A new holder identity for this process.
    pub fn this_process() -> Holder {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown".into());
        Holder {
            id: uuid::Uuid::new_v4().to_string(),
            host,
            pid: std::process::id(),
        }
    }

    fn to_document(&self) -> Document {
        doc! {"id": &self.id, "host": &self.host, "pid": self.pid as i64}
    }

    fn from_document(d: &Document) -> Option<Holder> {
        Some(Holder {
            id: d.get_str("id").ok()?.to_string(),
            host: d.get_str("host").unwrap_or("?").to_string(),
            pid: d
                .get("pid")
                .and_then(integer)
                .unwrap_or(0)
                .clamp(0, u32::MAX as i64) as u32,
        })
    }
}

/// A lease as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub name: String,
    pub term: i64,
    pub holder: Holder,
    pub ttl_ms: i64,
    /// Last renewal, by the server's clock.
    pub renewed: DateTime,
}

impl Lease {
    /// When the lease lapses, by the server's clock.
    pub fn expires(&self) -> DateTime {
        DateTime::from_millis(self.renewed.timestamp_millis().saturating_add(self.ttl_ms))
    }

    pub fn expired_at(&self, server_now: DateTime) -> bool {
        self.expires() <= server_now
    }

    fn from_document(d: &Document) -> Option<Lease> {
        Some(Lease {
            name: d.get_str("_id").ok()?.to_string(),
            term: integer(d.get("term")?)?,
            holder: Holder::from_document(d.get_document("holder").ok()?)?,
            ttl_ms: d.get("ttl_ms").and_then(integer).unwrap_or(0),
            renewed: *d.get_datetime("renewed").ok()?,
        })
    }
}

/// A whole number stored as any BSON number (a document edited by hand may hold an int32).
fn integer(value: &Bson) -> Option<i64> {
    match value {
        Bson::Int32(n) => Some(*n as i64),
        Bson::Int64(n) => Some(*n),
        Bson::Double(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(*f as i64),
        _ => None,
    }
}

fn leases(client: &Client) -> mongodb::Collection<Document> {
    client.database(MMM_DB).collection(LEASES)
}

fn store_error(what: &'static str) -> impl FnOnce(Error) -> StoreError {
    move |source| StoreError { what, source }
}

pub fn is_duplicate_key(e: &Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// The lease `name` as stored, if any.
pub async fn read(client: &Client, name: &str) -> Result<Option<Lease>, StoreError> {
    let found = leases(client)
        .find_one(doc! {"_id": name})
        .await
        .map_err(store_error("reading a lease"))?;
    Ok(found.as_ref().and_then(Lease::from_document))
}

/// Every lease stored on the server of `client`.
pub async fn read_all(client: &Client) -> Result<Vec<Lease>, StoreError> {
    use futures_util::TryStreamExt;
    let docs: Vec<Document> = leases(client)
        .find(doc! {})
        .await
        .map_err(store_error("reading the leases"))?
        .try_collect()
        .await
        .map_err(store_error("reading the leases"))?;
    Ok(docs.iter().filter_map(Lease::from_document).collect())
}

/// The server's clock (`hello.localTime`).
pub async fn server_now(client: &Client) -> Result<DateTime, StoreError> {
    let hello = client
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .map_err(store_error("reading the server's clock"))?;
    Ok(hello
        .get_datetime("localTime")
        .copied()
        .unwrap_or_else(|_| DateTime::now()))
}

/// What one attempt at a lease found.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// This holder has the lease, with this term.
    Held(i64),
    /// Someone else has it (as read, when it could be read).
    Busy(Option<Lease>),
}

/// One step of a lease keeper: renews the lease if `me` holds it with `term`, else takes it if
/// it is free or expired by the server's clock, else reports who has it.
pub async fn acquire_or_renew(
    client: &Client,
    name: &str,
    me: &Holder,
    ttl: Duration,
    term: Option<i64>,
) -> Result<Attempt, StoreError> {
    let ttl_ms = ttl.as_millis().min(i64::MAX as u128) as i64;
    let coll = leases(client);
    let err = store_error("writing a lease");
    if let Some(term) = term {
        let renewed = coll
            .update_one(
                doc! {"_id": name, "term": term, "holder.id": &me.id},
                doc! {"$set": {"ttl_ms": ttl_ms}, "$currentDate": {"renewed": true}},
            )
            .await
            .map_err(err)?;
        if renewed.matched_count == 1 {
            return Ok(Attempt::Held(term));
        }
    }
    let Some(current) = read(client, name).await? else {
        // No lease yet: the first insert wins, the others collide on `_id`.
        let created = coll
            .update_one(
                doc! {"_id": name, "term": {"$exists": false}},
                doc! {"$set": {"term": 1_i64, "holder": me.to_document(), "ttl_ms": ttl_ms},
                "$currentDate": {"renewed": true}},
            )
            .upsert(true)
            .await;
        return match created {
            Ok(_) => Ok(Attempt::Held(1)),
            Err(e) if is_duplicate_key(&e) => Ok(Attempt::Busy(read(client, name).await?)),
            Err(e) => Err(store_error("writing a lease")(e)),
        };
    };
    if current.holder.id != me.id && !current.expired_at(server_now(client).await?) {
        return Ok(Attempt::Busy(Some(current)));
    }
    // Free (expired or released), or ours from an earlier term: a new term, by
    // compare-and-swap on what was read.
    let next = current.term.saturating_add(1);
    let taken = coll
        .update_one(
            doc! {"_id": name, "term": current.term, "renewed": current.renewed},
            doc! {"$set": {"term": next, "holder": me.to_document(), "ttl_ms": ttl_ms},
            "$currentDate": {"renewed": true}},
        )
        .await
        .map_err(store_error("writing a lease"))?;
    if taken.matched_count == 1 {
        Ok(Attempt::Held(next))
    } else {
        Ok(Attempt::Busy(read(client, name).await?))
    }
}

/// Gives the lease up (at a clean stop) so a waiter takes over at its next look, not after the
/// TTL. The term stays: the next holder's is still greater.
pub async fn release(
    client: &Client,
    name: &str,
    me: &Holder,
    term: i64,
) -> Result<(), StoreError> {
    leases(client)
        .update_one(
            doc! {"_id": name, "term": term, "holder.id": &me.id},
            doc! {"$set": {"ttl_ms": 0_i64}},
        )
        .await
        .map_err(store_error("releasing a lease"))?;
    Ok(())
}

/// The filter of a fenced checkpoint write by the holder of `term`: the document unless a
/// greater term has claimed it. Written with upsert, a fenced write fails on the `_id`.
pub fn fence_filter(id: &str, term: i64) -> Document {
    doc! {"_id": id, "$or": [{"term": {"$lte": term}}, {"term": {"$exists": false}}]}
}

/// Stamps `term` on the checkpoint document `id` of `collection`; when there is none, inserts
/// `first` (a complete first checkpoint, so that a checkpoint document always says where to
/// resume) with the term. Ok(false): a greater term has claimed it, this holder is fenced.
pub async fn claim(
    collection: &mongodb::Collection<Document>,
    id: &str,
    term: i64,
    mut first: Document,
) -> Result<bool, StoreError> {
    first.remove("_id");
    first.remove("term");
    let mut update = doc! {"$set": {"term": term}};
    if !first.is_empty() {
        update.insert("$setOnInsert", first);
    }
    match collection
        .update_one(fence_filter(id, term), update)
        .upsert(true)
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if is_duplicate_key(&e) => Ok(false),
        Err(source) => Err(StoreError {
            what: "claiming a checkpoint for a new lease term",
            source,
        }),
    }
}

/// Lease fields for a status line: holder, term and expiry (ms since the epoch, server clock).
pub fn describe(lease: &Lease) -> Document {
    doc! {
        "name": &lease.name,
        "holder": lease.holder.to_document(),
        "term": lease.term,
        "expires": Bson::DateTime(lease.expires()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_and_ttls_are_refused() {
        let ttl = DEFAULT_TTL;
        assert!(validate("", ttl).unwrap_err().contains("non-empty"));
        assert!(validate(&"x".repeat(MAX_NAME_LEN + 1), ttl).is_err());
        assert!(validate("a\0b", ttl).is_err());
        assert!(validate("$where.a.b", ttl).is_ok());
        assert!(validate("x", Duration::ZERO)
            .unwrap_err()
            .contains("lease_ttl"));
        assert_eq!(
            renew_interval(Duration::from_secs(9)),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn a_lease_expires_by_the_server_clock_it_was_renewed_with() {
        let lease = Lease {
            name: "tailer:t".into(),
            term: 3,
            holder: Holder::this_process(),
            ttl_ms: 1000,
            renewed: DateTime::from_millis(5000),
        };
        assert!(!lease.expired_at(DateTime::from_millis(5999)));
        assert!(lease.expired_at(DateTime::from_millis(6000)));
        let mut d = doc! {"_id": "tailer:t", "term": 3_i64, "holder": lease.holder.to_document(),
        "ttl_ms": 1000_i64, "renewed": DateTime::from_millis(5000)};
        assert_eq!(Lease::from_document(&d), Some(lease));
        d.insert("term", 3_i32);
        assert_eq!(Lease::from_document(&d).map(|l| l.term), Some(3));
        d.insert("term", "3");
        assert_eq!(Lease::from_document(&d), None);
    }
}
