//! Secrets in MongoDB connection strings, and the one place that hides them: every message,
//! log line, status field or repr that could quote a URI goes through here first. Pure logic.
//!
//! A secret is the URI's userinfo (user name and password), the value of an option whose name
//! says it holds a password, secret or token, and every value of `authMechanismProperties`
//! (it carries e.g. `AWS_SESSION_TOKEN`). Connection string syntax:
//! <https://github.com/mongodb/specifications/blob/master/source/connection-string/connection-string-spec.md>.

/// What replaces a secret.
pub const MASK: &str = "***";

const SCHEMES: [&str; 2] = ["mongodb://", "mongodb+srv://"];

/// Splits `uri` into (scheme, userinfo, rest). The userinfo ends at the *last* `@`, as drivers
/// read it, so an unescaped `@`, `:` or `/` in a password stays inside it; a malformed URI is
/// still split the same way (over-hiding is harmless, under-hiding is a leak).
fn split(uri: &str) -> (&str, Option<&str>, &str) {
    let scheme_len = uri.find("://").map_or(0, |i| i + 3);
    let (scheme, rest) = uri.split_at(scheme_len);
    match rest.rfind('@') {
        Some(at) => (scheme, Some(&rest[..at]), &rest[at + 1..]),
        None => (scheme, None, rest),
    }
}

fn is_secret_option(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "authmechanismproperties"
        || ["password", "secret", "token"]
            .iter()
            .any(|w| name.contains(w))
}

/// True when `s` is made only of `${VAR}` references and `:` separators: a template that names
/// secrets without holding them.
fn only_variables(s: &str) -> bool {
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix(':') {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("${") {
            let Some(end) = r.find('}') else { return false };
            let name = &r[..end];
            let ok = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return false;
            }
            rest = &r[end + 1..];
        } else {
            return false;
        }
    }
    !s.is_empty()
}

/// A secret as `***`; with `keep_variables`, each `:`-separated part written only as `${VAR}`
/// references stays (`***:${PASSWORD}` for a literal user name and a password variable); a
/// secret with no variable in it is one `***`, whatever its shape.
fn hide(value: &str, keep_variables: bool) -> String {
    if !keep_variables || !value.contains("${") {
        return MASK.to_string();
    }
    value
        .split(':')
        .map(|part| if only_variables(part) { part } else { MASK })
        .collect::<Vec<_>>()
        .join(":")
}

