//! Peering: several pgdynos sharing a port (`so_reuseport`) each write
//! their `peer_id` into the cancel keys they issue, and a cancel that
//! reaches another of them is passed on to the issuer (`[peers]`), as
//! PgBouncer's peering does. Each peer takes at most its `pool_size`
//! cancels at once (PgBouncer's peer pools); the rest wait their turn.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use super::{send_cancel, within, Counted};
use crate::config::Config;

/// Under peering, a secret key's top 14 bits are the issuing peer's id and
/// the next 2 how many more times it may be passed on (a misconfigured
/// `[peers]` cannot send a cancel round for ever); 16 bits stay random,
/// besides the 31 of the process id.
const PEER_SHIFT: u32 = 18;
const HOPS_SHIFT: u32 = 16;
pub(super) const HOPS: u32 = 0b11 << HOPS_SHIFT;

/// A new client's secret key.
pub(super) fn issue_secret(peer_id: u16) -> i32 {
    let random = rand::random::<u32>();
    if peer_id == 0 {
        return random as i32;
    }
    ((u32::from(peer_id) << PEER_SHIFT) | HOPS | (random & 0xffff)) as i32
}

/// The peer that issued `secret_key` (under peering).
pub(super) fn issuer(secret_key: i32) -> u16 {
    ((secret_key as u32) >> PEER_SHIFT) as u16
}

/// Cancels on their way to each peer, by peer id (made at its first cancel).
#[derive(Default)]
pub struct PeerLines {
    lines: Mutex<BTreeMap<u16, Arc<PeerLine>>>,
}

/// One peer's cancels under way (PgBouncer's peer pool).
struct PeerLine {
    /// A permit per connection that may be open to the peer.
    slots: Semaphore,
    /// The permits made so far: the peer's `pool_size`, or more until
    /// permits in use come back after it was lowered. Changed only under
    /// the lines' lock.
    size: AtomicUsize,
    /// Cancels waiting for a slot, or for their connection to open.
    waiting: AtomicUsize,
    /// Connections being opened.
    login: AtomicUsize,
    /// Cancels written to the peer, waiting for it to close the connection.
    active: AtomicUsize,
}

/// One peer's line as SHOW PEER_POOLS shows it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PeerCounts {
    pub waiting: usize,
    pub login: usize,
    pub active: usize,
}

impl PeerLines {
    /// Sends a cancel for a key peer `to` issued on to that peer, one hop
    /// fewer left, once one of its `pool_size` slots is free.
    pub(super) async fn pass_on(&self, config: &Config, to: u16, process_id: i32, secret_key: i32) {
        let hops = (secret_key as u32 & HOPS) >> HOPS_SHIFT;
        let Some(peer) = config.peers.get(&to).filter(|_| hops > 0) else {
            tracing::debug!(
                peer = to,
                hops,
                "cancel request for an unknown peer, or passed on too often"
            );
            return;
        };
        let secret_key = ((secret_key as u32 & !HOPS) | ((hops - 1) << HOPS_SHIFT)) as i32;
        let line = self.line(to, peer.pool_size);
        let send = async {
            let waiting = Counted::new(&line.waiting);
            let _slot = line.slots.acquire().await.map_err(std::io::Error::other)?;
            let login = Counted::new(&line.login);
            let (stream, _) = crate::backend::open(
                &peer.upstream,
                &crate::tls::Connector::disabled(),
                &config.tcp,
            )
            .await
            .map_err(std::io::Error::other)?;
            drop((waiting, login));
            let _active = Counted::new(&line.active);
            send_cancel(stream, process_id, secret_key).await
        };
        match within(config, send).await {
            Some(Ok(())) => tracing::debug!(peer = to, "cancel passed on to its peer"),
            Some(Err(e)) => {
                tracing::warn!(peer = to, error = %e, "could not pass a cancel on to its peer")
            }
            None => tracing::warn!(
                peer = to,
                "passing a cancel on to its peer timed out (cancel_wait_timeout)"
            ),
        }
    }

    /// Peer `id`'s line, its slots made to match `pool_size` (which a
    /// reload may have changed).
    fn line(&self, id: u16, pool_size: usize) -> Arc<PeerLine> {
        let mut lines = self.lines.lock().unwrap();
        let line = lines.entry(id).or_insert_with(|| {
            Arc::new(PeerLine {
                slots: Semaphore::new(pool_size),
                size: AtomicUsize::new(pool_size),
                waiting: AtomicUsize::new(0),
                login: AtomicUsize::new(0),
                active: AtomicUsize::new(0),
            })
        });
        let size = line.size.load(Relaxed);
        if pool_size > size {
            line.slots.add_permits(pool_size - size);
            line.size.store(pool_size, Relaxed);
        } else if pool_size < size {
            // Only free permits go now; the next cancel takes the rest.
            let gone = line.slots.forget_permits(size - pool_size);
            line.size.store(size - gone, Relaxed);
        }
        line.clone()
    }

    /// Peer `id`'s cancels under way (none if it has had none).
    pub fn counts(&self, id: u16) -> PeerCounts {
        let lines = self.lines.lock().unwrap();
        lines
            .get(&id)
            .map_or_else(PeerCounts::default, |l| PeerCounts {
                waiting: l.waiting.load(Relaxed),
                login: l.login.load(Relaxed),
                active: l.active.load(Relaxed),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_their_issuers_peer_id_and_hops() {
        for peer in [1, 2, 777, crate::config::MAX_PEER_ID] {
            for _ in 0..100 {
                let secret = issue_secret(peer);
                assert_eq!(issuer(secret), peer);
                assert_eq!(secret as u32 & HOPS, HOPS, "every hop left at first");
            }
        }
        // Without peering the whole secret is random.
        let secrets: std::collections::HashSet<_> =
            (0..64).map(|_| issuer(issue_secret(0))).collect();
        assert!(secrets.len() > 1);
    }

    #[test]
    fn a_lowered_pool_size_takes_slots_back_as_they_free() {
        let lines = PeerLines::default();
        let line = lines.line(1, 3);
        let held = line.slots.try_acquire_many(2).unwrap();
        lines.line(1, 1);
        assert_eq!(line.slots.available_permits(), 0, "the free one went");
        assert_eq!(line.size.load(Relaxed), 2, "two still owed");
        drop(held);
        lines.line(1, 1);
        assert_eq!(line.slots.available_permits(), 1);
        lines.line(1, 4);
        assert_eq!(line.slots.available_permits(), 4);
    }
}
