//! What a server does with a version that arrives for a document: the decision of every
//! conflict policy. Pure logic; `model.rs` checks convergence over many random histories.
//!
//! Inputs: the stamp of the version held here (`None` when the document has no metadata: it
//! was never written since replication began, so nothing here can have been missed by the
//! writer), the arriving version's stamp and its writer's knowledge.
//!
//! - Arriving stamp equal to ours, or older from the same site: already here (`Duplicate`).
//! - The writer had seen our version: it was made on top of it, so the change applies as it
//!   came (`FastForward`). This is exact because delivery is causal (see `mod.rs`).
//! - Otherwise the two versions are concurrent: a `Conflict`, and the policy picks a
//!   [`Winner`].
//!
//! Why the policies converge:
//! - `Lww`: the larger stamp wins, a join (see `mod.rs`).
//! - `deletes=` rules, `Prefer` and `Resolver` pick something LWW would not. Decided pairwise
//!   that could cycle across three servers (a beats b by rule, b beats c by stamp, c beats a by
//!   causality), so instead the deciding server writes a new version (`Rewrite`) with a fresh
//!   stamp above both: it is later than everything its writer saw, so it wins by plain LWW
//!   everywhere. `Prefer` and `Resolver` rewrite only on their arbiter (others keep the LWW
//!   result until the arbiter's version arrives), so a resolver runs once per conflict. The
//!   `deletes=` rule rewrites on every server that sees the conflict, with equal content (the
//!   tombstone, or the surviving version); two such rewrites are both deletes or both live,
//!   so the rule no longer applies between them and plain stamps decide: the exchange ends.
//!   Where a rewrite would write content equal to what it meets ([`settle_equal`], `Prefer`
//!   meeting an equal version) nothing new is written either.
//! - A rewrite is sent with what its server had seen, including the version it overruled (the
//!   batch's `seen` in its checkpoint), so where it arrives it is a fast-forward, not a new
//!   conflict.
//! - `Resolver` sees the conflicts its arbiter meets. Where two other servers' versions meet
//!   first at a server that is not the arbiter (a star whose arbiter is a leaf), they are
//!   decided there by stamp and only the winner reaches the arbiter: put the arbiter where
//!   every path passes (the hub of a star, the middle of a chain, either side of a pair).

use super::stamp::{server_of, Knowledge, Stamp};
use std::collections::BTreeMap;
use std::fmt;

/// What a delete meets in a conflict with an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Deletes {
    /// Like any other write: the later one wins.
    #[default]
    Lww,
    DeleteWins,
    UpdateWins,
}

impl Deletes {
    pub fn parse(s: &str) -> Option<Deletes> {
        match s {
            "lww" => Some(Deletes::Lww),
            "delete_wins" => Some(Deletes::DeleteWins),
            "update_wins" => Some(Deletes::UpdateWins),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Deletes::Lww => "lww",
            Deletes::DeleteWins => "delete_wins",
            Deletes::UpdateWins => "update_wins",
        }
    }
}

/// A namespace's conflict policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Detection only: the incoming change is applied as it came and the conflict journaled
    /// (servers may stay different).
    Detect,
    /// The version with the larger stamp wins, whole document.
    Lww { deletes: Deletes },
    /// The named server's version wins concurrent conflicts; that server arbitrates.
    Prefer { site: String, deletes: Deletes },
    /// A function decides, once, on the arbiter.
    Resolver { arbiter: String, deletes: Deletes },
    /// The later write wins per top-level field (`fields.rs`); a delete met by a concurrent
    /// live version ends as `deletes` says (`fields::delete_rule_wants`).
    Fields { deletes: Deletes },
}

impl Policy {
    /// A policy from its parts: kind (`lww`, `prefer`, `fields`, `resolver`, `none`), the
    /// server it names (prefer, resolver) and the delete rule.
    pub fn from_parts(kind: &str, site: &str, deletes: &str) -> Result<Policy, String> {
        let deletes = Deletes::parse(deletes).ok_or_else(|| {
            format!("deletes is lww, delete_wins or update_wins, got {deletes:?}")
        })?;
        let site = || -> Result<String, String> {
            if site.is_empty() {
                Err(format!("policy {kind:?} needs a server"))
            } else {
                Ok(site.to_string())
            }
        };
        Ok(match kind {
            "none" => Policy::Detect,
            "lww" => Policy::Lww { deletes },
            "fields" => Policy::Fields { deletes },
            "prefer" => Policy::Prefer {
                site: site()?,
                deletes,
            },
            "resolver" => Policy::Resolver {
                arbiter: site()?,
                deletes,
            },
            other => return Err(format!("unknown conflict policy {other:?}")),
        })
    }

