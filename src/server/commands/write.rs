//! insert, update, delete and findAndModify.

use super::ctx::Ctx;
use super::util::{bool_arg, coll_name, doc_arg, docs_ref, write_error};
use crate::server::collection::{encode, RecordId};
use crate::server::error::{ServerError, ServerResult};
use crate::server::error_codes::ErrorCode;
use crate::server::limits;
use crate::server::oplog_writer::OpRecord;
use crate::server::query::{collation, Matcher, Projection, SortSpec};
use crate::server::update::{upsert_seed, upsert_seed_for_replacement, UpdateContext, UpdateSpec};
use crate::server::validation;
use bson::{doc, oid::ObjectId, Bson, Document, RawBsonRef, RawDocumentBuf};
use std::sync::Arc;

/// Puts `_id` first, generating an ObjectId when the client sent none (as mongod stores it).
pub fn with_id_first(doc: Document) -> ServerResult<Document> {
    if let Some(id) = doc.get("_id") {
        match id {
            Bson::Array(_) => {
                return Err(ServerError::new(
                    ErrorCode::BadValue,
                    "can't use an array for _id",
                ))
            }
            Bson::RegularExpression(_) => {
                return Err(ServerError::new(
                    ErrorCode::BadValue,
                    "can't use a regex for _id",
                ))
            }
            _ => {}
        }
        if doc.keys().next().map(|k| k.as_str()) == Some("_id") {
            return Ok(doc);
        }
    }
    let mut out = Document::new();
    out.insert(
        "_id",
        doc.get("_id")
            .cloned()
            .unwrap_or_else(|| Bson::ObjectId(ObjectId::new())),
    );
    for (k, v) in doc {
        if k != "_id" {
            out.insert(k, v);
        }
    }
    Ok(out)
}

