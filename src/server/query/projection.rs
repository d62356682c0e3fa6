//! Projections: find `projection` / findAndModify `fields` and the `$project`/`$unset`
//! stages.
//!
//! A projection is either *inclusion* (only listed fields, plus `_id` unless `{_id: 0}`,
//! plus computed fields) or *exclusion* (everything except listed fields). Included fields
//! keep the document's field order; computed fields follow them in specification order.
//! Dotted paths descend into sub-documents and into arrays of documents.

use super::compare::{as_f64, is_number, true_value};
use super::expr::Expr;
use super::matcher::{parse_elem_match_projection, Node};
use crate::server::error::{ServerError, ServerResult};
use bson::raw::{RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};
use bson::{Bson, Document};

#[derive(Debug, Clone)]
enum ProjNode {
    Include,
    Exclude,
    Computed(Expr),
    /// `$slice`: (skip, limit) or (None, n) for the single-number form.
    Slice(Option<i64>, i64),
    ElemMatch(Box<Node>),
    Sub(Tree),
}

type Tree = Vec<(String, ProjNode)>;

#[derive(Debug, Clone)]
pub struct Projection {
    tree: Tree,
    inclusion: bool,
}

#[derive(PartialEq)]
enum Kind {
    Include,
    Exclude,
    Computed,
    Neutral,
}

fn collision(path: &str) -> ServerError {
    ServerError::location(31250, format!("Path collision at {path}"))
}

fn insert_node(tree: &mut Tree, parts: &[&str], node: ProjNode, full: &str) -> ServerResult<()> {
    let key = parts[0];
    let pos = tree.iter().position(|(k, _)| k == key);
    if parts.len() == 1 {
        if pos.is_some() {
            return Err(collision(full));
        }
        tree.push((key.to_string(), node));
        return Ok(());
    }
    let idx = match pos {
        Some(i) => i,
        None => {
            tree.push((key.to_string(), ProjNode::Sub(Vec::new())));
            tree.len() - 1
        }
    };
    match &mut tree[idx].1 {
        ProjNode::Sub(sub) => insert_node(sub, &parts[1..], node, full),
        _ => Err(collision(full)),
    }
}

fn parse_slice(field: &str, arg: &Bson) -> ServerResult<ProjNode> {
    match arg {
        n if is_number(n) => {
            let f = as_f64(n).unwrap_or(0.0);
            Ok(ProjNode::Slice(None, f as i64))
        }
        Bson::Array(items) => {
            if items.len() != 2 {
                return Err(ServerError::location(
                    31272,
                    "$slice array argument should be of form [skip, limit]",
                ));
            }
            let Some(skip) = as_f64(&items[0]) else {
                return Err(ServerError::location(
                    31257,
                    format!(
                        "$slice expects the skip argument to be a number, got {}",
                        items[0]
                    ),
                ));
            };
            let Some(limit) = as_f64(&items[1]) else {
                return Err(ServerError::location(
                    31258,
                    format!(
                        "$slice expects the limit argument to be a number, got {}",
                        items[1]
                    ),
                ));
            };
            if limit <= 0.0 {
                return Err(ServerError::location(
                    31259,
                    format!("$slice limit must be positive, got {}", items[1]),
                ));
            }
            Ok(ProjNode::Slice(Some(skip as i64), limit as i64))
        }
        _ => {
            let _ = field;
            Err(ServerError::location(
                31273,
                "$slice only supports numbers and [skip, limit] arrays",
            ))
        }
    }
}

/// Flatten `{a: {b: 1}}` nested projection specs into `("a.b", 1)`.
fn flatten(
    prefix: &str,
    spec: &Document,
    agg: bool,
    out: &mut Vec<(String, Bson)>,
) -> ServerResult<()> {
    for (k, v) in spec {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Bson::Document(d) if !d.keys().next().map(|f| f.starts_with('$')).unwrap_or(false) => {
                if d.is_empty() {
                    return Err(ServerError::location(
                        51270,
                        format!("An empty sub-projection is not a valid value. Found empty object at path {path}"),
                    ));
                }
                let _ = agg;
                flatten(&path, d, agg, out)?;
            }
            other => out.push((path, other.clone())),
        }
    }
    Ok(())
}

