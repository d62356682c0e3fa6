//! Writing BSON documents straight into one buffer. Replication moves megabytes of documents per
//! batch; building them with `RawDocumentBuf`/`RawArrayBuf` copies each document once per level
//! of nesting and again on every growth of the buffer, while these helpers copy it once.

use bson::{Bson, DateTime, RawDocument, RawDocumentBuf, Timestamp};

const STRING: u8 = 0x02;
const DOCUMENT: u8 = 0x03;
const ARRAY: u8 = 0x04;
const BINARY: u8 = 0x05;
const OBJECT_ID: u8 = 0x07;
const BOOLEAN: u8 = 0x08;
const DATETIME: u8 = 0x09;
const INT32: u8 = 0x10;
const TIMESTAMP: u8 = 0x11;
const INT64: u8 = 0x12;

/// The elements of a BSON array of documents, appended one by one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocArray {
    elements: Vec<u8>,
    len: usize,
}

impl DocArray {
    pub fn push(&mut self, doc: &RawDocument) {
        self.element_key();
        self.elements.extend_from_slice(doc.as_bytes());
    }

    /// Appends a document written in place by `write` (no intermediate buffer).
    pub fn push_with(&mut self, write: impl FnOnce(&mut Fields)) {
        self.element_key();
        write_document(&mut self.elements, write);
    }

    fn element_key(&mut self) {
        element_key(&mut self.elements, self.len);
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the elements take.
    pub fn bytes(&self) -> usize {
        self.elements.len()
    }

    /// The documents, in order.
    pub fn iter(&self) -> impl Iterator<Item = &RawDocument> {
        let mut rest = self.elements.as_slice();
        std::iter::from_fn(move || {
            // Each element: type byte, index cstring, then a document that states its length.
            let key_end = rest.iter().position(|b| *b == 0)?;
            let doc = &rest[key_end + 1..];
            let len = i32::from_le_bytes(doc.get(..4)?.try_into().ok()?) as usize;
            rest = &doc[len..];
            RawDocument::from_bytes(&doc[..len]).ok()
        })
    }
}

/// Writes the fields of a document that is being built in place.
pub struct Fields<'a> {
    buf: &'a mut Vec<u8>,
}

impl Fields<'_> {
    fn key(&mut self, kind: u8, key: &str) {
        self.buf.push(kind);
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.push(0);
    }

    pub fn string(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(STRING, key);
        self.buf
            .extend_from_slice(&(value.len() as i32 + 1).to_le_bytes());
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(0);
        self
    }

    pub fn document(&mut self, key: &str, doc: &RawDocument) -> &mut Self {
        self.key(DOCUMENT, key);
        self.buf.extend_from_slice(doc.as_bytes());
        self
    }

    pub fn binary(&mut self, key: &str, subtype: u8, bytes: &[u8]) -> &mut Self {
        self.key(BINARY, key);
        self.buf
            .extend_from_slice(&(bytes.len() as i32).to_le_bytes());
        self.buf.push(subtype);
        self.buf.extend_from_slice(bytes);
        self
    }

    pub fn array(&mut self, key: &str, array: &DocArray) -> &mut Self {
        self.key(ARRAY, key);
        self.buf
            .extend_from_slice(&(array.elements.len() as i32 + 5).to_le_bytes());
        self.buf.extend_from_slice(&array.elements);
        self.buf.push(0);
        self
    }

    /// A document value written in place by `write`.
    pub fn nested(&mut self, key: &str, write: impl FnOnce(&mut Fields)) -> &mut Self {
        self.key(DOCUMENT, key);
        write_document(self.buf, write);
        self
    }

    /// An array of documents written in place by `write`.
    pub fn array_with(&mut self, key: &str, write: impl FnOnce(&mut ArrayWriter)) -> &mut Self {
        self.key(ARRAY, key);
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        write(&mut ArrayWriter {
            buf: &mut *self.buf,
            len: 0,
        });
        self.buf.push(0);
        let len = (self.buf.len() - start) as i32;
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self
    }

    pub fn timestamp(&mut self, key: &str, ts: Timestamp) -> &mut Self {
        self.key(TIMESTAMP, key);
        self.buf.extend_from_slice(&ts.increment.to_le_bytes());
        self.buf.extend_from_slice(&ts.time.to_le_bytes());
        self
    }

    pub fn datetime(&mut self, key: &str, value: DateTime) -> &mut Self {
        self.key(DATETIME, key);
        self.buf
            .extend_from_slice(&value.timestamp_millis().to_le_bytes());
        self
    }

    pub fn boolean(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(BOOLEAN, key);
        self.buf.push(value as u8);
        self
    }

    pub fn int32(&mut self, key: &str, value: i32) -> &mut Self {
        self.key(INT32, key);
        self.buf.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn int64(&mut self, key: &str, value: i64) -> &mut Self {
        self.key(INT64, key);
        self.buf.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Any value: the usual `_id` types directly, the others through their encoding in a
    /// one-field document.
    pub fn value(&mut self, key: &str, value: &Bson) -> &mut Self {
        match value {
            Bson::Int32(i) => self.int32(key, *i),
            Bson::Int64(i) => self.int64(key, *i),
            Bson::String(s) => self.string(key, s),
            Bson::ObjectId(o) => {
                self.key(OBJECT_ID, key);
                self.buf.extend_from_slice(&o.bytes());
                self
            }
            other => {
                let mut one = Vec::new();
                if bson::doc! {"": other.clone()}.to_writer(&mut one).is_ok() {
                    // `one`: length (4), type (1), the empty name's terminator (1), value, end (1).
                    self.key(one[4], key);
                    self.buf.extend_from_slice(&one[6..one.len() - 1]);
                }
                self
            }
        }
    }
}

/// Writes the documents of an array in place.
pub struct ArrayWriter<'a> {
    buf: &'a mut Vec<u8>,
    len: usize,
}

