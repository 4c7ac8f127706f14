//! PostgreSQL killed with SIGKILL (the postmaster and every process it
//! started, as an OOM kill or a host crash would), on a cluster of its own.
//! Clients in a transaction lose it with a connection-failure error; idle
//! clients hold no backend, so they keep their pgdyno connection; once
//! PostgreSQL is back the pool refills, and no backend from before the
//! crash is ever lent again.

use super::{backend_pid, closes, code_and_message, connect_watched, CONNECTION_FAILURE};
use crate::harness::*;
use futures_util::future::join_all;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// The app role's backends on appdb: process ids, straight from PostgreSQL.
async fn app_backends(cluster: &Cluster) -> HashSet<i32> {
    cluster
        .admin()
        .await
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND usename = $2",
            &[&APP_DB, &APP_USER],
        )
        .await
        .expect("read pg_stat_activity")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Whether the backend a query from `client` runs on started after the
/// postmaster did (so it was born after the restart).
async fn on_a_backend_born_after_the_restart(client: &Client) -> (i32, bool) {
    let row = client
        .query_one(
            "SELECT pid, backend_start >= pg_postmaster_start_time() \
             FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("query after PostgreSQL came back");
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn sigkill_fails_transactions_keeps_idle_clients_and_lends_only_new_backends() {
    within(60, async {
        let cluster = Cluster::dedicated();
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &cluster.url(APP_DB),
            "--pool-size",
            "4",
            "--server-connect-timeout",
            "2",
            "--server-login-retry",
            "0.2",
        ])
        .await;
        let idle = join_all((0..3).map(|_| pgdyno.connect(APP_DB))).await;
        for client in &idle {
            backend_pid(client).await;
        }
        // One client waits on a running query inside its transaction; one
        // is idle inside its transaction (so holds a backend, no query).
        let running = pgdyno.connect(APP_DB).await;
        running.batch_execute("BEGIN").await.unwrap();
        let (in_transaction, in_transaction_ended) = connect_watched(&pgdyno.config(APP_DB)).await;
        in_transaction
            .batch_execute("BEGIN; SELECT 1")
            .await
            .unwrap();
        let sleeping = tokio::spawn(async move {
            let result = running.simple_query("SELECT pg_sleep(30)").await;
            (running, result)
        });
        let admin = cluster.admin().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while admin
            .query(
                "SELECT 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' \
                 AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .is_empty()
        {
            assert!(Instant::now() < deadline, "pg_sleep never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(admin);
        let before = app_backends(&cluster).await;
        assert!(before.len() >= 2, "backends before the crash: {before:?}");

        cluster.crash();

        // The running query fails at once, with a connection failure.
        let (running, result) = tokio::time::timeout(Duration::from_secs(10), sleeping)
            .await
            .expect("the running query hung after PostgreSQL was killed")
            .unwrap();
        let err = result.expect_err("a query survived SIGKILL");
        let (code, message) = code_and_message(&err);
        assert!(
            CONNECTION_FAILURE.contains(&code.as_str()),
            "running query: {code} {message}"
        );
        // The client idle in its transaction is told too, without asking.
        let ended = tokio::time::timeout(Duration::from_secs(10), in_transaction_ended)
            .await
            .expect("the client idle in a transaction was not told within 10 s")
            .unwrap()
            .expect("its connection ended without an error");
        let (code, message) = code_and_message(&ended);
        assert!(
            CONNECTION_FAILURE.contains(&code.as_str()),
            "idle in transaction: {code} {message}"
        );
        assert!(closes(&running).await && closes(&in_transaction).await);
        // Idle clients still hold their pgdyno connection.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for client in &idle {
            assert!(!client.is_closed(), "an idle client lost its connection");
        }

        // A client asking while PostgreSQL is down gets a quick error.
        let asking = pgdyno.connect(APP_DB).await;
        let started = Instant::now();
        let err = asking
            .simple_query("SELECT 1")
            .await
            .expect_err("a query worked with PostgreSQL down");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let (code, message) = code_and_message(&err);
        assert!(
            CONNECTION_FAILURE.contains(&code.as_str()),
            "{code} {message}"
        );

        cluster.start();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The idle clients' next queries succeed at once, all on new
        // backends (the pool refills as they ask).
        let after = join_all(idle.iter().map(on_a_backend_born_after_the_restart)).await;
        for (pid, born_after) in after {
            assert!(born_after && !before.contains(&pid), "backend {pid}");
        }
        assert!(app_backends(&cluster).await.is_disjoint(&before));
        let fresh = pgdyno.connect(APP_DB).await;
        assert_eq!(
            fresh
                .query_typed_one("SELECT 40 + 2", &[])
                .await
                .unwrap()
                .get::<_, i32>(0),
            42
        );
    })
    .await
}

#[tokio::test]
async fn after_a_quick_crash_and_restart_no_dead_backend_is_lent() {
    within(60, async {
        let cluster = Cluster::dedicated();
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &cluster.url(APP_DB),
            "--pool-size",
            "3",
            "--server-login-retry",
            "0.2",
        ])
        .await;
        // Three backends, idle in the pool; their clients stay connected.
        let clients = join_all((0..3).map(|_| pgdyno.connect(APP_DB))).await;
        join_all(
            clients
                .iter()
                .map(|c| c.query_typed_one("SELECT pg_sleep(0.3)", &[])),
        )
        .await
        .into_iter()
        .for_each(|r| {
            r.expect("warm-up query");
        });
        let before = app_backends(&cluster).await;
        assert_eq!(before.len(), 3, "{before:?}");

        cluster.crash();
        cluster.start();

        // Nobody asked for a backend while PostgreSQL was down, so nothing
        // failed: every client's first query must work, on a new backend.
        let after = join_all(clients.iter().map(on_a_backend_born_after_the_restart)).await;
        for (pid, born_after) in after {
            assert!(
                born_after && !before.contains(&pid),
                "backend {pid} (from before the crash: {})",
                before.contains(&pid)
            );
        }
        for client in &clients {
            assert!(!client.is_closed());
        }
    })
    .await
}

