//! PostgreSQL goes away and comes back while pgdyno keeps running: while it
//! is down clients get an error rather than a hang, and once it is back new
//! transactions succeed (after a retry or two at most) without restarting
//! pgdyno. Uses a cluster of its own.

use crate::harness::*;
use futures_util::future::join_all;
use std::time::{Duration, Instant};

/// Connects and runs one query; any failure (connect or query) is an Err.
async fn one_transaction(pgdyno: &Pgdyno) -> Result<i32, String> {
    let client = connect(&pgdyno.config(APP_DB))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let row = client
        .query_typed_one("SELECT 1 + 1", &[])
        .await
        .map_err(|e| format!("query: {e}"))?;
    Ok(row.get(0))
}

#[tokio::test]
async fn new_transactions_succeed_after_postgresql_restarts() {
    within(150, async {
        let cluster = Cluster::dedicated();
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &cluster.url(APP_DB),
            "--pool-size",
            "2",
            "--query-wait-timeout",
            "3",
            "--server-connect-timeout",
            "2",
            "--server-login-retry",
            "0.5",
        ])
        .await;
        // Fill the pool with backends that the restart will kill.
        let clients = join_all((0..2).map(|_| pgdyno.connect(APP_DB))).await;
        for result in join_all(
            clients
                .iter()
                .map(|c| c.query_typed_one("SELECT pg_sleep(0.2)", &[])),
        )
        .await
        {
            result.expect("query before the restart");
        }

        cluster.stop();
        let started = Instant::now();
        let down = tokio::time::timeout(Duration::from_secs(15), one_transaction(&pgdyno))
            .await
            .expect("a client hung for 15 s while PostgreSQL was down");
        assert!(
            down.is_err(),
            "a transaction succeeded with PostgreSQL down"
        );
        eprintln!("while down: {down:?} after {:?}", started.elapsed());

        cluster.start();
        let mut failures = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match one_transaction(&pgdyno).await {
                Ok(n) => {
                    assert_eq!(n, 2);
                    break;
                }
                Err(e) => failures.push(e),
            }
            assert!(
                Instant::now() < deadline,
                "no transaction succeeded within 20 s of the restart: {failures:?}\n{}",
                pgdyno.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            failures.len() <= 3,
            "{} failed attempts after the restart: {failures:?}",
            failures.len()
        );

        // From then on, everything works.
        for i in 0..20 {
            if let Err(e) = one_transaction(&pgdyno).await {
                panic!("transaction {i} after recovery failed: {e}");
            }
        }
        let client = pgdyno.connect(APP_DB).await;
        for _ in 0..10 {
            client
                .query_typed_one("SELECT 1", &[])
                .await
                .expect("queries after recovery");
        }
    })
    .await
}
