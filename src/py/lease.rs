//! `mmm._mmm.LeaseCore`: a lease kept by the Rust core for a Python tailer (see
//! `store/leases.rs`), and the filters a Python checkpoint write is fenced with.

use super::errors::MmmError;
use super::tailer::parse_client_options;
use crate::store::lease_keeper::{Heartbeat, KeeperState, LeaseKeeper};
use crate::store::leases::{self, Holder};
use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use std::time::Duration;

/// `seconds` as a TTL, refusing what no lease can have (ValueError naming `what`).
pub fn ttl_from_seconds(what: &str, seconds: f64) -> PyResult<Duration> {
    if !seconds.is_finite() || seconds < 0.1 || seconds > 86_400.0 {
        return Err(PyValueError::new_err(format!(
            "{what} must be between 0.1 and 86400 seconds, got {seconds}"
        )));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A keeper's state as a dict: `held` (this process works), `term`, `holder` (`id`, `host`,
/// `pid`), `expires` (datetime, server clock), `error`.
pub fn state_to_py<'py>(py: Python<'py>, s: &KeeperState) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("held", s.valid_term().is_some())?;
    d.set_item("term", s.lease.as_ref().map(|l| l.term))?;
    match &s.lease {
        Some(l) => {
            let holder = PyDict::new(py);
            holder.set_item("id", &l.holder.id)?;
            holder.set_item("host", &l.holder.host)?;
            holder.set_item("pid", l.holder.pid)?;
            d.set_item("holder", holder)?;
            d.set_item("expires_ms", l.expires().timestamp_millis())?;
        }
        None => {
            d.set_item("holder", py.None())?;
            d.set_item("expires_ms", py.None())?;
        }
    }
    d.set_item("error", s.error.clone())?;
    Ok(d)
}

#[pyclass(name = "LeaseCore", module = "mmm._mmm")]
pub struct PyLeaseCore {
    uri: String,
    name: String,
    ttl: Duration,
    keeper: Mutex<Option<LeaseKeeper>>,
    pid: Mutex<Option<u32>>,
    heartbeat: std::sync::Arc<Heartbeat>,
}

impl PyLeaseCore {
    fn with_keeper<T>(&self, f: impl FnOnce(&LeaseKeeper) -> T) -> PyResult<Option<T>> {
        if self.pid.lock().is_some_and(|p| p != std::process::id()) {
            return Err(PyRuntimeError::new_err(
                "this lease was taken in another process (before a fork); create tailers in the process that uses them",
            ));
        }
        Ok(self.keeper.lock().as_ref().map(f))
    }
}

#[pymethods]
impl PyLeaseCore {
    /// The lease `name` (a full lease id, e.g. `tailer:<name>`) in `__mmm.leases` of the server
    /// at `uri`, expiring `ttl` seconds after each renewal.
    #[new]
    fn new(uri: &str, name: &str, ttl: f64) -> PyResult<Self> {
        let ttl = ttl_from_seconds("lease_ttl", ttl)?;
        leases::validate(name, ttl).map_err(PyValueError::new_err)?;
        parse_client_options(uri)?;
        Ok(PyLeaseCore {
            uri: uri.to_string(),
            name: name.to_string(),
            ttl,
            keeper: Mutex::new(None),
            pid: Mutex::new(None),
            heartbeat: Heartbeat::new(),
        })
    }

    /// Starts taking and renewing the lease in the background.
    fn start(&self) -> PyResult<()> {
        if self.keeper.lock().is_some() {
            return Err(PyRuntimeError::new_err("this lease is already kept"));
        }
        let options = parse_client_options(&self.uri)?;
        let rt = crate::runtime::get()?;
        let _guard = rt.enter();
        let client = mongodb::Client::with_options(options)
            .map_err(|e| MmmError::new_err(format!("lease {}: {e}", self.name)))?;
        self.heartbeat.beat();
        let keeper = LeaseKeeper::start_with(
            client,
            self.name.clone(),
            Holder::this_process(),
            self.ttl,
            Some(self.heartbeat.clone()),
        );
        *self.keeper.lock() = Some(keeper);
        *self.pid.lock() = Some(std::process::id());
        Ok(())
    }

    /// The term this process holds, while its lease is valid; None otherwise.
    #[getter]
    fn term(&self) -> PyResult<Option<i64>> {
        Ok(self.with_keeper(|k| k.state().valid_term())?.flatten())
    }

    /// The working loop's sign of life: the lease is renewed (or taken) only while this is
    /// called at least once per TTL (`wait` counts as one).
    fn beat(&self) {
        self.heartbeat.beat();
    }

