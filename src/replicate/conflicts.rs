//! Conflict detection: a document changed on both sides since they last synced.
//!
//! For servers A and B replicating both ways, an incoming write `v` from B, applied on A by a
//! transaction that committed at A-time `T`, conflicts with a local write `w` of A on the same
//! document when neither saw the other: `w` happened on A before `T`, and B had not yet applied
//! `w` when `v` was made. The second part is read from B's own oplog: the link B -> A passes B's
//! replicated batches from A in order, and each carries its checkpoint (how far A's writes are
//! applied on B); `v` comes after exactly those. A's local writes are recorded by the link that
//! reads A's oplog (A -> B); the check for a batch waits until that reader has passed `T`, so no
//! local write of A that could conflict is missed.

use super::provenance::Provenance;
use crate::oplog::{Entry, OpKind, Unit};
use crate::store::CHECKPOINTS_NS;
use bson::{Bson, Timestamp};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt;

#[derive(Debug, Clone)]
pub struct Conflict {
    /// Where the incoming write was applied over a local change.
    pub server: String,
    /// Where the incoming write came from.
    pub from: String,
    pub namespace: String,
    pub id: Bson,
    /// The local write's ts on `server`.
    pub local_ts: Timestamp,
    /// The commit ts on `server` of the batch that brought the incoming write.
    pub incoming_ts: Timestamp,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} _id {} changed on {} (Timestamp({}, {})) and on {} since they last synced; {}'s version was applied on {} at Timestamp({}, {})",
            self.namespace, self.id, self.server, self.local_ts.time, self.local_ts.increment, self.from, self.from,
            self.server, self.incoming_ts.time, self.incoming_ts.increment
        )
    }
}

/// (namespace, `_id` as BSON bytes): every oplog entry of one document carries the same bytes.
type DocKey = (String, Vec<u8>);

fn id_bytes(id: &Bson) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = bson::doc! {"": id.clone()}.to_writer(&mut out);
    out
}

struct Deferred {
    on: String,
    from: String,
    commit_ts: Timestamp,
    /// Per touched document: how far `from` had applied `on`'s writes when the incoming write
    /// was read from `from`'s oplog.
    touched: Vec<(String, Bson, Timestamp)>,
}

#[derive(Default)]
struct Inner {
    /// Local writes per server: document -> ts of each local write not yet known to be synced.
    local: HashMap<String, HashMap<DocKey, Vec<Timestamp>>>,
    /// How far each server's oplog has been read for local writes.
    read_pos: HashMap<String, Timestamp>,
    /// (server B, server A) -> B has applied A's writes through this A-ts.
    known: HashMap<(String, String), Timestamp>,
    deferred: Vec<Deferred>,
    /// Per unapplied batch (`link#n`): (destination, knowledge captured for its oldest op).
    pins: HashMap<String, (String, Timestamp)>,
    /// Servers whose oplogs are read (checks on other servers are impossible and skipped).
    observed: HashMap<String, ()>,
    /// Servers some link applies to: only their local writes can meet an incoming one.
    written: HashMap<String, ()>,
}

#[derive(Default)]
pub struct ConflictTracker {
    inner: Mutex<Inner>,
}

fn zero() -> Timestamp {
    Timestamp {
        time: 0,
        increment: 0,
    }
}

fn doc_id(entry: &Entry) -> Option<Bson> {
    let key = match entry.op().ok()? {
        OpKind::Insert | OpKind::Delete => entry.o().ok()?,
        OpKind::Update => entry.o2().ok()??,
        _ => return None,
    };
    key.get("_id")
        .ok()?
        .map(|v| v.to_raw_bson().try_into().ok())
        .flatten()
}

impl ConflictTracker {
    /// Declares that `server`'s oplog is read by some link (so checks on it can complete).
    pub fn observe_server(&self, server: &str) {
        self.inner.lock().observed.insert(server.to_string(), ());
    }

    /// Declares that some link applies to `server` (so its local writes are worth recording).
    pub fn write_server(&self, server: &str) {
        self.inner.lock().written.insert(server.to_string(), ());
    }

    /// Whether writes applied on `server` are checked: only when some link reads its oplog.
    pub fn checks(&self, server: &str) -> bool {
        self.inner.lock().observed.contains_key(server)
    }