/// mongod's storage rule for `_id` objects (storage_validation.cpp): no `$`-prefixed field at
/// any depth, DBRef fields (`$ref`, `$id`, `$db`) aside. Walked without recursion.
fn check_id_storage(id: &Bson) -> ServerResult<()> {
    let mut pending: Vec<&Document> = match id {
        Bson::Document(d) => vec![d],
        _ => return Ok(()),
    };
    while let Some(d) = pending.pop() {
        for (k, v) in d {
            if k.starts_with('$') && !matches!(k.as_str(), "$ref" | "$id" | "$db") {
                return Err(ServerError::location(52, format!("_id fields may not contain '$'-prefixed fields: {k} is not valid for storage."),
                ));
            }
            match v {
                Bson::Document(inner) => pending.push(inner),
                Bson::Array(items) => {
                    pending.extend(items.iter().filter_map(|i| i.as_document()));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Inserts one document and logs it; the error, if any, is the statement's write error. The
/// document is encoded once: the same bytes are stored and become the oplog entry's `o`.
pub fn insert_one(ctx: &mut Ctx, db: &str, coll: &str, doc: &Document) -> ServerResult<()> {
    let reordered;
    let doc = if doc.keys().next().map(String::as_str) == Some("_id") && with_id_first_is_valid(doc)
    {
        doc
    } else {
        reordered = with_id_first(doc.clone())?;
        &reordered
    };
    let id = doc.get("_id").cloned().unwrap();
    check_id_storage(&id)?;
    let raw = crate::server::collection::encode(doc)?;
    limits::check_insert(doc, raw.as_bytes().len())?;
    let version = ctx.next_version();
    let bypass = ctx.bypass_validation;
    let c = ctx.coll_for_write(db, coll, true)?.unwrap();
    validation::check_write(c.validator.as_deref(), &c.ns, doc, None, bypass)?;
    let ui = c.uuid;
    c.insert_encoded(doc, raw.clone(), version, None)?;
    log_insert(ctx, db, coll, ui, raw, id)
}

/// [`insert_one`] for a document that arrived as bytes. Drivers put `_id` first, and then the
/// bytes are stored and logged as they are, never decoded; otherwise it takes the general path.
fn insert_one_raw(
    ctx: &mut Ctx,
    db: &str,
    coll: &str,
    raw: &Arc<RawDocumentBuf>,
) -> ServerResult<()> {
    let id = match raw.iter().next() {
        Some(Ok(("_id", value)))
            if !matches!(
                value,
                RawBsonRef::Array(_) | RawBsonRef::RegularExpression(_)
            ) =>
        {
            match value {
                // A document `_id` is decoded from the bytes in place, without a copy first.
                RawBsonRef::Document(d) => Document::try_from(d).ok().map(Bson::Document),
                other => Bson::try_from(other.to_raw_bson()).ok(),
            }
        }
        _ => None,
    };
    if let Some(id) = &id {
        check_id_storage(id)?;
    }
    let Some(id) = id else {
        let doc = Document::try_from(raw.as_ref().as_ref()).map_err(|e| {
            ServerError::new(ErrorCode::BadValue, format!("cannot store document: {e}"))
        })?;
        return insert_one(ctx, db, coll, &doc);
    };
    limits::check_insert_raw(raw)?;
    let raw = raw.clone();
    let version = ctx.next_version();
    let bypass = ctx.bypass_validation;
    let c = ctx.coll_for_write(db, coll, true)?.unwrap();
    if let Some(validator) = c.validator.clone() {
        let doc = Document::try_from(raw.as_ref().as_ref()).map_err(|e| {
            ServerError::new(ErrorCode::BadValue, format!("cannot store document: {e}"))
        })?;
        validation::check_write(Some(&validator), &c.ns, &doc, None, bypass)?;
    }
    let ui = c.uuid;
    c.insert_record_with_id(raw.clone(), version, &id)?;
    log_insert(ctx, db, coll, ui, raw, id)
}

fn log_insert(
    ctx: &mut Ctx,
    db: &str,
    coll: &str,
    ui: bson::Uuid,
    raw: Arc<RawDocumentBuf>,
    id: Bson,
) -> ServerResult<()> {
    let ns = format!("{db}.{coll}");
    ctx.note_write(&ns, &id)?;
    ctx.log(OpRecord::insert(ns, Some(ui), raw, id), true);
    Ok(())
}

/// True when `_id` has a type MongoDB accepts (arrays and regular expressions are refused).
fn with_id_first_is_valid(doc: &Document) -> bool {
    !matches!(
        doc.get("_id"),
        Some(Bson::Array(_)) | Some(Bson::RegularExpression(_))
    )
}

/// Runs the statements of a write command in order, as mongod does: a failing statement
/// becomes a `writeErrors` entry (and stops an ordered command). Inside a transaction the first
/// failure stops the command and aborts the transaction; it is still reported in `writeErrors`,
/// except a transient error (a write conflict), which fails the whole command with its label
/// (jstests/core/txns/transactions_write_errors.js). Returns the write errors.
fn run_statements<S>(
    ctx: &mut Ctx,
    statements: impl IntoIterator<Item = S>,
    ordered: bool,
    mut run: impl FnMut(&mut Ctx, S) -> ServerResult<()>,
) -> ServerResult<Vec<Bson>> {
    let mut errors = Vec::new();
    for (i, statement) in statements.into_iter().enumerate() {
        ctx.stmt_id = i as i32;
        if let Err(e) = run(ctx, statement) {
            if ctx.in_txn() {
                if super::transaction::is_transient(&e) {
                    return Err(e);
                }
                ctx.txn_failed = true;
                errors.push(write_error(i, &e));
                break;
            }
            errors.push(write_error(i, &e));
            if ordered {
                break;
            }
        }
    }
    Ok(errors)
}

/// `raw_documents`: the documents when they came as a document sequence (kept as bytes).
pub fn insert(
    ctx: &mut Ctx,
    body: &Document,
    raw_documents: Option<&[Arc<RawDocumentBuf>]>,
) -> ServerResult<Document> {
    ctx.bypass_validation = bool_arg(body, "bypassDocumentValidation", false);
    let coll = coll_name(body, "insert")?;
    let ordered = bool_arg(body, "ordered", true);
    let db = ctx.db.clone();
    let mut n = 0i32;
    let errors = match raw_documents {
        Some(docs) => run_statements(ctx, docs, ordered, |ctx, doc| {
            insert_one_raw(ctx, &db, &coll, doc)?;
            n += 1;
            Ok(())
        })?,
        None => run_statements(ctx, docs_ref(body, "documents")?, ordered, |ctx, doc| {
            insert_one(ctx, &db, &coll, doc)?;
            n += 1;
            Ok(())
        })?,
    };
    let mut reply = doc! {"n": n};
    if !errors.is_empty() {
        reply.insert("writeErrors", errors);
    }
    Ok(reply)
}

/// Record ids matching `filter`, in natural order; stops after the first when `just_one`.
pub fn matching(
    ctx: &Ctx,
    db: &str,
    coll: &str,
    matcher: &Matcher,
    just_one: bool,
) -> Vec<RecordId> {
    let Some(c) = ctx.view(db, coll) else {
        return Vec::new();
    };
    if let Some(id) = matcher.id_equality() {
        return c
            .find_id(id)
            .filter(|rid| c.get(*rid).is_some_and(|d| matcher.matches(&d)))
            .into_iter()
            .collect();
    }
    let mut out = Vec::new();
    for (rid, rec) in c.records.iter() {
        if matcher.matches_raw(&rec.raw) {
            out.push(*rid);
            if just_one {
                break;
            }
        }
    }
    out
}

/// The `arrayFilters` option (IDL type `array<object>`); `field` is its name in IDL errors.
fn array_filters_arg(body: &Document, field: &str) -> ServerResult<Option<Vec<Document>>> {
    let wrong_type = |name: String, v: &Bson, expected: &str| {
        ServerError::type_mismatch(format!(
            "BSON field '{}' is the wrong type '{}', expected type '{}'",
            name,
            crate::server::query::compare::type_name(v),
            expected
        ))
    };
    match body.get("arrayFilters") {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Bson::Document(d) => Ok(d.clone()),
                other => Err(wrong_type(format!("{field}.{i}"), other, "object")),
            })
            .collect::<ServerResult<Vec<_>>>()
            .map(Some),
        Some(other) => Err(wrong_type(field.to_string(), other, "array")),
    }
}

pub struct UpdateResult {
    pub matched: i32,
    pub modified: i32,
    pub upserted: Option<Bson>,
    /// Pre- and post-image of the (last) document touched, for findAndModify.
    pub before: Option<Document>,
    pub after: Option<Document>,
}

/// Applies `spec` to the documents `rids` (already chosen) or upserts when there are none.
pub fn update_docs(
    ctx: &mut Ctx,
    db: &str,
    coll: &str,
    rids: Vec<RecordId>,
    query: &Document,
    spec: &UpdateSpec,
    upsert: bool,
    retryable: bool,
) -> ServerResult<UpdateResult> {
    let ns = format!("{db}.{coll}");
    let bypass = ctx.bypass_validation;
    let mut result = UpdateResult {
        matched: 0,
        modified: 0,
        upserted: None,
        before: None,
        after: None,
    };
    let uctx = UpdateContext {
        inserting: false,
        now: ctx.now,
        now_ts: ctx.state.clock.last(),
    };
    // The positional `$` stands for the array index the query matched in each document
    // (`UpdateDriver::needMatchDetails` → `MatchDetails::elemMatchKey`).
    let positional_matcher = if spec.is_positional() {
        Some(Matcher::new(query)?)
    } else {
        None
    };
    for rid in rids {
        let version = ctx.next_version();
        let c = ctx
            .coll_for_write(db, coll, false)?
            .expect("matched documents come from an existing collection");
        let Some(current) = c.get(rid) else {
            continue;
        };
        let ui = c.uuid;
        let mut doc = current.clone();
        let matched = positional_matcher
            .as_ref()
            .and_then(|m| m.positional_match(&current));
        let outcome = spec.apply_matched(&mut doc, &uctx, matched)?;
        result.matched += 1;
        let current_id = current.get("_id").cloned();
        result.before = Some(current);
        if outcome.modified {
            let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
            if current_id.as_ref() != Some(&id) {
                return Err(ServerError::immutable_field(
                    "Performing an update on the path '_id' would modify the immutable field '_id'",
                ));
            }
            let raw = encode(&doc)?;
            limits::check_updated(&doc, raw.as_bytes().len())?;
            let validator = c.validator.clone();
            let before = result.before.as_ref();
            validation::check_write(validator.as_deref(), &ns, &doc, before, bypass)?;
            c.replace_encoded(rid, &doc, raw, version)?;
            ctx.note_write(&ns, &id)?;
            ctx.log(
                OpRecord::new(
                    "u",
                    ns.clone(),
                    Some(ui),
                    outcome.oplog_o,
                    Some(doc! {"_id": id}),
                ),
                retryable,
            );
            result.modified += 1;
        }
        result.after = Some(doc);
    }
    if result.matched == 0 && upsert {
        let mut doc = if spec.is_replacement() {
            upsert_seed_for_replacement(query)?
        } else {
            upsert_seed(query)?
        };
        let ictx = UpdateContext {
            inserting: true,
            ..uctx
        };
        spec.apply(&mut doc, &ictx)?;
        let doc = with_id_first(doc)?;
        let id = doc.get("_id").cloned().unwrap();
        let raw = encode(&doc)?;
        limits::check_updated(&doc, raw.as_bytes().len())?;
        let version = ctx.next_version();
        let c = ctx.coll_for_write(db, coll, true)?.unwrap();
        validation::check_write(c.validator.as_deref(), &ns, &doc, None, bypass)?;
        let ui = c.uuid;
        c.insert_encoded(&doc, raw, version, None)?;
        ctx.note_write(&ns, &id)?;
        ctx.log(
            OpRecord::new(
                "i",
                ns.clone(),
                Some(ui),
                doc.clone(),
                Some(doc! {"_id": id.clone()}),
            ),
            retryable,
        );
        result.upserted = Some(id);
        result.after = Some(doc);
    }
    Ok(result)
}

/// Fields of an update statement in mongod 7.0's write_ops.idl (strict: others are refused
/// before any statement runs; `sort` came in 8.0).
const UPDATE_STATEMENT_FIELDS: &[&str] = &[
    "q",
    "u",
    "c",
    "arrayFilters",
    "hint",
    "multi",
    "upsert",
    "upsertSupplied",
    "collation",
    "sampleId",
    "$_allowShardKeyUpdatesWithoutFullShardKeyInQuery",
];
const DELETE_STATEMENT_FIELDS: &[&str] = &["q", "limit", "hint", "collation", "sampleId"];

fn check_statement_fields(
    statements: &[&Document],
    path: &str,
    known: &[&str],
) -> ServerResult<()> {
    for stmt in statements {
        if let Some(k) = stmt.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(ServerError::location(
                40415,
                format!("BSON field '{path}.{k}' is an unknown field."),
            ));
        }
    }
    Ok(())
}

pub fn update(ctx: &mut Ctx, body: &Document) -> ServerResult<Document> {
    ctx.bypass_validation = bool_arg(body, "bypassDocumentValidation", false);
    let coll = coll_name(body, "update")?;
    let statements = docs_ref(body, "updates")?;
    check_statement_fields(&statements, "update.updates", UPDATE_STATEMENT_FIELDS)?;
    let lets = super::vars::command_let(body)?;
    // Parsed with the command (IDL), so a bad `c` fails the whole command, not one statement.
    for stmt in &statements {
        if !matches!(
            stmt.get("c"),
            None | Some(Bson::Null) | Some(Bson::Document(_))
        ) {
            return Err(ServerError::type_mismatch(
                "BSON field 'update.updates.c' is the wrong type, expected type 'object'",
            ));
        }
    }
    let ordered = bool_arg(body, "ordered", true);
    let db = ctx.db.clone();
    let (mut n, mut n_modified) = (0i32, 0i32);
    let mut upserted = Vec::new();
    let errors = run_statements(
        ctx,
        statements.into_iter().enumerate(),
        ordered,
        |ctx, (i, stmt)| {
            let _collation = collation::scope(stmt.get("collation"))?;
            let q = doc_arg(stmt, "q")?.cloned().unwrap_or_default();
            let q = match &lets {
                Some(vars) => super::vars::substitute_filter(&q, vars),
                None => q,
            };
            let u = match stmt.get("u") {
                Some(u @ (Bson::Document(_) | Bson::Array(_))) => u.clone(),
                _ => {
                    return Err(ServerError::failed_to_parse(
                        "BSON field 'update.updates.u' is missing but a required field",
                    ))
                }
            };
            let multi = bool_arg(stmt, "multi", false);
            let upsert = bool_arg(stmt, "upsert", false);
            let array_filters = array_filters_arg(stmt, "update.updates.arrayFilters")?;
            let u = with_constants(u, lets.as_ref(), stmt.get("c"))?;
            let spec = UpdateSpec::parse_bson(&u, array_filters.as_deref())?;
            if multi && spec.is_replacement() {
                return Err(ServerError::failed_to_parse(
                    "multi update is not supported for replacement-style update",
                ));
            }
            let matcher = Matcher::new(&q)?;
            let rids = matching(ctx, &db, &coll, &matcher, !multi);
            let r = update_docs(ctx, &db, &coll, rids, &q, &spec, upsert, !multi)?;
            n += r.matched;
            n_modified += r.modified;
            if let Some(id) = r.upserted {
                n += 1;
                upserted.push(doc! {"index": i as i32, "_id": id});
            }
            Ok(())
        },
    )?;
    let mut reply = doc! {"n": n, "nModified": n_modified};
    if !upserted.is_empty() {
        reply.insert("upserted", upserted);
    }
    if !errors.is_empty() {
        reply.insert("writeErrors", errors);
    }
    Ok(reply)
}

pub fn remove_docs(
    ctx: &mut Ctx,
    db: &str,
    coll: &str,
    rids: Vec<RecordId>,
    retryable: bool,
) -> ServerResult<Vec<Document>> {
    let ns = format!("{db}.{coll}");
    let mut removed = Vec::new();
    for rid in rids {
        let Some(c) = ctx.coll_for_write(db, coll, false)? else {
            break;
        };
        if c.capped.is_some() {
            return Err(ServerError::illegal_operation(format!(
                "cannot remove from a capped collection: {ns}"
            )));
        }
        let ui = c.uuid;
        let Some(record) = c.remove(rid) else {
            continue;
        };
        let doc = record.document();
        let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
        ctx.note_write(&ns, &id)?;
        ctx.log(
            OpRecord::new("d", ns.clone(), Some(ui), doc! {"_id": id}, None),
            retryable,
        );
        removed.push(doc);
    }
    Ok(removed)
}

pub fn delete(ctx: &mut Ctx, body: &Document) -> ServerResult<Document> {
    let coll = coll_name(body, "delete")?;
    let statements = docs_ref(body, "deletes")?;
    check_statement_fields(&statements, "delete.deletes", DELETE_STATEMENT_FIELDS)?;
    let lets = super::vars::command_let(body)?.unwrap_or_default();
    let ordered = bool_arg(body, "ordered", true);
    let db = ctx.db.clone();
    let mut n = 0i32;
    let errors = run_statements(ctx, statements, ordered, |ctx, stmt| {
        let _collation = collation::scope(stmt.get("collation"))?;
        let q = doc_arg(stmt, "q")?.cloned().unwrap_or_default();
        let q = super::vars::substitute_filter(&q, &lets);
        let just_one = match stmt.get("limit") {
            Some(b) => super::util::as_i64(b).unwrap_or(0) == 1,
            None => {
                return Err(ServerError::failed_to_parse(
                    "BSON field 'delete.deletes.limit' is missing but a required field",
                ))
            }
        };
        let matcher = Matcher::new(&q)?;
        let rids = matching(ctx, &db, &coll, &matcher, just_one);
        n += remove_docs(ctx, &db, &coll, rids, just_one)?.len() as i32;
        Ok(())
    })?;
    let mut reply = doc! {"n": n};
    if !errors.is_empty() {
        reply.insert("writeErrors", errors);
    }
    Ok(reply)
}

pub fn find_and_modify(ctx: &mut Ctx, body: &Document) -> ServerResult<Document> {
    ctx.bypass_validation = bool_arg(body, "bypassDocumentValidation", false);
    let coll = coll_name(
        body,
        body.keys()
            .next()
            .map(|k| k.as_str())
            .unwrap_or("findAndModify"),
    )?;
    let db = ctx.db.clone();
    let lets = super::vars::command_let(body)?;
    let query = doc_arg(body, "query")?.cloned().unwrap_or_default();
    let query = match &lets {
        Some(vars) => super::vars::substitute_filter(&query, vars),
        None => query,
    };
    let remove = bool_arg(body, "remove", false);
    let return_new = bool_arg(body, "new", false);
    let upsert = bool_arg(body, "upsert", false);
    let update = body.get("update");
    if remove && update.is_some() {
        return Err(ServerError::failed_to_parse(
            "Cannot specify both an update and remove=true",
        ));
    }
    if !remove && update.is_none() {
        return Err(ServerError::failed_to_parse(
            "Either an update or remove=true must be specified",
        ));
    }
    if remove && (upsert || return_new) {
        return Err(ServerError::failed_to_parse(
            "Cannot specify both upsert=true and remove=true or new=true and remove=true",
        ));
    }
    let projection = doc_arg(body, "fields")?.map(Projection::new).transpose()?;
    let matcher = Matcher::new(&query)?;
    let mut rids = matching(ctx, &db, &coll, &matcher, false);
    if let Some(sort) = doc_arg(body, "sort")?.filter(|s| !s.is_empty()) {
        let sort = SortSpec::new(sort)?;
        if let Some(c) = ctx.view(&db, &coll) {
            let mut keyed: Vec<(u64, Document)> = rids
                .iter()
                .filter_map(|rid| Some((*rid, c.get(*rid)?)))
                .collect();
            keyed.sort_by(|a, b| sort.compare(&a.1, &b.1));
            rids = keyed.into_iter().map(|(rid, _)| rid).collect();
        }
    }
    rids.truncate(1);
    let project = |d: Option<Document>| -> Bson {
        match (d, &projection) {
            (Some(d), Some(p)) => Bson::Document(p.apply(&d)),
            (Some(d), None) => Bson::Document(d),
            (None, _) => Bson::Null,
        }
    };
    if remove {
        let removed = remove_docs(ctx, &db, &coll, rids, true)?;
        let n = removed.len() as i32;
        return Ok(
            doc! {"lastErrorObject": {"n": n}, "value": project(removed.into_iter().next())},
        );
    }
    let u = match update {
        Some(u @ (Bson::Document(_) | Bson::Array(_))) => u.clone(),
        _ => return Err(ServerError::failed_to_parse("'update' must be a document")),
    };
    let array_filters = array_filters_arg(body, "findAndModify.arrayFilters")?;
    let u = with_constants(u, lets.as_ref(), None)?;
    let spec = UpdateSpec::parse_bson(&u, array_filters.as_deref())?;
    let r = update_docs(ctx, &db, &coll, rids, &query, &spec, upsert, true)?;
    let mut last =
        doc! {"n": r.matched.max(r.upserted.is_some() as i32), "updatedExisting": r.matched > 0};
    let value = if let Some(id) = &r.upserted {
        last.insert("upserted", id.clone());
        if return_new {
            project(r.after)
        } else {
            Bson::Null
        }
    } else if return_new {
        project(r.after)
    } else {
        project(r.before)
    };
    Ok(doc! {"lastErrorObject": last, "value": value})
}

/// A pipeline update with the command's `let` variables and the statement's constants (`c`) put
/// in place (both are constants; `c` wins on a name in both). Other updates are returned as
/// they are: only pipelines can refer to variables.
fn with_constants(u: Bson, lets: Option<&Document>, c: Option<&Bson>) -> ServerResult<Bson> {
    let Bson::Array(stages) = &u else {
        return Ok(u);
    };
    let mut vars = lets.cloned().unwrap_or_default();
    match c {
        None | Some(Bson::Null) => {}
        Some(Bson::Document(c)) => {
            for (k, v) in c {
                vars.insert(k.clone(), v.clone());
            }
        }
        Some(_) => {
            return Err(ServerError::type_mismatch(
                "BSON field 'update.updates.c' is the wrong type, expected type 'object'",
            ))
        }
    }
    if vars.is_empty() || stages.iter().any(|s| s.as_document().is_none()) {
        return Ok(u);
    }
    let stages: Vec<Document> = stages
        .iter()
        .filter_map(|s| s.as_document().cloned())
        .collect();
    Ok(Bson::Array(
        super::vars::substitute_pipeline(&stages, &vars)
            .into_iter()
            .map(Bson::Document)
            .collect(),
    ))
}
