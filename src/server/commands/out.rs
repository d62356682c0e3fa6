//! The aggregation stages that write: `$out` and `$merge`, with the oplog entries MongoDB 7.0
//! writes for them.
//!
//! * `$out` (DocumentSourceOut): the results go into a new temporary collection
//!   `<db>.tmp.agg_out.<uuid>` (a `create` entry with the target's options and `temp: true`, its
//!   indexes as `createIndexes` entries, one `i` entry per document), which then replaces the
//!   target by `renameCollection` with `dropTarget` (the old target's UUID) and `stayTemp: false`.
//!   On failure the temporary collection is dropped and the target is left as it was.
//! * `$merge` (DocumentSourceMerge): each result becomes an ordinary write, logged as such:
//!   `whenMatched: "merge"` an update `{$set: <doc>}`, `"replace"` a replacement,
//!   `"keepExisting"` `{$setOnInsert: <doc>}`, a pipeline a pipeline update (with `$$new`, or
//!   the variables of `let`, evaluated against the document), and
//!   `whenNotMatched: "insert"` makes them upserts (`i` entries).

use super::catalog;
use super::ctx::Ctx;
use super::util::pipeline_stages;
use super::write::{insert_one, matching, update_docs};
use super::Reply;
use crate::server::error::{ErrorCode, ServerError, ServerResult};
use crate::server::query::Matcher;
use crate::server::state::{validate_coll_name, validate_db_name};
use crate::server::update::UpdateSpec;
use bson::{doc, Bson, Document};

/// Whether a stage is one of the writing stages (which must come last).
pub fn is_write_stage(stage: &Document) -> bool {
    matches!(
        stage.keys().next().map(String::as_str),
        Some("$out" | "$merge")
    )
}

/// Checks that a writing stage, if any, is the last one; returns the pipeline before it and it.
pub fn split_write_stage(pipeline: &[Document]) -> ServerResult<(&[Document], Option<&Document>)> {
    for (i, stage) in pipeline.iter().enumerate() {
        if is_write_stage(stage) && i + 1 != pipeline.len() {
            let name = stage.keys().next().unwrap();
            return Err(ServerError::location(
                40601,
                format!("{name} can only be the final stage in the pipeline"),
            ));
        }
    }
    match pipeline.split_last() {
        Some((last, rest)) if is_write_stage(last) => Ok((rest, Some(last))),
        _ => Ok((pipeline, None)),
    }
}

/// Runs a writing stage over the pipeline's results.
pub fn run_write_stage(ctx: &mut Ctx, stage: &Document, docs: Vec<Document>) -> ServerResult<()> {
    let (name, spec) = stage.iter().next().expect("a stage has one field");
    if ctx.in_txn() {
        return Err(ServerError::new(
            ErrorCode::OperationNotSupportedInTransaction,
            format!("{name} cannot be used in a transaction"),
        ));
    }
    match name.as_str() {
        "$out" => out(ctx, spec, docs),
        _ => merge(ctx, spec, docs),
    }
}

/// `{db, coll}` or a collection name (in the command's database).
fn target(ctx: &Ctx, spec: &Bson, stage: &str, coll_key: &str) -> ServerResult<(String, String)> {
    let (db, coll) = match spec {
        Bson::String(c) => (ctx.db.clone(), c.clone()),
        Bson::Document(d) => {
            let db = match d.get("db") {
                None => ctx.db.clone(),
                Some(Bson::String(s)) => s.clone(),
                Some(_) => {
                    return Err(ServerError::type_mismatch(format!(
                        "BSON field '{stage}.db' is the wrong type, expected type 'string'"
                    )))
                }
            };
            let coll = match d.get(coll_key) {
                Some(Bson::String(s)) => s.clone(),
                _ => {
                    return Err(ServerError::failed_to_parse(format!(
                        "BSON field '{stage}.{coll_key}' is missing but a required field"
                    )))
                }
            };
            (db, coll)
        }
        _ => {
            return Err(ServerError::location(
                16990,
                format!("{stage} only supports a string or object argument"),
            ))
        }
    };
    validate_db_name(&db)?;
    validate_coll_name(&db, &coll)?;
    if db == "local" || db == "admin" || db == "config" || coll.starts_with("system.") {
        return Err(ServerError::new(
            ErrorCode::InvalidNamespace,
            format!("Invalid {stage} target namespace, {db}.{coll}"),
        ));
    }
    Ok((db, coll))
}

