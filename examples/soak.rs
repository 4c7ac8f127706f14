//! The soak client (driven by `benches/soak.sh`): CLIENTS connections to a
//! pgdyno for DURATION seconds, each looping over a random mix of simple,
//! extended and prepared queries, transactions that insert and read back
//! their own rows, COPY out and in, SET, deliberate errors and cancels,
//! checking every result. Every client's values carry its own tag, so a
//! result that belonged to another client is a mismatch.
//!
//! Usage: soak PORT CLIENTS DURATION_SECS
//! (env SOAK_USER, SOAK_PASSWORD, SOAK_DB, SOAK_SEED). Prints one summary
//! line per 10 s and a final report; exits 1 on any mismatch or unexpected
//! error, 2 on bad usage. Only talks to 127.0.0.1.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage, Statement};

const KINDS: [&str; 9] = [
    "simple", "extended", "prepared", "txn", "copy_out", "copy_in", "set", "error", "cancel",
];

#[derive(Default)]
struct Totals {
    ops: [AtomicU64; 9],
    /// Errors the mix asks for: 22012 from `error`, 57014 from `cancel`.
    expected_errors: AtomicU64,
    /// Cancels after which the sleep still ran to its end (not an error,
    /// but each one is worth a look: it should not happen).
    late_cancels: AtomicU64,
    reconnects: AtomicU64,
    /// Any other error, and any wrong result.
    unexpected: AtomicU64,
    mismatches: AtomicU64,
    examples: Mutex<Vec<String>>,
}

impl Totals {
    fn complain(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut examples = self.examples.lock().unwrap();
        if examples.len() < 20 {
            examples.push(what);
        }
    }
}

type Res<T> = Result<T, tokio_postgres::Error>;

struct Session {
    client: Client,
    tag: String,
    stmt: Statement,
    /// What application_name must read, after our last SET.
    app_name: String,
    seq: i64,
}

/// A wrong result: recorded, and the client carries on.
fn check(totals: &Totals, ok: bool, what: impl FnOnce() -> String) {
    if !ok {
        totals.complain(&totals.mismatches, what());
    }
}

