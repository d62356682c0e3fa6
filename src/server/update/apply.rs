//! Applying the update tree to a document, mirroring MongoDB's `UpdateObjectNode::apply` /
//! `applyChild` (path taken vs. path to create) and `ModifierNode::apply`
//! (`applyToExistingElement` / `applyToNonexistentElement`), logging each change into the
//! `$v:2` log builder in the order the tree is walked.

use super::diff::LogBuilder;
use super::fmt;
use super::ops::{arith, bit, is_numeric, num_debug, num_identical, perform_push, pull_matches};
use super::ops::{Arith, ArithResult, Modify};
use super::parse::{merge_nodes, ArrayNode, Leaf, ObjectNode, Op, UNode};
use super::{compare_values, values_equal, ArrayFilter, UpdateContext};
use crate::server::error::{ServerError, ServerResult};
use crate::server::error_codes::ErrorCode;
use bson::{Bson, Document};
use std::cmp::Ordering;

/// One component of a path that exists in the document. `index` is set when the component
/// addresses an element of an array (RuntimeUpdatePath `kArrayIndex`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PathComp {
    pub name: String,
    pub index: Option<usize>,
}

/// `pathsupport::kMaxPaddingAllowed`.
const MAX_PADDING: usize = 1_500_000;

/// Unsigned base-10 integer (an array index path component).
pub(crate) fn parse_index(s: &str) -> Option<usize> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn nav<'b>(root: &'b Bson, path: &[PathComp]) -> &'b Bson {
    let mut cur = root;
    for c in path {
        cur = match (cur, c.index) {
            (Bson::Array(a), Some(i)) => &a[i],
            (Bson::Document(d), None) => d.get(&c.name).expect("path taken exists"),
            _ => unreachable!("path taken does not match the document"),
        };
    }
    cur
}

fn nav_mut<'b>(root: &'b mut Bson, path: &[PathComp]) -> &'b mut Bson {
    let mut cur = root;
    for c in path {
        cur = match (cur, c.index) {
            (Bson::Array(a), Some(i)) => &mut a[i],
            (Bson::Document(d), None) => d.get_mut(&c.name).expect("path taken exists"),
            _ => unreachable!("path taken does not match the document"),
        };
    }
    cur
}

/// The child of `el` named `field`, if it exists.
fn child_comp(el: &Bson, field: &str) -> Option<PathComp> {
    match el {
        Bson::Document(d) if d.contains_key(field) => Some(PathComp {
            name: field.to_string(),
            index: None,
        }),
        Bson::Array(a) => parse_index(field)
            .filter(|i| *i < a.len())
            .map(|i| PathComp {
                name: field.to_string(),
                index: Some(i),
            }),
        _ => None,
    }
}

fn dotted(pt: &[PathComp]) -> String {
    pt.iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(".")
}

fn build_nested(parts: &[String], value: Bson) -> Bson {
    match parts.split_first() {
        None => value,
        Some((first, rest)) => {
            let mut d = Document::new();
            d.insert(first.clone(), build_nested(rest, value));
            Bson::Document(d)
        }
    }
}

pub(crate) struct Applier<'a> {
    pub root: Bson,
    pub ctx: &'a UpdateContext,
    pub log: LogBuilder,
    array_filters: &'a [ArrayFilter],
    /// The array index matched by the query (`matchedField`), for the positional `$`.
    matched: Option<&'a str>,
    /// A modifier wrote a value in place even if it did not change (`$currentDate`): mongod's
    /// in-place damages are then not empty and the document counts as modified.
    pub forced_write: bool,
}

impl<'a> Applier<'a> {
    pub(crate) fn new(
        doc: Document,
        ctx: &'a UpdateContext,
        array_filters: &'a [ArrayFilter],
        matched: Option<&'a str>,
    ) -> Self {
        Applier {
            root: Bson::Document(doc),
            ctx,
            log: LogBuilder::new(),
            array_filters,
            matched,
            forced_write: false,
        }
    }

    pub(crate) fn into_document(self) -> (Document, LogBuilder) {
        match self.root {
            Bson::Document(d) => (d, self.log),
            _ => unreachable!(),
        }
    }

    fn root_doc(&self) -> &Document {
        match &self.root {
            Bson::Document(d) => d,
            _ => unreachable!(),
        }
    }

    /// `{_id: ...}` as printed in error messages.
    fn id_str(&self) -> String {
        fmt::id_of(self.root_doc())
    }

