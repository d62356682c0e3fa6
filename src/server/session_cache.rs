//! The logical session cache: every session id seen in a command, with its last use, as mongod
//! keeps it for `$listLocalSessions`. Sessions idle for 30 minutes (localLogicalSessionTimeoutMinutes)
//! are forgotten, and at most `MAX_SESSIONS` (mongod's maxSessions default) are kept.

use bson::{doc, spec::BinarySubtype, Binary, Bson, DateTime, Document};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub const MAX_SESSIONS: usize = 1_000_000;
const IDLE: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Default)]
pub struct SessionCache {
    sessions: HashMap<Vec<u8>, (Bson, DateTime, Instant)>,
    last_sweep: Option<Instant>,
}

impl SessionCache {
    /// Records a use of the session `{id}` in `lsid` (a UUID binary, as drivers send).
    pub fn touch(&mut self, lsid: &Document) {
        let Some(Bson::Binary(id)) = lsid.get("id") else {
            return;
        };
        if id.subtype != BinarySubtype::Uuid || id.bytes.len() != 16 {
            return;
        }
        let now = Instant::now();
        if self
            .last_sweep
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(60))
        {
            self.last_sweep = Some(now);
            self.sessions
                .retain(|_, (_, _, used)| now.duration_since(*used) < IDLE);
        }
        if self.sessions.len() >= MAX_SESSIONS && !self.sessions.contains_key(&id.bytes) {
            return;
        }
        self.sessions.insert(
            id.bytes.clone(),
            (Bson::Binary(id.clone()), DateTime::now(), now),
        );
    }

    pub fn end(&mut self, id: &[u8]) {
        self.sessions.remove(id);
    }

    /// The `$listLocalSessions` documents: `{_id: {id, uid}, lastUse}`; `uid` is the SHA-256 of
    /// the user name, the empty name here (no authentication).
    pub fn list(&self) -> Vec<Document> {
        let uid = Binary {
            subtype: BinarySubtype::Generic,
            bytes: Sha256::digest(b"").to_vec(),
        };
        let now = Instant::now();
        let mut out: Vec<(DateTime, Document)> = self
            .sessions
            .values()
            .filter(|(_, _, used)| now.duration_since(*used) < IDLE)
            .map(|(id, last, _)| {
                (
                    *last,
                    doc! {"_id": {"id": id.clone(), "uid": uid.clone()}, "lastUse": *last},
                )
            })
            .collect();
        out.sort_by_key(|(last, _)| std::cmp::Reverse(*last));
        out.into_iter().map(|(_, d)| d).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_uuid_sessions_only() {
        let mut cache = SessionCache::default();
        let id = bson::Uuid::new();
        cache.touch(&doc! {"id": id});
        cache.touch(&doc! {"id": "not a uuid"});
        cache.touch(&doc! {"id": Binary { subtype: BinarySubtype::Uuid, bytes: vec![1; 1000] }});
        let listed = cache.list();
        assert_eq!(listed.len(), 1);
        let uid = listed[0]
            .get_document("_id")
            .unwrap()
            .get_binary_generic("uid")
            .unwrap();
        assert_eq!(uid.len(), 32);
        cache.end(&id.bytes());
        assert!(cache.list().is_empty());
    }
}
