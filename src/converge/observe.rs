//! The stamps of a server's versions, read off its oplog in order. Pure logic.
//!
//! The same rules run wherever a server's oplog is read: by the link that reads it (to stamp
//! the versions it carries) and by observation on that server (to keep `__mmm.meta`). Starting
//! from the same anchor, both compute the same stamps for every entry:
//! - a local write (insert, update, delete on a namespace that replication may carry) ticks the
//!   clock with its entry's wall time ([`super::stamp::tick`]); its stamp is the clock after it,
//!   with the server's id;
//! - a batch mmm applied names, in its `__mmm.meta` rows, the stamp of every version it
//!   installed: the clock witnesses each ([`super::stamp::witness`]), and they are seen;
//! - anything else (mmm's own bookkeeping, commands, no-ops) leaves the clock alone.

use super::stamp::{tick, witness, Knowledge, Stamp};
use crate::oplog::{Entry, OpKind, Unit};
use crate::store::checkpoints::checkpoint_in_ops;
use crate::store::is_replicable_ns;
use crate::store::meta::MetaRow;
use bson::{Bson, RawDocument, RawDocumentBuf};

/// A local write, stamped.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped {
    pub ns: String,
    pub id: Bson,
    pub stamp: Stamp,
    pub deleted: bool,
}

/// A server's clock, as a reader of its oplog carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClockState {
    pub site: String,
    pub h: i64,
    pub know: Knowledge,
}

/// The `_id` an op writes, for inserts, updates and deletes.
pub fn op_doc_id(entry: &Entry) -> Option<Bson> {
    doc_id_of(entry, entry.op().ok()?)
}

/// [`op_doc_id`] for an op whose kind was read already.
fn doc_id_of(entry: &Entry, kind: OpKind) -> Option<Bson> {
    let key = match kind {
        OpKind::Insert | OpKind::Delete => entry.o().ok()?,
        OpKind::Update => entry.o2().ok()??,
        _ => return None,
    };
    let id = key.get("_id").ok()??;
    Bson::try_from(id.to_raw_bson()).ok()
}

fn wall_ms(raw: &RawDocument) -> i64 {
    match raw.get_datetime("wall") {
        Ok(w) => w.timestamp_millis(),
        Err(_) => Entry::new(raw)
            .ts()
            .map(|ts| ts.time as i64 * 1000)
            .unwrap_or(0),
    }
}

impl ClockState {
    pub fn new(site: impl Into<String>, h: i64, know: Knowledge) -> ClockState {
        ClockState {
            site: site.into(),
            h,
            know,
        }
    }

    /// Each field of the op is read once: every reader of the oplog runs this for every write.
    fn tick_op(&mut self, op: &RawDocument, wall: i64, out: &mut Vec<Stamped>) {
        let entry = Entry::new(op);
        let Ok(kind @ (OpKind::Insert | OpKind::Update | OpKind::Delete)) = entry.op() else {
            return;
        };
        let Ok(ns) = entry.ns() else { return };
        if !is_replicable_ns(ns) {
            return;
        }
        let Some(id) = doc_id_of(&entry, kind) else {
            return;
        };
        self.h = tick(self.h, wall);
        let stamp = Stamp::new(self.h, self.site.clone());
        self.know.see(&stamp);
        out.push(Stamped {
            ns: ns.to_string(),
            id,
            stamp,
            deleted: kind == OpKind::Delete,
        });
    }

    /// A unit an application wrote on this server: the stamp of each write, in order.
    pub fn local(&mut self, unit: &Unit) -> Vec<Stamped> {
        self.local_ops(unit).into_iter().map(|(s, _)| s).collect()
    }

