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

use crate::store::lease_keeper::LeaseKeeper;
use crate::store::leases::Holder;
use conflicts::ConflictTracker;
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
    /// Validates the topology and starts every link on the current runtime. `lease_ttl`: each
    /// link works only while this process holds its lease (see `store/leases.rs`).
    pub fn start(
        servers: &[ServerSpec],
        links: &[LinkSpec],
        options: &HashMap<String, ClientOptions>,
        events: mpsc::UnboundedSender<LinkEvent>,
        lease_ttl: Option<std::time::Duration>,
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
            let lease = match lease_ttl {
                Some(ttl) => {
                    let client = mongodb::Client::with_options(options[&dst.name].clone())
                        .map_err(|e| TopologyError(format!("server {:?}: {e}", dst.name)))?;
                    let keeper = LeaseKeeper::start(
                        client,
                        crate::store::leases::link_lease(&spec.id()),
                        Holder::this_process(),
                        ttl,
                    );
                    status.lock().lease = Some(keeper.subscribe());
                    Some(keeper)
                }
                None => None,
            };
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
            tasks.push(tokio::spawn(link::run_link(
                runtime,
                lease,
                stop.subscribe(),
            )));
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
