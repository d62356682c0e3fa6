//! Everything one server holds: the catalog of databases and collections (the oplog is the capped
//! collection `local.oplog.rs` in it), the clock, open cursors and sessions.

use crate::server::clock::{ts_to_u64, Clock};
use crate::server::collection::Collection;
use crate::server::cursor_table::CursorTable;
use crate::server::error::{ServerError, ServerResult};
use crate::server::error_codes::ErrorCode;
use crate::server::history::{ChangeLog, History, LoggedWrite};
use crate::server::oplog_writer::{build_entry, EntryExtras, OpRecord};
use crate::server::session::Session;
use bson::{doc, Bson, DateTime, Document, RawDocumentBuf, Timestamp};
use std::collections::HashMap;
use std::sync::Arc;

pub const OPLOG_DB: &str = "local";
pub const OPLOG_COLL: &str = "oplog.rs";
pub const OPLOG_NS: &str = "local.oplog.rs";

/// A database's collections. Each is shared (`Arc`) so that a copy of the whole catalog, which
/// snapshot reads and the history keep, costs one reference per collection; a write copies the
/// collection it changes when a snapshot still shares it (its maps are persistent: O(1)).
pub type Database = imbl::OrdMap<String, Arc<Collection>>;

/// Every database, as one value: what the history keeps per timestamp.
pub type Catalog = imbl::OrdMap<String, Database>;

pub struct State {
    pub dbs: Catalog,
    pub clock: Clock,
    /// Server-wide write counter; every record change takes the next value.
    pub version: u64,
    pub cursors: CursorTable,
    pub sessions: HashMap<Vec<u8>, Session>,
    /// Every session seen, for `$listLocalSessions`.
    pub session_cache: crate::server::session_cache::SessionCache,
    pub last_write: (Timestamp, DateTime),
    /// Bumped on every insert into a capped collection; awaitData getMores wait for it.
    pub capped_appends: u64,
    /// transactionLifetimeLimitSeconds (settable with setParameter, default 60 as in mongod).
    pub txn_lifetime_limit_secs: i64,
    pub last_txn_sweep: std::time::Instant,
    /// Versions of the catalog for snapshot reads (`readConcern: {level: "snapshot"}`).
    pub history: History,
    /// Bytes of the collections dropped or replaced by a rename since the server started.
    pub dropped_bytes: u64,
    /// Set on a detached read view ([`State::read_view`]) of a snapshot read: the time it reads at.
    pub read_at: Option<Timestamp>,
    /// Since the newest history version: the first timestamp written, the documents each entry
    /// left, and whether an entry (DDL other than `create`) cannot be replayed from them.
    pub command_first_ts: Option<Timestamp>,
    pub command_writes: Vec<LoggedWrite>,
    pub command_has_ddl: bool,
    /// The last count of superseded bytes, and the versions recorded since.
    pub superseded_count: (u64, u32),
    /// On a read view running a getMore: the cursor it took out of the server's table.
    pub pinned_cursor: Option<i64>,
    /// The majority commit point (normally the last write; frozen by `hold_majority`).
    pub majority: crate::server::majority::MajorityPoint,
    /// Set on a read view of a `readConcern: "majority"` read: the cursors it opens are majority
    /// cursors (their getMores read at the commit point too).
    pub read_majority: bool,
}

pub fn split_ns(ns: &str) -> (&str, &str) {
    ns.split_once('.').unwrap_or((ns, ""))
}

/// Database names as mongod accepts them.
pub fn validate_db_name(db: &str) -> ServerResult<()> {
    if db.is_empty() || db.len() >= 64 || db.contains(['/', '\\', '.', ' ', '"', '$', '\0']) {
        return Err(ServerError::new(
            ErrorCode::InvalidNamespace,
            format!("Invalid database name: '{db}'"),
        ));
    }
    Ok(())
}

pub fn validate_coll_name(db: &str, coll: &str) -> ServerResult<()> {
    if coll.is_empty() || coll.contains('$') || coll.contains('\0') || coll.starts_with('.') {
        return Err(ServerError::new(
            ErrorCode::InvalidNamespace,
            format!("Invalid collection name: {db}.{coll}"),
        ));
    }
    Ok(())
}

