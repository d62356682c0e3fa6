//! One collection's in-memory storage: records in natural (insertion) order, the `_id` index and
//! unique secondary indexes. Built on persistent maps so a transaction can take a snapshot of a
//! collection in O(1) and commit by swapping it back.

use crate::server::error::{ServerError, ServerResult};
use crate::server::error_codes::ErrorCode;
use crate::server::query::{get_path, KeyValue};
use crate::server::shell;
use crate::server::validation::Validator;
use bson::{doc, Bson, Document, RawDocumentBuf};
use imbl::OrdMap;
use std::sync::Arc;

pub type RecordId = u64;

/// One stored document, kept as its BSON bytes: compact, and sent to clients as they are.
#[derive(Clone, Debug)]
pub struct Record {
    pub raw: Arc<RawDocumentBuf>,
    /// Server-wide write counter at the last change; transactions use it to detect conflicts.
    pub version: u64,
}

impl Record {
    /// The document, decoded (for matching, updating, sorting).
    pub fn document(&self) -> Document {
        self.raw.to_document().unwrap_or_default()
    }

    pub fn size(&self) -> usize {
        self.raw.as_bytes().len()
    }

    /// The `_id` without decoding the rest.
    pub fn id(&self) -> Option<Bson> {
        raw_id(&self.raw)
    }
}

/// A stored document's `_id`, read from its bytes.
pub fn raw_id(raw: &RawDocumentBuf) -> Option<Bson> {
    let value = raw.get("_id").ok()??;
    Bson::try_from(value.to_raw_bson()).ok()
}

/// Encodes a document for storage, without spare capacity.
pub fn encode(doc: &Document) -> ServerResult<Arc<RawDocumentBuf>> {
    RawDocumentBuf::from_document(doc)
        .map(|raw| Arc::new(compact(raw)))
        .map_err(|e| ServerError::new(ErrorCode::BadValue, format!("cannot store document: {e}")))
}

/// Drops the spare capacity an encoder leaves (up to half of the buffer): stored documents
/// live long, and memory is what an in-memory server runs out of.
pub fn compact(raw: RawDocumentBuf) -> RawDocumentBuf {
    let mut bytes = raw.into_bytes();
    bytes.shrink_to_fit();
    RawDocumentBuf::from_bytes(bytes).expect("bytes of a valid document")
}

#[derive(Clone, Debug)]
pub struct Index {
    /// The spec as listIndexes shows it: `{v: 2, key: {...}, name: ..., unique?: ...}`.
    pub spec: Document,
    pub name: String,
    pub key: Document,
    pub unique: bool,
    /// Entries for unique indexes only (other indexes are catalog entries; scans serve queries).
    pub entries: OrdMap<Vec<KeyValue>, RecordId>,
}

impl Index {
    pub fn new(spec: Document) -> ServerResult<Index> {
        let key = spec
            .get_document("key")
            .map_err(|_| {
                ServerError::new(
                    ErrorCode::CannotCreateIndex,
                    "index spec needs a 'key' document",
                )
            })?
            .clone();
        if key.is_empty() {
            return Err(ServerError::new(
                ErrorCode::CannotCreateIndex,
                "Index keys cannot be an empty field",
            ));
        }
        let name = match spec.get_str("name") {
            Ok(n) => n.to_string(),
            Err(_) => return Err(ServerError::failed_to_parse("Error in specification: the 'name' field is a required property of an index specification")),
        };
        let unique = matches!(spec.get("unique"), Some(Bson::Boolean(true)))
            || matches!(spec.get("unique"), Some(Bson::Int32(1)));
        Ok(Index {
            spec,
            name,
            key,
            unique,
            entries: OrdMap::new(),
        })
    }

    fn key_of(&self, doc: &Document) -> Vec<KeyValue> {
        self.key
            .keys()
            .map(|path| KeyValue(get_path(doc, path).cloned().unwrap_or(Bson::Null)))
            .collect()
    }

    fn dup_error(&self, ns: &str, key: &[KeyValue]) -> ServerError {
        let mut key_pattern = Document::new();
        let mut key_value = Document::new();
        for ((field, dir), value) in self.key.iter().zip(key) {
            key_pattern.insert(field.clone(), dir.clone());
            key_value.insert(field.clone(), value.0.clone());
        }
        duplicate_key_error(ns, &self.name, key_pattern, key_value)
    }
}

