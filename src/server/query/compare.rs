//! MongoDB's total order over BSON values.
//!
//! Values of different types are ordered by their *canonical type* (the "type bracket"):
//! MinKey < Undefined < Null < numbers < String/Symbol < Object < Array < BinData < ObjectId
//! < Bool < Date < Timestamp < Regex < DBPointer < JavaScript < JavaScript-with-scope < MaxKey.
//! Within a bracket values compare by value; numbers compare mathematically across
//! Int32/Int64/Double/Decimal128 and NaN sorts below every other number (NaN == NaN).

pub use crate::bson_order::canonical_type;
use bson::{Bson, Decimal128, Document};
use std::cmp::Ordering;

/// The BSON type number as `$type` reports it (MinKey is -1).
pub fn type_code(v: &Bson) -> i32 {
    let code = v.element_type() as u8;
    if code == 0xFF {
        -1
    } else {
        code as i32
    }
}

/// The type name MongoDB uses in `$type` aliases and error messages.
pub fn type_name(v: &Bson) -> &'static str {
    match v {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Document(_) => "object",
        Bson::Array(_) => "array",
        Bson::Binary(_) => "binData",
        Bson::Undefined => "undefined",
        Bson::ObjectId(_) => "objectId",
        Bson::Boolean(_) => "bool",
        Bson::DateTime(_) => "date",
        Bson::Null => "null",
        Bson::RegularExpression(_) => "regex",
        Bson::DbPointer(_) => "dbPointer",
        Bson::JavaScriptCode(_) => "javascript",
        Bson::Symbol(_) => "symbol",
        Bson::JavaScriptCodeWithScope(_) => "javascriptWithScope",
        Bson::Int32(_) => "int",
        Bson::Timestamp(_) => "timestamp",
        Bson::Int64(_) => "long",
        Bson::Decimal128(_) => "decimal",
        Bson::MinKey => "minKey",
        Bson::MaxKey => "maxKey",
    }
}

/// Like [`type_name`] but reports a missing value as "missing" (aggregation messages).
pub fn type_name_opt(v: Option<&Bson>) -> &'static str {
    v.map(type_name).unwrap_or("missing")
}

pub fn is_number(v: &Bson) -> bool {
    matches!(
        v,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_)
    )
}

/// True for a Double or Decimal128 NaN.
pub fn is_nan(v: &Bson) -> bool {
    match v {
        Bson::Double(d) => d.is_nan(),
        Bson::Decimal128(d) => matches!(parse_decimal(d), DecimalValue::NaN),
        _ => false,
    }
}

/// Numeric value as f64 (Decimal128 rounded), None for non-numbers.
pub fn as_f64(v: &Bson) -> Option<f64> {
    match v {
        Bson::Int32(i) => Some(*i as f64),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(d) => Some(*d),
        Bson::Decimal128(d) => Some(decimal_to_f64(d)),
        _ => None,
    }
}

/// Numeric value truncated to i64 the way mongod's `numberLong()` does (saturating, NaN → 0).
pub fn as_i64_trunc(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(*i as i64),
        Bson::Int64(i) => Some(*i),
        Bson::Double(_) | Bson::Decimal128(_) => {
            let d = as_f64(v)?;
            Some(if d.is_nan() { 0 } else { d as i64 })
        }
        _ => None,
    }
}

/// MongoDB's truthiness for `$exists`-style flags (`BSONElement::trueValue`).
pub fn true_value(v: &Bson) -> bool {
    match v {
        Bson::Boolean(b) => *b,
        Bson::Int32(i) => *i != 0,
        Bson::Int64(i) => *i != 0,
        Bson::Double(d) => *d != 0.0,
        Bson::Decimal128(_) => as_f64(v).map(|d| d != 0.0).unwrap_or(true),
        Bson::Null | Bson::Undefined => false,
        _ => true,
    }
}

pub fn decimal_to_f64(d: &Decimal128) -> f64 {
    d.to_string().parse::<f64>().unwrap_or(f64::NAN)
}

#[derive(Debug, Clone, PartialEq)]
enum DecimalValue {
    NaN,
    Inf(bool),
    /// sign (true = negative), significant digits without leading/trailing zeros ("" = zero),
    /// exponent such that value = digits × 10^exp.
    Finite(bool, String, i64),
}

fn parse_decimal(d: &Decimal128) -> DecimalValue {
    parse_decimal_str(&d.to_string())
}

