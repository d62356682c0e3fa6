//! Namespace patterns, op sets and the subscription table that routes every op to the triggers
//! and links interested in it.

use std::collections::HashMap;
use std::fmt;

use super::entry::OpKind;
use super::error::OplogError;

/// Characters MongoDB forbids in database names (Unix rules), plus `*`, which patterns reserve
/// for the wildcard.
const BAD_DB_CHARS: &[char] = &['/', '\\', '.', ' ', '"', '$', '*', '\0'];
/// Longest database name MongoDB accepts (names must be shorter than 64 bytes).
const MAX_DB_LEN: usize = 63;
/// Longest namespace (`db.coll`) MongoDB 4.4+ accepts for unsharded collections.
const MAX_NS_LEN: usize = 255;

/// A namespace pattern: `"db.coll"`, `"db.*"` or `"*"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NsPattern {
    /// `*`: every namespace (including the empty `ns` of no-ops).
    All,
    /// `db.*`: every namespace of one database (including its `db.$cmd`).
    Database(String),
    /// `db.coll`: one collection. The collection part may contain dots (`db.system.views`).
    Exact { db: String, coll: String },
}

impl NsPattern {
    /// Parses and validates a pattern. Database names follow MongoDB's rules (non-empty,
    /// shorter than 64 bytes, none of `/\. "$` or NUL); collection names must be non-empty and
    /// free of `$` and NUL; the whole namespace may not exceed 255 bytes.
    pub fn parse(s: &str) -> Result<Self, OplogError> {
        let bad = |reason: String| OplogError::InvalidNamespace {
            input: s.to_owned(),
            reason,
        };
        if s == "*" {
            return Ok(NsPattern::All);
        }
        let Some((db, coll)) = s.split_once('.') else {
            return Err(bad(
                "expected \"db.collection\", \"db.*\" or \"*\" (no '.' found)".into(),
            ));
        };
        validate_db(db).map_err(&bad)?;
        if coll == "*" {
            return Ok(NsPattern::Database(db.to_owned()));
        }
        if coll.is_empty() {
            return Err(bad(
                "the collection name is empty; write \"db.*\" for a whole database".into(),
            ));
        }
        if coll.contains('*') {
            return Err(bad(format!(
                "collection name {coll:?} contains '*'; only the forms \"db.*\" and \"*\" are wildcards"
            )));
        }
        // `db.$cmd` is the namespace of a database's command entries (DDL, applyOps).
        if let Some(c) = coll
            .chars()
            .find(|&c| c == '$' || c == '\0')
            .filter(|_| coll != "$cmd")
        {
            return Err(bad(format!(
                "collection name {coll:?} contains the forbidden character {c:?}"
            )));
        }
        if s.len() > MAX_NS_LEN {
            return Err(bad(format!(
                "namespace is {} bytes long; MongoDB allows at most {MAX_NS_LEN}",
                s.len()
            )));
        }
        Ok(NsPattern::Exact {
            db: db.to_owned(),
            coll: coll.to_owned(),
        })
    }

    /// Does the namespace `ns` (as found in an entry's `ns`) match?
    pub fn matches(&self, ns: &str) -> bool {
        match self {
            NsPattern::All => true,
            NsPattern::Database(db) => ns_db(ns) == Some(db.as_str()),
            NsPattern::Exact { db, coll } => {
                ns.len() == db.len() + 1 + coll.len()
                    && ns.starts_with(db.as_str())
                    && ns.as_bytes()[db.len()] == b'.'
                    && ns.ends_with(coll.as_str())
            }
        }
    }

