//! Sort specifications (`find` `sort`, `$sort`).
//!
//! Sort keys follow mongod: a path is resolved with array expansion; an ascending key uses
//! the smallest value found, a descending key the largest; missing sorts as null and an empty
//! array sorts below null.

use super::compare::{as_f64, compare_values, is_number};
use super::path::{is_index, split_path};
use crate::server::error::{ServerError, ServerResult};
use bson::{Bson, Document};
use std::cmp::Ordering;

#[derive(Debug, Clone)]
struct SortKey {
    path: Vec<String>,
    ascending: bool,
}

#[derive(Debug, Clone)]
pub struct SortSpec {
    keys: Vec<SortKey>,
    natural: Option<i32>,
}

fn sort_direction(field: &str, v: &Bson) -> ServerResult<i32> {
    if let Bson::Document(d) = v {
        if d.contains_key("$meta") {
            return Err(ServerError::not_implemented(format!(
                "$meta sort on field '{field}' is not supported"
            )));
        }
    }
    if !is_number(v) {
        return Err(ServerError::location(
            15974,
            "$sort key ordering must be specified using a number or {$meta: 'textScore'}",
        ));
    }
    // mongod truncates to an int (so 1.5 is ascending).
    let f = as_f64(v).unwrap_or(0.0);
    let n = if f.is_nan() { 0 } else { f.trunc() as i64 };
    if n != 1 && n != -1 {
        return Err(ServerError::location(
            15975,
            "$sort key ordering must be 1 (for ascending) or -1 (for descending)",
        ));
    }
    Ok(n as i32)
}

impl SortSpec {
    /// Parse `{a: 1, "b.c": -1}`. `{$natural: ±1}` requests insertion order (see
    /// [`SortSpec::natural`]). An empty spec sorts nothing.
    pub fn new(spec: &Document) -> ServerResult<SortSpec> {
        let mut keys = Vec::new();
        let mut natural = None;
        for (field, v) in spec {
            let dir = sort_direction(field, v)?;
            if field == "$natural" {
                natural = Some(dir);
                continue;
            }
            if field.is_empty() || field.split('.').any(str::is_empty) {
                return Err(ServerError::location(
                    40352,
                    "FieldPath cannot be constructed with empty string",
                ));
            }
            if field.starts_with('$') {
                return Err(ServerError::location(
                    16410,
                    "FieldPath field names may not start with '$'.",
                ));
            }
            keys.push(SortKey {
                path: split_path(field),
                ascending: dir == 1,
            });
        }
        Ok(SortSpec { keys, natural })
    }

    /// `Some(1|-1)` when the spec contains `$natural` (insertion order, or its reverse).
    pub fn natural(&self) -> Option<i32> {
        self.natural
    }

    /// `Some(ascending)` when the spec sorts by `_id` alone: the `_id` index holds that order
    /// (both use [`compare_values`]), so a scan of the index needs no sort.
    pub fn only_id(&self) -> Option<bool> {
        match (self.keys.as_slice(), self.natural) {
            ([key], None) if key.path.len() == 1 && key.path[0] == "_id" => Some(key.ascending),
            _ => None,
        }
    }

    /// True when no field keys were given (`{}` or only `$natural`).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn compare(&self, a: &Document, b: &Document) -> Ordering {
        for key in &self.keys {
            let ka = sort_key(a, &key.path, key.ascending);
            let kb = sort_key(b, &key.path, key.ascending);
            let c = compare_values(&ka, &kb);
            let c = if key.ascending { c } else { c.reverse() };
            if c != Ordering::Equal {
                return c;
            }
        }
        Ordering::Equal
    }

    /// Stable sort of `docs` by this spec (ties keep their input order).
    pub fn sort(&self, docs: &mut [Document]) {
        if !self.keys.is_empty() {
            docs.sort_by(|a, b| self.compare(a, b));
        }
    }
}

fn collect(v: Option<&Bson>, rest: &[String], out: &mut Vec<Bson>) {
    let Some(v) = v else {
        out.push(Bson::Null);
        return;
    };
    if rest.is_empty() {
        match v {
            Bson::Array(a) if a.is_empty() => out.push(Bson::Undefined),
            Bson::Array(a) => out.extend(a.iter().cloned()),
            other => out.push(other.clone()),
        }
        return;
    }
    match v {
        Bson::Document(d) => collect(d.get(&rest[0]), &rest[1..], out),
        Bson::Array(a) => {
            if is_index(&rest[0]) {
                let idx: Option<usize> = rest[0].parse().ok();
                if let Some(elt) = idx.and_then(|i| a.get(i)) {
                    collect(Some(elt), &rest[1..], out);
                    return;
                }
            }
            if a.is_empty() {
                out.push(Bson::Null);
            }
            for elt in a {
                match elt {
                    Bson::Document(d) => collect(d.get(&rest[0]), &rest[1..], out),
                    _ => out.push(Bson::Null),
                }
            }
        }
        _ => out.push(Bson::Null),
    }
}

