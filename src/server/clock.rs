//! The server's logical clock: oplog timestamps, `$clusterTime` and `operationTime` all come
//! from here, so they are strictly increasing and consistent with each other.

use bson::Timestamp;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct Clock {
    last: Timestamp,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            last: Timestamp {
                time: 0,
                increment: 0,
            },
        }
    }

    /// The next timestamp: wall-clock seconds, with the increment restarting at 1 each second.
    pub fn tick(&mut self) -> Timestamp {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        self.last = if now > self.last.time {
            Timestamp {
                time: now,
                increment: 1,
            }
        } else {
            Timestamp {
                time: self.last.time,
                increment: self.last.increment + 1,
            }
        };
        self.last
    }

    pub fn last(&self) -> Timestamp {
        self.last
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Oplog record ids are the timestamp as one ordered integer, like WiredTiger's oplog keys.
pub fn ts_to_u64(ts: Timestamp) -> u64 {
    ((ts.time as u64) << 32) | ts.increment as u64
}

pub fn u64_to_ts(v: u64) -> Timestamp {
    Timestamp {
        time: (v >> 32) as u32,
        increment: v as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_strictly_increase_and_round_trip() {
        let mut c = Clock::new();
        let a = c.tick();
        let b = c.tick();
        assert!(ts_to_u64(b) > ts_to_u64(a));
        assert_eq!(u64_to_ts(ts_to_u64(b)), b);
    }
}
