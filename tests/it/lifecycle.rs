//! The timers and the configuration's life while pgdyno runs:
//! client_idle_timeout, idle_transaction_timeout and query_timeout close the
//! client with 08P01 and drop what it held; server_check_query replaces a
//! backend that died while idle; server_login_retry answers with the cached
//! error, then tries again; each of these shows in the JSON log; SIGHUP and
//! the console's RELOAD resize pools without disconnecting anyone and refuse
//! a broken file; `default_pool_size = auto` sizes pools from the server's
//! max_connections.
//!
//! `timers` holds the timeouts and backend checks, `files` the pidfile and
//! logfile, `reload` SIGHUP, RELOAD
//! and the auto pool size, `repoint` what a reload changes under existing
//! pools (upstream, password, max_user_connections), `switches` PgBouncer's behaviour switches
//! (`server_round_robin` and the like); `json_log` reads pgdyno's JSON log.

mod files;
mod json_log;
mod reload;
mod repoint;
mod switches;
mod timers;

use crate::harness::*;
use tokio_postgres::Client;

/// pgdyno on the shared cluster's appdb, logging JSON, with `extra` flags.
async fn pgdyno(extra: &[&str]) -> Pgdyno {
    let url = Cluster::shared().url(APP_DB);
    let mut args = vec!["--upstream", url.as_str(), "--log-format", "json"];
    args.extend_from_slice(extra);
    Pgdyno::start(&args).await
}

async fn backend_pid(client: &Client) -> i32 {
    client
        .query_typed_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("SELECT pg_backend_pid()")
        .get(0)
}
