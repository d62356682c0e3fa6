//! Dotted-path resolution.
//!
//! * [`get_path`]: plain lookup, no array expansion (a numeric component indexes an array).
//! * [`matcher_values`]: the matcher's view of a path (mongod's `BSONElementIterator`): arrays
//!   met along the path are expanded one level, a document that lacks the rest of the path
//!   yields "missing" (`None`), and a path ending at an array yields each element and then the
//!   array itself.

use bson::{Bson, Document};

/// Split a dotted path into its components.
pub fn split_path(path: &str) -> Vec<String> {
    path.split('.').map(str::to_string).collect()
}

/// True when a path component is all ASCII digits (an array position candidate).
pub fn is_index(part: &str) -> bool {
    !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit())
}

fn index_of(part: &str) -> Option<usize> {
    if is_index(part) {
        part.parse().ok()
    } else {
        None
    }
}

/// Look up a dotted path without array expansion; a numeric component indexes an array.
/// `get_path(doc, "a.b")` on `{a: {b: 1}}` is `Some(1)`; on `{a: [{b: 1}]}` it is `None`.
pub fn get_path<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let mut cur = doc.get(parts.next()?)?;
    for part in parts {
        cur = match cur {
            Bson::Document(d) => d.get(part)?,
            Bson::Array(a) => a.get(index_of(part)?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// How a path that *ends* at an array is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafArrays {
    /// Each element, then the whole array (equality, comparisons, `$type`, `$exists`...).
    Expand,
    /// Only the array itself (`$size`, `$elemMatch`).
    Keep,
}

/// Receives the values a path yields. `offset` is mongod's `ElementIterator::Context::
/// arrayOffset`: the index of the element of the outermost array traversed *implicitly* to reach
/// the value (`None` when no array was traversed, for the whole array yielded after its
/// elements, and for positional readings such as `a.1`). It is what the positional update
/// operator `$` uses as the matched index.
pub(crate) trait ValueSink<'a> {
    fn push(&mut self, value: Option<&'a Bson>, offset: Option<usize>);
}

impl<'a> ValueSink<'a> for Vec<Option<&'a Bson>> {
    fn push(&mut self, value: Option<&'a Bson>, _offset: Option<usize>) {
        Vec::push(self, value);
    }
}

impl<'a> ValueSink<'a> for Vec<(Option<&'a Bson>, Option<usize>)> {
    fn push(&mut self, value: Option<&'a Bson>, offset: Option<usize>) {
        Vec::push(self, (value, offset));
    }
}

/// All values the matcher sees at `parts` in `doc`; `None` stands for "missing".
/// An empty result means the path led nowhere (e.g. `a.b` over an array of scalars).
pub fn matcher_values<'a>(
    doc: &'a Document,
    parts: &[String],
    leaf: LeafArrays,
    out: &mut Vec<Option<&'a Bson>>,
) {
    values_in(doc, parts, leaf, None, out);
}

/// [`matcher_values`] with each value's array offset (see [`ValueSink`]).
pub(crate) fn matcher_values_with_offsets<'a>(
    doc: &'a Document,
    parts: &[String],
    leaf: LeafArrays,
    out: &mut Vec<(Option<&'a Bson>, Option<usize>)>,
) {
    values_in(doc, parts, leaf, None, out);
}

/// `outer`: the offset imposed by an enclosing implicit array traversal (the outermost array
/// offset wins, as in `BSONElementIterator::next`).
fn values_in<'a, S: ValueSink<'a>>(
    doc: &'a Document,
    parts: &[String],
    leaf: LeafArrays,
    outer: Option<usize>,
    out: &mut S,
) {
    if parts.is_empty() {
        return;
    }
    // Walk through embedded documents until the path ends or an array is met.
    let mut cur = doc;
    let mut idx = 0;
    loop {
        match cur.get(&parts[idx]) {
            None => {
                out.push(None, outer);
                return;
            }
            Some(v) => {
                if idx + 1 == parts.len() {
                    from_start(v, &parts[idx + 1..], leaf, outer, out);
                    return;
                }
                match v {
                    Bson::Document(d) => {
                        cur = d;
                        idx += 1;
                    }
                    Bson::Array(_) => {
                        from_start(v, &parts[idx + 1..], leaf, outer, out);
                        return;
                    }
                    _ => {
                        out.push(None, outer);
                        return;
                    }
                }
            }
        }
    }
}

fn from_start<'a, S: ValueSink<'a>>(
    start: &'a Bson,
    rest: &[String],
    leaf: LeafArrays,
    outer: Option<usize>,
    out: &mut S,
) {
    match start {
        Bson::Array(arr) => {
            if rest.is_empty() && leaf == LeafArrays::Keep {
                out.push(Some(start), outer);
                return;
            }
            traverse_array(arr, rest, leaf, outer, out);
            if rest.is_empty() {
                out.push(Some(start), outer);
            }
        }
        _ => out.push(Some(start), outer),
    }
}

