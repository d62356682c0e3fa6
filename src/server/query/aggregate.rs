//! A small aggregation pipeline executor over in-memory documents.
//!
//! Stages: `$match $sort $limit $skip $project $addFields/$set $unset $count $group
//! $unwind $replaceRoot/$replaceWith $sortByCount`. The whole pipeline is parsed (and
//! validated) before any document is processed, as mongod does.

use super::compare::{as_f64, compare_values, is_number, values_equal, KeyValue};
use super::expr::{Expr, Num};
use super::matcher::Matcher;
use super::projection::Projection;
use super::sort::SortSpec;
use crate::server::error::{ServerError, ServerResult};
use crate::server::error_codes::ErrorCode;
use bson::{Bson, Document};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq)]
enum AccOp {
    Sum,
    Avg,
    Min,
    Max,
    First,
    Last,
    Push,
    AddToSet,
}

#[derive(Debug, Clone)]
enum Stage {
    Match(Matcher),
    Sort(SortSpec),
    Limit(usize),
    Skip(usize),
    Project(Projection),
    AddFields(Vec<(Vec<String>, Expr)>),
    Count(String),
    Group {
        id: Expr,
        accs: Vec<(String, AccOp, Expr)>,
    },
    Unwind {
        path: Vec<String>,
        include_index: Option<String>,
        preserve: bool,
    },
    ReplaceRoot(Expr),
    SortByCount(Expr),
}

const UNSUPPORTED_STAGES: &[&str] = &[
    "$lookup",
    "$facet",
    "$bucket",
    "$bucketAuto",
    "$out",
    "$merge",
    "$geoNear",
    "$sample",
    "$graphLookup",
    "$unionWith",
    "$redact",
    "$collStats",
    "$indexStats",
    "$changeStream",
    "$densify",
    "$fill",
    "$setWindowFields",
    "$documents",
    "$currentOp",
    "$listSessions",
    "$planCacheStats",
    "$search",
];

/// Run `pipeline` over `input` and return the resulting documents.
pub fn run_pipeline(input: Vec<Document>, pipeline: &[Document]) -> ServerResult<Vec<Document>> {
    // mongod's internalPipelineLengthLimit: each stage may nest documents one level deeper.
    if pipeline.len() > MAX_PIPELINE_STAGES {
        return Err(loc(
            7749501,
            format!("Pipeline length must be no longer than {MAX_PIPELINE_STAGES} stages."),
        ));
    }
    let stages = pipeline
        .iter()
        .map(parse_stage)
        .collect::<ServerResult<Vec<_>>>()?;
    let mut docs = input;
    for stage in &stages {
        docs = run_stage(stage, docs)?;
    }
    Ok(docs)
}

/// Longest pipeline accepted (mongod's `internalPipelineLengthLimit`).
pub const MAX_PIPELINE_STAGES: usize = 1000;

fn loc(code: i32, msg: String) -> ServerError {
    ServerError::location(code, msg)
}

