//! Databases, collections and indexes: create, drop, rename, list, createIndexes, dropIndexes.

use super::ctx::Ctx;
use super::read::cursor_reply;
use super::util::{bool_arg, coll_name, doc_arg};
use super::Reply;
use crate::server::collection::{Collection, Index};
use crate::server::cursor::{Cursor, Source};
use crate::server::error::{ServerError, ServerResult};
use crate::server::error_codes::ErrorCode;
use crate::server::oplog_writer::{EntryExtras, OpRecord};
use crate::server::query::Matcher;
use crate::server::state::{split_ns, validate_coll_name, validate_db_name, OPLOG_NS};
use crate::server::validation::Validator;
use bson::{doc, Bson, Document};
use std::sync::Arc;

fn no_ddl_in_txn(ctx: &Ctx, cmd: &str) -> ServerResult<()> {
    if ctx.in_txn() {
        return Err(ServerError::new(
            ErrorCode::OperationNotSupportedInTransaction,
            format!("Cannot run '{cmd}' in a multi-document transaction."),
        ));
    }
    Ok(())
}

/// Options `create` keeps (and logs); everything else in the command is a generic argument.
const CREATE_OPTIONS: &[&str] = &[
    "capped",
    "size",
    "max",
    "validator",
    "validationLevel",
    "validationAction",
    "collation",
    "storageEngine",
    "indexOptionDefaults",
    "viewOn",
    "pipeline",
    "timeseries",
    "expireAfterSeconds",
    "clusteredIndex",
    "changeStreamPreAndPostImages",
];

/// Command fields every command may carry; `collMod` ignores them.
const GENERIC_ARGUMENTS: &[&str] = &[
    "writeConcern",
    "comment",
    "maxTimeMS",
    "lsid",
    "txnNumber",
    "autocommit",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
];

/// `collMod` of a collection's validator, `validationLevel` and `validationAction`; logged as
/// mongod logs it, with the previous values under `o2.collectionOptions_old`.
pub fn coll_mod(ctx: &mut Ctx, body: &Document) -> ServerResult<Reply> {
    no_ddl_in_txn(ctx, "collMod")?;
    let coll = coll_name(body, "collMod")?;
    let db = ctx.db.clone();
    let mut changes = Document::new();
    for (key, value) in body.iter().skip(1) {
        if key.starts_with('$') || GENERIC_ARGUMENTS.contains(&key.as_str()) {
            continue;
        }
        match key.as_str() {
            "validator" | "validationLevel" | "validationAction" => {
                changes.insert(key.clone(), value.clone());
            }
            other => {
                return Err(ServerError::invalid_options(format!(
                    "unknown option to collMod: {other}"
                )))
            }
        }
    }
    let Some(c) = ctx.state.coll_mut(&db, &coll) else {
        return Err(ServerError::namespace_not_found("ns does not exist"));
    };
    let mut options = c.options.clone();
    let mut old = doc! {"uuid": c.uuid};
    for (key, value) in &changes {
        if let Some(previous) = c.options.get(key) {
            old.insert(key.clone(), previous.clone());
        }
        options.insert(key.clone(), value.clone());
    }
    let validator = Validator::from_options(&options)?.map(Arc::new);
    c.options = options;
    c.validator = validator;
    let uuid = c.uuid;
    let mut o = doc! {"collMod": coll};
    o.extend(changes);
    let op = OpRecord::new(
        "c",
        format!("{db}.$cmd"),
        Some(uuid),
        o,
        Some(doc! {"collectionOptions_old": old}),
    );
    ctx.state.append_oplog(op, &EntryExtras::NONE);
    Ok(Reply::Doc(Document::new()))
}

