//! Module-level functions of `mmm._mmm`.

use crate::oplog::{diff_to_update as translate, UpdateTranslation};
use bson::Document;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Translates an update op's `o` (BSON bytes) into update documents (concatenated BSON bytes).
#[pyfunction]
pub fn diff_to_update<'py>(py: Python<'py>, o: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let doc = Document::from_reader(o)
        .map_err(|e| PyValueError::new_err(format!("not a BSON document: {e}")))?;
    let docs = match translate(&doc).map_err(|e| PyValueError::new_err(e.to_string()))? {
        UpdateTranslation::Replacement(d) => vec![d],
        UpdateTranslation::Operators(ops) => ops,
    };
    let mut out = Vec::new();
    for d in docs {
        d.to_writer(&mut out)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
    }
    Ok(PyBytes::new(py, &out))
}
