//! Snapshot history: the catalog as it was after each write command, by the timestamp of the
//! command's last oplog entry, kept for `minSnapshotHistoryWindowInSeconds` (300 s by default,
//! as in mongod) so that reads with `readConcern: {level: "snapshot", atClusterTime}` see the
//! data exactly as it was at that time, every collection at once.
//!
//! Keeping a version is cheap: collections are shared (`Arc`) and built on persistent maps, so a
//! version holds only what later writes replaced. That is also what bounds its memory: the
//! history counts the bytes of documents replaced, deleted or dropped since each version, plus a
//! fixed allowance per version for the map nodes a write copies and its record of the command's
//! writes, and forgets its oldest versions when the total passes [`MAX_HISTORY_BYTES`], as
//! mongod's storage engine gives up old snapshots under cache pressure. A read older than the oldest version kept fails with
//! SnapshotTooOld (239), one later than the newest write with InvalidOptions (72), as on mongod.
//!
//! A version is kept per write command, not per oplog entry (a 1,000-document insert is one
//! version), with what each of the command's entries left behind (the stored document of each
//! `_id` written, shared with the collection): a time inside a multi-document command is read by
//! replaying its first writes onto the version before it, so every oplog timestamp reads exactly.
//! (A command whose entries include DDL other than `create`, only `$out`, reads as before it.)

use crate::server::clock::ts_to_u64;
use crate::server::error::{ErrorCode, ServerError, ServerResult};
use crate::server::state::Catalog;
use bson::Timestamp;
use std::collections::VecDeque;
use std::sync::Arc;

/// Default of `minSnapshotHistoryWindowInSeconds` (mongod: 300).
pub const DEFAULT_WINDOW_SECS: i64 = 300;
/// The most memory, in estimated bytes, that old versions may hold on to.
pub const MAX_HISTORY_BYTES: u64 = 256 * 1024 * 1024;
/// What one version costs besides the documents it keeps: the persistent-map nodes a write
/// command copies (records, `_id` index, oplog), a few kilobytes each.
pub const VERSION_OVERHEAD_BYTES: u64 = 16 * 1024;

/// One CRUD entry's outcome: the document `_id` in `ns` as it was stored right after it.
#[derive(Debug, Clone)]
pub struct LoggedWrite {
    pub ts: Timestamp,
    /// Empty for entries that change no document (`create`, no-ops).
    pub ns: String,
    pub id: bson::Bson,
    /// `None`: deleted.
    pub record: Option<Arc<bson::RawDocumentBuf>>,
}

/// The entries of the command a version ends with.
#[derive(Debug, Clone)]
pub struct ChangeLog {
    /// The command's first timestamp.
    pub first: Timestamp,
    pub writes: Vec<LoggedWrite>,
    /// False when an entry cannot be replayed (DDL other than `create`).
    pub replayable: bool,
}

impl Default for ChangeLog {
    fn default() -> Self {
        ChangeLog {
            first: Timestamp {
                time: 0,
                increment: 0,
            },
            writes: Vec::new(),
            replayable: true,
        }
    }
}

struct Version {
    ts: Timestamp,
    catalog: Arc<Catalog>,
    /// `superseded` when this version was recorded.
    superseded_mark: u64,
    /// What led here from the previous version.
    changes: ChangeLog,
    /// Estimated bytes of `changes` (the documents themselves are shared, not counted here).
    changes_bytes: u64,
}

/// What a change log costs besides the documents it shares with the collections.
fn changes_bytes(changes: &ChangeLog) -> u64 {
    changes.writes.iter().map(|w| 96 + w.ns.len() as u64).sum()
}

pub struct History {
    versions: VecDeque<Version>,
    /// minSnapshotHistoryWindowInSeconds.
    pub window_secs: i64,
    /// Bytes of documents replaced, deleted or dropped since the server started.
    superseded: u64,
    /// Sum of the versions' `changes_bytes`.
    log_bytes: u64,
    /// The server's write counter when the newest version was recorded.
    recorded_version: u64,
    /// A time whose version must stay however old it gets: the held majority commit point,
    /// which majority reads keep reading (as mongod keeps history back to the commit point).
    pub pinned: Option<Timestamp>,
}

