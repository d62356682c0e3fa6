//! `__mmm.verify`: where a verification of one pair of namespaces stands, so that a run that is
//! stopped or killed resumes where it was (see `replicate/verify.rs`). One document per pair,
//! on the pair's home server (the destination of the first link that joins them), `_id` the
//! pair's key (`a/db.coll<->b/db.coll`). Never replicated, like everything in `__mmm`.

use super::{StoreError, MMM_DB, VERIFY};
use bson::{doc, Bson, DateTime, Document};
use mongodb::Client;

/// A range of `_id`s, in MongoDB's order: after `after` (from the first when None) up to and
/// including `until` (to the last when None).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IdRange {
    pub after: Option<Bson>,
    pub until: Option<Bson>,
}

impl IdRange {
    fn to_document(&self) -> Document {
        let mut d = Document::new();
        if let Some(a) = &self.after {
            d.insert("after", a.clone());
        }
        if let Some(u) = &self.until {
            d.insert("until", u.clone());
        }
        d
    }

    fn from_document(d: &Document) -> IdRange {
        IdRange {
            after: d.get("after").cloned(),
            until: d.get("until").cloned(),
        }
    }
}

/// A verification of one pair, in progress or finished.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyProgress {
    /// The pair's key.
    pub target: String,
    /// When the run that this progress belongs to began.
    pub started: DateTime,
    /// The survey (the first pass, range by range) has compared every `_id` up to this one.
    pub after: Option<Bson>,
    /// The survey reached the end of the namespaces.
    pub surveyed: bool,
    /// Documents compared by the survey so far (the larger side, per range), over every run.
    pub compared: u64,
    /// Ranges whose hashes differed, to re-check once the links have caught up.
    pub suspects: Vec<IdRange>,
    /// Set when the run finished: its summary (what `status()` shows as the last result).
    pub finished: Option<Document>,
}

impl VerifyProgress {
    pub fn new(target: &str) -> VerifyProgress {
        VerifyProgress {
            target: target.to_string(),
            started: DateTime::now(),
            after: None,
            surveyed: false,
            compared: 0,
            suspects: Vec::new(),
            finished: None,
        }
    }

    pub fn to_document(&self) -> Document {
        let mut d = doc! {
            "_id": &self.target,
            "started": self.started,
            "surveyed": self.surveyed,
            "compared": self.compared as i64,
            "suspects": self.suspects.iter().map(|r| Bson::Document(r.to_document())).collect::<Vec<_>>(),
            "updated": DateTime::now(),
        };
        if let Some(a) = &self.after {
            d.insert("after", a.clone());
        }
        if let Some(f) = &self.finished {
            d.insert("finished", f.clone());
        }
        d
    }

    /// `None` for a document that is not a verification's progress.
    pub fn from_document(d: &Document) -> Option<VerifyProgress> {
        Some(VerifyProgress {
            target: d.get_str("_id").ok()?.to_string(),
            started: d.get_datetime("started").ok().copied()?,
            after: d.get("after").cloned(),
            surveyed: d.get_bool("surveyed").unwrap_or(false),
            compared: d.get_i64("compared").unwrap_or(0).max(0) as u64,
            suspects: d
                .get_array("suspects")
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r.as_document().map(IdRange::from_document))
                        .collect()
                })
                .unwrap_or_default(),
            finished: d.get_document("finished").ok().cloned(),
        })
    }
}

fn collection(client: &Client) -> mongodb::Collection<Document> {
    client.database(MMM_DB).collection(VERIFY)
}

/// The stored progress of `target`, if any.
pub async fn load(client: &Client, target: &str) -> Result<Option<VerifyProgress>, StoreError> {
    let found = collection(client)
        .find_one(doc! {"_id": target})
        .await
        .map_err(|source| StoreError {
            what: "reading the verification's progress",
            source,
        })?;
    Ok(found.as_ref().and_then(VerifyProgress::from_document))
}

/// Stores `progress` (replacing what was there).
pub async fn save(client: &Client, progress: &VerifyProgress) -> Result<(), StoreError> {
    collection(client)
        .replace_one(doc! {"_id": &progress.target}, progress.to_document())
        .upsert(true)
        .await
        .map_err(|source| StoreError {
            what: "saving the verification's progress",
            source,
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_survives_its_document() {
        let mut p = VerifyProgress::new("a/db.c<->b/db.c");
        assert_eq!(
            VerifyProgress::from_document(&p.to_document()),
            Some(p.clone())
        );
        p.after = Some(Bson::Document(doc! {"k": [1, 2]}));
        p.compared = 5000;
        p.suspects = vec![
            IdRange {
                after: None,
                until: Some(Bson::Int32(7)),
            },
            IdRange {
                after: Some(Bson::String("x".into())),
                until: None,
            },
        ];
        p.finished = Some(doc! {"consistent": false});
        assert_eq!(VerifyProgress::from_document(&p.to_document()), Some(p));
        assert_eq!(VerifyProgress::from_document(&doc! {"_id": 1}), None);
    }
}
