//! `mmm._mmm.TailerCore`: the Rust tailer driven from Python. The Python `mmm.Tailer` owns the
//! trigger functions; this object only yields batches of matched ops as BSON bytes.

use super::errors::tail_error_to_py;
use crate::oplog::{NsPattern, OpSet, Subscriptions};
use crate::tail::{run, Delivery, Selector, StartAt, TailError, TailEvent, TailOptions, UnitBatch};
use bson::Timestamp;
use mongodb::options::ClientOptions;
use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

type Receiver = mpsc::Receiver<TailEvent>;

#[pyclass(name = "TailerCore", module = "mmm._mmm")]
pub struct PyTailerCore {
    options: Option<TailOptions>,
    selector: Arc<Selector>,
    receiver: Arc<tokio::sync::Mutex<Option<Receiver>>>,
    stop: watch::Sender<bool>,
    pid: Mutex<Option<u32>>,
}

fn parse_start(start: &Bound<'_, PyAny>) -> PyResult<StartAt> {
    if start.is_none() {
        return Ok(StartAt::Now);
    }
    if let Ok(s) = start.extract::<String>() {
        return match s.as_str() {
            "now" => Ok(StartAt::Now),
            "oldest" => Ok(StartAt::Oldest),
            other => Err(PyValueError::new_err(format!(
                "checkpoint must be None, \"now\", \"oldest\" or a bson.Timestamp, got {other:?}"
            ))),
        };
    }
    if let Ok((time, increment)) = start.extract::<(u32, u32)>() {
        return Ok(StartAt::After(Timestamp { time, increment }));
    }
    Err(PyValueError::new_err(
        "checkpoint must be None, \"now\", \"oldest\" or a bson.Timestamp",
    ))
}

/// The driver's options for `uri`. A mistake is reported without the URI's secrets: the URI is
/// quoted redacted, and an ambiguous userinfo is refused before the driver quotes pieces of it.
pub fn parse_client_options(uri: &str) -> PyResult<ClientOptions> {
    let quoted = crate::redact::uri(uri, false);
    if let Some(problem) = crate::redact::userinfo_problem(uri) {
        return Err(PyValueError::new_err(format!(
            "invalid MongoDB URI {quoted:?}: {problem}"
        )));
    }
    let rt = crate::runtime::get()?;
    let mut options = rt
        .block_on(async { ClientOptions::parse(uri).await })
        .map_err(|e| {
            // The driver's own sentence, without its debug fields (labels, source, ...).
            let reason = match e.kind.as_ref() {
                mongodb::error::ErrorKind::InvalidArgument { message, .. } => message.clone(),
                _ => e.to_string(),
            };
            let reason = crate::redact::text(&reason, &crate::redact::secrets(uri));
            PyValueError::new_err(format!("invalid MongoDB URI {quoted:?}: {reason}"))
        })?;
    options.app_name.get_or_insert_with(|| "mmm".to_string());
    Ok(options)
}

/// The ops of one delivery that some trigger wants, in oplog order: `ops` holds them as
/// concatenated BSON documents, and each per-op list has one entry per op.
#[pyclass(name = "Batch", module = "mmm._mmm", frozen)]
pub struct PyBatch {
    /// The matched ops as concatenated BSON documents (`bson.decode_all`).
    #[pyo3(get)]
    ops: Py<PyBytes>,
    /// Per op: the indexes of the subscriptions it matched.
    #[pyo3(get)]
    subscriptions: Vec<Vec<u32>>,
    /// Per op: its `ts` as `(time, inc)` (a transaction's ops share the commit's).
    #[pyo3(get)]
    ts: Vec<(u32, u32)>,
    /// Per op: True when it ends its unit, so a checkpoint may move to its `ts`.
    #[pyo3(get)]
    unit_end: Vec<bool>,
    /// Where a consumer may checkpoint once every op here is handled, as `(time, inc)`.
    #[pyo3(get)]
    checkpoint: Option<(u32, u32)>,
    /// Oplog entries read to produce this batch, matched or not.
    #[pyo3(get)]
    entries_read: u64,
}

#[pymethods]
impl PyBatch {
    fn __len__(&self) -> usize {
        self.ts.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "Batch(ops={}, checkpoint={:?}, entries_read={})",
            self.ts.len(),
            self.checkpoint,
            self.entries_read
        )
    }
}

