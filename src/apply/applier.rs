//! Runs a plan on the destination in one transaction whose first write is the link's checkpoint,
//! so data and position commit together: after any crash the checkpoint says exactly what is
//! applied. In the destination's oplog the batch is one `applyOps` that starts with the
//! checkpoint write, which is how tailers recognise replicated writes and their origin.
//!
//! Errors are sorted by what retrying can change. Transient trouble (network, failover, write
//! conflicts) is retried, here or by the link from its checkpoint. A write the destination
//! refuses is found out exactly (its command and statement) and either stops the link or, for a
//! link that journals refusals, is left out of the batch and recorded in `__mmm.rejected` in the
//! same transaction as the checkpoint that moves past it.

use super::converge::{self, ConflictRecord, Converging, Versions};
use super::ddl::DdlCommand;
use super::error::{
    code_name, describe, is_transient, refusal_of, ApplyError, Refusal, UNAUTHORIZED,
};
use super::plan::{Plan, Tag};
use crate::store::{checkpoints, journal, meta, rejected, Checkpoint, Rejected, StoreError};
use bson::{Document, RawDocumentBuf, Timestamp};
use mongodb::error::{
    Error, ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT,
};
use mongodb::options::{Acknowledgment, ReadConcern, TransactionOptions, WriteConcern};
use mongodb::{Client, ClientSession};
use std::collections::HashSet;
use std::time::Duration;

/// DuplicateKey: an insert found its document already there (initial-sync overlap, or the same
/// `_id` written on both sides): the batch is sent again with inserts as upserts.
const DUPLICATE_KEY: i32 = 11000;
/// Attempts at a batch that meets transient transaction errors before the link takes over (and
/// shows the error in its status while it backs off): many for write conflicts with local
/// writers, a few for a dropped connection, none when no server could be selected (that wait
/// has already been long).
fn local_attempts(e: &Error) -> u64 {
    match e.kind.as_ref() {
        ErrorKind::ServerSelection { .. } => 1,
        ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => 4,
        _ => 50,
    }
}
/// NoSuchTransaction: the server no longer has the transaction (it aborted it).
const NO_SUCH_TRANSACTION: i32 = 251;

fn command_code(e: &Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// Commits retried while their result is unknown.
const COMMIT_ATTEMPTS: usize = 3;
/// A refused statement larger than this is journaled as its `_id` and size only.
const MAX_JOURNALED_STATEMENT: usize = 1024 * 1024;

/// What the destination does with a write it refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnReject {
    /// Stop the link (`failed`): a person decides.
    #[default]
    Fail,
    /// Journal the op in `__mmm.rejected` and go on.
    Journal,
}

/// What an applied batch came to.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// The commit's cluster time on the destination, when the server reports one.
    pub commit_ts: Option<Timestamp>,
    /// Ops refused and journaled instead of applied.
    pub rejected: u64,
    /// Conflicts the batch met (versions).
    pub conflicts: Vec<ConflictRecord>,
}

/// What a batch applies: a plan as it is, or versions decided in the transaction.
#[derive(Clone, Copy)]
pub enum Batch<'a> {
    Plan(&'a Plan),
    Versions {
        versions: &'a Versions,
        converging: &'a Converging,
        tag: Option<&'a Tag>,
    },
}

pub struct Applier {
    client: Client,
    link: String,
    on_reject: OnReject,
    /// The link's lease term: every checkpoint write is fenced by it (see `store/leases.rs`).
    fence: Option<i64>,
    /// The destination's turns in this process (see `turns.rs`).
    turns: Option<super::turns::Turns>,
}

fn txn_options() -> TransactionOptions {
    TransactionOptions::builder()
        .read_concern(ReadConcern::snapshot())
        .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
        .build()
}

/// Why one attempt at a batch did not commit.
enum Failed {
    /// An insert met a document that is already there.
    Duplicate,
    /// The destination refused a statement: command index, statement index when known.
    Refused {
        command: usize,
        statement: Option<usize>,
        refusal: Refusal,
        /// The journal entry for the refused statement, when it is known.
        entry: Option<Rejected>,
    },
    Driver(Error),
}

impl From<Error> for Failed {
    fn from(e: Error) -> Self {
        Failed::Driver(e)
    }
}

/// How the next attempt sends the batch.
#[derive(Default)]
struct Mode {
    upsert_inserts: bool,
    /// One statement per command, so that a refusal reported for a whole command (with no
    /// statement index) names its statement.
    split: bool,
    /// Statements left out, journaled instead: (command, statement).
    skip: HashSet<(usize, usize)>,
    journal: Vec<Rejected>,
}

