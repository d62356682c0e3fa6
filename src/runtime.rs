//! The process-wide tokio runtime, created lazily in the process that first needs it (never
//! before a fork: an app server that forks workers gets a fresh runtime in each worker).

use pyo3::exceptions::PyRuntimeError;
use pyo3::PyResult;
use std::sync::OnceLock;
use tokio::runtime::Runtime;

static RUNTIME: OnceLock<(u32, Runtime)> = OnceLock::new();

/// The runtime, or RuntimeError in a child forked after it started: its worker threads exist
/// only in the parent, so anything run on it here would wait for ever.
pub fn get() -> PyResult<&'static Runtime> {
    let (pid, rt) = RUNTIME.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mmm-worker")
            // Parsing a query, update or pipeline recurses once per nesting level; nesting is
            // capped at 200 levels (MongoDB's limit), which needs more than the 2 MiB default
            // stack in a debug build. Untouched stack pages cost no memory.
            .thread_stack_size(16 * 1024 * 1024)
            .enable_all()
            .build()
            .expect("failed to start the tokio runtime");
        (std::process::id(), rt)
    });
    if *pid != std::process::id() {
        return Err(PyRuntimeError::new_err(
            "mmm was used in this process's parent before it forked, and its background threads do not survive a fork: create mmm objects (servers, tailers, replicators) only in the child, or start the child with the 'spawn' multiprocessing method",
        ));
    }
    // asyncio bridges (pyo3-async-runtimes) run their futures on this same runtime.
    static BRIDGED: std::sync::Once = std::sync::Once::new();
    BRIDGED.call_once(|| {
        let _ = pyo3_async_runtimes::tokio::init_with_runtime(rt);
    });
    Ok(rt)
}
