//! A deterministic model of the `fields` policy (last writer wins per top-level field), run
//! with the real rules ([`FieldStamps`], [`merge_content`], [`ops_give_merge`], [`tick`],
//! [`witness`], [`decide`] for the journal's classification) over the topologies, clocks and
//! documents of `model.rs`.
//!
//! What it models beyond `model.rs`:
//! - local writes set or unset a whole field, change part of one (a sub-diff: its result
//!   depends on the value it meets), replace, insert or delete; a link carries for a local
//!   write only the fields it wrote, with the write's stamp (a partial [`FieldStamps`]), and
//!   the writer's content as the destination would read it back at that version;
//! - a link delivers batches: consecutive messages of one document are grouped into one
//!   composite whose field stamps are those of the last op writing each field;
//! - what a server installs goes on to its other neighbours with its whole field stamps (a
//!   relay forwards the row it wrote), and the ops as they came when it applied them so, else
//!   its whole content;
//! - a server merges every arriving composite with what it holds; it applies the ops as they
//!   came only for the source's own writes and where [`ops_give_merge`] says that gives the
//!   merge (a relay's ops miss what it installed from the destination, which links never send
//!   back, so they are merged with the content read back).
//!
//! Checks after each history (every link drained):
//! - **convergence**: every server holds the same field stamps and the same values;
//! - **no lost later field write**: each field holds the value of the write with the largest
//!   stamp among those that wrote it (an insert, replacement or delete writes every field), and
//!   the document exists as the module comment of `fields.rs` says, computed from the list of
//!   every write, apart from any merge;
//! - **partial versions are exact**: merging the composite gives what merging the writer's
//!   whole state gives (the receiver's stamps dominate the fields the composite leaves out);
//! - **the fast path is exact**: ops applied as they came give the merge;
//! - **causality**: a local write's stamp is above every field stamp its server held.
//!
//! Under detection only (ops applied as they came, relays forwarding them), some history must
//! diverge; each [`Mutant`] must be caught. With `deletes=delete_wins` or `update_wins`, a
//! delete that meets a concurrent live version where the merge does not give what the rule
//! wants is rewritten as a whole-document version above both (as `policy.rs` does for the
//! other policies); the same checks hold, rewrites counted as writes.

use super::fields::{merge_content, ops_give_merge, FieldStamps};
use super::model::{histories, show_stamp, Rng, Setup, T0};
use super::policy::{decide, Arriving, Decision, Deletes, Held, Policy};
use super::stamp::{resolution_site, tick, witness, Knowledge, Stamp};
use crate::oplog::fields::Touched;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;

type Doc = Vec<(String, i64)>;
type Content = Option<Doc>;

#[derive(Clone, Debug)]
enum Change {
    /// A whole field's new value (`$set`, a diff's `u`/`i`).
    Set(String, i64),
    Unset(String),
    /// Part of a field changes (a sub-diff): the result depends on the value it meets.
    Add(String, i64),
    Replace(Doc),
    Insert(Doc),
    Delete,
    /// A whole content, as a server that merged writes it.
    State(Content),
}

fn set(doc: &mut Doc, f: &str, v: i64) {
    match doc.iter_mut().find(|(k, _)| k == f) {
        Some(e) => e.1 = v,
        None => doc.push((f.to_string(), v)),
    }
}

fn get(doc: &Content, f: &str) -> Option<i64> {
    doc.as_ref()?.iter().find(|(k, _)| k == f).map(|(_, v)| *v)
}

/// What a change makes of a content, as MongoDB applies it (updates match nothing on a
/// missing document, an insert fails on an existing one).
fn apply(base: &Content, change: &Change) -> Content {
    match (base, change) {
        (Some(b), Change::Set(f, v)) => {
            let mut b = b.clone();
            set(&mut b, f, *v);
            Some(b)
        }
        (Some(b), Change::Add(f, d)) => {
            let mut b = b.clone();
            let v = get(base, f).unwrap_or(0) + d;
            set(&mut b, f, v);
            Some(b)
        }
        (Some(b), Change::Unset(f)) => Some(b.iter().filter(|(k, _)| k != f).cloned().collect()),
        (Some(_), Change::Replace(d)) => Some(d.clone()),
        (None, Change::Set(..) | Change::Add(..) | Change::Unset(_) | Change::Replace(_)) => None,
        (None, Change::Insert(d)) => Some(d.clone()),
        (Some(b), Change::Insert(_)) => Some(b.clone()),
        (_, Change::Delete) => None,
        (_, Change::State(c)) => c.clone(),
    }
}

