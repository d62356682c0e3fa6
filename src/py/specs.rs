//! The servers and links Python hands to the core: any objects with the attributes of
//! `mmm.Server` (`name`, `id`, `uri`) and `mmm.Link` (`src`, `dst`, `ops`, `forward`,
//! `initial_sync`, `marker`, `on_reject`), read by name rather than by position.

use crate::apply::OnReject;
use crate::replicate::{topology, LinkSpec, ServerSpec};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

#[derive(FromPyObject)]
pub struct ServerArg {
    name: String,
    id: String,
    uri: String,
}

#[derive(FromPyObject)]
pub struct LinkArg {
    src: String,
    dst: String,
    ops: String,
    forward: bool,
    initial_sync: bool,
    marker: String,
    on_reject: String,
    /// Optional: objects written before it existed are read as "repair".
    #[pyo3(default)]
    on_rollover: Option<String>,
}

/// Parses the links and checks the topology (names, ids, the single-path rule).
pub fn topology(
    servers: Vec<ServerArg>,
    links: Vec<LinkArg>,
) -> PyResult<(Vec<ServerSpec>, Vec<LinkSpec>)> {
    let servers: Vec<ServerSpec> = servers
        .into_iter()
        .map(|s| ServerSpec {
            name: s.name,
            id: s.id,
            uri: s.uri,
        })
        .collect();
    let mut specs = Vec::new();
    for l in links {
        let mut spec = LinkSpec::parse(&l.src, &l.dst, &l.ops)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        spec.forward = l.forward;
        spec.initial_sync = l.initial_sync;
        spec.tag_documents = match l.marker.as_str() {
            "transaction" => false,
            "field" => true,
            other => {
                return Err(PyValueError::new_err(format!(
                    "link {}: marker is \"transaction\" or \"field\", got {other:?}",
                    spec.id()
                )))
            }
        };
        spec.repair_on_rollover = match l.on_rollover.as_deref().unwrap_or("repair") {
            "repair" => true,
            "stop" => false,
            other => {
                return Err(PyValueError::new_err(format!(
                    "link {}: on_rollover is \"repair\" or \"stop\", got {other:?}",
                    spec.id()
                )))
            }
        };
        spec.on_reject = match l.on_reject.as_str() {
            "fail" => OnReject::Fail,
            "journal" => OnReject::Journal,
            other => {
                return Err(PyValueError::new_err(format!(
                    "link {}: on_reject is \"fail\" or \"journal\", got {other:?}",
                    spec.id()
                )))
            }
        };
        specs.push(spec);
    }
    topology::validate(&servers, &specs).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok((servers, specs))
}
