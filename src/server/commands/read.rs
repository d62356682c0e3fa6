//! find, getMore, killCursors, count, distinct and aggregate.

use super::ctx::Ctx;
use super::util::{as_i64, bool_arg, coll_name, doc_arg, non_negative, pipeline_stages};
use super::Reply;
use crate::server::clock::ts_to_u64;
use crate::server::collection::{Collection, Record};
use crate::server::cursor::{Cursor, Source, DEFAULT_FIRST_BATCH};
use crate::server::cursor_table::CursorLife;
use crate::server::error::{ServerError, ServerResult};
use crate::server::error_codes::ErrorCode;
use crate::server::query::{
    compare_values, run_pipeline, values_equal, Matcher, Projection, SortSpec,
};
use crate::server::state::{State, OPLOG_NS};
use bson::{doc, Bson, Document, RawDocumentBuf};
use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;

/// For oplog queries `{ts: {$gt|$gte: T}}` (possibly inside `$and`), the record id to start after:
/// oplog record ids are timestamps, so the scan starts there instead of at the beginning.
fn oplog_start_after(filter: &Document) -> Option<u64> {
    let mut best: Option<u64> = None;
    let mut consider = |cond: &Bson| {
        if let Bson::Document(ops) = cond {
            for (op, v) in ops {
                if let Bson::Timestamp(ts) = v {
                    let bound = match op.as_str() {
                        "$gt" => Some(ts_to_u64(*ts)),
                        "$gte" => ts_to_u64(*ts).checked_sub(1),
                        _ => None,
                    };
                    if let Some(b) = bound {
                        best = Some(best.map_or(b, |x: u64| x.max(b)));
                    }
                }
            }
        }
    };
    if let Some(cond) = filter.get("ts") {
        consider(cond);
    }
    if let Ok(clauses) = filter.get_array("$and") {
        for clause in clauses {
            if let Some(cond) = clause.as_document().and_then(|d| d.get("ts")) {
                consider(cond);
            }
        }
    }
    best
}

/// Whether a filter needs evaluating per document: not when it is empty, nor when it is only
/// the `ts` bound of an oplog query (the scan already starts there).
fn needs_matcher(filter: &Document, ns: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    if ns == OPLOG_NS && filter.len() == 1 {
        if let Some(Bson::Document(ops)) = filter.get("ts") {
            let only_lower_bound = ops.len() == 1
                && ops.iter().all(|(op, v)| {
                    matches!(op.as_str(), "$gt" | "$gte") && matches!(v, Bson::Timestamp(_))
                });
            return !only_lower_bound;
        }
    }
    true
}

fn matching_docs(c: Option<&Collection>, matcher: &Matcher) -> Vec<Arc<Document>> {
    c.map(|c| {
        c.records
            .values()
            .map(|r| r.document())
            .filter(|d| matcher.matches(d))
            .map(Arc::new)
            .collect()
    })
    .unwrap_or_default()
}

/// Registers the cursor (unless exhausted) and builds `{cursor: {firstBatch, id, ns}}`.
pub fn cursor_reply(
    state: &mut State,
    mut cursor: Cursor,
    first_batch: usize,
    single_batch: bool,
) -> ServerResult<Reply> {
    cursor.majority = state.read_majority;
    let batch = cursor.next_batch(state, first_batch)?;
    let keep = !single_batch && (!batch.exhausted || cursor.is_tailable());
    let ns = cursor.ns.clone();
    let id = if keep { state.cursors.open(cursor)? } else { 0 };
    let reply = batch_reply("firstBatch", batch.docs, id, &ns)?;
    match (state.read_at, reply) {
        // A snapshot read names the time it read at (the session's later reads use it).
        (Some(at), Reply::Raw(raw)) => Ok(Reply::Raw(with_at_cluster_time(raw, at))),
        (_, reply) => Ok(reply),
    }
}

/// `{cursor: {...}}` with `atClusterTime` added to the cursor document.
fn with_at_cluster_time(reply: RawDocumentBuf, at: bson::Timestamp) -> RawDocumentBuf {
    let mut out = RawDocumentBuf::new();
    for element in reply.iter().flatten() {
        match element {
            ("cursor", bson::RawBsonRef::Document(cursor)) => {
                let mut c = RawDocumentBuf::new();
                for (k, v) in cursor.iter().flatten() {
                    c.append_ref(k, v);
                }
                c.append("atClusterTime", at);
                out.append("cursor", c);
            }
            (k, v) => out.append_ref(k, v),
        }
    }
    out
}

