//! A cheap, borrowing view over one raw oplog entry (`local.oplog.rs` document or an inner
//! operation of an `applyOps`). Nothing is decoded until asked for; every accessor checks the
//! BSON type and reports a malformed entry as an [`OplogError`] instead of panicking.

use bson::raw::RawBsonRef;
use bson::spec::BinarySubtype;
use bson::{DateTime, RawDocument, Timestamp};

use super::error::OplogError;

type Result<T> = std::result::Result<T, OplogError>;

/// The `op` field of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    Insert,
    Update,
    Delete,
    Command,
    Noop,
}

impl OpKind {
    /// All kinds, in the order of their letters `i u d c n`.
    pub const ALL: [OpKind; 5] = [
        OpKind::Insert,
        OpKind::Update,
        OpKind::Delete,
        OpKind::Command,
        OpKind::Noop,
    ];

    /// The letter the oplog uses for this kind.
    pub fn letter(self) -> char {
        match self {
            OpKind::Insert => 'i',
            OpKind::Update => 'u',
            OpKind::Delete => 'd',
            OpKind::Command => 'c',
            OpKind::Noop => 'n',
        }
    }

    /// The kind for an oplog letter; `None` for anything else (including the newer `xi`/`xd`
    /// and `ci`/`cd`/`cu`/`km` ops, which are not user data).
    pub fn from_letter(letter: char) -> Option<OpKind> {
        match letter {
            'i' => Some(OpKind::Insert),
            'u' => Some(OpKind::Update),
            'd' => Some(OpKind::Delete),
            'c' => Some(OpKind::Command),
            'n' => Some(OpKind::Noop),
            _ => None,
        }
    }

    /// Parses the whole `op` string (exactly one known letter).
    pub fn from_op_str(op: &str) -> Option<OpKind> {
        let mut chars = op.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => OpKind::from_letter(c),
            _ => None,
        }
    }

    pub(crate) fn bit(self) -> u8 {
        match self {
            OpKind::Insert => 1,
            OpKind::Update => 2,
            OpKind::Delete => 4,
            OpKind::Command => 8,
            OpKind::Noop => 16,
        }
    }
}

/// An OpTime `{ts, t}` as found in `prevOpTime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpTime {
    pub ts: Timestamp,
    pub t: i64,
}

impl OpTime {
    /// The null OpTime `{ts: Timestamp(0, 0), t: -1}` that marks the first entry of a chain.
    pub fn is_null(&self) -> bool {
        self.ts.time == 0 && self.ts.increment == 0
    }
}

/// DDL commands a replicator must act on (as `op_observer_impl.cpp` in mongodb/mongo logs them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DdlKind {
    Create,
    Drop,
    RenameCollection,
    CreateIndexes,
    DropIndexes,
    DropDatabase,
    CollMod,
    StartIndexBuild,
    CommitIndexBuild,
    AbortIndexBuild,
    EmptyCapped,
    ConvertToCapped,
    ImportCollection,
}

impl DdlKind {
    /// The DDL kind for a command name (the first key of `o`). The legacy index-drop names
    /// `deleteIndex`, `deleteIndexes` and `dropIndex` map to [`DdlKind::DropIndexes`].
    pub fn from_name(name: &str) -> Option<DdlKind> {
        Some(match name {
            "create" => DdlKind::Create,
            "drop" => DdlKind::Drop,
            "renameCollection" => DdlKind::RenameCollection,
            "createIndexes" => DdlKind::CreateIndexes,
            "dropIndexes" | "deleteIndex" | "deleteIndexes" | "dropIndex" => DdlKind::DropIndexes,
            "dropDatabase" => DdlKind::DropDatabase,
            "collMod" => DdlKind::CollMod,
            "startIndexBuild" => DdlKind::StartIndexBuild,
            "commitIndexBuild" => DdlKind::CommitIndexBuild,
            "abortIndexBuild" => DdlKind::AbortIndexBuild,
            "emptycapped" => DdlKind::EmptyCapped,
            "convertToCapped" => DdlKind::ConvertToCapped,
            "importCollection" => DdlKind::ImportCollection,
            _ => return None,
        })
    }

