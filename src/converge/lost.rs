//! What a link sends for a document whose content differs between its two servers when the
//! source's history was lost: a stretch of its oplog rolled over before any process observed
//! it, so the source's `__mmm.meta` rows do not account for the writes made there. Pure logic;
//! `replicate/catch_up.rs` reads the inputs and carries out the answer.
//!
//! ## Which side changed
//!
//! Every row holds, when known, the content hash of the version it names (`c`, written with
//! the row: from the op when the op is the whole document, else read back at the position the
//! row accounts for). A document whose current content does not hash to its row's `c` was
//! written after the row, in the lost stretch: it **changed**. One whose content is the row's
//! version is **unchanged**: what it holds is exactly that version, with that stamp, and it can
//! travel like any version. Without a row or without a hash, nothing can be said: **unknown**.
//! A tombstone row with the document present, or a live row with it absent, is a change too.
//!
//! ## Why the answer converges and keeps every change made on one side only
//!
//! Each link decides from both servers' rows and documents, so the link one way and the link
//! the other way see the same facts and answer consistently:
//! - source changed: its content is sent as a **new** version (a fresh stamp above both rows,
//!   recorded on the source in the same transaction that reads its content). If only the source
//!   changed, the link the other way sees a changed destination and sends nothing, so the
//!   change reaches both servers. If both changed, both send new versions: a conflict,
//!   journaled on both servers like any other (the first to arrive is met by a destination
//!   whose row predates its change, so under `lww` the link that catches up first wins; the
//!   other then finds equal contents).
//! - source unchanged, destination changed: nothing; the link the other way sends the change.
//! - neither changed (or the destination's hash is unknown): the versions are ordinary, and the
//!   source's is sent **as is** (its own stamp) when it is later than the destination's row, so
//!   the later version wins as it would have with the history; never a version the destination
//!   itself made, which it had already.
//! - source unknown (no row: observation had not stored the source's last writes when the
//!   stretch was lost) but its content hashes to the destination row's: it holds that version,
//!   and the difference is the destination's change: nothing.
//! - source unknown, destination's version made by the source: the source had that version
//!   and holds something else now, so it changed it: new.
//! - source unknown and absent (no row), destination's version not from the source: nothing
//!   (the source never had the document as far as anything knows; the destination's copy may
//!   be an insert made in its own lost stretch, and times cannot say: versions are stamped in
//!   milliseconds, the lost stretch is known to the second). The price: a document no row on
//!   the source described (copied before replication began) and deleted there while its
//!   history was lost comes back.
//! - source unknown otherwise: the rule used when nothing better is known, by time: its content
//!   is sent as new unless the destination's version was made during or after the lost stretch
//!   (then that version is concurrent with whatever the source did, and left to the link the
//!   other way). One of two concurrent changes may then be overwritten, and it is journaled.
//!
//! Whatever a link sends is decided on arrival like any version, so these rules only choose
//! which versions travel; convergence itself is the policy's (see `mod.rs`). A link that runs
//! after the other one already brought the two contents together finds nothing to send.

use super::Stamp;
use crate::store::meta::MetaRow;

/// A document on one server: the server's id, its row, whether it is there, and its content's
/// hash.
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    pub server: &'a str,
    pub row: Option<&'a MetaRow>,
    pub present: bool,
    /// The content hash of the document as it is (when present and readable).
    pub hash: Option<i64>,
}

/// Whether a server's document is still the version its row names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Changed,
    Unknown,
}

/// What the link sends for the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Send {
    Nothing,
    /// The source's version with the stamp of its row.
    AsIs,
    /// The source's content as a new version.
    New,
}

impl Found<'_> {
    pub fn change(&self) -> Change {
        let Some(row) = self.row else {
            return Change::Unknown;
        };
        match (row.deleted, self.present) {
            (true, false) => Change::Unchanged,
            (true, true) | (false, false) => Change::Changed,
            (false, true) => match (row.content, self.hash) {
                (Some(c), Some(h)) if c == h => Change::Unchanged,
                (Some(_), Some(_)) => Change::Changed,
                _ => Change::Unknown,
            },
        }
    }

    fn stamp(&self) -> Option<&Stamp> {
        self.row.map(|r| &r.stamp)
    }
}

