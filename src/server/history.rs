//! Snapshot history: the catalog as it was after each write command, by the timestamp of the
//! command's last oplog entry, kept for `minSnapshotHistoryWindowInSeconds` (300 s by default,
//! as in mongod) so that reads with `readConcern: {level: "snapshot", atClusterTime}` see the
//! data exactly as it was at that time, every collection (`local.oplog.rs` included) at once.
//!
//! Keeping a version is cheap: collections are shared (`Arc`) and built on persistent maps, so a
//! version holds only what later writes replaced. That is also what bounds its memory: the
//! history counts the bytes of documents replaced, deleted or dropped since each version (plus a
//! fixed allowance per version for the map nodes a write copies) and forgets its oldest versions
//! when the total passes [`MAX_HISTORY_BYTES`], as mongod's storage engine gives up old
//! snapshots under cache pressure. A read older than the oldest version kept fails with
//! SnapshotTooOld (239), one later than the newest write with InvalidOptions (72), as on mongod.
//!
//! A multi-document write command is one version: a time inside it reads the state before it.

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

struct Version {
    ts: Timestamp,
    catalog: Arc<Catalog>,
    /// `superseded` when this version was recorded.
    superseded_mark: u64,
}

pub struct History {
    versions: VecDeque<Version>,
    /// minSnapshotHistoryWindowInSeconds.
    pub window_secs: i64,
    /// Bytes of documents replaced, deleted or dropped since the server started.
    superseded: u64,
    /// The server's write counter when the newest version was recorded.
    recorded_version: u64,
}

impl Default for History {
    fn default() -> Self {
        History {
            versions: VecDeque::new(),
            window_secs: DEFAULT_WINDOW_SECS,
            superseded: 0,
            recorded_version: u64::MAX,
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
    pub fn record(&mut self, version: u64, ts: Timestamp, catalog: &Catalog, superseded: u64) {
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
            self.versions.pop_back();
        }
        self.versions.push_back(Version {
            ts,
            catalog: Arc::new(catalog.clone()),
            superseded_mark: superseded,
        });
        self.trim();
    }

    /// Forgets versions that no time inside the window needs, and the oldest ones while the
    /// history holds more than [`MAX_HISTORY_BYTES`]. The newest version always stays.
    fn trim(&mut self) {
        let oldest_needed = now_secs() - self.window_secs;
        while self.versions.len() > 1 && (self.versions[1].ts.time as i64) <= oldest_needed {
            self.versions.pop_front();
        }
        while self.versions.len() > 1 && self.held_bytes() > MAX_HISTORY_BYTES {
            self.versions.pop_front();
        }
    }

    /// Estimated bytes the versions older than the newest keep alive.
    pub fn held_bytes(&self) -> u64 {
        match self.versions.front() {
            Some(oldest) => {
                self.superseded.saturating_sub(oldest.superseded_mark)
                    + (self.versions.len() as u64 - 1) * VERSION_OVERHEAD_BYTES
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
            Some(v) => Ok(v.catalog.clone()),
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

fn render_ts(ts: Timestamp) -> String {
    format!("Timestamp({}, {})", ts.time, ts.increment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::state::Database;

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
        h.record(1, ts(t, 1), &catalog("a"), 0);
        h.record(2, ts(t, 5), &catalog("b"), 0);
        h.record(2, ts(t, 6), &catalog("ignored"), 0);
        let now = ts(t, 9);
        assert!(h.at(ts(t, 1), now).unwrap().contains_key("a"));
        assert!(h.at(ts(t, 4), now).unwrap().contains_key("a"));
        assert!(h.at(ts(t, 5), now).unwrap().contains_key("b"));
        assert!(h.at(ts(t, 9), now).unwrap().contains_key("b"));
        assert_eq!(h.at(ts(t, 0), now).unwrap_err().code, 239);
        assert_eq!(h.at(ts(t, 10), now).unwrap_err().code, 72);
    }

    #[test]
    fn window_and_memory_bound_forget_old_versions() {
        let t = now_secs() as u32;
        let mut h = History {
            window_secs: 10,
            ..History::default()
        };
        h.record(1, ts(t - 100, 1), &catalog("old"), 0);
        h.record(2, ts(t - 50, 1), &catalog("mid"), 0);
        h.record(3, ts(t, 1), &catalog("new"), 0);
        // t-100 is no longer needed by any time in the window; t-50 still describes t-10..t.
        assert_eq!(h.len(), 2);
        assert_eq!(h.at(ts(t - 100, 1), ts(t, 1)).unwrap_err().code, 239);
        let mut h = History::default();
        h.record(1, ts(t, 1), &catalog("a"), 0);
        h.record(2, ts(t, 2), &catalog("b"), MAX_HISTORY_BYTES);
        h.record(3, ts(t, 3), &catalog("c"), MAX_HISTORY_BYTES + 1);
        assert!(h.held_bytes() <= MAX_HISTORY_BYTES);
        assert_eq!(h.at(ts(t, 1), ts(t, 3)).unwrap_err().code, 239);
        assert!(h.at(ts(t, 3), ts(t, 3)).unwrap().contains_key("c"));
    }
}
