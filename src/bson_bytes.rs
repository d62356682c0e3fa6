//! Writing BSON documents straight into one buffer. Replication moves megabytes of documents per
//! batch; building them with `RawDocumentBuf`/`RawArrayBuf` copies each document once per level
//! of nesting and again on every growth of the buffer, while these helpers copy it once.

use bson::{RawDocument, RawDocumentBuf};

const STRING: u8 = 0x02;
const DOCUMENT: u8 = 0x03;
const ARRAY: u8 = 0x04;
const BOOLEAN: u8 = 0x08;
const INT64: u8 = 0x12;

/// The elements of a BSON array of documents, appended one by one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocArray {
    elements: Vec<u8>,
    len: usize,
}

impl DocArray {
    pub fn with_capacity(bytes: usize) -> DocArray {
        DocArray {
            elements: Vec::with_capacity(bytes),
            len: 0,
        }
    }

    pub fn push(&mut self, doc: &RawDocument) {
        self.elements.push(DOCUMENT);
        self.elements
            .extend_from_slice(self.len.to_string().as_bytes());
        self.elements.push(0);
        self.elements.extend_from_slice(doc.as_bytes());
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

/// A document written field by field into one buffer sized up front.
pub struct DocWriter {
    buf: Vec<u8>,
}

impl DocWriter {
    /// `capacity`: the bytes of the large values to come (a little is added for the rest).
    pub fn with_capacity(capacity: usize) -> DocWriter {
        let mut buf = Vec::with_capacity(capacity + 64);
        buf.extend_from_slice(&[0; 4]); // the length, set by `finish`
        DocWriter { buf }
    }

    fn key(&mut self, kind: u8, key: &str) {
        self.buf.push(kind);
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.push(0);
    }

    pub fn string(mut self, key: &str, value: &str) -> Self {
        self.key(STRING, key);
        self.buf
            .extend_from_slice(&(value.len() as i32 + 1).to_le_bytes());
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(0);
        self
    }

    pub fn array(mut self, key: &str, array: &DocArray) -> Self {
        self.key(ARRAY, key);
        self.buf
            .extend_from_slice(&(array.elements.len() as i32 + 5).to_le_bytes());
        self.buf.extend_from_slice(&array.elements);
        self.buf.push(0);
        self
    }

    pub fn boolean(mut self, key: &str, value: bool) -> Self {
        self.key(BOOLEAN, key);
        self.buf.push(value as u8);
        self
    }

    pub fn int64(mut self, key: &str, value: i64) -> Self {
        self.key(INT64, key);
        self.buf.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn finish(mut self) -> RawDocumentBuf {
        self.buf.push(0);
        let len = self.buf.len() as i32;
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        RawDocumentBuf::from_bytes(self.buf).expect("a document written element by element")
    }
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
        let mut array = DocArray::with_capacity(0);
        array.push(&a);
        array.push(&b);
        let written = DocWriter::with_capacity(array.bytes())
            .string("insert", "coll")
            .array("documents", &array)
            .boolean("ordered", true)
            .int64("count", 7)
            .finish();
        let expected = doc! {
            "insert": "coll",
            "documents": [{"_id": 1, "s": "x"}, {"_id": 2, "n": {"m": [1, 2]}}],
            "ordered": true,
            "count": 7i64,
        };
        assert_eq!(written.as_bytes(), RawDocumentBuf::from_document(&expected).unwrap().as_bytes());
        let back: Vec<_> = array.iter().map(|d| d.to_raw_document_buf()).collect();
        assert_eq!(back, vec![a, b]);
        assert_eq!(array.len(), 2);
    }

    #[test]
    fn an_empty_array_and_a_presized_empty_document_are_valid() {
        let empty = DocWriter::with_capacity(0)
            .array("a", &DocArray::default())
            .finish();
        assert_eq!(empty.to_document().unwrap(), doc! {"a": []});
        let mut d = empty_with_capacity(100);
        d.append("x", 1);
        assert_eq!(d.to_document().unwrap(), doc! {"x": 1});
    }
}
