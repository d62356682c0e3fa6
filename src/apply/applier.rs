//! Runs a plan on the destination in one transaction whose first write is the link's checkpoint,
//! so data and position commit together: after any crash the checkpoint says exactly what is
//! applied. In the destination's oplog the batch is one `applyOps` that starts with the
//! checkpoint write, which is how tailers recognise replicated writes and their origin.

use super::copy_progress::CopyProgress;
use super::ddl::DdlCommand;
use super::plan::Plan;
use crate::replicate::provenance::{CHECKPOINTS_COLL, MMM_DB};
use bson::{doc, Bson, DateTime, Document, Timestamp};
use mongodb::error::{Error, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::options::{Acknowledgment, ReadConcern, TransactionOptions, WriteConcern};
use mongodb::{Client, ClientSession};

/// A link's position on its destination (`__mmm.checkpoints`).
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub link: String,
    /// Server id where the ops of the last batch were first written.
    pub origin: String,
    /// Server id of the link's source.
    pub src: String,
    /// Resume reading the source after this ts.
    pub ts: Timestamp,
    /// The last unit applied (units up to it are skipped after a resume from `ts`).
    pub applied: Timestamp,
    /// Running totals kept with the checkpoint, so `mmm status` can show them from anywhere.
    pub ops_applied: u64,
    pub conflicts: u64,
    /// A DDL command about to run outside any transaction (the source entry's ts with it):
    /// after a crash it is run again, idempotently, before anything else.
    pub pending_ddl: Option<(DdlCommand, Timestamp)>,
    /// An initial sync in progress (see `replicate::initial_sync`).
    pub initial_sync: Option<CopyProgress>,
}

impl Checkpoint {
    fn to_document(&self) -> Document {
        let mut d = doc! {
            "_id": &self.link, "origin": &self.origin, "src": &self.src,
            "ts": self.ts, "applied": self.applied, "wall": DateTime::now(),
            "ops_applied": self.ops_applied as i64, "conflicts": self.conflicts as i64,
        };
        if let Some((ddl, ts)) = &self.pending_ddl {
            d.insert("pending_ddl", ddl.to_document());
            d.insert("pending_ts", *ts);
        }
        if let Some(progress) = &self.initial_sync {
            d.insert("initial_sync", progress.to_document());
        }
        d
    }

    fn from_document(d: &Document) -> Option<Checkpoint> {
        Some(Checkpoint {
            link: d.get_str("_id").ok()?.to_string(),
            origin: d.get_str("origin").ok()?.to_string(),
            src: d.get_str("src").ok()?.to_string(),
            ts: d.get_timestamp("ts").ok()?,
            applied: d
                .get_timestamp("applied")
                .unwrap_or_else(|_| d.get_timestamp("ts").unwrap()),
            ops_applied: d.get_i64("ops_applied").unwrap_or(0).max(0) as u64,
            conflicts: d.get_i64("conflicts").unwrap_or(0).max(0) as u64,
            pending_ddl: d
                .get_document("pending_ddl")
                .ok()
                .and_then(DdlCommand::from_document)
                .zip(d.get_timestamp("pending_ts").ok()),
            initial_sync: d
                .get_document("initial_sync")
                .ok()
                .map(CopyProgress::from_document),
        })
    }
}

#[derive(Debug)]
pub enum ApplyError {
    /// Network or server trouble: retry later from the stored checkpoint.
    Retry(String),
    /// A write the destination refused (e.g. a unique index): the link must stop.
    Rejected(String),
}

/// An insert found its document already there (initial-sync overlap, or the same `_id`
/// written on both sides): the batch is sent again with inserts as upserts.
const DUPLICATE_KEY: i32 = 11000;

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::Retry(m) | ApplyError::Rejected(m) => f.write_str(m),
        }
    }
}

impl From<Error> for ApplyError {
    fn from(e: Error) -> Self {
        ApplyError::Retry(e.to_string())
    }
}

pub struct Applier {
    client: Client,
    link: String,
}

fn txn_options() -> TransactionOptions {
    TransactionOptions::builder()
        .read_concern(ReadConcern::snapshot())
        .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
        .build()
}

/// Write errors in a command reply make the whole batch fail (and its transaction abort).
/// `Ok(false)`: an insert met a document that is already there.
fn check_reply(reply: &Document, what: &str) -> Result<bool, ApplyError> {
    if let Ok(errors) = reply.get_array("writeErrors") {
        let first = errors
            .first()
            .and_then(Bson::as_document)
            .cloned()
            .unwrap_or_default();
        if first.get_i32("code").ok() == Some(DUPLICATE_KEY) && what.starts_with("inserting") {
            return Ok(false);
        }
        return Err(ApplyError::Rejected(format!(
            "{what} failed on the destination: {} (code {})",
            first.get_str("errmsg").unwrap_or("write error"),
            first.get("code").cloned().unwrap_or(Bson::Null)
        )));
    }
    Ok(true)
}

