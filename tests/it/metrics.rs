//! The Prometheus endpoint and the health endpoints on `--metrics-listen`:
//! exact counters after a known workload (a transaction at each
//! ReadyForQuery reporting idle, a query at each ReadyForQuery answering a
//! client request), errors by SQLSTATE class, the saturation gauges while
//! clients wait for a full pool, histograms that grow, every documented
//! metric name, `/health`, and `/ready` turning 503 on SIGINT's drain or when
//! PostgreSQL cannot be reached.
//!
//! `endpoint` reads the endpoint with a hand-written HTTP/1.1 GET and
//! parses the text exposition.

mod endpoint;

use crate::harness::*;
use endpoint::{http_get, http_get_ok, scrape, scrape_until};
use futures_util::future::join_all;
use std::time::{Duration, Instant};

/// The labels of the one pool these tests use.
const POOL: &[(&str, &str)] = &[("database", APP_DB), ("user", APP_USER)];

/// A pgdyno with its metrics endpoint on a port of its own.
struct Metered {
    pgdyno: Pgdyno,
    metrics_port: u16,
}

async fn metered(upstream: &str, extra: &[&str]) -> Metered {
    let metrics_port = free_port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let mut args = vec!["--upstream", upstream, "--metrics-listen", &metrics_listen];
    args.extend_from_slice(extra);
    let pgdyno = Pgdyno::start(&args).await;
    Metered {
        pgdyno,
        metrics_port,
    }
}

async fn simple(client: &tokio_postgres::Client, sql: &str) {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e} ({:?})", e.as_db_error()));
}

#[tokio::test]
async fn counters_are_exact_after_a_known_workload() {
    within(60, async {
        let m = metered(&Cluster::shared().url(APP_DB), &[]).await;
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(m.pgdyno.connect(APP_DB).await);
        }
        let wrong = connect(&m.pgdyno.config_as(APP_DB, APP_USER, "not-the-secret")).await;
        assert!(wrong.is_err(), "a wrong password must be refused");
        let before = scrape(m.metrics_port).await;

        // 4 autocommit queries: 4 transactions, 4 queries.
        for i in 0..4 {
            simple(&clients[i % 3], "SELECT 1").await;
        }
        // 2 explicit transactions, each BEGIN + 3 statements + COMMIT sent
        // as separate simple queries: 2 transactions, 2 * 5 queries.
        for client in &clients[..2] {
            for sql in ["BEGIN", "SELECT 1", "SELECT 2", "SELECT 3", "COMMIT"] {
                simple(client, sql).await;
            }
        }
        let (xacts, queries) = (6.0, 14.0);

        let base = |name: &str| before.count(name, POOL);
        scrape_until(m.metrics_port, |s| {
            s.count("pgdyno_transactions_total", POOL) - base("pgdyno_transactions_total") >= xacts
                && s.count("pgdyno_queries_total", POOL) - base("pgdyno_queries_total") >= queries
        })
        .await;
        // A moment more, so that a count past the expected one shows too.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = scrape(m.metrics_port).await;
        let delta = |name: &str| after.count(name, POOL) - base(name);

        // Every exact expectation at once, so a failure shows them all.
        let exact = [
            (
                "pgdyno_transactions_total",
                delta("pgdyno_transactions_total"),
                xacts,
            ),
            (
                "pgdyno_queries_total",
                delta("pgdyno_queries_total"),
                queries,
            ),
            // Three clients logged in; the wrong password is no login.
            (
                "pgdyno_client_logins_total",
                after.pool("pgdyno_client_logins_total"),
                3.0,
            ),
            (
                "pgdyno_login_failures_total",
                after.must("pgdyno_login_failures_total", &[]),
                1.0,
            ),
            (
                "pgdyno_backend_connect_failures_total",
                after.pool("pgdyno_backend_connect_failures_total"),
                0.0,
            ),
            // Each duration is recorded once per counted event.
            (
                "pgdyno_transaction_duration_seconds_count",
                delta("pgdyno_transaction_duration_seconds_count"),
                xacts,
            ),
            (
                "pgdyno_query_duration_seconds_count",
                delta("pgdyno_query_duration_seconds_count"),
                queries,
            ),
            // In transaction mode each transaction waits for a backend once.
            (
                "pgdyno_client_wait_seconds_count",
                delta("pgdyno_client_wait_seconds_count"),
                xacts,
            ),
        ];
        let wrong: Vec<String> = exact
            .iter()
            .filter(|(_, got, want)| got != want)
            .map(|(name, got, want)| format!("{name}: expected +{want}, got +{got}"))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}\n{}", after.text);
        assert!(delta("pgdyno_received_bytes_total") > 0.0, "bytes received");
        assert!(delta("pgdyno_sent_bytes_total") > 0.0, "bytes sent");
        assert!(
            after.pool("pgdyno_backend_connects_total") >= 1.0,
            "a backend was opened"
        );
        assert!(
            after.pool("pgdyno_backend_connect_seconds_count") >= 1.0,
            "backend connect durations recorded"
        );
        assert!(
            delta("pgdyno_query_duration_seconds_sum") > 0.0,
            "query durations add up to something"
        );
        assert_eq!(after.pool("pgdyno_clients_active"), 3.0);
        assert_eq!(after.pool("pgdyno_clients_waiting"), 0.0);
        assert_eq!(after.must("pgdyno_clients", &[]), 3.0);
    })
    .await
}

