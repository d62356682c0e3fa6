//! Tests for transaction reassembly.

use super::*;
use bson::{doc, Bson};

fn ts(i: u32) -> Timestamp {
    Timestamp {
        time: 100,
        increment: i,
    }
}

fn raw(d: Document) -> RawDocumentBuf {
    RawDocumentBuf::from_document(&d).unwrap()
}

fn null_optime() -> Document {
    doc! {"ts": Timestamp { time: 0, increment: 0 }, "t": -1_i64}
}

fn optime(i: u32) -> Document {
    doc! {"ts": ts(i), "t": 1_i64}
}

fn insert(id: i32) -> Document {
    doc! {"op": "i", "ns": "db.c", "o": {"_id": id}}
}

fn plain(i: u32, id: i32) -> RawDocumentBuf {
    let mut d = insert(id);
    d.insert("ts", ts(i));
    d.insert("t", 1_i64);
    raw(d)
}

fn lsid(n: u8) -> Document {
    doc! {"id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![n; 16] }}
}

/// A transaction `applyOps` entry.
fn txn_entry(
    i: u32,
    session: u8,
    ops: Vec<Document>,
    extra: Document,
    prev: Document,
) -> RawDocumentBuf {
    let mut o = doc! {"applyOps": ops.into_iter().map(Bson::Document).collect::<Vec<_>>()};
    o.extend(extra);
    raw(doc! {
        "lsid": lsid(session), "txnNumber": 1_i64, "op": "c", "ns": "admin.$cmd", "o": o,
        "ts": ts(i), "t": 1_i64, "wall": DateTime::from_millis(i as i64), "prevOpTime": prev,
    })
}

fn control(i: u32, session: u8, o: Document, prev: Document) -> RawDocumentBuf {
    raw(doc! {
        "lsid": lsid(session), "txnNumber": 1_i64, "op": "c", "ns": "admin.$cmd", "o": o,
        "ts": ts(i), "t": 1_i64, "prevOpTime": prev,
    })
}

fn ids(txn: &Txn) -> Vec<i32> {
    txn.ops
        .iter()
        .map(|o| o.get_document("o").unwrap().get_i32("_id").unwrap())
        .collect()
}

fn only_txn(units: Vec<Unit>) -> Txn {
    assert_eq!(units.len(), 1, "{units:?}");
    match units.into_iter().next().unwrap() {
        Unit::Transaction(t) => t,
        other => panic!("expected a transaction, got {other:?}"),
    }
}

#[test]
fn plain_entries_pass_through() {
    let mut r = Reassembler::new();
    let e = plain(1, 7);
    let units = r.push(e.clone()).unwrap();
    assert_eq!(units, vec![Unit::Single(e)]);
    assert_eq!(units[0].ts().unwrap(), ts(1));
    assert_eq!(r.resume_ts(), Some(ts(1)));
    assert_eq!(r.stats().singles, 1);
}

#[test]
fn single_apply_ops_commit() {
    let mut r = Reassembler::new();
    let t = only_txn(
        r.push(txn_entry(
            5,
            1,
            vec![insert(1), insert(2)],
            doc! {},
            null_optime(),
        ))
        .unwrap(),
    );
    assert_eq!(t.kind, TxnKind::Unprepared);
    assert_eq!(ids(&t), vec![1, 2]);
    assert_eq!((t.ts, t.first_ts, t.entry_count), (ts(5), ts(5), 1));
    assert_eq!(t.lsid, Some(lsid(1)));
    assert_eq!(t.txn_number, Some(1));
    assert_eq!(t.wall, Some(DateTime::from_millis(5)));
    assert_eq!(r.stats().inner_ops, 2);
    assert_eq!(r.pending_transactions(), 0);
}

#[test]
fn partial_chain_of_three() {
    let mut r = Reassembler::new();
    r.push(plain(1, 0)).unwrap();
    let partial = doc! {"partialTxn": true};
    assert!(r
        .push(txn_entry(
            2,
            1,
            vec![insert(1), insert(2)],
            partial.clone(),
            null_optime()
        ))
        .unwrap()
        .is_empty());
    assert_eq!(r.oldest_pending_ts(), Some(ts(2)));
    assert_eq!(r.resume_ts(), Some(ts(1)));
    assert!(r
        .push(txn_entry(3, 1, vec![insert(3)], partial, optime(2)))
        .unwrap()
        .is_empty());
    assert_eq!(r.pending_ops(), 3);
    assert!(r.pending_bytes() > 0);
    let t = only_txn(
        r.push(txn_entry(
            4,
            1,
            vec![insert(4)],
            doc! {"count": 4_i64},
            optime(3),
        ))
        .unwrap(),
    );
    assert_eq!(ids(&t), vec![1, 2, 3, 4]);
    assert_eq!((t.ts, t.first_ts, t.entry_count), (ts(4), ts(2), 3));
    assert_eq!(r.oldest_pending_ts(), None);
    assert_eq!(r.pending_bytes(), 0);
    assert_eq!(r.resume_ts(), Some(ts(4)));
}

#[test]
fn chain_with_wrong_count_is_an_error() {
    let mut r = Reassembler::new();
    r.push(txn_entry(
        2,
        1,
        vec![insert(1)],
        doc! {"partialTxn": true},
        null_optime(),
    ))
    .unwrap();
    let err = r
        .push(txn_entry(
            3,
            1,
            vec![insert(2)],
            doc! {"count": 3},
            optime(2),
        ))
        .unwrap_err();
    assert!(
        matches!(err, OplogError::IncompleteTransaction { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("count 3"), "{err}");
}

#[test]
fn chain_started_in_the_middle_is_an_error() {
    let mut r = Reassembler::new();
    let err = r
        .push(txn_entry(
            3,
            1,
            vec![insert(2)],
            doc! {"count": 2},
            optime(2),
        ))
        .unwrap_err();
    assert!(
        matches!(err, OplogError::IncompleteTransaction { .. }),
        "{err}"
    );
    let err = r
        .push(txn_entry(
            4,
            2,
            vec![insert(2)],
            doc! {"partialTxn": true},
            optime(2),
        ))
        .unwrap_err();
    assert!(
        matches!(err, OplogError::IncompleteTransaction { .. }),
        "{err}"
    );
    let err = r
        .push(control(9, 3, doc! {"commitTransaction": 1}, optime(2)))
        .unwrap_err();
    assert!(err.to_string().contains("without its prepare"), "{err}");
}

#[test]
fn chain_with_a_gap_is_an_error() {
    let mut r = Reassembler::new();
    r.push(txn_entry(
        2,
        1,
        vec![insert(1)],
        doc! {"partialTxn": true},
        null_optime(),
    ))
    .unwrap();
    let err = r
        .push(txn_entry(5, 1, vec![insert(2)], doc! {}, optime(4)))
        .unwrap_err();
    assert!(
        err.to_string().contains("prevOpTime points at 100:4"),
        "{err}"
    );
}

#[test]
fn prepared_then_committed() {
    let mut r = Reassembler::new();
    r.push(plain(1, 0)).unwrap();
    let prep = txn_entry(
        2,
        1,
        vec![insert(1), insert(2)],
        doc! {"prepare": true},
        null_optime(),
    );
    assert!(r.push(prep).unwrap().is_empty());
    // Other writes go on while the transaction is prepared.
    let between = r.push(plain(3, 50)).unwrap();
    assert_eq!(between.len(), 1);
    assert_eq!(r.oldest_pending_ts(), Some(ts(2)));
    assert_eq!(r.resume_ts(), Some(ts(1)));
    let commit = control(
        4,
        1,
        doc! {"commitTransaction": 1, "commitTimestamp": ts(3)},
        optime(2),
    );
    let t = only_txn(r.push(commit).unwrap());
    assert_eq!(t.kind, TxnKind::Prepared);
    assert_eq!(ids(&t), vec![1, 2]);
    assert_eq!((t.ts, t.first_ts, t.commit_ts), (ts(4), ts(2), Some(ts(3))));
    assert_eq!(t.entry_count, 2);
    assert_eq!(r.resume_ts(), Some(ts(4)));
    assert_eq!(r.stats().transactions, 1);
}

#[test]
fn large_prepared_transaction() {
    let mut r = Reassembler::new();
    r.push(txn_entry(
        2,
        1,
        vec![insert(1)],
        doc! {"partialTxn": true},
        null_optime(),
    ))
    .unwrap();
    r.push(txn_entry(
        3,
        1,
        vec![insert(2)],
        doc! {"prepare": true, "count": 2_i64},
        optime(2),
    ))
    .unwrap();
    // A prepared transaction cannot take more applyOps.
    let err = r
        .push(txn_entry(4, 1, vec![insert(3)], doc! {}, optime(3)))
        .unwrap_err();
    assert!(matches!(err, OplogError::TransactionState { .. }), "{err}");
    let t = only_txn(
        r.push(control(5, 1, doc! {"commitTransaction": 1}, optime(3)))
            .unwrap(),
    );
    assert_eq!(ids(&t), vec![1, 2]);
    assert_eq!(t.entry_count, 3);
}

#[test]
fn prepared_then_aborted() {
    let mut r = Reassembler::new();
    r.push(txn_entry(
        2,
        1,
        vec![insert(1)],
        doc! {"prepare": true},
        null_optime(),
    ))
    .unwrap();
    assert_eq!(r.resume_ts(), None);
    assert!(r
        .push(control(3, 1, doc! {"abortTransaction": 1}, optime(2)))
        .unwrap()
        .is_empty());
    assert_eq!(r.pending_transactions(), 0);
    assert_eq!(r.stats().aborted, 1);
    assert_eq!(r.resume_ts(), Some(ts(3)));
    // An abort of something never seen is harmless.
    assert!(r
        .push(control(4, 9, doc! {"abortTransaction": 1}, optime(1)))
        .unwrap()
        .is_empty());
    assert_eq!(r.stats().aborted, 1);
}

#[test]
fn interleaved_sessions_and_plain_entries() {
    let mut r = Reassembler::new();
    let partial = doc! {"partialTxn": true};
    let mut units = Vec::new();
    units.extend(r.push(plain(1, 100)).unwrap());
    units.extend(
        r.push(txn_entry(
            2,
            1,
            vec![insert(1)],
            partial.clone(),
            null_optime(),
        ))
        .unwrap(),
    );
    units.extend(
        r.push(txn_entry(
            3,
            2,
            vec![insert(2)],
            doc! {"prepare": true},
            null_optime(),
        ))
        .unwrap(),
    );
    units.extend(r.push(plain(4, 101)).unwrap());
    units.extend(
        r.push(txn_entry(
            5,
            1,
            vec![insert(3)],
            doc! {"count": 2},
            optime(2),
        ))
        .unwrap(),
    );
    assert_eq!(r.resume_ts(), Some(ts(2)), "session 2 began after entry 2");
    assert_eq!(r.oldest_pending_ts(), Some(ts(3)));
    units.extend(r.push(plain(6, 102)).unwrap());
    units.extend(
        r.push(control(7, 2, doc! {"commitTransaction": 1}, optime(3)))
            .unwrap(),
    );
    let summary: Vec<(u32, Vec<i32>)> = units
        .iter()
        .map(|u| match u {
            Unit::Single(e) => (
                u.ts().unwrap().increment,
                vec![e.get_document("o").unwrap().get_i32("_id").unwrap()],
            ),
            Unit::Transaction(t) => (t.ts.increment, ids(t)),
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, vec![100]),
            (4, vec![101]),
            (5, vec![1, 3]),
            (6, vec![102]),
            (7, vec![2]),
        ]
    );
    assert_eq!(r.resume_ts(), Some(ts(7)));
    let s = r.stats();
    assert_eq!(
        (s.entries, s.units, s.singles, s.transactions, s.inner_ops),
        (7, 5, 3, 2, 3)
    );
}

#[test]
fn batched_writes_are_one_unit_each() {
    let mut r = Reassembler::new();
    // 8.0 batched delete: no lsid.
    let batch = raw(doc! {
        "op": "c", "ns": "admin.$cmd", "ts": ts(1), "t": 1_i64,
        "o": {"applyOps": [
            {"op": "d", "ns": "db.c", "o": {"_id": 1}},
            {"op": "d", "ns": "db.c", "o": {"_id": 2}},
        ]},
    });
    let t = only_txn(r.push(batch).unwrap());
    assert_eq!(t.kind, TxnKind::Batch);
    assert_eq!(ids(&t), vec![1, 2]);
    assert_eq!(t.lsid, None);
    // 8.0 retryable vectored insert: lsid + txnNumber + multiOpType 1, not a transaction.
    let vectored = raw(doc! {
        "lsid": lsid(1), "txnNumber": 4_i64, "multiOpType": 1,
        "op": "c", "ns": "admin.$cmd", "ts": ts(2), "t": 1_i64, "prevOpTime": null_optime(),
        "o": {"applyOps": [
            {"op": "i", "ns": "db.c", "o": {"_id": 3}, "stmtId": 0},
            {"op": "i", "ns": "db.c", "o": {"_id": 4}, "stmtId": 1},
        ]},
    });
    let t = only_txn(r.push(vectored).unwrap());
    assert_eq!(t.kind, TxnKind::Batch);
    assert_eq!(ids(&t), vec![3, 4]);
    assert_eq!(t.txn_number, Some(4));
    assert_eq!(r.pending_transactions(), 0);
    assert_eq!(r.stats().batches, 2);
}

#[test]
fn nested_apply_ops_are_flattened() {
    let mut r = Reassembler::new();
    let user = raw(doc! {
        "op": "c", "ns": "test.$cmd", "ts": ts(1),
        "o": {"applyOps": [
            insert(1),
            {"op": "c", "ns": "admin.$cmd", "o": {"applyOps": [insert(2), {"op": "c", "ns": "x.$cmd", "o": {"applyOps": [insert(3)]}}]}},
            {"op": "c", "ns": "db.$cmd", "o": {"create": "c2"}},
            insert(4),
        ]},
    });
    let t = only_txn(r.push(user).unwrap());
    assert_eq!(t.ops.len(), 5);
    assert_eq!(
        t.ops[3]
            .get_document("o")
            .unwrap()
            .get_str("create")
            .unwrap(),
        "c2"
    );
    let ids: Vec<i32> = t
        .ops
        .iter()
        .filter_map(|o| o.get_document("o").unwrap().get_i32("_id").ok())
        .collect();
    assert_eq!(ids, vec![1, 2, 3, 4]);
}

#[test]
fn ddl_and_noops_are_single_units() {
    let mut r = Reassembler::new();
    let ddl = raw(doc! {"op": "c", "ns": "db.$cmd", "o": {"create": "c"}, "ts": ts(1)});
    let noop = raw(doc! {"op": "n", "ns": "", "o": {"msg": "periodic noop"}, "ts": ts(2)});
    assert!(matches!(r.push(ddl).unwrap()[..], [Unit::Single(_)]));
    assert!(matches!(r.push(noop).unwrap()[..], [Unit::Single(_)]));
}

#[test]
fn pending_limit() {
    let mut r = Reassembler::with_max_pending_bytes(30);
    let err = r
        .push(txn_entry(
            2,
            1,
            vec![insert(1), insert(2)],
            doc! {"prepare": true},
            null_optime(),
        ))
        .unwrap_err();
    assert!(
        matches!(err, OplogError::PendingLimit { limit: 30, .. }),
        "{err}"
    );
}

#[test]
fn malformed_entries_are_errors() {
    let mut r = Reassembler::new();
    assert!(r.push(raw(doc! {"op": "i", "ns": "a.b", "o": {}})).is_err());
    let bad = raw(doc! {"op": "c", "ns": "admin.$cmd", "ts": ts(1), "o": {"applyOps": 5}});
    assert!(matches!(r.push(bad), Err(OplogError::WrongType { .. })));
}

/// How one generated transaction ends.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Commit,
    PreparedCommit,
    PreparedAbort,
}

proptest::proptest! {
    /// Random interleavings of transactions (single entry, partialTxn chains, prepared and
    /// committed or aborted) with plain entries: every committed transaction comes out
    /// whole, at its completing entry, in oplog order; nothing stays pending; the resume
    /// point never passes the first entry of a pending transaction.
    #[test]
    fn interleavings_reassemble(
        txns in proptest::collection::vec((1usize..4, 0u8..3), 0..6),
        picks in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..60),
        plains in 0usize..8,
    ) {
        // Each transaction is a list of entries to emit in order; ids are unique.
        let mut next_id = 0;
        let mut scripts: Vec<(Vec<Vec<i32>>, Ending)> = Vec::new();
        for (entries, ending) in &txns {
            let ending = match ending { 0 => Ending::Commit, 1 => Ending::PreparedCommit, _ => Ending::PreparedAbort };
            let parts = (0..*entries).map(|_| { next_id += 1; vec![next_id, next_id + 1000] }).collect();
            scripts.push((parts, ending));
        }
        let mut cursor = vec![0usize; scripts.len()];
        let mut last_ts: Vec<Option<u32>> = vec![None; scripts.len()];
        let mut plain_left = plains;
        let mut r = Reassembler::new();
        let mut got: Vec<(u32, Vec<i32>)> = Vec::new();
        let mut want: Vec<(u32, Vec<i32>)> = Vec::new();
        let mut first_ts: Vec<Option<u32>> = vec![None; scripts.len()];
        let mut i = 0u32;
        let mut pick = picks.iter().copied().chain(std::iter::repeat(0));
        loop {
            // Candidates: each unfinished script, and a plain entry.
            let open: Vec<usize> = (0..scripts.len()).filter(|&s| {
                let total = scripts[s].0.len() + matches!(scripts[s].1, Ending::PreparedCommit | Ending::PreparedAbort) as usize;
                cursor[s] < total
            }).collect();
            if open.is_empty() && plain_left == 0 { break; }
            let choice = pick.next().unwrap() as usize % (open.len() + usize::from(plain_left > 0));
            i += 1;
            let entry = if choice == open.len() {
                plain_left -= 1;
                want.push((i, vec![-(i as i32)]));
                plain(i, -(i as i32))
            } else {
                let s = open[choice];
                let (parts, ending) = &scripts[s];
                let session = s as u8;
                let prev = match last_ts[s] { None => null_optime(), Some(t) => optime(t) };
                first_ts[s].get_or_insert(i);
                last_ts[s] = Some(i);
                let c = cursor[s];
                cursor[s] += 1;
                let all_ids: Vec<i32> = parts.iter().flatten().copied().collect();
                let prepared = !matches!(ending, Ending::Commit);
                if c < parts.len() {
                    let ops = parts[c].iter().map(|id| insert(*id)).collect();
                    let last = c + 1 == parts.len();
                    let extra = match (last, prepared) {
                        (false, _) => doc! {"partialTxn": true},
                        (true, false) => {
                            want.push((i, all_ids));
                            doc! {"count": all_ids_len(parts)}
                        }
                        (true, true) => doc! {"prepare": true, "count": all_ids_len(parts)},
                    };
                    txn_entry(i, session, ops, extra, prev)
                } else if matches!(ending, Ending::PreparedCommit) {
                    want.push((i, all_ids));
                    control(i, session, doc! {"commitTransaction": 1}, prev)
                } else {
                    control(i, session, doc! {"abortTransaction": 1}, prev)
                }
            };
            for u in r.push(entry).unwrap() {
                match u {
                    Unit::Single(e) => got.push((Entry::new(&e).ts().unwrap().increment, vec![e.get_document("o").unwrap().get_i32("_id").unwrap()])),
                    Unit::Transaction(t) => got.push((t.ts.increment, ids(&t))),
                }
            }
            // The resume point never passes the first entry of a pending transaction.
            let pending_first = (0..scripts.len()).filter(|&s| first_ts[s].is_some() && r.pending.keys().any(|k| k.lsid == bson::to_vec(&lsid(s as u8)).unwrap())).filter_map(|s| first_ts[s]).min();
            if let Some(first) = pending_first {
                proptest::prop_assert_eq!(r.oldest_pending_ts(), Some(ts(first)));
                if let Some(resume) = r.resume_ts() {
                    proptest::prop_assert!(resume.increment < first);
                }
            }
        }
        proptest::prop_assert_eq!(got, want);
        proptest::prop_assert_eq!(r.pending_transactions(), 0);
        proptest::prop_assert_eq!(r.pending_bytes(), 0);
    }
}

fn all_ids_len(parts: &[Vec<i32>]) -> i64 {
    parts.iter().map(Vec::len).sum::<usize>() as i64
}
