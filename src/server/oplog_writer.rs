//! Builds `local.oplog.rs` entries exactly as a MongoDB 7.0 primary writes them (field order
//! included: `[lsid, txnNumber,] op, ns, [ui,] o, [o2,] ts, t, v, wall[, stmtId][, prevOpTime]`).

use crate::bson_bytes::Fields;
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
    pub o2: Option<Body>,
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
            o2: o2.map(Body::Doc),
        }
    }

    /// The insert of a stored document: its `o2` (`{_id}`) is copied from the document's
    /// bytes, whose first field is `_id`, rather than built from a decoded `_id`.
    pub fn insert(
        ns: impl Into<String>,
        ui: Option<bson::Uuid>,
        stored: Arc<RawDocumentBuf>,
        id: Bson,
    ) -> Self {
        let o2 = match stored.iter().next() {
            Some(Ok(("_id", value))) => {
                let mut o2 = RawDocumentBuf::new();
                o2.append_ref("_id", value);
                Body::Raw(Arc::new(o2))
            }
            _ => Body::Doc(doc! {"_id": id}),
        };
        OpRecord {
            op: "i",
            ns: ns.into(),
            ui,
            o: Body::Raw(stored),
            o2: Some(o2),
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
            d.insert("o2", o2.to_document());
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
        match &self.o2 {
            Some(Body::Raw(r)) => d.append_ref("o2", r.as_ref()),
            Some(Body::Doc(doc)) => d.append("o2", raw(doc)),
            None => {}
        }
    }

    /// About the bytes of the form used inside `applyOps`.
    pub fn inner_size(&self) -> usize {
        self.o.size() + self.ns.len() + self.o2.as_ref().map_or(0, Body::size) + 48
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
        match &self.o2 {
            Some(Body::Raw(r)) => {
                f.document("o2", r);
            }
            Some(Body::Doc(doc)) => {
                f.document("o2", &raw(doc));
            }
            None => {}
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

/// What closes an `applyOps` entry's `o`: nothing (a whole transaction), `partialTxn: true`
/// (an entry of a chain that continues), or `count` (the last entry of a chain).
#[derive(Debug, Clone, Copy)]
pub enum ApplyOpsEnd {
    Whole,
    Partial,
    Count(i64),
}

/// A transaction's `applyOps` entry written in one pass, its operations in place: the same
/// bytes as [`build_entry`] of an `applyOps` command holding them, without first building the
/// command (which for a large transaction means megabytes of fresh memory, copied twice).
pub fn build_apply_ops_entry(
    ops: &[OpRecord],
    end: ApplyOpsEnd,
    ts: Timestamp,
    wall: DateTime,
    extras: &EntryExtras,
) -> RawDocumentBuf {
    let size: usize = ops.iter().map(|op| op.inner_size() + 16).sum();
    crate::bson_bytes::document(size + 256, |f| {
        if let Some(s) = extras.session {
            f.document("lsid", &raw(&s.lsid))
                .int64("txnNumber", s.txn_number);
        }
        f.string("op", "c")
            .string("ns", "admin.$cmd")
            .nested("o", |o| {
                o.array_with("applyOps", |array| {
                    for op in ops {
                        array.push_with(|inner| op.write_inner(inner));
                    }
                });
                match end {
                    ApplyOpsEnd::Whole => {}
                    ApplyOpsEnd::Partial => {
                        o.boolean("partialTxn", true);
                    }
                    ApplyOpsEnd::Count(n) => {
                        o.int64("count", n);
                    }
                }
            });
        f.timestamp("ts", ts)
            .int64("t", TERM)
            .int64("v", 2)
            .datetime("wall", wall);
        if let Some(stmt) = extras.stmt_id {
            f.int32("stmtId", stmt);
        }
        if let Some(prev) = &extras.prev_op_time {
            f.document("prevOpTime", &raw(prev));
        }
    })
}

pub fn noop(msg: &str) -> OpRecord {
    OpRecord::new("n", "", None, doc! {"msg": msg}, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_insert_copies_its_o2_from_the_stored_bytes_as_the_decoded_id_would_write_it() {
        let ui = bson::Uuid::new();
        let ts = Timestamp {
            time: 1700000000,
            increment: 3,
        };
        let wall = DateTime::from_millis(1_700_000_000_123);
        let ids = [
            Bson::Int32(7),
            Bson::String("x".into()),
            Bson::ObjectId(bson::oid::ObjectId::new()),
            Bson::Document(doc! {"n": "db.c", "i": {"deep": [1, 2.5, "s"]}}),
            Bson::Binary(Binary {
                subtype: BinarySubtype::Generic,
                bytes: vec![0, 1, 2],
            }),
        ];
        for id in ids {
            for stored in [
                doc! {"_id": id.clone(), "a": 1},
                doc! {"a": 1, "_id": id.clone()},
            ] {
                let raw = Arc::new(RawDocumentBuf::from_document(&stored).unwrap());
                let copied = OpRecord::insert("db.c", Some(ui), raw.clone(), id.clone());
                let decoded =
                    OpRecord::new("i", "db.c", Some(ui), raw, Some(doc! {"_id": id.clone()}));
                let entry = |op: &OpRecord| build_entry(op.clone(), ts, wall, &EntryExtras::NONE);
                assert_eq!(
                    entry(&copied).as_bytes(),
                    entry(&decoded).as_bytes(),
                    "{stored}"
                );
                let inner = |op: &OpRecord| crate::bson_bytes::document(64, |f| op.write_inner(f));
                assert_eq!(inner(&copied).as_bytes(), inner(&decoded).as_bytes());
                assert_eq!(copied.inner_size(), decoded.inner_size());
            }
        }
    }

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
    fn apply_ops_entries_written_in_place_equal_the_built_ones() {
        let ui = bson::Uuid::new();
        let doc = Arc::new(RawDocumentBuf::from_document(&doc! {"_id": 1, "a": "x"}).unwrap());
        let ops = vec![
            OpRecord::new("i", "db.c", Some(ui), doc.clone(), Some(doc! {"_id": 1})),
            OpRecord::new(
                "u",
                "db.c",
                Some(ui),
                doc! {"$v": 2, "diff": {"u": {"a": "y"}}},
                Some(doc! {"_id": 1}),
            ),
            OpRecord::new("d", "db.c", Some(ui), doc! {"_id": 1}, None),
        ];
        let session = SessionInfo {
            lsid: doc! {"id": bson::Uuid::new(), "uid": Binary { subtype: BinarySubtype::Generic, bytes: vec![1; 32] }},
            txn_number: 3,
        };
        let ts = Timestamp {
            time: 1700000000,
            increment: 9,
        };
        let wall = DateTime::from_millis(1_700_000_000_456);
        for (end, extra) in [
            (ApplyOpsEnd::Whole, None),
            (ApplyOpsEnd::Partial, None),
            (ApplyOpsEnd::Count(3), Some(("count", Bson::Int64(3)))),
        ] {
            let mut array = crate::bson_bytes::DocArray::default();
            for op in &ops {
                array.push_with(|f| op.write_inner(f));
            }
            let o = crate::bson_bytes::document(0, |f| {
                f.array("applyOps", &array);
                if matches!(end, ApplyOpsEnd::Partial) {
                    f.boolean("partialTxn", true);
                }
                if let Some((k, Bson::Int64(n))) = &extra {
                    f.int64(k, *n);
                }
            });
            let extras = EntryExtras {
                session: Some(&session),
                stmt_id: None,
                prev_op_time: Some(doc! {"ts": ts, "t": -1i64}),
            };
            let built = build_entry(
                OpRecord::new("c", "admin.$cmd", None, Arc::new(o), None),
                ts,
                wall,
                &extras,
            );
            let written = build_apply_ops_entry(&ops, end, ts, wall, &extras);
            assert_eq!(written.as_bytes(), built.as_bytes());
        }
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
