//! The `$collStats` stage (first stage of an aggregate on a collection): what mongod's
//! `src/mongo/db/pipeline/document_source_coll_stats.cpp` and `src/mongo/db/stats/storage_stats.cpp`
//! report, for the options this server can answer: `storageStats` (sizes, counts, and for a
//! capped collection such as the oplog its `max` and `maxSize`, which tools read to tell how
//! much history the oplog holds) and `count`. Sizes are the documents' BSON bytes: storage here
//! is memory, so `storageSize` is the data size and nothing is free.

use super::ctx::Ctx;
use crate::server::error::{ServerError, ServerResult};
use bson::{doc, Bson, DateTime, Document};

/// A count as mongod's `appendNumber` writes it: an int when it fits, else a long.
fn number(n: u64) -> Bson {
    match i32::try_from(n) {
        Ok(i) => Bson::Int32(i),
        Err(_) => Bson::Int64(n.min(i64::MAX as u64) as i64),
    }
}

fn storage_stats(ctx: &Ctx, db: &str, coll: &str, spec: &Document) -> ServerResult<Document> {
    let scale = match spec.get("scale") {
        None => 1,
        Some(v) => match super::util::as_i64(v) {
            Some(s) if s >= 1 => s as u64,
            _ => {
                return Err(ServerError::bad_value(
                    "BSON field 'scale' value must be >= 1",
                ))
            }
        },
    };
    let Some(c) = ctx.view(db, coll) else {
        return Err(ServerError::namespace_not_found(format!(
            "Unable to retrieve storageStats in $collStats stage :: caused by :: Collection [{db}.{coll}] not found."
        )));
    };
    let count = c.len() as u64;
    let mut out = doc! {"size": number(c.data_size / scale), "count": number(count)};
    if let Some(average) = c.data_size.checked_div(count) {
        out.insert("avgObjSize", number(average));
    }
    out.insert("numOrphanDocs", 0);
    out.insert("storageSize", number(c.data_size / scale));
    out.insert("freeStorageSize", 0);
    out.insert("capped", c.capped.is_some());
    if let Some(limits) = &c.capped {
        out.insert("max", number(limits.max.unwrap_or(0)));
        out.insert("maxSize", number(limits.size / scale));
    }
    let names: Vec<String> = c
        .index_specs()
        .iter()
        .filter_map(|s| s.get_str("name").ok().map(str::to_string))
        .collect();
    out.insert("nindexes", names.len() as i32);
    out.insert("indexDetails", Document::new());
    out.insert("indexBuilds", Vec::<Bson>::new());
    out.insert("totalIndexSize", 0);
    let mut sizes = Document::new();
    for n in names {
        sizes.insert(n, 0);
    }
    out.insert("indexSizes", sizes);
    out.insert("totalSize", number(c.data_size / scale));
    out.insert("scaleFactor", number(scale));
    Ok(out)
}

/// The one document `{$collStats: spec}` produces for `db.coll`.
pub fn coll_stats(ctx: &Ctx, db: &str, coll: &str, spec: &Bson) -> ServerResult<Document> {
    let Bson::Document(spec) = spec else {
        return Err(ServerError::failed_to_parse(
            "$collStats must take a nested object but found a non-object value",
        ));
    };
    let mut out = doc! {
        "ns": format!("{db}.{coll}"),
        "host": "localhost",
        "localTime": DateTime::now(),
    };
    for (k, v) in spec {
        match k.as_str() {
            "storageStats" => {
                let Bson::Document(s) = v else {
                    return Err(ServerError::type_mismatch(
                        "BSON field '$collStats.storageStats' is the wrong type, expected type 'object'",
                    ));
                };
                out.insert("storageStats", storage_stats(ctx, db, coll, s)?);
            }
            "count" => {
                let n = ctx.view(db, coll).map_or(0, |c| c.len() as u64);
                out.insert("count", number(n));
            }
            // Latency and query statistics are not kept by this server: empty sections.
            "latencyStats" => {
                out.insert("latencyStats", doc! {});
            }
            "queryExecStats" => {
                out.insert("queryExecStats", doc! {});
            }
            other => {
                return Err(ServerError::failed_to_parse(format!(
                    "BSON field '$collStats.{other}' is an unknown field."
                )))
            }
        }
    }
    Ok(out)
}
