//! The `__mmm` database, which exactly-once replication rests on: its name, every collection in
//! it, the shape of their documents, the namespace rules (what is mmm's own, what is the
//! server's) and link ids. `apply/` and `replicate/` read and write `__mmm` only through this
//! module; Python gets the names and helpers through `mmm._mmm`.

pub mod checkpoints;
pub mod copy_progress;
pub mod links;
pub mod namespaces;
pub mod rejected;

pub use checkpoints::{Checkpoint, DdlCommand, StoreError};
pub use copy_progress::CopyProgress;
pub use links::link_id;
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

/// `__mmm.checkpoints`, as it appears in oplog entries.
pub const CHECKPOINTS_NS: &str = "__mmm.checkpoints";