impl Projection {
    /// A find-style projection (supports `$slice`, `$elemMatch`, literals and expressions).
    pub fn new(spec: &Document) -> ServerResult<Projection> {
        Self::parse(spec, false)
    }

    /// A `$project`-stage projection (`$slice`/`$elemMatch` are expressions there).
    pub fn new_aggregate(spec: &Document) -> ServerResult<Projection> {
        Self::parse(spec, true)
    }

    fn parse(spec: &Document, agg: bool) -> ServerResult<Projection> {
        let mut flat = Vec::new();
        flatten("", spec, agg, &mut flat)?;
        let mut tree: Tree = Vec::new();
        let mut mode: Option<bool> = None;
        let mut id_explicit: Option<bool> = None;
        for (field, v) in &flat {
            if field.ends_with(".$") || field.contains(".$.") || field == "$" {
                return Err(ServerError::not_implemented(
                    "positional projection is not supported",
                ));
            }
            crate::server::limits::check_path(field)?;
            if field.split('.').any(|p| p.is_empty()) {
                return Err(ServerError::location(
                    40352,
                    "FieldPath cannot be constructed with empty string",
                ));
            }
            if field.split('.').any(|p| p.starts_with('$')) {
                return Err(ServerError::location(
                    16410,
                    "FieldPath field names may not start with '$'. Consider using $getField or $setField.",
                ));
            }
            let (node, kind) = match v {
                Bson::Boolean(_)
                | Bson::Int32(_)
                | Bson::Int64(_)
                | Bson::Double(_)
                | Bson::Decimal128(_) => {
                    if true_value(v) {
                        (ProjNode::Include, Kind::Include)
                    } else {
                        (ProjNode::Exclude, Kind::Exclude)
                    }
                }
                Bson::Document(d) => {
                    let op = d.keys().next().cloned().unwrap_or_default();
                    match op.as_str() {
                        "$slice" if !agg && d.len() == 1 => {
                            (parse_slice(field, d.get("$slice").unwrap())?, Kind::Neutral)
                        }
                        "$elemMatch" if !agg => {
                            if field.contains('.') {
                                return Err(ServerError::location(
                                    31275,
                                    "Cannot use $elemMatch projection on a nested field.",
                                ));
                            }
                            let arg = d.get("$elemMatch").unwrap();
                            if !matches!(arg, Bson::Document(_)) {
                                return Err(ServerError::location(
                                    31274,
                                    format!("elemMatch: Invalid argument, object required, but got {arg}"),
                                ));
                            }
                            let node = parse_elem_match_projection(arg)?;
                            (ProjNode::ElemMatch(Box::new(node)), Kind::Include)
                        }
                        "$meta" => {
                            return Err(ServerError::not_implemented(
                                "$meta projections are not supported",
                            ))
                        }
                        _ => (ProjNode::Computed(Expr::parse(v)?), Kind::Computed),
                    }
                }
                other => (ProjNode::Computed(Expr::parse(other)?), Kind::Computed),
            };
            if field == "_id" && matches!(kind, Kind::Include | Kind::Exclude) {
                id_explicit = Some(kind == Kind::Include);
                if kind == Kind::Exclude {
                    tree.push(("_id".to_string(), ProjNode::Exclude));
                }
                continue;
            }
            match kind {
                Kind::Include | Kind::Computed => {
                    if mode == Some(false) {
                        return Err(if kind == Kind::Include {
                            ServerError::location(
                                31253,
                                format!(
                                    "Cannot do inclusion on field {field} in exclusion projection"
                                ),
                            )
                        } else {
                            ServerError::location(
                                31252,
                                "Cannot use expression other than $meta in exclusion projection",
                            )
                        });
                    }
                    mode = Some(true);
                }
                Kind::Exclude => {
                    if mode == Some(true) {
                        return Err(ServerError::location(
                            31254,
                            format!("Cannot do exclusion on field {field} in inclusion projection"),
                        ));
                    }
                    mode = Some(false);
                }
                Kind::Neutral => {}
            }
            let parts: Vec<&str> = field.split('.').collect();
            insert_node(&mut tree, &parts, node, field)?;
        }
        let inclusion = mode.unwrap_or(id_explicit == Some(true));
        if inclusion && id_explicit != Some(false) && !tree.iter().any(|(k, _)| k == "_id") {
            tree.insert(0, ("_id".to_string(), ProjNode::Include));
        }
        Ok(Projection { tree, inclusion })
    }

