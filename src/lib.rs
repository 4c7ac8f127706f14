//! pgdyno: a connection-pooling PostgreSQL proxy.
//!
//! Data flow: a client connects to a [`listener`]; its task
//! ([`client`]) negotiates encryption ([`tls`]), reads the startup packet
//! ([`protocol`]), authenticates it
//! ([`auth`]) and finds its [`pool`] in the [`pooler`]. For each
//! transaction (transaction mode) or for the whole session (session mode)
//! it borrows a [`backend`] and the [`relay`] pumps bytes both ways until
//! the backend can go back, keeping each client's [`session`] (parameters,
//! [`prepared`] statements) its own. [`cancel`] routes CancelRequests to whichever
//! backend a client is using at that moment.
//!
//! ```text
//! client socket -> listener -> client -> pool.checkout_now() -> relay <-> backend socket
//!                                    <- pool.release() <-
//! ```
//!
//! [`config`] turns the TOML file, env vars and flags into one `Config`;
//! [`error`] says which side failed and which SQLSTATE the client sees;
//! [`logs`] writes the log lines; [`pidfile`] says which process pgdyno is; [`utc`] turns times into calendar text;
//! [`clock`] is the hot path's integer clock.

pub mod admin;
pub mod auth;
pub mod autosize;
pub mod backend;
pub mod cancel;
pub mod client;
pub mod clock;
pub mod config;
pub mod error;
pub mod listener;
pub mod logs;
pub mod metrics;
pub mod pidfile;
pub mod pool;
pub mod pooler;
pub mod prepared;
pub mod protocol;
pub mod registry;
pub mod relay;
pub mod session;
pub mod shutdown;
pub mod sidecar;
pub mod spare;
pub mod stats;
pub mod stream;
pub mod tls;
pub mod utc;
