//! Stamps: a hybrid logical clock per server, computed from the oplog. Pure logic.
//!
//! `h` packs milliseconds of wall time in its high bits and a 16-bit counter in its low bits,
//! as CockroachDB's and MongoDB's own hybrid clocks do. A server's clock `H` moves, entry by
//! entry of its oplog, by two rules ([`tick`] for a local write, [`witness`] for a version
//! mmm installs); the stamp of a local write is `(H after the write, server id)`. Because the
//! physical part comes from the oplog's `wall` field and never from the clock of the machine
//! that runs mmm, any reader that starts from the same anchor computes the same stamps.

use bson::{Bson, Document};
use std::collections::BTreeMap;
use std::fmt;

/// Bits of the logical counter below the milliseconds.
pub const COUNTER_BITS: u32 = 16;
/// Wall times outside [0, 2^47) ms (year 6429) are clamped: a hostile or broken `wall` cannot
/// overflow the clock.
const MAX_WALL_MS: i64 = (1 << 47) - 1;

/// The identity and order of a version: larger is later. Ordered by `h`, then by site id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    pub h: i64,
    pub site: String,
}

impl Stamp {
    pub fn new(h: i64, site: impl Into<String>) -> Stamp {
        Stamp {
            h,
            site: site.into(),
        }
    }

    /// The wall time part, in milliseconds since the epoch.
    pub fn wall_ms(&self) -> i64 {
        self.h >> COUNTER_BITS
    }

    pub fn to_document(&self) -> Document {
        bson::doc! {"h": self.h, "site": &self.site}
    }

    pub fn from_document(d: &Document) -> Option<Stamp> {
        Some(Stamp::new(d.get_i64("h").ok()?, d.get_str("site").ok()?))
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}@{}",
            self.wall_ms(),
            self.h & ((1 << COUNTER_BITS) - 1),
            self.site
        )
    }
}

/// The site id under which `site` writes resolutions. Resolutions are made inside mmm's apply
/// transactions, where the clock value of local writes committing at the same moment is not
/// known yet: a site of their own keeps the two kinds of stamps from ever colliding.
pub fn resolution_site(site: &str) -> String {
    format!("{site}#r")
}

/// The server a (possibly resolution) site id belongs to.
pub fn server_of(site: &str) -> &str {
    site.strip_suffix("#r").unwrap_or(site)
}

/// The clock after a local write whose oplog entry has wall time `wall_ms`.
pub fn tick(h: i64, wall_ms: i64) -> i64 {
    let physical = wall_ms.clamp(0, MAX_WALL_MS) << COUNTER_BITS;
    h.saturating_add(1).max(physical)
}

/// The clock after installing a version stamped `seen`: never behind it.
pub fn witness(h: i64, seen: i64) -> i64 {
    h.max(seen)
}

/// The clock that starts a server's history: its newest entry's wall time.
pub fn initial(wall_ms: i64) -> i64 {
    tick(0, wall_ms)
}

/// What a server has seen: per site, the largest stamp `h` of that site's versions. A site's
/// versions reach every server in the order they were made (links are FIFO along a tree), so
/// this one number per site says exactly which of its versions were seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Knowledge(pub BTreeMap<String, i64>);

impl Knowledge {
    /// Whether a version stamped `s` had been seen.
    pub fn covers(&self, s: &Stamp) -> bool {
        self.0.get(&s.site).is_some_and(|h| *h >= s.h)
    }

    /// Records a version stamped `s` as seen. Returns whether that changed anything.
    pub fn see(&mut self, s: &Stamp) -> bool {
        match self.0.get_mut(&s.site) {
            Some(h) if *h >= s.h => false,
            Some(h) => {
                *h = s.h;
                true
            }
            None => {
                self.0.insert(s.site.clone(), s.h);
                true
            }
        }
    }

    pub fn to_document(&self) -> Document {
        self.0
            .iter()
            .map(|(k, v)| (k.clone(), Bson::Int64(*v)))
            .collect()
    }

    /// Unreadable entries are dropped: knowing less only makes more versions look concurrent.
    pub fn from_document(d: &Document) -> Knowledge {
        Knowledge(
            d.iter()
                .filter_map(|(k, v)| match v {
                    Bson::Int64(h) => Some((k.clone(), *h)),
                    Bson::Int32(h) => Some((k.clone(), *h as i64)),
                    _ => None,
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_follows_wall_time_and_never_goes_back() {
        let h = initial(1_000);
        assert_eq!(h, 1_000 << 16);
        // Same millisecond: the counter moves.
        assert_eq!(tick(h, 1_000), h + 1);
        // The wall clock stepped back: the clock does not.
        assert_eq!(tick(h + 5, 900), h + 6);
        // Later wall time: the counter resets.
        assert_eq!(tick(h + 5, 1_001), 1_001 << 16);
        // A version from a server whose clock runs ahead pulls this one forward, so the next
        // local write is later than it.
        let ahead = 5_000 << 16;
        let h = witness(tick(h, 1_002), ahead);
        assert!(tick(h, 1_003) > ahead);
    }

    #[test]
    fn hostile_wall_times_do_not_overflow() {
        assert_eq!(tick(0, -5), 1);
        assert!(tick(0, i64::MAX) > 0);
        assert_eq!(tick(i64::MAX, 0), i64::MAX);
    }

    #[test]
    fn stamps_order_by_clock_then_site() {
        assert!(Stamp::new(2, "a") > Stamp::new(1, "z"));
        assert!(Stamp::new(1, "b") > Stamp::new(1, "a"));
        assert_eq!(server_of(&resolution_site("cloud")), "cloud");
        assert_eq!(server_of("cloud"), "cloud");
    }

    #[test]
    fn knowledge_covers_every_version_up_to_the_largest_seen() {
        let mut k = Knowledge::default();
        assert!(!k.covers(&Stamp::new(1, "a")));
        assert!(k.see(&Stamp::new(5, "a")));
        assert!(!k.see(&Stamp::new(3, "a")));
        assert!(k.covers(&Stamp::new(5, "a")));
        assert!(k.covers(&Stamp::new(3, "a")));
        assert!(!k.covers(&Stamp::new(6, "a")));
        assert!(!k.covers(&Stamp::new(1, "b")));
        assert_eq!(Knowledge::from_document(&k.to_document()), k);
    }
}
