//! `mmm verify`: do the servers of each link hold the same documents? Compared without locks
//! and while writes go on, by `_id` ranges and order-insensitive hashes of the documents
//! (`doc_hash`: field order ignored, BSON types kept).
//!
//! For each pair of namespaces a link joins (see `targets`):
//! 1. **Survey.** Both sides are read once in `_id` order, merged, and cut into ranges of
//!    `range_size` `_id`s; a range whose count or hash sum differs between the sides is kept
//!    as a suspect. Only the position and the suspects are kept, in `__mmm.verify` on the
//!    pair's home server, so memory and that document grow with the number of differing
//!    ranges, not with the collection, and a run that is stopped or killed resumes after the
//!    last range it saved.
//! 2. **Re-checks.** Writes go on during the survey, so a range can differ only because a link
//!    had not applied its last writes yet. Each re-check first waits until every link between
//!    the two servers owes nothing up to the source position of the previous read
//!    (`catch_up`), then reads again: the suspect ranges are split down to the `_id`s that
//!    differ, then those `_id`s alone. A document counts as different only when it still
//!    differs after a catch-up and neither side changed it since the previous read; one that
//!    keeps changing through every re-check is reported apart as unsettled.
//!
//! A consistent pair is "consistent as of" the moment its survey began: every write made
//! before then and replicated is reflected.

mod catch_up;
pub mod ranges;
mod targets;

use crate::bson_order::compare;
use crate::replicate::runtime::latest_ts;
use crate::replicate::topology::{LinkSpec, ServerSpec};
use crate::store::verify::{self as progress_store, IdRange, VerifyProgress};
use bson::{doc, Bson, DateTime, Document, RawDocumentBuf, Timestamp};
use catch_up::{wait_for_links, CatchUp};
use mongodb::options::ClientOptions;
use mongodb::Client;
use parking_lot::Mutex;
use ranges::{differing_documents, Difference, Survey};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use targets::Target;

/// Why a verification could not be done (its result would say nothing).
#[derive(Debug, Clone)]
pub enum VerifyError {
    /// A bad argument.
    Usage(String),
    Read {
        server: String,
        ns: String,
        error: String,
    },
    CatchUp {
        link: String,
        error: String,
    },
    Store(String),
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::Usage(m) | VerifyError::Store(m) => f.write_str(m),
            VerifyError::Read { server, ns, error } => {
                write!(f, "reading {ns} on server {server}: {error}")
            }
            VerifyError::CatchUp { link, error } => {
                write!(f, "reading the position of link {link}: {error}")
            }
        }
    }
}

impl std::error::Error for VerifyError {}

impl From<crate::store::StoreError> for VerifyError {
    fn from(e: crate::store::StoreError) -> Self {
        VerifyError::Store(e.to_string())
    }
}

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Only the pairs naming this `db.coll` at either end.
    pub ns: Option<String>,
    /// `_id`s per survey range.
    pub range_size: usize,
    /// How long each re-check waits for the links to catch up.
    pub catch_up_timeout: Duration,
    /// Re-checks before a document that keeps changing is reported as unsettled.
    pub max_rounds: usize,
    /// Differences listed with both versions, per pair (the rest are counted).
    pub max_listed: usize,
    /// Start over, ignoring a saved position.
    pub restart: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            ns: None,
            range_size: 1000,
            catch_up_timeout: Duration::from_secs(30),
            max_rounds: 4,
            max_listed: 100,
            restart: false,
        }
    }
}

/// An `_id` whose documents differ, with both versions (None: absent on that side).
#[derive(Debug, Clone)]
pub struct Different {
    pub id: Bson,
    pub a: Option<RawDocumentBuf>,
    pub b: Option<RawDocumentBuf>,
}

