//! Hashes of documents that two servers can compare without sending the documents: equal for
//! documents that hold the same values, whatever the order of their fields. Pure logic.
//!
//! What counts as equal (documented in the README, `mmm verify`):
//! - **Field order does not matter**, at any depth: `{a: 1, b: 2}` and `{b: 2, a: 1}` hash the
//!   same. MongoDB itself compares documents field by field in order, but the order of fields
//!   carries no meaning for an application, and an update applied on two servers may leave
//!   fields in different orders, so that would be a false alarm.
//! - **Types do matter**: `1` (int), `NumberLong(1)`, `1.0` (double), `NumberDecimal("1")` and
//!   `"1"` all hash differently. MongoDB's queries find `1` with `1.0` (numbers compare by
//!   value), but it stores and returns each value with its type, and mmm copies values type for
//!   type, so a type that differs between two servers is a real difference an application can
//!   see (as for mongod's own `dbHash`, which hashes stored bytes). Likewise `0.0` and `-0.0`,
//!   `1.0` and `1.00` as decimals, and the binary subtype.
//! - **Array order matters**: arrays are sequences.
//!
//! Each document's hash is the SHA-256 of a canonical encoding (fields sorted by name,
//! recursively; every value prefixed by its BSON type and, where variable, its length),
//! truncated to 128 bits. A range of documents hashes to the count and the wrapping sum of its
//! documents' hashes, which does not depend on the order the documents were read in and can be
//! split or combined without reading them again.

use bson::raw::{RawBsonRef, RawDocument};
use sha2::{Digest, Sha256};

/// A document's hash (see the module documentation).
pub fn document_hash(doc: &RawDocument, skip_top: &[&str]) -> Result<u128, bson::raw::Error> {
    let mut h = Feed::default();
    feed_document(&mut h, doc, skip_top)?;
    let digest = h.finish();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    Ok(u128::from_le_bytes(first))
}

/// A version's content hash as `__mmm.meta` keeps it: 64 bits of [`document_hash`], without
/// the tag field (`tag_documents` links write a different tag on each server). `None` when the
/// document cannot be read.
pub fn content_hash(doc: &RawDocument) -> Option<i64> {
    let h = document_hash(doc, &[crate::apply::TAG_FIELD]).ok()?;
    Some(h as u64 as i64)
}

/// [`content_hash`] of a parsed document.
pub fn content_hash_of(doc: &bson::Document) -> Option<i64> {
    content_hash(&bson::RawDocumentBuf::from_document(doc).ok()?)
}

/// The documents of a range: how many, and the sum of their hashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeHash {
    pub count: u64,
    pub sum: u128,
}

impl RangeHash {
    pub fn add(&mut self, hash: u128) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(hash);
    }
}

/// The hash's input, gathered into a buffer and handed to SHA-256 a few KiB at a time: the
/// canonical encoding is many pieces of a few bytes each, and each `update` call has a cost of
/// its own. The digest is that of the same byte stream.
struct Feed {
    sha: Sha256,
    pending: Vec<u8>,
}

const FEED_CHUNK: usize = 8 * 1024;

impl Default for Feed {
    fn default() -> Feed {
        Feed {
            sha: Sha256::new(),
            pending: Vec::with_capacity(FEED_CHUNK),
        }
    }
}

impl Feed {
    fn update(&mut self, bytes: impl AsRef<[u8]>) {
        let bytes = bytes.as_ref();
        if self.pending.len() + bytes.len() > FEED_CHUNK {
            self.sha.update(&self.pending);
            self.pending.clear();
            if bytes.len() > FEED_CHUNK {
                self.sha.update(bytes);
                return;
            }
        }
        self.pending.extend_from_slice(bytes);
    }

    fn finish(mut self) -> [u8; 32] {
        self.sha.update(&self.pending);
        self.sha.finalize().into()
    }
}

fn feed_len(h: &mut Feed, len: usize) {
    h.update((len as u64).to_le_bytes());
}

fn feed_bytes(h: &mut Feed, bytes: &[u8]) {
    feed_len(h, bytes.len());
    h.update(bytes);
}

fn feed_document(h: &mut Feed, doc: &RawDocument, skip: &[&str]) -> Result<(), bson::raw::Error> {
    let mut fields = Vec::new();
    for field in doc.iter() {
        let (name, value) = field?;
        if !skip.contains(&name) {
            fields.push((name, value));
        }
    }
    fields.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    feed_len(h, fields.len());
    for (name, value) in fields {
        feed_bytes(h, name.as_bytes());
        feed_value(h, value)?;
    }
    Ok(())
}

