//! PgBouncer's behaviour switches, each against its default:
//! `server_round_robin` lends backends in turn, `server_reset_query_always`
//! wipes session state after every transaction (and the client's own
//! settings and prepared statements still work), `application_name_add_host`
//! names the client's address, `log_pooler_errors` and `log_stats` silence
//! their log lines, `connect_query` prepares each new backend, and
//! `server_fast_close` ends a session-mode client's marked backend (and the
//! client) after its transaction, or at once if it is between transactions.

use super::{backend_pid, pgdyno};
use crate::harness::*;
use std::collections::HashSet;
use std::time::Duration;
use tokio_postgres::Client;

/// Opens `n` backends (n clients inside a transaction at once), then has
/// one client run six transactions one after another: the backends it got.
async fn six_in_a_row(pgdyno: &Pgdyno, n: usize) -> Vec<i32> {
    let mut holders = Vec::new();
    for _ in 0..n {
        let client = pgdyno.connect(APP_DB).await;
        client.batch_execute("BEGIN; SELECT 1").await.unwrap();
        holders.push(client);
    }
    for client in &holders {
        client.batch_execute("COMMIT").await.unwrap();
    }
    let mut pids = Vec::new();
    for _ in 0..6 {
        pids.push(backend_pid(&holders[0]).await);
    }
    pids
}

#[tokio::test]
async fn server_round_robin_lends_backends_in_turn() {
    within(60, async {
        let rr = pgdyno(&["--pool-size", "3", "--server-round-robin", "true"]).await;
        let pids = six_in_a_row(&rr, 3).await;
        assert_eq!(pids.iter().collect::<HashSet<_>>().len(), 3, "{pids:?}");
        assert_eq!(pids[..3], pids[3..], "each in turn: {pids:?}");

        // By default the most recently used (here: the client's last) again.
        let lifo = pgdyno(&["--pool-size", "3"]).await;
        let pids = six_in_a_row(&lifo, 3).await;
        assert!(pids.iter().all(|&p| p == pids[0]), "{pids:?}");
    })
    .await
}

/// Whether the backend serving `client`'s next transaction has a temporary
/// table `t` in its session.
async fn temp_table_left(client: &Client) -> bool {
    client
        .query_one("SELECT to_regclass('pg_temp.t') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn server_reset_query_always_leaves_no_session_state_behind() {
    within(60, async {
        for (always, left) in [("false", true), ("true", false)] {
            let pgdyno = pgdyno(&["--pool-size", "1", "--server-reset-query-always", always]).await;
            let a = pgdyno.connect(APP_DB).await;
            let b = pgdyno.connect(APP_DB).await;
            a.batch_execute("CREATE TEMP TABLE t (x int)")
                .await
                .unwrap();
            assert_eq!(
                temp_table_left(&b).await,
                left,
                "server_reset_query_always = {always}"
            );

            // The client's own session carries on: its settings and its
            // prepared statements, across resets of the one backend.
            a.batch_execute("SET TimeZone = 'Asia/Tokyo'")
                .await
                .unwrap();
            let statement = a.prepare("SELECT $1::int + 1").await.unwrap();
            for i in 0..3 {
                let row = a.query_one(&statement, &[&i]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), i + 1);
                let tz: String = a.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
                assert_eq!(tz, "Asia/Tokyo");
                b.batch_execute("SELECT 1").await.unwrap();
            }
        }
    })
    .await
}

#[tokio::test]
async fn application_name_add_host_names_the_client_address() {
    within(60, async {
        let pgdyno = pgdyno(&["--application-name-add-host", "true"]).await;
        // The harness logs in with application_name "pgdyno-it".
        let client = pgdyno.connect(APP_DB).await;
        let name: String = client
            .query_one("SELECT current_setting('application_name')", &[])
            .await
            .unwrap()
            .get(0);
        let port = name
            .strip_prefix("pgdyno-it - 127.0.0.1:")
            .unwrap_or_else(|| panic!("application_name {name:?}"));
        assert!(port.parse::<u16>().is_ok(), "{name:?}");

        // None given: "app".
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(pgdyno.port())
            .user(APP_USER)
            .password(APP_PASSWORD)
            .dbname(APP_DB);
        let unnamed = connect(&config).await.unwrap();
        let name: String = unnamed
            .query_one("SHOW application_name", &[])
            .await
            .unwrap()
            .get(0);
        assert!(name.starts_with("app - 127.0.0.1:"), "{name:?}");

        // Off (the default): as given.
        let plain = pgdyno_default_name().await;
        assert_eq!(plain, "pgdyno-it");
    })
    .await
}

