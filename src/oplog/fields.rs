//! Which top-level fields of its document an oplog op writes: what per-field conflict
//! resolution (the `fields` policy, `converge/fields.rs`) stamps with the op's clock.
//!
//! A function of the entry alone, so that every reader of an oplog finds the same fields:
//! - an insert, a delete and a replacement write the whole document ([`Touched::Whole`]),
//!   absent fields included (a field a replacement leaves out is removed by it);
//! - a `$v:2` diff writes the top-level names of its `d`, `u`, `i` and `b` sections and the
//!   field of each `s<field>` sub-diff, however deep that sub-diff goes;
//! - a `$v:1` (or `$`-operator) update writes the first path component of each `$set` and
//!   `$unset` path (`"a.b.c"` writes `a`).
//!
//! An update this module cannot read (an unknown `$v`, an unknown section or operator, a
//! section that is not a document) counts as [`Touched::Whole`]: a deterministic answer that
//! every reader agrees on, and the one that never claims a field was left alone when it may
//! have changed.

use super::entry::{Entry, OpKind};
use bson::{RawBsonRef, RawDocument};
use std::collections::BTreeSet;

/// The top-level fields an op writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    /// The whole document (insert, replacement, delete, or an update that cannot be read).
    Whole,
    /// These top-level fields, and only these.
    Fields(BTreeSet<String>),
}

/// The fields written by an op, or `None` when it is not a write to a document (commands,
/// no-ops).
pub fn touched_fields(op: &RawDocument) -> Option<Touched> {
    let entry = Entry::new(op);
    match entry.op().ok()? {
        OpKind::Insert | OpKind::Delete => Some(Touched::Whole),
        OpKind::Update => Some(match entry.o() {
            Ok(o) => update_fields(o).map_or(Touched::Whole, Touched::Fields),
            Err(_) => Touched::Whole,
        }),
        _ => None,
    }
}

