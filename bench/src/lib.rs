//! FinalPrice's measurement tools: `finalprice-load` (src/main.rs, `just load`) drives a running
//! stack; `benches/hot_paths.rs` (`just bench`) times the hot paths in isolation.

pub mod client;
pub mod database;
pub mod nats;
pub mod probe;
pub mod progress;
pub mod report;
pub mod schedule;
