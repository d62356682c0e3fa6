//! MongoDB's size and nesting limits, checked without recursion so that hostile input is refused
//! before anything recursive (BSON decoding, query and update parsing) touches it.
//!
//! Sources, in mongodb/mongo: `src/mongo/bson/bson_depth.h` (a BSON object may nest 200 levels
//! below its top; stored user documents 20 fewer, i.e. 180 levels counting the top, where empty
//! sub-documents do not count), `src/mongo/bson/util/builder.h` (`BSONObjMaxUserSize` 16 MiB and
//! `BSONObjMaxInternalSize` 16 MiB + 16 KiB for command documents), `src/mongo/db/ops/insert.cpp`
//! and `src/mongo/db/update/storage_validation.cpp` (the errors an insert and an update give).

use crate::server::error::{ErrorCode, ServerError, ServerResult};
use bson::{Bson, Document, RawBsonRef, RawDocument};

/// Largest user document (`maxBsonObjectSize`).
pub const MAX_USER_SIZE: usize = 16 * 1024 * 1024;
/// Largest document in a message: a user document plus room for the command around it.
pub const MAX_INTERNAL_SIZE: usize = MAX_USER_SIZE + 16 * 1024;
/// Levels a BSON object may nest below its top level (`maxBSONDepth`).
pub const MAX_BSON_DEPTH: usize = 200;
/// Levels a stored document may have, its top level included.
pub const MAX_STORAGE_DEPTH: usize = MAX_BSON_DEPTH - 20;
/// Components a field path may have (a path deeper than any document is refused as mongod's
/// `FieldPath` does, before code that walks it one component per level).
pub const MAX_PATH_COMPONENTS: usize = MAX_BSON_DEPTH;

/// What is wrong with a document that arrived as bytes.
#[derive(Debug, PartialEq)]
pub enum BsonFault {
    /// Nested deeper than [`MAX_BSON_DEPTH`] (mongod: `Overflow`).
    TooDeep,
    /// Malformed framing (lengths, terminators, element types).
    Invalid(String),
}

impl BsonFault {
    pub fn to_error(&self) -> ServerError {
        match self {
            BsonFault::TooDeep => ServerError::new(
                ErrorCode::Overflow,
                "BSONObj exceeds maximum nested object depth",
            ),
            BsonFault::Invalid(msg) => ServerError::new(ErrorCode::InvalidBSON, msg.clone()),
        }
    }
}

