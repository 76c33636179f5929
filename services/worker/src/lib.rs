//! FinalPrice's worker: pulls orders from the shared JetStream consumer, commits them in
//! transactions of at most `worker.batch_size` orders, confirms every order on its front's
//! inbox, then acks each message once all its orders are committed or dead-lettered.
//!
//! # Layout
//! - `startup`: [`Application`]: connect, bind the consumer, then run the pull loop, the
//!   status responder, the ping answers, the backlog watch and the `/metrics` listener until
//!   the shutdown token fires, and drain.
//! - [`process`]: one pull's messages (an order alone, or an envelope of several) → chunks of
//!   orders committed side by side, one transaction each → every order confirmed, retried or
//!   dead-lettered → every message acked or handed back. [`process::commit_orders`] is the one
//!   INSERT, which tests drive directly.
//! - `decide`: what becomes of each order and its message once the commit has answered
//!   (pure).
//! - [`error`]: a failed commit → retry later, or suspect the orders.
//! - [`status`]: answers "what became of order X?" for the fronts.
//! - [`dead_letters`]: list and replay the dead-letter stream (`dlq-list`, `dlq-replay`).
//! - [`report`], [`export`]: `status` and `export` for operators.
//! - `stats`: [`WorkerStats`], what the worker did, served at `/metrics` and read by the tests.
//!
//! `main.rs` is the `finalprice-worker` binary: its subcommands over this library.

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
