//! One bound stretch of a client's life: its messages go to the backend,
//! the backend's replies come back, until the backend may be released.
//!
//! Both directions are pumped at once from one task (no channel, no second
//! task): bytes are read into each socket's read buffer, a
//! [`Scanner`](crate::protocol::frame::Scanner) finds message boundaries and
//! copies messages to the other socket's write buffer as [`requests`] and
//! [`responses`] decide, and each write buffer goes out in one system call.
//! Most messages are copied unparsed; [`pipeline`] keeps count of what the
//! backend still owes. That byte work is [`translate`]'s, apart from the
//! sockets, so that `fuzzing` (behind the cargo feature of that name) can
//! drive it too.
//!
//! A transaction-mode backend goes back to the pool when it owes nothing,
//! nothing extended waits for a Sync, its last ReadyForQuery said idle, and
//! no byte is left half-way in either direction (nor part of a client
//! message read).

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod pipeline;
mod requests;
mod responses;
mod translate;

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;

use crate::backend::Live;
use crate::clock::{self, Micros};
use crate::config::Timeouts;
use crate::error::{Error, Result};
use crate::protocol::TransactionStatus;
use crate::session::Session;
use crate::stats::PoolStats;
use crate::stream::{Conn, READ_BUF};
use pipeline::Kind;
use translate::BackendSide;
pub(crate) use translate::Translation;

/// How far a direction reads ahead of what the other side has taken.
const MAX_BUFFERED: usize = 64 * 1024;

/// How a bound stretch ended (errors aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backend is idle and owes the client nothing: release it.
    Released,
    /// The client sent Terminate or closed its socket. `clean` says whether
    /// the backend was idle with nothing outstanding at that moment.
    ClientLeft { clean: bool },
    /// The caller's stop came first (the backend's state is then unknown).
    Stopped,
}

/// Settings the relay works by.
#[derive(Debug, Clone, Copy)]
pub struct RelaySettings<'a> {
    pub max_packet: usize,
    /// Transaction mode: release at the first clean point, rename statements.
    pub transaction_mode: bool,
    /// With `server_reset_query_always`: the client resets the backend
    /// after each stretch, before releasing it.
    pub reset_after_each: bool,
    pub max_prepared: usize,
    pub extra_tracked: &'a [String],
    pub stats: &'a PoolStats,
    /// The timeouts, if any is set (a reference: every idle client's task
    /// holds these settings).
    pub timeouts: Option<&'a Timeouts>,
    /// The client's log span, for the relay's log lines.
    pub span: &'a tracing::Span,
    /// Session mode with `server_fast_close`: the pool's generation. A
    /// backend from an older one (RECONNECT, a changed upstream) is given
    /// up at the next clean point ([`Outcome::Released`] in session mode).
    pub fast_close: Option<&'a std::sync::atomic::AtomicU64>,
    /// `disable_pqexec`: a simple Query ends the client's connection.
    pub refuse_simple_query: bool,
}

/// A bound stretch's sockets and settings. What it has translated so far
/// is the backend's [`Live::stretch`].
pub struct Relay<'a> {
    client: &'a mut Conn,
    backend: &'a mut Live,
    session: &'a mut Session,
    settings: &'a RelaySettings<'a>,
    /// The clock reading given at the start serves the first wake-up.
    fresh: bool,
    /// The timer of whichever timeout applies to what the relay waits on.
    watch: Option<Watch>,
}

/// What the relay is waiting on, for the timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// The backend owes replies: `query_timeout`.
    Backend,
    /// The client, inside a transaction: `idle_transaction_timeout`.
    ClientInTransaction,
    /// The client, between transactions (session mode): `client_idle_timeout`.
    Client,
}