/// The first write error of a command reply: (index, code, codeName, errmsg).
fn first_write_error(reply: &Document) -> Option<(usize, i32, String, String)> {
    let first = reply
        .get_array("writeErrors")
        .ok()?
        .first()?
        .as_document()?;
    Some((
        first.get_i32("index").unwrap_or(0).max(0) as usize,
        first.get_i32("code").unwrap_or(0),
        first.get_str("codeName").unwrap_or_default().to_string(),
        first.get_str("errmsg").unwrap_or("write error").to_string(),
    ))
}

/// The commands of one attempt, each with the original indices of its statements.
fn bodies(plan: &Plan, mode: &Mode) -> Vec<(usize, RawDocumentBuf, Vec<usize>)> {
    let mut out = Vec::new();
    for (ci, command) in plan.commands.iter().enumerate() {
        let kept = |i: usize| !mode.skip.contains(&(ci, i));
        if mode.split {
            for i in (0..command.statement_count()).filter(|i| kept(*i)) {
                if let Some((body, idx)) = command.body_keeping(mode.upsert_inserts, |j| j == i) {
                    out.push((ci, body, idx));
                }
            }
        } else if let Some((body, idx)) = command.body_keeping(mode.upsert_inserts, kept) {
            out.push((ci, body, idx));
        }
    }
    out
}

impl Applier {
    pub fn new(client: Client, link: &str) -> Applier {
        Applier {
            client,
            link: link.to_string(),
            on_reject: OnReject::Fail,
            fence: None,
            turns: None,
        }
    }

    /// Each batch's transaction takes its turn with this process's stored observation of the
    /// destination.
    pub fn taking_turns(mut self, turns: super::turns::Turns) -> Applier {
        self.turns = Some(turns);
        self
    }

    /// Every checkpoint this applier writes is conditional on lease term `term`.
    pub fn fenced(mut self, term: Option<i64>) -> Applier {
        self.fence = term;
        self
    }

    pub fn on_reject(mut self, on_reject: OnReject) -> Applier {
        self.on_reject = on_reject;
        self
    }