fn parse_stage(stage: &Document) -> ServerResult<Stage> {
    if stage.len() != 1 {
        return Err(loc(
            40323,
            "A pipeline stage specification object must contain exactly one field.".into(),
        ));
    }
    let (name, spec) = stage.iter().next().unwrap();
    match name.as_str() {
        "$match" => match spec {
            Bson::Document(d) => Ok(Stage::Match(Matcher::new(d)?)),
            _ => Err(loc(
                15959,
                "the match filter must be an expression in an object".into(),
            )),
        },
        "$sort" => match spec {
            Bson::Document(d) => {
                if d.is_empty() {
                    return Err(loc(
                        15976,
                        "$sort stage must have at least one sort key".into(),
                    ));
                }
                Ok(Stage::Sort(SortSpec::new(d)?))
            }
            _ => Err(loc(
                15973,
                "the $sort key specification must be an object".into(),
            )),
        },
        "$limit" => {
            let n = parse_integer(spec, "$limit", || {
                loc(15957, "the limit must be specified as a number".into())
            })?;
            if n <= 0 {
                return Err(loc(15958, "the limit must be positive".into()));
            }
            Ok(Stage::Limit(n as usize))
        }
        "$skip" => {
            let n = parse_integer(spec, "$skip", || {
                loc(15972, "Argument to $skip must be a number".into())
            })?;
            if n < 0 {
                return Err(loc(15956, "Argument to $skip cannot be negative".into()));
            }
            Ok(Stage::Skip(n as usize))
        }
        "$project" => match spec {
            Bson::Document(d) => {
                if d.is_empty() {
                    return Err(loc(
                        51272,
                        "Invalid $project :: caused by :: projection specification must have at least one field".into(),
                    ));
                }
                Ok(Stage::Project(Projection::new_aggregate(d)?))
            }
            _ => Err(loc(
                15969,
                "$project specification must be an object".into(),
            )),
        },
        "$addFields" | "$set" => match spec {
            Bson::Document(d) => {
                let mut fields = Vec::new();
                flatten_add_fields("", d, &mut fields)?;
                Ok(Stage::AddFields(fields))
            }
            other => Err(loc(
                40272,
                format!(
                    "{name} specification stage must be an object, got {}",
                    super::compare::type_name(other)
                ),
            )),
        },
        "$unset" => {
            let fields: Vec<String> = match spec {
                Bson::String(s) => vec![s.clone()],
                Bson::Array(items) => {
                    if items.is_empty() {
                        return Err(loc(
                            31119,
                            "$unset specification must be a string or an array with at least one field".into(),
                        ));
                    }
                    items
                        .iter()
                        .map(|i| match i {
                            Bson::String(s) => Ok(s.clone()),
                            _ => Err(loc(
                                31120,
                                "$unset specification must be a string or an array containing only string values".into(),
                            )),
                        })
                        .collect::<ServerResult<_>>()?
                }
                _ => {
                    return Err(loc(
                        31002,
                        "$unset specification must be a string or an array".into(),
                    ))
                }
            };
            let mut d = Document::new();
            for f in fields {
                d.insert(f, 0);
            }
            Ok(Stage::Project(Projection::new_aggregate(&d)?))
        }
        "$count" => {
            let Bson::String(field) = spec else {
                return Err(loc(
                    40156,
                    "the count field must be a non-empty string".into(),
                ));
            };
            if field.is_empty() {
                return Err(loc(
                    40156,
                    "the count field must be a non-empty string".into(),
                ));
            }
            if field.starts_with('$') {
                return Err(loc(
                    40158,
                    "the count field cannot be a $-prefixed path".into(),
                ));
            }
            if field.contains('.') {
                return Err(loc(40160, "the count field cannot contain '.'".into()));
            }
            Ok(Stage::Count(field.clone()))
        }
        "$group" => parse_group(spec),
        "$unwind" => parse_unwind(spec),
        "$replaceRoot" => {
            let Bson::Document(d) = spec else {
                return Err(loc(
                    40229,
                    format!(
                        "expected an object as specification for $replaceRoot stage, got {}",
                        super::compare::type_name(spec)
                    ),
                ));
            };
            let mut new_root = None;
            for (k, v) in d {
                if k == "newRoot" {
                    new_root = Some(Expr::parse(v)?);
                } else {
                    return Err(loc(
                        40230,
                        format!("unrecognized option to $replaceRoot stage: {k}"),
                    ));
                }
            }
            match new_root {
                Some(e) => Ok(Stage::ReplaceRoot(e)),
                None => Err(loc(
                    40231,
                    "no newRoot specified for the $replaceRoot stage".into(),
                )),
            }
        }
        "$replaceWith" => Ok(Stage::ReplaceRoot(Expr::parse(spec)?)),
        "$sortByCount" => match spec {
            Bson::String(s) if s.starts_with('$') => Ok(Stage::SortByCount(Expr::parse(spec)?)),
            Bson::Document(d) if d.keys().next().map(|k| k.starts_with('$')).unwrap_or(false) => {
                Ok(Stage::SortByCount(Expr::parse(spec)?))
            }
            Bson::String(_) | Bson::Document(_) => Err(loc(
                40148,
                "the sortByCount field must be defined as a $-prefixed path or an expression"
                    .into(),
            )),
            _ => Err(loc(
                40147,
                "the sortByCount field must be specified as a string or as an object".into(),
            )),
        },
        n if UNSUPPORTED_STAGES.contains(&n) => Err(ServerError::not_implemented(format!(
            "{n} is not supported"
        ))),
        n => Err(loc(
            40324,
            format!("Unrecognized pipeline stage name: '{n}'"),
        )),
    }
}

fn parse_integer(
    spec: &Bson,
    stage: &str,
    not_number: impl Fn() -> ServerError,
) -> ServerResult<i64> {
    if !is_number(spec) {
        return Err(not_number());
    }
    let f = as_f64(spec).unwrap_or(f64::NAN);
    match spec {
        Bson::Int32(i) => Ok(*i as i64),
        Bson::Int64(i) => Ok(*i),
        _ if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(f as i64),
        _ => Err(ServerError::bad_value(format!(
            "invalid argument to {stage} stage: Cannot represent as a 64-bit integer: {stage}: {spec}"
        ))),
    }
}