#[tokio::test]
async fn client_errors_are_counted_by_sqlstate_class() {
    within(60, async {
        let m = metered(&Cluster::shared().url(APP_DB), &[]).await;
        let client = m.pgdyno.connect(APP_DB).await;
        let class = |c: &'static str| [POOL[0], POOL[1], ("sqlstate_class", c)];
        let before = scrape(m.metrics_port).await;
        let (data_before, syntax_before) = (
            before.count("pgdyno_client_errors_total", &class("22")),
            before.count("pgdyno_client_errors_total", &class("42")),
        );

        let err = client
            .simple_query("SELECT 1/0")
            .await
            .expect_err("division by zero");
        assert_eq!(sqlstate(&err), Some("22012"), "{err}");
        let err = client
            .simple_query("SELEKT 1")
            .await
            .expect_err("syntax error");
        assert_eq!(sqlstate(&err), Some("42601"), "{err}");
        simple(&client, "SELECT 1").await;

        let after = scrape_until(m.metrics_port, |s| {
            s.count("pgdyno_client_errors_total", &class("42")) > syntax_before
        })
        .await;
        assert_eq!(
            after.count("pgdyno_client_errors_total", &class("22")) - data_before,
            1.0,
            "one division by zero:\n{}",
            after.text
        );
        assert_eq!(
            after.count("pgdyno_client_errors_total", &class("42")) - syntax_before,
            1.0,
            "one syntax error:\n{}",
            after.text
        );
        // A failed statement still ends in ReadyForQuery (idle): counted.
        assert_eq!(after.pool("pgdyno_transactions_total"), 3.0);
        assert_eq!(after.pool("pgdyno_queries_total"), 3.0);
    })
    .await
}

#[tokio::test]
async fn every_documented_metric_is_exposed() {
    within(60, async {
        let m = metered(&Cluster::shared().url(APP_DB), &["--max-client-conn", "1"]).await;
        let client = m.pgdyno.connect(APP_DB).await;
        simple(&client, "SELECT 1").await;
        client
            .simple_query("SELECT 1/0")
            .await
            .expect_err("division by zero");
        // The second client is refused by pgdyno itself: a pooler error.
        let refused = connect(&m.pgdyno.config(APP_DB)).await;
        assert!(
            refused.is_err(),
            "max_client_conn 1 must refuse a second client"
        );

        let s = scrape_until(m.metrics_port, |s| {
            s.count("pgdyno_max_client_conn_refusals_total", &[]) >= 1.0
        })
        .await;
        let mut missing = Vec::new();
        for name in [
            "pgdyno_clients_active",
            "pgdyno_clients_waiting",
            "pgdyno_backends_active",
            "pgdyno_backends_idle",
            "pgdyno_backends_used",
            "pgdyno_backends_tested",
            "pgdyno_backends_login",
            "pgdyno_pool_size",
            "pgdyno_pool_saturation",
            "pgdyno_longest_wait_seconds",
            "pgdyno_transactions_total",
            "pgdyno_queries_total",
            "pgdyno_received_bytes_total",
            "pgdyno_sent_bytes_total",
            "pgdyno_client_logins_total",
            "pgdyno_backend_connects_total",
            "pgdyno_backend_connect_failures_total",
            "pgdyno_client_parses_total",
            "pgdyno_backend_parses_total",
            "pgdyno_binds_total",
            "pgdyno_query_wait_timeouts_total",
            "pgdyno_client_errors_total",
            "pgdyno_clients",
            "pgdyno_max_client_conn",
            "pgdyno_login_failures_total",
            "pgdyno_max_client_conn_refusals_total",
            "pgdyno_pooler_errors_total",
        ] {
            if !s.has_name(name) {
                missing.push(name.to_owned());
            }
        }
        for histogram in [
            "pgdyno_client_wait_seconds",
            "pgdyno_transaction_duration_seconds",
            "pgdyno_query_duration_seconds",
            "pgdyno_backend_connect_seconds",
        ] {
            for part in ["_bucket", "_sum", "_count"] {
                let name = format!("{histogram}{part}");
                if !s.has_name(&name) {
                    missing.push(name);
                }
            }
        }
        assert!(missing.is_empty(), "missing {missing:?} in:\n{}", s.text);

        assert_eq!(s.must("pgdyno_max_client_conn", &[]), 1.0);
        assert_eq!(s.must("pgdyno_clients", &[]), 1.0);
        assert_eq!(s.must("pgdyno_max_client_conn_refusals_total", &[]), 1.0);
        assert_eq!(s.pool("pgdyno_pool_size"), 20.0, "default_pool_size");
        let pooler_errors: f64 = s
            .samples
            .iter()
            .filter(|x| x.name == "pgdyno_pooler_errors_total")
            .map(|x| x.value)
            .sum();
        assert_eq!(
            pooler_errors, 1.0,
            "the refusal is a pooler error:\n{}",
            s.text
        );
        // Histogram buckets are cumulative and end in +Inf == _count.
        let inf = s.must(
            "pgdyno_query_duration_seconds_bucket",
            &[POOL[0], POOL[1], ("le", "+Inf")],
        );
        assert_eq!(inf, s.pool("pgdyno_query_duration_seconds_count"));
    })
    .await
}

