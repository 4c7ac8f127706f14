//! What the console shows agrees with what is going on: SHOW POOLS under a
//! held transaction and a waiting client, SHOW CLIENTS, SHOW SERVERS with
//! the backends' pids, SHOW STATS and SHOW TOTALS counting the same
//! transactions; stats_users may only SHOW; unknown commands and the
//! extended protocol are refused.

use super::*;

#[tokio::test]
async fn show_pools_counts_a_held_transaction_and_a_waiting_client() {
    within(60, async {
        let pgdyno = pgdyno(&["--pool-size", "1"]).await;
        let console = console(&pgdyno).await;
        let holder = pgdyno.connect(APP_DB).await;
        let idle = pgdyno.connect(APP_DB).await;
        let waiter = pgdyno.connect(APP_DB).await;
        simple(&holder, "BEGIN").await;
        simple(&holder, "SELECT 1").await;

        let (table, row) = pool_row(&console, APP_DB).await;
        let n = |c: &str| table.int(&row, c);
        assert_eq!(
            (
                n("cl_active"),
                n("cl_waiting"),
                n("sv_active"),
                n("sv_idle")
            ),
            (3, 0, 1, 0),
            "(cl_active, cl_waiting, sv_active, sv_idle) with one transaction held: {row:?}"
        );

        let waiting = tokio::spawn(async move {
            let r = waiter.simple_query("SELECT 1").await;
            (waiter, r)
        });
        eventually(5, "the third client never showed as waiting", || async {
            let (table, row) = pool_row(&console, APP_DB).await;
            table.int(&row, "cl_waiting") == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (table, row) = pool_row(&console, APP_DB).await;
        let n = |c: &str| table.int(&row, c);
        assert_eq!(n("cl_active"), 2, "{row:?}");
        assert_eq!(n("cl_waiting"), 1, "{row:?}");
        assert_eq!(n("sv_active"), 1, "{row:?}");
        assert_eq!(n("sv_idle"), 0, "{row:?}");
        assert_eq!(n("sv_login"), 0, "{row:?}");
        assert_eq!(n("sv_used"), 0, "{row:?}");
        assert_eq!(n("sv_tested"), 0, "{row:?}");
        let waited_us = n("maxwait") * 1_000_000 + n("maxwait_us");
        assert!(waited_us >= 100_000, "maxwait {waited_us} us: {row:?}");
        assert_eq!(table.cell(&row, "pool_mode"), Some("transaction"));

        simple(&holder, "COMMIT").await;
        let (waiter, result) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting client got the backend within 5 s")
            .unwrap();
        result.expect("the waiting client's query");
        eventually(5, "the backend never went back to idle", || async {
            let (table, row) = pool_row(&console, APP_DB).await;
            table.int(&row, "sv_active") == 0
        })
        .await;
        let (table, row) = pool_row(&console, APP_DB).await;
        let n = |c: &str| table.int(&row, c);
        assert_eq!(
            (
                n("cl_active"),
                n("cl_waiting"),
                n("sv_active"),
                n("sv_idle")
            ),
            (3, 0, 0, 1),
            "all idle: {row:?}"
        );
        assert_eq!(n("maxwait") * 1_000_000 + n("maxwait_us"), 0, "{row:?}");
        drop((idle, waiter));
    })
    .await
}

#[tokio::test]
async fn show_clients_lists_a_client_until_it_leaves() {
    within(60, async {
        let pgdyno = pgdyno(&[]).await;
        let console = console(&pgdyno).await;
        let mut config = pgdyno.config(APP_DB);
        config.application_name("clients-probe");
        let client = connect(&config).await.expect("connect");
        simple(&client, "SELECT 1").await;

        let table = show(&console, "SHOW CLIENTS").await;
        let probe = |t: &Table| {
            t.rows
                .iter()
                .find(|r| {
                    r.get("application_name").cloned().flatten().as_deref() == Some("clients-probe")
                })
                .cloned()
        };
        let row = probe(&table)
            .unwrap_or_else(|| panic!("the client is not in SHOW CLIENTS: {:?}", table.rows));
        assert_eq!(table.cell(&row, "type"), Some("C"), "{row:?}");
        assert_eq!(table.cell(&row, "user"), Some(APP_USER), "{row:?}");
        assert_eq!(table.cell(&row, "database"), Some(APP_DB), "{row:?}");
        assert_eq!(table.cell(&row, "addr"), Some("127.0.0.1"), "{row:?}");
        assert!(table.int(&row, "port") > 0, "{row:?}");
        assert_eq!(
            table.int(&row, "local_port"),
            i64::from(pgdyno.port()),
            "{row:?}"
        );
        let connected = table.cell(&row, "connect_time").unwrap_or_default();
        assert!(connected.len() >= 19, "connect_time {connected:?}");

        drop(client);
        eventually(
            5,
            "the client stayed in SHOW CLIENTS after leaving",
            || async { probe(&show(&console, "SHOW CLIENTS").await).is_none() },
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn show_servers_remote_pid_is_the_backend_pid() {
    within(60, async {
        let pgdyno = pgdyno(&["--pool-size", "1"]).await;
        let console = console(&pgdyno).await;
        let client = pgdyno.connect(APP_DB).await;
        simple(&client, "BEGIN").await;
        let pid = backend_pid(&client).await;

        let table = show(&console, "SHOW SERVERS").await;
        let row = table
            .rows
            .iter()
            .find(|r| r.get("remote_pid").cloned().flatten() == Some(pid.to_string()))
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "no server with remote_pid {pid} in SHOW SERVERS: {:?}",
                    table.rows
                )
            });
        assert_eq!(table.rows.len(), 1, "pool_size 1: {:?}", table.rows);
        assert_eq!(table.cell(&row, "type"), Some("S"), "{row:?}");
        assert_eq!(table.cell(&row, "user"), Some(APP_USER), "{row:?}");
        assert_eq!(table.cell(&row, "database"), Some(APP_DB), "{row:?}");
        assert_eq!(table.cell(&row, "state"), Some("active"), "{row:?}");
        assert_eq!(table.cell(&row, "addr"), Some("127.0.0.1"), "{row:?}");
        assert_eq!(
            table.int(&row, "port"),
            i64::from(Cluster::shared().port()),
            "{row:?}"
        );

        simple(&client, "COMMIT").await;
        eventually(5, "the backend never showed as idle", || async {
            let t = show(&console, "SHOW SERVERS").await;
            t.rows.iter().any(|r| {
                r.get("remote_pid").cloned().flatten() == Some(pid.to_string())
                    && r.get("state").cloned().flatten().as_deref() == Some("idle")
            })
        })
        .await;
    })
    .await
}

/// SHOW TOTALS sums SHOW STATS over the databases, under PgBouncer's row
/// names, totals then averages.
#[tokio::test]
async fn show_totals_sums_show_stats() {
    within(60, async {
        let cluster = Cluster::shared();
        cluster.create_database("totals_other").await;
        let path = scratch_dir("totals").join("pgdyno.toml");
        let text = format!(
            "admin_users = \"{APP_USER}\"\n[databases]\n{APP_DB} = \"{}\"\ntotals_other = \"{}\"\n",
            cluster.url(APP_DB),
            cluster.url("totals_other")
        );
        std::fs::write(&path, text).unwrap();
        let pgdyno = Pgdyno::start(&["--config", path.to_str().unwrap()]).await;
        for (db, n) in [(APP_DB, 3), ("totals_other", 4)] {
            let client = pgdyno.connect(db).await;
            for _ in 0..n {
                simple(&client, "SELECT 1").await;
            }
        }
        let console = console(&pgdyno).await;
        let stats = show(&console, "SHOW STATS").await;
        let summed: i64 = stats
            .rows
            .iter()
            .map(|r| stats.int(r, "total_xact_count"))
            .sum();
        let totals = show(&console, "SHOW TOTALS").await;
        let names: Vec<_> = totals
            .rows
            .iter()
            .map(|r| totals.cell(r, "name").unwrap())
            .collect();
        let counters = [
            "server_assignment_count",
            "xact_count",
            "query_count",
            "client_bytes",
            "server_bytes",
            "xact_time",
            "query_time",
            "wait_time",
            "ps_client_parse_count",
            "ps_server_parse_count",
            "ps_bind_count",
            "client_connect_count",
        ];
        let expected: Vec<_> = ["total", "avg"]
            .iter()
            .flat_map(|p| counters.iter().map(move |c| format!("{p}_{c}")))
            .collect();
        assert_eq!(names, expected);
        let value = |name: &str| {
            let row = totals
                .rows
                .iter()
                .find(|r| totals.cell(r, "name") == Some(name));
            totals.int(row.unwrap(), "value")
        };
        assert!(summed >= 7, "SHOW STATS counted {summed} transactions");
        assert_eq!(value("total_xact_count"), summed);
        assert_eq!(value("total_client_connect_count"), 2);
    })
    .await
}

#[tokio::test]
async fn stats_users_may_only_show() {
    within(60, async {
        let dir = scratch_dir("admin-authfile");
        let userlist = dir.join("userlist.txt");
        std::fs::write(&userlist, "\"watcher\" \"watcher-secret\"\n").unwrap();
        let pgdyno = pgdyno(&[
            "--auth-file",
            userlist.to_str().unwrap(),
            "--stats-users",
            "watcher",
        ])
        .await;
        let app = pgdyno.connect(APP_DB).await;
        simple(&app, "SELECT 1").await;
        let watcher = connect(&pgdyno.config_as("pgbouncer", "watcher", "watcher-secret"))
            .await
            .expect("a stats user logs in to the console");
        for sql in [
            "SHOW POOLS",
            "SHOW STATS",
            "SHOW CLIENTS",
            "SHOW SERVERS",
            "SHOW CONFIG",
        ] {
            show(&watcher, sql).await;
        }
        for sql in [
            "PAUSE",
            "PAUSE appdb",
            "RESUME",
            "RECONNECT",
            "KILL appdb",
            "SHUTDOWN",
            "SHUTDOWN WAIT_FOR_CLIENTS",
        ] {
            let err = watcher
                .simple_query(sql)
                .await
                .err()
                .unwrap_or_else(|| panic!("a stats user ran {sql}"));
            assert!(
                err.as_db_error().is_some(),
                "{sql}: no ErrorResponse: {err}"
            );
        }
        // Nothing happened: the app's client works, pgdyno runs.
        simple(&app, "SELECT 1").await;
        let (table, row) = pool_row(&watcher, APP_DB).await;
        assert_eq!(table.int(&row, "cl_active"), 1);
        let databases = show(&watcher, "SHOW DATABASES").await;
        assert_eq!(
            databases.rows[0]["paused"].as_deref(),
            Some("0"),
            "{:?}",
            databases.rows
        );
        // A user in neither list is refused the console.
        let err = connect(&pgdyno.config("pgbouncer").user("nobody_here").clone()).await;
        assert!(err.is_err(), "a user in neither list reached the console");
    })
    .await
}

#[tokio::test]
async fn unknown_commands_and_the_extended_protocol_are_refused() {
    within(60, async {
        let pgdyno = pgdyno(&[]).await;
        let console = console(&pgdyno).await;
        for sql in ["FROBNICATE", "SHOW NOTHING", "SELECT 1"] {
            let err = console
                .simple_query(sql)
                .await
                .err()
                .unwrap_or_else(|| panic!("{sql} was accepted"));
            assert!(
                err.as_db_error().is_some(),
                "{sql}: no ErrorResponse: {err}"
            );
        }
        // The session carries on after an error.
        show(&console, "SHOW VERSION").await;

        // tokio-postgres' query() is the extended protocol.
        let extended =
            tokio::time::timeout(Duration::from_secs(5), console.query("SHOW POOLS", &[]))
                .await
                .expect("the extended protocol got no answer within 5 s");
        assert!(
            extended.is_err(),
            "the console answered the extended protocol"
        );
        // A new session works.
        let again = self::console(&pgdyno).await;
        show(&again, "SHOW POOLS").await;
    })
    .await
}

/// A pgdyno that is peer 1, with peer 2 at `peer_port` taking one cancel
/// at a time; `extra`: more of the file.
async fn peer_one(peer_port: u16, extra: &str) -> Pgdyno {
    let path = scratch_dir("peer-pools").join("pgdyno.toml");
    std::fs::write(
        &path,
        format!(
            "peer_id = 1\n{extra}\n[peers]\n1 = \"host=127.0.0.1 port=1\"\n\
             2 = \"host=127.0.0.1 port={peer_port} pool_size=1\"\n"
        ),
    )
    .unwrap();
    pgdyno(&["--config", path.to_str().unwrap()]).await
}

/// Sends pgdyno a cancel for process `pid` with a key peer 2 issued (its id
/// in the top 14 bits, both hops left, `n` in the rest); the request's
/// connection, left open.
async fn cancel_for_peer_two(pgdyno: &Pgdyno, pid: i32, n: u32) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", pgdyno.port()))
        .await
        .unwrap();
    let mut out = bytes::BytesMut::new();
    let secret = ((2 << 18) | (3 << 16) | n) as i32;
    postgres_protocol::message::frontend::cancel_request(pid, secret, &mut out);
    s.write_all(&out).await.unwrap();
    s
}

/// SHOW PEERS lists `[peers]`; a peer takes at most its `pool_size`
/// cancels at once, the rest wait their turn, and SHOW PEER_POOLS counts
/// both. The peer here is a listener that reads each cancel and holds its
/// connection open until the test lets it go.
#[tokio::test]
async fn cancels_for_a_peer_wait_for_its_pool_size_and_show_peer_pools_counts_them() {
    use tokio::io::AsyncReadExt;
    within(60, async {
        let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer_port = peer.local_addr().unwrap().port();
        let pgdyno = peer_one(peer_port, "").await;
        let console = console(&pgdyno).await;

        let peers = show(&console, "SHOW PEERS").await;
        assert_eq!(peers.columns, ["peer_id", "host", "port", "pool_size"]);
        let row = |id: &str| {
            peers
                .rows
                .iter()
                .find(|r| r["peer_id"].as_deref() == Some(id))
                .unwrap_or_else(|| panic!("no peer {id} in {:?}", peers.rows))
                .clone()
        };
        assert_eq!(
            row("2")["port"].as_deref(),
            Some(peer_port.to_string().as_str())
        );
        assert_eq!(row("2")["pool_size"].as_deref(), Some("1"));
        assert_eq!(
            row("1")["pool_size"].as_deref(),
            Some("20"),
            "default_pool_size"
        );

        let counts = || async {
            let t = show(&console, "SHOW PEER_POOLS").await;
            assert_eq!(
                t.columns,
                [
                    "peer_id",
                    "cl_active_cancel_req",
                    "cl_waiting_cancel_req",
                    "sv_active_cancel",
                    "sv_login"
                ]
            );
            let r = t
                .rows
                .iter()
                .find(|r| r["peer_id"].as_deref() == Some("2"))
                .unwrap();
            let n = |c: &str| t.int(r, c);
            (
                n("cl_active_cancel_req"),
                n("cl_waiting_cancel_req"),
                n("sv_active_cancel"),
                n("sv_login"),
            )
        };
        assert_eq!(counts().await, (0, 0, 0, 0));

        // Three cancels for keys peer 2 issued (its id in the top 14 bits,
        // both hops left), sent to pgdyno (peer 1).
        let mut senders = Vec::new();
        for n in 1..=3 {
            senders.push(cancel_for_peer_two(&pgdyno, 100 + n, n as u32).await);
        }
        let read_cancel = |mut conn: tokio::net::TcpStream| async move {
            let mut request = [0u8; 16];
            conn.read_exact(&mut request).await.unwrap();
            let pid = i32::from_be_bytes(request[8..12].try_into().unwrap());
            let key = u32::from_be_bytes(request[12..16].try_into().unwrap());
            (conn, pid, key)
        };
        let (first, pid, key) = read_cancel(peer.accept().await.unwrap().0).await;
        assert!((101..=103).contains(&pid));
        assert_eq!(
            key,
            (2 << 18) | (2 << 16) | (pid as u32 - 100),
            "one hop fewer"
        );
        eventually(5, "one cancel sent, two waiting", || async {
            counts().await == (1, 2, 1, 0)
        })
        .await;
        let second = tokio::time::timeout(Duration::from_millis(300), peer.accept()).await;
        assert!(second.is_err(), "a second connection past pool_size 1");

        // The peer closes the first: the next one goes.
        drop(first);
        let (second, next, _) = read_cancel(peer.accept().await.unwrap().0).await;
        assert_ne!(next, pid);
        eventually(5, "one sent, one waiting", || async {
            counts().await == (1, 1, 1, 0)
        })
        .await;
        drop(second);
        let (third, _, _) = read_cancel(peer.accept().await.unwrap().0).await;
        drop(third);
        eventually(5, "all done", || async { counts().await == (0, 0, 0, 0) }).await;
        // Each sender's connection is closed once its cancel is done.
        for mut s in senders {
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
                .await
                .expect("the cancel connection closed")
                .ok();
        }
    })
    .await
}

/// A cancel not delivered within `cancel_wait_timeout` (here: its peer
/// never closes the connection it came on) is given up, and the request's
/// connection closed.
#[tokio::test]
async fn a_cancel_past_cancel_wait_timeout_is_given_up() {
    use tokio::io::AsyncReadExt;
    within(60, async {
        let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer_port = peer.local_addr().unwrap().port();
        let pgdyno = peer_one(peer_port, "cancel_wait_timeout = 1").await;
        let started = Instant::now();
        let mut sender = cancel_for_peer_two(&pgdyno, 7, 7).await;
        let (_held, _) = peer.accept().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), sender.read_to_end(&mut rest))
            .await
            .expect("the cancel request's connection closed")
            .ok();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "closed after {took:?}"
        );
    })
    .await
}