    /// The canonical command name.
    pub fn name(self) -> &'static str {
        match self {
            DdlKind::Create => "create",
            DdlKind::Drop => "drop",
            DdlKind::RenameCollection => "renameCollection",
            DdlKind::CreateIndexes => "createIndexes",
            DdlKind::DropIndexes => "dropIndexes",
            DdlKind::DropDatabase => "dropDatabase",
            DdlKind::CollMod => "collMod",
            DdlKind::StartIndexBuild => "startIndexBuild",
            DdlKind::CommitIndexBuild => "commitIndexBuild",
            DdlKind::AbortIndexBuild => "abortIndexBuild",
            DdlKind::EmptyCapped => "emptycapped",
            DdlKind::ConvertToCapped => "convertToCapped",
            DdlKind::ImportCollection => "importCollection",
        }
    }
}

/// What a command (`op: "c"`) entry is, following `op_observer_impl.cpp` and the transactions
/// section of `src/mongo/db/repl/README.md` (mongodb/mongo).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind<'a> {
    /// `applyOps` with `lsid` + `txnNumber`, no (or zero) `multiOpType`, neither `partialTxn`
    /// nor `prepare`: commits a transaction, alone or as the last entry of a `partialTxn` chain.
    TxnCommitApplyOps,
    /// `applyOps` of a transaction with `partialTxn: true`: more entries follow.
    TxnPartialApplyOps,
    /// `applyOps` of a transaction with `prepare: true`: waits for `commitTransaction`.
    TxnPrepareApplyOps,
    /// `{commitTransaction: 1, commitTimestamp}` of a prepared transaction.
    CommitTransaction,
    /// `{abortTransaction: 1}` of a prepared transaction.
    AbortTransaction,
    /// `applyOps` on `admin.$cmd` that is not a transaction: an 8.0 batched insert/delete
    /// (no `lsid`), a retryable vectored insert (`multiOpType` set), or a user-issued
    /// `applyOps` run on `admin` (indistinguishable from a batched write).
    BatchedApplyOps,
    /// `applyOps` logged on another database's `$cmd` (a user-issued atomic `applyOps`).
    UserApplyOps,
    /// A DDL command.
    Ddl(DdlKind),
    /// Any other command; the name is the first key of `o`.
    Other(&'a str),
}

impl CommandKind<'_> {
    /// True for the kinds whose `o` is an `applyOps` array.
    pub fn is_apply_ops(&self) -> bool {
        matches!(
            self,
            CommandKind::TxnCommitApplyOps
                | CommandKind::TxnPartialApplyOps
                | CommandKind::TxnPrepareApplyOps
                | CommandKind::BatchedApplyOps
                | CommandKind::UserApplyOps
        )
    }
}

/// A borrowing view over one raw oplog entry.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    raw: &'a RawDocument,
}

impl<'a> Entry<'a> {
    pub fn new(raw: &'a RawDocument) -> Self {
        Entry { raw }
    }

