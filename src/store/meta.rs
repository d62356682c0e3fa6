//! `__mmm.meta` and `__mmm.clock`: what each server knows of the versions it holds.
//!
//! - `meta`: one row per document written since replication began, `{_id: {n: ns, i: _id},
//!   h, s, d, t}`: the stamp `(h, s)` of the version this server holds, `d: true` for a
//!   tombstone (the document is deleted), and `t`, the oplog position through which the row
//!   accounts for this server's own writes to the document. Rows of local writes are written
//!   by observation (`apply/observe.rs`), rows of replicated versions in the transaction that
//!   installs them. Rows are written as whole replacements, so their oplog entries carry the
//!   whole row: readers of the oplog learn the stamp of every version a batch installed.
//!   Rows of namespaces under the `fields` policy also hold `fs`, the version's field stamps
//!   (`converge/fields.rs`); rows of other namespaces never do, so they cost what they did.
//!   `c`, when known, is the content hash of the version (`doc_hash::content_hash`): after
//!   an outage that lost a server's oplog unobserved, a document whose content no longer
//!   hashes to its row's `c` was changed in the lost stretch (`converge/lost.rs`).
//! - `clock`: one document, `{_id: "hlc", pos, h, know}`: observation has accounted for
//!   every local write up to oplog position `pos`; `h` is the server's clock there and `know`
//!   what it had seen of each site (see `converge/stamp.rs`).

use super::{StoreError, MMM_DB};
use crate::bson_bytes::{self, DocArray, Fields};
use crate::converge::fields::FieldStamps;
use crate::converge::{Knowledge, Stamp};
use crate::oplog::{Entry, OpKind};
use bson::{doc, Bson, Document, RawDocument, RawDocumentBuf, Timestamp};
use mongodb::{Client, ClientSession, Collection, Database};
use std::collections::HashMap;

/// `__mmm.meta`, as it appears in oplog entries.
pub const META_NS: &str = "__mmm.meta";
pub const META: &str = "meta";
pub const CLOCK: &str = "clock";
const CLOCK_ID: &str = "hlc";

/// A document, as a map key: its namespace and its `_id` as BSON bytes (every entry of one
/// document carries the same bytes).
pub type DocKey = (String, Vec<u8>);

pub fn doc_key(ns: &str, id: &Bson) -> DocKey {
    (ns.to_string(), id_bytes(id))
}

