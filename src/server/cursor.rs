//! Server-side cursors: buffered results (sorted finds, aggregations), lazy scans over an O(1)
//! snapshot of a collection, and tailable cursors that follow a capped collection's end.

use crate::server::collection::{Record, RecordId};
use crate::server::error::{ServerError, ServerResult};
use crate::server::error_codes::ErrorCode;
use crate::server::query::{KeyValue, Matcher, Projection};
use crate::server::state::{split_ns, State};
use bson::{Document, RawArrayBuf, RawDocumentBuf};
use imbl::OrdMap;
use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;

/// Replies stop growing past this many bytes of documents (mongod: 16 MiB per batch).
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// The first batch of a find without batchSize holds at most this many documents.
pub const DEFAULT_FIRST_BATCH: usize = 101;

pub enum Source {
    Buffered(VecDeque<Arc<Document>>),
    /// Stored records found already (by `_id`), sent as their bytes.
    Records(VecDeque<Record>),
    Scan {
        records: OrdMap<RecordId, Record>,
        /// Where the scan continues: a lower bound forward, an upper bound in reverse.
        next: Bound<RecordId>,
        reverse: bool,
        matcher: Option<Matcher>,
    },
    /// A scan in `_id` order (a find sorted by `_id` alone): the `_id` index, read lazily, as
    /// mongod's IXSCAN on `_id_` serves such a sort without buffering the collection.
    IdOrder {
        index: OrdMap<KeyValue, RecordId>,
        records: OrdMap<RecordId, Record>,
        /// Where the scan continues: a lower bound ascending, an upper bound descending.
        next: Bound<KeyValue>,
        descending: bool,
        matcher: Option<Matcher>,
        /// Matching documents still to pass over (`skip`) before any is returned.
        skip: u64,
    },
    Tail {
        /// The last record scanned; `positioned` is false until a scan actually visited one.
        after: Option<RecordId>,
        positioned: bool,
        matcher: Option<Matcher>,
        await_data: bool,
        /// Matching documents still to pass over (`skip`) before any is returned.
        skip: u64,
    },
}

pub struct Cursor {
    pub ns: String,
    pub source: Source,
    pub projection: Option<Projection>,
    pub limit_remaining: Option<u64>,
    pub batch_size: Option<usize>,
    pub life: crate::server::cursor_table::CursorLife,
    /// Opened by a `readConcern: "majority"` read: its getMores read at the commit point.
    pub majority: bool,
}

pub struct Batch {
    pub docs: RawArrayBuf,
    pub exhausted: bool,
}

impl Cursor {
    pub fn is_await_data(&self) -> bool {
        matches!(
            self.source,
            Source::Tail {
                await_data: true,
                ..
            }
        )
    }

    pub fn is_tailable(&self) -> bool {
        matches!(self.source, Source::Tail { .. })
    }

