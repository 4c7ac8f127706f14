//! Clients: tokio-postgres (with its connection task spawned, and notices
//! collected when asked), and psql / pgbench as subprocesses with a timeout.

use super::{pg_tool, APP_PASSWORD, APP_USER};
use futures_util::StreamExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::error::DbError;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};

/// Connects (10 s at most) and drives the connection in a spawned task.
pub async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, _notices, _task) = connect_with_notices(config).await?;
    Ok(client)
}

/// Like `connect`, also returning the notices the server sends and the
/// connection task (abort it to drop the socket without a Terminate).
pub async fn connect_with_notices(
    config: &Config,
) -> Result<(Client, mpsc::UnboundedReceiver<DbError>, JoinHandle<()>), tokio_postgres::Error> {
    let (client, mut connection) =
        match tokio::time::timeout(Duration::from_secs(10), config.connect(NoTls)).await {
            Ok(result) => result?,
            Err(_) => panic!("connecting took more than 10 s"),
        };
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notice(notice) = message {
                let _ = tx.send(notice);
            }
        }
    });
    Ok((client, rx, task))
}

/// The SQLSTATE of a server error, if the error came from a server.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|db| db.code().code())
}

/// Removes inherited libpq settings so only ours apply.
pub fn clear_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str() {
            if key.starts_with("PG") {
                cmd.env_remove(key);
            }
        }
    }
}

fn client_tool(tool: &str, port: u16, db: &str) -> Command {
    let mut cmd = Command::new(pg_tool(tool));
    clear_pg_env(&mut cmd);
    cmd.env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGUSER", APP_USER)
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGDATABASE", db)
        .env("PGCONNECT_TIMEOUT", "5")
        // No Kerberos on a test machine: keep libpq's first bytes the same
        // everywhere (SSLRequest, then the startup packet).
        .env("PGGSSENCMODE", "disable")
        .stdin(Stdio::null());
    cmd
}

/// Runs a tool to its end on a blocking thread (pgdyno builds tokio
/// without its process driver); kills it after `secs`.
async fn run(mut cmd: Command, secs: u64) -> Output {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run client tool");
    let pid = child.id().to_string();
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(Duration::from_secs(secs), waiting).await {
        Ok(out) => out.expect("wait for client tool").expect("run client tool"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid]).status();
            panic!("{what} did not finish within {secs} s")
        }
    }
}

/// psql against `port` (pgdyno), as `app` on `db`, with `args`.
pub async fn psql(port: u16, db: &str, args: &[&str]) -> Output {
    let mut cmd = client_tool("psql", port, db);
    cmd.args(["-X", "-v", "ON_ERROR_STOP=1"]).args(args);
    run(cmd, 30).await
}

/// pgbench against `port` (pgdyno), as `app` on `db`, with `args`.
pub async fn pgbench(port: u16, db: &str, args: &[&str]) -> Output {
    let mut cmd = client_tool("pgbench", port, db);
    cmd.args(args);
    run(cmd, 120).await
}

/// stdout and stderr of a finished tool, for assertions and messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