impl State {
    pub fn new(oplog_size_bytes: u64) -> State {
        let mut oplog = Collection::new(
            OPLOG_NS,
            doc! {"capped": true, "size": oplog_size_bytes as i64},
        )
        .expect("oplog options are valid");
        oplog.has_id_index = false;
        let mut local = Database::new();
        local.insert(OPLOG_COLL.to_string(), Arc::new(oplog));
        let mut dbs = Catalog::new();
        dbs.insert(OPLOG_DB.to_string(), local);
        let mut state = State {
            dbs,
            clock: Clock::new(),
            version: 0,
            cursors: CursorTable::default(),
            sessions: HashMap::new(),
            session_cache: Default::default(),
            last_write: (
                Timestamp {
                    time: 0,
                    increment: 0,
                },
                DateTime::now(),
            ),
            capped_appends: 0,
            txn_lifetime_limit_secs: 60,
            last_txn_sweep: std::time::Instant::now(),
            history: History::default(),
            dropped_bytes: 0,
            read_at: None,
            command_first_ts: None,
            command_writes: Vec::new(),
            command_has_ddl: false,
            superseded_count: (0, 15),
            pinned_cursor: None,
            majority: Default::default(),
            read_majority: false,
        };
        // A freshly initiated replica set's first oplog entry (a tailable cursor on an empty
        // capped collection would die at once, so the oplog is never empty).
        state.append_oplog(
            crate::server::oplog_writer::noop("initiating set"),
            &EntryExtras::NONE,
        );
        state.record_history();
        state
    }

    /// Keeps the catalog as of the latest timestamp in the snapshot history (after every
    /// command: nothing happens when the command wrote nothing).
    pub fn record_history(&mut self) {
        if !self.history.needs_record(self.version) {
            return;
        }
        // Recounted over every collection once per 16 versions: cheap with many collections,
        // and the memory bound it feeds only lags by a few commands.
        self.superseded_count.1 += 1;
        if self.superseded_count.1 >= 16 {
            self.superseded_count = (
                self.dropped_bytes
                    + self
                        .dbs
                        .values()
                        .flat_map(|d| d.values())
                        .map(|c| c.superseded_bytes)
                        .sum::<u64>(),
                0,
            );
        }
        let superseded = self.superseded_count.0;
        let first = self.command_first_ts.take().unwrap_or(self.clock.last());
        let writes = ChangeLog {
            first,
            writes: std::mem::take(&mut self.command_writes),
            replayable: !std::mem::take(&mut self.command_has_ddl),
        };
        self.history.record(
            self.version,
            self.clock.last(),
            &self.dbs,
            superseded,
            writes,
        );
    }

    /// A detached copy for running a read without the lock: `catalog` (the current one, or a
    /// version from the history) and the clock, with no cursors or sessions of its own. The
    /// cursors a read opens in it are moved into the server's state afterwards.
    pub fn read_view(&self, catalog: Catalog, read_at: Option<Timestamp>) -> State {
        State {
            dbs: catalog,
            clock: self.clock.clone(),
            version: self.version,
            cursors: CursorTable::default(),
            sessions: HashMap::new(),
            session_cache: Default::default(),
            last_write: self.last_write,
            capped_appends: self.capped_appends,
            txn_lifetime_limit_secs: self.txn_lifetime_limit_secs,
            last_txn_sweep: std::time::Instant::now(),
            history: History::default(),
            dropped_bytes: 0,
            read_at,
            command_first_ts: None,
            command_writes: Vec::new(),
            command_has_ddl: false,
            superseded_count: (0, 0),
            pinned_cursor: None,
            majority: self.majority.clone(),
            read_majority: false,
        }
    }

    /// The majority commit point.
    pub fn majority_point(&self) -> crate::server::majority::Committed {
        self.majority.get(self.last_write)
    }

    /// Freezes the majority commit point at the last write; the snapshot history keeps the
    /// catalog as of that point until [`State::release_majority`].
    pub fn hold_majority(&mut self) -> crate::server::majority::Committed {
        let point = self.majority.hold(self.last_write);
        self.history.pinned = Some(point.ts);
        point
    }

    /// Lets the majority commit point catch up with the last write. False when it was not held.
    pub fn release_majority(&mut self) -> bool {
        self.history.pinned = None;
        self.majority.release()
    }

    /// The catalog a majority read sees: the current one unless the commit point is held behind
    /// the last write, then the version of the snapshot history at the point.
    pub fn majority_catalog(&mut self) -> ServerResult<Catalog> {
        match self.majority.held() {
            Some(point) if point.ts != self.last_write.0 => {
                let now = self.clock.last();
                Ok(self.history.at(point.ts, now)?.as_ref().clone())
            }
            _ => Ok(self.dbs.clone()),
        }
    }

    pub fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    pub fn coll(&self, db: &str, coll: &str) -> Option<&Collection> {
        self.dbs
            .get(db)
            .and_then(|d| d.get(coll))
            .map(|c| c.as_ref())
    }

