//! DDL entries turned into the commands that redo them on a destination, idempotently: a
//! `create` of an existing collection, a `drop` of a missing one, an index that is already gone
//! count as done, so a DDL step interrupted by a crash can simply run again. Pure logic.

use super::plan::PlanError;
use crate::oplog::{CommandKind, DdlKind, Entry};
use bson::{doc, Bson, Document, RawDocument};

/// A DDL command as a checkpoint stores it while it runs (its shape belongs to `__mmm`).
pub use crate::store::DdlCommand;

fn split(ns: &str) -> (String, String) {
    let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
    (db.to_string(), coll.to_string())
}

fn to_doc(raw: &RawDocument) -> Result<Document, PlanError> {
    Document::try_from(raw).map_err(|e| PlanError(format!("malformed command entry: {e}")))
}

/// The command redoing a DDL entry on the destination, with namespaces renamed by `map` (which
/// returns `None` for namespaces the link does not carry). `Ok(None)`: nothing to do (a
/// namespace outside the link, or an entry with no effect of its own such as startIndexBuild).
pub fn translate(
    op: &RawDocument,
    map: impl Fn(&str) -> Option<String>,
) -> Result<Option<DdlCommand>, PlanError> {
    let entry = Entry::new(op);
    let Some(CommandKind::Ddl(kind)) = entry.command_kind()? else {
        return Ok(None);
    };
    let o = to_doc(entry.o()?)?;
    let target = entry.command_target_ns()?;
    let mapped = |ns: &Option<String>| ns.as_deref().and_then(&map).map(|n| split(&n));
    let command = match kind {
        DdlKind::Create => {
            let Some((db, coll)) = mapped(&target) else {
                return Ok(None);
            };
            let mut body = doc! {"create": coll};
            for (k, v) in o.iter().skip(1) {
                if k != "idIndex" {
                    body.insert(k.clone(), v.clone());
                }
            }
            DdlCommand {
                db,
                body,
                done_codes: vec![48],
            }
        }
        DdlKind::Drop => {
            let Some((db, coll)) = mapped(&target) else {
                return Ok(None);
            };
            DdlCommand {
                db,
                body: doc! {"drop": coll},
                done_codes: vec![26],
            }
        }
        DdlKind::CreateIndexes => {
            let Some((db, coll)) = mapped(&target) else {
                return Ok(None);
            };
            let spec: Document = o
                .iter()
                .skip(1)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            DdlCommand {
                db,
                body: doc! {"createIndexes": coll, "indexes": [spec]},
                done_codes: vec![],
            }
        }
        DdlKind::CommitIndexBuild => {
            let Some((db, coll)) = mapped(&target) else {
                return Ok(None);
            };
            let indexes = o.get_array("indexes").cloned().unwrap_or_default();
            DdlCommand {
                db,
                body: doc! {"createIndexes": coll, "indexes": indexes},
                done_codes: vec![],
            }
        }
        DdlKind::DropIndexes => {
            let Some((db, coll)) = mapped(&target) else {
                return Ok(None);
            };
            let index = o.get("index").cloned().unwrap_or(Bson::String("*".into()));
            DdlCommand {
                db,
                body: doc! {"dropIndexes": coll, "index": index},
                done_codes: vec![26, 27],
            }
        }
        DdlKind::RenameCollection => {
            let to = o.get_str("to").ok().map(str::to_string);
            let (Some(from), Some(to)) = (
                target.as_deref().and_then(&map),
                to.as_deref().and_then(&map),
            ) else {
                return Ok(None);
            };
            let mut body = doc! {"renameCollection": from, "to": to};
            if o.contains_key("dropTarget") {
                body.insert("dropTarget", true);
            }
            DdlCommand {
                db: "admin".into(),
                body,
                done_codes: vec![26],
            }
        }
        DdlKind::DropDatabase => {
            let ns = entry.ns()?;
            let src_db = ns.split_once('.').map_or(ns, |(db, _)| db);
            // Only a link that carries whole databases maps a database.
            let Some(dst) = map(&format!("{src_db}.*")) else {
                return Ok(None);
            };
            let (db, coll) = split(&dst);
            if coll != "*" {
                return Ok(None);
            }
            DdlCommand {
                db,
                body: doc! {"dropDatabase": 1},
                done_codes: vec![],
            }
        }
        // Started or aborted builds change nothing; collMod and the rest are not replicated.
        _ => return Ok(None),
    };
    Ok(Some(command))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::RawDocumentBuf;

    fn raw(d: Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).unwrap()
    }

    fn rename_db(ns: &str) -> Option<String> {
        ns.strip_prefix("a.").map(|rest| format!("b.{rest}"))
    }

    #[test]
    fn create_drop_and_indexes_are_renamed_and_idempotent() {
        let create = raw(
            doc! {"op": "c", "ns": "a.$cmd", "o": {"create": "c", "capped": true, "size": 4096, "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}},
        );
        assert_eq!(
            translate(&create, rename_db).unwrap().unwrap(),
            DdlCommand {
                db: "b".into(),
                body: doc! {"create": "c", "capped": true, "size": 4096},
                done_codes: vec![48]
            }
        );
        let index = raw(
            doc! {"op": "c", "ns": "a.$cmd", "o": {"createIndexes": "c", "v": 2, "key": {"x": 1}, "name": "x_1", "unique": true}},
        );
        assert_eq!(
            translate(&index, rename_db).unwrap().unwrap().body,
            doc! {"createIndexes": "c", "indexes": [{"v": 2, "key": {"x": 1}, "name": "x_1", "unique": true}]}
        );
        let drop = raw(doc! {"op": "c", "ns": "a.$cmd", "o": {"drop": "c"}});
        assert_eq!(
            translate(&drop, rename_db).unwrap().unwrap().done_codes,
            vec![26]
        );
        let elsewhere = raw(doc! {"op": "c", "ns": "z.$cmd", "o": {"drop": "c"}});
        assert_eq!(translate(&elsewhere, rename_db).unwrap(), None);
    }

    #[test]
    fn rename_needs_both_ends_in_the_link_and_index_builds_commit_once() {
        let rename = raw(
            doc! {"op": "c", "ns": "a.$cmd", "o": {"renameCollection": "a.x", "to": "a.y", "stayTemp": false}},
        );
        assert_eq!(
            translate(&rename, rename_db).unwrap().unwrap(),
            DdlCommand {
                db: "admin".into(),
                body: doc! {"renameCollection": "b.x", "to": "b.y"},
                done_codes: vec![26]
            }
        );
        let out = raw(
            doc! {"op": "c", "ns": "a.$cmd", "o": {"renameCollection": "a.x", "to": "z.y", "stayTemp": false}},
        );
        assert_eq!(translate(&out, rename_db).unwrap(), None);
        let start = raw(
            doc! {"op": "c", "ns": "a.$cmd", "o": {"startIndexBuild": "x", "indexBuildUUID": bson::Uuid::new(), "indexes": [{"v": 2, "key": {"k": 1}, "name": "k_1"}]}},
        );
        assert_eq!(translate(&start, rename_db).unwrap(), None);
        let commit = raw(
            doc! {"op": "c", "ns": "a.$cmd", "o": {"commitIndexBuild": "x", "indexBuildUUID": bson::Uuid::new(), "indexes": [{"v": 2, "key": {"k": 1}, "name": "k_1"}]}},
        );
        assert_eq!(
            translate(&commit, rename_db).unwrap().unwrap().body,
            doc! {"createIndexes": "x", "indexes": [{"v": 2, "key": {"k": 1}, "name": "k_1"}]}
        );
    }
}