fn parse_decimal_str(s: &str) -> DecimalValue {
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let lower = body.to_ascii_lowercase();
    if lower.contains("nan") {
        return DecimalValue::NaN;
    }
    if lower.starts_with("inf") {
        return DecimalValue::Inf(neg);
    }
    let (mantissa, exp) = match lower.split_once('e') {
        Some((m, e)) => (m, e.parse::<i64>().unwrap_or(0)),
        None => (lower.as_str(), 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: String = format!("{int_part}{frac_part}");
    let mut exp = exp - frac_part.len() as i64;
    let trimmed = digits.trim_start_matches('0').to_string();
    digits = trimmed;
    while digits.ends_with('0') {
        digits.pop();
        exp += 1;
    }
    if digits.is_empty() {
        return DecimalValue::Finite(false, String::new(), 0);
    }
    DecimalValue::Finite(neg, digits, exp)
}

fn to_decimal_value(v: &Bson) -> DecimalValue {
    match v {
        Bson::Int32(i) => parse_decimal_str(&i.to_string()),
        Bson::Int64(i) => parse_decimal_str(&i.to_string()),
        Bson::Double(d) if d.is_nan() => DecimalValue::NaN,
        Bson::Double(d) if d.is_infinite() => DecimalValue::Inf(*d < 0.0),
        Bson::Double(d) => parse_decimal_str(&format!("{d:e}")),
        Bson::Decimal128(d) => parse_decimal(d),
        _ => DecimalValue::NaN,
    }
}

fn cmp_magnitude(da: &str, ea: i64, db: &str, eb: i64) -> Ordering {
    let adj_a = da.len() as i64 + ea;
    let adj_b = db.len() as i64 + eb;
    if adj_a != adj_b {
        return adj_a.cmp(&adj_b);
    }
    let len = da.len().max(db.len());
    let pa = format!("{da:0<len$}");
    let pb = format!("{db:0<len$}");
    pa.cmp(&pb)
}

fn cmp_decimal_values(a: &DecimalValue, b: &DecimalValue) -> Ordering {
    use DecimalValue::*;
    let rank = |v: &DecimalValue| match v {
        NaN => 0,
        Inf(true) => 1,
        Finite(..) => 2,
        Inf(false) => 3,
    };
    match (a, b) {
        (Finite(na, da, ea), Finite(nb, db, eb)) => {
            let sign = |neg: bool, digits: &str| {
                if digits.is_empty() {
                    0
                } else if neg {
                    -1
                } else {
                    1
                }
            };
            let (sa, sb) = (sign(*na, da), sign(*nb, db));
            if sa != sb {
                return sa.cmp(&sb);
            }
            match sa {
                0 => Ordering::Equal,
                1 => cmp_magnitude(da, *ea, db, *eb),
                _ => cmp_magnitude(db, *eb, da, *ea),
            }
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

fn cmp_i64_f64(l: i64, d: f64) -> Ordering {
    if d.is_nan() {
        return Ordering::Greater;
    }
    let lf = l as f64;
    if lf < d {
        Ordering::Less
    } else if lf > d {
        Ordering::Greater
    } else {
        // `d` is integral and within ±2^63: compare exactly.
        (l as i128).cmp(&(d as i128))
    }
}

fn cmp_f64(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Compare two numeric values by mathematical value. Non-numbers compare Equal.
pub fn compare_numbers(a: &Bson, b: &Bson) -> Ordering {
    use Bson::*;
    match (a, b) {
        (Int32(x), Int32(y)) => x.cmp(y),
        (Int32(x), Int64(y)) => (*x as i64).cmp(y),
        (Int64(x), Int32(y)) => x.cmp(&(*y as i64)),
        (Int64(x), Int64(y)) => x.cmp(y),
        (Double(x), Double(y)) => cmp_f64(*x, *y),
        (Int32(x), Double(y)) => cmp_i64_f64(*x as i64, *y),
        (Int64(x), Double(y)) => cmp_i64_f64(*x, *y),
        (Double(x), Int32(y)) => cmp_i64_f64(*y as i64, *x).reverse(),
        (Double(x), Int64(y)) => cmp_i64_f64(*y, *x).reverse(),
        (Decimal128(_), _) | (_, Decimal128(_)) => {
            cmp_decimal_values(&to_decimal_value(a), &to_decimal_value(b))
        }
        _ => Ordering::Equal,
    }
}

fn compare_docs(a: &Document, b: &Document, binary: bool) -> Ordering {
    let mut ia = a.iter();
    let mut ib = b.iter();
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((ka, va)), Some((kb, vb))) => {
                let c = canonical_type(va)
                    .cmp(&canonical_type(vb))
                    .then_with(|| ka.as_bytes().cmp(kb.as_bytes()))
                    .then_with(|| compare_values_in(va, vb, binary));
                if c != Ordering::Equal {
                    return c;
                }
            }
        }
    }
}

fn compare_arrays(a: &[Bson], b: &[Bson], binary: bool) -> Ordering {
    for (va, vb) in a.iter().zip(b.iter()) {
        let c = canonical_type(va)
            .cmp(&canonical_type(vb))
            .then_with(|| compare_values_in(va, vb, binary));
        if c != Ordering::Equal {
            return c;
        }
    }
    a.len().cmp(&b.len())
}

fn raw_bytes(v: &Bson) -> Vec<u8> {
    let mut d = Document::new();
    d.insert("", v.clone());
    bson::to_vec(&d).unwrap_or_default()
}

/// MongoDB's total order over BSON values (see module docs), strings under the collation in
/// force.
pub fn compare_values(a: &Bson, b: &Bson) -> Ordering {
    compare_values_in(a, b, false)
}

/// Strings compared by their bytes (`binary`) or under the collation in force.
fn compare_strings(x: &str, y: &str, binary: bool) -> Ordering {
    let collated = if binary {
        None
    } else {
        super::collation::compare(x, y)
    };
    collated.unwrap_or_else(|| x.as_bytes().cmp(y.as_bytes()))
}

/// [`compare_values`]; with `binary`, strings compare by their bytes whatever the collation
/// in force (index keys), without looking the collation up at every string.
fn compare_values_in(a: &Bson, b: &Bson, binary: bool) -> Ordering {
    // The usual `_id` types first: two values of one of these types compare directly (this is
    // the comparison every `_id` index lookup and insert makes, many times).
    match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => return x.cmp(y),
        (Bson::Int64(x), Bson::Int64(y)) => return x.cmp(y),
        (Bson::String(x), Bson::String(y)) => return compare_strings(x, y, binary),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => return x.bytes().cmp(&y.bytes()),
        _ => {}
    }
    let (ta, tb) = (canonical_type(a), canonical_type(b));
    if ta != tb {
        return ta.cmp(&tb);
    }
    use Bson::*;
    match (a, b) {
        (MinKey, MinKey) | (MaxKey, MaxKey) | (Null, Null) | (Undefined, Undefined) => {
            Ordering::Equal
        }
        _ if ta == 10 => compare_numbers(a, b),
        (String(x) | Symbol(x), String(y) | Symbol(y)) => compare_strings(x, y, binary),
        (Document(x), Document(y)) => compare_docs(x, y, binary),
        (Array(x), Array(y)) => compare_arrays(x, y, binary),
        (Binary(x), Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then_with(|| u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then_with(|| x.bytes.cmp(&y.bytes)),
        (ObjectId(x), ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Boolean(x), Boolean(y)) => x.cmp(y),
        (DateTime(x), DateTime(y)) => x.timestamp_millis().cmp(&y.timestamp_millis()),
        (Timestamp(x), Timestamp(y)) => (x.time, x.increment).cmp(&(y.time, y.increment)),
        (RegularExpression(x), RegularExpression(y)) => x
            .pattern
            .as_bytes()
            .cmp(y.pattern.as_bytes())
            .then_with(|| x.options.as_bytes().cmp(y.options.as_bytes())),
        (JavaScriptCode(x), JavaScriptCode(y)) => x.as_bytes().cmp(y.as_bytes()),
        (JavaScriptCodeWithScope(x), JavaScriptCodeWithScope(y)) => x
            .code
            .as_bytes()
            .cmp(y.code.as_bytes())
            .then_with(|| compare_docs(&x.scope, &y.scope, binary)),
        (DbPointer(_), DbPointer(_)) => raw_bytes(a).cmp(&raw_bytes(b)),
        _ => Ordering::Equal,
    }
}

/// Equality as the matcher uses it ({a: 1} matches a: 1.0; documents compare field by field
/// including order).
pub fn values_equal(a: &Bson, b: &Bson) -> bool {
    compare_values(a, b) == Ordering::Equal
}

/// A wrapper usable as a BTreeMap key (`_id` index, `$group` keys): ordered by
/// [`compare_values`], so `1`, `NumberLong(1)` and `1.0` are the same key.
#[derive(Clone, Debug)]
#[repr(transparent)]
pub struct KeyValue(pub Bson);

impl KeyValue {
    /// `value` seen as a key, without copying it: lookups in an index (every write in a
    /// transaction makes several) need no owned key.
    pub fn from_ref(value: &Bson) -> &KeyValue {
        // SAFETY: `KeyValue` is `repr(transparent)` over `Bson`, so the two references have
        // the same layout, and the lifetime is carried over unchanged.
        unsafe { &*(value as *const Bson as *const KeyValue) }
    }
}

impl PartialEq for KeyValue {
    fn eq(&self, other: &Self) -> bool {
        compare_values_in(&self.0, &other.0, true) == Ordering::Equal
    }
}
impl Eq for KeyValue {}
impl PartialOrd for KeyValue {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for KeyValue {
    fn cmp(&self, other: &Self) -> Ordering {
        // Index keys are binary whatever the command's collation (see collation.rs).
        compare_values_in(&self.0, &other.0, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::oid::ObjectId;
    use bson::{doc, Binary, Regex, Timestamp};
    use std::str::FromStr;

    fn dec(s: &str) -> Bson {
        Bson::Decimal128(Decimal128::from_str(s).unwrap())
    }

    #[test]
    fn type_brackets_follow_mongodb_order() {
        // One value per bracket, lowest first.
        let ordered = vec![
            Bson::MinKey,
            Bson::Undefined,
            Bson::Null,
            Bson::Int32(-100),
            Bson::String("".into()),
            Bson::Document(doc! {}),
            Bson::Array(vec![]),
            Bson::Binary(Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes: vec![],
            }),
            Bson::ObjectId(ObjectId::from_bytes([0; 12])),
            Bson::Boolean(false),
            Bson::DateTime(bson::DateTime::from_millis(-5)),
            Bson::Timestamp(Timestamp {
                time: 0,
                increment: 0,
            }),
            Bson::RegularExpression(Regex {
                pattern: "a".into(),
                options: "".into(),
            }),
            Bson::JavaScriptCode("x".into()),
            Bson::MaxKey,
        ];
        for i in 0..ordered.len() {
            for j in 0..ordered.len() {
                assert_eq!(
                    compare_values(&ordered[i], &ordered[j]),
                    i.cmp(&j),
                    "{:?} vs {:?}",
                    ordered[i],
                    ordered[j]
                );
            }
        }
    }

    #[test]
    fn numbers_compare_by_value_across_types() {
        assert!(values_equal(&Bson::Int32(1), &Bson::Double(1.0)));
        assert!(values_equal(&Bson::Int64(1), &Bson::Int32(1)));
        assert!(values_equal(&dec("1.0"), &Bson::Int32(1)));
        assert!(values_equal(&dec("1.50"), &Bson::Double(1.5)));
        assert_eq!(
            compare_values(
                &Bson::Int64(i64::MAX),
                &Bson::Double(9_223_372_036_854_775_808.0)
            ),
            Ordering::Less
        );
        assert_eq!(
            compare_values(&Bson::Int32(2), &Bson::Double(1.5)),
            Ordering::Greater
        );
        assert_eq!(compare_values(&dec("-2"), &dec("1E-3")), Ordering::Less);
        assert_eq!(
            compare_values(&dec("123"), &dec("1.23E+2")),
            Ordering::Equal
        );
        assert_eq!(compare_values(&dec("99"), &dec("1E+2")), Ordering::Less);
    }

    #[test]
    fn nan_sorts_below_all_numbers_and_equals_itself() {
        let nan = Bson::Double(f64::NAN);
        assert_eq!(
            compare_values(&nan, &Bson::Double(f64::NEG_INFINITY)),
            Ordering::Less
        );
        assert_eq!(compare_values(&nan, &Bson::Int64(i64::MIN)), Ordering::Less);
        assert!(values_equal(&nan, &Bson::Double(f64::NAN)));
        assert!(values_equal(&nan, &dec("NaN")));
        // ...but NaN is still a number: above null.
        assert_eq!(compare_values(&nan, &Bson::Null), Ordering::Greater);
    }

    #[test]
    fn strings_compare_bytewise_and_symbol_equals_string() {
        assert_eq!(
            compare_values(&Bson::String("B".into()), &Bson::String("a".into())),
            Ordering::Less
        );
        assert_eq!(
            compare_values(&Bson::String("ab".into()), &Bson::String("abc".into())),
            Ordering::Less
        );
        assert!(values_equal(
            &Bson::Symbol("x".into()),
            &Bson::String("x".into())
        ));
    }

    #[test]
    fn documents_compare_type_then_name_then_value_and_order_matters() {
        let a = Bson::Document(doc! {"x": 1, "y": 2});
        let b = Bson::Document(doc! {"y": 2, "x": 1});
        assert!(!values_equal(&a, &b));
        assert!(values_equal(
            &a,
            &Bson::Document(doc! {"x": 1.0, "y": 2_i64})
        ));
        // type of the first value dominates the field name
        assert_eq!(
            compare_values(
                &Bson::Document(doc! {"z": 1}),
                &Bson::Document(doc! {"a": "s"})
            ),
            Ordering::Less
        );
        // prefix is smaller
        assert_eq!(
            compare_values(
                &Bson::Document(doc! {"a": 1}),
                &Bson::Document(doc! {"a": 1, "b": 0})
            ),
            Ordering::Less
        );
    }

    #[test]
    fn arrays_compare_element_by_element() {
        let a = Bson::Array(vec![1.into(), 2.into()]);
        let b = Bson::Array(vec![1.into(), 3.into()]);
        let c = Bson::Array(vec![1.into()]);
        assert_eq!(compare_values(&a, &b), Ordering::Less);
        assert_eq!(compare_values(&c, &a), Ordering::Less);
        assert_eq!(
            compare_values(&Bson::Array(vec!["a".into()]), &a),
            Ordering::Greater
        );
    }

    #[test]
    fn bindata_compares_length_then_subtype_then_bytes() {
        let bin = |st: u8, bytes: Vec<u8>| {
            Bson::Binary(Binary {
                subtype: st.into(),
                bytes,
            })
        };
        assert_eq!(
            compare_values(&bin(5, vec![9]), &bin(0, vec![1, 1])),
            Ordering::Less
        );
        assert_eq!(
            compare_values(&bin(0, vec![9]), &bin(5, vec![1])),
            Ordering::Less
        );
        assert_eq!(
            compare_values(&bin(0, vec![1]), &bin(0, vec![2])),
            Ordering::Less
        );
    }

    #[test]
    fn dates_timestamps_booleans() {
        assert_eq!(
            compare_values(
                &Bson::DateTime(bson::DateTime::from_millis(-1)),
                &Bson::DateTime(bson::DateTime::from_millis(1))
            ),
            Ordering::Less
        );
        let ts = |time, increment| Bson::Timestamp(Timestamp { time, increment });
        assert_eq!(compare_values(&ts(1, 9), &ts(2, 0)), Ordering::Less);
        assert_eq!(
            compare_values(&ts(u32::MAX, 0), &ts(1, 0)),
            Ordering::Greater
        );
        assert_eq!(
            compare_values(&Bson::Boolean(false), &Bson::Boolean(true)),
            Ordering::Less
        );
    }

    #[test]
    fn key_values_compare_strings_by_bytes_under_any_collation_at_any_depth() {
        let _case_blind = super::super::collation::scope(Some(&Bson::Document(
            bson::doc! {"locale": "en", "strength": 2},
        )))
        .unwrap();
        let pairs = [
            (Bson::String("a".into()), Bson::String("A".into())),
            (
                Bson::Document(bson::doc! {"n": "x", "i": "a"}),
                Bson::Document(bson::doc! {"n": "x", "i": "A"}),
            ),
            (
                Bson::Array(vec![Bson::String("a".into())]),
                Bson::Array(vec![Bson::String("A".into())]),
            ),
        ];
        for (lower, upper) in pairs {
            // Matching and sorting follow the collation...
            assert_eq!(compare_values(&lower, &upper), Ordering::Equal);
            // ...index keys do not: "A" (0x41) sorts before "a" (0x61).
            assert_eq!(
                KeyValue(lower.clone()).cmp(&KeyValue(upper.clone())),
                Ordering::Greater
            );
            assert_ne!(KeyValue(lower), KeyValue(upper));
        }
        // The collation is still in force after index comparisons.
        assert_eq!(
            compare_values(&Bson::String("b".into()), &Bson::String("B".into())),
            Ordering::Equal
        );
    }

    #[test]
    fn key_value_treats_numeric_types_as_one_key() {
        let mut m = std::collections::BTreeMap::new();
        m.insert(KeyValue(Bson::Int32(1)), "a");
        m.insert(KeyValue(Bson::Double(1.0)), "b");
        m.insert(KeyValue(Bson::String("1".into())), "c");
        assert_eq!(m.len(), 2);
        assert_eq!(m[&KeyValue(Bson::Int64(1))], "b");
    }

    #[test]
    fn type_codes_and_truthiness() {
        assert_eq!(type_code(&Bson::MinKey), -1);
        assert_eq!(type_code(&Bson::MaxKey), 127);
        assert_eq!(type_code(&Bson::Int64(1)), 18);
        assert_eq!(type_name(&Bson::Int32(1)), "int");
        assert!(!true_value(&Bson::Int32(0)));
        assert!(!true_value(&Bson::Null));
        assert!(true_value(&Bson::String("".into())));
    }
}