    /// Checks the outer BSON framing of `bytes` and wraps them.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self> {
        Ok(Entry {
            raw: RawDocument::from_bytes(bytes)?,
        })
    }

    pub fn raw(&self) -> &'a RawDocument {
        self.raw
    }

    fn get(&self, key: &str) -> Result<Option<RawBsonRef<'a>>> {
        Ok(crate::bson_field::get(self.raw, key)?)
    }

    fn require(&self, key: &'static str) -> Result<RawBsonRef<'a>> {
        self.get(key)?
            .ok_or_else(|| OplogError::missing(key, self.raw))
    }

    fn wrong(&self, key: &str, expected: &'static str, v: RawBsonRef<'_>) -> OplogError {
        OplogError::wrong_type(key, expected, v.element_type(), self.raw)
    }

    /// `ts`: required on top-level entries (inner `applyOps` operations have none).
    pub fn ts(&self) -> Result<Timestamp> {
        let v = self.require("ts")?;
        v.as_timestamp()
            .ok_or_else(|| self.wrong("ts", "Timestamp", v))
    }

    /// `t`, the election term (Int64; Int32 tolerated).
    pub fn t(&self) -> Result<Option<i64>> {
        self.opt_int("t")
    }

    /// `op`.
    pub fn op(&self) -> Result<OpKind> {
        let v = self.require("op")?;
        let s = v.as_str().ok_or_else(|| self.wrong("op", "String", v))?;
        OpKind::from_op_str(s).ok_or_else(|| OplogError::UnknownOp(s.to_owned()))
    }

    /// `ns` (`""` for most no-ops).
    pub fn ns(&self) -> Result<&'a str> {
        let v = self.require("ns")?;
        v.as_str().ok_or_else(|| self.wrong("ns", "String", v))
    }

    /// `o`.
    pub fn o(&self) -> Result<&'a RawDocument> {
        let v = self.require("o")?;
        v.as_document()
            .ok_or_else(|| self.wrong("o", "Document", v))
    }

    /// The whole document an insert or a replacement (an update whose `o` has no operator
    /// and no `$v`) leaves, or `None` for changes to some earlier content and other ops.
    pub fn whole_document(&self) -> Option<&'a RawDocument> {
        match self.op().ok()? {
            OpKind::Insert => self.o().ok(),
            OpKind::Update => self
                .o()
                .ok()
                .filter(|o| o.iter().flatten().all(|(k, _)| !k.starts_with('$'))),
            _ => None,
        }
    }

    /// `o2` (document key of updates, extra data of some commands).
    pub fn o2(&self) -> Result<Option<&'a RawDocument>> {
        self.opt_doc("o2")
    }

    /// `lsid` (logical session id) of retryable writes and transactions.
    pub fn lsid(&self) -> Result<Option<&'a RawDocument>> {
        self.opt_doc("lsid")
    }

    /// `txnNumber` (Int64; Int32 tolerated).
    pub fn txn_number(&self) -> Result<Option<i64>> {
        self.opt_int("txnNumber")
    }

    /// `ui`, the collection UUID (Binary subtype 4).
    pub fn ui(&self) -> Result<Option<bson::Uuid>> {
        match self.get("ui")? {
            None => Ok(None),
            Some(v) => match v.as_binary() {
                Some(b) if b.subtype == BinarySubtype::Uuid && b.bytes.len() == 16 => {
                    let mut bytes = [0u8; 16];
                    bytes.copy_from_slice(b.bytes);
                    Ok(Some(bson::Uuid::from_bytes(bytes)))
                }
                _ => Err(self.wrong("ui", "Binary subtype 4 (UUID)", v)),
            },
        }
    }

    /// `wall`, the primary's wall clock.
    pub fn wall(&self) -> Result<Option<DateTime>> {
        match self.get("wall")? {
            None => Ok(None),
            Some(v) => v
                .as_datetime()
                .map(Some)
                .ok_or_else(|| self.wrong("wall", "DateTime", v)),
        }
    }

    /// `prevOpTime` (`{ts, t}`).
    pub fn prev_op_time(&self) -> Result<Option<OpTime>> {
        let Some(doc) = self.opt_doc("prevOpTime")? else {
            return Ok(None);
        };
        let inner = Entry::new(doc);
        let ts = inner
            .ts()
            .map_err(|_| OplogError::missing("prevOpTime.ts", self.raw))?;
        let t = inner.t()?.unwrap_or(-1);
        Ok(Some(OpTime { ts, t }))
    }

    /// `multiOpType` (8.0+: set on `applyOps` entries that are not transactions).
    pub fn multi_op_type(&self) -> Result<Option<i64>> {
        self.opt_int("multiOpType")
    }

    /// `fromMigrate` (absent means false).
    pub fn from_migrate(&self) -> Result<bool> {
        match self.get("fromMigrate")? {
            None => Ok(false),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.wrong("fromMigrate", "Boolean", v)),
        }
    }

    /// The command name (first key of `o`) of a command entry; `None` for other ops.
    pub fn command_name(&self) -> Result<Option<&'a str>> {
        if self.op()? != OpKind::Command {
            return Ok(None);
        }
        match self.o()?.iter().next() {
            Some(first) => Ok(Some(first?.0)),
            None => Err(OplogError::missing("o.<command name>", self.raw)),
        }
    }

    /// Classifies a command entry (applyOps and transactions as `src/mongo/db/repl/README.md`
    /// describes them); `None` for other ops.
    pub fn command_kind(&self) -> Result<Option<CommandKind<'a>>> {
        let Some(name) = self.command_name()? else {
            return Ok(None);
        };
        let kind = match name {
            "applyOps" => self.apply_ops_kind()?,
            "commitTransaction" => CommandKind::CommitTransaction,
            "abortTransaction" => CommandKind::AbortTransaction,
            other => match DdlKind::from_name(other) {
                Some(ddl) => CommandKind::Ddl(ddl),
                None => CommandKind::Other(other),
            },
        };
        Ok(Some(kind))
    }

    fn apply_ops_kind(&self) -> Result<CommandKind<'a>> {
        if self.ns()? != "admin.$cmd" {
            return Ok(CommandKind::UserApplyOps);
        }
        let session = self.lsid()?.is_some() && self.txn_number()?.is_some();
        // Any multiOpType other than the legacy 0 means "not a transaction"
        // (kApplyOpsAppliedSeparately = 1 in 8.0; newer servers add an atomic variant).
        let multi = self.multi_op_type()?.unwrap_or(0) != 0;
        if !session || multi {
            return Ok(CommandKind::BatchedApplyOps);
        }
        let o = self.o()?;
        if flag(o, "partialTxn")? {
            Ok(CommandKind::TxnPartialApplyOps)
        } else if flag(o, "prepare")? {
            Ok(CommandKind::TxnPrepareApplyOps)
        } else {
            Ok(CommandKind::TxnCommitApplyOps)
        }
    }

    /// The namespace a DDL command acts on: `<db>.<collection>` for collection commands, the
    /// source namespace for `renameCollection`; `None` for `dropDatabase`, non-DDL commands and
    /// non-command entries.
    pub fn command_target_ns(&self) -> Result<Option<String>> {
        let Some(CommandKind::Ddl(ddl)) = self.command_kind()? else {
            return Ok(None);
        };
        if ddl == DdlKind::DropDatabase {
            return Ok(None);
        }
        let o = self.o()?;
        let (key, value) = o
            .iter()
            .next()
            .ok_or_else(|| OplogError::missing("o.<command name>", self.raw))??;
        let target = value
            .as_str()
            .ok_or_else(|| self.wrong(&format!("o.{key}"), "String", value))?;
        if ddl == DdlKind::RenameCollection {
            return Ok(Some(target.to_owned()));
        }
        let ns = self.ns()?;
        let db = ns.split_once('.').map_or(ns, |(db, _)| db);
        Ok(Some(format!("{db}.{target}")))
    }

    fn opt_doc(&self, key: &'static str) -> Result<Option<&'a RawDocument>> {
        match self.get(key)? {
            None => Ok(None),
            Some(v) => v
                .as_document()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "Document", v)),
        }
    }

    fn opt_int(&self, key: &'static str) -> Result<Option<i64>> {
        match self.get(key)? {
            None => Ok(None),
            Some(RawBsonRef::Int64(n)) => Ok(Some(n)),
            Some(RawBsonRef::Int32(n)) => Ok(Some(n.into())),
            Some(v) => Err(self.wrong(key, "Int64", v)),
        }
    }
}

