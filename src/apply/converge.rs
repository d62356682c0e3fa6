//! Applying versions (see `converge/`): inside the transaction that applies a batch, what
//! this server holds of each document is read (`__mmm.meta`, plus local writes not yet
//! observed), each arriving version is decided by its namespace's policy, and the plan is
//! built from the decisions, together with the rows that record them, the clock and the
//! conflict journal, all committed with the link's checkpoint.

use super::observe::{news, observe, with_stored_fields};
use super::plan::{Plan, Tag};
use crate::converge::fields::{delete_rule_wants, merge_documents, FieldStamps};
use crate::converge::policy::{settle_equal, Arriving, Held, Winner};
use crate::converge::stamp::resolution_site;
use crate::converge::{decide, Decision, Deletes, Knowledge, Policy, PolicyMap, Side, Stamp};
use crate::oplog::{Entry, OpKind};
use crate::store::journal::{conflict_id, JournalEntry, VersionRecord};
use crate::store::meta::{self, doc_key, Clock, DocKey, MetaRow};
use bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};
use mongodb::error::Error;
use mongodb::{Client, ClientSession};
use std::collections::HashMap;
use std::sync::Arc;

/// One document's versions in a batch, collapsed: the ops that made it, in order, and the
/// stamp of the last one (intermediate versions never need a name: they are never compared).
#[derive(Debug, Clone, PartialEq)]
pub struct Composite {
    /// The destination namespace.
    pub ns: String,
    /// The namespace on the link's source (where the version can be read back).
    pub src_ns: String,
    pub id: Bson,
    /// The source's ops; empty when the version is only announced (its content is read from
    /// the source).
    pub ops: Vec<RawDocumentBuf>,
    pub stamp: Stamp,
    pub deleted: bool,
    /// Where the version is on the source: reading the source at this cluster time gives it.
    pub src_ts: Timestamp,
    /// What its writer knew, when that differs from the batch's [`Versions::know`] (a batch
    /// is not cut where its writer learned of another version: only the versions made after
    /// carry their own).
    pub know: Option<Knowledge>,
    /// Under the `fields` policy, the version's field stamps: those of the source's own ops
    /// (`FieldStamps::of_ops`), or the row the source installed for a version from elsewhere.
    pub fields: Option<FieldStamps>,
    /// [`Composite::content_hash`], once computed: the link's reader computes it while the
    /// writer applies the previous batch, so that it is not on the writer's path.
    pub content: std::sync::OnceLock<Option<i64>>,
}

fn is_full(op: &RawDocumentBuf) -> bool {
    let e = Entry::new(op);
    matches!(e.op(), Ok(OpKind::Delete)) || e.whole_document().is_some()
}

impl Composite {
    /// The ops from the last one that gives the whole content (the ones before it do not
    /// matter for the result), or None when they are changes to some base.
    pub fn from_full(&self) -> Option<&[RawDocumentBuf]> {
        let i = self.ops.iter().rposition(is_full)?;
        Some(&self.ops[i..])
    }

    /// The version, when it is one op that gives it whole (`Some(None)` for a delete): no need
    /// to read it from the source.
    pub fn carried_whole(&self) -> Option<Option<Document>> {
        let whole = self
            .from_full()
            .is_some_and(|ops| ops.len() == self.ops.len() && ops.len() == 1);
        let e = Entry::new(self.ops.last().filter(|_| whole)?);
        Some(match e.op() {
            Ok(OpKind::Delete) => None,
            _ => e.o().ok().and_then(|o| Document::try_from(o).ok()),
        })
    }

    /// The content hash of the version, when its last op is the whole document (otherwise it
    /// is read back once installed: [`hash_installed`]).
    pub fn content_hash(&self) -> Option<i64> {
        *self.content.get_or_init(|| {
            let last = self.ops.last()?;
            Entry::new(last)
                .whole_document()
                .and_then(crate::doc_hash::content_hash)
        })
    }
}

fn hash_of(doc: &Option<Document>) -> Option<i64> {
    doc.as_ref().and_then(crate::doc_hash::content_hash_of)
}

/// Whether a row's content hash is still to be read back (a live version installed by changes
/// to earlier content).
pub fn needs_read_back(row: &MetaRow) -> bool {
    row.content.is_none() && !row.deleted
}

