//! The idle backends: a stack, most recently used on top. A checkout
//! takes from the top, except that a client coming back soon gets its last
//! backend again ([`AFFINITY`]); with `server_round_robin` it takes from
//! the bottom, the longest idle, as closing idle backends does.

use std::time::Duration;

use super::{Pool, State};
use crate::backend::{Backend, BackendAddr};
use crate::clock::Micros;

/// A client's next transaction goes back to the backend it used last if
/// that one is idle and was given back at most this long ago. The same
/// pair again finds its state still in the CPU's caches, the kernel's
/// socket state too, and in PostgreSQL its session's caches and the
/// statements it prepared: measured with `pgbench -S` (16 clients, pool
/// 16), about 1 µs less CPU per select in pgdyno, 3% in all.
///
/// Only a recent release counts: a client back after longer takes the
/// most recently used backend, as PgBouncer does, so that a pool whose
/// load fell still leaves its other backends to `server_idle_timeout`.
/// (A client that comes back this soon is a busy one.)
pub const AFFINITY: Duration = Duration::from_millis(10);

impl Pool {
    /// The backend at `last`, if it is idle, sound, and was given back
    /// within [`AFFINITY`].
    pub(super) fn take_again(
        &self,
        s: &mut State,
        last: BackendAddr,
        now: Micros,
    ) -> Option<Backend> {
        if s.rules.round_robin {
            return None;
        }
        // Given back recently, it is at or near the top of the stack.
        let i = s.idle.iter().rposition(|b| b.addr() == last)?;
        if now.passed(s.idle[i].last_used, AFFINITY) {
            return None;
        }
        let backend = s.idle.remove(i)?;
        self.lend_if_sound(s, backend, now)
    }

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
