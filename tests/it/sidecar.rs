//! `pgdyno run -- COMMAND`: the app is a small `sh -c` script, started only
//! once pgdyno listens, with its URL variables pointing at pgdyno; pgdyno
//! passes SIGTERM on, keeps serving while the app finishes, and exits with
//! the app's status.
//!
//! The scripts leave marker files in the run's scratch directory (`$DIR`)
//! and bound their own waiting, so none outlives a failed test for long.

use crate::harness::*;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// One `pgdyno run ... -- sh -c SCRIPT`, its output in `$DIR/pgdyno.log`.
struct Run {
    child: Child,
    dir: PathBuf,
}

impl Run {
    /// `pgdyno run <args> -- sh -c <script>` with `env` (and `$DIR`, `$PSQL`)
    /// and nothing else of ours that could configure pgdyno or libpq.
    fn start(args: &[&str], env: &[(&str, &str)], script: &str) -> Run {
        let dir = scratch_dir("sidecar");
        let log = File::create(dir.join("pgdyno.log")).expect("create pgdyno.log");
        let bin = std::env::var_os("PGDYNO_IT_BIN").unwrap_or(env!("CARGO_BIN_EXE_pgdyno").into());
        let mut cmd = Command::new(bin);
        for (key, _) in std::env::vars_os() {
            if let Some(key) = key.to_str() {
                if key.starts_with("PGDYNO_") || key.ends_with("_URL") {
                    cmd.env_remove(key);
                }
            }
        }
        clear_pg_env(&mut cmd);
        cmd.arg("run")
            .args(args)
            .args(["--", "sh", "-c", script])
            .env("DIR", &dir)
            .env("PSQL", pg_tool("psql"))
            .env("PGCONNECT_TIMEOUT", "5")
            .env("PGGSSENCMODE", "disable")
            .envs(env.iter().copied())
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log);
        let child = cmd.spawn().expect("spawn pgdyno run");
        // The janitor kills it should this test process die first.
        std::fs::write(dir.join("pgdyno.pid"), child.id().to_string()).expect("pid file");
        Run { child, dir }
    }

    /// Waits up to `secs` for pgdyno to exit.
    async fn wait(&mut self, secs: u64) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().expect("poll pgdyno") {
                let _ = std::fs::remove_file(self.dir.join("pgdyno.pid"));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "pgdyno run did not exit within {secs} s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits up to 10 s for the script to create `$DIR/<name>`.
    async fn wait_for_file(&mut self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.dir.join(name).exists() {
            if let Some(status) = self.child.try_wait().expect("poll pgdyno") {
                panic!(
                    "pgdyno run exited ({status}) before {name}:\n{}",
                    self.log()
                );
            }
            assert!(Instant::now() < deadline, "no {name}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn sigterm(&self) {
        self.signal("TERM");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} pgdyno failed");
    }

    /// The exit status if pgdyno exits within half a second.
    async fn wait_for_exit_briefly(&mut self) -> Option<ExitStatus> {
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.child.try_wait().expect("poll pgdyno")
    }

    fn file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(name)).ok()
    }

    fn log(&self) -> String {
        self.file("pgdyno.log").unwrap_or_default()
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(self.dir.join("pgdyno.pid"));
        if std::thread::panicking() {
            eprintln!("--- pgdyno run log ---\n{}--- end ---", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value after `<prefix> ` on the app's output line starting so.
fn line_after<'a>(log: &'a str, prefix: &str) -> &'a str {
    log.lines()
        .find_map(|l| l.strip_prefix(prefix)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no line \"{prefix} ...\" in:\n{log}"))
}

/// Creates `name` (owned by `app`) once per test process.
async fn ensure_database(cluster: &Cluster, name: &str) {
    let admin = cluster.admin().await;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .expect("look up database")
        .is_some();
    if !exists {
        cluster.create_database(name).await;
    }
}