    /// [`local`](Self::local), each stamp with the op it stamps.
    pub fn local_ops<'u>(&mut self, unit: &'u Unit) -> Vec<(Stamped, &'u RawDocumentBuf)> {
        let mut out = Vec::new();
        let mut pairs = Vec::new();
        let ops: Vec<(&RawDocumentBuf, i64)> = match unit {
            Unit::Single(raw) => vec![(raw, wall_ms(raw))],
            Unit::Transaction(txn) => {
                let wall = txn
                    .wall
                    .map(|w| w.timestamp_millis())
                    .unwrap_or(txn.ts.time as i64 * 1000);
                txn.ops.iter().map(|op| (op, wall)).collect()
            }
        };
        for (op, wall) in ops {
            self.tick_op(op, wall, &mut out);
            if let Some(s) = out.pop() {
                pairs.push((s, op));
            }
        }
        pairs
    }

    /// The clock after a batch a link applied here ([`ClockState::applied`]), without the
    /// rows when the batch's checkpoint says its `seen` covers them (every batch mmm applies
    /// says so): the clock then moves by `seen` alone, which is the same move, since the
    /// largest stamp per site among the rows is in `seen`. Observation reads every applied
    /// batch of its server, and parsing a row per document was most of what it cost.
    pub fn witness_batch(&mut self, ops: &[RawDocumentBuf]) {
        match checkpoint_in_ops(ops) {
            Some(c) if c.seen_covers_rows => self.witness_seen(c.seen.unwrap_or_default()),
            _ => {
                self.applied(ops);
            }
        }
    }

    /// A batch mmm applied on this server: the rows it wrote, which the clock witnesses, and
    /// every version it met (its checkpoint's `seen`), installed or not.
    pub fn applied(&mut self, ops: &[RawDocumentBuf]) -> Vec<MetaRow> {
        let rows: Vec<MetaRow> = ops
            .iter()
            .filter_map(|op| MetaRow::from_oplog_op(op))
            .collect();
        for row in &rows {
            self.h = witness(self.h, row.stamp.h);
            self.know.see(&row.stamp);
        }
        let seen = checkpoint_in_ops(ops)
            .and_then(|c| c.seen)
            .unwrap_or_default();
        self.witness_seen(seen);
        rows
    }

    /// Witnesses the largest stamp of each site in `seen`.
    fn witness_seen(&mut self, seen: Knowledge) {
        for (site, h) in seen.0 {
            let stamp = Stamp::new(h, site);
            self.h = witness(self.h, stamp.h);
            self.know.see(&stamp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oplog::units::{Txn, TxnKind};
    use bson::{doc, DateTime, Timestamp};

    fn raw(d: bson::Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).unwrap()
    }

    fn ts(i: u32) -> Timestamp {
        Timestamp {
            time: 100,
            increment: i,
        }
    }

    #[test]
    fn local_writes_tick_and_other_entries_do_not() {
        let mut c = ClockState::new("a", 0, Knowledge::default());
        let w = DateTime::from_millis(5_000);
        let ins = Unit::Single(raw(
            doc! {"op": "i", "ns": "db.c", "o": {"_id": 1}, "ts": ts(1), "wall": w},
        ));
        let s = c.local(&ins);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].stamp, Stamp::new(5_000 << 16, "a"));
        // Same millisecond: the counter moves; deletes are tombstones.
        let del = Unit::Single(raw(
            doc! {"op": "d", "ns": "db.c", "o": {"_id": 1}, "ts": ts(2), "wall": w},
        ));
        let s = c.local(&del);
        assert_eq!(s[0].stamp.h, (5_000 << 16) + 1);
        assert!(s[0].deleted);
        // mmm's own collections, system collections, no-ops and commands do not count.
        for skipped in [
            doc! {"op": "i", "ns": "__mmm.checkpoints", "o": {"_id": 1}, "ts": ts(3), "wall": w},
            doc! {"op": "i", "ns": "db.system.views", "o": {"_id": 1}, "ts": ts(3), "wall": w},
            doc! {"op": "n", "ns": "", "o": {"msg": "x"}, "ts": ts(3), "wall": w},
            doc! {"op": "c", "ns": "db.$cmd", "o": {"create": "x"}, "ts": ts(3), "wall": w},
            doc! {"op": "u", "ns": "db.c", "o": {"$v": 2, "diff": {}}, "ts": ts(3), "wall": w},
        ] {
            assert!(c.local(&Unit::Single(raw(skipped))).is_empty());
        }
        assert_eq!(c.h, (5_000 << 16) + 1);
        assert_eq!(c.know.0.get("a"), Some(&((5_000 << 16) + 1)));
    }

    #[test]
    fn transactions_stamp_each_op_and_applied_batches_are_witnessed() {
        let mut c = ClockState::new("a", 0, Knowledge::default());
        let txn = Unit::Transaction(Txn {
            kind: TxnKind::Unprepared,
            ts: ts(5),
            t: None,
            wall: Some(DateTime::from_millis(1_000)),
            first_ts: ts(5),
            commit_ts: None,
            lsid: None,
            txn_number: None,
            ops: vec![
                raw(doc! {"op": "i", "ns": "db.c", "o": {"_id": 1}}),
                raw(doc! {"op": "u", "ns": "db.c", "o": {"$set": {"x": 1}}, "o2": {"_id": 2}}),
            ],
            entry_count: 1,
        });
        let s = c.local(&txn);
        assert_eq!(
            s.iter().map(|s| s.stamp.h).collect::<Vec<_>>(),
            vec![1_000 << 16, (1_000 << 16) + 1]
        );
        assert_eq!(s[1].id, Bson::Int32(2));
        let row = MetaRow {
            ns: "db.c".into(),
            id: Bson::Int32(1),
            stamp: Stamp::new(9_000 << 16, "b"),
            deleted: false,
            through: ts(0),
            fields: None,
            content: None,
        };
        let rows = c.applied(&[raw(
            doc! {"op": "u", "ns": "__mmm.meta", "o": row.to_document(), "o2": {"_id": 1}},
        )]);
        assert_eq!(rows, vec![row]);
        assert_eq!(c.h, 9_000 << 16);
        assert!(c.know.covers(&Stamp::new(9_000 << 16, "b")));
        // The next local write is later than the installed version.
        let s = c.local(&Unit::Single(raw(doc! {"op": "i", "ns": "db.c", "o": {"_id": 3}, "ts": ts(6), "wall": DateTime::from_millis(1_001)})));
        assert!(s[0].stamp.h > 9_000 << 16);
    }

    #[test]
    fn a_batch_whose_checkpoint_covers_its_rows_moves_the_clock_as_its_rows_do() {
        let row = |h: i64, site: &str| MetaRow {
            ns: "db.c".into(),
            id: Bson::Int64(h),
            stamp: Stamp::new(h, site),
            deleted: false,
            through: ts(0),
            fields: None,
            content: None,
        };
        let rows = [row(50, "b"), row(70, "b#r"), row(60, "c")];
        let batch = |seen: Knowledge, covers: bool| {
            let checkpoint = crate::store::Checkpoint {
                link: "b->a".into(),
                origin: "b".into(),
                src: "b".into(),
                ts: ts(1),
                applied: ts(1),
                ops_applied: 0,
                conflicts: 0,
                rejected: 0,
                pending_ddl: None,
                initial_sync: None,
                src_clock: None,
                writer_know: None,
                seen: Some(seen),
                seen_covers_rows: covers,
            };
            let mut ops = vec![raw(doc! {
                "op": "u", "ns": "__mmm.checkpoints", "o": checkpoint.to_document(),
                "o2": {"_id": "b->a"},
            })];
            ops.extend(
                rows.iter()
                    .map(|r| raw(doc! {"op": "i", "ns": "__mmm.meta", "o": r.to_document()})),
            );
            ops
        };
        // The composites' stamps only (a version read back or a resolution is above them).
        let composites = Knowledge([("b".to_string(), 50), ("c".to_string(), 60)].into());
        let mut by_rows = ClockState::new("a", 10, Knowledge::default());
        by_rows.applied(&batch(composites.clone(), false));
        let mut covered = composites.clone();
        for r in &rows {
            covered.see(&r.stamp);
        }
        let mut by_seen = ClockState::new("a", 10, Knowledge::default());
        by_seen.witness_batch(&batch(covered, true));
        assert_eq!(by_seen, by_rows);
        assert_eq!(by_seen.h, 70);
        // A checkpoint that does not say so is not trusted: the rows are read.
        let mut old = ClockState::new("a", 10, Knowledge::default());
        old.witness_batch(&batch(composites, false));
        assert_eq!(old, by_rows);
    }
}