/// Fills in the content hash of the rows a batch installed by changes to earlier content:
/// their documents are read back in the batch's transaction, after its writes, so what is
/// read is exactly the version the row names.
pub async fn hash_installed(
    client: &Client,
    session: &mut ClientSession,
    rows: &mut [MetaRow],
) -> Result<(), Error> {
    let mut wanted: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        if needs_read_back(r) {
            wanted.entry(r.ns.clone()).or_default().push(i);
        }
    }
    for (ns, indexes) in wanted {
        let (db, coll) = ns.split_once('.').unwrap_or((&ns, ""));
        let ids: Vec<Bson> = indexes.iter().map(|&i| rows[i].id.clone()).collect();
        let mut cursor = client
            .database(db)
            .collection::<RawDocumentBuf>(coll)
            .find(doc! {"_id": {"$in": ids}})
            .session(&mut *session)
            .await?;
        let mut found = HashMap::new();
        while let Some(d) = cursor.next(&mut *session).await {
            let d = d?;
            if let Some(id) = d.get("_id").ok().flatten() {
                if let Ok(id) = Bson::try_from(id.to_raw_bson()) {
                    found.insert(doc_key("", &id).1, crate::doc_hash::content_hash(&d));
                }
            }
        }
        for i in indexes {
            rows[i].content = found.get(&doc_key("", &rows[i].id).1).copied().flatten();
        }
    }
    Ok(())
}

/// Versions a link hands to its destination, with what their writer knew.
#[derive(Debug, Clone, Default)]
pub struct Versions {
    pub composites: Vec<Composite>,
    pub know: Knowledge,
}

/// What a conflict looks like to a resolver function.
#[derive(Debug, Clone)]
pub struct ConflictView {
    pub namespace: String,
    pub id: Bson,
    pub ours: Option<Document>,
    pub theirs: Option<Document>,
    pub ours_stamp: Stamp,
    pub theirs_stamp: Stamp,
}

/// A resolver function (Python's `mmm.Resolver`): the merged document, or None to delete.
pub trait Resolve: Send + Sync {
    fn resolve(&self, conflict: &ConflictView) -> Result<Option<Document>, String>;
}

/// How a link's destination decides.
#[derive(Clone)]
pub struct Converging {
    /// The destination's server id.
    pub site: String,
    /// The link's source, where versions are read back.
    pub src: Client,
    pub src_site: String,
    pub policies: PolicyMap,
    pub resolvers: HashMap<String, Arc<dyn Resolve>>,
    /// The last observation of the destination, continued by the next batch instead of
    /// reading again from the stored position (a cache: any batch may start over from the
    /// stored clock and gets the same result, since observation is a function of the oplog).
    pub observed: Arc<parking_lot::Mutex<Option<super::observe::Observed>>>,
}

impl Converging {
    /// Observes the destination from the stored clock `stored`, continuing the cached
    /// observation when it started at or before that position.
    async fn observe_from(
        &self,
        client: &Client,
        stored: &Clock,
        after: Option<Timestamp>,
        keys: &[(String, Bson)],
    ) -> Result<super::observe::Observed, Error> {
        // Taken, not cloned: the cache can hold a second of local writes, and batches come
        // by the hundred per second. A batch that finds it taken starts from `stored`.
        let cached = self.observed.lock().take();
        let mut base = match cached {
            Some(c) if c.clock.pos >= stored.pos && c.clock.applied >= stored.applied => c,
            _ => super::observe::Observed {
                clock: stored.clone(),
                rows: HashMap::new(),
                entries: 0,
            },
        };
        // Rows observation has stored since are no longer needed from the cache.
        base.rows.retain(|_, r| r.through > stored.applied);
        let policies = &self.policies;
        let more = observe(client, &self.site, &base.clock, after, &|ns: &str| {
            policies.is_fields(ns)
        })
        .await?;
        for (k, mut r) in more.rows {
            // Field stamps observed are changes: the later stretch's add to the earlier's.
            if let Some(now) = r.fields.take() {
                r.fields = Some(match base.rows.remove(&k).and_then(|o| o.fields) {
                    Some(mut before) => {
                        before.join(now);
                        before
                    }
                    None => now,
                });
            }
            base.rows.insert(k, r);
        }
        base.clock = more.clock;
        base.entries += more.entries;
        let wanted = super::observe::Observed {
            clock: base.clock.clone(),
            rows: keys
                .iter()
                .filter_map(|(ns, id)| base.rows.get_key_value(&doc_key(ns, id)))
                .map(|(k, r)| (k.clone(), r.clone()))
                .collect(),
            entries: base.entries,
        };
        *self.observed.lock() = Some(base);
        Ok(wanted)
    }
}

/// A conflict this batch met, for events and status.
#[derive(Debug, Clone)]
pub struct ConflictRecord {
    pub namespace: String,
    pub id: Bson,
    pub ours: Stamp,
    pub theirs: Stamp,
    pub policy: String,
    pub winner: &'static str,
}

