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
//! stamps are kept whole: one entry per top-level name written since the last whole-document
//! write, grouped by stamp when stored ([`FieldStamps::to_document`]); 10,000 such fields
//! need at most about 650 KB (when each was written by an update of its own). Stamps that do not fit in a row ([`FieldStamps::fits`])
//! cannot be kept exactly, so the version must be refused with an error, not cut down.
//!
//! **How a server applies an arriving version** (checked by `model_fields.rs`):
//! - It always merges: the document-level shortcuts of [`super::decide`] are not exact here.
//!   A merged version is new content under an old stamp (the merge's largest stamp is one of
//!   its inputs'), so "equal stamp: already here" is false: a hub that merges a leaf's version
//!   into the one it holds relays a version whose largest stamp other leaves already hold, yet
//!   which carries fields they never saw. The merge is idempotent, so merging what is already
//!   here changes nothing and writes nothing. `decide` still says whether the two versions
//!   were concurrent, for the journal.
//! - A link carries, for the source's own writes, the stamps of its ops
//!   ([`FieldStamps::of_ops`]); for a version the source installed from elsewhere, the whole
//!   row it wrote (read from the oplog entry of that row), never one stamp for all fields.
//! - Values come from the source's version as read back at the version's position, except
//!   where [`ops_give_merge`] shows that applying the source's own ops as they came gives the
//!   merge. Not for relayed versions: their ops miss what the relay installed from the
//!   destination itself (links never send a version back), so a replacement among them would
//!   bring back values the destination has since overwritten.
//!
//! **Order of fields.** Values converge; the top-level order of fields in a merged document is
//! that of the side with the larger base, then the other side's fields. A server that applied
//! the same updates as they came (no conflict) may hold the fields in another order.
//!
//! **Where it is wired.** Rows of namespaces under `fields` hold their field stamps (`fs` in
//! `__mmm.meta`), written by observation (the stored row joined with the stamps of the local
//! ops observed, `apply/observe.rs`) and by the apply transaction; a link's composites carry
//! [`FieldStamps::of_ops`] for the source's own ops and the installed row for relayed versions,
//! which go everywhere but back to the server whose batch made them (a merged row's largest
//! stamp may be anyone's, the relay's own included, so the stamp's site does not tell);
//! catch-up sends the source's row, or a whole write for the versions it makes. The apply
//! (`apply/converge.rs`, `merge_fields`) always merges, and reads the source's version back
//! unless the composite is one op that gives the whole document ([`ops_give_merge`] is not
//! used yet: reading back is always exact, only slower). With a delete rule other than
//! `lww`, a delete met by a concurrent live version ends as [`delete_rule_wants`] says.

use super::policy::{Deletes, Side};
use super::stamp::Stamp;
use crate::oplog::entry::{Entry, OpKind};
use crate::oplog::fields::{touched_fields, Touched};
use bson::{doc, Bson, Document, RawDocument};
use std::collections::{BTreeMap, BTreeSet};

