//! What a verification compares: every namespace a link carries, as the pair (source server and
//! namespace, destination server and namespace as the link names it there). Both directions of
//! a pair, and several links over the same namespaces, give one pair; renamed namespaces
//! (`a.* -> b.*`) are compared under their two names.

use super::catch_up::LinkEnds;
use super::ranges::Side;
use super::VerifyError;
use crate::oplog::NsPattern;
use crate::replicate::topology::{LinkSpec, ServerSpec};
use crate::store::is_replicable_ns;
use crate::store::namespaces::{is_system_collection, SERVER_DATABASES};
use mongodb::Client;
use std::collections::{BTreeSet, HashMap};

/// One pair of namespaces to compare.
pub struct Target {
    /// `server/db.coll<->server/db.coll`, the two ends in name order.
    pub key: String,
    pub a: Side,
    pub b: Side,
    /// Where its progress is kept: the destination of the first link that joins them.
    pub home: Client,
    /// The links between the two servers that carry these namespaces, either way: the ones
    /// that must have caught up before a difference counts.
    pub links: Vec<LinkEnds>,
}

/// The namespaces of `pattern` on a server (sorted; system and server namespaces left out).
async fn namespaces(
    client: &Client,
    server: &str,
    pattern: &NsPattern,
) -> Result<Vec<String>, VerifyError> {
    let failed = |e: mongodb::error::Error| VerifyError::Read {
        server: server.to_string(),
        ns: pattern.to_string(),
        error: e.to_string(),
    };
    let dbs: Vec<String> = match pattern {
        NsPattern::Exact { db, coll } => return Ok(vec![format!("{db}.{coll}")]),
        NsPattern::Database(db) => vec![db.clone()],
        NsPattern::All => client
            .list_database_names()
            .await
            .map_err(failed)?
            .into_iter()
            .filter(|d| !SERVER_DATABASES.contains(&d.as_str()))
            .collect(),
    };
    let mut out = Vec::new();
    for db in dbs {
        let names = client
            .database(&db)
            .list_collection_names()
            .await
            .map_err(failed)?;
        out.extend(
            names
                .into_iter()
                .filter(|c| !is_system_collection(c))
                .map(|c| format!("{db}.{c}")),
        );
    }
    out.sort();
    Ok(out)
}

/// Checks a `--ns` argument: a replicated `db.coll` some link carries.
fn check_ns(ns: &str, links: &[LinkSpec]) -> Result<(), VerifyError> {
    let bad = |why: String| VerifyError::Usage(format!("--ns {ns:?}: {why}"));
    match NsPattern::parse(ns) {
        Ok(NsPattern::Exact { .. }) => {}
        _ => return Err(bad("expected a namespace db.collection".into())),
    }
    if !is_replicable_ns(ns) {
        return Err(bad(
            "mmm does not replicate it (the admin, config, local and __mmm databases and system.* collections are never replicated, so never verified)".into(),
        ));
    }
    if !links
        .iter()
        .any(|l| l.src_ns.matches(ns) || l.dst_ns.matches(ns))
    {
        return Err(bad("no link carries this namespace".into()));
    }
    Ok(())
}

/// Every pair to compare, in key order; only those naming `only` at either end when given.
pub async fn targets(
    servers: &[ServerSpec],
    links: &[LinkSpec],
    clients: &HashMap<String, Client>,
    only: Option<&str>,
) -> Result<Vec<Target>, VerifyError> {
    if let Some(ns) = only {
        check_ns(ns, links)?;
    }
    let id_of = |name: &str| {
        servers
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.id.clone())
            .unwrap_or_default()
    };
    let ends = |l: &LinkSpec| LinkEnds {
        spec: l.clone(),
        src: clients[&l.src].clone(),
        dst: clients[&l.dst].clone(),
        dst_id: id_of(&l.dst),
    };
    let mut out: Vec<Target> = Vec::new();
    for link in links {
        // The source's names, and the destination's mapped back to the source's.
        let mut names = BTreeSet::new();
        match only {
            Some(ns) => {
                if link.src_ns.matches(ns) {
                    names.insert(ns.to_string());
                } else if let Some(back) = link.dst_ns.rename(ns, &link.src_ns) {
                    names.insert(back);
                }
            }
            None => {
                let src = &clients[&link.src];
                names.extend(namespaces(src, &link.src, &link.src_ns).await?);
                let dst = &clients[&link.dst];
                for ns in namespaces(dst, &link.dst, &link.dst_ns).await? {
                    names.extend(link.dst_ns.rename(&ns, &link.src_ns));
                }
            }
        }
        for ns in names.into_iter().filter(|n| is_replicable_ns(n)) {
            let Some(dst_ns) = link.src_ns.rename(&ns, &link.dst_ns) else {
                continue;
            };
            let (first, second) = (
                format!("{}/{ns}", link.src),
                format!("{}/{dst_ns}", link.dst),
            );
            let key = if first <= second {
                format!("{first}<->{second}")
            } else {
                format!("{second}<->{first}")
            };
            if out.iter().any(|t| t.key == key) {
                continue;
            }
            let side = |server: &str, ns: &str| Side {
                server: server.to_string(),
                client: clients[server].clone(),
                ns: ns.to_string(),
                skip: Vec::new(),
            };
            let (a, b) = (side(&link.src, &ns), side(&link.dst, &dst_ns));
            // Every link between the two servers over these namespaces, either way.
            let joined: Vec<&LinkSpec> = links
                .iter()
                .filter(|l| {
                    (l.src == a.server && l.dst == b.server && l.src_ns.matches(&a.ns))
                        || (l.src == b.server && l.dst == a.server && l.src_ns.matches(&b.ns))
                })
                .collect();
            let mut t = Target {
                key,
                home: clients[&link.dst].clone(),
                links: joined.iter().map(|l| ends(l)).collect(),
                a,
                b,
            };
            if joined.iter().any(|l| l.tag_documents) {
                // Field mode writes `__mmm` into the copies only.
                t.a.skip.push(crate::store::MMM_DB.to_string());
                t.b.skip.push(crate::store::MMM_DB.to_string());
            }
            out.push(t);
        }
    }
    out.sort_by(|x, y| x.key.cmp(&y.key));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(src: &str, dst: &str) -> LinkSpec {
        LinkSpec::parse(src, dst, "iud").unwrap()
    }

    #[test]
    fn a_namespace_argument_must_be_carried_and_replicable() {
        let links = [link("a/app.*", "b/copy.*")];
        assert!(check_ns("app.c", &links).is_ok());
        assert!(check_ns("copy.c", &links).is_ok(), "the destination's name");
        for bad in [
            "other.c",
            "app",
            "app.system.users",
            "admin.c",
            "__mmm.verify",
            "",
        ] {
            assert!(check_ns(bad, &links).is_err(), "{bad}");
        }
    }
}
