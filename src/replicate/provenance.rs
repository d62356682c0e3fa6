//! Where a unit read from a server's oplog came from. Replicated batches are transactions whose
//! first write is a link's checkpoint document in `__mmm.checkpoints`, which names the origin;
//! no field is ever added to user documents. Pure logic.

use crate::oplog::{Entry, OpKind, Unit};
use bson::RawDocument;

pub const MMM_DB: &str = "__mmm";
pub const CHECKPOINTS_COLL: &str = "checkpoints";
pub const CHECKPOINTS_NS: &str = "__mmm.checkpoints";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provenance {
    /// Written by an application on this server.
    Local,
    /// Applied here by mmm; `origin` is the id of the server where it was first written.
    /// `has_data` is false for checkpoint-only batches.
    Replicated { origin: String, has_data: bool },
    /// mmm's own bookkeeping (anything in the `__mmm` database outside a replicated batch).
    Internal,
}

pub fn is_internal_ns(ns: &str) -> bool {
    ns == MMM_DB || ns.starts_with("__mmm.")
}

fn origin_of_checkpoint_write(op: &RawDocument) -> Option<String> {
    let entry = Entry::new(op);
    if entry.ns().ok()? != CHECKPOINTS_NS {
        return None;
    }
    // The checkpoint is written as a replacement (or inserted): `o` is the whole document.
    let o = match entry.op().ok()? {
        OpKind::Insert | OpKind::Update => entry.o().ok()?,
        _ => return None,
    };
    o.get_str("origin").ok().map(|s| s.to_string())
}

pub fn classify(unit: &Unit) -> Provenance {
    match unit {
        Unit::Transaction(txn) => {
            // The checkpoint write comes first, possibly after mmm's own DDL (an implicit create).
            let leading = txn.ops.iter().take_while(|op| {
                Entry::new(op)
                    .ns()
                    .map(|ns| ns.starts_with("__mmm."))
                    .unwrap_or(false)
            });
            if let Some(origin) = leading
                .filter_map(|op| origin_of_checkpoint_write(op))
                .next()
            {
                let has_data = txn
                    .ops
                    .iter()
                    .any(|op| !Entry::new(op).ns().map(is_internal_ns).unwrap_or(true));
                return Provenance::Replicated { origin, has_data };
            }
            Provenance::Local
        }
        Unit::Single(raw) => {
            let entry = Entry::new(raw);
            let internal = match entry.op() {
                Ok(OpKind::Command) => entry
                    .command_target_ns()
                    .ok()
                    .flatten()
                    .map(|ns| is_internal_ns(&ns))
                    .unwrap_or_else(|| {
                        entry
                            .ns()
                            .map(|ns| ns.starts_with("__mmm."))
                            .unwrap_or(false)
                    }),
                _ => entry.ns().map(is_internal_ns).unwrap_or(false),
            };
            if internal {
                Provenance::Internal
            } else {
                Provenance::Local
            }
        }
    }
}