pub fn batch_reply(field: &str, docs: bson::RawArrayBuf, id: i64, ns: &str) -> ServerResult<Reply> {
    let mut cursor = RawDocumentBuf::new();
    cursor.append(field, docs);
    cursor.append("id", id);
    cursor.append("ns", ns);
    let mut reply = RawDocumentBuf::new();
    reply.append("cursor", cursor);
    Ok(Reply::Raw(reply))
}

pub fn find(ctx: &mut Ctx, body: &Document) -> ServerResult<Reply> {
    let coll = coll_name(body, "find")?;
    // A filter refers to `let` variables only inside `$expr`.
    let lets = super::vars::command_let(body)?.unwrap_or_default();
    let db = ctx.db.clone();
    let ns = format!("{db}.{coll}");
    let filter = doc_arg(body, "filter")?.cloned().unwrap_or_default();
    let filter = super::vars::substitute_filter(&filter, &lets);
    let matcher = Matcher::new(&filter)?;
    let sort = doc_arg(body, "sort")?
        .filter(|s| !s.is_empty())
        .map(SortSpec::new)
        .transpose()?;
    let projection = doc_arg(body, "projection")?
        .filter(|p| !p.is_empty())
        .map(Projection::new)
        .transpose()?;
    let skip = non_negative(body, "skip")?.unwrap_or(0) as usize;
    let limit = non_negative(body, "limit")?
        .filter(|l| *l > 0)
        .map(|l| l as u64);
    let batch_size = non_negative(body, "batchSize")?.map(|b| b as usize);
    let single_batch = bool_arg(body, "singleBatch", false);
    let tailable = bool_arg(body, "tailable", false);
    let await_data = bool_arg(body, "awaitData", false);
    if await_data && !tailable {
        return Err(ServerError::failed_to_parse(
            "Cannot set 'awaitData' without also setting 'tailable'",
        ));
    }
    let view = ctx.view(&db, &coll);
    let hint = super::hint::resolve(view, body)?;
    let bounds = super::hint::bounds(body, hint.as_ref())?;
    let hinted_index = match &hint {
        Some(super::hint::Hint::Index(key)) if !tailable => Some(key.clone()),
        _ => None,
    };
    let natural = match (&sort, &hint) {
        (Some(s), _) => s.natural(),
        (None, Some(super::hint::Hint::Natural(dir))) => Some(*dir),
        _ => None,
    };
    let source = if tailable {
        if view.is_some_and(|c| c.capped.is_none()) {
            return Err(ServerError::bad_value(format!(
                "error processing query: ns={ns} tailable cursor requested on non capped collection"
            )));
        }
        if sort.is_some() && natural != Some(1) {
            return Err(ServerError::bad_value(
                "cannot use tailable option with a sort other than {$natural: 1}",
            ));
        }
        let after = if ns == OPLOG_NS {
            oplog_start_after(&filter)
        } else {
            None
        };
        Source::Tail {
            after,
            positioned: false,
            matcher: needs_matcher(&filter, &ns).then_some(matcher),
            await_data,
            skip: skip as u64,
        }
    } else if let Some(docs) = view
        .filter(|c| c.has_id_index && simple_collation(body) && bounds.is_none())
        .filter(|_| natural.is_none() && hinted_index.is_none() && ns != OPLOG_NS)
        .filter(|_| sort.as_ref().is_none_or(|s| s.only_id() == Some(true)))
        .and_then(|c| id_lookup(c, &matcher))
    {
        // `_id` equality or `$in`: read from the `_id` index, in its order, as mongod's
        // IXSCAN on `_id` does, instead of scanning the collection.
        Source::Records(docs.into_iter().skip(skip).collect::<VecDeque<_>>())
    } else if (sort.is_none() || natural.is_some()) && skip == 0 && hinted_index.is_none() {
        let records = view.map(|c| c.records.clone()).unwrap_or_default();
        let reverse = natural == Some(-1);
        let bound = (ns == OPLOG_NS)
            .then(|| oplog_start_after(&filter))
            .flatten();
        let next = match bound {
            Some(after) if !reverse => Bound::Excluded(after),
            _ => Bound::Unbounded,
        };
        // A reverse scan keeps the whole filter (the bound only speeds up forward scans).
        let matcher =
            (needs_matcher(&filter, &ns) || (reverse && !filter.is_empty())).then_some(matcher);
        Source::Scan {
            records,
            next,
            reverse,
            matcher,
        }
    } else if let Some((c, ascending)) = view
        .filter(|c| c.has_id_index && simple_collation(body) && bounds.is_none())
        .zip(sort.as_ref().and_then(SortSpec::only_id))
    {
        Source::IdOrder {
            index: c.id_index.clone(),
            records: c.records.clone(),
            next: Bound::Unbounded,
            descending: !ascending,
            matcher: (!filter.is_empty()).then_some(matcher),
            skip: skip as u64,
        }
    } else {
        let mut docs = if natural == Some(-1) {
            let mut d = matching_docs(view, &matcher);
            d.reverse();
            d
        } else {
            matching_docs(view, &matcher)
        };
        if let Some(key) = &hinted_index {
            super::hint::index_order(key, &mut docs);
        }
        if let Some((key, min, max)) = &bounds {
            docs = super::hint::apply_bounds(key, min.as_ref(), max.as_ref(), docs);
        }
        if let Some(s) = sort.as_ref().filter(|_| natural.is_none()) {
            docs.sort_by(|a, b| s.compare(a, b));
        }
        Source::Buffered(docs.into_iter().skip(skip).collect::<VecDeque<_>>())
    };
    let cursor = Cursor {
        ns,
        source,
        projection,
        limit_remaining: limit,
        batch_size,
        life: CursorLife {
            no_timeout: bool_arg(body, "noCursorTimeout", false),
            ..CursorLife::default()
        },
        majority: false,
    };
    let first = batch_size.unwrap_or(DEFAULT_FIRST_BATCH);
    cursor_reply(ctx.state, cursor, first, single_batch)
}

