//! `__mmm.checkpoints`: one document per link on its destination, written as the first write of
//! every transaction that applies a batch, so data and position commit together. In the
//! destination's oplog that write names the batch's origin, which is how tailers recognise
//! replicated writes (see `replicate/provenance.rs`).

use super::copy_progress::CopyProgress;
use super::{StoreError, CHECKPOINTS, CHECKPOINTS_NS, MMM_DB};
use crate::converge::Knowledge;
use crate::oplog::{Entry, OpKind};
use bson::{doc, DateTime, Document, RawBsonRef, RawDocument, Timestamp};
use mongodb::{Client, ClientSession, Collection};

/// A DDL command about to run outside any transaction, as a checkpoint stores it: the database
/// it runs on, the command, and the error codes that mean "already done".
#[derive(Debug, Clone, PartialEq)]
pub struct DdlCommand {
    /// Database the command runs on.
    pub db: String,
    pub body: Document,
    /// Error codes that mean the change is already there.
    pub done_codes: Vec<i32>,
}

impl DdlCommand {
    pub fn to_document(&self) -> Document {
        doc! {"db": &self.db, "body": self.body.clone(), "done_codes": self.done_codes.clone()}
    }

    pub fn from_document(d: &Document) -> Option<DdlCommand> {
        Some(DdlCommand {
            db: d.get_str("db").ok()?.to_string(),
            body: d.get_document("body").ok()?.clone(),
            done_codes: d
                .get_array("done_codes")
                .ok()?
                .iter()
                .filter_map(|c| c.as_i32())
                .collect(),
        })
    }
}

/// A link's position on its destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub link: String,
    /// Server id where the ops of the last batch were first written.
    pub origin: String,
    /// Server id of the link's source.
    pub src: String,
    /// Resume reading the source after this ts.
    pub ts: Timestamp,
    /// The last unit applied (units up to it are skipped after a resume from `ts`).
    pub applied: Timestamp,
    /// Running totals kept with the checkpoint, so `mmm status` can show them from anywhere.
    pub ops_applied: u64,
    pub conflicts: u64,
    /// Ops the destination refused and the link journaled in `__mmm.rejected`.
    pub rejected: u64,
    /// A DDL command about to run outside any transaction (the source entry's ts with it):
    /// after a crash it is run again, idempotently, before anything else.
    pub pending_ddl: Option<(DdlCommand, Timestamp)>,
    /// An initial sync in progress (see `replicate/initial_sync.rs`).
    pub initial_sync: Option<CopyProgress>,
    /// The source's clock after `applied` (see `converge/observe.rs`): stamps of the entries
    /// after it are computed from here after a restart.
    pub src_clock: Option<SrcClock>,
    /// What the writer of the batch's versions knew (read by links that forward them).
    pub writer_know: Option<Knowledge>,
    /// Per site, the largest stamp among the batch's versions, installed or not: the server
    /// has seen them all (a version it discarded was still seen, and what it writes next was
    /// made knowing it).
    pub seen: Option<Knowledge>,
    /// `seen` also covers the stamp of every `__mmm.meta` row the batch's transaction writes
    /// (resolutions and versions read back included): observation then moves the clock from
    /// `seen` alone, without reading the rows (see `ClockState::witness_batch`).
    pub seen_covers_rows: bool,
}

/// A source's clock as a link reading it carries it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SrcClock {
    pub h: i64,
    pub know: Knowledge,
}

impl Checkpoint {
    pub fn to_document(&self) -> Document {
        let mut d = doc! {
            "_id": &self.link, "origin": &self.origin, "src": &self.src,
            "ts": self.ts, "applied": self.applied, "wall": DateTime::now(),
            "ops_applied": self.ops_applied as i64, "conflicts": self.conflicts as i64,
            "rejected": self.rejected as i64,
        };
        if let Some((ddl, ts)) = &self.pending_ddl {
            d.insert("pending_ddl", ddl.to_document());
            d.insert("pending_ts", *ts);
        }
        if let Some(progress) = &self.initial_sync {
            d.insert("initial_sync", progress.to_document());
        }
        if let Some(c) = &self.src_clock {
            d.insert("src_clock", doc! {"h": c.h, "know": c.know.to_document()});
        }
        if let Some(k) = &self.writer_know {
            d.insert("writer_know", k.to_document());
        }
        if let Some(k) = &self.seen {
            d.insert("seen", k.to_document());
        }
        if self.seen_covers_rows {
            d.insert("seen_rows", true);
        }
        d
    }