#[tokio::test]
async fn app_sees_urls_pointing_at_pgdyno_and_queries_through_them() {
    within(60, async {
        let cluster = Cluster::shared();
        ensure_database(cluster, "sidecar_reports").await;
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let database_url = cluster.url(APP_DB);
        let reports_url = cluster.url("sidecar_reports");
        // Same database name as DATABASE_URL, another upstream: appdb_2.
        let other_url = format!("{}?application_name=other", cluster.url(APP_DB));
        let script = r#"
            echo "url DATABASE_URL $DATABASE_URL"
            echo "url REPORTS_URL $REPORTS_URL"
            echo "url SAME_URL $SAME_URL"
            echo "url OTHER_URL $OTHER_URL"
            for v in DATABASE_URL REPORTS_URL OTHER_URL; do
              eval "url=\$$v"
              echo "query $v $("$PSQL" "$url" -XAtc "SELECT current_database() || ' ' || current_user" 2>&1)"
            done
        "#;
        let mut run = Run::start(
            &["--listen", &listen],
            &[
                ("DATABASE_URL", &database_url),
                ("PGDYNO_URLS", "DATABASE_URL, REPORTS_URL SAME_URL,OTHER_URL"),
                ("REPORTS_URL", &reports_url),
                ("SAME_URL", &database_url),
                ("OTHER_URL", &other_url),
            ],
            script,
        );
        let status = run.wait(30).await;
        let log = run.log();
        assert_eq!(status.code(), Some(0), "{log}");

        let expected = |db: &str| {
            format!("postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{port}/{db}?sslmode=disable")
        };
        assert_eq!(line_after(&log, "url DATABASE_URL"), expected(APP_DB));
        assert_eq!(line_after(&log, "url REPORTS_URL"), expected("sidecar_reports"));
        assert_eq!(line_after(&log, "url SAME_URL"), expected(APP_DB));
        assert_eq!(line_after(&log, "url OTHER_URL"), expected("appdb_2"));
        assert_eq!(line_after(&log, "query DATABASE_URL"), "appdb app");
        assert_eq!(line_after(&log, "query REPORTS_URL"), "sidecar_reports app");
        assert_eq!(line_after(&log, "query OTHER_URL"), "appdb app");

        // pgdyno says what it rewrote, and never prints the password.
        let own: Vec<&str> = log
            .lines()
            .filter(|l| !l.starts_with("url ") && !l.starts_with("query "))
            .collect();
        let rewrote = own
            .iter()
            .find(|l| l.contains("starting the app"))
            .unwrap_or_else(|| panic!("no line about the rewrite:\n{log}"));
        for var in ["DATABASE_URL", "REPORTS_URL", "SAME_URL", "OTHER_URL"] {
            assert!(rewrote.contains(var), "{rewrote}");
        }
        assert!(
            own.iter().all(|l| !l.contains(APP_PASSWORD)),
            "pgdyno logged the password:\n{log}"
        );
    })
    .await
}

#[tokio::test]
async fn exit_status_is_the_apps() {
    within(60, async {
        let url = Cluster::shared().url(APP_DB);
        let env = [("DATABASE_URL", url.as_str())];
        let listen = ["--listen", "127.0.0.1:0"];
        let mut run = Run::start(&listen, &env, "exit 7");
        assert_eq!(run.wait(20).await.code(), Some(7), "{}", run.log());
        // Killed by a signal: 128 + the signal, as a shell reports it.
        let mut run = Run::start(&listen, &env, "kill -s KILL $$");
        assert_eq!(run.wait(20).await.code(), Some(128 + 9), "{}", run.log());
    })
    .await
}

