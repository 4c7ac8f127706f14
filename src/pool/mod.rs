//! Pools of backends, one per (database, user): bounded by `pool_size`,
//! a FIFO line of waiting clients (`line.rs`: its timeouts and the reserve
//! pool), the idle backends and which one a checkout gets (`idle.rs`),
//! idle and lifetime limits (`maintain.rs`), what the console and reloads
//! do with a pool (`control.rs`).
//!
//! The pool only lends backends. What runs on them is the relay's
//! business; whether one comes back clean is the relay's call too (it
//! passes `reusable` to [`Pool::release`]).
//!
//! Locking: one short critical section per checkout and release. A pool's
//! lock is never held across an await, nor while a [`Limit`] lock is taken
//! in [`Limit::release`].

mod control;
mod idle;
mod limit;
mod line;
mod maintain;

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::backend::{Backend, Target};
use crate::clock::{self, Micros};
use crate::config::PoolMode;
use crate::error::{Error, Result};
use crate::session::{ParamList, Params};
use crate::stats::PoolStats;
pub use limit::Limit;

/// The sizes and times a pool works by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolSettings {
    pub mode: PoolMode,
    pub size: usize,
    pub min_size: usize,
    pub reserve_size: usize,
    pub reserve_timeout: Duration,
    pub query_wait_timeout: Option<Duration>,
    pub connect_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub lifetime: Option<Duration>,
    pub check_delay: Duration,
    pub login_retry: Duration,
    pub round_robin: bool,
}

pub struct Pool {
    pub database: String,
    pub user: String,
    pub target: Arc<Target>,
    /// Changed by a reload.
    settings: std::sync::RwLock<PoolSettings>,
    pub stats: PoolStats,
    /// Logged-in clients of this pool.
    pub clients: std::sync::atomic::AtomicUsize,
    /// The last attempt to open a backend failed.
    failing: std::sync::atomic::AtomicBool,
    /// PAUSE: checkouts wait until RESUME.
    paused: std::sync::atomic::AtomicBool,
    resumed: tokio::sync::Notify,
    /// RECONNECT: backends of an older generation are closed when released.
    generation: std::sync::atomic::AtomicU64,
    /// The last failed backend login and its message (server_login_retry).
    last_login_failure: Mutex<Option<(Instant, String)>>,
    /// `server_check_query` (a String, so kept apart from the Copy settings).
    check_query: std::sync::RwLock<String>,
    /// `max_db_connections`, `max_user_connections`.
    limits: Vec<Arc<Limit>>,
    state: Mutex<State>,
    /// Clients' parameter lists, for [`Pool::shared_params`].
    params_seen: Mutex<Vec<std::sync::Weak<ParamList>>>,
    /// Wakes the task that keeps the line (see `line.rs`).
    line_changed: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct State {
    /// Most recently used at the back (LIFO reuse keeps few backends warm).
    idle: VecDeque<Backend>,
    /// Backends that exist or are being opened, idle or lent.
    open: usize,
    /// Backends being opened (logging in).
    connecting: usize,
    waiters: VecDeque<line::Waiter>,
    /// The line keeper sleeps until a client waits (see `line.rs`).
    keeper_parked: bool,
    /// Since when clients have been waiting (None: the pool keeps up).
    saturated_since: Option<Instant>,
    /// ParameterStatus values of the newest login, for client logins.
    server_params: Option<Arc<Vec<(String, String)>>>,
    rules: Rules,
}

/// The settings a checkout and a release go by, kept with the state whose
/// lock they take anyway (a copy of `Pool::settings`, updated with it).
#[derive(Debug, Default, Clone, Copy)]
struct Rules {
    /// `server_check_delay`, or `None` without a `server_check_query`.
    check_after: Option<Duration>,
    lifetime: Option<Duration>,
    /// `pool_size` + `reserve_pool_size`.
    max_open: usize,
    /// `server_round_robin`: lend the longest idle backend, not the most
    /// recently used (and no client gets its last one again).
    round_robin: bool,
}

impl Rules {
    fn of(settings: &PoolSettings, check_query: &str) -> Rules {
        Rules {
            check_after: (!check_query.is_empty()).then_some(settings.check_delay),
            lifetime: settings.lifetime,
            max_open: settings.size + settings.reserve_size,
            round_robin: settings.round_robin,
        }
    }