/// SHOW POOLS counts cancels under way: one whose bytes the network holds
/// is active (cl_active_cancel_req, sv_active_cancel); once the query it
/// aimed at has ended, its backend is held (sv_being_canceled) and lent to
/// nobody until the cancel is done.
#[tokio::test]
async fn show_pools_counts_cancels_under_way() {
    within(60, async {
        let relay = FaultRelay::start(Cluster::shared().port()).await;
        let url = relay.url(APP_DB);
        // No TLS negotiation toward PostgreSQL: a cancel's connection is
        // open as soon as TCP says so, and the stall holds the request.
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &url,
            "--admin-users",
            APP_USER,
            "--pool-size",
            "1",
            "--server-tls-sslmode",
            "disable",
        ])
        .await;
        let console = console(&pgdyno).await;
        let counts = || async {
            let (t, row) = pool_row(&console, APP_DB).await;
            [
                "cl_active_cancel_req",
                "cl_waiting_cancel_req",
                "sv_active",
                "sv_active_cancel",
                "sv_being_canceled",
            ]
            .map(|c| t.int(&row, c))
        };
        let mut raw = RawConn::connect(pgdyno.port()).await;
        raw.login(APP_USER, APP_PASSWORD, APP_DB)
            .await
            .expect("login");
        let (pid, key) = raw.backend_key().expect("BackendKeyData");
        let sleep = Batch::new().query("SELECT pg_sleep(1)");
        raw.send(&sleep.into_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;

        // The cancel's connection opens; its request is held on the way.
        relay.stall(Flow::ToServer);
        let cancel = tokio::spawn(cancel_for(pgdyno.port(), pid, key));
        eventually(5, "the cancel sent, its query running", || async {
            counts().await == [1, 0, 1, 1, 0]
        })
        .await;
        // The query ends uncancelled; the backend waits for the cancel.
        eventually(5, "the backend held for its cancel", || async {
            counts().await == [1, 0, 0, 1, 1]
        })
        .await;
        let next = pgdyno.connect(APP_DB).await;
        let held = tokio::time::timeout(Duration::from_millis(300), next.simple_query("SELECT 1"));
        assert!(held.await.is_err(), "a held backend is lent to nobody");

        relay.resume();
        cancel.await.unwrap();
        eventually(5, "nothing under way", || async {
            counts().await == [0, 0, 0, 0, 0]
        })
        .await;
        next.simple_query("SELECT 1")
            .await
            .expect("the backend serves again");
    })
    .await
}

/// Sends pgdyno a CancelRequest and waits for it to close the connection.
async fn cancel_for(port: u16, pid: i32, key: i32) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(pid, key, &mut out);
    s.write_all(&out).await.unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
}