#[tokio::test]
async fn saturation_shows_while_clients_wait_and_clears_after() {
    within(60, async {
        let m = metered(&Cluster::shared().url(APP_DB), &["--pool-size", "2"]).await;
        let mut clients = Vec::new();
        for _ in 0..6 {
            clients.push(m.pgdyno.connect(APP_DB).await);
        }
        let before = scrape(m.metrics_port).await;
        assert_eq!(before.pool("pgdyno_pool_size"), 2.0);
        assert_eq!(before.pool("pgdyno_clients_waiting"), 0.0);
        let waits_before = before.pool("pgdyno_client_wait_seconds_count");

        // Six 1.5 s sleeps on two backends: three rounds, 4.5 s in all.
        let started = Instant::now();
        let load = tokio::spawn(async move {
            let runs = clients
                .iter()
                .map(|c| c.simple_query("SELECT pg_sleep(1.5)"));
            let results = join_all(runs).await;
            for r in results {
                r.expect("every sleeping client gets its answer");
            }
            clients
        });

        // During the first round: four clients wait, both backends busy
        // (the second one may take a few milliseconds to log in).
        let during = scrape_until(m.metrics_port, |s| {
            s.count("pgdyno_clients_waiting", POOL) >= 4.0
                && s.count("pgdyno_backends_active", POOL) >= 2.0
                && s.count("pgdyno_longest_wait_seconds", POOL) > 0.0
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_millis(1400),
            "the scrape came too late to be in the first round"
        );
        assert_eq!(
            during.pool("pgdyno_clients_waiting"),
            4.0,
            "{}",
            during.text
        );
        assert_eq!(during.pool("pgdyno_clients_active"), 2.0, "{}", during.text);
        assert_eq!(
            during.pool("pgdyno_backends_active"),
            2.0,
            "{}",
            during.text
        );
        assert_eq!(
            during.pool("pgdyno_pool_saturation"),
            1.0,
            "{}",
            during.text
        );
        assert!(
            during.pool("pgdyno_longest_wait_seconds") > 0.0,
            "{}",
            during.text
        );

        let clients = tokio::time::timeout(Duration::from_secs(20), load)
            .await
            .expect("the sleeping clients finished within 20 s")
            .expect("the load task");
        assert!(
            started.elapsed() >= Duration::from_millis(4400),
            "six 1.5 s sleeps on two backends took only {:?}",
            started.elapsed()
        );
        let after = scrape_until(m.metrics_port, |s| {
            s.count("pgdyno_backends_active", POOL) == 0.0
        })
        .await;
        assert_eq!(after.pool("pgdyno_clients_waiting"), 0.0, "{}", after.text);
        assert_eq!(after.pool("pgdyno_clients_active"), 6.0, "{}", after.text);
        assert_eq!(after.pool("pgdyno_pool_saturation"), 0.0, "{}", after.text);
        assert_eq!(
            after.pool("pgdyno_longest_wait_seconds"),
            0.0,
            "{}",
            after.text
        );
        assert_eq!(after.pool("pgdyno_backends_idle"), 2.0, "{}", after.text);
        assert_eq!(
            after.pool("pgdyno_client_wait_seconds_count") - waits_before,
            6.0,
            "six waits recorded"
        );
        // The four that waited waited a round or two: the sum shows it.
        assert!(
            after.pool("pgdyno_client_wait_seconds_sum") >= 4.0 * 1.4,
            "client wait seconds sum {}",
            after.pool("pgdyno_client_wait_seconds_sum")
        );
        drop(clients);
    })
    .await
}

/// The pid of the pgdyno child of this test process that listens on
/// `port` (the harness keeps its `Child` to itself).
fn pgdyno_pid(port: u16) -> u32 {
    let listen = format!("127.0.0.1:{port}");
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let listens = args
            .windows(2)
            .any(|w| w[0] == b"--listen" && w[1] == listen.as_bytes());
        if listens && parent_of(pid) == Some(me) {
            return pid;
        }
    }
    panic!("no pgdyno child of ours listens on {listen}");
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces, so skip past ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn sigint(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -INT {pid} failed");
}

#[tokio::test]
async fn health_and_ready_then_not_ready_once_sigint_drains() {
    within(60, async {
        let mut m = metered(
            &Cluster::shared().url(APP_DB),
            &["--shutdown-timeout", "20"],
        )
        .await;
        let health = http_get_ok(m.metrics_port, "/health").await;
        assert_eq!(health.status, 200, "/health: {}", health.body);
        assert_eq!(health.body.trim(), "ok");
        let client = m.pgdyno.connect(APP_DB).await;
        simple(&client, "SELECT 1").await;
        let ready = http_get_ok(m.metrics_port, "/ready").await;
        assert_eq!(ready.status, 200, "/ready while serving: {}", ready.body);
        let missing = http_get_ok(m.metrics_port, "/nope").await;
        assert_eq!(missing.status, 404);

        // A transaction under way keeps pgdyno draining, not gone.
        simple(&client, "BEGIN").await;
        simple(&client, "SELECT 1").await;
        sigint(pgdyno_pid(m.pgdyno.port()));
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            let ready = http_get(m.metrics_port, "/ready").await;
            match ready {
                Ok(r) if r.status == 503 => break 503,
                Ok(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(r) => panic!("/ready still {} 5 s after SIGINT: {}", r.status, r.body),
                Err(e) => panic!("/ready unreachable while a transaction drains: {e}"),
            }
        };
        assert_eq!(status, 503);
        assert!(m.pgdyno.is_running(), "pgdyno left mid-transaction");
        let health = http_get_ok(m.metrics_port, "/health").await;
        assert_eq!(health.status, 200, "/health stays 200 while draining");

        // The transaction finishes; then pgdyno closes the client and exits.
        simple(&client, "COMMIT").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while m.pgdyno.is_running() {
            assert!(
                Instant::now() < deadline,
                "pgdyno still running 10 s after its last transaction ended"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            http_get(m.metrics_port, "/ready").await.is_err(),
            "the endpoint is gone with the process"
        );
    })
    .await
}

#[tokio::test]
async fn not_ready_while_postgresql_is_unreachable() {
    within(60, async {
        // Nothing listens there: connecting is refused at once.
        let closed = free_port();
        let upstream = format!("postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{closed}/{APP_DB}");
        let m = metered(&upstream, &["--server-connect-timeout", "2"]).await;
        let ready = http_get_ok(m.metrics_port, "/ready").await;
        assert_eq!(
            ready.status, 200,
            "ready before any backend was tried: {}",
            ready.body
        );

        let err = connect(&m.pgdyno.config(APP_DB)).await;
        let err = match err {
            Ok(client) => client
                .simple_query("SELECT 1")
                .await
                .expect_err("no backend can be had"),
            Err(e) => e,
        };
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("no ErrorResponse when PostgreSQL is unreachable: {err}"));
        assert_ne!(
            db.code().code(),
            "28P01",
            "the password was right: {}",
            db.message()
        );

        let ready = http_get_ok(m.metrics_port, "/ready").await;
        assert_eq!(
            ready.status, 503,
            "/ready after a failed backend connect: {}",
            ready.body
        );
        let health = http_get_ok(m.metrics_port, "/health").await;
        assert_eq!(health.status, 200, "alive, only not ready");
        let s = scrape(m.metrics_port).await;
        assert!(
            s.pool("pgdyno_backend_connect_failures_total") >= 1.0,
            "{}",
            s.text
        );
        assert_eq!(s.pool("pgdyno_backend_connects_total"), 0.0);
    })
    .await
}
