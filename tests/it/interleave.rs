//! Many clients, few backends, a random mix of everything transaction mode
//! has to keep apart: named prepared statements (shared texts, own texts,
//! more than `max_prepared_statements` of them), plain queries, per-client
//! TimeZone and application_name, transactions that commit, roll back or
//! fail. Every answer is checked, and at the end each client's committed
//! rows must all be there and no others.
//!
//! The mix comes from a seeded generator; the seed is printed, and
//! `PGDYNO_IT_SEED=<seed>` replays the same choices (the timing differs).

use crate::harness::*;
use futures_util::future::join_all;
use std::time::{Duration, Instant};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage, Statement};

const CLIENTS: usize = 12;
const RUN_FOR: Duration = Duration::from_secs(8);
const ZONES: &[&str] = &[
    "UTC",
    "Asia/Tokyo",
    "Europe/Paris",
    "America/New_York",
    "Australia/Sydney",
    "Asia/Kolkata",
    "America/Sao_Paulo",
    "Africa/Cairo",
];

/// xorshift64*: small, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn int(&mut self) -> i32 {
        self.below(2_000_001) as i32 - 1_000_000
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn seed() -> u64 {
    match std::env::var("PGDYNO_IT_SEED") {
        Ok(s) => s.parse().expect("PGDYNO_IT_SEED must be a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// What one client believes about its session, and the rows it committed.
struct Actor {
    id: i32,
    client: Client,
    rng: Rng,
    /// "seed S, client C": where a failure message starts.
    who: String,
    shared: Vec<Statement>,
    own: Statement,
    zone: String,
    app: String,
    committed: i64,
    next_row: i32,
    ops: u64,
}

/// The texts every client prepares: more than the 5 a backend may hold,
/// with the clients' own texts on top.
const SHARED_TEXTS: &[&str] = &[
    "SELECT $1::int4 + $2::int4",
    "SELECT $1::text || ':' || $2::text",
    "SELECT $1::int8 * $2::int8",
    "SELECT count(*) FROM generate_series(1, $1::int4)",
    "SELECT current_setting('TimeZone'), current_setting('application_name')",
    "SELECT $1::int4 - 1, $1::int4 + 1",
];

impl Actor {
    async fn new(pgdyno: &Pgdyno, id: i32, seed: u64) -> Actor {
        let who = format!("seed {seed}, client {id}");
        let client = pgdyno.connect(APP_DB).await;
        let mut rng = Rng::new(seed ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // Prepared in a random order, so backends see them differently.
        let mut order: Vec<usize> = (0..SHARED_TEXTS.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut shared = vec![None; SHARED_TEXTS.len()];
        for k in order {
            let st = client.prepare(SHARED_TEXTS[k]).await;
            shared[k] = Some(st.unwrap_or_else(|e| panic!("{who}: prepare: {e}")));
        }
        let own = client
            .prepare(&format!("SELECT $1::int4 + {id}, 'own-{id}'"))
            .await
            .unwrap_or_else(|e| panic!("{who}: prepare own: {e}"));
        let zone = ZONES[id as usize % ZONES.len()].to_owned();
        let app = format!("c{id}-0");
        client
            .batch_execute(&format!(
                "SET TimeZone = '{zone}'; SET application_name = '{app}'"
            ))
            .await
            .unwrap_or_else(|e| panic!("{who}: initial SET: {e}"));
        Actor {
            id,
            client,
            rng,
            who,
            shared: shared.into_iter().map(Option::unwrap).collect(),
            own,
            zone,
            app,
            committed: 0,
            next_row: 0,
            ops: 0,
        }
    }

    /// Runs random operations until `deadline`.
    async fn run(&mut self, deadline: Instant) -> Result<(), String> {
        while Instant::now() < deadline {
            self.ops += 1;
            let op = self.rng.below(9);
            let result = match op {
                0 | 1 => self.prepared().await,
                2 => self.pipelined().await,
                3 => self.unprepared().await,
                4 => self.set_and_show().await,
                5 => self.transaction().await,
                6 => self.failing_transaction().await,
                7 => self.fresh_statement().await,
                _ => self.check_settings().await,
            };
            result.map_err(|e| format!("{}, op #{} (kind {op}): {e}", self.who, self.ops))?;
        }
        Ok(())
    }

    async fn prepared(&mut self) -> Result<(), String> {
        let (a, b) = (self.rng.int(), self.rng.int());
        let k = self.rng.below(SHARED_TEXTS.len() as u64 + 1) as usize;
        let c = &self.client;
        match k {
            0 => {
                let got: i32 = c
                    .query_one(&self.shared[0], &[&a, &b])
                    .await
                    .map_err(db)?
                    .get(0);
                expect(got, a + b)
            }
            1 => {
                let (x, y) = (a.to_string(), format!("t{b}"));
                let row = c.query_one(&self.shared[1], &[&x, &y]).await.map_err(db)?;
                expect(row.get::<_, String>(0), format!("{a}:t{b}"))
            }
            2 => {
                let (x, y) = (a as i64, b as i64);
                let got: i64 = c
                    .query_one(&self.shared[2], &[&x, &y])
                    .await
                    .map_err(db)?
                    .get(0);
                expect(got, x * y)
            }
            3 => {
                let n = a.rem_euclid(1000);
                let got: i64 = c
                    .query_one(&self.shared[3], &[&n])
                    .await
                    .map_err(db)?
                    .get(0);
                expect(got, n as i64)
            }
            4 => {
                let row = c.query_one(&self.shared[4], &[]).await.map_err(db)?;
                expect(
                    (row.get::<_, String>(0), row.get::<_, String>(1)),
                    (self.zone.clone(), self.app.clone()),
                )
            }
            5 => {
                let a = a / 2;
                let row = c.query_one(&self.shared[5], &[&a]).await.map_err(db)?;
                expect((row.get::<_, i32>(0), row.get::<_, i32>(1)), (a - 1, a + 1))
            }
            _ => {
                let row = c.query_one(&self.own, &[&a]).await.map_err(db)?;
                expect(
                    (row.get::<_, i32>(0), row.get::<_, String>(1)),
                    (a + self.id, format!("own-{}", self.id)),
                )
            }
        }
    }

    /// Several statements in flight at once on this connection.
    async fn pipelined(&mut self) -> Result<(), String> {
        let (a, b, n) = (self.rng.int(), self.rng.int(), self.rng.below(500) as i32);
        let c = &self.client;
        let (p0, p3, pown) = ([&a as _, &b as _], [&n as _], [&b as _]);
        let (sum, count, own, settings) = tokio::join!(
            c.query_one(&self.shared[0], &p0),
            c.query_one(&self.shared[3], &p3),
            c.query_one(&self.own, &pown),
            c.query_one(&self.shared[4], &[]),
        );
        expect(sum.map_err(db)?.get::<_, i32>(0), a + b)?;
        expect(count.map_err(db)?.get::<_, i64>(0), n as i64)?;
        expect(own.map_err(db)?.get::<_, i32>(0), b + self.id)?;
        let settings = settings.map_err(db)?;
        expect(settings.get::<_, String>(0), self.zone.clone())
    }

    async fn unprepared(&mut self) -> Result<(), String> {
        let a = self.rng.int();
        if self.rng.chance(50) {
            let row = self
                .client
                .query_typed_one(
                    "SELECT $1::int4 * 2 + $2",
                    &[(&a, Type::INT4), (&self.id, Type::INT4)],
                )
                .await
                .map_err(db)?;
            expect(row.get::<_, i32>(0), a * 2 + self.id)
        } else {
            let rows = simple(&self.client, &format!("SELECT {a} + {}, 'simple'", self.id)).await?;
            expect(
                rows,
                vec![vec![(a + self.id).to_string(), "simple".to_owned()]],
            )
        }
    }

    async fn set_and_show(&mut self) -> Result<(), String> {
        let zone = ZONES[self.rng.below(ZONES.len() as u64) as usize].to_owned();
        let app = format!("c{}-{}", self.id, self.ops);
        if self.rng.chance(50) {
            self.client
                .batch_execute(&format!("SET TimeZone = '{zone}'"))
                .await
                .map_err(db)?;
            self.zone = zone;
        } else {
            self.client
                .batch_execute(&format!("SET application_name = '{app}'"))
                .await
                .map_err(db)?;
            self.app = app;
        }
        self.check_settings().await
    }

    async fn check_settings(&mut self) -> Result<(), String> {
        let rows = simple(&self.client, "SHOW TimeZone; SHOW application_name").await?;
        expect(rows, vec![vec![self.zone.clone()], vec![self.app.clone()]])
    }

    async fn own_rows(&self, client: &impl tokio_postgres::GenericClient) -> Result<i64, String> {
        let row = client
            .query_typed_one(
                "SELECT count(*) FROM interleave_rows WHERE client = $1",
                &[(&self.id, Type::INT4)],
            )
            .await
            .map_err(db)?;
        Ok(row.get(0))
    }

    /// Inserts a few rows (maybe a SET too), checks it sees them, then
    /// commits or rolls back, and checks again.
    async fn transaction(&mut self) -> Result<(), String> {
        let n = 1 + self.rng.below(4) as i32;
        let commit = self.rng.chance(60);
        let new_zone = self
            .rng
            .chance(30)
            .then(|| ZONES[self.rng.below(ZONES.len() as u64) as usize].to_owned());
        let first = self.next_row;
        self.next_row += n;
        let before = self.committed;
        let tx = self.client.transaction().await.map_err(db)?;
        for seq in first..first + n {
            tx.execute_typed(
                "INSERT INTO interleave_rows (client, seq) VALUES ($1, $2)",
                &[(&self.id, Type::INT4), (&seq, Type::INT4)],
            )
            .await
            .map_err(db)?;
        }
        if let Some(zone) = &new_zone {
            tx.batch_execute(&format!("SET TimeZone = '{zone}'"))
                .await
                .map_err(db)?;
        }
        let inside = own_rows_in(&tx, self.id).await?;
        if commit {
            tx.commit().await.map_err(db)?;
            self.committed += n as i64;
            if let Some(zone) = new_zone {
                self.zone = zone;
            }
        } else {
            tx.rollback().await.map_err(db)?;
        }
        expect(inside, before + n as i64)?;
        expect(self.own_rows(&self.client).await?, self.committed)?;
        self.check_settings().await
    }

    /// A transaction whose SET and INSERT die with it.
    async fn failing_transaction(&mut self) -> Result<(), String> {
        let seq = self.next_row;
        self.next_row += 1;
        let sql = format!(
            "BEGIN; INSERT INTO interleave_rows VALUES ({}, {seq}); \
             SET TimeZone = 'Pacific/Chatham'; SELECT 1 / 0",
            self.id
        );
        match self.client.batch_execute(&sql).await {
            Err(e) if sqlstate(&e) == Some("22012") => {}
            other => return Err(format!("expected 22012, got {other:?}")),
        }
        // The failed simple query left the transaction open and aborted.
        match self.client.batch_execute("SELECT 1").await {
            Err(e) if sqlstate(&e) == Some("25P02") => {}
            other => return Err(format!("expected 25P02, got {other:?}")),
        }
        self.client.batch_execute("ROLLBACK").await.map_err(db)?;
        expect(self.own_rows(&self.client).await?, self.committed)?;
        self.check_settings().await
    }

    /// A statement with a text new to everyone, used, then closed.
    async fn fresh_statement(&mut self) -> Result<(), String> {
        let k = self.rng.int();
        let st = self
            .client
            .prepare(&format!("SELECT $1::int4 + 0 * {k}, {k}"))
            .await
            .map_err(db)?;
        for _ in 0..1 + self.rng.below(3) {
            let a = self.rng.int();
            let row = self.client.query_one(&st, &[&a]).await.map_err(db)?;
            expect((row.get::<_, i32>(0), row.get::<_, i32>(1)), (a, k))?;
        }
        drop(st); // sends Close
        Ok(())
    }
}

async fn own_rows_in(tx: &tokio_postgres::Transaction<'_>, id: i32) -> Result<i64, String> {
    let row = tx
        .query_typed_one(
            "SELECT count(*) FROM interleave_rows WHERE client = $1",
            &[(&id, Type::INT4)],
        )
        .await
        .map_err(db)?;
    Ok(row.get(0))
}

fn expect<T: PartialEq + std::fmt::Debug>(got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("got {got:?}, expected {want:?}"))
    }
}

fn db(e: tokio_postgres::Error) -> String {
    format!("{e} ({:?})", e.as_db_error())
}

async fn simple(client: &Client, sql: &str) -> Result<Vec<Vec<String>>, String> {
    let messages = client.simple_query(sql).await.map_err(db)?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

#[tokio::test]
async fn random_mix_of_clients_keeps_every_session_apart() {
    within(120, async {
        let seed = seed();
        eprintln!("interleave seed: {seed} (PGDYNO_IT_SEED={seed} to replay)");
        let direct = Cluster::shared().direct(APP_DB).await;
        direct
            .batch_execute(
                "DROP TABLE IF EXISTS interleave_rows; \
                 CREATE TABLE interleave_rows (client int, seq int, PRIMARY KEY (client, seq))",
            )
            .await
            .expect("create interleave_rows");
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &Cluster::shared().url(APP_DB),
            "--pool-mode",
            "transaction",
            "--pool-size",
            "3",
            "--max-prepared-statements",
            "5",
        ])
        .await;
        let mut clients =
            join_all((0..CLIENTS as i32).map(|id| Actor::new(&pgdyno, id, seed))).await;
        let deadline = Instant::now() + RUN_FOR;
        let results = join_all(clients.iter_mut().map(|c| c.run(deadline))).await;
        let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));

        let total_ops: u64 = clients.iter().map(|c| c.ops).sum();
        eprintln!("interleave: {total_ops} operations by {CLIENTS} clients");
        for c in &clients {
            let stored: i64 = direct
                .query_one(
                    "SELECT count(*) FROM interleave_rows WHERE client = $1",
                    &[&c.id],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(
                stored, c.committed,
                "seed {seed}: client {}'s committed rows",
                c.id
            );
        }
        let strangers: i64 = direct
            .query_one(
                "SELECT count(*) FROM interleave_rows WHERE client NOT BETWEEN 0 AND $1",
                &[&(CLIENTS as i32 - 1)],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(strangers, 0, "seed {seed}: rows of no client");
        assert!(
            total_ops > 100,
            "seed {seed}: only {total_ops} operations ran"
        );
    })
    .await
}