/// What one attempt at a batch writes besides its data.
pub struct Prepared {
    pub plan: Plan,
    pub rows: Vec<MetaRow>,
    /// The rows of the batch's documents the transaction read (rows not there are inserted).
    pub stored: HashMap<DocKey, MetaRow>,
    pub clock: Clock,
    pub journal: Vec<JournalEntry>,
    pub conflicts: Vec<ConflictRecord>,
}

/// Field order aside, whether two versions hold the same content.
pub fn same_content(a: &Option<Document>, b: &Option<Document>) -> bool {
    fn canon(v: &Bson) -> Bson {
        match v {
            Bson::Document(d) => {
                let mut keys: Vec<_> = d.iter().collect();
                keys.sort_by(|x, y| x.0.cmp(y.0));
                Bson::Document(
                    keys.into_iter()
                        .map(|(k, v)| (k.clone(), canon(v)))
                        .collect(),
                )
            }
            Bson::Array(a) => Bson::Array(a.iter().map(canon).collect()),
            v => v.clone(),
        }
    }
    match (a, b) {
        (None, None) => true,
        // Equal in order too (the common case) costs no copy.
        (Some(x), Some(y)) if x == y => true,
        (Some(x), Some(y)) => {
            canon(&Bson::Document(x.clone())) == canon(&Bson::Document(y.clone()))
        }
        _ => false,
    }
}

/// A session in a transaction that reads one snapshot (and records nothing unless told to).
pub async fn snapshot_transaction(client: &Client) -> Result<ClientSession, Error> {
    let mut session = client.start_session().await?;
    session
        .start_transaction()
        .with_options(
            mongodb::options::TransactionOptions::builder()
                .read_concern(mongodb::options::ReadConcern::snapshot())
                .build(),
        )
        .await?;
    Ok(session)
}

/// Reads a version back from `src`: the document at `at` (a snapshot read), or, when that
/// time has left the source's history, the document as it is now with the stamp of that
/// later version (installing a later version of the same document is what LWW would end with
/// anyway).
pub async fn read_version(
    src: &Client,
    src_site: &str,
    ns: &str,
    id: &Bson,
    at: Timestamp,
    stamp: &Stamp,
) -> Result<(Option<Document>, Stamp), Error> {
    let (doc, stamp, _) = read_version_fields(src, src_site, ns, id, at, stamp, false).await?;
    Ok((doc, stamp))
}

/// [`read_version`], and under the `fields` policy (`fields`), when the version had to be read
/// as it is now, the field stamps of that later version (its row's, with the writes
/// observation has not stored yet): the ones the link carried describe the older one.
pub async fn read_version_fields(
    src: &Client,
    src_site: &str,
    ns: &str,
    id: &Bson,
    at: Timestamp,
    stamp: &Stamp,
    fields: bool,
) -> Result<(Option<Document>, Stamp, Option<FieldStamps>), Error> {
    let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
    let reply = src
        .database(db)
        .run_command(doc! {
            "find": coll, "filter": {"_id": id.clone()}, "limit": 1, "singleBatch": true,
            "readConcern": {"level": "snapshot", "atClusterTime": at},
        })
        .await;
    if let Ok(reply) = reply {
        let first = reply
            .get_document("cursor")
            .ok()
            .and_then(|c| c.get_array("firstBatch").ok())
            .and_then(|b| b.first().and_then(|d| d.as_document().cloned()));
        return Ok((first, stamp.clone(), None));
    }
    // Too old for a snapshot read: the current version, in one snapshot with its row.
    let mut session = snapshot_transaction(src).await?;
    let clock = meta::read_clock(src, Some(&mut session))
        .await
        .map_err(|e| e.source)?;
    let current = src
        .database(db)
        .collection::<Document>(coll)
        .find_one(doc! {"_id": id.clone()})
        .session(&mut session)
        .await?;
    let stored = meta::read_rows(src, &mut session, &[(ns.to_string(), id.clone())]).await?;
    let key = doc_key(ns, id);
    let mut row = stored.get(&key).cloned();
    if let Some(clock) = clock {
        let observed = observe(
            src,
            src_site,
            &clock,
            session.operation_time(),
            &|n: &str| fields && n == ns,
        )
        .await?;
        if let Some(o) = observed.rows.get(&key) {
            if row.as_ref().is_none_or(|r| r.through < o.through) {
                row = Some(with_stored_fields(o.clone(), row.as_ref()));
            }
        }
    }
    let _ = session.abort_transaction().await;
    let now_fields = fields.then(|| {
        row.as_ref()
            .and_then(|r| {
                r.fields
                    .clone()
                    .or_else(|| Some(FieldStamps::whole(r.stamp.clone(), r.deleted)))
            })
            .unwrap_or_else(|| FieldStamps::whole(stamp.clone(), current.is_none()))
    });
    let found = row
        .map(|r| r.stamp)
        .filter(|s| s > stamp)
        .unwrap_or_else(|| stamp.clone());
    Ok((current, found, now_fields))
}