/// pgdyno run must exit non-zero, with a message naming `named`, before
/// the app (which would create `$DIR/started`) is started.
async fn assert_refused(what: &str, args: &[&str], env: &[(&str, &str)], named: &str) {
    let mut run = Run::start(args, env, r#"touch "$DIR/started""#);
    let status = run.wait(20).await;
    let log = run.log();
    assert!(!status.success(), "{what}: pgdyno run succeeded:\n{log}");
    assert!(
        log.contains(named),
        "{what}: message does not name {named}:\n{log}"
    );
    assert!(
        !log.contains(APP_PASSWORD),
        "{what}: password in the message:\n{log}"
    );
    assert!(
        !run.path().join("started").exists(),
        "{what}: the app was started:\n{log}"
    );
}

#[tokio::test]
async fn app_is_not_started_when_pgdyno_cannot_start() {
    within(60, async {
        let good = Cluster::shared().url(APP_DB);
        let bad = "postgres://app:app-secret@127.0.0.1:notaport/appdb";
        let listen = ["--listen", "127.0.0.1:0"];
        assert_refused(
            "bad DATABASE_URL",
            &listen,
            &[("DATABASE_URL", bad)],
            "DATABASE_URL",
        )
        .await;
        let env = [
            ("DATABASE_URL", good.as_str()),
            ("PGDYNO_URLS", "DATABASE_URL BROKEN_URL"),
            ("BROKEN_URL", "mysql://nope"),
        ];
        assert_refused("bad second URL", &listen, &env, "BROKEN_URL").await;
        let env = [
            ("DATABASE_URL", good.as_str()),
            ("PGDYNO_URLS", "DATABASE_URL,MISSING_URL"),
        ];
        assert_refused("missing URL", &listen, &env, "MISSING_URL").await;
        let env = [
            ("DATABASE_URL", good.as_str()),
            ("PGDYNO_POOL_MODE", "sometimes"),
        ];
        assert_refused("bad setting", &listen, &env, "pool_mode").await;
        let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let busy_listen = busy.local_addr().expect("addr").to_string();
        let env = [("DATABASE_URL", good.as_str())];
        let args = ["--listen", busy_listen.as_str()];
        assert_refused("port in use", &args, &env, "cannot listen").await;
    })
    .await
}

#[tokio::test]
async fn sigterm_reaches_the_app_and_pgdyno_serves_until_it_exits() {
    within(60, async {
        let url = Cluster::shared().url(APP_DB);
        // On TERM the app still opens a new connection through pgdyno.
        let script = r#"
            trap '"$PSQL" "$DATABASE_URL" -XAtc "SELECT 40 + 2" > "$DIR/after-term" 2>&1
                  echo handled > "$DIR/term"; exit 0' TERM
            touch "$DIR/up"
            i=0; while [ $i -lt 300 ]; do sleep 0.05; i=$((i+1)); done
            exit 3
        "#;
        let mut run = Run::start(
            &["--listen", "127.0.0.1:0"],
            &[("DATABASE_URL", &url)],
            script,
        );
        run.wait_for_file("up").await;
        let sent = Instant::now();
        run.sigterm();
        let status = run.wait(20).await;
        let took = sent.elapsed();
        let log = run.log();
        assert_eq!(status.code(), Some(0), "{log}");
        assert_eq!(run.file("term").as_deref(), Some("handled\n"), "{log}");
        assert_eq!(run.file("after-term").as_deref(), Some("42\n"), "{log}");
        assert!(
            took < Duration::from_secs(5),
            "took {took:?} (shutdown_timeout is 25 s):\n{log}"
        );
    })
    .await
}

#[tokio::test]
async fn sigterm_lets_the_apps_transaction_commit() {
    within(60, async {
        let cluster = Cluster::shared();
        let direct = cluster.direct(APP_DB).await;
        direct
            .batch_execute("CREATE TABLE IF NOT EXISTS sidecar_term (tag text)")
            .await
            .expect("create table");
        let tag = format!("t{}", std::process::id());
        let script = r#"
            "$PSQL" "$DATABASE_URL" -X -v ON_ERROR_STOP=1 \
              -c "BEGIN; SELECT pg_sleep(2); INSERT INTO sidecar_term VALUES ('$TAG'); COMMIT" \
              > "$DIR/psql.out" 2>&1 &
            job=$!
            trap 'wait $job; echo $? > "$DIR/psql.status"; exit 0' TERM
            touch "$DIR/up"
            i=0; while [ $i -lt 300 ]; do sleep 0.05; i=$((i+1)); done
            exit 3
        "#;
        let url = cluster.url(APP_DB);
        let mut run = Run::start(
            &["--listen", "127.0.0.1:0"],
            &[("DATABASE_URL", &url), ("TAG", &tag)],
            script,
        );
        run.wait_for_file("up").await;
        // SIGTERM 0.5 s into the transaction (psql first has to log in).
        let deadline = Instant::now() + Duration::from_secs(10);
        let age = loop {
            let row = direct
                .query_opt(
                    "SELECT extract(epoch FROM now() - xact_start)::float8 FROM pg_stat_activity \
                     WHERE state = 'active' AND query LIKE '%' || $1 || '%' \
                     AND pid <> pg_backend_pid()",
                    &[&tag],
                )
                .await
                .expect("pg_stat_activity");
            if let Some(row) = row {
                break Duration::from_secs_f64(row.get::<_, f64>(0).max(0.0));
            }
            assert!(
                Instant::now() < deadline,
                "the transaction never started:\n{}",
                run.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            age < Duration::from_millis(1500),
            "the transaction is {age:?} old already"
        );
        tokio::time::sleep(Duration::from_millis(500).saturating_sub(age)).await;
        let sent = Instant::now();
        run.sigterm();
        let status = run.wait(20).await;
        let took = sent.elapsed();
        let log = run.log();
        assert_eq!(status.code(), Some(0), "{log}");
        assert_eq!(
            run.file("psql.status").as_deref(),
            Some("0\n"),
            "psql: {:?}\n{log}",
            run.file("psql.out")
        );
        let committed: i64 = direct
            .query_one("SELECT count(*) FROM sidecar_term WHERE tag = $1", &[&tag])
            .await
            .expect("count rows")
            .get(0);
        assert_eq!(committed, 1, "the transaction's row is missing:\n{log}");
        assert!(took < Duration::from_secs(6), "took {took:?}:\n{log}");
    })
    .await
}

#[tokio::test]
async fn hup_is_passed_on_and_an_app_ignoring_sigterm_is_killed_at_the_deadline() {
    within(60, async {
        let url = Cluster::shared().url(APP_DB);
        let script = r#"
            trap 'echo hup >> "$DIR/signals"' HUP
            trap 'echo term >> "$DIR/signals"' TERM
            touch "$DIR/up"
            i=0; while [ $i -lt 300 ]; do sleep 0.05; i=$((i+1)); done
            exit 3
        "#;
        let mut run = Run::start(
            &["--listen", "127.0.0.1:0", "--shutdown-timeout", "1"],
            &[("DATABASE_URL", &url)],
            script,
        );
        run.wait_for_file("up").await;
        run.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        while run.file("signals").is_none() {
            assert!(
                Instant::now() < deadline,
                "SIGHUP never reached the app:\n{}",
                run.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            run.wait_for_exit_briefly().await.is_none(),
            "SIGHUP stopped pgdyno:\n{}",
            run.log()
        );
        let sent = Instant::now();
        run.signal("TERM");
        let status = run.wait(20).await;
        let took = sent.elapsed();
        let log = run.log();
        assert_eq!(
            status.code(),
            Some(128 + 9),
            "the app should be killed:\n{log}"
        );
        assert_eq!(run.file("signals").as_deref(), Some("hup\nterm\n"), "{log}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "took {took:?} with shutdown_timeout 1 s:\n{log}"
        );
    })
    .await
}

#[tokio::test]
async fn app_urls_ask_for_tls_when_pgdyno_refuses_plaintext() {
    within(60, async {
        let certs = test_certs();
        let url = Cluster::shared().url(APP_DB);
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let script = r#"
            echo "url DATABASE_URL $DATABASE_URL"
            echo "query $("$PSQL" "$DATABASE_URL" -XAtc "SELECT 'served'" 2>&1)"
        "#;
        let args = [
            "--listen",
            &listen,
            "--client-tls-sslmode",
            "require",
            "--client-tls-cert-file",
            certs.server.cert_path(),
            "--client-tls-key-file",
            certs.server.key_path(),
        ];
        let mut run = Run::start(&args, &[("DATABASE_URL", &url)], script);
        let status = run.wait(30).await;
        let log = run.log();
        assert_eq!(status.code(), Some(0), "{log}");
        assert_eq!(
            line_after(&log, "url DATABASE_URL"),
            format!(
                "postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{port}/{APP_DB}?sslmode=require"
            )
        );
        // pgdyno refuses plaintext, so an answer means the app used TLS.
        assert_eq!(line_after(&log, "query"), "served", "{log}");
    })
    .await
}
