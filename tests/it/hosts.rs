//! A database on several hosts, as libpq and PgBouncer take them
//! (`postgres://…@a:5432,b:5433/db`, `host=a,b port=…`): new backends
//! start where `load_balance_hosts` says (round-robin by default, or the
//! first host with `disable`) and go on past a host that does not answer;
//! a cancel goes to the host its backend is on; the console shows the list;
//! `target_session_attrs` passes over servers that are not what it asks for.
//!
//! The hosts are the shared cluster under two names (`127.0.0.1` and
//! `localhost`, told apart in SHOW SERVERS' `addr`) and a port nothing
//! listens on.

use crate::admin::{pool_row, show};
use crate::harness::*;
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

/// The shared cluster's URL with `hosts` (`host:port,...`) in place of its
/// one host, and `query` appended.
fn several_hosts(hosts: &str, query: &str) -> String {
    let cluster = Cluster::shared();
    let one = format!("@127.0.0.1:{}/", cluster.port());
    cluster.url(APP_DB).replace(&one, &format!("@{hosts}/")) + query
}

/// A port on 127.0.0.1 that refuses connections.
fn dead_port() -> u16 {
    free_port()
}

/// Opens `n` backends at once (each client holds one in a transaction)
/// and returns SHOW SERVERS' (addr, port) of each, sorted.
async fn open_backends(pgdyno: &Pgdyno, n: usize) -> Vec<(String, String)> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let client = pgdyno.connect(APP_DB).await;
        client
            .batch_execute("BEGIN; SELECT 1")
            .await
            .expect("BEGIN");
        clients.push(client);
    }
    let console = pgdyno.connect("pgbouncer").await;
    let mut servers: Vec<(String, String)> = show(&console, "SHOW SERVERS")
        .await
        .rows
        .into_iter()
        .map(|r| {
            let cell = |k: &str| r[k].clone().unwrap_or_default();
            (cell("addr"), cell("port"))
        })
        .collect();
    servers.sort();
    for client in &clients {
        client.batch_execute("COMMIT").await.expect("COMMIT");
    }
    servers
}

/// pgdyno with a pool of `size` on three hosts: a dead port, then the
/// shared cluster as `localhost` and as `127.0.0.1`; `query` appended to
/// the URL. Also returns the cluster's port.
async fn on_three_hosts(query: &str, size: &str) -> (Pgdyno, u16) {
    let port = Cluster::shared().port();
    let dead = dead_port();
    let url = several_hosts(
        &format!("127.0.0.1:{dead},localhost:{port},127.0.0.1:{port}"),
        query,
    );
    let args = [
        "--upstream",
        &url,
        "--admin-users",
        APP_USER,
        "--pool-size",
        size,
    ];
    (Pgdyno::start(&args).await, port)
}

#[tokio::test]
async fn round_robin_spreads_backends_and_goes_past_a_dead_host() {
    within(60, async {
        let (pgdyno, port) = on_three_hosts("", "6").await;
        // Six backends start at hosts 0, 1, 2, 0, 1, 2: the dead one's turns
        // go on to localhost.
        let servers = open_backends(&pgdyno, 6).await;
        let count = |addr: &str| servers.iter().filter(|(a, _)| a == addr).count();
        assert_eq!(servers.len(), 6, "{servers:?}");
        assert!(
            servers.iter().all(|(_, p)| *p == port.to_string()),
            "a backend on the dead port: {servers:?}"
        );
        assert_eq!(
            (count("localhost"), count("127.0.0.1")),
            (4, 2),
            "{servers:?}"
        );
        assert!(
            pgdyno.log().contains("trying the next host"),
            "{}",
            pgdyno.log()
        );

        let console = pgdyno.connect("pgbouncer").await;
        let databases = show(&console, "SHOW DATABASES").await;
        let db = databases
            .rows
            .iter()
            .find(|r| r["name"].as_deref() == Some(APP_DB))
            .expect("the database in SHOW DATABASES");
        assert_eq!(db["host"].as_deref(), Some("127.0.0.1,localhost,127.0.0.1"));
        assert_eq!(db["load_balance_hosts"].as_deref(), Some("round-robin"));
        let (_, pool) = pool_row(&console, APP_DB).await;
        assert_eq!(pool["load_balance_hosts"].as_deref(), Some("round-robin"));
    })
    .await
}

