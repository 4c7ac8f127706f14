//! The network between pgdyno and PostgreSQL fails, through a
//! `FaultRelay` pgdyno's upstream URL points at (PostgreSQL itself, the
//! shared cluster, stays intact). A backend connection cut (reset or FIN),
//! stalled, or truncated mid-result: the client it served gets an error,
//! never a partial result presented as complete, and the backend is
//! discarded; backends cut while idle are replaced without anyone seeing
//! an error; a relay that refuses connections is a clear, quick error.

use super::{backend_pid, closes, code_and_message, CONNECTION_FAILURE};
use crate::harness::*;
use futures_util::{pin_mut, StreamExt};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, SimpleQueryMessage};

/// 1,000-byte rows, far more than every socket buffer on the way holds.
const ROWS: usize = 100_000;
const BIG_RESULT: &str = "SELECT repeat('x', 1000) FROM generate_series(1, 100000)";

/// What a client read of `BIG_RESULT` before its stream ended.
struct Read {
    rows: usize,
    /// Rows whose value was not 1,000 `x`s, and the end of the first.
    damaged: usize,
    damage: Option<String>,
    /// The CommandComplete row count, if the result was reported complete.
    complete: Option<u64>,
    error: Option<tokio_postgres::Error>,
    took: Duration,
}

/// Reads `BIG_RESULT` through `client`, calling `fault` once the first row
/// has arrived (the rest of the result is then on its way).
async fn read_big_result(client: &Client, fault: impl std::future::Future<Output = ()>) -> Read {
    let started = Instant::now();
    let mut read = Read {
        rows: 0,
        damaged: 0,
        damage: None,
        complete: None,
        error: None,
        took: Duration::ZERO,
    };
    let stream = match client.simple_query_raw(BIG_RESULT).await {
        Ok(stream) => stream,
        Err(e) => {
            read.error = Some(e);
            return read;
        }
    };
    pin_mut!(stream);
    let mut fault = Some(Box::pin(fault));
    while let Some(message) = stream.next().await {
        match message {
            Ok(SimpleQueryMessage::Row(row)) => {
                read.rows += 1;
                let intact = matches!(row.try_get(0), Ok(Some(v)) if v.len() == 1000 && v.bytes().all(|b| b == b'x'));
                if !intact {
                    read.damaged += 1;
                    let value = row.try_get(0).ok().flatten().unwrap_or_default();
                    let tail = &value.as_bytes()[value.len().saturating_sub(24)..];
                    read.damage.get_or_insert(tail.escape_ascii().to_string());
                }
                if let Some(fault) = fault.take() {
                    fault.await;
                }
            }
            Ok(SimpleQueryMessage::CommandComplete(n)) => read.complete = Some(n),
            Ok(_) => {}
            Err(e) => {
                read.error = Some(e);
                break;
            }
        }
    }
    read.took = started.elapsed();
    read
}

/// The fault's victim: an error, and no CommandComplete. (Whether a row
/// that arrived is intact is asserted where the cut falls at a known
/// place: `a_result_truncated_inside_a_row_never_delivers_that_row`.)
#[track_caller]
fn assert_failed(read: &Read, what: &str) {
    assert!(
        read.complete.is_none(),
        "{what}: a result of {} rows was reported complete ({:?})",
        read.rows,
        read.complete
    );
    assert!(
        read.error.is_some(),
        "{what}: the result ended without an error"
    );
    assert!(read.rows < ROWS, "{what}: all {} rows arrived", read.rows);
    if let Some((code, message)) = read.error.as_ref().map(code_and_message) {
        assert!(
            code.is_empty() || CONNECTION_FAILURE.contains(&code.as_str()) || code == "08P01",
            "{what}: {code} {message}"
        );
    }
}

/// pgdyno through `relay`, one backend at most unless `extra` says.
async fn pgdyno_through(relay: &FaultRelay, extra: &[&str]) -> Pgdyno {
    let url = relay.url(APP_DB);
    let mut args = vec![
        "--upstream",
        url.as_str(),
        "--pool-size",
        "1",
        "--server-login-retry",
        "0.1",
    ];
    args.extend_from_slice(extra);
    Pgdyno::start(&args).await
}

