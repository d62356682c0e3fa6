//! Aggregation expressions (`$project`/`$addFields` values, `$group` keys and accumulator
//! arguments, computed fields in find projections).
//!
//! Evaluation returns `Option<Bson>`: `None` is "missing" (a field path that resolves to
//! nothing, `$$REMOVE`), which callers drop instead of storing.

use super::compare::{as_f64, compare_values, is_number, type_name, type_name_opt};
use crate::server::error::{ServerError, ServerResult};
use crate::server::error_codes::ErrorCode;
use bson::{Bson, Decimal128, Document};
use std::cmp::Ordering;

#[derive(Debug, Clone)]
pub enum Expr {
    Const(Bson),
    /// `$a.b` — a path in the current document.
    Field(Vec<String>),
    /// `$$ROOT.a`, `$$CURRENT`, `$$REMOVE`.
    Var(String, Vec<String>),
    Object(Vec<(String, Expr)>),
    Array(Vec<Expr>),
    Op(String, Vec<Expr>),
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
}

fn invalid_op(name: &str) -> ServerError {
    ServerError::new(
        ErrorCode::InvalidPipelineOperator,
        format!("Unrecognized expression '{name}'"),
    )
}

fn arity_error(op: &str, expected: usize, got: usize) -> ServerError {
    ServerError::location(
        16020,
        format!("Expression {op} takes exactly {expected} arguments. {got} were passed in."),
    )
}

/// Parse a `$`-prefixed field path string (`"$a.b"`, `"$$ROOT.x"`).
fn parse_path_string(s: &str) -> ServerResult<Expr> {
    if let Some(var) = s.strip_prefix("$$") {
        let mut parts = var.split('.').map(str::to_string);
        let name = parts.next().unwrap_or_default();
        if !matches!(name.as_str(), "ROOT" | "CURRENT" | "REMOVE") {
            return Err(ServerError::location(
                17276,
                format!("Use of undefined variable: {name}"),
            ));
        }
        return Ok(Expr::Var(name, parts.collect()));
    }
    let path = &s[1..];
    if path.is_empty() {
        return Err(ServerError::location(
            16872,
            "'$' by itself is not a valid FieldPath",
        ));
    }
    crate::server::limits::check_path(path)?;
    let parts: Vec<String> = path.split('.').map(str::to_string).collect();
    if parts.iter().any(String::is_empty) {
        return Err(ServerError::location(
            15998,
            "FieldPath field names may not be empty strings.",
        ));
    }
    if parts.iter().any(|p| p.starts_with('$')) {
        return Err(ServerError::location(
            16410,
            "FieldPath field names may not start with '$'.",
        ));
    }
    Ok(Expr::Field(parts))
}

const OPERATORS: &[&str] = &[
    "$rand",
    "$add",
    "$subtract",
    "$multiply",
    "$divide",
    "$mod",
    "$abs",
    "$concat",
    "$toUpper",
    "$toLower",
    "$cond",
    "$ifNull",
    "$eq",
    "$ne",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$cmp",
    "$and",
    "$or",
    "$not",
    "$size",
    "$arrayElemAt",
    "$in",
    "$isArray",
    "$concatArrays",
    "$type",
    "$setField",
    "$getField",
    "$unsetField",
];

/// `$setField`, `$unsetField` and `$getField` (MongoDB 5.0: fields whose names contain `.` or
/// start with `$`): `{field, input, value}` as `Op(op, [field, input, value])`, where `field`
/// must be a constant string, as mongod's parser requires (expression_field.cpp).
fn parse_field_op(op: &str, arg: &Bson) -> ServerResult<Expr> {
    let spec = match (op, arg) {
        // `{$getField: "name"}` (or an expression such as `{$literal: "$a"}`) reads from
        // `$$CURRENT`.
        ("$getField", Bson::String(_)) => {
            let mut d = Document::new();
            d.insert("field", arg.clone());
            d
        }
        ("$getField", Bson::Document(e)) if e.keys().next().is_some_and(|k| k.starts_with('$')) => {
            let mut d = Document::new();
            d.insert("field", arg.clone());
            d
        }
        (_, Bson::Document(d)) => d.clone(),
        _ => {
            return Err(ServerError::location(
                4161100,
                format!("{op} only supports an object as its argument"),
            ))
        }
    };
    let allowed: &[&str] = match op {
        "$setField" => &["field", "input", "value"],
        _ => &["field", "input"],
    };
    if let Some(k) = spec.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ServerError::location(
            4161101,
            format!("{op} found an unknown argument: {k}"),
        ));
    }
    let field = match spec.get("field").map(Expr::parse).transpose()? {
        Some(Expr::Const(Bson::String(s))) => Expr::Const(Bson::String(s)),
        Some(_) => {
            return Err(ServerError::location(
                4161106,
                format!(
                "{op} requires 'field' to evaluate to a constant, but got a non-constant argument"
            ),
            ))
        }
        None => {
            return Err(ServerError::location(
                4161102,
                format!("{op} requires 'field' to be specified"),
            ))
        }
    };
    let input = match spec.get("input") {
        Some(v) => Expr::parse(v)?,
        None if op == "$getField" => Expr::Var("CURRENT".into(), Vec::new()),
        None => {
            return Err(ServerError::location(
                4161103,
                format!("{op} requires 'input' to be specified"),
            ))
        }
    };
    let value = match (op, spec.get("value")) {
        ("$setField", Some(v)) => Expr::parse(v)?,
        ("$setField", None) => {
            return Err(ServerError::location(
                4161104,
                "$setField requires 'value' to be specified",
            ))
        }
        ("$unsetField", _) => Expr::Var("REMOVE".into(), Vec::new()),
        _ => Expr::Const(Bson::Null),
    };
    Ok(Expr::Op(op.to_string(), vec![field, input, value]))
}

