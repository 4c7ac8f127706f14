//! A throwaway PostgreSQL cluster: initdb into a scratch directory, SCRAM
//! authentication, a free port on 127.0.0.1, a Unix socket beside the data
//! directory, fsync off. As root, PostgreSQL runs as `nobody` (it refuses to
//! run as root). One shared cluster serves every test that leaves it intact;
//! a test that stops PostgreSQL starts its own with `Cluster::dedicated`.
//!
//! Clusters with `ssl = on` (`Cluster::shared_tls`, `Cluster::dedicated_tls`)
//! present a certificate from `harness::tls`, trust the test CA for client
//! certificates, accept TLS and plaintext alike, except on database
//! `CERT_DB`, which `app` may enter only over TLS with a client certificate
//! from the test CA whose CN is `app`.
//!
//! Each cluster has the role `app` (password `app-secret`) owning the
//! database `appdb`, and the superuser `postgres` for looking behind
//! pgdyno's back (pg_stat_activity, setup).

use super::{free_port, pg_tool, scratch_dir, test_certs, CertKey};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app-secret";
pub const APP_DB: &str = "appdb";
/// The one role PostgreSQL authenticates with md5 rather than SCRAM.
pub const MD5_ROLE: &str = "md5_user";
/// On TLS clusters: the database that wants a client certificate.
pub const CERT_DB: &str = "certdb";
const SUPERUSER: &str = "postgres";
const SUPERUSER_PASSWORD: &str = "super-secret";

pub struct Cluster {
    dir: PathBuf,
    port: Mutex<u16>,
    /// uid/gid PostgreSQL runs as: `nobody` when we are root, else ourselves.
    owner: Option<(u32, u32)>,
    postmaster: Mutex<Option<Child>>,
}

