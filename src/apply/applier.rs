//! Runs a plan on the destination in one transaction whose first write is the link's checkpoint,
//! so data and position commit together: after any crash the checkpoint says exactly what is
//! applied. In the destination's oplog the batch is one `applyOps` that starts with the
//! checkpoint write, which is how tailers recognise replicated writes and their origin.

use super::ddl::DdlCommand;
use super::error::{ApplyError, Refusal};
use super::plan::Plan;
use crate::store::{checkpoints, Checkpoint, StoreError};
use bson::{Bson, Document, Timestamp};
use mongodb::error::{Error, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::options::{Acknowledgment, ReadConcern, TransactionOptions, WriteConcern};
use mongodb::{Client, ClientSession};

/// An insert found its document already there (initial-sync overlap, or the same `_id`
/// written on both sides): the batch is sent again with inserts as upserts.
const DUPLICATE_KEY: i32 = 11000;

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
fn check_reply(reply: &Document, ns: &str, inserting: bool) -> Result<bool, Refusal> {
    if let Ok(errors) = reply.get_array("writeErrors") {
        let first = errors
            .first()
            .and_then(Bson::as_document)
            .cloned()
            .unwrap_or_default();
        let code = first.get_i32("code").unwrap_or(0);
        if code == DUPLICATE_KEY && inserting {
            return Ok(false);
        }
        return Err(Refusal {
            ns: ns.to_string(),
            id: None,
            code,
            code_name: first.get_str("codeName").unwrap_or_default().to_string(),
            message: first.get_str("errmsg").unwrap_or("write error").to_string(),
        });
    }
    Ok(true)
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

    pub async fn read_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        checkpoints::read(&self.client, &self.link).await
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
        checkpoints::write(&self.client, &mut *session, checkpoint).await?;
        for command in &plan.commands {
            let body = command.body(upsert_inserts);
            let inserting = body.get("insert").ok().flatten().is_some();
            let ns = format!("{}.{}", command.db, command.coll);
            let reply = self
                .client
                .database(&command.db)
                .run_raw_command(body)
                .session(&mut *session)
                .await?;
            match check_reply(&reply, &ns, inserting) {
                Ok(true) => {}
                Ok(false) => {
                    let _ = session.abort_transaction().await;
                    return Ok(Attempt::Duplicate);
                }
                Err(refusal) => {
                    let _ = session.abort_transaction().await;
                    return Err(Error::custom(refusal));
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
                mongodb::error::ErrorKind::Command(c) => Err(ApplyError::Refused(Refusal {
                    ns: ddl.db.clone(),
                    id: None,
                    code: c.code,
                    code_name: c.code_name.clone(),
                    message: format!("{}: {}", ddl.body, c.message),
                })),
                _ => Err(ApplyError::Transient(e.to_string())),
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
                    if let Some(refusal) = e.get_custom::<Refusal>() {
                        return Err(ApplyError::Refused(refusal.clone()));
                    }
                    return Err(ApplyError::Transient(e.to_string()));
                }
            }
        }
    }
}
