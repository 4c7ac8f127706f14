//! Connection storms. 10,000 connects in a burst against a full pgdyno:
//! each gets max_client_conn's 53300 (none is let in), pgdyno keeps
//! serving the clients it has, goes quiet afterwards, and takes a new
//! client as soon as a slot frees. And pgdyno out of file descriptors
//! (its limit lowered with prlimit): accept fails with EMFILE, the accept
//! loop backs off instead of spinning, existing clients carry on, and new
//! ones are served once descriptors free up.

use super::{backend_pid, cpu_time};
use crate::harness::*;
use futures_util::future::join_all;
use futures_util::StreamExt;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BURST: usize = 10_000;
/// Connects in flight at once (file descriptors of this test process).
const IN_FLIGHT: usize = 100;
const MAX_CLIENT_CONN: usize = 20;

/// What one connect of the storm got.
#[derive(Debug, Default)]
struct Tally {
    /// ErrorResponse 53300.
    refused: usize,
    /// An authentication request: let in beyond max_client_conn.
    admitted: usize,
    /// Closed without a word.
    closed: usize,
    /// Another ErrorResponse (SQLSTATEs).
    other: Vec<String>,
    /// No TCP connection, or no answer within 5 s.
    failed: usize,
}

enum Knock {
    Refused,
    Admitted,
    Closed,
    Other(String),
    Failed,
}

