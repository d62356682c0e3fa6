//! Oplog headroom: how many seconds of history a source's oplog holds at the current write
//! rate, and how long a link's position has before the oplog rolls over it.
//!
//! The oplog is capped by size (`maxSize` in `$collStats`' `storageStats`, the configured
//! oplog size). Its entries span `newest - oldest` seconds and take `size` bytes, so writes
//! arrive at about `size / (newest - oldest)` bytes a second (the average over the history it
//! holds) and a full oplog holds `maxSize` at that rate: `capacity = (newest - oldest) x
//! maxSize / size` seconds. A link whose position is `lag` seconds behind the newest entry
//! falls off once the oldest entry passes it, `capacity - lag` seconds from now if it stays
//! there: that is its margin. A link is warned about once its margin is under 20% of the
//! capacity.

use bson::{doc, Bson, Document, Timestamp};
use mongodb::Client;

/// Warn when a link's margin is below this fraction of its source's capacity.
pub const WARN_FRACTION: f64 = 0.2;

/// What a source's oplog holds.
#[derive(Debug, Clone, PartialEq)]
pub struct OplogStats {
    pub oldest: Timestamp,
    pub newest: Timestamp,
    /// Bytes of entries held (`storageStats.size`).
    pub size: u64,
    /// The oplog's cap in bytes (`storageStats.maxSize`).
    pub max_size: u64,
    /// Milliseconds between the oldest and newest entries' wall clock times (`wall`, written
    /// by MongoDB 4.2 and later), finer than the timestamps' seconds; None without them.
    pub wall_span_ms: Option<i64>,
}

impl OplogStats {
    /// Seconds of history held now.
    pub fn window_seconds(&self) -> f64 {
        match self.wall_span_ms {
            Some(ms) if ms >= 0 => ms as f64 / 1000.0,
            _ => self.newest.time.saturating_sub(self.oldest.time) as f64,
        }
    }

    /// Seconds of history the oplog holds when full at the current write rate; None while
    /// the rate cannot be told (an empty oplog, or every entry within one second).
    pub fn capacity_seconds(&self) -> Option<f64> {
        let window = self.window_seconds();
        if self.size == 0 || window <= 0.0 || self.max_size == 0 {
            return None;
        }
        Some(window * (self.max_size as f64 / self.size as f64).max(1.0))
    }

    /// Write rate in bytes a second (averaged over the history held).
    pub fn bytes_per_second(&self) -> Option<f64> {
        let window = self.window_seconds();
        (window > 0.0).then(|| self.size as f64 / window)
    }

    /// Seconds before the oplog rolls over `position` at the current rate (0 or less: it has,
    /// or the position is older than the oldest entry).
    pub fn margin_seconds(&self, position: Timestamp) -> Option<f64> {
        if position < self.oldest {
            return Some(0.0);
        }
        let lag = self.newest.time.saturating_sub(position.time) as f64;
        self.capacity_seconds().map(|c| (c - lag).max(0.0))
    }

    /// True when `position` is within [`WARN_FRACTION`] of falling off.
    pub fn near_rollover(&self, position: Timestamp) -> bool {
        match (self.margin_seconds(position), self.capacity_seconds()) {
            (Some(m), Some(c)) => m < WARN_FRACTION * c,
            (Some(m), None) => m <= 0.0,
            _ => false,
        }
    }

    /// The fields `status()` shows for the source, with the margin of `position` if given.
    pub fn to_document(&self, position: Option<Timestamp>) -> Document {
        let opt = |v: Option<f64>| v.map(Bson::Double).unwrap_or(Bson::Null);
        let mut d = doc! {
            "oldest": self.oldest, "newest": self.newest,
            "size_bytes": self.size as i64, "max_size_bytes": self.max_size as i64,
            "window_seconds": self.window_seconds(),
            "capacity_seconds": opt(self.capacity_seconds()),
            "bytes_per_second": opt(self.bytes_per_second()),
        };
        if let Some(p) = position {
            d.insert("margin_seconds", opt(self.margin_seconds(p)));
            d.insert("near_rollover", self.near_rollover(p));
        }
        d
    }
}

fn number(v: Option<&Bson>) -> Option<u64> {
    match v? {
        Bson::Int32(i) => u64::try_from(*i).ok(),
        Bson::Int64(i) => u64::try_from(*i).ok(),
        Bson::Double(d) if *d >= 0.0 => Some(*d as u64),
        _ => None,
    }
}

