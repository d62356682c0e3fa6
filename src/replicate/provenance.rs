//! Where a unit read from a server's oplog came from. Replicated batches are transactions whose
//! first write is a link's checkpoint document in `__mmm.checkpoints`, which names the origin;
//! no field is ever added to user documents (the checkpoint's shape is in `store/`). Pure logic.

use crate::oplog::{Entry, OpKind, Unit};
use crate::store::checkpoints::{origin_of_write, DdlScope};
use crate::store::is_internal_ns;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provenance {
    /// Written by an application on this server.
    Local,
    /// Applied here by mmm; `origin` is the id of the server where it was first written.
    /// `has_data` is false for checkpoint-only batches. `ddl_scope`: the batch announces a DDL
    /// command that mmm runs next (outside any transaction); the DDL entries in that scope that
    /// follow, up to the link's next batch, are replicated too.
    Replicated {
        origin: String,
        has_data: bool,
        ddl_scope: Option<DdlScope>,
    },
    /// mmm's own bookkeeping (anything in the `__mmm` database outside a replicated batch).
    Internal,
}

pub fn classify(unit: &Unit) -> Provenance {
    match unit {
        Unit::Transaction(txn) => {
            // The checkpoint write comes first, possibly after mmm's own DDL (an implicit create).
            let leading = txn
                .ops
                .iter()
                .take_while(|op| Entry::new(op).ns().map(is_internal_ns).unwrap_or(false));
            if let Some((origin, ddl_scope)) = leading.filter_map(|op| origin_of_write(op)).next() {
                let has_data = txn
                    .ops
                    .iter()
                    .any(|op| !Entry::new(op).ns().map(is_internal_ns).unwrap_or(true));
                return Provenance::Replicated {
                    origin,
                    has_data,
                    ddl_scope,
                };
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
                    .unwrap_or_else(|| entry.ns().map(is_internal_ns).unwrap_or(false)),
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

/// The namespace a command entry changes: the collection it names (the source of a rename), or
/// `db.$cmd` for database-wide commands. None for anything but a command.
pub fn ddl_target(unit: &Unit) -> Option<String> {
    let Unit::Single(raw) = unit else { return None };
    let entry = Entry::new(raw);
    if entry.op().ok()? != OpKind::Command {
        return None;
    }
    match entry.command_target_ns().ok()? {
        Some(target) => Some(target),
        None => Some(entry.ns().ok()?.to_string()),
    }
}