/// Evaluates `$setField`/`$unsetField`/`$getField` (see [`parse_field_op`]).
fn eval_field_op(op: &str, args: &[Expr], doc: &Document) -> ServerResult<Option<Bson>> {
    let field = match &args[0] {
        Expr::Const(Bson::String(s)) => s.as_str(),
        _ => unreachable!("checked when parsed"),
    };
    let input = match args[1].eval(doc)? {
        None | Some(Bson::Null) | Some(Bson::Undefined) => return Ok(Some(Bson::Null)),
        Some(Bson::Document(d)) => d,
        Some(other) => {
            let code = if op == "$getField" { 3041705 } else { 4161105 };
            return Err(ServerError::location(
                code,
                format!(
                    "{op} requires 'input' to evaluate to type Object, but got {}",
                    type_name(&other)
                ),
            ));
        }
    };
    if op == "$getField" {
        return Ok(input.get(field).cloned());
    }
    let mut out = input;
    match args[2].eval(doc)? {
        Some(v) => {
            out.insert(field, v);
        }
        None => {
            out.remove(field);
        }
    }
    Ok(Some(Bson::Document(out)))
}

impl Expr {
    pub fn parse(v: &Bson) -> ServerResult<Expr> {
        match v {
            Bson::String(s) if s.starts_with('$') => parse_path_string(s),
            Bson::Array(items) => Ok(Expr::Array(
                items.iter().map(Expr::parse).collect::<ServerResult<_>>()?,
            )),
            Bson::Document(d) => Self::parse_object(d),
            other => Ok(Expr::Const(other.clone())),
        }
    }

    fn parse_object(d: &Document) -> ServerResult<Expr> {
        let first_is_op = d.keys().next().map(|k| k.starts_with('$')).unwrap_or(false);
        if !first_is_op {
            let mut fields = Vec::new();
            for (k, v) in d {
                if k.starts_with('$') {
                    return Err(ServerError::location(
                        16404,
                        format!("field names may not start with '$': {k}"),
                    ));
                }
                fields.push((k.clone(), Expr::parse(v)?));
            }
            return Ok(Expr::Object(fields));
        }
        if d.len() != 1 {
            return Err(ServerError::location(
                15983,
                format!(
                    "an expression specification must contain exactly one field, the name of the expression. Found {} fields in {}",
                    d.len(),
                    d
                ),
            ));
        }
        let (op, arg) = d.iter().next().unwrap();
        if op == "$literal" {
            return Ok(Expr::Const(arg.clone()));
        }
        if !OPERATORS.contains(&op.as_str()) {
            return Err(invalid_op(op));
        }
        if op == "$cond" {
            return parse_cond(arg);
        }
        if op == "$rand" {
            // `{$rand: {}}`: no arguments (ExpressionRandom).
            if !matches!(arg, Bson::Document(a) if a.is_empty()) {
                return Err(ServerError::location(
                    3040500,
                    "$rand does not currently accept arguments",
                ));
            }
            return Ok(Expr::Op(op.clone(), Vec::new()));
        }
        if matches!(op.as_str(), "$setField" | "$getField" | "$unsetField") {
            return parse_field_op(op, arg);
        }
        let args: Vec<Expr> = match arg {
            Bson::Array(items) => items.iter().map(Expr::parse).collect::<ServerResult<_>>()?,
            other => vec![Expr::parse(other)?],
        };
        let exact = match op.as_str() {
            "$subtract" | "$divide" | "$mod" | "$eq" | "$ne" | "$gt" | "$gte" | "$lt" | "$lte"
            | "$cmp" | "$arrayElemAt" | "$in" => Some(2),
            "$abs" | "$toUpper" | "$toLower" | "$not" | "$size" | "$isArray" | "$type" => Some(1),
            _ => None,
        };
        if let Some(n) = exact {
            if args.len() != n {
                return Err(arity_error(op, n, args.len()));
            }
        }
        if op == "$ifNull" && args.len() < 2 {
            return Err(ServerError::location(
                1257300,
                "$ifNull needs at least two arguments",
            ));
        }
        Ok(Expr::Op(op.clone(), args))
    }