/// The largest encoded field stamps ([`FieldStamps::to_document`]) that leave room for the
/// rest of a row under MongoDB's 16 MiB document limit.
pub const MAX_ENCODED_BYTES: usize = 16 * 1024 * 1024 - 64 * 1024;

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

    /// The stamps a composite of ops carries: each op's stamp on the fields it wrote, the last
    /// op writing each field winning, and `base` from the last op that wrote the whole document
    /// (`None` when none did: the other fields are not carried). Ops that write no document
    /// (commands, no-ops) are skipped. Not one stamp for the whole composite: links batch ops
    /// differently, and every reader must compute the same stamps.
    pub fn of_ops<'a>(ops: impl IntoIterator<Item = (&'a RawDocument, &'a Stamp)>) -> FieldStamps {
        let mut out = FieldStamps::default();
        for (op, stamp) in ops {
            if let Some(touched) = touched_fields(op) {
                let delete = Entry::new(op).op().ok() == Some(OpKind::Delete);
                out.write(&touched, stamp, delete);
            }
        }
        out
    }

    /// The stamps as stored beside a document's row: `{b: [h, site] | null, d, f: [[h, site,
    /// [names...]], ...]}`, fields grouped by stamp (one update usually writes several), names
    /// kept as values (a name may start with `$` or hold dots).
    pub fn to_document(&self) -> Document {
        let mut by_stamp: BTreeMap<&Stamp, Vec<Bson>> = BTreeMap::new();
        for (name, s) in &self.fields {
            by_stamp
                .entry(s)
                .or_default()
                .push(Bson::String(name.clone()));
        }
        let stamp = |s: &Stamp| Bson::Array(vec![Bson::Int64(s.h), Bson::String(s.site.clone())]);
        doc! {
            "b": self.base.as_ref().map_or(Bson::Null, stamp),
            "d": self.deleted,
            "f": by_stamp
                .into_iter()
                .map(|(s, names)| {
                    Bson::Array(vec![Bson::Int64(s.h), Bson::String(s.site.clone()), Bson::Array(names)])
                })
                .collect::<Vec<_>>(),
        }
    }

    /// The stamps [`to_document`](Self::to_document) wrote, or `None` when `d` is not that
    /// (a row from a peer is checked, not trusted).
    pub fn from_document(d: &Document) -> Option<FieldStamps> {
        let stamp = |v: &Bson| -> Option<Stamp> {
            match v {
                Bson::Array(a) if a.len() == 2 => Some(Stamp::new(
                    match a[0] {
                        Bson::Int64(h) => h,
                        _ => return None,
                    },
                    a[1].as_str()?,
                )),
                _ => None,
            }
        };
        let base = match d.get("b")? {
            Bson::Null => None,
            v => Some(stamp(v)?),
        };
        let mut fields = BTreeMap::new();
        for group in d.get_array("f").ok()? {
            let Bson::Array(g) = group else { return None };
            let [h, site, Bson::Array(names)] = g.as_slice() else {
                return None;
            };
            let s = stamp(&Bson::Array(vec![h.clone(), site.clone()]))?;
            if Some(&s) <= base.as_ref() {
                return None;
            }
            for n in names {
                if fields.insert(n.as_str()?.to_string(), s.clone()).is_some() {
                    return None;
                }
            }
        }
        Some(FieldStamps {
            base,
            deleted: d.get_bool("d").ok()?,
            fields,
        })
    }

    /// Whether the encoded stamps fit in a row (an upper bound on their size: each field
    /// written since the last whole-document write costs its name's length plus 16 bytes).
    /// Only documents with hundreds of thousands of such fields come near the limit; dropping
    /// or folding entries to fit would break the join (see the module comment).
    pub fn fits(&self) -> bool {
        let mut bytes = 64usize;
        let mut stamps = BTreeSet::new();
        for (name, s) in &self.fields {
            // A string element in an array: type, index key, length, bytes, NUL.
            bytes += name.len() + 16;
            if stamps.insert(s) {
                bytes += s.site.len() + 48;
            }
            if bytes > MAX_ENCODED_BYTES {
                return false;
            }
        }
        true
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

    /// [`merge`](Self::merge) in place, costing the size of `theirs` (plus ours when the base
    /// moves): a composite of many ops on one document joins each op's stamps as it comes.
    pub fn join(&mut self, theirs: FieldStamps) {
        if self.theirs_base(&theirs) {
            self.base = theirs.base;
            self.deleted = theirs.deleted;
            let base = self.base.clone();
            self.fields.retain(|_, s| Some(&*s) > base.as_ref());
        }
        for (f, s) in theirs.fields {
            if self.stamp_of(&f) < Some(&s) {
                self.fields.insert(f, s);
            }
        }
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

/// [`merge_content`] for stored documents: `_id` is `id` (a document that comes back only
/// through fields written after a delete gets it first).
pub fn merge_documents(
    ours: &FieldStamps,
    ours_doc: Option<&Document>,
    theirs: &FieldStamps,
    theirs_doc: Option<&Document>,
    id: &Bson,
) -> Option<Document> {
    let pairs = |d: Option<&Document>| -> Option<Vec<(String, Bson)>> {
        d.map(|d| d.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    };
    let (o, t) = (pairs(ours_doc), pairs(theirs_doc));
    merge_content(ours, o.as_deref(), theirs, t.as_deref(), Some(("_id", id)))
        .map(|fields| fields.into_iter().collect())
}

/// What a delete rule other than `lww` wants when a delete meets a concurrent live version:
/// the side whose content must end on every server (`DeleteWins`: the deleted one;
/// `UpdateWins`: the live one, whole) and that content. `None` when the rule is `lww` or both
/// sides are deleted or both live: the merge decides alone.
///
/// Where the merge already gives that content nothing more is done; elsewhere the server that
/// meets the conflict writes the content again as a whole-document version stamped above both
/// (a rewrite, as the other policies do). Each server that meets the conflict wants the same
/// content, since the deleted side and the live side are the same whichever holds which, so
/// two rewrites made apart agree, and when they meet, both deleted or both live with equal
/// content, the merge (larger base) keeps that content: `model_fields.rs` checks the rule over
/// random histories (`delete_rules_converge_under_fields`).
pub fn delete_rule_wants(
    rule: Deletes,
    ours: Option<&Document>,
    theirs: Option<&Document>,
) -> Option<(Side, Option<Document>)> {
    let (deleted, live) = match (ours, theirs) {
        (None, Some(t)) => (Side::Ours, (Side::Theirs, t)),
        (Some(o), None) => (Side::Theirs, (Side::Ours, o)),
        _ => return None,
    };
    match rule {
        Deletes::Lww => None,
        Deletes::DeleteWins => Some((deleted, None)),
        Deletes::UpdateWins => Some((live.0, Some(live.1.clone()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oplog::fields::Touched;

    #[test]
    fn a_delete_rule_wants_the_deleted_or_the_live_side_only_against_a_live_version() {
        let live = doc! {"_id": 1, "a": 1};
        let other = doc! {"_id": 1, "b": 2};
        for rule in [Deletes::Lww, Deletes::DeleteWins, Deletes::UpdateWins] {
            assert_eq!(delete_rule_wants(rule, None, None), None);
            assert_eq!(delete_rule_wants(rule, Some(&live), Some(&other)), None);
        }
        assert_eq!(delete_rule_wants(Deletes::Lww, Some(&live), None), None);
        assert_eq!(
            delete_rule_wants(Deletes::DeleteWins, Some(&live), None),
            Some((Side::Theirs, None))
        );
        assert_eq!(
            delete_rule_wants(Deletes::DeleteWins, None, Some(&live)),
            Some((Side::Ours, None))
        );
        assert_eq!(
            delete_rule_wants(Deletes::UpdateWins, Some(&live), None),
            Some((Side::Ours, Some(live.clone())))
        );
        assert_eq!(
            delete_rule_wants(Deletes::UpdateWins, None, Some(&live)),
            Some((Side::Theirs, Some(live.clone())))
        );
    }

    #[test]
    fn joining_in_place_is_the_merge() {
        let st = |h: i64| Stamp::new(h, "a");
        let mk = |base: Option<i64>, deleted: bool, f: &[(&str, i64)]| FieldStamps {
            base: base.map(st),
            deleted,
            fields: f.iter().map(|(n, h)| (n.to_string(), st(*h))).collect(),
        };
        let cases = [
            mk(Some(1), false, &[("a", 3), ("b", 5)]),
            mk(None, false, &[("a", 4), ("c", 2)]),
            mk(Some(4), true, &[("b", 6)]),
            mk(Some(7), false, &[]),
            FieldStamps::default(),
        ];
        for x in &cases {
            for y in &cases {
                let mut j = x.clone();
                j.join(y.clone());
                assert_eq!(j, x.merge(y), "{x:?} joined with {y:?}");
            }
        }
    }

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
    fn the_stamps_of_a_composite_are_those_of_its_ops() {
        use bson::RawDocumentBuf;
        let raw = |d: bson::Document| RawDocumentBuf::from_document(&d).unwrap();
        let ops = [
            raw(
                doc! {"op": "u", "ns": "db.c", "o": {"$v": 2, "diff": {"u": {"x": 1, "y": 1}}}, "o2": {"_id": 1}},
            ),
            raw(doc! {"op": "n", "ns": "", "o": {"msg": "x"}}),
            raw(
                doc! {"op": "u", "ns": "db.c", "o": {"$v": 2, "diff": {"sy": {"u": {"z": 1}}}}, "o2": {"_id": 1}},
            ),
        ];
        let stamps = [s(1, "a"), s(2, "a"), s(3, "a")];
        let f = FieldStamps::of_ops(ops.iter().map(|o| o.as_ref()).zip(&stamps));
        assert_eq!(f.base, None);
        assert_eq!(f.fields.get("x"), Some(&s(1, "a")));
        assert_eq!(f.fields.get("y"), Some(&s(3, "a")));
        let del = raw(doc! {"op": "d", "ns": "db.c", "o": {"_id": 1}});
        let after =
            raw(doc! {"op": "u", "ns": "db.c", "o": {"$set": {"q.r": 1}}, "o2": {"_id": 1}});
        let ops = [ops[0].clone(), del, after];
        let f = FieldStamps::of_ops(ops.iter().map(|o| o.as_ref()).zip(&stamps));
        assert_eq!(f.base, Some(s(2, "a")));
        assert!(f.deleted);
        assert_eq!(f.fields.keys().collect::<Vec<_>>(), vec!["q"]);
    }

    #[test]
    fn stamps_round_trip_and_hostile_rows_are_refused() {
        let mut st = FieldStamps::whole(s(10, "cloud"), true);
        for (i, name) in ["$x", "a.b", "", "x"].iter().enumerate() {
            st.fields
                .insert(name.to_string(), s(11 + (i as i64 % 2), "factory"));
        }
        let d = st.to_document();
        assert_eq!(d.get_array("f").unwrap().len(), 2);
        assert_eq!(FieldStamps::from_document(&d), Some(st.clone()));
        let partial = FieldStamps::default();
        assert_eq!(
            FieldStamps::from_document(&partial.to_document()),
            Some(partial)
        );
        for bad in [
            doc! {"b": null, "d": false},
            doc! {"b": 5, "d": false, "f": []},
            doc! {"b": [1i64, "a"], "d": false, "f": [[1i64, "a", ["x"]]]},
            doc! {"b": null, "d": false, "f": [[2i64, "a", ["x"]], [3i64, "a", ["x"]]]},
            doc! {"b": null, "d": false, "f": [[2i64, "a", [5]]]},
            doc! {"b": null, "d": false, "f": [[2i32, "a", ["x"]]]},
            doc! {"b": null, "d": "no", "f": []},
            doc! {"b": null, "d": false, "f": [5]},
        ] {
            assert_eq!(FieldStamps::from_document(&bad), None, "{bad}");
        }
    }

    #[test]
    fn ten_thousand_fields_fit_and_the_limit_is_seen() {
        let mut st = FieldStamps::whole(s(1, "a"), false);
        for i in 0..10_000 {
            st.fields
                .insert(format!("field_{i:05}"), s(2 + i, "factory"));
        }
        assert!(st.fits());
        let bytes = bson::to_vec(&st.to_document()).unwrap().len();
        assert!(bytes < 650_000, "{bytes}");
        let mut huge = FieldStamps::default();
        let long = "n".repeat(1000);
        for i in 0..17_000 {
            huge.fields.insert(format!("{long}{i}"), s(2, "a"));
        }
        assert!(!huge.fits());
    }

    #[test]
    fn stored_documents_merge_with_values_kept_whole_per_field() {
        let base = FieldStamps::whole(s(10, "a"), false);
        let mut ours = base.clone();
        ours.write(&touched(&["cfg"]), &s(20, "a"), false);
        let mut theirs = base.clone();
        theirs.write(&touched(&["n", "gone"]), &s(30, "b"), false);
        let o = doc! {"_id": 7, "cfg": {"x": 1, "y": [1, 2]}, "n": 1, "gone": true};
        let th = doc! {"_id": 7, "cfg": {"x": 0}, "n": 2};
        let want = doc! {"_id": 7, "cfg": {"x": 1, "y": [1, 2]}, "n": 2};
        let id = Bson::Int32(7);
        assert_eq!(
            merge_documents(&ours, Some(&o), &theirs, Some(&th), &id),
            Some(want.clone())
        );
        assert_eq!(
            merge_documents(&theirs, Some(&th), &ours, Some(&o), &id),
            Some(want)
        );
        // Back through a field written after a concurrent delete: `_id` first.
        let del = FieldStamps::whole(s(25, "b"), true);
        assert_eq!(
            merge_documents(&del, None, &theirs, Some(&th), &id),
            Some(doc! {"_id": 7, "n": 2})
        );
        assert_eq!(merge_documents(&del, None, &ours, Some(&o), &id), None);
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
