//! Query filter parsing and matching (find/update/delete filters, `$match`).
//!
//! The structure follows mongod's `MatchExpressionParser`: a filter is an implicit `$and` of
//! path predicates and logical operators; a path predicate is true when *any* value the path
//! yields (see [`super::path::matcher_values`]) satisfies it, and `$ne`/`$nin`/`$not`/
//! `$exists: false` are negations of the whole path predicate.

use super::compare::{
    as_i64_trunc, canonical_type, compare_values, is_nan, is_number, true_value, type_code,
};
use super::path::{matcher_values, matcher_values_with_offsets, split_path, LeafArrays};
use crate::server::error::{ServerError, ServerResult};
use crate::server::error_codes::ErrorCode;
use bson::{Bson, Document, RawDocument};
use std::cmp::Ordering;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Lt,
    Lte,
    Gt,
    Gte,
}

/// A compiled regular expression with its original pattern/options (a stored BSON regex
/// matches only an identical regex).
#[derive(Debug, Clone)]
pub struct RegexPred {
    pub pattern: String,
    pub options: String,
    re: regex::Regex,
}

impl RegexPred {
    pub fn new(pattern: &str, options: &str) -> ServerResult<RegexPred> {
        if pattern.contains('\0') {
            return Err(ServerError::bad_value(
                "Regular expression cannot contain an embedded null byte",
            ));
        }
        let mut builder = regex::RegexBuilder::new(pattern);
        for c in options.chars() {
            match c {
                'i' => builder.case_insensitive(true),
                'm' => builder.multi_line(true),
                's' => builder.dot_matches_new_line(true),
                'x' => builder.ignore_whitespace(true),
                // PCRE's UTF-8 mode; Rust regexes are always Unicode-aware.
                'u' => &mut builder,
                other => {
                    return Err(ServerError::location(
                        51108,
                        format!("invalid flag in regex options: {other}"),
                    ))
                }
            };
        }
        let re = builder.build().map_err(|e| {
            ServerError::location(51091, format!("Regular expression is invalid: {e}"))
        })?;
        Ok(RegexPred {
            pattern: pattern.to_string(),
            options: options.to_string(),
            re,
        })
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.re.is_match(s)
    }

