//! Limits and timers: max_client_conn refuses the extra client while the
//! others carry on, query_wait_timeout fails a client that waited too long
//! for a backend, the reserve pool rescues a waiting client,
//! max_db_connections caps a database across users, the client limits per
//! database and per user refuse the extra client, and idle, lifetime and
//! minimum-size settings open and close backends.

use crate::harness::*;
use futures_util::future::join_all;
use std::time::{Duration, Instant};

#[tokio::test]
async fn max_client_conn_refuses_the_extra_client_only() {
    within(60, async {
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &Cluster::shared().url(APP_DB),
            "--max-client-conn",
            "3",
        ])
        .await;
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(pgdyno.connect(APP_DB).await);
        }
        let err = connect(&pgdyno.config(APP_DB))
            .await
            .expect_err("a fourth client must be refused");
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("no ErrorResponse: {err}"));
        assert!(
            ["53300", "08P01"].contains(&db.code().code()),
            "SQLSTATE {}",
            db.code().code()
        );
        assert!(
            db.message()
                .contains("no more connections allowed (max_client_conn)"),
            "message: {}",
            db.message()
        );

        for client in &clients {
            let row = client
                .query_typed_one("SELECT 1", &[])
                .await
                .expect("admitted clients work");
            assert_eq!(row.get::<_, i32>(0), 1);
        }
        // A slot freed is a slot for the next client (once pgdyno notices).
        drop(clients.pop());
        let deadline = Instant::now() + Duration::from_secs(5);
        let client = loop {
            match connect(&pgdyno.config(APP_DB)).await {
                Ok(client) => break client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("a freed slot was not reused: {e}"),
            }
        };
        client.query_typed_one("SELECT 1", &[]).await.unwrap();
    })
    .await
}

/// pgdyno with a pool of one backend.
async fn pool_of_one(extra: &[&str]) -> Pgdyno {
    let url = Cluster::shared().url(APP_DB);
    let mut args = vec!["--upstream", &url, "--pool-size", "1"];
    args.extend_from_slice(extra);
    Pgdyno::start(&args).await
}

/// The message of a refused login, which must be 53300.
async fn refused(pgdyno: &Pgdyno) -> String {
    let err = connect(&pgdyno.config(APP_DB))
        .await
        .expect_err("the client over the limit must be refused");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("no ErrorResponse: {err}"));
    assert_eq!(db.code().code(), "53300", "{}", db.message());
    db.message().to_owned()
}

