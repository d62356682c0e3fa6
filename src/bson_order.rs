//! MongoDB's order of BSON types, shared by the embedded server's comparisons and by the
//! replicator's `_id` ranges. Pure logic.

use bson::Bson;

/// The canonical type of a value (mongod's `canonicalizeBSONType` in
/// `src/mongo/bson/bsontypes.h`): values of different canonical types never compare equal, and
/// sort by this number.
pub fn canonical_type(v: &Bson) -> i32 {
    match v {
        Bson::MinKey => -1,
        Bson::Undefined => 0,
        Bson::Null => 5,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 10,
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

/// MongoDB's total order over BSON values, as an `_id` index sorts them (binary comparison of
/// strings, the simple collation): canonical type first (see [`canonical_type`]), then the
/// value. Numbers compare mathematically across int, long, double and decimal (NaN lowest,
/// equal to itself); documents field by field (type, name, value); arrays element by element.
/// The replicator's `_id` ranges merge two servers' `_id`-ordered reads with it, so it must
/// agree with the servers' own sort.
pub fn compare(a: &Bson, b: &Bson) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (ta, tb) = (canonical_type(a), canonical_type(b));
    if ta != tb {
        return ta.cmp(&tb);
    }
    match (a, b) {
        _ if ta == 10 => numbers::compare(a, b),
        (Bson::String(x) | Bson::Symbol(x), Bson::String(y) | Bson::Symbol(y)) => {
            x.as_bytes().cmp(y.as_bytes())
        }
        (Bson::Document(x), Bson::Document(y)) => {
            let (mut ia, mut ib) = (x.iter(), y.iter());
            loop {
                match (ia.next(), ib.next()) {
                    (None, None) => return Ordering::Equal,
                    (None, Some(_)) => return Ordering::Less,
                    (Some(_), None) => return Ordering::Greater,
                    (Some((ka, va)), Some((kb, vb))) => {
                        let c = canonical_type(va)
                            .cmp(&canonical_type(vb))
                            .then_with(|| ka.as_bytes().cmp(kb.as_bytes()))
                            .then_with(|| compare(va, vb));
                        if c != Ordering::Equal {
                            return c;
                        }
                    }
                }
            }
        }
        (Bson::Array(x), Bson::Array(y)) => x
            .iter()
            .zip(y)
            .map(|(va, vb)| compare(va, vb))
            .find(|c| *c != Ordering::Equal)
            .unwrap_or_else(|| x.len().cmp(&y.len())),
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
            .as_bytes()
            .cmp(y.pattern.as_bytes())
            .then_with(|| x.options.as_bytes().cmp(y.options.as_bytes())),
        (Bson::JavaScriptCode(x), Bson::JavaScriptCode(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Bson::JavaScriptCodeWithScope(x), Bson::JavaScriptCodeWithScope(y)) => {
            x.code.as_bytes().cmp(y.code.as_bytes()).then_with(|| {
                compare(
                    &Bson::Document(x.scope.clone()),
                    &Bson::Document(y.scope.clone()),
                )
            })
        }
        (Bson::DbPointer(_), Bson::DbPointer(_)) => {
            let bytes = |v: &Bson| {
                let mut out = Vec::new();
                let _ = bson::doc! {"": v.clone()}.to_writer(&mut out);
                out
            };
            bytes(a).cmp(&bytes(b))
        }
        _ => Ordering::Equal,
    }
}

/// Numbers by mathematical value, whatever their BSON type.
mod numbers {
    use bson::Bson;
    use std::cmp::Ordering;

    /// A number as sign, significant digits (no leading or trailing zeros; empty for zero)
    /// and exponent: value = digits x 10^exp. Exact for every int, long, double and decimal.
    #[derive(Debug, PartialEq)]
    enum Value {
        NaN,
        Infinite(bool),
        Finite(bool, String, i64),
    }

    fn parse(s: &str) -> Value {
        let (neg, body) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let lower = body.to_ascii_lowercase();
        if lower.contains("nan") {
            return Value::NaN;
        }
        if lower.starts_with("inf") {
            return Value::Infinite(neg);
        }
        let (mantissa, exp) = match lower.split_once('e') {
            Some((m, e)) => (m, e.parse::<i64>().unwrap_or(0)),
            None => (lower.as_str(), 0),
        };
        let (int_part, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let mut exp = exp - frac.len() as i64;
        let mut digits = format!("{int_part}{frac}")
            .trim_start_matches('0')
            .to_string();
        while digits.ends_with('0') {
            digits.pop();
            exp += 1;
        }
        if digits.is_empty() {
            return Value::Finite(false, String::new(), 0);
        }
        Value::Finite(neg, digits, exp)
    }

    fn value(v: &Bson) -> Value {
        match v {
            Bson::Int32(i) => parse(&i.to_string()),
            Bson::Int64(i) => parse(&i.to_string()),
            Bson::Double(d) if d.is_nan() => Value::NaN,
            Bson::Double(d) if d.is_infinite() => Value::Infinite(*d < 0.0),
            // `{:e}` prints the shortest digits that read back as the same double, which is
            // exactly the double's value only for some; the order of distinct doubles and of
            // a double and an integer is what matters here, and both are kept.
            Bson::Double(d) => parse(&format!("{d:e}")),
            Bson::Decimal128(d) => parse(&d.to_string()),
            _ => Value::NaN,
        }
    }

    fn magnitude(da: &str, ea: i64, db: &str, eb: i64) -> Ordering {
        let (adj_a, adj_b) = (da.len() as i64 + ea, db.len() as i64 + eb);
        if adj_a != adj_b {
            return adj_a.cmp(&adj_b);
        }
        let len = da.len().max(db.len());
        format!("{da:0<len$}").cmp(&format!("{db:0<len$}"))
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

    pub fn compare(a: &Bson, b: &Bson) -> Ordering {
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
            _ => {
                let rank = |v: &Value| match v {
                    Value::NaN => 0,
                    Value::Infinite(true) => 1,
                    Value::Finite(..) => 2,
                    Value::Infinite(false) => 3,
                };
                match (value(a), value(b)) {
                    (Value::Finite(na, da, ea), Value::Finite(nb, db, eb)) => {
                        let sign = |neg: bool, d: &str| match (d.is_empty(), neg) {
                            (true, _) => 0,
                            (false, true) => -1,
                            (false, false) => 1,
                        };
                        let (sa, sb) = (sign(na, &da), sign(nb, &db));
                        match (sa.cmp(&sb), sa) {
                            (Ordering::Equal, 0) => Ordering::Equal,
                            (Ordering::Equal, 1) => magnitude(&da, ea, &db, eb),
                            (Ordering::Equal, _) => magnitude(&db, eb, &da, ea),
                            (c, _) => c,
                        }
                    }
                    (x, y) => rank(&x).cmp(&rank(&y)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, oid::ObjectId, Binary, Decimal128, Timestamp};
    use std::cmp::Ordering;
    use std::str::FromStr;

    fn dec(s: &str) -> Bson {
        Bson::Decimal128(Decimal128::from_str(s).unwrap())
    }

    #[test]
    fn types_sort_in_mongodb_bracket_order() {
        let ordered = [
            Bson::MinKey,
            Bson::Null,
            Bson::Double(f64::NAN),
            Bson::Int64(i64::MIN),
            Bson::Int32(-1),
            Bson::Double(0.5),
            Bson::Int32(1),
            dec("1.5"),
            Bson::String("".into()),
            Bson::String("a".into()),
            Bson::Document(doc! {"a": 1}),
            Bson::Document(doc! {"a": 1, "b": 1}),
            Bson::Array(vec![]),
            Bson::Binary(Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes: vec![9],
            }),
            Bson::ObjectId(ObjectId::from_bytes([0; 12])),
            Bson::Boolean(false),
            Bson::Boolean(true),
            Bson::DateTime(bson::DateTime::from_millis(-5)),
            Bson::Timestamp(Timestamp {
                time: 1,
                increment: 0,
            }),
            Bson::MaxKey,
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(compare(a, b), i.cmp(&j), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn equal_numbers_of_different_types_are_one_position() {
        assert_eq!(
            compare(&Bson::Int32(1), &Bson::Double(1.0)),
            Ordering::Equal
        );
        assert_eq!(compare(&Bson::Int64(1), &dec("1.00")), Ordering::Equal);
        assert_eq!(compare(&dec("99"), &dec("1E+2")), Ordering::Less);
        assert_eq!(
            compare(
                &Bson::Int64(i64::MAX),
                &Bson::Double(9.223372036854775808e18)
            ),
            Ordering::Less
        );
    }
}