fn flatten_add_fields(
    prefix: &str,
    spec: &Document,
    out: &mut Vec<(Vec<String>, Expr)>,
) -> ServerResult<()> {
    for (k, v) in spec {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Bson::Document(d) if !d.is_empty() && !d.keys().next().unwrap().starts_with('$') => {
                flatten_add_fields(&path, d, out)?;
            }
            other => {
                crate::server::limits::check_path(&path)?;
                out.push((
                    path.split('.').map(str::to_string).collect(),
                    Expr::parse(other)?,
                ))
            }
        }
    }
    Ok(())
}

fn parse_group(spec: &Bson) -> ServerResult<Stage> {
    let Bson::Document(d) = spec else {
        return Err(loc(
            15947,
            "a group's fields must be specified in an object".into(),
        ));
    };
    let mut id = None;
    let mut accs = Vec::new();
    for (name, v) in d {
        if name == "_id" {
            id = Some(Expr::parse(v)?);
            continue;
        }
        if name.contains('.') {
            return Err(loc(
                40235,
                format!("The field name '{name}' cannot contain '.'"),
            ));
        }
        let Bson::Document(acc) = v else {
            return Err(loc(
                40234,
                format!("The field '{name}' must be an accumulator object"),
            ));
        };
        if acc.len() != 1 {
            return Err(loc(
                40238,
                format!("The field '{name}' must specify one accumulator"),
            ));
        }
        let (op, arg) = acc.iter().next().unwrap();
        let (op, expr) = match op.as_str() {
            "$sum" => (AccOp::Sum, Expr::parse(arg)?),
            "$avg" => (AccOp::Avg, Expr::parse(arg)?),
            "$min" => (AccOp::Min, Expr::parse(arg)?),
            "$max" => (AccOp::Max, Expr::parse(arg)?),
            "$first" => (AccOp::First, Expr::parse(arg)?),
            "$last" => (AccOp::Last, Expr::parse(arg)?),
            "$push" => (AccOp::Push, Expr::parse(arg)?),
            "$addToSet" => (AccOp::AddToSet, Expr::parse(arg)?),
            "$count" => {
                if !matches!(arg, Bson::Document(a) if a.is_empty()) {
                    return Err(ServerError::new(
                        ErrorCode::FailedToParse,
                        "$count takes no arguments, i.e. $count:{}",
                    ));
                }
                (AccOp::Sum, Expr::Const(Bson::Int32(1)))
            }
            other => return Err(loc(15952, format!("unknown group operator '{other}'"))),
        };
        accs.push((name.clone(), op, expr));
    }
    let Some(id) = id else {
        return Err(loc(
            15955,
            "a group specification must include an _id".into(),
        ));
    };
    Ok(Stage::Group { id, accs })
}

fn parse_unwind(spec: &Bson) -> ServerResult<Stage> {
    let (path, include_index, preserve) = match spec {
        Bson::String(s) => (s.clone(), None, false),
        Bson::Document(d) => {
            let mut path = None;
            let mut include_index = None;
            let mut preserve = false;
            for (k, v) in d {
                match k.as_str() {
                    "path" => match v {
                        Bson::String(s) => path = Some(s.clone()),
                        other => {
                            return Err(loc(
                                28808,
                                format!("expected a string as the path for $unwind stage, got {}", super::compare::type_name(other)),
                            ))
                        }
                    },
                    "includeArrayIndex" => match v {
                        Bson::String(s) => {
                            if s.starts_with('$') {
                                return Err(loc(
                                    28822,
                                    format!("includeArrayIndex option to $unwind stage should not be prefixed with a '$': {s}"),
                                ));
                            }
                            include_index = Some(s.clone());
                        }
                        other => {
                            return Err(loc(
                                28810,
                                format!("expected a non-empty string for the includeArrayIndex option to $unwind stage, got {}", super::compare::type_name(other)),
                            ))
                        }
                    },
                    "preserveNullAndEmptyArrays" => match v {
                        Bson::Boolean(b) => preserve = *b,
                        other => {
                            return Err(loc(
                                28809,
                                format!("expected a boolean for the preserveNullAndEmptyArrays option to $unwind stage, got {}", super::compare::type_name(other)),
                            ))
                        }
                    },
                    other => {
                        return Err(loc(28811, format!("unrecognized option to $unwind stage: {other}")))
                    }
                }
            }
            let Some(path) = path else {
                return Err(loc(28812, "no path specified to $unwind stage".into()));
            };
            (path, include_index, preserve)
        }
        other => {
            return Err(loc(
                15981,
                format!(
                "expected either a string or an object as specification for $unwind stage, got {}",
                super::compare::type_name(other)
            ),
            ))
        }
    };
    let Some(field) = path.strip_prefix('$') else {
        return Err(loc(
            28818,
            format!("path option to $unwind stage should be prefixed with a '$': {path}"),
        ));
    };
    if field.is_empty() || field.starts_with('$') || field.split('.').any(str::is_empty) {
        return Err(ServerError::location(
            16410,
            "FieldPath field names may not start with '$'.",
        ));
    }
    Ok(Stage::Unwind {
        path: field.split('.').map(str::to_string).collect(),
        include_index,
        preserve,
    })
}

