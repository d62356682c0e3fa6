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
use pyo3::types::{PyBytes, PyList, PyTuple};
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

pub fn parse_client_options(uri: &str) -> PyResult<ClientOptions> {
    let rt = crate::runtime::get();
    let mut options = rt
        .block_on(async { ClientOptions::parse(uri).await })
        .map_err(|e| PyValueError::new_err(format!("invalid MongoDB URI {uri:?}: {e}")))?;
    options.app_name.get_or_insert_with(|| "mmm".to_string());
    Ok(options)
}

fn delivery_to_py<'py>(py: Python<'py>, d: Delivery) -> PyResult<Bound<'py, PyTuple>> {
    let docs = PyBytes::new(py, &d.docs);
    let subs = PyList::empty(py);
    for s in &d.subscriptions {
        subs.append(PyTuple::new(py, s)?)?;
    }
    let ts = PyList::empty(py);
    for t in &d.ts {
        ts.append((t.time, t.increment))?;
    }
    let ends = PyList::new(py, &d.unit_end)?;
    let checkpoint = d.checkpoint.map(|t| (t.time, t.increment));
    (docs, subs, ts, ends, checkpoint, d.entries_read).into_pyobject(py)
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
) -> PyResult<Option<Bound<'_, PyTuple>>> {
    match result {
        Some(Ok(d)) => delivery_to_py(py, d).map(Some),
        Some(Err(e)) => Err(tail_error_to_py(&e)),
        None => Ok(None),
    }
}

#[pymethods]
impl PyTailerCore {
    /// `subscriptions`: a list of `(namespace pattern, op letters)`; an op's subscription ids
    /// are indexes into this list.
    #[new]
    #[pyo3(signature = (uri, subscriptions, start = None, batch_size = 5000, max_await_ms = 500))]
    fn new(
        uri: &str,
        subscriptions: Vec<(String, String)>,
        start: Option<Bound<'_, PyAny>>,
        batch_size: u32,
        max_await_ms: u64,
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
            skip_through: None,
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
        crate::runtime::get().spawn(run(options, tx, stop));
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
    /// Returns `(bson_bytes, subscription_ids, ts_list, unit_end_list, checkpoint, entries_read)`.
    fn next_batch<'py>(
        &self,
        py: Python<'py>,
        timeout: f64,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.check_process()?;
        let receiver = self.receiver.clone();
        let selector = self.selector.clone();
        let message = super::wait_detached(py, timeout, |slice| {
            crate::runtime::get().block_on(async {
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