/// The faulty backend was discarded: `client`'s next query works at once,
/// on a new relayed connection to a new PostgreSQL process, and the faulty
/// connection is closed.
async fn assert_backend_replaced(client: &Client, relay: &FaultRelay, old_pid: i32) {
    let accepted = relay.accepted();
    let pid = backend_pid(client).await;
    assert_ne!(pid, old_pid, "the faulty backend was lent again");
    assert_eq!(relay.accepted(), accepted + 1, "no new backend connection");
    let deadline = Instant::now() + Duration::from_secs(5);
    while relay.live() != 1 {
        assert!(
            Instant::now() < deadline,
            "{} backend connections open, 1 expected",
            relay.live()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cut_mid_result(how: Cut) {
    let relay = FaultRelay::start(Cluster::shared().port()).await;
    let pgdyno = pgdyno_through(&relay, &[]).await;
    let bystander = pgdyno.connect(APP_DB).await;
    let victim = pgdyno.connect(APP_DB).await;
    let pid = backend_pid(&victim).await;
    assert_eq!(relay.accepted(), 1);

    let read = read_big_result(&victim, relay.cut_all(how)).await;
    assert_failed(&read, &format!("cut ({how:?})"));
    let (code, message) = code_and_message(read.error.as_ref().unwrap());
    eprintln!(
        "cut ({how:?}) after {} rows ({} damaged): {code:?} {message}",
        read.rows, read.damaged
    );
    assert!(closes(&victim).await, "the victim's connection stayed open");
    assert_backend_replaced(&bystander, &relay, pid).await;
    drop(pgdyno);
}

#[tokio::test]
async fn a_reset_mid_result_fails_the_client_and_discards_the_backend() {
    within(30, cut_mid_result(Cut::Reset)).await
}

#[tokio::test]
async fn a_fin_mid_result_fails_the_client_and_discards_the_backend() {
    within(30, cut_mid_result(Cut::Fin)).await
}

#[tokio::test]
async fn a_stalled_result_ends_with_query_timeout() {
    within(30, async {
        let relay = FaultRelay::start(Cluster::shared().port()).await;
        let pgdyno = pgdyno_through(&relay, &["--query-timeout", "2"]).await;
        let bystander = pgdyno.connect(APP_DB).await;
        let victim = pgdyno.connect(APP_DB).await;
        let pid = backend_pid(&victim).await;

        let read = read_big_result(&victim, async { relay.stall(Flow::Both) }).await;
        assert_failed(&read, "stall");
        assert!(
            read.took >= Duration::from_millis(1900) && read.took < Duration::from_secs(5),
            "query_timeout (2 s) fired after {:?}",
            read.took
        );
        // The client is told 08P01 query_timeout when its stream is between
        // messages; stalled inside a row, a close is all it can get.
        let (code, message) = code_and_message(read.error.as_ref().unwrap());
        assert!(
            (code.as_str(), message.as_str()) == ("08P01", "query_timeout") || code.is_empty(),
            "{code} {message}"
        );
        assert!(
            pgdyno
                .log()
                .contains("sqlstate=\"08P01\" error=query_timeout"),
            "query_timeout not logged"
        );
        assert!(closes(&victim).await, "the victim's connection stayed open");

        relay.resume();
        assert_backend_replaced(&bystander, &relay, pid).await;
    })
    .await
}

#[tokio::test]
async fn a_stalled_login_ends_with_server_connect_timeout_then_recovers() {
    within(30, async {
        let relay = FaultRelay::start(Cluster::shared().port()).await;
        let pgdyno = pgdyno_through(&relay, &["--server-connect-timeout", "1"]).await;
        relay.stall(Flow::Both);
        // The pool's first login happens during the client's: it fails.
        let started = Instant::now();
        let err = connect(&pgdyno.config(APP_DB))
            .await
            .expect_err("a login went through a stalled relay");
        let took = started.elapsed();
        let (code, message) = code_and_message(&err);
        assert_eq!(code, "08006", "{message}");
        assert!(message.contains("server_connect_timeout"), "{message}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "server_connect_timeout (1 s) fired after {took:?}"
        );

        relay.resume();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let client = pgdyno.connect(APP_DB).await;
        backend_pid(&client).await;
        assert_eq!(relay.accepted(), 2);
    })
    .await
}

/// Bytes of BIG_RESULT's reply before the end of DataRow `n`: the
/// RowDescription (32 bytes), then 1,011 bytes a row.
fn end_of_row(n: usize) -> usize {
    32 + n * 1011
}

/// A warmed-up victim, its backend's pid, a bystander, then the relay
/// truncates the result after `bytes` bytes and closes with a FIN.
async fn truncate_mid_result(bytes: usize) -> Read {
    let relay = FaultRelay::start(Cluster::shared().port()).await;
    let pgdyno = pgdyno_through(&relay, &[]).await;
    let bystander = pgdyno.connect(APP_DB).await;
    let victim = pgdyno.connect(APP_DB).await;
    let pid = backend_pid(&victim).await;

    relay.truncate(bytes, Cut::Fin);
    let read = read_big_result(&victim, async {}).await;
    assert!(!relay.truncate_armed());
    assert!(closes(&victim).await, "the victim's connection stayed open");
    assert_backend_replaced(&bystander, &relay, pid).await;
    drop(pgdyno);
    read
}

#[tokio::test]
async fn a_result_truncated_between_rows_ends_with_08006() {
    within(30, async {
        let read = truncate_mid_result(end_of_row(500)).await;
        assert_failed(&read, "truncated after row 500");
        assert_eq!(read.rows, 500, "rows before the truncation");
        let (code, message) = code_and_message(read.error.as_ref().unwrap());
        assert_eq!(code, "08006", "{message}");
    })
    .await
}

#[tokio::test]
async fn a_result_truncated_inside_a_row_never_delivers_that_row() {
    within(30, async {
        // Row 501 lacks its last 10 bytes.
        let read = truncate_mid_result(end_of_row(501) - 10).await;
        let error = read.error.as_ref().map(code_and_message);
        eprintln!("truncated inside row 501: {} rows, {error:?}", read.rows);
        assert_failed(&read, "truncated inside row 501");
        assert_eq!(
            read.damaged, 0,
            "rows with foreign bytes in them, the first ending in {:?}",
            read.damage
        );
        assert_eq!(read.rows, 500, "rows before the truncation");
    })
    .await
}

#[tokio::test]
async fn idle_backends_cut_by_the_network_are_replaced_unseen() {
    within(30, async {
        let relay = FaultRelay::start(Cluster::shared().port()).await;
        let pgdyno = pgdyno_through(&relay, &["--pool-size", "2"]).await;
        let clients = [pgdyno.connect(APP_DB).await, pgdyno.connect(APP_DB).await];
        for how in [Cut::Reset, Cut::Fin] {
            // Two backends in use at once, then idle in the pool.
            let sleeps = clients
                .iter()
                .map(|c| c.query_typed_one("SELECT pg_backend_pid() FROM pg_sleep(0.2)", &[]));
            let before: Vec<i32> = futures_util::future::join_all(sleeps)
                .await
                .into_iter()
                .map(|r| r.expect("query before the cut").get(0))
                .collect();
            let accepted = relay.accepted();
            relay.cut_all(how).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            for client in &clients {
                let pid = client
                    .query_typed_one("SELECT pg_backend_pid()", &[])
                    .await
                    .unwrap_or_else(|e| {
                        panic!("first query after a {how:?} cut of idle backends: {e}")
                    })
                    .get::<_, i32>(0);
                assert!(!before.contains(&pid), "a cut backend was lent ({how:?})");
            }
            assert!(relay.accepted() > accepted);
        }
    })
    .await
}

#[tokio::test]
async fn refused_backend_connections_fail_logins_fast_then_recover() {
    within(30, async {
        let relay = FaultRelay::start(Cluster::shared().port()).await;
        let pgdyno = pgdyno_through(&relay, &[]).await;
        relay.refuse(true);
        let started = Instant::now();
        let err = connect(&pgdyno.config(APP_DB))
            .await
            .expect_err("a login went through a relay refusing connections");
        let (code, message) = code_and_message(&err);
        assert_eq!(code, "08006", "{message}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the refusal took {:?}",
            started.elapsed()
        );
        assert!(relay.refused() >= 1);

        relay.refuse(false);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let client = pgdyno.connect(APP_DB).await;
        backend_pid(&client).await;
    })
    .await
}
