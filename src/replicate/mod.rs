//! Multi-master replication: a topology of servers and links, each link tailing its source and
//! applying to its destination, with echo suppression, exactly-once checkpoints, conflict
//! detection and per-link status.

mod catch_up;
pub mod conflicts;
pub mod headroom;
mod id_order;
mod initial_sync;
mod link;
pub mod provenance;
pub mod repair;
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

use crate::apply::converge::Resolve;
use crate::store::lease_keeper::LeaseKeeper;
use crate::store::leases::Holder;
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
    /// Validates the topology and starts every link on the current runtime. `lease_ttl`: each
    /// link works only while this process holds its lease (see `store/leases.rs`).
    pub fn start(
        servers: &[ServerSpec],
        links: &[LinkSpec],
        options: &HashMap<String, ClientOptions>,
        events: mpsc::UnboundedSender<LinkEvent>,
        resolvers: HashMap<String, HashMap<String, Arc<dyn Resolve>>>,
        tombstone_retention: std::time::Duration,
        lease_ttl: Option<std::time::Duration>,
    ) -> Result<Replicator, TopologyError> {
        let by_name = topology::validate(servers, links)?;
        let (stop, _) = watch::channel(false);
        let mut statuses = Vec::new();
        let mut tasks = Vec::new();
        // Every server a link reads or writes is observed regularly, whether or not its links
        // can reach the other end: a source's `__mmm.meta` then always holds what it owes (the
        // spool, see `catch_up.rs`), and batches applied to a destination read only the short
        // stretch of its oplog observation has not stored yet.
        let mut turns: HashMap<String, crate::apply::turns::Turns> = HashMap::new();
        for server in links.iter().flat_map(|l| [&l.src, &l.dst]) {
            let spec = &by_name[server.as_str()];
            if !turns.contains_key(&spec.id) {
                let server_turns = crate::apply::turns::Turns::default();
                turns.insert(spec.id.clone(), server_turns.clone());
                // This process's links out of the server: where they record what they applied.
                let outgoing = links
                    .iter()
                    .filter(|l| &l.src == server)
                    .map(|l| (l.id(), options[&l.dst].clone()))
                    .collect();
                let keeper = MetadataKeeper {
                    options: options[&spec.name].clone(),
                    site: spec.id.clone(),
                    fields: topology::fields_ns(links, server),
                    outgoing,
                    retention: tombstone_retention,
                    turns: server_turns,
                };
                tasks.push(tokio::spawn(keeper.run(stop.subscribe())));
            }
        }
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
                dst_turns: turns[&dst.id].clone(),
                spec: spec.clone(),
                src_options: options[&src.name].clone(),
                dst_options: options[&dst.name].clone(),
                src,
                dst,
                status,
                events: events.clone(),
                resolvers: resolvers.get(&spec.id()).cloned().unwrap_or_default(),
                src_fields: topology::fields_ns(links, &spec.src),
                dst_fields: topology::fields_ns(links, &spec.dst),
                batch_limit: Default::default(),
            };
            tasks.push(tokio::spawn(link::run_link(
                runtime,
                lease,
                stop.subscribe(),
            )));
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

/// How often a source's own writes are accounted for in its `__mmm.meta`.
const OBSERVE_EVERY: std::time::Duration = std::time::Duration::from_millis(200);
/// How often expired tombstones are looked for (sooner when the retention is shorter).
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Keeps a source server's `__mmm.meta`: observes its writes every second, and purges
/// tombstones once nothing can still bring their document back.
///
/// A tombstone stops a stale version (written concurrently with the delete, before its writer
/// received it) from reinstating the document. It may go once (1) it is older than the
/// retention (10 days by default, like Cassandra's gc_grace_seconds: a stale version delayed
/// longer than that is not expected), (2) every link this process runs out of the server has
/// applied past it (the peers have the delete), and (3) every link into the server has
/// brought what its source wrote up to a time after it (a peer's concurrent writes made before
/// it received the delete have arrived and were decided against the tombstone). Links out of
/// the server run by other processes are not known here: run a server's outgoing links in one
/// process (the usual deployment, one `mmm run` per side) or keep the retention long.
struct MetadataKeeper {
    options: ClientOptions,
    site: String,
    fields: crate::apply::observe::FieldsNs,
    /// (link id, destination's client options) of this process's links out of the server.
    outgoing: Vec<(String, ClientOptions)>,
    retention: std::time::Duration,
    /// Its turns with the batches this process's links apply there.
    turns: crate::apply::turns::Turns,
}

impl MetadataKeeper {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let Ok(client) = mongodb::Client::with_options(self.options.clone()) else {
            return;
        };
        let purge_every = PURGE_EVERY.min(self.retention / 2).max(OBSERVE_EVERY);
        let mut last_purge = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(OBSERVE_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Err(e) = crate::apply::observe::observe_and_store_in_turn(
                &client,
                &self.site,
                &self.fields,
                Some(&self.turns),
            )
            .await
            {
                log::debug!(target: "mmm", "observing {}: {e}", self.site);
                continue;
            }
            if last_purge.elapsed() >= purge_every {
                last_purge = std::time::Instant::now();
                match self.purge(&client).await {
                    Ok(0) => {}
                    Ok(n) => {
                        log::info!(target: "mmm", "{}: purged {n} tombstones past their retention", self.site)
                    }
                    Err(e) => {
                        log::debug!(target: "mmm", "purging tombstones on {}: {e}", self.site)
                    }
                }
            }
        }
    }

    async fn purge(&self, client: &mongodb::Client) -> Result<u64, String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?;
        let cutoff = now.saturating_sub(self.retention).as_secs() as u32;
        let mut before = bson::Timestamp {
            time: cutoff,
            increment: 0,
        };
        for (link, options) in &self.outgoing {
            let dst = mongodb::Client::with_options(options.clone()).map_err(|e| e.to_string())?;
            let Some(c) = crate::store::checkpoints::read(&dst, link)
                .await
                .map_err(|e| e.to_string())?
            else {
                return Ok(0);
            };
            before = before.min(c.applied);
        }
        // Links into the server: what they applied is a time on their source's clock.
        let incoming = client
            .database(crate::store::MMM_DB)
            .collection::<bson::Document>(crate::store::CHECKPOINTS)
            .find(bson::doc! {})
            .await
            .map_err(|e| e.to_string())?;
        use futures_util::TryStreamExt;
        let incoming: Vec<bson::Document> =
            incoming.try_collect().await.map_err(|e| e.to_string())?;
        for c in incoming
            .iter()
            .filter_map(crate::store::Checkpoint::from_document)
        {
            before = before.min(bson::Timestamp {
                time: c.applied.time,
                increment: 0,
            });
        }
        crate::store::meta::purge_tombstones(client, before)
            .await
            .map_err(|e| e.to_string())
    }
}