// ---------------------------------------------------------------------------------------
// Execution

fn run_stage(stage: &Stage, docs: Vec<Document>) -> ServerResult<Vec<Document>> {
    Ok(match stage {
        Stage::Match(m) => docs.into_iter().filter(|d| m.matches(d)).collect(),
        Stage::Sort(s) => {
            let mut docs = docs;
            s.sort(&mut docs);
            if s.natural() == Some(-1) && s.is_empty() {
                docs.reverse();
            }
            docs
        }
        Stage::Limit(n) => docs.into_iter().take(*n).collect(),
        Stage::Skip(n) => docs.into_iter().skip(*n).collect(),
        Stage::Project(p) => docs
            .iter()
            .map(|d| p.try_apply(d))
            .collect::<ServerResult<_>>()?,
        Stage::AddFields(fields) => {
            let mut out = Vec::with_capacity(docs.len());
            for d in docs {
                let mut values = Vec::with_capacity(fields.len());
                for (_, e) in fields {
                    values.push(e.eval(&d)?);
                }
                let mut nd = d;
                for ((path, _), v) in fields.iter().zip(values) {
                    match v {
                        Some(v) => set_path(&mut nd, path, v),
                        None => remove_path(&mut nd, path),
                    }
                }
                out.push(nd);
            }
            out
        }
        Stage::Count(field) => {
            if docs.is_empty() {
                Vec::new()
            } else {
                let n = docs.len();
                let v = if n <= i32::MAX as usize {
                    Bson::Int32(n as i32)
                } else {
                    Bson::Int64(n as i64)
                };
                let mut d = Document::new();
                d.insert(field.clone(), v);
                vec![d]
            }
        }
        Stage::Group { id, accs } => run_group(id, accs, docs)?,
        Stage::Unwind {
            path,
            include_index,
            preserve,
        } => run_unwind(path, include_index.as_deref(), *preserve, docs),
        Stage::ReplaceRoot(e) => {
            let mut out = Vec::with_capacity(docs.len());
            for d in docs {
                match e.eval(&d)? {
                    Some(Bson::Document(nd)) => out.push(nd),
                    other => {
                        let (shown, ty) = match &other {
                            Some(v) => (v.to_string(), super::compare::type_name(v)),
                            None => ("MISSING".to_string(), "missing"),
                        };
                        return Err(loc(
                            40228,
                            format!(
                                "'newRoot' expression must evaluate to an object, but resulting value was: {shown}. Type of resulting value: '{ty}'. Input document: {d}"
                            ),
                        ));
                    }
                }
            }
            out
        }
        Stage::SortByCount(e) => {
            let grouped = run_group(
                e,
                &[("count".to_string(), AccOp::Sum, Expr::Const(Bson::Int32(1)))],
                docs,
            )?;
            let mut grouped = grouped;
            grouped.sort_by(|a, b| {
                compare_values(
                    b.get("count").unwrap_or(&Bson::Null),
                    a.get("count").unwrap_or(&Bson::Null),
                )
            });
            grouped
        }
    })
}

/// Set a dotted path, creating (or replacing non-document) intermediates; arrays met along
/// the way get the field set in each element.
fn set_path(doc: &mut Document, parts: &[String], value: Bson) {
    if parts.len() == 1 {
        doc.insert(parts[0].clone(), value);
        return;
    }
    match doc.get_mut(&parts[0]) {
        Some(Bson::Document(d)) => set_path(d, &parts[1..], value),
        Some(Bson::Array(a)) => {
            for e in a.iter_mut() {
                set_in_value(e, &parts[1..], value.clone());
            }
        }
        _ => {
            let mut d = Document::new();
            set_path(&mut d, &parts[1..], value);
            doc.insert(parts[0].clone(), d);
        }
    }
}