/// Connects, sends a startup packet, and reads pgdyno's first answer.
async fn knock(port: u16) -> Knock {
    let attempt = async {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
            return Knock::Failed;
        };
        let startup = startup_packet(&[("user", APP_USER), ("database", APP_DB)]);
        if stream.write_all(&startup).await.is_err() {
            return Knock::Closed;
        }
        let mut buf = bytes::BytesMut::new();
        loop {
            if let Some(msg) = take_message(&mut buf) {
                return match msg.tag {
                    b'R' => Knock::Admitted,
                    b'E' if error_fields(&msg).code == "53300" => Knock::Refused,
                    b'E' => Knock::Other(error_fields(&msg).code),
                    other => Knock::Other(format!("message {:?}", other as char)),
                };
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Knock::Closed,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap_or(Knock::Failed)
}

/// Raises this process's open-file limit to at least `need` (as root,
/// through prlimit) when it is lower.
fn ensure_fd_limit(need: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
        .unwrap_or(0);
    if soft >= need {
        return;
    }
    let status = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={need}:{need}"))
        .status()
        .expect("run prlimit");
    assert!(
        status.success(),
        "could not raise the open-file limit to {need}"
    );
}

/// CPU pgdyno uses over `window` while nothing is asked of it.
async fn idle_cpu(pgdyno: &Pgdyno, window: Duration) -> Duration {
    let before = cpu_time(pgdyno.pid());
    tokio::time::sleep(window).await;
    cpu_time(pgdyno.pid()) - before
}

#[tokio::test]
async fn a_burst_of_10000_connects_never_passes_max_client_conn() {
    within(60, async {
        ensure_fd_limit(4096);
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &Cluster::shared().url(APP_DB),
            "--max-client-conn",
            &MAX_CLIENT_CONN.to_string(),
            "--log-disconnections",
            "false",
        ])
        .await;
        let mut held = join_all((0..MAX_CLIENT_CONN).map(|_| pgdyno.connect(APP_DB))).await;
        backend_pid(&held[0]).await;

        let started = Instant::now();
        let port = pgdyno.port();
        let knocks: Vec<Knock> = futures_util::stream::iter(0..BURST)
            .map(|_| knock(port))
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let took = started.elapsed();
        let mut tally = Tally::default();
        for k in knocks {
            match k {
                Knock::Refused => tally.refused += 1,
                Knock::Admitted => tally.admitted += 1,
                Knock::Closed => tally.closed += 1,
                Knock::Other(code) => tally.other.push(code),
                Knock::Failed => tally.failed += 1,
            }
        }
        eprintln!("{BURST} connects in {took:?}: {tally:?}");
        assert_eq!(
            tally.admitted, 0,
            "let in beyond max_client_conn: {tally:?}"
        );
        assert_eq!(tally.failed, 0, "connects that got no answer: {tally:?}");
        assert!(tally.other.is_empty(), "{tally:?}");
        assert!(
            tally.refused >= BURST * 9 / 10,
            "most connects should hear 53300: {tally:?}"
        );

        // The storm has passed: pgdyno is quiet, its clients still work.
        let cpu = idle_cpu(&pgdyno, Duration::from_secs(1)).await;
        assert!(
            cpu < Duration::from_millis(200),
            "{cpu:?} of CPU in 1 s of quiet"
        );
        for client in &held {
            client
                .simple_query("SELECT 1")
                .await
                .expect("a held client");
        }
        // A freed slot takes the next client.
        drop(held.pop());
        let deadline = Instant::now() + Duration::from_secs(5);
        let client = loop {
            match connect(&pgdyno.config(APP_DB)).await {
                Ok(client) => break client,
                Err(e) => assert!(Instant::now() < deadline, "no slot after the storm: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        backend_pid(&client).await;
    })
    .await
}

#[tokio::test]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_recovers() {
    within(60, async {
        let pgdyno = Pgdyno::start(&["--upstream", &Cluster::shared().url(APP_DB)]).await;
        let before = pgdyno.connect(APP_DB).await;
        let pid = backend_pid(&before).await;
        // Room for a handful of sockets more, no more.
        let open = std::fs::read_dir(format!("/proc/{}/fd", pgdyno.pid()))
            .expect("list pgdyno's fds")
            .count();
        let limit = open + 8;
        let status = Command::new("prlimit")
            .arg(format!("--pid={}", pgdyno.pid()))
            .arg(format!("--nofile={limit}:{limit}"))
            .status()
            .expect("run prlimit");
        assert!(status.success(), "prlimit on pgdyno failed");

        // Far more connections than that: the kernel queues them, pgdyno
        // accepts a few, then accept fails with EMFILE.
        // (pgdyno's listen backlog is 128: past it, connects hang.)
        let mut storm = Vec::new();
        for _ in 0..100 {
            let connecting = TcpStream::connect(("127.0.0.1", pgdyno.port()));
            match tokio::time::timeout(Duration::from_secs(2), connecting).await {
                Ok(stream) => storm.push(stream.expect("TCP connect to pgdyno")),
                Err(_) => panic!("a TCP connect to pgdyno hung"),
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pgdyno.log().contains("accept failed") {
            assert!(Instant::now() < deadline, "no accept failure logged");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let lines_before = pgdyno.log().matches("accept failed").count();
        let cpu = idle_cpu(&pgdyno, Duration::from_secs(2)).await;
        let lines = pgdyno.log().matches("accept failed").count() - lines_before;
        eprintln!("out of fds: {cpu:?} of CPU and {lines} accept failures logged in 2 s");
        assert!(
            cpu < Duration::from_millis(500),
            "{cpu:?} of CPU in 2 s: spinning?"
        );
        // Each try is 100 ms apart, and logged at most once a second with
        // the count of those not logged (about 10).
        assert!(
            (1..=3).contains(&lines),
            "{lines} accept failures logged in 2 s: a log flood"
        );
        let unlogged: u64 = pgdyno
            .log()
            .lines()
            .filter(|l| l.contains("accept failed"))
            .filter_map(|l| {
                l.split("unlogged=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .max()
            .unwrap_or(0);
        assert!(
            (3..=12).contains(&unlogged),
            "{unlogged} tries between two logged accept failures: no back-off, or none"
        );
        // A client that has its connection carries on (its backend is open).
        assert_eq!(backend_pid(&before).await, pid);

        // The storm passes: descriptors free up and service resumes.
        drop(storm);
        let deadline = Instant::now() + Duration::from_secs(15);
        let client = loop {
            match connect(&pgdyno.config(APP_DB)).await {
                Ok(client) => break client,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "no new client 15 s after the storm: {e}\n{}",
                    pgdyno.log()
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        client
            .simple_query("SELECT 1")
            .await
            .expect("a query after the storm");
    })
    .await
}