    /// `None` for a document that is not a checkpoint (missing or mistyped fields).
    pub fn from_document(d: &Document) -> Option<Checkpoint> {
        let ts = d.get_timestamp("ts").ok()?;
        let count = |k| d.get_i64(k).unwrap_or(0).max(0) as u64;
        Some(Checkpoint {
            link: d.get_str("_id").ok()?.to_string(),
            origin: d.get_str("origin").ok()?.to_string(),
            src: d.get_str("src").ok()?.to_string(),
            ts,
            applied: d.get_timestamp("applied").unwrap_or(ts),
            ops_applied: count("ops_applied"),
            conflicts: count("conflicts"),
            rejected: count("rejected"),
            pending_ddl: d
                .get_document("pending_ddl")
                .ok()
                .and_then(DdlCommand::from_document)
                .zip(d.get_timestamp("pending_ts").ok()),
            initial_sync: d
                .get_document("initial_sync")
                .ok()
                .map(CopyProgress::from_document),
            src_clock: d.get_document("src_clock").ok().and_then(|c| {
                Some(SrcClock {
                    h: c.get_i64("h").ok()?,
                    know: c
                        .get_document("know")
                        .map(Knowledge::from_document)
                        .unwrap_or_default(),
                })
            }),
            writer_know: d
                .get_document("writer_know")
                .ok()
                .map(Knowledge::from_document),
            seen: d.get_document("seen").ok().map(Knowledge::from_document),
            seen_covers_rows: d.get_bool("seen_rows").unwrap_or(false),
        })
    }
}

fn collection(client: &Client) -> Collection<Document> {
    client.database(MMM_DB).collection(CHECKPOINTS)
}

/// The checkpoint of `link` on the server of `client`, if it has one.
pub async fn read(client: &Client, link: &str) -> Result<Option<Checkpoint>, StoreError> {
    let found = collection(client)
        .find_one(doc! {"_id": link})
        .await
        .map_err(|source| StoreError {
            what: "reading the link's checkpoint",
            source,
        })?;
    Ok(found.as_ref().and_then(Checkpoint::from_document))
}

/// Writes `checkpoint` in the transaction of `session` (as a replacement, so the oplog entry's
/// `o` is the whole document and names the origin). `fence`: the lease term of the writer; the
/// write then fails with [`Fenced`] once a greater term has claimed the checkpoint (see
/// `leases.rs`), and the whole transaction with it.
pub async fn write(
    client: &Client,
    session: &mut ClientSession,
    checkpoint: &Checkpoint,
    fence: Option<i64>,
) -> Result<(), mongodb::error::Error> {
    let (filter, mut document) = (doc! {"_id": &checkpoint.link}, checkpoint.to_document());
    let filter = match fence {
        Some(term) => {
            document.insert("term", term);
            super::leases::fence_filter(&checkpoint.link, term)
        }
        None => filter,
    };
    match collection(client)
        .replace_one(filter, document)
        .upsert(true)
        .session(session)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if fence.is_some() && super::leases::is_duplicate_key(&e) => {
            Err(mongodb::error::Error::custom(Fenced {
                checkpoint: checkpoint.link.clone(),
                term: fence.unwrap_or_default(),
            }))
        }
        Err(e) => Err(e),
    }
}

/// A checkpoint write refused because a newer lease term claimed the checkpoint: this process
/// lost its lease and must stop working.
#[derive(Debug, Clone, PartialEq)]
pub struct Fenced {
    pub checkpoint: String,
    pub term: i64,
}

impl std::fmt::Display for Fenced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} was claimed by a newer lease term than {}: another process took over",
            self.checkpoint, self.term
        )
    }
}

/// What a DDL command announced by a checkpoint (`pending_ddl`) changes: the namespaces its oplog
/// entries name. The DDL entries that follow an announcement, up to the link's next batch, are
/// taken for mmm's own only inside this scope, so that an application's DDL on another
/// collection of the same database, run at that moment, stays local and is replicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DdlScope {
    /// `dropDatabase` (it logs a drop per collection, then itself), or a command whose target
    /// cannot be read: the whole database.
    Database(String),
    /// The collection a command names; both namespaces of a rename.
    Namespaces(Vec<String>),
}

