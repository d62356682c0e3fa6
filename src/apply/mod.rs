//! Applying replicated ops on a destination: turning ops into batched write commands (`plan`)
//! and running them in one transaction together with the link's checkpoint (`applier`).

mod applier;
pub mod converge;
pub mod ddl;
mod error;
pub mod observe;
mod plan;
pub mod turns;

pub use applier::{Applied, Applier, Batch, OnReject};
pub use error::{describe, is_transient, ApplyError, Refusal};
pub use plan::{Plan, PlanError, Tag, TAG_FIELD};
