//! Which ops a link carries, renamed into the destination's namespaces. Pure logic.

use super::topology::LinkSpec;
use crate::oplog::{Entry, OpKind};
use crate::store::is_replicable_ns;
use bson::RawDocument;

/// The destination namespace of one op (an oplog entry or a transaction's inner op), if this
/// link carries it. Commands are DDL, handled one at a time outside batches; no-ops carry
/// nothing; mmm's own state, the server's databases and system collections are never carried.
pub fn route_op(link: &LinkSpec, op: &RawDocument) -> Option<String> {
    let entry = Entry::new(op);
    let kind = entry.op().ok()?;
    if !link.ops.contains(kind) || matches!(kind, OpKind::Command | OpKind::Noop) {
        return None;
    }
    let ns = entry.ns().ok()?;
    if !is_replicable_ns(ns) {
        return None;
    }
    link.src_ns.rename(ns, &link.dst_ns)
}
