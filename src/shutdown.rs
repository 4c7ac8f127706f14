//! Stopping without losing work, in PgBouncer's two ways. Either way no
//! new client is let in, and at the deadline (`shutdown_timeout`) the
//! clients still there are closed: those in a transaction get `57P01` and
//! their backends are closed, so PostgreSQL rolls the transaction back.
//!
//! - Waiting for clients (SIGTERM, `SHUTDOWN WAIT_FOR_CLIENTS`): connected
//!   clients go on being served, new transactions too, until they leave;
//!   a rolling restart behind `so_reuseport` is this.
//! - Draining (SIGINT, `SHUTDOWN WAIT_FOR_SERVERS`, `SHUTDOWN`): each client
//!   is closed once it is between transactions, so backends are released.
//!
//! Each client has a [`Stop`]: the registry raises every client's as the
//! shutdown proceeds (see `registry.rs`), KILL raises one client's.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering::SeqCst};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// A shutdown has begun, of either kind: stop accepting.
    pub begun: CancellationToken,
    /// Close clients at their next idle moment.
    pub drain: CancellationToken,
    /// Close everyone now.
    pub close: CancellationToken,
}

impl Shutdown {
    /// Drains (PgBouncer's WAIT_FOR_SERVERS), and closes everyone left
    /// `timeout` after the shutdown began. A drain may follow a wait for
    /// clients: the first deadline stays.
    pub fn begin(&self, timeout: Duration) {
        if self.drain.is_cancelled() {
            return;
        }
        self.drain.cancel();
        self.close_after(timeout);
    }

    /// Stops accepting and waits for the clients to leave (PgBouncer's
    /// WAIT_FOR_CLIENTS); closes everyone left after `timeout`.
    pub fn wait_for_clients(&self, timeout: Duration) {
        self.close_after(timeout);
    }

    /// Whether a shutdown of either kind has begun.
    pub fn has_begun(&self) -> bool {
        self.begun.is_cancelled()
    }

    /// Begins, unless begun already, and schedules the close.
    fn close_after(&self, timeout: Duration) {
        if self.begun.is_cancelled() {
            return;
        }
        self.begun.cancel();
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(timeout) => {
                    tracing::warn!(?timeout, "shutdown_timeout reached: closing the clients still connected");
                    this.now();
                }
                _ = this.close.cancelled() => {}
            }
        });
    }

    /// Closes everyone at once (a second signal, or SIGQUIT).
    pub fn now(&self) {
        self.begun.cancel();
        self.drain.cancel();
        self.close.cancel();
    }
}

/// How far a client is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum StopLevel {
    /// At its next idle moment (the shutdown's drain).
    WhenIdle = 1,
    /// Now (KILL, or the shutdown's close).
    Now = 2,
}

/// Ends one client from outside its task. The client's task polls this on
/// every wake-up, so a poll is one atomic load: the task's waker is stored
/// once, on its first wait, and woken when the level is raised.
/// (A [`CancellationToken`] takes two mutexes per poll.)
#[derive(Debug, Default)]
pub struct Stop {
    level: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

impl Stop {
    /// Asks the client to stop (a lower level than already asked is a no-op).
    pub fn raise(&self, level: StopLevel) {
        if self.level.fetch_max(level as u8, SeqCst) < level as u8 {
            self.nudge();
        }
    }

    /// Wakes the client's task without asking it to stop, to look again
    /// at what may have changed under it (RECONNECT marking its backend,
    /// under `server_fast_close`). A spurious wake-up costs one poll.
    pub fn nudge(&self) {
        if let Some(waker) = self.waker.lock().unwrap().as_ref() {
            waker.wake_by_ref();
        }
    }

    pub fn is_raised(&self, level: StopLevel) -> bool {
        self.level.load(SeqCst) >= level as u8
    }

    /// Completes once the stop reaches `level`. Poll it from the client's
    /// own task only: it keeps the first waker it is polled with.
    pub fn reached(&self, level: StopLevel) -> Reached<'_> {
        Reached {
            stop: self,
            level,
            registered: false,
        }
    }
}

/// [`Stop::reached`].
#[derive(Debug)]
pub struct Reached<'a> {
    stop: &'a Stop,
    level: StopLevel,
    registered: bool,
}

impl Future for Reached<'_> {
    type Output = ();

    /// Inlined: a client polls it at every wake-up, and after the first
    /// poll it is one atomic load.
    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.stop.is_raised(self.level) {
            return Poll::Ready(());
        }
        if !self.registered {
            return self.register(cx);
        }
        Poll::Pending
    }
}

impl Reached<'_> {
    /// The first poll's part: keeps the client's waker.
    #[cold]
    fn register(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut slot = self.stop.waker.lock().unwrap();
            if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *slot = Some(cx.waker().clone());
            }
        }
        self.registered = true;
        // Raised between the first check and the waker's storing.
        if self.stop.is_raised(self.level) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn raising_a_stop_wakes_its_waiting_client() {
        let stop = Arc::new(Stop::default());
        let waiter = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let now = stop.reached(StopLevel::Now);
                let idle = stop.reached(StopLevel::WhenIdle);
                tokio::pin!(now, idle);
                // The drain ends the idle wait but not the "now" one.
                (&mut idle).await;
                let early = futures_poll_once(now.as_mut()).await;
                now.await;
                early
            })
        };
        tokio::task::yield_now().await;
        stop.raise(StopLevel::WhenIdle);
        tokio::task::yield_now().await;
        stop.raise(StopLevel::WhenIdle);
        stop.raise(StopLevel::Now);
        let early = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert!(!early, "Now was reached by the drain alone");
        assert!(stop.is_raised(StopLevel::Now));
    }

    #[tokio::test]
    async fn a_stop_raised_before_the_wait_is_seen_at_once() {
        let stop = Stop::default();
        stop.raise(StopLevel::Now);
        // A lower level afterwards does not lower it.
        stop.raise(StopLevel::WhenIdle);
        tokio::time::timeout(Duration::from_secs(5), stop.reached(StopLevel::WhenIdle))
            .await
            .expect("ready at once");
        assert!(stop.is_raised(StopLevel::Now));
    }

    /// Polls once: whether it was ready.
    async fn futures_poll_once(f: Pin<&mut Reached<'_>>) -> bool {
        let mut f = Some(f);
        std::future::poll_fn(|cx| Poll::Ready(f.take().unwrap().poll(cx).is_ready())).await
    }
}