impl Cluster {
    /// The cluster shared by the whole test run, started on first use.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| Cluster::create(None))
    }

    /// The TLS cluster shared by the tests that leave it intact: it
    /// presents `test_certs().server` (127.0.0.1 and localhost, from the
    /// test CA).
    pub fn shared_tls() -> &'static Cluster {
        static SHARED_TLS: OnceLock<Cluster> = OnceLock::new();
        SHARED_TLS.get_or_init(|| Cluster::create(Some(&test_certs().server)))
    }

    /// A TLS cluster of one's own presenting `cert`, for tests that change
    /// its certificate (`present_cert`).
    pub fn dedicated_tls(cert: &CertKey) -> Cluster {
        Cluster::create(Some(cert))
    }

    /// A cluster of one's own, for tests that stop or restart PostgreSQL.
    /// Stopped and deleted on drop.
    pub fn dedicated() -> Cluster {
        Cluster::create(None)
    }

    fn create(tls: Option<&CertKey>) -> Cluster {
        let dir = scratch_dir("pg");
        let owner = postgres_owner();
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, format!("{SUPERUSER_PASSWORD}\n")).expect("write pwfile");
        if let Some((uid, gid)) = owner {
            for path in [&dir, &pwfile] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to nobody");
            }
        }
        let mut initdb = Command::new(pg_tool("initdb"));
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", SUPERUSER, "--auth=scram-sha-256", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()));
        run_as(&mut initdb, owner, &dir);
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // One role logs in with md5 (its password is stored as md5), for
        // auth_file entries that only have an md5 secret.
        let hba = dir.join("data/pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        std::fs::write(
            &hba,
            format!("host all {MD5_ROLE} 127.0.0.1/32 md5\n{rules}"),
        )
        .expect("write pg_hba.conf");
        let mut conf = OpenOptions::new()
            .append(true)
            .open(dir.join("data/postgresql.conf"))
            .expect("open postgresql.conf");
        write!(
            conf,
            "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             max_connections = 200\nshared_buffers = 32MB\n",
            dir.display()
        )
        .expect("append postgresql.conf");
        if let Some(cert) = tls {
            enable_tls(&dir, owner, cert);
        }

        let cluster = Cluster {
            dir,
            port: Mutex::new(0),
            owner,
            postmaster: Mutex::new(None),
        };
        cluster.start_on_some_port();
        cluster.psql_admin(&[
            &format!("CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'"),
            &format!("CREATE DATABASE {APP_DB} OWNER {APP_USER}"),
        ]);
        if tls.is_some() {
            cluster.psql_admin(&[&format!("CREATE DATABASE {CERT_DB} OWNER {APP_USER}")]);
        }
        cluster
    }

    /// Makes a running TLS cluster present `cert` to new connections
    /// (ssl_cert_file, ssl_key_file, reload), returning once it does.
    pub fn present_cert(&self, cert: &CertKey) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let (cert_file, key_file) =
            install_cert(&self.dir, self.owner, cert, &format!("server-{n}"));
        let cert_file = cert_file.display().to_string();
        self.psql_admin(&[
            &format!("ALTER SYSTEM SET ssl_cert_file = '{cert_file}'"),
            &format!("ALTER SYSTEM SET ssl_key_file = '{}'", key_file.display()),
            "SELECT pg_reload_conf()",
        ]);
        // The postmaster reloads the certificate in the same breath as the
        // settings: a new session that sees the new file gets the new cert.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.psql_value("SHOW ssl_cert_file") != cert_file {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not take ssl_cert_file = {cert_file} within 10 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The single value `sql` returns, through psql as the superuser.
    fn psql_value(&self, sql: &str) -> String {
        let out = self
            .psql_command()
            .args(["-Atc", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed on {sql}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A new cluster's first start: if the port we picked was taken in the
    /// meantime, pick another.
    fn start_on_some_port(&self) {
        for _ in 0..3 {
            *self.port.lock().unwrap() = free_port();
            if self.try_start().is_ok() {
                return;
            }
        }
        panic!("PostgreSQL did not start:\n{}", self.log());
    }

    /// Starts PostgreSQL again on the same port and data directory.
    pub fn start(&self) {
        if let Err(why) = self.try_start() {
            panic!("PostgreSQL did not restart ({why}):\n{}", self.log());
        }
    }

    fn try_start(&self) -> Result<(), String> {
        let mut guard = self.postmaster.lock().unwrap();
        assert!(guard.is_none(), "PostgreSQL is already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))
            .expect("open postgres.log");
        let mut cmd = Command::new(pg_tool("postgres"));
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-p")
            .arg(self.port().to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log);
        run_as(&mut cmd, self.owner, &self.dir);
        let mut child = cmd.spawn().expect("spawn postgres");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("poll postgres") {
                return Err(format!("postgres exited with {status}"));
            }
            if self.accepts_logins() {
                *guard = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = Command::new("kill").arg(child.id().to_string()).status();
                let _ = child.wait();
                return Err("not ready within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn accepts_logins(&self) -> bool {
        self.psql_command()
            .args(["-Atc", "SELECT 1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Fast shutdown (SIGINT to the postmaster), waiting until it is gone.
    pub fn stop(&self) {
        let Some(mut child) = self.postmaster.lock().unwrap().take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().expect("poll postgres").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("PostgreSQL did not stop within 30 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        *self.port.lock().unwrap()
    }

    /// The postmaster's process id, while PostgreSQL runs.
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.postmaster.lock().unwrap().as_ref().map(Child::id)
    }

    /// Kills PostgreSQL as a crash would: SIGKILL to the postmaster and
    /// every process it started, none of them given a chance to say
    /// goodbye. Returns once they are all gone; `start` brings it back
    /// (through crash recovery).
    pub fn crash(&self) {
        let mut guard = self.postmaster.lock().unwrap();
        let mut child = guard.take().expect("PostgreSQL is not running");
        let pid = child.id();
        // Stopped first, so it starts no process while we list them.
        send_signal("STOP", &[pid]);
        let mut all = children_of(pid);
        all.push(pid);
        send_signal("KILL", &all);
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while all.iter().any(|&p| process_alive(p)) {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL processes survived SIGKILL for 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes PostgreSQL: SIGSTOP to the postmaster and every process it
    /// started. They resume (SIGCONT) when the returned guard is dropped
    /// or thawed, so a failing test never leaves PostgreSQL stopped.
    pub fn freeze(&self) -> Frozen<'_> {
        let pid = self.postmaster_pid().expect("PostgreSQL is not running");
        send_signal("STOP", &[pid]);
        let mut all = children_of(pid);
        send_signal("STOP", &all);
        all.push(pid);
        Frozen {
            _cluster: self,
            pids: all,
        }
    }

    /// The upstream URL pgdyno is given: the app role on database `db`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{}/{db}",
            self.port()
        )
    }

    /// Connects straight to PostgreSQL as the superuser.
    pub async fn admin(&self) -> Client {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port())
            .user(SUPERUSER)
            .password(SUPERUSER_PASSWORD)
            .dbname("postgres");
        super::connect(&config)
            .await
            .expect("superuser connection to PostgreSQL")
    }

    /// Connects straight to PostgreSQL (bypassing pgdyno) as `app`.
    pub async fn direct(&self, db: &str) -> Client {
        let (client, connection) = tokio_postgres::connect(&self.url(db), NoTls)
            .await
            .expect("direct connection to PostgreSQL");
        tokio::spawn(connection);
        client
    }

    /// Creates a database owned by `app`, for a test that counts the
    /// backends pgdyno opens and so must not share a database with others.
    pub async fn create_database(&self, name: &str) {
        self.admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name} OWNER {APP_USER}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    }

    /// How many client backends are connected to database `db` right now.
    pub async fn backends_on(&self, admin: &Client, db: &str) -> i64 {
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = $1 AND backend_type = 'client backend'",
                &[&db],
            )
            .await
            .expect("query pg_stat_activity")
            .get(0)
    }

    /// Runs statements as the superuser through psql, each in its own
    /// transaction, panicking on any error.
    pub fn psql_admin(&self, statements: &[&str]) {
        let mut cmd = self.psql_command();
        cmd.args(["-v", "ON_ERROR_STOP=1", "-q"]);
        for sql in statements {
            cmd.args(["-c", sql]);
        }
        let out = cmd.output().expect("run psql");
        assert!(
            out.status.success(),
            "psql failed on {statements:?}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn psql_command(&self) -> Command {
        let mut cmd = Command::new(pg_tool("psql"));
        super::clear_pg_env(&mut cmd);
        cmd.arg(format!(
            "host=127.0.0.1 port={} user={SUPERUSER} dbname=postgres connect_timeout=5",
            self.port()
        ))
        .env("PGPASSWORD", SUPERUSER_PASSWORD)
        .stdin(Stdio::null());
        cmd
    }

    /// PostgreSQL's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `ssl = on` with `cert`, client certificates checked against the test
/// CA, and pg_hba rules that let `app` into CERT_DB only over TLS with a
/// client certificate whose CN is `app`.
fn enable_tls(dir: &Path, owner: Option<(u32, u32)>, cert: &CertKey) {
    let (cert_file, key_file) = install_cert(dir, owner, cert, "server");
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, &test_certs().ca.cert_pem).expect("write ca.crt");
    chown(&ca_file, owner);
    let mut conf = OpenOptions::new()
        .append(true)
        .open(dir.join("data/postgresql.conf"))
        .expect("open postgresql.conf");
    write!(
        conf,
        "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\n",
        cert_file.display(),
        key_file.display(),
        ca_file.display()
    )
    .expect("append postgresql.conf");
    let hba = dir.join("data/pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    std::fs::write(
        &hba,
        format!(
            "hostssl {CERT_DB} {APP_USER} 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n\
             host {CERT_DB} all 127.0.0.1/32 reject\n{rules}"
        ),
    )
    .expect("write pg_hba.conf");
}

/// Copies `cert` into `dir` as `<stem>.crt` and `<stem>.key`, owned by the
/// PostgreSQL user, the key mode 0600 (PostgreSQL refuses a key others
/// can read).
fn install_cert(
    dir: &Path,
    owner: Option<(u32, u32)>,
    cert: &CertKey,
    stem: &str,
) -> (PathBuf, PathBuf) {
    let cert_file = dir.join(format!("{stem}.crt"));
    let key_file = dir.join(format!("{stem}.key"));
    std::fs::write(&cert_file, &cert.cert_pem).expect("write server certificate");
    std::fs::write(&key_file, &cert.key_pem).expect("write server key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
        .expect("chmod server key");
    chown(&cert_file, owner);
    chown(&key_file, owner);
    (cert_file, key_file)
}

fn chown(path: &Path, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to nobody");
    }
}

/// PostgreSQL will not run as root: when we are root, run it as `nobody`.
fn postgres_owner() -> Option<(u32, u32)> {
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok()?;
    if euid != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let fields: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .expect("running as root, but there is no `nobody` user to run PostgreSQL as")
        .split(':')
        .collect();
    Some((
        fields[2].parse().expect("nobody's uid"),
        fields[3].parse().expect("nobody's gid"),
    ))
}

fn run_as(cmd: &mut Command, owner: Option<(u32, u32)>, dir: &Path) {
    cmd.current_dir(dir).env_remove("PGDATA");
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid).env("HOME", dir);
    }
}

/// A frozen PostgreSQL (see `Cluster::freeze`); resumes it on drop.
pub struct Frozen<'a> {
    _cluster: &'a Cluster,
    pids: Vec<u32>,
}

impl Frozen<'_> {
    /// Resumes PostgreSQL (SIGCONT to every process frozen).
    pub fn thaw(self) {}
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        send_signal("CONT", &self.pids);
    }
}

/// `kill -<signal> <pids...>`; processes already gone are no error.
fn send_signal(signal: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

/// The processes whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|(_, ppid)| ppid == parent))
        .collect()
}

/// Whether `pid` exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// State and parent pid from /proc/<pid>/stat ("pid (comm) S ppid ...";
/// comm may hold spaces and parentheses, so fields count from the last ')').
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}