impl Default for History {
    fn default() -> Self {
        History {
            versions: VecDeque::new(),
            window_secs: DEFAULT_WINDOW_SECS,
            superseded: 0,
            log_bytes: 0,
            recorded_version: u64::MAX,
            pinned: None,
        }
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl History {
    /// Whether anything was written since the newest version (`version`: the write counter).
    pub fn needs_record(&self, version: u64) -> bool {
        version != self.recorded_version
    }

    /// Records the catalog as of `ts` unless nothing was written since the last version.
    /// `superseded_total` is the server's running count of replaced bytes.
    pub fn record(
        &mut self,
        version: u64,
        ts: Timestamp,
        catalog: &Catalog,
        superseded: u64,
        mut changes: ChangeLog,
    ) {
        if version == self.recorded_version {
            return;
        }
        self.recorded_version = version;
        self.superseded = superseded;
        if self
            .versions
            .back()
            .is_some_and(|v| ts_to_u64(v.ts) >= ts_to_u64(ts))
        {
            // Writes that logged nothing (to `local`): the newest version is replaced.
            if let Some(old) = self.pop(false) {
                let mut writes = old.changes.writes;
                writes.append(&mut changes.writes);
                changes = ChangeLog {
                    first: old.changes.first,
                    writes,
                    replayable: old.changes.replayable && changes.replayable,
                };
            }
        }
        let bytes = changes_bytes(&changes);
        self.log_bytes += bytes;
        self.versions.push_back(Version {
            ts,
            catalog: Arc::new(catalog.clone()),
            superseded_mark: superseded,
            changes,
            changes_bytes: bytes,
        });
        self.trim();
    }

    /// Forgets versions that no time inside the window needs, and the oldest ones while the
    /// history holds more than [`MAX_HISTORY_BYTES`]. The newest version always stays.
    fn trim(&mut self) {
        let oldest_needed = now_secs() - self.window_secs;
        while self.may_pop_oldest() && (self.versions[1].ts.time as i64) <= oldest_needed {
            self.pop(true);
        }
        while self.may_pop_oldest() && self.held_bytes() > MAX_HISTORY_BYTES {
            self.pop(true);
        }
    }

    /// Whether the oldest version may go: one newer stays, and the pinned time (if any) is still
    /// served by a version after it.
    fn may_pop_oldest(&self) -> bool {
        self.versions.len() > 1
            && self
                .pinned
                .is_none_or(|p| ts_to_u64(self.versions[1].ts) <= ts_to_u64(p))
    }

    fn pop(&mut self, oldest: bool) -> Option<Version> {
        let v = if oldest {
            self.versions.pop_front()
        } else {
            self.versions.pop_back()
        }?;
        self.log_bytes -= v.changes_bytes;
        Some(v)
    }

    /// Estimated bytes the versions older than the newest keep alive.
    pub fn held_bytes(&self) -> u64 {
        match self.versions.front() {
            Some(oldest) => {
                self.superseded.saturating_sub(oldest.superseded_mark)
                    + (self.versions.len() as u64 - 1) * VERSION_OVERHEAD_BYTES
                    + self.log_bytes
            }
            None => 0,
        }
    }

    pub fn len(&self) -> usize {
        self.versions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// The newest version and its time.
    pub fn latest(&self) -> Option<(Timestamp, Arc<Catalog>)> {
        self.versions.back().map(|v| (v.ts, v.catalog.clone()))
    }

    /// The catalog as it was at `at`. `now` is the server's current cluster time.
    pub fn at(&mut self, at: Timestamp, now: Timestamp) -> ServerResult<Arc<Catalog>> {
        if ts_to_u64(at) > ts_to_u64(now) {
            return Err(ServerError::new(ErrorCode::InvalidOptions,
                format!(
                    "readConcern atClusterTime value must not be greater than the current clusterTime. Requested clusterTime: {}; current clusterTime: {}",
                    render_ts(at),
                    render_ts(now)
                ),
            ));
        }
        self.trim();
        let key = ts_to_u64(at);
        let idx = self.versions.partition_point(|v| ts_to_u64(v.ts) <= key);
        match idx.checked_sub(1).and_then(|i| self.versions.get(i)) {
            Some(v) => match self.versions.get(idx) {
                // `at` falls inside the next version's command: replay its writes up to `at`.
                Some(next)
                    if next.changes.replayable
                        && key >= ts_to_u64(next.changes.first)
                        && next.changes.writes.iter().any(|w| ts_to_u64(w.ts) <= key) =>
                {
                    Ok(Arc::new(replay(&v.catalog, next, key)))
                }
                _ => Ok(v.catalog.clone()),
            },
            None => Err(ServerError::new(
                ErrorCode::SnapshotTooOld,
                format!(
                    "Read timestamp {} is older than the oldest available timestamp.",
                    render_ts(at)
                ),
            )),
        }
    }
}

/// `base` with the writes of `next` up to `key` applied, each document as that entry left it.
/// Collections the command created come from `next`'s catalog, emptied.
fn replay(base: &Catalog, next: &Version, key: u64) -> Catalog {
    let mut out = base.clone();
    for w in next
        .changes
        .writes
        .iter()
        .filter(|w| ts_to_u64(w.ts) <= key && !w.ns.is_empty())
    {
        let (db, coll) = crate::server::state::split_ns(&w.ns);
        let database = out.entry(db.to_string()).or_default();
        if !database.contains_key(coll) {
            let Some(template) = next.catalog.get(db).and_then(|d| d.get(coll)) else {
                continue;
            };
            database.insert(coll.to_string(), Arc::new(template.emptied()));
        }
        let c = Arc::make_mut(database.get_mut(coll).expect("just ensured"));
        let existing = c.find_id(&w.id);
        // The states replayed were valid states of the collection: nothing here can fail.
        let _ = match (existing, &w.record) {
            (Some(rid), Some(raw)) => c.replace_record(rid, raw.clone(), 0),
            (None, Some(raw)) => c.insert_record(raw.clone(), 0).map(|_| ()),
            (Some(rid), None) => {
                c.remove(rid);
                Ok(())
            }
            (None, None) => Ok(()),
        };
    }
    out
}

fn render_ts(ts: Timestamp) -> String {
    format!("Timestamp({}, {})", ts.time, ts.increment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::state::Database;
    use bson::Bson;

    fn ts(time: u32, increment: u32) -> Timestamp {
        Timestamp { time, increment }
    }

    fn catalog(name: &str) -> Catalog {
        let mut c = Catalog::new();
        c.insert(name.to_string(), Database::new());
        c
    }

    #[test]
    fn reads_the_version_at_or_before_the_time() {
        let t = now_secs() as u32;
        let mut h = History::default();
        h.record(1, ts(t, 1), &catalog("a"), 0, ChangeLog::default());
        h.record(2, ts(t, 5), &catalog("b"), 0, ChangeLog::default());
        h.record(2, ts(t, 6), &catalog("ignored"), 0, ChangeLog::default());
        let now = ts(t, 9);
        assert!(h.at(ts(t, 1), now).unwrap().contains_key("a"));
        assert!(h.at(ts(t, 4), now).unwrap().contains_key("a"));
        assert!(h.at(ts(t, 5), now).unwrap().contains_key("b"));
        assert!(h.at(ts(t, 9), now).unwrap().contains_key("b"));
        assert_eq!(h.at(ts(t, 0), now).unwrap_err().code, 239);
        assert_eq!(h.at(ts(t, 10), now).unwrap_err().code, 72);
    }

    #[test]
    fn a_pinned_time_outlives_the_window_and_the_memory_bound() {
        let t = now_secs() as u32;
        let mut h = History {
            window_secs: 10,
            pinned: Some(ts(t - 100, 1)),
            ..History::default()
        };
        h.record(1, ts(t - 100, 1), &catalog("held"), 0, ChangeLog::default());
        h.record(
            2,
            ts(t - 50, 1),
            &catalog("mid"),
            MAX_HISTORY_BYTES,
            ChangeLog::default(),
        );
        h.record(
            3,
            ts(t, 1),
            &catalog("new"),
            2 * MAX_HISTORY_BYTES,
            ChangeLog::default(),
        );
        assert!(h.at(ts(t - 100, 1), ts(t, 1)).unwrap().contains_key("held"));
        h.pinned = None;
        h.record(
            4,
            ts(t, 2),
            &catalog("newer"),
            2 * MAX_HISTORY_BYTES,
            ChangeLog::default(),
        );
        assert_eq!(h.at(ts(t - 100, 1), ts(t, 2)).unwrap_err().code, 239);
    }

    #[test]
    fn window_and_memory_bound_forget_old_versions() {
        let t = now_secs() as u32;
        let mut h = History {
            window_secs: 10,
            ..History::default()
        };
        h.record(1, ts(t - 100, 1), &catalog("old"), 0, ChangeLog::default());
        h.record(2, ts(t - 50, 1), &catalog("mid"), 0, ChangeLog::default());
        h.record(3, ts(t, 1), &catalog("new"), 0, ChangeLog::default());
        // t-100 is no longer needed by any time in the window; t-50 still describes t-10..t.
        assert_eq!(h.len(), 2);
        assert_eq!(h.at(ts(t - 100, 1), ts(t, 1)).unwrap_err().code, 239);
        let mut h = History::default();
        h.record(1, ts(t, 1), &catalog("a"), 0, ChangeLog::default());
        h.record(
            2,
            ts(t, 2),
            &catalog("b"),
            MAX_HISTORY_BYTES,
            ChangeLog::default(),
        );
        h.record(
            3,
            ts(t, 3),
            &catalog("c"),
            MAX_HISTORY_BYTES + 1,
            ChangeLog::default(),
        );
        assert!(h.held_bytes() <= MAX_HISTORY_BYTES);
        assert_eq!(h.at(ts(t, 1), ts(t, 3)).unwrap_err().code, 239);
        assert!(h.at(ts(t, 3), ts(t, 3)).unwrap().contains_key("c"));
    }

    #[test]
    fn a_time_inside_a_command_replays_its_first_writes() {
        use crate::server::collection::{encode, Collection};
        use bson::doc;
        let t = now_secs() as u32;
        let mut c = Collection::new("d.c", doc! {}).unwrap();
        c.insert(doc! {"_id": 1}, 1, None).unwrap();
        let mut base = Catalog::new();
        base.entry("d".into())
            .or_default()
            .insert("c".into(), Arc::new(c.clone()));
        let mut h = History::default();
        h.record(1, ts(t, 1), &base, 0, ChangeLog::default());
        let mut writes = Vec::new();
        for (i, id) in [(2u32, 2), (3, 3)] {
            let raw = encode(&doc! {"_id": id}).unwrap();
            c.insert_record(raw.clone(), 2).unwrap();
            writes.push(LoggedWrite {
                ts: ts(t, i),
                ns: "d.c".into(),
                id: Bson::Int32(id),
                record: Some(raw),
            });
        }
        writes.push(LoggedWrite {
            ts: ts(t, 4),
            ns: "d.c".into(),
            id: Bson::Int32(1),
            record: None,
        });
        c.remove(c.find_id(&Bson::Int32(1)).unwrap());
        let mut after = Catalog::new();
        after
            .entry("d".into())
            .or_default()
            .insert("c".into(), Arc::new(c));
        let changes = ChangeLog {
            first: ts(t, 2),
            writes,
            replayable: true,
        };
        h.record(2, ts(t, 4), &after, 0, changes);
        assert!(h.held_bytes() >= 3 * 96);
        let ids = |at: u32, h: &mut History| -> Vec<Bson> {
            let cat = h.at(ts(t, at), ts(t, 4)).unwrap();
            let coll = cat["d"]["c"].clone();
            coll.records.values().filter_map(|r| r.id()).collect()
        };
        assert_eq!(ids(1, &mut h), vec![Bson::Int32(1)]);
        assert_eq!(ids(2, &mut h), vec![Bson::Int32(1), Bson::Int32(2)]);
        assert_eq!(
            ids(3, &mut h),
            vec![Bson::Int32(1), Bson::Int32(2), Bson::Int32(3)]
        );
        assert_eq!(ids(4, &mut h), vec![Bson::Int32(2), Bson::Int32(3)]);
    }
}
