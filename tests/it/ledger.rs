//! "Nothing lost, nothing mixed", as a ledger: thirty clients on a pool of
//! five (transaction mode) each insert rows tagged with their own name in
//! transactions that commit, roll back on purpose or fail on purpose, and
//! read back only their own, while a chaos schedule reloads pgdyno
//! (SIGHUP, the pool resized 5 -> 4 -> 5 -> 4), restarts PostgreSQL,
//! cancels queries (half of them aimed at a client asleep inside its
//! transaction, so that they land) and drops client sockets at random, and
//! finally sends SIGINT and lets pgdyno drain.
//!
//! Each client keeps a ledger of what it saw: committed (COMMIT answered
//! without error), rolled back, failed (an error before COMMIT was sent),
//! or unknown (an error on COMMIT itself: either outcome is allowed). Every
//! transaction also checks the client's session parameters
//! (`application_name` set to its tag, `IntervalStyle`), its own named
//! prepared statement (whose text holds its tag: tokio-postgres calls
//! every client's first statement `s0`, so only pgdyno's renaming keeps
//! them apart) and its own rows, and classifies every error: a query
//! cancel (57014) must follow a cancel sent to that client, anything but
//! connection, shutdown and deliberate errors is a violation.
//!
//! Afterwards PostgreSQL itself is asked: every committed transaction's
//! rows are all there, none of a rolled-back or failed one, nothing that
//! no client wrote, and an unknown one is all or nothing. Randomness (a
//! fixed seed) only shapes the timing; the assertions do not depend on it.

use crate::harness::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::AbortHandle;
use tokio_postgres::{CancelToken, Client, NoTls, Statement};

const SEED: u64 = 0x1ed6e5;
const CLIENTS: usize = 30;
const CHAOS: Duration = Duration::from_secs(20);
const STYLES: [&str; 4] = ["postgres", "postgres_verbose", "sql_standard", "iso_8601"];

/// What the chaos schedule and the clients share.
struct Shared {
    /// One per client: how to cancel its query and how to drop its socket.
    handles: Vec<Mutex<Option<(CancelToken, AbortHandle)>>>,
    /// Cancels sent to each client, and the 57014s it has accounted for.
    cancels_sent: Vec<AtomicU64>,
    cancels_seen: Vec<AtomicU64>,
    /// Whether each client is inside its transaction's sleep (so holds a
    /// backend, and a cancel would land).
    sleeping: Vec<AtomicBool>,
    restarted: AtomicBool,
    /// SIGINT was sent: a failed connect now ends the client.
    draining: AtomicBool,
    /// Start no more transactions.
    stop: AtomicBool,
}

/// One client's view of its transactions: txn number -> rows inserted.
#[derive(Default)]
struct Ledger {
    committed: BTreeMap<i64, i64>,
    rolled_back: BTreeMap<i64, i64>,
    failed: BTreeMap<i64, i64>,
    unknown: BTreeMap<i64, i64>,
    violations: Vec<String>,
    committed_after_restart: usize,
    reconnects: usize,
    cancelled: usize,
    /// Errors seen, by SQLSTATE ("io" for a broken connection).
    errors: BTreeMap<String, usize>,
}

/// What a transaction is meant to do.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Plan {
    Commit,
    Rollback,
    Fail,
}

struct Conn {
    client: Client,
    /// `SELECT '<tag>', application_name, IntervalStyle, own txns`.
    mine: Statement,
}

struct Me {
    n: usize,
    tag: String,
    style: &'static str,
    shared: Arc<Shared>,
    config: tokio_postgres::Config,
}

