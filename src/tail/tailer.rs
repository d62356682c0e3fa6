//! The cursor loop: connect, check, open a tailable awaitData cursor on `local.oplog.rs` after
//! the current position, reassemble and select, hand on deliveries; on network errors back off
//! and resume from the last safe position, so no op is ever skipped.
//!
//! Every read of the oplog is at `readConcern: "majority"`, as MongoDB's change streams read it:
//! the server hands out only entries at or below its majority commit point, and wakes the
//! awaitData getMore when the point moves. So an entry that a failover later rolls back is never
//! replicated nor given to a trigger, at no cost in round trips: on a one-member set, or a set
//! whose secondaries keep up, the point is the newest entry.

use crate::oplog::{Reassembler, Unit};
use bson::{doc, Document, RawDocumentBuf, Timestamp};
use futures_util::StreamExt;
use mongodb::options::{ClientOptions, CollectionOptions, CursorType, ReadConcern};
use mongodb::{Client, Collection};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Where a tailer starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StartAt {
    /// After the newest entry present when the tailer starts.
    Now,
    /// At the oldest entry still in the oplog.
    Oldest,
    /// After this timestamp (a checkpoint); it must still be covered by the oplog.
    After(Timestamp),
}

#[derive(Debug, Clone)]
pub struct TailOptions {
    pub options: ClientOptions,
    pub start: StartAt,
    pub batch_size: u32,
    pub max_await: Duration,
    /// Units at or before this ts were handled already (skip them after resuming).
    pub skip_through: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TailError {
    /// The checkpoint is older than the oldest entry still in the oplog.
    Rollover {
        checkpoint: Timestamp,
        oldest: Timestamp,
        server: String,
    },
    /// The server is not a replica-set member, so it has no oplog.
    NotReplicaSet { server: String },
    /// An entry could not be understood (malformed or half a transaction).
    Malformed(String),
}

impl std::fmt::Display for TailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TailError::Rollover { checkpoint, oldest, server } => write!(
                f,
                "checkpoint Timestamp({}, {}) is no longer in the oplog of {server}: the oldest entry is Timestamp({}, {}). \
                 Operations between them are lost to this tailer; resynchronise (initial sync) and start from a new checkpoint",
                checkpoint.time, checkpoint.increment, oldest.time, oldest.increment
            ),
            TailError::NotReplicaSet { server } => write!(
                f,
                "{server} is not a replica set member, so it has no oplog to follow: start mongod with --replSet <name> and run rs.initiate() once"
            ),
            TailError::Malformed(msg) => write!(f, "cannot read the oplog: {msg}"),
        }
    }
}

/// The units read from one cursor batch.
#[derive(Debug, Default)]
pub struct UnitBatch {
    pub units: Vec<Unit>,
    /// Where a consumer may resume (`ts > checkpoint`) once every unit here is handled.
    pub checkpoint: Option<Timestamp>,
    /// Oplog entries read for this batch.
    pub entries_read: u64,
}

pub type TailEvent = Result<UnitBatch, TailError>;