/// `authMechanismProperties` values are `KEY:value,KEY:value`: keys stay, values go.
fn hide_properties(value: &str, keep_variables: bool) -> String {
    value
        .split(',')
        .map(|p| match p.split_once(':') {
            Some((k, v)) => format!("{k}:{}", hide(v, keep_variables)),
            None => hide(p, keep_variables),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_option(part: &str, keep_variables: bool) -> String {
    match part.split_once('=') {
        Some((k, v)) if k.eq_ignore_ascii_case("authMechanismProperties") => {
            format!("{k}={}", hide_properties(v, keep_variables))
        }
        Some((k, v)) if is_secret_option(k) => format!("{k}={}", hide(v, keep_variables)),
        _ => part.to_string(),
    }
}

/// Options are separated by `&` (or `;`, which some drivers accept); each separator is kept.
fn redact_options(query: &str, keep_variables: bool) -> String {
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    while let Some(sep) = rest.find(['&', ';']) {
        out.push_str(&redact_option(&rest[..sep], keep_variables));
        out.push_str(&rest[sep..sep + 1]);
        rest = &rest[sep + 1..];
    }
    out.push_str(&redact_option(rest, keep_variables));
    out
}

/// `uri` with its secrets replaced by `***`: `mongodb://***@host/?authSource=admin`. With
/// `keep_variables`, a secret written only as `${VAR}` references stays (it is a template, as in
/// a configuration file, not a value).
pub fn uri(uri: &str, keep_variables: bool) -> String {
    let (scheme, userinfo, rest) = split(uri);
    let mut out = String::from(scheme);
    if let Some(u) = userinfo {
        out.push_str(&hide(u, keep_variables));
        out.push('@');
    }
    match rest.split_once('?') {
        Some((hosts, query)) => {
            out.push_str(hosts);
            out.push('?');
            out.push_str(&redact_options(query, keep_variables));
        }
        None => out.push_str(rest),
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The secrets of `uri` as they may be quoted elsewhere (as written and percent-decoded),
/// longest first, so that hiding one never leaves the tail of a longer one.
pub fn secrets(uri: &str) -> Vec<String> {
    let (_, userinfo, rest) = split(uri);
    let mut found = Vec::new();
    if let Some(u) = userinfo {
        found.push(u.to_string());
        if let Some((_, password)) = u.split_once(':') {
            found.push(password.to_string());
        }
    }
    if let Some((_, query)) = rest.split_once('?') {
        for part in query.split(['&', ';']) {
            let Some((k, v)) = part.split_once('=') else {
                continue;
            };
            if k.eq_ignore_ascii_case("authMechanismProperties") {
                found.push(v.to_string());
                found.extend(
                    v.split(',')
                        .filter_map(|p| p.split_once(':'))
                        .map(|(_, v)| v.to_string()),
                );
            } else if is_secret_option(k) {
                found.push(v.to_string());
            }
        }
    }
    let decoded: Vec<String> = found.iter().map(|s| percent_decode(s)).collect();
    found.extend(decoded);
    found.retain(|s| !s.is_empty());
    found.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    found.dedup();
    found
}

/// `text` with every URI in it redacted and every one of `secrets` replaced by `***`.
pub fn text(text: &str, secrets: &[String]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // Every mongodb:// token, up to whitespace or a quote, is redacted as a URI.
    while let Some(start) = SCHEMES.iter().filter_map(|s| rest.find(s)).min() {
        out.push_str(&rest[..start]);
        let token_len = rest[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`'))
            .unwrap_or(rest.len() - start);
        out.push_str(&uri(&rest[start..start + token_len], false));
        rest = &rest[start + token_len..];
    }
    out.push_str(rest);
    let mut sorted: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in sorted {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    out
}

/// Why the userinfo of `uri` cannot be read unambiguously, if it cannot: a character that must
/// be percent-encoded there. Checked before a driver parses the URI, because drivers quote the
/// pieces they split a malformed userinfo into (a piece of a password) in their messages.
pub fn userinfo_problem(uri: &str) -> Option<String> {
    let (_, userinfo, _) = split(uri);
    let u = userinfo?;
    let bad_char = u.contains(['@', '/', '?', '#', '[', ']']) || u.matches(':').count() > 1;
    let bad_percent = u.char_indices().any(|(i, c)| {
        c == '%'
            && !(u.len() >= i + 3
                && u.as_bytes()[i + 1].is_ascii_hexdigit()
                && u.as_bytes()[i + 2].is_ascii_hexdigit())
    });
    (bad_char || bad_percent).then(|| {
        "the user name and password in the URI must be percent-encoded (\"@\" as %40, \":\" as %3A, \"/\" as %2F, \"%\" as %25; Python's urllib.parse.quote_plus does it)".to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "mongodb://us%40er:p@ss:w%40rd/x@db1:27017,db2/?replicaSet=rs0&authMechanismProperties=AWS_SESSION_TOKEN:tok3n,SERVICE_NAME:svc&tlsCertificateKeyFilePassword=kp";

    #[test]
    fn hides_userinfo_up_to_the_last_at_and_secret_options() {
        let r = uri(HOSTILE, false);
        assert_eq!(
            r,
            "mongodb://***@db1:27017,db2/?replicaSet=rs0&authMechanismProperties=AWS_SESSION_TOKEN:***,SERVICE_NAME:***&tlsCertificateKeyFilePassword=***"
        );
        for s in ["p@ss", "w%40rd", "ss:w", "tok3n", "kp", "us%40er"] {
            assert!(!r.contains(s), "{s} in {r}");
        }
    }

    #[test]
    fn keeps_what_is_not_secret() {
        assert_eq!(
            uri("mongodb://h1,h2/db?replicaSet=rs0", false),
            "mongodb://h1,h2/db?replicaSet=rs0"
        );
        assert_eq!(
            uri("mongodb+srv://u:p@c.example.net", false),
            "mongodb+srv://***@c.example.net"
        );
        assert_eq!(uri("not a uri u:p@host", false), "***@host");
        assert_eq!(uri("", false), "");
    }

    #[test]
    fn variables_are_kept_only_when_asked() {
        let t = "mongodb://${U}:${P}@h/?authMechanismProperties=AWS_SESSION_TOKEN:${T}";
        assert_eq!(uri(t, true), t);
        assert_eq!(
            uri(t, false),
            "mongodb://***@h/?authMechanismProperties=AWS_SESSION_TOKEN:***"
        );
        assert_eq!(
            uri("mongodb://u:${P}x@h", true),
            "mongodb://***:***@h",
            "a literal next to a variable is a secret"
        );
        assert_eq!(uri("mongodb://admin:${P}@h", true), "mongodb://***:${P}@h");
    }

    #[test]
    fn secrets_cover_raw_and_decoded_forms() {
        let s = secrets(HOSTILE);
        for want in ["us%40er:p@ss:w%40rd/x", "us@er:p@ss:w@rd/x", "tok3n", "kp"] {
            assert!(s.contains(&want.to_string()), "{want} not in {s:?}");
        }
        assert!(s.windows(2).all(|w| w[0].len() >= w[1].len()));
        assert!(secrets("mongodb://h/?replicaSet=rs0").is_empty());
    }

    #[test]
    fn text_hides_uris_and_known_secrets() {
        let msg = format!(
            "cannot parse \"{HOSTILE}\": bad password p@ss:w%40rd/x (decoded: p@ss:w@rd/x)"
        );
        let out = text(&msg, &secrets(HOSTILE));
        for s in ["p@ss", "w%40rd", "w@rd", "tok3n"] {
            assert!(!out.contains(s), "{s} in {out}");
        }
        assert!(out.contains("mongodb://***@db1:27017"), "{out}");
    }

    #[test]
    fn malformed_userinfo_is_explained_without_quoting_it() {
        for bad in [
            "mongodb://u:Zq9@x@h",
            "mongodb://u:Zq9/x@h",
            "mongodb://u:Zq9:x@h",
            "mongodb://u:Zq9%zz@h",
            "mongodb://u:Zq9%4@h",
        ] {
            let p = userinfo_problem(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(!p.contains("Zq9"), "{p}");
        }
        assert!(userinfo_problem("mongodb://u:p%40ss@h/?x=1").is_none());
        assert!(userinfo_problem("mongodb://h/?x=1").is_none());
    }
}
