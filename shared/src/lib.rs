//! FinalPrice's shared library: what the front and the worker must agree on.
//!
//! # Layout
//! - [`domain`]: the order's fields as types that can only hold valid values.
//! - [`messages`]: what travels over NATS between front and worker, and on which subjects.
//! - [`config`]: the layered configuration of both services (`config.default.toml`).
//! - [`metrics`]: Prometheus text for `/metrics` (with each process's memory, CPU and version),
//!   and the worker's metrics listener.
//! - [`nats`]: connecting, and the stream and consumer definitions of `nats/`.
//! - [`telemetry`]: logs, OTLP spans, and trace context in NATS headers.
//! - [`presence`]: who is alive (every process answers pings; `status` counts them).
//! - [`service`]: the `main` both binaries share (configuration, runtime, telemetry, exit code).
//! - [`shutdown`]: the SIGTERM / Ctrl-C signal both services stop on.

pub mod config;
pub mod domain;
pub mod messages;
pub mod metrics;
pub mod nats;
pub mod presence;
pub mod service;
pub mod shutdown;
pub mod telemetry;