fn hosts(options: &ClientOptions) -> String {
    options
        .hosts
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The entry just before `ts` in timestamp order (resume with `$gt` to include `ts`).
fn predecessor(ts: Timestamp) -> Timestamp {
    if ts.increment > 0 {
        Timestamp {
            time: ts.time,
            increment: ts.increment - 1,
        }
    } else {
        Timestamp {
            time: ts.time.saturating_sub(1),
            increment: u32::MAX,
        }
    }
}

enum Failure {
    Fatal(TailError),
    Retry(String),
}

impl From<mongodb::error::Error> for Failure {
    fn from(e: mongodb::error::Error) -> Self {
        Failure::Retry(e.to_string())
    }
}

/// `local.oplog.rs`, read at majority: only entries a majority of the set has.
fn majority_oplog<T: Send + Sync>(client: &Client) -> Collection<T> {
    let options = CollectionOptions::builder()
        .read_concern(ReadConcern::majority())
        .build();
    client
        .database("local")
        .collection_with_options("oplog.rs", options)
}

async fn edge_entry_ts(client: &Client, direction: i32) -> Result<Option<Timestamp>, Failure> {
    let oplog = majority_oplog::<Document>(client);
    let entry = oplog
        .find_one(doc! {})
        .sort(doc! {"$natural": direction})
        .projection(doc! {"ts": 1})
        .await?;
    Ok(entry.and_then(|d| d.get_timestamp("ts").ok()))
}

/// Runs until `stop` turns true or a fatal error; deliveries and the fatal error go to `tx`.
pub async fn run(opts: TailOptions, tx: mpsc::Sender<TailEvent>, mut stop: watch::Receiver<bool>) {
    let server = hosts(&opts.options);
    let mut state = Progress {
        start: opts.start,
        last_unit: opts.skip_through,
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = tokio::select! {
            r = follow(&opts, &tx, &mut state, &server) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match attempt {
            Ok(progressed) => {
                if progressed {
                    backoff = Duration::from_millis(100);
                }
            }
            Err(Failure::Fatal(e)) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            Err(Failure::Retry(msg)) => {
                log::warn!(target: "mmm",
                    "oplog tailer on {server}: {msg}; retrying in {:.1}s",
                    backoff.as_secs_f64()
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// What survives a reconnect: where to resume and the last unit handed on.
struct Progress {
    start: StartAt,
    last_unit: Option<Timestamp>,
}

/// One connection's worth of tailing. Ok(true) when the cursor ended after progress.
async fn follow(
    opts: &TailOptions,
    tx: &mpsc::Sender<TailEvent>,
    progress: &mut Progress,
    server: &str,
) -> Result<bool, Failure> {
    let client = Client::with_options(opts.options.clone())?;
    let hello = client
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await?;
    if !hello.contains_key("setName") {
        return Err(Failure::Fatal(TailError::NotReplicaSet {
            server: server.to_string(),
        }));
    }
    let after = match progress.start {
        StartAt::Now => edge_entry_ts(&client, -1).await?.unwrap_or(Timestamp {
            time: 0,
            increment: 0,
        }),
        StartAt::Oldest => edge_entry_ts(&client, 1)
            .await?
            .map(predecessor)
            .unwrap_or(Timestamp {
                time: 0,
                increment: 0,
            }),
        StartAt::After(checkpoint) => {
            if let Some(oldest) = edge_entry_ts(&client, 1).await? {
                if oldest > checkpoint && checkpoint != predecessor(oldest) {
                    return Err(Failure::Fatal(TailError::Rollover {
                        checkpoint,
                        oldest,
                        server: server.to_string(),
                    }));
                }
            }
            checkpoint
        }
    };
    progress.start = StartAt::After(after);
    let oplog = majority_oplog::<RawDocumentBuf>(&client);
    let mut cursor = oplog
        .find(doc! {"ts": {"$gt": after}})
        .cursor_type(CursorType::TailableAwait)
        .max_await_time(opts.max_await)
        .batch_size(opts.batch_size)
        .batch()
        .await?;
    log::info!(target: "mmm",
        "tailing the oplog of {server} after Timestamp({}, {})",
        after.time,
        after.increment
    );
    let mut reassembler = Reassembler::new();
    let mut progressed = false;
    while let Some(batch) = cursor.next().await {
        // CappedPositionLost (136) is retried like any error: the reconnect's check against the
        // oldest entry then reports the rollover with the real oldest timestamp.
        let batch = batch?;
        let docs = batch.doc_slices().map_err(Failure::from)?;
        let mut out = UnitBatch::default();
        let mut units = Vec::new();
        for doc in docs {
            let doc = doc.map_err(|e| Failure::Retry(e.to_string()))?;
            let Some(raw) = doc.as_document() else {
                return Err(Failure::Fatal(TailError::Malformed(
                    "an oplog batch held a non-document".into(),
                )));
            };
            out.entries_read += 1;
            reassembler
                .push_into(raw.to_raw_document_buf(), &mut units)
                .map_err(|e| Failure::Fatal(TailError::Malformed(e.to_string())))?;
            for unit in units.drain(..) {
                let ts = unit
                    .ts()
                    .map_err(|e| Failure::Fatal(TailError::Malformed(e.to_string())))?;
                if progress.last_unit.is_some_and(|last| ts <= last) {
                    continue; // handed on before a reconnect
                }
                progress.last_unit = Some(ts);
                out.units.push(unit);
            }
        }
        if out.entries_read == 0 {
            continue;
        }
        if let Some(resume) = reassembler.resume_ts() {
            progress.start = StartAt::After(resume);
        }
        out.checkpoint = match (&progress.start, progress.last_unit) {
            (StartAt::After(resume), Some(last)) => Some((*resume).min(last)),
            _ => None,
        };
        progressed = true;
        if tx.send(Ok(out)).await.is_err() {
            return Ok(true);
        }
    }
    Ok(progressed)
}
