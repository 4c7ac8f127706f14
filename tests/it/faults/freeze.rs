//! PostgreSQL frozen with SIGSTOP (the postmaster and every process it
//! started), then resumed with SIGCONT, on a cluster of its own. While it
//! is frozen nothing answers and TCP still connects (the kernel completes
//! handshakes into the listen backlog), so only pgdyno's timers can help:
//! query_timeout ends a query on a frozen backend, query_wait_timeout
//! bounds a client waiting for one, server_connect_timeout a login that
//! gets no answer. Each is a clear error; after SIGCONT everything works.

use super::{closes, code_and_message};
use crate::harness::*;
use futures_util::future::join_all;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// Runs `SELECT 1` and returns its error (SQLSTATE, message) and how long
/// it took to come.
async fn failing_query(client: &Client) -> (String, String, Duration) {
    let started = Instant::now();
    let err = client
        .simple_query("SELECT 1")
        .await
        .expect_err("a query succeeded while PostgreSQL was frozen");
    let (code, message) = code_and_message(&err);
    (code, message, started.elapsed())
}

#[tokio::test]
async fn sigstop_fires_the_timeouts_and_sigcont_recovers() {
    within(60, async {
        let cluster = Cluster::dedicated();
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &cluster.url(APP_DB),
            "--pool-size",
            "2",
            "--query-timeout",
            "2",
            "--query-wait-timeout",
            "1",
            "--server-connect-timeout",
            "1",
            "--server-login-retry",
            "0.2",
        ])
        .await;
        let holders = join_all((0..2).map(|_| pgdyno.connect(APP_DB))).await;
        let waiters = join_all((0..3).map(|_| pgdyno.connect(APP_DB))).await;
        let late = pgdyno.connect(APP_DB).await;
        let idle = pgdyno.connect(APP_DB).await;
        // Two backends open and idle in the pool.
        for r in join_all(
            holders
                .iter()
                .map(|c| c.query_typed_one("SELECT pg_sleep(0.2)", &[])),
        )
        .await
        {
            r.expect("warm-up query");
        }

        let frozen = cluster.freeze();
        // Both backends taken by queries that get no answer...
        let holding = join_all(holders.iter().map(failing_query));
        let waiting = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            // ...so these wait for one, up to query_wait_timeout.
            join_all(waiters.iter().map(failing_query)).await
        };
        let (held, waited) = tokio::join!(holding, waiting);
        for (code, message, took) in &held {
            assert_eq!(
                (code.as_str(), message.as_str()),
                ("08P01", "query_timeout")
            );
            assert!(
                *took >= Duration::from_millis(1900) && *took < Duration::from_secs(4),
                "query_timeout (2 s) fired after {took:?}"
            );
        }
        for (code, message, took) in &waited {
            assert_eq!(
                (code.as_str(), message.as_str()),
                ("08P01", "query_wait_timeout")
            );
            assert!(
                *took >= Duration::from_millis(900) && *took < Duration::from_secs(3),
                "query_wait_timeout (1 s) fired after {took:?}"
            );
        }
        // The timed-out backends were closed, so the next query logs in a
        // new one, which the frozen server never answers.
        let (code, message, took) = failing_query(&late).await;
        assert_eq!(code, "08006", "{message}");
        assert!(message.contains("server_connect_timeout"), "{message}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "server_connect_timeout (1 s) fired after {took:?}"
        );
        for client in holders.iter().chain(&waiters).chain([&late]) {
            assert!(closes(client).await, "a timed-out client was left open");
        }

        frozen.thaw();
        // Past server_login_retry, a client that idled through it all and a
        // new one both work, several at once.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let row = idle
            .query_typed_one("SELECT 1 + 1", &[])
            .await
            .unwrap_or_else(|e| panic!("after SIGCONT: {e}\n{}", pgdyno.log()));
        assert_eq!(row.get::<_, i32>(0), 2);
        let fresh = join_all((0..4).map(|_| pgdyno.connect(APP_DB))).await;
        for r in join_all(
            fresh
                .iter()
                .map(|c| c.query_typed_one("SELECT pg_sleep(0.1)", &[])),
        )
        .await
        {
            r.expect("queries after SIGCONT");
        }
    })
    .await
}
