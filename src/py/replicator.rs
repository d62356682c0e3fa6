//! `mmm._mmm.ReplicatorCore`: the replication engine driven from Python. `mmm.Replicator` builds
//! the topology (from YAML or arguments) and turns events into callbacks and logs.

use super::specs::{topology, LinkArg, ServerArg};
use super::tailer::parse_client_options;
use crate::replicate::{LinkEvent, LinkSpec, Replicator, ServerSpec};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::HashMap;
use tokio::sync::mpsc;

#[pyclass(name = "ReplicatorCore", module = "mmm._mmm")]
pub struct PyReplicatorCore {
    servers: Vec<ServerSpec>,
    links: Vec<LinkSpec>,
    running: parking_lot::Mutex<Option<Replicator>>,
    events: std::sync::Arc<tokio::sync::Mutex<Option<mpsc::UnboundedReceiver<LinkEvent>>>>,
}

fn ts_tuple(ts: Option<bson::Timestamp>) -> Option<(u32, u32)> {
    ts.map(|t| (t.time, t.increment))
}

#[pymethods]
impl PyReplicatorCore {
    /// `servers`: objects with `name`, `id`, `uri` (`mmm.Server`); `links`: objects with `src`,
    /// `dst`, `ops`, `forward`, `initial_sync`, `marker` (`mmm.Link`), endpoints written
    /// `server/db.coll` (or `server/db.*`, `server/*`).
    #[new]
    fn new(py: Python<'_>, servers: Vec<ServerArg>, links: Vec<LinkArg>) -> PyResult<Self> {
        let (servers, specs) = topology(servers, links)?;
        for s in &servers {
            parse_client_options(&s.uri).map_err(|e| {
                match e.is_instance_of::<PyValueError>(py) {
                    true => PyValueError::new_err(format!("server {:?}: {}", s.name, e.value(py))),
                    false => e, // the runtime's RuntimeError after a fork stays what it is
                }
            })?;
        }
        Ok(PyReplicatorCore {
            servers,
            links: specs,
            running: Default::default(),
            events: Default::default(),
        })
    }

    /// Link ids in declaration order.
    fn link_ids(&self) -> Vec<String> {
        self.links.iter().map(|l| l.id()).collect()
    }