fn delivery_to_py(py: Python<'_>, d: Delivery) -> PyResult<Bound<'_, PyBatch>> {
    let batch = PyBatch {
        ops: PyBytes::new(py, &d.docs).unbind(),
        subscriptions: d.subscriptions,
        ts: d.ts.iter().map(|t| (t.time, t.increment)).collect(),
        unit_end: d.unit_end,
        checkpoint: d.checkpoint.map(|t| (t.time, t.increment)),
        entries_read: d.entries_read,
    };
    Bound::new(py, batch)
}

/// Picks the ops some trigger wants (on raw BSON, without the GIL).
fn select(selector: &Selector, batch: UnitBatch) -> Result<Delivery, TailError> {
    let mut delivery = Delivery {
        checkpoint: batch.checkpoint,
        entries_read: batch.entries_read,
        ..Default::default()
    };
    for unit in &batch.units {
        selector
            .select(unit, &mut delivery)
            .map_err(|e| TailError::Malformed(e.to_string()))?;
    }
    Ok(delivery)
}

fn receive(
    py: Python<'_>,
    result: Option<Result<Delivery, TailError>>,
) -> PyResult<Option<Bound<'_, PyBatch>>> {
    match result {
        Some(Ok(d)) => delivery_to_py(py, d).map(Some),
        Some(Err(e)) => Err(tail_error_to_py(&e)),
        None => Ok(None),
    }
}

#[pymethods]
impl PyTailerCore {
    /// `subscriptions`: a list of `(namespace pattern, op letters)`; an op's subscription ids
    /// are indexes into this list. `skip_through` `(time, inc)`: units at or before it were
    /// handled already (a stored checkpoint's `applied`), so a resume does not hand them on.
    #[new]
    #[pyo3(signature = (uri, subscriptions, start = None, batch_size = 5000, max_await_ms = 500, skip_through = None))]
    fn new(
        uri: &str,
        subscriptions: Vec<(String, String)>,
        start: Option<Bound<'_, PyAny>>,
        batch_size: u32,
        max_await_ms: u64,
        skip_through: Option<(u32, u32)>,
    ) -> PyResult<Self> {
        let mut subs = Subscriptions::new();
        for (ns, ops) in &subscriptions {
            let pattern = NsPattern::parse(ns).map_err(|e| PyValueError::new_err(e.to_string()))?;
            let ops = OpSet::parse(ops).map_err(|e| PyValueError::new_err(e.to_string()))?;
            subs.add(pattern, ops);
        }
        let start = match &start {
            Some(s) => parse_start(s)?,
            None => StartAt::Now,
        };
        if batch_size == 0 {
            return Err(PyValueError::new_err("batch_size must be at least 1"));
        }
        let options = TailOptions {
            options: parse_client_options(uri)?,
            start,
            batch_size,
            max_await: Duration::from_millis(max_await_ms.max(1)),
            skip_through: skip_through.map(|(time, increment)| Timestamp { time, increment }),
        };
        Ok(PyTailerCore {
            options: Some(options),
            selector: Arc::new(Selector::new(subs)),
            receiver: Arc::new(tokio::sync::Mutex::new(None)),
            stop: watch::channel(false).0,
            pid: Mutex::new(None),
        })
    }

    /// Starts following the oplog on the background runtime.
    fn start(&mut self) -> PyResult<()> {
        let Some(options) = self.options.take() else {
            return Err(PyRuntimeError::new_err("this tailer was already started"));
        };
        let (tx, rx) = mpsc::channel(4);
        *self.receiver.blocking_lock() = Some(rx);
        *self.pid.lock() = Some(std::process::id());
        let stop = self.stop.subscribe();
        crate::runtime::get()?.spawn(run(options, tx, stop));
        Ok(())
    }

    fn check_process(&self) -> PyResult<()> {
        if self.pid.lock().is_some_and(|p| p != std::process::id()) {
            return Err(PyRuntimeError::new_err(
                "this tailer was started in another process (before a fork); create and start tailers in the process that uses them",
            ));
        }
        Ok(())
    }

    /// Waits up to `timeout` seconds for the next batch; None on timeout or after stop.
    fn next_batch<'py>(
        &self,
        py: Python<'py>,
        timeout: f64,
    ) -> PyResult<Option<Bound<'py, PyBatch>>> {
        self.check_process()?;
        let receiver = self.receiver.clone();
        let selector = self.selector.clone();
        let rt = crate::runtime::get()?;
        let message = super::wait_detached(py, timeout, |slice| {
            rt.block_on(async {
                let mut guard = receiver.lock().await;
                let Some(rx) = guard.as_mut() else {
                    return Some(None);
                };
                let message = tokio::time::timeout(slice, rx.recv()).await.ok()?;
                Some(message.map(|m| m.and_then(|b| select(&selector, b))))
            })
        })?;
        receive(py, message)
    }

    /// The same as `next_batch` for asyncio: an awaitable of the next batch (None after stop).
    fn next_batch_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.check_process()?;
        crate::runtime::get()?;
        let receiver = self.receiver.clone();
        let selector = self.selector.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let message = {
                let mut guard = receiver.lock().await;
                match guard.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => None,
                }
            };
            let message = message.map(|m| m.and_then(|b| select(&selector, b)));
            Python::attach(|py| receive(py, message).map(|o| o.map(|t| t.unbind())))
        })
    }

    /// Stops the background task; pending `next_batch` calls return None.
    fn stop(&self) {
        self.stop.send_replace(true);
    }
}
