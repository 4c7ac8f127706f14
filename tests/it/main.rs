//! pgdyno's integration tests: one binary, run with `cargo test --test it`.
//!
//! Every test talks to a real PostgreSQL (started by the harness from the
//! locally installed server binaries) through a real pgdyno process, and
//! asserts what a user of pgdyno would notice. `smoke` checks the harness
//! itself against PostgreSQL alone.

mod harness;

mod admin;
mod auth;
mod bad_input;
mod cancel;
mod config;
mod copy;
mod faults;
mod hba;
mod hosts;
mod interleave;
mod ledger;
mod lifecycle;
mod limits;
mod metrics;
mod params;
mod pgbench;
mod pooling;
mod prepared;
mod queries;
mod restart;
mod secrets;
mod sidecar;
mod smoke;
mod sockets;
mod tls;
mod transactions;
