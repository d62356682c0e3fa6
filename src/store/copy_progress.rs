//! How far an initial sync has copied, stored with the link's checkpoint while the copy runs
//! (the `initial_sync` field of its document in `__mmm.checkpoints`). Its presence means "initial
//! sync in progress": the link finishes the copy before it follows the oplog.

use bson::{doc, Bson, Document};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CopyProgress {
    /// The source namespace being copied; namespaces that sort before it are complete, the
    /// ones after it not begun. Empty: nothing copied yet.
    pub ns: String,
    /// The last `_id` of `ns` copied (documents are copied in `_id` order); None: none yet.
    pub after: Option<Bson>,
    /// Documents copied so far, over every run of this copy.
    pub copied: u64,
    /// About how many documents the copy moves in all (an estimate, for status).
    pub total: u64,
    /// Also delete the destination's documents the source does not have, range by range
    /// (asked for by a resync; a plain initial sync only adds).
    pub mirror: bool,
}

impl CopyProgress {
    pub fn to_document(&self) -> Document {
        let mut d = doc! {
            "ns": &self.ns, "copied": self.copied as i64, "total": self.total as i64,
        };
        if let Some(after) = &self.after {
            d.insert("after", after.clone());
        }
        if self.mirror {
            d.insert("mirror", true);
        }
        d
    }

    pub fn from_document(d: &Document) -> CopyProgress {
        CopyProgress {
            ns: d.get_str("ns").unwrap_or("").to_string(),
            after: d.get("after").cloned(),
            copied: d.get_i64("copied").unwrap_or(0).max(0) as u64,
            total: d.get_i64("total").unwrap_or(0).max(0) as u64,
            mirror: d.get_bool("mirror").unwrap_or(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_and_without_a_resume_point() {
        let fresh = CopyProgress::default();
        assert_eq!(CopyProgress::from_document(&fresh.to_document()), fresh);
        let midway = CopyProgress {
            ns: "app.big".into(),
            after: Some(Bson::Null),
            copied: 7,
            total: 20,
            mirror: true,
        };
        assert_eq!(CopyProgress::from_document(&midway.to_document()), midway);
    }

    #[test]
    fn mistyped_fields_mean_start_of_the_copy_not_a_panic() {
        let odd = doc! {"ns": 5, "copied": -3_i64, "total": "many", "after": {"k": [1, 2]}};
        let p = CopyProgress::from_document(&odd);
        assert_eq!((p.ns.as_str(), p.copied, p.total), ("", 0, 0));
        assert_eq!(p.after, Some(Bson::Document(doc! {"k": [1, 2]})));
        assert_eq!(
            CopyProgress::from_document(&doc! {}),
            CopyProgress::default()
        );
    }
}
