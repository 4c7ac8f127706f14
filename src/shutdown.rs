//! Stopping without losing work: first drain (no new clients; each client is
//! closed once it is between transactions), then, at the deadline, close
//! (clients still in a transaction get `57P01` and their backends are closed,
//! so PostgreSQL rolls the transaction back).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Stop accepting; close clients at their next idle moment.
    pub drain: CancellationToken,
    /// Close everyone now.
    pub close: CancellationToken,
}

impl Shutdown {
    /// Starts draining and schedules the close for `timeout` from now.
    pub fn begin(&self, timeout: Duration) {
        if self.drain.is_cancelled() {
            return;
        }
        self.drain.cancel();
        let close = self.close.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(timeout) => {
                    tracing::warn!(?timeout, "shutdown_timeout reached: closing clients still in a transaction");
                    close.cancel();
                }
                _ = close.cancelled() => {}
            }
        });
    }

    /// Closes everyone at once (a second signal, or SIGQUIT).
    pub fn now(&self) {
        self.drain.cancel();
        self.close.cancel();
    }
}