    /// Maps `ns` through `self -> to`. Returns `None` when `self` does not match `ns`.
    /// The target decides what is replaced: `*` keeps `ns`, `db2.*` replaces the database and
    /// keeps the collection, `db2.coll2` replaces both. So `"a.* -> b.*"` maps `a.x` to `b.x`
    /// and `"a.x -> b.y"` maps `a.x` to `b.y`. A namespace without a collection part (the empty
    /// `ns` of no-ops) maps only through `*`.
    pub fn rename(&self, ns: &str, to: &NsPattern) -> Option<String> {
        if !self.matches(ns) {
            return None;
        }
        match to {
            NsPattern::All => Some(ns.to_owned()),
            NsPattern::Database(db) => {
                let (_, coll) = ns.split_once('.')?;
                Some(format!("{db}.{coll}"))
            }
            NsPattern::Exact { db, coll } => Some(format!("{db}.{coll}")),
        }
    }
}

impl fmt::Display for NsPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NsPattern::All => f.write_str("*"),
            NsPattern::Database(db) => write!(f, "{db}.*"),
            NsPattern::Exact { db, coll } => write!(f, "{db}.{coll}"),
        }
    }
}

impl std::str::FromStr for NsPattern {
    type Err = OplogError;
    fn from_str(s: &str) -> Result<Self, OplogError> {
        NsPattern::parse(s)
    }
}

fn validate_db(db: &str) -> Result<(), String> {
    if db.is_empty() {
        return Err("the database name is empty".into());
    }
    if db.len() > MAX_DB_LEN {
        return Err(format!(
            "database name {db:?} is {} bytes long; MongoDB allows at most {MAX_DB_LEN}",
            db.len()
        ));
    }
    if db == "*" {
        return Err("\"*.collection\" is not supported; use \"*\" or \"db.collection\"".into());
    }
    if let Some(c) = db.chars().find(|c| BAD_DB_CHARS.contains(c)) {
        return Err(format!(
            "database name {db:?} contains the forbidden character {c:?}"
        ));
    }
    Ok(())
}

/// The database part of a namespace (`None` when there is no `.`).
fn ns_db(ns: &str) -> Option<&str> {
    ns.split_once('.').map(|(db, _)| db)
}

/// A set of op kinds, parsed from letters `"iudcn"` or `"*"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OpSet(u8);

impl OpSet {
    pub const ALL: OpSet = OpSet(0b1_1111);
    pub const EMPTY: OpSet = OpSet(0);

    /// `"*"` for all kinds, or any non-empty combination of the letters `i u d c n`.
    pub fn parse(s: &str) -> Result<Self, OplogError> {
        let bad = |reason: String| OplogError::InvalidOpSet {
            input: s.to_owned(),
            reason,
        };
        if s == "*" {
            return Ok(OpSet::ALL);
        }
        if s.is_empty() {
            return Err(bad(
                "empty; give letters from \"iudcn\" (insert, update, delete, command, no-op) or \"*\""
                    .into(),
            ));
        }
        let mut set = OpSet::EMPTY;
        for (pos, c) in s.chars().enumerate() {
            match OpKind::from_letter(c) {
                Some(k) => set = set.with(k),
                None => {
                    return Err(bad(format!(
                        "unknown op letter {c:?} at position {pos}; valid letters are i, u, d, c, n (or \"*\" alone)"
                    )))
                }
            }
        }
        Ok(set)
    }

    pub fn with(self, op: OpKind) -> Self {
        OpSet(self.0 | op.bit())
    }

