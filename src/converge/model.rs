//! A deterministic model of convergence: many short random histories, each run with the real
//! rules of this module ([`decide`], [`settle_equal`], [`tick`], [`witness`], [`Knowledge`],
//! [`resolution_site`]) and checked once every link has drained.
//!
//! The model, kept as small as the argument in `mod.rs` needs:
//! - servers ("sites") joined as a tree: a pair, a chain of three, or a star (a hub and three
//!   leaves); every link is two FIFO, exactly-once queues that a cut stops for a while;
//! - each site has a wall clock of its own (small skews, one site hours ahead, one whose clock
//!   steps back during the history), a hybrid clock `h` and what it has seen ([`Knowledge`]);
//! - a document is a small map of fields or deleted; local writes set or unset a field (a diff
//!   that applies to whatever base it meets), replace the whole document, insert or delete;
//! - a site keeps per document the version it holds; an arriving version is decided by
//!   [`decide`] (after [`settle_equal`] when both contents are equal) and then: `FastForward`
//!   applies the change as it came; `Theirs` installs the version whole (its post-image travels
//!   with it, as the real link fetches it); `Rewrite` writes a new version under
//!   [`resolution_site`]; what a site installs or rewrites goes on to its other neighbours, what it
//!   discards does not.
//!
//! Beside the sites, the model keeps what no site can know: every version ever made, its content,
//! and its exact causal past (every version of the document its writer's site had held before,
//! transitively). After each history, for every policy that claims to converge:
//! - **convergence**: every site holds the same version (stamp) with the same content;
//! - **a join over stamps**: that version is the one with the largest stamp ever made for the
//!   document, so a delete that is the latest write stays (no resurrection), and no site ever
//!   replaces its version by an older one (no stale update installed over a tombstone);
//! - **causality**: a new version (local write or rewrite) has a stamp above every version its
//!   site held before;
//! - **exact decisions**: `FastForward` only when the arriving version's writer had held ours,
//!   and a diff then gives exactly the content its writer made; `Duplicate` only when we had
//!   held theirs; `Conflict` only between truly concurrent versions. One exception is counted,
//!   not failed: a rewrite carries its own server's knowledge, which misses the version it
//!   resolved, so that version's server takes the rewrite for a concurrent one; the rewrite must
//!   still win there (see
//!   `a_rewrite_that_records_what_it_resolved_makes_every_decision_exact`);
//! - **journal completeness**: every version the final one never saw met a `Conflict` at some
//!   site, itself or through a version made on top of it;
//! - **each policy's promise**: a delete rule decides every delete-against-update conflict where
//!   it is met; under `Prefer` a version of the preferred server is lost only once a version made
//!   on top of it exists (or after it met an equal version, counted apart); under `Resolver` with
//!   an arbiter on every path, every lost version met the resolver; plain LWW never rewrites;
//! - **termination**: once writes stop and links are restored, the links drain.
//!
//! Under detection only (`Policy::Detect`) some history must diverge: the checker can fail.
//! A failure prints the seed, the policy and a trace of the document concerned;
//! `MMM_MODEL_SEED=n` replays one seed, `MMM_MODEL_HISTORIES=n` runs more.

use super::policy::{
    decide, settle_equal, Arriving, Decision, Deletes, Held, Policy, Side, Winner,
};
use super::stamp::{resolution_site, server_of, tick, witness, Knowledge, Stamp, COUNTER_BITS};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

/// Wall time at the start of every history (ms).
pub(super) const T0: i64 = 1_700_000_000_000;
const HOUR_MS: i64 = 3_600_000;

/// splitmix64: small, seedable, the same on every platform.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub(super) fn pick(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    pub(super) fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// A set of version numbers.
#[derive(Clone, Default, Debug)]
pub(super) struct Bits(Vec<u64>);

impl Bits {
    pub(super) fn insert(&mut self, i: usize) {
        if self.0.len() <= i / 64 {
            self.0.resize(i / 64 + 1, 0);
        }
        self.0[i / 64] |= 1 << (i % 64);
    }

    pub(super) fn has(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| (w >> (i % 64)) & 1 == 1)
    }

    pub(super) fn union(&mut self, other: &Bits) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
}

pub(super) type Fields = BTreeMap<u8, i64>;
/// `None`: deleted (or never inserted).
pub(super) type Content = Option<Fields>;

/// A change as a link carries it.
#[derive(Clone, Debug)]
enum Change {
    /// `$set` of one field: a diff, applied to whatever base it meets.
    Set(u8, i64),
    /// `$unset` of one field.
    Unset(u8),
    Replace(Fields),
    Insert(Fields),
    Delete,
    /// A whole state: how installed-by-conflict versions and rewrites travel on.
    State(Content),
}

