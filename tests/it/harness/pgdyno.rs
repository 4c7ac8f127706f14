//! Running the pgdyno binary under test.
//!
//! `Pgdyno::start` puts it on a free port, sends its stdout and stderr to a
//! file, waits until the port accepts TCP, and kills it (by pid) on drop. If
//! the test is failing at that point, the log is printed: it is usually the
//! quickest way to see why. `run_to_exit` is for command lines that must make
//! pgdyno refuse to start.
//!
//! `PGDYNO_IT_BIN=/path/to/pgdyno` runs the suite against another build of
//! pgdyno (a release binary, say) instead of the one cargo just built.

use super::{clear_pg_env, free_port, scratch_dir, APP_PASSWORD, APP_USER};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Pgdyno {
    child: Child,
    port: u16,
    dir: PathBuf,
}

/// How pgdyno is launched: its arguments and extra environment (nothing
/// else from ours: inherited `PGDYNO_*` and `DATABASE_URL` are removed).
#[derive(Default)]
pub struct Launch<'a> {
    pub args: &'a [&'a str],
    pub env: &'a [(&'a str, &'a str)],
}

impl Pgdyno {
    /// `pgdyno --listen 127.0.0.1:<free port> <args...>`, ready for clients.
    pub async fn start(args: &[&str]) -> Pgdyno {
        Pgdyno::launch(Launch { args, env: &[] }).await
    }

    pub async fn launch(launch: Launch<'_>) -> Pgdyno {
        let mut last_log = String::new();
        for _ in 0..3 {
            match Pgdyno::launch_on(free_port(), &launch).await {
                Ok(pgdyno) => return pgdyno,
                // Another process may have taken the port: try another.
                Err(log) if log.to_lowercase().contains("in use") => last_log = log,
                Err(log) => panic!("pgdyno did not start:\n--- pgdyno log ---\n{log}"),
            }
        }
        panic!("pgdyno could not find a free port:\n{last_log}");
    }

    /// pgdyno on `port` (another may listen there too, with
    /// `so_reuseport`); its log if it did not start listening.
    pub async fn launch_on(port: u16, launch: &Launch<'_>) -> Result<Pgdyno, String> {
        let dir = scratch_dir("pgdyno");
        let listen = format!("127.0.0.1:{port}");
        let mut child = command(&dir, launch)
            .args(["--listen", &listen])
            .spawn()
            .expect("spawn pgdyno");
        std::fs::write(dir.join("pgdyno.pid"), child.id().to_string()).expect("pid file");
        match wait_until_listening(&mut child, port).await {
            Ok(()) => Ok(Pgdyno { child, port, dir }),
            Err(why) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = read_log(&dir);
                let _ = std::fs::remove_dir_all(&dir);
                Err(format!("{why}\n{log}"))
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The pgdyno process's id (for /proc and prlimit).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Client settings for this pgdyno: user `app`, the right password.
    pub fn config(&self, db: &str) -> tokio_postgres::Config {
        self.config_as(db, APP_USER, APP_PASSWORD)
    }

    pub fn config_as(&self, db: &str, user: &str, password: &str) -> tokio_postgres::Config {
        let mut config = self.config_without_host(db, user, password);
        config.host("127.0.0.1");
        config
    }

    /// As `config_as`, over the Unix socket in `dir` only (adding
    /// `host_path` to `config_as` would try TCP first).
    pub fn unix_config_as(
        &self,
        dir: &std::path::Path,
        db: &str,
        user: &str,
        password: &str,
    ) -> tokio_postgres::Config {
        let mut config = self.config_without_host(db, user, password);
        config.host_path(dir);
        config
    }

    /// Waits (5 s at most) for pgdyno's Unix socket in `dir`.
    pub async fn wait_for_socket(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let socket = dir.join(format!(".s.PGSQL.{}", self.port));
        for _ in 0..50 {
            if socket.exists() {
                return socket;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no socket at {}", socket.display());
    }

    fn config_without_host(&self, db: &str, user: &str, password: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(db)
            .application_name("pgdyno-it")
            .connect_timeout(Duration::from_secs(5));
        config
    }

    /// Connects as `app` to database `db` through pgdyno, panicking on
    /// error (the log is printed when this `Pgdyno` drops).
    pub async fn connect(&self, db: &str) -> tokio_postgres::Client {
        match super::connect(&self.config(db)).await {
            Ok(client) => client,
            Err(e) => panic!(
                "connecting through pgdyno to {db}: {e} ({:?})",
                e.as_db_error()
            ),
        }
    }

    /// Logs in as `app` to database `db` with hand-written protocol bytes.
    pub async fn connect_raw(&self, db: &str) -> super::RawConn {
        let mut raw = super::RawConn::connect(self.port).await;
        if let Err(e) = raw.login(APP_USER, APP_PASSWORD, db).await {
            panic!("raw login through pgdyno to {db}: {e:?}");
        }
        raw
    }

    /// Whether the pgdyno process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("poll pgdyno").is_none()
    }

    /// Sends signal `name` (`HUP`, `TERM`...) to the pgdyno process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} pgdyno failed");
    }

    /// Everything pgdyno printed so far.
    pub fn log(&self) -> String {
        read_log(&self.dir)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.dir.join("pgdyno.pid"));
    }
}

impl Drop for Pgdyno {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() || std::env::var_os("PGDYNO_IT_SHOW_LOG").is_some() {
            eprintln!(
                "--- pgdyno log (port {}) ---\n{}--- end of pgdyno log ---",
                self.port,
                self.log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs pgdyno with exactly these arguments and waits (up to 10 s) for it to
/// exit; returns its exit status (None if it had to be killed) and output.
pub async fn run_to_exit(launch: Launch<'_>) -> (Option<ExitStatus>, String) {
    let dir = scratch_dir("pgdyno");
    let mut child = command(&dir, &launch).spawn().expect("spawn pgdyno");
    std::fs::write(dir.join("pgdyno.pid"), child.id().to_string()).expect("pid file");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll pgdyno") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = std::fs::remove_file(dir.join("pgdyno.pid"));
    let log = read_log(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    (status, log)
}

async fn wait_until_listening(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("poll pgdyno") {
            return Err(format!("it exited with {status}"));
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("its port accepted no connection within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("pgdyno.log")).unwrap_or_default()
}

fn command(dir: &Path, launch: &Launch<'_>) -> Command {
    let log = File::create(dir.join("pgdyno.log")).expect("create pgdyno.log");
    let bin = std::env::var_os("PGDYNO_IT_BIN").unwrap_or(env!("CARGO_BIN_EXE_pgdyno").into());
    let mut cmd = Command::new(bin);
    // Only what the test sets may configure pgdyno.
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str() {
            if key.starts_with("PGDYNO_") || key == "DATABASE_URL" {
                cmd.env_remove(key);
            }
        }
    }
    clear_pg_env(&mut cmd);
    cmd.args(launch.args)
        .envs(launch.env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log fd"))
        .stderr(log);
    cmd
}
