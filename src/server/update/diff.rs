//! The `$v:2` log builder: a port of the behaviour of MongoDB's `v2_log_builder.cpp`.
//!
//! Modifiers log three kinds of events while the update tree is applied (in the tree's order):
//! an updated field, a created field (with the index of the first path component that did not
//! exist), and a deleted field. They are collected into a tree of nodes and serialized as
//! `{"$v": 2, "diff": {...}}`:
//! * a document level writes `d` (deletes), `u` (updates), `i` (inserts, including whole created
//!   sub-documents), then one `s<field>` per sub-diff, each in the order the events were logged;
//! * an array level writes `a: true` then `u<idx>` / `s<idx>` in numeric index order (created
//!   elements are also `u<idx>`; the log builder never writes `l`).

use super::apply::PathComp;
use bson::{Bson, Document};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq)]
enum InternalKind {
    /// An existing document that is modified: `{d, u, i, s...}`.
    SubDiff,
    /// A document created by the update (only inserts below it).
    DocInsert,
    /// An existing array that is modified: `{a: true, u<i>, s<i>}`.
    Array,
}

#[derive(Debug)]
struct Internal {
    kind: InternalKind,
    /// Children of document levels, in logging order.
    fields: Vec<(String, Node)>,
    /// Children of array levels, by index.
    elems: BTreeMap<usize, Node>,
}

#[derive(Debug)]
enum Node {
    Update(Bson),
    Insert(Bson),
    Delete,
    Internal(Internal),
}

impl Internal {
    fn new(kind: InternalKind) -> Self {
        Internal {
            kind,
            fields: Vec::new(),
            elems: BTreeMap::new(),
        }
    }

    fn child_mut(&mut self, comp: &PathComp) -> Option<&mut Node> {
        if self.kind == InternalKind::Array {
            self.elems.get_mut(&array_index(comp))
        } else {
            self.fields
                .iter_mut()
                .find(|(k, _)| *k == comp.name)
                .map(|(_, n)| n)
        }
    }

    fn add_child(&mut self, comp: &PathComp, node: Node) -> &mut Node {
        if self.kind == InternalKind::Array {
            let idx = array_index(comp);
            self.elems.insert(idx, node);
            self.elems.get_mut(&idx).expect("just inserted")
        } else {
            self.fields.push((comp.name.clone(), node));
            &mut self.fields.last_mut().expect("just pushed").1
        }
    }
}

fn array_index(comp: &PathComp) -> usize {
    comp.index
        .or_else(|| comp.name.parse().ok())
        .expect("array path component is an index")
}

#[derive(Debug)]
pub(crate) struct LogBuilder {
    root: Internal,
    /// While positive, events are dropped: the update array node applies its children without
    /// a log builder when more than one element matches, and logs the result itself.
    muted: u32,
    /// Events reported so far, muted or not: each is a modifier that did not report a no-op.
    events: usize,
}

impl LogBuilder {
    pub(crate) fn new() -> Self {
        LogBuilder {
            root: Internal::new(InternalKind::SubDiff),
            muted: 0,
            events: 0,
        }
    }

    pub(crate) fn mute(&mut self) {
        self.muted += 1;
    }

    pub(crate) fn unmute(&mut self) {
        self.muted -= 1;
    }

    /// How many changes were reported (including while muted).
    pub(crate) fn events(&self) -> usize {
        self.events
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.root.fields.is_empty()
    }

    pub(crate) fn log_updated(&mut self, path: &[PathComp], value: Bson) {
        self.add_at_path(path, Node::Update(value), None);
    }

    pub(crate) fn log_created(&mut self, path: &[PathComp], first_new: usize, value: Bson) {
        self.add_at_path(path, Node::Insert(value), Some(first_new));
    }

    pub(crate) fn log_deleted(&mut self, path: &[PathComp]) {
        self.add_at_path(path, Node::Delete, None);
    }

    fn add_at_path(&mut self, path: &[PathComp], node: Node, first_new: Option<usize>) {
        self.events += 1;
        if self.muted > 0 {
            return;
        }
        let mut cur: &mut Internal = &mut self.root;
        let last = path.len() - 1;
        for (i, comp) in path.iter().enumerate() {
            if i == last {
                cur.add_child(comp, node);
                return;
            }
            let exists = cur.child_mut(comp).is_some();
            if !exists {
                let is_new_path = first_new.is_some_and(|f| i >= f);
                let kind = if path[i + 1].index.is_some() {
                    InternalKind::Array
                } else if is_new_path {
                    InternalKind::DocInsert
                } else {
                    InternalKind::SubDiff
                };
                cur.add_child(comp, Node::Internal(Internal::new(kind)));
            }
            cur = match cur.child_mut(comp) {
                Some(Node::Internal(next)) => next,
                _ => unreachable!("update paths never conflict with a logged leaf"),
            };
        }
    }

    /// `{"$v": 2, "diff": <diff>}`.
    pub(crate) fn serialize(&self) -> Document {
        let mut out = Document::new();
        out.insert("$v", Bson::Int32(2));
        out.insert("diff", write_sub_diff(&self.root));
        out
    }
}

fn write_sub_diff(node: &Internal) -> Document {
    let mut out = Document::new();
    let mut deletes = Document::new();
    let mut updates = Document::new();
    let mut inserts = Document::new();
    for (name, child) in &node.fields {
        match child {
            Node::Delete => {
                deletes.insert(name.clone(), false);
            }
            Node::Update(v) => {
                updates.insert(name.clone(), v.clone());
            }
            Node::Insert(v) => {
                inserts.insert(name.clone(), v.clone());
            }
            Node::Internal(i) if i.kind == InternalKind::DocInsert => {
                inserts.insert(name.clone(), write_doc_insert(i));
            }
            Node::Internal(_) => {}
        }
    }
    if !deletes.is_empty() {
        out.insert("d", deletes);
    }
    if !updates.is_empty() {
        out.insert("u", updates);
    }
    if !inserts.is_empty() {
        out.insert("i", inserts);
    }
    for (name, child) in &node.fields {
        if let Node::Internal(i) = child {
            match i.kind {
                InternalKind::SubDiff => {
                    out.insert(format!("s{}", name), write_sub_diff(i));
                }
                InternalKind::Array => {
                    out.insert(format!("s{}", name), write_array(i));
                }
                InternalKind::DocInsert => {}
            }
        }
    }
    out
}

fn write_doc_insert(node: &Internal) -> Document {
    let mut out = Document::new();
    for (name, child) in &node.fields {
        match child {
            Node::Insert(v) => {
                out.insert(name.clone(), v.clone());
            }
            Node::Internal(i) => {
                out.insert(name.clone(), write_doc_insert(i));
            }
            Node::Update(_) | Node::Delete => unreachable!("only inserts below a created document"),
        }
    }
    out
}

fn write_array(node: &Internal) -> Document {
    let mut out = Document::new();
    out.insert("a", true);
    for (idx, child) in &node.elems {
        match child {
            Node::Update(v) | Node::Insert(v) => {
                out.insert(format!("u{}", idx), v.clone());
            }
            Node::Internal(i) => match i.kind {
                InternalKind::DocInsert => {
                    out.insert(format!("u{}", idx), write_doc_insert(i));
                }
                InternalKind::SubDiff => {
                    out.insert(format!("s{}", idx), write_sub_diff(i));
                }
                InternalKind::Array => {
                    out.insert(format!("s{}", idx), write_array(i));
                }
            },
            Node::Delete => unreachable!("array elements are never deleted by modifiers"),
        }
    }
    out
}