fn is_duplicate_key(e: &Error) -> bool {
    matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == DUPLICATE_KEY)
}

/// What one attempt at a batch came to.
enum Attempt {
    Committed,
    /// An insert met an existing document; the transaction was aborted.
    Duplicate,
}

impl Applier {
    pub fn new(client: Client, link: &str) -> Applier {
        Applier {
            client,
            link: link.to_string(),
        }
    }

    pub async fn read_checkpoint(&self) -> Result<Option<Checkpoint>, ApplyError> {
        let coll = self
            .client
            .database(MMM_DB)
            .collection::<Document>(CHECKPOINTS_COLL);
        let found = coll.find_one(doc! {"_id": &self.link}).await?;
        Ok(found.as_ref().and_then(Checkpoint::from_document))
    }

    async fn run_once(
        &self,
        session: &mut ClientSession,
        plan: &Plan,
        checkpoint: &Checkpoint,
        upsert_inserts: bool,
    ) -> Result<Attempt, Error> {
        session
            .start_transaction()
            .with_options(txn_options())
            .await?;
        let checkpoints = self
            .client
            .database(MMM_DB)
            .collection::<Document>(CHECKPOINTS_COLL);
        checkpoints
            .replace_one(doc! {"_id": &self.link}, checkpoint.to_document())
            .upsert(true)
            .session(&mut *session)
            .await?;
        for command in &plan.commands {
            let body = command.body(upsert_inserts);
            let what = format!(
                "{} {}.{}",
                if body.get("insert").ok().flatten().is_some() {
                    "inserting into"
                } else {
                    "writing"
                },
                command.db,
                command.coll
            );
            let reply = match self
                .client
                .database(&command.db)
                .run_raw_command(body)
                .session(&mut *session)
                .await
            {
                Ok(reply) => reply,
                // A server may also fail the whole command on a duplicate in a transaction.
                Err(e) if is_duplicate_key(&e) && what.starts_with("inserting") => {
                    let _ = session.abort_transaction().await;
                    return Ok(Attempt::Duplicate);
                }
                Err(e) => return Err(e),
            };
            match check_reply(&reply, &what) {
                Ok(true) => {}
                Ok(false) => {
                    let _ = session.abort_transaction().await;
                    return Ok(Attempt::Duplicate);
                }
                Err(e) => {
                    let _ = session.abort_transaction().await;
                    return Err(Error::custom(e.to_string()));
                }
            }
        }
        loop {
            match session.commit_transaction().await {
                Ok(()) => return Ok(Attempt::Committed),
                Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) => continue,
                Err(e) => return Err(e),
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
                mongodb::error::ErrorKind::Command(c) if ddl.done_codes.contains(&c.code) => Ok(()),
                mongodb::error::ErrorKind::Command(c) => Err(ApplyError::Rejected(format!(
                    "replicating {} on {} failed: {} (code {})",
                    ddl.body, ddl.db, c.message, c.code
                ))),
                _ => Err(ApplyError::Retry(e.to_string())),
            },
        }
    }

    /// Applies `plan` and moves the checkpoint, atomically. Transient transaction errors
    /// (write conflicts with local writers) are retried here.
    /// Returns the commit's cluster time on the destination when the server reports one.
    pub async fn apply(
        &self,
        plan: &Plan,
        checkpoint: &Checkpoint,
    ) -> Result<Option<Timestamp>, ApplyError> {
        let mut session = self.client.start_session().await?;
        let mut attempts = 0;
        let mut upsert_inserts = false;
        loop {
            attempts += 1;
            match self
                .run_once(&mut session, plan, checkpoint, upsert_inserts)
                .await
            {
                Ok(Attempt::Committed) => return Ok(session.operation_time()),
                Ok(Attempt::Duplicate) => {
                    upsert_inserts = true;
                    continue;
                }
                Err(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) && attempts < 50 => {
                    tokio::time::sleep(std::time::Duration::from_millis(5 * attempts)).await;
                    continue;
                }
                Err(e) => {
                    if let mongodb::error::ErrorKind::Custom(_) = e.kind.as_ref() {
                        return Err(ApplyError::Rejected(e.to_string()));
                    }
                    return Err(ApplyError::Retry(e.to_string()));
                }
            }
        }
    }
}
