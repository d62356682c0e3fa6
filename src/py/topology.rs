//! `mmm._mmm.reach`: whose writes reach whom, a pure answer of the topology, without a core.

use super::specs::{topology, LinkArg, ServerArg};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Per namespace a link reads: `{"namespace", "servers", "reach": {origin: [(server,
/// namespace there, whole)]}, "warnings": [...]}` (see `_mmm.pyi`).
#[pyfunction]
pub fn reach<'py>(
    py: Python<'py>,
    servers: Vec<ServerArg>,
    links: Vec<LinkArg>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let (servers, links) = topology(servers, links)?;
    let all = crate::replicate::topology::reach(&servers, &links)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    let mut out = Vec::new();
    for r in all {
        let d = PyDict::new(py);
        d.set_item("namespace", r.namespace)?;
        d.set_item("servers", r.servers)?;
        let rows = PyDict::new(py);
        for (origin, reached) in r.rows {
            rows.set_item(origin, reached)?;
        }
        d.set_item("reach", rows)?;
        d.set_item("warnings", r.warnings)?;
        out.push(d);
    }
    Ok(out)
}