/// The version `c` brings, as the rules see it (`know`: the batch's, unless it has its own).
fn arriving_of<'a>(c: &'a Composite, know: &'a Knowledge) -> Arriving<'a> {
    Arriving {
        stamp: &c.stamp,
        know: c.know.as_ref().unwrap_or(know),
        deleted: c.deleted,
    }
}

/// The arriving version of a conflict: the op itself when it is the whole version, else read
/// from the source.
async fn theirs_version(
    conv: &Converging,
    c: &Composite,
) -> Result<(Option<Document>, Stamp), Error> {
    match c.carried_whole() {
        Some(doc) => Ok((doc, c.stamp.clone())),
        None => {
            read_version(
                &conv.src,
                &conv.src_site,
                &c.src_ns,
                &c.id,
                c.src_ts,
                &c.stamp,
            )
            .await
        }
    }
}

/// Source reads of conflicting versions that run at once.
const CONCURRENT_VERSION_READS: usize = 16;

/// [`theirs_version`] of each conflict, read a few at a time.
async fn read_theirs_of(
    conv: &Converging,
    conflicting: &[&Composite],
) -> Result<HashMap<DocKey, (Option<Document>, Stamp)>, Error> {
    let mut out = HashMap::new();
    for chunk in conflicting.chunks(CONCURRENT_VERSION_READS) {
        let reads: Vec<_> = chunk
            .iter()
            .map(|c| Box::pin(theirs_version(conv, c)))
            .collect();
        let versions = futures_util::future::try_join_all(reads).await?;
        for (c, version) in chunk.iter().zip(versions) {
            out.insert(doc_key(&c.ns, &c.id), version);
        }
    }
    Ok(out)
}

/// The documents this server holds of `conflicting`, read in the transaction with one query
/// per namespace, keyed as their `_id` is stored (a document found under another `_id`
/// encoding of an equal value is left to [`read_ours`]).
async fn read_ours_of(
    client: &Client,
    session: &mut ClientSession,
    conflicting: &[&Composite],
) -> Result<HashMap<DocKey, Document>, Error> {
    let mut by_ns: HashMap<&str, Vec<Bson>> = HashMap::new();
    for c in conflicting {
        by_ns.entry(c.ns.as_str()).or_default().push(c.id.clone());
    }
    let mut out = HashMap::new();
    for (ns, ids) in by_ns {
        let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
        for chunk in ids.chunks(10_000) {
            let mut cursor = client
                .database(db)
                .collection::<Document>(coll)
                .find(doc! {"_id": {"$in": chunk}})
                .session(&mut *session)
                .await?;
            while let Some(d) = cursor.next(&mut *session).await {
                let d = d?;
                if let Some(id) = d.get("_id") {
                    out.insert(doc_key(ns, id), d);
                }
            }
        }
    }
    Ok(out)
}

async fn read_ours(
    client: &Client,
    session: &mut ClientSession,
    ns: &str,
    id: &Bson,
) -> Result<Option<Document>, Error> {
    let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
    client
        .database(db)
        .collection::<Document>(coll)
        .find_one(doc! {"_id": id.clone()})
        .session(session)
        .await
}

fn winner_name(w: Winner) -> &'static str {
    match w {
        Winner::Ours => "ours",
        Winner::Theirs => "theirs",
        Winner::Rewrite(Side::Ours) => "rewrite-ours",
        Winner::Rewrite(Side::Theirs) => "rewrite-theirs",
        Winner::Rewrite(Side::Custom) => "resolver",
        Winner::AsIs => "as-is",
    }
}

/// Puts a whole version in place; in field mode (`tag`), tagged as a write that came over the
/// link (a version this server keeps, or one its resolver made, is passed without a tag).
fn add_state(plan: &mut Plan, ns: &str, id: &Bson, doc: &Option<Document>, tag: Option<&Tag>) {
    plan.add_state(ns, id, doc.as_ref(), tag);
}

/// Stamps this far ahead of the wall clock here mean a server's clock is wrong: applying them
/// would drag every server's clock forward for good (hybrid clocks never go back), so the link
/// waits, retrying, until the clocks agree.
pub const MAX_CLOCK_SKEW_MS: i64 = 3600 * 1000;