    pub fn contains(self, op: OpKind) -> bool {
        self.0 & op.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn union(self, other: OpSet) -> OpSet {
        OpSet(self.0 | other.0)
    }
}

impl fmt::Display for OpSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == OpSet::ALL {
            return f.write_str("*");
        }
        for k in OpKind::ALL {
            if self.contains(k) {
                write!(f, "{}", k.letter())?;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for OpSet {
    type Err = OplogError;
    fn from_str(s: &str) -> Result<Self, OplogError> {
        OpSet::parse(s)
    }
}

/// `(subscription id, ops it wants)`.
type Subscriber = (usize, OpSet);

/// A table of `(NsPattern, OpSet)` subscriptions, each with the id [`Subscriptions::add`]
/// returned (ids are dense, in order of addition). Lookups do not allocate: exact namespaces
/// and whole databases are found through hash maps, only `*` subscriptions are scanned.
#[derive(Debug, Clone, Default)]
pub struct Subscriptions {
    entries: Vec<(NsPattern, OpSet)>,
    exact: HashMap<String, Vec<Subscriber>>,
    by_db: HashMap<String, Vec<Subscriber>>,
    all: Vec<Subscriber>,
    any_ops: OpSet,
}

impl Subscriptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a subscription and returns its id.
    pub fn add(&mut self, pattern: NsPattern, ops: OpSet) -> usize {
        let id = self.entries.len();
        match &pattern {
            NsPattern::All => self.all.push((id, ops)),
            NsPattern::Database(db) => self.by_db.entry(db.clone()).or_default().push((id, ops)),
            NsPattern::Exact { db, coll } => self
                .exact
                .entry(format!("{db}.{coll}"))
                .or_default()
                .push((id, ops)),
        }
        self.any_ops = self.any_ops.union(ops);
        self.entries.push((pattern, ops));
        id
    }

    /// The subscription with this id.
    pub fn get(&self, id: usize) -> Option<(&NsPattern, OpSet)> {
        self.entries.get(id).map(|(p, o)| (p, *o))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Ids of the subscriptions that want an op of kind `op` on `ns`: exact matches first,
    /// then database wildcards, then `*`, each group in order of addition. Allocation-free.
    pub fn matching<'s>(&'s self, ns: &str, op: OpKind) -> impl Iterator<Item = usize> + 's {
        const NONE: &[Subscriber] = &[];
        let wanted = self.any_ops.contains(op);
        let exact = match self.exact.get(ns) {
            Some(v) if wanted => v.as_slice(),
            _ => NONE,
        };
        let by_db = match ns_db(ns).and_then(|db| self.by_db.get(db)) {
            Some(v) if wanted => v.as_slice(),
            _ => NONE,
        };
        let all = if wanted { self.all.as_slice() } else { NONE };
        exact
            .iter()
            .chain(by_db)
            .chain(all)
            .filter(move |(_, ops)| ops.contains(op))
            .map(|(id, _)| *id)
    }

    /// Does any subscription want this op?
    pub fn any_match(&self, ns: &str, op: OpKind) -> bool {
        self.matching(ns, op).next().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> NsPattern {
        NsPattern::parse(s).unwrap()
    }

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(p("*"), NsPattern::All);
        assert_eq!(p("shop.*"), NsPattern::Database("shop".into()));
        assert_eq!(
            p("shop.system.views"),
            NsPattern::Exact {
                db: "shop".into(),
                coll: "system.views".into()
            }
        );
        for s in ["*", "shop.*", "shop.orders"] {
            assert_eq!(p(s).to_string(), s);
        }
    }

    #[test]
    fn rejects_invalid_patterns_with_clear_messages() {
        let cases = [
            ("", "no '.'"),
            ("shop", "no '.'"),
            (".orders", "database name is empty"),
            ("shop.", "collection name is empty"),
            ("sh op.orders", "forbidden character ' '"),
            ("sh$op.orders", "forbidden character '$'"),
            ("sh/op.x", "forbidden character '/'"),
            ("*.orders", "not supported"),
            ("shop.ord*", "contains '*'"),
            ("shop.$x", "forbidden character '$'"),
        ];
        for (input, needle) in cases {
            let err = NsPattern::parse(input).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(needle) && msg.contains(&format!("{input:?}")),
                "{input:?}: {msg}"
            );
        }
        let long_db = format!("{}.x", "d".repeat(64));
        assert!(NsPattern::parse(&long_db)
            .unwrap_err()
            .to_string()
            .contains("at most 63"));
        let long_ns = format!("db.{}", "c".repeat(253));
        assert!(NsPattern::parse(&long_ns)
            .unwrap_err()
            .to_string()
            .contains("at most 255"));
        assert!(NsPattern::parse(&format!("db.{}", "c".repeat(252))).is_ok());
    }

