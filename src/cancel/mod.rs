//! Query cancellation across the pool: each client gets a pgdyno-issued
//! BackendKeyData; a CancelRequest with that key is sent on, with the real
//! key, to the backend serving that client at that moment, if any.
//!
//! Several pgdynos sharing a port (`so_reuseport`) each write their
//! `peer_id` into the keys they issue; a cancel that reaches the wrong one
//! is passed on to the issuer (`[peers]`), as PgBouncer's peering does.
//!
//! Binding a client to a backend is one store of the backend's id (twice
//! per transaction, so no lock and no reference count); the canceller
//! finds the backend's key by that id in the registry's SHOW SERVERS list.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::BytesMut;
use dashmap::DashMap;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::backend::{Backend, Target};
use crate::config::Config;
use crate::registry::{Registry, ServerEntry};

mod peer;

use peer::{issue_secret, issuer, HOPS};
pub use peer::{PeerCounts, PeerLines};

/// One more in a count while it lives.
pub(crate) struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    pub(crate) fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Cancels under way for one pool's backends, as SHOW POOLS counts them.
#[derive(Debug, Default)]
pub struct CancelCounts {
    /// Waiting for their connection to PostgreSQL to open
    /// (cl_waiting_cancel_req).
    pub waiting: AtomicUsize,
    /// Sent, waiting for PostgreSQL to close that connection
    /// (cl_active_cancel_req, sv_active_cancel: one connection each).
    pub active: AtomicUsize,
    /// Backends given back but held until the cancels aimed at them are
    /// done (sv_being_canceled).
    pub held: AtomicUsize,
}

/// How long a backend waits for a cancel aimed at it to be done before it
/// is closed instead of lent again (twice `cancel_wait_timeout`'s default).
const GATE_LIMIT: Duration = Duration::from_secs(20);

/// `delivery`, up to `cancel_wait_timeout` (no limit when 0); `None` if it
/// took longer.
async fn within<T>(config: &Config, delivery: impl std::future::Future<Output = T>) -> Option<T> {
    match config.cancel_wait_timeout {
        Some(limit) => tokio::time::timeout(limit, delivery).await.ok(),
        None => Some(delivery.await),
    }
}

/// Cancels under way against one backend. A backend with a cancel in
/// flight is not lent to anyone else until the cancel is done, so a late
/// cancel cannot hit the next client's query.
#[derive(Debug, Default)]
pub struct CancelGate {
    in_flight: AtomicUsize,
    done: Notify,
}

impl CancelGate {
    /// Read after [`CancelSlot::unbind`] (both sequentially consistent:
    /// see [`Cancels::cancel`]).
    pub fn busy(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
    }

    /// A cancel is on its way to the backend.
    fn enter(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// That cancel is done (or dropped): wakes a release waiting on it.
    fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.done.notify_waiters();
    }

    /// Waits until no cancel is in flight; false if that took too long.
    pub async fn wait(&self) -> bool {
        let idle = async {
            loop {
                let notified = self.done.notified();
                if !self.busy() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(GATE_LIMIT, idle).await.is_ok()
    }
}

/// What a cancel aimed at one backend needs besides its process id (the
/// entry's `remote_pid`), kept in its registry entry.
pub struct BackendKey {
    pub secret_key: i32,
    /// The TLS and TCP settings to send the cancel with. Weak: the target
    /// holds the registry that lists this key.
    pub target: Weak<Target>,
    /// Where the backend is (a reload may since have pointed its pool
    /// elsewhere).
    pub endpoint: Arc<crate::backend::Endpoint>,
    /// The backend's gate (the same as its [`crate::backend::Live::cancel_gate`]).
    pub gate: Arc<CancelGate>,
}

/// Without the secret: the registry's entries may be logged.
impl std::fmt::Debug for BackendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendKey").finish_non_exhaustive()
    }
}

/// One client's cancel key and its current backend.
pub struct CancelSlot {
    pub process_id: i32,
    pub secret_key: i32,
    /// The id of the backend the client is bound to, or 0.
    bound: AtomicU64,
}

impl CancelSlot {
    pub fn bind(&self, backend: &Backend) {
        self.bound.store(backend.id, Ordering::SeqCst);
    }

    /// Before the backend's release looks at its gate.
    pub fn unbind(&self) {
        self.bound.store(0, Ordering::SeqCst);
    }
}

/// All live clients' keys.
#[derive(Default)]
pub struct Cancels {
    slots: DashMap<i32, Arc<CancelSlot>>,
    /// Cancels on their way to other peers.
    pub peers: PeerLines,
}

impl Cancels {
    /// Issues a key (unique process id, random secret, carrying `peer_id`
    /// if not 0) for a new client.
    pub fn register(self: &Arc<Self>, peer_id: u16) -> CancelGuard {
        loop {
            let process_id = rand::random::<i32>() & i32::MAX;
            if process_id == 0 {
                continue;
            }
            let slot = Arc::new(CancelSlot {
                process_id,
                secret_key: issue_secret(peer_id),
                bound: AtomicU64::new(0),
            });
            if let dashmap::Entry::Vacant(e) = self.slots.entry(process_id) {
                e.insert(slot.clone());
                return CancelGuard {
                    cancels: self.clone(),
                    slot,
                };
            }
        }
    }