fn refuse_clock_skew(versions: &Versions, src_site: &str) -> Result<(), Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    if let Some(c) = versions
        .composites
        .iter()
        .find(|c| c.stamp.wall_ms() > now + MAX_CLOCK_SKEW_MS)
    {
        return Err(Error::custom(format!(
            "clock skew: a version of {} _id {} from {src_site} is stamped {} s ahead of this host's clock \
             (more than {} s); fix the clock of server {} (NTP); the link retries until then",
            c.ns,
            c.id,
            (c.stamp.wall_ms() - now) / 1000,
            MAX_CLOCK_SKEW_MS / 1000,
            crate::converge::stamp::server_of(&c.stamp.site),
        )));
    }
    Ok(())
}

/// A version merged field by field into the one held (`fields` policy).
struct Merged {
    /// The merge differs from what is held (else nothing is written).
    changed: bool,
    /// A delete rule rewrote the merge as this side's content, under `row`'s fresh stamp.
    rewritten: Option<Side>,
    content: Option<Document>,
    row: MetaRow,
    ours_doc: Option<Document>,
    ours_stamp: Stamp,
    theirs_doc: Option<Document>,
    theirs_stamp: Stamp,
}

impl Merged {
    fn winner(&self) -> &'static str {
        match self.rewritten {
            Some(side) => winner_name(Winner::Rewrite(side)),
            None if self.changed => "merged",
            None => "ours",
        }
    }

    /// Applies the namespace's delete rule to a concurrent merge (see
    /// [`delete_rule_wants`]): where the merge does not already give the content the rule
    /// wants, that content is written whole under `fresh`, a stamp above both versions.
    /// Returns whether it was.
    fn apply_delete_rule(&mut self, rule: Deletes, fresh: impl FnOnce() -> Stamp) -> bool {
        let Some((side, wanted)) =
            delete_rule_wants(rule, self.ours_doc.as_ref(), self.theirs_doc.as_ref())
        else {
            return false;
        };
        if same_content(&wanted, &self.content) {
            return false;
        }
        let stamp = fresh();
        self.row.fields = Some(FieldStamps::whole(stamp.clone(), wanted.is_none()));
        self.row.stamp = stamp;
        self.row.deleted = wanted.is_none();
        self.row.content = hash_of(&wanted);
        self.content = wanted;
        self.changed = true;
        self.rewritten = Some(side);
        true
    }
}

/// Merges the arriving version `c` into the one held (`held`, this server's row, with local
/// writes observation has not stored yet) by their field stamps: `None` when it brings
/// nothing new (the merge is idempotent: a version already merged, a relay of one this server
/// made), unless the two were `concurrent` (the journal wants both versions). Always a merge, never the document-level shortcuts of `decide` (see `fields.rs`).
/// Values of the fields the arriving version wins come from the source's version read back
/// at its position, or from its one op when that op is the whole version.
async fn merge_fields(
    client: &Client,
    session: &mut ClientSession,
    conv: &Converging,
    c: &Composite,
    held: Option<&MetaRow>,
    through: Timestamp,
    concurrent: bool,
) -> Result<Option<Merged>, Error> {
    let Some(mut theirs) = c.fields.clone() else {
        return Err(Error::custom(format!(
            "a version of {} _id {} from {} carries no field stamps, and {} is under the \
             fields policy here: give the namespace the same policy on every link",
            c.ns, c.id, conv.src_site, c.ns
        )));
    };
    let ours = held
        .map(|r| {
            r.fields
                .clone()
                .unwrap_or_else(|| FieldStamps::whole(r.stamp.clone(), r.deleted))
        })
        .unwrap_or_default();
    let changed = ours.merge(&theirs) != ours;
    if !changed && !concurrent {
        return Ok(None);
    }
    let theirs_doc = match c.carried_whole() {
        Some(doc) => doc,
        None => {
            let (doc, _, now) = read_version_fields(
                &conv.src,
                &conv.src_site,
                &c.src_ns,
                &c.id,
                c.src_ts,
                &c.stamp,
                true,
            )
            .await?;
            if let Some(now) = now {
                theirs = theirs.merge(&now);
            }
            doc
        }
    };
    let merged = ours.merge(&theirs);
    if !merged.fits() {
        return Err(Error::custom(format!(
            "{} _id {}: the field stamps of its merged version do not fit in a row (too many \
             top-level fields written since the document was last written whole); replace \
             the document whole to go on",
            c.ns, c.id
        )));
    }
    let ours_doc = read_ours(client, session, &c.ns, &c.id).await?;
    let content = merge_documents(
        &ours,
        ours_doc.as_ref(),
        &theirs,
        theirs_doc.as_ref(),
        &c.id,
    );
    let stamp = merged.max().cloned().unwrap_or_else(|| c.stamp.clone());
    Ok(Some(Merged {
        changed: merged != ours,
        rewritten: None,
        row: MetaRow {
            ns: c.ns.clone(),
            id: c.id.clone(),
            stamp,
            deleted: content.is_none(),
            through,
            fields: Some(merged),
            content: hash_of(&content),
        },
        content,
        ours_doc,
        ours_stamp: ours
            .max()
            .cloned()
            .unwrap_or_else(|| Stamp::new(0, conv.site.clone())),
        theirs_doc,
        theirs_stamp: theirs.max().cloned().unwrap_or_else(|| c.stamp.clone()),
    }))
}