fn set_in_value(e: &mut Bson, parts: &[String], value: Bson) {
    match e {
        Bson::Document(d) => set_path(d, parts, value),
        Bson::Array(a) => {
            for x in a.iter_mut() {
                set_in_value(x, parts, value.clone());
            }
        }
        other => {
            let mut d = Document::new();
            set_path(&mut d, parts, value);
            *other = Bson::Document(d);
        }
    }
}

fn remove_path(doc: &mut Document, parts: &[String]) {
    if parts.len() == 1 {
        doc.remove(&parts[0]);
        return;
    }
    if let Some(Bson::Document(d)) = doc.get_mut(&parts[0]) {
        remove_path(d, &parts[1..]);
    }
}

fn get_doc_path<'a>(doc: &'a Document, parts: &[String]) -> Option<&'a Bson> {
    let mut cur = doc.get(&parts[0])?;
    for p in &parts[1..] {
        match cur {
            Bson::Document(d) => cur = d.get(p)?,
            _ => return None,
        }
    }
    Some(cur)
}

fn run_unwind(
    path: &[String],
    include_index: Option<&str>,
    preserve: bool,
    docs: Vec<Document>,
) -> Vec<Document> {
    let mut out = Vec::new();
    for d in docs {
        match get_doc_path(&d, path).cloned() {
            Some(Bson::Array(items)) if !items.is_empty() => {
                for (i, item) in items.into_iter().enumerate() {
                    let mut nd = d.clone();
                    set_path(&mut nd, path, item);
                    if let Some(f) = include_index {
                        nd.insert(f, Bson::Int64(i as i64));
                    }
                    out.push(nd);
                }
            }
            Some(Bson::Array(_)) | None | Some(Bson::Null) | Some(Bson::Undefined) => {
                if preserve {
                    let mut nd = d;
                    if let Some(f) = include_index {
                        nd.insert(f, Bson::Null);
                    }
                    out.push(nd);
                }
            }
            Some(_) => {
                let mut nd = d;
                if let Some(f) = include_index {
                    nd.insert(f, Bson::Null);
                }
                out.push(nd);
            }
        }
    }
    out
}

#[derive(Debug, Clone)]
enum AccState {
    Sum(Num),
    Avg(f64, u64, bool),
    Extreme(Option<Bson>),
    First(Option<Bson>),
    Last(Bson),
    List(Vec<Bson>),
}

impl AccState {
    fn new(op: AccOp) -> AccState {
        match op {
            AccOp::Sum => AccState::Sum(Num::Int(0)),
            AccOp::Avg => AccState::Avg(0.0, 0, false),
            AccOp::Min | AccOp::Max => AccState::Extreme(None),
            AccOp::First => AccState::First(None),
            AccOp::Last => AccState::Last(Bson::Null),
            AccOp::Push | AccOp::AddToSet => AccState::List(Vec::new()),
        }
    }

    fn update(&mut self, op: AccOp, v: Option<Bson>) {
        match (self, op) {
            (AccState::Sum(acc), _) => {
                if let Some(n) = v.as_ref().and_then(Num::from_bson) {
                    *acc = acc.add(n);
                }
            }
            (AccState::Avg(sum, count, dec), _) => {
                if let Some(n) = v.as_ref().and_then(Num::from_bson) {
                    *sum += n.as_f64();
                    *count += 1;
                    if matches!(n, Num::Decimal(_)) {
                        *dec = true;
                    }
                }
            }
            (AccState::Extreme(cur), op) => {
                let Some(v) = v else { return };
                if matches!(v, Bson::Null | Bson::Undefined) {
                    return;
                }
                let replace = match cur {
                    None => true,
                    Some(c) => {
                        let ord = compare_values(&v, c);
                        if op == AccOp::Min {
                            ord == std::cmp::Ordering::Less
                        } else {
                            ord == std::cmp::Ordering::Greater
                        }
                    }
                };
                if replace {
                    *cur = Some(v);
                }
            }
            (AccState::First(cur), _) => {
                if cur.is_none() {
                    *cur = Some(v.unwrap_or(Bson::Null));
                }
            }
            (AccState::Last(cur), _) => *cur = v.unwrap_or(Bson::Null),
            (AccState::List(items), op) => {
                let Some(v) = v else { return };
                if op == AccOp::AddToSet && items.iter().any(|x| values_equal(x, &v)) {
                    return;
                }
                items.push(v);
            }
        }
    }

