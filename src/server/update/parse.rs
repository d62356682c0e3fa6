//! Parsing an operator update into MongoDB's update tree (`UpdateObjectNode::parseAndMerge`):
//! one node per path component, children kept in `cmpPathsAndArrayIndexes` order (which is the
//! order the update is applied and logged in).

use super::fmt;
use crate::server::error::{ServerError, ServerResult};
use crate::server::error_codes::ErrorCode;
use bson::{Bson, Document};
use std::cmp::Ordering;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum BitOp {
    And,
    Or,
    Xor,
}

#[derive(Debug, Clone)]
pub(crate) enum SortSpec {
    /// `$sort: 1 | -1` — compare whole elements; `true` = descending.
    Whole(bool),
    /// `$sort: {field: 1, ...}`.
    Pattern(Document),
}

#[derive(Debug, Clone)]
pub(crate) struct PushSpec {
    pub values: Vec<Bson>,
    pub position: i64,
    pub slice: i64,
    pub sort: Option<SortSpec>,
}

#[derive(Debug, Clone)]
pub(crate) enum PullSpec {
    /// A document that is not an operator expression: a query run against document elements.
    Object(Document),
    /// An operator expression (`{$gte: 6}`) applied to each element itself.
    Wrapped(Document),
    /// A regular expression matched against string elements.
    Regex(Bson),
    /// Any other value: elements comparing equal are removed.
    Equality(Bson),
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
    Set(Bson),
    SetOnInsert(Bson),
    Unset,
    Inc(Bson),
    Mul(Bson),
    Min(Bson),
    Max(Bson),
    CurrentDate {
        timestamp: bool,
    },
    Push(PushSpec),
    AddToSet(Vec<Bson>),
    Pull(PullSpec),
    PullAll(Vec<Bson>),
    Pop {
        front: bool,
    },
    Bit(Vec<(BitOp, Bson)>),
    /// `$rename` is placed in the tree at its destination path.
    RenameDest {
        from: String,
    },
    /// ... and reserves its source path with a placeholder that does nothing when applied.
    RenameSource,
}