    /// True for an inclusion projection.
    pub fn is_inclusion(&self) -> bool {
        self.inclusion
    }

    /// Apply to one document. A computed field whose expression fails (e.g. `$divide` by
    /// zero) is left out; use [`Projection::try_apply`] to surface such errors.
    pub fn apply(&self, doc: &Document) -> Document {
        self.project(doc, false)
            .unwrap_or_else(|_| apply_inclusion(doc, &self.tree))
    }

    /// Apply to one document, failing on expression evaluation errors (what mongod does).
    pub fn try_apply(&self, doc: &Document) -> ServerResult<Document> {
        self.project(doc, true)
    }

    /// [`Projection::try_apply`] on stored bytes, for a projection that only leaves fields out
    /// or slices arrays: the result is copied element by element, never decoded (an oplog
    /// reader can cut a transaction's ops to the first few without the server decoding
    /// megabytes). `None` for other projections, which need the decoded document.
    pub fn apply_raw(&self, doc: &RawDocument) -> Option<RawDocumentBuf> {
        if self.inclusion || !only_exclusions(&self.tree) {
            return None;
        }
        if leaves_unchanged(doc, &self.tree) {
            return Some(doc.to_owned());
        }
        exclusion_raw(doc, &self.tree).ok()
    }

    fn project(&self, doc: &Document, strict: bool) -> ServerResult<Document> {
        if self.inclusion {
            let mut out = apply_inclusion(doc, &self.tree);
            add_computed(&mut out, &self.tree, doc, strict)?;
            Ok(out)
        } else {
            Ok(apply_exclusion(doc, &self.tree))
        }
    }
}

fn find<'a>(tree: &'a Tree, key: &str) -> Option<&'a ProjNode> {
    tree.iter().find(|(k, _)| k == key).map(|(_, n)| n)
}

/// The elements `$slice` keeps of an array of `len`: (first, how many).
fn slice_range(len: usize, skip: Option<i64>, limit: i64) -> (usize, usize) {
    let len = len as i64;
    let (start, count) = match skip {
        None if limit >= 0 => (0, limit),
        None => ((len + limit).max(0), len),
        Some(s) if s < 0 => ((len + s).max(0), limit),
        Some(s) => (s.min(len), limit),
    };
    (start as usize, count.max(0) as usize)
}

fn slice(v: &Bson, skip: Option<i64>, limit: i64) -> Bson {
    let Bson::Array(a) = v else {
        return v.clone();
    };
    let (start, count) = slice_range(a.len(), skip, limit);
    Bson::Array(a.iter().skip(start).take(count).cloned().collect())
}

fn only_exclusions(tree: &Tree) -> bool {
    tree.iter().all(|(_, n)| match n {
        ProjNode::Exclude | ProjNode::Slice(..) => true,
        ProjNode::Sub(t) => only_exclusions(t),
        _ => false,
    })
}

/// Whether the exclusion `tree` leaves `doc` as it is (nothing it names is there to leave out
/// or to shorten), so that its bytes go out as they are, with no copy element by element: most
/// oplog entries, for an oplog reader that cuts transactions short.
fn leaves_unchanged(doc: &RawDocument, tree: &Tree) -> bool {
    doc.iter().all(|element| {
        let Ok((k, v)) = element else { return false };
        match (find(tree, k), v) {
            (None, _) => true,
            (Some(ProjNode::Slice(s, l)), RawBsonRef::Array(a)) => {
                let len = a.into_iter().count();
                let (start, count) = slice_range(len, *s, *l);
                start == 0 && count >= len
            }
            (Some(ProjNode::Slice(..)), _) => true,
            (Some(ProjNode::Sub(t)), RawBsonRef::Document(d)) => leaves_unchanged(d, t),
            (Some(ProjNode::Sub(t)), RawBsonRef::Array(a)) => a.into_iter().all(|e| match e {
                Ok(RawBsonRef::Document(d)) => leaves_unchanged(d, t),
                Ok(RawBsonRef::Array(_)) | Err(_) => false,
                Ok(_) => true,
            }),
            (Some(ProjNode::Sub(_)), _) => true,
            (Some(_), _) => false,
        }
    })
}

