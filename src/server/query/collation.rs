//! Collations (the `collation` option of queries, updates, deletes and aggregations).
//!
//! A command's collation is in force while it runs (a thread-local scope, since a command runs
//! on one thread under the server lock): string comparisons in matching, sorting and grouping
//! follow it. Index keys (`KeyValue`) always compare binary, as the collection's indexes here
//! have the simple collation.
//!
//! Supported: `locale: "simple"` (binary) and the English locales (`en`, `en_US`, ...), whose
//! ICU ordering for Latin letters is the root one, at strengths 1 to 5: primary differences are
//! base letters (spaces and punctuation < digits < letters), secondary ones accents, tertiary
//! ones case (lower case first); strengths 4 and 5 fall back to code points. Letters with
//! accents are known for Latin-1 and Latin Extended-A; other characters compare by code point.
//! Options other than `locale` and `strength` are refused at non-default values with
//! NotImplemented rather than honoured approximately.

use crate::server::error::{ServerError, ServerResult};
use bson::Bson;
use std::cell::Cell;
use std::cmp::Ordering;

thread_local! {
    static ACTIVE: Cell<Option<u8>> = const { Cell::new(None) };
}

/// Restores the previous collation when dropped.
pub struct Scope {
    previous: Option<u8>,
}

impl Drop for Scope {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(self.previous));
    }
}

/// Puts the collation `spec` (absent: none) in force until the returned scope is dropped.
pub fn scope(spec: Option<&Bson>) -> ServerResult<Scope> {
    let strength = match spec {
        None => None,
        Some(spec) => parse(spec)?,
    };
    let previous = ACTIVE.with(|a| a.replace(strength));
    Ok(Scope { previous })
}

/// Runs `f` with binary string comparison (index keys).
pub fn binary<R>(f: impl FnOnce() -> R) -> R {
    if ACTIVE.with(|a| a.get()).is_none() {
        return f();
    }
    let _scope = Scope {
        previous: ACTIVE.with(|a| a.replace(None)),
    };
    f()
}

fn unsupported(what: String) -> ServerError {
    ServerError::not_implemented(format!(
        "{what} is not supported by the embedded server's collations"
    ))
}

/// The strength of a collation spec; `None` for the simple (binary) collation.
pub fn parse(spec: &Bson) -> ServerResult<Option<u8>> {
    let Bson::Document(spec) = spec else {
        return Err(ServerError::type_mismatch("collation must be an object"));
    };
    if spec.is_empty() {
        return Ok(None); // `collation: {}` is no collation, as commands parse it
    }
    let locale = match spec.get("locale") {
        Some(Bson::String(l)) => l.as_str(),
        Some(_) => {
            return Err(ServerError::type_mismatch(
                "collation locale must be a string",
            ))
        }
        None => {
            return Err(ServerError::failed_to_parse(
                "BSON field 'locale' is missing but a required field",
            ))
        }
    };
    let mut strength = 3u8;
    for (k, v) in spec {
        let default = match (k.as_str(), v) {
            ("locale", _) => true,
            ("strength", v) => {
                let s = match v {
                    Bson::Int32(i) => *i as i64,
                    Bson::Int64(i) => *i,
                    Bson::Double(d) if d.fract() == 0.0 => *d as i64,
                    _ => {
                        return Err(ServerError::type_mismatch(
                            "collation strength must be a number",
                        ))
                    }
                };
                if !(1..=5).contains(&s) {
                    return Err(ServerError::bad_value(format!(
                        "Field 'strength' must be an integer 1 through 5. Got: {s}"
                    )));
                }
                strength = s as u8;
                true
            }
            ("caseLevel" | "numericOrdering" | "normalization" | "backwards", Bson::Boolean(b)) => {
                !b
            }
            ("caseFirst", Bson::String(s)) => s == "off",
            ("alternate", Bson::String(s)) => s == "non-ignorable",
            ("maxVariable", Bson::String(_)) => true,
            ("version", _) => true,
            (
                "caseLevel" | "numericOrdering" | "normalization" | "backwards" | "caseFirst"
                | "alternate" | "maxVariable",
                _,
            ) => {
                return Err(ServerError::type_mismatch(format!(
                    "collation field '{k}' has the wrong type"
                )))
            }
            _ => {
                return Err(ServerError::failed_to_parse(format!(
                    "unknown collation field '{k}'"
                )))
            }
        };
        if !default {
            return Err(unsupported(format!("collation option {k}: {v}")));
        }
    }
    if locale == "simple" {
        if spec.len() > 1 {
            return Err(ServerError::bad_value(
                "If locale is 'simple', no other collation options may be specified",
            ));
        }
        return Ok(None);
    }
    if locale != "en" && !locale.starts_with("en_") {
        return Err(unsupported(format!("locale '{locale}'")));
    }
    Ok(Some(strength))
}

/// Compares two strings under the collation in force; `None` when there is none.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    let strength = ACTIVE.with(|s| s.get())?;
    Some(compare_at(a, b, strength))
}

fn compare_at(a: &str, b: &str, strength: u8) -> Ordering {
    let (ka, kb) = (a.chars().map(weights), b.chars().map(weights));
    let primary = ka.clone().map(|w| w.0).cmp(kb.clone().map(|w| w.0));
    if primary != Ordering::Equal || strength == 1 {
        return primary;
    }
    let secondary = ka.clone().map(|w| w.1).cmp(kb.clone().map(|w| w.1));
    if secondary != Ordering::Equal || strength == 2 {
        return secondary;
    }
    let tertiary = ka.map(|w| w.2).cmp(kb.map(|w| w.2));
    if tertiary != Ordering::Equal || strength == 3 {
        return tertiary;
    }
    a.cmp(b)
}