    pub async fn read_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        checkpoints::read(&self.client, &self.link).await
    }

    async fn run_once(
        &self,
        session: &mut ClientSession,
        batch: Batch<'_>,
        checkpoint: &Checkpoint,
        mode: &Mode,
    ) -> Result<Option<converge::Prepared>, Failed> {
        session
            .start_transaction()
            .with_options(txn_options())
            .await?;
        let prepared = match batch {
            Batch::Plan(_) => None,
            Batch::Versions {
                versions,
                converging,
                tag,
            } => Some(converge::prepare(&self.client, session, converging, versions, tag).await?),
        };
        let plan = match (&prepared, batch) {
            (Some(p), _) => &p.plan,
            (None, Batch::Plan(plan)) => plan,
            (None, _) => unreachable!("versions are always prepared"),
        };
        let covering;
        let checkpoint = match &prepared {
            Some(p) => {
                covering = covering_rows(checkpoint, &p.rows);
                &covering
            }
            None => checkpoint,
        };
        checkpoints::write(&self.client, &mut *session, checkpoint, self.fence).await?;
        rejected::write(&self.client, &mut *session, &mode.journal).await?;
        // Rows are written before the data where they can be (their content hash is known):
        // observation, storing this server's local writes, writes some of the same rows, and
        // whichever transaction writes a row second fails and starts over. The sooner this one
        // holds its rows, the less a conflict with observation throws away (a batch is long,
        // an observation is short).
        let mut read_back = Vec::new();
        if let Some(p) = &prepared {
            journal::write(&self.client, session, &p.journal).await?;
            let (unknown, known): (Vec<&meta::MetaRow>, Vec<&meta::MetaRow>) =
                p.rows.iter().partition(|r| converge::needs_read_back(r));
            meta::write_rows_over(&self.client, session, known, Some(&p.stored)).await?;
            read_back = unknown.into_iter().cloned().collect();
        }
        for (ci, body, statements) in bodies(plan, mode) {
            let command = &plan.commands[ci];
            let inserting = command.is_insert() && !mode.upsert_inserts;
            let ns = format!("{}.{}", command.db, command.coll);
            let result = self
                .client
                .database(&command.db)
                .run_raw_command(body)
                .session(&mut *session)
                .await;
            // mongod reports a refused statement in `writeErrors` (with its index); a server
            // may also answer the whole command with ok: 0. Both are handled alike.
            let (statement, code, code_name, message) = match result {
                Ok(reply) => match first_write_error(&reply) {
                    None => continue,
                    Some((index, code, name, msg)) => {
                        let name = match name.as_str() {
                            "" => code_name(code).to_string(),
                            _ => name,
                        };
                        (statements.get(index).copied(), code, name, msg)
                    }
                },
                Err(e) => match refusal_of(&e, &ns) {
                    None => return Err(Failed::Driver(e)),
                    Some(r) => {
                        let single = (statements.len() == 1).then(|| statements[0]);
                        (single, r.code, r.code_name, r.message)
                    }
                },
            };
            if code == DUPLICATE_KEY && inserting {
                return Err(Failed::Duplicate);
            }
            let refusal = Refusal {
                id: statement.and_then(|i| command.statement_id(i)),
                ns,
                code,
                code_name,
                message,
            };
            let entry = statement.map(|i| self.journal_entry(plan, ci, i, &refusal, checkpoint));
            return Err(Failed::Refused {
                command: ci,
                statement,
                refusal,
                entry,
            });
        }
        if let Some(p) = &prepared {
            // After the writes, so that versions installed as changes can be read back whole.
            converge::hash_installed(&self.client, session, &mut read_back).await?;
            meta::write_rows_over(&self.client, session, &read_back, Some(&p.stored)).await?;
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            match session.commit_transaction().await {
                Ok(()) => return Ok(prepared),
                Err(e)
                    if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
                        && attempts < COMMIT_ATTEMPTS =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Runs a DDL command outside a transaction; "already done" errors count as success.
    pub async fn run_ddl(&self, ddl: &DdlCommand) -> Result<(), ApplyError> {
        match self
            .client
            .database(&ddl.db)
            .run_command(ddl.body.clone())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match e.kind.as_ref() {
                ErrorKind::Command(c) if ddl.done_codes.contains(&c.code) => Ok(()),
                _ => match refusal_of(&e, &ddl.db) {
                    Some(mut refusal) => {
                        refusal.message = format!("{}: {}", ddl.body, refusal.message);
                        Err(ApplyError::Refused(refusal))
                    }
                    None => Err(ApplyError::Transient(describe(&e))),
                },
            },
        }
    }

    /// The journal entry for a refused statement.
    fn journal_entry(
        &self,
        plan: &Plan,
        command: usize,
        statement: usize,
        refusal: &Refusal,
        checkpoint: &Checkpoint,
    ) -> Rejected {
        let raw = plan.commands[command].statement(statement);
        let size = raw.map_or(0, |r| r.as_bytes().len());
        let statement_doc = match raw.and_then(|r| Document::try_from(r).ok()) {
            Some(doc) if size <= MAX_JOURNALED_STATEMENT => doc,
            _ => {
                let mut d = Document::new();
                if let Some(id) = &refusal.id {
                    d.insert("_id", id.clone());
                }
                d.insert("omitted_bytes", size as i64);
                d
            }
        };
        Rejected {
            link: checkpoint.link.clone(),
            ns: refusal.ns.clone(),
            id: refusal.id.clone(),
            statement: statement_doc,
            code: refusal.code,
            code_name: refusal.code_name.clone(),
            message: refusal.message.clone(),
            source_ts: checkpoint.applied,
        }
    }

    /// Applies `plan` and moves the checkpoint, atomically. Transient transaction errors
    /// (write conflicts with local writers) are retried here; refused writes stop the batch or
    /// are journaled (see [`OnReject`]).
    pub async fn apply(&self, plan: &Plan, checkpoint: &Checkpoint) -> Result<Applied, ApplyError> {
        self.apply_batch(Batch::Plan(plan), checkpoint).await
    }

    /// [`Applier::apply`] for a plan or for versions decided in the transaction.
    pub async fn apply_batch(
        &self,
        batch: Batch<'_>,
        checkpoint: &Checkpoint,
    ) -> Result<Applied, ApplyError> {
        let mut mode = Mode::default();
        let mut attempts = 0;
        loop {
            attempts += 1;
            // Journaled ops count as rejected, not applied.
            let mut written = checkpoint.clone();
            written.rejected += mode.journal.len() as u64;
            written.ops_applied = written
                .ops_applied
                .saturating_sub(mode.journal.len() as u64);
            // A fresh session per attempt: whatever state a failed attempt left its
            // transaction in (a connection lost mid-commit) cannot spill into the next.
            let mut session = self
                .client
                .start_session()
                .await
                .map_err(|e| ApplyError::Transient(describe(&e)))?;
            let started = std::time::Instant::now();
            let turn = match &self.turns {
                Some(turns) => Some(turns.batch().await),
                None => None,
            };
            let outcome = self.run_once(&mut session, batch, &written, &mode).await;
            drop(turn);
            // A refused write leaves the server reachable: end its transaction now, so its locks
            // do not stand in the way of the next attempt. (After network trouble, dropping
            // the session aborts what is left in the background.)
            if matches!(outcome, Err(Failed::Duplicate | Failed::Refused { .. })) {
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), session.abort_transaction()).await;
            }
            match outcome {
                Ok(prepared) => {
                    // Logged once committed: an attempt that starts over meets them again.
                    for entry in prepared.iter().flat_map(|p| &p.journal) {
                        log::warn!(target: "mmm", "conflict: {}", entry.summary());
                    }
                    return Ok(Applied {
                        commit_ts: session.operation_time(),
                        rejected: mode.journal.len() as u64,
                        conflicts: prepared.map(|p| p.conflicts).unwrap_or_default(),
                    });
                }
                Err(Failed::Duplicate) => mode.upsert_inserts = true,
                Err(Failed::Refused {
                    command,
                    statement,
                    refusal,
                    entry,
                }) => {
                    let Some(statement) = statement else {
                        if mode.split {
                            return Err(ApplyError::Refused(refusal));
                        }
                        mode.split = true;
                        continue;
                    };
                    if self.on_reject == OnReject::Fail
                        || refusal.code == UNAUTHORIZED
                        || !refusal.ns.contains('.')
                    {
                        return Err(ApplyError::Refused(refusal));
                    }
                    log::warn!(target: "mmm", "link {}: journaled in __mmm.rejected: {refusal}", self.link);
                    let Some(entry) = entry else {
                        return Err(ApplyError::Refused(refusal));
                    };
                    mode.journal.push(entry);
                    mode.skip.insert((command, statement));
                }
                Err(Failed::Driver(e)) if command_code(&e) == Some(NO_SUCH_TRANSACTION) => {
                    return Err(ApplyError::Overlong(format!(
                        "the destination ended a batch's transaction {:.1} s after it began, \
                         before its commit (longer than its transactionLifetimeLimitSeconds?): {}",
                        started.elapsed().as_secs_f64(),
                        describe(&e)
                    )));
                }
                Err(Failed::Driver(e))
                    if e.contains_label(TRANSIENT_TRANSACTION_ERROR)
                        && attempts < local_attempts(&e) =>
                {
                    log::debug!(target: "mmm", "link {}: attempt {attempts} at a batch failed, retrying: {}", self.link, describe(&e));
                    tokio::time::sleep(Duration::from_millis(5 * attempts)).await;
                }
                Err(Failed::Driver(e)) if e.get_custom::<checkpoints::Fenced>().is_some() => {
                    let fenced = e
                        .get_custom::<checkpoints::Fenced>()
                        .expect("checked above");
                    return Err(ApplyError::Transient(format!("lost the lease: {fenced}")));
                }
                Err(Failed::Driver(e)) => {
                    return Err(match refusal_of(&e, crate::store::CHECKPOINTS_NS) {
                        Some(refusal) if !is_transient(&e) => ApplyError::Refused(refusal),
                        _ => ApplyError::Transient(describe(&e)),
                    })
                }
            }
        }
    }
}