    /// `name: value` of the element at `pt` (`BSONElement::toString`).
    fn element_str(&self, pt: &[PathComp]) -> String {
        let name = pt.last().map(|c| c.name.as_str()).unwrap_or("");
        fmt::element(name, nav(&self.root, pt))
    }

    pub(crate) fn apply_tree(&mut self, node: &UNode) -> ServerResult<()> {
        let mut pt = Vec::new();
        let mut ptc = Vec::new();
        self.apply_node(node, &mut pt, &mut ptc)
    }

    fn apply_node(
        &mut self,
        node: &UNode,
        pt: &mut Vec<PathComp>,
        ptc: &mut Vec<String>,
    ) -> ServerResult<()> {
        match node {
            UNode::Object(o) => self.apply_object(o, pt, ptc),
            UNode::Array(a) => self.apply_array(a, pt, ptc),
            UNode::Leaf(leaf) => self.apply_leaf(leaf, pt, ptc),
        }
    }

    /// `UpdateObjectNode::apply`: the children in order, with the positional child applied at
    /// the matched index — merged with the child of that name if there is one, otherwise just
    /// before the first child whose name is (bytewise) greater.
    fn apply_object(
        &mut self,
        node: &ObjectNode,
        pt: &mut Vec<PathComp>,
        ptc: &mut Vec<String>,
    ) -> ServerResult<()> {
        let mut positional = match &node.positional {
            Some(p) => match self.matched {
                Some(m) => Some((p.as_ref(), m)),
                None => {
                    return Err(ServerError::bad_value(
                        "The positional operator did not find the match needed from the query.",
                    ))
                }
            },
            None => None,
        };
        for (field, child) in &node.children {
            if let Some((pos_child, matched)) = positional {
                if field == matched {
                    let mut path: Vec<String> = pt.iter().map(|c| c.name.clone()).collect();
                    path.extend(ptc.iter().cloned());
                    path.push(matched.to_string());
                    let merged = merge_nodes(pos_child, child, &mut path)?;
                    self.apply_child(&merged, field, pt, ptc)?;
                    positional = None;
                    continue;
                }
                if matched.as_bytes() < field.as_bytes() {
                    self.apply_child(pos_child, matched, pt, ptc)?;
                    positional = None;
                }
            }
            self.apply_child(child, field, pt, ptc)?;
        }
        if let Some((pos_child, matched)) = positional {
            self.apply_child(pos_child, matched, pt, ptc)?;
        }
        Ok(())
    }

