//! Slowing down and then refusing addresses that keep failing to log in, so
//! that a pooler on an open network is no password oracle.
//!
//! Each failure from an address adds `auth_failure_delay / limit` of delay
//! before the error is sent; at `auth_failure_limit` failures the address is
//! refused outright for `auth_failure_block_time`. A success forgets it.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Addresses tracked at most; past this, stale ones are forgotten first.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

#[derive(Debug)]
pub struct Throttle {
    limit: u32,
    block_time: Duration,
    max_delay: Duration,
    by_addr: DashMap<IpAddr, Failures>,
}

impl Throttle {
    /// `limit == 0` turns it off.
    pub fn new(limit: u32, block_time: Duration, max_delay: Duration) -> Throttle {
        Throttle {
            limit,
            block_time,
            max_delay,
            by_addr: DashMap::new(),
        }
    }

    /// Whether `addr` is refused right now.
    pub fn blocked(&self, addr: IpAddr) -> bool {
        let now = Instant::now();
        self.by_addr
            .get(&addr)
            .and_then(|f| f.blocked_until)
            .is_some_and(|until| until > now)
    }

    /// Records a failure; returns how long to wait before answering, and
    /// whether this failure started a block.
    pub fn failed(&self, addr: IpAddr) -> (Duration, bool) {
        if self.limit == 0 {
            return (Duration::ZERO, false);
        }
        let now = Instant::now();
        if self.by_addr.len() >= MAX_TRACKED {
            let horizon = self.block_time;
            self.by_addr.retain(|_, f| now - f.last < horizon);
        }
        let mut entry = self.by_addr.entry(addr).or_insert(Failures {
            count: 0,
            last: now,
            blocked_until: None,
        });
        // Failures long ago do not count.
        if now - entry.last >= self.block_time {
            entry.count = 0;
            entry.blocked_until = None;
        }
        entry.count += 1;
        entry.last = now;
        let blocks = entry.count >= self.limit && entry.blocked_until.is_none_or(|u| u <= now);
        if blocks {
            entry.blocked_until = Some(now + self.block_time);
        }
        let delay = self
            .max_delay
            .mul_f64(f64::from(entry.count.min(self.limit)) / f64::from(self.limit));
        (delay, blocks)
    }

    pub fn succeeded(&self, addr: IpAddr) {
        self.by_addr.remove(&addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slows_then_blocks_then_forgets() {
        let t = Throttle::new(3, Duration::from_secs(60), Duration::from_millis(300));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(t.failed(a), (Duration::from_millis(100), false));
        assert_eq!(t.failed(a), (Duration::from_millis(200), false));
        assert!(!t.blocked(a));
        assert_eq!(t.failed(a), (Duration::from_millis(300), true));
        assert!(t.blocked(a));
        assert!(!t.blocked(b));
        t.succeeded(a);
        assert!(!t.blocked(a));
        let off = Throttle::new(0, Duration::from_secs(60), Duration::from_secs(1));
        assert_eq!(off.failed(a), (Duration::ZERO, false));
    }
}