impl Op {
    /// Modifiers that create their path when it does not exist (`allowCreation`).
    pub(crate) fn allows_creation(&self) -> bool {
        !matches!(
            self,
            Op::Unset | Op::Pull(_) | Op::PullAll(_) | Op::Pop { .. } | Op::RenameSource
        )
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Leaf {
    pub op: Op,
}

/// `UpdateObjectNode`: children by field name, plus the child for the positional `$` component
/// (applied at the array index the query matched).
#[derive(Debug, Clone, Default)]
pub(crate) struct ObjectNode {
    pub children: Vec<(String, UNode)>,
    pub positional: Option<Box<UNode>>,
}

/// `UpdateArrayNode`: children by array filter identifier (`""` for `$[]`), each applied to the
/// array elements its filter matches.
#[derive(Debug, Clone, Default)]
pub(crate) struct ArrayNode {
    pub children: Vec<(String, UNode)>,
}

#[derive(Debug, Clone)]
pub(crate) enum UNode {
    Object(ObjectNode),
    Array(ArrayNode),
    Leaf(Leaf),
}

impl UNode {
    fn get_child(&self, name: &str) -> Option<&UNode> {
        match self {
            UNode::Object(o) if name == "$" => o.positional.as_deref(),
            UNode::Object(ObjectNode { children, .. }) | UNode::Array(ArrayNode { children }) => {
                children.iter().find(|(k, _)| k == name).map(|(_, c)| c)
            }
            UNode::Leaf(_) => None,
        }
    }

    fn get_child_mut(&mut self, name: &str) -> Option<&mut UNode> {
        if name == "$" {
            return match self {
                UNode::Object(o) => o.positional.as_deref_mut(),
                _ => None,
            };
        }
        match self {
            UNode::Object(ObjectNode { children, .. }) | UNode::Array(ArrayNode { children }) => {
                children.iter_mut().find(|(k, _)| k == name).map(|(_, c)| c)
            }
            UNode::Leaf(_) => None,
        }
    }

    fn set_child(&mut self, name: String, child: UNode) {
        match self {
            UNode::Object(o) if name == "$" => o.positional = Some(Box::new(child)),
            UNode::Object(ObjectNode { children, .. }) | UNode::Array(ArrayNode { children }) => {
                children.push((name, child))
            }
            UNode::Leaf(_) => unreachable!("leaves have no children"),
        }
    }
}

/// A parsed operator update: the tree, and whether it uses the positional `$` (mongod then
/// asks the query for the matched array index).
#[derive(Debug, Clone)]
pub(crate) struct ParsedTree {
    pub root: UNode,
    pub positional: bool,
}

/// `UpdateNode::createUpdateNodeByMerging`: the update for an array element (or a positional
/// field) reached by several update paths. `path` is the path taken to that point, for the
/// ConflictingUpdateOperators message.
pub(crate) fn merge_nodes(
    left: &UNode,
    right: &UNode,
    path: &mut Vec<String>,
) -> ServerResult<UNode> {
    fn merge_maps(
        l: &[(String, UNode)],
        r: &[(String, UNode)],
        path: &mut Vec<String>,
        wrap: bool,
    ) -> ServerResult<Vec<(String, UNode)>> {
        let mut out: Vec<(String, UNode)> = Vec::new();
        for (k, a) in l {
            match r.iter().find(|(rk, _)| rk == k) {
                Some((_, b)) => {
                    path.push(if wrap { format!("$[{}]", k) } else { k.clone() });
                    let merged = merge_nodes(a, b, path);
                    path.pop();
                    out.push((k.clone(), merged?));
                }
                None => out.push((k.clone(), a.clone())),
            }
        }
        for (k, b) in r {
            if !l.iter().any(|(lk, _)| lk == k) {
                out.push((k.clone(), b.clone()));
            }
        }
        Ok(out)
    }
    match (left, right) {
        (UNode::Object(l), UNode::Object(r)) => {
            let mut children = merge_maps(&l.children, &r.children, path, false)?;
            children.sort_by(|(a, _), (b, _)| cmp_paths_and_array_indexes(a, b));
            let positional = match (&l.positional, &r.positional) {
                (None, None) => None,
                (Some(p), None) | (None, Some(p)) => Some(p.clone()),
                (Some(a), Some(b)) => {
                    path.push("$".to_string());
                    let merged = merge_nodes(a, b, path);
                    path.pop();
                    Some(Box::new(merged?))
                }
            };
            Ok(UNode::Object(ObjectNode {
                children,
                positional,
            }))
        }
        (UNode::Array(l), UNode::Array(r)) => {
            let mut children = merge_maps(&l.children, &r.children, path, true)?;
            children.sort_by(|(a, _), (b, _)| a.as_bytes().cmp(b.as_bytes()));
            Ok(UNode::Array(ArrayNode { children }))
        }
        _ => Err(ServerError::conflicting_update(format!(
            "Update created a conflict at '{}'",
            path.join(".")
        ))),
    }
}

/// `pathsupport::cmpPathsAndArrayIndexes`: numbers (without leading zeros) in numeric order,
/// everything else bytewise.
pub(crate) fn cmp_paths_and_array_indexes(a: &str, b: &str) -> Ordering {
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    if ab.is_empty()
        || bb.is_empty()
        || !ab[0].is_ascii_digit()
        || !bb[0].is_ascii_digit()
        || (ab[0] == b'0' && ab.len() > 1)
        || (bb[0] == b'0' && bb.len() > 1)
    {
        return ab.cmp(bb);
    }
    if ab.len() != bb.len() {
        return ab.len().cmp(&bb.len());
    }
    ab.cmp(bb)
}

fn sort_tree(node: &mut UNode) {
    match node {
        UNode::Object(o) => {
            o.children
                .sort_by(|(a, _), (b, _)| cmp_paths_and_array_indexes(a, b));
            for (_, c) in o.children.iter_mut() {
                sort_tree(c);
            }
            if let Some(p) = o.positional.as_deref_mut() {
                sort_tree(p);
            }
        }
        UNode::Array(a) => {
            // std::map<std::string, ...>: identifiers in bytewise order.
            a.children
                .sort_by(|(x, _), (y, _)| x.as_bytes().cmp(y.as_bytes()));
            for (_, c) in a.children.iter_mut() {
                sort_tree(c);
            }
        }
        UNode::Leaf(_) => {}
    }
}

const MODIFIERS: &[&str] = &[
    "$set",
    "$unset",
    "$inc",
    "$mul",
    "$min",
    "$max",
    "$rename",
    "$push",
    "$addToSet",
    "$pull",
    "$pullAll",
    "$pop",
    "$currentDate",
    "$setOnInsert",
    "$bit",
];

/// `fieldchecker::isArrayFilterIdentifier`: `$[]` or `$[<identifier>]`.
pub(crate) fn is_array_filter_identifier(part: &str) -> bool {
    part.len() >= 3 && part.starts_with("$[") && part.ends_with(']')
}

/// Parse an operator update document into a sorted update tree. `array_filters` are the
/// identifiers of the (already parsed) arrayFilters; each must be used by some path.
pub(crate) fn parse_operator_update(
    update: &Document,
    array_filters: &[String],
) -> ServerResult<ParsedTree> {
    let mut root = UNode::Object(ObjectNode::default());
    let mut positional = false;
    let mut found: Vec<String> = Vec::new();
    for (modifier, operand) in update {
        if modifier == "$v" {
            return Err(ServerError::failed_to_parse(
                "The $v update field is only recognized internally",
            ));
        }
        if !MODIFIERS.contains(&modifier.as_str()) {
            return Err(ServerError::failed_to_parse(format!(
                "Unknown modifier: {}. Expected a valid update modifier or pipeline-style update \
                 specified as an array",
                modifier
            )));
        }
        let fields = match operand {
            Bson::Document(d) => d,
            other => {
                return Err(ServerError::failed_to_parse(format!(
                    "Modifiers operate on fields but we found type {} instead. For example: \
                     {{$mod: {{<field>: ...}}}} not {{{}}}",
                    fmt::type_name(other),
                    fmt::element(modifier, other)
                )))
            }
        };
        for (path, value) in fields {
            // UpdateObjectNode::parseAndMerge: path checks, then the modifier's init(), then
            // the walk that creates the nodes (array filter identifiers, conflicts).
            if modifier == "$rename" {
                // A placeholder at the source path first ...
                let parts = check_updatable(path)?;
                positional |= parts.iter().any(|p| p == "$");
                insert(
                    &mut root,
                    &parts,
                    path,
                    Op::RenameSource,
                    array_filters,
                    &mut found,
                )?;
                // ... then the rename at its destination.
                let to = match value {
                    Bson::String(s) => s.clone(),
                    other => {
                        return Err(ServerError::bad_value(format!(
                            "The 'to' field for $rename must be a string: {}",
                            fmt::element(path, other)
                        )))
                    }
                };
                let to_parts = check_updatable(&to)?;
                let op = parse_rename(path, &to, value)?;
                insert(&mut root, &to_parts, &to, op, array_filters, &mut found)?;
            } else {
                let parts = check_updatable(path)?;
                positional |= parts.iter().any(|p| p == "$");
                let op = parse_op(modifier, path, value)?;
                insert(&mut root, &parts, path, op, array_filters, &mut found)?;
            }
        }
    }
    // update_driver.cpp parseUpdateExpression: the filters (a std::map, so in identifier
    // order) must all have been used.
    let mut ids: Vec<&String> = array_filters.iter().collect();
    ids.sort();
    if let Some(unused) = ids.into_iter().find(|id| !found.contains(id)) {
        return Err(ServerError::failed_to_parse(format!(
            "The array filter for identifier '{}' was not used in the update {}",
            unused,
            fmt::document(update)
        )));
    }
    sort_tree(&mut root);
    Ok(ParsedTree { root, positional })
}

/// `fieldchecker::isUpdatable` and the positional (`$`) checks of `parseAndMerge`.
fn check_updatable(path: &str) -> ServerResult<Vec<String>> {
    if path.is_empty() {
        return Err(ServerError::new(
            ErrorCode::EmptyFieldName,
            "An empty update path is not valid.",
        ));
    }
    crate::server::limits::check_path(path)?;
    let parts: Vec<String> = path.split('.').map(str::to_string).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(ServerError::new(
            ErrorCode::EmptyFieldName,
            format!(
                "The update path '{}' contains an empty field name, which is not allowed.",
                path
            ),
        ));
    }
    let positions: Vec<usize> = (0..parts.len()).filter(|&i| parts[i] == "$").collect();
    if positions.len() > 1 {
        return Err(ServerError::bad_value(format!(
            "Too many positional (i.e. '$') elements found in path '{}'",
            path
        )));
    }
    if positions.first() == Some(&0) {
        return Err(ServerError::bad_value(format!(
            "Cannot have positional (i.e. '$') element in the first position in path '{}'",
            path
        )));
    }
    Ok(parts)
}

/// `parseArrayFilterIdentifier`: `$[<id>]` → `<id>` (`""` for `$[]`).
fn parse_identifier(
    part: &str,
    position: usize,
    path: &str,
    array_filters: &[String],
    found: &mut Vec<String>,
) -> ServerResult<String> {
    if position == 0 {
        return Err(ServerError::bad_value(format!(
            "Cannot have array filter identifier (i.e. '$[<id>]') element in the first position \
             in path '{}'",
            path
        )));
    }
    let id = &part[2..part.len() - 1];
    if !id.is_empty() {
        if !array_filters.iter().any(|f| f == id) {
            return Err(ServerError::bad_value(format!(
                "No array filter found for identifier '{}' in path '{}'",
                id, path
            )));
        }
        if !found.iter().any(|f| f == id) {
            found.push(id.to_string());
        }
    }
    Ok(id.to_string())
}

/// The walk of `parseAndMerge` that places `op` at `parts` in the tree.
fn insert(
    root: &mut UNode,
    parts: &[String],
    path: &str,
    op: Op,
    array_filters: &[String],
    found: &mut Vec<String>,
) -> ServerResult<()> {
    let conflict = |upto: usize| {
        ServerError::conflicting_update(format!(
            "Updating the path '{}' would create a conflict at '{}'",
            path,
            parts[..upto].join(".")
        ))
    };
    let child_name = |i: usize, found: &mut Vec<String>| -> ServerResult<String> {
        if is_array_filter_identifier(&parts[i]) {
            parse_identifier(&parts[i], i, path, array_filters, found)
        } else {
            Ok(parts[i].clone())
        }
    };
    let mut cur = root;
    for i in 0..parts.len() - 1 {
        let name = child_name(i, found)?;
        let should_be_array = is_array_filter_identifier(&parts[i + 1]);
        match cur.get_child(&name) {
            Some(child) => {
                let ok = match child {
                    UNode::Array(_) => should_be_array,
                    UNode::Object(_) => !should_be_array,
                    UNode::Leaf(_) => false,
                };
                if !ok {
                    return Err(conflict(i + 1));
                }
            }
            None => {
                let child = if should_be_array {
                    UNode::Array(ArrayNode::default())
                } else {
                    UNode::Object(ObjectNode::default())
                };
                cur.set_child(name.clone(), child);
            }
        }
        cur = cur.get_child_mut(&name).expect("child exists");
    }
    let name = child_name(parts.len() - 1, found)?;
    if cur.get_child(&name).is_some() {
        return Err(conflict(parts.len()));
    }
    cur.set_child(name, UNode::Leaf(Leaf { op }));
    Ok(())
}

fn parse_rename(from: &str, to: &str, value: &Bson) -> ServerResult<Op> {
    let shown = fmt::element(from, value);
    if to.contains('\0') {
        return Err(ServerError::bad_value(
            "The 'to' field for $rename cannot contain an embedded null byte",
        ));
    }
    if from == to {
        return Err(ServerError::bad_value(format!(
            "The source and target field for $rename must differ: {}",
            shown
        )));
    }
    let is_prefix = |a: &str, b: &str| b.starts_with(a) && b.as_bytes().get(a.len()) == Some(&b'.');
    if is_prefix(from, to) || is_prefix(to, from) {
        return Err(ServerError::bad_value(format!(
            "The source and target field for $rename must not be on the same path: {}",
            shown
        )));
    }
    let dynamic = |p: &str| {
        p.split('.')
            .any(|c| c == "$" || is_array_filter_identifier(c))
    };
    if dynamic(from) {
        return Err(ServerError::bad_value(format!(
            "The source field for $rename may not be dynamic: {}",
            from
        )));
    }
    if dynamic(to) {
        return Err(ServerError::bad_value(format!(
            "The destination field for $rename may not be dynamic: {}",
            to
        )));
    }
    Ok(Op::RenameDest {
        from: from.to_string(),
    })
}

fn is_number(v: &Bson) -> bool {
    matches!(
        v,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_)
    )
}