    /// How far B has applied A's writes, as far as B's oplog has been read. The batch pinned
    /// as `pin` (of a link reading B and applying on A) keeps the local writes this knowledge
    /// does not cover until [`ConflictTracker::after_apply`] or [`ConflictTracker::unpin`].
    pub fn known(&self, pin: &str, b: &str, a: &str) -> Timestamp {
        let mut inner = self.inner.lock();
        let k = inner
            .known
            .get(&(b.to_string(), a.to_string()))
            .copied()
            .unwrap_or_else(zero);
        inner
            .pins
            .entry(pin.to_string())
            .or_insert_with(|| (a.to_string(), k));
        k
    }

    /// The batch pinned under `pin` is applied (or abandoned).
    pub fn unpin(&self, pin: &str) {
        self.inner.lock().pins.remove(pin);
    }

    /// Drops every pin of `link` (its batches are keyed `link#n`): a new session starts over.
    pub fn unpin_link(&self, link: &str) {
        let prefix = format!("{link}#");
        self.inner
            .lock()
            .pins
            .retain(|k, _| !k.starts_with(&prefix));
    }

    /// B has applied A's writes through `applied` (from the reverse link's checkpoint on B).
    pub fn note_known(&self, b: &str, a: &str, applied: Timestamp) {
        let mut inner = self.inner.lock();
        let k = inner
            .known
            .entry((b.to_string(), a.to_string()))
            .or_insert_with(zero);
        if applied > *k {
            *k = applied;
        }
    }

    /// Called for every unit read from `server`'s oplog, in order. Returns conflicts whose
    /// checks completed because the reader moved past their commit.
    pub fn observe(
        &self,
        server: &str,
        ts: Timestamp,
        unit: &Unit,
        provenance: &Provenance,
    ) -> Vec<Conflict> {
        match provenance {
            Provenance::Local => {
                let mut inner = self.inner.lock();
                let inner = &mut *inner;
                // Only writes on a server some link applies to can meet an incoming one.
                if inner.written.contains_key(server) {
                    let writes = inner.local.entry(server.to_string()).or_default();
                    let mut record = |op: &bson::RawDocumentBuf| {
                        let entry = Entry::new(op);
                        if let (Ok(ns), Some(id)) = (entry.ns(), doc_id(&entry)) {
                            let v = writes.entry((ns.to_string(), id_bytes(&id))).or_default();
                            if v.last() != Some(&ts) {
                                v.push(ts);
                            }
                        }
                    };
                    match unit {
                        Unit::Single(op) => record(op),
                        Unit::Transaction(txn) => txn.ops.iter().for_each(&mut record),
                    }
                }
            }
            Provenance::Replicated { .. } => {
                // The checkpoint write says whose writes this batch applied, and through when.
                if let Unit::Transaction(txn) = unit {
                    for op in &txn.ops {
                        let entry = Entry::new(op);
                        if entry.ns().ok() != Some(CHECKPOINTS_NS) {
                            continue;
                        }
                        if let Ok(o) = entry.o() {
                            if let (Ok(src), Ok(applied)) =
                                (o.get_str("src"), o.get_timestamp("applied"))
                            {
                                self.note_known(server, src, applied);
                            }
                        }
                    }
                }
            }
            Provenance::Internal => {}
        }
        let mut inner = self.inner.lock();
        let pos = inner
            .read_pos
            .entry(server.to_string())
            .or_insert_with(zero);
        if ts > *pos {
            *pos = ts;
        }
        Self::run_ready(&mut inner, server)
    }

    /// After a batch from `from` was applied on `on` (committing at `commit_ts`): schedule the
    /// check of the documents it touched, each with the knowledge `from` had when its write was
    /// read (see [`ConflictTracker::known`]). Returns conflicts found now (if the reader of `on`
    /// is already past the commit).
    pub fn after_apply(
        &self,
        pin: &str,
        on: &str,
        from: &str,
        commit_ts: Timestamp,
        touched: Vec<(String, Bson, Timestamp)>,
    ) -> Vec<Conflict> {
        let mut inner = self.inner.lock();
        inner.pins.remove(pin);
        if !inner.observed.contains_key(on) {
            return Vec::new();
        }
        inner.deferred.push(Deferred {
            on: on.to_string(),
            from: from.to_string(),
            commit_ts,
            touched,
        });
        Self::run_ready(&mut inner, on)
    }