    pub fn deletes(&self) -> Deletes {
        match self {
            Policy::Detect => Deletes::Lww,
            Policy::Lww { deletes }
            | Policy::Fields { deletes }
            | Policy::Prefer { deletes, .. }
            | Policy::Resolver { deletes, .. } => *deletes,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let deletes = |f: &mut fmt::Formatter<'_>, d: Deletes| match d {
            Deletes::Lww => Ok(()),
            d => write!(f, ",deletes={}", d.name()),
        };
        match self {
            Policy::Detect => f.write_str("none"),
            Policy::Lww { deletes: d } => {
                f.write_str("lww")?;
                deletes(f, *d)
            }
            Policy::Fields { deletes: d } => {
                f.write_str("fields")?;
                deletes(f, *d)
            }
            Policy::Prefer { site, deletes: d } => {
                write!(f, "prefer:{site}")?;
                deletes(f, *d)
            }
            Policy::Resolver {
                arbiter,
                deletes: d,
            } => {
                write!(f, "resolver@{arbiter}")?;
                deletes(f, *d)
            }
        }
    }
}

/// Policies by namespace pattern: `db.coll`, `db.*` or `*`; the most specific one wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyMap {
    patterns: BTreeMap<String, Policy>,
}

impl Default for PolicyMap {
    fn default() -> Self {
        PolicyMap::uniform(Policy::Lww {
            deletes: Deletes::Lww,
        })
    }
}

impl PolicyMap {
    pub fn uniform(policy: Policy) -> PolicyMap {
        let mut patterns = BTreeMap::new();
        patterns.insert("*".to_string(), policy);
        PolicyMap { patterns }
    }

    /// Checks each pattern's shape. Namespaces without a pattern that matches get `lww`.
    pub fn new(patterns: BTreeMap<String, Policy>) -> Result<PolicyMap, String> {
        for p in patterns.keys() {
            let ok = p == "*"
                || match p.split_once('.') {
                    Some((db, coll)) => {
                        !db.is_empty()
                            && !db.contains('*')
                            && !coll.is_empty()
                            && (coll == "*" || !coll.contains('*'))
                    }
                    None => false,
                };
            if !ok {
                return Err(format!(
                    "resolve pattern {p:?}: expected \"db.collection\", \"db.*\" or \"*\""
                ));
            }
        }
        Ok(PolicyMap { patterns })
    }

    /// The pattern that decides for `ns`, if any.
    pub fn pattern_for(&self, ns: &str) -> Option<&str> {
        let db = ns.split_once('.').map_or(ns, |(db, _)| db);
        if let Some((k, _)) = self.patterns.get_key_value(ns) {
            return Some(k.as_str());
        }
        if let Some((k, _)) = self.patterns.get_key_value(&format!("{db}.*")) {
            return Some(k.as_str());
        }
        self.patterns.get_key_value("*").map(|(k, _)| k.as_str())
    }

    pub fn for_namespace(&self, ns: &str) -> Policy {
        self.pattern_for(ns)
            .and_then(|p| self.patterns.get(p))
            .cloned()
            .unwrap_or(Policy::Lww {
                deletes: Deletes::Lww,
            })
    }

    /// Whether `ns` is under the `fields` policy (its rows carry field stamps).
    pub fn is_fields(&self, ns: &str) -> bool {
        matches!(self.for_namespace(ns), Policy::Fields { .. })
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Policy)> {
        self.patterns.iter()
    }
}

/// The version of a document this server holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// `None`: no metadata (never written since replication began).
    pub stamp: Option<Stamp>,
    pub deleted: bool,
}

/// A version arriving from a link.
#[derive(Debug, Clone, Copy)]
pub struct Arriving<'a> {
    pub stamp: &'a Stamp,
    /// What its writer had seen when it made it.
    pub know: &'a Knowledge,
    pub deleted: bool,
}

