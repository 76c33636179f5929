//! Black-box tests of the front with a real worker, a real nats-server and a real database
//! (PostgreSQL and SQLite), one set per test. One binary, so it links once.

mod admin;
mod faults;
mod health;
mod helpers;
mod hostile;
mod lookups;
mod metrics;
mod orders;
mod pages;
mod problems;
mod tracing;