/// `checkpoint` with `seen` covering the stamp of every row the batch writes, and saying so
/// (`Checkpoint::seen_covers_rows`): observation then witnesses the batch from its checkpoint
/// alone instead of reading a row per document back from the oplog.
fn covering_rows(checkpoint: &Checkpoint, rows: &[meta::MetaRow]) -> Checkpoint {
    let mut c = checkpoint.clone();
    let seen = c.seen.get_or_insert_with(Default::default);
    for r in rows {
        seen.see(&r.stamp);
    }
    c.seen_covers_rows = true;
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn plan() -> Plan {
        let mut p = Plan::default();
        for (ns, id) in [("db.a", 0), ("db.a", 1), ("db.a", 2), ("db.b", 3)] {
            let op = RawDocumentBuf::from_document(&doc! {"op": "i", "ns": ns, "o": {"_id": id}})
                .unwrap();
            p.add(ns, &op).unwrap();
        }
        p
    }

    fn shape(bodies: Vec<(usize, RawDocumentBuf, Vec<usize>)>) -> Vec<(usize, usize, Vec<usize>)> {
        bodies
            .into_iter()
            .map(|(c, body, idx)| {
                let n = body.get_array("documents").unwrap().into_iter().count();
                (c, n, idx)
            })
            .collect()
    }

    #[test]
    fn a_split_attempt_sends_one_statement_per_command_and_leaves_out_the_journaled() {
        let p = plan();
        let mut mode = Mode::default();
        assert_eq!(
            shape(bodies(&p, &mode)),
            vec![(0, 3, vec![0, 1, 2]), (1, 1, vec![0])]
        );
        mode.skip.insert((0, 1));
        assert_eq!(
            shape(bodies(&p, &mode)),
            vec![(0, 2, vec![0, 2]), (1, 1, vec![0])]
        );
        mode.split = true;
        assert_eq!(
            shape(bodies(&p, &mode)),
            vec![(0, 1, vec![0]), (0, 1, vec![2]), (1, 1, vec![0])]
        );
        mode.skip.insert((1, 0));
        assert_eq!(shape(bodies(&p, &mode)).len(), 2);
    }
}
