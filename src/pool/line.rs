//! The line of clients waiting for a backend: first come, first served.
//!
//! A waiting client holds only the receiving end of a oneshot. Whoever
//! frees something (a release, a slot, a bigger pool) hands it to the
//! front of the line. One task per pool, the line keeper, enforces the
//! times: it hands the reserve pool to the front once it has waited
//! `reserve_pool_timeout`, and ends the wait of clients past
//! `query_wait_timeout` (it drops their sender: the receive fails). Since
//! the line is in arrival order, the front's times come first, so the
//! keeper sleeps until the front's next deadline (or, with nobody waiting,
//! until the first client joins) and no waiting client carries a timer of
//! its own.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use super::{Grant, Pool, State};
use crate::clock::{self, Micros};

pub(super) struct Waiter {
    pub(super) since: Instant,
    tx: oneshot::Sender<Grant>,
}

/// A reserve slot the limits refused is asked for again this often.
const RESERVE_RETRY: Duration = Duration::from_secs(1);

impl Pool {
    /// Puts a client at the back of the line; it is served through the
    /// returned receiver.
    pub(super) fn join_line(&self, s: &mut State, since: Instant) -> oneshot::Receiver<Grant> {
        let (tx, rx) = oneshot::channel();
        s.waiters.push_back(Waiter { since, tx });
        if s.keeper_parked {
            s.keeper_parked = false;
            self.line_changed.notify_one();
        }
        rx
    }

    /// Serves the front of the line as its times say; returns when to look
    /// again (`None`: nobody waits, and the keeper parks until someone
    /// does; or there are no times to enforce).
    fn tend_line(&self, now: Instant) -> Option<Instant> {
        let settings = self.settings();
        let mut s = self.state.lock().unwrap();
        // Clients that gave up waiting (they left, or were stopped).
        s.waiters.retain(|w| !w.tx.is_closed());
        if settings.reserve_size > 0 {
            let max = settings.size + settings.reserve_size;
            while s
                .waiters
                .front()
                .is_some_and(|w| now >= w.since + settings.reserve_timeout)
            {
                let Some(grant) = self.take_or_reserve(&mut s, max, clock::now()) else {
                    break;
                };
                match hand_over(&mut s, grant) {
                    None => {
                        tracing::info!(event = "reserve_pool_used", database = %self.database, user = %self.user, "using the reserve pool");
                    }
                    Some(unwanted) => self.give_back(&mut s, unwanted, clock::now()),
                }
            }
        }
        if let Some(limit) = settings.query_wait_timeout {
            // Dropped, its sender with it: the client's wait ends in an error.
            while s.waiters.front().is_some_and(|w| now >= w.since + limit) {
                s.waiters.pop_front();
            }
        }
        let Some(front) = s.waiters.front() else {
            s.keeper_parked = true;
            return None;
        };
        // Due but refused (the reserve is all lent, or a limit is
        // reached): asked again a little later.
        let reserve_at = (settings.reserve_size > 0).then(|| {
            let at = front.since + settings.reserve_timeout;
            if at > now {
                at
            } else {
                now + RESERVE_RETRY
            }
        });
        let timeout_at = settings.query_wait_timeout.map(|t| front.since + t);
        // Neither: nothing to enforce until a reload (which wakes the
        // keeper), so joining the line need not.
        match (reserve_at, timeout_at) {
            (Some(r), Some(t)) => Some(r.min(t)),
            (r, t) => r.or(t),
        }
    }

    /// Takes back a grant nobody in line wanted: a backend goes idle, a
    /// slot is freed.
    pub(super) fn give_back(&self, s: &mut State, grant: Grant, now: Micros) {
        match grant {
            Grant::Backend(b) => {
                b.set_active(false, now);
                s.idle.push_back(b);
            }
            Grant::Slot => {
                s.open -= 1;
                self.limits.iter().for_each(|l| l.release_count_only());
            }
        }
    }
}

/// Gives `grant` to the first waiter still waiting; the grant back if
/// there is none.
pub(super) fn hand_over(s: &mut State, mut grant: Grant) -> Option<Grant> {
    while let Some(w) = s.waiters.pop_front() {
        match w.tx.send(grant) {
            Ok(()) => return None,
            Err(g) => grant = g,
        }
    }
    Some(grant)
}

/// The line keeper of one pool, until the pool is dropped.
pub(super) async fn keep_line(pool: Weak<Pool>, changed: Arc<Notify>) {
    loop {
        let next = match pool.upgrade() {
            Some(pool) => pool.tend_line(Instant::now()),
            None => return,
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = changed.notified() => {}
                }
            }
            None => changed.notified().await,
        }
    }
}
