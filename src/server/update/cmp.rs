//! Local BSON comparison used by $min/$max, $push $sort, $addToSet, $pull and $pullAll.
//!
//! integration: the query engine provides `crate::server::query::compare_values` with the full
//! MongoDB ordering; swap the single `use` line in `mod.rs` (`use self::cmp::compare_values`) for
//! `use crate::server::query::compare_values` and delete `compare_values` here. `identical` (exact
//! byte equality, which MongoDB uses for no-op detection) must stay.

use bson::Bson;
use std::cmp::Ordering;

/// MongoDB's canonical type ranks (`canonicalizeBSONType`).
fn type_rank(v: &Bson) -> i32 {
    match v {
        Bson::MinKey => -1,
        Bson::Undefined => 0,
        Bson::Null => 5,
        Bson::Double(_) | Bson::Int32(_) | Bson::Int64(_) | Bson::Decimal128(_) => 10,
        Bson::String(_) | Bson::Symbol(_) => 15,
        Bson::Document(_) => 20,
        Bson::Array(_) => 25,
        Bson::Binary(_) => 30,
        Bson::ObjectId(_) => 35,
        Bson::Boolean(_) => 40,
        Bson::DateTime(_) => 45,
        Bson::Timestamp(_) => 47,
        Bson::RegularExpression(_) => 50,
        Bson::DbPointer(_) => 55,
        Bson::JavaScriptCode(_) => 60,
        Bson::JavaScriptCodeWithScope(_) => 65,
        Bson::MaxKey => 127,
    }
}

fn as_f64(v: &Bson) -> f64 {
    match v {
        Bson::Double(d) => *d,
        Bson::Int32(i) => *i as f64,
        Bson::Int64(i) => *i as f64,
        Bson::Decimal128(d) => d.to_string().parse::<f64>().unwrap_or(f64::NAN),
        _ => f64::NAN,
    }
}

fn compare_numbers(a: &Bson, b: &Bson) -> Ordering {
    match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => x.cmp(y),
        (Bson::Int64(x), Bson::Int64(y)) => x.cmp(y),
        (Bson::Int32(x), Bson::Int64(y)) => (*x as i64).cmp(y),
        (Bson::Int64(x), Bson::Int32(y)) => x.cmp(&(*y as i64)),
        _ => {
            let (x, y) = (as_f64(a), as_f64(b));
            // NaN sorts before every other number and equals itself.
            match (x.is_nan(), y.is_nan()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Less,
                (false, true) => Ordering::Greater,
                _ => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
            }
        }
    }
}

fn str_of(v: &Bson) -> &str {
    match v {
        Bson::String(s) | Bson::Symbol(s) => s,
        _ => "",
    }
}

/// Compare two values in MongoDB's BSON order (field names of documents included).
pub(crate) fn compare_values(a: &Bson, b: &Bson) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        _ if ra == 10 => compare_numbers(a, b),
        _ if ra == 15 => str_of(a).as_bytes().cmp(str_of(b).as_bytes()),
        (Bson::Document(x), Bson::Document(y)) => {
            let mut ix = x.iter();
            let mut iy = y.iter();
            loop {
                match (ix.next(), iy.next()) {
                    (None, None) => return Ordering::Equal,
                    (None, Some(_)) => return Ordering::Less,
                    (Some(_), None) => return Ordering::Greater,
                    (Some((kx, vx)), Some((ky, vy))) => {
                        let o = type_rank(vx)
                            .cmp(&type_rank(vy))
                            .then_with(|| kx.as_bytes().cmp(ky.as_bytes()))
                            .then_with(|| compare_values(vx, vy));
                        if o != Ordering::Equal {
                            return o;
                        }
                    }
                }
            }
        }
        (Bson::Array(x), Bson::Array(y)) => {
            for (vx, vy) in x.iter().zip(y.iter()) {
                let o = compare_values(vx, vy);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then_with(|| u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then_with(|| x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.timestamp_millis().cmp(&y.timestamp_millis()),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => x
            .pattern
            .cmp(&y.pattern)
            .then_with(|| x.options.cmp(&y.options)),
        (Bson::JavaScriptCode(x), Bson::JavaScriptCode(y)) => x.cmp(y),
        (Bson::JavaScriptCodeWithScope(x), Bson::JavaScriptCodeWithScope(y)) => {
            x.code.cmp(&y.code).then_with(|| {
                compare_values(
                    &Bson::Document(x.scope.clone()),
                    &Bson::Document(y.scope.clone()),
                )
            })
        }
        _ => Ordering::Equal,
    }
}

/// Serialized bytes of a value (wrapped as `{"": v}`), for exact comparison.
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