fn traverse_array<'a, S: ValueSink<'a>>(
    arr: &'a [Bson],
    rest: &[String],
    leaf: LeafArrays,
    outer: Option<usize>,
    out: &mut S,
) {
    for (i, elt) in arr.iter().enumerate() {
        // Values reached by implicitly traversing this array carry this element's index,
        // unless an enclosing array already imposes its own.
        let implicit = outer.or(Some(i));
        if rest.is_empty() {
            out.push(Some(elt), implicit);
            continue;
        }
        let offset_match = index_of(&rest[0]) == Some(i);
        match elt {
            Bson::Document(d) => {
                // Implicit traversal into the element...
                values_in(d, rest, leaf, implicit, out);
                // ...and, when the component names this position, the positional reading
                // (not an implicit traversal: no offset of its own from this array).
                if offset_match {
                    if rest.len() == 1 {
                        out.push(Some(elt), outer);
                    } else {
                        values_in(d, &rest[1..], leaf, outer, out);
                    }
                }
            }
            _ if offset_match => {
                if rest.len() == 1 {
                    out.push(Some(elt), outer);
                } else if let Bson::Array(inner) = elt {
                    traverse_array(inner, &rest[1..], leaf, outer, out);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{bson, doc};

    fn values(doc: &Document, path: &str, leaf: LeafArrays) -> Vec<Option<Bson>> {
        let mut out = Vec::new();
        matcher_values(doc, &split_path(path), leaf, &mut out);
        out.into_iter().map(|v| v.cloned()).collect()
    }

    #[test]
    fn get_path_descends_documents_and_indexes_arrays() {
        let d = doc! {"a": {"b": [10, {"c": 5}]}};
        assert_eq!(get_path(&d, "a.b.0"), Some(&Bson::Int32(10)));
        assert_eq!(get_path(&d, "a.b.1.c"), Some(&Bson::Int32(5)));
        assert_eq!(get_path(&d, "a.b.c"), None);
        assert_eq!(get_path(&d, "a.x"), None);
        assert_eq!(get_path(&d, "a.b.7"), None);
    }

    #[test]
    fn missing_field_yields_one_missing_value() {
        assert_eq!(values(&doc! {"x": 1}, "a", LeafArrays::Expand), vec![None]);
        assert_eq!(
            values(&doc! {"a": 1}, "a.b", LeafArrays::Expand),
            vec![None]
        );
    }

    #[test]
    fn leaf_array_yields_elements_then_the_array() {
        let d = doc! {"a": [1, [2]]};
        assert_eq!(
            values(&d, "a", LeafArrays::Expand),
            vec![Some(bson!(1)), Some(bson!([2])), Some(bson!([1, [2]]))]
        );
        assert_eq!(
            values(&d, "a", LeafArrays::Keep),
            vec![Some(bson!([1, [2]]))]
        );
    }

    #[test]
    fn array_of_documents_is_traversed_and_missing_members_count() {
        let d = doc! {"a": [{"b": 1}, {"c": 2}, 7]};
        assert_eq!(
            values(&d, "a.b", LeafArrays::Expand),
            vec![Some(bson!(1)), None]
        );
        // only one level of implicit expansion
        let nested = doc! {"a": [[{"b": 1}]]};
        assert!(values(&nested, "a.b", LeafArrays::Expand).is_empty());
    }

    #[test]
    fn numeric_component_indexes_arrays() {
        let d = doc! {"a": [5, 6]};
        assert_eq!(values(&d, "a.1", LeafArrays::Expand), vec![Some(bson!(6))]);
        let docs = doc! {"a": [{"b": 1}, {"b": 2}]};
        // "a.1.b": implicit traversal finds no field "1" in element 1 (missing), plus the
        // positional reading of element 1.
        assert_eq!(
            values(&docs, "a.1.b", LeafArrays::Expand),
            vec![None, None, Some(bson!(2))]
        );
        // a document with a field named "0" is not an array
        let obj = doc! {"a": {"0": "x"}};
        assert_eq!(
            values(&obj, "a.0", LeafArrays::Expand),
            vec![Some(bson!("x"))]
        );
    }

    fn offsets(doc: &Document, path: &str, leaf: LeafArrays) -> Vec<(Option<Bson>, Option<usize>)> {
        let mut out = Vec::new();
        matcher_values_with_offsets(doc, &split_path(path), leaf, &mut out);
        out.into_iter().map(|(v, o)| (v.cloned(), o)).collect()
    }

    #[test]
    fn array_offsets_follow_element_iterator() {
        // Leaf array: each element carries its index, the whole array none.
        assert_eq!(
            offsets(&doc! {"a": [5, 6]}, "a", LeafArrays::Expand),
            vec![
                (Some(bson!(5)), Some(0)),
                (Some(bson!(6)), Some(1)),
                (Some(bson!([5, 6])), None)
            ]
        );
        // The outermost array offset wins (path.cpp: "the element with a value of 2 should be
        // returned with an array offset of 0" for "a.b" over {a: [{b: [1, 2]}]}).
        assert_eq!(
            offsets(&doc! {"a": [{"b": [1, 2]}]}, "a.b", LeafArrays::Expand),
            vec![
                (Some(bson!(1)), Some(0)),
                (Some(bson!(2)), Some(0)),
                (Some(bson!([1, 2])), Some(0))
            ]
        );
        // A positional reading is not an implicit traversal: no offset.
        assert_eq!(
            offsets(&doc! {"a": [5, 6]}, "a.1", LeafArrays::Expand),
            vec![(Some(bson!(6)), None)]
        );
        assert_eq!(
            offsets(&doc! {"a": [{"k": 1}, {"k": 2}]}, "a.k", LeafArrays::Expand),
            vec![(Some(bson!(1)), Some(0)), (Some(bson!(2)), Some(1))]
        );
    }
}