/// The records a filter on `_id` values finds, in `_id` order; `None` when the filter does
/// not confine `_id` to values. Records are matched and sent as stored, never decoded.
fn id_lookup(c: &Collection, matcher: &Matcher) -> Option<Vec<Record>> {
    let points = matcher.id_points()?;
    let mut found = std::collections::BTreeMap::new();
    for id in points {
        if let Some(rid) = c.find_id(id) {
            found.insert(crate::server::query::compare::KeyValue(id.clone()), rid);
        }
    }
    let mut seen = std::collections::HashSet::new();
    Some(
        found
            .into_values()
            .filter(|rid| seen.insert(*rid))
            .filter_map(|rid| c.records.get(&rid).cloned())
            .filter(|rec| matcher.matches_raw(&rec.raw))
            .collect(),
    )
}

/// True unless the command asks for a collation other than the simple one: under the simple
/// collation strings compare by bytes, which is the `_id` index's order.
fn simple_collation(body: &Document) -> bool {
    match body.get("collation") {
        None | Some(Bson::Null) => true,
        Some(Bson::Document(c)) => c.is_empty() || c.get_str("locale") == Ok("simple"),
        Some(_) => false,
    }
}

/// One attempt at a getMore: the reply, and whether the cursor reads at majority.
/// `Ok(None)`: an awaitData cursor has nothing yet (caller waits).
pub fn get_more(
    state: &mut State,
    db: &str,
    body: &Document,
    final_attempt: bool,
) -> ServerResult<Option<(Reply, bool)>> {
    let id = body.get("getMore").and_then(as_i64).ok_or_else(|| {
        ServerError::type_mismatch("BSON field 'getMore' is the wrong type, expected type 'long'")
    })?;
    let coll = coll_name(body, "collection")?;
    let ns = format!("{db}.{coll}");
    if let Some(in_use) = state.cursors.pinned_ns(id) {
        // Another getMore on this cursor is running (without the server lock).
        return Err(ServerError::new(
            ErrorCode::CursorInUse,
            format!("Cursor already in use (namespace: '{in_use}', id: {id})."),
        ));
    }
    let mut cursor = state.cursors.take(id).ok_or_else(|| {
        ServerError::new(
            ErrorCode::CursorNotFound,
            format!("cursor id {id} not found"),
        )
    })?;
    if cursor.ns != ns {
        let msg = format!(
            "Requested getMore on namespace '{ns}', but cursor belongs to a different namespace {}",
            cursor.ns
        );
        state.cursors.put_back(id, cursor);
        return Err(ServerError::new(ErrorCode::Unauthorized, msg));
    }
    if body.contains_key("maxTimeMS") && !cursor.is_await_data() {
        state.cursors.put_back(id, cursor);
        return Err(ServerError::bad_value(
            "cannot set maxTimeMS on getMore command for a non-awaitData cursor",
        ));
    }
    let max = non_negative(body, "batchSize")?
        .map(|b| b as usize)
        .filter(|b| *b > 0)
        .unwrap_or(usize::MAX);
    // Any error during a getMore destroys the cursor, so it is not put back on `?`.
    let batch = cursor.next_batch(state, max)?;
    if batch.docs.is_empty() && cursor.is_await_data() && !final_attempt {
        state.cursors.put_back(id, cursor);
        return Ok(None);
    }
    let id_out = if batch.exhausted && !cursor.is_tailable() {
        0
    } else {
        id
    };
    let majority = cursor.majority;
    if id_out != 0 {
        state.cursors.put_back(id, cursor);
    }
    batch_reply("nextBatch", batch.docs, id_out, &ns).map(|r| Some((r, majority)))
}