fn read_i32(bytes: &[u8], at: usize) -> Option<i32> {
    bytes
        .get(at..at + 4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
}

/// Walks the framing of one BSON document with an explicit stack (no recursion): every length
/// within its parent, every document terminated, known element types, and no deeper nesting than
/// [`MAX_BSON_DEPTH`]. UTF-8 and the like are left to the decoder, which is safe to run after.
pub fn check_bson(bytes: &[u8]) -> Result<(), BsonFault> {
    let invalid = |what: &str| Err(BsonFault::Invalid(format!("invalid BSON: {what}")));
    let len = match read_i32(bytes, 0) {
        Some(l) if l >= 5 && l as usize == bytes.len() => l as usize,
        _ => return invalid("bad document length"),
    };
    // Each frame is the index of the terminating NUL of an open document.
    let mut frames: Vec<usize> = vec![len - 1];
    let mut pos = 4;
    while let Some(&end) = frames.last() {
        if pos == end {
            if bytes[pos] != 0 {
                return invalid("document not terminated");
            }
            pos += 1;
            frames.pop();
            continue;
        }
        if pos > end {
            return invalid("element overruns its document");
        }
        let kind = bytes[pos];
        pos += 1;
        let Some(name_len) = bytes[pos..end].iter().position(|b| *b == 0) else {
            return invalid("unterminated field name");
        };
        pos += name_len + 1;
        let string_size = |at: usize| -> Option<usize> {
            let l = read_i32(bytes, at)?;
            (l >= 1 && at + 4 + l as usize <= end && bytes[at + 4 + l as usize - 1] == 0)
                .then_some(4 + l as usize)
        };
        let size = match kind {
            0x01 | 0x09 | 0x11 | 0x12 => 8,
            0x07 => 12,
            0x08 => 1,
            0x10 => 4,
            0x13 => 16,
            0x06 | 0x0A | 0x7F | 0xFF => 0,
            0x02 | 0x0D | 0x0E => match string_size(pos) {
                Some(s) => s,
                None => return invalid("bad string length"),
            },
            0x05 => match read_i32(bytes, pos) {
                Some(l) if l >= 0 => 5 + l as usize,
                _ => return invalid("bad binary length"),
            },
            0x0B => {
                let mut at = pos;
                for _ in 0..2 {
                    match bytes[at..end].iter().position(|b| *b == 0) {
                        Some(n) => at += n + 1,
                        None => return invalid("unterminated regular expression"),
                    }
                }
                at - pos
            }
            0x0C => match string_size(pos) {
                Some(s) => s + 12,
                None => return invalid("bad DBPointer"),
            },
            0x03 | 0x04 | 0x0F => {
                // The nested document starts here (for code with scope: after the code string).
                let start = if kind == 0x0F {
                    let total = match read_i32(bytes, pos) {
                        Some(t) if t >= 14 && pos + t as usize <= end => t as usize,
                        _ => return invalid("bad code-with-scope length"),
                    };
                    let Some(code) = string_size(pos + 4) else {
                        return invalid("bad code-with-scope string");
                    };
                    let start = pos + 4 + code;
                    if read_i32(bytes, start).map(|l| start + l as usize) != Some(pos + total) {
                        return invalid("bad code-with-scope scope");
                    }
                    start
                } else {
                    pos
                };
                let sub = match read_i32(bytes, start) {
                    Some(l) if l >= 5 && start + l as usize <= end => l as usize,
                    _ => return invalid("bad nested document length"),
                };
                if frames.len() > MAX_BSON_DEPTH {
                    return Err(BsonFault::TooDeep);
                }
                frames.push(start + sub - 1);
                pos = start + 4;
                continue;
            }
            other => return invalid(&format!("unknown element type {other:#x}")),
        };
        if pos + size > end {
            return invalid("element overruns its document");
        }
        pos += size;
    }
    Ok(())
}

/// Levels of `doc` as storage counts them: the top level is one, and every non-empty
/// sub-document or array below adds one. Stops counting past `limit`.
fn storage_depth_exceeds(doc: &Document, limit: usize) -> bool {
    // An explicit stack of iterators: a document already in memory may be deep (built by an
    // update), and walking it must not recurse.
    let mut frames: Vec<Box<dyn Iterator<Item = &Bson>>> = vec![Box::new(doc.values())];
    while let Some(top) = frames.last_mut() {
        let Some(value) = top.next() else {
            frames.pop();
            continue;
        };
        let children: Box<dyn Iterator<Item = &Bson>> = match value {
            Bson::Document(d) if !d.is_empty() => Box::new(d.values()),
            Bson::Array(a) if !a.is_empty() => Box::new(a.iter()),
            _ => continue,
        };
        if frames.len() >= limit {
            return true;
        }
        frames.push(children);
    }
    false
}

/// The fewest bytes a document that [`raw_storage_depth_exceeds`] `limit` can have: `limit`
/// nested documents (each 4 length + 1 type + 1 empty key + 1 terminator bytes around the
/// next) around a non-empty one (7 bytes: `{"": null}`).
const fn smallest_too_deep(limit: usize) -> usize {
    7 * (limit + 1)
}

/// [`storage_depth_exceeds`] for a document still in its bytes.
fn raw_storage_depth_exceeds(doc: &RawDocument, limit: usize) -> bool {
    // Most documents are too small to be that deep: no need to walk them.
    if doc.as_bytes().len() < smallest_too_deep(limit) {
        return false;
    }
    type Values<'a> = Box<dyn Iterator<Item = RawBsonRef<'a>> + 'a>;
    fn values(d: &RawDocument) -> Values<'_> {
        Box::new(d.iter().filter_map(|e| e.ok().map(|(_, v)| v)))
    }
    let mut frames: Vec<Values<'_>> = vec![values(doc)];
    while let Some(top) = frames.last_mut() {
        let Some(value) = top.next() else {
            frames.pop();
            continue;
        };
        // An empty document or array is 5 bytes.
        let children: Values<'_> = match value {
            RawBsonRef::Document(d) if d.as_bytes().len() > 5 => values(d),
            RawBsonRef::Array(a) if a.as_bytes().len() > 5 => {
                Box::new(a.into_iter().filter_map(Result::ok))
            }
            _ => continue,
        };
        if frames.len() >= limit {
            return true;
        }
        frames.push(children);
    }
    false
}

