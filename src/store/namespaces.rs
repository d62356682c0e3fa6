//! Which namespaces a link may carry. mmm's own state (`__mmm`) and the server's (the `admin`,
//! `config` and `local` databases, `system.*` collections in any database) are never
//! replicated: wildcard links skip them, explicit links to or from them are refused when the
//! link is built. MongoDB's own tools draw the same line: mongosync does not replicate
//! `system.*` collections nor the `admin`, `config` and `local` databases (MongoDB's mongosync
//! documentation, "Limitations"), and a replica set's `local` database is never replicated by
//! the server itself. Pure logic.

use super::MMM_DB;
use crate::oplog::NsPattern;

/// Databases that belong to the server or to mmm, never to an application.
pub const SERVER_DATABASES: [&str; 4] = ["admin", "config", "local", MMM_DB];

fn split(ns: &str) -> (&str, Option<&str>) {
    match ns.split_once('.') {
        Some((db, coll)) => (db, Some(coll)),
        None => (ns, None),
    }
}

/// A namespace of the `__mmm` database (mmm's own bookkeeping).
pub fn is_internal_ns(ns: &str) -> bool {
    split(ns).0 == MMM_DB
}

/// A collection name the server reserves (`system.users`, `system.views`, `system.js`, ...).
pub fn is_system_collection(coll: &str) -> bool {
    coll.starts_with("system.")
}

/// One of [`SERVER_DATABASES`], in any case: MongoDB refuses a database whose name differs from
/// an existing one only in case, so `Admin` can only ever mean `admin`.
fn server_database(db: &str) -> Option<&'static str> {
    SERVER_DATABASES
        .iter()
        .find(|d| d.eq_ignore_ascii_case(db))
        .copied()
}

/// Whether a link may carry writes on `ns` (`db.coll`): not in a server database, not a
/// `system.*` collection.
pub fn is_replicable_ns(ns: &str) -> bool {
    let (db, coll) = split(ns);
    server_database(db).is_none() && !coll.is_some_and(is_system_collection)
}

/// Refuses an endpoint pattern that names what no link may carry (a link to or from `local`,
/// `admin`, `config`, `__mmm`, or a `system.*` collection). `*` is allowed: it skips them.
pub fn refuse_link_namespace(pattern: &NsPattern) -> Result<(), String> {
    let (db, coll) = match pattern {
        NsPattern::All => return Ok(()),
        NsPattern::Database(db) => (db.as_str(), None),
        NsPattern::Exact { db, coll } => (db.as_str(), Some(coll.as_str())),
    };
    match server_database(db) {
        Some(MMM_DB) => {
            return Err(format!(
                "{pattern}: the {MMM_DB} database holds mmm's own state and cannot be replicated"
            ))
        }
        Some(server_db) => {
            return Err(format!(
            "{pattern}: the {server_db} database belongs to the server and cannot be replicated \
                 (replicate application databases; '*' skips admin, config and local)"
        ))
        }
        None => {}
    }
    match coll {
        Some(coll) if is_system_collection(coll) => Err(format!(
            "{pattern}: {coll} is a system collection and cannot be replicated"
        )),
        Some("$cmd") => Err(format!(
            "{pattern}: $cmd holds the database's commands and cannot be replicated as a \
             collection (DDL is replicated by a db.* link with ops 'c')"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_databases_and_system_collections_are_not_replicable() {
        for ns in [
            "admin.system.users",
            "admin.anything",
            "config.system.sessions",
            "config.transactions",
            "local.oplog.rs",
            "local.startup_log",
            "__mmm.checkpoints",
            "app.system.views",
            "app.system.js",
            "app.system.buckets.weather",
            "Config.x",
        ] {
            assert!(!is_replicable_ns(ns), "{ns}");
        }
        for ns in [
            "app.users",
            "app.systemic",
            "administrator.x",
            "locale.x",
            "app.x.system.y",
        ] {
            assert!(is_replicable_ns(ns), "{ns}");
        }
        assert!(is_internal_ns("__mmm.rejected") && is_internal_ns("__mmm"));
        assert!(!is_internal_ns("__mmmx.c"));
    }

    #[test]
    fn explicit_endpoints_on_server_state_are_refused() {
        for p in [
            "local.*",
            "local.oplog.rs",
            "admin.*",
            "admin.system.users",
            "config.*",
            "config.system.sessions",
            "__mmm.*",
            "__mmm.checkpoints",
            "app.system.views",
            "Admin.*",
            "LOCAL.oplog.rs",
            "__MMM.x",
            "app.$cmd",
        ] {
            let err = refuse_link_namespace(&NsPattern::parse(p).unwrap()).unwrap_err();
            assert!(err.starts_with(p), "{err}");
        }
        for p in ["*", "app.*", "app.users", "administrator.x"] {
            assert!(
                refuse_link_namespace(&NsPattern::parse(p).unwrap()).is_ok(),
                "{p}"
            );
        }
    }
}