    /// `UpdateArrayNode::apply`: each element gets the (merged) updates whose filter it
    /// matches. When more than one element matches, the children do not log; the array node
    /// then logs the whole array if several elements changed, or the one changed element.
    fn apply_array(
        &mut self,
        node: &ArrayNode,
        pt: &mut Vec<PathComp>,
        ptc: &[String],
    ) -> ServerResult<()> {
        if !ptc.is_empty() {
            let mut parts: Vec<String> = pt.iter().map(|c| c.name.clone()).collect();
            parts.extend(ptc.iter().cloned());
            return Err(ServerError::bad_value(format!(
                "The path '{}' must exist in the document in order to apply array updates.",
                parts.join(".")
            )));
        }
        let len = match nav(&self.root, pt) {
            Bson::Array(a) => a.len(),
            _ => {
                return Err(ServerError::bad_value(format!(
                    "Cannot apply array updates to non-array element {}",
                    self.element_str(pt)
                )))
            }
        };
        let mut matching: Vec<(usize, Vec<&UNode>)> = Vec::new();
        if let Bson::Array(arr) = nav(&self.root, pt) {
            for (i, element) in arr.iter().enumerate() {
                let mut updates = Vec::new();
                for (id, child) in &node.children {
                    let applies = id.is_empty()
                        || self
                            .array_filters
                            .iter()
                            .find(|f| f.id == *id)
                            .expect("identifiers are checked at parse time")
                            .matches_element(element);
                    if applies {
                        updates.push(child);
                    }
                }
                if !updates.is_empty() {
                    matching.push((i, updates));
                }
            }
        }
        debug_assert!(matching.iter().all(|(i, _)| *i < len));

        let children_log = matching.len() <= 1;
        if !children_log {
            self.log.mute();
        }
        let mut modified: Vec<usize> = Vec::new();
        let mut result = Ok(());
        for (i, updates) in &matching {
            pt.push(PathComp {
                name: i.to_string(),
                index: Some(*i),
            });
            let mut merged_owned: Option<UNode> = None;
            for next in &updates[1..] {
                let mut path: Vec<String> = pt.iter().map(|c| c.name.clone()).collect();
                let left = merged_owned.as_ref().unwrap_or(updates[0]);
                match merge_nodes(left, next, &mut path) {
                    Ok(m) => merged_owned = Some(m),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            if result.is_ok() {
                let child = merged_owned.as_ref().unwrap_or(updates[0]);
                // The child is a no-op unless one of its modifiers reported a change.
                let events_before = self.log.events();
                let mut no_ptc = Vec::new();
                result = self.apply_node(child, pt, &mut no_ptc);
                if result.is_ok() && self.log.events() > events_before {
                    modified.push(*i);
                }
            }
            pt.pop();
            if result.is_err() {
                break;
            }
        }
        if !children_log {
            self.log.unmute();
        }
        result?;
        if !children_log {
            match modified.as_slice() {
                [] => {}
                [i] => {
                    let mut p = pt.to_vec();
                    p.push(PathComp {
                        name: i.to_string(),
                        index: Some(*i),
                    });
                    let v = nav(&self.root, &p).clone();
                    self.log.log_updated(&p, v);
                }
                _ => {
                    let v = nav(&self.root, pt).clone();
                    self.log.log_updated(pt, v);
                }
            }
        }
        Ok(())
    }

    /// `applyChild` in update_object_node.cpp.
    fn apply_child(
        &mut self,
        child: &UNode,
        field: &str,
        pt: &mut Vec<PathComp>,
        ptc: &mut Vec<String>,
    ) -> ServerResult<()> {
        let found = if ptc.is_empty() {
            child_comp(nav(&self.root, pt), field)
        } else {
            None
        };
        match found {
            Some(c) => pt.push(c),
            None => ptc.push(field.to_string()),
        }

        self.apply_node(child, pt, ptc)?;

        if !ptc.is_empty() {
            ptc.pop();
            // A leaf may have created the outer part of 'pathToCreate': move it to the path taken.
            if !ptc.is_empty() && child_comp(nav(&self.root, pt), &ptc[0]).is_some() {
                for part in std::mem::take(ptc) {
                    let c = child_comp(nav(&self.root, pt), &part)
                        .expect("created path exists in full");
                    pt.push(c);
                }
            }
        } else {
            pt.pop();
        }
        Ok(())
    }

    fn apply_leaf(&mut self, leaf: &Leaf, pt: &[PathComp], ptc: &[String]) -> ServerResult<()> {
        match &leaf.op {
            Op::SetOnInsert(_) if !self.ctx.inserting => Ok(()),
            Op::RenameSource => Ok(()),
            Op::RenameDest { from } => self.apply_rename(&leaf.op, from, pt, ptc),
            op if ptc.is_empty() => self.apply_existing(op, pt, None),
            op => self.apply_nonexistent(op, pt, ptc, None),
        }
    }

    /// `checkImmutablePathsNotModified`: the path taken is `_id` or below it (`_id` is never a
    /// strict prefix of the path taken, so the "compare with original" variant does not apply).
    fn immutable_error(&self, pt: &[PathComp]) -> ServerError {
        ServerError::immutable_field(format!(
            "Performing an update on the path '{}' would modify the immutable field '_id'",
            dotted(pt)
        ))
    }

    /// `ModifierNode::applyToExistingElement`.
    fn apply_existing(
        &mut self,
        op: &Op,
        pt: &[PathComp],
        rename_value: Option<&Bson>,
    ) -> ServerResult<()> {
        let touches_id = pt.first().is_some_and(|c| c.name == "_id");
        if let Op::Unset = op {
            if touches_id {
                return Err(self.immutable_error(pt));
            }
            let (last, parent_path) = pt.split_last().expect("non-empty path");
            match nav_mut(&mut self.root, parent_path) {
                Bson::Document(d) => {
                    d.remove(&last.name);
                    self.log.log_deleted(pt);
                }
                Bson::Array(a) => {
                    // $unset of an array element sets it to null.
                    a[last.index.expect("array index")] = Bson::Null;
                    self.log.log_updated(pt, Bson::Null);
                }
                _ => unreachable!(),
            }
            return Ok(());
        }

        let id = self.id_str();
        let path = dotted(pt);
        let field = pt.last().map(|c| c.name.clone()).unwrap_or_default();
        let ctx = self.ctx;
        let elem = nav_mut(&mut self.root, pt);
        let result = update_existing(op, elem, ctx, &path, &field, &id, rename_value)?;
        if result == Modify::NoOp {
            return Ok(());
        }
        if matches!(op, Op::CurrentDate { .. }) {
            self.forced_write = true;
        }
        if touches_id {
            return Err(self.immutable_error(pt));
        }
        match result {
            Modify::NoOp => {}
            Modify::Normal => {
                let v = nav(&self.root, pt).clone();
                self.log.log_updated(pt, v);
            }
            Modify::Append(n) => {
                let arr = match nav(&self.root, pt) {
                    Bson::Array(a) => a.clone(),
                    _ => unreachable!(),
                };
                for (k, v) in arr.iter().enumerate().skip(arr.len() - n) {
                    let mut p = pt.to_vec();
                    p.push(PathComp {
                        name: k.to_string(),
                        index: Some(k),
                    });
                    self.log.log_created(&p, pt.len(), v.clone());
                }
            }
        }
        Ok(())
    }

    /// `ModifierNode::applyToNonexistentElement` (with `pathsupport::createPathAt`).
    fn apply_nonexistent(
        &mut self,
        op: &Op,
        pt: &[PathComp],
        ptc: &[String],
        rename_value: Option<&Bson>,
    ) -> ServerResult<()> {
        if !op.allows_creation() {
            if !matches!(op, Op::Unset) {
                // UpdateLeafNode::checkViability
                let viable = match nav(&self.root, pt) {
                    Bson::Document(_) => true,
                    Bson::Array(_) => parse_index(&ptc[0]).is_some(),
                    _ => false,
                };
                if !viable {
                    return Err(ServerError::path_not_viable(format!(
                        "Cannot use the part ({}) of ({}.{}) to traverse the element ({{{}}})",
                        ptc[0],
                        dotted(pt),
                        ptc.join("."),
                        self.element_str(pt)
                    )));
                }
            }
            return Ok(());
        }

        let value = value_for_new_element(op, self.ctx, rename_value)?;
        let cannot_create = |this: &Self| {
            ServerError::path_not_viable(format!(
                "Cannot create field '{}' in element {{{}}}",
                ptc[0],
                this.element_str(pt)
            ))
        };
        let first_index = match nav(&self.root, pt) {
            Bson::Document(_) => None,
            Bson::Array(a) => match parse_index(&ptc[0]) {
                Some(i) => {
                    if i > a.len() && i - a.len() > MAX_PADDING {
                        return Err(ServerError::new(
                            ErrorCode::CannotBackfillArray,
                            format!("can't backfill more than {} elements", MAX_PADDING),
                        ));
                    }
                    Some(i)
                }
                None => return Err(cannot_create(self)),
            },
            _ => return Err(cannot_create(self)),
        };
        let new_value = build_nested(&ptc[1..], value.clone());
        match nav_mut(&mut self.root, pt) {
            Bson::Document(d) => {
                d.insert(ptc[0].clone(), new_value);
            }
            Bson::Array(a) => {
                let idx = first_index.expect("index");
                while a.len() < idx {
                    a.push(Bson::Null);
                }
                a.push(new_value);
            }
            _ => unreachable!(),
        }

        if pt.first().is_some_and(|c| c.name == "_id") {
            return Err(ServerError::immutable_field(format!(
                "Updating the path '{}' to {} would modify the immutable field '_id'",
                dotted(pt),
                self.element_str(pt)
            )));
        }

        let mut full = pt.to_vec();
        for (i, part) in ptc.iter().enumerate() {
            full.push(PathComp {
                name: part.clone(),
                index: if i == 0 { first_index } else { None },
            });
        }
        self.log.log_created(&full, pt.len(), value);
        Ok(())
    }

    /// `RenameNode::apply`: a `$set` of the source value at the destination (logged first), then
    /// removal of the source (logged as a delete).
    fn apply_rename(
        &mut self,
        op: &Op,
        from: &str,
        pt: &[PathComp],
        ptc: &[String],
    ) -> ServerResult<()> {
        let to = {
            let mut parts: Vec<String> = pt.iter().map(|c| c.name.clone()).collect();
            parts.extend(ptc.iter().cloned());
            parts.join(".")
        };
        // findLongestPrefix on the source path.
        let mut src: Vec<PathComp> = Vec::new();
        {
            let mut cur = &self.root;
            for part in from.split('.') {
                let next = match cur {
                    Bson::Document(d) => match d.get(part) {
                        Some(v) => Some((v, None)),
                        None => return Ok(()),
                    },
                    Bson::Array(a) => match parse_index(part) {
                        Some(i) => match a.get(i) {
                            Some(v) => Some((v, Some(i))),
                            None => return Ok(()),
                        },
                        None => None,
                    },
                    _ => None,
                };
                match next {
                    Some((v, index)) => {
                        src.push(PathComp {
                            name: part.to_string(),
                            index,
                        });
                        cur = v;
                    }
                    None => {
                        return Err(ServerError::path_not_viable(format!(
                            "cannot use the part ({} of {}) to traverse the element ({{{}}})",
                            part,
                            from,
                            self.element_str(&src)
                        )))
                    }
                }
            }
        }
        // Renaming through an array is prohibited, for the source ...
        if let Some(pos) = src.iter().rposition(|c| c.index.is_some()) {
            return Err(ServerError::bad_value(format!(
                "The source field cannot be an array element, '{}' in doc with {} has an array \
                 field called '{}'",
                from,
                self.id_str(),
                src[pos - 1].name
            )));
        }
        // ... and for the destination.
        let dest_array = if !ptc.is_empty() && matches!(nav(&self.root, pt), Bson::Array(_)) {
            pt.last().map(|c| c.name.clone())
        } else {
            pt.iter()
                .rposition(|c| c.index.is_some())
                .map(|pos| pt[pos - 1].name.clone())
        };
        if let Some(name) = dest_array {
            return Err(ServerError::bad_value(format!(
                "The destination field cannot be an array element, '{}' in doc with {} has an \
                 array field called '{}'",
                to,
                self.id_str(),
                name
            )));
        }

        let value = nav(&self.root, &src).clone();
        if ptc.is_empty() {
            self.apply_existing(op, pt, Some(&value))?;
        } else {
            self.apply_nonexistent(op, pt, ptc, Some(&value))?;
        }

        let (last, parent) = src.split_last().expect("non-empty source");
        if let Bson::Document(d) = nav_mut(&mut self.root, parent) {
            d.remove(&last.name);
        }
        if src[0].name == "_id" {
            return Err(ServerError::immutable_field(format!(
                "Unsetting the path '{}' using $rename would modify the immutable field '_id'",
                from
            )));
        }
        self.log.log_deleted(&src);
        Ok(())
    }
}

/// `updateExistingElement` of each modifier.
fn update_existing(
    op: &Op,
    elem: &mut Bson,
    ctx: &UpdateContext,
    path: &str,
    field: &str,
    id: &str,
    rename_value: Option<&Bson>,
) -> ServerResult<Modify> {
    let set_if_changed = |elem: &mut Bson, v: Bson| {
        if super::cmp::identical(elem, &v) {
            Modify::NoOp
        } else {
            *elem = v;
            Modify::Normal
        }
    };
    Ok(match op {
        Op::Set(v) | Op::SetOnInsert(v) => set_if_changed(elem, v.clone()),
        Op::Inc(v) | Op::Mul(v) => {
            let (name, kind) = match op {
                Op::Inc(_) => ("$inc", Arith::Add),
                _ => ("$mul", Arith::Mul),
            };
            if !is_numeric(elem) {
                return Err(ServerError::type_mismatch(format!(
                    "Cannot apply {} to a value of non-numeric type. {{{}}} has the field '{}' of \
                     non-numeric type {}",
                    name,
                    id,
                    field,
                    fmt::type_name(elem)
                )));
            }
            match arith(kind, v, elem) {
                ArithResult::Value(r) => {
                    if num_identical(&r, elem) {
                        Modify::NoOp
                    } else {
                        *elem = r;
                        Modify::Normal
                    }
                }
                ArithResult::Overflow => {
                    return Err(ServerError::bad_value(format!(
                        "Failed to apply {} operations to current value ({}) for document {{{}}}",
                        name,
                        num_debug(elem),
                        id
                    )))
                }
                ArithResult::Decimal => {
                    return Err(ServerError::not_implemented(format!(
                        "{} on Decimal128 values is not supported",
                        name
                    )))
                }
            }
        }
        Op::Min(v) | Op::Max(v) => {
            let c = compare_values(elem, v);
            let replace = match op {
                Op::Min(_) => c == Ordering::Greater,
                _ => c == Ordering::Less,
            };
            if replace {
                *elem = v.clone();
                Modify::Normal
            } else {
                Modify::NoOp
            }
        }
        Op::CurrentDate { timestamp } => {
            // CurrentDateNode::updateExistingElement: always a (normal) modification, even
            // when the value does not change.
            *elem = current_date(*timestamp, ctx);
            Modify::Normal
        }
        Op::Push(spec) => match elem {
            Bson::Array(a) => perform_push(spec, a),
            other => {
                return Err(ServerError::bad_value(format!(
                    "The field '{}' must be an array but is of type {} in document {{{}}}",
                    path,
                    fmt::type_name(other),
                    id
                )))
            }
        },
        Op::AddToSet(values) => match elem {
            Bson::Array(a) => {
                let to_add: Vec<Bson> = values
                    .iter()
                    .filter(|v| !a.iter().any(|e| values_equal(e, v)))
                    .cloned()
                    .collect();
                if to_add.is_empty() {
                    Modify::NoOp
                } else {
                    // MongoDB 7.0 logs the whole array for $addToSet (addtoset_node_test
                    // ApplyNonEach: {$v: 2, diff: {u: {a: [0, 1]}}}).
                    a.extend(to_add);
                    Modify::Normal
                }
            }
            other => {
                return Err(ServerError::bad_value(format!(
                    "Cannot apply $addToSet to non-array field. Field named '{}' has non-array \
                     type {}",
                    field,
                    fmt::type_name(other)
                )))
            }
        },
        Op::Pull(_) | Op::PullAll(_) => match elem {
            Bson::Array(a) => {
                let before = a.len();
                a.retain(|e| match op {
                    Op::Pull(spec) => !pull_matches(spec, e),
                    Op::PullAll(values) => !values.iter().any(|v| values_equal(e, v)),
                    _ => true,
                });
                if a.len() == before {
                    Modify::NoOp
                } else {
                    Modify::Normal
                }
            }
            _ => {
                return Err(ServerError::bad_value(
                    "Cannot apply $pull to a non-array value",
                ))
            }
        },
        Op::Pop { front } => match elem {
            Bson::Array(a) => {
                if a.is_empty() {
                    Modify::NoOp
                } else {
                    if *front {
                        a.remove(0);
                    } else {
                        a.pop();
                    }
                    Modify::Normal
                }
            }
            other => {
                return Err(ServerError::type_mismatch(format!(
                    "Path '{}' contains an element of non-array type '{}'",
                    path,
                    fmt::type_name(other)
                )))
            }
        },
        Op::Bit(bit_ops) => match elem {
            Bson::Int32(_) | Bson::Int64(_) => {
                let r = bit(elem, bit_ops);
                set_if_changed(elem, r)
            }
            other => {
                return Err(ServerError::bad_value(format!(
                    "Cannot apply $bit to a value of non-integral type.{} has the field {} of \
                     non-integer type {}",
                    id,
                    field,
                    fmt::type_name(other)
                )))
            }
        },
        Op::RenameDest { .. } => {
            let v = rename_value.expect("rename source value");
            // SetElementNode: no change when the values compare equal.
            if compare_values(elem, v) == Ordering::Equal {
                Modify::NoOp
            } else {
                *elem = v.clone();
                Modify::Normal
            }
        }
        Op::Unset | Op::RenameSource => unreachable!("handled by the caller"),
    })
}

fn current_date(timestamp: bool, ctx: &UpdateContext) -> Bson {
    if timestamp {
        Bson::Timestamp(ctx.now_ts)
    } else {
        Bson::DateTime(ctx.now)
    }
}

/// `setValueForNewElement` of each creating modifier.
fn value_for_new_element(
    op: &Op,
    ctx: &UpdateContext,
    rename_value: Option<&Bson>,
) -> ServerResult<Bson> {
    Ok(match op {
        Op::Set(v) | Op::SetOnInsert(v) | Op::Inc(v) | Op::Min(v) | Op::Max(v) => v.clone(),
        Op::Mul(v) => match arith(Arith::Mul, v, &Bson::Int32(0)) {
            // The created value is a zero of the multiplier's type.
            ArithResult::Value(r) => r,
            _ => {
                return Err(ServerError::not_implemented(
                    "$mul on Decimal128 values is not supported",
                ))
            }
        },
        Op::CurrentDate { timestamp } => current_date(*timestamp, ctx),
        Op::Push(spec) => {
            let mut arr = Vec::new();
            perform_push(spec, &mut arr);
            Bson::Array(arr)
        }
        Op::AddToSet(values) => Bson::Array(values.clone()),
        Op::Bit(bit_ops) => bit(&Bson::Int32(0), bit_ops),
        Op::RenameDest { .. } => rename_value.expect("rename source value").clone(),
        Op::Unset | Op::Pull(_) | Op::PullAll(_) | Op::Pop { .. } | Op::RenameSource => {
            unreachable!("non-creating modifier")
        }
    })
}