    pub fn coll_mut(&mut self, db: &str, coll: &str) -> Option<&mut Collection> {
        self.dbs
            .get_mut(db)
            .and_then(|d| d.get_mut(coll))
            .map(Arc::make_mut)
    }

    pub fn oplog(&self) -> &Collection {
        self.coll(OPLOG_DB, OPLOG_COLL)
            .expect("the oplog always exists")
    }

    /// Writes one oplog entry with the next timestamp and returns that timestamp.
    /// Changes to the `local` database are never logged (it is each member's own, as on mongod):
    /// nothing is written and the last timestamp is returned.
    pub fn append_oplog(&mut self, op: OpRecord, extras: &EntryExtras) -> Timestamp {
        if is_local_ns(&op.ns) {
            return self.clock.last();
        }
        let logged = self.logged_write(&op);
        let ts = self.append_oplog_entry(|ts, wall| build_entry(op, ts, wall, extras));
        match logged {
            Some((ns, id, record)) => self.command_writes.push(LoggedWrite { ts, ns, id, record }),
            None => self.command_has_ddl = true,
        }
        ts
    }

    /// What a CRUD entry changed, for the snapshot history: the namespace, the `_id` and the
    /// stored document now (`None`: deleted). `None` for commands other than `create`, which the
    /// history cannot replay (a `create` is replayed from the collection it made).
    fn logged_write(&self, op: &OpRecord) -> Option<(String, Bson, Option<Arc<RawDocumentBuf>>)> {
        let id = match op.op {
            "i" | "d" => match &op.o {
                crate::server::oplog_writer::Body::Raw(r) => crate::server::collection::raw_id(r),
                crate::server::oplog_writer::Body::Doc(d) => d.get("_id").cloned(),
            },
            "u" => match &op.o2 {
                Some(crate::server::oplog_writer::Body::Raw(r)) => {
                    crate::server::collection::raw_id(r)
                }
                Some(crate::server::oplog_writer::Body::Doc(d)) => d.get("_id").cloned(),
                None => None,
            },
            "n" => return Some((String::new(), Bson::Null, None)),
            "c" if op.o.to_document().contains_key("create") => {
                return Some((String::new(), Bson::Null, None));
            }
            _ => None,
        }?;
        let (db, coll) = split_ns(&op.ns);
        let record = self.coll(db, coll).and_then(|c| {
            let rid = c.find_id(&id)?;
            c.records.get(&rid).map(|r| r.raw.clone())
        });
        Some((op.ns.clone(), id, record))
    }

    /// Appends the entry `build` writes for the next ts and wall time.
    pub fn append_oplog_entry(
        &mut self,
        build: impl FnOnce(Timestamp, DateTime) -> bson::RawDocumentBuf,
    ) -> Timestamp {
        let ts = self.clock.tick();
        self.command_first_ts.get_or_insert(ts);
        let wall = DateTime::now();
        let entry = build(ts, wall);
        let version = self.next_version();
        let oplog = self
            .coll_mut(OPLOG_DB, OPLOG_COLL)
            .expect("the oplog always exists");
        oplog.append_raw(entry, version, ts_to_u64(ts));
        self.last_write = (ts, wall);
        self.capped_appends += 1;
        ts
    }

    /// Creates `db.coll` and logs the `create` entry, as an implicit or explicit create does.
    pub fn create_collection(
        &mut self,
        db: &str,
        coll: &str,
        options: Document,
    ) -> ServerResult<&mut Collection> {
        validate_db_name(db)?;
        validate_coll_name(db, coll)?;
        let ns = format!("{db}.{coll}");
        let c = Collection::new(&ns, options.clone())?;
        let op = create_op(db, coll, &c);
        self.dbs
            .entry(db.to_string())
            .or_default()
            .insert(coll.to_string(), Arc::new(c));
        self.append_oplog(op, &EntryExtras::NONE);
        Ok(self.coll_mut(db, coll).unwrap())
    }
}

/// True for a namespace of the `local` database (`local.x`, or `local.$cmd` for its commands).
pub fn is_local_ns(ns: &str) -> bool {
    split_ns(ns).0 == OPLOG_DB
}

/// The `create` command entry: collection options (without the UUID) followed by `idIndex`.
pub fn create_op(db: &str, coll: &str, c: &Collection) -> OpRecord {
    let mut o = doc! {"create": coll};
    for (k, v) in &c.options {
        o.insert(k.clone(), v.clone());
    }
    if c.has_id_index {
        o.insert("idIndex", Collection::id_index_spec());
    }
    OpRecord::new("c", format!("{db}.$cmd"), Some(c.uuid), o, None)
}
