//! Comparing one namespace on two servers by `_id` ranges: both sides are read in `_id` order
//! (each by its own task, which hashes what it reads, so the two reads and their hashing run in
//! parallel) and merged in MongoDB's `_id` order. Memory holds a few read batches per side,
//! whatever the size of the collection.
//!
//! [`Survey`] cuts the merged stream into ranges of a given number of `_id`s and gives each
//! range's hashes on both sides; [`differing_documents`] reads one range and yields every
//! `_id` whose documents differ, with both versions (what a repair moves).

use super::VerifyError;
use crate::bson_order::{canonical_type, compare};
use crate::doc_hash::{document_hash, RangeHash};
use crate::replicate::id_order::after_filter;
pub use crate::store::verify::IdRange;
use bson::{doc, Bson, Document, RawDocumentBuf};
use futures_util::StreamExt;
use mongodb::Client;
use std::cmp::Ordering;
use std::collections::VecDeque;
use tokio::sync::mpsc;

/// One namespace on one server.
#[derive(Clone)]
pub struct Side {
    /// The server's name (as the configuration names it).
    pub server: String,
    pub client: Client,
    /// `db.coll`.
    pub ns: String,
    /// Top-level fields left out of the comparison (`__mmm` where a link writes it in field
    /// mode: it says where a copy came from, so it differs by design).
    pub skip: Vec<String>,
}

/// The filter of the documents of a range.
pub fn range_filter(range: &IdRange) -> Document {
    match (&range.after, &range.until) {
        (None, None) => doc! {},
        // Both ends in one type bracket: one index range (MongoDB's `$gt`/`$lte` compare
        // within the bracket of their operand, and everything between is in that bracket).
        (Some(a), Some(u)) if canonical_type(a) == canonical_type(u) => {
            doc! {"_id": {"$gt": a.clone(), "$lte": u.clone()}}
        }
        (Some(a), None) => after_filter(a),
        (None, Some(u)) => doc! {"$nor": [after_filter(u)]},
        (Some(a), Some(u)) => doc! {"$and": [after_filter(a), {"$nor": [after_filter(u)]}]},
    }
}

/// A document as one side read it.
pub struct Read {
    pub id: Bson,
    pub hash: u128,
    pub bytes: usize,
    /// The document itself, when the reader keeps them.
    pub doc: Option<RawDocumentBuf>,
}

