//! The test harness: a real PostgreSQL cluster, a real pgdyno process, and
//! clients to talk to both.
//!
//! - `cluster`: initdb + postgres in a temp dir (as `nobody` when run as root).
//! - `pgdyno`: starts the binary under test on a free port, kills it on drop.
//! - `client`: tokio-postgres, psql and pgbench pointed at pgdyno.
//! - `raw`: hand-written protocol bytes for the cases no driver will send.
//! - `extended`: the extended query protocol message by message (`Batch`).
//! - `tls`: certificates made at test time, rustls clients, a tokio-postgres
//!   TLS connector with channel binding.
//! - `faults`: a TCP relay between pgdyno and PostgreSQL that cuts, stalls,
//!   truncates or refuses connections on command.
//!
//! Everything a test run creates lives under one scratch directory,
//! `$TMPDIR/pgdyno-it-<pid>`. A small shell watchdog (the janitor) waits for
//! this process to exit, however it exits, then stops every PostgreSQL and
//! pgdyno it left behind and removes that directory: statics never drop.

mod client;
mod cluster;
mod extended;
mod faults;
mod pgdyno;
mod raw;
mod tls;

pub use client::*;
pub use cluster::*;
pub use extended::*;
pub use faults::*;
pub use pgdyno::*;
pub use raw::*;
pub use tls::*;

use std::collections::HashSet;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Runs `fut`, failing the test if it takes longer than `secs` seconds, so a
/// hang shows up as a failure rather than a stuck CI job.
/// The test's future is still alive when the panic starts, so a `Pgdyno`
/// in it sees the panic when dropped, and prints its log.
pub async fn within<F: Future>(secs: u64, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    tokio::select! {
        out = &mut fut => out,
        () = tokio::time::sleep(Duration::from_secs(secs)) => {
            panic!("test did not finish within {secs} s")
        }
    }
}

/// The scratch directory of this test process; the first call starts the
/// janitor that cleans it up after the process exits.
fn scratch_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("pgdyno-it-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("create scratch dir");
        start_janitor(&root);
        root
    })
}

/// A fresh, empty directory for one cluster or one pgdyno.
pub fn scratch_dir(prefix: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = scratch_root().join(format!("{prefix}-{n}"));
    std::fs::create_dir_all(&dir).expect("create scratch subdir");
    dir
}

/// Once this test process is gone: SIGKILL each pgdyno whose pid file is
/// still there (a dropped `Pgdyno` removes its own), fast-shutdown each
/// PostgreSQL still running (its postmaster.pid exists only while it runs),
/// wait for them, then delete the scratch directory.
fn start_janitor(root: &Path) {
    const SCRIPT: &str = r#"
root="$1"; test_pid="$2"
while kill -0 "$test_pid" 2>/dev/null; do sleep 1; done
for f in "$root"/*/pgdyno.pid; do
  [ -f "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null
done
for f in "$root"/*/data/postmaster.pid; do
  [ -f "$f" ] && kill -INT "$(head -n 1 "$f")" 2>/dev/null
done
i=0
while [ $i -lt 150 ] && ls "$root"/*/data/postmaster.pid >/dev/null 2>&1; do
  sleep 0.2; i=$((i+1))
done
rm -rf "$root"
"#;
    let mut janitor = Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("janitor")
        .arg(root)
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start janitor shell");
    // It outlives us; a thread parked on it keeps it from being a zombie
    // should it ever end first.
    std::thread::spawn(move || janitor.wait());
}

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process
/// has not handed out before (tests run in parallel threads).
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        let mut seen = HANDED_OUT.lock().unwrap();
        if seen.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// The executable `name`: from PATH, else from the newest
/// /usr/lib/postgresql/<version>/bin (Debian keeps the server tools there).
pub fn pg_tool(name: &str) -> PathBuf {
    if let Some(found) = on_path(name) {
        return found;
    }
    newest_pg_bin_dir()
        .map(|dir| dir.join(name))
        .filter(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("`{name}` not found on PATH or in /usr/lib/postgresql/*/bin: install PostgreSQL (apt-get install postgresql)")
        })
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn newest_pg_bin_dir() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

/// Polls `check` every 50 ms until it returns true, failing with `what`
/// after `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} (waited {secs} s)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
