//! Multi-master replication: a topology of servers and links, each link tailing its source and
//! applying to its destination, with echo suppression, exactly-once checkpoints, conflict
//! detection and per-link status.

pub mod conflicts;
pub mod headroom;
mod id_order;
mod initial_sync;
mod link;
pub mod provenance;
pub mod resync;
mod route;
mod runtime;
mod session;
pub mod status;
pub mod topology;
pub mod verify;
mod writer;

pub use runtime::{LinkEvent, LinkFailure, LinkRuntime};
pub use topology::{LinkSpec, ServerSpec, TopologyError};

use conflicts::ConflictTracker;
use mongodb::options::ClientOptions;
use parking_lot::Mutex;
use status::LinkStatus;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// How often each source's oplog headroom is read while links run.
const HEADROOM_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// A running set of links.
pub struct Replicator {
    pub statuses: Vec<Arc<Mutex<LinkStatus>>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The headroom monitor (ends with the stop signal; not a link).
    _headroom: JoinHandle<()>,
}

impl Replicator {
    /// Validates the topology and starts every link on the current runtime.
    pub fn start(
        servers: &[ServerSpec],
        links: &[LinkSpec],
        options: &HashMap<String, ClientOptions>,
        events: mpsc::UnboundedSender<LinkEvent>,
    ) -> Result<Replicator, TopologyError> {
        let by_name = topology::validate(servers, links)?;
        let (stop, _) = watch::channel(false);
        let conflicts = Arc::new(ConflictTracker::default());
        // Every server some link reads is declared before any link runs: a batch applied on a
        // server whose reader has not started yet must still wait for that reader's check.
        for spec in links {
            conflicts.observe_server(&by_name[spec.src.as_str()].id);
            conflicts.write_server(&by_name[spec.dst.as_str()].id);
        }
        let mut statuses = Vec::new();
        let mut tasks = Vec::new();
        for spec in links {
            let src = by_name[spec.src.as_str()].clone();
            let dst = by_name[spec.dst.as_str()].clone();
            let status = Arc::new(Mutex::new(LinkStatus::new(
                &spec.id(),
                &src.name,
                &dst.name,
            )));
            statuses.push(status.clone());
            let runtime = LinkRuntime {
                spec: spec.clone(),
                src_options: options[&src.name].clone(),
                dst_options: options[&dst.name].clone(),
                src,
                dst,
                status,
                events: events.clone(),
                conflicts: conflicts.clone(),
            };
            tasks.push(tokio::spawn(link::run_link(runtime, stop.subscribe())));
        }
        // Each source's oplog headroom, shown by status() and warned about in the log.
        let mut sources: Vec<(ClientOptions, Vec<Arc<Mutex<LinkStatus>>>)> = Vec::new();
        let mut source_names: Vec<&str> = Vec::new();
        for (spec, status) in links.iter().zip(&statuses) {
            match source_names.iter().position(|n| *n == spec.src) {
                Some(i) => sources[i].1.push(status.clone()),
                None => {
                    source_names.push(&spec.src);
                    sources.push((options[&spec.src].clone(), vec![status.clone()]));
                }
            }
        }
        let headroom = tokio::spawn(headroom::monitor(sources, HEADROOM_EVERY, stop.subscribe()));
        Ok(Replicator {
            statuses,
            stop,
            tasks,
            _headroom: headroom,
        })
    }

    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// True when every link task has ended (stopped or failed).
    pub fn finished(&self) -> bool {
        self.tasks.iter().all(|t| t.is_finished())
    }
}
