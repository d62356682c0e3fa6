//! `validate`: checks a collection's records and the entries of its unique indexes (the only
//! index entries this server keeps; other indexes are catalog entries, so their key counts are
//! the document counts), and answers in mongod's format. `background: true` is refused as mongod
//! refuses it on the inMemory storage engine.

use super::ctx::Ctx;
use super::util::{bool_arg, coll_name};
use super::Reply;
use crate::server::error::{ServerError, ServerResult};
use bson::{doc, Bson, Document};

pub fn validate(ctx: &mut Ctx, body: &Document) -> ServerResult<Reply> {
    let coll = coll_name(body, "validate")?;
    let db = ctx.db.clone();
    let ns = format!("{db}.{coll}");
    if bool_arg(body, "background", false) {
        return Err(ServerError::location(115, format!("Running validate on collection {ns} with {{ background: true }} is not supported on the inMemory storage engine"),
        ));
    }
    let Some(c) = ctx.view(&db, &coll) else {
        return Err(ServerError::namespace_not_found(format!(
            "Collection '{ns}' does not exist to validate."
        )));
    };
    let nrecords = c.len() as i64;
    let mut errors: Vec<Bson> = Vec::new();
    let mut keys = Document::new();
    let mut details = Document::new();
    if c.has_id_index {
        if c.id_index.len() as i64 != nrecords {
            errors.push(Bson::String(format!(
                "index _id_ has {} entries for {nrecords} records",
                c.id_index.len()
            )));
        }
        keys.insert("_id_", c.id_index.len() as i64);
        details.insert("_id_", doc! {"valid": c.id_index.len() as i64 == nrecords});
    }
    for index in &c.indexes {
        let (count, valid) = if index.unique {
            let dangling = index
                .entries
                .values()
                .filter(|rid| !c.records.contains_key(*rid))
                .count();
            if dangling > 0 {
                errors.push(Bson::String(format!(
                    "index {} has {dangling} entries for missing records",
                    index.name
                )));
            }
            (index.entries.len() as i64, dangling == 0)
        } else {
            (nrecords, true)
        };
        keys.insert(index.name.clone(), count);
        details.insert(index.name.clone(), doc! {"valid": valid});
    }
    let valid = errors.is_empty();
    Ok(Reply::Doc(doc! {
        "ns": ns,
        "uuid": c.uuid,
        "nInvalidDocuments": 0i64,
        "nNonCompliantDocuments": 0i64,
        "nrecords": nrecords,
        "nIndexes": keys.len() as i32,
        "keysPerIndex": keys,
        "indexDetails": details,
        "valid": valid,
        "repaired": false,
        "warnings": Vec::<Bson>::new(),
        "errors": errors,
        "extraIndexEntries": Vec::<Bson>::new(),
        "missingIndexEntries": Vec::<Bson>::new(),
        "corruptRecords": Vec::<Bson>::new(),
    }))
}
