//! The `__mmm` database, which exactly-once replication rests on: its name, every collection in
//! it, the shape of their documents, the namespace rules (what is mmm's own, what is the
//! server's) and link ids. `apply/` and `replicate/` read and write `__mmm` only through this
//! module; Python gets the names and helpers through `mmm._mmm`.

use mongodb::Client;

pub mod checkpoints;
pub mod copy_progress;
pub mod journal;
pub mod lease_keeper;
pub mod leases;
pub mod links;
pub mod meta;
pub mod namespaces;
pub mod rejected;
pub mod verify;

pub use checkpoints::{Checkpoint, DdlCommand};
pub use copy_progress::CopyProgress;
pub use links::link_id;
pub use meta::{CLOCK, META};
pub use namespaces::{is_internal_ns, is_replicable_ns, refuse_link_namespace};
pub use rejected::Rejected;

/// The database that holds mmm's state on every server.
pub const MMM_DB: &str = "__mmm";
/// One document per link on its destination: where the link resumes (see [`Checkpoint`]).
pub const CHECKPOINTS: &str = "checkpoints";
/// Links stored by `mmm replicate` on their destination.
pub const LINKS: &str = "links";
/// Ops a destination refused, kept for a person by links with `on_reject="journal"`.
pub const REJECTED: &str = "rejected";
/// Named positions of Python tailers that store their checkpoint in MongoDB.
pub const TAILER_CHECKPOINTS: &str = "tailer_checkpoints";
/// Where each verification (`mmm verify`) stands, to resume it, and its last result.
pub const VERIFY: &str = "verify";
/// One document per tailer name or link: who may work (see `leases.rs`).
pub const LEASES: &str = leases::LEASES;

/// `__mmm.checkpoints`, as it appears in oplog entries.
pub const CHECKPOINTS_NS: &str = "__mmm.checkpoints";

/// NamespaceExists (MongoDB's src/mongo/base/error_codes.yml).
const NAMESPACE_EXISTS: i32 = 48;

/// Reading or preparing `__mmm` failed; `source` is the driver's error (callers decide whether
/// it is worth a retry).
#[derive(Debug)]
pub struct StoreError {
    pub what: &'static str,
    pub source: mongodb::error::Error,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for StoreError {}

/// Creates `__mmm.<name>` if missing: a collection cannot be created inside the transactions
/// that write to it on every MongoDB version.
pub async fn ensure_collection(client: &Client, name: &str) -> Result<(), StoreError> {
    match client.database(MMM_DB).create_collection(name).await {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == NAMESPACE_EXISTS) => {
            Ok(())
        }
        Err(source) => Err(StoreError {
            what: "creating mmm's collections",
            source,
        }),
    }
}