    /// Starts the link `link` (its id, as `link_ids` gives it) over with an initial sync at its
    /// next run; returns the source position `(time, inc)` it will follow on from. `mirror`:
    /// the copy also deletes destination documents the source does not have.
    #[pyo3(signature = (link, mirror = false))]
    fn resync(&self, py: Python<'_>, link: &str, mirror: bool) -> PyResult<(u32, u32)> {
        if self.running.lock().as_ref().is_some_and(|r| !r.finished()) {
            return Err(PyRuntimeError::new_err(
                "stop the replicator before resyncing a link",
            ));
        }
        let Some(spec) = self.links.iter().find(|l| l.id() == link) else {
            let known: Vec<String> = self.links.iter().map(|l| l.id()).collect();
            return Err(PyValueError::new_err(format!(
                "unknown link {link:?} (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        };
        let server = |name: &str| self.servers.iter().find(|s| s.name == name).unwrap();
        let (src, dst) = (server(&spec.src), server(&spec.dst));
        // An unreachable server is an error within seconds (unless the URI sets its own).
        let options = |uri: &str| -> PyResult<_> {
            let mut o = parse_client_options(uri)?;
            o.server_selection_timeout
                .get_or_insert(std::time::Duration::from_secs(10));
            Ok(o)
        };
        let (src_options, dst_options) = (options(&src.uri)?, options(&dst.uri)?);
        let rt = crate::runtime::get()?;
        let start = py
            .detach(|| {
                rt.block_on(crate::replicate::resync::resync(
                    spec,
                    src,
                    dst,
                    src_options,
                    dst_options,
                    mirror,
                ))
            })
            .map_err(|e| {
                // Driver and server messages may quote a URI: no secret of either server shows.
                let mut secrets = crate::redact::secrets(&src.uri);
                secrets.extend(crate::redact::secrets(&dst.uri));
                let e = crate::redact::text(&e, &secrets);
                PyRuntimeError::new_err(format!("resync of link {link}: {e}"))
            })?;
        Ok((start.time, start.increment))
    }

    /// `lease_ttl` (seconds): each link works only while this process holds the link's lease
    /// on its destination; None runs every link unconditionally.
    #[pyo3(signature = (lease_ttl = None))]
    fn start(&self, lease_ttl: Option<f64>) -> PyResult<()> {
        let lease_ttl = lease_ttl
            .map(|ttl| super::lease::ttl_from_seconds("lease_ttl", ttl))
            .transpose()?;
        if self.running.lock().is_some() {
            return Err(PyRuntimeError::new_err("the replicator is already running"));
        }
        let mut options = HashMap::new();
        for s in &self.servers {
            let mut o = parse_client_options(&s.uri)?;
            o.app_name = Some(format!("mmm link {}", s.name));
            options.insert(s.name.clone(), o);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let rt = crate::runtime::get()?;
        let _guard = rt.enter();
        let replicator = Replicator::start(&self.servers, &self.links, &options, tx, lease_ttl)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        *self.running.lock() = Some(replicator);
        *self.events.blocking_lock() = Some(rx);
        Ok(())
    }

    fn stop(&self) {
        if let Some(r) = self.running.lock().as_ref() {
            r.stop();
        }
    }

    /// True once every link has stopped or failed.
    #[getter]
    fn finished(&self) -> bool {
        self.running.lock().as_ref().is_none_or(|r| r.finished())
    }

    /// Waits up to `timeout` seconds for an event: `{"kind": "conflict", ...}` or
    /// `{"kind": "failed", "link": ..., "error": ...}`; None when nothing happened.
    fn next_event<'py>(
        &self,
        py: Python<'py>,
        timeout: f64,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let events = self.events.clone();
        let rt = crate::runtime::get()?;
        let event = super::wait_detached(py, timeout, |slice| {
            rt.block_on(async {
                let mut guard = events.lock().await;
                match guard.as_mut() {
                    Some(rx) => tokio::time::timeout(slice, rx.recv()).await.ok(),
                    None => Some(None),
                }
            })
        })?;
        let Some(event) = event else { return Ok(None) };
        let d = PyDict::new(py);
        match event {
            LinkEvent::Conflict(c) => {
                d.set_item("kind", "conflict")?;
                d.set_item("server", c.server)?;
                d.set_item("from", c.from)?;
                d.set_item("namespace", c.namespace)?;
                let mut idb = Vec::new();
                bson::doc! {"_id": c.id}
                    .to_writer(&mut idb)
                    .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
                d.set_item("id_bson", pyo3::types::PyBytes::new(py, &idb))?;
                d.set_item("local_ts", (c.local_ts.time, c.local_ts.increment))?;
                d.set_item("incoming_ts", (c.incoming_ts.time, c.incoming_ts.increment))?;
            }
            LinkEvent::Failed { link, error } => {
                d.set_item("kind", "failed")?;
                d.set_item("link", link)?;
                d.set_item("error", error)?;
            }
        }
        Ok(Some(d))
    }

    /// One dict per link: id, src, dst, state, checkpoint, lag_seconds, lag_ops, ops_applied,
    /// batches_applied, echoes_skipped, conflicts, rejected, initial_sync (copied, total),
    /// last_error.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let mut out = Vec::new();
        let running = self.running.lock();
        let Some(r) = running.as_ref() else {
            for l in &self.links {
                let d = PyDict::new(py);
                d.set_item("id", l.id())?;
                d.set_item("src", &l.src)?;
                d.set_item("dst", &l.dst)?;
                d.set_item("state", "not started")?;
                out.push(d);
            }
            return Ok(out);
        };
        for status in &r.statuses {
            let s = status.lock().clone();
            let d = PyDict::new(py);
            d.set_item("id", &s.id)?;
            d.set_item("src", &s.src)?;
            d.set_item("dst", &s.dst)?;
            d.set_item("state", s.state.as_str())?;
            d.set_item("checkpoint", ts_tuple(s.checkpoint))?;
            d.set_item("lag_seconds", s.current_lag_seconds())?;
            d.set_item("lag_ops", s.lag_ops)?;
            d.set_item("ops_applied", s.ops_applied)?;
            d.set_item("batches_applied", s.batches_applied)?;
            d.set_item("echoes_skipped", s.ops_skipped_echo)?;
            d.set_item("conflicts", s.conflicts)?;
            d.set_item("rejected", s.rejected)?;
            d.set_item(
                "initial_sync",
                (s.initial_sync_copied, s.initial_sync_total),
            )?;
            d.set_item("last_error", s.last_error)?;
            let lease = s.lease.as_ref().map(|l| l.borrow().clone());
            d.set_item(
                "lease",
                lease
                    .map(|l| super::lease::state_to_py(py, &l))
                    .transpose()?,
            )?;
            out.push(d);
        }
        Ok(out)
    }
}
