//! Finding one top-level field of a raw BSON document by walking its bytes.
//!
//! Every reader of an oplog looks up a handful of fields (`op`, `ns`, `o`, `o2`, `ts`, `wall`)
//! of every entry, each lookup a walk from the first field. This walk does what
//! `RawDocument::get` does (read each field's type and size, build and check its value) without
//! the crate's iterator and error plumbing around every field. The common types are built
//! here; at any other type, and at anything that does not add up (a size past the end, a
//! missing terminator, a string or a name that is not UTF-8), the lookup is left to
//! `RawDocument::get`, so that a malformed document is reported exactly as before.

use bson::oid::ObjectId;
use bson::raw::{RawBinaryRef, RawBsonRef};
use bson::spec::BinarySubtype;
use bson::{DateTime, Decimal128, RawDocument, Timestamp};

/// `doc.get(key)`, faster.
pub fn get<'a>(doc: &'a RawDocument, key: &str) -> bson::raw::Result<Option<RawBsonRef<'a>>> {
    match find(doc.as_bytes(), key.as_bytes()) {
        Found::Value(v) => Ok(Some(v)),
        Found::Absent => Ok(None),
        Found::AskTheCrate => doc.get(key),
    }
}

enum Found<'a> {
    Value(RawBsonRef<'a>),
    Absent,
    AskTheCrate,
}

fn int32_at(bytes: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn find<'a>(bytes: &'a [u8], key: &[u8]) -> Found<'a> {
    let mut at = 4;
    loop {
        let Some(&kind) = bytes.get(at) else {
            return Found::AskTheCrate;
        };
        if kind == 0 {
            return if at + 1 == bytes.len() {
                Found::Absent
            } else {
                Found::AskTheCrate
            };
        }
        let name_start = at + 1;
        let Some(name_len) = bytes
            .get(name_start..)
            .and_then(|rest| rest.iter().position(|&b| b == 0))
        else {
            return Found::AskTheCrate;
        };
        let name = &bytes[name_start..name_start + name_len];
        // The crate refuses a document with a name that is not UTF-8, wherever it is.
        if !name.is_ascii() && std::str::from_utf8(name).is_err() {
            return Found::AskTheCrate;
        }
        let value_at = name_start + name_len + 1;
        let Some(size) = value_size(bytes, kind, value_at) else {
            return Found::AskTheCrate;
        };
        let end = value_at + size;
        // The value and the document's terminator must fit.
        if end >= bytes.len() {
            return Found::AskTheCrate;
        }
        // Every value passed is built as well, and checked as the crate checks it: a field
        // it would refuse makes the whole lookup its own.
        let Some(found) = value(kind, &bytes[value_at..end]) else {
            return Found::AskTheCrate;
        };
        if name == key {
            return Found::Value(found);
        }
        at = end;
    }
}

/// The size of the value of type `kind` at `at`, from its fixed size or its length prefix;
/// `None` for types left to the crate or a length that cannot be.
fn value_size(bytes: &[u8], kind: u8, at: usize) -> Option<usize> {
    let prefixed = |extra: usize| -> Option<usize> {
        let len = usize::try_from(int32_at(bytes, at)?).ok()?;
        len.checked_add(extra)
    };
    match kind {
        0x01 | 0x09 | 0x11 | 0x12 => Some(8),
        0x02 | 0x0D | 0x0E => prefixed(4).filter(|&n| n >= 5),
        0x03 | 0x04 => prefixed(0).filter(|&n| n >= 5),
        0x05 => prefixed(5),
        0x06 | 0x0A | 0x7F | 0xFF => Some(0),
        0x07 => Some(12),
        0x08 => Some(1),
        0x10 => Some(4),
        0x13 => Some(16),
        _ => None,
    }
}

