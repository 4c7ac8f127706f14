//! The configuration's life: SIGHUP and the console's RELOAD resize a
//! pool without disconnecting anyone and refuse a broken file, keeping the
//! old settings; `default_pool_size = auto` sizes pools from the server's
//! max_connections, by flag or env, and keeps that size across a reload.

use super::json_log::logged;
use crate::harness::*;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::{Client, SimpleQueryMessage};

fn write_config(path: &PathBuf, settings: &str) {
    let url = Cluster::shared().url(APP_DB);
    let text = format!(
        "{settings}\nadmin_users = \"{APP_USER}\"\nlog_format = \"json\"\n\
         [databases]\n{APP_DB} = \"{url}\"\n"
    );
    std::fs::write(path, text).expect("write config file");
}

/// Starts `client`'s transaction in a task; reports on `done` once BEGIN
/// has a backend (the transaction stays open).
fn begin(client: &Arc<Client>, n: usize, done: &mpsc::UnboundedSender<usize>) {
    let (client, done) = (client.clone(), done.clone());
    tokio::spawn(async move {
        client
            .batch_execute("BEGIN; SELECT 1")
            .await
            .unwrap_or_else(|e| panic!("client {n}: BEGIN: {e}"));
        let _ = done.send(n);
    });
}

/// How many reports arrive on `done` within `wait`.
pub(super) async fn count_within(
    done: &mut mpsc::UnboundedReceiver<usize>,
    wait: Duration,
) -> usize {
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, done.recv()).await {
        n += 1;
    }
    n
}

/// Waits up to 5 s for `want` reports on `done`; how many came.
async fn count_until(done: &mut mpsc::UnboundedReceiver<usize>, want: usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut n = 0;
    while n < want {
        match tokio::time::timeout_at(deadline, done.recv()).await {
            Ok(Some(_)) => n += 1,
            _ => break,
        }
    }
    n
}

/// Four clients, each opening a transaction; how many got a backend
/// within 500 ms, the clients and the channel the others report on.
pub(super) async fn four_transactions(
    pgdyno: &Pgdyno,
) -> (usize, Vec<Arc<Client>>, mpsc::UnboundedReceiver<usize>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut clients = Vec::new();
    for n in 0..4 {
        let client = Arc::new(pgdyno.connect(APP_DB).await);
        begin(&client, n, &tx);
        clients.push(client);
    }
    let started = count_within(&mut rx, Duration::from_millis(500)).await;
    (started, clients, rx)
}

async fn commit_all(clients: &[Arc<Client>]) {
    for (n, client) in clients.iter().enumerate() {
        assert!(!client.is_closed(), "client {n} was disconnected");
        client
            .batch_execute("COMMIT")
            .await
            .unwrap_or_else(|e| panic!("client {n}: COMMIT: {e}"));
    }
}

#[tokio::test]
async fn sighup_resizes_the_pool_live_and_refuses_a_broken_file() {
    within(90, async {
        let path = scratch_dir("lifecycle").join("pgdyno.toml");
        write_config(&path, "default_pool_size = 1");
        let pgdyno = Pgdyno::start(&["--config", path.to_str().unwrap()]).await;

        let (started, clients, mut rx) = four_transactions(&pgdyno).await;
        assert_eq!(started, 1, "transactions with default_pool_size = 1");
        write_config(&path, "default_pool_size = 4");
        pgdyno.signal("HUP");
        assert_eq!(
            count_until(&mut rx, 3).await,
            3,
            "waiting clients served after SIGHUP raised the pool to 4"
        );
        logged(&pgdyno, "event reload", |f| {
            f.get("event").map(String::as_str) == Some("reload")
        })
        .await;
        commit_all(&clients).await;

        write_config(&path, "default_pool_size = \"lots\"");
        pgdyno.signal("HUP");
        logged(&pgdyno, "event reload_failed", |f| {
            f.get("event").map(String::as_str) == Some("reload_failed")
        })
        .await;
        // Still running, still with four backends to lend.
        let (started, clients, _rx) = four_transactions(&pgdyno).await;
        assert_eq!(started, 4, "transactions after the refused reload");
        commit_all(&clients).await;
    })
    .await
}