/// The result for one pair of namespaces.
#[derive(Debug, Clone)]
pub struct PairReport {
    pub key: String,
    pub a_server: String,
    pub a_ns: String,
    pub b_server: String,
    pub b_ns: String,
    /// When the survey began: the result holds as of then.
    pub as_of: DateTime,
    /// `_id`s compared by the survey (over every run of it, if resumed).
    pub compared: u64,
    /// Ranges the survey found different (lag included), re-checked after catch-up.
    pub suspect_ranges: usize,
    /// Documents that differ (after catch-up, unchanged since the previous read).
    pub differences: u64,
    /// The first `max_listed` of them, with both versions.
    pub listed: Vec<Different>,
    /// `_id`s still changing at every re-check (their differences may be lag).
    pub unsettled: Vec<Bson>,
    /// Links that had not caught up when a re-check gave up waiting, with why.
    pub lagging_links: Vec<String>,
    /// Set when this run resumed a saved one: what it resumed.
    pub resumed: Option<String>,
}

impl PairReport {
    pub fn consistent(&self) -> bool {
        self.differences == 0
    }

    /// What `__mmm.verify` keeps as the pair's last result.
    fn summary(&self) -> Document {
        doc! {
            "consistent": self.consistent(), "as_of": self.as_of, "at": DateTime::now(),
            "compared": self.compared as i64, "differences": self.differences as i64,
            "unsettled": self.unsettled.len() as i64,
        }
    }
}

/// What a running verification shows (for progress lines).
#[derive(Debug, Clone, Default)]
pub struct VerifyProgressView {
    pub pair: String,
    pub pairs_done: usize,
    pub pairs: usize,
    /// "survey", "re-check N" or "done".
    pub phase: String,
    pub compared: u64,
    /// About how many documents the pair being surveyed holds (the larger side).
    pub estimate: u64,
    pub suspects: usize,
}

pub type SharedProgress = Arc<Mutex<VerifyProgressView>>;

/// Connects to every server a link uses (clients share the given options).
fn clients(
    servers: &[ServerSpec],
    links: &[LinkSpec],
    options: &HashMap<String, ClientOptions>,
) -> Result<HashMap<String, Client>, VerifyError> {
    let mut out = HashMap::new();
    for l in links {
        for name in [&l.src, &l.dst] {
            if out.contains_key(name) {
                continue;
            }
            let Some(o) = options.get(name) else {
                let known: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
                return Err(VerifyError::Usage(format!(
                    "unknown server {name:?} (known: {})",
                    known.join(", ")
                )));
            };
            let client = Client::with_options(o.clone()).map_err(|e| VerifyError::Read {
                server: name.clone(),
                ns: String::new(),
                error: e.to_string(),
            })?;
            out.insert(name.clone(), client);
        }
    }
    Ok(out)
}

/// Verifies every pair of namespaces the links join (or those naming `options.ns`).
pub async fn verify(
    servers: &[ServerSpec],
    links: &[LinkSpec],
    client_options: &HashMap<String, ClientOptions>,
    options: &VerifyOptions,
    progress: SharedProgress,
) -> Result<Vec<PairReport>, VerifyError> {
    let clients = clients(servers, links, client_options)?;
    let targets = targets::targets(servers, links, &clients, options.ns.as_deref()).await?;
    log::info!(target: "mmm", "verify: {} pair(s) of namespaces to compare", targets.len());
    progress.lock().pairs = targets.len();
    let mut reports = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        reports.push(verify_pair(target, options, &progress).await?);
        progress.lock().pairs_done = i + 1;
    }
    progress.lock().phase = "done".into();
    Ok(reports)
}

/// The newest oplog position of each link's source, in the order of `links`.
async fn source_positions(target: &Target) -> Result<Vec<(String, Timestamp)>, VerifyError> {
    let mut out = Vec::new();
    for l in &target.links {
        let ts = latest_ts(&l.src).await.map_err(|e| VerifyError::Read {
            server: l.spec.src.clone(),
            ns: "local.oplog.rs".into(),
            error: e.to_string(),
        })?;
        out.push((l.spec.src.clone(), ts));
    }
    Ok(out)
}