/// `MatchExpressionParser::parseIntegerElementToLong`.
fn integer_to_long(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(*i as i64),
        Bson::Int64(i) => Some(*i),
        Bson::Double(d) if d.fract() == 0.0 && d.abs() < 9.2e18 => Some(*d as i64),
        _ => None,
    }
}

/// Operators whose presence as the first key makes a `$pull` operand an expression on the
/// element itself (`parsePathAcceptingKeyword`).
const PATH_ACCEPTING_KEYWORDS: &[&str] = &[
    "$eq",
    "$ne",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$in",
    "$nin",
    "$exists",
    "$type",
    "$mod",
    "$regex",
    "$options",
    "$size",
    "$all",
    "$elemMatch",
    "$not",
    "$bitsAllSet",
    "$bitsAllClear",
    "$bitsAnySet",
    "$bitsAnyClear",
    "$geoWithin",
    "$geoIntersects",
    "$near",
    "$nearSphere",
    "$within",
    "$_internalSchemaType",
];

fn parse_op(modifier: &str, path: &str, value: &Bson) -> ServerResult<Op> {
    let shown = || fmt::element(path, value);
    Ok(match modifier {
        "$set" => Op::Set(value.clone()),
        "$setOnInsert" => Op::SetOnInsert(value.clone()),
        "$unset" => Op::Unset,
        "$inc" | "$mul" => {
            if !is_number(value) {
                return Err(ServerError::type_mismatch(format!(
                    "Cannot {} with non-numeric argument: {{{}}}",
                    if modifier == "$inc" {
                        "increment"
                    } else {
                        "multiply"
                    },
                    shown()
                )));
            }
            if modifier == "$inc" {
                Op::Inc(value.clone())
            } else {
                Op::Mul(value.clone())
            }
        }
        "$min" => Op::Min(value.clone()),
        "$max" => Op::Max(value.clone()),
        "$currentDate" => parse_current_date(value)?,
        "$push" => Op::Push(parse_push(value)?),
        "$addToSet" => Op::AddToSet(parse_add_to_set(value)?),
        "$pull" => Op::Pull(match value {
            Bson::Document(d) => {
                let first = d.keys().next().map(|k| k.as_str()).unwrap_or("");
                if PATH_ACCEPTING_KEYWORDS.contains(&first) {
                    PullSpec::Wrapped(d.clone())
                } else {
                    PullSpec::Object(d.clone())
                }
            }
            Bson::RegularExpression(_) => PullSpec::Regex(value.clone()),
            other => PullSpec::Equality(other.clone()),
        }),
        "$pullAll" => match value {
            Bson::Array(a) => Op::PullAll(a.clone()),
            other => {
                return Err(ServerError::bad_value(format!(
                    "$pullAll requires an array argument but was given a {}",
                    fmt::type_name(other)
                )))
            }
        },
        "$pop" => {
            let n = match integer_to_long(value) {
                Some(n) => n,
                None => {
                    return Err(ServerError::failed_to_parse(format!(
                        "Expected a number in: {}",
                        shown()
                    )))
                }
            };
            if n != 1 && n != -1 {
                return Err(ServerError::failed_to_parse(format!(
                    "$pop expects 1 or -1, found: {}",
                    n
                )));
            }
            Op::Pop { front: n < 0 }
        }
        "$bit" => Op::Bit(parse_bit(value, &shown())?),
        _ => unreachable!("modifier list checked by the caller"),
    })
}