/// `{"": id}` encoded. The usual `_id` types are written straight into the bytes (every oplog
/// reader builds a key per write); the others go through a document.
fn id_bytes(id: &Bson) -> Vec<u8> {
    let mut raw = bson::RawDocumentBuf::new();
    match id {
        Bson::Int32(i) => raw.append("", *i),
        Bson::Int64(i) => raw.append("", *i),
        Bson::String(s) => raw.append("", s.as_str()),
        Bson::ObjectId(o) => raw.append("", *o),
        other => {
            let mut out = Vec::new();
            let _ = doc! {"": other.clone()}.to_writer(&mut out);
            return out;
        }
    }
    raw.into_bytes()
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetaRow {
    pub ns: String,
    pub id: Bson,
    pub stamp: Stamp,
    pub deleted: bool,
    /// This server's own writes to the document up to here are accounted for.
    pub through: Timestamp,
    /// The version's field stamps, only under the `fields` policy.
    pub fields: Option<FieldStamps>,
    /// The version's content hash, when known (never for tombstones).
    pub content: Option<i64>,
}

impl MetaRow {
    pub fn row_id(ns: &str, id: &Bson) -> Document {
        doc! {"n": ns, "i": id.clone()}
    }

    pub fn key(&self) -> DocKey {
        doc_key(&self.ns, &self.id)
    }

    pub fn to_document(&self) -> Document {
        let mut d = doc! {
            "_id": Self::row_id(&self.ns, &self.id),
            "h": self.stamp.h, "s": &self.stamp.site, "d": self.deleted, "t": self.through,
        };
        if let Some(f) = &self.fields {
            d.insert("fs", f.to_document());
        }
        if let Some(c) = self.content {
            d.insert("c", c);
        }
        d
    }

    /// Writes the row as [`MetaRow::to_document`] encodes it, straight into a command being
    /// built: an apply writes a row for every document it installs.
    pub fn write_into(&self, f: &mut Fields) {
        f.nested("_id", |k| self.write_id(k))
            .int64("h", self.stamp.h)
            .string("s", &self.stamp.site)
            .boolean("d", self.deleted)
            .timestamp("t", self.through);
        if let Some(fs) = &self.fields {
            if let Ok(raw) = RawDocumentBuf::from_document(&fs.to_document()) {
                f.document("fs", &raw);
            }
        }
        if let Some(c) = self.content {
            f.int64("c", c);
        }
    }

    /// [`MetaRow::row_id`]'s fields.
    fn write_id(&self, f: &mut Fields) {
        f.string("n", &self.ns).value("i", &self.id);
    }

    /// The row `d` holds, or `None` when it is not one (field stamps that are there but
    /// malformed make the whole row unreadable: guessing them would break the merge).
    pub fn from_document(d: &Document) -> Option<MetaRow> {
        let key = d.get_document("_id").ok()?;
        let fields = match d.get("fs") {
            None => None,
            Some(Bson::Document(f)) => Some(FieldStamps::from_document(f)?),
            Some(_) => return None,
        };
        Some(MetaRow {
            ns: key.get_str("n").ok()?.to_string(),
            id: key.get("i")?.clone(),
            stamp: Stamp::new(d.get_i64("h").ok()?, d.get_str("s").ok()?),
            deleted: d.get_bool("d").unwrap_or(false),
            through: d.get_timestamp("t").unwrap_or(Timestamp {
                time: 0,
                increment: 0,
            }),
            fields,
            content: d.get_i64("c").ok(),
        })
    }

    /// The row an oplog entry (or a transaction's inner op) wrote, if it wrote one.
    pub fn from_oplog_op(op: &RawDocument) -> Option<MetaRow> {
        let entry = Entry::new(op);
        if entry.ns().ok()? != META_NS
            || !matches!(entry.op().ok()?, OpKind::Insert | OpKind::Update)
        {
            return None;
        }
        let o = Document::try_from(entry.o().ok()?).ok()?;
        MetaRow::from_document(&o)
    }
}

/// The server's observation position and clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Clock {
    /// Observation resumes reading the oplog after this position...
    pub pos: Timestamp,
    /// ...and skips the units up to this one, already accounted for (a transaction that was
    /// still open at `pos` ends later than units after it).
    pub applied: Timestamp,
    pub h: i64,
    pub know: Knowledge,
    /// The last stretch of oplog that rolled over before observation read it, (from, to): rows
    /// do not account for writes between the two.
    pub gap: Option<(Timestamp, Timestamp)>,
}

impl Clock {
    pub fn to_document(&self) -> Document {
        let mut d = doc! {"_id": CLOCK_ID, "pos": self.pos, "applied": self.applied, "h": self.h, "know": self.know.to_document()};
        if let Some((from, to)) = self.gap {
            d.insert("gap", doc! {"from": from, "to": to});
        }
        d
    }

    pub fn from_document(d: &Document) -> Option<Clock> {
        let pos = d.get_timestamp("pos").ok()?;
        Some(Clock {
            pos,
            applied: d.get_timestamp("applied").unwrap_or(pos),
            h: d.get_i64("h").ok()?,
            know: d
                .get_document("know")
                .map(Knowledge::from_document)
                .unwrap_or_default(),
            gap: d
                .get_document("gap")
                .ok()
                .and_then(|g| Some((g.get_timestamp("from").ok()?, g.get_timestamp("to").ok()?))),
        })
    }
}

fn store_error(what: &'static str) -> impl FnOnce(mongodb::error::Error) -> StoreError {
    move |source| StoreError { what, source }
}

fn meta(client: &Client) -> Collection<Document> {
    client.database(MMM_DB).collection(META)
}

fn clock(client: &Client) -> Collection<Document> {
    client.database(MMM_DB).collection(CLOCK)
}

