//! The majority commit point: the newest write that a majority of the replica set has, which
//! `readConcern: "majority"` reads see, `writeConcern: {w: "majority"}` writes wait for and
//! `hello.lastWrite.majorityOpTime` reports.
//!
//! A one-member set commits every write at once, so the point is normally the last applied
//! optime. `hold` freezes it where it is, as a lagging secondary freezes a real set's commit
//! point; `release` lets it catch up with everything written meanwhile. While it is held:
//!
//! - majority reads (and `getMore`s of cursors opened by them, tailable oplog cursors included)
//!   read the catalog as of the point, from the snapshot history, which keeps that version
//!   until the release (mongod's storage engine likewise keeps history back to the commit point);
//! - writes whose write concern is `w: "majority"` (the implicit default of MongoDB 5.0+ when a
//!   command names no `w`) are done, then wait until the point passes them, their `wtimeout`
//!   or their `maxTimeMS`; they wait without the server lock, so nothing else is held up, and
//!   a closed connection or a stopped server ends the wait. A transaction committed that way
//!   (as mmm's applier commits) is committed and visible to local reads; only its
//!   acknowledgement waits;
//! - reads with `afterClusterTime` at `majority` wait until the point reaches that time.

use crate::server::clock::ts_to_u64;
use bson::{DateTime, Timestamp};

/// An optime a majority has, with the wall time of its write.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Committed {
    pub ts: Timestamp,
    pub wall: DateTime,
}

/// Where the majority commit point is: following the last write, or frozen.
#[derive(Debug, Clone, Default)]
pub struct MajorityPoint {
    frozen: Option<Committed>,
}

impl MajorityPoint {
    /// The commit point, given the last applied write.
    pub fn get(&self, last_write: (Timestamp, DateTime)) -> Committed {
        self.frozen.unwrap_or(Committed {
            ts: last_write.0,
            wall: last_write.1,
        })
    }

    /// The frozen point, if it is held.
    pub fn held(&self) -> Option<Committed> {
        self.frozen
    }

    /// Freezes the point at `last_write`; holding it again keeps it where the first hold put it.
    pub fn hold(&mut self, last_write: (Timestamp, DateTime)) -> Committed {
        *self.frozen.get_or_insert(Committed {
            ts: last_write.0,
            wall: last_write.1,
        })
    }

    /// Lets the point follow the last write again. False when it was not held.
    pub fn release(&mut self) -> bool {
        self.frozen.take().is_some()
    }
}

/// The ordered integer form of a commit point, for watchers.
pub fn point_key(c: Committed) -> u64 {
    ts_to_u64(c.ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(i: u32) -> (Timestamp, DateTime) {
        (
            Timestamp {
                time: 100,
                increment: i,
            },
            DateTime::from_millis(i as i64),
        )
    }

    #[test]
    fn follows_the_last_write_unless_held() {
        let mut m = MajorityPoint::default();
        assert_eq!(m.get(ts(1)).ts.increment, 1);
        assert_eq!(m.get(ts(2)).ts.increment, 2);
        assert!(!m.release(), "nothing to release");
        m.hold(ts(2));
        m.hold(ts(5)); // a second hold keeps the first point
        assert_eq!(m.get(ts(7)).ts.increment, 2);
        assert_eq!(m.held().map(|c| c.ts.increment), Some(2));
        assert!(m.release());
        assert_eq!(m.get(ts(7)).ts.increment, 7);
        assert!(m.held().is_none());
    }
}
