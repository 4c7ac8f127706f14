//! How pgdyno shares backends: in transaction mode many clients share a few
//! backends and PostgreSQL never sees more than the pool size; a
//! transaction keeps its backend to the end; in session mode a client keeps
//! one backend for its whole session, and the next client gets it reset.

use crate::harness::*;
use futures_util::future::join_all;
use futures_util::StreamExt;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::Type;

/// Samples, every few milliseconds until stopped, how many backends
/// PostgreSQL has on `db` (pgdyno's are the only ones there); returns the
/// largest count seen.
fn watch_backends(db: &'static str) -> (Arc<AtomicBool>, tokio::task::JoinHandle<i64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stop_flag = stop.clone();
    let task = tokio::spawn(async move {
        let cluster = Cluster::shared();
        let admin = cluster.admin().await;
        let max = AtomicI64::new(0);
        while !stop_flag.load(Ordering::Relaxed) {
            max.fetch_max(cluster.backends_on(&admin, db).await, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        max.load(Ordering::Relaxed)
    });
    (stop, task)
}

/// Two worker threads: fifty SCRAM logins are real work for the client too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_share_five_backends() {
    within(120, async {
        let cluster = Cluster::shared();
        cluster.create_database("pool_fifty").await;
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &cluster.url("pool_fifty"),
            "--pool-mode",
            "transaction",
            "--pool-size",
            "5",
            "--max-client-conn",
            "100",
        ])
        .await;
        let (stop, watcher) = watch_backends("pool_fifty");

        // Logging in is not what this test is about: fifty SCRAM logins at
        // once on two cores take a while, so log in a few at a time first.
        let clients: Vec<_> = futures_util::stream::iter(0..50)
            .map(|_| pgdyno.connect("pool_fifty"))
            .buffer_unordered(5)
            .collect()
            .await;
        let results = join_all(clients.iter().zip(0..).map(|(client, c)| async move {
            let mut pids = Vec::new();
            for i in 0..3 {
                let row = client
                    .query_typed_one(
                        "SELECT pg_backend_pid(), $1 FROM pg_sleep(0.05)",
                        &[(&(c * 10 + i), Type::INT4)],
                    )
                    .await
                    .map_err(|e| format!("client {c}: {e} ({:?})", e.as_db_error()))?;
                assert_eq!(row.get::<_, i32>(1), c * 10 + i);
                pids.push(row.get::<_, i32>(0));
            }
            Ok::<_, String>(pids)
        }))
        .await;
        stop.store(true, Ordering::Relaxed);
        let most_seen = watcher.await.unwrap();

        let mut pids = HashSet::new();
        for result in results {
            pids.extend(result.expect("every client succeeds"));
        }
        assert!(
            pids.len() <= 5,
            "{} distinct backends served a pool of 5",
            pids.len()
        );
        assert!(most_seen >= 1, "the watcher never saw pgdyno's backends");
        assert!(
            most_seen <= 5,
            "PostgreSQL saw {most_seen} backends for a pool of 5"
        );
    })
    .await
}

#[tokio::test]
async fn a_transaction_keeps_its_backend_to_the_end() {
    within(60, async {
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &Cluster::shared().url(APP_DB),
            "--default-pool-size",
            "3",
        ])
        .await;
        let clients = join_all((0..6).map(|_| pgdyno.connect(APP_DB))).await;
        let pids = join_all(clients.iter().map(|client| async move {
            let mut seen = Vec::new();
            for _ in 0..5 {
                client.batch_execute("BEGIN").await.unwrap();
                let first: i32 = client
                    .query_typed_one("SELECT pg_backend_pid()", &[])
                    .await
                    .unwrap()
                    .get(0);
                client.batch_execute("SELECT pg_sleep(0.01)").await.unwrap();
                let last: i32 = client
                    .query_typed_one("SELECT pg_backend_pid()", &[])
                    .await
                    .unwrap()
                    .get(0);
                client.batch_execute("COMMIT").await.unwrap();
                assert_eq!(first, last, "the backend changed inside a transaction");
                seen.push(first);
            }
            seen
        }))
        .await;
        let distinct: HashSet<i32> = pids.into_iter().flatten().collect();
        assert!(
            distinct.len() <= 3,
            "{} distinct backends for a pool of 3",
            distinct.len()
        );
    })
    .await
}

