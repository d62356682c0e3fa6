//! `explain` of find, aggregate, count and distinct (run for their statistics, as
//! `executionStats` does on mongod) and of update, delete and findAndModify (planned, never run:
//! mongod does not write when explaining). The embedded server has no query planner: every plan
//! is a collection scan, and the reply says so in mongod's explain format (explainVersion 1).

use super::ctx::Ctx;
use super::read;
use super::Reply;
use crate::server::error::{ServerError, ServerResult};
use crate::server::ServerInfo;
use bson::{doc, Bson, Document, RawDocumentBuf};
use std::time::Instant;

const VERBOSITIES: &[&str] = &["queryPlanner", "executionStats", "allPlansExecution"];

fn count_batch(reply: &Reply) -> (i64, i64) {
    let (raw, field) = match reply {
        Reply::Raw(r) => (r.clone(), "firstBatch"),
        Reply::Doc(d) => match RawDocumentBuf::from_document(d) {
            Ok(r) => (r, "firstBatch"),
            Err(_) => return (0, 0),
        },
    };
    let cursor = raw.get_document("cursor").ok();
    let n = cursor
        .and_then(|c| c.get_array(field).ok())
        .map(|a| a.into_iter().count() as i64)
        .unwrap_or(0);
    let id = cursor.and_then(|c| c.get_i64("id").ok()).unwrap_or(0);
    (n, id)
}

pub fn explain(ctx: &mut Ctx, info: &ServerInfo, body: &Document) -> ServerResult<Reply> {
    let inner = match body.get("explain") {
        Some(Bson::Document(d)) if !d.is_empty() => d.clone(),
        _ => {
            return Err(ServerError::failed_to_parse(
                "explain command requires a nested object",
            ))
        }
    };
    let verbosity = match body.get("verbosity") {
        None => "allPlansExecution",
        Some(Bson::String(v)) if VERBOSITIES.contains(&v.as_str()) => v.as_str(),
        Some(_) => {
            return Err(ServerError::bad_value(
                "verbosity string must be one of {'queryPlanner', 'executionStats', 'allPlansExecution'}",
            ))
        }
    };
    let cmd = inner.keys().next().cloned().unwrap_or_default();
    let coll = match inner.get(&cmd) {
        Some(Bson::String(c)) => c.clone(),
        _ => String::new(),
    };
    let ns = format!("{}.{coll}", ctx.db);
    let filter = ["filter", "query", "q"]
        .iter()
        .find_map(|k| inner.get_document(k).ok().cloned())
        .unwrap_or_default();
    let mut scan = doc! {"stage": "COLLSCAN"};
    if !filter.is_empty() {
        scan.insert("filter", filter.clone());
    }
    scan.insert("direction", "forward");
    let winning = match cmd.as_str() {
        "find" | "aggregate" | "count" | "distinct" => scan.clone(),
        "update" | "delete" | "findAndModify" | "findandmodify" => {
            let stage = if cmd == "delete" || inner.get_bool("remove").unwrap_or(false) {
                "DELETE"
            } else {
                "UPDATE"
            };
            doc! {"stage": stage, "inputStage": scan.clone()}
        }
        other => {
            return Err(ServerError::location(
                59,
                format!("Explain failed due to unknown command: {other}"),
            ))
        }
    };
    let mut command = inner.clone();
    command.insert("$db", ctx.db.clone());
    let mut reply = doc! {
        "explainVersion": "1",
        "queryPlanner": {
            "namespace": ns,
            "indexFilterSet": false,
            "parsedQuery": filter,
            "maxIndexedOrSolutionsReached": false,
            "maxIndexedAndSolutionsReached": false,
            "maxScansToExplodeReached": false,
            "winningPlan": winning,
            "rejectedPlans": [],
        },
    };
    let runs = matches!(cmd.as_str(), "find" | "aggregate" | "count" | "distinct");
    if verbosity != "queryPlanner" && runs {
        let started = Instant::now();
        let n = run_for_stats(ctx, &cmd, &inner)?;
        let docs = ctx
            .view(&ctx.db.clone(), &coll)
            .map(|c| c.len() as i64)
            .unwrap_or(0);
        let mut stages = scan;
        stages.insert("nReturned", n);
        stages.insert("docsExamined", docs);
        let mut stats = doc! {
            "executionSuccess": true,
            "nReturned": n,
            "executionTimeMillis": started.elapsed().as_millis() as i64,
            "totalKeysExamined": 0i64,
            "totalDocsExamined": docs,
            "executionStages": stages,
        };
        if verbosity == "allPlansExecution" {
            stats.insert("allPlansExecution", Vec::<Bson>::new());
        }
        reply.insert("executionStats", stats);
    }
    let (host, port) = info
        .address
        .rsplit_once(':')
        .unwrap_or((&info.address, "0"));
    reply.insert("command", command);
    reply.insert(
        "serverInfo",
        doc! {
            "host": host, "port": port.parse::<i32>().unwrap_or(0),
            "version": super::VERSION, "gitVersion": "0000000000000000000000000000000000000000",
        },
    );
    Ok(Reply::Doc(reply))
}

/// Runs the read and answers how many documents it returned (its cursor, if any, is closed).
fn run_for_stats(ctx: &mut Ctx, cmd: &str, inner: &Document) -> ServerResult<i64> {
    let mut body = inner.clone();
    match cmd {
        "find" => {
            body.insert("batchSize", i32::MAX);
            body.insert("singleBatch", true);
            Ok(count_batch(&read::find(ctx, &body)?).0)
        }
        "aggregate" => {
            body.insert("cursor", doc! {"batchSize": i32::MAX});
            let (n, id) = count_batch(&read::aggregate(ctx, &body)?);
            ctx.state.cursors.kill(id);
            Ok(n)
        }
        "count" => match read::count(ctx, &body)? {
            Reply::Doc(d) => Ok(d.get_i32("n").map(i64::from).unwrap_or(0)),
            Reply::Raw(_) => Ok(0),
        },
        _ => match read::distinct(ctx, &body)? {
            Reply::Doc(d) => Ok(d.get_array("values").map(|v| v.len() as i64).unwrap_or(0)),
            Reply::Raw(_) => Ok(0),
        },
    }
}
