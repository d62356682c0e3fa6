//! `__mmm.rejected`: ops a destination refused (a unique index, a validator, a document too
//! large, a missing privilege), journaled by links with `on_reject="journal"` instead of
//! stopping. Each is written in the transaction whose checkpoint moves past it, so an op is
//! either applied or journaled, exactly once.

use super::{MMM_DB, REJECTED};
use bson::{doc, Bson, DateTime, Document, Timestamp};
use mongodb::{Client, ClientSession};

/// One refused op, as journaled on the destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub link: String,
    /// Destination namespace the write was for.
    pub ns: String,
    /// `_id` of the document, when the write names one.
    pub id: Option<Bson>,
    /// The write statement as sent (an inserted document, an update or delete statement).
    pub statement: Document,
    /// MongoDB's error code, code name (empty when the reply has none) and message.
    pub code: i32,
    pub code_name: String,
    pub message: String,
    /// The source ts up to which the batch holding the op was read.
    pub source_ts: Timestamp,
}

impl Rejected {
    pub fn to_document(&self) -> Document {
        let mut d = doc! {
            "link": &self.link, "ns": &self.ns,
            "statement": self.statement.clone(),
            "code": self.code, "codeName": &self.code_name, "errmsg": &self.message,
            "source_ts": self.source_ts, "wall": DateTime::now(),
        };
        if let Some(id) = &self.id {
            d.insert("doc_id", id.clone());
        }
        d
    }

    pub fn from_document(d: &Document) -> Option<Rejected> {
        Some(Rejected {
            link: d.get_str("link").ok()?.to_string(),
            ns: d.get_str("ns").ok()?.to_string(),
            id: d.get("doc_id").cloned(),
            statement: d.get_document("statement").ok()?.clone(),
            code: d.get_i32("code").ok()?,
            code_name: d.get_str("codeName").unwrap_or_default().to_string(),
            message: d.get_str("errmsg").unwrap_or_default().to_string(),
            source_ts: d.get_timestamp("source_ts").ok()?,
        })
    }
}

/// Journals `rejected` in the transaction of `session`.
pub async fn write(
    client: &Client,
    session: &mut ClientSession,
    rejected: &[Rejected],
) -> Result<(), mongodb::error::Error> {
    if rejected.is_empty() {
        return Ok(());
    }
    client
        .database(MMM_DB)
        .collection::<Document>(REJECTED)
        .insert_many(rejected.iter().map(Rejected::to_document))
        .session(session)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejected_op_survives_its_document() {
        let r = Rejected {
            link: "a/db.c->b/db.c".into(),
            ns: "db.c".into(),
            id: Some(Bson::Int32(7)),
            statement: doc! {"_id": 7, "email": "x"},
            code: 11000,
            code_name: "DuplicateKey".into(),
            message: "E11000 duplicate key".into(),
            source_ts: Timestamp {
                time: 9,
                increment: 2,
            },
        };
        assert_eq!(Rejected::from_document(&r.to_document()), Some(r));
    }
}