    fn finish(self) -> Bson {
        match self {
            AccState::Sum(n) => n.to_bson(),
            AccState::Avg(_, 0, _) => Bson::Null,
            AccState::Avg(sum, count, dec) => {
                let avg = sum / count as f64;
                if dec {
                    Bson::Decimal128(super::expr::f64_to_decimal(avg))
                } else {
                    Bson::Double(avg)
                }
            }
            AccState::Extreme(v) => v.unwrap_or(Bson::Null),
            AccState::First(v) => v.unwrap_or(Bson::Null),
            AccState::Last(v) => v,
            AccState::List(items) => Bson::Array(items),
        }
    }
}

fn run_group(
    id: &Expr,
    accs: &[(String, AccOp, Expr)],
    docs: Vec<Document>,
) -> ServerResult<Vec<Document>> {
    let mut index: BTreeMap<KeyValue, usize> = BTreeMap::new();
    let mut groups: Vec<(Bson, Vec<AccState>)> = Vec::new();
    for d in &docs {
        let key = id.eval(d)?.unwrap_or(Bson::Null);
        let slot = match index.get(&KeyValue(key.clone())) {
            Some(i) => *i,
            None => {
                groups.push((
                    key.clone(),
                    accs.iter().map(|(_, op, _)| AccState::new(*op)).collect(),
                ));
                index.insert(KeyValue(key), groups.len() - 1);
                groups.len() - 1
            }
        };
        for (i, (_, op, e)) in accs.iter().enumerate() {
            let v = e.eval(d)?;
            groups[slot].1[i].update(*op, v);
        }
    }
    Ok(groups
        .into_iter()
        .map(|(key, states)| {
            let mut out = Document::new();
            out.insert("_id", key);
            for ((name, _, _), st) in accs.iter().zip(states) {
                out.insert(name.clone(), st.finish());
            }
            out
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn run(input: Vec<Document>, pipeline: Vec<Document>) -> Vec<Document> {
        run_pipeline(input, &pipeline).unwrap()
    }

    fn err(pipeline: Vec<Document>) -> ServerError {
        run_pipeline(vec![doc! {"a": 1}], &pipeline).unwrap_err()
    }

    fn people() -> Vec<Document> {
        vec![
            doc! {"_id": 1, "name": "ann", "dept": "eng", "age": 30, "tags": ["a", "b"]},
            doc! {"_id": 2, "name": "bob", "dept": "ops", "age": 25, "tags": []},
            doc! {"_id": 3, "name": "cy", "dept": "eng", "age": 41.5},
            doc! {"_id": 4, "name": "di", "dept": "eng", "age": "unknown", "tags": "z"},
        ]
    }

    #[test]
    fn count_documents_pipeline_from_pymongo() {
        for (skip, limit) in [
            (Bson::Int32(1), Bson::Int32(2)),
            (Bson::Int64(1), Bson::Int64(2)),
            (Bson::Double(1.0), Bson::Double(2.0)),
        ] {
            let out = run(
                people(),
                vec![
                    doc! {"$match": {"dept": "eng"}},
                    doc! {"$skip": skip},
                    doc! {"$limit": limit},
                    doc! {"$group": {"_id": 1, "n": {"$sum": 1}}},
                ],
            );
            assert_eq!(out, vec![doc! {"_id": 1, "n": 2}]);
        }
        // no matching documents: no group output at all
        let out = run(
            people(),
            vec![
                doc! {"$match": {"dept": "x"}},
                doc! {"$group": {"_id": 1, "n": {"$sum": 1}}},
            ],
        );
        assert!(out.is_empty());
    }

    #[test]
    fn match_sort_skip_limit() {
        let out = run(
            people(),
            vec![
                doc! {"$match": {"age": {"$type": "number"}}},
                doc! {"$sort": {"age": -1}},
                doc! {"$skip": 1},
                doc! {"$limit": 1},
            ],
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].get_i32("_id").unwrap(), 1);
    }

    #[test]
    fn group_accumulators() {
        let out = run(
            people(),
            vec![
                doc! {"$group": {
                    "_id": "$dept",
                    "n": {"$count": {}},
                    "total": {"$sum": "$age"},
                    "avg": {"$avg": "$age"},
                    "min": {"$min": "$age"},
                    "max": {"$max": "$age"},
                    "first": {"$first": "$name"},
                    "last": {"$last": "$name"},
                    "names": {"$push": "$name"},
                    "depts": {"$addToSet": "$dept"},
                }},
                doc! {"$sort": {"_id": 1}},
            ],
        );
        assert_eq!(
            out[0],
            doc! {
                "_id": "eng", "n": 3, "total": 71.5, "avg": 35.75,
                // $min/$max compare across types: strings sort above numbers
                "min": 30, "max": "unknown",
                "first": "ann", "last": "di",
                "names": ["ann", "cy", "di"], "depts": ["eng"],
            }
        );
        assert_eq!(out[1].get_str("_id").unwrap(), "ops");
        assert_eq!(out[1].get_i32("total").unwrap(), 25);
    }

    #[test]
    fn group_key_equality_is_numeric_and_missing_is_null() {
        let docs = vec![doc! {"k": 1}, doc! {"k": 1.0}, doc! {"k": null}, doc! {}];
        let out = run(docs, vec![doc! {"$group": {"_id": "$k", "c": {"$sum": 1}}}]);
        assert_eq!(
            out,
            vec![doc! {"_id": 1, "c": 2}, doc! {"_id": null, "c": 2}]
        );
        let out = run(
            vec![doc! {"a": 1, "b": 2}],
            vec![doc! {"$group": {"_id": {"x": "$a", "y": "$zz"}, "s": {"$sum": "$b"}}}],
        );
        assert_eq!(out, vec![doc! {"_id": {"x": 1}, "s": 2}]);
    }

    #[test]
    fn sum_avg_min_max_edge_cases() {
        let docs = vec![doc! {"v": "x"}, doc! {"v": null}];
        let out = run(
            docs,
            vec![
                doc! {"$group": {"_id": null, "s": {"$sum": "$v"}, "a": {"$avg": "$v"}, "m": {"$min": "$v"}, "z": {"$max": "$w"}, "p": {"$push": "$w"}}},
            ],
        );
        // non-numbers are ignored by $sum/$avg; $min/$max skip null and missing
        assert_eq!(
            out,
            vec![doc! {"_id": null, "s": 0, "a": null, "m": "x", "z": null, "p": []}]
        );
        let big = vec![doc! {"v": i32::MAX}, doc! {"v": 1}];
        let out = run(big, vec![doc! {"$group": {"_id": 0, "s": {"$sum": "$v"}}}]);
        assert_eq!(out[0].get("s"), Some(&Bson::Int64(i32::MAX as i64 + 1)));
    }

    #[test]
    fn project_add_fields_set_unset() {
        let d = vec![doc! {"_id": 1, "a": 2, "b": {"c": 3, "d": 4}}];
        assert_eq!(
            run(
                d.clone(),
                vec![doc! {"$project": {"a": 1, "x": {"$multiply": ["$a", 10]}}}]
            ),
            vec![doc! {"_id": 1, "a": 2, "x": 20}]
        );
        assert_eq!(
            run(d.clone(), vec![doc! {"$project": {"b.c": 0, "_id": 0}}]),
            vec![doc! {"a": 2, "b": {"d": 4}}]
        );
        assert_eq!(
            run(
                d.clone(),
                vec![doc! {"$addFields": {"a": 5, "b.e": "$a", "n": {"k": "$a"}}}]
            ),
            vec![doc! {"_id": 1, "a": 5, "b": {"c": 3, "d": 4, "e": 2}, "n": {"k": 2}}]
        );
        assert_eq!(
            run(d.clone(), vec![doc! {"$set": {"a": "$$REMOVE"}}]),
            vec![doc! {"_id": 1, "b": {"c": 3, "d": 4}}]
        );
        assert_eq!(
            run(d.clone(), vec![doc! {"$unset": ["a", "b.d"]}]),
            vec![doc! {"_id": 1, "b": {"c": 3}}]
        );
        assert_eq!(run(d, vec![doc! {"$unset": "_id"}])[0].get("_id"), None);
    }

    #[test]
    fn count_stage() {
        assert_eq!(
            run(people(), vec![doc! {"$count": "total"}]),
            vec![doc! {"total": 4}]
        );
        assert!(run(vec![], vec![doc! {"$count": "total"}]).is_empty());
        assert_eq!(err(vec![doc! {"$count": ""}]).code, 40156);
        assert_eq!(err(vec![doc! {"$count": "$x"}]).code, 40158);
        assert_eq!(err(vec![doc! {"$count": "a.b"}]).code, 40160);
    }

    #[test]
    fn unwind_forms() {
        let ids = |docs: Vec<Document>| -> Vec<Bson> {
            docs.iter()
                .map(|d| {
                    d.get("tags")
                        .cloned()
                        .unwrap_or(Bson::String("<missing>".into()))
                })
                .collect()
        };
        let out = run(people(), vec![doc! {"$unwind": "$tags"}]);
        assert_eq!(
            ids(out),
            vec![Bson::from("a"), Bson::from("b"), Bson::from("z")]
        );
        let out = run(
            people(),
            vec![
                doc! {"$unwind": {"path": "$tags", "preserveNullAndEmptyArrays": true, "includeArrayIndex": "i"}},
            ],
        );
        assert_eq!(out.len(), 5);
        assert_eq!(out[1].get("i"), Some(&Bson::Int64(1)));
        assert_eq!(
            out[2],
            doc! {"_id": 2, "name": "bob", "dept": "ops", "age": 25, "tags": [], "i": null}
        );
        assert_eq!(out[3].get("tags"), None);
        let nested = run(
            vec![doc! {"a": {"b": [1, 2]}}],
            vec![doc! {"$unwind": "$a.b"}],
        );
        assert_eq!(nested, vec![doc! {"a": {"b": 1}}, doc! {"a": {"b": 2}}]);
        assert_eq!(err(vec![doc! {"$unwind": "tags"}]).code, 28818);
        assert_eq!(
            err(vec![doc! {"$unwind": {"path": "$a", "x": 1}}]).code,
            28811
        );
        assert_eq!(err(vec![doc! {"$unwind": {}}]).code, 28812);
        assert_eq!(err(vec![doc! {"$unwind": 5}]).code, 15981);
    }

    #[test]
    fn replace_root_and_replace_with() {
        let d = vec![doc! {"_id": 1, "inner": {"x": 1}}];
        assert_eq!(
            run(
                d.clone(),
                vec![doc! {"$replaceRoot": {"newRoot": "$inner"}}]
            ),
            vec![doc! {"x": 1}]
        );
        assert_eq!(
            run(d.clone(), vec![doc! {"$replaceWith": {"k": "$_id"}}]),
            vec![doc! {"k": 1}]
        );
        let e = run_pipeline(d, &[doc! {"$replaceRoot": {"newRoot": "$nope"}}]).unwrap_err();
        assert_eq!(e.code, 40228);
        assert_eq!(err(vec![doc! {"$replaceRoot": {}}]).code, 40231);
    }

    #[test]
    fn sort_by_count() {
        let out = run(people(), vec![doc! {"$sortByCount": "$dept"}]);
        assert_eq!(
            out,
            vec![
                doc! {"_id": "eng", "count": 3},
                doc! {"_id": "ops", "count": 1}
            ]
        );
    }

    #[test]
    fn stage_errors() {
        let e = err(vec![doc! {"$foo": 1}]);
        assert_eq!(
            (e.code, e.message.as_str()),
            (40324, "Unrecognized pipeline stage name: '$foo'")
        );
        assert_eq!(
            err(vec![doc! {"$match": {}, "$sort": {"a": 1}}]).code,
            40323
        );
        assert_eq!(err(vec![doc! {"$lookup": {}}]).code, 238);
        assert_eq!(err(vec![doc! {"$limit": 0}]).code, 15958);
        assert_eq!(err(vec![doc! {"$limit": "1"}]).code, 15957);
        assert_eq!(err(vec![doc! {"$skip": -1}]).code, 15956);
        assert_eq!(err(vec![doc! {"$skip": "x"}]).code, 15972);
        assert_eq!(err(vec![doc! {"$sort": {}}]).code, 15976);
        assert_eq!(err(vec![doc! {"$sort": {"a": 3}}]).code, 15975);
        assert_eq!(err(vec![doc! {"$project": {}}]).code, 51272);
        assert_eq!(err(vec![doc! {"$group": {"n": {"$sum": 1}}}]).code, 15955);
        assert_eq!(
            err(vec![doc! {"$group": {"_id": 1, "n": {"$foo": 1}}}]).code,
            15952
        );
        assert_eq!(err(vec![doc! {"$group": {"_id": 1, "n": 5}}]).code, 40234);
        assert_eq!(err(vec![doc! {"$project": {"a": {"$bogus": 1}}}]).code, 168);
        assert_eq!(err(vec![doc! {"$match": {"a": {"$bad": 1}}}]).code, 2);
        // errors are raised even when no document reaches the bad stage
        assert!(run_pipeline(vec![], &[doc! {"$foo": 1}]).is_err());
    }
}