    /// Whether a backend has been idle long enough to be checked first.
    fn needs_check(&self, backend: &Backend, now: Micros) -> bool {
        self.check_after
            .is_some_and(|delay| now.passed(backend.last_used, delay))
    }
}

/// Where [`Pool::checkout_now`] left a checkout: an idle backend due for
/// its `server_check_query`, or none at hand.
pub struct Due(Option<Backend>);

/// What a waiting client is handed. (Moved once per hand-over; boxing the
/// backend would cost an allocation instead.)
#[allow(clippy::large_enum_variant)]
enum Grant {
    Backend(Backend),
    /// Permission to open a new backend, already counted in `open`.
    Slot,
}

impl Pool {
    pub fn new(
        database: String,
        user: String,
        target: Arc<Target>,
        settings: PoolSettings,
        check_query: String,
        limits: Vec<Arc<Limit>>,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            stats: PoolStats::default(),
            database,
            user,
            target,
            settings: std::sync::RwLock::new(settings),
            clients: Default::default(),
            failing: Default::default(),
            paused: Default::default(),
            resumed: Default::default(),
            generation: Default::default(),
            last_login_failure: Mutex::default(),
            state: Mutex::new(State {
                rules: Rules::of(&settings, &check_query),
                ..State::default()
            }),
            check_query: std::sync::RwLock::new(check_query),
            params_seen: Mutex::default(),
            limits,
            line_changed: Arc::default(),
        });
        for limit in &pool.limits {
            limit.join(Arc::downgrade(&pool));
        }
        tokio::spawn(maintain::maintain(Arc::downgrade(&pool)));
        tokio::spawn(line::keep_line(
            Arc::downgrade(&pool),
            pool.line_changed.clone(),
        ));
        pool
    }

    /// A checkout's common case, without a future: an idle backend that
    /// needs no check. Otherwise what [`Pool::checkout_after`] goes on from.
    ///
    /// `now` is the caller's clock reading: the hot path reads the clock
    /// as seldom as it can.
    pub fn checkout_now(&self, now: Micros) -> std::result::Result<Backend, Due> {
        let backend = self.take_ready(now)?;
        // Lent at once: no wait, and no clock to read.
        self.stats.assigned(Duration::ZERO);
        Ok(backend)
    }

    /// The rest of a checkout: checks the backend that was due for it, or
    /// opens one if the pool has room, else waits in line up to
    /// `query_wait_timeout`.
    ///
    /// # Cancel safety
    /// Cancel safe: a grant that arrives after the future is dropped goes to
    /// the next waiter (the send fails and `hand_over` moves on).
    pub async fn checkout_after(&self, due: Due, now: Micros) -> Result<Backend> {
        let (backend, lent) = self.lend_after(due, now).await?;
        self.stats.assigned(lent.duration_since(now));
        Ok(backend)
    }

    /// A checkout without counting an assignment (pgdyno's own use).
    pub async fn lend(&self) -> Result<Backend> {
        let now = clock::now();
        match self.take_ready(now) {
            Ok(backend) => Ok(backend),
            Err(due) => Ok(self.lend_after(due, now).await?.0),
        }
    }

    /// An idle backend that needs no check, unless the pool is paused.
    fn take_ready(&self, now: Micros) -> std::result::Result<Backend, Due> {
        if self.paused.load(Relaxed) {
            return Err(Due(None));
        }
        let mut s = self.state.lock().unwrap();
        match self.take_idle(&mut s, now) {
            Some(b) if s.rules.needs_check(&b, now) => Err(Due(Some(b))),
            Some(b) => Ok(b),
            None => Err(Due(None)),
        }
    }

    /// A pause's wait, a check and connecting run boxed, which keeps small
    /// the future every client task holds for its whole life; the wait in
    /// line, and a backend that needs no check, are what a checkout under
    /// load mostly is: not boxed (no allocation per transaction).
    ///
    /// `now`: the caller's clock reading as its request came. Returns the
    /// backend and a clock reading taken once it was lent (`now` itself
    /// if nothing was waited for): the waiting path reads the clock once.
    async fn lend_after(&self, due: Due, now: Micros) -> Result<(Backend, Micros)> {
        if let Some(backend) = due.0 {
            if let Some(backend) = Box::pin(self.check(backend)).await {
                return Ok((backend, clock::now()));
            }
        }
        let (started, now) = if self.paused.load(Relaxed) {
            (Box::pin(self.until_resumed()).await, clock::now())
        } else {
            (now.instant(), now)
        };
        let (grant, now) = match self.queue(started, now) {
            Ok(grant) => (grant, now),
            Err(rx) => (self.wait_in_line(rx).await?, clock::now()),
        };
        match grant {
            Grant::Backend(b) if !self.needs_check(&b, now) => Ok((b, now)),
            grant => Ok((Box::pin(self.finish(grant)).await?, clock::now())),
        }
    }

    /// Waits while the pool is paused; returns when it started waiting
    /// (a pause counts toward `query_wait_timeout`).
    async fn until_resumed(&self) -> Instant {
        let started = Instant::now();
        while self.paused.load(Relaxed) {
            let resumed = self.resumed.notified();
            if !self.paused.load(Relaxed) {
                break;
            }
            resumed.await;
        }
        started
    }

    /// What is free now (an idle backend, or a slot to open one), else a
    /// place at the back of the line, joined at `started`.
    fn queue(
        &self,
        started: Instant,
        now: Micros,
    ) -> std::result::Result<Grant, oneshot::Receiver<Grant>> {
        let mut s = self.state.lock().unwrap();
        if let Some(grant) = self.take_or_reserve(&mut s, self.settings().size, now) {
            return Ok(grant);
        }
        let rx = self.join_line(&mut s, started);
        if s.saturated_since.is_none() {
            s.saturated_since = Some(started);
            tracing::info!(
                event = "pool_saturated",
                database = %self.database,
                user = %self.user,
                pool_size = self.settings().size,
                "all backends busy: clients are waiting"
            );
        }
        Err(rx)
    }

    /// Waits for the front of the line to be served.
    async fn wait_in_line(&self, rx: oneshot::Receiver<Grant>) -> Result<Grant> {
        if self.limits.iter().any(|l| l.evict_idle(self)) {
            self.grant_slots();
        }
        // The line keeper ends a wait past query_wait_timeout by dropping
        // the waiter, sender and all.
        rx.await.map_err(|_| {
            self.stats
                .wait_timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Error::QueryWaitTimeout
        })
    }

    /// A grant that needs more than handing over: a backend the caller
    /// found due for its check is checked; a slot is connected (and the
    /// new backend checked if due: with `server_check_delay` 0 it is).
    async fn finish(&self, grant: Grant) -> Result<Backend> {
        let checked = match grant {
            Grant::Backend(due) => self.check(due).await,
            slot => self.checked(self.use_grant(slot).await?).await,
        };
        match checked {
            Some(b) => Ok(b),
            // The check failed and closed it: the slot is free, try again.
            None => Box::pin(self.lend()).await,
        }
    }

    /// An idle healthy backend, or a slot to open one if `open < max` and
    /// the shared limits allow.
    fn take_or_reserve(&self, s: &mut State, max: usize, now: Micros) -> Option<Grant> {
        if let Some(backend) = self.take_idle(s, now) {
            return Some(Grant::Backend(backend));
        }
        if s.open < max && self.acquire_limits() {
            s.open += 1;
            return Some(Grant::Slot);
        }
        None
    }

    fn acquire_limits(&self) -> bool {
        for (i, limit) in self.limits.iter().enumerate() {
            if !limit.try_acquire() {
                self.limits[..i].iter().for_each(|l| l.release_count_only());
                return false;
            }
        }
        true
    }

    async fn use_grant(&self, grant: Grant) -> Result<Backend> {
        match grant {
            Grant::Backend(b) => Ok(b),
            Grant::Slot => {
                // While logins fail, clients get the last error at once
                // instead of each waiting for its own failure.
                let retry = self.settings().login_retry;
                let cached = self.last_login_failure.lock().unwrap().clone();
                if let Some((_, message)) = cached.filter(|(at, _)| at.elapsed() < retry) {
                    self.free_slot();
                    return Err(Error::LoginRetry(message));
                }
                // The slot goes back if this future is dropped half-way.
                let slot = SlotGuard(Some(self));
                // Boxed: the rare path keeps every checkout's future small.
                let connected = Box::pin(self.connect()).await;
                slot.disarm();
                match connected {
                    Ok(b) => {
                        b.set_active(true, clock::now());
                        *self.last_login_failure.lock().unwrap() = None;
                        self.state.lock().unwrap().server_params = Some(Arc::new(b.params.clone()));
                        Ok(b)
                    }
                    Err(e) => {
                        tracing::warn!(event = "backend_connect_failed", database = %self.database, user = %self.user, error = %e, "backend connect failed");
                        *self.last_login_failure.lock().unwrap() =
                            Some((Instant::now(), e.client_message()));
                        self.free_slot();
                        Err(e)
                    }
                }
            }
        }
    }

    /// A backend idle longer than `server_check_delay` is checked with
    /// `server_check_query` first; `None` if it failed (it is then closed).
    async fn checked(&self, backend: Backend) -> Option<Backend> {
        if !self.needs_check(&backend, clock::now()) {
            return Some(backend);
        }
        self.check(backend).await
    }

    /// Whether a backend handed over is due for `server_check_query`.
    fn needs_check(&self, backend: &Backend, now: Micros) -> bool {
        let rules = self.state.lock().unwrap().rules;
        rules.needs_check(backend, now)
    }

    /// Runs `server_check_query` on a backend found due for it; `None` if
    /// it failed (the backend is then closed).
    async fn check(&self, mut backend: Backend) -> Option<Backend> {
        let settings = self.settings();
        let query = self.check_query.read().unwrap().clone();
        let slot = SlotGuard(Some(self));
        let check = Box::pin(tokio::time::timeout(
            settings.connect_timeout,
            backend.simple_query(&query),
        ))
        .await;
        slot.disarm();
        if matches!(check, Ok(Ok(()))) {
            return Some(backend);
        }
        tracing::info!(event = "backend_check_failed", database = %self.database, user = %self.user, "a long-idle backend failed its check; closing it");
        drop(backend);
        self.free_slot();
        None
    }

    async fn connect(&self) -> Result<Backend> {
        let started = Instant::now();
        self.state.lock().unwrap().connecting += 1;
        // Counted back even if this future is dropped half-way.
        struct Connecting<'a>(&'a Pool);
        impl Drop for Connecting<'_> {
            fn drop(&mut self) {
                self.0.state.lock().unwrap().connecting -= 1;
            }
        }
        let connecting = Connecting(self);
        let generation = self.generation.load(Relaxed);
        let result = Backend::connect(
            self.target.clone(),
            self.settings().connect_timeout,
            generation,
        )
        .await;
        drop(connecting);
        self.failing
            .store(result.is_err(), std::sync::atomic::Ordering::Relaxed);
        match &result {
            Ok(_) => self.stats.connected(started.elapsed()),
            Err(_) => {
                self.stats
                    .backend_connect_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        result
    }

    /// Takes a backend back. `reusable` is the relay's word that it is idle
    /// and clean; otherwise it is closed.
    pub fn release(&self, backend: Backend, reusable: bool) {
        self.release_at(backend, reusable, clock::now());
    }

    /// [`Pool::release`] with the caller's clock reading.
    pub fn release_at(&self, mut backend: Backend, reusable: bool, now: Micros) {
        let stale = backend.generation() < self.generation.load(Relaxed);
        if reusable && !stale && backend.conn.rbuf.is_empty() {
            let mut s = self.state.lock().unwrap();
            let expired = s
                .rules
                .lifetime
                .is_some_and(|l| now.passed(backend.created, l));
            // A reload may have made the pool smaller than what is open.
            if !expired && s.open <= s.rules.max_open {
                backend.last_used = now;
                if let Some(unwanted) = line::hand_over(&mut s, Grant::Backend(backend)) {
                    self.give_back(&mut s, unwanted, now);
                }
                return;
            }
        }
        drop(backend);
        self.free_slot();
    }

    /// A backend is gone: its slot may go to a waiter.
    fn free_slot(&self) {
        self.state.lock().unwrap().open -= 1;
        for limit in &self.limits {
            limit.release();
        }
        self.grant_slots();
    }

    /// Lets waiters open backends while there is room. Returns whether any
    /// waiter was served.
    pub(crate) fn grant_slots(&self) -> bool {
        let mut s = self.state.lock().unwrap();
        let mut served = false;
        while !s.waiters.is_empty() && s.open < self.settings().size {
            if !self.acquire_limits() {
                break;
            }
            s.open += 1;
            if let Some(unwanted) = line::hand_over(&mut s, Grant::Slot) {
                self.give_back(&mut s, unwanted, clock::now());
                break;
            }
            served = true;
        }
        served
    }

    /// A logged-in client's parameter list, or an equal one other clients
    /// of this pool already share (most clients of an application ask for
    /// the same). A few distinct lists are remembered, as long as a client
    /// keeps them.
    pub fn shared_params(&self, params: Params) -> Params {
        const REMEMBERED: usize = 16;
        let mut seen = self.params_seen.lock().unwrap();
        seen.retain(|w| w.strong_count() > 0);
        if let Some(same) = seen
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .find(|p| *p == params)
        {
            return same;
        }
        if seen.len() < REMEMBERED {
            seen.push(Arc::downgrade(&params));
        }
        params
    }

    /// ParameterStatus values to tell a logging-in client, opening a
    /// backend first if the pool has never had one.
    pub async fn server_params(&self) -> Result<Arc<Vec<(String, String)>>> {
        if let Some(p) = self.state.lock().unwrap().server_params.clone() {
            return Ok(p);
        }
        let backend = self.lend().await?;
        let params = Arc::new(backend.params.clone());
        self.release(backend, true);
        Ok(params)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Its idle backends close; the limits it shares count them no more.
        self.close_idle();
        // The line keeper sees the pool gone and ends.
        self.line_changed.notify_one();
    }
}

/// Frees a slot unless disarmed: a connect abandoned half-way (the client
/// left, the pooler closes) must not leak it.
struct SlotGuard<'a>(Option<&'a Pool>);

impl SlotGuard<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if let Some(pool) = self.0 {
            pool.free_slot();
        }
    }
}