/// Reads the oplog's first and last entries and its `storageStats`.
pub async fn read_oplog_stats(client: &Client) -> Result<OplogStats, String> {
    let oplog = client.database("local").collection::<Document>("oplog.rs");
    let end = |order: i32| {
        let oplog = oplog.clone();
        async move {
            let entry = oplog
                .find_one(doc! {})
                .sort(doc! {"$natural": order})
                .projection(doc! {"ts": 1, "wall": 1})
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "the oplog is empty".to_string())?;
            let ts = entry
                .get_timestamp("ts")
                .map_err(|_| "an oplog entry without ts".to_string())?;
            let wall = entry
                .get_datetime("wall")
                .ok()
                .map(|w| w.timestamp_millis());
            Ok::<_, String>((ts, wall))
        }
    };
    let ((oldest, oldest_wall), (newest, newest_wall)) = (end(1).await?, end(-1).await?);
    let mut cursor = oplog
        .aggregate(vec![doc! {"$collStats": {"storageStats": {}}}])
        .await
        .map_err(|e| e.to_string())?;
    let stats = match cursor.advance().await.map_err(|e| e.to_string())? {
        true => cursor.deserialize_current().map_err(|e| e.to_string())?,
        false => return Err("$collStats returned nothing".into()),
    };
    let storage = stats
        .get_document("storageStats")
        .map_err(|_| "$collStats returned no storageStats".to_string())?;
    Ok(OplogStats {
        oldest,
        newest,
        size: number(storage.get("size")).unwrap_or(0),
        max_size: number(storage.get("maxSize"))
            .ok_or_else(|| "the oplog reports no maxSize (is it capped?)".to_string())?,
        wall_span_ms: oldest_wall.zip(newest_wall).map(|(o, n)| n - o),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(time: u32) -> Timestamp {
        Timestamp { time, increment: 1 }
    }

    #[test]
    fn a_half_full_oplog_holds_twice_its_window() {
        let s = OplogStats {
            oldest: ts(1000),
            newest: ts(1100),
            size: 50,
            max_size: 100,
            wall_span_ms: None,
        };
        assert_eq!(s.capacity_seconds(), Some(200.0));
        assert_eq!(s.margin_seconds(ts(1100)), Some(200.0));
        assert_eq!(s.margin_seconds(ts(1000)), Some(100.0));
        assert!(!s.near_rollover(ts(1000)));
        let full = OplogStats {
            size: 100,
            ..s.clone()
        };
        assert_eq!(full.capacity_seconds(), Some(100.0));
        assert_eq!(full.margin_seconds(ts(1010)), Some(10.0));
        assert!(full.near_rollover(ts(1010)));
        assert!(!full.near_rollover(ts(1030)));
        assert_eq!(full.margin_seconds(ts(999)), Some(0.0));
    }

    #[test]
    fn no_rate_no_capacity() {
        let s = OplogStats {
            oldest: ts(5),
            newest: ts(5),
            size: 10,
            max_size: 100,
            wall_span_ms: None,
        };
        let finer = OplogStats {
            wall_span_ms: Some(500),
            ..s.clone()
        };
        assert_eq!(finer.capacity_seconds(), Some(5.0));
        assert_eq!(s.capacity_seconds(), None);
        assert_eq!(s.margin_seconds(ts(5)), None);
        assert!(!s.near_rollover(ts(5)));
    }
}

/// Watches the oplog of every source of a running replicator: refreshes each link's
/// [`LinkStatus::oplog`](super::status::LinkStatus) every `every`, and warns (at most once a
/// minute per link) when a link's position is within 20% of falling off.
pub async fn monitor(
    sources: Vec<(
        mongodb::options::ClientOptions,
        Vec<std::sync::Arc<parking_lot::Mutex<super::status::LinkStatus>>>,
    )>,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use std::collections::HashMap;
    use std::time::Instant;
    let clients: Vec<_> = sources
        .into_iter()
        .filter_map(|(o, links)| Client::with_options(o).ok().map(|c| (c, links)))
        .collect();
    let mut warned: HashMap<String, Instant> = HashMap::new();
    loop {
        for (client, links) in &clients {
            let Ok(stats) = read_oplog_stats(client).await else {
                continue; // unreachable for now: the links say so themselves
            };
            for link in links {
                let mut s = link.lock();
                s.oplog = Some(stats.clone());
                let Some(position) = s.checkpoint else {
                    continue;
                };
                if !stats.near_rollover(position) {
                    continue;
                }
                let due = warned
                    .get(&s.id)
                    .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60));
                if due {
                    warned.insert(s.id.clone(), Instant::now());
                    log::warn!(target: "mmm",
                        "link {}: its position is {:.0} s from falling off the oplog of {} (which holds about {:.0} s of history at the current write rate); if it does, it catches up from the source's __mmm.meta (or stops, with on_rollover=\"stop\")",
                        s.id,
                        stats.margin_seconds(position).unwrap_or(0.0).max(0.0),
                        s.src,
                        stats.capacity_seconds().unwrap_or(0.0));
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