async fn estimate(target: &Target) -> u64 {
    let mut most = 0;
    for side in [&target.a, &target.b] {
        let (db, coll) = side.ns.split_once('.').unwrap_or((&side.ns, ""));
        let n = side
            .client
            .database(db)
            .collection::<Document>(coll)
            .estimated_document_count()
            .await
            .unwrap_or(0);
        most = most.max(n);
    }
    most
}

/// Adds a differing range to the suspects, joined to the last one when they touch.
fn add_suspect(suspects: &mut Vec<IdRange>, range: IdRange) {
    if let Some(last) = suspects.last_mut() {
        if last.until.is_some() && last.until == range.after {
            last.until = range.until;
            return;
        }
    }
    suspects.push(range);
}

async fn verify_pair(
    target: &Target,
    options: &VerifyOptions,
    shared: &SharedProgress,
) -> Result<PairReport, VerifyError> {
    let saved = match options.restart {
        true => None,
        false => progress_store::load(&target.home, &target.key).await?,
    };
    let mut resumed = None;
    let mut progress = match saved {
        Some(p) if p.finished.is_none() => {
            let what = format!(
                "resumed the verification of {} started at {} from its saved position ({} documents compared{})",
                target.key,
                p.started.try_to_rfc3339_string().unwrap_or_default(),
                p.compared,
                if p.surveyed { ", survey complete" } else { "" }
            );
            log::info!(target: "mmm", "verify: {what}");
            resumed = Some(what);
            p
        }
        _ => VerifyProgress::new(&target.key),
    };
    {
        let mut s = shared.lock();
        s.pair = target.key.clone();
        s.phase = "survey".into();
        s.compared = progress.compared;
        s.suspects = progress.suspects.len();
        s.estimate = 0;
    }
    shared.lock().estimate = estimate(target).await;
    if !progress.surveyed {
        log::info!(target: "mmm", "verify: surveying {}", target.key);
        progress_store::save(&target.home, &progress).await?;
        let mut survey = Survey::new(
            &target.a,
            &target.b,
            progress.after.clone(),
            options.range_size,
        );
        let mut last_save = Instant::now();
        let mut last_log = Instant::now();
        while let Some(r) = survey.next_range().await? {
            progress.compared += r.a.count.max(r.b.count);
            let differs = r.differs();
            match &r.range.until {
                Some(u) => progress.after = Some(u.clone()),
                None => progress.surveyed = true,
            }
            if differs {
                add_suspect(&mut progress.suspects, r.range);
            }
            {
                let mut s = shared.lock();
                s.compared = progress.compared;
                s.suspects = progress.suspects.len();
            }
            if differs || last_save.elapsed() >= Duration::from_millis(200) {
                progress_store::save(&target.home, &progress).await?;
                last_save = Instant::now();
            }
            if last_log.elapsed() >= Duration::from_secs(5) {
                log::info!(target: "mmm",
                    "verify: {}: {} documents compared, {} range(s) differ so far",
                    target.key, progress.compared, progress.suspects.len());
                last_log = Instant::now();
            }
        }
        progress.surveyed = true;
        progress_store::save(&target.home, &progress).await?;
    }
    let mut report = PairReport {
        key: target.key.clone(),
        a_server: target.a.server.clone(),
        a_ns: target.a.ns.clone(),
        b_server: target.b.server.clone(),
        b_ns: target.b.ns.clone(),
        as_of: progress.started,
        compared: progress.compared,
        suspect_ranges: progress.suspects.len(),
        differences: 0,
        listed: Vec::new(),
        unsettled: Vec::new(),
        lagging_links: Vec::new(),
        resumed,
    };
    if !progress.suspects.is_empty() {
        recheck(target, options, shared, &progress.suspects, &mut report).await?;
    }
    progress.suspects.clear();
    progress.finished = Some(report.summary());
    progress_store::save(&target.home, &progress).await?;
    log::info!(target: "mmm",
        "verify: {}: {}",
        target.key,
        if report.consistent() {
            format!("consistent as of {} ({} documents)", report.as_of.try_to_rfc3339_string().unwrap_or_default(), report.compared)
        } else {
            format!("{} document(s) differ", report.differences)
        }
    );
    Ok(report)
}