/// `killCursors` as jstests/core/killcursors.js checks it: a cursor of another namespace (or of
/// a collection that does not exist) is "not found" and stays open.
pub fn kill_cursors(state: &mut State, db: &str, body: &Document) -> ServerResult<Reply> {
    let Some(Bson::String(coll)) = body.get("killCursors") else {
        return Err(ServerError::failed_to_parse(
            "BSON field 'killCursors' is the wrong type, expected type 'string'",
        ));
    };
    let ns = format!("{db}.{coll}");
    let ids = match body.get("cursors") {
        Some(Bson::Array(ids)) => ids,
        Some(_) => {
            return Err(ServerError::failed_to_parse(
                "BSON field 'killCursors.cursors' is the wrong type, expected type 'array'",
            ))
        }
        None => {
            return Err(ServerError::failed_to_parse(
                "BSON field 'killCursors.cursors' is missing but a required field",
            ))
        }
    };
    if ids.is_empty() {
        return Err(ServerError::bad_value(
            "Must specify at least one cursor id in: [",
        ));
    }
    let (mut killed, mut not_found) = (Vec::new(), Vec::new());
    for value in ids {
        let Some(id) = as_i64(value) else {
            return Err(ServerError::type_mismatch(
                "BSON field 'killCursors.cursors' must be an array of cursor ids (long)",
            ));
        };
        let ours = state.cursors.get(id).is_some_and(|c| c.ns == ns)
            || state.cursors.pinned_ns(id) == Some(ns.as_str());
        if ours && state.cursors.kill(id) {
            killed.push(id);
        } else {
            not_found.push(id);
        }
    }
    Ok(Reply::Doc(doc! {
        "cursorsKilled": killed, "cursorsNotFound": not_found,
        "cursorsAlive": Vec::<i64>::new(), "cursorsUnknown": Vec::<i64>::new(),
    }))
}

pub fn count(ctx: &mut Ctx, body: &Document) -> ServerResult<Reply> {
    if ctx.in_txn() {
        return Err(ServerError::new(
            ErrorCode::OperationNotSupportedInTransaction,
            "Cannot run 'count' in a multi-document transaction.",
        ));
    }
    let coll = coll_name(body, "count")?;
    let query = doc_arg(body, "query")?.cloned().unwrap_or_default();
    let matcher = Matcher::new(&query)?;
    let skip = non_negative(body, "skip")?.unwrap_or(0) as usize;
    let limit = body
        .get("limit")
        .and_then(as_i64)
        .map(|l| l.unsigned_abs() as usize)
        .filter(|l| *l > 0);
    let view = ctx.view(&ctx.db, &coll);
    let total = match view {
        Some(c) if query.is_empty() => c.len(),
        Some(c) => c
            .records
            .values()
            .filter(|r| matcher.matches_raw(&r.raw))
            .count(),
        None => 0,
    };
    let mut n = total.saturating_sub(skip);
    if let Some(l) = limit {
        n = n.min(l);
    }
    Ok(Reply::Doc(doc! {"n": n as i32}))
}

