//! The idle backends: a stack, most recently used on top. A checkout
//! takes from the top, as PgBouncer does; with `server_round_robin` it
//! takes from the bottom, the longest idle, as closing idle backends does.
//!
//! The top is the backend whose PostgreSQL process ran last: its caches
//! are warm, and under light load a few backends do all the work while the
//! rest wait for `server_idle_timeout`. (Giving each client the backend it
//! used last instead, tried before, kept every backend of the pool in
//! turn: `benches/load.sh`'s select-rate, 16 clients at 5,000 selects a
//! second, measured PostgreSQL's CPU per select 27% higher and the mean
//! latency 18% higher than behind PgBouncer, both level once it went.)

use super::{Pool, State};
use crate::backend::Backend;
use crate::clock::Micros;

impl Pool {
    /// The most recently used idle backend that is still sound (the least
    /// recently used, with `server_round_robin`).
    pub(super) fn take_idle(&self, s: &mut State, now: Micros) -> Option<Backend> {
        let take = |s: &mut State| match s.rules.round_robin {
            false => s.idle.pop_back(),
            true => s.idle.pop_front(),
        };
        while let Some(backend) = take(s) {
            if let Some(backend) = self.lend_if_sound(s, backend, now) {
                return Some(backend);
            }
        }
        None
    }

    /// An idle backend taken out of the list, marked lent; closed instead
    /// if PostgreSQL has closed it or is shutting down (it sent something
    /// unasked).
    fn lend_if_sound(&self, s: &mut State, backend: Backend, now: Micros) -> Option<Backend> {
        if backend.has_pending_input() {
            self.forget(s, backend);
            return None;
        }
        backend.set_active(true, now);
        Some(backend)
    }

    /// Drops a backend taken out of the idle list (state lock held).
    pub(super) fn forget(&self, s: &mut State, backend: Backend) {
        drop(backend);
        s.open -= 1;
        self.limits.iter().for_each(|l| l.release_count_only());
    }

    /// Closes one idle backend, for a [`Limit`] another pool waits on.
    pub(crate) fn close_one_idle(&self) -> bool {
        let mut s = self.state.lock().unwrap();
        match s.idle.pop_front() {
            Some(b) => {
                self.forget(&mut s, b);
                true
            }
            None => false,
        }
    }

    /// Closes every idle backend.
    pub fn close_idle(&self) {
        let mut s = self.state.lock().unwrap();
        while let Some(b) = s.idle.pop_front() {
            self.forget(&mut s, b);
        }
    }
}
