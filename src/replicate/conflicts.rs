//! Conflicts as links report them: two versions of a document written concurrently (neither
//! writer had seen the other), met by a destination and decided by its namespace's policy (see
//! `converge/` for the decision and `store/journal.rs` for the journal).

use crate::apply::converge::ConflictRecord;
use crate::converge::Stamp;
use bson::Bson;
use std::fmt;

#[derive(Debug, Clone)]
pub struct Conflict {
    /// Where the conflict was met (the link's destination).
    pub server: String,
    /// Where the arriving version came from (the link's source).
    pub from: String,
    pub namespace: String,
    pub id: Bson,
    /// The version the destination held, and the arriving one.
    pub ours: Stamp,
    pub theirs: Stamp,
    pub policy: String,
    /// `ours`, `theirs`, `rewrite-ours`, `rewrite-theirs`, `resolver` or `as-is`.
    pub winner: String,
}

impl Conflict {
    pub fn from_record(server: &str, from: &str, r: ConflictRecord) -> Conflict {
        Conflict {
            server: server.to_string(),
            from: from.to_string(),
            namespace: r.namespace,
            id: r.id,
            ours: r.ours,
            theirs: r.theirs,
            policy: r.policy,
            winner: r.winner.to_string(),
        }
    }
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} _id {} changed concurrently on {} ({}) and on {} ({}); policy {}: {}",
            self.namespace,
            self.id,
            self.server,
            self.ours,
            self.from,
            self.theirs,
            self.policy,
            self.winner
        )
    }
}