/// A boolean flag inside `o` (`partialTxn`, `prepare`); absent means false. Numbers are
/// accepted the way the server's `booleanSafe()` does.
pub(crate) fn flag(o: &RawDocument, key: &str) -> Result<bool> {
    Ok(match o.get(key)? {
        None => false,
        Some(RawBsonRef::Boolean(b)) => b,
        Some(RawBsonRef::Int32(n)) => n != 0,
        Some(RawBsonRef::Int64(n)) => n != 0,
        Some(RawBsonRef::Double(n)) => n != 0.0,
        Some(v) => return Err(OplogError::wrong_type(key, "Boolean", v.element_type(), o)),
    })
}

/// An integer inside `o` (`count`), any numeric width.
pub(crate) fn int_field(o: &RawDocument, key: &str) -> Result<Option<i64>> {
    Ok(match o.get(key)? {
        None => None,
        Some(RawBsonRef::Int32(n)) => Some(n.into()),
        Some(RawBsonRef::Int64(n)) => Some(n),
        Some(RawBsonRef::Double(n)) if n.fract() == 0.0 => Some(n as i64),
        Some(v) => return Err(OplogError::wrong_type(key, "Int64", v.element_type(), o)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, RawDocumentBuf};

    fn raw(d: bson::Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).unwrap()
    }

    #[test]
    fn whole_documents_are_those_of_inserts_and_replacements() {
        let whole = |d: bson::Document| {
            let raw = bson::RawDocumentBuf::from_document(&d).unwrap();
            Entry::new(&raw)
                .whole_document()
                .map(|o| bson::Document::try_from(o).unwrap())
        };
        let o = bson::doc! {"_id": 1, "a": {"$b": 1}};
        assert_eq!(
            whole(bson::doc! {"op": "i", "ns": "d.c", "o": o.clone()}),
            Some(o.clone())
        );
        assert_eq!(
            whole(bson::doc! {"op": "u", "ns": "d.c", "o": o.clone(), "o2": {"_id": 1}}),
            Some(o)
        );
        for change in [
            bson::doc! {"$v": 2, "diff": {"u": {"a": 1}}},
            bson::doc! {"$set": {"a": 1}},
        ] {
            assert_eq!(
                whole(bson::doc! {"op": "u", "ns": "d.c", "o": change, "o2": {"_id": 1}}),
                None
            );
        }
        assert_eq!(
            whole(bson::doc! {"op": "d", "ns": "d.c", "o": {"_id": 1}}),
            None
        );
        assert_eq!(
            whole(bson::doc! {"op": "n", "ns": "", "o": {"msg": "x"}}),
            None
        );
    }

    #[test]
    fn reads_common_fields() {
        let uuid = bson::Uuid::parse_str("731bcef5-c6e2-49c9-be1c-5c645f27b13a").unwrap();
        let e = raw(doc! {
            "op": "u", "ns": "test.c", "ui": uuid,
            "o": {"$v": 2, "diff": {"u": {"a": 1}}}, "o2": {"_id": 1},
            "ts": Timestamp { time: 10, increment: 2 }, "t": 3_i64, "v": 2_i64,
            "wall": DateTime::from_millis(1000),
        });
        let e = Entry::new(&e);
        assert_eq!(e.op().unwrap(), OpKind::Update);
        assert_eq!(e.ns().unwrap(), "test.c");
        assert_eq!(
            e.ts().unwrap(),
            Timestamp {
                time: 10,
                increment: 2
            }
        );
        assert_eq!(e.t().unwrap(), Some(3));
        assert_eq!(e.ui().unwrap(), Some(uuid));
        assert_eq!(e.wall().unwrap(), Some(DateTime::from_millis(1000)));
        assert_eq!(e.o2().unwrap().unwrap().get_i32("_id").unwrap(), 1);
        assert_eq!(e.lsid().unwrap(), None);
        assert_eq!(e.command_kind().unwrap(), None);
        assert!(!e.from_migrate().unwrap());
    }

    #[test]
    fn malformed_entries_are_errors_not_panics() {
        let e = raw(doc! {"op": "x", "ns": 5, "ts": 1});
        let e = Entry::new(&e);
        assert!(matches!(e.op(), Err(OplogError::UnknownOp(s)) if s == "x"));
        assert!(matches!(e.ns(), Err(OplogError::WrongType { .. })));
        assert!(matches!(e.ts(), Err(OplogError::WrongType { .. })));
        assert!(matches!(
            e.o(),
            Err(OplogError::MissingField { field: "o", .. })
        ));
        let msg = e.ns().unwrap_err().to_string();
        assert!(msg.contains("`ns`") && msg.contains("String"), "{msg}");
    }

    #[test]
    fn op_letters_round_trip() {
        for k in OpKind::ALL {
            assert_eq!(OpKind::from_letter(k.letter()), Some(k));
        }
        assert_eq!(OpKind::from_op_str("xi"), None);
        assert_eq!(OpKind::from_op_str(""), None);
    }

    fn cmd(o: bson::Document, extra: bson::Document) -> RawDocumentBuf {
        let mut d =
            doc! {"op": "c", "ns": "admin.$cmd", "o": o, "ts": Timestamp { time: 1, increment: 1 }};
        d.extend(extra);
        raw(d)
    }

    #[test]
    fn classifies_commands() {
        let session = doc! {"lsid": {"id": 1}, "txnNumber": 1_i64};
        let cases: Vec<(RawDocumentBuf, CommandKind)> = vec![
            (
                cmd(doc! {"applyOps": []}, session.clone()),
                CommandKind::TxnCommitApplyOps,
            ),
            (
                cmd(doc! {"applyOps": [], "partialTxn": true}, session.clone()),
                CommandKind::TxnPartialApplyOps,
            ),
            (
                cmd(doc! {"applyOps": [], "prepare": true}, session.clone()),
                CommandKind::TxnPrepareApplyOps,
            ),
            (
                cmd(doc! {"commitTransaction": 1}, session.clone()),
                CommandKind::CommitTransaction,
            ),
            (
                cmd(doc! {"abortTransaction": 1}, session.clone()),
                CommandKind::AbortTransaction,
            ),
            (
                cmd(doc! {"applyOps": []}, doc! {}),
                CommandKind::BatchedApplyOps,
            ),
            (
                cmd(doc! {"applyOps": []}, {
                    let mut s = session.clone();
                    s.insert("multiOpType", 1);
                    s
                }),
                CommandKind::BatchedApplyOps,
            ),
            (
                raw(doc! {"op": "c", "ns": "test.$cmd", "o": {"applyOps": []}}),
                CommandKind::UserApplyOps,
            ),
            (
                raw(doc! {"op": "c", "ns": "test.$cmd", "o": {"create": "x"}}),
                CommandKind::Ddl(DdlKind::Create),
            ),
            (
                raw(doc! {"op": "c", "ns": "test.$cmd", "o": {"deleteIndexes": "x"}}),
                CommandKind::Ddl(DdlKind::DropIndexes),
            ),
            (
                raw(doc! {"op": "c", "ns": "test.$cmd", "o": {"dbCheck": "x"}}),
                CommandKind::Other("dbCheck"),
            ),
        ];
        for (entry, want) in &cases {
            assert_eq!(
                Entry::new(entry).command_kind().unwrap(),
                Some(*want),
                "{entry:?}"
            );
        }
    }

    #[test]
    fn command_target_namespaces() {
        let e = raw(doc! {"op": "c", "ns": "shop.$cmd", "o": {"drop": "orders"}});
        assert_eq!(
            Entry::new(&e).command_target_ns().unwrap().as_deref(),
            Some("shop.orders")
        );
        let e = raw(
            doc! {"op": "c", "ns": "shop.$cmd", "o": {"renameCollection": "shop.a", "to": "shop.b"}},
        );
        assert_eq!(
            Entry::new(&e).command_target_ns().unwrap().as_deref(),
            Some("shop.a")
        );
        let e = raw(doc! {"op": "c", "ns": "shop.$cmd", "o": {"dropDatabase": 1}});
        assert_eq!(Entry::new(&e).command_target_ns().unwrap(), None);
    }

    #[test]
    fn prev_op_time_null_detection() {
        let e = raw(doc! {"prevOpTime": {"ts": Timestamp { time: 0, increment: 0 }, "t": -1_i64}});
        assert!(Entry::new(&e).prev_op_time().unwrap().unwrap().is_null());
        let e = raw(doc! {"prevOpTime": {"ts": Timestamp { time: 5, increment: 1 }, "t": 1_i64}});
        let p = Entry::new(&e).prev_op_time().unwrap().unwrap();
        assert!(!p.is_null());
        assert_eq!(p.t, 1);
    }
}