fn out(ctx: &mut Ctx, spec: &Bson, docs: Vec<Document>) -> ServerResult<()> {
    let (db, coll) = target(ctx, spec, "$out", "coll")?;
    let existing = ctx.state.coll(&db, &coll).cloned();
    if existing.as_ref().is_some_and(|c| c.capped.is_some()) {
        return Err(ServerError::location(
            17152,
            format!("namespace '{db}.{coll}' is capped so it can't be used for $out"),
        ));
    }
    let temp = format!("tmp.agg_out.{}", bson::Uuid::new());
    let mut options = existing
        .as_ref()
        .map(|c| c.options.clone())
        .unwrap_or_default();
    options.insert("temp", true);
    ctx.state.create_collection(&db, &temp, options)?;
    let bypass = ctx.bypass_validation;
    let filled = (|| -> ServerResult<()> {
        let mut sub = Ctx::new(&mut *ctx.state, &db);
        sub.bypass_validation = bypass;
        let indexes: Vec<Bson> = existing
            .iter()
            .flat_map(|c| c.indexes.iter().map(|i| Bson::Document(i.spec.clone())))
            .collect();
        if !indexes.is_empty() {
            catalog::create_indexes(&mut sub, &doc! {"createIndexes": &temp, "indexes": indexes})?;
        }
        for d in &docs {
            insert_one(&mut sub, &db, &temp, d)?;
        }
        let mut admin = Ctx::new(&mut *sub.state, "admin");
        catalog::rename_collection(
            &mut admin,
            &doc! {
                "renameCollection": format!("{db}.{temp}"),
                "to": format!("{db}.{coll}"),
                "dropTarget": true,
            },
        )?;
        Ok(())
    })();
    if let Err(e) = filled {
        let mut sub = Ctx::new(&mut *ctx.state, &db);
        let _ = catalog::drop(&mut sub, &doc! {"drop": &temp});
        return Err(e);
    }
    // The renamed collection is no longer temporary (`stayTemp: false`).
    if let Some(c) = ctx.state.coll_mut(&db, &coll) {
        c.options.remove("temp");
    }
    Ok(())
}

enum WhenMatched {
    Replace,
    Merge,
    KeepExisting,
    Fail,
    Pipeline(Vec<Document>),
}

