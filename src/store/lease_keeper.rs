//! A task that keeps one lease (see `leases.rs`): takes it when free or expired, renews it
//! every `ttl / 3`, and publishes whether this process may work, with which term. Holders wait
//! on [`LeaseKeeper::held`] and watch [`LeaseKeeper::lost`] while they work. A keeper may also
//! follow a [`Heartbeat`] of the working loop, so that a process whose work is stuck, not only
//! one that is dead or paused, gives its lease up.

use super::leases::{self, Attempt, Holder, Lease};
use mongodb::Client;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// What the keeper last knew.
#[derive(Debug, Clone, Default)]
pub struct KeeperState {
    /// The term this process holds, while its lease is valid by its own clock.
    pub term: Option<i64>,
    /// `ttl` after the last successful renewal was sent: past it, this process stops working
    /// even if the server could not be asked (it may already have given the lease away).
    pub valid_until: Option<Instant>,
    /// The lease as last read or written (who holds it, until when).
    pub lease: Option<Lease>,
    /// The last error talking to the lease's server.
    pub error: Option<String>,
}

impl KeeperState {
    /// The held term, if still valid now.
    pub fn valid_term(&self) -> Option<i64> {
        match (self.term, self.valid_until) {
            (Some(t), Some(until)) if Instant::now() < until => Some(t),
            _ => None,
        }
    }
}

/// The working loop's sign of life: milliseconds since `base` of its last beat. A keeper with
/// one renews (or takes) its lease only while the loop beat within the TTL, so a process whose
/// work is stuck (a trigger that never returns) lets its lease lapse like a dead one.
#[derive(Debug)]
pub struct Heartbeat {
    base: Instant,
    last_ms: AtomicU64,
}

impl Heartbeat {
    pub fn new() -> Arc<Heartbeat> {
        Arc::new(Heartbeat {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    pub fn beat(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn fresh_within(&self, limit: Duration) -> bool {
        let last = self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        last.elapsed() < limit
    }
}

pub struct LeaseKeeper {
    pub name: String,
    pub holder: Holder,
    pub ttl: Duration,
    state: watch::Receiver<KeeperState>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    /// Starts keeping lease `name` on the server of `client` (on the current tokio runtime).
    pub fn start(client: Client, name: String, holder: Holder, ttl: Duration) -> LeaseKeeper {
        LeaseKeeper::start_with(client, name, holder, ttl, None)
    }

    /// The same, renewing only while `heartbeat` beats (see [`Heartbeat`]).
    pub fn start_with(
        client: Client,
        name: String,
        holder: Holder,
        ttl: Duration,
        heartbeat: Option<Arc<Heartbeat>>,
    ) -> LeaseKeeper {
        let (state_tx, state) = watch::channel(KeeperState::default());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(keep(
            client,
            name.clone(),
            holder.clone(),
            ttl,
            heartbeat,
            state_tx,
            stop_rx,
        ));
        LeaseKeeper {
            name,
            holder,
            ttl,
            state,
            stop,
            task,
        }
    }

    /// A view of the state that follows it (for status).
    pub fn subscribe(&self) -> watch::Receiver<KeeperState> {
        self.state.clone()
    }

    pub fn state(&self) -> KeeperState {
        self.state.borrow().clone()
    }

    /// Waits until this process holds the lease; returns its term.
    pub async fn held(&self) -> i64 {
        let mut state = self.state.clone();
        loop {
            let s = state.borrow_and_update().clone();
            if let Some(term) = s.valid_term() {
                return term;
            }
            if state.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves once `term` is no longer held (taken over, or not renewed in time).
    pub async fn lost(&self, term: i64) {
        let mut state = self.state.clone();
        loop {
            let s = state.borrow_and_update().clone();
            if s.valid_term() != Some(term) {
                return;
            }
            let until = s.valid_until.unwrap_or_else(Instant::now);
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Stops renewing and releases the lease if held, so a waiter takes over at once.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }

    /// Asks the task to stop without waiting for it.
    pub fn stop_soon(&self) {
        self.stop.send_replace(true);
    }
}

const STUCK: &str = "this process's work made no progress for a whole lease TTL (a trigger that does not return?): not renewing";

async fn keep(
    client: Client,
    name: String,
    holder: Holder,
    ttl: Duration,
    heartbeat: Option<Arc<Heartbeat>>,
    state: watch::Sender<KeeperState>,
    mut stop: watch::Receiver<bool>,
) {
    let interval = leases::renew_interval(ttl);
    let mut current = KeeperState::default();
    let mut was_held = None;
    loop {
        let sent = Instant::now();
        let alive = heartbeat.as_ref().is_none_or(|h| h.fresh_within(ttl));
        let attempt = match alive {
            true => tokio::time::timeout(
                interval,
                leases::acquire_or_renew(&client, &name, &holder, ttl, current.term),
            )
            .await
            .map(|r| r.map_err(|e| e.to_string())),
            // Stuck work: no renewal, so the lease lapses and another process takes over.
            false => Ok(Err(STUCK.to_string())),
        };
        match attempt {
            Ok(Ok(Attempt::Held(term))) => {
                current.term = Some(term);
                current.valid_until = Some(sent + ttl);
                current.error = None;
                current.lease = Some(Lease {
                    name: name.clone(),
                    term,
                    holder: holder.clone(),
                    ttl_ms: ttl.as_millis() as i64,
                    renewed: bson::DateTime::now(),
                });
            }
            Ok(Ok(Attempt::Busy(lease))) => {
                current.term = None;
                current.valid_until = None;
                current.error = None;
                current.lease = lease;
            }
            Ok(Err(e)) => current.error = Some(e),
            Err(_) => current.error = Some("the lease's server did not answer in time".into()),
        }
        let held = current.valid_term();
        if held != was_held {
            match held {
                Some(t) => {
                    log::info!(target: "mmm", "lease {name}: held by this process (term {t})")
                }
                None => {
                    log::info!(target: "mmm", "lease {name}: not held by this process; standing by")
                }
            }
            was_held = held;
        }
        state.send_replace(current.clone());
        let stopping = tokio::select! {
            _ = tokio::time::sleep_until(sent + interval) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopping {
            if let Some(term) = current.term {
                current.term = None;
                state.send_replace(current.clone());
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    leases::release(&client, &name, &holder, term),
                )
                .await;
            }
            return;
        }
        // A renewal that could not be made in time ends the term here, whatever the server
        // later says: the work stops before the lease can be judged expired elsewhere.
        if current.valid_term().is_none() && current.term.is_some() {
            current.term = None;
            state.send_replace(current.clone());
        }
    }
}
