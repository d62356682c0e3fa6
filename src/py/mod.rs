//! The Python-facing classes of `mmm._mmm`, one file per class.

mod server;

use pyo3::prelude::*;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<server::PyMongoServer>()?;
    Ok(())
}
