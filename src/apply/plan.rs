//! Ops in, write commands out: consecutive ops on one collection become one `update` or
//! `delete` command with many statements, in op order, so a batch costs a few round trips
//! however many ops it holds. Every statement is idempotent (inserts and replacements are
//! upserts by `_id`, `$v:2` diffs set absolute values, deletes by `_id`). Pure logic.
//!
//! `$v:2` diffs are translated with their exact field order: servers that agree must hold the
//! same bytes, and one `$set` would create a diff's new fields in alphabetical order (a pipeline
//! update inserts them in its own order) and leave in place a field the diff moves to the end.

use crate::bson_bytes::{document, DocArray};
use crate::oplog::{
    diff_to_update_with, Entry, OpKind, OplogError, TranslateOptions, UpdateTranslation,
};
use bson::{doc, Bson, Document, RawDocument, RawDocumentBuf, Timestamp};

#[derive(Debug, Clone, PartialEq)]
pub struct PlanError(pub String);

impl From<OplogError> for PlanError {
    fn from(e: OplogError) -> Self {
        PlanError(e.to_string())
    }
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Inserted documents: sent as `insert` (cheapest), or as upserts by `_id` when the
    /// destination may already hold them (see [`Command::body`]).
    Insert,
    Update,
    Delete,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub db: String,
    pub coll: String,
    kind: Kind,
    /// Written once as the elements of the command's array: documents pass from the source's
    /// oplog to the destination in one copy, never decoded.
    statements: DocArray,
}

/// Commands stay well below the 16 MiB BSON limit of a command document.
const MAX_COMMAND_BYTES: usize = 8 * 1024 * 1024;

impl Command {
    fn new(db: &str, coll: &str, kind: Kind) -> Command {
        Command {
            db: db.to_string(),
            coll: coll.to_string(),
            kind,
            statements: DocArray::default(),
        }
    }

    /// The command document (`$db` is added by the driver). `upsert_inserts`: send inserts as
    /// replacements with upsert, which succeed whether or not the document already exists.
    pub fn body(&self, upsert_inserts: bool) -> RawDocumentBuf {
        if self.kind == Kind::Insert && upsert_inserts {
            let mut upserts = Command::new(&self.db, &self.coll, Kind::Update);
            for st in self.statements.iter() {
                let mut q = RawDocumentBuf::new();
                if let Ok(Some(id)) = st.get("_id") {
                    q.append("_id", id.to_raw_bson());
                }
                let mut upsert = RawDocumentBuf::new();
                upsert.append("q", q);
                upsert.append_ref("u", st);
                upsert.append("upsert", true);
                upserts.statements.push(&upsert);
            }
            return upserts.body(false);
        }
        let (name, field) = match self.kind {
            Kind::Insert => ("insert", "documents"),
            Kind::Update => ("update", "updates"),
            Kind::Delete => ("delete", "deletes"),
        };
        document(self.statements.bytes() + self.coll.len(), |f| {
            f.string(name, &self.coll)
                .array(field, &self.statements)
                .boolean("ordered", true);
        })
    }

    pub fn statement_count(&self) -> usize {
        self.statements.len()
    }

    /// [`Command::body`] with only the statements `keep` selects (by index), and their indices;
    /// `None` when it selects none.
    pub fn body_keeping(
        &self,
        upsert_inserts: bool,
        keep: impl Fn(usize) -> bool,
    ) -> Option<(RawDocumentBuf, Vec<usize>)> {
        let kept: Vec<usize> = (0..self.statements.len()).filter(|i| keep(*i)).collect();
        if kept.is_empty() {
            return None;
        }
        if kept.len() == self.statements.len() {
            return Some((self.body(upsert_inserts), kept));
        }
        let mut part = Command::new(&self.db, &self.coll, self.kind);
        for (i, st) in self.statements.iter().enumerate() {
            if keep(i) {
                part.statements.push(st);
            }
        }
        Some((part.body(upsert_inserts), kept))
    }

    pub fn is_insert(&self) -> bool {
        self.kind == Kind::Insert
    }

    /// The statement at `index`: an inserted document, or an update or delete statement.
    pub fn statement(&self, index: usize) -> Option<&RawDocument> {
        self.statements.iter().nth(index)
    }

    /// The `_id` of the document the statement at `index` writes, when it names one.
    pub fn statement_id(&self, index: usize) -> Option<Bson> {
        let st = self.statement(index)?;
        let id = match self.kind {
            Kind::Insert => st.get("_id").ok()??,
            Kind::Update | Kind::Delete => st.get_document("q").ok()?.get("_id").ok()??,
        };
        Bson::try_from(id.to_raw_bson()).ok()
    }
}

/// The field a link in field mode writes into every document it inserts, replaces or updates:
/// `{origin: <server id where the write was made>, ts: <its source ts>}`, as the 2012 tool did,
/// for applications that look at a document to know where its last replicated write came from.
pub const TAG_FIELD: &str = "__mmm";

