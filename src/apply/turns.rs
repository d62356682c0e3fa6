//! Turns between the transactions this process runs on one server: the batches its links
//! apply there and the passes of its stored observation (`observe.rs`).
//!
//! Both write `__mmm.meta` rows, and of a document written on the server and arriving from a
//! peer at about the same time both write a row: the batch because it decided about the
//! document, observation because it accounts for the local write. Two transactions writing one
//! row cannot both commit; the later writer fails with a write conflict and starts over. A pass
//! of observation is short, but a batch holds thousands of documents and spends tens of
//! milliseconds deciding before it writes, so it was the batch that usually lost, again and
//! again while observation caught up with a backlog of local writes.
//!
//! Batches on one server run side by side (they take turns with observation only), and a pass
//! of observation runs alone. This is a matter of scheduling only: every transaction stays
//! correct on its own, as it must, since links and observation of the same server may also
//! run in other processes, where a conflict still makes one of them start over.

use std::sync::Arc;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The turns of one server (clones share them).
#[derive(Debug, Clone, Default)]
pub struct Turns(Arc<RwLock<()>>);

impl Turns {
    /// Held while a batch's transaction runs, from its start to its commit.
    pub async fn batch(&self) -> RwLockReadGuard<'_, ()> {
        self.0.read().await
    }

    /// Held while one pass of stored observation runs. Waiting for it lets batches already
    /// running finish, and holds back batches that start later (the lock is fair).
    pub async fn observation(&self) -> RwLockWriteGuard<'_, ()> {
        self.0.write().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Starts `take` and checks that it waits while `held` is held and goes on once dropped.
    async fn waits_for<G>(held: G, take: tokio::task::JoinHandle<()>) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!take.is_finished());
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), take)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn batches_run_together_and_observation_waits_for_them_and_runs_alone() {
        let turns = Turns::default();
        let t = turns.clone();
        let batches = (turns.batch().await, turns.batch().await);
        let observation = tokio::spawn(async move {
            let _turn = t.observation().await;
        });
        waits_for(batches, observation).await;
        let t = turns.clone();
        let pass = turns.observation().await;
        let batch = tokio::spawn(async move {
            let _turn = t.batch().await;
        });
        waits_for(pass, batch).await;
    }
}