fn rows(messages: Vec<SimpleQueryMessage>) -> Vec<Vec<String>> {
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or_default().to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

impl Session {
    async fn open(config: &Config, tag: &str) -> Res<Session> {
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(connection);
        let app_name = format!("{tag}-0");
        client
            .batch_execute(&format!("SET application_name = '{app_name}'"))
            .await?;
        let stmt = client
            .prepare(&format!("SELECT '{tag}'::text, $1::int8 * 2"))
            .await?;
        Ok(Session {
            client,
            tag: tag.to_owned(),
            stmt,
            app_name,
            seq: 0,
        })
    }

    /// Runs one operation of kind `kind`; Err only for errors it did not ask for.
    async fn op(&mut self, kind: usize, rng: &mut StdRng, totals: &Totals) -> Res<()> {
        self.seq += 1;
        let (tag, seq) = (self.tag.clone(), self.seq);
        let c = &self.client;
        match KINDS[kind] {
            "simple" => {
                let got = rows(
                    c.simple_query(&format!(
                        "SELECT '{tag}-{seq}', current_setting('application_name')"
                    ))
                    .await?,
                );
                let want = vec![vec![format!("{tag}-{seq}"), self.app_name.clone()]];
                check(totals, got == want, || {
                    format!("{tag}: simple {got:?} != {want:?}")
                });
            }
            "extended" => {
                let row = c
                    .query_one("SELECT $1::text || '!', $2::int8 + 1", &[&tag, &seq])
                    .await?;
                let (s, n): (String, i64) = (row.get(0), row.get(1));
                check(totals, s == format!("{tag}!") && n == seq + 1, || {
                    format!("{tag}: extended ({s}, {n}) for seq {seq}")
                });
            }
            "prepared" => {
                let row = c.query_one(&self.stmt, &[&seq]).await?;
                let (s, n): (String, i64) = (row.get(0), row.get(1));
                check(totals, s == tag && n == 2 * seq, || {
                    format!("{tag}: prepared ({s}, {n}) for seq {seq}")
                });
            }
            "txn" => {
                let n = rng.random_range(1..=3i64);
                let commit = rng.random_bool(0.5);
                let tx = self.client.transaction().await?;
                for i in 0..n {
                    tx.execute(
                        "INSERT INTO soak (tag, seq, i) VALUES ($1, $2, $3)",
                        &[&tag, &seq, &i],
                    )
                    .await?;
                }
                let row = tx
                    .query_one("SELECT count(*) FROM soak WHERE tag = $1", &[&tag])
                    .await?;
                let count: i64 = row.get(0);
                check(totals, count == n, || {
                    format!("{tag}: {count} own rows in txn {seq}, want {n}")
                });
                if commit {
                    tx.commit().await?;
                    let deleted = self
                        .client
                        .execute("DELETE FROM soak WHERE tag = $1", &[&tag])
                        .await?;
                    check(totals, deleted == n as u64, || {
                        format!("{tag}: deleted {deleted} committed rows, want {n}")
                    });
                } else {
                    tx.rollback().await?;
                }
            }
            "copy_out" => {
                let n = rng.random_range(1..=50);
                let sql =
                    format!("COPY (SELECT g, '{tag}' FROM generate_series(1, {n}) g) TO STDOUT");
                let stream = c.copy_out(&sql).await?;
                let mut stream = std::pin::pin!(stream);
                let mut text = Vec::new();
                while let Some(chunk) = stream.next().await {
                    text.extend_from_slice(&chunk?);
                }
                let want: String = (1..=n).map(|g| format!("{g}\t{tag}\n")).collect();
                check(totals, text == want.as_bytes(), || {
                    format!("{tag}: COPY OUT of {n} rows read {} bytes", text.len())
                });
            }
            "copy_in" => {
                let n = rng.random_range(1..=50i64);
                let tx = self.client.transaction().await?;
                let sink = tx.copy_in("COPY soak (tag, seq, i) FROM STDIN").await?;
                let mut sink = std::pin::pin!(sink);
                let data: String = (0..n).map(|i| format!("{tag}\t{seq}\t{i}\n")).collect();
                sink.send(Bytes::from(data)).await?;
                let copied = sink.as_mut().finish().await?;
                let row = tx
                    .query_one(
                        "SELECT count(*), count(DISTINCT tag) FROM soak WHERE seq = $1 AND tag = $2",
                        &[&seq, &tag],
                    )
                    .await?;
                let (count, tags): (i64, i64) = (row.get(0), row.get(1));
                check(
                    totals,
                    copied == n as u64 && count == n && tags == 1,
                    || format!("{tag}: COPY IN {n} rows: copied {copied}, read {count}"),
                );
                tx.rollback().await?;
            }
            "set" => {
                self.app_name = format!("{tag}-{seq}");
                c.batch_execute(&format!("SET application_name = '{}'", self.app_name))
                    .await?;
            }
            "error" => match c.simple_query("SELECT 1/0").await {
                Ok(_) => check(totals, false, || format!("{tag}: 1/0 succeeded")),
                Err(e) if e.code().map(|c| c.code()) == Some("22012") => {
                    totals.expected_errors.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            },
            "cancel" => {
                // Inside a transaction the client holds its backend, so the
                // cancel lands on the running sleep (not on a queued client).
                let tx = self.client.transaction().await?;
                let token = tx.cancel_token();
                let delay = Duration::from_millis(rng.random_range(20..100));
                let canceller = tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = token.cancel_query(NoTls).await;
                });
                let result = tx.simple_query("SELECT pg_sleep(2)").await;
                let _ = canceller.await;
                match result {
                    Ok(_) => {
                        totals.late_cancels.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.code().map(|c| c.code()) == Some("57014") => {
                        totals.expected_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e),
                }
                tx.rollback().await?;
            }
            _ => unreachable!(),
        }
        totals.ops[kind].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Relative weights of KINDS: mostly queries, some of everything else.
const WEIGHTS: [u32; 9] = [25, 20, 20, 12, 6, 6, 5, 4, 2];

fn pick(rng: &mut StdRng) -> usize {
    let mut x = rng.random_range(0..WEIGHTS.iter().sum::<u32>());
    for (i, w) in WEIGHTS.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    unreachable!()
}

async fn client(n: usize, config: Config, seed: u64, totals: Arc<Totals>, stop: Arc<AtomicBool>) {
    let mut rng = StdRng::seed_from_u64(seed ^ n as u64);
    let tag = format!("soak{n:04}");
    let mut session: Option<Session> = None;
    while !stop.load(Ordering::Relaxed) {
        let s = match session.as_mut() {
            Some(s) => s,
            None => match Session::open(&config, &tag).await {
                Ok(s) => {
                    totals.reconnects.fetch_add(1, Ordering::Relaxed);
                    session.insert(s)
                }
                Err(e) => {
                    totals.complain(&totals.unexpected, format!("{tag}: connect: {e}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let kind = pick(&mut rng);
        if let Err(e) = s.op(kind, &mut rng, &totals).await {
            let detail = e.as_db_error().map(|d| d.code().code().to_owned());
            totals.complain(
                &totals.unexpected,
                format!("{tag}: {}: {e} ({detail:?})", KINDS[kind]),
            );
            if s.client.is_closed() {
                session = None;
            }
        }
    }
}

fn summary(totals: &Totals, elapsed: Duration) -> String {
    let ops: Vec<String> = KINDS
        .iter()
        .zip(&totals.ops)
        .map(|(k, n)| format!("{k}={}", n.load(Ordering::Relaxed)))
        .collect();
    let total: u64 = totals.ops.iter().map(|n| n.load(Ordering::Relaxed)).sum();
    format!(
        "t={:.0}s ops={total} ({}) expected_errors={} late_cancels={} connections={} \
         unexpected_errors={} mismatches={}",
        elapsed.as_secs_f64(),
        ops.join(" "),
        totals.expected_errors.load(Ordering::Relaxed),
        totals.late_cancels.load(Ordering::Relaxed),
        totals.reconnects.load(Ordering::Relaxed),
        totals.unexpected.load(Ordering::Relaxed),
        totals.mismatches.load(Ordering::Relaxed),
    )
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [port, clients, secs] => port
            .parse::<u16>()
            .ok()
            .zip(clients.parse::<usize>().ok())
            .zip(secs.parse::<u64>().ok()),
        _ => None,
    };
    let Some(((port, clients), secs)) = parsed else {
        eprintln!("usage: soak PORT CLIENTS DURATION_SECS");
        std::process::exit(2);
    };
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let mut config = Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(env("SOAK_USER", "app"))
        .password(env("SOAK_PASSWORD", ""))
        .dbname(env("SOAK_DB", "appdb"))
        .connect_timeout(Duration::from_secs(30));
    let seed: u64 = env("SOAK_SEED", "7").parse().unwrap_or(7);

    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|n| {
            tokio::spawn(client(
                n,
                config.clone(),
                seed,
                totals.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let deadline = started + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let left = deadline - Instant::now();
        tokio::time::sleep(left.min(Duration::from_secs(10))).await;
        println!("{}", summary(&totals, started.elapsed()));
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    println!("final {}", summary(&totals, started.elapsed()));
    let by_kind: BTreeMap<_, _> = KINDS
        .iter()
        .zip(&totals.ops)
        .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
        .collect();
    for example in totals.examples.lock().unwrap().iter() {
        println!("problem: {example}");
    }
    let bad = totals.unexpected.load(Ordering::Relaxed) + totals.mismatches.load(Ordering::Relaxed);
    if bad > 0 || by_kind.values().any(|&n| n == 0) {
        std::process::exit(1);
    }
}
