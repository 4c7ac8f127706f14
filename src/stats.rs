//! Counters kept per pool and for the whole pooler, read by `SHOW STATS`
//! and the Prometheus endpoint alike.
//!
//! The relay counts a bound stretch in a plain [`Tally`] and adds it to the
//! pool's counters once, when the stretch ends: no shared write per message.
//! Those counters are [`Sharded`]: each thread adds to its own copy with
//! plain stores, and readers sum the copies. The histograms (wait,
//! transaction, query and backend connect times) are [`Buckets`] in those
//! same copies: a sample is a load and a store to this thread's bucket,
//! summed only when the Prometheus endpoint is read.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::Micros;

/// One pool's totals since start. Times in microseconds.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// What every transaction adds to.
    counts: Sharded,
    pub logins: AtomicU64,
    pub backend_connects: AtomicU64,
    pub backend_connect_failures: AtomicU64,
    pub wait_timeouts: AtomicU64,
    /// ErrorResponses sent to clients, by SQLSTATE class (two characters).
    pub errors: Mutex<BTreeMap<String, u64>>,
}

impl PoolStats {
    /// A client got a backend after waiting `waited`.
    pub fn assigned(&self, waited: Duration) {
        let (c, to) = self.counts.own();
        let waited = waited.as_micros() as u64;
        to.add(&c.assignments, 1);
        to.add(&c.wait_us, waited);
        c.wait.record(waited, to);
    }

    pub fn connected(&self, took: Duration) {
        self.backend_connects.fetch_add(1, Relaxed);
        let (c, to) = self.counts.own();
        c.connect.record(took.as_micros() as u64, to);
    }

    /// The histograms, summed over the threads' copies, in the order of
    /// [`HISTOGRAMS`].
    pub fn histograms(&self) -> [Histogram; 4] {
        let sum = |of: fn(&Counts) -> &Buckets| {
            let mut h = Histogram::default();
            self.counts.copies().for_each(|c| h.add(of(c)));
            h
        };
        [
            sum(|c| &c.wait),
            sum(|c| &c.xact),
            sum(|c| &c.query),
            sum(|c| &c.connect),
        ]
    }

    /// Records a query's and a transaction's time in this thread's copy.
    fn took(&self, query_us: Option<u64>, xact_us: Option<u64>) {
        let (c, to) = self.counts.own();
        if let Some(us) = query_us {
            c.query.record(us, to);
        }
        if let Some(us) = xact_us {
            c.xact.record(us, to);
        }
    }

    pub fn error(&self, sqlstate: &str) {
        let class = sqlstate.get(..2).unwrap_or("XX").to_owned();
        *self.errors.lock().unwrap().entry(class).or_default() += 1;
    }

    /// Adds what a bound stretch counted.
    pub fn add(&self, t: &Tally) {
        let (c, to) = self.counts.own();
        to.add(&c.xacts, t.xacts);
        to.add(&c.queries, t.queries);
        to.add(&c.bytes_received, t.bytes_received);
        to.add(&c.bytes_sent, t.bytes_sent);
        to.add(&c.xact_us, t.xact_us);
        to.add(&c.query_us, t.query_us);
        to.add(&c.client_parses, t.client_parses);
        to.add(&c.server_parses, t.server_parses);
        to.add(&c.binds, t.binds);
    }
}

/// A pool's per-transaction counters, one copy per thread.
///
/// A thread adds only to the copy of its own index: with one writer per
/// copy, an add is a load and a store, where a shared counter takes a
/// locked read-modify-write (seven per transaction otherwise). Threads
/// past the first [`SHARDS`] share one more copy, with atomic adds.
#[derive(Debug)]
struct Sharded {
    shards: Box<[Counts]>,
    shared: Counts,
}

/// Threads with a copy of their own (a runtime's workers and the main
/// thread come first).
const SHARDS: usize = 16;

/// Each thread's index, given at its first add, never reused.
fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|i| {
        if i.get() == usize::MAX {
            i.set(NEXT.fetch_add(1, Relaxed));
        }
        i.get()
    })
}

/// How a thread adds to the copy [`Sharded::own`] gave it.
#[derive(Clone, Copy)]
struct Adder {
    only_writer: bool,
}

impl Adder {
    /// Adding zero writes nothing.
    fn add(self, counter: &AtomicU64, v: u64) {
        if v == 0 {
        } else if self.only_writer {
            counter.store(counter.load(Relaxed) + v, Relaxed);
        } else {
            counter.fetch_add(v, Relaxed);
        }
    }
}

/// One copy (728 bytes), aligned to lines of its own, so that threads do
/// not share cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Counts {
    wait: Buckets,
    xact: Buckets,
    query: Buckets,
    connect: Buckets,
    xacts: AtomicU64,
    queries: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    xact_us: AtomicU64,
    query_us: AtomicU64,
    wait_us: AtomicU64,
    assignments: AtomicU64,
    client_parses: AtomicU64,
    server_parses: AtomicU64,
    binds: AtomicU64,
}