fn parse_current_date(value: &Bson) -> ServerResult<Op> {
    match value {
        Bson::Boolean(_) => Ok(Op::CurrentDate { timestamp: false }),
        Bson::Document(d) => {
            let mut timestamp = None;
            for (k, v) in d {
                if k != "$type" {
                    return Err(ServerError::bad_value(format!(
                        "Unrecognized $currentDate option: {}",
                        k
                    )));
                }
                timestamp =
                    match v {
                        Bson::String(s) if s == "date" => Some(false),
                        Bson::String(s) if s == "timestamp" => Some(true),
                        _ => return Err(ServerError::bad_value(
                            "The '$type' string field is required to be 'date' or 'timestamp': \
                             {$currentDate: {field : {$type: 'date'}}}",
                        )),
                    };
            }
            match timestamp {
                Some(timestamp) => Ok(Op::CurrentDate { timestamp }),
                None => Err(ServerError::bad_value(
                    "The '$type' string field is required to be 'date' or 'timestamp': \
                     {$currentDate: {field : {$type: 'date'}}}",
                )),
            }
        }
        _ => Err(ServerError::bad_value(format!(
            "{} is not valid type for $currentDate. Please use a boolean ('true') or a $type \
             expression ({{$type: 'timestamp/date'}}).",
            fmt::type_name(value)
        ))),
    }
}