/// What field mode writes into a document: origin server id and the source op's ts.
#[derive(Debug, Clone, PartialEq)]
pub struct Tag {
    pub origin: String,
    pub ts: Timestamp,
}

impl Tag {
    fn value(&self) -> Document {
        doc! {"origin": &self.origin, "ts": self.ts}
    }

    /// The document with its tag as the last field (any tag it carried is dropped).
    fn on_raw(&self, doc: &RawDocument) -> Result<RawDocumentBuf, PlanError> {
        let mut out = RawDocumentBuf::new();
        for element in doc.iter() {
            let (key, value) =
                element.map_err(|e| PlanError(format!("malformed document in the oplog: {e}")))?;
            if key != TAG_FIELD {
                out.append(key, value.to_raw_bson());
            }
        }
        out.append(
            TAG_FIELD,
            RawDocumentBuf::from_document(&self.value()).unwrap_or_default(),
        );
        Ok(out)
    }

    fn on_document(&self, mut doc: Document) -> Document {
        doc.remove(TAG_FIELD);
        doc.insert(TAG_FIELD, self.value());
        doc
    }

    /// Update operators with the tag set by the last of them. Paths under the tag that the
    /// source changed (a tagged document forwarded along a chain) give way to it.
    fn on_operators(&self, updates: Vec<Document>) -> Vec<Document> {
        let under_tag = |path: &str| {
            path == TAG_FIELD
                || path
                    .strip_prefix(TAG_FIELD)
                    .is_some_and(|r| r.starts_with('.'))
        };
        let mut out: Vec<Document> = updates
            .into_iter()
            .map(|update| {
                update
                    .into_iter()
                    .filter_map(|(op, args)| match args {
                        Bson::Document(fields) => {
                            let kept: Document =
                                fields.into_iter().filter(|(p, _)| !under_tag(p)).collect();
                            (!kept.is_empty()).then(|| (op, Bson::Document(kept)))
                        }
                        other => Some((op, other)),
                    })
                    .collect::<Document>()
            })
            .filter(|u| !u.is_empty())
            .collect();
        if out.is_empty() {
            out.push(Document::new());
        }
        let last = out.last_mut().unwrap();
        match last.get_mut("$set") {
            Some(Bson::Document(set)) => {
                set.insert(TAG_FIELD, self.value());
            }
            _ => {
                last.insert("$set", doc! {TAG_FIELD: self.value()});
            }
        }
        out
    }
}

/// The documents touched, for conflict detection: (destination namespace, `_id`).
pub type Touched = (String, Bson);

#[derive(Debug, Default, Clone)]
pub struct Plan {
    pub commands: Vec<Command>,
    pub ops: usize,
    pub bytes: usize,
    pub touched: Vec<Touched>,
}

fn to_doc(raw: &RawDocument) -> Result<Document, PlanError> {
    Document::try_from(raw).map_err(|e| PlanError(format!("malformed document in the oplog: {e}")))
}

