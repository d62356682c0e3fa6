//! Applying replicated ops on a destination: turning ops into batched write commands (`plan`)
//! and running them in one transaction together with the link's checkpoint (`applier`).

mod applier;
mod copy_progress;
pub mod ddl;
mod plan;

pub use applier::{Applier, ApplyError, Checkpoint};
pub use copy_progress::CopyProgress;
pub use plan::{Plan, PlanError, Tag};