    /// Sends a cancel to the backend the keyed client is using, if any. An
    /// unknown key or an idle client cancels nothing, silently (as
    /// PostgreSQL does). `servers`: where the backends' keys are listed.
    /// Under peering, a key another peer issued goes to that peer.
    pub async fn cancel(
        &self,
        servers: &Registry,
        process_id: i32,
        secret_key: i32,
        config: &Config,
    ) {
        let mut secret_key = secret_key;
        if config.peer_id != 0 {
            let from = issuer(secret_key);
            if from != config.peer_id {
                return self
                    .peers
                    .pass_on(config, from, process_id, secret_key)
                    .await;
            }
            // The hops left are not part of the key.
            secret_key |= HOPS as i32;
        }
        let server = match self.slots.get(&process_id) {
            Some(slot)
                if crate::auth::constant_time_eq(
                    &slot.secret_key.to_be_bytes(),
                    &secret_key.to_be_bytes(),
                ) =>
            {
                in_flight_to(&slot, servers)
            }
            _ => None,
        };
        let Some(server) = server else {
            tracing::debug!(process_id, "cancel request for no running query");
            return;
        };
        match within(config, forward(&server)).await {
            Some(Ok(())) => tracing::debug!(backend_pid = server.remote_pid, "cancel forwarded"),
            Some(Err(e)) => tracing::warn!(error = %e, "could not forward cancel request"),
            None => tracing::warn!("cancel request timed out (cancel_wait_timeout)"),
        }
        server.key.gate.leave();
    }
}

/// The key of the backend `slot`'s client is bound to, counted in that
/// backend's gate; `None` if it is bound to none.
///
/// Counted, then checked again: the client unbinds, then looks at the gate
/// before it releases the backend, and all four steps are sequentially
/// consistent. So either this check sees the client still bound (and its
/// release then sees the cancel in flight, and waits), or it sees it gone
/// and the cancel is dropped. A cancel never reaches a backend that has
/// moved on to another client.
fn in_flight_to(slot: &CancelSlot, servers: &Registry) -> Option<Arc<ServerEntry>> {
    let id = slot.bound.load(Ordering::SeqCst);
    if id == 0 {
        return None;
    }
    let server = servers.servers.get(&id)?.clone();
    server.key.gate.enter();
    if slot.bound.load(Ordering::SeqCst) != id {
        server.key.gate.leave();
        return None;
    }
    Some(server)
}

async fn forward(server: &ServerEntry) -> std::io::Result<()> {
    let key = &server.key;
    let target = key
        .target
        .upgrade()
        .ok_or_else(|| std::io::Error::other("the backend's pool is gone"))?;
    let waiting = Counted::new(&target.cancels.waiting);
    let (stream, _) = target
        .open(&key.endpoint.upstream)
        .await
        .map_err(std::io::Error::other)?;
    drop(waiting);
    let _active = Counted::new(&target.cancels.active);
    send_cancel(stream, server.remote_pid, key.secret_key).await
}

/// Writes a CancelRequest on `stream` and waits for the other end to close
/// it, which PostgreSQL (or a peer) does once it has acted on it.
async fn send_cancel(
    mut stream: crate::stream::Stream,
    process_id: i32,
    secret_key: i32,
) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    frontend::cancel_request(process_id, secret_key, &mut buf);
    stream.write_all(&buf).await?;
    let mut rest = [0u8; 64];
    while stream.read(&mut rest).await? > 0 {}
    Ok(())
}

/// Removes the client's key when the client ends.
pub struct CancelGuard {
    cancels: Arc<Cancels>,
    pub slot: Arc<CancelSlot>,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.cancels.slots.remove(&self.slot.process_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(registry: &Registry, id: u64, gate: &Arc<CancelGate>) {
        let entry = ServerEntry {
            id,
            user: "u".into(),
            database: "d".into(),
            addr: "127.0.0.1".into(),
            port: 5432,
            connect_time_us: 0,
            remote_pid: 41,
            generation: 0,
            tls: String::new(),
            active: Default::default(),
            request_time_us: Default::default(),
            key: BackendKey {
                secret_key: 42,
                target: Weak::new(),
                endpoint: Arc::new(crate::backend::Endpoint {
                    upstream: crate::config::parse_upstream("postgres://127.0.0.1/d").unwrap(),
                    dbname: "d".into(),
                    credential: crate::backend::Credential::None,
                }),
                gate: gate.clone(),
            },
        };
        registry.servers.insert(id, Arc::new(entry));
    }

    #[test]
    fn a_cancel_is_counted_only_against_the_backend_its_client_is_bound_to() {
        let registry = Registry::default();
        let (gate, other) = (Arc::default(), Arc::default());
        listed(&registry, 7, &gate);
        listed(&registry, 8, &other);
        let slot = CancelSlot {
            process_id: 1,
            secret_key: 2,
            bound: AtomicU64::new(0),
        };
        assert!(in_flight_to(&slot, &registry).is_none(), "unbound");

        slot.bound.store(7, Ordering::SeqCst);
        let server = in_flight_to(&slot, &registry).expect("bound to 7");
        assert_eq!((server.remote_pid, server.key.secret_key), (41, 42));
        let shown = format!("{server:?}");
        assert!(shown.contains("41") && !shown.contains("42"), "{shown}");
        assert!(gate.busy() && !other.busy());
        // The client's release now waits for the cancel: it is done.
        server.key.gate.leave();
        assert!(!gate.busy());

        // A backend no longer listed (closed meanwhile) is not cancelled.
        slot.bound.store(9, Ordering::SeqCst);
        assert!(in_flight_to(&slot, &registry).is_none());
        assert!(!gate.busy() && !other.busy());
    }
}