#[tokio::test]
async fn disable_starts_each_backend_at_the_first_host_that_answers() {
    within(60, async {
        let (pgdyno, port) = on_three_hosts("?load_balance_hosts=disable", "4").await;
        let servers = open_backends(&pgdyno, 4).await;
        let want = vec![("localhost".to_owned(), port.to_string()); 4];
        assert_eq!(servers, want);
    })
    .await
}

/// The cancel key remembers the host: a backend on the second host is
/// cancelled there, not at the first (which refuses connections).
#[tokio::test]
async fn a_cancel_goes_to_the_host_its_backend_is_on() {
    within(60, async {
        let port = Cluster::shared().port();
        let dead = dead_port();
        let url = several_hosts(&format!("127.0.0.1:{dead},127.0.0.1:{port}"), "");
        let pgdyno = Pgdyno::start(&["--upstream", &url]).await;
        let client = pgdyno.connect(APP_DB).await;
        let token = client.cancel_token();
        let started = Instant::now();
        let cancel = async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            token.cancel_query(NoTls).await
        };
        let (slept, cancelled) = tokio::join!(client.simple_query("SELECT pg_sleep(30)"), cancel);
        cancelled.expect("CancelRequest to pgdyno");
        let err = slept.expect_err("pg_sleep(30) cancelled");
        assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the cancel took {:?}",
            started.elapsed()
        );
    })
    .await
}

/// libpq's `target_session_attrs`: a server read-only by default (a
/// cluster of its own with `default_transaction_read_only = on`, as a
/// standby would be) is passed over for `read-write` and chosen for
/// `read-only`; `standby` finds none and says why; `prefer-standby` then
/// takes any.
#[tokio::test]
async fn target_session_attrs_picks_the_server_it_asks_for() {
    within(90, async {
        let read_only = Cluster::dedicated();
        let admin = read_only.admin().await;
        for sql in [
            "ALTER SYSTEM SET default_transaction_read_only = on",
            "SELECT pg_reload_conf()",
        ] {
            admin.batch_execute(sql).await.expect(sql);
        }
        let (ro, rw) = (read_only.port(), Cluster::shared().port());
        let start = |attrs: &str| {
            let url = several_hosts(
                &format!("127.0.0.1:{ro},127.0.0.1:{rw}"),
                &format!("?load_balance_hosts=disable&target_session_attrs={attrs}"),
            );
            async move { Pgdyno::start(&["--upstream", &url, "--admin-users", APP_USER]).await }
        };
        let on = |port: u16| vec![("127.0.0.1".to_owned(), port.to_string()); 2];

        let pgdyno = start("read-write").await;
        assert_eq!(open_backends(&pgdyno, 2).await, on(rw));
        let client = pgdyno.connect(APP_DB).await;
        client
            .batch_execute("CREATE TEMP TABLE w (x int)")
            .await
            .expect("a write on the read-write server");
        drop(pgdyno);

        let pgdyno = start("read-only").await;
        assert_eq!(open_backends(&pgdyno, 2).await, on(ro));
        let client = pgdyno.connect(APP_DB).await;
        let err = client
            .batch_execute("CREATE TEMP TABLE w (x int)")
            .await
            .expect_err("a write on the read-only server");
        assert_eq!(err.code().map(|c| c.code()), Some("25006"), "{err}");
        drop(pgdyno);

        let pgdyno = start("standby").await;
        let err = match connect(&pgdyno.config(APP_DB)).await {
            Ok(client) => client
                .batch_execute("SELECT 1")
                .await
                .expect_err("no standby"),
            Err(e) => e,
        };
        let message = err
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_default();
        assert!(message.contains("target_session_attrs"), "{err}: {message}");
        drop(pgdyno);

        let pgdyno = start("prefer-standby").await;
        assert_eq!(open_backends(&pgdyno, 2).await, on(ro));
    })
    .await
}