/// Which content a rewrite writes again, under a fresh stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Ours,
    Theirs,
    /// The resolver function's result.
    Custom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner {
    /// Our version stays.
    Ours,
    /// The arriving version replaces ours, whole (its content is fetched if the change is a
    /// diff made on another base).
    Theirs,
    /// A new version is written here with a fresh stamp.
    Rewrite(Side),
    /// Detection only: apply the change as it came.
    AsIs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Already here, or an older version from the same writer.
    Duplicate,
    /// Made on top of our version: apply as it came.
    FastForward,
    /// Concurrent with our version.
    Conflict(Winner),
}

fn by_stamp(ours: &Stamp, theirs: &Stamp) -> Winner {
    if theirs > ours {
        Winner::Theirs
    } else {
        Winner::Ours
    }
}

/// The winner LWW gives, corrected by the delete rule when exactly one side is deleted.
fn with_delete_rule(ours: &Stamp, held_deleted: bool, theirs: &Arriving, rule: Deletes) -> Winner {
    let lww = by_stamp(ours, theirs.stamp);
    if held_deleted == theirs.deleted || rule == Deletes::Lww {
        return lww;
    }
    let ours_deleted = held_deleted;
    let want = match (rule, ours_deleted) {
        (Deletes::DeleteWins, true) | (Deletes::UpdateWins, false) => Winner::Ours,
        _ => Winner::Theirs,
    };
    if want == lww {
        lww
    } else {
        Winner::Rewrite(if want == Winner::Ours {
            Side::Ours
        } else {
            Side::Theirs
        })
    }
}

/// The decision of server `here` for an arriving version of a document it holds as `held`.
pub fn decide(policy: &Policy, here: &str, held: &Held, theirs: &Arriving) -> Decision {
    let Some(ours) = &held.stamp else {
        return Decision::FastForward;
    };
    if theirs.stamp == ours || (theirs.stamp.site == ours.site && theirs.stamp < ours) {
        return Decision::Duplicate;
    }
    if theirs.know.covers(ours) {
        // Its writer saw our version, so its clock was past ours: a later version.
        return if theirs.stamp > ours {
            Decision::FastForward
        } else {
            Decision::Duplicate
        };
    }
    let delete_rule_applies = held.deleted != theirs.deleted && policy.deletes() != Deletes::Lww;
    let winner = match policy {
        Policy::Detect => Winner::AsIs,
        Policy::Lww { deletes } => with_delete_rule(ours, held.deleted, theirs, *deletes),
        // Only whether the versions were concurrent matters: the apply merges (`fields.rs`).
        Policy::Fields { .. } => by_stamp(ours, theirs.stamp),
        _ if delete_rule_applies => with_delete_rule(ours, held.deleted, theirs, policy.deletes()),
        Policy::Prefer { site, .. } => {
            let lww = by_stamp(ours, theirs.stamp);
            let arbiter = server_of(here) == site;
            let ours_preferred = server_of(&ours.site) == site;
            let theirs_preferred = server_of(&theirs.stamp.site) == site;
            if arbiter && lww == Winner::Theirs && ours_preferred && !theirs_preferred {
                Winner::Rewrite(Side::Ours)
            } else {
                lww
            }
        }
        Policy::Resolver { arbiter, .. } => {
            if server_of(here) == arbiter {
                Winner::Rewrite(Side::Custom)
            } else {
                by_stamp(ours, theirs.stamp)
            }
        }
    };
    Decision::Conflict(winner)
}