/// What a change makes of a base, as a server applying it would: updates and replacements match
/// nothing on a deleted document, an insert fails on an existing one.
fn apply(base: &Content, change: &Change) -> Content {
    match (base, change) {
        (Some(b), Change::Set(f, v)) => {
            let mut b = b.clone();
            b.insert(*f, *v);
            Some(b)
        }
        (Some(b), Change::Unset(f)) => {
            let mut b = b.clone();
            b.remove(f);
            Some(b)
        }
        (Some(_), Change::Replace(d)) => Some(d.clone()),
        (None, Change::Set(..) | Change::Unset(_) | Change::Replace(_)) => None,
        (None, Change::Insert(d)) => Some(d.clone()),
        (Some(b), Change::Insert(_)) => Some(b.clone()),
        (_, Change::Delete) => None,
        (_, Change::State(c)) => c.clone(),
    }
}

/// The resolver function of the model: every field of both, the larger value on a clash; a
/// delete loses to an update.
fn resolve(ours: &Content, theirs: &Content) -> Content {
    match (ours, theirs) {
        (None, None) => None,
        (Some(a), None) | (None, Some(a)) => Some(a.clone()),
        (Some(a), Some(b)) => {
            let mut m = a.clone();
            for (k, v) in b {
                let e = m.entry(*k).or_insert(*v);
                *e = (*e).max(*v);
            }
            Some(m)
        }
    }
}

pub(super) fn show_stamp(s: &Stamp) -> String {
    format!(
        "{}.{}@{}",
        (s.h >> COUNTER_BITS) - T0,
        s.h & ((1 << COUNTER_BITS) - 1),
        s.site
    )
}

fn show_content(c: &Content) -> String {
    match c {
        None => "deleted".into(),
        Some(d) => {
            let fields: Vec<String> = d.iter().map(|(k, v)| format!("f{k}:{v}")).collect();
            format!("{{{}}}", fields.join(","))
        }
    }
}

/// Every version ever made: the truth the checks compare the sites with.
struct Version {
    doc: usize,
    stamp: Stamp,
    content: Content,
    /// Every version of the document its writer's site had held before making it, transitively:
    /// the exact causal past, which [`Knowledge`] approximates per site.
    past: Bits,
    /// Met in a conflict somewhere (as ours or theirs): journaled there.
    journaled: bool,
    /// Given to the resolver function.
    resolved: bool,
    /// Met a version of equal content in a conflict that [`settle_equal`] decided.
    settled: bool,
}

/// A site's copy of one document.
#[derive(Clone)]
struct Copy {
    content: Content,
    /// The version held; `None`: no metadata, the document as it was before replication began.
    ver: Option<usize>,
    /// Every version of the document this site has held, and their pasts.
    known: Bits,
}

struct Site {
    name: String,
    /// Wall clock = real time + offset, minus `back.1` from real time `back.0` on.
    offset: i64,
    back: Option<(i64, i64)>,
    h: i64,
    know: Knowledge,
    docs: Vec<Copy>,
    /// The largest stamp this site has ever held, for the causality check.
    max_held: Option<Stamp>,
}

#[derive(Clone)]
struct Msg {
    ver: usize,
    /// What the version's writer had seen.
    know: Rc<Knowledge>,
    change: Change,
}

struct Link {
    from: usize,
    to: usize,
    edge: usize,
    queue: VecDeque<Msg>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    histories: u64,
    writes: u64,
    deliveries: u64,
    conflicts: u64,
    rewrites: [u64; 3],
    settled: u64,
    lost: u64,
    /// Under `Resolver`: concurrent versions that lost without the resolver seeing them (a
    /// conflict decided by stamps on a server that is not the arbiter).
    lost_unresolved: u64,
    max_drain: u64,
    /// Conflicts between versions one of which had seen the other.
    false_conflicts: u64,
    /// Under `Prefer`: versions of the preferred server lost after meeting a version of equal
    /// content from another server (see the check in `check_final`).
    prefer_settled_lost: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.histories += o.histories;
        self.writes += o.writes;
        self.deliveries += o.deliveries;
        self.conflicts += o.conflicts;
        for i in 0..3 {
            self.rewrites[i] += o.rewrites[i];
        }
        self.settled += o.settled;
        self.lost += o.lost;
        self.lost_unresolved += o.lost_unresolved;
        self.max_drain = self.max_drain.max(o.max_drain);
        self.prefer_settled_lost += o.prefer_settled_lost;
        self.false_conflicts += o.false_conflicts;
    }
}

#[derive(Debug)]
struct Fail {
    doc: Option<usize>,
    what: String,
}

fn fail<T>(doc: Option<usize>, what: String) -> Result<T, Fail> {
    Err(Fail { doc, what })
}

/// A rule deliberately broken, to show that the checks catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mutant {
    None,
    /// Arriving versions are all taken as concurrent (knowledge ignored).
    NoKnowledge,
    /// Installed versions do not move the clock.
    NoWitness,
    /// Conflicts installed whole are not passed on by a hub.
    NoForwardTheirs,
}

