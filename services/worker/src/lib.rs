//! FinalPrice's worker: pulls orders from the shared JetStream consumer in batches, commits each
//! batch in one transaction, confirms every order on its front's inbox, then acks.
//!
//! # Layout
//! - [`startup`]: [`Application`]: connect, bind the consumer, run the pull loop and the status
//!   responder until the shutdown token fires, then drain.
//! - [`process`]: one batch → committed rows → per-order outcome; no NATS in its signature
//!   beyond the messages, so tests drive it directly.
//! - [`decide`]: what is done with each order once the commit has answered (pure).
//! - [`dead_letters`]: list and replay the dead-letter stream (`just dlq`, `just dlq-replay`).
//! - [`error`]: a failed commit → retry later, or suspect the orders.
//! - [`report`], [`export`]: `status` and `export` for operators.
//! - [`status`]: answers "what became of order X?" for the fronts.
//! - [`stats`]: counters the tests and (later) `/metrics` read.

pub mod dead_letters;
pub(crate) mod decide;
pub mod error;
pub mod export;
pub mod process;
pub mod report;
pub(crate) mod startup;
pub(crate) mod stats;
pub mod status;

pub use startup::Application;
pub use stats::{StatsSnapshot, WorkerStats};
