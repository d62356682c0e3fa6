//! Value-level behaviour of the modifiers: arithmetic with MongoDB's `SafeNum` type rules, `$bit`,
//! `$push` (with `$each/$position/$sort/$slice`), `$pull` matching.

use super::parse::{BitOp, PullSpec, PushSpec, SortSpec};
use super::{compare_values, values_equal};
use crate::server::query::Matcher;
use bson::{Bson, Document};
use std::cmp::Ordering;

pub(crate) fn as_f64(v: &Bson) -> f64 {
    match v {
        Bson::Double(d) => *d,
        Bson::Int32(i) => *i as f64,
        Bson::Int64(i) => *i as f64,
        Bson::Decimal128(d) => d.to_string().parse::<f64>().unwrap_or(f64::NAN),
        _ => f64::NAN,
    }
}

pub(crate) fn is_numeric(v: &Bson) -> bool {
    matches!(
        v,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_)
    )
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Arith {
    Add,
    Mul,
}

/// Outcome of `SafeNum` arithmetic.
pub(crate) enum ArithResult {
    Value(Bson),
    /// int64 overflow: `SafeNum` becomes invalid.
    Overflow,
    /// Decimal128 arithmetic is not implemented here.
    Decimal,
}

/// `SafeNum` addition / multiplication: int32 op int32 → int32, promoted to int64 on overflow;
/// int64 involved → int64 (overflow is an error); double involved → double.
pub(crate) fn arith(op: Arith, a: &Bson, b: &Bson) -> ArithResult {
    use ArithResult::*;
    match (a, b) {
        (Bson::Decimal128(_), _) | (_, Bson::Decimal128(_)) => Decimal,
        (Bson::Double(_), _) | (_, Bson::Double(_)) => {
            let (x, y) = (as_f64(a), as_f64(b));
            Value(Bson::Double(match op {
                Arith::Add => x + y,
                Arith::Mul => x * y,
            }))
        }
        (Bson::Int32(x), Bson::Int32(y)) => {
            let r = match op {
                Arith::Add => x.checked_add(*y),
                Arith::Mul => x.checked_mul(*y),
            };
            match r {
                Some(v) => Value(Bson::Int32(v)),
                None => {
                    let (x, y) = (*x as i64, *y as i64);
                    Value(Bson::Int64(match op {
                        Arith::Add => x + y,
                        Arith::Mul => x * y,
                    }))
                }
            }
        }
        _ => {
            let to_i64 = |v: &Bson| match v {
                Bson::Int32(i) => *i as i64,
                Bson::Int64(i) => *i,
                _ => 0,
            };
            let (x, y) = (to_i64(a), to_i64(b));
            let r = match op {
                Arith::Add => x.checked_add(y),
                Arith::Mul => x.checked_mul(y),
            };
            match r {
                Some(v) => Value(Bson::Int64(v)),
                None => Overflow,
            }
        }
    }
}

/// `SafeNum::isIdentical`: same numeric type and same value.
pub(crate) fn num_identical(a: &Bson, b: &Bson) -> bool {
    match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => x == y,
        (Bson::Int64(x), Bson::Int64(y)) => x == y,
        (Bson::Double(x), Bson::Double(y)) => x == y,
        (Bson::Decimal128(x), Bson::Decimal128(y)) => x.bytes() == y.bytes(),
        _ => false,
    }
}

/// `SafeNum::debugString`.
pub(crate) fn num_debug(v: &Bson) -> String {
    match v {
        Bson::Int32(i) => format!("(NumberInt){}", i),
        Bson::Int64(i) => format!("(NumberLong){}", i),
        Bson::Double(d) => format!("(NumberDouble){}", d),
        Bson::Decimal128(d) => format!("(NumberDecimal){}", d),
        _ => "(EOO)".to_string(),
    }
}

/// Apply the `$bit` operations in order to an integral value.
pub(crate) fn bit(value: &Bson, ops: &[(BitOp, Bson)]) -> Bson {
    let mut cur = value.clone();
    for (op, operand) in ops {
        cur = match (&cur, operand) {
            (Bson::Int32(x), Bson::Int32(y)) => Bson::Int32(match op {
                BitOp::And => x & y,
                BitOp::Or => x | y,
                BitOp::Xor => x ^ y,
            }),
            _ => {
                let to_i64 = |v: &Bson| match v {
                    Bson::Int32(i) => *i as i64,
                    Bson::Int64(i) => *i,
                    _ => 0,
                };
                let (x, y) = (to_i64(&cur), to_i64(operand));
                Bson::Int64(match op {
                    BitOp::And => x & y,
                    BitOp::Or => x | y,
                    BitOp::Xor => x ^ y,
                })
            }
        };
    }
    cur
}

