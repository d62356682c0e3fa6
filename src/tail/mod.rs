//! The tailer: follows a replica set's oplog from a checkpoint, reassembles transactions,
//! filters ops against subscriptions on raw BSON and hands on batches of the ops that matched.

mod select;
mod tailer;

pub use select::{Delivery, Selector};
pub use tailer::{run, StartAt, TailError, TailEvent, TailOptions, UnitBatch};