/// The clock, read in `session`'s transaction (the first read also fixes its snapshot).
pub async fn read_clock(
    client: &Client,
    session: Option<&mut ClientSession>,
) -> Result<Option<Clock>, StoreError> {
    let coll = clock(client);
    let find = coll.find_one(doc! {"_id": CLOCK_ID});
    let found = match session {
        Some(s) => find.session(s).await,
        None => find.await,
    }
    .map_err(store_error("reading __mmm.clock"))?;
    Ok(found.as_ref().and_then(Clock::from_document))
}

/// Writes the clock in `session`'s transaction. The transaction read it first, so a concurrent
/// observer that moved it since is a write conflict: of two observers of one server, only one
/// commits each stretch of its oplog; the other tries again from the new position.
pub async fn write_clock(
    client: &Client,
    session: &mut ClientSession,
    new: &Clock,
) -> Result<(), mongodb::error::Error> {
    clock(client)
        .replace_one(doc! {"_id": CLOCK_ID}, new.to_document())
        .upsert(true)
        .session(session)
        .await?;
    Ok(())
}

/// Creates the clock if there is none yet, anchored at `start` (outside any transaction, so
/// that two first observers do not fail each other's transactions).
pub async fn ensure_clock(client: &Client, start: &Clock) -> Result<Clock, StoreError> {
    if let Some(c) = read_clock(client, None).await? {
        return Ok(c);
    }
    match clock(client).insert_one(start.to_document()).await {
        Ok(_) => Ok(start.clone()),
        Err(e) if is_duplicate_key(&e) => read_clock(client, None)
            .await?
            .ok_or_else(|| store_error("reading __mmm.clock")(e)),
        Err(e) => Err(store_error("creating __mmm.clock")(e)),
    }
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => {
            w.code == 11000
        }
        mongodb::error::ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}

/// The rows of `keys`, read in `session`'s transaction.
pub async fn read_rows(
    client: &Client,
    session: &mut ClientSession,
    keys: &[(String, Bson)],
) -> Result<HashMap<DocKey, MetaRow>, mongodb::error::Error> {
    let mut out = HashMap::new();
    for chunk in keys.chunks(10_000) {
        let ids: Vec<Bson> = chunk
            .iter()
            .map(|(ns, id)| Bson::Document(MetaRow::row_id(ns, id)))
            .collect();
        let mut cursor = meta(client)
            .find(doc! {"_id": {"$in": ids}})
            .session(&mut *session)
            .await?;
        while let Some(d) = cursor.next(&mut *session).await {
            if let Some(row) = MetaRow::from_document(&d?) {
                out.insert(row.key(), row);
            }
        }
    }
    Ok(out)
}

/// The row of one document, outside any transaction.
pub async fn read_row(client: &Client, ns: &str, id: &Bson) -> Result<Option<MetaRow>, StoreError> {
    let found = meta(client)
        .find_one(doc! {"_id": MetaRow::row_id(ns, id)})
        .await
        .map_err(store_error("reading __mmm.meta"))?;
    Ok(found.as_ref().and_then(MetaRow::from_document))
}

/// Upserts `rows` (whole replacements) in `session`'s transaction.
pub async fn write_rows(
    client: &Client,
    session: &mut ClientSession,
    rows: &[MetaRow],
) -> Result<(), mongodb::error::Error> {
    write_rows_over(client, session, rows, None).await
}

/// Writes `rows` in a transaction that read `stored` (the rows of the same documents, in its
/// snapshot): rows of documents it found none for are inserted, which costs the server less
/// than an upsert. A row that another transaction stored since the snapshot makes the insert
/// fail with a write conflict, as an upsert would, and the transaction runs again.
pub async fn write_rows_over<'r>(
    client: &Client,
    session: &mut ClientSession,
    rows: impl IntoIterator<Item = &'r MetaRow>,
    stored: Option<&HashMap<DocKey, MetaRow>>,
) -> Result<(), mongodb::error::Error> {
    let (fresh, known): (Vec<&MetaRow>, Vec<&MetaRow>) = rows
        .into_iter()
        .partition(|r| stored.is_some_and(|s| !s.contains_key(&r.key())));
    let db = client.database(MMM_DB);
    send_rows(&db, session, "insert", "documents", &fresh, |r, f| {
        r.write_into(f)
    })
    .await?;
    send_rows(&db, session, "update", "updates", &known, |r, f| {
        f.nested("q", |q| {
            q.nested("_id", |k| r.write_id(k));
        })
        .nested("u", |u| r.write_into(u))
        .boolean("upsert", true);
    })
    .await?;
    Ok(())
}