/// What one seed fixes for every policy it runs: the topology, the clocks, the documents.
pub(super) struct Setup {
    pub(super) seed: u64,
    pub(super) topology: &'static str,
    pub(super) names: Vec<String>,
    pub(super) edges: Vec<(usize, usize)>,
    pub(super) offsets: Vec<i64>,
    pub(super) backs: Vec<Option<(i64, i64)>>,
    pub(super) initial: Vec<Content>,
    policies: Vec<Policy>,
}

impl Setup {
    pub(super) fn new(seed: u64) -> Setup {
        let mut rng = Rng::new(seed ^ 0x5E7_0F);
        let (topology, n, edges) = match seed % 3 {
            0 => ("pair", 2, vec![(0, 1)]),
            1 => ("chain", 3, vec![(0, 1), (1, 2)]),
            _ => ("star", 4, vec![(1, 0), (1, 2), (1, 3)]),
        };
        let names: Vec<String> = ["a", "b", "c", "d"][..n]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut offsets: Vec<i64> = (0..n).map(|_| rng.below(101) as i64 - 50).collect();
        let mut backs = vec![None; n];
        if rng.pct(75) {
            offsets[rng.pick(n)] += 3 * HOUR_MS;
        }
        if rng.pct(75) {
            let by = match rng.below(3) {
                0 => 1 + rng.below(20) as i64,
                1 => 1_000,
                _ => HOUR_MS,
            };
            backs[rng.pick(n)] = Some((T0 + rng.below(300) as i64, by));
        }
        let docs = 10 + rng.pick(41);
        let initial = (0..docs)
            .map(|_| rng.pct(50).then(|| random_fields(&mut rng)))
            .collect();
        let prefer = names[rng.pick(n)].clone();
        let arbiter = names[rng.pick(n)].clone();
        let policies = vec![
            Policy::Lww {
                deletes: Deletes::Lww,
            },
            Policy::Lww {
                deletes: Deletes::DeleteWins,
            },
            Policy::Lww {
                deletes: Deletes::UpdateWins,
            },
            Policy::Prefer {
                site: prefer.clone(),
                deletes: Deletes::Lww,
            },
            Policy::Prefer {
                site: prefer.clone(),
                deletes: Deletes::DeleteWins,
            },
            Policy::Resolver {
                arbiter: arbiter.clone(),
                deletes: Deletes::Lww,
            },
            Policy::Resolver {
                arbiter,
                deletes: Deletes::UpdateWins,
            },
            Policy::Detect,
        ];
        Setup {
            seed,
            topology,
            names,
            edges,
            offsets,
            backs,
            initial,
            policies,
        }
    }

    pub(super) fn describe(&self) -> String {
        let sites: Vec<String> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut d = format!("{s}: clock {:+}ms", self.offsets[i]);
                if let Some((at, by)) = self.backs[i] {
                    d += &format!(", steps back {by}ms at t={}", at - T0);
                }
                d
            })
            .collect();
        let edges: Vec<String> = self
            .edges
            .iter()
            .map(|(a, b)| format!("{}-{}", self.names[*a], self.names[*b]))
            .collect();
        format!(
            "{} [{}], {} documents; {}",
            self.topology,
            edges.join(" "),
            self.initial.len(),
            sites.join("; ")
        )
    }
}

pub(super) fn random_fields(rng: &mut Rng) -> Fields {
    (0..1 + rng.below(3))
        .map(|_| (rng.below(4) as u8, rng.below(10) as i64))
        .collect()
}

struct Sim<'a> {
    policy: &'a Policy,
    /// Everything but convergence is checked only when the policy claims to converge.
    checks: bool,
    mutant: Mutant,
    /// Whether a rewrite records the version it resolved as seen, in its knowledge.
    sees_resolved: bool,
    /// `Resolver` with an arbiter on the path between every two sites (a pair, the middle of a
    /// chain, the hub of a star): every concurrent version then meets the resolver.
    resolver_central: bool,
    sites: Vec<Site>,
    links: Vec<Link>,
    cut: Vec<bool>,
    versions: Vec<Version>,
    /// Versions per document.
    by_doc: Vec<Vec<usize>>,
    now: i64,
    trace: Option<Vec<(Option<usize>, String)>>,
    stats: Stats,
}