/// [`apply_exclusion`] on bytes.
fn exclusion_raw(doc: &RawDocument, tree: &Tree) -> Result<RawDocumentBuf, bson::raw::Error> {
    let mut out = RawDocumentBuf::new();
    for element in doc.iter() {
        let (k, v) = element?;
        match find(tree, k) {
            Some(ProjNode::Exclude) => {}
            Some(ProjNode::Sub(t)) => out.append(k, exclusion_value_raw(v, t)?),
            Some(ProjNode::Slice(s, l)) => out.append(k, slice_raw(v, *s, *l)?),
            _ => out.append_ref(k, v),
        }
    }
    Ok(out)
}

/// [`exclusion_value`] on bytes.
fn exclusion_value_raw(v: RawBsonRef<'_>, tree: &Tree) -> Result<RawBson, bson::raw::Error> {
    Ok(match v {
        RawBsonRef::Document(d) => RawBson::Document(exclusion_raw(d, tree)?),
        RawBsonRef::Array(a) => {
            let mut out = RawArrayBuf::new();
            for e in a {
                out.push(exclusion_value_raw(e?, tree)?);
            }
            RawBson::Array(out)
        }
        other => other.to_raw_bson(),
    })
}

/// [`slice`] on bytes.
fn slice_raw(
    v: RawBsonRef<'_>,
    skip: Option<i64>,
    limit: i64,
) -> Result<RawBson, bson::raw::Error> {
    let RawBsonRef::Array(a) = v else {
        return Ok(v.to_raw_bson());
    };
    let (start, count) = slice_range(a.into_iter().count(), skip, limit);
    let mut out = RawArrayBuf::new();
    for e in a.into_iter().skip(start).take(count) {
        out.push(e?.to_raw_bson());
    }
    Ok(RawBson::Array(out))
}

fn apply_inclusion(doc: &Document, tree: &Tree) -> Document {
    let mut out = Document::new();
    for (k, v) in doc {
        let Some(node) = find(tree, k) else { continue };
        match node {
            ProjNode::Include => {
                out.insert(k.clone(), v.clone());
            }
            ProjNode::Slice(s, l) => {
                out.insert(k.clone(), slice(v, *s, *l));
            }
            ProjNode::Sub(t) => match v {
                Bson::Document(d) => {
                    out.insert(k.clone(), apply_inclusion(d, t));
                }
                Bson::Array(a) => {
                    out.insert(k.clone(), inclusion_array(a, t));
                }
                _ => {}
            },
            ProjNode::ElemMatch(node) => {
                if let Bson::Array(a) = v {
                    if let Some(e) = a
                        .iter()
                        .find(|e| node.matches_value(Some(&Bson::Array(vec![(*e).clone()]))))
                    {
                        out.insert(k.clone(), Bson::Array(vec![e.clone()]));
                    }
                }
            }
            ProjNode::Computed(_) | ProjNode::Exclude => {}
        }
    }
    out
}

fn inclusion_array(a: &[Bson], t: &Tree) -> Bson {
    Bson::Array(
        a.iter()
            .filter_map(|e| match e {
                Bson::Document(d) => Some(Bson::Document(apply_inclusion(d, t))),
                Bson::Array(inner) => Some(inclusion_array(inner, t)),
                _ => None,
            })
            .collect(),
    )
}

fn has_computed(tree: &Tree) -> bool {
    tree.iter().any(|(_, n)| match n {
        ProjNode::Computed(_) => true,
        ProjNode::Sub(t) => has_computed(t),
        _ => false,
    })
}

