//! Idle <-> bound, until the client leaves: waiting for the client's next
//! message, borrowing a backend for a stretch (a transaction, or in session
//! mode the session), and giving it back as the relay found it.

use std::sync::Arc;
use std::task::Poll;

use super::{Admission, Admitted};
use crate::config::PoolMode;
use crate::error::{Error, Result};
use crate::pool::Pool;
use crate::pooler::Pooler;
use crate::registry::ClientEntry;
use crate::relay::{Outcome, Relay, RelaySettings};
use crate::session::Session;
use crate::shutdown::StopLevel;
use crate::stream::Conn;

/// Idle <-> bound, until the client leaves.
pub(super) async fn serve_queries(client: &mut Admitted, pooler: &Pooler) -> Result<()> {
    let Admitted {
        conn,
        span,
        admission:
            Admission {
                session,
                pool,
                cancel,
                listed,
                ..
            },
    } = client;
    let me = &*listed.entry;
    let config = &pooler.config();
    let transaction_mode = pool.settings().mode == PoolMode::Transaction;
    let settings = RelaySettings {
        max_packet: config.max_packet_size,
        transaction_mode,
        max_prepared: config.max_prepared_statements,
        extra_tracked: &config.track_extra_parameters,
        stats: &pool.stats,
        timeouts: Some(&config.timeouts).filter(|t| t.in_relay(transaction_mode)),
        reset_after_each: transaction_mode && config.server_reset_query_always,
        span,
        fast_close: (!transaction_mode && config.server_fast_close).then(|| pool.generation()),
        refuse_simple_query: config.disable_pqexec,
    };
    // Made once: each poll is then one atomic load.
    let stop = me.stop.reached(StopLevel::Now);
    let stop_when_idle = me.stop.reached(StopLevel::WhenIdle);
    tokio::pin!(stop, stop_when_idle);
    let mut bound = Bound {
        conn,
        session,
        pool,
        settings,
        cancel: &cancel.slot,
        me,
        pooler,
    };
    loop {
        tokio::select! {
            biased;
            _ = &mut stop_when_idle => return Err(stopped(pooler)),
            more = idle_wait(bound.conn, config.timeouts.client_idle) => if !more? { return Ok(()) },
        }
        // Not boxed: the stretch's state is the backend's (see
        // `Live::stretch`), and its rare paths are boxed in `run`.
        if !bound.run(stop.as_mut()).await? {
            return Ok(());
        }
    }
}

/// What a client needs for one bound stretch: a transaction (or, in
/// session mode, the whole session) on a backend.
struct Bound<'a> {
    conn: &'a mut Conn,
    session: &'a mut Session,
    pool: &'a Arc<Pool>,
    settings: RelaySettings<'a>,
    cancel: &'a crate::cancel::CancelSlot,
    me: &'a ClientEntry,
    pooler: &'a Pooler,
}

/// Why a client's stop token fired: the shutdown, or KILL.
fn stopped(pooler: &Pooler) -> Error {
    if pooler.shutdown.drain.is_cancelled() {
        Error::ShuttingDown
    } else {
        Error::Killed
    }
}