    fn matches(&self, v: Option<&Bson>) -> bool {
        match v {
            Some(Bson::String(s)) | Some(Bson::Symbol(s)) => self.re.is_match(s),
            Some(Bson::RegularExpression(r)) => {
                r.pattern == self.pattern && r.options == self.options
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum TypeSel {
    Code(i32),
    Number,
}

/// A predicate on one value produced by a path (`None` = missing).
#[derive(Debug, Clone)]
pub(crate) enum Pred {
    Cmp(CmpOp, Bson),
    Regex(Box<RegexPred>),
    In {
        values: Vec<Bson>,
        regexes: Vec<RegexPred>,
        has_null: bool,
    },
    Exists,
    Type(Vec<TypeSel>),
    Mod(i64, i64),
    Size(i64),
    ElemMatchObject(Box<Node>),
    ElemMatchValue(Vec<Node>),
}

#[derive(Debug, Clone)]
pub(crate) enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Nor(Vec<Node>),
    Not(Box<Node>),
    Path {
        path: Vec<String>,
        pred: Pred,
    },
    Const(bool),
    /// `$expr`: an aggregation expression over the whole document, true when its value is.
    Expr(Box<super::expr::Expr>),
}

fn compare_match(op: CmpOp, v: Option<&Bson>, rhs: &Bson) -> bool {
    // A missing value behaves like undefined (canonical type 0).
    let ect = v.map(canonical_type).unwrap_or(0);
    let rct = canonical_type(rhs);
    if ect != rct {
        // null and undefined/missing are treated the same
        if ect + rct == 5 {
            return matches!(op, CmpOp::Eq | CmpOp::Lte | CmpOp::Gte);
        }
        if matches!(rhs, Bson::MaxKey | Bson::MinKey) {
            return match op {
                CmpOp::Lt | CmpOp::Lte => matches!(rhs, Bson::MaxKey),
                CmpOp::Gt | CmpOp::Gte => matches!(rhs, Bson::MinKey),
                CmpOp::Eq => false,
            };
        }
        return false;
    }
    let Some(v) = v else { return false };
    if op != CmpOp::Eq {
        let (ln, rn) = (is_nan(v), is_nan(rhs));
        if ln || rn {
            return matches!(op, CmpOp::Lte | CmpOp::Gte) && ln && rn;
        }
    }
    let c = compare_values(v, rhs);
    match op {
        CmpOp::Eq => c == Ordering::Equal,
        CmpOp::Lt => c == Ordering::Less,
        CmpOp::Lte => c != Ordering::Greater,
        CmpOp::Gt => c == Ordering::Greater,
        CmpOp::Gte => c != Ordering::Less,
    }
}

fn array_as_document(arr: &[Bson]) -> Document {
    let mut d = Document::new();
    for (i, v) in arr.iter().enumerate() {
        d.insert(i.to_string(), v.clone());
    }
    d
}

impl Pred {
    /// For `$elemMatch` predicates satisfied by `v`: the index of the first matching element.
    fn elem_match_index(&self, v: Option<&Bson>) -> Option<usize> {
        let Some(Bson::Array(arr)) = v else {
            return None;
        };
        match self {
            Pred::ElemMatchObject(node) => arr.iter().position(|e| match e {
                Bson::Document(d) => node.matches_doc(d),
                Bson::Array(inner) => node.matches_doc(&array_as_document(inner)),
                _ => false,
            }),
            Pred::ElemMatchValue(nodes) => arr
                .iter()
                .position(|e| nodes.iter().all(|n| n.matches_value(Some(e)))),
            _ => None,
        }
    }

    fn leaf_arrays(&self) -> LeafArrays {
        match self {
            Pred::Size(_) | Pred::ElemMatchObject(_) | Pred::ElemMatchValue(_) => LeafArrays::Keep,
            _ => LeafArrays::Expand,
        }
    }

    pub(crate) fn matches_single(&self, v: Option<&Bson>) -> bool {
        match self {
            Pred::Cmp(op, rhs) => compare_match(*op, v, rhs),
            Pred::Regex(r) => r.matches(v),
            Pred::In {
                values,
                regexes,
                has_null,
            } => {
                if *has_null && matches!(v, None | Some(Bson::Undefined)) {
                    return true;
                }
                let Some(v) = v else { return false };
                // `values` is sorted by `compare_values` (see `parse_in`), the order in which
                // equality is decided, so a binary search finds any equal value.
                values.binary_search_by(|x| compare_values(x, v)).is_ok()
                    || regexes.iter().any(|r| r.matches(Some(v)))
            }
            Pred::Exists => v.is_some(),
            Pred::Type(sels) => match v {
                None => false,
                Some(v) => sels.iter().any(|s| match s {
                    TypeSel::Number => is_number(v),
                    TypeSel::Code(c) => type_code(v) == *c,
                }),
            },
            Pred::Mod(divisor, remainder) => match v {
                Some(n) if is_number(n) => {
                    let dividend = match n {
                        Bson::Double(_) | Bson::Decimal128(_) => {
                            let d = super::compare::as_f64(n).unwrap_or(f64::NAN);
                            if !d.is_finite()
                                || d.trunc() >= 9_223_372_036_854_775_808.0
                                || d.trunc() < -9_223_372_036_854_775_808.0
                            {
                                return false;
                            }
                            d.trunc() as i64
                        }
                        _ => as_i64_trunc(n).unwrap_or(0),
                    };
                    dividend.wrapping_rem(*divisor) == *remainder
                }
                _ => false,
            },
            Pred::Size(n) => matches!(v, Some(Bson::Array(a)) if a.len() as i64 == *n),
            Pred::ElemMatchObject(node) => match v {
                Some(Bson::Array(arr)) => arr.iter().any(|e| match e {
                    Bson::Document(d) => node.matches_doc(d),
                    Bson::Array(inner) => node.matches_doc(&array_as_document(inner)),
                    _ => false,
                }),
                _ => false,
            },
            Pred::ElemMatchValue(nodes) => match v {
                Some(Bson::Array(arr)) => arr
                    .iter()
                    .any(|e| nodes.iter().all(|n| n.matches_value(Some(e)))),
                _ => false,
            },
        }
    }
}

impl Node {
    pub(crate) fn matches_doc(&self, doc: &Document) -> bool {
        match self {
            Node::And(c) => c.iter().all(|n| n.matches_doc(doc)),
            Node::Or(c) => c.iter().any(|n| n.matches_doc(doc)),
            Node::Nor(c) => !c.iter().any(|n| n.matches_doc(doc)),
            Node::Not(n) => !n.matches_doc(doc),
            Node::Const(b) => *b,
            Node::Expr(e) => e.eval(doc).ok().flatten().is_some_and(|v| true_value(&v)),
            Node::Path { path, pred } => {
                let mut vals = Vec::new();
                matcher_values(doc, path, pred.leaf_arrays(), &mut vals);
                vals.into_iter().any(|v| pred.matches_single(v))
            }
        }
    }

    /// `matches_doc` that also records mongod's `MatchDetails::elemMatchKey` (the positional
    /// `$` update operator's matched array index) into `key`: an `$and` passes the details to
    /// each child in turn (a later child overwrites the key), `$or`/`$nor`/`$not` pass none, a
    /// path predicate records the array offset of the first value that satisfies it, and
    /// `$elemMatch` the index of the first matching element (overridden by the path's own array
    /// offset, as `PathMatchExpression::matches` does).
    fn matches_recording(&self, doc: &Document, key: &mut Option<usize>) -> bool {
        match self {
            Node::And(c) => {
                for n in c {
                    if !n.matches_recording(doc, key) {
                        *key = None;
                        return false;
                    }
                }
                true
            }
            Node::Path { path, pred } => {
                let mut vals = Vec::new();
                matcher_values_with_offsets(doc, path, pred.leaf_arrays(), &mut vals);
                for (v, offset) in vals {
                    if !pred.matches_single(v) {
                        continue;
                    }
                    if let Some(i) = pred.elem_match_index(v) {
                        *key = Some(i);
                    }
                    if let Some(o) = offset {
                        *key = Some(o);
                    }
                    return true;
                }
                false
            }
            other => other.matches_doc(doc),
        }
    }

    /// The terms of a top-level conjunction (the node itself when it is not one).
    fn conditions(&self) -> &[Node] {
        match self {
            Node::And(children) => children,
            other => std::slice::from_ref(other),
        }
    }

    fn collect_top_level_fields(&self, out: &mut Vec<String>) {
        match self {
            Node::And(c) | Node::Or(c) | Node::Nor(c) => {
                c.iter().for_each(|n| n.collect_top_level_fields(out))
            }
            Node::Not(n) => n.collect_top_level_fields(out),
            Node::Path { path, .. } => {
                if let Some(first) = path.first() {
                    if !out.contains(first) {
                        out.push(first.clone());
                    }
                }
            }
            Node::Const(_) | Node::Expr(_) => {}
        }
    }

    /// Whether the node reads the whole document (`$expr`).
    fn reads_whole_document(&self) -> bool {
        match self {
            Node::And(c) | Node::Or(c) | Node::Nor(c) => c.iter().any(Node::reads_whole_document),
            Node::Not(n) => n.reads_whole_document(),
            Node::Expr(_) => true,
            Node::Path { .. } | Node::Const(_) => false,
        }
    }

    /// Evaluate against a single value (children of a value-form `$elemMatch`).
    pub(crate) fn matches_value(&self, v: Option<&Bson>) -> bool {
        match self {
            Node::And(c) => c.iter().all(|n| n.matches_value(v)),
            Node::Or(c) => c.iter().any(|n| n.matches_value(v)),
            Node::Nor(c) => !c.iter().any(|n| n.matches_value(v)),
            Node::Not(n) => !n.matches_value(v),
            Node::Const(b) => *b,
            Node::Expr(_) => false, // only at the top level (refused when parsed elsewhere)
            Node::Path { pred, .. } => pred.matches_single(v),
        }
    }
}

/// A parsed query filter.
#[derive(Debug, Clone)]
pub struct Matcher {
    root: Node,
    /// Per condition of the top-level `$and`: the top-level fields it reads. A stored document
    /// is matched condition by condition, decoding each field only when a condition first needs
    /// it (an oplog scan by `ts` and `op` never decodes the entries' `o` unless those pass).
    fields: Vec<Vec<String>>,
    /// `$expr` somewhere: stored documents are decoded whole.
    whole_document: bool,
}

impl Matcher {
    /// Parse and validate a filter document.
    pub fn new(filter: &Document) -> ServerResult<Matcher> {
        let root = parse_filter(filter, true)?;
        let fields = root
            .conditions()
            .iter()
            .map(|n| {
                let mut out = Vec::new();
                n.collect_top_level_fields(&mut out);
                out
            })
            .collect();
        let whole_document = root.reads_whole_document();
        Ok(Matcher {
            root,
            fields,
            whole_document,
        })
    }

    pub fn matches(&self, doc: &Document) -> bool {
        self.root.matches_doc(doc)
    }

    /// [`Matcher::matches`] on a stored document, decoding only the fields the filter reads.
    /// Every predicate looks only at the values under its path's first component, and a
    /// conjunction does not depend on the order of its terms, so the answer is the same as on
    /// the whole document.
    pub fn matches_raw(&self, raw: &RawDocument) -> bool {
        if self.whole_document {
            return self.matches(&Document::try_from(raw).unwrap_or_default());
        }
        let mut partial = Document::new();
        let mut decoded: Vec<&str> = Vec::new();
        for (condition, fields) in self.root.conditions().iter().zip(&self.fields) {
            let missing: Vec<&str> = fields
                .iter()
                .map(String::as_str)
                .filter(|f| !decoded.contains(f))
                .collect();
            if !missing.is_empty() {
                for element in raw.iter() {
                    let Ok((key, value)) = element else {
                        // Malformed bytes: let the full decoder decide what the document is.
                        return self.matches(&Document::try_from(raw).unwrap_or_default());
                    };
                    if !missing.contains(&key) {
                        continue;
                    }
                    match Bson::try_from(value.to_raw_bson()) {
                        Ok(v) => {
                            partial.insert(key, v);
                        }
                        Err(_) => {
                            return self.matches(&Document::try_from(raw).unwrap_or_default())
                        }
                    }
                }
                decoded.extend(missing);
            }
            if !condition.matches_doc(&partial) {
                return false;
            }
        }
        true
    }

    /// The array index the positional update operator `$` stands for in `doc` (mongod's
    /// `MatchDetails::elemMatchKey`): `None` when the filter does not match or matched without
    /// traversing an array.
    pub fn positional_match(&self, doc: &Document) -> Option<usize> {
        let mut key = None;
        if self.root.matches_recording(doc, &mut key) {
            key
        } else {
            None
        }
    }

    /// The single top-level field name the filter is over (`parseTopLevelFieldName` in
    /// expression_with_placeholder.cpp): the first component of each path, through logical
    /// operators. `Ok(None)` when there is none; `Err((a, b))` when two differ.
    pub fn top_level_field(&self) -> Result<Option<String>, (String, String)> {
        fn walk(node: &Node) -> Result<Option<String>, (String, String)> {
            match node {
                Node::Path { path, .. } => Ok(path.first().cloned()),
                Node::And(c) | Node::Or(c) | Node::Nor(c) => {
                    let mut found: Option<String> = None;
                    for n in c {
                        let sub = walk(n)?;
                        match (&found, sub) {
                            (None, sub) => found = sub,
                            (Some(a), Some(b)) if *a != b => return Err((a.clone(), b)),
                            _ => {}
                        }
                    }
                    Ok(found)
                }
                Node::Not(n) => walk(n),
                Node::Const(_) | Node::Expr(_) => Ok(None),
            }
        }
        walk(&self.root)
    }

    /// The value `_id` is pinned to by equality (`{_id: v}`, `{_id: {$eq: v}}`, possibly
    /// inside a top-level `$and`). A point lookup must still run [`Matcher::matches`] on the
    /// document it finds (other conditions may exist).
    pub fn id_equality(&self) -> Option<&Bson> {
        fn find(node: &Node) -> Option<&Bson> {
            match node {
                Node::And(children) => children.iter().find_map(find),
                Node::Path {
                    path,
                    pred: Pred::Cmp(CmpOp::Eq, v),
                } if path.len() == 1 && path[0] == "_id" => match v {
                    // an array or null `_id` operand also matches other shapes: no point lookup
                    Bson::Array(_) | Bson::Null => None,
                    v => Some(v),
                },
                _ => None,
            }
        }
        find(&self.root)
    }

    /// The `_id` values a filter confines matches to, when it is a top-level `_id` equality or
    /// `$in` of plain values (what mongod answers from the `_id` index): every match has one
    /// of them as `_id`. The filter must still be applied to what they find.
    pub fn id_points(&self) -> Option<Vec<&Bson>> {
        fn plain(v: &Bson) -> bool {
            !matches!(v, Bson::Array(_) | Bson::Null | Bson::Undefined)
        }
        fn find(node: &Node) -> Option<Vec<&Bson>> {
            match node {
                Node::And(children) => children.iter().find_map(find),
                Node::Path { path, pred } if path.len() == 1 && path[0] == "_id" => match pred {
                    Pred::Cmp(CmpOp::Eq, v) if plain(v) => Some(vec![v]),
                    Pred::In {
                        values,
                        regexes,
                        has_null: false,
                    } if regexes.is_empty() && values.iter().all(plain) => {
                        Some(values.iter().collect())
                    }
                    _ => None,
                },
                _ => None,
            }
        }
        find(&self.root)
    }
}

// ---------------------------------------------------------------------------------------
// Parsing

const PATHLESS_OPERATORS: &[&str] = &[
    "and",
    "or",
    "nor",
    "comment",
    "expr",
    "where",
    "text",
    "jsonSchema",
    "alwaysTrue",
    "alwaysFalse",
    "id",
    "ref",
    "db",
    "sampleRate",
];

const FIELD_OPERATORS: &[&str] = &[
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
    "$size",
    "$mod",
    "$regex",
    "$options",
    "$elemMatch",
    "$all",
    "$not",
    "$within",
    "$geoWithin",
    "$geoIntersects",
    "$near",
    "$nearSphere",
    "$bitsAllSet",
    "$bitsAllClear",
    "$bitsAnySet",
    "$bitsAnyClear",
];

fn is_dbref_doc(d: &Document, allow_incomplete: bool) -> bool {
    let has = |k: &str| d.contains_key(k);
    if allow_incomplete {
        has("$ref") || has("$id") || has("$db")
    } else {
        has("$ref") && has("$id")
    }
}

/// `{ $lt: 5 }` style operator object (first field `$`-prefixed, not a DBRef).
fn is_expression_document(v: &Bson, allow_incomplete_dbref: bool) -> bool {
    match v {
        Bson::Document(d) => match d.keys().next() {
            Some(k) if k.starts_with('$') => !is_dbref_doc(d, allow_incomplete_dbref),
            _ => false,
        },
        _ => false,
    }
}

fn leaf(name: &str, pred: Pred) -> Node {
    Node::Path {
        path: if name.is_empty() {
            Vec::new()
        } else {
            split_path(name)
        },
        pred,
    }
}

fn parse_filter(filter: &Document, top_level: bool) -> ServerResult<Node> {
    let mut children = Vec::new();
    for (key, value) in filter {
        if let Some(op) = key.strip_prefix('$') {
            if let Some(node) = parse_pathless(op, key, value, top_level)? {
                children.push(node);
            }
            continue;
        }
        if is_expression_document(value, false) {
            let Bson::Document(sub) = value else {
                unreachable!()
            };
            parse_sub(key, sub, &mut children)?;
            continue;
        }
        if let Bson::RegularExpression(r) = value {
            children.push(leaf(
                key,
                Pred::Regex(Box::new(RegexPred::new(&r.pattern, &r.options)?)),
            ));
            continue;
        }
        children.push(leaf(key, equality(value)?));
    }
    Ok(Node::And(children))
}

fn equality(value: &Bson) -> ServerResult<Pred> {
    if matches!(value, Bson::Undefined) {
        return Err(ServerError::bad_value("cannot compare to undefined"));
    }
    Ok(Pred::Cmp(CmpOp::Eq, value.clone()))
}

fn parse_pathless(
    op: &str,
    key: &str,
    value: &Bson,
    top_level: bool,
) -> ServerResult<Option<Node>> {
    match op {
        "and" | "or" | "nor" => {
            let Bson::Array(items) = value else {
                return Err(ServerError::bad_value(format!("{key} must be an array")));
            };
            if items.is_empty() {
                return Err(ServerError::bad_value(
                    "$and/$or/$nor must be a nonempty array",
                ));
            }
            let mut subs = Vec::new();
            for item in items {
                let Bson::Document(d) = item else {
                    return Err(ServerError::bad_value(
                        "$or/$and/$nor entries need to be full objects",
                    ));
                };
                subs.push(parse_filter(d, top_level)?);
            }
            Ok(Some(match op {
                "and" => Node::And(subs),
                "or" => Node::Or(subs),
                _ => Node::Nor(subs),
            }))
        }
        "comment" => Ok(None),
        "alwaysTrue" | "alwaysFalse" => {
            let n = match value {
                Bson::Double(d) if d.fract() != 0.0 || d.is_nan() => None,
                v => as_i64_trunc(v),
            };
            if n != Some(1) {
                return Err(ServerError::failed_to_parse(format!(
                    "{key} must be an integer value of 1"
                )));
            }
            Ok(Some(Node::Const(op == "alwaysTrue")))
        }
        "id" | "ref" | "db" => Ok(Some(leaf(key, equality(value)?))),
        "expr" => {
            if !top_level {
                return Err(ServerError::bad_value(
                    "$expr can only be applied to the top-level document",
                ));
            }
            Ok(Some(Node::Expr(Box::new(super::expr::Expr::parse(value)?))))
        }
        "where" => Err(ServerError::bad_value(
            "$where is not allowed in this context",
        )),
        "text" => Err(ServerError::new(
            ErrorCode::IndexNotFound,
            "text index required for $text query",
        )),
        "jsonSchema" => Err(ServerError::not_implemented("$jsonSchema is not supported")),
        "sampleRate" => Err(ServerError::not_implemented("$sampleRate is not supported")),
        _ => Err(ServerError::bad_value(format!(
            "unknown top level operator: {key}"
        ))),
    }
}

/// Parse `{ $gt: 1, $lt: 5, ... }` for field `name`, appending to `out`.
fn parse_sub(name: &str, sub: &Document, out: &mut Vec<Node>) -> ServerResult<()> {
    for (op, e) in sub {
        if let Some(node) = parse_sub_field(sub, name, op, e)? {
            out.push(node);
        }
    }
    Ok(())
}

fn cmp_op(name: &str, op: CmpOp, e: &Bson) -> ServerResult<Node> {
    if op != CmpOp::Eq && matches!(e, Bson::RegularExpression(_)) {
        return Err(ServerError::bad_value(format!(
            "Can't have RegEx as arg to predicate over field '{name}'."
        )));
    }
    if matches!(e, Bson::Undefined) {
        return Err(ServerError::bad_value("cannot compare to undefined"));
    }
    Ok(leaf(name, Pred::Cmp(op, e.clone())))
}

fn parse_in(op: &str, e: &Bson) -> ServerResult<Pred> {
    let Bson::Array(items) = e else {
        return Err(ServerError::bad_value(format!("{op} needs an array")));
    };
    let mut values = Vec::new();
    let mut regexes = Vec::new();
    let mut has_null = false;
    for item in items {
        if is_expression_document(item, false) {
            return Err(ServerError::bad_value(format!("cannot nest $ under {op}")));
        }
        match item {
            Bson::RegularExpression(r) => regexes.push(RegexPred::new(&r.pattern, &r.options)?),
            Bson::Undefined => {
                return Err(ServerError::bad_value(
                    "InMatchExpression equality cannot be undefined",
                ))
            }
            v => {
                if matches!(v, Bson::Null) {
                    has_null = true;
                }
                values.push(v.clone());
            }
        }
    }
    // Sorted once so that each document costs a binary search, not a scan of the whole list
    // (a `$in` of 20,000 values over 100,000 documents would otherwise take seconds).
    values.sort_by(compare_values);
    Ok(Pred::In {
        values,
        regexes,
        has_null,
    })
}

fn parse_size(e: &Bson) -> ServerResult<i64> {
    let size = match e {
        Bson::Int32(i) => *i as i64,
        Bson::Int64(l) => {
            if *l < i32::MIN as i64 || *l > i32::MAX as i64 {
                return Err(ServerError::bad_value(
                    "$size must be representable as a 32-bit integer",
                ));
            }
            *l
        }
        Bson::Double(d) => {
            if d.fract() != 0.0 || !d.is_finite() {
                return Err(ServerError::bad_value("$size must be a whole number"));
            }
            *d as i64
        }
        _ => return Err(ServerError::bad_value("$size needs a number")),
    };
    if size < 0 {
        return Err(ServerError::bad_value("$size may not be negative"));
    }
    Ok(size)
}

fn type_alias(alias: &str) -> Option<TypeSel> {
    let code = match alias {
        "double" => 1,
        "string" => 2,
        "object" => 3,
        "array" => 4,
        "binData" => 5,
        "undefined" => 6,
        "objectId" => 7,
        "bool" => 8,
        "date" => 9,
        "null" => 10,
        "regex" => 11,
        "dbPointer" => 12,
        "javascript" => 13,
        "symbol" => 14,
        "javascriptWithScope" => 15,
        "int" => 16,
        "timestamp" => 17,
        "long" => 18,
        "decimal" => 19,
        "minKey" => -1,
        "maxKey" => 127,
        "number" => return Some(TypeSel::Number),
        _ => return None,
    };
    Some(TypeSel::Code(code))
}

fn parse_type_element(e: &Bson) -> ServerResult<TypeSel> {
    match e {
        Bson::String(s) => type_alias(s)
            .ok_or_else(|| ServerError::bad_value(format!("Unknown type name alias: {s}"))),
        v if is_number(v) => {
            let f = super::compare::as_f64(v).unwrap_or(f64::NAN);
            if f.fract() != 0.0 || !f.is_finite() {
                return Err(ServerError::bad_value(format!(
                    "Invalid numerical type code: {f}"
                )));
            }
            let code = f as i64;
            if code == -1 || code == 127 || (1..=19).contains(&code) {
                Ok(TypeSel::Code(code as i32))
            } else {
                Err(ServerError::bad_value(format!(
                    "Invalid numerical type code: {code}"
                )))
            }
        }
        _ => Err(ServerError::type_mismatch(
            "type must be represented as a number or a string",
        )),
    }
}

fn parse_type(name: &str, e: &Bson) -> ServerResult<Pred> {
    let sels = match e {
        Bson::Array(items) => items
            .iter()
            .map(parse_type_element)
            .collect::<ServerResult<Vec<_>>>()?,
        other => vec![parse_type_element(other)?],
    };
    if sels.is_empty() {
        return Err(ServerError::failed_to_parse(format!(
            "{name} must match at least one type"
        )));
    }
    Ok(Pred::Type(sels))
}

fn parse_mod(e: &Bson) -> ServerResult<Pred> {
    let Bson::Array(items) = e else {
        return Err(ServerError::bad_value(
            "malformed mod, needs to be an array",
        ));
    };
    if items.len() < 2 {
        return Err(ServerError::bad_value("malformed mod, not enough elements"));
    }
    if !is_number(&items[0]) {
        return Err(ServerError::bad_value(
            "malformed mod, divisor not a number",
        ));
    }
    if !is_number(&items[1]) {
        return Err(ServerError::bad_value(
            "malformed mod, remainder not a number",
        ));
    }
    if items.len() > 2 {
        return Err(ServerError::bad_value("malformed mod, too many elements"));
    }
    let divisor = as_i64_trunc(&items[0]).unwrap_or(0);
    let remainder = as_i64_trunc(&items[1]).unwrap_or(0);
    if divisor == 0 {
        return Err(ServerError::bad_value("divisor cannot be 0"));
    }
    Ok(Pred::Mod(divisor, remainder))
}

fn parse_regex_document(name: &str, context: &Document) -> ServerResult<Node> {
    let mut pattern = String::new();
    let mut options = String::new();
    for (k, e) in context {
        match k.as_str() {
            "$regex" => match e {
                Bson::String(s) => pattern = s.clone(),
                Bson::RegularExpression(r) => {
                    pattern = r.pattern.clone();
                    if !r.options.is_empty() {
                        if !options.is_empty() {
                            return Err(ServerError::location(
                                51074,
                                "options set in both $regex and $options",
                            ));
                        }
                        options = r.options.clone();
                    }
                }
                _ => return Err(ServerError::bad_value("$regex has to be a string")),
            },
            "$options" => {
                let Bson::String(s) = e else {
                    return Err(ServerError::bad_value("$options has to be a string"));
                };
                if !options.is_empty() {
                    return Err(ServerError::location(
                        51075,
                        "options set in both $regex and $options",
                    ));
                }
                options = s.clone();
            }
            _ => {}
        }
    }
    Ok(leaf(
        name,
        Pred::Regex(Box::new(RegexPred::new(&pattern, &options)?)),
    ))
}

fn parse_not(name: &str, e: &Bson) -> ServerResult<Node> {
    match e {
        Bson::RegularExpression(r) => Ok(Node::Not(Box::new(leaf(
            name,
            Pred::Regex(Box::new(RegexPred::new(&r.pattern, &r.options)?)),
        )))),
        Bson::Document(d) => {
            if d.is_empty() {
                return Err(ServerError::bad_value("$not cannot be empty"));
            }
            let mut children = Vec::new();
            parse_sub(name, d, &mut children)?;
            Ok(Node::Not(Box::new(Node::And(children))))
        }
        _ => Err(ServerError::bad_value("$not needs a regex or a document")),
    }
}

fn parse_elem_match(name: &str, e: &Bson) -> ServerResult<Node> {
    let Bson::Document(obj) = e else {
        return Err(ServerError::bad_value("$elemMatch needs an Object"));
    };
    let value_form = is_expression_document(e, true)
        && obj
            .keys()
            .next()
            .map(|k| !PATHLESS_OPERATORS.contains(&&k[1..]))
            .unwrap_or(false);
    if value_form {
        let mut children = Vec::new();
        parse_sub("", obj, &mut children)?;
        return Ok(leaf(name, Pred::ElemMatchValue(children)));
    }
    if obj.contains_key("$where") {
        return Err(ServerError::bad_value(
            "$elemMatch cannot contain $where expression",
        ));
    }
    let sub = parse_filter(obj, false)?;
    Ok(leaf(name, Pred::ElemMatchObject(Box::new(sub))))
}

/// Parse the argument of a find-projection `$elemMatch` into a node whose
/// [`Node::matches_value`] is true for a one-element array holding a matching element.
pub(crate) fn parse_elem_match_projection(arg: &Bson) -> ServerResult<Node> {
    parse_elem_match("", arg)
}

fn parse_all(name: &str, e: &Bson) -> ServerResult<Node> {
    let Bson::Array(items) = e else {
        return Err(ServerError::bad_value("$all needs an array"));
    };
    let first_is_elem_match = matches!(items.first(), Some(Bson::Document(d))
        if d.keys().next().map(String::as_str) == Some("$elemMatch"));
    let mut children = Vec::new();
    if first_is_elem_match {
        for item in items {
            match item {
                Bson::Document(d) if d.keys().next().map(String::as_str) == Some("$elemMatch") => {
                    let (_, inner) = d.iter().next().unwrap();
                    children.push(parse_elem_match(name, inner)?);
                }
                _ => {
                    return Err(ServerError::bad_value(
                        "$all/$elemMatch has to be consistent",
                    ))
                }
            }
        }
        return Ok(Node::And(children));
    }
    for item in items {
        match item {
            Bson::RegularExpression(r) => children.push(leaf(
                name,
                Pred::Regex(Box::new(RegexPred::new(&r.pattern, &r.options)?)),
            )),
            Bson::Document(d)
                if d.keys()
                    .next()
                    .map(|k| FIELD_OPERATORS.contains(&k.as_str()))
                    .unwrap_or(false) =>
            {
                return Err(ServerError::bad_value("no $ expressions in $all"));
            }
            v => children.push(leaf(name, equality(v)?)),
        }
    }
    if children.is_empty() {
        return Ok(Node::Const(false));
    }
    Ok(Node::And(children))
}

fn parse_sub_field(
    context: &Document,
    name: &str,
    op: &str,
    e: &Bson,
) -> ServerResult<Option<Node>> {
    let node = match op {
        "$eq" => cmp_op(name, CmpOp::Eq, e)?,
        "$lt" => cmp_op(name, CmpOp::Lt, e)?,
        "$lte" => cmp_op(name, CmpOp::Lte, e)?,
        "$gt" => cmp_op(name, CmpOp::Gt, e)?,
        "$gte" => cmp_op(name, CmpOp::Gte, e)?,
        "$ne" => {
            if matches!(e, Bson::RegularExpression(_)) {
                return Err(ServerError::bad_value("Can't have regex as arg to $ne."));
            }
            Node::Not(Box::new(cmp_op(name, CmpOp::Eq, e)?))
        }
        "$not" => parse_not(name, e)?,
        "$in" => leaf(name, parse_in(op, e)?),
        "$nin" => Node::Not(Box::new(leaf(name, parse_in(op, e)?))),
        "$size" => leaf(name, Pred::Size(parse_size(e)?)),
        "$exists" => {
            if true_value(e) {
                leaf(name, Pred::Exists)
            } else {
                Node::Not(Box::new(leaf(name, Pred::Exists)))
            }
        }
        "$type" => leaf(name, parse_type(name, e)?),
        "$mod" => leaf(name, parse_mod(e)?),
        "$options" => {
            if context.contains_key("$regex") {
                return Ok(None);
            }
            return Err(ServerError::bad_value("$options needs a $regex"));
        }
        "$regex" => parse_regex_document(name, context)?,
        "$elemMatch" => parse_elem_match(name, e)?,
        "$all" => parse_all(name, e)?,
        "$where" => {
            return Err(ServerError::bad_value(
                "$where cannot be applied to a field",
            ))
        }
        _ if FIELD_OPERATORS.contains(&op) || op.starts_with("$_internal") => {
            return Err(ServerError::not_implemented(format!(
                "{op} is not supported"
            )))
        }
        _ => return Err(ServerError::bad_value(format!("unknown operator: {op}"))),
    };
    Ok(Some(node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, Regex};

    fn m(filter: Document) -> Matcher {
        Matcher::new(&filter).unwrap()
    }

    /// Whether `filter` matches `d`, checking that matching the stored bytes (decoding only
    /// the filter's fields) agrees with matching the whole decoded document.
    fn hit(filter: Document, d: Document) -> bool {
        let matcher = m(filter.clone());
        let whole = matcher.matches(&d);
        let raw = bson::RawDocumentBuf::from_document(&d).unwrap();
        assert_eq!(matcher.matches_raw(&raw), whole, "{filter} on {d}");
        whole
    }

    fn err(filter: Document) -> ServerError {
        Matcher::new(&filter).unwrap_err()
    }

    #[test]
    fn empty_filter_matches_everything() {
        assert!(hit(doc! {}, doc! {"a": 1}));
        assert!(hit(doc! {}, doc! {}));
    }

    #[test]
    fn equality_is_numeric_across_types() {
        assert!(hit(doc! {"a": 1}, doc! {"a": 1.0}));
        assert!(hit(doc! {"a": 1_i64}, doc! {"a": 1}));
        assert!(!hit(doc! {"a": 1}, doc! {"a": "1"}));
        assert!(hit(doc! {"a": {"$eq": 2}}, doc! {"a": 2.0}));
    }

    #[test]
    fn null_matches_null_and_missing_but_not_empty_array() {
        assert!(hit(doc! {"a": null}, doc! {"a": null}));
        assert!(hit(doc! {"a": null}, doc! {"b": 1}));
        assert!(hit(doc! {"a": null}, doc! {"a": Bson::Undefined}));
        assert!(!hit(doc! {"a": null}, doc! {"a": 0}));
        assert!(!hit(doc! {"a": null}, doc! {"a": []}));
        assert!(hit(doc! {"a": null}, doc! {"a": [1, null]}));
        // dotted: an element lacking the field counts as missing
        assert!(hit(doc! {"a.b": null}, doc! {"a": [{"b": 1}, {"c": 1}]}));
        assert!(!hit(doc! {"a.b": null}, doc! {"a": [{"b": 1}]}));
        // an array of scalars yields nothing for a.b
        assert!(!hit(doc! {"a.b": null}, doc! {"a": [1, 2]}));
    }

    #[test]
    fn ne_null_means_exists_and_not_null() {
        let f = doc! {"a": {"$ne": null}};
        assert!(hit(f.clone(), doc! {"a": 0}));
        assert!(!hit(f.clone(), doc! {"a": null}));
        assert!(!hit(f, doc! {}));
    }

    #[test]
    fn equality_against_arrays_matches_elements_or_whole_array() {
        assert!(hit(doc! {"a": 2}, doc! {"a": [1, 2, 3]}));
        assert!(hit(doc! {"a": [1, 2]}, doc! {"a": [1, 2]}));
        assert!(!hit(doc! {"a": [2, 1]}, doc! {"a": [1, 2]}));
        assert!(hit(doc! {"a": [1, 2]}, doc! {"a": [[1, 2], 3]}));
        // nested arrays are not flattened
        assert!(!hit(doc! {"a": 1}, doc! {"a": [[1, 2]]}));
    }

    #[test]
    fn embedded_documents_compare_exactly_including_order() {
        assert!(hit(
            doc! {"a": {"x": 1, "y": 2}},
            doc! {"a": {"x": 1.0, "y": 2}}
        ));
        assert!(!hit(
            doc! {"a": {"x": 1, "y": 2}},
            doc! {"a": {"y": 2, "x": 1}}
        ));
        assert!(!hit(doc! {"a": {"x": 1}}, doc! {"a": {"x": 1, "y": 2}}));
    }

    #[test]
    fn dotted_paths_traverse_documents_and_arrays() {
        assert!(hit(doc! {"a.b": 2}, doc! {"a": {"b": 2}}));
        assert!(hit(doc! {"a.b": 2}, doc! {"a": [{"b": 1}, {"b": 2}]}));
        assert!(hit(doc! {"a.b": 2}, doc! {"a": [{"b": [5, 2]}]}));
        assert!(!hit(doc! {"a.b": 1}, doc! {"a": [[{"b": 1}]]}));
        assert!(hit(doc! {"a.0": "x"}, doc! {"a": ["x", "y"]}));
        assert!(!hit(doc! {"a.1": "x"}, doc! {"a": ["x", "y"]}));
        assert!(hit(doc! {"a.1.b": 2}, doc! {"a": [{"b": 1}, {"b": 2}]}));
        assert!(hit(doc! {"a.0": 5}, doc! {"a": {"0": 5}}));
        assert!(hit(doc! {"a.0.0": 7}, doc! {"a": [[7]]}));
    }

    #[test]
    fn conditions_on_one_array_path_may_use_different_elements() {
        let d = doc! {"a": [{"b": 0}, {"b": 5}]};
        assert!(hit(doc! {"a.b": {"$gt": 1, "$lt": 3}}, d.clone()));
        assert!(!hit(
            doc! {"a": {"$elemMatch": {"b": {"$gt": 1, "$lt": 3}}}},
            d
        ));
        assert!(hit(doc! {"a": {"$gt": 1, "$lt": 3}}, doc! {"a": [0, 5]}));
        assert!(!hit(
            doc! {"a": {"$elemMatch": {"$gt": 1, "$lt": 3}}},
            doc! {"a": [0, 5]}
        ));
        assert!(hit(
            doc! {"a.b": {"$gt": 4, "$lt": 1}},
            doc! {"a": [{"b": 0}, {"b": 5}]}
        ));
    }

    #[test]
    fn comparison_operators_are_type_bracketed() {
        assert!(hit(doc! {"a": {"$gt": 5}}, doc! {"a": 6.5}));
        assert!(!hit(doc! {"a": {"$gt": 5}}, doc! {"a": "z"}));
        assert!(!hit(doc! {"a": {"$lt": 5}}, doc! {"a": null}));
        assert!(hit(doc! {"a": {"$gte": "m"}}, doc! {"a": "z"}));
        assert!(!hit(doc! {"a": {"$gte": "m"}}, doc! {"a": 100}));
        assert!(hit(doc! {"a": {"$lte": 3}}, doc! {"a": 3_i64}));
        assert!(hit(doc! {"a": {"$lt": 3}}, doc! {"a": [10, 1]}));
        assert!(hit(doc! {"a": {"$gt": [1]}}, doc! {"a": [2]}));
        let date = bson::DateTime::from_millis(1000);
        assert!(hit(
            doc! {"a": {"$gt": date}},
            doc! {"a": bson::DateTime::from_millis(2000)}
        ));
        assert!(!hit(doc! {"a": {"$gt": date}}, doc! {"a": 5000}));
    }

    #[test]
    fn gte_null_matches_missing_but_gt_null_matches_nothing() {
        assert!(hit(doc! {"a": {"$gte": null}}, doc! {}));
        assert!(hit(doc! {"a": {"$lte": null}}, doc! {"a": null}));
        assert!(!hit(doc! {"a": {"$gt": null}}, doc! {"a": 1}));
        assert!(!hit(doc! {"a": {"$lt": null}}, doc! {}));
    }

    #[test]
    fn minkey_and_maxkey_operands_cross_brackets() {
        assert!(hit(doc! {"a": {"$gt": Bson::MinKey}}, doc! {"a": "s"}));
        assert!(hit(doc! {"a": {"$lt": Bson::MaxKey}}, doc! {"a": 1}));
        assert!(!hit(doc! {"a": {"$lt": Bson::MinKey}}, doc! {"a": 1}));
    }

    #[test]
    fn nan_only_equals_nan() {
        let nan = f64::NAN;
        assert!(hit(doc! {"a": nan}, doc! {"a": nan}));
        assert!(!hit(doc! {"a": {"$lt": 0}}, doc! {"a": nan}));
        assert!(!hit(doc! {"a": {"$gt": nan}}, doc! {"a": 1}));
        assert!(hit(doc! {"a": {"$gte": nan}}, doc! {"a": nan}));
    }

    #[test]
    fn ne_and_nin_match_missing_and_exclude_array_members() {
        assert!(hit(doc! {"a": {"$ne": 5}}, doc! {}));
        assert!(!hit(doc! {"a": {"$ne": 5}}, doc! {"a": [1, 5]}));
        assert!(hit(doc! {"a": {"$ne": 5}}, doc! {"a": [1, 6]}));
        assert!(hit(doc! {"a": {"$nin": [1, 2]}}, doc! {"a": 3}));
        assert!(!hit(doc! {"a": {"$nin": [1, 2]}}, doc! {"a": [2, 9]}));
        assert!(hit(doc! {"a": {"$nin": [1, 2]}}, doc! {}));
    }

    #[test]
    fn in_finds_any_listed_value_whatever_the_order_and_type() {
        // Listed out of order and of mixed types: every member is found (by BSON comparison,
        // so 7, 7.0 and NumberLong(7) are one value), and nothing else is.
        let mut values: Vec<Bson> = (0..500).rev().map(|i| Bson::Int32(i * 2)).collect();
        values.push(Bson::String("s".into()));
        values.push(Bson::Double(f64::NAN));
        values.push(Bson::Document(doc! {"k": 1}));
        let f = doc! {"a": {"$in": values}};
        assert!(hit(f.clone(), doc! {"a": 998}));
        assert!(hit(f.clone(), doc! {"a": 0}));
        assert!(hit(f.clone(), doc! {"a": 4.0}));
        assert!(hit(f.clone(), doc! {"a": 6i64}));
        assert!(hit(f.clone(), doc! {"a": f64::NAN}));
        assert!(hit(f.clone(), doc! {"a": "s"}));
        assert!(hit(f.clone(), doc! {"a": {"k": 1}}));
        assert!(!hit(f.clone(), doc! {"a": 7}));
        assert!(!hit(f.clone(), doc! {"a": 1000}));
        assert!(!hit(f, doc! {"a": {"k": 2}}));
    }

    #[test]
    fn in_matches_values_regexes_and_null_for_missing() {
        let f = doc! {"a": {"$in": [1, "x", Regex { pattern: "^ab".into(), options: "".into() }]}};
        assert!(hit(f.clone(), doc! {"a": 1.0}));
        assert!(hit(f.clone(), doc! {"a": "abc"}));
        assert!(hit(f.clone(), doc! {"a": ["q", "x"]}));
        assert!(!hit(f.clone(), doc! {"a": "b"}));
        assert!(!hit(f, doc! {}));
        assert!(hit(doc! {"a": {"$in": [null]}}, doc! {}));
        assert!(hit(doc! {"a": {"$in": [[1, 2]]}}, doc! {"a": [1, 2]}));
        assert!(!hit(doc! {"a": {"$in": []}}, doc! {"a": 1}));
        assert_eq!(err(doc! {"a": {"$in": 1}}).message, "$in needs an array");
        assert_eq!(
            err(doc! {"a": {"$nin": {"x": 1}}}).message,
            "$nin needs an array"
        );
        assert_eq!(
            err(doc! {"a": {"$in": [{"$gt": 1}]}}).message,
            "cannot nest $ under $in"
        );
    }

    #[test]
    fn exists_counts_null_as_present() {
        assert!(hit(doc! {"a": {"$exists": true}}, doc! {"a": null}));
        assert!(!hit(doc! {"a": {"$exists": true}}, doc! {}));
        assert!(hit(doc! {"a": {"$exists": false}}, doc! {}));
        assert!(hit(doc! {"a": {"$exists": 0}}, doc! {"b": 1}));
        assert!(hit(
            doc! {"a.b": {"$exists": true}},
            doc! {"a": [{"c": 1}, {"b": 2}]}
        ));
        assert!(!hit(doc! {"a.b": {"$exists": true}}, doc! {"a": [1, 2]}));
        assert!(hit(doc! {"a.b": {"$exists": false}}, doc! {"a": [1, 2]}));
    }

    #[test]
    fn logical_operators() {
        let d = doc! {"a": 1, "b": 2};
        assert!(hit(doc! {"$and": [{"a": 1}, {"b": 2}]}, d.clone()));
        assert!(!hit(doc! {"$and": [{"a": 1}, {"b": 3}]}, d.clone()));
        assert!(hit(doc! {"$or": [{"a": 5}, {"b": 2}]}, d.clone()));
        assert!(!hit(doc! {"$or": [{"a": 5}, {"b": 5}]}, d.clone()));
        assert!(hit(doc! {"$nor": [{"a": 5}, {"b": 5}]}, d.clone()));
        assert!(!hit(doc! {"$nor": [{"a": 1}]}, d));
    }

    #[test]
    fn logical_operator_errors() {
        let e = err(doc! {"$and": []});
        assert_eq!(
            (e.code, e.message.as_str()),
            (2, "$and/$or/$nor must be a nonempty array")
        );
        assert_eq!(err(doc! {"$or": {"a": 1}}).message, "$or must be an array");
        assert_eq!(
            err(doc! {"$nor": [1]}).message,
            "$or/$and/$nor entries need to be full objects"
        );
    }

    #[test]
    fn not_negates_operator_expressions_and_regexes() {
        assert!(hit(doc! {"a": {"$not": {"$gt": 5}}}, doc! {"a": 3}));
        assert!(hit(doc! {"a": {"$not": {"$gt": 5}}}, doc! {}));
        assert!(hit(doc! {"a": {"$not": {"$gt": 5}}}, doc! {"a": "zz"}));
        assert!(!hit(doc! {"a": {"$not": {"$gt": 5}}}, doc! {"a": 9}));
        let re = Regex {
            pattern: "^x".into(),
            options: "".into(),
        };
        assert!(hit(doc! {"a": {"$not": re.clone()}}, doc! {"a": "yx"}));
        assert!(!hit(doc! {"a": {"$not": re}}, doc! {"a": "xy"}));
        assert_eq!(
            err(doc! {"a": {"$not": 5}}).message,
            "$not needs a regex or a document"
        );
        assert_eq!(
            err(doc! {"a": {"$not": {}}}).message,
            "$not cannot be empty"
        );
    }

    #[test]
    fn elem_match_object_form_needs_one_element_to_satisfy_all() {
        let d = doc! {"a": [{"x": 1, "y": 5}, {"x": 2, "y": 1}]};
        assert!(hit(doc! {"a": {"$elemMatch": {"x": 2, "y": 1}}}, d.clone()));
        assert!(!hit(
            doc! {"a": {"$elemMatch": {"x": 2, "y": 5}}},
            d.clone()
        ));
        assert!(hit(
            doc! {"a": {"$elemMatch": {"x": {"$gte": 2}}}},
            d.clone()
        ));
        assert!(hit(
            doc! {"a": {"$elemMatch": {"$or": [{"x": 9}, {"y": 1}]}}},
            d
        ));
        assert!(!hit(
            doc! {"a": {"$elemMatch": {"x": 1}}},
            doc! {"a": {"x": 1}}
        ));
    }

    #[test]
    fn elem_match_value_form() {
        assert!(hit(
            doc! {"a": {"$elemMatch": {"$gte": 80, "$lt": 85}}},
            doc! {"a": [70, 82]}
        ));
        assert!(!hit(
            doc! {"a": {"$elemMatch": {"$gte": 80, "$lt": 85}}},
            doc! {"a": [79, 90]}
        ));
        assert!(hit(
            doc! {"a": {"$elemMatch": {"$not": {"$gt": 1}}}},
            doc! {"a": [5, 0]}
        ));
        assert!(!hit(doc! {"a": {"$elemMatch": {"$gte": 1}}}, doc! {"a": 5}));
        assert!(hit(
            doc! {"a.b": {"$elemMatch": {"$eq": 3}}},
            doc! {"a": [{"b": [1, 3]}]}
        ));
        assert_eq!(
            err(doc! {"a": {"$elemMatch": 1}}).message,
            "$elemMatch needs an Object"
        );
    }

    #[test]
    fn size_matches_exact_array_length() {
        assert!(hit(doc! {"a": {"$size": 2}}, doc! {"a": [1, [2, 3]]}));
        assert!(!hit(doc! {"a": {"$size": 1}}, doc! {"a": [1, 2]}));
        assert!(hit(doc! {"a": {"$size": 0}}, doc! {"a": []}));
        assert!(!hit(doc! {"a": {"$size": 0}}, doc! {}));
        assert!(hit(doc! {"a": {"$size": 2.0}}, doc! {"a": [1, 2]}));
        let e = err(doc! {"a": {"$size": "2"}});
        assert_eq!((e.code, e.message.as_str()), (2, "$size needs a number"));
        assert_eq!(
            err(doc! {"a": {"$size": -1}}).message,
            "$size may not be negative"
        );
        assert_eq!(
            err(doc! {"a": {"$size": 1.5}}).message,
            "$size must be a whole number"
        );
    }

    #[test]
    fn type_by_number_alias_and_number() {
        assert!(hit(doc! {"a": {"$type": "string"}}, doc! {"a": "x"}));
        assert!(hit(doc! {"a": {"$type": 2}}, doc! {"a": "x"}));
        assert!(hit(doc! {"a": {"$type": "number"}}, doc! {"a": 1_i64}));
        assert!(hit(doc! {"a": {"$type": "number"}}, doc! {"a": 1.5}));
        assert!(!hit(doc! {"a": {"$type": "number"}}, doc! {"a": "1"}));
        assert!(hit(
            doc! {"a": {"$type": ["bool", "null"]}},
            doc! {"a": null}
        ));
        assert!(hit(doc! {"a": {"$type": "array"}}, doc! {"a": []}));
        assert!(hit(doc! {"a": {"$type": "int"}}, doc! {"a": ["x", 3]}));
        assert!(!hit(doc! {"a": {"$type": "null"}}, doc! {}));
        assert!(hit(doc! {"a": {"$type": -1}}, doc! {"a": Bson::MinKey}));
        assert_eq!(
            err(doc! {"a": {"$type": "foo"}}).message,
            "Unknown type name alias: foo"
        );
        assert_eq!(
            err(doc! {"a": {"$type": 42}}).message,
            "Invalid numerical type code: 42"
        );
        assert_eq!(err(doc! {"a": {"$type": []}}).code, 9);
    }

    #[test]
    fn regex_operand_forms() {
        let re = Regex {
            pattern: "^ab".into(),
            options: "i".into(),
        };
        assert!(hit(doc! {"a": re.clone()}, doc! {"a": "ABc"}));
        assert!(hit(doc! {"a": re.clone()}, doc! {"a": ["x", "abz"]}));
        assert!(!hit(doc! {"a": re.clone()}, doc! {"a": 5}));
        // a stored regex matches only the identical regex
        assert!(hit(doc! {"a": re.clone()}, doc! {"a": re.clone()}));
        assert!(hit(doc! {"a": {"$regex": "b.d"}}, doc! {"a": "abcd"}));
        assert!(hit(
            doc! {"a": {"$regex": "^B", "$options": "i"}},
            doc! {"a": "bob"}
        ));
        assert!(hit(
            doc! {"a": {"$options": "i", "$regex": "^B"}},
            doc! {"a": "bob"}
        ));
        assert!(hit(
            doc! {"a": {"$regex": "^b.c$", "$options": "s"}},
            doc! {"a": "b\nc"}
        ));
        assert!(hit(
            doc! {"a": {"$regex": "^c", "$options": "m"}},
            doc! {"a": "b\nc"}
        ));
        assert!(hit(
            doc! {"a": {"$regex": "a b # comment", "$options": "x"}},
            doc! {"a": "ab"}
        ));
        assert!(hit(doc! {"a": {"$regex": re.clone()}}, doc! {"a": "AB"}));
        // $eq with a regex is plain equality against a stored regex
        assert!(!hit(doc! {"a": {"$eq": re}}, doc! {"a": "ab"}));
    }

    #[test]
    fn regex_errors() {
        let e = err(doc! {"a": {"$regex": "("}});
        assert_eq!((e.code, e.code_name().as_ref()), (51091, "Location51091"));
        assert!(e.message.starts_with("Regular expression is invalid"));
        assert_eq!(
            err(doc! {"a": {"$options": "i"}}).message,
            "$options needs a $regex"
        );
        assert_eq!(
            err(doc! {"a": {"$regex": 1}}).message,
            "$regex has to be a string"
        );
        assert_eq!(
            err(doc! {"a": {"$regex": "x", "$options": "q"}}).code,
            51108
        );
        let re = Regex {
            pattern: "x".into(),
            options: "i".into(),
        };
        assert_eq!(err(doc! {"a": {"$options": "m", "$regex": re}}).code, 51074);
        let re = Regex {
            pattern: "x".into(),
            options: "".into(),
        };
        assert_eq!(
            err(doc! {"a": {"$gt": re.clone()}}).message,
            "Can't have RegEx as arg to predicate over field 'a'."
        );
        assert_eq!(
            err(doc! {"a": {"$ne": re}}).message,
            "Can't have regex as arg to $ne."
        );
    }

    #[test]
    fn all_requires_every_value() {
        assert!(hit(doc! {"a": {"$all": [1, 2]}}, doc! {"a": [2, 3, 1]}));
        assert!(!hit(doc! {"a": {"$all": [1, 4]}}, doc! {"a": [2, 3, 1]}));
        assert!(hit(doc! {"a": {"$all": [1]}}, doc! {"a": 1}));
        assert!(!hit(doc! {"a": {"$all": []}}, doc! {"a": [1]}));
        assert!(hit(
            doc! {"a": {"$all": [{"$elemMatch": {"x": 1}}, {"$elemMatch": {"x": 2}}]}},
            doc! {"a": [{"x": 1}, {"x": 2}]}
        ));
        assert_eq!(err(doc! {"a": {"$all": 1}}).message, "$all needs an array");
        assert_eq!(
            err(doc! {"a": {"$all": [{"$gt": 1}]}}).message,
            "no $ expressions in $all"
        );
    }

    #[test]
    fn mod_operator() {
        assert!(hit(doc! {"a": {"$mod": [4, 1]}}, doc! {"a": 9}));
        assert!(hit(doc! {"a": {"$mod": [4, 1]}}, doc! {"a": 9.7}));
        assert!(!hit(doc! {"a": {"$mod": [4, 1]}}, doc! {"a": 8}));
        assert!(hit(doc! {"a": {"$mod": [4, -1]}}, doc! {"a": -5}));
        assert!(!hit(doc! {"a": {"$mod": [4, 1]}}, doc! {"a": "9"}));
        assert_eq!(
            err(doc! {"a": {"$mod": [0, 1]}}).message,
            "divisor cannot be 0"
        );
        assert_eq!(
            err(doc! {"a": {"$mod": [1]}}).message,
            "malformed mod, not enough elements"
        );
        assert_eq!(
            err(doc! {"a": {"$mod": 1}}).message,
            "malformed mod, needs to be an array"
        );
    }

    #[test]
    fn unknown_and_unsupported_operators() {
        let e = err(doc! {"a": {"$foo": 1}});
        assert_eq!((e.code, e.message.as_str()), (2, "unknown operator: $foo"));
        let e = err(doc! {"$foo": 1});
        assert_eq!(
            (e.code, e.message.as_str()),
            (2, "unknown top level operator: $foo")
        );
        // $expr: an aggregation expression over the document, only at the top level.
        assert!(hit(doc! {"$expr": {"$eq": ["$a", 1]}}, doc! {"a": 1}));
        assert!(!hit(
            doc! {"$expr": {"$gt": ["$a", "$b"]}},
            doc! {"a": 1, "b": 2}
        ));
        assert!(hit(
            doc! {"x": 1, "$expr": {"$lt": ["$a", "$b"]}},
            doc! {"x": 1, "a": 1, "b": 2}
        ));
        assert_eq!(
            err(doc! {"a": {"$elemMatch": {"$expr": {"$eq": ["$b", 1]}}}}).code,
            2
        );
        assert_eq!(err(doc! {"$where": "true"}).code, 2);
        assert_eq!(err(doc! {"a": {"$near": [0, 0]}}).code, 238);
        // an operator document mixing in a plain field
        assert_eq!(
            err(doc! {"a": {"$gt": 1, "b": 2}}).message,
            "unknown operator: b"
        );
    }

    #[test]
    fn comment_is_ignored_and_always_boolean() {
        assert!(hit(doc! {"$comment": "hi", "a": 1}, doc! {"a": 1}));
        assert!(!hit(doc! {"$alwaysFalse": 1}, doc! {"a": 1}));
        assert!(hit(doc! {"$alwaysTrue": 1}, doc! {}));
    }

    #[test]
    fn dbref_documents_are_values_not_operators() {
        let r = doc! {"$ref": "c", "$id": 1};
        assert!(hit(doc! {"a": r.clone()}, doc! {"a": r}));
    }

    #[test]
    fn id_equality_for_point_lookups() {
        assert_eq!(m(doc! {"_id": 5}).id_equality(), Some(&Bson::Int32(5)));
        assert_eq!(
            m(doc! {"_id": {"$eq": "k"}, "x": 1}).id_equality(),
            Some(&Bson::String("k".into()))
        );
        assert_eq!(
            m(doc! {"$and": [{"x": 1}, {"_id": 7}]}).id_equality(),
            Some(&Bson::Int32(7))
        );
        assert_eq!(m(doc! {"_id": {"$gt": 5}}).id_equality(), None);
        assert_eq!(m(doc! {"$or": [{"_id": 1}]}).id_equality(), None);
        assert_eq!(m(doc! {"_id": {"$ne": 1}}).id_equality(), None);
        assert_eq!(m(doc! {"a._id": 1}).id_equality(), None);
    }

    #[test]
    fn id_points_for_index_lookups() {
        let points = |d: Document| {
            m(d).id_points()
                .map(|v| v.into_iter().cloned().collect::<Vec<_>>())
        };
        assert_eq!(points(doc! {"_id": 5}), Some(vec![Bson::Int32(5)]));
        assert_eq!(
            points(doc! {"_id": {"$in": [1, "a", {"n": 1}]}, "x": 1}),
            Some(vec![
                Bson::Int32(1),
                Bson::String("a".into()),
                Bson::Document(doc! {"n": 1})
            ])
        );
        assert_eq!(points(doc! {"_id": {"$in": []}}), Some(vec![]));
        // Values that also match other shapes, and anything but a conjunction: no lookup.
        assert_eq!(points(doc! {"_id": {"$in": [1, null]}}), None);
        assert_eq!(points(doc! {"_id": {"$in": [1, [2]]}}), None);
        assert_eq!(
            points(
                doc! {"_id": {"$in": [bson::Regex { pattern: "a".into(), options: "".into() }]}}
            ),
            None
        );
        assert_eq!(points(doc! {"$or": [{"_id": 1}]}), None);
        assert_eq!(points(doc! {"_id": {"$nin": [1]}}), None);
        assert_eq!(points(doc! {"_id.a": {"$in": [1]}}), None);
    }

    /// `MatchDetails::elemMatchKey`, the positional `$` operator's matched index.
    #[test]
    fn positional_match_records_the_array_offset() {
        let pos = |f: Document, d: Document| m(f).positional_match(&d);
        // The positional `$` takes the first array index the query matched (MongoDB manual,
        // "$ (update)"): query {a: 1} on {a: [0, 1, 2]} → matched index 1.
        assert_eq!(
            pos(doc! {"_id": 1, "a": 1}, doc! {"_id": 1, "a": [0, 1, 2]}),
            Some(1)
        );
        assert_eq!(
            pos(
                doc! {"_id": 1, "a.k": 2},
                doc! {"_id": 1, "a": [{"k": 1}, {"k": 2}]}
            ),
            Some(1)
        );
        // $elemMatch records the matching element.
        assert_eq!(
            pos(
                doc! {"a": {"$elemMatch": {"k": {"$gt": 1}}}},
                doc! {"a": [{"k": 1}, {"k": 2}, {"k": 3}]}
            ),
            Some(1)
        );
        // The outermost array (path.cpp BSONElementIterator::next).
        assert_eq!(
            pos(doc! {"a.b": 2}, doc! {"a": [{"b": [1]}, {"b": [1, 2]}]}),
            Some(1)
        );
        // No implicit array traversal: no key (whole-array equality, `a.1`, no array at all).
        assert_eq!(pos(doc! {"a": [0, 1]}, doc! {"a": [0, 1]}), None);
        assert_eq!(pos(doc! {"a.1": 1}, doc! {"a": [0, 1]}), None);
        assert_eq!(pos(doc! {"a": 1}, doc! {"a": 1}), None);
        // $or passes no MatchDetails to its children.
        assert_eq!(pos(doc! {"$or": [{"a": 1}]}, doc! {"a": [0, 1]}), None);
        // Not matching at all.
        assert_eq!(pos(doc! {"a": 5}, doc! {"a": [0, 1]}), None);
    }

    #[test]
    fn top_level_field_of_array_filters() {
        assert_eq!(m(doc! {"i.b": 0}).top_level_field(), Ok(Some("i".into())));
        assert_eq!(
            m(doc! {"$or": [{"i": 0}, {"i": 3}]}).top_level_field(),
            Ok(Some("i".into()))
        );
        assert_eq!(
            m(doc! {"i": {"$ne": 0}}).top_level_field(),
            Ok(Some("i".into()))
        );
        assert_eq!(
            m(doc! {"i": 0, "j": 0}).top_level_field(),
            Err(("i".into(), "j".into()))
        );
        assert_eq!(m(doc! {}).top_level_field(), Ok(None));
    }
}
