//! Servers, links and the rule that keeps replication loop-free: an op may reach a server by
//! at most one path. Pure logic.

use crate::apply::OnReject;
use crate::oplog::{NsPattern, OpKind, OpSet};
use crate::store::refuse_link_namespace;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSpec {
    pub name: String,
    /// Stable identity written into checkpoints as the origin of writes (never reuse one).
    pub id: String,
    pub uri: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LinkSpec {
    pub src: String,
    pub src_ns: NsPattern,
    pub dst: String,
    pub dst_ns: NsPattern,
    pub ops: OpSet,
    /// Also carry writes that reached `src` by replication from elsewhere (hub of a star,
    /// middle of a chain). Never back to their origin.
    pub forward: bool,
    /// With no checkpoint yet: copy the existing source documents first.
    pub initial_sync: bool,
    /// Field mode: write `__mmm: {origin, ts}` into every document the link writes.
    pub tag_documents: bool,
    /// What to do with a write the destination refuses: stop the link, or journal it in
    /// `__mmm.rejected` and go on.
    pub on_reject: OnReject,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopologyError(pub String);

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TopologyError {}

/// Splits `server/db.coll` into the server name and the namespace pattern.
pub fn parse_endpoint(s: &str) -> Result<(String, NsPattern), TopologyError> {
    let (server, ns) = s.split_once('/').ok_or_else(|| {
        TopologyError(format!(
            "{s:?} is not of the form server/db.collection (or server/db.*)"
        ))
    })?;
    if server.is_empty() {
        return Err(TopologyError(format!("{s:?} names no server before '/'")));
    }
    let pattern = NsPattern::parse(ns).map_err(|e| TopologyError(format!("{s:?}: {e}")))?;
    Ok((server.to_string(), pattern))
}

impl LinkSpec {
    pub fn parse(src: &str, dst: &str, ops: &str) -> Result<LinkSpec, TopologyError> {
        let (src, src_ns) = parse_endpoint(src)?;
        let (dst, dst_ns) = parse_endpoint(dst)?;
        let ops = OpSet::parse(ops).map_err(|e| TopologyError(e.to_string()))?;
        if ops.contains(OpKind::Noop) {
            return Err(TopologyError(
                "op 'n' cannot be replicated: links carry inserts, updates, deletes and (opt-in) DDL commands (letters from \"iudc\")".into(),
            ));
        }
        let shape_ok = match (&src_ns, &dst_ns) {
            (NsPattern::Exact { .. }, NsPattern::Exact { .. }) => true,
            (NsPattern::Database(_), NsPattern::Database(_)) => true,
            (NsPattern::All, NsPattern::All) => true,
            _ => false,
        };
        if !shape_ok {
            return Err(TopologyError(format!(
                "{src}/{src_ns} -> {dst}/{dst_ns}: source and destination must have the same shape (db.coll -> db.coll, db.* -> db.*, or * -> *)"
            )));
        }
        for pattern in [&src_ns, &dst_ns] {
            refuse_link_namespace(pattern).map_err(TopologyError)?;
        }
        Ok(LinkSpec {
            src,
            src_ns,
            dst,
            dst_ns,
            ops,
            forward: false,
            initial_sync: false,
            tag_documents: false,
            on_reject: OnReject::Fail,
        })
    }

    /// The link's identity, also the `_id` of its checkpoint on the destination.
    pub fn id(&self) -> String {
        crate::store::link_id(&self.src, &self.src_ns, &self.dst, &self.dst_ns)
    }
}

/// Checks names and the single-path rule; returns the servers by name.
pub fn validate<'a>(
    servers: &'a [ServerSpec],
    links: &[LinkSpec],
) -> Result<HashMap<&'a str, &'a ServerSpec>, TopologyError> {
    let mut by_name = HashMap::new();
    let mut ids = HashMap::new();
    for s in servers {
        if s.name.is_empty() || s.name.contains('/') {
            return Err(TopologyError(format!(
                "server name {:?} must be non-empty and contain no '/'",
                s.name
            )));
        }
        if by_name.insert(s.name.as_str(), s).is_some() {
            return Err(TopologyError(format!(
                "server {:?} is defined twice",
                s.name
            )));
        }
        if let Some(other) = ids.insert(s.id.as_str(), s.name.as_str()) {
            return Err(TopologyError(format!(
                "servers {other:?} and {:?} share the id {:?}; ids must be unique (they mark where writes come from)",
                s.name, s.id
            )));
        }
    }
    let mut seen_ids = HashMap::new();
    for link in links {
        for end in [&link.src, &link.dst] {
            if !by_name.contains_key(end.as_str()) {
                let known: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
                return Err(TopologyError(format!(
                    "link {} names unknown server {end:?} (known: {})",
                    link.id(),
                    known.join(", ")
                )));
            }
        }
        if link.src == link.dst {
            return Err(TopologyError(format!(
                "link {} replicates a server onto itself",
                link.id()
            )));
        }
        if seen_ids.insert(link.id(), ()).is_some() {
            return Err(TopologyError(format!(
                "link {} is declared twice",
                link.id()
            )));
        }
    }
    check_single_paths(servers, links)?;
    Ok(by_name)
}

/// For every origin, follows links (local writes over any link out of the origin, replicated
/// writes only over `forward` links, never back to the origin) and rejects a second arrival.
/// Conservative: links are assumed to share namespaces whatever their patterns.
fn check_single_paths(servers: &[ServerSpec], links: &[LinkSpec]) -> Result<(), TopologyError> {
    for origin in servers {
        let mut arrived: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        // (server, path so far)
        let mut frontier: Vec<(&str, Vec<String>)> =
            vec![(origin.name.as_str(), vec![origin.name.clone()])];
        while let Some((at, path)) = frontier.pop() {
            for link in links.iter().filter(|l| l.src == at) {
                let is_origin = at == origin.name;
                if !is_origin && !link.forward {
                    continue;
                }
                if link.dst == origin.name {
                    continue; // never sent back to its origin
                }
                let mut next = path.clone();
                next.push(link.dst.clone());
                if let Some(first) = arrived.get(link.dst.as_str()) {
                    return Err(TopologyError(format!(
                        "writes made on {:?} could reach {:?} by two paths ({} and {}); that would apply them twice \
                         and in unpredictable order. Remove a link or a forward flag so each server is reached one way",
                        origin.name,
                        link.dst,
                        first.join(" -> "),
                        next.join(" -> ")
                    )));
                }
                arrived.insert(link.dst.as_str(), next.clone());
                frontier.push((link.dst.as_str(), next));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(names: &[&str]) -> Vec<ServerSpec> {
        names
            .iter()
            .map(|n| ServerSpec {
                name: n.to_string(),
                id: format!("id-{n}"),
                uri: format!("mongodb://{n}"),
            })
            .collect()
    }

    fn link(src: &str, dst: &str, forward: bool) -> LinkSpec {
        let mut l = LinkSpec::parse(&format!("{src}/db.*"), &format!("{dst}/db.*"), "iud").unwrap();
        l.forward = forward;
        l
    }

    #[test]
    fn bidirectional_pair_is_valid() {
        let s = servers(&["a", "b"]);
        assert!(validate(&s, &[link("a", "b", false), link("b", "a", false)]).is_ok());
    }

    #[test]
    fn star_with_forwarding_hub_is_valid() {
        let s = servers(&["hub", "x", "y"]);
        let links = [
            link("x", "hub", false),
            link("hub", "x", true),
            link("y", "hub", false),
            link("hub", "y", true),
        ];
        assert!(validate(&s, &links).is_ok());
    }

    #[test]
    fn triangle_with_forwarding_is_rejected_with_both_paths() {
        let s = servers(&["a", "b", "c"]);
        let links = [
            link("a", "b", true),
            link("b", "c", true),
            link("a", "c", true),
        ];
        let err = validate(&s, &links).unwrap_err().0;
        assert!(err.contains("two paths"), "{err}");
        assert!(
            err.contains("a -> b -> c") && err.contains("a -> c"),
            "{err}"
        );
    }

    #[test]
    fn triangle_without_forwarding_is_valid() {
        let s = servers(&["a", "b", "c"]);
        let links = [
            link("a", "b", false),
            link("b", "c", false),
            link("a", "c", false),
        ];
        assert!(validate(&s, &links).is_ok());
    }

    #[test]
    fn unknown_server_and_bad_endpoints_are_explained() {
        let s = servers(&["a", "b"]);
        let err = validate(&s, &[link("a", "z", false)]).unwrap_err().0;
        assert!(err.contains("unknown server \"z\""), "{err}");
        assert!(LinkSpec::parse("a.db.coll", "b/db.coll", "iud")
            .unwrap_err()
            .0
            .contains("server/db.collection"));
        assert!(LinkSpec::parse("a/db.*", "b/db.coll", "iud")
            .unwrap_err()
            .0
            .contains("same shape"));
        assert!(LinkSpec::parse("a/db.c", "b/db.c", "iun")
            .unwrap_err()
            .0
            .contains("cannot be replicated"));
        assert!(LinkSpec::parse("a/db.c", "b/db.c", "iudc").is_ok());
        assert!(LinkSpec::parse("a/db.c", "b/db.c", "iuq").is_err());
    }

    #[test]
    fn links_on_server_namespaces_are_refused() {
        for (src, dst) in [
            ("a/local.oplog.rs", "b/app.oplog"),
            ("a/admin.*", "b/admin.*"),
            ("a/app.c", "b/config.c"),
            ("a/__mmm.checkpoints", "b/app.c"),
            ("a/app.system.views", "b/app.v"),
        ] {
            let err = LinkSpec::parse(src, dst, "iud").unwrap_err().0;
            assert!(err.contains("cannot be replicated"), "{err}");
        }
        assert!(LinkSpec::parse("a/*", "b/*", "iud").is_ok());
    }

    #[test]
    fn duplicate_server_ids_are_rejected() {
        let mut s = servers(&["a", "b"]);
        s[1].id = s[0].id.clone();
        assert!(validate(&s, &[]).unwrap_err().0.contains("share the id"));
    }
}
