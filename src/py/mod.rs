//! The Python-facing classes of `mmm._mmm`, one file per class.

mod errors;
mod functions;
mod lease;
mod redact;
mod replicator;
mod server;
mod specs;
mod store;
mod tailer;
mod topology;

use pyo3::prelude::*;
use std::time::{Duration, Instant};

/// Waits up to `timeout` seconds for `next` to produce something, in slices of at most 100 ms
/// with the GIL released, checking for signals between slices so Ctrl-C is noticed promptly.
/// `next(slice)` returns `Some(Some(v))` for a value, `Some(None)` when the source is closed,
/// and `None` when the slice passed with nothing. Returns `None` on timeout or when closed.
pub fn wait_detached<T: Send>(
    py: Python<'_>,
    timeout: f64,
    mut next: impl FnMut(Duration) -> Option<Option<T>> + Send,
) -> PyResult<Option<T>> {
    let deadline = Instant::now() + Duration::from_secs_f64(timeout.max(0.0));
    loop {
        let slice = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        if let Some(got) = py.detach(|| next(slice)) {
            return Ok(got);
        }
        py.check_signals()?;
        if Instant::now() >= deadline {
            return Ok(None);
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<server::PyMongoServer>()?;
    m.add_class::<tailer::PyTailerCore>()?;
    m.add_class::<replicator::PyReplicatorCore>()?;
    m.add_function(wrap_pyfunction!(replicator::oplog_headroom, m)?)?;
    m.add_function(wrap_pyfunction!(functions::diff_to_update, m)?)?;
    m.add_class::<tailer::PyBatch>()?;
    m.add_function(wrap_pyfunction!(topology::reach, m)?)?;
    m.add_function(wrap_pyfunction!(redact::redact_uri, m)?)?;
    m.add_function(wrap_pyfunction!(redact::uri_secrets, m)?)?;
    m.add_function(wrap_pyfunction!(redact::redact_text, m)?)?;
    m.add_function(wrap_pyfunction!(redact::uri_userinfo_problem, m)?)?;
    store::register(m)?;
    lease::register(m)?;
    Ok(())
}