fn parse_push(value: &Bson) -> ServerResult<PushSpec> {
    let mut spec = PushSpec {
        values: Vec::new(),
        position: i64::MAX,
        slice: i64::MAX,
        sort: None,
    };
    let clauses = match value {
        Bson::Document(d) if d.contains_key("$each") => d,
        other => {
            spec.values.push(other.clone());
            return Ok(spec);
        }
    };
    for (name, _) in clauses {
        if !["$each", "$slice", "$sort", "$position"].contains(&name.as_str()) {
            return Err(ServerError::bad_value(format!(
                "Unrecognized clause in $push: {}",
                name
            )));
        }
    }
    match clauses.get("$each") {
        Some(Bson::Array(a)) => spec.values = a.clone(),
        Some(other) => {
            return Err(ServerError::bad_value(format!(
                "The argument to $each in $push must be an array but it was of type: {}",
                fmt::type_name(other)
            )))
        }
        None => unreachable!(),
    }
    if let Some(s) = clauses.get("$slice") {
        spec.slice = integer_to_long(s).ok_or_else(|| {
            ServerError::bad_value(format!(
                "The value for $slice must be an integer value but was given type: {}",
                fmt::type_name(s)
            ))
        })?;
    }
    if let Some(s) = clauses.get("$sort") {
        spec.sort =
            Some(match s {
                Bson::Document(pattern) => {
                    if pattern.is_empty() {
                        return Err(ServerError::bad_value(
                            "The $sort pattern is empty when it should be a set of fields.",
                        ));
                    }
                    for (field, dir) in pattern {
                        if field.split('.').any(|p| p.is_empty()) {
                            return Err(ServerError::bad_value(format!(
                                "The $sort field is a dotted field but has an empty part: {}",
                                field
                            )));
                        }
                        let d = if is_number(dir) {
                            super::ops::as_f64(dir)
                        } else {
                            0.0
                        };
                        if d != 1.0 && d != -1.0 {
                            return Err(ServerError::bad_value(
                                "The $sort element value must be either 1 or -1",
                            ));
                        }
                    }
                    SortSpec::Pattern(pattern.clone())
                }
                n if is_number(n) => {
                    let d = super::ops::as_f64(n);
                    if d != 1.0 && d != -1.0 {
                        return Err(ServerError::bad_value(
                            "The $sort element value must be either 1 or -1",
                        ));
                    }
                    SortSpec::Whole(d < 0.0)
                }
                _ => return Err(ServerError::bad_value(
                    "The $sort is invalid: use 1/-1 to sort the whole element, or {field:1/-1} \
                     to sort embedded fields",
                )),
            });
    }
    if let Some(p) = clauses.get("$position") {
        spec.position = integer_to_long(p).ok_or_else(|| {
            ServerError::bad_value(format!(
                "The value for $position must be an integer value, not of type: {}",
                fmt::type_name(p)
            ))
        })?;
    }
    Ok(spec)
}

