//! Last writer wins per top-level field: the state and merge of the `fields` policy. Pure
//! logic; `model_fields.rs` checks convergence over many random histories.
//!
//! **State.** A version of a document carries [`FieldStamps`]: `base`, the stamp of its last
//! whole-document write (insert, replacement or delete; `None` before any write stamped since
//! replication began), `deleted` (that write was a delete), and `fields`, the stamps of the
//! top-level fields written by updates after `base` (each larger than `base`). The stamp of a
//! field is its entry in `fields`, else `base`: a replacement or a delete writes every field,
//! the ones it leaves absent included. Stamps of ops are a function of the oplog
//! (`stamp.rs`), and so are the fields an op writes (`oplog/fields.rs`), so every reader of an
//! oplog computes the same field stamps.
//!
//! **Merge.** Two versions merge field by field: each field takes the value (present or
//! absent) of the side whose stamp for it is larger; the merged `base` is the larger base, with
//! that side's `deleted`; the merged `fields` are the fields whose winning stamp is above the
//! merged base. Seen as a function from field name to stamp, with `base` as the default, the
//! merge is the pointwise maximum, and each field's value goes with its stamp (a stamp names
//! one write, made once on one server, so equal stamps mean equal values). A pointwise
//! maximum is commutative, associative and idempotent: a join. So the order in which a server
//! meets versions, the batching of its links and the path a version took do not change what
//! it ends with; once every version has reached every server, all hold the same values.
//! Entries of `fields` at or below the merged base are dropped because the base gives them
//! the same stamp; nothing else is ever dropped.
//!
//! **Existence.** The merged document exists when its base is not a delete and the base side
//! held it, or when some field was written after the base. So an update made after (by the
//! clock) a concurrent delete brings the document back with only the fields that update wrote
//! (as Cassandra does for a row deleted concurrently with a column write): `_id` alone if it
//! only removed fields; an update made before the delete is lost with the document. This is
//! what a server that holds such a document and updates it sees too: an update never deletes.
//!
//! **Partial versions.** A link carries, for a local write, only the fields its ops wrote
//! (a [`FieldStamps`] with `base: None` when no op wrote the whole document). Merging such a
//! partial version is exact when the receiver's stamps for the other fields are at least the
//! writer's: true under causal delivery (`mod.rs` point 3), since every version whose fields
//! the writer held reached the receiver before this one. `model_fields.rs` checks it by
//! merging the writer's whole state as well and comparing.
//!
//! **Why not fold `fields` into `base` when a row grows too large.** Replacing the field
//! stamps by their maximum (a whole-document write at the latest stamp) is not monotone: of
//! two versions, the one with more field entries may fold while a later one, whose base
//! swallowed most of them, does not, and folding raises old fields above writes the later one
//! holds. Folding before or after a merge then gives different values, so servers would
//! disagree. Dropping entries is worse (a field falls back to an older base stamp). Field
//! stamps are kept whole; their size is bounded by the document's own top-level names.
//!
//! **Order of fields.** Values converge; the top-level order of fields in a merged document is
//! that of the side with the larger base, then the other side's fields. A server that applied
//! the same updates as they came (no conflict) may hold the fields in another order.

use super::stamp::Stamp;
use crate::oplog::fields::Touched;
use std::collections::{BTreeMap, BTreeSet};

/// The per-field stamps of one version of a document (see the module comment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldStamps {
    pub base: Option<Stamp>,
    pub deleted: bool,
    pub fields: BTreeMap<String, Stamp>,
}

impl FieldStamps {
    /// A version written whole (insert, replacement, delete) and not changed since.
    pub fn whole(stamp: Stamp, deleted: bool) -> FieldStamps {
        FieldStamps {
            base: Some(stamp),
            deleted,
            fields: BTreeMap::new(),
        }
    }

    /// The stamp of field `f` (`None`: older than any stamp).
    pub fn stamp_of(&self, f: &str) -> Option<&Stamp> {
        self.fields.get(f).or(self.base.as_ref())
    }

