//! Whether a link has caught up with its source up to a given oplog position, judged from the
//! servers alone (any process can ask, whichever process runs the link): the link's checkpoint
//! on its destination, and the source's oplog entries after it that the link would apply.
//!
//! A difference read at a moment when the source's newest entry was `T` is only lag if some
//! write at or before `T` has not reached the other side yet. Once every link between the two
//! servers owes nothing up to `T`, a document that still differs, and that neither side changed
//! since it was read, differs for another reason.

use super::VerifyError;
use crate::oplog::{NsPattern, OpKind};
use crate::replicate::topology::LinkSpec;
use crate::store::{self, namespaces::SERVER_DATABASES, CHECKPOINTS_NS};
use bson::{doc, Bson, Document, Regex, Timestamp};
use mongodb::Client;
use std::time::{Duration, Instant};

/// A link between the two servers of a verified pair, with clients of both ends.
#[derive(Clone)]
pub struct LinkEnds {
    pub spec: LinkSpec,
    pub src: Client,
    pub dst: Client,
    /// The destination's server id (replicated writes that came from it are echoes).
    pub dst_id: String,
}

/// Where a link stands with respect to a position of its source.
#[derive(Debug, Clone, PartialEq)]
pub enum CatchUp {
    Done,
    Behind,
    /// No checkpoint on the destination: the link has never run.
    NeverRan,
}

fn regex(pattern: String) -> Bson {
    Bson::RegularExpression(Regex {
        pattern,
        options: String::new(),
    })
}

/// How the `ns` of an entry matches a link's source pattern, as a query on that field.
fn ns_condition(pattern: &NsPattern) -> Bson {
    match pattern {
        NsPattern::Exact { db, coll } => Bson::String(format!("{db}.{coll}")),
        NsPattern::Database(db) => regex(format!("^{}\\.", regex::escape(db))),
        NsPattern::All => {
            let internal: Vec<String> = SERVER_DATABASES.iter().map(|d| regex::escape(d)).collect();
            Bson::Document(doc! {"$not": regex(format!("^({})\\.", internal.join("|")))})
        }
    }
}

/// The source's entries in `(after, until]` that `link` would apply (a superset: anything
/// unsure counts as owed, which only makes a wait longer).
pub fn owed_filter(link: &LinkEnds, after: Timestamp, until: Timestamp) -> Document {
    let ns = ns_condition(&link.spec.src_ns);
    let mut kinds = vec![
        Bson::Document(doc! {"op": {"$in": ["i", "u", "d"]}, "ns": ns.clone()}),
        // A local transaction or batched write touching the link's namespaces.
        Bson::Document(doc! {
            "op": "c",
            "o.applyOps": {"$elemMatch": {"ns": ns.clone()}},
            "o.applyOps.0.ns": {"$ne": CHECKPOINTS_NS},
        }),
    ];
    if link.spec.forward {
        // Batches replicated from elsewhere, passed on unless they came from the destination.
        kinds.push(Bson::Document(doc! {
            "op": "c",
            "o.applyOps.0.ns": CHECKPOINTS_NS,
            "o.applyOps.0.o.origin": {"$ne": &link.dst_id},
            "o.applyOps": {"$elemMatch": {"ns": ns.clone()}},
        }));
    }
    if link.spec.ops.contains(OpKind::Command) {
        // DDL entries name `db.$cmd`: those of the link's databases.
        let db_cmd = match &link.spec.src_ns {
            NsPattern::Exact { db, .. } | NsPattern::Database(db) => {
                Bson::String(format!("{db}.$cmd"))
            }
            NsPattern::All => ns_condition(&NsPattern::All),
        };
        kinds.push(Bson::Document(doc! {
            "op": "c",
            "ns": db_cmd,
            "o.applyOps": {"$exists": false},
        }));
    }
    doc! {"ts": {"$gt": after, "$lte": until}, "$or": kinds}
}

/// Where `link` stands with respect to its source's position `until`.
pub async fn catch_up(link: &LinkEnds, until: Timestamp) -> Result<CatchUp, VerifyError> {
    let failed = |e: String| VerifyError::CatchUp {
        link: link.spec.id(),
        error: e,
    };
    let checkpoint = store::checkpoints::read(&link.dst, &link.spec.id())
        .await
        .map_err(|e| failed(e.to_string()))?;
    let Some(checkpoint) = checkpoint else {
        return Ok(CatchUp::NeverRan);
    };
    if checkpoint.initial_sync.is_some() || checkpoint.pending_ddl.is_some() {
        return Ok(CatchUp::Behind);
    }
    if checkpoint.ts >= until {
        return Ok(CatchUp::Done);
    }
    let owed = link
        .src
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(owed_filter(link, checkpoint.ts, until))
        .projection(doc! {"ts": 1})
        .await
        .map_err(|e| failed(e.to_string()))?;
    Ok(if owed.is_some() {
        CatchUp::Behind
    } else {
        CatchUp::Done
    })
}

/// Waits until every link of `links` has caught up with its source's position in `until`
/// (one per source server name), or `timeout` passes. Returns the ids of the links that did not
/// (with why).
pub async fn wait_for_links(
    links: &[LinkEnds],
    until: &[(String, Timestamp)],
    timeout: Duration,
) -> Result<Vec<(String, CatchUp)>, VerifyError> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut lagging = Vec::new();
        for (link, (_, ts)) in links.iter().zip(until) {
            match catch_up(link, *ts).await? {
                CatchUp::Done => {}
                other => lagging.push((link.spec.id(), other)),
            }
        }
        let only_never_ran = lagging.iter().all(|(_, c)| *c == CatchUp::NeverRan);
        if lagging.is_empty() || only_never_ran || Instant::now() >= deadline {
            return Ok(lagging);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_conditions_follow_the_link_pattern() {
        let exact = NsPattern::parse("app.c").unwrap();
        assert_eq!(ns_condition(&exact), Bson::String("app.c".into()));
        let Bson::RegularExpression(r) = ns_condition(&NsPattern::Database("a+b".into())) else {
            panic!()
        };
        assert_eq!(r.pattern, "^a\\+b\\.");
        let Bson::Document(not) = ns_condition(&NsPattern::All) else {
            panic!()
        };
        let Some(Bson::RegularExpression(r)) = not.get("$not") else {
            panic!()
        };
        assert_eq!(r.pattern, "^(admin|config|local|__mmm)\\.");
    }
}