/// A checkout takes the most recently used idle backend, as PgBouncer's
/// does, even when the client used another one last: the backend that ran
/// last is the warm one, and under light load a few backends do the work.
#[tokio::test]
async fn a_checkout_takes_the_most_recently_used_backend() {
    within(60, async {
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &Cluster::shared().url(APP_DB),
            "--default-pool-size",
            "2",
        ])
        .await;
        let (a, b) = (pgdyno.connect(APP_DB).await, pgdyno.connect(APP_DB).await);
        async fn pid(c: &tokio_postgres::Client) -> i32 {
            let row = c.query_typed_one("SELECT pg_backend_pid()", &[]).await;
            row.unwrap().get(0)
        }
        for _ in 0..3 {
            // A and B each hold a backend; A gives its back first, so B's
            // is the most recently used when A asks again.
            a.batch_execute("BEGIN").await.unwrap();
            b.batch_execute("BEGIN").await.unwrap();
            let (pa, pb) = (pid(&a).await, pid(&b).await);
            assert_ne!(pa, pb, "two open transactions on one backend");
            a.batch_execute("COMMIT").await.unwrap();
            b.batch_execute("COMMIT").await.unwrap();
            assert_eq!(
                pid(&a).await,
                pb,
                "A did not get the most recently used backend"
            );
        }
        // Taking turns, clients keep to the one backend that ran last.
        let mut pids = HashSet::new();
        for _ in 0..5 {
            pids.insert(pid(&a).await);
            pids.insert(pid(&b).await);
        }
        assert_eq!(pids.len(), 1, "clients taking turns used {pids:?}");
    })
    .await
}

#[tokio::test]
async fn session_mode_gives_each_client_its_own_backend() {
    within(60, async {
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &Cluster::shared().url(APP_DB),
            "--pool-mode",
            "session",
            "--pool-size",
            "3",
        ])
        .await;
        let clients = join_all((0..3).map(|_| pgdyno.connect(APP_DB))).await;
        let per_client = join_all(clients.iter().enumerate().map(|(c, client)| async move {
            client
                .batch_execute(&format!("SET application_name = 'session-{c}'"))
                .await
                .unwrap();
            let mut pids = HashSet::new();
            for _ in 0..5 {
                let row = client
                    .query_typed_one(
                        "SELECT pg_backend_pid(), current_setting('application_name')",
                        &[],
                    )
                    .await
                    .unwrap();
                pids.insert(row.get::<_, i32>(0));
                assert_eq!(
                    row.get::<_, String>(1),
                    format!("session-{c}"),
                    "session state lost"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(pids.len(), 1, "client {c} moved between backends: {pids:?}");
            pids.into_iter().next().unwrap()
        }))
        .await;
        let distinct: HashSet<i32> = per_client.into_iter().collect();
        assert_eq!(distinct.len(), 3, "three sessions must have three backends");
    })
    .await
}

#[tokio::test]
async fn session_mode_resets_the_backend_for_the_next_client() {
    within(60, async {
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &Cluster::shared().url(APP_DB),
            "--pool-mode",
            "session",
            "--pool-size",
            "1",
            "--server-reset-query",
            "DISCARD ALL",
        ])
        .await;
        let first = pgdyno.connect(APP_DB).await;
        let first_pid: i32 = first
            .query_typed_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        first
            .batch_execute("CREATE TEMP TABLE leftover (x int); SET search_path TO pg_catalog")
            .await
            .unwrap();
        drop(first);

        let second = pgdyno.connect(APP_DB).await;
        let row = second
            .query_typed_one(
                "SELECT pg_backend_pid(), to_regclass('pg_temp.leftover') IS NULL, \
                 current_setting('search_path')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, i32>(0),
            first_pid,
            "the backend was not reused"
        );
        assert!(
            row.get::<_, bool>(1),
            "the first client's temp table survived"
        );
        assert_eq!(row.get::<_, String>(2), "\"$user\", public");
    })
    .await
}