fn id_of(key: &Document) -> Bson {
    key.get("_id").cloned().unwrap_or(Bson::Null)
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    fn push(&mut self, ns: &str, kind: Kind, statement: Document) {
        let raw = RawDocumentBuf::from_document(&statement).unwrap_or_default();
        self.push_raw(ns, kind, &raw);
    }

    fn push_raw(&mut self, ns: &str, kind: Kind, statement: &RawDocument) {
        let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
        let size = statement.as_bytes().len();
        self.bytes += size;
        let fits = |last: &Command| {
            last.kind == kind
                && last.db == db
                && last.coll == coll
                && last.statements.bytes() + size <= MAX_COMMAND_BYTES
        };
        match self.commands.last_mut() {
            Some(last) if fits(last) => last.statements.push(statement),
            _ => {
                let mut command = Command::new(db, coll, kind);
                command.statements.push(statement);
                self.commands.push(command);
            }
        }
    }

    /// Puts a whole version in place: the document (upserted by `_id`, with `tag` in field
    /// mode), or its absence.
    pub fn add_state(
        &mut self,
        dst_ns: &str,
        id: &Bson,
        doc: Option<&Document>,
        tag: Option<&Tag>,
    ) {
        self.touched.push((dst_ns.to_string(), id.clone()));
        match doc {
            Some(d) => {
                let d = match tag {
                    Some(tag) => tag.on_document(d.clone()),
                    None => d.clone(),
                };
                self.push(
                    dst_ns,
                    Kind::Update,
                    doc! {"q": {"_id": id.clone()}, "u": d, "upsert": true},
                )
            }
            None => self.push(
                dst_ns,
                Kind::Delete,
                doc! {"q": {"_id": id.clone()}, "limit": 1},
            ),
        }
        self.ops += 1;
    }

    /// Adds one CRUD op (an oplog entry or a transaction's inner op) bound for `dst_ns`.
    pub fn add(&mut self, dst_ns: &str, op: &RawDocument) -> Result<(), PlanError> {
        self.add_tagged(dst_ns, op, None)
    }

    /// [`Plan::add`], writing `tag` into the document when there is one (field mode).
    pub fn add_tagged(
        &mut self,
        dst_ns: &str,
        op: &RawDocument,
        tag: Option<&Tag>,
    ) -> Result<(), PlanError> {
        let entry = Entry::new(op);
        match entry.op()? {
            OpKind::Insert => {
                let doc = entry.o()?;
                let id = doc
                    .get("_id")
                    .ok()
                    .flatten()
                    .and_then(|v| Bson::try_from(v.to_raw_bson()).ok())
                    .unwrap_or(Bson::Null);
                self.touched.push((dst_ns.to_string(), id));
                match tag {
                    Some(tag) => self.push_raw(dst_ns, Kind::Insert, &tag.on_raw(doc)?),
                    None => self.push_raw(dst_ns, Kind::Insert, doc),
                }
            }
            OpKind::Update => {
                let key = match entry.o2()? {
                    Some(o2) => to_doc(o2)?,
                    None => {
                        return Err(PlanError("an update entry has no o2 (document key)".into()))
                    }
                };
                self.touched.push((dst_ns.to_string(), id_of(&key)));
                let exact = TranslateOptions {
                    exact_field_order: true,
                };
                match diff_to_update_with(&to_doc(entry.o()?)?, exact)? {
                    UpdateTranslation::Replacement(doc) => {
                        let doc = match tag {
                            Some(tag) => tag.on_document(doc),
                            None => doc,
                        };
                        self.push(
                            dst_ns,
                            Kind::Update,
                            doc! {"q": key, "u": doc, "upsert": true},
                        )
                    }
                    UpdateTranslation::Operators(updates) => {
                        let updates = match tag {
                            Some(tag) => tag.on_operators(updates),
                            None => updates,
                        };
                        for u in updates {
                            self.push(dst_ns, Kind::Update, doc! {"q": key.clone(), "u": u});
                        }
                    }
                }
            }
            OpKind::Delete => {
                let key = to_doc(entry.o()?)?;
                self.touched.push((dst_ns.to_string(), id_of(&key)));
                self.push(dst_ns, Kind::Delete, doc! {"q": key, "limit": 1});
            }
            other => {
                return Err(PlanError(format!(
                    "op '{}' is not replicated by a data link",
                    other.letter()
                )));
            }
        }
        self.ops += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::RawDocumentBuf;

    fn raw(d: Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).unwrap()
    }

    fn bodies(p: &Plan) -> Vec<Document> {
        p.commands
            .iter()
            .map(|c| c.body(false).to_document().unwrap())
            .collect()
    }

    #[test]
    fn consecutive_ops_on_one_collection_share_a_command_in_order() {
        let mut p = Plan::default();
        p.add(
            "db.c",
            &raw(doc! {"op": "i", "ns": "db.c", "o": {"_id": 1, "a": 1}}),
        )
        .unwrap();
        p.add("db.c", &raw(doc! {"op": "u", "ns": "db.c", "o": {"$v": 2, "diff": {"u": {"a": 2}}}, "o2": {"_id": 1}}))
            .unwrap();
        p.add(
            "db.c",
            &raw(doc! {"op": "d", "ns": "db.c", "o": {"_id": 1}}),
        )
        .unwrap();
        p.add(
            "db.c",
            &raw(doc! {"op": "i", "ns": "db.c", "o": {"_id": 2}}),
        )
        .unwrap();
        p.add(
            "db.other",
            &raw(doc! {"op": "i", "ns": "db.other", "o": {"_id": 3}}),
        )
        .unwrap();
        assert_eq!(p.ops, 5);
        assert_eq!(
            bodies(&p),
            vec![
                doc! {"insert": "c", "documents": [{"_id": 1, "a": 1}], "ordered": true},
                doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$set": {"a": 2}}}], "ordered": true},
                doc! {"delete": "c", "deletes": [{"q": {"_id": 1}, "limit": 1}], "ordered": true},
                doc! {"insert": "c", "documents": [{"_id": 2}], "ordered": true},
                doc! {"insert": "other", "documents": [{"_id": 3}], "ordered": true},
            ]
        );
        // The idempotent form, for a destination that may already hold the documents.
        assert_eq!(
            p.commands[0].body(true).to_document().unwrap(),
            doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"_id": 1, "a": 1}, "upsert": true}], "ordered": true}
        );
        assert_eq!(p.touched.len(), 5);
        // Statements are found by index, with their document's `_id`.
        assert_eq!(p.commands[1].statement_id(0), Some(Bson::Int32(1)));
        assert_eq!(p.commands[0].statement_id(0), Some(Bson::Int32(1)));
        assert_eq!(p.commands[0].statement_id(1), None);
    }

    #[test]
    fn a_command_can_leave_statements_out() {
        let mut p = Plan::default();
        for id in 0..4 {
            p.add(
                "db.c",
                &raw(doc! {"op": "i", "ns": "db.c", "o": {"_id": id}}),
            )
            .unwrap();
        }
        let (body, kept) = p.commands[0].body_keeping(false, |i| i != 1).unwrap();
        assert_eq!(kept, vec![0, 2, 3]);
        assert_eq!(
            body.to_document().unwrap(),
            doc! {"insert": "c", "documents": [{"_id": 0}, {"_id": 2}, {"_id": 3}], "ordered": true}
        );
        assert!(p.commands[0].body_keeping(false, |_| false).is_none());
        assert_eq!(p.commands[0].statement_id(3), Some(Bson::Int32(3)));
    }

    #[test]
    fn field_mode_tags_every_written_document_and_nothing_else() {
        let tag = Tag {
            origin: "A".into(),
            ts: Timestamp {
                time: 7,
                increment: 1,
            },
        };
        let t = doc! {"origin": "A", "ts": tag.ts};
        let mut p = Plan::default();
        let ops = [
            // an insert that carried a tag from an earlier hop
            doc! {"op": "i", "ns": "db.c", "o": {"_id": 1, "__mmm": {"origin": "Z"}, "a": 1}},
            doc! {"op": "u", "ns": "db.c", "o": {"$v": 2, "diff": {"u": {"a": 2}}}, "o2": {"_id": 1}},
            // a forwarded update that itself changed the tag
            doc! {"op": "u", "ns": "db.c", "o": {"$v": 2, "diff": {"u": {"__mmm": {"origin": "Z"}}}}, "o2": {"_id": 1}},
            doc! {"op": "u", "ns": "db.c", "o": {"_id": 1, "b": 1}, "o2": {"_id": 1}},
            doc! {"op": "d", "ns": "db.c", "o": {"_id": 1}},
        ];
        for op in ops {
            p.add_tagged("db.c", &raw(op), Some(&tag)).unwrap();
        }
        assert_eq!(
            bodies(&p),
            vec![
                doc! {"insert": "c", "documents": [{"_id": 1, "a": 1, "__mmm": t.clone()}], "ordered": true},
                doc! {"update": "c", "updates": [
                    {"q": {"_id": 1}, "u": {"$set": {"a": 2, "__mmm": t.clone()}}},
                    {"q": {"_id": 1}, "u": {"$set": {"__mmm": t.clone()}}},
                    {"q": {"_id": 1}, "u": {"_id": 1, "b": 1, "__mmm": t.clone()}, "upsert": true},
                ], "ordered": true},
                doc! {"delete": "c", "deletes": [{"q": {"_id": 1}, "limit": 1}], "ordered": true},
            ]
        );
    }

    #[test]
    fn a_diff_creates_fields_in_its_own_order_and_moves_the_ones_it_reinserts() {
        // A pipeline update's diff: `v` then `n` are new (one `$set` would create `n` first),
        // `a` existed and moves to the end.
        let mut p = Plan::default();
        p.add("db.c", &raw(doc! {"op": "u", "ns": "db.c", "o": {"$v": 2, "diff": {"i": {"v": 1, "n": 2, "a": 3}}}, "o2": {"_id": 1}}))
            .unwrap();
        let updates: Vec<Document> = bodies(&p)[0]
            .get_array("updates")
            .unwrap()
            .iter()
            .map(|u| u.as_document().unwrap().get_document("u").unwrap().clone())
            .collect();
        assert_eq!(
            updates,
            vec![
                doc! {"$unset": {"v": "", "n": "", "a": ""}},
                doc! {"$set": {"v": 1}},
                doc! {"$set": {"n": 2}},
                doc! {"$set": {"a": 3}},
            ]
        );
    }

    #[test]
    fn replacement_updates_are_upserts_and_commands_are_refused() {
        let mut p = Plan::default();
        p.add(
            "db.c",
            &raw(doc! {"op": "u", "ns": "db.c", "o": {"_id": 1, "x": 2}, "o2": {"_id": 1}}),
        )
        .unwrap();
        assert_eq!(
            p.commands[0]
                .body(false)
                .to_document()
                .unwrap()
                .get_array("updates")
                .unwrap()[0],
            bson::Bson::Document(doc! {"q": {"_id": 1}, "u": {"_id": 1, "x": 2}, "upsert": true})
        );
        assert!(p
            .add(
                "db.c",
                &raw(doc! {"op": "c", "ns": "db.$cmd", "o": {"drop": "c"}})
            )
            .is_err());
    }
}
