//! Query cancellation across the pool: each client gets a pgdyno-issued
//! BackendKeyData; a CancelRequest with that key is sent on, with the real
//! key, to the backend serving that client at that moment, if any.

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use dashmap::DashMap;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;

use crate::backend::{Backend, Target};

/// The backend a client is bound to right now.
#[derive(Clone)]
struct Bound {
    target: Arc<Target>,
    process_id: i32,
    secret_key: i32,
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
                slot.bound.lock().unwrap().clone()
            }
            _ => None,
        };
        let Some(bound) = bound else {
            tracing::debug!(process_id, "cancel request for no running query");
            return;
        };
        if let Err(e) = forward(&bound).await {
            tracing::warn!(error = %e, "could not forward cancel request");
        }
    }
}

async fn forward(bound: &Bound) -> std::io::Result<()> {
    let mut stream = crate::backend::open_raw(&bound.target.upstream)
        .await
        .map_err(std::io::Error::other)?;
    let mut buf = BytesMut::new();
    frontend::cancel_request(bound.process_id, bound.secret_key, &mut buf);
    stream.write_all(&buf).await?;
    stream.shutdown().await
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