fn touched(change: &Change) -> Touched {
    match change {
        Change::Set(f, _) | Change::Unset(f) | Change::Add(f, _) => {
            Touched::Fields([f.clone()].into_iter().collect())
        }
        _ => Touched::Whole,
    }
}

/// What the changes write with values independent of the content they meet (see
/// [`ops_give_merge`]).
fn plain(changes: &[Change]) -> Option<Touched> {
    let mut out: Option<Touched> = Some(Touched::Fields(BTreeSet::new()));
    for c in changes {
        match (c, &mut out) {
            (Change::Add(..), _) => return None,
            (Change::Set(f, _) | Change::Unset(f), Some(Touched::Fields(s))) => {
                s.insert(f.clone());
            }
            (Change::Set(..) | Change::Unset(_), _) => {}
            _ => out = Some(Touched::Whole),
        }
    }
    out
}

fn as_map(c: &Content) -> Option<BTreeMap<String, i64>> {
    c.as_ref().map(|d| d.iter().cloned().collect())
}

fn show(c: &Content) -> String {
    match as_map(c) {
        None => "deleted".into(),
        Some(m) => {
            let f: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("{{{}}}", f.join(","))
        }
    }
}

fn show_stamps(s: &FieldStamps) -> String {
    let f: Vec<String> = s
        .fields
        .iter()
        .map(|(k, v)| format!("{k}@{}", show_stamp(v)))
        .collect();
    format!(
        "base {}{} [{}]",
        s.base.as_ref().map_or("-".into(), show_stamp),
        if s.deleted { " (delete)" } else { "" },
        f.join(" ")
    )
}

/// A rule deliberately broken, to show that the checks catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mutant {
    None,
    /// A composite stamps every field it wrote with its last stamp.
    OverStamp,
    /// Ops are applied as they came whenever the writer had seen our version's stamp.
    FastPathOnCovered,
    /// A conflict keeps the whole version with the larger stamp (LWW), stamps merged.
    WholeLww,
    /// A relay forwards what it installed as one whole-document write at its largest stamp
    /// (document stamps only, as LWW carries them).
    RelayWhole,
    /// Relayed versions take the fast path too: their ops miss what the relay installed from
    /// the destination itself (never sent back), so a replacement among them is stale.
    FastPathOnRelays,
}

/// One local write: the truth the final state is checked against.
struct Write {
    doc: usize,
    stamp: Stamp,
    touched: Touched,
    delete: bool,
    /// The writer's content right after it.
    content: Content,
}

#[derive(Clone)]
struct Copy {
    stamps: FieldStamps,
    content: Content,
}

struct Site {
    name: String,
    offset: i64,
    back: Option<(i64, i64)>,
    h: i64,
    know: Knowledge,
    docs: Vec<Copy>,
}

#[derive(Clone)]
struct Msg {
    doc: usize,
    /// The stamps the link carries: the fields written (local writes), or the whole row (relays).
    stamps: FieldStamps,
    /// The writer's whole stamps, for the check of partial versions.
    whole: FieldStamps,
    /// The writer's content, as read back from it.
    content: Content,
    changes: Vec<Change>,
    know: Rc<Knowledge>,
    /// A version the writer installed from another server (its stamps are its whole row).
    relayed: bool,
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
    composites: u64,
    /// Composites of more than one op.
    grouped: u64,
    conflicts: u64,
    /// Conflicts whose merge took fields from both sides.
    mixed: u64,
    fast_path: u64,
    /// Versions written by a delete rule.
    rewrites: u64,
    /// Documents that exist at the end only through fields written after a delete.
    revived: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.histories += o.histories;
        self.writes += o.writes;
        self.composites += o.composites;
        self.grouped += o.grouped;
        self.conflicts += o.conflicts;
        self.mixed += o.mixed;
        self.fast_path += o.fast_path;
        self.rewrites += o.rewrites;
        self.revived += o.revived;
    }
}

