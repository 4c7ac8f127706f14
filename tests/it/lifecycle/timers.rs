//! Timers and checks: client_idle_timeout, idle_transaction_timeout and
//! query_timeout close the client with 08P01 and drop what it held (each
//! logged with its SQLSTATE); server_check_query runs on a backend idle
//! past server_check_delay and replaces one that fails it or died;
//! server_login_retry answers with the cached error, then tries again.

use super::json_log::{assert_logged_error, json_log};
use super::{backend_pid, pgdyno};
use crate::harness::*;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// The ErrorResponse pgdyno sent before closing `raw`, which it must do
/// within `secs` seconds.
async fn closing_error(raw: &mut RawConn, secs: u64) -> ErrorFields {
    let msgs = raw.until_closed(secs).await;
    errors(&msgs).into_iter().next().unwrap_or_else(|| {
        panic!(
            "pgdyno closed the client without an ErrorResponse ({})",
            tags(&msgs)
        )
    })
}

#[track_caller]
fn assert_error(err: &ErrorFields, code: &str, text: &str) {
    assert_eq!(err.code, code, "SQLSTATE of {err:?}");
    assert!(err.message.contains(text), "message: {:?}", err.message);
}

async fn count_rows(client: &Client, table: &str) -> i64 {
    let sql = format!("SELECT count(*) FROM {table}");
    client.query_typed_one(&sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn client_idle_timeout_closes_an_idle_client_but_not_a_busy_one() {
    within(60, async {
        let pgdyno = pgdyno(&["--client-idle-timeout", "0.5"]).await;
        let started = Instant::now();
        let mut idle = pgdyno.connect_raw(APP_DB).await;
        let mut chatty = pgdyno.connect_raw(APP_DB).await;
        let sleeper = pgdyno.connect(APP_DB).await;

        // A query longer than the timeout is work, not idleness; nor is a
        // client that speaks more often than the timeout.
        let sleeping = sleeper.simple_query("SELECT pg_sleep(1.2)");
        let chatting = async {
            for _ in 0..8 {
                let msgs = chatty.query("SELECT 1").await;
                assert_tags(&msgs, "TDCZ", "a client querying every 200 ms");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let closed = async {
            let err = closing_error(&mut idle, 5).await;
            (err, started.elapsed())
        };
        let (slept, (), (err, after)) = tokio::join!(sleeping, chatting, closed);

        assert_error(&err, "08P01", "client_idle_timeout");
        assert!(
            after >= Duration::from_millis(450),
            "closed after {after:?}"
        );
        slept.expect("a client inside a long query must not be timed out");
        let msgs = chatty.query("SELECT 2").await;
        assert_tags(&msgs, "TDCZ", "the chatty client afterwards");
        sleeper
            .simple_query("SELECT 3")
            .await
            .expect("the sleeper afterwards");
        assert_logged_error(&pgdyno, "08P01", "client_idle_timeout").await;
    })
    .await
}

#[tokio::test]
async fn idle_transaction_timeout_rolls_back_and_frees_the_backend() {
    within(60, async {
        let cluster = Cluster::shared();
        let table = format!("lifecycle_idle_tx_{}", std::process::id());
        let direct = cluster.direct(APP_DB).await;
        direct
            .batch_execute(&format!("CREATE TABLE {table} (n int)"))
            .await
            .unwrap();
        let pgdyno = pgdyno(&["--pool-size", "1", "--idle-transaction-timeout", "0.5"]).await;

        let mut raw = pgdyno.connect_raw(APP_DB).await;
        let msgs = raw
            .query(&format!(
                "BEGIN; INSERT INTO {table} VALUES (1); SELECT pg_backend_pid()"
            ))
            .await;
        assert_eq!(ready_status(&msgs), 'T', "errors: {:?}", errors(&msgs));
        let pid: i32 = single_value(&msgs).unwrap().parse().unwrap();
        let started = Instant::now();
        let err = closing_error(&mut raw, 5).await;
        let after = started.elapsed();
        assert_error(&err, "08P01", "idle transaction timeout");
        assert!(
            after >= Duration::from_millis(450),
            "closed after {after:?}"
        );

        // The only backend slot is free again, on a new backend, and the
        // row is not there.
        let next = tokio::time::timeout(Duration::from_secs(5), async {
            let next = pgdyno.connect(APP_DB).await;
            let pid = backend_pid(&next).await;
            (next, pid)
        })
        .await
        .expect("the next client waited 5 s for the pool's one backend");
        assert_ne!(
            next.1, pid,
            "the timed-out transaction's backend was reused"
        );
        assert_eq!(count_rows(&next.0, &table).await, 0, "through pgdyno");
        // Once PostgreSQL has seen the backend go, the transaction is gone.
        let admin = cluster.admin().await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let row = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .await
                .unwrap();
            if row.get::<_, i64>(0) == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the timed-out transaction's backend {pid} still exists after 5 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            count_rows(&direct, &table).await,
            0,
            "the insert was committed"
        );

        assert_logged_error(&pgdyno, "08P01", "idle transaction timeout").await;
        direct
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
    })
    .await
}

#[tokio::test]
async fn query_timeout_closes_the_client_and_drops_its_backend() {
    within(60, async {
        let pgdyno = pgdyno(&["--pool-size", "1", "--query-timeout", "0.5"]).await;
        let mut raw = pgdyno.connect_raw(APP_DB).await;
        let pid = single_value(&raw.query("SELECT pg_backend_pid()").await).unwrap();

        raw.send(&Batch::new().query("SELECT pg_sleep(5)").into_bytes())
            .await
            .unwrap();
        let started = Instant::now();
        let err = closing_error(&mut raw, 4).await;
        let after = started.elapsed();
        assert_error(&err, "08P01", "query_timeout");
        assert!(
            after >= Duration::from_millis(450),
            "closed after {after:?}"
        );

        // The pool's one slot is free at once: the next client need not
        // wait for the sleep to end on the old backend.
        let next_pid = tokio::time::timeout(Duration::from_secs(3), async {
            let next = pgdyno.connect(APP_DB).await;
            backend_pid(&next).await
        })
        .await
        .expect("the next client waited for the timed-out query's backend");
        assert_ne!(
            next_pid.to_string(),
            pid,
            "the timed-out backend was reused"
        );
        assert_logged_error(&pgdyno, "08P01", "query_timeout").await;
    })
    .await
}

/// transaction_timeout counts from a transaction's first request however
/// busy it keeps: a transaction of quick statements is closed and rolled
/// back once it has lasted the timeout, while a run of short transactions
/// lasting longer in all is untouched.
#[tokio::test]
async fn transaction_timeout_ends_a_long_transaction_however_busy() {
    within(60, async {
        let table = format!("lifecycle_tx_timeout_{}", std::process::id());
        let direct = Cluster::shared().direct(APP_DB).await;
        direct
            .batch_execute(&format!("CREATE TABLE {table} (n int)"))
            .await
            .unwrap();
        let pgdyno = pgdyno(&["--transaction-timeout", "0.8"]).await;

        // Short transactions for longer than the timeout in all.
        let client = pgdyno.connect(APP_DB).await;
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(1500) {
            client
                .batch_execute("BEGIN; SELECT 1; COMMIT")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // One transaction, a statement every 100 ms: never idle for long.
        let mut raw = pgdyno.connect_raw(APP_DB).await;
        let msgs = raw
            .query(&format!("BEGIN; INSERT INTO {table} VALUES (1)"))
            .await;
        assert_eq!(ready_status(&msgs), 'T', "errors: {:?}", errors(&msgs));
        let started = Instant::now();
        // The error may come during a statement or between two: read each
        // reply to its ReadyForQuery, or to an ErrorResponse.
        let err = 'busy: loop {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the transaction outlived transaction_timeout"
            );
            let _ = raw.send(&Batch::new().query("SELECT 1").into_bytes()).await;
            while let Some(msg) = raw.recv().await {
                match msg.tag {
                    b'E' => break 'busy error_fields(&msg),
                    b'Z' => break,
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_error(&err, "08P01", "transaction timeout");
        let after = started.elapsed();
        assert!(
            after >= Duration::from_millis(700),
            "closed after {after:?}"
        );
        assert_eq!(count_rows(&client, &table).await, 0, "rolled back");
        direct
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
    })
    .await
}

/// With a pool of one backend (and pgdyno's `args`): kills that backend
/// while it is idle, waits `settle`, and needs the next transaction to run
/// on a live backend.
async fn next_transaction_survives_an_idle_backend_killed(args: &[&str], settle: Duration) {
    let mut all = vec!["--pool-size", "1"];
    all.extend_from_slice(args);
    let pgdyno = pgdyno(&all).await;
    let client = pgdyno.connect(APP_DB).await;
    let pid = backend_pid(&client).await;
    let killed: bool = Cluster::shared()
        .admin()
        .await
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed, "pg_terminate_backend({pid})");
    tokio::time::sleep(settle).await;

    let row = client
        .query_typed_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("the next transaction must get a live backend");
    assert_ne!(row.get::<_, i32>(0), pid);
}

#[tokio::test]
async fn server_check_query_replaces_a_backend_killed_while_idle() {
    within(
        60,
        next_transaction_survives_an_idle_backend_killed(
            &[
                "--server-check-delay",
                "0.2",
                "--server-check-query",
                "SELECT 1",
            ],
            Duration::from_millis(500),
        ),
    )
    .await
}

/// Without a check query, the reactor's word that an idle backend's
/// socket became readable (PostgreSQL's FATAL, then the close) keeps it
/// from being lent.
#[tokio::test]
async fn a_backend_killed_while_idle_is_not_lent_even_without_a_check() {
    within(
        60,
        next_transaction_survives_an_idle_backend_killed(
            &["--server-check-query", ""],
            Duration::from_millis(300),
        ),
    )
    .await
}

#[tokio::test]
async fn server_check_query_runs_only_on_a_backend_idle_past_the_delay() {
    within(60, async {
        let table = format!("lifecycle_checks_{}", std::process::id());
        let direct = Cluster::shared().direct(APP_DB).await;
        direct
            .batch_execute(&format!(
                "CREATE TABLE {table} (at timestamptz DEFAULT now())"
            ))
            .await
            .unwrap();
        // Each check leaves a row behind.
        let check = format!("INSERT INTO {table} DEFAULT VALUES");
        let pgdyno = pgdyno(&[
            "--pool-size",
            "1",
            "--server-check-delay",
            "0.5",
            "--server-check-query",
            &check,
        ])
        .await;
        let client = pgdyno.connect(APP_DB).await;
        let pid = backend_pid(&client).await;
        for _ in 0..3 {
            assert_eq!(backend_pid(&client).await, pid);
        }
        assert_eq!(
            count_rows(&direct, &table).await,
            0,
            "a backend used moments ago was checked"
        );
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(
            backend_pid(&client).await,
            pid,
            "a backend that passed its check"
        );
        assert_eq!(
            count_rows(&direct, &table).await,
            1,
            "checks of a backend idle past server_check_delay"
        );
        direct
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
    })
    .await
}

#[tokio::test]
async fn a_failed_server_check_replaces_the_backend() {
    within(60, async {
        let pgdyno = pgdyno(&[
            "--pool-size",
            "1",
            "--server-check-delay",
            "0.3",
            "--server-check-query",
            "SELECT 1/0",
        ])
        .await;
        let client = pgdyno.connect(APP_DB).await;
        let first = backend_pid(&client).await;
        assert_eq!(
            backend_pid(&client).await,
            first,
            "checked within the delay"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        let second = client
            .query_typed_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("a failed check must not reach the client")
            .get::<_, i32>(0);
        assert_ne!(second, first, "the backend that failed its check was kept");
    })
    .await
}

/// Logs in and runs `SELECT 1`; the first ErrorResponse, if any.
async fn one_query(pgdyno: &Pgdyno) -> Result<(), ErrorFields> {
    let mut raw = RawConn::connect(pgdyno.port()).await;
    raw.login(APP_USER, APP_PASSWORD, APP_DB).await?;
    raw.send(&Batch::new().query("SELECT 1").into_bytes())
        .await
        .expect("send Query");
    let mut msgs = Vec::new();
    while let Some(msg) = raw.recv().await {
        let done = msg.tag == b'Z';
        msgs.push(msg);
        if done {
            break;
        }
    }
    match errors(&msgs).into_iter().next() {
        Some(err) => Err(err),
        None if msgs.iter().any(|m| m.tag == b'D') => Ok(()),
        None => panic!("no row and no error: {}", tags(&msgs)),
    }
}

#[tokio::test]
async fn server_login_retry_answers_with_the_cached_error_then_tries_again() {
    within(120, async {
        let cluster = Cluster::dedicated();
        cluster.stop();
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &cluster.url(APP_DB),
            "--log-format",
            "json",
            "--server-login-retry",
            "2",
            "--server-connect-timeout",
            "2",
        ])
        .await;
        let connect_failures = || {
            json_log(&pgdyno)
                .iter()
                .filter(|f| f.get("event").map(String::as_str) == Some("backend_connect_failed"))
                .count()
        };

        let first = one_query(&pgdyno)
            .await
            .expect_err("a query with PostgreSQL down");
        let failed_at = Instant::now();
        assert!(
            !first.message.contains("server_login_retry"),
            "the first client must get the real error: {first:?}"
        );
        let second = one_query(&pgdyno)
            .await
            .expect_err("a query with PostgreSQL down");
        assert!(
            failed_at.elapsed() < Duration::from_secs(1),
            "the cached error took {:?}",
            failed_at.elapsed()
        );
        assert_error(
            &second,
            "08P01",
            "server login has been failing, cached error: ",
        );
        assert!(
            second.message.contains("(server_login_retry)")
                && second.message.contains(&first.message),
            "cached error {:?} for real error {:?}",
            second.message,
            first.message
        );
        assert_eq!(connect_failures(), 1, "the second client tried to connect");

        // Once the retry time has passed, the next client tries again.
        cluster.start();
        tokio::time::sleep(
            (failed_at + Duration::from_millis(2300)).saturating_duration_since(Instant::now()),
        )
        .await;
        one_query(&pgdyno)
            .await
            .expect("after server_login_retry, a new login attempt");
    })
    .await
}
