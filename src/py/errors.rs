//! Exceptions raised by mmm (re-exported by the Python package as `mmm.MmmError`, ...).

use crate::tail::TailError;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(mmm, MmmError, PyException, "Base class of mmm's errors.");
create_exception!(
    mmm,
    OplogRolloverError,
    MmmError,
    "A checkpoint is older than the oldest entry still in the source's oplog: operations were lost to this reader and a resync is needed."
);
create_exception!(
    mmm,
    NotReplicaSetError,
    MmmError,
    "The server is not a replica-set member, so it has no oplog."
);
create_exception!(
    mmm,
    OplogFormatError,
    MmmError,
    "An oplog entry could not be understood."
);

pub fn tail_error_to_py(e: &TailError) -> PyErr {
    let msg = e.to_string();
    match e {
        TailError::Rollover { .. } => OplogRolloverError::new_err(msg),
        TailError::NotReplicaSet { .. } => NotReplicaSetError::new_err(msg),
        TailError::Malformed(_) => OplogFormatError::new_err(msg),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("MmmError", py.get_type::<MmmError>())?;
    m.add("OplogRolloverError", py.get_type::<OplogRolloverError>())?;
    m.add("NotReplicaSetError", py.get_type::<NotReplicaSetError>())?;
    m.add("OplogFormatError", py.get_type::<OplogFormatError>())?;
    Ok(())
}