/// Decides every version of `versions` in `session`'s transaction on `client`'s server.
pub async fn prepare(
    client: &Client,
    session: &mut ClientSession,
    conv: &Converging,
    versions: &Versions,
    tag: Option<&Tag>,
) -> Result<Prepared, Error> {
    let clock = meta::read_clock(client, Some(&mut *session))
        .await
        .map_err(|e| e.source)?
        .ok_or_else(|| Error::custom("__mmm.clock is missing on the destination"))?;
    let keys: Vec<(String, Bson)> = versions
        .composites
        .iter()
        .map(|c| (c.ns.clone(), c.id.clone()))
        .collect();
    // Only the batch's documents matter (observation may hold a second of local writes).
    // Observation reads the oplog on a session of its own, causally after this transaction's
    // snapshot, and the rows come from the snapshot: neither waits for the other.
    let after = session.operation_time();
    let (observed, stored) = tokio::try_join!(
        conv.observe_from(client, &clock, after, &keys),
        meta::read_rows(client, session, &keys),
    )?;
    // What this server holds: stored rows, overridden by local writes observation has not
    // stored yet. Those are not written here (observation stores them, and skips any a row
    // written here already accounts for): the transaction stays clear of the clock that
    // observation moves, so the two never fail each other.
    let observed_rows: HashMap<DocKey, MetaRow> = news(&observed.rows, &stored)
        .into_iter()
        .map(|r| (r.key(), r))
        .collect();
    let mut rows: HashMap<DocKey, MetaRow> = HashMap::new();
    refuse_clock_skew(versions, &conv.src_site)?;
    let through = observed.clock.applied;
    let mut fresh = observed.clock.h;
    let mut plan = Plan::default();
    let mut journal = Vec::new();
    let mut conflicts = Vec::new();
    let held_of = |key: &DocKey| -> (Option<MetaRow>, Held) {
        let held_row = observed_rows.get(key).or_else(|| stored.get(key)).cloned();
        let held = Held {
            stamp: held_row.as_ref().map(|r| r.stamp.clone()),
            deleted: held_row.as_ref().is_some_and(|r| r.deleted),
        };
        (held_row, held)
    };
    // The conflicts' versions, read before deciding: a few queries for all of them rather
    // than two round trips each. The transaction's window (from its snapshot to its row
    // writes) is where observation, storing this server's own rows of the same documents,
    // makes it start over; it stays short however many documents conflict.
    let conflicting: Vec<&Composite> = versions
        .composites
        .iter()
        .filter(|c| {
            let policy = conv.policies.for_namespace(&c.ns);
            !matches!(policy, Policy::Fields { .. })
                && matches!(
                    decide(
                        &policy,
                        &conv.site,
                        &held_of(&doc_key(&c.ns, &c.id)).1,
                        &arriving_of(c, &versions.know)
                    ),
                    Decision::Conflict(_)
                )
        })
        .collect();
    let mut ours_read = read_ours_of(client, session, &conflicting).await?;
    let mut theirs_read = read_theirs_of(conv, &conflicting).await?;
    for c in &versions.composites {
        let key = doc_key(&c.ns, &c.id);
        let (held_row, held) = held_of(&key);
        let policy = conv.policies.for_namespace(&c.ns);
        let arriving = arriving_of(c, &versions.know);
        let mut decision = decide(&policy, &conv.site, &held, &arriving);
        fresh = fresh.max(c.stamp.h);
        if let Policy::Fields { deletes } = policy {
            let concurrent = matches!(decision, Decision::Conflict(_));
            if let Some(mut m) = merge_fields(
                client,
                session,
                conv,
                c,
                held_row.as_ref(),
                through,
                concurrent,
            )
            .await?
            {
                let mut resolution = None;
                if concurrent {
                    let above = m.ours_stamp.h.max(m.theirs_stamp.h).max(m.row.stamp.h);
                    let rewrite = || {
                        fresh = fresh.max(above) + 1;
                        Stamp::new(fresh, resolution_site(&conv.site))
                    };
                    if m.apply_delete_rule(deletes, rewrite) {
                        resolution = Some(m.row.stamp.clone());
                    }
                }
                if m.changed {
                    let kept = m.rewritten == Some(Side::Ours);
                    add_state(&mut plan, &c.ns, &c.id, &m.content, tag.filter(|_| !kept));
                }
                if concurrent {
                    let winner = m.winner();
                    let entry = JournalEntry {
                        id: conflict_id(&c.ns, &c.id, &m.ours_stamp, &m.theirs_stamp),
                        ns: c.ns.clone(),
                        doc_id: c.id.clone(),
                        server: conv.site.clone(),
                        from: conv.src_site.clone(),
                        policy: policy.to_string(),
                        winner: winner.to_string(),
                        ours: VersionRecord {
                            stamp: m.ours_stamp.clone(),
                            doc: m.ours_doc,
                            deleted: held.deleted,
                        },
                        theirs: VersionRecord {
                            stamp: m.theirs_stamp.clone(),
                            doc: m.theirs_doc,
                            deleted: c.deleted,
                        },
                        resolution,
                    };
                    conflicts.push(ConflictRecord {
                        namespace: c.ns.clone(),
                        id: c.id.clone(),
                        ours: m.ours_stamp,
                        theirs: m.theirs_stamp,
                        policy: policy.to_string(),
                        winner,
                    });
                    journal.push(entry);
                }
                if m.changed {
                    rows.insert(key, m.row);
                }
            }
            continue;
        }
        let row = |stamp: Stamp, deleted: bool, content: Option<i64>| MetaRow {
            ns: c.ns.clone(),
            id: c.id.clone(),
            stamp,
            deleted,
            through,
            fields: None,
            content: content.filter(|_| !deleted),
        };
        let install_change = |plan: &mut Plan| -> Result<bool, Error> {
            for op in &c.ops {
                plan.add_tagged(&c.ns, op, tag)
                    .map_err(|e| Error::custom(e.0))?;
            }
            Ok(!c.ops.is_empty())
        };
        match decision {
            Decision::Duplicate => continue,
            Decision::FastForward => {
                if !install_change(&mut plan)? {
                    let (doc, stamp) = read_version(
                        &conv.src,
                        &conv.src_site,
                        &c.src_ns,
                        &c.id,
                        c.src_ts,
                        &c.stamp,
                    )
                    .await?;
                    add_state(&mut plan, &c.ns, &c.id, &doc, tag);
                    rows.insert(key, row(stamp, doc.is_none(), hash_of(&doc)));
                    continue;
                }
                rows.insert(key, row(c.stamp.clone(), c.deleted, c.content_hash()));
                continue;
            }
            Decision::Conflict(_) => {}
        }
        // A conflict: both versions' content is wanted (journal, rewrites, equality).
        let ours_stamp = held.stamp.clone().expect("a conflict has a held version");
        let ours_doc = match ours_read.remove(&key) {
            Some(doc) => Some(doc),
            // Not among the documents read together (absent, or stored under an equal `_id`
            // of another type): read on its own.
            None => read_ours(client, session, &c.ns, &c.id).await?,
        };
        let (theirs_doc, theirs_stamp) = match theirs_read.remove(&key) {
            Some(version) => version,
            None => theirs_version(conv, c).await?,
        };
        if same_content(&ours_doc, &theirs_doc) {
            decision = settle_equal(decision, &ours_stamp, &theirs_stamp);
        }
        let Decision::Conflict(winner) = decision else {
            unreachable!()
        };
        let mut resolution = None;
        match winner {
            Winner::Ours => {}
            Winner::Theirs | Winner::AsIs => {
                let content = if winner == Winner::AsIs && !c.ops.is_empty() {
                    install_change(&mut plan)?;
                    c.content_hash()
                } else {
                    add_state(&mut plan, &c.ns, &c.id, &theirs_doc, tag);
                    hash_of(&theirs_doc)
                };
                rows.insert(
                    key.clone(),
                    row(theirs_stamp.clone(), theirs_doc.is_none(), content),
                );
            }
            Winner::Rewrite(side) => {
                let content = match side {
                    Side::Ours => ours_doc.clone(),
                    Side::Theirs => theirs_doc.clone(),
                    Side::Custom => {
                        let view = ConflictView {
                            namespace: c.ns.clone(),
                            id: c.id.clone(),
                            ours: ours_doc.clone(),
                            theirs: theirs_doc.clone(),
                            ours_stamp: ours_stamp.clone(),
                            theirs_stamp: theirs_stamp.clone(),
                        };
                        let resolver = conv
                            .policies
                            .pattern_for(&c.ns)
                            .and_then(|p| conv.resolvers.get(p));
                        match resolver.map(|r| r.resolve(&view)) {
                            Some(Ok(mut d)) => {
                                if let Some(d) = d.as_mut() {
                                    d.insert("_id", c.id.clone());
                                }
                                d
                            }
                            Some(Err(e)) => {
                                log::error!(target: "mmm", "resolver for {} _id {}: {e}; the later version is kept", c.ns, c.id);
                                if theirs_stamp > ours_stamp {
                                    theirs_doc.clone()
                                } else {
                                    ours_doc.clone()
                                }
                            }
                            None => {
                                if theirs_stamp > ours_stamp {
                                    theirs_doc.clone()
                                } else {
                                    ours_doc.clone()
                                }
                            }
                        }
                    }
                };
                fresh = fresh.max(ours_stamp.h).max(theirs_stamp.h) + 1;
                let stamp = Stamp::new(fresh, resolution_site(&conv.site));
                let came = side == Side::Theirs;
                add_state(&mut plan, &c.ns, &c.id, &content, tag.filter(|_| came));
                rows.insert(
                    key.clone(),
                    row(stamp.clone(), content.is_none(), hash_of(&content)),
                );
                resolution = Some(stamp);
            }
        }
        let policy_name = policy.to_string();
        let entry = JournalEntry {
            id: conflict_id(&c.ns, &c.id, &ours_stamp, &theirs_stamp),
            ns: c.ns.clone(),
            doc_id: c.id.clone(),
            server: conv.site.clone(),
            from: conv.src_site.clone(),
            policy: policy_name.clone(),
            winner: winner_name(winner).to_string(),
            ours: VersionRecord {
                stamp: ours_stamp.clone(),
                doc: ours_doc,
                deleted: held.deleted,
            },
            theirs: VersionRecord {
                stamp: theirs_stamp.clone(),
                doc: theirs_doc,
                deleted: c.deleted,
            },
            resolution,
        };
        conflicts.push(ConflictRecord {
            namespace: c.ns.clone(),
            id: c.id.clone(),
            ours: ours_stamp,
            theirs: theirs_stamp,
            policy: policy_name,
            winner: winner_name(winner),
        });
        journal.push(entry);
    }
    let _ = Policy::Detect;
    Ok(Prepared {
        plan,
        rows: rows.into_values().collect(),
        stored,
        clock: observed.clock,
        journal,
        conflicts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(d: Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).unwrap()
    }

    #[test]
    fn a_composite_is_whole_from_its_last_full_op() {
        let c = |ops: Vec<Document>| Composite {
            ns: "db.c".into(),
            src_ns: "db.c".into(),
            id: Bson::Int32(1),
            ops: ops.into_iter().map(raw).collect(),
            stamp: Stamp::new(1, "a"),
            deleted: false,
            src_ts: Timestamp {
                time: 1,
                increment: 1,
            },
            know: None,
            fields: None,
            content: Default::default(),
        };
        let diff = doc! {"op": "u", "ns": "db.c", "o": {"$v": 2, "diff": {"u": {"x": 1}}}, "o2": {"_id": 1}};
        let ins = doc! {"op": "i", "ns": "db.c", "o": {"_id": 1}};
        let repl = doc! {"op": "u", "ns": "db.c", "o": {"_id": 1, "y": 2}, "o2": {"_id": 1}};
        assert!(c(vec![diff.clone()]).from_full().is_none());
        assert_eq!(
            c(vec![diff.clone(), ins.clone(), diff.clone()])
                .from_full()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(c(vec![ins, repl.clone()]).from_full().unwrap().len(), 1);
        assert!(c(vec![]).from_full().is_none());
    }

    #[test]
    fn equal_content_ignores_field_order_but_not_values_or_types() {
        let a = Some(doc! {"_id": 1, "a": {"x": 1, "y": [1, {"p": 1, "q": 2}]}, "b": 2});
        let b = Some(doc! {"b": 2, "_id": 1, "a": {"y": [1, {"q": 2, "p": 1}], "x": 1}});
        assert!(same_content(&a, &b));
        assert!(!same_content(
            &a,
            &Some(doc! {"_id": 1, "a": {"x": 1, "y": [1, {"p": 1, "q": 2}]}, "b": 2.0})
        ));
        assert!(!same_content(&a, &None));
        assert!(same_content(&None, &None));
        // Array order is content.
        assert!(!same_content(
            &Some(doc! {"a": [1, 2]}),
            &Some(doc! {"a": [2, 1]})
        ));
    }
}