impl DdlScope {
    fn of_pending(pending: &RawDocument) -> Option<DdlScope> {
        let db = pending.get_str("db").ok()?;
        let body = pending.get_document("body").ok()?;
        if let Ok(from) = body.get_str("renameCollection") {
            let to = body.get_str("to").unwrap_or(from);
            return Some(DdlScope::Namespaces(vec![from.to_string(), to.to_string()]));
        }
        let target = body.iter().next().and_then(Result::ok);
        Some(match target {
            Some((name, _)) if name == "dropDatabase" => DdlScope::Database(db.to_string()),
            Some((_, RawBsonRef::String(coll))) => {
                DdlScope::Namespaces(vec![format!("{db}.{coll}")])
            }
            _ => DdlScope::Database(db.to_string()),
        })
    }

    /// Whether a DDL entry whose target is `ns` (`db.coll`, or `db.$cmd` for database-wide
    /// commands) falls in this scope.
    pub fn covers(&self, ns: &str) -> bool {
        match self {
            DdlScope::Database(db) => ns.split_once('.').map_or(ns, |(d, _)| d) == db,
            DdlScope::Namespaces(list) => list.iter().any(|n| n == ns),
        }
    }
}

/// The origin named by an oplog op that writes a checkpoint, and the scope of a DDL command it
/// announces; `None` for any other op.
pub fn origin_of_write(op: &RawDocument) -> Option<(String, Option<DdlScope>)> {
    let entry = Entry::new(op);
    if entry.ns().ok()? != CHECKPOINTS_NS {
        return None;
    }
    // The checkpoint is written as a replacement (or inserted): `o` is the whole document.
    let o = match entry.op().ok()? {
        OpKind::Insert | OpKind::Update => entry.o().ok()?,
        _ => return None,
    };
    let origin = o.get_str("origin").ok()?.to_string();
    let scope = o
        .get_document("pending_ddl")
        .ok()
        .and_then(DdlScope::of_pending);
    Some((origin, scope))
}

/// The checkpoint document a batch's transaction wrote, read from its ops.
pub fn checkpoint_in_ops(ops: &[bson::RawDocumentBuf]) -> Option<Checkpoint> {
    ops.iter()
        .take_while(|op| {
            Entry::new(op)
                .ns()
                .map(super::is_internal_ns)
                .unwrap_or(false)
        })
        .filter(|op| origin_of_write(op).is_some())
        .find_map(|op| {
            let o = Entry::new(op).o().ok()?;
            Checkpoint::from_document(&Document::try_from(o).ok()?)
        })
}

/// Whether a transaction's ops are a batch a link applied: its checkpoint write comes first,
/// possibly after mmm's own DDL (an implicit create).
pub fn is_applied_batch(ops: &[bson::RawDocumentBuf]) -> bool {
    ops.iter()
        .take_while(|op| {
            Entry::new(op)
                .ns()
                .map(super::is_internal_ns)
                .unwrap_or(false)
        })
        .any(|op| origin_of_write(op).is_some())
}

/// A filter on a server's oplog for the transactions, at or before `until`, in which links
/// reading server id `src` wrote their checkpoint.
pub fn oplog_filter_for_links_from(src: &str, until: Timestamp) -> Document {
    doc! {
        "ts": {"$lte": until},
        "op": "c",
        "ns": "admin.$cmd",
        "o.applyOps": {"$elemMatch": {"ns": CHECKPOINTS_NS, "o.src": src}},
    }
}