struct Watch {
    waiting: Option<Waiting>,
    /// When what the relay waits on times out, from when it began.
    waiting_until: Option<tokio::time::Instant>,
    /// The deadline `sleep` is set to.
    armed: Option<tokio::time::Instant>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<'a> Relay<'a> {
    /// `now`: the caller's clock reading as the client's request came.
    pub fn new(
        client: &'a mut Conn,
        backend: &'a mut Live,
        session: &'a mut Session,
        settings: &'a RelaySettings<'a>,
        now: Micros,
    ) -> Self {
        backend.stretch.restart(now);
        Relay {
            client,
            backend,
            session,
            settings,
            fresh: true,
            watch: settings.timeouts.is_some().then(|| Watch {
                waiting: None,
                waiting_until: None,
                armed: None,
                sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            }),
        }
    }

    /// Pumps both directions until the backend may be released, the
    /// client leaves, or `stop` completes. (`stop` is polled here rather
    /// than raced in a `select!`, which cost more than it guards.)
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped relay leaves the backend in an unknown
    /// state; the caller must then close it, as after `Stopped`.
    pub async fn run(&mut self, mut stop: Pin<&mut impl Future<Output = ()>>) -> Result<Outcome> {
        // Make the backend's session parameters the client's first.
        let backend: &mut Live = self.backend;
        if !self.session.synced(&backend.synced) {
            if self
                .session
                .sync_query(&backend.params, &mut backend.conn.wbuf)
            {
                backend.stretch.pipeline.expect(Kind::Query, true, None);
            } else {
                backend.synced = Some(self.session.params.clone());
            }
        }
        // The client's buffer already holds its first message.
        self.translate_client()?;
        let outcome = poll_fn(|cx| match self.poll_run(cx) {
            Poll::Pending => stop.as_mut().poll(cx).map(|()| Ok(Outcome::Stopped)),
            done => done,
        })
        .await;
        self.settings.stats.add(&self.backend.stretch.tally);
        outcome
    }

    fn translate_client(&mut self) -> Result<()> {
        let (t, side) = BackendSide::of(self.backend);
        t.client(
            self.session,
            self.settings,
            &mut self.client.rbuf,
            &mut self.client.wbuf,
            side,
        )
    }

    fn translate_backend(&mut self) -> Result<()> {
        let (t, side) = BackendSide::of(self.backend);
        t.backend(self.session, self.settings, &mut self.client.wbuf, side)
    }

    /// The relay's last clock reading (it reads one per wake-up).
    pub fn clock(&self) -> Micros {
        self.backend.stretch.tally.now
    }

    /// One wake-up's work. A socket read or write that returned `Pending`
    /// has its waker registered and is not polled again until the next
    /// wake-up (a poll costs a lock in tokio's I/O driver); the backend's
    /// side goes first, so that a stretch whose reply completes it is
    /// released without polling the client at all (its next request waits
    /// in the socket for the idle client's read).
    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<Result<Outcome>> {
        if !std::mem::take(&mut self.fresh) {
            self.backend.stretch.tally.now = clock::now();
        }
        let mut waiting = Parked::default();
        loop {
            let mut progress = false;

            // Client -> backend: what was translated goes out.
            if !waiting.backend_write && self.backend.conn.pending_output() {
                match self.backend.conn.poll_send(cx) {
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::WriteZero => {
                        return Poll::Ready(Err(Error::BackendGone))
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::BackendIo(e))),
                    Poll::Pending => waiting.backend_write = true,
                }
            }

            // Backend -> client.
            let need = self.backend.stretch.backend_need;
            let room = (self.backend.conn.rbuf.len() < MAX_BUFFERED || need > 0)
                && self.client.wbuf.len() < MAX_BUFFERED;
            if !waiting.backend_read && room {
                reserve(&mut self.backend.conn.rbuf, need);
                match self.backend.conn.poll_read(cx) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(Error::BackendGone)),
                    Poll::Ready(Ok(_)) => {
                        self.translate_backend()?;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::BackendIo(e))),
                    Poll::Pending => waiting.backend_read = true,
                }
            }
            if !waiting.client_write && self.client.pending_output() {
                match self.client.poll_send(cx) {
                    Poll::Ready(Ok(n)) => {
                        self.backend.stretch.tally.bytes_sent += n as u64;
                        progress = true;
                    }
                    Poll::Ready(Err(_)) => {
                        // The client is gone; what it was owed no longer matters.
                        self.client.wbuf.clear();
                        return Poll::Ready(Ok(Outcome::ClientLeft { clean: false }));
                    }
                    Poll::Pending => waiting.client_write = true,
                }
            }
            // Not with part of a client message read: it goes on here.
            if (self.settings.transaction_mode || self.marked_for_closing())
                && self.is_clean()
                && !self.client.pending_output()
                && self.client.rbuf.is_empty()
            {
                return Poll::Ready(Ok(Outcome::Released));
            }

            // The client's next messages.
            // A message held whole is read to its end, however far past
            // MAX_BUFFERED it goes (max_packet_size bounds it).
            let need = self.backend.stretch.client_need;
            let room = (self.client.rbuf.len() < MAX_BUFFERED || need > 0)
                && self.backend.conn.wbuf.len() < MAX_BUFFERED;
            if !waiting.client_read && !self.backend.stretch.client_done && room {
                reserve(&mut self.client.rbuf, need);
                match self.client.poll_read(cx) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        self.translate_client()?;
                        progress = true;
                    }
                    // End of stream or a broken socket: the client is gone.
                    Poll::Ready(_) => {
                        self.backend.stretch.client_done = true;
                        progress = true;
                    }
                    Poll::Pending => waiting.client_read = true,
                }
            }
            if self.backend.stretch.client_done && !self.backend.conn.pending_output() {
                return Poll::Ready(Ok(Outcome::ClientLeft {
                    clean: self.is_clean(),
                }));
            }

            if !progress {
                if let Poll::Ready(e) = self.poll_timeouts(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Pending;
            }
        }
    }

    /// Arms the timer for what the relay now waits on, or for the end of
    /// `transaction_timeout` if that comes first; an expired timer is the
    /// error that ends the stretch (the backend is then closed).
    fn poll_timeouts(&mut self, cx: &mut Context<'_>) -> Poll<Error> {
        let (Some(watch), Some(timeouts)) = (&mut self.watch, self.settings.timeouts) else {
            return Poll::Pending;
        };
        let pipeline = &self.backend.stretch.pipeline;
        let waiting = if !pipeline.is_empty() {
            Waiting::Backend
        } else if pipeline.status != TransactionStatus::Idle {
            Waiting::ClientInTransaction
        } else {
            Waiting::Client
        };
        if watch.waiting != Some(waiting) {
            watch.waiting = Some(waiting);
            let timeout = match waiting {
                Waiting::Backend => timeouts.query,
                Waiting::ClientInTransaction => timeouts.idle_transaction,
                // In transaction mode the client waits unbound (the
                // client task's own idle wait keeps its timeout).
                Waiting::Client if self.settings.transaction_mode => None,
                Waiting::Client => timeouts.client_idle,
            };
            watch.waiting_until = timeout.map(|t| tokio::time::Instant::now() + t);
        }
        let transaction_until = timeouts
            .transaction
            .zip(self.backend.stretch.tally.transaction_started())
            .map(|(t, started)| tokio::time::Instant::from_std(started.instant() + t));
        let deadline = match (watch.waiting_until, transaction_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(deadline) = deadline else {
            return Poll::Pending;
        };
        if watch.armed != Some(deadline) {
            watch.armed = Some(deadline);
            watch.sleep.as_mut().reset(deadline);
        }
        match watch.sleep.as_mut().poll(cx) {
            Poll::Ready(()) if Some(deadline) == transaction_until => {
                Poll::Ready(Error::TransactionTimeout)
            }
            Poll::Ready(()) => Poll::Ready(match waiting {
                Waiting::Backend => Error::QueryTimeout,
                Waiting::ClientInTransaction => Error::IdleTransactionTimeout,
                Waiting::Client => Error::ClientIdleTimeout,
            }),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Whether the client got the start of a backend message and not its end.
    pub fn client_mid_message(&self) -> bool {
        !self.backend.stretch.from_backend.at_boundary()
    }

    /// Under `server_fast_close`, whether the backend is from before the
    /// pool's last RECONNECT.
    fn marked_for_closing(&self) -> bool {
        self.settings.fast_close.is_some_and(|current| {
            self.backend.generation() < current.load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// The backend owes nothing and no byte is half-way in either direction.
    fn is_clean(&self) -> bool {
        self.backend.stretch.at_rest()
            && !self.backend.conn.pending_output()
            && self.backend.conn.rbuf.is_empty()
    }
}

/// The socket operations that returned `Pending` in this wake-up.
#[derive(Default)]
struct Parked {
    client_read: bool,
    client_write: bool,
    backend_read: bool,
    backend_write: bool,
}

/// Makes room for a read, and for a whole-held message of `need` more bytes.
fn reserve(buf: &mut BytesMut, need: usize) {
    if buf.capacity() - buf.len() < need.max(1024) {
        buf.reserve(need.max(READ_BUF));
    }
}
