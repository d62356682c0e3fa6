//! One link at work: sessions (see `session.rs`) run one after another. A session that ends on
//! transient trouble (network, failover) is followed by another after a backoff, resuming from
//! the checkpoint stored on the destination, so nothing is lost or applied twice; any other
//! failure stops the link as `failed` and is reported once.

use super::runtime::{LinkEvent, LinkFailure, LinkRuntime};
use super::session::{recover_from_rollover, session};
use super::status::LinkState;
use crate::tail::TailError;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub async fn run_link(rt: LinkRuntime, mut stop: watch::Receiver<bool>) {
    let rt = Arc::new(rt);
    let mut backoff = Duration::from_millis(100);
    loop {
        let outcome = tokio::select! {
            r = session(&rt) => r,
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