/// max_db_client_connections (here a database's own) and
/// max_user_client_connections (here a [users] entry's) refuse the client
/// over the limit, the others carry on, and a client that leaves makes
/// room.
#[tokio::test]
async fn client_limits_per_database_and_per_user() {
    within(60, async {
        let url = Cluster::shared().url(APP_DB);
        let dir = scratch_dir("client-limits");
        for (config, limit, name) in [
            (
                format!("[databases]\n{APP_DB} = {{ url = \"{url}\", max_db_client_connections = 2 }}\n"),
                2,
                "max_db_client_connections",
            ),
            (
                format!("upstream = \"{url}\"\n[users]\n{APP_USER} = {{ max_user_client_connections = 1 }}\n"),
                1,
                "max_user_client_connections",
            ),
        ] {
            let path = dir.join(format!("{name}.toml"));
            std::fs::write(&path, config).unwrap();
            let pgdyno = Pgdyno::start(&["--config", path.to_str().unwrap()]).await;
            let mut clients = Vec::new();
            for _ in 0..limit {
                clients.push(pgdyno.connect(APP_DB).await);
            }
            let message = refused(&pgdyno).await;
            assert!(message.contains(name), "{message}");
            for c in &clients {
                c.simple_query("SELECT 1").await.expect("admitted clients work");
            }
            drop(clients.pop());
            // The count drops once pgdyno has seen the client go.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match connect(&pgdyno.config(APP_DB)).await {
                    Ok(_) => break,
                    Err(e) => assert!(Instant::now() < deadline, "{name}: still refused: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
    .await
}

#[tokio::test]
async fn query_wait_timeout_fails_the_waiting_client() {
    within(60, async {
        let pgdyno = pool_of_one(&["--query-wait-timeout", "0.5"]).await;
        let holder = pgdyno.connect(APP_DB).await;
        let waiter = pgdyno.connect(APP_DB).await;
        holder.batch_execute("BEGIN; SELECT 1").await.unwrap();

        let started = Instant::now();
        let err = tokio::time::timeout(
            Duration::from_secs(10),
            waiter.query_typed_one("SELECT 1", &[]),
        )
        .await
        .expect("the waiting client was not timed out within 10 s")
        .expect_err("the waiting client must get an error");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(400),
            "timed out after only {waited:?}"
        );
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("no ErrorResponse: {err}"));
        assert_eq!(db.code().code(), "08P01");
        assert!(
            db.message().contains("query_wait_timeout"),
            "message: {}",
            db.message()
        );
        // ...and disconnected.
        tokio::time::timeout(Duration::from_secs(5), async {
            while !waiter.is_closed() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the timed-out client was not disconnected");

        holder
            .batch_execute("SELECT 2; COMMIT")
            .await
            .expect("the holder is unaffected");
        let third = pgdyno.connect(APP_DB).await;
        let row = third
            .query_typed_one("SELECT 3", &[])
            .await
            .expect("a later client works");
        assert_eq!(row.get::<_, i32>(0), 3);
    })
    .await
}

#[tokio::test]
async fn reserve_pool_serves_a_client_that_waited_long_enough() {
    within(60, async {
        let pgdyno = pool_of_one(&[
            "--reserve-pool-size",
            "1",
            "--reserve-pool-timeout",
            "0.5",
            "--query-wait-timeout",
            "10",
        ])
        .await;
        let holder = pgdyno.connect(APP_DB).await;
        let waiter = pgdyno.connect(APP_DB).await;
        holder.batch_execute("BEGIN").await.unwrap();
        let holder_pid: i32 = holder
            .query_typed_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);

        let started = Instant::now();
        let row = waiter
            .query_typed_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("the reserve pool must serve the waiting client");
        let waited = started.elapsed();
        assert_ne!(row.get::<_, i32>(0), holder_pid);
        assert!(
            waited >= Duration::from_millis(400),
            "reserve used after only {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(2),
            "reserve used only after {waited:?}"
        );
        holder.batch_execute("COMMIT").await.unwrap();
    })
    .await
}

/// Polls `backends_on(db)` until `done` holds, for up to `secs` seconds.
async fn backends_until(
    admin: &tokio_postgres::Client,
    db: &str,
    secs: u64,
    done: impl Fn(i64) -> bool,
) -> i64 {
    let cluster = Cluster::shared();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let n = cluster.backends_on(admin, db).await;
        if done(n) || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn idle_backends_close_after_server_idle_timeout() {
    within(60, async {
        let cluster = Cluster::shared();
        cluster.create_database("pool_idle").await;
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &cluster.url("pool_idle"),
            "--server-idle-timeout",
            "1",
        ])
        .await;
        let admin = cluster.admin().await;
        let client = pgdyno.connect("pool_idle").await;
        client.batch_execute("BEGIN; SELECT 1").await.unwrap();
        let in_use = cluster.backends_on(&admin, "pool_idle").await;
        assert!(in_use >= 1, "no backend serves the open transaction");
        client.batch_execute("COMMIT").await.unwrap();
        // The client stays connected but idle; its backend should go.
        let left = backends_until(&admin, "pool_idle", 10, |n| n == 0).await;
        assert_eq!(
            left, 0,
            "idle backends still open well past server_idle_timeout"
        );
        client
            .query_typed_one("SELECT 2", &[])
            .await
            .expect("a new backend is opened on demand");
    })
    .await
}

#[tokio::test]
async fn backends_are_replaced_after_server_lifetime() {
    within(60, async {
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &Cluster::shared().url(APP_DB),
            "--pool-size",
            "1",
            "--server-lifetime",
            "1",
        ])
        .await;
        let client = pgdyno.connect(APP_DB).await;
        let pid = || async {
            client
                .query_typed_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap()
                .get::<_, i32>(0)
        };
        let first = pid().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if pid().await != first {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the same backend served for 10 s despite server_lifetime 1"
            );
        }
    })
    .await
}

