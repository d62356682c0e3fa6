//! Observation: accounting for a server's own writes in its `__mmm.meta`, by reading its oplog
//! after the position stored in `__mmm.clock` with the rules of `converge/observe.rs`.
//!
//! It runs inside every transaction that applies a batch on the server (so the decision about
//! an arriving version sees every local write that committed before the transaction's
//! snapshot; one committed after it and touching a document the batch writes makes the
//! transaction fail with a write conflict and start over) and on its own, so that the stored
//! position stays recent on servers no batch is applied to.

use crate::converge::observe::ClockState;
use crate::oplog::{Reassembler, Unit};
use crate::store::checkpoints::is_applied_batch;
use crate::store::meta::{self, doc_key, Clock, DocKey, MetaRow};
use crate::store::{ensure_collection, StoreError, META};
use bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};
use mongodb::error::{Error, TRANSIENT_TRANSACTION_ERROR};
use mongodb::options::{Acknowledgment, ReadConcern, TransactionOptions, WriteConcern};
use mongodb::{Client, ClientSession};
use std::collections::HashMap;
use std::time::Duration;

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
pub async fn observe(
    client: &Client,
    site: &str,
    from: &Clock,
    after: Option<Timestamp>,
) -> Result<Observed, Error> {
    let local = client.database("local");
    let mut find = doc! {
        "find": "oplog.rs",
        "filter": {"ts": {"$gt": from.pos}},
        "batchSize": 10_000,
    };
    if let Some(t) = after {
        find.insert(
            "readConcern",
            doc! {"level": "local", "afterClusterTime": t},
        );
    }
    let mut reply = local.run_command(find).await?;
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
    loop {
        let cursor = reply.get_document("cursor").map_err(malformed)?;
        let batch = cursor
            .get_array("firstBatch")
            .or_else(|_| cursor.get_array("nextBatch"))
            .map_err(malformed)?;
        for entry in batch {
            let Bson::Document(entry) = entry else {
                return Err(malformed("not a document"));
            };
            entries += 1;
            let raw = RawDocumentBuf::from_document(entry).map_err(malformed)?;
            reassembler.push_into(raw, &mut units).map_err(malformed)?;
            for unit in units.drain(..) {
                let ts = unit.ts().map_err(malformed)?;
                if ts <= applied {
                    continue;
                }
                applied = ts;
                match &unit {
                    Unit::Transaction(txn) if is_applied_batch(&txn.ops) => {
                        state.applied(&txn.ops);
                    }
                    _ => {
                        for w in state.local(&unit) {
                            let row = MetaRow {
                                ns: w.ns,
                                id: w.id,
                                stamp: w.stamp,
                                deleted: w.deleted,
                                through: ts,
                                fields: None,
                            };
                            rows.insert(row.key(), row);
                        }
                    }
                }
            }
        }
        let id = cursor.get_i64("id").unwrap_or(0);
        if id == 0 {
            break;
        }
        reply = local
            .run_command(doc! {"getMore": id, "collection": "oplog.rs", "batchSize": 10_000})
            .await?;
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

fn zero() -> Timestamp {
    Timestamp {
        time: 0,
        increment: 0,
    }
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
        .map(|(_, row)| row.clone())
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

/// Observes `client`'s server up to now and stores the result: the rows of its local writes
/// and its clock, in one transaction. Returns the clock.
pub async fn observe_and_store(client: &Client, site: &str) -> Result<Clock, Error> {
    ensure_clock(client).await.map_err(|e| e.source)?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut session = client.start_session().await?;
        match observe_once(client, site, &mut session).await {
            Ok(clock) => return Ok(clock),
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
    session: &mut ClientSession,
) -> Result<Clock, Error> {
    session
        .start_transaction()
        .with_options(txn_options())
        .await?;
    let stored_clock = meta::read_clock(client, Some(&mut *session))
        .await
        .map_err(|e| e.source)?
        .ok_or_else(|| Error::custom("__mmm.clock is missing"))?;
    let observed = observe(client, site, &stored_clock, session.operation_time()).await?;
    if observed.clock == stored_clock {
        session.abort_transaction().await?;
        return Ok(stored_clock);
    }
    let keys: Vec<(String, Bson)> = observed
        .rows
        .values()
        .map(|r| (r.ns.clone(), r.id.clone()))
        .collect();
    let stored = meta::read_rows(client, session, &keys).await?;
    meta::write_rows(client, session, &news(&observed.rows, &stored)).await?;
    meta::write_clock(client, session, &observed.clock).await?;
    session.commit_transaction().await?;
    Ok(observed.clock)
}

/// The row of a document on `client`'s server as of now, accounting for local writes not yet
/// observed.
pub async fn current_row(
    client: &Client,
    site: &str,
    ns: &str,
    id: &Bson,
) -> Result<Option<MetaRow>, Error> {
    let clock = ensure_clock(client).await.map_err(|e| e.source)?;
    let stored = meta::read_row(client, ns, id).await.map_err(|e| e.source)?;
    let observed = observe(client, site, &clock, None).await?;
    let key = doc_key(ns, id);
    Ok(match (stored, observed.rows.get(&key)) {
        (Some(s), Some(o)) if s.through < o.through => Some(o.clone()),
        (Some(s), _) => Some(s),
        (None, o) => o.cloned(),
    })
}
