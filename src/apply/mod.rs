//! Applying replicated ops on a destination: turning ops into batched write commands (`plan`)
//! and running them in one transaction together with the link's checkpoint (`applier`).

mod applier;
pub mod ddl;
mod error;
mod plan;

pub use applier::{Applied, Applier, OnReject};
pub use error::{describe, is_transient, ApplyError, Refusal};
pub use plan::{Plan, PlanError, Tag};
