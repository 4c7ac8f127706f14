//! What the console and reloads do with a pool: PAUSE and RESUME,
//! RECONNECT (and what WAIT_CLOSE waits for), new settings, and the
//! snapshot SHOW POOLS and the metrics read.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::{Pool, PoolSettings, Rules};

/// A pool's counts at one moment (PgBouncer's SHOW POOLS).
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolSnapshot {
    /// Logged-in clients not waiting for a backend.
    pub clients_active: usize,
    pub clients_waiting: usize,
    /// Backends lent to clients.
    pub backends_active: usize,
    pub backends_idle: usize,
    /// Backends being opened.
    pub backends_login: usize,
    /// How long the first client in line has waited.
    pub longest_wait: Duration,
}

impl Pool {
    /// PAUSE: no new checkouts; returns once every lent backend is back,
    /// then closes the idle ones.
    pub async fn pause(&self) {
        self.paused.store(true, Relaxed);
        while self.snapshot().backends_active > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.close_idle();
    }

    pub fn resume(&self) {
        self.paused.store(false, Relaxed);
        self.resumed.notify_waiters();
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Relaxed)
    }

    /// The generation backends are opened in; RECONNECT starts a new one.
    pub fn generation(&self) -> &AtomicU64 {
        &self.generation
    }

    /// RECONNECT: closes idle backends now and lent ones when they come
    /// back. The database's clients are woken: under `server_fast_close` a
    /// session-mode client idle on a marked backend gives it up now, not
    /// at its next query.
    pub fn reconnect(&self) {
        self.generation.fetch_add(1, Relaxed);
        self.close_idle();
        for client in self.target.registry.clients.iter() {
            if client.database == self.database {
                client.stop.nudge();
            }
        }
    }

    /// Whether a backend opened before the last RECONNECT is still open
    /// (WAIT_CLOSE waits until none is).
    pub fn has_stale_backends(&self) -> bool {
        let current = self.generation.load(Relaxed);
        self.target
            .registry
            .servers
            .iter()
            .any(|s| s.database == self.database && s.user == self.user && s.generation < current)
    }

    /// The sizes and times in force.
    pub fn settings(&self) -> PoolSettings {
        *self.settings.read().unwrap()
    }

    /// A reload changed them: a bigger pool serves its waiters now; a
    /// smaller one closes idle backends beyond the new size (and lent ones
    /// as they come back, through the regular sweep).
    pub fn update_settings(&self, new: PoolSettings, check_query: String) {
        *self.settings.write().unwrap() = new;
        {
            let mut s = self.state.lock().unwrap();
            s.rules = Rules::of(&new, &check_query);
            *self.check_query.write().unwrap() = check_query;
            while s.open > new.size.max(new.min_size) {
                let Some(b) = s.idle.pop_front() else { break };
                self.forget(&mut s, b);
            }
        }
        self.grant_slots();
        // Its timeouts may have changed.
        self.line_changed.notify_one();
    }

    /// Whether the last attempt to open a backend failed.
    pub fn failing(&self) -> bool {
        self.failing.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The pool's state right now, for the admin console and metrics.
    pub fn snapshot(&self) -> PoolSnapshot {
        let s = self.state.lock().unwrap();
        let clients = self.clients.load(std::sync::atomic::Ordering::Relaxed);
        PoolSnapshot {
            clients_active: clients.saturating_sub(s.waiters.len()),
            clients_waiting: s.waiters.len(),
            backends_active: s.open - s.idle.len() - s.connecting,
            backends_idle: s.idle.len(),
            backends_login: s.connecting,
            longest_wait: s
                .waiters
                .front()
                .map(|w| w.since.elapsed())
                .unwrap_or_default(),
        }
    }
}