impl Default for Sharded {
    fn default() -> Self {
        Sharded {
            shards: (0..SHARDS).map(|_| Counts::default()).collect(),
            shared: Counts::default(),
        }
    }
}

impl Sharded {
    /// The copy this thread adds to, and how.
    fn own(&self) -> (&Counts, Adder) {
        match self.shards.get(thread_index()) {
            Some(own) => (own, Adder { only_writer: true }),
            None => (&self.shared, Adder { only_writer: false }),
        }
    }

    /// Every copy, to sum.
    fn copies(&self) -> impl Iterator<Item = &Counts> {
        self.shards.iter().chain([&self.shared])
    }
}

/// The histograms' names on the Prometheus endpoint, as
/// [`PoolStats::histograms`] orders them.
pub const HISTOGRAMS: [&str; 4] = [
    "pgdyno_client_wait_seconds",
    "pgdyno_transaction_duration_seconds",
    "pgdyno_query_duration_seconds",
    "pgdyno_backend_connect_seconds",
];

/// Histogram bucket bounds in µs, each bucket holding the samples up to
/// its bound (Prometheus' `le`): 100 µs to a minute, then everything above.
pub const BOUNDS_US: [u64; 18] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// One thread's part of a histogram: samples per bucket (not cumulative),
/// the last bucket past every bound, and their sum in µs.
#[derive(Debug, Default)]
struct Buckets {
    counts: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Buckets {
    fn record(&self, us: u64, to: Adder) {
        // Most samples fall in the first buckets: a scan from the bottom.
        let i = BOUNDS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(BOUNDS_US.len());
        to.add(&self.counts[i], 1);
        to.add(&self.sum_us, us);
    }
}

/// A histogram summed over the threads' copies.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Histogram {
    /// Samples per bucket (not cumulative), as [`BOUNDS_US`], then +Inf.
    pub counts: [u64; BOUNDS_US.len() + 1],
    pub sum_us: u64,
}

impl Histogram {
    fn add(&mut self, b: &Buckets) {
        for (n, c) in self.counts.iter_mut().zip(&b.counts) {
            *n += c.load(Relaxed);
        }
        self.sum_us += b.sum_us.load(Relaxed);
    }
}

/// What one bound stretch did, counted without atomics.
#[derive(Debug)]
pub struct Tally {
    pub xacts: u64,
    pub queries: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub xact_us: u64,
    pub query_us: u64,
    pub client_parses: u64,
    pub server_parses: u64,
    pub binds: u64,
    /// When the query (request cycle) under way began.
    query_started: Option<Micros>,
    /// When the transaction under way began.
    xact_started: Option<Micros>,
    /// The relay's clock: read once per wake-up, not per message.
    pub now: Micros,
}

impl Tally {
    /// A tally whose clock reads `now` until the relay reads it again.
    pub fn starting(now: Micros) -> Tally {
        Tally {
            xacts: 0,
            queries: 0,
            bytes_received: 0,
            bytes_sent: 0,
            xact_us: 0,
            query_us: 0,
            client_parses: 0,
            server_parses: 0,
            binds: 0,
            query_started: None,
            xact_started: None,
            now,
        }
    }

    /// When the transaction under way (or the statement outside one) began.
    pub fn transaction_started(&self) -> Option<Micros> {
        self.xact_started
    }

    /// The client sent a request; starts the clocks unless running.
    pub fn request_began(&mut self) {
        if self.query_started.is_none() || self.xact_started.is_none() {
            let now = self.now;
            self.query_started.get_or_insert(now);
            self.xact_started.get_or_insert(now);
        }
    }

    /// A ReadyForQuery answered a client's request; `idle` if it ended the
    /// transaction. Records the durations in `stats`' histograms.
    pub fn ready_for_query(&mut self, idle: bool, more_pending: bool, stats: &PoolStats) {
        self.queries += 1;
        let now = self.now;
        let query = self
            .query_started
            .take()
            .map(|start| now.micros_since(start));
        if let Some(took) = query {
            self.query_us += took;
            if more_pending {
                self.query_started = Some(now);
            }
        }
        let mut xact = None;
        if idle {
            self.xacts += 1;
            xact = self
                .xact_started
                .take()
                .map(|start| now.micros_since(start));
            self.xact_us += xact.unwrap_or(0);
        }
        stats.took(query, xact);
    }
}

/// Counts for the whole pooler, outside any pool.
#[derive(Debug, Default)]
pub struct GlobalStats {
    pub login_failures: AtomicU64,
    pub max_client_conn_refusals: AtomicU64,
    pub throttled_logins: AtomicU64,
    /// Errors pgdyno itself sent to clients, by SQLSTATE class.
    pub errors: Mutex<BTreeMap<String, u64>>,
}

/// A database's totals, as SHOW STATS_TOTALS lists them (times in µs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub assignments: u64,
    pub xacts: u64,
    pub queries: u64,
    pub received: u64,
    pub sent: u64,
    pub xact_us: u64,
    pub query_us: u64,
    pub wait_us: u64,
    pub client_parses: u64,
    pub server_parses: u64,
    pub binds: u64,
    pub logins: u64,
}