#[tokio::test]
async fn min_pool_size_keeps_backends_open() {
    within(60, async {
        let cluster = Cluster::shared();
        cluster.create_database("pool_min").await;
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &cluster.url("pool_min"),
            "--pool-size",
            "4",
            "--min-pool-size",
            "2",
        ])
        .await;
        // One idle client: it needs at most one backend, the minimum is two.
        let client = pgdyno.connect("pool_min").await;
        client.query_typed_one("SELECT 1", &[]).await.unwrap();
        let admin = cluster.admin().await;
        let open = backends_until(&admin, "pool_min", 10, |n| n >= 2).await;
        assert!(open >= 2, "only {open} backends open with min_pool_size 2");
        assert!(open <= 4, "{open} backends open with pool_size 4");
        client.query_typed_one("SELECT 2", &[]).await.unwrap();
    })
    .await
}

/// Two users means two pools on one database; max_db_connections caps
/// their sum, and the clients of both still all get served.
#[tokio::test]
async fn max_db_connections_caps_all_users_together() {
    within(90, async {
        let cluster = Cluster::shared();
        cluster.create_database("pool_maxdb").await;
        cluster
            .admin()
            .await
            .batch_execute("CREATE ROLE maxdb_user LOGIN PASSWORD 'maxdb-secret'")
            .await
            .unwrap();
        let userlist = scratch_dir("maxdb").join("userlist.txt");
        std::fs::write(&userlist, "\"maxdb_user\" \"maxdb-secret\"\n").unwrap();
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &cluster.url("pool_maxdb"),
            "--auth-file",
            userlist.to_str().unwrap(),
            "--pool-size",
            "5",
            "--max-db-connections",
            "2",
            "--query-wait-timeout",
            "30",
        ])
        .await;
        let admin = cluster.admin().await;
        let mut clients = Vec::new();
        for (user, password) in [(APP_USER, APP_PASSWORD), ("maxdb_user", "maxdb-secret")] {
            for _ in 0..3 {
                let config = pgdyno.config_as("pool_maxdb", user, password);
                clients.push(connect(&config).await.expect("login"));
            }
        }
        let work = join_all(clients.iter().map(|client| async move {
            for _ in 0..3 {
                client.batch_execute("SELECT pg_sleep(0.1)").await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
        let watch = async {
            let mut most = 0;
            for _ in 0..30 {
                most = most.max(cluster.backends_on(&admin, "pool_maxdb").await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            most
        };
        let (results, most_seen) = tokio::join!(work, watch);
        for result in results {
            result.expect("every client of both users is served");
        }
        assert!(
            (1..=2).contains(&most_seen),
            "PostgreSQL saw {most_seen} backends with max_db_connections 2"
        );
    })
    .await
}

/// The line keeper ends each waiting client's wait at its own deadline: the
/// first in line times out, the one that came later is still waiting when
/// the backend comes back, and gets it.
#[tokio::test]
async fn query_wait_timeout_counts_from_each_clients_arrival() {
    within(60, async {
        let pgdyno = pool_of_one(&["--query-wait-timeout", "1.5"]).await;
        let holder = pgdyno.connect(APP_DB).await;
        let first = pgdyno.connect(APP_DB).await;
        let second = pgdyno.connect(APP_DB).await;
        holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
        let started = Instant::now();
        let first_wait = async {
            let result = first.query_typed_one("SELECT 1", &[]).await;
            (result, started.elapsed())
        };
        let second_wait = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            second.query_typed_one("SELECT 2", &[]).await
        };
        let release = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            holder.batch_execute("COMMIT").await.unwrap();
        };
        let ((first, waited), second, ()) = tokio::join!(first_wait, second_wait, release);
        let err = first.expect_err("the first in line must time out");
        assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("08P01"));
        assert!(
            waited >= Duration::from_millis(1400) && waited < Duration::from_millis(1950),
            "the first timed out after {waited:?}"
        );
        let row = second.expect("the second in line is served when the backend is back");
        assert_eq!(row.get::<_, i32>(0), 2);
    })
    .await
}

/// `query_wait_timeout = 0`: a client waits as long as it takes.
#[tokio::test]
async fn query_wait_timeout_zero_waits_without_end() {
    within(60, async {
        let pgdyno = pool_of_one(&["--query-wait-timeout", "0"]).await;
        let holder = pgdyno.connect(APP_DB).await;
        let waiter = pgdyno.connect(APP_DB).await;
        holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
        let wait = waiter.query_typed_one("SELECT 2", &[]);
        let release = async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            holder.batch_execute("COMMIT").await.unwrap();
        };
        let (row, ()) = tokio::join!(wait, release);
        assert_eq!(
            row.expect("served once the backend is back")
                .get::<_, i32>(0),
            2
        );
    })
    .await
}
