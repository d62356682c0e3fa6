//! mmm: oplog triggers and multi-master replication for MongoDB, with an embedded
//! MongoDB-compatible server for development and tests.

pub mod apply;
pub mod bson_bytes;
pub mod bson_field;
pub mod bson_order;
pub mod converge;
pub mod doc_hash;
pub mod oplog;
pub mod redact;
pub mod replicate;
pub mod runtime;
pub mod server;
pub mod store;
pub mod tail;

mod py;

/// Many small BSON allocations from several threads: mimalloc keeps that fast and compact where
/// the system allocator fragments its per-thread arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use pyo3::prelude::*;

#[pymodule]
fn _mmm(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Rust log records (target "mmm") go to Python's logging, logger "mmm"; levels are looked
    // up on each record so logging configured later is honoured.
    let _ = pyo3_log::Logger::new(m.py(), pyo3_log::Caching::Nothing)?.install();
    py::register(m)?;
    Ok(())
}