/// An insert's document as bytes: see [`check_insert`].
pub fn check_insert_raw(raw: &RawDocument) -> ServerResult<()> {
    insert_limits(raw.as_bytes().len(), || {
        raw_storage_depth_exceeds(raw, MAX_STORAGE_DEPTH)
    })
}

/// An insert's document: mongod's `fixDocumentForInsert` checks (size, then depth).
pub fn check_insert(doc: &Document, size: usize) -> ServerResult<()> {
    insert_limits(size, || storage_depth_exceeds(doc, MAX_STORAGE_DEPTH))
}

fn insert_limits(size: usize, too_deep: impl FnOnce() -> bool) -> ServerResult<()> {
    if size > MAX_USER_SIZE {
        return Err(ServerError::bad_value(format!(
            "object to insert too large. size in bytes: {size}, max size: {MAX_USER_SIZE}"
        )));
    }
    if too_deep() {
        return Err(ServerError::new(
            ErrorCode::Overflow,
            format!(
                "cannot insert document because it exceeds {MAX_STORAGE_DEPTH} levels of nesting"
            ),
        ));
    }
    Ok(())
}

/// A document an update produced (replacement or modifiers).
pub fn check_updated(doc: &Document, size: usize) -> ServerResult<()> {
    if storage_depth_exceeds(doc, MAX_STORAGE_DEPTH) {
        return Err(ServerError::new(
            ErrorCode::Overflow,
            format!("Document exceeds maximum nesting depth of {MAX_STORAGE_DEPTH}"),
        ));
    }
    if size > MAX_USER_SIZE {
        return Err(ServerError::new(
            ErrorCode::BSONObjectTooLarge,
            format!("Resulting document after update is larger than {MAX_USER_SIZE}"),
        ));
    }
    Ok(())
}

/// A dotted path with more components than any document can have levels.
pub fn check_path(path: &str) -> ServerResult<()> {
    if path.bytes().filter(|b| *b == b'.').count() >= MAX_PATH_COMPONENTS {
        return Err(ServerError::new(
            ErrorCode::Overflow,
            "FieldPath is too long",
        ));
    }
    Ok(())
}

