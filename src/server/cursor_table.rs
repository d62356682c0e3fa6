//! The open cursors and their lifetime: a cursor dies when it is exhausted, killed
//! (`killCursors`, a drop), idle longer than `cursorTimeoutMillis` (unless opened with
//! `noCursorTimeout`). A closed connection does not kill its cursors: drivers pool connections
//! and may continue a cursor on any of them, and mongod frees an abandoned cursor only by its
//! idle timeout (load-balanced mode, which mmm's server does not offer, is the exception). Their
//! number is capped, so clients that never close cursors cannot exhaust the server's memory.

use crate::server::cursor::{new_cursor_id, Cursor};
use crate::server::error::{ErrorCode, ServerError, ServerResult};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// mongod's default `cursorTimeoutMillis`: 10 minutes.
pub const DEFAULT_CURSOR_TIMEOUT: Duration = Duration::from_secs(600);
/// Most cursors open at once; opening one more is refused with a clear error.
pub const MAX_OPEN_CURSORS: usize = 20_000;

/// When a cursor was last used, and whether it may time out.
#[derive(Debug, Clone, Copy)]
pub struct CursorLife {
    pub last_used: Instant,
    /// `noCursorTimeout`: exempt from the idle timeout.
    pub no_timeout: bool,
}

impl Default for CursorLife {
    fn default() -> Self {
        CursorLife {
            last_used: Instant::now(),
            no_timeout: false,
        }
    }
}

pub struct CursorTable {
    open: HashMap<i64, Cursor>,
    /// Cursors out with a getMore that runs outside the server lock: their namespace, and
    /// whether a `killCursors` came meanwhile (they are then dropped when they come back).
    pinned: HashMap<i64, (String, bool)>,
    /// Idle time after which a cursor is killed (`cursorTimeoutMillis`).
    pub timeout: Duration,
    /// serverStatus `metrics.cursor`: cursors killed for being idle, and all ever opened.
    pub timed_out: u64,
    pub total_opened: u64,
}

impl Default for CursorTable {
    fn default() -> Self {
        CursorTable {
            open: HashMap::new(),
            pinned: HashMap::new(),
            timeout: DEFAULT_CURSOR_TIMEOUT,
            timed_out: 0,
            total_opened: 0,
        }
    }
}

impl CursorTable {
    /// Registers a new cursor and returns its id.
    pub fn open(&mut self, mut cursor: Cursor) -> ServerResult<i64> {
        if self.open.len() >= MAX_OPEN_CURSORS {
            return Err(ServerError::new(
                ErrorCode::ExceededMemoryLimit,
                format!(
                    "too many open cursors ({MAX_OPEN_CURSORS}): exhaust or kill cursors \
                     (killCursors) before opening more"
                ),
            ));
        }
        let id = loop {
            let id = new_cursor_id();
            if !self.open.contains_key(&id) {
                break id;
            }
        };
        cursor.life.last_used = Instant::now();
        self.open.insert(id, cursor);
        self.total_opened += 1;
        Ok(id)
    }

    /// Takes a cursor out to run a getMore on it; [`CursorTable::put_back`] returns it.
    pub fn take(&mut self, id: i64) -> Option<Cursor> {
        self.open.remove(&id)
    }

    /// Returns a cursor after use: idle from now.
    pub fn put_back(&mut self, id: i64, mut cursor: Cursor) {
        cursor.life.last_used = Instant::now();
        self.open.insert(id, cursor);
    }

    pub fn kill(&mut self, id: i64) -> bool {
        if let Some((_, killed)) = self.pinned.get_mut(&id) {
            *killed = true;
            return true;
        }
        self.open.remove(&id).is_some()
    }

    /// Takes a cursor out for a getMore that runs without the lock; until
    /// [`CursorTable::adopt`] brings it back it is in use (and can still be killed).
    pub fn pin(&mut self, id: i64) -> Option<Cursor> {
        let cursor = self.open.remove(&id)?;
        self.pinned.insert(id, (cursor.ns.clone(), false));
        Some(cursor)
    }

    /// Holds a pinned cursor in a read view's table as it is (its owner and idle time kept).
    pub fn hold(&mut self, id: i64, cursor: Cursor) {
        self.open.insert(id, cursor);
    }

    /// The namespace of a cursor that is out with a getMore.
    pub fn pinned_ns(&self, id: i64) -> Option<&str> {
        self.pinned.get(&id).map(|(ns, _)| ns.as_str())
    }

    pub fn get(&self, id: i64) -> Option<&Cursor> {
        self.open.get(&id)
    }

    pub fn retain(&mut self, keep: impl FnMut(&i64, &mut Cursor) -> bool) {
        self.open.retain(keep);
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    pub fn no_timeout_count(&self) -> usize {
        self.open.values().filter(|c| c.life.no_timeout).count()
    }

    /// Kills cursors idle for longer than the timeout; returns how many.
    pub fn kill_idle(&mut self, now: Instant) -> usize {
        let timeout = self.timeout;
        let before = self.open.len();
        self.open.retain(|_, c| {
            c.life.no_timeout || now.saturating_duration_since(c.life.last_used) <= timeout
        });
        let killed = before - self.open.len();
        self.timed_out += killed as u64;
        killed
    }

    /// Takes over the cursors a detached read opened or used in `other` (their ids are kept: a
    /// read view's table starts empty, and ids are random 63-bit numbers).
    pub fn adopt(&mut self, other: CursorTable, pinned: Option<i64>) {
        self.total_opened += other.total_opened;
        let killed = pinned
            .and_then(|id| self.pinned.remove(&id))
            .is_some_and(|(_, killed)| killed);
        for (id, cursor) in other.open {
            if killed && Some(id) == pinned {
                continue;
            }
            self.open.insert(id, cursor);
        }
    }
}

#[cfg(test)]
mod pinned_tests {
    use super::*;
    use crate::server::cursor::Source;

    fn cursor() -> Cursor {
        Cursor {
            ns: "db.c".into(),
            source: Source::Buffered(Default::default()),
            projection: None,
            limit_remaining: None,
            batch_size: None,
            life: CursorLife::default(),
            majority: false,
        }
    }

    #[test]
    fn a_cursor_out_with_a_get_more_can_be_killed_and_is_dropped_when_it_returns() {
        let mut table = CursorTable::default();
        let id = table.open(cursor()).unwrap();
        let c = table.pin(id).unwrap();
        assert_eq!(table.pinned_ns(id), Some("db.c"));
        assert!(table.kill(id));
        let mut view = CursorTable::default();
        view.put_back(id, c);
        table.adopt(view, Some(id));
        assert!(table.get(id).is_none() && table.pinned_ns(id).is_none());
        // Not killed: it comes back.
        let id = table.open(cursor()).unwrap();
        let c = table.pin(id).unwrap();
        let mut view = CursorTable::default();
        view.put_back(id, c);
        table.adopt(view, Some(id));
        assert!(table.get(id).is_some() && table.pinned_ns(id).is_none());
    }
}
