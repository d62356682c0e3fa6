//! Observation: accounting for a server's own writes in its `__mmm.meta`, by reading its oplog
//! after the position stored in `__mmm.clock` with the rules of `converge/observe.rs`.
//!
//! It runs inside every transaction that applies a batch on the server (so the decision about
//! an arriving version sees every local write that committed before the transaction's
//! snapshot; one committed after it and touching a document the batch writes makes the
//! transaction fail with a write conflict and start over) and on its own, so that the stored
//! position stays recent on servers no batch is applied to.

use crate::converge::fields::FieldStamps;
use crate::converge::observe::ClockState;
use crate::oplog::fields::{touched_fields, Touched};
use crate::oplog::{Reassembler, Unit};
use crate::store::checkpoints::{checkpoint_in_ops, is_applied_batch};
use crate::store::meta::{self, doc_key, Clock, DocKey, MetaRow};
use crate::store::{ensure_collection, StoreError, META};
use bson::{doc, Bson, Document, RawDocument, RawDocumentBuf, Timestamp};
use mongodb::error::{Error, TRANSIENT_TRANSACTION_ERROR};
use mongodb::options::{Acknowledgment, ReadConcern, TransactionOptions, WriteConcern};
use mongodb::{Client, ClientSession};
use std::collections::HashMap;
use std::time::Duration;

/// Which namespaces of a server are under the `fields` policy: observation keeps field stamps
/// for those only, so that the rows of other namespaces cost what they did.
pub type FieldsNs = std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// No namespace under `fields`.
pub fn no_fields() -> FieldsNs {
    std::sync::Arc::new(|_| false)
}

/// What a stretch of oplog says about a server's own writes.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The clock after the stretch.
    pub clock: Clock,
    /// The latest local write of each document in the stretch.
    pub rows: HashMap<DocKey, MetaRow>,
    /// Entries read.
    pub entries: u64,
}

fn malformed(e: impl std::fmt::Display) -> Error {
    Error::custom(format!("an oplog entry could not be read: {e}"))
}

