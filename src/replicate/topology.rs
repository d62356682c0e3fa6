//! Servers, links and the rule that keeps replication loop-free: an op may reach a server by
//! at most one path. Pure logic.

use crate::apply::OnReject;
use crate::converge::PolicyMap;
use crate::oplog::{NsPattern, OpKind, OpSet};
use crate::store::refuse_link_namespace;
use std::collections::HashMap;
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
    /// Conflict policies by destination namespace pattern (last writer wins by default).
    pub policies: PolicyMap,
    /// When the link's position has left its source's oplog: catch up from the source's
    /// `__mmm.meta` (true, the default) or stop, naming the remedy.
    pub repair_on_rollover: bool,
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
            policies: PolicyMap::default(),
            repair_on_rollover: true,
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

/// The namespaces two patterns share, if any. Patterns nest (`*` holds `db.*` holds `db.c`),
/// so the intersection of two is empty or the narrower one.
fn intersect(a: &NsPattern, b: &NsPattern) -> Option<NsPattern> {
    use NsPattern::*;
    match (a, b) {
        (All, x) | (x, All) => Some(x.clone()),
        (Database(x), Database(y)) => (x == y).then(|| a.clone()),
        (Database(d), Exact { db, .. }) => (d == db).then(|| b.clone()),
        (Exact { db, .. }, Database(d)) => (d == db).then(|| a.clone()),
        (Exact { .. }, Exact { .. }) => (a == b).then(|| a.clone()),
    }
}

/// Where the namespaces `p` (within a link end `from`) land at the other end `to`: the same
/// renaming as `NsPattern::rename`, on a pattern. Read backwards (`to` -> `from`) it is the
/// inverse, since both ends of a link have the same shape.
fn carry(p: &NsPattern, to: &NsPattern) -> NsPattern {
    match (to, p) {
        (NsPattern::All, _) => p.clone(),
        (NsPattern::Database(db), NsPattern::Exact { coll, .. }) => NsPattern::Exact {
            db: db.clone(),
            coll: coll.clone(),
        },
        _ => to.clone(),
    }
}

/// One way a write reaches a server: the namespaces of the origin it carries, what they are
/// called there, and the links it took.
#[derive(Debug, Clone)]
struct Arrival<'a> {
    server: &'a str,
    origin_ns: NsPattern,
    ns: NsPattern,
    links: Vec<&'a LinkSpec>,
}

impl Arrival<'_> {
    /// Where the origin's namespaces `p` (within `origin_ns`) are after this path.
    fn forward(&self, p: &NsPattern) -> NsPattern {
        self.links
            .iter()
            .fold(p.clone(), |p, l| carry(&p, &l.dst_ns))
    }

    fn path(&self) -> String {
        let mut names = vec![self.links[0].src.as_str()];
        names.extend(self.links.iter().map(|l| l.dst.as_str()));
        names.join(" -> ")
    }
}

/// Every way writes made on `origin` to `start` travel (local writes over any link out of the
/// origin, replicated ones only over `forward` links, never back to the origin). A second way
/// to the same server and namespace for the same origin namespace is an error: the write would
/// be applied twice, in unpredictable order. Links on different namespaces between the same
/// servers are separate ways for separate writes.
fn arrivals<'a>(
    origin: &'a str,
    start: &NsPattern,
    links: &'a [LinkSpec],
) -> Result<Vec<Arrival<'a>>, TopologyError> {
    let mut arrived: Vec<Arrival<'a>> = Vec::new();
    let mut frontier: Vec<Arrival<'a>> = vec![Arrival {
        server: origin,
        origin_ns: start.clone(),
        ns: start.clone(),
        links: Vec::new(),
    }];
    while let Some(at) = frontier.pop() {
        for link in links.iter().filter(|l| l.src == at.server) {
            if (at.server != origin && !link.forward) || link.dst == origin {
                continue;
            }
            let Some(carried) = intersect(&at.ns, &link.src_ns) else {
                continue;
            };
            let origin_ns = at
                .links
                .iter()
                .rev()
                .fold(carried.clone(), |p, l| carry(&p, &l.src_ns));
            let mut path = at.links.clone();
            path.push(link);
            let next = Arrival {
                server: link.dst.as_str(),
                origin_ns,
                ns: carry(&carried, &link.dst_ns),
                links: path,
            };
            if next.links.len() > links.len() {
                return Err(TopologyError(format!(
                    "writes made on {origin:?} go round a cycle ({}); remove a forward flag",
                    next.path()
                )));
            }
            for first in arrived.iter().filter(|a| a.server == next.server) {
                let Some(shared) = intersect(&first.origin_ns, &next.origin_ns) else {
                    continue;
                };
                if let Some(ns) = intersect(&first.forward(&shared), &next.forward(&shared)) {
                    return Err(TopologyError(format!(
                        "writes made on {origin:?} to {shared} could reach {:?} ({ns} there) by two paths ({} and {}); \
                         that would apply them twice and in unpredictable order. \
                         Remove a link or a forward flag so each server is reached one way",
                        next.server,
                        first.path(),
                        next.path()
                    )));
                }
            }
            arrived.push(next.clone());
            frontier.push(next);
        }
    }
    Ok(arrived)
}

