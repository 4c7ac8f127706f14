//! A pool's upkeep, once a second: idle backends past `server_idle_timeout`
//! or `server_lifetime` closed, `min_pool_size` refilled, slots freed by a
//! reload granted, the end of a saturation logged.

use std::sync::Weak;
use std::time::Duration;

use super::{Grant, Pool};
use crate::clock;

impl Pool {
    /// Closes idle backends past `server_idle_timeout` (keeping
    /// `min_pool_size`) or `server_lifetime`; returns how many to open to
    /// reach `min_pool_size`.
    fn sweep(&self) -> usize {
        let settings = self.settings();
        let mut s = self.state.lock().unwrap();
        let now = clock::now();
        // Clients stopped waiting (checked once a second, so a pool at the
        // edge does not log every transaction).
        if s.waiters.is_empty() {
            if let Some(since) = s.saturated_since.take() {
                tracing::info!(
                    event = "pool_unsaturated",
                    database = %self.database,
                    user = %self.user,
                    saturated_ms = since.elapsed().as_millis() as u64,
                    "no client is waiting any more"
                );
            }
        }
        let mut i = 0;
        while i < s.idle.len() {
            let b = &s.idle[i];
            let idle_too_long = settings
                .idle_timeout
                .is_some_and(|t| now.passed(b.last_used, t) && s.open > settings.min_size);
            let too_old = settings.lifetime.is_some_and(|l| now.passed(b.created, l));
            if idle_too_long || too_old || b.has_pending_input() {
                let b = s.idle.remove(i).expect("index checked");
                self.forget(&mut s, b);
            } else {
                i += 1;
            }
        }
        let missing = settings.min_size.saturating_sub(s.open);
        let mut granted = 0;
        for _ in 0..missing {
            if !self.acquire_limits() {
                break;
            }
            s.open += 1;
            granted += 1;
        }
        granted
    }
}

/// Background upkeep of one pool, until the pool is dropped.
pub(super) async fn maintain(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.grant_slots();
        let granted = pool.sweep();
        for opened in 0..granted {
            match pool.use_grant(Grant::Slot).await {
                Ok(b) => pool.release(b, true),
                Err(_) => {
                    // use_grant gave this slot back; the rest, counted open
                    // by sweep, go back too (else each outage shrinks the pool).
                    for _ in opened + 1..granted {
                        pool.free_slot();
                    }
                    break;
                }
            }
        }
    }
}