/// An `_id` that differed at the last read, with what each side held then.
struct Candidate {
    range: IdRange,
    id: Bson,
    a_hash: Option<u128>,
    b_hash: Option<u128>,
}

impl Candidate {
    fn from(d: Difference) -> Candidate {
        Candidate {
            range: IdRange {
                after: d.before,
                until: Some(d.id.clone()),
            },
            id: d.id,
            a_hash: d.a_hash,
            b_hash: d.b_hash,
        }
    }
}

/// Waits for the links to owe nothing up to `positions`; notes those that did not catch up.
async fn wait(
    target: &Target,
    options: &VerifyOptions,
    positions: &[(String, Timestamp)],
    report: &mut PairReport,
) -> Result<(), VerifyError> {
    for (link, why) in wait_for_links(&target.links, positions, options.catch_up_timeout).await? {
        let note = match why {
            CatchUp::NeverRan => format!("{link} (never ran)"),
            _ => format!(
                "{link} (still behind after {} s)",
                options.catch_up_timeout.as_secs_f64()
            ),
        };
        if !report.lagging_links.contains(&note) {
            log::warn!(target: "mmm", "verify: {}: link {note}: differences found may be writes it has not applied yet", target.key);
            report.lagging_links.push(note);
        }
    }
    Ok(())
}

/// Re-reads the suspect ranges after the links caught up, down to the `_id`s that differ,
/// until each is settled (equal, or different and unchanged since the previous read).
async fn recheck(
    target: &Target,
    options: &VerifyOptions,
    shared: &SharedProgress,
    suspects: &[IdRange],
    report: &mut PairReport,
) -> Result<(), VerifyError> {
    let mut positions = source_positions(target).await?;
    shared.lock().phase = "re-check 1".into();
    log::info!(target: "mmm",
        "verify: {}: {} range(s) differ; re-checking them once the links have caught up",
        target.key, suspects.len());
    wait(target, options, &positions, report).await?;
    let mut candidates = Vec::new();
    for range in suspects {
        differing_documents(&target.a, &target.b, range, |d| {
            candidates.push(Candidate::from(d))
        })
        .await?;
    }
    for round in 2..=options.max_rounds.max(2) {
        if candidates.is_empty() {
            return Ok(());
        }
        shared.lock().phase = format!("re-check {round}");
        // Taken once the previous read is over: every write it saw is at or before them.
        positions = source_positions(target).await?;
        wait(target, options, &positions, report).await?;
        let mut next = Vec::new();
        for group in candidates.chunk_by(|x, y| y.range.after.as_ref() == Some(&x.id)) {
            let range = IdRange {
                after: group[0].range.after.clone(),
                until: group.last().and_then(|c| c.range.until.clone()),
            };
            // Both come in `_id` order: one pass pairs each difference with its candidate.
            let mut at = 0;
            differing_documents(&target.a, &target.b, &range, |d| {
                while at < group.len() && compare(&group[at].id, &d.id).is_lt() {
                    at += 1;
                }
                let before = group.get(at).filter(|c| compare(&c.id, &d.id).is_eq());
                match before {
                    Some(c) if (c.a_hash, c.b_hash) == (d.a_hash, d.b_hash) => {
                        report.differences += 1;
                        if report.listed.len() < options.max_listed {
                            report.listed.push(Different {
                                id: d.id,
                                a: d.a,
                                b: d.b,
                            });
                        }
                    }
                    // Changed since the previous read (or new): read again next round.
                    _ => next.push(Candidate::from(d)),
                }
            })
            .await?;
        }
        candidates = next;
    }
    for c in candidates {
        // Still changing at the last re-check: perhaps lag, perhaps not; said apart.
        if report.unsettled.len() < options.max_listed {
            report.unsettled.push(c.id);
        }
    }
    Ok(())
}