/// Bytes of statements per command that writes rows: well under the 16 MiB a command may
/// take, whatever the size of the `_id`s.
const ROW_COMMAND_BYTES: usize = 4 * 1024 * 1024;
/// Rows per command at most: a batch's writes take time in proportion to its size, command
/// for command, so that a batch too long for the destination's transaction lifetime gets
/// shorter when its link halves it.
const ROW_COMMAND_STATEMENTS: usize = 1_000;

/// Sends one `command` (`insert` or `update`) on `__mmm.meta` per thousand rows (or few MiB),
/// each row written into its `field` array by `statement`.
async fn send_rows(
    db: &Database,
    session: &mut ClientSession,
    command: &str,
    field: &str,
    rows: &[&MetaRow],
    statement: impl Fn(&MetaRow, &mut Fields),
) -> Result<(), mongodb::error::Error> {
    let mut statements = DocArray::default();
    for (i, row) in rows.iter().enumerate() {
        statements.push_with(|f| statement(row, f));
        if statements.bytes() >= ROW_COMMAND_BYTES
            || statements.len() >= ROW_COMMAND_STATEMENTS
            || i + 1 == rows.len()
        {
            let body = bson_bytes::document(statements.bytes() + command.len(), |f| {
                f.string(command, META)
                    .array(field, &statements)
                    .boolean("ordered", true);
            });
            db.run_raw_command(body).session(&mut *session).await?;
            statements = DocArray::default();
        }
    }
    Ok(())
}

