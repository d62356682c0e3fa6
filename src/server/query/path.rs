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

/// All values the matcher sees at `parts` in `doc`; `None` stands for "missing".
/// An empty result means the path led nowhere (e.g. `a.b` over an array of scalars).
pub fn matcher_values<'a>(
    doc: &'a Document,
    parts: &[String],
    leaf: LeafArrays,
    out: &mut Vec<Option<&'a Bson>>,
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
                out.push(None);
                return;
            }
            Some(v) => {
                if idx + 1 == parts.len() {
                    from_start(v, &parts[idx + 1..], leaf, out);
                    return;
                }
                match v {
                    Bson::Document(d) => {
                        cur = d;
                        idx += 1;
                    }
                    Bson::Array(_) => {
                        from_start(v, &parts[idx + 1..], leaf, out);
                        return;
                    }
                    _ => {
                        out.push(None);
                        return;
                    }
                }
            }
        }
    }
}

fn from_start<'a>(
    start: &'a Bson,
    rest: &[String],
    leaf: LeafArrays,
    out: &mut Vec<Option<&'a Bson>>,
) {
    match start {
        Bson::Array(arr) => {
            if rest.is_empty() && leaf == LeafArrays::Keep {
                out.push(Some(start));
                return;
            }
            traverse_array(arr, rest, leaf, out);
            if rest.is_empty() {
                out.push(Some(start));
            }
        }
        _ => out.push(Some(start)),
    }
}

fn traverse_array<'a>(
    arr: &'a [Bson],
    rest: &[String],
    leaf: LeafArrays,
    out: &mut Vec<Option<&'a Bson>>,
) {
    for (i, elt) in arr.iter().enumerate() {
        if rest.is_empty() {
            out.push(Some(elt));
            continue;
        }
        let offset_match = index_of(&rest[0]) == Some(i);
        match elt {
            Bson::Document(d) => {
                // Implicit traversal into the element...
                matcher_values(d, rest, leaf, out);
                // ...and, when the component names this position, the positional reading.
                if offset_match {
                    if rest.len() == 1 {
                        out.push(Some(elt));
                    } else {
                        matcher_values(d, &rest[1..], leaf, out);
                    }
                }
            }
            _ if offset_match => {
                if rest.len() == 1 {
                    out.push(Some(elt));
                } else if let Bson::Array(inner) = elt {
                    traverse_array(inner, &rest[1..], leaf, out);
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
}