/// A rewrite between versions of equal content writes nothing new: the larger stamp is kept,
/// as LWW would. This is what ends an exchange of rewrites (see the module comment).
pub fn settle_equal(decision: Decision, ours: &Stamp, theirs: &Stamp) -> Decision {
    match decision {
        Decision::Conflict(Winner::Rewrite(Side::Ours | Side::Theirs)) => {
            Decision::Conflict(by_stamp(ours, theirs))
        }
        d => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_is_parsed_with_every_delete_rule_and_named_back() {
        let p = Policy::from_parts("fields", "", "lww").unwrap();
        assert_eq!(
            p,
            Policy::Fields {
                deletes: Deletes::Lww
            }
        );
        assert_eq!(p.to_string(), "fields");
        for d in [Deletes::DeleteWins, Deletes::UpdateWins] {
            let p = Policy::from_parts("fields", "", d.name()).unwrap();
            assert_eq!(p, Policy::Fields { deletes: d });
            assert_eq!(p.to_string(), format!("fields,deletes={}", d.name()));
        }
        let mut m = BTreeMap::new();
        m.insert("db.*".to_string(), p);
        m.insert(
            "db.plain".to_string(),
            Policy::Lww {
                deletes: Deletes::Lww,
            },
        );
        let m = PolicyMap::new(m).unwrap();
        assert!(m.is_fields("db.c") && !m.is_fields("db.plain") && !m.is_fields("other.c"));
    }

    fn lww() -> Policy {
        Policy::Lww {
            deletes: Deletes::Lww,
        }
    }

    fn held(h: i64, site: &str, deleted: bool) -> Held {
        Held {
            stamp: Some(Stamp::new(h, site)),
            deleted,
        }
    }

    fn know(pairs: &[(&str, i64)]) -> Knowledge {
        Knowledge(pairs.iter().map(|(s, h)| (s.to_string(), *h)).collect())
    }

    fn arrive<'a>(s: &'a Stamp, k: &'a Knowledge, deleted: bool) -> Arriving<'a> {
        Arriving {
            stamp: s,
            know: k,
            deleted,
        }
    }

    #[test]
    fn a_version_made_on_top_of_ours_applies_and_repeats_are_duplicates() {
        let ours = held(10, "a", false);
        let k = know(&[("a", 10)]);
        let s = Stamp::new(20, "b");
        assert_eq!(
            decide(&lww(), "a", &ours, &arrive(&s, &k, false)),
            Decision::FastForward
        );
        let same = Stamp::new(10, "a");
        assert_eq!(
            decide(&lww(), "a", &ours, &arrive(&same, &k, false)),
            Decision::Duplicate
        );
        // An older version of the same writer (superseded by a state we installed).
        let older = Stamp::new(5, "a");
        let none = Knowledge::default();
        assert_eq!(
            decide(&lww(), "b", &ours, &arrive(&older, &none, false)),
            Decision::Duplicate
        );
        // No metadata here: nothing the writer could have missed.
        let fresh = Held {
            stamp: None,
            deleted: false,
        };
        assert_eq!(
            decide(&lww(), "a", &fresh, &arrive(&s, &none, false)),
            Decision::FastForward
        );
    }

    #[test]
    fn concurrent_versions_go_to_the_larger_stamp() {
        let ours = held(10, "a", false);
        let k = Knowledge::default();
        let later = Stamp::new(20, "b");
        let earlier = Stamp::new(5, "b");
        let tie = Stamp::new(10, "b");
        let d = |s: &Stamp| decide(&lww(), "a", &ours, &arrive(s, &k, false));
        assert_eq!(d(&later), Decision::Conflict(Winner::Theirs));
        assert_eq!(d(&earlier), Decision::Conflict(Winner::Ours));
        // Equal clocks: the site id decides, the same way on both servers.
        assert_eq!(d(&tie), Decision::Conflict(Winner::Theirs));
        let theirs_view = held(10, "b", false);
        let ours_stamp = Stamp::new(10, "a");
        assert_eq!(
            decide(&lww(), "b", &theirs_view, &arrive(&ours_stamp, &k, false)),
            Decision::Conflict(Winner::Ours)
        );
    }

    #[test]
    fn delete_rules_rewrite_only_where_they_overrule_the_stamps() {
        let k = Knowledge::default();
        let dw = Policy::Lww {
            deletes: Deletes::DeleteWins,
        };
        let uw = Policy::Lww {
            deletes: Deletes::UpdateWins,
        };
        let upd = Stamp::new(20, "b");
        // We deleted (10), they updated later (20).
        let ours = held(10, "a", true);
        assert_eq!(
            decide(&dw, "a", &ours, &arrive(&upd, &k, false)),
            Decision::Conflict(Winner::Rewrite(Side::Ours))
        );
        assert_eq!(
            decide(&uw, "a", &ours, &arrive(&upd, &k, false)),
            Decision::Conflict(Winner::Theirs)
        );
        // They deleted (20), we updated earlier (10).
        let ours = held(10, "a", false);
        assert_eq!(
            decide(&dw, "a", &ours, &arrive(&upd, &k, true)),
            Decision::Conflict(Winner::Theirs)
        );
        assert_eq!(
            decide(&uw, "a", &ours, &arrive(&upd, &k, true)),
            Decision::Conflict(Winner::Rewrite(Side::Ours))
        );
        // Both deleted: stamps decide.
        let ours = held(10, "a", true);
        assert_eq!(
            decide(&dw, "a", &ours, &arrive(&upd, &k, true)),
            Decision::Conflict(Winner::Theirs)
        );
    }

    #[test]
    fn prefer_rewrites_on_the_preferred_server_only() {
        let k = Knowledge::default();
        let p = Policy::Prefer {
            site: "cloud".into(),
            deletes: Deletes::Lww,
        };
        let factory_later = Stamp::new(20, "factory");
        let cloud_held = held(10, "cloud", false);
        assert_eq!(
            decide(&p, "cloud", &cloud_held, &arrive(&factory_later, &k, false)),
            Decision::Conflict(Winner::Rewrite(Side::Ours))
        );
        // The factory keeps its later version until the cloud's rewrite arrives.
        let factory_held = held(20, "factory", false);
        let cloud_earlier = Stamp::new(10, "cloud");
        assert_eq!(
            decide(
                &p,
                "factory",
                &factory_held,
                &arrive(&cloud_earlier, &k, false)
            ),
            Decision::Conflict(Winner::Ours)
        );
        // The cloud's version is the later one anyway: no rewrite.
        let factory_earlier = Stamp::new(5, "factory");
        assert_eq!(
            decide(
                &p,
                "cloud",
                &cloud_held,
                &arrive(&factory_earlier, &k, false)
            ),
            Decision::Conflict(Winner::Ours)
        );
        // Equal content needs no rewrite.
        let d = decide(&p, "cloud", &cloud_held, &arrive(&factory_later, &k, false));
        assert_eq!(
            settle_equal(d, &Stamp::new(10, "cloud"), &factory_later),
            Decision::Conflict(Winner::Theirs)
        );
    }

    #[test]
    fn resolvers_run_on_their_arbiter() {
        let k = Knowledge::default();
        let r = Policy::Resolver {
            arbiter: "cloud".into(),
            deletes: Deletes::Lww,
        };
        let s = Stamp::new(20, "factory");
        assert_eq!(
            decide(
                &r,
                "cloud",
                &held(10, "cloud", false),
                &arrive(&s, &k, false)
            ),
            Decision::Conflict(Winner::Rewrite(Side::Custom))
        );
        assert_eq!(
            decide(
                &r,
                "factory#r",
                &held(10, "cloud", false),
                &arrive(&s, &k, false)
            ),
            Decision::Conflict(Winner::Theirs)
        );
        assert_eq!(
            decide(
                &Policy::Detect,
                "a",
                &held(30, "a", false),
                &arrive(&s, &k, false)
            ),
            Decision::Conflict(Winner::AsIs)
        );
    }

    #[test]
    fn the_most_specific_pattern_wins() {
        let mut m = BTreeMap::new();
        m.insert("*".to_string(), Policy::Detect);
        m.insert("plant.*".to_string(), lww());
        m.insert(
            "plant.recipes".to_string(),
            Policy::Prefer {
                site: "cloud".into(),
                deletes: Deletes::Lww,
            },
        );
        let m = PolicyMap::new(m).unwrap();
        assert_eq!(
            m.for_namespace("plant.recipes"),
            Policy::Prefer {
                site: "cloud".into(),
                deletes: Deletes::Lww
            }
        );
        assert_eq!(m.for_namespace("plant.other"), lww());
        assert_eq!(m.for_namespace("web.x"), Policy::Detect);
        assert_eq!(PolicyMap::default().for_namespace("a.b"), lww());
        for bad in ["", "db", "*.x", "db.*x", ".x", "db."] {
            let mut m = BTreeMap::new();
            m.insert(bad.to_string(), lww());
            assert!(PolicyMap::new(m).is_err(), "{bad:?}");
        }
    }
}