fn feed_value(h: &mut Feed, v: RawBsonRef<'_>) -> Result<(), bson::raw::Error> {
    h.update([v.element_type() as u8]);
    match v {
        RawBsonRef::Double(d) => h.update(d.to_bits().to_le_bytes()),
        RawBsonRef::String(s) | RawBsonRef::Symbol(s) | RawBsonRef::JavaScriptCode(s) => {
            feed_bytes(h, s.as_bytes())
        }
        RawBsonRef::Document(d) => feed_document(h, d, &[])?,
        RawBsonRef::Array(a) => {
            let items: Vec<RawBsonRef<'_>> = a.into_iter().collect::<Result<_, _>>()?;
            feed_len(h, items.len());
            for item in items {
                feed_value(h, item)?;
            }
        }
        RawBsonRef::Binary(b) => {
            h.update([u8::from(b.subtype)]);
            feed_bytes(h, b.bytes);
        }
        RawBsonRef::ObjectId(o) => h.update(o.bytes()),
        RawBsonRef::Boolean(b) => h.update([b as u8]),
        RawBsonRef::DateTime(d) => h.update(d.timestamp_millis().to_le_bytes()),
        RawBsonRef::RegularExpression(r) => {
            feed_bytes(h, r.pattern.as_bytes());
            feed_bytes(h, r.options.as_bytes());
        }
        RawBsonRef::JavaScriptCodeWithScope(c) => {
            feed_bytes(h, c.code.as_bytes());
            feed_document(h, c.scope, &[])?;
        }
        RawBsonRef::Int32(i) => h.update(i.to_le_bytes()),
        RawBsonRef::Timestamp(t) => {
            h.update(t.time.to_le_bytes());
            h.update(t.increment.to_le_bytes());
        }
        RawBsonRef::Int64(i) => h.update(i.to_le_bytes()),
        RawBsonRef::Decimal128(d) => h.update(d.bytes()),
        RawBsonRef::DbPointer(_) => {
            // Its parts are not public: its BSON encoding stands for it.
            let mut out = Vec::new();
            let _ = bson::doc! {"": bson::Bson::try_from(v.to_raw_bson()).unwrap_or_default()}
                .to_writer(&mut out);
            feed_bytes(h, &out);
        }
        RawBsonRef::Null | RawBsonRef::Undefined | RawBsonRef::MinKey | RawBsonRef::MaxKey => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, Bson, Decimal128, Document, RawDocumentBuf};
    use std::str::FromStr;

    fn hash(d: Document) -> u128 {
        document_hash(&RawDocumentBuf::from_document(&d).unwrap(), &[]).unwrap()
    }

    #[test]
    fn field_order_does_not_matter_at_any_depth() {
        assert_eq!(
            hash(doc! {"_id": 1, "a": 1, "b": {"x": 1, "y": [1, {"p": 1, "q": 2}]}}),
            hash(doc! {"b": {"y": [1, {"q": 2, "p": 1}], "x": 1}, "a": 1, "_id": 1})
        );
    }

    #[test]
    fn types_values_and_array_order_do() {
        let one = [
            Bson::Int32(1),
            Bson::Int64(1),
            Bson::Double(1.0),
            Bson::Decimal128(Decimal128::from_str("1").unwrap()),
            Bson::String("1".into()),
            Bson::Boolean(true),
        ];
        for (i, a) in one.iter().enumerate() {
            for (j, b) in one.iter().enumerate() {
                assert_eq!(
                    hash(doc! {"v": a.clone()}) == hash(doc! {"v": b.clone()}),
                    i == j,
                    "{a:?} {b:?}"
                );
            }
        }
        assert_ne!(hash(doc! {"a": [1, 2]}), hash(doc! {"a": [2, 1]}));
        assert_ne!(hash(doc! {"a": 0.0}), hash(doc! {"a": -0.0}));
        // Names and values cannot trade places.
        assert_ne!(hash(doc! {"ab": "c"}), hash(doc! {"a": "bc"}));
        assert_ne!(hash(doc! {"a": {"b": 1}}), hash(doc! {"a": 1, "b": 1}));
    }

    #[test]
    fn the_digest_is_that_of_the_canonical_stream_whatever_its_pieces_sizes() {
        // A value longer than the feed's chunk, around small pieces on both sides.
        for long in [10, FEED_CHUNK - 40, FEED_CHUNK + 1, 3 * FEED_CHUNK] {
            let text = "x".repeat(long);
            let mut stream = Vec::new();
            let piece = |out: &mut Vec<u8>, bytes: &[u8]| {
                out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                out.extend_from_slice(bytes);
            };
            stream.extend_from_slice(&2u64.to_le_bytes());
            piece(&mut stream, b"a");
            stream.push(0x02);
            piece(&mut stream, text.as_bytes());
            piece(&mut stream, b"b");
            stream.push(0x10);
            stream.extend_from_slice(&7i32.to_le_bytes());
            let digest = Sha256::digest(&stream);
            let expected = u128::from_le_bytes(digest[..16].try_into().unwrap());
            assert_eq!(hash(doc! {"b": 7, "a": text.clone()}), expected, "{long}");
        }
    }

    #[test]
    fn skipped_top_level_fields_are_left_out() {
        let tagged = doc! {"_id": 1, "v": 2, "__mmm": {"origin": "x"}};
        let raw = RawDocumentBuf::from_document(&tagged).unwrap();
        assert_eq!(
            document_hash(&raw, &["__mmm"]).unwrap(),
            hash(doc! {"_id": 1, "v": 2})
        );
    }

    #[test]
    fn a_range_hash_ignores_read_order() {
        let (mut a, mut b) = (RangeHash::default(), RangeHash::default());
        for h in [1u128, u128::MAX, 7] {
            a.add(h);
        }
        for h in [7u128, 1, u128::MAX] {
            b.add(h);
        }
        assert_eq!(a, b);
    }
}