impl<'a> Sim<'a> {
    fn new(
        setup: &Setup,
        policy: &'a Policy,
        mutant: Mutant,
        sees_resolved: bool,
        traced: bool,
    ) -> Sim<'a> {
        let docs: Vec<Copy> = setup
            .initial
            .iter()
            .map(|c| Copy {
                content: c.clone(),
                ver: None,
                known: Bits::default(),
            })
            .collect();
        let sites = setup
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| Site {
                name: name.clone(),
                offset: setup.offsets[i],
                back: setup.backs[i],
                // The clock starts from the site's newest oplog entry, made a little earlier.
                h: super::stamp::initial(T0 + setup.offsets[i] - 1_000),
                know: Knowledge::default(),
                docs: docs.clone(),
                max_held: None,
            })
            .collect();
        let mut links = Vec::new();
        for (e, (a, b)) in setup.edges.iter().enumerate() {
            for (from, to) in [(*a, *b), (*b, *a)] {
                links.push(Link {
                    from,
                    to,
                    edge: e,
                    queue: VecDeque::new(),
                });
            }
        }
        Sim {
            policy,
            checks: *policy != Policy::Detect,
            mutant,
            sees_resolved,
            resolver_central: match policy {
                Policy::Resolver { arbiter, .. } => setup.edges.len() == 1 || arbiter == "b",
                _ => false,
            },
            sites,
            links,
            cut: vec![false; setup.edges.len()],
            versions: Vec::new(),
            by_doc: vec![Vec::new(); setup.initial.len()],
            now: T0,
            trace: traced.then(Vec::new),
            stats: Stats {
                histories: 1,
                ..Stats::default()
            },
        }
    }

    fn note(&mut self, doc: Option<usize>, line: impl FnOnce(&Sim) -> String) {
        if self.trace.is_some() {
            let l = format!("t={:<4} {}", self.now - T0, line(self));
            self.trace.as_mut().unwrap().push((doc, l));
        }
    }

    fn wall(&self, s: usize) -> i64 {
        let site = &self.sites[s];
        let mut w = self.now + site.offset;
        if let Some((at, by)) = site.back {
            if self.now >= at {
                w -= by;
            }
        }
        w
    }

    fn v(&self, ver: usize) -> String {
        show_stamp(&self.versions[ver].stamp)
    }

    fn held(&self, s: usize, doc: usize) -> String {
        let c = &self.sites[s].docs[doc];
        match c.ver {
            Some(v) => format!("{} {}", self.v(v), show_content(&c.content)),
            None => format!("(initial) {}", show_content(&c.content)),
        }
    }

    /// A new version made at site `s`, which held `known` before: checks that its stamp is
    /// larger than everything the site ever held (a write made after seeing a version never
    /// loses to it).
    fn new_version(
        &mut self,
        s: usize,
        doc: usize,
        stamp: Stamp,
        content: Content,
        past: Bits,
    ) -> Result<usize, Fail> {
        if let Some(m) = &self.sites[s].max_held {
            if self.checks && stamp <= *m {
                return fail(
                    Some(doc),
                    format!(
                        "causality: {} wrote {} after holding {}",
                        self.sites[s].name,
                        show_stamp(&stamp),
                        show_stamp(m)
                    ),
                );
            }
        }
        let ver = self.versions.len();
        self.versions.push(Version {
            doc,
            stamp,
            content,
            past,
            journaled: false,
            resolved: false,
            settled: false,
        });
        self.by_doc[doc].push(ver);
        Ok(ver)
    }

    /// Site `s` now holds version `ver` with `content`.
    fn hold(&mut self, s: usize, doc: usize, ver: usize, content: Content) -> Result<(), Fail> {
        let stamp = self.versions[ver].stamp.clone();
        let site = &self.sites[s];
        if let (true, Some(old)) = (self.checks, site.docs[doc].ver) {
            let old_stamp = &self.versions[old].stamp;
            if stamp <= *old_stamp {
                let what = if site.docs[doc].content.is_none() && content.is_some() {
                    "resurrection"
                } else {
                    "stale version"
                };
                return fail(
                    Some(doc),
                    format!(
                        "{what}: {} installed {} over the newer {}",
                        site.name,
                        show_stamp(&stamp),
                        show_stamp(old_stamp)
                    ),
                );
            }
        }
        let past = self.versions[ver].past.clone();
        let site = &mut self.sites[s];
        if self.mutant != Mutant::NoWitness {
            site.h = witness(site.h, stamp.h);
        }
        site.know.see(&stamp);
        let copy = &mut site.docs[doc];
        copy.content = content;
        copy.ver = Some(ver);
        copy.known.union(&past);
        copy.known.insert(ver);
        if site.max_held.as_ref().is_none_or(|m| stamp > *m) {
            site.max_held = Some(stamp);
        }
        Ok(())
    }

    fn send(&mut self, from: usize, except: Option<usize>, msg: Msg) {
        for l in &mut self.links {
            if l.from == from && Some(l.to) != except {
                l.queue.push_back(msg.clone());
            }
        }
    }

    /// An application writes document `doc` at site `s`.
    fn write(&mut self, s: usize, doc: usize, rng: &mut Rng) -> Result<(), Fail> {
        let copy = self.sites[s].docs[doc].clone();
        let change = match &copy.content {
            None => Change::Insert(random_fields(rng)),
            Some(cur) => match rng.below(10) {
                0..=4 => {
                    let f = rng.below(4) as u8;
                    let v = cur.get(&f).map_or(0, |v| v + 1 + rng.below(3) as i64);
                    Change::Set(f, v)
                }
                // Unsetting a missing field writes nothing to the oplog: unset a present one.
                5 if !cur.is_empty() => Change::Unset(*cur.keys().next().unwrap()),
                5..=7 => {
                    // A replacement that changes nothing writes nothing to the oplog.
                    let mut new = random_fields(rng);
                    if new == *cur {
                        new.insert(9, 0);
                    }
                    Change::Replace(new)
                }
                _ => Change::Delete,
            },
        };
        let content = apply(&copy.content, &change);
        let wall = self.wall(s);
        let h = tick(self.sites[s].h, wall);
        let stamp = Stamp::new(h, self.sites[s].name.clone());
        let ver = self.new_version(s, doc, stamp.clone(), content.clone(), copy.known)?;
        self.note(Some(doc), |m| {
            format!(
                "{} writes d{doc} {:?} on {} -> {} {}",
                m.sites[s].name,
                change,
                m.held(s, doc),
                show_stamp(&stamp),
                show_content(&content)
            )
        });
        let site = &mut self.sites[s];
        site.h = h;
        site.know.see(&stamp);
        self.hold(s, doc, ver, content)?;
        self.stats.writes += 1;
        let know = Rc::new(self.sites[s].know.clone());
        self.send(s, None, Msg { ver, know, change });
        Ok(())
    }

    /// The first message of link `l` arrives.
    fn deliver(&mut self, l: usize) -> Result<(), Fail> {
        let msg = self.links[l].queue.pop_front().expect("a message");
        let (from, r) = (self.links[l].from, self.links[l].to);
        self.stats.deliveries += 1;
        let theirs = msg.ver;
        let doc = self.versions[theirs].doc;
        let here = self.sites[r].name.clone();
        let ours = self.sites[r].docs[doc].clone();
        let theirs_stamp = self.versions[theirs].stamp.clone();
        let theirs_content = self.versions[theirs].content.clone();
        let ours_stamp = ours.ver.map(|v| self.versions[v].stamp.clone());
        let held = Held {
            stamp: ours_stamp.clone(),
            deleted: ours.content.is_none(),
        };
        let none = Knowledge::default();
        let arriving = Arriving {
            stamp: &theirs_stamp,
            know: if self.mutant == Mutant::NoKnowledge {
                &none
            } else {
                &msg.know
            },
            deleted: theirs_content.is_none(),
        };
        let mut d = decide(self.policy, &here, &held, &arriving);
        if let Some(o) = &ours_stamp {
            if ours.content == theirs_content {
                let settled = settle_equal(d, o, &theirs_stamp);
                if settled != d {
                    self.stats.settled += 1;
                    self.versions[theirs].settled = true;
                    self.versions[ours.ver.unwrap()].settled = true;
                }
                d = settled;
            }
        }
        self.note(Some(doc), |m| {
            format!(
                "{}->{} d{doc} {} {} ({:?}) meets {}: {:?}",
                m.sites[from].name,
                here,
                m.v(theirs),
                show_content(&theirs_content),
                msg.change,
                m.held(r, doc),
                d
            )
        });
        // Exactness of the decision, against the true causal past.
        if self.checks {
            let saw_ours = ours.ver.is_none_or(|o| self.versions[theirs].past.has(o));
            let saw_theirs = ours.ver == Some(theirs) || ours.known.has(theirs);
            let ok = match d {
                Decision::Duplicate => saw_theirs,
                Decision::FastForward => saw_ours,
                // A version made after ours, taken as concurrent because its writer's knowledge
                // misses ours: harmless as long as the later version still wins.
                Decision::Conflict(Winner::Theirs)
                    if saw_ours && !saw_theirs && !self.sees_resolved =>
                {
                    self.stats.false_conflicts += 1;
                    true
                }
                Decision::Conflict(_) => !saw_ours && !saw_theirs,
            };
            if !ok {
                return fail(
                    Some(doc),
                    format!(
                        "{here} decided {d:?} for {} over {}, but the writer {} ours and we {} theirs",
                        self.v(theirs),
                        self.held(r, doc),
                        if saw_ours { "had seen" } else { "had not seen" },
                        if saw_theirs { "had seen" } else { "had not seen" },
                    ),
                );
            }
        }
        if let Decision::Conflict(_) = d {
            self.stats.conflicts += 1;
            self.versions[theirs].journaled = true;
            if let Some(o) = ours.ver {
                self.versions[o].journaled = true;
            }
        }
        let outcome = self.apply_decision(d, l, msg, &ours)?;
        // A delete rule decides every conflict between a delete and an update where it meets.
        let rule = self.policy.deletes();
        let kept = self.sites[r].docs[doc].content.is_some();
        if let (true, Decision::Conflict(_), true) = (
            self.checks && rule != Deletes::Lww,
            d,
            ours.content.is_none() != theirs_content.is_none(),
        ) {
            if kept != (rule == Deletes::UpdateWins) {
                return fail(
                    Some(doc),
                    format!("{}: {here} ends with {}", self.policy, self.held(r, doc)),
                );
            }
        }
        Ok(outcome)
    }

    fn apply_decision(&mut self, d: Decision, l: usize, msg: Msg, ours: &Copy) -> Result<(), Fail> {
        let (from, r) = (self.links[l].from, self.links[l].to);
        let theirs = msg.ver;
        let doc = self.versions[theirs].doc;
        let here = self.sites[r].name.clone();
        let theirs_stamp = self.versions[theirs].stamp.clone();
        let theirs_content = self.versions[theirs].content.clone();
        match d {
            Decision::Duplicate | Decision::Conflict(Winner::Ours) => Ok(()),
            Decision::FastForward | Decision::Conflict(Winner::AsIs) => {
                let result = apply(&ours.content, &msg.change);
                if self.checks && result != theirs_content {
                    return fail(
                        Some(doc),
                        format!(
                            "{here} applied {:?} to {} and got {}, but its writer made {}",
                            msg.change,
                            self.held(r, doc),
                            show_content(&result),
                            show_content(&theirs_content)
                        ),
                    );
                }
                self.hold(r, doc, theirs, result)?;
                self.send(r, Some(from), msg);
                Ok(())
            }
            Decision::Conflict(Winner::Theirs) => {
                self.hold(r, doc, theirs, theirs_content.clone())?;
                if self.mutant != Mutant::NoForwardTheirs {
                    let change = Change::State(theirs_content);
                    let know = msg.know;
                    self.send(
                        r,
                        Some(from),
                        Msg {
                            ver: theirs,
                            know,
                            change,
                        },
                    );
                }
                Ok(())
            }
            Decision::Conflict(Winner::Rewrite(side)) => {
                let ours_ver = ours.ver.expect("a rewrite has a version of ours");
                let content = match side {
                    Side::Ours => ours.content.clone(),
                    Side::Theirs => theirs_content.clone(),
                    Side::Custom => {
                        self.versions[ours_ver].resolved = true;
                        self.versions[theirs].resolved = true;
                        resolve(&ours.content, &theirs_content)
                    }
                };
                self.stats.rewrites[side as usize] += 1;
                let ours_h = self.versions[ours_ver].stamp.h;
                let h = tick(
                    witness(witness(self.sites[r].h, ours_h), theirs_stamp.h),
                    self.wall(r),
                );
                let stamp = Stamp::new(h, resolution_site(&here));
                let mut past = ours.known.clone();
                past.union(&self.versions[theirs].past);
                past.insert(theirs);
                let ver = self.new_version(r, doc, stamp.clone(), content.clone(), past)?;
                self.note(Some(doc), |_| {
                    format!(
                        "{here} rewrites d{doc} as {} {}",
                        show_stamp(&stamp),
                        show_content(&content)
                    )
                });
                self.sites[r].h = h;
                if self.sees_resolved {
                    self.sites[r].know.see(&theirs_stamp);
                }
                self.hold(r, doc, ver, content.clone())?;
                let know = Rc::new(self.sites[r].know.clone());
                let change = Change::State(content);
                self.send(r, None, Msg { ver, know, change });
                Ok(())
            }
        }
    }

    /// A random history, then every link drained.
    fn run(&mut self, rng: &mut Rng) -> Result<(), Fail> {
        let docs = self.by_doc.len();
        let steps = 40 + rng.below(160);
        for _ in 0..steps {
            self.now += rng.below(4) as i64;
            match rng.below(100) {
                0..=41 => {
                    let s = rng.pick(self.sites.len());
                    // A few documents take most writes, so that versions meet.
                    let doc = if rng.pct(70) {
                        rng.pick(3)
                    } else {
                        rng.pick(docs)
                    };
                    self.write(s, doc, rng)?;
                }
                42..=91 => {
                    let ready: Vec<usize> = (0..self.links.len())
                        .filter(|l| {
                            !self.links[*l].queue.is_empty() && !self.cut[self.links[*l].edge]
                        })
                        .collect();
                    if !ready.is_empty() {
                        let l = ready[rng.pick(ready.len())];
                        for _ in 0..1 + rng.below(3) {
                            if self.links[l].queue.is_empty() {
                                break;
                            }
                            self.deliver(l)?;
                        }
                    }
                }
                _ => {
                    let e = rng.pick(self.cut.len());
                    self.cut[e] = !self.cut[e];
                    let (a, b) = (self.links[2 * e].from, self.links[2 * e].to);
                    let state = if self.cut[e] { "cut" } else { "restored" };
                    self.note(None, |m| {
                        format!("link {}-{} {state}", m.sites[a].name, m.sites[b].name)
                    });
                }
            }
        }
        // Writes stop, every link comes back: the exchange must end.
        self.cut.iter_mut().for_each(|c| *c = false);
        self.note(None, |_| "writes stop, every link restored".into());
        let limit = 50_000;
        let mut drained = 0;
        loop {
            let ready: Vec<usize> = (0..self.links.len())
                .filter(|l| !self.links[*l].queue.is_empty())
                .collect();
            if ready.is_empty() {
                break;
            }
            self.now += rng.below(2) as i64;
            self.deliver(ready[rng.pick(ready.len())])?;
            drained += 1;
            if drained > limit {
                return fail(None, format!("no quiescence after {limit} deliveries"));
            }
        }
        self.stats.max_drain = drained;
        self.check_final()
    }

    /// The checks once every link is empty.
    fn check_final(&mut self) -> Result<(), Fail> {
        let (mut lost, mut lost_unresolved, mut prefer_settled_lost) = (0, 0, 0);
        for doc in 0..self.by_doc.len() {
            // Convergence: every site holds the same version, with the same content.
            let first = &self.sites[0].docs[doc];
            for (s, site) in self.sites.iter().enumerate().skip(1) {
                let c = &site.docs[doc];
                if c.ver != first.ver || c.content != first.content {
                    return fail(
                        Some(doc),
                        format!(
                            "diverged: {} holds {}, {} holds {}",
                            self.sites[0].name,
                            self.held(0, doc),
                            site.name,
                            self.held(s, doc)
                        ),
                    );
                }
            }
            if !self.checks || self.by_doc[doc].is_empty() {
                continue;
            }
            let Some(fin) = first.ver else {
                return fail(Some(doc), "written, but no site holds a version".into());
            };
            let vers = &self.by_doc[doc];
            // Every policy is a join over stamps: the final version is the latest ever made, so
            // a tombstone that is the latest write stays (no resurrection).
            let latest = *vers
                .iter()
                .max_by(|a, b| self.versions[**a].stamp.cmp(&self.versions[**b].stamp))
                .unwrap();
            if latest != fin {
                return fail(
                    Some(doc),
                    format!(
                        "every site holds {}, but {} is later",
                        self.v(fin),
                        self.v(latest)
                    ),
                );
            }
            let final_past = &self.versions[fin].past;
            let seen_by_final = |v: usize| v == fin || final_past.has(v);
            // Journal completeness: a version the final one never saw lost in a conflict, there
            // or through a version made on top of it.
            let mut journaled = Bits::default();
            let mut resolved = Bits::default();
            for &w in vers {
                let ver = &self.versions[w];
                if ver.journaled {
                    journaled.union(&ver.past);
                    journaled.insert(w);
                }
                if ver.resolved {
                    resolved.union(&ver.past);
                    resolved.insert(w);
                }
            }
            for &v in vers {
                if seen_by_final(v) {
                    continue;
                }
                lost += 1;
                if !journaled.has(v) {
                    return fail(
                        Some(doc),
                        format!(
                            "{} was overwritten without any site recording a conflict",
                            self.v(v)
                        ),
                    );
                }
                if let Policy::Resolver { deletes, .. } = self.policy {
                    if !resolved.has(v) {
                        lost_unresolved += 1;
                        if self.resolver_central && *deletes == Deletes::Lww {
                            return fail(
                                Some(doc),
                                format!("{} lost without meeting the resolver", self.v(v)),
                            );
                        }
                    }
                }
            }
            // Prefer: a version of the preferred server is never lost unless a version made
            // on top of it is (then that one met the conflict).
            // (With a delete rule, that rule decides a delete against an update instead.)
            if let Policy::Prefer {
                site,
                deletes: Deletes::Lww,
            } = self.policy
            {
                let mut superseded = Bits::default();
                for &w in vers {
                    superseded.union(&self.versions[w].past);
                }
                for &v in vers {
                    let ver = &self.versions[v];
                    if server_of(&ver.stamp.site) != site || seen_by_final(v) || superseded.has(v) {
                        continue;
                    }
                    if ver.settled {
                        // Met a version of equal content from another server, which
                        // `settle_equal` kept by stamp; a later write made on top of that one
                        // then replaces it everywhere without having seen this one (e.g. both
                        // deleted, the other re-inserted). Counted, not failed: the write came
                        // after a state equal to the preferred one.
                        prefer_settled_lost += 1;
                    } else {
                        return fail(
                            Some(doc),
                            format!(
                                "{}: {} {} lost to {} {}",
                                self.policy,
                                self.v(v),
                                show_content(&ver.content),
                                self.v(fin),
                                show_content(&first.content)
                            ),
                        );
                    }
                }
            }
        }
        self.stats.lost += lost;
        self.stats.lost_unresolved += lost_unresolved;
        self.stats.prefer_settled_lost += prefer_settled_lost;
        if matches!(
            self.policy,
            Policy::Lww {
                deletes: Deletes::Lww
            }
        ) && self.stats.rewrites.iter().sum::<u64>() > 0
        {
            return fail(None, "plain lww rewrote a version".into());
        }
        Ok(())
    }
}