#[tokio::test]
async fn after_a_crash_min_pool_size_refills_and_the_whole_pool_is_usable() {
    within(60, async {
        let cluster = Cluster::dedicated();
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &cluster.url(APP_DB),
            "--pool-size",
            "2",
            "--min-pool-size",
            "2",
            "--query-wait-timeout",
            "2",
            "--server-login-retry",
            "0.2",
        ])
        .await;
        // The pool exists from its first client on.
        let first = pgdyno.connect(APP_DB).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while app_backends(&cluster).await.len() < 2 {
            assert!(Instant::now() < deadline, "min_pool_size never reached");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let before = app_backends(&cluster).await;

        cluster.crash();
        // Long enough for pgdyno's once-a-second upkeep to try (and fail)
        // to bring the pool back to min_pool_size.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        cluster.start();

        // Both backends come back by themselves, all new.
        let deadline = Instant::now() + Duration::from_secs(10);
        let refilled = loop {
            let now = app_backends(&cluster).await;
            if now.len() >= 2 {
                break now;
            }
            assert!(
                Instant::now() < deadline,
                "the pool did not refill to min_pool_size = 2 within 10 s of the restart: \
                 backends {now:?}\n{}",
                pgdyno.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(refilled.is_disjoint(&before), "{refilled:?} vs {before:?}");
        // And pool_size = 2 means two transactions at once.
        let (a, b) = (first, pgdyno.connect(APP_DB).await);
        a.batch_execute("BEGIN; SELECT 1").await.unwrap();
        b.batch_execute("BEGIN; SELECT 1")
            .await
            .unwrap_or_else(|e| panic!("second transaction of a pool of 2: {e}"));
    })
    .await
}
