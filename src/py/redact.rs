//! `mmm._mmm.redact_uri`, `uri_secrets`, `redact_text`: `crate::redact` for the Python layer,
//! so that both sides hide secrets the same way.

use pyo3::prelude::*;

/// `uri` with its userinfo and secret options replaced by `***`; with `keep_variables`, secrets
/// written only as `${VAR}` stay.
#[pyfunction]
#[pyo3(signature = (uri, keep_variables = false))]
pub fn redact_uri(uri: &str, keep_variables: bool) -> String {
    crate::redact::uri(uri, keep_variables)
}

/// The secrets of `uri` as they may be quoted (as written and percent-decoded), longest first.
#[pyfunction]
pub fn uri_secrets(uri: &str) -> Vec<String> {
    crate::redact::secrets(uri)
}

/// `text` with every mongodb:// URI redacted and every one of `secrets` replaced by `***`.
#[pyfunction]
pub fn redact_text(text: &str, secrets: Vec<String>) -> String {
    crate::redact::text(text, &secrets)
}

/// Why the userinfo of `uri` is ambiguous (a character that must be percent-encoded), or None.
#[pyfunction]
pub fn uri_userinfo_problem(uri: &str) -> Option<String> {
    crate::redact::userinfo_problem(uri)
}