    /// Waits up to `timeout` seconds for this process to hold the lease; its term, or None.
    fn wait(&self, py: Python<'_>, timeout: f64) -> PyResult<Option<i64>> {
        self.heartbeat.beat();
        let Some(state) = self.with_keeper(|k| k.subscribe())? else {
            return Err(PyRuntimeError::new_err("the lease is not started"));
        };
        let rt = crate::runtime::get()?;
        super::wait_detached(py, timeout, |slice| {
            let mut state = state.clone();
            rt.block_on(async {
                let deadline = tokio::time::Instant::now() + slice;
                loop {
                    if let Some(term) = state.borrow_and_update().valid_term() {
                        return Some(Some(term));
                    }
                    match tokio::time::timeout_at(deadline, state.changed()).await {
                        Ok(Ok(())) => continue,
                        Ok(Err(_)) => return Some(None),
                        Err(_) => return None,
                    }
                }
            })
        })
    }

    /// Who holds the lease: see `state_to_py`.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let state = self.with_keeper(|k| k.state())?;
        state.map(|s| state_to_py(py, &s)).transpose()
    }

    /// Stops renewing and releases the lease if held (a waiter takes over at its next look).
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let Some(keeper) = self.keeper.lock().take() else {
            return Ok(());
        };
        if self.pid.lock().is_some_and(|p| p != std::process::id()) {
            return Ok(()); // a forked child: the parent's keeper is not ours to stop
        }
        let rt = crate::runtime::get()?;
        py.detach(|| rt.block_on(keeper.stop()));
        Ok(())
    }
}

/// The filter of a checkpoint write fenced by lease term `term`, as BSON bytes (see
/// `store/leases.rs`): written with upsert, it fails with DuplicateKey once a greater term has
/// claimed the document.
#[pyfunction]
fn fence_filter<'py>(py: Python<'py>, id: &str, term: i64) -> PyResult<Bound<'py, PyBytes>> {
    let mut out = Vec::new();
    leases::fence_filter(id, term)
        .to_writer(&mut out)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(PyBytes::new(py, &out))
}

/// The lease `name` (a full lease id) stored on the server at `uri`, as a dict (`term`, `holder`
/// with `id`, `host`, `pid`, `expires_ms`, `expired` by the server's clock), or None. Raises
/// MmmError when the server cannot be read within `timeout` seconds.
#[pyfunction]
#[pyo3(signature = (uri, name, timeout = 5.0))]
fn read_lease<'py>(
    py: Python<'py>,
    uri: &str,
    name: &str,
    timeout: f64,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    let mut options = parse_client_options(uri)?;
    let limit = Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
    options.server_selection_timeout = Some(limit);
    options.connect_timeout = Some(limit);
    let rt = crate::runtime::get()?;
    let found = py.detach(|| {
        rt.block_on(async {
            let client = mongodb::Client::with_options(options).map_err(|e| e.to_string())?;
            let lease = leases::read(&client, name).await;
            let now = leases::server_now(&client).await;
            client.shutdown().await;
            Ok::<_, String>((
                lease.map_err(|e| e.to_string())?,
                now.map_err(|e| e.to_string())?,
            ))
        })
    });
    let (lease, now) = found.map_err(|e| {
        let e = crate::redact::text(&e, &crate::redact::secrets(uri));
        MmmError::new_err(format!(
            "cannot read {}.{}: {e}",
            crate::store::MMM_DB,
            leases::LEASES
        ))
    })?;
    let Some(lease) = lease else { return Ok(None) };
    let state = KeeperState {
        lease: Some(lease.clone()),
        ..Default::default()
    };
    let d = state_to_py(py, &state)?;
    d.del_item("held")?;
    d.del_item("error")?;
    d.set_item("expired", lease.expired_at(now))?;
    Ok(Some(d))
}

/// ValueError for a lease name or TTL (seconds) no lease can have.
#[pyfunction]
fn validate_lease(name: &str, ttl: f64) -> PyResult<()> {
    let ttl = ttl_from_seconds("lease_ttl", ttl)?;
    leases::validate(name, ttl).map_err(PyValueError::new_err)
}

/// The lease id of a tailer name; ValueError for a name no lease can have.
#[pyfunction]
fn tailer_lease_id(name: &str) -> PyResult<String> {
    leases::validate(name, leases::DEFAULT_TTL).map_err(PyValueError::new_err)?;
    Ok(leases::tailer_lease(name))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("LEASES_COLLECTION", leases::LEASES)?;
    m.add("DEFAULT_LEASE_TTL", leases::DEFAULT_TTL.as_secs_f64())?;
    m.add_class::<PyLeaseCore>()?;
    m.add_function(wrap_pyfunction!(fence_filter, m)?)?;
    m.add_function(wrap_pyfunction!(tailer_lease_id, m)?)?;
    m.add_function(wrap_pyfunction!(validate_lease, m)?)?;
    m.add_function(wrap_pyfunction!(read_lease, m)?)?;
    Ok(())
}
