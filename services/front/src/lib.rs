//! FinalPrice's front: the order form over HTTP, the order handed to JetStream, the worker's
//! confirmation awaited on the process's reply inbox, and the answer a browser or API client
//! expects (DESIGN.md §1). It holds no database connection.
//!
//! # Layout
//! - `startup`: [`Application`]: connect, bind, serve until the shutdown token, drain.
//! - `connection`: one client connection; hyper while a request is open, parked between (after
//!   [`PARK_AFTER`]).
//! - `routes`: method + path → handler (`home`, `orders`, `health`, `static_files`); security
//!   headers on every response.
//! - [`form`]: the raw form → a validated order or per-field errors.
//! - `queue`: an order published (alone, or through `envelope`) and retried within its bound,
//!   the wait for its confirmation, and status requests to the workers.
//! - `envelope`: orders that arrive while a publish awaits its PubAck, gathered into one.
//! - `inbox`: the one reply subscription and its map of waiting requests.
//! - `limits`: per-client rate limiting of order submissions (off unless configured).
//! - `metrics`: the Prometheus metrics behind `/metrics`.
//! - `pages`, `i18n`: the pages from `ui/templates`, in the shopper's language (`ui/locales`).
//! - `http`: response helpers.
//! - `problem`: every error's status, `Retry-After` and RFC 9457 body for JSON clients.
//!
//! Only [`form`] and the items linked above are public: the binary, the benchmarks and the
//! API tests use nothing else.

pub(crate) mod connection;
pub(crate) mod envelope;
pub mod form;
pub(crate) mod http;
pub(crate) mod i18n;
pub(crate) mod inbox;
pub(crate) mod limits;
pub(crate) mod lookups;
pub(crate) mod metrics;
pub(crate) mod pages;
pub(crate) mod problem;
pub(crate) mod queue;
pub(crate) mod routes;
pub(crate) mod startup;

pub use connection::PARK_AFTER;
pub use startup::Application;