pub fn create(ctx: &mut Ctx, body: &Document) -> ServerResult<Reply> {
    let coll = coll_name(body, "create")?;
    let db = ctx.db.clone();
    let options: Document = body
        .iter()
        .filter(|(k, _)| CREATE_OPTIONS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if options.contains_key("viewOn") || options.contains_key("timeseries") {
        return Err(ServerError::new(
            ErrorCode::CommandNotSupported,
            "views and time-series collections are not supported by the embedded server",
        ));
    }
    if let Some(existing) = ctx.view(&db, &coll) {
        // 7.0+: creating an existing collection with identical options succeeds.
        if existing.options == options {
            return Ok(Reply::Doc(Document::new()));
        }
        return Err(ServerError::namespace_exists(format!(
            "Collection {db}.{coll} already exists."
        )));
    }
    if ctx.in_txn() {
        if options.contains_key("capped") {
            return Err(ServerError::new(
                ErrorCode::OperationNotSupportedInTransaction,
                "Cannot create a capped collection in a multi-document transaction.",
            ));
        }
        ctx.coll_for_write(&db, &coll, true)?;
    } else {
        ctx.state.create_collection(&db, &coll, options)?;
    }
    Ok(Reply::Doc(Document::new()))
}

/// Drops one collection, logging `drop` with `o2.numRecords` as mongod does.
fn drop_collection(ctx: &mut Ctx, db: &str, coll: &str) -> Option<usize> {
    let c = ctx.state.dbs.get_mut(db)?.remove(coll)?;
    ctx.state.dropped_bytes += c.data_size + c.superseded_bytes;
    let n = c.len();
    let indexes = c.index_specs().len();
    let op = OpRecord::new(
        "c",
        format!("{db}.$cmd"),
        Some(c.uuid),
        doc! {"drop": coll},
        Some(doc! {"numRecords": n as i32}),
    );
    ctx.state.append_oplog(op, &EntryExtras::NONE);
    if ctx.state.dbs.get(db).is_some_and(|d| d.is_empty()) {
        ctx.state.dbs.remove(db);
    }
    let ns = format!("{db}.{coll}");
    ctx.state.cursors.retain(|_, cur| cur.ns != ns);
    Some(indexes)
}

pub fn drop(ctx: &mut Ctx, body: &Document) -> ServerResult<Reply> {
    no_ddl_in_txn(ctx, "drop")?;
    let coll = coll_name(body, "drop")?;
    let db = ctx.db.clone();
    if format!("{db}.{coll}") == OPLOG_NS {
        return Err(ServerError::illegal_operation(
            "can't drop live oplog while replicating",
        ));
    }
    match drop_collection(ctx, &db, &coll) {
        Some(n) => Ok(Reply::Doc(
            doc! {"nIndexesWas": n as i32, "ns": format!("{db}.{coll}")},
        )),
        None => Ok(Reply::Doc(Document::new())),
    }
}

pub fn drop_database(ctx: &mut Ctx, _body: &Document) -> ServerResult<Reply> {
    no_ddl_in_txn(ctx, "dropDatabase")?;
    let db = ctx.db.clone();
    if db == "local" || db == "admin" || db == "config" {
        return Err(ServerError::illegal_operation(format!(
            "Dropping the '{db}' database is prohibited."
        )));
    }
    let Some(colls) = ctx
        .state
        .dbs
        .get(&db)
        .map(|d| d.keys().cloned().collect::<Vec<_>>())
    else {
        return Ok(Reply::Doc(Document::new()));
    };
    for coll in colls {
        drop_collection(ctx, &db, &coll);
    }
    ctx.state.dbs.remove(&db);
    let op = OpRecord::new(
        "c",
        format!("{db}.$cmd"),
        None,
        doc! {"dropDatabase": 1},
        None,
    );
    ctx.state.append_oplog(op, &EntryExtras::NONE);
    Ok(Reply::Doc(doc! {"dropped": db}))
}

pub fn rename_collection(ctx: &mut Ctx, body: &Document) -> ServerResult<Reply> {
    no_ddl_in_txn(ctx, "renameCollection")?;
    if ctx.db != "admin" {
        return Err(ServerError::new(
            ErrorCode::Unauthorized,
            "renameCollection may only be run against the admin database.",
        ));
    }
    let from = body
        .get_str("renameCollection")
        .map_err(|_| ServerError::type_mismatch("'renameCollection' must be a string"))?
        .to_string();
    let to = body
        .get_str("to")
        .map_err(|_| ServerError::type_mismatch("'to' must be a string"))?
        .to_string();
    let drop_target = bool_arg(body, "dropTarget", false);
    let (fdb, fcoll) = split_ns(&from);
    let (tdb, tcoll) = split_ns(&to);
    validate_db_name(tdb)?;
    validate_coll_name(tdb, tcoll)?;
    if from == OPLOG_NS || to == OPLOG_NS {
        return Err(ServerError::illegal_operation("can't rename the oplog"));
    }
    if fdb != tdb {
        return Err(ServerError::new(
            ErrorCode::CommandNotSupported,
            "renaming across databases is not supported by the embedded server",
        ));
    }
    if ctx.state.coll(fdb, fcoll).is_none() {
        return Err(ServerError::namespace_not_found(
            "Source collection does not exist",
        ));
    }
    let mut o = doc! {"renameCollection": from.clone(), "to": to.clone(), "stayTemp": false};
    let mut o2 = None;
    if let Some(target) = ctx.state.coll(tdb, tcoll) {
        if !drop_target {
            return Err(ServerError::namespace_exists("target namespace exists"));
        }
        o.insert("dropTarget", target.uuid);
        o2 = Some(doc! {"numRecords": target.len() as i32});
    }
    let mut c = ctx.state.dbs.get_mut(fdb).unwrap().remove(fcoll).unwrap();
    let uuid = c.uuid;
    std::sync::Arc::make_mut(&mut c).ns = to.clone();
    let replaced = ctx
        .state
        .dbs
        .entry(tdb.to_string())
        .or_default()
        .insert(tcoll.to_string(), c);
    if let Some(old) = replaced {
        ctx.state.dropped_bytes += old.data_size + old.superseded_bytes;
    }
    ctx.state.cursors.retain(|_, cur| cur.ns != from);
    let op = OpRecord::new("c", format!("{fdb}.$cmd"), Some(uuid), o, o2);
    ctx.state.append_oplog(op, &EntryExtras::NONE);
    Ok(Reply::Doc(Document::new()))
}

fn list_reply(ctx: &mut Ctx, ns: String, docs: Vec<Document>) -> ServerResult<Reply> {
    let source = Source::Buffered(docs.into_iter().map(Arc::new).collect());
    let cursor = Cursor {
        ns,
        source,
        projection: None,
        limit_remaining: None,
        batch_size: None,
        life: Default::default(),
        majority: false,
    };
    cursor_reply(ctx.state, cursor, usize::MAX, false)
}

pub fn list_collections(ctx: &mut Ctx, body: &Document) -> ServerResult<Reply> {
    let db = ctx.db.clone();
    let name_only = bool_arg(body, "nameOnly", false);
    let filter = doc_arg(body, "filter")?.cloned().unwrap_or_default();
    let matcher = Matcher::new(&filter)?;
    let mut docs = Vec::new();
    if let Some(colls) = ctx.state.dbs.get(&db) {
        for (name, c) in colls {
            let full = doc! {
                "name": name.clone(), "type": "collection", "options": c.options.clone(),
                "info": {"readOnly": false, "uuid": c.uuid},
                "idIndex": Collection::id_index_spec(),
            };
            if matcher.matches(&full) {
                docs.push(if name_only {
                    doc! {"name": name.clone(), "type": "collection"}
                } else {
                    full
                });
            }
        }
    }
    list_reply(ctx, format!("{db}.$cmd.listCollections"), docs)
}

pub fn list_indexes(ctx: &mut Ctx, body: &Document) -> ServerResult<Reply> {
    let coll = coll_name(body, "listIndexes")?;
    let db = ctx.db.clone();
    let specs = ctx
        .view(&db, &coll)
        .map(|c| c.index_specs())
        .ok_or_else(|| {
            ServerError::namespace_not_found(format!("ns does not exist: {db}.{coll}"))
        })?;
    list_reply(ctx, format!("{db}.{coll}"), specs)
}

pub fn list_databases(ctx: &mut Ctx, body: &Document) -> ServerResult<Reply> {
    let name_only = bool_arg(body, "nameOnly", false);
    let filter = doc_arg(body, "filter")?.cloned().unwrap_or_default();
    let matcher = Matcher::new(&filter)?;
    let mut total = 0i64;
    let mut out = Vec::new();
    for (name, colls) in &ctx.state.dbs {
        let size: i64 = colls.values().map(|c| 8192 + c.len() as i64 * 64).sum();
        let full = doc! {"name": name.clone(), "sizeOnDisk": size, "empty": colls.values().all(|c| c.is_empty())};
        if matcher.matches(&full) {
            total += size;
            out.push(if name_only {
                doc! {"name": name.clone()}
            } else {
                full
            });
        }
    }
    let mut reply = doc! {"databases": out};
    if !name_only {
        reply.insert("totalSize", total);
        reply.insert("totalSizeMb", total / (1024 * 1024));
    }
    Ok(Reply::Doc(reply))
}

fn index_name(key: &Document) -> String {
    key.iter()
        .map(|(k, v)| {
            format!(
                "{k}_{}",
                match v {
                    Bson::Int32(i) => i.to_string(),
                    Bson::Int64(i) => i.to_string(),
                    Bson::Double(d) => (*d as i64).to_string(),
                    Bson::String(s) => s.clone(),
                    other => other.to_string(),
                }
            )
        })
        .collect::<Vec<_>>()
        .join("_")
}

pub fn create_indexes(ctx: &mut Ctx, body: &Document) -> ServerResult<Reply> {
    let coll = coll_name(body, "createIndexes")?;
    let db = ctx.db.clone();
    let specs = match body.get("indexes") {
        Some(Bson::Array(a)) if !a.is_empty() => a.clone(),
        _ => {
            return Err(ServerError::failed_to_parse(
                "Must specify at least one index to create",
            ))
        }
    };
    let created_collection = ctx.view(&db, &coll).is_none();
    let in_txn = ctx.in_txn();
    let c = ctx.coll_for_write(&db, &coll, true)?.unwrap();
    let before = c.index_specs().len() as i32;
    let was_empty = c.is_empty();
    let uuid = c.uuid;
    let mut new_specs = Vec::new();
    for spec in specs {
        let Bson::Document(raw) = spec else {
            return Err(ServerError::type_mismatch(
                "'indexes' must be an array of documents",
            ));
        };
        let key = raw
            .get_document("key")
            .map_err(|_| {
                ServerError::failed_to_parse("Error in specification: the 'key' field is required")
            })?
            .clone();
        let name = raw
            .get_str("name")
            .map(|s| s.to_string())
            .unwrap_or_else(|_| index_name(&key));
        // Stored spec: v, key, name, then the remaining options in the order given.
        let mut stored = doc! {"v": 2, "key": key.clone(), "name": name.clone()};
        for (k, v) in &raw {
            if !matches!(k.as_str(), "v" | "key" | "name" | "ns" | "background") {
                stored.insert(k.clone(), v.clone());
            }
        }
        if name == "_id_" || key == doc! {"_id": 1} {
            continue;
        }
        if let Some(existing) = c.indexes.iter().find(|i| i.name == name) {
            if existing.spec == stored {
                continue;
            }
            if existing.key != key {
                return Err(ServerError::new(ErrorCode::IndexKeySpecsConflict, format!("An existing index has the same name as the requested index. When index names are not specified, they are auto generated and can cause conflicts. Please refer to our documentation. Requested index: {stored}, existing index: {}", existing.spec)));
            }
            return Err(ServerError::new(ErrorCode::IndexOptionsConflict, format!("An equivalent index already exists with the same name but different options. Requested index: {stored}, existing index: {}", existing.spec)));
        }
        if let Some(existing) = c.indexes.iter().find(|i| i.key == key) {
            return Err(ServerError::new(ErrorCode::IndexOptionsConflict, format!("An equivalent index already exists with a different name and options. Requested index: {stored}, existing index: {}", existing.spec)));
        }
        c.add_index(Index::new(stored.clone())?)?;
        new_specs.push(stored);
    }
    let after = c.index_specs().len() as i32;
    for spec in &new_specs {
        if was_empty || in_txn {
            let mut o = doc! {"createIndexes": coll.clone()};
            for (k, v) in spec {
                o.insert(k.clone(), v.clone());
            }
            ctx.log(
                OpRecord::new("c", format!("{db}.$cmd"), Some(uuid), o, None),
                false,
            );
        }
    }
    if !new_specs.is_empty() && !was_empty && !in_txn {
        // Non-empty collection: a two-phase build, startIndexBuild then commitIndexBuild.
        let build = bson::Uuid::new();
        for phase in ["startIndexBuild", "commitIndexBuild"] {
            let o =
                doc! {phase: coll.clone(), "indexBuildUUID": build, "indexes": new_specs.clone()};
            ctx.log(
                OpRecord::new("c", format!("{db}.$cmd"), Some(uuid), o, None),
                false,
            );
        }
    }
    let mut reply = doc! {"numIndexesBefore": before, "numIndexesAfter": after, "createdCollectionAutomatically": created_collection};
    if new_specs.is_empty() {
        reply.insert("note", "all indexes already exist");
    }
    Ok(Reply::Doc(reply))
}

pub fn drop_indexes(ctx: &mut Ctx, body: &Document) -> ServerResult<Reply> {
    no_ddl_in_txn(ctx, "dropIndexes")?;
    let coll = coll_name(
        body,
        body.keys()
            .next()
            .map(|k| k.as_str())
            .unwrap_or("dropIndexes"),
    )?;
    let db = ctx.db.clone();
    let index = body.get("index").cloned().ok_or_else(|| {
        ServerError::failed_to_parse(
            "BSON field 'dropIndexes.index' is missing but a required field",
        )
    })?;
    let c = ctx
        .state
        .coll_mut(&db, &coll)
        .ok_or_else(|| ServerError::namespace_not_found(format!("ns not found {db}.{coll}")))?;
    let was = c.index_specs().len() as i32;
    let targets: Vec<String> = match &index {
        Bson::String(s) if s == "*" => c.indexes.iter().map(|i| i.name.clone()).collect(),
        Bson::String(s) => vec![s.clone()],
        Bson::Array(names) => names
            .iter()
            .filter_map(|n| n.as_str().map(|s| s.to_string()))
            .collect(),
        Bson::Document(key) => match c.indexes.iter().find(|i| &i.key == key) {
            Some(i) => vec![i.name.clone()],
            None => {
                return Err(ServerError::new(
                    ErrorCode::IndexNotFound,
                    format!("can't find index with key: {key}"),
                ))
            }
        },
        _ => {
            return Err(ServerError::type_mismatch(
                "'index' must be a string, document or array",
            ))
        }
    };
    for name in &targets {
        if name == "_id_" {
            return Err(ServerError::invalid_options("cannot drop _id index"));
        }
        if !c.indexes.iter().any(|i| &i.name == name) {
            return Err(ServerError::new(
                ErrorCode::IndexNotFound,
                format!("index not found with name [{name}]"),
            ));
        }
    }
    let uuid = c.uuid;
    let mut dropped = Vec::new();
    for name in &targets {
        let pos = c.indexes.iter().position(|i| &i.name == name).unwrap();
        dropped.push(c.indexes.remove(pos).spec);
    }
    for spec in dropped {
        let name = spec.get_str("name").unwrap_or_default().to_string();
        let op = OpRecord::new(
            "c",
            format!("{db}.$cmd"),
            Some(uuid),
            doc! {"dropIndexes": coll.clone(), "index": name},
            Some(spec),
        );
        ctx.state.append_oplog(op, &EntryExtras::NONE);
    }
    Ok(Reply::Doc(doc! {"nIndexesWas": was}))
}