/// The fields an update's `o` writes, or `None` for a replacement or an unreadable update.
fn update_fields(o: &RawDocument) -> Option<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut version = None;
    let mut first_key: Option<String> = None;
    for item in o.iter() {
        let (k, v) = item.ok()?;
        if first_key.is_none() {
            first_key = Some(k.to_string());
        }
        if k == "$v" {
            version = Some(match v {
                RawBsonRef::Int32(n) => i64::from(n),
                RawBsonRef::Int64(n) => n,
                RawBsonRef::Double(f) if f.fract() == 0.0 => f as i64,
                _ => return None,
            });
        }
    }
    match version {
        Some(2) => {
            let RawBsonRef::Document(diff) = o.get("diff").ok()?? else {
                return None;
            };
            for item in diff.iter() {
                let (section, body) = item.ok()?;
                let RawBsonRef::Document(body) = body else {
                    return None;
                };
                match section.as_bytes().first() {
                    Some(b'd' | b'u' | b'i' | b'b') if section.len() == 1 => {
                        for field in body.iter() {
                            out.insert(field.ok()?.0.to_string());
                        }
                    }
                    Some(b's') => {
                        out.insert(section[1..].to_string());
                    }
                    _ => return None,
                }
            }
            Some(out)
        }
        Some(1) | None => {
            // No `$v` and a first field without `$`: a replacement.
            if version.is_none() && !first_key.as_deref().is_some_and(|k| k.starts_with('$')) {
                return None;
            }
            for item in o.iter() {
                let (k, v) = item.ok()?;
                match k {
                    "$v" => {}
                    "$set" | "$unset" => {
                        let RawBsonRef::Document(paths) = v else {
                            return None;
                        };
                        for path in paths.iter() {
                            let path = path.ok()?.0;
                            out.insert(path.split('.').next().unwrap_or("").to_string());
                        }
                    }
                    _ => return None,
                }
            }
            Some(out)
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, Document, RawDocumentBuf};

    fn raw(d: Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).unwrap()
    }

    fn upd(o: Document) -> Option<Touched> {
        touched_fields(&raw(
            doc! {"op": "u", "ns": "db.c", "o": o, "o2": {"_id": 1}},
        ))
    }

    fn fields(names: &[&str]) -> Option<Touched> {
        Some(Touched::Fields(
            names.iter().map(|s| s.to_string()).collect(),
        ))
    }

    #[test]
    fn inserts_deletes_and_replacements_write_the_whole_document() {
        for op in ["i", "d"] {
            let e = raw(doc! {"op": op, "ns": "db.c", "o": {"_id": 1, "a": 1}});
            assert_eq!(touched_fields(&e), Some(Touched::Whole));
        }
        assert_eq!(upd(doc! {"_id": 1, "a": 1}), Some(Touched::Whole));
        // An empty replacement (every field but `_id` removed) is still whole.
        assert_eq!(upd(doc! {}), Some(Touched::Whole));
        for skipped in [
            doc! {"op": "n", "ns": "", "o": {"msg": "x"}},
            doc! {"op": "c", "ns": "db.$cmd", "o": {"create": "x"}},
            doc! {"ns": "db.c", "o": {}},
        ] {
            assert_eq!(touched_fields(&raw(skipped)), None);
        }
    }

    #[test]
    fn a_v2_diff_writes_its_top_level_names_only() {
        assert_eq!(
            upd(doc! {"$v": 2, "diff": {"d": {"x": false}, "u": {"a": 1}, "i": {"b": {"c": 1}}}}),
            fields(&["a", "b", "x"])
        );
        // Sub-diffs stamp their top-level field, however deep they go.
        assert_eq!(
            upd(
                doc! {"$v": 2, "diff": {"u": {"a": 1}, "sdeep": {"sx": {"sy": {"u": {"z": 1}}}}, "sarr": {"a": true, "u1": 5}}}
            ),
            fields(&["a", "arr", "deep"])
        );
        // A field named like a section, with dots or `$` in its name, or empty.
        assert_eq!(
            upd(
                doc! {"$v": 2, "diff": {"u": {"a.b": 1, "$x": 2, "": 3, "u": 4}, "s": {"u": {"q": 1}}, "ss": {"u": {"q": 1}}}}
            ),
            fields(&["", "$x", "a.b", "s", "u"])
        );
        assert_eq!(upd(doc! {"$v": 2i64, "diff": {}}), fields(&[]));
        assert_eq!(
            upd(doc! {"$v": 2.0, "diff": {"u": {"a": 1}}}),
            fields(&["a"])
        );
    }

    #[test]
    fn a_v1_update_writes_the_first_component_of_each_path() {
        assert_eq!(
            upd(doc! {"$v": 1, "$set": {"a.b.c": 1, "d": 2}, "$unset": {"e.0": true}}),
            fields(&["a", "d", "e"])
        );
        assert_eq!(upd(doc! {"$set": {"x": 1}}), fields(&["x"]));
        assert_eq!(upd(doc! {"$set": {".a": 1}}), fields(&[""]));
    }

    #[test]
    fn updates_that_cannot_be_read_write_the_whole_document() {
        for o in [
            doc! {"$v": 3, "diff": {"u": {"a": 1}}},
            doc! {"$v": "2", "diff": {"u": {"a": 1}}},
            doc! {"$v": 2},
            doc! {"$v": 2, "diff": 5},
            doc! {"$v": 2, "diff": {"u": 5}},
            doc! {"$v": 2, "diff": {"x": {"a": 1}}},
            doc! {"$v": 2, "diff": {"uu": {"a": 1}}},
            doc! {"$v": 2, "diff": {"": {"a": 1}}},
            doc! {"$v": 1, "$inc": {"a": 1}},
            doc! {"$set": {"a": 1}, "b": 2},
            doc! {"$set": 5},
        ] {
            assert_eq!(upd(o.clone()), Some(Touched::Whole), "{o}");
        }
        let e = raw(doc! {"op": "u", "ns": "db.c", "o": 5, "o2": {"_id": 1}});
        assert_eq!(touched_fields(&e), Some(Touched::Whole));
    }

    #[test]
    fn many_fields_are_all_counted() {
        let mut u = Document::new();
        for i in 0..20_000 {
            u.insert(format!("f{i}"), i);
        }
        match upd(doc! {"$v": 2, "diff": {"u": u}}) {
            Some(Touched::Fields(f)) => assert_eq!(f.len(), 20_000),
            other => panic!("{other:?}"),
        }
    }
}
