//! TEMPORARY interface stub, replaced by the update engine module.
use crate::server::error::{ServerError, ServerResult};
use bson::{doc, Bson, Document};

pub struct UpdateContext {
    pub inserting: bool,
    pub now: bson::DateTime,
    pub now_ts: bson::Timestamp,
}
pub struct UpdateOutcome {
    pub modified: bool,
    pub oplog_o: Document,
}
pub struct UpdateSpec(Document, bool);
impl UpdateSpec {
    pub fn parse(update: &Document, _af: Option<&[Document]>) -> ServerResult<UpdateSpec> {
        let repl = !update.keys().any(|k| k.starts_with('$'));
        Ok(UpdateSpec(update.clone(), repl))
    }
    pub fn is_replacement(&self) -> bool {
        self.1
    }
    pub fn apply(&self, doc: &mut Document, _ctx: &UpdateContext) -> ServerResult<UpdateOutcome> {
        if self.1 {
            let id = doc.get("_id").cloned();
            let mut n = Document::new();
            if let Some(id) = id {
                n.insert("_id", id);
            }
            for (k, v) in &self.0 {
                if k != "_id" {
                    n.insert(k.clone(), v.clone());
                }
            }
            let modified = &n != doc;
            *doc = n.clone();
            return Ok(UpdateOutcome {
                modified,
                oplog_o: n,
            });
        }
        let mut u = Document::new();
        let mut i = Document::new();
        if let Ok(set) = self.0.get_document("$set") {
            for (k, v) in set {
                if doc.get(k) == Some(v) {
                    continue;
                }
                if doc.contains_key(k) {
                    u.insert(k.clone(), v.clone());
                } else {
                    i.insert(k.clone(), v.clone());
                }
                doc.insert(k.clone(), v.clone());
            }
        }
        if let Ok(inc) = self.0.get_document("$inc") {
            for (k, v) in inc {
                let cur = doc.get(k).cloned().unwrap_or(Bson::Int32(0));
                let nv = match (cur, v) {
                    (Bson::Int32(a), Bson::Int32(b)) => Bson::Int32(a + b),
                    (Bson::Int64(a), Bson::Int64(b)) => Bson::Int64(a + b),
                    (_, _) => return Err(ServerError::type_mismatch("stub $inc")),
                };
                if doc.contains_key(k) {
                    u.insert(k.clone(), nv.clone());
                } else {
                    i.insert(k.clone(), nv.clone());
                }
                doc.insert(k.clone(), nv);
            }
        }
        let mut diff = Document::new();
        if !u.is_empty() {
            diff.insert("u", u);
        }
        if !i.is_empty() {
            diff.insert("i", i);
        }
        let modified = !diff.is_empty();
        Ok(UpdateOutcome {
            modified,
            oplog_o: doc! {"$v": 2, "diff": diff},
        })
    }
}
pub fn upsert_seed(query: &Document) -> ServerResult<Document> {
    Ok(query
        .iter()
        .filter(|(k, v)| {
            !k.starts_with('$')
                && !matches!(v, Bson::Document(d) if d.keys().any(|k| k.starts_with('$')))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect())
}
