//! Socket options as the kernel sees them: TCP keepalive on the clients'
//! and the backends' sockets (`tcp_keepalive`, `tcp_keepidle`), and
//! `so_reuseport` letting two pgdyno processes share a port, and a rolling
//! restart through it.
//!
//! The keepalive timer of an idle connection shows in `/proc/net/tcp`
//! (timer kind 2, its expiry in hundredths of a second); pgdyno's own
//! sockets are told apart from other tests' by the inodes in its
//! `/proc/<pid>/fd`.

use crate::harness::*;
use std::collections::HashSet;
use std::time::Duration;

/// One of pgdyno's established TCP connections.
#[derive(Debug)]
struct Socket {
    local_port: u16,
    remote_port: u16,
    /// `/proc/net/tcp`'s timer kind: 0 none, 1 retransmit, 2 keepalive.
    timer: u8,
    /// When that timer fires, in seconds from now.
    fires_in: f64,
}

/// The established TCP sockets process `pid` holds.
fn tcp_sockets(pid: u32) -> Vec<Socket> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read pgdyno's fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local remote st queues tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "01" || !inodes.contains(f[9]) {
                continue;
            }
            let (timer, when) = f[5].split_once(':').unwrap();
            out.push(Socket {
                local_port: port(f[1]),
                remote_port: port(f[2]),
                timer: u8::from_str_radix(timer, 16).unwrap(),
                fires_in: u64::from_str_radix(when, 16).unwrap() as f64 / 100.0,
            });
        }
    }
    out
}

/// pgdyno with `extra` flags, one client that ran a query, and pgdyno's
/// established sockets once both connections are idle: the client's and
/// the backend's (or backends').
async fn idle_sockets(extra: &[&str]) -> Vec<Socket> {
    let url = Cluster::shared().url(APP_DB);
    let mut args = vec!["--upstream", url.as_str(), "--pool-mode", "session"];
    args.extend_from_slice(extra);
    let pgdyno = Pgdyno::start(&args).await;
    let client = pgdyno.connect(APP_DB).await;
    client.simple_query("SELECT 1").await.expect("SELECT 1");
    // Every byte acknowledged: no retransmit timer in the way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sockets = tcp_sockets(pgdyno.pid());
    let pg_port = Cluster::shared().port();
    let (to_clients, to_postgres): (Vec<_>, Vec<_>) = sockets
        .into_iter()
        .filter(|s| s.local_port == pgdyno.port() || s.remote_port == pg_port)
        .partition(|s| s.local_port == pgdyno.port());
    drop(client);
    assert_eq!(to_clients.len(), 1, "one client socket: {to_clients:?}");
    assert!(!to_postgres.is_empty(), "a backend socket: {to_postgres:?}");
    to_clients.into_iter().chain(to_postgres).collect()
}

#[tokio::test]
async fn keepalive_runs_on_client_and_backend_sockets_with_tcp_keepidle() {
    within(60, async {
        for s in idle_sockets(&["--tcp-keepidle", "1234"]).await {
            assert_eq!(s.timer, 2, "keepalive timer armed: {s:?}");
            assert!(
                (1200.0..=1234.0).contains(&s.fires_in),
                "first probe after tcp_keepidle (1234 s): {s:?}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn tcp_keepalive_false_leaves_sockets_without_probes() {
    within(60, async {
        for s in idle_sockets(&["--tcp-keepalive", "false"]).await {
            assert_eq!(s.timer, 0, "no timer on an idle socket: {s:?}");
        }
    })
    .await
}

/// Logins in a JSON log.
fn logins(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("\"event\":\"login\""))
        .count()
}

/// Flags of a pgdyno that shares its port, logging JSON.
fn sharing_a_port(upstream: &str) -> [&str; 6] {
    [
        "--upstream",
        upstream,
        "--so-reuseport",
        "true",
        "--log-format",
        "json",
    ]
}

#[tokio::test]
async fn so_reuseport_lets_two_pgdynos_share_a_port() {
    within(90, async {
        let url = Cluster::shared().url(APP_DB);
        let args = sharing_a_port(&url);
        let first = Pgdyno::start(&args).await;
        let port = first.port();
        let launch = Launch {
            args: &args,
            ..Launch::default()
        };
        let mut second = Pgdyno::launch_on(port, &launch)
            .await
            .expect("a second pgdyno on the same port");

        // Without the option, the port is taken.
        let listen = format!("127.0.0.1:{port}");
        let (status, log) = run_to_exit(Launch {
            args: &["--upstream", &url, "--listen", &listen],
            ..Launch::default()
        })
        .await;
        assert!(
            status.is_some_and(|s| !s.success()),
            "without so_reuseport a second pgdyno must not start:\n{log}"
        );
        assert!(log.to_lowercase().contains("in use"), "{log}");

        // The kernel spreads new connections over both.
        for i in 0..24 {
            let client = first.connect(APP_DB).await;
            let row = client.query_one("SELECT $1::int", &[&i]).await;
            assert_eq!(row.expect("query").get::<_, i32>(0), i);
        }
        assert!(second.is_running(), "the second pgdyno is still up");
        let (a, b) = (logins(&first.log()), logins(&second.log()));
        assert_eq!(a + b, 24, "every login in one of the logs");
        assert!(a > 0 && b > 0, "both served clients: {a} and {b}");
    })
    .await
}

/// PgBouncer's rolling restart: a new pgdyno joins the port with
/// `so_reuseport`, the old one gets SIGTERM. The old one's client goes on
/// unharmed (new transactions too), every new connection goes to the new
/// one, and the old one exits once its client leaves.
#[tokio::test]
async fn a_rolling_restart_with_so_reuseport_drops_nobody() {
    within(90, async {
        let url = Cluster::shared().url(APP_DB);
        let args = sharing_a_port(&url);
        let mut old = Pgdyno::start(&args).await;
        let port = old.port();
        let stays = old.connect(APP_DB).await;
        stays.batch_execute("BEGIN; SELECT 1").await.expect("BEGIN");
        let launch = Launch {
            args: &args,
            ..Launch::default()
        };
        let new = Pgdyno::launch_on(port, &launch)
            .await
            .expect("the new pgdyno on the same port");

        old.signal("TERM");
        eventually(10, "the old pgdyno stops listening", || async {
            old.log().contains("stopped accepting")
        })
        .await;
        // A connection that reaches the old socket as it closes is reset
        // (seen once in CI, under load, right after the old pgdyno logged
        // its close): a client tries again, as a real one would.
        for i in 0..10 {
            let mut tries = 0;
            let client = loop {
                match connect(&new.config(APP_DB)).await {
                    Ok(client) => break client,
                    Err(e) if e.as_db_error().is_none() && tries < 20 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("connecting after the restart: {e}"),
                }
            };
            let row = client.query_one("SELECT $1::int", &[&i]).await;
            assert_eq!(row.expect("query").get::<_, i32>(0), i);
        }
        assert_eq!(logins(&new.log()), 10, "every new client on the new pgdyno");
        stays
            .batch_execute("COMMIT; BEGIN; SELECT 2; COMMIT")
            .await
            .expect("the old pgdyno's client goes on");
        assert!(
            old.is_running(),
            "the old pgdyno left with a client connected"
        );
        drop(stays);
        let old = std::cell::RefCell::new(old);
        eventually(10, "the old pgdyno exits after its client left", || async {
            !old.borrow_mut().is_running()
        })
        .await;
    })
    .await
}