pub fn distinct(ctx: &mut Ctx, body: &Document) -> ServerResult<Reply> {
    let coll = coll_name(body, "distinct")?;
    let key = body.get_str("key").map_err(|_| {
        ServerError::failed_to_parse("BSON field 'distinct.key' is missing but a required field")
    })?;
    let query = doc_arg(body, "query")?.cloned().unwrap_or_default();
    let matcher = Matcher::new(&query)?;
    let mut values: Vec<Bson> = Vec::new();
    for doc in matching_docs(ctx.view(&ctx.db, &coll), &matcher) {
        let mut candidates = Vec::new();
        collect_path_values(&doc, key, &mut candidates);
        for v in candidates {
            if !values.iter().any(|x| values_equal(x, &v)) {
                values.push(v);
            }
        }
    }
    values.sort_by(compare_values);
    let mut reply = doc! {"values": values};
    if let Some(at) = ctx.state.read_at {
        reply.insert("atClusterTime", at);
    }
    Ok(Reply::Doc(reply))
}

/// Values at a dotted path, descending into arrays, with array values unwound.
fn collect_path_values(doc: &Document, path: &str, out: &mut Vec<Bson>) {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let Some(v) = doc.get(head) else { return };
    collect_value(v, rest, out);
}

fn collect_value(v: &Bson, rest: Option<&str>, out: &mut Vec<Bson>) {
    match (v, rest) {
        (Bson::Array(items), None) => out.extend(items.iter().cloned()),
        (other, None) => out.push(other.clone()),
        (Bson::Document(d), Some(r)) => collect_path_values(d, r, out),
        (Bson::Array(items), Some(r)) => {
            for item in items {
                if let Bson::Document(d) = item {
                    collect_path_values(d, r, out);
                }
            }
            if let Some(idx) = r.split('.').next().and_then(|s| s.parse::<usize>().ok()) {
                if let Some(item) = items.get(idx) {
                    let tail = r.split_once('.').map(|(_, t)| t);
                    collect_value(item, tail, out);
                }
            }
        }
        _ => {}
    }
}

pub fn aggregate(ctx: &mut Ctx, body: &Document) -> ServerResult<Reply> {
    // $out and $merge validate what they write unless told not to.
    ctx.bypass_validation = bool_arg(body, "bypassDocumentValidation", false);
    let pipeline: Vec<Document> = match body.get("pipeline") {
        Some(Bson::Array(a)) => pipeline_stages(a)?,
        _ => {
            return Err(ServerError::failed_to_parse(
                "'pipeline' option must be specified as an array",
            ))
        }
    };
    let cursor_opts = doc_arg(body, "cursor")?.ok_or_else(|| {
        ServerError::failed_to_parse(
            "The 'cursor' option is required, except for aggregate with the explain argument",
        )
    })?;
    let batch_size = cursor_opts
        .get("batchSize")
        .and_then(as_i64)
        .map(|b| b as usize);
    // `let` constants are put in place before the pipeline is parsed.
    let pipeline = match super::vars::command_let(body)? {
        Some(vars) => super::vars::substitute_pipeline(&pipeline, &vars),
        None => pipeline,
    };
    let db = ctx.db.clone();
    let (ns, input) = match body.get("aggregate") {
        Some(Bson::String(coll)) => {
            let ns = format!("{db}.{coll}");
            let input = match pipeline.first().and_then(|s| s.keys().next()).map(|k| k.as_str()) {
                Some("$changeStream") => {
                    return Err(ServerError::location(40573, "The $changeStream stage is only supported on replica sets by the real server; the embedded server does not implement change streams"))
                }
                Some("$listLocalSessions") => {
                    return Err(ServerError::invalid_namespace("$listLocalSessions must be run against the database with {aggregate: 1}, not a collection"))
                }
                Some("$collStats") => {
                    let stats = super::coll_stats::coll_stats(ctx, &db, coll, &pipeline[0]["$collStats"])?;
                    return finish_aggregate(ctx, ns.clone(), vec![stats], &pipeline[1..], batch_size);
                }
                _ => ctx.view(&db, coll).map(|c| c.records.values().map(|r| r.document()).collect()).unwrap_or_default(),
            };
            (ns, input)
        }
        Some(Bson::Int32(1)) | Some(Bson::Int64(1)) | Some(Bson::Double(_)) => {
            let ns = format!("{db}.$cmd.aggregate");
            // `$documents` (first stage of a database-level aggregate): its array is the input.
            if let Some(spec) = pipeline.first().and_then(|s| s.get("$documents")) {
                let docs = documents_stage(spec)?;
                return finish_aggregate_checked(ctx, body, ns, docs, &pipeline[1..], batch_size);
            }
            if let Some(spec) = pipeline.first().and_then(|s| s.get("$listLocalSessions")) {
                let sessions = list_local_sessions(ctx, spec)?;
                return finish_aggregate(ctx, ns, sessions, &pipeline[1..], batch_size);
            }
            (ns, Vec::new())
        }
        _ => {
            return Err(ServerError::type_mismatch(
                "'aggregate' must be a collection name or 1",
            ))
        }
    };
    finish_aggregate_checked(ctx, body, ns, input, &pipeline, batch_size)
}