fn add_computed(
    out: &mut Document,
    tree: &Tree,
    root: &Document,
    strict: bool,
) -> ServerResult<()> {
    for (k, node) in tree {
        match node {
            ProjNode::Computed(e) => match e.eval(root) {
                Ok(Some(v)) => {
                    out.insert(k.clone(), v);
                }
                Ok(None) => {}
                Err(err) if strict => return Err(err),
                Err(_) => {}
            },
            ProjNode::Sub(t) if has_computed(t) => match out.get_mut(k) {
                Some(Bson::Document(d)) => add_computed(d, t, root, strict)?,
                Some(Bson::Array(a)) => {
                    for e in a.iter_mut() {
                        if let Bson::Document(d) = e {
                            add_computed(d, t, root, strict)?;
                        }
                    }
                }
                _ => {
                    let mut d = Document::new();
                    add_computed(&mut d, t, root, strict)?;
                    out.insert(k.clone(), d);
                }
            },
            _ => {}
        }
    }
    Ok(())
}

fn apply_exclusion(doc: &Document, tree: &Tree) -> Document {
    let mut out = Document::new();
    for (k, v) in doc {
        match find(tree, k) {
            Some(ProjNode::Exclude) => {}
            Some(ProjNode::Sub(t)) => {
                out.insert(k.clone(), exclusion_value(v, t));
            }
            Some(ProjNode::Slice(s, l)) => {
                out.insert(k.clone(), slice(v, *s, *l));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

fn exclusion_value(v: &Bson, t: &Tree) -> Bson {
    match v {
        Bson::Document(d) => Bson::Document(apply_exclusion(d, t)),
        Bson::Array(a) => Bson::Array(a.iter().map(|e| exclusion_value(e, t)).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn proj(spec: Document, d: Document) -> Document {
        Projection::new(&spec).unwrap().try_apply(&d).unwrap()
    }

    fn perr(spec: Document) -> ServerError {
        Projection::new(&spec).unwrap_err()
    }

    #[test]
    fn exclusions_and_slices_on_bytes_give_what_the_decoded_document_gives() {
        let docs = [
            doc! {"_id": 1, "ts": 5, "o": {"applyOps": [{"op": "i"}, {"op": "u"}, {"op": "d"}, {"op": "n"}, {"op": "c"}], "x": 1}},
            doc! {"_id": 2, "o": {"applyOps": "not an array"}, "a": [1, 2, 3]},
            doc! {"_id": 3, "o": [{"applyOps": [1, 2, 3]}, 7, [{"applyOps": [4, 5]}]], "b": {"c": {"d": 1}}},
            doc! {"_id": 4, "a": [], "o": {}},
            doc! {"a": {"b": [1, {"c": 2, "d": 3}]}, "_id": {"k": [1]}, "z": null},
            doc! {},
            // Left as they are by most of the projections below.
            doc! {"_id": 5, "o": {"applyOps": [{"op": "i"}]}, "a": [1]},
            doc! {"_id": 6, "o": {"x": {"applyOps": [1, 2, 3, 4, 5]}}, "b": {"c": 1}},
            doc! {"_id": 7, "o": [{"x": 1}, 2, [{"applyOps": [1, 2, 3, 4]}]]},
            doc! {"_id": 8, "a": [1, 2], "b": {"c": {"e": 1}}},
        ];
        let specs = [
            doc! {"o.applyOps": {"$slice": 3}},
            doc! {"o.applyOps": {"$slice": -2}},
            doc! {"o.applyOps": {"$slice": [1, 2]}},
            doc! {"o.applyOps": {"$slice": [-9, 2]}},
            doc! {"o.applyOps": {"$slice": 0}},
            doc! {"a": {"$slice": 2}, "_id": 0},
            doc! {"o.x": 0, "b.c.d": 0},
            doc! {"a.b.c": 0, "z": false},
            doc! {"a": 0},
        ];
        for spec in &specs {
            let p = Projection::new(spec).unwrap();
            for d in &docs {
                let raw = bson::RawDocumentBuf::from_document(d).unwrap();
                let on_bytes = p.apply_raw(&raw).expect("an exclusion projection");
                let decoded =
                    bson::RawDocumentBuf::from_document(&p.try_apply(d).unwrap()).unwrap();
                assert_eq!(on_bytes.as_bytes(), decoded.as_bytes(), "{spec} on {d}");
            }
        }
        // Inclusions, computed fields and $elemMatch need the decoded document.
        for spec in [
            doc! {"a": 1},
            doc! {"_id": 1, "o.applyOps": {"$slice": 1}},
            doc! {"x": {"$add": [1, 2]}},
            doc! {"a": {"$elemMatch": {"c": 2}}},
        ] {
            let raw = bson::RawDocumentBuf::from_document(&docs[0]).unwrap();
            assert!(
                Projection::new(&spec).unwrap().apply_raw(&raw).is_none(),
                "{spec}"
            );
        }
    }

    #[test]
    fn inclusion_keeps_listed_fields_in_document_order_plus_id() {
        let d = doc! {"_id": 1, "a": 1, "b": 2, "c": 3};
        assert_eq!(
            proj(doc! {"c": 1, "a": true}, d.clone()),
            doc! {"_id": 1, "a": 1, "c": 3}
        );
        assert_eq!(proj(doc! {"c": 1, "_id": 0}, d.clone()), doc! {"c": 3});
        assert_eq!(proj(doc! {"_id": 1}, d.clone()), doc! {"_id": 1});
        assert_eq!(proj(doc! {"zz": 1}, d), doc! {"_id": 1});
    }

    #[test]
    fn exclusion_drops_listed_fields() {
        let d = doc! {"_id": 1, "a": 1, "b": 2};
        assert_eq!(proj(doc! {"a": 0}, d.clone()), doc! {"_id": 1, "b": 2});
        assert_eq!(proj(doc! {"_id": 0}, d.clone()), doc! {"a": 1, "b": 2});
        assert_eq!(proj(doc! {"_id": 0, "b": false}, d.clone()), doc! {"a": 1});
        assert_eq!(proj(doc! {}, d.clone()), d);
    }

    #[test]
    fn mixing_inclusion_and_exclusion_is_an_error_except_id() {
        let e = perr(doc! {"a": 1, "b": 0});
        assert_eq!((e.code, e.code_name().as_ref()), (31254, "Location31254"));
        assert_eq!(
            e.message,
            "Cannot do exclusion on field b in inclusion projection"
        );
        let e = perr(doc! {"a": 0, "b": 1});
        assert_eq!(e.code, 31253);
        assert_eq!(
            e.message,
            "Cannot do inclusion on field b in exclusion projection"
        );
        assert_eq!(perr(doc! {"a": 0, "b": "$x"}).code, 31252);
        assert!(Projection::new(&doc! {"_id": 0, "a": 1}).is_ok());
        assert!(Projection::new(&doc! {"_id": 1, "a": 0}).is_ok());
        assert_eq!(perr(doc! {"a": 1, "a.b": 1}).code, 31250);
    }

    #[test]
    fn dotted_inclusion_keeps_nesting_and_maps_arrays() {
        let d = doc! {"_id": 1, "a": {"b": 1, "c": 2}, "d": 3};
        assert_eq!(
            proj(doc! {"a.b": 1}, d.clone()),
            doc! {"_id": 1, "a": {"b": 1}}
        );
        assert_eq!(
            proj(doc! {"a": {"b": 1}}, d),
            doc! {"_id": 1, "a": {"b": 1}}
        );
        let arr = doc! {"_id": 1, "a": [{"b": 1, "c": 2}, 5, {"c": 3}, [{"b": 4}]]};
        assert_eq!(
            proj(doc! {"a.b": 1, "_id": 0}, arr),
            doc! {"a": [{"b": 1}, {}, [{"b": 4}]]}
        );
        // a scalar where a document is expected is dropped
        assert_eq!(
            proj(doc! {"a.b": 1}, doc! {"_id": 2, "a": 7}),
            doc! {"_id": 2}
        );
    }

    #[test]
    fn dotted_exclusion_reaches_into_documents_and_arrays() {
        let d = doc! {"_id": 1, "a": [{"b": 1, "c": 2}, 5], "x": {"b": 1, "c": 1}};
        assert_eq!(
            proj(doc! {"a.b": 0, "x.c": 0}, d),
            doc! {"_id": 1, "a": [{"c": 2}, 5], "x": {"b": 1}}
        );
    }

    #[test]
    fn slice_number_and_skip_limit_forms() {
        let d = doc! {"_id": 1, "a": [1, 2, 3, 4, 5], "b": 1};
        assert_eq!(
            proj(doc! {"a": {"$slice": 2}}, d.clone()),
            doc! {"_id": 1, "a": [1, 2], "b": 1}
        );
        assert_eq!(
            proj(doc! {"a": {"$slice": -2}}, d.clone()),
            doc! {"_id": 1, "a": [4, 5], "b": 1}
        );
        assert_eq!(
            proj(doc! {"a": {"$slice": [1, 2]}}, d.clone()),
            doc! {"_id": 1, "a": [2, 3], "b": 1}
        );
        assert_eq!(
            proj(doc! {"a": {"$slice": [-2, 5]}}, d.clone()),
            doc! {"_id": 1, "a": [4, 5], "b": 1}
        );
        assert_eq!(
            proj(doc! {"a": {"$slice": [9, 1]}}, d.clone()),
            doc! {"_id": 1, "a": [], "b": 1}
        );
        // combined with an inclusion, only listed fields remain
        assert_eq!(
            proj(doc! {"a": {"$slice": 1}, "_id": 0, "zz": 1}, d.clone()),
            doc! {"a": [1]}
        );
        assert_eq!(perr(doc! {"a": {"$slice": [1, 0]}}).code, 31259);
        assert_eq!(perr(doc! {"a": {"$slice": "x"}}).code, 31273);
        assert_eq!(perr(doc! {"a": {"$slice": [1]}}).code, 31272);
    }

    #[test]
    fn elem_match_projection_returns_first_matching_element() {
        let d = doc! {"_id": 1, "s": [{"g": 1, "n": "a"}, {"g": 2, "n": "b"}, {"g": 2, "n": "c"}], "o": 1};
        assert_eq!(
            proj(doc! {"s": {"$elemMatch": {"g": 2}}}, d.clone()),
            doc! {"_id": 1, "s": [{"g": 2, "n": "b"}]}
        );
        assert_eq!(
            proj(doc! {"s": {"$elemMatch": {"g": 9}}}, d),
            doc! {"_id": 1}
        );
        let nums = doc! {"_id": 1, "v": [1, 5, 9]};
        assert_eq!(
            proj(doc! {"v": {"$elemMatch": {"$gt": 4}}}, nums),
            doc! {"_id": 1, "v": [5]}
        );
        assert_eq!(perr(doc! {"a.b": {"$elemMatch": {"x": 1}}}).code, 31275);
    }

    #[test]
    fn literals_and_field_references_compute_fields() {
        let d = doc! {"_id": 1, "a": {"b": 5}, "c": 1};
        assert_eq!(
            proj(
                doc! {"x": "$a.b", "c": 1, "lit": "hello", "n": null},
                d.clone()
            ),
            doc! {"_id": 1, "c": 1, "x": 5, "lit": "hello", "n": null}
        );
        assert_eq!(
            proj(
                doc! {"_id": 0, "y": {"$add": ["$c", 1]}, "z": {"$literal": 1}},
                d.clone()
            ),
            doc! {"y": 2, "z": 1}
        );
        assert_eq!(
            proj(doc! {"_id": 0, "a.q": "$c"}, d.clone()),
            doc! {"a": {"q": 1}}
        );
        // a missing reference produces no field
        assert_eq!(proj(doc! {"_id": 0, "m": "$nope"}, d), doc! {});
    }

    #[test]
    fn expression_errors_fail_try_apply_but_apply_drops_the_field() {
        let p = Projection::new(&doc! {"a": 1, "q": {"$divide": [1, 0]}}).unwrap();
        let d = doc! {"_id": 1, "a": 2, "secret": 3};
        assert_eq!(p.try_apply(&d).unwrap_err().code, 16608);
        assert_eq!(p.apply(&d), doc! {"_id": 1, "a": 2});
    }

    #[test]
    fn unsupported_forms() {
        assert_eq!(perr(doc! {"a.$": 1}).code, 238);
        assert_eq!(perr(doc! {"a": {"$meta": "textScore"}}).code, 238);
        assert_eq!(perr(doc! {"a": {"$foo": 1}}).code, 168);
    }
}
