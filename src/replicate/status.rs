//! What a link reports: state, position, lag, counters and the last error.

use bson::Timestamp;
use std::collections::VecDeque;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Starting,
    InitialSync,
    Running,
    /// Source or destination unreachable; retrying with backoff.
    Retrying,
    /// Stopped on an error that needs a person (rollover, a refused write).
    Failed,
    Stopped,
    /// Another process holds the link's lease; this one waits to take over.
    Standby,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Starting => "starting",
            LinkState::InitialSync => "initial-sync",
            LinkState::Running => "running",
            LinkState::Retrying => "retrying",
            LinkState::Failed => "failed",
            LinkState::Stopped => "stopped",
            LinkState::Standby => "standby",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LinkStatus {
    pub id: String,
    pub src: String,
    pub dst: String,
    pub state: LinkState,
    pub checkpoint: Option<Timestamp>,
    /// Ops read from the source and not applied yet.
    pub lag_ops: u64,
    /// Age of the oldest op read and not applied yet (0 when caught up).
    pub lag_seconds: f64,
    pub ops_applied: u64,
    pub batches_applied: u64,
    pub ops_skipped_echo: u64,
    pub conflicts: u64,
    /// Sessions ended by transient trouble (network, failover) and started again after a
    /// backoff.
    pub retries: u64,
    /// Ops the destination refused, journaled in `__mmm.rejected` (links with
    /// `on_reject="journal"`).
    pub rejected: u64,
    pub initial_sync_copied: u64,
    pub initial_sync_total: u64,
    pub last_error: Option<String>,
    /// When the first op of each batch handed to the destination's writer and not yet applied
    /// was read, oldest first.
    pub queued_since: VecDeque<Instant>,
    /// When the first op of the batch being built was read.
    pub building_since: Option<Instant>,
    /// The source's oplog as last read (headroom: see `headroom.rs`).
    pub oplog: Option<super::headroom::OplogStats>,
    /// The link's lease, when it runs with one (who holds it, with which term, until when).
    pub lease: Option<tokio::sync::watch::Receiver<crate::store::lease_keeper::KeeperState>>,
}

impl LinkStatus {
    pub fn new(id: &str, src: &str, dst: &str) -> LinkStatus {
        LinkStatus {
            id: id.to_string(),
            src: src.to_string(),
            dst: dst.to_string(),
            state: LinkState::Starting,
            checkpoint: None,
            lag_ops: 0,
            lag_seconds: 0.0,
            ops_applied: 0,
            batches_applied: 0,
            ops_skipped_echo: 0,
            conflicts: 0,
            retries: 0,
            rejected: 0,
            initial_sync_copied: 0,
            initial_sync_total: 0,
            last_error: None,
            queued_since: VecDeque::new(),
            building_since: None,
            oplog: None,
            lease: None,
        }
    }

    /// Moves to `state`, keeping the last error unless a new one is given; entering
    /// `Retrying` counts one retry.
    pub fn set_state(&mut self, state: LinkState, error: Option<String>) {
        if state == LinkState::Retrying {
            self.retries += 1;
        }
        self.state = state;
        if error.is_some() {
            self.last_error = error;
        }
    }

    /// The lag as of now.
    pub fn current_lag_seconds(&self) -> f64 {
        let oldest = match (self.queued_since.front(), self.building_since) {
            (Some(a), Some(b)) => Some((*a).min(b)),
            (a, b) => a.copied().or(b),
        };
        oldest.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0)
    }

    /// A new session starts with nothing read and nothing queued.
    pub fn reset_pending(&mut self) {
        self.queued_since.clear();
        self.building_since = None;
        self.lag_ops = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_retry_is_counted_and_the_last_error_kept() {
        let mut s = LinkStatus::new("a->b", "a", "b");
        s.set_state(LinkState::Retrying, Some("unreachable".into()));
        s.set_state(LinkState::Running, None);
        s.set_state(LinkState::Retrying, Some("failover".into()));
        assert_eq!(s.retries, 2);
        s.set_state(LinkState::Stopped, None);
        assert_eq!(s.retries, 2);
        assert_eq!(s.last_error.as_deref(), Some("failover"));
        assert_eq!(s.state, LinkState::Stopped);
    }
}