/// Deletes the tombstones that account for writes before `before` (see `replicate/mod.rs` for
/// when that is safe). Returns how many went.
pub async fn purge_tombstones(client: &Client, before: Timestamp) -> Result<u64, StoreError> {
    let done = meta(client)
        .delete_many(doc! {"d": true, "t": {"$lt": before}})
        .await
        .map_err(store_error("purging tombstones from __mmm.meta"))?;
    Ok(done.deleted_count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_the_usual_ids_are_the_bytes_of_the_id_in_a_document() {
        let ids = [
            Bson::Int32(-7),
            Bson::Int64(1 << 40),
            Bson::String("é\u{0}x".into()),
            Bson::String(String::new()),
            Bson::ObjectId(bson::oid::ObjectId::new()),
            Bson::Double(1.5),
            Bson::Document(doc! {"a": 1, "b": [1, 2]}),
        ];
        for id in ids {
            let mut expected = Vec::new();
            doc! {"": id.clone()}.to_writer(&mut expected).unwrap();
            assert_eq!(
                doc_key("db.c", &id),
                ("db.c".to_string(), expected),
                "{id:?}"
            );
        }
    }

    #[test]
    fn rows_written_in_place_are_the_bytes_of_their_document() {
        let ids = [
            Bson::Int32(3),
            Bson::String("x".into()),
            Bson::ObjectId(bson::oid::ObjectId::new()),
            Bson::Document(doc! {"a": 1, "b": [1, 2]}),
            Bson::Double(2.5),
        ];
        for (i, id) in ids.into_iter().enumerate() {
            let row = MetaRow {
                ns: "db.c".into(),
                id,
                stamp: Stamp::new(42 << 16, "cloud"),
                deleted: i % 2 == 1,
                through: Timestamp {
                    time: 5,
                    increment: i as u32,
                },
                fields: (i == 2).then(|| FieldStamps::whole(Stamp::new(7, "f"), false)),
                content: (i != 1).then_some(-99),
            };
            let written = bson_bytes::document(0, |f| row.write_into(f));
            let expected = RawDocumentBuf::from_document(&row.to_document()).unwrap();
            assert_eq!(written.as_bytes(), expected.as_bytes(), "{row:?}");
        }
    }

    #[test]
    fn rows_and_clocks_round_trip_and_rows_are_read_back_from_oplog_ops() {
        let row = MetaRow {
            ns: "db.c".into(),
            id: Bson::Document(doc! {"a": 1, "b": [1, 2]}),
            stamp: Stamp::new(42, "cloud"),
            deleted: true,
            through: Timestamp {
                time: 5,
                increment: 1,
            },
            fields: None,
            content: None,
        };
        assert_eq!(row.to_document().get("c"), None);
        // A content hash of another type (a peer's row, hand-edited or from elsewhere) is
        // unknown, never a wrong hash: the row is read without it.
        for hostile in [
            Bson::String("1".into()),
            Bson::Int32(1),
            Bson::Null,
            Bson::Document(doc! {}),
        ] {
            let mut d = row.to_document();
            d.insert("c", hostile);
            assert_eq!(MetaRow::from_document(&d).map(|r| r.content), Some(None));
        }
        assert_eq!(
            MetaRow::from_document(&row.to_document()),
            Some(row.clone())
        );
        for op in ["i", "u"] {
            let entry = bson::RawDocumentBuf::from_document(
                &doc! {"op": op, "ns": META_NS, "o": row.to_document(), "o2": {"_id": MetaRow::row_id("db.c", &row.id)}},
            )
            .unwrap();
            assert_eq!(MetaRow::from_oplog_op(&entry), Some(row.clone()));
        }
        let other = bson::RawDocumentBuf::from_document(
            &doc! {"op": "i", "ns": "db.meta", "o": row.to_document()},
        )
        .unwrap();
        assert_eq!(MetaRow::from_oplog_op(&other), None);
        let c = Clock {
            pos: Timestamp {
                time: 9,
                increment: 2,
            },
            applied: Timestamp {
                time: 9,
                increment: 3,
            },
            h: 7,
            know: Knowledge([("a".to_string(), 3)].into_iter().collect()),
            gap: Some((
                Timestamp {
                    time: 8,
                    increment: 0,
                },
                Timestamp {
                    time: 9,
                    increment: 0,
                },
            )),
        };
        assert_eq!(Clock::from_document(&c.to_document()), Some(c));
        // Rows under `fields` carry their field stamps, through the oplog too; a row without
        // them has none (other policies), malformed ones make the row unreadable.
        let mut fs = FieldStamps::whole(Stamp::new(40, "cloud"), false);
        fs.fields.insert("a.b".into(), Stamp::new(41, "edge"));
        fs.fields.insert("$x".into(), Stamp::new(42, "cloud"));
        let with = MetaRow {
            fields: Some(fs),
            deleted: false,
            content: Some(-7),
            ..row.clone()
        };
        assert_eq!(
            MetaRow::from_document(&with.to_document()),
            Some(with.clone())
        );
        let entry = bson::RawDocumentBuf::from_document(
            &doc! {"op": "u", "ns": META_NS, "o": with.to_document(), "o2": {"_id": 1}},
        )
        .unwrap();
        assert_eq!(MetaRow::from_oplog_op(&entry), Some(with.clone()));
        assert!(!row.to_document().contains_key("fs"));
        for bad in [
            Bson::Int32(1),
            Bson::Document(doc! {}),
            Bson::Document(
                doc! {"b": [40_i64, "cloud"], "d": false, "f": [[39_i64, "edge", ["a"]]]},
            ),
            Bson::Document(
                doc! {"b": null, "d": false, "f": [[1_i64, "e", ["a"]], [2_i64, "e", ["a"]]]},
            ),
            Bson::Document(doc! {"b": null, "d": false, "f": [[1_i64, "e", [1]]]}),
        ] {
            let mut d = with.to_document();
            d.insert("fs", bad.clone());
            assert_eq!(MetaRow::from_document(&d), None, "{bad}");
        }
        // Hostile rows are not rows.
        assert_eq!(
            MetaRow::from_document(&doc! {"_id": 1, "h": 1, "s": "a"}),
            None
        );
        assert_eq!(
            MetaRow::from_document(&doc! {"_id": {"n": "a.b", "i": 1}, "h": "x", "s": "a"}),
            None
        );
    }
}
