//! Exact byte equality of BSON values, which MongoDB uses to detect no-op updates (BSON order
//! comparisons come from the query engine).

use bson::Bson;

fn value_bytes(v: &Bson) -> Vec<u8> {
    let mut d = bson::Document::new();
    d.insert("", v.clone());
    let mut out = Vec::new();
    d.to_writer(&mut out).expect("serializable BSON");
    out
}

/// Exact BSON equality: same types, same bytes, same field order (MongoDB's
/// `binaryEqualValues`, used to decide whether a `$set` is a no-op).
pub(crate) fn identical(a: &Bson, b: &Bson) -> bool {
    match (a, b) {
        (Bson::Double(x), Bson::Double(y)) => x.to_bits() == y.to_bits(),
        (Bson::Int32(x), Bson::Int32(y)) => x == y,
        (Bson::Int64(x), Bson::Int64(y)) => x == y,
        (Bson::String(x), Bson::String(y)) => x == y,
        (Bson::Boolean(x), Bson::Boolean(y)) => x == y,
        (Bson::Null, Bson::Null) => true,
        _ => {
            std::mem::discriminant(a) == std::mem::discriminant(b)
                && value_bytes(a) == value_bytes(b)
        }
    }
}

/// Exact byte equality of two documents.
pub(crate) fn documents_identical(a: &bson::Document, b: &bson::Document) -> bool {
    let mut x = Vec::new();
    let mut y = Vec::new();
    a.to_writer(&mut x).expect("serializable BSON");
    b.to_writer(&mut y).expect("serializable BSON");
    x == y
}