    /// The largest stamp of the version: the document's stamp.
    pub fn max(&self) -> Option<&Stamp> {
        self.fields.values().chain(self.base.as_ref()).max()
    }

    /// Records an op stamped `stamp` that wrote `touched` (`delete`: the op was a delete).
    /// Ops come in stamp order, so `stamp` is above every stamp here.
    pub fn write(&mut self, touched: &Touched, stamp: &Stamp, delete: bool) {
        match touched {
            Touched::Whole => *self = FieldStamps::whole(stamp.clone(), delete),
            Touched::Fields(names) => {
                for f in names {
                    self.fields.insert(f.clone(), stamp.clone());
                }
            }
        }
    }

    /// Whether `theirs` wins field `f` against `self`. Equal stamps are one write: ours stays.
    pub fn theirs_wins(&self, theirs: &FieldStamps, f: &str) -> bool {
        theirs.stamp_of(f) > self.stamp_of(f)
    }

    /// Whether the base (and so `deleted`, and the fields neither side names) comes from
    /// `theirs`.
    pub fn theirs_base(&self, theirs: &FieldStamps) -> bool {
        theirs.base > self.base
    }

    /// The merged stamps: the pointwise maximum, normalized (see the module comment).
    pub fn merge(&self, theirs: &FieldStamps) -> FieldStamps {
        let (base, deleted) = if self.theirs_base(theirs) {
            (theirs.base.clone(), theirs.deleted)
        } else {
            (self.base.clone(), self.deleted)
        };
        let mut fields = BTreeMap::new();
        for f in self.fields.keys().chain(theirs.fields.keys()) {
            let s = self.stamp_of(f).max(theirs.stamp_of(f));
            if let Some(s) = s {
                if Some(s) > base.as_ref() {
                    fields.insert(f.clone(), s.clone());
                }
            }
        }
        FieldStamps {
            base,
            deleted,
            fields,
        }
    }
}

/// Whether applying an arriving composite's ops to our content, as they came, gives exactly the
/// merge, so that the writer's content need not be read back. `plain` is what the ops write
/// with values that do not depend on the content they meet: `Whole` when one of them gives
/// the whole document (insert, replacement, delete) and the later ones only `Fields`;
/// `Fields` when they set or remove whole top-level fields; `None` when some op changes part
/// of a field (a sub-diff, a dotted path), whose result depends on the value it meets.
/// `ours_exists`: we hold the document (updates match nothing on a missing one).
pub fn ops_give_merge(
    ours: &FieldStamps,
    ours_exists: bool,
    theirs: &FieldStamps,
    plain: Option<&Touched>,
) -> bool {
    match plain {
        None => false,
        // The ops give the writer's whole content: exact when theirs wins every field, and
        // no update follows a delete (it matches nothing where the ops are applied, while the
        // writer held the document again, through fields a merge brought back).
        Some(Touched::Whole) => {
            (!theirs.deleted || theirs.fields.is_empty()) && ours.merge(theirs) == *theirs
        }
        // Exact when the fields theirs wins are the ones the ops write, and only those.
        // Updates apply to a document that exists through its base (one revived by fields
        // written after a delete may vanish when those fields go).
        Some(Touched::Fields(written)) => {
            ours_exists
                && !ours.deleted
                && !ours.theirs_base(theirs)
                && written.iter().all(|f| theirs.fields.contains_key(f))
                && theirs
                    .fields
                    .keys()
                    .all(|f| ours.theirs_wins(theirs, f) == written.contains(f))
        }
    }
}

