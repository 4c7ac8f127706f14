//! The console's commands that change things: PAUSE waits for the
//! transactions under way and RESUME loses nothing, RECONNECT, KILL <db>,
//! SHUTDOWN and its two kinds, with the signals that start them (SIGTERM
//! waits for the clients, SIGINT for the transactions); the console stays
//! open past max_client_conn.

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

async fn count_rows(direct: &Client, table: &str) -> i64 {
    direct
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count rows")
        .get(0)
}

/// A worker of the PAUSE test: numbered rows, each in its own transaction
/// of three round trips; returns how many it committed.
async fn insert_loop(
    client: Client,
    table: String,
    id: i32,
    stop: Arc<AtomicBool>,
) -> Result<(i32, Duration), String> {
    let mut n = 0;
    let mut longest = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        for sql in [
            "BEGIN".to_owned(),
            format!("INSERT INTO {table} (client, n) VALUES ({id}, {})", n + 1),
            "COMMIT".to_owned(),
        ] {
            client
                .simple_query(&sql)
                .await
                .map_err(|e| format!("client {id}, row {}: {sql}: {e}", n + 1))?;
        }
        n += 1;
        longest = longest.max(started.elapsed());
    }
    Ok((n, longest))
}

#[tokio::test]
async fn pause_waits_for_transactions_and_resume_loses_nothing() {
    within(90, async {
        let cluster = Cluster::shared();
        let table = format!("admin_pause_{}", std::process::id());
        let direct = cluster.direct(APP_DB).await;
        direct
            .batch_execute(&format!(
                "CREATE TABLE {table} (client int, n int, PRIMARY KEY (client, n))"
            ))
            .await
            .expect("create table");

        let pgdyno = pgdyno(&["--pool-size", "4"]).await;
        let console = console(&pgdyno).await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for id in 0..8 {
            let client = pgdyno.connect(APP_DB).await;
            workers.push(tokio::spawn(insert_loop(
                client,
                table.clone(),
                id,
                stop.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            count_rows(&direct, &table).await > 0,
            "the workers are not inserting"
        );

        // pgdyno's backends (all four busy under this load), to find them
        // in pg_stat_activity among other tests' connections.
        let servers = show(&console, "SHOW SERVERS").await;
        let pids: Vec<i32> = servers
            .rows
            .iter()
            .map(|r| servers.int(r, "remote_pid") as i32)
            .collect();
        assert!(!pids.is_empty(), "no backends under load");

        let paused = tokio::time::timeout(Duration::from_secs(10), console.simple_query("PAUSE"))
            .await
            .expect("PAUSE did not return within 10 s");
        paused.expect("PAUSE");
        let at_pause = count_rows(&direct, &table).await;
        // No transaction of pgdyno's is left open once PAUSE returns.
        let admin = cluster.admin().await;
        let open: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1) \
                 AND state IN ('active', 'idle in transaction')",
                &[&pids],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(open, 0, "backends busy after PAUSE returned");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before_resume = count_rows(&direct, &table).await;
        assert_eq!(
            before_resume, at_pause,
            "transactions committed while pgdyno was paused"
        );
        let (table_, row) = pool_row(&console, APP_DB).await;
        assert_eq!(table_.int(&row, "sv_active"), 0, "{row:?}");

        simple(&console, "RESUME").await;
        let resumed_at = Instant::now();
        tokio::time::sleep(Duration::from_millis(700)).await;
        stop.store(true, Ordering::Relaxed);
        let mut committed = Vec::new();
        let mut longest = Duration::ZERO;
        for worker in workers {
            let (n, l) = tokio::time::timeout(Duration::from_secs(10), worker)
                .await
                .expect("a worker did not stop within 10 s")
                .unwrap()
                .unwrap_or_else(|e| panic!("a query was lost: {e}"));
            committed.push(n);
            longest = longest.max(l);
        }
        let after = count_rows(&direct, &table).await;
        assert!(
            after > before_resume,
            "no transaction after RESUME ({:?} ago)",
            resumed_at.elapsed()
        );
        assert!(
            longest >= Duration::from_millis(900),
            "no worker waited out the pause (longest transaction {longest:?})"
        );
        // Every insert committed exactly once: rows 1..=n for each client.
        for (id, n) in committed.iter().enumerate() {
            let got: Vec<i32> = direct
                .query(
                    &format!("SELECT n FROM {table} WHERE client = $1 ORDER BY n"),
                    &[&(id as i32)],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let want: Vec<i32> = (1..=*n).collect();
            assert_eq!(got, want, "client {id}'s rows");
        }
        direct
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
    })
    .await
}

#[tokio::test]
async fn reconnect_gives_new_backends_after_the_transaction() {
    within(60, async {
        let pgdyno = pgdyno(&["--pool-size", "1"]).await;
        let console = console(&pgdyno).await;
        let client = pgdyno.connect(APP_DB).await;
        let first = backend_pid(&client).await;
        assert_eq!(
            backend_pid(&client).await,
            first,
            "pool_size 1 reuses its backend"
        );

        simple(&console, "RECONNECT").await;
        let second = backend_pid(&client).await;
        assert_ne!(second, first, "an idle backend survived RECONNECT");

        // A backend lent out at RECONNECT finishes its transaction first.
        simple(&client, "BEGIN").await;
        assert_eq!(backend_pid(&client).await, second);
        simple(&console, &format!("RECONNECT {APP_DB}")).await;
        assert_eq!(
            backend_pid(&client).await,
            second,
            "RECONNECT broke a transaction"
        );
        simple(&client, "COMMIT").await;
        let third = backend_pid(&client).await;
        assert_ne!(third, second, "a lent backend survived RECONNECT");
        let err = console
            .simple_query("RECONNECT nosuchdb")
            .await
            .expect_err("RECONNECT of an unknown database");
        assert!(err.as_db_error().is_some(), "{err}");
    })
    .await
}

fn two_database_config() -> std::path::PathBuf {
    let url = Cluster::shared().url(APP_DB);
    let path = scratch_dir("admin-config").join("two.toml");
    std::fs::write(
        &path,
        format!("[databases]\nkill_a = \"{url}\"\nkill_b = \"{url}\"\n"),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn kill_db_disconnects_only_that_databases_clients() {
    within(60, async {
        let config = two_database_config();
        let pgdyno = Pgdyno::start(&[
            "--config",
            config.to_str().unwrap(),
            "--admin-users",
            APP_USER,
        ])
        .await;
        let console = console(&pgdyno).await;
        let a = pgdyno.connect("kill_a").await;
        let b = pgdyno.connect("kill_b").await;
        simple(&a, "SELECT 1").await;
        simple(&b, "SELECT 1").await;

        simple(&console, "KILL kill_a").await;
        let killed = tokio::time::timeout(Duration::from_secs(5), a.simple_query("SELECT 1"))
            .await
            .expect("the killed client's query neither failed nor ran within 5 s");
        assert!(
            killed.is_err(),
            "kill_a's client still works after KILL kill_a"
        );
        simple(&b, "SELECT 1").await;
        let clients = show(&console, "SHOW CLIENTS").await;
        let dbs: Vec<_> = clients
            .rows
            .iter()
            .map(|r| r["database"].clone().unwrap_or_default())
            .collect();
        assert!(!dbs.contains(&"kill_a".to_owned()), "SHOW CLIENTS: {dbs:?}");
        assert!(dbs.contains(&"kill_b".to_owned()), "SHOW CLIENTS: {dbs:?}");
        let err = console
            .simple_query("KILL nosuchdb")
            .await
            .expect_err("KILL of an unknown database");
        assert!(err.as_db_error().is_some(), "{err}");
    })
    .await
}

#[tokio::test]
async fn shutdown_exits_once_clients_are_idle() {
    within(60, async {
        let mut pgdyno = pgdyno(&["--shutdown-timeout", "20"]).await;
        let console = console(&pgdyno).await;
        let client = pgdyno.connect(APP_DB).await;
        simple(&client, "BEGIN").await;
        simple(&client, "SELECT 1").await;

        tokio::time::timeout(Duration::from_secs(5), console.simple_query("SHUTDOWN"))
            .await
            .expect("SHUTDOWN got no answer within 5 s")
            .expect("SHUTDOWN");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(pgdyno.is_running(), "pgdyno left mid-transaction");
        assert!(
            connect(&pgdyno.config(APP_DB)).await.is_err(),
            "a new client was admitted after SHUTDOWN"
        );
        simple(&client, "SELECT 2").await;
        simple(&client, "COMMIT").await;

        // The console session that sent SHUTDOWN is open, and idle.
        exits_within(&mut pgdyno, 10, "after its last client went idle").await;
    })
    .await
}

/// Waits up to `secs` for pgdyno to exit.
async fn exits_within(pgdyno: &mut Pgdyno, secs: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while pgdyno.is_running() {
        assert!(
            Instant::now() < deadline,
            "pgdyno still running {secs} s {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PgBouncer's SIGTERM (1.23 on): nobody new is let in, the clients
/// connected go on, new transactions and all, and pgdyno exits after the
/// last one leaves. (A drain would close the idle client at once and the
/// other after its COMMIT.)
#[tokio::test]
async fn sigterm_serves_the_clients_connected_until_they_leave() {
    within(60, async {
        let mut pgdyno = pgdyno(&["--shutdown-timeout", "30"]).await;
        let busy = pgdyno.connect(APP_DB).await;
        let idle = pgdyno.connect(APP_DB).await;
        simple(&idle, "SELECT 1").await;
        simple(&busy, "BEGIN").await;
        simple(&busy, "SELECT 1").await;

        pgdyno.signal("TERM");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            connect(&pgdyno.config(APP_DB)).await.is_err(),
            "a new client was admitted after SIGTERM"
        );
        simple(&busy, "COMMIT").await;
        for sql in ["BEGIN", "SELECT 2", "COMMIT", "SELECT 3"] {
            simple(&busy, sql).await;
        }
        simple(&idle, "SELECT 4").await;

        drop(busy);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(pgdyno.is_running(), "pgdyno left with a client connected");
        simple(&idle, "SELECT 5").await;
        drop(idle);
        exits_within(&mut pgdyno, 10, "after its last client left").await;
        let log = pgdyno.log();
        assert!(
            log.contains("serving the clients connected until they leave"),
            "{log}"
        );
    })
    .await
}

/// `SHUTDOWN WAIT_FOR_CLIENTS` from the console is SIGTERM's shutdown;
/// `shutdown_timeout` bounds it: a client that stays is closed then.
#[tokio::test]
async fn shutdown_wait_for_clients_ends_at_shutdown_timeout() {
    within(60, async {
        let mut pgdyno = pgdyno(&["--shutdown-timeout", "2"]).await;
        let console = console(&pgdyno).await;
        let err = console
            .simple_query("SHUTDOWN SOMEHOW")
            .await
            .expect_err("an unknown kind of SHUTDOWN");
        assert!(err.as_db_error().is_some(), "{err}");
        assert!(pgdyno.is_running(), "SHUTDOWN SOMEHOW stopped pgdyno");

        let client = pgdyno.connect(APP_DB).await;
        let started = Instant::now();
        console
            .simple_query("SHUTDOWN WAIT_FOR_CLIENTS")
            .await
            .expect("SHUTDOWN WAIT_FOR_CLIENTS");
        for sql in ["BEGIN", "SELECT 1", "COMMIT", "BEGIN", "SELECT 2"] {
            simple(&client, sql).await;
        }
        // In a transaction at the deadline: closed with 57P01.
        let deadline = Instant::now() + Duration::from_secs(10);
        let err = loop {
            match client.simple_query("SELECT 3").await {
                Ok(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(_) => panic!("still served 10 s into a 2 s shutdown_timeout"),
                Err(e) => break e,
            }
        };
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "closed after {:?}, before shutdown_timeout",
            started.elapsed()
        );
        let code = err.as_db_error().map(|e| e.code().code().to_owned());
        assert!(
            code.as_deref() == Some("57P01") || client.is_closed(),
            "{err} ({code:?})"
        );
        exits_within(&mut pgdyno, 10, "after shutdown_timeout").await;
    })
    .await
}

/// A signal during a shutdown closes everything at once.
#[tokio::test]
async fn a_second_signal_during_a_shutdown_closes_everything() {
    within(60, async {
        let mut pgdyno = pgdyno(&["--shutdown-timeout", "30"]).await;
        let client = pgdyno.connect(APP_DB).await;
        simple(&client, "BEGIN").await;
        pgdyno.signal("TERM");
        tokio::time::sleep(Duration::from_millis(300)).await;
        simple(&client, "SELECT 1").await;
        pgdyno.signal("INT");
        exits_within(&mut pgdyno, 5, "after SIGTERM then SIGINT").await;
        assert!(
            client.simple_query("SELECT 2").await.is_err(),
            "the transaction went on after pgdyno exited"
        );
    })
    .await
}

#[tokio::test]
async fn the_console_is_open_when_max_client_conn_is_reached() {
    within(60, async {
        let pgdyno = pgdyno(&["--max-client-conn", "2"]).await;
        let one = pgdyno.connect(APP_DB).await;
        let two = pgdyno.connect(APP_DB).await;
        assert!(
            connect(&pgdyno.config(APP_DB)).await.is_err(),
            "max_client_conn 2 admitted a third client"
        );
        let console = console(&pgdyno).await;
        let (table, row) = pool_row(&console, APP_DB).await;
        assert_eq!(table.int(&row, "cl_active"), 2, "{row:?}");
        let second_console = console_on(&pgdyno, "pgdyno").await;
        show(&second_console, "SHOW CLIENTS").await;
        simple(&one, "SELECT 1").await;
        simple(&two, "SELECT 1").await;
    })
    .await
}