    /// Evaluate against `doc` (both `$$ROOT` and `$$CURRENT`).
    pub fn eval(&self, doc: &Document) -> ServerResult<Option<Bson>> {
        match self {
            Expr::Const(v) => Ok(Some(v.clone())),
            Expr::Field(parts) => Ok(lookup(doc, parts)),
            Expr::Var(name, parts) => match name.as_str() {
                "REMOVE" => Ok(None),
                _ if parts.is_empty() => Ok(Some(Bson::Document(doc.clone()))),
                _ => Ok(lookup(doc, parts)),
            },
            Expr::Object(fields) => {
                let mut out = Document::new();
                for (k, e) in fields {
                    if let Some(v) = e.eval(doc)? {
                        out.insert(k.clone(), v);
                    }
                }
                Ok(Some(Bson::Document(out)))
            }
            Expr::Array(items) => {
                let mut out = Vec::new();
                for e in items {
                    // missing values inside an array literal become null
                    out.push(e.eval(doc)?.unwrap_or(Bson::Null));
                }
                Ok(Some(Bson::Array(out)))
            }
            Expr::Cond(c, t, f) => {
                if truthy(c.eval(doc)?.as_ref()) {
                    t.eval(doc)
                } else {
                    f.eval(doc)
                }
            }
            Expr::Op(op, args) => eval_op(op, args, doc),
        }
    }
}

fn parse_cond(arg: &Bson) -> ServerResult<Expr> {
    match arg {
        Bson::Array(items) => {
            if items.len() != 3 {
                return Err(arity_error("$cond", 3, items.len()));
            }
            Ok(Expr::Cond(
                Box::new(Expr::parse(&items[0])?),
                Box::new(Expr::parse(&items[1])?),
                Box::new(Expr::parse(&items[2])?),
            ))
        }
        Bson::Document(d) => {
            let (mut i, mut t, mut e) = (None, None, None);
            for (k, v) in d {
                match k.as_str() {
                    "if" => i = Some(Expr::parse(v)?),
                    "then" => t = Some(Expr::parse(v)?),
                    "else" => e = Some(Expr::parse(v)?),
                    other => {
                        return Err(ServerError::location(
                            17083,
                            format!("Unrecognized parameter to $cond: {other}"),
                        ))
                    }
                }
            }
            Ok(Expr::Cond(
                Box::new(i.ok_or_else(|| {
                    ServerError::location(17080, "Missing 'if' parameter to $cond")
                })?),
                Box::new(t.ok_or_else(|| {
                    ServerError::location(17081, "Missing 'then' parameter to $cond")
                })?),
                Box::new(e.ok_or_else(|| {
                    ServerError::location(17082, "Missing 'else' parameter to $cond")
                })?),
            ))
        }
        other => Err(arity_error(
            "$cond",
            3,
            usize::from(!matches!(other, Bson::Null)),
        )),
    }
}

/// Aggregation field-path lookup: arrays are traversed at every level (documents inside
/// contribute their values, other elements are skipped); numeric components are field names.
pub fn lookup(doc: &Document, parts: &[String]) -> Option<Bson> {
    let v = doc.get(&parts[0])?;
    lookup_value(v, &parts[1..])
}

fn lookup_value(v: &Bson, rest: &[String]) -> Option<Bson> {
    if rest.is_empty() {
        return Some(v.clone());
    }
    match v {
        Bson::Document(d) => lookup(d, rest),
        Bson::Array(items) => {
            let mut out = Vec::new();
            for item in items {
                match item {
                    Bson::Document(_) | Bson::Array(_) => {
                        if let Some(x) = lookup_value(item, rest) {
                            out.push(x);
                        }
                    }
                    _ => {}
                }
            }
            Some(Bson::Array(out))
        }
        _ => None,
    }
}

/// Aggregation truthiness: false, null, missing, undefined and numeric zero are false.
pub fn truthy(v: Option<&Bson>) -> bool {
    match v {
        None | Some(Bson::Null) | Some(Bson::Undefined) => false,
        Some(Bson::Boolean(b)) => *b,
        Some(n) if is_number(n) => as_f64(n).map(|f| f != 0.0).unwrap_or(true),
        Some(_) => true,
    }
}

