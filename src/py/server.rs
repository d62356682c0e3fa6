//! `mmm._mmm.MongoServer`: the embedded server as a Python object.

use crate::server::{MongoServer, ServerOptions};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use std::time::Duration;

#[pyclass(name = "MongoServer", module = "mmm._mmm", frozen)]
pub struct PyMongoServer {
    inner: MongoServer,
}

#[pymethods]
impl PyMongoServer {
    #[new]
    #[pyo3(signature = (port = 0, replset = "rs0".to_string(), oplog_size_mb = 256.0, host = "127.0.0.1".to_string(), advertise = None, test_commands = true))]
    fn new(
        py: Python<'_>,
        port: u16,
        replset: String,
        oplog_size_mb: f64,
        host: String,
        advertise: Option<String>,
        test_commands: bool,
    ) -> PyResult<Self> {
        if let Some(a) = &advertise {
            crate::server::check_advertise(a).map_err(PyValueError::new_err)?;
        }
        if !(oplog_size_mb > 0.0) {
            return Err(PyValueError::new_err(format!(
                "oplog_size_mb must be positive, got {oplog_size_mb}"
            )));
        }
        if replset.is_empty() {
            return Err(PyValueError::new_err(
                "replset must be a non-empty replica set name",
            ));
        }
        let options = ServerOptions {
            host,
            port,
            replset,
            oplog_size_bytes: (oplog_size_mb * 1024.0 * 1024.0) as u64,
            advertise,
            test_commands,
        };
        let rt = crate::runtime::get()?;
        let inner = py
            .detach(|| rt.block_on(MongoServer::start(options.clone())))
            .map_err(|e| {
                PyOSError::new_err(format!(
                    "cannot listen on {}:{}: {e}",
                    options.host, options.port
                ))
            })?;
        Ok(PyMongoServer { inner })
    }

    #[getter]
    fn port(&self) -> u16 {
        self.inner.port()
    }

    #[getter]
    fn address(&self) -> &str {
        self.inner.address()
    }

    #[getter]
    fn replset(&self) -> &str {
        self.inner.replset()
    }

    #[getter]
    fn stopped(&self) -> bool {
        self.inner.is_stopped()
    }

    fn stop(&self) {
        self.inner.stop();
    }

    fn drop_connections(&self) {
        self.inner.drop_connections();
    }

    fn hold_majority(&self) {
        self.inner.hold_majority();
    }

    fn release_majority(&self) {
        self.inner.release_majority();
    }

    #[getter]
    fn majority_held(&self) -> bool {
        self.inner.majority_held()
    }

    fn pause(&self, seconds: f64) -> PyResult<()> {
        if !(seconds >= 0.0) {
            return Err(PyValueError::new_err(format!(
                "seconds must be >= 0, got {seconds}"
            )));
        }
        self.inner.pause(Duration::from_secs_f64(seconds));
        Ok(())
    }
}
