//! Builds `local.oplog.rs` entries exactly as a MongoDB 7.0 primary writes them (field order
//! included: `[lsid, txnNumber,] op, ns, [ui,] o, [o2,] ts, t, v, wall[, stmtId][, prevOpTime]`).

use crate::bson_bytes::Fields;
use crate::server::collection::bson_size;
use bson::spec::BinarySubtype;
use bson::{doc, Binary, Bson, DateTime, Document, RawDocumentBuf, Timestamp};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The election term this single-node set is in (it never changes: no elections happen).
pub const TERM: i64 = 1;

/// An op's `o`: a document, or (for inserts) the stored document's bytes, copied as they are.
#[derive(Debug, Clone)]
pub enum Body {
    Doc(Document),
    Raw(Arc<RawDocumentBuf>),
}

impl From<Document> for Body {
    fn from(d: Document) -> Self {
        Body::Doc(d)
    }
}

impl From<Arc<RawDocumentBuf>> for Body {
    fn from(r: Arc<RawDocumentBuf>) -> Self {
        Body::Raw(r)
    }
}

impl Body {
    pub fn to_document(&self) -> Document {
        match self {
            Body::Doc(d) => d.clone(),
            Body::Raw(r) => r.to_document().unwrap_or_default(),
        }
    }

    /// Encoded size in bytes.
    pub fn size(&self) -> usize {
        match self {
            Body::Doc(d) => crate::server::collection::bson_size(d),
            Body::Raw(r) => r.as_bytes().len(),
        }
    }
}

fn raw(d: &Document) -> RawDocumentBuf {
    RawDocumentBuf::from_document(d).unwrap_or_default()
}

/// One logical change, as it appears inside `applyOps` and as the core of a top-level entry.
#[derive(Debug, Clone)]
pub struct OpRecord {
    pub op: &'static str,
    pub ns: String,
    pub ui: Option<bson::Uuid>,
    pub o: Body,
    pub o2: Option<Document>,
}

impl OpRecord {
    pub fn new(
        op: &'static str,
        ns: impl Into<String>,
        ui: Option<bson::Uuid>,
        o: impl Into<Body>,
        o2: Option<Document>,
    ) -> Self {
        OpRecord {
            op,
            ns: ns.into(),
            ui,
            o: o.into(),
            o2,
        }
    }

    fn append_core(&self, d: &mut Document) {
        d.insert("op", self.op);
        d.insert("ns", self.ns.clone());
        if let Some(ui) = self.ui {
            d.insert("ui", ui);
        }
        d.insert("o", self.o.to_document());
        if let Some(o2) = &self.o2 {
            d.insert("o2", o2.clone());
        }
    }

    /// Writes the fields into a top-level entry being built as bytes.
    fn append_raw(&self, d: &mut RawDocumentBuf) {
        d.append("op", self.op);
        d.append("ns", self.ns.as_str());
        if let Some(ui) = self.ui {
            d.append("ui", Binary::from_uuid(ui));
        }
        match &self.o {
            Body::Raw(r) => d.append_ref("o", r.as_ref()),
            Body::Doc(doc) => d.append("o", raw(doc)),
        }
        if let Some(o2) = &self.o2 {
            d.append("o2", raw(o2));
        }
    }

    /// About the bytes of the form used inside `applyOps`.
    pub fn inner_size(&self) -> usize {
        self.o.size() + self.ns.len() + self.o2.as_ref().map_or(0, bson_size) + 48
    }

    /// Writes the form used inside `applyOps` in place (the same fields as `append_raw`).
    pub fn write_inner(&self, f: &mut Fields) {
        f.string("op", self.op).string("ns", &self.ns);
        if let Some(ui) = self.ui {
            f.binary("ui", u8::from(BinarySubtype::Uuid), &ui.bytes());
        }
        match &self.o {
            Body::Raw(r) => f.document("o", r),
            Body::Doc(doc) => f.document("o", &raw(doc)),
        };
        if let Some(o2) = &self.o2 {
            f.document("o2", &raw(o2));
        }
    }

    /// The form used inside `applyOps`: no ts/t/v/wall.
    pub fn inner(&self) -> Document {
        let mut d = Document::new();
        self.append_core(&mut d);
        d
    }
}

/// Session fields of a retryable write or transaction entry.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub lsid: Document,
    pub txn_number: i64,
}

/// `{id, uid}` as mongod stores an lsid: uid is SHA-256 of the authenticated user ("" without auth).
pub fn oplog_lsid(lsid_id: &Bson) -> Document {
    let uid = Sha256::digest(b"");
    doc! {
        "id": lsid_id.clone(),
        "uid": Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: uid.to_vec() },
    }
}

pub fn optime(ts: Timestamp, t: i64) -> Document {
    doc! {"ts": ts, "t": t}
}

pub fn null_optime() -> Document {
    optime(
        Timestamp {
            time: 0,
            increment: 0,
        },
        -1,
    )
}

pub struct EntryExtras<'a> {
    pub session: Option<&'a SessionInfo>,
    pub stmt_id: Option<i32>,
    pub prev_op_time: Option<Document>,
}

impl EntryExtras<'_> {
    pub const NONE: EntryExtras<'static> = EntryExtras {
        session: None,
        stmt_id: None,
        prev_op_time: None,
    };
}

/// The entry as stored in `local.oplog.rs`, built directly as BSON bytes.
pub fn build_entry(
    op: OpRecord,
    ts: Timestamp,
    wall: DateTime,
    extras: &EntryExtras,
) -> RawDocumentBuf {
    let mut d = crate::bson_bytes::empty_with_capacity(op.o.size() + op.ns.len() + 256);
    if let Some(s) = extras.session {
        d.append("lsid", raw(&s.lsid));
        d.append("txnNumber", s.txn_number);
    }
    op.append_raw(&mut d);
    d.append("ts", ts);
    d.append("t", TERM);
    d.append("v", 2i64);
    d.append("wall", wall);
    if let Some(stmt) = extras.stmt_id {
        d.append("stmtId", stmt);
    }
    if let Some(prev) = &extras.prev_op_time {
        d.append("prevOpTime", raw(prev));
    }
    d
}

pub fn noop(msg: &str) -> OpRecord {
    OpRecord::new("n", "", None, doc! {"msg": msg}, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_entry_has_mongod_field_order() {
        let ui = bson::Uuid::new();
        let op = OpRecord::new(
            "i",
            "test.c",
            Some(ui),
            doc! {"_id": 1, "a": 1},
            Some(doc! {"_id": 1}),
        );
        let ts = Timestamp {
            time: 1700000000,
            increment: 3,
        };
        let wall = DateTime::from_millis(1_700_000_000_123);
        let e = build_entry(op, ts, wall, &EntryExtras::NONE)
            .to_document()
            .unwrap();
        let keys: Vec<&str> = e.keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, ["op", "ns", "ui", "o", "o2", "ts", "t", "v", "wall"]);
        assert_eq!(e.get("t"), Some(&Bson::Int64(1)));
        assert_eq!(e.get("v"), Some(&Bson::Int64(2)));
    }

    #[test]
    fn unauthenticated_uid_is_sha256_of_empty_string() {
        let l = oplog_lsid(&Bson::Int32(0));
        let Some(Bson::Binary(b)) = l.get("uid") else {
            panic!()
        };
        // 47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU= in the captured entries.
        assert_eq!(&b.bytes[..4], &[0xe3, 0xb0, 0xc4, 0x42]);
    }
}