impl Bound<'_> {
    /// Runs `server_reset_query` on a backend before reuse: at a
    /// session-mode client's end, or after each transaction with
    /// `server_reset_query_always`. What pgdyno knew of the backend's
    /// session (its parameters matching a client's, the statements it
    /// prepared there) is forgotten. Callers box it: rare paths keep every
    /// client's future small.
    async fn reset(&self, backend: &mut crate::backend::Backend) -> bool {
        let query = self.pooler.config().server_reset_query.clone();
        if query.is_empty() {
            return true;
        }
        backend.synced = None;
        backend.statements.clear();
        let ran = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            backend.simple_query(&query),
        );
        match ran.await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(parent: self.settings.span, error = %e, "server_reset_query failed; closing the backend");
                false
            }
            Err(_) => false,
        }
    }

    /// Takes a backend, relays until it can go back, gives it back.
    /// `Ok(false)` when the client left.
    async fn run(
        &mut self,
        mut stop: std::pin::Pin<&mut crate::shutdown::Reached<'_>>,
    ) -> Result<bool> {
        let pool = self.pool;
        let now = crate::clock::now();
        let mut backend = match pool.checkout_now(now) {
            Ok(backend) => backend,
            Err(due) => {
                self.me.start_waiting(now);
                let backend = tokio::select! {
                    biased;
                    b = pool.checkout_after(due, now) => b?,
                    _ = &mut stop => return Err(stopped(self.pooler)),
                };
                self.me.stop_waiting();
                backend
            }
        };
        self.cancel.bind(&backend);
        let mut relay = Relay::new(self.conn, &mut backend, self.session, &self.settings, now);
        let result = relay.run(stop).await;
        let mid_message = relay.client_mid_message();
        let now = relay.clock();
        drop(relay);
        self.cancel.unbind();
        let e = match result {
            // Only server_fast_close releases in session mode: the backend
            // goes, and the session with it.
            Ok(Outcome::Released) if !self.settings.transaction_mode => {
                release(pool, backend, false, now);
                return Err(Error::ServerFastClose);
            }
            Ok(Outcome::Released) if !self.settings.reset_after_each => {
                release(pool, backend, true, now);
                return Ok(true);
            }
            // No reset: a transaction-mode client left, or one left unclean.
            Ok(Outcome::ClientLeft { clean }) if !clean || self.settings.transaction_mode => {
                release(pool, backend, clean, crate::clock::now());
                return Ok(false);
            }
            // Reset: server_reset_query_always after each transaction, or a
            // session-mode client left. Boxed, with nothing else kept
            // across it: rare paths keep every client's future small.
            Ok(outcome @ (Outcome::Released | Outcome::ClientLeft { .. })) => {
                let reusable = Box::pin(self.reset(&mut backend)).await;
                release(pool, backend, reusable, crate::clock::now());
                return Ok(outcome == Outcome::Released);
            }
            Ok(Outcome::Stopped) => stopped(self.pooler),
            Err(e) => e,
        };
        release(pool, backend, false, now);
        if mid_message {
            self.conn.mid_message = true;
        } else {
            // Whole messages still queued go first: the error then starts
            // at a message boundary.
            let flush = tokio::time::timeout(std::time::Duration::from_secs(1), self.conn.flush());
            let _ = Box::pin(flush).await;
        }
        Err(e)
    }
}

/// Gives a backend back, once no cancel aimed at this client's query is
/// still on its way to it. `now`: the caller's last clock reading.
fn release(
    pool: &Arc<Pool>,
    backend: crate::backend::Backend,
    reusable: bool,
    now: crate::clock::Micros,
) {
    if !backend.cancel_gate.busy() {
        return pool.release_at(backend, reusable, now);
    }
    let pool = pool.clone();
    tokio::spawn(async move {
        let held = crate::cancel::Counted::new(&pool.target.cancels.held);
        let settled = backend.cancel_gate.wait().await;
        drop(held);
        pool.release(backend, reusable && settled);
    });
}

/// [`next_message`], up to `client_idle_timeout`.
async fn idle_wait(conn: &mut Conn, limit: Option<std::time::Duration>) -> Result<bool> {
    match limit {
        None => next_message(conn).await,
        // Boxed: the timer would double an idle client's task otherwise.
        Some(limit) => Box::pin(tokio::time::timeout(limit, next_message(conn)))
            .await
            .map_err(|_| Error::ClientIdleTimeout)?,
    }
}

/// Waits, unbound, until the client has sent a message header. `false`
/// when it sent Terminate or closed the connection. A client waiting with
/// nothing buffered holds no buffer (an idle client costs little memory):
/// the read that finds nothing gives them back, and the read after the
/// wake-up takes a pair again.
async fn next_message(conn: &mut Conn) -> Result<bool> {
    // One poll function, not nested futures: this runs once per transaction.
    std::future::poll_fn(|cx| {
        while conn.rbuf.len() < 5 {
            // Mostly so right after a transaction: the relay's read of
            // the client already waits (one read fewer per transaction).
            let polled = if conn.rbuf.is_empty() && conn.waits_for_input() {
                Poll::Pending
            } else {
                conn.poll_fill(cx)
            };
            match polled {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(false)),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::ClientIo(e))),
                Poll::Pending => {
                    if conn.rbuf.is_empty() && conn.rbuf.capacity() > 0 && !conn.pending_output() {
                        conn.release_buffers();
                    }
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(conn.rbuf[0] != b'X'))
    })
    .await
}
