//! One link at work: sessions (see `session.rs`) run one after another. A session that ends on
//! transient trouble (network, failover) is followed by another after a backoff, resuming from
//! the checkpoint stored on the destination, so nothing is lost or applied twice; any other
//! failure stops the link as `failed` and is reported once.
//!
//! With a lease (see `store/leases.rs`; per link, on its destination, so that the fence is
//! checked in the transactions that write the link's checkpoint) a session starts only once
//! this process holds the lease and has claimed the checkpoint with its term; it ends when the
//! lease is lost, and the link waits (`standby`) to hold it again.

use super::runtime::{LinkEvent, LinkFailure, LinkRuntime};
use super::session::{first_checkpoint, recover_from_rollover, session};
use super::status::LinkState;
use crate::store::lease_keeper::LeaseKeeper;
use crate::store::{self, checkpoints, leases};
use crate::tail::TailError;
use bson::Document;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub async fn run_link(rt: LinkRuntime, lease: Option<LeaseKeeper>, stop: watch::Receiver<bool>) {
    run_sessions(rt, lease.as_ref(), stop).await;
    if let Some(keeper) = lease {
        keeper.stop().await;
    }
}

/// One session, once this process holds the lease (when the link has one).
async fn leased_session(
    rt: &Arc<LinkRuntime>,
    lease: Option<&LeaseKeeper>,
) -> Result<(), LinkFailure> {
    let Some(keeper) = lease else {
        return session(rt, None).await;
    };
    if keeper.state().valid_term().is_none() {
        rt.set_state(LinkState::Standby, None);
    }
    let term = keeper.held().await;
    let lost = || LinkFailure::Transient(format!("lost the lease {} (term {term})", keeper.name));
    let dst = mongodb::Client::with_options(rt.dst_options.clone())?;
    store::ensure_collection(&dst, store::CHECKPOINTS).await?;
    let checkpoints = dst
        .database(store::MMM_DB)
        .collection::<Document>(store::CHECKPOINTS);
    // A link that never ran gets its first position with the claim: a checkpoint document
    // always says where to resume.
    let first = match checkpoints::read(&dst, &rt.spec.id()).await? {
        Some(_) => Document::new(),
        None => {
            let src = mongodb::Client::with_options(rt.src_options.clone())?;
            first_checkpoint(rt, &src).await?.to_document()
        }
    };
    // The claim comes before the checkpoint is read: whatever the previous holder committed
    // is then visible, and nothing it tries later can commit (see `store/leases.rs`).
    if !leases::claim(&checkpoints, &rt.spec.id(), term, first).await? {
        return Err(lost());
    }
    log::info!(target: "mmm", "link {}: holds its lease (term {term}); resuming from the stored checkpoint", rt.spec.id());
    tokio::select! {
        r = session(rt, Some(term)) => r,
        _ = keeper.lost(term) => Err(lost()),
    }
}

async fn run_sessions(
    rt: LinkRuntime,
    lease: Option<&LeaseKeeper>,
    mut stop: watch::Receiver<bool>,
) {
    let rt = Arc::new(rt);
    let mut backoff = Duration::from_millis(100);
    loop {
        let outcome = tokio::select! {
            r = leased_session(&rt, lease) => r,
            _ = stop.wait_for(|s| *s) => Ok(()),
        };
        let failure = match outcome {
            Ok(()) => {
                rt.set_state(LinkState::Stopped, None);
                return;
            }
            Err(failure) => failure,
        };
        if rt.spec.repair_on_rollover
            && matches!(&failure, LinkFailure::Source(TailError::Rollover { .. }))
        {
            let caught_up = tokio::select! {
                r = recover_from_rollover(&rt) => r,
                _ = stop.wait_for(|s| *s) => {
                    rt.set_state(LinkState::Stopped, None);
                    return;
                }
            };
            match caught_up {
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    continue;
                }
                Err(e) if e.is_transient() => {
                    log::warn!(target: "mmm", "link {}: catching up: {e}; retrying", rt.spec.id());
                    rt.set_state(LinkState::Retrying, Some(e.to_string()));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(e) => {
                    let msg = format!("catching up after an oplog rollover: {e}");
                    log::error!(target: "mmm", "link {} stopped: {msg}", rt.spec.id());
                    rt.set_state(LinkState::Failed, Some(msg.clone()));
                    let _ = rt.events.send(LinkEvent::Failed {
                        link: rt.spec.id(),
                        error: msg,
                    });
                    return;
                }
            }
        }
        let msg = match &failure {
            LinkFailure::Source(e @ TailError::Rollover { .. }) => {
                super::resync::rollover_message(&rt.spec.id(), e)
            }
            _ => failure.to_string(),
        };
        if !failure.is_transient() {
            log::error!(target: "mmm", "link {} stopped: {msg}", rt.spec.id());
            rt.set_state(LinkState::Failed, Some(msg.clone()));
            let _ = rt.events.send(LinkEvent::Failed {
                link: rt.spec.id(),
                error: msg,
            });
            return;
        }
        log::warn!(target: "mmm",
            "link {}: {msg}; retrying in {:.1}s",
            rt.spec.id(),
            backoff.as_secs_f64()
        );
        rt.set_state(LinkState::Retrying, Some(msg));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => {
                rt.set_state(LinkState::Stopped, None);
                return;
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