/// In such a transaction (an oplog entry found with [`oplog_filter_for_links_from`]): the last
/// source unit the checkpoint says was applied.
pub fn applied_in_oplog_entry(entry: &Document, src: &str) -> Option<Timestamp> {
    entry
        .get_document("o")
        .ok()?
        .get_array("applyOps")
        .ok()?
        .iter()
        .find_map(|op| {
            let op = op.as_document()?;
            let o = op.get_document("o").ok()?;
            (op.get_str("ns").ok()? == CHECKPOINTS_NS && o.get_str("src").ok()? == src)
                .then(|| o.get_timestamp("applied").ok())
                .flatten()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(time: u32) -> Timestamp {
        Timestamp { time, increment: 1 }
    }

    #[test]
    fn a_checkpoint_survives_its_document() {
        let c = Checkpoint {
            link: "a/db.*->b/db.*".into(),
            origin: "A".into(),
            src: "A".into(),
            ts: ts(5),
            applied: ts(6),
            ops_applied: 10,
            conflicts: 2,
            rejected: 1,
            pending_ddl: Some((
                DdlCommand {
                    db: "db".into(),
                    body: doc! {"drop": "c"},
                    done_codes: vec![26],
                },
                ts(6),
            )),
            initial_sync: None,
            src_clock: Some(SrcClock {
                h: 77,
                know: Knowledge([("B".to_string(), 5)].into_iter().collect()),
            }),
            writer_know: Some(Knowledge([("C".to_string(), 9)].into_iter().collect())),
            seen: Some(Knowledge([("A#r".to_string(), 11)].into_iter().collect())),
            seen_covers_rows: true,
        };
        assert_eq!(Checkpoint::from_document(&c.to_document()), Some(c.clone()));
        let copying = Checkpoint {
            pending_ddl: None,
            initial_sync: Some(CopyProgress {
                ns: "db.c".into(),
                after: Some(bson::Bson::Int32(7)),
                copied: 8,
                total: 20,
                mirror: false,
            }),
            ..c
        };
        let c = copying;
        assert_eq!(Checkpoint::from_document(&c.to_document()), Some(c));
    }

    #[test]
    fn older_and_foreign_documents() {
        // Written before `applied` and the totals existed.
        let old = doc! {"_id": "l", "origin": "A", "src": "A", "ts": ts(3)};
        let c = Checkpoint::from_document(&old).unwrap();
        assert_eq!((c.applied, c.ops_applied, c.rejected), (ts(3), 0, 0));
        assert_eq!(Checkpoint::from_document(&doc! {"_id": "l", "ts": 1}), None);
        assert_eq!(
            Checkpoint::from_document(&doc! {"_id": 7, "origin": "A", "src": "A", "ts": ts(3)}),
            None
        );
    }

    #[test]
    fn checkpoint_writes_in_the_oplog_name_their_origin() {
        let op = |ns: &str, o: Document| {
            bson::RawDocumentBuf::from_document(
                &doc! {"op": "u", "ns": ns, "o": o, "o2": {"_id": "l"}},
            )
            .unwrap()
        };
        let plain = op(CHECKPOINTS_NS, doc! {"_id": "l", "origin": "A"});
        assert_eq!(origin_of_write(&plain), Some(("A".into(), None)));
        let rename = op(
            CHECKPOINTS_NS,
            doc! {"_id": "l", "origin": "B", "pending_ddl": {"db": "admin", "body": {"renameCollection": "x.a", "to": "x.b"}}},
        );
        let scope = DdlScope::Namespaces(vec!["x.a".into(), "x.b".into()]);
        assert_eq!(origin_of_write(&rename), Some(("B".into(), Some(scope))));
        assert_eq!(origin_of_write(&op("app.c", doc! {"origin": "A"})), None);
    }

    #[test]
    fn an_announced_ddl_covers_only_what_it_changes() {
        let scope = |pending: Document| {
            DdlScope::of_pending(&bson::RawDocumentBuf::from_document(&pending).unwrap()).unwrap()
        };
        let create = scope(doc! {"db": "app", "body": {"createIndexes": "report", "indexes": []}});
        assert!(create.covers("app.report"));
        assert!(
            !create.covers("app.other"),
            "another collection of the database stays local"
        );
        assert!(!create.covers("app.$cmd"));
        let drop_db = scope(doc! {"db": "app", "body": {"dropDatabase": 1}});
        assert!(drop_db.covers("app.report") && drop_db.covers("app.$cmd"));
        assert!(!drop_db.covers("application.report"));
        let rename = scope(doc! {"db": "admin", "body": {"renameCollection": "x.a", "to": "y.b"}});
        assert!(rename.covers("x.a") && rename.covers("y.b") && !rename.covers("x.b"));
        let unreadable = scope(doc! {"db": "app", "body": {"create": 5}});
        assert!(unreadable.covers("app.anything"));
    }
}