/// The value a document sorts by for one key.
pub fn sort_key(doc: &Document, path: &[String], ascending: bool) -> Bson {
    let mut values = Vec::new();
    collect(doc.get(&path[0]), &path[1..], &mut values);
    let pick = if ascending {
        values.into_iter().min_by(compare_values)
    } else {
        values.into_iter().max_by(compare_values)
    };
    pick.unwrap_or(Bson::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn sorted(spec: Document, docs: Vec<Document>) -> Vec<i32> {
        let s = SortSpec::new(&spec).unwrap();
        let mut docs = docs;
        s.sort(&mut docs);
        docs.iter().map(|d| d.get_i32("_id").unwrap()).collect()
    }

    #[test]
    fn sorts_by_type_bracket_then_value_with_missing_as_null() {
        let docs = vec![
            doc! {"_id": 1, "a": "str"},
            doc! {"_id": 2, "a": 5},
            doc! {"_id": 3},
            doc! {"_id": 4, "a": null},
            doc! {"_id": 5, "a": 1.5},
            doc! {"_id": 6, "a": {"x": 1}},
            doc! {"_id": 7, "a": true},
        ];
        assert_eq!(
            sorted(doc! {"a": 1}, docs.clone()),
            vec![3, 4, 5, 2, 1, 6, 7]
        );
        assert_eq!(sorted(doc! {"a": -1}, docs), vec![7, 6, 1, 2, 5, 3, 4]);
    }

    #[test]
    fn array_keys_use_min_ascending_and_max_descending() {
        let docs = vec![
            doc! {"_id": 1, "a": [1, 10]},
            doc! {"_id": 2, "a": [5]},
            doc! {"_id": 3, "a": 3},
        ];
        assert_eq!(sorted(doc! {"a": 1}, docs.clone()), vec![1, 3, 2]);
        assert_eq!(sorted(doc! {"a": -1}, docs), vec![1, 2, 3]);
    }

    #[test]
    fn empty_array_sorts_before_null() {
        let docs = vec![
            doc! {"_id": 1},
            doc! {"_id": 2, "a": []},
            doc! {"_id": 3, "a": 0},
        ];
        assert_eq!(sorted(doc! {"a": 1}, docs), vec![2, 1, 3]);
    }

    #[test]
    fn dotted_sort_keys_through_arrays() {
        let docs = vec![
            doc! {"_id": 1, "a": [{"b": 4}, {"b": 9}]},
            doc! {"_id": 2, "a": {"b": 6}},
            doc! {"_id": 3, "a": [{"b": 7}]},
        ];
        assert_eq!(sorted(doc! {"a.b": 1}, docs.clone()), vec![1, 2, 3]);
        assert_eq!(sorted(doc! {"a.b": -1}, docs), vec![1, 3, 2]);
        // an element lacking the field contributes null
        let docs = vec![
            doc! {"_id": 1, "a": [{"b": 4}, {"c": 1}]},
            doc! {"_id": 2, "a": [{"b": 2}]},
        ];
        assert_eq!(sorted(doc! {"a.b": 1}, docs), vec![1, 2]);
    }

    #[test]
    fn compound_keys_and_stability() {
        let docs = vec![
            doc! {"_id": 1, "a": 1, "b": 1},
            doc! {"_id": 2, "a": 0, "b": 5},
            doc! {"_id": 3, "a": 1, "b": 2},
            doc! {"_id": 4, "a": 0, "b": 5},
        ];
        assert_eq!(sorted(doc! {"a": 1, "b": -1}, docs), vec![2, 4, 3, 1]);
    }

    #[test]
    fn natural_and_numeric_forms() {
        let s = SortSpec::new(&doc! {"$natural": -1}).unwrap();
        assert_eq!(s.natural(), Some(-1));
        assert!(s.is_empty());
        assert_eq!(SortSpec::new(&doc! {"a": 1}).unwrap().natural(), None);
        assert!(SortSpec::new(&doc! {"a": 1_i64, "b": -1.0}).is_ok());
    }

    #[test]
    fn invalid_directions() {
        let e = SortSpec::new(&doc! {"a": 2}).unwrap_err();
        assert_eq!(e.code, 15975);
        let e = SortSpec::new(&doc! {"a": "asc"}).unwrap_err();
        assert_eq!(e.code, 15974);
        assert_eq!(
            SortSpec::new(&doc! {"a": {"$meta": "textScore"}})
                .unwrap_err()
                .code,
            238
        );
        assert_eq!(SortSpec::new(&doc! {"$a": 1}).unwrap_err().code, 16410);
    }
}