impl Me {
    /// Checks an error: connection and shutdown errors are expected under
    /// chaos, a 57014 only after a cancel was sent to this client, and 22012
    /// or 23505 only where the transaction fails on purpose.
    fn judge(&self, ledger: &mut Ledger, e: &tokio_postgres::Error, deliberate: bool, what: &str) {
        *ledger
            .errors
            .entry(sqlstate(e).unwrap_or("io").to_owned())
            .or_default() += 1;
        let Some(code) = sqlstate(e) else { return };
        match code {
            "57014" => {
                let seen = self.shared.cancels_seen[self.n].fetch_add(1, Ordering::SeqCst);
                ledger.cancelled += 1;
                if seen >= self.shared.cancels_sent[self.n].load(Ordering::SeqCst) {
                    ledger.violations.push(format!(
                        "{}: {what}: a query cancel that was not sent to this client: {e}",
                        self.tag
                    ));
                }
            }
            c if c.starts_with("08") || c.starts_with("57P") => {}
            "22012" | "23505" if deliberate => {}
            _ => ledger.violations.push(format!(
                "{}: {what}: unexpected error {code}: {e} ({:?})",
                self.tag,
                e.as_db_error()
            )),
        }
    }

    async fn open(&self) -> Result<Conn, String> {
        let connecting = tokio::time::timeout(Duration::from_secs(10), self.config.connect(NoTls));
        let (client, connection) = match connecting.await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("connect timed out".into()),
        };
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        *self.shared.handles[self.n].lock().unwrap() =
            Some((client.cancel_token(), task.abort_handle()));
        let setup = format!(
            "SET application_name = '{}'; SET IntervalStyle = '{}'",
            self.tag, self.style
        );
        client
            .batch_execute(&setup)
            .await
            .map_err(|e| e.to_string())?;
        let mine = client
            .prepare(&format!(
                "SELECT '{}'::text, current_setting('application_name'), \
                 current_setting('IntervalStyle'), \
                 array(SELECT txn FROM ledger WHERE tag = $1::text ORDER BY txn, n)",
                self.tag
            ))
            .await
            .map_err(|e| e.to_string())?;
        Ok(Conn { client, mine })
    }

    /// Reads this client's rows in the open transaction `txn` (which has
    /// inserted `rows` rows) and checks them against the ledger.
    async fn check_own(
        &self,
        conn: &Conn,
        ledger: &mut Ledger,
        txn: i64,
        rows: i64,
    ) -> Result<(), tokio_postgres::Error> {
        let row = conn.client.query_one(&conn.mine, &[&self.tag]).await?;
        let (tag, app, style): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let txns: Vec<i64> = row.get(3);
        if tag != self.tag || app != self.tag || style != self.style {
            ledger.violations.push(format!(
                "{}: prepared statement said tag {tag}, application_name {app}, \
                 IntervalStyle {style} (want {}, {}, {})",
                self.tag, self.tag, self.tag, self.style
            ));
        }
        let mut seen: BTreeMap<i64, i64> = BTreeMap::new();
        for t in txns {
            *seen.entry(t).or_default() += 1;
        }
        for (t, n) in &ledger.committed {
            if seen.get(t) != Some(n) {
                ledger.violations.push(format!(
                    "{}: committed txn {t} ({n} rows) reads back as {:?} rows",
                    self.tag,
                    seen.get(t)
                ));
            }
        }
        for (t, n) in &seen {
            let expected = if *t == txn {
                Some(&rows)
            } else {
                ledger.committed.get(t).or(ledger.unknown.get(t))
            };
            if expected != Some(n) {
                ledger.violations.push(format!(
                    "{}: reads {n} rows of txn {t}, expected {expected:?}",
                    self.tag
                ));
            }
        }
        // The simple protocol too: a literal that names this client.
        let sql = format!(
            "SELECT '{}', current_setting('application_name'), count(*) \
             FROM ledger WHERE tag = '{}' AND txn = {txn}",
            self.tag, self.tag
        );
        let got: Vec<String> = conn
            .client
            .simple_query(&sql)
            .await?
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..3)
                        .map(|i| r.get(i).unwrap_or_default().to_owned())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                _ => None,
            })
            .collect();
        let want = format!("{},{},{rows}", self.tag, self.tag);
        if got != [want.clone()] {
            ledger.violations.push(format!(
                "{}: simple query read {got:?}, want {want}",
                self.tag
            ));
        }
        Ok(())
    }

    /// BEGIN, inserts, checks, maybe a sleep (something to cancel), then
    /// the plan's ending. Returns where the transaction goes in the ledger.
    async fn transaction(
        &self,
        conn: &Conn,
        ledger: &mut Ledger,
        txn: i64,
        rows: i64,
        sleep: bool,
    ) -> Result<(), tokio_postgres::Error> {
        let c = &conn.client;
        c.batch_execute("BEGIN").await?;
        for n in 0..rows {
            if n % 2 == 0 {
                // Extended protocol: tokio-postgres prepares a named
                // statement for it, then closes it.
                c.execute(
                    "INSERT INTO ledger (tag, txn, n) VALUES ($1, $2, $3)",
                    &[&self.tag, &txn, &n],
                )
                .await?;
            } else {
                let sql = format!(
                    "INSERT INTO ledger (tag, txn, n) VALUES ('{}', {txn}, {n})",
                    self.tag
                );
                c.batch_execute(&sql).await?;
            }
        }
        if sleep {
            self.shared.sleeping[self.n].store(true, Ordering::SeqCst);
            let slept = c.batch_execute("SELECT pg_sleep(0.05)").await;
            self.shared.sleeping[self.n].store(false, Ordering::SeqCst);
            slept?;
        }
        self.check_own(conn, ledger, txn, rows).await
    }
}