/// What a modifier did to an existing value (`ModifierNode::ModifyResult`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Modify {
    NoOp,
    /// Logged as an update of the whole value.
    Normal,
    /// Only `n` elements were appended to the array: logged as `u<idx>` per element.
    Append(usize),
}

/// `PushNode::performPush` on an array.
pub(crate) fn perform_push(spec: &PushSpec, arr: &mut Vec<Bson>) -> Modify {
    let mut result = if spec.values.is_empty() {
        Modify::NoOp
    } else {
        let size = arr.len() as i64;
        let pos = spec.position;
        let at: usize = if size == 0 {
            0
        } else if pos > size {
            arr.len()
        } else if pos > 0 {
            pos as usize
        } else if pos < 0 && pos.saturating_neg() < size {
            (size + pos) as usize
        } else {
            0
        };
        let appended = size > 0 && pos > size;
        let tail = arr.split_off(at);
        arr.extend(spec.values.iter().cloned());
        arr.extend(tail);
        if appended {
            Modify::Append(spec.values.len())
        } else {
            Modify::Normal
        }
    };
    if let Some(sort) = &spec.sort {
        result = Modify::Normal;
        arr.sort_by(|a, b| sort_cmp(sort, a, b));
    }
    let slice_abs = if spec.slice == i64::MIN {
        i64::MAX
    } else {
        spec.slice.abs()
    };
    while (arr.len() as i64) > slice_abs {
        result = Modify::Normal;
        if spec.slice >= 0 {
            arr.pop();
        } else {
            arr.remove(0);
        }
    }
    result
}

fn get_dotted<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut cur: &Bson = doc.get(path.split('.').next()?)?;
    for part in path.split('.').skip(1) {
        cur = match cur {
            Bson::Document(d) => d.get(part)?,
            Bson::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// `PatternElementCmp`.
fn sort_cmp(sort: &SortSpec, a: &Bson, b: &Bson) -> Ordering {
    match sort {
        SortSpec::Whole(desc) => {
            let o = compare_values(a, b);
            if *desc {
                o.reverse()
            } else {
                o
            }
        }
        SortSpec::Pattern(pattern) => {
            let key = |v: &Bson| -> Vec<Bson> {
                pattern
                    .keys()
                    .map(|f| match v {
                        Bson::Document(d) => get_dotted(d, f).cloned().unwrap_or(Bson::Null),
                        _ => Bson::Null,
                    })
                    .collect()
            };
            let (ka, kb) = (key(a), key(b));
            for ((va, vb), dir) in ka.iter().zip(kb.iter()).zip(pattern.values()) {
                let mut o = compare_values(va, vb);
                if as_f64(dir) < 0.0 {
                    o = o.reverse();
                }
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        }
    }
}

/// Does `$pull` remove this element?
pub(crate) fn pull_matches(spec: &PullSpec, element: &Bson) -> bool {
    match spec {
        PullSpec::Equality(v) => values_equal(element, v),
        PullSpec::Object(query) => match element {
            Bson::Document(_) => pull_condition_matches(query, element),
            _ => false,
        },
        PullSpec::Wrapped(expr) => pull_condition_matches(expr, element),
        PullSpec::Regex(re) => regex_matches(re, element),
    }
}

/// Does an array element match a `$pull` condition? A condition whose first key is an
/// operator applies to the element itself (`{$gte: 6}`); otherwise it is a query on the
/// element as a document.
fn pull_condition_matches(cond: &Document, value: &Bson) -> bool {
    let first_is_op = cond.keys().next().is_some_and(|k| k.starts_with('$'));
    if first_is_op {
        let wrapped = bson::doc! {"v": Bson::Document(cond.clone())};
        return Matcher::new(&wrapped).is_ok_and(|m| m.matches(&bson::doc! {"v": value.clone()}));
    }
    match value {
        Bson::Document(d) => Matcher::new(cond).is_ok_and(|m| m.matches(d)),
        _ => false,
    }
}

/// A `$pull` regular expression removes string (and symbol) elements it matches, and equal
/// regular expressions.
fn regex_matches(re: &Bson, element: &Bson) -> bool {
    let Bson::RegularExpression(r) = re else {
        return false;
    };
    match element {
        Bson::String(s) | Bson::Symbol(s) => {
            let mut flags = String::new();
            for c in r.options.chars() {
                if matches!(c, 'i' | 'm' | 's' | 'x') {
                    flags.push(c);
                }
            }
            let pattern = if flags.is_empty() {
                r.pattern.clone()
            } else {
                format!("(?{}){}", flags, r.pattern)
            };
            regex::Regex::new(&pattern)
                .map(|rx| rx.is_match(s))
                .unwrap_or(false)
        }
        Bson::RegularExpression(other) => other.pattern == r.pattern && other.options == r.options,
        _ => false,
    }
}