/// How the sites behave beyond the functions under test.
#[derive(Debug, Clone, Copy)]
struct Rules {
    mutant: Mutant,
    /// Whether a rewrite records the version it resolved as seen, in its knowledge.
    sees_resolved: bool,
}

/// One history: `Ok` with its numbers, or the failure and (when `traced`) the trace.
fn run_one(
    setup: &Setup,
    policy: &Policy,
    rules: Rules,
    traced: bool,
) -> (Result<(), Fail>, Stats, Vec<(Option<usize>, String)>) {
    let mut sim = Sim::new(setup, policy, rules.mutant, rules.sees_resolved, traced);
    let mut rng = Rng::new(setup.seed.wrapping_add(0xC0FFEE));
    let r = sim.run(&mut rng);
    (r, sim.stats, sim.trace.unwrap_or_default())
}

fn report(setup: &Setup, policy: &Policy, rules: Rules, f: &Fail) -> String {
    let (_, _, trace) = run_one(setup, policy, rules, true);
    let lines: Vec<&str> = trace
        .iter()
        .filter(|(d, _)| d.is_none() || f.doc.is_none() || *d == f.doc)
        .map(|(_, l)| l.as_str())
        .collect();
    format!(
        "seed {} (replay: MMM_MODEL_SEED={}), {rules:?}, policy {policy}: {}\n{}\n{}",
        setup.seed,
        setup.seed,
        f.what,
        setup.describe(),
        lines.join("\n")
    )
}