fn parse_add_to_set(value: &Bson) -> ServerResult<Vec<Bson>> {
    let mut elements = match value {
        Bson::Document(d) if d.keys().next().map(|k| k == "$each").unwrap_or(false) => {
            let each = d.get("$each").expect("first key");
            let arr = match each {
                Bson::Array(a) => a.clone(),
                other => {
                    return Err(ServerError::type_mismatch(format!(
                        "The argument to $each in $addToSet must be an array but it was of type {}",
                        fmt::type_name(other)
                    )))
                }
            };
            if d.len() > 1 {
                return Err(ServerError::bad_value(format!(
                    "Found unexpected fields after $each in $addToSet: {}",
                    fmt::document(d)
                )));
            }
            arr
        }
        other => vec![other.clone()],
    };
    // deduplicate(): keep the first of equal values.
    let mut unique: Vec<Bson> = Vec::with_capacity(elements.len());
    for e in elements.drain(..) {
        if !unique.iter().any(|u| super::values_equal(u, &e)) {
            unique.push(e);
        }
    }
    Ok(unique)
}

fn parse_bit(value: &Bson, shown: &str) -> ServerResult<Vec<(BitOp, Bson)>> {
    let d = match value {
        Bson::Document(d) => d,
        other => {
            return Err(ServerError::bad_value(format!(
                "The $bit modifier is not compatible with a {}. You must pass in an embedded \
                 document: {{$bit: {{field: {{and/or/xor: #}}}}",
                fmt::type_name(other)
            )))
        }
    };
    if d.is_empty() {
        return Err(ServerError::bad_value(format!(
            "You must pass in at least one bitwise operation. The format is: \
             {{$bit: {{field: {{and/or/xor: #}}}}: {}",
            shown
        )));
    }
    let mut ops = Vec::new();
    for (k, v) in d {
        let op = match k.as_str() {
            "and" => BitOp::And,
            "or" => BitOp::Or,
            "xor" => BitOp::Xor,
            _ => {
                return Err(ServerError::bad_value(format!(
                    "The $bit modifier only supports 'and', 'or', and 'xor', not '{}' which is an \
                     unknown operator: {{{}}}",
                    k,
                    fmt::element(k, v)
                )))
            }
        };
        if !matches!(v, Bson::Int32(_) | Bson::Int64(_)) {
            return Err(ServerError::bad_value(format!(
                "The $bit modifier field must be an Integer(32/64 bit); a '{}' is not supported \
                 here: {{{}}}",
                fmt::type_name(v),
                fmt::element(k, v)
            )));
        }
        ops.push((op, v.clone()));
    }
    Ok(ops)
}
