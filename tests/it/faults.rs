//! Fault injection: what clients see when PostgreSQL or the network between
//! pgdyno and PostgreSQL fails, and when clients themselves misbehave.
//!
//! - `crash`: PostgreSQL killed (SIGKILL) under clients mid-transaction and
//!   idle ones; the pool refills with new backends once it is back.
//! - `freeze`: PostgreSQL stopped (SIGSTOP): query_timeout,
//!   query_wait_timeout and server_connect_timeout fire; SIGCONT recovers.
//! - `network`: a fault-injecting relay (`harness::FaultRelay`) cuts,
//!   stalls, truncates or refuses backend connections.
//! - `backpressure`: a client that stops reading a huge result holds
//!   pgdyno's memory to a bound (measured in /proc) and nobody else back.
//! - `storm`: 10,000 connects in a burst and running out of file
//!   descriptors: max_client_conn holds, the accept loop backs off.
//!
//! Everything stays on 127.0.0.1 and every test ends by itself.

mod backpressure;
mod crash;
mod freeze;
mod network;
mod storm;

use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

/// The SQLSTATEs of a connection to PostgreSQL that broke: pgdyno's
/// "server conn crashed?" (08006) or PostgreSQL's own goodbye (57P01).
const CONNECTION_FAILURE: [&str; 2] = ["08006", "57P01"];

/// Connects like `harness::connect`, and also returns the error that ends
/// the connection (None if it ends cleanly). An ErrorResponse that arrives
/// while no query runs ends the connection there, where `Client` never
/// sees it.
async fn connect_watched(
    config: &tokio_postgres::Config,
) -> (Client, JoinHandle<Option<tokio_postgres::Error>>) {
    let (client, connection) = tokio::time::timeout(Duration::from_secs(10), config.connect(NoTls))
        .await
        .expect("connecting took more than 10 s")
        .unwrap_or_else(|e| panic!("connecting through pgdyno: {e}"));
    let ended = tokio::spawn(async move { connection.await.err() });
    (client, ended)
}

/// Whether `client`'s connection is closed, or closes within 2 s (the
/// connection task notices pgdyno's close a moment after the error).
async fn closes(client: &Client) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !client.is_closed() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// `pg_backend_pid()` of the backend a query from `client` runs on.
async fn backend_pid(client: &Client) -> i32 {
    client
        .query_typed_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("SELECT pg_backend_pid()")
        .get(0)
}

/// The SQLSTATE and message of an error, for assertions ("" if the error
/// did not come from a server).
fn code_and_message(e: &tokio_postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
        None => (String::new(), e.to_string()),
    }
}

/// A field of /proc/<pid>/status in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// CPU time (user + system) the process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    // Fields after "(comm)": state is the 3rd field, utime the 14th.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 1000 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100)
}
