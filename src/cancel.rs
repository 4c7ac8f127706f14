//! Query cancellation across the pool: each client gets a pgdyno-issued
//! BackendKeyData; a CancelRequest with that key is sent on, with the real
//! key, to the backend serving that client at that moment, if any.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use dashmap::DashMap;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::backend::{Backend, Target};

/// How long a cancel may take before pgdyno stops waiting for it.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Cancels under way against one backend. A backend with a cancel in
/// flight is not lent to anyone else until the cancel is done, so a late
/// cancel cannot hit the next client's query.
#[derive(Debug, Default)]
pub struct CancelGate {
    in_flight: AtomicUsize,
    done: Notify,
}

impl CancelGate {
    pub fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
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
        tokio::time::timeout(CANCEL_TIMEOUT * 2, idle).await.is_ok()
    }
}

/// The backend a client is bound to right now.
#[derive(Clone)]
struct Bound {
    target: Arc<Target>,
    process_id: i32,
    secret_key: i32,
    gate: Arc<CancelGate>,
}

/// One client's cancel key and its current backend.
pub struct CancelSlot {
    pub process_id: i32,
    pub secret_key: i32,
    bound: Mutex<Option<Bound>>,
}

impl CancelSlot {
    pub fn bind(&self, backend: &Backend) {
        *self.bound.lock().unwrap() = Some(Bound {
            target: backend.target.clone(),
            process_id: backend.process_id,
            secret_key: backend.secret_key,
            gate: backend.cancel_gate.clone(),
        });
    }

    pub fn unbind(&self) {
        *self.bound.lock().unwrap() = None;
    }
}

/// All live clients' keys.
#[derive(Default)]
pub struct Cancels {
    slots: DashMap<i32, Arc<CancelSlot>>,
}

impl Cancels {
    /// Issues a key (unique process id, random secret) for a new client.
    pub fn register(self: &Arc<Self>) -> CancelGuard {
        loop {
            let process_id = rand::random::<i32>() & i32::MAX;
            if process_id == 0 {
                continue;
            }
            let slot = Arc::new(CancelSlot {
                process_id,
                secret_key: rand::random(),
                bound: Mutex::new(None),
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
    /// PostgreSQL does).
    pub async fn cancel(&self, process_id: i32, secret_key: i32) {
        let bound = match self.slots.get(&process_id) {
            Some(slot)
                if crate::auth::constant_time_eq(
                    &slot.secret_key.to_be_bytes(),
                    &secret_key.to_be_bytes(),
                ) =>
            {
                // Counted under the lock: the client's unbind and release
                // then see it.
                let bound = slot.bound.lock().unwrap();
                if let Some(b) = &*bound {
                    b.gate.in_flight.fetch_add(1, Ordering::AcqRel);
                }
                bound.clone()
            }
            _ => None,
        };
        let Some(bound) = bound else {
            tracing::debug!(process_id, "cancel request for no running query");
            return;
        };
        match tokio::time::timeout(CANCEL_TIMEOUT, forward(&bound)).await {
            Ok(Ok(())) => tracing::debug!(backend_pid = bound.process_id, "cancel forwarded"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not forward cancel request"),
            Err(_) => tracing::warn!("cancel request timed out"),
        }
        bound.gate.in_flight.fetch_sub(1, Ordering::AcqRel);
        bound.gate.done.notify_waiters();
    }
}

async fn forward(bound: &Bound) -> std::io::Result<()> {
    let (mut stream, _) = crate::backend::open(&bound.target.upstream, &bound.target.connector())
        .await
        .map_err(std::io::Error::other)?;
    let mut buf = BytesMut::new();
    frontend::cancel_request(bound.process_id, bound.secret_key, &mut buf);
    stream.write_all(&buf).await?;
    // PostgreSQL closes the connection once it has signalled the backend.
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