fn merge(ctx: &mut Ctx, spec: &Bson, docs: Vec<Document>) -> ServerResult<()> {
    let (into, opts) = match spec {
        Bson::String(_) => (spec.clone(), Document::new()),
        Bson::Document(d) => match d.get("into") {
            Some(into) => (into.clone(), d.clone()),
            None => {
                return Err(ServerError::failed_to_parse(
                    "BSON field '$merge.into' is missing but a required field",
                ))
            }
        },
        _ => {
            return Err(ServerError::location(
                51182,
                "$merge only supports a string or object argument",
            ))
        }
    };
    let (db, coll) = target(ctx, &into, "$merge.into", "coll")?;
    for key in opts.keys() {
        if !matches!(
            key.as_str(),
            "into" | "on" | "let" | "whenMatched" | "whenNotMatched"
        ) {
            return Err(ServerError::location(
                40415,
                format!("BSON field '$merge.{key}' is an unknown field."),
            ));
        }
    }
    let on: Vec<String> = match opts.get("on") {
        None => vec!["_id".to_string()],
        Some(Bson::String(s)) => vec![s.clone()],
        Some(Bson::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|f| match f {
                Bson::String(s) => Ok(s.clone()),
                _ => Err(ServerError::location(
                    51134,
                    "$merge 'on' array elements must be strings",
                )),
            })
            .collect::<ServerResult<_>>()?,
        Some(_) => {
            return Err(ServerError::location(
                51186,
                "$merge 'on' field must be either a string or an array of strings",
            ))
        }
    };
    if on != ["_id"] {
        // mongod needs a unique index on exactly the `on` fields to know a match is unique.
        let has_index = ctx.state.coll(&db, &coll).is_some_and(|c| {
            c.indexes.iter().any(|i| {
                i.unique && {
                    let mut keys: Vec<&String> = i.key.keys().collect();
                    let mut want: Vec<&String> = on.iter().collect();
                    keys.sort();
                    want.sort();
                    keys == want
                }
            })
        });
        if !has_index {
            return Err(ServerError::location(
                51183,
                "Cannot find index to verify that join fields will be unique",
            ));
        }
    }
    let when_matched = match opts.get("whenMatched") {
        None => WhenMatched::Merge,
        Some(Bson::String(s)) => match s.as_str() {
            "replace" => WhenMatched::Replace,
            "merge" => WhenMatched::Merge,
            "keepExisting" => WhenMatched::KeepExisting,
            "fail" => WhenMatched::Fail,
            other => {
                return Err(ServerError::bad_value(format!(
                "Enumeration value '{other}' for field '$merge.whenMatched' is not a valid value."
            )))
            }
        },
        Some(Bson::Array(stages)) => WhenMatched::Pipeline(pipeline_stages(stages)?),
        Some(_) => {
            return Err(ServerError::type_mismatch(
                "BSON field '$merge.whenMatched' is the wrong type",
            ))
        }
    };
    let (upsert, fail_unmatched) = match opts.get("whenNotMatched") {
        None => (true, false),
        Some(Bson::String(s)) => match s.as_str() {
            "insert" => (true, false),
            "discard" => (false, false),
            "fail" => (false, true),
            other => {
                return Err(ServerError::bad_value(format!(
                    "Enumeration value '{other}' for field '$merge.whenNotMatched' is not a valid value."
                )))
            }
        },
        Some(_) => {
            return Err(ServerError::type_mismatch(
                "BSON field '$merge.whenNotMatched' is the wrong type",
            ))
        }
    };
    // `let` is evaluated for each document; without it `$$new` is the document.
    let user_let = match opts.get("let") {
        None | Some(Bson::Null) => None,
        Some(Bson::Document(d)) => {
            super::vars::evaluate_on(d, &Document::new())?;
            Some(d.clone())
        }
        Some(_) => {
            return Err(ServerError::type_mismatch(
                "BSON field '$merge.let' is the wrong type, expected type 'object'",
            ))
        }
    };
    if let WhenMatched::Pipeline(stages) = &when_matched {
        // Parsed once up front with placeholders for the variables it may use.
        let placeholders: Document = match &user_let {
            Some(l) => l.keys().map(|k| (k.clone(), Bson::Null)).collect(),
            None => doc! {"new": {}},
        };
        crate::server::update::pipeline::validate(&super::vars::substitute_pipeline(
            stages,
            &placeholders,
        ))?;
    }
    for mut d in docs {
        if !d.contains_key("_id") {
            d = super::write::with_id_first(d)?;
        }
        let mut query = Document::new();
        for field in &on {
            match crate::server::query::get_path(&d, field) {
                Some(v) if !matches!(v, Bson::Null | Bson::Undefined | Bson::Array(_)) => {
                    query.insert(field.clone(), v.clone());
                }
                _ => return Err(ServerError::location(
                    51132,
                    "$merge write error: 'on' field cannot be missing, null, undefined or an array",
                )),
            }
        }
        let matcher = Matcher::new(&query)?;
        let rids = matching(ctx, &db, &coll, &matcher, true);
        if rids.is_empty() {
            if fail_unmatched {
                return Err(ServerError::new(ErrorCode::MergeStageNoMatchingDocument,
                    "$merge could not find a matching document in the target collection for at least one document in the source collection",
                ));
            }
            if !upsert {
                continue;
            }
        }
        let spec = match &when_matched {
            WhenMatched::Fail => {
                insert_one(ctx, &db, &coll, &d)?;
                continue;
            }
            WhenMatched::Replace => UpdateSpec::parse(&d, None)?,
            WhenMatched::Merge => UpdateSpec::parse(&doc! {"$set": d.clone()}, None)?,
            WhenMatched::KeepExisting => {
                UpdateSpec::parse(&doc! {"$setOnInsert": d.clone()}, None)?
            }
            WhenMatched::Pipeline(stages) => {
                let vars = match &user_let {
                    Some(l) => super::vars::evaluate_on(l, &d)?,
                    None => doc! {"new": d.clone()},
                };
                let stages = super::vars::substitute_pipeline(stages, &vars);
                if rids.is_empty() {
                    // No match: the new document is inserted as it is.
                    insert_one(ctx, &db, &coll, &d)?;
                    continue;
                }
                UpdateSpec::parse_bson(
                    &Bson::Array(stages.into_iter().map(Bson::Document).collect()),
                    None,
                )?
            }
        };
        update_docs(ctx, &db, &coll, rids, &query, &spec, upsert, false)?;
    }
    Ok(())
}

/// The reply of an aggregate whose last stage wrote: an exhausted cursor with no documents.
pub fn empty_cursor(ns: &str) -> ServerResult<Reply> {
    super::read::batch_reply("firstBatch", bson::RawArrayBuf::new(), 0, ns)
}