/// `$documents`: an expression (evaluated once) giving an array of documents.
fn documents_stage(spec: &Bson) -> ServerResult<Vec<Document>> {
    let value = crate::server::query::expr::Expr::parse(spec)?.eval(&Document::new())?;
    let items = match value {
        Some(Bson::Array(items)) => items,
        _ => {
            return Err(ServerError::location(
                5858203,
                "an array is expected for $documents",
            ))
        }
    };
    items
        .into_iter()
        .map(|i| match i {
            Bson::Document(d) => Ok(d),
            _ => Err(ServerError::location(
                5858203,
                "$documents expects an array of objects",
            )),
        })
        .collect()
}

/// [`finish_aggregate`] after the checks a writing stage needs: mongod refuses `$out` and
/// `$merge` under a linearizable read concern (InvalidOptions).
fn finish_aggregate_checked(
    ctx: &mut Ctx,
    body: &Document,
    ns: String,
    input: Vec<Document>,
    pipeline: &[Document],
    batch_size: Option<usize>,
) -> ServerResult<Reply> {
    if let Some(stage) = pipeline.last().filter(|s| super::out::is_write_stage(s)) {
        let linearizable = body
            .get_document("readConcern")
            .ok()
            .and_then(|rc| rc.get_str("level").ok())
            == Some("linearizable");
        if linearizable {
            let name = stage.keys().next().cloned().unwrap_or_default();
            return Err(ServerError::invalid_options(format!(
                "{name} cannot be used with a 'linearizable' read concern level"
            )));
        }
    }
    finish_aggregate(ctx, ns, input, pipeline, batch_size)
}

/// `{$listLocalSessions: {allUsers, users}}` (with `{aggregate: 1}`): the sessions seen.
/// Without authentication every session belongs to the one empty user, so any user list that
/// names users matches none of them.
fn list_local_sessions(ctx: &Ctx, spec: &Bson) -> ServerResult<Vec<Document>> {
    let Bson::Document(spec) = spec else {
        return Err(ServerError::type_mismatch(
            "$listLocalSessions options must be specified in an object",
        ));
    };
    for (k, v) in spec {
        match (k.as_str(), v) {
            ("allUsers", Bson::Boolean(_)) => {}
            ("users", Bson::Array(users)) if !users.is_empty() => return Ok(Vec::new()),
            ("users", Bson::Array(_)) => {}
            ("allUsers" | "users", _) => {
                return Err(ServerError::type_mismatch(format!(
                    "BSON field '$listLocalSessions.{k}' is the wrong type"
                )))
            }
            _ => {
                return Err(ServerError::location(
                    40415,
                    format!("BSON field '$listLocalSessions.{k}' is an unknown field."),
                ))
            }
        }
    }
    Ok(ctx.state.session_cache.list())
}

fn finish_aggregate(
    ctx: &mut Ctx,
    ns: String,
    input: Vec<Document>,
    pipeline: &[Document],
    batch_size: Option<usize>,
) -> ServerResult<Reply> {
    let (pipeline, write_stage) = super::out::split_write_stage(pipeline)?;
    let out = run_pipeline(input, pipeline)?;
    if let Some(stage) = write_stage {
        super::out::run_write_stage(ctx, stage, out)?;
        return super::out::empty_cursor(&ns);
    }
    let source = Source::Buffered(out.into_iter().map(Arc::new).collect());
    let cursor = Cursor {
        ns,
        source,
        projection: None,
        limit_remaining: None,
        batch_size,
        life: CursorLife::default(),
        majority: false,
    };
    cursor_reply(
        ctx.state,
        cursor,
        batch_size.unwrap_or(DEFAULT_FIRST_BATCH),
        false,
    )
}