fn check_single_paths(servers: &[ServerSpec], links: &[LinkSpec]) -> Result<(), TopologyError> {
    for origin in servers {
        arrivals(&origin.name, &NsPattern::All, links)?;
    }
    Ok(())
}

/// Whose writes to one namespace reach whom, for `mmm validate`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reach {
    /// The namespace, as the servers writing it call it.
    pub namespace: String,
    /// Every server that writes or receives it, in declaration order.
    pub servers: Vec<String>,
    /// Per server whose writes go anywhere: (server reached, namespace there, all of it or
    /// only part), in declaration order of the servers reached.
    pub rows: Vec<(String, Vec<(String, String, bool)>)>,
    /// A server's writes reach some of the servers that receive this namespace but not others.
    pub warnings: Vec<String>,
}

/// The reach of every namespace a link reads, after the topology passed `validate`.
pub fn reach(servers: &[ServerSpec], links: &[LinkSpec]) -> Result<Vec<Reach>, TopologyError> {
    let mut namespaces: Vec<&NsPattern> = Vec::new();
    for l in links {
        if !namespaces.contains(&&l.src_ns) {
            namespaces.push(&l.src_ns);
        }
    }
    let order = |name: &str| servers.iter().position(|s| s.name == name);
    let mut out = Vec::new();
    for ns in namespaces {
        let mut rows = Vec::new();
        for origin in servers {
            let mut reached: Vec<(String, String, bool)> = Vec::new();
            for a in arrivals(&origin.name, ns, links)? {
                let whole = &a.origin_ns == ns;
                match reached.iter_mut().find(|r| r.0 == a.server) {
                    Some(r) => r.2 |= whole,
                    None => reached.push((a.server.to_string(), a.ns.to_string(), whole)),
                }
            }
            if !reached.is_empty() {
                reached.sort_by_key(|r| order(&r.0));
                rows.push((origin.name.clone(), reached));
            }
        }
        let mut receivers: Vec<&str> = rows
            .iter()
            .flat_map(|(_, r)| r.iter().map(|r| r.0.as_str()))
            .collect();
        receivers.sort_by_key(|s| order(s));
        receivers.dedup();
        let mut involved: Vec<String> = rows.iter().map(|(o, _)| o.clone()).collect();
        involved.extend(receivers.iter().map(|s| s.to_string()));
        involved.sort_by_key(|s| order(s));
        involved.dedup();
        let mut warnings = Vec::new();
        for (origin, reached) in &rows {
            let missing: Vec<&str> = receivers
                .iter()
                .copied()
                .filter(|r| r != origin && !reached.iter().any(|x| x.0 == *r))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let hints: Vec<String> = links
                .iter()
                .filter(|l| {
                    !l.forward
                        && missing.contains(&l.dst.as_str())
                        && reached.iter().any(|x| {
                            x.0 == l.src
                                && NsPattern::parse(&x.1)
                                    .is_ok_and(|p| intersect(&p, &l.src_ns).is_some())
                        })
                })
                .map(|l| l.id())
                .collect();
            let names = |v: Vec<&str>| {
                v.iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let mut w = format!(
                "writes made on {origin:?} to {ns} reach {} but not {}",
                names(reached.iter().map(|x| x.0.as_str()).collect()),
                names(missing)
            );
            if hints.is_empty() {
                w.push_str(": add links if those servers should see them");
            } else {
                w.push_str(&format!(
                    ": set forward: true on {} if they should",
                    hints.join(", ")
                ));
            }
            warnings.push(w);
        }
        out.push(Reach {
            namespace: ns.to_string(),
            servers: involved,
            rows,
            warnings,
        });
    }
    Ok(out)
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
    fn field_stamps_are_kept_where_a_link_into_or_out_of_the_server_says_fields() {
        let fields = crate::converge::PolicyMap::uniform(crate::converge::Policy::Fields {
            deletes: crate::converge::Deletes::Lww,
        });
        let mut into_b = LinkSpec::parse("a/db.*", "b/app.*", "iud").unwrap();
        into_b.policies = fields.clone();
        let links = [into_b, link("b", "a", false)];
        // Into b: b's namespaces as the link names them; out of a: a's, renamed.
        assert!(fields_ns(&links, "b")("app.c") && !fields_ns(&links, "b")("db.c"));
        assert!(fields_ns(&links, "a")("db.c") && !fields_ns(&links, "a")("app.c"));
        // No link under fields: nothing anywhere.
        let plain = [link("a", "b", false), link("b", "a", false)];
        assert!(!fields_ns(&plain, "a")("db.c") && !fields_ns(&plain, "b")("db.c"));
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

    fn ns_link(src: &str, dst: &str, forward: bool) -> LinkSpec {
        let mut l = LinkSpec::parse(src, dst, "iud").unwrap();
        l.forward = forward;
        l
    }

    #[test]
    fn links_on_different_collections_between_the_same_servers_are_not_two_paths() {
        let s = servers(&["a", "b"]);
        let links = [
            ns_link("a/d.c", "b/d.c", false),
            ns_link("a/d.e", "b/d.e", false),
        ];
        assert!(validate(&s, &links).is_ok());
        // and with forwarding through a third server on a collection of its own
        let s = servers(&["a", "b", "c"]);
        let links = [
            ns_link("a/d.c", "b/d.c", false),
            ns_link("a/d.e", "c/d.e", false),
            ns_link("c/d.e", "b/d.e", true),
        ];
        assert!(validate(&s, &links).is_ok());
    }

    #[test]
    fn overlapping_namespaces_by_two_paths_are_rejected() {
        let s = servers(&["a", "b", "c"]);
        let links = [
            ns_link("a/d.*", "b/d.*", false),
            ns_link("a/d.c", "c/d.c", false),
            ns_link("c/d.c", "b/d.c", true),
        ];
        let err = validate(&s, &links).unwrap_err().0;
        assert!(err.contains("two paths") && err.contains("d.c"), "{err}");
        assert!(
            err.contains("a -> b") && err.contains("a -> c -> b"),
            "{err}"
        );
        // a rename to another collection is a different namespace at b: no second path
        let links = [
            ns_link("a/d.*", "b/d.*", false),
            ns_link("a/d.c", "c/d.c", false),
            ns_link("c/d.c", "b/d.x", true),
        ];
        assert!(validate(&s, &links).is_ok());
        // ... but a rename onto the namespace the first path fills is one
        let links = [
            ns_link("a/d.*", "b/e.*", false),
            ns_link("a/d.c", "c/x.y", false),
            ns_link("c/x.y", "b/e.c", true),
        ];
        assert!(validate(&s, &links).unwrap_err().0.contains("two paths"));
    }

    #[test]
    fn reach_shows_a_star_without_forward() {
        let s = servers(&["hub", "x", "y"]);
        let links = [
            link("x", "hub", false),
            link("hub", "x", false),
            link("y", "hub", false),
            link("hub", "y", false),
        ];
        let r = reach(&s, &links).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].namespace, "db.*");
        assert_eq!(r[0].servers, ["hub", "x", "y"]);
        let x = &r[0].rows.iter().find(|row| row.0 == "x").unwrap().1;
        assert_eq!(x, &[("hub".to_string(), "db.*".to_string(), true)]);
        assert_eq!(r[0].warnings.len(), 2, "{:?}", r[0].warnings);
        let w = &r[0].warnings[0];
        assert!(w.contains("\"x\"") && w.contains("but not \"y\""), "{w}");
        assert!(w.contains("set forward: true on hub/db.*->y/db.*"), "{w}");
        let forwarding: Vec<LinkSpec> = links
            .iter()
            .cloned()
            .map(|mut l| {
                l.forward = l.src == "hub";
                l
            })
            .collect();
        assert!(reach(&s, &forwarding).unwrap()[0].warnings.is_empty());
    }
}

/// The namespaces of server `server` (by name) under the `fields` policy, as the links of this
/// process say: a link into the server names them by its policies, a link out of it by the
/// policy of the namespace they become on its destination. Every link that carries a
/// namespace must give it the same policy (field stamps are kept for it on every server it
/// reaches, or nowhere).
pub fn fields_ns(links: &[LinkSpec], server: &str) -> crate::apply::observe::FieldsNs {
    let links: Vec<LinkSpec> = links
        .iter()
        .filter(|l| {
            (l.dst == server || l.src == server)
                && l.policies
                    .iter()
                    .any(|(_, p)| matches!(p, crate::converge::Policy::Fields { .. }))
        })
        .cloned()
        .collect();
    if links.is_empty() {
        return crate::apply::observe::no_fields();
    }
    let server = server.to_string();
    std::sync::Arc::new(move |ns: &str| {
        links.iter().any(|l| {
            (l.dst == server && l.dst_ns.matches(ns) && l.policies.is_fields(ns))
                || (l.src == server
                    && l.src_ns
                        .rename(ns, &l.dst_ns)
                        .is_some_and(|d| l.policies.is_fields(&d)))
        })
    })
}
