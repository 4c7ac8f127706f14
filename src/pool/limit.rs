//! A count of backends shared by several pools: `max_db_connections`
//! across the users of one database, `max_user_connections` across the
//! databases of one user.

use std::sync::{Mutex, Weak};

use super::Pool;

#[derive(Debug)]
pub struct Limit {
    /// 0: no limit. Changed by a reload.
    max: std::sync::atomic::AtomicUsize,
    state: Mutex<LimitState>,
}

#[derive(Debug, Default)]
struct LimitState {
    used: usize,
    members: Vec<Weak<Pool>>,
}

impl Limit {
    /// `max == 0` means no limit.
    pub fn new(max: usize) -> Limit {
        Limit {
            max: max.into(),
            state: Mutex::default(),
        }
    }

    fn max(&self) -> usize {
        self.max.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_max(&self, max: usize) {
        self.max.store(max, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn join(&self, pool: Weak<Pool>) {
        let mut s = self.state.lock().unwrap();
        s.members.retain(|p| p.strong_count() > 0);
        s.members.push(pool);
    }

    pub fn try_acquire(&self) -> bool {
        let mut s = self.state.lock().unwrap();
        if self.max() == 0 || s.used < self.max() {
            s.used += 1;
            true
        } else {
            false
        }
    }

    /// Gives a slot back and lets the member pools' waiters use it.
    pub fn release(&self) {
        let members: Vec<_> = {
            let mut s = self.state.lock().unwrap();
            s.used = s.used.saturating_sub(1);
            if self.max() == 0 {
                return;
            }
            s.members.iter().filter_map(Weak::upgrade).collect()
        };
        for pool in members {
            if pool.grant_slots() {
                break;
            }
        }
    }

    /// Gives a slot back without waking member pools (for callers holding a
    /// pool lock; the pools' upkeep retries their waiters every second).
    pub(super) fn release_count_only(&self) {
        let mut s = self.state.lock().unwrap();
        s.used = s.used.saturating_sub(1);
    }

    /// The limit is full: closes one idle backend of another member pool so
    /// that a waiting pool can open its own. Returns whether one was closed.
    pub fn evict_idle(&self, except: &Pool) -> bool {
        if self.max() == 0 {
            return false;
        }
        let members: Vec<_> = self
            .state
            .lock()
            .unwrap()
            .members
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        members
            .iter()
            .filter(|p| !std::ptr::eq(p.as_ref(), except))
            .any(|p| p.close_one_idle())
    }
}