/// Reads the oplog of `client`'s server after `from` and accounts for it. `after`: a cluster
/// time the read must include (a transaction's snapshot), so that nothing committed before
/// it is missed.
///
/// `fields`: the namespaces under the `fields` policy, whose rows also carry the field stamps
/// of the writes observed (as changes from the stored row: [`with_stored_fields`]).
pub async fn observe(
    client: &Client,
    site: &str,
    from: &Clock,
    after: Option<Timestamp>,
    fields: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Observed, Error> {
    observe_some(client, site, from, after, None, fields).await
}

/// [`observe`], stopping after about `limit` entries (at the end of a unit: the position
/// says where the next observation resumes).
pub async fn observe_some(
    client: &Client,
    site: &str,
    from: &Clock,
    after: Option<Timestamp>,
    limit: Option<u64>,
    fields: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Observed, Error> {
    // Raw documents: entries go to the reassembler as the bytes the server sent, never parsed
    // into documents (observation reads every entry of the server's oplog, payloads included).
    let oplog = client
        .database("local")
        .collection::<RawDocumentBuf>("oplog.rs");
    let mut session = client.start_session().await?;
    if let Some(t) = after {
        // A causally consistent read at `t`: the driver sends `afterClusterTime`.
        session.advance_operation_time(t);
    }
    // A stretch that stops after `limit` entries asks for no more than it reads (plus a few to
    // finish a unit): each entry of a batch is copied by the server and the driver.
    let batch = limit.map_or(10_000, |l| l.saturating_add(16).min(10_000) as u32);
    let mut cursor = oplog
        .find(doc! {"ts": {"$gt": from.pos}})
        .projection(doc! {"o.applyOps": {"$slice": OPS_READ}})
        .batch_size(batch)
        .read_concern(ReadConcern::local())
        .session(&mut session)
        .await?;
    // Entries after `from.pos` that rolled over before this read: rows cannot account for them.
    let mut gap = from.gap;
    let (oldest, _) = edge_entry(client, 1).await?;
    if oldest > from.pos && from.pos != zero() {
        log::warn!(target: "mmm",
            "observing {site}: its oplog rolled over past Timestamp({}, {}) before it was read; \
             links that fell behind it will send every document", from.pos.time, from.pos.increment);
        gap = Some((from.pos, oldest));
    }
    let mut state = ClockState::new(site, from.h, from.know.clone());
    let mut reassembler = Reassembler::new();
    let mut units = Vec::new();
    let mut rows: HashMap<DocKey, MetaRow> = HashMap::new();
    let mut applied = from.applied;
    let mut entries = 0u64;
    while let Some(entry) = cursor.next(&mut session).await {
        if limit.is_some_and(|l| entries >= l) && reassembler.resume_ts().is_some() {
            break;
        }
        entries += 1;
        let mut entry = entry?;
        if !read_enough(&entry) {
            entry = read_whole(&oplog, &mut session, &entry).await?;
        }
        reassembler
            .push_into(entry, &mut units)
            .map_err(malformed)?;
        for unit in units.drain(..) {
            let ts = unit.ts().map_err(malformed)?;
            if ts <= applied {
                continue;
            }
            applied = ts;
            match &unit {
                Unit::Transaction(txn) if is_applied_batch(&txn.ops) => {
                    state.witness_batch(&txn.ops);
                }
                _ => {
                    for (w, op) in state.local_ops(&unit) {
                        let mut row = MetaRow {
                            ns: w.ns,
                            id: w.id,
                            stamp: w.stamp,
                            deleted: w.deleted,
                            through: ts,
                            fields: None,
                            // Known here when the op is the whole document; otherwise read
                            // back when the row is stored ([`hash_contents`]).
                            content: crate::oplog::Entry::new(op)
                                .whole_document()
                                .filter(|_| !w.deleted)
                                .and_then(crate::doc_hash::content_hash),
                        };
                        if fields(&row.ns) {
                            row.fields = Some(observed_fields(
                                rows.remove(&row.key()).and_then(|r| r.fields),
                                op,
                                &row.stamp,
                                row.deleted,
                            ));
                        }
                        rows.insert(row.key(), row);
                    }
                }
            }
        }
    }
    let pos = reassembler.resume_ts().unwrap_or(from.pos).max(from.pos);
    Ok(Observed {
        clock: Clock {
            pos,
            applied,
            h: state.h,
            know: state.know,
            gap,
        },
        rows,
        entries,
    })
}

/// Ops of a transaction's entry an oplog read asks for: enough to tell a batch mmm applied
/// (its checkpoint comes first, after at most a couple of implicit creates), whose other ops
/// observation has no use for, from everything else, which is read again whole. A batch
/// carries megabytes of documents; without the cut the server would send them to every
/// observation of its oplog.
const OPS_READ: i32 = 4;

/// Whether an entry read with at most [`OPS_READ`] ops in `o.applyOps` holds what observation
/// needs: one the cut did not shorten, or a batch mmm applied whose checkpoint says its `seen`
/// covers its rows. An insert or replacement whose document has a long `applyOps` array of
/// its own was cut as well, and is read again.
fn read_enough(entry: &RawDocument) -> bool {
    let Some(ops) = entry
        .get_document("o")
        .ok()
        .and_then(|o| o.get_array("applyOps").ok())
    else {
        return true;
    };
    if ops.into_iter().count() < OPS_READ as usize {
        return true;
    }
    if entry.get_str("op") != Ok("c") {
        return false;
    }
    let ops: Vec<RawDocumentBuf> = ops
        .into_iter()
        .filter_map(|op| Some(op.ok()?.as_document()?.to_raw_document_buf()))
        .collect();
    is_applied_batch(&ops) && checkpoint_in_ops(&ops).is_some_and(|c| c.seen_covers_rows)
}

/// `entry` read again, whole, in the same session.
async fn read_whole(
    oplog: &mongodb::Collection<RawDocumentBuf>,
    session: &mut ClientSession,
    entry: &RawDocument,
) -> Result<RawDocumentBuf, Error> {
    let ts = crate::oplog::Entry::new(entry).ts().map_err(malformed)?;
    oplog
        .find_one(doc! {"ts": {"$gte": ts, "$lte": ts}})
        .session(session)
        .await?
        .ok_or_else(|| {
            Error::custom(format!(
                "oplog entry Timestamp({}, {}) rolled over while it was read",
                ts.time, ts.increment
            ))
        })
}

fn zero() -> Timestamp {
    Timestamp {
        time: 0,
        increment: 0,
    }
}

/// The field stamps observation holds for a document after a local op stamped `stamp`:
/// `prior`, the ones of its earlier ops in the stretch, with the op's own. These are changes
/// (a [`FieldStamps`] whose `base` is `None` unless an op wrote the whole document), completed
/// by the stored row when stored ([`with_stored_fields`]).
pub fn observed_fields(
    prior: Option<FieldStamps>,
    op: &bson::RawDocument,
    stamp: &crate::converge::Stamp,
    deleted: bool,
) -> FieldStamps {
    let mut out = prior.unwrap_or_default();
    let touched = touched_fields(op).unwrap_or(Touched::Whole);
    out.write(&touched, stamp, deleted);
    out
}

/// An observed row completed by the row stored before it: its field stamps are the stored
/// ones joined with the observed changes (local writes come after everything the server held,
/// and the join is idempotent, so changes the stored row already accounts for do no harm).
/// A stored row without field stamps (written before the namespace was under `fields`)
/// counts as one whole-document write at its stamp.
pub fn with_stored_fields(mut row: MetaRow, stored: Option<&MetaRow>) -> MetaRow {
    if let Some(changes) = &row.fields {
        let before = stored
            .map(|s| {
                s.fields
                    .clone()
                    .unwrap_or_else(|| FieldStamps::whole(s.stamp.clone(), s.deleted))
            })
            .unwrap_or_default();
        row.fields = Some(before.merge(changes));
    }
    row
}

/// The rows of `observed` that are news in a transaction that read `stored`: a row written
/// by an apply transaction that already accounted for a later position wins over observation.
pub fn news(
    observed: &HashMap<DocKey, MetaRow>,
    stored: &HashMap<DocKey, MetaRow>,
) -> Vec<MetaRow> {
    observed
        .iter()
        .filter(|(k, row)| stored.get(*k).is_none_or(|s| s.through < row.through))
        .map(|(k, row)| with_stored_fields(row.clone(), stored.get(k)))
        .collect()
}

/// The newest oplog entry's ts and wall time (ms): where a server's clock starts.
pub async fn newest_entry(client: &Client) -> Result<(Timestamp, i64), Error> {
    edge_entry(client, -1).await
}

/// The oldest (1) or newest (-1) oplog entry's ts and wall time (ms).
async fn edge_entry(client: &Client, direction: i32) -> Result<(Timestamp, i64), Error> {
    let last = client
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .sort(doc! {"$natural": direction})
        .projection(doc! {"ts": 1, "wall": 1})
        .await?;
    let zero = zero();
    Ok(match last {
        Some(d) => {
            let ts = d.get_timestamp("ts").unwrap_or(zero);
            let wall = d
                .get_datetime("wall")
                .map(|w| w.timestamp_millis())
                .unwrap_or(ts.time as i64 * 1000);
            (ts, wall)
        }
        None => (zero, 0),
    })
}

/// The server's clock, created at its newest entry if it has none, and `__mmm.meta` ready.
pub async fn ensure_clock(client: &Client) -> Result<Clock, StoreError> {
    ensure_collection(client, META).await?;
    ensure_collection(client, crate::store::CLOCK).await?;
    if let Some(c) = meta::read_clock(client, None).await? {
        return Ok(c);
    }
    let (ts, wall) = newest_entry(client).await.map_err(|source| StoreError {
        what: "reading the newest oplog entry",
        source,
    })?;
    let start = Clock {
        pos: ts,
        applied: ts,
        h: crate::converge::stamp::initial(wall),
        know: Default::default(),
        gap: None,
    };
    meta::ensure_clock(client, &start).await
}

fn txn_options() -> TransactionOptions {
    TransactionOptions::builder()
        .read_concern(ReadConcern::snapshot())
        .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
        .build()
}

/// Entries one stored observation reads at most: a second of a busy server's writes is stored
/// by several short transactions instead of one long one that holds every other client up.
const STORE_EVERY_ENTRIES: u64 = 1_000;

/// Observes `client`'s server up to now and stores the result: the rows of its local writes
/// and its clock, a stretch at a time, each in one transaction. Returns the clock.
pub async fn observe_and_store(
    client: &Client,
    site: &str,
    fields: &FieldsNs,
) -> Result<Clock, Error> {
    observe_and_store_in_turn(client, site, fields, None).await
}

/// [`observe_and_store`], each pass in its turn with the batches this process applies on the
/// server (`turns.rs`).
pub async fn observe_and_store_in_turn(
    client: &Client,
    site: &str,
    fields: &FieldsNs,
    turns: Option<&super::turns::Turns>,
) -> Result<Clock, Error> {
    ensure_clock(client).await.map_err(|e| e.source)?;
    loop {
        let turn = match turns {
            Some(turns) => Some(turns.observation().await),
            None => None,
        };
        let (clock, entries) = observe_and_store_some(client, site, fields).await?;
        drop(turn);
        if entries < STORE_EVERY_ENTRIES {
            return Ok(clock);
        }
    }
}

async fn observe_and_store_some(
    client: &Client,
    site: &str,
    fields: &FieldsNs,
) -> Result<(Clock, u64), Error> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut session = client.start_session().await?;
        match observe_once(client, site, fields, &mut session).await {
            Ok(done) => return Ok(done),
            Err(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) && attempts < 20 => {
                let _ = session.abort_transaction().await;
                tokio::time::sleep(Duration::from_millis(5 * attempts)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn observe_once(
    client: &Client,
    site: &str,
    fields: &FieldsNs,
    session: &mut ClientSession,
) -> Result<(Clock, u64), Error> {
    session
        .start_transaction()
        .with_options(txn_options())
        .await?;
    let stored_clock = meta::read_clock(client, Some(&mut *session))
        .await
        .map_err(|e| e.source)?
        .ok_or_else(|| Error::custom("__mmm.clock is missing"))?;
    let observed = observe_some(
        client,
        site,
        &stored_clock,
        session.operation_time(),
        Some(STORE_EVERY_ENTRIES),
        fields.as_ref(),
    )
    .await?;
    if observed.clock == stored_clock || only_bookkeeping(&observed, &stored_clock) {
        session.abort_transaction().await?;
        return Ok((stored_clock, 0));
    }
    let keys: Vec<(String, Bson)> = observed
        .rows
        .values()
        .map(|r| (r.ns.clone(), r.id.clone()))
        .collect();
    let stored = meta::read_rows(client, session, &keys).await?;
    let mut rows = news(&observed.rows, &stored);
    hash_contents(client, &mut rows, observed.clock.pos).await;
    meta::write_rows_over(client, session, &rows, Some(&stored)).await?;
    meta::write_clock(client, session, &observed.clock).await?;
    session.commit_transaction().await?;
    Ok((observed.clock, observed.entries))
}

/// Whether a short stretch observed holds nothing worth storing: no local write, the clock
/// and what it knows unchanged (only mmm's own bookkeeping, such as the clock writes of earlier
/// stores, or checkpoints of idle links). Storing it would write the clock again, an entry the
/// next pass would find, and so on: an idle server's oplog would fill with clock writes. The
/// stretch is read again next time; a long one is stored all the same, so that the stored
/// position never falls far behind the oplog (an oplog that rolled over past it would look
/// like lost history).
fn only_bookkeeping(observed: &Observed, stored: &Clock) -> bool {
    observed.rows.is_empty()
        && observed.entries < STORE_EVERY_ENTRIES
        && observed.clock.h == stored.h
        && observed.clock.know == stored.know
        && observed.clock.gap == stored.gap
}

/// Documents read back per snapshot read: small enough that a reply stays far below the
/// 16 MB limit for ordinary documents (a reply cut short leaves rows unhashed, never wrong).
const HASH_READ_BATCH: usize = 100;

/// Fills in the content hash of observed rows whose last op was a change to earlier content
/// (an update): their documents are read as they were at `at`, the position observation
/// reached. Every write to such a document up to `at` is accounted for by the row (a later
/// version installed by a batch would carry a row that accounts for the local write, and
/// [`news`] would have left this one out), so the content read there is the row's version.
/// A read that fails (the snapshot left the server's history) leaves the hash unknown, which
/// only makes catching up after a lost stretch more cautious about the document.
async fn hash_contents(client: &Client, rows: &mut [MetaRow], at: Timestamp) {
    let mut wanted: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        if r.content.is_none() && !r.deleted && r.through <= at {
            wanted.entry(r.ns.as_str()).or_default().push(i);
        }
    }
    let wanted: Vec<(String, Vec<usize>)> = wanted
        .into_iter()
        .map(|(ns, i)| (ns.to_string(), i))
        .collect();
    for (ns, indexes) in wanted {
        for chunk in indexes.chunks(HASH_READ_BATCH) {
            let ids: Vec<Bson> = chunk.iter().map(|&i| rows[i].id.clone()).collect();
            let found = match read_at(client, &ns, ids, at).await {
                Ok(found) => found,
                Err(e) => {
                    log::debug!(target: "mmm", "reading {ns} at Timestamp({}, {}) to hash observed versions: {e}", at.time, at.increment);
                    continue;
                }
            };
            for &i in chunk {
                if let Some(hash) = found.get(&doc_key("", &rows[i].id).1) {
                    rows[i].content = *hash;
                }
            }
        }
    }
}

/// The content hashes of the documents `ids` of `ns` as they were at `at` (a snapshot read),
/// by `_id` bytes.
async fn read_at(
    client: &Client,
    ns: &str,
    ids: Vec<Bson>,
    at: Timestamp,
) -> Result<HashMap<Vec<u8>, Option<i64>>, Error> {
    let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
    let reply = client
        .database(db)
        .run_command(doc! {
            "find": coll, "filter": {"_id": {"$in": ids}}, "singleBatch": true,
            "readConcern": {"level": "snapshot", "atClusterTime": at},
        })
        .await?;
    let batch = reply
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"))
        .map_err(|e| Error::custom(format!("a find reply could not be read: {e}")))?;
    Ok(batch
        .iter()
        .filter_map(Bson::as_document)
        .filter_map(|d| {
            let id = d.get("_id")?;
            Some((doc_key("", id).1, crate::doc_hash::content_hash_of(d)))
        })
        .collect())
}

/// The row of a document on `client`'s server as of now, accounting for local writes not yet
/// observed (`fields`: the namespace is under the `fields` policy).
pub async fn current_row(
    client: &Client,
    site: &str,
    ns: &str,
    id: &Bson,
    fields: bool,
) -> Result<Option<MetaRow>, Error> {
    let clock = ensure_clock(client).await.map_err(|e| e.source)?;
    let stored = meta::read_row(client, ns, id).await.map_err(|e| e.source)?;
    let observed = observe(client, site, &clock, None, &|n: &str| fields && n == ns).await?;
    let key = doc_key(ns, id);
    Ok(match (stored, observed.rows.get(&key)) {
        (Some(s), Some(o)) if s.through < o.through => {
            Some(with_stored_fields(o.clone(), Some(&s)))
        }
        (None, Some(o)) => Some(with_stored_fields(o.clone(), None)),
        (Some(s), _) => Some(s),
        (None, None) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::converge::Stamp;
    use bson::RawDocumentBuf;

    fn raw(d: Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).unwrap()
    }

    #[test]
    fn an_entry_cut_to_its_first_ops_is_read_again_unless_it_is_a_covered_applied_batch() {
        // A checkpoint as a link writes it: `seen_rows` says its `seen` covers the rows.
        let checkpoint = |covers: bool| {
            let ts = Timestamp {
                time: 1,
                increment: 1,
            };
            let mut d = doc! {"_id": "l", "origin": "A", "src": "A", "ts": ts, "seen": {}};
            if covers {
                d.insert("seen_rows", true);
            }
            d
        };
        let insert = |i: i32| doc! {"op": "i", "ns": "db.c", "o": {"_id": i}};
        let cut = |first: Document| -> Vec<Document> {
            let mut ops = vec![first];
            ops.extend((0..OPS_READ - 1).map(insert));
            ops
        };
        let batch = |covers: bool| {
            cut(
                doc! {"op": "u", "ns": "__mmm.checkpoints", "o": checkpoint(covers), "o2": {"_id": "l"}},
            )
        };
        let txn =
            |ops: Vec<Document>| raw(doc! {"op": "c", "ns": "admin.$cmd", "o": {"applyOps": ops}});
        // Whole as read: no transaction, or fewer ops than the cut keeps.
        assert!(read_enough(&raw(insert(1))));
        assert!(read_enough(&txn(vec![insert(1), insert(2)])));
        // A batch mmm applied whose checkpoint covers its rows: its other ops are not needed.
        assert!(read_enough(&txn(batch(true))));
        // Read again: a local transaction, a batch whose rows must be read, a user document
        // whose own `applyOps` array the cut shortened.
        assert!(!read_enough(&txn(cut(insert(0)))));
        assert!(!read_enough(&txn(batch(false))));
        let long: Vec<i32> = (0..OPS_READ).collect();
        assert!(!read_enough(&raw(
            doc! {"op": "i", "ns": "db.c", "o": {"_id": 1, "applyOps": long.clone()}}
        )));
        let short: Vec<i32> = (0..OPS_READ - 1).collect();
        assert!(read_enough(&raw(
            doc! {"op": "i", "ns": "db.c", "o": {"_id": 1, "applyOps": short}}
        )));
        // A command named like a transaction but holding something else is read again.
        assert!(!read_enough(&raw(
            doc! {"op": "c", "ns": "admin.$cmd", "o": {"applyOps": long}}
        )));
    }

    fn row(stamp: Stamp, fields: Option<FieldStamps>) -> MetaRow {
        MetaRow {
            ns: "db.c".into(),
            id: Bson::Int32(1),
            stamp,
            deleted: false,
            through: zero(),
            fields,
            content: None,
        }
    }

    #[test]
    fn observed_field_stamps_are_changes_joined_with_the_stored_row() {
        let (s1, s2, s3) = (
            Stamp::new(10, "a"),
            Stamp::new(20, "a"),
            Stamp::new(30, "a"),
        );
        let set_x = raw(
            doc! {"op": "u", "ns": "db.c", "o": {"$v": 2, "diff": {"u": {"x": 1}, "sy": {"u": {"z": 2}}}}, "o2": {"_id": 1}},
        );
        let unset_w =
            raw(doc! {"op": "u", "ns": "db.c", "o": {"$unset": {"w.q": true}}, "o2": {"_id": 1}});
        let changes = observed_fields(None, &set_x, &s2, false);
        assert_eq!(changes.base, None);
        assert_eq!(changes.stamp_of("x"), Some(&s2));
        assert_eq!(changes.stamp_of("y"), Some(&s2));
        assert_eq!(changes.stamp_of("v"), None);
        let changes = observed_fields(Some(changes.clone()), &unset_w, &s3, false);
        assert_eq!(changes.stamp_of("w"), Some(&s3));
        // Joined with the stored row: its other fields keep their stamps.
        let stored = row(s1.clone(), Some(FieldStamps::whole(s1.clone(), false)));
        let done = with_stored_fields(row(s3.clone(), Some(changes.clone())), Some(&stored));
        let fs = done.fields.unwrap();
        assert_eq!(fs.base, Some(s1.clone()));
        assert_eq!(
            (fs.stamp_of("x"), fs.stamp_of("w"), fs.stamp_of("v")),
            (Some(&s2), Some(&s3), Some(&s1))
        );
        // Joining again what the stored row already holds changes nothing.
        let again = with_stored_fields(
            row(s3.clone(), Some(changes.clone())),
            Some(&row(s3.clone(), Some(fs.clone()))),
        );
        assert_eq!(again.fields.unwrap(), fs);
        // A whole write replaces everything; a stored row without field stamps is one whole
        // write at its stamp; no stored row: nothing older.
        let replaced = observed_fields(
            Some(changes.clone()),
            &raw(doc! {"op": "u", "ns": "db.c", "o": {"_id": 1, "k": 1}, "o2": {"_id": 1}}),
            &Stamp::new(40, "a"),
            false,
        );
        assert_eq!(replaced, FieldStamps::whole(Stamp::new(40, "a"), false));
        let legacy = with_stored_fields(
            row(
                s2.clone(),
                Some(observed_fields(None, &unset_w, &s2, false)),
            ),
            Some(&row(s1.clone(), None)),
        );
        assert_eq!(legacy.fields.unwrap().base, Some(s1));
        let fresh = with_stored_fields(
            row(
                s2.clone(),
                Some(observed_fields(None, &unset_w, &s2, false)),
            ),
            None,
        );
        assert_eq!(fresh.fields.unwrap().base, None);
        // Rows of other namespaces carry none and stay as they are.
        assert_eq!(
            with_stored_fields(row(s2.clone(), None), Some(&stored)).fields,
            None
        );
    }
}
