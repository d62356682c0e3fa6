//! Multi-master replication: a topology of servers and links, each link tailing its source and
//! applying to its destination, with echo suppression, exactly-once checkpoints, conflict
//! detection and per-link status.

pub mod conflicts;
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
mod writer;

pub use runtime::{LinkEvent, LinkFailure, LinkRuntime};
pub use topology::{LinkSpec, ServerSpec, TopologyError};

use crate::apply::converge::Resolve;
use mongodb::options::ClientOptions;
use parking_lot::Mutex;
use status::LinkStatus;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// A running set of links.
pub struct Replicator {
    pub statuses: Vec<Arc<Mutex<LinkStatus>>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Replicator {
    /// Validates the topology and starts every link on the current runtime.
    pub fn start(
        servers: &[ServerSpec],
        links: &[LinkSpec],
        options: &HashMap<String, ClientOptions>,
        events: mpsc::UnboundedSender<LinkEvent>,
        resolvers: HashMap<String, HashMap<String, Arc<dyn Resolve>>>,
    ) -> Result<Replicator, TopologyError> {
        let by_name = topology::validate(servers, links)?;
        let (stop, _) = watch::channel(false);
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
                resolvers: resolvers.get(&spec.id()).cloned().unwrap_or_default(),
            };
            tasks.push(tokio::spawn(link::run_link(runtime, stop.subscribe())));
        }
        Ok(Replicator {
            statuses,
            stop,
            tasks,
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
