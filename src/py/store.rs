//! The `__mmm` database as Python sees it: its names, link ids and a link's checkpoint, so the
//! Python layer never spells them out itself (`store/` owns them).

use super::errors::MmmError;
use super::tailer::parse_client_options;
use crate::apply::describe;
use crate::replicate::LinkSpec;
use crate::store::{self, checkpoints};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::time::Duration;

/// The id of the link `src -> dst` (endpoints written `server/db.coll`, `server/db.*` or
/// `server/*`): the `_id` of its checkpoint and of its stored document. Raises ValueError for a
/// malformed endpoint or one no link may use (`local`, `admin`, `config`, `__mmm`, `system.*`).
#[pyfunction]
pub fn link_id(src: &str, dst: &str) -> PyResult<String> {
    LinkSpec::parse(src, dst, "iud")
        .map(|spec| spec.id())
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// The checkpoint of link `link` stored on the server at `uri`, as a dict (`link`, `origin`,
/// `src`, `ts` and `applied` as `(time, inc)`, `ops_applied`, `conflicts`, `rejected`,
/// `pending_ddl`), or None when the link has never run there. Raises MmmError when the server
/// cannot be read within `timeout` seconds.
#[pyfunction]
#[pyo3(signature = (uri, link, timeout = 5.0))]
pub fn read_checkpoint<'py>(
    py: Python<'py>,
    uri: &str,
    link: &str,
    timeout: f64,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    let mut options = parse_client_options(uri)?;
    let limit = Duration::from_secs_f64(timeout.max(0.0));
    options.server_selection_timeout = Some(limit);
    options.connect_timeout = Some(limit);
    let rt = crate::runtime::get()?;
    let found = py.detach(|| {
        rt.block_on(async {
            let client = mongodb::Client::with_options(options)?;
            let found = checkpoints::read(&client, link).await;
            client.shutdown().await;
            found.map_err(|e| e.source)
        })
    });
    let checkpoint = found.map_err(|e| {
        MmmError::new_err(format!(
            "cannot read {}: {}",
            store::CHECKPOINTS_NS,
            describe(&e)
        ))
    })?;
    let Some(c) = checkpoint else { return Ok(None) };
    let d = PyDict::new(py);
    d.set_item("link", c.link)?;
    d.set_item("origin", c.origin)?;
    d.set_item("src", c.src)?;
    d.set_item("ts", (c.ts.time, c.ts.increment))?;
    d.set_item("applied", (c.applied.time, c.applied.increment))?;
    d.set_item("ops_applied", c.ops_applied)?;
    d.set_item("conflicts", c.conflicts)?;
    d.set_item("rejected", c.rejected)?;
    d.set_item("pending_ddl", c.pending_ddl.is_some())?;
    // (copied, total) while an initial sync is in progress, else None.
    d.set_item("initial_sync", c.initial_sync.map(|p| (p.copied, p.total)))?;
    Ok(Some(d))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("MMM_DB", store::MMM_DB)?;
    m.add("CHECKPOINTS_COLLECTION", store::CHECKPOINTS)?;
    m.add("LINKS_COLLECTION", store::LINKS)?;
    m.add("REJECTED_COLLECTION", store::REJECTED)?;
    m.add("TAILER_CHECKPOINTS_COLLECTION", store::TAILER_CHECKPOINTS)?;
    m.add_function(wrap_pyfunction!(link_id, m)?)?;
    m.add_function(wrap_pyfunction!(read_checkpoint, m)?)?;
    Ok(())
}