/// One client: transactions until told to stop, reconnecting when its
/// connection breaks (until pgdyno drains).
async fn client(me: Me) -> Ledger {
    let mut rng = StdRng::seed_from_u64(SEED ^ me.n as u64);
    let mut ledger = Ledger::default();
    let mut conn: Option<Conn> = None;
    let mut txn = 0i64;
    while !me.shared.stop.load(Ordering::SeqCst) {
        let Some(c) = conn.as_ref().filter(|c| !c.client.is_closed()) else {
            conn = None;
            match me.open().await {
                Ok(c) => {
                    conn = Some(c);
                    ledger.reconnects += 1;
                }
                Err(_) if me.shared.draining.load(Ordering::SeqCst) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            continue;
        };
        txn += 1;
        let rows = rng.random_range(1..=3i64);
        let plan = match rng.random_range(0..20) {
            0..=2 => Plan::Rollback,
            3..=5 => Plan::Fail,
            _ => Plan::Commit,
        };
        let sleep = rng.random_bool(0.3);
        match me.transaction(c, &mut ledger, txn, rows, sleep).await {
            Err(e) => {
                me.judge(&mut ledger, &e, false, "in a transaction");
                ledger.failed.insert(txn, rows);
                let _ = c.client.batch_execute("ROLLBACK").await;
            }
            Ok(()) => finish(&me, c, &mut ledger, txn, rows, plan).await,
        }
    }
    *me.shared.handles[me.n].lock().unwrap() = None;
    ledger
}

/// Ends an open transaction as planned and writes down how it ended.
async fn finish(me: &Me, c: &Conn, ledger: &mut Ledger, txn: i64, rows: i64, plan: Plan) {
    match plan {
        Plan::Commit => match c.client.batch_execute("COMMIT").await {
            Ok(()) => {
                ledger.committed.insert(txn, rows);
                if me.shared.restarted.load(Ordering::SeqCst) {
                    ledger.committed_after_restart += 1;
                }
            }
            Err(e) => {
                me.judge(ledger, &e, false, "COMMIT");
                ledger.unknown.insert(txn, rows);
            }
        },
        Plan::Rollback => {
            if let Err(e) = c.client.batch_execute("ROLLBACK").await {
                me.judge(ledger, &e, false, "ROLLBACK");
            }
            ledger.rolled_back.insert(txn, rows);
        }
        Plan::Fail => {
            // Half divide by zero, half a duplicate key.
            let sql = if txn % 2 == 0 {
                "SELECT 1/0".to_owned()
            } else {
                format!(
                    "INSERT INTO ledger (tag, txn, n) VALUES ('{}', {txn}, 0)",
                    me.tag
                )
            };
            match c.client.batch_execute(&sql).await {
                Ok(()) => ledger
                    .violations
                    .push(format!("{}: `{sql}` succeeded", me.tag)),
                Err(e) => me.judge(ledger, &e, true, "the deliberate error"),
            }
            ledger.failed.insert(txn, rows);
            let _ = c.client.batch_execute("ROLLBACK").await;
        }
    }
}

fn write_config(path: &Path, url: &str, pool_size: u32) {
    let text = format!(
        "pool_mode = \"transaction\"\ndefault_pool_size = {pool_size}\n\
         max_client_conn = 200\nquery_wait_timeout = 20\nserver_connect_timeout = 2\n\
         server_login_retry = 0.5\nshutdown_timeout = 10\n\
         [databases]\n{APP_DB} = \"{url}\"\n"
    );
    std::fs::write(path, text).expect("write pgdyno.toml");
}

/// Reloads, one PostgreSQL restart, random cancels and dropped sockets;
/// then SIGINT.
async fn chaos(pgdyno: &Pgdyno, cluster: &Cluster, shared: &Shared, config: &Path) {
    let mut rng = StdRng::seed_from_u64(SEED);
    let url = cluster.url(APP_DB);
    let started = tokio::time::Instant::now();
    let (mut reloads, mut restarted) = (0, false);
    while started.elapsed() < CHAOS {
        let t = started.elapsed().as_secs_f64();
        if reloads < 3 && t > 2.0 + 5.0 * reloads as f64 {
            reloads += 1;
            write_config(config, &url, if reloads % 2 == 1 { 4 } else { 5 });
            pgdyno.signal("HUP");
        }
        if !restarted && t > 8.0 {
            restarted = true;
            tokio::task::block_in_place(|| {
                cluster.stop();
                std::thread::sleep(Duration::from_millis(500));
                cluster.start();
            });
            shared.restarted.store(true, Ordering::SeqCst);
        }
        // Half the time, a client that is sure to be running a query.
        let asleep: Vec<usize> = (0..CLIENTS)
            .filter(|&n| shared.sleeping[n].load(Ordering::SeqCst))
            .collect();
        let n = match asleep.len() {
            0 => rng.random_range(0..CLIENTS),
            k if rng.random_bool(0.5) => asleep[rng.random_range(0..k)],
            _ => rng.random_range(0..CLIENTS),
        };
        let target = shared.handles[n].lock().unwrap().clone();
        if let Some((cancel, abort)) = target {
            match rng.random_range(0..10) {
                0..=5 => {
                    shared.cancels_sent[n].fetch_add(1, Ordering::SeqCst);
                    let _ = cancel.cancel_query(NoTls).await;
                }
                6..=7 => abort.abort(),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..300))).await;
    }
    shared.draining.store(true, Ordering::SeqCst);
    pgdyno.signal("INT");
}

