//! Clients that stop reading a huge result. pgdyno reads from a backend
//! only as fast as the client takes the bytes (a bounded buffer each way),
//! so the backpressure reaches PostgreSQL, which waits on ClientWrite;
//! pgdyno's memory stays bounded, measured from /proc, and other clients
//! are not slowed down.

use super::{backend_pid, status_kib};
use crate::harness::*;
use bytes::BytesMut;
use std::time::{Duration, Instant};

/// About 2 GB of rows: far more than pgdyno could hold.
const HUGE: &str =
    "SELECT repeat('x', 1000) FROM generate_series(1, 2000000) /* faults-stalled-reader */";
/// Clients that send HUGE and never read.
const STALLED: usize = 3;
/// How much pgdyno's peak resident memory may grow while they hold their
/// results: 16 MiB for three clients, where each would need 2 GB.
const GROWTH_LIMIT_KIB: u64 = 16 * 1024;

/// PostgreSQL backends running HUGE: all of them, or those blocked
/// writing to pgdyno.
async fn running_huge(admin: &tokio_postgres::Client, blocked: bool) -> i64 {
    let wait = if blocked { "ClientWrite" } else { "%" };
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE query LIKE '%faults-stalled-reader%' AND state = 'active' \
             AND coalesce(wait_event, '') LIKE $1 AND pid <> pg_backend_pid()",
            &[&wait],
        )
        .await
        .expect("read pg_stat_activity")
        .get(0)
}

#[tokio::test]
async fn a_client_that_stops_reading_holds_pgdyno_memory_bounded() {
    within(30, async {
        let cluster = Cluster::shared();
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &cluster.url(APP_DB),
            "--pool-size",
            &(STALLED + 1).to_string(),
        ])
        .await;
        let bystander = pgdyno.connect(APP_DB).await;
        backend_pid(&bystander).await;
        let mut stalled = Vec::new();
        for _ in 0..STALLED {
            let mut raw = pgdyno.connect_raw(APP_DB).await;
            raw.query("SELECT 1").await;
            stalled.push(raw);
        }
        let rss_before = status_kib(pgdyno.pid(), "VmRSS");
        let peak_before = status_kib(pgdyno.pid(), "VmHWM");

        let mut query = BytesMut::new();
        postgres_protocol::message::frontend::query(HUGE, &mut query).unwrap();
        for raw in &mut stalled {
            raw.send(&query).await.expect("send the huge query");
        }
        // Backpressure reaches PostgreSQL: each backend waits for pgdyno
        // to take its bytes, which waits for the client.
        let admin = cluster.admin().await;
        let deadline = Instant::now() + Duration::from_secs(15);
        while running_huge(&admin, true).await < STALLED as i64 {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL never blocked on ClientWrite: no backpressure?"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Meanwhile another client is served as usual.
        let started = Instant::now();
        for i in 0..50 {
            let row = bystander
                .query_typed_one(
                    "SELECT $1::int + 1",
                    &[(&i, tokio_postgres::types::Type::INT4)],
                )
                .await
                .expect("a query next to the stalled readers");
            assert_eq!(row.get::<_, i32>(0), i + 1);
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "50 queries took {took:?}");

        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(running_huge(&admin, true).await, STALLED as i64);
        let rss = status_kib(pgdyno.pid(), "VmRSS");
        let peak = status_kib(pgdyno.pid(), "VmHWM");
        eprintln!(
            "pgdyno memory with {STALLED} stalled readers: VmRSS {rss_before} -> {rss} KiB, \
             VmHWM {peak_before} -> {peak} KiB"
        );
        assert!(
            peak.saturating_sub(peak_before.max(rss_before)) < GROWTH_LIMIT_KIB,
            "pgdyno's peak memory grew from {peak_before} to {peak} KiB \
             (limit: +{GROWTH_LIMIT_KIB} KiB)"
        );

        // The readers leave: their backends are closed, PostgreSQL stops.
        drop(stalled);
        let deadline = Instant::now() + Duration::from_secs(10);
        while running_huge(&admin, false).await > 0 {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL still writes the huge results 10 s after the clients left"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        backend_pid(&bystander).await;
    })
    .await
}