impl ArrayWriter<'_> {
    pub fn push_with(&mut self, write: impl FnOnce(&mut Fields)) {
        element_key(self.buf, self.len);
        self.len += 1;
        write_document(self.buf, write);
    }
}

fn element_key(buf: &mut Vec<u8>, index: usize) {
    buf.push(DOCUMENT);
    buf.extend_from_slice(index.to_string().as_bytes());
    buf.push(0);
}

/// Writes a whole document at the end of `buf`: its length, the fields `write` adds, the end.
fn write_document(buf: &mut Vec<u8>, write: impl FnOnce(&mut Fields)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    write(&mut Fields { buf: &mut *buf });
    buf.push(0);
    let len = (buf.len() - start) as i32;
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// A document written field by field into one buffer sized up front. `capacity`: the bytes of
/// the large values to come (a little is added for the rest).
pub fn document(capacity: usize, write: impl FnOnce(&mut Fields)) -> RawDocumentBuf {
    let mut buf = Vec::with_capacity(capacity + 64);
    write_document(&mut buf, write);
    RawDocumentBuf::from_bytes(buf).expect("a document written element by element")
}

/// An empty document with room for `capacity` bytes of fields, to append to without regrowing.
pub fn empty_with_capacity(capacity: usize) -> RawDocumentBuf {
    let mut buf = Vec::with_capacity(capacity + 5);
    buf.extend_from_slice(&[5, 0, 0, 0, 0]);
    RawDocumentBuf::from_bytes(buf).expect("the empty document")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn written_documents_equal_the_encoder_s() {
        let a = RawDocumentBuf::from_document(&doc! {"_id": 1, "s": "x"}).unwrap();
        let b = RawDocumentBuf::from_document(&doc! {"_id": 2, "n": {"m": [1, 2]}}).unwrap();
        let mut array = DocArray::default();
        array.push(&a);
        array.push(&b);
        array.push_with(|f| {
            f.string("op", "i")
                .binary("ui", 4, &[7; 16])
                .document("o", &a);
        });
        let written = document(array.bytes(), |f| {
            f.string("insert", "coll")
                .array("documents", &array)
                .boolean("ordered", true)
                .int64("count", 7);
        });
        let ui = bson::Binary {
            subtype: bson::spec::BinarySubtype::Uuid,
            bytes: vec![7; 16],
        };
        let expected = doc! {
            "insert": "coll",
            "documents": [{"_id": 1, "s": "x"}, {"_id": 2, "n": {"m": [1, 2]}}, {"op": "i", "ui": ui, "o": {"_id": 1, "s": "x"}}],
            "ordered": true,
            "count": 7i64,
        };
        assert_eq!(
            written.as_bytes(),
            RawDocumentBuf::from_document(&expected).unwrap().as_bytes()
        );
        let back: Vec<_> = array.iter().map(|d| d.to_raw_document_buf()).collect();
        assert_eq!(back[..2], [a, b]);
        assert_eq!(array.len(), 3);
    }

    #[test]
    fn an_empty_array_and_a_presized_empty_document_are_valid() {
        let empty = document(0, |f| {
            f.array("a", &DocArray::default());
        });
        assert_eq!(empty.to_document().unwrap(), doc! {"a": []});
        let mut d = empty_with_capacity(100);
        d.append("x", 1);
        assert_eq!(d.to_document().unwrap(), doc! {"x": 1});
    }

    #[test]
    fn values_of_every_type_are_written_as_the_encoder_writes_them() {
        let values = [
            Bson::Int32(-3),
            Bson::Int64(1 << 40),
            Bson::String("é\u{0}x".into()),
            Bson::ObjectId(bson::oid::ObjectId::new()),
            Bson::Double(-0.0),
            Bson::Document(doc! {"a": 1, "b": [1, {"c": null}]}),
            Bson::Array(vec![Bson::Null, Bson::Boolean(true)]),
            Bson::Binary(bson::Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes: vec![1, 2, 3],
            }),
            Bson::Decimal128("1.50".parse().unwrap()),
            Bson::Timestamp(Timestamp {
                time: 7,
                increment: 9,
            }),
            Bson::DateTime(DateTime::from_millis(-5)),
            Bson::MinKey,
            Bson::MaxKey,
            Bson::Null,
            Bson::RegularExpression(bson::Regex {
                pattern: "^a".into(),
                options: "i".into(),
            }),
        ];
        for v in values {
            let written = document(0, |f| {
                f.int32("x", 1).value("v", &v).boolean("y", false);
            });
            let expected = doc! {"x": 1, "v": v.clone(), "y": false};
            assert_eq!(
                written.as_bytes(),
                RawDocumentBuf::from_document(&expected).unwrap().as_bytes(),
                "{v:?}"
            );
        }
    }
}
