//! The query engine: BSON ordering, filter matching, sorting, projection and a small
//! aggregation pipeline, all over in-memory `bson::Document`s.
//!
//! * [`compare`] — MongoDB's total order over BSON values (`compare_values`, `KeyValue`).
//! * [`path`] — dotted-path lookup (`get_path`) and the matcher's array-expanding view.
//! * [`matcher`] — `Matcher` for find/update/delete filters and `$match`.
//! * [`sort`] — `SortSpec`.
//! * [`projection`] — `Projection` (find projections and `$project`).
//! * [`expr`] — aggregation expressions.
//! * [`aggregate`] — `run_pipeline`.
//! * [`json_schema`] — `$jsonSchema` for document validators.

pub mod aggregate;
pub mod collation;
pub mod compare;
pub mod expr;
pub mod json_schema;
pub mod matcher;
pub mod path;
pub mod projection;
pub mod sort;

pub use aggregate::run_pipeline;
pub use compare::{compare_values, values_equal, KeyValue};
pub use matcher::Matcher;
pub use path::get_path;
pub use projection::Projection;
pub use sort::SortSpec;
