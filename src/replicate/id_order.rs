//! The documents of a collection that come after a given `_id` in `_id` order. Pure logic.
//!
//! MongoDB orders values of different types by type first (numbers, then strings, then
//! documents, ... `canonicalizeBSONType` in MongoDB's `src/mongo/bson/bsontypes.h`), but a query
//! comparison such as `{_id: {$gt: 5}}` only matches values of the same type bracket. So "after
//! 5" is `$gt: 5` for numbers, plus every `_id` whose type sorts after numbers.

use crate::bson_order::canonical_type;
use bson::{doc, Bson, Document};

/// Type brackets in MongoDB's sort order: (rank, the `$type` aliases of the bracket).
/// Arrays and regular expressions cannot be an `_id`; they are listed for completeness.
const BRACKETS: &[(i32, &[&str])] = &[
    (-1, &["minKey"]),
    (0, &["undefined"]),
    (5, &["null"]),
    (10, &["number"]),
    (15, &["string", "symbol"]),
    (20, &["object"]),
    (25, &["array"]),
    (30, &["binData"]),
    (35, &["objectId"]),
    (40, &["bool"]),
    (45, &["date"]),
    (47, &["timestamp"]),
    (50, &["regex"]),
    (55, &["dbPointer"]),
    (60, &["javascript"]),
    (65, &["javascriptWithScope"]),
    (127, &["maxKey"]),
];

/// A filter matching exactly the documents whose `_id` sorts after `after`.
pub fn after_filter(after: &Bson) -> Document {
    let later: Vec<Bson> = BRACKETS
        .iter()
        .filter(|(r, _)| *r > canonical_type(after))
        .flat_map(|(_, names)| names.iter().map(|n| Bson::String(n.to_string())))
        .collect();
    let same_type = doc! {"_id": {"$gt": after.clone()}};
    if later.is_empty() {
        return same_type;
    }
    doc! {"$or": [same_type, {"_id": {"$type": later}}]}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_is_followed_by_its_own_bracket_and_every_later_type() {
        let f = after_filter(&Bson::Int32(5));
        let branches = f.get_array("$or").unwrap();
        assert_eq!(branches[0], Bson::Document(doc! {"_id": {"$gt": 5}}));
        let types = branches[1]
            .as_document()
            .unwrap()
            .get_document("_id")
            .unwrap()
            .get_array("$type")
            .unwrap();
        assert!(types.contains(&Bson::String("string".into())));
        assert!(types.contains(&Bson::String("objectId".into())));
        assert!(!types.contains(&Bson::String("number".into())));
        assert!(!types.contains(&Bson::String("null".into())));
    }

    #[test]
    fn nothing_sorts_after_max_key_but_max_key_itself_is_not_repeated() {
        assert_eq!(
            after_filter(&Bson::MaxKey),
            doc! {"_id": {"$gt": Bson::MaxKey}}
        );
    }

    #[test]
    fn every_bracket_rank_matches_the_type_table() {
        let samples = [
            Bson::Null,
            Bson::Double(1.5),
            Bson::String("s".into()),
            Bson::Document(doc! {}),
            Bson::ObjectId(bson::oid::ObjectId::new()),
            Bson::Boolean(true),
        ];
        for s in samples {
            assert!(
                BRACKETS.iter().any(|(r, _)| *r == canonical_type(&s)),
                "{s:?}"
            );
        }
    }
}