/// A document in a message larger than any command may be (mongod: `BSONObjectTooLarge`).
pub fn check_message_document(size: usize) -> ServerResult<()> {
    if size > MAX_INTERNAL_SIZE {
        return Err(ServerError::new(
            ErrorCode::BSONObjectTooLarge,
            format!(
                "BSONObj size: {size} ({size:#X}) is invalid. Size must be between 0 and {MAX_INTERNAL_SIZE}(16MB)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn the_smallest_document_too_deep_to_store_is_not_skipped_by_its_size() {
        for limit in [1, 2, 5, MAX_STORAGE_DEPTH] {
            // `limit` documents, each holding the next under an empty key, around `{"": null}`.
            let mut d = doc! {"": bson::Bson::Null};
            for _ in 0..limit {
                d = doc! {"": d};
            }
            let raw = bson::RawDocumentBuf::from_document(&d).unwrap();
            assert_eq!(raw.as_bytes().len(), smallest_too_deep(limit));
            assert!(raw_storage_depth_exceeds(&raw, limit));
            // One level less is allowed.
            let inner = raw.get_document("").unwrap();
            assert!(!raw_storage_depth_exceeds(inner, limit));
        }
    }

    fn nested(levels: usize) -> Document {
        let mut d = doc! {"x": 1};
        for _ in 1..levels {
            d = doc! {"a": d};
        }
        d
    }

    #[test]
    fn wire_depth_allows_200_levels_below_the_top() {
        assert_eq!(check_bson(&bson::to_vec(&nested(201)).unwrap()), Ok(()));
        assert_eq!(
            check_bson(&bson::to_vec(&nested(202)).unwrap()),
            Err(BsonFault::TooDeep)
        );
    }

    #[test]
    fn a_deep_array_chain_is_refused_without_recursing() {
        // 100,000 nested arrays as bytes: decoding this recursively would exhaust the stack.
        let n = 100_000usize;
        let mut bytes = Vec::new();
        // Each level: len(4) 0x04 '0' 0 <child> 0 ; innermost is an empty array.
        let mut sizes = vec![5usize];
        for _ in 0..n {
            let s = sizes.last().unwrap() + 4 + 3 + 1;
            sizes.push(s);
        }
        for i in (1..=n).rev() {
            bytes.extend_from_slice(&(sizes[i] as i32).to_le_bytes());
            bytes.extend_from_slice(&[0x04, b'0', 0]);
        }
        bytes.extend_from_slice(&5i32.to_le_bytes());
        bytes.push(0);
        bytes.extend(std::iter::repeat(0).take(n));
        assert_eq!(check_bson(&bytes), Err(BsonFault::TooDeep));
    }

    #[test]
    fn malformed_framing_is_invalid() {
        let mut bytes = bson::to_vec(&doc! {"a": {"b": "c"}}).unwrap();
        let n = bytes.len();
        bytes[n - 2] = 1; // the inner document's terminator
        assert!(matches!(check_bson(&bytes), Err(BsonFault::Invalid(_))));
        assert!(matches!(check_bson(&[5, 0, 0]), Err(BsonFault::Invalid(_))));
        let ok = bson::to_vec(&doc! {"s": "x", "r": bson::Regex{pattern: "a".into(), options: "i".into()},
            "b": bson::Binary{subtype: bson::spec::BinarySubtype::Generic, bytes: vec![1,2]},
            "c": bson::Bson::JavaScriptCodeWithScope(bson::JavaScriptCodeWithScope{code: "f".into(), scope: doc!{"a": [1]}})}).unwrap();
        assert_eq!(check_bson(&ok), Ok(()));
    }

    #[test]
    fn storage_depth_counts_the_top_and_skips_empty_documents() {
        assert!(check_insert(&nested(180), 0).is_ok());
        assert_eq!(check_insert(&nested(181), 0).unwrap_err().code, 15);
        let mut with_empty = doc! {"e": {}};
        for _ in 1..180 {
            with_empty = doc! {"a": with_empty};
        }
        assert!(check_insert(&with_empty, 0).is_ok());
        let raw = |d: &Document| bson::RawDocumentBuf::from_document(d).unwrap();
        assert!(check_insert_raw(&raw(&with_empty)).is_ok());
        assert!(check_insert_raw(&raw(&nested(180))).is_ok());
        assert_eq!(check_insert_raw(&raw(&nested(181))).unwrap_err().code, 15);
        assert_eq!(
            check_insert(&doc! {}, MAX_USER_SIZE + 1).unwrap_err().code,
            2
        );
        assert_eq!(
            check_updated(&doc! {}, MAX_USER_SIZE + 1).unwrap_err().code,
            10334
        );
    }
}