#[tokio::test]
async fn console_reload_resizes_the_pool_and_refuses_a_broken_file() {
    within(90, async {
        let path = scratch_dir("lifecycle").join("pgdyno.toml");
        write_config(&path, "default_pool_size = 1");
        let pgdyno = Pgdyno::start(&["--config", path.to_str().unwrap()]).await;
        let console = pgdyno.connect("pgbouncer").await;

        let (started, clients, mut rx) = four_transactions(&pgdyno).await;
        assert_eq!(started, 1, "transactions with default_pool_size = 1");
        write_config(&path, "default_pool_size = 4");
        console
            .simple_query("RELOAD")
            .await
            .unwrap_or_else(|e| panic!("RELOAD: {e} ({:?})", e.as_db_error()));
        assert_eq!(
            count_until(&mut rx, 3).await,
            3,
            "waiting clients served after RELOAD raised the pool to 4"
        );
        commit_all(&clients).await;

        write_config(&path, "default_pool_size = \"lots\"");
        let err = console
            .simple_query("RELOAD")
            .await
            .expect_err("RELOAD of a broken file must fail");
        assert!(err.as_db_error().is_some(), "no ErrorResponse: {err}");
        let (started, clients, _rx) = four_transactions(&pgdyno).await;
        assert_eq!(started, 4, "transactions after the refused RELOAD");
        commit_all(&clients).await;
    })
    .await
}

// -------------------------------------------------------- auto pool size

/// `pool_size` of database `appdb` in the console's SHOW DATABASES.
async fn shown_pool_size(pgdyno: &Pgdyno) -> i64 {
    let console = pgdyno.connect("pgbouncer").await;
    let messages = console.simple_query("SHOW DATABASES").await.unwrap();
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) if row.get("name") == Some(APP_DB) => {
                Some(row.get("pool_size").expect("pool_size").parse().unwrap())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {APP_DB} in SHOW DATABASES"))
}

async fn server_setting(name: &str) -> i64 {
    let admin = Cluster::shared().admin().await;
    let rows = admin.simple_query(&format!("SHOW {name}")).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .unwrap()
}

/// Extra flags, extra env, the pool size they must give.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], i64);

#[tokio::test]
async fn auto_pool_size_divides_the_servers_connections_across_the_fleet() {
    within(90, async {
        let max = server_setting("max_connections").await;
        let reserved = server_setting("superuser_reserved_connections").await;
        let expect = |headroom: i64, fleet: i64| ((max - reserved - headroom) / fleet).max(1);
        let url = Cluster::shared().url(APP_DB);
        let base = [
            "--upstream",
            url.as_str(),
            "--log-format",
            "json",
            "--admin-users",
            APP_USER,
            "--default-pool-size",
            "auto",
        ];
        let cases: [Case; 3] = [
            (
                &["--fleet-size", "3", "--pool-size-headroom", "10"],
                &[],
                expect(10, 3),
            ),
            (&[], &[("PGDYNO_FLEET_SIZE", "4")], expect(5, 4)),
            (&["--fleet-size", "100000"], &[], 1),
        ];
        for (extra, env, want) in cases {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            let pgdyno = Pgdyno::launch(Launch { args: &args, env }).await;
            let what = format!("{extra:?} {env:?} with max_connections {max}, {reserved} reserved");
            assert_eq!(
                shown_pool_size(&pgdyno).await,
                want,
                "SHOW DATABASES for {what}"
            );
            let line = logged(&pgdyno, "event auto_pool_size", |f| {
                f.get("event").map(String::as_str) == Some("auto_pool_size")
            })
            .await;
            assert_eq!(
                line.get("pool_size"),
                Some(&want.to_string()),
                "auto_pool_size log line for {what}: {line:?}"
            );
            // The pool lends that many backends.
            let client = pgdyno.connect(APP_DB).await;
            client.query_typed_one("SELECT 1", &[]).await.unwrap();
        }
    })
    .await
}

#[tokio::test]
async fn auto_pool_size_stays_across_a_reload() {
    within(60, async {
        let max = server_setting("max_connections").await;
        let reserved = server_setting("superuser_reserved_connections").await;
        let want = ((max - reserved - 5) / 7).max(1);
        let path = scratch_dir("lifecycle").join("pgdyno.toml");
        write_config(&path, "default_pool_size = \"auto\"\nfleet_size = 7");
        let pgdyno = Pgdyno::start(&["--config", path.to_str().unwrap()]).await;
        assert_eq!(shown_pool_size(&pgdyno).await, want, "at startup");
        pgdyno.signal("HUP");
        logged(&pgdyno, "event reload", |f| {
            f.get("event").map(String::as_str) == Some("reload")
        })
        .await;
        assert_eq!(shown_pool_size(&pgdyno).await, want, "after SIGHUP");
    })
    .await
}
