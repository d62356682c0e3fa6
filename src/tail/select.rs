//! Which ops of a unit go to which subscriptions, and the batch handed to consumers.
//!
//! Ops inside a transaction are delivered one by one, each as a standalone entry carrying the
//! transaction's `ts`, `t`, `wall`, `lsid` and `txnNumber`. The `applyOps` wrapper itself goes
//! only to subscriptions on exactly `admin.$cmd` with op `c`.

use crate::oplog::{Entry, NsPattern, OpKind, OplogError, Subscriptions, Txn, Unit};
use bson::{RawDocument, RawDocumentBuf, Timestamp};

/// Ops that matched, ready to decode in one call (`bson.decode_all` on `docs`).
#[derive(Debug, Default)]
pub struct Delivery {
    /// The matched ops as concatenated BSON documents.
    pub docs: Vec<u8>,
    /// Per op: the ids of the subscriptions it matched.
    pub subscriptions: Vec<Vec<u32>>,
    /// Per op: its `ts` (a transaction's ops share the commit's `ts`).
    pub ts: Vec<Timestamp>,
    /// Per op: true when it is the last op of its unit, so a checkpoint may move to its `ts`.
    pub unit_end: Vec<bool>,
    /// Where a consumer may checkpoint once every op here is handled (covers ops that
    /// matched nothing and so are not in this delivery).
    pub checkpoint: Option<Timestamp>,
    /// Oplog entries read to produce this delivery, matched or not.
    pub entries_read: u64,
}

impl Delivery {
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    fn push(&mut self, doc: &RawDocument, subs: Vec<u32>, ts: Timestamp) {
        self.docs.extend_from_slice(doc.as_bytes());
        self.subscriptions.push(subs);
        self.ts.push(ts);
        self.unit_end.push(false);
    }

    fn end_unit(&mut self, had_ops_before: usize) {
        if self.len() > had_ops_before {
            *self.unit_end.last_mut().unwrap() = true;
        }
    }
}

pub struct Selector {
    subs: Subscriptions,
    /// Subscriptions on exactly `admin.$cmd` that take op `c` (they see applyOps wrappers).
    wrapper_subs: Vec<u32>,
}

impl Selector {
    pub fn new(subs: Subscriptions) -> Selector {
        let wrapper_subs = (0..subs.len())
            .filter(|id| {
                let (pattern, ops) = subs.get(*id).unwrap();
                ops.contains(OpKind::Command)
                    && pattern == &NsPattern::parse("admin.$cmd").unwrap_or(NsPattern::All)
            })
            .map(|id| id as u32)
            .collect();
        Selector { subs, wrapper_subs }
    }

    fn matching(&self, entry: &Entry) -> Result<Vec<u32>, OplogError> {
        let op = entry.op()?;
        let target;
        let ns = if op == OpKind::Command {
            target = entry.command_target_ns()?;
            target.as_deref().unwrap_or(entry.ns()?)
        } else {
            entry.ns()?
        };
        Ok(self.subs.matching(ns, op).map(|id| id as u32).collect())
    }

    /// Adds the ops of `unit` that some subscription wants to `out`.
    pub fn select(&self, unit: &Unit, out: &mut Delivery) -> Result<(), OplogError> {
        let before = out.len();
        match unit {
            Unit::Single(raw) => {
                let entry = Entry::new(raw);
                let subs = self.matching(&entry)?;
                if !subs.is_empty() {
                    out.push(raw, subs, entry.ts()?);
                }
            }
            Unit::Transaction(txn) => {
                if !self.wrapper_subs.is_empty() {
                    let wrapper = wrapper_entry(txn);
                    out.push(&wrapper, self.wrapper_subs.clone(), txn.ts);
                }
                for inner in &txn.ops {
                    let subs = self.matching(&Entry::new(inner))?;
                    if !subs.is_empty() {
                        out.push(&standalone(inner, txn), subs, txn.ts);
                    }
                }
            }
        }
        out.end_unit(before);
        Ok(())
    }
}

fn append_txn_fields(doc: &mut RawDocumentBuf, txn: &Txn) {
    doc.append("ts", txn.ts);
    if let Some(t) = txn.t {
        doc.append("t", t);
    }
    if let Some(wall) = txn.wall {
        doc.append("wall", wall);
    }
    if let Some(lsid) = &txn.lsid {
        if let Ok(raw) = RawDocumentBuf::from_document(lsid) {
            doc.append("lsid", raw);
        }
    }
    if let Some(n) = txn.txn_number {
        doc.append("txnNumber", n);
    }
}

/// An inner op of a transaction as a standalone entry with the transaction's fields.
fn standalone(inner: &RawDocument, txn: &Txn) -> RawDocumentBuf {
    let mut doc = RawDocumentBuf::new();
    for (key, value) in inner.into_iter().flatten() {
        if !matches!(key, "ts" | "t" | "wall" | "lsid" | "txnNumber") {
            doc.append(key, value.to_raw_bson());
        }
    }
    append_txn_fields(&mut doc, txn);
    doc
}

/// The `applyOps` command entry of a committed transaction, rebuilt from its ops.
fn wrapper_entry(txn: &Txn) -> RawDocumentBuf {
    let mut ops = bson::RawArrayBuf::new();
    for op in &txn.ops {
        ops.push(op.clone());
    }
    let mut o = RawDocumentBuf::new();
    o.append("applyOps", ops);
    let mut doc = RawDocumentBuf::new();
    doc.append("op", "c");
    doc.append("ns", "admin.$cmd");
    doc.append("o", o);
    append_txn_fields(&mut doc, txn);
    doc
}