fn nullish(v: &Option<Bson>) -> bool {
    matches!(v, None | Some(Bson::Null) | Some(Bson::Undefined))
}

/// Compare two possibly-missing values the way aggregation does (missing < null).
pub fn compare_opt(a: Option<&Bson>, b: Option<&Bson>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(Bson::Undefined)) | (Some(Bson::Undefined), None) => Ordering::Equal,
        (None, Some(x)) => compare_values(&Bson::Undefined, x),
        (Some(x), None) => compare_values(x, &Bson::Undefined),
        (Some(x), Some(y)) => compare_values(x, y),
    }
}

/// Numeric tower used by arithmetic and `$sum`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Num {
    Int(i32),
    Long(i64),
    Double(f64),
    Decimal(f64),
}

impl Num {
    pub(crate) fn from_bson(v: &Bson) -> Option<Num> {
        match v {
            Bson::Int32(i) => Some(Num::Int(*i)),
            Bson::Int64(i) => Some(Num::Long(*i)),
            Bson::Double(d) => Some(Num::Double(*d)),
            Bson::Decimal128(_) => Some(Num::Decimal(as_f64(v)?)),
            _ => None,
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Num::Int(_) => 0,
            Num::Long(_) => 1,
            Num::Double(_) => 2,
            Num::Decimal(_) => 3,
        }
    }

    pub(crate) fn as_f64(&self) -> f64 {
        match *self {
            Num::Int(i) => i as f64,
            Num::Long(l) => l as f64,
            Num::Double(d) | Num::Decimal(d) => d,
        }
    }

    fn as_i64(&self) -> i64 {
        match *self {
            Num::Int(i) => i as i64,
            Num::Long(l) => l,
            Num::Double(d) | Num::Decimal(d) => d as i64,
        }
    }

    fn combine(
        self,
        other: Num,
        int_op: fn(i64, i64) -> Option<i64>,
        float_op: fn(f64, f64) -> f64,
    ) -> Num {
        let rank = self.rank().max(other.rank());
        match rank {
            0 | 1 => match int_op(self.as_i64(), other.as_i64()) {
                Some(r) if rank == 0 && r >= i32::MIN as i64 && r <= i32::MAX as i64 => {
                    Num::Int(r as i32)
                }
                Some(r) => Num::Long(r),
                None => Num::Double(float_op(self.as_f64(), other.as_f64())),
            },
            2 => Num::Double(float_op(self.as_f64(), other.as_f64())),
            _ => Num::Decimal(float_op(self.as_f64(), other.as_f64())),
        }
    }

    pub(crate) fn add(self, other: Num) -> Num {
        self.combine(other, i64::checked_add, |a, b| a + b)
    }

    fn mul(self, other: Num) -> Num {
        self.combine(other, i64::checked_mul, |a, b| a * b)
    }

    fn sub(self, other: Num) -> Num {
        self.combine(other, i64::checked_sub, |a, b| a - b)
    }

    pub(crate) fn to_bson(self) -> Bson {
        match self {
            Num::Int(i) => Bson::Int32(i),
            Num::Long(l) => Bson::Int64(l),
            Num::Double(d) => Bson::Double(d),
            Num::Decimal(d) => Bson::Decimal128(f64_to_decimal(d)),
        }
    }
}

pub(crate) fn f64_to_decimal(d: f64) -> Decimal128 {
    let s = if d.is_nan() {
        "NaN".to_string()
    } else if d.is_infinite() {
        if d > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
    } else {
        format!("{d:e}").replace('e', "E")
    };
    s.parse().unwrap_or_else(|_| "NaN".parse().unwrap())
}

fn eval_args(args: &[Expr], doc: &Document) -> ServerResult<Vec<Option<Bson>>> {
    args.iter().map(|a| a.eval(doc)).collect()
}