    /// Takes the next batch of up to `max_docs` documents.
    pub fn next_batch(&mut self, state: &State, max_docs: usize) -> ServerResult<Batch> {
        let mut docs = RawArrayBuf::new();
        let mut bytes = 0usize;
        let mut count = 0usize;
        let max_docs = match self.limit_remaining {
            Some(l) => max_docs.min(l as usize),
            None => max_docs,
        };
        let projection = &self.projection;
        let exhausted = match &mut self.source {
            Source::Buffered(queue) => {
                while count < max_docs && bytes < MAX_BATCH_BYTES {
                    let Some(doc) = queue.pop_front() else { break };
                    bytes += push_document(&mut docs, &doc, projection)?;
                    count += 1;
                }
                // As mongod: a full batch ends before looking further, so the cursor stays
                // open even when nothing follows (the next getMore finds the end).
                queue.is_empty() && count < max_docs
            }
            Source::Records(queue) => {
                while count < max_docs && bytes < MAX_BATCH_BYTES {
                    let Some(rec) = queue.pop_front() else { break };
                    if let Some(len) = emit(&mut docs, &rec, None, projection)? {
                        bytes += len;
                        count += 1;
                    }
                }
                queue.is_empty() && count < max_docs
            }
            Source::Scan {
                records,
                next,
                reverse,
                matcher,
            } => {
                let mut last = None;
                let mut done = true;
                let range: Box<dyn Iterator<Item = (&RecordId, &Record)>> = if *reverse {
                    Box::new(records.range((Bound::Unbounded, *next)).rev())
                } else {
                    Box::new(records.range((*next, Bound::Unbounded)))
                };
                for (rid, rec) in range {
                    if count >= max_docs || bytes >= MAX_BATCH_BYTES {
                        done = false;
                        break;
                    }
                    last = Some(*rid);
                    if let Some(len) = emit(&mut docs, rec, matcher.as_ref(), projection)? {
                        bytes += len;
                        count += 1;
                    }
                }
                if let Some(l) = last {
                    *next = Bound::Excluded(l);
                }
                done && count < max_docs
            }
            Source::IdOrder {
                index,
                records,
                next,
                descending,
                matcher,
                skip,
            } => {
                let bounds = if *descending {
                    (Bound::Unbounded, next.clone())
                } else {
                    (next.clone(), Bound::Unbounded)
                };
                let range = index.range(bounds);
                let entries: Box<dyn Iterator<Item = (&KeyValue, &RecordId)>> = if *descending {
                    Box::new(range.rev())
                } else {
                    Box::new(range)
                };
                let mut last = None;
                let mut done = true;
                for (key, rid) in entries {
                    if count >= max_docs || bytes >= MAX_BATCH_BYTES {
                        done = false;
                        break;
                    }
                    last = Some(key);
                    let Some(rec) = records.get(rid) else {
                        continue;
                    };
                    if *skip > 0 {
                        if matcher.as_ref().is_none_or(|m| m.matches_raw(&rec.raw)) {
                            *skip -= 1;
                        }
                        continue;
                    }
                    if let Some(len) = emit(&mut docs, rec, matcher.as_ref(), projection)? {
                        bytes += len;
                        count += 1;
                    }
                }
                if let Some(key) = last.cloned() {
                    *next = Bound::Excluded(key);
                }
                done && count < max_docs
            }
            Source::Tail {
                after,
                positioned,
                matcher,
                skip,
                ..
            } => {
                let (db, coll) = split_ns(&self.ns);
                let Some(c) = state.coll(db, coll) else {
                    return Err(ServerError::new(
                        ErrorCode::CursorKilled,
                        format!("collection dropped while tailing: {}", self.ns),
                    ));
                };
                if let (Some(pos), true) = (*after, *positioned) {
                    if !c.records.contains_key(&pos)
                        && c.first_record_id().is_some_and(|first| first > pos)
                    {
                        return Err(ServerError::new(
                            ErrorCode::CappedPositionLost,
                            format!(
                                "CollectionScan died due to position in capped collection being deleted. Last seen record id: RecordId({pos})"
                            ),
                        ));
                    }
                }
                let start = match after {
                    Some(p) => Bound::Excluded(*p),
                    None => Bound::Unbounded,
                };
                for (rid, rec) in c.records.range((start, Bound::Unbounded)) {
                    if count >= max_docs || bytes >= MAX_BATCH_BYTES {
                        break;
                    }
                    *after = Some(*rid);
                    *positioned = true;
                    if *skip > 0 {
                        if matcher.as_ref().is_none_or(|m| m.matches_raw(&rec.raw)) {
                            *skip -= 1;
                        }
                        continue;
                    }
                    if let Some(len) = emit(&mut docs, rec, matcher.as_ref(), projection)? {
                        bytes += len;
                        count += 1;
                    }
                }
                false
            }
        };
        if let Some(l) = self.limit_remaining.as_mut() {
            *l -= count as u64;
        }
        let exhausted = exhausted || self.limit_remaining == Some(0);
        Ok(Batch { docs, exhausted })
    }
}

fn push_document(
    docs: &mut RawArrayBuf,
    doc: &Document,
    projection: &Option<Projection>,
) -> ServerResult<usize> {
    let raw = match projection {
        Some(p) => RawDocumentBuf::from_document(&p.try_apply(doc)?),
        None => RawDocumentBuf::from_document(doc),
    }
    .map_err(|e| ServerError::new(ErrorCode::InternalError, e.to_string()))?;
    let len = raw.as_bytes().len();
    docs.push(raw);
    Ok(len)
}

/// Adds a stored record to the batch if it matches: its bytes as they are when there is no
/// projection (no decoding at all when there is no filter either). Returns the bytes added.
fn emit(
    docs: &mut RawArrayBuf,
    rec: &Record,
    matcher: Option<&Matcher>,
    projection: &Option<Projection>,
) -> ServerResult<Option<usize>> {
    if let Some(m) = matcher {
        if !m.matches_raw(&rec.raw) {
            return Ok(None);
        }
    }
    if let Some(p) = projection {
        if let Some(projected) = p.apply_raw(&rec.raw) {
            let len = projected.as_bytes().len();
            docs.push(projected);
            return Ok(Some(len));
        }
        return push_document(docs, &rec.document(), projection).map(Some);
    }
    docs.push(rec.raw.as_ref().clone());
    Ok(Some(rec.size()))
}

pub fn new_cursor_id() -> i64 {
    loop {
        let id: i64 = rand::random::<i64>() & i64::MAX;
        if id != 0 {
            return id;
        }
    }
}