impl Totals {
    pub fn add_pool(&mut self, s: &PoolStats) {
        let get = |c: &AtomicU64| c.load(Relaxed);
        for c in s.counts.copies() {
            self.assignments += get(&c.assignments);
            self.xacts += get(&c.xacts);
            self.queries += get(&c.queries);
            self.received += get(&c.bytes_received);
            self.sent += get(&c.bytes_sent);
            self.xact_us += get(&c.xact_us);
            self.query_us += get(&c.query_us);
            self.wait_us += get(&c.wait_us);
            self.client_parses += get(&c.client_parses);
            self.server_parses += get(&c.server_parses);
            self.binds += get(&c.binds);
        }
        self.logins += s.logins.load(Relaxed);
    }

    /// Per-second rates over `period` since `before`, and average times per
    /// transaction, query and assignment: PgBouncer's avg_ columns.
    pub fn averages(&self, before: &Totals, period: Duration) -> Totals {
        let secs = period.as_secs_f64().max(1e-9);
        let rate = |now: u64, then: u64| (now.saturating_sub(then) as f64 / secs) as u64;
        let per = |num: u64, num0: u64, den: u64, den0: u64| {
            num.saturating_sub(num0)
                .checked_div(den.saturating_sub(den0))
                .unwrap_or(0)
        };
        Totals {
            assignments: rate(self.assignments, before.assignments),
            xacts: rate(self.xacts, before.xacts),
            queries: rate(self.queries, before.queries),
            received: rate(self.received, before.received),
            sent: rate(self.sent, before.sent),
            xact_us: per(self.xact_us, before.xact_us, self.xacts, before.xacts),
            query_us: per(self.query_us, before.query_us, self.queries, before.queries),
            wait_us: per(
                self.wait_us,
                before.wait_us,
                self.assignments,
                before.assignments,
            ),
            client_parses: rate(self.client_parses, before.client_parses),
            server_parses: rate(self.server_parses, before.server_parses),
            binds: rate(self.binds, before.binds),
            logins: rate(self.logins, before.logins),
        }
    }
}

/// The last two `stats_period` snapshots per database, for averages.
#[derive(Debug, Default)]
pub struct Periods {
    pub by_database: Mutex<BTreeMap<String, (Totals, Totals)>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More threads than copies, all adding at once: none of the adds is
    /// lost, whether a thread has a copy of its own or shares the last.
    #[test]
    fn sharded_counts_lose_no_add() {
        let stats = PoolStats::default();
        let threads = SHARDS * 3;
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..1000 {
                        stats.add(&Tally {
                            xacts: 1,
                            bytes_sent: 3,
                            ..Tally::starting(crate::clock::now())
                        });
                        stats.assigned(Duration::from_micros(2));
                    }
                });
            }
        });
        let mut t = Totals::default();
        t.add_pool(&stats);
        let n = threads as u64 * 1000;
        assert_eq!((t.xacts, t.sent, t.queries), (n, 3 * n, 0));
        assert_eq!((t.assignments, t.wait_us), (n, 2 * n));
        assert_eq!(stats.histograms()[0].counts[0], n, "every wait sampled");
        assert!(
            stats.counts.shared.xacts.load(Relaxed) > 0,
            "the threads past the copies share one"
        );
    }

    /// Prometheus' `le` holds its bound: a sample goes to the first bucket
    /// whose bound is at least the sample, past the last one to +Inf.
    #[test]
    fn a_sample_goes_to_the_first_bucket_that_holds_it() {
        let stats = PoolStats::default();
        for us in [0, 100, 101, 250, 60_000_000, 60_000_001] {
            stats.assigned(Duration::from_micros(us));
        }
        let [wait, xact, query, connect] = stats.histograms();
        let mut want = [0; BOUNDS_US.len() + 1];
        (want[0], want[1], want[17], want[18]) = (2, 2, 1, 1);
        assert_eq!(wait.counts, want);
        assert_eq!(wait.sum_us, 100 + 101 + 250 + 60_000_000 + 60_000_001);
        for other in [xact, query, connect] {
            assert_eq!(other, Histogram::default());
        }
    }

    /// A ReadyForQuery records a query; one reporting idle, a transaction
    /// too; both in the pool's histograms as well as in the tally.
    #[test]
    fn ready_for_query_records_queries_and_transactions() {
        let stats = PoolStats::default();
        let mut t = Tally::starting(crate::clock::now());
        t.request_began();
        t.ready_for_query(false, false, &stats);
        t.request_began();
        t.ready_for_query(true, false, &stats);
        stats.connected(Duration::from_millis(3));
        let [wait, xact, query, connect] = stats.histograms();
        let count = |h: &Histogram| h.counts.iter().sum::<u64>();
        assert_eq!((count(&query), count(&xact)), (2, 1));
        assert_eq!((t.queries, t.xacts), (2, 1));
        assert_eq!(
            (count(&wait), connect.counts[5], connect.sum_us),
            (0, 1, 3000)
        );
    }
}
