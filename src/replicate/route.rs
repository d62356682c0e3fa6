//! Which ops of a unit a link carries, renamed into the destination's namespaces. Pure logic.

use super::topology::LinkSpec;
use crate::oplog::{Entry, OpKind, OplogError, Unit};
use crate::store::is_replicable_ns;
use bson::{RawDocument, RawDocumentBuf};

/// One op to apply: the destination namespace and the source entry (or inner op), borrowed
/// from the unit (documents are copied once, into the destination's command).
#[derive(Debug, Clone)]
pub struct Routed<'a> {
    pub dst_ns: String,
    pub op: &'a RawDocument,
}

fn route_op<'a>(
    link: &LinkSpec,
    op: &'a RawDocumentBuf,
    out: &mut Vec<Routed<'a>>,
) -> Result<(), OplogError> {
    let entry = Entry::new(op);
    let kind = entry.op()?;
    // Commands are DDL, handled one at a time outside batches (link.rs); no-ops carry nothing.
    if !link.ops.contains(kind) || matches!(kind, OpKind::Command | OpKind::Noop) {
        return Ok(());
    }
    let ns = entry.ns()?;
    // mmm's own state, the server's databases and system collections: never carried.
    if !is_replicable_ns(ns) {
        return Ok(());
    }
    if let Some(dst_ns) = link.src_ns.rename(ns, &link.dst_ns) {
        out.push(Routed { dst_ns, op });
    }
    Ok(())
}

/// The ops of `unit` this link replicates, in order.
pub fn route<'a>(link: &LinkSpec, unit: &'a Unit) -> Result<Vec<Routed<'a>>, OplogError> {
    let mut out = Vec::new();
    match unit {
        Unit::Single(op) => route_op(link, op, &mut out)?,
        Unit::Transaction(txn) => {
            for op in &txn.ops {
                route_op(link, op, &mut out)?;
            }
        }
    }
    Ok(out)
}