fn eval_op(op: &str, args: &[Expr], doc: &Document) -> ServerResult<Option<Bson>> {
    if matches!(op, "$setField" | "$getField" | "$unsetField") {
        return eval_field_op(op, args, doc);
    }
    let vals = eval_args(args, doc)?;
    let v = match op {
        "$rand" => Bson::Double(rand::random::<f64>()),
        "$add" => {
            let mut acc = Num::Int(0);
            let mut date: Option<i64> = None;
            for v in &vals {
                if nullish(v) {
                    return Ok(Some(Bson::Null));
                }
                let v = v.as_ref().unwrap();
                match v {
                    Bson::DateTime(dt) => {
                        if date.is_some() {
                            return Err(ServerError::location(
                                16612,
                                "only one date allowed in an $add expression",
                            ));
                        }
                        date = Some(dt.timestamp_millis());
                    }
                    n => match Num::from_bson(n) {
                        Some(n) => acc = acc.add(n),
                        None => {
                            return Err(ServerError::location(
                                16554,
                                format!(
                                    "$add only supports numeric or date types, not {}",
                                    type_name(n)
                                ),
                            ))
                        }
                    },
                }
            }
            match date {
                Some(ms) => Bson::DateTime(bson::DateTime::from_millis(
                    ms.wrapping_add(acc.as_f64().round() as i64),
                )),
                None => acc.to_bson(),
            }
        }
        "$multiply" => {
            let mut acc = Num::Int(1);
            for v in &vals {
                if nullish(v) {
                    return Ok(Some(Bson::Null));
                }
                let v = v.as_ref().unwrap();
                match Num::from_bson(v) {
                    Some(n) => acc = acc.mul(n),
                    None => {
                        return Err(ServerError::location(
                            16555,
                            format!(
                                "$multiply only supports numeric types, not {}",
                                type_name(v)
                            ),
                        ))
                    }
                }
            }
            acc.to_bson()
        }
        "$subtract" => {
            if nullish(&vals[0]) || nullish(&vals[1]) {
                return Ok(Some(Bson::Null));
            }
            let (a, b) = (vals[0].as_ref().unwrap(), vals[1].as_ref().unwrap());
            match (a, b) {
                (Bson::DateTime(x), Bson::DateTime(y)) => {
                    Bson::Int64(x.timestamp_millis().wrapping_sub(y.timestamp_millis()))
                }
                (Bson::DateTime(x), n) if is_number(n) => {
                    Bson::DateTime(bson::DateTime::from_millis(
                        x.timestamp_millis()
                            .wrapping_sub(as_f64(n).unwrap_or(0.0).round() as i64),
                    ))
                }
                _ => match (Num::from_bson(a), Num::from_bson(b)) {
                    (Some(x), Some(y)) => x.sub(y).to_bson(),
                    _ => {
                        return Err(ServerError::location(
                            16556,
                            format!("cant $subtract a {} from a {}", type_name(b), type_name(a)),
                        ))
                    }
                },
            }
        }
        "$divide" | "$mod" => {
            if nullish(&vals[0]) || nullish(&vals[1]) {
                return Ok(Some(Bson::Null));
            }
            let (a, b) = (vals[0].as_ref().unwrap(), vals[1].as_ref().unwrap());
            let (Some(x), Some(y)) = (Num::from_bson(a), Num::from_bson(b)) else {
                let msg = format!(
                    "{op} only supports numeric types, not {} and {}",
                    type_name(a),
                    type_name(b)
                );
                return Err(if op == "$divide" {
                    ServerError::location(16609, msg)
                } else {
                    ServerError::location(16611, msg)
                });
            };
            if y.as_f64() == 0.0 {
                return Err(if op == "$divide" {
                    ServerError::location(16608, "can't $divide by zero")
                } else {
                    ServerError::location(16610, "can't $mod by zero")
                });
            }
            if op == "$divide" {
                if x.rank() == 3 || y.rank() == 3 {
                    Num::Decimal(x.as_f64() / y.as_f64()).to_bson()
                } else {
                    Bson::Double(x.as_f64() / y.as_f64())
                }
            } else {
                x.combine(y, i64::checked_rem, |a, b| a % b).to_bson()
            }
        }
        "$abs" => match &vals[0] {
            v if nullish(v) => Bson::Null,
            Some(v) => match Num::from_bson(v) {
                Some(Num::Int(i)) => match i.checked_abs() {
                    Some(a) => Bson::Int32(a),
                    None => Bson::Int64((i as i64).abs()),
                },
                Some(Num::Long(l)) => match l.checked_abs() {
                    Some(a) => Bson::Int64(a),
                    None => {
                        return Err(ServerError::location(
                            28680,
                            "can't take $abs of long long min",
                        ))
                    }
                },
                Some(Num::Double(d)) => Bson::Double(d.abs()),
                Some(Num::Decimal(d)) => Num::Decimal(d.abs()).to_bson(),
                None => {
                    return Err(ServerError::location(
                        28765,
                        format!("$abs only supports numeric types, not {}", type_name(v)),
                    ))
                }
            },
            None => Bson::Null,
        },
        "$concat" => {
            let mut s = String::new();
            for v in &vals {
                match v {
                    v if nullish(v) => return Ok(Some(Bson::Null)),
                    Some(Bson::String(x)) => s.push_str(x),
                    Some(other) => {
                        return Err(ServerError::location(
                            16702,
                            format!("$concat only supports strings, not {}", type_name(other)),
                        ))
                    }
                    None => unreachable!(),
                }
            }
            Bson::String(s)
        }
        "$toUpper" | "$toLower" => {
            let s = coerce_to_string(vals[0].as_ref())?;
            Bson::String(if op == "$toUpper" {
                s.to_ascii_uppercase()
            } else {
                s.to_ascii_lowercase()
            })
        }
        "$ifNull" => {
            for v in &vals[..vals.len() - 1] {
                if !nullish(v) {
                    return Ok(v.clone());
                }
            }
            return Ok(vals.last().cloned().flatten());
        }
        "$eq" | "$ne" | "$gt" | "$gte" | "$lt" | "$lte" | "$cmp" => {
            let c = compare_opt(vals[0].as_ref(), vals[1].as_ref());
            match op {
                "$eq" => Bson::Boolean(c == Ordering::Equal),
                "$ne" => Bson::Boolean(c != Ordering::Equal),
                "$gt" => Bson::Boolean(c == Ordering::Greater),
                "$gte" => Bson::Boolean(c != Ordering::Less),
                "$lt" => Bson::Boolean(c == Ordering::Less),
                "$lte" => Bson::Boolean(c != Ordering::Greater),
                _ => Bson::Int32(match c {
                    Ordering::Less => -1,
                    Ordering::Equal => 0,
                    Ordering::Greater => 1,
                }),
            }
        }
        "$and" => Bson::Boolean(vals.iter().all(|v| truthy(v.as_ref()))),
        "$or" => Bson::Boolean(vals.iter().any(|v| truthy(v.as_ref()))),
        "$not" => Bson::Boolean(!truthy(vals[0].as_ref())),
        "$size" => match &vals[0] {
            Some(Bson::Array(a)) => Bson::Int32(a.len() as i32),
            other => {
                return Err(ServerError::location(
                    17124,
                    format!(
                        "The argument to $size must be an array, but was of type: {}",
                        type_name_opt(other.as_ref())
                    ),
                ))
            }
        },
        "$isArray" => Bson::Boolean(matches!(vals[0], Some(Bson::Array(_)))),
        "$type" => Bson::String(type_name_opt(vals[0].as_ref()).to_string()),
        "$arrayElemAt" => {
            if nullish(&vals[0]) || nullish(&vals[1]) {
                return Ok(Some(Bson::Null));
            }
            let Some(Bson::Array(arr)) = &vals[0] else {
                return Err(ServerError::location(
                    28689,
                    format!(
                        "$arrayElemAt's first argument must be an array, but is {}",
                        type_name_opt(vals[0].as_ref())
                    ),
                ));
            };
            let idx = vals[1].as_ref().unwrap();
            let Some(f) = as_f64(idx) else {
                return Err(ServerError::location(
                    28690,
                    format!(
                        "$arrayElemAt's second argument must be a numeric value, but is {}",
                        type_name(idx)
                    ),
                ));
            };
            if f.fract() != 0.0 || f < i32::MIN as f64 || f > i32::MAX as f64 {
                return Err(ServerError::location(
                    28691,
                    format!(
                        "$arrayElemAt's second argument must be representable as a 32-bit integer: {idx}"
                    ),
                ));
            }
            let i = f as i64;
            let pos = if i < 0 { arr.len() as i64 + i } else { i };
            if pos < 0 || pos >= arr.len() as i64 {
                return Ok(None);
            }
            arr[pos as usize].clone()
        }
        "$in" => {
            let Some(Bson::Array(arr)) = &vals[1] else {
                return Err(ServerError::location(
                    40081,
                    format!(
                        "$in requires an array as a second argument, found: {}",
                        type_name_opt(vals[1].as_ref())
                    ),
                ));
            };
            Bson::Boolean(
                arr.iter()
                    .any(|x| compare_opt(vals[0].as_ref(), Some(x)) == Ordering::Equal),
            )
        }
        "$concatArrays" => {
            let mut out = Vec::new();
            for v in &vals {
                match v {
                    v if nullish(v) => return Ok(Some(Bson::Null)),
                    Some(Bson::Array(a)) => out.extend(a.iter().cloned()),
                    Some(other) => {
                        return Err(ServerError::location(
                            28664,
                            format!(
                                "$concatArrays only supports arrays, not {}",
                                type_name(other)
                            ),
                        ))
                    }
                    None => unreachable!(),
                }
            }
            Bson::Array(out)
        }
        _ => return Err(invalid_op(op)),
    };
    Ok(Some(v))
}

