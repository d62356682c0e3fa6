//! `mmm._mmm.ReplicatorCore`: the replication engine driven from Python. `mmm.Replicator` builds
//! the topology (from YAML or arguments) and turns events into callbacks and logs.

use super::specs::{topology, LinkArg, ServerArg};
use super::tailer::parse_client_options;
use crate::apply::converge::{ConflictView, Resolve};
use crate::converge::{Policy, PolicyMap};
use crate::replicate::headroom::read_oplog_stats;
use crate::replicate::verify::{self, PairReport, VerifyOptions, VerifyProgressView};
use crate::replicate::{LinkEvent, LinkSpec, Replicator, ServerSpec};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Per link id, per namespace pattern: (kind, server id, deletes).
type PolicyArgs = HashMap<String, HashMap<String, (String, String, String)>>;

/// A Python resolver function, called through `mmm.policies._call_resolver` (BSON both ways).
struct PyResolver {
    func: Py<PyAny>,
}

fn resolver_bson(d: &bson::Document) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    d.to_writer(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

impl Resolve for PyResolver {
    fn resolve(&self, c: &ConflictView) -> Result<Option<bson::Document>, String> {
        let id = resolver_bson(&bson::doc! {"_id": c.id.clone()})?;
        let ours = c.ours.as_ref().map(resolver_bson).transpose()?;
        let theirs = c.theirs.as_ref().map(resolver_bson).transpose()?;
        Python::attach(|py| {
            let call = || -> PyResult<Option<Vec<u8>>> {
                let helper = py.import("mmm.policies")?.getattr("_call_resolver")?;
                let out = helper.call1((
                    self.func.bind(py),
                    &c.namespace,
                    pyo3::types::PyBytes::new(py, &id),
                    ours.as_deref().map(|b| pyo3::types::PyBytes::new(py, b)),
                    theirs.as_deref().map(|b| pyo3::types::PyBytes::new(py, b)),
                    (c.ours_stamp.h, c.ours_stamp.site.clone()),
                    (c.theirs_stamp.h, c.theirs_stamp.site.clone()),
                ))?;
                if out.is_none() {
                    return Ok(None);
                }
                Ok(Some(out.extract::<Vec<u8>>()?))
            };
            match call() {
                Ok(None) => Ok(None),
                Ok(Some(bytes)) => bson::Document::from_reader(&mut bytes.as_slice())
                    .map(Some)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

#[pyclass(name = "ReplicatorCore", module = "mmm._mmm")]
pub struct PyReplicatorCore {
    servers: Vec<ServerSpec>,
    links: Vec<LinkSpec>,
    /// Resolver functions per link id, per namespace pattern.
    resolvers: HashMap<String, HashMap<String, Arc<dyn Resolve>>>,
    tombstone_retention: std::time::Duration,
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
    #[pyo3(signature = (servers, links, policies = None, resolvers = None, tombstone_retention = 864000.0))]
    fn new(
        py: Python<'_>,
        servers: Vec<ServerArg>,
        links: Vec<LinkArg>,
        policies: Option<PolicyArgs>,
        resolvers: Option<HashMap<String, HashMap<String, Py<PyAny>>>>,
        tombstone_retention: f64,
    ) -> PyResult<Self> {
        if !(tombstone_retention.is_finite()
            && tombstone_retention > 0.0
            && tombstone_retention < 1e10)
        {
            return Err(PyValueError::new_err(format!(
                "tombstone_retention is a positive number of seconds, got {tombstone_retention}"
            )));
        }
        let (servers, mut specs) = topology(servers, links)?;
        for spec in specs.iter_mut() {
            let Some(patterns) = policies.as_ref().and_then(|p| p.get(&spec.id())) else {
                continue;
            };
            let mut map = BTreeMap::new();
            for (pattern, (kind, site, deletes)) in patterns {
                let policy = Policy::from_parts(kind, site, deletes).map_err(|e| {
                    PyValueError::new_err(format!("link {}: resolve {pattern:?}: {e}", spec.id()))
                })?;
                map.insert(pattern.clone(), policy);
            }
            spec.policies = PolicyMap::new(map)
                .map_err(|e| PyValueError::new_err(format!("link {}: {e}", spec.id())))?;
        }
        let resolvers = resolvers
            .unwrap_or_default()
            .into_iter()
            .map(|(link, funcs)| {
                let funcs = funcs
                    .into_iter()
                    .map(|(pattern, func)| {
                        (pattern, Arc::new(PyResolver { func }) as Arc<dyn Resolve>)
                    })
                    .collect();
                (link, funcs)
            })
            .collect();
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
            resolvers,
            tombstone_retention: std::time::Duration::from_secs_f64(tombstone_retention),
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

    /// Brings one `_id` into agreement between `a_server/a_ns` and `b_server/b_ns` (see
    /// `replicate/repair.rs`); returns (winning server name, clock, site) of the version both
    /// now hold, or None when they already agreed.
    fn repair_document(
        &self,
        py: Python<'_>,
        a_server: &str,
        a_ns: &str,
        b_server: &str,
        b_ns: &str,
        id_bson: &[u8],
    ) -> PyResult<Option<(String, i64, String)>> {
        let id = bson::Document::from_reader(&mut &id_bson[..])
            .ok()
            .and_then(|d| d.get("_id").cloned())
            .ok_or_else(|| PyValueError::new_err("id_bson is {\"_id\": <id>} as BSON"))?;
        let server = |name: &str| {
            self.servers
                .iter()
                .find(|s| s.name == name)
                .ok_or_else(|| PyValueError::new_err(format!("unknown server {name:?}")))
        };
        let (a, b) = (server(a_server)?, server(b_server)?);
        let policies = self
            .links
            .iter()
            .find(|l| l.dst == b.name && l.src == a.name)
            .or_else(|| {
                self.links
                    .iter()
                    .find(|l| l.dst == a.name && l.src == b.name)
            })
            .map(|l| l.policies.clone())
            .unwrap_or_default();
        let options = |s: &ServerSpec| -> PyResult<_> {
            let mut o = parse_client_options(&s.uri)?;
            o.server_selection_timeout
                .get_or_insert(std::time::Duration::from_secs(10));
            o.app_name = Some(format!("mmm repair {}", s.name));
            Ok(o)
        };
        let (ao, bo) = (options(a)?, options(b)?);
        let rt = crate::runtime::get()?;
        let out = py
            .detach(|| {
                rt.block_on(crate::replicate::repair::repair_document(
                    crate::replicate::repair::End {
                        server: a,
                        options: ao,
                        ns: a_ns,
                    },
                    crate::replicate::repair::End {
                        server: b,
                        options: bo,
                        ns: b_ns,
                    },
                    &policies,
                    &id,
                ))
            })
            .map_err(|e| {
                let mut secrets = crate::redact::secrets(&a.uri);
                secrets.extend(crate::redact::secrets(&b.uri));
                PyRuntimeError::new_err(format!("repair: {}", crate::redact::text(&e, &secrets)))
            })?;
        Ok(out.map(|(w, s)| (w, s.h, s.site)))
    }

    /// Compares every pair of namespaces the links join (or those naming `ns`): see
    /// `replicate/verify.rs`. Returns one dict per pair; documents and `_id`s as BSON bytes.
    /// `progress(dict)` is called about every `progress_every` seconds while it runs.
    #[pyo3(signature = (ns=None, range_size=1000, catch_up_timeout=30.0, max_rounds=4, max_listed=100, restart=false, progress=None, progress_every=1.0))]
    #[allow(clippy::too_many_arguments)]
    fn verify<'py>(
        &self,
        py: Python<'py>,
        ns: Option<String>,
        range_size: usize,
        catch_up_timeout: f64,
        max_rounds: usize,
        max_listed: usize,
        restart: bool,
        progress: Option<Bound<'py, PyAny>>,
        progress_every: f64,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        if !(catch_up_timeout.is_finite() && catch_up_timeout >= 0.0) {
            return Err(PyValueError::new_err(
                "catch_up_timeout is a number of seconds >= 0",
            ));
        }
        if range_size == 0 {
            return Err(PyValueError::new_err("range_size must be at least 1"));
        }
        let mut options = HashMap::new();
        for s in &self.servers {
            let mut o = parse_client_options(&s.uri)?;
            o.server_selection_timeout
                .get_or_insert(std::time::Duration::from_secs(10));
            o.app_name = Some(format!("mmm verify {}", s.name));
            options.insert(s.name.clone(), o);
        }
        let opts = VerifyOptions {
            ns,
            range_size,
            catch_up_timeout: std::time::Duration::from_secs_f64(catch_up_timeout),
            max_rounds,
            max_listed,
            restart,
        };
        let shared = std::sync::Arc::new(parking_lot::Mutex::new(VerifyProgressView::default()));
        let (servers, links) = (self.servers.clone(), self.links.clone());
        let rt = crate::runtime::get()?;
        let task = {
            let shared = shared.clone();
            rt.spawn(async move { verify::verify(&servers, &links, &options, &opts, shared).await })
        };
        // Stopped (Ctrl-C, an exception in `progress`): the task ends with the handle; what
        // it saved in `__mmm.verify` lets the next run resume.
        struct AbortOnDrop(tokio::task::AbortHandle);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let _abort = AbortOnDrop(task.abort_handle());
        let mut task = Some(task);
        let result = loop {
            let done = super::wait_detached(py, progress_every.max(0.05), |slice| {
                let t = task.as_mut()?;
                rt.block_on(async { tokio::time::timeout(slice, t).await.ok() })
                    .map(Some)
            })?;
            if let Some(joined) = done {
                break joined;
            }
            if let Some(callback) = &progress {
                let view = shared.lock().clone();
                let d = PyDict::new(py);
                d.set_item("pair", view.pair)?;
                d.set_item("pairs_done", view.pairs_done)?;
                d.set_item("pairs", view.pairs)?;
                d.set_item("phase", view.phase)?;
                d.set_item("compared", view.compared)?;
                d.set_item("estimate", view.estimate)?;
                d.set_item("ranges_differing", view.suspects)?;
                callback.call1((d,))?;
            }
        };
        let reports = result
            .map_err(|e| PyRuntimeError::new_err(format!("verify stopped: {e}")))?
            .map_err(|e| {
                let mut secrets = Vec::new();
                for s in &self.servers {
                    secrets.extend(crate::redact::secrets(&s.uri));
                }
                let text = crate::redact::text(&e.to_string(), &secrets);
                match e {
                    verify::VerifyError::Usage(_) => PyValueError::new_err(text),
                    _ => PyRuntimeError::new_err(text),
                }
            })?;
        reports.iter().map(|r| pair_report(py, r)).collect()
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
        let replicator = Replicator::start(
            &self.servers,
            &self.links,
            &options,
            tx,
            self.resolvers.clone(),
            self.tombstone_retention,
            lease_ttl,
        )
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
                d.set_item("ours", (c.ours.h, c.ours.site))?;
                d.set_item("theirs", (c.theirs.h, c.theirs.site))?;
                d.set_item("policy", c.policy)?;
                d.set_item("winner", c.winner)?;
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
    /// batches_applied, echoes_skipped, conflicts, retries, rejected, initial_sync (copied, total),
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
            d.set_item("retries", s.retries)?;
            d.set_item("rejected", s.rejected)?;
            d.set_item(
                "initial_sync",
                (s.initial_sync_copied, s.initial_sync_total),
            )?;
            d.set_item("last_error", s.last_error)?;
            let headroom = s
                .oplog
                .as_ref()
                .map(|o| o.to_document(s.checkpoint))
                .map(|h| doc_to_py(py, &h))
                .transpose()?;
            d.set_item("oplog", headroom)?;
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

fn bson_bytes(d: &bson::Document) -> PyResult<Vec<u8>> {
    let mut out = Vec::new();
    d.to_writer(&mut out)
        .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(out)
}

/// A document as a Python dict (through its BSON bytes, decoded by PyMongo's `bson`).
fn doc_to_py<'py>(py: Python<'py>, d: &bson::Document) -> PyResult<Bound<'py, PyAny>> {
    let bytes = pyo3::types::PyBytes::new(py, &bson_bytes(d)?);
    py.import("bson")?.call_method1("decode", (bytes,))
}

fn pair_report<'py>(py: Python<'py>, r: &PairReport) -> PyResult<Bound<'py, PyDict>> {
    use pyo3::types::PyBytes;
    let d = PyDict::new(py);
    d.set_item("key", &r.key)?;
    d.set_item("a", (&r.a_server, &r.a_ns))?;
    d.set_item("b", (&r.b_server, &r.b_ns))?;
    d.set_item("as_of_ms", r.as_of.timestamp_millis())?;
    d.set_item("compared", r.compared)?;
    d.set_item("differences", r.differences)?;
    d.set_item("suspect_ranges", r.suspect_ranges)?;
    let mut listed = Vec::new();
    for diff in &r.listed {
        let item = PyDict::new(py);
        item.set_item(
            "id_bson",
            PyBytes::new(py, &bson_bytes(&bson::doc! {"_id": diff.id.clone()})?),
        )?;
        item.set_item("a", diff.a.as_ref().map(|a| PyBytes::new(py, a.as_bytes())))?;
        item.set_item("b", diff.b.as_ref().map(|b| PyBytes::new(py, b.as_bytes())))?;
        listed.push(item);
    }
    d.set_item("listed", listed)?;
    let mut unsettled = Vec::new();
    for id in &r.unsettled {
        unsettled.push(PyBytes::new(
            py,
            &bson_bytes(&bson::doc! {"_id": id.clone()})?,
        ));
    }
    d.set_item("unsettled", unsettled)?;
    d.set_item("lagging_links", r.lagging_links.clone())?;
    d.set_item("resumed", r.resumed.clone())?;
    Ok(d)
}

/// `oplog_headroom(uri, positions)`: a source's oplog headroom as `status()` shows it (see
/// `replicate/headroom.rs`), with the margin of each position `(time, inc)` in `positions`
/// (a list of dicts with `margin_seconds` and `near_rollover`, in order).
#[pyfunction]
#[pyo3(signature = (uri, positions=Vec::new()))]
pub fn oplog_headroom<'py>(
    py: Python<'py>,
    uri: &str,
    positions: Vec<(u32, u32)>,
) -> PyResult<(Bound<'py, PyAny>, Vec<Bound<'py, PyAny>>)> {
    let mut o = parse_client_options(uri)?;
    o.server_selection_timeout
        .get_or_insert(std::time::Duration::from_secs(10));
    let rt = crate::runtime::get()?;
    let stats = py
        .detach(|| {
            rt.block_on(async {
                let client = mongodb::Client::with_options(o).map_err(|e| e.to_string())?;
                read_oplog_stats(&client).await
            })
        })
        .map_err(|e| {
            PyRuntimeError::new_err(crate::redact::text(&e, &crate::redact::secrets(uri)))
        })?;
    let source = doc_to_py(py, &stats.to_document(None))?;
    let mut links = Vec::new();
    for (time, increment) in positions {
        let full = stats.to_document(Some(bson::Timestamp { time, increment }));
        let d = bson::doc! {
            "margin_seconds": full.get("margin_seconds").cloned().unwrap_or(bson::Bson::Null),
            "near_rollover": full.get_bool("near_rollover").unwrap_or(false),
        };
        links.push(doc_to_py(py, &d)?);
    }
    Ok((source, links))
}