    #[test]
    fn matching() {
        assert!(p("*").matches(""));
        assert!(p("*").matches("a.b"));
        assert!(p("a.*").matches("a.b"));
        assert!(p("a.*").matches("a.b.c"));
        assert!(p("a.*").matches("a.$cmd"));
        assert!(!p("a.*").matches("ab.c"));
        assert!(!p("a.*").matches("a"));
        assert!(!p("a.*").matches("b.a"));
        assert!(p("a.b").matches("a.b"));
        assert!(!p("a.b").matches("a.bc"));
        assert!(!p("a.b").matches("a.b.c"));
        assert!(!p("a.b").matches("ax.b"));
        assert!(!p("a.b").matches("a_b"));
        assert!(p("a.b.c").matches("a.b.c"));
        assert!(!p("a.b.c").matches("a.b"));
    }

    #[test]
    fn rename() {
        assert_eq!(p("a.*").rename("a.x", &p("b.*")).as_deref(), Some("b.x"));
        assert_eq!(p("a.x").rename("a.x", &p("b.y")).as_deref(), Some("b.y"));
        assert_eq!(p("a.x").rename("a.y", &p("b.y")), None);
        assert_eq!(p("*").rename("q.r.s", &p("*")).as_deref(), Some("q.r.s"));
        assert_eq!(p("*").rename("q.r.s", &p("z.*")).as_deref(), Some("z.r.s"));
        assert_eq!(p("*").rename("", &p("z.*")), None);
        assert_eq!(p("a.*").rename("a.x", &p("*")).as_deref(), Some("a.x"));
    }

    #[test]
    fn op_sets() {
        let s = OpSet::parse("ud").unwrap();
        assert!(s.contains(OpKind::Update) && s.contains(OpKind::Delete));
        assert!(!s.contains(OpKind::Insert) && !s.contains(OpKind::Noop));
        assert_eq!(s.to_string(), "ud");
        assert_eq!(OpSet::parse("*").unwrap(), OpSet::ALL);
        assert_eq!(OpSet::parse("nciud").unwrap(), OpSet::ALL);
        assert_eq!(OpSet::ALL.to_string(), "*");
        let err = OpSet::parse("iux").unwrap_err().to_string();
        assert!(err.contains("'x'") && err.contains("position 2"), "{err}");
        assert!(OpSet::parse("").is_err());
        assert!(OpSet::parse("i*").is_err());
    }

    #[test]
    fn subscriptions_route_by_ns_and_op() {
        let mut subs = Subscriptions::new();
        let exact = subs.add(p("shop.orders"), OpSet::parse("iu").unwrap());
        let db = subs.add(p("shop.*"), OpSet::parse("d").unwrap());
        let all = subs.add(p("*"), OpSet::parse("n").unwrap());
        let exact2 = subs.add(p("shop.orders"), OpSet::ALL);
        let collect = |ns, op| subs.matching(ns, op).collect::<Vec<_>>();
        assert_eq!(collect("shop.orders", OpKind::Insert), vec![exact, exact2]);
        assert_eq!(collect("shop.orders", OpKind::Delete), vec![exact2, db]);
        assert_eq!(collect("shop.users", OpKind::Delete), vec![db]);
        assert_eq!(collect("shop.users", OpKind::Insert), Vec::<usize>::new());
        assert_eq!(collect("", OpKind::Noop), vec![all]);
        assert_eq!(collect("other.orders", OpKind::Update), Vec::<usize>::new());
        assert!(subs.any_match("shop.x", OpKind::Delete));
        assert!(!subs.any_match("shop.x", OpKind::Command));
        assert_eq!(subs.len(), 4);
        assert_eq!(subs.get(db).unwrap().0, &p("shop.*"));
    }
}
