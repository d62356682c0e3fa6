//! Convergence, as pure logic: what every server decides, on its own and without coordination,
//! so that all servers of a topology end with the same documents.
//!
//! The argument, in short (each file says the rest):
//!
//! 1. **Every version of a document has a stamp** `(h, site)` ([`stamp`]): `h` is a hybrid
//!    logical clock made of the oplog's wall time and a counter, `site` the id of the server
//!    that made the version. A server's clock never goes back and passes every stamp the server
//!    has installed, so a write made after seeing another version gets a larger stamp: stamp
//!    order extends the order in which versions saw each other. Stamps are a function of the
//!    oplog alone, so every reader of a server's oplog computes the same ones, after any restart.
//! 2. **Every server keeps, per document, the stamp of the version it holds** (`__mmm.meta`),
//!    written in the same transaction as the version (or, for local writes, computed from the
//!    oplog by the [`observe`] rules), and tombstones for deletes.
//! 3. **Links carry versions with their stamps and what their writer knew** ([`Knowledge`]):
//!    the largest stamp seen from each site. Links are FIFO and exactly-once, and the topology
//!    is a tree, so delivery is causal: when a version arrives, its writer's knowledge is a
//!    subset of what the receiver has seen. So the receiver's version was seen by the writer
//!    exactly when the writer's knowledge covers its stamp ([`policy::decide`]): then the
//!    incoming change applies as is (fast-forward); otherwise the two are concurrent: a
//!    conflict, decided by the namespace's policy.
//! 4. **Last writer wins is a join**: keeping the larger stamp is commutative, associative and
//!    idempotent, so the order in which a server meets versions does not change what it ends
//!    with; once every version has reached every server (links up, writes stopped), every
//!    server holds the version with the largest stamp, which is the same everywhere.
//! 5. **Other policies write a new version** (a resolution) with a fresh stamp larger than both
//!    inputs, made by one server (the arbiter) or by every server that sees the conflict with
//!    a deterministic rule that gives equal content; a resolution is itself a version like any
//!    other, so point 4 applies to it, and resolutions of equal content end the exchange.
//! 6. **Last writer wins per field is a join too** ([`fields`]): each top-level field keeps
//!    the value with the larger stamp, a whole-document write stamping every field; that is a
//!    pointwise maximum of field stamps. Merged versions are new content under old stamps, so
//!    a server applying them merges every arriving version instead of trusting the
//!    document-level shortcuts of point 3 (the merge is idempotent). Stamps of fields are
//!    functions of the oplog, like those of documents, and links carry them per op; rows
//!    hold them only for namespaces under `fields`, so other namespaces cost what they did.
//! 7. **When a stretch of history was lost unobserved** ([`lost`]), rows no longer describe
//!    every write; each row's content hash tells whether the document is still the version the
//!    row names, so only the changes made in the lost stretch travel, as new versions that
//!    points 4 to 6 decide like any other.

pub mod fields;
pub mod lost;
#[cfg(test)]
mod model;
#[cfg(test)]
mod model_fields;
pub mod observe;
pub mod policy;
pub mod stamp;

pub use policy::{decide, Decision, Deletes, Policy, PolicyMap, Side};
pub use stamp::{Knowledge, Stamp};