/// Rows per (tag, txn) as PostgreSQL has them.
async fn table(cluster: &Cluster) -> BTreeMap<(String, i64), i64> {
    let direct = cluster.direct(APP_DB).await;
    direct
        .query(
            "SELECT tag, txn, count(*) FROM ledger GROUP BY tag, txn",
            &[],
        )
        .await
        .expect("read the ledger table")
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect()
}

/// Compares each client's ledger with the table; returns the violations.
fn audit(ledgers: &[(String, Ledger)], table: &BTreeMap<(String, i64), i64>) -> Vec<String> {
    let mut bad = Vec::new();
    for (tag, l) in ledgers {
        bad.extend(l.violations.iter().cloned());
        let have = |t: &i64| table.get(&(tag.clone(), *t)).copied();
        for (t, n) in &l.committed {
            if have(t) != Some(*n) {
                bad.push(format!(
                    "{tag}: committed txn {t} ({n} rows) has {:?} rows",
                    have(t)
                ));
            }
        }
        for (what, txns) in [("rolled-back", &l.rolled_back), ("failed", &l.failed)] {
            for t in txns.keys().filter(|t| have(t).is_some()) {
                bad.push(format!("{tag}: {what} txn {t} has {:?} rows", have(t)));
            }
        }
        for (t, n) in &l.unknown {
            if have(t).is_some_and(|h| h != *n) {
                bad.push(format!("{tag}: unknown txn {t}: {:?} of {n} rows", have(t)));
            }
        }
    }
    for ((tag, t), n) in table {
        let known = ledgers
            .iter()
            .any(|(lt, l)| lt == tag && (l.committed.contains_key(t) || l.unknown.contains_key(t)));
        if !known {
            bad.push(format!(
                "{n} rows of {tag} txn {t} that no client committed"
            ));
        }
    }
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_lost_nothing_mixed_under_chaos() {
    within(150, async {
        let cluster = Cluster::dedicated();
        cluster
            .direct(APP_DB)
            .await
            .batch_execute(
                "CREATE TABLE ledger (tag text, txn bigint, n bigint, PRIMARY KEY (tag, txn, n))",
            )
            .await
            .expect("create the ledger table");
        let config = scratch_dir("ledger").join("pgdyno.toml");
        write_config(&config, &cluster.url(APP_DB), 5);
        let mut pgdyno = Pgdyno::start(&["--config", config.to_str().unwrap()]).await;
        let shared = Arc::new(Shared {
            handles: (0..CLIENTS).map(|_| Mutex::new(None)).collect(),
            cancels_sent: (0..CLIENTS).map(|_| AtomicU64::new(0)).collect(),
            cancels_seen: (0..CLIENTS).map(|_| AtomicU64::new(0)).collect(),
            sleeping: (0..CLIENTS).map(|_| AtomicBool::new(false)).collect(),
            restarted: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|n| {
                let me = Me {
                    n,
                    tag: format!("c{n:02}"),
                    style: STYLES[n % STYLES.len()],
                    shared: shared.clone(),
                    config: pgdyno.config(APP_DB),
                };
                tokio::spawn(async move { (me.tag.clone(), client(me).await) })
            })
            .collect();

        chaos(&pgdyno, &cluster, &shared, &config).await;
        // The drain: transactions in flight finish, then pgdyno exits.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while pgdyno.is_running() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "pgdyno still running 20 s after SIGINT"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        shared.stop.store(true, Ordering::SeqCst);
        let mut ledgers = Vec::new();
        for task in tasks {
            ledgers.push(task.await.expect("client task"));
        }

        let table = table(&cluster).await;
        let sum = |f: fn(&Ledger) -> usize| ledgers.iter().map(|(_, l)| f(l)).sum::<usize>();
        eprintln!(
            "ledger: {} committed ({} after the restart), {} rolled back, {} failed, \
             {} unknown, {} cancelled, {} connections; {} transactions in the table",
            sum(|l| l.committed.len()),
            sum(|l| l.committed_after_restart),
            sum(|l| l.rolled_back.len()),
            sum(|l| l.failed.len()),
            sum(|l| l.unknown.len()),
            sum(|l| l.cancelled),
            sum(|l| l.reconnects),
            table.len()
        );
        let mut errors: BTreeMap<&str, usize> = BTreeMap::new();
        for (code, n) in ledgers.iter().flat_map(|(_, l)| &l.errors) {
            *errors.entry(code).or_default() += n;
        }
        eprintln!("errors seen by SQLSTATE: {errors:?}");
        let bad = audit(&ledgers, &table);
        assert!(
            bad.is_empty(),
            "{} violations:\n{}",
            bad.len(),
            bad.join("\n")
        );
        assert!(sum(|l| l.committed.len()) > 0, "nothing committed at all");
        assert!(
            sum(|l| l.committed_after_restart) > 0,
            "nothing committed after PostgreSQL restarted"
        );
    })
    .await
}