/// Two versions' contents merged by their stamps: `None` for a deleted document. Values are
/// taken whole per top-level field; the order is that of the side with the larger base, then
/// the other side's fields (`_id` stays where that side has it; a document that exists only
/// through fields written after a delete gets `id_field` first).
pub fn merge_content<V: Clone>(
    ours: &FieldStamps,
    ours_doc: Option<&[(String, V)]>,
    theirs: &FieldStamps,
    theirs_doc: Option<&[(String, V)]>,
    id_field: Option<(&str, &V)>,
) -> Option<Vec<(String, V)>> {
    let merged = ours.merge(theirs);
    let theirs_base = ours.theirs_base(theirs);
    let (first, first_is_theirs, second) = if theirs_base {
        (theirs_doc, true, ours_doc)
    } else {
        (ours_doc, false, theirs_doc)
    };
    let value_of = |f: &str| -> Option<&V> {
        let doc = if ours.theirs_wins(theirs, f) {
            theirs_doc
        } else {
            ours_doc
        };
        doc?.iter().find(|(k, _)| k == f).map(|(_, v)| v)
    };
    let mut out: Vec<(String, V)> = Vec::new();
    let mut placed = BTreeSet::new();
    for (doc, _) in [(first, first_is_theirs), (second, !first_is_theirs)] {
        for (k, _) in doc.unwrap_or(&[]) {
            if !placed.insert(k.as_str()) {
                continue;
            }
            if let Some(v) = value_of(k) {
                out.push((k.clone(), v.clone()));
            }
        }
    }
    let base_doc_held = !merged.deleted && first.is_some();
    if !base_doc_held && merged.fields.is_empty() {
        return None;
    }
    // Only fields written after the base survive a deleted base.
    if merged.deleted {
        out.retain(|(k, _)| merged.fields.contains_key(k));
    }
    if let Some((id, v)) = id_field {
        if !out.iter().any(|(k, _)| k == id) {
            out.insert(0, (id.to_string(), v.clone()));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oplog::fields::Touched;

    fn s(h: i64, site: &str) -> Stamp {
        Stamp::new(h, site)
    }

    fn touched(names: &[&str]) -> Touched {
        Touched::Fields(names.iter().map(|n| n.to_string()).collect())
    }

    fn doc(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn merged(
        o: &FieldStamps,
        od: Option<&[(&str, i64)]>,
        t: &FieldStamps,
        td: Option<&[(&str, i64)]>,
    ) -> Option<Vec<(String, i64)>> {
        let od = od.map(doc);
        let td = td.map(doc);
        merge_content(o, od.as_deref(), t, td.as_deref(), Some(("_id", &0)))
    }

    #[test]
    fn concurrent_writes_to_different_fields_are_both_kept() {
        let mut a = FieldStamps::whole(s(10, "a"), false);
        let mut b = a.clone();
        a.write(&touched(&["x"]), &s(20, "a"), false);
        b.write(&touched(&["y"]), &s(15, "b"), false);
        let da = [("_id", 0), ("x", 2), ("y", 1)];
        let db = [("_id", 0), ("x", 1), ("y", 3)];
        let want = Some(doc(&[("_id", 0), ("x", 2), ("y", 3)]));
        assert_eq!(merged(&a, Some(&da), &b, Some(&db)), want);
        assert_eq!(merged(&b, Some(&db), &a, Some(&da)), want);
        let m = a.merge(&b);
        assert_eq!(m, b.merge(&a));
        assert_eq!(m.max(), Some(&s(20, "a")));
        assert_eq!(m.fields.len(), 2);
    }

    #[test]
    fn the_later_write_to_one_field_wins_and_a_replacement_writes_every_field() {
        let base = FieldStamps::whole(s(10, "a"), false);
        let mut a = base.clone();
        let mut b = base.clone();
        a.write(&touched(&["x"]), &s(20, "a"), false);
        b.write(&touched(&["x"]), &s(30, "b"), false);
        let da = [("_id", 0), ("x", 2)];
        let db = [("_id", 0), ("x", 3)];
        assert_eq!(
            merged(&a, Some(&da), &b, Some(&db)),
            Some(doc(&[("_id", 0), ("x", 3)]))
        );
        // A replacement at 25 (without x) beats the update at 20, loses y to the one at 30.
        let repl = FieldStamps::whole(s(25, "b"), false);
        let mut c = a.clone();
        c.write(&touched(&["y"]), &s(30, "a"), false);
        let dc = [("_id", 0), ("x", 2), ("y", 9)];
        let dr = [("_id", 0), ("z", 1)];
        assert_eq!(
            merged(&c, Some(&dc), &repl, Some(&dr)),
            Some(doc(&[("_id", 0), ("z", 1), ("y", 9)]))
        );
        let m = c.merge(&repl);
        assert_eq!(m.base, Some(s(25, "b")));
        assert_eq!(m.fields.keys().collect::<Vec<_>>(), vec!["y"]);
    }

    #[test]
    fn a_delete_keeps_only_the_fields_written_after_it() {
        let base = FieldStamps::whole(s(10, "a"), false);
        let del = FieldStamps::whole(s(20, "a"), true);
        let mut upd = base.clone();
        upd.write(&touched(&["x"]), &s(30, "b"), false);
        let du = [("_id", 0), ("x", 5), ("y", 1)];
        assert_eq!(
            merged(&del, None, &upd, Some(&du)),
            Some(doc(&[("_id", 0), ("x", 5)]))
        );
        assert_eq!(
            merged(&upd, Some(&du), &del, None),
            Some(doc(&[("_id", 0), ("x", 5)]))
        );
        // An update made before the delete is lost with the document.
        let mut early = base.clone();
        early.write(&touched(&["x"]), &s(15, "b"), false);
        assert_eq!(merged(&del, None, &early, Some(&du)), None);
        assert_eq!(merged(&early, Some(&du), &del, None), None);
        // An $unset after the delete brings back the document, without the field.
        let mut unset = base.clone();
        unset.write(&touched(&["y"]), &s(30, "b"), false);
        let dun = [("_id", 0), ("x", 5)];
        assert_eq!(
            merged(&del, None, &unset, Some(&dun)),
            Some(doc(&[("_id", 0)]))
        );
    }

    #[test]
    fn a_partial_version_merges_like_the_whole_one_when_ours_dominates_the_rest() {
        // The receiver had seen everything but the last op of the writer.
        let mut ours = FieldStamps::whole(s(10, "a"), false);
        ours.write(&touched(&["y"]), &s(12, "a"), false);
        let mut writer = ours.clone();
        ours.write(&touched(&["z"]), &s(14, "a"), false);
        writer.write(&touched(&["x"]), &s(13, "b"), false);
        let mut partial = FieldStamps::default();
        partial.write(&touched(&["x"]), &s(13, "b"), false);
        assert_eq!(ours.merge(&writer), ours.merge(&partial));
    }

    #[test]
    fn merge_is_a_join() {
        // Small exhaustive-ish check over random states.
        let mut rng = 0x1234_5678_u64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut gen = || {
            let base = (next(4) > 0).then(|| s(next(20) as i64, ["a", "b"][next(2) as usize]));
            // One stamp is one write: whether it deleted is a function of it.
            let deleted = base.as_ref().is_some_and(|b| b.h % 3 == 0);
            let mut st = FieldStamps {
                base: base.clone(),
                deleted,
                fields: BTreeMap::new(),
            };
            for f in ["x", "y", "z"] {
                if next(2) == 0 {
                    let h = base.as_ref().map_or(0, |b| b.h) + 1 + next(10) as i64;
                    st.fields.insert(f.into(), s(h, "c"));
                }
            }
            st
        };
        for _ in 0..2000 {
            let (a, b, c) = (gen(), gen(), gen());
            assert_eq!(a.merge(&b), b.merge(&a));
            assert_eq!(a.merge(&b).merge(&c), a.merge(&b.merge(&c)));
            assert_eq!(a.merge(&a), a);
            let m = a.merge(&b);
            for f in ["x", "y", "z", "w"] {
                assert_eq!(m.stamp_of(f), a.stamp_of(f).max(b.stamp_of(f)));
            }
        }
    }
}