async fn pgdyno_default_name() -> String {
    let pgdyno = pgdyno(&[]).await;
    let client = pgdyno.connect(APP_DB).await;
    client
        .query_one("SHOW application_name", &[])
        .await
        .unwrap()
        .get(0)
}

/// Log lines of event `event`.
fn events(log: &str, event: &str) -> usize {
    let field = format!("\"event\":\"{event}\"");
    log.lines().filter(|l| l.contains(&field)).count()
}

/// The log of a pgdyno with `extra` flags, after a client over
/// `max_client_conn` was refused and two stats periods of traffic.
async fn log_after_refusal_and_traffic(extra: &[&str]) -> String {
    let mut args = vec!["--max-client-conn", "1", "--stats-period", "1"];
    args.extend_from_slice(extra);
    let pgdyno = pgdyno(&args).await;
    let client = pgdyno.connect(APP_DB).await;
    let refused = connect(&pgdyno.config(APP_DB)).await;
    assert_eq!(refused.err().as_ref().and_then(sqlstate), Some("53300"));
    for _ in 0..25 {
        client.batch_execute("SELECT 1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pgdyno.log()
}

#[tokio::test]
async fn log_pooler_errors_and_log_stats_silence_their_lines() {
    within(60, async {
        let on = log_after_refusal_and_traffic(&[]).await;
        assert_eq!(events(&on, "client_refused"), 1, "{on}");
        assert!(events(&on, "stats") >= 1, "{on}");

        let off = log_after_refusal_and_traffic(&[
            "--log-pooler-errors",
            "false",
            "--log-stats",
            "false",
        ])
        .await;
        assert_eq!(events(&off, "client_refused"), 0, "{off}");
        assert_eq!(events(&off, "stats"), 0, "{off}");
    })
    .await
}

async fn marker(client: &Client) -> Option<String> {
    client
        .query_one("SELECT current_setting('pgdyno.marker', true)", &[])
        .await
        .unwrap()
        .get(0)
}

/// `connect_query` runs on each new backend before a client gets it: the
/// global one, or a database's own. One that fails fails the client's
/// login (or checkout) with PostgreSQL's error, and pgdyno carries on.
#[tokio::test]
async fn connect_query_runs_on_each_new_backend() {
    within(60, async {
        let url = Cluster::shared().url(APP_DB);
        let path = scratch_dir("connect-query").join("pgdyno.toml");
        std::fs::write(
            &path,
            format!(
                "connect_query = \"SET pgdyno.marker = 'global'\"\n[databases]\n\
                 plain = \"{url}\"\n\
                 own = {{ url = \"{url}\", connect_query = \"SET pgdyno.marker = 'own'\" }}\n"
            ),
        )
        .unwrap();
        let two = Pgdyno::start(&["--config", path.to_str().unwrap()]).await;
        for (db, want) in [("plain", "global"), ("own", "own")] {
            let client = two.connect(db).await;
            for _ in 0..3 {
                assert_eq!(marker(&client).await.as_deref(), Some(want), "{db}");
            }
        }

        // The first backend is opened at the first login, for the server's
        // parameters: that login gets the error.
        let mut failing = pgdyno(&["--connect-query", "SELECT 1/0"]).await;
        let Err(err) = connect(&failing.config(APP_DB)).await else {
            panic!("a failing connect_query let a client in");
        };
        assert_eq!(sqlstate(&err), Some("22012"), "{err}");
        assert!(failing.is_running());
    })
    .await
}

/// Whether PostgreSQL still has backend `pid` (asked on `admin`, a direct
/// connection).
async fn backend_alive(admin: &Client, pid: i32) -> bool {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        > 0
}

/// Session mode: after RECONNECT a client keeps its backend to the end of
/// its session, unless `server_fast_close`: then the transaction it is in
/// finishes (and stays committed), and the backend and the client are
/// closed right after, with 08P01.
#[tokio::test]
async fn server_fast_close_ends_a_marked_session_after_its_transaction() {
    within(60, async {
        let admin = Cluster::shared().direct(APP_DB).await;
        admin
            .batch_execute("CREATE TABLE IF NOT EXISTS fast_close (fast bool)")
            .await
            .unwrap();
        for fast in ["false", "true"] {
            let pgdyno = pgdyno(&[
                "--pool-mode",
                "session",
                "--admin-users",
                APP_USER,
                "--server-fast-close",
                fast,
            ])
            .await;
            let client = pgdyno.connect(APP_DB).await;
            let pid = backend_pid(&client).await;
            client.batch_execute("BEGIN").await.unwrap();
            let console = pgdyno.connect("pgbouncer").await;
            console.simple_query("RECONNECT").await.unwrap();
            assert_eq!(backend_pid(&client).await, pid, "mid-transaction ({fast})");
            client
                .batch_execute(&format!("INSERT INTO fast_close VALUES ({fast}); COMMIT"))
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "COMMIT under server_fast_close = {fast}: {e} ({:?})",
                        e.as_db_error()
                    )
                });
            let committed: i64 = admin
                .query_one(
                    "SELECT count(*) FROM fast_close WHERE fast = $1",
                    &[&(fast == "true")],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(committed, 1, "the transaction committed ({fast})");
            if fast == "false" {
                assert_eq!(
                    backend_pid(&client).await,
                    pid,
                    "the session keeps its backend"
                );
                continue;
            }
            let err = client
                .batch_execute("SELECT 1")
                .await
                .expect_err("the session must be over");
            let code = err.as_db_error().map(|e| e.code().code().to_owned());
            assert!(
                code.as_deref() == Some("08P01") || client.is_closed(),
                "{err} ({code:?})"
            );
            let gone = async {
                while backend_alive(&admin, pid).await {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(5), gone)
                .await
                .expect("the marked backend is closed");
        }
    })
    .await
}

/// Session mode, no transaction open: under `server_fast_close` RECONNECT
/// closes a marked backend at once, without waiting for its client's next
/// query (PgBouncer: "immediately"), and the client's next query finds its
/// session over. Without it the idle session keeps its backend.
#[tokio::test]
async fn server_fast_close_ends_an_idle_marked_session_at_once() {
    within(60, async {
        let admin = Cluster::shared().direct(APP_DB).await;
        for fast in [false, true] {
            let pgdyno = pgdyno(&[
                "--pool-mode",
                "session",
                "--admin-users",
                APP_USER,
                "--server-fast-close",
                &fast.to_string(),
            ])
            .await;
            let client = pgdyno.connect(APP_DB).await;
            let pid = backend_pid(&client).await;
            let console = pgdyno.connect("pgbouncer").await;
            console.simple_query("RECONNECT").await.unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while backend_alive(&admin, pid).await && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if !fast {
                assert!(
                    backend_alive(&admin, pid).await,
                    "the idle session keeps its backend"
                );
                assert_eq!(backend_pid(&client).await, pid);
                continue;
            }
            assert!(
                !backend_alive(&admin, pid).await,
                "the marked backend closed at once"
            );
            let err = client
                .batch_execute("SELECT 1")
                .await
                .expect_err("the session must be over");
            let code = err.as_db_error().map(|e| e.code().code().to_owned());
            assert!(
                code.as_deref() == Some("08P01") || client.is_closed(),
                "{err} ({code:?})"
            );
        }
    })
    .await
}

/// `disable_pqexec`: the extended protocol works; a simple Query ends that
/// client's connection with 08P01 "PQexec disallowed" and reaches no
/// backend; other clients go on.
#[tokio::test]
async fn disable_pqexec_refuses_simple_queries_only() {
    within(60, async {
        let pgdyno = pgdyno(&["--disable-pqexec", "true", "--pool-size", "1"]).await;
        let other = pgdyno.connect(APP_DB).await;
        let client = pgdyno.connect(APP_DB).await;
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1, "the extended protocol");
        let mut raw = RawConn::connect(pgdyno.port()).await;
        raw.login(APP_USER, APP_PASSWORD, APP_DB)
            .await
            .expect("login");
        let batch = Batch::new().query("CREATE TEMP TABLE pqexec (x int); SELECT 1");
        raw.send(&batch.into_bytes()).await.unwrap();
        let msg = raw.recv().await.expect("an ErrorResponse");
        assert_eq!(msg.tag, b'E');
        let error = error_fields(&msg);
        assert_eq!(error.code, "08P01");
        assert!(
            error.message.contains("PQexec disallowed"),
            "{}",
            error.message
        );
        assert!(raw.recv().await.is_none(), "then the connection closes");
        // The one backend serves the next client, and ran nothing of it.
        let exists: bool = other
            .query_one("SELECT to_regclass('pg_temp.pqexec') IS NOT NULL", &[])
            .await
            .unwrap()
            .get(0);
        assert!(!exists);
    })
    .await
}