    fn run_ready(inner: &mut Inner, server: &str) -> Vec<Conflict> {
        let pos = inner.read_pos.get(server).copied().unwrap_or_else(zero);
        let mut found = Vec::new();
        let mut keep = Vec::new();
        for d in std::mem::take(&mut inner.deferred) {
            if d.on != server || d.commit_ts > pos {
                keep.push(d);
                continue;
            }
            let writes = inner.local.get(server);
            let mut seen = std::collections::HashSet::new();
            for (ns, id, known) in &d.touched {
                let key = (ns.clone(), id_bytes(id));
                if !seen.insert(format!("{ns}\u{0}{id}")) {
                    continue;
                }
                if let Some(ts_list) = writes.and_then(|w| w.get(&key)) {
                    if let Some(local_ts) = ts_list
                        .iter()
                        .rev()
                        .find(|t| **t > *known && **t < d.commit_ts)
                    {
                        found.push(Conflict {
                            server: d.on.clone(),
                            from: d.from.clone(),
                            namespace: ns.clone(),
                            id: id.clone(),
                            local_ts: *local_ts,
                            incoming_ts: d.commit_ts,
                        });
                    }
                }
            }
        }
        inner.deferred = keep;
        Self::prune(inner, server);
        found
    }

    /// Forgets local writes every peer already has and no pending check can still need.
    fn prune(inner: &mut Inner, server: &str) {
        let peers_known = inner
            .known
            .iter()
            .filter(|((_, a), _)| a == server)
            .map(|(_, t)| *t)
            .min();
        let deferred_min = inner
            .deferred
            .iter()
            .filter(|d| d.on == server)
            .flat_map(|d| d.touched.iter().map(|t| t.2));
        let pinned = inner
            .pins
            .values()
            .filter(|(on, _)| on == server)
            .map(|(_, t)| *t);
        let pending_min = deferred_min.chain(pinned).min();
        let floor = match (peers_known, pending_min) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            _ => return,
        };
        if let Some(writes) = inner.local.get_mut(server) {
            writes.retain(|_, v| {
                v.retain(|t| *t > floor);
                !v.is_empty()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, RawDocumentBuf};

    fn ts(i: u32) -> Timestamp {
        Timestamp {
            time: 100,
            increment: i,
        }
    }

    fn insert(id: i32, at: u32) -> (Timestamp, Unit) {
        let raw = RawDocumentBuf::from_document(
            &doc! {"op": "i", "ns": "db.c", "o": {"_id": id}, "ts": ts(at)},
        )
        .unwrap();
        (ts(at), Unit::Single(raw))
    }

    #[test]
    fn concurrent_writes_conflict_and_known_writes_do_not() {
        let t = ConflictTracker::default();
        t.observe_server("A");
        t.write_server("A");
        // A writes docs 1 and 2 locally.
        for (at, unit) in [insert(1, 1), insert(2, 2)] {
            t.observe("A", at, &unit, &Provenance::Local);
        }
        // B had applied A's writes through ts(1) (doc 1) before writing its own versions.
        t.note_known("B", "A", ts(1));
        // B's batch touching both docs commits on A at ts(5); A's reader is not there yet.
        let known = t.known("B->A", "B", "A");
        let touched = vec![
            ("db.c".into(), Bson::Int32(1), known),
            ("db.c".into(), Bson::Int32(2), known),
        ];
        // B learning more afterwards (an echo read after its write) must not hide the conflict.
        t.note_known("B", "A", ts(2));
        let now = t.after_apply("B->A", "A", "B", ts(5), touched);
        assert!(now.is_empty());
        // A's reader passes the commit: doc 2 was changed on A unseen by B -> conflict.
        let (at, unit) = insert(99, 6);
        let found = t.observe("A", at, &unit, &Provenance::Local);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, Bson::Int32(2));
        assert_eq!(found[0].local_ts, ts(2));
    }

    #[test]
    fn writes_after_the_incoming_commit_are_not_conflicts() {
        let t = ConflictTracker::default();
        t.observe_server("A");
        t.write_server("A");
        let deferred = t.after_apply(
            "B->A",
            "A",
            "B",
            ts(3),
            vec![("db.c".into(), Bson::Int32(1), zero())],
        );
        assert!(deferred.is_empty());
        let (at, unit) = insert(1, 4); // A changes doc 1 after B's version landed: it saw it
        assert!(t.observe("A", at, &unit, &Provenance::Local).is_empty());
    }

    #[test]
    fn local_writes_of_a_server_no_link_applies_to_are_not_kept() {
        let t = ConflictTracker::default();
        t.observe_server("A"); // read by a one-way link A -> B, written by none
        for i in 0..100 {
            let (at, unit) = insert(i, i as u32 + 1);
            t.observe("A", at, &unit, &Provenance::Local);
        }
        assert!(t.inner.lock().local.get("A").is_none_or(|w| w.is_empty()));
        assert!(!t.checks("B"));
    }
}