/// The value of type `kind` whose bytes are `v`; `None` when the crate should build it.
fn value(kind: u8, v: &[u8]) -> Option<RawBsonRef<'_>> {
    let eight = || -> Option<[u8; 8]> { v.try_into().ok() };
    Some(match kind {
        0x01 => RawBsonRef::Double(f64::from_le_bytes(eight()?)),
        0x02 => {
            let (nul, text) = v[4..].split_last()?;
            if *nul != 0 {
                return None;
            }
            RawBsonRef::String(std::str::from_utf8(text).ok()?)
        }
        0x03 => RawBsonRef::Document(RawDocument::from_bytes(v).ok()?),
        0x05 => {
            let subtype = BinarySubtype::from(v[4]);
            // The old binary subtype nests a second length: the crate knows it.
            if subtype == BinarySubtype::BinaryOld {
                return None;
            }
            RawBsonRef::Binary(RawBinaryRef {
                subtype,
                bytes: &v[5..],
            })
        }
        0x07 => RawBsonRef::ObjectId(ObjectId::from_bytes(v.try_into().ok()?)),
        0x08 => match v[0] {
            0 => RawBsonRef::Boolean(false),
            1 => RawBsonRef::Boolean(true),
            _ => return None,
        },
        0x09 => RawBsonRef::DateTime(DateTime::from_millis(i64::from_le_bytes(eight()?))),
        0x0A => RawBsonRef::Null,
        0x10 => RawBsonRef::Int32(i32::from_le_bytes(v.try_into().ok()?)),
        0x11 => {
            let increment = u32::from_le_bytes(v[..4].try_into().ok()?);
            let time = u32::from_le_bytes(v[4..].try_into().ok()?);
            RawBsonRef::Timestamp(Timestamp { time, increment })
        }
        0x12 => RawBsonRef::Int64(i64::from_le_bytes(eight()?)),
        0x13 => RawBsonRef::Decimal128(Decimal128::from_bytes(v.try_into().ok()?)),
        0xFF => RawBsonRef::MinKey,
        0x7F => RawBsonRef::MaxKey,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, Binary, Bson, RawDocumentBuf, Regex};

    fn sample() -> bson::Document {
        doc! {
            "d": 1.5, "s": "héllo", "e": "", "doc": {"a": [1, {"b": "c"}]}, "arr": [1, "x"],
            "bin": Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2, 3] },
            "uuid": Binary { subtype: BinarySubtype::Uuid, bytes: vec![7; 16] },
            "undef": Bson::Undefined, "oid": ObjectId::new(), "t": true, "f": false,
            "when": DateTime::from_millis(1_700_000_000_123), "null": Bson::Null,
            "re": Regex { pattern: "a+".into(), options: "i".into() },
            "code": Bson::JavaScriptCode("x()".into()), "sym": Bson::Symbol("sy".into()),
            "i": 42_i32, "ts": Timestamp { time: 5, increment: 9 }, "l": -7_i64,
            "dec": Decimal128::from_bytes([3; 16]), "min": Bson::MinKey, "max": Bson::MaxKey,
            "last": "end",
        }
    }

    #[test]
    fn every_field_of_every_type_is_found_as_the_crate_finds_it() {
        let d = sample();
        let raw = RawDocumentBuf::from_document(&d).unwrap();
        for key in d
            .keys()
            .map(String::as_str)
            .chain(["absent", "", "la", "lastx"])
        {
            assert_eq!(get(&raw, key).unwrap(), raw.get(key).unwrap(), "{key}");
        }
    }

    #[test]
    fn broken_documents_are_reported_as_the_crate_reports_them() {
        let good = RawDocumentBuf::from_document(&sample()).unwrap();
        let bytes = good.as_bytes().to_vec();
        // Every truncation and every single corrupted byte, for a field early and late.
        let mut broken: Vec<Vec<u8>> = Vec::new();
        for cut in 5..bytes.len() {
            let mut b = bytes[..cut].to_vec();
            b[..4].copy_from_slice(&(cut as i32).to_le_bytes());
            broken.push(b);
        }
        for i in 4..bytes.len() {
            for value in [0x00, 0x01, 0x7F, 0xFF] {
                let mut b = bytes.clone();
                b[i] = value;
                broken.push(b);
            }
        }
        for b in broken {
            let Ok(doc) = RawDocument::from_bytes(&b) else {
                continue;
            };
            for key in ["d", "s", "bin", "when", "ts", "dec", "last", "absent"] {
                let ours = get(doc, key).map_err(|e| e.to_string());
                let theirs = doc.get(key).map_err(|e| e.to_string());
                // A document the crate reads is read the same; one it refuses may still have
                // its early fields found here, but never a different value.
                match (&ours, &theirs) {
                    // (Compared as text: a corrupted double may be NaN, which equals nothing.)
                    (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "{key}"),
                    (Err(a), Err(b)) => assert_eq!(a, b),
                    (Ok(_), Err(_)) | (Err(_), Ok(_)) => {
                        panic!("{key}: {ours:?} vs {theirs:?} in {b:?}")
                    }
                }
            }
        }
    }
}