fn coerce_to_string(v: Option<&Bson>) -> ServerResult<String> {
    Ok(match v {
        None | Some(Bson::Null) | Some(Bson::Undefined) => String::new(),
        Some(Bson::String(s)) | Some(Bson::Symbol(s)) => s.clone(),
        Some(Bson::Int32(i)) => i.to_string(),
        Some(Bson::Int64(i)) => i.to_string(),
        Some(Bson::Double(d)) => d.to_string(),
        Some(Bson::Decimal128(d)) => d.to_string(),
        Some(Bson::DateTime(d)) => d
            .try_to_rfc3339_string()
            .unwrap_or_else(|_| d.timestamp_millis().to_string()),
        Some(Bson::JavaScriptCode(c)) => c.clone(),
        Some(other) => {
            return Err(ServerError::location(
                16007,
                format!(
                    "can't convert from BSON type {} to String",
                    type_name(other)
                ),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{bson, doc};

    fn ev(expr: Bson, d: &Document) -> Option<Bson> {
        Expr::parse(&expr).unwrap().eval(d).unwrap()
    }

    fn ev_err(expr: Bson, d: &Document) -> ServerError {
        match Expr::parse(&expr) {
            Err(e) => e,
            Ok(x) => x.eval(d).unwrap_err(),
        }
    }

    #[test]
    fn field_paths_and_literals() {
        let d = doc! {"a": {"b": 5}, "s": "x", "arr": [{"v": 1}, {"w": 2}, {"v": 3}, 4]};
        assert_eq!(ev(bson!("$a.b"), &d), Some(bson!(5)));
        assert_eq!(ev(bson!("$nope"), &d), None);
        assert_eq!(ev(bson!("plain"), &d), Some(bson!("plain")));
        assert_eq!(ev(bson!({"$literal": "$a"}), &d), Some(bson!("$a")));
        let Some(Bson::Double(r)) = ev(bson!({"$rand": {}}), &d) else {
            panic!("$rand is a double")
        };
        assert!((0.0..1.0).contains(&r));
        assert_eq!(ev_err(bson!({"$rand": {"x": 1}}), &d).code, 3040500);
        // through arrays: values of documents that have the field
        assert_eq!(ev(bson!("$arr.v"), &d), Some(bson!([1, 3])));
        assert_eq!(ev(bson!("$$ROOT.s"), &d), Some(bson!("x")));
        assert_eq!(ev(bson!("$$REMOVE"), &d), None);
        assert_eq!(
            ev(bson!({"x": "$a.b", "y": "$missing"}), &d),
            Some(bson!({"x": 5}))
        );
        assert_eq!(ev(bson!(["$a.b", "$missing"]), &d), Some(bson!([5, null])));
    }

    #[test]
    fn arithmetic_keeps_the_widest_numeric_type() {
        let d = doc! {"i": 2, "l": 3_i64, "f": 0.5};
        assert_eq!(ev(bson!({"$add": ["$i", 1]}), &d), Some(bson!(3)));
        assert_eq!(ev(bson!({"$add": ["$i", "$l"]}), &d), Some(bson!(5_i64)));
        assert_eq!(ev(bson!({"$add": ["$i", "$f"]}), &d), Some(bson!(2.5)));
        assert_eq!(
            ev(bson!({"$add": [i32::MAX, 1]}), &d),
            Some(bson!(2147483648_i64))
        );
        assert_eq!(ev(bson!({"$add": [1, "$missing"]}), &d), Some(Bson::Null));
        assert_eq!(ev(bson!({"$subtract": [10, "$i"]}), &d), Some(bson!(8)));
        assert_eq!(
            ev(bson!({"$multiply": ["$i", "$l"]}), &d),
            Some(bson!(6_i64))
        );
        assert_eq!(ev(bson!({"$divide": [7, 2]}), &d), Some(bson!(3.5)));
        assert_eq!(ev(bson!({"$mod": [7, 2]}), &d), Some(bson!(1)));
        assert_eq!(ev(bson!({"$abs": -4}), &d), Some(bson!(4)));
        assert_eq!(ev_err(bson!({"$divide": [1, 0]}), &d).code, 16608);
        assert_eq!(ev_err(bson!({"$add": [1, "x"]}), &d).code, 16554);
    }

    #[test]
    fn date_arithmetic() {
        let t = bson::DateTime::from_millis(1000);
        let d = doc! {"t": t};
        assert_eq!(
            ev(bson!({"$add": ["$t", 500]}), &d),
            Some(Bson::DateTime(bson::DateTime::from_millis(1500)))
        );
        assert_eq!(
            ev(bson!({"$subtract": ["$t", "$t"]}), &d),
            Some(bson!(0_i64))
        );
    }

    #[test]
    fn strings() {
        let d = doc! {"a": "Hello", "n": 5};
        assert_eq!(
            ev(bson!({"$concat": ["$a", " ", "W"]}), &d),
            Some(bson!("Hello W"))
        );
        assert_eq!(ev(bson!({"$concat": ["$a", "$zz"]}), &d), Some(Bson::Null));
        assert_eq!(ev_err(bson!({"$concat": ["$a", 1]}), &d).code, 16702);
        assert_eq!(ev(bson!({"$toUpper": "$a"}), &d), Some(bson!("HELLO")));
        assert_eq!(ev(bson!({"$toLower": ["$a"]}), &d), Some(bson!("hello")));
        assert_eq!(ev(bson!({"$toLower": "$zz"}), &d), Some(bson!("")));
        assert_eq!(ev(bson!({"$toUpper": "$n"}), &d), Some(bson!("5")));
    }

    #[test]
    fn comparisons_use_bson_order_and_missing_is_below_null() {
        let d = doc! {"a": 5, "n": null};
        assert_eq!(ev(bson!({"$eq": ["$a", 5.0]}), &d), Some(bson!(true)));
        assert_eq!(ev(bson!({"$gt": ["$a", "str"]}), &d), Some(bson!(false)));
        assert_eq!(ev(bson!({"$lt": ["$a", "str"]}), &d), Some(bson!(true)));
        assert_eq!(ev(bson!({"$eq": ["$n", null]}), &d), Some(bson!(true)));
        assert_eq!(ev(bson!({"$eq": ["$zz", null]}), &d), Some(bson!(false)));
        assert_eq!(ev(bson!({"$cmp": ["$zz", null]}), &d), Some(bson!(-1)));
        assert_eq!(ev(bson!({"$ne": ["$a", 4]}), &d), Some(bson!(true)));
        assert_eq!(ev(bson!({"$gte": ["$a", 5]}), &d), Some(bson!(true)));
        assert_eq!(ev(bson!({"$lte": ["$a", 4]}), &d), Some(bson!(false)));
    }

    #[test]
    fn boolean_logic_and_conditionals() {
        let d = doc! {"a": 0, "b": [], "s": ""};
        assert_eq!(ev(bson!({"$and": [1, "$b", "$s"]}), &d), Some(bson!(true)));
        assert_eq!(ev(bson!({"$and": [1, "$a"]}), &d), Some(bson!(false)));
        assert_eq!(ev(bson!({"$or": ["$a", "$zz"]}), &d), Some(bson!(false)));
        assert_eq!(ev(bson!({"$not": ["$zz"]}), &d), Some(bson!(true)));
        assert_eq!(ev(bson!({"$cond": ["$a", "y", "n"]}), &d), Some(bson!("n")));
        assert_eq!(
            ev(bson!({"$cond": {"if": "$b", "then": "y", "else": "n"}}), &d),
            Some(bson!("y"))
        );
        assert_eq!(ev(bson!({"$ifNull": ["$zz", "$a"]}), &d), Some(bson!(0)));
        assert_eq!(ev(bson!({"$ifNull": ["$s", "d"]}), &d), Some(bson!("")));
        assert_eq!(
            ev_err(bson!({"$cond": {"if": 1, "then": 2}}), &d).code,
            17082
        );
    }

    #[test]
    fn arrays() {
        let d = doc! {"a": [10, 20, 30]};
        assert_eq!(ev(bson!({"$size": "$a"}), &d), Some(bson!(3)));
        assert_eq!(ev_err(bson!({"$size": "$zz"}), &d).code, 17124);
        assert_eq!(ev(bson!({"$arrayElemAt": ["$a", 1]}), &d), Some(bson!(20)));
        assert_eq!(ev(bson!({"$arrayElemAt": ["$a", -1]}), &d), Some(bson!(30)));
        assert_eq!(ev(bson!({"$arrayElemAt": ["$a", 5]}), &d), None);
        assert_eq!(ev(bson!({"$in": [20.0, "$a"]}), &d), Some(bson!(true)));
        assert_eq!(ev(bson!({"$in": [2, "$a"]}), &d), Some(bson!(false)));
        assert_eq!(ev_err(bson!({"$in": [2, "$zz"]}), &d).code, 40081);
        assert_eq!(
            ev(bson!({"$concatArrays": ["$a", [1]]}), &d),
            Some(bson!([10, 20, 30, 1]))
        );
        assert_eq!(ev(bson!({"$isArray": "$a"}), &d), Some(bson!(true)));
    }

    #[test]
    fn parse_errors() {
        let d = doc! {};
        let e = ev_err(bson!({"$foo": 1}), &d);
        assert_eq!(
            (e.code, e.code_name().as_ref()),
            (168, "InvalidPipelineOperator")
        );
        assert_eq!(e.message, "Unrecognized expression '$foo'");
        assert_eq!(ev_err(bson!({"$eq": [1]}), &d).code, 16020);
        assert_eq!(ev_err(bson!({"$add": [1], "$sub": 2}), &d).code, 15983);
        assert_eq!(ev_err(bson!("$"), &d).code, 16872);
        assert_eq!(ev_err(bson!("$$NOPE"), &d).code, 17276);
    }
}