pub(super) fn histories(default: u64) -> std::ops::Range<u64> {
    if let Some(seed) = std::env::var("MMM_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return seed..seed + 1;
    }
    let n = std::env::var("MMM_MODEL_HISTORIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    0..n
}

/// Every seed under every policy; panics with a trace on the first failure of a policy that
/// claims to converge. Returns the numbers per policy and how many histories diverged under
/// detection only.
fn sweep(seeds: std::ops::Range<u64>, rules: Rules) -> (BTreeMap<String, Stats>, u64) {
    let mut totals: BTreeMap<String, Stats> = BTreeMap::new();
    let mut diverged_detect = 0;
    for seed in seeds {
        let setup = Setup::new(seed);
        for policy in &setup.policies {
            let (r, stats, _) = run_one(&setup, policy, rules, false);
            let key = match policy {
                Policy::Prefer { deletes, .. } => format!("prefer,deletes={}", deletes.name()),
                Policy::Resolver { deletes, .. } => format!("resolver,deletes={}", deletes.name()),
                p => p.to_string(),
            };
            totals.entry(key).or_default().add(&stats);
            match (r, policy) {
                (Err(_), Policy::Detect) => diverged_detect += 1,
                (Err(f), _) => panic!("{}", report(&setup, policy, rules, &f)),
                (Ok(()), _) => {}
            }
        }
    }
    for (p, s) in &totals {
        println!("{p:>28}: {s:?}");
    }
    println!("detection only: {diverged_detect} histories diverged");
    (totals, diverged_detect)
}

#[test]
fn random_histories_converge_under_every_policy() {
    let seeds = histories(300);
    let many = seeds.end - seeds.start >= 100;
    let rules = Rules {
        mutant: Mutant::None,
        sees_resolved: false,
    };
    let (totals, diverged_detect) = sweep(seeds, rules);
    if many {
        // The checker can fail: without a policy, servers stay different.
        assert!(diverged_detect > 0, "detection only never diverged");
        // The histories reach the cases the rules are for.
        let t = |p: &str| totals[p];
        assert!(t("lww").conflicts > 100, "{:?}", t("lww"));
        assert!(t("lww").lost > 50);
        for p in ["lww,deletes=delete_wins", "lww,deletes=update_wins"] {
            let r = t(p).rewrites;
            assert!(
                r[Side::Ours as usize] > 0 && r[Side::Theirs as usize] > 0,
                "{p}"
            );
        }
        assert!(t("prefer,deletes=lww").rewrites[Side::Ours as usize] > 0);
        assert!(t("prefer,deletes=lww").settled > 0);
        assert!(t("resolver,deletes=lww").rewrites[Side::Custom as usize] > 0);
    }
}

/// A rewrite made with only its server's knowledge looks concurrent to the version it resolved
/// when it reaches that version's writer (a second conflict for the same versions; the model
/// checks that the later version still wins there). Recording the resolved version as seen
/// makes every decision exact.
#[test]
fn a_rewrite_that_records_what_it_resolved_makes_every_decision_exact() {
    let rules = Rules {
        mutant: Mutant::None,
        sees_resolved: true,
    };
    let (totals, _) = sweep(histories(150), rules);
    for (p, t) in &totals {
        assert_eq!(t.false_conflicts, 0, "{p}");
    }
}

#[test]
fn the_checks_catch_broken_rules() {
    let rules = |mutant| Rules {
        mutant,
        sees_resolved: true,
    };
    for mutant in [
        Mutant::NoKnowledge,
        Mutant::NoWitness,
        Mutant::NoForwardTheirs,
    ] {
        let caught = (0..300).find_map(|seed| {
            let setup = Setup::new(seed);
            let lww = &setup.policies[0];
            run_one(&setup, lww, rules(mutant), false).0.err()
        });
        assert!(caught.is_some(), "{mutant:?} went unnoticed");
    }
}