struct Sim {
    detect: bool,
    /// The `deletes=` rule.
    rule: Deletes,
    mutant: Mutant,
    sites: Vec<Site>,
    links: Vec<Link>,
    cut: Vec<bool>,
    initial: Vec<Content>,
    writes: Vec<Write>,
    now: i64,
    trace: Option<Vec<(Option<usize>, String)>>,
    stats: Stats,
}

type Failed = (Option<usize>, String);

impl Sim {
    fn new(setup: &Setup, detect: bool, rule: Deletes, mutant: Mutant, traced: bool) -> Sim {
        let initial: Vec<Content> = setup
            .initial
            .iter()
            .map(|c| {
                c.as_ref()
                    .map(|f| f.iter().map(|(k, v)| (format!("f{k}"), *v)).collect())
            })
            .collect();
        let docs: Vec<Copy> = initial
            .iter()
            .map(|c| Copy {
                stamps: FieldStamps::default(),
                content: c.clone(),
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
                h: super::stamp::initial(T0 + setup.offsets[i] - 1_000),
                know: Knowledge::default(),
                docs: docs.clone(),
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
            detect,
            rule,
            mutant,
            sites,
            links,
            cut: vec![false; setup.edges.len()],
            initial,
            writes: Vec::new(),
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

    fn send(&mut self, from: usize, except: Option<usize>, msg: Msg) {
        for l in &mut self.links {
            if l.from == from && Some(l.to) != except {
                l.queue.push_back(msg.clone());
            }
        }
    }

    fn write(&mut self, s: usize, doc: usize, rng: &mut Rng) -> Result<(), Failed> {
        let copy = self.sites[s].docs[doc].clone();
        let field = |rng: &mut Rng| format!("f{}", rng.below(4));
        let change = match &copy.content {
            None => Change::Insert(random_doc(rng)),
            Some(cur) => match rng.below(12) {
                0..=3 => {
                    let f = field(rng);
                    // Setting a field to the value it has writes nothing to the oplog.
                    let v = get(&copy.content, &f).map_or(0, |v| v + 1 + rng.below(3) as i64);
                    Change::Set(f, v)
                }
                4..=5 => Change::Add(field(rng), 1 + rng.below(3) as i64),
                // Unsetting a missing field writes nothing to the oplog: unset a present one.
                6 if !cur.is_empty() => Change::Unset(cur[rng.pick(cur.len())].0.clone()),
                6..=8 => {
                    let mut new = random_doc(rng);
                    if as_map(&Some(new.clone())) == as_map(&copy.content) {
                        new.push(("f9".into(), 0));
                    }
                    Change::Replace(new)
                }
                _ => Change::Delete,
            },
        };
        let content = apply(&copy.content, &change);
        let h = tick(self.sites[s].h, self.wall(s));
        let stamp = Stamp::new(h, self.sites[s].name.clone());
        if !self.detect && Some(&stamp) <= copy.stamps.max() {
            return Err((
                Some(doc),
                format!(
                    "causality: {} wrote {} while holding {}",
                    self.sites[s].name,
                    show_stamp(&stamp),
                    show_stamps(&copy.stamps)
                ),
            ));
        }
        let t = touched(&change);
        let delete = matches!(change, Change::Delete);
        let mut partial = FieldStamps::default();
        partial.write(&t, &stamp, delete);
        let mut whole = copy.stamps.clone();
        whole.write(&t, &stamp, delete);
        self.note(Some(doc), |m| {
            format!(
                "{} writes d{doc} {change:?} -> {} {}",
                m.sites[s].name,
                show_stamp(&stamp),
                show(&content)
            )
        });
        self.writes.push(Write {
            doc,
            stamp: stamp.clone(),
            touched: t,
            delete,
            content: content.clone(),
        });
        self.stats.writes += 1;
        let site = &mut self.sites[s];
        site.h = h;
        site.know.see(&stamp);
        site.docs[doc] = Copy {
            stamps: whole.clone(),
            content: content.clone(),
        };
        let know = Rc::new(site.know.clone());
        self.send(
            s,
            None,
            Msg {
                doc,
                stamps: partial,
                whole,
                content,
                changes: vec![change],
                know,
                relayed: false,
            },
        );
        Ok(())
    }

    /// A batch of up to `n` messages of link `l`, grouped into one composite per document.
    fn deliver(&mut self, l: usize, n: usize) -> Result<(), Failed> {
        let mut batch: Vec<Msg> = Vec::new();
        for _ in 0..n {
            let Some(m) = self.links[l].queue.pop_front() else {
                break;
            };
            match batch.iter_mut().find(|c| c.doc == m.doc) {
                Some(c) => {
                    c.stamps = if self.mutant == Mutant::OverStamp {
                        let mut s = c.stamps.merge(&m.stamps);
                        let last = m.stamps.max().cloned().unwrap();
                        s.fields.values_mut().for_each(|v| *v = last.clone());
                        s
                    } else {
                        c.stamps.merge(&m.stamps)
                    };
                    c.whole = m.whole;
                    c.content = m.content;
                    c.changes.extend(m.changes);
                    c.know = m.know;
                    c.relayed |= m.relayed;
                    self.stats.grouped += 1;
                }
                None => batch.push(m),
            }
        }
        let (from, to) = (self.links[l].from, self.links[l].to);
        for c in batch {
            self.install(from, to, c)?;
        }
        Ok(())
    }

    fn install(&mut self, from: usize, r: usize, c: Msg) -> Result<(), Failed> {
        self.stats.composites += 1;
        let doc = c.doc;
        let ours = self.sites[r].docs[doc].clone();
        let here = self.sites[r].name.clone();
        let theirs_max = c.stamps.max().cloned().expect("a composite has a stamp");
        let decision = decide(
            &Policy::Lww {
                deletes: Deletes::Lww,
            },
            &here,
            &Held {
                stamp: ours.stamps.max().cloned(),
                deleted: ours.content.is_none(),
            },
            &Arriving {
                stamp: &theirs_max,
                know: &c.know,
                deleted: c.content.is_none(),
            },
        );
        // As the link's applier writes them: inserts and replacements are upserts by `_id`.
        let applied = || {
            c.changes
                .iter()
                .fold(ours.content.clone(), |base, ch| match ch {
                    Change::Insert(d) | Change::Replace(d) => Some(d.clone()),
                    ch => apply(&base, ch),
                })
        };
        let (stamps, content, as_came) = if self.detect {
            (ours.stamps.merge(&c.stamps), applied(), true)
        } else {
            let ours_doc = ours.content.as_deref();
            let merged_doc = if self.mutant == Mutant::WholeLww {
                if c.stamps.max() > ours.stamps.max() {
                    c.content.clone()
                } else {
                    ours.content.clone()
                }
            } else {
                merge_content(
                    &ours.stamps,
                    ours_doc,
                    &c.stamps,
                    c.content.as_deref(),
                    None,
                )
            };
            let merged = ours.stamps.merge(&c.stamps);
            // The composite leaves out fields whose stamps the receiver dominates: merging the
            // writer's whole state gives the same.
            let by_whole = ours.stamps.merge(&c.whole);
            let by_whole_doc =
                merge_content(&ours.stamps, ours_doc, &c.whole, c.content.as_deref(), None);
            if self.mutant == Mutant::None
                && (by_whole != merged || as_map(&by_whole_doc) != as_map(&merged_doc))
            {
                return Err((
                    Some(doc),
                    format!(
                        "partial version: {here} merges {} into {} as {} {}, the whole version {} gives {} {}",
                        show_stamps(&c.stamps),
                        show_stamps(&ours.stamps),
                        show_stamps(&merged),
                        show(&merged_doc),
                        show_stamps(&c.whole),
                        show_stamps(&by_whole),
                        show(&by_whole_doc)
                    ),
                ));
            }
            // A delete rule decides a delete met by a concurrent live version: where the merge
            // does not give what it wants, a new whole version above both is written (a rewrite,
            // as for the other policies: it wins by stamps everywhere).
            if self.rule != Deletes::Lww
                && matches!(decision, Decision::Conflict(_))
                && ours.content.is_none() != c.content.is_none()
            {
                let wanted = match self.rule {
                    Deletes::DeleteWins => None,
                    _ => ours.content.clone().or_else(|| c.content.clone()),
                };
                if as_map(&wanted) != as_map(&merged_doc) {
                    return self.rewrite(r, &ours, &c, wanted);
                }
            }
            let fast = match self.mutant {
                Mutant::FastPathOnCovered => decision == Decision::FastForward,
                Mutant::FastPathOnRelays => ops_give_merge(
                    &ours.stamps,
                    ours.content.is_some(),
                    &c.stamps,
                    plain(&c.changes).as_ref(),
                ),
                _ => {
                    !c.relayed
                        && ops_give_merge(
                            &ours.stamps,
                            ours.content.is_some(),
                            &c.stamps,
                            plain(&c.changes).as_ref(),
                        )
                }
            };
            if fast {
                self.stats.fast_path += 1;
                let got = applied();
                if self.mutant == Mutant::None && as_map(&got) != as_map(&merged_doc) {
                    return Err((
                        Some(doc),
                        format!(
                            "fast path: {here} applied {:?} to {} giving {}, the merge gives {}",
                            c.changes,
                            show(&ours.content),
                            show(&got),
                            show(&merged_doc)
                        ),
                    ));
                }
                (merged, got, true)
            } else {
                (merged, merged_doc, false)
            }
        };
        if let Decision::Conflict(_) = decision {
            self.stats.conflicts += 1;
            let names: BTreeSet<&String> = ours.stamps.fields.keys().collect();
            let from_theirs = c
                .stamps
                .fields
                .keys()
                .any(|f| ours.stamps.theirs_wins(&c.stamps, f));
            let from_ours = names.iter().any(|f| !ours.stamps.theirs_wins(&c.stamps, f))
                || !ours.stamps.theirs_base(&c.stamps);
            if from_theirs && from_ours {
                self.stats.mixed += 1;
            }
        }
        self.note(Some(doc), |m| {
            format!(
                "{here} gets d{doc} {:?} from {} ({decision:?}): {} {} + {} {} -> {} {}{}",
                c.changes,
                m.sites[from].name,
                show_stamps(&ours.stamps),
                show(&ours.content),
                show_stamps(&c.stamps),
                show(&c.content),
                show_stamps(&stamps),
                show(&content),
                if as_came { " (as it came)" } else { "" }
            )
        });
        let unchanged = stamps == ours.stamps && as_map(&content) == as_map(&ours.content);
        let site = &mut self.sites[r];
        if let Some(m) = stamps.max() {
            site.h = witness(site.h, m.h);
        }
        site.know.see(&theirs_max);
        if unchanged && !self.detect {
            return Ok(());
        }
        site.docs[doc] = Copy {
            stamps: stamps.clone(),
            content: content.clone(),
        };
        let know = Rc::new(site.know.clone());
        let relayed = if self.mutant == Mutant::RelayWhole {
            FieldStamps::whole(stamps.max().cloned().unwrap(), content.is_none())
        } else {
            stamps.clone()
        };
        let changes = if as_came {
            c.changes.clone()
        } else {
            vec![Change::State(content.clone())]
        };
        self.send(
            r,
            Some(from),
            Msg {
                doc,
                stamps: relayed,
                whole: stamps,
                content,
                changes,
                know,
                relayed: true,
            },
        );
        Ok(())
    }

    /// Site `r` writes `content` whole, under its resolution site, above both versions.
    fn rewrite(&mut self, r: usize, ours: &Copy, c: &Msg, content: Content) -> Result<(), Failed> {
        let doc = c.doc;
        let here = self.sites[r].name.clone();
        let above = [ours.stamps.max(), c.whole.max()]
            .into_iter()
            .flatten()
            .max()
            .cloned()
            .expect("a conflict has stamps");
        let h = tick(witness(self.sites[r].h, above.h), self.wall(r));
        let stamp = Stamp::new(h, resolution_site(&here));
        if stamp <= above {
            return Err((
                Some(doc),
                format!(
                    "causality: {here} rewrote as {} below {}",
                    show_stamp(&stamp),
                    show_stamp(&above)
                ),
            ));
        }
        let delete = content.is_none();
        let stamps = FieldStamps::whole(stamp.clone(), delete);
        self.note(Some(doc), |_| {
            format!(
                "{here} rewrites d{doc} as {} {}",
                show_stamp(&stamp),
                show(&content)
            )
        });
        self.writes.push(Write {
            doc,
            stamp: stamp.clone(),
            touched: Touched::Whole,
            delete,
            content: content.clone(),
        });
        self.stats.rewrites += 1;
        let site = &mut self.sites[r];
        site.h = h;
        site.know.see(&stamp);
        site.docs[doc] = Copy {
            stamps: stamps.clone(),
            content: content.clone(),
        };
        let know = Rc::new(site.know.clone());
        self.send(
            r,
            None,
            Msg {
                doc,
                stamps: stamps.clone(),
                whole: stamps,
                content: content.clone(),
                changes: vec![Change::State(content)],
                know,
                relayed: false,
            },
        );
        Ok(())
    }

    fn run(&mut self, rng: &mut Rng) -> Result<(), Failed> {
        let docs = self.initial.len();
        let steps = 40 + rng.below(160);
        for _ in 0..steps {
            self.now += rng.below(4) as i64;
            match rng.below(100) {
                0..=41 => {
                    let s = rng.pick(self.sites.len());
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
                        let n = 1 + rng.pick(4);
                        self.deliver(l, n)?;
                    }
                }
                _ => {
                    let e = rng.pick(self.cut.len());
                    self.cut[e] = !self.cut[e];
                }
            }
        }
        self.cut.iter_mut().for_each(|c| *c = false);
        self.note(None, |_| "writes stop, every link restored".into());
        let mut drained = 0;
        loop {
            let ready: Vec<usize> = (0..self.links.len())
                .filter(|l| !self.links[*l].queue.is_empty())
                .collect();
            if ready.is_empty() {
                break;
            }
            self.now += rng.below(2) as i64;
            let n = 1 + rng.pick(4);
            self.deliver(ready[rng.pick(ready.len())], n)?;
            drained += 1;
            if drained > 50_000 {
                return Err((None, "no quiescence".into()));
            }
        }
        self.check_final()
    }

    /// What every server must hold for `doc`, from the list of writes alone.
    fn expected(&self, doc: usize) -> Content {
        let writes: Vec<&Write> = self.writes.iter().filter(|w| w.doc == doc).collect();
        let base = writes
            .iter()
            .filter(|w| w.touched == Touched::Whole)
            .max_by(|a, b| a.stamp.cmp(&b.stamp));
        let base_stamp = base.map(|w| &w.stamp);
        let mut names: BTreeSet<String> = BTreeSet::new();
        for c in writes
            .iter()
            .map(|w| &w.content)
            .chain([&self.initial[doc]])
        {
            names.extend(c.iter().flatten().map(|(k, _)| k.clone()));
        }
        let mut out = Vec::new();
        let mut after_base = false;
        for f in names {
            let last = writes
                .iter()
                .filter(|w| match &w.touched {
                    Touched::Whole => true,
                    Touched::Fields(s) => s.contains(&f),
                })
                .max_by(|a, b| a.stamp.cmp(&b.stamp));
            let value = match last {
                Some(w) => get(&w.content, &f),
                None => get(&self.initial[doc], &f),
            };
            let later = last.map(|w| &w.stamp) > base_stamp;
            after_base |= later;
            if let Some(v) = value {
                if later || !base.is_some_and(|b| b.delete) {
                    out.push((f, v));
                }
            }
        }
        let base_held = match base {
            Some(b) => !b.delete,
            None => self.initial[doc].is_some(),
        };
        (base_held || after_base).then_some(out)
    }

    fn check_final(&mut self) -> Result<(), Failed> {
        for doc in 0..self.initial.len() {
            let first = &self.sites[0].docs[doc];
            for site in &self.sites[1..] {
                let c = &site.docs[doc];
                if c.stamps != first.stamps || as_map(&c.content) != as_map(&first.content) {
                    return Err((
                        Some(doc),
                        format!(
                            "diverged: {} holds {} {}, {} holds {} {}",
                            self.sites[0].name,
                            show_stamps(&first.stamps),
                            show(&first.content),
                            site.name,
                            show_stamps(&c.stamps),
                            show(&c.content)
                        ),
                    ));
                }
            }
            if self.detect {
                continue;
            }
            let want = self.expected(doc);
            if as_map(&want) != as_map(&first.content) {
                return Err((
                    Some(doc),
                    format!(
                        "lost write: every server holds {} {}, the latest writes give {}",
                        show_stamps(&first.stamps),
                        show(&first.content),
                        show(&want)
                    ),
                ));
            }
            if first.stamps.deleted && first.content.is_some() {
                self.stats.revived += 1;
            }
        }
        Ok(())
    }
}

fn random_doc(rng: &mut Rng) -> Doc {
    let mut d = Doc::new();
    for _ in 0..1 + rng.below(3) {
        set(&mut d, &format!("f{}", rng.below(4)), rng.below(10) as i64);
    }
    d
}

fn run_one(
    seed: u64,
    detect: bool,
    rule: Deletes,
    mutant: Mutant,
    traced: bool,
) -> (Result<(), Failed>, Stats, Vec<(Option<usize>, String)>) {
    let setup = Setup::new(seed);
    let mut sim = Sim::new(&setup, detect, rule, mutant, traced);
    let mut rng = Rng::new(seed.wrapping_add(0xF1E1D5));
    let r = sim.run(&mut rng);
    (r, sim.stats, sim.trace.unwrap_or_default())
}

fn report(seed: u64, rule: Deletes, f: &Failed) -> String {
    let (_, _, trace) = run_one(seed, false, rule, Mutant::None, true);
    let lines: Vec<&str> = trace
        .iter()
        .filter(|(d, _)| d.is_none() || f.0.is_none() || *d == f.0)
        .map(|(_, l)| l.as_str())
        .collect();
    format!(
        "seed {seed} (replay: MMM_MODEL_SEED={seed}), policy fields,deletes={}: {}\n{}\n{}",
        rule.name(),
        f.1,
        Setup::new(seed).describe(),
        lines.join("\n")
    )
}

#[test]
fn random_histories_converge_under_fields() {
    let seeds = histories(600);
    let many = seeds.end - seeds.start >= 100;
    let mut total = Stats::default();
    let mut diverged_detect = 0;
    let mut topologies = BTreeSet::new();
    for seed in seeds {
        let (r, stats, _) = run_one(seed, false, Deletes::Lww, Mutant::None, false);
        if let Err(f) = r {
            panic!("{}", report(seed, Deletes::Lww, &f));
        }
        total.add(&stats);
        topologies.insert(Setup::new(seed).topology);
        if run_one(seed, true, Deletes::Lww, Mutant::None, false)
            .0
            .is_err()
        {
            diverged_detect += 1;
        }
    }
    println!("fields: {total:?}; detection only: {diverged_detect} histories diverged");
    if many {
        assert_eq!(topologies.len(), 3);
        assert!(diverged_detect > 0, "detection only never diverged");
        assert!(total.mixed > 50, "{total:?}");
        assert!(total.grouped > 100, "{total:?}");
        assert!(total.fast_path > 100, "{total:?}");
        assert!(total.revived > 0, "{total:?}");
    }
}

#[test]
fn the_checks_catch_broken_field_rules() {
    for mutant in [
        Mutant::OverStamp,
        Mutant::FastPathOnCovered,
        Mutant::WholeLww,
        Mutant::RelayWhole,
        Mutant::FastPathOnRelays,
    ] {
        let caught = (0..600).find(|seed| {
            run_one(*seed, false, Deletes::Lww, mutant, false)
                .0
                .is_err()
        });
        assert!(caught.is_some(), "{mutant:?} went unnoticed");
    }
}

/// With a delete rule, a delete met by a concurrent live version ends as the rule says wherever
/// the merge would not give it: a rewrite, itself a whole-document write, which every server
/// then merges like any other. Checked as above: convergence, and each field's value from its
/// latest write (rewrites included).
#[test]
fn delete_rules_converge_under_fields() {
    for rule in [Deletes::DeleteWins, Deletes::UpdateWins] {
        let seeds = histories(300);
        let many = seeds.end - seeds.start >= 100;
        let mut total = Stats::default();
        for seed in seeds {
            let (r, stats, _) = run_one(seed, false, rule, Mutant::None, false);
            if let Err(f) = r {
                panic!("{}", report(seed, rule, &f));
            }
            total.add(&stats);
        }
        println!("fields,deletes={}: {total:?}", rule.name());
        if many {
            assert!(total.rewrites > 20, "{total:?}");
        }
    }
}