/// Reads `range` of `side` in `_id` order on a task of its own, hashing each document; batches
/// come out of the returned channel (an error ends it).
fn spawn_reader(
    side: &Side,
    range: &IdRange,
    keep_docs: bool,
) -> mpsc::Receiver<Result<Vec<Read>, VerifyError>> {
    let (tx, rx) = mpsc::channel(2);
    let side = side.clone();
    let filter = range_filter(range);
    tokio::spawn(async move {
        let result = read_side(&side, filter, keep_docs, &tx).await;
        if let Err(e) = result {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

async fn read_side(
    side: &Side,
    filter: Document,
    keep_docs: bool,
    tx: &mpsc::Sender<Result<Vec<Read>, VerifyError>>,
) -> Result<(), VerifyError> {
    let (db, coll) = side.ns.split_once('.').unwrap_or((&side.ns, ""));
    let failed = |e: mongodb::error::Error| VerifyError::Read {
        server: side.server.clone(),
        ns: side.ns.clone(),
        error: e.to_string(),
    };
    let mut cursor = side
        .client
        .database(db)
        .collection::<Document>(coll)
        .find(filter)
        .sort(doc! {"_id": 1})
        .batch()
        .await
        .map_err(failed)?;
    let skip: Vec<&str> = side.skip.iter().map(String::as_str).collect();
    while let Some(batch) = cursor.next().await {
        let batch = batch.map_err(failed)?;
        let mut out = Vec::new();
        for item in batch.doc_slices().map_err(failed)? {
            let unreadable = |e: bson::raw::Error| VerifyError::Read {
                server: side.server.clone(),
                ns: side.ns.clone(),
                error: format!("unreadable document: {e}"),
            };
            let Some(raw) = item.map_err(unreadable)?.as_document() else {
                continue;
            };
            let id = raw
                .get("_id")
                .map_err(unreadable)?
                .and_then(|v| Bson::try_from(v.to_raw_bson()).ok())
                .unwrap_or(Bson::Null);
            out.push(Read {
                id,
                hash: document_hash(raw, &skip).map_err(unreadable)?,
                bytes: raw.as_bytes().len(),
                doc: keep_docs.then(|| raw.to_raw_document_buf()),
            });
        }
        if tx.send(Ok(out)).await.is_err() {
            return Ok(()); // the merge stopped reading
        }
    }
    Ok(())
}

/// One side's reads, a batch at a time.
struct Stream {
    rx: mpsc::Receiver<Result<Vec<Read>, VerifyError>>,
    buffered: VecDeque<Read>,
    done: bool,
}

impl Stream {
    async fn peek(&mut self) -> Result<Option<&Read>, VerifyError> {
        while self.buffered.is_empty() && !self.done {
            match self.rx.recv().await {
                Some(batch) => self.buffered.extend(batch?),
                None => self.done = true,
            }
        }
        Ok(self.buffered.front())
    }
}

/// Both sides' reads of a range merged in `_id` order: each step gives the document(s) of
/// one `_id`, from one side or both.
pub struct Merge {
    a: Stream,
    b: Stream,
}

impl Merge {
    pub fn new(a: &Side, b: &Side, range: &IdRange, keep_docs: bool) -> Merge {
        let stream = |side| Stream {
            rx: spawn_reader(side, range, keep_docs),
            buffered: VecDeque::new(),
            done: false,
        };
        Merge {
            a: stream(a),
            b: stream(b),
        }
    }

    pub async fn next(&mut self) -> Result<Option<(Option<Read>, Option<Read>)>, VerifyError> {
        let order = match (self.a.peek().await?, self.b.peek().await?) {
            (None, None) => return Ok(None),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => compare(&x.id, &y.id),
        };
        Ok(Some(match order {
            Ordering::Less => (self.a.buffered.pop_front(), None),
            Ordering::Greater => (None, self.b.buffered.pop_front()),
            Ordering::Equal => (self.a.buffered.pop_front(), self.b.buffered.pop_front()),
        }))
    }
}

/// One range of a survey and both sides' hashes of it.
#[derive(Debug, Clone)]
pub struct SurveyedRange {
    pub range: IdRange,
    pub a: RangeHash,
    pub b: RangeHash,
}

impl SurveyedRange {
    pub fn differs(&self) -> bool {
        self.a != self.b
    }
}

/// The first pass over a namespace: ranges of `range_size` `_id`s, in order.
pub struct Survey {
    merge: Merge,
    range_size: usize,
    after: Option<Bson>,
    done: bool,
}

impl Survey {
    /// A survey of everything after `after` (from the start when None).
    pub fn new(a: &Side, b: &Side, after: Option<Bson>, range_size: usize) -> Survey {
        let from = IdRange {
            after: after.clone(),
            until: None,
        };
        Survey {
            merge: Merge::new(a, b, &from, false),
            range_size: range_size.max(1),
            after,
            done: false,
        }
    }

    /// The next range, None at the end. The last range is open-ended (it also covers `_id`s
    /// written after the read).
    pub async fn next_range(&mut self) -> Result<Option<SurveyedRange>, VerifyError> {
        if self.done {
            return Ok(None);
        }
        let (mut a, mut b) = (RangeHash::default(), RangeHash::default());
        let mut last = None;
        let mut ids = 0;
        while ids < self.range_size {
            let Some((x, y)) = self.merge.next().await? else {
                self.done = true;
                break;
            };
            ids += 1;
            if let Some(x) = &x {
                a.add(x.hash);
            }
            if let Some(y) = &y {
                b.add(y.hash);
            }
            last = x.or(y).map(|r| r.id);
        }
        if ids == 0 {
            return Ok(None);
        }
        let range = IdRange {
            after: self.after.take(),
            until: if self.done { None } else { last.clone() },
        };
        self.after = last;
        Ok(Some(SurveyedRange { range, a, b }))
    }
}

/// An `_id` whose documents differ, with both versions (None: absent on that side).
#[derive(Debug, Clone)]
pub struct Difference {
    pub id: Bson,
    /// The `_id` just before it in the merged order (None: the range's start), so that
    /// `(before, id]` is a range holding it and nothing else that was read.
    pub before: Option<Bson>,
    pub a_hash: Option<u128>,
    pub b_hash: Option<u128>,
    pub a: Option<RawDocumentBuf>,
    pub b: Option<RawDocumentBuf>,
}

/// Reads `range` on both sides and calls `found` for each `_id` whose documents differ (by the
/// hashes of `doc_hash`: field order ignored, types kept), with both versions. Returns how many
/// `_id`s were compared.
pub async fn differing_documents(
    a: &Side,
    b: &Side,
    range: &IdRange,
    mut found: impl FnMut(Difference),
) -> Result<u64, VerifyError> {
    let mut merge = Merge::new(a, b, range, true);
    let mut before = range.after.clone();
    let mut compared = 0;
    while let Some((x, y)) = merge.next().await? {
        compared += 1;
        let id = x.as_ref().or(y.as_ref()).map(|r| r.id.clone()).unwrap();
        let (a_hash, b_hash) = (x.as_ref().map(|r| r.hash), y.as_ref().map(|r| r.hash));
        if a_hash != b_hash {
            found(Difference {
                id: id.clone(),
                before: before.clone(),
                a_hash,
                b_hash,
                a: x.and_then(|r| r.doc),
                b: y.and_then(|r| r.doc),
            });
        }
        before = Some(id);
    }
    Ok(compared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_within_one_type_is_one_index_range() {
        let r = IdRange {
            after: Some(Bson::Int32(1)),
            until: Some(Bson::Double(9.5)),
        };
        assert_eq!(range_filter(&r), doc! {"_id": {"$gt": 1, "$lte": 9.5}});
        assert_eq!(range_filter(&IdRange::default()), doc! {});
    }

    #[test]
    fn a_range_across_types_keeps_every_bracket_between() {
        let r = IdRange {
            after: Some(Bson::Int32(1)),
            until: Some(Bson::String("k".into())),
        };
        let f = range_filter(&r);
        let parts = f.get_array("$and").unwrap();
        assert_eq!(
            parts[0].as_document().unwrap(),
            &after_filter(&Bson::Int32(1))
        );
        assert_eq!(
            parts[1].as_document().unwrap(),
            &doc! {"$nor": [after_filter(&Bson::String("k".into()))]}
        );
    }
}
