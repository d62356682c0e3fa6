//! Write concerns a single-node replica set cannot satisfy: `w` above its one data-bearing
//! member, or a tag set it does not have. As on mongod, the write itself is done and the reply
//! carries a `writeConcernError` (UnsatisfiableWriteConcern 100, UnknownReplWriteConcern 79).

use bson::{doc, Bson, Document, RawDocumentBuf};

/// Commands that take a write concern (mongod's `supportsWriteConcern`).
pub fn supports_write_concern(body: &Document, cmd: &str) -> bool {
    match cmd {
        "insert" | "update" | "delete" | "findAndModify" | "findandmodify" | "create" | "drop"
        | "dropDatabase" | "createIndexes" | "dropIndexes" | "deleteIndexes"
        | "renameCollection" | "collMod" | "commitTransaction" | "abortTransaction" => true,
        "aggregate" => body
            .get_array("pipeline")
            .ok()
            .and_then(|p| p.last())
            .and_then(|s| s.as_document())
            .and_then(|s| s.keys().next())
            .is_some_and(|k| k == "$out" || k == "$merge"),
        _ => false,
    }
}

/// The `writeConcernError` for `body`'s write concern, if this server cannot satisfy it.
pub fn unsatisfiable(body: &Document) -> Option<Document> {
    let cmd = body.keys().next()?;
    // Statements inside a transaction wait for the commit's write concern instead.
    let in_txn = body.contains_key("autocommit")
        && !matches!(cmd.as_str(), "commitTransaction" | "abortTransaction");
    if in_txn || !supports_write_concern(body, cmd) {
        return None;
    }
    let wc = body.get_document("writeConcern").ok()?;
    let (code, name, msg) = match wc.get("w")? {
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => {
            let w = match wc.get("w")? {
                Bson::Int32(i) => *i as f64,
                Bson::Int64(i) => *i as f64,
                Bson::Double(d) => *d,
                _ => return None,
            };
            if w <= 1.0 {
                return None;
            }
            (
                100,
                "UnsatisfiableWriteConcern",
                "Not enough data-bearing nodes".to_string(),
            )
        }
        Bson::String(mode) if mode == "majority" => return None,
        Bson::String(mode) => (
            79,
            "UnknownReplWriteConcern",
            format!("No write concern mode named '{mode}' found in replica set configuration"),
        ),
        _ => return None,
    };
    let mut echoed = wc.clone();
    echoed.insert("provenance", "clientSupplied");
    Some(doc! {"code": code, "codeName": name, "errmsg": msg, "errInfo": {"writeConcern": echoed}})
}

/// Adds the `writeConcernError` of an unsatisfiable write concern to `reply`.
pub fn check(body: &Document, reply: &mut RawDocumentBuf) {
    if reply.get("writeConcernError").ok().flatten().is_some() {
        return;
    }
    if let Some(wce) = unsatisfiable(body) {
        if let Ok(raw) = RawDocumentBuf::from_document(&wce) {
            reply.append("writeConcernError", raw);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_one_node_cannot_do() {
        let w = |w: Bson| doc! {"insert": "c", "writeConcern": {"w": w}};
        assert!(unsatisfiable(&w(Bson::Int32(1))).is_none());
        assert!(unsatisfiable(&w(Bson::Int32(0))).is_none());
        assert!(unsatisfiable(&w(Bson::String("majority".into()))).is_none());
        assert_eq!(
            unsatisfiable(&w(Bson::Int32(2)))
                .unwrap()
                .get_i32("code")
                .unwrap(),
            100
        );
        assert_eq!(
            unsatisfiable(&w(Bson::String("dc".into())))
                .unwrap()
                .get_i32("code")
                .unwrap(),
            79
        );
        assert!(unsatisfiable(&doc! {"find": "c", "writeConcern": {"w": 2}}).is_none());
        let in_txn = doc! {"insert": "c", "autocommit": false, "writeConcern": {"w": 2}};
        assert!(unsatisfiable(&in_txn).is_none());
    }
}