pub fn duplicate_key_error(
    ns: &str,
    index: &str,
    key_pattern: Document,
    key_value: Document,
) -> ServerError {
    ServerError::new(
        ErrorCode::DuplicateKey,
        format!(
            "E11000 duplicate key error collection: {ns} index: {index} dup key: {}",
            shell::render_document(&key_value)
        ),
    )
    .with_extra(doc! {"keyPattern": key_pattern, "keyValue": key_value})
}

#[derive(Clone, Debug)]
pub struct CappedLimits {
    pub size: u64,
    pub max: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Collection {
    pub ns: String,
    pub uuid: bson::Uuid,
    /// Options given at creation, as listCollections and the `create` oplog entry show them.
    pub options: Document,
    pub capped: Option<CappedLimits>,
    /// The parsed `validator` of `options` (with its level and action).
    pub validator: Option<Arc<Validator>>,
    pub has_id_index: bool,
    pub records: OrdMap<RecordId, Record>,
    pub id_index: OrdMap<KeyValue, RecordId>,
    pub indexes: Vec<Index>,
    pub next_record: RecordId,
    pub data_size: u64,
    /// Bytes of documents replaced or removed since creation: what snapshots of older versions
    /// of this collection may keep alive (the snapshot history bounds its memory by it).
    pub superseded_bytes: u64,
}

impl Collection {
    pub fn new(ns: &str, options: Document) -> ServerResult<Collection> {
        let capped = if matches!(options.get("capped"), Some(Bson::Boolean(true))) {
            let size = options.get("size").and_then(number_as_u64).ok_or_else(|| {
                ServerError::invalid_options("the 'size' field is required when 'capped' is true")
            })?;
            let max = options
                .get("max")
                .and_then(number_as_u64)
                .filter(|m| *m > 0);
            // mongod rounds capped sizes up to a multiple of 256 bytes.
            Some(CappedLimits {
                size: size.max(4096).div_ceil(256) * 256,
                max,
            })
        } else {
            None
        };
        let validator = Validator::from_options(&options)?.map(Arc::new);
        Ok(Collection {
            ns: ns.to_string(),
            uuid: bson::Uuid::new(),
            options,
            capped,
            validator,
            has_id_index: true,
            records: OrdMap::new(),
            id_index: OrdMap::new(),
            indexes: Vec::new(),
            next_record: 1,
            data_size: 0,
            superseded_bytes: 0,
        })
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The same collection (uuid, options, indexes) with no documents.
    pub fn emptied(&self) -> Collection {
        let mut c = self.clone();
        c.records = OrdMap::new();
        c.id_index = OrdMap::new();
        for index in c.indexes.iter_mut() {
            index.entries = OrdMap::new();
        }
        c.data_size = 0;
        c
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn id_index_spec() -> Document {
        doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}
    }

    pub fn index_specs(&self) -> Vec<Document> {
        let mut specs = Vec::new();
        if self.has_id_index {
            specs.push(Self::id_index_spec());
        }
        specs.extend(self.indexes.iter().map(|i| i.spec.clone()));
        specs
    }

    pub fn find_id(&self, id: &Bson) -> Option<RecordId> {
        self.id_index.get(KeyValue::from_ref(id)).copied()
    }

    /// The document at `rid`, decoded.
    pub fn get(&self, rid: RecordId) -> Option<Document> {
        self.records.get(&rid).map(Record::document)
    }

    /// The `_id` index key of a document with `_id` `id`, when the collection has that index.
    /// Built once per write: the check and the index insert share it.
    fn id_key(&self, id: Option<&Bson>) -> Option<KeyValue> {
        id.filter(|_| self.has_id_index)
            .map(|id| KeyValue(id.clone()))
    }

    /// The document unique secondary indexes take their keys from: the stored one decoded
    /// when there are such indexes, else nothing is decoded.
    fn unique_keys_doc(&self, raw: &RawDocumentBuf) -> Document {
        if self.indexes.iter().any(|i| i.unique) {
            raw.to_document().unwrap_or_default()
        } else {
            Document::new()
        }
    }

    fn check_unique(
        &self,
        id_key: Option<&KeyValue>,
        doc: &Document,
        ignore: Option<RecordId>,
    ) -> ServerResult<()> {
        if let Some(key) = id_key {
            if let Some(existing) = self.id_index.get(key) {
                if Some(*existing) != ignore {
                    return Err(duplicate_key_error(
                        &self.ns,
                        "_id_",
                        doc! {"_id": 1},
                        doc! {"_id": key.0.clone()},
                    ));
                }
            }
        }
        for index in self.indexes.iter().filter(|i| i.unique) {
            let key = index.key_of(doc);
            if let Some(existing) = index.entries.get(&key) {
                if Some(*existing) != ignore {
                    return Err(index.dup_error(&self.ns, &key));
                }
            }
        }
        Ok(())
    }

    fn index_add(&mut self, rid: RecordId, id_key: Option<KeyValue>, doc: &Document) {
        if let Some(key) = id_key {
            self.id_index.insert(key, rid);
        }
        for index in self.indexes.iter_mut().filter(|i| i.unique) {
            let key = index.key_of(doc);
            index.entries.insert(key, rid);
        }
    }

    fn index_remove(&mut self, rec: &Record) {
        if self.has_id_index {
            if let Some(id) = rec.id() {
                self.id_index.remove(&KeyValue(id));
            }
        }
        if self.indexes.iter().any(|i| i.unique) {
            let doc = rec.document();
            for index in self.indexes.iter_mut().filter(|i| i.unique) {
                let key = index.key_of(&doc);
                index.entries.remove(&key);
            }
        }
    }

    /// Inserts at the end of natural order; `rid` overrides the record id (the oplog keys by ts).
    /// Returns the record ids a capped collection truncated to make room.
    pub fn insert(
        &mut self,
        doc: Document,
        version: u64,
        rid: Option<RecordId>,
    ) -> ServerResult<RecordId> {
        let raw = encode(&doc)?;
        self.insert_encoded(&doc, raw, version, rid)
    }

    /// Inserts a document whose bytes are already encoded (`doc` gives the index keys).
    pub fn insert_encoded(
        &mut self,
        doc: &Document,
        raw: Arc<RawDocumentBuf>,
        version: u64,
        rid: Option<RecordId>,
    ) -> ServerResult<RecordId> {
        let id_key = self.id_key(doc.get("_id"));
        self.insert_keyed(id_key, doc, raw, version, rid)
    }

    /// [`Collection::insert_encoded`] with the `_id` index key built already.
    fn insert_keyed(
        &mut self,
        id_key: Option<KeyValue>,
        doc: &Document,
        raw: Arc<RawDocumentBuf>,
        version: u64,
        rid: Option<RecordId>,
    ) -> ServerResult<RecordId> {
        self.check_unique(id_key.as_ref(), doc, None)?;
        let rid = rid.unwrap_or(self.next_record);
        self.next_record = self.next_record.max(rid + 1);
        self.index_add(rid, id_key, doc);
        self.data_size += raw.as_bytes().len() as u64;
        self.records.insert(rid, Record { raw, version });
        self.truncate_capped();
        Ok(rid)
    }

    /// The `_id` index key of stored bytes, read straight from them.
    fn raw_id_key(&self, raw: &RawDocumentBuf) -> Option<KeyValue> {
        if self.has_id_index {
            raw_id(raw).map(KeyValue)
        } else {
            None
        }
    }

    /// Inserts an already stored record's bytes (a transaction's commit).
    pub fn insert_record(
        &mut self,
        raw: Arc<RawDocumentBuf>,
        version: u64,
    ) -> ServerResult<RecordId> {
        let id_key = self.raw_id_key(&raw);
        let keys = self.unique_keys_doc(&raw);
        self.insert_keyed(id_key, &keys, raw, version, None)
    }

    /// [`Collection::insert_record`] for bytes whose `_id` the caller read already.
    pub fn insert_record_with_id(
        &mut self,
        raw: Arc<RawDocumentBuf>,
        version: u64,
        id: &Bson,
    ) -> ServerResult<RecordId> {
        let id_key = self.id_key(Some(id));
        let keys = self.unique_keys_doc(&raw);
        self.insert_keyed(id_key, &keys, raw, version, None)
    }

    /// Replaces the record at `rid` with already stored bytes (a transaction's commit).
    pub fn replace_record(
        &mut self,
        rid: RecordId,
        raw: Arc<RawDocumentBuf>,
        version: u64,
    ) -> ServerResult<()> {
        let id_key = self.raw_id_key(&raw);
        let keys = self.unique_keys_doc(&raw);
        self.replace_keyed(rid, id_key, &keys, raw, version)
    }

    /// Appends an entry with no index keys (the oplog) from its bytes.
    pub fn append_raw(&mut self, raw: RawDocumentBuf, version: u64, rid: RecordId) {
        debug_assert!(!self.has_id_index && self.indexes.is_empty());
        self.next_record = self.next_record.max(rid + 1);
        self.data_size += raw.as_bytes().len() as u64;
        self.records.insert(
            rid,
            Record {
                raw: Arc::new(raw),
                version,
            },
        );
        self.truncate_capped();
    }

    pub fn replace(&mut self, rid: RecordId, doc: Document, version: u64) -> ServerResult<()> {
        let raw = encode(&doc)?;
        self.replace_encoded(rid, &doc, raw, version)
    }

    /// Replaces the record at `rid` with encoded bytes (`doc` gives the index keys).
    pub fn replace_encoded(
        &mut self,
        rid: RecordId,
        doc: &Document,
        raw: Arc<RawDocumentBuf>,
        version: u64,
    ) -> ServerResult<()> {
        let id_key = self.id_key(doc.get("_id"));
        self.replace_keyed(rid, id_key, doc, raw, version)
    }

    fn replace_keyed(
        &mut self,
        rid: RecordId,
        id_key: Option<KeyValue>,
        doc: &Document,
        raw: Arc<RawDocumentBuf>,
        version: u64,
    ) -> ServerResult<()> {
        self.check_unique(id_key.as_ref(), doc, Some(rid))?;
        let old = self
            .records
            .get(&rid)
            .cloned()
            .ok_or_else(|| ServerError::new(ErrorCode::InternalError, "record vanished"))?;
        self.index_remove(&old);
        self.index_add(rid, id_key, doc);
        self.data_size = self.data_size + raw.as_bytes().len() as u64 - old.size() as u64;
        self.superseded_bytes += old.size() as u64;
        self.records.insert(rid, Record { raw, version });
        Ok(())
    }

    /// Removes the record at `rid` and returns it.
    pub fn remove(&mut self, rid: RecordId) -> Option<Record> {
        let rec = self.records.remove(&rid)?;
        self.index_remove(&rec);
        self.data_size -= rec.size() as u64;
        self.superseded_bytes += rec.size() as u64;
        Some(rec)
    }

    fn truncate_capped(&mut self) {
        let Some(limits) = self.capped.clone() else {
            return;
        };
        while self.records.len() > 1
            && (self.data_size > limits.size
                || limits.max.is_some_and(|m| self.records.len() as u64 > m))
        {
            let Some((rid, _)) = self.records.get_min().map(|(k, v)| (*k, v.clone())) else {
                break;
            };
            self.remove(rid);
        }
    }

    pub fn first_record_id(&self) -> Option<RecordId> {
        self.records.get_min().map(|(k, _)| *k)
    }

    pub fn add_index(&mut self, mut index: Index) -> ServerResult<()> {
        if index.unique {
            let mut entries = OrdMap::new();
            for (rid, rec) in self.records.iter() {
                let key = index.key_of(&rec.document());
                if entries.insert(key.clone(), *rid).is_some() {
                    return Err(index.dup_error(&self.ns, &key));
                }
            }
            index.entries = entries;
        }
        self.indexes.push(index);
        Ok(())
    }
}

pub fn number_as_u64(b: &Bson) -> Option<u64> {
    match b {
        Bson::Int32(i) if *i >= 0 => Some(*i as u64),
        Bson::Int64(i) if *i >= 0 => Some(*i as u64),
        Bson::Double(d) if *d >= 0.0 => Some(*d as u64),
        _ => None,
    }
}

/// The size of `doc` encoded as BSON, counted without encoding it (every write logs an
/// entry whose size is estimated from its parts).
pub fn bson_size(doc: &Document) -> usize {
    4 + doc
        .iter()
        .map(|(key, value)| 1 + key.len() + 1 + value_size(value))
        .sum::<usize>()
        + 1
}

/// Encoded bytes of a value, without its type byte and key.
fn value_size(value: &Bson) -> usize {
    match value {
        Bson::Double(_) | Bson::DateTime(_) | Bson::Timestamp(_) | Bson::Int64(_) => 8,
        Bson::Int32(_) => 4,
        Bson::Decimal128(_) => 16,
        Bson::ObjectId(_) => 12,
        Bson::Boolean(_) => 1,
        Bson::Null | Bson::Undefined | Bson::MaxKey | Bson::MinKey => 0,
        Bson::String(s) | Bson::JavaScriptCode(s) | Bson::Symbol(s) => 4 + s.len() + 1,
        Bson::Document(d) => bson_size(d),
        Bson::Array(items) => {
            4 + items
                .iter()
                .enumerate()
                .map(|(i, v)| 1 + decimal_digits(i) + 1 + value_size(v))
                .sum::<usize>()
                + 1
        }
        // The old binary subtype repeats the length inside the payload.
        Bson::Binary(b) if b.subtype == bson::spec::BinarySubtype::BinaryOld => {
            4 + 1 + 4 + b.bytes.len()
        }
        Bson::Binary(b) => 4 + 1 + b.bytes.len(),
        Bson::RegularExpression(r) => r.pattern.len() + 1 + r.options.len() + 1,
        Bson::JavaScriptCodeWithScope(c) => 4 + (4 + c.code.len() + 1) + bson_size(&c.scope),
        // Its parts are private: encoded, as one field of a document (4 + type + key "" + 1).
        Bson::DbPointer(_) => bson_size_encoded(&doc! {"": value.clone()}) - 7,
    }
}

fn decimal_digits(i: usize) -> usize {
    i.checked_ilog10().map_or(1, |d| d as usize + 1)
}

fn bson_size_encoded(doc: &Document) -> usize {
    let mut buf = Vec::new();
    doc.to_writer(&mut buf).map(|_| buf.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::spec::BinarySubtype;
    use bson::{Binary, Decimal128, JavaScriptCodeWithScope, Regex, Timestamp};

    fn db_pointer() -> Bson {
        // {p: DBPointer("db.c", ObjectId(...))}, from its bytes: its parts are private.
        let mut bytes = vec![0u8; 4];
        bytes.push(0x0C);
        bytes.extend_from_slice(b"p\0");
        bytes.extend_from_slice(&5i32.to_le_bytes());
        bytes.extend_from_slice(b"db.c\0");
        bytes.extend_from_slice(&[7u8; 12]);
        bytes.push(0);
        let len = bytes.len() as i32;
        bytes[..4].copy_from_slice(&len.to_le_bytes());
        Document::from_reader(bytes.as_slice())
            .unwrap()
            .remove("p")
            .unwrap()
    }

    #[test]
    fn sizes_are_counted_as_the_encoder_writes_them() {
        let long: Vec<Bson> = (0..105).map(|i| Bson::Int32(i)).collect();
        let docs = [
            doc! {},
            doc! {"_id": 1},
            doc! {"_id": {"n": "bench.c", "i": 7_i64}, "h": 5_i64, "s": "é", "d": false},
            doc! {
                "double": 1.5, "string": "", "null": Bson::Null, "undefined": Bson::Undefined,
                "min": Bson::MinKey, "max": Bson::MaxKey, "oid": bson::oid::ObjectId::new(),
                "date": bson::DateTime::from_millis(5), "ts": Timestamp { time: 1, increment: 2 },
                "dec": Decimal128::from_bytes([1; 16]), "sym": Bson::Symbol("s".into()),
                "code": Bson::JavaScriptCode("f()".into()),
                "scope": Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope {
                    code: "g()".into(), scope: doc! {"x": [1, {"y": "z"}]},
                }),
                "re": Bson::RegularExpression(Regex { pattern: "a.*b".into(), options: "xi".into() }),
                "bin": Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2, 3] },
                "old": Binary { subtype: BinarySubtype::BinaryOld, bytes: vec![4; 9] },
                "uuid": Binary { subtype: BinarySubtype::Uuid, bytes: vec![5; 16] },
                "ptr": db_pointer(),
            },
            doc! {"a": long.clone(), "nested": [[long], {"deep": {"deeper": [[[]]]}}]},
        ];
        for d in &docs {
            assert_eq!(bson_size(d), bson_size_encoded(d), "{d:?}");
        }
    }
}