/// (primary, secondary, tertiary) weights of one character.
fn weights(c: char) -> ((u8, u32), u8, u8) {
    let (base, accent, upper) = fold(c);
    let class = if base.is_alphabetic() {
        3
    } else if base.is_ascii_digit() {
        2
    } else if base.is_whitespace() || base.is_ascii_punctuation() {
        1
    } else {
        4
    };
    ((class, base as u32), accent, upper as u8)
}

const LATIN1_UPPER: &str = "ÀÁÂÃÄÅÇÈÉÊËÌÍÎÏÑÒÓÔÕÖØÙÚÛÜÝ";
const LATIN1_LOWER: &str = "àáâãäåçèéêëìíîïñòóôõöøùúûüýÿ";
const LATIN1_BASE_UPPER: &str = "aaaaaaceeeeiiiinoooooouuuuy";
const LATIN1_BASE_LOWER: &str = "aaaaaaceeeeiiiinoooooouuuuyy";

/// A letter's base (lower case, no accent), its accent (0: none) and whether it is upper case.
fn fold(c: char) -> (char, u8, bool) {
    if c.is_ascii() {
        return (c.to_ascii_lowercase(), 0, c.is_ascii_uppercase());
    }
    if let Some(i) = LATIN1_UPPER.chars().position(|x| x == c) {
        return (LATIN1_BASE_UPPER.chars().nth(i).unwrap(), 1 + i as u8, true);
    }
    if let Some(i) = LATIN1_LOWER.chars().position(|x| x == c) {
        return (
            LATIN1_BASE_LOWER.chars().nth(i).unwrap(),
            1 + i as u8,
            false,
        );
    }
    // Latin Extended-A (U+0100..U+017F): pairs of upper/lower case letters with accents.
    if ('\u{100}'..='\u{17f}').contains(&c) {
        let base = match c as u32 {
            0x100..=0x105 => 'a',
            0x106..=0x10d => 'c',
            0x10e..=0x111 => 'd',
            0x112..=0x11b => 'e',
            0x11c..=0x123 => 'g',
            0x124..=0x127 => 'h',
            0x128..=0x131 => 'i',
            0x134..=0x135 => 'j',
            0x136..=0x138 => 'k',
            0x139..=0x142 => 'l',
            0x143..=0x14b => 'n',
            0x14c..=0x151 => 'o',
            0x154..=0x159 => 'r',
            0x15a..=0x161 => 's',
            0x162..=0x167 => 't',
            0x168..=0x173 => 'u',
            0x174..=0x175 => 'w',
            0x176..=0x178 => 'y',
            0x179..=0x17e => 'z',
            _ => return (c, 0, false),
        };
        let upper = c.is_uppercase();
        return (base, 40 + (c as u32 - 0x100) as u8 / 2, upper);
    }
    let lower = c.to_lowercase().next().unwrap_or(c);
    (lower, 0, c.is_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn strengths() {
        assert_eq!(compare_at("cat", "CAT", 1), Ordering::Equal);
        assert_eq!(compare_at("cat", "CAT", 2), Ordering::Equal);
        assert_eq!(compare_at("cat", "CAT", 3), Ordering::Less);
        assert_eq!(compare_at("café", "cafe", 1), Ordering::Equal);
        assert_eq!(compare_at("café", "cafe", 2), Ordering::Greater);
        assert_eq!(compare_at("B", "a", 3), Ordering::Greater);
        assert_eq!(compare_at("a_", "a1", 3), Ordering::Less); // punctuation before digits
        assert_eq!(compare_at("Ping", "ping", 3), Ordering::Greater); // lower case first
    }

    #[test]
    fn specs() {
        assert_eq!(
            parse(&Bson::Document(doc! {"locale": "simple"})).unwrap(),
            None
        );
        assert_eq!(
            parse(&Bson::Document(doc! {"locale": "en_US", "strength": 2})).unwrap(),
            Some(2)
        );
        assert!(parse(&Bson::Document(doc! {"locale": "fr"})).is_err());
        assert!(parse(&Bson::Document(doc! {"locale": "en", "strength": 9})).is_err());
        assert!(parse(&Bson::Document(
            doc! {"locale": "en", "numericOrdering": true}
        ))
        .is_err());
        assert!(parse(&Bson::Document(doc! {"strength": 1})).is_err());
        assert!(parse(&Bson::Document(doc! {"locale": "simple", "strength": 1})).is_err());
    }

    #[test]
    fn scopes_nest_and_restore() {
        assert!(compare("a", "A").is_none());
        {
            let _outer =
                scope(Some(&Bson::Document(doc! {"locale": "en", "strength": 2}))).unwrap();
            assert_eq!(compare("a", "A"), Some(Ordering::Equal));
            binary(|| assert!(compare("a", "A").is_none()));
            {
                let _inner = scope(None).unwrap();
                assert!(compare("a", "A").is_none());
            }
            assert_eq!(compare("a", "A"), Some(Ordering::Equal));
        }
        assert!(compare("a", "A").is_none());
    }
}
