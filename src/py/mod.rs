//! The Python-facing classes of `mmm._mmm`, one file per class.

mod errors;
mod functions;
mod replicator;
mod server;
mod tailer;

use pyo3::prelude::*;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<server::PyMongoServer>()?;
    m.add_class::<tailer::PyTailerCore>()?;
    m.add_class::<replicator::PyReplicatorCore>()?;
    m.add_function(wrap_pyfunction!(functions::diff_to_update, m)?)?;
    Ok(())
}