/// What a link sends for a document that differs on its two servers. `gap_ms`: the wall time
/// (ms) from which the source's history was lost.
pub fn send(src: &Found, dst: &Found, gap_ms: i64) -> Send {
    let made_on = |f: &Found, server: &str| {
        f.stamp()
            .is_some_and(|s| super::stamp::server_of(&s.site) == server)
    };
    let later = || match (src.stamp(), dst.stamp()) {
        (Some(s), Some(d)) => s > d,
        (Some(_), None) => true,
        (None, _) => false,
    };
    match (src.change(), dst.change()) {
        (Change::Changed, _) => Send::New,
        (Change::Unchanged, Change::Changed) => Send::Nothing,
        // A version the destination made went from there: sending it back is never news
        // (what the destination holds now is that version or a later change).
        (Change::Unchanged, _) if made_on(src, dst.server) => Send::Nothing,
        (Change::Unchanged, _) if later() => Send::AsIs,
        (Change::Unchanged, _) => Send::Nothing,
        // No row, but the content is the version the destination's row names: the source
        // holds that version (its row was not stored), and the difference is the
        // destination's own change.
        (Change::Unknown, _)
            if src.present
                && src.row.is_none()
                && src.hash.is_some()
                && dst.row.and_then(|r| r.content) == src.hash =>
        {
            Send::Nothing
        }
        // The destination's version came from the source, which holds something else now:
        // the source changed it unobserved (or deleted it).
        (Change::Unknown, _) if made_on(dst, src.server) => Send::New,
        // Absent with no row, and the destination's version not from the source: as far as
        // anything knows the source never had the document, and a delete sent now could
        // remove what the destination wrote unobserved.
        (Change::Unknown, _) if !src.present && src.row.is_none() => Send::Nothing,
        (Change::Unknown, _) => {
            if dst.row.is_some_and(|r| r.stamp.wall_ms() >= gap_ms) {
                Send::Nothing
            } else {
                Send::New
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{Bson, Timestamp};

    const GAP_MS: i64 = 1_000_000;

    fn row(h_ms: i64, site: &str, deleted: bool, content: Option<i64>) -> MetaRow {
        MetaRow {
            ns: "db.c".into(),
            id: Bson::Int32(1),
            stamp: Stamp::new(h_ms << 16, site),
            deleted,
            through: Timestamp {
                time: 1,
                increment: 0,
            },
            fields: None,
            content: if deleted { None } else { content },
        }
    }

    /// What happened to the document on one server while its history was lost (then,
    /// possibly, a later write that observation did see).
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Lost {
        Nothing,
        Update,
        Delete,
    }

    #[derive(Debug, Clone, Copy)]
    struct Story {
        lost: Lost,
        observed_later: bool,
    }

    /// The version both servers held before the outage: its content, the server that wrote it,
    /// and whether that server's observation had stored its row (the other server installed it
    /// with its row).
    #[derive(Debug, Clone, Copy)]
    struct Base {
        content: i64,
        origin: &'static str,
        stored: bool,
    }

    /// A server as the story leaves it: (row, present, content hash).
    fn server(
        base: Option<Base>,
        story: Story,
        site: &'static str,
        seed: i64,
    ) -> (Option<MetaRow>, bool, Option<i64>) {
        let mut content = base.map(|b| b.content);
        let mut row_ = base
            .filter(|b| b.stored || b.origin != site)
            // A version whose row was not stored was written after the last stored position:
            // in the stretch that was lost.
            .map(|b| {
                let at = if b.stored { GAP_MS / 2 } else { GAP_MS + 10 };
                row(at, b.origin, false, Some(b.content))
            });
        match story.lost {
            Lost::Nothing => {}
            Lost::Update => content = Some(100 + seed),
            Lost::Delete => content = None,
        }
        if story.observed_later {
            content = Some(200 + seed);
            row_ = Some(row(GAP_MS * 2 + seed, site, false, content));
        }
        (row_, content.is_some(), content)
    }

    /// Every combination of what each side did, of which side wrote the version they shared
    /// and whether its row was stored: every change made on one side is sent as a new version
    /// and never overwritten as is; a side that changed nothing never sends a new version;
    /// with no change anywhere the later observed version travels as is, one way only.
    #[test]
    fn every_history_of_two_sides_sends_exactly_the_changes() {
        let stories: Vec<Story> = [Lost::Nothing, Lost::Update, Lost::Delete]
            .into_iter()
            .flat_map(|lost| {
                [false, true].map(|observed_later| Story {
                    lost,
                    observed_later,
                })
            })
            .collect();
        let mut bases = vec![None];
        for origin in ["A", "B"] {
            for stored in [false, true] {
                bases.push(Some(Base {
                    content: 7,
                    origin,
                    stored,
                }));
            }
        }
        let mut cases = 0;
        for base in bases {
            for a in &stories {
                for b in &stories {
                    let (ra, pa, ca) = server(base, *a, "A", 1);
                    let (rb, pb, cb) = server(base, *b, "B", 2);
                    if ca == cb {
                        continue; // the two agree: nothing differs
                    }
                    cases += 1;
                    let fa = Found {
                        server: "A",
                        row: ra.as_ref(),
                        present: pa,
                        hash: ca,
                    };
                    let fb = Found {
                        server: "B",
                        row: rb.as_ref(),
                        present: pb,
                        hash: cb,
                    };
                    let a_to_b = send(&fa, &fb, GAP_MS);
                    let b_to_a = send(&fb, &fa, GAP_MS);
                    // An unobserved change to the shared version, or an unobserved insert.
                    let changed =
                        |s: &Story| base.is_some() && s.lost != Lost::Nothing && !s.observed_later;
                    let inserted =
                        |s: &Story| base.is_none() && s.lost == Lost::Update && !s.observed_later;
                    let what = format!(
                        "base {base:?}, A {a:?}, B {b:?}: A->B {a_to_b:?}, B->A {b_to_a:?}"
                    );
                    // A change on a side with no row for the document (an insert, or a
                    // version whose row was not stored) can only be told by time: kept unless
                    // the other side wrote the document after the stretch (the README's limit).
                    let rowless = |site: &str| base.is_some_and(|b| b.origin == site && !b.stored);
                    for (site, story, other, out, back) in
                        [("A", a, b, a_to_b, b_to_a), ("B", b, a, b_to_a, a_to_b)]
                    {
                        if inserted(story) || (changed(story) && rowless(site)) {
                            if other.observed_later {
                                assert_eq!(out, Send::Nothing, "{what}");
                            } else {
                                assert_eq!(out, Send::New, "{what}");
                                assert_ne!(back, Send::AsIs, "{what}");
                            }
                        } else if changed(story) {
                            assert_eq!(out, Send::New, "{what}");
                            assert_ne!(back, Send::AsIs, "{what}");
                        } else {
                            assert_ne!(out, Send::New, "{what}");
                        }
                    }
                    if ![a, b].iter().any(|s| changed(s) || inserted(s)) {
                        let (winner, loser) = if b.observed_later {
                            (b_to_a, a_to_b)
                        } else {
                            (a_to_b, b_to_a)
                        };
                        assert_eq!((winner, loser), (Send::AsIs, Send::Nothing), "{what}");
                    }
                }
            }
        }
        assert!(cases > 100, "{cases}");
    }

    #[test]
    fn what_a_side_did_is_read_from_its_row_and_content() {
        let live = row(5, "a", false, Some(42));
        let tomb = row(5, "a", true, None);
        let unhashed = row(5, "a", false, None);
        let f = |row, present, hash| {
            Found {
                server: "a",
                row,
                present,
                hash,
            }
            .change()
        };
        assert_eq!(f(Some(&live), true, Some(42)), Change::Unchanged);
        assert_eq!(f(Some(&live), true, Some(43)), Change::Changed);
        assert_eq!(f(Some(&live), false, None), Change::Changed);
        assert_eq!(f(Some(&tomb), false, None), Change::Unchanged);
        assert_eq!(f(Some(&tomb), true, Some(1)), Change::Changed);
        assert_eq!(f(Some(&unhashed), true, Some(1)), Change::Unknown);
        assert_eq!(f(None, true, Some(1)), Change::Unknown);
        // Unknown falls back to time: new unless the destination's version is recent.
        let old = row(GAP_MS / 2, "b", false, Some(9));
        let recent = row(GAP_MS * 2, "b", false, Some(9));
        let unknown = Found {
            server: "a",
            row: None,
            present: true,
            hash: Some(1),
        };
        let dst = |r| Found {
            server: "b",
            row: Some(r),
            present: true,
            hash: Some(9),
        };
        assert_eq!(send(&unknown, &dst(&old), GAP_MS), Send::New);
        assert_eq!(send(&unknown, &dst(&recent), GAP_MS), Send::Nothing);
        // Absent with no row (observation had not stored it): deleted when the destination's
        // version came from the source, left alone otherwise, however old.
        let gone = Found {
            server: "a",
            row: None,
            present: false,
            hash: None,
        };
        let from_source = row(GAP_MS * 2, "a", false, Some(9));
        assert_eq!(send(&gone, &dst(&from_source), GAP_MS), Send::New);
        assert_eq!(send(&gone, &dst(&old), GAP_MS), Send::Nothing);
        assert_eq!(send(&gone, &dst(&recent), GAP_MS), Send::Nothing);
        let unrowed = Found {
            server: "b",
            row: None,
            present: true,
            hash: Some(9),
        };
        assert_eq!(send(&gone, &unrowed, GAP_MS), Send::Nothing);
    }
}
